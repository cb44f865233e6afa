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
//! stamps it with the next sequence number and sends the datagrams that are
//! due right away, with a non-blocking send, from the calling thread. A
//! background tokio task (spawned by [`bind`](PublisherBuilder::bind)) sends
//! the paced snapshot cycle and the heartbeats, answers subscribers' NAKs
//! (they arrive by unicast on the publisher's socket, the source address of
//! its datagrams) with retransmissions to the group, and sends anything
//! `publish` could not send because the socket buffer was full. The state
//! sits behind a mutex that is never held across an `.await`.
//!
//! A datagram the operating system refuses (other than "would block") is
//! dropped and counted in [`PublisherStats::send_errors`], like a loss on the
//! network: subscribers repair it by NAK or from the snapshot cycle.

use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use grapevine_core::publisher::{
    Publisher as CorePublisher, PublisherConfig, PublisherStats as CoreStats, SnapshotRate,
};
use grapevine_core::state::{digest_of, encode, Digest, State, Typed};
use grapevine_core::{Destination, SeqNum, SessionId, StreamId};
use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::error::Error;
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
    state: PhantomData<fn() -> S>,
}

impl<S> Default for PublisherBuilder<S> {
    fn default() -> Self {
        Self {
            protocol: PublisherConfig::default(),
            multicast: MulticastConfig::default(),
            session: None,
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
            .finish()
    }
}

impl<S> PublisherBuilder<S> {
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
    /// duplicates.
    pub fn session_id(mut self, session: u64) -> Self {
        self.session = Some(session);
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

    /// Checks the configuration, binds the sending socket and starts the
    /// background task. `initial` is the state at start; every leaf in it is
    /// sent in snapshots.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an invalid protocol setting, [`Error::Socket`]
    /// for an invalid multicast setting or a socket that cannot be set up,
    /// [`Error::Io`] if the socket cannot be registered with tokio.
    ///
    /// # Panics
    ///
    /// Panics when called outside a tokio runtime.
    pub async fn bind(self, initial: S) -> Result<Publisher<S>, Error>
    where
        S: State + Send + 'static,
    {
        self.protocol.validate()?;
        self.multicast.validate()?;
        let session = SessionId(self.session.unwrap_or_else(crate::random::random_u64));
        let max_datagram = self.protocol.max_datagram_size();
        let mut core = CorePublisher::new(self.protocol.clone(), session, Instant::now())?;
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
        let socket = socket.into_tokio()?;
        // Tokio reports a socket ready only once its reactor has seen it so;
        // until then `try_send_to` says "would block" without trying. Wait
        // for that once, so the first `publish` sends at once.
        socket.writable().await?;

        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                core,
                typed: Typed::new(initial),
                buf: vec![0; max_datagram],
                unsent: None,
                stats: PublisherStats::default(),
                closing: false,
            }),
            socket,
            group,
            wake: Notify::new(),
        });
        let driver = tokio::spawn(drive(Arc::clone(&shared)));
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
    shared: Arc<Shared<S>>,
    driver: Option<JoinHandle<()>>,
    session: SessionId,
    local_addr: SocketAddr,
}

struct Shared<S> {
    inner: Mutex<Inner<S>>,
    socket: UdpSocket,
    group: SocketAddr,
    /// Wakes the driver: something to send, or shutting down.
    wake: Notify,
}

struct Inner<S> {
    core: CorePublisher,
    typed: Typed<S>,
    buf: Vec<u8>,
    /// A datagram the socket refused with "would block", sent first when it
    /// is writable again. Nothing else is sent before it, to keep order.
    unsent: Option<Vec<u8>>,
    stats: PublisherStats,
    closing: bool,
}

/// Outcome of sending what is due.
enum Flush {
    /// Everything due was sent.
    Done,
    /// The socket is full; wait until it is writable.
    Blocked,
}

impl<S: State> Inner<S> {
    /// Fires the core's due timers, sends the held datagram, then every
    /// datagram the core has due at `now`, until the socket would block.
    fn flush(&mut self, socket: &UdpSocket, group: SocketAddr, now: Instant) -> Flush {
        if self.core.poll_timeout().is_some_and(|t| t <= now) {
            self.core.handle_timeout(now, wall_clock_micros());
        }
        if let Some(datagram) = self.unsent.take() {
            if !send(socket, group, &datagram, &mut self.stats) {
                self.unsent = Some(datagram);
                return Flush::Blocked;
            }
        }
        while let Some(t) = self.core.poll_transmit(now, &self.typed, 1, &mut self.buf) {
            let to = match t.destination {
                Destination::Unicast(addr) => addr,
                _ => group,
            };
            for datagram in t.datagrams(&self.buf) {
                if !send(socket, to, datagram, &mut self.stats) {
                    self.unsent = Some(datagram.to_vec());
                    return Flush::Blocked;
                }
            }
        }
        Flush::Done
    }

    /// Hands a received datagram (a NAK) to the core.
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &mut [u8]) {
        self.stats.datagrams_received += 1;
        self.core.handle_datagram(now, from, datagram);
    }
}

/// Sends one datagram; false if the socket would block.
fn send(
    socket: &UdpSocket,
    group: SocketAddr,
    datagram: &[u8],
    stats: &mut PublisherStats,
) -> bool {
    match socket.try_send_to(datagram, group) {
        Ok(n) => {
            stats.datagrams_sent += 1;
            stats.bytes_sent += n as u64;
            true
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            stats.send_blocked += 1;
            false
        }
        Err(_) => {
            stats.send_errors += 1;
            true
        }
    }
}

impl<S> Shared<S> {
    fn lock(&self) -> MutexGuard<'_, Inner<S>> {
        // A panic while holding the lock (in a user closure given to `read`)
        // leaves the state as consistent as the closure left it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The background task: sends what is due, then sleeps until the core's next
/// deadline or until woken.
async fn drive<S: State>(shared: Arc<Shared<S>>) {
    let mut rbuf = vec![0u8; RECV_BUFFER];
    loop {
        let (flush, deadline, closing) = {
            let mut inner = shared.lock();
            let flush = inner.flush(&shared.socket, shared.group, Instant::now());
            (flush, inner.core.poll_timeout(), inner.closing)
        };
        if closing {
            if let Flush::Blocked = flush {
                // Best effort: wait (bounded) for room to send the rest.
                let room = tokio::time::timeout(SHUTDOWN_FLUSH, shared.socket.writable()).await;
                if room.is_ok_and(|r| r.is_ok()) {
                    continue;
                }
            }
            return;
        }
        match flush {
            Flush::Blocked => {
                tokio::select! {
                    r = shared.socket.writable() => {
                        if r.is_err() {
                            // The socket is broken; keep the heartbeat pace
                            // rather than spinning.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                    r = shared.socket.recv_from(&mut rbuf) => receive(&shared, r, &mut rbuf),
                    () = shared.wake.notified() => {}
                }
            }
            Flush::Done => {
                let sleep = async {
                    match deadline {
                        Some(at) => tokio::time::sleep_until(at.into()).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = sleep => {}
                    r = shared.socket.recv_from(&mut rbuf) => receive(&shared, r, &mut rbuf),
                    () = shared.wake.notified() => {}
                }
            }
        }
    }
}

/// Hands one received datagram, and any others already waiting (a bounded
/// batch), to the core.
fn receive<S: State>(shared: &Shared<S>, first: io::Result<(usize, SocketAddr)>, buf: &mut [u8]) {
    let mut inner = shared.lock();
    let now = Instant::now();
    let mut next = Some(first);
    let mut n = 0;
    while let Some(r) = next.take() {
        match r {
            Ok((len, from)) => {
                if let Some(d) = buf.get_mut(..len) {
                    inner.handle_datagram(now, from, d);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(_) => {
                inner.stats.recv_errors += 1;
                break;
            }
        }
        n += 1;
        if n < RECV_BATCH {
            next = Some(shared.socket.try_recv_from(buf));
        }
    }
}

/// Largest datagram the publisher reads (NAKs are small; anything larger is
/// truncated and then dropped as malformed).
const RECV_BUFFER: usize = 65_536;
/// Most datagrams handled per wake-up before sending again.
const RECV_BATCH: usize = 64;

/// How long [`Publisher::shutdown`] waits for socket room to send what is
/// queued.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(1);

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
    /// background task sends it as soon as there is room.
    ///
    /// # Errors
    ///
    /// [`Error::Publish`] if the delta's key encodes to more than 65,535
    /// bytes, or the session ran out of sequence numbers; the state is left
    /// unchanged.
    pub fn publish(&self, delta: S::Delta) -> Result<SeqNum, Error> {
        let mut inner = self.shared.lock();
        let seq = publish_one(&mut inner, &delta)?;
        self.send_due(&mut inner);
        Ok(seq)
    }

    /// Publishes several deltas, packed several to a datagram, and returns
    /// the sequence number of the last one (the current
    /// [`last_seq`](Self::last_seq) if `deltas` is empty).
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
        let mut inner = self.shared.lock();
        let mut result = Ok(inner.core.last_seq());
        for delta in deltas {
            match publish_one(&mut inner, &delta) {
                Ok(seq) => result = Ok(seq),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        self.send_due(&mut inner);
        result
    }

    /// Sends what is due now, or leaves it to the driver if the socket is
    /// full or the driver is already waiting for room.
    fn send_due(&self, inner: &mut Inner<S>) {
        if inner.unsent.is_some() {
            self.shared.wake.notify_one();
            return;
        }
        if let Flush::Blocked = inner.flush(&self.shared.socket, self.shared.group, Instant::now())
        {
            self.shared.wake.notify_one();
        }
    }

    /// Calls `f` with the current state and returns what it returns. The
    /// state is locked meanwhile: keep `f` short, and do not call this
    /// publisher's methods from it (that would deadlock).
    pub fn read<R>(&self, f: impl FnOnce(&S) -> R) -> R {
        f(self.shared.lock().typed.state())
    }

    /// The [`Digest`] of the current state, to compare with a subscriber's
    /// [`Subscriber::digest`](crate::Subscriber::digest). O(leaves).
    pub fn digest(&self) -> Digest {
        digest_of(self.shared.lock().typed.state())
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

    /// The counters.
    pub fn stats(&self) -> PublisherStats {
        let inner = self.shared.lock();
        PublisherStats {
            protocol: inner.core.stats(),
            ..inner.stats
        }
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
        self.shared.wake.notify_one();
        if let Some(driver) = self.driver.take() {
            let _ = driver.await;
        }
    }
}

impl<S> Drop for Publisher<S> {
    fn drop(&mut self) {
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

/// Applies and publishes one delta; on failure the state is restored.
fn publish_one<S: State>(inner: &mut Inner<S>, delta: &S::Delta) -> Result<SeqNum, Error> {
    let key = S::key_of(delta);
    let encoded_key = encode(&key);
    let payload = encode(delta);
    let state = inner.typed.state_mut();
    let before = state.leaf(&key).cloned();
    state.apply(delta);
    let present_after = state.leaf(&key).is_some();
    match inner.core.publish(&encoded_key, &payload, present_after) {
        Ok(seq) => Ok(seq),
        Err(e) => {
            inner.typed.state_mut().set_leaf(&key, before);
            Err(e.into())
        }
    }
}

/// Microseconds since the Unix epoch, for heartbeat timestamps.
fn wall_clock_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}
