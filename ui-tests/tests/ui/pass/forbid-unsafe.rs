// The derives build in crates that forbid unsafe code and deny warnings.
#![forbid(unsafe_code)]
#![deny(warnings, missing_docs)]
//! A crate with strict lints.

use serde::{Deserialize, Serialize};

/// A message.
#[derive(gossip::Tag, Serialize, Deserialize)]
pub struct Commit {
    /// The key.
    pub key: String,
}

/// The inbox.
#[derive(gossip::Tags)]
pub enum Inbox {
    /// A commit.
    Commit(Commit),
}

fn main() {
    fn check() {
        let _ = Inbox::from(Commit { key: String::new() });
    }
    check();
}
