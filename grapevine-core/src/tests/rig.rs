//! A hand-driven rig: one publisher, one subscriber, and a test that decides
//! which datagrams arrive, which NAKs reach the publisher, and when timers
//! fire. Every step checks the claim "consistent ⇒ equal to the publisher
//! as of `status().seq`", the leaf counts and the memory bounds.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::sim::{
    check_bounds, check_claim, publisher_addr, subscriber_addr, Bounds, DigestReplica, Op,
    SimPublisher, Val,
};
use crate::publisher::{Publisher, PublisherConfig, SnapshotRate};
use crate::state::LeafSource;
use crate::subscriber::{Event, Subscriber, SubscriberConfig};
use crate::wire::{Datagram, Heartbeat, Message};
use crate::{Destination, SessionId, StreamId};

/// Drops chosen datagrams in [`Rig::run`].
pub(crate) type Drop = Box<dyn FnMut(&[u8]) -> bool>;

pub(crate) struct Rig {
    pub(crate) now: Instant,
    pub(crate) publisher: SimPublisher,
    pub(crate) sub: Subscriber,
    pub(crate) replica: DigestReplica,
    pub(crate) buf: Vec<u8>,
    /// Where the publisher's datagrams come from, and the subscriber's.
    pub(crate) pub_addr: SocketAddr,
    pub(crate) sub_addr: SocketAddr,
    /// NAK datagrams the subscriber sent that were not delivered yet.
    pub(crate) naks: Vec<Vec<u8>>,
    /// Whether [`Rig::run`] carries NAKs to the publisher (default true).
    pub(crate) carry_naks: bool,
    /// Publisher datagrams [`Rig::run`] drops (scripted loss).
    pub(crate) drop: Option<Drop>,
    /// Datagrams dropped by `drop`.
    pub(crate) dropped: u64,
    /// Time step of [`Rig::run`] (default 1 ms).
    pub(crate) step: Duration,
    /// Times the claim was made and checked.
    pub(crate) claims: std::cell::Cell<u64>,
    /// Every event the subscriber emitted, in order.
    pub(crate) events: Vec<Event>,
    /// The latest CycleBegin the publisher sent: (cycle, start_seq,
    /// leaf_count).
    pub(crate) last_begin: Option<(u32, u64, u32)>,
    nak_buf: Vec<u8>,
}

/// Fires a publisher's timers at `now` (the wall clock at 0), then takes
/// all it has to send, one datagram per transmit, into `buf`.
pub(crate) fn pump(
    p: &mut Publisher,
    now: Instant,
    state: &(impl LeafSource + ?Sized),
    buf: &mut [u8],
) {
    p.handle_timeout(now, 0);
    while p.poll_transmit(now, state, 1, buf).is_some() {}
}

/// A datagram of `session` on the rig's stream carrying one Heartbeat.
pub(crate) fn heartbeat(
    session: u64,
    datagram_seq: u64,
    last_seq: u64,
    interval_ms: u32,
) -> Vec<u8> {
    let hb = Heartbeat {
        last_seq: crate::SeqNum(last_seq),
        sent_at_micros: 0,
        interval_ms,
    };
    super::sim::craft(
        StreamId(3),
        SessionId(session),
        datagram_seq,
        &[Message::Heartbeat(hb)],
    )
}

/// `n` milliseconds.
pub(crate) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The default subscriber configuration, on the rig's stream (3).
pub(crate) fn sub_cfg() -> SubscriberConfig {
    let mut c = SubscriberConfig::default();
    c.stream(StreamId(3)).rng_seed(1);
    c
}

pub(crate) fn rig_pub_config() -> PublisherConfig {
    let mut c = PublisherConfig::default();
    c.stream(StreamId(3))
        .snapshot_rate(SnapshotRate::LeavesPerSec(10_000))
        .heartbeat_interval(Duration::from_millis(10))
        .min_cycle_interval(Duration::from_millis(20));
    c
}

pub(crate) fn rig_sub_config() -> SubscriberConfig {
    let mut c = SubscriberConfig::default();
    c.stream(StreamId(3))
        .reorder_timeout(Duration::from_millis(5))
        .missed_heartbeats(5)
        .rng_seed(3);
    c
}

/// `rig_sub_config` without NAK repair: holes go to snapshot repair after
/// the reorder timeout (5 ms).
pub(crate) fn rig_sub_config_no_nak() -> SubscriberConfig {
    let mut c = rig_sub_config();
    c.nak_repair(false);
    c
}

pub(crate) fn leaves(n: u16) -> Vec<(u16, Val)> {
    (0..n).map(|k| (k, Val::from(i64::from(k) * 10))).collect()
}

/// The messages of the datagrams in `sent` that decode, in order.
pub(crate) fn messages(sent: &[Vec<u8>]) -> impl Iterator<Item = Message<'_>> {
    sent.iter()
        .filter_map(|d| Datagram::decode(d).ok())
        .flat_map(|d| d.messages())
}

/// Whether a datagram carries delta (or retransmission) `seq`.
pub(crate) fn carries_seq(d: &[u8], seq: u64) -> bool {
    Datagram::decode(d).is_ok_and(|d| {
        d.messages()
            .any(|m| matches!(m, Message::Delta(x) | Message::Retransmit(x) if x.seq.0 == seq))
    })
}

/// Whether a datagram carries the original (not a retransmission) of delta
/// `seq`.
pub(crate) fn carries_delta(d: &[u8], seq: u64) -> bool {
    Datagram::decode(d).is_ok_and(|d| {
        d.messages()
            .any(|m| matches!(m, Message::Delta(x) if x.seq.0 == seq))
    })
}

impl Rig {
    pub(crate) fn new(initial: &[(u16, Val)], sub_cfg: SubscriberConfig) -> Self {
        Self::with_publisher(rig_pub_config(), initial, sub_cfg)
    }

    pub(crate) fn with_publisher(
        pub_cfg: PublisherConfig,
        initial: &[(u16, Val)],
        sub_cfg: SubscriberConfig,
    ) -> Self {
        let now = Instant::now();
        let mut sub = Subscriber::new(sub_cfg).unwrap();
        // The publisher's heartbeats are stamped from this wall clock.
        sub.set_wall_clock(now, super::sim::wall_micros(Duration::ZERO));
        Self {
            now,
            publisher: SimPublisher::new(pub_cfg, SessionId(1), now, initial, Default::default()),
            sub,
            replica: DigestReplica::default(),
            buf: vec![0; 1452],
            pub_addr: publisher_addr(0),
            sub_addr: subscriber_addr(0),
            naks: Vec::new(),
            carry_naks: true,
            drop: None,
            dropped: 0,
            step: Duration::from_millis(1),
            claims: std::cell::Cell::new(0),
            events: Vec::new(),
            last_begin: None,
            nak_buf: vec![0; 65_536],
        }
    }

    /// Replaces the publisher with a new session (a restart), at a new
    /// port.
    pub(crate) fn restart_publisher(&mut self, session: SessionId, initial: &[(u16, Val)]) {
        let history = std::mem::take(&mut self.publisher.history);
        let cfg = self.publisher.core.config().clone();
        self.publisher = SimPublisher::new(cfg, session, self.now, initial, history);
        self.pub_addr = publisher_addr(self.pub_addr.port() - 5000 + 1);
    }

    /// Everything the publisher sends at `now` (timers fired first).
    pub(crate) fn output(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = std::mem::take(&mut self.buf);
        self.publisher
            .drive(self.now, 1, &mut buf, |d| out.push(d.to_vec()));
        self.buf = buf;
        self.publisher.check_bounds().unwrap();
        for m in messages(&out) {
            if let Message::CycleBegin(c) = m {
                self.last_begin = Some((c.cycle.0, c.start_seq.0, c.leaf_count));
            }
        }
        out
    }

    /// Hands datagrams to the subscriber, as if from the publisher.
    pub(crate) fn deliver(&mut self, datagrams: &[Vec<u8>]) {
        for d in datagrams {
            self.deliver_from(self.pub_addr, d);
        }
    }

    pub(crate) fn deliver_from(&mut self, from: SocketAddr, d: &[u8]) {
        let mut d = d.to_vec();
        self.sub
            .handle_datagram(self.now, from, &mut d, &mut self.replica);
        self.after_sub();
    }

    /// Fires the subscriber's timers at `now`.
    pub(crate) fn tick(&mut self) {
        self.sub.handle_timeout(self.now, &mut self.replica);
        self.after_sub();
    }

    fn after_sub(&mut self) {
        self.check_claim();
        self.drain_events();
        self.collect_naks();
    }

    /// Collects the NAK datagrams the subscriber has to send now.
    pub(crate) fn collect_naks(&mut self) {
        while let Some(t) = self.sub.poll_transmit(self.now, &mut self.nak_buf) {
            assert_eq!(t.destination, Destination::Unicast(self.pub_addr));
            for d in t.datagrams(&self.nak_buf) {
                self.naks.push(d.to_vec());
            }
        }
    }

    /// Hands the NAKs collected so far to the publisher.
    pub(crate) fn deliver_naks(&mut self) {
        for mut d in std::mem::take(&mut self.naks) {
            self.publisher
                .core
                .handle_datagram(self.now, self.sub_addr, &mut d);
        }
        self.publisher.check_bounds().unwrap();
    }

    pub(crate) fn drain_events(&mut self) {
        while let Some(e) = self.sub.poll_event() {
            self.events.push(e);
        }
    }

    /// Publishes a delta whose datagrams are lost.
    pub(crate) fn publish_dropped(&mut self, op: Op) {
        self.publisher.publish(&op);
        let _lost = self.output();
    }

    pub(crate) fn assert_equal(&self) {
        assert_eq!(self.replica.state(), self.publisher.state.state());
    }

    /// Steps of `step` (1 ms), delivering everything (but what `drop`
    /// drops) and, if `carry_naks`, carrying NAKs back to the publisher;
    /// returns what was sent.
    pub(crate) fn run(&mut self, dt: Duration) -> Vec<Vec<u8>> {
        let end = self.now + dt;
        let mut sent = Vec::new();
        while self.now < end {
            self.now += self.step;
            let out = self.output();
            for d in &out {
                if let Some(f) = self.drop.as_mut() {
                    if f(d) {
                        self.dropped += 1;
                        continue;
                    }
                }
                self.deliver_from(self.pub_addr, d);
            }
            self.tick();
            if self.carry_naks {
                self.deliver_naks();
            }
            sent.extend(out);
        }
        sent
    }

    /// Runs until `done` or `limit`; returns the time it took.
    pub(crate) fn run_until(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&Self) -> bool,
    ) -> Option<Duration> {
        let start = self.now;
        while self.now < start + limit {
            if done(self) {
                return Some(self.now - start);
            }
            self.run(self.step);
        }
        done(self).then(|| self.now - start)
    }

    pub(crate) fn publish_delivered(&mut self, op: Op) {
        self.publisher.publish(&op);
        let out = self.output();
        self.deliver(&out);
    }

    /// The claim under review: consistent ⇒ the replica equals the
    /// publisher's state as of `status().seq`; and the buffers are within
    /// their (default) bounds.
    pub(crate) fn claim_holds(&self) -> Result<(), String> {
        if check_claim(&self.sub, &self.replica, &self.publisher, true)? {
            self.claims.set(self.claims.get() + 1);
        }
        check_bounds(&self.sub, &Bounds::default())
    }

    pub(crate) fn check_claim(&self) {
        if let Err(e) = self.claim_holds() {
            panic!("{e}\nstats {:?}", self.sub.stats());
        }
    }

    pub(crate) fn converged(&self) -> bool {
        let st = self.sub.status();
        st.synced
            && st.consistent
            && st.session == Some(self.publisher.core.session())
            && st.seq == self.publisher.core.last_seq()
            && st.known_seq == st.seq
            && st.missing == 0
            && self.replica.state() == self.publisher.state.state()
    }
}

/// A subscriber driven by hand with crafted datagrams, checked after every
/// datagram and every timeout as the rig checks its own: the claim
/// "consistent at `seq` S ⇒ the replica equals the publisher's state at S"
/// against the states the test scripts with [`Checked::at`] (a claim at a
/// seq the script gives no state for fails), the leaf count, the replica's
/// digest, and the memory bounds. Whatever the script, a claim must be one
/// the subscriber could make: synced, nothing stale, every leaf held heard
/// in a datagram of the followed session. A test of hostile input that
/// scripts no state ([`Checked::hostile`]) gets these last checks only.
pub(crate) struct Checked {
    pub(crate) sub: Subscriber,
    pub(crate) rep: DigestReplica,
    pub(crate) now: Instant,
    /// Where the datagrams come from.
    pub(crate) from: SocketAddr,
    bounds: Bounds,
    /// The scripted publisher's state right after each seq; `None`: hostile
    /// input, no publisher behind it.
    reference: Option<BTreeMap<u64, BTreeMap<u16, i64>>>,
    /// Keys carried by the datagrams of each session (deltas, snapshots of
    /// present leaves; whole messages only, fragments are not reassembled
    /// here).
    heard: HashMap<SessionId, HashSet<Vec<u8>>>,
    /// Times the subscriber claimed consistency (checked each time).
    pub(crate) claims: u64,
    /// Every event the subscriber emitted, in order.
    pub(crate) events: Vec<Event>,
    /// NAK and FragNak datagrams it sent (all to `from`).
    pub(crate) naks: u64,
}

impl Checked {
    /// A subscriber whose claims are checked against the states the test
    /// scripts with [`Checked::at`].
    pub(crate) fn scripted(cfg: SubscriberConfig) -> Self {
        let mut c = Self::hostile(cfg, Bounds::default());
        c.reference = Some(BTreeMap::new());
        c
    }

    /// A subscriber fed hostile input: no publisher state to compare with.
    pub(crate) fn hostile(cfg: SubscriberConfig, bounds: Bounds) -> Self {
        Self {
            sub: Subscriber::new(cfg).unwrap(),
            rep: DigestReplica::default(),
            now: Instant::now(),
            from: publisher_addr(0),
            bounds,
            reference: None,
            heard: HashMap::new(),
            claims: 0,
            events: Vec::new(),
            naks: 0,
        }
    }

    /// The scripted publisher holds `leaves` (key, counter) right after
    /// `seq`.
    pub(crate) fn at(&mut self, seq: u64, leaves: &[(u16, i64)]) {
        self.reference
            .as_mut()
            .expect("a scripted subscriber")
            .insert(seq, leaves.iter().copied().collect());
    }

    /// Hands a datagram to the subscriber at `now`, then checks.
    pub(crate) fn deliver(&mut self, d: &[u8]) {
        if let Ok(dg) = Datagram::decode(d) {
            let keys = self.heard.entry(dg.header().session).or_default();
            for m in dg.messages() {
                match m {
                    Message::Delta(x) | Message::Retransmit(x) => {
                        keys.insert(x.key.to_vec());
                    }
                    Message::LeafSnapshot(s) if s.value.is_some() => {
                        keys.insert(s.key.to_vec());
                    }
                    _ => {}
                }
            }
        }
        self.sub
            .handle_datagram(self.now, self.from, &mut d.to_vec(), &mut self.rep);
        self.check();
    }

    /// Fires the subscriber's timers `dt` later, then checks.
    pub(crate) fn wait(&mut self, dt: Duration) {
        self.now += dt;
        self.sub.handle_timeout(self.now, &mut self.rep);
        self.check();
    }

    /// Collects the events, and the NAKs due (which go nowhere).
    fn drain(&mut self) {
        while let Some(e) = self.sub.poll_event() {
            self.events.push(e);
        }
        let mut buf = [0u8; 1452];
        while let Some(t) = self.sub.poll_transmit(self.now, &mut buf) {
            assert_eq!(t.destination, Destination::Unicast(self.from));
            self.naks += 1;
        }
    }

    pub(crate) fn check(&mut self) {
        if let Err(e) = self.claim_holds() {
            panic!(
                "{e}\nstatus {:?}\nstats {:?}",
                self.sub.status(),
                self.sub.stats()
            );
        }
        self.drain();
    }

    fn claim_holds(&mut self) -> Result<(), String> {
        check_bounds(&self.sub, &self.bounds)?;
        let st = self.sub.status();
        let mine = self.rep.state().nums();
        if st.leaves != mine.len() {
            return Err(format!(
                "status reports {} leaves, replica {mine:?}",
                st.leaves
            ));
        }
        if self.rep.digest != self.rep.typed.digest() {
            return Err("incremental digest drifted".into());
        }
        if !st.consistent {
            return Ok(());
        }
        self.claims += 1;
        if st.stale_leaves != 0 || !st.synced || st.seq > st.known_seq {
            return Err("consistent but stale, not synced or beyond its tail".into());
        }
        let session = st.session.ok_or("consistent without a session")?;
        let heard = self.heard.get(&session);
        for k in mine.keys() {
            let key = crate::state::encode(k);
            if !heard.is_some_and(|h| h.contains(&key)) {
                return Err(format!(
                    "consistent with leaf {k}, which no datagram of {session} carried: {mine:?}"
                ));
            }
        }
        if let Some(reference) = &self.reference {
            let want = reference.get(&st.seq.0).ok_or_else(|| {
                format!(
                    "consistent at seq {}, where the script gives no state: {mine:?}",
                    st.seq
                )
            })?;
            if *want != mine {
                return Err(format!(
                    "consistent at seq {} with {mine:?}, the publisher holds {want:?}",
                    st.seq
                ));
            }
        }
        Ok(())
    }
}
