//! A best-effort reading of firewall rules (`nft list ruleset`,
//! `iptables-save`): does a rule on the path of this host's multicast drop
//! UDP to the port?
//!
//! The walk starts at the base chains (those hooked into input, output,
//! prerouting, postrouting), rule by rule in order, as the kernel walks
//! them, and follows `jump` and `goto` (`-j CHAIN`, `-g CHAIN`) into other
//! chains of the same table, [`MAX_JUMP_DEPTH`] deep at most; a `return`
//! goes back. A rule is judged against the interface, the
//! address family and the UDP port: it matches them surely (`udp dport 7777
//! drop`), perhaps (anything it tests that the doctor cannot know: source
//! addresses, random numbers, rate limits, named sets), or not at all (TCP,
//! another port, another interface, the other family). Connection tracking
//! never calls a one-way multicast flow established, so `ct state
//! established` rules do not match it.

/// What the datagrams look like to a firewall.
#[derive(Debug, Clone)]
pub(crate) struct Target<'a> {
    pub(crate) iface: &'a str,
    pub(crate) ipv6: bool,
    pub(crate) port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Match {
    No,
    Maybe,
    Yes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Accept,
    Drop,
    /// Back to the calling chain (or the policy, in a base chain).
    Return,
    /// Into another chain of the table, then back.
    Jump(String),
    /// Into another chain of the table, not back.
    Goto(String),
    /// Counters, logs, marks: the walk goes on.
    Other,
}

/// How deep jumps are followed (the kernel's own limit is deeper; a loop
/// stops here).
pub(crate) const MAX_JUMP_DEPTH: usize = 16;

/// Chains entered per ruleset at most, whatever the jumps.
const MAX_CHAIN_VISITS: usize = 1000;

/// A rule (or a chain policy) that drops the datagrams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Finding {
    /// `table inet filter, chain input`.
    pub(crate) chain: String,
    /// The rule as printed, or `policy drop`.
    pub(crate) rule: String,
    /// True when it surely matches, false when it may.
    pub(crate) sure: bool,
    /// For nft: family, table and chain, to write a fix.
    pub(crate) nft: Option<(String, String, String)>,
    /// For iptables: the chain.
    pub(crate) iptables_chain: Option<String>,
}

/// What one ruleset says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Reading {
    /// Base chains on the path that were read.
    pub(crate) chains: usize,
    /// Other chains read because a rule on the path jumps to them.
    pub(crate) jumped_to: usize,
    /// Jumps not followed: the target chain is missing, or too deep.
    pub(crate) unfollowed: Vec<String>,
    pub(crate) findings: Vec<Finding>,
}

#[derive(Debug)]
struct Chain {
    /// The table (nft: `family name`), and the chain's name in it.
    table: String,
    name: String,
    label: String,
    nft: Option<(String, String, String)>,
    iptables_chain: Option<String>,
    on_path: bool,
    policy_drop: bool,
    rules: Vec<(String, Match, Verdict)>,
}

enum Flow {
    /// A sure accept or drop: nothing after it is reached.
    Stop,
    /// The end of the chain, or a `return`.
    Fell,
}

/// A walk from one base chain.
struct Walk<'a> {
    chains: &'a [Chain],
    out: &'a mut Reading,
    jumped_to: &'a mut Vec<(String, String)>,
    visits: usize,
    maybe_accepted: bool,
}

impl Walk<'_> {
    fn finding(&mut self, c: &Chain, rule: &str, sure: bool) {
        if let Some(f) = self
            .out
            .findings
            .iter_mut()
            .find(|f| f.chain == c.label && f.rule == rule)
        {
            f.sure |= sure;
            return;
        }
        self.out.findings.push(Finding {
            chain: c.label.clone(),
            rule: rule.to_owned(),
            sure,
            nft: c.nft.clone(),
            iptables_chain: c.iptables_chain.clone(),
        });
    }

    /// Walks `c`'s rules in order, each matching at most as surely as
    /// `reached` (how surely the datagrams got here): the first sure
    /// accept or drop stops the walk; drops that surely or perhaps match
    /// are findings.
    fn chain(&mut self, c: &Chain, reached: Match, depth: usize) -> Flow {
        let mut reached = reached;
        for (text, m, verdict) in &c.rules {
            let m = (*m).min(reached);
            if m == Match::No {
                continue;
            }
            match verdict {
                Verdict::Accept if m == Match::Yes => return Flow::Stop,
                Verdict::Accept => self.maybe_accepted = true,
                Verdict::Drop => {
                    let sure = m == Match::Yes && !self.maybe_accepted;
                    self.finding(c, text, sure);
                    if sure {
                        return Flow::Stop;
                    }
                }
                Verdict::Return if m == Match::Yes => return Flow::Fell,
                // What follows a return that may match may not be reached.
                Verdict::Return => reached = Match::Maybe,
                Verdict::Jump(to) | Verdict::Goto(to) => {
                    let goto = matches!(verdict, Verdict::Goto(_));
                    let target = self
                        .chains
                        .iter()
                        .find(|t| t.table == c.table && &t.name == to);
                    let Some(target) = target else {
                        // iptables: `-j LOG` and other targets that are
                        // not chains. nft: a chain that is not there.
                        if c.nft.is_some() {
                            self.unfollowed(c, to, "no such chain");
                        }
                        continue;
                    };
                    if depth >= MAX_JUMP_DEPTH || self.visits >= MAX_CHAIN_VISITS {
                        self.unfollowed(c, to, "too deep");
                        // It may accept or drop there.
                        self.maybe_accepted = true;
                        reached = Match::Maybe;
                        continue;
                    }
                    self.visits += 1;
                    let key = (target.table.clone(), target.name.clone());
                    if !self.jumped_to.contains(&key) {
                        self.jumped_to.push(key);
                    }
                    let flow = self.chain(target, m, depth + 1);
                    match (m, flow) {
                        (Match::Yes, Flow::Stop) => return Flow::Stop,
                        (Match::Yes, Flow::Fell) if goto => return Flow::Fell,
                        (Match::Yes, Flow::Fell) => {}
                        // Only some datagrams may have gone there.
                        _ if goto => reached = Match::Maybe,
                        _ => {}
                    }
                }
                Verdict::Other => {}
            }
        }
        Flow::Fell
    }

    fn unfollowed(&mut self, c: &Chain, to: &str, why: &str) {
        let text = format!("{} -> {to} ({why})", c.label);
        if !self.out.unfollowed.contains(&text) {
            self.out.unfollowed.push(text);
        }
    }
}

/// Walks every base chain on the path of `chains` (one table or several),
/// following jumps; the policy applies to what reaches a base chain's end.
fn walk_all(chains: &[Chain], out: &mut Reading) {
    let mut jumped_to = Vec::new();
    for base in chains.iter().filter(|c| c.on_path) {
        out.chains += 1;
        let mut walk = Walk {
            chains,
            out: &mut *out,
            jumped_to: &mut jumped_to,
            visits: 0,
            maybe_accepted: false,
        };
        if let Flow::Fell = walk.chain(base, Match::Yes, 0) {
            if base.policy_drop {
                let sure = !walk.maybe_accepted;
                walk.finding(base, "policy drop", sure);
            }
        }
    }
    out.jumped_to += jumped_to
        .iter()
        .filter(|(table, name)| {
            !chains
                .iter()
                .any(|c| c.on_path && &c.table == table && &c.name == name)
        })
        .count();
}

fn unquote(s: &str) -> &str {
    s.trim_matches('"')
}

/// Whether `port` is in an nft port expression: `7777`, `7000-7999`, or a
/// set `{ 53, 7000-7999 }` split into tokens. `None`: cannot tell.
fn port_in(spec: &[&str], port: u16) -> Option<bool> {
    let mut found = false;
    for item in spec {
        let item = item.trim_matches(|c| c == '{' || c == '}' || c == ',');
        if item.is_empty() {
            continue;
        }
        let hit = match item.split_once(['-', ':']) {
            Some((a, b)) => match (a.parse::<u16>(), b.parse::<u16>()) {
                (Ok(a), Ok(b)) => (a..=b).contains(&port),
                _ => return None,
            },
            None => match item.parse::<u16>() {
                Ok(p) => p == port,
                Err(_) => return None,
            },
        };
        found |= hit;
    }
    Some(found)
}

/// The tokens of a value at `tokens[i]`: one token, or a `{ ... }` set.
/// Returns them and the index after.
fn value_at<'a>(tokens: &[&'a str], i: usize) -> (Vec<&'a str>, usize) {
    match tokens.get(i) {
        None => (Vec::new(), i),
        Some(t) if t.starts_with('{') => {
            let mut j = i;
            while j < tokens.len() && !tokens[j].ends_with('}') {
                j += 1;
            }
            let end = (j + 1).min(tokens.len());
            (tokens[i..end].to_vec(), end)
        }
        Some(t) => (vec![*t], i + 1),
    }
}

/// Judges one nft rule.
fn nft_rule(text: &str, t: &Target<'_>) -> (Match, Verdict) {
    let tokens: Vec<&str> = text.split_whitespace().collect();
    let mut m = Match::Yes;
    let mut verdict = Verdict::Other;
    let mut i = 0;
    while i < tokens.len() {
        let tok = tokens[i];
        i += 1;
        match tok {
            "counter" | "packets" | "bytes" | "meta" | "th" | "udp" => {
                if tok == "packets" || tok == "bytes" {
                    i += 1;
                }
                if tok == "udp" && tokens.get(i) == Some(&"sport") {
                    m = m.min(Match::Maybe);
                }
            }
            "accept" => verdict = Verdict::Accept,
            "drop" => verdict = Verdict::Drop,
            "reject" => {
                verdict = Verdict::Drop;
                break;
            }
            "jump" | "goto" => {
                let to = unquote(tokens.get(i).copied().unwrap_or("")).to_owned();
                verdict = if tok == "jump" {
                    Verdict::Jump(to)
                } else {
                    Verdict::Goto(to)
                };
                break;
            }
            "return" => {
                verdict = Verdict::Return;
                break;
            }
            "comment" | "log" => break,
            "iif" | "iifname" | "oif" | "oifname" => {
                let neg = tokens.get(i) == Some(&"!=");
                if neg {
                    i += 1;
                }
                let (value, next) = value_at(&tokens, i);
                i = next;
                match value.as_slice() {
                    [name] => {
                        let name = unquote(name);
                        let eq = match name.strip_suffix('*') {
                            Some(prefix) => t.iface.starts_with(prefix),
                            None => name == t.iface,
                        };
                        if eq == neg {
                            return (Match::No, verdict);
                        }
                    }
                    _ => m = m.min(Match::Maybe),
                }
            }
            "dport" => {
                let neg = tokens.get(i) == Some(&"!=");
                if neg {
                    i += 1;
                }
                let (value, next) = value_at(&tokens, i);
                i = next;
                match port_in(&value, t.port) {
                    Some(hit) if hit != neg => {}
                    Some(_) => return (Match::No, verdict),
                    None => m = m.min(Match::Maybe),
                }
            }
            "l4proto" | "protocol" | "nexthdr" => {
                let (value, next) = value_at(&tokens, i);
                i = next;
                match value.as_slice() {
                    ["udp" | "17"] => {}
                    [_] => return (Match::No, verdict),
                    _ => m = m.min(Match::Maybe),
                }
            }
            "tcp" | "icmp" | "icmpv6" | "sctp" | "dccp" | "udplite" | "igmp" => {
                return (Match::No, verdict)
            }
            "ip" | "ip6" => {
                if (tok == "ip6") != t.ipv6 {
                    return (Match::No, verdict);
                }
            }
            "nfproto" => {
                let (value, next) = value_at(&tokens, i);
                i = next;
                match value.as_slice() {
                    ["ipv4"] if t.ipv6 => return (Match::No, verdict),
                    ["ipv6"] if !t.ipv6 => return (Match::No, verdict),
                    ["ipv4" | "ipv6"] => {}
                    _ => m = m.min(Match::Maybe),
                }
            }
            "ct" => {
                // `ct state established,related`: a one-way multicast flow
                // is always `new`.
                if tokens.get(i) == Some(&"state") {
                    let (value, next) = value_at(&tokens, i + 1);
                    i = next;
                    let states: Vec<&str> = value
                        .iter()
                        .flat_map(|v| v.split(','))
                        .map(|s| s.trim_matches(|c| c == '{' || c == '}'))
                        .filter(|s| !s.is_empty())
                        .collect();
                    if states == ["!="] || states.is_empty() {
                        m = m.min(Match::Maybe);
                    } else if !states.contains(&"new") {
                        return (Match::No, verdict);
                    }
                } else {
                    m = m.min(Match::Maybe);
                }
            }
            "pkttype" => {
                let (value, next) = value_at(&tokens, i);
                i = next;
                match value.as_slice() {
                    ["multicast"] => {}
                    [_] => return (Match::No, verdict),
                    _ => m = m.min(Match::Maybe),
                }
            }
            // Anything else (addresses, numgen, limit, marks, sets) is
            // something the doctor cannot decide.
            _ => m = m.min(Match::Maybe),
        }
    }
    (m, verdict)
}

/// Reads `nft list ruleset`.
pub(crate) fn read_nft(text: &str, t: &Target<'_>) -> Reading {
    let mut out = Reading::default();
    let mut chains: Vec<Chain> = Vec::new();
    let mut table: Option<(String, String)> = None;
    let mut chain: Option<Chain> = None;
    for raw in text.lines() {
        let line = raw.trim();
        if let Some(current) = chain.as_mut() {
            if line == "}" {
                chains.extend(chain.take());
            } else if let Some(rest) = line.strip_prefix("type ") {
                let words: Vec<&str> = rest
                    .split(|c: char| c.is_whitespace() || c == ';')
                    .filter(|w| !w.is_empty())
                    .collect();
                let hook = words
                    .iter()
                    .position(|w| *w == "hook")
                    .and_then(|p| words.get(p + 1))
                    .copied()
                    .unwrap_or("");
                current.on_path = current.nft.is_some()
                    && matches!(
                        hook,
                        "input" | "output" | "prerouting" | "postrouting" | "ingress" | "egress"
                    );
                current.policy_drop = words.windows(2).any(|w| w[0] == "policy" && w[1] == "drop");
            } else if !line.is_empty() {
                let (m, v) = nft_rule(line, t);
                current.rules.push((line.to_owned(), m, v));
            }
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["table", family, name, "{"] => {
                let applies = match *family {
                    "ip" => !t.ipv6,
                    "ip6" => t.ipv6,
                    "inet" | "netdev" => true,
                    _ => false, // arp, bridge
                };
                table = applies.then(|| ((*family).to_owned(), (*name).to_owned()));
            }
            ["chain", name, "{"] => {
                // A chain of a table of another family is read and ignored:
                // without `nft` it never gets on the path.
                chain = Some(Chain {
                    table: table
                        .as_ref()
                        .map_or_else(String::new, |(f, tn)| format!("{f} {tn}")),
                    name: (*name).to_owned(),
                    label: table.as_ref().map_or_else(String::new, |(f, tn)| {
                        format!("table {f} {tn}, chain {name}")
                    }),
                    nft: table.clone().map(|(f, tn)| (f, tn, (*name).to_owned())),
                    iptables_chain: None,
                    on_path: false,
                    policy_drop: false,
                    rules: Vec::new(),
                });
            }
            _ => {}
        }
    }
    // Chains of tables of another family have no `nft` and are never
    // jumped to from a chain on the path (jumps stay in their table).
    walk_all(&chains, &mut out);
    out
}

/// Judges one `iptables-save` rule (after `-A CHAIN`).
fn iptables_rule(args: &[&str], t: &Target<'_>) -> (Match, Verdict) {
    let mut m = Match::Yes;
    let mut verdict = Verdict::Other;
    let mut neg = false;
    let mut i = 0;
    while i < args.len() {
        let arg = args[i];
        let value = args.get(i + 1).copied().unwrap_or("");
        i += 2;
        match arg {
            "!" => {
                neg = true;
                i -= 1;
                continue;
            }
            "-i" | "--in-interface" | "-o" | "--out-interface" => {
                let eq = match value.strip_suffix('+') {
                    Some(prefix) => t.iface.starts_with(prefix),
                    None => value == t.iface,
                };
                if eq == neg {
                    return (Match::No, verdict);
                }
            }
            "-p" | "--protocol" => match (value, neg) {
                ("udp" | "17", false) => {}
                (_, true) => m = m.min(Match::Maybe),
                _ => return (Match::No, verdict),
            },
            "--dport" | "--destination-port" | "--dports" | "--destination-ports" => {
                let items: Vec<&str> = value.split(',').collect();
                match port_in(&items, t.port) {
                    Some(hit) if hit != neg => {}
                    Some(_) => return (Match::No, verdict),
                    None => m = m.min(Match::Maybe),
                }
            }
            "-m" | "--match" => {
                if !matches!(
                    value,
                    "udp" | "multiport" | "state" | "conntrack" | "comment"
                ) {
                    m = m.min(Match::Maybe);
                }
            }
            "--state" | "--ctstate" => {
                // A one-way multicast flow is always NEW.
                let new = value.split(',').any(|s| s == "NEW");
                if neg {
                    m = m.min(Match::Maybe);
                } else if !new {
                    return (Match::No, verdict);
                }
            }
            "--comment" => {}
            "-j" | "--jump" => {
                verdict = match value {
                    "ACCEPT" => Verdict::Accept,
                    "DROP" | "REJECT" => Verdict::Drop,
                    "RETURN" => Verdict::Return,
                    // A user chain, or a target such as LOG (not a chain:
                    // the walk goes on).
                    _ => Verdict::Jump(value.to_owned()),
                };
            }
            "-g" | "--goto" => verdict = Verdict::Goto(value.to_owned()),
            _ => m = m.min(Match::Maybe),
        }
        neg = false;
    }
    (m, verdict)
}

/// Splits an `iptables-save` line into words, keeping quoted comments
/// whole.
fn words(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = line.trim();
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('"') {
            let end = after.find('"').map_or(after.len(), |e| e + 1);
            out.push(&rest[..=end.min(rest.len() - 1)]);
            rest = rest[(end + 1).min(rest.len())..].trim_start();
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            out.push(&rest[..end]);
            rest = rest[end..].trim_start();
        }
    }
    out
}

/// Reads `iptables-save` (or `ip6tables-save`).
pub(crate) fn read_iptables(text: &str, t: &Target<'_>, tool: &str) -> Reading {
    const BUILT_IN: [&str; 4] = ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"];
    let mut out = Reading::default();
    let mut chains: Vec<Chain> = Vec::new();
    let mut table = String::new();
    let finish = |chains: &mut Vec<Chain>, out: &mut Reading| {
        walk_all(chains, out);
        chains.clear();
    };
    for line in text.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('*') {
            finish(&mut chains, &mut out);
            table = name.to_owned();
        } else if line == "COMMIT" {
            finish(&mut chains, &mut out);
        } else if let Some(decl) = line.strip_prefix(':') {
            let mut w = decl.split_whitespace();
            let (Some(name), Some(policy)) = (w.next(), w.next()) else {
                continue;
            };
            chains.push(Chain {
                table: table.clone(),
                name: name.to_owned(),
                label: format!("{tool} table {table}, chain {name}"),
                nft: None,
                iptables_chain: Some(format!("-t {table} {name}")),
                on_path: BUILT_IN.contains(&name),
                policy_drop: policy == "DROP",
                rules: Vec::new(),
            });
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let w = words(rule);
            let Some((name, args)) = w.split_first() else {
                continue;
            };
            let (m, v) = iptables_rule(args, t);
            if let Some(c) = chains.iter_mut().find(|c| c.name == *name) {
                c.rules.push((line.to_owned(), m, v));
            }
        }
    }
    finish(&mut chains, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LO: Target<'static> = Target {
        iface: "lo",
        ipv6: false,
        port: 7777,
    };
    const ETH: Target<'static> = Target {
        iface: "eth0",
        ipv6: false,
        port: 7777,
    };

    fn nft(rules: &str, policy: &str) -> String {
        format!(
            "table inet filter {{\n\tchain input {{\n\t\ttype filter hook input priority filter; policy {policy};\n{rules}\n\t}}\n}}\n"
        )
    }

    fn sure(r: &Reading) -> Vec<&str> {
        r.findings
            .iter()
            .filter(|f| f.sure)
            .map(|f| f.rule.as_str())
            .collect()
    }

    fn maybe(r: &Reading) -> Vec<&str> {
        r.findings
            .iter()
            .filter(|f| !f.sure)
            .map(|f| f.rule.as_str())
            .collect()
    }

    #[test]
    fn nft_a_drop_of_the_udp_port_is_found_surely() {
        let r = read_nft(
            &nft(
                "\t\tudp dport 7777 counter packets 3 bytes 90 drop",
                "accept",
            ),
            &LO,
        );
        assert_eq!(r.chains, 1);
        assert_eq!(sure(&r), ["udp dport 7777 counter packets 3 bytes 90 drop"]);
        let f = &r.findings[0];
        assert_eq!(f.chain, "table inet filter, chain input");
        assert_eq!(
            f.nft,
            Some(("inet".into(), "filter".into(), "input".into()))
        );
        // A range and a set that hold the port; `reject` counts as a drop.
        for rule in [
            "udp dport 7000-7999 drop",
            "udp dport { 53, 7777 } reject with icmp type port-unreachable",
            "meta l4proto udp drop",
            "drop",
        ] {
            let r = read_nft(&nft(rule, "accept"), &LO);
            assert_eq!(sure(&r), [rule], "{rule}");
        }
    }

    #[test]
    fn nft_rules_for_other_traffic_are_not_findings() {
        for rule in [
            "udp dport 7778 drop",
            "udp dport { 53, 8000-9000 } drop",
            "tcp dport 7777 drop",
            "iifname \"eth0\" drop",
            "ip6 saddr ::1 drop",
            "ct state invalid drop",
            "meta l4proto tcp drop",
            "udp dport != 7777 drop",
        ] {
            let r = read_nft(&nft(rule, "accept"), &LO);
            assert!(r.findings.is_empty(), "{rule}: {r:?}");
        }
    }

    #[test]
    fn nft_partial_matches_are_findings_that_may_drop() {
        // The netns suite's loss rule.
        let rule = "meta l4proto udp numgen random mod 100 < 5 counter packets 0 bytes 0 drop";
        let r = read_nft(&nft(rule, "accept"), &LO);
        assert_eq!(maybe(&r), [rule]);
        assert!(sure(&r).is_empty());
        let r = read_nft(
            &nft("ip saddr 10.0.0.0/8 udp dport 7777 drop", "accept"),
            &LO,
        );
        assert_eq!(maybe(&r).len(), 1);
    }

    #[test]
    fn nft_an_earlier_accept_protects_and_a_policy_drop_is_found() {
        let r = read_nft(
            &nft("\t\tiif \"lo\" accept\n\t\tudp dport 7777 drop", "drop"),
            &LO,
        );
        assert!(r.findings.is_empty(), "{r:?}");
        // The same ruleset on eth0: the drop rule is met first.
        let r = read_nft(
            &nft("\t\tiif \"lo\" accept\n\t\tudp dport 7777 drop", "drop"),
            &ETH,
        );
        assert_eq!(sure(&r), ["udp dport 7777 drop"]);
        // Nothing accepts it: the policy drops it.
        let r = read_nft(
            &nft(
                "\t\tct state established,related accept\n\t\ttcp dport 22 accept",
                "drop",
            ),
            &ETH,
        );
        assert_eq!(sure(&r), ["policy drop"]);
        // An accept that may match leaves only a possible drop.
        let r = read_nft(&nft("\t\tip saddr 192.0.2.0/24 accept", "drop"), &ETH);
        assert_eq!(maybe(&r), ["policy drop"]);
    }

    #[test]
    fn nft_chains_off_the_path_and_tables_of_the_other_family_are_ignored() {
        let text = "table ip6 v6only {\n\tchain input {\n\t\ttype filter hook input priority 0; policy drop;\n\t}\n}\n\
                    table inet t {\n\tchain helper {\n\t\tudp dport 7777 drop\n\t}\n\tchain fwd {\n\t\ttype filter hook forward priority 0; policy drop;\n\t}\n}\n";
        let r = read_nft(text, &LO);
        assert_eq!(r, Reading::default());
        let r = read_nft(text, &Target { ipv6: true, ..LO });
        assert_eq!(r.chains, 1);
        assert_eq!(sure(&r), ["policy drop"]);
    }

    /// An nft table with a base chain `input` whose rules are `rules`, and
    /// other chains as (name, rules).
    fn nft_chains(rules: &str, others: &[(&str, &str)]) -> String {
        let mut t = format!(
            "table inet filter {{\n\tchain input {{\n\t\ttype filter hook input priority filter; policy accept;\n{rules}\n\t}}\n"
        );
        for (name, body) in others {
            t.push_str(&format!("\tchain {name} {{\n{body}\n\t}}\n"));
        }
        t.push_str("}\n");
        t
    }

    /// A drop in a chain that the path jumps (or goes) to is found there;
    /// a `return` before it, an accept before the jump or a jump that
    /// does not match hides it.
    #[test]
    fn nft_jumps_and_gotos_are_followed_into_their_chains() {
        let helper = [(
            "helper",
            "\t\tudp dport 7777 counter packets 0 bytes 0 drop",
        )];
        for jump in ["jump helper", "goto helper", "meta l4proto udp jump helper"] {
            let r = read_nft(&nft_chains(&format!("\t\t{jump}"), &helper), &LO);
            assert_eq!(r.chains, 1);
            assert_eq!(r.jumped_to, 1, "{jump}");
            assert!(r.unfollowed.is_empty());
            assert_eq!(
                sure(&r),
                ["udp dport 7777 counter packets 0 bytes 0 drop"],
                "{jump}"
            );
            let f = &r.findings[0];
            assert_eq!(f.chain, "table inet filter, chain helper");
            assert_eq!(
                f.nft,
                Some(("inet".into(), "filter".into(), "helper".into()))
            );
        }
        for (rules, helper) in [
            ("\t\tudp dport 7777 accept\n\t\tjump helper", helper[0].1),
            ("\t\ttcp dport 22 jump helper", helper[0].1),
            ("\t\tjump helper", "\t\treturn\n\t\tudp dport 7777 drop"),
            ("\t\tjump helper", "\t\tudp dport 7777 accept\n\t\tdrop"),
        ] {
            let r = read_nft(&nft_chains(rules, &[("helper", helper)]), &LO);
            assert!(r.findings.is_empty(), "{rules} / {helper}: {r:?}");
        }
        // After a jump that returns, the base chain goes on; after a goto
        // that ends, it does not (the policy applies).
        let r = read_nft(
            &nft_chains(
                "\t\tjump helper\n\t\tudp dport 7777 drop",
                &[("helper", "\t\tcounter")],
            ),
            &LO,
        );
        assert_eq!(sure(&r), ["udp dport 7777 drop"]);
        let r = read_nft(
            &nft_chains(
                "\t\tgoto helper\n\t\tudp dport 7777 drop",
                &[("helper", "\t\tcounter")],
            ),
            &LO,
        );
        assert!(r.findings.is_empty(), "{r:?}");
        // A jump that may match: what it leads to may drop.
        let r = read_nft(
            &nft_chains("\t\tip saddr 10.0.0.0/8 jump helper", &helper),
            &LO,
        );
        assert_eq!(maybe(&r), ["udp dport 7777 counter packets 0 bytes 0 drop"]);
        // Two levels deep.
        let r = read_nft(
            &nft_chains(
                "\t\tjump a",
                &[("a", "\t\tjump b"), ("b", "\t\tudp dport 7777 drop")],
            ),
            &LO,
        );
        assert_eq!((r.jumped_to, sure(&r)), (2, vec!["udp dport 7777 drop"]));
    }

    /// Loops stop at the depth bound and say so; a missing chain is named.
    #[test]
    fn nft_jump_loops_are_bounded_and_missing_chains_named() {
        let r = read_nft(
            &nft_chains(
                "\t\tjump a",
                &[("a", "\t\tjump b\n\t\tjump b"), ("b", "\t\tjump a")],
            ),
            &LO,
        );
        assert_eq!(r.jumped_to, 2);
        assert!(
            r.unfollowed
                .iter()
                .any(|u| u.ends_with("-> a (too deep)") || u.ends_with("-> b (too deep)")),
            "{r:?}"
        );
        let r = read_nft(&nft_chains("\t\tjump nowhere", &[]), &LO);
        assert_eq!(
            r.unfollowed,
            ["table inet filter, chain input -> nowhere (no such chain)"]
        );
    }

    #[test]
    fn iptables_jumps_to_user_chains_are_followed() {
        let text = "*filter
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:mine - [0:0]
:early - [0:0]
-A INPUT -j LOG --log-prefix x
-A INPUT -p udp -j early
-A INPUT -p udp -j mine
-A early -p tcp -j DROP
-A early -j RETURN
-A early -j DROP
-A mine -p udp --dport 7777 -j DROP
COMMIT
";
        let r = read_iptables(text, &LO, "iptables-save");
        assert_eq!((r.chains, r.jumped_to), (2, 2));
        assert!(r.unfollowed.is_empty(), "{r:?}");
        assert_eq!(sure(&r), ["-A mine -p udp --dport 7777 -j DROP"]);
        assert_eq!(
            r.findings[0].iptables_chain.as_deref(),
            Some("-t filter mine")
        );
        assert_eq!(
            r.findings[0].chain,
            "iptables-save table filter, chain mine"
        );
        let r = read_iptables(
            &text.replace("-j RETURN", "-p udp -j ACCEPT"),
            &LO,
            "iptables-save",
        );
        assert!(r.findings.is_empty(), "{r:?}");
    }

    #[test]
    fn iptables_save_drops_policies_and_accepts() {
        let text = "# Generated by iptables-save
*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:mine - [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
-A INPUT -p udp -m udp --dport 7000:7999 -m comment --comment \"no grapevine\" -j DROP
-A OUTPUT -p udp -m statistic --mode random --probability 0.05 -j DROP
-A mine -j DROP
COMMIT
";
        let r = read_iptables(text, &LO, "iptables-save");
        assert_eq!(r.chains, 2);
        assert!(sure(&r).is_empty());
        assert_eq!(
            maybe(&r),
            ["-A OUTPUT -p udp -m statistic --mode random --probability 0.05 -j DROP"]
        );
        let r = read_iptables(text, &ETH, "iptables-save");
        assert_eq!(
            sure(&r),
            ["-A INPUT -p udp -m udp --dport 7000:7999 -m comment --comment \"no grapevine\" -j DROP"]
        );
        assert_eq!(
            r.findings[0].iptables_chain.as_deref(),
            Some("-t filter INPUT")
        );
        let r = read_iptables(text, &Target { port: 8000, ..ETH }, "iptables-save");
        assert_eq!(sure(&r), ["policy drop"]);
        let r = read_iptables(
            "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT ! -i eth0 -p udp --dport 7777 -j DROP\nCOMMIT\n",
            &LO,
            "iptables-save",
        );
        assert_eq!(sure(&r).len(), 1);
    }
}
