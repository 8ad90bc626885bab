use serde::{Deserialize, Serialize};

mod billing {
    #[derive(gossip::Tag, serde::Serialize, serde::Deserialize)]
    #[tag(name = "commit")]
    pub struct Commit;
}

#[derive(gossip::Tag, Serialize, Deserialize)]
#[tag(name = "commit")]
struct Commit;

#[derive(gossip::Tags)]
enum Inbox {
    Storage(Commit),
    Billing(billing::Commit),
}

fn main() {}
