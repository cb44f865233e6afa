//! `grapevine pub` and `grapevine sub`: publisher and subscriber as separate
//! processes.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use grapevine::core::auth::Security;
use grapevine::io::Loss;
use grapevine::order_book::{BookDeltaGen, OrderBook, PaddedBook, PaddedDeltaGen};
use grapevine::{Event, Publisher, PublisherStats, SnapshotRate, State, Subscriber};
use serde::Serialize;

use crate::NetArgs;

/// Largest `--value-size`: a leaf must fit the subscribers' reassembly
/// limit (4 MiB) with room to spare.
const MAX_VALUE_SIZE: u32 = 1 << 20;

/// The state `pub` and `sub` replicate: the demo order book, or the same
/// book with each level padded to `--value-size` bytes.
pub(crate) trait DemoState: State + Default + Send + 'static {
    /// Its delta generator.
    type Gen: Iterator<Item = Self::Delta> + Send;
    /// The initial book.
    fn build(levels: usize, seed: u64, value_size: u32) -> Self;
    /// Deltas for it.
    fn deltas(&self, seed: u64, value_size: u32) -> Self::Gen;
}

impl DemoState for OrderBook {
    type Gen = BookDeltaGen;
    fn build(levels: usize, seed: u64, _: u32) -> Self {
        OrderBook::generate(levels, seed)
    }
    fn deltas(&self, seed: u64, _: u32) -> BookDeltaGen {
        BookDeltaGen::new(self, seed)
    }
}

impl DemoState for PaddedBook {
    type Gen = PaddedDeltaGen;
    fn build(levels: usize, seed: u64, value_size: u32) -> Self {
        PaddedBook::generate(levels, seed, value_size)
    }
    fn deltas(&self, seed: u64, value_size: u32) -> PaddedDeltaGen {
        PaddedDeltaGen::new(self, seed, value_size)
    }
}

/// The snapshot pacing the flags ask for.
fn snapshot_rate(args: &PubArgs) -> Result<SnapshotRate> {
    let bytes = args
        .snapshot_bytes_rate
        .or((args.value_size > 0).then_some(4_000_000));
    match bytes {
        Some(0) => bail!("--snapshot-bytes-rate must be positive, e.g. 16000000"),
        Some(b) => Ok(SnapshotRate::BytesPerSec(b)),
        None if args.snapshot_rate == 0 => {
            bail!("--snapshot-rate must be positive, e.g. 100000 leaves/s")
        }
        None => Ok(SnapshotRate::LeavesPerSec(args.snapshot_rate)),
    }
}

fn check_value_size(v: u32) -> Result<()> {
    if v > MAX_VALUE_SIZE {
        bail!(
            "--value-size {v} is too large: use 0 ..= {MAX_VALUE_SIZE} bytes (0: the plain book)"
        );
    }
    Ok(())
}

/// A schema name for `--schema`: 1 to 255 bytes, no whitespace or
/// control characters, not starting with `-` (a mistyped flag).
fn check_schema(name: Option<&str>) -> Result<()> {
    let Some(name) = name else { return Ok(()) };
    let printable = !name.chars().any(|c| c.is_whitespace() || c.is_control());
    if name.is_empty() || name.len() > 255 || name.starts_with('-') || !printable {
        bail!(
            "--schema {name:?} is not a schema name: use 1 ..= 255 bytes without spaces, \
             not starting with '-', e.g. acme.prices/2"
        );
    }
    Ok(())
}

fn check_seconds(flag: &str, v: f64) -> Result<()> {
    if !(v.is_finite() && v > 0.0 && v <= 1e6) {
        bail!("{flag} must be a number of seconds in (0, 1000000], not {v}");
    }
    Ok(())
}

/// Flags of `grapevine pub`.
#[derive(Debug, Args)]
pub(crate) struct PubArgs {
    #[command(flatten)]
    net: NetArgs,
    #[command(flatten)]
    metrics: crate::metrics::MetricsArgs,
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
    /// Snapshot cycle rate in bytes per second instead (default with
    /// `--value-size`: 4,000,000, so that large values are paced by size).
    #[arg(long)]
    snapshot_bytes_rate: Option<u64>,
    /// Heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 100)]
    heartbeat_ms: u64,
    /// Seed of the book and of the deltas.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Pad every level's value to this many bytes (0: the plain book).
    /// Values larger than a datagram are sent in fragments; subscribers
    /// must pass `--value-size` too (any positive value).
    #[arg(long, default_value_t = 0)]
    value_size: u32,
    /// After the last delta, keep serving (snapshots, heartbeats, NAK
    /// repair) this many seconds, then print the final counters and exit.
    /// Without it, run until interrupted (SIGINT or SIGTERM).
    #[arg(long)]
    linger: Option<f64>,
    /// Announce this schema name instead of the book's own
    /// (`grapevine.demo.order_book/1`): subscribers expecting another one
    /// refuse the stream.
    #[arg(long)]
    schema: Option<String>,
}

#[derive(Debug, Serialize)]
struct PubLine {
    seq: u64,
    leaves: usize,
    digest: String,
    session: String,
}

/// The publisher's last line: its repair counters.
#[derive(Debug, Serialize)]
struct PubFinal {
    #[serde(rename = "final")]
    is_final: bool,
    seq: u64,
    digest: String,
    session: String,
    datagrams: u64,
    naks_received: u64,
    nak_seqs_requested: u64,
    nak_seqs_unavailable: u64,
    retransmits: u64,
    repairs_coalesced: u64,
    repair_bytes: u64,
    frag_naks_received: u64,
    fragments_resent: u64,
    other_session_naks: u64,
    /// Received datagrams (NAKs) refused by authentication (PROTOCOL.md
    /// §11), and of them: the tag did not verify; replayed or too old.
    auth_refused: u64,
    auth_bad_tag: u64,
    auth_replayed: u64,
}

impl PubFinal {
    fn new<S: State + Send + 'static>(p: &Publisher<S>, st: &PublisherStats) -> Self {
        let c = &st.protocol;
        PubFinal {
            is_final: true,
            seq: p.last_seq().0,
            digest: p.digest().to_string(),
            session: p.session().to_string(),
            datagrams: st.datagrams_sent,
            naks_received: c.naks_received,
            nak_seqs_requested: c.nak_seqs_requested,
            nak_seqs_unavailable: c.nak_seqs_unavailable,
            retransmits: c.retransmits,
            repairs_coalesced: c.repairs_coalesced,
            repair_bytes: c.repair_bytes,
            frag_naks_received: c.frag_naks_received,
            fragments_resent: c.fragments_resent,
            other_session_naks: c.other_session_naks,
            auth_refused: c.auth_refused,
            auth_bad_tag: c.auth_bad_tag,
            auth_replayed: c.auth_replayed,
        }
    }
}

pub(crate) async fn run_pub(args: PubArgs) -> Result<ExitCode> {
    args.net.warn_ttl();
    if args.leaves > crate::demo::MAX_LEAVES {
        bail!(
            "--leaves {} is out of range: use at most {}",
            args.leaves,
            crate::demo::MAX_LEAVES
        );
    }
    if args.rate > crate::demo::MAX_RATE {
        bail!(
            "--rate {} is too high: use at most {} deltas per second",
            args.rate,
            crate::demo::MAX_RATE
        );
    }
    if !(1..=60_000).contains(&args.heartbeat_ms) {
        bail!(
            "--heartbeat-ms {} is out of range: use 1 ..= 60000 (100 is the default)",
            args.heartbeat_ms
        );
    }
    if args.rate == 0 && args.deltas > 0 {
        bail!("--rate must be positive to publish --deltas");
    }
    check_value_size(args.value_size)?;
    if let Some(l) = args.linger {
        check_seconds("--linger", l)?;
    }
    check_schema(args.schema.as_deref())?;
    let security = args.net.keys.security()?;
    if args.value_size > 0 {
        pub_with::<PaddedBook>(args, security).await
    } else {
        pub_with::<OrderBook>(args, security).await
    }
}

async fn pub_with<S: DemoState>(args: PubArgs, security: Option<Security>) -> Result<ExitCode> {
    let book = S::build(args.leaves, args.seed, args.value_size);
    let mut gen = book.deltas(args.seed.wrapping_add(0x9e37), args.value_size);
    args.metrics.start().await?;
    let sealed = args.net.keys.note(security.as_ref());
    let mut builder = Publisher::builder()
        .multicast(args.net.multicast())
        .stream(args.net.stream())
        .snapshot_rate(snapshot_rate(&args)?)
        .heartbeat_interval(Duration::from_millis(args.heartbeat_ms));
    if let Some(name) = &args.schema {
        builder = builder.schema(name.clone());
    }
    if let Some(security) = security {
        builder = builder.security(security);
    }
    let hangup = args.net.keys.hangup()?;
    let publisher = builder.bind(book).await.context("starting the publisher")?;
    if let Some(h) = hangup {
        h.reload(publisher.rekeyer());
    }
    say!(
        "publishing {} levels on {} stream {} session {}{sealed}",
        publisher.leaf_count(),
        publisher.group_addr(),
        args.net.stream,
        publisher.session()
    );
    let start = Instant::now();
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // SIGINT or SIGTERM at any time ends the run with the final line.
    let mut stop = Box::pin(stop_signal());
    let mut stopped = false;
    while sent < args.deltas && !stopped {
        tokio::select! {
            _ = tick.tick() => {}
            r = &mut stop => {
                r?;
                stopped = true;
                continue;
            }
        }
        let due = ((args.rate as f64 * start.elapsed().as_secs_f64()) as u64).min(args.deltas);
        let batch = due.saturating_sub(sent);
        if batch > 0 {
            publisher
                .publish_batch(
                    gen.by_ref()
                        .take(usize::try_from(batch).unwrap_or(usize::MAX)),
                )
                .context("publishing")?;
            sent += batch;
        }
    }
    if stopped {
        say!("interrupted after {sent} deltas");
    } else {
        let line = PubLine {
            seq: publisher.last_seq().0,
            leaves: publisher.leaf_count(),
            digest: publisher.digest().to_string(),
            session: publisher.session().to_string(),
        };
        outln!("{}", serde_json::to_string(&line)?)?;
        match args.linger {
            Some(secs) => {
                say!(
                    "published {} deltas in {:.2}s; serving {secs}s more",
                    sent,
                    start.elapsed().as_secs_f64()
                );
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs_f64(secs)) => {}
                    r = &mut stop => r?,
                }
            }
            None => {
                say!(
                    "published {} deltas in {:.2}s; cycling snapshots until interrupted",
                    sent,
                    start.elapsed().as_secs_f64()
                );
                (&mut stop).await?;
            }
        }
    }
    let last = PubFinal::new(&publisher, &publisher.stats());
    outln!("{}", serde_json::to_string(&last)?)?;
    publisher.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGINT or (on Unix) SIGTERM. The handlers are installed
/// when this is called, not when the future is first polled: a signal
/// that arrives in between is not lost (nor does it kill the process).
pub(crate) fn stop_signal() -> impl std::future::Future<Output = Result<()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let int = signal(SignalKind::interrupt()).context("listening for SIGINT");
        let term = signal(SignalKind::terminate()).context("listening for SIGTERM");
        async move {
            let (mut int, mut term) = (int?, term?);
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            Ok(())
        }
    }
    #[cfg(not(unix))]
    {
        async { tokio::signal::ctrl_c().await.context("waiting for ctrl-c") }
    }
}

/// How long `sub --until-seq` waits for a publisher that went silent (or
/// a restarted one) before it gives up.
const RESTART_GRACE: Duration = Duration::from_secs(3);

/// Flags of `grapevine sub`.
#[derive(Debug, Args)]
pub(crate) struct SubArgs {
    #[command(flatten)]
    net: NetArgs,
    #[command(flatten)]
    metrics: crate::metrics::MetricsArgs,
    /// Exit 0 once consistent through this sequence number of the current
    /// publisher session (a restarted publisher is followed). Exit 1 at the
    /// timeout, or 3 seconds after the publisher went silent below it with
    /// no publisher heard again, or on SIGINT/SIGTERM; the last line says
    /// which (`outcome`). Without it, SIGINT/SIGTERM end the run with a last
    /// line (`outcome: interrupted`) and exit 0.
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
    /// The publisher pads values (`pub --value-size`): any positive value
    /// selects the padded book.
    #[arg(long, default_value_t = 0)]
    value_size: u32,
    /// Expect this schema name instead of the book's own
    /// (`grapevine.demo.order_book/1`). A publisher announcing another one
    /// is refused: one line on standard error names both, exit 1.
    #[arg(long)]
    schema: Option<String>,
    /// How long a NAK waits for its repair before it is sent again, in
    /// milliseconds (1 ..= 10000). Behind a relay pair over a long link,
    /// about the link's round trip.
    #[arg(long, value_name = "MS")]
    repair_timeout_ms: Option<u64>,
    #[command(flatten)]
    relay: crate::relay::RelayClientArgs,
}

#[derive(Debug, Serialize)]
struct SubLine {
    seq: u64,
    digest: String,
    synced: bool,
    consistent: bool,
    /// Time to sync, from joining or from the publisher's restart.
    sync_ms: Option<u64>,
    session: Option<String>,
    stale_leaves: usize,
    leaves: usize,
    gaps: u64,
    /// Whether the publisher is heard (false once it has been silent for
    /// the configured number of heartbeat intervals).
    publisher_alive: bool,
    /// Other publisher sessions alive on the stream: 0 unless a second
    /// publisher wrongly shares it (it is not followed).
    other_sessions: u32,
    /// How the run ended, on its last line: with `--until-seq`, `reached`,
    /// `timeout`, `publisher_gone`, `schema_mismatch` or `interrupted`;
    /// without, `interrupted`.
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<&'static str>,
    /// Datagrams dropped as malformed, by reason (PROTOCOL.md §7);
    /// `no_key`: sealed, and this subscriber has no `--key-file`.
    malformed: BTreeMap<&'static str, u64>,
    /// Datagrams refused by authentication, by reason (PROTOCOL.md §11):
    /// `unknown_key` (sealed with a key not in `--key-file`), `bad_tag`,
    /// `replayed`, `plaintext_refused`, `unauthenticated`, ...
    refused: BTreeMap<&'static str, u64>,
    /// Authenticated datagrams dropped until their session's first fresh
    /// heartbeat (PROTOCOL.md §11.4): a few at every start.
    awaiting_heartbeat: u64,
    #[serde(flatten)]
    repair: RepairFigures,
}

/// A subscriber's repair figures, as `sub --json` and `demo --json` print
/// them.
#[derive(Debug, Serialize)]
pub(crate) struct RepairFigures {
    /// NAK datagrams sent.
    naks_sent: u64,
    /// Missing sequence numbers filled by a retransmission.
    repaired_by_nak: u64,
    /// Missing sequence numbers given up on and left to snapshots.
    repaired_by_snapshot: u64,
    /// Share of the time since sync during which the replica was consistent.
    consistent_share: Option<f64>,
    /// Time from knowing a sequence number missing to its repair by NAK
    /// (lower bounds of 12 %-wide buckets).
    repair_p50_ms: Option<f64>,
    repair_p99_ms: Option<f64>,
}

impl RepairFigures {
    pub(crate) fn of<S: State + Send + 'static>(sub: &Subscriber<S>) -> Self {
        let stats = sub.stats();
        let p = &stats.protocol;
        let ms = |q: f64| {
            p.repair_latency
                .quantile(q)
                .map(|d| d.as_secs_f64() * 1000.0)
        };
        RepairFigures {
            naks_sent: p.naks_sent,
            repaired_by_nak: p.repaired_by_nak,
            repaired_by_snapshot: p.lost,
            consistent_share: sub.consistent_share(),
            repair_p50_ms: ms(0.5),
            repair_p99_ms: ms(0.99),
        }
    }
}

fn sub_line<S: State + Send + 'static>(
    sub: &Subscriber<S>,
    synced_at: Option<Duration>,
) -> SubLine {
    let st = sub.status();
    let stats = sub.stats();
    SubLine {
        seq: st.seq.0,
        digest: sub.digest().to_string(),
        synced: st.synced,
        consistent: st.consistent,
        sync_ms: synced_at.map(|d| d.as_millis() as u64),
        session: st.session.map(|s| s.to_string()),
        stale_leaves: st.stale_leaves,
        leaves: st.leaves,
        gaps: stats.protocol.gaps,
        publisher_alive: st.publisher_alive,
        other_sessions: st.other_sessions,
        outcome: None,
        malformed: stats.protocol.malformed,
        refused: stats.protocol.refused,
        awaiting_heartbeat: stats.protocol.awaiting_heartbeat,
        repair: RepairFigures::of(sub),
    }
}

/// Why a subscriber that gave up may have heard nothing it could use:
/// datagrams it could not open, and the fix.
fn auth_hint(
    malformed: &BTreeMap<&'static str, u64>,
    refused: &BTreeMap<&'static str, u64>,
) -> Option<String> {
    let n = |map: &BTreeMap<&'static str, u64>, code| map.get(code).copied().unwrap_or(0);
    let hint = match (
        n(malformed, "no_key"),
        n(refused, "unknown_key"),
        n(refused, "unauthenticated"),
        n(refused, "plaintext_refused"),
    ) {
        (k, ..) if k > 0 => format!(
            "{k} datagrams were sealed and this subscriber has no key: give it the stream's \
             key file with --key-file (or GRAPEVINE_KEY_FILE)"
        ),
        (_, k, ..) if k > 0 => format!(
            "{k} datagrams were sealed with a key that is not in --key-file: give the \
             stream's key file (`grapevine keygen` printed its key id)"
        ),
        (_, _, k, _) if k > 0 => {
            format!("{k} datagrams were not sealed: the publisher needs --key-file too")
        }
        (.., k) if k > 0 => format!(
            "{k} datagrams were not encrypted: the publisher needs --encrypt, or drop \
             --require-encrypt"
        ),
        _ if !refused.is_empty() => {
            let all: Vec<String> = refused.iter().map(|(c, n)| format!("{c} {n}")).collect();
            format!("datagrams refused by authentication: {}", all.join(", "))
        }
        _ => return None,
    };
    Some(hint)
}

pub(crate) async fn run_sub(args: SubArgs) -> Result<ExitCode> {
    args.net.warn_ttl();
    if let Some(t) = args.timeout {
        check_seconds("--timeout", t)?;
    }
    check_value_size(args.value_size)?;
    check_schema(args.schema.as_deref())?;
    let security = args.net.keys.security()?;
    if args.value_size > 0 {
        sub_with::<PaddedBook>(args, security).await
    } else {
        sub_with::<OrderBook>(args, security).await
    }
}

async fn sub_with<S: DemoState>(args: SubArgs, security: Option<Security>) -> Result<ExitCode> {
    let timeout = args.timeout.unwrap_or(60.0);
    args.metrics.start().await?;
    let mut builder = Subscriber::<S>::builder()
        .multicast(args.net.multicast())
        .stream(args.net.stream());
    if let Some(link) = args.relay.link().await? {
        builder = builder.relay(link);
    }
    if let Some(ms) = args.repair_timeout_ms {
        if !(1..=10_000).contains(&ms) {
            anyhow::bail!("--repair-timeout-ms {ms}: give 1 ..= 10000 milliseconds");
        }
        builder = builder.repair_timeout(Duration::from_millis(ms));
    }
    if let Some(security) = security {
        builder = builder.security(security);
    }
    let loss = Loss::new(args.loss, args.seed).map_err(|e| anyhow::anyhow!("--loss: {e}"))?;
    if loss.probability() > 0.0 {
        builder = builder.simulate_loss(loss);
    }
    if let Some(name) = &args.schema {
        builder = builder.schema(name.clone());
    }
    // SIGINT or SIGTERM ends the run with a last line (`outcome`:
    // `interrupted`); handled from before the subscriber starts.
    let mut stop = Box::pin(stop_signal());
    let hangup = args.net.keys.hangup()?;
    let mut sub = builder.bind().await.context("starting the subscriber")?;
    if let Some(h) = hangup {
        h.reload(sub.rekeyer());
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(timeout);
    let mut synced_at: Option<Duration> = None;
    // What the sync time counts from: joining, or the publisher's restart.
    let mut epoch = start;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let line = sub_line::<S>;
    if let Some(target) = args.until_seq {
        let reached = |s: &grapevine::Status| s.synced && s.consistent && s.seq.0 >= target;
        // How the wait ends other than by reaching the target: a line on
        // standard output (JSON with `outcome`, or words), the reason on
        // standard error, exit 1.
        let give_up = |sub: &Subscriber<S>, synced_at, outcome: &'static str, why: String| {
            let mut l = line(sub, synced_at);
            l.outcome = Some(outcome);
            say!("{why}");
            if let Some(hint) = auth_hint(&l.malformed, &l.refused) {
                say!("{hint}");
            }
            if args.json {
                outln!("{}", serde_json::to_string(&l)?)?;
            } else {
                outln!("{outcome} at seq {}, below --until-seq {target}", l.seq)?;
            }
            anyhow::Ok(ExitCode::FAILURE)
        };
        // Since when the publisher has been silent: the wait ends
        // `RESTART_GRACE` later unless a publisher (the same session, or a
        // restarted one) is heard again.
        let mut gone_since: Option<Instant> = None;
        loop {
            let before = sub.status();
            let until = gone_since.map_or(deadline, |g| deadline.min(g + RESTART_GRACE));
            let remaining = until.saturating_duration_since(Instant::now());
            // Wake on the goal, on sync, on a change of publisher session
            // and on the publisher going silent.
            let woke = tokio::select! {
                woke = sub.wait_until(
                    |s| {
                        reached(s)
                            || s.synced != before.synced
                            || s.session != before.session
                            || s.publisher_alive != before.publisher_alive
                    },
                    remaining,
                ) => woke,
                r = &mut stop => {
                    r?;
                    let why = format!("interrupted at seq {}, below --until-seq {target}", sub.status().seq.0);
                    return give_up(&sub, synced_at, "interrupted", why);
                }
            };
            while sub.try_next_event().is_some() {}
            let st = match woke {
                Ok(st) => st,
                Err(e @ grapevine::Error::SchemaMismatch { .. }) => {
                    return give_up(&sub, synced_at, "schema_mismatch", e.to_string());
                }
                Err(_) if Instant::now() < deadline => {
                    let why = format!(
                        "the publisher went silent at seq {} (no heartbeat for {:.1}s), \
                         below --until-seq {target}",
                        before.seq.0,
                        RESTART_GRACE.as_secs_f64()
                    );
                    return give_up(&sub, synced_at, "publisher_gone", why);
                }
                Err(_) => {
                    let why = format!("timed out after {timeout:.1}s below seq {target}");
                    return give_up(&sub, synced_at, "timeout", why);
                }
            };
            if st.session != before.session && before.session.is_some() {
                synced_at = None;
                epoch = Instant::now();
                say!(
                    "publisher restarted: session {} -> {}; resyncing",
                    before.session.map_or("-".into(), |s| s.to_string()),
                    st.session.map_or("-".into(), |s| s.to_string())
                );
            }
            if st.synced && !before.synced {
                let at = epoch.elapsed();
                synced_at.get_or_insert(at);
                say!(
                    "synced session={} seq={} after {} ms",
                    st.session.map_or("-".into(), |s| s.to_string()),
                    st.seq.0,
                    at.as_millis()
                );
            }
            if reached(&st) {
                let mut l = line(&sub, synced_at);
                l.outcome = Some("reached");
                if args.json {
                    outln!("{}", serde_json::to_string(&l)?)?;
                } else {
                    outln!(
                        "consistent at seq {} ({} levels), digest {}",
                        l.seq,
                        l.leaves,
                        l.digest
                    )?;
                }
                sub.shutdown().await;
                return Ok(ExitCode::SUCCESS);
            }
            match (st.session.is_some() && !st.publisher_alive, gone_since) {
                (true, None) => {
                    gone_since = Some(Instant::now());
                    say!(
                        "publisher gone (no heartbeat) at seq {}; waiting {:.1}s for it or a restarted one",
                        st.seq.0,
                        RESTART_GRACE.as_secs_f64()
                    );
                }
                (false, Some(_)) => gone_since = None,
                _ => {}
            }
        }
    }
    // Follow the stream, one status line per second, until the timeout.
    loop {
        tokio::select! {
            ev = sub.next_event() => match ev {
                Some(Event::Synced { seq, .. }) => {
                    let at = epoch.elapsed();
                    synced_at.get_or_insert(at);
                    say!("synced seq={} after {} ms", seq.0, at.as_millis());
                }
                Some(Event::PublisherRestarted { old, new }) => {
                    synced_at = None;
                    epoch = Instant::now();
                    say!("publisher restarted: session {old} -> {new}; resyncing");
                }
                Some(Event::PublisherGone) => say!("publisher gone (no heartbeat)"),
                Some(Event::PublisherBack) => say!("publisher back"),
                Some(Event::SchemaMismatch { expected, found, .. }) => {
                    say!("{}", grapevine::Error::SchemaMismatch { expected, found });
                    sub.shutdown().await;
                    return Ok(ExitCode::FAILURE);
                }
                Some(_) => {}
                None => bail!("the subscriber stopped"),
            },
            _ = tick.tick() => {
                let l = line(&sub, synced_at);
                if args.json {
                    outln!("{}", serde_json::to_string(&l)?)?;
                } else {
                    outln!("seq {}  {}  {} levels  stale {}  gaps {}  digest {}",
                        l.seq,
                        if l.consistent { "consistent" } else if l.synced { "repairing" } else { "syncing" },
                        l.leaves, l.stale_leaves, l.gaps, l.digest)?;
                }
            }
            _ = tokio::time::sleep_until(deadline.into()), if args.timeout.is_some() => {
                return Ok(ExitCode::SUCCESS);
            }
            r = &mut stop => {
                r?;
                let mut l = line(&sub, synced_at);
                l.outcome = Some("interrupted");
                if args.json {
                    outln!("{}", serde_json::to_string(&l)?)?;
                } else {
                    outln!("interrupted at seq {}, digest {}", l.seq, l.digest)?;
                }
                sub.shutdown().await;
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hint_names_the_first_auth_problem_and_its_fix() {
        let map = |pairs: &[(&'static str, u64)]| pairs.iter().copied().collect();
        let none = BTreeMap::new();
        assert_eq!(auth_hint(&none, &none), None);
        assert_eq!(auth_hint(&map(&[("bad_magic", 5)]), &none), None);
        let h = auth_hint(&map(&[("no_key", 7)]), &map(&[("unknown_key", 1)])).unwrap();
        assert!(h.starts_with("7 datagrams were sealed and this subscriber has no key"));
        assert!(h.contains("--key-file"), "{h}");
        let h = auth_hint(&none, &map(&[("unknown_key", 3), ("bad_tag", 1)])).unwrap();
        assert!(h.starts_with("3 datagrams were sealed with a key that is not in --key-file"));
        let h = auth_hint(&none, &map(&[("unauthenticated", 2)])).unwrap();
        assert!(h.contains("the publisher needs --key-file"), "{h}");
        let h = auth_hint(&none, &map(&[("plaintext_refused", 2)])).unwrap();
        assert!(h.contains("--encrypt"), "{h}");
        let h = auth_hint(&none, &map(&[("replayed", 2), ("bad_tag", 1)])).unwrap();
        assert_eq!(
            h,
            "datagrams refused by authentication: bad_tag 1, replayed 2"
        );
    }
}
