//! The envelope: how a typed message travels as bytes.
//!
//! ```text
//! +---------+-------+-----------------+-------------------------+
//! | version | codec | tag id (u64 LE) | payload                 |
//! |   u8    |  u8   |     8 bytes     | codec-specific, bounded |
//! +---------+-------+-----------------+-------------------------+
//! ```
//!
//! - `version` ([`FORMAT_VERSION`]) changes only when the header itself changes.
//! - `codec` names the payload encoding. [`CODEC_BINCODE`] is bincode 2 through serde with the
//!   standard configuration (little endian, variable-length integers); another codec can be
//!   added later without touching the header.
//! - `tag id` is [`Tag::ID`], so relays and dispatch read one integer and never
//!   touch the payload.
//!
//! Encoding enforces a size limit on the whole envelope ([`EncodeError::TooLarge`]), and
//! never buffers more than the limit. Decoding is bounded by the payload: strings and byte
//! buffers are checked against the bytes actually left before anything is allocated, and
//! sequences and maps preallocate at most serde's cautious bound (1 MiB) whatever their length
//! prefix says, so a hostile length prefix cannot make a node allocate gigabytes. The
//! envelope itself is checked against the node's limit before anything else
//! ([`crate::Message::from_envelope_limited`]). A payload must be consumed exactly: trailing
//! bytes are an error, not silently ignored.

use bincode::config::Configuration;
use bincode::enc::write::{SizeWriter, Writer};
use std::marker::PhantomData;

use bytes::{BufMut, Bytes, BytesMut};

use crate::Tag;
use crate::error::{CodecError, DecodeError, EncodeError};

/// Version of the envelope header written and accepted by this build.
pub const FORMAT_VERSION: u8 = 1;
/// Codec id of bincode 2 (serde, standard configuration).
pub const CODEC_BINCODE: u8 = 1;
/// Length of the envelope header in bytes.
pub const HEADER_LEN: usize = 10;
/// A sensible default for the envelope size limit: 1 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 1 << 20;

fn config() -> Configuration {
    bincode::config::standard()
}

/// Encode `msg` into an envelope of at most `limit` bytes (header included).
///
/// # Errors
///
/// [`EncodeError::TooLarge`] when the envelope would exceed `limit` (nothing larger than
/// `limit` is ever buffered), [`EncodeError::Serialize`] when the value's `Serialize` fails.
pub fn encode<T: Tag>(msg: &T, limit: usize) -> Result<Bytes, EncodeError> {
    // Measure first, then write into a buffer of the exact size: growing it from small
    // copied a 1 KiB payload four times. A message over the limit is refused without buffering.
    encode_exact(msg, limit, measure(msg, limit)?)
}

/// The envelope of `msg`, `size` bytes as [`measure`] found, in an allocation of its own.
fn encode_exact<T: Tag>(msg: &T, limit: usize, size: usize) -> Result<Bytes, EncodeError> {
    let mut buf = Vec::with_capacity(size);
    write_envelope(msg, limit, &mut buf)?;
    Ok(Bytes::from(buf))
}

/// The envelope's size, header included; an error when it is over `limit` or the value's
/// `Serialize` fails.
fn measure<T: Tag>(msg: &T, limit: usize) -> Result<usize, EncodeError> {
    let mut size = SizeWriter::default();
    let size = match bincode::serde::encode_into_writer(msg, &mut size, config()) {
        Ok(()) => HEADER_LEN + size.bytes_written,
        Err(source) => {
            return Err(EncodeError::Serialize {
                tag: T::NAME,
                source: CodecError::encode(source),
            });
        }
    };
    if size > limit {
        return Err(EncodeError::TooLarge { size, limit });
    }
    Ok(size)
}

/// Appends the envelope of `msg` to `buf`, refusing to write more than `limit` bytes of it.
fn write_envelope<T: Tag, B: BufMut>(
    msg: &T,
    limit: usize,
    buf: &mut B,
) -> Result<(), EncodeError> {
    buf.put_u8(FORMAT_VERSION);
    buf.put_u8(CODEC_BINCODE);
    buf.put_slice(&T::ID.to_le_bytes());
    let mut writer = LimitedWriter {
        buf,
        written: HEADER_LEN,
        limit,
        overflow: false,
    };
    match bincode::serde::encode_into_writer(msg, &mut writer, config()) {
        Ok(()) => Ok(()),
        Err(_) if writer.overflow => {
            // Measure the real size for the error; this path is rare and bounded by nothing
            // but the value itself, which the caller already holds in memory.
            let mut size = SizeWriter::default();
            let size = match bincode::serde::encode_into_writer(msg, &mut size, config()) {
                Ok(()) => HEADER_LEN + size.bytes_written,
                Err(_) => limit + 1,
            };
            Err(EncodeError::TooLarge { size, limit })
        }
        Err(source) => Err(EncodeError::Serialize {
            tag: T::NAME,
            source: CodecError::encode(source),
        }),
    }
}

/// A writer that refuses to write past `limit` bytes of envelope.
struct LimitedWriter<'a, B> {
    buf: &'a mut B,
    written: usize,
    limit: usize,
    overflow: bool,
}

impl<B: BufMut> Writer for LimitedWriter<'_, B> {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        if self.written + bytes.len() > self.limit {
            self.overflow = true;
            return Err(bincode::error::EncodeError::Other(
                "message exceeds the size limit",
            ));
        }
        self.written += bytes.len();
        self.buf.put_slice(bytes);
        Ok(())
    }
}

/// Bytes per allocation of an [`EncodeArena`]. A kept envelope cut from it pins at most this
/// much (SECURITY.md, "Pinned buffers").
pub(crate) const ARENA_CHUNK: usize = 64 * 1024;

/// Envelopes up to this size are cut from the arena's chunk; a larger one gets an allocation of
/// its own, so it never pins a chunk nor wastes one's tail.
const ARENA_MAX_ENVELOPE: usize = ARENA_CHUNK / 8;

/// Where a node's broadcasts are encoded, one after the other: the envelopes of up to
/// [`ARENA_CHUNK`] bytes of small messages share one allocation and one reference count, where
/// a `Vec` per envelope cost an allocation, a second one for the reference count on its first
/// clone (payload cache and eager peers), and two frees later on whichever thread evicts it.
#[derive(Debug, Default)]
pub(crate) struct EncodeArena {
    chunk: BytesMut,
}

impl EncodeArena {
    /// Encode `msg` as [`encode`] does, into the arena's current chunk when it is small.
    pub(crate) fn encode<T: Tag>(&mut self, msg: &T, limit: usize) -> Result<Bytes, EncodeError> {
        let size = measure(msg, limit)?;
        if size > ARENA_MAX_ENVELOPE {
            return encode_exact(msg, limit, size);
        }
        // Whatever a failed (or panicked) encode left behind is not part of any envelope.
        self.chunk.clear();
        // Reuse the chunk in place when every envelope cut from it is gone, else start another;
        // the envelopes still alive keep the old one.
        if self.chunk.capacity() < size && !self.chunk.try_reclaim(size) {
            self.chunk = BytesMut::with_capacity(ARENA_CHUNK);
        }
        match write_envelope(msg, limit, &mut self.chunk) {
            Ok(()) => Ok(self.chunk.split().freeze()),
            Err(e) => {
                self.chunk.clear();
                Err(e)
            }
        }
    }
}

/// The parsed header of an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The envelope format version.
    pub version: u8,
    /// The payload codec.
    pub codec: u8,
    /// The tag id.
    pub tag: u64,
}

/// Parse and validate an envelope's header: length, version and codec. The payload is not
/// looked at.
///
/// # Errors
///
/// [`DecodeError::Truncated`], [`DecodeError::UnsupportedVersion`] or
/// [`DecodeError::UnknownCodec`].
pub fn parse_header(envelope: &[u8]) -> Result<Header, DecodeError> {
    let Some((head, _)) = envelope.split_first_chunk::<HEADER_LEN>() else {
        return Err(DecodeError::Truncated {
            len: envelope.len(),
            header: HEADER_LEN,
        });
    };
    let [version, codec, id @ ..] = *head;
    if version != FORMAT_VERSION {
        return Err(DecodeError::UnsupportedVersion {
            version,
            supported: FORMAT_VERSION,
        });
    }
    if codec != CODEC_BINCODE {
        return Err(DecodeError::UnknownCodec {
            codec,
            supported: CODEC_BINCODE,
        });
    }
    Ok(Header {
        version,
        codec,
        tag: u64::from_le_bytes(id),
    })
}

/// Decode a payload written by [`encode`] as `T`: the whole payload, nothing left over.
///
/// Allocation is bounded by the payload: strings and byte buffers are checked against the
/// bytes actually left before anything is allocated (see the module docs).
///
/// # Errors
///
/// [`DecodeError::Payload`] for malformed input, [`DecodeError::TrailingBytes`] when bytes
/// remain after the value.
pub fn decode_payload<T: Tag>(payload: &[u8]) -> Result<T, DecodeError> {
    decode_from(payload, None)
}

/// [`decode_payload`] of the payload of `envelope` (an envelope [`encode`] wrote), where every
/// [`SharedBytes`] field is a slice of `envelope` rather than a copy. This is how
/// [`Message::decode`](crate::Message::decode) decodes.
///
/// # Errors
///
/// [`DecodeError::Truncated`] when `envelope` is shorter than the header, or any error of
/// [`decode_payload`].
pub fn decode_envelope_payload<T: Tag>(envelope: &Bytes) -> Result<T, DecodeError> {
    let Some(payload) = envelope.get(HEADER_LEN..) else {
        return Err(DecodeError::Truncated {
            len: envelope.len(),
            header: HEADER_LEN,
        });
    };
    decode_from(payload, Some(envelope))
}

fn decode_from<T: Tag>(payload: &[u8], src: bounded::Src<'_>) -> Result<T, DecodeError> {
    let seed = bounded::Seed(PhantomData::<T>, src);
    match bincode::serde::seed_decode_from_slice(seed, payload, config()) {
        Ok((value, read)) if read == payload.len() => Ok(value),
        Ok((_, read)) => Err(DecodeError::TrailingBytes {
            tag: T::NAME,
            extra: payload.len() - read,
        }),
        Err(source) => Err(DecodeError::Payload {
            tag: T::NAME,
            source: CodecError::decode(source),
        }),
    }
}

/// The serde name [`SharedBytes`] deserializes under, which the envelope decoder recognises.
const SHARED_BYTES: &str = "gossip::SharedBytes";

thread_local! {
    /// The slice of the envelope a [`SharedBytes`] being decoded may take (see
    /// `bounded::Shared`): set just before its visitor runs, taken by it or cleared just after.
    static SHARED: std::cell::Cell<Option<Bytes>> = const { std::cell::Cell::new(None) };
}

fn offer_shared(bytes: Bytes) {
    SHARED.set(Some(bytes));
}

/// The slice offered for exactly `b` (same address and length), if any; clears the offer.
fn take_shared(b: &[u8]) -> Option<Bytes> {
    SHARED
        .take()
        .filter(|s| s.as_ptr() == b.as_ptr() && s.len() == b.len())
}

/// A byte-buffer field that a received message decodes without copying: it is a slice of the
/// message's envelope, which is itself a slice of what the transport read.
///
/// On the wire it is exactly a `bytes::Bytes` or `serde_bytes` field (a length and the bytes),
/// so the two are interchangeable between nodes. The difference is on receipt: serde gives a
/// `bytes::Bytes` field a borrowed slice that it must copy (an allocation and a copy per
/// message, the bulk of a receiver's cost with 1 KiB payloads), while a `SharedBytes` decoded
/// by [`Message::decode`](crate::Message::decode) or by a [`Tags`](crate::Tags) enum's dispatch
/// (`recv_typed`) shares the received buffer. Decoded any other way (another serde format,
/// [`decode_payload`]) it copies, like `bytes::Bytes`.
///
/// It keeps the whole received envelope alive while it lives (the other fields included),
/// so turn it into an owned copy (`to_vec()`) before storing a small part of a large message
/// for long.
///
/// ```
/// use gossip::{Message, SharedBytes, Tag};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Tag, Serialize, Deserialize, Debug)]
/// struct Chunk { offset: u64, data: SharedBytes }
///
/// let sent = Chunk { offset: 7, data: SharedBytes::from(vec![1u8; 1024]) };
/// let msg = Message::encode(&sent, 4096)?;
/// let chunk: Chunk = msg.decode()?;
/// assert_eq!(chunk.data, sent.data);
/// // The field points into the message: nothing was copied.
/// assert!(msg.envelope().as_ptr_range().contains(&chunk.data.as_ptr()));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SharedBytes(pub Bytes);

impl SharedBytes {
    /// The bytes, as a `bytes::Bytes` (no copy).
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl std::fmt::Debug for SharedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::ops::Deref for SharedBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for SharedBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl From<Bytes> for SharedBytes {
    fn from(bytes: Bytes) -> Self {
        Self(bytes)
    }
}

impl From<Vec<u8>> for SharedBytes {
    fn from(bytes: Vec<u8>) -> Self {
        Self(bytes.into())
    }
}

impl From<&'static [u8]> for SharedBytes {
    fn from(bytes: &'static [u8]) -> Self {
        Self(Bytes::from_static(bytes))
    }
}

impl From<SharedBytes> for Bytes {
    fn from(bytes: SharedBytes) -> Self {
        bytes.0
    }
}

impl serde::Serialize for SharedBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for SharedBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_newtype_struct(SHARED_BYTES, SharedVisitor)
    }
}

struct SharedVisitor;

impl<'de> serde::de::Visitor<'de> for SharedVisitor {
    type Value = SharedBytes;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a byte buffer")
    }

    /// Any deserializer but the envelope decoder: read it as `bytes::Bytes` does.
    fn visit_newtype_struct<D: serde::Deserializer<'de>>(
        self,
        d: D,
    ) -> Result<SharedBytes, D::Error> {
        serde::Deserialize::deserialize(d).map(SharedBytes)
    }

    fn visit_borrowed_bytes<E: serde::de::Error>(self, b: &'de [u8]) -> Result<SharedBytes, E> {
        Ok(SharedBytes(
            take_shared(b).unwrap_or_else(|| Bytes::copy_from_slice(b)),
        ))
    }

    fn visit_bytes<E: serde::de::Error>(self, b: &[u8]) -> Result<SharedBytes, E> {
        Ok(SharedBytes(Bytes::copy_from_slice(b)))
    }

    fn visit_byte_buf<E: serde::de::Error>(self, b: Vec<u8>) -> Result<SharedBytes, E> {
        Ok(SharedBytes(b.into()))
    }
}

/// A serde adapter over bincode's borrowing deserializer that turns every request for an
/// owned string or byte buffer into a request for a borrowed one.
///
/// bincode decodes an owned `String` or `Vec<u8>` by allocating the length its prefix claims
/// and then reading: a 9-byte hostile payload could ask for exabytes. A borrowed `&str` or
/// `&[u8]` is checked against the bytes left in the payload first, and the visitor copies it
/// only then. This keeps decoding bounded without bincode's byte-claim limit, which costs a
/// check per primitive (2.7x slower on a `Vec<u8>`).
mod bounded {
    use std::fmt;

    use bytes::Bytes;
    use serde::de::{self, DeserializeSeed, Deserializer, Visitor};

    #[allow(unused_imports, reason = "for the doc links")]
    use super::SharedBytes;
    use super::{SHARED_BYTES, offer_shared, take_shared};

    /// The envelope the payload being decoded is part of, when the caller has it: a
    /// [`SharedBytes`] field is then a slice of it instead of a copy.
    pub(super) type Src<'s> = Option<&'s Bytes>;

    pub(super) struct Seed<'s, S>(pub(super) S, pub(super) Src<'s>);
    struct De<'s, D>(D, Src<'s>);
    struct Vis<'s, V>(V, Src<'s>);
    struct Seq<'s, A>(A, Src<'s>);
    struct Map<'s, A>(A, Src<'s>);
    struct Enum<'s, A>(A, Src<'s>);
    struct Variant<'s, A>(A, Src<'s>);
    /// The visitor of a [`SharedBytes`] field decoded from `Src`.
    struct Shared<'s, V>(V, &'s Bytes);

    impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<'_, S> {
        type Value = S::Value;

        #[inline]
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
            self.0.deserialize(De(d, self.1))
        }
    }

    macro_rules! forward {
        ($($method:ident($($arg:ident: $ty:ty),*);)*) => {$(
            #[inline]
            fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* v: V) -> Result<V::Value, D::Error> {
                self.0.$method($($arg,)* Vis(v, self.1))
            }
        )*};
    }

    impl<'de, D: Deserializer<'de>> Deserializer<'de> for De<'_, D> {
        type Error = D::Error;

        forward! {
            deserialize_any(); deserialize_bool(); deserialize_i8(); deserialize_i16();
            deserialize_i32(); deserialize_i64(); deserialize_i128(); deserialize_u8();
            deserialize_u16(); deserialize_u32(); deserialize_u64(); deserialize_u128();
            deserialize_f32(); deserialize_f64(); deserialize_char(); deserialize_str();
            deserialize_bytes(); deserialize_option(); deserialize_unit();
            deserialize_unit_struct(name: &'static str);
            deserialize_seq(); deserialize_tuple(len: usize);
            deserialize_tuple_struct(name: &'static str, len: usize);
            deserialize_map();
            deserialize_struct(name: &'static str, fields: &'static [&'static str]);
            deserialize_enum(name: &'static str, variants: &'static [&'static str]);
            deserialize_identifier(); deserialize_ignored_any();
        }

        #[inline]
        fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, D::Error> {
            self.0.deserialize_str(Vis(v, self.1))
        }

        #[inline]
        fn deserialize_byte_buf<V: Visitor<'de>>(self, v: V) -> Result<V::Value, D::Error> {
            self.0.deserialize_bytes(Vis(v, self.1))
        }

        #[inline]
        fn deserialize_newtype_struct<V: Visitor<'de>>(
            self,
            name: &'static str,
            v: V,
        ) -> Result<V::Value, D::Error> {
            match self.1 {
                // A `SharedBytes` is written as bytes (a newtype is transparent in bincode).
                Some(src) if name == SHARED_BYTES => self.0.deserialize_bytes(Shared(v, src)),
                _ => self.0.deserialize_newtype_struct(name, Vis(v, self.1)),
            }
        }

        fn is_human_readable(&self) -> bool {
            self.0.is_human_readable()
        }
    }

    macro_rules! visit {
        ($($method:ident($ty:ty);)*) => {$(
            #[inline]
            fn $method<E: de::Error>(self, value: $ty) -> Result<V::Value, E> {
                self.0.$method(value)
            }
        )*};
    }

    impl<'de, V: Visitor<'de>> Visitor<'de> for Shared<'_, V> {
        type Value = V::Value;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            self.0.expecting(f)
        }

        fn visit_borrowed_bytes<E: de::Error>(self, b: &'de [u8]) -> Result<V::Value, E> {
            // Borrowed from the payload, so from the envelope: hand `SharedBytes` the same
            // bytes as a slice of the envelope, which it takes instead of copying them.
            let envelope = self.1.as_ptr_range();
            let within = envelope.start <= b.as_ptr() && b.as_ptr_range().end <= envelope.end;
            if within {
                offer_shared(self.1.slice_ref(b));
            }
            let value = self.0.visit_borrowed_bytes(b);
            take_shared(b);
            value
        }

        fn visit_bytes<E: de::Error>(self, b: &[u8]) -> Result<V::Value, E> {
            self.0.visit_bytes(b)
        }

        fn visit_byte_buf<E: de::Error>(self, b: Vec<u8>) -> Result<V::Value, E> {
            self.0.visit_byte_buf(b)
        }
    }

    impl<'de, V: Visitor<'de>> Visitor<'de> for Vis<'_, V> {
        type Value = V::Value;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            self.0.expecting(f)
        }

        visit! {
            visit_bool(bool); visit_i8(i8); visit_i16(i16); visit_i32(i32); visit_i64(i64);
            visit_i128(i128); visit_u8(u8); visit_u16(u16); visit_u32(u32); visit_u64(u64);
            visit_u128(u128); visit_f32(f32); visit_f64(f64); visit_char(char);
            visit_str(&str); visit_borrowed_str(&'de str); visit_string(String);
            visit_bytes(&[u8]); visit_borrowed_bytes(&'de [u8]); visit_byte_buf(Vec<u8>);
        }

        #[inline]
        fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
            self.0.visit_none()
        }

        #[inline]
        fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
            self.0.visit_unit()
        }

        #[inline]
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
            self.0.visit_some(De(d, self.1))
        }

        #[inline]
        fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
            self.0.visit_newtype_struct(De(d, self.1))
        }

        #[inline]
        fn visit_seq<A: de::SeqAccess<'de>>(self, a: A) -> Result<V::Value, A::Error> {
            self.0.visit_seq(Seq(a, self.1))
        }

        #[inline]
        fn visit_map<A: de::MapAccess<'de>>(self, a: A) -> Result<V::Value, A::Error> {
            self.0.visit_map(Map(a, self.1))
        }

        #[inline]
        fn visit_enum<A: de::EnumAccess<'de>>(self, a: A) -> Result<V::Value, A::Error> {
            self.0.visit_enum(Enum(a, self.1))
        }
    }

    impl<'de, A: de::SeqAccess<'de>> de::SeqAccess<'de> for Seq<'_, A> {
        type Error = A::Error;

        #[inline]
        fn next_element_seed<T: DeserializeSeed<'de>>(
            &mut self,
            seed: T,
        ) -> Result<Option<T::Value>, A::Error> {
            self.0.next_element_seed(Seed(seed, self.1))
        }

        fn size_hint(&self) -> Option<usize> {
            self.0.size_hint()
        }
    }

    impl<'de, A: de::MapAccess<'de>> de::MapAccess<'de> for Map<'_, A> {
        type Error = A::Error;

        #[inline]
        fn next_key_seed<K: DeserializeSeed<'de>>(
            &mut self,
            seed: K,
        ) -> Result<Option<K::Value>, A::Error> {
            self.0.next_key_seed(Seed(seed, self.1))
        }

        #[inline]
        fn next_value_seed<T: DeserializeSeed<'de>>(
            &mut self,
            seed: T,
        ) -> Result<T::Value, A::Error> {
            self.0.next_value_seed(Seed(seed, self.1))
        }

        fn size_hint(&self) -> Option<usize> {
            self.0.size_hint()
        }
    }

    impl<'s, 'de, A: de::EnumAccess<'de>> de::EnumAccess<'de> for Enum<'s, A> {
        type Error = A::Error;
        type Variant = Variant<'s, A::Variant>;

        #[inline]
        fn variant_seed<T: DeserializeSeed<'de>>(
            self,
            seed: T,
        ) -> Result<(T::Value, Self::Variant), A::Error> {
            let (value, variant) = self.0.variant_seed(Seed(seed, self.1))?;
            Ok((value, Variant(variant, self.1)))
        }
    }

    impl<'de, A: de::VariantAccess<'de>> de::VariantAccess<'de> for Variant<'_, A> {
        type Error = A::Error;

        #[inline]
        fn unit_variant(self) -> Result<(), A::Error> {
            self.0.unit_variant()
        }

        #[inline]
        fn newtype_variant_seed<T: DeserializeSeed<'de>>(
            self,
            seed: T,
        ) -> Result<T::Value, A::Error> {
            self.0.newtype_variant_seed(Seed(seed, self.1))
        }

        #[inline]
        fn tuple_variant<V: Visitor<'de>>(self, len: usize, v: V) -> Result<V::Value, A::Error> {
            self.0.tuple_variant(len, Vis(v, self.1))
        }

        #[inline]
        fn struct_variant<V: Visitor<'de>>(
            self,
            fields: &'static [&'static str],
            v: V,
        ) -> Result<V::Value, A::Error> {
            self.0.struct_variant(fields, Vis(v, self.1))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(crate::Tag, Serialize, Deserialize, Debug, PartialEq)]
    #[tag(crate = "crate", name = "test.blob")]
    struct Blob {
        data: Vec<u8>,
    }

    #[derive(crate::Tag, Serialize, Deserialize, Debug, PartialEq)]
    #[tag(crate = "crate", name = "test.text")]
    struct Text(String);

    #[test]
    fn envelope_layout_is_version_codec_id_payload() {
        let bytes = encode(&Blob { data: vec![7, 8] }, 1024).unwrap();
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(bytes[1], CODEC_BINCODE);
        assert_eq!(bytes[2..10], tag_id_bytes("test.blob"));
        // bincode standard: varint length 2, then the bytes.
        assert_eq!(&bytes[10..], &[2, 7, 8]);
        let header = parse_header(&bytes).unwrap();
        assert_eq!(header.tag, crate::tag_id("test.blob"));
        assert_eq!(
            decode_payload::<Blob>(&bytes[10..]).unwrap(),
            Blob { data: vec![7, 8] }
        );
    }

    fn tag_id_bytes(name: &str) -> [u8; 8] {
        crate::tag_id(name).to_le_bytes()
    }

    #[test]
    fn encode_refuses_a_message_over_the_limit_with_its_real_size() {
        let blob = Blob { data: vec![0; 100] };
        // 10 header + 1 length byte + 100 data bytes.
        assert_eq!(encode(&blob, 111).unwrap().len(), 111);
        match encode(&blob, 110) {
            Err(EncodeError::TooLarge {
                size: 111,
                limit: 110,
            }) => {}
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert!(matches!(
            encode(&blob, 0),
            Err(EncodeError::TooLarge { size: 111, .. })
        ));
    }

    #[test]
    fn arena_envelopes_are_those_of_encode_cut_one_after_the_other_from_one_chunk() {
        let mut arena = EncodeArena::default();
        let blobs: Vec<Blob> = (0..4u8)
            .map(|i| Blob {
                data: vec![i; 100 + i as usize],
            })
            .collect();
        let envelopes: Vec<Bytes> = blobs
            .iter()
            .map(|b| arena.encode(b, 1024).unwrap())
            .collect();
        for (blob, envelope) in blobs.iter().zip(&envelopes) {
            assert_eq!(envelope, &encode(blob, 1024).unwrap());
        }
        for pair in envelopes.windows(2) {
            assert_eq!(
                pair[1].as_ptr(),
                pair[0].as_ptr().wrapping_add(pair[0].len())
            );
        }
    }

    #[test]
    fn arena_gives_a_large_envelope_its_own_allocation_and_keeps_its_chunk() {
        let mut arena = EncodeArena::default();
        let small = Blob { data: vec![1; 10] };
        let first = arena.encode(&small, 1 << 20).unwrap();
        let large = Blob {
            data: vec![2; ARENA_MAX_ENVELOPE],
        };
        let big = arena.encode(&large, 1 << 20).unwrap();
        assert_eq!(big, encode(&large, 1 << 20).unwrap());
        let next = arena.encode(&small, 1 << 20).unwrap();
        assert_eq!(next.as_ptr(), first.as_ptr().wrapping_add(first.len()));
        let big_range = big.as_ptr() as usize..big.as_ptr() as usize + big.len();
        assert!(!big_range.contains(&(first.as_ptr() as usize)));
        // Over the limit is refused as by `encode`, and takes nothing from the chunk.
        assert!(matches!(
            arena.encode(&large, 100),
            Err(EncodeError::TooLarge { limit: 100, .. })
        ));
        let after = arena.encode(&small, 1 << 20).unwrap();
        assert_eq!(after.as_ptr(), next.as_ptr().wrapping_add(next.len()));
    }

    #[test]
    fn arena_reuses_its_chunk_only_once_every_envelope_cut_from_it_is_gone() {
        let blob = Blob {
            data: vec![3; 4000],
        };
        let per_chunk = ARENA_CHUNK / encode(&blob, 1 << 20).unwrap().len();
        // Every envelope dropped at once: the chunk comes back.
        let mut arena = EncodeArena::default();
        let start = arena.encode(&blob, 1 << 20).unwrap().as_ptr();
        let reused =
            (0..2 * per_chunk).any(|_| arena.encode(&blob, 1 << 20).unwrap().as_ptr() == start);
        assert!(reused, "the chunk was not reused once free");
        // One envelope kept: the chunk stays its, and later envelopes come from another one.
        let mut arena = EncodeArena::default();
        let kept = arena.encode(&blob, 1 << 20).unwrap();
        let chunk = kept.as_ptr() as usize..kept.as_ptr() as usize + ARENA_CHUNK;
        let mut left = 0;
        for _ in 0..4 * per_chunk {
            let e = arena.encode(&blob, 1 << 20).unwrap();
            if !chunk.contains(&(e.as_ptr() as usize)) {
                left += 1;
            }
        }
        assert!(
            left >= 3 * per_chunk,
            "the kept envelope's bytes were overwritten"
        );
        assert_eq!(kept, encode(&blob, 1 << 20).unwrap());
    }

    /// Serializes once; fails on every later attempt (after the size was measured).
    #[derive(crate::Tag, Deserialize, Debug)]
    #[tag(crate = "crate", name = "test.flaky")]
    struct Flaky {
        #[serde(skip)]
        calls: std::sync::atomic::AtomicU32,
        data: Vec<u8>,
    }

    impl Serialize for Flaky {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            if self
                .calls
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                > 0
            {
                return Err(serde::ser::Error::custom("flaky"));
            }
            self.data.serialize(s)
        }
    }

    #[test]
    fn a_failed_arena_encode_leaves_nothing_behind() {
        let mut arena = EncodeArena::default();
        let blob = Blob { data: vec![5; 50] };
        let first = arena.encode(&blob, 1024).unwrap();
        let flaky = Flaky {
            calls: Default::default(),
            data: vec![9; 50],
        };
        assert!(matches!(
            arena.encode(&flaky, 1024),
            Err(EncodeError::Serialize {
                tag: "test.flaky",
                ..
            })
        ));
        let next = arena.encode(&blob, 1024).unwrap();
        assert_eq!(next, first);
        assert_eq!(next.as_ptr(), first.as_ptr().wrapping_add(first.len()));
    }

    #[test]
    fn header_errors_are_typed() {
        assert!(matches!(
            parse_header(&[1, 1, 0]),
            Err(DecodeError::Truncated { len: 3, .. })
        ));
        let mut bytes = encode(&Text("hi".into()), 64).unwrap().to_vec();
        bytes[0] = 9;
        assert!(matches!(
            parse_header(&bytes),
            Err(DecodeError::UnsupportedVersion {
                version: 9,
                supported: 1
            })
        ));
        bytes[0] = FORMAT_VERSION;
        bytes[1] = 42;
        assert!(matches!(
            parse_header(&bytes),
            Err(DecodeError::UnknownCodec { codec: 42, .. })
        ));
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = encode(&Text("hi".into()), 64).unwrap().to_vec();
        bytes.push(0);
        match decode_payload::<Text>(&bytes[HEADER_LEN..]) {
            Err(DecodeError::TrailingBytes {
                tag: "test.text",
                extra: 1,
            }) => {}
            other => panic!("expected TrailingBytes, got {other:?}"),
        }
    }

    #[test]
    fn a_hostile_length_prefix_is_refused_before_allocating() {
        // varint 0xfd + u32 LE: a string of 4 GiB - 1 in a 5-byte payload.
        let payload = [0xfd, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            decode_payload::<Text>(&payload),
            Err(DecodeError::Payload { .. })
        ));
        // varint 0xfe + u64: 2^63 bytes.
        let payload = [0xfe, 0, 0, 0, 0, 0, 0, 0, 0x80];
        assert!(matches!(
            decode_payload::<Blob>(&payload),
            Err(DecodeError::Payload { .. })
        ));
        // Garbage in a string.
        assert!(decode_payload::<Text>(&[2, 0xff, 0xfe]).is_err());
        assert!(decode_payload::<Text>(&[]).is_err());
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
    enum Op {
        Put { key: String, value: bytes::Bytes },
        Delete(String),
        Clear,
        Batch(Vec<Op>),
    }

    #[derive(crate::Tag, Serialize, Deserialize, Debug, PartialEq, Clone)]
    #[tag(crate = "crate", name = "test.nested")]
    struct Nested {
        ops: Vec<Op>,
        labels: std::collections::BTreeMap<String, Vec<u8>>,
        note: Option<String>,
        pair: (String, char, u128),
        raw: bytes::Bytes,
    }

    fn nested() -> Nested {
        Nested {
            ops: vec![
                Op::Put {
                    key: "a".into(),
                    value: bytes::Bytes::from_static(b"xyz"),
                },
                Op::Delete("b".into()),
                Op::Clear,
                Op::Batch(vec![Op::Delete("c".into()), Op::Clear]),
            ],
            labels: [("k".to_owned(), vec![1, 2]), ("é".to_owned(), vec![])].into(),
            note: Some("note".into()),
            pair: ("p".into(), '∑', u128::MAX),
            raw: bytes::Bytes::from(vec![9; 300]),
        }
    }

    #[test]
    fn nested_strings_and_byte_buffers_round_trip() {
        let value = nested();
        let bytes = encode(&value, 4096).unwrap();
        assert_eq!(
            decode_payload::<Nested>(&bytes[HEADER_LEN..]).unwrap(),
            value
        );
    }

    #[test]
    fn every_truncation_and_corruption_of_a_nested_payload_is_an_error() {
        let bytes = encode(&nested(), 4096).unwrap();
        let payload = &bytes[HEADER_LEN..];
        for cut in 0..payload.len() {
            assert!(
                decode_payload::<Nested>(&payload[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        // Write a varint length of u64::MAX (0xfd then 8 bytes) at every offset: wherever it
        // lands on a length prefix, the decoder must fail without allocating it (an attempt
        // would abort this test). Inside a u128 it can still decode, hence no assertion there.
        let huge = [0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        let mut errors = 0;
        for i in 0..payload.len() {
            let mut corrupt = payload.to_vec();
            corrupt.splice(i..(i + 9).min(payload.len()), huge);
            errors += usize::from(decode_payload::<Nested>(&corrupt).is_err());
        }
        // The last 300 bytes are raw data, where any bytes are valid.
        assert!(
            errors >= (payload.len() - 300) / 2,
            "{errors} of {}",
            payload.len()
        );
        // The first byte is the length of `ops`.
        let mut corrupt = payload.to_vec();
        corrupt.splice(0..9, huge);
        assert!(decode_payload::<Nested>(&corrupt).is_err());
    }

    proptest::proptest! {
        #[test]
        fn random_payloads_never_panic(payload in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = decode_payload::<Nested>(&payload);
            let _ = decode_payload::<Blob>(&payload);
            let _ = decode_payload::<Text>(&payload);
        }

        #[test]
        fn any_blob_round_trips(data in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            let blob = Blob { data };
            let bytes = encode(&blob, 4096).unwrap();
            proptest::prop_assert_eq!(decode_payload::<Blob>(&bytes[HEADER_LEN..]).unwrap(), blob);
        }
    }

    /// `Nested` with `SharedBytes` where it has `bytes::Bytes`: the same wire bytes.
    #[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
    enum SharedOp {
        Put { key: String, value: SharedBytes },
        Delete(String),
        Clear,
        Batch(Vec<SharedOp>),
    }

    #[derive(crate::Tag, Serialize, Deserialize, Debug, PartialEq, Clone)]
    #[tag(crate = "crate", name = "test.shared")]
    struct Shared {
        ops: Vec<SharedOp>,
        labels: std::collections::BTreeMap<String, Vec<u8>>,
        note: Option<String>,
        pair: (String, char, u128),
        raw: SharedBytes,
        maybe: Option<SharedBytes>,
    }

    #[derive(crate::Tag, Serialize, Deserialize, Debug, PartialEq, Clone)]
    #[tag(crate = "crate", name = "test.nested_opt")]
    struct NestedOpt {
        ops: Vec<Op>,
        labels: std::collections::BTreeMap<String, Vec<u8>>,
        note: Option<String>,
        pair: (String, char, u128),
        raw: bytes::Bytes,
        maybe: Option<bytes::Bytes>,
    }

    #[test]
    fn shared_bytes_are_slices_of_the_envelope_and_travel_as_bytes() {
        let Nested {
            ops,
            labels,
            note,
            pair,
            raw,
        } = nested();
        let with_bytes = NestedOpt {
            ops: ops.clone(),
            labels: labels.clone(),
            note: note.clone(),
            pair: pair.clone(),
            raw: raw.clone(),
            maybe: Some(bytes::Bytes::from_static(b"tail")),
        };
        let shared = Shared {
            ops: vec![
                SharedOp::Put {
                    key: "a".into(),
                    value: SharedBytes::from(&b"xyz"[..]),
                },
                SharedOp::Delete("b".into()),
                SharedOp::Clear,
                SharedOp::Batch(vec![SharedOp::Delete("c".into()), SharedOp::Clear]),
            ],
            labels,
            note,
            pair,
            raw: SharedBytes(raw),
            maybe: Some(SharedBytes::from(&b"tail"[..])),
        };
        // The same bytes on the wire as `bytes::Bytes` fields (only the tag id differs).
        let envelope = encode(&shared, 4096).unwrap();
        let other = encode(&with_bytes, 4096).unwrap();
        assert_eq!(envelope[HEADER_LEN..], other[HEADER_LEN..]);
        // Through the envelope: equal, and every shared field points into the envelope.
        let back: Shared = decode_envelope_payload(&envelope).unwrap();
        assert_eq!(back, shared);
        let inside = |b: &SharedBytes| envelope.as_ptr_range().contains(&b.as_ptr());
        assert!(inside(&back.raw) && inside(back.maybe.as_ref().unwrap()));
        assert!(matches!(&back.ops[0], SharedOp::Put { value, .. } if inside(value)));
        // Through the plain payload decoder: equal, copied.
        let copied: Shared = decode_payload(&envelope[HEADER_LEN..]).unwrap();
        assert_eq!(copied, shared);
        assert!(!inside(&copied.raw));
        // Either way, the other type reads it.
        let as_bytes: NestedOpt = decode_payload(&envelope[HEADER_LEN..]).unwrap();
        assert_eq!(as_bytes, with_bytes);
        // Every cut is an error, through the envelope too; a short envelope is `Truncated`.
        for cut in HEADER_LEN..envelope.len() {
            assert!(decode_envelope_payload::<Shared>(&envelope.slice(..cut)).is_err());
        }
        assert!(matches!(
            decode_envelope_payload::<Shared>(&envelope.slice(..3)),
            Err(DecodeError::Truncated { len: 3, .. })
        ));
        // A hostile length prefix for the shared field is refused before anything is taken.
        let empty = Shared {
            ops: Vec::new(),
            labels: Default::default(),
            note: None,
            pair: ("p".into(), 'q', 0),
            raw: SharedBytes::default(),
            maybe: None,
        };
        let fine = encode(&empty, 4096).unwrap();
        assert_eq!(decode_envelope_payload::<Shared>(&fine).unwrap(), empty);
        // The last two bytes are `raw`'s length (0) and `maybe` (None).
        let mut hostile = fine[..fine.len() - 2].to_vec();
        hostile.extend_from_slice(&[0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(
            decode_envelope_payload::<Shared>(&Bytes::from(hostile)),
            Err(DecodeError::Payload { .. })
        ));
    }

    #[test]
    fn large_payloads_round_trip() {
        for len in [0, 200, 4000, 70_000, 1_100_000] {
            let blob = Blob {
                data: (0..len).map(|i| i as u8).collect(),
            };
            let bytes = encode(&blob, 2 << 20).unwrap();
            assert_eq!(decode_payload::<Blob>(&bytes[HEADER_LEN..]).unwrap(), blob);
        }
    }
}
