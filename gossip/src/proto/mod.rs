//! The protocol core: sans-IO state machines for membership, broadcast, failure detection and the
//! cluster directory.
//!
//! Nothing in this module touches tokio, sockets, the wall clock or a global rng. Every input
//! carries `now` (a monotonic [`Instant`] that must never go backwards) and all randomness comes
//! from the seeded rng that [`State`] owns, so the same inputs give the same outputs: the
//! simulator, the property tests and the fuzzers drive exactly the code that runs in production.
//!
//! # Layers
//!
//! - [`hyparview`]: membership overlay (Leitao, Pereira, Rodrigues, *HyParView*, DSN 2007). A small
//!   symmetric *active view* of open links and a larger *passive view* of addresses to repair it.
//! - [`plumtree`]: broadcast (Leitao, Pereira, Rodrigues, *Epidemic Broadcast Trees*, SRDS 2007).
//!   Eager push along a spanning tree over the active view, lazy IHAVE announcements on the other
//!   links, GRAFT to repair the tree, PRUNE to remove redundant links; plus catch-up by digests and
//!   optional per-sender FIFO delivery.
//! - [`detector`]: phi-accrual failure detection (Hayashibara et al. 2004) on active links.
//! - [`directory`]: the full member list with states and incarnations, spread as system
//!   broadcasts through plumtree.
//!
//! [`State`] composes the layers. Each layer has the same vocabulary: `Config`, `Message`,
//! `Timer`, `InEvent`, `OutEvent`, `State`, one `handle` entry point.
//!
//! # Driving contract
//!
//! A driver (the tokio runtime in [`crate::Node`], or the simulator in [`crate::sim`]) calls one
//! `handle_*` method per input, then drains [`State::poll`] until it returns `None`, acting on each
//! [`OutEvent`]: send a message, arm a timer, hand a delivery or a membership event to the user,
//! close a link. Timers fired too early or after the state moved on are harmless.

use std::fmt::Debug;
use std::hash::Hash;

use serde::{Serialize, de::DeserializeOwned};

pub mod detector;
pub mod directory;
pub mod hyparview;
pub mod plumtree;
mod state;

pub use state::*;

/// `Instant` is the std monotonic instant; drivers with virtual time build them from a base.
pub use std::time::Instant;

/// Identity of a node as the protocol sees it.
///
/// The runtime uses [`crate::NodeId`] (address plus a per-start generation, so a restarted node
/// is a new identity); the simulator uses a plain `u32`. Ordering and hashing must not depend
/// on anything but the value, so runs are deterministic.
pub trait PeerId:
    Copy + Eq + Ord + Hash + Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{
}
impl<T> PeerId for T where
    T: Copy + Eq + Ord + Hash + Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{
}

/// Identifies one broadcast: the node that originated it and its per-origin sequence number.
///
/// Ids are not content hashes, so the same content can be broadcast twice.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
#[serde(bound = "")]
pub struct MessageId<P: PeerId> {
    /// The node that broadcast the message.
    pub origin: P,
    /// Sequence number, starting at 1 for the first broadcast of `origin`.
    pub seq: u64,
}
