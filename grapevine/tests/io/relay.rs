//! Relays over real sockets on loopback: a publisher on one group, a relay
//! pair joined by QUIC (or TLS over TCP) on 127.0.0.1, and a subscriber on
//! another group. Groups 239.255.29.<id>, ports 28100 + id (ids 40..49).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use grapevine::io::Loss;
use grapevine::relay::tls::{Identity, Trust};
use grapevine::relay::{Relay, Transport};
use grapevine::socket::MulticastConfig;
use grapevine::{MapDelta, Publisher, Subscriber};

const TIMEOUT: Duration = Duration::from_secs(30);

type Map = BTreeMap<String, u64>;

fn group(id: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(239, 255, 29, id))
}

fn port(id: u8) -> u16 {
    28100 + u16::from(id)
}

fn mcast(id: u8) -> MulticastConfig {
    let mut c = MulticastConfig::default();
    c.group(group(id)).port(port(id));
    c
}

fn loopback() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)
}

async fn relay_pair(near_id: u8, far_id: u8, transport: Transport) -> (Relay, Relay) {
    let identity = Identity::generate().unwrap();
    let pin = identity.fingerprint();
    let far = Relay::builder()
        .name("far")
        .listen(loopback())
        .transport(transport)
        .identity(identity)
        .allow_any_feeder()
        .to_group(mcast(far_id))
        .start()
        .await
        .unwrap();
    let near = Relay::builder()
        .name("near")
        .from_group(mcast(near_id))
        .transport(transport)
        .to(far.local_addr().unwrap(), Trust::Pin(pin))
        .start()
        .await
        .unwrap();
    (near, far)
}

async fn converges_through(near_id: u8, far_id: u8, transport: Transport) {
    let (near, far) = relay_pair(near_id, far_id, transport).await;
    let sub = Subscriber::<Map>::builder()
        .group(group(far_id))
        .port(port(far_id))
        .simulate_loss(Loss::new(0.05, 5).unwrap())
        .bind()
        .await
        .unwrap();
    let initial: Map = (0..50).map(|i| (format!("init-{i}"), i)).collect();
    let publ = Publisher::builder()
        .group(group(near_id))
        .port(port(near_id))
        .bind(initial)
        .await
        .unwrap();
    for round in 0..20u64 {
        publ.publish_batch((0..50).map(|i| MapDelta::Upsert(format!("key-{i}"), round * 100 + i)))
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (session, seq) = (publ.session(), publ.last_seq());
    let status = sub
        .wait_until(
            |s| s.session == Some(session) && s.synced && s.consistent && s.seq == seq,
            TIMEOUT,
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "not converged through the relays: {e}\nsub {:?}\nnear {:?}\nfar {:?}",
                sub.stats(),
                near.stats(),
                far.stats()
            )
        });
    assert!(status.consistent);
    assert_eq!(sub.digest(), publ.digest());
    assert_eq!(sub.read(Map::clone), publ.read(Map::clone));
    let (n, f) = (near.stats(), far.stats());
    assert!(
        n.core.datagrams_out_link > 0 && f.core.datagrams_out_group > 0,
        "{n:?} {f:?}"
    );
    assert_eq!(n.links_up, 1);
    publ.shutdown().await;
    sub.shutdown().await;
    near.close().await;
    far.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_crosses_a_quic_relay_pair() {
    converges_through(40, 41, Transport::Quic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_crosses_a_tls_over_tcp_relay_pair() {
    converges_through(42, 43, Transport::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_pin_is_refused_and_nothing_crosses() {
    let far = Relay::builder()
        .listen(loopback())
        .allow_any_feeder()
        .to_group(mcast(45))
        .start()
        .await
        .unwrap();
    let other = Identity::generate().unwrap().fingerprint();
    let near = Relay::builder()
        .from_group(mcast(44))
        .to(far.local_addr().unwrap(), Trust::Pin(other))
        .start()
        .await
        .unwrap();
    let publ = Publisher::<Map>::builder()
        .group(group(44))
        .port(port(44))
        .bind(Map::new())
        .await
        .unwrap();
    publ.publish(MapDelta::Upsert("k".into(), 1)).unwrap();
    wait(|| near.stats().dial_failures >= 2, "two failed dials").await;
    assert_eq!(near.stats().links_up, 0);
    assert_eq!(far.stats().link_connects, 0);
    assert_eq!(far.stats().core.datagrams_out_group, 0);
    publ.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlisted_feeder_is_refused() {
    let allowed = Identity::generate().unwrap().fingerprint();
    let identity = Identity::generate().unwrap();
    let pin = identity.fingerprint();
    let far = Relay::builder()
        .listen(loopback())
        .identity(identity)
        .allow_feeder(allowed)
        .to_group(mcast(47))
        .start()
        .await
        .unwrap();
    let near = Relay::builder()
        .from_group(mcast(46))
        .identity(Identity::generate().unwrap())
        .to(far.local_addr().unwrap(), Trust::Pin(pin))
        .start()
        .await
        .unwrap();
    wait(|| far.stats().refused >= 2, "two refusals").await;
    assert!(near.stats().dial_failures >= 1);
    assert_eq!(near.stats().links_up, 0);
    assert_eq!(far.stats().link_connects, 0);
}

/// Polls `done` (the relays' counters move on events) until it holds,
/// failing after [`TIMEOUT`].
async fn wait(done: impl Fn() -> bool, what: &str) {
    let give_up = tokio::time::Instant::now() + TIMEOUT;
    while !done() {
        assert!(
            tokio::time::Instant::now() < give_up,
            "no {what} within {TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A host with no multicast subscribes to a relay listener directly: the
/// listener reads the publisher's group and serves the link (and answers
/// its NAKs from its history).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unicast_subscriber_follows_through_a_listener() {
    let identity = Identity::generate().unwrap();
    let pin = identity.fingerprint();
    let site = Relay::builder()
        .name("site")
        .from_group(mcast(48))
        .listen(loopback())
        .identity(identity)
        .start()
        .await
        .unwrap();
    let link = grapevine::relay::RelayLink::new(site.local_addr().unwrap(), Trust::Pin(pin));
    let sub = Subscriber::<Map>::builder()
        .relay(link)
        .simulate_loss(Loss::new(0.05, 9).unwrap())
        .bind()
        .await
        .unwrap();
    wait(|| site.stats().subscribers == 1, "the subscriber's link").await;
    let publ = Publisher::builder()
        .group(group(48))
        .port(port(48))
        .bind((0..50).map(|i| (format!("init-{i}"), i)).collect::<Map>())
        .await
        .unwrap();
    // Deltas until the loss has made the subscriber NAK (the losses fall
    // where they fall: a lost snapshot datagram is not NAKed), at most
    // 400 rounds.
    for round in 0..400u64 {
        publ.publish_batch((0..50).map(|i| MapDelta::Upsert(format!("key-{i}"), round * 100 + i)))
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        if round >= 20 && sub.stats().naks_sent > 0 {
            break;
        }
    }
    let (session, seq) = (publ.session(), publ.last_seq());
    sub.wait_until(
        |s| s.session == Some(session) && s.synced && s.consistent && s.seq == seq,
        TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}: {:?} {:?}", sub.stats(), site.stats()));
    assert_eq!(sub.digest(), publ.digest());
    let s = sub.stats();
    assert!(s.simulated_drops > 0 && s.naks_sent > 0, "{s:?}");
    // Its NAKs came over the link to the listener.
    wait(
        || site.stats().core.naks_received > 0,
        "the subscriber's NAKs at the listener",
    )
    .await;
    publ.shutdown().await;
    sub.shutdown().await;
    site.close().await;
}

/// One listener serves several feeding relays, each carrying its own
/// stream from its own network, onto one group: both streams arrive,
/// each subscriber follows its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_listener_serves_several_feeders_and_streams() {
    let identity = Identity::generate().unwrap();
    let pin = identity.fingerprint();
    let far = Relay::builder()
        .name("far")
        .listen(loopback())
        .identity(identity)
        .allow_any_feeder()
        .to_group(mcast(49))
        .start()
        .await
        .unwrap();
    let addr = far.local_addr().unwrap();
    let mut feeders = Vec::new();
    for (id, name) in [(40u8, "near-1"), (41, "near-2")] {
        // Groups 40 and 41 are the QUIC pair test's too: other ports here.
        let mut g = mcast(id);
        g.port(port(id) + 20);
        feeders.push(
            Relay::builder()
                .name(name)
                .from_group(g)
                .to(addr, Trust::Pin(pin))
                .start()
                .await
                .unwrap(),
        );
    }
    wait(|| far.stats().links_up == 2, "two feeders linked").await;
    let mut subs = Vec::new();
    let mut pubs = Vec::new();
    for (id, stream) in [(40u8, 1u32), (41, 2)] {
        subs.push(
            Subscriber::<Map>::builder()
                .group(group(49))
                .port(port(49))
                .stream(grapevine::StreamId(stream))
                .bind()
                .await
                .unwrap(),
        );
        let p = Publisher::builder()
            .group(group(id))
            .port(port(id) + 20)
            .stream(grapevine::StreamId(stream))
            .bind(
                (0..20)
                    .map(|i| (format!("s{stream}-{i}"), i))
                    .collect::<Map>(),
            )
            .await
            .unwrap();
        p.publish_batch(
            (0..100).map(|i| MapDelta::Upsert(format!("k{i}"), u64::from(stream) * 1000 + i)),
        )
        .unwrap();
        pubs.push(p);
    }
    for (sub, p) in subs.iter().zip(&pubs) {
        let (session, seq) = (p.session(), p.last_seq());
        sub.wait_until(
            |s| s.session == Some(session) && s.synced && s.consistent && s.seq == seq,
            TIMEOUT,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}: {:?}", far.stats()));
        assert_eq!(sub.digest(), p.digest());
    }
    // Its counters are published every 50 ms.
    wait(|| far.stats().core.sessions == 2, "two sessions held").await;
}
