//! The publisher's API contract: which keys it takes, when leaves may be
//! declared, and what it reports about itself.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::rig::pump;
use crate::publisher::{PublishError, Publisher, PublisherConfig};
use crate::state::Typed;
use crate::wire::{Datagram, Message};
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
    let state = Typed::new(BTreeMap::<u32, u32>::new());
    pump(p, now, &state, &mut [0u8; 65_536]);
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

/// The messages of each datagram in `d`, as (kind, body length) pairs.
fn messages_of(d: &[u8]) -> Vec<(u8, usize)> {
    Datagram::decode(d)
        .unwrap()
        .messages()
        .map(|m| (m.kind_byte(), m.body_len()))
        .collect()
}

/// 200 deltas: all of one size (so that datagrams are all of one length,
/// but the last), or of sizes that vary (so that they differ).
fn publish_deltas(p: &mut Publisher, varied: bool) {
    for i in 0..200u32 {
        let size = if varied { (i * 37 % 300) as usize } else { 100 };
        p.publish(&i.to_be_bytes(), &vec![7; size], true).unwrap();
    }
}

/// Batches for segmentation offload: at most `max_segments` datagrams a
/// transmit, all but the last of the first one's size and none longer,
/// within the caller's buffer, and as many as those rules allow; one
/// datagram alone has no segment size. Batched or not, the same messages
/// go out in the same order.
#[test]
fn batches_carry_the_same_datagrams_as_many_as_fit() {
    let t0 = Instant::now();
    let state = Typed::new(BTreeMap::<u32, u32>::new());
    let max = quiet_config().max_datagram_size();
    for varied in [false, true] {
        let mut single = Publisher::new(quiet_config(), SessionId(1), t0).unwrap();
        publish_deltas(&mut single, varied);
        let mut buf = vec![0u8; max];
        let mut reference = Vec::new();
        while let Some(t) = single.poll_transmit(t0, &state, 1, &mut buf) {
            assert_eq!((t.segments(), t.segment_size), (1, None));
            reference.push(buf[..t.size].to_vec());
        }
        assert!(reference.len() > 10, "{} datagrams", reference.len());
        let first = reference[0].len();
        for (max_segments, buf_len) in [
            (4, 4 * max),
            (4, 2 * max),
            (3, 2 * first),
            (3, 2 * first + 10),
            (8, 8 * max),
            (2, 8 * max),
            (1, 4 * max),
        ] {
            let mut p = Publisher::new(quiet_config(), SessionId(1), t0).unwrap();
            publish_deltas(&mut p, varied);
            let mut buf = vec![0u8; buf_len];
            let mut batches: Vec<Vec<Vec<u8>>> = Vec::new();
            while let Some(t) = p.poll_transmit(t0, &state, max_segments, &mut buf) {
                let n = t.segments();
                assert!((1..=max_segments).contains(&n), "{n} segments");
                assert!(t.size <= buf_len);
                assert_eq!(t.segment_size.is_some(), n > 1);
                let segs: Vec<Vec<u8>> = t.datagrams(&buf).map(<[u8]>::to_vec).collect();
                assert_eq!(segs.len(), n);
                if let Some(seg) = t.segment_size {
                    assert!(segs[..n - 1].iter().all(|s| s.len() == seg));
                    assert!(segs[n - 1].len() <= seg);
                }
                batches.push(segs);
            }
            let case = format!("varied {varied}: {max_segments} segments, {buf_len}-byte buffer");
            let sent: Vec<&Vec<u8>> = batches.iter().flatten().collect();
            assert_eq!(sent.len(), reference.len(), "{case}");
            for (got, want) in sent.iter().zip(&reference) {
                assert_eq!(messages_of(got), messages_of(want), "{case}");
            }
            // Greedy: a batch ends early only where the next datagram is
            // longer than its first, or would not fit in the buffer.
            for pair in batches.windows(2) {
                let batch = &pair[0];
                let seg = batch[0].len();
                let next_len = pair[1][0].len();
                let full = batch.len() == max_segments;
                let longer = next_len > seg;
                let no_room = batch.len() * seg + next_len > buf_len;
                assert!(
                    full || longer || no_room,
                    "{case}: a batch of {} ended early",
                    batch.len()
                );
            }
            if !varied {
                // Equal datagrams: every batch but the last is full, or
                // as full as the buffer allows.
                let fit = max_segments.min(buf_len / first);
                assert!(
                    batches[..batches.len() - 1].iter().all(|b| b.len() == fit),
                    "{case}"
                );
            }
        }
    }
}

/// A buffer too small for one datagram gets nothing (the datagram is
/// dropped), never an empty transmit.
#[test]
fn a_buffer_too_small_for_a_datagram_gets_nothing() {
    let t0 = Instant::now();
    let state = Typed::new(BTreeMap::<u32, u32>::new());
    let mut p = Publisher::new(quiet_config(), SessionId(1), t0).unwrap();
    p.publish(&[1], &[7; 100], true).unwrap();
    assert_eq!(p.poll_transmit(t0, &state, 4, &mut [0u8; 64]), None);
}

/// Retransmissions pack as the deltas first did: 64-byte deltas, 20 to a
/// datagram, with 60 bytes left over or none; a NAK for the first 40 is
/// answered in two datagrams of 20: the 21st is never squeezed into the
/// 60 bytes, and the 20th joins a datagram it exactly fills.
#[test]
fn retransmissions_pack_as_densely_as_the_deltas_did() {
    for left_over in [60, 0] {
        let t0 = Instant::now();
        let mut cfg = quiet_config();
        cfg.max_datagram(crate::wire::HEADER_LEN + 20 * 64 + left_over)
            .repair_rate(1 << 30);
        let mut p = Publisher::new(cfg, SessionId(1), t0).unwrap();
        let state = Typed::new(BTreeMap::<u32, u32>::new());
        let mut buf = vec![0u8; 65_536];
        for i in 0..60u32 {
            p.publish(&i.to_be_bytes(), &[7; 37], true).unwrap();
        }
        let mut first = Vec::new();
        while let Some(t) = p.poll_transmit(t0, &state, 1, &mut buf) {
            first.push(messages_of(&buf[..t.size]));
        }
        let deltas: Vec<usize> = first.iter().map(Vec::len).filter(|&n| n > 1).collect();
        assert_eq!(deltas[..2], [20, 20], "64-byte deltas, 20 to a datagram");
        let mut nak = super::repair::nak(1, &[super::repair::range(1, 40)]);
        let t1 = t0 + Duration::from_millis(50);
        p.handle_datagram(t1, "198.51.100.7:6000".parse().unwrap(), &mut nak);
        let mut resent = Vec::new();
        for ms in 0..50 {
            let now = t1 + Duration::from_millis(ms);
            while let Some(t) = p.poll_transmit(now, &state, 1, &mut buf) {
                let msgs = messages_of(&buf[..t.size]);
                let retransmits = msgs
                    .iter()
                    .filter(|(kind, _)| *kind == crate::wire::MessageKind::Retransmit as u8)
                    .count();
                if retransmits > 0 {
                    resent.push(retransmits);
                }
            }
        }
        assert_eq!(resent, [20, 20], "{left_over} bytes left over");
    }
}

/// Repairs are queued one datagram at a time: a delta published while a
/// NAK of two datagrams' worth is being answered goes out right after the
/// first retransmission datagram, not behind every retransmission the
/// budget would allow.
#[test]
fn a_live_delta_waits_behind_one_datagram_of_repairs_at_most() {
    use crate::wire::MessageKind;
    let t0 = Instant::now();
    let mut cfg = quiet_config();
    cfg.max_datagram(crate::wire::HEADER_LEN + 20 * 64)
        .repair_rate(1 << 30);
    let mut p = Publisher::new(cfg, SessionId(1), t0).unwrap();
    let state = Typed::new(BTreeMap::<u32, u32>::new());
    let mut buf = vec![0u8; 65_536];
    for i in 0..40u32 {
        p.publish(&i.to_be_bytes(), &[7; 37], true).unwrap();
    }
    while p.poll_transmit(t0, &state, 1, &mut buf).is_some() {}
    let mut nak = super::repair::nak(1, &[super::repair::range(1, 40)]);
    let t1 = t0 + Duration::from_millis(50);
    p.handle_datagram(t1, "198.51.100.7:6000".parse().unwrap(), &mut nak);
    let kinds = |b: &[u8]| -> Vec<u8> { messages_of(b).iter().map(|m| m.0).collect() };
    let first = p.poll_transmit(t1, &state, 1, &mut buf).unwrap();
    assert_eq!(
        kinds(&buf[..first.size]),
        [MessageKind::Retransmit as u8; 20]
    );
    p.publish(&99u32.to_be_bytes(), &[8; 37], true).unwrap();
    let next = p.poll_transmit(t1, &state, 1, &mut buf).unwrap();
    assert_eq!(
        kinds(&buf[..next.size])[0],
        MessageKind::Delta as u8,
        "the live delta comes before the second datagram of repairs"
    );
    let mut resent = 0;
    while let Some(t) = p.poll_transmit(t1, &state, 1, &mut buf) {
        resent += kinds(&buf[..t.size])
            .iter()
            .filter(|&&k| k == MessageKind::Retransmit as u8)
            .count();
    }
    assert_eq!(resent, 20, "the rest of the repairs follow");
}

/// The repair budget is looked at before every datagram: a fragmented
/// retransmission may overdraw it, but nothing more joins its last
/// datagram, and the small retransmissions behind it wait for the budget
/// to refill.
#[test]
fn nothing_rides_on_a_fragmented_retransmission_that_overdrew_the_budget() {
    use crate::wire::MessageKind;
    let t0 = Instant::now();
    let mut cfg = quiet_config();
    cfg.max_datagram(1_500).repair_rate(1_000);
    let mut p = Publisher::new(cfg, SessionId(1), t0).unwrap();
    let state = Typed::new(BTreeMap::<u32, u32>::new());
    let mut buf = vec![0u8; 65_536];
    p.publish(&0u32.to_be_bytes(), &[9; 5_000], true).unwrap();
    for i in 1..11u32 {
        p.publish(&i.to_be_bytes(), &[7; 37], true).unwrap();
    }
    while p.poll_transmit(t0, &state, 1, &mut buf).is_some() {}
    let mut nak = super::repair::nak(1, &[super::repair::range(1, 11)]);
    let t1 = t0 + Duration::from_millis(50);
    p.handle_datagram(t1, "198.51.100.7:6000".parse().unwrap(), &mut nak);
    let mut kinds = Vec::new();
    while let Some(t) = p.poll_transmit(t1, &state, 1, &mut buf) {
        kinds.extend(messages_of(&buf[..t.size]).iter().map(|m| m.0));
    }
    let frags = kinds.iter().filter(|&&k| k == MessageKind::Fragment as u8);
    assert_eq!(frags.count(), 4, "the large retransmission: {kinds:?}");
    assert!(
        !kinds.contains(&(MessageKind::Retransmit as u8)),
        "no small retransmission yet: {kinds:?}"
    );
    assert_eq!(p.stats().retransmits, 1);
    // Ten seconds of budget later, the rest goes out.
    let t2 = t1 + Duration::from_secs(10);
    let mut resent = 0;
    while let Some(t) = p.poll_transmit(t2, &state, 1, &mut buf) {
        resent += messages_of(&buf[..t.size])
            .iter()
            .filter(|m| m.0 == MessageKind::Retransmit as u8)
            .count();
    }
    assert_eq!(resent, 10);
}

/// The repair rate counts whole datagrams, headers included: with the
/// smallest datagrams, where a retransmitted 1,000-byte delta goes out in
/// some thirty fragments and headers are a third of the bytes, one second
/// of repairs sends the rate's worth of bytes, give or take the burst, to
/// a publisher woken only when it asks.
#[test]
fn the_repair_rate_counts_every_datagram_header() {
    const RATE: u64 = 100_000;
    let t0 = Instant::now();
    let mut cfg = quiet_config();
    cfg.max_datagram(crate::wire::HEADER_LEN + 64)
        .repair_rate(RATE);
    let mut p = Publisher::new(cfg, SessionId(1), t0).unwrap();
    let state = Typed::new(BTreeMap::<u32, u32>::new());
    let mut buf = vec![0u8; 65_536];
    for i in 0..150u32 {
        p.publish(&i.to_be_bytes(), &[7; 1_000], true).unwrap();
    }
    while p.poll_transmit(t0, &state, 1, &mut buf).is_some() {}
    let t1 = t0 + Duration::from_millis(100);
    let mut nak = super::repair::nak(1, &[super::repair::range(1, 150)]);
    p.handle_datagram(t1, "198.51.100.7:6000".parse().unwrap(), &mut nak);
    let retransmit = crate::wire::MessageKind::Retransmit as u8;
    // Woken only when it asks, as a real driver does.
    let (mut bytes, mut now, mut wakeups) = (0, t1, 0);
    while now < t1 + Duration::from_secs(1) && wakeups < 10_000 {
        p.handle_timeout(now, 0);
        while let Some(t) = p.poll_transmit(now, &state, 1, &mut buf) {
            let d = Datagram::decode(&buf[..t.size]).unwrap();
            if d.messages()
                .any(|m| matches!(m, Message::Fragment(f) if f.inner_kind == retransmit))
            {
                bytes += t.size as u64;
            }
        }
        wakeups += 1;
        now = p.poll_timeout().unwrap().max(now);
    }
    assert!(
        wakeups < 200,
        "{wakeups} wake-ups for some 50 retransmissions"
    );
    // The burst is 10 ms worth; a fill may overdraw by one retransmission
    // (its 22 fragments go out together: 2,013 bytes).
    let slack = RATE / 100 + 2_100;
    assert!(
        bytes.abs_diff(RATE) <= slack,
        "{bytes} bytes of repairs in 1 s at {RATE} B/s"
    );
}

/// `max_unfragmented_body` is the largest delta body that goes out whole:
/// one that size fills one datagram, one byte more is fragmented.
#[test]
fn the_largest_unfragmented_body_fits_one_datagram_exactly() {
    for max_datagram in [crate::wire::HEADER_LEN + 64, 1_472, 9_000] {
        let mut cfg = quiet_config();
        cfg.max_datagram(max_datagram);
        let t0 = Instant::now();
        let mut p = Publisher::new(cfg, SessionId(1), t0).unwrap();
        let state = Typed::new(BTreeMap::<u32, u32>::new());
        let mut buf = vec![0u8; 65_536];
        while p.poll_transmit(t0, &state, 1, &mut buf).is_some() {}
        // A delta's body: 19 fixed bytes, the key, the payload.
        let max = p.max_unfragmented_body();
        for (payload, whole) in [(max - 19 - 1, true), (max - 19 - 1 + 1, false)] {
            p.publish(&[1], &vec![7; payload], true).unwrap();
            let mut sent = Vec::new();
            while let Some(t) = p.poll_transmit(t0, &state, 1, &mut buf) {
                sent.push(messages_of(&buf[..t.size]));
            }
            let delta = crate::wire::MessageKind::Delta as u8;
            if whole {
                assert_eq!(sent, [vec![(delta, max)]], "{max_datagram}");
            } else {
                assert!(sent.len() > 1 && sent.iter().flatten().all(|m| m.0 != delta));
            }
        }
    }
}

/// A publisher whose driver does not keep up sheds the oldest finished
/// datagrams beyond `max_queued_bytes`, counting them: its queue (and
/// memory) stays bounded however many deltas are published, the newest
/// deltas are the ones kept, and the shed ones stay in the history for NAK
/// repair.
#[test]
fn an_unsent_backlog_is_bounded_by_shedding_the_oldest_datagrams() {
    let mut cfg = PublisherConfig::default();
    cfg.max_queued_bytes(8 * 1452);
    let now = Instant::now();
    let mut p = Publisher::new(cfg, SessionId(9), now).unwrap();
    let payload = [7u8; 64];
    let mut peak = 0;
    for i in 0..10_000u32 {
        p.publish(&i.to_be_bytes(), &payload, true).unwrap();
        peak = peak.max(p.queued_bytes());
    }
    assert!(peak <= 8 * 1452 && peak > 6 * 1452, "{peak}");
    let stats = p.stats();
    assert!(stats.datagrams_shed > 400, "{stats:?}");
    assert!(stats.bytes_shed >= stats.datagrams_shed * 1000, "{stats:?}");
    assert_eq!(p.history_usage().0, 10_000, "shed deltas stay repairable");
    // What is left is the newest, in order, up to the last delta.
    let mut buf = vec![0u8; 1452];
    let mut seqs = Vec::new();
    while let Some(t) = p.poll_live_transmit(now, 1, &mut buf) {
        for m in Datagram::decode(&buf[..t.size]).unwrap().messages() {
            if let Message::Delta(d) = m {
                seqs.push(d.seq.0);
            }
        }
    }
    assert_eq!(seqs.last(), Some(&10_000));
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "contiguous");
    let kept = seqs.len() as u64;
    assert!(kept < 10_000 && kept > 100, "{kept}");
    assert_eq!(p.queued_bytes(), 0);
}

/// `poll_live_transmit` hands out the published deltas (and a due
/// heartbeat) but never snapshots nor repairs: the snapshot cycle of a
/// large state waits for `poll_transmit`.
#[test]
fn live_polling_sends_deltas_and_leaves_the_cycle_to_poll_transmit() {
    let mut p = publisher();
    let now = Instant::now();
    let mut state = BTreeMap::new();
    for k in 0..100u32 {
        p.track_leaf(&crate::state::encode(&k)).unwrap();
        state.insert(k, k);
    }
    let typed = Typed::new(state);
    let mut buf = vec![0u8; 4 * 1452];
    let kinds = |p: &mut Publisher, buf: &mut Vec<u8>, live: bool, now: Instant| {
        let mut kinds = Vec::new();
        loop {
            let t = if live {
                p.poll_live_transmit(now, 4, buf)
            } else {
                p.poll_transmit(now, &typed, 4, buf)
            };
            let Some(t) = t else { break };
            for d in t.datagrams(buf) {
                for m in Datagram::decode(d).unwrap().messages() {
                    kinds.push(m.kind_byte());
                }
            }
        }
        kinds
    };
    p.handle_timeout(now, 0);
    p.publish(&crate::state::encode(&5u32), b"x", true).unwrap();
    let later = now + Duration::from_secs(1);
    let live = kinds(&mut p, &mut buf, true, later);
    let hb = crate::wire::MessageKind::Heartbeat as u8;
    let delta = crate::wire::MessageKind::Delta as u8;
    assert_eq!(live, vec![hb, delta]);
    assert_eq!(p.stats().snapshots, 0);
    // The cycle's datagrams, paced, through `poll_transmit` alone.
    let mut rest = Vec::new();
    for step in 0..1_000 {
        rest.extend(kinds(
            &mut p,
            &mut buf,
            false,
            later + Duration::from_millis(step),
        ));
    }
    assert!(!rest.contains(&delta) && rest.len() > 100, "{rest:?}");
    assert!(p.stats().snapshots >= 100, "{:?}", p.stats());
}

/// Under a leaves-per-second budget, a driver that polls exactly when
/// `poll_timeout` says (as a busy-poll driver does) still gets full
/// datagrams of snapshots, not one leaf each (at 100,000 leaves/s; at
/// 10,000/s, ten leaves: one datagram per millisecond); the pace holds, and
/// the cycle's last datagram waits only for the leaves left.
#[test]
fn snapshots_go_out_in_full_datagrams_however_often_the_driver_polls() {
    // The first datagram waits for its budget: at 100,000 leaves/s, as many
    // leaves as fit at the initial mean length of 24 bytes (59, 0.59 ms);
    // at 10,000/s a millisecond's worth (10).
    for (rate, least, first) in [(100_000, 50, 59), (10_000, 10, 10)] {
        snapshot_datagrams_at(rate, least, first);
    }
}

fn snapshot_datagrams_at(rate: u32, least: usize, first_budget: u32) {
    let mut cfg = PublisherConfig::default();
    cfg.snapshot_rate(crate::publisher::SnapshotRate::LeavesPerSec(rate))
        .heartbeat_interval(Duration::from_secs(3600));
    let start = Instant::now();
    let mut p = Publisher::new(cfg, SessionId(9), start).unwrap();
    let mut state = BTreeMap::new();
    for k in 0..1_030u32 {
        p.track_leaf(&crate::state::encode(&k)).unwrap();
        state.insert(k, k);
    }
    let typed = Typed::new(state);
    let mut buf = vec![0u8; 1452];
    let mut now = start;
    let mut per_datagram = Vec::new();
    let mut first_at = None;
    while p.stats().cycles == 0 {
        p.handle_timeout(now, 0);
        while let Some(t) = p.poll_transmit(now, &typed, 1, &mut buf) {
            let d = Datagram::decode(&buf[..t.size]).unwrap();
            let n = d
                .messages()
                .filter(|m| matches!(m, Message::LeafSnapshot(_)))
                .count();
            if n > 0 {
                per_datagram.push(n);
                first_at.get_or_insert(now - start);
            }
        }
        if p.stats().cycles > 0 {
            break;
        }
        now = p.poll_timeout().unwrap().max(now + Duration::from_nanos(1));
        assert!(now - start < Duration::from_secs(1), "cycle too slow");
    }
    let want_first = f64::from(first_budget) / f64::from(rate);
    let first = first_at.unwrap().as_secs_f64();
    assert!(
        (first - want_first).abs() < 2e-6,
        "{rate}: first at {first}"
    );
    let (last, full) = per_datagram.split_last().unwrap();
    assert!(full.iter().all(|&n| n >= least), "{rate}: {per_datagram:?}");
    assert!(*last >= 1 && per_datagram.iter().sum::<usize>() == 1_030);
    // 1,030 leaves at the rate, not much more.
    let took = (now - start).as_secs_f64();
    let want = 1_030.0 / f64::from(rate);
    assert!(
        took >= want * 0.9 && took <= want * 1.25,
        "{rate}: {took} {per_datagram:?}"
    );
}

/// The send queue's bound is `max_queued_bytes`, inclusive: a queue that
/// reaches it exactly keeps every datagram; one byte less sheds the oldest.
/// `queued_bytes_limit` reports the bound (4 MiB by default).
#[test]
fn the_send_queue_bound_is_inclusive() {
    assert_eq!(PublisherConfig::default().queued_bytes_limit(), 4 << 20);
    let now = Instant::now();
    let fill = |limit: usize| {
        let mut cfg = PublisherConfig::default();
        cfg.max_queued_bytes(limit);
        assert_eq!(cfg.queued_bytes_limit(), limit);
        let mut p = Publisher::new(cfg, SessionId(9), now).unwrap();
        let mut i = 0u32;
        // Until two datagrams are finished, and one delta more opens a third.
        while p.stats().datagrams_shed == 0 && i < 200 {
            p.publish(&i.to_be_bytes(), &[7u8; 64], true).unwrap();
            i += 1;
            if p.queued_bytes() > 2 * 1452 - 200 && p.queued_bytes() <= 2 * 1452 {
                break;
            }
        }
        (p.queued_bytes(), p.stats().datagrams_shed, i)
    };
    let (two, shed, n) = fill(1 << 20);
    assert_eq!(shed, 0);
    assert!(two > 1452, "two datagrams: {two}");
    // The same deltas against a bound of exactly those bytes: kept.
    let (queued, shed, m) = fill(two);
    assert_eq!((queued, shed, m), (two, 0, n));
    // One byte less: the oldest datagram goes.
    let mut cfg = PublisherConfig::default();
    cfg.max_queued_bytes(two - 1);
    let mut p = Publisher::new(cfg, SessionId(9), now).unwrap();
    for i in 0..n {
        p.publish(&i.to_be_bytes(), &[7u8; 64], true).unwrap();
    }
    assert_eq!(p.stats().datagrams_shed, 1);
    assert!(p.queued_bytes() < two);
}
