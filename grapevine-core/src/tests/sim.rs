//! The simulation harness: one publisher and N subscribers, each with an
//! address, on a simulated network that carries traffic both ways (the
//! publisher's datagrams to the group, fanned out to every subscriber; the
//! subscribers' NAKs and FragNaks by unicast to the publisher's source
//! address), with one seeded RNG behind everything and faults per
//! direction: random and bursty loss, reordering (jitter), duplication
//! (late duplicates too), loss of NAKs and of repairs, partitions, publisher
//! stalls, publisher restarts (a new session at a new port), subscriber
//! restarts (a fresh `Subscriber`), and forged datagrams of the live session
//! with huge sequence numbers or small jumps.
//!
//! Invariants, checked by [`World`]:
//!
//! * at every step, a subscriber that claims consistency holds exactly the
//!   publisher's state at the sequence number it reports, with no stale
//!   leaf, and its leaf count matches its replica;
//! * at every step, every subscriber's buffers, its reassembler and the
//!   publisher's repair history stay within their configured bounds;
//! * at quiescence (faults off, a settle period), every subscriber is
//!   synced, consistent, at the publisher's latest sequence number, equal to
//!   the publisher, with nothing missing or buffered.
//!
//! Nothing here touches a real network: the addresses are documentation
//! addresses (RFC 5737) and datagrams only move between in-memory queues.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::auth::{Keyring, Security, StreamKey};
use crate::publisher::{Publisher, PublisherConfig, PublisherStats, SnapshotRate};
use crate::state::{encode, ApplyError, Digest, Replica, State, Typed};
use crate::subscriber::{Event, Subscriber, SubscriberConfig, SubscriberStats};
use crate::wire::{
    CycleBegin, CycleEnd, Datagram, DatagramHeader, DatagramWriter, Delta, Heartbeat, LeafSnapshot,
    Message,
};
use crate::{CycleId, Destination, ReassemblyConfig, SeqNum, SessionId, StreamId};

// ---------------------------------------------------------------------------
// Randomness
// ---------------------------------------------------------------------------

/// The engines' SplitMix64 (`crate::rng`), seeded for the simulation.
#[derive(Clone, Debug)]
pub(crate) struct Rng(crate::rng::Rng);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(crate::rng::Rng::from_state(seed ^ 0x5851_f42d_4c95_7f2d))
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub(crate) fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p && p > 0.0
    }

    /// One of `items`, uniformly.
    pub(crate) fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    pub(crate) fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

// ---------------------------------------------------------------------------
// The replicated test state
// ---------------------------------------------------------------------------

/// Padding bytes of a leaf: `len` bytes of [`PAD_BYTE`] on the wire, so that
/// a leaf (and a delta that sets it) can be made large enough to need
/// fragmenting. Anything else does not decode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Pad(pub(crate) u32);

const PAD_BYTE: u8 = 0xa5;

impl Serialize for Pad {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&vec![PAD_BYTE; self.0 as usize])
    }
}

impl<'de> Deserialize<'de> for Pad {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Pad;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("padding bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, b: &[u8]) -> Result<Pad, E> {
                if b.iter().all(|&x| x == PAD_BYTE) {
                    Ok(Pad(u32::try_from(b.len()).map_err(E::custom)?))
                } else {
                    Err(E::custom("not padding"))
                }
            }
        }
        d.deserialize_bytes(Visitor)
    }
}

/// One leaf: a counter, optionally padded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Val {
    pub(crate) n: i64,
    pub(crate) pad: Pad,
}

impl From<i64> for Val {
    fn from(n: i64) -> Self {
        Val { n, pad: Pad(0) }
    }
}

/// A state whose deltas are not idempotent: applying one twice, or out of
/// order, gives a different state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counters(pub(crate) BTreeMap<u16, Val>);

impl Counters {
    /// The counter of leaf `k`, if present.
    pub(crate) fn get(&self, k: u16) -> Option<i64> {
        self.0.get(&k).map(|v| v.n)
    }

    /// The counters without their padding.
    pub(crate) fn nums(&self) -> BTreeMap<u16, i64> {
        self.0.iter().map(|(k, v)| (*k, v.n)).collect()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum Op {
    Add(u16, i64),
    Set(u16, i64),
    /// Sets the counter and the padding (a large delta).
    Fat(u16, i64, Pad),
    Remove(u16),
}

impl State for Counters {
    type Key = u16;
    type Leaf = Val;
    type Delta = Op;

    fn key_of(delta: &Op) -> u16 {
        match delta {
            Op::Add(k, _) | Op::Set(k, _) | Op::Fat(k, _, _) | Op::Remove(k) => *k,
        }
    }

    fn apply(&mut self, delta: &Op) {
        match delta {
            Op::Add(k, n) => {
                let v = self.0.entry(*k).or_default();
                v.n = v.n.wrapping_add(*n);
            }
            Op::Set(k, n) => {
                self.0.insert(*k, Val::from(*n));
            }
            Op::Fat(k, n, pad) => {
                self.0.insert(*k, Val { n: *n, pad: *pad });
            }
            Op::Remove(k) => {
                self.0.remove(k);
            }
        }
    }

    fn leaf(&self, key: &u16) -> Option<&Val> {
        self.0.get(key)
    }

    fn set_leaf(&mut self, key: &u16, leaf: Option<Val>) {
        match leaf {
            Some(v) => {
                self.0.insert(*key, v);
            }
            None => {
                self.0.remove(key);
            }
        }
    }

    fn for_each_leaf(&self, f: &mut dyn FnMut(&u16, &Val)) {
        for (k, v) in &self.0 {
            f(k, v);
        }
    }

    fn leaf_count(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

fn leaf_digest(d: &mut Digest, state: &Counters, key: u16, add: bool) {
    if let Some(v) = state.0.get(&key) {
        let (k, v) = (encode(&key), encode(v));
        if add {
            d.add(&k, &v);
        } else {
            d.remove(&k, &v);
        }
    }
}

/// A replica that keeps its digest up to date leaf by leaf.
#[derive(Debug, Default)]
pub(crate) struct DigestReplica {
    pub(crate) typed: Typed<Counters>,
    pub(crate) digest: Digest,
}

impl DigestReplica {
    fn around<T>(&mut self, key: &[u8], f: impl FnOnce(&mut Typed<Counters>) -> T) -> T {
        let k: Option<u16> = crate::state::decode(key).ok();
        if let Some(k) = k {
            leaf_digest(&mut self.digest, self.typed.state(), k, false);
        }
        let out = f(&mut self.typed);
        if let Some(k) = k {
            leaf_digest(&mut self.digest, self.typed.state(), k, true);
        }
        out
    }

    pub(crate) fn state(&self) -> &Counters {
        self.typed.state()
    }
}

impl Replica for DigestReplica {
    fn apply_delta(
        &mut self,
        key: &[u8],
        payload: &[u8],
        absent_first: bool,
    ) -> Result<bool, ApplyError> {
        self.around(key, |t| t.apply_delta(key, payload, absent_first))
    }

    fn install_leaf(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), ApplyError> {
        self.around(key, |t| t.install_leaf(key, value))
    }

    fn clear(&mut self) {
        self.typed.clear();
        self.digest = Digest::default();
    }
}

// ---------------------------------------------------------------------------
// Addresses (documentation ranges, RFC 5737: never routed)
// ---------------------------------------------------------------------------

/// The stream of the simulations.
pub(crate) const STREAM: StreamId = StreamId(9);

/// The publisher's source address in its `incarnation` (a restarted
/// publisher binds a new port).
pub(crate) fn publisher_addr(incarnation: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 5000 + incarnation)
}

/// Subscriber `i`'s address.
pub(crate) fn subscriber_addr(i: usize) -> SocketAddr {
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10 + (i % 200) as u8)),
        6000,
    )
}

/// Wall clock of the simulations' heartbeats at `elapsed`.
pub(crate) fn wall_micros(elapsed: Duration) -> u64 {
    1_764_000_000_000_000 + elapsed.as_micros() as u64
}

// ---------------------------------------------------------------------------
// Publisher and subscribers
// ---------------------------------------------------------------------------

/// The publisher side: the engine, the application state, and the digest of
/// the state after every sequence number of every session.
pub(crate) struct SimPublisher {
    pub(crate) core: Publisher,
    pub(crate) state: Typed<Counters>,
    pub(crate) digest: Digest,
    /// Digest after each seq of each session: `history[session][seq]`.
    pub(crate) history: HashMap<SessionId, Vec<Digest>>,
    /// The state at seq 0 and the deltas since, to rebuild any state.
    initial: Counters,
    ops: Vec<Op>,
    born: Instant,
}

impl SimPublisher {
    pub(crate) fn new(
        cfg: PublisherConfig,
        session: SessionId,
        now: Instant,
        initial: &[(u16, Val)],
        history: HashMap<SessionId, Vec<Digest>>,
    ) -> Self {
        let mut core = Publisher::new(cfg, session, now).expect("valid config");
        let mut state = Typed::new(Counters::default());
        for &(k, v) in initial {
            state.state_mut().0.insert(k, v);
            core.track_leaf(&encode(&k)).expect("before any delta");
        }
        let digest = state.digest();
        let mut history = history;
        history.insert(session, vec![digest]);
        Self {
            core,
            initial: state.state().clone(),
            state,
            digest,
            history,
            ops: Vec::new(),
            born: now,
        }
    }

    pub(crate) fn publish(&mut self, op: &Op) -> SeqNum {
        let key = Counters::key_of(op);
        leaf_digest(&mut self.digest, self.state.state(), key, false);
        self.state.state_mut().apply(op);
        leaf_digest(&mut self.digest, self.state.state(), key, true);
        let present = self.state.state().0.contains_key(&key);
        let seq = self
            .core
            .publish(&encode(&key), &encode(op), present)
            .expect("publish");
        let h = self.history.entry(self.core.session()).or_default();
        assert_eq!(h.len() as u64, seq.0, "history is indexed by seq");
        h.push(self.digest);
        self.ops.push(op.clone());
        seq
    }

    /// The state right after `seq` of the current session.
    pub(crate) fn state_at(&self, seq: SeqNum) -> Option<Counters> {
        let n = usize::try_from(seq.0)
            .ok()
            .filter(|&n| n <= self.ops.len())?;
        let mut s = self.initial.clone();
        for op in &self.ops[..n] {
            s.apply(op);
        }
        Some(s)
    }

    /// Fires the publisher's due timers and hands every datagram it has to
    /// send at `now` to `send` (it only ever sends to the group).
    pub(crate) fn drive(
        &mut self,
        now: Instant,
        max_segments: usize,
        buf: &mut Vec<u8>,
        mut send: impl FnMut(&[u8]),
    ) {
        if self.core.poll_timeout().is_some_and(|t| t <= now) {
            self.core
                .handle_timeout(now, wall_micros(now.saturating_duration_since(self.born)));
        }
        let need = max_segments * self.core.config().max_datagram_size();
        if buf.len() < need {
            buf.resize(need, 0);
        }
        while let Some(t) = self.core.poll_transmit(now, &self.state, max_segments, buf) {
            assert_eq!(
                t.destination,
                Destination::Group,
                "a publisher sends to the group"
            );
            assert!(t.segments() <= max_segments);
            for d in t.datagrams(buf) {
                send(d);
            }
        }
    }

    /// Checks the repair history against its configured bounds.
    pub(crate) fn check_bounds(&self) -> Result<(), String> {
        let cfg = self.core.config();
        let (count, bytes, frag_bytes) = self.core.history_usage();
        if count > cfg.history_count || (count > 1 && bytes > cfg.history_bytes) {
            return Err(format!(
                "publisher history {count} deltas / {bytes} bytes exceeds {} / {}",
                cfg.history_count, cfg.history_bytes
            ));
        }
        if frag_bytes > cfg.fragment_history_bytes {
            return Err(format!(
                "publisher fragment history {frag_bytes} bytes exceeds {}",
                cfg.fragment_history_bytes
            ));
        }
        Ok(())
    }
}

/// The bounds a subscriber's memory must stay within (its configuration's
/// limits, which the configuration does not expose).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bounds {
    pub(crate) reorder_window: usize,
    pub(crate) max_pending: usize,
    pub(crate) max_buffered_bytes: usize,
    pub(crate) reassembly: (usize, usize),
}

impl Default for Bounds {
    fn default() -> Self {
        // The defaults of `SubscriberConfig` and `ReassemblyConfig`
        // (PROTOCOL.md §5: 16 MiB, 64 partials).
        Bounds {
            reorder_window: 4096,
            max_pending: 65_536,
            max_buffered_bytes: 64 << 20,
            reassembly: (16 << 20, 64),
        }
    }
}

/// Checks "consistent ⇒ equal to the publisher as of `status().seq`", with
/// no stale leaf, and that the leaf count reported is the replica's. `deep`
/// also recomputes the replica's digest from scratch. Returns whether the
/// claim was made.
pub(crate) fn check_claim(
    sub: &Subscriber,
    replica: &DigestReplica,
    publisher: &SimPublisher,
    deep: bool,
) -> Result<bool, String> {
    let st = sub.status();
    // Same state type on both sides: every delta's REMOVES flag agrees
    // with what applying it did.
    if sub.stats().removes_mismatch != 0 {
        return Err(format!(
            "{} deltas' REMOVES flag disagreed with the replica",
            sub.stats().removes_mismatch
        ));
    }
    if st.leaves != replica.state().0.len() {
        return Err(format!(
            "status reports {} leaves but the replica holds {}: {st:?}",
            st.leaves,
            replica.state().0.len()
        ));
    }
    if !st.consistent {
        return Ok(false);
    }
    if st.stale_leaves != 0 || !st.synced {
        return Err(format!("consistent but stale or not synced: {st:?}"));
    }
    let session = st.session.ok_or("consistent without a session")?;
    let want = publisher
        .history
        .get(&session)
        .and_then(|h| h.get(st.seq.0 as usize))
        .ok_or_else(|| format!("consistent at unknown seq {} of {session}", st.seq))?;
    if *want != replica.digest {
        let mine = replica.state();
        let diff: Vec<_> = if session == publisher.core.session() {
            publisher
                .state_at(st.seq)
                .map(|p| {
                    p.0.keys()
                        .chain(mine.0.keys())
                        .filter(|k| p.0.get(k) != mine.0.get(k))
                        .map(|k| (*k, p.get(*k), mine.get(*k)))
                        .collect()
                })
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        return Err(format!(
            "claims consistent at {session}/{} but differs from the publisher: \
             (key, publisher, replica) {diff:?}",
            st.seq,
        ));
    }
    if deep && replica.digest != replica.typed.digest() {
        return Err("incremental digest drifted".into());
    }
    Ok(true)
}

/// Checks a subscriber's buffers and reassembler against `b`.
pub(crate) fn check_bounds(sub: &Subscriber, b: &Bounds) -> Result<(), String> {
    let (count, bytes) = sub.buffered();
    if count > b.reorder_window + b.max_pending || bytes > 2 * b.max_buffered_bytes {
        return Err(format!(
            "buffers hold {count} deltas / {bytes} bytes, bounds {b:?}"
        ));
    }
    let (rbytes, partials) = sub.reassembly_usage();
    if rbytes > b.reassembly.0 || partials > b.reassembly.1 {
        return Err(format!(
            "reassembler holds {partials} partials / {rbytes} bytes, bounds {b:?}"
        ));
    }
    Ok(())
}

/// One subscriber of the simulation.
pub(crate) struct Peer {
    pub(crate) core: Subscriber,
    pub(crate) replica: DigestReplica,
    pub(crate) addr: SocketAddr,
    pub(crate) cfg: SubscriberConfig,
    pub(crate) bounds: Bounds,
    /// Whether it must converge at quiescence (not when its cycles are
    /// deliberately too small to track the state).
    pub(crate) must_converge: bool,
    pub(crate) joined: bool,
    /// The latest events, for diagnosis.
    pub(crate) events: VecDeque<Event>,
    pub(crate) synced_events: u64,
    /// Times the subscriber claimed consistency (checked each time).
    pub(crate) claims: u64,
    /// Counters of earlier incarnations (before subscriber restarts).
    pub(crate) retired: Vec<SubscriberStats>,
}

impl Peer {
    pub(crate) fn new(i: usize, cfg: SubscriberConfig, bounds: Bounds) -> Self {
        Self {
            core: Subscriber::new(cfg.clone()).expect("valid config"),
            replica: DigestReplica::default(),
            addr: subscriber_addr(i),
            cfg,
            bounds,
            must_converge: true,
            joined: false,
            events: VecDeque::new(),
            synced_events: 0,
            claims: 0,
            retired: Vec::new(),
        }
    }

    /// Replaces the subscriber with a fresh one (a process restart).
    pub(crate) fn restart(&mut self, seed: u64) {
        let mut cfg = self.cfg.clone();
        cfg.rng_seed(seed);
        self.retired.push(self.core.stats().clone());
        self.core = Subscriber::new(cfg).expect("valid config");
        self.replica = DigestReplica::default();
    }

    /// Drains events, checks the claim and the bounds.
    pub(crate) fn check(&mut self, publisher: &SimPublisher) -> Result<(), String> {
        while let Some(e) = self.core.poll_event() {
            if matches!(e, Event::Synced { .. }) {
                self.synced_events += 1;
            }
            if self.events.len() >= 16 {
                self.events.pop_front();
            }
            self.events.push_back(e);
        }
        let deep = self.claims.is_multiple_of(64);
        if check_claim(&self.core, &self.replica, publisher, deep)? {
            self.claims += 1;
        }
        check_bounds(&self.core, &self.bounds)
    }

    fn describe(&self) -> String {
        format!(
            "status {:?}\n  stats {}\n  buffered {:?}\n  last events {:?}",
            self.core.status(),
            brief_stats(self.core.stats()),
            self.core.buffered(),
            self.events
        )
    }
}

/// A subscriber's counters without the latency histogram's buckets.
pub(crate) fn brief_stats(s: &SubscriberStats) -> String {
    let text = format!("{s:?}");
    match (text.find("repair_latency: "), text.find(", unbelieved")) {
        (Some(a), Some(b)) if a < b => format!(
            "{}repair_latency: {} samples{}",
            &text[..a],
            s.repair_latency.count(),
            &text[b..]
        ),
        _ => text,
    }
}

// ---------------------------------------------------------------------------
// The network
// ---------------------------------------------------------------------------

/// Direction of a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Dir {
    /// Publisher to a subscriber (the group, fanned out).
    Down,
    /// Subscriber to the publisher (unicast NAKs).
    Up,
}

/// Network faults of one direction.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Faults {
    /// Chance that a datagram is lost.
    pub(crate) loss: f64,
    /// Bursts of loss (Gilbert–Elliott, per link): the chance per datagram
    /// of entering a burst, and of leaving it; in a burst all are lost.
    pub(crate) burst: Option<(f64, f64)>,
    /// Chance that a datagram is delivered twice.
    pub(crate) duplicate: f64,
    /// Extra random latency up to this (reorders datagrams).
    pub(crate) jitter: Duration,
    /// Further random delay, up to this, of a duplicate copy (late
    /// duplicates).
    pub(crate) dup_delay: Duration,
}

/// Base one-way latency.
pub(crate) const LATENCY: Duration = Duration::from_micros(200);

#[derive(Debug)]
pub(crate) struct Packet {
    pub(crate) dir: Dir,
    /// The subscriber (destination down, source up).
    pub(crate) sub: usize,
    pub(crate) from: SocketAddr,
    pub(crate) to: SocketAddr,
    pub(crate) bytes: Vec<u8>,
}

/// In-flight datagrams, by delivery time, in both directions.
#[derive(Default)]
pub(crate) struct Net {
    down: BTreeMap<(Instant, u64), Packet>,
    up: BTreeMap<(Instant, u64), Packet>,
    order: u64,
    /// Links in a loss burst.
    bursting: HashSet<(Dir, usize)>,
}

impl Net {
    /// Sends `p` under `faults`, lost in addition with chance `extra_loss`.
    /// Returns the number of copies that will arrive.
    pub(crate) fn send(
        &mut self,
        rng: &mut Rng,
        now: Instant,
        faults: &Faults,
        extra_loss: f64,
        p: Packet,
    ) -> usize {
        if let Some((enter, exit)) = faults.burst {
            let link = (p.dir, p.sub);
            if self.bursting.contains(&link) {
                if rng.chance(exit) {
                    self.bursting.remove(&link);
                }
            } else if rng.chance(enter) {
                self.bursting.insert(link);
            }
            if self.bursting.contains(&link) {
                return 0;
            }
        }
        if rng.chance(faults.loss) || rng.chance(extra_loss) {
            return 0;
        }
        let copies = if rng.chance(faults.duplicate) { 2 } else { 1 };
        for copy in 0..copies {
            let jitter_us = faults.jitter.as_micros() as u64;
            let mut delay = LATENCY + Duration::from_micros(rng.below(jitter_us + 1));
            if copy == 1 && !faults.dup_delay.is_zero() {
                let late_us = faults.dup_delay.as_micros() as u64;
                delay += Duration::from_micros(rng.below(late_us + 1));
            }
            self.push(
                now + delay,
                Packet {
                    bytes: p.bytes.clone(),
                    ..p
                },
            );
        }
        copies
    }

    /// Queues `p` for delivery at `at`, with no fault.
    pub(crate) fn push(&mut self, at: Instant, p: Packet) {
        self.order += 1;
        match p.dir {
            Dir::Down => self.down.insert((at, self.order), p),
            Dir::Up => self.up.insert((at, self.order), p),
        };
    }

    pub(crate) fn next_time(&self, dir: Dir) -> Option<Instant> {
        let q = match dir {
            Dir::Down => &self.down,
            Dir::Up => &self.up,
        };
        q.first_key_value().map(|((t, _), _)| *t)
    }

    pub(crate) fn pop_due(&mut self, dir: Dir, now: Instant) -> Option<Packet> {
        if self.next_time(dir)? > now {
            return None;
        }
        let q = match dir {
            Dir::Down => &mut self.down,
            Dir::Up => &mut self.up,
        };
        q.pop_first().map(|(_, p)| p)
    }
}

// ---------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------

/// What kind of trouble a scenario leans towards. Every profile is a draw of
/// the same harness; [`Profile::Mixed`] draws every fault freely.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Profile {
    /// Everything drawn freely.
    Mixed,
    /// The old replication runner: moderate loss, occasional restart and
    /// partition.
    Moderate,
    /// No loss, duplication, partition or forgery (restarts, stalls and
    /// jitter stay).
    Calm,
    /// Jitter far beyond the reorder timeout, late duplicates.
    Jitter,
    /// Bursts of deltas and bursts of loss.
    Bursts,
    /// Several publisher and subscriber restarts, late duplicates.
    Restarts,
    /// Partitions and publisher stalls.
    Partitions,
    /// Lost NAKs and lost repairs.
    NakLoss,
    /// Forged datagrams of the live session.
    Forgery,
    /// Large leaves and deltas, fragmented.
    Fragments,
    /// Windows of datagrams shuffled, some held back; tiny key space with
    /// heavy create/remove churn; sometimes cycles too large to track.
    Shuffle,
}

pub(crate) const PROFILES: [Profile; 11] = [
    Profile::Mixed,
    Profile::Moderate,
    Profile::Calm,
    Profile::Jitter,
    Profile::Bursts,
    Profile::Restarts,
    Profile::Partitions,
    Profile::NakLoss,
    Profile::Forgery,
    Profile::Fragments,
    Profile::Shuffle,
];

impl Profile {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Profile::Mixed => "mixed",
            Profile::Moderate => "moderate",
            Profile::Calm => "calm",
            Profile::Jitter => "jitter",
            Profile::Bursts => "bursts",
            Profile::Restarts => "restarts",
            Profile::Partitions => "partitions",
            Profile::NakLoss => "nak-loss",
            Profile::Forgery => "forgery",
            Profile::Fragments => "fragments",
            Profile::Shuffle => "shuffle",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Profile> {
        PROFILES.iter().copied().find(|p| p.name() == name)
    }
}

/// A forged datagram of the live session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Forgery {
    /// A Delta with this (huge) seq.
    Delta(u64),
    /// A Heartbeat with this (huge) last_seq.
    Heartbeat(u64),
    /// A CycleBegin this many cycles after the publisher's current one
    /// (about 2^31), with an honest start_seq.
    CycleBegin(u32),
    /// A CycleEnd with this (huge) end_seq.
    CycleEnd(u64),
    /// A LeafSnapshot with this (huge) leaf_seq.
    Snapshot(u64),
    /// A Heartbeat this far ahead of the publisher's latest seq (within
    /// `max_seq_jump`).
    JumpHeartbeat(u64),
    /// A CycleEnd this far ahead of the publisher's latest seq.
    JumpCycleEnd(u64),
}

impl Forgery {
    pub(crate) fn is_huge(self) -> bool {
        !matches!(self, Forgery::JumpHeartbeat(_) | Forgery::JumpCycleEnd(_))
    }

    /// The `i`-th huge forgery of a run, of a kind drawn from `rng`. Claims
    /// decrease from one to the next, so that no forgery corroborates an
    /// earlier one: the subscriber believes a claim beyond `max_seq_jump`
    /// once a *second* datagram claims as much, and that a forger sending
    /// two datagrams can do is outside what this harness checks.
    pub(crate) fn huge(rng: &mut Rng, i: u64) -> Forgery {
        let claim = (1u64 << 60) - i * (1 << 20);
        match rng.below(5) {
            0 => Forgery::Delta(claim),
            1 => Forgery::Heartbeat(claim),
            2 => Forgery::CycleBegin((1u32 << 31) - 1 - (i as u32) * 100_000),
            3 => Forgery::CycleEnd(claim),
            _ => Forgery::Snapshot(claim),
        }
    }
}

/// A time window during which the subscribers in `mask` are cut off.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Partition {
    pub(crate) from: Duration,
    pub(crate) to: Duration,
    pub(crate) mask: u64,
}

/// One scenario, drawn from a seed and a profile; every field can be
/// overridden by a test.
#[derive(Clone, Debug)]
pub(crate) struct Scenario {
    pub(crate) seed: u64,
    pub(crate) profile: Profile,
    pub(crate) pub_cfg: PublisherConfig,
    pub(crate) sub_cfgs: Vec<(SubscriberConfig, Bounds)>,
    /// Subscribers whose cycles are too small to track: no convergence
    /// expected.
    pub(crate) oversized: Vec<usize>,
    /// When each subscriber starts listening.
    pub(crate) joins: Vec<Duration>,
    pub(crate) initial_leaves: usize,
    pub(crate) key_space: u16,
    pub(crate) delta_gap: Duration,
    /// Up to this many deltas at a time.
    pub(crate) burst: u64,
    /// Heavy create/remove churn.
    pub(crate) churn: bool,
    /// Large values: (keys that may be large, most padding bytes).
    pub(crate) fat: Option<(u16, u32)>,
    pub(crate) down: Faults,
    pub(crate) up: Faults,
    /// Further loss of datagrams that carry repairs (retransmitted deltas,
    /// resent fragments).
    pub(crate) repair_loss: f64,
    pub(crate) partitions: Vec<Partition>,
    /// Windows in which the publisher is not driven at all (process stall).
    pub(crate) stalls: Vec<(Duration, Duration)>,
    /// Publisher restarts.
    pub(crate) restarts: Vec<Duration>,
    /// Subscriber restarts: (time, subscriber).
    pub(crate) sub_restarts: Vec<(Duration, usize)>,
    pub(crate) forgeries: Vec<(Duration, Forgery)>,
    /// Datagrams per `poll_transmit` (GSO batches).
    pub(crate) max_segments: usize,
    /// Faulty phase; then the settle period, with no fault and no delta.
    pub(crate) run: Duration,
    pub(crate) settle: Duration,
}

fn faults(r: &mut Rng, loss: &[f64], jitter_ms: &[u64]) -> Faults {
    Faults {
        loss: r.pick(loss),
        burst: r.chance(0.2).then(|| {
            (
                0.002 + r.below(20) as f64 / 1000.0,
                0.1 + r.below(40) as f64 / 100.0,
            )
        }),
        duplicate: r.pick(&[0.0, 0.0, 0.05, 0.3]),
        jitter: Duration::from_millis(r.pick(jitter_ms)),
        dup_delay: Duration::from_millis(r.pick(&[0, 0, 30, 200])),
    }
}

/// A publisher configuration drawn from `r`, cycling a state of up to
/// `key_space` leaves at least a few times a second.
pub(crate) fn draw_publisher_config(r: &mut Rng, key_space: u16, fat: bool) -> PublisherConfig {
    let min_rate = u32::from(key_space) * 5 + 100;
    let (count, bytes) = r.pick(&[
        (65_536, 16 << 20),
        (65_536, 16 << 20),
        (65_536, 16 << 20),
        (65_536, 16 << 20),
        (64, 16 << 20),
        (8, 1 << 20),
        (65_536, 4096),
        (0, 0),
    ]);
    let mut cfg = PublisherConfig::default();
    cfg.stream(STREAM)
        .max_datagram(if fat {
            r.pick(&[200, 600, 1452])
        } else {
            r.pick(&[120, 200, 600, 1452])
        })
        .snapshot_rate(SnapshotRate::LeavesPerSec(min_rate + r.below(8000) as u32))
        .heartbeat_interval(r.millis(2, 40))
        .min_cycle_interval(r.millis(1, 80))
        .tail_heartbeat(Duration::from_millis(r.pick(&[0, 1, 5, 5, 20])))
        .history(count, bytes)
        .fragment_history_bytes(r.pick(&[16 << 20, 16 << 20, 16 << 20, 64 << 10, 0]))
        .repair_rate(r.pick(&[16_000_000, 16_000_000, 16_000_000, 500_000, 50_000]))
        .repair_holdoff(Duration::from_millis(r.pick(&[10, 10, 10, 0, 50])));
    cfg
}

/// A subscriber configuration drawn from `r`, and its bounds.
pub(crate) fn draw_subscriber_config(r: &mut Rng) -> (SubscriberConfig, Bounds) {
    let mut b = Bounds {
        reorder_window: if r.chance(0.3) {
            1 + r.below(128) as usize
        } else {
            4096
        },
        max_pending: r.pick(&[1, 2, 8, 256, 65_536]),
        max_buffered_bytes: r.pick(&[64 << 20, 64 << 20, 64 << 20, 4096]),
        ..Bounds::default()
    };
    let mut reassembly = ReassemblyConfig::default();
    if r.chance(0.3) {
        let partials = 4 + r.below(60) as usize;
        reassembly
            .timeout(r.millis(200, 1000))
            .max_partials(partials)
            .max_message_size(256 << 10)
            .max_buffered_bytes(1 << 20);
        b.reassembly = (1 << 20, partials);
    }
    let mut cfg = SubscriberConfig::default();
    cfg.stream(STREAM)
        .reorder_window(b.reorder_window)
        .reorder_timeout(r.millis(1, 40))
        .max_pending_deltas(b.max_pending)
        .max_buffered_bytes(b.max_buffered_bytes)
        .missed_heartbeats(2 + r.below(4) as u32)
        .nak_repair(!r.chance(0.1))
        .nak_delay(Duration::from_millis(r.pick(&[0, 1, 2, 2, 10])))
        .repair_timeout(Duration::from_millis(r.pick(&[5, 20, 20, 50])))
        .nak_attempts(r.pick(&[1, 2, 3, 3, 5]))
        .max_seq_jump(r.pick(&[64, 1024, 8192, 8192]))
        .max_datagram(r.pick(&[100, 1452, 1452]))
        .reassembly(reassembly)
        .rng_seed(r.next_u64());
    (cfg, b)
}

impl Scenario {
    /// The scenario of `seed` under `profile`.
    pub(crate) fn draw(seed: u64, profile: Profile) -> Self {
        let mut r = Rng::new(seed ^ 0xdead_beef_0bad_f00d);
        let subscribers = 1 + r.below(4) as usize;
        let run_ms = 300 + r.below(1200);
        let run = Duration::from_millis(run_ms);
        let at = |r: &mut Rng| Duration::from_millis(r.below(run_ms));
        let joins: Vec<Duration> = (0..subscribers)
            .map(|i| {
                if i == 0 && r.chance(0.5) {
                    Duration::ZERO
                } else {
                    at(&mut r)
                }
            })
            .collect();
        let key_space = r.pick(&[4u16, 30, 80, 200, 400]);
        let fat = r
            .chance(0.1)
            .then(|| (1 + r.below(4) as u16, 100 + r.below(8000) as u32));
        let window = |r: &mut Rng, max: u64| {
            let a = at(r);
            (a, a + Duration::from_millis(10 + r.below(max)))
        };
        let mut restarts: Vec<Duration> =
            (0..r.pick(&[0, 0, 0, 1, 2])).map(|_| at(&mut r)).collect();
        restarts.sort();
        let partitions = (0..r.pick(&[0, 0, 1, 2]))
            .map(|_| {
                let (from, to) = window(&mut r, 500);
                Partition {
                    from,
                    to,
                    mask: if r.chance(0.5) {
                        u64::MAX
                    } else {
                        r.next_u64()
                    },
                }
            })
            .collect();
        let stalls = (0..r.pick(&[0, 0, 0, 1, 2]))
            .map(|_| window(&mut r, 300))
            .collect();
        let sub_restarts = (0..r.pick(&[0, 0, 0, 1, 2]))
            .map(|_| (at(&mut r), r.below(subscribers as u64) as usize))
            .collect();
        let mut forgeries: Vec<(Duration, Forgery)> = Vec::new();
        if r.chance(0.2) {
            let n = 1 + r.below(3);
            let mut times: Vec<Duration> = (0..n).map(|_| at(&mut r)).collect();
            times.sort();
            for (i, t) in times.into_iter().enumerate() {
                forgeries.push((t, Forgery::huge(&mut r, i as u64)));
            }
        }
        if r.chance(0.1) {
            for _ in 0..1 + r.below(2) {
                let k = 1 + r.below(50);
                let f = if r.chance(0.5) {
                    Forgery::JumpHeartbeat(k)
                } else {
                    Forgery::JumpCycleEnd(k)
                };
                forgeries.push((at(&mut r), f));
            }
        }
        let pub_cfg = draw_publisher_config(&mut r, key_space, fat.is_some());
        let sub_cfgs = (0..subscribers)
            .map(|_| draw_subscriber_config(&mut r))
            .collect();
        let mut sc = Scenario {
            seed,
            profile,
            pub_cfg,
            sub_cfgs,
            oversized: Vec::new(),
            joins,
            initial_leaves: r.below(u64::from(key_space) + 1) as usize,
            key_space,
            delta_gap: Duration::from_micros(100 + r.below(5000)),
            burst: r.pick(&[1, 4, 4, 50]),
            churn: false,
            fat,
            down: faults(
                &mut r,
                &[0.0, 0.01, 0.05, 0.1, 0.2, 0.3],
                &[0, 1, 10, 40, 120],
            ),
            up: faults(&mut r, &[0.0, 0.0, 0.05, 0.3], &[0, 1, 10]),
            repair_loss: r.pick(&[0.0, 0.0, 0.0, 0.2, 0.5]),
            partitions,
            stalls,
            restarts,
            sub_restarts,
            forgeries,
            max_segments: r.pick(&[1, 1, 4]),
            run,
            settle: Duration::from_secs(
                std::env::var("GRAPEVINE_SIM_SETTLE")
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(4),
            ),
        };
        sc.lean(&mut r);
        sc.secure(seed);
        sc.forgeries.sort_by_key(|f| f.0);
        sc
    }

    /// Seals every datagram in about a third of the runs, and encrypts in
    /// a third of those (PROTOCOL.md §11). A draw of its own, so the rest
    /// of each scenario is what its seed gave before authentication
    /// existed. Forgeries are then unauthenticated and refused.
    fn secure(&mut self, seed: u64) {
        let mut r = Rng::new(seed ^ 0x5ea1_5ea1_5ea1_5ea1);
        if !r.chance(0.3) {
            return;
        }
        // A datagram size too small to seal grows by what sealing adds:
        // the room for messages stays what was drawn.
        let fit = |n: usize| {
            if n < crate::wire::HEADER_LEN + 64 + crate::auth::OVERHEAD {
                n + crate::auth::OVERHEAD
            } else {
                n
            }
        };
        self.pub_cfg.max_datagram = fit(self.pub_cfg.max_datagram);
        for (c, _) in &mut self.sub_cfgs {
            c.max_datagram(fit(c.max_datagram_size()));
        }
        let key =
            StreamKey::from_bytes(std::array::from_fn(|i| (seed as u8).wrapping_add(i as u8)));
        let mut s = Security::new(Keyring::new(vec![key]).expect("one key"));
        s.encrypt(r.chance(0.33));
        self.pub_cfg.security(Some(s.clone()));
        for (c, _) in &mut self.sub_cfgs {
            c.security(Some(s.clone()));
        }
    }

    /// A quiet scenario for scripted tests: `subs` subscribers with `sub_cfg`
    /// (seeded each), all listening from the start, no fault, no scheduled
    /// event, `initial` leaves of a key space of `key_space`; the test
    /// publishes and drops what it wants (set [`World::auto_deltas`] off).
    pub(crate) fn scripted(
        pub_cfg: PublisherConfig,
        sub_cfg: &SubscriberConfig,
        subs: usize,
        initial: usize,
        key_space: u16,
    ) -> Self {
        let sub_cfgs = (0..subs)
            .map(|i| {
                let mut c = sub_cfg.clone();
                c.rng_seed(1000 + i as u64);
                (c, Bounds::default())
            })
            .collect();
        Scenario {
            seed: 0,
            profile: Profile::Calm,
            pub_cfg,
            sub_cfgs,
            oversized: Vec::new(),
            joins: vec![Duration::ZERO; subs],
            initial_leaves: initial,
            key_space,
            delta_gap: Duration::from_secs(3600),
            burst: 1,
            churn: false,
            fat: None,
            down: Faults::default(),
            up: Faults::default(),
            repair_loss: 0.0,
            partitions: Vec::new(),
            stalls: Vec::new(),
            restarts: Vec::new(),
            sub_restarts: Vec::new(),
            forgeries: Vec::new(),
            max_segments: 1,
            run: Duration::from_secs(3600),
            settle: Duration::ZERO,
        }
    }

    /// The scenario without its configurations' details.
    pub(crate) fn brief(&self) -> String {
        format!(
            "seed {} {:?}: {} subs joining {:?}, leaves {}/{}, gap {:?} burst {} churn {} fat {:?}, \
             down {:?}, up {:?}, repair loss {}, partitions {:?}, stalls {:?}, restarts {:?}, \
             sub restarts {:?}, forgeries {:?}, run {:?}; publisher: datagram {} history {}/{} \
             frag history {} repair {} B/s holdoff {:?} heartbeat {:?} cycles >= {:?} \
             security {:?}",
            self.seed,
            self.profile,
            self.sub_cfgs.len(),
            self.joins,
            self.initial_leaves,
            self.key_space,
            self.delta_gap,
            self.burst,
            self.churn,
            self.fat,
            self.down,
            self.up,
            self.repair_loss,
            self.partitions,
            self.stalls,
            self.restarts,
            self.sub_restarts,
            self.forgeries,
            self.run,
            self.pub_cfg.max_datagram,
            self.pub_cfg.history_count,
            self.pub_cfg.history_bytes,
            self.pub_cfg.fragment_history_bytes,
            self.pub_cfg.repair_rate,
            self.pub_cfg.repair_holdoff,
            self.pub_cfg.heartbeat_interval,
            self.pub_cfg.min_cycle_interval,
            self.pub_cfg
                .security
                .as_ref()
                .map(|s| if s.encrypt { "encrypt" } else { "authenticate" }),
        )
    }

    /// Biases the scenario towards its profile's trouble.
    fn lean(&mut self, r: &mut Rng) {
        let run = self.run;
        match self.profile {
            Profile::Mixed => {}
            Profile::Moderate => {
                self.down = Faults {
                    loss: r.pick(&[0.0, 0.01, 0.05, 0.2]),
                    duplicate: r.pick(&[0.0, 0.05]),
                    jitter: Duration::from_micros(r.pick(&[0, 500, 5_000])),
                    ..Faults::default()
                };
                self.up = Faults {
                    loss: self.down.loss,
                    ..Faults::default()
                };
                self.repair_loss = 0.0;
                self.stalls.clear();
                self.sub_restarts.clear();
                self.forgeries.clear();
                self.restarts = if r.chance(0.2) {
                    vec![Duration::from_millis(r.below(run.as_millis() as u64))]
                } else {
                    vec![]
                };
                self.partitions.truncate(1);
            }
            Profile::Calm => {
                for f in [&mut self.down, &mut self.up] {
                    f.loss = 0.0;
                    f.burst = None;
                    f.duplicate = 0.0;
                }
                self.repair_loss = 0.0;
                self.partitions.clear();
                self.forgeries.clear();
            }
            Profile::Jitter => {
                self.down.jitter = Duration::from_millis(100);
                self.down.duplicate = 0.3;
                self.down.dup_delay = Duration::from_millis(300);
                self.up.jitter = Duration::from_millis(20);
            }
            Profile::Bursts => {
                self.burst = 200;
                self.down.loss = self.down.loss.max(0.05);
                self.down.burst = Some((0.01, 0.2));
            }
            Profile::Restarts => {
                self.restarts = vec![run / 5, run * 2 / 5, run * 3 / 5];
                self.down.duplicate = 0.3;
                self.down.dup_delay = Duration::from_millis(200);
                self.down.jitter = Duration::from_millis(20);
                while self.sub_cfgs.len() < 4 {
                    self.sub_cfgs.push(draw_subscriber_config(r));
                }
                self.joins = vec![Duration::ZERO, run / 4, run / 2, run * 4 / 5];
                self.sub_restarts = vec![(run * 3 / 10, 0), (run * 7 / 10, 1)];
            }
            Profile::Partitions => {
                self.partitions = (0..2 + r.below(2))
                    .map(|_| {
                        let from = Duration::from_millis(r.below(run.as_millis() as u64));
                        Partition {
                            from,
                            to: from + r.millis(20, 600),
                            mask: if r.chance(0.5) {
                                u64::MAX
                            } else {
                                r.next_u64()
                            },
                        }
                    })
                    .collect();
                if self.stalls.is_empty() {
                    let a = Duration::from_millis(r.below(run.as_millis() as u64));
                    self.stalls.push((a, a + r.millis(10, 300)));
                }
            }
            Profile::NakLoss => {
                self.down.loss = self.down.loss.max(0.1);
                self.up.loss = 0.3;
                self.repair_loss = 0.5;
            }
            Profile::Forgery => {
                self.forgeries.clear();
                let n = 2 + r.below(4);
                let mut times: Vec<Duration> = (0..n)
                    .map(|_| Duration::from_millis(r.below(run.as_millis() as u64)))
                    .collect();
                times.sort();
                for (i, t) in times.into_iter().enumerate() {
                    self.forgeries.push((t, Forgery::huge(r, i as u64)));
                }
                for _ in 0..2 + r.below(4) {
                    let t = Duration::from_millis(r.below(run.as_millis() as u64));
                    let k = 1 + r.below(50);
                    let f = if r.chance(0.5) {
                        Forgery::JumpHeartbeat(k)
                    } else {
                        Forgery::JumpCycleEnd(k)
                    };
                    self.forgeries.push((t, f));
                }
            }
            Profile::Fragments => {
                self.fat = Some((1 + r.below(6) as u16, 1000 + r.below(20_000) as u32));
                self.pub_cfg = draw_publisher_config(r, self.key_space, true);
                self.down.loss = self.down.loss.clamp(0.02, 0.1);
            }
            Profile::Shuffle => {
                self.key_space = 2 + r.below(10) as u16;
                self.initial_leaves = r.below(u64::from(self.key_space) + 1) as usize;
                self.churn = true;
                let window = r.millis(1, 30);
                self.down.jitter = window;
                self.down.duplicate = r.pick(&[0.0, 0.2]);
                self.down.dup_delay = window * 10;
                self.pub_cfg
                    .max_datagram(r.pick(&[120, 300, 1452]))
                    .snapshot_rate(SnapshotRate::LeavesPerSec(2_000 + r.below(20_000) as u32))
                    .heartbeat_interval(r.millis(3, 22))
                    .min_cycle_interval(r.millis(1, 15));
                if r.chance(0.2) {
                    let i = r.below(self.sub_cfgs.len() as u64) as usize;
                    self.sub_cfgs[i]
                        .0
                        .max_cycle_leaves(u32::from(self.key_space / 2));
                    self.oversized.push(i);
                }
            }
        }
        self.joins.resize(self.sub_cfgs.len(), Duration::ZERO);
        let n = self.sub_cfgs.len();
        self.sub_restarts.retain(|&(_, i)| i < n);
    }
}

// ---------------------------------------------------------------------------
// What a run exercised
// ---------------------------------------------------------------------------

/// Counts of what runs exercised, summed over subscribers (and their
/// restarts), publishers (and their restarts) and runs.
#[derive(Clone, Debug, Default)]
pub(crate) struct Tally {
    pub(crate) runs: u64,
    /// Runs whose datagrams were sealed, and datagrams their subscribers
    /// refused (forgeries, network duplicates).
    pub(crate) sealed_runs: u64,
    pub(crate) refused: u64,
    pub(crate) claims: u64,
    pub(crate) synced_events: u64,
    // Subscribers.
    pub(crate) naks_sent: u64,
    pub(crate) frag_naks_sent: u64,
    pub(crate) repaired_by_nak: u64,
    pub(crate) repaired_by_snapshot: u64,
    pub(crate) filled_late: u64,
    pub(crate) naks_postponed: u64,
    pub(crate) retransmits_received: u64,
    pub(crate) duplicates: u64,
    pub(crate) gaps: u64,
    pub(crate) unbelieved: u64,
    pub(crate) reanchors: u64,
    pub(crate) sub_restart_events: u64,
    pub(crate) ghosts_removed: u64,
    pub(crate) publisher_restarts_seen: u64,
    // Publishers.
    pub(crate) naks_received: u64,
    pub(crate) frag_naks_received: u64,
    pub(crate) retransmits: u64,
    pub(crate) repairs_coalesced: u64,
    pub(crate) fragments_resent: u64,
    pub(crate) future_nak_heartbeats: u64,
    pub(crate) other_session_naks: u64,
    pub(crate) nak_seqs_unavailable: u64,
    pub(crate) deltas: u64,
    // The harness.
    pub(crate) restarts: u64,
    pub(crate) sub_restarts: u64,
    pub(crate) partitions: u64,
    pub(crate) stalls: u64,
    pub(crate) forged_huge: u64,
    pub(crate) forged_small: u64,
    pub(crate) naks_lost: u64,
    pub(crate) repairs_lost: u64,
    pub(crate) naks_to_old_address: u64,
    pub(crate) datagrams_down: u64,
    pub(crate) fragmented: u64,
}

impl Tally {
    pub(crate) fn add(&mut self, o: &Tally) {
        macro_rules! sum {
            ($($f:ident),*) => { $(self.$f += o.$f;)* };
        }
        sum!(
            runs,
            sealed_runs,
            refused,
            claims,
            synced_events,
            naks_sent,
            frag_naks_sent,
            repaired_by_nak,
            repaired_by_snapshot,
            filled_late,
            naks_postponed,
            retransmits_received,
            duplicates,
            gaps,
            unbelieved,
            reanchors,
            sub_restart_events,
            ghosts_removed,
            publisher_restarts_seen,
            naks_received,
            frag_naks_received,
            retransmits,
            repairs_coalesced,
            fragments_resent,
            future_nak_heartbeats,
            other_session_naks,
            nak_seqs_unavailable,
            deltas,
            restarts,
            sub_restarts,
            partitions,
            stalls,
            forged_huge,
            forged_small,
            naks_lost,
            repairs_lost,
            naks_to_old_address,
            datagrams_down,
            fragmented
        );
    }

    fn absorb_sub(&mut self, s: &SubscriberStats) {
        self.naks_sent += s.naks_sent;
        self.frag_naks_sent += s.frag_naks_sent;
        self.repaired_by_nak += s.repaired_by_nak;
        self.repaired_by_snapshot += s.lost;
        self.filled_late += s.filled_late;
        self.naks_postponed += s.naks_postponed;
        self.retransmits_received += s.retransmits_received;
        self.duplicates += s.duplicates;
        self.gaps += s.gaps;
        self.unbelieved += s.unbelieved;
        self.reanchors += s.reanchors;
        self.ghosts_removed += s.ghosts_removed;
        self.publisher_restarts_seen += s.restarts;
        self.refused += s.refused.values().sum::<u64>();
    }

    fn absorb_pub(&mut self, s: &PublisherStats) {
        self.naks_received += s.naks_received;
        self.frag_naks_received += s.frag_naks_received;
        self.retransmits += s.retransmits;
        self.repairs_coalesced += s.repairs_coalesced;
        self.fragments_resent += s.fragments_resent;
        self.future_nak_heartbeats += s.future_nak_heartbeats;
        self.other_session_naks += s.other_session_naks;
        self.nak_seqs_unavailable += s.nak_seqs_unavailable;
        self.deltas += s.deltas;
    }
}

// ---------------------------------------------------------------------------
// The world
// ---------------------------------------------------------------------------

fn in_window(w: &[(Duration, Duration)], t: Duration) -> bool {
    w.iter().any(|&(a, b)| t >= a && t < b)
}

/// Drops chosen datagrams (for scripted tests): `(direction, subscriber,
/// bytes) -> drop?`.
pub(crate) type Filter = Box<dyn FnMut(Dir, usize, &[u8]) -> bool>;

/// One publisher, its subscribers and the network between them, driven by
/// a virtual clock.
pub(crate) struct World {
    pub(crate) sc: Scenario,
    pub(crate) rng: Rng,
    pub(crate) start: Instant,
    pub(crate) now: Instant,
    pub(crate) publisher: SimPublisher,
    /// The publisher's current port offset (a restart binds a new port).
    pub(crate) incarnation: u16,
    pub(crate) subs: Vec<Peer>,
    pub(crate) net: Net,
    pub(crate) tally: Tally,
    /// Scripted drops, on top of the scenario's faults.
    pub(crate) filter: Option<Filter>,
    /// Whether the scenario's deltas are generated (off for scripted tests).
    pub(crate) auto_deltas: bool,
    next_delta: Instant,
    buf: Vec<u8>,
    nak_buf: Vec<u8>,
    /// Fragments sent in this session: (frag_id, offset), to tell resent
    /// ones (repairs) from first sendings.
    frags_sent: HashSet<(u32, u32)>,
    /// The publisher's current cycle id, as last seen on the wire.
    cycle: Option<CycleId>,
    forged: usize,
    /// `GRAPEVINE_SIM_TRACE=i`: print what subscriber `i` receives.
    trace: Option<usize>,
    restarts_done: usize,
    sub_restarts_done: Vec<bool>,
    steps: u64,
}

impl World {
    pub(crate) fn new(sc: Scenario) -> Self {
        let mut rng = Rng::new(sc.seed.wrapping_mul(0x9e37_79b9) ^ 0x51ed_270b);
        let start = Instant::now();
        let initial = Self::initial_leaves(&mut rng, &sc, sc.initial_leaves, 1);
        let publisher = SimPublisher::new(
            sc.pub_cfg.clone(),
            SessionId(rng.next_u64()),
            start,
            &initial,
            HashMap::new(),
        );
        let subs = sc
            .sub_cfgs
            .iter()
            .enumerate()
            .map(|(i, (cfg, b))| {
                let mut p = Peer::new(i, cfg.clone(), *b);
                p.must_converge = !sc.oversized.contains(&i);
                p
            })
            .collect();
        let sub_restarts_done = vec![false; sc.sub_restarts.len()];
        Self {
            rng,
            start,
            now: start,
            publisher,
            incarnation: 0,
            subs,
            net: Net::default(),
            tally: Tally::default(),
            filter: None,
            auto_deltas: true,
            next_delta: start,
            buf: Vec::new(),
            nak_buf: vec![0; 65_536],
            frags_sent: HashSet::new(),
            cycle: None,
            forged: 0,
            trace: std::env::var("GRAPEVINE_SIM_TRACE")
                .ok()
                .and_then(|s| s.parse().ok()),
            restarts_done: 0,
            sub_restarts_done,
            steps: 0,
            sc,
        }
    }

    fn initial_leaves(rng: &mut Rng, sc: &Scenario, n: usize, sign: i64) -> Vec<(u16, Val)> {
        (0..n as u16)
            .map(|k| {
                let key = k % sc.key_space;
                let pad = match sc.fat {
                    Some((keys, max)) if key < keys => Pad(rng.below(u64::from(max)) as u32),
                    _ => Pad(0),
                };
                (
                    key,
                    Val {
                        n: sign * i64::from(k),
                        pad,
                    },
                )
            })
            .collect()
    }

    pub(crate) fn pub_addr(&self) -> SocketAddr {
        publisher_addr(self.incarnation)
    }

    fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    fn end(&self) -> Instant {
        self.start + self.sc.run
    }

    fn settle_until(&self) -> Instant {
        self.end() + self.sc.settle
    }

    fn quiet(&self) -> bool {
        self.now > self.end()
    }

    fn stalled(&self) -> bool {
        !self.quiet() && in_window(&self.sc.stalls, self.elapsed())
    }

    fn cut_off(&self, sub: usize) -> bool {
        let t = self.elapsed();
        !self.quiet()
            && self
                .sc
                .partitions
                .iter()
                .any(|p| t >= p.from && t < p.to && p.mask & (1 << (sub % 64)) != 0)
    }

    fn faults(&self, dir: Dir) -> Faults {
        if self.quiet() {
            return Faults::default();
        }
        match dir {
            Dir::Down => self.sc.down,
            Dir::Up => self.sc.up,
        }
    }

    /// Runs the whole scenario, then checks quiescence.
    pub(crate) fn run(mut self) -> Result<Tally, String> {
        let until = self.settle_until();
        self.run_until(until)?;
        self.check_quiescent()?;
        Ok(self.finish())
    }

    /// Steps until the clock passes `until`.
    pub(crate) fn run_until(&mut self, until: Instant) -> Result<(), String> {
        while self.now <= until {
            self.step()?;
        }
        Ok(())
    }

    /// Runs for `d` of simulated time.
    pub(crate) fn run_for(&mut self, d: Duration) -> Result<(), String> {
        let until = self.now + d;
        self.run_until(until)
    }

    fn fail(&self, what: &str, e: String) -> String {
        format!(
            "seed {} ({}) at {:?}: {what}: {e}",
            self.sc.seed,
            self.sc.profile.name(),
            self.elapsed()
        )
    }

    /// Handles everything due at `now`, then moves the clock to the next
    /// thing that happens.
    pub(crate) fn step(&mut self) -> Result<(), String> {
        self.steps += 1;
        if self.steps > 5_000_000 {
            return Err(self.fail("step limit", "the simulation did not finish".into()));
        }
        let elapsed = self.elapsed();
        let quiet = self.quiet();
        let stalled = self.stalled();
        for (i, s) in self.subs.iter_mut().enumerate() {
            if !s.joined && elapsed >= self.sc.joins[i] {
                s.joined = true;
            }
        }
        if !quiet
            && self
                .sc
                .restarts
                .get(self.restarts_done)
                .is_some_and(|&t| elapsed >= t)
        {
            self.restarts_done += 1;
            self.restart_publisher();
        }
        for k in 0..self.sc.sub_restarts.len() {
            let (t, i) = self.sc.sub_restarts[k];
            if !quiet && !self.sub_restarts_done[k] && elapsed >= t {
                self.sub_restarts_done[k] = true;
                let seed = self.rng.next_u64();
                let s = &mut self.subs[i];
                if s.joined {
                    s.restart(seed);
                    self.tally.sub_restarts += 1;
                }
            }
        }
        if self.auto_deltas && !quiet && !stalled && self.now >= self.next_delta {
            for _ in 0..1 + self.rng.below(self.sc.burst) {
                let op = self.draw_op();
                self.publisher.publish(&op);
            }
            self.publisher
                .check_bounds()
                .map_err(|e| self.fail("publisher", e))?;
            self.next_delta = self.now + self.sc.delta_gap;
        }
        while self
            .sc
            .forgeries
            .get(self.forged)
            .is_some_and(|&(t, _)| elapsed >= t && !quiet)
        {
            let f = self.sc.forgeries[self.forged].1;
            self.forged += 1;
            self.forge(f);
        }
        if !stalled {
            // NAKs that reached the publisher's host.
            while let Some(mut p) = self.net.pop_due(Dir::Up, self.now) {
                if p.to != self.pub_addr() {
                    self.tally.naks_to_old_address += 1;
                    continue;
                }
                self.publisher
                    .core
                    .handle_datagram(self.now, p.from, &mut p.bytes);
            }
            self.drive_publisher();
            self.publisher
                .check_bounds()
                .map_err(|e| self.fail("publisher", e))?;
        }
        while let Some(mut p) = self.net.pop_due(Dir::Down, self.now) {
            let i = p.sub;
            if !self.subs[i].joined {
                continue;
            }
            let now = self.now;
            if self.trace == Some(i) {
                self.trace_datagram(i, &p);
            }
            let wall = wall_micros(now.saturating_duration_since(self.start));
            let s = &mut self.subs[i];
            s.core.set_wall_clock(now, wall);
            s.core
                .handle_datagram(now, p.from, &mut p.bytes, &mut s.replica);
            if self.trace == Some(i) {
                eprintln!(
                    "    -> {:?} buffered {:?}",
                    s.core.status(),
                    s.core.buffered()
                );
            }
            s.check(&self.publisher)
                .map_err(|e| self.fail(&format!("sub {i} after a datagram"), e))?;
            self.flush_naks(i);
        }
        for i in 0..self.subs.len() {
            let now = self.now;
            let s = &mut self.subs[i];
            if s.joined && s.core.poll_timeout().is_some_and(|t| t <= now) {
                s.core.handle_timeout(now, &mut s.replica);
                if self.trace == Some(i) {
                    eprintln!(
                        "{:?} sub{i} timeout -> {:?}",
                        now - self.start,
                        s.core.status()
                    );
                }
                s.check(&self.publisher)
                    .map_err(|e| self.fail(&format!("sub {i} after a timeout"), e))?;
                self.flush_naks(i);
            }
        }
        self.advance();
        Ok(())
    }

    fn advance(&mut self) {
        let now = self.now;
        let quiet = self.quiet();
        let stalled = self.stalled();
        let start = self.start;
        let later = |t: &Duration| {
            let at = start + *t;
            (at > now).then_some(at)
        };
        let mut next = [
            (!stalled)
                .then(|| self.publisher.core.poll_timeout())
                .flatten(),
            self.net.next_time(Dir::Down),
            (!stalled).then(|| self.net.next_time(Dir::Up)).flatten(),
            (self.auto_deltas && !quiet && !stalled).then_some(self.next_delta),
            Some(self.settle_until() + Duration::from_micros(1)),
            Some(self.end() + Duration::from_micros(1)).filter(|&t| t > now),
        ]
        .into_iter()
        .flatten()
        .chain(
            self.subs
                .iter()
                .filter(|s| s.joined)
                .filter_map(|s| s.core.poll_timeout()),
        )
        .chain(self.sc.restarts.iter().filter_map(later))
        .chain(self.sc.joins.iter().filter_map(later))
        .chain(
            self.sc
                .sub_restarts
                .iter()
                .map(|(t, _)| t)
                .filter_map(later),
        )
        .chain(self.sc.forgeries.iter().map(|(t, _)| t).filter_map(later))
        .chain(
            self.sc
                .stalls
                .iter()
                .flat_map(|&(a, b)| [a, b])
                .chain(self.sc.partitions.iter().flat_map(|p| [p.from, p.to]))
                .collect::<Vec<_>>()
                .iter()
                .filter_map(later),
        )
        .min()
        .unwrap_or(now + Duration::from_millis(1));
        if next <= now {
            next = now + Duration::from_micros(1);
        }
        self.now = next;
    }

    fn trace_datagram(&self, i: usize, p: &Packet) {
        let t = self.now - self.start;
        match Datagram::decode(&p.bytes) {
            Ok(d) => {
                let h = d.header();
                let msgs: Vec<String> = d.messages().map(|m| m.to_string()).collect();
                eprintln!(
                    "{t:?} sub{i} <- {} {}#{}: {}",
                    p.from,
                    h.session,
                    h.datagram_seq,
                    msgs.join(" | ")
                );
            }
            Err(e) => eprintln!("{t:?} sub{i} <- {}: malformed {e}", p.from),
        }
    }

    fn draw_op(&mut self) -> Op {
        let r = &mut self.rng;
        let key = r.below(u64::from(self.sc.key_space)) as u16;
        if let Some((keys, max)) = self.sc.fat {
            if r.chance(0.1) {
                let k = key % keys;
                return Op::Fat(
                    k,
                    r.below(1000) as i64,
                    Pad(1 + r.below(u64::from(max)) as u32),
                );
            }
        }
        let roll = r.below(10);
        if self.sc.churn {
            match roll {
                0..=2 => Op::Add(key, 1 + r.below(5) as i64),
                3..=4 => Op::Set(key, r.below(100) as i64),
                _ => Op::Remove(key),
            }
        } else {
            match roll {
                0..=4 => Op::Add(key, 1 + r.below(9) as i64),
                5..=6 => Op::Set(key, r.below(1000) as i64),
                _ => Op::Remove(key),
            }
        }
    }

    /// A new publisher session, at a new port, with a fresh state.
    pub(crate) fn restart_publisher(&mut self) {
        self.tally.absorb_pub(&self.publisher.core.stats());
        self.tally.restarts += 1;
        self.incarnation += 1;
        let history = std::mem::take(&mut self.publisher.history);
        let n = self.rng.below(u64::from(self.sc.key_space)) as usize;
        let fresh = Self::initial_leaves(&mut self.rng, &self.sc, n, -1);
        self.publisher = SimPublisher::new(
            self.sc.pub_cfg.clone(),
            SessionId(self.rng.next_u64()),
            self.now,
            &fresh,
            history,
        );
        self.frags_sent.clear();
        self.cycle = None;
    }

    /// Sends what the publisher has to send, fanned out to the
    /// subscribers.
    fn drive_publisher(&mut self) {
        let mut out: Vec<Vec<u8>> = Vec::new();
        let mut buf = std::mem::take(&mut self.buf);
        self.publisher
            .drive(self.now, self.sc.max_segments, &mut buf, |d| {
                out.push(d.to_vec())
            });
        self.buf = buf;
        let from = self.pub_addr();
        for d in out {
            self.tally.datagrams_down += 1;
            let repair = self.classify(&d);
            let extra = if self.quiet() || !repair {
                0.0
            } else {
                self.sc.repair_loss
            };
            let faults = self.faults(Dir::Down);
            for i in 0..self.subs.len() {
                if !self.subs[i].joined || self.cut_off(i) {
                    continue;
                }
                if let Some(f) = self.filter.as_mut() {
                    if f(Dir::Down, i, &d) {
                        continue;
                    }
                }
                let p = Packet {
                    dir: Dir::Down,
                    sub: i,
                    from,
                    to: self.subs[i].addr,
                    bytes: d.clone(),
                };
                let copies = self.net.send(&mut self.rng, self.now, &faults, extra, p);
                if copies == 0 && repair {
                    self.tally.repairs_lost += 1;
                }
            }
        }
    }

    /// Whether a publisher datagram carries a repair (a Retransmit, or a
    /// fragment sent before); notes the current cycle id.
    fn classify(&mut self, d: &[u8]) -> bool {
        let mut view = Vec::new();
        let d = if crate::auth::unverified_plain(d, &mut view) {
            &view[..]
        } else {
            d
        };
        let Ok(dg) = Datagram::decode(d) else {
            return false;
        };
        let mut repair = false;
        for m in dg.messages() {
            match m {
                Message::Retransmit(_) => repair = true,
                Message::Fragment(f) => {
                    if !self.frags_sent.insert((f.frag_id, f.offset)) {
                        repair = true;
                    } else if f.offset == 0 {
                        self.tally.fragmented += 1;
                    }
                }
                Message::CycleBegin(c) => self.cycle = Some(c.cycle),
                _ => {}
            }
        }
        repair
    }

    /// Sends subscriber `i`'s NAKs to where it addresses them.
    fn flush_naks(&mut self, i: usize) {
        let now = self.now;
        while let Some(t) = self.subs[i].core.poll_transmit(now, &mut self.nak_buf) {
            let Destination::Unicast(to) = t.destination else {
                panic!("a subscriber sends only unicast: {t:?}");
            };
            let datagrams: Vec<Vec<u8>> = t.datagrams(&self.nak_buf).map(<[u8]>::to_vec).collect();
            for d in datagrams {
                if self.cut_off(i) {
                    self.tally.naks_lost += 1;
                    continue;
                }
                if let Some(f) = self.filter.as_mut() {
                    if f(Dir::Up, i, &d) {
                        self.tally.naks_lost += 1;
                        continue;
                    }
                }
                let faults = self.faults(Dir::Up);
                let p = Packet {
                    dir: Dir::Up,
                    sub: i,
                    from: self.subs[i].addr,
                    to,
                    bytes: d,
                };
                if self.net.send(&mut self.rng, now, &faults, 0.0, p) == 0 {
                    self.tally.naks_lost += 1;
                }
            }
        }
    }

    /// Injects a forged datagram of the live session, from the publisher's
    /// (spoofed) address, to every subscriber listening.
    pub(crate) fn forge(&mut self, f: Forgery) {
        let key = encode(&(self.rng.below(u64::from(self.sc.key_space)) as u16));
        let payload = encode(&Op::Set(0, 666));
        let value = encode(&Val::from(666));
        let cycle = self.cycle.unwrap_or(CycleId(0));
        let last = self.publisher.core.last_seq().0;
        let msg = match f {
            Forgery::Delta(seq) => Message::Delta(Delta {
                seq: SeqNum(seq),
                prev_leaf_seq: SeqNum::NONE,
                creates: true,
                removes: false,
                key: &key,
                payload: &payload,
            }),
            Forgery::Heartbeat(seq) => Message::Heartbeat(Heartbeat {
                last_seq: SeqNum(seq),
                sent_at_micros: 0,
                interval_ms: 10,
            }),
            Forgery::CycleBegin(ahead) => Message::CycleBegin(CycleBegin {
                cycle: CycleId(cycle.0.wrapping_add(ahead)),
                start_seq: SeqNum(last),
                leaf_count: self.rng.below(10) as u32,
            }),
            Forgery::CycleEnd(seq) => Message::CycleEnd(CycleEnd {
                cycle,
                end_seq: SeqNum(seq),
                leaf_count: 1,
            }),
            Forgery::Snapshot(seq) => Message::LeafSnapshot(LeafSnapshot {
                cycle,
                position: 0,
                leaf_seq: SeqNum(seq),
                key: &key,
                value: Some(&value),
            }),
            Forgery::JumpHeartbeat(k) => Message::Heartbeat(Heartbeat {
                last_seq: SeqNum(last + k),
                sent_at_micros: 0,
                interval_ms: 10,
            }),
            Forgery::JumpCycleEnd(k) => Message::CycleEnd(CycleEnd {
                cycle,
                end_seq: SeqNum(last + k),
                leaf_count: 1,
            }),
        };
        let d = craft(
            STREAM,
            self.publisher.core.session(),
            self.rng.next_u64(),
            &[msg],
        );
        let mut delivered = false;
        for i in 0..self.subs.len() {
            if !self.subs[i].joined {
                continue;
            }
            delivered = true;
            self.net.push(
                self.now + LATENCY,
                Packet {
                    dir: Dir::Down,
                    sub: i,
                    from: self.pub_addr(),
                    to: self.subs[i].addr,
                    bytes: d.clone(),
                },
            );
        }
        if delivered {
            if f.is_huge() {
                self.tally.forged_huge += 1;
            } else {
                self.tally.forged_small += 1;
            }
        }
    }

    /// Every subscriber that must converge is synced, consistent, at the
    /// publisher's latest seq and equal to it, with nothing missing or
    /// buffered.
    pub(crate) fn check_quiescent(&self) -> Result<(), String> {
        let want = self.publisher.state.state();
        for (i, s) in self.subs.iter().enumerate() {
            if !s.must_converge || !s.joined {
                continue;
            }
            let st = s.core.status();
            let bad = if !(st.synced && st.consistent) {
                Some("not converged".to_string())
            } else if st.session != Some(self.publisher.core.session())
                || st.seq != self.publisher.core.last_seq()
            {
                Some(format!(
                    "at {:?}/{} but the publisher at {}/{}",
                    st.session,
                    st.seq,
                    self.publisher.core.session(),
                    self.publisher.core.last_seq()
                ))
            } else if s.replica.state() != want {
                Some(format!(
                    "differs from the publisher:\n replica   {:?}\n publisher {:?}",
                    s.replica.state().nums(),
                    want.nums()
                ))
            } else if st.leaves != want.0.len() || st.stale_leaves != 0 {
                Some("miscounts leaves".to_string())
            } else if st.missing != 0 || s.core.buffered().0 != 0 {
                Some(format!("still holds {:?} buffered", s.core.buffered()))
            } else if s.replica.typed.digest() != self.publisher.state.digest() {
                Some("digest differs".to_string())
            } else {
                None
            };
            if let Some(why) = bad {
                return Err(self.fail(
                    &format!("sub {i} at quiescence"),
                    format!(
                        "{why}\n  {}\n  publisher {:?}\n  scenario {}",
                        s.describe(),
                        self.publisher.core,
                        self.sc.brief()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The tally of the run, with the engines' counters.
    pub(crate) fn finish(mut self) -> Tally {
        let mut t = std::mem::take(&mut self.tally);
        t.runs += 1;
        t.sealed_runs += u64::from(self.sc.pub_cfg.security.is_some());
        t.absorb_pub(&self.publisher.core.stats());
        t.partitions += self.sc.partitions.len() as u64;
        t.stalls += self.sc.stalls.len() as u64;
        for s in &self.subs {
            for r in &s.retired {
                t.absorb_sub(r);
            }
            t.absorb_sub(s.core.stats());
            t.claims += s.claims;
            t.synced_events += s.synced_events;
            t.sub_restart_events += s.retired.len() as u64;
        }
        t
    }
}

/// A LeafSnapshot message (`value` `None`: a tombstone).
pub(crate) fn snap<'a>(
    cycle: u32,
    position: u32,
    leaf_seq: u64,
    key: &'a [u8],
    value: Option<&'a [u8]>,
) -> Message<'a> {
    Message::LeafSnapshot(LeafSnapshot {
        cycle: CycleId(cycle),
        position,
        leaf_seq: SeqNum(leaf_seq),
        key,
        value,
    })
}

/// A CycleBegin message.
pub(crate) fn begin(cycle: u32, start: u64, count: u32) -> Message<'static> {
    Message::CycleBegin(CycleBegin {
        cycle: CycleId(cycle),
        start_seq: SeqNum(start),
        leaf_count: count,
    })
}

/// A CycleEnd message.
pub(crate) fn end(cycle: u32, end_seq: u64, count: u32) -> Message<'static> {
    Message::CycleEnd(CycleEnd {
        cycle: CycleId(cycle),
        end_seq: SeqNum(end_seq),
        leaf_count: count,
    })
}

/// A datagram of `session` on `stream` carrying `msgs`.
pub(crate) fn craft(
    stream: StreamId,
    session: SessionId,
    datagram_seq: u64,
    msgs: &[Message<'_>],
) -> Vec<u8> {
    let mut buf = vec![0u8; 65_507];
    let header = DatagramHeader {
        stream,
        session,
        datagram_seq,
    };
    let mut w = DatagramWriter::new(&mut buf, &header).expect("room for a header");
    for m in msgs {
        w.push(m).expect("message fits");
    }
    let len = w.finish();
    buf.truncate(len);
    buf
}

/// Runs `seed` under `profile`.
pub(crate) fn run(seed: u64, profile: Profile) -> Result<Tally, String> {
    World::new(Scenario::draw(seed, profile)).run()
}
