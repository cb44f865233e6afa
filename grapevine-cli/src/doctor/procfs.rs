//! Parsers of the Linux `/proc` files the doctor reads: routes and multicast
//! memberships. Pure functions of the file text, tested with copies of real
//! files.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// How the kernel printed a 32-bit address: `/proc/net/route` and
/// `/proc/net/igmp` print a network-order `__be32` as a host-order `%08X`, so
/// on a little-endian machine (x86) 239.255.74.20 reads `144AFFEF`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endian {
    Little,
    #[cfg_attr(target_endian = "little", allow(dead_code))]
    Big,
}

impl Endian {
    /// This machine's byte order: the one its kernel prints in.
    pub(crate) const NATIVE: Self = if cfg!(target_endian = "big") {
        Self::Big
    } else {
        Self::Little
    };

    /// The IPv4 address a `%08X` field of the kernel holds.
    fn ipv4(self, hex: &str) -> Option<Ipv4Addr> {
        if hex.len() != 8 {
            return None;
        }
        let value = u32::from_str_radix(hex, 16).ok()?;
        Some(Ipv4Addr::from(match self {
            Self::Little => value.to_le_bytes(),
            Self::Big => value.to_be_bytes(),
        }))
    }
}

/// `RTF_UP`: the route is usable.
const RTF_UP: u32 = 0x0001;
/// `RTF_REJECT`: an unreachable route (IPv6's null entries).
const RTF_REJECT: u32 = 0x0200;

/// One row of `/proc/net/route` (the main IPv4 table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Route4 {
    pub(crate) iface: String,
    pub(crate) dest: Ipv4Addr,
    pub(crate) gateway: Ipv4Addr,
    pub(crate) mask: Ipv4Addr,
    pub(crate) metric: u32,
    flags: u32,
}

impl Route4 {
    pub(crate) fn prefix_len(&self) -> u32 {
        u32::from(self.mask).count_ones()
    }

    fn covers(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & u32::from(self.mask) == u32::from(self.dest)
    }

    /// `224.0.0.0/4`, `0.0.0.0/0 (the default route)`.
    pub(crate) fn describe(&self) -> String {
        let mut s = format!("{}/{}", self.dest, self.prefix_len());
        if self.prefix_len() == 0 {
            s.push_str(", the default route");
        }
        if !self.gateway.is_unspecified() {
            s.push_str(&format!(", via gateway {}", self.gateway));
        }
        s
    }
}

/// The rows of `/proc/net/route`; lines that do not parse are skipped.
pub(crate) fn parse_route4(text: &str, endian: Endian) -> Vec<Route4> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            Some(Route4 {
                iface: f[0].to_owned(),
                dest: endian.ipv4(f[1])?,
                gateway: endian.ipv4(f[2])?,
                flags: u32::from_str_radix(f[3], 16).ok()?,
                metric: f[6].parse().ok()?,
                mask: endian.ipv4(f[7])?,
            })
        })
        .collect()
}

/// The route the kernel's main table picks for `addr`: the longest prefix
/// that covers it, then the lowest metric.
pub(crate) fn route4_for(routes: &[Route4], addr: Ipv4Addr) -> Option<&Route4> {
    routes
        .iter()
        .filter(|r| r.flags & RTF_UP != 0 && r.covers(addr))
        .max_by_key(|r| (r.prefix_len(), std::cmp::Reverse(r.metric)))
}

/// One row of `/proc/net/ipv6_route` (every table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Route6 {
    pub(crate) iface: String,
    pub(crate) dest: Ipv6Addr,
    pub(crate) prefix_len: u32,
    flags: u32,
}

impl Route6 {
    fn covers(&self, addr: Ipv6Addr) -> bool {
        let mask = u128::MAX
            .checked_shl(128 - self.prefix_len)
            .unwrap_or_default();
        u128::from(addr) & mask == u128::from(self.dest) & mask
    }
}

fn ipv6_hex(hex: &str) -> Option<Ipv6Addr> {
    if hex.len() != 32 {
        return None;
    }
    u128::from_str_radix(hex, 16).ok().map(Ipv6Addr::from)
}

/// The rows of `/proc/net/ipv6_route`; lines that do not parse are skipped.
pub(crate) fn parse_route6(text: &str) -> Vec<Route6> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                return None;
            }
            let prefix_len = u32::from_str_radix(f[1], 16).ok().filter(|&l| l <= 128)?;
            Some(Route6 {
                dest: ipv6_hex(f[0])?,
                prefix_len,
                flags: u32::from_str_radix(f[8], 16).ok()?,
                iface: f[9].to_owned(),
            })
        })
        .collect()
}

/// The usable (up, not reject) routes that cover `addr` through `iface`,
/// longest prefix first.
pub(crate) fn routes6_through<'a>(
    routes: &'a [Route6],
    addr: Ipv6Addr,
    iface: &str,
) -> Vec<&'a Route6> {
    let mut out: Vec<&Route6> = routes
        .iter()
        .filter(|r| {
            r.flags & RTF_UP != 0 && r.flags & RTF_REJECT == 0 && r.iface == iface && r.covers(addr)
        })
        .collect();
    out.sort_by_key(|r| std::cmp::Reverse(r.prefix_len));
    out
}

/// A group joined on an interface, as `/proc/net/igmp` or `/proc/net/igmp6`
/// lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Membership {
    pub(crate) index: u32,
    pub(crate) device: String,
    pub(crate) group: IpAddr,
    /// Sockets (and the kernel itself) holding the membership.
    pub(crate) users: u32,
    /// IGMP version the interface speaks (`V2`, `V3`), IPv4 only.
    pub(crate) querier: Option<String>,
}

/// The memberships of `/proc/net/igmp` (tab-separated): a line per device
/// (`1\tlo : 2 V3`: index, name, count, IGMP version) followed by a line per
/// group, indented with tabs (`\t\t\t\t144AFFEF 1 0:00000000 0`: group in
/// [`Endian`] hex, users, timer, reporter).
pub(crate) fn parse_igmp(text: &str, endian: Endian) -> Vec<Membership> {
    let mut out = Vec::new();
    let mut device: Option<(u32, String, Option<String>)> = None;
    for line in text.lines().skip(1) {
        if line.starts_with(char::is_whitespace) {
            let Some((index, name, querier)) = &device else {
                continue;
            };
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(group), Some(users)) = (
                f.first().and_then(|h| endian.ipv4(h)),
                f.get(1).and_then(|u| u.parse().ok()),
            ) else {
                continue;
            };
            out.push(Membership {
                index: *index,
                device: name.clone(),
                group: IpAddr::V4(group),
                users,
                querier: querier.clone(),
            });
        } else {
            device = line.split_once(':').and_then(|(left, right)| {
                let mut l = left.split_whitespace();
                let index = l.next()?.parse().ok()?;
                let name = l.next()?.to_owned();
                let querier = right.split_whitespace().nth(1).map(str::to_owned);
                Some((index, name, querier))
            });
        }
    }
    out
}

/// The memberships of `/proc/net/igmp6`:
///
/// ```text
/// 1    lo              ff150000000000000000000000007420     1 00000004 0
/// ```
pub(crate) fn parse_igmp6(text: &str) -> Vec<Membership> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 4 {
                return None;
            }
            Some(Membership {
                index: f[0].parse().ok()?,
                device: f[1].to_owned(),
                group: IpAddr::V6(ipv6_hex(f[2])?),
                users: f[3].parse().ok()?,
                querier: None,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Copied from a 2-core VM (kernel 6.18): eth0 with a default route, no
    // multicast route.
    const ROUTE: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
";

    #[test]
    fn route4_parses_little_endian_hex_and_picks_the_longest_prefix() {
        let mut routes = parse_route4(ROUTE, Endian::Little);
        assert_eq!(routes.len(), 2);
        assert_eq!(routes[0].gateway, Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(routes[1].dest, Ipv4Addr::new(192, 0, 2, 0));
        assert_eq!(routes[1].prefix_len(), 24);
        let group = Ipv4Addr::new(239, 255, 77, 77);
        let r = route4_for(&routes, group).unwrap();
        assert_eq!((r.iface.as_str(), r.prefix_len()), ("eth0", 0));
        assert_eq!(
            r.describe(),
            "0.0.0.0/0, the default route, via gateway 192.0.2.1"
        );
        // `ip route add 224.0.0.0/4 dev lo`
        routes.extend(parse_route4(
            "h\nlo\t000000E0\t00000000\t0001\t0\t0\t0\t000000F0\t0\t0\t0\n",
            Endian::Little,
        ));
        let r = route4_for(&routes, group).unwrap();
        assert_eq!(
            (r.iface.as_str(), r.describe()),
            ("lo", "224.0.0.0/4".to_owned())
        );
        // Not for a unicast address outside it.
        assert_eq!(
            route4_for(&routes, Ipv4Addr::new(192, 0, 2, 9))
                .unwrap()
                .prefix_len(),
            24
        );
    }

    #[test]
    fn route4_lowest_metric_wins_a_tie_and_down_routes_are_ignored() {
        let text = "h
a\t000000E0\t00000000\t0001\t0\t0\t20\t000000F0\t0\t0\t0
b\t000000E0\t00000000\t0001\t0\t0\t10\t000000F0\t0\t0\t0
c\t4D4DFFEF\t00000000\t0000\t0\t0\t0\tFFFFFFFF\t0\t0\t0
";
        let routes = parse_route4(text, Endian::Little);
        assert_eq!(routes.len(), 3);
        let r = route4_for(&routes, Ipv4Addr::new(239, 255, 77, 77)).unwrap();
        assert_eq!(r.iface, "b");
        assert!(route4_for(&routes, Ipv4Addr::new(10, 0, 0, 1)).is_none());
    }

    #[test]
    fn route4_big_endian_reads_the_same_text_the_other_way() {
        let r = parse_route4(
            "h\nx\tE0000000\t00000000\t0001\t0\t0\t0\tF0000000\t0\t0\t0\n",
            Endian::Big,
        );
        assert_eq!(r[0].dest, Ipv4Addr::new(224, 0, 0, 0));
        assert_eq!(r[0].prefix_len(), 4);
    }

    const IPV6_ROUTE: &str = "\
fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0
00000000000000000000000000000001 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000002 00000000 80200001       lo
ff000000000000000000000000000000 08 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
";

    #[test]
    fn route6_finds_the_multicast_route_of_an_interface_and_skips_reject_routes() {
        let routes = parse_route6(IPV6_ROUTE);
        assert_eq!(routes.len(), 4);
        let group: Ipv6Addr = "ff15::7420".parse().unwrap();
        let eth0 = routes6_through(&routes, group, "eth0");
        assert_eq!(eth0.len(), 1);
        assert_eq!(eth0[0].prefix_len, 8);
        // lo's ::/0 is the kernel's reject (null) entry: no route.
        assert!(routes6_through(&routes, group, "lo").is_empty());
        assert!(routes6_through(&routes, "2001:db8::1".parse().unwrap(), "eth0").is_empty());
    }

    // /proc/net/igmp after joining 239.255.74.20 on lo (x86).
    const IGMP: &str = "Idx\tDevice    : Count Querier\tGroup    Users Timer\tReporter
1\tlo        :     2      V3
\t\t\t\t144AFFEF     1 0:00000000\t\t0
\t\t\t\t010000E0     1 0:00000000\t\t0
4\teth0      :     1      V2
\t\t\t\t010000E0     1 0:00000000\t\t0
";

    #[test]
    fn igmp_groups_are_little_endian_hex_under_their_device() {
        let got = parse_igmp(IGMP, Endian::Little);
        assert_eq!(got.len(), 3);
        assert_eq!(
            got[0],
            Membership {
                index: 1,
                device: "lo".into(),
                group: IpAddr::V4(Ipv4Addr::new(239, 255, 74, 20)),
                users: 1,
                querier: Some("V3".into()),
            }
        );
        assert_eq!(got[1].group, IpAddr::V4(Ipv4Addr::new(224, 0, 0, 1)));
        assert_eq!((got[2].index, got[2].device.as_str()), (4, "eth0"));
        assert_eq!(got[2].querier.as_deref(), Some("V2"));
        // A big-endian kernel prints the address in reading order.
        let be = parse_igmp(
            "Idx\tDevice : Count Querier\n1\tlo : 1 V3\n\t\t\t\tEFFF4A14     2 0:00000000\t\t0\n",
            Endian::Big,
        );
        assert_eq!(be[0].group, IpAddr::V4(Ipv4Addr::new(239, 255, 74, 20)));
        assert_eq!(be[0].users, 2);
    }

    #[test]
    fn igmp_garbage_is_skipped() {
        assert!(parse_igmp("", Endian::Little).is_empty());
        assert!(parse_igmp("Idx\n\t\t144AFFEF 1\nx\n\t\tZZ 1\n", Endian::Little).is_empty());
    }

    #[test]
    fn igmp6_groups_are_in_reading_order() {
        let text = "1    lo              ff150000000000000000000000007420     1 00000004 0
4    eth0            ff0200000000000000000001ff000002     1 00000004 0
";
        let got = parse_igmp6(text);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].group, "ff15::7420".parse::<IpAddr>().unwrap());
        assert_eq!(
            (got[0].index, got[0].device.as_str(), got[0].users),
            (1, "lo", 1)
        );
        assert_eq!(got[1].group, "ff02::1:ff00:2".parse::<IpAddr>().unwrap());
    }
}
