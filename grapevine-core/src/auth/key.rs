//! Stream keys and their ids.

use std::fmt;

use aws_lc_rs::hmac;
use zeroize::Zeroize;

/// Bytes of a stream key.
pub const KEY_LEN: usize = 32;

/// The id of a stream key, as datagrams name it: the first four bytes of
/// HMAC-SHA256(key, "grapevine key id"), so two different keys never share
/// an id by a user's choice, and a key file's id checks its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub u32);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

/// A stream key: 32 secret bytes shared by a stream's publisher and
/// subscribers. Its `Debug` shows the id only, and its bytes are zeroed
/// when it is dropped.
///
/// ```
/// use grapevine_core::auth::{KeyId, StreamKey};
///
/// let key = StreamKey::from_bytes([0x42; 32]);
/// assert_eq!(key.id(), KeyId(0x80fa_9f89));
/// assert_eq!(format!("{key:?}"), "StreamKey(id 80fa9f89)");
/// ```
#[derive(Clone)]
pub struct StreamKey {
    bytes: [u8; KEY_LEN],
    id: KeyId,
}

impl StreamKey {
    /// The key with these bytes (drawn from the operating system's random
    /// generator: see `grapevine::keys`).
    #[must_use]
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, &bytes),
            b"grapevine key id",
        );
        // HMAC-SHA256 tags are 32 bytes: the first four are always there.
        let id = tag
            .as_ref()
            .first_chunk::<4>()
            .map_or(0, |b| u32::from_be_bytes(*b));
        Self {
            bytes,
            id: KeyId(id),
        }
    }

    /// Its id.
    #[must_use]
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// Its secret bytes (to write a key file).
    #[must_use]
    pub fn expose_bytes(&self) -> &[u8; KEY_LEN] {
        &self.bytes
    }
}

impl fmt::Debug for StreamKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamKey(id {})", self.id)
    }
}

impl Drop for StreamKey {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl PartialEq for StreamKey {
    /// Keys are equal when their ids are (different keys with one id are
    /// refused where keys are loaded).
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for StreamKey {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids against HMAC-SHA256 computed independently (Python's `hmac`).
    #[test]
    fn ids_are_the_first_bytes_of_the_hmac() {
        let counting: [u8; 32] = std::array::from_fn(|i| i as u8);
        assert_eq!(StreamKey::from_bytes(counting).id(), KeyId(0xd2e3_35cf));
        assert_eq!(StreamKey::from_bytes([0x42; 32]).id(), KeyId(0x80fa_9f89));
        assert_eq!(KeyId(0x0a).to_string(), "0000000a");
    }

    #[test]
    fn keys_are_equal_when_their_bytes_are() {
        let a = StreamKey::from_bytes([1; 32]);
        assert_eq!(a, StreamKey::from_bytes([1; 32]));
        assert_ne!(a, StreamKey::from_bytes([2; 32]));
        assert_eq!(a.clone(), a);
    }

    #[test]
    fn debug_shows_the_id_never_the_bytes() {
        let key = StreamKey::from_bytes([0xab; 32]);
        let shown = format!("{key:?} {key:#?}");
        assert!(!shown.to_lowercase().contains("abab"), "{shown}");
        assert!(!shown.contains("171"), "{shown}");
        assert!(shown.contains(&key.id().to_string()));
        assert_eq!(key.expose_bytes(), &[0xab; 32]);
    }
}
