//! `grapevine doctor`: checks this host for a group and an interface, and
//! says in words what is wrong and how to fix it.
//!
//! The verdicts live in [`checks`], as functions of the host's facts; this
//! module reads the real host (Linux), joins the group, sends the probe and
//! prints the result.

mod checks;
mod firewall;
mod procfs;

use std::io;
use std::net::IpAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use grapevine::socket::{
    bind_receiver, bind_sender, MulticastConfig, MulticastSocket, DEFAULT_GROUP, DEFAULT_PORT,
    DEFAULT_RECV_BUFFER, DEFAULT_SEND_BUFFER,
};
use serde::Serialize;

use checks::{Check, Host, Link, Outcome, Probe, Request, Ruleset};

/// How long the probe waits to hear its datagram.
const PROBE_WAIT: Duration = Duration::from_secs(1);

/// Flags of `grapevine doctor`.
#[derive(Debug, Args)]
pub(crate) struct DoctorArgs {
    /// Multicast group to check: IPv4 in 224.0.0.0/4 or IPv6 in ff00::/8.
    #[arg(long, default_value_t = IpAddr::V4(DEFAULT_GROUP), value_parser = parse_group)]
    group: IpAddr,
    /// UDP port of the group (1-65535).
    #[arg(long, default_value_t = DEFAULT_PORT, value_parser = clap::value_parser!(u16).range(1..))]
    port: u16,
    /// Interface to check, as `pub` and `sub` take it: `loopback` (the
    /// default), a name such as `eth0`, an index, or an IPv4 address.
    #[arg(long, default_value = "loopback", value_parser = crate::interface_flag)]
    interface: String,
    /// Receive buffer the subscriber asks for, checked against
    /// `net.core.rmem_max` (the library's default: 4 MiB).
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_RECV_BUFFER, value_parser = parse_bytes)]
    recv_buffer: usize,
    /// Send buffer the publisher asks for, checked against
    /// `net.core.wmem_max` (the library's default: 1 MiB).
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_SEND_BUFFER, value_parser = parse_bytes)]
    send_buffer: usize,
    /// Print one JSON object (the checks and a summary) instead of text.
    #[arg(long)]
    json: bool,
}

fn parse_group(s: &str) -> Result<IpAddr, String> {
    let ip: IpAddr = s.parse().map_err(|_| {
        format!("{s:?} is not an IP address: give a group such as 239.255.77.77 or ff15::7777")
    })?;
    if ip.is_multicast() {
        Ok(ip)
    } else {
        Err(format!(
            "{ip} is not a multicast group: use 224.0.0.0/4 or ff00::/8, e.g. 239.255.77.77"
        ))
    }
}

fn parse_bytes(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("0 bytes: give a buffer size in bytes, e.g. 4194304".to_owned()),
        Ok(n) if n > i32::MAX as usize => Err(format!(
            "{n} bytes is more than a socket can ask for ({})",
            i32::MAX
        )),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?} is not a number of bytes, e.g. 4194304")),
    }
}

/// The whole report, as `--json` prints it.
#[derive(Debug, Serialize)]
struct Report {
    group: IpAddr,
    port: u16,
    /// The interface as given.
    interface: String,
    /// The interface it resolved to, if any.
    resolved: Option<String>,
    ok: bool,
    passed: usize,
    warnings: usize,
    failed: usize,
    skipped: usize,
    checks: Vec<Check>,
}

pub(crate) fn run(args: DoctorArgs) -> Result<ExitCode> {
    let interface = crate::parse_interface(&args.interface);
    let req = Request {
        group: args.group,
        port: args.port,
        interface: interface.clone(),
        recv_buffer: args.recv_buffer,
        send_buffer: args.send_buffer,
    };
    if let Err(e) = config(&req).validate() {
        use clap::CommandFactory as _;
        crate::Cli::command()
            .error(clap::error::ErrorKind::ArgumentConflict, e.to_string())
            .exit();
    }
    if !cfg!(target_os = "linux") {
        anyhow::bail!(
            "grapevine doctor checks Linux hosts only (it reads /proc and /sys); this is {}",
            std::env::consts::OS
        );
    }
    let host = RealHost;
    let checks = diagnose(&req, &host);
    let count = |o: Outcome| checks.iter().filter(|c| c.outcome == o).count();
    let report = Report {
        group: req.group,
        port: req.port,
        interface: args.interface.clone(),
        resolved: host
            .links()
            .ok()
            .and_then(|l| checks::resolve(&l, &interface).map(|l| l.name.clone())),
        ok: count(Outcome::Fail) == 0,
        passed: count(Outcome::Ok),
        warnings: count(Outcome::Warn),
        failed: count(Outcome::Fail),
        skipped: count(Outcome::Skipped),
        checks,
    };
    if args.json {
        outln!("{}", serde_json::to_string(&report)?)?;
    } else {
        for c in &report.checks {
            outln!("{:<6}{:<11}{}", c.outcome.tag(), c.name, c.detail)?;
            if let Some(fix) = &c.fix {
                outln!("{:<17}fix: {fix}", "")?;
            }
        }
        let on = report.resolved.as_deref().unwrap_or(&report.interface);
        let verdict = if report.ok {
            "usable on this host"
        } else {
            "NOT usable: fix the FAIL lines above"
        };
        outln!(
            "doctor: {}:{} on {on}: {verdict} ({} ok, {} warning(s), {} failed, {} skipped)",
            fmt_group(report.group),
            report.port,
            report.passed,
            report.warnings,
            report.failed,
            report.skipped
        )?;
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn fmt_group(group: IpAddr) -> String {
    match group {
        IpAddr::V4(g) => g.to_string(),
        IpAddr::V6(g) => format!("[{g}]"),
    }
}

/// The socket configuration of the request. TTL 0 and loop on, always:
/// the probe must never leave this host.
fn config(req: &Request) -> MulticastConfig {
    let mut c = MulticastConfig::default();
    c.group(req.group)
        .port(req.port)
        .interface(req.interface.clone())
        .recv_buffer(req.recv_buffer)
        .send_buffer(req.send_buffer)
        .ttl(0)
        .loopback(true);
    c
}

/// Runs every check in order.
fn diagnose(req: &Request, host: &dyn Host) -> Vec<Check> {
    let links = host.links();
    let (first, link) = checks::interface(req, &links);
    let link = link.as_ref();
    let mut out = vec![
        checks::group(req),
        first,
        checks::route(req, link, host),
        checks::rp_filter(req, link, host),
        checks::buffer(host, false, req.recv_buffer),
        checks::buffer(host, true, req.send_buffer),
        checks::firewall(req, link, host),
    ];
    let config = config(req);
    let receiver = if link.is_some() {
        bind_receiver(&config)
    } else {
        Err(grapevine::socket::SocketError::UnknownInterface {
            interface: req.interface.clone(),
        })
    };
    let joined = receiver
        .as_ref()
        .map(|r| (r.interface_name().to_owned(), r.interface_index()))
        .map_err(clone_error);
    let join = if link.is_some() {
        checks::membership(req, link, &joined, host)
    } else {
        Check {
            name: "join",
            outcome: Outcome::Skipped,
            detail: "no interface".to_owned(),
            fix: None,
        }
    };
    out.push(join);
    let seen = match &receiver {
        Ok(receiver) => send_probe(&config, receiver),
        Err(_) => Probe::NotJoined,
    };
    let probe = checks::probe(req, link, seen, &out);
    out.push(probe);
    out
}

/// `SocketError` is not `Clone`: the verdict needs it by reference while
/// the receiver keeps the original.
fn clone_error(e: &grapevine::socket::SocketError) -> grapevine::socket::SocketError {
    use grapevine::socket::SocketError as E;
    let copy = |s: &io::Error| io::Error::new(s.kind(), s.to_string());
    match e {
        E::UnknownInterface { interface } => E::UnknownInterface {
            interface: interface.clone(),
        },
        E::Ipv6MulticastUnsupported { name } => E::Ipv6MulticastUnsupported { name: name.clone() },
        E::MissingAddress {
            name,
            family,
            group,
        } => E::MissingAddress {
            name: name.clone(),
            family,
            group: *group,
        },
        E::Bind { addr, source } => E::Bind {
            addr: *addr,
            source: copy(source),
        },
        E::Join {
            group,
            name,
            source,
        } => E::Join {
            group: *group,
            name: name.clone(),
            source: source
                .raw_os_error()
                .map_or_else(|| copy(source), io::Error::from_raw_os_error),
        },
        E::Setup { step, source } => E::Setup {
            step,
            source: copy(source),
        },
        other => E::Setup {
            step: "checking the configuration",
            source: io::Error::other(other.to_string()),
        },
    }
}

/// A token nobody else sends: the time, the process and std's random keys.
fn token() -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    std::time::SystemTime::now().hash(&mut h);
    std::process::id().hash(&mut h);
    h.finish()
}

/// Sends one datagram to the group with TTL 0 and waits up to
/// [`PROBE_WAIT`] to hear it on `receiver`. The datagram starts with
/// `grapevine-doctor`, not Grapevine's magic `GRPV`: a subscriber on the
/// port drops it and counts it as `bad_magic`.
fn send_probe(config: &MulticastConfig, receiver: &MulticastSocket) -> Probe {
    let sender = match bind_sender(config) {
        Ok(s) => s,
        Err(e) => return Probe::SendFailed(format!("cannot set up the sender: {e}"), None),
    };
    let payload = format!("grapevine-doctor probe {:016x}", token());
    let from = sender
        .local_addr()
        .map_or_else(|_| "?".to_owned(), |a| a.to_string());
    let to = sender.group_addr();
    let to_text = format!("{}:{}", fmt_group(to.ip()), to.port());
    let started = Instant::now();
    if let Err(e) = sender.socket().send_to(payload.as_bytes(), to) {
        return Probe::SendFailed(format!("sending to {to_text} failed"), Some(e));
    }
    let mut buf = [0u8; 2048];
    let mut others = 0;
    let deadline = started + PROBE_WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || receiver.socket().set_read_timeout(Some(left)).is_err() {
            break;
        }
        match receiver.socket().recv_from(&mut buf) {
            Ok((n, _)) if &buf[..n] == payload.as_bytes() => {
                return Probe::Heard {
                    after: started.elapsed(),
                    bytes: payload.len(),
                    from,
                    to: to_text,
                    others,
                }
            }
            Ok(_) => others += 1,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    Probe::NotHeard {
        waited: PROBE_WAIT,
        bytes: payload.len(),
        from,
        to: to_text,
        others,
    }
}

/// This host, read through `getifaddrs`, `/proc`, `/sys` and the firewall
/// tools.
struct RealHost;

impl Host for RealHost {
    fn links(&self) -> io::Result<Vec<Link>> {
        use nix::net::if_::InterfaceFlags as F;
        let mut links: Vec<Link> = Vec::new();
        for a in nix::ifaddrs::getifaddrs().map_err(io::Error::from)? {
            let i = match links.iter().position(|l| l.name == a.interface_name) {
                Some(i) => i,
                None => {
                    let index =
                        nix::net::if_::if_nametoindex(a.interface_name.as_str()).unwrap_or(0);
                    links.push(Link {
                        name: a.interface_name.clone(),
                        index,
                        ..Link::default()
                    });
                    links.len() - 1
                }
            };
            let l = &mut links[i];
            l.up |= a.flags.contains(F::IFF_UP);
            l.running |= a.flags.contains(F::IFF_RUNNING);
            l.multicast |= a.flags.contains(F::IFF_MULTICAST);
            l.loopback |= a.flags.contains(F::IFF_LOOPBACK);
            if let Some(addr) = a.address.as_ref() {
                if let Some(v4) = addr.as_sockaddr_in() {
                    l.ipv4.push(v4.ip());
                } else if let Some(v6) = addr.as_sockaddr_in6() {
                    l.ipv6.push(v6.ip());
                }
            }
        }
        Ok(links)
    }

    fn read(&self, path: &str) -> io::Result<String> {
        std::fs::read_to_string(path)
    }

    fn firewall(&self, ipv6: bool) -> Vec<Ruleset> {
        let save = if ipv6 {
            "ip6tables-save"
        } else {
            "iptables-save"
        };
        [("nft", &["list", "ruleset"][..]), (save, &[][..])]
            .into_iter()
            .filter_map(|(tool, args)| {
                let out = std::process::Command::new(tool)
                    .args(args)
                    .stdin(std::process::Stdio::null())
                    .output();
                let text = match out {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
                    Err(e) => Err(e.to_string()),
                    Ok(o) if o.status.success() => {
                        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
                    }
                    Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_owned()),
                };
                Some(Ruleset { tool, text })
            })
            .collect()
    }
}
