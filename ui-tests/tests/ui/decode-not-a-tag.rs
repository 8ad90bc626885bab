use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Commit {
    key: String,
}

fn read(msg: &gossip::Message) -> Option<Commit> {
    msg.decode::<Commit>().ok()
}

fn main() {}
