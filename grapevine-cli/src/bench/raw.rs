//! Raw UDP baselines, measured by `grapevine bench` in the same run as
//! Grapevine's own numbers:
//!
//! * fan-out: datagrams of about the size, rate and GSO batching of
//!   Grapevine's fan-out run, sent by a bare socket to receivers that only
//!   count them (with GRO, as Grapevine's subscribers read). What the
//!   sender's CPU does with 1 and with 4 receivers is what the kernel
//!   charges for fan-out on loopback, without Grapevine.
//! * latency: datagrams of a delta's size stamped with the wall clock,
//!   sent one at a time at the latency run's rate to a receiver that waits
//!   for them as Grapevine's subscriber does (a tokio socket on a
//!   current-thread runtime, or spinning): the one-way latency of the
//!   waiting itself, without Grapevine.

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use grapevine::io::{DatagramIo, UdpIo};
use grapevine::socket::{bind_receiver, bind_sender};
use nix::sys::socket::{setsockopt, sockopt::UdpGroSegment};
use tokio::sync::oneshot::error::TryRecvError;

use super::measure::{cpu_time, Percentiles};
use super::state::wall_ns;
use super::sub::{read_end, SubReport};
use super::DriverArg;
use crate::NetArgs;

/// Bytes of each raw datagram: about the mean of Grapevine's fan-out run
/// (full datagrams of deltas, snapshot datagrams).
pub(crate) const DATAGRAM: usize = 1_100;
/// Datagrams per send call: about Grapevine's in its fan-out run.
pub(crate) const SEGMENTS: usize = 9;
/// Datagrams per second by default: about Grapevine's at 100,000 deltas/s.
pub(crate) const RATE: u64 = 12_600;

/// Sends for `duration` at `rate` datagrams per second; returns the
/// datagrams sent and the CPU time it took.
pub(crate) async fn send(net: &NetArgs, rate: u64, duration: Duration) -> Result<(u64, Duration)> {
    let socket = bind_sender(&net.multicast()).context("binding the raw sender")?;
    let group = socket.group_addr();
    let io = UdpIo::new(socket).context("the raw sender's socket")?;
    let segments = SEGMENTS.min(io.max_segments()).max(1);
    let payload = vec![0x5a; DATAGRAM * segments];
    let every = Duration::from_secs_f64(segments as f64 / rate.max(1) as f64);
    let cpu0 = cpu_time();
    let start = Instant::now();
    let mut next = start;
    let mut sent = 0u64;
    while start.elapsed() < duration {
        next += every;
        tokio::time::sleep_until(next.into()).await;
        match io.try_send(group, &payload, (segments > 1).then_some(DATAGRAM)) {
            Ok(()) => sent += segments as u64,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e).context("raw send"),
        }
    }
    Ok((sent, cpu_time().saturating_sub(cpu0)))
}

/// `grapevine bench-sub --raw`: counts datagrams until told how many were
/// sent (`end <n>`), then reports.
pub(crate) async fn receive(net: &NetArgs) -> Result<SubReport> {
    let socket: UdpSocket = bind_receiver(&net.multicast())
        .context("binding the raw receiver")?
        .into_std();
    setsockopt(&socket, UdpGroSegment, &true).context("UDP_GRO")?;
    socket.set_read_timeout(Some(Duration::from_millis(20)))?;
    let count = Arc::new(AtomicU64::new(0));
    let target = Arc::new(AtomicU64::new(u64::MAX));
    let stop = Arc::new(AtomicBool::new(false));
    let (done_tx, done) = tokio::sync::oneshot::channel();
    let counter = std::thread::spawn({
        let (count, target, stop) = (count.clone(), target.clone(), stop.clone());
        move || {
            let mut buf = vec![0u8; 65_536];
            let mut done_tx = Some(done_tx);
            while !stop.load(Ordering::Acquire) {
                if let Ok(n) = socket.recv(&mut buf) {
                    // A GRO run of equal datagrams, the last maybe shorter.
                    count.fetch_add(n.div_ceil(DATAGRAM) as u64, Ordering::AcqRel);
                }
                if count.load(Ordering::Acquire) >= target.load(Ordering::Acquire) {
                    if let Some(tx) = done_tx.take() {
                        let _ = tx.send(());
                    }
                }
            }
        }
    });
    println!("ready");
    println!("synced 0");
    let sent = read_end("how many datagrams it sent", "end <n>").await?;
    target.store(sent, Ordering::Release);
    let all = tokio::time::timeout(Duration::from_secs(10), done)
        .await
        .is_ok();
    stop.store(true, Ordering::Release);
    let _ = counter.join();
    let received = count.load(Ordering::Acquire);
    Ok(SubReport {
        consistent: all && received == sent,
        deltas_applied: received,
        datagrams_received: received,
        cpu_ns: u64::try_from(cpu_time().as_nanos()).unwrap_or(u64::MAX),
        ..SubReport::default()
    })
}

/// Sends a datagram of `size` bytes (at least 8), its first 8 the wall
/// clock in nanoseconds, at `rate` per second for `duration`, from this
/// (blocking) thread; returns the number sent.
pub(crate) fn send_stamped(
    net: &NetArgs,
    size: usize,
    rate: u64,
    duration: Duration,
) -> Result<u64> {
    let socket = bind_sender(&net.multicast()).context("binding the raw sender")?;
    let group = socket.group_addr();
    let socket = socket.into_std();
    let mut payload = vec![0x5a; size.max(8)];
    super::paced(rate, duration, || {
        payload
            .get_mut(..8)
            .unwrap_or_default()
            .copy_from_slice(&wall_ns().to_le_bytes());
        match socket.send_to(&payload, group) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e).context("raw send"),
        }
    })
}

/// Latency samples kept at most (the first ones).
const MAX_SAMPLES: usize = 1 << 21;

/// The one-way latency of a stamped datagram received now, in nanoseconds.
fn latency_of(datagram: &[u8]) -> Option<u32> {
    let stamp = u64::from_le_bytes(datagram.get(..8)?.try_into().ok()?);
    Some(u32::try_from(wall_ns().saturating_sub(stamp)).unwrap_or(u32::MAX))
}

/// What a stamped receiver hands back: the datagrams it timed, and the
/// latencies of the first [`MAX_SAMPLES`] of them.
#[derive(Default)]
struct Stamped {
    count: u64,
    samples: Vec<u32>,
}

impl Stamped {
    fn keep(&mut self, datagram: &[u8]) {
        if let Some(l) = latency_of(datagram) {
            if self.samples.len() < MAX_SAMPLES {
                self.samples.push(l);
            }
            self.count += 1;
        }
    }

    /// Whether the `target` count, once known, is reached.
    fn reached(&self, target: Option<u64>) -> bool {
        target.is_some_and(|t| self.count >= t)
    }
}

/// `grapevine bench-sub --stamped`: receives stamped datagrams, waiting as
/// `driver` says, until told how many were sent (`end <n>`) and all came
/// (or 10 s passed); reports their one-way latencies.
pub(crate) async fn receive_stamped(net: &NetArgs, driver: DriverArg) -> Result<SubReport> {
    let socket = bind_receiver(&net.multicast()).context("binding the raw receiver")?;
    let stop = Arc::new(AtomicBool::new(false));
    let wake = Arc::new(tokio::sync::Notify::new());
    // The count told by `end <n>`, to the receiver; what it received, back
    // once it has that many (or is stopped).
    let (target_tx, mut target_rx) = tokio::sync::oneshot::channel::<u64>();
    let (done_tx, mut done) = tokio::sync::oneshot::channel::<Stamped>();
    let mut got = Stamped {
        count: 0,
        samples: Vec::with_capacity(1 << 16),
    };
    let mut buf = vec![0u8; 2_048];
    match driver {
        // A task on this (current-thread) runtime, as Grapevine's tokio
        // driver: tokio's own socket, woken by its reactor.
        DriverArg::Tokio => {
            let socket = socket.into_tokio().context("the raw receiver's socket")?;
            let wake = Arc::clone(&wake);
            tokio::spawn(async move {
                let mut target = None;
                while !got.reached(target) {
                    tokio::select! {
                        r = socket.recv(&mut buf) => match r {
                            Ok(n) => got.keep(buf.get(..n).unwrap_or_default()),
                            Err(_) => break,
                        },
                        t = &mut target_rx, if target.is_none() => match t {
                            Ok(t) => target = Some(t),
                            Err(_) => break,
                        },
                        () = wake.notified() => break,
                    }
                }
                let _ = done_tx.send(got);
            });
        }
        // A thread spinning on a non-blocking socket, as the busy-poll
        // driver.
        DriverArg::BusyPoll => {
            let socket = socket.into_std();
            socket.set_nonblocking(true)?;
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut target = None;
                while !stop.load(Ordering::Acquire) && !got.reached(target) {
                    if target.is_none() {
                        match target_rx.try_recv() {
                            Ok(t) => target = Some(t),
                            Err(TryRecvError::Empty) => {}
                            Err(TryRecvError::Closed) => break,
                        }
                    }
                    if let Ok(n) = socket.recv(&mut buf) {
                        got.keep(buf.get(..n).unwrap_or_default());
                    }
                }
                let _ = done_tx.send(got);
            });
        }
    }
    println!("ready");
    println!("synced 0");
    let sent = read_end("how many datagrams it sent", "end <n>").await?;
    let _ = target_tx.send(sent);
    let got = match tokio::time::timeout(Duration::from_secs(10), &mut done).await {
        Ok(got) => got.ok(),
        Err(_) => {
            // Not all came: stop the receiver and take what it has.
            stop.store(true, Ordering::Release);
            wake.notify_one();
            tokio::time::timeout(Duration::from_secs(10), done)
                .await
                .ok()
                .and_then(Result::ok)
        }
    };
    let Stamped {
        count: received,
        mut samples,
    } = got.unwrap_or_default();
    Ok(SubReport {
        consistent: received == sent,
        deltas_applied: received,
        datagrams_received: received,
        latency: Percentiles::of(&mut samples),
        cpu_ns: u64::try_from(cpu_time().as_nanos()).unwrap_or(u64::MAX),
        ..SubReport::default()
    })
}
