//! The publisher state machine: sequence stamping, per-leaf sequence numbers,
//! the paced snapshot cycle and heartbeats.
//!
//! # Driving it
//!
//! ```
//! use std::collections::BTreeMap;
//! use std::time::{Duration, Instant};
//! use grapevine_core::publisher::{Publisher, PublisherConfig};
//! use grapevine_core::state::{MapDelta, State, Typed};
//! use grapevine_core::SessionId;
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
//! // Drain datagrams (send each to the group), then sleep until the deadline.
//! let mut buf = vec![0u8; 1452];
//! let mut sent = 0;
//! while let Some(len) = publisher.poll_transmit(now, &state, &mut buf) {
//!     sent += len;
//! }
//! assert!(sent > 0);
//! assert!(publisher.poll_timeout().is_some());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::state::LeafSource;
use crate::wire::{
    CycleBegin, CycleEnd, Delta, EncodeError, Heartbeat, LeafSnapshot, Message, Packer,
    DEFAULT_MAX_DATAGRAM, HEADER_LEN, MESSAGE_HEADER_LEN,
};
use crate::{ConfigError, CycleId, SeqNum, SessionId, StreamId};

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
}

impl Default for PublisherConfig {
    fn default() -> Self {
        Self {
            stream: StreamId(1),
            max_datagram: DEFAULT_MAX_DATAGRAM,
            snapshot_rate: SnapshotRate::LeavesPerSec(100_000),
            heartbeat_interval: Duration::from_millis(100),
            min_cycle_interval: Duration::from_millis(100),
        }
    }
}

impl PublisherConfig {
    /// The stream id (default 1).
    pub fn stream(&mut self, stream: StreamId) -> &mut Self {
        self.stream = stream;
        self
    }

    /// Maximum datagram size in bytes (default 1452: fits a 1500-byte MTU
    /// over IPv4 and IPv6).
    pub fn max_datagram(&mut self, bytes: usize) -> &mut Self {
        self.max_datagram = bytes;
        self
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

    /// The maximum datagram size: the buffer a driver needs for
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
    /// Datagrams handed out by `poll_transmit`.
    pub datagrams: u64,
    /// Bytes handed out by `poll_transmit`.
    pub bytes: u64,
    /// Bytes of snapshot and cycle messages (message headers included).
    pub snapshot_bytes: u64,
    /// Leaves that could not be encoded into a snapshot message.
    pub unencodable: u64,
}

type Key = Arc<[u8]>;

#[derive(Debug)]
struct Cycle {
    id: CycleId,
    start_seq: SeqNum,
    keys: Vec<Key>,
    /// Next position to send; `keys.len()` means only CycleEnd is left.
    pos: usize,
}

/// The publisher state machine; see the [module docs](self).
pub struct Publisher {
    cfg: PublisherConfig,
    session: SessionId,
    last_seq: SeqNum,
    /// `leaf_seq` of every present leaf.
    leaves: BTreeMap<Key, SeqNum>,
    packer: Packer,
    cycle: Option<Cycle>,
    next_cycle_id: CycleId,
    next_cycle_at: Instant,
    /// Snapshot budget in the rate's unit, refilled with time.
    tokens: f64,
    tokens_at: Instant,
    next_heartbeat: Instant,
    clock: Option<Box<dyn Fn() -> u64 + Send>>,
    leaf_buf: Vec<u8>,
    stats: PublisherStats,
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
        Ok(Self {
            packer: Packer::new(cfg.stream, session, cfg.max_datagram),
            cfg,
            session,
            last_seq: SeqNum::NONE,
            leaves: BTreeMap::new(),
            cycle: None,
            next_cycle_id: CycleId(0),
            next_cycle_at: now,
            tokens: 0.0,
            tokens_at: now,
            next_heartbeat: now,
            clock: None,
            leaf_buf: Vec::new(),
            stats: PublisherStats::default(),
        })
    }

    /// Sets the wall clock stamped into heartbeats (microseconds since the
    /// Unix epoch). Without one, heartbeats carry 0.
    pub fn set_wall_clock(&mut self, clock: Box<dyn Fn() -> u64 + Send>) {
        self.clock = Some(clock);
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
        self.stats
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
        if key.len() > u16::MAX as usize {
            return Err(PublishError::KeyTooLong { len: key.len() });
        }
        self.leaves.entry(Arc::from(key)).or_insert(SeqNum::NONE);
        Ok(())
    }

    /// Publishes one delta that the application has already applied to its
    /// state: stamps the next sequence number, records the leaf's sequence
    /// number and queues the delta for sending. `present_after` says whether
    /// the leaf exists after the delta (false for a removal).
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
        if key.len() > u16::MAX as usize {
            return Err(PublishError::KeyTooLong { len: key.len() });
        }
        let seq = self.last_seq.next().ok_or(PublishError::SeqExhausted)?;
        let prev = self.leaves.get(key).copied();
        self.packer.push(&Message::Delta(Delta {
            seq,
            prev_leaf_seq: prev.unwrap_or(SeqNum::NONE),
            creates: prev.is_none(),
            key,
            payload,
        }))?;
        self.last_seq = seq;
        if present_after {
            match self.leaves.get_mut(key) {
                Some(s) => *s = seq,
                None => {
                    self.leaves.insert(Arc::from(key), seq);
                }
            }
        } else {
            self.leaves.remove(key);
        }
        self.stats.deltas += 1;
        Ok(seq)
    }

    /// When to call [`Publisher::poll_transmit`] next, if nothing else
    /// happens: the next heartbeat or the time the snapshot budget allows
    /// the next datagram of the cycle.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let snapshot = if self.cycle.is_some() {
            let per_datagram = self.datagram_cost();
            let missing = (per_datagram - self.tokens).max(0.0);
            let secs = missing / self.rate();
            self.tokens_at + Duration::from_secs_f64(secs)
        } else {
            self.next_cycle_at
        };
        Some(self.next_heartbeat.min(snapshot))
    }

    /// Writes the next datagram to send into `buf` (which must hold the
    /// maximum datagram size) and returns its length, or `None` when nothing
    /// is due at `now`. Call it until it returns `None`, after publishing and
    /// whenever [`Publisher::poll_timeout`] passes. `source` provides the
    /// leaves for the snapshot cycle.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        source: &impl LeafSource,
        buf: &mut [u8],
    ) -> Option<usize> {
        loop {
            self.packer.flush();
            if let Some(len) = self.packer.pop_into(buf) {
                self.stats.datagrams += 1;
                self.stats.bytes += len as u64;
                return Some(len);
            }
            if now >= self.next_heartbeat {
                self.queue_heartbeat(now);
                continue;
            }
            if !self.fill_snapshots(now, source) {
                return None;
            }
        }
    }

    fn queue_heartbeat(&mut self, now: Instant) {
        let hb = Heartbeat {
            last_seq: self.last_seq,
            sent_at_micros: self.clock.as_ref().map_or(0, |c| c()),
            interval_ms: u32::try_from(self.cfg.heartbeat_interval.as_millis()).unwrap_or(u32::MAX),
        };
        // A heartbeat always fits in an empty datagram.
        let _ = self.packer.push(&Message::Heartbeat(hb));
        self.stats.heartbeats += 1;
        self.next_heartbeat = now + self.cfg.heartbeat_interval;
    }

    fn rate(&self) -> f64 {
        match self.cfg.snapshot_rate {
            SnapshotRate::LeavesPerSec(n) => f64::from(n),
            SnapshotRate::BytesPerSec(n) => n as f64,
        }
    }

    /// Budget one datagram of snapshots costs, in the rate's unit.
    fn datagram_cost(&self) -> f64 {
        match self.cfg.snapshot_rate {
            // Roughly: at least one leaf per datagram; pace per leaf.
            SnapshotRate::LeavesPerSec(_) => 1.0,
            SnapshotRate::BytesPerSec(_) => (self.cfg.max_datagram - HEADER_LEN) as f64,
        }
    }

    fn cost(&self, msg_len: usize) -> f64 {
        match self.cfg.snapshot_rate {
            SnapshotRate::LeavesPerSec(_) => 1.0,
            SnapshotRate::BytesPerSec(_) => msg_len as f64,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.tokens_at).as_secs_f64();
        self.tokens_at = now.max(self.tokens_at);
        // Allow bursts of up to 10 ms worth, and at least one datagram.
        let cap = (self.rate() * 0.010).max(self.datagram_cost() * 2.0);
        self.tokens = (self.tokens + elapsed * self.rate()).min(cap);
    }

    /// Queues one datagram's worth of cycle messages if the budget allows.
    /// Returns whether anything was queued.
    /// Queues one datagram's worth of cycle messages if the budget allows.
    /// Returns whether anything was queued.
    ///
    /// Every datagram of snapshots opens with a copy of its cycle's
    /// CycleBegin, so that a subscriber that joins mid-cycle, or lost the
    /// first CycleBegin, can use the rest of the cycle.
    fn fill_snapshots(&mut self, now: Instant, source: &impl LeafSource) -> bool {
        self.refill(now);
        if self.cycle.is_none() {
            if now < self.next_cycle_at {
                return false;
            }
            self.begin_cycle(now);
        }
        let mut queued = false;
        while self.tokens > 0.0 {
            let Some(cycle) = self.cycle.as_ref() else {
                break;
            };
            let begin = Message::CycleBegin(CycleBegin {
                cycle: cycle.id,
                start_seq: cycle.start_seq,
                leaf_count: u32::try_from(cycle.keys.len()).unwrap_or(u32::MAX),
            });
            let pos = cycle.pos;
            let msg_len;
            if pos >= cycle.keys.len() {
                let end = Message::CycleEnd(CycleEnd {
                    cycle: cycle.id,
                    end_seq: self.last_seq,
                    leaf_count: u32::try_from(cycle.keys.len()).unwrap_or(u32::MAX),
                });
                msg_len = end.encoded_len();
                if self.packer.is_open() && msg_len > self.packer.remaining() {
                    break;
                }
                let _ = self.packer.push(&end);
                self.cycle = None;
                self.stats.cycles += 1;
                self.tokens -= self.cost(msg_len);
                self.stats.snapshot_bytes += msg_len as u64;
                queued = true;
                break;
            }
            let Some(key) = cycle.keys.get(pos).cloned() else {
                break;
            };
            self.leaf_buf.clear();
            let leaf_seq = self.leaves.get(&key).copied();
            let present = leaf_seq.is_some() && source.encode_leaf(&key, &mut self.leaf_buf);
            let msg = Message::LeafSnapshot(LeafSnapshot {
                cycle: cycle.id,
                position: u32::try_from(pos).unwrap_or(u32::MAX),
                leaf_seq: if present {
                    leaf_seq.unwrap_or(SeqNum::NONE)
                } else {
                    self.last_seq
                },
                key: &key,
                value: present.then_some(self.leaf_buf.as_slice()),
            });
            msg_len = msg.encoded_len();
            if self.packer.is_open() && msg_len > self.packer.remaining() {
                // This datagram is full: hand it out before spending more.
                break;
            }
            if !self.packer.is_open() {
                let _ = self.packer.push(&begin);
                self.stats.snapshot_bytes += begin.encoded_len() as u64;
            }
            if self.packer.push(&msg).is_ok() {
                self.tokens -= self.cost(msg_len);
                self.stats.snapshots += 1;
                self.stats.snapshot_bytes += msg_len as u64;
                if !present {
                    self.stats.tombstones += 1;
                }
            } else {
                // Cannot happen: keys were checked by `publish` and a leaf
                // body would have to exceed 4 GiB. Counted, not hidden.
                self.stats.unencodable += 1;
            }
            if let Some(c) = self.cycle.as_mut() {
                c.pos += 1;
            }
            queued = true;
        }
        if queued {
            self.packer.flush();
        }
        queued
    }

    fn begin_cycle(&mut self, now: Instant) {
        let keys: Vec<Key> = self.leaves.keys().cloned().collect();
        let id = self.next_cycle_id;
        self.next_cycle_id = id.next();
        let begin = Message::CycleBegin(CycleBegin {
            cycle: id,
            start_seq: self.last_seq,
            leaf_count: u32::try_from(keys.len()).unwrap_or(u32::MAX),
        });
        self.stats.snapshot_bytes += begin.encoded_len() as u64;
        let _ = self.packer.push(&begin);
        self.cycle = Some(Cycle {
            id,
            start_seq: self.last_seq,
            keys,
            pos: 0,
        });
        self.next_cycle_at = now + self.cfg.min_cycle_interval;
    }

    /// Progress of the current snapshot cycle: (positions sent, leaf count),
    /// or `None` between cycles.
    #[must_use]
    pub fn cycle_progress(&self) -> Option<(usize, usize)> {
        self.cycle.as_ref().map(|c| (c.pos, c.keys.len()))
    }

    /// Largest message body that fits in one datagram unfragmented.
    #[must_use]
    pub fn max_unfragmented_body(&self) -> usize {
        self.cfg.max_datagram - HEADER_LEN - MESSAGE_HEADER_LEN
    }
}
