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
//! use grapevine_core::SessionId;
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
//! // Carry every datagram from publisher to subscriber, as a network would.
//! let mut buf = vec![0u8; 1452];
//! let mut t = now;
//! for _ in 0..10 {
//!     while let Some(len) = publisher.poll_transmit(t, &state, &mut buf) {
//!         subscriber.handle_datagram(t, &buf[..len], &mut replica);
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
mod leaves;
mod sequencer;

use std::collections::{BTreeMap, VecDeque};

/// Most verified intervals held while the deltas catch up with their cycle.
const MAX_DEFERRED: usize = 1 << 20;
use std::time::{Duration, Instant};

use crate::state::{ApplyError, Replica};
use crate::wire::{Datagram, Delta, Message};
use crate::{ConfigError, CycleId, Reassembler, ReassemblyConfig, SeqNum, SessionId, StreamId};
use coverage::{Coverage, Hi, Lo};
use cycle::CycleTracker;
use leaves::{Ctx, DeltaOutcome, DeltaRef, LeafTable};
use sequencer::{Admit, Sequencer};

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

    /// Most out-of-order deltas held while waiting for a missing one
    /// (default 4096). Beyond it the missing ones are declared lost.
    pub fn reorder_window(&mut self, n: usize) -> &mut Self {
        self.reorder_window = n;
        self
    }

    /// How long a missing sequence number is waited for before it is declared
    /// lost and left to snapshot repair (default 20 ms).
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
    /// Sequence numbers were declared lost; the leaves they touched are
    /// repaired from snapshots.
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
    /// Nothing was heard from the publisher for the configured number of
    /// heartbeat intervals. The replica stays readable.
    PublisherGone,
    /// The publisher was heard again after [`Event::PublisherGone`].
    PublisherBack,
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
    /// Snapshot cycles whose start was heard.
    pub cycles_begun: u64,
    /// Times the replica became synced (once per publisher session).
    pub syncs: u64,
    /// Gaps declared.
    pub gaps: u64,
    /// Sequence numbers declared lost.
    pub lost: u64,
    /// Leaves removed as ghosts of missed deletions.
    pub ghosts_removed: u64,
    /// Deltas or leaves the application could not decode.
    pub apply_errors: u64,
    /// Publisher restarts seen.
    pub restarts: u64,
    /// Events dropped because the queue was full.
    pub events_dropped: u64,
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
    /// Leaves whose chain is broken, waiting for a snapshot.
    pub stale_leaves: usize,
    /// Present leaves held.
    pub leaves: usize,
    /// Positions received / leaf count of the cycle being heard.
    pub cycle_progress: Option<(u32, u32)>,
    /// Whether the publisher has been heard within the liveness limit.
    pub publisher_alive: bool,
}

#[derive(Debug)]
struct Session {
    id: SessionId,
    first_heard: Instant,
    /// `None` until a message tells where the stream stands.
    seq: Option<Sequencer>,
    leaves: LeafTable,
    cycle: Option<CycleTracker>,
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
    /// The newest cycle whose CycleBegin was heard (tracked or not).
    latest_cycle: Option<CycleId>,
    /// The cycle at whose start absent leaves were last forgotten: earlier
    /// cycles' snapshots of unknown leaves may predate a forgotten removal.
    forgot_at: Option<CycleId>,
    /// Verified intervals of cycles that started after the last processed
    /// delta, by start: applied once the deltas before the cycle are.
    deferred: BTreeMap<SeqNum, Vec<(Lo, Hi)>>,
    deferred_len: usize,
    /// Key bytes held by `deferred`.
    deferred_bytes: usize,
}

impl Session {
    fn new(id: SessionId, now: Instant) -> Self {
        Self {
            id,
            first_heard: now,
            seq: None,
            leaves: LeafTable::default(),
            cycle: None,
            synced: false,
            needs_from: None,
            coverage: Coverage::default(),
            heard: Coverage::default(),
            latest_cycle: None,
            forgot_at: None,
            deferred: BTreeMap::new(),
            deferred_len: 0,
            deferred_bytes: 0,
        }
    }

    /// Sets the starting point if none yet: deltas up to `base` are left to
    /// the snapshot cycle.
    fn baseline(&mut self, base: SeqNum) -> &mut Sequencer {
        if self.seq.is_none() {
            self.needs_from = Some(base);
        }
        self.seq.get_or_insert_with(|| Sequencer::new(base))
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

/// Another session heard while the current one is followed.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    id: SessionId,
    first_heard: Instant,
    last_datagram: u64,
    /// Datagrams with increasing `datagram_seq`.
    heard: u32,
}

/// The subscriber state machine; see the [module docs](self).
#[derive(Debug)]
pub struct Subscriber {
    cfg: SubscriberConfig,
    session: Option<Session>,
    /// Another session heard while the current one was alive, and how many
    /// datagrams of it in a row.
    candidate: Option<Candidate>,
    reassembler: Reassembler,
    events: EventQueue,
    stats: SubscriberStats,
    last_heard: Option<Instant>,
    heartbeat_interval: Duration,
    gone: bool,
    was_consistent: bool,
}

impl Subscriber {
    /// A subscriber with the given configuration.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] if the configuration is invalid.
    pub fn new(cfg: SubscriberConfig) -> Result<Self, ConfigError> {
        cfg.validate()?;
        Ok(Self {
            reassembler: Reassembler::new(cfg.reassembly.clone())?,
            events: EventQueue {
                queue: VecDeque::new(),
                max: cfg.max_events,
                dropped: 0,
            },
            cfg,
            session: None,
            candidate: None,
            stats: SubscriberStats::default(),
            last_heard: None,
            heartbeat_interval: Duration::from_millis(100),
            gone: false,
            was_consistent: false,
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
            stale_leaves: s.leaves.stale_count(),
            leaves: s.leaves.present_count(),
            cycle_progress: s.cycle.as_ref().map(|c| (c.seen(), c.leaf_count)),
            publisher_alive: self.last_heard.is_some() && !self.gone,
        }
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

    /// The next event, if any. Call after each `handle_*` until `None`.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.queue.pop_front()
    }

    /// When [`Subscriber::handle_timeout`] must be called next, if no
    /// datagram arrives first.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let hole = self
            .session
            .as_ref()
            .and_then(|s| s.seq.as_ref())
            .and_then(|q| q.deadline(self.cfg.reorder_timeout));
        let gone = if self.gone {
            None
        } else {
            self.last_heard
                .map(|t| t + self.heartbeat_interval * self.cfg.missed_heartbeats)
        };
        let frag = self.reassembler.poll_timeout();
        [hole, gone, frag].into_iter().flatten().min()
    }

    /// Handles timer expiry at `now`: gives up on missing sequence numbers
    /// whose wait is over, notices a silent publisher, expires partial
    /// messages.
    pub fn handle_timeout(&mut self, now: Instant, replica: &mut (impl Replica + ?Sized)) {
        self.reassembler.handle_timeout(now);
        if let Some(t) = self.last_heard {
            if !self.gone && now >= t + self.heartbeat_interval * self.cfg.missed_heartbeats {
                self.gone = true;
                self.events.push(Event::PublisherGone);
            }
        }
        self.settle(now, replica);
    }

    /// Handles one received datagram. Malformed, foreign and stale datagrams
    /// are dropped and counted; nothing here panics on any input.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        datagram: &[u8],
        replica: &mut (impl Replica + ?Sized),
    ) {
        self.stats.datagrams += 1;
        self.stats.bytes += datagram.len() as u64;
        let d = match Datagram::decode(datagram) {
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
        if !self.enter_session(now, header.session, header.datagram_seq, replica) {
            return;
        }
        self.last_heard = Some(now);
        if self.gone {
            self.gone = false;
            self.events.push(Event::PublisherBack);
        }
        for msg in d.messages() {
            if let Message::Fragment(f) = msg {
                match self
                    .reassembler
                    .handle_fragment(now, header.stream, header.session, &f)
                {
                    Ok(Some(whole)) => match whole.message() {
                        Ok(inner) => self.handle_message(now, inner, replica),
                        Err(e) => *self.stats.malformed.entry(e.code()).or_default() += 1,
                    },
                    Ok(None) => {}
                    Err(_) => self.stats.fragments_rejected += 1,
                }
            } else {
                self.handle_message(now, msg, replica);
            }
        }
        self.settle(now, replica);
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
        self.events.push(Event::SessionStarted { session: id });
        self.session = Some(Session::new(id, now));
        true
    }

    fn handle_message(
        &mut self,
        now: Instant,
        msg: Message<'_>,
        replica: &mut (impl Replica + ?Sized),
    ) {
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
                ctx.stats.deltas_received += 1;
                let base = SeqNum(d.seq.0 - 1);
                let seq = s.baseline(base);
                match seq.admit(now, &d) {
                    Admit::Duplicate => ctx.stats.duplicates += 1,
                    Admit::Buffered => {}
                    Admit::Next => {
                        Self::process(s, now, &d, &self.cfg, &mut ctx);
                        Self::drain(s, now, &self.cfg, &mut ctx);
                    }
                }
            }
            Message::LeafSnapshot(snap) => {
                ctx.stats.snapshots_received += 1;
                // A late copy of a snapshot from before the last time absent
                // leaves were forgotten may predate a forgotten removal: only
                // leaves still tracked can judge it by seq.
                let old = s.forgot_at.is_some_and(|f| f.is_after(snap.cycle));
                if old && !s.leaves.contains(snap.key) {
                    ctx.stats.stale_snapshots += 1;
                    return;
                }
                if s.leaves
                    .install(snap.key, snap.leaf_seq, snap.value, &mut ctx)
                {
                    ctx.stats.snapshots_applied += 1;
                }
                let Some(t) = s.cycle.as_mut().filter(|t| t.id == snap.cycle) else {
                    return;
                };
                let start_seq = t.start_seq;
                match t.mark(snap.position, snap.key) {
                    Some(marked) => {
                        if marked.disorder {
                            ctx.stats.bad_positions += 1;
                        }
                        for (lo, hi) in marked.links {
                            Self::verify(s, now, lo, hi, start_seq, &mut ctx);
                        }
                    }
                    None if snap.position >= t.leaf_count => ctx.stats.bad_positions += 1,
                    None => {}
                }
            }
            Message::CycleBegin(c) => {
                // Not a starting point: copies of CycleBegin repeat through
                // the cycle, so `start_seq` may be long past.
                if let Some(q) = s.seq.as_mut() {
                    q.saw_tail(now, c.start_seq);
                }
                // Only a cycle newer than any heard before: late copies of
                // older CycleBegins must not rewind anything.
                let newer = s.latest_cycle.is_none_or(|l| c.cycle.is_after(l));
                if !newer {
                    return;
                }
                s.latest_cycle = Some(c.cycle);
                let applied = s.seq.as_ref().map_or(SeqNum::NONE, |q| q.applied);
                s.leaves.forget_absent(applied, c.start_seq);
                s.forgot_at = Some(c.cycle);
                if c.leaf_count > self.cfg.max_cycle_leaves {
                    ctx.stats.oversized_cycles += 1;
                    s.cycle = None;
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
                }
            }
            Message::CycleEnd(c) => {
                s.baseline(c.end_seq).saw_tail(now, c.end_seq);
            }
            Message::Heartbeat(h) => {
                if h.interval_ms > 0 {
                    // At most an hour, whatever the wire says.
                    let ms = u64::from(h.interval_ms).min(3_600_000);
                    self.heartbeat_interval = Duration::from_millis(ms);
                }
                s.baseline(h.last_seq).saw_tail(now, h.last_seq);
            }
            Message::Nak(_) => {}
            Message::Fragment(_) | Message::Unknown { .. } => ctx.stats.unknown_messages += 1,
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
        now: Instant,
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
            DeltaOutcome::Applied => {
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
            q.advance(now, d.seq);
        }
    }

    /// Processes buffered deltas that are now next in sequence.
    fn drain<R: Replica + ?Sized>(
        s: &mut Session,
        now: Instant,
        cfg: &SubscriberConfig,
        ctx: &mut Ctx<'_, R>,
    ) {
        while let Some(next) = s.seq.as_mut().and_then(|q| q.pop_next()) {
            let d = Delta {
                seq: next.seq,
                prev_leaf_seq: next.prev,
                creates: next.creates,
                key: &next.key,
                payload: &next.payload,
            };
            Self::process(s, now, &d, cfg, ctx);
        }
    }

    /// Declares overdue holes lost, then reports consistency changes.
    fn settle(&mut self, now: Instant, replica: &mut (impl Replica + ?Sized)) {
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
                        self.cfg.reorder_timeout,
                        self.cfg.reorder_window,
                        self.cfg.max_buffered_bytes,
                    )
                });
                let Some((first, last)) = lost else { break };
                ctx.stats.gaps += 1;
                ctx.stats.lost = ctx
                    .stats
                    .lost
                    .saturating_add(last.0 - first.0)
                    .saturating_add(1);
                ctx.events.push(Event::Gap { first, last });
                let needs = s.needs_from.map_or(last, |n| n.max(last));
                s.needs_from = Some(needs);
                s.coverage.drop_older_than(needs);
                Self::drain(s, now, &self.cfg, &mut ctx);
            }
            Self::run_deferred(s, now, &mut ctx);
            let consistent = s.consistent();
            if consistent != self.was_consistent {
                self.was_consistent = consistent;
                self.events.push(Event::Consistency { consistent });
            }
        }
        self.stats.events_dropped = self.events.dropped;
    }
}
