//! The simulation harness: a seeded RNG, a test state with non-idempotent
//! deltas, a replica that keeps its digest incrementally, and a virtual
//! network driven by a virtual clock.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::publisher::{Publisher, PublisherConfig, SnapshotRate};
use crate::state::{encode, ApplyError, Digest, Replica, State, Typed};
use crate::subscriber::{Event, Subscriber, SubscriberConfig};
use crate::{SeqNum, SessionId, StreamId};

/// SplitMix64: small, fast, and deterministic for a seed.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed ^ 0x5851_f42d_4c95_7f2d)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub(crate) fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p && p > 0.0
    }
}

/// A state whose deltas are not idempotent: applying one twice, or out of
/// order, gives a different state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counters(pub(crate) BTreeMap<u16, i64>);

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum Op {
    Add(u16, i64),
    Set(u16, i64),
    Remove(u16),
}

impl State for Counters {
    type Key = u16;
    type Leaf = i64;
    type Delta = Op;

    fn key_of(delta: &Op) -> u16 {
        match delta {
            Op::Add(k, _) | Op::Set(k, _) | Op::Remove(k) => *k,
        }
    }

    fn apply(&mut self, delta: &Op) {
        match delta {
            Op::Add(k, n) => *self.0.entry(*k).or_insert(0) += n,
            Op::Set(k, n) => {
                self.0.insert(*k, *n);
            }
            Op::Remove(k) => {
                self.0.remove(k);
            }
        }
    }

    fn leaf(&self, key: &u16) -> Option<&i64> {
        self.0.get(key)
    }

    fn set_leaf(&mut self, key: &u16, leaf: Option<i64>) {
        match leaf {
            Some(v) => {
                self.0.insert(*key, v);
            }
            None => {
                self.0.remove(key);
            }
        }
    }

    fn for_each_leaf(&self, f: &mut dyn FnMut(&u16, &i64)) {
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

/// The publisher side of the simulation.
pub(crate) struct SimPublisher {
    pub(crate) core: Publisher,
    pub(crate) state: Typed<Counters>,
    pub(crate) digest: Digest,
    /// Digest after each seq of each session: `history[session][seq]`.
    pub(crate) history: HashMap<SessionId, Vec<Digest>>,
    /// The full state after each seq of the current session, for diagnosis.
    pub(crate) states: Vec<Counters>,
}

impl SimPublisher {
    pub(crate) fn new(
        cfg: PublisherConfig,
        session: SessionId,
        now: Instant,
        initial: &[(u16, i64)],
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
        let states = vec![state.state().clone()];
        Self {
            core,
            state,
            digest,
            history,
            states,
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
        self.states.push(self.state.state().clone());
        seq
    }
}

/// One subscriber of the simulation.
pub(crate) struct SimSubscriber {
    pub(crate) core: Subscriber,
    pub(crate) replica: DigestReplica,
    pub(crate) joined: bool,
    pub(crate) events: Vec<Event>,
    /// Times the subscriber claimed consistency (checked each time).
    pub(crate) consistent_claims: u64,
}

impl SimSubscriber {
    pub(crate) fn new(cfg: SubscriberConfig) -> Self {
        Self {
            core: Subscriber::new(cfg).expect("valid config"),
            replica: DigestReplica::default(),
            joined: false,
            events: Vec::new(),
            consistent_claims: 0,
        }
    }

    /// Drains events and checks the consistency claim against the
    /// publisher's history.
    pub(crate) fn check(
        &mut self,
        history: &HashMap<SessionId, Vec<Digest>>,
        states: &[Counters],
    ) -> Result<(), String> {
        while let Some(e) = self.core.poll_event() {
            self.events.push(e);
        }
        let st = self.core.status();
        if st.consistent {
            self.consistent_claims += 1;
            let session = st.session.ok_or("consistent without a session")?;
            let want = history
                .get(&session)
                .and_then(|h| h.get(st.seq.0 as usize))
                .ok_or_else(|| format!("consistent at unknown seq {} of {session}", st.seq))?;
            if *want != self.replica.digest {
                let mine = &self.replica.typed.state().0;
                let diff: Vec<_> = states
                    .get(st.seq.0 as usize)
                    .map(|p| {
                        p.0.keys()
                            .chain(mine.keys())
                            .filter(|k| p.0.get(k) != mine.get(k))
                            .map(|k| (*k, p.0.get(k).copied(), mine.get(k).copied()))
                            .collect()
                    })
                    .unwrap_or_default();
                return Err(format!(
                    "claims consistent at seq {} but differs from the publisher: \
                     (key, publisher, replica) {diff:?}\nstats {:?}\nevents {:?}",
                    st.seq,
                    self.core.stats(),
                    &self.events[self.events.len().saturating_sub(12)..],
                ));
            }
            if self.replica.digest != self.replica.typed.digest() {
                return Err("incremental digest drifted".into());
            }
        }
        Ok(())
    }
}

/// Network faults, per delivery.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Faults {
    pub(crate) loss: f64,
    pub(crate) duplicate: f64,
    /// Extra random latency up to this (reorders datagrams).
    pub(crate) jitter: Duration,
    /// Further random delay, up to this, of a duplicate copy (late
    /// duplicates).
    pub(crate) dup_delay: Duration,
}

/// A datagram in flight: delivery time, tie-breaker, destination, bytes.
type InFlight = (Instant, u64, usize, Vec<u8>);

/// In-flight datagrams, ordered by delivery time.
#[derive(Default)]
pub(crate) struct Net {
    queue: BinaryHeap<Reverse<InFlight>>,
    order: u64,
}

impl Net {
    pub(crate) fn send(
        &mut self,
        rng: &mut Rng,
        now: Instant,
        to: usize,
        faults: Faults,
        datagram: &[u8],
    ) {
        if rng.chance(faults.loss) {
            return;
        }
        let copies = if rng.chance(faults.duplicate) { 2 } else { 1 };
        for copy in 0..copies {
            let jitter_us = faults.jitter.as_micros() as u64;
            let mut delay = Duration::from_micros(200 + rng.below(jitter_us + 1));
            if copy == 1 && !faults.dup_delay.is_zero() {
                let late_us = faults.dup_delay.as_micros() as u64;
                delay += Duration::from_micros(rng.below(late_us + 1));
            }
            self.order += 1;
            self.queue
                .push(Reverse((now + delay, self.order, to, datagram.to_vec())));
        }
    }

    pub(crate) fn next_time(&self) -> Option<Instant> {
        self.queue.peek().map(|Reverse((t, ..))| *t)
    }

    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(usize, Vec<u8>)> {
        if self.next_time()? > now {
            return None;
        }
        self.queue.pop().map(|Reverse((_, _, to, d))| (to, d))
    }
}

/// A small, fast-cycling publisher configuration for simulations.
pub(crate) fn sim_publisher_config(rng: &mut Rng) -> PublisherConfig {
    let mut cfg = PublisherConfig::default();
    cfg.stream(StreamId(9))
        .max_datagram([200, 600, 1452][rng.below(3) as usize])
        .snapshot_rate(SnapshotRate::LeavesPerSec(500 + rng.below(4000) as u32))
        .heartbeat_interval(Duration::from_millis(5 + rng.below(20)))
        .min_cycle_interval(Duration::from_millis(10 + rng.below(50)));
    cfg
}

pub(crate) fn sim_subscriber_config(rng: &mut Rng) -> SubscriberConfig {
    let mut cfg = SubscriberConfig::default();
    cfg.stream(StreamId(9))
        .reorder_window(4 + rng.below(64) as usize)
        .reorder_timeout(Duration::from_millis(1 + rng.below(20)))
        .max_pending_deltas(1 + rng.below(256) as usize)
        .missed_heartbeats(3);
    cfg
}
