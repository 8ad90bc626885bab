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
//! `z(8) ≈ 5.6`; with the defaults that is about 1.1 s, plus up to one tick.
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
    /// more false suspicions; each point adds about `0.7 * std_dev` to detection time.
    pub phi_threshold: f64,
    /// How many recent gaps between messages are kept per peer (default 100). More samples give
    /// a steadier estimate and adapt slower to a change in traffic.
    pub max_sample_size: usize,
    /// Floor of the standard deviation (default 100 ms). Regular heartbeats have a tiny
    /// deviation, which would make φ jump on the smallest delay; the floor absorbs network
    /// jitter and scheduling pauses. Raising it delays detection by `z * delta` (z ≈ 5.6 at φ 8).
    pub min_std_deviation: Duration,
    /// Extra silence tolerated before suspicion grows (default 100 ms), added to the mean gap:
    /// covers the heartbeat being sent on the sender's next tick and short pauses.
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
                    self.links.push(Link {
                        peer,
                        last_sent: now,
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
            out.push_back(OutEvent::ScheduleTimer(
                self.config.tick_interval,
                Timer::Tick,
            ));
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
