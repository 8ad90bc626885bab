//! Phi-accrual failure detection on active links. CONTRACT STUB.
use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Instant, PeerId};

/// Detector settings.
#[derive(Debug, Clone, Default)]
pub struct Config {}

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
#[derive(Debug)]
pub enum OutEvent<P: PeerId> {
    /// Send a message to a peer.
    SendMessage(P, Message),
    /// Call back with `TimerExpired` after the duration.
    ScheduleTimer(Duration, Timer),
    /// The peer is considered failed (phi over the threshold).
    PeerFailed(P),
}

/// Detector state.
#[derive(Debug, Default)]
pub struct State<P: PeerId> {
    _p: Vec<P>,
}

impl<P: PeerId> State<P> {
    /// A new detector.
    pub fn new(_config: Config) -> Self {
        Self { _p: Vec::new() }
    }
    /// Arm the periodic tick. Called once.
    pub fn start(&mut self, _now: Instant, _out: &mut VecDeque<OutEvent<P>>) {}
    /// Handle one input.
    pub fn handle(&mut self, _event: InEvent<P>, _now: Instant, _out: &mut VecDeque<OutEvent<P>>) {}
}
