//! The tokio runtime: a task woken by the reactor (socket readiness) and by
//! tokio timers.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use grapevine_core::state::State;
use tokio::io::Interest;
use tokio::net::UdpSocket;

use crate::driver::publisher::{DriverTx, PublisherShared};
use crate::driver::subscriber::{Outputs, SubscriberShared};
use crate::driver::Flush;
use crate::io::{DatagramIo, RecvBatch};
use crate::publisher::SHUTDOWN_FLUSH;

/// A second descriptor of the socket, registered with the reactor: it
/// only tells when the socket is readable or writable (readiness belongs to
/// the socket, not the descriptor); all I/O goes through the
/// [`DatagramIo`].
fn register(io: &dyn DatagramIo) -> io::Result<UdpSocket> {
    let fd = io.fd().try_clone_to_owned()?;
    UdpSocket::from_std(std::net::UdpSocket::from(fd))
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
    ready: &UdpSocket,
    io: &dyn DatagramIo,
    batch: &mut RecvBatch,
    backoff: &mut Backoff,
    on_error: impl FnOnce(),
) -> bool {
    match ready.try_io(Interest::READABLE, || io.try_recv(batch)) {
        Ok(()) => {
            backoff.reset();
            true
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
        Err(_) => {
            on_error();
            tokio::time::sleep(backoff.next()).await;
            false
        }
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
fn retry<S: State>(ready: &UdpSocket, shared: &PublisherShared<S>, tx: &mut DriverTx) -> Flush {
    let flush = ready.try_io(Interest::WRITABLE, || match shared.turn(None, tx).0 {
        Flush::Blocked => Err(io::ErrorKind::WouldBlock.into()),
        Flush::Done => Ok(()),
    });
    if flush.is_ok() {
        Flush::Done
    } else {
        Flush::Blocked
    }
}

pub(super) async fn publisher<S: State>(shared: Arc<PublisherShared<S>>, mut tx: DriverTx) {
    let Ok(ready) = register(&*shared.io) else {
        shared.recv_error();
        return;
    };
    let io = &*shared.io;
    let mut batch = RecvBatch::new();
    let mut backoff = Backoff::default();
    let mut got = false;
    loop {
        let (flush, deadline, closing) = shared.turn(got.then_some(&mut batch), &mut tx);
        got = false;
        if closing {
            if flush == Flush::Blocked {
                // Best effort: wait (bounded) for room to send the rest.
                let room = tokio::time::timeout(SHUTDOWN_FLUSH, ready.writable()).await;
                if let Ok(Ok(())) = room {
                    retry(&ready, &shared, &mut tx);
                    continue;
                }
            }
            return;
        }
        match flush {
            Flush::Blocked => {
                tokio::select! {
                    r = ready.writable() => match r {
                        Ok(()) => {
                            retry(&ready, &shared, &mut tx);
                        }
                        // The socket is broken; keep a slow pace rather
                        // than spinning.
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    },
                    r = ready.readable() => {
                        got = r.is_ok()
                            && receive(&ready, io, &mut batch, &mut backoff, || shared.recv_error()).await;
                    }
                    () = shared.wake.notified() => {}
                }
            }
            Flush::Done => {
                tokio::select! {
                    () = sleep_until(deadline) => {}
                    r = ready.readable() => {
                        got = r.is_ok()
                            && receive(&ready, io, &mut batch, &mut backoff, || shared.recv_error()).await;
                    }
                    () = shared.wake.notified() => {}
                }
            }
        }
    }
}

pub(super) async fn subscriber<S: State>(shared: Arc<SubscriberShared<S>>, out: Outputs) {
    let Ok(ready) = register(&*shared.io) else {
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
                if r.is_ok()
                    && receive(&ready, io, &mut batch, &mut backoff, || shared.recv_error()).await
                {
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

    /// A socket that is always readable (a datagram waits that is never
    /// read) and whose every receive fails.
    struct Broken {
        sock: std::net::UdpSocket,
    }

    impl DatagramIo for Broken {
        fn try_send(&self, _: SocketAddr, _: &[u8], _: Option<usize>) -> io::Result<()> {
            Ok(())
        }
        fn try_recv(&self, _: &mut RecvBatch) -> io::Result<()> {
            Err(io::ErrorKind::ConnectionRefused.into())
        }
        fn max_segments(&self) -> usize {
            1
        }
        fn fd(&self) -> BorrowedFd<'_> {
            self.sock.as_fd()
        }
    }

    /// A subscriber whose socket keeps failing does not spin: in 300 ms it
    /// tries about ten times (the pauses add up), not hundreds of
    /// thousands.
    #[test]
    fn a_socket_that_keeps_failing_is_retried_with_pauses() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_nonblocking(true).unwrap();
        sock.send_to(b"x", sock.local_addr().unwrap()).unwrap();
        let io: Arc<dyn DatagramIo> = Arc::new(Broken { sock });
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
