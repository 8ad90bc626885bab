//! Error types: [`Error`] for the crate, [`EncodeError`] and [`DecodeError`] for the codec.
//!
//! Every message says what went wrong and what to do about it. Errors caused by a peer (a
//! corrupt or hostile envelope) are [`DecodeError`]s: the runtime drops the message, counts it
//! and keeps going; they never take a node down.

use std::fmt;

use crate::message::Message;

/// Everything that can go wrong in `gossip`.
///
/// `non_exhaustive`: match the variants you handle and keep a `_` arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Two message types in this binary use the same tag name, or names whose ids collide.
    ///
    /// Found by [`crate::check_registry`] when a node is built: both types would be decoded
    /// from the same wire id, so the node refuses to start.
    #[error(
        "two message types use the tag `{name}`: `{first}` and `{second}`; give one of them \
         another name with #[tag(name = \"...\")] (keep the old name as an alias only on the \
         type that used it before)"
    )]
    DuplicateTag {
        /// The tag name (or the two names, when their ids collide).
        name: String,
        /// Rust path of the first type.
        first: &'static str,
        /// Rust path of the second type.
        second: &'static str,
    },
    /// A message could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// A message could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The node has stopped (it left, its transport failed, or every handle was dropped).
    #[error("the node has stopped: build a new node to rejoin the cluster")]
    Closed,
    /// This receiver fell behind and the receive queue overflowed: this many messages were
    /// skipped. Receiving again continues with the oldest message still queued.
    #[error(
        "{0} messages were skipped because they were not received fast enough: receive faster \
         or raise Config::recv_capacity"
    )]
    Lagged(u64),
    /// No member answered the join in time.
    #[error(
        "no member answered at {} within {waited:?}: check that a node listens there, that it is \
         reachable from this host, and that both use the same cluster label and keys",
        fmt_addrs(addrs)
    )]
    JoinTimeout {
        /// The addresses that were tried.
        addrs: Vec<std::net::SocketAddr>,
        /// How long the node kept trying ([`crate::Config::join_timeout`]).
        waited: std::time::Duration,
    },
    /// The member refused this node's handshake for a reason the user must fix.
    #[error("{addr} rejected this node: {reason}")]
    JoinRejected {
        /// The member that refused.
        addr: std::net::SocketAddr,
        /// Why (label, protocol version, cluster key).
        reason: crate::wire::RejectReason,
    },
    /// An address to join through could not be resolved.
    #[error("could not resolve the address to join through: {0}")]
    Resolve(String),
    /// Metadata over [`crate::Config::max_metadata_size`].
    #[error(
        "metadata of {size} bytes exceeds the limit of {limit} bytes: keep metadata small (it is \
         copied to every member) or raise Config::max_metadata_size"
    )]
    MetadataTooLarge {
        /// Size given.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The transport could not start (for TCP: the address could not be bound).
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// Why a transport could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// TCP listener error.
    #[error(transparent)]
    Tcp(#[from] crate::transport::TcpError),
    /// In-memory network error.
    #[error(transparent)]
    Memory(#[from] crate::transport::memory::MemoryError),
}

fn fmt_addrs(addrs: &[std::net::SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why a value could not be turned into an envelope.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The encoded envelope is larger than the configured limit.
    #[error(
        "message of {size} bytes exceeds the limit of {limit} bytes: send smaller messages \
         (split the value) or raise the node's maximum message size"
    )]
    TooLarge {
        /// Size of the whole envelope, in bytes.
        size: usize,
        /// The limit it was checked against.
        limit: usize,
    },
    /// The value's `Serialize` implementation failed.
    #[error(
        "could not serialize a `{tag}` message: {source}; check the type's Serialize \
         implementation (bincode needs sequence lengths up front, no `serialize_any`)"
    )]
    Serialize {
        /// Tag name of the value.
        tag: &'static str,
        /// What the serializer reported.
        #[source]
        source: CodecError,
    },
}

/// Why an envelope or its payload could not be decoded.
///
/// Decoding never panics and never allocates more than the payload could describe; every
/// variant comes from bytes a peer sent, so handle it by dropping the message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer bytes than the envelope header.
    #[error(
        "envelope of {len} bytes is shorter than its {header}-byte header: the peer sent a \
         truncated frame; drop it"
    )]
    Truncated {
        /// Bytes received.
        len: usize,
        /// Bytes the header needs.
        header: usize,
    },
    /// The envelope was written by an incompatible version of `gossip`.
    #[error(
        "envelope format version {version} is not supported (this node speaks version \
         {supported}): run the same major version of gossip on every node"
    )]
    UnsupportedVersion {
        /// Version byte found.
        version: u8,
        /// Version this node writes and reads.
        supported: u8,
    },
    /// The payload was written with a codec this node does not know.
    #[error(
        "payload codec {codec} is unknown here (this node reads codec {supported}): upgrade \
         this node, or keep the sender on the default codec"
    )]
    UnknownCodec {
        /// Codec byte found.
        codec: u8,
        /// Codec this node reads.
        supported: u8,
    },
    /// The envelope is larger than the limit.
    #[error(
        "envelope of {size} bytes exceeds the limit of {limit} bytes: drop it, or raise the \
         maximum message size on every node"
    )]
    TooLarge {
        /// Size of the envelope.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The message carries another tag than the type asked for.
    #[error(
        "message has tag `{actual}` but `{expected}` was asked for: check `Message::tag()` \
         before decoding, or receive through a `Tags` enum"
    )]
    WrongTag {
        /// Tag of the requested type.
        expected: &'static str,
        /// Tag the message carries (name, or id in hex when unknown here).
        actual: String,
    },
    /// The payload does not decode as the requested type.
    #[error(
        "payload of a `{tag}` message does not decode: {source}; the sender's `{tag}` type \
         differs from this node's (deploy the same definition everywhere, or rename the tag \
         when the layout changes)"
    )]
    Payload {
        /// Tag of the message.
        tag: &'static str,
        /// What the decoder reported.
        #[source]
        source: CodecError,
    },
    /// The payload decoded but bytes were left over.
    #[error(
        "payload of a `{tag}` message has {extra} trailing bytes: the sender's `{tag}` type \
         has more fields than this node's; deploy the same definition everywhere"
    )]
    TrailingBytes {
        /// Tag of the message.
        tag: &'static str,
        /// Bytes left after the value.
        extra: usize,
    },
}

/// Why a [`crate::Tags`] enum could not be built from a [`Message`].
#[derive(Debug, thiserror::Error)]
pub enum FromMessageError {
    /// The enum lists no variant for this tag (and has no `#[tags(other)]` variant).
    ///
    /// The message is handed back untouched so the caller can log it, count it or route it
    /// elsewhere.
    #[error(
        "no variant for tag `{}`: add a variant for it, or a `#[tags(other)] Other(gossip::Message)` \
         variant to receive every unlisted tag",
        .0.tag()
    )]
    Unlisted(Message),
    /// The tag is listed but the payload did not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// An error reported by the underlying binary codec (bincode), kept opaque so the codec can
/// change without breaking the API.
pub struct CodecError(Inner);

enum Inner {
    Encode(bincode::error::EncodeError),
    Decode(bincode::error::DecodeError),
}

impl CodecError {
    pub(crate) fn encode(e: bincode::error::EncodeError) -> Self {
        Self(Inner::Encode(e))
    }

    pub(crate) fn decode(e: bincode::error::DecodeError) -> Self {
        Self(Inner::Decode(e))
    }
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Inner::Encode(e) => fmt::Display::fmt(e, f),
            Inner::Decode(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl fmt::Debug for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Inner::Encode(e) => fmt::Debug::fmt(e, f),
            Inner::Decode(e) => fmt::Debug::fmt(e, f),
        }
    }
}

impl std::error::Error for CodecError {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    fn assert_error<T: std::error::Error + Send + Sync + 'static>() {}

    #[test]
    fn errors_can_cross_threads_and_box() {
        assert_error::<Error>();
        assert_error::<EncodeError>();
        assert_error::<DecodeError>();
        assert_error::<FromMessageError>();
        assert_error::<CodecError>();
    }

    #[test]
    fn messages_say_what_to_do() {
        let e = Error::DuplicateTag {
            name: "Commit".into(),
            first: "a::Commit",
            second: "b::Commit",
        };
        assert_eq!(
            e.to_string(),
            "two message types use the tag `Commit`: `a::Commit` and `b::Commit`; give one of \
             them another name with #[tag(name = \"...\")] (keep the old name as an alias only \
             on the type that used it before)"
        );
        let e = EncodeError::TooLarge {
            size: 2000,
            limit: 1024,
        };
        assert!(
            e.to_string()
                .contains("2000 bytes exceeds the limit of 1024"),
            "{e}"
        );
        let e = DecodeError::UnsupportedVersion {
            version: 7,
            supported: codec::FORMAT_VERSION,
        };
        assert!(e.to_string().contains("run the same major version"), "{e}");
        let e = DecodeError::Truncated {
            len: 3,
            header: codec::HEADER_LEN,
        };
        assert!(
            e.to_string()
                .starts_with("envelope of 3 bytes is shorter than its 10-byte"),
            "{e}"
        );
    }

    #[test]
    fn unlisted_names_the_tag_and_the_fix() {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Unregistered;
        impl crate::Tag for Unregistered {
            const NAME: &'static str = "error.unregistered";
            const ID: u64 = crate::tag_id("error.unregistered");
        }
        let msg = Message::encode(&Unregistered, 64).unwrap();
        let text = FromMessageError::Unlisted(msg).to_string();
        let hex = format!("{:#018x}", crate::tag_id("error.unregistered"));
        assert!(
            text.starts_with(&format!("no variant for tag `{hex}`")),
            "{text}"
        );
        assert!(text.contains("#[tags(other)]"), "{text}");
    }
}
