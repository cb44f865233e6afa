//! The doctor's verdicts: each check is a function of the host's facts
//! (read through [`Host`]) or of what a live socket did, so every verdict can
//! be tested with made-up facts.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use grapevine::socket::{Interface, SocketError};
use serde::Serialize;

use super::firewall::{self, Reading, Target};
use super::procfs::{self, Endian};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Outcome {
    Ok,
    /// Works here, but something may bite: does not fail the run.
    Warn,
    /// Something is wrong: the run exits 1.
    Fail,
    /// Could not be checked (the reason is in the detail).
    Skipped,
}

impl Outcome {
    /// The tag of a text line, padded.
    pub(crate) fn tag(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Fail => "FAIL",
            Self::Skipped => "skip",
        }
    }
}

/// One check's result: what was found, and how to fix it if it is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Check {
    pub(crate) name: &'static str,
    pub(crate) outcome: Outcome,
    pub(crate) detail: String,
    pub(crate) fix: Option<String>,
}

impl Check {
    fn new(name: &'static str, outcome: Outcome, detail: impl Into<String>) -> Self {
        Self {
            name,
            outcome,
            detail: detail.into(),
            fix: None,
        }
    }

    fn fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }
}

/// What is being checked.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub(crate) group: IpAddr,
    pub(crate) port: u16,
    pub(crate) interface: Interface,
    pub(crate) recv_buffer: usize,
    pub(crate) send_buffer: usize,
}

/// A network interface as `getifaddrs` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Link {
    pub(crate) name: String,
    pub(crate) index: u32,
    pub(crate) up: bool,
    /// `IFF_RUNNING`: the link has a carrier.
    pub(crate) running: bool,
    pub(crate) multicast: bool,
    pub(crate) loopback: bool,
    pub(crate) ipv4: Vec<Ipv4Addr>,
    pub(crate) ipv6: Vec<Ipv6Addr>,
}

/// A firewall ruleset as a tool printed it.
#[derive(Debug, Clone)]
pub(crate) struct Ruleset {
    /// `nft`, `iptables-save` or `ip6tables-save`.
    pub(crate) tool: &'static str,
    /// The output, or why it could not be read.
    pub(crate) text: Result<String, String>,
}

/// The host's facts, as the checks need them.
pub(crate) trait Host {
    /// The network interfaces.
    fn links(&self) -> io::Result<Vec<Link>>;
    /// A file of `/proc` or `/sys`.
    fn read(&self, path: &str) -> io::Result<String>;
    /// The rulesets of the firewall tools installed (none: no tool).
    fn firewall(&self, ipv6: bool) -> Vec<Ruleset>;
}

/// The interface `want` names, resolved like the library resolves it.
pub(crate) fn resolve<'a>(links: &'a [Link], want: &Interface) -> Option<&'a Link> {
    match want {
        Interface::Loopback => links.iter().find(|l| l.loopback),
        Interface::Name(name) => links.iter().find(|l| &l.name == name),
        Interface::Ipv4(addr) => links.iter().find(|l| l.ipv4.contains(addr)),
        Interface::Index(index) => links.iter().find(|l| l.index == *index),
        _ => None,
    }
}

fn describe_wanted(want: &Interface) -> String {
    match want {
        Interface::Loopback => "no interface has the LOOPBACK flag".to_owned(),
        Interface::Name(name) => format!("no interface is named {name:?}"),
        Interface::Ipv4(addr) => format!("no interface has the address {addr}"),
        Interface::Index(index) => format!("no interface has the index {index}"),
        other => format!("no interface matches {other}"),
    }
}

/// 0. The group itself: a group in a block reserved for routing or
///    well-known protocols works on this host, but shares its traffic
///    with them (and routers may treat it specially): a warning.
pub(crate) fn group(req: &Request) -> Check {
    match req.group {
        IpAddr::V4(g) => group4(g),
        IpAddr::V6(g) => group6(g),
    }
}

const GROUP: &str = "group";

fn group4(g: Ipv4Addr) -> Check {
    let o = g.octets();
    let reserved = |block: &str| {
        Check::new(
            GROUP,
            Outcome::Warn,
            format!("{g} is in {block}"),
        )
        .fix("use an administratively scoped group in 239.0.0.0/8, such as 239.255.77.77 (the default)")
    };
    match o {
        [224, 0, 0, _] => reserved(
            "224.0.0.0/24, the Local Network Control Block reserved for routing and discovery \
             protocols (224.0.0.1 all hosts, 224.0.0.2 all routers, 224.0.0.251 mDNS): routers \
             never forward it, and every IPv4 host is a member of 224.0.0.1",
        ),
        [224, 0, 1, _] => reserved(
            "224.0.1.0/24, the Internetwork Control Block assigned to protocols such as NTP \
             (224.0.1.1) and PTP (224.0.1.129), whose traffic would mix with grapevine's",
        ),
        [232, ..] => reserved(
            "232.0.0.0/8, reserved for source-specific multicast: routers forward it only to \
             receivers that join a (source, group) pair, which grapevine does not",
        ),
        [239, ..] => Check::new(
            GROUP,
            Outcome::Ok,
            format!("{g} is administratively scoped (239.0.0.0/8), for use inside an organisation"),
        ),
        _ => Check::new(
            GROUP,
            Outcome::Ok,
            format!(
                "{g} is globally scoped (assigned by IANA, or GLOP in 233.0.0.0/8): not reserved \
                 for a protocol, though 239.0.0.0/8 is the block meant for private use"
            ),
        ),
    }
}

fn group6(g: Ipv6Addr) -> Check {
    let s = g.segments();
    let flags = (s[0] >> 4) & 0xf;
    let scope = s[0] & 0xf;
    let scope_name = match scope {
        1 => "interface-local",
        2 => "link-local",
        3 => "realm-local",
        4 => "admin-local",
        5 => "site-local",
        8 => "organization-local",
        0xe => "global",
        0 | 0xf => "reserved",
        _ => "unassigned",
    };
    let warn = |why: String| {
        Check::new(GROUP, Outcome::Warn, why).fix(
            "use a transient group (flags 1): ff15::7777 (site-local), ff12::7777 (link-local) \
             or ff18::7777 (organization-local)",
        )
    };
    if matches!(scope, 0 | 0xf) {
        return warn(format!(
            "{g} has scope {scope:x}, which is reserved: hosts and routers may refuse it"
        ));
    }
    if scope == 1 {
        return warn(format!(
            "{g} is interface-local (scope 1): it never leaves this host, even on a real \
             interface"
        ));
    }
    if flags & 1 == 0 {
        let id = &s[1..];
        let what = if id == [0, 0, 0, 0, 0, 0, 1] {
            format!("the {scope_name} all-nodes group")
        } else if id == [0, 0, 0, 0, 0, 0, 2] {
            format!("the {scope_name} all-routers group")
        } else if id == [0; 7] {
            "a reserved address (group id 0)".to_owned()
        } else if scope == 2 && s[5] == 1 && s[6] >> 8 == 0xff {
            "a solicited-node group of neighbour discovery (ff02::1:ff00:0/104)".to_owned()
        } else {
            format!("a {scope_name} well-known group")
        };
        return warn(format!(
            "{g} is {what}: flags 0 mark permanent groups that IANA assigns to protocols \
             (ff0X::1 all nodes, ff0X::2 all routers, ff02::fb mDNS)"
        ));
    }
    Check::new(
        GROUP,
        Outcome::Ok,
        format!("{g} is a transient {scope_name} group (flags {flags:x}, scope {scope:x})"),
    )
}

/// 1. The interface exists, is up, has a carrier, the `MULTICAST` flag and
///    an address of the group's family. Returns the link for the other
///    checks when it exists.
pub(crate) fn interface(req: &Request, links: &io::Result<Vec<Link>>) -> (Check, Option<Link>) {
    const NAME: &str = "interface";
    let links = match links {
        Ok(links) => links,
        Err(e) => {
            return (
                Check::new(
                    NAME,
                    Outcome::Fail,
                    format!("cannot list the interfaces (getifaddrs): {e}"),
                ),
                None,
            )
        }
    };
    let Some(link) = resolve(links, &req.interface) else {
        let names: Vec<&str> = links.iter().map(|l| l.name.as_str()).collect();
        let check = Check::new(
            NAME,
            Outcome::Fail,
            format!(
                "{}: this host has {}",
                describe_wanted(&req.interface),
                names.join(", ")
            ),
        )
        .fix(
            "give --interface a name, an index or an IPv4 address from `ip -br addr`, \
             or `loopback` (the default: this host only)",
        );
        return (check, None);
    };
    let ipv6 = req.group.is_ipv6();
    let who = format!("{} (index {})", link.name, link.index);
    let mut problems = Vec::new();
    let mut fixes = Vec::new();
    if !link.up {
        problems.push("is down".to_owned());
        fixes.push(format!("ip link set {} up", link.name));
    } else if !link.running && !link.loopback {
        problems
            .push("is up but has no carrier (LOWER_UP missing: cable, peer or driver)".to_owned());
        fixes.push(format!(
            "connect {0}, or bring its peer up (`ip link show {0}`)",
            link.name
        ));
    }
    let mut notes = Vec::new();
    if ipv6 && link.loopback {
        problems.push(
            if link.multicast {
                "is a loopback interface, and Linux never carries IPv6 multicast over loopback \
                 (even with the MULTICAST flag and an ff00::/8 route the datagram is dropped)"
            } else {
                "has no MULTICAST flag, and Linux never carries IPv6 multicast over loopback \
                 (even with the flag and an ff00::/8 route the datagram is dropped)"
            }
            .to_owned(),
        );
        fixes.push(
            "use an IPv4 group on loopback (e.g. --group 239.255.77.77), or IPv6 on a \
             multicast-capable interface such as a veth pair in a network namespace"
                .to_owned(),
        );
    } else if !link.multicast {
        if ipv6 {
            problems
                .push("has no MULTICAST flag: the kernel refuses IPv6 multicast on it".to_owned());
            fixes.push(format!("ip link set {} multicast on", link.name));
        } else if link.loopback {
            notes.push("no MULTICAST flag, which IPv4 multicast on loopback does not need");
        } else {
            problems
                .push("has no MULTICAST flag: multicast to and from the link needs it".to_owned());
            fixes.push(format!("ip link set {} multicast on", link.name));
        }
    }
    if ipv6 {
        if link.ipv6.is_empty() {
            problems.push(format!(
                "has no IPv6 address, which the sender of {} needs",
                req.group
            ));
            fixes.push(format!("ip -6 addr add ADDRESS/PREFIX dev {}", link.name));
        }
    } else if link.ipv4.is_empty() {
        problems.push(format!(
            "has no IPv4 address, which joining and sending {} need",
            req.group
        ));
        if link.loopback {
            if link.up {
                fixes.push("ip addr add 127.0.0.1/8 dev lo".to_owned());
            }
        } else {
            fixes.push(format!("ip addr add ADDRESS/PREFIX dev {}", link.name));
        }
    }
    let mut facts = vec![if link.up { "up" } else { "down" }.to_owned()];
    if link.loopback {
        facts.push("loopback".into());
    }
    if link.multicast {
        facts.push("multicast".into());
    }
    facts.extend(link.ipv4.iter().map(ToString::to_string));
    if ipv6 {
        facts.extend(link.ipv6.iter().map(ToString::to_string));
    }
    let check = if problems.is_empty() {
        let mut detail = format!("{who}: {}", facts.join(", "));
        for note in notes {
            detail.push_str("; ");
            detail.push_str(note);
        }
        Check::new(NAME, Outcome::Ok, detail)
    } else {
        let mut fix = fixes.join("; then ");
        if link.loopback && !link.up {
            fix.push_str(" (as root; lo gets 127.0.0.1 when it comes up)");
        } else if fix.starts_with("ip ") {
            fix.push_str(" (as root)");
        }
        let check = Check::new(
            NAME,
            Outcome::Fail,
            format!("{who} {}", problems.join(", and ")),
        );
        if fix.is_empty() {
            check
        } else {
            check.fix(fix)
        }
    };
    (check, Some(link.clone()))
}

/// 2. The route the kernel has for the group.
pub(crate) fn route(req: &Request, link: Option<&Link>, host: &dyn Host) -> Check {
    const NAME: &str = "route";
    let Some(link) = link else {
        return Check::new(
            NAME,
            Outcome::Skipped,
            "no interface to compare the route with",
        );
    };
    match req.group {
        IpAddr::V4(group) => {
            let text = match host.read("/proc/net/route") {
                Ok(text) => text,
                Err(e) => {
                    return Check::new(
                        NAME,
                        Outcome::Skipped,
                        format!("cannot read /proc/net/route: {e}"),
                    )
                }
            };
            route4(group, link, &procfs::parse_route4(&text, Endian::NATIVE))
        }
        IpAddr::V6(group) => {
            let text = match host.read("/proc/net/ipv6_route") {
                Ok(text) => text,
                Err(e) => {
                    return Check::new(
                        NAME,
                        Outcome::Skipped,
                        format!("cannot read /proc/net/ipv6_route: {e}"),
                    )
                }
            };
            route6(group, link, &procfs::parse_route6(&text))
        }
    }
}

fn route4(group: Ipv4Addr, link: &Link, routes: &[procfs::Route4]) -> Check {
    const NAME: &str = "route";
    let pinned = format!(
        "grapevine still sends and joins on {0}, because it sets IP_MULTICAST_IF and joins on {0} \
         explicitly",
        link.name
    );
    match procfs::route4_for(routes, group) {
        Some(r) if r.iface == link.name => Check::new(
            NAME,
            Outcome::Ok,
            format!("{group} routes via {} ({})", link.name, r.describe()),
        ),
        Some(r) => Check::new(
            NAME,
            Outcome::Warn,
            format!(
                "the kernel routes {group} via {} ({}), not {}: {pinned}; a program that does not \
                 set the interface (ping, socat, iperf) sends {group} out of {}",
                r.iface,
                r.describe(),
                link.name,
                r.iface
            ),
        )
        .fix(format!(
            "ip route add {group}/32 dev {} (as root), so that every program agrees",
            link.name
        )),
        None => Check::new(
            NAME,
            Outcome::Warn,
            format!(
                "no route in the main table covers {group}: {pinned}; a program that does not set \
                 the interface gets `Network is unreachable`"
            ),
        )
        .fix(format!(
            "ip route add 224.0.0.0/4 dev {} (as root)",
            link.name
        )),
    }
}

fn route6(group: Ipv6Addr, link: &Link, routes: &[procfs::Route6]) -> Check {
    const NAME: &str = "route";
    if link.loopback {
        return Check::new(
            NAME,
            Outcome::Fail,
            format!(
                "no route helps {group} on {}: Linux drops IPv6 multicast on loopback even through \
                 an ff00::/8 route",
                link.name
            ),
        )
        .fix("see interface above");
    }
    match procfs::routes6_through(routes, group, &link.name).first() {
        Some(r) => Check::new(
            NAME,
            Outcome::Ok,
            format!(
                "{group} routes via {} ({}/{})",
                link.name, r.dest, r.prefix_len
            ),
        ),
        None => Check::new(
            NAME,
            Outcome::Fail,
            format!(
                "no route covers {group} through {}: even with IPV6_MULTICAST_IF set the kernel \
                 looks the route up on that interface, and sending fails with `Network is \
                 unreachable`",
                link.name
            ),
        )
        .fix(format!(
            "ip -6 route add ff00::/8 dev {} table local (as root)",
            link.name
        )),
    }
}

/// 3. Reverse-path filtering of the datagrams' source on the interface.
pub(crate) fn rp_filter(req: &Request, link: Option<&Link>, host: &dyn Host) -> Check {
    const NAME: &str = "rp_filter";
    if req.group.is_ipv6() {
        return Check::new(
            NAME,
            Outcome::Skipped,
            "IPv4 only: IPv6 has no rp_filter setting (an nftables `fib` rule would show under firewall)",
        );
    }
    let Some(link) = link else {
        return Check::new(NAME, Outcome::Skipped, "no interface");
    };
    if link.loopback {
        return Check::new(
            NAME,
            Outcome::Ok,
            format!(
                "does not apply on {}: datagrams looped on this host keep their route and are \
                 never reverse-path checked",
                link.name
            ),
        );
    }
    let read = |path: String| -> Result<u8, String> {
        host.read(&path)
            .map_err(|e| format!("cannot read {path}: {e}"))
            .and_then(|s| s.trim().parse().map_err(|_| format!("{path} holds {s:?}")))
    };
    let (all, own) = match (
        read("/proc/sys/net/ipv4/conf/all/rp_filter".into()),
        read(format!("/proc/sys/net/ipv4/conf/{}/rp_filter", link.name)),
    ) {
        (Ok(a), Ok(o)) => (a, o),
        (Err(e), _) | (_, Err(e)) => return Check::new(NAME, Outcome::Skipped, e),
    };
    // The kernel uses the larger of the two.
    let effective = all.max(own);
    let values = format!("all={all}, {}={own}", link.name);
    match effective {
        0 => Check::new(NAME, Outcome::Ok, format!("off ({values})")),
        2 => Check::new(
            NAME,
            Outcome::Ok,
            format!("loose ({values}): a source reachable by any route passes"),
        ),
        _ => {
            let routes = host
                .read("/proc/net/route")
                .map(|t| procfs::parse_route4(&t, Endian::NATIVE))
                .unwrap_or_default();
            let default = procfs::route4_for(&routes, Ipv4Addr::new(198, 18, 0, 1))
                .filter(|r| r.prefix_len() == 0);
            if default.is_some_and(|r| r.iface == link.name) {
                return Check::new(
                    NAME,
                    Outcome::Ok,
                    format!(
                        "strict ({values}), but the default route goes via {}: any source passes",
                        link.name
                    ),
                );
            }
            let subnets: Vec<String> = routes
                .iter()
                .filter(|r| r.iface == link.name && r.gateway.is_unspecified())
                .map(|r| format!("{}/{}", r.dest, r.prefix_len()))
                .collect();
            let from = if subnets.is_empty() {
                format!("any source (no route goes via {})", link.name)
            } else {
                format!("sources outside {}", subnets.join(", "))
            };
            let default = default.map_or("there is no default route".to_owned(), |r| {
                format!("the default route goes via {}", r.iface)
            });
            Check::new(
                NAME,
                Outcome::Warn,
                format!(
                    "strict ({values}) and {default}: the kernel silently drops datagrams on {} from \
                     {from}, before any socket sees them (the classic multicast drop)",
                    link.name
                ),
            )
            .fix(format!(
                "sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.{}.rp_filter=2 (loose; as \
                 root, and in /etc/sysctl.d/ to keep it)",
                link.name
            ))
        }
    }
}

/// 4. `net.core.rmem_max` / `wmem_max` against the buffer asked for.
pub(crate) fn buffer(host: &dyn Host, send: bool, wanted: usize) -> Check {
    let (name, sysctl, socket, flag) = if send {
        (
            "wmem_max",
            "net.core.wmem_max",
            "SO_SNDBUF",
            "--send-buffer",
        )
    } else {
        (
            "rmem_max",
            "net.core.rmem_max",
            "SO_RCVBUF",
            "--recv-buffer",
        )
    };
    let path = format!("/proc/sys/{}", sysctl.replace('.', "/"));
    let max = match host.read(&path).map(|s| s.trim().parse::<u64>()) {
        Ok(Ok(max)) => max,
        Ok(Err(_)) => return Check::new(name, Outcome::Skipped, format!("{path} is not a number")),
        Err(e) => return Check::new(name, Outcome::Skipped, format!("cannot read {path}: {e}")),
    };
    let wanted64 = wanted as u64;
    if max >= wanted64 {
        Check::new(
            name,
            Outcome::Ok,
            format!("{sysctl} = {max} bytes, enough for the {wanted} asked for ({flag})"),
        )
    } else {
        let effect = if send {
            "a burst waits in the library's queue sooner"
        } else {
            "a burst that arrives while the subscriber is descheduled overflows it and is lost, \
             then repaired"
        };
        Check::new(
            name,
            Outcome::Warn,
            format!(
                "{sysctl} = {max} bytes, below the {wanted} asked for ({flag}): the kernel silently \
                 caps {socket} at {max}, so {effect}"
            ),
        )
        .fix(format!(
            "sysctl -w {sysctl}={wanted} (as root; in /etc/sysctl.d/ to keep it), or ask for less \
             with {flag}"
        ))
    }
}

/// 5. Firewall rules that drop UDP to the port.
pub(crate) fn firewall(req: &Request, link: Option<&Link>, host: &dyn Host) -> Check {
    const NAME: &str = "firewall";
    let Some(link) = link else {
        return Check::new(NAME, Outcome::Skipped, "no interface");
    };
    let ipv6 = req.group.is_ipv6();
    let rulesets = host.firewall(ipv6);
    if rulesets.is_empty() {
        return Check::new(
            NAME,
            Outcome::Skipped,
            "neither nft nor iptables-save is installed; the probe below is the proof on this host",
        );
    }
    let target = Target {
        iface: &link.name,
        ipv6,
        port: req.port,
    };
    let mut read = Vec::new();
    let mut unreadable = Vec::new();
    let mut findings = Vec::new();
    let mut unfollowed = Vec::new();
    for set in &rulesets {
        match &set.text {
            Err(why) => unreadable.push(format!("{}: {why}", set.tool)),
            Ok(text) => {
                let Reading {
                    chains,
                    jumped_to,
                    unfollowed: u,
                    findings: f,
                } = if set.tool == "nft" {
                    firewall::read_nft(text, &target)
                } else {
                    firewall::read_iptables(text, &target, set.tool)
                };
                let mut chains = match chains {
                    0 => "no chain hooked on the path".to_owned(),
                    1 => "1 chain on the path".to_owned(),
                    n => format!("{n} chains on the path"),
                };
                if jumped_to > 0 {
                    chains.push_str(&format!(" and {jumped_to} reached by jump"));
                }
                read.push(format!("{} ({chains})", set.tool));
                findings.extend(f);
                unfollowed.extend(u);
            }
        }
    }
    if read.is_empty() {
        return Check::new(
            NAME,
            Outcome::Skipped,
            format!(
                "cannot read the rules ({}); run as root to check them, the probe below is the \
                 proof on this host",
                unreadable.join("; ")
            ),
        );
    }
    let what = format!("udp port {} on {}", req.port, link.name);
    let not_read = if unfollowed.is_empty() {
        String::new()
    } else {
        format!(
            "; rules in chains reached by jump were not read ({}): the probe below is the proof",
            unfollowed.join(", ")
        )
    };
    let Some(first) = findings.iter().find(|f| f.sure).or(findings.first()) else {
        return Check::new(
            NAME,
            Outcome::Ok,
            format!("no rule drops {what}: read {}{not_read}", read.join(", ")),
        );
    };
    let accept = match (&first.nft, &first.iptables_chain) {
        (Some((family, table, chain)), _) => format!(
            "nft insert rule {family} {table} {chain} udp dport {} accept",
            req.port
        ),
        // `-t TABLE CHAIN`: the table goes before `-I`, which takes the
        // chain as its argument.
        (_, Some(chain)) => {
            let (table, chain) = chain.rsplit_once(' ').unwrap_or(("", chain));
            format!(
                "{}{}{table} -I {chain} -p udp --dport {} -j ACCEPT",
                if ipv6 { "ip6tables" } else { "iptables" },
                if table.is_empty() { "" } else { " " },
                req.port
            )
        }
        _ => "allow it before that rule".to_owned(),
    };
    let others = findings.len() - 1;
    let more = if others > 0 {
        format!(" ({others} more rule(s) may drop it too)")
    } else {
        String::new()
    };
    if first.sure {
        Check::new(
            NAME,
            Outcome::Fail,
            format!(
                "{}: `{}` drops {what}{more}{not_read}",
                first.chain, first.rule
            ),
        )
        .fix(format!("{accept} (as root), or remove that rule"))
    } else {
        Check::new(
            NAME,
            Outcome::Warn,
            format!(
                "{}: `{}` may drop {what} (it tests what the doctor cannot know){more}{not_read}",
                first.chain, first.rule
            ),
        )
        .fix(format!("if datagrams go missing: {accept} (as root)"))
    }
}

/// 6. After joining: whether the kernel lists the membership.
pub(crate) fn membership(
    req: &Request,
    link: Option<&Link>,
    joined: &Result<(String, u32), SocketError>,
    host: &dyn Host,
) -> Check {
    const NAME: &str = "join";
    let (name, index) = match joined {
        Ok(at) => at,
        Err(e) => return join_failed(req, link, e),
    };
    let (path, parsed) = if req.group.is_ipv6() {
        (
            "/proc/net/igmp6",
            host.read("/proc/net/igmp6")
                .map(|t| procfs::parse_igmp6(&t)),
        )
    } else {
        (
            "/proc/net/igmp",
            host.read("/proc/net/igmp")
                .map(|t| procfs::parse_igmp(&t, Endian::NATIVE)),
        )
    };
    let listed = match parsed {
        Ok(listed) => listed,
        Err(e) => {
            return Check::new(
                NAME,
                Outcome::Warn,
                format!(
                    "joined {} on {name}, but cannot read {path} to confirm it: {e}",
                    req.group
                ),
            )
        }
    };
    let proto = if req.group.is_ipv6() { "MLD" } else { "IGMP" };
    match listed
        .iter()
        .find(|m| m.group == req.group && m.index == *index)
    {
        Some(m) => {
            let version = m
                .querier
                .as_deref()
                .map(|v| format!(" {proto}v{}", v.trim_start_matches('V')))
                .unwrap_or_default();
            let wire = if name == "lo" {
                "loopback sends no reports".to_owned()
            } else {
                format!(
                    "the kernel announces it on {name} with {} reports",
                    if version.is_empty() {
                        proto
                    } else {
                        version.trim()
                    }
                )
            };
            Check::new(
                NAME,
                Outcome::Ok,
                format!(
                    "joined {} on {name}: listed in {path} ({} member socket(s){version}; {wire})",
                    req.group, m.users
                ),
            )
        }
        None => Check::new(
            NAME,
            Outcome::Fail,
            format!(
                "the kernel accepted the join of {} on {name} (index {index}), but {path} does not \
                 list it there",
                req.group
            ),
        )
        .fix(format!(
            "look at `ip maddr show dev {name}`; the membership is missing from the kernel"
        )),
    }
}

fn join_failed(req: &Request, link: Option<&Link>, e: &SocketError) -> Check {
    let mut detail = format!("cannot join {}: {e}", req.group);
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        detail.push_str(&format!(": {s}"));
        source = s.source();
    }
    let fix = match e {
        _ if link.is_some_and(|l| !l.up) => "see interface above: it is down".to_owned(),
        SocketError::UnknownInterface { .. } => "see interface above".to_owned(),
        SocketError::Ipv6MulticastUnsupported { .. } => {
            "use an IPv4 group on loopback, or IPv6 on a multicast-capable interface".to_owned()
        }
        SocketError::MissingAddress { name, .. } => format!("give {name} an address (`ip addr add ... dev {name}`)"),
        SocketError::Bind { source, .. } if source.kind() == io::ErrorKind::AddrInUse => format!(
            "`ss -uanp 'sport = :{}'` shows the socket holding the port without SO_REUSEADDR; stop it or pick another --port",
            req.port
        ),
        _ => "fix what the message names, then run the doctor again".to_owned(),
    };
    Check::new("join", Outcome::Fail, detail).fix(fix)
}

/// What the loopback probe saw.
#[derive(Debug)]
pub(crate) enum Probe {
    /// No receiver: the join failed.
    NotJoined,
    /// The sender could not be set up or the send failed.
    SendFailed(String, Option<io::Error>),
    /// The datagram came back after this long; `others` datagrams of other
    /// senders came too.
    Heard {
        after: Duration,
        bytes: usize,
        from: String,
        to: String,
        others: u32,
    },
    /// Not heard within `waited`.
    NotHeard {
        waited: Duration,
        bytes: usize,
        from: String,
        to: String,
        others: u32,
    },
}

/// 7. The loopback probe's verdict. `earlier` are the other checks: a
///    firewall or route finding is the likely reason for a silent probe.
pub(crate) fn probe(req: &Request, link: Option<&Link>, seen: Probe, earlier: &[Check]) -> Check {
    const NAME: &str = "probe";
    let iface = link.map_or("the interface", |l| l.name.as_str());
    let others = |n: u32| {
        if n == 0 {
            String::new()
        } else {
            format!("; also heard {n} datagram(s) of another sender on the port (a live stream?)")
        }
    };
    match seen {
        Probe::NotJoined => Check::new(
            NAME,
            Outcome::Skipped,
            "no receiver to hear it: see join above",
        ),
        Probe::SendFailed(what, err) => {
            let errno = err.as_ref().and_then(io::Error::raw_os_error);
            let fix = match errno.map(nix::errno::Errno::from_raw) {
                Some(nix::errno::Errno::ENETUNREACH) => {
                    if req.group.is_ipv6() {
                        format!("ip -6 route add ff00::/8 dev {iface} table local (as root)")
                    } else {
                        format!("ip route add 224.0.0.0/4 dev {iface} (as root)")
                    }
                }
                Some(nix::errno::Errno::EPERM) => {
                    "an output firewall rule refused it: see firewall above".to_owned()
                }
                _ => "fix what the message names, then run the doctor again".to_owned(),
            };
            let err = err.map(|e| format!(": {e}")).unwrap_or_default();
            Check::new(NAME, Outcome::Fail, format!("{what}{err}")).fix(fix)
        }
        Probe::Heard {
            after,
            bytes,
            from,
            to,
            others: n,
        } => Check::new(
            NAME,
            Outcome::Ok,
            format!(
                "sent {bytes} bytes from {from} to {to} on {iface} with TTL 0 and heard them back \
                 after {:.3} ms{}",
                after.as_secs_f64() * 1000.0,
                others(n)
            ),
        ),
        Probe::NotHeard {
            waited,
            bytes,
            from,
            to,
            others: n,
        } => {
            let suspects: Vec<&str> = earlier
                .iter()
                .filter(|c| match c.name {
                    "firewall" => matches!(c.outcome, Outcome::Fail | Outcome::Warn),
                    "interface" | "route" => c.outcome == Outcome::Fail,
                    _ => false,
                })
                .map(|c| c.name)
                .collect();
            let why = if suspects.is_empty() {
                "nothing above explains it: look for a firewall rule the doctor could not read \
                 (`nft list ruleset`, `iptables -S` as root)"
                    .to_owned()
            } else {
                format!("see {} above", suspects.join(" and "))
            };
            Check::new(
                NAME,
                Outcome::Fail,
                format!(
                    "sent {bytes} bytes from {from} to {to} on {iface} with TTL 0, and did not hear \
                     them within {} ms: this host drops its own multicast between the send and the \
                     socket{}; {why}",
                    waited.as_millis(),
                    others(n)
                ),
            )
            .fix(if suspects.contains(&"firewall") {
                "see the firewall fix above".to_owned()
            } else {
                format!(
                    "allow udp port {} on {iface} in the firewall (e.g. `nft insert rule inet \
                     filter input udp dport {} accept`)",
                    req.port, req.port
                )
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[derive(Default)]
    struct Fake {
        links: Vec<Link>,
        files: HashMap<String, String>,
        rulesets: Vec<Ruleset>,
    }

    impl Host for Fake {
        fn links(&self) -> io::Result<Vec<Link>> {
            Ok(self.links.clone())
        }
        fn read(&self, path: &str) -> io::Result<String> {
            self.files
                .get(path)
                .cloned()
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "No such file or directory"))
        }
        fn firewall(&self, _ipv6: bool) -> Vec<Ruleset> {
            self.rulesets.clone()
        }
    }

    fn lo() -> Link {
        Link {
            name: "lo".into(),
            index: 1,
            up: true,
            running: true,
            multicast: false,
            loopback: true,
            ipv4: vec![Ipv4Addr::LOCALHOST],
            ipv6: vec![Ipv6Addr::LOCALHOST],
        }
    }

    fn eth0() -> Link {
        Link {
            name: "eth0".into(),
            index: 4,
            up: true,
            running: true,
            multicast: true,
            loopback: false,
            ipv4: vec![Ipv4Addr::new(192, 0, 2, 2)],
            ipv6: vec!["fd00::2".parse().unwrap()],
        }
    }

    fn req(interface: Interface) -> Request {
        Request {
            group: "239.255.77.77".parse().unwrap(),
            port: 7777,
            interface,
            recv_buffer: 4 << 20,
            send_buffer: 1 << 20,
        }
    }

    fn v6(mut r: Request) -> Request {
        r.group = "ff15::7777".parse().unwrap();
        r
    }

    fn with(files: &[(&str, &str)]) -> Fake {
        Fake {
            files: files
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Fake::default()
        }
    }

    fn outcome(c: &(Check, Option<Link>)) -> Outcome {
        c.0.outcome
    }

    /// Reserved blocks warn with a fix naming a group that is not;
    /// administratively scoped and transient groups are ok.
    #[test]
    fn group_in_a_reserved_block_warns() {
        let verdict = |g: &str| {
            let mut r = req(Interface::Loopback);
            r.group = g.parse().unwrap();
            group(&r)
        };
        for (g, says) in [
            ("224.0.0.1", "Local Network Control Block"),
            ("224.0.0.0", "224.0.0.0/24"),
            ("224.0.0.251", "224.0.0.0/24"),
            ("224.0.1.129", "Internetwork Control Block"),
            ("232.1.2.3", "source-specific"),
        ] {
            let c = verdict(g);
            assert_eq!(c.name, "group");
            assert_eq!(c.outcome, Outcome::Warn, "{g}: {c:?}");
            assert!(c.detail.starts_with(g) && c.detail.contains(says), "{c:?}");
            assert!(c.fix.as_deref().unwrap().contains("239.0.0.0/8"), "{c:?}");
        }
        for (g, says) in [
            ("239.255.77.77", "administratively scoped"),
            ("239.0.0.1", "administratively scoped"),
            ("224.0.2.1", "globally scoped"),
            ("233.252.0.1", "globally scoped"),
            ("238.255.255.255", "globally scoped"),
        ] {
            let c = verdict(g);
            assert_eq!(c.outcome, Outcome::Ok, "{g}: {c:?}");
            assert!(c.detail.contains(says) && c.fix.is_none(), "{c:?}");
        }
        for (g, says) in [
            ("ff02::1", "link-local all-nodes group"),
            ("ff05::1", "site-local all-nodes group"),
            ("ff02::2", "link-local all-routers group"),
            ("ff0e::2", "global all-routers group"),
            ("ff05::", "reserved address"),
            ("ff02::1:ff00:1234", "solicited-node"),
            ("ff02::fb", "link-local well-known group"),
            ("ff05::7777", "site-local well-known group"),
            ("ff11::7777", "interface-local"),
            ("ff10::7777", "reserved"),
            ("ff1f::7777", "reserved"),
        ] {
            let c = verdict(g);
            assert_eq!(c.outcome, Outcome::Warn, "{g}: {c:?}");
            assert!(c.detail.starts_with(g) && c.detail.contains(says), "{c:?}");
            assert!(c.fix.as_deref().unwrap().contains("ff15::7777"), "{c:?}");
        }
        for (g, says) in [
            ("ff15::7777", "transient site-local"),
            ("ff12::1", "transient link-local"),
            ("ff18::1:2", "transient organization-local"),
            ("ff3e:30:2001:db8::1", "transient global"),
        ] {
            let c = verdict(g);
            assert_eq!(c.outcome, Outcome::Ok, "{g}: {c:?}");
            assert!(c.detail.contains(says), "{c:?}");
        }
    }

    #[test]
    fn interface_resolves_like_the_library() {
        let links = vec![lo(), eth0()];
        for (want, name) in [
            (Interface::Loopback, "lo"),
            (Interface::name("eth0"), "eth0"),
            (Interface::Index(4), "eth0"),
            (Interface::Ipv4(Ipv4Addr::LOCALHOST), "lo"),
        ] {
            assert_eq!(resolve(&links, &want).unwrap().name, name, "{want:?}");
        }
        assert!(resolve(&links, &Interface::Index(9)).is_none());
    }

    #[test]
    fn interface_missing_fails_naming_it_with_a_fix() {
        let c = interface(&req(Interface::name("nosuchif0")), &Ok(vec![lo(), eth0()]));
        assert_eq!(outcome(&c), Outcome::Fail);
        assert!(c.1.is_none());
        assert!(c.0.detail.contains("\"nosuchif0\""), "{}", c.0.detail);
        assert!(c.0.detail.contains("lo, eth0"), "{}", c.0.detail);
        assert!(c.0.fix.unwrap().contains("ip -br addr"));
        let c = interface(&req(Interface::Loopback), &Err(io::Error::other("boom")));
        assert_eq!(outcome(&c), Outcome::Fail);
    }

    #[test]
    fn interface_down_fails_with_ip_link_set_up() {
        let mut l = eth0();
        l.up = false;
        let c = interface(&req(Interface::name("eth0")), &Ok(vec![l]));
        assert_eq!(outcome(&c), Outcome::Fail);
        assert!(
            c.0.detail.contains("eth0 (index 4) is down"),
            "{}",
            c.0.detail
        );
        assert_eq!(c.0.fix.as_deref(), Some("ip link set eth0 up (as root)"));
        // A fresh namespace's lo: down and without an address.
        let mut l = lo();
        l.up = false;
        l.ipv4.clear();
        let c = interface(&req(Interface::Loopback), &Ok(vec![l]));
        assert_eq!(outcome(&c), Outcome::Fail);
        assert!(
            c.0.detail.contains("is down, and has no IPv4 address"),
            "{}",
            c.0.detail
        );
        assert!(c
            .0
            .fix
            .unwrap()
            .starts_with("ip link set lo up (as root; lo gets 127.0.0.1"));
        // No carrier.
        let mut l = eth0();
        l.running = false;
        let c = interface(&req(Interface::name("eth0")), &Ok(vec![l]));
        assert_eq!(outcome(&c), Outcome::Fail);
        assert!(c.0.detail.contains("no carrier"));
    }

    #[test]
    fn interface_without_multicast_flag_fails_except_ipv4_on_loopback_and_ipv6_on_loopback_always()
    {
        let mut l = eth0();
        l.multicast = false;
        let c = interface(&req(Interface::name("eth0")), &Ok(vec![l.clone()]));
        assert_eq!(outcome(&c), Outcome::Fail);
        assert!(c.0.detail.contains("MULTICAST flag"));
        assert_eq!(
            c.0.fix.as_deref(),
            Some("ip link set eth0 multicast on (as root)")
        );
        let c = interface(&v6(req(Interface::name("eth0"))), &Ok(vec![l]));
        assert_eq!(outcome(&c), Outcome::Fail);
        // lo without the flag: IPv4 works (noted), IPv6 never does.
        let c = interface(&req(Interface::Loopback), &Ok(vec![lo()]));
        assert_eq!(outcome(&c), Outcome::Ok);
        assert!(
            c.0.detail
                .starts_with("lo (index 1): up, loopback, 127.0.0.1; no MULTICAST flag"),
            "{}",
            c.0.detail
        );
        let c = interface(&v6(req(Interface::Loopback)), &Ok(vec![lo()]));
        assert_eq!(outcome(&c), Outcome::Fail);
        assert!(
            c.0.detail.contains("no MULTICAST flag") && c.0.detail.contains("never carries IPv6")
        );
        assert!(c.0.fix.unwrap().contains("use an IPv4 group"));
        let mut l = lo();
        l.multicast = true;
        let c = interface(&req(Interface::Loopback), &Ok(vec![l.clone()]));
        assert_eq!(
            c.0.detail,
            "lo (index 1): up, loopback, multicast, 127.0.0.1"
        );
        // IPv6 on lo fails even with the flag.
        let c = interface(&v6(req(Interface::Loopback)), &Ok(vec![l]));
        assert_eq!(outcome(&c), Outcome::Fail);
        assert!(
            c.0.detail.contains("is a loopback interface"),
            "{}",
            c.0.detail
        );
    }

    #[test]
    fn interface_without_an_address_of_the_family_fails() {
        let mut l = eth0();
        l.ipv4.clear();
        let c = interface(&req(Interface::name("eth0")), &Ok(vec![l.clone()]));
        assert_eq!(outcome(&c), Outcome::Fail);
        assert!(c.0.detail.contains("no IPv4 address"));
        let c = interface(&v6(req(Interface::name("eth0"))), &Ok(vec![l]));
        assert_eq!(outcome(&c), Outcome::Ok, "{:?}", c.0);
    }

    const ROUTE_DEFAULT_ETH0: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
";
    const ROUTE_MCAST_LO: &str = "h\nlo\t000000E0\t00000000\t0001\t0\t0\t0\t000000F0\t0\t0\t0\n";

    #[test]
    fn route_through_another_interface_warns_and_none_warns() {
        let host = with(&[("/proc/net/route", ROUTE_DEFAULT_ETH0)]);
        let c = route(&req(Interface::Loopback), Some(&lo()), &host);
        assert_eq!(c.outcome, Outcome::Warn);
        assert!(
            c.detail.starts_with(
                "the kernel routes 239.255.77.77 via eth0 (0.0.0.0/0, the default route"
            ),
            "{}",
            c.detail
        );
        assert!(c.detail.contains("IP_MULTICAST_IF"));
        assert_eq!(
            c.fix.as_deref(),
            Some("ip route add 239.255.77.77/32 dev lo (as root), so that every program agrees")
        );
        let c = route(&req(Interface::name("eth0")), Some(&eth0()), &host);
        assert_eq!(c.outcome, Outcome::Ok);
        let host = with(&[("/proc/net/route", "Iface\n")]);
        let c = route(&req(Interface::Loopback), Some(&lo()), &host);
        assert_eq!(c.outcome, Outcome::Warn);
        assert!(c
            .detail
            .starts_with("no route in the main table covers 239.255.77.77"));
        assert_eq!(
            c.fix.as_deref(),
            Some("ip route add 224.0.0.0/4 dev lo (as root)")
        );
        let host = with(&[("/proc/net/route", ROUTE_MCAST_LO)]);
        let c = route(&req(Interface::Loopback), Some(&lo()), &host);
        assert_eq!(
            (c.outcome, c.detail.as_str()),
            (Outcome::Ok, "239.255.77.77 routes via lo (224.0.0.0/4)")
        );
        assert_eq!(
            route(&req(Interface::Loopback), Some(&lo()), &with(&[])).outcome,
            Outcome::Skipped
        );
        assert_eq!(
            route(&req(Interface::Loopback), None, &host).outcome,
            Outcome::Skipped
        );
    }

    #[test]
    fn route_ipv6_without_a_route_through_the_interface_fails() {
        let text = "ff000000000000000000000000000000 08 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n";
        let host = with(&[("/proc/net/ipv6_route", text)]);
        let c = route(&v6(req(Interface::name("eth0"))), Some(&eth0()), &host);
        assert_eq!(
            (c.outcome, c.detail.as_str()),
            (Outcome::Ok, "ff15::7777 routes via eth0 (ff00::/8)")
        );
        let mut veth = eth0();
        veth.name = "veth0".into();
        let c = route(&v6(req(Interface::name("veth0"))), Some(&veth), &host);
        assert_eq!(c.outcome, Outcome::Fail);
        assert_eq!(
            c.fix.as_deref(),
            Some("ip -6 route add ff00::/8 dev veth0 table local (as root)")
        );
    }

    #[test]
    fn rp_filter_strict_off_the_default_route_warns_with_the_sysctl() {
        let mut veth = eth0();
        veth.name = "veth1".into();
        let files = |all: &'static str, own: &'static str| {
            with(&[
                ("/proc/sys/net/ipv4/conf/all/rp_filter", all),
                ("/proc/sys/net/ipv4/conf/veth1/rp_filter", own),
                ("/proc/net/route", ROUTE_DEFAULT_ETH0),
            ])
        };
        let r = req(Interface::name("veth1"));
        let c = rp_filter(&r, Some(&veth), &files("1\n", "0\n"));
        assert_eq!(c.outcome, Outcome::Warn);
        assert!(
            c.detail
                .starts_with("strict (all=1, veth1=0) and the default route goes via eth0"),
            "{}",
            c.detail
        );
        assert!(
            c.detail.contains("any source (no route goes via veth1)"),
            "{}",
            c.detail
        );
        assert!(c.fix.unwrap().starts_with(
            "sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.veth1.rp_filter=2"
        ));
        assert_eq!(
            rp_filter(&r, Some(&veth), &files("0", "2")).outcome,
            Outcome::Ok
        );
        assert_eq!(
            rp_filter(&r, Some(&veth), &files("0", "0")).outcome,
            Outcome::Ok
        );
        // Strict on the interface of the default route: every source passes.
        let eth = files("1", "1");
        let mut host = eth;
        host.files
            .insert("/proc/sys/net/ipv4/conf/eth0/rp_filter".into(), "1".into());
        let c = rp_filter(&req(Interface::name("eth0")), Some(&eth0()), &host);
        assert_eq!(c.outcome, Outcome::Ok, "{c:?}");
        // Loopback and IPv6: not applicable.
        assert_eq!(
            rp_filter(&req(Interface::Loopback), Some(&lo()), &files("1", "1")).outcome,
            Outcome::Ok
        );
        assert_eq!(
            rp_filter(&v6(r.clone()), Some(&veth), &files("1", "1")).outcome,
            Outcome::Skipped
        );
        assert_eq!(
            rp_filter(&r, Some(&veth), &with(&[])).outcome,
            Outcome::Skipped
        );
    }

    #[test]
    fn buffers_below_the_request_warn_with_the_sysctl() {
        let host = with(&[
            ("/proc/sys/net/core/rmem_max", "212992\n"),
            ("/proc/sys/net/core/wmem_max", "4194304\n"),
        ]);
        let c = buffer(&host, false, 4 << 20);
        assert_eq!(c.outcome, Outcome::Warn);
        assert!(c.detail.starts_with(
            "net.core.rmem_max = 212992 bytes, below the 4194304 asked for (--recv-buffer)"
        ));
        assert!(c
            .fix
            .unwrap()
            .starts_with("sysctl -w net.core.rmem_max=4194304"));
        assert_eq!(buffer(&host, false, 212992).outcome, Outcome::Ok);
        let c = buffer(&host, true, 1 << 20);
        assert_eq!(c.outcome, Outcome::Ok);
        assert_eq!(c.name, "wmem_max");
        assert_eq!(buffer(&with(&[]), true, 1).outcome, Outcome::Skipped);
    }

    #[test]
    fn firewall_drop_fails_maybe_warns_none_is_ok_and_unreadable_skips() {
        let set = |text: &str| Ruleset {
            tool: "nft",
            text: Ok(text.to_owned()),
        };
        let ruleset = |rule: &str| {
            format!("table inet f {{\n\tchain input {{\n\t\ttype filter hook input priority 0; policy accept;\n\t\t{rule}\n\t}}\n}}\n")
        };
        let mut host = Fake {
            rulesets: vec![set(&ruleset("udp dport 7777 drop"))],
            ..Fake::default()
        };
        let c = firewall(&req(Interface::Loopback), Some(&lo()), &host);
        assert_eq!(c.outcome, Outcome::Fail);
        assert_eq!(
            c.detail,
            "table inet f, chain input: `udp dport 7777 drop` drops udp port 7777 on lo"
        );
        assert_eq!(
            c.fix.as_deref(),
            Some(
                "nft insert rule inet f input udp dport 7777 accept (as root), or remove that rule"
            )
        );
        host.rulesets = vec![set(&ruleset("numgen random mod 100 < 5 drop"))];
        assert_eq!(
            firewall(&req(Interface::Loopback), Some(&lo()), &host).outcome,
            Outcome::Warn
        );
        host.rulesets = vec![set(&ruleset("udp dport 53 drop"))];
        let c = firewall(&req(Interface::Loopback), Some(&lo()), &host);
        assert_eq!(
            (c.outcome, c.detail.as_str()),
            (
                Outcome::Ok,
                "no rule drops udp port 7777 on lo: read nft (1 chain on the path)"
            )
        );
        // A drop in a chain reached by jump is found there; a jump that
        // cannot be followed is said.
        let jumped = "table inet f {\n\tchain input {\n\t\ttype filter hook input priority 0; policy accept;\n\t\tjump more\n\t}\n\tchain more {\n\t\tudp dport 7777 drop\n\t}\n}\n";
        host.rulesets = vec![set(jumped)];
        let c = firewall(&req(Interface::Loopback), Some(&lo()), &host);
        assert_eq!(c.outcome, Outcome::Fail);
        assert_eq!(
            c.detail,
            "table inet f, chain more: `udp dport 7777 drop` drops udp port 7777 on lo"
        );
        host.rulesets = vec![set(&jumped.replace("jump more", "jump gone"))];
        let c = firewall(&req(Interface::Loopback), Some(&lo()), &host);
        assert_eq!(
            (c.outcome, c.detail.as_str()),
            (
                Outcome::Ok,
                "no rule drops udp port 7777 on lo: read nft (1 chain on the path); rules in \
                 chains reached by jump were not read (table inet f, chain input -> gone (no \
                 such chain)): the probe below is the proof"
            )
        );
        host.rulesets = vec![set(&jumped.replace("udp dport 7777 drop", "counter"))];
        let c = firewall(&req(Interface::Loopback), Some(&lo()), &host);
        assert_eq!(
            c.detail,
            "no rule drops udp port 7777 on lo: read nft (1 chain on the path and 1 reached by jump)"
        );
        host.rulesets = vec![Ruleset {
            tool: "nft",
            text: Err("Operation not permitted".into()),
        }];
        let c = firewall(&req(Interface::Loopback), Some(&lo()), &host);
        assert_eq!(c.outcome, Outcome::Skipped);
        assert!(c.detail.contains("Operation not permitted"));
        host.rulesets.clear();
        assert_eq!(
            firewall(&req(Interface::Loopback), Some(&lo()), &host).outcome,
            Outcome::Skipped
        );
        host.rulesets = vec![Ruleset {
            tool: "iptables-save",
            text: Ok("*filter\n:INPUT DROP [0:0]\nCOMMIT\n".into()),
        }];
        let c = firewall(&req(Interface::Loopback), Some(&lo()), &host);
        assert_eq!(c.outcome, Outcome::Fail);
        assert_eq!(c.fix.as_deref(), Some("iptables -t filter -I INPUT -p udp --dport 7777 -j ACCEPT (as root), or remove that rule"));
    }

    #[test]
    fn membership_is_confirmed_in_proc_net_igmp_and_igmp6() {
        let igmp = "Idx\tDevice    : Count Querier\tGroup    Users Timer\tReporter
1\tlo        :     2      V3
\t\t\t\t4D4DFFEF     1 0:00000000\t\t0
4\teth0      :     1      V3
\t\t\t\t010000E0     1 0:00000000\t\t0
";
        let host = with(&[("/proc/net/igmp", igmp)]);
        let joined = Ok(("lo".to_owned(), 1));
        let c = membership(&req(Interface::Loopback), Some(&lo()), &joined, &host);
        assert_eq!(c.outcome, Outcome::Ok, "{c:?}");
        assert_eq!(
            c.detail,
            "joined 239.255.77.77 on lo: listed in /proc/net/igmp (1 member socket(s) IGMPv3; loopback sends no reports)"
        );
        // Listed on another interface only: not confirmed.
        let c = membership(
            &req(Interface::name("eth0")),
            None,
            &Ok(("eth0".to_owned(), 4)),
            &host,
        );
        assert_eq!(c.outcome, Outcome::Fail);
        assert!(c.detail.contains("does not list it there"));
        let igmp6 = "4    eth0            ff150000000000000000000000007777     1 00000004 0\n";
        let host = with(&[("/proc/net/igmp6", igmp6)]);
        let c = membership(
            &v6(req(Interface::name("eth0"))),
            None,
            &Ok(("eth0".to_owned(), 4)),
            &host,
        );
        assert_eq!(c.outcome, Outcome::Ok, "{c:?}");
        assert!(c.detail.contains("/proc/net/igmp6"));
        let c = membership(
            &v6(req(Interface::name("eth0"))),
            None,
            &Ok(("eth0".to_owned(), 4)),
            &with(&[]),
        );
        assert_eq!(c.outcome, Outcome::Warn);
        let err = Err(SocketError::Ipv6MulticastUnsupported { name: "lo".into() });
        let c = membership(&v6(req(Interface::Loopback)), Some(&lo()), &err, &host);
        assert_eq!(c.outcome, Outcome::Fail);
        assert!(c
            .detail
            .starts_with("cannot join ff15::7777: interface lo cannot carry IPv6 multicast"));
    }

    #[test]
    fn probe_heard_is_ok_silence_and_send_errors_fail() {
        let r = req(Interface::Loopback);
        let heard = Probe::Heard {
            after: Duration::from_micros(150),
            bytes: 40,
            from: "127.0.0.1:5000".into(),
            to: "239.255.77.77:7777".into(),
            others: 0,
        };
        let c = probe(&r, Some(&lo()), heard, &[]);
        assert_eq!(c.outcome, Outcome::Ok);
        assert_eq!(
            c.detail,
            "sent 40 bytes from 127.0.0.1:5000 to 239.255.77.77:7777 on lo with TTL 0 and heard them back after 0.150 ms"
        );
        let silent = || Probe::NotHeard {
            waited: Duration::from_secs(1),
            bytes: 40,
            from: "127.0.0.1:5000".into(),
            to: "239.255.77.77:7777".into(),
            others: 2,
        };
        let c = probe(&r, Some(&lo()), silent(), &[]);
        assert_eq!(c.outcome, Outcome::Fail);
        assert!(
            c.detail.contains("did not hear them within 1000 ms"),
            "{}",
            c.detail
        );
        assert!(c.detail.contains("also heard 2 datagram(s)"));
        assert!(c.detail.contains("nothing above explains it"));
        assert!(c.fix.unwrap().contains("udp dport 7777 accept"));
        let fw = Check::new("firewall", Outcome::Fail, "x");
        let c = probe(&r, Some(&lo()), silent(), &[fw]);
        assert!(c.detail.ends_with("see firewall above"), "{}", c.detail);
        assert_eq!(c.fix.as_deref(), Some("see the firewall fix above"));
        let unreach = io::Error::from_raw_os_error(nix::errno::Errno::ENETUNREACH as i32);
        let c = probe(
            &r,
            Some(&lo()),
            Probe::SendFailed("cannot send".into(), Some(unreach)),
            &[],
        );
        assert_eq!(c.outcome, Outcome::Fail);
        assert_eq!(
            c.fix.as_deref(),
            Some("ip route add 224.0.0.0/4 dev lo (as root)")
        );
        assert_eq!(
            probe(&r, None, Probe::NotJoined, &[]).outcome,
            Outcome::Skipped
        );
    }
}
