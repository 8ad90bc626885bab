//! Property tests of the composed protocol state ([`gossip::proto::State`]).
//!
//! A handful of nodes is driven by a random sequence of actions chosen by proptest: deliver any
//! in-flight message (so messages arrive in any order), lose or duplicate one, fire any armed
//! timer, let time pass, broadcast, crash a node, report a link failure. Throughout, every
//! delivery is checked: no node delivers a broadcast twice or its own broadcast, and nothing is
//! delivered that was never sent. Then the faults stop and the cluster runs in time order until
//! it is quiet; the active views must then be symmetric, hold no crashed node and stay within
//! their configured sizes.
//!
//! 64 cases, a fixed proptest seed: deterministic and well under a minute in debug builds.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use gossip::proto::{Config, InEvent, Instant, Message, MessageId, OutEvent, State, Timer};
use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, RngSeed};
use rand::SeedableRng;
use rand::rngs::SmallRng;

const NODES: u32 = 8;
const MAX_CRASHES: usize = 2;

#[derive(Debug, Clone)]
enum Action {
    Deliver(usize),
    Lose(usize),
    Duplicate(usize),
    Fire(usize),
    Advance(u16),
    Broadcast(u32),
    Crash(u32),
    LinkFailed(u32, u32),
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        8 => any::<usize>().prop_map(Action::Deliver),
        1 => any::<usize>().prop_map(Action::Lose),
        1 => any::<usize>().prop_map(Action::Duplicate),
        3 => any::<usize>().prop_map(Action::Fire),
        2 => (1u16..3000).prop_map(Action::Advance),
        2 => (0..NODES).prop_map(Action::Broadcast),
        1 => (0..NODES).prop_map(Action::Crash),
        1 => (0..NODES, 0..NODES).prop_map(|(a, b)| Action::LinkFailed(a, b)),
    ]
}

struct Cluster {
    base: Instant,
    now: Duration,
    config: Config,
    nodes: Vec<Option<State<u32, SmallRng>>>,
    flight: Vec<(u32, u32, Message<u32>)>,
    timers: Vec<(u32, Duration, Timer<u32>)>,
    sent: HashMap<MessageId<u32>, Bytes>,
    delivered: HashSet<(u32, MessageId<u32>)>,
    violations: Vec<String>,
    crashes: usize,
}

impl Cluster {
    fn new(seed: u64) -> Self {
        let base = Instant::now();
        let config = Config::default();
        let mut c = Cluster {
            base,
            now: Duration::ZERO,
            config: config.clone(),
            nodes: Vec::new(),
            flight: Vec::new(),
            timers: Vec::new(),
            sent: HashMap::new(),
            delivered: HashSet::new(),
            violations: Vec::new(),
            crashes: 0,
        };
        for id in 0..NODES {
            let rng = SmallRng::seed_from_u64(seed.wrapping_mul(31).wrapping_add(u64::from(id)));
            c.nodes.push(Some(State::new(
                id,
                config.clone(),
                rng,
                Bytes::new(),
                base,
            )));
            c.drain(id);
        }
        for id in 0..NODES {
            let contacts = if id == 0 { Vec::new() } else { vec![0] };
            c.handle(id, InEvent::Join(contacts));
        }
        c
    }

    fn instant(&self) -> Instant {
        self.base + self.now
    }

    fn alive(&self, id: u32) -> bool {
        self.nodes.get(id as usize).is_some_and(|n| n.is_some())
    }

    fn handle(&mut self, id: u32, event: InEvent<u32>) {
        let now = self.instant();
        if let Some(Some(node)) = self.nodes.get_mut(id as usize) {
            node.handle(event, now);
            self.drain(id);
        }
    }

    fn drain(&mut self, id: u32) {
        let Some(Some(node)) = self.nodes.get_mut(id as usize) else {
            return;
        };
        while let Some(out) = node.poll() {
            match out {
                OutEvent::SendMessage(to, msg) => self.flight.push((id, to, msg)),
                OutEvent::ScheduleTimer(at, timer) => {
                    let at = at.saturating_duration_since(self.base);
                    self.timers.push((id, at, timer));
                }
                OutEvent::Deliver(d) => {
                    match self.sent.get(&d.id) {
                        None => self
                            .violations
                            .push(format!("{id} delivered unsent {:?}", d.id)),
                        Some(p) if *p != d.payload => self
                            .violations
                            .push(format!("{id} got a changed payload {:?}", d.id)),
                        Some(_) => {}
                    }
                    if d.id.origin == id {
                        self.violations
                            .push(format!("{id} delivered its own {:?}", d.id));
                    }
                    if !self.delivered.insert((id, d.id)) {
                        self.violations
                            .push(format!("{id} delivered {:?} twice", d.id));
                    }
                }
                OutEvent::MemberEvent(_) | OutEvent::Disconnect(_) => {}
            }
        }
    }

    fn deliver(&mut self, i: usize) {
        let (from, to, msg) = self.flight.remove(i);
        if self.alive(to) {
            self.handle(to, InEvent::RecvMessage(from, msg));
        } else {
            // What a transport reports when the peer is gone.
            self.handle(from, InEvent::LinkFailed(to));
        }
    }

    fn fire(&mut self, i: usize) {
        let (node, at, timer) = self.timers.remove(i);
        self.now = self.now.max(at);
        self.handle(node, InEvent::TimerExpired(timer));
    }

    fn apply(&mut self, action: Action) {
        match action {
            Action::Deliver(i) if !self.flight.is_empty() => self.deliver(i % self.flight.len()),
            Action::Lose(i) if !self.flight.is_empty() => {
                let i = i % self.flight.len();
                self.flight.remove(i);
            }
            Action::Duplicate(i) if !self.flight.is_empty() => {
                let copy = self.flight[i % self.flight.len()].clone();
                self.flight.push(copy);
            }
            Action::Fire(i) if !self.timers.is_empty() => self.fire(i % self.timers.len()),
            Action::Advance(ms) => self.now += Duration::from_millis(u64::from(ms)),
            Action::Broadcast(id) => {
                let now = self.instant();
                if let Some(Some(node)) = self.nodes.get_mut(id as usize) {
                    let payload = Bytes::from(format!("{id}@{}", self.now.as_millis()));
                    let mid = node.broadcast(payload.clone(), now);
                    if self.sent.insert(mid, payload).is_some() {
                        self.violations.push(format!("message id {mid:?} reused"));
                    }
                    self.drain(id);
                }
            }
            Action::Crash(id) if self.crashes < MAX_CRASHES && self.alive(id) => {
                self.nodes[id as usize] = None;
                self.crashes += 1;
            }
            Action::LinkFailed(a, b) if a != b => self.handle(a, InEvent::LinkFailed(b)),
            _ => {}
        }
    }

    /// No faults: messages first (in send order), then the earliest timer, until `until`.
    fn run_in_order(&mut self, until: Duration) {
        let mut steps = 0;
        while steps < 200_000 {
            steps += 1;
            if !self.flight.is_empty() {
                self.deliver(0);
                continue;
            }
            let Some((i, _)) = self.timers.iter().enumerate().min_by_key(|(_, t)| t.1) else {
                break;
            };
            if self.timers[i].1 > until {
                break;
            }
            self.fire(i);
        }
        self.now = self.now.max(until);
    }

    /// Deliver the messages in flight (no timers), bounded.
    fn drain_messages(&mut self) -> bool {
        for _ in 0..20_000 {
            if self.flight.is_empty() {
                return true;
            }
            self.deliver(0);
        }
        false
    }

    fn check_views(&self) -> Result<(), String> {
        for (id, node) in self.nodes.iter().enumerate() {
            let Some(node) = node else { continue };
            let active: Vec<u32> = node.membership().active_view().copied().collect();
            if active.len() > self.active_capacity() {
                return Err(format!("{id} has {} active peers", active.len()));
            }
            let passive = node.membership().passive_view().count();
            if passive > self.passive_capacity() {
                return Err(format!("{id} has {passive} passive peers"));
            }
            for peer in active {
                let Some(Some(other)) = self.nodes.get(peer as usize) else {
                    return Err(format!("{id} keeps crashed {peer} in its active view"));
                };
                if !other.membership().active_view().any(|p| *p as usize == id) {
                    return Err(format!("{id} has {peer} active but not the reverse"));
                }
            }
        }
        Ok(())
    }

    fn active_capacity(&self) -> usize {
        self.config.membership.active_view_capacity
    }

    fn passive_capacity(&self) -> usize {
        self.config.membership.passive_view_capacity
    }

    /// Every cache stays within its configured bound, at every step.
    fn check_bounds(&self) -> Result<(), String> {
        let b = &self.config.broadcast;
        for (id, node) in self.nodes.iter().enumerate() {
            let Some(node) = node else { continue };
            let layer = node.broadcast_layer();
            if layer.cache_len() > b.cache_capacity {
                return Err(format!("{id} caches {} messages", layer.cache_len()));
            }
            if layer.missing_len() > b.max_missing {
                return Err(format!("{id} waits for {} messages", layer.missing_len()));
            }
            if layer.received_len() > b.max_origins {
                return Err(format!("{id} records {} origins", layer.received_len()));
            }
            if node.directory().len() > self.config.directory.max_members {
                return Err(format!("{id} lists {} members", node.directory().len()));
            }
            let active = node.membership().active_view().count();
            if active > self.active_capacity() {
                return Err(format!("{id} has {active} active peers"));
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(PtConfig {
        cases: 64,
        rng_seed: RngSeed::Fixed(0x5eed),
        failure_persistence: None,
        ..PtConfig::default()
    })]

    #[test]
    fn random_interleavings_keep_the_invariants(
        seed in any::<u64>(),
        actions in proptest::collection::vec(action(), 1..400),
    ) {
        let mut c = Cluster::new(seed);
        // Let the joins complete before the chaos starts.
        c.run_in_order(Duration::from_secs(3));
        for a in actions {
            c.apply(a);
            prop_assert!(c.violations.is_empty(), "{:?}", c.violations);
            prop_assert!(c.flight.len() < 100_000 && c.timers.len() < 100_000);
            if let Err(e) = c.check_bounds() {
                prop_assert!(false, "{}", e);
            }
        }
        // Faults stop: the cluster repairs itself, then goes quiet.
        let until = c.now + Duration::from_secs(60);
        c.run_in_order(until);
        prop_assert!(c.drain_messages(), "messages kept flowing with no timer firing");
        prop_assert!(c.violations.is_empty(), "{:?}", c.violations);
        if let Err(e) = c.check_views() {
            prop_assert!(false, "{}", e);
        }
    }

    #[test]
    fn every_broadcast_reaches_every_live_node_once_quiet(
        seed in any::<u64>(),
        senders in proptest::collection::vec(0..NODES, 1..8),
        crash in proptest::option::of(0..NODES),
    ) {
        let mut c = Cluster::new(seed);
        c.run_in_order(Duration::from_secs(3));
        if let Some(victim) = crash {
            c.apply(Action::Crash(victim));
        }
        for s in senders {
            c.apply(Action::Broadcast(s));
            c.apply(Action::Advance(50));
        }
        let until = c.now + Duration::from_secs(30);
        c.run_in_order(until);
        prop_assert!(c.violations.is_empty(), "{:?}", c.violations);
        for id in c.sent.keys() {
            if !c.alive(id.origin) {
                continue;
            }
            for node in (0..NODES).filter(|&n| c.alive(n) && n != id.origin) {
                prop_assert!(c.delivered.contains(&(node, *id)), "{} missed {:?}", node, id);
            }
        }
    }
}
