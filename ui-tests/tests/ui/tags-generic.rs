use serde::{Deserialize, Serialize};

#[derive(gossip::Tag, Serialize, Deserialize)]
struct Commit;

#[derive(gossip::Tags)]
enum Inbox<T> {
    Commit(Commit),
    Custom(T),
}

fn main() {}
