use serde::{Deserialize, Serialize};

#[derive(gossip::Tag, Serialize, Deserialize)]
#[tag(name = "")]
struct Commit {
    key: String,
}

fn main() {}
