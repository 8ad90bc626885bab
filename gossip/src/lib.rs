//! gossip: leaderless cluster membership and typed epidemic broadcast.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod id;
pub mod keyring;
pub mod proto;
pub mod transport;
pub mod wire;

pub use id::NodeId;
