//! gossip: leaderless cluster membership and typed epidemic broadcast.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod proto;
