//! The tokio runtime: a task woken by the reactor (socket readiness) and by
//! tokio timers.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use grapevine_core::state::State;
use tokio::io::unix::{AsyncFd, AsyncFdReadyGuard};
use tokio::io::Interest;

use crate::driver::publisher::{DriverTx, PublisherShared};
use crate::driver::subscriber::{Outputs, SubscriberShared};
use crate::driver::Flush;
use crate::io::{DatagramIo, RecvBatch};
use crate::publisher::SHUTDOWN_FLUSH;

/// A second descriptor of the socket, registered with the reactor for
/// `interest` only: it only tells when the socket is readable (or
/// writable); all I/O goes through the [`DatagramIo`] (readiness belongs
/// to the socket, not the descriptor).
///
/// Writability is asked for only while the socket is full: a UDP socket
/// registered for it wakes the reactor each time the kernel frees a sent
/// datagram, that is after every send, which on a publisher cost a
/// context switch per datagram and delayed the publishing thread.
///
/// `AsyncFd::with_interest` is deprecated for types whose descriptor can
/// close while registered (tokio#8587); its replacement is `unsafe`, which
/// this crate forbids. An `OwnedFd` held here is closed only when the
/// `AsyncFd` drops, after it has left the reactor: the case is sound.
#[allow(deprecated)]
fn register(io: &dyn DatagramIo, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    AsyncFd::with_interest(io.fd().try_clone_to_owned()?, interest)
}

/// Sleeps until `deadline`, or for ever.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Receives one batch once the reactor said readable; `false` if there
/// was nothing after all (readiness is then cleared) or an error (counted,
/// and the next receive waits for `backoff`: an error leaves the socket
/// readable, and a socket that keeps failing must not spin the task).
async fn receive(
    ready: io::Result<AsyncFdReadyGuard<'_, OwnedFd>>,
    io: &dyn DatagramIo,
    batch: &mut RecvBatch,
    backoff: &mut Backoff,
    on_error: impl FnOnce(),
) -> bool {
    let Ok(mut guard) = ready else {
        return false;
    };
    match guard.try_io(|_| io.try_recv(batch)) {
        Ok(Ok(())) => {
            backoff.reset();
            charge(batch.len()).await;
            true
        }
        Err(_would_block) => false,
        Ok(Err(_)) => {
            on_error();
            tokio::time::sleep(backoff.next()).await;
            false
        }
    }
}

/// Charges `datagrams` received to the task's cooperative budget, a unit
/// each as tokio's own sockets charge a receive (at most the whole budget,
/// 128 units: the task then yields once). `readable()` on an `AsyncFd`
/// charges nothing, and one batch may hold a thousand datagrams (GRO):
/// a driver that never drains its socket (a subscriber near its limit)
/// would never yield, and starve the tasks that share its thread. A
/// `wait_until(synced)` on a current-thread runtime heard of sync up to
/// 1.4 s late while the driver ran on.
async fn charge(datagrams: usize) {
    for _ in 0..datagrams.min(128) {
        tokio::task::coop::consume_budget().await;
    }
}

/// The pause after a receive error: 1 ms, doubling with each error in a
/// row up to 100 ms, back to none after a receive that worked. A single
/// error (an ICMP port unreachable for a NAK, say) costs 1 ms.
#[derive(Debug, Default)]
struct Backoff {
    errors: u32,
}

impl Backoff {
    const MAX: Duration = Duration::from_millis(100);

    fn next(&mut self) -> Duration {
        let pause = Duration::from_millis(1u64 << self.errors.min(7)).min(Self::MAX);
        self.errors = self.errors.saturating_add(1);
        pause
    }

    fn reset(&mut self) {
        self.errors = 0;
    }
}

/// Sends what is due once the reactor said writable: readiness is cleared
/// only if the socket is still full, and was taken before this try, so no
/// wake-up is lost.
fn retry<S: State>(
    mut room: AsyncFdReadyGuard<'_, OwnedFd>,
    shared: &PublisherShared<S>,
    tx: &mut DriverTx,
) {
    let _ = room.try_io(|_| match shared.turn(None, tx).0 {
        Flush::Blocked => Err(io::ErrorKind::WouldBlock.into()),
        Flush::Done => Ok(()),
    });
}

pub(super) async fn publisher<S: State>(shared: Arc<PublisherShared<S>>, mut tx: DriverTx) {
    let Ok(ready) = register(&*shared.io, Interest::READABLE) else {
        shared.recv_error();
        return;
    };
    let io = &*shared.io;
    let mut batch = RecvBatch::new();
    let mut backoff = Backoff::default();
    let mut got = false;
    // Registered for writability while the socket is full, dropped once
    // everything went out.
    let mut full: Option<AsyncFd<OwnedFd>> = None;
    loop {
        let (flush, deadline, closing) = shared.turn(got.then_some(&mut batch), &mut tx);
        got = false;
        if flush == Flush::Done {
            full = None;
        } else if full.is_none() {
            full = register(io, Interest::WRITABLE).ok();
        }
        if closing {
            if let Some(w) = full.as_ref() {
                // Best effort: wait (bounded) for room to send the rest.
                if let Ok(Ok(room)) = tokio::time::timeout(SHUTDOWN_FLUSH, w.writable()).await {
                    retry(room, &shared, &mut tx);
                    continue;
                }
            }
            return;
        }
        match (flush, full.as_ref()) {
            (Flush::Blocked, Some(w)) => {
                tokio::select! {
                    r = w.writable() => match r {
                        Ok(room) => retry(room, &shared, &mut tx),
                        // The socket is broken; keep a slow pace rather
                        // than spinning.
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    },
                    r = ready.readable() => {
                        got = receive(r, io, &mut batch, &mut backoff, || shared.recv_error()).await;
                    }
                    () = shared.wake.notified() => {}
                }
            }
            // Full, and the socket cannot be registered for writability:
            // keep a slow pace rather than spinning.
            (Flush::Blocked, None) => tokio::time::sleep(Duration::from_millis(10)).await,
            (Flush::Done, _) => {
                tokio::select! {
                    () = sleep_until(deadline) => {}
                    r = ready.readable() => {
                        got = receive(r, io, &mut batch, &mut backoff, || shared.recv_error()).await;
                    }
                    () = shared.wake.notified() => {}
                }
            }
        }
    }
}

pub(super) async fn subscriber<S: State>(shared: Arc<SubscriberShared<S>>, out: Outputs) {
    let Ok(ready) = register(&*shared.io, Interest::READABLE) else {
        shared.recv_error();
        return;
    };
    let io = &*shared.io;
    let mut batch = RecvBatch::new();
    let mut more = RecvBatch::with_buffers(super::MORE_BUFFERS);
    let mut backoff = Backoff::default();
    let mut deadline = shared.turn(None, None, &out);
    loop {
        tokio::select! {
            r = ready.readable() => {
                if receive(r, io, &mut batch, &mut backoff, || shared.recv_error()).await {
                    deadline = shared.turn(Some(&mut batch), Some(&mut more), &out);
                }
            }
            () = sleep_until(deadline) => deadline = shared.turn(None, None, &out),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use std::os::fd::{AsFd, BorrowedFd};

    use grapevine_core::state::Typed;
    use grapevine_core::subscriber::{Subscriber as CoreSubscriber, SubscriberConfig};
    use tokio::sync::{mpsc, watch};

    use super::*;
    use crate::driver::subscriber::SubscriberEngine;
    use crate::metrics::SubscriberMetrics;

    /// A subscriber whose socket keeps failing does not spin: in 300 ms it
    /// tries about ten times (the pauses add up), not hundreds of
    /// thousands.
    #[test]
    fn a_socket_that_keeps_failing_is_retried_with_pauses() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_nonblocking(true).unwrap();
        sock.send_to(b"x", sock.local_addr().unwrap()).unwrap();
        // Always readable (a datagram waits that is never read), and every
        // receive fails.
        let io: Arc<dyn DatagramIo> = Arc::new(Udp {
            sock,
            recv: Recv::Fail,
        });
        let core = CoreSubscriber::new(SubscriberConfig::default()).unwrap();
        let metrics = SubscriberMetrics::new(crate::StreamId(1), None, None);
        let engine = SubscriberEngine::new(core, Typed::new(BTreeMap::<u32, u32>::new()), metrics);
        let shared = Arc::new(SubscriberShared::new(engine, io));
        let (events, _events_rx) = mpsc::channel(16);
        let (status, _status_rx) = watch::channel(Default::default());
        // The task runs on a runtime of its own, and this thread only
        // watches: if the task spins, the test still ends (and fails).
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.spawn(subscriber(Arc::clone(&shared), Outputs { events, status }));
        let errors = || shared.lock().stats.recv_errors;
        // The first error (however late a loaded machine runs the task),
        // then 300 ms of them.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while errors() == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let first = errors();
        std::thread::sleep(Duration::from_millis(300));
        let more = errors() - first;
        rt.shutdown_background();
        assert!(first >= 1, "the socket was never tried");
        assert!(more <= 30, "{more} receive errors in 300 ms");
    }

    /// One end of a connected Unix datagram pair as a socket: its sends
    /// block (`WouldBlock`) once the peer's queue is full, and it turns
    /// writable again as the peer reads.
    struct Pair {
        sock: std::os::unix::net::UnixDatagram,
    }

    impl DatagramIo for Pair {
        fn try_send(&self, _: SocketAddr, c: &[u8], _: Option<usize>) -> io::Result<()> {
            self.sock.send(c).map(|_| ())
        }
        fn try_recv(&self, _: &mut RecvBatch) -> io::Result<()> {
            Err(io::ErrorKind::WouldBlock.into())
        }
        fn max_segments(&self) -> usize {
            1
        }
        fn fd(&self) -> BorrowedFd<'_> {
            self.sock.as_fd()
        }
    }

    /// A UDP socket as a `DatagramIo`, whose receives do as `recv` says.
    struct Udp {
        sock: std::net::UdpSocket,
        recv: Recv,
    }

    /// What a receive of [`Udp`] finds.
    enum Recv {
        /// Nothing (`WouldBlock`).
        Nothing,
        /// An error.
        Fail,
        /// This many junk datagrams.
        Flood(usize),
    }

    impl DatagramIo for Udp {
        fn try_send(&self, to: SocketAddr, c: &[u8], _: Option<usize>) -> io::Result<()> {
            self.sock.send_to(c, to).map(|_| ())
        }
        fn try_recv(&self, batch: &mut RecvBatch) -> io::Result<()> {
            match self.recv {
                Recv::Nothing => Err(io::ErrorKind::WouldBlock.into()),
                Recv::Fail => Err(io::ErrorKind::ConnectionRefused.into()),
                Recv::Flood(n) => {
                    batch.clear();
                    let from = self.sock.local_addr()?;
                    for _ in 0..n {
                        batch.push(from, b"junk");
                    }
                    Ok(())
                }
            }
        }
        fn max_segments(&self) -> usize {
            1
        }
        fn fd(&self) -> BorrowedFd<'_> {
            self.sock.as_fd()
        }
    }

    type Map = BTreeMap<u32, u32>;

    fn publisher_shared(io: Arc<dyn DatagramIo>) -> Arc<PublisherShared<Map>> {
        use grapevine_core::publisher::{Publisher as CorePublisher, PublisherConfig};
        let core = CorePublisher::new(
            PublisherConfig::default(),
            crate::SessionId(5),
            Instant::now(),
        )
        .unwrap();
        let engine =
            crate::driver::publisher::PublisherEngine::new(core, Typed::new(Map::new()), 1);
        Arc::new(PublisherShared::new(
            engine,
            io,
            SocketAddr::from(([239, 255, 0, 1], 9)),
        ))
    }

    fn subscriber_shared(io: Arc<dyn DatagramIo>) -> Arc<SubscriberShared<Map>> {
        let core = CoreSubscriber::new(SubscriberConfig::default()).unwrap();
        let metrics = SubscriberMetrics::new(crate::StreamId(1), None, None);
        let engine = SubscriberEngine::new(core, Typed::new(Map::new()), metrics);
        Arc::new(SubscriberShared::new(engine, io))
    }

    /// The event masks (`/proc/self/fdinfo`) with which the reactor's
    /// epoll instances watch the socket whose inode is `inode`.
    fn epoll_masks(inode: u64) -> Vec<u32> {
        let mut masks = Vec::new();
        for fd in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
            let target = std::fs::read_link(fd.path()).unwrap_or_default();
            if target.to_string_lossy() != "anon_inode:[eventpoll]" {
                continue;
            }
            let info = format!("/proc/self/fdinfo/{}", fd.file_name().to_string_lossy());
            let info = std::fs::read_to_string(info).unwrap_or_default();
            for line in info.lines().filter(|l| l.starts_with("tfd:")) {
                // `tfd:  9 events:  19 data:  0  pos:0 ino:61c sdev:9`:
                // a value follows its name, in the same word or the next.
                let field = |name: &str| {
                    let mut words = line.split_whitespace();
                    let word = words.find(|w| w.starts_with(name))?;
                    match &word[name.len()..] {
                        "" => words.next().map(str::to_owned),
                        v => Some(v.to_owned()),
                    }
                };
                let ino = field("ino:").and_then(|i| u64::from_str_radix(&i, 16).ok());
                let events = field("events:").and_then(|e| u32::from_str_radix(&e, 16).ok());
                if let (Some(ino), Some(events)) = (ino, events) {
                    if ino == inode {
                        masks.push(events);
                    }
                }
            }
        }
        masks
    }

    const EPOLLIN: u32 = 0x1;
    const EPOLLOUT: u32 = 0x4;

    /// Both drivers watch their socket for reading only: a UDP socket
    /// watched for writability wakes the reactor after every datagram it
    /// sends (as the kernel frees it), a context switch per send.
    #[test]
    fn the_drivers_watch_their_socket_for_reading_only() {
        use std::os::unix::fs::MetadataExt;
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_nonblocking(true).unwrap();
        let inode = std::fs::metadata(format!("/proc/self/fd/{}", {
            use std::os::fd::AsRawFd;
            sock.as_raw_fd()
        }))
        .unwrap()
        .ino();
        let io: Arc<dyn DatagramIo> = Arc::new(Udp {
            sock,
            recv: Recv::Nothing,
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let masks = rt.block_on(async {
            let p = publisher_shared(Arc::clone(&io));
            let tx = p.driver_tx();
            let publisher = tokio::spawn(publisher(p, tx));
            let (events, _events_rx) = mpsc::channel(16);
            let (status, _status_rx) = watch::channel(Default::default());
            let subscriber = tokio::spawn(subscriber(
                subscriber_shared(Arc::clone(&io)),
                Outputs { events, status },
            ));
            // Both tasks register in their first poll, which a yield of
            // this (current-thread) runtime's main task lets happen.
            tokio::task::yield_now().await;
            let masks = epoll_masks(inode);
            publisher.abort();
            subscriber.abort();
            masks
        });
        // Each driver's registration (one epoll instance may list a
        // descriptor more than once).
        assert!(masks.len() >= 2, "{masks:x?}");
        for m in masks {
            assert_ne!(m & EPOLLIN, 0, "{m:x}");
            assert_eq!(m & EPOLLOUT, 0, "{m:x}");
        }
    }

    /// A subscriber whose socket never drains (a batch of datagrams on
    /// every receive, as near its limit) still lets the tasks that share
    /// its thread run: a receive charges tokio's cooperative budget. The
    /// runtime runs on a thread of its own, so that a driver that never
    /// yields fails the test instead of hanging it.
    #[test]
    fn a_busy_subscriber_lets_the_tasks_beside_it_run() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_nonblocking(true).unwrap();
        // Readable for ever: a datagram that is never read.
        sock.send_to(b"x", sock.local_addr().unwrap()).unwrap();
        let io: Arc<dyn DatagramIo> = Arc::new(Udp {
            sock,
            recv: Recv::Flood(32),
        });
        let shared = subscriber_shared(io);
        let (done, finished) = std::sync::mpsc::channel();
        let driver = Arc::clone(&shared);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let (events, _events_rx) = mpsc::channel(16);
                let (status, _status_rx) = watch::channel(Default::default());
                tokio::spawn(subscriber(driver, Outputs { events, status }));
                // Each yield hands the thread to the driver, which must
                // hand it back.
                for _ in 0..20 {
                    tokio::task::yield_now().await;
                }
                let _ = done.send(());
            });
        });
        let back = finished.recv_timeout(Duration::from_secs(20));
        let received = shared.lock().stats.datagrams_received;
        assert!(
            back.is_ok(),
            "the driver kept the thread ({received} datagrams)"
        );
        // It did run, and many batches at a time.
        assert!(received >= 10 * 128, "{received} datagrams");
    }

    /// A publisher whose socket fills waits for it to be writable again
    /// (registered for that while it is full) and then sends the rest:
    /// every delta reaches the peer as it reads, the last one included.
    #[test]
    fn a_full_socket_is_drained_once_writable_again() {
        use grapevine_core::wire::{Datagram, Message};
        let (ours, peer) = std::os::unix::net::UnixDatagram::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let io: Arc<dyn DatagramIo> = Arc::new(Pair { sock: ours });
        let shared = publisher_shared(io);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let tx = shared.driver_tx();
        rt.spawn(publisher(Arc::clone(&shared), tx));
        // Publish until the socket is full and deltas wait, then some.
        let mut last = None;
        let mut full_at = None;
        for k in 0..200_000u32 {
            let mut e = shared.lock();
            last = Some(
                e.publish(&grapevine_core::state::MapDelta::Upsert(k, k))
                    .unwrap(),
            );
            if e.send_live(&*shared.io, shared.group) {
                shared.wake();
            }
            if e.core.queued_bytes() > 0 && full_at.is_none() {
                full_at = Some(k);
            }
            if full_at.is_some_and(|f| k > f + 1_000) {
                break;
            }
        }
        assert!(full_at.is_some(), "the socket never filled");
        let last = last.unwrap().0;
        // Read until the last delta arrives: only the driver can send it
        // now, once the socket is writable again.
        peer.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut buf = vec![0; 65_536];
        let mut seen = 0;
        while seen < last {
            let n = peer.recv(&mut buf).expect("the rest was never sent");
            if let Ok(d) = Datagram::decode(&buf[..n]) {
                for m in d.messages() {
                    if let Message::Delta(d) = m {
                        seen = seen.max(d.seq.0);
                    }
                }
            }
        }
        assert_eq!(seen, last);
        rt.shutdown_background();
    }

    #[test]
    fn the_pause_after_errors_doubles_to_a_bound_and_resets() {
        let mut b = Backoff::default();
        let ms: Vec<u128> = (0..10).map(|_| b.next().as_millis()).collect();
        assert_eq!(ms, [1, 2, 4, 8, 16, 32, 64, 100, 100, 100]);
        b.reset();
        assert_eq!(b.next(), Duration::from_millis(1));
        let mut b = Backoff { errors: u32::MAX };
        assert_eq!(b.next(), Backoff::MAX);
    }
}
