//! The subscriber's engine as the drivers see it.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use grapevine_core::state::{State, Typed};
use grapevine_core::subscriber::{Event, Status, Subscriber as CoreSubscriber};
use grapevine_core::Destination;
use tokio::sync::{mpsc, watch};

use super::{send, Sent};
use crate::io::{DatagramIo, RecvBatch};
use crate::subscriber::SubscriberStats;

/// The subscriber's core, its replica and where its output goes.
pub(crate) struct SubscriberEngine<S> {
    pub(crate) core: CoreSubscriber,
    pub(crate) replica: Typed<S>,
    nak_buf: Vec<u8>,
    pub(crate) stats: SubscriberStats,
}

/// Where a subscriber's events and status go. Owned by the driver (task or
/// thread): when it stops, for whatever reason, dropping these closes the
/// handle's event stream and status watch, which is how the handle learns
/// that it stopped.
pub(crate) struct Outputs {
    pub(crate) events: mpsc::Sender<Event>,
    pub(crate) status: watch::Sender<Status>,
}

impl<S: State> SubscriberEngine<S> {
    pub(crate) fn new(core: CoreSubscriber, replica: Typed<S>) -> Self {
        Self {
            nak_buf: vec![0; core.config().max_datagram_size()],
            core,
            replica,
            stats: SubscriberStats::default(),
        }
    }

    /// Hands a received batch to the core.
    pub(crate) fn receive(&mut self, now: Instant, batch: &mut RecvBatch) {
        self.stats.datagrams_received += batch.len() as u64;
        self.stats.bytes_received += batch.bytes() as u64;
        self.stats.recv_batches += 1;
        let core = &mut self.core;
        let replica = &mut self.replica;
        batch.for_each(|from, datagram| core.handle_datagram(now, from, datagram, replica));
    }

    /// Fires due timers, sends NAKs, forwards events and publishes the
    /// status.
    pub(crate) fn finish(&mut self, now: Instant, io: &dyn DatagramIo, out: &Outputs) {
        if self.core.poll_timeout().is_some_and(|at| at <= now) {
            self.core.handle_timeout(now, &mut self.replica);
        }
        while let Some(t) = self.core.poll_transmit(now, &mut self.nak_buf) {
            let Destination::Unicast(to) = t.destination else {
                continue;
            };
            let contents = self.nak_buf.get(..t.size).unwrap_or_default();
            match send(io, to, contents, t.segment_size) {
                Sent::Ok {
                    datagrams, failed, ..
                } => {
                    self.stats.naks_sent += datagrams;
                    self.stats.send_errors += failed;
                }
                Sent::WouldBlock => self.stats.send_errors += 1,
                Sent::Failed { datagrams } => self.stats.send_errors += datagrams,
            }
        }
        while let Some(event) = self.core.poll_event() {
            if out.events.try_send(event).is_err() {
                self.stats.events_dropped += 1;
            }
        }
        let new = self.core.status();
        out.status.send_if_modified(|old| {
            let changed = *old != new;
            *old = new;
            changed
        });
    }
}

/// What a subscriber's handle and its driver share.
pub(crate) struct SubscriberShared<S> {
    engine: Mutex<SubscriberEngine<S>>,
    pub(crate) io: Arc<dyn DatagramIo>,
    /// Stops a busy-poll driver (the handle was dropped).
    pub(crate) stop: AtomicBool,
}

impl<S: State> SubscriberShared<S> {
    pub(crate) fn new(engine: SubscriberEngine<S>, io: Arc<dyn DatagramIo>) -> Self {
        Self {
            engine: Mutex::new(engine),
            io,
            stop: AtomicBool::new(false),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, SubscriberEngine<S>> {
        // A panic while holding the lock (in a user closure given to `read`)
        // leaves the replica as consistent as the closure left it.
        self.engine.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The driver's turn: hands `batch` (if any) to the core, fires timers,
    /// sends NAKs, forwards events and status. Returns the core's next
    /// deadline.
    pub(crate) fn turn(&self, batch: Option<&mut RecvBatch>, out: &Outputs) -> Option<Instant> {
        let mut e = self.lock();
        let now = Instant::now();
        if let Some(batch) = batch {
            e.receive(now, batch);
        }
        e.finish(now, &*self.io, out);
        e.core.poll_timeout()
    }

    /// Counts a receive error.
    pub(crate) fn recv_error(&self) {
        self.lock().stats.recv_errors += 1;
    }
}
