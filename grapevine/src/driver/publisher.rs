//! The publisher's engine as the drivers see it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use grapevine_core::publisher::Publisher as CorePublisher;
use grapevine_core::state::{encode_into, State, Typed};
use grapevine_core::wire::carries_snapshots;
use grapevine_core::{Destination, SeqNum, Transmit};
use tokio::sync::Notify;

use super::{send, Flush, Sent};
use crate::error::Error;
use crate::io::{DatagramIo, RecvBatch};
use crate::metrics::{PublisherGauges, PublisherMetrics};
use crate::publisher::PublisherStats;

fn core_stream(core: &CorePublisher) -> crate::StreamId {
    core.config().stream_id()
}

/// The publisher's core, its state and its send buffer.
pub(crate) struct PublisherEngine<S> {
    pub(crate) core: CorePublisher,
    pub(crate) typed: Typed<S>,
    /// Room for `segments` datagrams: what the core writes a transmit into.
    buf: Vec<u8>,
    segments: usize,
    /// The encoded key and delta of the delta being published, reused.
    key_buf: Vec<u8>,
    payload_buf: Vec<u8>,
    /// A transmit in `buf` the socket refused with "would block", sent
    /// first once there is room. Nothing is written to `buf` meanwhile.
    unsent: Option<Transmit>,
    pub(crate) stats: PublisherStats,
    /// The handle asked the driver to send what is queued and stop.
    pub(crate) closing: bool,
    /// When the driver will next look at the core of its own accord
    /// (`None`: only when woken); a publish that moves the core's deadline
    /// earlier wakes it.
    pub(crate) driver_deadline: Option<Instant>,
    metrics: PublisherMetrics,
}

impl<S: State> PublisherEngine<S> {
    pub(crate) fn new(core: CorePublisher, typed: Typed<S>, segments: usize) -> Self {
        let segments = segments.max(1);
        let metrics = PublisherMetrics::new(core_stream(&core), None);
        Self {
            buf: vec![0; segments * core.config().max_datagram_size()],
            core,
            typed,
            segments,
            key_buf: Vec::new(),
            payload_buf: Vec::new(),
            unsent: None,
            stats: PublisherStats::default(),
            closing: false,
            driver_deadline: None,
            metrics,
        }
    }

    /// Names the publisher in its metrics (the `name` label).
    pub(crate) fn set_name(&mut self, name: &str) {
        self.metrics = PublisherMetrics::new(core_stream(&self.core), Some(name));
    }

    /// The counters: the driver's and the core's.
    pub(crate) fn all_stats(&self) -> PublisherStats {
        PublisherStats {
            protocol: self.core.stats(),
            ..self.stats
        }
    }

    /// Records the metrics if due at `now`.
    fn record_metrics(&mut self, now: Instant) {
        if self.metrics.due(now) {
            let stats = self.all_stats();
            let gauges = PublisherGauges {
                seq: self.core.last_seq().0,
                leaves: self.core.leaf_count(),
                queued_bytes: self.core.queued_bytes(),
            };
            self.metrics.record(&stats, &gauges);
        }
    }

    /// Applies and publishes one delta; on failure the state is restored.
    /// Allocates nothing of its own (the key and delta are encoded into
    /// reused buffers); the state's `apply`, and cloning the leaf to
    /// restore it on failure, allocate only if the state's types do.
    pub(crate) fn publish(&mut self, delta: &S::Delta) -> Result<SeqNum, Error> {
        let key = S::key_of(delta);
        self.key_buf.clear();
        encode_into(&key, &mut self.key_buf);
        self.payload_buf.clear();
        encode_into(delta, &mut self.payload_buf);
        let before = self.typed.state().leaf(&key).cloned();
        self.typed.apply(delta);
        let present_after = self.typed.state().leaf(&key).is_some();
        match self
            .core
            .publish(&self.key_buf, &self.payload_buf, present_after)
        {
            Ok(seq) => Ok(seq),
            Err(e) => {
                self.typed.set_leaf(&key, before);
                Err(e.into())
            }
        }
    }

    /// Whether a full transmit of live datagrams is waiting (or half of
    /// what may wait, if that is less): worth a send in the middle of a
    /// batch of publishes, before the core would shed any.
    pub(crate) fn batch_ready(&self) -> bool {
        let limit = self.core.config().queued_bytes_limit() / 2;
        self.core.queued_bytes() >= self.buf.len().min(limit)
    }

    /// Sends the live datagrams (deltas, heartbeats) that are queued, from
    /// the publishing thread; never reads the state for snapshots. Returns
    /// whether the driver must be woken: it waits on a socket that is
    /// full, or the core's next deadline moved before the one it sleeps
    /// until.
    pub(crate) fn send_live(&mut self, io: &dyn DatagramIo, group: SocketAddr) -> bool {
        let blocked =
            self.unsent.is_some() || self.flush_live(io, group, Instant::now()) == Flush::Blocked;
        let next = self.core.poll_timeout();
        blocked
            || match (next, self.driver_deadline) {
                (Some(next), Some(sleeping)) => next < sleeping,
                (Some(_), None) => true,
                (None, _) => false,
            }
    }

    /// Sends the held live transmit, then every live datagram queued
    /// (deltas, heartbeats), until the socket would block. Under the lock:
    /// live datagrams leave in the order they were queued, whichever
    /// thread sends them.
    pub(crate) fn flush_live(
        &mut self,
        io: &dyn DatagramIo,
        group: SocketAddr,
        now: Instant,
    ) -> Flush {
        if let Some(t) = self.unsent {
            if self.send(io, group, t) == Flush::Blocked {
                return Flush::Blocked;
            }
            self.unsent = None;
        }
        while let Some(t) = self
            .core
            .poll_live_transmit(now, self.segments, &mut self.buf)
        {
            if self.send(io, group, t) == Flush::Blocked {
                self.unsent = Some(t);
                return Flush::Blocked;
            }
        }
        Flush::Done
    }

    fn send(&mut self, io: &dyn DatagramIo, group: SocketAddr, t: Transmit) -> Flush {
        let contents = self.buf.get(..t.size).unwrap_or_default();
        let sent = send(io, destination(t, group), contents, t.segment_size);
        self.record(sent)
    }

    /// Counts what became of one transmit.
    fn record(&mut self, sent: Sent) -> Flush {
        match sent {
            Sent::Ok {
                datagrams,
                bytes,
                failed,
            } => {
                self.stats.datagrams_sent += datagrams;
                self.stats.bytes_sent += bytes;
                self.stats.send_calls += 1;
                self.stats.send_errors += failed;
                Flush::Done
            }
            Sent::WouldBlock => {
                self.stats.send_blocked += 1;
                Flush::Blocked
            }
            Sent::Failed { datagrams } => {
                self.stats.send_errors += datagrams;
                Flush::Done
            }
        }
    }

    /// Hands a received batch (NAKs) to the core.
    pub(crate) fn receive(&mut self, now: Instant, batch: &mut RecvBatch) {
        let core = &mut self.core;
        let stats = &mut self.stats;
        batch.for_each(|from, datagram| {
            stats.datagrams_received += 1;
            core.handle_datagram(now, from, datagram);
        });
    }

    /// Whether `ready()` may return: the backlog is at most half the bound.
    pub(crate) fn has_room(&self) -> bool {
        self.core.queued_bytes() <= self.core.config().queued_bytes_limit() / 2
    }
}

/// Microseconds since the Unix epoch, for heartbeat timestamps.
fn wall_clock_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Where a transmit goes: a NAK's answer may be unicast, the rest to the
/// group.
fn destination(t: Transmit, group: SocketAddr) -> SocketAddr {
    match t.destination {
        Destination::Unicast(addr) => addr,
        _ => group,
    }
}

/// Most datagrams the driver takes from the core under the lock at a time:
/// encoding them (reading the state for snapshots) is what a concurrent
/// `publish` may wait for, so a full GSO batch of 44 would make it wait
/// several times longer than the system call saved.
const DRIVER_SEGMENTS: usize = 8;

/// The driver's own send buffer. What only the driver sends (snapshots,
/// cycle markers, repairs) is written into it under the lock; datagrams of
/// snapshots are sent after the lock is released, so a `publish` on
/// another thread never waits for that system call. Live datagrams,
/// CycleEnds and repairs are sent under the lock, in order.
pub(crate) struct DriverTx {
    buf: Vec<u8>,
    segments: usize,
    /// A transmit the socket refused with "would block", sent first once
    /// there is room.
    unsent: Option<Transmit>,
}

/// What a publisher's handle and its driver share.
pub(crate) struct PublisherShared<S> {
    engine: Mutex<PublisherEngine<S>>,
    pub(crate) io: Arc<dyn DatagramIo>,
    pub(crate) group: SocketAddr,
    /// Wakes a tokio driver: something to send, or shutting down.
    pub(crate) wake: Notify,
    /// Tells a busy-poll driver the same.
    pub(crate) kick: AtomicBool,
    /// Signalled when the backlog drains to half its bound, for `ready`.
    pub(crate) room: Notify,
    /// Stops a busy-poll driver (the handle was dropped).
    pub(crate) stop: AtomicBool,
    /// The driver has stopped, for whatever reason: `ready` must not wait
    /// for room that only it can make.
    pub(crate) gone: AtomicBool,
}

impl<S: State> PublisherShared<S> {
    pub(crate) fn new(
        engine: PublisherEngine<S>,
        io: Arc<dyn DatagramIo>,
        group: SocketAddr,
    ) -> Self {
        Self {
            engine: Mutex::new(engine),
            io,
            group,
            wake: Notify::new(),
            kick: AtomicBool::new(false),
            room: Notify::new(),
            stop: AtomicBool::new(false),
            gone: AtomicBool::new(false),
        }
    }

    /// Marks the driver stopped and wakes whoever waits in `ready`.
    pub(crate) fn driver_stopped(&self) {
        self.gone.store(true, Ordering::Release);
        self.room.notify_waiters();
    }

    /// Whether the driver has stopped.
    pub(crate) fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Acquire)
    }

    /// Waits until the backlog is at most half its bound; `Closed` if the
    /// driver, which alone could drain it, has stopped.
    pub(crate) async fn ready(&self) -> Result<(), Error> {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if self.lock().has_room() {
                return Ok(());
            }
            if self.is_gone() {
                return Err(Error::Closed);
            }
            self.wake();
            room.await;
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, PublisherEngine<S>> {
        // A panic while holding the lock (in a user closure given to `read`)
        // leaves the state as consistent as the closure left it.
        self.engine.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes the driver, whichever runtime it runs on.
    pub(crate) fn wake(&self) {
        self.kick.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// A send buffer for the driver.
    pub(crate) fn driver_tx(&self) -> DriverTx {
        let e = self.lock();
        let segments = e.segments.min(DRIVER_SEGMENTS);
        DriverTx {
            buf: vec![0; segments * e.core.config().max_datagram_size()],
            segments,
            unsent: None,
        }
    }

    /// The driver's turn: hands `batch` (if any) to the core, fires the due
    /// timers, sends the live datagrams queued, then the snapshots and
    /// repairs due (each transmit encoded under the lock and sent outside
    /// it), and notes when the driver will look again. Returns the flush
    /// outcome, when the next turn is due (the core's deadline, or the
    /// metrics') and whether the handle asked to
    /// close.
    pub(crate) fn turn(
        &self,
        batch: Option<&mut RecvBatch>,
        tx: &mut DriverTx,
    ) -> (Flush, Option<Instant>, bool) {
        let mut e = self.lock();
        let now = Instant::now();
        if let Some(batch) = batch {
            e.receive(now, batch);
        }
        if e.core.poll_timeout().is_some_and(|t| t <= now) {
            e.core.handle_timeout(now, wall_clock_micros());
        }
        let mut flush = e.flush_live(&*self.io, self.group, now);
        while flush == Flush::Done {
            // Everything queued before this point has been sent: a snapshot
            // encoded now reflects only deltas already on their way.
            let t = match tx.unsent.take() {
                Some(t) => t,
                None => {
                    let e = &mut *e;
                    match e
                        .core
                        .poll_transmit(now, &e.typed, tx.segments, &mut tx.buf)
                    {
                        Some(t) => t,
                        None => break,
                    }
                }
            };
            let contents = tx.buf.get(..t.size).unwrap_or_default();
            // Snapshots go out after the lock is released: a later delta
            // may overtake them, which is harmless. A CycleEnd (a claim
            // on the stream's tail, PROTOCOL.md §8.4), a repair or a cycle
            // with no leaves goes out under it, in order with the deltas.
            let to = destination(t, self.group);
            let sent = if t.datagrams(&tx.buf).all(carries_snapshots) {
                drop(e);
                let sent = send(&*self.io, to, contents, t.segment_size);
                e = self.lock();
                sent
            } else {
                send(&*self.io, to, contents, t.segment_size)
            };
            if e.record(sent) == Flush::Blocked {
                tx.unsent = Some(t);
                flush = Flush::Blocked;
            } else {
                // Deltas published meanwhile went out from `publish`; one
                // it could not send is retried here.
                flush = e.flush_live(&*self.io, self.group, now);
            }
        }
        e.record_metrics(now);
        let metrics = e.metrics.next();
        let deadline = Some(e.core.poll_timeout().map_or(metrics, |t| t.min(metrics)));
        e.driver_deadline = match flush {
            Flush::Done => deadline,
            Flush::Blocked => None,
        };
        if e.has_room() {
            self.room.notify_waiters();
        }
        (flush, deadline, e.closing)
    }

    /// Counts a receive error.
    pub(crate) fn recv_error(&self) {
        self.lock().stats.recv_errors += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io;
    use std::os::fd::{AsFd, BorrowedFd};
    use std::sync::atomic::AtomicBool;
    use std::sync::Mutex;

    use grapevine_core::publisher::PublisherConfig;
    use grapevine_core::state::MapDelta;
    use grapevine_core::SessionId;

    use super::*;

    /// A socket that is full until told otherwise.
    struct Full {
        sock: std::net::UdpSocket,
        room: AtomicBool,
    }

    impl DatagramIo for Full {
        fn try_send(&self, _: SocketAddr, _: &[u8], _: Option<usize>) -> io::Result<()> {
            if self.room.load(Ordering::Relaxed) {
                Ok(())
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            }
        }
        fn try_recv(&self, _: &mut RecvBatch) -> io::Result<()> {
            Err(io::ErrorKind::WouldBlock.into())
        }
        fn max_segments(&self) -> usize {
            4
        }
        fn fd(&self) -> BorrowedFd<'_> {
            self.sock.as_fd()
        }
    }

    /// Publishing into a socket that never has room, as `publish_batch`
    /// does: the datagrams waiting never exceed `max_queued_bytes`, the
    /// oldest are shed and counted, and once the socket has room again
    /// what waits goes out, newest deltas included.
    #[test]
    fn a_full_socket_sheds_within_the_bound_and_drains_after() {
        let mut cfg = PublisherConfig::default();
        cfg.max_queued_bytes(16 * 1452);
        let core = CorePublisher::new(cfg, SessionId(3), Instant::now()).unwrap();
        let mut e = PublisherEngine::new(core, Typed::new(BTreeMap::<u32, u64>::new()), 4);
        let io = Full {
            sock: std::net::UdpSocket::bind("127.0.0.1:0").unwrap(),
            room: AtomicBool::new(false),
        };
        let group = SocketAddr::from(([239, 255, 0, 1], 9));
        let mut peak = 0;
        for k in 0..20_000u32 {
            e.publish(&MapDelta::Upsert(k, 1)).unwrap();
            if e.batch_ready() {
                assert!(e.send_live(&io, group), "blocked: the driver is woken");
            }
            peak = peak.max(e.core.queued_bytes());
        }
        assert!(peak <= 16 * 1452, "{peak}");
        let stats = e.core.stats();
        assert!(stats.datagrams_shed > 100, "{stats:?}");
        assert!(e.stats.send_blocked > 0 && e.stats.datagrams_sent == 0);
        io.room.store(true, Ordering::Relaxed);
        let now = Instant::now();
        assert_eq!(e.flush_live(&io, group, now), Flush::Done);
        assert_eq!(e.core.queued_bytes(), 0);
        assert!(e.stats.datagrams_sent >= 8, "{:?}", e.stats);
        assert_eq!(e.core.last_seq(), SeqNum(20_000));
    }

    /// A socket whose first send of more than 200 bytes (the first
    /// snapshot datagram; heartbeats and one small delta are less) blocks
    /// until released: the driver's system call caught in the act.
    struct Stuck {
        sock: std::net::UdpSocket,
        calls: Mutex<usize>,
        entered: std::sync::mpsc::Sender<()>,
        release: Mutex<std::sync::mpsc::Receiver<()>>,
    }

    impl DatagramIo for Stuck {
        fn try_send(&self, _: SocketAddr, c: &[u8], _: Option<usize>) -> io::Result<()> {
            let first = {
                let mut calls = self.calls.lock().unwrap();
                *calls += usize::from(c.len() > 200);
                *calls == 1 && c.len() > 200
            };
            if first {
                self.entered.send(()).unwrap();
                self.release.lock().unwrap().recv().unwrap();
            }
            Ok(())
        }
        fn try_recv(&self, _: &mut RecvBatch) -> io::Result<()> {
            Err(io::ErrorKind::WouldBlock.into())
        }
        fn max_segments(&self) -> usize {
            4
        }
        fn fd(&self) -> BorrowedFd<'_> {
            self.sock.as_fd()
        }
    }

    /// The driver sends snapshots outside the lock: while its system call
    /// is stuck, `publish` on another thread still takes the lock, and its
    /// delta goes out.
    #[test]
    fn publish_does_not_wait_for_the_drivers_send() {
        let (entered_tx, entered) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel();
        let io = Arc::new(Stuck {
            sock: std::net::UdpSocket::bind("127.0.0.1:0").unwrap(),
            calls: Mutex::new(0),
            entered: entered_tx,
            release: Mutex::new(release_rx),
        });
        let start = Instant::now()
            .checked_sub(std::time::Duration::from_secs(1))
            .unwrap();
        let core = CorePublisher::new(PublisherConfig::default(), SessionId(3), start).unwrap();
        let state: BTreeMap<u32, u64> = (0..100).map(|k| (k, 1)).collect();
        let mut core = core;
        for k in 0..100u32 {
            core.track_leaf(&grapevine_core::state::encode(&k)).unwrap();
        }
        let e = PublisherEngine::new(core, Typed::new(state), 4);
        let group = SocketAddr::from(([239, 255, 0, 1], 9));
        let shared = Arc::new(PublisherShared::new(e, io.clone(), group));
        let driver = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || {
                let mut tx = shared.driver_tx();
                shared.turn(None, &mut tx)
            })
        };
        // The driver is inside its (first) send, of the cycle's snapshots.
        entered.recv().unwrap();
        let (done_tx, done) = std::sync::mpsc::channel();
        let publisher = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || {
                let mut e = shared.lock();
                e.publish(&MapDelta::Upsert(7, 2)).unwrap();
                e.send_live(&*shared.io, shared.group);
                done_tx.send(e.core.last_seq()).unwrap();
            })
        };
        // Bounded only so that a regression fails instead of hanging.
        let sent = done.recv_timeout(std::time::Duration::from_secs(30));
        release.send(()).unwrap();
        assert_eq!(sent, Ok(SeqNum(1)), "publish waited for the driver's send");
        publisher.join().unwrap();
        let (flush, _, _) = driver.join().unwrap();
        assert_eq!(flush, Flush::Done);
        assert!(
            shared.lock().stats.datagrams_sent >= 3,
            "heartbeat, snapshots, delta"
        );
    }

    /// `ready` waits while the backlog is above half the bound and the
    /// driver may drain it; once the driver has stopped it says so, also
    /// to a caller already waiting.
    #[tokio::test(flavor = "current_thread")]
    async fn ready_reports_a_stopped_driver() {
        let mut cfg = PublisherConfig::default();
        cfg.max_queued_bytes(8 * 1452);
        let core = CorePublisher::new(cfg, SessionId(3), Instant::now()).unwrap();
        let e = PublisherEngine::new(core, Typed::new(BTreeMap::<u32, u64>::new()), 4);
        let io = Arc::new(Full {
            sock: std::net::UdpSocket::bind("127.0.0.1:0").unwrap(),
            room: AtomicBool::new(false),
        });
        let group = SocketAddr::from(([239, 255, 0, 1], 9));
        let shared = Arc::new(PublisherShared::new(e, io, group));
        assert!(shared.ready().await.is_ok(), "no backlog yet");
        {
            let mut e = shared.lock();
            for k in 0..2_000u32 {
                e.publish(&MapDelta::Upsert(k, 1)).unwrap();
                if e.batch_ready() {
                    e.send_live(&*shared.io, group);
                }
            }
            assert!(!e.has_room());
        }
        let waiting = tokio::spawn({
            let shared = Arc::clone(&shared);
            async move { shared.ready().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "waits for the driver");
        shared.driver_stopped();
        // Bounded only so that a regression fails instead of hanging.
        let woken = tokio::time::timeout(std::time::Duration::from_secs(30), waiting).await;
        assert!(matches!(woken, Ok(Ok(Err(Error::Closed)))), "{woken:?}");
        assert!(matches!(shared.ready().await, Err(Error::Closed)));
    }

    /// However a publisher's driver ends, the handle learns of it: a tokio
    /// task dropped with its runtime, a busy-poll thread stopped by its
    /// flag.
    #[test]
    fn a_stopped_driver_is_known() {
        use crate::runtime::spawn_publisher;
        use crate::Driver;
        let shared = || {
            let core = CorePublisher::new(PublisherConfig::default(), SessionId(3), Instant::now())
                .unwrap();
            let e = PublisherEngine::new(core, Typed::new(BTreeMap::<u32, u64>::new()), 4);
            let io = Arc::new(Full {
                sock: std::net::UdpSocket::bind("127.0.0.1:0").unwrap(),
                room: AtomicBool::new(true),
            });
            Arc::new(PublisherShared::new(
                e,
                io,
                SocketAddr::from(([239, 255, 0, 1], 9)),
            ))
        };
        let task = shared();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let running = rt
            .block_on(async {
                spawn_publisher(
                    Driver::Tokio,
                    &task,
                    task.driver_tx(),
                    tracing::Span::none(),
                )
            })
            .unwrap();
        assert!(!task.is_gone());
        drop(rt);
        assert!(task.is_gone());
        drop(running);

        let thread = shared();
        let running = spawn_publisher(
            Driver::BusyPoll,
            &thread,
            thread.driver_tx(),
            tracing::Span::none(),
        )
        .unwrap();
        assert!(!thread.is_gone());
        thread.stop.store(true, Ordering::Release);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(running.join());
        assert!(thread.is_gone());
    }

    /// Found by review: with a bound below a full GSO transmit,
    /// `publish_batch` sends before the core would shed, so a socket with
    /// room sheds nothing.
    #[test]
    fn a_small_bound_does_not_shed_while_the_socket_has_room() {
        let mut cfg = PublisherConfig::default();
        cfg.max_queued_bytes(2 * 1452);
        let core = CorePublisher::new(cfg, SessionId(3), Instant::now()).unwrap();
        let mut e = PublisherEngine::new(core, Typed::new(BTreeMap::<u32, u64>::new()), 44);
        let io = Full {
            sock: std::net::UdpSocket::bind("127.0.0.1:0").unwrap(),
            room: AtomicBool::new(true),
        };
        let group = SocketAddr::from(([239, 255, 0, 1], 9));
        for k in 0..5_000u32 {
            e.publish(&MapDelta::Upsert(k, 1)).unwrap();
            if e.batch_ready() {
                e.send_live(&io, group);
            }
        }
        assert_eq!(e.core.stats().datagrams_shed, 0);
    }
}
