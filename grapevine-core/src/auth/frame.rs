//! The authenticated frame: where the auth header and the tag sit in a
//! datagram, and sealing one sender's datagrams (PROTOCOL.md §11).
//!
//! A sealed datagram is the plain one (header and messages, padding
//! included) with the 20-byte auth header inserted after the 28-byte
//! datagram header and the 16-byte tag appended:
//!
//! ```text
//! header (28, flags AUTH[|ENCRYPT][|FROM_SUBSCRIBER]) | key_id u32 | salt (16) | messages | tag (16)
//! ```

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, NONCE_LEN};

use super::keyring::Keyring;
use super::KeyId;
use crate::wire::{carries_snapshots, HEADER_LEN};
use crate::StreamId;

/// `flags` bit 0: the datagram carries an auth header and a tag.
pub const FLAG_AUTH: u8 = 0x01;
/// `flags` bit 1: the messages are encrypted (only with [`FLAG_AUTH`]).
pub const FLAG_ENCRYPT: u8 = 0x02;
/// `flags` bit 2: a subscriber sealed the datagram (NAKs, FragNaks).
pub const FLAG_FROM_SUBSCRIBER: u8 = 0x04;
/// `flags` bit 3: the datagram carries leaf snapshots (a CycleBegin copy,
/// then LeafSnapshots: [`crate::wire::carries_snapshots`] of the plain
/// datagram), so that a receiver may handle it after the others of a
/// batch without reading (or decrypting) it. Covered by the tag.
pub const FLAG_SNAPSHOTS: u8 = 0x08;
/// The flags this version knows; any other bit set makes a datagram
/// unsupported.
pub const KNOWN_FLAGS: u8 = FLAG_AUTH | FLAG_ENCRYPT | FLAG_FROM_SUBSCRIBER | FLAG_SNAPSHOTS;
/// Bytes of the auth header: `key_id` and the sender's salt.
pub const AUTH_HEADER_LEN: usize = 4 + SALT_LEN;
/// Bytes of a sender's salt.
pub const SALT_LEN: usize = 16;
/// Bytes of the tag.
pub const TAG_LEN: usize = 16;
/// What sealing adds to a datagram.
pub const OVERHEAD: usize = AUTH_HEADER_LEN + TAG_LEN;
/// Offset of `flags` in the datagram header.
pub(crate) const FLAGS_AT: usize = 5;
/// The header and the auth header: the associated data of an encrypted
/// datagram.
pub(crate) const SEALED_HEAD: usize = HEADER_LEN + AUTH_HEADER_LEN;

/// Who sealed a datagram: part of the key derivation, so that one role's
/// datagram never opens as the other's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The publisher: deltas, snapshots, heartbeats, repairs.
    Publisher,
    /// A subscriber: NAKs and FragNaks.
    Subscriber,
}

impl Role {
    /// Its byte in the key derivation.
    #[must_use]
    pub fn byte(self) -> u8 {
        match self {
            Role::Publisher => 0,
            Role::Subscriber => 1,
        }
    }

    /// Its bit in `flags`.
    pub(crate) fn flag(self) -> u8 {
        match self {
            Role::Publisher => 0,
            Role::Subscriber => FLAG_FROM_SUBSCRIBER,
        }
    }
}

/// A sender's salt: 16 bytes from the operating system's random generator,
/// drawn at every start and never stored. Public (it travels in every
/// datagram); it makes each sender's key, and so its nonces, its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Salt(pub [u8; SALT_LEN]);

impl Salt {
    /// A fresh salt from the operating system's random generator.
    ///
    /// # Errors
    ///
    /// When the generator fails: a sender never falls back to a weaker
    /// source.
    pub fn random() -> Result<Self, aws_lc_rs::error::Unspecified> {
        let mut s = [0u8; SALT_LEN];
        aws_lc_rs::rand::fill(&mut s)?;
        Ok(Self(s))
    }
}

/// The nonce of a datagram: four zero bytes, then its `datagram_seq`.
pub(crate) fn nonce(datagram_seq: u64) -> Nonce {
    let mut n = [0u8; NONCE_LEN];
    if let Some(tail) = n.get_mut(4..) {
        tail.copy_from_slice(&datagram_seq.to_be_bytes());
    }
    Nonce::assume_unique_for_key(n)
}

/// Reads a big-endian `u64` at `at`, if the bytes are there.
pub(crate) fn be_u64(buf: &[u8], at: usize) -> Option<u64> {
    buf.get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
}

/// Reads a big-endian `u32` at `at`, if the bytes are there.
pub(crate) fn be_u32(buf: &[u8], at: usize) -> Option<u32> {
    buf.get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_be_bytes)
}

/// Why a datagram was not sealed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// Its `datagram_seq` was not above the last one sealed: sealing it
    /// would reuse a nonce.
    #[error("datagram_seq {0} is not above the last one sealed")]
    NonceReuse(u64),
    /// The buffer has no room for the auth header and tag, or the bytes
    /// given are not a datagram.
    #[error("no room to seal: a plain datagram of {len} bytes in a buffer of {room}")]
    NoRoom {
        /// The plain datagram's length.
        len: usize,
        /// The buffer's length.
        room: usize,
    },
}

/// Seals one sender's datagrams: its role, salt and derived key, and the
/// last `datagram_seq` it sealed, so that it never seals two datagrams
/// under one nonce.
pub struct Sealer {
    key: LessSafeKey,
    key_id: KeyId,
    salt: Salt,
    role: Role,
    encrypt: bool,
    last: Option<u64>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("key_id", &self.key_id)
            .field("role", &self.role)
            .field("encrypt", &self.encrypt)
            .field("last", &self.last)
            .finish_non_exhaustive()
    }
}

impl Sealer {
    /// A sealer under the keyring's first key.
    ///
    /// # Errors
    ///
    /// When the key cannot be derived (the crypto library failed).
    pub fn new(
        keyring: &Keyring,
        role: Role,
        stream: StreamId,
        salt: Salt,
        encrypt: bool,
    ) -> Result<Self, aws_lc_rs::error::Unspecified> {
        let first = keyring.sealing_key();
        Ok(Self {
            key: keyring.derive_with(first, role, stream, &salt)?,
            key_id: first.id(),
            salt,
            role,
            encrypt,
            last: None,
        })
    }

    /// Seals from now on under `keyring`'s first key (a rotation, without
    /// a restart). The salt and the last `datagram_seq` sealed stay: a
    /// new key is a new frame key, and `datagram_seq` still only grows.
    ///
    /// # Errors
    ///
    /// When the key cannot be derived; the sealer is unchanged then.
    pub fn rekey(
        &mut self,
        keyring: &Keyring,
        stream: StreamId,
    ) -> Result<(), aws_lc_rs::error::Unspecified> {
        let first = keyring.sealing_key();
        self.key = keyring.derive_with(first, self.role, stream, &self.salt)?;
        self.key_id = first.id();
        Ok(())
    }

    /// The id of the key it seals under.
    #[must_use]
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// The salt it seals with.
    #[must_use]
    pub fn salt(&self) -> Salt {
        self.salt
    }

    /// Whether it encrypts.
    #[must_use]
    pub fn encrypts(&self) -> bool {
        self.encrypt
    }

    /// Seals the plain datagram in `buf[..len]` in place and returns the
    /// sealed length, `len` + [`OVERHEAD`]: the messages move up by
    /// [`AUTH_HEADER_LEN`] to make room for the auth header, `flags` is
    /// set, the messages are encrypted if it encrypts, and the tag goes
    /// last.
    ///
    /// # Errors
    ///
    /// [`SealError::NonceReuse`] for a `datagram_seq` not above the last
    /// one sealed, [`SealError::NoRoom`] when `buf` cannot hold the sealed
    /// datagram. Nothing is sealed then.
    pub fn seal(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SealError> {
        let room = buf.len();
        let no_room = SealError::NoRoom { len, room };
        let sealed = len + OVERHEAD;
        if len < HEADER_LEN || sealed > room {
            return Err(no_room);
        }
        let seq = be_u64(buf, 20).ok_or(no_room)?;
        if self.last.is_some_and(|last| seq <= last) {
            return Err(SealError::NonceReuse(seq));
        }
        let mut flags = FLAG_AUTH | self.role.flag();
        if self.encrypt {
            flags |= FLAG_ENCRYPT;
        }
        if buf.get(..len).is_some_and(carries_snapshots) {
            flags |= FLAG_SNAPSHOTS;
        }
        buf.copy_within(HEADER_LEN..len, SEALED_HEAD);
        let auth = buf.get_mut(HEADER_LEN..SEALED_HEAD).ok_or(no_room)?;
        let (id, salt) = auth.split_at_mut(4);
        id.copy_from_slice(&self.key_id.0.to_be_bytes());
        salt.copy_from_slice(&self.salt.0);
        *buf.get_mut(FLAGS_AT).ok_or(no_room)? = flags;
        let body_end = len + AUTH_HEADER_LEN;
        let tag = if self.encrypt {
            let (head, rest) = buf.split_at_mut(SEALED_HEAD);
            let body = rest.get_mut(..body_end - SEALED_HEAD).ok_or(no_room)?;
            self.key
                .seal_in_place_separate_tag(nonce(seq), Aad::from(&*head), body)
        } else {
            // Authenticate only: everything before the tag is associated
            // data, and nothing is encrypted.
            let whole = buf.get(..body_end).ok_or(no_room)?;
            self.key
                .seal_in_place_separate_tag(nonce(seq), Aad::from(whole), &mut [])
        }
        .map_err(|_| no_room)?;
        buf.get_mut(body_end..sealed)
            .ok_or(no_room)?
            .copy_from_slice(tag.as_ref());
        self.last = Some(seq);
        Ok(sealed)
    }
}

/// The plain datagram inside an authenticated-only datagram, written into
/// `out`, **unverified**: for tools that hold no key (`grapevine tail`, a
/// relay's view) and must say so. Returns `false`, leaving `out` empty,
/// for a datagram that is not sealed, is encrypted, or is too short.
///
/// ```
/// use grapevine_core::auth::unverified_plain;
///
/// let mut out = Vec::new();
/// assert!(!unverified_plain(b"GRPV\x01\x00", &mut out));
/// assert!(out.is_empty());
/// ```
pub fn unverified_plain(sealed: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    let flags = sealed.get(FLAGS_AT).copied().unwrap_or(0);
    let authenticated_only = flags & (FLAG_AUTH | FLAG_ENCRYPT) == FLAG_AUTH;
    let (Some(head), Some(body)) = (
        sealed.get(..HEADER_LEN),
        sealed.get(SEALED_HEAD..sealed.len().saturating_sub(TAG_LEN)),
    ) else {
        return false;
    };
    if !authenticated_only || sealed.len() < HEADER_LEN + OVERHEAD {
        return false;
    }
    out.extend_from_slice(head);
    out.extend_from_slice(body);
    if let Some(f) = out.get_mut(FLAGS_AT) {
        *f = 0;
    }
    true
}
