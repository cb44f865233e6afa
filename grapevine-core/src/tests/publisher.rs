//! The publisher's API contract: which keys it takes, when leaves may be
//! declared, and what it reports about itself.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::publisher::{PublishError, Publisher, PublisherConfig};
use crate::state::Typed;
use crate::{SessionId, StreamId};

fn publisher() -> Publisher {
    Publisher::new(PublisherConfig::default(), SessionId(9), Instant::now()).unwrap()
}

/// Keys of up to 65,535 bytes are declared and published; a longer one is
/// refused with its length, and changes nothing.
#[test]
fn keys_up_to_65535_bytes_are_taken_longer_ones_refused_without_effect() {
    let mut p = publisher();
    let longest = vec![1u8; 65_535];
    let too_long = vec![2u8; 65_536];
    assert_eq!(p.track_leaf(&longest), Ok(()));
    assert_eq!(
        p.track_leaf(&too_long),
        Err(PublishError::KeyTooLong { len: 65_536 })
    );
    assert_eq!(p.leaf_count(), 1);
    let seq = p.publish(&longest, b"v", true).unwrap();
    assert_eq!(seq.0, 1);
    let before = (p.last_seq(), p.leaf_count(), p.stats(), p.history_usage());
    assert_eq!(
        p.publish(&too_long, b"v", true),
        Err(PublishError::KeyTooLong { len: 65_536 })
    );
    assert_eq!(
        (p.last_seq(), p.leaf_count(), p.stats(), p.history_usage()),
        before
    );
}

/// Leaves are declared before the first delta only; `leaf_count` follows
/// declarations, creations and removals; the history holds every delta and
/// its bytes; a fragmented delta is kept for fragment repair.
#[test]
fn leaf_count_and_history_follow_what_was_published() {
    let mut p = publisher();
    for k in 0..3u8 {
        p.track_leaf(&[k]).unwrap();
    }
    p.track_leaf(&[0]).unwrap(); // declared twice: one leaf
    assert_eq!(p.leaf_count(), 3);
    assert_eq!(p.history_usage(), (0, 0, 0));
    p.publish(&[3], b"new", true).unwrap();
    assert_eq!(p.leaf_count(), 4);
    p.publish(&[0], b"gone", false).unwrap();
    assert_eq!(p.leaf_count(), 3);
    p.publish(&[1], b"changed", true).unwrap();
    assert_eq!(p.leaf_count(), 3);
    assert_eq!(p.track_leaf(&[7]), Err(PublishError::TrackAfterPublish));
    assert_eq!(p.leaf_count(), 3);
    let (count, bytes, frag_bytes) = p.history_usage();
    assert_eq!(count, 3);
    assert!(bytes >= 3 * 3 + "newgonechanged".len(), "{bytes}");
    assert_eq!(frag_bytes, 0);
    // A delta larger than a datagram goes out in fragments, kept.
    let big = vec![5u8; 10_000];
    p.publish(&[4], &big, true).unwrap();
    let (count, _, frag_bytes) = p.history_usage();
    assert_eq!(count, 4);
    assert!(frag_bytes >= big.len(), "{frag_bytes}");
    let debug = format!("{p:?}");
    assert!(
        debug.contains("SessionId(9)") && debug.contains("last_seq: SeqNum(4)"),
        "{debug}"
    );
}

/// Heartbeats once a second, one cycle an hour: nothing happens unless a
/// test makes it.
fn quiet_config() -> PublisherConfig {
    let mut cfg = PublisherConfig::default();
    cfg.stream(StreamId(3))
        .heartbeat_interval(Duration::from_secs(1))
        .min_cycle_interval(Duration::from_secs(3600));
    cfg
}

/// Fires the publisher's due timers at `now`, then takes all it has to
/// send.
fn drive(p: &mut Publisher, now: Instant) {
    if p.poll_timeout().is_some_and(|t| t <= now) {
        p.handle_timeout(now, 0);
    }
    transmit(p, now);
}

/// Takes all the publisher has to send at `now`, its timers not looked at.
fn transmit(p: &mut Publisher, now: Instant) {
    let state = Typed::new(BTreeMap::<u32, u32>::new());
    let mut buf = vec![0u8; 65_536];
    while p.poll_transmit(now, &state, 1, &mut buf).is_some() {}
}

/// A NAK arms the repair timer: `poll_timeout` asks to be called at once,
/// not at the next heartbeat or cycle, so a driver that sleeps until then
/// sends the retransmission promptly.
#[test]
fn a_nak_makes_the_publisher_due_at_once() {
    let t0 = Instant::now();
    let mut p = Publisher::new(quiet_config(), SessionId(1), t0).unwrap();
    for k in 0..3u8 {
        p.publish(&[k], b"v", true).unwrap();
    }
    drive(&mut p, t0);
    drive(&mut p, t0 + Duration::from_millis(10)); // the tail heartbeat
    let t1 = t0 + Duration::from_millis(20);
    assert!(p.poll_timeout().is_some_and(|t| t > t1), "nothing due");
    let mut nak = super::repair::nak(1, &[super::repair::range(2, 2)]);
    p.handle_datagram(t1, "198.51.100.7:6000".parse().unwrap(), &mut nak);
    assert!(
        p.poll_timeout().is_some_and(|t| t <= t1),
        "{:?}",
        p.poll_timeout()
    );
    let before = p.stats().retransmits;
    drive(&mut p, t1);
    assert_eq!(p.stats().retransmits, before + 1);
}

/// The tail heartbeat goes out `tail_heartbeat` after the last delta of a
/// burst, not during it; one already due is not postponed by a delta
/// published at that very instant.
#[test]
fn the_tail_heartbeat_waits_for_the_burst_to_pause() {
    let ms = Duration::from_millis;
    let mut cfg = quiet_config();
    cfg.tail_heartbeat(ms(5));
    let t0 = Instant::now();
    let mut p = Publisher::new(cfg, SessionId(1), t0).unwrap();
    drive(&mut p, t0);
    let h0 = p.stats().heartbeats;
    for i in 1..=30u8 {
        p.publish(&[i], b"v", true).unwrap();
        drive(&mut p, t0 + ms(i.into()));
    }
    assert_eq!(p.stats().heartbeats, h0, "none during the burst");
    drive(&mut p, t0 + ms(34));
    assert_eq!(p.stats().heartbeats, h0);
    drive(&mut p, t0 + ms(35));
    assert_eq!(p.stats().heartbeats, h0 + 1, "5 ms after the last delta");
    // The next tail heartbeat is due at 45 ms; a delta published at 45 ms
    // and sent before the timers are looked at does not postpone it.
    p.publish(&[99], b"v", true).unwrap();
    drive(&mut p, t0 + ms(40));
    p.publish(&[100], b"v", true).unwrap();
    transmit(&mut p, t0 + ms(45));
    drive(&mut p, t0 + ms(45));
    assert_eq!(p.stats().heartbeats, h0 + 2, "due at 45 ms, sent at 45 ms");
}

/// A NAK for seqs not sent yet prompts a heartbeat at once, even when the
/// datagrams are taken before the timers are looked at and nothing new
/// was published since the last heartbeat.
#[test]
fn a_nak_beyond_the_latest_prompts_a_heartbeat_even_when_all_is_announced() {
    let t0 = Instant::now();
    let mut p = Publisher::new(quiet_config(), SessionId(1), t0).unwrap();
    for k in 0..3u8 {
        p.publish(&[k], b"v", true).unwrap();
    }
    drive(&mut p, t0);
    drive(&mut p, t0 + Duration::from_millis(10)); // the tail heartbeat
    let t1 = t0 + Duration::from_millis(20);
    let h = p.stats().heartbeats;
    let mut nak = super::repair::nak(1, &[super::repair::range(4, 5)]);
    p.handle_datagram(t1, "198.51.100.7:6000".parse().unwrap(), &mut nak);
    transmit(&mut p, t1);
    drive(&mut p, t1);
    assert_eq!(p.stats().future_nak_heartbeats, 1);
    assert_eq!(p.stats().heartbeats, h + 1);
}
