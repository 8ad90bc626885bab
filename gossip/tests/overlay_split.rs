//! The overlay must stay one connected graph: broadcasts and catch-up only travel along active
//! links, so a split overlay silently stops delivering across the split while every directory
//! still lists every member as alive (nobody failed, so nothing is suspected or healed).
//!
//! With the default active view (5) and 3, no seed in 200 ends split. With an active view of 2,
//! about a third of the seeds end as two or three disjoint rings of full views, for good: no
//! node is below capacity, so none looks for links, and the directory's healing only reaches
//! for dead members and seeds. Kept as an ignored test until the overlay detects it (e.g. a
//! directory digest exchanged with a random non-neighbour that reports a diverging broadcast
//! horizon, or an occasional forced shuffle link).

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use gossip::sim::{Sim, SimConfig};

/// Connected components of the alive nodes' active-view graph.
fn components(sim: &Sim) -> usize {
    let mut seen = HashSet::new();
    let mut count = 0;
    for start in sim.alive() {
        if !seen.insert(start) {
            continue;
        }
        count += 1;
        let mut queue = VecDeque::from([start]);
        while let Some(n) = queue.pop_front() {
            for &p in sim.node(n).expect("alive").membership().active_view() {
                if seen.insert(p) {
                    queue.push_back(p);
                }
            }
        }
    }
    count
}

/// `n` nodes join through node 0 and run two minutes; the seeds whose overlay ends split.
fn split_seeds(n: u32, active_view: usize, seeds: std::ops::Range<u64>) -> Vec<(u64, usize)> {
    let mut split = Vec::new();
    for seed in seeds {
        let mut config = SimConfig {
            seed,
            ..SimConfig::default()
        };
        config.proto.membership.active_view_capacity = active_view;
        let mut sim = Sim::new(config);
        for _ in 0..n {
            sim.add_node();
        }
        for i in 1..n {
            sim.join(i, vec![0]);
        }
        sim.run_for(Duration::from_secs(120));
        let c = components(&sim);
        if c > 1 {
            split.push((seed, c));
        }
    }
    split
}

#[test]
fn small_clusters_with_default_views_form_one_overlay() {
    assert_eq!(split_seeds(12, 5, 0..10), vec![]);
    assert_eq!(split_seeds(8, 3, 0..10), vec![]);
}

#[test]
#[ignore = "known weakness: with an active view of 2, full views can form disjoint rings for good"]
fn an_active_view_of_two_never_ends_split() {
    // Today seeds 1, 9, 15, 21, 23 and 25 end split in two, seed 26 in three.
    assert_eq!(split_seeds(8, 2, 0..30), vec![]);
}
