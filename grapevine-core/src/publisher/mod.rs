//! The publisher state machine: sequence stamping, per-leaf sequence numbers,
//! the paced snapshot cycle, heartbeats, and NAK repair from a bounded
//! history.
//!
//! # Driving it
//!
//! The publisher talks both ways: it sends to the group and takes NAKs from
//! subscribers ([`Publisher::handle_datagram`]). A driver loops: hand over
//! received datagrams, fire the timer when [`Publisher::poll_timeout`]
//! passes ([`Publisher::handle_timeout`], which takes the wall clock for
//! heartbeats), and send every [`Transmit`] that
//! [`Publisher::poll_transmit`] yields.
//!
//! ```
//! use std::collections::BTreeMap;
//! use std::time::{Duration, Instant};
//! use grapevine_core::publisher::{Publisher, PublisherConfig};
//! use grapevine_core::state::{MapDelta, State, Typed};
//! use grapevine_core::{Destination, SessionId};
//!
//! type Book = BTreeMap<u32, u64>;
//! let mut state = Typed::new(Book::new());
//! let now = Instant::now();
//! let mut publisher = Publisher::new(PublisherConfig::default(), SessionId(1), now)?;
//!
//! // Apply a change locally, then publish it.
//! let delta = MapDelta::Upsert(100, 5);
//! state.state_mut().apply(&delta);
//! let key = Typed::<Book>::encode_key(&Book::key_of(&delta));
//! let present = state.state().contains_key(&100);
//! publisher.publish(&key, &Typed::<Book>::encode_delta(&delta), present)?;
//!
//! // Fire due timers, then drain datagrams (send each to the group).
//! publisher.handle_timeout(now, 1_764_000_000_000_000);
//! let mut buf = vec![0u8; 1452];
//! let mut sent = 0;
//! while let Some(t) = publisher.poll_transmit(now, &state, 1, &mut buf) {
//!     assert_eq!(t.destination, Destination::Group);
//!     sent += t.size;
//! }
//! assert!(sent > 0);
//! assert!(publisher.poll_timeout().is_some());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Repair
//!
//! Every delta sent is kept in a history bounded in count and bytes
//! ([`PublisherConfig::history`]), and every fragmented message in a
//! history bounded in bytes ([`PublisherConfig::fragment_history_bytes`]).
//! A NAK (PROTOCOL.md §4.6) queues the sequence numbers it names that the
//! history still holds; a FragNak (§4.7) queues byte ranges of a fragmented
//! message. Queued repairs go out as Retransmit messages to the group, after
//! any live traffic, paced by a byte budget ([`PublisherConfig::repair_rate`]),
//! and a sequence number retransmitted within the hold-off
//! ([`PublisherConfig::repair_holdoff`]) is not sent again (many subscribers
//! missing the same delta cause one repair). NAKs of another stream or
//! session are counted and ignored. A NAK naming sequence numbers beyond the
//! latest makes the publisher send a heartbeat at once, so that a subscriber
//! misled by a forged sequence number re-anchors.

mod cycle;
mod history;
mod repair;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::{Keyring, Opener, Refused, Role, Sealer, Security, OVERHEAD};
use crate::schema::Schema;
use crate::state::LeafSource;
use crate::timer::{TimerId, Timers};
use crate::transmit::{Destination, Transmit};
use crate::wire::{
    check_key, fragment_capacity, Datagram, Decoded, Delta, EncodeError, FragNak, Fragment,
    Heartbeat, KindCounts, Message, MessageKind, Nak, Packer, StreamInfo, DEFAULT_MAX_DATAGRAM,
    HEADER_LEN, MESSAGE_HEADER_LEN, STREAM_INFO_FIXED,
};
use crate::{ConfigError, SeqNum, SessionId, StreamId};
use cycle::Cycler;
use history::{FragHistory, History, Lookup};
use repair::{Next, RepairQueue};

/// Subscribers whose replay windows a publisher with authentication on
/// keeps (512 bytes each); the least recently heard is forgotten.
const SUBSCRIBER_WINDOWS: usize = 1024;

/// How fast the snapshot cycle goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SnapshotRate {
    /// Leaf snapshots per second.
    LeavesPerSec(u32),
    /// Bytes per second of snapshot messages (message headers included,
    /// datagram headers not).
    BytesPerSec(u64),
}

/// Configuration of a [`Publisher`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublisherConfig {
    pub(crate) stream: StreamId,
    pub(crate) max_datagram: usize,
    pub(crate) snapshot_rate: SnapshotRate,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) min_cycle_interval: Duration,
    pub(crate) tail_heartbeat: Duration,
    pub(crate) history_count: usize,
    pub(crate) history_bytes: usize,
    pub(crate) fragment_history_bytes: usize,
    pub(crate) repair_rate: u64,
    pub(crate) repair_holdoff: Duration,
    pub(crate) max_queued_bytes: usize,
    pub(crate) security: Option<Security>,
    pub(crate) schema: Option<Schema>,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        Self {
            stream: StreamId(1),
            max_datagram: DEFAULT_MAX_DATAGRAM,
            snapshot_rate: SnapshotRate::LeavesPerSec(100_000),
            heartbeat_interval: Duration::from_millis(100),
            min_cycle_interval: Duration::from_millis(100),
            tail_heartbeat: Duration::from_millis(5),
            history_count: 65_536,
            history_bytes: 16 << 20,
            fragment_history_bytes: 16 << 20,
            repair_rate: 16_000_000,
            repair_holdoff: Duration::from_millis(10),
            max_queued_bytes: 4 << 20,
            security: None,
            schema: None,
        }
    }
}

impl PublisherConfig {
    /// The stream id (default 1).
    pub fn stream(&mut self, stream: StreamId) -> &mut Self {
        self.stream = stream;
        self
    }

    /// The stream id.
    #[must_use]
    pub fn stream_id(&self) -> StreamId {
        self.stream
    }

    /// Maximum datagram size in bytes (default 1452: fits a 1500-byte MTU
    /// over IPv4 and IPv6).
    pub fn max_datagram(&mut self, bytes: usize) -> &mut Self {
        self.max_datagram = bytes;
        self
    }

    /// Seal every datagram (PROTOCOL.md §11) and open the NAKs received
    /// with these keys, refusing any that do not open (default: none, plain
    /// datagrams). Sealing costs [`OVERHEAD`] bytes of every datagram.
    pub fn security(&mut self, security: Option<Security>) -> &mut Self {
        self.security = security;
        self
    }

    /// The security settings, if any.
    #[must_use]
    pub fn security_settings(&self) -> Option<&Security> {
        self.security.as_ref()
    }

    /// The largest plain datagram: the maximum datagram size less what
    /// sealing adds.
    pub(crate) fn plain_datagram(&self) -> usize {
        let overhead = if self.security.is_some() { OVERHEAD } else { 0 };
        self.max_datagram.saturating_sub(overhead)
    }

    /// Snapshot cycle rate (default 100,000 leaves per second).
    pub fn snapshot_rate(&mut self, rate: SnapshotRate) -> &mut Self {
        self.snapshot_rate = rate;
        self
    }

    /// Interval between heartbeats (default 100 ms).
    pub fn heartbeat_interval(&mut self, interval: Duration) -> &mut Self {
        self.heartbeat_interval = interval;
        self
    }

    /// Shortest time between the starts of two cycles, so that a small state
    /// is not cycled in a busy loop (default 100 ms).
    pub fn min_cycle_interval(&mut self, interval: Duration) -> &mut Self {
        self.min_cycle_interval = interval;
        self
    }

    /// How long after the last delta of a burst a heartbeat goes out, so
    /// that subscribers that lost the burst's tail learn of it at once
    /// (default 5 ms; zero sends it with the next datagram poll; never later
    /// than the heartbeat interval).
    pub fn tail_heartbeat(&mut self, delay: Duration) -> &mut Self {
        self.tail_heartbeat = delay;
        self
    }

    /// Bounds of the history of sent deltas that NAKs are answered from:
    /// at most `count` deltas and `bytes` bytes (default 65,536 deltas and
    /// 16 MiB; a count of 0 disables NAK repair of deltas).
    pub fn history(&mut self, count: usize, bytes: usize) -> &mut Self {
        self.history_count = count;
        self.history_bytes = bytes;
        self
    }

    /// Bytes of recent fragmented messages kept to resend missing fragments
    /// (default 16 MiB; 0 disables fragment repair).
    pub fn fragment_history_bytes(&mut self, bytes: usize) -> &mut Self {
        self.fragment_history_bytes = bytes;
        self
    }

    /// Most bytes per second of repairs (default 16,000,000): whatever
    /// subscribers ask, repairs never exceed it, and live deltas always go
    /// first.
    pub fn repair_rate(&mut self, bytes_per_sec: u64) -> &mut Self {
        self.repair_rate = bytes_per_sec;
        self
    }

    /// A delta retransmitted less than this long ago is not retransmitted
    /// again (default 10 ms): NAKs from several subscribers for the same
    /// loss cause one repair.
    pub fn repair_holdoff(&mut self, holdoff: Duration) -> &mut Self {
        self.repair_holdoff = holdoff;
        self
    }

    /// Most bytes of finished datagrams that wait for the driver to send
    /// them (default 4 MiB). A publisher that outruns its socket sheds the
    /// oldest waiting datagrams beyond this bound, counted in
    /// [`PublisherStats::datagrams_shed`]: its memory stays bounded whatever
    /// the offered rate, and subscribers repair what was shed as any loss
    /// (by NAK from the history, else from snapshots). Applications that
    /// would rather wait watch [`Publisher::queued_bytes`] (back-pressure).
    pub fn max_queued_bytes(&mut self, bytes: usize) -> &mut Self {
        self.max_queued_bytes = bytes;
        self
    }

    /// The schema of the state published (default none). With one, every
    /// Heartbeat is followed, in the same datagram, by a StreamInfo
    /// message carrying its fingerprint and name (PROTOCOL.md §4.8), so
    /// that a subscriber expecting another type reports it. The name sent
    /// is cut, at a character boundary, to what fits in one datagram
    /// beside the Heartbeat (255 bytes at most); the fingerprint is always
    /// that of the whole schema.
    pub fn schema(&mut self, schema: Schema) -> &mut Self {
        self.schema = Some(schema);
        self
    }

    /// The schema set by [`PublisherConfig::schema`].
    #[must_use]
    pub fn schema_info(&self) -> Option<&Schema> {
        self.schema.as_ref()
    }

    /// The bound set by [`PublisherConfig::max_queued_bytes`].
    #[must_use]
    pub fn queued_bytes_limit(&self) -> usize {
        self.max_queued_bytes
    }

    /// The maximum datagram size: the buffer a driver needs per segment for
    /// [`Publisher::poll_transmit`].
    #[must_use]
    pub fn max_datagram_size(&self) -> usize {
        self.max_datagram
    }

    /// Checks the values.
    ///
    /// # Errors
    ///
    /// [`ConfigError::OutOfRange`] naming the first bad value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(HEADER_LEN + 64..=65_507).contains(&self.max_datagram) {
            return Err(ConfigError::out_of_range(
                "max_datagram",
                self.max_datagram,
                "use 92 ..= 65507 bytes; 1452 fits a 1500-byte MTU",
            ));
        }
        if self.plain_datagram() < HEADER_LEN + 64 {
            return Err(ConfigError::out_of_range(
                "max_datagram",
                self.max_datagram,
                "use at least 128 bytes with authentication (it adds 36)",
            ));
        }
        match self.snapshot_rate {
            SnapshotRate::LeavesPerSec(0) | SnapshotRate::BytesPerSec(0) => {
                return Err(ConfigError::out_of_range(
                    "snapshot_rate",
                    0,
                    "use a positive rate, e.g. 100000 leaves/s",
                ))
            }
            _ => {}
        }
        if self.min_cycle_interval > Duration::from_secs(3600) {
            return Err(ConfigError::out_of_range(
                "min_cycle_interval",
                format!("{:?}", self.min_cycle_interval),
                "use at most 1 h, e.g. 100 ms",
            ));
        }
        if self.heartbeat_interval < Duration::from_millis(1)
            || self.heartbeat_interval > Duration::from_secs(3600)
        {
            return Err(ConfigError::out_of_range(
                "heartbeat_interval",
                format!("{:?}", self.heartbeat_interval),
                "use 1 ms ..= 1 h, e.g. 100 ms",
            ));
        }
        if self.tail_heartbeat > Duration::from_secs(3600) {
            return Err(ConfigError::out_of_range(
                "tail_heartbeat",
                format!("{:?}", self.tail_heartbeat),
                "use at most 1 h, e.g. 5 ms",
            ));
        }
        if self.history_bytes > 1 << 40 || self.fragment_history_bytes > 1 << 40 {
            return Err(ConfigError::out_of_range(
                "history bytes",
                self.history_bytes.max(self.fragment_history_bytes),
                "use at most 1 TiB, e.g. 16 MiB",
            ));
        }
        if self.repair_rate == 0 || self.repair_rate > 1 << 40 {
            return Err(ConfigError::out_of_range(
                "repair_rate",
                self.repair_rate,
                "use 1 ..= 2^40 bytes/s, e.g. 16000000",
            ));
        }
        if !(self.max_datagram..=1 << 40).contains(&self.max_queued_bytes) {
            return Err(ConfigError::out_of_range(
                "max_queued_bytes",
                self.max_queued_bytes,
                "use at least max_datagram and at most 1 TiB, e.g. 4 MiB",
            ));
        }
        if self.repair_holdoff > Duration::from_secs(60) {
            return Err(ConfigError::out_of_range(
                "repair_holdoff",
                format!("{:?}", self.repair_holdoff),
                "use at most 60 s, e.g. 10 ms",
            ));
        }
        Ok(())
    }
}

/// Why a delta could not be published.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The encoded key exceeds 65,535 bytes.
    #[error("key of {len} bytes exceeds the 65535-byte limit")]
    KeyTooLong {
        /// Key length.
        len: usize,
    },
    /// The session has used every sequence number; start a new publisher.
    #[error("sequence numbers exhausted; restart the publisher with a new session")]
    SeqExhausted,
    /// `track_leaf` after the first delta: publish the new leaf as a delta.
    #[error(
        "initial leaves must be declared before the first delta; publish later leaves as deltas"
    )]
    TrackAfterPublish,
    /// The delta could not be encoded.
    #[error("delta could not be encoded: {0}")]
    Encode(#[from] EncodeError),
}

/// Counters of a [`Publisher`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PublisherStats {
    /// Messages written into datagrams and their bytes, by kind (each piece
    /// of a fragmented message counts as a fragment).
    pub messages: KindCounts,
    /// Deltas published.
    pub deltas: u64,
    /// Leaf snapshots sent (tombstones included).
    pub snapshots: u64,
    /// Tombstones sent.
    pub tombstones: u64,
    /// Snapshot cycles completed.
    pub cycles: u64,
    /// Heartbeats sent.
    pub heartbeats: u64,
    /// Heartbeats sent at once in answer to a NAK for sequence numbers not
    /// sent yet (included in `heartbeats`).
    pub future_nak_heartbeats: u64,
    /// Datagrams handed out by `poll_transmit`.
    pub datagrams: u64,
    /// Bytes handed out by `poll_transmit`.
    pub bytes: u64,
    /// Bytes of snapshot and cycle messages (message headers included).
    pub snapshot_bytes: u64,
    /// Leaves that could not be encoded into a snapshot message.
    pub unencodable: u64,
    /// Datagrams received (NAKs and anything else sent to the publisher).
    pub datagrams_received: u64,
    /// Received datagrams dropped as malformed.
    pub malformed_received: u64,
    /// Received datagrams of another stream.
    pub foreign_received: u64,
    /// NAKs (and FragNaks) for another session, ignored.
    pub other_session_naks: u64,
    /// Received messages of a kind a publisher does not take (ignored).
    pub unexpected_messages: u64,
    /// NAK messages received for this session.
    pub naks_received: u64,
    /// Distinct sequence numbers that NAKs asked for and the history held.
    pub nak_seqs_requested: u64,
    /// Sequence numbers asked for that the history no longer held (or not
    /// yet: beyond the latest), left to snapshot repair.
    pub nak_seqs_unavailable: u64,
    /// NAK ranges dropped because too many were queued.
    pub nak_ranges_dropped: u64,
    /// Deltas retransmitted.
    pub retransmits: u64,
    /// Finished datagrams dropped unsent because more than
    /// [`PublisherConfig::max_queued_bytes`] waited for the socket.
    pub datagrams_shed: u64,
    /// Bytes of the datagrams shed.
    pub bytes_shed: u64,
    /// Requests for a delta retransmitted within the hold-off (coalesced).
    pub repairs_coalesced: u64,
    /// Bytes of repair messages (retransmits and fragments resent).
    pub repair_bytes: u64,
    /// FragNak messages received for this session.
    pub frag_naks_received: u64,
    /// Fragments resent in answer to FragNaks.
    pub fragments_resent: u64,
    /// Fragment requests for messages no longer held.
    pub frag_unavailable: u64,
    /// Received datagrams refused by authentication (PROTOCOL.md §11.4):
    /// unauthenticated, forged, replayed, of the wrong role or key.
    pub auth_refused: u64,
    /// Of `auth_refused`: the tag did not verify.
    pub auth_bad_tag: u64,
    /// Of `auth_refused`: replayed, or too old to tell.
    pub auth_replayed: u64,
    /// Datagrams not sent because sealing refused them (a `datagram_seq`
    /// that would have reused a nonce; never expected).
    pub seal_refused: u64,
}

type Key = Arc<[u8]>;

#[derive(Clone, Copy, Debug)]
enum Timer {
    /// The periodic heartbeat.
    Heartbeat,
    /// A heartbeat after a burst goes quiet, or in answer to a NAK for
    /// sequence numbers not sent yet.
    Prompt,
    /// The snapshot budget allows the next datagram of the cycle.
    Snapshot,
    /// The repair budget allows the next repair.
    Repair,
}

impl TimerId for Timer {
    const COUNT: usize = 4;
    fn index(self) -> usize {
        self as usize
    }
}

/// The publisher state machine; see the [module docs](self).
pub struct Publisher {
    cfg: PublisherConfig,
    session: SessionId,
    last_seq: SeqNum,
    /// `leaf_seq` of every present leaf.
    leaves: BTreeMap<Key, SeqNum>,
    packer: Packer,
    cycler: Cycler,
    history: History,
    frags: FragHistory,
    repairs: RepairQueue,
    timers: Timers<Timer>,
    /// Deltas were published since the last heartbeat.
    unannounced: bool,
    /// Deltas were published since the last `poll_transmit`.
    fresh: bool,
    /// When a NAK last prompted a heartbeat.
    last_prompt: Option<Instant>,
    body_buf: Vec<u8>,
    stats: PublisherStats,
    /// Seals what is sent, with authentication on.
    sealer: Option<Sealer>,
    /// Opens the NAKs received, with authentication on.
    opener: Option<Opener>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("session", &self.session)
            .field("last_seq", &self.last_seq)
            .field("leaves", &self.leaves.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// A publisher for session `session` (draw it at random per start, or from
    /// a seed in tests), starting at `now`.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] if the configuration is invalid.
    pub fn new(
        cfg: PublisherConfig,
        session: SessionId,
        now: Instant,
    ) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let mut timers = Timers::default();
        timers.set(Timer::Heartbeat, now);
        let sealer = match &cfg.security {
            Some(s) => Some(s.sealer(Role::Publisher, cfg.stream)?),
            None => None,
        };
        let opener = cfg
            .security
            .as_ref()
            .map(|s| s.opener(Role::Subscriber, cfg.stream, SUBSCRIBER_WINDOWS));
        let mut packer = Packer::new(cfg.stream, session, cfg.plain_datagram());
        packer.keep_fragmented(cfg.fragment_history_bytes > 0);
        Ok(Self {
            packer,
            cycler: Cycler::new(now),
            history: History::new(cfg.history_count, cfg.history_bytes),
            frags: FragHistory::new(cfg.fragment_history_bytes),
            repairs: RepairQueue::new(now, cfg.repair_rate, cfg.max_datagram),
            cfg,
            session,
            last_seq: SeqNum::NONE,
            leaves: BTreeMap::new(),
            timers,
            unannounced: false,
            fresh: false,
            last_prompt: None,
            body_buf: Vec::new(),
            stats: PublisherStats::default(),
            sealer,
            opener,
        })
    }

    /// Seals and opens with these keys from now on (the first seals): a
    /// key rotation without a restart (PROTOCOL.md §11.3). Subscribers'
    /// replay windows are kept.
    ///
    /// # Errors
    ///
    /// [`ConfigError::NotAuthenticated`] if it was started without keys.
    pub fn set_keys(&mut self, keyring: Keyring) -> Result<(), ConfigError> {
        let stream = self.cfg.stream;
        let security = self
            .cfg
            .security
            .as_mut()
            .ok_or(ConfigError::NotAuthenticated)?;
        security.rotate(keyring, stream, self.sealer.as_mut(), self.opener.as_mut())
    }

    /// The session id.
    #[must_use]
    pub fn session(&self) -> SessionId {
        self.session
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &PublisherConfig {
        &self.cfg
    }

    /// The latest sequence number stamped ([`SeqNum::NONE`] before the first).
    #[must_use]
    pub fn last_seq(&self) -> SeqNum {
        self.last_seq
    }

    /// Number of present leaves.
    #[must_use]
    pub fn leaf_count(&self) -> usize {
        self.leaves.len()
    }

    /// The counters.
    #[must_use]
    pub fn stats(&self) -> PublisherStats {
        PublisherStats {
            messages: *self.packer.counts(),
            ..self.stats
        }
    }

    /// Deltas and bytes held by the repair history, and bytes of
    /// fragmented messages held for fragment repair.
    #[must_use]
    pub fn history_usage(&self) -> (usize, usize, usize) {
        (self.history.len(), self.history.bytes(), self.frags.bytes())
    }

    /// Declares a leaf that exists before any delta (the initial state). It
    /// is sent in snapshots with `leaf_seq` 0.
    ///
    /// # Errors
    ///
    /// [`PublishError::TrackAfterPublish`] once a delta has been published:
    /// a leaf that appears later is a change, and must be published as a
    /// delta so that subscribers can order it.
    pub fn track_leaf(&mut self, key: &[u8]) -> Result<(), PublishError> {
        if self.last_seq != SeqNum::NONE {
            return Err(PublishError::TrackAfterPublish);
        }
        if check_key(key).is_err() {
            return Err(PublishError::KeyTooLong { len: key.len() });
        }
        if !self.leaves.contains_key(key) {
            let key: Key = Arc::from(key);
            self.cycler.created(&key);
            self.leaves.insert(key, SeqNum::NONE);
        }
        Ok(())
    }

    /// Publishes one delta that the application has already applied to its
    /// state: stamps the next sequence number, records the leaf's sequence
    /// number, keeps the delta in the repair history and queues it for
    /// sending. `present_after` says whether the leaf exists after the delta
    /// (false for a removal: the delta carries the REMOVES flag).
    ///
    /// Call [`Publisher::poll_transmit`] afterwards (after a batch of
    /// publishes, to pack them together) to get the datagrams.
    ///
    /// # Errors
    ///
    /// [`PublishError`] if the key is too long or sequence numbers are
    /// exhausted; nothing is published then.
    pub fn publish(
        &mut self,
        key: &[u8],
        payload: &[u8],
        present_after: bool,
    ) -> Result<SeqNum, PublishError> {
        if check_key(key).is_err() {
            return Err(PublishError::KeyTooLong { len: key.len() });
        }
        let seq = self.last_seq.next().ok_or(PublishError::SeqExhausted)?;
        // One lookup for the common case, a leaf that exists and stays.
        let slot = self.leaves.get_mut(key);
        let prev = slot.as_deref().copied();
        let msg = Message::Delta(Delta {
            seq,
            prev_leaf_seq: prev.unwrap_or(SeqNum::NONE),
            creates: prev.is_none(),
            removes: !present_after,
            key,
            payload,
        });
        msg.encode_body(&mut self.body_buf)?;
        self.packer.push(&msg)?;
        if let (Some(s), true) = (slot, present_after) {
            *s = seq;
        } else if present_after {
            let key: Key = Arc::from(key);
            self.cycler.created(&key);
            self.leaves.insert(key, seq);
        } else if let Some((key, _)) = self.leaves.remove_entry(key) {
            self.cycler.removed(&key);
        }
        self.record_fragmented();
        self.history.push(seq, &self.body_buf);
        self.last_seq = seq;
        self.stats.deltas += 1;
        self.unannounced = true;
        self.fresh = true;
        self.shed_excess();
        Ok(seq)
    }

    /// Drops the oldest finished datagrams while more than the configured
    /// bound wait to be sent.
    fn shed_excess(&mut self) {
        while self.packer.ready_bytes() > self.cfg.max_queued_bytes {
            let Some(len) = self.packer.shed_oldest() else {
                break;
            };
            self.stats.datagrams_shed += 1;
            self.stats.bytes_shed += len as u64;
        }
    }

    /// Bytes of finished datagrams waiting for
    /// [`Publisher::poll_transmit`]: a driver's backlog. Never more than
    /// [`PublisherConfig::max_queued_bytes`] after a publish.
    #[must_use]
    pub fn queued_bytes(&self) -> usize {
        self.packer.ready_bytes()
    }

    fn record_fragmented(&mut self) {
        for (id, kind, body) in self.packer.drain_fragmented() {
            self.frags.push(id, kind, body);
        }
    }

    /// Handles one datagram received from `remote` (a subscriber's NAK).
    /// Anything malformed, of another stream or session, or of a kind a
    /// publisher does not take is counted and ignored; nothing here panics
    /// on any input. The buffer is `&mut` so that authenticated frames can
    /// later be opened in place.
    pub fn handle_datagram(&mut self, now: Instant, remote: SocketAddr, datagram: &mut [u8]) {
        let _ = remote;
        self.stats.datagrams_received += 1;
        let datagram = match self.opener.as_mut() {
            None => &*datagram,
            Some(opener) => match opener.open(now, datagram) {
                Ok(o) => match datagram.get(o.plain) {
                    Some(plain) => plain,
                    None => return,
                },
                Err(Refused::Malformed(_)) => {
                    self.stats.malformed_received += 1;
                    return;
                }
                Err(e) => {
                    self.stats.auth_refused += 1;
                    match e {
                        Refused::BadTag => self.stats.auth_bad_tag += 1,
                        Refused::Replayed | Refused::TooOld => self.stats.auth_replayed += 1,
                        _ => {}
                    }
                    return;
                }
            },
        };
        let mut decoded = Decoded::new();
        let d = match Datagram::decode_into(datagram, &mut decoded) {
            Ok(d) => d,
            Err(_) => {
                self.stats.malformed_received += 1;
                return;
            }
        };
        let h = d.header();
        if h.stream != self.cfg.stream {
            self.stats.foreign_received += 1;
            return;
        }
        if h.session != self.session {
            self.stats.other_session_naks += 1;
            return;
        }
        for msg in decoded.iter() {
            match msg {
                Message::Nak(n) => self.on_nak(now, &n),
                Message::FragNak(n) => self.on_frag_nak(&n),
                _ => self.stats.unexpected_messages += 1,
            }
        }
        self.arm_repair();
    }

    fn on_nak(&mut self, now: Instant, nak: &Nak<'_>) {
        self.stats.naks_received += 1;
        let oldest = self.history.first_seq().map_or(u64::MAX, |s| s.0);
        for r in nak.ranges.iter() {
            let (first, last) = (r.first.0, r.last.0);
            // Beyond the latest: never sent. Answer with a heartbeat so the
            // subscriber learns where the stream really is.
            if last > self.last_seq.0 {
                let ahead = last - first.max(self.last_seq.0 + 1) + 1;
                self.stats.nak_seqs_unavailable =
                    self.stats.nak_seqs_unavailable.saturating_add(ahead);
                self.prompt_heartbeat(now);
            }
            // Older than the history: gone.
            let hi = last.min(self.last_seq.0);
            let lo = first.max(oldest);
            let gone = lo.min(hi.saturating_add(1)).saturating_sub(first);
            self.stats.nak_seqs_unavailable = self.stats.nak_seqs_unavailable.saturating_add(gone);
            if lo <= hi && !self.repairs.add_seqs(lo, hi) {
                self.stats.nak_ranges_dropped += 1;
            }
        }
    }

    fn on_frag_nak(&mut self, nak: &FragNak<'_>) {
        self.stats.frag_naks_received += 1;
        let Some((_, body)) = self.frags.get(nak.frag_id) else {
            self.stats.frag_unavailable += 1;
            return;
        };
        let total = u32::try_from(body.len()).unwrap_or(u32::MAX);
        for (start, end) in nak.ranges.iter() {
            let end = end.min(total);
            if start < end && !self.repairs.add_fragment(nak.frag_id, start, end) {
                self.stats.nak_ranges_dropped += 1;
            }
        }
    }

    fn prompt_heartbeat(&mut self, now: Instant) {
        // At most one prompt per millisecond: a NAK flood cannot turn into
        // a heartbeat flood to the whole group.
        let spaced = self
            .last_prompt
            .is_none_or(|t| now >= t + Duration::from_millis(1));
        if self.timers.get(Timer::Prompt).is_none() && spaced {
            self.stats.future_nak_heartbeats += 1;
            self.last_prompt = Some(now);
            self.timers.set(Timer::Prompt, now);
        }
    }

    fn arm_repair(&mut self) {
        self.timers.set_opt(Timer::Repair, self.repairs.ready_at());
    }

    /// When [`Publisher::handle_timeout`] or [`Publisher::poll_transmit`]
    /// must be called next, if nothing else happens: the next heartbeat, or
    /// the time a budget allows the next snapshot or repair datagram.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// Fires the timers due at `now`: queues a heartbeat stamped with
    /// `wall_micros` (the wall clock, microseconds since the Unix epoch)
    /// when one is due. Then call [`Publisher::poll_transmit`].
    pub fn handle_timeout(&mut self, now: Instant, wall_micros: u64) {
        if self.timers.is_due(Timer::Heartbeat, now) || self.timers.is_due(Timer::Prompt, now) {
            self.queue_heartbeat(now, wall_micros);
        }
    }

    fn queue_heartbeat(&mut self, now: Instant, wall_micros: u64) {
        let hb = Heartbeat {
            last_seq: self.last_seq,
            sent_at_micros: wall_micros,
            interval_ms: u32::try_from(self.cfg.heartbeat_interval.as_millis()).unwrap_or(u32::MAX),
        };
        let info = Self::stream_info(&self.cfg, self.max_unfragmented_body());
        if let Some(info) = &info {
            // The StreamInfo goes in the heartbeat's datagram: both fit in
            // an empty one (`stream_info` cuts the name to make sure).
            let both = Message::Heartbeat(hb).encoded_len() + info.encoded_len();
            if both > self.packer.remaining() {
                self.packer.flush();
            }
        }
        // A heartbeat always fits in an empty datagram.
        let _ = self.packer.push(&Message::Heartbeat(hb));
        if let Some(info) = &info {
            let _ = self.packer.push(info);
        }
        self.stats.heartbeats += 1;
        self.unannounced = false;
        self.timers
            .set(Timer::Heartbeat, now + self.cfg.heartbeat_interval);
        self.timers.stop(Timer::Prompt);
    }

    /// Writes what is due at `now` into `buf` and says where to send it, or
    /// returns `None` when nothing is due. Call it until it returns `None`,
    /// after publishing, after [`Publisher::handle_datagram`] and after
    /// [`Publisher::handle_timeout`]. `source` provides the leaves for the
    /// snapshot cycle.
    ///
    /// Up to `max_segments` datagrams (at least one) are written back to
    /// back, each padded to the size of the first (see [`Transmit`]): `buf`
    /// must hold `max_segments` times the maximum datagram size. Live deltas
    /// and heartbeats go first, then repairs within their budget, then
    /// snapshots within theirs.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        source: &(impl LeafSource + ?Sized),
        max_segments: usize,
        buf: &mut [u8],
    ) -> Option<Transmit> {
        self.note_fresh(now);
        let max_segments = max_segments.max(1);
        loop {
            self.packer.flush();
            if self.packer.ready_count() >= max_segments {
                break;
            }
            if self.fill_repairs(now) {
                continue;
            }
            let filled = self.cycler.fill(
                now,
                cycle::Ctx {
                    cfg: &self.cfg,
                    leaves: &self.leaves,
                    last_seq: self.last_seq,
                    source,
                    packer: &mut self.packer,
                    stats: &mut self.stats,
                },
            );
            self.record_fragmented();
            if !filled {
                break;
            }
        }
        if !self.unannounced && self.timers.get(Timer::Prompt).is_some_and(|t| t > now) {
            // Nothing new since the last heartbeat: no tail heartbeat needed.
            self.timers.stop(Timer::Prompt);
        }
        self.timers
            .set(Timer::Snapshot, self.cycler.ready_at(&self.cfg));
        self.arm_repair();
        self.pop_batch(max_segments, buf)
    }

    /// As [`Publisher::poll_transmit`], but hands out only what is already
    /// queued (deltas and heartbeats, and any datagram the snapshot cycle
    /// had started): it never reads the state for snapshots nor queues
    /// repairs. For sending live deltas at once from the publishing thread,
    /// leaving the snapshot cycle and repairs to the driver's own calls to
    /// `poll_transmit`.
    pub fn poll_live_transmit(
        &mut self,
        now: Instant,
        max_segments: usize,
        buf: &mut [u8],
    ) -> Option<Transmit> {
        self.note_fresh(now);
        self.packer.flush();
        self.pop_batch(max_segments.max(1), buf)
    }

    /// After deltas were published: (re-)arms the heartbeat that follows a
    /// burst once it goes quiet.
    fn note_fresh(&mut self, now: Instant) {
        if self.fresh {
            self.fresh = false;
            let quiet = now + self.cfg.tail_heartbeat.min(self.cfg.heartbeat_interval);
            if self.timers.get(Timer::Prompt).is_none_or(|t| t > now) {
                // Re-armed by every burst: fires once the deltas pause.
                self.timers.set(Timer::Prompt, quiet);
            }
        }
    }

    /// Copies up to `max_segments` finished datagrams into `buf`, each but
    /// the last padded to the size of the first, and seals each (after its
    /// padding: the padding is part of what the tag covers) when
    /// authentication is on.
    fn pop_batch(&mut self, max_segments: usize, buf: &mut [u8]) -> Option<Transmit> {
        let overhead = if self.sealer.is_some() { OVERHEAD } else { 0 };
        let first = self.packer.next_len()?;
        let seg = first + overhead;
        let mut size = 0;
        let mut count = 0;
        // Whether a datagram of `len` goes into the batch as number `n`.
        // The first always: one too large for `buf` is dropped below.
        let fits = |n: usize, len: usize, buf: &[u8]| {
            n == 0 || (n < max_segments && len <= first && buf.len() >= n * seg + len + overhead)
        };
        while let Some(len) = self.packer.next_len().filter(|&l| fits(count, l, buf)) {
            let at = count * seg;
            let Some(mut n) = buf
                .get_mut(at..)
                .and_then(|slot| self.packer.pop_into(slot))
            else {
                // Dropped: the buffer cannot hold even one datagram.
                return None;
            };
            // Padded to the size of the first when another follows.
            let padded = self
                .packer
                .next_len()
                .is_some_and(|next| fits(count + 1, next, buf));
            if padded {
                if let Some(pad) = buf.get_mut(at + len..at + first) {
                    pad.fill(0);
                    n = first;
                }
            }
            if let Some(sealer) = self.sealer.as_mut() {
                let sealed = buf
                    .get_mut(at..at + n + overhead)
                    .map(|slot| sealer.seal(slot, n));
                match sealed {
                    Some(Ok(sealed)) => n = sealed,
                    _ => {
                        // Never expected: the packer numbers datagrams in
                        // order. Not sent, and the batch ends here.
                        self.stats.seal_refused += 1;
                        break;
                    }
                }
            }
            self.stats.datagrams += 1;
            self.stats.bytes += n as u64;
            size = at + n;
            count += 1;
        }
        (count > 0).then_some(Transmit {
            destination: Destination::Group,
            size,
            segment_size: (count > 1).then_some(seg),
        })
    }

    /// Queues repairs for one datagram if the budget allows. Returns whether
    /// anything was queued.
    fn fill_repairs(&mut self, now: Instant) -> bool {
        let holdoff_since = now.checked_sub(self.cfg.repair_holdoff);
        let before = self.packer.datagrams();
        let bytes_before = self.packer.bytes();
        let mut queued = false;
        while self.packer.datagrams() == before && self.repairs.has_budget(now) {
            let Some(next) = self.repairs.pop() else {
                break;
            };
            match next {
                Next::Seq(seq) => {
                    // A retransmission that does not fit waits for the next
                    // datagram: one datagram of repairs per call, so live
                    // deltas published meanwhile are never queued behind
                    // more than one.
                    let len = self.history.body_len(seq).map(|b| b + MESSAGE_HEADER_LEN);
                    if len.is_some_and(|l| self.packer.is_open() && l > self.packer.remaining()) {
                        self.repairs.add_seqs(seq, seq);
                        break;
                    }
                    let (lookup, first_ask) = self.history.take(seq, now, holdoff_since);
                    if first_ask {
                        self.stats.nak_seqs_requested += 1;
                    }
                    match lookup {
                        Lookup::Send(body) => {
                            let Ok(Some(Message::Delta(d))) =
                                Message::decode_body(MessageKind::Delta as u8, body)
                            else {
                                continue;
                            };
                            let msg = Message::Retransmit(d);
                            let len = msg.encoded_len();
                            if self.packer.push(&msg).is_ok() {
                                self.stats.retransmits += 1;
                                self.stats.repair_bytes += len as u64;
                                queued = true;
                            }
                        }
                        Lookup::Coalesced => self.stats.repairs_coalesced += 1,
                        Lookup::Gone => {
                            self.stats.nak_seqs_unavailable += 1;
                        }
                    }
                }
                Next::Fragment {
                    frag_id,
                    start,
                    end,
                } => {
                    // One fragment at a time, within the budget; the rest of
                    // the range waits at the front of the queue.
                    if self.packer.is_open() {
                        // A fragment fills a datagram of its own.
                        self.repairs.push_front_fragment(frag_id, start, end);
                        break;
                    }
                    if let Some(next) = self.resend_fragment(frag_id, start) {
                        queued = true;
                        if next < end {
                            self.repairs.push_front_fragment(frag_id, next, end);
                        }
                        break;
                    }
                }
            }
        }
        if queued {
            self.record_fragmented();
            self.packer.flush();
            // The budget counts what the repair datagrams cost on the wire:
            // datagram headers (paced repairs often go out one small
            // retransmission per datagram) and fragment overhead included.
            // The loop checks it per datagram, so one datagram (or one
            // fragmented retransmission) may overdraw it.
            let sealing = if self.sealer.is_some() { OVERHEAD } else { 0 };
            let datagrams = self.packer.datagrams().saturating_sub(before);
            let wire =
                self.packer.bytes().saturating_sub(bytes_before) + datagrams * sealing as u64;
            self.repairs
                .spend(usize::try_from(wire).unwrap_or(usize::MAX));
        }
        queued
    }

    /// Queues the fragment of `frag_id` that holds byte `start`,
    /// cut as it was first sent. Returns where the next one starts, or
    /// `None` if the message is no longer held.
    fn resend_fragment(&mut self, frag_id: u32, start: u32) -> Option<u32> {
        let Some((kind, body)) = self.frags.get(frag_id) else {
            self.stats.frag_unavailable += 1;
            return None;
        };
        let cap = fragment_capacity(self.cfg.plain_datagram()).max(1);
        let total = u32::try_from(body.len()).unwrap_or(u32::MAX);
        let off = (start as usize / cap) * cap;
        let stop = (off + cap).min(body.len());
        let data = body.get(off..stop).filter(|d| !d.is_empty())?;
        let msg = Message::Fragment(Fragment {
            frag_id,
            total_len: total,
            offset: u32::try_from(off).unwrap_or(u32::MAX),
            inner_kind: kind,
            data,
        });
        let len = msg.encoded_len();
        if self.packer.push(&msg).is_ok() {
            self.stats.fragments_resent += 1;
            self.stats.repair_bytes += len as u64;
        }
        Some(u32::try_from(stop).unwrap_or(u32::MAX))
    }

    /// Progress of the current snapshot cycle: (positions sent, leaf count),
    /// or `None` between cycles.
    #[must_use]
    pub fn cycle_progress(&self) -> Option<(usize, usize)> {
        self.cycler.progress()
    }

    /// Keys the cycle in progress keeps aside (created or removed ahead of
    /// its cursor).
    #[cfg(test)]
    pub(crate) fn cycle_held(&self) -> usize {
        self.cycler.held()
    }

    /// The StreamInfo that follows each Heartbeat, if a schema is
    /// configured: its name cut to fit in one datagram with the Heartbeat.
    fn stream_info(cfg: &PublisherConfig, max_unfragmented_body: usize) -> Option<Message<'_>> {
        let schema = cfg.schema.as_ref()?;
        let heartbeat = MESSAGE_HEADER_LEN + crate::wire::HEARTBEAT_LEN;
        let room = (max_unfragmented_body + MESSAGE_HEADER_LEN)
            .saturating_sub(heartbeat + MESSAGE_HEADER_LEN + STREAM_INFO_FIXED);
        Some(Message::StreamInfo(StreamInfo {
            fingerprint: schema.fingerprint(),
            name: schema.wire_name(room),
        }))
    }

    /// Largest message body that fits in one datagram unfragmented.
    #[must_use]
    pub fn max_unfragmented_body(&self) -> usize {
        self.cfg.plain_datagram() - HEADER_LEN - MESSAGE_HEADER_LEN
    }
}
