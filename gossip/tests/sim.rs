//! Seeded simulations of the composed protocol: determinism, reliability, repair, convergence.
//!
//! Sized for debug builds: a few hundred nodes, a few broadcasts.

use std::time::Duration;

use bytes::Bytes;
use gossip::sim::scenario::{self, ScenarioConfig, ScenarioReport};
use gossip::sim::{Sim, SimConfig};

fn scenario(nodes: usize, broadcasts: usize, crash: f64, seed: u64) -> ScenarioReport {
    let mut cfg = ScenarioConfig::new(nodes, broadcasts, crash, seed);
    cfg.tail_timeout = Duration::from_secs(40);
    scenario::run(cfg)
}

#[test]
fn same_seed_gives_the_same_trace_and_another_seed_does_not() {
    let a = scenario(60, 2, 0.2, 11);
    let b = scenario(60, 2, 0.2, 11);
    let c = scenario(60, 2, 0.2, 12);
    assert!(
        a.messages.events > 1000,
        "the protocol did nothing: {}",
        a.to_json()
    );
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!(a.messages, b.messages);
    assert_eq!(
        a.to_json().split("\"wall_s\"").next(),
        b.to_json().split("\"wall_s\"").next()
    );
    assert_ne!(a.trace_hash, c.trace_hash);
}

#[test]
fn two_hundred_nodes_deliver_every_stable_broadcast_once() {
    let r = scenario(200, 5, 0.0, 1);
    println!("{}", r.table());
    assert_eq!(r.isolated_after_bootstrap, 0, "{}", r.to_json());
    assert_eq!(r.reliability_stable, 1.0, "{}", r.to_json());
    assert_eq!(r.violations, 0, "{}", r.to_json());
    assert!(
        r.ldh_max_stable >= 2,
        "a 200-node tree has depth: {}",
        r.to_json()
    );
    // Plumtree after warm-up: the payload travels the tree, nearly no redundancy.
    assert!(r.rmr_stable < 0.5, "{}", r.to_json());
    assert_eq!(r.members_converged, Some(true), "{}", r.to_json());
}

#[test]
fn two_hundred_nodes_survive_a_thirty_percent_crash() {
    for seed in [2, 3] {
        let r = scenario(200, 4, 0.3, seed);
        println!("{}", r.table());
        assert_eq!(r.reliability_stable, 1.0, "{}", r.to_json());
        assert_eq!(r.reliability_after_crash, Some(1.0), "{}", r.to_json());
        assert_eq!(r.reliability_after_repair, Some(1.0), "{}", r.to_json());
        assert_eq!(r.members_converged, Some(true), "{}", r.to_json());
        assert_eq!(r.undetected, 0, "{}", r.to_json());
        assert!(
            r.detection_s.is_some_and(|d| d > 0.0 && d < 30.0),
            "{}",
            r.to_json()
        );
        assert_eq!(r.violations, 0, "{}", r.to_json());
    }
}

#[test]
fn directory_off_still_broadcasts_and_sends_no_directory_traffic() {
    let mut cfg = ScenarioConfig::new(150, 4, 0.2, 5);
    cfg.directory = false;
    cfg.tail_timeout = Duration::from_secs(20);
    let r = scenario::run(cfg);
    assert_eq!(r.reliability_stable, 1.0, "{}", r.to_json());
    assert_eq!(r.reliability_after_repair, Some(1.0), "{}", r.to_json());
    assert_eq!(r.members_converged, None);
    assert_eq!(r.messages.directory, 0, "{}", r.to_json());
}

/// Bootstrap `n` nodes through node 0 and let the overlay settle.
fn cluster(n: u32, seed: u64) -> Sim {
    let mut sim = Sim::new(SimConfig {
        seed,
        ..SimConfig::default()
    });
    let first = sim.add_node();
    sim.join(first, Vec::new());
    for _ in 1..n {
        let id = sim.add_node();
        sim.join(id, vec![first]);
    }
    sim.run_for(Duration::from_secs(5));
    sim
}

fn reached_all_alive(sim: &Sim, id: &gossip::proto::MessageId<u32>) -> bool {
    let rec = sim
        .tracker()
        .record(id)
        .expect("sent through the simulator");
    sim.alive()
        .filter(|&n| n != id.origin)
        .all(|n| rec.delivered_to(n))
}

#[test]
fn a_restarted_node_is_a_new_identity_that_receives_new_broadcasts() {
    let mut sim = cluster(40, 21);
    let new = sim.restart(7, vec![3]);
    assert_eq!(new, 40);
    assert!(!sim.is_alive(7) && sim.is_alive(new));
    sim.run_for(Duration::from_secs(10));
    let id = sim
        .broadcast(12, Bytes::from_static(b"after restart"))
        .unwrap();
    sim.run_for(Duration::from_secs(5));
    assert!(reached_all_alive(&sim, &id));
    assert!(sim.tracker().record(&id).unwrap().delivered_to(new));
    assert!(
        sim.node(new)
            .unwrap()
            .membership()
            .active_view()
            .next()
            .is_some()
    );
    assert_eq!(sim.tracker().violations(), 0);
}

#[test]
fn broadcasts_from_both_sides_of_a_healed_partition_reach_everyone() {
    let mut sim = cluster(60, 31);
    sim.partition(|id| (id % 2) as u16);
    sim.run_for(Duration::from_secs(3));
    let left = sim.broadcast(10, Bytes::from_static(b"even side")).unwrap();
    let right = sim.broadcast(11, Bytes::from_static(b"odd side")).unwrap();
    sim.run_for(Duration::from_secs(10));
    sim.heal();
    sim.run_for(Duration::from_secs(60));
    assert!(
        reached_all_alive(&sim, &left),
        "catch-up did not bring the even side's message"
    );
    assert!(
        reached_all_alive(&sim, &right),
        "catch-up did not bring the odd side's message"
    );
    assert_eq!(sim.tracker().violations(), 0);
}

#[test]
fn loss_and_duplication_do_not_break_delivery_invariants() {
    let mut sim = cluster(50, 41);
    sim.set_faults(0.2, 0.1, Duration::from_millis(30));
    let ids: Vec<_> = (0..10)
        .map(|i| {
            sim.run_for(Duration::from_millis(300));
            sim.broadcast(i * 3 % 50, Bytes::from(vec![i as u8; 10]))
                .unwrap()
        })
        .collect();
    sim.run_for(Duration::from_secs(5));
    sim.set_faults(0.0, 0.0, Duration::ZERO);
    sim.run_for(Duration::from_secs(30));
    assert!(sim.stats().lost > 0 && sim.stats().duplicated > 0);
    assert_eq!(sim.tracker().violations(), 0);
    for id in &ids {
        assert!(
            reached_all_alive(&sim, id),
            "{id:?} missing after the faults stopped"
        );
    }
}
