//! Authenticated, optionally encrypted datagrams (PROTOCOL.md §11).
//!
//! A stream's publisher and subscribers share one or more stream keys
//! ([`Keyring`]). Each sender (every publisher and subscriber start) draws
//! a random [`Salt`] and seals its datagrams under a key derived from the
//! stream key, its role, the stream and its salt ([`Sealer`]); a receiver
//! checks and opens them ([`Opener`]), keeping a replay window per sender.
//! The engines do both when their config holds a [`Security`].

mod frame;
mod key;
mod keyring;
mod opener;
mod replay;

pub use frame::{
    unverified_plain, Role, Salt, SealError, Sealer, AUTH_HEADER_LEN, FLAG_AUTH, FLAG_ENCRYPT,
    FLAG_FROM_SUBSCRIBER, FLAG_SNAPSHOTS, KNOWN_FLAGS, OVERHEAD, SALT_LEN, TAG_LEN,
};
pub use key::{KeyId, StreamKey, KEY_LEN};
pub use keyring::{Keyring, KeyringError};
pub use opener::{Opened, Opener, Refused, DERIVE_BURST, DERIVE_PER_SEC, MAX_JUMP};
pub use replay::{ReplayWindow, Verdict, WINDOW};

use crate::ConfigError;

/// How a publisher or subscriber seals what it sends and what it accepts:
/// its keys, whether it encrypts, whether it refuses datagrams that are
/// authenticated only.
///
/// ```
/// use grapevine_core::auth::{Keyring, Security, StreamKey};
/// use grapevine_core::publisher::PublisherConfig;
///
/// let ring = Keyring::new(vec![StreamKey::from_bytes([7; 32])])?;
/// let mut security = Security::new(ring);
/// security.encrypt(true);
/// let mut cfg = PublisherConfig::default();
/// cfg.security(Some(security));
/// assert!(cfg.validate().is_ok());
/// # Ok::<(), grapevine_core::auth::KeyringError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Security {
    pub(crate) keyring: Keyring,
    pub(crate) encrypt: bool,
    pub(crate) require_encrypt: bool,
}

impl Security {
    /// Authenticate with these keys (the first seals), without encrypting.
    #[must_use]
    pub fn new(keyring: Keyring) -> Self {
        Self {
            keyring,
            encrypt: false,
            require_encrypt: false,
        }
    }

    /// Encrypt the messages too (default: authenticate only, so that tools
    /// and relays without the key can read them).
    pub fn encrypt(&mut self, on: bool) -> &mut Self {
        self.encrypt = on;
        self
    }

    /// Refuse received datagrams that are not encrypted.
    pub fn require_encrypt(&mut self, on: bool) -> &mut Self {
        self.require_encrypt = on;
        self
    }

    /// The keys.
    #[must_use]
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// Whether it encrypts.
    #[must_use]
    pub fn encrypts(&self) -> bool {
        self.encrypt
    }

    /// The sealer of a sender in `role` on `stream`, with a fresh salt
    /// from the operating system (never a fixed one: two senders with one
    /// salt would reuse nonces).
    pub(crate) fn sealer(
        &self,
        role: Role,
        stream: crate::StreamId,
    ) -> Result<Sealer, ConfigError> {
        let salt = Salt::random().map_err(|_| ConfigError::Unavailable {
            what: "the operating system's random generator (for the sender's salt)",
        })?;
        Sealer::new(&self.keyring, role, stream, salt, self.encrypt).map_err(|_| {
            ConfigError::Unavailable {
                what: "the key derivation",
            }
        })
    }

    /// Takes a new set of keys into this config and into an engine's sealer
    /// and opener (PROTOCOL.md §11.3, rotation).
    pub(crate) fn rotate(
        &mut self,
        keyring: Keyring,
        stream: crate::StreamId,
        sealer: Option<&mut Sealer>,
        opener: Option<&mut Opener>,
    ) -> Result<(), ConfigError> {
        if let Some(s) = sealer {
            s.rekey(&keyring, stream)
                .map_err(|_| ConfigError::Unavailable {
                    what: "the key derivation",
                })?;
        }
        if let Some(o) = opener {
            o.set_keyring(keyring.clone());
        }
        self.keyring = keyring;
        Ok(())
    }

    /// The opener of datagrams sealed by `role` on `stream`.
    pub(crate) fn opener(&self, role: Role, stream: crate::StreamId, capacity: usize) -> Opener {
        let mut o = Opener::new(self.keyring.clone(), role, stream, capacity);
        o.require_encrypt(self.require_encrypt);
        o
    }
}

#[cfg(test)]
mod regressions;
#[cfg(test)]
mod tests;
