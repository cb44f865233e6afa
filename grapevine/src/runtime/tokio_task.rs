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
/// was nothing after all (readiness is then cleared) or an error (counted).
fn receive(
    ready: &UdpSocket,
    io: &dyn DatagramIo,
    batch: &mut RecvBatch,
    on_error: impl FnOnce(),
) -> bool {
    match ready.try_io(Interest::READABLE, || io.try_recv(batch)) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
        Err(_) => {
            on_error();
            false
        }
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
                        got = r.is_ok() && receive(&ready, io, &mut batch, || shared.recv_error());
                    }
                    () = shared.wake.notified() => {}
                }
            }
            Flush::Done => {
                tokio::select! {
                    () = sleep_until(deadline) => {}
                    r = ready.readable() => {
                        got = r.is_ok() && receive(&ready, io, &mut batch, || shared.recv_error());
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
    let mut deadline = shared.turn(None, None, &out);
    loop {
        tokio::select! {
            r = ready.readable() => {
                if r.is_ok() && receive(&ready, io, &mut batch, || shared.recv_error()) {
                    deadline = shared.turn(Some(&mut batch), Some(&mut more), &out);
                }
            }
            () = sleep_until(deadline) => deadline = shared.turn(None, None, &out),
        }
    }
}
