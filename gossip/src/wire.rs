//! The wire format: a bounded codec for protocol messages and the connection handshake.
//!
//! # Messages
//!
//! Protocol messages are encoded with serde and bincode 2 ([`encode`], [`decode`]) using bincode's
//! standard configuration (little endian, variable-length integers). Decoding is bounded twice:
//! the input must not be longer than the caller's `limit`, and bincode itself is configured with
//! a byte limit (the smallest power of two that is at least `limit`), so a hostile length prefix
//! inside a message ("a vector of 2^60 elements") fails with [`WireError::LimitExceeded`] instead
//! of allocating. Trailing bytes after a complete value are an error: a frame is exactly one
//! message.
//!
//! A node frames its messages with [`encode_frame`] and [`decode_frame`]: the plain encoding,
//! except for the one message that carries a payload, whose payload goes raw at the end of the
//! frame so that it is written once for every eager neighbour and read as a slice of the frame
//! (see [`FRAME_GOSSIP`]). An IHAVE names each origin once per run of its ids, and writes
//! consecutive sequence numbers at one hop count as one range `(first, count, hops)`; the
//! ranges expand to [`plumtree::MAX_IHAVE_WIRE`] ids at most, checked before expanding.
//!
//! # Handshake
//!
//! Every connection starts with one handshake frame in each direction, before any message. A
//! handshake frame is
//!
//! ```text
//! magic "GSP\0" (4 bytes) | protocol version (u16, big endian) | kind (1 byte) | bincode body
//! ```
//!
//! The magic and version sit in fixed positions so that any two versions of this crate can tell
//! each other what they speak, whatever the body looks like. Kind [`KIND_HELLO`] carries a
//! [`Hello`]; kind [`KIND_REJECT`] carries a [`RejectReason`], sent by the accepting side before
//! it closes a connection it refuses, so the dialer can tell its user what to fix.
//!
//! The dialer sends its `Hello` first (its own [`NodeId`], the `NodeId` it expects to reach, its
//! cluster label, whether it encrypts and a fresh nonce); the acceptor checks it with
//! [`Hello::check`] and answers with its own `Hello` or a reject. When the cluster is encrypted
//! each `Hello` carries a key proof: an empty payload sealed with the sender's primary key, bound
//! to the handshake nonces, which the other side must be able to open with a key of its ring.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::NodeId;
use crate::proto::{self, PeerId, plumtree};

/// The first four bytes of every handshake frame.
pub const MAGIC: [u8; 4] = *b"GSP\0";
/// The protocol version this build speaks. Two nodes must speak the same version.
pub const PROTOCOL_VERSION: u16 = 1;
/// Handshake frame kind: a [`Hello`].
pub const KIND_HELLO: u8 = 1;
/// Handshake frame kind: a [`RejectReason`], sent just before the connection is closed.
pub const KIND_REJECT: u8 = 2;
/// The longest cluster label, in bytes.
pub const MAX_LABEL_LEN: usize = 64;
/// The largest handshake frame accepted, in bytes (header included).
pub const MAX_HANDSHAKE_LEN: usize = 512;
/// Length of the fixed handshake header (magic, version, kind).
pub const HANDSHAKE_HEADER_LEN: usize = 7;
/// The largest key proof accepted in a [`Hello`], in bytes.
pub const MAX_KEY_PROOF_LEN: usize = 64;

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The input is longer than the limit the caller allows.
    #[error(
        "frame of {len} bytes is over the {limit}-byte limit: raise the maximum frame size on every node, or send smaller messages"
    )]
    TooLarge {
        /// Length of the input.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A length inside the message claims more than the limit allows.
    #[error("a length inside the frame exceeds the decode limit: the peer is buggy or hostile")]
    LimitExceeded,
    /// The frame ended in the middle of a value.
    #[error("frame is truncated: the peer is buggy or hostile")]
    Truncated,
    /// The frame holds more bytes after a complete value.
    #[error("{0} trailing bytes after the message: the peer is buggy or hostile")]
    TrailingBytes(usize),
    /// Anything else bincode refused (bad enum tag, bad UTF-8, ...).
    #[error("malformed frame ({0}): the peer is buggy or hostile")]
    Malformed(String),
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes `value` with the wire configuration.
///
/// # Panics
///
/// Only if `value`'s `Serialize` impl fails, which the crate's own message types never do
/// (they hold no maps with non-string keys and no unsized sequences).
pub fn encode<T: Serialize>(value: &T) -> Bytes {
    // Measure, then write into a buffer of the exact size: growing a Vec from empty cost
    // several reallocations and copies of every payload (about a tenth of the CPU of a node
    // forwarding broadcasts).
    let mut size = bincode::enc::write::SizeWriter::default();
    bincode::serde::encode_into_writer(value, &mut size, config())
        .expect("serializing a protocol message cannot fail");
    let mut out = ExactWriter(Vec::with_capacity(size.bytes_written));
    bincode::serde::encode_into_writer(value, &mut out, config())
        .expect("serializing a protocol message into a Vec cannot fail");
    Bytes::from(out.0)
}

/// Appends to a `Vec` sized beforehand.
struct ExactWriter(Vec<u8>);

impl bincode::enc::write::Writer for ExactWriter {
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

/// Decodes one `T` from all of `bytes`, refusing inputs longer than `limit` and any length
/// field inside that claims more than `limit` (rounded up to a power of two) bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, WireError> {
    if bytes.len() > limit {
        return Err(WireError::TooLarge {
            len: bytes.len(),
            limit,
        });
    }
    // bincode's limit is a const generic: pick the smallest power-of-two tier that covers `limit`.
    macro_rules! tiers {
        ($($bits:literal)*) => {{
            let bits = limit.max(1).next_power_of_two().trailing_zeros();
            match bits {
                $( b if b <= $bits => decode_with(bytes, config().with_limit::<{ 1usize << $bits }>()), )*
                _ => decode_with(bytes, config().with_limit::<{ 1usize << 32 }>()),
            }
        }};
    }
    tiers!(8 10 12 14 16 18 20 22 24 26 28 30)
}

fn decode_with<T: DeserializeOwned, C: bincode::config::Config>(
    bytes: &[u8],
    config: C,
) -> Result<T, WireError> {
    match bincode::serde::decode_from_slice::<T, C>(bytes, config) {
        Ok((value, used)) if used == bytes.len() => Ok(value),
        Ok((_, used)) => Err(WireError::TrailingBytes(bytes.len() - used)),
        Err(e) => Err(decode_error(e)),
    }
}

/// The [`WireError`] for a bincode decoding failure.
fn decode_error(e: bincode::error::DecodeError) -> WireError {
    use bincode::error::DecodeError as E;
    match e {
        E::LimitExceeded => WireError::LimitExceeded,
        E::UnexpectedEnd { .. } => WireError::Truncated,
        e => WireError::Malformed(e.to_string()),
    }
}

/// First byte of a frame carrying a broadcast payload as [`plumtree::Message::Gossip`].
///
/// Node frames ([`encode_frame`]) are either a protocol message as [`encode`] writes it (whose
/// first byte is the [`proto::Message`] variant, 0 to 3) or, for the one message that carries a
/// payload, this byte, the bincode header `(id, kind, hops)` and the payload's raw bytes up to
/// the end of the frame. The payload is then neither length-prefixed nor copied: it is encoded
/// once, shared by every eager neighbour, and decoded as a slice of the frame.
pub const FRAME_GOSSIP: u8 = 0xF0;
/// As [`FRAME_GOSSIP`], for [`plumtree::Message::CatchUp`].
pub const FRAME_CATCHUP: u8 = 0xF1;
/// The largest payload header accepted (an id, a kind and a hop count are far smaller).
const MAX_GOSSIP_HEADER: usize = 1024;

/// The frame kind and the message of a message that travels as a payload frame (GOSSIP,
/// CATCH-UP): a head, then the raw payload.
fn payload_frame<P: PeerId>(message: &proto::Message<P>) -> Option<(u8, &plumtree::Gossip<P>)> {
    match message {
        proto::Message::Broadcast(plumtree::Message::Gossip(g)) => Some((FRAME_GOSSIP, g)),
        proto::Message::Broadcast(plumtree::Message::CatchUp(g)) => Some((FRAME_CATCHUP, g)),
        _ => None,
    }
}

/// Encodes one protocol message as a node frame (see [`FRAME_GOSSIP`]).
pub fn encode_frame<P: PeerId>(message: &proto::Message<P>) -> Bytes {
    let Some((kind, g)) = payload_frame(message) else {
        return encode(message);
    };
    let header = (&g.id, g.kind, g.hops);
    let mut size = bincode::enc::write::SizeWriter::default();
    bincode::serde::encode_into_writer(header, &mut size, config())
        .expect("serializing a payload header cannot fail");
    let mut out = ExactWriter(Vec::with_capacity(1 + size.bytes_written + g.payload.len()));
    out.0.push(kind);
    bincode::serde::encode_into_writer(header, &mut out, config())
        .expect("serializing a payload header into a Vec cannot fail");
    out.0.extend_from_slice(&g.payload);
    Bytes::from(out.0)
}

/// The longest head [`encode_frame_head`] returns. A payload frame's head (kind byte, message
/// id, payload kind, hop count) takes at most 43 bytes with a [`NodeId`] of either IP version.
pub const MAX_FRAME_HEAD: usize = 64;

/// The bytes of a payload frame before its payload (see [`encode_frame_head`]), kept inline.
#[derive(Clone, Copy)]
pub struct FrameHead {
    len: u8,
    bytes: [u8; MAX_FRAME_HEAD],
}

impl FrameHead {
    /// The head's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl std::fmt::Debug for FrameHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("FrameHead").field(&self.as_bytes()).finish()
    }
}

/// Writes into a [`FrameHead`], failing once it is full.
struct HeadWriter(FrameHead);

impl bincode::enc::write::Writer for HeadWriter {
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        let start = self.0.len as usize;
        let end = start + bytes.len();
        let room = self
            .0
            .bytes
            .get_mut(start..end)
            .ok_or(bincode::error::EncodeError::UnexpectedEnd)?;
        room.copy_from_slice(bytes);
        self.0.len = end as u8;
        Ok(())
    }
}

/// For a message that carries a payload (GOSSIP, CATCH-UP): the head of its node frame and the
/// payload, such that the head followed by the payload is byte for byte the frame
/// [`encode_frame`] writes. A transport writes the two parts one after the other, so the payload
/// is shared by every neighbour it goes to and never copied. `None` for the other messages, and
/// for a head longer than [`MAX_FRAME_HEAD`] bytes (a peer id with a large encoding): use
/// [`encode_frame`] for them.
pub fn encode_frame_head<P: PeerId>(message: &proto::Message<P>) -> Option<(FrameHead, &Bytes)> {
    let (kind, g) = payload_frame(message)?;
    Some((payload_frame_head(kind, g)?, &g.payload))
}

/// The head of the GOSSIP frame of `g`: [`encode_frame_head`] of
/// `proto::Message::Broadcast(plumtree::Message::Gossip(g))`, for a caller that holds the
/// `Gossip` alone (and so can move its payload to the transport rather than share it).
pub fn gossip_frame_head<P: PeerId>(g: &plumtree::Gossip<P>) -> Option<FrameHead> {
    payload_frame_head(FRAME_GOSSIP, g)
}

fn payload_frame_head<P: PeerId>(kind: u8, g: &plumtree::Gossip<P>) -> Option<FrameHead> {
    let mut out = HeadWriter(FrameHead {
        len: 1,
        bytes: [0; MAX_FRAME_HEAD],
    });
    out.0.bytes[0] = kind;
    bincode::serde::encode_into_writer((&g.id, g.kind, g.hops), &mut out, config()).ok()?;
    Some(out.0)
}

/// Writes the heads of GOSSIP frames byte for byte as [`gossip_frame_head`] does, keeping the
/// encoding of the latest origin: forwarded payloads come in runs from one origin, and the
/// origin (an address and a generation through serde) was most of the cost of a head. The rest
/// of a head (sequence number, payload kind, hop count) is written here as bincode's varints.
pub struct HeadEncoder<P> {
    origin: Option<P>,
    /// The kind byte and the origin's encoding.
    prefix: FrameHead,
}

impl<P> Default for HeadEncoder<P> {
    fn default() -> Self {
        Self {
            origin: None,
            prefix: FrameHead {
                len: 0,
                bytes: [0; MAX_FRAME_HEAD],
            },
        }
    }
}

impl<P> std::fmt::Debug for HeadEncoder<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadEncoder")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// The longest varint of a `u64` and of a `u32` and a `u16`, after the origin.
const MAX_HEAD_TAIL: usize = 9 + 5 + 3;

impl<P: PeerId> HeadEncoder<P> {
    /// The same as [`gossip_frame_head`] of `g`.
    pub fn gossip_head(&mut self, g: &plumtree::Gossip<P>) -> Option<FrameHead> {
        if self.origin != Some(g.id.origin) {
            let mut out = HeadWriter(FrameHead {
                len: 1,
                bytes: [0; MAX_FRAME_HEAD],
            });
            out.0.bytes[0] = FRAME_GOSSIP;
            let fits = bincode::serde::encode_into_writer(g.id.origin, &mut out, config()).is_ok()
                && out.0.len as usize + MAX_HEAD_TAIL <= MAX_FRAME_HEAD;
            if !fits {
                self.origin = None;
                return payload_frame_head(FRAME_GOSSIP, g);
            }
            self.prefix = out.0;
            self.origin = Some(g.id.origin);
        }
        let mut head = self.prefix;
        let mut at = head.len as usize;
        at = put_varint(&mut head.bytes, at, g.id.seq);
        let kind = match g.kind {
            plumtree::PayloadKind::User => 0,
            plumtree::PayloadKind::System => 1,
        };
        at = put_varint(&mut head.bytes, at, kind);
        at = put_varint(&mut head.bytes, at, u64::from(g.hops));
        head.len = at as u8;
        Some(head)
    }
}

/// Writes `value` at `at` as bincode's standard configuration writes an unsigned integer
/// (one byte below 251, else a marker byte and the little-endian value in the narrowest of
/// 2, 4 or 8 bytes; the same for every width of integer); returns the end.
fn put_varint(bytes: &mut [u8; MAX_FRAME_HEAD], at: usize, value: u64) -> usize {
    if value < 251 {
        bytes[at] = value as u8;
        at + 1
    } else if value <= u64::from(u16::MAX) {
        bytes[at] = 251;
        bytes[at + 1..at + 3].copy_from_slice(&(value as u16).to_le_bytes());
        at + 3
    } else if value <= u64::from(u32::MAX) {
        bytes[at] = 252;
        bytes[at + 1..at + 5].copy_from_slice(&(value as u32).to_le_bytes());
        at + 5
    } else {
        bytes[at] = 253;
        bytes[at + 1..at + 9].copy_from_slice(&value.to_le_bytes());
        at + 9
    }
}

/// Decodes a node frame written by [`encode_frame`] (or a message written by [`encode`]),
/// refusing frames longer than `limit`. A payload is returned as a slice of `frame`, not a copy.
pub fn decode_frame<P: PeerId>(
    frame: &Bytes,
    limit: usize,
) -> Result<proto::Message<P>, WireError> {
    decode_frame_with(frame.clone(), limit, &mut OriginCache::default())
}

/// The origin of the latest payload frame [`decode_frame_with`] decoded, and its encoding.
/// Payload frames come in runs from the same origin (one busy sender, or a link forwarding its
/// tree), and a frame whose head starts with the same bytes has the same origin: decoding is
/// deterministic and reads no byte past the value, so the origin is not decoded again.
pub struct OriginCache<P> {
    len: u8,
    bytes: [u8; MAX_FRAME_HEAD],
    origin: Option<P>,
}

impl<P> Default for OriginCache<P> {
    fn default() -> Self {
        Self {
            len: 0,
            bytes: [0; MAX_FRAME_HEAD],
            origin: None,
        }
    }
}

impl<P> std::fmt::Debug for OriginCache<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OriginCache")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// [`decode_frame`], reusing the origin of the previous payload frame when this one starts
/// with the same bytes (see [`OriginCache`]); the same result as [`decode_frame`] for every
/// input.
///
/// Takes the frame by value: a payload becomes the frame itself with its head cut off, so no
/// reference count is taken and dropped per frame (a frame shares its read buffer with the
/// frames read with it, and the transport's reader task touches the same count from another
/// thread).
pub fn decode_frame_with<P: PeerId>(
    mut frame: Bytes,
    limit: usize,
    cache: &mut OriginCache<P>,
) -> Result<proto::Message<P>, WireError> {
    if frame.len() > limit {
        return Err(WireError::TooLarge {
            len: frame.len(),
            limit,
        });
    }
    let kind = match frame.first() {
        Some(&k @ (FRAME_GOSSIP | FRAME_CATCHUP)) => k,
        _ => return decode(&frame, limit),
    };
    let header = &frame[1..];
    let header = &header[..header.len().min(MAX_GOSSIP_HEADER)];
    let cfg = config().with_limit::<MAX_GOSSIP_HEADER>();
    // The head is the message id (origin, then sequence number), the payload kind and the hop
    // count, one after the other: the origin decodes on its own.
    let cached = cache
        .origin
        .filter(|_| header.starts_with(&cache.bytes[..cache.len as usize]));
    let (origin, at) = match cached {
        Some(origin) => (origin, cache.len as usize),
        None => {
            let (origin, used): (P, usize) =
                bincode::serde::decode_from_slice(header, cfg).map_err(decode_error)?;
            if used <= MAX_FRAME_HEAD {
                cache.bytes[..used].copy_from_slice(&header[..used]);
                cache.len = used as u8;
                cache.origin = Some(origin);
            }
            (origin, used)
        }
    };
    let ((seq, payload_kind, hops), used): ((u64, plumtree::PayloadKind, u16), usize) =
        bincode::serde::decode_from_slice(&header[at..], cfg).map_err(decode_error)?;
    let used = at + used;
    bytes::Buf::advance(&mut frame, 1 + used);
    let g = plumtree::Gossip {
        id: proto::MessageId { origin, seq },
        kind: payload_kind,
        payload: frame,
        hops,
    };
    Ok(proto::Message::Broadcast(if kind == FRAME_GOSSIP {
        plumtree::Message::Gossip(g)
    } else {
        plumtree::Message::CatchUp(g)
    }))
}

/// The handshake each side sends first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Cluster label: nodes with different labels refuse each other (at most [`MAX_LABEL_LEN`]).
    pub label: String,
    /// The sender's identity (its listening address and generation).
    pub from: NodeId,
    /// Dialer: the node it means to reach; acceptor: `None`.
    pub expected: Option<NodeId>,
    /// Whether the sender seals its frames with a cluster key.
    pub encrypted: bool,
    /// Fresh random bytes; both nonces bind the session's keys proofs and frames.
    pub nonce: [u8; 16],
    /// With encryption: an empty payload sealed with the sender's primary key (see module docs).
    pub key_proof: Option<Vec<u8>>,
}

/// Why a handshake was refused. Phrased from the point of view of "this node", the node that
/// reports it; [`RejectReason::flip`] turns a reason received from the peer into this node's view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RejectReason {
    /// The two nodes speak different protocol versions.
    #[error(
        "the peer speaks protocol version {theirs}, this node speaks {ours}: upgrade one of them"
    )]
    Version {
        /// This node's version.
        ours: u16,
        /// The peer's version.
        theirs: u16,
    },
    /// The two nodes belong to different clusters.
    #[error(
        "the peer belongs to cluster {theirs:?}, this node to cluster {ours:?}: give both the same cluster label"
    )]
    Label {
        /// This node's label.
        ours: String,
        /// The peer's label.
        theirs: String,
    },
    /// The peer encrypts and this node has no key.
    #[error(
        "this node has no cluster key but the cluster is encrypted: give this node the cluster's keyring"
    )]
    KeyRequired,
    /// This node encrypts and the peer has no key.
    #[error(
        "this node encrypts but the peer has no cluster key: give every node the same keyring, or none"
    )]
    PeerHasNoKey,
    /// Both encrypt but no key is shared.
    #[error(
        "the peer's cluster key matches no key in this node's keyring: add the cluster's current key to the keyring"
    )]
    WrongKey,
    /// The node at the dialed address is not the expected one (it restarted with a new generation).
    #[error("the node at this address is {actual}, not {expected}: it restarted")]
    NotThisNode {
        /// The identity the dialer expected.
        expected: NodeId,
        /// The identity found at that address.
        actual: NodeId,
    },
    /// The handshake could not be parsed.
    #[error(
        "not a gossip handshake ({0}): something that is not a gossip node of this cluster is on that port"
    )]
    Malformed(String),
}

impl RejectReason {
    /// The same refusal seen from the other node (swaps "ours" and "theirs").
    pub fn flip(self) -> Self {
        match self {
            Self::Version { ours, theirs } => Self::Version {
                ours: theirs,
                theirs: ours,
            },
            Self::Label { ours, theirs } => Self::Label {
                ours: theirs,
                theirs: ours,
            },
            Self::KeyRequired => Self::PeerHasNoKey,
            Self::PeerHasNoKey => Self::KeyRequired,
            other => other,
        }
    }

    /// Whether the user must change configuration to fix it (label, version, keys).
    pub fn needs_user_action(&self) -> bool {
        !matches!(self, Self::NotThisNode { .. } | Self::Malformed(_))
    }

    /// Bounds a reason received from a peer (strings are capped).
    fn sanitize(self) -> Self {
        match self {
            Self::Label { ours, theirs } => Self::Label {
                ours: cap(ours),
                theirs: cap(theirs),
            },
            Self::Malformed(s) => Self::Malformed(cap(s)),
            other => other,
        }
    }
}

fn cap(mut s: String) -> String {
    if s.len() > MAX_LABEL_LEN {
        let mut end = MAX_LABEL_LEN;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// A decoded handshake frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handshake {
    /// The peer introduces itself.
    Hello(Hello),
    /// The peer refuses the connection (reason from the peer's point of view).
    Reject(RejectReason),
}

impl Handshake {
    /// Encodes this handshake frame (header and body).
    pub fn encode(&self) -> Bytes {
        let (kind, body) = match self {
            Self::Hello(h) => (KIND_HELLO, encode(h)),
            Self::Reject(r) => (KIND_REJECT, encode(r)),
        };
        let mut out = BytesMut::with_capacity(HANDSHAKE_HEADER_LEN + body.len());
        out.put_slice(&MAGIC);
        out.put_u16(PROTOCOL_VERSION);
        out.put_u8(kind);
        out.put_slice(&body);
        out.freeze()
    }

    /// Decodes a handshake frame, checking magic and version first so that a peer of another
    /// version gets [`RejectReason::Version`] rather than a parse error.
    pub fn decode(frame: &[u8]) -> Result<Self, RejectReason> {
        if frame.len() > MAX_HANDSHAKE_LEN {
            return Err(RejectReason::Malformed(format!(
                "handshake of {} bytes, at most {MAX_HANDSHAKE_LEN} allowed",
                frame.len()
            )));
        }
        if frame.len() < HANDSHAKE_HEADER_LEN || frame[..4] != MAGIC {
            return Err(RejectReason::Malformed("bad magic".into()));
        }
        let version = u16::from_be_bytes([frame[4], frame[5]]);
        if version != PROTOCOL_VERSION {
            return Err(RejectReason::Version {
                ours: PROTOCOL_VERSION,
                theirs: version,
            });
        }
        let body = &frame[HANDSHAKE_HEADER_LEN..];
        let malformed = |e: WireError| RejectReason::Malformed(e.to_string());
        match frame[6] {
            KIND_HELLO => {
                let hello: Hello = decode(body, MAX_HANDSHAKE_LEN).map_err(malformed)?;
                if hello.label.len() > MAX_LABEL_LEN {
                    return Err(RejectReason::Malformed("cluster label too long".into()));
                }
                if hello
                    .key_proof
                    .as_ref()
                    .is_some_and(|p| p.len() > MAX_KEY_PROOF_LEN)
                {
                    return Err(RejectReason::Malformed("key proof too long".into()));
                }
                Ok(Self::Hello(hello))
            }
            KIND_REJECT => {
                let reason: RejectReason = decode(body, MAX_HANDSHAKE_LEN).map_err(malformed)?;
                Ok(Self::Reject(reason.sanitize()))
            }
            k => Err(RejectReason::Malformed(format!(
                "unknown handshake kind {k}"
            ))),
        }
    }
}

impl Hello {
    /// Checks a peer's hello against this node's settings: label, encryption flag, and (for the
    /// acceptor) that the dialer expects this node's identity. The key proof is checked by the
    /// transport, which holds the keyring.
    pub fn check(&self, label: &str, encrypted: bool, me: NodeId) -> Result<(), RejectReason> {
        if self.from == me {
            // Nobody else may speak as this node: the directory would answer "itself".
            return Err(RejectReason::Malformed(
                "the peer claims this node's own identity".into(),
            ));
        }
        if self.label != label {
            return Err(RejectReason::Label {
                ours: label.to_owned(),
                theirs: self.label.clone(),
            });
        }
        match (encrypted, self.encrypted) {
            (true, false) => return Err(RejectReason::PeerHasNoKey),
            (false, true) => return Err(RejectReason::KeyRequired),
            _ => {}
        }
        if encrypted && self.key_proof.is_none() {
            return Err(RejectReason::Malformed(
                "encrypted hello without key proof".into(),
            ));
        }
        // Generation 0 is a dialer that knows only the address (joining through it).
        if let Some(expected) = self.expected
            && expected.generation != 0
            && expected.generation != me.generation
        {
            return Err(RejectReason::NotThisNode {
                expected,
                actual: me,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(port: u16, generation: u64) -> NodeId {
        NodeId::new(([127, 0, 0, 1], port).into(), generation)
    }

    fn hello() -> Hello {
        Hello {
            label: "prod".into(),
            from: id(7000, 1),
            expected: Some(id(7001, 2)),
            encrypted: false,
            nonce: [7; 16],
            key_proof: None,
        }
    }

    #[test]
    fn round_trip_and_trailing_bytes() {
        let v: (u32, String, Vec<u64>) = (5, "hi".into(), vec![1, 2, 3]);
        let bytes = encode(&v);
        assert_eq!(decode::<(u32, String, Vec<u64>)>(&bytes, 1024).unwrap(), v);
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert_eq!(
            decode::<(u32, String, Vec<u64>)>(&longer, 1024),
            Err(WireError::TrailingBytes(1))
        );
        assert_eq!(
            decode::<(u32, String, Vec<u64>)>(&bytes[..bytes.len() - 1], 1024),
            Err(WireError::Truncated)
        );
    }

    #[test]
    fn input_over_limit_is_refused_before_decoding() {
        let bytes = encode(&vec![0u8; 100]);
        assert!(matches!(
            decode::<Vec<u8>>(&bytes, 50),
            Err(WireError::TooLarge { limit: 50, .. })
        ));
    }

    #[test]
    fn hostile_length_prefix_hits_the_bincode_limit() {
        // A Vec<u64> claiming 2^40 elements in a 9-byte frame.
        let mut frame = vec![253u8];
        frame.extend_from_slice(&(1u64 << 40).to_le_bytes());
        let r = decode::<Vec<u64>>(&frame, 4096);
        assert!(
            matches!(r, Err(WireError::LimitExceeded) | Err(WireError::Truncated)),
            "{r:?}"
        );
        // A String claiming 2^40 bytes.
        assert!(decode::<String>(&frame, 4096).is_err());
    }

    #[test]
    fn handshake_round_trip() {
        let h = Handshake::Hello(hello());
        assert_eq!(Handshake::decode(&h.encode()).unwrap(), h);
        let r = Handshake::Reject(RejectReason::WrongKey);
        assert_eq!(Handshake::decode(&r.encode()).unwrap(), r);
    }

    #[test]
    fn wrong_version_and_magic_are_typed() {
        let mut f = Handshake::Hello(hello()).encode().to_vec();
        f[5] = 3;
        assert_eq!(
            Handshake::decode(&f),
            Err(RejectReason::Version { ours: 1, theirs: 3 })
        );
        f[0] = b'X';
        assert!(matches!(
            Handshake::decode(&f),
            Err(RejectReason::Malformed(_))
        ));
        assert!(matches!(
            Handshake::decode(b"GET / HTTP/1.1\r\n"),
            Err(RejectReason::Malformed(_))
        ));
        assert!(matches!(
            Handshake::decode(&[0u8; 1000]),
            Err(RejectReason::Malformed(_))
        ));
    }

    #[test]
    fn hello_check_reports_each_mismatch() {
        let h = hello();
        let me = id(7001, 2);
        assert_eq!(h.check("prod", false, me), Ok(()));
        assert_eq!(
            h.check("staging", false, me),
            Err(RejectReason::Label {
                ours: "staging".into(),
                theirs: "prod".into()
            })
        );
        assert_eq!(h.check("prod", true, me), Err(RejectReason::PeerHasNoKey));
        let mut enc = h.clone();
        enc.encrypted = true;
        enc.key_proof = Some(vec![0; 28]);
        assert_eq!(enc.check("prod", false, me), Err(RejectReason::KeyRequired));
        assert_eq!(
            h.check("prod", false, id(7001, 9)),
            Err(RejectReason::NotThisNode {
                expected: me,
                actual: id(7001, 9)
            })
        );
    }

    #[test]
    fn flip_swaps_points_of_view() {
        assert_eq!(RejectReason::PeerHasNoKey.flip(), RejectReason::KeyRequired);
        assert_eq!(
            RejectReason::Version { ours: 1, theirs: 2 }.flip(),
            RejectReason::Version { ours: 2, theirs: 1 }
        );
        assert_eq!(
            RejectReason::KeyRequired.to_string(),
            "this node has no cluster key but the cluster is encrypted: give this node the cluster's keyring"
        );
    }

    #[test]
    fn overlong_strings_in_a_reject_are_capped() {
        let r = RejectReason::Label {
            ours: "x".repeat(600),
            theirs: "y".into(),
        };
        // Too long for a handshake frame: refused, not allocated.
        assert!(Handshake::decode(&Handshake::Reject(r).encode()).is_err());
        let r = RejectReason::Malformed("é".repeat(100));
        match Handshake::decode(&Handshake::Reject(r).encode()).unwrap() {
            Handshake::Reject(RejectReason::Malformed(s)) => assert!(s.len() <= MAX_LABEL_LEN),
            other => panic!("{other:?}"),
        }
    }

    fn gossip(kind: plumtree::PayloadKind, payload: &'static [u8]) -> plumtree::Gossip<NodeId> {
        plumtree::Gossip {
            id: proto::MessageId {
                origin: id(7000, 3),
                seq: 42,
            },
            kind,
            payload: Bytes::from_static(payload),
            hops: 7,
        }
    }

    /// The head and payload of `g` as a [`HeadEncoder`] writes them, or `encode_frame` where it
    /// falls back to it.
    fn encoder_frame<P: PeerId>(heads: &mut HeadEncoder<P>, g: &plumtree::Gossip<P>) -> Vec<u8> {
        match heads.gossip_head(g) {
            Some(head) => [head.as_bytes(), &g.payload[..]].concat(),
            None => {
                let message = proto::Message::Broadcast(plumtree::Message::Gossip(g.clone()));
                encode_frame(&message).to_vec()
            }
        }
    }

    #[test]
    fn the_head_encoder_writes_the_frames_encode_frame_writes() {
        let boundaries = |max: u64| {
            let mut values = vec![0, 1, 249, 250, 251, 252, 253, 254, 255, 256];
            for edge in [u64::from(u16::MAX), u64::from(u32::MAX), u64::MAX] {
                values.extend([edge - 1, edge, edge.saturating_add(1)]);
            }
            values.retain(|v| *v <= max);
            values.dedup();
            values
        };
        let origins = [
            id(7000, 3),
            id(7000, 4),
            id(u16::MAX, u64::MAX),
            NodeId::new(
                ("::1".parse::<std::net::Ipv6Addr>().unwrap(), 9).into(),
                1 << 40,
            ),
            id(7000, 3),
        ];
        let mut heads = HeadEncoder::default();
        let mut checked = 0;
        for origin in origins {
            for seq in boundaries(u64::MAX) {
                for hops in boundaries(u64::from(u16::MAX)) {
                    for kind in [plumtree::PayloadKind::User, plumtree::PayloadKind::System] {
                        let g = plumtree::Gossip {
                            id: proto::MessageId { origin, seq },
                            kind,
                            payload: Bytes::from_static(b"payload"),
                            hops: hops as u16,
                        };
                        let message =
                            proto::Message::Broadcast(plumtree::Message::Gossip(g.clone()));
                        let expected = encode_frame(&message);
                        let head = heads.gossip_head(&g).expect("a NodeId head fits");
                        assert_eq!(
                            [head.as_bytes(), b"payload"].concat(),
                            &expected[..],
                            "{g:?}"
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, 5 * 18 * 12 * 2);
        // An origin whose encoding leaves no room for the rest falls back to bincode (and then
        // to `encode_frame`), and a short origin after it is encoded afresh.
        let mut heads = HeadEncoder::<[u64; 6]>::default();
        for origin in [
            [u64::MAX; 6],
            [1; 6],
            [u64::MAX; 6],
            [u64::from(u32::MAX); 6],
        ] {
            for (seq, hops) in [(1, 1), (u64::MAX, u16::MAX), (300, 250)] {
                let g = plumtree::Gossip {
                    id: proto::MessageId { origin, seq },
                    kind: plumtree::PayloadKind::User,
                    payload: Bytes::from_static(b"p"),
                    hops,
                };
                let message = proto::Message::Broadcast(plumtree::Message::Gossip(g.clone()));
                assert_eq!(encoder_frame(&mut heads, &g), &encode_frame(&message)[..]);
            }
        }
    }

    #[test]
    fn payload_frames_round_trip_and_share_the_frame() {
        for message in [
            proto::Message::Broadcast(plumtree::Message::Gossip(gossip(
                plumtree::PayloadKind::User,
                b"hello",
            ))),
            proto::Message::Broadcast(plumtree::Message::CatchUp(gossip(
                plumtree::PayloadKind::System,
                b"",
            ))),
            proto::Message::Broadcast(plumtree::Message::Prune),
        ] {
            let frame = encode_frame(&message);
            let back: proto::Message<NodeId> = decode_frame(&frame, 1024).unwrap();
            assert_eq!(back, message);
            // The payload is a view into the frame, not a copy.
            if let proto::Message::Broadcast(plumtree::Message::Gossip(g)) = &back {
                let range = frame.as_ptr_range();
                assert!(range.contains(&g.payload.as_ptr()));
            }
        }
        // A payload message in the plain encoding is still accepted.
        let plain = proto::Message::Broadcast(plumtree::Message::Gossip(gossip(
            plumtree::PayloadKind::User,
            b"x",
        )));
        let frame = encode(&plain);
        assert_eq!(decode_frame::<NodeId>(&frame, 1024).unwrap(), plain);
        // Over the limit, truncated header.
        let frame = encode_frame(&plain);
        assert!(matches!(
            decode_frame::<NodeId>(&frame, 4),
            Err(WireError::TooLarge { .. })
        ));
        assert!(decode_frame::<NodeId>(&frame.slice(..3), 1024).is_err());
    }

    #[test]
    fn a_cached_origin_decodes_as_without_the_cache() {
        let from = |port, seq| {
            let mut g = gossip(plumtree::PayloadKind::User, b"payload");
            g.id = proto::MessageId {
                origin: id(port, 3),
                seq,
            };
            encode_frame(&proto::Message::Broadcast(plumtree::Message::Gossip(g)))
        };
        let mut frames = vec![from(7000, 1), from(7000, 300), from(7001, 2), from(7000, 4)];
        // Same origin bytes, then a cut or garbled rest: the same error as without the cache.
        let good = from(7000, 5);
        frames.push(good.slice(..good.len() - 8));
        frames.push(good.slice(..14));
        let mut garbled = good.to_vec();
        garbled[10..13].fill(0xFF);
        frames.push(Bytes::from(garbled));
        frames.push(good);
        let mut cache = OriginCache::default();
        let mut hits = 0;
        for frame in &frames {
            let before = cache.origin;
            let with = decode_frame_with::<NodeId>(frame.clone(), 1024, &mut cache);
            assert_eq!(with, decode_frame::<NodeId>(frame, 1024), "frame {frame:?}");
            if let Ok(proto::Message::Broadcast(plumtree::Message::Gossip(g))) = &with {
                hits += usize::from(before == Some(g.id.origin));
            }
        }
        assert!(
            hits >= 3,
            "the cache served runs of the same origin ({hits} hits)"
        );
    }

    #[test]
    fn a_frame_head_and_its_payload_are_the_whole_frame() {
        let v6 = NodeId::new("[2001:db8::1:2]:65535".parse().unwrap(), u64::MAX);
        let big = proto::MessageId {
            origin: v6,
            seq: u64::MAX,
        };
        for (id, hops) in [
            (gossip(plumtree::PayloadKind::User, b"").id, 0),
            (big, u16::MAX),
        ] {
            for message in [
                plumtree::Message::Gossip(plumtree::Gossip {
                    id,
                    hops,
                    ..gossip(plumtree::PayloadKind::User, b"payload")
                }),
                plumtree::Message::CatchUp(plumtree::Gossip {
                    id,
                    hops,
                    ..gossip(plumtree::PayloadKind::System, b"")
                }),
            ] {
                let message = proto::Message::Broadcast(message);
                let (head, payload) = encode_frame_head(&message).expect("a payload message");
                assert!(head.as_bytes().len() <= 44, "{head:?}");
                let joined = [head.as_bytes(), &payload[..]].concat();
                assert_eq!(joined, &encode_frame(&message)[..]);
            }
        }
        assert!(
            encode_frame_head::<NodeId>(&proto::Message::Broadcast(plumtree::Message::Prune))
                .is_none()
        );
    }

    #[test]
    fn ihave_runs_share_their_origin_keep_order_and_are_capped() {
        let ihave = |origin: NodeId, seq: u64| plumtree::IHave {
            id: proto::MessageId { origin, seq },
            hops: 2,
        };
        let (a, b) = (id(7000, 1 << 40), id(7001, 1 << 41));
        let m = plumtree::Message::IHave(
            vec![ihave(a, 1), ihave(a, 2), ihave(b, 9), ihave(a, 3)].into(),
        );
        let bytes = encode(&m);
        assert_eq!(
            decode::<plumtree::Message<NodeId>>(&bytes, 4096).unwrap(),
            m
        );
        // 100 consecutive ids of one origin at one hop count: the origin and one range.
        let one = plumtree::Message::IHave((1..=100).map(|s| ihave(a, s)).collect());
        let len = encode(&one).len();
        assert!(len <= encode(&a).len() + 8, "{len} bytes");
        assert_eq!(
            decode::<plumtree::Message<NodeId>>(&encode(&one), 4096).unwrap(),
            one
        );
        // More ids than the wire cap do not decode.
        let many = plumtree::Message::<u32>::IHave(
            (0..=plumtree::MAX_IHAVE_WIRE as u64)
                .map(|seq| plumtree::IHave {
                    id: proto::MessageId { origin: 1, seq },
                    hops: 1,
                })
                .collect(),
        );
        assert!(decode::<plumtree::Message<u32>>(&encode(&many), 1 << 20).is_err());
    }

    /// One IHAVE run on the wire: an origin and its `(first, count, hops)` ranges.
    type WireRun<'a> = (u32, &'a [(u64, u32, u16)]);

    /// The bytes of an IHAVE of `u32` peers with these runs, written by hand as a hostile peer
    /// would.
    fn ihave_ranges(runs: &[WireRun]) -> Vec<u8> {
        let m = encode(&plumtree::Message::<u32>::IHave(Default::default()));
        // The variant tag, then the runs as bincode writes them (lengths as varints).
        let mut out = m[..m.len() - 1].to_vec();
        out.extend_from_slice(&encode(&runs.len()));
        for (origin, ranges) in runs {
            out.extend_from_slice(&encode(origin));
            out.extend_from_slice(&encode(&ranges.to_vec()));
        }
        out
    }

    #[test]
    fn ihave_ranges_keep_gaps_hops_and_order() {
        let ihave = |origin: u32, seq: u64, hops: u16| plumtree::IHave {
            id: proto::MessageId { origin, seq },
            hops,
        };
        let ids = vec![
            ihave(1, 5, 2),
            ihave(1, 6, 2),
            ihave(1, 7, 3),
            ihave(1, 9, 3),
            ihave(1, 8, 3),
            ihave(2, u64::MAX - 1, 1),
            ihave(2, u64::MAX, 1),
            ihave(1, 10, 3),
        ];
        let m = plumtree::Message::IHave(ids.into());
        let bytes = encode(&m);
        assert_eq!(bytes.to_vec(), {
            let r1: &[(u64, u32, u16)] = &[(5, 2, 2), (7, 1, 3), (9, 1, 3), (8, 1, 3)];
            let r2: &[(u64, u32, u16)] = &[(u64::MAX - 1, 2, 1)];
            let r3: &[(u64, u32, u16)] = &[(10, 1, 3)];
            ihave_ranges(&[(1, r1), (2, r2), (1, r3)])
        });
        assert_eq!(decode::<plumtree::Message<u32>>(&bytes, 4096).unwrap(), m);
    }

    #[test]
    fn hostile_ihave_ranges_are_refused_without_expanding() {
        let max = plumtree::MAX_IHAVE_WIRE as u32;
        let refused = |runs: &[WireRun]| {
            decode::<plumtree::Message<u32>>(&ihave_ranges(runs), 1 << 16).is_err()
        };
        // Exactly the cap, split over ranges and runs, decodes.
        let ok = ihave_ranges(&[(1, &[(1, max - 10, 1)]), (2, &[(7, 6, 1), (100, 4, 2)])]);
        match decode::<plumtree::Message<u32>>(&ok, 1 << 16).unwrap() {
            plumtree::Message::IHave(ids) => assert_eq!(ids.len(), max as usize),
            other => panic!("{other:?}"),
        }
        // One id over the cap, in one range or summed over ranges and runs.
        assert!(refused(&[(1, &[(1, max + 1, 1)])]));
        assert!(refused(&[(1, &[(1, max, 1)]), (2, &[(1, 1, 1)])]));
        // A count that would take seconds and gigabytes to expand, with a few bytes.
        assert!(refused(&[(1, &[(1, u32::MAX, 1)])]));
        assert!(refused(&[(1, &[(1, 1, 1), (1, u32::MAX, 1)])]));
        // An empty range, and ranges past the last sequence number.
        assert!(refused(&[(1, &[(3, 0, 1)])]));
        assert!(refused(&[(1, &[(u64::MAX, 2, 1)])]));
        assert!(refused(&[(1, &[(u64::MAX - 5, 7, 1)])]));
        // Ending exactly on the last sequence number is fine.
        assert!(!refused(&[(1, &[(u64::MAX - 5, 6, 1)])]));
    }

    /// IHAVE entries from generated `(origin, seq, hops)`; with `high`, the sequence numbers
    /// count down from `u64::MAX` (ranges that end at the top of the space).
    fn ihaves(ids: Vec<(u32, u64, u16)>, high: bool) -> Vec<plumtree::IHave<u32>> {
        ids.into_iter()
            .map(|(origin, seq, hops)| plumtree::IHave {
                id: proto::MessageId {
                    origin,
                    seq: if high { u64::MAX - seq } else { seq },
                },
                hops,
            })
            .collect()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Any IHAVE, sorted or not, with any hop counts, decodes as it was encoded.
        #[test]
        fn any_ihave_round_trips(ids in proptest::collection::vec((0u32..3, 0u64..12, 1u16..3), 0..64), high in proptest::prelude::any::<bool>()) {
            let ids = ihaves(ids, high);
            let m = plumtree::Message::IHave(ids.into());
            proptest::prop_assert_eq!(decode::<plumtree::Message<u32>>(&encode(&m), 1 << 16).unwrap(), m);
        }

        /// An IHAVE batch held as ranges gives back exactly the ids pushed, in order, by
        /// reference and by value; a truncated one, the first ones.
        #[test]
        fn an_ihave_batch_gives_back_its_ids(ids in proptest::collection::vec((0u32..3, 0u64..12, 1u16..3), 0..64), high in proptest::prelude::any::<bool>(), keep in 0usize..80) {
            let ids = ihaves(ids, high);
            let mut batch = plumtree::IHaves::new();
            for &ihave in &ids {
                batch.push(ihave);
            }
            proptest::prop_assert_eq!(batch.len(), ids.len());
            proptest::prop_assert_eq!(batch.iter().collect::<Vec<_>>(), ids.clone());
            proptest::prop_assert_eq!(batch.clone().into_iter().collect::<Vec<_>>(), ids.clone());
            batch.truncate(keep);
            let kept = &ids[..keep.min(ids.len())];
            proptest::prop_assert_eq!(batch.len(), kept.len());
            proptest::prop_assert_eq!(batch.into_iter().collect::<Vec<_>>(), kept.to_vec());
        }

        /// Any bytes after a payload-frame kind byte: an error or a payload no longer than the
        /// frame, never a panic.
        /// Frames that start like payload frames from a few origins, cut anywhere and followed
        /// by any bytes, decoded in any order with one origin cache: each gives what it gives
        /// without the cache.
        #[test]
        fn the_origin_cache_never_changes_a_result(frames in proptest::collection::vec((0u16..3, 0usize..24, proptest::collection::vec(proptest::prelude::any::<u8>(), 0..12)), 1..16)) {
            let mut cache = OriginCache::default();
            for (origin, cut, tail) in frames {
                let mut g = gossip(plumtree::PayloadKind::User, b"payload");
                g.id.origin = id(7000 + origin * 300, u64::from(origin));
                let full = encode_frame(&proto::Message::Broadcast(plumtree::Message::Gossip(g)));
                let mut f = full[..cut.min(full.len())].to_vec();
                f.extend_from_slice(&tail);
                let f = Bytes::from(f);
                proptest::prop_assert_eq!(
                    decode_frame_with::<NodeId>(f.clone(), 300, &mut cache),
                    decode_frame::<NodeId>(&f, 300)
                );
            }
        }

        #[test]
        fn any_payload_frame_never_panics(kind in 0xF0u8..0xF3, body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let mut f = vec![kind];
            f.extend_from_slice(&body);
            let f = Bytes::from(f);
            if let Ok(proto::Message::Broadcast(plumtree::Message::Gossip(g) | plumtree::Message::CatchUp(g))) = decode_frame::<NodeId>(&f, 300) {
                proptest::prop_assert!(g.payload.len() < f.len());
            }
        }

        /// Any bytes as a handshake frame: an error or a bounded value, never a panic.
        #[test]
        fn any_bytes_as_a_handshake_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            if let Ok(Handshake::Hello(h)) = Handshake::decode(&bytes) {
                proptest::prop_assert!(h.label.len() <= MAX_LABEL_LEN);
            }
        }

        /// A valid header followed by any body.
        #[test]
        fn any_body_after_a_valid_header_never_panics(kind in 0u8..4, body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..500)) {
            let mut f = MAGIC.to_vec();
            f.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
            f.push(kind);
            f.extend_from_slice(&body);
            let _ = Handshake::decode(&f);
        }

        /// Any bytes as a message of nested sequences: bounded decode, never a panic.
        #[test]
        fn any_bytes_as_a_message_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = decode::<Vec<(String, Vec<u64>, Option<NodeId>)>>(&bytes, 300);
        }
    }
}
