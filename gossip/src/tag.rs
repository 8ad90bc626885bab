//! Typed messages: the [`Tag`] and [`Tags`] traits, tag ids and the registry.
//!
//! A message type is a plain struct that derives [`Tag`] (plus serde's `Serialize` and
//! `Deserialize`). Its *tag* is a name (the type's name by default, or
//! `#[tag(name = "...")]`) and the name's 64-bit id, computed at compile time by [`tag_id`].
//! Only the id travels on the wire, in the envelope header (see [`crate::codec`]), so relays
//! route messages without knowing their types and a node never decodes a payload it did not
//! ask for.
//!
//! Renaming a message type changes its id. To keep talking to nodes that still run the old
//! name, list it as an alias: `#[tag(name = "commit.v2", alias = "Commit")]` decodes both ids.
//!
//! A receiver lists the types it handles in a [`Tags`] enum, one variant per type. The derive
//! generates a `match` on the id, so dispatch never depends on the registry.
//!
//! # The registry
//!
//! Every derived type also registers itself (name, id, aliases and Rust path) in a link-time
//! registry ([`inventory`](https://docs.rs/inventory)). [`check_registry`] scans it once, when
//! a node is built, and refuses two types with the same name or id in one binary
//! ([`Error::DuplicateTag`]): they would be indistinguishable on the wire. The registry also
//! maps ids to names so that [`Message::tag`] and logs show names rather than numbers. Some
//! targets do not run the link-time constructors; there the registry is merely empty, and
//! everything but the names in logs keeps working.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::{Serialize, de::DeserializeOwned};

use crate::error::{Error, FromMessageError};
use crate::message::Message;

/// A message type: a struct that can be broadcast and received.
///
/// Derive it: `#[derive(gossip::Tag, serde::Serialize, serde::Deserialize)]`, optionally with
/// `#[tag(name = "wire-name", alias = "OldName")]`. Implementing it by hand is possible but
/// the type is then missing from the registry ([`check_registry`]).
///
/// The name must be 1 to 128 characters among ASCII letters, digits and `_ - . : /`.
///
/// Payloads are encoded with bincode 2 through serde. serde writes a `Vec<u8>` element by
/// element; for fields of raw bytes prefer `bytes::Bytes` (or `serde_bytes`), which is one
/// length prefix and a copy: 20 times faster at 4 KiB (see `BENCHMARKS.md`).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a gossip message type",
    label = "not a gossip message type",
    note = "add `#[derive(gossip::Tag, serde::Serialize, serde::Deserialize)]` to the definition of `{Self}`"
)]
pub trait Tag: Serialize + DeserializeOwned + Send + 'static {
    /// The tag name, unique in a cluster.
    const NAME: &'static str;
    /// `tag_id(NAME)`: what the envelope carries.
    const ID: u64;
    /// Ids of former names, also accepted when decoding.
    const ALIASES: &'static [u64] = &[];
}

/// Whether a message with tag `id` decodes as `T` (its id or one of its aliases).
#[inline]
pub(crate) fn accepts<T: Tag>(id: u64) -> bool {
    id == T::ID || T::ALIASES.contains(&id)
}

/// The 64-bit id of a tag name: FNV-1a over its UTF-8 bytes.
///
/// Stable across versions, platforms and compilers: it is part of the wire format.
pub const fn tag_id(name: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let bytes = name.as_bytes();
    let mut hash = OFFSET;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(PRIME);
        i += 1;
    }
    hash
}

/// A dispatch enum: each variant wraps one [`Tag`] type.
///
/// ```
/// use gossip::{Message, Tag, Tags};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Tag, Serialize, Deserialize, Debug, PartialEq)]
/// struct Commit { key: String }
///
/// #[derive(Tag, Serialize, Deserialize, Debug, PartialEq)]
/// #[tag(name = "doom")]
/// struct Doom;
///
/// #[derive(Tags, Debug, PartialEq)]
/// enum Inbox { Commit(Commit), Doom(Doom) }
///
/// let msg = Message::encode(&Commit { key: "k".into() }, 1024)?;
/// assert_eq!(Inbox::from_message(msg)?, Inbox::Commit(Commit { key: "k".into() }));
/// let inbox: Inbox = Doom.into(); // `From` for each variant
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// The derive generates the dispatch on the tag id (aliases included), a `From<T>` for each
/// variant, and a compile-time check that no two variants share a tag id.
///
/// # Unlisted tags
///
/// A message whose tag has no variant gives [`FromMessageError::Unlisted`] with the message
/// handed back. To receive such messages, add a catch-all variant:
/// `#[tags(other)] Other(gossip::Message)`. Without one, the node's typed receive skips the
/// message: it is counted as unlisted and logged at `debug` level with its tag, never
/// silently lost.
pub trait Tags: Sized + Send + 'static {
    /// Every tag id a variant accepts, aliases included (without the `other` variant).
    const IDS: &'static [u64];

    /// Decode `msg` into the variant for its tag.
    ///
    /// # Errors
    ///
    /// [`FromMessageError::Unlisted`] when no variant lists the tag (only without an `other`
    /// variant), [`FromMessageError::Decode`] when the payload does not decode.
    fn from_message(msg: Message) -> Result<Self, FromMessageError>;

    /// Whether some variant (not counting `other`) accepts tag `id`.
    fn lists(id: u64) -> bool {
        Self::IDS.contains(&id)
    }
}

/// One entry of the registry: what `#[derive(Tag)]` submits for each type.
#[doc(hidden)]
#[derive(Debug)]
pub struct TagEntry {
    name: &'static str,
    id: u64,
    aliases: &'static [&'static str],
    rust_type: &'static str,
}

impl TagEntry {
    /// Used by the derive; not public API.
    #[doc(hidden)]
    pub const fn new(
        name: &'static str,
        id: u64,
        aliases: &'static [&'static str],
        rust_type: &'static str,
    ) -> Self {
        Self {
            name,
            id,
            aliases,
            rust_type,
        }
    }
}

inventory::collect!(TagEntry);

/// A registered message type, as [`Registry::iter`] lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegisteredTag {
    /// The tag name.
    pub name: &'static str,
    /// Its id.
    pub id: u64,
    /// Former names.
    pub aliases: &'static [&'static str],
    /// Rust path of the type (`crate::module::Type`).
    pub rust_type: &'static str,
}

/// The message types linked into this binary, checked for duplicates.
///
/// Cheap to copy: it refers to data built once per process.
#[derive(Debug, Clone, Copy)]
pub struct Registry {
    data: &'static RegistryData,
}

#[derive(Debug)]
struct RegistryData {
    /// Sorted by name, then Rust path, so reports are deterministic.
    tags: Vec<RegisteredTag>,
    /// Id (own or alias) to the index of its type in `tags`; the first type wins.
    by_id: HashMap<u64, usize>,
    /// The first duplicate found: (name, first type, second type).
    duplicate: Option<(String, &'static str, &'static str)>,
}

impl Registry {
    /// The tag name registered for `id` (a current name, also for an alias id).
    pub fn name(&self, id: u64) -> Option<&'static str> {
        self.data.by_id.get(&id).map(|&i| self.data.tags[i].name)
    }

    /// The registered type for `id`.
    pub fn get(&self, id: u64) -> Option<&RegisteredTag> {
        self.data.by_id.get(&id).map(|&i| &self.data.tags[i])
    }

    /// Every registered type, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &RegisteredTag> {
        self.data.tags.iter()
    }

    /// Number of registered types.
    pub fn len(&self) -> usize {
        self.data.tags.len()
    }

    /// Whether no type is registered (also the case on targets without link-time registration).
    pub fn is_empty(&self) -> bool {
        self.data.tags.is_empty()
    }
}

fn registry_data() -> &'static RegistryData {
    static DATA: OnceLock<RegistryData> = OnceLock::new();
    DATA.get_or_init(|| build(inventory::iter::<TagEntry>.into_iter()))
}

fn build<'a>(entries: impl Iterator<Item = &'a TagEntry>) -> RegistryData {
    let mut tags: Vec<RegisteredTag> = entries
        .map(|e| RegisteredTag {
            name: e.name,
            id: e.id,
            aliases: e.aliases,
            rust_type: e.rust_type,
        })
        .collect();
    tags.sort_by(|a, b| (a.name, a.rust_type).cmp(&(b.name, b.rust_type)));
    let mut by_id: HashMap<u64, usize> = HashMap::with_capacity(tags.len());
    // Name (own or alias) -> index, to tell a name clash from an id collision.
    let mut by_name: HashMap<&'static str, usize> = HashMap::with_capacity(tags.len());
    let mut duplicate = None;
    for (i, tag) in tags.iter().enumerate() {
        let own = std::iter::once(tag.name);
        for name in own.chain(tag.aliases.iter().copied()) {
            let id = tag_id(name);
            if let Some(&j) = by_name.get(name) {
                if j != i && duplicate.is_none() {
                    duplicate = Some((name.to_owned(), tags[j].rust_type, tag.rust_type));
                }
                continue;
            }
            by_name.insert(name, i);
            match by_id.get(&id) {
                Some(&j) if j != i => {
                    if duplicate.is_none() {
                        let other = names_of(&tags[j]).find(|n| tag_id(n) == id).unwrap_or("?");
                        let both = format!("{name} (same id {id:#018x} as {other})");
                        duplicate = Some((both, tags[j].rust_type, tag.rust_type));
                    }
                }
                Some(_) => {}
                None => {
                    by_id.insert(id, i);
                }
            }
        }
    }
    RegistryData {
        tags,
        by_id,
        duplicate,
    }
}

fn names_of(tag: &RegisteredTag) -> impl Iterator<Item = &'static str> {
    std::iter::once(tag.name).chain(tag.aliases.iter().copied())
}

/// Scan the registry of message types linked into this binary.
///
/// Called once when a node is built; cheap after the first call.
///
/// # Errors
///
/// [`Error::DuplicateTag`] when two types share a tag name (or an alias), or when two names
/// hash to the same id; the error names both Rust types.
pub fn check_registry() -> Result<Registry, Error> {
    let data = registry_data();
    match &data.duplicate {
        Some((name, first, second)) => Err(Error::DuplicateTag {
            name: name.clone(),
            first,
            second,
        }),
        None => Ok(Registry { data }),
    }
}

/// The registered name of `id`, without checking for duplicates.
pub(crate) fn registered_name(id: u64) -> Option<&'static str> {
    let data = registry_data();
    data.by_id.get(&id).map(|&i| data.tags[i].name)
}

#[cfg(test)]
mod tests {
    use super::*;

    mod dispatch {
        use serde::{Deserialize, Serialize};

        use crate::{DecodeError, FromMessageError, Message, Tag, Tags, tag_id};

        #[derive(crate::Tag, Serialize, Deserialize, Debug, PartialEq)]
        #[tag(crate = "crate")]
        pub struct Commit {
            pub key: String,
            pub value: Vec<u8>,
        }

        #[derive(crate::Tag, Serialize, Deserialize, Debug, PartialEq)]
        #[tag(crate = "crate", name = "doom", alias = "Doom", alias = "doom.v0")]
        pub struct Doom;

        // Default `::gossip` paths resolve inside the crate too (`extern crate self`).
        #[derive(crate::Tag, Serialize, Deserialize, Debug, PartialEq)]
        pub struct Ping(pub u64);

        #[derive(crate::Tags, Debug, PartialEq)]
        #[tags(crate = "crate")]
        enum Inbox {
            Commit(Commit),
            Doom(Doom),
        }

        #[derive(crate::Tags, Debug, PartialEq)]
        #[tags(crate = "crate")]
        enum Everything {
            Doom(Doom),
            #[tags(other)]
            Other(Message),
        }

        fn commit() -> Commit {
            Commit {
                key: "k".into(),
                value: vec![1, 2],
            }
        }

        fn with_id(msg: Message, id: u64) -> Message {
            let mut bytes = msg.into_envelope().to_vec();
            bytes[2..10].copy_from_slice(&id.to_le_bytes());
            Message::from_envelope(bytes.into()).unwrap()
        }

        #[test]
        fn dispatch_decodes_each_listed_tag() {
            let msg = Message::encode(&commit(), 1024).unwrap();
            assert_eq!(Inbox::from_message(msg).unwrap(), Inbox::Commit(commit()));
            let msg = Message::encode(&Doom, 1024).unwrap();
            assert_eq!(Inbox::from_message(msg).unwrap(), Inbox::Doom(Doom));
        }

        #[derive(crate::Tag, Serialize, Deserialize, Debug, PartialEq)]
        #[tag(crate = "crate", name = "chunk", alias = "chunk.v0")]
        pub struct Chunk {
            pub offset: u64,
            pub data: crate::SharedBytes,
        }

        #[derive(crate::Tags, Debug, PartialEq)]
        #[tags(crate = "crate")]
        enum Chunks {
            Chunk(Chunk),
        }

        #[test]
        fn dispatch_shares_the_envelope_with_shared_bytes_fields() {
            let chunk = || Chunk {
                offset: 7,
                data: crate::SharedBytes::from(vec![5u8; 1024]),
            };
            let direct = Message::encode(&chunk(), 4096).unwrap();
            let aliased = with_id(direct.clone(), tag_id("chunk.v0"));
            for msg in [direct, aliased] {
                let envelope = msg.envelope().clone();
                let Chunks::Chunk(back) = Chunks::from_message(msg).unwrap();
                assert_eq!(back, chunk());
                // A slice of the received envelope, not a copy.
                assert!(envelope.as_ptr_range().contains(&back.data.as_ptr()));
            }
        }

        #[test]
        fn dispatch_accepts_aliases() {
            for old in ["Doom", "doom.v0"] {
                let msg = with_id(Message::encode(&Doom, 64).unwrap(), tag_id(old));
                assert_eq!(Inbox::from_message(msg).unwrap(), Inbox::Doom(Doom));
            }
        }

        #[test]
        fn ids_list_every_accepted_id() {
            assert_eq!(
                Inbox::IDS,
                &[Commit::ID, Doom::ID, tag_id("Doom"), tag_id("doom.v0")]
            );
            assert!(Inbox::lists(tag_id("doom.v0")));
            assert!(!Inbox::lists(Ping::ID));
            assert_eq!(
                Everything::IDS,
                &[Doom::ID, tag_id("Doom"), tag_id("doom.v0")]
            );
        }

        #[test]
        fn an_unlisted_tag_hands_the_message_back() {
            let msg = Message::encode(&Ping(9), 64).unwrap();
            match Inbox::from_message(msg.clone()) {
                Err(FromMessageError::Unlisted(back)) => assert_eq!(back, msg),
                other => panic!("expected Unlisted, got {other:?}"),
            }
        }

        #[test]
        fn the_other_variant_receives_unlisted_tags() {
            let msg = Message::encode(&Ping(9), 64).unwrap();
            match Everything::from_message(msg.clone()).unwrap() {
                Everything::Other(back) => assert_eq!(back.decode::<Ping>().unwrap(), Ping(9)),
                other => panic!("expected Other, got {other:?}"),
            }
            let msg = Message::encode(&Doom, 64).unwrap();
            assert_eq!(
                Everything::from_message(msg).unwrap(),
                Everything::Doom(Doom)
            );
        }

        #[test]
        fn a_listed_tag_with_a_bad_payload_is_a_decode_error() {
            // A `Ping` payload (one varint) under `Commit`'s id.
            let msg = with_id(Message::encode(&Ping(300), 64).unwrap(), Commit::ID);
            assert!(matches!(
                Inbox::from_message(msg),
                Err(FromMessageError::Decode(DecodeError::Payload {
                    tag: "Commit",
                    ..
                }))
            ));
        }

        #[test]
        fn from_wraps_each_variant() {
            assert_eq!(Inbox::from(commit()), Inbox::Commit(commit()));
            let inbox: Inbox = Doom.into();
            assert_eq!(inbox, Inbox::Doom(Doom));
        }

        #[test]
        fn derived_types_are_registered_with_their_rust_path() {
            let registry = super::check_registry().unwrap();
            let doom = registry.get(Doom::ID).unwrap();
            assert_eq!(doom.name, "doom");
            assert_eq!(doom.aliases, &["Doom", "doom.v0"]);
            assert_eq!(doom.rust_type, "gossip::tag::tests::dispatch::Doom");
            assert_eq!(registry.name(tag_id("doom.v0")), Some("doom"));
            assert_eq!(registry.name(Commit::ID), Some("Commit"));
        }
    }

    #[test]
    fn tag_id_is_fnv1a_64() {
        // Reference values of FNV-1a 64 (IETF draft-eastlake-fnv test vectors).
        assert_eq!(tag_id(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(tag_id("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(tag_id("foobar"), 0x8594_4171_f739_67e8);
        const AT_COMPILE_TIME: u64 = tag_id("Commit");
        assert_eq!(AT_COMPILE_TIME, tag_id("Commit"));
        assert_ne!(tag_id("Commit"), tag_id("commit"));
    }

    static A: TagEntry = TagEntry::new("a", tag_id("a"), &[], "x::A");
    static B: TagEntry = TagEntry::new("b", tag_id("b"), &["old"], "x::B");
    static B2: TagEntry = TagEntry::new("b", tag_id("b"), &[], "y::B");
    static C: TagEntry = TagEntry::new("c", tag_id("c"), &["a"], "x::C");

    #[test]
    fn registry_maps_ids_and_aliases_to_names() {
        let data = build([&A, &B].into_iter());
        assert!(data.duplicate.is_none());
        let reg = Registry {
            data: Box::leak(Box::new(data)),
        };
        assert_eq!(reg.name(tag_id("a")), Some("a"));
        assert_eq!(reg.name(tag_id("old")), Some("b"));
        assert_eq!(reg.get(tag_id("b")).map(|t| t.rust_type), Some("x::B"));
        assert_eq!(reg.name(tag_id("zzz")), None);
        assert_eq!(reg.len(), 2);
    }

    #[test]
    fn registry_reports_a_duplicate_name_with_both_paths() {
        let data = build([&B2, &A, &B].into_iter());
        assert_eq!(data.duplicate, Some(("b".to_owned(), "x::B", "y::B")));
    }

    #[test]
    fn registry_reports_an_alias_that_clashes_with_a_name() {
        let data = build([&C, &A].into_iter());
        assert_eq!(data.duplicate, Some(("a".to_owned(), "x::A", "x::C")));
    }
}
