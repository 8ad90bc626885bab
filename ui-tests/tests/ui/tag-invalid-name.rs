use serde::{Deserialize, Serialize};

#[derive(gossip::Tag, Serialize, Deserialize)]
#[tag(name = "my commit")]
struct Commit {
    key: String,
}

fn main() {}
