//! Multicast socket setup over real sockets.
//!
//! Network rules (DESIGN.md §5): every socket here is pinned to loopback, or
//! to a veth pair inside a private network namespace the IPv6 test creates.
//! Each test uses its own group and port, derived from a per-test id:
//! group 239.255.27.<id> (or ff01::27:<id>), port 27000 + id.
//!
//! No sleeps: a blocking receive has a read timeout that only bounds a
//! failing test, and tokio tests use `tokio::time::timeout` the same way.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use grapevine::socket::{bind_receiver, bind_sender, Interface, MulticastConfig, MulticastSocket};
use grapevine::SocketError;
use socket2::SockRef;

/// Bounds how long a test waits for a datagram that should arrive.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The config of test `id`: its own IPv4 group and port on loopback.
fn config(id: u8) -> MulticastConfig {
    let mut config = MulticastConfig::default();
    config.group(group_v4(id)).port(port(id));
    config
}

fn group_v4(id: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(239, 255, 27, id))
}

fn port(id: u8) -> u16 {
    27000 + u16::from(id)
}

/// Receives one datagram, failing the test after [`TIMEOUT`].
fn recv(socket: &MulticastSocket) -> (Vec<u8>, SocketAddr) {
    let socket = socket.socket();
    socket.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut buf = vec![0u8; 2048];
    match socket.recv_from(&mut buf) {
        Ok((n, from)) => {
            buf.truncate(n);
            (buf, from)
        }
        Err(e) => panic!(
            "no datagram on {:?} within {TIMEOUT:?}: {e}",
            socket.local_addr()
        ),
    }
}

fn send(sender: &MulticastSocket, payload: &[u8]) {
    let n = sender
        .socket()
        .send_to(payload, sender.group_addr())
        .unwrap();
    assert_eq!(n, payload.len());
}

#[test]
fn sender_and_two_receivers_on_one_group() {
    let config = config(1);
    let first = bind_receiver(&config).unwrap();
    let second = bind_receiver(&config).unwrap();
    let sender = bind_sender(&config).unwrap();
    assert_eq!(first.local_addr().unwrap(), config.group_addr());
    assert_eq!(second.local_addr().unwrap(), config.group_addr());

    for payload in [&b"one"[..], b"two", b"three"] {
        send(&sender, payload);
    }
    let source = sender.local_addr().unwrap();
    assert_eq!(source.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    for receiver in [&first, &second] {
        for payload in [&b"one"[..], b"two", b"three"] {
            let (got, from) = recv(receiver);
            assert_eq!(got, payload);
            // Subscribers see the publisher's unicast address (for NAKs).
            assert_eq!(from, source);
        }
    }
}

#[test]
fn ttl_0_and_ttl_1_both_deliver_on_loopback() {
    for (id, ttl) in [(2, 0), (3, 1)] {
        let mut config = config(id);
        config.ttl(ttl);
        let receiver = bind_receiver(&config).unwrap();
        let sender = bind_sender(&config).unwrap();
        send(&sender, b"ttl");
        assert_eq!(recv(&receiver).0, b"ttl", "ttl {ttl}");
    }
}

#[test]
fn receivers_hear_only_their_own_group_on_a_shared_port() {
    // Two groups, one port.
    let mut config_a = config(4);
    let mut config_b = config(5);
    config_a.port(port(4));
    config_b.port(port(4));
    let receiver_a = bind_receiver(&config_a).unwrap();
    let receiver_b = bind_receiver(&config_b).unwrap();
    let sender_a = bind_sender(&config_a).unwrap();
    let sender_b = bind_sender(&config_b).unwrap();

    // Once B has its datagram, the kernel has delivered it to every socket it
    // matches: if A matched, A would have it queued before A's own datagram.
    send(&sender_b, b"for b");
    assert_eq!(recv(&receiver_b).0, b"for b");
    send(&sender_a, b"for a");
    assert_eq!(recv(&receiver_a).0, b"for a");
    // And the other way round.
    send(&sender_a, b"for a again");
    assert_eq!(recv(&receiver_a).0, b"for a again");
    send(&sender_b, b"for b again");
    assert_eq!(recv(&receiver_b).0, b"for b again");
}

#[test]
fn every_socket_is_pinned_to_loopback() {
    let config = config(6);
    let receiver = bind_receiver(&config).unwrap();
    let sender = bind_sender(&config).unwrap();
    assert_eq!(sender.interface_name(), "lo");
    assert_eq!(receiver.interface_name(), "lo");
    assert_eq!(sender.interface_index(), receiver.interface_index());
    for socket in [&receiver, &sender] {
        let sock = SockRef::from(socket.socket());
        assert_eq!(sock.multicast_if_v4().unwrap(), Ipv4Addr::LOCALHOST);
        assert_eq!(sock.multicast_ttl_v4().unwrap(), 0);
        // Unicast (NAKs): the least a unicast datagram can have.
        assert_eq!(sock.ttl_v4().unwrap(), 1);
        assert!(sock.multicast_loop_v4().unwrap());
    }
    let mut five = config.clone();
    five.ttl(5);
    let sock = bind_receiver(&five).unwrap();
    assert_eq!(SockRef::from(sock.socket()).ttl_v4().unwrap(), 5);
    let sock = SockRef::from(receiver.socket());
    assert!(sock.reuse_address().unwrap());
    assert!(sock.reuse_port().unwrap());
    assert!(!sock.multicast_all_v4().unwrap());
    assert_eq!(sender.local_addr().unwrap().ip(), Ipv4Addr::LOCALHOST);
    assert_ne!(sender.local_addr().unwrap().port(), 0);
}

#[test]
fn every_interface_form_resolves_to_loopback() {
    let lo_index = bind_sender(&config(12)).unwrap().interface_index();
    for (id, interface) in [
        (12, Interface::name("lo")),
        (13, Interface::Index(lo_index)),
        (14, Interface::Ipv4(Ipv4Addr::LOCALHOST)),
    ] {
        let mut config = config(id);
        config.interface(interface.clone());
        let receiver = bind_receiver(&config).unwrap();
        let sender = bind_sender(&config).unwrap();
        assert_eq!(sender.interface_name(), "lo", "{interface}");
        send(&sender, b"iface");
        assert_eq!(recv(&receiver).0, b"iface", "{interface}");
    }
}

#[test]
fn buffers_report_what_the_kernel_granted() {
    let mut config = config(7);
    config.recv_buffer(64 * 1024).send_buffer(32 * 1024);
    let receiver = bind_receiver(&config).unwrap();
    let sender = bind_sender(&config).unwrap();
    println!(
        "requested recv {} send {}; granted receiver recv {} send {}, sender send {}",
        config.recv_buffer,
        config.send_buffer,
        receiver.recv_buffer(),
        receiver.send_buffer(),
        sender.send_buffer()
    );
    // Linux grants min(request, rmem_max) and reports twice that; the
    // defaults (rmem_max 208 KiB) cover these requests.
    assert!(receiver.recv_buffer() >= config.recv_buffer);
    assert!(sender.send_buffer() >= config.send_buffer);
    let sock = SockRef::from(receiver.socket());
    assert_eq!(sock.recv_buffer_size().unwrap(), receiver.recv_buffer());
}

#[cfg(feature = "runtime-tokio")]
#[tokio::test(flavor = "current_thread")]
async fn tokio_round_trip() {
    let config = config(8);
    let receiver = bind_receiver(&config).unwrap().into_tokio().unwrap();
    let sender = bind_sender(&config).unwrap();
    let source = sender.local_addr().unwrap();
    let sender = sender.into_tokio().unwrap();
    sender.send_to(b"async", config.group_addr()).await.unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = tokio::time::timeout(TIMEOUT, receiver.recv_from(&mut buf))
        .await
        .expect("no datagram within the timeout")
        .unwrap();
    assert_eq!(&buf[..n], b"async");
    assert_eq!(from, source);
}

// ---- errors ----

#[test]
fn a_unicast_group_is_rejected() {
    let mut config = config(20);
    config.group("192.168.1.1".parse().unwrap());
    for err in [
        bind_receiver(&config).unwrap_err(),
        bind_sender(&config).unwrap_err(),
    ] {
        assert!(matches!(err, SocketError::NotMulticast { group } if group == config.group));
        assert_eq!(
            err.to_string(),
            "192.168.1.1 is not a multicast group: use 224.0.0.0/4 or ff00::/8, \
             e.g. 239.255.77.77 (IPv4) or ff15::7777 (IPv6)"
        );
        assert_eq!(io::Error::from(err).kind(), io::ErrorKind::InvalidInput);
    }
    config.group("::1".parse().unwrap());
    assert!(matches!(
        config.validate(),
        Err(SocketError::NotMulticast { .. })
    ));
}

#[test]
fn port_zero_and_large_ttl_are_rejected() {
    let mut config = config(21);
    config.port(0);
    let err = bind_receiver(&config).unwrap_err();
    assert!(matches!(err, SocketError::PortZero), "{err:?}");
    assert!(err.to_string().contains("fixed port"));

    let mut config = self::config(21);
    config.ttl(256);
    let err = bind_sender(&config).unwrap_err();
    assert!(
        matches!(err, SocketError::TtlOutOfRange { ttl: 256 }),
        "{err:?}"
    );
    assert!(err.to_string().contains("use 0..=255"));
    config.ttl(255);
    assert!(config.validate().is_ok());
}

#[test]
fn unknown_interfaces_are_rejected() {
    for interface in [
        Interface::name("gv-no-such0"),
        Interface::Index(u32::MAX - 7),
        // On lo's subnet but not assigned to any interface.
        Interface::Ipv4(Ipv4Addr::new(127, 0, 0, 2)),
    ] {
        let mut config = config(22);
        config.interface(interface.clone());
        let err = bind_receiver(&config).unwrap_err();
        assert!(
            matches!(&err, SocketError::UnknownInterface { interface: i } if *i == interface),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(
            message.starts_with("no network interface matches"),
            "{message}"
        );
        assert!(message.contains("ip addr"), "{message}");
        assert_eq!(io::Error::from(err).kind(), io::ErrorKind::NotFound);
    }
}

#[test]
fn an_ipv4_interface_address_for_an_ipv6_group_is_rejected() {
    let mut config = config(23);
    config
        .group("ff15::27:23".parse().unwrap())
        .interface(Interface::Ipv4(Ipv4Addr::LOCALHOST));
    let err = bind_sender(&config).unwrap_err();
    assert!(matches!(err, SocketError::FamilyMismatch { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "group ff15::27:23 is IPv6 but interface 127.0.0.1 is an IPv4 address: \
         give an IPv6 group an interface by name or index, or use an IPv4 group"
    );
}

#[test]
fn a_port_held_without_reuse_is_a_bind_error() {
    let config = config(24);
    // std sets neither SO_REUSEADDR nor SO_REUSEPORT.
    let _holder = UdpSocket::bind(config.group_addr()).unwrap();
    let err = bind_receiver(&config).unwrap_err();
    match &err {
        SocketError::Bind { addr, source } => {
            assert_eq!(*addr, config.group_addr());
            assert_eq!(source.kind(), io::ErrorKind::AddrInUse);
        }
        other => panic!("expected a bind error, got {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.starts_with("cannot bind 239.255.27.24:27024: the port is held"),
        "{message}"
    );
    assert!(std::error::Error::source(&err).is_some());
    assert_eq!(io::Error::from(err).kind(), io::ErrorKind::AddrInUse);
}

/// Linux `lo` cannot carry IPv6 multicast, with or without the MULTICAST
/// flag: the library refuses up front instead of sending into the void.
/// The namespace test below checks both cases on a fresh `lo`, whatever
/// the host's `lo` looks like.
#[test]
#[cfg_attr(
    not(target_os = "linux"),
    ignore = "Linux only: the loopback interface is `lo`"
)]
fn ipv6_on_linux_loopback_is_refused() {
    let mut config = config(25);
    config.group("ff01::27:25".parse().unwrap());
    assert_lo_refuses_ipv6(&config);
}

/// Binding `config` (an IPv6 group on `lo`) is refused, whether or not
/// `lo` has the MULTICAST flag: Linux never delivers IPv6 multicast over
/// loopback (see the `socket` module docs).
fn assert_lo_refuses_ipv6(config: &MulticastConfig) {
    for err in [
        bind_receiver(config).unwrap_err(),
        bind_sender(config).unwrap_err(),
    ] {
        assert!(
            matches!(&err, SocketError::Ipv6MulticastUnsupported { name } if name == "lo"),
            "{err:?}"
        );
        assert!(err.to_string().contains("use an IPv4 group on loopback"));
    }
}

// ---- IPv6, inside a private network namespace ----

/// Set in the child process that runs inside the namespace.
const IN_NETNS: &str = "GRAPEVINE_TEST_IN_NETNS";

/// IPv6 multicast round trip on a veth pair inside a private user + network
/// namespace (Linux cannot do IPv6 multicast over `lo`).
///
/// The test re-runs itself under `unshare --user --map-root-user --net`,
/// which needs no privileges where user namespaces are allowed. The veth
/// pair exists only inside that namespace, and the groups are interface-local
/// (`ff01::/16`) with hop limit 0: nothing can leave the host.
///
/// Ignored by default because not every host can create the namespace; run
/// with `--ignored`, it fails (never passes quietly) on a host that lacks
/// any of IPv6, `unshare`, user + network namespaces or `ip`. `.ci/run`
/// runs it that way.
#[test]
#[ignore = "needs IPv6, `unshare` (util-linux), user + network namespaces and `ip` \
            (iproute2); run with `cargo test -p grapevine --test io -- --ignored` \
            (.ci/run does)"]
fn ipv6_round_trip_in_a_private_namespace() {
    if std::env::var_os(IN_NETNS).is_some() {
        ipv6_inside_namespace();
        return;
    }
    const CANNOT: &str = "this host cannot run the IPv6 namespace test";
    if let Err(e) = UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)) {
        panic!("{CANNOT}: IPv6 is unavailable ([::1]: {e})");
    }
    let exe = std::env::current_exe().unwrap();
    // The test's path inside this binary: module path minus the crate name.
    let module = module_path!().split_once("::").map_or("", |(_, m)| m);
    let name = format!("{module}::ipv6_round_trip_in_a_private_namespace");
    let output = Command::new("unshare")
        .args(["--user", "--map-root-user", "--net", "--"])
        .arg(&exe)
        .args([
            "--exact",
            &name,
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(IN_NETNS, "1")
        .output()
        .unwrap_or_else(|e| panic!("{CANNOT}: cannot run `unshare` (util-linux): {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // `unshare` itself failed (user namespaces not allowed here): the child
    // never started.
    assert!(
        stdout.contains("running 1 test"),
        "{CANNOT}: `unshare --user --map-root-user --net` failed ({}): {}{}",
        output.status,
        stdout.trim(),
        stderr.trim()
    );
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "IPv6 round trip failed inside the namespace:\n{stdout}\n{stderr}"
    );
}

/// Runs `ip` inside the namespace; panics when the namespace cannot be set
/// up.
fn ip(args: &[&str]) {
    match Command::new("ip").args(args).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "`ip {}` failed inside the namespace: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!("cannot run `ip` (iproute2) inside the namespace: {e}"),
    }
}

fn ipv6_inside_namespace() {
    // gv0/gv1 live only in this namespace. No automatic addresses (which
    // would be tentative for a while); the multicast route is added directly
    // rather than waiting for the carrier.
    let setup: &[&[&str]] = &[
        &["link", "set", "lo", "up"],
        &["link", "add", "gv0", "type", "veth", "peer", "name", "gv1"],
        &["link", "set", "gv0", "addrgenmode", "none"],
        &["link", "set", "gv1", "addrgenmode", "none"],
        &["-6", "addr", "add", "fd00:27::1/64", "dev", "gv0", "nodad"],
        &["-6", "addr", "add", "fe80::27:1/64", "dev", "gv0", "nodad"],
        &["link", "set", "gv0", "up"],
        &["link", "set", "gv1", "up"],
        &[
            "-6",
            "route",
            "replace",
            "multicast",
            "ff00::/8",
            "dev",
            "gv0",
            "table",
            "local",
        ],
    ];
    for args in setup {
        ip(args);
    }

    // IPv6 is refused on a fresh `lo` (no MULTICAST flag), and still once
    // it has the flag: Linux never delivers IPv6 multicast over loopback.
    let mut on_lo = MulticastConfig::default();
    on_lo.group("ff01::27:26".parse().unwrap()).port(port(26));
    assert_lo_refuses_ipv6(&on_lo);
    ip(&["link", "set", "lo", "multicast", "on"]);
    assert_lo_refuses_ipv6(&on_lo);

    // By name, interface-local group.
    let mut config = MulticastConfig::default();
    config
        .group("ff01::27:11".parse().unwrap())
        .port(port(11))
        .interface(Interface::name("gv0"));
    let first = bind_receiver(&config).unwrap();
    let second = bind_receiver(&config).unwrap();
    let sender = bind_sender(&config).unwrap();
    let index = sender.interface_index();
    assert_eq!(sender.interface_name(), "gv0");
    let sock = SockRef::from(sender.socket());
    assert_eq!(sock.multicast_if_v6().unwrap(), index);
    assert_eq!(sock.multicast_hops_v6().unwrap(), 0);
    // The global address is preferred over the link-local one.
    let source = sender.local_addr().unwrap();
    assert_eq!(source.ip(), "fd00:27::1".parse::<IpAddr>().unwrap());
    send(&sender, b"six");
    for receiver in [&first, &second] {
        let (got, from) = recv(receiver);
        assert_eq!(got, b"six");
        assert_eq!(from, source);
    }

    // By index, a wider-scope group (still hop limit 0), and a receiver of
    // another group on the same port hears nothing of it.
    let mut other = config.clone();
    other.group("ff01::27:12".parse().unwrap());
    let other_receiver = bind_receiver(&other).unwrap();
    config
        .group("ff15::27:11".parse().unwrap())
        .interface(Interface::Index(index));
    let receiver = bind_receiver(&config).unwrap();
    let sender = bind_sender(&config).unwrap();
    send(&sender, b"site");
    assert_eq!(recv(&receiver).0, b"site");
    let other_sender = bind_sender(&other).unwrap();
    send(&other_sender, b"other");
    assert_eq!(recv(&other_receiver).0, b"other");

    // gv1 has no address of either family.
    let mut config = MulticastConfig::default();
    config.port(port(11)).interface(Interface::name("gv1"));
    let err = bind_receiver(&config).unwrap_err();
    assert!(
        matches!(&err, SocketError::MissingAddress { name, family: "IPv4", .. } if name == "gv1"),
        "{err:?}"
    );
    assert!(err
        .to_string()
        .starts_with("interface gv1 has no IPv4 address"));
    config.group("ff01::27:13".parse().unwrap());
    bind_receiver(&config).expect("an IPv6 receiver needs no address");
    let err = bind_sender(&config).unwrap_err();
    assert!(
        matches!(&err, SocketError::MissingAddress { family: "IPv6", .. }),
        "{err:?}"
    );
}
