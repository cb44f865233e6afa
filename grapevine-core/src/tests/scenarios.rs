//! Hand-driven scenarios: one publisher, one subscriber, and a test that
//! decides which datagrams arrive. Each checks one rule of the algorithm.

use std::collections::BTreeMap;
use std::time::Duration;

use super::rig::{leaves, rig_pub_config, rig_sub_config, rig_sub_config_no_nak, Rig};
use super::sim::{Op, SimPublisher, Val};
use crate::subscriber::Event;
use crate::wire::{Datagram, Message};
use crate::{SessionId, StreamId};

#[test]
fn late_joiner_reports_progress_then_syncs() {
    let mut p = Rig::new(&leaves(400), rig_sub_config());
    // The subscriber hears nothing for a while, then joins mid-stream.
    p.now += Duration::from_millis(7);
    let _missed = p.output();
    let mut progress = Vec::new();
    for _ in 0..300 {
        p.run(Duration::from_millis(1));
        let st = p.sub.status();
        if let Some(pr) = st.cycle_progress {
            progress.push(pr);
        }
        if st.consistent {
            break;
        }
    }
    let st = p.sub.status();
    assert!(st.synced && st.consistent, "{st:?}");
    assert!(
        progress
            .iter()
            .any(|&(seen, total)| total == 400 && seen > 0 && seen < 400),
        "progress was reported part-way: {progress:?}"
    );
    assert!(p.events.iter().any(|e| matches!(e, Event::Synced { .. })));
    p.assert_equal();
}

#[test]
fn a_gap_marks_only_the_broken_leaf_stale_until_its_snapshot() {
    // Without NAK repair: the hole goes to snapshot repair.
    let mut p = Rig::new(&leaves(30), rig_sub_config_no_nak());
    p.run(Duration::from_millis(30));
    assert!(p.sub.status().consistent);
    p.publish_dropped(Op::Add(4, 1));
    p.publish_delivered(Op::Add(4, 2));
    p.publish_delivered(Op::Add(9, 5));
    assert_eq!(p.sub.status().stale_leaves, 0, "delta 2 waits for delta 1");
    // The hole is given up on after the reorder timeout, without a cycle.
    p.now += Duration::from_millis(6);
    p.tick();
    let st = p.sub.status();
    assert!(!st.consistent);
    assert_eq!(st.stale_leaves, 1, "only leaf 4 is broken: {st:?}");
    assert_eq!((p.sub.stats().gaps, p.sub.stats().lost), (1, 1));
    assert!(p
        .events
        .iter()
        .any(|e| matches!(e, Event::Gap { first, last } if first.0 == 1 && last.0 == 1)));
    let key4 = crate::state::encode(&4u16);
    assert!(p.events.contains(&Event::LeafStale { key: key4.clone() }));
    // Leaf 9's delta still applied.
    assert_eq!(p.replica.state().get(9), Some(95));
    // Leaf 4 stays the only stale leaf until its snapshot repairs it.
    let repaired = Event::LeafRepaired { key: key4 };
    let took = p.run_until(Duration::from_millis(40), |p| {
        let stale = p.sub.status().stale_leaves;
        let done = p.events.contains(&repaired);
        assert_eq!(stale, usize::from(!done), "{:?}", p.sub.status());
        done
    });
    assert!(took.is_some(), "{:?}", p.sub.status());
    assert_eq!(p.replica.state().get(4), Some(43));
    p.run(Duration::from_millis(40));
    let st = p.sub.status();
    assert!(st.consistent && st.stale_leaves == 0, "{st:?}");
    p.assert_equal();
}

#[test]
fn a_missed_removal_leaves_a_ghost_that_the_cycle_removes() {
    let mut p = Rig::new(&leaves(20), rig_sub_config_no_nak());
    p.run(Duration::from_millis(30));
    p.publish_dropped(Op::Remove(7));
    p.publish_delivered(Op::Add(3, 1));
    p.now += Duration::from_millis(6);
    p.tick();
    assert_eq!(p.sub.stats().lost, 1);
    assert!(p.replica.state().0.contains_key(&7), "ghost still held");
    assert!(!p.sub.status().consistent);
    // The one ghost is counted when the cycle removes it, not before.
    let took = p.run_until(Duration::from_millis(40), |p| {
        let gone = !p.replica.state().0.contains_key(&7);
        assert_eq!(p.sub.stats().ghosts_removed, u64::from(gone));
        gone
    });
    assert!(took.is_some(), "{:?}", p.sub.status());
    p.run_until(Duration::from_millis(40), Rig::converged)
        .expect("consistent once a cycle after the gap covered the key space");
    assert_eq!(p.sub.stats().ghosts_removed, 1);
    p.assert_equal();
}

#[test]
fn a_removal_during_a_cycle_is_sent_as_a_tombstone() {
    let mut p = Rig::new(&leaves(200), rig_sub_config());
    p.run(Duration::from_millis(1));
    // The cycle has started but has not reached the last leaves yet.
    let (sent, total) = p.publisher.core.cycle_progress().unwrap();
    assert!(sent < total);
    let removed = p.publisher.publish(&Op::Remove(199));
    let out = p.output();
    p.deliver(&out);
    let sent = p.run(Duration::from_millis(40));
    // One tombstone: leaf 199's position in this cycle, absent as of the
    // removal (the latest seq when it was sent); the next cycle does not
    // list it.
    assert_eq!(p.publisher.core.stats().tombstones, 1);
    assert_eq!(
        tombstones(&sent),
        vec![(crate::state::encode(&199u16), removed.0)]
    );
    assert!(p.sub.status().consistent);
    p.assert_equal();
}

/// The tombstones (key, `leaf_seq`) that `sent` carries.
fn tombstones(sent: &[Vec<u8>]) -> Vec<(Vec<u8>, u64)> {
    sent.iter()
        .filter_map(|d| Datagram::decode(d).ok())
        .flat_map(|d| {
            d.messages()
                .filter_map(|m| match m {
                    Message::LeafSnapshot(s) if s.value.is_none() => {
                        Some((s.key.to_vec(), s.leaf_seq.0))
                    }
                    _ => None,
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn creating_delta_replaces_a_ghost_without_a_snapshot() {
    let mut p = Rig::new(&leaves(10), rig_sub_config_no_nak());
    p.run(Duration::from_millis(30));
    assert!(p.converged(), "{:?}", p.sub.status());
    let snapshots = p.sub.stats().snapshots_applied;
    p.publish_dropped(Op::Remove(2));
    // Leaf 2 comes back as a new leaf: the delta says it creates it, so the
    // held ghost is dropped first.
    p.publish_delivered(Op::Add(2, 1));
    p.now += Duration::from_millis(6);
    p.tick();
    assert_eq!(p.replica.state().get(2), Some(1));
    let (st, stats) = (p.sub.status(), p.sub.stats());
    assert_eq!(stats.deltas_pending, 0);
    assert_eq!(stats.snapshots_applied, snapshots, "no snapshot");
    assert_eq!(st.stale_leaves, 0, "{st:?}");
    assert_eq!(p.replica.state(), p.publisher.state.state());
    // Equal, but after a gap it cannot know it until a cycle shows it.
    assert!(!st.consistent, "{st:?}");
    p.run_until(Duration::from_millis(60), Rig::converged)
        .unwrap_or_else(|| panic!("{:?} {:?}", p.sub.status(), p.sub.stats()));
    p.assert_equal();
}

#[test]
fn publisher_restart_clears_and_resyncs() {
    let mut p = Rig::new(&leaves(15), rig_sub_config());
    p.run(Duration::from_millis(30));
    p.publish_delivered(Op::Set(1, 111));
    let old_addr = p.pub_addr;
    p.restart_publisher(SessionId(2), &[(50, Val::from(5))]);
    assert_ne!(
        p.pub_addr, old_addr,
        "a restarted publisher binds a new port"
    );
    p.run(Duration::from_millis(80));
    assert!(p.events.contains(&Event::PublisherRestarted {
        old: SessionId(1),
        new: SessionId(2)
    }));
    let st = p.sub.status();
    assert_eq!(st.session, Some(SessionId(2)));
    assert!(st.consistent);
    assert_eq!(p.replica.state().nums(), BTreeMap::from([(50, 5)]));
    p.assert_equal();
    // A late datagram of the old session is not taken for a new restart.
    let mut old = SimPublisher::new(
        rig_pub_config(),
        SessionId(1),
        p.now,
        &[],
        Default::default(),
    );
    old.publish(&Op::Set(1, 1));
    let mut buf = vec![0; 1452];
    let mut out = Vec::new();
    old.drive(p.now, 1, &mut buf, |d| out.push(d.to_vec()));
    let others = p.sub.stats().other_session;
    p.deliver_from(old_addr, &out[0]);
    assert_eq!(p.sub.status().session, Some(SessionId(2)));
    assert_eq!(p.sub.stats().other_session, others + 1);
}

#[test]
fn silence_reports_the_publisher_gone_and_back() {
    let mut p = Rig::new(&leaves(5), rig_sub_config());
    p.run(Duration::from_millis(30));
    assert!(p.converged(), "{:?}", p.sub.status());
    assert!(p.sub.status().publisher_alive);
    let deadline = p.sub.poll_timeout().unwrap();
    // Nothing arrives for five heartbeat intervals.
    p.now += Duration::from_millis(60);
    let _lost = p.output();
    assert!(deadline <= p.now);
    p.tick();
    assert!(p.events.contains(&Event::PublisherGone));
    assert!(!p.sub.status().publisher_alive);
    assert_eq!(p.replica.state().0.len(), 5, "the replica stays readable");
    // Nothing was published meanwhile: still the publisher's state.
    assert!(p.converged(), "{:?}", p.sub.status());
    p.run(Duration::from_millis(20));
    assert!(p.events.contains(&Event::PublisherBack));
    assert!(p.sub.status().publisher_alive);
    p.publish_delivered(Op::Add(1, 1));
    assert!(p.converged(), "{:?}", p.sub.status());
}

#[test]
fn foreign_malformed_and_undecodable_input_is_counted_not_applied() {
    let mut p = Rig::new(&leaves(5), rig_sub_config());
    p.run(Duration::from_millis(30));
    let before = p.replica.digest;
    // Another stream on the same group.
    let mut other_cfg = rig_pub_config();
    other_cfg.stream(StreamId(4));
    let mut other = SimPublisher::new(
        other_cfg,
        SessionId(9),
        p.now,
        &leaves(3),
        Default::default(),
    );
    other.publish(&Op::Set(1, 5));
    let mut buf = vec![0; 1452];
    let mut out = Vec::new();
    other.drive(p.now, 1, &mut buf, |d| out.push(d.to_vec()));
    p.deliver(&out[..1]);
    assert_eq!(p.sub.stats().foreign_stream, 1);
    // Garbage and a truncated datagram.
    p.deliver(&[b"definitely not grapevine".to_vec()]);
    p.publisher.publish(&Op::Set(1, 7));
    let out = p.output();
    let cut = out[0][..out[0].len() - 3].to_vec();
    p.deliver(&[cut]);
    let malformed: u64 = p.sub.stats().malformed.values().sum();
    assert_eq!(malformed, 2);
    assert_eq!(p.replica.digest, before, "nothing dropped was applied");
    p.deliver(&out);
    // A delta whose payload does not decode as the state's delta type.
    let seq = p
        .publisher
        .core
        .publish(&crate::state::encode(&1u16), &[0xff; 3], true)
        .unwrap();
    let out = p.output();
    assert!(out.iter().any(|d| Datagram::decode(d)
        .unwrap()
        .messages()
        .any(|m| matches!(m, Message::Delta(d) if d.seq == seq))));
    p.deliver(&out);
    assert_eq!(p.sub.stats().apply_errors, 1);
    assert!(p
        .events
        .iter()
        .any(|e| matches!(e, Event::ApplyFailed { .. })));
    assert!(!p.sub.status().consistent);
}

/// A leaf removed while the cycle runs is sent at its position as a
/// tombstone absent as of the removal (PROTOCOL.md §8.1), not as of 0: a
/// subscriber that joined with the cycle got the removal before it held the
/// leaf (a delta waiting for the leaf's snapshot); the tombstone as of the
/// removal settles it, so the cycle that syncs it also proves its replica
/// consistent, equal to the publisher.
#[test]
fn a_subscriber_syncs_through_a_tombstone_as_of_the_removal() {
    let mut p = Rig::new(&leaves(200), rig_sub_config());
    p.run(Duration::from_millis(1));
    let (sent, total) = p.publisher.core.cycle_progress().unwrap();
    assert!(sent < 100 && total == 200, "{sent}/{total}");
    let removed = p.publisher.publish(&Op::Remove(199));
    let out = p.output();
    p.deliver(&out);
    assert!(!p.sub.status().synced && !p.sub.is_synced());
    // Step by step up to the step that syncs it, looking at the wire.
    let mut tombs = Vec::new();
    for _ in 0..40 {
        tombs.extend(tombstones(&p.run(Duration::from_millis(1))));
        assert_eq!(p.sub.is_synced(), p.sub.status().synced);
        if p.sub.status().synced {
            break;
        }
    }
    let st = p.sub.status();
    assert_eq!(
        tombs,
        vec![(crate::state::encode(&199u16), removed.0)],
        "{st:?}"
    );
    assert!(st.synced && st.consistent && st.stale_leaves == 0, "{st:?}");
    assert_eq!(st.seq, removed);
    p.assert_equal();
}

/// The same tombstone repairs a leaf whose chain a lost delta broke just
/// before the removal: a subscriber without NAK repair gives the lost delta
/// up, the removal finds the leaf stale, and the tombstone (as of the
/// removal, above the leaf's known seq) settles it at its position, before
/// the next cycle could sweep it.
#[test]
fn a_tombstone_as_of_the_removal_repairs_a_stale_leaf() {
    let mut p = Rig::new(&leaves(200), rig_sub_config_no_nak());
    p.run_until(Duration::from_millis(100), Rig::converged)
        .expect("converged");
    // Right after a cycle began.
    p.run_until(Duration::from_millis(1000), |p| {
        p.publisher
            .core
            .cycle_progress()
            .is_some_and(|(sent, _)| sent <= 10)
    })
    .expect("a cycle began");
    p.publish_dropped(Op::Add(199, 1));
    let removed = p.publisher.publish(&Op::Remove(199));
    let out = p.output();
    p.deliver(&out);
    let mut tombs = Vec::new();
    let key = crate::state::encode(&199u16);
    for _ in 0..40 {
        let sent = p.run(Duration::from_millis(1));
        let found = tombstones(&sent);
        tombs.extend(found.iter().cloned());
        if !found.is_empty() {
            break;
        }
        // Until its tombstone: given up (after 5 ms), then stale.
        if p.sub.stats().gaps > 0 {
            assert_eq!(p.sub.status().stale_leaves, 1, "{:?}", p.sub.status());
        }
    }
    assert_eq!(tombs, vec![(key.clone(), removed.0)]);
    let st = p.sub.status();
    assert_eq!(p.sub.stats().gaps, 1);
    assert_eq!(st.stale_leaves, 0, "{st:?}");
    assert!(p.events.contains(&Event::LeafRepaired { key }));
    assert_eq!(p.replica.state(), p.publisher.state.state());
}

/// A second publisher on the stream (another session heard with increasing
/// `datagram_seq` over a heartbeat interval while the followed one is
/// alive) is reported once and counted in `other_sessions`, and not
/// followed; one datagram of it is not enough, and once it has been quiet
/// for two intervals it no longer counts.
#[test]
fn a_second_publisher_on_the_stream_is_reported_not_followed() {
    use super::rig::heartbeat;
    let mut p = Rig::new(&leaves(5), rig_sub_config());
    p.run(Duration::from_millis(30));
    assert!(p.converged(), "{:?}", p.sub.status());
    let followed = p.sub.status().session.unwrap();
    assert_eq!(p.sub.status().other_sessions, 0);
    let other = std::net::SocketAddr::from(([10, 0, 0, 9], 4000));
    p.deliver_from(other, &heartbeat(99, 1, 0, 10));
    assert_eq!(
        p.sub.status().other_sessions,
        0,
        "one datagram proves nothing"
    );
    for dseq in 2..6 {
        p.run(Duration::from_millis(5));
        p.deliver_from(other, &heartbeat(99, dseq, 0, 10));
    }
    let st = p.sub.status();
    assert_eq!(st.session, Some(followed), "still following the first");
    assert_eq!(st.other_sessions, 1);
    let reported: Vec<_> = p
        .events
        .iter()
        .filter(|e| matches!(e, Event::OtherPublisher { .. }))
        .collect();
    assert_eq!(
        reported,
        [&Event::OtherPublisher {
            followed,
            other: SessionId(99)
        }]
    );
    // Quiet for two intervals: gone from the count; the replica is intact.
    p.run(Duration::from_millis(25));
    assert_eq!(p.sub.status().other_sessions, 0);
    assert!(p.converged(), "{:?}", p.sub.status());
}

/// A session that announced an hour-long heartbeat interval (two forged
/// heartbeats can) and fell quiet is followed for up to two hours, but it
/// cannot hide the real publisher: once the real one has been heard for a
/// second it is reported as another publisher and counted, and it stops
/// counting two seconds after it goes quiet.
#[test]
fn a_long_announced_interval_does_not_hide_a_second_publisher() {
    use super::rig::heartbeat;
    let mut p = Rig::new(&leaves(5), rig_sub_config());
    let forger = std::net::SocketAddr::from(([10, 0, 0, 66], 4000));
    for dseq in 1..=3 {
        p.deliver_from(forger, &heartbeat(0xbeef, dseq, 0, 3_600_000));
        p.now += Duration::from_millis(100);
    }
    assert_eq!(p.sub.status().session, Some(SessionId(0xbeef)));
    let mut reported_at = None;
    for ms in 0..1500u64 {
        p.run(Duration::from_millis(1));
        if reported_at.is_none() && p.sub.status().other_sessions == 1 {
            reported_at = Some(ms);
        }
    }
    let at = reported_at.expect("the real publisher is counted");
    assert!((1000..=1100).contains(&at), "counted after {at} ms");
    let reported: Vec<_> = p
        .events
        .iter()
        .filter(|e| matches!(e, Event::OtherPublisher { .. }))
        .collect();
    assert_eq!(
        reported,
        [&Event::OtherPublisher {
            followed: SessionId(0xbeef),
            other: SessionId(1)
        }]
    );
    assert_eq!(p.sub.status().session, Some(SessionId(0xbeef)));
    // The real publisher quiet (not driven) for 1.9 s: still counted; 2.1 s:
    // no longer.
    p.now += Duration::from_millis(1900);
    p.tick();
    assert_eq!(p.sub.status().other_sessions, 1);
    p.now += Duration::from_millis(200);
    p.tick();
    assert_eq!(p.sub.status().other_sessions, 0);
}

/// A publisher that restarts after the followed session fell silent is a
/// restart, not a second publisher: no `OtherPublisher` event, even when
/// the new session's datagrams arrive out of `datagram_seq` order (which
/// restarts the proof of a new session, not of a second publisher).
#[test]
fn a_restart_after_silence_is_not_reported_as_a_second_publisher() {
    use super::rig::heartbeat;
    let mut p = Rig::new(&leaves(5), rig_sub_config());
    p.run(Duration::from_millis(30));
    assert!(p.converged(), "{:?}", p.sub.status());
    p.now += Duration::from_millis(100);
    p.tick();
    let new = std::net::SocketAddr::from(([10, 0, 0, 9], 4000));
    for (i, dseq) in [1u64, 3, 2, 4, 6, 5, 7, 8, 9, 10].iter().enumerate() {
        p.deliver_from(new, &heartbeat(77, *dseq, 0, 10));
        p.now += Duration::from_millis(4);
        assert!(
            !p.events
                .iter()
                .any(|e| matches!(e, Event::OtherPublisher { .. })),
            "after datagram {i}: {:?}",
            p.events
        );
    }
    assert_eq!(p.sub.status().session, Some(SessionId(77)));
    assert!(p
        .events
        .iter()
        .any(|e| matches!(e, Event::PublisherRestarted { .. })));
}
