//! The subscriber's API contract: its bounded event queue, and what it
//! counts of deltas that disagree with its state type.

use std::time::Duration;

use std::time::Instant;

use super::rig::{heartbeat, leaves, ms, rig_sub_config, rig_sub_config_no_nak, Checked, Rig};
use super::sim::{craft, Bounds, Op};
use crate::state::encode;
use crate::subscriber::{Event, Subscriber};
use crate::wire::{Datagram, Delta, Message};
use crate::{SeqNum, SessionId, StreamId};

/// An application that stops polling events loses the oldest ones, never
/// the newest, and each lost event is counted.
#[test]
fn a_full_event_queue_drops_the_oldest_and_counts_them() {
    let mut cfg = rig_sub_config();
    cfg.max_events(4).delta_events(true);
    let mut r = Rig::new(&leaves(5), cfg);
    r.run_until(ms(500), Rig::converged).expect("synced");
    assert_eq!(r.sub.stats().events_dropped, 0);
    // Ten deltas, and nobody polls the events meanwhile.
    for i in 0..10 {
        r.publisher.publish(&Op::Add(i % 5, 1));
    }
    let last = r.publisher.core.last_seq().0;
    for d in r.output() {
        let mut d = d.clone();
        let from = r.pub_addr;
        r.sub.handle_datagram(r.now, from, &mut d, &mut r.replica);
    }
    assert_eq!(r.sub.status().seq.0, last);
    assert_eq!(r.sub.stats().events_dropped, 6);
    let kept: Vec<_> = std::iter::from_fn(|| r.sub.poll_event()).collect();
    let newest: Vec<_> = (last - 3..=last)
        .map(|s| Event::DeltaApplied { seq: SeqNum(s) })
        .collect();
    assert_eq!(kept, newest);
}

/// A delta whose REMOVES flag says the opposite of what applying it did
/// (the subscriber's state type is not the publisher's) is applied and
/// counted, either way round.
#[test]
fn a_delta_whose_removes_flag_disagrees_is_counted() {
    let mut r = Rig::new(&leaves(5), rig_sub_config());
    r.run_until(ms(500), Rig::converged).expect("synced");
    let mut seq = r.publisher.core.last_seq().0;
    // Adding to leaf 1 keeps it, yet REMOVES is set; removing leaf 2
    // removes it, yet REMOVES is clear.
    for (op, removes) in [(Op::Add(1, 1), true), (Op::Remove(2), false)] {
        seq += 1;
        let payload = encode(&op);
        let key = encode(&match op {
            Op::Add(k, _) | Op::Remove(k) => k,
            _ => unreachable!(),
        });
        let before = r.sub.stats().clone();
        let d = craft(
            StreamId(3),
            SessionId(1),
            1 << 40 | seq,
            &[Message::Delta(Delta {
                seq: SeqNum(seq),
                prev_leaf_seq: SeqNum::NONE,
                creates: false,
                removes,
                key: &key,
                payload: &payload,
            })],
        );
        let from = r.pub_addr;
        r.sub
            .handle_datagram(r.now, from, &mut d.clone(), &mut r.replica);
        let after = r.sub.stats();
        assert_eq!(after.deltas_applied, before.deltas_applied + 1, "{op:?}");
        assert_eq!(
            after.removes_mismatch,
            before.removes_mismatch + 1,
            "{op:?}"
        );
    }
}

/// NAK datagrams are at most `max_datagram_size` bytes, the buffer size the
/// config tells a driver: forty holes at once, with 128-byte datagrams, go
/// out in several NAKs.
#[test]
fn naks_fit_the_datagram_size_the_config_tells() {
    let mut cfg = rig_sub_config();
    cfg.max_datagram(128);
    assert_eq!(cfg.max_datagram_size(), 128);
    let mut r = Rig::new(&leaves(5), cfg);
    r.run_until(ms(500), Rig::converged).expect("synced");
    r.carry_naks = false;
    for i in 0..80u16 {
        if i % 2 == 0 {
            r.publish_dropped(Op::Add(i % 5, 1));
        } else {
            r.publish_delivered(Op::Add(i % 5, 1));
        }
    }
    // One step: the forty holes all fall due at once, and go out five
    // ranges (16 bytes each) to a datagram, as many as 128 bytes hold:
    // 28 (header) + 4 (message header) + 6 (requester, count) + 5 × 16.
    r.step = ms(20);
    r.run(ms(20));
    r.step = ms(1);
    assert_eq!(r.naks.len(), 8, "{:?}", r.naks);
    for d in &r.naks {
        assert_eq!(d.len(), 118);
        let dg = Datagram::decode(d).unwrap();
        assert!(dg
            .messages()
            .all(|m| matches!(m, Message::Nak(n) if n.ranges.len() == 5)));
    }
    r.carry_naks = true;
    r.run_until(ms(1000), Rig::converged).expect("repaired");
}

/// A late joiner asks by NAK for the deltas since the start of the cycle
/// it joined in (catching up), unless `catch_up` is 0: then it starts at
/// the first delta it hears and sends no NAK on a lossless network.
#[test]
fn a_late_joiner_catches_up_by_nak_unless_told_not_to() {
    for catch_up in [None, Some(0)] {
        let mut cfg = rig_sub_config();
        if let Some(n) = catch_up {
            cfg.catch_up(n);
        }
        let mut pc = super::rig::rig_pub_config();
        pc.snapshot_rate(crate::publisher::SnapshotRate::LeavesPerSec(500));
        let mut r = Rig::with_publisher(pc, &leaves(50), cfg);
        // The subscriber hears nothing for 30 ms: it joins mid-cycle.
        r.drop = Some(Box::new(|_| true));
        for i in 0..130u16 {
            if i == 30 {
                r.drop = None;
            }
            r.publisher.publish(&Op::Add(i % 50, 1));
            r.run(ms(1));
        }
        r.run_until(ms(1000), Rig::converged)
            .unwrap_or_else(|| panic!("{catch_up:?}: {:?}", r.sub.status()));
        let naks = r.sub.stats().naks_sent;
        // Catching up replays deltas that snapshots heard since joining
        // already reflect: those are skipped (covered), not applied again.
        let covered = r.sub.stats().deltas_covered;
        match catch_up {
            None => assert!(naks > 0 && covered > 0, "{naks} {covered}"),
            Some(_) => assert_eq!((naks, covered), (0, 0)),
        }
    }
}

/// The configuration a subscriber reports is the one it was given.
#[test]
fn a_subscriber_reports_its_configuration() {
    let mut cfg = rig_sub_config();
    cfg.max_datagram(600).catch_up(7).max_seq_jump(99);
    let sub = Subscriber::new(cfg.clone()).unwrap();
    assert_eq!(*sub.config(), cfg);
}

/// With `catch_up` 0 a late joiner starts at the first delta it believes:
/// that delta is applied, not left to the snapshots.
#[test]
fn without_catch_up_the_first_believed_delta_is_applied() {
    let mut cfg = rig_sub_config();
    cfg.catch_up(0).delta_events(true);
    let mut c = Checked::hostile(cfg, Bounds::default());
    let key = encode(&1u16);
    let payload = encode(&Op::Add(1, 1));
    for seq in [5, 6] {
        let d = Delta {
            seq: SeqNum(seq),
            prev_leaf_seq: SeqNum::NONE,
            creates: true,
            removes: false,
            key: &key,
            payload: &payload,
        };
        c.deliver(&craft(StreamId(3), SessionId(1), seq, &[Message::Delta(d)]));
    }
    // The first datagram waits for a second to corroborate it, and is
    // lost; the second starts the stream.
    assert_eq!(c.sub.stats().unbelieved, 1);
    assert_eq!(c.sub.status().seq, SeqNum(6));
    assert_eq!(c.sub.stats().deltas_applied, 1);
    assert!(c.events.contains(&Event::DeltaApplied { seq: SeqNum(6) }));
}

/// `consistent_share` is the share of the time since the replica first
/// synced during which the status said consistent: none before sync, and
/// exactly the time observed consistent, step by step, through a hole
/// repaired by snapshot.
#[test]
fn the_consistent_share_is_the_time_consistent_since_sync() {
    struct Track {
        synced_at: Option<Instant>,
        on: Duration,
        last: Option<(Instant, bool)>,
    }
    impl Track {
        fn observe(&mut self, r: &Rig) -> f64 {
            if let Some((t, true)) = self.last {
                self.on += r.now - t;
            }
            let st = r.sub.status();
            if st.synced && self.synced_at.is_none() {
                self.synced_at = Some(r.now);
            }
            let share = r.sub.consistent_share(r.now);
            let Some(since) = self.synced_at else {
                assert_eq!(share, None);
                return 0.0;
            };
            self.last = Some((r.now, st.consistent));
            let want = if r.now == since {
                f64::from(u8::from(st.consistent))
            } else {
                self.on.as_secs_f64() / (r.now - since).as_secs_f64()
            };
            let share = share.expect("synced");
            assert!((share - want).abs() < 1e-9, "{share} != {want}");
            share
        }
    }
    let mut t = Track {
        synced_at: None,
        on: Duration::ZERO,
        last: None,
    };
    let mut r = Rig::new(&leaves(5), rig_sub_config_no_nak());
    t.observe(&r);
    for _ in 0..1000 {
        if r.converged() {
            break;
        }
        r.run(ms(1));
        t.observe(&r);
    }
    assert!(r.converged(), "{:?}", r.sub.status());
    for _ in 0..20 {
        r.run(ms(1));
        assert_eq!(t.observe(&r), 1.0);
    }
    // A lost delta: inconsistent until the snapshots repair it.
    r.publish_dropped(Op::Add(1, 1));
    r.publish_delivered(Op::Add(2, 1));
    t.observe(&r);
    for _ in 0..1000 {
        r.run(ms(1));
        t.observe(&r);
        if r.converged() {
            break;
        }
    }
    assert!(r.converged(), "{:?}", r.sub.status());
    for _ in 0..20 {
        r.run(ms(1));
        t.observe(&r);
    }
    let share = t.observe(&r);
    assert!(share > 0.1 && share < 0.95, "{share}");
}

/// A subscriber follows another session only once its own has been silent
/// for two heartbeat intervals (100 ms here) and the other has proven
/// alive: two datagrams, in increasing `datagram_seq`, at least one
/// interval apart. A copy of a datagram proves nothing, a late datagram
/// starts the proof over, and datagrams of two other sessions do not add
/// up.
#[test]
fn another_session_is_followed_once_the_current_is_silent_and_it_lives() {
    let t0 = Instant::now();
    // (at ms, session, datagram_seq, session followed after it)
    let scripts: [&[(u64, u64, u64, u64)]; 4] = [
        // Silent for 120 ms only: not yet. Then silent for 210 ms.
        &[(0, 1, 1, 1), (10, 2, 1, 1), (120, 2, 2, 1), (210, 2, 3, 2)],
        // Two datagrams 1 ms apart prove nothing; a third 100 ms after the
        // first does.
        &[(0, 1, 1, 1), (300, 2, 1, 1), (301, 2, 2, 1), (400, 2, 3, 2)],
        // A copy 100 ms later proves nothing, nor starts the proof over.
        &[(0, 1, 1, 1), (300, 2, 1, 1), (400, 2, 1, 1), (401, 2, 2, 2)],
        // Two other sessions, each proving the other's life.
        &[
            (0, 1, 1, 1),
            (300, 2, 1, 1),
            (350, 3, 2, 1),
            (420, 2, 3, 1),
            (421, 3, 4, 1),
        ],
    ];
    for (i, script) in scripts.iter().enumerate() {
        let mut c = Checked::hostile(rig_sub_config(), Bounds::default());
        for &(at, session, dseq, follows) in *script {
            c.now = t0 + ms(at);
            c.deliver(&heartbeat(session, dseq, 5, 100));
            assert_eq!(
                c.sub.status().session,
                Some(SessionId(follows)),
                "script {i} at {at} ms"
            );
        }
        let switched = script.last().unwrap().3 != 1;
        assert_eq!(c.sub.stats().restarts, u64::from(switched), "script {i}");
        assert_eq!(
            c.events
                .iter()
                .filter(|e| matches!(e, Event::PublisherRestarted { .. }))
                .count(),
            usize::from(switched),
            "script {i}"
        );
    }
}

/// Requests for missing fragments: at most 256 wait at once, however many
/// partial messages the reassembler may hold; each goes out in a datagram
/// of its own, counted, with a `datagram_seq` of its own, increasing.
#[test]
fn fragment_requests_are_bounded_counted_and_numbered() {
    let mut rc = crate::ReassemblyConfig::default();
    rc.max_partials(300);
    let mut cfg = rig_sub_config();
    cfg.reassembly(rc);
    let mut sub = Subscriber::new(cfg).unwrap();
    let mut rep = super::sim::DigestReplica::default();
    let now = Instant::now();
    let from = super::sim::publisher_addr(0);
    // Two heartbeats start the session; then the first half of 300
    // messages of 2,000 bytes.
    let mut datagrams = vec![heartbeat(1, 1, 5, 100), heartbeat(1, 2, 5, 100)];
    for i in 0..300 {
        let f = crate::wire::Fragment {
            frag_id: i,
            total_len: 2_000,
            offset: 0,
            inner_kind: 0x01,
            data: &[0; 1_000],
        };
        datagrams.push(craft(
            StreamId(3),
            SessionId(1),
            10 + u64::from(i),
            &[Message::Fragment(f)],
        ));
    }
    for mut d in datagrams {
        sub.handle_datagram(now, from, &mut d, &mut rep);
    }
    assert_eq!(sub.reassembly_usage().1, 300);
    assert_eq!(sub.stats().unbelieved, 1);
    let later = now + ms(50);
    sub.handle_timeout(later, &mut rep);
    let mut buf = vec![0; 1452];
    let (mut frag_naks, mut seqs) = (0, Vec::new());
    while let Some(t) = sub.poll_transmit(later, &mut buf) {
        let d = Datagram::decode(&buf[..t.size]).unwrap();
        seqs.push(d.header().datagram_seq);
        frag_naks += d
            .messages()
            .filter(|m| matches!(m, Message::FragNak(_)))
            .count();
    }
    assert_eq!(frag_naks, 256);
    assert_eq!(sub.stats().frag_naks_sent, 256);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
}

/// The heartbeat interval (and with it the silence after which the
/// publisher is gone: 5 intervals here) changes only when two datagrams
/// announce the same new value; an interval of 0 announces nothing.
#[test]
fn the_heartbeat_interval_changes_when_two_datagrams_agree() {
    let mut c = Checked::hostile(rig_sub_config(), Bounds::default());
    // 100 ms (the default), then 0 twice, then two that disagree.
    for (dseq, ms) in [(1, 100), (2, 100), (3, 0), (4, 0), (5, 1_000), (6, 10)] {
        c.deliver(&heartbeat(1, dseq, 5, ms));
    }
    c.wait(ms(300));
    assert!(c.sub.status().publisher_alive, "still 100 ms");
    c.wait(ms(250));
    assert!(!c.sub.status().publisher_alive, "gone after 500 ms");
    // Two that agree: 10 ms, gone after 50 ms of silence.
    c.deliver(&heartbeat(1, 7, 5, 10));
    c.deliver(&heartbeat(1, 8, 5, 10));
    assert!(c.sub.status().publisher_alive);
    c.wait(ms(40));
    assert!(c.sub.status().publisher_alive);
    c.wait(ms(20));
    assert!(!c.sub.status().publisher_alive);
}

/// A datagram of the previous cycle that arrives after the next cycle has
/// begun still counts for it: here it completes the first cycle, and the
/// late joiner syncs at once rather than a cycle later.
#[test]
fn a_late_datagram_of_the_previous_cycle_still_counts() {
    let mut r = Rig::new(&leaves(200), rig_sub_config());
    let carries = |d: &[u8], position: u32| {
        Datagram::decode(d).is_ok_and(|d| {
            d.messages()
                .any(|m| matches!(m, Message::LeafSnapshot(l) if l.position == position))
        })
    };
    let mut held: Option<Vec<u8>> = None;
    let mut first_cycle = None;
    for _ in 0..200 {
        r.now += ms(1);
        for d in r.output() {
            let cycle = super::rig::messages(std::slice::from_ref(&d)).find_map(|m| match m {
                Message::CycleBegin(c) => Some(c.cycle),
                _ => None,
            });
            if first_cycle.is_none() {
                first_cycle = cycle;
            }
            if held.is_none() && cycle == first_cycle && carries(&d, 100) {
                held = Some(d);
            } else {
                r.deliver(&[d]);
            }
        }
        r.tick();
        r.deliver_naks();
        if r.sub.stats().cycles_begun >= 2 {
            break;
        }
    }
    assert_eq!(r.sub.stats().cycles_begun, 2, "the next cycle began");
    let (seen, count) = r.sub.status().cycle_progress.unwrap();
    assert!(seen < count, "the next cycle is not complete");
    assert!(!r.sub.status().synced);
    r.deliver(&[held.expect("held back a datagram of the first cycle")]);
    assert!(r.sub.status().synced, "{:?}", r.sub.status());
}
