//! Forged datagrams of the live session, one at a time, against the claims
//! of PROTOCOL.md §8.4 and §8.5 (found by an adversarial review of NAK
//! repair): each test drives a publisher and a subscriber by hand, checks
//! "consistent ⇒ equal to the publisher at `status().seq`" after every
//! event, and requires convergence once the forger stops.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::publisher::{Publisher, PublisherConfig, SnapshotRate};
use crate::state::{MapDelta, State, Typed};
use crate::subscriber::{Event, Subscriber, SubscriberConfig};
use crate::wire::{
    CycleBegin, Datagram, DatagramHeader, DatagramWriter, FragNak, FragRanges, Heartbeat,
    LeafSnapshot, Message,
};
use crate::{CycleId, Destination, SeqNum, SessionId, StreamId};

type Map = BTreeMap<u32, u64>;
const SESSION: u64 = 7;
const WALL: u64 = 1_764_000_000_000_000;

fn pub_addr() -> SocketAddr {
    "192.0.2.1:5000".parse().unwrap()
}

fn sub_addr() -> SocketAddr {
    "198.51.100.7:6000".parse().unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A publisher, a subscriber, and a lossless link both ways that a test
/// can cut (`deliver`).
struct World {
    t0: Instant,
    now: Instant,
    publisher: Publisher,
    state: Typed<Map>,
    subscriber: Subscriber,
    replica: Typed<Map>,
    /// The publisher's state after each seq (index = seq).
    history: Vec<Map>,
    /// Every group datagram, in order.
    sent: Vec<Vec<u8>>,
    deliver: bool,
    violations: Vec<String>,
    buf: Vec<u8>,
}

impl World {
    fn new(pc: PublisherConfig) -> Self {
        let t0 = Instant::now();
        let mut sc = SubscriberConfig::default();
        sc.rng_seed(1);
        World {
            t0,
            now: t0,
            publisher: Publisher::new(pc, SessionId(SESSION), t0).unwrap(),
            state: Typed::new(Map::new()),
            subscriber: Subscriber::new(sc).unwrap(),
            replica: Typed::new(Map::new()),
            history: vec![Map::new()],
            sent: vec![],
            deliver: true,
            violations: vec![],
            buf: vec![0u8; 1452],
        }
    }

    fn upsert(&mut self, k: u32, v: u64) {
        let d = MapDelta::Upsert(k, v);
        self.state.state_mut().apply(&d);
        let key = Typed::<Map>::encode_key(&k);
        let seq = self
            .publisher
            .publish(&key, &Typed::<Map>::encode_delta(&d), true)
            .unwrap();
        assert_eq!(seq.0 as usize, self.history.len());
        self.history.push(self.state.state().clone());
    }

    fn check(&mut self) {
        let st = self.subscriber.status();
        if st.consistent && self.history.get(st.seq.0 as usize) != Some(self.replica.state()) {
            self.violations.push(format!(
                "+{:?}: consistent at seq {} but replica {:?}",
                self.now - self.t0,
                st.seq,
                self.replica.state()
            ));
        }
    }

    fn feed_from(&mut self, from: SocketAddr, bytes: &[u8]) {
        let mut b = bytes.to_vec();
        self.subscriber
            .handle_datagram(self.now, from, &mut b, &mut self.replica);
        self.check();
        self.pump_naks();
    }

    fn feed(&mut self, bytes: &[u8]) {
        self.feed_from(pub_addr(), bytes);
    }

    fn pump_naks(&mut self) {
        let mut nbuf = vec![0u8; 1452];
        while let Some(tx) = self.subscriber.poll_transmit(self.now, &mut nbuf) {
            let mut b = nbuf[..tx.size].to_vec();
            self.publisher.handle_datagram(self.now, sub_addr(), &mut b);
        }
    }

    fn flush(&mut self) {
        let wall = WALL + (self.now - self.t0).as_micros() as u64;
        self.publisher.handle_timeout(self.now, wall);
        while let Some(tx) = self
            .publisher
            .poll_transmit(self.now, &self.state, 1, &mut self.buf)
        {
            let b = self.buf[..tx.size].to_vec();
            self.sent.push(b.clone());
            if self.deliver {
                self.feed(&b);
            }
        }
    }

    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now += ms(1);
            self.flush();
            if self
                .subscriber
                .poll_timeout()
                .is_some_and(|t| t <= self.now)
            {
                self.subscriber.handle_timeout(self.now, &mut self.replica);
                self.check();
                self.pump_naks();
            }
            self.flush();
        }
    }

    /// Synced with 20 leaves.
    fn synced(pc: PublisherConfig) -> Self {
        let mut w = World::new(pc);
        for k in 1..=20u32 {
            w.upsert(k, u64::from(k) * 10);
        }
        w.run(ms(400));
        let st = w.subscriber.status();
        assert!(
            st.synced && st.consistent,
            "{st:?} {:?}",
            w.subscriber.stats()
        );
        assert_eq!(w.replica.state(), w.state.state());
        w
    }

    fn latest_cycle(&self) -> (u32, u64, u32) {
        self.sent
            .iter()
            .rev()
            .find_map(|d| {
                let dg = Datagram::decode(d).ok()?;
                dg.messages().find_map(|m| match m {
                    Message::CycleBegin(c) => Some((c.cycle.0, c.start_seq.0, c.leaf_count)),
                    _ => None,
                })
            })
            .unwrap()
    }

    fn assert_healthy(&self) {
        assert!(
            self.violations.is_empty(),
            "{} violations, first: {}",
            self.violations.len(),
            self.violations[0]
        );
        assert_eq!(self.replica.state(), self.state.state(), "never converges");
        assert!(self.subscriber.status().consistent);
    }
}

fn fast_pub() -> PublisherConfig {
    let mut c = PublisherConfig::default();
    c.min_cycle_interval(ms(50));
    c
}

fn craft(session: u64, datagram_seq: u64, msgs: &[Message<'_>]) -> Vec<u8> {
    let mut buf = vec![0u8; 65507];
    let header = DatagramHeader {
        stream: StreamId(1),
        session: SessionId(session),
        datagram_seq,
    };
    let mut w = DatagramWriter::new(&mut buf, &header).unwrap();
    for m in msgs {
        w.push(m).unwrap();
    }
    let n = w.finish();
    buf.truncate(n);
    buf
}

#[test]
fn a_forged_empty_cycle_neither_wipes_the_replica_nor_hides_real_cycles() {
    let mut w = World::synced(fast_pub());
    let (c, _, _) = w.latest_cycle();
    let last = w.publisher.last_seq();
    w.feed(&craft(
        SESSION,
        1 << 40,
        &[Message::CycleBegin(CycleBegin {
            cycle: CycleId(c.wrapping_add(1)),
            start_seq: last,
            leaf_count: 0,
        })],
    ));
    w.run(ms(1000));
    w.assert_healthy();
}

#[test]
fn a_forged_last_position_below_every_key_proves_nothing() {
    let mut pc = fast_pub();
    pc.snapshot_rate(SnapshotRate::LeavesPerSec(100)); // a 200 ms cycle
    let mut w = World::synced(pc);
    let before = w.latest_cycle().0;
    while w.latest_cycle().0 == before {
        w.run(ms(1));
    }
    let (c, _, count) = w.latest_cycle();
    let key0 = Typed::<Map>::encode_key(&0); // below every real key
    w.feed(&craft(
        SESSION,
        1 << 40,
        &[Message::LeafSnapshot(LeafSnapshot {
            cycle: CycleId(c),
            position: count - 1,
            leaf_seq: SeqNum(0),
            key: &key0,
            value: None,
        })],
    ));
    w.run(ms(1500));
    w.assert_healthy();
}

#[test]
fn a_forged_snapshot_ahead_of_the_stream_is_set_aside() {
    let mut pc = fast_pub();
    pc.snapshot_rate(SnapshotRate::LeavesPerSec(100));
    let mut w = World::new(pc);
    for k in 1..=20u32 {
        w.upsert(k, u64::from(k) * 10);
    }
    w.run(ms(60));
    assert!(!w.subscriber.status().synced);
    let (c, _, _) = w.latest_cycle();
    let key = Typed::<Map>::encode_key(&15);
    let value = crate::state::encode(&999u64);
    w.feed(&craft(
        SESSION,
        1 << 40,
        &[Message::LeafSnapshot(LeafSnapshot {
            cycle: CycleId(c),
            position: 14,
            leaf_seq: SeqNum(8000),
            key: &key,
            value: Some(&value),
        })],
    ));
    assert!(w.subscriber.stats().snapshots_ahead >= 1);
    w.run(ms(500));
    w.upsert(15, 151);
    w.run(ms(1500));
    w.assert_healthy();
}

#[test]
fn one_fragment_request_is_answered_within_the_repair_budget_after_live_deltas() {
    let t0 = Instant::now();
    let mut pc = PublisherConfig::default();
    pc.repair_rate(100_000); // burst: two datagrams, 2,904 bytes
    let mut p = Publisher::new(pc, SessionId(SESSION), t0).unwrap();
    let state = Typed::new(Map::new());
    let mut buf = vec![0u8; 1452];
    p.publish(b"big", &vec![7u8; 64 * 1024], true).unwrap(); // frag_id 0
    p.handle_timeout(t0, WALL);
    while p.poll_transmit(t0, &state, 1, &mut buf).is_some() {}
    let t1 = t0 + ms(100);
    let mut nak = craft(
        SESSION,
        0,
        &[Message::FragNak(FragNak {
            requester: 1,
            frag_id: 0,
            ranges: FragRanges::from_slice(&[(0, u32::MAX), (10, 20), (5000, 9000)]),
        })],
    );
    p.handle_datagram(t1, sub_addr(), &mut nak);
    let before = p.stats().repair_bytes;
    let first = p.poll_transmit(t1, &state, 1, &mut buf).unwrap();
    let live_seq = p.publish(b"live", b"x", true).unwrap();
    let carries_live = |b: &[u8]| {
        Datagram::decode(b)
            .unwrap()
            .messages()
            .any(|m| matches!(m, Message::Delta(x) if x.seq == live_seq))
    };
    let mut order = vec![carries_live(&buf[..first.size])];
    while let Some(tx) = p.poll_transmit(t1, &state, 1, &mut buf) {
        order.push(carries_live(&buf[..tx.size]));
    }
    let repaired = p.stats().repair_bytes - before;
    let live_at = order.iter().position(|&l| l).unwrap();
    assert!(live_at <= 1, "live delta behind {live_at} repair datagrams");
    assert!(repaired <= 2 * 2904, "{repaired} repair bytes at once");
    // The rest follows as the budget refills: the whole message in time.
    let mut t = t1;
    for _ in 0..2000 {
        t += ms(1);
        while p.poll_transmit(t, &state, 1, &mut buf).is_some() {}
    }
    assert!(
        p.stats().repair_bytes - before >= 64 * 1024,
        "{:?}",
        p.stats()
    );
    assert!(
        p.stats().fragments_resent <= 50,
        "one request, each piece once"
    );
}

#[test]
fn a_forged_first_datagram_does_not_redirect_naks() {
    let mut w = World::new(fast_pub());
    let evil: SocketAddr = "203.0.113.66:9999".parse().unwrap();
    let forged = craft(
        SESSION,
        1 << 40,
        &[Message::Heartbeat(Heartbeat {
            last_seq: SeqNum(0),
            sent_at_micros: 0,
            interval_ms: 100,
        })],
    );
    w.feed_from(evil, &forged);
    for k in 1..=20u32 {
        w.upsert(k, u64::from(k));
    }
    w.run(ms(300));
    assert!(w.subscriber.status().consistent);
    w.deliver = false;
    w.upsert(1, 100);
    w.flush();
    w.deliver = true;
    w.upsert(2, 200);
    w.flush();
    let mut nbuf = vec![0u8; 1452];
    w.now += ms(5);
    w.subscriber.handle_timeout(w.now, &mut w.replica);
    let tx = w
        .subscriber
        .poll_transmit(w.now, &mut nbuf)
        .expect("a NAK is due");
    assert_eq!(tx.destination, Destination::Unicast(pub_addr()));
}

#[test]
fn a_forged_heartbeat_interval_neither_reports_the_publisher_gone_nor_lets_a_fake_session_in() {
    let mut w = World::new(fast_pub());
    for k in 1..=20u32 {
        w.upsert(k, u64::from(k));
    }
    w.run(ms(420)); // real heartbeats at 1, 101, ..., 401 ms
    assert!(w.subscriber.status().consistent);
    while w.subscriber.poll_event().is_some() {}
    let last = w.publisher.last_seq();
    w.feed(&craft(
        SESSION,
        1 << 40,
        &[Message::Heartbeat(Heartbeat {
            last_seq: last,
            sent_at_micros: 0,
            interval_ms: 1,
        })],
    ));
    let mut events = vec![];
    for (i, dt) in [(0u64, 3u64), (1, 2)] {
        w.run(ms(dt));
        w.feed(&craft(
            0xBAD,
            i,
            &[Message::Heartbeat(Heartbeat {
                last_seq: SeqNum(0),
                sent_at_micros: 0,
                interval_ms: 100,
            })],
        ));
        while let Some(e) = w.subscriber.poll_event() {
            events.push(e);
        }
    }
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::PublisherRestarted { .. } | Event::PublisherGone)),
        "{events:?}"
    );
    w.run(ms(300));
    w.assert_healthy();
}
