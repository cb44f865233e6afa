//! Schema fingerprints end to end (PROTOCOL.md §4.8, §8.2 "Schema"): the
//! publisher announces its schema after every Heartbeat, and a subscriber
//! expecting another one reports it once two datagrams agree.

use super::rig::{ms, rig_pub_config, sub_cfg, Rig};
use super::sim::{craft, Op};
use crate::publisher::PublisherConfig;
use crate::schema::{Schema, SchemaFingerprint};
use crate::subscriber::{Event, SubscriberConfig};
use crate::wire::{Datagram, Heartbeat, Message, StreamInfo, HEADER_LEN};
use crate::{SeqNum, SessionId, StreamId};

fn publishing(name: Option<&str>) -> PublisherConfig {
    let mut c = rig_pub_config();
    if let Some(n) = name {
        c.schema(Schema::named(n));
    }
    c
}

fn expecting(name: &str) -> SubscriberConfig {
    let mut c = sub_cfg();
    c.expect_schema(Schema::named(name));
    c
}

fn rig(publisher: Option<&str>, subscriber: SubscriberConfig) -> Rig {
    let mut r = Rig::with_publisher(publishing(publisher), &[], subscriber);
    for k in 1..=10u16 {
        r.publisher.publish(&Op::Set(k, i64::from(k)));
    }
    r
}

fn mismatches(r: &Rig) -> Vec<&Event> {
    r.events
        .iter()
        .filter(|e| matches!(e, Event::SchemaMismatch { .. }))
        .collect()
}

/// A datagram of the rig's session carrying one StreamInfo for `name`.
fn stream_info(datagram_seq: u64, name: &str) -> Vec<u8> {
    craft(
        StreamId(3),
        SessionId(1),
        datagram_seq,
        &[Message::StreamInfo(StreamInfo {
            fingerprint: SchemaFingerprint::of(name),
            name,
        })],
    )
}

/// The configuration hands back the schema it expects (the `grapevine`
/// crate reads it to decide whether to derive one from the state), and
/// none by default.
#[test]
fn the_expected_schema_is_what_was_set() {
    assert_eq!(SubscriberConfig::default().expected_schema(), None);
    assert_eq!(
        expecting("book/v1").expected_schema(),
        Some(&Schema::named("book/v1"))
    );
}

#[test]
fn every_heartbeat_is_followed_by_the_stream_info_in_its_datagram() {
    let mut r = rig(Some("acme.prices/1"), expecting("acme.prices/1"));
    let sent = r.run(ms(300));
    let mut heartbeats = 0;
    for d in &sent {
        let msgs: Vec<Message<'_>> = Datagram::decode(d).unwrap().messages().collect();
        for (i, m) in msgs.iter().enumerate() {
            if let Message::Heartbeat(_) = m {
                heartbeats += 1;
                assert_eq!(
                    msgs.get(i + 1),
                    Some(&Message::StreamInfo(StreamInfo {
                        fingerprint: SchemaFingerprint::of("acme.prices/1"),
                        name: "acme.prices/1",
                    }))
                );
            }
        }
    }
    assert!(heartbeats >= 20, "{heartbeats}");
    let st = r.sub.status();
    assert!(st.synced && st.consistent, "{st:?}");
    assert_eq!(st.schema_mismatch, None);
    assert_eq!(r.sub.stream_schema(), Some(&Schema::named("acme.prices/1")));
    assert!(mismatches(&r).is_empty());
    r.assert_equal();
}

#[test]
fn a_long_name_is_cut_to_fit_the_smallest_datagram_but_fingerprinted_whole() {
    let long = "x".repeat(300);
    let mut pc = publishing(Some(&long));
    pc.max_datagram(HEADER_LEN + 64);
    let mut sc = expecting(&long);
    sc.max_datagram(HEADER_LEN + 64);
    let mut r = rig(None, sc);
    r.publisher = super::sim::SimPublisher::new(pc, SessionId(1), r.now, &[], Default::default());
    r.publisher.publish(&Op::Set(1, 1));
    let sent = r.run(ms(200));
    let mut infos = 0;
    for d in &sent {
        assert!(d.len() <= HEADER_LEN + 64);
        let msgs: Vec<Message<'_>> = Datagram::decode(d).unwrap().messages().collect();
        for (i, m) in msgs.iter().enumerate() {
            if let Message::StreamInfo(info) = m {
                infos += 1;
                assert!(matches!(
                    msgs.get(i.wrapping_sub(1)),
                    Some(Message::Heartbeat(_))
                ));
                assert_eq!(info.fingerprint, SchemaFingerprint::of(&long));
                // 64 bytes of messages: Heartbeat 24, StreamInfo 4 + 9.
                assert_eq!(info.name, &long[..64 - 24 - 13]);
            }
        }
    }
    assert!(infos >= 10, "{infos}");
    assert!(mismatches(&r).is_empty());
    assert!(r.sub.status().consistent);
}

#[test]
fn a_subscriber_of_another_schema_reports_it_once_and_keeps_nothing() {
    let mut r = rig(Some("acme.orders/1"), expecting("acme.prices/1"));
    r.run(ms(300));
    let found = mismatches(&r);
    assert_eq!(
        found,
        [&Event::SchemaMismatch {
            session: SessionId(1),
            expected: Schema::named("acme.prices/1"),
            found: Schema::named("acme.orders/1"),
        }]
    );
    let st = r.sub.status();
    assert_eq!(
        st.schema_mismatch,
        Some(SchemaFingerprint::of("acme.orders/1"))
    );
    assert!(!st.synced && !st.consistent, "{st:?}");
    assert_eq!(st.leaves, 0);
    assert!(r.replica.state().0.is_empty(), "the replica was cleared");
    let stats = r.sub.stats();
    assert_eq!(stats.schema_mismatches, 1);
    assert!(stats.schema_dropped >= 20, "{stats:?}");
}

#[test]
fn one_forged_stream_info_does_not_cut_the_stream() {
    let mut r = rig(Some("acme.prices/1"), expecting("acme.prices/1"));
    r.run(ms(300));
    assert!(r.sub.status().consistent);
    // A forged claim, far ahead: the next real StreamInfo clears it...
    r.deliver(&[stream_info(1_000_000, "acme.orders/1")]);
    r.run(ms(50));
    // ... so a second forged claim, even with a larger datagram_seq, is
    // a first claim again.
    r.deliver(&[stream_info(2_000_000, "acme.orders/1")]);
    r.publisher.publish(&Op::Set(3, 33));
    r.run(ms(100));
    assert!(mismatches(&r).is_empty(), "{:?}", r.events);
    let st = r.sub.status();
    assert!(st.consistent && st.schema_mismatch.is_none(), "{st:?}");
    assert_eq!(r.sub.stats().schema_dropped, 0);
    r.assert_equal();

    // Two forged datagrams that agree, with nothing real between them, do
    // cut it: the limit of an unauthenticated stream (§8.5).
    r.deliver(&[stream_info(3_000_000, "acme.orders/1")]);
    r.deliver(&[stream_info(3_000_001, "acme.orders/1")]);
    assert_eq!(mismatches(&r).len(), 1);
    // Two real heartbeats carrying the expected schema take it back.
    r.run(ms(300));
    let st = r.sub.status();
    assert!(st.consistent && st.schema_mismatch.is_none(), "{st:?}");
    r.assert_equal();
}

#[test]
fn a_publisher_without_stream_info_is_followed_by_a_subscriber_expecting_one() {
    let mut r = rig(None, expecting("acme.prices/1"));
    let sent = r.run(ms(300));
    assert!(super::rig::messages(&sent).all(|m| !matches!(m, Message::StreamInfo(_))));
    let st = r.sub.status();
    assert!(st.synced && st.consistent, "{st:?}");
    assert_eq!(r.sub.stream_schema(), None);
    assert!(mismatches(&r).is_empty());
    r.assert_equal();
}

#[test]
fn malformed_stream_infos_drop_their_datagram_and_are_counted() {
    let mut r = rig(Some("a"), expecting("a"));
    r.run(ms(100));
    let before = r.sub.status();
    let hb = Message::Heartbeat(Heartbeat {
        last_seq: SeqNum(1_000),
        sent_at_micros: 0,
        interval_ms: 10,
    });
    // Built as an unknown kind, then given kind 0x0a: a name that is not
    // UTF-8, and a name longer than the body.
    let bodies: [&[u8]; 2] = [
        &[0, 0, 0, 0, 0, 0, 0, 1, 2, 0xff, 0xfe],
        &[0, 0, 0, 0, 0, 0, 0, 1, 5, b'a'],
    ];
    for (i, body) in bodies.iter().enumerate() {
        let mut d = craft(
            StreamId(3),
            SessionId(1),
            500 + i as u64,
            &[hb, Message::Unknown { kind: 0x0b, body }],
        );
        let at = HEADER_LEN + hb.encoded_len();
        assert_eq!(d[at], 0x0b);
        d[at] = 0x0a;
        r.deliver(&[d]);
    }
    let m = &r.sub.stats().malformed;
    assert_eq!(m.get("bad_schema_name"), Some(&1), "{m:?}");
    assert_eq!(m.get("body_too_short"), Some(&1), "{m:?}");
    // The heartbeats' far claims were not used either.
    assert_eq!(r.sub.status().known_seq, before.known_seq);
}

#[test]
fn stream_info_round_trips_and_ignores_extension_bytes() {
    let info = Message::StreamInfo(StreamInfo {
        fingerprint: SchemaFingerprint(0x0123_4567_89ab_cdef),
        name: "prix/1 é",
    });
    let d = craft(StreamId(1), SessionId(2), 3, &[info]);
    assert_eq!(d.len(), HEADER_LEN + 4 + 9 + "prix/1 é".len());
    let msgs: Vec<Message<'_>> = Datagram::decode(&d).unwrap().messages().collect();
    assert_eq!(msgs, [info]);
    assert_eq!(
        info.to_string(),
        "StreamInfo fingerprint=0123456789abcdef name=707269782f3120c3a9"
    );
    // Bytes after the name, inside the body, are a later version's: ignored.
    let mut body = Vec::new();
    info.encode_body(&mut body).unwrap();
    body.extend_from_slice(b"later");
    let ext = craft(
        StreamId(1),
        SessionId(2),
        3,
        &[Message::Unknown {
            kind: 0x0b,
            body: &body,
        }],
    );
    let mut ext = ext;
    ext[HEADER_LEN] = 0x0a;
    let msgs: Vec<Message<'_>> = Datagram::decode(&ext).unwrap().messages().collect();
    assert_eq!(msgs, [info]);
    // An empty name is allowed; one over 255 bytes is refused.
    let empty = Message::StreamInfo(StreamInfo {
        fingerprint: SchemaFingerprint(1),
        name: "",
    });
    assert_eq!(empty.validate(), Ok(()));
    let long = "n".repeat(256);
    let too_long = Message::StreamInfo(StreamInfo {
        fingerprint: SchemaFingerprint(1),
        name: &long,
    });
    assert_eq!(
        too_long.validate(),
        Err(crate::wire::EncodeError::InvalidMessage {
            reason: crate::wire::Malformed::SchemaNameTooLong { len: 256 }
        })
    );
    // Kind 0x0a cannot be written as an unknown message any more.
    assert!(Message::Unknown {
        kind: 0x0a,
        body: &[]
    }
    .validate()
    .is_err());
}
