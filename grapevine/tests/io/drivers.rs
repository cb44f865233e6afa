//! The drivers: batched sends, the busy-poll runtime, and what happens when
//! the publisher outruns its socket (shedding, bounded; or back-pressure).
//!
//! Same rules as `replication.rs`: loopback only, group 239.255.29.<id>,
//! port 28100 + id, every wait bounded.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use grapevine::core::publisher::PublisherConfig;
use grapevine::{Driver, MapDelta, MulticastConfig, Publisher, Subscriber};

const TIMEOUT: Duration = Duration::from_secs(20);

type Map = BTreeMap<u32, u64>;

fn net(id: u8) -> MulticastConfig {
    let mut m = MulticastConfig::default();
    m.group(IpAddr::V4(Ipv4Addr::new(239, 255, 29, id)))
        .port(28100 + u16::from(id));
    m
}

async fn converge(sub: &Subscriber<Map>, publ: &Publisher<Map>) {
    let (session, seq) = (publ.session(), publ.last_seq());
    if let Err(e) = sub
        .wait_until(
            |s| s.session == Some(session) && s.consistent && s.seq == seq,
            TIMEOUT,
        )
        .await
    {
        panic!("not converged: {e}; {:?}", sub.stats());
    }
    assert_eq!(sub.digest(), publ.digest());
}

/// Both ends on busy-poll threads: a batch of deltas goes out several
/// datagrams per send call (GSO on loopback), arrives in batched receives,
/// and the replica converges; dropping the handles stops the threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_poll_drivers_replicate_with_batched_io() {
    let id = 20;
    let sub = Subscriber::<Map>::builder()
        .multicast(net(id))
        .driver(Driver::BusyPoll)
        .bind()
        .await
        .unwrap();
    let publ = Publisher::builder()
        .multicast(net(id))
        .driver(Driver::BusyPoll)
        .bind(Map::new())
        .await
        .unwrap();
    // Synced first (from the empty state's cycle): then every delta is
    // applied as it comes, whatever the timing.
    converge(&sub, &publ).await;
    for round in 0..5u64 {
        publ.publish_batch((0..2_000u32).map(|k| MapDelta::Upsert(k, round)))
            .unwrap();
    }
    converge(&sub, &publ).await;
    let p = publ.stats();
    // ~330 datagrams of deltas, sent several per call; the paced snapshot
    // datagrams go one per call.
    assert!(
        p.send_calls > 0 && p.datagrams_sent >= p.send_calls + 100,
        "several datagrams per call: {p:?}"
    );
    let s = sub.stats();
    assert!(s.protocol.deltas_applied > 0, "{s:?}");
    assert!(s.recv_batches > 0 && s.recv_batches <= s.datagrams_received);
    publ.shutdown().await;
    sub.shutdown().await;
}

/// A small send queue and socket buffer, with `ready().await` before each
/// batch: nothing is shed (shedding itself is tested against a socket that
/// is always full, in the driver's unit tests), and everything arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awaiting_ready_slows_the_publisher_instead_of_shedding() {
    let id = 22;
    let sub = Subscriber::<Map>::builder()
        .multicast(net(id))
        .bind()
        .await
        .unwrap();
    let mut small = net(id);
    small.send_buffer(4_096);
    let mut protocol = PublisherConfig::default();
    protocol.max_queued_bytes(16 * 1452);
    let publ = Publisher::builder()
        .multicast(small)
        .protocol(protocol)
        .bind(Map::new())
        .await
        .unwrap();
    converge(&sub, &publ).await;
    for round in 0..50u64 {
        publ.ready().await.unwrap();
        publ.publish_batch((0..200u32).map(|k| MapDelta::Upsert(k, round)))
            .unwrap();
    }
    assert_eq!(
        publ.stats().protocol.datagrams_shed,
        0,
        "{:?}",
        publ.stats()
    );
    converge(&sub, &publ).await;
}

/// A subscriber whose driver stopped (here: its runtime ended) says so:
/// `wait_until` returns `Closed` and the event stream ends, instead of
/// waiting out the timeout with a status frozen as it was (found by
/// review).
#[test]
fn a_subscriber_whose_driver_stopped_reports_closed() {
    let id = 23;
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut sub = first
        .block_on(Subscriber::<Map>::builder().multicast(net(id)).bind())
        .unwrap();
    drop(first); // its tasks, the driver among them, are dropped
    let second = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    second.block_on(async {
        let r = sub.wait_until(|_| false, TIMEOUT).await;
        assert!(matches!(r, Err(grapevine::Error::Closed)), "{r:?}");
        assert!(sub.next_event().await.is_none());
    });
}

/// A new publisher's first datagram, sent before `bind` returns, is a
/// heartbeat: a listener that was there first hears it before any delta,
/// even one published at once (the first datagram of a session is only
/// heard, not used; a heartbeat is the one to spare).
#[tokio::test(flavor = "current_thread")]
async fn a_publisher_opens_with_a_heartbeat() {
    use grapevine::core::wire::{Datagram, Message};
    let id = 21;
    let listener = grapevine::socket::bind_receiver(&net(id)).unwrap();
    let listener = listener.into_std();
    listener.set_read_timeout(Some(TIMEOUT)).unwrap();
    let initial: Map = (0..100).map(|k| (k, 0)).collect();
    let publ = Publisher::builder()
        .multicast(net(id))
        .bind(initial)
        .await
        .unwrap();
    publ.publish(MapDelta::Upsert(1, 1)).unwrap();
    let mut buf = vec![0u8; 65_536];
    let n = listener.recv(&mut buf).unwrap();
    let kinds: Vec<_> = Datagram::decode(&buf[..n])
        .unwrap()
        .messages()
        .map(|m| match m {
            Message::Heartbeat(_) => "heartbeat",
            Message::StreamInfo(i) => i.name,
            _ => "other",
        })
        .map(str::to_owned)
        .collect();
    assert_eq!(
        kinds,
        ["heartbeat", "map<u32,u64>"],
        "a heartbeat and its StreamInfo alone first"
    );
    drop(publ);
}
