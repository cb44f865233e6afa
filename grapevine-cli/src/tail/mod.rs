//! `grapevine tail`: a live view of whatever is on a group and port.
//!
//! The socket loop is here; what is made of the datagrams is in
//! [`observer`] (no I/O), and how it is printed in [`view`].

mod observer;
mod view;

use std::io::IsTerminal as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use grapevine::socket::{bind_receiver, MulticastConfig};

use observer::{Observer, Report};

/// Longest `--interval`, in seconds.
const MAX_INTERVAL: f64 = 3600.0;
/// Longest `--duration`, in seconds.
const MAX_DURATION: f64 = 1e6;

/// Flags of `grapevine tail`. It watches every stream on the group and
/// port, so it has no `--stream`; it only listens, so no `--ttl`.
#[derive(Debug, Args)]
pub(crate) struct TailArgs {
    /// Multicast group to watch: IPv4 in 224.0.0.0/4 or IPv6 in ff00::/8.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::new(239, 255, 77, 77)))]
    group: IpAddr,
    /// UDP port of the group.
    #[arg(long, default_value_t = 7777)]
    port: u16,
    /// Interface to join on: `loopback` (the default), an interface name
    /// such as `eth0`, an interface index, or an IPv4 address.
    #[arg(long, default_value = "loopback", value_parser = crate::interface_flag)]
    interface: String,
    /// Print one JSON object per interval (a line each) instead of a
    /// table; `--help` lists its fields.
    ///
    /// The object's fields: `elapsed_s`,
    /// `window_s`, `final`, `datagrams`, `bytes`, `undecodable` (datagrams
    /// dropped, by reason), `fragments_rejected`, `evicted`, and `streams`,
    /// an array with one object per (stream, session), alive ones first,
    /// then by stream, then the most recently heard first: `stream`,
    /// `session`, `from`, `alive`, `alive_window_s`, `heartbeat_ms`,
    /// `first_heard_s` and `last_heard_s` (ages), `datagrams`, `bytes`,
    /// `datagram_rate`, `byte_rate`, `datagrams_missed`, `counts` and
    /// `rates` (per message kind), `reassembled`, `latest_seq`,
    /// `announced_seq`, `gaps`, `gaps_filled`, `duplicates`, `cycle` (`id`,
    /// `leaves`, `seen`, `ended`), `cycles_begun`, `cycles_complete`, and
    /// `auth` (datagrams `plain`, `unverified`, `encrypted`, `verified`,
    /// `refused`, and the `latest` one's). Also `verifying` (a key was
    /// given) and `refused` (sealed datagrams the key refused, by reason).
    #[arg(long)]
    json: bool,
    /// Seconds between reports, and the window rates are measured over
    /// (at most 3600).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    interval: f64,
    /// Stop after this many seconds and print a final report (default: run
    /// until interrupted; Ctrl-C or SIGTERM also prints the final report).
    /// A final report due at, or just after, a periodic one takes its
    /// place, with the rates of the last full window.
    #[arg(long, allow_negative_numbers = true)]
    duration: Option<f64>,
    /// Key file of the streams (`grapevine keygen`): check sealed datagrams
    /// with it (rows `verified`), and count those it refuses by reason.
    /// Without it, authenticated-only datagrams are shown `unverified`
    /// (read without checking: anyone could have sent them) and encrypted
    /// ones are counted from their headers, not read.
    #[arg(long, value_name = "PATH", env = crate::keys::KEY_FILE_ENV)]
    key_file: Option<PathBuf>,
}

impl TailArgs {
    fn multicast(&self) -> MulticastConfig {
        let mut c = MulticastConfig::default();
        c.group(self.group)
            .port(self.port)
            .interface(crate::parse_interface(&self.interface));
        c
    }
}

/// `v` as a duration, if it is a number of seconds in `(0, max]`.
fn seconds(flag: &str, v: f64, max: f64) -> Result<Duration> {
    if !(v.is_finite() && v > 0.0 && v <= max) {
        bail!("{flag} must be a number of seconds in (0, {max}], not {v}");
    }
    Ok(Duration::from_secs_f64(v))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    /// Redraw a table in place.
    Terminal,
    /// Print a table per report, one after the other.
    Plain,
    Json,
}

/// A final report is not given a rate window shorter than this: it
/// extends the previous window instead (see [`Observer::final_report`]).
fn min_window(interval: Duration) -> Duration {
    interval / 10
}

/// Whether a periodic report due at `now` should be the final one instead:
/// the run ends within [`min_window`] of it.
fn ends_at_this_tick(now: Instant, end: Option<Instant>, interval: Duration) -> bool {
    end.is_some_and(|end| end.saturating_duration_since(now) < min_window(interval))
}

fn print(out: Output, heading: &str, r: &Report) -> Result<()> {
    match out {
        Output::Json => outln!("{}", view::json(r)?)?,
        Output::Terminal => outln!("{}{}", view::CLEAR, view::table(r, heading))?,
        Output::Plain => outln!("{}", view::table(r, heading))?,
    }
    Ok(())
}

pub(crate) async fn run(args: TailArgs) -> Result<ExitCode> {
    let interval = seconds("--interval", args.interval, MAX_INTERVAL)?;
    let duration = args
        .duration
        .map(|d| seconds("--duration", d, MAX_DURATION))
        .transpose()?;
    let keyring = args
        .key_file
        .as_deref()
        .map(crate::keys::read_keyring)
        .transpose()?;
    let config = args.multicast();
    let socket = bind_receiver(&config).with_context(|| {
        format!(
            "joining {} on interface {}",
            config.group_addr(),
            args.interface
        )
    })?;
    let checking = keyring.as_ref().map_or(String::new(), |ring| {
        let ids: Vec<String> = ring.keys().map(|k| k.id().to_string()).collect();
        format!(" checking with key {}", ids.join(","))
    });
    let heading = format!(
        "grapevine tail {} on {}{checking}",
        config.group_addr(),
        socket.interface_name()
    );
    let socket = socket.into_tokio().context("setting up the socket")?;
    let out = if args.json {
        Output::Json
    } else if std::io::stdout().is_terminal() {
        Output::Terminal
    } else {
        Output::Plain
    };
    say!("{heading}: listening");

    let start = Instant::now();
    let end_at = duration.map(|d| start + d);
    let mut observer = Observer::new(start);
    if let Some(ring) = keyring {
        observer = observer.verifying(ring);
    }
    let mut buf = vec![0u8; 65_536];
    let mut tick = tokio::time::interval_at((start + interval).into(), interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = tokio::time::sleep_until(
        end_at
            .unwrap_or(start + Duration::from_secs(365 * 86_400))
            .into(),
    );
    tokio::pin!(end);
    let mut stop = Box::pin(crate::pubsub::stop_signal());
    loop {
        tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, from)) => observer.observe(Instant::now(), from, &buf[..n]),
                // An ICMP error left on the socket, or a signal: not fatal.
                Err(e) if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::Interrupted
                ) => {}
                Err(e) => return Err(e).context("receiving"),
            },
            _ = tick.tick() => {
                let now = Instant::now();
                if ends_at_this_tick(now, end_at, interval) {
                    break;
                }
                print(out, &heading, &observer.report(now))?;
            }
            () = &mut end, if duration.is_some() => break,
            r = &mut stop => {
                r?;
                break;
            }
        }
    }
    let last = observer.final_report(Instant::now(), min_window(interval));
    print(out, &heading, &last)?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--duration 3 --interval 1`: the tick due at 3 s is the final
    /// report, not a periodic one followed by a final one over ~0 s.
    #[test]
    fn a_tick_at_the_end_of_the_duration_is_the_final_report() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        let interval = s(1);
        let end = Some(t0 + s(3));
        assert!(!ends_at_this_tick(t0 + s(1), end, interval));
        assert!(!ends_at_this_tick(t0 + s(2), end, interval));
        assert!(!ends_at_this_tick(t0 + ms(2900), end, interval));
        assert!(ends_at_this_tick(t0 + ms(2901), end, interval));
        assert!(ends_at_this_tick(t0 + s(3), end, interval));
        // A tick that fires late, after the end.
        assert!(ends_at_this_tick(t0 + ms(3005), end, interval));
        assert!(!ends_at_this_tick(t0 + s(1_000_000), None, interval));
    }

    #[test]
    fn seconds_must_be_finite_positive_and_bounded() {
        assert_eq!(
            seconds("--interval", 0.25, 3600.0).unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(
            seconds("--interval", 3600.0, 3600.0).unwrap(),
            Duration::from_secs(3600)
        );
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 3600.5, 1e300] {
            let e = seconds("--interval", bad, 3600.0).unwrap_err().to_string();
            assert!(
                e.starts_with("--interval must be a number of seconds in (0, 3600]"),
                "{e}"
            );
        }
    }
}
