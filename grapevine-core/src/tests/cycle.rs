//! The publisher's snapshot cycle (PROTOCOL.md §8.4): what it sends, what
//! it counts, and that it keeps to its configured rate.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::rig::{leaves, messages, ms, pump, sub_cfg, Rig};
use super::sim::Op;
use crate::publisher::{Publisher, PublisherConfig, SnapshotRate};
use crate::state::Typed;
use crate::wire::{Datagram, Message, HEADER_LEN};
use crate::{SessionId, StreamId};

fn pub_cfg(rate: SnapshotRate, min_cycle_interval: Duration) -> PublisherConfig {
    let mut c = PublisherConfig::default();
    c.stream(StreamId(3))
        .snapshot_rate(rate)
        .min_cycle_interval(min_cycle_interval);
    c
}

/// The cycle messages in `sent`: (their bytes, message headers included;
/// what they cost under a leaves-per-second rate: one per leaf snapshot
/// and per CycleEnd).
fn cycle_traffic(sent: &[Vec<u8>]) -> (u64, u64) {
    let (mut bytes, mut snapshots) = (0, 0);
    for m in messages(sent) {
        match m {
            // A CycleEnd costs one leaf of a leaves-per-second budget too.
            Message::LeafSnapshot(_) | Message::CycleEnd(_) => snapshots += 1,
            Message::CycleBegin(_) => {}
            _ => continue,
        }
        bytes += (m.body_len() + 4) as u64;
    }
    (bytes, snapshots)
}

/// `snapshot_bytes` counts exactly the cycle messages sent (CycleBegin,
/// LeafSnapshot, CycleEnd, message headers included), for an empty state
/// (whose cycles are a CycleBegin alone, then CycleBegin and CycleEnd) and
/// for a populated one.
#[test]
fn snapshot_bytes_count_the_cycle_messages_sent() {
    for leaves in [0u16, 10] {
        let mut r = Rig::with_publisher(
            pub_cfg(SnapshotRate::LeavesPerSec(100_000), ms(50)),
            &[],
            sub_cfg(),
        );
        for k in 1..=leaves {
            r.publisher.publish(&Op::Set(k, 1));
        }
        let before = r.publisher.core.stats().snapshot_bytes;
        let mut sent = r.output();
        sent.extend(r.run(ms(300)));
        let mut cycles = 0;
        // Per cycle: datagrams with its CycleBegin, with its snapshots.
        let mut per_cycle = std::collections::BTreeMap::<u32, (u32, u32, bool)>::new();
        for d in &sent {
            let mut seen = std::collections::BTreeSet::new();
            for m in Datagram::decode(d).unwrap().messages() {
                match m {
                    Message::CycleEnd(e) => {
                        cycles += 1;
                        per_cycle.entry(e.cycle.0).or_default().2 = true;
                    }
                    Message::CycleBegin(b) => {
                        per_cycle.entry(b.cycle.0).or_default().0 += 1;
                    }
                    Message::LeafSnapshot(l) if seen.insert(l.cycle.0) => {
                        per_cycle.entry(l.cycle.0).or_default().1 += 1;
                    }
                    _ => {}
                }
            }
        }
        assert!(cycles >= 3, "{leaves} leaves: {cycles} cycles");
        // Each datagram of snapshots opens with the CycleBegin, and the
        // CycleEnd follows one more copy: at least two in all, even for an
        // empty cycle (PROTOCOL.md §8.4), and no more than that.
        for (c, (begins, snap_datagrams, ended)) in per_cycle {
            if ended {
                assert_eq!(begins, (snap_datagrams + 1).max(2), "cycle {c}");
            }
        }
        assert_eq!(
            r.publisher.core.stats().snapshot_bytes - before,
            cycle_traffic(&sent).0,
            "{leaves} leaves"
        );
    }
}

/// Back-to-back cycles of 200 leaves for two seconds send the configured
/// rate: bytes of cycle messages (every CycleBegin copy and CycleEnd
/// included) under `BytesPerSec`, leaf snapshots under `LeavesPerSec`.
/// The slack is the burst the pacing allows (2 ms worth, at least two
/// datagrams) plus the one datagram or leaf a fill may overdraw.
#[test]
fn back_to_back_cycles_keep_to_the_snapshot_rate() {
    let secs = 2;
    let max_payload = (PublisherConfig::default().max_datagram_size() - HEADER_LEN) as u64;
    for (rate, per_sec, slack) in [
        (
            SnapshotRate::BytesPerSec(200_000),
            200_000,
            2_000.max(2 * max_payload) + max_payload,
        ),
        (
            SnapshotRate::BytesPerSec(1_000_000),
            1_000_000,
            2_000.max(2 * max_payload) + max_payload,
        ),
        (SnapshotRate::LeavesPerSec(1_000), 1_000, 2 + 1),
        (SnapshotRate::LeavesPerSec(20_000), 20_000, 40 + 1),
    ] {
        let mut r = Rig::with_publisher(pub_cfg(rate, Duration::ZERO), &leaves(200), sub_cfg());
        r.run(ms(50)); // past the first cycle's start, the budget running
        let (bytes, leaf_cost) = cycle_traffic(&r.run(Duration::from_secs(secs)));
        let sent = match rate {
            SnapshotRate::BytesPerSec(_) => bytes,
            _ => leaf_cost,
        };
        let budget = per_sec * secs;
        assert!(
            sent.abs_diff(budget) <= slack,
            "{rate:?}: {sent} sent in {secs} s, budget {budget} ± {slack}"
        );
    }
}

/// A publisher of `n` leaves (a `u32` map), declared before any delta.
fn publisher_of(n: u32, cfg: PublisherConfig, now: Instant) -> (Publisher, Map) {
    let state = Typed::new((0..n).map(|k| (k, k)).collect::<BTreeMap<u32, u32>>());
    let mut p = Publisher::new(cfg, SessionId(1), now).unwrap();
    for k in 0..n {
        p.track_leaf(&Map::encode_key(&k)).unwrap();
    }
    (p, state)
}

type Map = Typed<BTreeMap<u32, u32>>;

/// Driven only when it asks (at `poll_timeout`), as a real driver does,
/// back-to-back cycles of 1,000 leaves keep to the snapshot rate; the first
/// snapshot datagram goes out as soon as the budget holds one (a
/// datagram's room under a byte rate, one leaf under a leaf rate); under a
/// byte rate datagrams go out full; and the publisher asks to be woken
/// about once per datagram, not in a busy loop.
#[test]
fn woken_only_when_due_the_cycle_keeps_to_its_rate() {
    let secs = 2;
    let max_payload = (PublisherConfig::default().max_datagram_size() - HEADER_LEN) as u64;
    for (rate, per_sec, slack, first_at) in [
        (
            SnapshotRate::BytesPerSec(200_000),
            200_000,
            2 * max_payload + max_payload,
            max_payload as f64 / 200_000.0,
        ),
        (
            SnapshotRate::LeavesPerSec(5_000),
            5_000,
            50 + 5,
            // Five leaves a datagram: one datagram a millisecond.
            5.0 / 5_000.0,
        ),
    ] {
        let t0 = Instant::now();
        let (mut p, state) = publisher_of(1_000, pub_cfg(rate, Duration::ZERO), t0);
        let mut buf = vec![0u8; 65_536];
        let (warm, end) = (t0 + ms(50), t0 + Duration::from_secs(secs) + ms(50));
        let (mut now, mut wakeups, mut at_warm, mut first) = (t0, 0u64, None, None);
        while now < end && wakeups < 1_000_000 {
            pump(&mut p, now, &state, &mut buf);
            if first.is_none() && p.stats().snapshots > 0 {
                first = Some(now - t0);
            }
            if at_warm.is_none() && now >= warm {
                at_warm = Some((p.stats(), wakeups));
            }
            wakeups += 1;
            now = p.poll_timeout().expect("a heartbeat at least").max(now);
        }
        let (before, woken) = at_warm.unwrap();
        let s = p.stats();
        let sent = match rate {
            SnapshotRate::BytesPerSec(_) => s.snapshot_bytes - before.snapshot_bytes,
            _ => s.snapshots - before.snapshots,
        };
        let budget = per_sec * secs;
        assert!(
            sent.abs_diff(budget) <= slack,
            "{rate:?}: {sent} sent in {secs} s, budget {budget} ± {slack}"
        );
        let first = first.unwrap().as_secs_f64();
        assert!(
            (first - first_at).abs() < 2e-6,
            "{rate:?}: the first snapshot datagram at {first} s, not {first_at} s"
        );
        let datagrams = s.datagrams - before.datagrams;
        if let SnapshotRate::BytesPerSec(_) = rate {
            // Per cycle: ~11 full datagrams, a partial one and the CycleEnd;
            // and a heartbeat now and then.
            let fill = sent as f64 / (datagrams * max_payload) as f64;
            assert!(fill > 0.75, "datagrams {:.0} % full", fill * 100.0);
        }
        let wakeups = wakeups - woken;
        assert!(
            wakeups <= datagrams + 10,
            "{rate:?}: {wakeups} wake-ups for {datagrams} datagrams"
        );
    }
}

/// After a long pause between cycles the next cycle opens with one
/// datagram, not the pause's worth nor a burst: budget does not build up
/// while no cycle runs beyond what the first datagram needs, so a cycle
/// start does not hold up the deltas behind it.
#[test]
fn after_a_pause_the_cycle_opens_with_one_datagram() {
    const RATE: u64 = 200_000;
    let t0 = Instant::now();
    let cfg = pub_cfg(SnapshotRate::BytesPerSec(RATE), Duration::from_secs(1));
    let (mut p, state) = publisher_of(2_000, cfg, t0);
    let mut buf = vec![0u8; 65_536];
    // The first cycle, then the pause to the next.
    let mut now = t0;
    while (p.cycle_progress().is_some() || now == t0) && now < t0 + ms(500) {
        now += ms(1);
        pump(&mut p, now, &state, &mut buf);
    }
    assert!(now < t0 + ms(500), "the first cycle took {:?}", now - t0);
    // Woken when due (heartbeats, then the next cycle, a second after the
    // first began), until the next cycle begins.
    let mut before = p.stats().snapshot_bytes;
    for _ in 0..100 {
        now = p.poll_timeout().unwrap().max(now);
        before = p.stats().snapshot_bytes;
        pump(&mut p, now, &state, &mut buf);
        if p.cycle_progress().is_some() {
            break;
        }
    }
    assert!(p.cycle_progress().is_some(), "the next cycle began");
    assert!(now >= t0 + Duration::from_secs(1));
    let burst = p.stats().snapshot_bytes - before;
    let max_payload = (PublisherConfig::default().max_datagram_size() - HEADER_LEN) as u64;
    // One datagram's worth, perhaps a message short of full.
    assert!(
        burst <= max_payload && burst + 100 >= max_payload,
        "{burst} bytes at once, about {max_payload} expected"
    );
}

/// Cycle datagrams are filled exactly: 25-byte snapshots (one-byte keys and
/// values) and room for a CycleBegin and ten of them go ten to a datagram.
#[test]
fn cycle_datagrams_are_filled_exactly() {
    let mut cfg = pub_cfg(
        SnapshotRate::BytesPerSec(1 << 30),
        Duration::from_secs(3600),
    );
    cfg.max_datagram(HEADER_LEN + 20 + 10 * 25);
    let t0 = Instant::now();
    let (mut p, state) = publisher_of(100, cfg, t0);
    let mut buf = vec![0u8; 65_536];
    let mut per_datagram = Vec::new();
    for i in 0..100 {
        let now = t0 + ms(i);
        p.handle_timeout(now, 0);
        while let Some(t) = p.poll_transmit(now, &state, 1, &mut buf) {
            let d = Datagram::decode(&buf[..t.size]).unwrap();
            let snapshots: Vec<usize> = d
                .messages()
                .filter_map(|m| match m {
                    Message::LeafSnapshot(_) => Some(m.body_len() + 4),
                    _ => None,
                })
                .collect();
            if !snapshots.is_empty() {
                assert!(snapshots.iter().all(|&l| l == 25), "{snapshots:?}");
                per_datagram.push(snapshots.len());
            }
        }
    }
    assert_eq!(per_datagram, [10; 10]);
}

/// What a cycle must send, checked against a model while leaves are
/// created, updated and removed under it: its positions are the keys
/// present when it began (at its `start_seq`), in key order, each sent
/// once; a position is a tombstone exactly when its leaf is absent as the
/// snapshot goes out (with the latest `seq` as `leaf_seq`), and otherwise
/// carries the leaf's last `seq`. Leaves created during the cycle wait for
/// the next. (The cycle walks the live leaves from a cursor instead of
/// copying the key list; this is what keeps the walk honest.)
mod walk {
    use std::collections::{BTreeMap, BTreeSet};
    use std::time::{Duration, Instant};

    use proptest::prelude::*;

    use crate::publisher::{Publisher, PublisherConfig, SnapshotRate};
    use crate::state::{encode, Typed};
    use crate::wire::{Datagram, Message};
    use crate::SessionId;

    #[derive(Clone, Debug)]
    enum Step {
        /// Create or update leaf `k`.
        Upsert(u8),
        /// Remove leaf `k` (nothing if absent).
        Remove(u8),
        /// Let 1 ms pass and send what the cycle may.
        Tick,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => (0u8..48).prop_map(Step::Upsert),
            3 => (0u8..48).prop_map(Step::Remove),
            2 => Just(Step::Tick),
        ]
    }

    /// The state as the cycle must see it when one of its datagrams goes
    /// out: each present key's last `seq`, and the latest `seq`.
    #[derive(Clone)]
    struct Seen {
        leaves: BTreeMap<u8, u64>,
        last_seq: u64,
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn a_cycle_sends_the_keys_present_when_it_began(
            initial in proptest::collection::btree_set(0u8..48, 0..32),
            steps in proptest::collection::vec(step(), 1..400),
            full in any::<bool>(),
        ) {
            let mut cfg = PublisherConfig::default();
            cfg.snapshot_rate(SnapshotRate::LeavesPerSec(3_000))
                .min_cycle_interval(Duration::ZERO);
            if full {
                // Datagrams of five snapshots, each started only when the
                // budget holds a whole one: every fill walks several
                // positions and ends on a snapshot that does not fit.
                cfg.snapshot_rate(SnapshotRate::BytesPerSec(150_000))
                    .max_datagram(crate::wire::HEADER_LEN + 20 + 5 * 25);
            }
            let t0 = Instant::now();
            let mut p = Publisher::new(cfg, SessionId(1), t0).unwrap();
            let mut state = Typed::new(BTreeMap::<u8, u8>::new());
            let mut seen = Seen { leaves: BTreeMap::new(), last_seq: 0 };
            for &k in &initial {
                p.track_leaf(&encode(&k)).unwrap();
                state.state_mut().insert(k, k);
                seen.leaves.insert(k, 0);
            }
            // Key sets as of each seq, to know what a cycle began with.
            let mut keys_at: BTreeMap<u64, BTreeSet<u8>> = BTreeMap::new();
            keys_at.insert(0, seen.leaves.keys().copied().collect());
            // Every snapshot message sent, with the state when it was.
            let mut sent: Vec<(u32, u64, u32, u8, Option<u64>, Seen)> = Vec::new();
            let mut begins: BTreeMap<u32, (u64, u32)> = BTreeMap::new();
            let mut now = t0;
            let mut buf = vec![0u8; 1452];
            for s in steps.iter().chain(std::iter::repeat_n(&Step::Tick, 200)) {
                match *s {
                    Step::Upsert(k) | Step::Remove(k) => {
                        let present = matches!(s, Step::Upsert(_));
                        if !present && !seen.leaves.contains_key(&k) {
                            continue;
                        }
                        if present {
                            state.state_mut().insert(k, k);
                        } else {
                            state.state_mut().remove(&k);
                        }
                        let seq = p.publish(&encode(&k), b"d", present).unwrap().0;
                        seen.last_seq = seq;
                        if present {
                            seen.leaves.insert(k, seq);
                        } else {
                            seen.leaves.remove(&k);
                        }
                        keys_at.insert(seq, seen.leaves.keys().copied().collect());
                    }
                    Step::Tick => {
                        now += Duration::from_millis(1);
                        p.handle_timeout(now, 0);
                        while let Some(t) = p.poll_transmit(now, &state, 1, &mut buf) {
                            let d = Datagram::decode(buf.get(..t.size).unwrap()).unwrap();
                            for m in d.messages() {
                                match m {
                                    Message::CycleBegin(b) => {
                                        begins.insert(b.cycle.0, (b.start_seq.0, b.leaf_count));
                                    }
                                    Message::LeafSnapshot(l) => {
                                        let key = crate::state::decode::<u8>(l.key).unwrap();
                                        sent.push((
                                            l.cycle.0,
                                            l.leaf_seq.0,
                                            l.position,
                                            key,
                                            l.value.map(|_| l.leaf_seq.0),
                                            seen.clone(),
                                        ));
                                    }
                                    _ => {}
                                }
                            }
                        }
                        // What the cycle keeps aside is exactly the keys
                        // ahead of its cursor whose presence changed since
                        // it began: nothing behind it, nothing unchanged.
                        // (Checked once the cycle in progress has sent a
                        // snapshot, which tells which cycle it is.)
                        let latest = begins.last_key_value().map(|(&id, &(start, _))| {
                            let mine: Vec<_> = sent.iter().filter(|s| s.0 == id).collect();
                            (start, mine.len(), mine.last().map(|s| s.3))
                        });
                        if let (Some((pos, _)), Some((start_seq, n, Some(cursor)))) =
                            (p.cycle_progress(), latest)
                        {
                            if n == pos {
                                let at_start = &keys_at[&start_seq];
                                let changed = (0u8..48)
                                    .filter(|k| *k > cursor)
                                    .filter(|k| at_start.contains(k) != seen.leaves.contains_key(k))
                                    .count();
                                prop_assert_eq!(p.cycle_held(), changed);
                            }
                        }
                    }
                }
            }
            let mut cycles: BTreeMap<u32, Vec<_>> = BTreeMap::new();
            for s in sent {
                cycles.entry(s.0).or_default().push(s);
            }
            prop_assert!(!cycles.is_empty());
            for (id, snaps) in &cycles {
                let (start_seq, count) = begins[id];
                let expected: Vec<u8> = keys_at[&start_seq].iter().copied().collect();
                prop_assert_eq!(count as usize, expected.len());
                // Every cycle but perhaps the last is complete.
                let complete = snaps.len() == expected.len();
                prop_assert!(complete || Some(id) == cycles.keys().last(), "cycle {} short", id);
                for (i, (_, leaf_seq, position, key, value, at)) in snaps.iter().enumerate() {
                    prop_assert_eq!(*position as usize, i);
                    prop_assert_eq!(*key, expected[i]);
                    match at.leaves.get(key) {
                        Some(&seq) => {
                            prop_assert_eq!(*value, Some(seq));
                        }
                        None => {
                            prop_assert_eq!(*value, None);
                            prop_assert_eq!(*leaf_seq, at.last_seq);
                        }
                    }
                }
            }
        }
    }
}

/// A publisher polled late in the middle of a cycle catches up by at most
/// 2 ms of its rate (or two datagrams, if more), not by everything the
/// pause would have allowed: a burst of snapshots delays the deltas behind
/// it at every subscriber.
#[test]
fn a_late_poll_mid_cycle_bursts_2_ms_worth_at_most() {
    const RATE: u32 = 100_000;
    let t0 = Instant::now();
    let cfg = pub_cfg(SnapshotRate::LeavesPerSec(RATE), Duration::ZERO);
    let (mut p, state) = publisher_of(10_000, cfg, t0);
    let mut buf = vec![0u8; 65_536];
    let mut now = t0;
    for _ in 0..20 {
        now += ms(1);
        pump(&mut p, now, &state, &mut buf);
    }
    assert!(p.cycle_progress().is_some_and(|(sent, _)| sent > 0));
    let before = p.stats().snapshots;
    now += ms(50);
    pump(&mut p, now, &state, &mut buf);
    let burst = p.stats().snapshots - before;
    // 2 ms at 100,000 leaves/s, in whole datagrams (about 50 leaves each
    // here): within a datagram of it either way.
    let per_datagram = 60;
    assert!(
        burst + per_datagram >= 200 && burst <= 200 + per_datagram,
        "{burst} leaves at once after a 50 ms pause"
    );
}
