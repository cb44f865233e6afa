//! The hot path allocates nothing per delta: a counting global allocator
//! watches a publisher engine publish 64-byte deltas and hand out their
//! datagrams, and a synced subscriber engine decode and apply them to a
//! typed replica, after a warm-up that grows every buffer to its steady
//! size. (The state's own types must not allocate either: here a
//! `BTreeMap` of `u32` to a 56-byte value, updated in place.)
//!
//! Its own test binary: the counting allocator is global to the binary.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use grapevine_core::publisher::{Publisher, PublisherConfig};
use grapevine_core::state::{encode, encode_into, MapDelta, Typed};
use grapevine_core::subscriber::{Subscriber, SubscriberConfig};
use grapevine_core::SessionId;

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; it only
// counts allocations.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

type Value = (u64, [u8; 32], [u8; 16]);
type State = BTreeMap<u32, Value>;
const LEAVES: u32 = 1_000;
const SEGMENTS: usize = 44;

struct Rig {
    publisher: Publisher,
    source: Typed<State>,
    subscriber: Subscriber,
    replica: Typed<State>,
    buf: Vec<u8>,
    key: Vec<u8>,
    payload: Vec<u8>,
    next: u32,
    now: Instant,
}

fn from() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 4000))
}

fn value(k: u32, round: u64) -> Value {
    (u64::from(k) << 20 | round, [7; 32], [9; 16])
}

impl Rig {
    fn new() -> Self {
        let now = Instant::now();
        let mut publisher = Publisher::new(PublisherConfig::default(), SessionId(7), now).unwrap();
        let mut state = State::new();
        for k in 0..LEAVES {
            publisher.track_leaf(&encode(&k)).unwrap();
            state.insert(k, value(k, 0));
        }
        Self {
            publisher,
            source: Typed::new(state),
            subscriber: Subscriber::new(SubscriberConfig::default()).unwrap(),
            replica: Typed::new(State::new()),
            buf: vec![0; SEGMENTS * 1452],
            key: Vec::new(),
            payload: Vec::new(),
            next: 0,
            now,
        }
    }

    /// Publishes `n` deltas (updating existing leaves, as the application
    /// would: into reused buffers), then delivers every datagram due to
    /// the subscriber.
    fn step(&mut self, n: u32, round: u64) {
        for _ in 0..n {
            let k = self.next;
            self.next = (self.next + 1) % LEAVES;
            let v = value(k, round);
            self.key.clear();
            encode_into(&k, &mut self.key);
            self.payload.clear();
            encode_into(&MapDelta::Upsert(k, v), &mut self.payload);
            self.source.state_mut().insert(k, v);
            self.publisher
                .publish(&self.key, &self.payload, true)
                .unwrap();
        }
        self.publisher.handle_timeout(self.now, 0);
        while let Some(t) =
            self.publisher
                .poll_transmit(self.now, &self.source, SEGMENTS, &mut self.buf)
        {
            let seg = t.segment_size.unwrap_or(t.size).max(1);
            for d in self.buf[..t.size].chunks_mut(seg) {
                self.subscriber
                    .handle_datagram(self.now, from(), d, &mut self.replica);
            }
        }
        if self
            .subscriber
            .poll_timeout()
            .is_some_and(|t| t <= self.now)
        {
            self.subscriber.handle_timeout(self.now, &mut self.replica);
        }
        while self.subscriber.poll_event().is_some() {}
    }
}

#[test]
fn publishing_and_applying_a_delta_allocates_nothing() {
    let mut r = Rig::new();
    // Warm up: sync, then enough deltas to fill the publisher's history
    // (65,536 deltas by default) and grow every reused buffer.
    let start = r.now;
    while !r.subscriber.status().synced {
        r.now += Duration::from_millis(1);
        r.step(0, 0);
        assert!(r.now - start < Duration::from_secs(10), "syncs");
    }
    for round in 1..=1_200 {
        r.now += Duration::from_micros(100);
        r.step(64, round);
    }
    assert!(
        r.subscriber.status().consistent,
        "{:?}",
        r.subscriber.status()
    );

    let deltas: u32 = 64 * 500;
    let applied = r.subscriber.stats().deltas_applied;
    let before = ALLOCS.load(Ordering::Relaxed);
    for round in 1_201..=1_700 {
        r.now += Duration::from_micros(100);
        r.step(64, round);
    }
    let allocs = ALLOCS.load(Ordering::Relaxed) - before;
    let applied = r.subscriber.stats().deltas_applied - applied;
    assert_eq!(applied, u64::from(deltas), "every delta applied");
    assert!(r.subscriber.status().consistent);
    assert_eq!(r.replica.state(), r.source.state());
    assert_eq!(allocs, 0, "{allocs} allocations for {deltas} deltas");
}
