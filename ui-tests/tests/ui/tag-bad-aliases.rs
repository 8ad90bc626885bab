use serde::{Deserialize, Serialize};

#[derive(gossip::Tag, Serialize, Deserialize)]
#[tag(name = "commit", alias = "commit", alias = "Commit", alias = "Commit")]
struct Commit {
    key: String,
}

fn main() {}
