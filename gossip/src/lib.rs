//! gossip: leaderless cluster membership and typed epidemic broadcast.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod id;
pub mod proto;
pub mod sim;
pub mod transport;

pub use id::NodeId;
