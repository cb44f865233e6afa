//! Publisher and subscribers over real multicast on loopback.
//!
//! Network rules (DESIGN.md §5): the default interface (loopback) only. Each
//! test has its own group and port from a per-test id: group
//! 239.255.29.<id>, port 28100 + id.
//!
//! No sleeps for synchronisation: tests wait on the subscriber's status
//! (`wait_until`) or its events, each bounded by [`TIMEOUT`] so that a
//! failing test fails instead of hanging. The only timed pause paces the
//! live order-book traffic.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use grapevine::io::Loss;
use grapevine::order_book::{BookDeltaGen, OrderBook, PaddedBook};
use grapevine::{
    Error, Event, MapDelta, Publisher, PublisherBuilder, SessionId, SnapshotRate, Status, StreamId,
    Subscriber, SubscriberBuilder,
};

/// Bounds every wait: generous, so a loaded CI machine does not fail.
const TIMEOUT: Duration = Duration::from_secs(20);

type Map = BTreeMap<String, u64>;

fn group(id: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(239, 255, 29, id))
}

fn port(id: u8) -> u16 {
    28100 + u16::from(id)
}

fn publisher<S>(id: u8) -> PublisherBuilder<S> {
    Publisher::builder().group(group(id)).port(port(id))
}

fn subscriber<S>(id: u8) -> SubscriberBuilder<S> {
    Subscriber::builder().group(group(id)).port(port(id))
}

/// Waits until the subscriber is consistent as of `seq` in `session`.
async fn converged<S>(sub: &Subscriber<S>, session: SessionId, seq: grapevine::SeqNum) -> Status
where
    S: grapevine::State + Send + 'static,
{
    match sub
        .wait_until(
            |s| s.session == Some(session) && s.synced && s.consistent && s.seq == seq,
            TIMEOUT,
        )
        .await
    {
        Ok(status) => status,
        Err(e) => panic!(
            "not converged to {session} @ {seq}: {e}; stats {:?}",
            sub.stats()
        ),
    }
}

/// Reads events until one matches, failing after [`TIMEOUT`].
async fn event<S>(sub: &mut Subscriber<S>, what: &str, pred: impl Fn(&Event) -> bool) -> Event
where
    S: grapevine::State + Send + 'static,
{
    let found = tokio::time::timeout(TIMEOUT, async {
        while let Some(e) = sub.next_event().await {
            if pred(&e) {
                return Some(e);
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(e)) => e,
        Ok(None) => panic!("event stream ended before {what}"),
        Err(_) => panic!("no {what} within {TIMEOUT:?}; status {:?}", sub.status()),
    }
}

fn entry(i: u64) -> MapDelta<String, u64> {
    MapDelta::Upsert(format!("key-{i:04}"), i * 10)
}

#[tokio::test(flavor = "current_thread")]
async fn keyed_map_converges() {
    let id = 0;
    let sub = subscriber::<Map>(id).bind().await.unwrap();
    let initial: Map = (0..20).map(|i| (format!("init-{i}"), i)).collect();
    let publ = publisher(id).bind(initial).await.unwrap();
    assert_eq!(publ.leaf_count(), 20);
    // Synced from the snapshot cycle, which the publisher's driver sends;
    // then the deltas are applied as they come.
    converged(&sub, publ.session(), publ.last_seq()).await;

    for i in 0..200 {
        publ.publish(entry(i)).unwrap();
        if i % 3 == 0 {
            publ.publish(MapDelta::Remove(format!("key-{:04}", i / 2)))
                .unwrap();
        }
    }
    publ.publish(MapDelta::Remove("init-3".into())).unwrap();

    let status = converged(&sub, publ.session(), publ.last_seq()).await;
    assert!(status.synced && status.consistent && status.publisher_alive);
    assert_eq!(status.stale_leaves, 0);
    assert_eq!(status.leaves, publ.leaf_count());
    assert_eq!(sub.digest(), publ.digest());
    assert_eq!(sub.read(Map::clone), publ.read(Map::clone));
    let stats = sub.stats();
    assert!(stats.protocol.deltas_applied > 0, "{stats:?}");
    assert_eq!(stats.simulated_drops, 0);
    let pstats = publ.stats();
    assert!(pstats.datagrams_sent > 0 && pstats.protocol.deltas == publ.last_seq().0);
    assert_eq!(pstats.send_errors, 0);
    publ.shutdown().await;
    sub.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn late_joiner_syncs_from_snapshots_alone() {
    let id = 1;
    let publ = publisher(id).bind(Map::new()).await.unwrap();
    publ.publish_batch((0..500).map(entry)).unwrap();
    publ.publish_batch(
        (0..500)
            .step_by(7)
            .map(|i| MapDelta::Remove(format!("key-{i:04}"))),
    )
    .unwrap();
    let last = publ.last_seq();

    // Everything was published (and sent) before this socket existed.
    let mut sub = subscriber::<Map>(id).bind().await.unwrap();
    let status = converged(&sub, publ.session(), last).await;
    assert_eq!(status.leaves, publ.leaf_count());
    assert_eq!(sub.digest(), publ.digest());
    let stats = sub.stats();
    assert_eq!(stats.protocol.deltas_applied, 0, "{stats:?}");
    assert!(stats.protocol.snapshots_applied >= publ.leaf_count() as u64);
    event(&mut sub, "Synced", |e| matches!(e, Event::Synced { .. })).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_book_with_loss_converges() {
    let id = 2;
    let book = OrderBook::generate(1_000, 2024);
    let clean = subscriber::<OrderBook>(id).bind().await.unwrap();
    let lossy = subscriber::<OrderBook>(id)
        .simulate_loss(Loss::new(0.05, 99).unwrap())
        .bind()
        .await
        .unwrap();
    let publ = publisher(id).bind(book.clone()).await.unwrap();
    assert_eq!(publ.leaf_count(), 1_000);
    // Joining is done once synced: until then a subscriber may drop deltas
    // that arrive before it believes a cycle, and NAK them (PROTOCOL.md
    // §8.2, starting point). From then on, nothing lost means nothing asked.
    clean
        .wait_until(|s| s.synced, Duration::from_secs(30))
        .await
        .unwrap();
    let naks_joining = clean.stats().protocol.naks_sent;

    // Live traffic: 3,000 deltas in batches of 1 to 5, paced over ~0.6 s.
    let mut deltas = BookDeltaGen::new(&book, 7);
    let mut pace = tokio::time::interval(Duration::from_millis(1));
    for round in 0..1_000 {
        pace.tick().await;
        let n = 1 + round % 5;
        if n == 1 {
            publ.publish(deltas.next_delta()).unwrap();
        } else {
            publ.publish_batch(deltas.by_ref().take(n)).unwrap();
        }
    }
    assert_eq!(publ.read(OrderBook::clone), *deltas.book());
    let last = publ.last_seq();
    assert_eq!(last.0, 3_000);

    for (name, sub) in [("clean", &clean), ("lossy", &lossy)] {
        let status = converged(sub, publ.session(), last).await;
        assert_eq!(status.leaves, publ.leaf_count(), "{name}");
        assert_eq!(sub.digest(), publ.digest(), "{name}");
        assert_eq!(
            sub.read(OrderBook::top_of_book),
            publ.read(OrderBook::top_of_book)
        );
    }
    let stats = lossy.stats();
    assert!(stats.simulated_drops > 0, "{stats:?}");
    // Losses were repaired by NAK: the lossy subscriber asked, the
    // publisher answered to the group.
    assert!(stats.protocol.naks_sent > 0, "{stats:?}");
    assert!(stats.protocol.repaired_by_nak > 0, "{stats:?}");
    assert!(publ.stats().protocol.retransmits > 0, "{:?}", publ.stats());
    assert!(
        publ.stats().datagrams_received > 0,
        "NAKs reached the publisher"
    );
    assert_eq!(clean.stats().simulated_drops, 0);
    assert_eq!(
        clean.stats().protocol.naks_sent,
        naks_joining,
        "nothing lost, nothing asked: {:?}",
        clean.stats()
    );
}

/// Leaves far larger than a datagram (64 KB, about 45 fragments each) sync
/// under loss: missing fragments are asked for by FragNak and resent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_sync_under_loss_by_fragment_repair() {
    let id = 12;
    let sub = subscriber::<PaddedBook>(id)
        .simulate_loss(Loss::new(0.05, 7).unwrap())
        .bind()
        .await
        .unwrap();
    let book = PaddedBook::generate(40, 3, 65_536);
    let publ = publisher(id)
        .snapshot_rate(SnapshotRate::BytesPerSec(4_000_000))
        .bind(book)
        .await
        .unwrap();
    let status = converged(&sub, publ.session(), publ.last_seq()).await;
    assert_eq!(status.leaves, 40);
    assert_eq!(sub.digest(), publ.digest());
    let p = publ.stats().protocol;
    assert!(p.frag_naks_received > 0 && p.fragments_resent > 0, "{p:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn publisher_restart_resyncs() {
    let id = 3;
    let mut sub = subscriber::<Map>(id).bind().await.unwrap();
    let first = publisher(id)
        .session_id(1)
        .bind(Map::from([("old".to_string(), 1), ("both".to_string(), 2)]))
        .await
        .unwrap();
    first.publish(entry(1)).unwrap();
    converged(&sub, SessionId(1), first.last_seq()).await;
    drop(first);

    let second = publisher(id)
        .session_id(2)
        .bind(Map::from([("both".to_string(), 3), ("new".to_string(), 4)]))
        .await
        .unwrap();
    second.publish(entry(2)).unwrap();
    let restarted = event(&mut sub, "PublisherRestarted", |e| {
        matches!(e, Event::PublisherRestarted { .. })
    })
    .await;
    assert_eq!(
        restarted,
        Event::PublisherRestarted {
            old: SessionId(1),
            new: SessionId(2)
        }
    );
    converged(&sub, SessionId(2), second.last_seq()).await;
    assert_eq!(sub.digest(), second.digest());
    assert_eq!(sub.read(|m| m.get("old").copied()), None);
    assert_eq!(sub.read(|m| m.get("both").copied()), Some(3));
    assert_eq!(sub.stats().protocol.restarts, 1);
}

#[tokio::test(flavor = "current_thread")]
async fn publisher_gone_is_reported() {
    let id = 4;
    let mut sub = subscriber::<Map>(id)
        .missed_heartbeats(3)
        .bind()
        .await
        .unwrap();
    let publ = publisher(id)
        .heartbeat_interval(Duration::from_millis(20))
        .bind(Map::new())
        .await
        .unwrap();
    publ.publish(entry(5)).unwrap();
    let session = publ.session();
    converged(&sub, session, publ.last_seq()).await;
    let digest = publ.digest();
    publ.shutdown().await;

    event(&mut sub, "PublisherGone", |e| *e == Event::PublisherGone).await;
    let status = sub.status();
    assert!(!status.publisher_alive);
    // The last state stays readable.
    assert_eq!(sub.digest(), digest);
    assert_eq!(sub.read(|m| m.get("key-0005").copied()), Some(50));
}

#[tokio::test(flavor = "current_thread")]
async fn streams_on_one_group_are_separate() {
    let id = 5;
    let sub = subscriber::<Map>(id)
        .stream(StreamId(2))
        .bind()
        .await
        .unwrap();
    let one = publisher(id)
        .stream(StreamId(1))
        .bind(Map::new())
        .await
        .unwrap();
    let two = publisher(id)
        .stream(StreamId(2))
        .bind(Map::new())
        .await
        .unwrap();
    one.publish(MapDelta::Upsert("one".into(), 1)).unwrap();
    two.publish(MapDelta::Upsert("two".into(), 2)).unwrap();
    converged(&sub, two.session(), two.last_seq()).await;
    assert_eq!(sub.read(Map::clone), Map::from([("two".to_string(), 2)]));
    assert!(sub.stats().protocol.foreign_stream > 0);
    // Sessions are random per bind.
    assert_ne!(one.session(), two.session());
}

#[tokio::test(flavor = "current_thread")]
async fn configuration_errors() {
    let id = 6;
    let unicast: IpAddr = "127.0.0.1".parse().unwrap();

    let err = Publisher::builder()
        .group(unicast)
        .port(port(id))
        .bind(Map::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Socket(_)), "{err:?}");
    assert!(err.to_string().contains("not a multicast group"), "{err}");
    let err = Subscriber::<Map>::builder()
        .group(unicast)
        .port(port(id))
        .bind()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Socket(_)), "{err:?}");

    for p in [-0.1, 1.5, f64::NAN, f64::INFINITY] {
        let err = Loss::new(p, 1).unwrap_err();
        assert!(err.to_string().contains("0.0 ..= 1.0"), "{err}");
    }
    // The bounds themselves are fine.
    for p in [0.0, 1.0] {
        subscriber::<Map>(id)
            .simulate_loss(Loss::new(p, 1).unwrap())
            .bind()
            .await
            .unwrap();
    }

    let err = publisher(id)
        .heartbeat_interval(Duration::ZERO)
        .bind(Map::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert!(err.to_string().contains("heartbeat_interval"), "{err}");
    let err = subscriber::<Map>(id)
        .missed_heartbeats(0)
        .bind()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn wait_until_times_out_with_status() {
    let id = 7;
    // Nobody publishes on this group.
    let sub = subscriber::<Map>(id).bind().await.unwrap();
    let err = sub
        .wait_until(|s| s.synced, Duration::from_millis(50))
        .await
        .unwrap_err();
    match err {
        Error::Timeout { waited, status } => {
            assert_eq!(waited, Duration::from_millis(50));
            assert_eq!(status, Status::default());
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    // A condition that already holds returns at once.
    let status = sub
        .wait_until(|s| !s.synced, Duration::from_millis(1))
        .await
        .unwrap();
    assert!(!status.synced);
}

/// Forged datagrams of the live session, each sent once into a running
/// stream: sequence numbers 2^60 ahead (a Delta, a Heartbeat, a CycleEnd, a
/// LeafSnapshot) and a CycleBegin 2^31 cycles ahead. None is believed
/// (PROTOCOL.md §8.4): the subscriber stays consistent and equal to the
/// publisher, and counts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_huge_sequence_numbers_do_not_wedge_a_live_subscriber() {
    use grapevine::core::wire::{
        CycleBegin, CycleEnd, DatagramHeader, DatagramWriter, Delta, Heartbeat, LeafSnapshot,
        Message,
    };
    use grapevine::core::CycleId;
    use grapevine::socket::{bind_sender, MulticastConfig};
    use grapevine::SeqNum;

    let id = 13;
    let sub = subscriber::<Map>(id).bind().await.unwrap();
    let publ = publisher(id).bind(Map::new()).await.unwrap();
    for i in 0..100 {
        publ.publish(entry(i)).unwrap();
    }
    converged(&sub, publ.session(), publ.last_seq()).await;

    let mut config = MulticastConfig::default();
    config.group(group(id)).port(port(id));
    let attacker = bind_sender(&config).unwrap().into_std();
    let huge = SeqNum(1 << 60);
    let key = grapevine::core::state::encode(&"key-0001".to_string());
    let forged = [
        Message::Delta(Delta {
            seq: huge,
            prev_leaf_seq: SeqNum::NONE,
            creates: true,
            removes: false,
            key: &key,
            payload: b"",
        }),
        Message::Heartbeat(Heartbeat {
            last_seq: huge,
            sent_at_micros: 0,
            interval_ms: 100,
        }),
        Message::CycleEnd(CycleEnd {
            cycle: CycleId(0),
            end_seq: huge,
            leaf_count: 1,
        }),
        Message::LeafSnapshot(LeafSnapshot {
            cycle: CycleId(0),
            position: 0,
            leaf_seq: huge,
            key: &key,
            value: Some(b"\x07"),
        }),
        Message::CycleBegin(CycleBegin {
            cycle: CycleId(1 << 31),
            start_seq: SeqNum(1),
            leaf_count: 1,
        }),
    ];
    // One forged datagram at a time, each followed by real traffic.
    for (i, msg) in forged.iter().enumerate() {
        let header = DatagramHeader {
            stream: StreamId(1),
            session: publ.session(),
            datagram_seq: 1_000_000 + i as u64,
        };
        let mut buf = [0u8; 1452];
        let mut w = DatagramWriter::new(&mut buf, &header).unwrap();
        w.push(msg).unwrap();
        let len = w.finish();
        attacker.send_to(&buf[..len], config.group_addr()).unwrap();
        for j in 0..20 {
            publ.publish(entry(100 + 20 * i as u64 + j)).unwrap();
        }
        converged(&sub, publ.session(), publ.last_seq()).await;
        assert!(
            sub.status().known_seq < SeqNum(1 << 40),
            "{:?}",
            sub.status()
        );
    }
    assert_eq!(sub.digest(), publ.digest());
    let stats = sub.stats();
    assert!(stats.protocol.unbelieved >= 4, "{stats:?}");
    assert_eq!(sub.status().known_seq, publ.last_seq());
}

/// An encrypted stream with loss converges over real sockets; NAKs are
/// sealed too. A subscriber without the key, and one with another key,
/// take nothing from it and count every datagram refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_stream_converges_and_refuses_strangers() {
    use grapevine::core::auth::{Keyring, Security};
    use grapevine::keys;

    let id = 14;
    let ring = Keyring::new(vec![keys::generate().unwrap()]).unwrap();
    let mut security = Security::new(ring);
    security.encrypt(true).require_encrypt(true);
    let stranger = Security::new(Keyring::new(vec![keys::generate().unwrap()]).unwrap());

    let lossy = subscriber::<Map>(id)
        .security(security.clone())
        .simulate_loss(Loss::new(0.05, 7).unwrap())
        .bind()
        .await
        .unwrap();
    let keyless = subscriber::<Map>(id).bind().await.unwrap();
    let wrong = subscriber::<Map>(id)
        .security(stranger)
        .bind()
        .await
        .unwrap();
    let publ = publisher(id)
        .security(security)
        .bind(Map::new())
        .await
        .unwrap();
    for i in 0..300 {
        publ.publish(entry(i)).unwrap();
    }
    lossy.wait_until(|s| s.synced, TIMEOUT).await.unwrap();
    // Live traffic once synced, so that losses are repaired by NAK.
    let mut pace = tokio::time::interval(Duration::from_millis(1));
    for i in 0..2_000 {
        if i % 10 == 0 {
            pace.tick().await;
        }
        publ.publish(entry(i % 300)).unwrap();
    }
    let status = converged(&lossy, publ.session(), publ.last_seq()).await;
    assert_eq!(status.leaves, 300);
    assert_eq!(lossy.digest(), publ.digest());
    let s = lossy.stats();
    assert!(s.simulated_drops > 0 && s.protocol.naks_sent > 0, "{s:?}");
    assert!(publ.stats().protocol.retransmits > 0, "{:?}", publ.stats());
    assert_eq!(publ.stats().protocol.auth_refused, 0, "{:?}", publ.stats());
    assert!(s.protocol.refused.is_empty(), "{:?}", s.protocol.refused);

    // The others heard the same datagrams and used none.
    let heard = |sub: &Subscriber<Map>| sub.stats().protocol.datagrams;
    for (name, sub, code) in [
        ("keyless", &keyless, "no_key"),
        ("wrong key", &wrong, "unknown_key"),
    ] {
        let st = sub.stats().protocol;
        let counted = st
            .malformed
            .get(code)
            .or_else(|| st.refused.get(code))
            .copied()
            .unwrap_or(0);
        assert!(heard(sub) > 100, "{name}: {st:?}");
        assert_eq!(
            counted, st.datagrams,
            "{name}: every datagram refused as {code}: {st:?}"
        );
        assert_eq!(sub.status().session, None, "{name}");
        assert_eq!(sub.status().leaves, 0, "{name}");
    }
}

/// A subscriber of another state type than the publisher's reports the
/// schema mismatch from `wait_until`, naming both schemas, instead of
/// decoding the stream as its own type (PROTOCOL.md §8.2, "Schema").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_of_the_wrong_type_reports_a_schema_mismatch() {
    let id = 30;
    let mut sub = subscriber::<OrderBook>(id).bind().await.unwrap();
    let publisher = publisher(id)
        .heartbeat_interval(Duration::from_millis(20))
        .bind(Map::new())
        .await
        .unwrap();
    for i in 0..10u64 {
        publisher
            .publish(MapDelta::Upsert(format!("k{i}"), i))
            .unwrap();
    }
    let err = sub
        .wait_until(|s| s.synced && s.consistent, TIMEOUT)
        .await
        .unwrap_err();
    let Error::SchemaMismatch { expected, found } = &err else {
        panic!("expected a schema mismatch, got {err}");
    };
    assert_eq!(expected.name(), OrderBook::SCHEMA);
    assert_eq!(found.name(), "map<str,u64>");
    let text = err.to_string();
    assert!(
        text.contains("grapevine.demo.order_book/1 (66bd64a5d7082228)"),
        "{text}"
    );
    assert!(text.contains("map<str,u64> ("), "{text}");
    let status = sub.status();
    assert!(
        status.schema_mismatch.is_some() && !status.synced,
        "{status:?}"
    );
    assert_eq!(sub.read(grapevine::State::leaf_count), 0);
    // The event was reported too.
    loop {
        let event = tokio::time::timeout(TIMEOUT, sub.next_event())
            .await
            .expect("an event")
            .expect("the subscriber runs");
        if let Event::SchemaMismatch { found, .. } = event {
            assert_eq!(found.name(), "map<str,u64>");
            break;
        }
    }

    // The same subscriber type told the publisher's schema name follows it
    // (the check is by name; decoding is the application's business).
    let same = subscriber::<Map>(id).bind().await.unwrap();
    let status = same
        .wait_until(|s| s.synced && s.consistent && s.seq.0 == 10, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(status.schema_mismatch, None);
    assert_eq!(
        same.stream_schema().map(|s| s.name().to_owned()).as_deref(),
        Some("map<str,u64>")
    );
}
