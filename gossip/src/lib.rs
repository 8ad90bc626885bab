//! gossip: leaderless cluster membership and typed epidemic broadcast.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

// The derives expand to `::gossip::...` paths; this makes them resolve inside the crate too.
extern crate self as gossip;

pub mod codec;
mod config;
pub mod error;
mod id;
mod inbox;
pub mod keyring;
mod message;
mod node;
pub mod proto;
pub mod sim;
mod tag;
pub mod transport;
pub mod wire;

pub use codec::SharedBytes;
pub use config::Config;
pub use error::{DecodeError, EncodeError, Error, FromMessageError};
pub use id::NodeId;
pub use node::{Builder, Event, Node, NodeStats};
pub use proto::directory::MemberState;

/// A member of the cluster as this node knows it: id, state, incarnation, metadata.
pub type Member = proto::directory::Member<NodeId>;
pub use message::Message;
pub use tag::{RegisteredTag, Registry, Tag, Tags, check_registry, tag_id};

/// `#[derive(Tag)]`: make a struct a message type. See the [`Tag`] trait.
pub use gossip_derive::Tag;
/// `#[derive(Tags)]`: make an enum a dispatch enum. See the [`Tags`] trait.
pub use gossip_derive::Tags;

/// Identifies one broadcast: the node that sent it and its sequence number.
pub type MessageId = proto::MessageId<NodeId>;

/// What the derives' expansions use. Not public API: no stability guarantee.
#[doc(hidden)]
pub mod __private {
    pub use crate::tag::TagEntry;
    pub use core::result::Result;
    pub use inventory;

    use crate::{DecodeError, Message, Tag, codec};

    /// What a `Tags` enum needs of one variant's type, in one place: a type that is not a
    /// `Tag` is then reported once, on the variant.
    pub struct TagInfo<T> {
        /// `T::ID`.
        pub id: u64,
        /// `T::ALIASES`.
        pub aliases: &'static [u64],
        /// Decodes the payload of an envelope as `T` (its `SharedBytes` fields share the
        /// envelope).
        pub decode: fn(&bytes::Bytes) -> Result<T, DecodeError>,
    }

    /// The [`TagInfo`] of `T`.
    pub const fn tag_info<T: Tag>() -> TagInfo<T> {
        TagInfo {
            id: T::ID,
            aliases: T::ALIASES,
            decode: codec::decode_envelope_payload::<T>,
        }
    }

    /// The type of a `#[tags(other)]` variant.
    #[diagnostic::on_unimplemented(
        message = "the `#[tags(other)]` variant must wrap `gossip::Message`, not `{Self}`",
        label = "write `gossip::Message` here"
    )]
    pub trait OtherVariant {
        /// Wrap the unlisted message.
        fn wrap(msg: Message) -> Self;
    }

    impl OtherVariant for Message {
        #[inline]
        fn wrap(msg: Message) -> Self {
            msg
        }
    }

    /// Whether two tags (id plus aliases) share any id.
    pub const fn shares_id(a: u64, a_aliases: &[u64], b: u64, b_aliases: &[u64]) -> bool {
        if a == b || contains(b_aliases, a) || contains(a_aliases, b) {
            return true;
        }
        let mut i = 0;
        while i < a_aliases.len() {
            if contains(b_aliases, a_aliases[i]) {
                return true;
            }
            i += 1;
        }
        false
    }

    /// `slice.contains(&x)` in a const context.
    pub const fn contains(slice: &[u64], x: u64) -> bool {
        let mut i = 0;
        while i < slice.len() {
            if slice[i] == x {
                return true;
            }
            i += 1;
        }
        false
    }

    /// Concatenate id slices at compile time (for `Tags::IDS`); `N` is the total length.
    pub const fn concat<const N: usize>(parts: &[&[u64]]) -> [u64; N] {
        let mut out = [0; N];
        let mut n = 0;
        let mut p = 0;
        while p < parts.len() {
            let mut i = 0;
            while i < parts[p].len() {
                out[n] = parts[p][i];
                n += 1;
                i += 1;
            }
            p += 1;
        }
        assert!(
            n == N,
            "gossip: Tags::IDS length mismatch (a bug in gossip-derive)"
        );
        out
    }
}
