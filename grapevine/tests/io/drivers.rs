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

/// A publisher that offers far more than its socket takes (a tiny send
/// buffer and send queue) sheds the oldest datagrams, counted, and never
/// queues more than its bound; the subscriber still converges, repairing
/// what was shed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_publisher_sheds_within_its_bound_and_subscribers_repair() {
    let id = 21;
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
    let mut peak = 0;
    for round in 0..50u64 {
        publ.publish_batch((0..2_000u32).map(|k| MapDelta::Upsert(k, round)))
            .unwrap();
        peak = peak.max(publ.queued_bytes());
    }
    assert!(peak <= 16 * 1452, "{peak}");
    let shed = publ.stats().protocol.datagrams_shed;
    assert!(shed > 0, "{:?}", publ.stats());
    converge(&sub, &publ).await;
}

/// The same overload with `ready().await` before each batch: nothing is
/// shed, and everything arrives as deltas.
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
        publ.ready().await;
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
