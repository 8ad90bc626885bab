// Named, tuple and unit structs; names, aliases; a catch-all variant; `From`.
use gossip::{Message, Tag, Tags};
use serde::{Deserialize, Serialize};

#[derive(Tag, Serialize, Deserialize, Debug, PartialEq)]
#[tag(name = "shapes/named.v2", alias = "shapes/named", alias = "Named")]
struct Named {
    a: u32,
    b: Option<String>,
}

#[derive(Tag, Serialize, Deserialize, Debug, PartialEq)]
#[tag(name = "shapes:tuple-1_0")]
struct Tuple(u64, #[serde(with = "serde_bytes_like")] Vec<u8>);

mod serde_bytes_like {
    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        <Vec<u8> as serde::Deserialize>::deserialize(d)
    }
}

#[derive(Tag, Serialize, Deserialize, Debug, PartialEq)]
struct Unit;

#[derive(Tags, Debug, PartialEq)]
enum Inbox {
    Named(Named),
    Tuple(Tuple),
    #[tags(other)]
    Other(gossip::Message),
}

fn main() {
    assert_eq!(Named::NAME, "shapes/named.v2");
    assert_eq!(Named::ALIASES, &[gossip::tag_id("shapes/named"), gossip::tag_id("Named")]);
    assert_eq!(Unit::NAME, "Unit");
    assert_eq!(Unit::ID, gossip::tag_id("Unit"));
    assert_eq!(Inbox::IDS.len(), 4);

    let named = Named { a: 7, b: Some("x".into()) };
    let msg = Message::encode(&named, 1024).unwrap();
    assert_eq!(Inbox::from_message(msg).unwrap(), Inbox::Named(named));
    let tuple = Tuple(1, vec![2, 3]);
    let msg = Message::encode(&tuple, 1024).unwrap();
    assert_eq!(Inbox::from_message(msg).unwrap(), Inbox::from(tuple));
    let msg = Message::encode(&Unit, 1024).unwrap();
    match Inbox::from_message(msg).unwrap() {
        Inbox::Other(m) => assert_eq!(m.decode::<Unit>().unwrap(), Unit),
        other => panic!("expected Other, got {other:?}"),
    }
    // A message type local to a function.
    #[derive(Tag, Serialize, Deserialize, Debug, PartialEq)]
    #[tag(name = "shapes.local")]
    struct Local {
        n: i8,
    }
    let msg = Message::encode(&Local { n: -1 }, 64).unwrap();
    assert_eq!(msg.tag(), "shapes.local");
    assert_eq!(msg.decode::<Local>().unwrap(), Local { n: -1 });

    let registry = gossip::check_registry().unwrap();
    assert!(registry.get(Local::ID).is_some());
    assert!(registry.get(Unit::ID).unwrap().rust_type.ends_with("::Unit"));
}
