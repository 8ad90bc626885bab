// The typed example of the README, driven through `Message` instead of a node.
use gossip::{FromMessageError, Message, Tag, Tags};
use serde::{Deserialize, Serialize};

#[derive(Tag, Serialize, Deserialize, Debug, PartialEq)]
struct Commit {
    key: String,
    value: Vec<u8>,
}

#[derive(Tag, Serialize, Deserialize, Debug, PartialEq)]
#[tag(name = "doom")]
struct Doom;

#[derive(Tag, Serialize, Deserialize, Debug, PartialEq)]
struct Unrelated(u8);

#[derive(Tags, Debug, PartialEq)]
enum Inbox {
    Commit(Commit),
    Doom(Doom),
}

fn main() {
    gossip::check_registry().expect("no duplicate tags");
    let commit = Commit { key: "Doom".into(), value: vec![0, 1, 0, 1] };
    let msg = Message::encode(&commit, 1 << 20).unwrap();
    assert_eq!(msg.tag(), "Commit");
    match Inbox::from_message(msg.clone()).unwrap() {
        Inbox::Commit(c) => assert_eq!(c, commit),
        Inbox::Doom(_) => unreachable!(),
    }
    // The untyped path.
    if msg.tag() == "Commit" {
        let c: Commit = msg.decode().unwrap();
        assert_eq!(c.key, "Doom");
    }
    let doom = Message::encode(&Doom, 64).unwrap();
    assert_eq!(doom.tag(), "doom");
    assert_eq!(Inbox::from_message(doom).unwrap(), Inbox::Doom(Doom));
    let other = Message::encode(&Unrelated(1), 64).unwrap();
    assert!(matches!(Inbox::from_message(other), Err(FromMessageError::Unlisted(_))));
}
