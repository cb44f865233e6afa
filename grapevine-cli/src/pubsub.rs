//! `grapevine pub` and `grapevine sub`: publisher and subscriber as separate
//! processes.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use grapevine::order_book::{BookDeltaGen, OrderBook};
use grapevine::{Event, Publisher, SnapshotRate, Subscriber};
use serde::Serialize;

use crate::NetArgs;

/// Flags of `grapevine pub`.
#[derive(Debug, Args)]
pub(crate) struct PubArgs {
    #[command(flatten)]
    net: NetArgs,
    /// Price levels (leaves) of the initial order book.
    #[arg(long, default_value_t = 10_000)]
    leaves: usize,
    /// Live deltas to publish before printing the state line.
    #[arg(long, default_value_t = 0)]
    deltas: u64,
    /// Deltas per second.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Snapshot cycle rate in leaves per second.
    #[arg(long, default_value_t = 100_000)]
    snapshot_rate: u32,
    /// Heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 100)]
    heartbeat_ms: u64,
    /// Seed of the book and of the deltas.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Debug, Serialize)]
struct PubLine {
    seq: u64,
    leaves: usize,
    digest: String,
    session: String,
}

pub(crate) async fn run_pub(args: PubArgs) -> Result<ExitCode> {
    if args.rate == 0 && args.deltas > 0 {
        bail!("--rate must be positive to publish --deltas");
    }
    let book = OrderBook::generate(args.leaves, args.seed);
    let mut gen = BookDeltaGen::new(&book, args.seed.wrapping_add(0x9e37));
    let publisher = Publisher::builder()
        .group(args.net.group)
        .port(args.net.port)
        .interface(args.net.interface())
        .stream(args.net.stream())
        .snapshot_rate(SnapshotRate::LeavesPerSec(args.snapshot_rate))
        .heartbeat_interval(Duration::from_millis(args.heartbeat_ms.max(1)))
        .bind(book)
        .await
        .context("starting the publisher")?;
    eprintln!(
        "publishing {} levels on {} stream {} session {}",
        publisher.leaf_count(),
        publisher.group_addr(),
        args.net.stream,
        publisher.session()
    );
    let start = Instant::now();
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while sent < args.deltas {
        tick.tick().await;
        let due = ((args.rate as f64 * start.elapsed().as_secs_f64()) as u64).min(args.deltas);
        let batch = due.saturating_sub(sent);
        if batch > 0 {
            publisher
                .publish_batch((0..batch).map(|_| gen.next_delta()))
                .context("publishing")?;
            sent += batch;
        }
    }
    let line = PubLine {
        seq: publisher.last_seq().0,
        leaves: publisher.leaf_count(),
        digest: publisher.digest().to_string(),
        session: publisher.session().to_string(),
    };
    println!("{}", serde_json::to_string(&line)?);
    eprintln!(
        "published {} deltas in {:.2}s; cycling snapshots until killed",
        sent,
        start.elapsed().as_secs_f64()
    );
    tokio::signal::ctrl_c()
        .await
        .context("waiting for ctrl-c")?;
    publisher.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// Flags of `grapevine sub`.
#[derive(Debug, Args)]
pub(crate) struct SubArgs {
    #[command(flatten)]
    net: NetArgs,
    /// Exit 0 once consistent through this sequence number of the current
    /// publisher session.
    #[arg(long)]
    until_seq: Option<u64>,
    /// Print JSON: the final line with `--until-seq`, one status line per
    /// second without.
    #[arg(long)]
    json: bool,
    /// With `--until-seq`: give up (exit 1) after this many seconds (default
    /// 60). Without: stop following after this many seconds (default: never).
    #[arg(long)]
    timeout: Option<f64>,
    /// Probability of dropping each received datagram (for experiments).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Seed of the simulated losses.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Debug, Serialize)]
struct SubLine {
    seq: u64,
    digest: String,
    synced: bool,
    consistent: bool,
    sync_ms: Option<u64>,
    session: Option<String>,
    stale_leaves: usize,
    leaves: usize,
    gaps: u64,
}

pub(crate) async fn run_sub(args: SubArgs) -> Result<ExitCode> {
    if let Some(t) = args.timeout {
        if !(t.is_finite() && t > 0.0) {
            bail!("--timeout must be a positive number of seconds");
        }
    }
    let timeout = args.timeout.unwrap_or(60.0);
    let mut builder = Subscriber::<OrderBook>::builder()
        .group(args.net.group)
        .port(args.net.port)
        .interface(args.net.interface())
        .stream(args.net.stream());
    if args.loss > 0.0 {
        builder = builder.simulate_loss(args.loss, args.seed);
    }
    let mut sub = builder.bind().await.context("starting the subscriber")?;
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(timeout);
    let mut synced_at: Option<Duration> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let line = |sub: &Subscriber<OrderBook>, synced_at: Option<Duration>| {
        let st = sub.status();
        SubLine {
            seq: st.seq.0,
            digest: sub.digest().to_string(),
            synced: st.synced,
            consistent: st.consistent,
            sync_ms: synced_at.map(|d| d.as_millis() as u64),
            session: st.session.map(|s| s.to_string()),
            stale_leaves: st.stale_leaves,
            leaves: st.leaves,
            gaps: sub.stats().protocol.gaps,
        }
    };
    if let Some(target) = args.until_seq {
        let reached = |s: &grapevine::Status| s.synced && s.consistent && s.seq.0 >= target;
        loop {
            let before = sub.status();
            let remaining = deadline.saturating_duration_since(Instant::now());
            // Wake on the goal, on sync, and on a change of publisher session.
            let woke = sub
                .wait_until(
                    |s| reached(s) || s.synced != before.synced || s.session != before.session,
                    remaining,
                )
                .await;
            while sub.try_next_event().is_some() {}
            let st = match woke {
                Ok(st) => st,
                Err(_) => {
                    let l = line(&sub, synced_at);
                    eprintln!(
                        "timed out after {:.1}s: {}",
                        timeout,
                        serde_json::to_string(&l)?
                    );
                    return Ok(ExitCode::FAILURE);
                }
            };
            if st.session != before.session && before.session.is_some() {
                synced_at = None;
                eprintln!(
                    "publisher restarted: session {} -> {}; resyncing",
                    before.session.map_or("-".into(), |s| s.to_string()),
                    st.session.map_or("-".into(), |s| s.to_string())
                );
            }
            if st.synced && !before.synced {
                let at = start.elapsed();
                synced_at.get_or_insert(at);
                eprintln!(
                    "synced session={} seq={} after {} ms",
                    st.session.map_or("-".into(), |s| s.to_string()),
                    st.seq.0,
                    at.as_millis()
                );
            }
            if reached(&st) {
                let l = line(&sub, synced_at);
                if args.json {
                    println!("{}", serde_json::to_string(&l)?);
                } else {
                    println!(
                        "consistent at seq {} ({} levels), digest {}",
                        l.seq, l.leaves, l.digest
                    );
                }
                sub.shutdown().await;
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
    // Follow the stream, one status line per second, until the timeout.
    loop {
        tokio::select! {
            ev = sub.next_event() => match ev {
                Some(Event::Synced { seq, .. }) => {
                    let at = start.elapsed();
                    synced_at.get_or_insert(at);
                    eprintln!("synced seq={} after {} ms", seq.0, at.as_millis());
                }
                Some(Event::PublisherRestarted { old, new }) => {
                    synced_at = None;
                    eprintln!("publisher restarted: session {old} -> {new}; resyncing");
                }
                Some(Event::PublisherGone) => eprintln!("publisher gone (no heartbeat)"),
                Some(Event::PublisherBack) => eprintln!("publisher back"),
                Some(_) => {}
                None => bail!("the subscriber stopped"),
            },
            _ = tick.tick() => {
                let l = line(&sub, synced_at);
                if args.json {
                    println!("{}", serde_json::to_string(&l)?);
                } else {
                    println!("seq {}  {}  {} levels  stale {}  gaps {}  digest {}",
                        l.seq,
                        if l.consistent { "consistent" } else if l.synced { "repairing" } else { "syncing" },
                        l.leaves, l.stale_leaves, l.gaps, l.digest);
                }
            }
            _ = tokio::time::sleep_until(deadline.into()), if args.timeout.is_some() => {
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
}
