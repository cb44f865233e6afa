//! Opening received datagrams: the receiver's checks in order, one replay
//! window per sender, and a bounded cache of derived keys.

use std::collections::HashMap;
use std::ops::Range;
use std::time::Instant;

use aws_lc_rs::aead::{Aad, LessSafeKey};

use super::frame::{
    be_u32, be_u64, nonce, Role, Salt, AUTH_HEADER_LEN, FLAGS_AT, FLAG_AUTH, FLAG_ENCRYPT,
    FLAG_FROM_SUBSCRIBER, KNOWN_FLAGS, OVERHEAD, SALT_LEN, SEALED_HEAD, TAG_LEN,
};
use super::keyring::Keyring;
use super::replay::{ReplayWindow, Verdict, WINDOW};
use super::KeyId;
use crate::wire::{check_header, DecodeError, HEADER_LEN};
use crate::StreamId;

/// New senders' keys derived per second at most, after a burst of
/// [`DERIVE_BURST`]: a flood of datagrams with made-up salts costs a
/// receiver at most this many key derivations a second.
pub const DERIVE_PER_SEC: u32 = 50_000;
/// Derivations allowed at once before [`DERIVE_PER_SEC`] applies.
pub const DERIVE_BURST: u32 = 1024;
/// How far one datagram may move its sender's replay window forward
/// (unless a second corroborates it): half the window, so that one
/// datagram ahead never makes the sender's next ones too old.
pub const MAX_JUMP: u64 = WINDOW / 2;

/// Why a received datagram was not opened: it is dropped and counted
/// under [`Refused::code`]. Nothing about the receiver changed, except
/// that [`Refused::DeriveLimited`] and [`Refused::BadTag`] may have spent
/// a derivation (bounded by [`DERIVE_PER_SEC`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refused {
    /// Not a datagram at all, or of an unknown version or flags.
    #[error("malformed: {0}")]
    Malformed(DecodeError),
    /// No auth header: the receiver requires one.
    #[error("unauthenticated datagram at a receiver that requires authentication")]
    Unauthenticated,
    /// Too short to hold the auth header and the tag.
    #[error("authenticated datagram of {0} bytes is too short for its auth header and tag")]
    ShortAuth(usize),
    /// Sealed by the other role than the one this receiver hears (a
    /// subscriber's NAK reflected to subscribers, or a publisher's
    /// datagram to the publisher).
    #[error("sealed by the wrong role")]
    WrongRole,
    /// Of another stream.
    #[error("of another stream")]
    ForeignStream,
    /// Sealed under a key this receiver does not hold.
    #[error("sealed under key {0}, which is not held")]
    UnknownKey(KeyId),
    /// Not encrypted, where encryption is required.
    #[error("not encrypted, and encryption is required")]
    PlaintextRefused,
    /// Its `datagram_seq` is too far below the sender's latest to tell.
    #[error("too old for the replay window")]
    TooOld,
    /// Already received.
    #[error("replayed")]
    Replayed,
    /// Beyond the sender's latest by more than the window may move at
    /// once, and not corroborated.
    #[error("too far ahead of the replay window")]
    TooFar,
    /// A new sender, and the derivation budget is spent.
    #[error("new sender and the key derivation budget is spent")]
    DeriveLimited,
    /// The tag did not verify: forged, modified, or sealed under another
    /// key with the same id.
    #[error("the tag did not verify")]
    BadTag,
}

impl Refused {
    /// A stable name for counting and metrics (PROTOCOL.md §11.4).
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Refused::Malformed(e) => e.code(),
            Refused::Unauthenticated => "unauthenticated",
            Refused::ShortAuth(_) => "short_auth",
            Refused::WrongRole => "wrong_role",
            Refused::ForeignStream => "foreign_stream",
            Refused::UnknownKey(_) => "unknown_key",
            Refused::PlaintextRefused => "plaintext_refused",
            Refused::TooOld => "too_old",
            Refused::Replayed => "replayed",
            Refused::TooFar => "too_far",
            Refused::DeriveLimited => "derive_limited",
            Refused::BadTag => "bad_tag",
        }
    }
}

/// A datagram that opened: the plain datagram (header with `flags` 0 and
/// messages, decrypted) now sits at `plain` in the buffer given to
/// [`Opener::open`], ready for [`crate::wire::Datagram::decode`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    /// Where the plain datagram is in the buffer.
    pub plain: Range<usize>,
    /// The sender's salt.
    pub salt: Salt,
    /// Whether it was encrypted.
    pub encrypted: bool,
}

/// What the header and auth header of a datagram say.
struct Frame {
    key_id: KeyId,
    salt: Salt,
    seq: u64,
    encrypted: bool,
}

struct Sender {
    /// The keys it sealed with, newest first: after a rotation the one
    /// before stays for its late datagrams.
    keys: Vec<(KeyId, LessSafeKey)>,
    window: ReplayWindow,
    used: u64,
}

impl Sender {
    fn key(&self, id: KeyId) -> Option<&LessSafeKey> {
        self.keys.iter().find(|(k, _)| *k == id).map(|(_, key)| key)
    }

    /// A key a datagram it sealed opened with, once the window accepted
    /// that datagram: current if the datagram is its newest, else kept
    /// behind the current one. Two keys at most.
    fn learn(&mut self, id: KeyId, key: LessSafeKey, newest: bool) {
        let at = if newest { 0 } else { self.keys.len().min(1) };
        self.keys.insert(at, (id, key));
        self.keys.truncate(2);
    }
}

/// Opens the datagrams one role seals for one stream: checks them in the
/// order of PROTOCOL.md §11.4, keeps a replay window per sender (salt),
/// derives a new sender's key at a bounded rate and caches it only once
/// its tag verified.
///
/// ```
/// use std::time::Instant;
/// use grapevine_core::auth::{Keyring, Opener, Role, Salt, Sealer, StreamKey};
/// use grapevine_core::wire::{Datagram, DatagramHeader, DatagramWriter, Heartbeat, Message};
/// use grapevine_core::{SeqNum, SessionId, StreamId};
///
/// let ring = Keyring::new(vec![StreamKey::from_bytes([7; 32])])?;
/// let mut sealer = Sealer::new(&ring, Role::Publisher, StreamId(1), Salt([1; 16]), true)?;
/// let mut opener = Opener::new(ring, Role::Publisher, StreamId(1), 16);
///
/// let header = DatagramHeader { stream: StreamId(1), session: SessionId(9), datagram_seq: 0 };
/// let hb = Message::Heartbeat(Heartbeat { last_seq: SeqNum(3), sent_at_micros: 0, interval_ms: 100 });
/// let mut buf = [0u8; 200];
/// let mut w = DatagramWriter::new(&mut buf, &header)?;
/// w.push(&hb)?;
/// let len = w.finish();
/// let sealed = sealer.seal(&mut buf, len)?;
///
/// let mut copy = buf;
/// let opened = opener.open(Instant::now(), &mut buf[..sealed])?;
/// let d = Datagram::decode(&buf[opened.plain])?;
/// assert_eq!(d.messages().next(), Some(hb));
/// // The same datagram again is a replay.
/// assert!(opener.open(Instant::now(), &mut copy[..sealed]).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Opener {
    keyring: Keyring,
    role: Role,
    stream: StreamId,
    require_encrypt: bool,
    senders: HashMap<Salt, Sender>,
    capacity: usize,
    pinned: Option<Salt>,
    uses: u64,
    tokens: u32,
    refilled: Option<Instant>,
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opener")
            .field("keyring", &self.keyring)
            .field("role", &self.role)
            .field("stream", &self.stream)
            .field("require_encrypt", &self.require_encrypt)
            .field("senders", &self.senders.len())
            .finish_non_exhaustive()
    }
}

impl Opener {
    /// Opens datagrams sealed by `role` for `stream`, remembering at most
    /// `capacity` senders (at least 1; the least recently heard is
    /// forgotten, never the pinned one).
    #[must_use]
    pub fn new(keyring: Keyring, role: Role, stream: StreamId, capacity: usize) -> Self {
        Self {
            keyring,
            role,
            stream,
            require_encrypt: false,
            senders: HashMap::new(),
            capacity: capacity.max(1),
            pinned: None,
            uses: 0,
            tokens: DERIVE_BURST,
            refilled: None,
        }
    }

    /// Refuse datagrams that are authenticated but not encrypted.
    pub fn require_encrypt(&mut self, on: bool) -> &mut Self {
        self.require_encrypt = on;
        self
    }

    /// Never forget this sender (the followed publisher session), so that
    /// its replay window survives any number of other senders.
    pub fn pin(&mut self, salt: Option<Salt>) {
        self.pinned = salt;
    }

    /// Number of senders remembered.
    #[must_use]
    pub fn senders(&self) -> usize {
        self.senders.len()
    }

    /// Checks and opens `buf` in place, then moves the window of its sender
    /// by at most [`MAX_JUMP`] (see [`ReplayWindow::accept`]).
    ///
    /// # Errors
    ///
    /// [`Refused`], checked in this order: malformed; unauthenticated;
    /// short; wrong role; foreign stream; unknown key; plaintext refused;
    /// too old or replayed (known senders); derivation limited (new
    /// senders, or a key a sender has not used yet); bad tag; too far.
    /// `buf` may then have been overwritten.
    pub fn open(&mut self, now: Instant, buf: &mut [u8]) -> Result<Opened, Refused> {
        let Frame {
            key_id,
            salt,
            seq,
            encrypted,
        } = self.inspect(buf)?;
        let len = buf.len();
        let has_key = match self.senders.get(&salt) {
            Some(s) => {
                match s.window.check(seq) {
                    Verdict::TooOld => return Err(Refused::TooOld),
                    Verdict::Replayed => return Err(Refused::Replayed),
                    Verdict::Fresh | Verdict::TooFar => {}
                }
                s.key(key_id).is_some()
            }
            None => false,
        };
        // A new sender, or a known one that rotated to another key.
        let derived = if has_key {
            None
        } else {
            Some(self.derive(now, key_id, &salt)?)
        };
        let key = match (&derived, self.senders.get(&salt)) {
            (Some(k), _) => k,
            (None, Some(s)) => s.key(key_id).ok_or(Refused::BadTag)?,
            (None, None) => return Err(Refused::BadTag),
        };
        open_in_place(key, seq, encrypted, buf)?;
        if !self.senders.contains_key(&salt) {
            self.make_room();
        }
        let sender = self.senders.entry(salt).or_insert_with(|| Sender {
            keys: Vec::new(),
            window: ReplayWindow::default(),
            used: 0,
        });
        match sender.window.accept(seq, MAX_JUMP) {
            Verdict::Fresh => {}
            Verdict::TooOld => return Err(Refused::TooOld),
            Verdict::Replayed => return Err(Refused::Replayed),
            Verdict::TooFar => return Err(Refused::TooFar),
        }
        // Only a datagram the window accepted changes the sender: its new
        // key becomes current if it is the newest datagram, else it is
        // kept as the previous one (a late datagram of a rotation).
        if let Some(key) = derived {
            sender.learn(key_id, key, sender.window.top() == Some(seq));
        }
        self.uses += 1;
        sender.used = self.uses;
        // The plain datagram: the header moved up against the messages,
        // its flags cleared, the tag cut off.
        buf.copy_within(..HEADER_LEN, AUTH_HEADER_LEN);
        if let Some(f) = buf.get_mut(AUTH_HEADER_LEN + FLAGS_AT) {
            *f = 0;
        }
        Ok(Opened {
            plain: AUTH_HEADER_LEN..len - TAG_LEN,
            salt,
            encrypted,
        })
    }

    /// A sender's key under `key_id`, if the derivation budget allows.
    fn derive(&mut self, now: Instant, key_id: KeyId, salt: &Salt) -> Result<LessSafeKey, Refused> {
        if !self.take_token(now) {
            return Err(Refused::DeriveLimited);
        }
        let key = self
            .keyring
            .get(key_id)
            .ok_or(Refused::UnknownKey(key_id))?;
        self.keyring
            .derive_with(key, self.role, self.stream, salt)
            .map_err(|_| Refused::BadTag)
    }

    /// Takes a new set of keys (a rotation, without a restart): what was
    /// derived from a key no longer held is forgotten, and every sender
    /// keeps its replay window (even one left with no key: a key given
    /// back later must not reopen what it accepted).
    pub fn set_keyring(&mut self, keyring: Keyring) {
        for s in self.senders.values_mut() {
            s.keys.retain(|(id, _)| keyring.get(*id).is_some());
        }
        self.keyring = keyring;
    }

    /// The checks of the header and auth header alone (PROTOCOL.md §11.4,
    /// steps 1 to 7), in order.
    fn inspect(&self, buf: &[u8]) -> Result<Frame, Refused> {
        let flags = check_header(buf).map_err(Refused::Malformed)?;
        if flags & !KNOWN_FLAGS != 0 || (flags != 0 && flags & FLAG_AUTH == 0) {
            return Err(Refused::Malformed(DecodeError::UnsupportedFlags { flags }));
        }
        if flags & FLAG_AUTH == 0 {
            return Err(Refused::Unauthenticated);
        }
        if buf.len() < HEADER_LEN + OVERHEAD {
            return Err(Refused::ShortAuth(buf.len()));
        }
        let from_subscriber = flags & FLAG_FROM_SUBSCRIBER != 0;
        if from_subscriber != (self.role == Role::Subscriber) {
            return Err(Refused::WrongRole);
        }
        if be_u32(buf, 8) != Some(self.stream.0) {
            return Err(Refused::ForeignStream);
        }
        let key_id = KeyId(be_u32(buf, HEADER_LEN).unwrap_or(0));
        if self.keyring.get(key_id).is_none() {
            return Err(Refused::UnknownKey(key_id));
        }
        let encrypted = flags & FLAG_ENCRYPT != 0;
        if self.require_encrypt && !encrypted {
            return Err(Refused::PlaintextRefused);
        }
        let mut salt = Salt([0; SALT_LEN]);
        if let Some(s) = buf.get(HEADER_LEN + 4..SEALED_HEAD) {
            salt.0.copy_from_slice(s);
        }
        Ok(Frame {
            key_id,
            salt,
            seq: be_u64(buf, 20).unwrap_or(0),
            encrypted,
        })
    }

    /// Forgets the least recently heard sender but the pinned one if the
    /// cache is full.
    fn make_room(&mut self) {
        if self.senders.len() < self.capacity {
            return;
        }
        let oldest = self
            .senders
            .iter()
            .filter(|(salt, _)| Some(**salt) != self.pinned)
            .min_by_key(|(_, s)| s.used)
            .map(|(salt, _)| *salt);
        if let Some(salt) = oldest {
            self.senders.remove(&salt);
        }
    }

    /// Spends one key derivation if the budget allows: a token bucket of
    /// [`DERIVE_BURST`] refilled at [`DERIVE_PER_SEC`].
    fn take_token(&mut self, now: Instant) -> bool {
        let last = *self.refilled.get_or_insert(now);
        let per = std::time::Duration::from_secs(1) / DERIVE_PER_SEC;
        let earned = now.saturating_duration_since(last).as_nanos() / per.as_nanos().max(1);
        let earned = u32::try_from(earned).unwrap_or(u32::MAX);
        self.tokens = self.tokens.saturating_add(earned).min(DERIVE_BURST);
        // What was earned is accounted for and the remainder carried; a
        // full bucket carries nothing.
        self.refilled = Some(if self.tokens == DERIVE_BURST {
            now
        } else {
            last + per * earned
        });
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// Verifies the tag of the sealed datagram `buf` under `key` and decrypts
/// its messages in place if they are encrypted.
fn open_in_place(
    key: &LessSafeKey,
    seq: u64,
    encrypted: bool,
    buf: &mut [u8],
) -> Result<(), Refused> {
    let len = buf.len();
    let mut tag = [0u8; TAG_LEN];
    tag.copy_from_slice(buf.get(len - TAG_LEN..).ok_or(Refused::BadTag)?);
    let opened = if encrypted {
        let mut head = [0u8; SEALED_HEAD];
        head.copy_from_slice(buf.get(..SEALED_HEAD).ok_or(Refused::BadTag)?);
        let body = buf
            .get_mut(SEALED_HEAD..len - TAG_LEN)
            .ok_or(Refused::BadTag)?;
        key.open_in_place_separate_tag(nonce(seq), Aad::from(head), &tag, body)
            .map(|_| ())
    } else {
        let aad = buf.get(..len - TAG_LEN).ok_or(Refused::BadTag)?;
        key.open_separate_gather(nonce(seq), Aad::from(aad), &[], &tag, &mut [])
    };
    opened.map_err(|_| Refused::BadTag)
}
