use serde::{Deserialize, Serialize};

#[derive(gossip::Tag, Serialize, Deserialize)]
struct Commit;

#[derive(Serialize, Deserialize)]
struct Doom;

#[derive(gossip::Tags)]
enum Inbox {
    Commit(Commit),
    Doom(Doom),
}

fn main() {}
