//! `grapevine bench-sub`: one benchmark subscriber, a child process of
//! `grapevine bench`. It talks to its parent by lines: it prints `ready`
//! once joined and `synced <ns>` once synced; given `end <seq>` on its
//! standard input it waits (bounded) until consistent through `seq`, then
//! prints one JSON line of results and exits.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use grapevine::{State, Subscriber};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::measure::{cpu_time, rss_bytes, Percentiles};
use super::state::BenchState;
use super::DriverArg;
use crate::NetArgs;

/// Flags of the hidden `grapevine bench-sub`.
#[derive(Debug, Args)]
pub(crate) struct BenchSubArgs {
    #[command(flatten)]
    pub(crate) net: NetArgs,
    #[arg(long, value_enum, default_value_t = DriverArg::Tokio)]
    pub(crate) driver: DriverArg,
    /// A raw receiver that only counts datagrams (fanout-raw).
    #[arg(long)]
    pub(crate) raw: bool,
    /// A raw receiver of stamped datagrams (latency-raw), waiting as
    /// `--driver` says.
    #[arg(long, conflicts_with = "raw")]
    pub(crate) stamped: bool,
    /// Run on these CPUs only (comma-separated indices), as `grapevine
    /// bench` asks in its fan-out modes.
    #[arg(long, value_delimiter = ',')]
    pub(crate) cpus: Vec<usize>,
}

/// What one subscriber reports.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct SubReport {
    pub(crate) consistent: bool,
    pub(crate) deltas_applied: u64,
    pub(crate) first_apply_ns: u64,
    pub(crate) last_apply_ns: u64,
    pub(crate) datagrams_received: u64,
    pub(crate) recv_batches: u64,
    pub(crate) gaps: u64,
    pub(crate) repaired_by_nak: u64,
    pub(crate) snapshots_applied: u64,
    pub(crate) synced_after_ns: u64,
    pub(crate) cpu_ns: u64,
    pub(crate) rss_bytes: u64,
    pub(crate) leaves: u64,
    /// Encoded bytes of the replica's keys and leaves.
    pub(crate) raw_bytes: u64,
    pub(crate) latency: Percentiles,
}

/// How long to wait for consistency once told where the stream ends.
const END_TIMEOUT: Duration = Duration::from_secs(60);

/// Reads standard input up to its line `end <n>` (skipping any other) and
/// returns `n`. If the input ends first, the error says the benchmark ended
/// without telling `untold`; a bad number is an error in `form`.
pub(crate) async fn read_end(untold: &str, form: &'static str) -> Result<u64> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        let Some(line) = lines.next_line().await? else {
            bail!("the benchmark ended without telling {untold}");
        };
        if let Some(n) = line.strip_prefix("end ") {
            return n.trim().parse::<u64>().context(form);
        }
    }
}

pub(crate) async fn run(args: BenchSubArgs) -> Result<ExitCode> {
    if args.raw || args.stamped {
        let report = if args.raw {
            super::raw::receive(&args.net).await?
        } else {
            super::raw::receive_stamped(&args.net, args.driver).await?
        };
        println!("{}", serde_json::to_string(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut builder = Subscriber::<BenchState>::builder()
        .multicast(args.net.multicast())
        .stream(args.net.stream())
        .driver(args.driver.into());
    if let Some(s) = args.net.keys.security()? {
        builder = builder.security(s);
    }
    let sub = builder
        .bind_with(BenchState::measuring())
        .await
        .context("starting the benchmark subscriber")?;
    let joined = Instant::now();
    println!("ready");
    sub.wait_until(|s| s.synced, END_TIMEOUT)
        .await
        .context("waiting to sync")?;
    let synced_after = joined.elapsed();
    println!("synced {}", synced_after.as_nanos());

    let target = read_end("where the stream ends", "end <seq>").await?;
    let consistent = sub
        .wait_until(|s| s.consistent && s.seq.0 == target, END_TIMEOUT)
        .await
        .is_ok();
    let rss = rss_bytes();
    let stats = sub.stats();
    let mut report = sub.read(|s| SubReport {
        deltas_applied: s.applied,
        first_apply_ns: s.first_ns,
        last_apply_ns: s.last_ns,
        leaves: s.leaf_count() as u64,
        ..SubReport::default()
    });
    report.latency = sub.read(|s| {
        let mut samples = s.samples.clone();
        Percentiles::of(&mut samples)
    });
    report.raw_bytes = sub.read(|s| {
        let mut bytes = 0;
        s.for_each_leaf(&mut |k, l| {
            bytes += (grapevine::core::state::encode(k).len()
                + grapevine::core::state::encode(l).len()) as u64;
        });
        bytes
    });
    report.consistent = consistent;
    report.datagrams_received = stats.datagrams_received;
    report.recv_batches = stats.recv_batches;
    report.gaps = stats.protocol.gaps;
    report.repaired_by_nak = stats.protocol.repaired_by_nak;
    report.snapshots_applied = stats.protocol.snapshots_applied;
    report.synced_after_ns = u64::try_from(synced_after.as_nanos()).unwrap_or(u64::MAX);
    report.cpu_ns = u64::try_from(cpu_time().as_nanos()).unwrap_or(u64::MAX);
    report.rss_bytes = rss;
    println!("{}", serde_json::to_string(&report)?);
    Ok(ExitCode::SUCCESS)
}
