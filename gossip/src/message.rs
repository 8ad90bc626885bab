//! [`Message`]: a received message before it is decoded.

use std::fmt;

use bytes::Bytes;

use crate::codec::{self, HEADER_LEN};
use crate::error::{DecodeError, EncodeError};
use crate::{MessageId, NodeId, Tag, tag};

/// An untyped message: the envelope bytes (tag id and payload), plus where it came from.
///
/// Cheap to clone (the bytes are reference counted). Relays handle messages in this form and
/// never decode the payload; a receiver decodes it with [`Message::decode`], or all at once
/// with a [`Tags`](crate::Tags) enum.
///
/// ```
/// use gossip::{Message, Tag};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Tag, Serialize, Deserialize, Debug, PartialEq)]
/// struct Commit { key: String, value: Vec<u8> }
///
/// let msg = Message::encode(&Commit { key: "k".into(), value: vec![1] }, 1024)?;
/// if msg.tag() == "Commit" {
///     let commit: Commit = msg.decode()?;
///     assert_eq!(commit.key, "k");
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Message {
    envelope: Bytes,
    id: u64,
    origin: Option<NodeId>,
    /// Broadcast sequence number of `origin`; 0 when not a broadcast (sequences start at 1).
    seq: u64,
    /// Hops the broadcast travelled to reach this node (0 when not a broadcast).
    hops: u16,
    /// `0x` and 16 hex digits of `id`, for [`Message::tag`] when the id is not registered:
    /// written the first time it is asked for (every delivery makes a `Message`, few read
    /// an unregistered tag).
    hex: std::sync::OnceLock<[u8; 18]>,
}

impl Message {
    /// Parse an envelope received from the network. Only the header is validated (length,
    /// format version, codec); the payload is left alone until someone decodes it.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Truncated`], [`DecodeError::UnsupportedVersion`] or
    /// [`DecodeError::UnknownCodec`].
    pub fn from_envelope(envelope: Bytes) -> Result<Self, DecodeError> {
        let header = codec::parse_header(&envelope)?;
        Ok(Self::parsed(envelope, header.tag))
    }

    /// Like [`Message::from_envelope`], refusing an envelope larger than `limit` bytes first.
    ///
    /// # Errors
    ///
    /// [`DecodeError::TooLarge`], or any error of [`Message::from_envelope`].
    pub fn from_envelope_limited(envelope: Bytes, limit: usize) -> Result<Self, DecodeError> {
        if envelope.len() > limit {
            return Err(DecodeError::TooLarge {
                size: envelope.len(),
                limit,
            });
        }
        Self::from_envelope(envelope)
    }

    /// Encode `value` into a message, as a node does before broadcasting it.
    ///
    /// # Errors
    ///
    /// [`EncodeError::TooLarge`] when the envelope would exceed `limit` bytes,
    /// [`EncodeError::Serialize`] when the value's `Serialize` fails.
    pub fn encode<T: Tag>(value: &T, limit: usize) -> Result<Self, EncodeError> {
        Ok(Self::parsed(codec::encode(value, limit)?, T::ID))
    }

    fn parsed(envelope: Bytes, id: u64) -> Self {
        Self {
            envelope,
            id,
            origin: None,
            seq: 0,
            hops: 0,
            hex: std::sync::OnceLock::new(),
        }
    }

    /// Record who broadcast this message and its broadcast id (set by the runtime).
    // Inlined into the node's delivery path (another codegen unit): a call moved the whole
    // message in and out, once per delivery.
    #[inline]
    pub(crate) fn with_source(
        mut self,
        origin: NodeId,
        message_id: Option<MessageId>,
        hops: u16,
    ) -> Self {
        debug_assert!(message_id.is_none_or(|id| id.origin == origin && id.seq != 0));
        self.origin = Some(origin);
        self.seq = message_id.map_or(0, |id| id.seq);
        self.hops = hops;
        self
    }

    /// How many hops the broadcast travelled from its origin to this node (1 for a direct
    /// neighbour of the origin; 0 for a message that was not received as a broadcast).
    pub fn hops(&self) -> u16 {
        self.hops
    }

    /// The tag name: the registered name of [`Message::id`], or the id in hex (`0x…`, 16
    /// digits) when no type in this binary has that tag.
    ///
    /// For an alias id this is the type's current name.
    pub fn tag(&self) -> &str {
        match tag::registered_name(self.id) {
            Some(name) => name,
            None => std::str::from_utf8(self.hex.get_or_init(|| hex_id(self.id))).unwrap_or("0x?"),
        }
    }

    /// The tag id carried in the envelope.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether this message decodes as `T` (its id is `T`'s id or one of `T`'s aliases).
    pub fn is<T: Tag>(&self) -> bool {
        tag::accepts::<T>(self.id)
    }

    /// The encoded payload (after the envelope header).
    pub fn payload(&self) -> &[u8] {
        &self.envelope[HEADER_LEN..]
    }

    /// The whole envelope, as sent on the wire.
    pub fn envelope(&self) -> &Bytes {
        &self.envelope
    }

    /// The envelope bytes, to forward the message.
    pub fn into_envelope(self) -> Bytes {
        self.envelope
    }

    /// The node that broadcast this message, when known.
    pub fn origin(&self) -> Option<NodeId> {
        self.origin
    }

    /// The broadcast id (origin and sequence number), when the message came by broadcast.
    pub fn message_id(&self) -> Option<MessageId> {
        match (self.origin, self.seq) {
            (Some(origin), seq) if seq != 0 => Some(MessageId { origin, seq }),
            _ => None,
        }
    }

    /// Decode the payload as `T`.
    ///
    /// # Errors
    ///
    /// [`DecodeError::WrongTag`] when the message carries another tag (naming both),
    /// [`DecodeError::Payload`] or [`DecodeError::TrailingBytes`] when the payload does not
    /// decode as `T` exactly.
    pub fn decode<T: Tag>(&self) -> Result<T, DecodeError> {
        if !tag::accepts::<T>(self.id) {
            return Err(DecodeError::WrongTag {
                expected: T::NAME,
                actual: self.tag().to_owned(),
            });
        }
        codec::decode_envelope_payload(&self.envelope)
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("tag", &self.tag())
            .field("payload_len", &self.payload().len())
            .field("origin", &self.origin)
            .field("seq", &self.seq)
            .finish()
    }
}

/// Two messages are equal when their envelopes are (where they came from is not compared).
impl PartialEq for Message {
    fn eq(&self, other: &Self) -> bool {
        self.envelope == other.envelope
    }
}

impl Eq for Message {}

fn hex_id(id: u64) -> [u8; 18] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'0'; 18];
    out[1] = b'x';
    for (i, slot) in out[2..].iter_mut().enumerate() {
        *slot = DIGITS[((id >> (60 - 4 * i)) & 0xf) as usize];
    }
    out
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};

    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::proto;

    // Tag names are unique in the test binary: the registry refuses duplicates.
    #[derive(crate::Tag, Serialize, Deserialize, Debug, PartialEq)]
    #[tag(crate = "crate", name = "message.commit")]
    struct Commit {
        key: String,
        value: Vec<u8>,
    }

    #[derive(crate::Tag, Serialize, Deserialize, Debug, PartialEq)]
    #[tag(crate = "crate", name = "message.doom", alias = "message.Doom")]
    struct Doom;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Unregistered(u32);

    impl Tag for Unregistered {
        const NAME: &'static str = "unregistered";
        const ID: u64 = crate::tag_id("unregistered");
    }

    fn commit() -> Commit {
        Commit {
            key: "k".into(),
            value: vec![1, 2, 3],
        }
    }

    #[test]
    fn round_trip_through_the_envelope() {
        let msg = Message::encode(&commit(), 1024).unwrap();
        let again = Message::from_envelope(msg.envelope().clone()).unwrap();
        assert_eq!(again.id(), crate::tag_id("message.commit"));
        assert_eq!(again.tag(), "message.commit");
        assert!(again.is::<Commit>());
        assert!(!again.is::<Doom>());
        assert_eq!(again.decode::<Commit>().unwrap(), commit());
        assert_eq!(again.payload(), &msg.envelope()[HEADER_LEN..]);
        assert_eq!(again, msg);
    }

    #[test]
    fn decoding_as_the_wrong_type_names_both_tags() {
        let msg = Message::encode(&commit(), 1024).unwrap();
        match msg.decode::<Doom>() {
            Err(DecodeError::WrongTag {
                expected: "message.doom",
                actual,
            }) => {
                assert_eq!(actual, "message.commit")
            }
            other => panic!("expected WrongTag, got {other:?}"),
        }
        let text = msg.decode::<Doom>().unwrap_err().to_string();
        assert!(
            text.contains("`message.commit`") && text.contains("`message.doom`"),
            "{text}"
        );
    }

    #[test]
    fn an_unknown_tag_reads_as_hex() {
        let msg = Message::encode(&Unregistered(5), 64).unwrap();
        let id = crate::tag_id("unregistered");
        assert_eq!(msg.tag(), format!("{id:#018x}"));
        assert_eq!(msg.decode::<Unregistered>().unwrap(), Unregistered(5));
    }

    #[test]
    fn an_alias_id_decodes_and_reads_as_the_current_name() {
        // An old node sends `Doom` under its former name.
        let mut bytes = Message::encode(&Doom, 64).unwrap().into_envelope().to_vec();
        bytes[2..10].copy_from_slice(&crate::tag_id("message.Doom").to_le_bytes());
        let msg = Message::from_envelope(bytes.into()).unwrap();
        assert_eq!(msg.tag(), "message.doom");
        assert_eq!(msg.decode::<Doom>().unwrap(), Doom);
    }

    #[test]
    fn from_envelope_checks_the_header_and_the_limit() {
        assert!(matches!(
            Message::from_envelope(Bytes::from_static(&[1, 1, 0, 0])),
            Err(DecodeError::Truncated {
                len: 4,
                header: HEADER_LEN
            })
        ));
        let bytes = Message::encode(&commit(), 1024).unwrap().into_envelope();
        let len = bytes.len();
        assert!(matches!(
            Message::from_envelope_limited(bytes.clone(), len - 1),
            Err(DecodeError::TooLarge { .. })
        ));
        assert!(Message::from_envelope_limited(bytes, len).is_ok());
    }

    proptest::proptest! {
        /// Hostile envelopes: parsing and decoding return errors, never panic.
        #[test]
        fn random_envelopes_never_panic(
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
            valid_header in proptest::bool::ANY,
        ) {
            let mut bytes = body;
            if valid_header && bytes.len() >= HEADER_LEN {
                bytes[0] = codec::FORMAT_VERSION;
                bytes[1] = codec::CODEC_BINCODE;
                bytes[2..10].copy_from_slice(&crate::tag_id("message.commit").to_le_bytes());
            }
            if let Ok(msg) = Message::from_envelope(bytes.into()) {
                let _ = msg.tag();
                let _ = msg.decode::<Commit>();
                let _ = msg.decode::<Doom>();
            }
        }
    }

    #[test]
    fn the_runtime_records_the_source() {
        let node = NodeId::new(SocketAddr::from((Ipv4Addr::LOCALHOST, 5666)), 7);
        let id = proto::MessageId {
            origin: node,
            seq: 3,
        };
        let msg = Message::encode(&Doom, 64).unwrap();
        assert_eq!((msg.origin(), msg.message_id()), (None, None));
        let msg = msg.with_source(node, Some(id), 3);
        assert_eq!((msg.origin(), msg.message_id()), (Some(node), Some(id)));
    }
}
