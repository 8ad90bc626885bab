use serde::{Deserialize, Serialize};

#[derive(gossip::Tag, Serialize, Deserialize)]
#[tag(name = commit)]
struct Commit {
    key: String,
}

fn main() {}
