//! The subscriber state machine: late join, ordering, per-leaf chains,
//! snapshot repair, ghost removal, restart and liveness detection.
//!
//! A [`Subscriber`] takes datagrams ([`Subscriber::handle_datagram`]) and
//! timer expiries ([`Subscriber::handle_timeout`]), applies what they carry
//! to the application's [`Replica`], and reports [`Event`]s and a
//! [`Status`]. It never blocks, reads no clock and opens no socket.
//!
//! # What "consistent" means
//!
//! [`Status::consistent`] is true when the replica equals the publisher's
//! state as of [`Status::seq`]: every leaf holds the publisher's value after
//! delta `seq`. It is false until snapshot cycles have verified the whole
//! key space, while any leaf is stale, after a loss until cycles that began
//! after the loss have verified the key space again, and while a snapshot
//! newer than `seq` has been installed but the deltas before it have not all
//! been processed.
//!
//! # Sync under loss
//!
//! A cycle sends the leaves in increasing key order, so receiving two
//! consecutive positions proves there is no other leaf between their keys.
//! The subscriber collects these intervals across cycles: snapshots lost in
//! one cycle are filled in by the next, and a lossy network delays sync by
//! about one cycle instead of preventing it.
//!
//! ```
//! use std::collections::BTreeMap;
//! use std::time::Instant;
//! use grapevine_core::publisher::{Publisher, PublisherConfig};
//! use grapevine_core::subscriber::{Subscriber, SubscriberConfig};
//! use grapevine_core::state::{MapDelta, State, Typed};
//! use grapevine_core::{Destination, SessionId};
//!
//! type Map = BTreeMap<String, u32>;
//! let now = Instant::now();
//! let mut state = Typed::new(Map::new());
//! let mut publisher = Publisher::new(PublisherConfig::default(), SessionId(7), now)?;
//! let mut replica = Typed::new(Map::new());
//! let mut subscriber = Subscriber::new(SubscriberConfig::default())?;
//!
//! let delta = MapDelta::Upsert("a".to_string(), 1);
//! state.state_mut().apply(&delta);
//! publisher.publish(&Typed::<Map>::encode_key(&Map::key_of(&delta)),
//!                   &Typed::<Map>::encode_delta(&delta), true)?;
//!
//! // Carry datagrams both ways, as a network would: the publisher's to the
//! // subscriber, the subscriber's NAKs (if any) back to the publisher's
//! // source address. (Documentation addresses: nothing is sent anywhere.)
//! let publisher_addr = "192.0.2.1:5000".parse()?;
//! let subscriber_addr = "198.51.100.7:6000".parse()?;
//! let (mut buf, mut nak) = (vec![0u8; 1452], vec![0u8; 1452]);
//! let mut t = now;
//! for _ in 0..10 {
//!     publisher.handle_timeout(t, 1_764_000_000_000_000);
//!     while let Some(tx) = publisher.poll_transmit(t, &state, 1, &mut buf) {
//!         subscriber.handle_datagram(t, publisher_addr, &mut buf[..tx.size], &mut replica);
//!         while let Some(tx) = subscriber.poll_transmit(t, &mut nak) {
//!             assert_eq!(tx.destination, Destination::Unicast(publisher_addr));
//!             publisher.handle_datagram(t, subscriber_addr, &mut nak[..tx.size]);
//!         }
//!     }
//!     t = publisher.poll_timeout().unwrap();
//!     subscriber.handle_timeout(t, &mut replica);
//! }
//! let status = subscriber.status();
//! assert!(status.synced && status.consistent);
//! assert_eq!(replica.state(), state.state());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod coverage;
mod cycle;
mod keymap;
mod leaves;
mod schema;
mod sequencer;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::auth::{Keyring, Opener, Refused, Role, Salt, Sealer, Security, OVERHEAD};
use crate::histogram::LatencyHistogram;
use crate::rng::Rng;
use crate::schema::{Schema, SchemaFingerprint};
use crate::sources::Sources;
use crate::state::{ApplyError, Replica};
use crate::timer::{TimerId, Timers};
use crate::transmit::{Destination, Transmit};
use crate::wire::{
    CycleBegin, Datagram, DatagramHeader, DatagramWriter, Decoded, Delta, FragNak, FragRanges,
    KindCounts, Message, Nak, NakRanges, DEFAULT_MAX_DATAGRAM, HEADER_LEN, MESSAGE_HEADER_LEN,
};
use crate::{
    ConfigError, CycleId, Missing, Reassembler, ReassemblyConfig, SeqNum, SessionId, StreamId,
};
use coverage::{Coverage, Hi, Lo};
use cycle::CycleTracker;
use leaves::{Ctx, DeltaOutcome, DeltaRef, LeafTable};
use schema::{SchemaCheck, Verdict};
use sequencer::{Admit, Progress, RepairPolicy, Sequencer};

/// Most verified intervals held while the deltas catch up with their cycle.
const MAX_DEFERRED: usize = 1 << 20;
/// Longest a late joiner waits for a CycleBegin to start from (§8.2).
const MAX_CYCLE_WAIT: Duration = Duration::from_millis(250);
/// Most fragment ranges named in one FragNak.
const MAX_FRAG_RANGES: usize = 64;
/// Most fragment requests waiting to be sent.
const MAX_QUEUED_FRAG_NAKS: usize = 256;
/// Publisher sessions whose replay windows a subscriber with
/// authentication on keeps: the followed one (pinned) and others heard.
const PUBLISHER_WINDOWS: usize = 16;
/// With authentication on, a new session is entered only after one of its
/// Heartbeats stamped within this of the local wall clock (PROTOCOL.md
/// §11.4): a recording of an old session cannot be replayed to a
/// starting subscriber.
pub const MAX_SKEW: Duration = Duration::from_secs(30);

/// Configuration of a [`Subscriber`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriberConfig {
    stream: StreamId,
    reorder_window: usize,
    reorder_timeout: Duration,
    max_pending_deltas: usize,
    max_buffered_bytes: usize,
    max_cycle_leaves: u32,
    missed_heartbeats: u32,
    max_events: usize,
    delta_events: bool,
    reassembly: ReassemblyConfig,
    max_datagram: usize,
    nak_repair: bool,
    nak_delay: Duration,
    repair_timeout: Duration,
    nak_attempts: u32,
    max_seq_jump: u64,
    catch_up: u64,
    rng_seed: Option<u64>,
    security: Option<Security>,
    schema: Option<Schema>,
}

impl Default for SubscriberConfig {
    fn default() -> Self {
        Self {
            stream: StreamId(1),
            reorder_window: 4096,
            reorder_timeout: Duration::from_millis(20),
            max_pending_deltas: 65_536,
            max_buffered_bytes: 64 << 20,
            max_cycle_leaves: 16 << 20,
            missed_heartbeats: 5,
            max_events: 65_536,
            delta_events: false,
            reassembly: ReassemblyConfig::default(),
            max_datagram: DEFAULT_MAX_DATAGRAM,
            nak_repair: true,
            nak_delay: Duration::from_millis(2),
            repair_timeout: Duration::from_millis(20),
            nak_attempts: 5,
            max_seq_jump: 8192,
            catch_up: 16_384,
            rng_seed: None,
            security: None,
            schema: None,
        }
    }
}

impl SubscriberConfig {
    /// The stream to follow (default 1); datagrams of other streams are
    /// dropped and counted.
    pub fn stream(&mut self, stream: StreamId) -> &mut Self {
        self.stream = stream;
        self
    }

    /// The stream followed.
    #[must_use]
    pub fn stream_id(&self) -> StreamId {
        self.stream
    }

    /// The schema the replica expects (default none: any). A followed
    /// session whose StreamInfo messages carry another fingerprint, in two
    /// datagrams with increasing `datagram_seq`, is reported
    /// ([`Event::SchemaMismatch`], [`Status::schema_mismatch`]) and its
    /// datagrams are dropped (PROTOCOL.md §8.2). A publisher that sends no
    /// StreamInfo is followed as usual.
    pub fn expect_schema(&mut self, schema: Schema) -> &mut Self {
        self.schema = Some(schema);
        self
    }

    /// The schema set by [`SubscriberConfig::expect_schema`].
    #[must_use]
    pub fn expected_schema(&self) -> Option<&Schema> {
        self.schema.as_ref()
    }

    /// Most out-of-order deltas held while waiting for a missing one
    /// (default 4096). Beyond it the missing ones are declared lost.
    pub fn reorder_window(&mut self, n: usize) -> &mut Self {
        self.reorder_window = n;
        self
    }

    /// Without NAK repair, how long a missing sequence number is waited for
    /// before it is declared lost and left to snapshot repair; with it, the
    /// bound on network reordering used to tell a forged sequence number from
    /// a late heartbeat (default 20 ms).
    pub fn reorder_timeout(&mut self, t: Duration) -> &mut Self {
        self.reorder_timeout = t;
        self
    }

    /// Most deltas held for leaves whose chain is broken, waiting for their
    /// snapshot (default 65,536).
    pub fn max_pending_deltas(&mut self, n: usize) -> &mut Self {
        self.max_pending_deltas = n;
        self
    }

    /// Most bytes held by the reorder buffer and by pending deltas, each
    /// (default 64 MiB).
    pub fn max_buffered_bytes(&mut self, n: usize) -> &mut Self {
        self.max_buffered_bytes = n;
        self
    }

    /// Largest cycle (leaf count) the subscriber tracks (default 16 Mi
    /// leaves; each costs one bit while a cycle is heard).
    pub fn max_cycle_leaves(&mut self, n: u32) -> &mut Self {
        self.max_cycle_leaves = n;
        self
    }

    /// The publisher is reported gone after this many heartbeat intervals of
    /// silence (default 5).
    pub fn missed_heartbeats(&mut self, n: u32) -> &mut Self {
        self.missed_heartbeats = n;
        self
    }

    /// Most events queued before the oldest are dropped (default 65,536).
    pub fn max_events(&mut self, n: usize) -> &mut Self {
        self.max_events = n;
        self
    }

    /// Whether to emit [`Event::DeltaApplied`] for every applied delta
    /// (default false).
    pub fn delta_events(&mut self, on: bool) -> &mut Self {
        self.delta_events = on;
        self
    }

    /// Limits for reassembling fragmented messages.
    pub fn reassembly(&mut self, cfg: ReassemblyConfig) -> &mut Self {
        self.reassembly = cfg;
        self
    }

    /// Largest NAK datagram this subscriber sends (default 1452).
    pub fn max_datagram(&mut self, bytes: usize) -> &mut Self {
        self.max_datagram = bytes;
        self
    }

    /// Whether [`SubscriberConfig::rng_seed`] was given.
    #[must_use]
    pub fn is_seeded(&self) -> bool {
        self.rng_seed.is_some()
    }

    /// The largest NAK datagram: the buffer a driver needs for
    /// [`Subscriber::poll_transmit`].
    #[must_use]
    pub fn max_datagram_size(&self) -> usize {
        self.max_datagram
    }

    /// Whether missing sequence numbers (and missing pieces of fragmented
    /// messages) are asked for by NAK before being left to snapshot repair
    /// (default true).
    pub fn nak_repair(&mut self, on: bool) -> &mut Self {
        self.nak_repair = on;
        self
    }

    /// Longest random wait before the first NAK for a newly missing
    /// sequence number (default 2 ms). Hearing a repair for another
    /// subscriber during the wait holds the NAK back once more, so that
    /// subscribers losing the same datagram do not all ask.
    pub fn nak_delay(&mut self, delay: Duration) -> &mut Self {
        self.nak_delay = delay;
        self
    }

    /// How long a repair is waited for after a NAK before asking again, or,
    /// after the last attempt, before giving up to snapshot repair (default
    /// 20 ms).
    pub fn repair_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.repair_timeout = timeout;
        self
    }

    /// NAKs sent for one missing range before it is left to snapshot repair
    /// (default 5).
    pub fn nak_attempts(&mut self, n: u32) -> &mut Self {
        self.nak_attempts = n;
        self
    }

    /// How far one datagram may move the known end of the stream (default
    /// 8192 sequence numbers). A sequence number further ahead is believed
    /// only once another datagram of the session shows at least as much:
    /// one forged or corrupt datagram cannot make the subscriber wait for,
    /// or skip, more than this many sequence numbers.
    pub fn max_seq_jump(&mut self, n: u64) -> &mut Self {
        self.max_seq_jump = n;
        self
    }

    /// How many deltas back a late joiner may start, to use the snapshot
    /// cycle in progress (default 16,384; 0 starts at the first delta heard).
    /// It asks for the deltas since the cycle's start by NAK, from the
    /// publisher's history: the first cycle it hears then proves its replica
    /// consistent, a cycle sooner than without.
    pub fn catch_up(&mut self, deltas: u64) -> &mut Self {
        self.catch_up = deltas;
        self
    }

    /// Accept only datagrams sealed with these keys (PROTOCOL.md §11), and
    /// seal the NAKs sent (default: none, plain datagrams). Anything that
    /// does not open is dropped and counted in
    /// [`SubscriberStats::refused`].
    pub fn security(&mut self, security: Option<Security>) -> &mut Self {
        self.security = security;
        self
    }

    /// The security settings, if any.
    #[must_use]
    pub fn security_settings(&self) -> Option<&Security> {
        self.security.as_ref()
    }

    /// Seed of the random NAK delays and requester id (default: none, and
    /// the caller should give one from the OS; the same seed gives the same
    /// behaviour, for simulations).
    pub fn rng_seed(&mut self, seed: u64) -> &mut Self {
        self.rng_seed = Some(seed);
        self
    }

    /// Checks the values.
    ///
    /// # Errors
    ///
    /// [`ConfigError::OutOfRange`] naming the first bad value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.reorder_window == 0 {
            return Err(ConfigError::out_of_range(
                "reorder_window",
                0,
                "use at least 1, e.g. 4096",
            ));
        }
        if self.reorder_timeout.is_zero() || self.reorder_timeout > Duration::from_secs(3600) {
            return Err(ConfigError::out_of_range(
                "reorder_timeout",
                format!("{:?}", self.reorder_timeout),
                "use a positive duration up to 1 h, e.g. 20 ms",
            ));
        }
        if !(1..=1000).contains(&self.missed_heartbeats) {
            return Err(ConfigError::out_of_range(
                "missed_heartbeats",
                self.missed_heartbeats,
                "use 1 ..= 1000, e.g. 5",
            ));
        }
        if self.max_events == 0 {
            return Err(ConfigError::out_of_range("max_events", 0, "use at least 1"));
        }
        if !(HEADER_LEN + 64..=65_507).contains(&self.max_datagram) {
            return Err(ConfigError::out_of_range(
                "max_datagram",
                self.max_datagram,
                "use 92 ..= 65507 bytes; 1452 fits a 1500-byte MTU",
            ));
        }
        if self.security.is_some() && self.max_datagram < HEADER_LEN + 64 + OVERHEAD {
            return Err(ConfigError::out_of_range(
                "max_datagram",
                self.max_datagram,
                "use at least 128 bytes with authentication (it adds 36)",
            ));
        }
        if self.nak_delay > Duration::from_secs(10) {
            return Err(ConfigError::out_of_range(
                "nak_delay",
                format!("{:?}", self.nak_delay),
                "use at most 10 s, e.g. 2 ms",
            ));
        }
        if self.repair_timeout.is_zero() || self.repair_timeout > Duration::from_secs(60) {
            return Err(ConfigError::out_of_range(
                "repair_timeout",
                format!("{:?}", self.repair_timeout),
                "use a positive duration up to 60 s, e.g. 20 ms",
            ));
        }
        if !(1..=100).contains(&self.nak_attempts) {
            return Err(ConfigError::out_of_range(
                "nak_attempts",
                self.nak_attempts,
                "use 1 ..= 100, e.g. 5",
            ));
        }
        if self.max_seq_jump == 0 || self.max_seq_jump > 1 << 40 {
            return Err(ConfigError::out_of_range(
                "max_seq_jump",
                self.max_seq_jump,
                "use 1 ..= 2^40, e.g. 8192",
            ));
        }
        self.reassembly.validate()
    }
}

/// Something the application may want to know.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A publisher session was heard for the first time.
    SessionStarted {
        /// The session.
        session: SessionId,
    },
    /// Snapshot cycles have now verified the whole key space: every leaf is
    /// known (once per publisher session).
    Synced {
        /// Sequence number processed at that moment.
        seq: SeqNum,
        /// Time from the session's first datagram to sync.
        elapsed: Duration,
    },
    /// [`Status::consistent`] changed.
    Consistency {
        /// The new value.
        consistent: bool,
    },
    /// Sequence numbers were declared lost (NAK repair, if on, did not bring
    /// them); the leaves they touched are repaired from snapshots.
    Gap {
        /// First lost sequence number.
        first: SeqNum,
        /// Last lost sequence number (inclusive).
        last: SeqNum,
    },
    /// A leaf's chain broke: it is stale until its next snapshot.
    LeafStale {
        /// The leaf's key.
        key: Vec<u8>,
    },
    /// A stale leaf was repaired.
    LeafRepaired {
        /// The leaf's key.
        key: Vec<u8>,
    },
    /// A delta was applied (only with
    /// [`SubscriberConfig::delta_events`]).
    DeltaApplied {
        /// Its sequence number.
        seq: SeqNum,
    },
    /// The application could not decode a delta or leaf; the leaf is stale.
    ApplyFailed {
        /// The leaf's key.
        key: Vec<u8>,
        /// Sequence number of the delta or snapshot.
        seq: SeqNum,
        /// What failed.
        error: ApplyError,
    },
    /// A new publisher session replaced the old one, which had fallen silent
    /// for two heartbeat intervals while the new one was heard twice: the
    /// replica was cleared and is resynchronising.
    PublisherRestarted {
        /// The session that ended.
        old: SessionId,
        /// The new session.
        new: SessionId,
    },
    /// Another publisher session is alive on the stream while this one is
    /// followed: a second publisher sharing the stream (a configuration
    /// error), whose datagrams are counted and dropped. The subscriber
    /// keeps following the session it follows (PROTOCOL.md §8.2). Reported
    /// once per other session.
    OtherPublisher {
        /// The session followed.
        followed: SessionId,
        /// The other session.
        other: SessionId,
    },
    /// Nothing was heard from the publisher for the configured number of
    /// heartbeat intervals. The replica stays readable.
    PublisherGone,
    /// The publisher was heard again after [`Event::PublisherGone`].
    PublisherBack,
    /// The followed session carries another schema than the one expected
    /// ([`SubscriberConfig::expect_schema`]), as two of its datagrams
    /// agree: the replica was cleared, and the session's datagrams are
    /// dropped until two of them carry the expected schema again.
    /// Reported once per change.
    SchemaMismatch {
        /// The session.
        session: SessionId,
        /// The schema expected.
        expected: Schema,
        /// The schema the session announced.
        found: Schema,
    },
}

/// A bounded event queue.
#[derive(Debug)]
pub(crate) struct EventQueue {
    queue: VecDeque<Event>,
    max: usize,
    dropped: u64,
}

impl EventQueue {
    pub(crate) fn push(&mut self, e: Event) {
        if self.queue.len() >= self.max {
            self.queue.pop_front();
            self.dropped += 1;
        }
        self.queue.push_back(e);
    }
}

/// Counters of a [`Subscriber`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscriberStats {
    /// Datagrams received.
    pub datagrams: u64,
    /// Bytes received.
    pub bytes: u64,
    /// Datagrams dropped as malformed, by [`crate::wire::DecodeError::code`].
    pub malformed: BTreeMap<&'static str, u64>,
    /// Datagrams refused by authentication, by
    /// [`crate::auth::Refused::code`] (and `salt_conflict`: a sender other
    /// than the followed session's, using its session id).
    pub refused: BTreeMap<&'static str, u64>,
    /// Authenticated datagrams of a session not yet proven fresh by a
    /// Heartbeat (PROTOCOL.md §11.4): dropped until one is heard. A few at
    /// every start (what precedes the first heartbeat); a steady count is
    /// a recording of an old session being replayed, or a clock off by
    /// more than [`MAX_SKEW`].
    pub awaiting_heartbeat: u64,
    /// Messages of the followed stream's datagrams (any session, used or
    /// not) and their bytes, by kind.
    pub received: KindCounts,
    /// Datagrams of another stream.
    pub foreign_stream: u64,
    /// Datagrams of another session that were not followed: a late datagram
    /// of an ended session, a second publisher on the stream, or the first
    /// datagram of a restarted publisher.
    pub other_session: u64,
    /// Messages of kinds this version does not know (skipped).
    pub unknown_messages: u64,
    /// Fragments rejected by reassembly.
    pub fragments_rejected: u64,
    /// Deltas received (retransmissions included).
    pub deltas_received: u64,
    /// Deltas dropped as already processed or already buffered.
    pub duplicates: u64,
    /// Deltas applied to the replica.
    pub deltas_applied: u64,
    /// Deltas skipped because a newer snapshot already covered them.
    pub deltas_covered: u64,
    /// Deltas set aside because their leaf's chain was broken.
    pub deltas_pending: u64,
    /// Pending deltas dropped because the pending buffer was full.
    pub pending_dropped: u64,
    /// Leaf snapshots received.
    pub snapshots_received: u64,
    /// Leaf snapshots installed (newer than what was held).
    pub snapshots_applied: u64,
    /// Leaf snapshots newer than the stream's known end, set aside.
    pub snapshots_ahead: u64,
    /// Leaf snapshots of leaves held exactly, newer than the deltas
    /// processed so far: left to those deltas (not installed, not used for
    /// the key-space proof).
    pub snapshots_deferred: u64,
    /// Snapshots whose position was outside their cycle, or whose key broke
    /// the cycle's key order.
    pub bad_positions: u64,
    /// Late copies of snapshots from a completed cycle, for leaves no longer
    /// tracked (ignored).
    pub stale_snapshots: u64,
    /// Cycles announced larger than `max_cycle_leaves` (not tracked).
    pub oversized_cycles: u64,
    /// Verified key intervals dropped because too many waited for deltas.
    pub links_dropped: u64,
    /// Snapshot cycles whose start was heard (and believed).
    pub cycles_begun: u64,
    /// Copies of a tracked cycle's CycleBegin that disagreed with it (the
    /// cycle's evidence was dropped).
    pub cycle_conflicts: u64,
    /// Times the replica became synced (once per publisher session).
    pub syncs: u64,
    /// Gaps declared.
    pub gaps: u64,
    /// Sequence numbers declared lost: missing sequence numbers that NAK
    /// repair did not bring, left to snapshot repair (`repaired_by_snapshot`
    /// in the CLI's JSON).
    pub lost: u64,
    /// Leaves removed as ghosts of missed deletions.
    pub ghosts_removed: u64,
    /// Deltas or leaves the application could not decode.
    pub apply_errors: u64,
    /// Publisher restarts seen.
    pub restarts: u64,
    /// Events dropped because the queue was full.
    pub events_dropped: u64,
    /// Retransmit messages received.
    pub retransmits_received: u64,
    /// NAK datagrams sent.
    pub naks_sent: u64,
    /// Sequence ranges named by the NAKs sent.
    pub nak_ranges_sent: u64,
    /// FragNak datagrams sent (missing pieces of fragmented messages).
    pub frag_naks_sent: u64,
    /// Missing sequence numbers filled by a retransmission (NAK repair).
    pub repaired_by_nak: u64,
    /// Missing sequence numbers filled late by the original delta
    /// (reordering).
    pub filled_late: u64,
    /// NAKs held back because a repair for another subscriber was heard.
    pub naks_postponed: u64,
    /// Time from knowing a sequence number missing to its repair by NAK.
    pub repair_latency: LatencyHistogram,
    /// Messages dropped because their sequence number was further ahead
    /// than one datagram may move the stream, and not yet corroborated.
    pub unbelieved: u64,
    /// Times the known end of the stream fell back because the session's
    /// heartbeats showed it was never sent.
    pub reanchors: u64,
    /// Deltas whose REMOVES flag disagreed with the replica's result (the
    /// subscriber's state type differs from the publisher's).
    pub removes_mismatch: u64,
    /// Times the followed session was found to carry another schema than
    /// the one expected ([`Event::SchemaMismatch`]).
    pub schema_mismatches: u64,
    /// Datagrams dropped because their session carries another schema.
    pub schema_dropped: u64,
}

/// Where the replica stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Status {
    /// The publisher session followed, once one has been heard.
    pub session: Option<SessionId>,
    /// Every leaf has been heard: snapshot cycles have verified the whole key
    /// space at least once in this session.
    pub synced: bool,
    /// The replica equals the publisher's state as of `seq` (see the module
    /// docs).
    pub consistent: bool,
    /// Every delta up to this one has been processed (or declared lost).
    pub seq: SeqNum,
    /// Highest sequence number known to exist.
    pub known_seq: SeqNum,
    /// Sequence numbers known to exist but neither received nor given up
    /// on yet (being repaired by NAK, or waited for).
    pub missing: u64,
    /// Leaves whose chain is broken, waiting for a snapshot.
    pub stale_leaves: usize,
    /// Present leaves held.
    pub leaves: usize,
    /// Positions received / leaf count of the cycle being heard.
    pub cycle_progress: Option<(u32, u32)>,
    /// Whether the publisher has been heard within the liveness limit.
    pub publisher_alive: bool,
    /// Other publisher sessions alive on the stream (heard with increasing
    /// `datagram_seq` over a heartbeat interval, and within the last two):
    /// 0 unless a second publisher wrongly shares the stream (or the
    /// publisher restarted and the old session has not yet gone quiet).
    pub other_sessions: u32,
    /// The schema fingerprint the followed session carries, when two of
    /// its datagrams agree that it is not the one expected
    /// ([`SubscriberConfig::expect_schema`]): its datagrams are dropped
    /// and the replica stays empty.
    pub schema_mismatch: Option<SchemaFingerprint>,
}

#[derive(Debug)]
struct Session {
    id: SessionId,
    /// Where the session's datagrams come from: NAKs go to the source most
    /// of its believed datagrams came from, so that one forged datagram
    /// cannot redirect them.
    sources: Sources,
    /// Where its first datagram came from: NAKs go there until a datagram
    /// is believed.
    first_source: SocketAddr,
    first_heard: Instant,
    /// A sequence number claimed by one datagram but not yet believed, and
    /// that datagram's `datagram_seq`.
    pending_claim: Option<(u64, u64)>,
    /// Before the starting point: a claim two datagrams agreed on.
    reference: Option<u64>,
    /// A CycleBegin heard in one datagram only, with the positions of its
    /// cycle heard meanwhile: a cycle is used once two datagrams carry the
    /// same CycleBegin.
    pending_begin: Option<PendingBegin>,
    /// When the session first became synced.
    synced_at: Option<Instant>,
    /// `None` until a message tells where the stream stands.
    seq: Option<Sequencer>,
    /// The salt its datagrams are sealed with (authentication on): one
    /// per session.
    salt: Option<Salt>,
    /// The highest `datagram_seq` of its believed datagrams: a datagram
    /// below it is a late copy (reordered, or repeated by a relay).
    highest_datagram: Option<u64>,
    leaves: LeafTable,
    cycle: Option<CycleTracker>,
    /// The cycle before it, for snapshots completed after it ended.
    prev_cycle: Option<CycleTracker>,
    synced: bool,
    /// The key space must be verified by cycles that started at or after
    /// this before the replica is consistent (join point, or the end of the
    /// latest loss).
    needs_from: Option<SeqNum>,
    /// Key-space intervals verified as of `needs_from` or later.
    coverage: Coverage,
    /// Key-space intervals verified by any cycle of the session: the whole
    /// space means every leaf has been heard (synced).
    heard: Coverage,
    /// The newest cycle whose CycleBegin was believed (tracked or not), and
    /// its `start_seq`.
    latest_begin: Option<(CycleId, SeqNum)>,
    /// Absent leaves known before this cycle's start were last forgotten:
    /// earlier cycles' snapshots of unknown leaves may predate a forgotten
    /// removal.
    forgot_at: Option<CycleId>,
    /// Verified intervals of cycles that started after the last processed
    /// delta, by start: applied once the deltas before the cycle are.
    deferred: BTreeMap<SeqNum, Vec<(Lo, Hi)>>,
    deferred_len: usize,
    /// Key bytes held by `deferred`.
    deferred_bytes: usize,
}

impl Session {
    fn new(id: SessionId, source: SocketAddr, now: Instant) -> Self {
        Self {
            id,
            sources: Sources::new(),
            first_source: source,
            first_heard: now,
            pending_claim: None,
            reference: None,
            pending_begin: None,
            synced_at: None,
            seq: None,
            salt: None,
            highest_datagram: None,
            leaves: LeafTable::default(),
            cycle: None,
            prev_cycle: None,
            synced: false,
            needs_from: None,
            coverage: Coverage::default(),
            heard: Coverage::default(),
            latest_begin: None,
            forgot_at: None,
            deferred: BTreeMap::new(),
            deferred_len: 0,
            deferred_bytes: 0,
        }
    }

    /// Where the starting point goes, given a message that would set it at
    /// `base` (`None`: not yet, the message is dropped and later repaired).
    ///
    /// A late joiner starts at the `start_seq` of the cycle being sent, when
    /// that is at most `catch_up` deltas back, and asks for the deltas in
    /// between by NAK: then the cycle it hears first proves its replica
    /// consistent, not only synced. It waits up to one heartbeat interval
    /// for a CycleBegin; without one (or with NAK repair off, or a cycle too
    /// far back) it starts at `base`, leaving the deltas before to the
    /// snapshots.
    fn starting_point(
        &self,
        base: SeqNum,
        now: Instant,
        wait: Duration,
        cfg: &SubscriberConfig,
    ) -> Option<SeqNum> {
        if self.seq.is_some() || !cfg.nak_repair || cfg.catch_up == 0 {
            return Some(base);
        }
        match self.latest_begin {
            Some((_, start)) if start <= base && base.0 - start.0 <= cfg.catch_up => Some(start),
            Some(_) => Some(base),
            None if now >= self.first_heard + wait.min(MAX_CYCLE_WAIT) => Some(base),
            None => None,
        }
    }

    /// A Heartbeat or CycleEnd says the publisher's latest sequence number
    /// is `latest`: it may set the starting point, raises the known tail
    /// (the missing sequence numbers become holes, first NAKed at `nak_at`),
    /// or re-anchors a tail the publisher never sent. The publisher sends
    /// these after everything it sent before them, so a known end beyond
    /// `latest`, known for longer than any reordering, was never sent.
    fn latest_seq<R: Replica + ?Sized>(
        &mut self,
        now: Instant,
        latest: SeqNum,
        nak_at: Instant,
        wait: Duration,
        cfg: &SubscriberConfig,
        ctx: &mut Ctx<'_, R>,
    ) {
        let Some(base) = self.starting_point(latest, now, wait, cfg) else {
            return;
        };
        let q = self.baseline(base, now);
        let before = q.applied;
        if q.reanchor(now, latest, cfg.reorder_timeout) {
            ctx.stats.reanchors += 1;
        }
        q.saw_tail(now, latest, nak_at);
        let after = q.applied;
        self.took_back(before, after);
    }

    /// Re-anchoring took back sequence numbers above `after`, up to
    /// `before`, that were left to snapshots or declared lost but never
    /// processed (never sent, per the publisher): they are expected again.
    /// The key space verified as of later than `after` no longer says
    /// anything about the replica as of `after`: it is verified anew.
    fn took_back(&mut self, before: SeqNum, after: SeqNum) {
        if after < before {
            self.needs_from = self.needs_from.map(|n| n.min(after));
            self.coverage.drop_older_than(SeqNum(u64::MAX));
        }
    }

    /// Sets the starting point if none yet: deltas up to `base` are left to
    /// the snapshot cycle.
    fn baseline(&mut self, base: SeqNum, now: Instant) -> &mut Sequencer {
        if self.seq.is_none() {
            self.needs_from = Some(base);
        }
        self.seq.get_or_insert_with(|| Sequencer::new(base, now))
    }

    /// Decides how far the stream may be believed to go given a datagram
    /// (`datagram_seq`) whose highest sequence number is `claim`: returns the
    /// highest sequence number its messages may carry, or `None` when
    /// nothing of it can be used yet (before the starting point, until two
    /// datagrams agree).
    ///
    /// The rule: a datagram may move the known end of the stream by at most
    /// `jump`. A claim further ahead is believed once another datagram of
    /// the session claims at least as much; until then the messages beyond
    /// the limit are dropped (and repaired by NAK or snapshot once the jump
    /// is corroborated).
    fn believe(&mut self, claim: Option<u64>, datagram_seq: u64, jump: u64) -> Option<u64> {
        let tail = match (&self.seq, self.reference) {
            (Some(q), _) => Some(q.known_tail.0),
            (None, r) => r,
        };
        let Some(tail) = tail else {
            let c = claim?;
            return match self.pending_claim {
                Some((p, d)) if d != datagram_seq && c.abs_diff(p) <= jump => {
                    self.pending_claim = None;
                    let r = c.max(p);
                    self.reference = Some(r);
                    Some(r.saturating_add(jump))
                }
                _ => {
                    self.pending_claim = Some((c, datagram_seq));
                    None
                }
            };
        };
        let limit = tail.saturating_add(jump);
        let Some(c) = claim else {
            return Some(limit);
        };
        if c <= limit {
            // A believable claim from another datagram: the session has
            // moved on without corroborating the pending one.
            if self.pending_claim.is_some_and(|(_, d)| d != datagram_seq) {
                self.pending_claim = None;
            }
            return Some(limit);
        }
        match self.pending_claim {
            Some((p, d)) if d != datagram_seq && c >= p => {
                self.pending_claim = None;
                Some(limit.max(p.saturating_add(jump)))
            }
            _ => {
                self.pending_claim = Some((c, datagram_seq));
                Some(limit)
            }
        }
    }

    /// Whether CycleBegin `c`, carried by `datagram_seq`, is now believed:
    /// another datagram carried the very same CycleBegin before. Returns the
    /// positions of its cycle heard while it waited. A CycleBegin that
    /// differs replaces the one waiting.
    fn corroborate_cycle(
        &mut self,
        c: CycleBegin,
        datagram_seq: u64,
    ) -> Option<Vec<(u32, Box<[u8]>)>> {
        match self.pending_begin.take() {
            Some(p) if p.begin == c && p.datagram_seq != datagram_seq => Some(p.marks),
            Some(p) if p.begin == c => {
                self.pending_begin = Some(p);
                None
            }
            _ => {
                self.pending_begin = Some(PendingBegin {
                    begin: c,
                    datagram_seq,
                    marks: Vec::new(),
                    bytes: 0,
                });
                None
            }
        }
    }

    fn consistent(&self) -> bool {
        let Some(seq) = &self.seq else { return false };
        self.synced
            && self.coverage.is_full()
            && self.leaves.stale_count() == 0
            && seq.applied >= self.leaves.max_installed
    }
}

/// Key bytes held by an interval's bounds (plus a fixed overhead).
fn bound_len(lo: &Lo, hi: &Hi) -> usize {
    let l = match lo {
        Lo::Key(k) => k.len(),
        Lo::Start => 0,
    };
    let h = match hi {
        Hi::Key(k) => k.len(),
        Hi::End => 0,
    };
    l + h + 32
}

/// The subscriber's timers.
#[derive(Clone, Copy, Debug)]
enum SubTimer {
    /// A NAK falls due, or a hole's repair is over.
    Repair,
    /// The publisher is overdue.
    Gone,
    /// A partial fragmented message expires.
    Fragments,
    /// Missing pieces of a fragmented message are to be asked for.
    FragNak,
}

impl TimerId for SubTimer {
    const COUNT: usize = 4;
    fn index(self) -> usize {
        self as usize
    }
}

/// How long a partial fragmented message must make no progress before its
/// missing pieces are asked for: the NAK delay, but at least 5 ms, so that
/// fragments of one message still arriving back to back are not asked for.
fn frag_quiet(nak_delay: Duration) -> Duration {
    nak_delay.max(Duration::from_millis(5))
}

/// The highest sequence number a message claims exists, if it names one.
fn claim_of(m: &Message<'_>) -> Option<u64> {
    match m {
        Message::Delta(d) | Message::Retransmit(d) => Some(d.seq.0),
        Message::LeafSnapshot(l) => Some(l.leaf_seq.0),
        Message::CycleBegin(c) => Some(c.start_seq.0),
        Message::CycleEnd(c) => Some(c.end_seq.0),
        Message::Heartbeat(h) => Some(h.last_seq.0),
        _ => None,
    }
}

/// Writes one message into a datagram; its length, or `None` if it does
/// not fit.
fn write_one(buf: &mut [u8], header: &DatagramHeader, msg: &Message<'_>) -> Option<usize> {
    let mut w = DatagramWriter::new(buf, header).ok()?;
    w.push(msg).ok()?;
    Some(w.finish())
}

/// Source addresses of a session's datagrams, with counts (a few at most).
/// A CycleBegin heard in one datagram, waiting for a second.
#[derive(Debug)]
struct PendingBegin {
    begin: CycleBegin,
    datagram_seq: u64,
    /// Positions of its cycle received meanwhile, with their keys.
    marks: Vec<(u32, Box<[u8]>)>,
    /// Key bytes in `marks`.
    bytes: usize,
}

/// Most positions remembered for a cycle whose CycleBegin waits for a
/// second datagram, and their key bytes.
const MAX_PENDING_MARKS: usize = 4096;
const MAX_PENDING_MARK_BYTES: usize = 1 << 20;

/// Another session heard while the current one is followed.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    id: SessionId,
    first_heard: Instant,
    last_datagram: u64,
    /// Datagrams with increasing `datagram_seq`.
    heard: u32,
}

/// Most other sessions tracked for reporting; more (forged session ids)
/// replace the one heard least recently.
const MAX_OTHERS: usize = 8;

/// Other sessions heard on the stream while one is followed.
#[derive(Debug, Default)]
struct Others {
    list: Vec<Other>,
}

#[derive(Debug, Clone, Copy)]
struct Other {
    id: SessionId,
    first_heard: Instant,
    last_heard: Instant,
    last_datagram: u64,
    /// Datagrams with increasing `datagram_seq`.
    heard: u32,
    reported: bool,
}

/// The longest an other session must be heard, and the longest it counts
/// after it was last heard (twice this): the followed session's heartbeat
/// interval, but at most this, so that a followed session announcing a
/// long interval (up to an hour; two forged heartbeats can) cannot hide a
/// second publisher for as long.
const OTHER_PROOF_MAX: Duration = Duration::from_secs(1);

impl Other {
    /// Heard with increasing `datagram_seq` over a heartbeat interval (at
    /// most [`OTHER_PROOF_MAX`]): a live publisher, not one late or forged
    /// datagram.
    fn proven(&self, interval: Duration) -> bool {
        self.heard >= 2 && self.last_heard >= self.first_heard + interval.min(OTHER_PROOF_MAX)
    }
}

impl Others {
    /// Notes a datagram of session `id`; returns it if that session has
    /// just proven alive and was not reported yet.
    fn note(
        &mut self,
        now: Instant,
        id: SessionId,
        datagram_seq: u64,
        interval: Duration,
    ) -> Option<SessionId> {
        let i = match self.list.iter().position(|o| o.id == id) {
            Some(i) => i,
            None => {
                let fresh = Other {
                    id,
                    first_heard: now,
                    last_heard: now,
                    last_datagram: datagram_seq,
                    heard: 1,
                    reported: false,
                };
                if self.list.len() < MAX_OTHERS {
                    self.list.push(fresh);
                } else if let Some(stale) = self.list.iter_mut().min_by_key(|o| o.last_heard) {
                    *stale = fresh;
                }
                return None;
            }
        };
        let o = self.list.get_mut(i)?;
        if datagram_seq > o.last_datagram {
            o.last_datagram = datagram_seq;
            o.heard += 1;
            o.last_heard = now;
        }
        if o.reported || !o.proven(interval) {
            return None;
        }
        o.reported = true;
        Some(id)
    }

    /// Sessions proven alive and heard within the last two intervals (at
    /// most [`OTHER_PROOF_MAX`] each).
    fn live(&self, now: Instant, interval: Duration) -> u32 {
        let window = interval.min(OTHER_PROOF_MAX) * 2;
        let n = self
            .list
            .iter()
            .filter(|o| o.proven(interval) && now < o.last_heard + window)
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }
}

/// The subscriber state machine; see the [module docs](self).
#[derive(Debug)]
pub struct Subscriber {
    cfg: SubscriberConfig,
    rng: Rng,
    /// This subscriber's id in its NAKs.
    requester: u32,
    /// `datagram_seq` of the next NAK datagram.
    next_datagram_seq: u64,
    /// `datagram_seq` of the datagram being handled.
    cur_datagram_seq: u64,
    /// The datagram being handled is a late copy: below the highest
    /// `datagram_seq` believed in the session.
    cur_late: bool,
    /// Fragment requests waiting to be sent.
    frag_naks: VecDeque<Missing>,
    /// Time the replica has been consistent since the session synced.
    consistent_for: Duration,
    /// Since when it has been consistent, while it is.
    consistent_since: Option<Instant>,
    timers: Timers<SubTimer>,
    session: Option<Session>,
    /// Another session heard while the current one was alive, and how many
    /// datagrams of it in a row.
    candidate: Option<Candidate>,
    /// Other sessions heard while one is followed, for reporting.
    others: Others,
    /// The latest time the subscriber was given (for `status`).
    last_now: Option<Instant>,
    reassembler: Reassembler,
    events: EventQueue,
    stats: SubscriberStats,
    last_heard: Option<Instant>,
    heartbeat_interval: Duration,
    /// A heartbeat interval heard once, with its `datagram_seq`.
    interval_claim: Option<(Duration, u64)>,
    gone: bool,
    was_consistent: bool,
    /// The wall clock (microseconds since the Unix epoch) at an instant:
    /// to judge the freshness of a new session's heartbeats.
    wall: Option<(Instant, u64)>,
    /// The latest session whose authenticated Heartbeat was fresh: the
    /// only new session that may be entered (authentication on).
    fresh: Option<SessionId>,
    /// Seals the NAKs sent, with authentication on.
    sealer: Option<Sealer>,
    /// Opens what is received, with authentication on.
    opener: Option<Opener>,
    schema: SchemaCheck,
}

impl Subscriber {
    /// A subscriber with the given configuration.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] if the configuration is invalid.
    pub fn new(cfg: SubscriberConfig) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let sealer = match &cfg.security {
            Some(s) => Some(s.sealer(Role::Subscriber, cfg.stream)?),
            None => None,
        };
        let opener = cfg
            .security
            .as_ref()
            .map(|s| s.opener(Role::Publisher, cfg.stream, PUBLISHER_WINDOWS));
        let mut rng = Rng::new(cfg.rng_seed.unwrap_or(0x6772_6170_6576_696e));
        let requester = (rng.next_u64() >> 32) as u32;
        Ok(Self {
            rng,
            requester,
            next_datagram_seq: 0,
            cur_datagram_seq: 0,
            cur_late: false,
            frag_naks: VecDeque::new(),
            consistent_for: Duration::ZERO,
            consistent_since: None,
            timers: Timers::default(),
            reassembler: Reassembler::new(cfg.reassembly.clone())?,
            schema: SchemaCheck::new(cfg.schema.clone()),
            events: EventQueue {
                queue: VecDeque::new(),
                max: cfg.max_events,
                dropped: 0,
            },
            cfg,
            session: None,
            candidate: None,
            others: Others::default(),
            last_now: None,
            stats: SubscriberStats::default(),
            last_heard: None,
            heartbeat_interval: Duration::from_millis(100),
            interval_claim: None,
            gone: false,
            was_consistent: false,
            wall: None,
            fresh: None,
            sealer,
            opener,
        })
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &SubscriberConfig {
        &self.cfg
    }

    /// The counters.
    #[must_use]
    pub fn stats(&self) -> &SubscriberStats {
        &self.stats
    }

    /// Whether the replica is synced (every leaf heard): cheaper than
    /// [`Subscriber::status`] when that is all one needs.
    #[must_use]
    pub fn is_synced(&self) -> bool {
        self.session.as_ref().is_some_and(|s| s.synced)
    }

    /// Where the replica stands.
    #[must_use]
    pub fn status(&self) -> Status {
        let Some(s) = &self.session else {
            return Status::default();
        };
        Status {
            session: Some(s.id),
            synced: s.synced,
            consistent: s.consistent(),
            seq: s.seq.as_ref().map_or(SeqNum::NONE, |q| q.applied),
            known_seq: s.seq.as_ref().map_or(SeqNum::NONE, |q| q.known_tail),
            missing: s.seq.as_ref().map_or(0, sequencer::Sequencer::missing),
            stale_leaves: s.leaves.stale_count(),
            leaves: s.leaves.present_count(),
            cycle_progress: s.cycle.as_ref().map(|c| (c.seen(), c.leaf_count)),
            publisher_alive: self.last_heard.is_some() && !self.gone,
            other_sessions: self
                .last_now
                .map_or(0, |now| self.others.live(now, self.heartbeat_interval)),
            schema_mismatch: self.schema.mismatch(),
        }
    }

    /// The schema the followed session last announced in a StreamInfo
    /// (one datagram's word: see [`Status::schema_mismatch`] for the
    /// corroborated verdict), if it sends any.
    #[must_use]
    pub fn stream_schema(&self) -> Option<&Schema> {
        self.schema.announced()
    }

    /// Number of deltas held in the reorder buffer and in the per-leaf
    /// pending buffer, and their bytes.
    #[must_use]
    pub fn buffered(&self) -> (usize, usize) {
        let Some(s) = &self.session else {
            return (0, 0);
        };
        let (n, b) = s
            .seq
            .as_ref()
            .map_or((0, 0), |q| (q.buffered(), q.buffered_bytes()));
        (n + s.leaves.pending_count(), b + s.leaves.pending_bytes())
    }

    /// Bytes reserved and partial messages held by the reassembler (for the
    /// simulations' memory bounds).
    /// Leaves tracked, present or known absent (for the simulations'
    /// memory bounds).
    #[cfg(test)]
    pub(crate) fn tracked_leaves(&self) -> usize {
        self.session
            .as_ref()
            .map_or(0, |s| s.leaves.tracked_count())
    }

    #[cfg(test)]
    pub(crate) fn reassembly_usage(&self) -> (usize, usize) {
        (
            self.reassembler.buffered_bytes(),
            self.reassembler.partial_count(),
        )
    }

    /// The next event, if any. Call after each `handle_*` until `None`.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.queue.pop_front()
    }

    /// When [`Subscriber::handle_timeout`] must be called next, if no
    /// datagram arrives first. Then call [`Subscriber::poll_transmit`] too:
    /// NAKs fall due on this timer.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    fn policy(&self) -> RepairPolicy {
        RepairPolicy {
            nak: self.cfg.nak_repair,
            attempts: self.cfg.nak_attempts,
            retry: self.cfg.repair_timeout,
            reorder_timeout: self.cfg.reorder_timeout,
        }
    }

    /// Re-arms the timer table from the state.
    fn update_timers(&mut self) {
        let policy = self.policy();
        let hole = self
            .session
            .as_ref()
            .and_then(|s| s.seq.as_ref())
            .and_then(|q| q.deadline(&policy));
        self.timers.set_opt(SubTimer::Repair, hole);
        let gone = if self.gone {
            None
        } else {
            self.last_heard
                .and_then(|t| t.checked_add(self.heartbeat_interval * self.cfg.missed_heartbeats))
        };
        self.timers.set_opt(SubTimer::Gone, gone);
        self.timers
            .set_opt(SubTimer::Fragments, self.reassembler.poll_timeout());
        let frag_nak = if self.cfg.nak_repair {
            let queued = (!self.frag_naks.is_empty())
                .then_some(self.last_heard)
                .flatten();
            [
                queued,
                self.reassembler
                    .missing_timeout(frag_quiet(self.cfg.nak_delay), self.cfg.nak_attempts),
            ]
            .into_iter()
            .flatten()
            .min()
        } else {
            None
        };
        self.timers.set_opt(SubTimer::FragNak, frag_nak);
    }

    /// Handles timer expiry at `now`: gives up on missing sequence numbers
    /// whose repair is over, notices a silent publisher, expires partial
    /// messages. NAKs now due are handed out by
    /// [`Subscriber::poll_transmit`].
    pub fn handle_timeout(&mut self, now: Instant, replica: &mut (impl Replica + ?Sized)) {
        self.last_now = Some(now);
        self.reassembler.handle_timeout(now);
        if let Some(t) = self.last_heard {
            if !self.gone && now >= t + self.heartbeat_interval * self.cfg.missed_heartbeats {
                self.gone = true;
                self.events.push(Event::PublisherGone);
            }
        }
        self.settle(now, replica);
    }

    /// Writes the next NAK or FragNak due at `now` into `buf` (which must
    /// hold the configured maximum datagram size) and says where to send
    /// it (by unicast, to the publisher's source address), or returns
    /// `None`. Call it until `None` after every `handle_*` call.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if !self.cfg.nak_repair {
            return None;
        }
        let policy = self.policy();
        let (session, source) = {
            let s = self.session.as_ref()?;
            // The main source, or (silent for two heartbeat intervals: a
            // relay restarted elsewhere) the one heard last.
            let silent = self.heartbeat_interval * 2;
            (s.id, s.sources.main(now, silent).unwrap_or(s.first_source))
        };
        let header = DatagramHeader {
            stream: self.cfg.stream,
            session,
            datagram_seq: self.next_datagram_seq,
        };
        let overhead = if self.sealer.is_some() { OVERHEAD } else { 0 };
        let room = self
            .cfg
            .max_datagram
            .min(buf.len())
            .saturating_sub(overhead);
        let max_ranges = room.saturating_sub(HEADER_LEN + MESSAGE_HEADER_LEN + 6) / 16;
        let ranges = self
            .session
            .as_mut()
            .and_then(|s| s.seq.as_mut())
            .map(|q| q.due_naks(now, &policy, max_ranges.max(1)))
            .unwrap_or_default();
        let mut out = None;
        if !ranges.is_empty() {
            let msg = Message::Nak(Nak {
                requester: self.requester,
                ranges: NakRanges::from_slice(&ranges),
            });
            if let Some(len) = write_one(buf.get_mut(..room)?, &header, &msg) {
                self.stats.naks_sent += 1;
                self.stats.nak_ranges_sent += ranges.len() as u64;
                out = Some(len);
            }
        } else {
            if self.frag_naks.is_empty() {
                let missing = self.reassembler.poll_missing(
                    now,
                    frag_quiet(self.cfg.nak_delay),
                    self.cfg.repair_timeout,
                    self.cfg.nak_attempts,
                    MAX_FRAG_RANGES,
                );
                for m in missing {
                    if m.stream == self.cfg.stream
                        && m.session == session
                        && self.frag_naks.len() < MAX_QUEUED_FRAG_NAKS
                    {
                        self.frag_naks.push_back(m);
                    }
                }
            }
            if let Some(m) = self.frag_naks.pop_front() {
                let msg = Message::FragNak(FragNak {
                    requester: self.requester,
                    frag_id: m.frag_id,
                    ranges: FragRanges::from_slice(&m.ranges),
                });
                if let Some(len) = write_one(buf.get_mut(..room)?, &header, &msg) {
                    self.stats.frag_naks_sent += 1;
                    out = Some(len);
                }
            }
        }
        self.update_timers();
        let mut size = out?;
        self.next_datagram_seq += 1;
        if let Some(sealer) = self.sealer.as_mut() {
            // Sealing cannot fail here: `room` left space for it and the
            // datagram_seq only grows. Should it, nothing is sent.
            size = buf
                .get_mut(..room + overhead)
                .and_then(|b| sealer.seal(b, size).ok())?;
        }
        Some(Transmit {
            destination: Destination::Unicast(source),
            size,
            segment_size: None,
        })
    }

    /// Opens and seals with these keys from now on (the first seals its
    /// NAKs): a key rotation without a restart (PROTOCOL.md §11.3). The
    /// followed session's replay window is kept.
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

    /// Tells the wall clock: `wall_micros` (microseconds since the Unix
    /// epoch) at `now`. With authentication on, a new session is entered
    /// only after a Heartbeat of it stamped within [`MAX_SKEW`] of this
    /// clock, so a driver sets it before handing datagrams over (the
    /// library's drivers do, per received batch); without it no new session
    /// is entered.
    pub fn set_wall_clock(&mut self, now: Instant, wall_micros: u64) {
        self.wall = Some((now, wall_micros));
    }

    /// The wall clock at `now`, from the last [`Subscriber::set_wall_clock`].
    fn wall_at(&self, now: Instant) -> Option<u64> {
        let (at, micros) = self.wall?;
        let ahead = now.saturating_duration_since(at).as_micros();
        let behind = at.saturating_duration_since(now).as_micros();
        let ahead = u64::try_from(ahead).unwrap_or(u64::MAX);
        let behind = u64::try_from(behind).unwrap_or(u64::MAX);
        Some(micros.saturating_add(ahead).saturating_sub(behind))
    }

    /// With authentication on: whether datagrams of `session` may be used,
    /// given the messages of one of them. The followed session and the
    /// latest proven fresh may; another is proven fresh by a Heartbeat
    /// stamped within [`MAX_SKEW`] of the wall clock.
    fn is_fresh(&mut self, now: Instant, session: SessionId, decoded: &Decoded<'_>) -> bool {
        let followed = self.session.as_ref().map(|s| s.id);
        if followed == Some(session) || self.fresh == Some(session) {
            return true;
        }
        let Some(wall) = self.wall_at(now) else {
            return false;
        };
        let skew = u64::try_from(MAX_SKEW.as_micros()).unwrap_or(u64::MAX);
        let fresh = decoded
            .iter()
            .any(|m| matches!(m, Message::Heartbeat(h) if h.sent_at_micros.abs_diff(wall) <= skew));
        if fresh {
            self.fresh = Some(session);
        }
        fresh
    }

    /// The share of the time since this session first synced during which
    /// the replica was consistent, at `now` (`None` before sync).
    #[must_use]
    pub fn consistent_share(&self, now: Instant) -> Option<f64> {
        let since = self.session.as_ref()?.synced_at?;
        let total = now.saturating_duration_since(since).as_secs_f64();
        let mut on = self.consistent_for;
        if let Some(t) = self.consistent_since {
            on += now.saturating_duration_since(t);
        }
        if total <= 0.0 {
            return Some(if self.was_consistent { 1.0 } else { 0.0 });
        }
        Some((on.as_secs_f64() / total).clamp(0.0, 1.0))
    }

    /// Handles one datagram received at `now` from `remote`. Malformed,
    /// foreign and stale datagrams are dropped and counted; nothing here
    /// panics on any input. The buffer is `&mut` so that authenticated
    /// frames can later be opened in place. Then call
    /// [`Subscriber::poll_transmit`] and [`Subscriber::poll_event`].
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        datagram: &mut [u8],
        replica: &mut (impl Replica + ?Sized),
    ) {
        self.last_now = Some(now);
        self.stats.datagrams += 1;
        self.stats.bytes += datagram.len() as u64;
        let jump = self.cfg.max_seq_jump;
        let (datagram, salt): (&[u8], _) = match self.opener.as_mut() {
            None => (datagram, None),
            Some(opener) => match opener.open(now, datagram) {
                Ok(o) => match datagram.get(o.plain) {
                    Some(plain) => (plain, Some(o.salt)),
                    None => return,
                },
                Err(Refused::Malformed(e)) => {
                    *self.stats.malformed.entry(e.code()).or_default() += 1;
                    return;
                }
                Err(e) => {
                    *self.stats.refused.entry(e.code()).or_default() += 1;
                    return;
                }
            },
        };
        // Each message is parsed once, here, and kept on the stack.
        let mut decoded = Decoded::new();
        let d = match Datagram::decode_into(datagram, &mut decoded) {
            Ok(d) => d,
            Err(e) => {
                *self.stats.malformed.entry(e.code()).or_default() += 1;
                return;
            }
        };
        let header = d.header();
        if header.stream != self.cfg.stream {
            self.stats.foreign_stream += 1;
            return;
        }
        for m in decoded.iter() {
            self.stats.received.add(m.kind_byte(), m.encoded_len());
        }
        if salt.is_some() && !self.is_fresh(now, header.session, &decoded) {
            self.stats.awaiting_heartbeat += 1;
            return;
        }
        if !self.enter_session(now, remote, header.session, header.datagram_seq, replica) {
            return;
        }
        if !self.bind_salt(salt) {
            *self.stats.refused.entry("salt_conflict").or_default() += 1;
            return;
        }
        self.last_heard = Some(now);
        if self.gone {
            self.gone = false;
            self.events.push(Event::PublisherBack);
        }
        if !self.schema_admits(now, remote, &header, &decoded, replica) {
            return;
        }
        self.cur_datagram_seq = header.datagram_seq;
        let claim = decoded.iter().filter_map(|m| claim_of(&m)).max();
        let Some(limit) = self
            .session
            .as_mut()
            .and_then(|s| s.believe(claim, header.datagram_seq, jump))
        else {
            self.stats.unbelieved += 1;
            self.update_timers();
            return;
        };
        if let Some(s) = self.session.as_mut() {
            s.sources.record(remote, now);
            self.cur_late = s.highest_datagram.is_some_and(|h| header.datagram_seq < h);
            s.highest_datagram = s.highest_datagram.max(Some(header.datagram_seq));
        }
        for msg in decoded.iter() {
            if let Message::Fragment(f) = msg {
                match self
                    .reassembler
                    .handle_fragment(now, header.stream, header.session, &f)
                {
                    Ok(Some(whole)) => match whole.message() {
                        Ok(inner) => self.handle_message(now, inner, limit, replica),
                        Err(e) => *self.stats.malformed.entry(e.code()).or_default() += 1,
                    },
                    Ok(None) => {}
                    Err(_) => self.stats.fragments_rejected += 1,
                }
            } else {
                self.handle_message(now, msg, limit, replica);
            }
        }
        self.settle(now, replica);
    }

    /// With authentication on: whether `salt` is the followed session's
    /// (the first salt heard in it becomes the session's, and its replay
    /// window is never forgotten). One sender per session: a datagram of
    /// the session sealed by another sender is refused.
    fn bind_salt(&mut self, salt: Option<Salt>) -> bool {
        let (Some(salt), Some(session)) = (salt, self.session.as_mut()) else {
            return true;
        };
        match session.salt {
            Some(bound) => bound == salt,
            None => {
                session.salt = Some(salt);
                if let Some(o) = self.opener.as_mut() {
                    o.pin(Some(salt));
                }
                true
            }
        }
    }

    /// Whether datagrams of session `id` are to be used now, switching to it
    /// if it replaces a publisher that has fallen silent.
    ///
    /// A datagram of another session does not by itself end the current one:
    /// it may be a late datagram of a session that has already ended, or a
    /// second publisher wrongly sharing the stream. The switch happens when
    /// the current session has been silent for two heartbeat intervals and
    /// the other session has proven alive: datagrams with increasing
    /// `datagram_seq` (a duplicated late datagram does not count) heard over
    /// at least one heartbeat interval.
    fn enter_session(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        id: SessionId,
        datagram_seq: u64,
        replica: &mut (impl Replica + ?Sized),
    ) -> bool {
        let old = match &self.session {
            Some(s) if s.id == id => {
                self.candidate = None;
                return true;
            }
            Some(s) => {
                let c = match self.candidate {
                    Some(c) if c.id == id => {
                        let mut c = c;
                        if datagram_seq > c.last_datagram {
                            c.last_datagram = datagram_seq;
                            c.heard += 1;
                        } else if datagram_seq < c.last_datagram {
                            // Out of order (a late or forged datagram): the
                            // proof starts over from this one, so that one
                            // datagram_seq far ahead cannot block it.
                            c = Candidate {
                                id,
                                first_heard: now,
                                last_datagram: datagram_seq,
                                heard: 1,
                            };
                        }
                        c
                    }
                    _ => Candidate {
                        id,
                        first_heard: now,
                        last_datagram: datagram_seq,
                        heard: 1,
                    },
                };
                self.candidate = Some(c);
                let silent = self
                    .last_heard
                    .is_none_or(|t| now >= t + self.heartbeat_interval * 2);
                let alive = c.heard >= 2 && now >= c.first_heard + self.heartbeat_interval;
                if !silent || !alive {
                    self.stats.other_session += 1;
                    let followed = s.id;
                    // While the followed session is silent, another one is
                    // a restart being proven, not a second publisher.
                    if !silent {
                        if let Some(other) =
                            self.others
                                .note(now, id, datagram_seq, self.heartbeat_interval)
                        {
                            self.events.push(Event::OtherPublisher { followed, other });
                        }
                    }
                    return false;
                }
                Some(s.id)
            }
            None => None,
        };
        if let Some(old) = old {
            self.stats.restarts += 1;
            self.events.push(Event::PublisherRestarted { old, new: id });
            self.reassembler.forget_session(self.cfg.stream, old);
            replica.clear();
        }
        self.candidate = None;
        self.others = Others::default();
        self.events.push(Event::SessionStarted { session: id });
        self.session = Some(Session::new(id, remote, now));
        self.frag_naks.clear();
        self.consistent_for = Duration::ZERO;
        self.consistent_since = None;
        true
    }

    fn handle_message(
        &mut self,
        now: Instant,
        msg: Message<'_>,
        limit: u64,
        replica: &mut (impl Replica + ?Sized),
    ) {
        if claim_of(&msg).is_some_and(|c| c > limit) {
            self.stats.unbelieved += 1;
            return;
        }
        let nak_at = now + self.rng.up_to(self.cfg.nak_delay);
        let datagram_seq = self.cur_datagram_seq;
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let mut ctx = Ctx {
            replica,
            events: &mut self.events,
            stats: &mut self.stats,
            synced: s.synced,
            max_buffered_bytes: self.cfg.max_buffered_bytes,
        };
        match msg {
            Message::Delta(d) | Message::Retransmit(d) => {
                let retransmit = matches!(msg, Message::Retransmit(_));
                // A late copy of an original delta filling a NAKed hole is
                // a repair too: a relay answers NAKs by repeating the
                // original datagrams (PROTOCOL.md §8.3, §12.4).
                let late_copy = !retransmit && self.cur_late;
                ctx.stats.deltas_received += 1;
                let Some(base) =
                    s.starting_point(SeqNum(d.seq.0 - 1), now, self.heartbeat_interval, &self.cfg)
                else {
                    return;
                };
                let seq = s.baseline(base, now);
                let progress = (retransmit || late_copy).then_some(Progress {
                    wait: self.cfg.repair_timeout,
                    if_naked: late_copy,
                });
                let (admit, filled) = seq.admit(now, &d, nak_at, progress);
                let repaired = filled.filter(|f| retransmit || f.naked && late_copy);
                match (filled, repaired) {
                    (_, Some(f)) => {
                        ctx.stats.repaired_by_nak += 1;
                        ctx.stats.repair_latency.record(f.waited);
                    }
                    (Some(_), None) => ctx.stats.filled_late += 1,
                    (None, None) => {}
                }
                if retransmit {
                    ctx.stats.retransmits_received += 1;
                }
                if retransmit || repaired.is_some() {
                    // Someone's NAK is being answered: the same burst may
                    // bring what this subscriber misses after it.
                    ctx.stats.naks_postponed += seq.postpone_after(d.seq, nak_at);
                }
                match admit {
                    Admit::Duplicate => ctx.stats.duplicates += 1,
                    Admit::Buffered => {}
                    Admit::Next => {
                        Self::process(s, &d, &self.cfg, &mut ctx);
                        Self::drain(s, &self.cfg, &mut ctx);
                    }
                }
            }
            Message::LeafSnapshot(snap) => {
                ctx.stats.snapshots_received += 1;
                // A snapshot cannot be newer than the stream's known end:
                // the publisher sends a delta before any snapshot that
                // reflects it. One that is (a forged one, or one whose
                // delta is late) is set aside: installed, it would pin the
                // replica ahead of every delta up to its `leaf_seq`.
                let tail = s.seq.as_ref().map(|q| q.known_tail.0).or(s.reference);
                if tail.is_some_and(|t| snap.leaf_seq.0 > t) {
                    ctx.stats.snapshots_ahead += 1;
                    return;
                }
                // A late copy of a snapshot from before the last time absent
                // leaves were forgotten may predate a forgotten removal: only
                // leaves still tracked can judge it by seq.
                let old = s.forgot_at.is_some_and(|f| f.is_after(snap.cycle));
                let tracked = s.leaves.contains(snap.key);
                if old && !tracked {
                    ctx.stats.stale_snapshots += 1;
                    return;
                }
                // A leaf not tracked may have been removed without the
                // subscriber knowing when: before the starting point, or in
                // a gap. A snapshot of the newest cycle is swept by the next
                // cycles if so; an older cycle's may come after that sweep.
                // It may bring the leaf (back) only if its cycle started at
                // or after both (`needs_from`), after any such removal.
                if !tracked && s.latest_begin.is_none_or(|b| b.0 != snap.cycle) {
                    let start = [s.cycle.as_ref(), s.prev_cycle.as_ref()]
                        .into_iter()
                        .flatten()
                        .find(|t| t.id == snap.cycle)
                        .map(|t| t.start_seq)
                        .or(s.latest_begin.filter(|b| b.0 == snap.cycle).map(|b| b.1))
                        .or_else(|| {
                            // A cycle whose CycleBegin (carried by this very
                            // datagram) waits for a second copy.
                            s.pending_begin
                                .as_ref()
                                .filter(|p| p.begin.cycle == snap.cycle)
                                .map(|p| p.begin.start_seq)
                        });
                    if start.is_none_or(|st| s.needs_from.is_some_and(|n| st < n)) {
                        ctx.stats.stale_snapshots += 1;
                        return;
                    }
                }
                // A snapshot newer than the deltas processed, of a leaf held
                // exactly: the deltas in between will bring the leaf there
                // (or break its chain and make it stale). Installing it now
                // would only make the replica ahead of `seq` (inconsistent)
                // until they arrive. It is not used for the key-space proof
                // either: if the last of those deltas is lost, the leaf is
                // wrong without being stale, and a later cycle must show it.
                let applied = s.seq.as_ref().map_or(SeqNum::NONE, |q| q.applied);
                if s.leaves.is_held_before(snap.key, snap.leaf_seq, s.synced)
                    && snap.leaf_seq > applied
                {
                    ctx.stats.snapshots_deferred += 1;
                    return;
                }
                if s.leaves
                    .install(snap.key, snap.leaf_seq, snap.value, &mut ctx)
                {
                    ctx.stats.snapshots_applied += 1;
                }
                Self::mark_position(s, now, snap.cycle, snap.position, snap.key, &mut ctx);
            }
            Message::CycleBegin(c) => {
                // Not a starting point: copies of CycleBegin repeat through
                // the cycle, so `start_seq` may be long past.
                if let Some(q) = s.seq.as_mut() {
                    q.saw_tail(now, c.start_seq, nak_at);
                }
                // Only a cycle newer than any heard before: late copies of
                // older CycleBegins must not rewind anything.
                let newer = s.latest_begin.is_none_or(|(l, _)| c.cycle.is_after(l));
                if !newer {
                    // A copy of a tracked cycle that disagrees with it: one
                    // of the two is forged or corrupt, so the cycle's
                    // evidence cannot be trusted. Drop it.
                    for t in [&mut s.cycle, &mut s.prev_cycle] {
                        if t.as_ref().is_some_and(|t| {
                            t.id == c.cycle
                                && (t.start_seq != c.start_seq || t.leaf_count != c.leaf_count)
                        }) {
                            *t = None;
                            ctx.stats.cycle_conflicts += 1;
                        }
                    }
                    return;
                }
                // A cycle is used once two datagrams carry the same
                // CycleBegin (every datagram of a cycle repeats it, and the
                // publisher sends at least two): one forged CycleBegin can
                // neither hide the real cycles nor prove anything.
                let Some(early) = s.corroborate_cycle(c, datagram_seq) else {
                    return;
                };
                // Forget absences older than the start of the cycle that now
                // becomes the previous one: that cycle's late snapshots (a
                // leaf completed by fragment repair after this CycleBegin)
                // still carry a leaf_seq newer than any absence forgotten, so
                // they can be judged and used. Older cycles' cannot.
                if let Some((prev, prev_start)) = s.latest_begin {
                    let applied = s.seq.as_ref().map_or(SeqNum::NONE, |q| q.applied);
                    s.leaves.forget_absent(applied, prev_start);
                    s.forgot_at = Some(prev);
                }
                s.latest_begin = Some((c.cycle, c.start_seq));
                s.prev_cycle = s.cycle.take();
                if c.leaf_count > self.cfg.max_cycle_leaves {
                    ctx.stats.oversized_cycles += 1;
                } else {
                    ctx.stats.cycles_begun += 1;
                    s.cycle = Some(CycleTracker::new(
                        c.cycle,
                        c.start_seq,
                        c.leaf_count,
                        self.cfg.max_buffered_bytes,
                    ));
                    if c.leaf_count == 0 {
                        Self::verify(s, now, Lo::Start, Hi::End, c.start_seq, &mut ctx);
                    }
                    // Positions heard before the CycleBegin was believed.
                    for (position, key) in early {
                        Self::mark_position(s, now, c.cycle, position, &key, &mut ctx);
                    }
                }
            }
            Message::CycleEnd(c) => {
                s.latest_seq(
                    now,
                    c.end_seq,
                    nak_at,
                    self.heartbeat_interval,
                    &self.cfg,
                    &mut ctx,
                );
            }
            Message::Heartbeat(h) => {
                if h.interval_ms > 0 {
                    // At most an hour, whatever the wire says; and a change
                    // only once two heartbeats (two datagrams) agree on it,
                    // so that one forged heartbeat cannot make a healthy
                    // publisher look gone, or a fake session take over.
                    let ms = u64::from(h.interval_ms).min(3_600_000);
                    let interval = Duration::from_millis(ms);
                    if interval == self.heartbeat_interval {
                        self.interval_claim = None;
                    } else {
                        match self.interval_claim {
                            Some((v, d)) if v == interval && d != datagram_seq => {
                                self.heartbeat_interval = interval;
                                self.interval_claim = None;
                            }
                            _ => self.interval_claim = Some((interval, datagram_seq)),
                        }
                    }
                }
                s.latest_seq(
                    now,
                    h.last_seq,
                    nak_at,
                    self.heartbeat_interval,
                    &self.cfg,
                    &mut ctx,
                );
            }
            // Judged per datagram (`schema_admits`); one completed from
            // fragments (a publisher never fragments it) is ignored.
            Message::Nak(_) | Message::FragNak(_) | Message::StreamInfo(_) => {}
            Message::Fragment(_) | Message::Unknown { .. } => ctx.stats.unknown_messages += 1,
        }
    }

    /// Records that `position` of `cycle` carried `key`, and verifies the
    /// intervals this proves. The cycle is the one being heard or the one
    /// before it (a snapshot completed late, its fragments repaired, after
    /// the next cycle began still counts for its own cycle); a cycle whose
    /// CycleBegin waits for a second datagram keeps the position for when
    /// it is believed.
    fn mark_position<R: Replica + ?Sized>(
        s: &mut Session,
        now: Instant,
        cycle: CycleId,
        position: u32,
        key: &[u8],
        ctx: &mut Ctx<'_, R>,
    ) {
        let t = match (s.cycle.as_mut(), s.prev_cycle.as_mut()) {
            (Some(t), _) if t.id == cycle => t,
            (_, Some(t)) if t.id == cycle => t,
            _ => {
                if let Some(p) = s.pending_begin.as_mut().filter(|p| p.begin.cycle == cycle) {
                    if p.marks.len() < MAX_PENDING_MARKS
                        && p.bytes + key.len() <= MAX_PENDING_MARK_BYTES
                    {
                        p.bytes += key.len();
                        p.marks.push((position, key.into()));
                    }
                }
                return;
            }
        };
        let start_seq = t.start_seq;
        match t.mark(position, key) {
            Some(marked) => {
                if marked.disorder {
                    ctx.stats.bad_positions += 1;
                }
                for (lo, hi) in marked.links {
                    Self::verify(s, now, lo, hi, start_seq, ctx);
                }
            }
            None if position >= t.leaf_count => ctx.stats.bad_positions += 1,
            None => {}
        }
    }

    /// A cycle that started at `start_seq` showed that no leaf lies strictly
    /// between `lo` and `hi` but those it sent: remove ghosts there, and
    /// count the interval as verified if the cycle is recent enough.
    fn verify<R: Replica + ?Sized>(
        s: &mut Session,
        now: Instant,
        lo: Lo,
        hi: Hi,
        start_seq: SeqNum,
        ctx: &mut Ctx<'_, R>,
    ) {
        // What the cycle saw at `start_seq` can only be compared with the
        // replica once every delta up to `start_seq` has been processed.
        // Before the starting point is known, nothing can be compared.
        let caught_up = s.seq.as_ref().is_some_and(|q| q.applied >= start_seq);
        if !caught_up {
            let bytes = bound_len(&lo, &hi);
            if s.deferred_len < MAX_DEFERRED && s.deferred_bytes + bytes <= ctx.max_buffered_bytes {
                s.deferred.entry(start_seq).or_default().push((lo, hi));
                s.deferred_len += 1;
                s.deferred_bytes += bytes;
            } else {
                ctx.stats.links_dropped += 1;
            }
            return;
        }
        s.leaves.sweep_between(&lo, &hi, start_seq, ctx);
        if !s.synced {
            s.heard.insert(lo.clone(), hi.clone(), start_seq);
        }
        if s.needs_from.is_some_and(|n| start_seq >= n) {
            s.coverage.insert(lo, hi, start_seq);
        }
        if !s.synced && s.heard.is_full() {
            s.synced = true;
            ctx.synced = true;
            ctx.stats.syncs += 1;
            let applied = s.seq.as_ref().map_or(SeqNum::NONE, |q| q.applied);
            ctx.events.push(Event::Synced {
                seq: applied,
                elapsed: now.saturating_duration_since(s.first_heard),
            });
        }
    }

    /// Verifies the deferred intervals whose cycle the deltas have caught up
    /// with.
    fn run_deferred<R: Replica + ?Sized>(s: &mut Session, now: Instant, ctx: &mut Ctx<'_, R>) {
        let Some(applied) = s.seq.as_ref().map(|q| q.applied) else {
            return;
        };
        while let Some(entry) = s.deferred.first_entry() {
            if *entry.key() > applied {
                break;
            }
            let start_seq = *entry.key();
            let links = entry.remove();
            s.deferred_len -= links.len();
            s.deferred_bytes -= links
                .iter()
                .map(|(lo, hi)| bound_len(lo, hi))
                .sum::<usize>();
            for (lo, hi) in links {
                Self::verify(s, now, lo, hi, start_seq, ctx);
            }
        }
    }

    /// Processes the next delta in sequence.
    fn process<R: Replica + ?Sized>(
        s: &mut Session,
        d: &Delta<'_>,
        cfg: &SubscriberConfig,
        ctx: &mut Ctx<'_, R>,
    ) {
        let outcome = s.leaves.on_delta(
            DeltaRef {
                seq: d.seq,
                prev: d.prev_leaf_seq,
                creates: d.creates,
                key: d.key,
                payload: d.payload,
            },
            cfg.max_pending_deltas,
            cfg.max_buffered_bytes,
            ctx,
        );
        match outcome {
            DeltaOutcome::Applied { present } => {
                if present == d.removes {
                    ctx.stats.removes_mismatch += 1;
                }
                ctx.stats.deltas_applied += 1;
                if cfg.delta_events {
                    ctx.events.push(Event::DeltaApplied { seq: d.seq });
                }
            }
            DeltaOutcome::Covered => ctx.stats.deltas_covered += 1,
            DeltaOutcome::Pending => ctx.stats.deltas_pending += 1,
            DeltaOutcome::Failed => {}
        }
        if let Some(q) = s.seq.as_mut() {
            q.advance(d.seq);
        }
    }

    /// Processes buffered deltas that are now next in sequence.
    fn drain<R: Replica + ?Sized>(s: &mut Session, cfg: &SubscriberConfig, ctx: &mut Ctx<'_, R>) {
        while let Some(next) = s.seq.as_mut().and_then(|q| q.pop_next()) {
            let d = Delta {
                seq: next.seq,
                prev_leaf_seq: next.prev,
                creates: next.creates,
                removes: next.removes,
                key: &next.key,
                payload: &next.payload,
            };
            Self::process(s, &d, cfg, ctx);
        }
    }

    /// Whether a datagram of the followed session is to be used, by the
    /// schema check (PROTOCOL.md §8.2, "Schema"). On a mismatch now
    /// corroborated, reports it once and resets the session and the
    /// replica: what was applied before came from another type.
    fn schema_admits(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        header: &DatagramHeader,
        decoded: &Decoded<'_>,
        replica: &mut (impl Replica + ?Sized),
    ) -> bool {
        let info = decoded.iter().find_map(|m| match m {
            Message::StreamInfo(i) => Some(i),
            _ => None,
        });
        match self.schema.judge(header.session, header.datagram_seq, info) {
            Verdict::Use | Verdict::Recovered => true,
            Verdict::Drop => {
                self.stats.schema_dropped += 1;
                false
            }
            Verdict::Mismatch => {
                self.stats.schema_mismatches += 1;
                self.stats.schema_dropped += 1;
                if let (Some(expected), Some(found)) =
                    (self.schema.expected(), self.schema.announced())
                {
                    self.events.push(Event::SchemaMismatch {
                        session: header.session,
                        expected: expected.clone(),
                        found: found.clone(),
                    });
                }
                self.reassembler
                    .forget_session(self.cfg.stream, header.session);
                self.session = Some(Session::new(header.session, remote, now));
                self.frag_naks.clear();
                replica.clear();
                self.settle(now, replica);
                false
            }
        }
    }

    /// Declares overdue holes lost, then reports consistency changes.
    fn settle(&mut self, now: Instant, replica: &mut (impl Replica + ?Sized)) {
        let policy = self.policy();
        if let Some(s) = self.session.as_mut() {
            let mut ctx = Ctx {
                replica,
                events: &mut self.events,
                stats: &mut self.stats,
                synced: s.synced,
                max_buffered_bytes: self.cfg.max_buffered_bytes,
            };
            loop {
                let lost = s.seq.as_mut().and_then(|q| {
                    q.take_lost(
                        now,
                        &policy,
                        self.cfg.reorder_window,
                        self.cfg.max_buffered_bytes,
                    )
                });
                let Some((first, last)) = lost else { break };
                ctx.stats.gaps += 1;
                let n = (last.0 - first.0).saturating_add(1);
                ctx.stats.lost = ctx.stats.lost.saturating_add(n);
                ctx.events.push(Event::Gap { first, last });
                let needs = s.needs_from.map_or(last, |n| n.max(last));
                s.needs_from = Some(needs);
                s.coverage.drop_older_than(needs);
                Self::drain(s, &self.cfg, &mut ctx);
            }
            Self::run_deferred(s, now, &mut ctx);
            if s.synced && s.synced_at.is_none() {
                s.synced_at = Some(now);
            }
            let consistent = s.consistent();
            if consistent != self.was_consistent {
                self.was_consistent = consistent;
                self.events.push(Event::Consistency { consistent });
                if consistent {
                    self.consistent_since = Some(now);
                } else if let Some(t) = self.consistent_since.take() {
                    self.consistent_for += now.saturating_duration_since(t);
                }
            }
        }
        self.stats.events_dropped = self.events.dropped;
        self.update_timers();
    }
}

#[cfg(test)]
mod tests {
    use super::leaves::CtxParts;
    use super::*;

    /// A late joiner starts at the heard cycle's start when that is at most
    /// `catch_up` deltas back (and not ahead of it); otherwise at the first
    /// delta heard. Without a cycle heard it waits the given time, at most
    /// `MAX_CYCLE_WAIT`, then starts there too.
    #[test]
    fn the_starting_point_is_the_cycle_start_within_catch_up() {
        let t0 = Instant::now();
        let mut s = Session::new(SessionId(1), "192.0.2.1:5000".parse().unwrap(), t0);
        let mut cfg = SubscriberConfig::default();
        cfg.catch_up(10);
        let wait = Duration::from_millis(100);
        let at = |s: &Session, base: u64, cfg: &SubscriberConfig| {
            s.starting_point(SeqNum(base), t0, wait, cfg).map(|q| q.0)
        };
        // No cycle heard yet: wait, then start at the base.
        assert_eq!(at(&s, 30, &cfg), None);
        assert_eq!(
            s.starting_point(SeqNum(30), t0 + wait, wait, &cfg),
            Some(SeqNum(30))
        );
        let long = Duration::from_secs(10);
        assert_eq!(
            s.starting_point(
                SeqNum(30),
                t0 + MAX_CYCLE_WAIT - Duration::from_millis(1),
                long,
                &cfg
            ),
            None
        );
        assert_eq!(
            s.starting_point(SeqNum(30), t0 + MAX_CYCLE_WAIT, long, &cfg),
            Some(SeqNum(30))
        );
        // A cycle that started at 20.
        s.latest_begin = Some((CycleId(1), SeqNum(20)));
        assert_eq!(at(&s, 30, &cfg), Some(20), "10 back: caught up");
        assert_eq!(at(&s, 31, &cfg), Some(31), "11 back: too far");
        assert_eq!(at(&s, 19, &cfg), Some(19), "a cycle ahead of the base");
        cfg.catch_up(0);
        assert_eq!(at(&s, 30, &cfg), Some(30), "catch-up off");
        cfg.catch_up(10).nak_repair(false);
        assert_eq!(at(&s, 30, &cfg), Some(30), "no NAKs, no catch-up");
    }

    /// A CycleBegin is believed when a second datagram carries it; a copy
    /// of the first datagram is no second witness, and keeps the positions
    /// heard while the CycleBegin waits.
    #[test]
    fn a_cycle_begin_waits_for_another_datagram_and_keeps_its_marks() {
        let mut s = Session::new(
            SessionId(1),
            "192.0.2.1:5000".parse().unwrap(),
            Instant::now(),
        );
        let c = CycleBegin {
            cycle: CycleId(4),
            start_seq: SeqNum(20),
            leaf_count: 3,
        };
        assert!(s.corroborate_cycle(c, 5).is_none());
        let p = s.pending_begin.as_mut().expect("waits");
        p.marks.push((0, b"a"[..].into()));
        assert!(s.corroborate_cycle(c, 5).is_none(), "a copy");
        let marks = s.corroborate_cycle(c, 6).expect("a second datagram");
        assert_eq!(marks, vec![(0, b"a"[..].into())]);
        // Another CycleBegin replaces the one waiting, marks and all.
        assert!(s.corroborate_cycle(c, 7).is_none());
        s.pending_begin
            .as_mut()
            .unwrap()
            .marks
            .push((1, b"b"[..].into()));
        let other = CycleBegin { leaf_count: 4, ..c };
        assert!(s.corroborate_cycle(other, 8).is_none());
        assert_eq!(s.corroborate_cycle(other, 9), Some(Vec::new()));
    }

    /// A deferred interval is charged the key bytes of both bounds plus a
    /// fixed 32.
    #[test]
    fn an_interval_is_charged_its_key_bytes_and_32() {
        let key = |n: usize| vec![7u8; n].into_boxed_slice();
        assert_eq!(bound_len(&Lo::Start, &Hi::End), 32);
        assert_eq!(bound_len(&Lo::Key(key(3)), &Hi::End), 35);
        assert_eq!(bound_len(&Lo::Start, &Hi::Key(key(5))), 37);
        assert_eq!(bound_len(&Lo::Key(key(3)), &Hi::Key(key(5))), 40);
    }

    /// Missing fragments are asked for after the NAK delay, but never less
    /// than 5 ms of quiet.
    #[test]
    fn fragments_are_asked_for_after_at_least_5_ms_of_quiet() {
        assert_eq!(frag_quiet(Duration::ZERO), Duration::from_millis(5));
        assert_eq!(
            frag_quiet(Duration::from_millis(4)),
            Duration::from_millis(5)
        );
        assert_eq!(
            frag_quiet(Duration::from_millis(20)),
            Duration::from_millis(20)
        );
    }

    /// Positions heard while a CycleBegin waits for a second datagram are
    /// kept, at most 4,096 of them and 1 MiB of keys.
    #[test]
    fn positions_kept_while_a_cycle_begin_waits_are_bounded() {
        use crate::state::Typed;
        use std::collections::BTreeMap;
        let mut parts = CtxParts::new(Typed::new(BTreeMap::<u32, u32>::new()));
        let mut ctx = parts.ctx(false, 1 << 20);
        let now = Instant::now();
        let c = CycleBegin {
            cycle: CycleId(4),
            start_seq: SeqNum(0),
            leaf_count: 1 << 20,
        };
        let marks = |s: &Session| {
            let p = s.pending_begin.as_ref().unwrap();
            (p.marks.len(), p.bytes)
        };
        // By count: 4,096 one-byte keys.
        let mut s = Session::new(SessionId(1), "192.0.2.1:5000".parse().unwrap(), now);
        assert!(s.corroborate_cycle(c, 1).is_none());
        for i in 0..5_000u32 {
            Subscriber::mark_position(&mut s, now, c.cycle, i, &[7], &mut ctx);
        }
        assert_eq!(marks(&s), (4_096, 4_096));
        // By bytes: 1 MiB of 1,000-byte keys, then one that just fits.
        let mut s = Session::new(SessionId(1), "192.0.2.1:5000".parse().unwrap(), now);
        assert!(s.corroborate_cycle(c, 1).is_none());
        for i in 0..1_100u32 {
            Subscriber::mark_position(&mut s, now, c.cycle, i, &[7; 1_000], &mut ctx);
        }
        assert_eq!(marks(&s), (1_048, 1_048_000));
        Subscriber::mark_position(&mut s, now, c.cycle, 2_000, &[7; 576], &mut ctx);
        assert_eq!(marks(&s), (1_049, 1 << 20));
        Subscriber::mark_position(&mut s, now, c.cycle, 2_001, &[7], &mut ctx);
        assert_eq!(marks(&s), (1_049, 1 << 20));
        // Another cycle's positions are not kept.
        Subscriber::mark_position(&mut s, now, CycleId(5), 0, &[1], &mut ctx);
        assert_eq!(marks(&s), (1_049, 1 << 20));
    }

    /// Intervals verified by a cycle the deltas have not caught up with
    /// wait, within the byte budget (each charged its keys and 32) and a
    /// count of 2^20; those beyond are dropped and counted. Once the deltas
    /// catch up they are applied and the account returns to zero.
    #[test]
    fn deferred_intervals_are_bounded_and_accounted() {
        use crate::state::Typed;
        use std::collections::BTreeMap;
        let mut parts = CtxParts::new(Typed::new(BTreeMap::<u32, u32>::new()));
        let now = Instant::now();
        for (budget, links, kept) in [
            (100, 4, 3),
            (96, 4, 3),
            (95, 4, 2),
            (usize::MAX, MAX_DEFERRED + 1, MAX_DEFERRED),
        ] {
            let mut ctx = parts.ctx(false, budget);
            let dropped = ctx.stats.links_dropped;
            let mut s = Session::new(SessionId(1), "192.0.2.1:5000".parse().unwrap(), now);
            s.baseline(SeqNum(0), now);
            for _ in 0..links {
                Subscriber::verify(&mut s, now, Lo::Start, Hi::End, SeqNum(10), &mut ctx);
            }
            assert_eq!((s.deferred_len, s.deferred_bytes), (kept, 32 * kept));
            assert_eq!(ctx.stats.links_dropped - dropped, (links - kept) as u64);
            s.seq.as_mut().unwrap().applied = SeqNum(10);
            Subscriber::run_deferred(&mut s, now, &mut ctx);
            assert_eq!((s.deferred_len, s.deferred_bytes), (0, 0));
            assert!(s.deferred.is_empty());
            assert!(s.synced, "the whole key space, verified");
        }
        assert_eq!(parts.stats.syncs, 4);
    }

    /// Other sessions: at most `MAX_OTHERS` are tracked, a new one
    /// replacing the one heard least recently, so forged session ids cannot
    /// grow memory nor hide a real second publisher for long; each is
    /// reported once, when proven alive.
    #[test]
    fn other_sessions_are_bounded_and_reported_once() {
        let t0 = Instant::now();
        let interval = Duration::from_millis(10);
        let mut o = Others::default();
        for id in 0..20u64 {
            assert_eq!(o.note(t0, SessionId(id), 1, interval), None);
        }
        assert_eq!(o.list.len(), MAX_OTHERS);
        assert_eq!(o.live(t0, interval), 0);
        // A real one, heard over an interval with increasing datagram_seq.
        let real = SessionId(77);
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(o.note(at(1), real, 5, interval), None);
        assert_eq!(
            o.note(at(6), real, 6, interval),
            None,
            "not yet an interval"
        );
        assert_eq!(
            o.note(at(11), real, 6, interval),
            None,
            "no new datagram_seq"
        );
        assert_eq!(o.note(at(12), real, 7, interval), Some(real));
        assert_eq!(o.note(at(13), real, 8, interval), None, "reported once");
        assert_eq!(o.list.len(), MAX_OTHERS);
        assert_eq!(o.live(at(13), interval), 1);
        assert_eq!(o.live(at(13 + 19), interval), 1);
        assert_eq!(o.live(at(13 + 20), interval), 0, "quiet for two intervals");
    }
}
