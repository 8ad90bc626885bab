//! The benchmark scenario of the `sim` example (issue 3, item 10), reusable from tests.
//!
//! 1. **Bootstrap**: node 0 starts alone, `contacts - 1` nodes join it, then (after seven
//!    maximal round trips) every other node joins through one contact picked at random among
//!    the first `contacts`; the overlay then settles for `bootstrap_settle`.
//! 2. **Warm-up**: two broadcasts from the fixed sender (they shape the Plumtree tree).
//! 3. **Stable phase**: `broadcasts` broadcasts from the fixed sender, one round each: a round
//!    ends when every live node delivered or after `round_timeout`.
//! 4. **Crash**: a fraction `crash` of the nodes crashes at once.
//! 5. **After the crash**: `broadcasts` broadcasts from random live senders, the first right
//!    after the crash. Half of them go out back to back; the rest go out once two repair periods
//!    have passed since the crash (those count for `reliability_after_repair`).
//! 6. **Quiet**: run until a second passes without user payloads or deliveries, then (with the
//!    directory on) until every live node lists exactly the live nodes as alive.
//!
//! Reliability of a broadcast is measured at the end of the run: the share of the nodes that
//! existed when it was sent and are alive at the end (its origin excepted) that delivered it.
//! RMR is `payload messages / deliveries - 1`, counting every user payload sent during the round
//! (Plumtree paper: `m / (n - 1) - 1`, `n` the nodes reached, origin included). LDH is the
//! largest hop count of a delivery.

use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use rand::seq::SliceRandom;

use super::{NetStats, Node, Sim, SimConfig, peak_rss_mb};
use crate::proto::MessageId;
use crate::proto::directory::MemberState;

/// Settings of one scenario run.
#[derive(Debug, Clone)]
pub struct ScenarioConfig {
    /// Nodes at the start.
    pub nodes: usize,
    /// Broadcasts in the stable phase, and again after the crash.
    pub broadcasts: usize,
    /// Fraction of the nodes that crash at once (0 to 1).
    pub crash: f64,
    /// Whether the cluster directory runs (`false`: overlay and broadcast only).
    pub directory: bool,
    /// How many nodes the others join through.
    pub contacts: usize,
    /// How long the overlay settles after the last join.
    pub bootstrap_settle: Duration,
    /// Longest wait for one broadcast to reach every live node.
    pub round_timeout: Duration,
    /// How long the protocol needs to repair the overlay after a crash: broadcasts sent two
    /// repair periods after the crash count for `reliability_after_repair`.
    pub repair_period: Duration,
    /// Longest wait for quiet (and for the directory to converge) at the end.
    pub tail_timeout: Duration,
    /// Size of each broadcast payload.
    pub payload_size: usize,
    /// How often crash detection is checked (the resolution of `detection_s`).
    pub poll_interval: Duration,
    /// The network and protocol (its `seed` is the scenario's seed; `loss` applies throughout).
    pub sim: SimConfig,
}

impl ScenarioConfig {
    /// The scenario of the `sim` example with its defaults.
    pub fn new(nodes: usize, broadcasts: usize, crash: f64, seed: u64) -> Self {
        Self {
            nodes,
            broadcasts,
            crash,
            directory: true,
            contacts: 5,
            bootstrap_settle: Duration::from_secs(2),
            round_timeout: Duration::from_secs(5),
            repair_period: Duration::from_secs(2),
            tail_timeout: Duration::from_secs(60),
            payload_size: 64,
            poll_interval: Duration::from_millis(50),
            sim: SimConfig {
                seed,
                ..SimConfig::default()
            },
        }
    }
}

/// Which part of the scenario a broadcast belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Before the stable phase.
    Warmup,
    /// From the fixed sender, before the crash.
    Stable,
    /// After the crash, before two repair periods passed.
    AfterCrash,
    /// After the crash and two repair periods.
    AfterRepair,
}

/// One broadcast of the scenario.
#[derive(Debug, Clone)]
pub struct Round {
    /// Its phase.
    pub phase: Phase,
    /// Its id.
    pub id: MessageId<u32>,
    /// Share of the live nodes that delivered it (at the end of the run).
    pub reliability: f64,
    /// Relative message redundancy of its round.
    pub rmr: f64,
    /// Largest hop count of a delivery.
    pub ldh: u16,
    /// Broadcast-layer control messages (IHAVE, GRAFT, PRUNE...) during its round.
    pub control: u64,
    /// Time from sending to the last delivery.
    pub latency: Duration,
}

/// The shape of the overlay and the broadcast tree at one moment, over the live nodes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Shape {
    /// Smallest active view.
    pub active_min: usize,
    /// Mean active view.
    pub active_mean: f64,
    /// Largest active view.
    pub active_max: usize,
    /// Mean passive view.
    pub passive_mean: f64,
    /// Mean eager (tree) links per node.
    pub eager_mean: f64,
    /// Most eager links of a node.
    pub eager_max: usize,
}

impl Shape {
    /// Measure it now.
    pub fn of(sim: &Sim) -> Shape {
        let mut s = Shape {
            active_min: usize::MAX,
            ..Shape::default()
        };
        let mut n = 0usize;
        for id in sim.alive() {
            let Some(node) = sim.node(id) else { continue };
            let active = node.membership().active_view().count();
            let eager = node.broadcast_layer().eager_peers().len();
            s.active_min = s.active_min.min(active);
            s.active_max = s.active_max.max(active);
            s.active_mean += active as f64;
            s.passive_mean += node.membership().passive_view().count() as f64;
            s.eager_mean += eager as f64;
            s.eager_max = s.eager_max.max(eager);
            n += 1;
        }
        if n == 0 {
            return Shape::default();
        }
        s.active_mean /= n as f64;
        s.passive_mean /= n as f64;
        s.eager_mean /= n as f64;
        s
    }
}

/// The best trees the overlay allows from one sender, to judge the broadcast tree against.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bounds {
    /// Hops to the farthest node along fewest-hop paths (no tree can have a smaller LDH).
    pub min_hops_depth: u32,
    /// Hops to the farthest node in the fastest-path tree (what first-arrival trees approach).
    pub fastest_tree_hops: u32,
    /// Latency to the last node along fastest paths, in seconds (no broadcast can be faster).
    pub fastest_latency_s: f64,
}

impl Bounds {
    /// Compute them over the live nodes' active views from `sender`.
    pub fn of(sim: &Sim, sender: u32) -> Bounds {
        use std::cmp::Reverse;
        use std::collections::{BinaryHeap, VecDeque};
        let n = sim.len() as usize;
        let neighbours = |id: u32| -> Vec<u32> {
            sim.node(id)
                .map(|s| {
                    s.membership()
                        .active_view()
                        .copied()
                        .filter(|&p| sim.is_alive(p))
                        .collect()
                })
                .unwrap_or_default()
        };
        // Breadth-first: fewest hops.
        let mut hops = vec![u32::MAX; n];
        let mut queue = VecDeque::from([sender]);
        hops[sender as usize] = 0;
        let mut min_hops_depth = 0;
        while let Some(id) = queue.pop_front() {
            for p in neighbours(id) {
                if hops[p as usize] == u32::MAX {
                    hops[p as usize] = hops[id as usize] + 1;
                    min_hops_depth = min_hops_depth.max(hops[p as usize]);
                    queue.push_back(p);
                }
            }
        }
        // Dijkstra: fastest paths, and the hops along them.
        let mut best = vec![u64::MAX; n];
        let mut tree_hops = vec![0u32; n];
        let mut heap = BinaryHeap::from([Reverse((0u64, sender))]);
        best[sender as usize] = 0;
        let (mut fastest_tree_hops, mut last) = (0, 0);
        while let Some(Reverse((d, id))) = heap.pop() {
            if d > best[id as usize] {
                continue;
            }
            fastest_tree_hops = fastest_tree_hops.max(tree_hops[id as usize]);
            last = last.max(d);
            for p in neighbours(id) {
                let nd = d + sim.link_latency(id, p).as_nanos() as u64;
                if nd < best[p as usize] {
                    best[p as usize] = nd;
                    tree_hops[p as usize] = tree_hops[id as usize] + 1;
                    heap.push(Reverse((nd, p)));
                }
            }
        }
        Bounds {
            min_hops_depth,
            fastest_tree_hops,
            fastest_latency_s: last as f64 / 1e9,
        }
    }
}

/// What the scenario measured. [`ScenarioReport::to_json`] is the `sim` example's last line.
#[derive(Debug, Clone)]
pub struct ScenarioReport {
    /// Nodes at the start.
    pub nodes: usize,
    /// Broadcasts per phase.
    pub broadcasts: usize,
    /// Seed.
    pub seed: u64,
    /// Crash fraction.
    pub crash: f64,
    /// Loss probability.
    pub loss: f64,
    /// Whether the directory ran.
    pub directory: bool,
    /// Nodes with an empty active view after the bootstrap.
    pub isolated_after_bootstrap: usize,
    /// Overlay and tree at the end of the stable phase.
    pub shape_stable: Shape,
    /// What the overlay allows from the stable sender at the end of the stable phase.
    pub bounds_stable: Bounds,
    /// Mean reliability of the stable phase.
    pub reliability_stable: f64,
    /// Mean RMR of the stable phase.
    pub rmr_stable: f64,
    /// Largest LDH of the stable phase.
    pub ldh_max_stable: u16,
    /// Mean control messages per broadcast in the stable phase.
    pub control_per_broadcast_stable: f64,
    /// Mean time to the last delivery in the stable phase, in seconds.
    pub latency_stable_s: f64,
    /// Nodes crashed.
    pub crashed: usize,
    /// Mean reliability of every broadcast after the crash.
    pub reliability_after_crash: Option<f64>,
    /// Mean reliability of the broadcasts sent two repair periods after the crash or later.
    pub reliability_after_repair: Option<f64>,
    /// Deliveries missing after the crash, summed over those broadcasts.
    pub missed_after_crash: u64,
    /// Whether every live node lists exactly the live nodes as alive (directory on only).
    pub members_converged: Option<bool>,
    /// Seconds from the crash until the directory converged.
    pub converge_s: Option<f64>,
    /// Seconds from the crash until every live neighbour of a crashed node marked it dead (in
    /// its directory; without the directory: dropped it from its active view).
    pub detection_s: Option<f64>,
    /// (neighbour, crashed) pairs still undetected at the end.
    pub undetected: usize,
    /// Duplicate, phantom or self deliveries (must be 0).
    pub violations: u64,
    /// Message counters of the whole run.
    pub messages: NetStats,
    /// Virtual seconds simulated.
    pub virtual_s: f64,
    /// Real seconds the run took.
    pub wall_s: f64,
    /// Peak resident memory of the process, in MiB.
    pub peak_rss_mb: Option<f64>,
    /// Trace hash (equal seeds give equal hashes).
    pub trace_hash: u64,
    /// Every broadcast.
    pub rounds: Vec<Round>,
}

fn mean(xs: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = xs.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| sum / n as f64)
}

fn opt(x: Option<f64>) -> String {
    match x {
        Some(v) if v.is_finite() => format!("{v:.4}"),
        _ => "null".into(),
    }
}

impl ScenarioReport {
    /// One JSON object on one line.
    pub fn to_json(&self) -> String {
        let m = &self.messages;
        format!(
            concat!(
                "{{\"nodes\":{},\"broadcasts\":{},\"seed\":{},\"crash\":{},\"loss\":{},",
                "\"directory\":{},\"isolated_after_bootstrap\":{},\"reliability_stable\":{:.4},",
                "\"rmr_stable\":{:.4},\"ldh_max_stable\":{},\"control_per_broadcast_stable\":{:.1},",
                "\"latency_stable_s\":{:.3},\"crashed\":{},\"reliability_after_crash\":{},",
                "\"reliability_after_repair\":{},\"missed_after_crash\":{},\"members_converged\":{},",
                "\"converge_s\":{},\"detection_s\":{},\"undetected\":{},\"violations\":{},",
                "\"active_view\":[{},{:.2},{}],\"eager_mean\":{:.2},\"eager_max\":{},",
                "\"min_hops_depth\":{},\"fastest_tree_hops\":{},\"fastest_latency_s\":{:.3},",
                "\"events\":{},\"messages\":{},\"virtual_s\":{:.1},\"wall_s\":{:.2},",
                "\"peak_rss_mb\":{},\"trace_hash\":\"{:016x}\"}}"
            ),
            self.nodes,
            self.broadcasts,
            self.seed,
            self.crash,
            self.loss,
            self.directory,
            self.isolated_after_bootstrap,
            self.reliability_stable,
            self.rmr_stable,
            self.ldh_max_stable,
            self.control_per_broadcast_stable,
            self.latency_stable_s,
            self.crashed,
            opt(self.reliability_after_crash),
            opt(self.reliability_after_repair),
            self.missed_after_crash,
            self.members_converged
                .map_or("null".into(), |b| b.to_string()),
            opt(self.converge_s),
            opt(self.detection_s),
            self.undetected,
            self.violations,
            self.shape_stable.active_min,
            self.shape_stable.active_mean,
            self.shape_stable.active_max,
            self.shape_stable.eager_mean,
            self.shape_stable.eager_max,
            self.bounds_stable.min_hops_depth,
            self.bounds_stable.fastest_tree_hops,
            self.bounds_stable.fastest_latency_s,
            m.events,
            m.total(),
            self.virtual_s,
            self.wall_s,
            opt(self.peak_rss_mb),
            self.trace_hash,
        )
    }

    /// A readable table: one line per phase, then the counters.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<13} {:>6} {:>11} {:>8} {:>5} {:>9} {:>10}",
            "phase", "bcasts", "reliability", "RMR", "LDH", "ctrl/bc", "last (ms)"
        );
        for phase in [
            Phase::Warmup,
            Phase::Stable,
            Phase::AfterCrash,
            Phase::AfterRepair,
        ] {
            let rs: Vec<&Round> = self.rounds.iter().filter(|r| r.phase == phase).collect();
            if rs.is_empty() {
                continue;
            }
            let n = rs.len() as f64;
            let _ = writeln!(
                s,
                "{:<13} {:>6} {:>11.4} {:>8.4} {:>5} {:>9.1} {:>10.0}",
                format!("{phase:?}"),
                rs.len(),
                rs.iter().map(|r| r.reliability).sum::<f64>() / n,
                rs.iter().map(|r| r.rmr).sum::<f64>() / n,
                rs.iter().map(|r| r.ldh).max().unwrap_or(0),
                rs.iter().map(|r| r.control as f64).sum::<f64>() / n,
                rs.iter()
                    .map(|r| r.latency.as_secs_f64() * 1e3)
                    .sum::<f64>()
                    / n,
            );
        }
        let m = &self.messages;
        let _ = writeln!(
            s,
            "messages: membership {} | broadcast user {} system {} control {} | \
             detector {} | directory {} | lost {} | unreachable {} | link failures {}",
            m.membership,
            m.broadcast_payload,
            m.broadcast_system,
            m.broadcast_control,
            m.detector,
            m.directory,
            m.lost,
            m.unreachable,
            m.link_failures
        );
        let _ = writeln!(
            s,
            "timers fired: membership {} | broadcast {} | detector {} | directory {}",
            m.timers[0], m.timers[1], m.timers[2], m.timers[3]
        );
        let f = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.2}"));
        let _ = writeln!(
            s,
            "crashed {} | detection {} s ({} undetected) | directory converged {} after {} s | \
             isolated after bootstrap {} | violations {}",
            self.crashed,
            f(self.detection_s),
            self.undetected,
            self.members_converged.map_or("-".into(), |b| b.to_string()),
            f(self.converge_s),
            self.isolated_after_bootstrap,
            self.violations
        );
        let sh = &self.shape_stable;
        let _ = writeln!(
            s,
            "after the stable phase: active view min {} mean {:.2} max {} | passive mean {:.1} | \
             eager links mean {:.2} max {}",
            sh.active_min,
            sh.active_mean,
            sh.active_max,
            sh.passive_mean,
            sh.eager_mean,
            sh.eager_max
        );
        let b = &self.bounds_stable;
        let _ = writeln!(
            s,
            "overlay bounds from the sender: fewest-hop depth {} | fastest-path tree {} hops, \
             last node after {:.0} ms",
            b.min_hops_depth,
            b.fastest_tree_hops,
            b.fastest_latency_s * 1e3
        );
        let _ = writeln!(
            s,
            "events {} (peak pending {}) | virtual {:.1} s | wall {:.2} s | peak RSS {} MiB | trace {:016x}",
            m.events,
            m.peak_pending,
            self.virtual_s,
            self.wall_s,
            f(self.peak_rss_mb),
            self.trace_hash
        );
        s
    }
}

/// Whether `node` considers `peer` failed: with the directory, it lists it as dead (or has
/// already reaped it); without, it dropped it from its active view.
fn detected(node: &Node, peer: u32, directory: bool) -> bool {
    if directory {
        !matches!(
            node.directory().get(&peer),
            Some((MemberState::Alive | MemberState::Suspect, _))
        )
    } else {
        !node.membership().active_view().any(|p| *p == peer)
    }
}

/// Whether every live node lists exactly the live nodes as alive.
///
/// One node (the first live one) is checked entry by entry; every other node must then have
/// the same number of alive entries and the same directory checksum (an order-independent
/// 64-bit hash of its alive and suspect entries), which makes the check O(n) instead of O(n^2).
/// It starts with `hint` (the node that failed last time), so a failing check usually fails at
/// once, and updates it.
pub fn members_converged(sim: &Sim, hint: &mut u32) -> bool {
    let live: Vec<u32> = sim.alive().collect();
    let Some(reference) = live.first().and_then(|&id| sim.node(id)) else {
        return true;
    };
    let dir = reference.directory();
    if dir.alive_count() != live.len()
        || !live
            .iter()
            .all(|id| matches!(dir.get(id), Some((MemberState::Alive, _))))
    {
        *hint = live[0];
        return false;
    }
    let checksum = dir.checksum();
    let start = live.iter().position(|&id| id == *hint).unwrap_or(0);
    for k in 0..live.len() {
        let id = live[(start + k) % live.len()];
        let Some(node) = sim.node(id) else { continue };
        let d = node.directory();
        if d.alive_count() != live.len() || d.checksum() != checksum {
            *hint = id;
            return false;
        }
    }
    true
}

struct Runner {
    cfg: ScenarioConfig,
    sim: Sim,
    payload: Bytes,
    rounds: Vec<(Phase, MessageId<u32>, NetStats, NetStats, Duration)>,
    crash_at: Option<Duration>,
    pending: Vec<(u32, u32)>,
    detected_at: Option<Duration>,
}

impl Runner {
    fn poll_detection(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let sim = &self.sim;
        let directory = self.cfg.directory;
        self.pending.retain(|&(n, c)| {
            sim.node(n)
                .is_some_and(|node| !detected(node, c, directory))
        });
        if self.pending.is_empty() {
            self.detected_at = Some(sim.now());
        }
    }

    /// Run until `done` or `until`, checking detection every poll interval.
    fn advance(&mut self, until: Duration, mut done: impl FnMut(&Sim) -> bool) -> bool {
        loop {
            let slice = (self.sim.now() + self.cfg.poll_interval).min(until);
            let ok = self.sim.run_until_or(slice, &mut done);
            self.poll_detection();
            if ok {
                return true;
            }
            if self.sim.now() >= until {
                return false;
            }
        }
    }

    fn round(&mut self, phase: Phase, sender: u32) {
        let before = *self.sim.stats();
        let Some(id) = self.sim.broadcast(sender, self.payload.clone()) else {
            return;
        };
        let target = self.sim.alive().count().saturating_sub(1) as u32;
        let until = self.sim.now() + self.cfg.round_timeout;
        self.advance(until, |sim| {
            sim.tracker()
                .record(&id)
                .is_some_and(|r| r.deliveries >= target)
        });
        let after = *self.sim.stats();
        let sent_at = self
            .sim
            .tracker()
            .record(&id)
            .map_or(Duration::ZERO, |r| r.sent_at);
        self.rounds.push((phase, id, before, after, sent_at));
    }
}

/// Run the scenario; deterministic for a given config (wall time and memory excepted).
pub fn run(cfg: ScenarioConfig) -> ScenarioReport {
    let wall = std::time::Instant::now();
    let mut sim_cfg = cfg.sim.clone();
    sim_cfg.proto.directory.enabled = cfg.directory;
    let mut r = Runner {
        sim: Sim::new(sim_cfg),
        payload: Bytes::from(vec![0xab; cfg.payload_size]),
        rounds: Vec::new(),
        crash_at: None,
        pending: Vec::new(),
        detected_at: None,
        cfg,
    };
    let n = r.cfg.nodes.max(1);
    let contacts = r.cfg.contacts.clamp(1, n);

    // 1. Bootstrap.
    let first = r.sim.add_node();
    r.sim.join(first, Vec::new());
    for _ in 1..contacts {
        let id = r.sim.add_node();
        r.sim.join(id, vec![first]);
    }
    let rtt = r.sim.config().latency_max * 2;
    r.sim.run_for(rtt * 7);
    for _ in contacts..n {
        let id = r.sim.add_node();
        let contact = r.sim.rng().random_range(0..contacts as u32);
        r.sim.join(id, vec![contact]);
    }
    r.sim.run_for(r.cfg.bootstrap_settle);
    let isolated_after_bootstrap = r
        .sim
        .alive()
        .filter(|&id| {
            r.sim
                .node(id)
                .is_some_and(|s| s.membership().active_view().next().is_none())
        })
        .count();

    // 2-3. Warm-up and stable phase from one fixed sender.
    let sender = r.sim.rng().random_range(0..n as u32);
    for _ in 0..2 {
        r.round(Phase::Warmup, sender);
    }
    for _ in 0..r.cfg.broadcasts {
        r.round(Phase::Stable, sender);
    }
    let shape_stable = Shape::of(&r.sim);
    let bounds_stable = Bounds::of(&r.sim, sender);

    // 4. Crash a fraction at once, noting who must detect whom.
    let mut ids: Vec<u32> = r.sim.alive().collect();
    ids.shuffle(r.sim.rng());
    let crashed: Vec<u32> = ids
        .iter()
        .copied()
        .take((r.cfg.crash * n as f64).round() as usize)
        .collect();
    let crash_at = r.sim.now();
    r.crash_at = Some(crash_at);
    let mut dead = vec![false; r.sim.len() as usize];
    for &c in &crashed {
        dead[c as usize] = true;
    }
    for &c in &crashed {
        if let Some(node) = r.sim.node(c) {
            let neighbours: Vec<u32> = node.membership().active_view().copied().collect();
            r.pending.extend(
                neighbours
                    .into_iter()
                    .filter(|&p| !dead[p as usize])
                    .map(|p| (p, c)),
            );
        }
    }
    for &c in &crashed {
        r.sim.crash(c);
    }
    if r.pending.is_empty() {
        r.detected_at = Some(crash_at);
    }

    // 5. Broadcasts from random live senders, the first right after the crash.
    if !crashed.is_empty() || r.cfg.broadcasts > 0 {
        let live: Vec<u32> = r.sim.alive().collect();
        let repaired = crash_at + r.cfg.repair_period * 2;
        let back_to_back = r.cfg.broadcasts.div_ceil(2);
        for i in 0..r.cfg.broadcasts {
            if i == back_to_back && r.sim.now() < repaired {
                r.advance(repaired, |_| false);
            }
            if live.is_empty() {
                break;
            }
            let from = live[r.sim.rng().random_range(0..live.len())];
            let phase = if r.sim.now() >= repaired {
                Phase::AfterRepair
            } else {
                Phase::AfterCrash
            };
            r.round(phase, from);
        }
    }

    // 6. Quiet, then directory convergence.
    let tail_end = r.sim.now() + r.cfg.tail_timeout;
    loop {
        let before = (r.sim.stats().user_payloads, r.sim.tracker().deliveries);
        let slice = (r.sim.now() + Duration::from_secs(1)).min(tail_end);
        r.advance(slice, |_| false);
        let after = (r.sim.stats().user_payloads, r.sim.tracker().deliveries);
        if before == after || r.sim.now() >= tail_end {
            break;
        }
    }
    let mut converged = None;
    let mut converge_s = None;
    if r.cfg.directory {
        let mut hint = 0;
        let mut ok = members_converged(&r.sim, &mut hint);
        while !ok && r.sim.now() < tail_end {
            let slice = (r.sim.now() + Duration::from_secs(1)).min(tail_end);
            r.advance(slice, |_| false);
            ok = members_converged(&r.sim, &mut hint);
        }
        converged = Some(ok);
        converge_s = ok.then(|| (r.sim.now() - crash_at).as_secs_f64());
    }
    // Give detection the rest of the tail if it still waits.
    if !r.pending.is_empty() && r.sim.now() < tail_end {
        let until = tail_end;
        r.advance(until, |_| false);
    }
    r.poll_detection();

    let mut rep = report(
        r,
        isolated_after_bootstrap,
        crashed.len(),
        converged,
        converge_s,
        wall,
    );
    rep.shape_stable = shape_stable;
    rep.bounds_stable = bounds_stable;
    rep
}

fn report(
    r: Runner,
    isolated_after_bootstrap: usize,
    crashed: usize,
    members_converged: Option<bool>,
    converge_s: Option<f64>,
    wall: std::time::Instant,
) -> ScenarioReport {
    let sim = &r.sim;
    let tracker = sim.tracker();
    let mut rounds = Vec::with_capacity(r.rounds.len());
    let mut missed_after_crash = 0u64;
    for &(phase, id, before, after, sent_at) in &r.rounds {
        let Some(rec) = tracker.record(&id) else {
            continue;
        };
        // Nodes that existed at send time and are alive now, the origin excepted.
        let (mut expected, mut got) = (0u64, 0u64);
        for node in sim
            .alive()
            .filter(|&x| x < rec.population && x != id.origin)
        {
            expected += 1;
            got += u64::from(rec.delivered_to(node));
        }
        if matches!(phase, Phase::AfterCrash | Phase::AfterRepair) {
            missed_after_crash += expected - got;
        }
        let payloads = after.user_payloads - before.user_payloads;
        let rmr = if rec.deliveries > 0 {
            payloads as f64 / f64::from(rec.deliveries) - 1.0
        } else {
            0.0
        };
        rounds.push(Round {
            phase,
            id,
            reliability: if expected == 0 {
                1.0
            } else {
                got as f64 / expected as f64
            },
            rmr,
            ldh: rec.max_hops,
            control: after.broadcast_control - before.broadcast_control,
            latency: rec.last_delivery.saturating_sub(sent_at),
        });
    }
    fn of<'a>(rounds: &'a [Round], p: &'a [Phase]) -> impl Iterator<Item = &'a Round> + 'a {
        rounds.iter().filter(move |x| p.contains(&x.phase))
    }
    let stable = [Phase::Stable];
    let crash_phases = [Phase::AfterCrash, Phase::AfterRepair];
    let repair = [Phase::AfterRepair];
    let crash_at = r.crash_at.unwrap_or_default();
    ScenarioReport {
        nodes: r.cfg.nodes,
        broadcasts: r.cfg.broadcasts,
        seed: r.cfg.sim.seed,
        crash: r.cfg.crash,
        loss: r.cfg.sim.loss,
        directory: r.cfg.directory,
        isolated_after_bootstrap,
        shape_stable: Shape::default(),
        bounds_stable: Bounds::default(),
        reliability_stable: mean(of(&rounds, &stable).map(|x| x.reliability)).unwrap_or(1.0),
        rmr_stable: mean(of(&rounds, &stable).map(|x| x.rmr)).unwrap_or(0.0),
        ldh_max_stable: of(&rounds, &stable).map(|x| x.ldh).max().unwrap_or(0),
        control_per_broadcast_stable: mean(of(&rounds, &stable).map(|x| x.control as f64))
            .unwrap_or(0.0),
        latency_stable_s: mean(of(&rounds, &stable).map(|x| x.latency.as_secs_f64()))
            .unwrap_or(0.0),
        crashed,
        reliability_after_crash: mean(of(&rounds, &crash_phases).map(|x| x.reliability)),
        reliability_after_repair: mean(of(&rounds, &repair).map(|x| x.reliability)),
        missed_after_crash,
        members_converged,
        converge_s,
        detection_s: r.detected_at.map(|t| (t - crash_at).as_secs_f64()),
        undetected: r.pending.len(),
        violations: tracker.violations(),
        messages: *sim.stats(),
        virtual_s: sim.now().as_secs_f64(),
        wall_s: wall.elapsed().as_secs_f64(),
        peak_rss_mb: peak_rss_mb(),
        trace_hash: sim.trace_hash(),
        rounds,
    }
}
