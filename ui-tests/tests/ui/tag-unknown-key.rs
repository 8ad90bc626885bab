use serde::{Deserialize, Serialize};

#[derive(gossip::Tag, Serialize, Deserialize)]
#[tag(rename = "commit")]
struct Commit {
    key: String,
}

fn main() {}
