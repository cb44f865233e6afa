//! The busy-poll runtime: one thread per handle that polls the socket and
//! the clock in a loop and never sleeps.

use std::hint::spin_loop;
use std::io;
use std::sync::atomic::Ordering;
use std::time::Instant;

use grapevine_core::state::State;

use super::stopped;
use crate::driver::publisher::{DriverTx, PublisherShared};
use crate::driver::subscriber::{Outputs, SubscriberShared};
use crate::driver::Flush;
use crate::io::RecvBatch;
use crate::publisher::SHUTDOWN_FLUSH;

/// Whether `batch` was filled by one receive (errors counted by `on_error`).
fn receive(io: &dyn crate::io::DatagramIo, batch: &mut RecvBatch, on_error: impl FnOnce()) -> bool {
    match io.try_recv(batch) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
        Err(_) => {
            on_error();
            false
        }
    }
}

fn due(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|d| Instant::now() >= d)
}

pub(super) fn publisher<S: State>(shared: &PublisherShared<S>, mut tx: DriverTx) {
    let mut batch = RecvBatch::new();
    let (mut flush, mut deadline, _) = shared.turn(None, &mut tx);
    let mut closing_since = None;
    while !stopped(&shared.stop) {
        let got = receive(&*shared.io, &mut batch, || shared.recv_error());
        let kicked = shared.kick.swap(false, Ordering::AcqRel);
        if got || kicked || flush == Flush::Blocked || due(deadline) {
            let closing;
            (flush, deadline, closing) = shared.turn(got.then_some(&mut batch), &mut tx);
            if closing {
                let since = *closing_since.get_or_insert_with(Instant::now);
                if flush == Flush::Done || since.elapsed() >= SHUTDOWN_FLUSH {
                    return;
                }
            }
        } else {
            spin_loop();
        }
    }
}

pub(super) fn subscriber<S: State>(shared: &SubscriberShared<S>, out: &Outputs) {
    let mut batch = RecvBatch::new();
    // What arrives while a batch's snapshots are handled: a few datagrams
    // at a time, handled at once.
    let mut more = RecvBatch::with_buffers(super::MORE_BUFFERS);
    let mut deadline = shared.turn(None, None, out);
    while !stopped(&shared.stop) {
        let got = receive(&*shared.io, &mut batch, || shared.recv_error());
        if got || due(deadline) {
            deadline = shared.turn(got.then_some(&mut batch), Some(&mut more), out);
        } else {
            spin_loop();
        }
    }
}
