//! The cluster directory. CONTRACT STUB.
use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{Instant, PeerId};

/// Directory settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Whether the directory runs. `false` keeps it idle (no probes, no updates, no events):
    /// the node runs the overlay and broadcast only (the simulator's `--directory off`).
    pub enabled: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// State of a member as this node believes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MemberState {
    /// Up.
    Alive,
    /// Suspected failed; it can refute.
    Suspect,
    /// Failed.
    Dead,
    /// Left gracefully.
    Left,
}

/// One member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member<P: PeerId> {
    /// Its id.
    pub id: P,
    /// Its state.
    pub state: MemberState,
    /// Its incarnation.
    pub incarnation: u64,
    /// User metadata.
    pub metadata: Bytes,
}

/// A change of membership, for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberEvent<P: PeerId> {
    /// A member came up (or came back).
    Up(Member<P>),
}

/// Direct (non-broadcast) messages of the directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound = "")]
pub enum Message<P: PeerId> {
    /// Placeholder.
    Probe(P),
}

/// Timers of the directory.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Timer<P: PeerId> {
    /// Placeholder.
    Suspect(P),
}

/// Inputs of the directory.
#[derive(Debug)]
pub enum InEvent<P: PeerId> {
    /// A direct message from a peer.
    RecvMessage(P, Message<P>),
    /// A system broadcast delivered by plumtree.
    Update(P, Bytes),
    /// A timer fired.
    TimerExpired(Timer<P>),
    /// Joining through these contacts (remember them as seeds for healing).
    Join(Vec<P>),
    /// An active link opened to this peer (it is alive).
    NeighborUp(P),
    /// The peer failed (detector or transport).
    PeerFailed(P),
    /// Change this node's metadata.
    SetMetadata(Bytes),
    /// This node leaves.
    Leave,
}

/// Outputs of the directory.
#[derive(Debug)]
pub enum OutEvent<P: PeerId> {
    /// Send a direct message.
    SendMessage(P, Message<P>),
    /// Call back with `TimerExpired` after the duration.
    ScheduleTimer(Duration, Timer<P>),
    /// Broadcast this system payload through plumtree.
    Broadcast(Bytes),
    /// Tell the user.
    Event(MemberEvent<P>),
    /// Ask the overlay to reach this peer (partition healing).
    Reach(P),
}

/// Directory state.
#[derive(Debug)]
pub struct State<P: PeerId> {
    me: P,
}

impl<P: PeerId> State<P> {
    /// A new directory for node `me`.
    pub fn new(me: P, _config: Config, _metadata: Bytes) -> Self {
        Self { me }
    }
    /// Arm the periodic timers (probes, anti-entropy, reaping). Called once.
    pub fn start<R: Rng>(&mut self, _now: Instant, _rng: &mut R, _out: &mut VecDeque<OutEvent<P>>) {
    }
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
    /// All known members, this node included.
    pub fn members(&self) -> Vec<Member<P>> {
        Vec::new()
    }
}
