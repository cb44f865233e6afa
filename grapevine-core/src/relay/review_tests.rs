//! Adversarial review of the relay engine (issue 9, first implementation).
//! Every test here FAILS on the code it was written against: each shows
//! one finding of the review (named in its comment, R1..). They are kept
//! as regression tests for the fixes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::frame::{decode, Decoded, Frame, NAK_SECOND_ASK};
use super::{Dropped, Lane, LinkId, LinkKind, Relay, RelayConfig};
use crate::auth::{FLAG_AUTH, FLAG_FROM_SUBSCRIBER};
use crate::wire::{DatagramHeader, DatagramWriter, Delta, Heartbeat, Message, Nak, NakRanges};
use crate::{Destination, SeqNum, SeqRange, SessionId, StreamId};

const STREAM: StreamId = StreamId(7);
const REAL: SessionId = SessionId(0x5e55);
const FEEDER: LinkId = LinkId(1);
const DIALED: LinkId = LinkId(0);

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("addr")
}

fn publisher() -> SocketAddr {
    addr("10.1.0.1:4000")
}

fn attacker() -> SocketAddr {
    addr("10.1.0.66:4000")
}

fn subscriber(i: u8) -> SocketAddr {
    SocketAddr::from(([10, 2, 0, 10 + i], 6000))
}

fn datagram(stream: StreamId, session: SessionId, dseq: u64, msgs: &[Message<'_>]) -> Vec<u8> {
    let mut buf = vec![0u8; 4096];
    let header = DatagramHeader {
        stream,
        session,
        datagram_seq: dseq,
    };
    let mut w = DatagramWriter::new(&mut buf, &header).expect("header");
    for m in msgs {
        w.push(m).expect("fits");
    }
    let n = w.finish();
    buf.truncate(n);
    buf
}

fn delta(seq: u64, payload: &[u8]) -> Delta<'_> {
    Delta {
        seq: SeqNum(seq),
        prev_leaf_seq: SeqNum::NONE,
        creates: true,
        removes: false,
        key: b"k",
        payload,
    }
}

/// A live datagram of the real session carrying delta `seq`.
fn live(dseq: u64, seq: u64) -> Vec<u8> {
    datagram(
        STREAM,
        REAL,
        dseq,
        &[Message::Delta(delta(seq, b"payload"))],
    )
}

fn heartbeat(session: SessionId, dseq: u64, last: u64) -> Vec<u8> {
    datagram(
        STREAM,
        session,
        dseq,
        &[Message::Heartbeat(Heartbeat {
            last_seq: SeqNum(last),
            sent_at_micros: dseq,
            interval_ms: 100,
        })],
    )
}

fn nak(session: SessionId, requester: u32, ranges: &[(u64, u64)]) -> Vec<u8> {
    let ranges: Vec<SeqRange> = ranges
        .iter()
        .map(|&(a, b)| SeqRange {
            first: SeqNum(a),
            last: SeqNum(b),
        })
        .collect();
    datagram(
        STREAM,
        session,
        u64::from(requester),
        &[Message::Nak(Nak {
            requester,
            ranges: NakRanges::from_slice(&ranges),
        })],
    )
}

/// What a keyless relay sees of a sealed datagram: the §3 header with
/// `flags`, a 20-byte auth header (`salt` marks the sender), the messages,
/// a 16-byte tag. Nothing here is checked by a relay, so a forgery looks
/// exactly like this too.
fn sealed(plain: &[u8], flags: u8, salt: u8) -> Vec<u8> {
    let mut out = plain[..28].to_vec();
    out[5] = flags;
    out.extend_from_slice(&[salt; 20]);
    out.extend_from_slice(&plain[28..]);
    out.extend_from_slice(&[0xaa; 16]);
    out
}

/// A far relay: fed by a link, emitting on its group.
fn far(config: RelayConfig, now: Instant) -> Relay {
    let mut r = Relay::new(
        RelayConfig {
            emit_to_group: true,
            ..config
        },
        now,
        2,
    );
    r.add_link(FEEDER, LinkKind::Source, true);
    r
}

/// A near relay: reads the group, feeds one link.
fn near(now: Instant) -> Relay {
    let mut r = Relay::new(RelayConfig::default(), now, 1);
    r.add_link(
        DIALED,
        LinkKind::Sink {
            streams: vec![],
            max_datagram: 65_507,
        },
        true,
    );
    r
}

fn feed(r: &mut Relay, now: Instant, link: LinkId, d: &[u8]) {
    r.handle_frame(now, link, &Frame::Datagram(d));
}

/// Establishes the real session on `link` (a session is established by
/// `ESTABLISH` datagrams from one path): heartbeats with datagram_seq
/// 10,000 and up, sealed with `flags` if any.
fn establish(r: &mut Relay, now: Instant, link: LinkId, flags: Option<u8>) {
    for i in 0..u64::from(super::ESTABLISH) {
        let hb = heartbeat(REAL, 10_000 + i, 0);
        let d = match flags {
            Some(f) => sealed(&hb, f, 1),
            None => hb,
        };
        feed(r, now, link, &d);
    }
}

fn group_out(r: &mut Relay) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut all = Vec::new();
    while let Some(dest) = r.poll_transmit(&mut out) {
        if dest == Destination::Group {
            all.push(out.clone());
        }
    }
    all
}

fn udp_out(r: &mut Relay) -> Vec<(Destination, Vec<u8>)> {
    let mut out = Vec::new();
    let mut all = Vec::new();
    while let Some(dest) = r.poll_transmit(&mut out) {
        all.push((dest, out.clone()));
    }
    all
}

/// Every frame `link`'s control lane has now, decoded kind by kind:
/// (kind byte, second_ask flag for Naks).
fn control_frames(r: &mut Relay, now: Instant, link: LinkId) -> Vec<(u8, bool)> {
    let mut frames = Vec::new();
    loop {
        let mut buf = Vec::new();
        if !r.poll_lane(now, link, Lane::Control, &mut buf) {
            return frames;
        }
        match decode(&buf) {
            Ok(Decoded::Frame(Frame::Nak { flags, .. }, _)) => {
                frames.push((0x12, flags & NAK_SECOND_ASK != 0));
            }
            Ok(Decoded::Frame(_, _)) => frames.push((buf[0], false)),
            other => panic!("control lane gave {other:?}"),
        }
    }
}

fn naks_on(r: &mut Relay, now: Instant, link: LinkId) -> usize {
    control_frames(r, now, link)
        .iter()
        .filter(|(k, _)| *k == 0x12)
        .count()
}

// ---------------------------------------------------------------------------

/// R1 (critical): `settled` requires every other session of the stream to
/// have been *first heard before* the NAKed one. One forged datagram with a
/// new `session_id` (anyone on the near group; forwarded by the near relay
/// to the far one, AUTH or not) is "newer" than the real session for as
/// long as it is held, i.e. until a third session evicts it: local repair
/// is off for the real session from then on, silently (every NAK counts
/// `repeats_refused_unsettled` and crosses the WAN).
#[test]
fn r1_one_forged_session_turns_local_repair_off_for_good() {
    let t = Instant::now();
    let mut r = far(RelayConfig::default(), t);
    let mut dseq = 0;
    for seq in 1..=20 {
        feed(&mut r, t, FEEDER, &live(dseq, seq));
        dseq += 1;
    }
    // One forged datagram of another session, once.
    feed(
        &mut r,
        t + Duration::from_millis(1),
        FEEDER,
        &heartbeat(SessionId(0xbad), 0, 0),
    );
    // The real session goes on for 10 s; the forged one is never heard again.
    let mut now = t;
    let mut seq = 21;
    for _ in 0..100 {
        now += Duration::from_millis(100);
        feed(&mut r, now, FEEDER, &live(dseq, seq));
        dseq += 1;
        seq += 1;
    }
    group_out(&mut r);
    // A far subscriber lost the last delta.
    r.handle_nak(now, subscriber(1), &nak(REAL, 1, &[(seq - 1, seq - 1)]));
    let repeated = group_out(&mut r);
    assert_eq!(
        repeated.len(),
        1,
        "10 s after one forged datagram the real session's loss is still not repaired locally: {:?}",
        r.stats()
    );
}

/// R2 (critical): two forged sessions heard after the real session's
/// latest datagram evict it (`session_slot` drops the least recently
/// heard, and only 2 sessions are kept per stream): its history and its
/// duplicate filter are gone. Repeated every second, the relay keeps no
/// history at all.
#[test]
fn r2_two_forged_sessions_evict_the_real_one() {
    let t = Instant::now();
    let mut r = far(RelayConfig::default(), t);
    for seq in 1..=10 {
        feed(&mut r, t, FEEDER, &live(seq, seq));
    }
    // Each forged session established (enough datagrams of its own).
    let later = t + Duration::from_millis(5);
    for bad in [SessionId(0xbad1), SessionId(0xbad2)] {
        for i in 0..u64::from(super::ESTABLISH) {
            feed(&mut r, later, FEEDER, &heartbeat(bad, i, 0));
        }
    }
    group_out(&mut r);
    // 3 s later (so that nothing is "unsettled" any more), a real loss.
    let now = t + Duration::from_secs(3);
    feed(&mut r, now, FEEDER, &live(11, 11));
    group_out(&mut r);
    r.handle_nak(now, subscriber(1), &nak(REAL, 1, &[(5, 5)]));
    assert_eq!(
        group_out(&mut r).len(),
        1,
        "the real session's history was evicted by two forged datagrams: {:?}",
        r.stats()
    );
}

/// R3 (major): with the default configuration (`streams` empty: any, up to
/// `max_streams` = 16) a stream, once admitted, is never forgotten: 16
/// forged datagrams with made-up `stream_id`s, sent before the real stream
/// is first heard (a relay restart, a new stream), lock the real stream out
/// for the life of the process.
#[test]
fn r3_sixteen_forged_stream_ids_lock_the_real_stream_out_forever() {
    let t = Instant::now();
    let mut r = near(t);
    for s in 0..16 {
        let d = datagram(
            StreamId(1000 + s),
            SessionId(1),
            0,
            &[Message::Delta(delta(1, b"x"))],
        );
        r.handle_group(t, attacker(), &d);
    }
    // An hour later, the real stream.
    let now = t + Duration::from_secs(3600);
    r.handle_group(now, publisher(), &live(0, 1));
    assert_eq!(
        r.stats().dropped(Dropped::ForeignStream),
        0,
        "the real stream is refused an hour after 16 forged datagrams"
    );
}

/// R4 (major): a group upstream's NAK destination is the source of the
/// session's *latest* datagram (`session.upstream = upstream` on every new
/// datagram), so one forged datagram from any address (or a spoofed one)
/// redirects every NAK the near relay forwards to that address, until the
/// publisher's next datagram: the publisher never hears them.
#[test]
fn r4_one_forged_datagram_redirects_forwarded_naks() {
    let t = Instant::now();
    let mut r = near(t);
    for seq in 1..=10 {
        r.handle_group(t, publisher(), &live(seq, seq));
    }
    // Same session, bytes of its own (a forgery: not checked by a relay).
    r.handle_group(t, attacker(), &heartbeat(REAL, 11, 10));
    // A far NAK for something the near relay does not hold.
    let n = nak(REAL, 1, &[(500, 500)]);
    r.handle_frame(
        t,
        DIALED,
        &Frame::Nak {
            flags: 0,
            datagram: &n,
        },
    );
    // A keyless relay cannot tell which source is genuine: the NAK goes
    // to every source heard lately (at most four), the publisher among
    // them.
    let sent: Vec<Destination> = udp_out(&mut r).into_iter().map(|(d, _)| d).collect();
    assert!(
        sent.contains(&Destination::Unicast(publisher())),
        "the NAK did not reach the publisher: {sent:?}"
    );
}

/// R5 (major): when the repeat budget refuses a repeat, the seq was still
/// counted as answered by `plan` (it is held), so the NAK is neither
/// repeated nor forwarded upstream. Anyone who can NAK the far relay (one
/// datagram naming the history) drains the budget; after that every
/// subscriber's NAK for a held seq is silently dropped, attempt after
/// attempt (a late joiner's catch-up does the same to itself).
#[test]
fn r5_a_budget_refusal_drops_the_nak_instead_of_forwarding_it() {
    let t = Instant::now();
    let mut r = far(RelayConfig::default(), t);
    let payload = vec![0x55u8; 900];
    for seq in 1..=3000u64 {
        let d = datagram(STREAM, REAL, seq, &[Message::Delta(delta(seq, &payload))]);
        feed(&mut r, t, FEEDER, &d);
    }
    group_out(&mut r);
    // Anyone: one NAK naming everything.
    r.handle_nak(t, attacker(), &nak(REAL, 99, &[(1, 2900)]));
    group_out(&mut r);
    let before = r.stats();
    assert!(before.repeats_refused_budget > 0, "{before:?}");
    // A real subscriber lost seq 2999 (held, fresh, never repeated).
    let mut now = t;
    for attempt in 0..5 {
        // Beyond the forwarding hold-off: a NAK forwarded within it is
        // not forwarded again (the link is reliable).
        now += Duration::from_millis(120);
        // The attacker asks again first (50 tiny datagrams a second keep
        // the floor refill spent)...
        // (Plain NAKs are coalesced upstream by range: the attacker's do
        // not name the subscriber's, or its repair would be on its way.)
        r.handle_nak(now, attacker(), &nak(REAL, 99, &[(1, 2900)]));
        group_out(&mut r);
        naks_on(&mut r, now, FEEDER);
        // ...then the subscriber.
        r.handle_nak(now, subscriber(1), &nak(REAL, 1, &[(2999, 2999)]));
        let repeated = group_out(&mut r).len();
        let forwarded = naks_on(&mut r, now, FEEDER);
        assert!(
            repeated + forwarded > 0,
            "attempt {attempt}: a NAK for a held datagram was neither answered nor forwarded: {:?}",
            r.stats()
        );
    }
}

/// R6 (critical): with AUTH a relay cannot tell a genuine NAK from a
/// forged one, yet `forwarded_seqs` coalesces by sequence number: a forged
/// NAK naming seq X (refused by the publisher, `bad_tag`) makes the relay
/// drop every genuine NAK for X for `forward_holdoff` (100 ms). One forged
/// 90-byte NAK every 100 ms naming the 16,384 seqs around the tail stops
/// every upstream repair for the far network (everything not held
/// locally: HB-bearing datagrams, near-side loss, beyond the history).
#[test]
fn r6_a_forged_nak_shadows_the_genuine_one_with_auth() {
    let t = Instant::now();
    let mut r = far(RelayConfig::default(), t);
    let sealed_flags = FLAG_AUTH;
    let nak_flags = FLAG_AUTH | FLAG_FROM_SUBSCRIBER;
    // The session is known (heartbeat-only datagrams: nothing is held).
    establish(&mut r, t, FEEDER, Some(sealed_flags));
    group_out(&mut r);
    naks_on(&mut r, t, FEEDER);
    // The forgery first, then the genuine NAK (another salt) 5 ms later.
    let forged = sealed(&nak(REAL, 0xbad, &[(41, 41)]), nak_flags, 0x66);
    let genuine = sealed(&nak(REAL, 7, &[(41, 41)]), nak_flags, 0x07);
    r.handle_nak(t, attacker(), &forged);
    let now = t + Duration::from_millis(5);
    r.handle_nak(now, subscriber(1), &genuine);
    assert_eq!(
        naks_on(&mut r, now, FEEDER),
        2,
        "the genuine NAK was coalesced behind a forged one: {:?}",
        r.stats()
    );
}

/// R7 (major): the NAK forwarding budget (1000/s) is one bucket for every
/// origin, and a second-ask Nak frame bypasses coalescing. One unicast
/// subscriber (no client certificate needed, by default) sending Nak
/// frames with second_ask takes all of it: the far group's NAKs are then
/// `naks_forward_limited`, and in ENCRYPT mode (every NAK goes upstream)
/// no far subscriber is repaired at all.
#[test]
fn r7_one_link_starves_every_other_nak_of_the_forwarding_budget() {
    let t = Instant::now();
    let mut r = far(RelayConfig::default(), t);
    let sub = LinkId(9);
    r.add_link(
        sub,
        LinkKind::Sink {
            streams: vec![],
            max_datagram: 65_507,
        },
        true,
    );
    establish(&mut r, t, FEEDER, None);
    group_out(&mut r);
    let n = nak(REAL, 0xbad, &[(41, 41)]);
    for _ in 0..200 {
        r.handle_frame(
            t,
            sub,
            &Frame::Nak {
                flags: NAK_SECOND_ASK,
                datagram: &n,
            },
        );
    }
    naks_on(&mut r, t, FEEDER);
    // A far subscriber's first NAK for something never asked.
    r.handle_nak(t, subscriber(1), &nak(REAL, 1, &[(39, 39)]));
    assert_eq!(
        naks_on(&mut r, t, FEEDER),
        1,
        "a group NAK was refused the budget one subscriber link spent: {:?}",
        r.stats()
    );
}

/// R8 (major): the driver gives every accepted connection a new `LinkId`
/// and removes the old one on Down, but the engine keeps the session's
/// upstream pointing at the removed link: for `upstream_timeout` (2 s)
/// after its last datagram, the reconnected feeder's datagrams (its whole
/// drained backlog included) are dropped as `Standby`, and NAKs meanwhile
/// go to the dead link (counted forwarded, R12).
#[test]
fn r8_a_reconnected_feeder_is_standby_for_two_seconds() {
    let t = Instant::now();
    let mut r = far(RelayConfig::default(), t);
    for seq in 1..=10 {
        feed(&mut r, t, FEEDER, &live(seq, seq));
    }
    group_out(&mut r);
    // The feeder's connection drops (a near relay restart, a reset) and it
    // reconnects 300 ms later, as the driver does it.
    r.remove_link(FEEDER);
    let again = LinkId(2);
    let now = t + Duration::from_millis(300);
    r.add_link(again, LinkKind::Source, true);
    for seq in 11..=20 {
        feed(&mut r, now, again, &live(seq, seq));
    }
    assert_eq!(
        group_out(&mut r).len(),
        10,
        "the reconnected feeder's datagrams were dropped: {:?}",
        r.stats()
    );
}

/// R9 (minor): `History::find` looks a Repair's datagram up through its
/// *first* seq (or first fragment) only. When that seq already has its
/// two candidates (the original and a Retransmit, say), a Repair frame
/// carrying a datagram the far relay never had (shed on the link) is
/// inserted but not found, and silently not emitted.
#[test]
fn r9_a_repair_whose_first_seq_is_full_is_dropped() {
    let t = Instant::now();
    let mut r = far(RelayConfig::default(), t);
    establish(&mut r, t, FEEDER, None);
    feed(&mut r, t, FEEDER, &live(1, 5));
    let retransmit = datagram(
        STREAM,
        REAL,
        2,
        &[Message::Retransmit(delta(5, b"payload"))],
    );
    feed(&mut r, t, FEEDER, &retransmit);
    group_out(&mut r);
    // The near relay repairs a datagram the far one never received.
    let missed = datagram(
        STREAM,
        REAL,
        3,
        &[
            Message::Retransmit(delta(5, b"payload")),
            Message::Retransmit(delta(6, b"payload")),
        ],
    );
    let now = t + Duration::from_millis(50);
    r.handle_frame(now, FEEDER, &Frame::Repair(&missed));
    assert_eq!(
        group_out(&mut r),
        vec![missed],
        "a Repair frame was swallowed: {:?}",
        r.stats()
    );
}

/// R10 (major): the control lane is an unbounded queue. Every Ping frame
/// received queues a Pong; a peer that sends Pings and does not read (a
/// unicast subscriber needs no certificate) grows the relay's memory
/// without bound. (Shed frames, R11, and Nak frames add to the same queue.)
#[test]
fn r10_pings_from_a_peer_that_does_not_read_grow_memory_without_bound() {
    let t = Instant::now();
    let mut r = far(RelayConfig::default(), t);
    let sub = LinkId(9);
    r.add_link(
        sub,
        LinkKind::Sink {
            streams: vec![],
            max_datagram: 65_507,
        },
        true,
    );
    for i in 0..100_000u64 {
        r.handle_frame(t, sub, &Frame::Ping(i));
    }
    let queued = control_frames(&mut r, t, sub).len();
    assert!(
        queued <= 1024,
        "{queued} Pong frames queued for one peer that does not read"
    );
}

/// R11 (major): while a link is down, shed counts accumulate per
/// (stream, session) in `Link::shed` with no bound, one entry per session
/// id shed; forged session ids on the near group make it grow for as long
/// as the outage lasts, and on reconnect every entry becomes a Shed frame
/// queued at once on the control lane.
#[test]
fn r11_shed_reports_grow_without_bound_while_a_link_is_down() {
    let t = Instant::now();
    let config = RelayConfig {
        queue_bytes: 65_536,
        ..RelayConfig::default()
    };
    let mut r = Relay::new(config, t, 1);
    r.add_link(
        DIALED,
        LinkKind::Sink {
            streams: vec![],
            max_datagram: 65_507,
        },
        false,
    );
    let payload = vec![1u8; 200];
    for i in 0..50_000u64 {
        let d = datagram(
            STREAM,
            SessionId(0x1_0000 + i),
            0,
            &[Message::Delta(delta(1, &payload))],
        );
        r.handle_group(t, attacker(), &d);
    }
    r.set_link_up(DIALED, true);
    let sheds = control_frames(&mut r, t, DIALED)
        .iter()
        .filter(|(k, _)| *k == 0x13)
        .count();
    assert!(
        sheds <= 1024,
        "{sheds} Shed frames (and as many map entries) for one outage"
    );
}

/// R12 (minor): a NAK "forwarded" to an upstream link that is gone (or
/// down) is counted in `naks_forwarded` and remembered in `forwarded_seqs`
/// (so the next asks within 100 ms are coalesced), but nothing is sent.
#[test]
fn r12_a_nak_forwarded_to_a_link_that_is_gone_counts_as_forwarded() {
    let t = Instant::now();
    let mut r = far(RelayConfig::default(), t);
    establish(&mut r, t, FEEDER, None);
    group_out(&mut r);
    r.remove_link(FEEDER);
    r.handle_nak(t, subscriber(1), &nak(REAL, 1, &[(39, 39)]));
    assert_eq!(
        r.stats().naks_forwarded,
        0,
        "a NAK sent nowhere is counted as forwarded"
    );
}

/// R13 (minor): `History::expire` drops a datagram once `fresh - 1`
/// datagrams arrived after it, one early: the documented rule (and
/// `RelayConfig::fresh_datagrams`) is "fewer than `fresh` arrived after it".
#[test]
fn r13_freshness_is_off_by_one() {
    let t = Instant::now();
    let mut r = far(RelayConfig::default(), t);
    establish(&mut r, t, FEEDER, None);
    feed(&mut r, t, FEEDER, &live(0, 1));
    // 3839 datagrams after it: fewer than 3840.
    for i in 1..3840u64 {
        feed(&mut r, t, FEEDER, &heartbeat(REAL, i, 1));
    }
    group_out(&mut r);
    r.handle_nak(t, subscriber(1), &nak(REAL, 1, &[(1, 1)]));
    assert_eq!(
        group_out(&mut r).len(),
        1,
        "a datagram with 3839 after it is no longer held: {:?}",
        r.stats()
    );
}

/// R14 (major): the index keeps the *first* two datagrams claiming a seq.
/// Two forged datagrams claiming a seq the publisher has not reached yet
/// (one datagram can claim ~100 of them) keep the real datagram out of the
/// index for as long as the forgeries are held: every local answer for
/// that seq is a forgery (refused `bad_tag` with AUTH), and the real
/// datagram is never repeated, only the second ask reaches the publisher.
#[test]
fn r14_two_forged_datagrams_preclaim_a_seq() {
    let t = Instant::now();
    let mut r = near(t);
    let forged: Vec<Message<'_>> = (100..=180).map(|s| Message::Delta(delta(s, b""))).collect();
    let f1 = sealed(&datagram(STREAM, REAL, 900, &forged), FLAG_AUTH, 0x66);
    let f2 = sealed(&datagram(STREAM, REAL, 901, &forged), FLAG_AUTH, 0x66);
    let real = sealed(&live(100, 100), FLAG_AUTH, 0x01);
    // The publisher establishes the session (its source is the main one).
    for i in 0..u64::from(super::ESTABLISH) {
        r.handle_group(
            t,
            publisher(),
            &sealed(&heartbeat(REAL, 10 + i, 0), FLAG_AUTH, 0x01),
        );
    }
    r.handle_group(t, publisher(), &sealed(&live(99, 99), FLAG_AUTH, 0x01));
    r.handle_group(t, attacker(), &f1);
    r.handle_group(t, attacker(), &f2);
    r.handle_group(t, publisher(), &real);
    // Drain the live frames.
    while r.poll_lane(t, DIALED, Lane::Stream(STREAM), &mut Vec::new()) {}
    let n = sealed(
        &nak(REAL, 1, &[(100, 100)]),
        FLAG_AUTH | FLAG_FROM_SUBSCRIBER,
        2,
    );
    let mut repaired = Vec::new();
    for attempt in 0..3u64 {
        let now = t + Duration::from_millis(20 * (attempt + 1));
        r.handle_frame(
            now,
            DIALED,
            &Frame::Nak {
                flags: 0,
                datagram: &n,
            },
        );
        let mut buf = Vec::new();
        while r.poll_lane(now, DIALED, Lane::Stream(STREAM), &mut buf) {
            repaired.push(buf[3..].to_vec());
            buf.clear();
        }
    }
    assert!(
        repaired.contains(&real),
        "the real datagram for seq 100 was never repeated ({} forged repeats)",
        repaired.len()
    );
}

/// R15 (major): NAK handling cost up to 16,384 history look-ups per NAK,
/// before any rate limit: a 54-byte NAK naming `1..=2^62` cost
/// milliseconds of the main task. Now a NAK looks only at the sequence
/// numbers held (a range query), and one origin's NAKs beyond its rate are
/// dropped unread: the 1000 NAKs below are answered for what is held,
/// forwarded once (the rest coalesced), and mostly not read at all.
#[test]
fn r15_one_small_nak_costs_thousands_of_lookups() {
    let t = Instant::now();
    let mut r = far(RelayConfig::default(), t);
    for seq in 1..=10 {
        feed(&mut r, t, FEEDER, &live(seq, seq));
    }
    group_out(&mut r);
    naks_on(&mut r, t, FEEDER);
    let n = nak(REAL, 0xbad, &[(1, 1 << 62)]);
    for i in 0..1000u64 {
        r.handle_nak(t + Duration::from_micros(i), attacker(), &n);
    }
    let s = r.stats();
    // The first four datagrams established the session: 7 held.
    assert_eq!(group_out(&mut r).len(), 7, "{s:?}");
    assert_eq!(naks_on(&mut r, t, FEEDER), 1, "{s:?}");
    assert!(s.naks_origin_limited > 900, "{s:?}");
}

/// R16 (major): the driver hands every datagram reaching the near relay's
/// sending socket (the one its NAKs to the publisher leave from) to
/// `handle_nak`. A near relay emits on no group, yet it answers such a
/// "group" NAK locally: `repeat` takes the stream's repeat budget and
/// counts a repeat, and sends nothing. Whoever finds that port drains the
/// near relay's budget; from then on the far relay's NAKs for what the
/// near relay holds get no Repair frame and are not forwarded (R5).
#[test]
fn r16_naks_to_a_near_relay_spend_its_budget_on_repeats_it_never_sends() {
    let t = Instant::now();
    let mut r = near(t);
    let payload = vec![0x55u8; 900];
    for seq in 1..=3000u64 {
        let d = datagram(STREAM, REAL, seq, &[Message::Delta(delta(seq, &payload))]);
        r.handle_group(t, publisher(), &d);
    }
    while r.poll_lane(t, DIALED, Lane::Stream(STREAM), &mut Vec::new()) {}
    r.handle_nak(t, attacker(), &nak(REAL, 99, &[(1, 3000)]));
    let sent = udp_out(&mut r).len();
    let stats = r.stats();
    // The far relay forwards a subscriber's first NAK for seq 2999.
    let n = nak(REAL, 1, &[(2999, 2999)]);
    r.handle_frame(
        t,
        DIALED,
        &Frame::Nak {
            flags: 0,
            datagram: &n,
        },
    );
    let repairs = r.poll_lane(t, DIALED, Lane::Stream(STREAM), &mut Vec::new());
    let forwarded = !udp_out(&mut r).is_empty();
    assert!(
        repairs || forwarded,
        "the far relay's NAK was neither repaired nor forwarded: {:?}",
        r.stats()
    );
    assert!(
        stats.repeats == 0 || sent > 0,
        "{} repeats counted, {sent} datagrams sent",
        stats.repeats
    );
}

// ---------------------------------------------------------------------------
// The engine's rules, one by one (each fails with its rule taken out).

/// A datagram carrying a Heartbeat is never repeated (late, it re-anchors
/// subscribers, PROTOCOL.md §8.4 rule 4): a NAK for its delta goes
/// upstream instead.
#[test]
fn a_datagram_carrying_a_heartbeat_is_never_repeated() {
    let t = Instant::now();
    let mut r = far(RelayConfig::default(), t);
    establish(&mut r, t, FEEDER, None);
    let hb = Message::Heartbeat(Heartbeat {
        last_seq: SeqNum(5),
        sent_at_micros: 0,
        interval_ms: 100,
    });
    let both = datagram(STREAM, REAL, 1, &[Message::Delta(delta(5, b"x")), hb]);
    feed(&mut r, t, FEEDER, &both);
    group_out(&mut r);
    r.handle_nak(t, subscriber(1), &nak(REAL, 1, &[(5, 5)]));
    assert!(
        group_out(&mut r).is_empty(),
        "a heartbeat datagram was repeated"
    );
    assert_eq!(naks_on(&mut r, t, FEEDER), 1);
}

/// A NAK frame with the second-ask flag from a relay downstream is not
/// answered from history (that relay already did): it goes upstream, the
/// flag kept.
#[test]
fn a_second_ask_goes_upstream_with_its_flag() {
    let t = Instant::now();
    let mut r = near(t);
    for seq in 1..=10 {
        r.handle_group(t, publisher(), &live(seq, seq));
    }
    while r.poll_lane(t, DIALED, Lane::Stream(STREAM), &mut Vec::new()) {}
    let n = nak(REAL, 1, &[(8, 8)]);
    r.handle_frame(
        t,
        DIALED,
        &Frame::Nak {
            flags: NAK_SECOND_ASK,
            datagram: &n,
        },
    );
    assert!(
        !r.poll_lane(t, DIALED, Lane::Stream(STREAM), &mut Vec::new()),
        "a second ask was answered from history"
    );
    let sent: Vec<Destination> = udp_out(&mut r).into_iter().map(|(d, _)| d).collect();
    assert_eq!(sent, vec![Destination::Unicast(publisher())]);
    // The same NAK without the flag is answered here.
    r.handle_frame(
        t,
        DIALED,
        &Frame::Nak {
            flags: 0,
            datagram: &n,
        },
    );
    assert!(r.poll_lane(t, DIALED, Lane::Stream(STREAM), &mut Vec::new()));
}

/// A datagram with more than `fresh_datagrams` after it is not repeated
/// (a subscriber's replay window would refuse it): asked upstream.
#[test]
fn a_datagram_beyond_the_fresh_window_is_asked_upstream() {
    let t = Instant::now();
    let mut r = far(RelayConfig::default(), t);
    establish(&mut r, t, FEEDER, None);
    feed(&mut r, t, FEEDER, &live(0, 1));
    for i in 1..=3841u64 {
        feed(&mut r, t, FEEDER, &heartbeat(REAL, i, 1));
    }
    group_out(&mut r);
    naks_on(&mut r, t, FEEDER);
    r.handle_nak(t, subscriber(1), &nak(REAL, 1, &[(1, 1)]));
    assert!(group_out(&mut r).is_empty());
    assert_eq!(naks_on(&mut r, t, FEEDER), 1);
}

/// The same datagram twice (a second feeder, a loop) is emitted once.
#[test]
fn copies_are_emitted_once() {
    let t = Instant::now();
    let mut r = far(RelayConfig::default(), t);
    establish(&mut r, t, FEEDER, None);
    group_out(&mut r);
    feed(&mut r, t, FEEDER, &live(1, 1));
    feed(&mut r, t, FEEDER, &live(1, 1));
    assert_eq!(group_out(&mut r).len(), 1);
    assert_eq!(r.stats().dropped(Dropped::Duplicate), 1);
}

/// While another established session of the stream is heard (a publisher
/// restart), NAKs are not answered from history (repeats would restart the
/// subscribers' proof of the new session): they go upstream. Once the
/// other has been silent for `session_settle`, they are answered here.
#[test]
fn naks_wait_for_the_stream_to_settle_on_one_session() {
    let t = Instant::now();
    let mut r = far(RelayConfig::default(), t);
    establish(&mut r, t, FEEDER, None);
    let old = SessionId(0x01d);
    for i in 0..u64::from(super::ESTABLISH) {
        feed(&mut r, t, FEEDER, &heartbeat(old, i, 0));
    }
    feed(&mut r, t, FEEDER, &live(1, 1));
    group_out(&mut r);
    naks_on(&mut r, t, FEEDER);
    r.handle_nak(t, subscriber(1), &nak(REAL, 1, &[(1, 1)]));
    assert!(
        group_out(&mut r).is_empty(),
        "answered while another session is live"
    );
    assert_eq!(naks_on(&mut r, t, FEEDER), 1);
    assert_eq!(r.stats().repeats_refused_unsettled, 1);
    let later = t + RelayConfig::default().session_settle;
    r.handle_nak(later, subscriber(1), &nak(REAL, 1, &[(1, 1)]));
    assert_eq!(group_out(&mut r).len(), 1);
}

/// A datagram repeated here and asked for again after the hold-off: the
/// local answer did not do (a forged datagram in the index, a copy lost
/// again), so the NAK also goes upstream, with the second-ask flag.
#[test]
fn asked_again_after_a_repeat_goes_upstream_as_a_second_ask() {
    let t = Instant::now();
    let mut r = far(RelayConfig::default(), t);
    establish(&mut r, t, FEEDER, None);
    feed(&mut r, t, FEEDER, &live(1, 1));
    group_out(&mut r);
    control_frames(&mut r, t, FEEDER);
    r.handle_nak(t, subscriber(1), &nak(REAL, 1, &[(1, 1)]));
    assert_eq!(group_out(&mut r).len(), 1);
    assert!(
        control_frames(&mut r, t, FEEDER).is_empty(),
        "answered here only"
    );
    let again = t + Duration::from_millis(30);
    r.handle_nak(again, subscriber(1), &nak(REAL, 1, &[(1, 1)]));
    assert_eq!(group_out(&mut r).len(), 1, "repeated again");
    assert_eq!(control_frames(&mut r, again, FEEDER), vec![(0x12, true)]);
}

/// A Repair frame from upstream is emitted once within the hold-off,
/// however often it comes.
#[test]
fn a_repair_is_emitted_once_within_the_holdoff() {
    let t = Instant::now();
    let mut r = far(RelayConfig::default(), t);
    establish(&mut r, t, FEEDER, None);
    group_out(&mut r);
    let d = live(1, 1);
    r.handle_frame(t, FEEDER, &Frame::Repair(&d));
    r.handle_frame(t, FEEDER, &Frame::Repair(&d));
    assert_eq!(group_out(&mut r).len(), 1);
    assert_eq!(r.stats().repeats_coalesced, 1);
    let later = t + RelayConfig::default().repair_holdoff;
    r.handle_frame(later, FEEDER, &Frame::Repair(&d));
    assert_eq!(group_out(&mut r).len(), 1);
}
