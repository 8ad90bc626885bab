use serde::{Deserialize, Serialize};

// The one mistake is the attribute: the stub impls keep every use of the types quiet.
#[derive(gossip::Tag, Serialize, Deserialize)]
#[tag(nmae = "commit")]
struct Commit;

#[derive(gossip::Tags)]
enum Inbox {
    Commit(Commit),
    Broken,
}

fn main() {
    let msg = gossip::Message::encode(&Commit, 64).unwrap();
    let _ = <Inbox as gossip::Tags>::from_message(msg);
}
