//! The publishing side: a [`Publisher`] owns the authoritative state, applies
//! and multicasts deltas, and keeps a background task that cycles leaf
//! snapshots and heartbeats.
//!
//! # Publishing a keyed map
//!
//! ```
//! use std::collections::BTreeMap;
//! use grapevine::{MapDelta, Publisher};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), grapevine::Error> {
//! let publisher = Publisher::builder()
//!     .group("239.255.28.11".parse().unwrap())
//!     .port(28011)
//!     .bind(BTreeMap::<String, u64>::new())
//!     .await?;
//! let seq = publisher.publish(MapDelta::Upsert("ACME".into(), 101))?;
//! assert_eq!(seq, publisher.last_seq());
//! assert_eq!(publisher.read(|map| map.get("ACME").copied()), Some(101));
//! publisher.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! # How it runs
//!
//! [`publish`](Publisher::publish) applies the delta to the local state,
//! stamps it with the next sequence number and sends it at once from the
//! calling thread, with one non-blocking send
//! ([`publish_batch`](Publisher::publish_batch) packs many deltas to a
//! datagram and sends up to ~44 datagrams per system call with UDP GSO). Nothing else happens on the
//! caller's thread: the snapshot cycle, the heartbeats, the answers to
//! subscribers' NAKs (they arrive by unicast on the publisher's socket, the
//! source address of its datagrams) and anything `publish` could not send
//! because the socket buffer was full are the driver's, a tokio task or a
//! busy-poll thread ([`Driver`]). The state sits behind a mutex that is never
//! held across an `.await`.
//!
//! # When the socket cannot keep up
//!
//! Datagrams that wait for the socket are bounded
//! ([`PublisherConfig::max_queued_bytes`], 4 MiB by default): beyond it the
//! oldest are shed and counted in [`PublisherStats::protocol`]
//! (`datagrams_shed`), so memory never grows with the offered rate, and
//! subscribers repair what was shed like any loss. An application that would
//! rather slow down awaits [`Publisher::ready`] before publishing
//! (back-pressure).
//!
//! A datagram the operating system refuses (other than "would block") is
//! dropped and counted in [`PublisherStats::send_errors`], like a loss on the
//! network: subscribers repair it by NAK or from the snapshot cycle.

use std::fmt;
use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use grapevine_core::auth::{Keyring, Security};
use grapevine_core::publisher::{
    Publisher as CorePublisher, PublisherConfig, PublisherStats as CoreStats, SnapshotRate,
};
use grapevine_core::schema::Schema;
use grapevine_core::state::{encode, Digest, State, Typed};
use grapevine_core::{SeqNum, SessionId, StreamId};

use crate::driver::publisher::{PublisherEngine, PublisherShared};
use crate::driver::{segments_for, Driver};
use crate::error::Error;
use crate::io::{DatagramIo, UdpIo};
use crate::runtime::{spawn_publisher, Running};
use crate::socket::{bind_sender, Interface, MulticastConfig};

/// Counters of a [`Publisher`]: the protocol's and the socket's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PublisherStats {
    /// The protocol engine's counters (deltas, snapshots, cycles,
    /// heartbeats, datagrams produced).
    pub protocol: CoreStats,
    /// Datagrams handed to the socket.
    pub datagrams_sent: u64,
    /// Send calls that carried them (several datagrams per call with GSO).
    pub send_calls: u64,
    /// Bytes handed to the socket.
    pub bytes_sent: u64,
    /// Datagrams the operating system refused (dropped, repaired by
    /// snapshots).
    pub send_errors: u64,
    /// Times the socket's send buffer was full and sending waited.
    pub send_blocked: u64,
    /// Datagrams received on the publisher's socket (NAKs).
    pub datagrams_received: u64,
    /// Receive errors on the publisher's socket.
    pub recv_errors: u64,
}

/// Configures and binds a [`Publisher`]. Get one from
/// [`Publisher::builder`].
///
/// Every setting has a default: group 239.255.77.77, port 7777, the
/// loopback interface, stream 1, 100,000 leaves per second of snapshots,
/// heartbeats every 100 ms, 1,452-byte datagrams and a random session id.
///
/// The builder is typed by the state it will publish, inferred from
/// [`bind`](Self::bind)'s argument.
#[must_use = "a builder does nothing until `bind` is called"]
pub struct PublisherBuilder<S> {
    protocol: PublisherConfig,
    multicast: MulticastConfig,
    session: Option<u64>,
    driver: Driver,
    name: Option<String>,
    state: PhantomData<fn() -> S>,
}

impl<S> Default for PublisherBuilder<S> {
    fn default() -> Self {
        Self {
            protocol: PublisherConfig::default(),
            multicast: MulticastConfig::default(),
            session: None,
            driver: Driver::default(),
            name: None,
            state: PhantomData,
        }
    }
}

impl<S> Clone for PublisherBuilder<S> {
    fn clone(&self) -> Self {
        Self {
            protocol: self.protocol.clone(),
            multicast: self.multicast.clone(),
            session: self.session,
            driver: self.driver,
            name: self.name.clone(),
            state: PhantomData,
        }
    }
}

impl<S> fmt::Debug for PublisherBuilder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublisherBuilder")
            .field("protocol", &self.protocol)
            .field("multicast", &self.multicast)
            .field("session", &self.session)
            .field("driver", &self.driver)
            .field("name", &self.name)
            .finish()
    }
}

impl<S> PublisherBuilder<S> {
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
    /// let builder = grapevine::Publisher::<std::collections::BTreeMap<u32, u32>>::builder()
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

    /// The interface to send on (default [`Interface::Loopback`]: nothing
    /// leaves this host). Reaching a LAN also needs a TTL of at least 1, set
    /// through [`multicast`](Self::multicast).
    pub fn interface(mut self, interface: Interface) -> Self {
        self.multicast.interface(interface);
        self
    }

    /// The stream id that names this state on the group (default 1).
    pub fn stream(mut self, stream: StreamId) -> Self {
        self.protocol.stream(stream);
        self
    }

    /// The pace of the snapshot cycle (default 100,000 leaves per second).
    pub fn snapshot_rate(mut self, rate: SnapshotRate) -> Self {
        self.protocol.snapshot_rate(rate);
        self
    }

    /// The interval between heartbeats (default 100 ms). Subscribers notice a
    /// silent publisher after a few intervals.
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.protocol.heartbeat_interval(interval);
        self
    }

    /// The largest datagram to send, in bytes (default 1,452).
    pub fn max_datagram(mut self, bytes: usize) -> Self {
        self.protocol.max_datagram(bytes);
        self
    }

    /// A fixed session id, for tests. By default every bind draws a random
    /// one from the operating system, so a restarted publisher is told apart
    /// from the previous one. A fixed id must still differ from the
    /// previous run's: subscribers take a publisher that comes back with the
    /// same id for the same session, and its new sequence numbers for
    /// duplicates; with authentication they refuse it outright
    /// (`salt_conflict`: one sender per session, PROTOCOL.md §11.4).
    pub fn session_id(mut self, session: u64) -> Self {
        self.session = Some(session);
        self
    }

    /// How the background driver waits (default [`Driver::Tokio`]).
    pub fn driver(mut self, driver: Driver) -> Self {
        self.driver = driver;
        self
    }

    /// A name for this publisher, in its log lines (the `publisher` span)
    /// and as the `name` label of its [metrics](crate::metrics) (default:
    /// none).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Replaces the whole protocol configuration, including the stream,
    /// snapshot rate, heartbeat interval and datagram size set before.
    pub fn protocol(mut self, config: PublisherConfig) -> Self {
        self.protocol = config;
        self
    }

    /// Replaces the whole socket configuration, including the group, port and
    /// interface set before. Use it for the TTL, buffer sizes and loop flag.
    pub fn multicast(mut self, config: MulticastConfig) -> Self {
        self.multicast = config;
        self
    }

    /// The schema name announced to subscribers (PROTOCOL.md §4.8), whose
    /// fingerprint they compare with the one they expect. Default: the
    /// state's [`State::schema_name`]. Give the same name on the
    /// [`SubscriberBuilder::schema`](crate::SubscriberBuilder::schema) of
    /// subscribers that use another type with the same encoding.
    pub fn schema(mut self, name: impl Into<String>) -> Self {
        self.protocol.schema(Schema::named(name));
        self
    }

    /// Checks the configuration, binds the sending socket and starts the
    /// background task. `initial` is the state at start; every leaf in it is
    /// sent in snapshots.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an invalid protocol setting, [`Error::Socket`]
    /// for an invalid multicast setting or a socket that cannot be set up,
    /// [`Error::Io`] if the socket's batching options cannot be set or the
    /// busy-poll thread cannot be started.
    ///
    /// # Panics
    ///
    /// With [`Driver::Tokio`], panics when called outside a tokio runtime.
    pub async fn bind(self, initial: S) -> Result<Publisher<S>, Error>
    where
        S: State + Send + 'static,
    {
        let mut protocol = self.protocol;
        if protocol.schema_info().is_none() {
            protocol.schema(Schema::of::<S>());
        }
        protocol.validate()?;
        self.multicast.validate()?;
        let session = SessionId(self.session.unwrap_or_else(crate::random::random_u64));
        let max_datagram = protocol.max_datagram_size();
        let mut core = CorePublisher::new(protocol.clone(), session, Instant::now())?;
        let mut tracked = Ok(());
        initial.for_each_leaf(&mut |key, _| {
            if tracked.is_ok() {
                tracked = core.track_leaf(&encode(key));
            }
        });
        tracked.map_err(Error::Publish)?;

        let socket = bind_sender(&self.multicast)?;
        let group = socket.group_addr();
        let local_addr = socket.local_addr()?;
        let io: Arc<dyn DatagramIo> = Arc::new(UdpIo::new(socket)?);
        let segments = segments_for(&*io, max_datagram);
        let stream = protocol.stream_id();
        let mut engine = PublisherEngine::new(core, Typed::new(initial), segments);
        if let Some(name) = &self.name {
            engine.set_name(name);
        }
        let shared = Arc::new(PublisherShared::new(engine, io, group));
        // The first heartbeat goes out now, before any delta can: a
        // subscriber already listening hears it first (a session's first
        // datagram is only heard, not used; a heartbeat is the one to
        // spare).
        let mut tx = shared.driver_tx();
        shared.turn(None, &mut tx);
        let name = self.name.as_deref();
        // At error level, so that it names the lines of every level shown.
        let span = tracing::error_span!("publisher", stream = stream.0, name);
        let driver = spawn_publisher(self.driver, &shared, tx, span.clone())?;
        span.in_scope(|| {
            tracing::info!(
                %session,
                %group,
                leaves = shared.lock().core.leaf_count(),
                "publisher started"
            );
        });
        Ok(Publisher {
            shared,
            driver: Some(driver),
            session,
            local_addr,
        })
    }
}

/// Publishes a state: see the [module docs](self).
///
/// Dropping the handle stops the background task at once; call
/// [`shutdown`](Self::shutdown) to first send what is queued.
pub struct Publisher<S> {
    shared: Arc<PublisherShared<S>>,
    driver: Option<Running>,
    session: SessionId,
    local_addr: SocketAddr,
}

/// How long [`Publisher::shutdown`] waits for socket room to send what is
/// queued.
pub(crate) const SHUTDOWN_FLUSH: Duration = Duration::from_secs(1);

impl<S> Publisher<S> {
    /// A builder with every setting at its default.
    ///
    /// ```
    /// use std::collections::BTreeMap;
    /// use grapevine::Publisher;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), grapevine::Error> {
    /// let publisher = Publisher::builder()
    ///     .group("239.255.28.12".parse().unwrap())
    ///     .port(28012)
    ///     .session_id(7)
    ///     .bind(BTreeMap::<u32, String>::new())
    ///     .await?;
    /// assert_eq!(publisher.session(), grapevine::SessionId(7));
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder() -> PublisherBuilder<S> {
        PublisherBuilder::default()
    }
}

impl<S: State + Send + 'static> Publisher<S> {
    /// Applies `delta` to the state, publishes it with the next sequence
    /// number and returns that number. The datagram goes out before this
    /// returns unless the socket's send buffer is full, in which case the
    /// driver sends it as soon as there is room (see the
    /// [module docs](self) for the bound on what waits).
    ///
    /// # Errors
    ///
    /// [`Error::Publish`] if the delta's key encodes to more than 65,535
    /// bytes, or the session ran out of sequence numbers; the state is left
    /// unchanged.
    pub fn publish(&self, delta: S::Delta) -> Result<SeqNum, Error> {
        let mut engine = self.shared.lock();
        let seq = engine.publish(&delta)?;
        if engine.send_live(&*self.shared.io, self.shared.group) {
            self.shared.wake();
        }
        Ok(seq)
    }

    /// Publishes several deltas, packed several to a datagram, and returns
    /// the sequence number of the last one (the current
    /// [`last_seq`](Self::last_seq) if `deltas` is empty). Full datagrams
    /// are sent as they fill, many per system call where the kernel has
    /// GSO, so a batch of any length holds little memory.
    ///
    /// ```
    /// use std::collections::BTreeMap;
    /// use grapevine::{MapDelta, Publisher};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), grapevine::Error> {
    /// let publisher = Publisher::builder()
    ///     .group("239.255.28.13".parse().unwrap())
    ///     .port(28013)
    ///     .bind(BTreeMap::<u32, u32>::new())
    ///     .await?;
    /// let last = publisher.publish_batch((0..100).map(|i| MapDelta::Upsert(i, i * i)))?;
    /// assert_eq!(last.0, 100);
    /// assert_eq!(publisher.leaf_count(), 100);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`publish`](Self::publish). The deltas before the failing one are
    /// published (and sent); the failing one and those after it are not.
    pub fn publish_batch(
        &self,
        deltas: impl IntoIterator<Item = S::Delta>,
    ) -> Result<SeqNum, Error> {
        let (io, group) = (&*self.shared.io, self.shared.group);
        let mut engine = self.shared.lock();
        let mut result = Ok(engine.core.last_seq());
        let mut wake = false;
        for delta in deltas {
            match engine.publish(&delta) {
                Ok(seq) => result = Ok(seq),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
            if engine.batch_ready() {
                wake |= engine.send_live(io, group);
            }
        }
        if engine.send_live(io, group) || wake {
            self.shared.wake();
        }
        result
    }

    /// Waits until the datagrams waiting for the socket are at most half of
    /// [`PublisherConfig::max_queued_bytes`]: await it before publishing to
    /// slow down to the socket's pace instead of shedding (back-pressure).
    /// Returns at once while the socket keeps up.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] if the driver has stopped (its runtime ended, or
    /// it was shut down) while the backlog is above half the bound: only
    /// the driver could drain it.
    ///
    /// ```
    /// # use std::collections::BTreeMap;
    /// # use grapevine::{MapDelta, Publisher};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), grapevine::Error> {
    /// let publisher = Publisher::builder()
    ///     .group("239.255.28.16".parse().unwrap())
    ///     .port(28016)
    ///     .bind(BTreeMap::<u32, u32>::new())
    ///     .await?;
    /// for round in 0..100u32 {
    ///     publisher.ready().await?;
    ///     publisher.publish_batch((0..1_000).map(|i| MapDelta::Upsert(i, round)))?;
    /// }
    /// assert_eq!(publisher.stats().protocol.datagrams_shed, 0);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn ready(&self) -> Result<(), Error> {
        self.shared.ready().await
    }

    /// Bytes of datagrams waiting for the socket (0 while it keeps up).
    pub fn queued_bytes(&self) -> usize {
        self.shared.lock().core.queued_bytes()
    }

    /// Calls `f` with the current state and returns what it returns. The
    /// state is locked meanwhile: keep `f` short, and do not call this
    /// publisher's methods from it (that would deadlock).
    pub fn read<R>(&self, f: impl FnOnce(&S) -> R) -> R {
        f(self.shared.lock().typed.state())
    }

    /// The [`Digest`] of the current state, to compare with a subscriber's
    /// [`Subscriber::digest`](crate::Subscriber::digest). The first call
    /// walks every leaf; from then on the digest is kept up to date as
    /// deltas are published (two leaf hashes each) and later calls are
    /// O(1).
    pub fn digest(&self) -> Digest {
        self.shared.lock().typed.kept_digest()
    }

    /// The sequence number of the last published delta ([`SeqNum::NONE`]
    /// before the first).
    pub fn last_seq(&self) -> SeqNum {
        self.shared.lock().core.last_seq()
    }

    /// The session id of this publisher incarnation.
    pub fn session(&self) -> SessionId {
        self.session
    }

    /// Seals with these keys from now on (the first seals; every one opens
    /// NAKs): a key rotation without a restart (PROTOCOL.md §11.3). Give
    /// every subscriber the new key first.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if the publisher was started without a key.
    pub fn set_keys(&self, keyring: Keyring) -> Result<(), Error> {
        self.shared.lock().core.set_keys(keyring)?;
        tracing::info!("keys rotated");
        Ok(())
    }

    /// A handle that rotates this publisher's keys from another task or
    /// thread (a `SIGHUP` handler re-reading the key file, say), as
    /// [`set_keys`](Self::set_keys).
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
    pub fn stats(&self) -> PublisherStats {
        self.shared.lock().all_stats()
    }

    /// The number of leaves in the state.
    pub fn leaf_count(&self) -> usize {
        self.shared.lock().core.leaf_count()
    }

    /// The address datagrams are sent from (the interface's address and an
    /// ephemeral port).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The group address datagrams are sent to.
    pub fn group_addr(&self) -> SocketAddr {
        self.shared.group
    }

    /// Sends what is queued (waiting up to a second for socket room), then
    /// stops the background task. Subscribers notice the silence after their
    /// configured number of missed heartbeats.
    pub async fn shutdown(mut self) {
        self.shared.lock().closing = true;
        self.shared.wake();
        if let Some(driver) = self.driver.take() {
            driver.join().await;
        }
    }
}

impl<S> Drop for Publisher<S> {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(driver) = self.driver.take() {
            driver.abort();
        }
    }
}

impl<S> fmt::Debug for Publisher<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("session", &self.session)
            .field("group", &self.shared.group)
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}
