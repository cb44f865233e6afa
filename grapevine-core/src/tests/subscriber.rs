//! The subscriber's API contract: its bounded event queue, and what it
//! counts of deltas that disagree with its state type.

use std::time::Duration;

use super::rig::{leaves, rig_sub_config, Rig};
use super::sim::{craft, Op};
use crate::state::encode;
use crate::subscriber::Event;
use crate::wire::{Delta, Message};
use crate::{SeqNum, SessionId, StreamId};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

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
    r.run(ms(20));
    assert!(r.naks.len() > 1, "{} NAK datagrams", r.naks.len());
    assert!(r.naks.iter().all(|d| d.len() <= 128));
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
        match catch_up {
            None => assert!(naks > 0, "the default catches up"),
            Some(_) => assert_eq!(naks, 0),
        }
    }
}
