//! Tests of [`super`] (identities, fingerprints, trust) and of
//! [`super::super::transport`] (QUIC and TCP links over 127.0.0.1).

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::timeout;

use super::super::transport::{
    quic_client, quic_connect, quic_server, reset_key, tcp_connect, TcpTlsListener, TransportError,
};
use super::*;

/// Bound on every await: nothing here takes more than a few milliseconds
/// on loopback, and a hang fails instead of blocking the suite.
const LIMIT: Duration = Duration::from_secs(10);

fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A fresh directory of its own for one test.
fn dir(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "grapevine-relay-tls-{test}-{}-{}",
        std::process::id(),
        Identity::generate().unwrap().fingerprint()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

// ---------------------------------------------------------------- fingerprints

#[test]
fn fingerprints_print_as_lowercase_hex_and_parse_back_in_every_accepted_form() {
    let empty = Fingerprint::of(b"");
    let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    assert_eq!(empty.to_string(), hex);
    assert_eq!(format!("{empty:?}"), format!("Fingerprint({hex})"));
    assert_eq!(hex.parse::<Fingerprint>(), Ok(empty));
    assert_eq!(hex.to_uppercase().parse::<Fingerprint>(), Ok(empty));
    // What `openssl x509 -noout -fingerprint -sha256` prints after the `=`.
    let colons = hex
        .as_bytes()
        .chunks(2)
        .map(|p| std::str::from_utf8(p).unwrap().to_uppercase())
        .collect::<Vec<_>>()
        .join(":");
    assert_eq!(colons.len(), 95);
    assert_eq!(colons.parse::<Fingerprint>(), Ok(empty));
    assert_eq!(format!(" {hex}\n").parse::<Fingerprint>(), Ok(empty));

    // Every byte goes both ways.
    let bytes: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0xa5);
    let fp = Fingerprint::from_bytes(bytes);
    assert_eq!(fp.to_string().parse::<Fingerprint>(), Ok(fp));
    assert_eq!(fp.as_bytes(), &bytes);
}

#[test]
fn malformed_fingerprints_are_refused_with_the_expected_form() {
    let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let err = |s: &str| s.parse::<Fingerprint>().unwrap_err();

    assert_eq!(err(&hex[..63]), FingerprintError::Length { digits: 63 });
    assert_eq!(
        err(&format!("{hex}0")),
        FingerprintError::Length { digits: 65 }
    );
    assert_eq!(err(""), FingerprintError::Length { digits: 0 });
    let msg = err(&hex[..62]).to_string();
    assert!(msg.contains("64 hex digits") && msg.contains("62"), "{msg}");

    let bad = format!("{}g{}", &hex[..10], &hex[11..]);
    assert_eq!(
        err(&bad),
        FingerprintError::NotHex {
            found: 'g',
            position: 11
        }
    );
    assert!(err(&bad).to_string().contains("64 hex digits"));
    // A whole openssl line is not a fingerprint (only what follows `=`).
    assert!(matches!(
        err(&format!("sha256 Fingerprint={hex}")),
        FingerprintError::NotHex { .. }
    ));

    // Colons anywhere but between pairs.
    let shifted = format!("e:3{}", &hex[2..]);
    assert_eq!(err(&shifted), FingerprintError::Separators);
    assert_eq!(err(&format!("{hex}:")), FingerprintError::Separators);
    assert!(err(&shifted).to_string().contains("openssl x509"));
}

// ------------------------------------------------------------------ identities

#[test]
fn load_or_create_makes_a_private_file_and_keeps_its_fingerprint() {
    let d = dir("identity");
    let path = d.join("relay.pem");
    let made = Identity::load_or_create(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("-----BEGIN CERTIFICATE-----"), "{text}");
    assert!(text.contains("-----BEGIN PRIVATE KEY-----"), "{text}");

    let again = Identity::load_or_create(&path).unwrap();
    assert_eq!(again.fingerprint(), made.fingerprint());
    assert_eq!(again.cert_chain(), made.cert_chain());
    assert_eq!(again.key.secret_der(), made.key.secret_der());
    // Nothing but the identity file in the directory (no temporary left).
    let names: Vec<_> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, [std::ffi::OsString::from("relay.pem")]);

    // The same file through --cert/--key.
    let both = Identity::from_pem_files(&path, &path).unwrap();
    assert_eq!(both.fingerprint(), made.fingerprint());

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let err = Identity::load_or_create(&path).unwrap_err();
    assert!(
        matches!(err, TlsError::LoosePermissions { mode: 0o640, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("chmod 600 {}", path.display())),
        "{msg}"
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o604)).unwrap();
    assert!(matches!(
        Identity::load_or_create(&path),
        Err(TlsError::LoosePermissions { mode: 0o604, .. })
    ));
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn an_identity_file_that_appears_meanwhile_is_not_replaced_but_used() {
    let d = dir("race");
    let path = d.join("relay.pem");
    let first = Identity::load_or_create(&path).unwrap();
    let before = std::fs::read(&path).unwrap();

    // A second process had generated its own before the file appeared.
    let (late, pem) = Identity::generate_pem().unwrap();
    assert_ne!(late.fingerprint(), first.fingerprint());
    match late.install(&path, &pem).unwrap() {
        Installed::Theirs(theirs) => assert_eq!(theirs.fingerprint(), first.fingerprint()),
        Installed::Ours => panic!("an existing identity file was replaced"),
    }
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn debug_never_shows_the_private_key() {
    let identity = Identity::generate().unwrap();
    let shown = format!("{identity:?} {identity:#?}");
    assert!(
        shown.contains(&identity.fingerprint().to_string()),
        "{shown}"
    );
    assert!(shown.contains("<hidden>"), "{shown}");
    let der = identity.key.secret_der();
    let hex: String = der.iter().map(|b| format!("{b:02x}")).collect();
    let decimal = format!("{:?}", der);
    // No run of the key's bytes, in any form Debug could print them in.
    let probe: String = hex.chars().skip(40).take(32).collect();
    assert!(!shown.contains(&probe), "{shown}");
    assert!(!shown.contains(&decimal[1..40]), "{shown}");
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
}

#[test]
fn a_key_that_is_not_the_certificates_is_refused() {
    let d = dir("mismatch");
    let (a, b) = (d.join("a.pem"), d.join("b.pem"));
    Identity::load_or_create(&a).unwrap();
    Identity::load_or_create(&b).unwrap();
    let err = Identity::from_pem_files(&a, &b).unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains("does not belong"), "{err}");

    let cert_only = d.join("cert.pem");
    let text = std::fs::read_to_string(&a).unwrap();
    let end = text.find("-----BEGIN PRIVATE KEY").unwrap();
    std::fs::write(&cert_only, &text[..end]).unwrap();
    assert!(matches!(
        Identity::from_pem_files(&cert_only, &cert_only),
        Err(TlsError::NoPrivateKey { .. })
    ));
    assert!(matches!(
        Trust::ca_file(&d.join("absent.pem")),
        Err(TlsError::Io { .. })
    ));
    std::fs::write(d.join("empty.pem"), "").unwrap();
    assert!(matches!(
        Trust::ca_file(&d.join("empty.pem")),
        Err(TlsError::NoCertificate { .. })
    ));
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn the_reset_key_follows_the_identity() {
    let a = Identity::generate().unwrap();
    let b = Identity::generate().unwrap();
    let sign = |id: &Identity| {
        let mut out = [0u8; 32];
        reset_key(id).sign(b"a connection id", &mut out);
        out
    };
    assert_eq!(sign(&a), sign(&a.clone()));
    assert_ne!(sign(&a), sign(&b));
}

#[test]
fn feeder_policy() {
    let mine = Identity::generate().unwrap().fingerprint();
    let other = Identity::generate().unwrap().fingerprint();
    let allow = FeederPolicy::Allow(vec![mine]);
    assert!(allow.admits(Some(&mine)));
    assert!(!allow.admits(Some(&other)));
    assert!(!allow.admits(None));
    assert!(!FeederPolicy::Allow(vec![]).admits(Some(&mine)));
    assert!(FeederPolicy::Any.admits(None));
    assert!(FeederPolicy::Any.admits(Some(&other)));
    assert_eq!(allow.check(None), Err(FeederRefused::NoCertificate));
    let refused = allow.check(Some(&other)).unwrap_err().to_string();
    assert!(refused.contains(&format!("--allow {other}")), "{refused}");
}

// ------------------------------------------------------------------------ QUIC

/// A QUIC listener with `identity` that accepts one connection, echoes one
/// bidirectional stream on it, and reports the dialer's fingerprint.
async fn quic_echo_server(
    identity: &Identity,
) -> (
    quinn::Endpoint,
    tokio::task::JoinHandle<Result<Option<Fingerprint>, String>>,
) {
    let server = quic_server(localhost(), identity).unwrap();
    let accepting = server.clone();
    let task = tokio::spawn(async move {
        let incoming = accepting.accept().await.ok_or("endpoint closed")?;
        let conn = incoming.await.map_err(|e| e.to_string())?;
        let peer = peer_fingerprint(&conn);
        let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
        let data = recv.read_to_end(1024).await.map_err(|e| e.to_string())?;
        send.write_all(&data).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        // Wait until the dialer has read it all and closed.
        conn.closed().await;
        Ok(peer)
    });
    (server, task)
}

/// Drives every handshake `server` is offered from now on (quinn goes on
/// with a handshake only once the application accepts it).
fn keep_accepting(server: quinn::Endpoint) {
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            tokio::spawn(async move {
                let _ = incoming.await;
            });
        }
    });
}

async fn quic_echo(conn: &quinn::Connection, data: &[u8]) -> Vec<u8> {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(data).await.unwrap();
    send.finish().unwrap();
    recv.read_to_end(1024).await.unwrap()
}

#[tokio::test]
async fn quic_with_a_pin_connects_and_each_side_sees_the_others_fingerprint() {
    let server_id = Identity::generate().unwrap();
    let client_id = Identity::generate().unwrap();
    for presented in [Some(&client_id), None] {
        let (server, task) = quic_echo_server(&server_id).await;
        let trust = Trust::Pin(server_id.fingerprint());
        let client = quic_client(localhost(), presented, &trust).unwrap();
        let conn = timeout(
            LIMIT,
            quic_connect(
                &client,
                server.local_addr().unwrap(),
                trust.server_name("ignored"),
            ),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(peer_fingerprint(&conn), Some(server_id.fingerprint()));
        let alpn = conn
            .handshake_data()
            .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|d| d.protocol);
        assert_eq!(alpn.as_deref(), Some(ALPN));
        assert_eq!(
            timeout(LIMIT, quic_echo(&conn, b"hello, relay"))
                .await
                .unwrap(),
            b"hello, relay"
        );
        conn.close(0u32.into(), b"done");
        let seen = timeout(LIMIT, task).await.unwrap().unwrap().unwrap();
        assert_eq!(seen, presented.map(Identity::fingerprint));
    }
}

#[tokio::test]
async fn quic_with_a_wrong_pin_fails_naming_both_fingerprints() {
    let server_id = Identity::generate().unwrap();
    let wrong = Identity::generate().unwrap().fingerprint();
    let server = quic_server(localhost(), &server_id).unwrap();
    keep_accepting(server.clone());
    let client = quic_client(localhost(), None, &Trust::Pin(wrong)).unwrap();
    let err = timeout(
        LIMIT,
        quic_connect(&client, server.local_addr().unwrap(), RELAY_NAME),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(matches!(err, TransportError::Handshake { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&wrong.to_string()), "{msg}");
    assert!(msg.contains(&server_id.fingerprint().to_string()), "{msg}");
}

/// A CA (rcgen) and a leaf it signed for `name`, as PEM files in `d`:
/// returns (leaf certificate, leaf key, CA certificate).
fn ca_and_leaf(d: &std::path::Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test relay CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();

    let leaf_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let leaf = rcgen::CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let paths = (d.join("leaf.pem"), d.join("leaf.key"), d.join("ca.pem"));
    std::fs::write(&paths.0, leaf.pem()).unwrap();
    std::fs::write(&paths.1, leaf_key.serialize_pem()).unwrap();
    std::fs::write(&paths.2, ca.pem()).unwrap();
    (paths.0, paths.1, paths.2)
}

#[tokio::test]
async fn quic_with_a_ca_checks_the_name() {
    let d = dir("ca");
    let (cert, key, ca) = ca_and_leaf(&d, "relay.test");
    let server_id = Identity::from_pem_files(&cert, &key).unwrap();
    let trust = Trust::ca_file(&ca).unwrap();
    assert!(matches!(&trust, Trust::Ca(roots) if roots.len() == 1));
    assert_eq!(trust.server_name("relay.test"), "relay.test");

    let (server, task) = quic_echo_server(&server_id).await;
    let addr = server.local_addr().unwrap();
    let client = quic_client(localhost(), None, &trust).unwrap();
    let conn = timeout(LIMIT, quic_connect(&client, addr, "relay.test"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(peer_fingerprint(&conn), Some(server_id.fingerprint()));
    assert_eq!(
        timeout(LIMIT, quic_echo(&conn, b"ca")).await.unwrap(),
        b"ca"
    );
    conn.close(0u32.into(), b"done");
    assert_eq!(timeout(LIMIT, task).await.unwrap().unwrap(), Ok(None));
    keep_accepting(server.clone());

    // Another name, or the pin name, is refused: the CA vouches for
    // relay.test only.
    for name in ["other.test", RELAY_NAME] {
        let err = timeout(LIMIT, quic_connect(&client, addr, name))
            .await
            .unwrap()
            .unwrap_err();
        assert!(err.to_string().contains("not valid for name"), "{err}");
    }
    // A CA that did not sign it is refused too.
    let (_, _, other_ca) = ca_and_leaf(&dir("ca-other"), "relay.test");
    let stranger = quic_client(localhost(), None, &Trust::ca_file(&other_ca).unwrap()).unwrap();
    let err = timeout(LIMIT, quic_connect(&stranger, addr, "relay.test"))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        err.to_string().contains("invalid peer certificate"),
        "{err}"
    );
    std::fs::remove_dir_all(d).unwrap();
    std::fs::remove_dir_all(other_ca.parent().unwrap()).unwrap();
}

#[test]
fn quic_endpoints_need_a_runtime() {
    let id = Identity::generate().unwrap();
    assert!(matches!(
        quic_server(localhost(), &id),
        Err(TransportError::NoRuntime)
    ));
}

/// A listener killed without a word and restarted on the same port with the
/// same identity resets its old connections at once (stateless reset with
/// the key derived from the identity), instead of the dialer waiting out
/// the 10 s idle timeout.
#[test]
fn a_restarted_listener_resets_its_previous_connections() {
    let identity = Identity::generate().unwrap();
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    };
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let server_rt = runtime();

    let server = server_rt.block_on(async { quic_server(localhost(), &identity).unwrap() });
    let addr = server.local_addr().unwrap();
    let accepting = server.clone();
    let accepted = server_rt.spawn(async move { accepting.accept().await?.await.ok() });
    let trust = Trust::Pin(identity.fingerprint());
    let (client, conn) = client_rt.block_on(async {
        let client = quic_client(localhost(), None, &trust).unwrap();
        let conn = timeout(LIMIT, quic_connect(&client, addr, RELAY_NAME))
            .await
            .unwrap()
            .unwrap();
        (client, conn)
    });
    let server_conn = server_rt
        .block_on(async { timeout(LIMIT, accepted).await })
        .unwrap()
        .unwrap()
        .unwrap();

    // The kill: its tasks stop without sending anything (no CONNECTION_CLOSE),
    // then the handles go and the socket closes.
    drop(server_rt);
    drop(server_conn);
    drop(server);

    let server_rt = runtime();
    let restarted = server_rt.block_on(async { quic_server(addr, &identity) });
    let restarted = restarted.unwrap();
    assert_eq!(conn.close_reason(), None);
    client_rt.block_on(async {
        // Anything the dialer sends reaches the new endpoint, which knows no
        // such connection and answers with a stateless reset.
        let mut lane = conn.open_uni().await.unwrap();
        lane.write_all(b"still there?").await.unwrap();
        let reason = timeout(Duration::from_secs(5), conn.closed())
            .await
            .expect("no stateless reset within 5 s");
        assert!(
            matches!(reason, quinn::ConnectionError::Reset),
            "{reason:?}"
        );
    });
    drop(client);
    drop(restarted);
}

// ------------------------------------------------------------------------- TCP

#[tokio::test]
async fn tcp_with_a_pin_carries_bytes_and_the_listener_sees_the_dialer() {
    let server_id = Identity::generate().unwrap();
    let client_id = Identity::generate().unwrap();
    let listener = TcpTlsListener::bind(localhost(), &server_id).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let incoming = listener.accept().await.unwrap();
        assert_eq!(incoming.remote_addr().ip(), addr.ip());
        let mut stream = incoming.handshake().await.unwrap();
        let peer = tcp_peer_fingerprint(&stream);
        assert!(stream.get_ref().0.nodelay().unwrap());
        let mut data = Vec::new();
        stream.read_to_end(&mut data).await.unwrap();
        stream.write_all(&data).await.unwrap();
        stream.shutdown().await.unwrap();
        peer
    });
    let trust = Trust::Pin(server_id.fingerprint());
    let config = Arc::new(client_config(Some(&client_id), &trust).unwrap());
    let mut stream = timeout(LIMIT, tcp_connect(addr, trust.server_name("x"), config))
        .await
        .unwrap()
        .unwrap();
    assert!(stream.get_ref().0.nodelay().unwrap());
    assert_eq!(
        tls_peer_fingerprint(stream.get_ref().1),
        Some(server_id.fingerprint())
    );
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    stream.write_all(b"over tcp").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut back = Vec::new();
    timeout(LIMIT, stream.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, b"over tcp");
    let seen = timeout(LIMIT, task).await.unwrap().unwrap();
    assert_eq!(seen, Some(client_id.fingerprint()));
}

#[tokio::test]
async fn tcp_with_a_wrong_pin_fails_naming_both_fingerprints() {
    let server_id = Identity::generate().unwrap();
    let wrong = Identity::generate().unwrap().fingerprint();
    let listener = TcpTlsListener::bind(localhost(), &server_id).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move { listener.accept().await.unwrap().handshake().await });
    let config = Arc::new(client_config(None, &Trust::Pin(wrong)).unwrap());
    let err = timeout(LIMIT, tcp_connect(addr, RELAY_NAME, config))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, TransportError::TlsHandshake { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains(&wrong.to_string()), "{msg}");
    assert!(msg.contains(&server_id.fingerprint().to_string()), "{msg}");
    // The listener's side of it fails too (the dialer's alert).
    assert!(timeout(LIMIT, task).await.unwrap().unwrap().is_err());
}

#[tokio::test]
async fn a_client_without_the_relay_alpn_is_refused() {
    let server_id = Identity::generate().unwrap();
    let listener = TcpTlsListener::bind(localhost(), &server_id).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move { listener.accept().await.unwrap().handshake().await });
    let mut config = client_config(None, &Trust::Pin(server_id.fingerprint())).unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let err = timeout(LIMIT, tcp_connect(addr, RELAY_NAME, Arc::new(config)))
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("NoApplicationProtocol"), "{err}");
    assert!(timeout(LIMIT, task).await.unwrap().unwrap().is_err());
}
