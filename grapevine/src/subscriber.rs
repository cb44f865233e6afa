//! The subscribing side: a [`Subscriber`] joins the group, keeps a replica of
//! the publisher's state, and reports where the replica stands.
//!
//! # Following a keyed map
//!
//! ```
//! use std::collections::BTreeMap;
//! use std::time::Duration;
//! use grapevine::{Event, MapDelta, Publisher, Subscriber};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), grapevine::Error> {
//! let (group, port) = ("239.255.28.14".parse().unwrap(), 28014);
//! let mut subscriber = Subscriber::<BTreeMap<String, u64>>::builder()
//!     .group(group)
//!     .port(port)
//!     .bind()
//!     .await?;
//! // The publisher's state type must be the subscriber's: nothing on the
//! // wire tells a u64 from an i32.
//! let publisher = Publisher::builder()
//!     .group(group)
//!     .port(port)
//!     .bind(BTreeMap::<String, u64>::new())
//!     .await?;
//! publisher.publish(MapDelta::Upsert("ACME".to_string(), 101))?;
//!
//! // Wait (at most 10 s) until the replica is complete and up to date.
//! let status = subscriber
//!     .wait_until(|s| s.consistent && s.seq == publisher.last_seq(), Duration::from_secs(10))
//!     .await?;
//! assert_eq!(status.session, Some(publisher.session()));
//! assert_eq!(subscriber.read(|map| map.get("ACME").copied()), Some(101));
//! assert_eq!(subscriber.digest(), publisher.digest());
//!
//! // What happened, in order.
//! let first = subscriber.next_event().await;
//! assert!(matches!(first, Some(Event::SessionStarted { .. })));
//! # Ok(())
//! # }
//! ```
//!
//! # How it runs
//!
//! [`bind`](SubscriberBuilder::bind) joins the group and starts a driver (a
//! tokio task, or a busy-poll thread: [`Driver`]) that receives datagrams in
//! batches (one `recvmmsg`, with GRO where the kernel has it), feeds them
//! and the protocol's timers to the sans-IO core, sends the core's NAKs by
//! unicast to the publisher's source address (from the same socket), forwards the core's
//! [`Event`]s to [`next_event`](Subscriber::next_event) and publishes the
//! [`Status`] that [`wait_until`](Subscriber::wait_until) watches. The
//! replica sits behind a mutex that is never held across an `.await`;
//! [`read`](Subscriber::read) locks it briefly.

use std::fmt;
use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use grapevine_core::auth::{Keyring, Security};
use grapevine_core::schema::{Schema, SchemaFingerprint};
use grapevine_core::state::{decode, Digest, State, Typed};
use grapevine_core::subscriber::{
    Event, Status, Subscriber as CoreSubscriber, SubscriberConfig, SubscriberStats as CoreStats,
};
use grapevine_core::StreamId;
use tokio::sync::{mpsc, watch};

use crate::driver::subscriber::{Outputs, SubscriberEngine, SubscriberShared};
use crate::driver::Driver;
use crate::error::Error;
use crate::io::{DatagramIo, Loss, Lossy, UdpIo};
use crate::metrics::SubscriberMetrics;
use crate::runtime::{spawn_subscriber, Running};
use crate::socket::{bind_receiver, Interface, MulticastConfig};

/// Default capacity of the event channel.
const DEFAULT_EVENT_CAPACITY: usize = 1_024;

/// Counters of a [`Subscriber`]: the protocol's and the socket's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscriberStats {
    /// The protocol engine's counters (datagrams it saw, deltas applied,
    /// snapshots, gaps, malformed input, ...).
    pub protocol: CoreStats,
    /// Datagrams received from the socket (simulated drops included).
    pub datagrams_received: u64,
    /// Bytes received from the socket.
    pub bytes_received: u64,
    /// Batched receive calls that brought them.
    pub recv_batches: u64,
    /// Datagrams dropped by [`SubscriberBuilder::simulate_loss`].
    pub simulated_drops: u64,
    /// Receive errors reported by the socket.
    pub recv_errors: u64,
    /// NAK datagrams handed to the socket.
    pub naks_sent: u64,
    /// NAK datagrams the socket refused (the hole is then repaired by a
    /// later NAK or by snapshots).
    pub send_errors: u64,
    /// Events dropped because the channel read by
    /// [`Subscriber::next_event`] was full.
    pub events_dropped: u64,
}

/// Configures and binds a [`Subscriber`]. Get one from
/// [`Subscriber::builder`].
///
/// Every setting has a default: group 239.255.77.77, port 7777, the loopback
/// interface, stream 1, the protocol defaults of [`SubscriberConfig`] and an
/// event channel of 1,024 events.
///
/// The builder is typed by the state it will replicate: name it as in
/// `Subscriber::<MyState>::builder()`, or let it be inferred from the type
/// the bound subscriber is given.
#[must_use = "a builder does nothing until `bind` is called"]
pub struct SubscriberBuilder<S> {
    protocol: SubscriberConfig,
    multicast: MulticastConfig,
    loss: Option<Loss>,
    event_capacity: usize,
    driver: Driver,
    name: Option<String>,
    #[cfg(feature = "relay")]
    relay: Option<crate::relay::RelayLink>,
    state: PhantomData<fn() -> S>,
}

impl<S> Default for SubscriberBuilder<S> {
    fn default() -> Self {
        Self {
            protocol: SubscriberConfig::default(),
            multicast: MulticastConfig::default(),
            loss: None,
            event_capacity: DEFAULT_EVENT_CAPACITY,
            driver: Driver::default(),
            name: None,
            #[cfg(feature = "relay")]
            relay: None,
            state: PhantomData,
        }
    }
}

impl<S> Clone for SubscriberBuilder<S> {
    fn clone(&self) -> Self {
        Self {
            protocol: self.protocol.clone(),
            multicast: self.multicast.clone(),
            loss: self.loss,
            event_capacity: self.event_capacity,
            driver: self.driver,
            name: self.name.clone(),
            #[cfg(feature = "relay")]
            relay: self.relay.clone(),
            state: PhantomData,
        }
    }
}

impl<S> fmt::Debug for SubscriberBuilder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriberBuilder")
            .field("protocol", &self.protocol)
            .field("multicast", &self.multicast)
            .field("loss", &self.loss)
            .field("event_capacity", &self.event_capacity)
            .field("driver", &self.driver)
            .field("name", &self.name)
            .finish()
    }
}

impl<S> SubscriberBuilder<S> {
    /// Authenticate every datagram, both ways, with these keys
    /// (PROTOCOL.md §11), and encrypt if it says so. Every publisher and
    /// subscriber of the stream needs the same keys; datagrams that do not
    /// open are dropped and counted. Set it after
    /// [`protocol`](Self::protocol), which replaces it.
    ///
    /// ```
    /// use grapevine::core::auth::{Keyring, Security};
    /// use grapevine::keys;
    ///
    /// let ring = Keyring::new(vec![keys::generate()?])?;
    /// let builder = grapevine::Subscriber::<std::collections::BTreeMap<u32, u32>>::builder()
    ///     .security(Security::new(ring));
    /// # drop(builder);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn security(mut self, security: Security) -> Self {
        self.protocol.security(Some(security));
        self
    }

    /// The multicast group (default 239.255.77.77).
    pub fn group(mut self, group: IpAddr) -> Self {
        self.multicast.group(group);
        self
    }

    /// The UDP port (default 7777).
    pub fn port(mut self, port: u16) -> Self {
        self.multicast.port(port);
        self
    }

    /// The interface to join the group on (default [`Interface::Loopback`]:
    /// only publishers on this host are heard).
    pub fn interface(mut self, interface: Interface) -> Self {
        self.multicast.interface(interface);
        self
    }

    /// The stream to follow (default 1); other streams on the group are
    /// ignored.
    pub fn stream(mut self, stream: StreamId) -> Self {
        self.protocol.stream(stream);
        self
    }

    /// How long a missing delta is waited for before it is declared lost and
    /// left to snapshot repair (default 20 ms).
    pub fn reorder_timeout(mut self, timeout: Duration) -> Self {
        self.protocol.reorder_timeout(timeout);
        self
    }

    /// How long a NAK waits for its repair before it is sent again (default
    /// 20 ms). Through a relay pair over a long link, NAKs that the far
    /// relay cannot answer cross it: give about the link's round trip.
    pub fn repair_timeout(mut self, timeout: Duration) -> Self {
        self.protocol.repair_timeout(timeout);
        self
    }

    /// After how many heartbeat intervals of silence the publisher is
    /// reported gone (default 5).
    pub fn missed_heartbeats(mut self, n: u32) -> Self {
        self.protocol.missed_heartbeats(n);
        self
    }

    /// Replaces the whole protocol configuration, including the stream,
    /// reorder timeout and missed heartbeats set before.
    pub fn protocol(mut self, config: SubscriberConfig) -> Self {
        self.protocol = config;
        self
    }

    /// Replaces the whole socket configuration, including the group, port and
    /// interface set before. Use it for the receive buffer size.
    pub fn multicast(mut self, config: MulticastConfig) -> Self {
        self.multicast = config;
        self
    }

    /// How many events [`Subscriber::next_event`] can fall behind before
    /// newer ones are dropped and counted (default 1,024; at least 1).
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity.max(1);
        self
    }

    /// **For demos and tests:** wraps the socket in [`Lossy`], which drops
    /// received datagrams as `loss` says before the protocol sees them, to
    /// show recovery from loss without touching the network. Dropped
    /// datagrams are counted in [`SubscriberStats::simulated_drops`].
    ///
    /// ```
    /// # use std::collections::BTreeMap;
    /// use grapevine::io::Loss;
    /// use grapevine::Subscriber;
    ///
    /// let builder = Subscriber::<BTreeMap<u32, u32>>::builder()
    ///     .simulate_loss(Loss::new(0.05, 7)?);
    /// # drop(builder);
    /// # Ok::<(), grapevine::io::LossError>(())
    /// ```
    pub fn simulate_loss(mut self, loss: Loss) -> Self {
        self.loss = Some(loss);
        self
    }

    /// How the background driver waits (default [`Driver::Tokio`]).
    pub fn driver(mut self, driver: Driver) -> Self {
        self.driver = driver;
        self
    }

    /// A name for this subscriber, in its log lines (the `subscriber`
    /// span) and as the `name` label of its [metrics](crate::metrics)
    /// (default: none). Give one to each of several subscribers of a
    /// stream in one process, or their metrics are one.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Subscribes through a relay listener (`grapevine relay --listen`)
    /// instead of a multicast group, for hosts with no multicast at all:
    /// the stream's datagrams come over the link, NAKs go back on it, and
    /// everything else is as on a group (the multicast settings are not
    /// used). Feature `relay`.
    ///
    /// ```no_run
    /// # use std::collections::BTreeMap;
    /// use grapevine::relay::{tls::{Fingerprint, Trust}, RelayLink};
    /// use grapevine::Subscriber;
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// // What the listener printed as `fingerprint:`.
    /// let pin: Fingerprint = "3f1c9a...".parse()?;
    /// let link = RelayLink::new("203.0.113.7:7443".parse()?, Trust::Pin(pin));
    /// let sub = Subscriber::<BTreeMap<String, u64>>::builder().relay(link).bind().await?;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "relay")]
    pub fn relay(mut self, link: crate::relay::RelayLink) -> Self {
        self.relay = Some(link);
        self
    }

    /// The schema name expected of the publisher (PROTOCOL.md §8.2,
    /// "Schema"). Default: the state's [`State::schema_name`]. A publisher
    /// announcing another one is reported
    /// ([`Event::SchemaMismatch`], [`Error::SchemaMismatch`] from
    /// [`Subscriber::wait_until`]) and not followed; one that announces
    /// none (an older version) is followed.
    pub fn schema(mut self, name: impl Into<String>) -> Self {
        self.protocol.expect_schema(Schema::named(name));
        self
    }

    /// Checks the configuration, joins the group and starts the background
    /// task, with an empty replica (`S::default()`).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an invalid protocol setting,
    /// [`Error::Socket`] for an invalid multicast setting or a socket that
    /// cannot be set up, [`Error::Io`] if the socket's batching options
    /// cannot be set or the busy-poll thread cannot be started.
    ///
    /// # Panics
    ///
    /// With [`Driver::Tokio`], panics when called outside a tokio runtime.
    pub async fn bind(self) -> Result<Subscriber<S>, Error>
    where
        S: State + Default + Send + 'static,
    {
        self.bind_with(S::default()).await
    }

    /// As [`bind`](Self::bind), with `empty` as the replica, for states
    /// without a [`Default`]. Its leaves are cleared first.
    ///
    /// # Errors
    ///
    /// As [`bind`](Self::bind).
    ///
    /// # Panics
    ///
    /// With [`Driver::Tokio`], panics when called outside a tokio runtime.
    pub async fn bind_with(self, mut empty: S) -> Result<Subscriber<S>, Error>
    where
        S: State + Send + 'static,
    {
        self.multicast.validate()?;
        let mut protocol = self.protocol;
        if protocol.expected_schema().is_none() {
            protocol.expect_schema(Schema::of::<S>());
        }
        if !protocol.is_seeded() {
            // Different NAK delays and requester ids on every subscriber.
            protocol.rng_seed(crate::random::random_u64());
        }
        let stream = protocol.stream_id();
        #[cfg(feature = "relay")]
        let max_datagram = protocol.max_datagram_size();
        let core = CoreSubscriber::new(protocol)?;
        #[cfg(feature = "relay")]
        let (io, group) = match self.relay {
            Some(link) => {
                let addr = link.addr;
                let io = crate::relay::LinkIo::connect(link, stream, max_datagram)?;
                (with_loss(io, self.loss), addr)
            }
            None => {
                let socket = bind_receiver(&self.multicast)?;
                let group = socket.group_addr();
                (with_loss(UdpIo::new(socket)?, self.loss), group)
            }
        };
        #[cfg(not(feature = "relay"))]
        let (io, group) = {
            let socket = bind_receiver(&self.multicast)?;
            let group = socket.group_addr();
            (with_loss(UdpIo::new(socket)?, self.loss), group)
        };

        empty.clear();
        let (event_tx, event_rx) = mpsc::channel(self.event_capacity);
        let (status_tx, status_rx) = watch::channel(Status::default());
        let name = self.name.as_deref();
        let metrics = SubscriberMetrics::new(stream, name, crate::metrics::inode_of(io.fd()));
        let engine = SubscriberEngine::new(core, Typed::new(empty), metrics);
        let outputs = Outputs {
            events: event_tx,
            status: status_tx,
        };
        let shared = Arc::new(SubscriberShared::new(engine, io));
        // At error level, so that it names the lines of every level shown.
        let span = tracing::error_span!("subscriber", stream = stream.0, name);
        let driver = spawn_subscriber(self.driver, &shared, outputs, span.clone())?;
        span.in_scope(|| tracing::info!(%group, "subscriber started"));
        Ok(Subscriber {
            shared,
            events: event_rx,
            status: status_rx,
            driver: Some(driver),
            group,
        })
    }
}

/// `io`, wrapped in [`Lossy`] when asked.
fn with_loss(io: impl DatagramIo, loss: Option<Loss>) -> Arc<dyn DatagramIo> {
    match loss {
        Some(loss) => Arc::new(Lossy::new(io, loss)),
        None => Arc::new(io),
    }
}

/// Follows a publisher's state: see the [module docs](self).
///
/// Dropping the handle (or [`shutdown`](Self::shutdown)) leaves the group and
/// stops the background task.
pub struct Subscriber<S> {
    shared: Arc<SubscriberShared<S>>,
    events: mpsc::Receiver<Event>,
    status: watch::Receiver<Status>,
    driver: Option<Running>,
    group: SocketAddr,
}

impl<S> Subscriber<S> {
    /// A builder with every setting at its default.
    ///
    /// ```
    /// use std::collections::BTreeMap;
    /// use grapevine::{Error, Subscriber};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let err = Subscriber::<BTreeMap<u32, u32>>::builder()
    ///     .port(28015)
    ///     .reorder_timeout(std::time::Duration::from_secs(1_000_000))
    ///     .bind()
    ///     .await
    ///     .unwrap_err();
    /// assert!(matches!(err, Error::Config(_)), "{err}");
    /// # }
    /// ```
    pub fn builder() -> SubscriberBuilder<S> {
        SubscriberBuilder::default()
    }
}

impl<S: State + Send + 'static> Subscriber<S> {
    /// Calls `f` with the replica and returns what it returns. The replica
    /// is locked meanwhile, which holds up the background task: keep `f`
    /// short, and do not call this subscriber's methods from it (that would
    /// deadlock). Check [`status`](Self::status) to know whether the replica
    /// is complete and up to date.
    pub fn read<R>(&self, f: impl FnOnce(&S) -> R) -> R {
        f(self.shared.lock().replica.state())
    }

    /// Where the replica stands now.
    pub fn status(&self) -> Status {
        self.shared.lock().core.status()
    }

    /// The schema the followed publisher last announced, if it announces
    /// one (PROTOCOL.md §4.8).
    pub fn stream_schema(&self) -> Option<Schema> {
        self.shared.lock().core.stream_schema().cloned()
    }

    /// The schema this subscriber expects.
    pub fn expected_schema(&self) -> Option<Schema> {
        self.shared.lock().core.config().expected_schema().cloned()
    }

    /// The share of the time since the replica first synced (in the current
    /// publisher session) during which it was consistent; `None` before sync.
    pub fn consistent_share(&self) -> Option<f64> {
        self.shared.lock().core.consistent_share(Instant::now())
    }

    /// Opens with these keys from now on, and seals its NAKs with the first:
    /// a key rotation without a restart (PROTOCOL.md §11.3).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if the subscriber was started without a key.
    pub fn set_keys(&self, keyring: Keyring) -> Result<(), Error> {
        self.shared.lock().core.set_keys(keyring)?;
        tracing::info!("keys rotated");
        Ok(())
    }

    /// A handle that rotates this subscriber's keys from another task or
    /// thread, as [`set_keys`](Self::set_keys).
    pub fn rekeyer(&self) -> crate::Rekeyer
    where
        S: Send + 'static,
    {
        let shared = Arc::clone(&self.shared);
        crate::Rekeyer::new(move |ring| {
            shared.lock().core.set_keys(ring)?;
            Ok(())
        })
    }

    /// The counters.
    pub fn stats(&self) -> SubscriberStats {
        self.shared.lock().all_stats(&*self.shared.io)
    }

    /// The [`Digest`] of the replica, equal to the publisher's
    /// [`Publisher::digest`](crate::Publisher::digest) when both hold the
    /// same leaves. The first call walks every leaf; from then on the
    /// digest is kept up to date as the replica changes (two leaf hashes
    /// per delta or snapshot applied) and later calls are O(1).
    pub fn digest(&self) -> Digest {
        self.shared.lock().replica.kept_digest()
    }

    /// The next event, waiting for one. Returns `None` once the background
    /// task has stopped. Events the application does not read fast enough
    /// are dropped once [`SubscriberBuilder::event_capacity`] are pending,
    /// and counted in [`SubscriberStats::events_dropped`].
    ///
    /// `Subscriber` is also a [`Stream`](futures_core::Stream) of the same
    /// events, for stream combinators:
    ///
    /// ```
    /// # use std::collections::BTreeMap;
    /// # use grapevine::{Event, MapDelta, Publisher, Subscriber};
    /// use std::pin::Pin;
    /// use futures_core::Stream;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), grapevine::Error> {
    /// # let group = "239.255.28.19".parse().unwrap();
    /// let mut sub = Subscriber::<BTreeMap<u32, u32>>::builder().group(group).port(28019).bind().await?;
    /// let publisher = Publisher::builder().group(group).port(28019).bind(BTreeMap::<u32, u32>::new()).await?;
    /// publisher.publish(MapDelta::Upsert(1, 2))?;
    /// let first = std::future::poll_fn(|cx| Pin::new(&mut sub).poll_next(cx)).await;
    /// assert!(matches!(first, Some(Event::SessionStarted { .. })));
    /// # Ok(()) }
    /// ```
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// The next event if one is pending, without waiting.
    pub fn try_next_event(&mut self) -> Option<Event> {
        self.events.try_recv().ok()
    }

    /// Waits until `pred` holds for the [`Status`] (checked now and after
    /// every batch of datagrams or timer expiry), at most `timeout`, and
    /// returns the status that satisfied it.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] with the last status if `timeout` passed first;
    /// [`Error::Closed`] if the background task has stopped;
    /// [`Error::SchemaMismatch`] as soon as the publisher is found to send
    /// another schema than the one expected (and `pred` does not hold):
    /// waiting longer would not help.
    pub async fn wait_until(
        &self,
        pred: impl Fn(&Status) -> bool,
        timeout: Duration,
    ) -> Result<Status, Error> {
        let mut status = self.status.clone();
        let waited = tokio::time::timeout(timeout, async {
            status
                .wait_for(|s| pred(s) || s.schema_mismatch.is_some())
                .await
                .map(|found| *found)
        })
        .await;
        match waited {
            Ok(Ok(found)) if !pred(&found) => Err(self.schema_error(&found)),
            Ok(Ok(found)) => Ok(found),
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(Error::Timeout {
                waited: timeout,
                status: self.status(),
            }),
        }
    }

    /// The [`Error::SchemaMismatch`] for a status that reports one.
    fn schema_error(&self, status: &Status) -> Error {
        let engine = self.shared.lock();
        let core = &engine.core;
        let found_fp = status.schema_mismatch.unwrap_or(SchemaFingerprint(0));
        let found = core
            .stream_schema()
            .filter(|s| s.fingerprint() == found_fp)
            .cloned()
            .unwrap_or_else(|| Schema::from_parts(found_fp, ""));
        let expected = core
            .config()
            .expected_schema()
            .cloned()
            .unwrap_or_else(|| Schema::from_parts(SchemaFingerprint(0), ""));
        Error::SchemaMismatch { expected, found }
    }

    /// Decodes a key as carried by [`Event::LeafStale`],
    /// [`Event::LeafRepaired`] and [`Event::ApplyFailed`]; `None` if the
    /// bytes are not a key of `S`.
    pub fn decode_key(&self, key: &[u8]) -> Option<S::Key> {
        decode(key).ok()
    }

    /// The group address the subscriber listens on.
    pub fn group_addr(&self) -> SocketAddr {
        self.group
    }

    /// Stops the driver, waits until it has stopped, and leaves the
    /// group. (Dropping the handle stops the driver too, without waiting.)
    pub async fn shutdown(mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(driver) = self.driver.take() {
            driver.abort();
            driver.join().await;
        }
    }
}

impl<S> Drop for Subscriber<S> {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(driver) = self.driver.take() {
            driver.abort();
        }
    }
}

impl<S> fmt::Debug for Subscriber<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriber")
            .field("group", &self.group)
            .field("status", &*self.status.borrow())
            .finish_non_exhaustive()
    }
}

impl<S> futures_core::Stream for Subscriber<S> {
    type Item = Event;

    /// The next event, as [`Subscriber::next_event`].
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Event>> {
        self.events.poll_recv(cx)
    }
}
