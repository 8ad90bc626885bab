//! The `cluster_bench` example's scenario in virtual time (issue 4, item 7), to find its rare
//! tails over hundreds of seeds.
//!
//! The TCP benchmark runs 200 nodes on loopback in one process; this runs the same steps on the
//! simulator with the LAN preset ([`proto::Config::lan`], what the runtime uses) and a
//! loopback-like network: sub-millisecond links, a dial to a dead node refused at once, and a
//! crash that breaks the crashed node's connections ([`SimConfig::close_on_crash`]).
//!
//! 1. **Join**: one seed node (a random id, so the directory's collector, the smallest id, is
//!    not the seed) starts, every other node joins through it at the same instant; then wait
//!    until every node lists every node `Alive`.
//! 2. **Spread**: `broadcasts` broadcasts from random nodes, each waited for until every node
//!    delivered it, then a 50 ms pause; the figure is the time to the last delivery.
//! 3. **Quiet**: `quiet` without traffic from the test, counting `Suspect`/`Down` events.
//! 4. **Kill**: a fraction `kill` of the nodes (never the seed) crashes at once, without
//!    leaving; detection time of each (survivor, killed) pair is when the survivor first lists
//!    the killed node as `Dead` (or `Left`, or forgot it); the figure is the largest.
//!
//! The slowest broadcast and the slowest pair are named in the report so their traces can be
//! read with [`Sim::log_nodes`] (the `sim` example's `--bench --log`).

use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use rand::seq::SliceRandom;

use super::{Sim, SimConfig};
use crate::proto;
use crate::proto::directory::MemberState;

/// Settings of one run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Nodes.
    pub nodes: usize,
    /// Broadcasts from random nodes after the join.
    pub broadcasts: usize,
    /// Quiet period before the kill.
    pub quiet: Duration,
    /// Fraction of the nodes killed at once.
    pub kill: f64,
    /// Nodes that must be among the killed (the rest are picked at random).
    pub victims: Vec<u32>,
    /// Longest wait for the join, for each broadcast, and for detection.
    pub timeout: Duration,
    /// How often membership and detection are checked (their resolution).
    pub poll: Duration,
    /// The network and protocol.
    pub sim: SimConfig,
}

impl BenchConfig {
    /// The `cluster_bench` defaults: 200 nodes, 20 broadcasts, 30 s quiet, 10% killed, LAN
    /// preset, links of 0.1-1 ms, refused dials reported after 1 ms, broken connections after
    /// 1 ms.
    pub fn new(seed: u64) -> Self {
        Self {
            nodes: 200,
            broadcasts: 20,
            quiet: Duration::from_secs(30),
            kill: 0.1,
            victims: Vec::new(),
            timeout: Duration::from_secs(60),
            poll: Duration::from_millis(5),
            sim: loopback(seed),
        }
    }
}

/// A loopback-like network with the LAN preset: links of 0.1-1 ms, dials to a dead node
/// refused after 1 ms, a crashed node's connections broken after 1 ms.
pub fn loopback(seed: u64) -> SimConfig {
    SimConfig {
        seed,
        latency_min: Duration::from_micros(100),
        latency_max: Duration::from_millis(1),
        connect_timeout: Duration::from_millis(1),
        close_on_crash: Some(Duration::from_millis(1)),
        proto: proto::Config::lan(),
        ..SimConfig::default()
    }
}

/// One broadcast of the spread phase.
#[derive(Debug, Clone, Copy)]
pub struct Spread {
    /// Its origin.
    pub origin: u32,
    /// Time to the last delivery (the timeout if some node never delivered).
    pub latency: Duration,
    /// Whether every node delivered it.
    pub complete: bool,
    /// The node that delivered last, the peer it got it from, the hops.
    pub last: Option<(u32, u32, u16)>,
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// Seed.
    pub seed: u64,
    /// The seed node.
    pub contact: u32,
    /// Time until every node listed every node alive (`None`: not within the timeout).
    pub converge: Option<Duration>,
    /// Every broadcast of the spread phase.
    pub spreads: Vec<Spread>,
    /// `Suspect` and `Down` events during the quiet period.
    pub false_suspicions: u64,
    /// The killed nodes.
    pub killed: Vec<u32>,
    /// Time until every survivor listed every killed node dead (`None`: not within the
    /// timeout).
    pub detect: Option<Duration>,
    /// The slowest (survivor, killed) pair and its time (the timeout if never).
    pub slowest_pair: Option<(u32, u32, Duration)>,
    /// Virtual time of the kill.
    pub killed_at: Duration,
    /// The overlay just before the kill.
    pub overlay: Overlay,
    /// Killed nodes no survivor held as an active neighbour: only a random probe finds them.
    pub unwatched_killed: Vec<u32>,
    /// Events processed.
    pub events: u64,
    /// Trace hash.
    pub trace_hash: u64,
}

impl BenchReport {
    /// The slowest broadcast.
    pub fn spread_max(&self) -> Option<&Spread> {
        self.spreads.iter().max_by_key(|s| s.latency)
    }

    /// One JSON object on one line.
    pub fn to_json(&self) -> String {
        let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1e3);
        let max = self.spread_max();
        let mut lat: Vec<Duration> = self.spreads.iter().map(|s| s.latency).collect();
        lat.sort();
        format!(
            concat!(
                "{{\"seed\":{},\"contact\":{},\"converge_s\":{},\"spread_p50_ms\":{},",
                "\"spread_max_ms\":{},\"spread_max_last\":{},\"spreads_complete\":{},",
                "\"false_suspicions\":{},\"detect_s\":{},\"slowest_pair\":{},",
                "\"killed_at_s\":{:.3},\"killed\":{:?},\"one_sided\":[{}],\"empty\":{:?},",
                "\"unwatched\":{:?},\"active_sizes\":{:?},\"unwatched_killed\":{:?},\"events\":{},\"trace_hash\":\"{:016x}\"}}"
            ),
            self.seed,
            self.contact,
            self.converge
                .map_or("null".into(), |d| format!("{:.3}", d.as_secs_f64())),
            lat.get(lat.len() / 2).map_or("null".into(), |d| ms(*d)),
            max.map_or("null".into(), |s| ms(s.latency)),
            max.and_then(|s| s.last)
                .map_or("null".into(), |(n, f, h)| format!("[{n},{f},{h}]")),
            self.spreads.iter().all(|s| s.complete),
            self.false_suspicions,
            self.detect
                .map_or("null".into(), |d| format!("{:.3}", d.as_secs_f64())),
            self.slowest_pair.map_or("null".into(), |(s, k, d)| format!(
                "[{s},{k},{:.3}]",
                d.as_secs_f64()
            )),
            self.killed_at.as_secs_f64(),
            self.killed,
            self.overlay
                .one_sided
                .iter()
                .map(|(a, b)| format!("[{a},{b}]"))
                .collect::<Vec<_>>()
                .join(","),
            self.overlay.empty,
            self.overlay.unwatched,
            self.overlay.sizes,
            self.unwatched_killed,
            self.events,
            self.trace_hash,
        )
    }
}

/// The active views of the live nodes at one instant: HyParView's links are symmetric once
/// messages in flight have arrived, and a crash is noticed fast only by the nodes that hold the
/// crashed node as an active neighbour (the others wait for a random SWIM probe).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overlay {
    /// Ordered pairs `(a, b)`: `b` is in `a`'s active view but `a` is not in `b`'s.
    pub one_sided: Vec<(u32, u32)>,
    /// Live nodes with an empty active view.
    pub empty: Vec<u32>,
    /// Live nodes no other live node holds as active (nobody watches them).
    pub unwatched: Vec<u32>,
    /// `sizes[k]`: live nodes with `k` active neighbours.
    pub sizes: Vec<usize>,
}

impl Overlay {
    /// Read the active views of the live nodes of `sim`.
    pub fn check(sim: &Sim) -> Self {
        let mut out = Self::default();
        let mut watched = vec![false; sim.len() as usize];
        for a in sim.alive() {
            let Some(node) = sim.node(a) else { continue };
            let mut size = 0;
            for &b in node.membership().active_view() {
                size += 1;
                watched[b as usize] = true;
                let back = sim
                    .node(b)
                    .is_some_and(|n| n.membership().active_view().any(|&p| p == a));
                if !back {
                    out.one_sided.push((a, b));
                }
            }
            if size == 0 {
                out.empty.push(a);
            }
            if out.sizes.len() <= size {
                out.sizes.resize(size + 1, 0);
            }
            out.sizes[size] += 1;
        }
        out.unwatched = sim.alive().filter(|&a| !watched[a as usize]).collect();
        out
    }

    /// Whether every link is symmetric and every node has and is an active neighbour.
    pub fn is_sound(&self) -> bool {
        self.one_sided.is_empty() && self.empty.is_empty() && self.unwatched.is_empty()
    }
}

/// Where the scenario is, for [`run_with`]'s observer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Nothing happened yet.
    Start,
    /// Broadcast `i` of the spread phase is about to go out.
    SpreadStart(usize),
    /// Broadcast `i` reached every node (or timed out).
    SpreadEnd(usize),
    /// The nodes were just killed.
    Killed,
    /// Detection is over (or timed out).
    End,
}

/// Run the scenario on a fresh simulator.
pub fn run(cfg: &BenchConfig) -> BenchReport {
    run_with(cfg, |_, _| {})
}

/// Run the scenario, calling `observe` at each [`Stage`] (to turn a log on and read it).
pub fn run_with(cfg: &BenchConfig, mut observe: impl FnMut(&mut Sim, Stage)) -> BenchReport {
    let mut sim_cfg = cfg.sim.clone();
    sim_cfg.proto.directory.enabled = true;
    sim_cfg.proto.directory.emit_events = true;
    let mut sim = Sim::new(sim_cfg);
    observe(&mut sim, Stage::Start);
    let n = cfg.nodes.max(2);
    for _ in 0..n {
        sim.add_node();
    }
    let contact = sim.rng().random_range(0..n as u32);
    sim.join(contact, Vec::new());
    for id in (0..n as u32).filter(|&id| id != contact) {
        sim.join(id, vec![contact]);
    }

    // 1. Join: every node lists every node alive.
    let start = sim.now();
    let all_alive = |sim: &Sim| {
        sim.alive().all(|id| {
            sim.node(id)
                .is_some_and(|s| s.directory().alive_count() == n)
        })
    };
    let converge = wait(&mut sim, cfg.timeout, cfg.poll, all_alive).then(|| sim.now() - start);

    // 2. Spread.
    let payload = Bytes::from_static(&[0xab; 16]);
    let mut spreads = Vec::with_capacity(cfg.broadcasts);
    for i in 0..cfg.broadcasts {
        observe(&mut sim, Stage::SpreadStart(i));
        let live: Vec<u32> = sim.alive().collect();
        let origin = live[sim.rng().random_range(0..live.len())];
        let Some(id) = sim.broadcast(origin, payload.clone()) else {
            continue;
        };
        let target = live.len() as u32 - 1;
        let until = sim.now() + cfg.timeout.min(Duration::from_secs(10));
        let complete = sim.run_until_or(until, |sim| {
            sim.tracker()
                .record(&id)
                .is_some_and(|r| r.deliveries >= target)
        });
        let rec = sim.tracker().record(&id).expect("recorded at send");
        spreads.push(Spread {
            origin,
            latency: if complete {
                rec.last_delivery - rec.sent_at
            } else {
                until - rec.sent_at
            },
            complete,
            last: rec.last,
        });
        observe(&mut sim, Stage::SpreadEnd(i));
        sim.run_for(Duration::from_millis(50));
    }

    // 3. Quiet.
    let before = sim.stats().suspect_or_down_events;
    sim.run_for(cfg.quiet);
    let false_suspicions = sim.stats().suspect_or_down_events - before;

    // 4. Kill.
    let overlay = Overlay::check(&sim);
    let mut candidates: Vec<u32> = sim
        .alive()
        .filter(|&id| id != contact && !cfg.victims.contains(&id))
        .collect();
    candidates.shuffle(sim.rng());
    let kill = ((n as f64) * cfg.kill).round() as usize;
    let mut killed: Vec<u32> = cfg
        .victims
        .iter()
        .copied()
        .filter(|&v| v != contact)
        .collect();
    killed.extend(
        candidates
            .into_iter()
            .take(kill.saturating_sub(killed.len())),
    );
    killed.sort_unstable();
    let unwatched_killed: Vec<u32> = killed
        .iter()
        .copied()
        .filter(|k| {
            !sim.alive().any(|s| {
                !killed.contains(&s)
                    && sim
                        .node(s)
                        .is_some_and(|n| n.membership().active_view().any(|p| p == k))
            })
        })
        .collect();
    for &k in &killed {
        sim.crash(k);
    }
    let killed_at = sim.now();
    observe(&mut sim, Stage::Killed);
    let survivors: Vec<u32> = sim.alive().collect();
    let mut pending: Vec<(u32, u32)> = survivors
        .iter()
        .flat_map(|&s| killed.iter().map(move |&k| (s, k)))
        .collect();
    let mut slowest: Option<(u32, u32, Duration)> = None;
    let deadline = killed_at + cfg.timeout;
    while !pending.is_empty() && sim.now() < deadline {
        sim.run_until((sim.now() + cfg.poll).min(deadline));
        let now = sim.now() - killed_at;
        pending.retain(|&(s, k)| {
            let done = sim.node(s).is_none_or(|node| {
                !matches!(
                    node.directory().get(&k),
                    Some((MemberState::Alive | MemberState::Suspect, _))
                )
            });
            if done {
                slowest = Some((s, k, now));
            }
            !done
        });
    }
    observe(&mut sim, Stage::End);
    let detect = pending.is_empty().then(|| sim.now() - killed_at);
    if let Some(&(s, k)) = pending.first() {
        slowest = Some((s, k, sim.now() - killed_at));
    }
    BenchReport {
        seed: cfg.sim.seed,
        contact,
        converge,
        spreads,
        false_suspicions,
        killed,
        detect,
        slowest_pair: slowest,
        killed_at,
        overlay,
        unwatched_killed,
        events: sim.stats().events,
        trace_hash: sim.trace_hash(),
    }
}

/// Run until `done` (checked every `poll`) or `timeout`; whether `done` held.
fn wait(sim: &mut Sim, timeout: Duration, poll: Duration, done: impl Fn(&Sim) -> bool) -> bool {
    let until = sim.now() + timeout;
    loop {
        if done(sim) {
            return true;
        }
        if sim.now() >= until {
            return false;
        }
        sim.run_until((sim.now() + poll).min(until));
    }
}
