//! HyParView membership. CONTRACT STUB: the membership helper replaces the bodies, keeps the API.
use std::collections::VecDeque;
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{Instant, PeerId};

/// Membership overlay settings.
#[derive(Debug, Clone, Default)]
pub struct Config {}

/// Wire messages of the overlay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound = "")]
pub enum Message<P: PeerId> {
    /// Placeholder.
    Join(P),
}

/// Timers of the overlay.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Timer<P: PeerId> {
    /// Placeholder.
    Shuffle(P),
}

/// Inputs of the overlay.
#[derive(Debug)]
pub enum InEvent<P: PeerId> {
    /// A message from a peer.
    RecvMessage(P, Message<P>),
    /// A timer this layer asked for fired.
    TimerExpired(Timer<P>),
    /// Join the overlay through this contact.
    RequestJoin(P),
    /// The link to this peer failed (transport error or failure detector).
    PeerFailed(P),
    /// Try to open an active link to this peer if the active view has room (partition healing).
    Reach(P),
    /// Leave: tell the active view and stop.
    Leave,
}

/// Outputs of the overlay.
#[derive(Debug)]
pub enum OutEvent<P: PeerId> {
    /// Send a message to a peer.
    SendMessage(P, Message<P>),
    /// Call back with `TimerExpired` after the duration.
    ScheduleTimer(Duration, Timer<P>),
    /// An active link opened.
    NeighborUp(P),
    /// An active link closed.
    NeighborDown(P),
    /// Close the transport connection to this peer.
    Disconnect(P),
}

/// Overlay state of one node.
#[derive(Debug)]
pub struct State<P: PeerId> {
    me: P,
}

impl<P: PeerId> State<P> {
    /// A new overlay for node `me`.
    pub fn new(me: P, _config: Config) -> Self {
        Self { me }
    }

    /// Arm the periodic timers (shuffle, ...). Called once by the composed state.
    pub fn start<R: Rng>(&mut self, _now: Instant, _rng: &mut R, _out: &mut VecDeque<OutEvent<P>>) {}

    /// Handle one input.
    pub fn handle<R: Rng>(
        &mut self,
        _event: InEvent<P>,
        _now: Instant,
        _rng: &mut R,
        _out: &mut VecDeque<OutEvent<P>>,
    ) {
        let _ = self.me;
    }

    /// Peers in the active view.
    pub fn active_view(&self) -> impl Iterator<Item = &P> {
        std::iter::empty()
    }

    /// Peers in the passive view.
    pub fn passive_view(&self) -> impl Iterator<Item = &P> {
        std::iter::empty()
    }
}
