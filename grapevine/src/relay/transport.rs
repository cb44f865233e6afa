//! The endpoints of relay links: QUIC (quinn) and TLS 1.3 over TCP
//! (tokio-rustls), with the TLS of [`tls`] (docs/design/relay.md,
//! "Transport").
//!
//! # QUIC
//!
//! [`quic_server`] and [`quic_client`] make quinn endpoints with the relay's
//! [`transport_config`]: keep-alive every 2 s, a link with nothing received
//! for 10 s is dead, at most [`MAX_LANES`] unidirectional streams (lanes)
//! open from the peer, and small windows, so that a slow link waits in the
//! relay's own bounded, shedding outbox rather than in quinn's buffers. A
//! listener's stateless-reset key is derived from its identity: restarted
//! with the same identity file, it resets its previous run's connections at
//! once instead of letting the dialers wait out the idle timeout.
//!
//! ```no_run
//! use grapevine::relay::tls::{Identity, Trust};
//! use grapevine::relay::transport::{quic_client, quic_connect, quic_server};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let identity = Identity::generate()?;
//! let listener = quic_server("127.0.0.1:0".parse()?, &identity)?;
//! let trust = Trust::Pin(identity.fingerprint());
//! let dialer = quic_client("127.0.0.1:0".parse()?, None, &trust)?;
//! let link = quic_connect(&dialer, listener.local_addr()?, trust.server_name("localhost")).await?;
//! let (mut control, _) = link.open_bi().await?;
//! control.write_all(b"Hello").await?;
//! # Ok(())
//! # }
//! ```
//!
//! # TCP
//!
//! [`tcp_connect`] dials and completes the handshake within
//! [`CONNECT_TIMEOUT`]; [`TcpTlsListener::accept`] hands out a
//! [`TcpIncoming`] whose [`handshake`](TcpIncoming::handshake) the caller
//! runs in its own task (a slow dialer then delays nobody else). Both set
//! `TCP_NODELAY`. There is no TCP keep-alive: the relay's Ping frames do
//! that.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Endpoint, EndpointConfig, IdleTimeout, TransportConfig, VarInt};
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::tls::{self, Identity, TlsError, Trust, ALPN};

/// QUIC keep-alive: a PING when nothing was sent for this long.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(2);

/// A QUIC link with nothing received for this long is dead (five
/// keep-alives lost). Also bounds a QUIC handshake.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Unidirectional streams (lanes, one per Grapevine stream) a peer may have
/// open at once.
pub const MAX_LANES: u32 = 64;

/// Bytes a peer may send ahead on one QUIC stream (a lane).
pub const STREAM_RECEIVE_WINDOW: u32 = 1024 * 1024;

/// Bytes a peer may send ahead on a whole QUIC connection.
pub const CONNECTION_RECEIVE_WINDOW: u32 = 4 * 1024 * 1024;

/// Bytes quinn may hold unacknowledged for a connection (its send buffer).
///
/// Kept at the default `--wan-bdp` of the design (4 MiB: 100 Mbit/s over a
/// 320 ms RTT): enough to fill such a path, no more. Beyond it, writes wait,
/// the relay stops pulling frames from its core, and the backlog stays in
/// the relay's own outbox, which is bounded, counted and shed by age;
/// quinn's buffer is none of those.
pub const SEND_WINDOW: u64 = 4 * 1024 * 1024;

/// How long [`tcp_connect`] may take (TCP connect and TLS handshake), and
/// [`TcpIncoming::handshake`].
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The label of the stateless-reset key's derivation.
const RESET_KEY_LABEL: &[u8] = b"grapevine relay reset key v1";

/// The label of the connection-id check's key derivation.
const CID_KEY_LABEL: &[u8] = b"grapevine relay cid key v1";

/// Why an endpoint could not be made, or a link not established.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The identity or trust cannot make a TLS configuration.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The local address cannot be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A QUIC endpoint was made outside a tokio runtime.
    #[error("no tokio runtime: make QUIC endpoints from within a tokio runtime")]
    NoRuntime,
    /// The TLS configuration cannot carry QUIC (a bug if it happens).
    #[error("the TLS configuration cannot carry QUIC: {0}")]
    Quic(String),
    /// A QUIC connection could not be started (an invalid server name,
    /// among others).
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The listener.
        addr: SocketAddr,
        /// What quinn said.
        #[source]
        source: quinn::ConnectError,
    },
    /// The QUIC handshake failed (a pin mismatch says both fingerprints).
    #[error("QUIC handshake with {addr} failed: {source}")]
    Handshake {
        /// The listener.
        addr: SocketAddr,
        /// What quinn said.
        #[source]
        source: quinn::ConnectionError,
    },
    /// A server name that is neither a DNS name nor an IP address.
    #[error("{name:?} is not a valid server name: give a DNS name or an IP address")]
    ServerName {
        /// The name.
        name: String,
    },
    /// The TCP connection failed.
    #[error("cannot connect to {addr} over TCP: {source}")]
    TcpConnect {
        /// The listener.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Accepting a TCP connection failed (often passing: too many open
    /// files, a connection reset before it was accepted).
    #[error("cannot accept a TCP connection: {0}")]
    Accept(#[source] io::Error),
    /// The TLS handshake over TCP failed (a pin mismatch says both
    /// fingerprints).
    #[error("TLS handshake with {addr} failed: {source}")]
    TlsHandshake {
        /// The peer.
        addr: SocketAddr,
        /// The error (wrapping rustls').
        #[source]
        source: io::Error,
    },
    /// The peer did not agree on [`ALPN`].
    #[error(
        "{addr} did not agree on ALPN `grapevine-relay/1`: it is not a Grapevine relay, or \
         speaks another version of the relay link"
    )]
    Alpn {
        /// The peer.
        addr: SocketAddr,
    },
    /// A TCP connect or handshake took longer than [`CONNECT_TIMEOUT`].
    #[error("no TLS session with {addr} within {timeout:?}: is it reachable, and a relay?")]
    Timeout {
        /// The peer.
        addr: SocketAddr,
        /// The limit.
        timeout: Duration,
    },
}

/// The QUIC transport settings of every relay link (both ends).
#[must_use]
pub fn transport_config() -> TransportConfig {
    let mut config = TransportConfig::default();
    config
        .keep_alive_interval(Some(KEEP_ALIVE_INTERVAL))
        .max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(
            u32::try_from(IDLE_TIMEOUT.as_millis()).unwrap_or(u32::MAX),
        ))))
        .max_concurrent_uni_streams(VarInt::from_u32(MAX_LANES))
        .stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_RECEIVE_WINDOW))
        .send_window(SEND_WINDOW)
        // Lanes are streams: no QUIC DATAGRAM frames.
        .datagram_receive_buffer_size(None);
    config
}

/// SHA-256(`label` ‖ the identity's private key DER): a secret of the
/// identity that is the same for every run with the same identity file.
fn derive(identity: &Identity, label: &[u8]) -> aws_lc_rs::digest::Digest {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(label);
    ctx.update(identity.private_key().secret_der());
    ctx.finish()
}

/// The stateless-reset key of a listener with `identity`: HMAC-SHA256 keyed
/// with [`derive`]d bytes, nothing an observer of the link can compute.
pub(crate) fn reset_key(identity: &Identity) -> Arc<dyn quinn::crypto::HmacKey> {
    let secret = derive(identity, RESET_KEY_LABEL);
    Arc::new(aws_lc_rs::hmac::Key::new(
        aws_lc_rs::hmac::HMAC_SHA256,
        secret.as_ref(),
    ))
}

/// The endpoint configuration of a listener with `identity`: its
/// stateless-reset key ([`reset_key`]) and the key of its connection-id
/// check, both derived from the identity. A restarted listener must
/// recognise its previous run's connection ids as its own (quinn drops a
/// packet whose id fails the check before it would answer it) and then
/// compute the reset tokens it gave them.
fn listener_endpoint_config(identity: &Identity) -> EndpointConfig {
    let mut cid_key = [0u8; 8];
    for (k, b) in cid_key
        .iter_mut()
        .zip(derive(identity, CID_KEY_LABEL).as_ref())
    {
        *k = *b;
    }
    let cid_key = u64::from_le_bytes(cid_key);
    let mut config = EndpointConfig::new(reset_key(identity));
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    config
}

fn udp_socket(bind: SocketAddr) -> Result<std::net::UdpSocket, TransportError> {
    std::net::UdpSocket::bind(bind).map_err(|source| TransportError::Bind { addr: bind, source })
}

/// A QUIC listener on `bind` presenting `identity`
/// ([`tls::server_config`]), with [`transport_config`], and a reset key
/// and connection-id check derived from the identity (so that, restarted
/// with the same identity, it resets its previous run's connections).
/// Accept with [`Endpoint::accept`] (quinn goes on with a handshake only
/// once it is accepted); check the dialer with [`tls::peer_fingerprint`].
///
/// # Errors
///
/// [`TransportError::NoRuntime`] outside a tokio runtime,
/// [`TransportError::Bind`], [`TransportError::Tls`].
pub fn quic_server(bind: SocketAddr, identity: &Identity) -> Result<Endpoint, TransportError> {
    let runtime = quinn::default_runtime().ok_or(TransportError::NoRuntime)?;
    let crypto = QuicServerConfig::try_from(tls::server_config(identity)?)
        .map_err(|e| TransportError::Quic(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport_config()));
    Endpoint::new(
        listener_endpoint_config(identity),
        Some(server),
        udp_socket(bind)?,
        runtime,
    )
    .map_err(|source| TransportError::Bind { addr: bind, source })
}

/// A QUIC dialer on `bind` (port 0 for any), trusting listeners by `trust`
/// and presenting `identity` when given ([`tls::client_config`]), as its
/// default client configuration. Dial with [`quic_connect`].
///
/// # Errors
///
/// [`TransportError::NoRuntime`] outside a tokio runtime,
/// [`TransportError::Bind`], [`TransportError::Tls`].
pub fn quic_client(
    bind: SocketAddr,
    identity: Option<&Identity>,
    trust: &Trust,
) -> Result<Endpoint, TransportError> {
    let runtime = quinn::default_runtime().ok_or(TransportError::NoRuntime)?;
    let crypto = QuicClientConfig::try_from(tls::client_config(identity, trust)?)
        .map_err(|e| TransportError::Quic(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(Arc::new(transport_config()));
    let mut endpoint = Endpoint::new(EndpointConfig::default(), None, udp_socket(bind)?, runtime)
        .map_err(|source| TransportError::Bind { addr: bind, source })?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

/// Dials `addr` from a [`quic_client`] endpoint with `server_name`
/// ([`Trust::server_name`]) and completes the handshake (bounded by
/// [`IDLE_TIMEOUT`]).
///
/// # Errors
///
/// [`TransportError::Connect`], [`TransportError::Handshake`].
pub async fn quic_connect(
    endpoint: &Endpoint,
    addr: SocketAddr,
    server_name: &str,
) -> Result<quinn::Connection, TransportError> {
    let connecting = endpoint
        .connect(addr, server_name)
        .map_err(|source| TransportError::Connect { addr, source })?;
    connecting
        .await
        .map_err(|source| TransportError::Handshake { addr, source })
}

fn check_alpn(alpn: Option<&[u8]>, addr: SocketAddr) -> Result<(), TransportError> {
    if alpn == Some(ALPN) {
        Ok(())
    } else {
        Err(TransportError::Alpn { addr })
    }
}

/// Dials `addr` over TCP and completes a TLS 1.3 handshake with
/// `server_name` ([`Trust::server_name`]) and `config`
/// ([`tls::client_config`]), within [`CONNECT_TIMEOUT`]. `TCP_NODELAY` is
/// set.
///
/// # Errors
///
/// [`TransportError::ServerName`], [`TransportError::TcpConnect`],
/// [`TransportError::TlsHandshake`], [`TransportError::Alpn`],
/// [`TransportError::Timeout`].
pub async fn tcp_connect(
    addr: SocketAddr,
    server_name: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, TransportError> {
    let name =
        ServerName::try_from(server_name.to_owned()).map_err(|_| TransportError::ServerName {
            name: server_name.to_owned(),
        })?;
    let connector = TlsConnector::from(config);
    let dial = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| TransportError::TcpConnect { addr, source })?;
        tcp.set_nodelay(true)
            .map_err(|source| TransportError::TcpConnect { addr, source })?;
        let stream = connector
            .connect(name, tcp)
            .await
            .map_err(|source| TransportError::TlsHandshake { addr, source })?;
        check_alpn(stream.get_ref().1.alpn_protocol(), addr)?;
        Ok(stream)
    };
    tokio::time::timeout(CONNECT_TIMEOUT, dial)
        .await
        .map_err(|_| TransportError::Timeout {
            addr,
            timeout: CONNECT_TIMEOUT,
        })?
}

/// A TLS-over-TCP listener presenting an identity ([`tls::server_config`]).
pub struct TcpTlsListener {
    listener: TcpListener,
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for TcpTlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpTlsListener")
            .field("local_addr", &self.listener.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl TcpTlsListener {
    /// Listens on `bind`, presenting `identity`.
    ///
    /// # Errors
    ///
    /// [`TransportError::Tls`], [`TransportError::Bind`].
    pub async fn bind(bind: SocketAddr, identity: &Identity) -> Result<Self, TransportError> {
        let config = tls::server_config(identity)?;
        let listener = TcpListener::bind(bind)
            .await
            .map_err(|source| TransportError::Bind { addr: bind, source })?;
        Ok(Self {
            listener,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// The address it listens on (its port, when bound to port 0).
    ///
    /// # Errors
    ///
    /// What the operating system says.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The next TCP connection (with `TCP_NODELAY`), its TLS handshake not
    /// yet done: run [`TcpIncoming::handshake`] in a task of its own.
    ///
    /// # Errors
    ///
    /// [`TransportError::Accept`]: usually passing (too many open files, a
    /// connection reset before it was accepted); keep accepting.
    pub async fn accept(&self) -> Result<TcpIncoming, TransportError> {
        let (stream, peer) = self
            .listener
            .accept()
            .await
            .map_err(TransportError::Accept)?;
        stream.set_nodelay(true).map_err(TransportError::Accept)?;
        Ok(TcpIncoming {
            stream,
            peer,
            acceptor: self.acceptor.clone(),
        })
    }
}

/// An accepted TCP connection whose TLS handshake is still to do.
pub struct TcpIncoming {
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for TcpIncoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpIncoming")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl TcpIncoming {
    /// The dialer's address.
    #[must_use]
    pub fn remote_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Completes the TLS 1.3 handshake within [`CONNECT_TIMEOUT`]; then
    /// [`tls::tcp_peer_fingerprint`] says who dialed.
    ///
    /// # Errors
    ///
    /// [`TransportError::TlsHandshake`], [`TransportError::Alpn`],
    /// [`TransportError::Timeout`].
    pub async fn handshake(
        self,
    ) -> Result<tokio_rustls::server::TlsStream<TcpStream>, TransportError> {
        let addr = self.peer;
        let accept = async {
            let stream = self
                .acceptor
                .accept(self.stream)
                .await
                .map_err(|source| TransportError::TlsHandshake { addr, source })?;
            check_alpn(stream.get_ref().1.alpn_protocol(), addr)?;
            Ok(stream)
        };
        tokio::time::timeout(CONNECT_TIMEOUT, accept)
            .await
            .map_err(|_| TransportError::Timeout {
                addr,
                timeout: CONNECT_TIMEOUT,
            })?
    }
}
