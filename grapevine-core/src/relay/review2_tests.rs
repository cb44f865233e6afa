//! Second adversarial review of the relay (issue 9), of the fixes made
//! after the first one (4b268c5, 5284e7f, 0ad1b72). Every test here FAILS
//! on the code it was written against (relay-review2 branch point,
//! 5284e7f): each shows one finding, named N1.. in its comment.
//!
//! Mutants tried by hand on 5284e7f against `cargo test -p grapevine-core
//! --lib` (GRAPEVINE_SIM_SEEDS=8), before these tests: killed: `settled`
//! always true, no budget in `answer_from`, orphan ignored, ESTABLISH = 1,
//! no late-copy rule, no origin rate, second_ask ignored, sealed NAKs
//! coalesced by range, streams never freed, Repair not repeated, Sources
//! without liveness (by sources.rs's unit test only). Survived: late copy
//! ignoring `datagram_seq`; the subscriber's NAK destination ignoring
//! silence (`main(now, MAX)`); the relay's `main` flag always true; no
//! main-source displacement; never contested; no `asked_again`; no
//! hold-off in `repeat_everywhere`; candidates unbounded; candidate window
//! or path reset removed; a live established session evictable (R2 and
//! R14 no longer reach the rules they were written for: their forged
//! datagrams now only count towards establishing the real session).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::frame::{decode, Decoded, Frame};
use super::{Lane, LinkId, LinkKind, Relay, RelayConfig};
use crate::auth::{FLAG_AUTH, FLAG_ENCRYPT, FLAG_FROM_SUBSCRIBER};
use crate::wire::{
    Datagram, DatagramHeader, DatagramWriter, Delta, FragNak, FragRanges, Fragment, Heartbeat,
    Message, Nak, NakRanges,
};
use crate::{Destination, SeqNum, SeqRange, SessionId, StreamId};

const STREAM: StreamId = StreamId(7);
const REAL: SessionId = SessionId(0x5e55);
const FEEDER: LinkId = LinkId(1);
const DIALED: LinkId = LinkId(0);
const ESTABLISH: u64 = super::ESTABLISH as u64;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("addr")
}

fn publisher() -> SocketAddr {
    addr("10.1.0.1:4000")
}

fn attacker() -> SocketAddr {
    addr("10.1.0.66:4000")
}

/// An attacker's socket `port` on one host (a NAK origin is an address
/// *and* a port).
fn attacker_port(port: u16) -> SocketAddr {
    SocketAddr::from(([10, 2, 0, 66], port))
}

fn subscriber(i: u8) -> SocketAddr {
    SocketAddr::from(([10, 2, 0, 10 + i], 6000))
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn datagram(stream: StreamId, session: SessionId, dseq: u64, msgs: &[Message<'_>]) -> Vec<u8> {
    let mut buf = vec![0u8; 70_000];
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

fn live_in(session: SessionId, dseq: u64, seq: u64) -> Vec<u8> {
    datagram(
        STREAM,
        session,
        dseq,
        &[Message::Delta(delta(seq, b"payload"))],
    )
}

fn live(dseq: u64, seq: u64) -> Vec<u8> {
    live_in(REAL, dseq, seq)
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

fn nak_from(requester: u32, session: SessionId, ranges: &[(u64, u64)]) -> Vec<u8> {
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

fn nak(requester: u32, ranges: &[(u64, u64)]) -> Vec<u8> {
    nak_from(requester, REAL, ranges)
}

/// What a keyless relay sees of a sealed datagram (a forgery looks the
/// same): header with `flags`, 20-byte auth header, messages, 16-byte tag.
fn sealed(plain: &[u8], flags: u8, salt: u8) -> Vec<u8> {
    let mut out = plain[..28].to_vec();
    out[5] = flags;
    out.extend_from_slice(&[salt; 20]);
    out.extend_from_slice(&plain[28..]);
    out.extend_from_slice(&[0xaa; 16]);
    out
}

/// A forged datagram of `session` by an attacker without the key: AUTH
/// set, garbage tag (every subscriber refuses it; a relay cannot tell).
fn forged(session: SessionId, dseq: u64) -> Vec<u8> {
    sealed(&heartbeat(session, dseq, 0), FLAG_AUTH, 0x66)
}

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

fn near_with(config: RelayConfig, now: Instant) -> Relay {
    let mut r = Relay::new(config, now, 1);
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

fn near(now: Instant) -> Relay {
    near_with(RelayConfig::default(), now)
}

fn feed(r: &mut Relay, now: Instant, link: LinkId, d: &[u8]) {
    r.handle_frame(now, link, &Frame::Datagram(d));
}

fn far_nak(r: &mut Relay, now: Instant, d: &[u8]) {
    r.handle_frame(
        now,
        DIALED,
        &Frame::Nak {
            flags: 0,
            datagram: d,
        },
    );
}

fn udp_out(r: &mut Relay) -> Vec<(Destination, Vec<u8>)> {
    let mut out = Vec::new();
    let mut all = Vec::new();
    while let Some(dest) = r.poll_transmit(&mut out) {
        all.push((dest, out.clone()));
    }
    all
}

fn group_out(r: &mut Relay) -> usize {
    udp_out(r)
        .iter()
        .filter(|(d, _)| *d == Destination::Group)
        .count()
}

fn drain_lane(r: &mut Relay, now: Instant, link: LinkId, stream: StreamId) -> Vec<Vec<u8>> {
    let mut all = Vec::new();
    let mut buf = Vec::new();
    while r.poll_lane(now, link, Lane::Stream(stream), &mut buf) {
        all.push(buf[3..].to_vec());
        buf.clear();
    }
    all
}

/// The requesters of the Nak frames on `link`'s control lane now.
fn forwarded_requesters(r: &mut Relay, now: Instant, link: LinkId) -> Vec<u32> {
    let mut out = Vec::new();
    loop {
        let mut buf = Vec::new();
        if !r.poll_lane(now, link, Lane::Control, &mut buf) {
            return out;
        }
        if let Ok(Decoded::Frame(Frame::Nak { datagram, .. }, _)) = decode(&buf) {
            let requester = Datagram::decode(datagram).ok().and_then(|d| {
                d.messages().find_map(|m| match m {
                    Message::Nak(n) => Some(n.requester),
                    _ => None,
                })
            });
            out.push(requester.unwrap_or(0));
        }
    }
}

/// Whether a NAK for `session` reached the publisher (near relay) or was
/// answered with a Repair frame, after `f` hands it to the relay.
fn nak_went_somewhere(r: &mut Relay, now: Instant, f: impl FnOnce(&mut Relay)) -> bool {
    udp_out(r);
    drain_lane(r, now, DIALED, STREAM);
    f(r);
    let forwarded = udp_out(r)
        .iter()
        .any(|(d, _)| *d == Destination::Unicast(publisher()));
    let repaired = !drain_lane(r, now, DIALED, STREAM).is_empty();
    forwarded || repaired
}

// ---------------------------------------------------------------------------

/// N1 (critical): R1 is back at the price of 4 datagrams. A session is
/// established by `ESTABLISH` (4) datagrams from one path within
/// `session_settle`, and `settled` then refuses local answers for every
/// other session of the stream while it is heard within `session_settle`
/// (2 s). An attacker *without the key* (AUTH, garbage tags: the relay
/// cannot check them) sends 4 datagrams with a new `session_id` on the
/// near group, then one every 1.5 s: local repair is off for the real
/// session for as long as it cares to, on both relays (every NAK counts
/// `repeats_refused_unsettled` and crosses the WAN). engine.rs `settled`.
#[test]
fn n1_four_forged_datagrams_and_one_every_1500ms_keep_local_repair_off() {
    let t = Instant::now();
    let mut r = far(RelayConfig::default(), t);
    let mut dseq = 0;
    for seq in 1..=20 {
        feed(&mut r, t, FEEDER, &live(dseq, seq));
        dseq += 1;
    }
    let bad = SessionId(0xbad);
    let mut f = 0;
    let mut now = t;
    let mut seq = 21;
    for i in 0..100u64 {
        now += ms(100);
        feed(&mut r, now, FEEDER, &live(dseq, seq));
        dseq += 1;
        seq += 1;
        if i % 15 == 0 {
            let n = if i == 0 { ESTABLISH } else { 1 };
            for _ in 0..n {
                feed(&mut r, now, FEEDER, &forged(bad, f));
                f += 1;
            }
        }
    }
    group_out(&mut r);
    r.handle_nak(now, subscriber(1), &nak(1, &[(seq - 1, seq - 1)]));
    assert_eq!(
        group_out(&mut r),
        1,
        "10 s of a forged session kept alive by 11 datagrams: the real session's loss is not repaired locally: {:?}",
        r.stats()
    );
}

/// N2 (critical): a restarted publisher is never established, so its
/// NAKs are dropped. Established sessions heard within `upstream_timeout`
/// are never evicted, and only 2 are kept: an attacker without the key
/// holds one slot with a forged session (N1), and when the publisher
/// restarts it sends datagrams of a second forged session faster than the
/// publisher; once the old session has been silent for 2 s, its candidate
/// takes the freed slot first. The new real session stays a candidate for
/// as long as the two forged ones are heard (one datagram a second each):
/// forwarded, never held, and every NAK for it is `UnknownSession`:
/// neither answered nor forwarded (engine.rs `nak`), on every relay of
/// the chain. Far subscribers get no NAK repair at all.
#[test]
fn n2_two_live_forged_sessions_lock_a_restarted_publisher_out_of_repair() {
    let t = Instant::now();
    let mut r = near(t);
    let new = SessionId(0x5e56);
    let (f1, f2) = (SessionId(0xbad1), SessionId(0xbad2));
    let (mut d_real, mut d_f) = (0u64, 0u64);
    let mut seq = 0u64;
    let mut now = t;
    for step in 0..800u64 {
        // 10 ms steps, 8 s.
        now = t + ms(10 * step);
        if step == 10 {
            for _ in 0..ESTABLISH {
                r.handle_group(now, attacker(), &forged(f1, d_f));
                d_f += 1;
            }
        }
        if step % 100 == 50 {
            r.handle_group(now, attacker(), &forged(f1, d_f));
            d_f += 1;
        }
        if step >= 100 {
            // The publisher restarted at 1 s; the attacker's second
            // session, from then on, a little ahead of it.
            r.handle_group(now, attacker(), &forged(f2, d_f));
            d_f += 1;
        }
        if step == 100 {
            seq = 0;
            d_real = 0;
        }
        seq += 1;
        let session = if step < 100 { REAL } else { new };
        r.handle_group(now, publisher(), &live_in(session, d_real, seq));
        d_real += 1;
        drain_lane(&mut r, now, DIALED, STREAM);
    }
    // A far subscriber lost seq 700 of the new session (held: the near
    // relay heard it; or if not, the publisher has it).
    let n = nak_from(1, new, &[(700, 700)]);
    let went = nak_went_somewhere(&mut r, now, |r| far_nak(r, now, &n));
    assert!(
        went,
        "7 s after the restart, a NAK for the new session is dropped: {:?}",
        r.stats()
    );
}

/// N3 (critical): the candidate stage can be kept from ever establishing
/// a real session. Candidates are at most 8 per stream, the least recently
/// heard evicted; an attacker without the key sending 8 datagrams with
/// fresh `session_id`s between two of the publisher's evicts the real
/// candidate every time, so it never reaches 4 datagrams. On a quiet stream
/// (a heartbeat every 100 ms) that is 80 datagrams a second. Nothing is
/// held, and every NAK is `UnknownSession` (N2): at a relay start or a
/// publisher restart, the far network loses all NAK repair.
/// engine.rs `place`.
#[test]
fn n3_fresh_session_ids_keep_the_real_candidate_from_being_established() {
    let t = Instant::now();
    let mut r = near(t);
    let mut now = t;
    let mut fresh = 0x1_0000u64;
    for i in 0..50u64 {
        now = t + ms(100 * i);
        r.handle_group(now, publisher(), &live(i, i + 1));
        for _ in 0..8 {
            now += ms(1);
            r.handle_group(now, attacker(), &forged(SessionId(fresh), 0));
            fresh += 1;
        }
        drain_lane(&mut r, now, DIALED, STREAM);
    }
    let n = nak(1, &[(45, 45)]);
    let went = nak_went_somewhere(&mut r, now, |r| far_nak(r, now, &n));
    assert!(
        went,
        "5 s of the real session: never established, its NAK dropped: {:?}",
        r.stats()
    );
}

/// N4 (major): a session carried by two feeders (redundancy, which
/// docs/design/relay.md supports and deduplicates) is never established
/// when their copies interleave: a candidate starts counting again every
/// time a datagram comes from another path (engine.rs `place`:
/// `cand.path != path`), so A1 B1 A2 B2 ... never counts beyond 1. No
/// attacker needed; no history, and NAKs dropped (N2).
#[test]
fn n4_a_session_carried_by_two_feeders_is_never_established() {
    let t = Instant::now();
    let mut r = far(RelayConfig::default(), t);
    let second = LinkId(2);
    r.add_link(second, LinkKind::Source, true);
    let mut now = t;
    for i in 0..100u64 {
        now = t + ms(i);
        let d = live(i, i + 1);
        feed(&mut r, now, FEEDER, &d);
        feed(&mut r, now, second, &d);
    }
    group_out(&mut r);
    r.handle_nak(now, subscriber(1), &nak(1, &[(90, 90)]));
    assert_eq!(
        group_out(&mut r),
        1,
        "100 datagrams from two feeders: nothing held: {:?}",
        r.stats()
    );
}

/// N5 (major): R7 is not fixed. The per-origin rate (200 NAKs/s) is
/// below the global forwarding budget (1,000/s) by a factor of 5 only, and
/// an origin is an address *and port*: one host with 6 UDP sockets on the
/// far network, each NAKing sequence numbers nobody holds (plain: distinct
/// ranges; sealed or encrypted: any new bytes), takes the whole budget.
/// Every genuine NAK that must go upstream is then `naks_forward_limited`:
/// in ENCRYPT mode, all of them. engine.rs `nak`, `origin_allows`.
#[test]
fn n5_six_sockets_of_one_host_take_the_whole_forwarding_budget() {
    let t = Instant::now();
    let mut r = far(RelayConfig::default(), t);
    for seq in 1..=8u64 {
        feed(&mut r, t, FEEDER, &live(seq, seq));
    }
    group_out(&mut r);
    forwarded_requesters(&mut r, t, FEEDER);
    let mut genuine = 0;
    let mut forwarded = 0;
    let mut k = 0u64;
    for step in 0..400u64 {
        // 5 ms steps, 2 s.
        let now = t + ms(5 * step);
        for port in 0..6u16 {
            k += 1;
            let far_away = 1_000_000 + k;
            r.handle_nak(
                now,
                attacker_port(7000 + port),
                &nak(0xbad, &[(far_away, far_away)]),
            );
        }
        if step % 20 == 10 {
            // A real subscriber's NAK for a datagram the far relay does
            // not hold (lost on the near side): it must go upstream.
            genuine += 1;
            let s = 500 + step;
            r.handle_nak(now, subscriber(1), &nak(1, &[(s, s)]));
        }
        forwarded += forwarded_requesters(&mut r, now, FEEDER)
            .iter()
            .filter(|&&q| q == 1)
            .count();
        group_out(&mut r);
    }
    assert_eq!(
        forwarded,
        genuine,
        "genuine NAKs starved of the forwarding budget by 6 sockets: {:?}",
        r.stats()
    );
}

/// N6 (major): a full origin table refuses every new origin. At 1,024
/// origins the table keeps only buckets that are not full (origins that
/// NAKed within the last 5 ms to 140 ms) and refuses the newcomer outright.
/// One host with 1,024 sockets (no spoofing: origins are address and
/// port), each NAKing once: a real subscriber's first NAK is dropped
/// unread. Sustained (200 NAKs/s per socket) it keeps every subscriber
/// not already in the table (and every one that was quiet for 140 ms)
/// from being answered or forwarded. engine.rs `origin_allows`.
#[test]
fn n6_a_full_origin_table_refuses_every_new_subscriber() {
    let t = Instant::now();
    let mut r = far(RelayConfig::default(), t);
    for seq in 1..=8u64 {
        feed(&mut r, t, FEEDER, &live(seq, seq));
    }
    group_out(&mut r);
    for port in 0..1024u16 {
        // A NAK for something held: answered, costs the budget only.
        r.handle_nak(t, attacker_port(10_000 + port), &nak(0xbad, &[(1, 1)]));
    }
    group_out(&mut r);
    let now = t + ms(2);
    let before = r.stats().naks_origin_limited;
    r.handle_nak(now, subscriber(1), &nak(1, &[(7, 7)]));
    assert_eq!(
        r.stats().naks_origin_limited,
        before,
        "a real subscriber's NAK was dropped unread: the origin table is full"
    );
}

/// N7 (critical): with AUTH, a keyless attacker on the near group becomes
/// the near relay's main source, and then gets every NAK the relay
/// forwards. The near relay records every datagram of the session in
/// `Sources`, forged or not (it cannot verify), and records them *before*
/// the duplicate check: replaying one real datagram from its own address
/// more times than the publisher sent datagrams in the session (a quiet
/// stream sends 10 a second: 36,000 in an hour, a few seconds of replays)
/// makes the attacker the address "most datagrams came from". Every NAK
/// forwarded to the publisher (all of them with ENCRYPT) then goes to the
/// attacker; and, as main source, its forged datagrams displace the real
/// ones in the seq index (R14 again). §8.4 rule 9's argument ("with AUTH
/// only key holders make believed datagrams") does not hold at a keyless
/// relay. engine.rs `accept` (`sources.record`), sources.rs.
#[test]
fn n7_replayed_copies_make_a_keyless_attacker_the_near_relays_nak_destination() {
    let t = Instant::now();
    let mut r = near(t);
    let real: Vec<Vec<u8>> = (1..=50u64)
        .map(|s| sealed(&live(s, s), FLAG_AUTH, 0x01))
        .collect();
    for (i, d) in real.iter().enumerate() {
        r.handle_group(t + ms(i as u64), publisher(), d);
    }
    // 60 copies of a real datagram from the attacker's address (each one a
    // duplicate, dropped, and counted as a source).
    let now = t + ms(60);
    for _ in 0..60 {
        r.handle_group(now, attacker(), &real[0]);
    }
    drain_lane(&mut r, now, DIALED, STREAM);
    // A far NAK for something the near relay never heard.
    let n = sealed(&nak(1, &[(500, 500)]), FLAG_AUTH | FLAG_FROM_SUBSCRIBER, 2);
    far_nak(&mut r, now, &n);
    let sent: Vec<Destination> = udp_out(&mut r).into_iter().map(|(d, _)| d).collect();
    assert_eq!(
        sent,
        vec![Destination::Unicast(publisher())],
        "the near relay's NAKs go to the attacker"
    );
}

/// N8 (major): the control lane is bounded by count (1,024 frames), not
/// bytes, and a Nak frame carries a whole datagram (up to 64 KiB): 1,024
/// of them are 64 MiB, all counted in the links' total but never shed by
/// it. Once the control lane of the upstream link is that full (a WAN
/// slower than the NAK flood: 1,000 forwarded NAKs/s x 64 KiB), the total
/// is at `max_queued_bytes` (64 MiB) and `enqueue` sheds every datagram
/// queued for *any* link at once: unicast subscribers and downstream
/// relays get nothing. A relay cannot read an encrypted NAK, so junk with
/// the AUTH, ENCRYPT and FROM_SUBSCRIBER flags is forwarded as it is
/// (whatever the stream's mode). engine.rs `control`, `enqueue`.
#[test]
fn n8_big_forwarded_naks_make_every_link_shed_everything() {
    let t = Instant::now();
    let mut r = far(RelayConfig::default(), t);
    let sink = LinkId(3);
    r.add_link(
        sink,
        LinkKind::Sink {
            streams: vec![],
            max_datagram: 65_507,
        },
        true,
    );
    for seq in 1..=8u64 {
        feed(&mut r, t, FEEDER, &live(seq, seq));
    }
    drain_lane(&mut r, t, sink, STREAM);
    // 65,507 bytes: the largest IPv4 UDP payload.
    let mut junk = nak(0, &[(1, 1)])[..28].to_vec();
    junk[5] = FLAG_AUTH | FLAG_ENCRYPT | FLAG_FROM_SUBSCRIBER;
    junk.resize(65_507, 0);
    let mut k = 0u64;
    let mut now = t;
    for step in 0..240u64 {
        now = t + ms(5 * step);
        for port in 0..6u16 {
            k += 1;
            junk[28..36].copy_from_slice(&k.to_be_bytes());
            r.handle_nak(now, attacker_port(7000 + port), &junk);
        }
        group_out(&mut r);
    }
    // The upstream link did not take them (a slow WAN); live traffic for
    // the downstream relay now, 200 datagrams of 1 KB (its lane's bound is
    // 4 MiB).
    let payload = vec![7u8; 1000];
    for i in 0..200u64 {
        let d = datagram(
            STREAM,
            REAL,
            100 + i,
            &[Message::Delta(delta(100 + i, &payload))],
        );
        feed(&mut r, now, FEEDER, &d);
    }
    let got = drain_lane(&mut r, now, sink, STREAM).len();
    assert_eq!(
        got,
        200,
        "NAK frames on the upstream control lane took the queue budget of every link: {:?}",
        r.stats()
    );
}

/// N9 (major): lanes are never closed. The engine keeps an `Outbox` per
/// (link, stream) for every stream id ever queued on a link, and the driver
/// a writer (a QUIC unidirectional stream and a task) per lane in
/// `LinkState::writers`, never finished. With the default `streams` (any,
/// up to 16; a stream silent for 2 s gives its room), datagrams with 16
/// new `stream_id`s every 2 s (any mode, no key) grow both without bound;
/// past `MAX_LANES` (64) concurrent streams, quinn's `open_uni().await`
/// waits forever in the lane's task, no error, no Down: every stream new
/// to that link after that is black-holed on it, the link staying up.
/// engine.rs `enqueue` (`lanes.entry`), driver.rs `writer`.
#[test]
fn n9_a_lane_per_stream_id_ever_seen_is_kept_for_the_life_of_the_link() {
    let t = Instant::now();
    let mut r = near(t);
    for round in 0..10u64 {
        let now = t + ms(2100 * round);
        for s in 0..16u32 {
            let id = StreamId(1000 + round as u32 * 16 + s);
            let d = datagram(id, SessionId(1), 0, &[Message::Delta(delta(1, b"x"))]);
            r.handle_group(now, attacker(), &d);
        }
        loop {
            let lanes: Vec<Lane> = r.pending_lanes(now, DIALED).collect();
            if lanes.is_empty() {
                break;
            }
            for lane in lanes {
                while r.poll_lane(now, DIALED, lane, &mut Vec::new()) {}
            }
        }
    }
    let lanes = format!("{r:?}").matches("Outbox {").count();
    assert!(
        lanes <= 16,
        "{lanes} lanes kept on one link for 16 streams carried at a time"
    );
}

/// N10 (major): the relay's fixed 2 s liveness ignores the stream's
/// heartbeat interval (1 ms to 1 h in the library, up to 60 s in the CLI).
/// A quiet stream heartbeating every 3 s is "silent" for a second between
/// heartbeats: 8 forged datagrams (two sessions, no key) then evict the
/// real session with its history; its next heartbeat only makes it a
/// candidate, and one datagram every 3 s never makes 4 within
/// `session_settle`: it is never established again (NAKs dropped, N2).
/// With `--heartbeat-ms 1000` and no deltas a session is not even
/// established in the first place. engine.rs `place`, `admit_stream`.
#[test]
fn n10_a_stream_heartbeating_every_3s_is_evicted_between_heartbeats() {
    let t = Instant::now();
    let mut r = near(t);
    for seq in 1..=10u64 {
        r.handle_group(t, publisher(), &live(seq, seq));
    }
    drain_lane(&mut r, t, DIALED, STREAM);
    let now = t + ms(2500);
    for s in [SessionId(0xbad1), SessionId(0xbad2)] {
        for i in 0..ESTABLISH {
            r.handle_group(now, attacker(), &forged(s, i));
        }
    }
    // The publisher's next heartbeat, on time.
    let now = t + ms(3000);
    r.handle_group(now, publisher(), &heartbeat(REAL, 11, 10));
    drain_lane(&mut r, now, DIALED, STREAM);
    let n = nak(1, &[(5, 5)]);
    let went = nak_went_somewhere(&mut r, now, |r| far_nak(r, now, &n));
    assert!(
        went,
        "a live session heartbeating every 3 s was evicted: {:?}",
        r.stats()
    );
}

/// N11 (major): R14's fix (main source displaces, contested seqs go
/// upstream) was not applied to fragments. `by_frag` keeps the first 256
/// datagrams naming a `frag_id`, whatever their source, and `plan` answers
/// a FragNak from all of them without forwarding it. Fragment ids are
/// sequential, so a keyless attacker pre-claims the next ones (one forged
/// datagram can name ~70 of them): the real pieces are never indexed,
/// every first FragNak is answered with forgeries only (refused
/// `bad_tag`), and one FragNak costs up to 256 repeats. history.rs
/// `insert`, engine.rs `plan`.
#[test]
fn n11_forged_fragments_preclaim_a_frag_id() {
    let t = Instant::now();
    let mut r = near(t);
    let frag = |dseq: u64, offset: u32, data: &[u8]| {
        datagram(
            STREAM,
            REAL,
            dseq,
            &[Message::Fragment(Fragment {
                frag_id: 42,
                total_len: 3000,
                offset,
                inner_kind: 0x03,
                data,
            })],
        )
    };
    let piece = vec![1u8; 1000];
    r.handle_group(t, publisher(), &sealed(&live(1, 1), FLAG_AUTH, 0x01));
    for i in 0..300u64 {
        let f = sealed(&frag(10_000 + i, 0, &piece), FLAG_AUTH, 0x66);
        r.handle_group(t, attacker(), &f);
    }
    let real: Vec<Vec<u8>> = (0..3u32)
        .map(|p| sealed(&frag(2 + u64::from(p), p * 1000, &piece), FLAG_AUTH, 0x01))
        .collect();
    for d in &real {
        r.handle_group(t, publisher(), d);
    }
    drain_lane(&mut r, t, DIALED, STREAM);
    let ranges = [(1000u32, 2000u32)];
    let fnak = datagram(
        STREAM,
        REAL,
        5,
        &[Message::FragNak(FragNak {
            requester: 1,
            frag_id: 42,
            ranges: FragRanges::from_slice(&ranges),
        })],
    );
    let fnak = sealed(&fnak, FLAG_AUTH | FLAG_FROM_SUBSCRIBER, 2);
    let now = t + ms(20);
    far_nak(&mut r, now, &fnak);
    let repaired = drain_lane(&mut r, now, DIALED, STREAM);
    let forwarded = !udp_out(&mut r).is_empty();
    assert!(
        repaired.contains(&real[1]) || forwarded,
        "a FragNak was answered with {} forged pieces only, and not forwarded",
        repaired.len()
    );
}

/// N12 (minor): `repair_holdoff` is kept per datagram, not per
/// destination. A repeat on one unicast subscriber's lane (no certificate
/// needed in AUTH mode) makes a NAK for the same datagram from the far
/// group within 10 ms count as answered: nothing is sent to the group and
/// nothing is forwarded. A link NAKing a datagram every 10 ms keeps it
/// from ever being repaired on the group. engine.rs `answer_from`.
#[test]
fn n12_a_repeat_on_one_subscribers_lane_silences_the_groups_nak() {
    let t = Instant::now();
    let mut r = far(RelayConfig::default(), t);
    let sub = LinkId(9);
    r.add_link(
        sub,
        LinkKind::Subscriber {
            streams: vec![],
            max_datagram: 65_507,
        },
        true,
    );
    for seq in 1..=8u64 {
        feed(&mut r, t, FEEDER, &live(seq, seq));
    }
    group_out(&mut r);
    drain_lane(&mut r, t, sub, STREAM);
    let mut to_group = 0;
    let mut upstream = 0;
    for round in 0..10u64 {
        let now = t + ms(10 * round);
        r.handle_frame(
            now,
            sub,
            &Frame::Nak {
                flags: 0,
                datagram: &nak(0xbad, &[(6, 6)]),
            },
        );
        drain_lane(&mut r, now, sub, STREAM);
        let later = now + ms(4);
        r.handle_nak(later, subscriber(1), &nak(1, &[(6, 6)]));
        to_group += group_out(&mut r);
        upstream += forwarded_requesters(&mut r, later, FEEDER)
            .iter()
            .filter(|&&q| q == 1)
            .count();
    }
    assert!(
        to_group + upstream > 0,
        "10 NAKs from the group for a held datagram: none answered, none forwarded"
    );
}
