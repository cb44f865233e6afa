//! NAK repair, deterministically: the rig (one subscriber, NAKs carried back
//! to the publisher) and scripted worlds of several subscribers. Each test
//! is named for the behaviour it pins.

use std::time::Duration;

use super::rig::{
    carries_delta, heartbeat, leaves, messages, ms, rig_pub_config, rig_sub_config, Rig,
};
use super::sim::{craft, Dir, Op, Pad, Rng, Scenario, Tally, Val, World, STREAM};
use crate::publisher::{PublisherConfig, SnapshotRate};
use crate::subscriber::{Event, SubscriberConfig};
use crate::wire::{
    CycleBegin, CycleEnd, Datagram, Delta, FragNak, FragRanges, Heartbeat, LeafSnapshot, Message,
    Nak, NakRanges,
};
use crate::{CycleId, SeqNum, SeqRange, SessionId, StreamId};

/// The ids of the cycles begun in `sent`.
fn cycles_in(sent: &[Vec<u8>]) -> Vec<u32> {
    messages(sent)
        .filter_map(|m| match m {
            Message::CycleBegin(c) => Some(c.cycle.0),
            _ => None,
        })
        .collect()
}

fn has_heartbeat(sent: &[Vec<u8>]) -> bool {
    messages(sent).any(|m| matches!(m, Message::Heartbeat(_)))
}

/// A rig that has converged on 10 leaves and a few deltas.
fn running_rig() -> Rig {
    let mut r = Rig::new(&leaves(10), rig_sub_config());
    r.run(ms(50));
    for k in 0..5 {
        r.publish_delivered(Op::Add(k, 1));
    }
    r.run(ms(30));
    assert!(r.converged(), "{:?}", r.sub.status());
    r
}

#[test]
fn a_single_lost_datagram_is_repaired_by_nak_without_any_snapshot() {
    let mut r = running_rig();
    let snapshots = r.sub.stats().snapshots_applied;
    let events = r.events.len();
    r.publish_dropped(Op::Add(4, 1));
    // The next delta reveals the hole.
    r.publish_delivered(Op::Add(5, 2));
    let st = r.sub.status();
    assert_eq!(st.missing, 1);
    assert!(!r.converged(), "{st:?}");
    // One NAK, and the hole counts as repaired by NAK when it is filled.
    let took = r
        .run_until(ms(100), |r| {
            let (st, stats) = (r.sub.status(), r.sub.stats());
            assert!(stats.naks_sent <= 1, "{stats:?}");
            assert_eq!(stats.repaired_by_nak, u64::from(st.missing == 0));
            r.converged()
        })
        .expect("repaired");
    let st = r.sub.stats();
    assert_eq!(st.repaired_by_nak, 1, "{st:?}");
    assert_eq!(st.lost, 0);
    assert_eq!(st.gaps, 0);
    assert_eq!(st.naks_sent, 1);
    assert_eq!(st.snapshots_applied, snapshots, "no snapshot was needed");
    assert!(
        !r.events[events..]
            .iter()
            .any(|e| matches!(e, Event::Gap { .. } | Event::LeafStale { .. })),
        "{:?}",
        &r.events[events..]
    );
    assert!(took <= ms(5), "consistent again after {took:?}");
    assert_eq!(r.publisher.core.stats().retransmits, 1);
    assert_eq!(r.sub.stats().repair_latency.count(), 1);
    r.assert_equal();
}

#[test]
fn tail_loss_is_detected_by_the_tail_heartbeat_and_repaired_by_nak() {
    // Periodic heartbeats and cycles far apart: only the tail heartbeat,
    // 5 ms after the burst, can tell that the burst's deltas exist.
    let mut pc = rig_pub_config();
    pc.heartbeat_interval(ms(100))
        .tail_heartbeat(ms(5))
        .min_cycle_interval(ms(1000));
    let mut r = Rig::with_publisher(pc, &leaves(10), rig_sub_config());
    // A fresh subscriber believes the first CycleBegin it hears once another
    // datagram repeats it: with 10 leaves in one datagram, the second cycle
    // syncs it.
    r.run(ms(1100));
    assert!(r.converged(), "{:?}", r.sub.status());
    // Right after a periodic heartbeat.
    assert!(
        (0..1000).any(|_| has_heartbeat(&r.run(ms(1)))),
        "a heartbeat"
    );
    let burst = r.now;
    for k in 0..3 {
        r.publish_dropped(Op::Add(k, 1));
    }
    assert_eq!(r.sub.status().known_seq.0, 0, "nothing told the subscriber");
    let mut heard = None;
    while r.now < burst + ms(60) && !r.converged() {
        let sent = r.run(ms(1));
        if heard.is_none() && has_heartbeat(&sent) {
            heard = Some(r.now - burst);
            // It tells the subscriber of all three; none repaired yet.
            let st = r.sub.status();
            assert_eq!((st.known_seq.0, st.seq.0), (3, 0), "{st:?}");
            assert_eq!(r.sub.stats().repaired_by_nak, 0);
        }
    }
    let heard = heard.expect("a tail heartbeat");
    assert!(heard <= ms(6), "tail heartbeat after {heard:?}");
    let took = r.now - burst;
    assert!(r.converged(), "{:?} {:?}", r.sub.status(), r.sub.stats());
    assert!(took <= heard + ms(5), "repaired after {took:?}");
    let st = r.sub.stats();
    assert_eq!((st.repaired_by_nak, st.lost, st.gaps), (3, 0, 0));
    assert_eq!(r.publisher.core.stats().retransmits, 3);
}

#[test]
fn a_nak_for_a_range_gone_from_the_history_falls_back_to_snapshots() {
    let mut pc = rig_pub_config();
    pc.history(2, 1 << 20);
    let mut r = Rig::with_publisher(pc, &leaves(10), rig_sub_config());
    r.run(ms(50));
    for k in 0..5 {
        r.publish_dropped(Op::Add(k, 1));
    }
    // Delta 6 arrives; the history holds 5 and 6 only.
    r.publish_delivered(Op::Add(9, 1));
    assert_eq!(r.sub.status().missing, 5);
    r.run_until(ms(500), Rig::converged)
        .unwrap_or_else(|| panic!("{:?} {:?}", r.sub.status(), r.sub.stats()));
    let (st, ps) = (r.sub.stats(), r.publisher.core.stats());
    assert!(ps.nak_seqs_unavailable >= 4, "{ps:?}");
    assert_eq!(ps.retransmits, 1, "only 5 was held");
    assert_eq!(st.repaired_by_nak, 1);
    assert_eq!((st.gaps, st.lost), (1, 4));
    assert!(r.events.contains(&Event::Gap {
        first: SeqNum(1),
        last: SeqNum(4)
    }));
    r.assert_equal();
}

pub(crate) fn nak(session: u64, ranges: &[SeqRange]) -> Vec<u8> {
    craft(
        StreamId(3),
        SessionId(session),
        0,
        &[Message::Nak(Nak {
            requester: 7,
            ranges: NakRanges::from_slice(ranges),
        })],
    )
}

pub(crate) fn range(first: u64, last: u64) -> SeqRange {
    SeqRange {
        first: SeqNum(first),
        last: SeqNum(last),
    }
}

#[test]
fn a_nak_for_another_session_is_ignored() {
    let mut r = running_rig();
    let from = r.sub_addr;
    let before = r.publisher.core.stats();
    r.publisher
        .core
        .handle_datagram(r.now, from, &mut nak(99, &[range(1, 5)]));
    let frag_nak = craft(
        StreamId(3),
        SessionId(99),
        0,
        &[Message::FragNak(FragNak {
            requester: 7,
            frag_id: 0,
            ranges: FragRanges::from_slice(&[(0, 100)]),
        })],
    );
    r.publisher
        .core
        .handle_datagram(r.now, from, &mut frag_nak.clone());
    // And one of another stream.
    let mut other = craft(
        StreamId(4),
        SessionId(1),
        0,
        &[Message::Nak(Nak {
            requester: 7,
            ranges: NakRanges::from_slice(&[range(1, 5)]),
        })],
    );
    r.publisher.core.handle_datagram(r.now, from, &mut other);
    let sent = r.output();
    let s = r.publisher.core.stats();
    assert_eq!(s.other_session_naks, before.other_session_naks + 2);
    assert_eq!(s.foreign_received, before.foreign_received + 1);
    assert_eq!(s.naks_received, before.naks_received);
    assert_eq!(s.retransmits, before.retransmits);
    assert!(!sent
        .iter()
        .any(|d| (1..=5).any(|q| super::rig::carries_seq(d, q))));
    // The same NAK for the live session is answered.
    r.publisher
        .core
        .handle_datagram(r.now, from, &mut nak(1, &[range(1, 5)]));
    let sent = r.output();
    assert_eq!(r.publisher.core.stats().retransmits, before.retransmits + 5);
    assert!(sent.iter().any(|d| super::rig::carries_seq(d, 3)));
}

#[test]
fn a_nak_for_a_huge_range_is_answered_within_the_repair_budget() {
    let rate = 50_000u64;
    let mut pc = rig_pub_config();
    pc.repair_rate(rate)
        .heartbeat_interval(ms(100))
        .min_cycle_interval(Duration::from_secs(60));
    let mut r = Rig::with_publisher(pc, &leaves(10), rig_sub_config());
    for i in 0..3000u32 {
        r.publisher.publish(&Op::Set((i % 50) as u16, i64::from(i)));
    }
    let _ = r.output();
    let last = r.publisher.core.last_seq().0;
    let before = r.publisher.core.stats();
    let from = r.sub_addr;
    r.publisher
        .core
        .handle_datagram(r.now, from, &mut nak(1, &[range(1, 1 << 63)]));
    // One simulated second, in 1 ms steps.
    let mut wire_bytes = 0;
    let mut message_bytes = 0;
    let mut datagrams = 0;
    for _ in 0..1000 {
        r.now += ms(1);
        for d in r.output() {
            if Datagram::decode(&d)
                .is_ok_and(|d| d.messages().any(|m| matches!(m, Message::Retransmit(_))))
            {
                wire_bytes += d.len() as u64;
                datagrams += 1;
                for m in Datagram::decode(&d).unwrap().messages() {
                    message_bytes += (m.body_len() + 4) as u64;
                }
            }
        }
    }
    let s = r.publisher.core.stats();
    let repair = s.repair_bytes - before.repair_bytes;
    assert_eq!(repair, message_bytes);
    // The budget allows a burst of 10 ms worth (at least two datagrams),
    // and the last message may overshoot it.
    let allowed = rate + (rate / 100).max(2 * 1452) + 1452;
    // On the wire, datagram headers included (paced repairs go one small
    // retransmission per datagram: mostly header).
    assert!(
        wire_bytes <= allowed,
        "{wire_bytes} bytes on the wire in {datagrams} datagrams ({message_bytes} of \
         messages) in 1 s at {rate} B/s"
    );
    assert!(
        wire_bytes >= rate * 9 / 10,
        "the budget was used: {wire_bytes}"
    );
    assert!(datagrams > 10);
    assert!(
        s.retransmits - before.retransmits < last,
        "not everything yet"
    );
    assert_eq!(s.future_nak_heartbeats, before.future_nak_heartbeats + 1);
    assert!(s.nak_seqs_unavailable - before.nak_seqs_unavailable >= (1 << 63) - last);
}

fn world_configs() -> (PublisherConfig, SubscriberConfig) {
    let mut pc = PublisherConfig::default();
    pc.stream(STREAM)
        .heartbeat_interval(ms(10))
        .min_cycle_interval(ms(50))
        .snapshot_rate(SnapshotRate::LeavesPerSec(100_000));
    let mut sc = SubscriberConfig::default();
    sc.stream(STREAM).reorder_timeout(ms(5));
    (pc, sc)
}

/// Runs `n` subscribers that all lose the datagrams of `lost` consecutive
/// deltas; returns the publisher's retransmits and the subscribers' tally.
fn lose_for_all(
    n: usize,
    lost: u64,
    nak_delay: Duration,
    up_jitter: Duration,
) -> (u64, u64, Tally) {
    let (pc, mut sc) = world_configs();
    sc.nak_delay(nak_delay);
    let mut scenario = Scenario::scripted(pc, &sc, n, 20, 20);
    scenario.up.jitter = up_jitter;
    let mut w = World::new(scenario);
    w.auto_deltas = false;
    w.run_for(ms(200)).unwrap();
    w.check_quiescent().unwrap();
    let first = w.publisher.core.last_seq().0 + 1;
    w.filter = Some(Box::new(move |dir, _, d| {
        dir == Dir::Down && (first..first + lost).any(|q| carries_delta(d, q))
    }));
    for k in 0..lost {
        w.publisher.publish(&Op::Add(k as u16, 1));
        w.run_for(ms(1)).unwrap();
    }
    // The next delta reveals the loss to everyone at once.
    w.publisher.publish(&Op::Add(19, 1));
    w.run_for(ms(100)).unwrap();
    w.check_quiescent().unwrap();
    let retransmits = w.publisher.core.stats().retransmits;
    let coalesced = w.publisher.core.stats().repairs_coalesced;
    (retransmits, coalesced, w.finish())
}

#[test]
fn subscribers_losing_the_same_datagram_cause_one_retransmission() {
    let n = 8;
    let (retransmits, _, t) = lose_for_all(n, 1, ms(2), Duration::ZERO);
    eprintln!(
        "{n} subscribers lose one delta: {retransmits} retransmission, {} NAKs sent, {} held back",
        t.naks_sent, t.naks_postponed
    );
    assert_eq!(retransmits, 1, "{t:?}");
    assert_eq!(t.repaired_by_nak, n as u64);
    assert!(
        t.naks_sent < n as u64,
        "hearing the repair held NAKs back: {} sent",
        t.naks_sent
    );
    // Three lost deltas: three retransmissions, whoever asks.
    let (retransmits, _, t) = lose_for_all(n, 3, ms(2), Duration::ZERO);
    assert_eq!(retransmits, 3, "{t:?}");
    assert_eq!(t.repaired_by_nak, 3 * n as u64);
}

#[test]
fn naks_arriving_within_the_holdoff_are_coalesced_into_one_retransmission() {
    // No random delay: every subscriber NAKs at once, before any repair can
    // reach it, and the NAKs reach the publisher over 3 ms (some after the
    // retransmission went out): the hold-off makes one retransmission of
    // them all.
    let n = 8;
    let (retransmits, coalesced, t) = lose_for_all(n, 1, Duration::ZERO, ms(3));
    assert_eq!(t.naks_sent, n as u64, "{t:#?}");
    assert_eq!(t.naks_received, n as u64);
    assert_eq!(retransmits, 1);
    assert!(coalesced >= 1, "{t:#?}");
    assert_eq!(t.repaired_by_nak, n as u64);
}

/// A forged datagram of the live session with a huge sequence number.
fn forged(kind: usize, cycle: u32, last: u64) -> Vec<u8> {
    let huge = 1u64 << 60;
    let key = crate::state::encode(&3u16);
    let payload = crate::state::encode(&Op::Set(3, 666));
    let value = crate::state::encode(&Val::from(666));
    let msg = match kind {
        0 => Message::Delta(Delta {
            seq: SeqNum(huge),
            prev_leaf_seq: SeqNum(last),
            creates: false,
            removes: false,
            key: &key,
            payload: &payload,
        }),
        1 => Message::Heartbeat(Heartbeat {
            last_seq: SeqNum(huge),
            sent_at_micros: 0,
            interval_ms: 10,
        }),
        2 => Message::CycleBegin(CycleBegin {
            cycle: CycleId(cycle.wrapping_add((1 << 31) - 7)),
            start_seq: SeqNum(last),
            leaf_count: 1,
        }),
        5 => Message::CycleBegin(CycleBegin {
            cycle: CycleId(cycle.wrapping_add(1)),
            start_seq: SeqNum(huge),
            leaf_count: 10,
        }),
        3 => Message::CycleEnd(CycleEnd {
            cycle: CycleId(cycle),
            end_seq: SeqNum(huge),
            leaf_count: 10,
        }),
        _ => Message::LeafSnapshot(LeafSnapshot {
            cycle: CycleId(cycle),
            position: 3,
            leaf_seq: SeqNum(huge),
            key: &key,
            value: Some(&value),
        }),
    };
    craft(StreamId(3), SessionId(1), 0xf0f0_f0f0 + kind as u64, &[msg])
}

#[test]
fn a_forged_datagram_with_a_huge_seq_is_not_believed() {
    for kind in 0..6 {
        let mut r = Rig::new(&leaves(10), rig_sub_config());
        let sent = r.run(ms(50));
        for k in 0..5 {
            r.publish_delivered(Op::Add(k, 1));
        }
        r.run(ms(30));
        assert!(r.converged());
        let cycle = *cycles_in(&sent).last().unwrap();
        let last = r.publisher.core.last_seq().0;
        let before = r.sub.stats().clone();
        let d = forged(kind, cycle, last);
        r.deliver(&[d]);
        let st = r.sub.status();
        // A CycleBegin is believed only once a second datagram carries it:
        // this one begins nothing. Its start_seq is a claim like any other.
        assert_eq!(
            r.sub.stats().cycles_begun,
            before.cycles_begun,
            "kind {kind}"
        );
        if kind != 2 {
            assert_eq!(
                r.sub.stats().unbelieved,
                before.unbelieved + 1,
                "kind {kind}"
            );
        }
        assert!(
            st.consistent && st.known_seq.0 == last,
            "kind {kind}: {st:?}"
        );
        r.assert_equal();
        // The stream goes on, unharmed.
        for k in 0..5 {
            r.publish_delivered(Op::Add(k, 2));
        }
        r.run(ms(50));
        assert!(r.converged(), "kind {kind}: {:?}", r.sub.status());
        let after = r.sub.stats();
        assert_eq!(
            (after.gaps, after.naks_sent, after.reanchors),
            (before.gaps, before.naks_sent, before.reanchors),
            "kind {kind}"
        );
        assert_eq!(r.publisher.core.stats().future_nak_heartbeats, 0);
    }
}

/// A claim beyond `max_seq_jump` is believed once another datagram claims
/// as much: a copy of the same datagram is no second witness, and a pending
/// claim is forgotten once a believable datagram shows the session going on
/// without it.
#[test]
fn a_far_claim_needs_another_datagram_not_a_copy_of_its_own() {
    let mut r = running_rig();
    let last = r.publisher.core.last_seq().0;
    let far = last + 8192 + 1000;
    let before = r.sub.stats().unbelieved;
    // The same datagram twice.
    r.deliver(&[heartbeat(1, 0xf000, far, 10), heartbeat(1, 0xf000, far, 10)]);
    assert_eq!(r.sub.stats().unbelieved, before + 2);
    assert_eq!(r.sub.status().known_seq.0, last);
    // The session goes on within the jump; then another far datagram
    // claims more than the first: it is alone again.
    r.publish_delivered(Op::Add(1, 1));
    let last = last + 1;
    assert_eq!(r.sub.status().known_seq.0, last);
    r.deliver(&[heartbeat(1, 0xf001, far + 1, 10)]);
    assert_eq!(r.sub.stats().unbelieved, before + 3);
    assert_eq!(r.sub.status().known_seq.0, last);
    // A second datagram claiming at least as much is believed.
    r.deliver(&[heartbeat(1, 0xf002, far + 1, 10)]);
    assert_eq!(r.sub.stats().unbelieved, before + 3);
    assert_eq!(r.sub.status().known_seq.0, far + 1);
}

/// Before any sequence number is known, the first claim needs a second
/// datagram within `max_seq_jump` of it: neither a copy of the same
/// datagram nor one far from it will do.
#[test]
fn a_first_claim_needs_another_datagram_near_it() {
    let mut sub = crate::subscriber::Subscriber::new(rig_sub_config()).unwrap();
    let mut rep = super::sim::DigestReplica::default();
    let now = std::time::Instant::now();
    let from = super::sim::publisher_addr(0);
    let mut unbelieved = Vec::new();
    for d in [
        heartbeat(1, 1, 100, 10),
        heartbeat(1, 1, 100, 10),
        heartbeat(1, 2, 100 + 8192 + 1, 10),
        heartbeat(1, 3, 100 + 8192 + 2, 10),
    ] {
        sub.handle_datagram(now, from, &mut d.clone(), &mut rep);
        unbelieved.push(sub.stats().unbelieved);
    }
    assert_eq!(unbelieved, [1, 2, 3, 3]);
}

#[test]
fn a_forged_small_jump_is_reanchored_from_the_next_heartbeats() {
    for kind in 0..2 {
        let mut r = running_rig();
        let last = r.publisher.core.last_seq().0;
        let claim = SeqNum(last + 100);
        let msg = if kind == 0 {
            Message::Heartbeat(Heartbeat {
                last_seq: claim,
                sent_at_micros: 0,
                interval_ms: 10,
            })
        } else {
            Message::CycleEnd(CycleEnd {
                cycle: CycleId(0),
                end_seq: claim,
                leaf_count: 10,
            })
        };
        let unbelieved = r.sub.stats().unbelieved;
        let datagrams = r.sub.stats().datagrams;
        r.deliver(&[craft(StreamId(3), SessionId(1), 0xabcd, &[msg])]);
        assert_eq!(r.sub.stats().datagrams, datagrams + 1);
        // Within max_seq_jump: believed, and missing.
        let st = r.sub.status();
        assert_eq!((st.known_seq, st.missing), (claim, 100), "kind {kind}");
        assert_eq!(r.sub.stats().unbelieved, unbelieved);
        r.run_until(ms(200), Rig::converged).unwrap_or_else(|| {
            panic!(
                "kind {kind}: {:?} {:?} {:?}",
                r.sub.status(),
                r.sub.stats(),
                r.publisher.core.stats()
            )
        });
        let (st, ps) = (r.sub.stats(), r.publisher.core.stats());
        assert!(st.reanchors >= 1, "kind {kind}: {st:?}");
        assert!(st.naks_sent >= 1 && ps.future_nak_heartbeats >= 1, "{ps:?}");
        assert_eq!((st.gaps, st.lost), (0, 0), "kind {kind}");
        assert_eq!(r.sub.status().known_seq.0, last);
        // Later deltas are taken as usual.
        r.publish_delivered(Op::Add(1, 5));
        assert!(r.converged());
    }
}

/// Cycles a subscriber needs to become consistent with a 64 KB leaf
/// (about 45 fragments of 1.4 KB) when each datagram is lost with chance
/// 5%; `None` if not within 40 cycles.
fn cycles_to_sync_a_64k_leaf(seed: u64, nak_repair: bool) -> Option<u64> {
    let mut pc = rig_pub_config();
    pc.snapshot_rate(SnapshotRate::BytesPerSec(4_000_000))
        .min_cycle_interval(ms(40));
    let mut initial = leaves(10);
    initial.push((
        20,
        Val {
            n: 1,
            pad: Pad(64 << 10),
        },
    ));
    let mut sc = rig_sub_config();
    sc.nak_repair(nak_repair);
    let mut r = Rig::with_publisher(pc, &initial, sc);
    let mut rng = Rng::new(seed);
    r.drop = Some(Box::new(move |_| rng.chance(0.05)));
    let cycles = |r: &Rig| r.publisher.core.stats().cycles;
    // Join at a cycle's start.
    let began = (0..1000).any(|_| {
        r.now += ms(1);
        let _missed = r.output();
        r.publisher.core.cycle_progress().is_some()
    });
    assert!(began, "a cycle began");
    let start = cycles(&r);
    let end = r.now + Duration::from_secs(60);
    while cycles(&r) - start < 40 && r.now < end {
        r.run(ms(1));
        if r.converged() {
            return Some(cycles(&r) - start + 1);
        }
    }
    None
}

#[test]
fn a_64k_leaf_under_5_percent_loss_syncs_within_3_cycles_by_fragment_repair() {
    let mut with = Vec::new();
    let mut without = Vec::new();
    for seed in 0..8 {
        with.push(cycles_to_sync_a_64k_leaf(seed, true));
        without.push(cycles_to_sync_a_64k_leaf(seed, false));
    }
    eprintln!(
        "cycles to sync a 64 KB leaf under 5% loss: with FragNak {with:?}, without {without:?}"
    );
    assert!(
        with.iter().all(|c| c.is_some_and(|c| c <= 3)),
        "with fragment repair: {with:?}"
    );
    let slow = without.iter().filter(|c| c.is_none_or(|c| c > 3)).count();
    assert!(
        slow >= 4,
        "without fragment repair most take longer: {without:?}"
    );
}

#[test]
fn duplicate_deltas_are_dropped_and_counted() {
    let mut r = running_rig();
    let dups = r.sub.stats().duplicates;
    // Each datagram twice; the deltas add (not idempotent).
    for k in 0..4 {
        r.publisher.publish(&Op::Add(k, 3));
        let out = r.output();
        r.deliver(&out);
        r.deliver(&out);
    }
    assert_eq!(r.sub.stats().duplicates, dups + 4);
    r.assert_equal();
    // Out of order and duplicated while waiting: buffered once.
    r.publisher.publish(&Op::Add(1, 1));
    let first = r.output();
    r.publisher.publish(&Op::Add(1, 1));
    let second = r.output();
    r.deliver(&second);
    r.deliver(&second);
    assert_eq!(r.sub.buffered().0, 1);
    r.deliver(&first);
    assert_eq!(r.sub.stats().duplicates, dups + 5);
    r.assert_equal();
    // A retransmission of a delta already applied is a duplicate too.
    let last = r.publisher.core.last_seq().0;
    let from = r.sub_addr;
    r.publisher
        .core
        .handle_datagram(r.now, from, &mut nak(1, &[range(last, last)]));
    let retransmit = r.output();
    assert!(retransmit.iter().any(|d| super::rig::carries_seq(d, last)));
    r.deliver(&retransmit);
    assert_eq!(r.sub.stats().duplicates, dups + 6);
    assert_eq!(r.sub.stats().repaired_by_nak, 0);
    r.assert_equal();
    assert!(r.converged());
}

/// A NAK naming sequence numbers beyond the latest is answered by a prompt
/// heartbeat, at most one per millisecond however many such NAKs arrive,
/// and one more once the millisecond has passed.
#[test]
fn naks_beyond_the_latest_prompt_at_most_one_heartbeat_per_millisecond() {
    let mut pc = rig_pub_config();
    pc.heartbeat_interval(Duration::from_secs(60))
        .min_cycle_interval(Duration::from_secs(60));
    let mut r = Rig::with_publisher(pc, &leaves(3), rig_sub_config());
    let _ = r.output();
    let from = r.sub_addr;
    let future = r.publisher.core.last_seq().0 + 10;
    let prompts = |r: &Rig| r.publisher.core.stats().future_nak_heartbeats;
    let before = prompts(&r);
    // Two NAKs before the publisher sends: one heartbeat.
    for _ in 0..2 {
        r.publisher
            .core
            .handle_datagram(r.now, from, &mut nak(1, &[range(future, future)]));
    }
    assert_eq!(prompts(&r), before + 1);
    assert!(has_heartbeat(&r.output()));
    // Another within the millisecond: none.
    r.now += Duration::from_micros(500);
    r.publisher
        .core
        .handle_datagram(r.now, from, &mut nak(1, &[range(future, future)]));
    assert_eq!(prompts(&r), before + 1);
    assert!(!has_heartbeat(&r.output()));
    // A millisecond after the first: one more.
    r.now += Duration::from_micros(500);
    r.publisher
        .core
        .handle_datagram(r.now, from, &mut nak(1, &[range(future, future)]));
    assert_eq!(prompts(&r), before + 2);
    assert!(has_heartbeat(&r.output()));
}

/// A relay answers a NAK by repeating the original datagram (PROTOCOL.md
/// §12.4): a late copy of a Delta that fills a NAKed hole is a repair
/// (counted, and the rest of the hole gets more time), while one filling a
/// hole never NAKed is only late.
#[test]
fn a_late_copy_of_the_original_filling_a_naked_hole_counts_as_a_repair() {
    let mut r = running_rig();
    r.carry_naks = false;
    // The datagram of one delta is lost (kept aside), the next reveals it.
    r.publisher.publish(&Op::Add(4, 1));
    let lost = r.output();
    assert!(
        lost.iter().any(|d| carries_delta(d, 6)),
        "delta 6 in {lost:?}"
    );
    r.publish_delivered(Op::Add(5, 2));
    assert_eq!(r.sub.status().missing, 1);
    // Its NAK goes out (and is not answered).
    r.run_until(ms(100), |r| r.sub.stats().naks_sent >= 1);
    let before = r.sub.stats().clone();
    // The relay's repeat: the same bytes, below the highest datagram_seq.
    r.deliver(&lost);
    let after = r.sub.stats().clone();
    assert!(r.converged(), "{:?}", r.sub.status());
    assert_eq!(
        after.repaired_by_nak,
        before.repaired_by_nak + 1,
        "{after:?}"
    );
    assert_eq!(after.filled_late, before.filled_late);

    // Lost again, but the copy comes before any NAK: only late.
    r.publisher.publish(&Op::Add(4, 1));
    let lost = r.output();
    r.publish_delivered(Op::Add(5, 2));
    assert_eq!(r.sub.status().missing, 1);
    assert_eq!(r.sub.stats().naks_sent, after.naks_sent, "no NAK yet");
    r.deliver(&lost);
    let last = r.sub.stats().clone();
    assert!(r.converged(), "{:?}", r.sub.status());
    assert_eq!(last.repaired_by_nak, after.repaired_by_nak);
    assert_eq!(last.filled_late, after.filled_late + 1);
}
