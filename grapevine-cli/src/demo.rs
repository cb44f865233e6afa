//! `grapevine demo`: a publisher and several late-joining subscribers in one
//! process, with progress bars and a summary (or one JSON object).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use grapevine::io::Loss;
use grapevine::order_book::{BookDeltaGen, OrderBook};
use grapevine::{Publisher, SnapshotRate, Status, Subscriber};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tokio::sync::watch;

use crate::pubsub::RepairFigures;
use crate::NetArgs;

/// Flags of `grapevine demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    #[command(flatten)]
    net: NetArgs,
    #[command(flatten)]
    metrics: crate::metrics::MetricsArgs,
    /// Price levels (leaves) in the published order book.
    #[arg(long, default_value_t = 100_000)]
    leaves: usize,
    /// Live deltas per second while the demo runs.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Subscribers; the first joins at once, the others at even intervals
    /// during the first half of the run.
    #[arg(long, default_value_t = 3)]
    subscribers: usize,
    /// Seconds of live deltas.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Probability that a subscriber drops each datagram it receives (each
    /// subscriber draws its own losses).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Snapshot cycle rate in leaves per second.
    #[arg(long, default_value_t = 100_000)]
    snapshot_rate: u32,
    /// Seed of the book, the deltas and the simulated losses.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print one JSON object with the outcome instead of progress and a
    /// summary.
    #[arg(long)]
    json: bool,
    /// Seconds to wait after the last delta for every subscriber to become
    /// consistent.
    #[arg(long, default_value_t = 60.0)]
    settle_timeout: f64,
}

#[derive(Debug, Serialize)]
struct PublisherSummary {
    seq: u64,
    leaves: usize,
    digest: String,
    deltas_per_sec: f64,
    snapshot_bytes_per_sec: f64,
    /// NAKs received from the subscribers.
    naks_received: u64,
    /// Distinct sequence numbers asked for by NAKs.
    nak_seqs_requested: u64,
    /// Deltas retransmitted: per requested one, the implosion factor.
    retransmits: u64,
}

#[derive(Debug, Serialize)]
struct SubscriberSummary {
    synced: bool,
    consistent: bool,
    seq: u64,
    digest: String,
    sync_ms: Option<u64>,
    joined_at_ms: u64,
    deltas_applied: u64,
    snapshots_applied: u64,
    gaps: u64,
    lost: u64,
    simulated_drops: u64,
    datagrams: u64,
    #[serde(flatten)]
    repair: RepairFigures,
}

#[derive(Debug, Serialize)]
struct Summary {
    publisher: PublisherSummary,
    subscribers: Vec<SubscriberSummary>,
}

fn check_args(a: &DemoArgs) -> Result<()> {
    if !(1..=64).contains(&a.subscribers) {
        bail!(
            "--subscribers {} is out of range: use 1 ..= 64",
            a.subscribers
        );
    }
    if a.leaves > MAX_LEAVES {
        bail!(
            "--leaves {} is out of range: use at most {MAX_LEAVES}",
            a.leaves
        );
    }
    if a.rate > MAX_RATE {
        bail!(
            "--rate {} is too high: use at most {MAX_RATE} deltas per second",
            a.rate
        );
    }
    if !(a.duration.is_finite() && (0.0..=1e6).contains(&a.duration)) {
        bail!(
            "--duration must be a number of seconds in [0, 1000000], not {}",
            a.duration
        );
    }
    if let Err(e) = Loss::new(a.loss, 0) {
        bail!("--loss: {e}");
    }
    if a.snapshot_rate == 0 {
        bail!("--snapshot-rate must be at least 1 leaf per second");
    }
    if !(a.settle_timeout.is_finite() && a.settle_timeout > 0.0 && a.settle_timeout <= 1e6) {
        bail!(
            "--settle-timeout must be a number of seconds in (0, 1000000], not {}",
            a.settle_timeout
        );
    }
    Ok(())
}

/// Most leaves of a generated book (flags beyond this would only exhaust
/// memory or time before saying anything).
pub(crate) const MAX_LEAVES: usize = 10_000_000;
/// Most deltas per second asked of the demo's and `pub`'s publisher.
pub(crate) const MAX_RATE: u64 = 100_000_000;

/// What one subscriber task hands back.
struct Joined {
    sub: Subscriber<OrderBook>,
    joined_at: Duration,
    sync: Option<Duration>,
}

pub(crate) async fn run(args: DemoArgs) -> Result<ExitCode> {
    args.net.warn_ttl();
    check_args(&args)?;
    let security = args.net.keys.security()?;
    let book = OrderBook::generate(args.leaves, args.seed);
    let mut gen = BookDeltaGen::new(&book, args.seed.wrapping_add(0x9e37));
    args.metrics.start().await?;
    let mut builder = Publisher::builder()
        .name("publisher")
        .multicast(args.net.multicast())
        .stream(args.net.stream())
        .snapshot_rate(SnapshotRate::LeavesPerSec(args.snapshot_rate));
    if let Some(s) = &security {
        builder = builder.security(s.clone());
    }
    let publisher = Arc::new(builder.bind(book).await.context("starting the publisher")?);
    let session = publisher.session();
    let bars = MultiProgress::with_draw_target(if args.json || crate::silent() {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    });
    let pub_bar = bars.add(ProgressBar::new_spinner());
    pub_bar.set_style(ProgressStyle::with_template("{prefix:>12} {msg}")?);
    pub_bar.set_prefix("publisher");

    let start = Instant::now();
    let duration = Duration::from_secs_f64(args.duration);
    let (stop_tx, stop_rx) = watch::channel(false);

    // Subscribers join at different times during the first half.
    let n = args.subscribers;
    let mut tasks = Vec::new();
    let mut shown = Vec::new();
    for i in 0..n {
        let join_at = duration.mul_f64(i as f64 / (2.0 * n as f64));
        let bar = bars.add(ProgressBar::new(0));
        // No bar until there is something to measure: an empty "0/0" bar
        // would read as done.
        bar.set_style(ProgressStyle::with_template("{prefix:>12} {msg}")?);
        bar.set_prefix(format!("subscriber {}", i + 1));
        bar.set_message(format!("joins at {:.1}s", join_at.as_secs_f64()));
        shown.push(bar.clone());
        let net = args.net.clone();
        let security = security.clone();
        let (loss, seed) = (args.loss, args.seed.wrapping_add(i as u64 + 1));
        let mut stop = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until((start + join_at).into()).await;
            let mut builder = Subscriber::<OrderBook>::builder()
                .name(format!("subscriber-{}", i + 1))
                .multicast(net.multicast())
                .stream(net.stream());
            if let Some(s) = security {
                builder = builder.security(s);
            }
            if loss > 0.0 {
                builder = builder.simulate_loss(Loss::new(loss, seed)?);
            }
            let mut sub = builder
                .bind()
                .await
                .context("starting a subscriber")?;
            let joined = Instant::now();
            let mut sync = None;
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => break,
                    res = sub.wait_until(|s| s.synced, Duration::from_secs(3600)), if sync.is_none() => {
                        if res.is_ok() {
                            sync = Some(joined.elapsed());
                        }
                    }
                }
                while sub.try_next_event().is_some() {}
                show(&bar, &sub.status(), sync, joined);
            }
            Ok::<_, anyhow::Error>(Joined {
                sub,
                joined_at: joined - start,
                sync,
            })
        }));
    }

    // Live deltas at the requested rate, in small batches.
    let mut sent: u64 = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_show = Instant::now();
    while start.elapsed() < duration {
        tick.tick().await;
        let due = (args.rate as f64 * start.elapsed().as_secs_f64()) as u64;
        let batch = due.saturating_sub(sent).min(args.rate.max(1000));
        if batch > 0 {
            publisher
                .publish_batch((0..batch).map(|_| gen.next_delta()))
                .context("publishing")?;
            sent += batch;
        }
        if last_show.elapsed() > Duration::from_millis(100) {
            last_show = Instant::now();
            let st = publisher.stats().protocol;
            pub_bar.set_message(format!(
                "seq {:>9}  {} levels  cycles {}  {:.0} deltas/s",
                publisher.last_seq().0,
                publisher.leaf_count(),
                st.cycles,
                sent as f64 / start.elapsed().as_secs_f64().max(1e-3),
            ));
        }
    }
    let live = start.elapsed();
    let final_seq = publisher.last_seq();
    let pub_digest = publisher.digest();
    let pstats = publisher.stats().protocol;
    pub_bar.finish_with_message(format!(
        "seq {}  {} levels  digest {}  (deltas stopped)",
        final_seq.0,
        publisher.leaf_count(),
        pub_digest
    ));

    // Every subscriber must now reach the final state.
    let _ = stop_tx.send(true);
    // One deadline for all: the settle timeout is the whole wait, not a
    // wait per subscriber in turn.
    let settle_until = Instant::now() + Duration::from_secs_f64(args.settle_timeout);
    let mut subs = Vec::new();
    for t in tasks {
        subs.push(t.await.context("subscriber task")??);
    }
    let mut summaries = Vec::new();
    for j in &mut subs {
        let reached = j
            .sub
            .wait_until(
                |s| s.session == Some(session) && s.seq >= final_seq && s.consistent,
                settle_until.saturating_duration_since(Instant::now()),
            )
            .await;
        let st = match reached {
            Ok(st) => st,
            Err(_) => j.sub.status(),
        };
        if st.synced && j.sync.is_none() {
            // Synced during the settle wait: an upper bound, from join.
            j.sync = Some(start.elapsed().saturating_sub(j.joined_at));
        }
        let stats = j.sub.stats();
        summaries.push(SubscriberSummary {
            synced: st.synced,
            consistent: st.consistent,
            seq: st.seq.0,
            digest: j.sub.digest().to_string(),
            sync_ms: j.sync.map(|d| d.as_millis() as u64),
            joined_at_ms: j.joined_at.as_millis() as u64,
            deltas_applied: stats.protocol.deltas_applied,
            snapshots_applied: stats.protocol.snapshots_applied,
            gaps: stats.protocol.gaps,
            lost: stats.protocol.lost,
            simulated_drops: stats.simulated_drops,
            datagrams: stats.datagrams_received,
            repair: RepairFigures::of(&j.sub),
        });
    }
    // The bars end on where each subscriber ended, above the summary.
    for (bar, j) in shown.iter().zip(&subs) {
        show(bar, &j.sub.status(), j.sync, start + j.joined_at);
        bar.abandon();
    }
    let elapsed = start.elapsed().as_secs_f64().max(1e-3);
    let summary = Summary {
        publisher: PublisherSummary {
            seq: final_seq.0,
            leaves: publisher.leaf_count(),
            digest: pub_digest.to_string(),
            deltas_per_sec: sent as f64 / live.as_secs_f64().max(1e-3),
            snapshot_bytes_per_sec: pstats.snapshot_bytes as f64 / elapsed,
            naks_received: pstats.naks_received,
            nak_seqs_requested: pstats.nak_seqs_requested,
            retransmits: pstats.retransmits,
        },
        subscribers: summaries,
    };
    let ok = summary.subscribers.iter().all(|s| {
        s.consistent && s.seq == summary.publisher.seq && s.digest == summary.publisher.digest
    });
    if args.json {
        outln!("{}", serde_json::to_string(&summary)?)?;
    } else {
        print_summary(&summary, ok)?;
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Updates a subscriber's bar: while syncing, the leaves of its replica
/// against the cycle's (never moving backwards, with an ETA); once
/// synced, full, with where the replica stands.
/// Shows a subscriber that joined at `joined`: a bar of the leaves held
/// against the cycle's leaf count once a cycle is heard, with the rate and
/// an estimate of the time left once there is progress to go by.
fn show(bar: &ProgressBar, st: &Status, sync: Option<Duration>, joined: Instant) {
    let Some((_, total)) = st.cycle_progress else {
        if sync.is_none() {
            let what = if bar.length().unwrap_or(0) > 0 {
                "syncing, between cycles"
            } else {
                "waiting for a snapshot cycle"
            };
            bar.set_message(format!("{what}  seq {}", st.seq.0));
        }
        return;
    };
    if bar.length() == Some(0) {
        // The first cycle heard: from now on a bar.
        if let Ok(style) =
            ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos:>9}/{len:9} leaves  {msg}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
    }
    // A bar already full at this length has its synced style: set once.
    let full = bar.length() == Some(u64::from(total)) && bar.position() == u64::from(total);
    bar.set_length(u64::from(total));
    match sync {
        None => {
            // Never past the length (a later cycle may count fewer leaves).
            let have = (st.leaves as u64).min(u64::from(total));
            let pos = bar.position().max(have).min(u64::from(total));
            bar.set_position(pos);
            let secs = joined.elapsed().as_secs_f64();
            let rate = pos as f64 / secs.max(1e-3);
            let eta = if pos > 0 && rate > 0.0 {
                format!(
                    "  {rate:.0} leaves/s  eta {:.0}s",
                    (u64::from(total) - pos) as f64 / rate
                )
            } else {
                String::new()
            };
            bar.set_message(format!("syncing  seq {}{eta}", st.seq.0));
        }
        Some(d) => {
            if !full {
                if let Ok(style) = ProgressStyle::with_template(
                    "{prefix:>12} [{bar:30}] {pos:>9}/{len:9} leaves {msg}",
                ) {
                    bar.set_style(style.progress_chars("=> "));
                }
            }
            bar.set_position(u64::from(total));
            bar.set_message(format!(
                "synced in {:.2}s  seq {}  {}  stale {}",
                d.as_secs_f64(),
                st.seq.0,
                if st.consistent {
                    "consistent"
                } else {
                    "repairing"
                },
                st.stale_leaves
            ));
        }
    }
}

fn print_summary(s: &Summary, ok: bool) -> std::io::Result<()> {
    let p = &s.publisher;
    if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        // Apart from the bars above it.
        outln!()?;
    }
    outln!(
        "publisher: seq {}, {} levels, digest {}, {:.0} deltas/s, snapshots {:.1} MB/s",
        p.seq,
        p.leaves,
        p.digest,
        p.deltas_per_sec,
        p.snapshot_bytes_per_sec / 1e6
    )?;
    for (i, sub) in s.subscribers.iter().enumerate() {
        outln!(
            "subscriber {}: joined at {:.1}s, synced in {}, {} at seq {}, digest {} ({}), \
             {} deltas and {} snapshots applied, {} gaps ({} seqs lost), {} datagrams dropped on purpose",
            i + 1,
            sub.joined_at_ms as f64 / 1000.0,
            sub.sync_ms
                .map_or("never".to_string(), |ms| format!("{:.2}s", ms as f64 / 1000.0)),
            if sub.consistent { "consistent" } else { "INCONSISTENT" },
            sub.seq,
            sub.digest,
            if sub.digest == p.digest { "equal" } else { "DIFFERENT" },
            sub.deltas_applied,
            sub.snapshots_applied,
            sub.gaps,
            sub.lost,
            sub.simulated_drops,
        )?;
    }
    if ok {
        outln!(
            "all {} subscribers converged to the publisher's state",
            s.subscribers.len()
        )?;
    } else {
        outln!("NOT CONVERGED: some subscriber differs from the publisher")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(progress: Option<(u32, u32)>, leaves: usize) -> Status {
        let mut st = Status::default();
        st.cycle_progress = progress;
        st.leaves = leaves;
        st.seq = grapevine::SeqNum(42);
        st
    }

    /// The bars tell the truth: no bar before a cycle is heard; no time
    /// left before any progress; never past the cycle's length, even when
    /// a later cycle counts fewer leaves; "between cycles" once one was
    /// heard; full once synced.
    #[test]
    fn the_bar_shows_only_what_is_known() {
        let bar = ProgressBar::hidden();
        bar.set_length(0);
        let joined = Instant::now() - Duration::from_secs(2);
        show(&bar, &status(None, 0), None, joined);
        assert_eq!(bar.length(), Some(0));
        assert!(bar.message().starts_with("waiting for a snapshot cycle"));
        show(&bar, &status(Some((0, 1000)), 0), None, joined);
        assert_eq!((bar.position(), bar.length()), (0, Some(1000)));
        assert!(!bar.message().contains("eta"), "{}", bar.message());
        show(&bar, &status(Some((400, 1000)), 500), None, joined);
        assert_eq!(bar.position(), 500);
        let m = bar.message();
        assert!(m.contains("250 leaves/s") && m.contains("eta 2s"), "{m}");
        show(&bar, &status(None, 500), None, joined);
        assert!(bar.message().starts_with("syncing, between cycles"));
        show(&bar, &status(Some((10, 400)), 500), None, joined);
        assert_eq!((bar.position(), bar.length()), (400, Some(400)));
        show(
            &bar,
            &status(Some((10, 400)), 400),
            Some(Duration::from_millis(1500)),
            joined,
        );
        assert_eq!(bar.position(), 400);
        assert!(bar.message().starts_with("synced in 1.50s"));
    }
}
