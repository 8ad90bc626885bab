use serde::{Deserialize, Serialize};

#[derive(gossip::Tag, Serialize, Deserialize)]
struct Commit;

#[derive(gossip::Tags)]
enum Inbox {
    Commit(Commit),
    Doom,
}

fn main() {}
