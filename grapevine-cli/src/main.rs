//! The `grapevine` command: a live demo, a publisher and a subscriber as
//! separate processes, and a datagram decoder.

/// `println!` that returns an error, instead of panicking, when standard
/// output is closed (`grapevine decode ... | head -1`): `main` then exits
/// quietly. Evaluates to `std::io::Result<()>`.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

/// `eprintln!` unless `-qq` asked for nothing on standard error: the
/// command's own notes (progress, the metrics address, what it is doing).
macro_rules! say {
    ($($arg:tt)*) => {{
        if !crate::silent() {
            eprintln!($($arg)*);
        }
    }};
}

mod bench;
mod decode;
mod demo;
mod doctor;
mod keys;
mod metrics;
mod pubsub;
mod relay;
mod tail;

use std::net::{IpAddr, Ipv4Addr};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use grapevine::socket::{Interface, MulticastConfig};
use grapevine::StreamId;

/// Replicate application state over UDP multicast.
#[derive(Debug, Parser)]
#[command(
    name = "grapevine",
    version,
    about,
    long_about = None,
    after_help = "Exit codes: 0 done; 1 failed (a value out of range, a goal not reached, \
                  a replica not consistent, a doctor check failed); 2 flags that do not \
                  parse. Logs and notes go to standard error, results to standard output."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// More log lines on standard error: -v info (sessions, sync,
    /// restarts), -vv debug, -vvv trace. `RUST_LOG` (e.g.
    /// `RUST_LOG=grapevine=debug`), when set, decides instead.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Fewer: -q only errors, -qq nothing at all on standard error (the
    /// exit code still tells).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    quiet: u8,
}

/// `-qq`: nothing on standard error, not even the command's own notes.
static SILENT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether `-qq` asked for nothing on standard error.
pub(crate) fn silent() -> bool {
    SILENT.load(std::sync::atomic::Ordering::Relaxed)
}

/// Logs go to standard error, at the level the flags ask for: warnings by
/// default (a second publisher on the stream, lost sequence numbers).
fn init_logs(verbose: u8, quiet: u8) {
    use tracing_subscriber::EnvFilter;
    let level = match (i16::from(verbose) - i16::from(quiet)).clamp(-2, 3) {
        -2 => "off",
        -1 => "error",
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::try_new(spec).unwrap_or_else(|e| {
            eprintln!("warning: RUST_LOG is not a valid filter ({e}); using {level}");
            EnvFilter::new(level)
        }),
        _ => EnvFilter::new(level),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a publisher of an order book and several subscribers that join at
    /// different times, in one process, and show them converge.
    Demo(demo::DemoArgs),
    /// Publish the demo order book: its leaves, then live deltas; keep
    /// cycling snapshots and heartbeating until killed.
    Pub(pubsub::PubArgs),
    /// Subscribe to a stream and follow it; with `--until-seq`, exit once
    /// consistent through that sequence number.
    Sub(pubsub::SubArgs),
    /// Measure throughput, latency, fan-out or the snapshot cycle, with the
    /// publisher here and each subscriber a separate process.
    Bench(bench::BenchArgs),
    /// One subscriber process of `grapevine bench` (started by it).
    #[command(hide = true)]
    BenchSub(bench::sub::BenchSubArgs),
    /// Decode datagrams given as hex and print their meaning, one line per
    /// header and message, in the notation of PROTOCOL.md's test vectors.
    /// Fragments given across several datagrams are reassembled.
    Decode {
        /// Datagrams as hex (spaces inside one argument are ignored). Reads
        /// them from standard input, one per line, if none is given.
        datagrams: Vec<String>,
    },
    /// Watch a group and port: every stream and session heard, publishers
    /// alive, message rates by kind, latest sequence numbers, gaps and
    /// snapshot cycle progress, as a table refreshed every `--interval`
    /// (or JSON lines with `--json`). What it shows is what this host
    /// hears.
    Tail(tail::TailArgs),
    /// Carry a stream between networks that have no multicast between
    /// them: read a group and send it to a far relay over QUIC (or TLS over
    /// TCP), or listen and emit it on a group there, and serve unicast
    /// subscribers. Prints `fingerprint: <hex>` on standard error: what the
    /// other side gives as `--pin` or `--allow`.
    Relay(Box<relay::RelayArgs>),
    /// Check this host for a group and an interface, and say what is wrong
    /// and how to fix it.
    ///
    /// Checks, in order: the interface (exists, up, MULTICAST flag,
    /// address), the route for the group, rp_filter, net.core.rmem_max and
    /// wmem_max, the firewall rules (nft, iptables-save; root only), the
    /// IGMP/MLD join (in /proc/net/igmp or igmp6), and a probe: one datagram
    /// sent to the group with TTL 0, so it never leaves this host, and heard
    /// back within 1 s. The probe starts with `grapevine-doctor`, not
    /// Grapevine's magic: subscribers on the port drop it and count it as
    /// `bad_magic`. On a real interface the join is announced on its link.
    /// Exits 0 when no check failed (warnings allowed), 1 otherwise.
    Doctor(doctor::DoctorArgs),
    /// Make a new stream key: one line, `grapevine-key 1 <id> <64 hex
    /// digits>`, written to a new file readable by its owner only
    /// (`--out`), or to standard output. Its id, never the key, is printed
    /// on standard error.
    ///
    /// Give the file to every publisher and subscriber of the stream with
    /// `--key-file` (or `GRAPEVINE_KEY_FILE`): subscribers need it too, as
    /// they seal their NAKs. A key file may hold several lines: the first
    /// seals, every one opens. To rotate: add the new key's line at the
    /// end of every node's file (`grapevine keygen >> FILE`) and restart
    /// them; once every node holds it, move it first (restart again); then
    /// remove the old line.
    Keygen(keys::KeygenArgs),
}

/// Where the stream is and how it is sealed: flags shared by `demo`,
/// `pub`, `sub` and `bench`.
#[derive(Debug, Clone, Args)]
pub(crate) struct NetArgs {
    /// Multicast group: IPv4 in 224.0.0.0/4 or IPv6 in ff00::/8.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::new(239, 255, 77, 77)))]
    pub(crate) group: IpAddr,
    /// UDP port of the group.
    #[arg(long, default_value_t = 7777)]
    pub(crate) port: u16,
    /// Interface to send and join on: `loopback` (the default: this machine
    /// only), an interface name such as `eth0`, an interface index (as `ip
    /// link` numbers them), or an IPv4 address. With `--ttl` above 0, any
    /// interface but loopback puts the stream on that network.
    #[arg(long, default_value = "loopback", value_parser = interface_flag)]
    pub(crate) interface: String,
    /// Stream id: which state on the group.
    #[arg(long, default_value_t = 1)]
    pub(crate) stream: u32,
    /// Multicast TTL (IPv4) or hop limit (IPv6): 0 (the default) keeps
    /// datagrams on this host; 1 reaches the local network of `--interface`
    /// and no further; above 1 crosses routers (warned: anyone on those
    /// networks can read the stream). NAKs, unicast, get at least 1.
    #[arg(long, default_value_t = 0)]
    pub(crate) ttl: u32,
    #[command(flatten)]
    pub(crate) keys: keys::KeyArgs,
}

impl NetArgs {
    pub(crate) fn interface(&self) -> Interface {
        parse_interface(&self.interface)
    }

    pub(crate) fn stream(&self) -> StreamId {
        StreamId(self.stream)
    }

    /// Warns (once per command) about a TTL that lets datagrams cross
    /// routers.
    pub(crate) fn warn_ttl(&self) {
        if self.ttl > 1 {
            tracing::warn!(
                ttl = self.ttl,
                "--ttl {} lets the stream cross up to {} router(s): anyone on those \
                 networks can read it; 1 keeps it on the local network",
                self.ttl,
                self.ttl - 1
            );
        }
    }

    /// Group, port, interface and TTL as a socket configuration.
    pub(crate) fn multicast(&self) -> MulticastConfig {
        let mut c = MulticastConfig::default();
        c.group(self.group)
            .port(self.port)
            .interface(self.interface())
            .ttl(self.ttl);
        c
    }
}

/// Checks an `--interface` value is not empty (what it names is checked
/// when the socket is bound).
pub(crate) fn interface_flag(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() {
        Err("empty: give `loopback`, a name such as eth0, an index or an IPv4 address".to_owned())
    } else {
        Ok(s.to_owned())
    }
}

/// `--interface` as every command takes it: `loopback`, an index, an IPv4
/// address, or a name.
pub(crate) fn parse_interface(text: &str) -> Interface {
    match text {
        "loopback" => Interface::Loopback,
        other => match (other.parse::<u32>(), other.parse::<Ipv4Addr>()) {
            (Ok(index), _) => Interface::Index(index),
            (_, Ok(ip)) => Interface::Ipv4(ip),
            _ => Interface::name(other),
        },
    }
}

fn main() -> ExitCode {
    // An empty `GRAPEVINE_KEY_FILE` (`export GRAPEVINE_KEY_FILE=`) means no
    // key file, as the shell user meant, not an empty `--key-file`. Still
    // one thread here.
    if std::env::var_os(keys::KEY_FILE_ENV).is_some_and(|v| v.is_empty()) {
        std::env::remove_var(keys::KEY_FILE_ENV);
    }
    let cli = Cli::parse();
    init_logs(cli.verbose, cli.quiet);
    if i16::from(cli.verbose) - i16::from(cli.quiet) <= -2 {
        SILENT.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let res = match cli.command {
        Command::Decode { datagrams } => decode::run(datagrams).map(|()| ExitCode::SUCCESS),
        Command::Doctor(args) => doctor::run(args),
        Command::Keygen(args) => keys::keygen(&args),
        Command::Demo(args) => runtime().and_then(|rt| rt.block_on(demo::run(args))),
        Command::Pub(args) => runtime().and_then(|rt| rt.block_on(pubsub::run_pub(args))),
        Command::Sub(args) => runtime().and_then(|rt| rt.block_on(pubsub::run_sub(args))),
        // The fan-out modes pin this process before its threads start.
        Command::Bench(mut args) => args
            .pin()
            .and_then(|()| runtime())
            .and_then(|rt| rt.block_on(bench::run(args))),
        Command::Tail(args) => runtime().and_then(|rt| rt.block_on(tail::run(args))),
        Command::Relay(args) => runtime().and_then(|rt| rt.block_on(relay::run(*args))),
        // One thread: the driver task never migrates nor waits for a
        // sibling worker to wake it.
        Command::BenchSub(args) => (if args.cpus.is_empty() {
            Ok(())
        } else {
            bench::pin::pin(&args.cpus)
        })
        .and_then(|()| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
        })
        .and_then(|rt| rt.block_on(bench::sub::run(args))),
    };
    match res {
        Ok(code) => code,
        // The reader of standard output went away (`| head -1`): nothing
        // more to say, and nobody to say it to.
        Err(e) if stdout_closed(&e) => ExitCode::SUCCESS,
        Err(e) => {
            say!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Whether `e` is a write to a closed standard output.
fn stdout_closed(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}
