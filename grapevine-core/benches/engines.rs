//! Criterion benchmarks of the two engines, without I/O: what one delta
//! costs the publisher (publish and hand out datagrams) and the subscriber
//! (decode, sequence and apply to a typed replica), with 64-byte deltas
//! (a `u32` key, a 56-byte value that decodes without allocating) on 10,000 leaves.
//!
//! * `publisher/publish_64B`: `publish` then `poll_transmit` per batch of
//!   64 deltas, up to 44 datagrams per transmit (GSO-sized).
//! * `subscriber/apply_64B`: `handle_datagram` of the datagrams carrying
//!   deltas, in order, on a synced subscriber.
//! * `subscriber/snapshots`: `handle_datagram` of a whole snapshot cycle of
//!   the 10,000 leaves (no deltas) on a synced subscriber, per leaf: what
//!   the steady snapshot stream costs a subscriber.
//!
//! Run with `cargo bench -p grapevine-core --bench engines`; add
//! `-- --quick` for a smoke run.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use grapevine_core::publisher::{Publisher, PublisherConfig};
use grapevine_core::state::{encode, MapDelta, Typed};
use grapevine_core::subscriber::{Subscriber, SubscriberConfig};
use grapevine_core::SessionId;

/// A leaf: 56 bytes that decode without allocating.
type Value = (u64, [u8; 32], [u8; 16]);
type State = BTreeMap<u32, Value>;

const VALUE: Value = (u64::MAX / 3, [7; 32], [9; 16]);

const LEAVES: u32 = 10_000;
const BATCH: u32 = 64;
const SEGMENTS: usize = 44;

fn from() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 4000))
}

struct Pub {
    core: Publisher,
    typed: Typed<State>,
    buf: Vec<u8>,
    key: u32,
    now: Instant,
}

impl Pub {
    fn new() -> Self {
        let now = Instant::now();
        let mut core = Publisher::new(PublisherConfig::default(), SessionId(7), now).unwrap();
        let mut state = State::new();
        for k in 0..LEAVES {
            core.track_leaf(&encode(&k)).unwrap();
            state.insert(k, VALUE);
        }
        Self {
            core,
            typed: Typed::new(state),
            buf: vec![0; SEGMENTS * 1452],
            key: 0,
            now,
        }
    }

    /// Publishes `n` deltas and hands every datagram due to `sink`.
    fn publish(&mut self, n: u32, mut sink: impl FnMut(&mut [u8])) {
        for _ in 0..n {
            let delta = MapDelta::Upsert(self.key, VALUE);
            let key = encode(&self.key);
            let payload = encode(&delta);
            self.core.publish(&key, &payload, true).unwrap();
            self.key = (self.key + 1) % LEAVES;
        }
        while let Some(t) = self
            .core
            .poll_transmit(self.now, &self.typed, SEGMENTS, &mut self.buf)
        {
            let seg = t.segment_size.unwrap_or(t.size).max(1);
            for d in self.buf[..t.size].chunks_mut(seg) {
                sink(d);
            }
        }
    }
}

fn publisher(c: &mut Criterion) {
    let mut g = c.benchmark_group("publisher");
    g.throughput(Throughput::Elements(u64::from(BATCH)));
    let mut p = Pub::new();
    g.bench_function("publish_64B", |b| {
        b.iter(|| {
            p.publish(BATCH, |d| {
                black_box(d);
            })
        });
    });
    g.finish();
}

fn subscriber(c: &mut Criterion) {
    let mut g = c.benchmark_group("subscriber");
    g.throughput(Throughput::Elements(u64::from(BATCH)));
    let mut p = Pub::new();
    let mut sub = Subscriber::new(SubscriberConfig::default()).unwrap();
    let mut replica = Typed::new(State::new());
    // Sync: a whole snapshot cycle, delivered.
    let start = p.now;
    while !sub.status().synced && p.now < start + Duration::from_secs(5) {
        p.now += Duration::from_millis(1);
        let now = p.now;
        p.core.handle_timeout(now, 0);
        p.publish(0, |d| sub.handle_datagram(now, from(), d, &mut replica));
    }
    assert!(sub.status().synced, "the bench subscriber syncs");
    let mut datagrams: Vec<Vec<u8>> = Vec::new();
    g.bench_function("apply_64B", |b| {
        b.iter_custom(|iters| {
            datagrams.clear();
            for _ in 0..iters {
                p.publish(BATCH, |d| datagrams.push(d.to_vec()));
            }
            let now = p.now;
            let t = Instant::now();
            for d in &mut datagrams {
                sub.handle_datagram(now, from(), d, &mut replica);
            }
            t.elapsed()
        });
    });
    assert!(sub.status().consistent, "{:?}", sub.status());
    // One cycle's datagrams, then the next cycle's, and so on.
    g.throughput(Throughput::Elements(u64::from(LEAVES)));
    g.sample_size(20);
    g.bench_function("snapshots", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                datagrams.clear();
                let cycles = p.core.stats().cycles;
                while p.core.stats().cycles == cycles {
                    p.now += Duration::from_millis(1);
                    let now = p.now;
                    p.core.handle_timeout(now, 0);
                    p.publish(0, |d| datagrams.push(d.to_vec()));
                }
                let now = p.now;
                let t = Instant::now();
                for d in &mut datagrams {
                    sub.handle_datagram(now, from(), d, &mut replica);
                }
                total += t.elapsed();
            }
            total
        });
    });
    assert!(sub.status().consistent, "{:?}", sub.status());
    g.finish();
}

criterion_group!(benches, publisher, subscriber);
criterion_main!(benches);
