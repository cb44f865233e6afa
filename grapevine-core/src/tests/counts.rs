//! The publisher's counters, each against what it actually sent or was
//! sent: the wire is the reference, so a counter that drifts from it fails.

use std::time::Duration;

use super::repair::{nak, range};
use super::rig::{leaves, Rig};
use super::sim::{craft, subscriber_addr, Op};
use crate::publisher::{PublisherStats, SnapshotRate};
use crate::subscriber::SubscriberConfig;
use crate::wire::{Datagram, Delta, FragNak, FragRanges, Heartbeat, Message};
use crate::{SeqNum, SessionId, StreamId};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn sub_cfg() -> SubscriberConfig {
    let mut c = SubscriberConfig::default();
    c.stream(StreamId(3)).rng_seed(1);
    c
}

/// What `sent` carried, counted the way `PublisherStats` counts it.
fn tally(sent: &[Vec<u8>]) -> PublisherStats {
    let mut s = PublisherStats::default();
    for d in sent {
        s.datagrams += 1;
        s.bytes += d.len() as u64;
        for m in Datagram::decode(d).unwrap().messages() {
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
    // Seqs 1..=3 (held), and 5 beyond the latest (never sent).
    let resent = send(&mut r, nak(1, &[range(1, 3), range(last + 1, last + 5)]));
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
    assert_eq!(d(|s| s.nak_seqs_requested), 3);
    assert_eq!(d(|s| s.retransmits), 3);
    assert_eq!(tally(&resent).retransmits, 3);
    assert_eq!(d(|s| s.nak_seqs_unavailable), 5);
    assert_eq!(d(|s| s.future_nak_heartbeats), 1);
    assert_eq!(d(|s| s.nak_ranges_dropped), 0);
    // 1,050 disjoint ranges (every other seq): the queue holds 1,024.
    let odd: Vec<_> = (0..1_050).map(|i| range(2 * i + 1, 2 * i + 1)).collect();
    for chunk in odd.chunks(100) {
        let mut d = nak(1, chunk);
        r.publisher.core.handle_datagram(r.now, from, &mut d);
    }
    let s = r.publisher.core.stats();
    assert_eq!(s.naks_received - before.naks_received, 12);
    assert_eq!(s.nak_ranges_dropped, 1_050 - 1_024);
}
