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
//! - `tag id` is [`Tag::ID`](crate::Tag::ID), so relays and dispatch read one integer and never
//!   touch the payload.
//!
//! Encoding enforces a size limit on the whole envelope ([`EncodeError::TooLarge`]). Decoding
//! is bounded twice: the envelope is checked against the limit before anything else, and the
//! payload decoder may allocate at most a small multiple of the payload's length, so a hostile
//! length prefix cannot make a node allocate gigabytes. A payload must be consumed exactly:
//! trailing bytes are an error, not silently ignored.

use bincode::config::Configuration;
use bincode::enc::write::{SizeWriter, Writer};
use bytes::Bytes;

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
    // Most messages are small: one allocation for them, doubling for the others.
    let mut buf = Vec::with_capacity((HEADER_LEN + 118).min(limit));
    buf.push(FORMAT_VERSION);
    buf.push(CODEC_BINCODE);
    buf.extend_from_slice(&T::ID.to_le_bytes());
    let mut writer = LimitedWriter {
        buf,
        limit,
        overflow: false,
    };
    match bincode::serde::encode_into_writer(msg, &mut writer, config()) {
        Ok(()) => Ok(Bytes::from(writer.buf)),
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

/// A `Vec` writer that refuses to grow past `limit` bytes.
struct LimitedWriter {
    buf: Vec<u8>,
    limit: usize,
    overflow: bool,
}

impl Writer for LimitedWriter {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        if self.buf.len() + bytes.len() > self.limit {
            self.overflow = true;
            return Err(bincode::error::EncodeError::Other(
                "message exceeds the size limit",
            ));
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
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
/// The decoder allocates at most a bounded multiple of `payload.len()` (16x, see the module
/// docs): strings and byte buffers claim their declared length against that budget before
/// anything is allocated.
///
/// # Errors
///
/// [`DecodeError::Payload`] for malformed input, [`DecodeError::TrailingBytes`] when bytes
/// remain after the value.
pub fn decode_payload<T: Tag>(payload: &[u8]) -> Result<T, DecodeError> {
    // bincode's claim limit is a const generic: pick the smallest tier at least 16 times the
    // payload. bincode claims the in-memory size of what it reads before reading it: one byte
    // per byte of a string or byte buffer, at most 16 per byte of a varint (a one-byte u128),
    // so a legitimate payload always fits, and a hostile length prefix cannot claim more than
    // 16 times the payload's length. (Sequences of other types go through serde, whose
    // visitors preallocate at most 1 MiB whatever the length prefix says.)
    let n = payload.len();
    let result = if n <= 1 << 8 {
        decode_with::<T, { 1 << 12 }>(payload)
    } else if n <= 1 << 12 {
        decode_with::<T, { 1 << 16 }>(payload)
    } else if n <= 1 << 16 {
        decode_with::<T, { 1 << 20 }>(payload)
    } else if n <= 1 << 20 {
        decode_with::<T, { 1 << 24 }>(payload)
    } else if n <= 1 << 24 {
        decode_with::<T, { 1 << 28 }>(payload)
    } else {
        decode_with::<T, { 1 << 30 }>(payload)
    };
    match result {
        Ok((value, read)) if read == n => Ok(value),
        Ok((_, read)) => Err(DecodeError::TrailingBytes {
            tag: T::NAME,
            extra: n - read,
        }),
        Err(source) => Err(DecodeError::Payload {
            tag: T::NAME,
            source: CodecError::decode(source),
        }),
    }
}

#[inline]
fn decode_with<T: Tag, const LIMIT: usize>(
    payload: &[u8],
) -> Result<(T, usize), bincode::error::DecodeError> {
    bincode::serde::decode_from_slice(payload, config().with_limit::<LIMIT>())
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

    #[test]
    fn large_payloads_round_trip_through_every_tier() {
        for len in [0, 200, 4000, 70_000, 1_100_000] {
            let blob = Blob {
                data: (0..len).map(|i| i as u8).collect(),
            };
            let bytes = encode(&blob, 2 << 20).unwrap();
            assert_eq!(decode_payload::<Blob>(&bytes[HEADER_LEN..]).unwrap(), blob);
        }
    }
}
