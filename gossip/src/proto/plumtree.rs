//! Plumtree broadcast. CONTRACT STUB: the broadcast helper replaces the bodies, keeps the API.
use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{Instant, MessageId, PeerId};

/// Broadcast settings.
#[derive(Debug, Clone, Default)]
pub struct Config {}

/// Whether a broadcast is for the application or for the protocol itself (directory updates).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PayloadKind {
    /// An application message: delivered to the user.
    User,
    /// A protocol message (directory update): handed to the directory, never to the user.
    System,
}

/// Wire messages of the broadcast layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound = "")]
pub enum Message<P: PeerId> {
    /// Placeholder.
    Gossip(MessageId<P>),
}

/// Timers of the broadcast layer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Timer<P: PeerId> {
    /// Placeholder.
    Graft(MessageId<P>),
}

/// Inputs of the broadcast layer.
#[derive(Debug)]
pub enum InEvent<P: PeerId> {
    /// A message from a neighbour.
    RecvMessage(P, Message<P>),
    /// A timer this layer asked for fired.
    TimerExpired(Timer<P>),
    /// The overlay opened an active link.
    NeighborUp(P),
    /// The overlay closed an active link.
    NeighborDown(P),
}

/// Outputs of the broadcast layer.
#[derive(Debug)]
pub enum OutEvent<P: PeerId> {
    /// Send a message to a peer.
    SendMessage(P, Message<P>),
    /// Call back with `TimerExpired` after the duration.
    ScheduleTimer(Duration, Timer<P>),
    /// A broadcast reached this node for the first time.
    Deliver(Delivery<P>),
}

/// A broadcast delivered to this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery<P: PeerId> {
    /// Its id.
    pub id: MessageId<P>,
    /// User or system.
    pub kind: PayloadKind,
    /// The payload, as broadcast.
    pub payload: Bytes,
    /// Hops from the origin to this node.
    pub hops: u16,
    /// The neighbour it came from.
    pub from: P,
}

/// Counters of the broadcast layer.
#[derive(Debug, Clone, Default)]
pub struct Stats {}

/// Broadcast state of one node.
#[derive(Debug)]
pub struct State<P: PeerId> {
    me: P,
    seq: u64,
}

impl<P: PeerId> State<P> {
    /// A new broadcast layer for node `me`.
    pub fn new(me: P, _config: Config) -> Self {
        Self { me, seq: 0 }
    }

    /// Arm the periodic timers (IHAVE flush, cache expiry, catch-up). Called once.
    pub fn start<R: Rng>(&mut self, _now: Instant, _rng: &mut R, _out: &mut VecDeque<OutEvent<P>>) {}

    /// Handle one input.
    pub fn handle<R: Rng>(
        &mut self,
        _event: InEvent<P>,
        _now: Instant,
        _rng: &mut R,
        _out: &mut VecDeque<OutEvent<P>>,
    ) {
    }

    /// Broadcast `payload` from this node; it is not delivered locally.
    pub fn broadcast<R: Rng>(
        &mut self,
        _payload: Bytes,
        _kind: PayloadKind,
        _now: Instant,
        _rng: &mut R,
        _out: &mut VecDeque<OutEvent<P>>,
    ) -> MessageId<P> {
        self.seq += 1;
        MessageId { origin: self.me, seq: self.seq }
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        unimplemented!()
    }
}
