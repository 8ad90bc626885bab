use serde::{Deserialize, Serialize};

#[derive(gossip::Tag, Serialize, Deserialize)]
#[tag(name = "commit")]
#[tag(name = "commit.v2")]
struct Commit {
    key: String,
}

fn main() {}
