//! The keys a node holds for a stream, and the per-sender keys derived
//! from them.

use aws_lc_rs::aead::{LessSafeKey, UnboundKey, AES_256_GCM_SIV};
use aws_lc_rs::error::Unspecified;
use aws_lc_rs::hkdf::{Prk, Salt as HkdfSalt, HKDF_SHA256};
use zeroize::Zeroize;

use super::frame::{Role, Salt};
use super::{KeyId, StreamKey, KEY_LEN};
use crate::StreamId;

/// HKDF-Extract's salt for every stream key.
const EXTRACT_SALT: &[u8] = b"grapevine v1";
/// The start of HKDF-Expand's info for a sender's frame key.
const FRAME_INFO: &[u8] = b"grapevine v1 frame";

/// Why a set of keys cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyringError {
    /// No key at all.
    #[error("no key given: a keyring needs at least one (make one with `grapevine keygen`)")]
    Empty,
    /// Two different keys with one id: datagrams could not say which.
    #[error(
        "two different keys share the id {0}: remove one (make a new one with `grapevine keygen`)"
    )]
    DuplicateId(KeyId),
}

/// The keys a node holds for a stream: the first seals, every one opens.
/// A rotation adds the new key to every node's ring (second), then moves
/// it first, then removes the old one.
///
/// ```
/// use grapevine_core::auth::{Keyring, StreamKey};
///
/// let ring = Keyring::new(vec![StreamKey::from_bytes([1; 32]), StreamKey::from_bytes([2; 32])])?;
/// assert_eq!(ring.sealing_key().id(), StreamKey::from_bytes([1; 32]).id());
/// assert!(Keyring::new(vec![]).is_err());
/// # Ok::<(), grapevine_core::auth::KeyringError>(())
/// ```
#[derive(Clone)]
pub struct Keyring {
    first: StreamKey,
    rest: Vec<StreamKey>,
    /// HKDF-Extract of each key, in the order of `first` then `rest`:
    /// extracted once, so that deriving a sender's key is one expand.
    prks: Vec<Prk>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.keys()).finish()
    }
}

impl PartialEq for Keyring {
    fn eq(&self, other: &Self) -> bool {
        self.keys().eq(other.keys())
    }
}

impl Eq for Keyring {}

impl Keyring {
    /// A ring of these keys, the first sealing. The same key given twice
    /// is kept once.
    ///
    /// # Errors
    ///
    /// [`KeyringError`] for no key, or two keys with one id.
    pub fn new(keys: Vec<StreamKey>) -> Result<Self, KeyringError> {
        let mut ring: Vec<StreamKey> = Vec::with_capacity(keys.len());
        for k in keys {
            match ring.iter().find(|r| r.id() == k.id()) {
                Some(r) if r.expose_bytes() == k.expose_bytes() => {}
                Some(_) => return Err(KeyringError::DuplicateId(k.id())),
                None => ring.push(k),
            }
        }
        let prks = ring.iter().map(extract).collect();
        let mut ring = ring.into_iter();
        let first = ring.next().ok_or(KeyringError::Empty)?;
        Ok(Self {
            first,
            rest: ring.collect(),
            prks,
        })
    }

    /// The key that seals: the first.
    #[must_use]
    pub fn sealing_key(&self) -> &StreamKey {
        &self.first
    }

    /// The key with this id, if held.
    #[must_use]
    pub fn get(&self, id: KeyId) -> Option<&StreamKey> {
        self.keys().find(|k| k.id() == id)
    }

    /// The keys held, the sealing one first.
    pub fn keys(&self) -> impl Iterator<Item = &StreamKey> + '_ {
        std::iter::once(&self.first).chain(&self.rest)
    }

    /// One sender's frame key: HKDF-SHA256 with salt "grapevine v1" over
    /// the stream key, expanded with info "grapevine v1 frame" ‖ role ‖
    /// stream id (u32 BE) ‖ key id (u32 BE) ‖ the sender's salt, 32 bytes,
    /// as an AES-256-GCM-SIV key.
    pub(crate) fn derive_with(
        &self,
        key: &StreamKey,
        role: Role,
        stream: StreamId,
        salt: &Salt,
    ) -> Result<LessSafeKey, Unspecified> {
        let prk = self
            .keys()
            .position(|k| k.id() == key.id())
            .and_then(|i| self.prks.get(i))
            .ok_or(Unspecified)?;
        let mut bytes = expand(prk, key.id(), role, stream, salt)?;
        let unbound = UnboundKey::new(&AES_256_GCM_SIV, &bytes);
        bytes.zeroize();
        Ok(LessSafeKey::new(unbound?))
    }
}

/// HKDF-Extract of a stream key.
fn extract(key: &StreamKey) -> Prk {
    HkdfSalt::new(HKDF_SHA256, EXTRACT_SALT).extract(key.expose_bytes())
}

/// The 32 bytes of a sender's frame key (see [`Keyring::derive_with`]).
#[cfg(test)]
pub(crate) fn derive_bytes(
    key: &StreamKey,
    role: Role,
    stream: StreamId,
    salt: &Salt,
) -> Result<[u8; KEY_LEN], Unspecified> {
    expand(&extract(key), key.id(), role, stream, salt)
}

/// HKDF-Expand of a stream key's PRK into a sender's frame key.
fn expand(
    prk: &Prk,
    id: KeyId,
    role: Role,
    stream: StreamId,
    salt: &Salt,
) -> Result<[u8; KEY_LEN], Unspecified> {
    let role = [role.byte()];
    let stream = stream.0.to_be_bytes();
    let id = id.0.to_be_bytes();
    let info: [&[u8]; 5] = [FRAME_INFO, &role, &stream, &id, &salt.0];
    let mut out = [0u8; KEY_LEN];
    prk.expand(&info, OkmLen)?.fill(&mut out)?;
    Ok(out)
}

struct OkmLen;

impl aws_lc_rs::hkdf::KeyType for OkmLen {
    fn len(&self) -> usize {
        KEY_LEN
    }
}
