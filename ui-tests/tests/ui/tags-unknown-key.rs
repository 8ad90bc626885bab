use serde::{Deserialize, Serialize};

#[derive(gossip::Tag, Serialize, Deserialize)]
struct Commit;

#[derive(gossip::Tags)]
enum Inbox {
    #[tags(default)]
    Commit(Commit),
}

fn main() {}
