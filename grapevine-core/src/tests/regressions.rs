//! Regression tests for engine bugs the simulation harness found, each named
//! for the behaviour it pins, deterministic and hand-driven (crafted
//! datagrams or the rig).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::rig::{leaves, ms, rig_sub_config, rig_sub_config_no_nak, Checked, Rig};
use super::sim::{begin, craft, end, snap, Op, Val};
use crate::wire::{Delta, Heartbeat, Message};
use crate::{SeqNum, SessionId, StreamId};

/// A crafted datagram of session 1 on stream 3 (the rig's), each with a new
/// `datagram_seq` as a publisher's would have.
fn dg(msgs: &[Message<'_>]) -> Vec<u8> {
    static NEXT: AtomicU64 = AtomicU64::new(1000);
    craft(
        StreamId(3),
        SessionId(1),
        NEXT.fetch_add(1, Ordering::Relaxed),
        msgs,
    )
}

/// A subscriber without NAK repair, fed crafted datagrams: the claim is
/// checked after each against the publisher's states the test scripts.
fn crafted() -> Checked {
    Checked::scripted(rig_sub_config_no_nak())
}

fn hb(last: u64) -> Message<'static> {
    Message::Heartbeat(Heartbeat {
        last_seq: SeqNum(last),
        sent_at_micros: 0,
        interval_ms: 10,
    })
}

/// Found by the simulation (seed 126, restarts profile): a subscriber that
/// followed a session only from cycle 6 on was consistent when a late copy
/// of a cycle-1 datagram arrived; its snapshots of leaves removed before the
/// subscriber's starting point (leaves it never knew) were installed, and
/// the replica kept those ghosts while claiming consistency.
#[test]
fn late_snapshot_of_an_older_cycle_does_not_resurrect_a_leaf_removed_before_joining() {
    let (k1, k2) = (crate::state::encode(&1u16), crate::state::encode(&2u16));
    let v = crate::state::encode(&Val::from(7));
    // The publisher: k1 and k2 from the start, k2 removed by delta 3.
    // Cycle 10 (start 2) sent k2 with leaf_seq 0; the subscriber joins at 5.
    let late = dg(&[begin(10, 2, 2), snap(10, 1, 0, &k2, Some(&v))]);
    let mut c = crafted();
    c.at(5, &[(1, 7)]);
    c.deliver(&dg(&[hb(5)]));
    c.deliver(&dg(&[hb(5)]));
    // Cycle 11 (start 5) lists k1 only; heard whole (twice: a subscriber
    // believes the first CycleBegin it hears once another datagram repeats
    // it).
    for _ in 0..2 {
        c.deliver(&dg(&[
            begin(11, 5, 1),
            snap(11, 0, 0, &k1, Some(&v)),
            end(11, 5, 1),
        ]));
    }
    let st = c.sub.status();
    assert!(st.consistent, "{st:?}");
    assert_eq!(c.rep.state().nums().len(), 1);
    // The late copy of the cycle-10 datagram.
    c.deliver(&late);
    let st = c.sub.status();
    assert!(
        !(st.consistent && c.rep.state().0.contains_key(&2)),
        "a removed leaf came back while consistent: {st:?} {:?}",
        c.rep.state().nums()
    );
    assert!(!c.rep.state().0.contains_key(&2));
    assert!(c.claims > 0);
}

/// Found by the simulation (seed 62, nak-loss profile): a late snapshot of
/// the previous cycle (kept so that snapshots completed by fragment repair
/// still count) resurrected a leaf the subscriber never knew, whose removal
/// it had lost in a gap, while it claimed consistency.
#[test]
fn late_snapshot_of_the_previous_cycle_does_not_resurrect_a_leaf_removed_in_a_gap() {
    let (k1, k2) = (crate::state::encode(&1u16), crate::state::encode(&2u16));
    let v = crate::state::encode(&Val::from(7));
    let add = crate::state::encode(&super::sim::Op::Add(1, 1));
    let mut c = crafted();
    // Delta 2 adds 1 to k1, delta 3 removes k2.
    c.at(1, &[(1, 7), (2, 7)]);
    c.at(2, &[(1, 8), (2, 7)]);
    c.at(3, &[(1, 8)]);
    // Starting point 1: k1 and k2 exist, unknown to the subscriber.
    c.deliver(&dg(&[hb(1)]));
    c.deliver(&dg(&[hb(1)]));
    // Cycle 10 (start 1) lists k1, k2; only k1's snapshot arrives.
    c.deliver(&dg(&[begin(10, 1, 2), snap(10, 0, 0, &k1, Some(&v))]));
    c.deliver(&dg(&[begin(10, 1, 2)]));
    let late = dg(&[begin(10, 1, 2), snap(10, 1, 0, &k2, Some(&v))]);
    // Delta 2 changes k1; delta 3 removes k2 and is lost: a gap.
    c.deliver(&dg(&[Message::Delta(Delta {
        seq: SeqNum(2),
        prev_leaf_seq: SeqNum(0),
        creates: false,
        removes: false,
        key: &k1,
        payload: &add,
    })]));
    c.deliver(&dg(&[hb(3)]));
    c.wait(Duration::from_millis(10));
    let stats = c.sub.stats();
    assert_eq!((stats.gaps, stats.lost), (1, 1), "delta 3: {stats:?}");
    assert!(!c.sub.status().consistent);
    // Cycle 11 (start 3) lists k1 only; heard whole (twice: a CycleBegin
    // is believed once another datagram repeats it).
    let v8 = crate::state::encode(&Val::from(8));
    for _ in 0..2 {
        c.deliver(&dg(&[
            begin(11, 3, 1),
            snap(11, 0, 2, &k1, Some(&v8)),
            end(11, 3, 1),
        ]));
    }
    let st = c.sub.status();
    assert!(st.consistent, "{st:?} {:?}", c.sub.stats());
    // The late snapshot of cycle 10 (the previous one) for k2.
    c.deliver(&late);
    let st = c.sub.status();
    assert!(
        !c.rep.state().0.contains_key(&2),
        "a removed leaf came back: {st:?} {:?}",
        c.rep.state().nums()
    );
    assert!(st.consistent, "{st:?}");
    assert!(c.claims > 0);
}

/// Found by the simulation (seed 355, jitter profile): before sync, a very
/// late snapshot of an old cycle (cycle 6, when the subscriber was hearing
/// cycle 25) was installed for leaves the subscriber did not track, inside
/// key intervals the current cycle had already verified; once the cycle
/// completed, the subscriber claimed consistency with those ghosts.
#[test]
fn late_snapshot_of_an_older_cycle_does_not_resurrect_a_leaf_before_sync() {
    let (k1, k2, k3, k5) = (
        crate::state::encode(&1u16),
        crate::state::encode(&2u16),
        crate::state::encode(&3u16),
        crate::state::encode(&5u16),
    );
    let v = crate::state::encode(&Val::from(7));
    // Cycle 3 (start 0) sent k2; k2 was removed by delta 4; the subscriber
    // starts at 5.
    let ancient = dg(&[begin(3, 0, 4), snap(3, 1, 0, &k2, Some(&v))]);
    let mut c = crafted();
    c.at(5, &[(1, 7), (3, 7), (5, 7)]);
    c.deliver(&dg(&[hb(5)]));
    c.deliver(&dg(&[hb(5)]));
    // Cycle 10 (start 5) lists k1, k3, k5: the first two positions verify
    // everything up to k3.
    c.deliver(&dg(&[begin(10, 5, 3)]));
    c.deliver(&dg(&[
        begin(10, 5, 3),
        snap(10, 0, 0, &k1, Some(&v)),
        snap(10, 1, 0, &k3, Some(&v)),
    ]));
    assert!(!c.sub.status().synced);
    // The ancient copy arrives, then the rest of cycle 10.
    c.deliver(&ancient);
    c.deliver(&dg(&[
        begin(10, 5, 3),
        snap(10, 2, 0, &k5, Some(&v)),
        end(10, 5, 3),
    ]));
    let st = c.sub.status();
    assert!(st.synced, "{st:?}");
    assert!(
        !c.rep.state().0.contains_key(&2),
        "a removed leaf came back: {st:?} {:?}",
        c.rep.state().nums()
    );
    assert!(st.consistent, "{st:?}");
    assert!(c.claims > 0);
}

/// Found by the simulation (seeds 129, 305, 382, 404, forgery profile): a
/// forged heartbeat a little ahead of the stream (within `max_seq_jump`)
/// made the subscriber wait for sequence numbers that were never sent; it
/// gave them up (a gap) before a heartbeat could re-anchor it, and then
/// stood beyond the publisher's latest delta: on a quiet stream no cycle
/// could ever start after that gap, and it stayed inconsistent for good.
#[test]
fn sequence_numbers_given_up_beyond_the_stream_are_taken_back_by_reanchoring() {
    use super::rig::{leaves, Rig};
    use super::sim::Op;
    let mut r = Rig::new(&leaves(10), rig_sub_config_no_nak());
    r.run(Duration::from_millis(50));
    for k in 0..3 {
        r.publish_delivered(Op::Add(k, 1));
    }
    r.run(Duration::from_millis(30));
    assert!(r.converged(), "{:?}", r.sub.status());
    let last = r.publisher.core.last_seq().0;
    let forged = craft(
        StreamId(3),
        SessionId(1),
        0xabc,
        &[Message::Heartbeat(Heartbeat {
            last_seq: SeqNum(last + 20),
            sent_at_micros: 0,
            interval_ms: 10,
        })],
    );
    r.deliver(&[forged]);
    assert_eq!(r.sub.status().known_seq.0, last + 20);
    // Without NAK repair, the 20 are given up after the reorder timeout
    // (5 ms), before any heartbeat can show they were never sent.
    r.run(Duration::from_millis(6));
    let stats = r.sub.stats();
    assert_eq!((stats.gaps, stats.lost), (1, 20), "{stats:?}");
    assert_eq!(r.sub.status().seq.0, last + 20);
    // The stream stays quiet: no delta will ever reach those numbers.
    r.run(Duration::from_millis(300));
    let st = r.sub.status();
    assert!(st.seq.0 == last && st.known_seq.0 == last, "{st:?}");
    assert!(r.sub.stats().reanchors >= 1);
    assert!(r.converged(), "{st:?} {:?}", r.sub.stats());
    // And the stream goes on from there.
    r.publish_delivered(Op::Add(1, 1));
    assert!(r.converged());
}

/// Found by the simulation (seed 762, jitter profile): after a publisher
/// restart, the first datagram of the new session a subscriber heard was a
/// forged one with a huge `datagram_seq`. The new session proves alive by
/// datagrams with increasing `datagram_seq`; none of the real ones was
/// greater, so the subscriber stayed with the dead session for good.
#[test]
fn a_forged_datagram_seq_does_not_lock_a_subscriber_out_of_a_restarted_publisher() {
    use super::rig::{leaves, rig_sub_config, Rig};
    use super::sim::Op;
    let mut r = Rig::new(&leaves(5), rig_sub_config());
    r.run(Duration::from_millis(50));
    r.publish_delivered(Op::Add(1, 1));
    r.run(Duration::from_millis(20));
    assert!(r.converged());
    r.restart_publisher(SessionId(2), &leaves(7));
    // The new session's first datagram the subscriber hears is forged.
    let forged = craft(
        StreamId(3),
        SessionId(2),
        u64::MAX - 5,
        &[Message::Heartbeat(Heartbeat {
            last_seq: SeqNum(0),
            sent_at_micros: 0,
            interval_ms: 10,
        })],
    );
    let from = r.pub_addr;
    r.deliver_from(from, &forged);
    r.run_until(Duration::from_millis(500), super::rig::Rig::converged)
        .unwrap_or_else(|| panic!("{:?} {:?}", r.sub.status(), r.sub.stats()));
    assert_eq!(r.sub.status().session, Some(SessionId(2)));
}

/// Found by the simulation (seeds 139, 169, 454, 456, 566, 583: publishers
/// with a repair budget of 50 KB/s under bursts of deltas): a hole still
/// being filled by retransmissions was never given up while they kept
/// coming, so a subscriber with thousands of deltas missing waited for the
/// whole backlog at the repair rate (tens of seconds) where one snapshot
/// cycle (tens of milliseconds) would have repaired it.
#[test]
fn a_hole_repaired_slower_than_the_snapshot_cycle_falls_back_to_snapshots() {
    use super::rig::{leaves, rig_pub_config, rig_sub_config, Rig};
    use super::sim::Op;
    let mut pc = rig_pub_config();
    pc.repair_rate(20_000);
    let mut r = Rig::with_publisher(pc, &leaves(10), rig_sub_config());
    r.run(Duration::from_millis(50));
    assert!(r.converged());
    // 2,000 deltas lost: about 80 KB of retransmissions, 4 s at 20 KB/s.
    for i in 0..2000u32 {
        r.publisher.publish(&Op::Add((i % 10) as u16, 1));
    }
    let _lost = r.output();
    r.publish_delivered(Op::Add(1, 1));
    let took = r
        .run_until(Duration::from_secs(6), Rig::converged)
        .unwrap_or_else(|| panic!("{:?} {:?}", r.sub.status(), r.sub.stats()));
    let st = r.sub.stats();
    assert!(st.repaired_by_nak > 0, "repair started by NAK: {st:?}");
    assert!(st.lost > 0, "and was left to snapshots");
    assert_eq!(st.repaired_by_nak + st.lost, 2000, "{st:?}");
    assert!(took < Duration::from_secs(1), "converged after {took:?}");
}

/// Found by the simulation (seed 778, forgery profile): a subscriber
/// joining a stream took its starting point from a forged heartbeat a
/// little ahead of the stream (within `max_seq_jump` of the real claims, so
/// the two agreed). It then stood beyond the publisher's latest delta with
/// nothing to re-anchor (no tail had been raised), and on a quiet stream
/// could never become consistent.
#[test]
fn a_starting_point_beyond_the_stream_is_taken_back_by_reanchoring() {
    use super::rig::{leaves, rig_sub_config, Rig};
    use super::sim::Op;
    for nak in [false, true] {
        let cfg = if nak {
            rig_sub_config()
        } else {
            rig_sub_config_no_nak()
        };
        let mut r = Rig::new(&leaves(10), cfg);
        for k in 0..3 {
            r.publish_dropped(Op::Add(k, 1));
        }
        let last = r.publisher.core.last_seq().0;
        let hb = |seq: u64, ds: u64| {
            craft(
                StreamId(3),
                SessionId(1),
                ds,
                &[Message::Heartbeat(Heartbeat {
                    last_seq: SeqNum(seq),
                    sent_at_micros: 0,
                    interval_ms: 10,
                })],
            )
        };
        // The first datagram the subscriber hears is genuine; the next one,
        // after the longest a late joiner waits for a cycle to start from
        // (one heartbeat interval), is forged 30 ahead.
        r.deliver(&[hb(last, 100)]);
        r.now += Duration::from_millis(150);
        r.deliver(&[hb(last + 30, 0xf0f0_0000)]);
        assert_eq!(r.sub.status().seq.0, last + 30, "nak {nak}");
        // A quiet stream: heartbeats and cycles only.
        r.run_until(Duration::from_millis(300), Rig::converged)
            .unwrap_or_else(|| panic!("nak {nak}: {:?} {:?}", r.sub.status(), r.sub.stats()));
        assert!(r.sub.stats().reanchors >= 1);
        r.publish_delivered(Op::Add(1, 1));
        assert!(r.converged(), "nak {nak}");
    }
}

/// Found by the simulation (seed 1611, restarts profile) once re-anchoring
/// could take sequence numbers back: a late duplicate of an old heartbeat
/// (sent 400 ms before, far beyond the reorder timeout) re-anchored a
/// subscriber below its starting point, and it went on claiming
/// consistency, now as of the old heartbeat's seq, with a replica verified
/// as of its start: the deltas in between were missing from the claim.
#[test]
fn reanchoring_below_what_the_cycles_verified_withdraws_consistency() {
    use super::rig::{leaves, Rig};
    use super::sim::Op;
    let mut r = Rig::new(&leaves(10), rig_sub_config_no_nak());
    // Before the subscriber listens: delta 1, a heartbeat at 1 that the
    // network keeps, then deltas 2 and 3 (removals: nothing the subscriber
    // installs later carries their seqs).
    r.publisher.publish(&Op::Add(1, 1));
    let old = (0..1000)
        .find_map(|_| {
            r.now += Duration::from_millis(1);
            r.output().into_iter().find(|d| {
                crate::wire::Datagram::decode(d).is_ok_and(|d| {
                    d.messages()
                        .any(|m| matches!(m, Message::Heartbeat(h) if h.last_seq.0 == 1))
                })
            })
        })
        .expect("a heartbeat at 1");
    r.publisher.publish(&Op::Remove(2));
    r.publisher.publish(&Op::Remove(3));
    let _unheard = r.output();
    // The subscriber starts at 3; cycles verify its replica as of 3.
    r.run(Duration::from_millis(100));
    assert!(r.converged(), "{:?}", r.sub.status());
    assert_eq!(r.sub.status().seq.0, 3);
    // The late duplicate arrives; the claim is checked at once.
    let reanchors = r.sub.stats().reanchors;
    r.deliver(&[old]);
    r.check_claim();
    let st = r.sub.status();
    assert_eq!(r.sub.stats().reanchors, reanchors + 1);
    assert!(st.seq.0 == 1 && !st.consistent, "{st:?}");
    r.run_until(Duration::from_millis(300), Rig::converged)
        .unwrap_or_else(|| panic!("{:?} {:?}", r.sub.status(), r.sub.stats()));
}

/// Found by a counter test (2026-11-30): a removed leaf stayed tracked as
/// known absent for ever, every cycle's sweep stamping it absent as of that
/// cycle's start, which kept it from being forgotten at the next cycle's
/// start. Keys that come and go (orders in a book) grew the subscriber's
/// memory without bound. Now an absence known as of the previous cycle's
/// start is forgotten when a new cycle begins.
#[test]
fn removed_leaves_are_forgotten_while_keys_come_and_go() {
    let mut r = Rig::new(&leaves(10), rig_sub_config());
    r.run_until(ms(500), Rig::converged).expect("synced");
    for i in 0..400u16 {
        r.publish_delivered(Op::Add(100 + i, 1));
        r.run(ms(2));
        r.publish_delivered(Op::Remove(100 + i));
        r.run(ms(3));
        // Those of the last two cycles (20 ms each) at most.
        assert!(
            r.sub.tracked_leaves() <= 10 + 20,
            "{}",
            r.sub.tracked_leaves()
        );
    }
    // With cycles starting at the same seq, and with deltas between them.
    r.run(ms(100));
    assert_eq!(r.sub.tracked_leaves(), 10);
    for i in 0..400u16 {
        r.publish_delivered(Op::Add(100 + i, 1));
        r.publish_delivered(Op::Remove(100 + i));
    }
    for _ in 0..10 {
        r.publish_delivered(Op::Add(1, 1));
        r.run(ms(10));
    }
    assert_eq!(r.sub.tracked_leaves(), 10);
    assert!(r.converged());
}
