//! Forged datagrams of the live session, one at a time, against the claims
//! of PROTOCOL.md §8.4 and §8.5 (found by an adversarial review of NAK
//! repair). Each test drives the rig: "consistent ⇒ equal to the publisher
//! at `status().seq`" is checked after every event, and convergence is
//! required once the forger stops.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::rig::{ms, sub_cfg, Rig};
use super::sim::{craft, wall_micros, Op, Val};
use crate::publisher::{Publisher, PublisherConfig, SnapshotRate};
use crate::state::Typed;
use crate::subscriber::Event;
use crate::wire::{CycleBegin, Datagram, FragNak, FragRanges, Heartbeat, LeafSnapshot, Message};
use crate::{CycleId, Destination, SeqNum, SessionId, StreamId};

/// A datagram of the rig's stream and session (the live one), or of
/// `session`.
fn forge(session: u64, datagram_seq: u64, msgs: &[Message<'_>]) -> Vec<u8> {
    craft(StreamId(3), SessionId(session), datagram_seq, msgs)
}

fn fast_pub() -> PublisherConfig {
    let mut c = PublisherConfig::default();
    c.stream(StreamId(3)).min_cycle_interval(ms(50));
    c
}

/// A rig whose publisher creates 20 leaves (1..=20) by delta.
fn with_20_leaves(pc: PublisherConfig) -> Rig {
    let mut r = Rig::with_publisher(pc, &[], sub_cfg());
    for k in 1..=20u16 {
        r.publisher.publish(&Op::Set(k, i64::from(k) * 10));
    }
    r
}

/// ... and a subscriber synced with it.
fn synced(pc: PublisherConfig) -> Rig {
    let mut r = with_20_leaves(pc);
    r.run(ms(400));
    let st = r.sub.status();
    assert!(st.synced && st.consistent, "{st:?} {:?}", r.sub.stats());
    r.assert_equal();
    r
}

fn assert_healthy(r: &Rig) {
    r.assert_equal();
    assert!(r.converged(), "{:?} {:?}", r.sub.status(), r.sub.stats());
}

#[test]
fn a_forged_empty_cycle_neither_wipes_the_replica_nor_hides_real_cycles() {
    let mut r = synced(fast_pub());
    let (c, _, _) = r.last_begin.unwrap();
    let last = r.publisher.core.last_seq();
    r.deliver(&[forge(
        1,
        1 << 40,
        &[Message::CycleBegin(CycleBegin {
            cycle: CycleId(c.wrapping_add(1)),
            start_seq: last,
            leaf_count: 0,
        })],
    )]);
    r.run(ms(1000));
    assert_healthy(&r);
}

#[test]
fn a_forged_last_position_below_every_key_proves_nothing() {
    let mut pc = fast_pub();
    pc.snapshot_rate(SnapshotRate::LeavesPerSec(100)); // a 200 ms cycle
    let mut r = synced(pc);
    let before = r.last_begin.unwrap().0;
    r.run_until(ms(1000), |r| r.last_begin.unwrap().0 != before)
        .expect("the next cycle began");
    let (c, _, count) = r.last_begin.unwrap();
    let key0 = crate::state::encode(&0u16); // below every real key
    r.deliver(&[forge(
        1,
        1 << 40,
        &[Message::LeafSnapshot(LeafSnapshot {
            cycle: CycleId(c),
            position: count - 1,
            leaf_seq: SeqNum(0),
            key: &key0,
            value: None,
        })],
    )]);
    r.run(ms(1500));
    assert_healthy(&r);
}

/// Snapshots at a position outside their cycle, or whose key breaks the
/// cycle's key order, are counted as bad positions and prove nothing;
/// copies of positions already heard are not bad.
#[test]
fn bad_positions_are_counted_and_copies_are_not() {
    let mut pc = fast_pub();
    pc.snapshot_rate(SnapshotRate::LeavesPerSec(100)); // a 200 ms cycle
    let mut r = synced(pc);
    // Every datagram twice, for more than a cycle.
    for _ in 0..300 {
        r.now += ms(1);
        for d in r.output() {
            r.deliver(&[d.clone(), d]);
        }
        r.tick();
        r.deliver_naks();
    }
    assert!(r.sub.stats().duplicates == 0 && r.sub.stats().snapshots_received > 40);
    assert_eq!(r.sub.stats().bad_positions, 0);
    // Early in a cycle (positions 0 to `seen - 1` heard, keys 1 to
    // `seen`): the next position carrying key 1, and position 20 of 20.
    let begun = r.sub.stats().cycles_begun;
    r.run_until(ms(1000), |r| {
        r.sub.stats().cycles_begun > begun
            && r.sub
                .status()
                .cycle_progress
                .is_some_and(|(seen, _)| seen >= 2)
    })
    .expect("the next cycle began");
    let (c, _, count) = r.last_begin.unwrap();
    let (seen, _) = r.sub.status().cycle_progress.unwrap();
    assert!(seen < count, "{seen}");
    let value = crate::state::encode(&Val::from(10));
    let key1 = crate::state::encode(&1u16);
    for position in [seen, count] {
        r.deliver(&[forge(
            1,
            1 << 40 | u64::from(position),
            &[Message::LeafSnapshot(LeafSnapshot {
                cycle: CycleId(c),
                position,
                leaf_seq: SeqNum(1),
                key: &key1,
                value: Some(&value),
            })],
        )]);
    }
    assert_eq!(r.sub.stats().bad_positions, 2);
    r.run(ms(1500));
    assert_eq!(r.sub.stats().bad_positions, 2);
    assert_healthy(&r);
}

#[test]
fn a_forged_snapshot_ahead_of_the_stream_is_set_aside() {
    let mut pc = fast_pub();
    pc.snapshot_rate(SnapshotRate::LeavesPerSec(100));
    let mut r = with_20_leaves(pc);
    r.run(ms(60));
    assert!(!r.sub.status().synced);
    let (c, _, _) = r.last_begin.unwrap();
    let key = crate::state::encode(&15u16);
    let value = crate::state::encode(&Val::from(999));
    let ahead = r.sub.stats().snapshots_ahead;
    r.deliver(&[forge(
        1,
        1 << 40,
        &[Message::LeafSnapshot(LeafSnapshot {
            cycle: CycleId(c),
            position: 14,
            leaf_seq: SeqNum(8000),
            key: &key,
            value: Some(&value),
        })],
    )]);
    assert_eq!(r.sub.stats().snapshots_ahead, ahead + 1);
    assert_ne!(r.replica.state().get(15), Some(999), "set aside");
    r.run(ms(500));
    r.publisher.publish(&Op::Set(15, 151));
    r.run(ms(1500));
    assert_healthy(&r);
}

#[test]
fn one_fragment_request_is_answered_within_the_repair_budget_after_live_deltas() {
    type Map = std::collections::BTreeMap<u32, u64>;
    let t0 = Instant::now();
    let mut pc = PublisherConfig::default();
    pc.repair_rate(100_000); // burst: two datagrams, 2,904 bytes
    let mut p = Publisher::new(pc, SessionId(7), t0).unwrap();
    let state = Typed::new(Map::new());
    let mut buf = vec![0u8; 1452];
    p.publish(b"big", &vec![7u8; 64 * 1024], true).unwrap(); // frag_id 0
    p.handle_timeout(t0, wall_micros(Duration::ZERO));
    let mut fragments = 0;
    while let Some(tx) = p.poll_transmit(t0, &state, 1, &mut buf) {
        fragments += Datagram::decode(&buf[..tx.size])
            .unwrap()
            .messages()
            .filter(|m| matches!(m, Message::Fragment(_)))
            .count() as u64;
    }
    assert!(fragments > 40, "{fragments} fragments");
    let t1 = t0 + ms(100);
    let mut nak = craft(
        StreamId(1),
        SessionId(7),
        0,
        &[Message::FragNak(FragNak {
            requester: 1,
            frag_id: 0,
            ranges: FragRanges::from_slice(&[(0, u32::MAX), (10, 20), (5000, 9000)]),
        })],
    );
    let from: SocketAddr = "198.51.100.7:6000".parse().unwrap();
    p.handle_datagram(t1, from, &mut nak);
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
    assert_eq!(
        p.stats().fragments_resent,
        fragments,
        "one request, each piece once"
    );
}

#[test]
fn a_forged_first_datagram_does_not_redirect_naks() {
    let mut r = Rig::with_publisher(fast_pub(), &[], sub_cfg());
    let evil: SocketAddr = "203.0.113.66:9999".parse().unwrap();
    let forged = forge(
        1,
        1 << 40,
        &[Message::Heartbeat(Heartbeat {
            last_seq: SeqNum(0),
            sent_at_micros: 0,
            interval_ms: 100,
        })],
    );
    r.deliver_from(evil, &forged);
    for k in 1..=20u16 {
        r.publisher.publish(&Op::Set(k, i64::from(k)));
    }
    r.run(ms(300));
    assert!(r.sub.status().consistent);
    r.publish_dropped(Op::Set(1, 100));
    r.publish_delivered(Op::Set(2, 200));
    // Take the NAK due by hand (the rig would carry it).
    r.naks.clear();
    r.now += ms(5);
    r.sub.handle_timeout(r.now, &mut r.replica);
    r.check_claim();
    let mut nbuf = vec![0u8; 1452];
    let tx = r.sub.poll_transmit(r.now, &mut nbuf).expect("a NAK is due");
    assert_eq!(tx.destination, Destination::Unicast(r.pub_addr));
}

#[test]
fn a_forged_heartbeat_interval_neither_reports_the_publisher_gone_nor_lets_a_fake_session_in() {
    let mut r = with_20_leaves(fast_pub());
    r.run(ms(420)); // real heartbeats at 1, 101, ..., 401 ms
    assert!(r.sub.status().consistent);
    let events = r.events.len();
    let last = r.publisher.core.last_seq();
    r.deliver(&[forge(
        1,
        1 << 40,
        &[Message::Heartbeat(Heartbeat {
            last_seq: last,
            sent_at_micros: 0,
            interval_ms: 1,
        })],
    )]);
    for (i, dt) in [(0u64, 3u64), (1, 2)] {
        r.run(ms(dt));
        r.deliver(&[forge(
            0xBAD,
            i,
            &[Message::Heartbeat(Heartbeat {
                last_seq: SeqNum(0),
                sent_at_micros: 0,
                interval_ms: 100,
            })],
        )]);
    }
    assert!(
        !r.events[events..]
            .iter()
            .any(|e| matches!(e, Event::PublisherRestarted { .. } | Event::PublisherGone)),
        "{:?}",
        &r.events[events..]
    );
    r.run(ms(300));
    assert_healthy(&r);
}

/// Fragments of the live session that conflict are counted as rejected; a
/// fragmented message that completes but does not decode is counted under
/// its malformed code; neither changes the replica or the claim.
#[test]
fn conflicting_and_undecodable_fragments_are_counted_and_change_nothing() {
    let mut r = synced(fast_pub());
    let frag = |frag_id: u32, offset: u32, inner_kind: u8, data: &'static [u8]| {
        Message::Fragment(crate::wire::Fragment {
            frag_id,
            total_len: 8,
            offset,
            inner_kind,
            data,
        })
    };
    let delta = crate::wire::MessageKind::Delta as u8;
    let before = r.sub.stats().clone();
    // Bytes 0..6, then 4..8 disagreeing at byte 4: a conflict.
    r.deliver(&[forge(1, 1 << 40, &[frag(1 << 30, 0, delta, b"abcdef")])]);
    r.deliver(&[forge(1, (1 << 40) + 1, &[frag(1 << 30, 4, delta, b"XfGH")])]);
    let s = r.sub.stats().clone();
    assert_eq!(s.fragments_rejected, before.fragments_rejected + 1);
    // A whole message of 8 bytes, too short for a delta's fixed fields.
    r.deliver(&[forge(
        1,
        (1 << 40) + 2,
        &[
            frag((1 << 30) + 1, 0, delta, b"abcd"),
            frag((1 << 30) + 1, 4, delta, b"efgh"),
        ],
    )]);
    let s = r.sub.stats().clone();
    assert_eq!(s.fragments_rejected, before.fragments_rejected + 1);
    assert_eq!(
        s.malformed.get("body_too_short").copied().unwrap_or(0),
        before.malformed.get("body_too_short").copied().unwrap_or(0) + 1,
        "{:?}",
        s.malformed
    );
    r.check_claim();
    r.run(ms(200));
    assert_healthy(&r);
}

/// A copy of the current cycle's CycleBegin that disagrees with it, in its
/// start seq alone or in its leaf count alone, drops the cycle's evidence
/// (counted as a conflict); an identical copy does not.
#[test]
fn a_cycle_begin_copy_disagreeing_in_one_field_is_a_conflict() {
    let mut r = synced(fast_pub());
    let (c, start, count) = r.last_begin.unwrap();
    let conflicts = |r: &Rig| r.sub.stats().cycle_conflicts;
    let begin = |start: u64, count: u32| {
        Message::CycleBegin(CycleBegin {
            cycle: CycleId(c),
            start_seq: SeqNum(start),
            leaf_count: count,
        })
    };
    let before = conflicts(&r);
    r.deliver(&[forge(1, 1 << 40, &[begin(start, count)])]);
    assert_eq!(conflicts(&r), before, "an identical copy");
    r.deliver(&[forge(1, (1 << 40) + 1, &[begin(start + 1, count)])]);
    assert_eq!(conflicts(&r), before + 1, "start seq differs");
    // The next cycle, then a copy differing in its leaf count only.
    r.run_until(ms(1000), |r| r.last_begin.unwrap().0 != c)
        .expect("the next cycle began");
    let (c2, start2, count2) = r.last_begin.unwrap();
    r.run(ms(1));
    let before = conflicts(&r);
    r.deliver(&[forge(
        1,
        (1 << 40) + 2,
        &[Message::CycleBegin(CycleBegin {
            cycle: CycleId(c2),
            start_seq: SeqNum(start2),
            leaf_count: count2 + 1,
        })],
    )]);
    assert_eq!(conflicts(&r), before + 1, "leaf count differs");
    r.run(ms(1000));
    assert_healthy(&r);
}
