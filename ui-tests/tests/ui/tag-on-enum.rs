use serde::{Deserialize, Serialize};

#[derive(gossip::Tag, Serialize, Deserialize)]
enum Command {
    Put(String),
    Delete(String),
}

fn main() {}
