//! `grapevine bench`: Grapevine's own numbers, measured as a user would run
//! it: this process publishes, and each subscriber is a separate process
//! (`grapevine bench-sub`, started here). See BENCHMARKS.md for the method
//! and for how the numbers compare with raw UDP and Cyclone DDS.
//!
//! * `throughput`: deltas in batches of 1,024 at `--rate`; without one,
//!   a search for the highest rate the subscribers take without loss
//!   (no kernel drop, no gap), doubling from 250,000/s (halving from it if
//!   it loses already) and then bisecting;
//!   reports the rate at which the subscribers applied them.
//! * `latency`: single deltas at `--rate` (10,000/s by default), each
//!   stamped with the wall clock at `publish`; the subscriber records the
//!   time to `apply`: one-way latency, percentiles.
//! * `latency-raw`: the raw UDP baseline of `latency`: datagrams of
//!   `--size` stamped with the wall clock, sent one at a time at `--rate`
//!   by a bare socket to a receiver that waits as `--driver` says; what
//!   waiting for a datagram costs without Grapevine.
//! * `fanout`: as throughput at a fixed `--rate` with `--subscribers` (4);
//!   reports the publisher's CPU time per delta.
//! * `snapshot`: a state of `--leaves` (1,000,000) leaves of ~32 bytes,
//!   cycled at `--rate` leaves/s; without one, a search for the fastest
//!   cycle (500,000/s, doubling, up to unpaced) that a subscriber joining
//!   mid-cycle syncs from within 1.2 cycle times. Reports the cycle's
//!   leaves/s and MB/s, the joiner's time to sync, and its resident memory
//!   against the leaves' raw bytes.

use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use grapevine::core::auth::Security;
use grapevine::{Driver, Publisher, SnapshotRate};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::NetArgs;
use measure::{cpu_times, kernel_drops, Percentiles};
use state::{BenchState, Delta, Leaf, Pad, DELTA_OVERHEAD};
use sub::SubReport;

mod measure;
pub(crate) mod pin;
mod raw;
mod relay;
mod state;
pub(crate) mod sub;

/// What to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Mode {
    /// Deltas per second, publisher to subscriber, as fast as possible.
    Throughput,
    /// One-way latency from `publish` to `apply`, at a fixed rate.
    Latency,
    /// The raw UDP baseline of latency: a bare socket sends datagrams of
    /// `--size` stamped with the wall clock at `--rate` (10,000/s) to a
    /// receiver that waits as `--driver` says (a tokio socket on a
    /// current-thread runtime, or spinning); one-way latency.
    LatencyRaw,
    /// Publisher CPU per delta with several subscribers.
    Fanout,
    /// The raw UDP baseline of fanout: a bare socket sends datagrams of
    /// about the size, rate (`--rate`, datagrams/s, default 12,600) and
    /// GSO batching of Grapevine's fanout run to receivers that only count
    /// them; the sender's CPU per datagram.
    FanoutRaw,
    /// The snapshot cycle of a large state, and a late joiner's sync.
    Snapshot,
}

/// The driver, as a flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum DriverArg {
    /// A tokio task (the default).
    Tokio,
    /// A thread that polls without sleeping (burns a core).
    BusyPoll,
}

impl From<DriverArg> for Driver {
    fn from(d: DriverArg) -> Self {
        match d {
            DriverArg::Tokio => Driver::Tokio,
            DriverArg::BusyPoll => Driver::BusyPoll,
        }
    }
}

impl DriverArg {
    fn flag(self) -> &'static str {
        match self {
            DriverArg::Tokio => "tokio",
            DriverArg::BusyPoll => "busy-poll",
        }
    }
}

/// Flags of `grapevine bench`.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Mode::Throughput)]
    mode: Mode,
    /// Bytes of each delta's payload, 16 ..= 1400.
    #[arg(long, default_value_t = 64)]
    size: u32,
    /// Seconds of publishing (all modes but snapshot), up to 3600.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Subscriber processes, 1 ..= 32 (default 1; 4 for fanout).
    #[arg(long)]
    subscribers: Option<u32>,
    /// Deltas per second (default: for throughput, a search for the
    /// highest rate without loss; 10,000 for latency; 100,000 for fanout);
    /// with snapshot, leaves per second of the cycle (default: a search for
    /// the fastest cycle a late joiner keeps up with).
    #[arg(long)]
    rate: Option<u64>,
    /// Leaves of the state, 1 ..= 10,000,000 (default 10,000; 1,000,000
    /// for snapshot).
    #[arg(long)]
    leaves: Option<u32>,
    /// How the subscribers wait for I/O (the publisher's deltas go out from
    /// the publishing thread; its own driver is tokio's).
    #[arg(long, value_enum, default_value_t = DriverArg::Tokio)]
    driver: DriverArg,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Put a relay pair between the publisher and the subscribers, as
    /// separate processes: the near relay reads `--port`, the far one
    /// emits on `--port` + 1, where the subscribers listen; the link is
    /// QUIC or TLS over TCP on 127.0.0.1.
    #[arg(long, value_enum)]
    relay: Option<relay::RelayArg>,
    #[command(flatten)]
    net: NetArgs,
    /// The subscribers' CPUs, set by `main` when it pinned this process
    /// (fan-out modes, see [`pin`]).
    #[arg(skip)]
    sub_cpus: Vec<usize>,
}

impl BenchArgs {
    /// Pins this process (before its runtime starts) to the first allowed
    /// CPU and keeps the others for its subscribers, in the fan-out
    /// measures only (they compare the publisher's CPU with 1 and with 4
    /// subscribers); does nothing in the other modes or on a single CPU.
    pub(crate) fn pin(&mut self) -> Result<()> {
        if !matches!(self.mode, Mode::Fanout | Mode::FanoutRaw) {
            return Ok(());
        }
        if let Some((publisher, subscribers)) = pin::split() {
            pin::pin(&[publisher])?;
            self.sub_cpus = subscribers;
        }
        Ok(())
    }
}

/// Deltas per `publish_batch` in throughput and fanout modes.
const CHUNK: u32 = 1024;
/// The throughput search starts here, in deltas per second.
const SEARCH_FROM: u64 = 250_000;
/// Bisection steps after the doubling phase found loss.
const SEARCH_STEPS: u32 = 3;
/// Bounds each wait for a subscriber process.
const CHILD_TIMEOUT: Duration = Duration::from_secs(90);

/// The validated settings.
struct Plan {
    mode: Mode,
    pad: u16,
    duration: Duration,
    subscribers: u32,
    rate: Option<u64>,
    leaves: u32,
    /// The keys of `--key-file`, read once.
    security: Option<Security>,
    /// Where the subscribers listen: `--port`, or the far relay's group.
    sub_port: u16,
}

fn plan(a: &BenchArgs) -> Result<Plan> {
    if !(16..=1400).contains(&a.size) {
        bail!(
            "--size {} is out of range: use 16 ..= 1400 bytes (64 is the usual)",
            a.size
        );
    }
    if !(a.duration.is_finite() && a.duration >= 0.1 && a.duration <= 3600.0) {
        bail!(
            "--duration must be 0.1 ..= 3600 seconds, not {}",
            a.duration
        );
    }
    let subscribers = a.subscribers.unwrap_or(match a.mode {
        Mode::Fanout | Mode::FanoutRaw => 4,
        _ => 1,
    });
    if !(1..=32).contains(&subscribers) {
        bail!("--subscribers {subscribers} is out of range: use 1 ..= 32");
    }
    let rate = match (a.mode, a.rate) {
        (_, Some(0)) => bail!("--rate must be positive (or left out)"),
        (_, Some(r)) if r > 100_000_000 => bail!("--rate {r} is too high: use at most 100000000"),
        (Mode::Snapshot, Some(r)) if r > u64::from(u32::MAX) => {
            bail!(
                "--rate {r} is too high for leaves per second: use at most {}",
                u32::MAX
            )
        }
        (Mode::Latency | Mode::LatencyRaw, None) => Some(10_000),
        (Mode::Fanout, None) => Some(100_000),
        (Mode::FanoutRaw, None) => Some(raw::RATE),
        (_, r) => r,
    };
    let leaves = a.leaves.unwrap_or(if a.mode == Mode::Snapshot {
        1_000_000
    } else {
        10_000
    });
    if !(1..=10_000_000).contains(&leaves) {
        bail!("--leaves {leaves} is out of range: use 1 ..= 10000000");
    }
    let pad = if a.mode == Mode::Snapshot {
        // Leaves of about 32 bytes: key, stamp, padding.
        32 - DELTA_OVERHEAD
    } else {
        a.size - DELTA_OVERHEAD
    };
    let security = a.net.keys.security()?;
    let raw = matches!(a.mode, Mode::FanoutRaw | Mode::LatencyRaw);
    if security.is_some() && raw {
        bail!(
            "--key-file: {} sends bare datagrams, which are not sealed; leave it out \
             (and unset {})",
            mode_name(a.mode),
            crate::keys::KEY_FILE_ENV
        );
    }
    let sub_port = match a.relay {
        None => a.net.port,
        Some(_) if raw => {
            bail!(
                "--relay: {} measures bare sockets; leave --relay out",
                mode_name(a.mode)
            )
        }
        Some(_) => a.net.port.checked_add(1).with_context(|| {
            format!(
                "--relay: the far group takes --port + 1; --port {} has none",
                a.net.port
            )
        })?,
    };
    Ok(Plan {
        sub_port,
        mode: a.mode,
        security,
        pad: u16::try_from(pad).unwrap_or(u16::MAX),
        duration: Duration::from_secs_f64(a.duration),
        subscribers,
        rate,
        leaves,
    })
}

/// One subscriber process.
struct SubProcess {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl SubProcess {
    async fn spawn(args: &BenchArgs, port: u16) -> Result<Self> {
        let exe = std::env::current_exe().context("finding the grapevine executable")?;
        let n = &args.net;
        let mut cmd = tokio::process::Command::new(exe);
        cmd.arg("bench-sub")
            // Its losses are the measurement (a search runs trials until it
            // loses): counted in its report, not logged as warnings.
            .arg("-q")
            .args(["--group", &n.group.to_string()])
            .args(["--port", &port.to_string()])
            .arg(format!("--interface={}", n.interface))
            .args(["--stream", &n.stream.to_string()])
            .args(["--driver", args.driver.flag()])
            // The key file's path, never its keys.
            .args(n.keys.to_args())
            .args((args.mode == Mode::FanoutRaw).then_some("--raw"))
            .args((args.mode == Mode::LatencyRaw).then_some("--stamped"));
        if !args.sub_cpus.is_empty() {
            cmd.args(["--cpus", &pin::list(&args.sub_cpus)]);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting a subscriber process")?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            bail!("the subscriber process has no pipes");
        };
        let mut p = Self {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        };
        p.expect("ready").await?;
        Ok(p)
    }

    /// The next line, which must start with `word`; the rest of it.
    async fn expect(&mut self, word: &str) -> Result<String> {
        self.expect_within(word, CHILD_TIMEOUT).await
    }

    /// As `expect`, waiting at most `timeout`.
    async fn expect_within(&mut self, word: &str, timeout: Duration) -> Result<String> {
        let line = tokio::time::timeout(timeout, self.lines.next_line())
            .await
            .with_context(|| format!("a subscriber did not say {word:?} in time"))??;
        match line {
            Some(l) if l.starts_with(word) => Ok(l[word.len()..].trim().to_owned()),
            Some(l) => bail!("a subscriber said {l:?} instead of {word:?}"),
            None => bail!("a subscriber exited before saying {word:?}"),
        }
    }

    /// Tells where the stream ends and reads the report.
    async fn finish(mut self, last_seq: u64) -> Result<SubReport> {
        self.stdin
            .write_all(format!("end {last_seq}\n").as_bytes())
            .await?;
        self.stdin.flush().await?;
        let json = self.expect("{").await?;
        let report: SubReport = serde_json::from_str(&format!("{{{json}"))?;
        let _ = self.child.wait().await;
        Ok(report)
    }
}

/// The result, as printed with `--json`.
#[derive(Debug, Default, Serialize)]
struct Report {
    mode: Option<Mode>,
    /// The relay pair between publisher and subscribers, if any.
    relay: Option<relay::RelayArg>,
    /// How datagrams were sealed: `none`, `authenticate` (`--key-file`)
    /// or `encrypt` (and `--encrypt`).
    auth: &'static str,
    driver: Option<DriverArg>,
    size: u32,
    subscribers: u32,
    duration_s: f64,
    deltas_published: u64,
    publish_per_s: f64,
    /// Deltas applied per second, the slowest subscriber.
    deltas_per_s: f64,
    /// The publishing rate asked for (0: unpaced).
    rate: u64,
    /// The throughput search: every rate tried, what was applied, and
    /// whether it was loss-free.
    search: Vec<Trial>,
    datagrams_per_s: f64,
    datagrams_per_send_call: f64,
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
    latency_curve: Vec<(f64, f64)>,
    cpu_per_delta_ns: f64,
    /// The publisher's user-space share of `cpu_per_delta_ns`: the rest is
    /// the kernel's, in its system calls (on loopback that includes
    /// delivering every datagram to every subscriber's socket, which a
    /// network would do in the switch).
    user_cpu_per_delta_ns: f64,
    /// The publisher's (or the raw sender's) CPU per datagram sent.
    cpu_per_datagram_ns: f64,
    sub_cpu_per_delta_ns: f64,
    kernel_drops: u64,
    datagrams_shed: u64,
    gaps: u64,
    all_consistent: bool,
    // Snapshot mode.
    leaves: u64,
    cycle_s: f64,
    leaves_per_s: f64,
    mb_per_s: f64,
    sync_s: f64,
    sync_over_cycle: f64,
    rss_bytes: u64,
    raw_bytes: u64,
    rss_over_raw: f64,
}

/// One rate tried by the throughput search.
#[derive(Clone, Debug, Serialize)]
struct Trial {
    rate: u64,
    /// Deltas applied per second (throughput), or leaves cycled per second
    /// (snapshot).
    per_s: f64,
    kernel_drops: u64,
    gaps: u64,
    /// Snapshot: the late joiner's time to sync over the cycle time.
    sync_over_cycle: f64,
    clean: bool,
}

pub(crate) async fn run(args: BenchArgs) -> Result<ExitCode> {
    let plan = plan(&args)?;
    // Kept for the whole run: every trial's stream crosses them.
    let relays = match args.relay {
        Some(r) => Some(relay::Relays::start(&args, r, plan.sub_port).await?),
        None => None,
    };
    let drops_before = kernel_drops();
    let mut report = match plan.mode {
        Mode::Snapshot => match plan.rate {
            Some(r) => snapshot(&args, &plan, u32::try_from(r).unwrap_or(u32::MAX)).await?,
            None => snapshot_search(&args, &plan).await?,
        },
        Mode::Throughput if plan.rate.is_none() => search(&args, &plan).await?,
        Mode::FanoutRaw => raw_fanout(&args, &plan).await?,
        Mode::LatencyRaw => raw_latency(&args, &plan).await?,
        _ => stream(&args, &plan, plan.rate).await?,
    };
    report.mode = Some(plan.mode);
    report.relay = args.relay;
    if let Some(r) = relays {
        r.stop().await;
    }
    report.auth = args.net.keys.mode();
    report.driver = Some(args.driver);
    report.size = args.size;
    report.subscribers = plan.subscribers;
    if report.search.is_empty() {
        report.kernel_drops = kernel_drops().saturating_sub(drops_before);
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report);
    }
    Ok(if report.all_consistent {
        ExitCode::SUCCESS
    } else {
        say!("error: a subscriber did not end consistent");
        ExitCode::FAILURE
    })
}

/// One trial of the search at `rate`: its report, and whether it was
/// loss-free.
async fn trial(args: &BenchArgs, plan: &Plan, rate: u64) -> Result<(Trial, Report)> {
    let before = kernel_drops();
    let mut r = stream(args, plan, Some(rate)).await?;
    r.kernel_drops = kernel_drops().saturating_sub(before);
    let t = Trial {
        rate,
        per_s: r.deltas_per_s,
        kernel_drops: r.kernel_drops,
        gaps: r.gaps,
        sync_over_cycle: 0.0,
        clean: r.kernel_drops == 0 && r.gaps == 0 && r.all_consistent,
    };
    Ok((t, r))
}

/// The highest loss-free rate: doubling from [`SEARCH_FROM`] until a trial
/// loses, then [`SEARCH_STEPS`] bisections. Reports the best loss-free
/// trial (or the first, if none was), with every trial tried.
async fn search(args: &BenchArgs, plan: &Plan) -> Result<Report> {
    let mut trials = Vec::new();
    let mut best: Option<Report> = None;
    let (mut lo, mut hi) = (0, 0);
    let mut rate = SEARCH_FROM;
    while rate <= 64_000_000 {
        let (t, r) = trial(args, plan, rate).await?;
        let clean = t.clean;
        trials.push(t);
        if !clean {
            hi = rate;
            best = best.or(Some(r));
            break;
        }
        lo = rate;
        best = Some(r);
        rate *= 2;
    }
    // The first rate lost already (a relay pair, a slow machine): halve
    // until a rate is clean, down to a 64th of it.
    let mut down = hi / 2;
    while lo == 0 && hi > 0 && down >= SEARCH_FROM / 64 {
        let (t, r) = trial(args, plan, down).await?;
        let clean = t.clean;
        trials.push(t);
        if clean {
            lo = down;
            best = Some(r);
        } else {
            hi = down;
            down /= 2;
        }
    }
    if lo > 0 && hi > 0 {
        for _ in 0..SEARCH_STEPS {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let mid = ((lo as f64) * (hi as f64)).sqrt() as u64;
            let (t, r) = trial(args, plan, mid).await?;
            if t.clean {
                lo = mid;
                best = Some(r);
            } else {
                hi = mid;
            }
            trials.push(t);
        }
    }
    let mut best = best.context("no trial ran")?;
    best.search = trials;
    Ok(best)
}

/// The raw baseline of fanout: see [`raw`].
async fn raw_fanout(args: &BenchArgs, plan: &Plan) -> Result<Report> {
    let mut subs = Vec::new();
    for _ in 0..plan.subscribers {
        subs.push(SubProcess::spawn(args, plan.sub_port).await?);
    }
    for s in &mut subs {
        s.expect("synced").await?;
    }
    let start = Instant::now();
    let (sent, cpu) = raw::send(&args.net, plan.rate.unwrap_or(raw::RATE), plan.duration).await?;
    let secs = start.elapsed().as_secs_f64();
    let mut reports = Vec::new();
    for s in subs {
        reports.push(s.finish(sent).await?);
    }
    Ok(Report {
        duration_s: secs,
        rate: plan.rate.unwrap_or(raw::RATE),
        datagrams_per_s: sent as f64 / secs,
        datagrams_per_send_call: raw::SEGMENTS as f64,
        cpu_per_datagram_ns: cpu.as_nanos() as f64 / sent.max(1) as f64,
        all_consistent: reports.iter().all(|r| r.consistent),
        ..Report::default()
    })
}

/// Throughput, latency and fanout: publish for the duration at `rate`,
/// then collect.
async fn stream(args: &BenchArgs, plan: &Plan, rate: Option<u64>) -> Result<Report> {
    let mut subs = Vec::new();
    for _ in 0..plan.subscribers {
        subs.push(SubProcess::spawn(args, plan.sub_port).await?);
    }
    let publ = secured(Publisher::builder(), plan)
        .multicast(args.net.multicast())
        .stream(args.net.stream())
        // The publisher's deltas go out from the publishing thread; its
        // driver only paces snapshots and heartbeats and answers NAKs, off
        // the measured path. A spinning one would take a core from the
        // subscribers, so `--driver` is theirs.
        .bind(BenchState::with_leaves(plan.leaves, plan.pad))
        .await
        .context("starting the publisher")?;
    for s in &mut subs {
        s.expect("synced").await?;
    }
    let publ = Arc::new(publ);
    let before = publ.stats();
    let cpu0 = cpu_times();
    let start = Instant::now();
    let published = match plan.mode {
        Mode::Latency => {
            let p = Arc::clone(&publ);
            let (rate, leaves, pad, duration) = (
                plan.rate.unwrap_or(10_000),
                plan.leaves,
                plan.pad,
                plan.duration,
            );
            tokio::task::spawn_blocking(move || paced_singles(&p, rate, leaves, pad, duration))
                .await??
        }
        _ => batches(&publ, plan, rate).await?,
    };
    let elapsed = start.elapsed();
    let cpu1 = cpu_times();
    let user = cpu1.0.saturating_sub(cpu0.0);
    let cpu = (cpu1.0 + cpu1.1).saturating_sub(cpu0.0 + cpu0.1);
    let after = publ.stats();
    let last = publ.last_seq().0;
    let mut reports = Vec::new();
    for s in subs {
        reports.push(s.finish(last).await?);
    }
    let secs = elapsed.as_secs_f64();
    let sent = after.datagrams_sent - before.datagrams_sent;
    let calls = (after.send_calls - before.send_calls).max(1);
    let mut r = Report {
        duration_s: secs,
        deltas_published: published,
        publish_per_s: published as f64 / secs,
        datagrams_per_s: sent as f64 / secs,
        datagrams_per_send_call: sent as f64 / calls as f64,
        cpu_per_delta_ns: cpu.as_nanos() as f64 / published.max(1) as f64,
        cpu_per_datagram_ns: cpu.as_nanos() as f64 / sent.max(1) as f64,
        user_cpu_per_delta_ns: user.as_nanos() as f64 / published.max(1) as f64,
        datagrams_shed: after.protocol.datagrams_shed,
        all_consistent: reports.iter().all(|r| r.consistent),
        deltas_per_s: f64::INFINITY,
        rate: rate.unwrap_or(0),
        ..Report::default()
    };
    for s in &reports {
        let span = s.last_apply_ns.saturating_sub(s.first_apply_ns).max(1) as f64 / 1e9;
        r.deltas_per_s = r.deltas_per_s.min(s.deltas_applied as f64 / span);
        r.sub_cpu_per_delta_ns = r
            .sub_cpu_per_delta_ns
            .max(s.cpu_ns as f64 / s.deltas_applied.max(1) as f64);
        r.gaps += s.gaps;
        fold_latency(&mut r, &s.latency);
    }
    if let Ok(p) = Arc::try_unwrap(publ) {
        p.shutdown().await;
    }
    Ok(r)
}

/// The publisher's builder with the security of the flags, if any.
fn secured(
    builder: grapevine::PublisherBuilder<BenchState>,
    plan: &Plan,
) -> grapevine::PublisherBuilder<BenchState> {
    match &plan.security {
        Some(s) => builder.security(s.clone()),
        None => builder,
    }
}

fn delta(key: u32, pad: u16, stamp_ns: u64) -> Delta {
    Delta {
        key,
        leaf: Leaf {
            stamp_ns,
            pad: Pad(pad),
        },
    }
}

/// Batches of [`CHUNK`] deltas, at `rate` or as fast as the socket takes
/// them. Returns the number published.
async fn batches(publ: &Publisher<BenchState>, plan: &Plan, rate: Option<u64>) -> Result<u64> {
    let start = Instant::now();
    let every = rate.map(|r| Duration::from_secs_f64(f64::from(CHUNK) / r as f64));
    let mut next = start;
    let mut key = 0u32;
    let mut published = 0u64;
    while start.elapsed() < plan.duration {
        if let Some(every) = every {
            next += every;
            tokio::time::sleep_until(next.into()).await;
        }
        publ.ready().await?;
        let stamp = state::wall_ns();
        publ.publish_batch((0..CHUNK).map(|_| {
            let d = delta(key, plan.pad, stamp);
            key = (key + 1) % plan.leaves;
            d
        }))?;
        published += u64::from(CHUNK);
    }
    Ok(published)
}

/// One delta at a time at `rate` per second, from a thread of its own
/// (sleeping between deltas; never bursting to catch up by more than one).
fn paced_singles(
    publ: &Publisher<BenchState>,
    rate: u64,
    leaves: u32,
    pad: u16,
    duration: Duration,
) -> Result<u64> {
    let mut key = 0u32;
    paced(rate, duration, || {
        publ.publish(delta(key, pad, state::wall_ns()))?;
        key = (key + 1) % leaves;
        Ok(true)
    })
}

/// Calls `send` `rate` times a second for `duration` from this (blocking)
/// thread, catching up at most one period when late; returns how many
/// calls said they sent.
fn paced(rate: u64, duration: Duration, mut send: impl FnMut() -> Result<bool>) -> Result<u64> {
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now();
    let mut next = start;
    let mut sent = 0u64;
    while start.elapsed() < duration {
        next += period;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else if now - next > period {
            next = now;
        }
        if send()? {
            sent += 1;
        }
    }
    Ok(sent)
}

/// The raw baseline of the latency mode: stamped datagrams of `--size`
/// from a bare socket, one at a time at the plan's rate, to receivers
/// that wait as `--driver` says.
async fn raw_latency(args: &BenchArgs, plan: &Plan) -> Result<Report> {
    let mut subs = Vec::new();
    for _ in 0..plan.subscribers {
        let mut s = SubProcess::spawn(args, plan.sub_port).await?;
        s.expect("synced").await?;
        subs.push(s);
    }
    let (net, size, rate, duration) = (
        args.net.clone(),
        args.size as usize,
        plan.rate.unwrap_or(10_000),
        plan.duration,
    );
    let start = Instant::now();
    let sent = tokio::task::spawn_blocking(move || raw::send_stamped(&net, size, rate, duration))
        .await??;
    let secs = start.elapsed().as_secs_f64();
    let mut r = Report {
        duration_s: secs,
        rate,
        deltas_published: sent,
        publish_per_s: sent as f64 / secs,
        datagrams_per_s: sent as f64 / secs,
        datagrams_per_send_call: 1.0,
        all_consistent: true,
        ..Report::default()
    };
    for s in subs {
        let report = s.finish(sent).await?;
        r.all_consistent &= report.consistent;
        r.deltas_per_s = report.deltas_applied as f64 / secs;
        fold_latency(&mut r, &report.latency);
    }
    Ok(r)
}

/// Folds one subscriber's latency into the report: each percentile the
/// highest over the subscribers so far, the curve that of the one with the
/// highest p99 (the later one on a tie).
fn fold_latency(r: &mut Report, l: &Percentiles) {
    if l.p99_us >= r.p99_us {
        r.latency_curve.clone_from(&l.curve);
    }
    r.p50_us = r.p50_us.max(l.p50_us);
    r.p90_us = r.p90_us.max(l.p90_us);
    r.p99_us = r.p99_us.max(l.p99_us);
    r.p999_us = r.p999_us.max(l.p999_us);
    r.max_us = r.max_us.max(l.max_us);
}

/// Snapshot rates the search tries, in leaves per second (the last:
/// unpaced, as fast as the socket takes them).
const SNAPSHOT_RATES: [u32; 5] = [500_000, 1_000_000, 2_000_000, 4_000_000, u32::MAX];
/// A late joiner is to sync within this many cycle times.
const SYNC_GOAL: f64 = 1.2;

/// The fastest snapshot cycle a late joiner keeps up with: rates of
/// [`SNAPSHOT_RATES`] in turn until one where the joiner does not sync
/// within [`SYNC_GOAL`] cycles, then two bisections. Reports the fastest that passed (or the
/// first, if none did), with every rate tried.
async fn snapshot_search(args: &BenchArgs, plan: &Plan) -> Result<Report> {
    let mut trials = Vec::new();
    let mut best: Option<Report> = None;
    let mut try_rate = async |rate: u32| -> Result<(bool, Report)> {
        let before = kernel_drops();
        let mut r = snapshot(args, plan, rate).await?;
        r.kernel_drops = kernel_drops().saturating_sub(before);
        let clean = r.all_consistent && r.sync_over_cycle <= SYNC_GOAL;
        trials.push(Trial {
            rate: u64::from(rate),
            per_s: r.leaves_per_s,
            kernel_drops: r.kernel_drops,
            gaps: r.gaps,
            sync_over_cycle: r.sync_over_cycle,
            clean,
        });
        Ok((clean, r))
    };
    let (mut lo, mut hi) = (0u32, 0u32);
    for rate in SNAPSHOT_RATES {
        let (clean, r) = try_rate(rate).await?;
        if !clean {
            hi = rate;
            best = best.or(Some(r));
            break;
        }
        lo = rate;
        best = Some(r);
    }
    if lo > 0 && hi > 0 && hi < u32::MAX {
        for _ in 0..SEARCH_STEPS - 1 {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let mid = (f64::from(lo) * f64::from(hi)).sqrt() as u32;
            let (clean, r) = try_rate(mid).await?;
            if clean {
                lo = mid;
                best = Some(r);
            } else {
                hi = mid;
            }
        }
    }
    let mut best = best.context("no trial ran")?;
    best.search = trials;
    Ok(best)
}

/// The snapshot cycle of a large state at `rate` leaves per second, and a
/// subscriber that joins in the middle of a cycle. A joiner that has not
/// synced within 5 cycles (at least 10 s) ends the trial, unsynced.
async fn snapshot(args: &BenchArgs, plan: &Plan, rate: u32) -> Result<Report> {
    let publ = secured(Publisher::builder(), plan)
        .multicast(args.net.multicast())
        .stream(args.net.stream())
        .driver(args.driver.into())
        .snapshot_rate(SnapshotRate::LeavesPerSec(rate))
        .bind(BenchState::with_leaves(plan.leaves, plan.pad))
        .await
        .context("starting the publisher")?;
    let cycles = |n: u64| {
        let publ = &publ;
        async move {
            let deadline = Instant::now() + CHILD_TIMEOUT;
            while publ.stats().protocol.cycles < n {
                if Instant::now() > deadline {
                    bail!("the publisher did not complete {n} snapshot cycles in time");
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Ok((Instant::now(), publ.stats()))
        }
    };
    let (t1, s1) = cycles(1).await?;
    let (t2, s2) = cycles(2).await?;
    let cycle = t2 - t1;
    let bytes = s2.protocol.snapshot_bytes - s1.protocol.snapshot_bytes;
    // Join half-way through the third cycle.
    tokio::time::sleep(cycle / 2).await;
    let mut sub = SubProcess::spawn(args, plan.sub_port).await?;
    let secs = cycle.as_secs_f64();
    let patience = (cycle * 5).max(Duration::from_secs(10));
    let Ok(synced) = sub.expect_within("synced", patience).await else {
        publ.shutdown().await;
        return Ok(Report {
            leaves: u64::from(plan.leaves),
            cycle_s: secs,
            leaves_per_s: f64::from(plan.leaves) / secs,
            mb_per_s: bytes as f64 / secs / 1e6,
            sync_s: f64::INFINITY,
            sync_over_cycle: f64::INFINITY,
            rate: u64::from(rate),
            ..Report::default()
        });
    };
    let report = sub.finish(publ.last_seq().0).await?;
    let sync_s = synced.parse::<f64>().unwrap_or(f64::NAN) / 1e9;
    publ.shutdown().await;
    Ok(Report {
        rate: u64::from(rate),
        leaves: u64::from(plan.leaves),
        cycle_s: secs,
        leaves_per_s: f64::from(plan.leaves) / secs,
        mb_per_s: bytes as f64 / secs / 1e6,
        sync_s,
        sync_over_cycle: sync_s / secs,
        rss_bytes: report.rss_bytes,
        raw_bytes: report.raw_bytes,
        rss_over_raw: report.rss_bytes as f64 / report.raw_bytes.max(1) as f64,
        all_consistent: report.consistent && report.leaves == u64::from(plan.leaves),
        gaps: report.gaps,
        ..Report::default()
    })
}

/// The mode as its flag names it (the name clap's `ValueEnum` gives it).
fn mode_name(m: Mode) -> String {
    m.to_possible_value()
        .map_or_else(|| "?".to_owned(), |v| v.get_name().to_owned())
}

fn print_table(r: &Report) {
    let mode = r.mode.map_or_else(|| "?".to_owned(), mode_name);
    let driver = r.driver.map_or("?", DriverArg::flag);
    println!(
        "mode {mode}, driver {driver}, {} subscriber(s), auth {}",
        r.subscribers, r.auth
    );
    if r.mode == Some(Mode::FanoutRaw) {
        println!(
            "  datagrams/s         {:.0} ({:.0} per send call)",
            r.datagrams_per_s, r.datagrams_per_send_call
        );
        println!("  CPU ns/datagram     sender {:.0}", r.cpu_per_datagram_ns);
    } else if r.mode == Some(Mode::LatencyRaw) {
        println!(
            "  datagrams sent      {} in {:.2} s ({:.0}/s)",
            r.deltas_published, r.duration_s, r.publish_per_s
        );
        println!(
            "  latency us          p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
            r.p50_us, r.p90_us, r.p99_us, r.p999_us, r.max_us
        );
    } else if r.mode == Some(Mode::Snapshot) {
        for t in &r.search {
            println!(
                "  tried {:>10}/s    cycled {:.0} leaves/s, joiner synced in {:.2} cycles, {} kernel drops{}",
                t.rate,
                t.per_s,
                t.sync_over_cycle,
                t.kernel_drops,
                if t.clean { "" } else { " (too slow)" }
            );
        }
        println!("  leaves              {}", r.leaves);
        println!("  cycle               {:.3} s", r.cycle_s);
        println!("  leaves/s            {:.0}", r.leaves_per_s);
        println!("  snapshot MB/s       {:.1}", r.mb_per_s);
        println!(
            "  late joiner synced  {:.3} s ({:.2} cycles)",
            r.sync_s, r.sync_over_cycle
        );
        println!(
            "  subscriber RSS      {:.1} MB for {:.1} MB of leaves ({:.2}x)",
            r.rss_bytes as f64 / 1e6,
            r.raw_bytes as f64 / 1e6,
            r.rss_over_raw
        );
    } else {
        println!(
            "  deltas published    {} in {:.2} s ({:.0}/s)",
            r.deltas_published, r.duration_s, r.publish_per_s
        );
        for t in &r.search {
            println!(
                "  tried {:>9}/s     applied {:.0}/s, {} kernel drops, {} gaps{}",
                t.rate,
                t.per_s,
                t.kernel_drops,
                t.gaps,
                if t.clean { "" } else { " (lossy)" }
            );
        }
        println!(
            "  deltas applied/s    {:.0} (slowest subscriber)",
            r.deltas_per_s
        );
        println!(
            "  datagrams/s         {:.0} ({:.1} per send call)",
            r.datagrams_per_s, r.datagrams_per_send_call
        );
        println!(
            "  latency us          p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
            r.p50_us, r.p90_us, r.p99_us, r.p999_us, r.max_us
        );
        println!(
            "  CPU ns/delta        publisher {:.0} ({:.0} user; {:.0} a datagram), subscriber {:.0}",
            r.cpu_per_delta_ns,
            r.user_cpu_per_delta_ns,
            r.cpu_per_datagram_ns,
            r.sub_cpu_per_delta_ns
        );
        println!(
            "  gaps {}, kernel drops {}, shed {}",
            r.gaps, r.kernel_drops, r.datagrams_shed
        );
    }
    println!("  all consistent      {}", r.all_consistent);
}
