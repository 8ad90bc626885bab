use serde::{Deserialize, Serialize};

#[derive(gossip::Tag, Serialize, Deserialize)]
struct Commit;

#[derive(gossip::Tag, Serialize, Deserialize)]
struct Doom;

#[derive(gossip::Tags)]
enum Inbox {
    Both(Commit, Doom),
}

fn main() {}
