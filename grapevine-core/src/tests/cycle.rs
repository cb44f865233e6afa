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
/// their leaf snapshots).
fn cycle_traffic(sent: &[Vec<u8>]) -> (u64, u64) {
    let (mut bytes, mut snapshots) = (0, 0);
    for m in messages(sent) {
        match m {
            Message::LeafSnapshot(_) => snapshots += 1,
            Message::CycleBegin(_) | Message::CycleEnd(_) => {}
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
/// The slack is the burst the pacing allows (10 ms worth, at least two
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
            10_000 + max_payload,
        ),
        (SnapshotRate::LeavesPerSec(1_000), 1_000, 10 + 1),
        (SnapshotRate::LeavesPerSec(20_000), 20_000, 200 + 1),
    ] {
        let mut r = Rig::with_publisher(pub_cfg(rate, Duration::ZERO), &leaves(200), sub_cfg());
        r.run(ms(50)); // past the first cycle's start, the budget running
        let (bytes, snapshots) = cycle_traffic(&r.run(Duration::from_secs(secs)));
        let sent = match rate {
            SnapshotRate::BytesPerSec(_) => bytes,
            _ => snapshots,
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

/// After a long pause between cycles the budget allows a burst of 10 ms
/// worth (or two datagrams, whichever is more), not the pause's worth: the
/// next cycle starts at the configured rate.
#[test]
fn after_a_pause_the_cycle_bursts_10_ms_worth_at_most() {
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
    // Two datagrams' worth here (more than 10 ms worth), the second
    // perhaps a message short of full, or over by one.
    let cap = (RATE / 100).max(2 * max_payload);
    assert!(
        burst.abs_diff(cap) <= 100,
        "{burst} bytes at once, about {cap} expected"
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
