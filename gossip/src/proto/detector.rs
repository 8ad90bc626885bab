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
//! Because a live peer always sends something about every `heartbeat_interval` at least, the
//! mean gap used for φ is never taken below the heartbeat interval: a link that was busy and
//! turns idle does not look like a failure when traffic gives way to heartbeats.
//!
//! # Deadlines instead of a periodic tick
//!
//! Between two arrivals from a peer the fitted distribution does not change, so φ grows with
//! the silence alone and crosses the threshold at an instant known in advance: the arrival plus
//! `mean + z * std_dev`, where `z` solves `φ(z) = threshold` (computed once). Each link
//! therefore keeps two deadlines: when its heartbeat is due and when its peer becomes suspect.
//! The detector arms one [`Timer::Check`] at the earliest deadline of all links and re-arms it
//! lazily: traffic only pushes deadlines later, so it arms nothing; a check that fires before
//! anything is due just arms the next one. Heartbeats keep the pace a 100 ms tick gave them,
//! with [`Config::heartbeat_slack`] in place of the tick: on an idle link (the last message sent
//! was a heartbeat) one goes out every `heartbeat_interval`, or up to the slack early to share
//! the check of another link, so the idle links of a node fall into step; after traffic, the
//! next one goes out up to the slack late, when a check is due anyway, and more traffic may
//! make it needless. An idle node costs about one check per heartbeat interval instead of ten
//! ticks; a link carrying traffic at most one more, for a deadline its traffic moved.
//! (Timers cannot be cancelled; a deadline that moves earlier, a new link or a narrower fit,
//! arms one more check.)
//!
//! Detection time after the last message is about
//! `max(mean gap, heartbeat_interval) + acceptable_pause + z(threshold) * std_dev`, with
//! `z(8) ≈ 5.2`; with the defaults that is about 1.0-1.1 s.
use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Instant, PeerId};

/// Detector settings. `Default` suits a LAN: detection in about 1.1 s after the last message,
/// and about 2 heartbeats per idle link and second.
#[derive(Debug, Clone)]
pub struct Config {
    /// How far off its due time a heartbeat may go out (default 100 ms), so that one timer
    /// serves several links: on an idle link (the last message sent was a heartbeat) up to this
    /// much early, along with another link's heartbeat, and never late, so an idle link sends
    /// one every `heartbeat_interval`; after traffic, up to this much late. Zero sends each
    /// heartbeat exactly on time, at the cost of more timers.
    pub heartbeat_slack: Duration,
    /// A heartbeat goes out on a link where nothing was sent for this long (default 400 ms),
    /// give or take `heartbeat_slack`.
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
    /// covers a heartbeat sent up to `heartbeat_slack` late after traffic, and short pauses. On a WAN,
    /// raise it to cover the round-trip time and its jitter.
    pub acceptable_pause: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            heartbeat_slack: Duration::from_millis(100),
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
    /// Check the links whose deadline (heartbeat due, peer suspect) has come. Armed for the
    /// earliest deadline; a check that finds nothing due only arms the next one.
    Check,
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
    /// Call back with `TimerExpired` after the duration. Every timer must be handed back: the
    /// detector arms the next check only when one fires.
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
    /// Check timers that fired.
    pub checks: u64,
}

/// Nanoseconds of a duration, saturating.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Arrival history and deadlines of one watched link. Times are nanoseconds since the
/// detector's epoch.
#[derive(Debug, Clone)]
struct Link<P> {
    peer: P,
    /// When a heartbeat is due: the last message sent plus the heartbeat interval.
    heartbeat_due: u64,
    /// The last message sent was a heartbeat (or none was sent yet): the link is idle, its
    /// heartbeats keep their pace and may go out early; after traffic, the next one may go
    /// out late.
    idle: bool,
    last_arrival: u64,
    /// When φ crosses the threshold if nothing arrives before.
    suspect_at: u64,
    /// Running sums of `gaps` (as `f64`, of the same stored values: no drift between them).
    sum: f64,
    sum_sq: f64,
    /// Recent gaps between arrivals, in milliseconds.
    gaps: VecDeque<f32>,
}

impl<P> Link<P> {
    fn record_arrival(&mut self, now: u64, max_samples: usize) {
        let gap = now.saturating_sub(self.last_arrival) as f64 / 1e6;
        self.last_arrival = now;
        if max_samples == 0 {
            return;
        }
        if self.gaps.len() >= max_samples
            && let Some(old) = self.gaps.pop_front()
        {
            let old = f64::from(old);
            self.sum -= old;
            self.sum_sq -= old * old;
        }
        let gap = gap as f32;
        self.gaps.push_back(gap);
        let gap = f64::from(gap);
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
            let mean = millis(config.heartbeat_interval);
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
    /// The instant times are counted from: the first one the detector saw.
    epoch: Option<Instant>,
    /// The latest instant converted by [`Self::time`], and its time: a node handles a batch
    /// of frames, and the messages they make it send, at one instant.
    last_time: Option<(Instant, u64)>,
    /// The earliest check handed to the driver and not yet fired (ns since the epoch).
    next_check: Option<u64>,
    /// `z` with `φ(mean + z * std_dev) = phi_threshold`.
    z: f64,
    stats: Stats,
}

impl<P: PeerId> State<P> {
    /// A new detector.
    pub fn new(config: Config) -> Self {
        let z = z_for(config.phi_threshold);
        Self {
            config,
            links: Vec::new(),
            epoch: None,
            last_time: None,
            next_check: None,
            z,
            stats: Stats::default(),
        }
    }

    /// Sets the epoch. Checks are armed by [`InEvent::LinkUp`] and lapse while no link is
    /// watched, so there is nothing else to start.
    pub fn start(&mut self, now: Instant, out: &mut VecDeque<OutEvent<P>>) {
        let now = self.time(now);
        self.arm(now, out);
    }

    /// Handle one input.
    #[inline]
    pub fn handle(&mut self, event: InEvent<P>, now: Instant, out: &mut VecDeque<OutEvent<P>>) {
        // `Received` and `Sent` come with every message in and out of a busy node: inline.
        match event {
            InEvent::Received(peer) => self.received(peer, now, out),
            InEvent::Sent(peer) => self.sent(peer, now),
            event => self.handle_other(event, now, out),
        }
    }

    /// Any message arrived from `peer`.
    fn received(&mut self, peer: P, now: Instant, out: &mut VecDeque<OutEvent<P>>) {
        let now = self.time(now);
        if let Some(i) = self.index(peer) {
            let max = self.config.max_sample_size;
            self.links[i].record_arrival(now, max);
            let suspect_at = now.saturating_add(self.suspect_after(&self.links[i]));
            self.links[i].suspect_at = suspect_at;
            // Usually later than the armed check; a narrower distribution can bring
            // it closer.
            if self.next_check.is_none_or(|c| c > suspect_at) {
                self.arm(now, out);
            }
        }
    }

    /// Some message was sent to `peer`.
    #[inline]
    fn sent(&mut self, peer: P, now: Instant) {
        let now = self.time(now);
        if let Some(i) = self.index(peer) {
            // Only ever later: the armed check stays valid.
            let link = &mut self.links[i];
            link.heartbeat_due = now.saturating_add(nanos(self.config.heartbeat_interval));
            link.idle = false;
        }
    }

    fn handle_other(&mut self, event: InEvent<P>, at: Instant, out: &mut VecDeque<OutEvent<P>>) {
        let now = self.time(at);
        match event {
            InEvent::LinkUp(peer) => {
                if self.index(peer).is_none() {
                    let mut link = Link {
                        peer,
                        // Due within the slack: the peer, whose end of the link may have opened
                        // a round trip earlier, hears from us soon.
                        heartbeat_due: now.saturating_add(nanos(self.config.heartbeat_slack)),
                        idle: true,
                        last_arrival: now,
                        suspect_at: now,
                        sum: 0.0,
                        sum_sq: 0.0,
                        gaps: VecDeque::new(),
                    };
                    link.suspect_at = now.saturating_add(self.suspect_after(&link));
                    self.links.push(link);
                }
                self.arm(now, out);
            }
            InEvent::LinkDown(peer) => {
                if let Some(i) = self.index(peer) {
                    self.links.remove(i);
                }
            }
            // The arrival itself was recorded by `Received`; a heartbeat carries nothing else.
            InEvent::RecvMessage(_, Message::Heartbeat) => {}
            InEvent::Received(peer) => self.received(peer, at, out),
            InEvent::Sent(peer) => self.sent(peer, at),
            InEvent::TimerExpired(Timer::Check) => self.on_check(now, out),
        }
    }

    /// Current suspicion level of `peer`, or `None` if it is not watched.
    pub fn phi(&self, peer: P, now: Instant) -> Option<f64> {
        let link = &self.links[self.index(peer)?];
        let now = self
            .epoch
            .map_or(0, |e| nanos(now.saturating_duration_since(e)));
        let elapsed = now.saturating_sub(link.last_arrival) as f64 / 1e6;
        let (mean, std) = self.fitted(link);
        Some(phi(elapsed, mean, std))
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

    #[inline]
    fn time(&mut self, now: Instant) -> u64 {
        if let Some((at, t)) = self.last_time
            && at == now
        {
            return t;
        }
        let epoch = *self.epoch.get_or_insert(now);
        let t = nanos(now.saturating_duration_since(epoch));
        self.last_time = Some((now, t));
        t
    }

    fn index(&self, peer: P) -> Option<usize> {
        self.links.iter().position(|l| l.peer == peer)
    }

    /// Mean and standard deviation (ms) that φ is computed with, floors applied.
    fn fitted(&self, link: &Link<P>) -> (f64, f64) {
        let (mean, std) = link.mean_std(&self.config);
        let mean =
            mean.max(millis(self.config.heartbeat_interval)) + millis(self.config.acceptable_pause);
        let std = std.max(millis(self.config.min_std_deviation)).max(1e-3);
        (mean, std)
    }

    /// Nanoseconds of silence after the last arrival at which φ crosses the threshold.
    fn suspect_after(&self, link: &Link<P>) -> u64 {
        let (mean, std) = self.fitted(link);
        // `as` saturates (and maps NaN to 0, suspect at once).
        ((mean + self.z * std) * 1e6).max(0.0) as u64
    }

    fn on_check(&mut self, now: u64, out: &mut VecDeque<OutEvent<P>>) {
        self.stats.checks += 1;
        // The armed check, unless an earlier deadline armed another since (then this one is
        // a stale, later one). A driver firing up to 1 ms early still counts as on time.
        if self
            .next_check
            .is_some_and(|c| c <= now.saturating_add(1_000_000))
        {
            self.next_check = None;
        }
        let interval = nanos(self.config.heartbeat_interval);
        // When a heartbeat is due, idle links due within the slack send theirs with it, a
        // little early: they fall into step and share their later checks. A check that only
        // found a deadline moved by traffic sends nothing early, nor does a link that carried
        // traffic (more may come and make the heartbeat needless).
        let early = if self.links.iter().any(|l| l.heartbeat_due <= now) {
            now.saturating_add(nanos(self.config.heartbeat_slack))
        } else {
            now
        };
        let mut i = 0;
        while i < self.links.len() {
            let link = &mut self.links[i];
            if now >= link.suspect_at {
                let peer = self.links.remove(i).peer;
                self.stats.failures_detected += 1;
                out.push_back(OutEvent::PeerFailed(peer));
                continue;
            }
            let horizon = if link.idle { early } else { now };
            if horizon >= link.heartbeat_due {
                link.heartbeat_due = now.saturating_add(interval);
                link.idle = true;
                self.stats.heartbeats_sent += 1;
                out.push_back(OutEvent::SendMessage(link.peer, Message::Heartbeat));
            }
            i += 1;
        }
        self.arm(now, out);
    }

    /// Arm a check for the earliest deadline unless one is armed at or before it.
    fn arm(&mut self, now: u64, out: &mut VecDeque<OutEvent<P>>) {
        let slack = nanos(self.config.heartbeat_slack);
        let Some(due) = self
            .links
            .iter()
            .map(|l| {
                let late = if l.idle { 0 } else { slack };
                l.heartbeat_due.saturating_add(late).min(l.suspect_at)
            })
            .min()
        else {
            return;
        };
        if self.next_check.is_some_and(|c| c <= due) {
            return;
        }
        // Never sooner than 1 ms: a zero interval would spin the driver.
        let delay = due.saturating_sub(now).max(1_000_000);
        self.next_check = Some(now.saturating_add(delay));
        out.push_back(OutEvent::ScheduleTimer(
            Duration::from_nanos(delay),
            Timer::Check,
        ));
    }
}

/// The `z` (standard deviations above the mean) at which [`phi`] first exceeds `threshold`.
fn z_for(threshold: f64) -> f64 {
    let (mut lo, mut hi) = (-40.0, 40.0);
    for _ in 0..64 {
        let mid = (lo + hi) / 2.0;
        if phi(mid, 0.0, 1.0) > threshold {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
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

    /// Drives one detector on a virtual millisecond clock, firing every timer it arms.
    struct Harness {
        state: State<u32>,
        out: VecDeque<OutEvent<u32>>,
        now: u64,
        /// Armed checks, in ms.
        timers: Vec<u64>,
        heartbeats: Vec<(u64, u32)>,
        failed: Vec<(u64, u32)>,
        checks: u64,
    }

    impl Harness {
        fn new(config: Config) -> Self {
            let mut h = Self {
                state: State::new(config),
                out: VecDeque::new(),
                now: 0,
                timers: Vec::new(),
                heartbeats: Vec::new(),
                failed: Vec::new(),
                checks: 0,
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
                    OutEvent::ScheduleTimer(d, Timer::Check) => {
                        assert!(d >= Duration::from_millis(1), "a zero timer spins");
                        let ms = d.as_nanos().div_ceil(1_000_000) as u64;
                        self.timers.push(self.now + ms);
                    }
                    OutEvent::PeerFailed(p) => self.failed.push((self.now, p)),
                }
            }
        }

        /// Advance to `t`, firing checks on the way.
        fn advance(&mut self, t: u64) {
            while let Some(first) = self.timers.iter().copied().filter(|c| *c <= t).min() {
                let i = self.timers.iter().position(|c| *c == first).expect("found");
                self.timers.swap_remove(i);
                self.now = first;
                self.checks += 1;
                self.input(InEvent::TimerExpired(Timer::Check));
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
        // mean 450 + pause 100 + 5.2 * 100 (std floor) ~ 1.07 s.
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
        // Idle link: one heartbeat 400 ms after the last, never late.
        let n = h.heartbeats.len();
        assert!((23..=26).contains(&n), "{n} heartbeats in 10 s");
        for w in h.heartbeats.windows(2) {
            let gap = w[1].0 - w[0].0;
            assert_eq!(gap, 400);
        }
    }

    #[test]
    fn first_heartbeat_goes_out_within_the_slack() {
        let mut h = Harness::new(Config::default());
        h.now = 5_000;
        h.input(InEvent::LinkUp(1));
        h.advance(5_100);
        assert_eq!(h.heartbeats, vec![(5_100, 1)]);
        h.advance(5_499);
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
    fn link_down_stops_watching_and_lets_the_checks_lapse() {
        let mut h = Harness::new(Config::default());
        assert!(h.timers.is_empty(), "no check without links");
        assert_eq!(h.state.phi(1, at(0)), None);
        h.input(InEvent::LinkUp(1));
        assert_eq!(h.timers.len(), 1);
        h.input(InEvent::LinkDown(1));
        h.advance(10_000);
        assert!(h.failed.is_empty() && h.heartbeats.is_empty());
        assert!(h.timers.is_empty());
        assert!(h.checks <= 1, "{} checks", h.checks);
        assert_eq!(h.state.watched().count(), 0);
    }

    #[test]
    fn links_share_checks_and_traffic_arms_none() {
        // Five links up within the slack of each other.
        let mut h = Harness::new(Config::default());
        for p in 0..5u32 {
            h.now = u64::from(p) * 20;
            h.input(InEvent::LinkUp(p));
        }
        let armed = h.timers.len();
        assert!(armed <= 2, "{armed} checks armed by five link-ups");
        let mut t = 120;
        while t < 10_000 {
            t += 50;
            h.advance(t);
            // Link 0 is busy both ways; the others answer but we send them nothing.
            h.input(InEvent::Sent(0));
            for p in 0..5 {
                h.input(InEvent::Received(p));
            }
            assert!(h.timers.len() <= 2, "{:?}", h.timers);
        }
        assert!(h.failed.is_empty());
        for p in 1..5u32 {
            let n = h.heartbeats.iter().filter(|(_, q)| *q == p).count();
            assert!((20..=26).contains(&n), "peer {p}: {n} heartbeats in 10 s");
        }
        // Past the greeting heartbeat of the link-up, none on the busy link.
        assert!(h.heartbeats.iter().all(|(t, p)| *p != 0 || *t <= 120));
        // At most two checks per heartbeat interval: the idle links' and the one the busy
        // link's traffic keeps moving later. A 100 ms tick would have fired 100 times.
        assert!(h.checks <= 52, "{} checks in 10 s", h.checks);
        assert_eq!(h.state.stats().checks, h.checks);
    }

    #[test]
    fn failure_is_reported_at_the_first_instant_phi_exceeds_the_threshold() {
        let mut h = Harness::new(Config::default());
        h.input(InEvent::LinkUp(1));
        let mut rng = SmallRng::seed_from_u64(5);
        let mut t = 0;
        for _ in 0..60 {
            t += rng.random_range(100..700);
            h.advance(t);
            h.input(InEvent::Received(1));
        }
        let mut before = 0.0;
        loop {
            t += 1;
            let now = h.state.phi(1, at(t)).expect("watched until reported");
            h.advance(t);
            if !h.failed.is_empty() {
                assert!(now > 8.0 && before <= 8.0, "phi {before} then {now}");
                assert_eq!(h.failed, vec![(t, 1)]);
                break;
            }
            before = now;
        }
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
