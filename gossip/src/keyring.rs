//! Optional cluster encryption: a [`Keyring`] of shared 32-byte keys, ChaCha20-Poly1305 AEAD.
//!
//! Every frame is sealed with the ring's primary key and opened with any key of the ring (the
//! primary first). That is what lets keys rotate without downtime:
//!
//! 1. [`Keyring::add`] the new key on every node (frames are still sealed with the old key, and
//!    every node can now open frames sealed with either);
//! 2. [`Keyring::set_primary`] the new key on every node (nodes not yet switched still open the
//!    frames of switched ones, since they hold the new key);
//! 3. [`Keyring::remove`] the old key everywhere.
//!
//! A keyring is shared and mutable at runtime: clone it into the transport's config and keep a
//! clone to rotate keys while the node runs. Changes apply to the next frame sealed or opened.
//!
//! # Frame layout and overhead
//!
//! A sealed frame is `nonce (12 bytes) | ciphertext | tag (16 bytes)`: **28 bytes of overhead per
//! frame**, no key id (opening tries the primary first, then the other keys; a ring rarely holds
//! more than two). The nonce is 12 random bytes from the thread's CSPRNG for every frame; with
//! random 96-bit nonces a key should seal fewer than 2^32 frames, so rotate keys well before that
//! (at 100,000 frames per second per node, that is about 12 hours for a single node; the bound is
//! cluster-wide). The transport also binds each frame to its connection and position through the
//! associated data, so frames cannot be replayed on another connection or reordered.
//!
//! The keyring protects against outsiders: they can neither read frames nor inject any. It does
//! not protect against a node that holds a key.

use std::fmt;
use std::sync::{Arc, RwLock};

use bytes::{Bytes, BytesMut};
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Nonce, Tag};
use rand::RngCore;

/// A 32-byte cluster key.
pub type Key = [u8; 32];

/// Bytes added to every sealed frame: a 12-byte nonce and a 16-byte tag.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// The most keys a ring holds at once.
pub const MAX_KEYS: usize = 16;

/// What a keyring operation refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    /// `set_primary` or `remove` of a key the ring does not hold.
    #[error("the key is not in the keyring: add it first")]
    UnknownKey,
    /// `remove` of the primary key.
    #[error("cannot remove the primary key: make another key primary first")]
    RemovePrimary,
    /// `add` beyond [`MAX_KEYS`].
    #[error("the keyring already holds {MAX_KEYS} keys: remove retired keys first")]
    Full,
    /// No key of the ring opens the frame (wrong key, tampered or truncated frame).
    #[error(
        "frame could not be decrypted with any key of the keyring: the peer uses another cluster key, or the frame was tampered with"
    )]
    Undecryptable,
}

struct Entry {
    key: Key,
    cipher: ChaCha20Poly1305,
}

/// A shared, runtime-mutable set of cluster keys with one primary. Cheap to clone: clones share
/// the same keys.
#[derive(Clone)]
pub struct Keyring {
    // Index 0 is the primary.
    inner: Arc<RwLock<Vec<Entry>>>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("Keyring")
            .field("keys", &self.read().len())
            .finish()
    }
}

fn entry(key: Key) -> Entry {
    Entry {
        key,
        cipher: ChaCha20Poly1305::new(&key.into()),
    }
}

impl Keyring {
    /// A ring holding only `primary`.
    pub fn new(primary: Key) -> Self {
        Self {
            inner: Arc::new(RwLock::new(vec![entry(primary)])),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Entry>> {
        // A panic while holding the lock cannot leave the Vec inconsistent: recover.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Entry>> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `key` as a secondary key (frames sealed with it can now be opened). Adding a key
    /// already in the ring does nothing.
    pub fn add(&self, key: Key) -> Result<(), KeyringError> {
        let mut keys = self.write();
        if keys.iter().any(|e| e.key == key) {
            return Ok(());
        }
        if keys.len() >= MAX_KEYS {
            return Err(KeyringError::Full);
        }
        keys.push(entry(key));
        Ok(())
    }

    /// Makes `key`, already in the ring, the primary: frames are sealed with it from now on.
    pub fn set_primary(&self, key: Key) -> Result<(), KeyringError> {
        let mut keys = self.write();
        let i = keys
            .iter()
            .position(|e| e.key == key)
            .ok_or(KeyringError::UnknownKey)?;
        keys.swap(0, i);
        Ok(())
    }

    /// Removes a secondary key. The primary cannot be removed.
    pub fn remove(&self, key: Key) -> Result<(), KeyringError> {
        let mut keys = self.write();
        match keys.iter().position(|e| e.key == key) {
            None => Err(KeyringError::UnknownKey),
            Some(0) => Err(KeyringError::RemovePrimary),
            Some(i) => {
                keys.remove(i);
                Ok(())
            }
        }
    }

    /// All keys, the primary first.
    pub fn keys(&self) -> Vec<Key> {
        self.read().iter().map(|e| e.key).collect()
    }

    /// The primary key.
    pub fn primary(&self) -> Key {
        self.read()[0].key
    }

    /// Seals `plaintext` with the primary key: `nonce | ciphertext | tag`, [`OVERHEAD`] bytes
    /// longer than `plaintext`. `aad` is authenticated, not sent.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Bytes {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let mut out = BytesMut::with_capacity(plaintext.len() + OVERHEAD);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let cipher = self.read()[0].cipher.clone();
        let tag = cipher
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), aad, &mut out[NONCE_LEN..])
            // Only fails for payloads over 256 GiB, far beyond any frame limit.
            .expect("frame too large for ChaCha20-Poly1305");
        out.extend_from_slice(&tag);
        out.freeze()
    }

    /// Opens a frame made by [`seal`](Self::seal) with any key of the ring (the primary first),
    /// decrypting in place. On failure the ring is unchanged and the frame should be discarded.
    pub fn open(&self, aad: &[u8], mut sealed: BytesMut) -> Result<Bytes, KeyringError> {
        if sealed.len() < OVERHEAD {
            return Err(KeyringError::Undecryptable);
        }
        let tag_at = sealed.len() - TAG_LEN;
        let tag = *Tag::from_slice(&sealed[tag_at..]);
        let nonce = *Nonce::from_slice(&sealed[..NONCE_LEN]);
        let keys = self.read();
        let body = &mut sealed[NONCE_LEN..tag_at];
        // decrypt_in_place_detached checks the tag before touching the buffer, so a failed
        // attempt leaves the ciphertext intact for the next key.
        let opened = keys.iter().any(|e| {
            e.cipher
                .decrypt_in_place_detached(&nonce, aad, body, &tag)
                .is_ok()
        });
        drop(keys);
        if !opened {
            return Err(KeyringError::Undecryptable);
        }
        sealed.truncate(tag_at);
        Ok(sealed.split_off(NONCE_LEN).freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_with_stated_overhead() {
        let ring = Keyring::new([1; 32]);
        let sealed = ring.seal(b"aad", b"hello");
        assert_eq!(sealed.len(), 5 + OVERHEAD);
        assert_eq!(OVERHEAD, 28);
        let opened = ring.open(b"aad", BytesMut::from(&sealed[..])).unwrap();
        assert_eq!(&opened[..], b"hello");
        // Wrong associated data, tampering, truncation: refused.
        assert_eq!(
            ring.open(b"other", BytesMut::from(&sealed[..])),
            Err(KeyringError::Undecryptable)
        );
        let mut bad = BytesMut::from(&sealed[..]);
        bad[13] ^= 1;
        assert_eq!(ring.open(b"aad", bad), Err(KeyringError::Undecryptable));
        assert_eq!(
            ring.open(b"aad", BytesMut::from(&sealed[..10])),
            Err(KeyringError::Undecryptable)
        );
    }

    #[test]
    fn nonces_differ_per_frame() {
        let ring = Keyring::new([1; 32]);
        assert_ne!(ring.seal(b"", b"x")[..12], ring.seal(b"", b"x")[..12]);
    }

    #[test]
    fn rotation_keeps_every_frame_readable() {
        let a = Keyring::new([1; 32]);
        let b = Keyring::new([1; 32]);
        a.add([2; 32]).unwrap();
        b.add([2; 32]).unwrap();
        a.set_primary([2; 32]).unwrap();
        // b still seals with key 1, a with key 2: both read each other.
        let from_a = a.seal(b"", b"a");
        let from_b = b.seal(b"", b"b");
        assert_eq!(&b.open(b"", BytesMut::from(&from_a[..])).unwrap()[..], b"a");
        assert_eq!(&a.open(b"", BytesMut::from(&from_b[..])).unwrap()[..], b"b");
        b.set_primary([2; 32]).unwrap();
        a.remove([1; 32]).unwrap();
        b.remove([1; 32]).unwrap();
        assert_eq!(a.keys(), vec![[2; 32]]);
        let old = Keyring::new([1; 32]).seal(b"", b"old");
        assert_eq!(
            a.open(b"", BytesMut::from(&old[..])),
            Err(KeyringError::Undecryptable)
        );
    }

    #[test]
    fn management_errors() {
        let ring = Keyring::new([1; 32]);
        assert_eq!(ring.remove([1; 32]), Err(KeyringError::RemovePrimary));
        assert_eq!(ring.remove([9; 32]), Err(KeyringError::UnknownKey));
        assert_eq!(ring.set_primary([9; 32]), Err(KeyringError::UnknownKey));
        ring.add([1; 32]).unwrap();
        assert_eq!(ring.keys().len(), 1);
        for i in 2..=MAX_KEYS as u8 {
            ring.add([i; 32]).unwrap();
        }
        assert_eq!(ring.add([200; 32]), Err(KeyringError::Full));
        ring.set_primary([5; 32]).unwrap();
        assert_eq!(ring.primary(), [5; 32]);
        assert_eq!(ring.keys()[0], [5; 32]);
        assert!(!format!("{ring:?}").contains("5, 5"));
    }

    #[test]
    fn clones_share_keys() {
        let a = Keyring::new([1; 32]);
        let b = a.clone();
        a.add([2; 32]).unwrap();
        assert_eq!(b.keys().len(), 2);
    }
}
