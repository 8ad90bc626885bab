//! [`NodeId`]: who a node is on the network.

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// A node's identity: the address it listens on and a generation drawn when it starts.
///
/// A node restarted at the same address gets a new generation, so it is a new identity: stale
/// state about its previous life (suspicions, message ids, cached links) never shadows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId {
    /// Where the node listens.
    pub addr: SocketAddr,
    /// Drawn at random each time the node starts.
    pub generation: u64,
}

impl NodeId {
    /// An id for a node listening on `addr`, started as `generation`.
    pub fn new(addr: SocketAddr, generation: u64) -> Self {
        Self { addr, generation }
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{:04x}", self.addr, self.generation & 0xffff)
    }
}
