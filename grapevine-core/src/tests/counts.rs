//! The publisher's counters, each against what it actually sent or was
//! sent: the wire is the reference, so a counter that drifts from it fails.

use super::repair::{nak, range};
use super::rig::{leaves, messages, ms, rig_sub_config, sub_cfg, Rig};
use super::sim::{craft, subscriber_addr, Op, Pad, Rng, Val};
use crate::publisher::{PublisherStats, SnapshotRate};
use crate::state::encode;
use crate::wire::{
    Datagram, Delta, FragNak, FragRanges, Heartbeat, KindCounts, LeafSnapshot, Message,
};
use crate::{CycleId, SeqNum, SessionId, StreamId};

/// What `sent` carried, counted the way `PublisherStats` counts it (an
/// undecodable datagram counts as a datagram and its bytes).
fn tally(sent: &[Vec<u8>]) -> PublisherStats {
    let mut s = PublisherStats::default();
    for d in sent {
        s.datagrams += 1;
        s.bytes += d.len() as u64;
        for m in Datagram::decode(d).iter().flat_map(|d| d.messages()) {
            match m {
                Message::Delta(_) => s.deltas += 1,
                Message::Retransmit(_) => s.retransmits += 1,
                Message::Heartbeat(_) => s.heartbeats += 1,
                Message::CycleEnd(_) => s.cycles += 1,
                Message::LeafSnapshot(l) => {
                    s.snapshots += 1;
                    s.tombstones += u64::from(l.value.is_none());
                }
                _ => {}
            }
        }
    }
    s
}

/// The messages of the datagrams `sent` of `stream` that decode, with
/// their bytes, by kind.
fn kinds_of(sent: &[Vec<u8>], stream: StreamId) -> KindCounts {
    let mut c = KindCounts::default();
    for d in sent.iter().filter_map(|d| Datagram::decode(d).ok()) {
        if d.header().stream == stream {
            for m in d.messages() {
                c.add(m.kind_byte(), m.encoded_len());
            }
        }
    }
    c
}

/// Half a second of changes, removals among them, while cycles run: the
/// counts of deltas, snapshots, tombstones, cycles, heartbeats, datagrams
/// and bytes are exactly what went out.
#[test]
fn what_the_publisher_counts_is_what_it_sent() {
    // 20 ms cycles back to back: removals land inside them.
    let mut pc = super::rig::rig_pub_config();
    pc.snapshot_rate(SnapshotRate::LeavesPerSec(2_000));
    let mut r = Rig::with_publisher(pc, &leaves(40), sub_cfg());
    let before = r.publisher.core.stats();
    let mut sent = Vec::new();
    for i in 0..500u16 {
        let k = i * 7 % 40;
        let op = match i % 5 {
            0 => Op::Remove(k),
            1 | 2 => Op::Add(k, 1),
            _ => Op::Set(k, i64::from(i)),
        };
        r.publisher.publish(&op);
        sent.extend(r.run(ms(1)));
    }
    sent.extend(r.output());
    let after = r.publisher.core.stats();
    let wire = tally(&sent);
    let delta = |f: fn(&PublisherStats) -> u64| f(&after) - f(&before);
    assert_eq!(delta(|s| s.deltas), 500);
    assert_eq!(wire.deltas, 500);
    assert_eq!(delta(|s| s.retransmits), wire.retransmits);
    assert_eq!(delta(|s| s.snapshots), wire.snapshots);
    assert_eq!(delta(|s| s.tombstones), wire.tombstones);
    assert!(
        wire.tombstones > 0,
        "removals during a cycle send tombstones"
    );
    assert_eq!(delta(|s| s.cycles), wire.cycles);
    assert!(wire.cycles >= 5, "{} cycles", wire.cycles);
    assert_eq!(delta(|s| s.heartbeats), wire.heartbeats);
    assert!(wire.heartbeats >= 10, "{} heartbeats", wire.heartbeats);
    assert_eq!(delta(|s| s.datagrams), wire.datagrams);
    assert_eq!(delta(|s| s.bytes), wire.bytes);
    assert_eq!(after.unencodable, 0);
    // By kind, messages and bytes.
    let kinds = kinds_of(&sent, r.publisher.core.config().stream_id());
    for (k, n, b) in after.messages.iter() {
        let (n0, b0) = before.messages.get(k);
        assert_eq!((n - n0, b - b0), kinds.get(k), "{k:?}");
    }
    assert_eq!(kinds.get(crate::wire::MessageKind::Delta).0, 500);
    r.assert_equal();
}

/// Every kind of datagram a publisher can be sent is counted under its
/// own name, once, and the NAKed seqs it held are counted as requested.
#[test]
fn what_the_publisher_is_sent_is_counted_by_kind() {
    let mut r = Rig::with_publisher(super::rig::rig_pub_config(), &leaves(4), sub_cfg());
    for k in 0..2_100u16 {
        r.publisher.publish(&Op::Set(k % 4, i64::from(k)));
    }
    r.run(ms(100));
    let last = r.publisher.core.last_seq().0;
    assert_eq!(last, 2_100);
    let from = subscriber_addr(0);
    let before = r.publisher.core.stats();
    let send = |r: &mut Rig, mut d: Vec<u8>| {
        r.publisher.core.handle_datagram(r.now, from, &mut d);
        r.output()
    };
    // Not a datagram; a NAK of another session.
    send(&mut r, vec![0x47, 0x52, 0x50]);
    send(&mut r, nak(2, &[range(1, 3)]));
    // Another stream; then messages a publisher does not take: a delta and
    // a heartbeat.
    let delta = Message::Delta(Delta {
        seq: SeqNum(1),
        prev_leaf_seq: SeqNum::NONE,
        creates: true,
        removes: false,
        key: b"k",
        payload: b"v",
    });
    let hb = Message::Heartbeat(Heartbeat {
        last_seq: SeqNum(1),
        sent_at_micros: 0,
        interval_ms: 1,
    });
    send(&mut r, craft(StreamId(4), SessionId(1), 0, &[hb]));
    send(&mut r, craft(StreamId(3), SessionId(1), 0, &[delta, hb]));
    // A fragment request for a message never sent.
    let frag_nak = Message::FragNak(FragNak {
        requester: 7,
        frag_id: 99,
        ranges: FragRanges::from_slice(&[(0, 10)]),
    });
    send(&mut r, craft(StreamId(3), SessionId(1), 0, &[frag_nak]));
    // Seqs 1..=3 (held); 5 beyond the latest (never sent); and a range
    // across the latest: 2 held, 3 beyond.
    let resent = send(
        &mut r,
        nak(
            1,
            &[
                range(1, 3),
                range(last + 1, last + 5),
                range(last - 1, last + 3),
            ],
        ),
    );
    let s = r.publisher.core.stats();
    let d = |f: fn(&PublisherStats) -> u64| f(&s) - f(&before);
    assert_eq!(d(|s| s.datagrams_received), 6);
    assert_eq!(d(|s| s.malformed_received), 1);
    assert_eq!(d(|s| s.foreign_received), 1);
    assert_eq!(d(|s| s.other_session_naks), 1);
    assert_eq!(d(|s| s.unexpected_messages), 2);
    assert_eq!(d(|s| s.frag_naks_received), 1);
    assert_eq!(d(|s| s.frag_unavailable), 1);
    assert_eq!(d(|s| s.naks_received), 1);
    assert_eq!(d(|s| s.nak_seqs_requested), 5);
    assert_eq!(d(|s| s.retransmits), 5);
    assert_eq!(tally(&resent).retransmits, 5);
    assert_eq!(d(|s| s.nak_seqs_unavailable), 5 + 3);
    assert_eq!(d(|s| s.future_nak_heartbeats), 1);
    assert_eq!(d(|s| s.nak_ranges_dropped), 0);
    // The same seqs again within the hold-off: coalesced, not resent.
    let again = send(&mut r, nak(1, &[range(1, 3)]));
    assert_eq!(tally(&again).retransmits, 0);
    let s = r.publisher.core.stats();
    assert_eq!(s.repairs_coalesced - before.repairs_coalesced, 3);
    assert_eq!(s.retransmits - before.retransmits, 5);
    // 1,050 disjoint ranges (every other seq): the queue holds 1,024.
    let odd: Vec<_> = (0..1_050).map(|i| range(2 * i + 1, 2 * i + 1)).collect();
    for chunk in odd.chunks(100) {
        let mut d = nak(1, chunk);
        r.publisher.core.handle_datagram(r.now, from, &mut d);
    }
    let s = r.publisher.core.stats();
    assert_eq!(s.naks_received - before.naks_received, 13);
    assert_eq!(s.nak_ranges_dropped, 1_050 - 1_024);
}

/// Six hundred milliseconds of a lossy, duplicating network with NAK
/// repair, then one datagram of each kind a subscriber skips or drops:
/// what the subscriber counts as received is exactly what was delivered to
/// it, and its NAK counts are exactly the NAKs it sent.
#[test]
fn what_the_subscriber_counts_is_what_it_was_sent() {
    let mut pc = super::rig::rig_pub_config();
    pc.snapshot_rate(SnapshotRate::LeavesPerSec(2_000));
    let mut r = Rig::with_publisher(pc, &leaves(40), super::rig::rig_sub_config());
    r.carry_naks = false;
    let mut rng = Rng::new(7);
    let (mut delivered, mut unread, mut naks, mut doubled) =
        (Vec::new(), Vec::new(), Vec::new(), 0);
    for i in 0..600u16 {
        if i < 500 {
            r.publisher.publish(&Op::Add(i * 7 % 40, 1));
        }
        r.now += ms(1);
        for d in r.output() {
            if rng.chance(0.1) {
                continue;
            }
            let copies = if rng.chance(0.05) { 2 } else { 1 };
            for _ in 0..copies {
                let unbelieved = r.sub.stats().unbelieved;
                r.deliver(std::slice::from_ref(&d));
                if r.sub.stats().unbelieved == unbelieved {
                    delivered.push(d.clone());
                } else {
                    // Before the starting point, one datagram's claim is
                    // not believed: the datagram goes unread.
                    unread.push(d.clone());
                }
            }
            doubled += (copies - 1) * tally(std::slice::from_ref(&d)).deltas;
        }
        r.tick();
        naks.extend(r.naks.iter().cloned());
        r.deliver_naks();
    }
    // Skipped: a message of an unknown kind. Dropped: not a datagram,
    // another stream, another session.
    let unknown = Message::Unknown {
        kind: 0x7e,
        body: b"later",
    };
    let hb = Message::Heartbeat(Heartbeat {
        last_seq: r.publisher.core.last_seq(),
        sent_at_micros: 0,
        interval_ms: 10,
    });
    let odd = [
        craft(StreamId(3), SessionId(1), 1 << 20, &[unknown]),
        vec![0x47, 0x52, 0x50],
        craft(StreamId(4), SessionId(1), 0, &[hb]),
        craft(StreamId(3), SessionId(2), 0, &[hb]),
    ];
    let before = r.sub.stats().clone();
    r.deliver(&odd);
    delivered.extend(odd);
    let s = r.sub.stats();
    assert_eq!(s.unknown_messages - before.unknown_messages, 1);
    assert_eq!(s.malformed.values().sum::<u64>(), 1);
    assert_eq!(s.foreign_stream, 1);
    assert_eq!(s.other_session, 1);

    assert!(unread.len() <= 2, "{} datagrams unread", unread.len());
    assert_eq!(s.unbelieved, unread.len() as u64);
    let wire = tally(&delivered);
    let everything = [delivered.clone(), unread].concat();
    let all = tally(&everything);
    // By kind: every message of the stream's datagrams, the unknown one
    // among them.
    assert_eq!(s.received, kinds_of(&everything, StreamId(3)));
    assert_eq!(s.received.unknown().0, 1);
    assert!(s.received.get(crate::wire::MessageKind::Retransmit).0 > 0);
    assert_eq!(s.datagrams, all.datagrams);
    assert_eq!(s.bytes, all.bytes);
    assert_eq!(s.deltas_received, wire.deltas + wire.retransmits);
    assert_eq!(s.retransmits_received, wire.retransmits);
    assert!(wire.retransmits > 0, "NAK repair ran");
    assert_eq!(s.snapshots_received, wire.snapshots);
    assert!(
        s.duplicates >= doubled && doubled > 0,
        "{} < {doubled}",
        s.duplicates
    );
    assert!(s.deltas_applied > 0);
    assert!(s.deltas_applied + s.duplicates <= s.deltas_received);
    let (mut nak_datagrams, mut frag_nak_datagrams, mut ranges) = (0, 0, 0);
    for d in &naks {
        let msgs: Vec<_> = Datagram::decode(d).unwrap().messages().collect();
        for m in &msgs {
            if let Message::Nak(n) = m {
                ranges += n.ranges.iter().count() as u64;
            }
        }
        nak_datagrams += u64::from(msgs.iter().any(|m| matches!(m, Message::Nak(_))));
        frag_nak_datagrams += u64::from(msgs.iter().any(|m| matches!(m, Message::FragNak(_))));
    }
    assert_eq!(s.naks_sent, nak_datagrams);
    assert!(nak_datagrams > 0);
    assert_eq!(s.nak_ranges_sent, ranges);
    assert_eq!(s.frag_naks_sent, frag_nak_datagrams);
    r.carry_naks = true;
    r.run_until(ms(1000), Rig::converged)
        .unwrap_or_else(|| panic!("{:?} {:?}", r.sub.status(), r.sub.stats()));
    r.assert_equal();
}

/// Fragment requests: a range at or past the message's end asks for
/// nothing; ranges beyond what the repair queue holds (4,096) are
/// dropped and counted; the rest are answered.
#[test]
fn fragment_requests_are_counted_and_bounded() {
    let mut pc = super::rig::rig_pub_config();
    pc.repair_rate(1 << 30);
    let mut r = Rig::with_publisher(pc, &leaves(1), sub_cfg());
    r.run(ms(50));
    r.publisher.publish(&Op::Fat(0, 1, Pad(20_000)));
    let (frag_id, total) = r
        .output()
        .iter()
        .flat_map(|d| {
            Datagram::decode(d)
                .unwrap()
                .messages()
                .filter_map(|m| match m {
                    Message::Fragment(f) => Some((f.frag_id, f.total_len)),
                    _ => None,
                })
                .collect::<Vec<_>>()
        })
        .next()
        .expect("the delta went out in fragments");
    let from = subscriber_addr(0);
    let frag_nak = |ranges: &[(u32, u32)]| {
        craft(
            StreamId(3),
            SessionId(1),
            0,
            &[Message::FragNak(FragNak {
                requester: 7,
                frag_id,
                ranges: FragRanges::from_slice(ranges),
            })],
        )
    };
    let before = r.publisher.core.stats();
    // From the message's end on, and wholly past it: nothing to send,
    // nothing dropped.
    r.publisher.core.handle_datagram(
        r.now,
        from,
        &mut frag_nak(&[(total, total + 10), (total + 100, total + 110)]),
    );
    let sent = r.output();
    let s = r.publisher.core.stats();
    assert_eq!(s.frag_naks_received, before.frag_naks_received + 1);
    assert_eq!(
        s.fragments_resent,
        before.fragments_resent,
        "{} sent",
        sent.len()
    );
    assert_eq!(s.nak_ranges_dropped, before.nak_ranges_dropped);
    // 5,000 disjoint one-byte ranges, in five requests: 4,096 queued.
    let ranges: Vec<(u32, u32)> = (0..5_000).map(|i| (2 * i, 2 * i + 1)).collect();
    for chunk in ranges.chunks(1_000) {
        r.publisher
            .core
            .handle_datagram(r.now, from, &mut frag_nak(chunk));
    }
    let s = r.publisher.core.stats();
    assert_eq!(
        s.nak_ranges_dropped,
        before.nak_ranges_dropped + 5_000 - 4_096
    );
    // Answered: every fragment resent is counted (the cycles' snapshot of
    // the leaf goes out in fragments too, under other ids).
    let mut sent = Vec::new();
    for _ in 0..200 {
        r.now += ms(1);
        sent.extend(r.output());
    }
    let resent = sent
        .iter()
        .flat_map(|d| Datagram::decode(d).unwrap().messages().collect::<Vec<_>>())
        .filter(|m| matches!(m, Message::Fragment(f) if f.frag_id == frag_id))
        .count() as u64;
    assert!(resent > 0, "the queued ranges are answered");
    assert_eq!(
        r.publisher.core.stats().fragments_resent - before.fragments_resent,
        resent
    );
}

/// Seqs held when asked for but evicted from the history before their
/// repair went out are counted as unavailable, once each, and not resent.
#[test]
fn seqs_evicted_before_their_repair_are_counted_unavailable() {
    let mut pc = super::rig::rig_pub_config();
    pc.history(10, 1 << 20);
    let mut r = Rig::with_publisher(pc, &leaves(4), sub_cfg());
    for k in 0..10u16 {
        r.publisher.publish(&Op::Set(k % 4, i64::from(k)));
    }
    r.run(ms(50));
    let before = r.publisher.core.stats();
    let mut d = nak(1, &[range(1, 5)]);
    r.publisher
        .core
        .handle_datagram(r.now, subscriber_addr(0), &mut d);
    assert_eq!(
        r.publisher.core.stats().nak_seqs_unavailable,
        before.nak_seqs_unavailable
    );
    // Ten more deltas before the repair goes out: 1..=10 leave the history.
    for k in 0..10u16 {
        r.publisher.publish(&Op::Set(k % 4, i64::from(k)));
    }
    let sent = r.output();
    let s = r.publisher.core.stats();
    assert_eq!(s.nak_seqs_unavailable - before.nak_seqs_unavailable, 5);
    assert_eq!(s.retransmits, before.retransmits);
    assert_eq!(tally(&sent).retransmits, 0);
}

/// Snapshots installed are counted once per leaf: the first cycle installs
/// the ten leaves, later cycles bring nothing newer. Late copies of an old
/// cycle's datagrams, once a removal has been forgotten, are stale for the
/// removed leaf only (the others are held, and merely old).
#[test]
fn snapshots_are_counted_installed_once_and_stale_when_late_for_a_forgotten_leaf() {
    let mut r = Rig::new(&leaves(10), rig_sub_config());
    r.run_until(ms(500), Rig::converged).expect("synced");
    let begun = r.sub.stats().cycles_begun;
    let old = r.run(ms(100));
    let s = r.sub.stats();
    assert_eq!(
        (s.snapshots_applied, s.stale_snapshots, s.syncs),
        (10, 0, 1)
    );
    let mut cycles: Vec<_> = messages(&old)
        .filter_map(|m| match m {
            Message::CycleBegin(c) => Some(c.cycle),
            _ => None,
        })
        .collect();
    cycles.dedup();
    assert!(cycles.len() >= 4, "{cycles:?}");
    assert_eq!(s.cycles_begun - begun, cycles.len() as u64);
    assert!(s.snapshots_received > 10);
    // Removed (and the next cycles start later: each proves it absent as
    // of its start), and forgotten two cycles later.
    r.publish_delivered(Op::Remove(3));
    r.publish_delivered(Op::Add(5, 1));
    r.run(ms(100));
    assert_eq!(r.sub.tracked_leaves(), 9);
    assert!(r.converged());
    let before = r.sub.stats().clone();
    let cycle = |m: &Message<'_>| match m {
        Message::LeafSnapshot(l) => Some(l.cycle),
        _ => None,
    };
    let first = messages(&old).find_map(|m| cycle(&m)).unwrap();
    let copies: Vec<Vec<u8>> = old
        .into_iter()
        .filter(|d| messages(std::slice::from_ref(d)).any(|m| cycle(&m) == Some(first)))
        .collect();
    let snapshots = messages(&copies).filter(|m| cycle(m).is_some()).count() as u64;
    assert_eq!(snapshots, 10, "a whole cycle");
    r.deliver(&copies);
    let s = r.sub.stats();
    assert_eq!(s.stale_snapshots, before.stale_snapshots + 1);
    assert_eq!(s.ghosts_removed, 0, "a removal seen is no ghost");
    assert_eq!(s.snapshots_received, before.snapshots_received + 10);
    assert_eq!(s.snapshots_applied, before.snapshots_applied);
    assert!(r.converged(), "{:?}", r.sub.status());
}

/// Before a second cycle is heard, a snapshot from a cycle whose start is
/// unknown, of a leaf not held, is stale: it may predate a removal.
#[test]
fn a_snapshot_of_an_unknown_cycle_for_a_leaf_not_held_is_stale() {
    let mut r = Rig::new(&leaves(10), rig_sub_config());
    r.run_until(ms(500), |r| r.sub.stats().cycles_begun == 1)
        .expect("a cycle begun");
    let (cycle, _, _) = r.last_begin.unwrap();
    let (key, value) = (encode(&42u16), encode(&Val::from(1)));
    let snap = LeafSnapshot {
        cycle: CycleId(cycle.wrapping_sub(1)),
        position: 9,
        leaf_seq: SeqNum(0),
        key: &key,
        value: Some(&value),
    };
    let before = r.sub.stats().clone();
    r.deliver(&[craft(
        StreamId(3),
        SessionId(1),
        1 << 30,
        &[Message::LeafSnapshot(snap)],
    )]);
    let s = r.sub.stats();
    assert_eq!(s.stale_snapshots, before.stale_snapshots + 1);
    assert_eq!(s.snapshots_applied, before.snapshots_applied);
    r.run_until(ms(500), Rig::converged).expect("synced");
}

/// A delta that arrives after the one that follows it fills its hole late
/// (not a repair); a retransmission heard for someone else's NAK fills its
/// hole, counts as a repair, and holds back this subscriber's NAKs for the
/// holes after it.
#[test]
fn late_deltas_and_repairs_heard_for_others_are_counted() {
    let mut r = Rig::new(&leaves(10), rig_sub_config());
    r.run_until(ms(500), Rig::converged).expect("synced");
    r.carry_naks = false;
    r.publisher.publish(&Op::Add(1, 1));
    let first = r.output();
    r.publish_delivered(Op::Add(2, 1));
    let before = r.sub.stats().clone();
    r.deliver(&first);
    assert_eq!(r.sub.stats().filled_late, before.filled_late + 1);
    assert!(r.converged());
    // Holes at the first, third and fifth of six deltas.
    let last = r.publisher.core.last_seq().0;
    for i in 0..6 {
        if i % 2 == 0 {
            r.publish_dropped(Op::Add(i, 1));
        } else {
            r.publish_delivered(Op::Add(i, 1));
        }
    }
    assert_eq!(r.sub.status().missing, 3);
    // Another subscriber's NAK for the first hole, answered 5 ms later:
    // the other two holes' NAKs (due within the 2 ms NAK delay) wait.
    r.publisher.core.handle_datagram(
        r.now,
        subscriber_addr(1),
        &mut nak(1, &[range(last + 1, last + 1)]),
    );
    r.now += ms(5);
    let before = r.sub.stats().clone();
    let repair: Vec<_> = r
        .output()
        .into_iter()
        .filter(|d| messages(std::slice::from_ref(d)).any(|m| matches!(m, Message::Retransmit(_))))
        .collect();
    r.deliver(&repair);
    let s = r.sub.stats();
    assert_eq!(s.retransmits_received, before.retransmits_received + 1);
    assert_eq!(s.repaired_by_nak, before.repaired_by_nak + 1);
    assert_eq!(s.naks_postponed, before.naks_postponed + 2);
    assert_eq!(r.sub.status().missing, 2);
}

/// A retransmission of a delta this subscriber already holds (someone
/// else's NAK answered) fills nothing, yet still holds back its NAKs for
/// the holes after it: the same burst may bring them (PROTOCOL.md §8.3).
#[test]
fn a_retransmission_for_another_subscriber_holds_back_naks() {
    let mut r = Rig::new(&leaves(10), rig_sub_config());
    r.run_until(ms(500), Rig::converged).expect("synced");
    r.carry_naks = false;
    let last = r.publisher.core.last_seq().0;
    // Held: the first, third and fifth deltas. Holes: the second and the
    // fourth.
    for i in 0..5 {
        if i % 2 == 0 {
            r.publish_delivered(Op::Add(i, 1));
        } else {
            r.publish_dropped(Op::Add(i, 1));
        }
    }
    assert_eq!(r.sub.status().missing, 2);
    r.naks.clear();
    // Another subscriber NAKs the delta this one holds.
    r.publisher.core.handle_datagram(
        r.now,
        subscriber_addr(1),
        &mut nak(1, &[range(last + 1, last + 1)]),
    );
    // Answered 5 ms later, when the holes' NAKs (due within the 2 ms NAK
    // delay) are overdue but not yet sent: the subscriber has not woken.
    r.now += ms(5);
    let before = r.sub.stats().clone();
    let repair: Vec<_> = r
        .output()
        .into_iter()
        .filter(|d| messages(std::slice::from_ref(d)).any(|m| matches!(m, Message::Retransmit(_))))
        .collect();
    assert!(!repair.is_empty(), "the publisher answered the NAK");
    r.deliver(&repair);
    let s = r.sub.stats();
    assert_eq!(s.retransmits_received, before.retransmits_received + 1);
    assert_eq!(s.repaired_by_nak, before.repaired_by_nak);
    assert_eq!(s.naks_postponed, before.naks_postponed + 2);
    assert_eq!(r.sub.status().missing, 2);
    // Overdue, yet held back by up to a NAK delay from now ...
    assert!(r.naks.is_empty(), "NAKs went out while held back");
    // ... and asked for once it has passed.
    r.now += ms(3);
    r.tick();
    assert!(!r.naks.is_empty(), "the held-back NAKs never went out");
}

/// A cycle's snapshot of a leaf held, newer than the deltas applied (its
/// delta is missing and waits for repair), is left to that delta: counted,
/// once per copy heard while the hole is open.
#[test]
fn snapshots_ahead_of_the_deltas_are_deferred_and_counted() {
    let mut cfg = rig_sub_config();
    cfg.repair_timeout(ms(200));
    let mut r = Rig::new(&leaves(10), cfg);
    r.run_until(ms(500), Rig::converged).expect("synced");
    r.carry_naks = false;
    r.publish_dropped(Op::Add(4, 1));
    r.publish_delivered(Op::Add(5, 1));
    let before = r.sub.stats().clone();
    let mut expected = 0;
    for _ in 0..100 {
        r.now += ms(1);
        for d in r.output() {
            let applied = r.sub.status().seq;
            expected += messages(std::slice::from_ref(&d))
                .filter(|m| matches!(m, Message::LeafSnapshot(l) if l.leaf_seq > applied))
                .count() as u64;
            r.deliver(&[d]);
        }
        r.tick();
    }
    assert_eq!(r.sub.status().missing, 1, "still open");
    // Leaf 4's snapshot, and leaf 5's (its delta waits behind the hole),
    // in each of the cycles.
    assert!(expected >= 4, "{expected}");
    assert_eq!(
        r.sub.stats().snapshots_deferred,
        before.snapshots_deferred + expected
    );
    r.carry_naks = true;
    r.run_until(ms(500), Rig::converged).expect("repaired");
}

/// A delta whose leaf's chain is broken (the delta before it on that leaf
/// was lost, and the loss declared) waits for the leaf's snapshot: counted
/// as pending, once.
#[test]
fn a_delta_on_a_broken_chain_is_counted_pending() {
    let mut r = Rig::new(&leaves(10), super::rig::rig_sub_config_no_nak());
    r.run_until(ms(500), Rig::converged).expect("synced");
    r.publish_dropped(Op::Add(4, 1));
    r.publish_delivered(Op::Add(5, 1));
    r.now += ms(10);
    r.tick();
    assert_eq!(r.sub.stats().gaps, 1, "the loss is declared");
    let before = r.sub.stats().clone();
    r.publish_delivered(Op::Add(4, 1));
    let s = r.sub.stats();
    assert_eq!(s.deltas_pending, before.deltas_pending + 1);
    assert_eq!(s.deltas_applied, before.deltas_applied);
    assert_eq!(s.deltas_covered, before.deltas_covered);
    r.run_until(ms(500), Rig::converged).expect("repaired");
}
