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
//! [`bind`](SubscriberBuilder::bind) joins the group and spawns a tokio task
//! that receives datagrams (up to 64 at a time under one lock), feeds them
//! and the protocol's timers to the sans-IO core, sends the core's NAKs by
//! unicast to the publisher's source address (from the same socket), forwards the core's
//! [`Event`]s to [`next_event`](Subscriber::next_event) and publishes the
//! [`Status`] that [`wait_until`](Subscriber::wait_until) watches. The
//! replica sits behind a mutex that is never held across an `.await`;
//! [`read`](Subscriber::read) locks it briefly.

use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use grapevine_core::state::{decode, digest_of, Digest, State, Typed};
use grapevine_core::subscriber::{
    Event, Status, Subscriber as CoreSubscriber, SubscriberConfig, SubscriberStats as CoreStats,
};
use grapevine_core::{Destination, StreamId};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::error::Error;
use crate::socket::{bind_receiver, Interface, MulticastConfig};

/// Size of the receive buffer: the largest UDP datagram.
const RECV_BUFFER: usize = 65_536;

/// Most datagrams handled under one lock before events and status go out.
const RECV_BATCH: usize = 64;

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
    loss: Option<(f64, u64)>,
    event_capacity: usize,
    state: PhantomData<fn() -> S>,
}

impl<S> Default for SubscriberBuilder<S> {
    fn default() -> Self {
        Self {
            protocol: SubscriberConfig::default(),
            multicast: MulticastConfig::default(),
            loss: None,
            event_capacity: DEFAULT_EVENT_CAPACITY,
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
            .finish()
    }
}

impl<S> SubscriberBuilder<S> {
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

    /// **For demos and tests:** drops each received datagram with
    /// `probability` before the protocol sees it, with a random generator
    /// seeded by `seed`, to show recovery from loss without touching the
    /// network. Dropped datagrams are counted in
    /// [`SubscriberStats::simulated_drops`].
    ///
    /// `probability` must lie in `0.0 ..= 1.0`; [`bind`](Self::bind) fails
    /// with [`Error::InvalidLoss`] otherwise.
    pub fn simulate_loss(mut self, probability: f64, seed: u64) -> Self {
        self.loss = Some((probability, seed));
        self
    }

    /// Checks the configuration, joins the group and starts the background
    /// task, with an empty replica (`S::default()`).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidLoss`] for a bad [`simulate_loss`](Self::simulate_loss)
    /// probability, [`Error::Config`] for an invalid protocol setting,
    /// [`Error::Socket`] for an invalid multicast setting or a socket that
    /// cannot be set up, [`Error::Io`] if the socket cannot be registered
    /// with tokio.
    ///
    /// # Panics
    ///
    /// Panics when called outside a tokio runtime.
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
    /// Panics when called outside a tokio runtime.
    pub async fn bind_with(self, mut empty: S) -> Result<Subscriber<S>, Error>
    where
        S: State + Send + 'static,
    {
        let loss = match self.loss {
            Some((p, _)) if !(0.0..=1.0).contains(&p) => return Err(Error::InvalidLoss(p)),
            Some((p, seed)) if p > 0.0 => Some(Loss {
                probability: p,
                rng: StdRng::seed_from_u64(seed),
            }),
            _ => None,
        };
        self.multicast.validate()?;
        let mut protocol = self.protocol;
        if !protocol.is_seeded() {
            // Different NAK delays and requester ids on every subscriber.
            protocol.rng_seed(crate::random::random_u64());
        }
        let core = CoreSubscriber::new(protocol)?;
        let socket = bind_receiver(&self.multicast)?;
        let group = socket.group_addr();
        let socket = socket.into_tokio()?;

        empty.clear();
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                nak_buf: vec![0; core.config().max_datagram_size()],
                core,
                replica: Typed::new(empty),
                loss,
                stats: SubscriberStats::default(),
            }),
        });
        let (event_tx, event_rx) = mpsc::channel(self.event_capacity);
        let (status_tx, status_rx) = watch::channel(Status::default());
        let driver = tokio::spawn(drive(Arc::clone(&shared), socket, event_tx, status_tx));
        Ok(Subscriber {
            shared,
            events: event_rx,
            status: status_rx,
            driver: Some(driver),
            group,
        })
    }
}

/// Follows a publisher's state: see the [module docs](self).
///
/// Dropping the handle (or [`shutdown`](Self::shutdown)) leaves the group and
/// stops the background task.
pub struct Subscriber<S> {
    shared: Arc<Shared<S>>,
    events: mpsc::Receiver<Event>,
    status: watch::Receiver<Status>,
    driver: Option<JoinHandle<()>>,
    group: SocketAddr,
}

struct Shared<S> {
    inner: Mutex<Inner<S>>,
}

struct Inner<S> {
    core: CoreSubscriber,
    replica: Typed<S>,
    nak_buf: Vec<u8>,
    loss: Option<Loss>,
    stats: SubscriberStats,
}

struct Loss {
    probability: f64,
    rng: StdRng,
}

impl<S> Shared<S> {
    fn lock(&self) -> MutexGuard<'_, Inner<S>> {
        // A panic while holding the lock (in a user closure given to `read`)
        // leaves the replica as consistent as the closure left it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<S: State> Inner<S> {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &mut [u8]) {
        self.stats.datagrams_received += 1;
        self.stats.bytes_received += datagram.len() as u64;
        if let Some(loss) = &mut self.loss {
            if loss.rng.random_bool(loss.probability) {
                self.stats.simulated_drops += 1;
                return;
            }
        }
        self.core
            .handle_datagram(now, from, datagram, &mut self.replica);
    }

    /// Fires due timers, sends NAKs, forwards events and publishes the
    /// status.
    fn finish_batch(
        &mut self,
        now: Instant,
        socket: &UdpSocket,
        events: &mpsc::Sender<Event>,
        status: &watch::Sender<Status>,
    ) {
        if self.core.poll_timeout().is_some_and(|at| at <= now) {
            self.core.handle_timeout(now, &mut self.replica);
        }
        while let Some(t) = self.core.poll_transmit(now, &mut self.nak_buf) {
            let Destination::Unicast(to) = t.destination else {
                continue;
            };
            for datagram in t.datagrams(&self.nak_buf) {
                match socket.try_send_to(datagram, to) {
                    Ok(_) => self.stats.naks_sent += 1,
                    Err(_) => self.stats.send_errors += 1,
                }
            }
        }
        while let Some(event) = self.core.poll_event() {
            if events.try_send(event).is_err() {
                self.stats.events_dropped += 1;
            }
        }
        let new = self.core.status();
        status.send_if_modified(|old| {
            let changed = *old != new;
            *old = new;
            changed
        });
    }
}

/// The background task: receives datagrams and fires timers.
async fn drive<S: State>(
    shared: Arc<Shared<S>>,
    socket: UdpSocket,
    events: mpsc::Sender<Event>,
    status: watch::Sender<Status>,
) {
    let mut buf = vec![0u8; RECV_BUFFER];
    loop {
        let deadline = shared.lock().core.poll_timeout();
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            first = socket.recv_from(&mut buf) => {
                let mut inner = shared.lock();
                let now = Instant::now();
                match first {
                    Ok((n, from)) => {
                        if let Some(d) = buf.get_mut(..n) {
                            inner.handle_datagram(now, from, d);
                        }
                    }
                    Err(_) => inner.stats.recv_errors += 1,
                }
                for _ in 1..RECV_BATCH {
                    match socket.try_recv_from(&mut buf) {
                        Ok((n, from)) => {
                            if let Some(d) = buf.get_mut(..n) {
                                inner.handle_datagram(now, from, d);
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => {
                            inner.stats.recv_errors += 1;
                            break;
                        }
                    }
                }
                inner.finish_batch(now, &socket, &events, &status);
            }
            () = sleep => {
                shared.lock().finish_batch(Instant::now(), &socket, &events, &status);
            }
        }
    }
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
    ///     .simulate_loss(1.5, 0)
    ///     .bind()
    ///     .await
    ///     .unwrap_err();
    /// assert!(matches!(err, Error::InvalidLoss(p) if p == 1.5));
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

    /// The share of the time since the replica first synced (in the current
    /// publisher session) during which it was consistent; `None` before sync.
    pub fn consistent_share(&self) -> Option<f64> {
        self.shared.lock().core.consistent_share(Instant::now())
    }

    /// The counters.
    pub fn stats(&self) -> SubscriberStats {
        let inner = self.shared.lock();
        SubscriberStats {
            protocol: inner.core.stats().clone(),
            ..inner.stats.clone()
        }
    }

    /// The [`Digest`] of the replica, equal to the publisher's
    /// [`Publisher::digest`](crate::Publisher::digest) when both hold the
    /// same leaves. O(leaves).
    pub fn digest(&self) -> Digest {
        digest_of(self.shared.lock().replica.state())
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
    /// [`Error::Closed`] if the background task has stopped.
    pub async fn wait_until(
        &self,
        pred: impl Fn(&Status) -> bool,
        timeout: Duration,
    ) -> Result<Status, Error> {
        let mut status = self.status.clone();
        let waited = tokio::time::timeout(timeout, async {
            status.wait_for(|s| pred(s)).await.map(|found| *found)
        })
        .await;
        match waited {
            Ok(Ok(found)) => Ok(found),
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(Error::Timeout {
                waited: timeout,
                status: self.status(),
            }),
        }
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

    /// Stops the background task, waits until it has stopped, and leaves the
    /// group. (Dropping the handle stops the task too, without waiting.)
    pub async fn shutdown(mut self) {
        if let Some(driver) = self.driver.take() {
            driver.abort();
            let _ = driver.await;
        }
    }
}

impl<S> Drop for Subscriber<S> {
    fn drop(&mut self) {
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
