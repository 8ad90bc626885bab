use serde::{Deserialize, Serialize};

// Each mistake is reported, not only the first.
#[derive(gossip::Tag, Serialize, Deserialize)]
#[tag(name = "", alias = "bad alias")]
#[tag(name = "again")]
struct Commit {
    key: String,
}

fn main() {}
