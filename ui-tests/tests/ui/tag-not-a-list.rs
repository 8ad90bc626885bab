use serde::{Deserialize, Serialize};

#[derive(gossip::Tag, Serialize, Deserialize)]
#[tag = "commit"]
struct Commit {
    key: String,
}

fn main() {}
