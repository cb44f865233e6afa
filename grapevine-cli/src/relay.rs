//! `grapevine relay`: carry a stream between networks (docs/design/relay.md).
//!
//! The near side reads a group and sends to a far relay
//! (`--from-group G:P --to HOST:PORT --pin HEX`); the far side listens and
//! emits on its own group (`--listen ADDR --to-group G:P`), and serves
//! unicast subscribers (`grapevine sub --relay HOST:PORT --pin HEX`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use clap::Args;
use grapevine::relay::tls::{Fingerprint, Identity, Trust};
use grapevine::relay::{Relay, RelayConfig, Stats, Transport};
use grapevine::socket::MulticastConfig;
use grapevine::StreamId;

use crate::metrics::MetricsArgs;

/// Flags of `grapevine relay`.
#[derive(Debug, Args)]
#[command(
    after_help = "Bridge two sites (the far side first, it prints its fingerprint):\n  \
    far$  grapevine relay --listen 0.0.0.0:7443 --to-group 239.255.77.77:7777 --interface eth1 --ttl 1 \\\n          --identity far.pem --allow <near fingerprint>\n  \
    near$ grapevine relay --from-group 239.255.77.77:7777 --interface eth0 --to far.example:7443 \\\n          --pin <far fingerprint> --identity near.pem\n\
    Subscribe from a host without multicast:\n  \
    laptop$ grapevine sub --relay far.example:7443 --pin <far fingerprint>"
)]
pub(crate) struct RelayArgs {
    /// Read the stream from this multicast group and port (e.g.
    /// 239.255.77.77:7777), on `--interface`.
    #[arg(long, value_name = "GROUP:PORT")]
    from_group: Option<SocketAddr>,
    /// Send the stream to the relay listening there.
    #[arg(long, value_name = "HOST:PORT")]
    to: Option<String>,
    /// Listen for feeding relays and unicast subscribers on this address.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Emit what feeders deliver on this group and port, on `--interface`.
    #[arg(long, value_name = "GROUP:PORT")]
    to_group: Option<SocketAddr>,
    /// Interface of the group read or emitted: `loopback` (default), a
    /// name, an index, or an IPv4 address.
    #[arg(long, value_parser = crate::interface_flag)]
    interface: Option<String>,
    /// TTL of what is emitted on `--to-group`: 0 (default) keeps it on this
    /// host, 1 on the interface's network.
    #[arg(long, default_value_t = 0)]
    ttl: u32,
    /// TLS 1.3 over TCP instead of QUIC, on both sides (where UDP is not
    /// allowed between the sites).
    #[arg(long)]
    tcp: bool,
    /// Trust the listener presenting the certificate with this SHA-256
    /// fingerprint (what it prints as `fingerprint:`; colons allowed).
    #[arg(long, value_name = "HEX")]
    pin: Option<Fingerprint>,
    /// Trust listeners whose certificate this CA (PEM file) signed, for the
    /// name of `--to` (or `--server-name`).
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// The name checked in the listener's certificate with `--ca`.
    #[arg(long, value_name = "NAME")]
    server_name: Option<String>,
    /// This relay's certificate (PEM), with `--key`.
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// The private key of `--cert` (PEM).
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// Keep this relay's certificate and key in FILE (made on first start,
    /// mode 0600), so its fingerprint survives restarts. Without it or
    /// `--cert`, a new one is made at every start.
    #[arg(long, value_name = "FILE", conflicts_with = "cert")]
    identity: Option<PathBuf>,
    /// Admit the feeding relay whose fingerprint this is (repeatable).
    #[arg(long, value_name = "HEX")]
    allow: Vec<Fingerprint>,
    /// Admit any feeding relay: anyone who reaches `--listen` can then put
    /// datagrams on `--to-group` (harmless to authenticated streams only).
    #[arg(long, conflicts_with = "allow")]
    allow_any_feeder: bool,
    /// Serve no unicast subscribers on `--listen`.
    #[arg(long)]
    no_subscribers: bool,
    /// Most unicast subscribers at once.
    #[arg(long, default_value_t = 64)]
    max_subscribers: usize,
    /// Carry only this stream id (repeatable; default: any, up to 16).
    #[arg(long = "stream", value_name = "ID")]
    streams: Vec<u32>,
    /// Most bytes queued per link and stream; beyond, the oldest is shed.
    #[arg(long, default_value_t = 4 << 20, value_name = "BYTES")]
    queue_bytes: usize,
    /// Datagrams queued longer than this (milliseconds) are shed.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    queue_age_ms: u64,
    /// Print the relay's counters as one JSON line on standard output every
    /// SECONDS, and once at the end.
    #[arg(long, value_name = "SECONDS")]
    stats: Option<f64>,
    /// Stop after SECONDS (default: run until SIGINT or SIGTERM).
    #[arg(long, value_name = "SECONDS")]
    duration: Option<f64>,
    #[command(flatten)]
    metrics: MetricsArgs,
}

/// `--relay HOST:PORT` with `--pin` or `--ca`: subscribe through a relay
/// listener instead of a group (`sub`, `tail`).
#[derive(Debug, Clone, Args)]
pub(crate) struct RelayClientArgs {
    /// Receive the stream from the relay listening there (`grapevine relay
    /// --listen`), for hosts with no multicast: the group flags are then
    /// not used.
    #[arg(long, value_name = "HOST:PORT")]
    relay: Option<String>,
    /// With `--relay`: trust the listener presenting the certificate with
    /// this fingerprint (what it prints as `fingerprint:`).
    #[arg(long = "pin", value_name = "HEX", requires = "relay")]
    relay_pin: Option<Fingerprint>,
    /// With `--relay`: trust listeners whose certificate this CA (PEM)
    /// signed, for the host of `--relay`.
    #[arg(long = "ca", value_name = "FILE", requires = "relay")]
    relay_ca: Option<PathBuf>,
    /// With `--relay`: TLS over TCP instead of QUIC.
    #[arg(long = "tcp", requires = "relay")]
    relay_tcp: bool,
}

impl RelayClientArgs {
    /// The link the flags ask for, or `None` without `--relay`.
    pub(crate) async fn link(&self) -> Result<Option<grapevine::relay::RelayLink>> {
        let Some(to) = &self.relay else {
            return Ok(None);
        };
        let trust = match (&self.relay_pin, &self.relay_ca) {
            (Some(pin), None) => Trust::Pin(*pin),
            (None, Some(ca)) => Trust::ca_file(ca)?,
            (Some(_), Some(_)) => bail!("--pin and --ca: give one way to trust the relay"),
            (None, None) => bail!("--relay needs a way to trust the listener: --pin <the fingerprint it prints> or --ca FILE"),
        };
        let addr = resolve("--relay", to).await?;
        let mut link = grapevine::relay::RelayLink::new(addr, trust);
        let host = to.rsplit_once(':').map_or(to.as_str(), |(h, _)| h);
        link.server_name = Some(host.trim_matches(['[', ']']).to_string());
        if self.relay_tcp {
            link.transport = Transport::Tcp;
        }
        Ok(Some(link))
    }
}

fn group(addr: SocketAddr, interface: &str, ttl: u32, flag: &str) -> Result<MulticastConfig> {
    if !addr.ip().is_multicast() {
        bail!("{flag} {addr}: not a multicast group (IPv4 224.0.0.0/4 or IPv6 ff00::/8)");
    }
    if addr.port() == 0 {
        bail!("{flag} {addr}: give the group's port");
    }
    let mut c = MulticastConfig::default();
    c.group(addr.ip())
        .port(addr.port())
        .interface(crate::parse_interface(interface))
        .ttl(ttl);
    Ok(c)
}

fn seconds(flag: &str, s: f64) -> Result<Duration> {
    if !s.is_finite() || s <= 0.0 || s > 1e7 {
        bail!("{flag} {s}: give a number of seconds above 0 and at most 10000000");
    }
    Ok(Duration::from_secs_f64(s))
}

async fn resolve(flag: &str, to: &str) -> Result<SocketAddr> {
    let mut addrs = tokio::net::lookup_host(to)
        .await
        .with_context(|| format!("{flag} {to}: not HOST:PORT, or the host cannot be resolved"))?;
    addrs
        .next()
        .with_context(|| format!("{flag} {to}: the host has no address"))
}

/// Runs `grapevine relay`.
pub(crate) async fn run(args: RelayArgs) -> Result<ExitCode> {
    if args.from_group.is_none() && args.listen.is_none() {
        bail!("nothing to relay: give --from-group GROUP:PORT (a group to read) or --listen ADDR (for feeding relays)");
    }
    if args.to.is_none() && args.to_group.is_none() && args.listen.is_none() {
        bail!("nowhere to send: give --to HOST:PORT (a far relay), --to-group GROUP:PORT, or --listen ADDR (for unicast subscribers)");
    }
    if args.to.is_some() && args.pin.is_none() && args.ca.is_none() {
        bail!("--to needs a way to trust the listener: --pin <the fingerprint it prints> or --ca FILE");
    }
    if args.pin.is_some() && args.ca.is_some() {
        bail!("--pin and --ca: give one way to trust the listener");
    }
    if args.to.is_none() && (args.pin.is_some() || args.ca.is_some() || args.server_name.is_some())
    {
        bail!("--pin, --ca and --server-name are for --to");
    }
    if args.listen.is_some()
        && args.to_group.is_some()
        && args.allow.is_empty()
        && !args.allow_any_feeder
    {
        bail!(
            "--listen with --to-group emits what feeding relays send: say which to admit with \
             --allow <fingerprint> (each feeder prints its own as `fingerprint:`; give it --identity \
             FILE so that it keeps it), or --allow-any-feeder"
        );
    }
    if args.listen.is_none() && (!args.allow.is_empty() || args.allow_any_feeder) {
        bail!("--allow and --allow-any-feeder are for --listen");
    }
    if args.max_subscribers == 0 || args.max_subscribers > 100_000 {
        bail!(
            "--max-subscribers {}: give 1 to 100000 (or --no-subscribers)",
            args.max_subscribers
        );
    }
    if args.interface.is_some() && args.from_group.is_none() && args.to_group.is_none() {
        bail!("--interface is for --from-group and --to-group: give one, or leave --interface out");
    }
    if args.ttl > 255 {
        bail!("--ttl {}: give 0 to 255", args.ttl);
    }
    let interface = args.interface.as_deref().unwrap_or("loopback");
    let stats_every = args.stats.map(|s| seconds("--stats", s)).transpose()?;
    let duration = args
        .duration
        .map(|s| seconds("--duration", s))
        .transpose()?;
    let mut config = RelayConfig::default();
    config.queue_bytes = args.queue_bytes;
    config.queue_age = Duration::from_millis(args.queue_age_ms);
    config.validate().map_err(|e| {
        anyhow::anyhow!("{e} (--queue-bytes: 64 KiB to 1 GiB; --queue-age-ms: 1 to 600000)")
    })?;
    let identity = match (&args.cert, &args.key, &args.identity) {
        (Some(c), Some(k), _) => Identity::from_pem_files(c, k)?,
        (_, _, Some(path)) => Identity::load_or_create(path)?,
        _ => Identity::generate()?,
    };
    let mut builder = Relay::builder()
        .name("relay")
        .identity(identity.clone())
        .transport(if args.tcp {
            Transport::Tcp
        } else {
            Transport::Quic
        })
        .config(config)
        .streams(args.streams.iter().map(|&s| StreamId(s)))
        .max_subscribers(args.max_subscribers);
    if let Some(g) = args.from_group {
        builder = builder.from_group(group(g, interface, 0, "--from-group")?);
    }
    if let Some(g) = args.to_group {
        builder = builder.to_group(group(g, interface, args.ttl, "--to-group")?);
    }
    if let Some(addr) = args.listen {
        builder = builder.listen(addr);
    }
    for fp in &args.allow {
        builder = builder.allow_feeder(*fp);
    }
    if args.allow_any_feeder {
        builder = builder.allow_any_feeder();
    }
    if args.no_subscribers {
        builder = builder.no_subscribers();
    }
    if let Some(to) = &args.to {
        let addr = resolve("--to", to).await?;
        let trust = match (&args.pin, &args.ca) {
            (Some(pin), _) => Trust::Pin(*pin),
            (_, Some(ca)) => Trust::ca_file(ca)?,
            _ => bail!("--to needs --pin or --ca"),
        };
        builder = builder.to(addr, trust);
        let host = to.rsplit_once(':').map_or(to.as_str(), |(h, _)| h);
        let name = args
            .server_name
            .clone()
            .unwrap_or_else(|| host.trim_matches(['[', ']']).to_string());
        builder = builder.server_name(name);
    }
    args.metrics.start().await?;
    // The one line the issue asks for, on standard error: what the other
    // side pins (--pin) or admits (--allow).
    say!("fingerprint: {}", identity.fingerprint());
    let relay = builder.start().await?;
    if let Some(addr) = relay.local_addr() {
        say!("listening: {addr}");
    }
    let mut stop = Box::pin(crate::pubsub::stop_signal());
    let end = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(end);
    let mut tick = tokio::time::interval(stats_every.unwrap_or(Duration::from_secs(3600)));
    tick.tick().await;
    loop {
        tokio::select! {
            r = &mut stop => { r?; break; }
            () = &mut end => break,
            _ = tick.tick(), if stats_every.is_some() => print_stats(&relay.stats())?,
        }
    }
    let last = relay.stats();
    relay.close().await;
    if stats_every.is_some() {
        print_stats(&last)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_stats(s: &Stats) -> Result<()> {
    let c = &s.core;
    let dropped: serde_json::Map<String, serde_json::Value> = grapevine::relay::Dropped::ALL
        .iter()
        .map(|&d| (d.code().to_string(), c.dropped(d).into()))
        .collect();
    let v = serde_json::json!({
        "datagrams_in": c.datagrams_in,
        "datagrams_out_group": c.datagrams_out_group,
        "datagrams_out_link": c.datagrams_out_link,
        "shed_datagrams": c.shed_datagrams,
        "peer_shed_datagrams": c.peer_shed_datagrams,
        "naks_received": c.naks_received,
        "nak_answers": c.nak_answers,
        "naks_forwarded": c.naks_forwarded,
        "naks_coalesced": c.naks_coalesced,
        "naks_forward_limited": c.naks_forward_limited,
        "naks_origin_limited": c.naks_origin_limited,
        "naks_no_upstream": c.naks_no_upstream,
        "repeats_refused_unsettled": c.repeats_refused_unsettled,
        "control_shed": c.control_shed,
        "repeats": c.repeats,
        "repeats_refused_budget": c.repeats_refused_budget,
        "dropped": dropped,
        "links_up": s.links_up,
        "subscribers": s.subscribers,
        "link_connects": s.link_connects,
        "link_failures": s.link_failures,
        "dial_failures": s.dial_failures,
        "refused": s.refused,
        "sessions": c.sessions,
        "held_datagrams": c.held_datagrams,
        "queued_bytes": c.queued_bytes,
    });
    outln!("{v}")?;
    Ok(())
}
