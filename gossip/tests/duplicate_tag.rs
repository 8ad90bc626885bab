//! Two message types with the same tag name in one binary: the registry refuses to start.
//!
//! A file of its own: the duplicate poisons this test binary's registry.

use gossip::{Error, Message, Tag};
use serde::{Deserialize, Serialize};

mod billing {
    #[derive(gossip::Tag, serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    pub struct Commit {
        pub amount: u64,
    }
}

mod storage {
    #[derive(gossip::Tag, serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    pub struct Commit {
        pub key: String,
    }
}

/// A rename that keeps the old name as an alias, while another type took the old name.
#[derive(Tag, Serialize, Deserialize, Debug)]
#[tag(name = "ledger.v2", alias = "ledger")]
struct LedgerV2;

#[derive(Tag, Serialize, Deserialize, Debug)]
#[tag(name = "ledger")]
struct Ledger;

#[test]
fn two_types_with_the_same_tag_name_are_refused_with_both_paths() {
    let err = gossip::check_registry().unwrap_err();
    match &err {
        Error::DuplicateTag {
            name,
            first,
            second,
        } => {
            // Deterministic: the registry is sorted by name, then Rust path.
            assert_eq!(name, "Commit");
            assert_eq!(*first, "duplicate_tag::billing::Commit");
            assert_eq!(*second, "duplicate_tag::storage::Commit");
        }
        other => panic!("expected DuplicateTag, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains("duplicate_tag::billing::Commit"), "{text}");
    assert!(text.contains("duplicate_tag::storage::Commit"), "{text}");
    assert!(
        text.contains("#[tag(name"),
        "the message says what to do: {text}"
    );
    // Same result every time: the scan happens once.
    assert!(matches!(
        gossip::check_registry(),
        Err(Error::DuplicateTag { .. })
    ));
}

#[test]
fn the_ids_collide_so_each_type_reads_the_others_messages() {
    // Why the registry refuses: on the wire the two types are indistinguishable.
    assert_eq!(billing::Commit::ID, storage::Commit::ID);
    let msg = Message::encode(&storage::Commit { key: "k".into() }, 1024).unwrap();
    assert!(msg.is::<billing::Commit>());
    assert_eq!(Ledger::ID, gossip::tag_id("ledger"));
    assert!(LedgerV2::ALIASES.contains(&Ledger::ID));
}
