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
