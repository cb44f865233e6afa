//! Stream repeaters (PROTOCOL.md §12, docs/design/relay.md): carry a
//! stream from a network that has it by multicast to one that has not,
//! over QUIC (or TLS over TCP). Feature `relay`.
//!
//! One [`Relay`] reads a group and sends the stream to a far relay
//! (`from_group` + `to`); the far one listens and emits on its own group
//! (`listen` + `to_group`), and serves unicast subscribers. The relay
//! copies datagrams byte for byte and holds no key; it keeps a history to
//! answer the far side's NAKs there, and forwards what it cannot answer
//! upstream.
//!
//! ```no_run
//! use grapevine::relay::{tls::{Identity, Trust}, Relay};
//! use grapevine::socket::MulticastConfig;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // The far side: listens, emits on its group.
//! let mut far_group = MulticastConfig::default();
//! far_group.group("239.255.40.2".parse()?).port(40002);
//! let identity = Identity::generate()?;
//! let pin = identity.fingerprint();
//! let far = Relay::builder()
//!     .listen("0.0.0.0:4433".parse()?)
//!     .identity(identity)
//!     .allow_any_feeder()
//!     .to_group(far_group)
//!     .start()
//!     .await?;
//!
//! // The near side: reads the publisher's group, sends to the far side.
//! let mut near_group = MulticastConfig::default();
//! near_group.group("239.255.40.1".parse()?).port(40001);
//! let near = Relay::builder()
//!     .from_group(near_group)
//!     .to(far.local_addr().expect("listening"), Trust::Pin(pin))
//!     .start()
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! * [`tls`]: fingerprints, identities, pins and CA trust.
//! * [`transport`]: the QUIC and TLS-over-TCP endpoints.

mod client;
mod driver;
mod link;
pub mod tls;
pub mod transport;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use grapevine_core::relay::frame::{Hello, Role};
pub use grapevine_core::relay::{Dropped, RelayConfig, RelayStats};
use grapevine_core::relay::{LinkKind, Relay as Engine};
use grapevine_core::StreamId;
use tokio::sync::{mpsc, watch};

use crate::socket::{bind_receiver, bind_sender, MulticastConfig, SocketError};
pub(crate) use client::LinkIo;
pub use client::RelayLink;
use tls::{FeederPolicy, Fingerprint, Identity, TlsError, Trust};
use transport::TransportError;

/// The link transport.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transport {
    /// QUIC: one lane per stream, no head-of-line blocking across streams.
    #[default]
    Quic,
    /// TLS 1.3 over TCP, where UDP is not allowed: every stream on one
    /// connection.
    Tcp,
}

/// Why a relay could not start or went on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// A setting is missing or wrong.
    #[error("relay configuration: {0}")]
    Config(String),
    /// The engine's settings.
    #[error(transparent)]
    Core(#[from] grapevine_core::ConfigError),
    /// A multicast socket.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// An I/O error on a socket.
    #[error("relay socket: {0}")]
    Io(#[from] std::io::Error),
    /// TLS identities or trust.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Endpoints and connections.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// A link failed.
    #[error("relay link: {0}")]
    Link(String),
}

/// A relay's counters: the engine's and the links'.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Stats {
    /// The engine's counters.
    pub core: RelayStats,
    /// Links up now.
    pub links_up: usize,
    /// Unicast subscribers connected now.
    pub subscribers: usize,
    /// Links established since the start.
    pub link_connects: u64,
    /// Links lost since the start.
    pub link_failures: u64,
    /// Dial attempts that failed (connection, TLS, or refused).
    pub dial_failures: u64,
    /// Dialers this listener refused (not allowed, busy, itself).
    pub refused: u64,
}

/// Builds a [`Relay`]: see the module documentation.
#[derive(Debug, Default)]
#[must_use]
pub struct RelayBuilder {
    name: Option<String>,
    from_group: Option<MulticastConfig>,
    to_group: Option<MulticastConfig>,
    to: Option<(SocketAddr, Trust, Option<String>)>,
    listen: Option<SocketAddr>,
    transport: Transport,
    identity: Option<Identity>,
    feeders: Option<FeederPolicy>,
    no_subscribers: bool,
    max_subscribers: Option<usize>,
    config: RelayConfig,
}

impl RelayBuilder {
    /// A name for logs (default `relay`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Reads the stream from this group.
    pub fn from_group(mut self, group: MulticastConfig) -> Self {
        self.from_group = Some(group);
        self
    }

    /// Emits what links deliver on this group.
    pub fn to_group(mut self, group: MulticastConfig) -> Self {
        self.to_group = Some(group);
        self
    }

    /// Sends the stream to the relay listening at `addr`, trusting its
    /// certificate by `trust`.
    pub fn to(mut self, addr: SocketAddr, trust: Trust) -> Self {
        self.to = Some((addr, trust, None));
        self
    }

    /// The name checked in the listener's certificate with [`Trust::Ca`]
    /// (default: the address of [`RelayBuilder::to`]).
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        if let Some(to) = &mut self.to {
            to.2 = Some(name.into());
        }
        self
    }

    /// Listens for feeders and unicast subscribers on `addr`.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = Some(addr);
        self
    }

    /// QUIC (default) or TLS over TCP, for both dialing and listening.
    pub fn transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// The certificate and key this relay presents (a listener's is made
    /// if none is given; a dialer presents none then).
    pub fn identity(mut self, identity: Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Admits a feeder presenting the certificate with this fingerprint
    /// (repeatable). Without any, a listener admits no feeder.
    pub fn allow_feeder(mut self, fingerprint: Fingerprint) -> Self {
        match &mut self.feeders {
            Some(FeederPolicy::Allow(list)) => list.push(fingerprint),
            _ => self.feeders = Some(FeederPolicy::Allow(vec![fingerprint])),
        }
        self
    }

    /// Admits any feeder: anyone who reaches the listener can then emit
    /// datagrams on its group (harmless to authenticated streams only).
    pub fn allow_any_feeder(mut self) -> Self {
        self.feeders = Some(FeederPolicy::Any);
        self
    }

    /// Serves no unicast subscribers.
    pub fn no_subscribers(mut self) -> Self {
        self.no_subscribers = true;
        self
    }

    /// Most unicast subscribers at once (default 64).
    pub fn max_subscribers(mut self, n: usize) -> Self {
        self.max_subscribers = Some(n);
        self
    }

    /// The streams carried (default: any, up to 16).
    pub fn streams(mut self, streams: impl IntoIterator<Item = StreamId>) -> Self {
        self.config.streams = streams.into_iter().collect();
        self
    }

    /// The engine's settings (queues, history, budgets).
    pub fn config(mut self, config: RelayConfig) -> Self {
        let streams = std::mem::take(&mut self.config.streams);
        self.config = config;
        if self.config.streams.is_empty() {
            self.config.streams = streams;
        }
        self
    }

    /// Binds, dials and listens as configured, and starts the relay's
    /// tasks on the current tokio runtime.
    ///
    /// # Errors
    ///
    /// [`RelayError::Config`] for a relay with nothing to read or nowhere
    /// to send, and the socket, TLS and endpoint errors.
    pub async fn start(self) -> Result<Relay, RelayError> {
        if self.from_group.is_none() && self.listen.is_none() {
            return Err(RelayError::Config(
                "nothing to relay: give a group to read (--from-group) or an address to listen on (--listen)".into(),
            ));
        }
        if self.to.is_none() && self.to_group.is_none() && self.listen.is_none() {
            return Err(RelayError::Config(
                "nowhere to send: give --to HOST:PORT, --to-group GROUP:PORT, or --listen for unicast subscribers".into(),
            ));
        }
        if self.from_group.is_some() && self.to_group.is_some() {
            return Err(RelayError::Config(
                "--from-group and --to-group together would relay a group onto another on this host: run two relays joined by a link".into(),
            ));
        }
        let mut config = self.config.clone();
        config.emit_to_group = self.to_group.is_some();
        config.validate()?;
        let name = self.name.clone().unwrap_or_else(|| "relay".into());
        let relay_id = rand::random::<u64>();
        let max_datagram = 65_507u32;
        let now = std::time::Instant::now();
        let mut engine = Engine::new(config, now, rand::random());
        let group_rx = match &self.from_group {
            Some(g) => Some(bind_receiver(g)?.into_tokio()?),
            None => None,
        };
        // The socket that emits on the far group (and hears its NAKs), or
        // sends NAKs to the publisher.
        let sender_cfg = self.to_group.as_ref().or(self.from_group.as_ref());
        let sender = match sender_cfg {
            Some(g) => bind_sender(g)?.into_tokio()?,
            None => tokio::net::UdpSocket::bind("0.0.0.0:0").await?,
        };
        engine.add_own_address(sender.local_addr()?);
        let to_group = self.to_group.as_ref().map(MulticastConfig::group_addr);
        let (events_tx, events) = mpsc::channel(1024);
        let (stop_tx, stop) = watch::channel(false);
        let stats = Arc::new(Mutex::new(Stats::default()));
        let mut fingerprint = self.identity.as_ref().map(Identity::fingerprint);
        let mut local_addr = None;
        let mut tasks = Vec::new();
        if let Some(addr) = self.listen {
            let identity = match &self.identity {
                Some(i) => i.clone(),
                None => Identity::generate()?,
            };
            fingerprint = Some(identity.fingerprint());
            let (quic, tcp, local) = driver::listen(addr, self.transport, &identity).await?;
            local_addr = Some(local);
            let listener = driver::Listener {
                quic,
                tcp,
                relay_id,
                max_datagram,
                feeders: self
                    .feeders
                    .clone()
                    .unwrap_or(FeederPolicy::Allow(Vec::new())),
                subscribers: !self.no_subscribers,
                max_subscribers: self.max_subscribers.unwrap_or(64),
                subscriber_count: Arc::default(),
                stats: Arc::clone(&stats),
                events: events_tx.clone(),
                name: name.clone(),
            };
            tasks.push(tokio::spawn(listener.run()));
        }
        if let Some((to, trust, server_name)) = self.to.clone() {
            engine.add_link(
                driver::DIALED,
                LinkKind::Sink {
                    streams: vec![],
                    max_datagram: max_datagram as usize,
                },
                false,
            );
            let server_name =
                server_name.unwrap_or_else(|| trust.server_name(&to.ip().to_string()).to_string());
            let dialer = driver::Dialer {
                to,
                server_name,
                trust,
                identity: self.identity.clone(),
                transport: self.transport,
                hello: Hello {
                    role: Role::Feeder,
                    relay_id,
                    max_datagram,
                    streams: self.config.streams.clone(),
                },
                events: events_tx.clone(),
                stop: stop.clone(),
                stats: Arc::clone(&stats),
                name: name.clone(),
            };
            tasks.push(tokio::spawn(dialer.run()));
        }
        let main = driver::Main {
            engine,
            group_rx,
            sender,
            to_group,
            events,
            events_tx,
            stats: Arc::clone(&stats),
            stop: stop.clone(),
            name: name.clone(),
            metrics_due: None,
        };
        let main = tokio::spawn(main.run());
        tracing::info!(relay = %name, listen = ?local_addr, "relay started");
        Ok(Relay {
            stats,
            local_addr,
            fingerprint,
            stop: stop_tx,
            main: Some(main),
            tasks,
        })
    }
}

/// A running relay. Dropping it stops it.
#[derive(Debug)]
pub struct Relay {
    stats: Arc<Mutex<Stats>>,
    local_addr: Option<SocketAddr>,
    fingerprint: Option<Fingerprint>,
    stop: watch::Sender<bool>,
    main: Option<tokio::task::JoinHandle<Result<(), RelayError>>>,
    tasks: Vec<tokio::task::JoinHandle<Result<(), RelayError>>>,
}

impl Relay {
    /// A builder.
    pub fn builder() -> RelayBuilder {
        RelayBuilder::default()
    }

    /// The counters, as of the last 50 ms.
    #[must_use]
    pub fn stats(&self) -> Stats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The address it listens on, if it does.
    #[must_use]
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// The fingerprint of the certificate it presents, if any.
    #[must_use]
    pub fn fingerprint(&self) -> Option<Fingerprint> {
        self.fingerprint
    }

    /// Stops the relay and waits for its main task (at most 2 s).
    pub async fn close(mut self) {
        let _ = self.stop.send(true);
        if let Some(main) = self.main.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), main).await;
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for t in &self.tasks {
            t.abort();
        }
        if let Some(m) = &self.main {
            m.abort();
        }
    }
}
