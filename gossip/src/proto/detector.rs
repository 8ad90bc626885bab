//! Phi-accrual failure detection on active links.
//!
//! Source: Naohiro Hayashibara, Xavier Défago, Rami Yared, Takuya Katayama, *The φ accrual
//! failure detector*, SRDS 2004; the normal-distribution variant used by Cassandra and Akka.
//!
//! # The detector in words
//!
//! Instead of a yes/no timeout, the detector outputs a suspicion level φ for each watched peer:
//! `φ = -log10(P(no message for this long | the peer is alive))`, where the probability comes
//! from a normal distribution fitted to the recent gaps between messages from that peer. φ = 1
//! means "one chance in ten that a live peer stays silent this long", φ = 8 one in 10⁸. A peer
//! whose φ exceeds [`Config::phi_threshold`] is reported once with [`OutEvent::PeerFailed`] and
//! no longer watched; the overlay then replaces it.
//!
//! Every message from a peer counts as a sign of life, so a busy link needs no heartbeats. The
//! detector sends [`Message::Heartbeat`] only on links where nothing was sent for
//! [`Config::heartbeat_interval`]; links carrying traffic stay free of them, and an idle node
//! sends one small message per active neighbour and heartbeat interval.
//!
//! Because a live peer always sends something at least every `heartbeat_interval` (plus one
//! tick), the mean gap used for φ is never taken below the heartbeat interval: a link that was
//! busy and turns idle does not look like a failure when traffic gives way to heartbeats.
//!
//! One periodic [`Timer::Tick`] (armed only while a link is watched) checks every link.
//! Detection time after the last message is about
//! `max(mean gap, heartbeat_interval) + acceptable_pause + z(threshold) * std_dev`, with
//! `z(8) ≈ 5.2`; with the defaults that is about 1.1 s, plus up to one tick.
use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Instant, PeerId};

/// Detector settings. `Default` suits a LAN: detection in about 1.2 s after the last message,
/// and about 2.5 heartbeats per idle link and second.
#[derive(Debug, Clone)]
pub struct Config {
    /// How often every link is checked (default 100 ms). Detection happens at the first tick
    /// after φ crosses the threshold, so this adds up to one interval to detection time; a
    /// shorter tick costs a little CPU per node.
    pub tick_interval: Duration,
    /// A heartbeat goes out on a link where nothing was sent for this long (default 400 ms).
    /// Shorter detects faster and sends more on idle links; detection time is roughly twice
    /// this plus the other terms.
    pub heartbeat_interval: Duration,
    /// Suspicion level at which a peer is reported failed (default 8: a live peer is wrongly
    /// reported with odds around 10⁻⁸ per check under the model). Lower detects sooner with
    /// more false suspicions; each point adds about `0.3 * std_dev` to detection time near 8.
    pub phi_threshold: f64,
    /// How many recent gaps between messages are kept per peer (default 100). More samples give
    /// a steadier estimate and adapt slower to a change in traffic.
    pub max_sample_size: usize,
    /// Floor of the standard deviation (default 100 ms). Regular heartbeats have a tiny
    /// deviation, which would make φ jump on the smallest delay; the floor absorbs network
    /// jitter and scheduling pauses. Raising it delays detection by `z * delta` (z ≈ 5.2 at φ 8).
    pub min_std_deviation: Duration,
    /// Extra silence tolerated before suspicion grows (default 100 ms), added to the mean gap:
    /// covers the heartbeat being sent on the sender's next tick and short pauses. On a WAN,
    /// raise it to cover the round-trip time and its jitter.
    pub acceptable_pause: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            tick_interval: Duration::from_millis(100),
            heartbeat_interval: Duration::from_millis(400),
            phi_threshold: 8.0,
            max_sample_size: 100,
            min_std_deviation: Duration::from_millis(100),
            acceptable_pause: Duration::from_millis(100),
        }
    }
}

/// Wire messages of the detector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// A heartbeat on an idle link.
    Heartbeat,
}

/// Timers of the detector.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Timer {
    /// Periodic check of every watched link.
    Tick,
}

/// Inputs of the detector.
#[derive(Debug)]
pub enum InEvent<P: PeerId> {
    /// Start watching an active link.
    LinkUp(P),
    /// Stop watching a link.
    LinkDown(P),
    /// A detector message from the peer.
    RecvMessage(P, Message),
    /// Any message arrived from the peer (counts as a heartbeat).
    Received(P),
    /// Some message was sent to the peer (the link is not idle).
    Sent(P),
    /// A timer fired.
    TimerExpired(Timer),
}

/// Outputs of the detector.
#[derive(Debug, PartialEq, Eq)]
pub enum OutEvent<P: PeerId> {
    /// Send a message to a peer.
    SendMessage(P, Message),
    /// Call back with `TimerExpired` after the duration.
    ScheduleTimer(Duration, Timer),
    /// The peer is considered failed (phi over the threshold). Reported once; the peer is no
    /// longer watched until the next `LinkUp`.
    PeerFailed(P),
}

/// Counters, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Heartbeats sent.
    pub heartbeats_sent: u64,
    /// Peers reported failed.
    pub failures_detected: u64,
}

/// Arrival history of one watched link.
#[derive(Debug, Clone)]
struct Link<P> {
    peer: P,
    last_sent: Instant,
    last_arrival: Instant,
    /// Recent gaps between arrivals, in milliseconds.
    gaps: VecDeque<f64>,
    sum: f64,
    sum_sq: f64,
}

impl<P> Link<P> {
    fn record_arrival(&mut self, now: Instant, max_samples: usize) {
        let gap = now
            .saturating_duration_since(self.last_arrival)
            .as_secs_f64()
            * 1000.0;
        self.last_arrival = now;
        if max_samples == 0 {
            return;
        }
        if self.gaps.len() >= max_samples
            && let Some(old) = self.gaps.pop_front()
        {
            self.sum -= old;
            self.sum_sq -= old * old;
        }
        self.gaps.push_back(gap);
        self.sum += gap;
        self.sum_sq += gap * gap;
        if self.gaps.len() == 1 {
            // Start the running sums afresh each time the window restarts: no drift.
            self.sum = gap;
            self.sum_sq = gap * gap;
        }
    }

    /// Mean and standard deviation of the gaps, in milliseconds.
    fn mean_std(&self, config: &Config) -> (f64, f64) {
        let n = self.gaps.len();
        if n == 0 {
            // No sample yet: assume heartbeats at the configured pace.
            let mean = config.heartbeat_interval.as_secs_f64() * 1000.0;
            return (mean, mean / 4.0);
        }
        let mean = self.sum / n as f64;
        let variance = (self.sum_sq / n as f64 - mean * mean).max(0.0);
        (mean, variance.sqrt())
    }
}

/// Detector state: one arrival history per watched link.
#[derive(Debug)]
pub struct State<P: PeerId> {
    config: Config,
    links: Vec<Link<P>>,
    tick_armed: bool,
    stats: Stats,
}

impl<P: PeerId> State<P> {
    /// A new detector.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            links: Vec::new(),
            tick_armed: false,
            stats: Stats::default(),
        }
    }

    /// Arm the periodic tick if a link is watched. Called once; the tick is otherwise armed by
    /// the first [`InEvent::LinkUp`] and lapses while no link is watched.
    pub fn start(&mut self, _now: Instant, out: &mut VecDeque<OutEvent<P>>) {
        self.arm_tick(out);
    }

    /// Handle one input.
    pub fn handle(&mut self, event: InEvent<P>, now: Instant, out: &mut VecDeque<OutEvent<P>>) {
        match event {
            InEvent::LinkUp(peer) => {
                if !self.links.iter().any(|l| l.peer == peer) {
                    // Due at once: the first heartbeat goes out on the next tick, so the peer,
                    // whose end of the link may have opened a round trip earlier, hears from
                    // us soon.
                    let last_sent = now
                        .checked_sub(self.config.heartbeat_interval)
                        .unwrap_or(now);
                    self.links.push(Link {
                        peer,
                        last_sent,
                        last_arrival: now,
                        gaps: VecDeque::new(),
                        sum: 0.0,
                        sum_sq: 0.0,
                    });
                }
                self.arm_tick(out);
            }
            InEvent::LinkDown(peer) => self.links.retain(|l| l.peer != peer),
            // The arrival itself was recorded by `Received`; a heartbeat carries nothing else.
            InEvent::RecvMessage(_, Message::Heartbeat) => {}
            InEvent::Received(peer) => {
                let max = self.config.max_sample_size;
                if let Some(link) = self.links.iter_mut().find(|l| l.peer == peer) {
                    link.record_arrival(now, max);
                }
            }
            InEvent::Sent(peer) => {
                if let Some(link) = self.links.iter_mut().find(|l| l.peer == peer) {
                    link.last_sent = now;
                }
            }
            InEvent::TimerExpired(Timer::Tick) => self.on_tick(now, out),
        }
    }

    /// Current suspicion level of `peer`, or `None` if it is not watched.
    pub fn phi(&self, peer: P, now: Instant) -> Option<f64> {
        let link = self.links.iter().find(|l| l.peer == peer)?;
        Some(self.phi_of(link, now))
    }

    /// Peers currently watched.
    pub fn watched(&self) -> impl Iterator<Item = &P> {
        self.links.iter().map(|l| &l.peer)
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The settings in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    fn on_tick(&mut self, now: Instant, out: &mut VecDeque<OutEvent<P>>) {
        self.tick_armed = false;
        let threshold = self.config.phi_threshold;
        let mut i = 0;
        while i < self.links.len() {
            if self.phi_of(&self.links[i], now) > threshold {
                let link = self.links.remove(i);
                self.stats.failures_detected += 1;
                out.push_back(OutEvent::PeerFailed(link.peer));
                continue;
            }
            let link = &mut self.links[i];
            if now.saturating_duration_since(link.last_sent) >= self.config.heartbeat_interval {
                link.last_sent = now;
                self.stats.heartbeats_sent += 1;
                out.push_back(OutEvent::SendMessage(link.peer, Message::Heartbeat));
            }
            i += 1;
        }
        self.arm_tick(out);
    }

    fn arm_tick(&mut self, out: &mut VecDeque<OutEvent<P>>) {
        if !self.tick_armed && !self.links.is_empty() {
            self.tick_armed = true;
            // Never zero: a zero interval would spin the driver.
            let tick = self.config.tick_interval.max(Duration::from_millis(1));
            out.push_back(OutEvent::ScheduleTimer(tick, Timer::Tick));
        }
    }

    fn phi_of(&self, link: &Link<P>, now: Instant) -> f64 {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let elapsed = ms(now.saturating_duration_since(link.last_arrival));
        let (mean, std) = link.mean_std(&self.config);
        let mean = mean.max(ms(self.config.heartbeat_interval)) + ms(self.config.acceptable_pause);
        let std = std.max(ms(self.config.min_std_deviation)).max(1e-3);
        phi(elapsed, mean, std)
    }
}

/// `-log10(1 - F(elapsed))` for a normal distribution `F` of the given mean and standard
/// deviation, with the logistic approximation of the normal CDF (error below 1.4e-4) that
/// Cassandra and Akka use; it stays finite and monotonic far into the tail.
fn phi(elapsed: f64, mean: f64, std: f64) -> f64 {
    let y = (elapsed - mean) / std;
    let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
    let value = if elapsed > mean {
        -(e / (1.0 + e)).log10()
    } else {
        -(1.0 - 1.0 / (1.0 + e)).log10()
    };
    if value.is_nan() { 0.0 } else { value }
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn base() -> Instant {
        static BASE: OnceLock<Instant> = OnceLock::new();
        *BASE.get_or_init(Instant::now)
    }

    fn at(ms: u64) -> Instant {
        base() + Duration::from_millis(ms)
    }

    /// Drives one detector on a virtual millisecond clock with the default 100 ms tick.
    struct Harness {
        state: State<u32>,
        out: VecDeque<OutEvent<u32>>,
        now: u64,
        next_tick: Option<u64>,
        heartbeats: Vec<(u64, u32)>,
        failed: Vec<(u64, u32)>,
    }

    impl Harness {
        fn new(config: Config) -> Self {
            let mut h = Self {
                state: State::new(config),
                out: VecDeque::new(),
                now: 0,
                next_tick: None,
                heartbeats: Vec::new(),
                failed: Vec::new(),
            };
            h.state.start(at(0), &mut h.out);
            h.drain();
            h
        }

        fn input(&mut self, event: InEvent<u32>) {
            self.state.handle(event, at(self.now), &mut self.out);
            self.drain();
        }

        fn drain(&mut self) {
            while let Some(ev) = self.out.pop_front() {
                match ev {
                    OutEvent::SendMessage(p, Message::Heartbeat) => {
                        self.heartbeats.push((self.now, p))
                    }
                    OutEvent::ScheduleTimer(d, Timer::Tick) => {
                        assert!(self.next_tick.is_none(), "one tick at a time");
                        self.next_tick = Some(self.now + d.as_millis() as u64);
                    }
                    OutEvent::PeerFailed(p) => self.failed.push((self.now, p)),
                }
            }
        }

        /// Advance to `t`, firing ticks on the way.
        fn advance(&mut self, t: u64) {
            while let Some(tick) = self.next_tick.filter(|tick| *tick <= t) {
                self.now = tick;
                self.next_tick = None;
                self.input(InEvent::TimerExpired(Timer::Tick));
            }
            self.now = t;
        }
    }

    #[test]
    fn steady_heartbeats_keep_phi_low() {
        let mut h = Harness::new(Config::default());
        h.input(InEvent::LinkUp(1));
        let mut rng = SmallRng::seed_from_u64(1);
        let mut t = 0;
        let mut max_phi: f64 = 0.0;
        while t < 120_000 {
            // The peer's heartbeats: 400-500 ms apart, plus 10-100 ms of network jitter.
            t += rng.random_range(400..500) + rng.random_range(0..90);
            h.advance(t);
            max_phi = max_phi.max(h.state.phi(1, at(t)).expect("watched"));
            h.input(InEvent::Received(1));
            h.input(InEvent::RecvMessage(1, Message::Heartbeat));
        }
        assert!(h.failed.is_empty(), "false suspicion: {:?}", h.failed);
        assert!(max_phi < 1.0, "phi peaked at {max_phi}");
    }

    #[test]
    fn silence_crosses_the_threshold_within_the_expected_time_and_reports_once() {
        let mut h = Harness::new(Config::default());
        h.input(InEvent::LinkUp(1));
        let mut t = 0;
        for _ in 0..50 {
            t += 450;
            h.advance(t);
            h.input(InEvent::Received(1));
        }
        let last = t;
        h.advance(last + 5_000);
        assert_eq!(h.failed.len(), 1, "{:?}", h.failed);
        let (when, peer) = h.failed[0];
        assert_eq!(peer, 1);
        let detection = when - last;
        // mean 450 + pause 100 + 5.2 * 100 (std floor) ~ 1.07 s, plus up to one tick.
        assert!(
            (1_000..=1_300).contains(&detection),
            "detected after {detection} ms"
        );
        assert_eq!(h.state.phi(1, at(h.now)), None, "no longer watched");
        assert_eq!(h.state.stats().failures_detected, 1);
    }

    #[test]
    fn a_peer_that_never_speaks_is_detected() {
        let mut h = Harness::new(Config::default());
        h.input(InEvent::LinkUp(1));
        h.advance(3_000);
        assert_eq!(h.failed.len(), 1);
        assert!(h.failed[0].0 <= 1_300, "{:?}", h.failed);
    }

    #[test]
    fn heartbeats_only_on_idle_links() {
        let mut h = Harness::new(Config::default());
        h.input(InEvent::LinkUp(1));
        h.input(InEvent::LinkUp(2));
        let mut t = 0;
        while t < 10_000 {
            t += 50;
            h.advance(t);
            // Traffic to 1 every 50 ms; both peers answer often enough to stay alive.
            h.input(InEvent::Sent(1));
            h.input(InEvent::Received(1));
            h.input(InEvent::Received(2));
        }
        assert!(h.failed.is_empty());
        assert!(
            h.heartbeats.iter().all(|(_, p)| *p == 2),
            "{:?}",
            h.heartbeats
        );
        // Idle link: one heartbeat per 400 ms, checked on 100 ms ticks.
        let n = h.heartbeats.len();
        assert!((20..=26).contains(&n), "{n} heartbeats in 10 s");
        for w in h.heartbeats.windows(2) {
            let gap = w[1].0 - w[0].0;
            assert!((400..=500).contains(&gap), "gap {gap}");
        }
    }

    #[test]
    fn first_heartbeat_goes_out_on_the_next_tick() {
        let mut h = Harness::new(Config::default());
        h.now = 5_000;
        h.input(InEvent::LinkUp(1));
        h.advance(5_100);
        assert_eq!(h.heartbeats, vec![(5_100, 1)]);
        h.advance(5_400);
        assert_eq!(h.heartbeats.len(), 1, "then one per heartbeat interval");
        h.advance(5_500);
        assert_eq!(h.heartbeats, vec![(5_100, 1), (5_500, 1)]);
    }

    #[test]
    fn busy_link_turning_idle_is_not_suspected() {
        let mut h = Harness::new(Config::default());
        h.input(InEvent::LinkUp(1));
        let mut t = 0;
        while t < 10_000 {
            t += 5;
            h.advance(t);
            h.input(InEvent::Received(1));
        }
        // Traffic stops; the peer's heartbeats start after its own idle interval (plus a tick
        // and network jitter).
        t += 500 + 90;
        for _ in 0..100 {
            h.advance(t);
            h.input(InEvent::Received(1));
            t += 500;
        }
        assert!(h.failed.is_empty(), "false suspicion at {:?}", h.failed);
    }

    #[test]
    fn link_down_stops_watching_and_lets_the_tick_lapse() {
        let mut h = Harness::new(Config::default());
        assert!(h.next_tick.is_none(), "no tick without links");
        assert_eq!(h.state.phi(1, at(0)), None);
        h.input(InEvent::LinkUp(1));
        assert!(h.next_tick.is_some());
        h.input(InEvent::LinkDown(1));
        h.advance(10_000);
        assert!(h.failed.is_empty() && h.heartbeats.is_empty());
        assert!(h.next_tick.is_none());
        assert_eq!(h.state.watched().count(), 0);
    }

    #[test]
    fn phi_grows_with_silence() {
        assert!(phi(0.0, 500.0, 100.0) < 0.01);
        let values: Vec<f64> = [500.0, 700.0, 900.0, 1100.0, 1300.0]
            .iter()
            .map(|e| phi(*e, 500.0, 100.0))
            .collect();
        assert!(values.windows(2).all(|w| w[0] < w[1]), "{values:?}");
        assert!(
            (values[0] - 0.30).abs() < 0.01,
            "phi at the mean is -log10(0.5)"
        );
        // About 5.2 standard deviations above the mean give phi 8 (the logistic approximation
        // is a little steeper than the normal tail, which would need 5.6).
        assert!(
            (phi(1023.0, 500.0, 100.0) - 8.0).abs() < 0.3,
            "{}",
            phi(1023.0, 500.0, 100.0)
        );
        assert!(phi(1e9, 500.0, 100.0).is_infinite() || phi(1e9, 500.0, 100.0) > 100.0);
    }

    /// The detector and the overlay composed in [`crate::proto::State`], driven the way the
    /// runtime drives them: crashed nodes go silent (no transport error), so only heartbeats
    /// and phi can notice.
    mod composed {
        use std::collections::{BTreeMap, BTreeSet, HashMap};

        use bytes::Bytes;

        use super::*;
        use crate::proto;

        struct Net {
            nodes: Vec<Option<proto::State<u32, SmallRng>>>,
            queue: BTreeMap<(u64, u64), (u32, proto::InEvent<u32>)>,
            seq: u64,
            now: u64,
            link_free: HashMap<(u32, u32), u64>,
            net: SmallRng,
            latency_us: (u64, u64),
            /// Overlay and detector bytes sent (bincode), to measure idle traffic.
            bytes: u64,
            /// (node, peer, time) of every active link that closed.
            downs: Vec<(u32, u32, u64)>,
        }

        impl Net {
            fn new(n: u32, seed: u64, latency_us: (u64, u64)) -> Self {
                let mut net = Self {
                    nodes: Vec::new(),
                    queue: BTreeMap::new(),
                    seq: 0,
                    now: 0,
                    link_free: HashMap::new(),
                    net: SmallRng::seed_from_u64(seed),
                    latency_us,
                    bytes: 0,
                    downs: Vec::new(),
                };
                for i in 0..n {
                    let rng = SmallRng::seed_from_u64(seed.wrapping_mul(31) ^ u64::from(i));
                    let state =
                        proto::State::new(i, proto::Config::default(), rng, Bytes::new(), net.at());
                    net.nodes.push(Some(state));
                    net.drain(i);
                }
                net
            }

            fn at(&self) -> Instant {
                base() + Duration::from_micros(self.now)
            }

            fn push(&mut self, t: u64, node: u32, ev: proto::InEvent<u32>) {
                self.seq += 1;
                self.queue.insert((t, self.seq), (node, ev));
            }

            fn drain(&mut self, node: u32) {
                loop {
                    let Some(state) = self.nodes[node as usize].as_mut() else {
                        return;
                    };
                    let Some(ev) = state.poll() else { return };
                    match ev {
                        proto::OutEvent::SendMessage(to, m) => {
                            if matches!(
                                m,
                                proto::Message::Membership(_) | proto::Message::Detector(_)
                            ) {
                                let cfg = bincode::config::standard();
                                self.bytes += bincode::serde::encode_to_vec(&m, cfg)
                                    .expect("encodes")
                                    .len() as u64;
                            }
                            let lat = self.net.random_range(self.latency_us.0..self.latency_us.1);
                            let free = self.link_free.entry((node, to)).or_insert(0);
                            let t = (self.now + lat).max(*free + 1);
                            *free = t;
                            self.push(t, to, proto::InEvent::RecvMessage(node, m));
                        }
                        proto::OutEvent::ScheduleTimer(when, timer) => {
                            let t = when.saturating_duration_since(base()).as_micros() as u64;
                            self.push(t.max(self.now), node, proto::InEvent::TimerExpired(timer));
                        }
                        _ => {}
                    }
                }
            }

            fn active(&self, i: u32) -> BTreeSet<u32> {
                self.nodes[i as usize]
                    .as_ref()
                    .map(|s| s.membership().active_view().copied().collect())
                    .unwrap_or_default()
            }

            fn run_until(&mut self, t_ms: u64) {
                let end = t_ms * 1000;
                while let Some(entry) = self.queue.first_entry() {
                    if entry.key().0 > end {
                        break;
                    }
                    let ((t, _), (node, ev)) = entry.remove_entry();
                    self.now = t;
                    let before = self.active(node);
                    let now = self.at();
                    // A crashed node hears nothing; its peers get no transport error either.
                    let Some(state) = self.nodes[node as usize].as_mut() else {
                        continue;
                    };
                    state.handle(ev, now);
                    self.drain(node);
                    let after = self.active(node);
                    for p in before.difference(&after) {
                        self.downs.push((node, *p, t));
                    }
                }
                self.now = self.now.max(end);
            }
        }

        fn cluster(latency_us: (u64, u64)) -> Net {
            let mut net = Net::new(30, 42, latency_us);
            for i in 1..30u32 {
                net.push(u64::from(i) * 50_000, i, proto::InEvent::Join(vec![0]));
            }
            net.run_until(20_000);
            net
        }

        #[test]
        fn quiet_cluster_has_no_false_suspicions_and_little_idle_traffic() {
            for latency in [(200, 2_000), (10_000, 100_000), (100_000, 200_000)] {
                let mut net = cluster(latency);
                let downs = net.downs.len();
                let bytes = net.bytes;
                net.run_until(80_000);
                let churn: Vec<_> = net.downs[downs..].to_vec();
                assert!(
                    churn.is_empty(),
                    "links closed in a quiet cluster: {churn:?}"
                );
                let per_node_s = (net.bytes - bytes) as f64 / 30.0 / 60.0;
                println!("latency {latency:?} us: idle {per_node_s:.0} bytes/node/s");
                assert!(
                    per_node_s < 1_000.0,
                    "{per_node_s} bytes per node per second"
                );
            }
        }

        #[test]
        fn silent_crash_is_detected_within_two_seconds_and_replaced() {
            let mut net = cluster((200, 2_000));
            let victims = [3u32, 17, 25];
            let neighbours: Vec<(u32, u32)> = (0..30u32)
                .filter(|i| !victims.contains(i))
                .flat_map(|i| net.active(i).into_iter().map(move |p| (i, p)))
                .filter(|(_, p)| victims.contains(p))
                .collect();
            assert!(!neighbours.is_empty());
            let crash_at = net.now;
            for v in victims {
                net.nodes[v as usize] = None;
            }
            net.run_until(crash_at / 1000 + 5_000);
            let mut worst = 0;
            for (i, p) in &neighbours {
                let (_, _, t) = net
                    .downs
                    .iter()
                    .find(|(n, q, t)| n == i && q == p && *t > crash_at)
                    .unwrap_or_else(|| panic!("{i} never noticed {p} crashed"));
                worst = worst.max(t - crash_at);
            }
            println!(
                "worst detection {} ms over {} links",
                worst / 1000,
                neighbours.len()
            );
            assert!(worst < 2_000_000, "detected after {} ms", worst / 1000);
            // Repairs may evict a live link (a node left with no link asks with high priority,
            // and a full node then drops one at random), but at most one per lost link; and the
            // overlay refills.
            let live_drops = net
                .downs
                .iter()
                .filter(|(_, p, t)| *t > crash_at && !victims.contains(p))
                .count();
            assert!(
                live_drops <= neighbours.len(),
                "{live_drops} live links dropped for {} lost",
                neighbours.len()
            );
            net.run_until(crash_at / 1000 + 10_000);
            for i in (0..30u32).filter(|i| !victims.contains(i)) {
                let active = net.active(i);
                assert!(!active.is_empty() && active.iter().all(|p| !victims.contains(p)));
            }
        }
    }
}
