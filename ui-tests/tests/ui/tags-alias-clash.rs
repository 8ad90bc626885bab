use serde::{Deserialize, Serialize};

#[derive(gossip::Tag, Serialize, Deserialize)]
#[tag(name = "commit.v2", alias = "commit")]
struct CommitV2;

#[derive(gossip::Tag, Serialize, Deserialize)]
#[tag(name = "commit")]
struct Commit;

#[derive(gossip::Tags)]
enum Inbox {
    New(CommitV2),
    Old(Commit),
}

fn main() {}
