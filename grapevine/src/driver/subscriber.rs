//! The subscriber's engine as the drivers see it.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use grapevine_core::state::{State, Typed};
use grapevine_core::subscriber::{Event, Status, Subscriber as CoreSubscriber};
use grapevine_core::wire::carries_snapshots;
use grapevine_core::Destination;
use tokio::sync::{mpsc, watch};

use super::{send, Sent};
use crate::io::{DatagramIo, RecvBatch};
use crate::metrics::SubscriberMetrics;
use crate::subscriber::SubscriberStats;

/// The subscriber's core, its replica and where its output goes.
pub(crate) struct SubscriberEngine<S> {
    pub(crate) core: CoreSubscriber,
    pub(crate) replica: Typed<S>,
    nak_buf: Vec<u8>,
    pub(crate) stats: SubscriberStats,
    metrics: SubscriberMetrics,
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
    pub(crate) fn new(core: CoreSubscriber, replica: Typed<S>, metrics: SubscriberMetrics) -> Self {
        Self {
            nak_buf: vec![0; core.config().max_datagram_size()],
            core,
            replica,
            stats: SubscriberStats::default(),
            metrics,
        }
    }

    /// The counters: the driver's, the core's and the socket layer's.
    pub(crate) fn all_stats(&self, io: &dyn DatagramIo) -> SubscriberStats {
        SubscriberStats {
            protocol: self.core.stats().clone(),
            simulated_drops: io.simulated_drops(),
            ..self.stats.clone()
        }
    }

    /// When the driver must next take a turn: the core's deadline, or the
    /// next recording of the metrics.
    pub(crate) fn deadline(&self) -> Instant {
        let metrics = self.metrics.next();
        self.core.poll_timeout().map_or(metrics, |t| t.min(metrics))
    }

    /// Hands a received batch to the core, in the order of
    /// [`handle_batch`].
    pub(crate) fn receive(
        &mut self,
        now: Instant,
        batch: &mut RecvBatch,
        more: Option<(&dyn DatagramIo, &mut RecvBatch)>,
    ) {
        // Before sync, in arrival order: the first datagram of a session
        // is only heard, not used (PROTOCOL.md §8.4), and a snapshot
        // datagram is the one to spare, not a delta.
        let more = more.filter(|_| self.core.is_synced());
        let reorder = more.is_some();
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        self.core.set_wall_clock(now, wall);
        let core = &mut self.core;
        let replica = &mut self.replica;
        handle_batch(
            now,
            batch,
            more,
            reorder,
            &mut self.stats,
            |at, from, datagram| {
                core.handle_datagram(at, from, datagram, replica);
            },
        );
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
            log(&event);
            if let Event::Synced { elapsed, .. } = event {
                self.metrics.synced(elapsed);
            }
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
        if self.metrics.due(now) {
            let stats = self.all_stats(io);
            self.metrics.record(&stats, &new);
        }
    }
}

/// Logs a subscriber event through `tracing`: what an operator wants to
/// see at `info` (the session, sync, restarts, a silent publisher), at
/// `warn` what needs fixing or costs consistency (a second publisher on the
/// stream, a gap), and per leaf at `debug`.
fn log(event: &Event) {
    match event {
        Event::SessionStarted { session } => tracing::info!(%session, "publisher session heard"),
        Event::Synced { seq, elapsed } => {
            tracing::info!(
                seq = seq.0,
                elapsed_ms = elapsed.as_millis() as u64,
                "synced"
            );
        }
        Event::Consistency { consistent } => tracing::info!(consistent, "consistency changed"),
        Event::Gap { first, last } => tracing::warn!(
            first = first.0,
            last = last.0,
            "sequence numbers lost; the leaves they touched are repaired from snapshots"
        ),
        Event::LeafStale { key } => tracing::debug!(key = ?key, "leaf stale"),
        Event::LeafRepaired { key } => tracing::debug!(key = ?key, "leaf repaired"),
        Event::DeltaApplied { seq } => tracing::trace!(seq = seq.0, "delta applied"),
        Event::ApplyFailed { key, seq, error } => {
            tracing::warn!(key = ?key, seq = seq.0, %error, "the state could not apply an update");
        }
        Event::PublisherRestarted { old, new } => {
            tracing::info!(%old, %new, "publisher restarted; resynchronising");
        }
        Event::OtherPublisher { followed, other } => tracing::warn!(
            %followed,
            %other,
            "another publisher is sending on this stream; following the first heard \
             (give each publisher its own stream or port)"
        ),
        Event::PublisherGone => tracing::info!("publisher gone (no heartbeat)"),
        Event::PublisherBack => tracing::info!("publisher back"),
        _ => tracing::debug!(?event, "event"),
    }
}

/// Calls `handle` with each datagram of `batch` in arrival order, or with
/// `reorder` those carrying snapshots after the others (a CycleEnd keeps
/// its place: [`carries_snapshots`]), so that no delta waits behind the snapshots received
/// with it (snapshots may be handled in any order relative to deltas,
/// PROTOCOL.md §8.2; the others keep their order). With `more`, after each
/// cycle datagram but the last, it receives again into that batch and
/// hands over at once whatever arrived meanwhile, in order: a delta then
/// waits for one datagram of snapshots at most, not for the whole batch.
/// `handle` gets the time of the receive: `now` for `batch`, a fresh one
/// for what arrived in between. Counts what was received in `stats`.
fn handle_batch(
    now: Instant,
    batch: &mut RecvBatch,
    mut more: Option<(&dyn DatagramIo, &mut RecvBatch)>,
    reorder: bool,
    stats: &mut SubscriberStats,
    mut handle: impl FnMut(Instant, SocketAddr, &mut [u8]),
) {
    fn count(stats: &mut SubscriberStats, batch: &RecvBatch) {
        stats.datagrams_received += batch.len() as u64;
        stats.bytes_received += batch.bytes() as u64;
        stats.recv_batches += 1;
    }
    count(stats, batch);
    if !reorder {
        batch.for_each(|from, datagram| handle(now, from, datagram));
        return;
    }
    let mut cycles = 0;
    batch.for_each(|from, datagram| {
        if carries_snapshots(datagram) {
            cycles += 1;
        } else {
            handle(now, from, datagram);
        }
    });
    batch.for_each(|from, datagram| {
        if !carries_snapshots(datagram) {
            return;
        }
        handle(now, from, datagram);
        cycles -= 1;
        let Some((io, extra)) = more.as_mut().filter(|_| cycles > 0) else {
            return;
        };
        match io.try_recv(extra) {
            Ok(()) => {
                // Received just now: the batch's time is older.
                count(stats, extra);
                let at = Instant::now();
                extra.for_each(|from, datagram| handle(at, from, datagram));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => stats.recv_errors += 1,
        }
    });
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

    /// The driver's turn: hands `batch` (if any) to the core (receiving
    /// more into `more` between its snapshot datagrams, if given), fires
    /// timers, sends NAKs, forwards events and status. Returns when the
    /// next turn is due (the core's deadline, or the metrics').
    pub(crate) fn turn(
        &self,
        batch: Option<&mut RecvBatch>,
        more: Option<&mut RecvBatch>,
        out: &Outputs,
    ) -> Option<Instant> {
        let mut e = self.lock();
        let now = Instant::now();
        if let Some(batch) = batch {
            e.receive(now, batch, more.map(|m| (&*self.io, m)));
        }
        e.finish(now, &*self.io, out);
        Some(e.deadline())
    }

    /// Counts a receive error.
    pub(crate) fn recv_error(&self) {
        self.lock().stats.recv_errors += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::io;
    use std::os::fd::{AsFd, BorrowedFd};
    use std::sync::Mutex;

    use grapevine_core::wire::{MessageKind, HEADER_LEN};

    use super::*;

    /// A datagram of messages of `kinds` (empty bodies), tagged `tag` in
    /// its last byte.
    fn datagram(kinds: &[MessageKind], tag: u8) -> Vec<u8> {
        let mut d = vec![0; HEADER_LEN];
        for &k in kinds {
            d.extend([k as u8, 0, 0, 0]);
        }
        d.push(tag);
        d
    }

    /// A socket that hands out queued groups of datagrams, one group per
    /// receive.
    struct Feed {
        sock: std::net::UdpSocket,
        groups: Mutex<VecDeque<Vec<Vec<u8>>>>,
    }

    impl DatagramIo for Feed {
        fn try_send(&self, _: SocketAddr, _: &[u8], _: Option<usize>) -> io::Result<()> {
            Ok(())
        }
        fn try_recv(&self, batch: &mut RecvBatch) -> io::Result<()> {
            let group = self.groups.lock().unwrap().pop_front();
            let group = group.ok_or(io::ErrorKind::WouldBlock)?;
            batch.clear();
            let from = SocketAddr::from(([127, 0, 0, 1], 9));
            for d in group {
                assert!(batch.push(from, &d));
            }
            Ok(())
        }
        fn max_segments(&self) -> usize {
            1
        }
        fn fd(&self) -> BorrowedFd<'_> {
            self.sock.as_fd()
        }
    }

    /// Deltas first, then the datagrams of snapshots (a CycleEnd keeps its
    /// place among the deltas: its `end_seq` is a claim on the tail); with
    /// `more`, what arrives between two snapshot datagrams is handled
    /// before the next one, and nothing is received after the last.
    #[test]
    fn deltas_go_before_the_snapshots_received_with_them() {
        use MessageKind::{CycleBegin, CycleEnd, Delta, Heartbeat, LeafSnapshot};
        let c: &[MessageKind] = &[CycleBegin, LeafSnapshot];
        let (d, h): (&[MessageKind], &[MessageKind]) = (&[Delta], &[Heartbeat]);
        let e: &[MessageKind] = &[CycleBegin, CycleEnd];
        let from = SocketAddr::from(([127, 0, 0, 1], 9));
        let fill = || {
            let mut b = RecvBatch::with_buffers(8);
            for (k, t) in [(c, 1), (d, 2), (c, 3), (e, 6), (c, 4), (h, 5)] {
                assert!(b.push(from, &datagram(k, t)));
            }
            b
        };
        let feed = Feed {
            sock: std::net::UdpSocket::bind("127.0.0.1:0").unwrap(),
            groups: Mutex::new(
                [
                    vec![datagram(d, 10), datagram(c, 11)],
                    vec![datagram(d, 12)],
                    vec![datagram(d, 13)],
                ]
                .into(),
            ),
        };
        let tags = |batch: &mut RecvBatch,
                    more: Option<(&dyn DatagramIo, &mut RecvBatch)>,
                    reorder: bool| {
            let mut stats = SubscriberStats::default();
            let mut order = Vec::new();
            handle_batch(
                Instant::now(),
                batch,
                more,
                reorder,
                &mut stats,
                |_, _, d| order.push(*d.last().unwrap()),
            );
            (order, stats)
        };
        let (order, _) = tags(&mut fill(), None, false);
        assert_eq!(order, [1, 2, 3, 6, 4, 5], "in arrival order before sync");
        let (order, stats) = tags(&mut fill(), None, true);
        assert_eq!(order, [2, 6, 5, 1, 3, 4]);
        assert_eq!((stats.datagrams_received, stats.recv_batches), (6, 1));

        let mut extra = RecvBatch::with_buffers(2);
        let (order, stats) = tags(&mut fill(), Some((&feed, &mut extra)), true);
        assert_eq!(order, [2, 6, 5, 1, 10, 11, 3, 12, 4]);
        assert_eq!((stats.datagrams_received, stats.recv_batches), (9, 3));
        assert_eq!(
            feed.groups.lock().unwrap().len(),
            1,
            "no receive after the last"
        );
    }
}
