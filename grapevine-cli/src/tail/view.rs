//! How `grapevine tail` prints a [`Report`]: a table for people, one JSON
//! object per report for programs.

use std::fmt::Write as _;

use super::observer::{Auth, Report, StreamReport};

/// Clears a terminal and moves the cursor home (ANSI).
pub(crate) const CLEAR: &str = "\x1b[2J\x1b[H";

/// Column headers, their fixed widths (in characters) and whether each is
/// right-aligned (numbers). The widths never change between redraws: a
/// value that would not fit is abbreviated (`12M`, `3.5h`) or cut with
/// `…`; `--json` has every value whole.
const COLUMNS: [(&str, usize, bool); 15] = [
    ("STREAM", 10, true),
    ("SESSION", 18, false),
    ("FROM", 21, false),
    ("ALIVE", 5, false),
    ("LAST", 6, true),
    ("DGRAM/S", 7, true),
    ("DELTA/S", 7, true),
    ("RETX/S", 6, true),
    ("SNAP/S", 6, true),
    ("HB/S", 6, true),
    ("DELTAS", 8, true),
    ("SEQ", 10, true),
    ("GAPS", 16, true),
    ("CYCLE", 24, false),
    ("AUTH", 12, false),
];

/// `s` in at most `w` characters: cut in the middle with `…` (the end of
/// an address is its port, the end of a number its last digits).
fn fit(s: String, w: usize) -> String {
    let n = s.chars().count();
    if n <= w {
        return s;
    }
    let tail = (w - 1) / 2;
    let head = w - 1 - tail;
    let chars: Vec<char> = s.chars().collect();
    let mut out: String = chars[..head].iter().collect();
    out.push('…');
    out.extend(&chars[n - tail..]);
    out
}

/// A count in at most `w` characters: whole if it fits, else in
/// thousands, millions... (`12k`, `340M`, `18E`).
fn count(n: u64, w: usize) -> String {
    let whole = n.to_string();
    if whole.len() <= w {
        return whole;
    }
    let mut div = 1u64;
    for suffix in ["k", "M", "G", "T", "P", "E"] {
        div *= 1000;
        let s = format!("{}{suffix}", n / div);
        if s.len() <= w {
            return s;
        }
    }
    fit(whole, w)
}

/// A rate per second in at most 6 characters.
fn rate(r: f64) -> String {
    if !r.is_finite() || r < 0.0 {
        "?".to_owned()
    } else if r < 99.95 {
        format!("{r:.1}")
    } else if r < 999_999.5 {
        format!("{r:.0}")
    } else {
        count(r as u64, 6)
    }
}

/// An age in seconds in at most 6 characters: `12.3s`, then minutes,
/// hours, days.
fn age(s: f64) -> String {
    if s < 999.95 {
        format!("{s:.1}s")
    } else if s < 99.5 * 60.0 {
        format!("{:.0}m", s / 60.0)
    } else if s < 99.5 * 3600.0 {
        format!("{:.1}h", s / 3600.0)
    } else {
        format!("{}d", count((s / 86_400.0) as u64, 5))
    }
}

/// How the latest datagram of a row was sealed and checked.
fn auth(a: Option<Auth>) -> &'static str {
    match a {
        None => "-",
        Some(Auth::Plain) => "plain",
        Some(Auth::Unverified) => "unverified",
        Some(Auth::Encrypted) => "encrypted",
        Some(Auth::Verified) => "verified",
        Some(Auth::VerifiedEncrypted) => "verified+enc",
        Some(Auth::Refused) => "refused",
    }
}

fn row(s: &StreamReport) -> [String; 15] {
    let cycle = match s.cycle {
        Some(c) => format!(
            "#{} {}/{}{}",
            count(u64::from(c.id), 7),
            count(u64::from(c.seen), 5),
            count(u64::from(c.leaves), 5),
            if c.ended { " end" } else { "" }
        ),
        None => "-".to_owned(),
    };
    let gaps_w = COLUMNS[12].1;
    let gaps = if s.gaps_filled > 0 {
        let (g, f) = (count(s.gaps, 5), count(s.gaps_filled, 5));
        let long = format!("{g} (+{f} filled)");
        if long.len() <= gaps_w {
            long
        } else {
            format!("{g} (+{f})")
        }
    } else {
        count(s.gaps, gaps_w)
    };
    let cells = [
        s.stream.to_string(),
        s.session.clone(),
        s.from.clone().unwrap_or_else(|| "-".to_owned()),
        if s.alive { "yes" } else { "no" }.to_owned(),
        age(s.last_heard_s),
        rate(s.datagram_rate),
        rate(s.rates.delta),
        rate(s.rates.retransmit),
        rate(s.rates.snapshot),
        rate(s.rates.heartbeat),
        count(s.counts.delta, COLUMNS[10].1),
        count(s.latest_seq, COLUMNS[11].1),
        gaps,
        cycle,
        auth(s.auth.latest).to_owned(),
    ];
    let mut i = 0;
    cells.map(|c| {
        let w = COLUMNS[i].1;
        i += 1;
        fit(c, w)
    })
}

/// The report as a table: a summary line, one row per (stream, session),
/// and a line of undecodable datagrams by reason when there were any.
pub(crate) fn table(r: &Report, heading: &str) -> String {
    let alive = r.streams.iter().filter(|s| s.alive).count();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{heading} | {:.1}s | {} datagrams, {} bytes | {} sessions, {} alive{}",
        r.elapsed_s,
        r.datagrams,
        r.bytes,
        r.streams.len(),
        alive,
        if r.final_report { " | final" } else { "" }
    );
    let mut line = |cells: [&str; 15]| {
        let mut l = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let (_, w, right) = COLUMNS[i];
            if i > 0 {
                l.push_str("  ");
            }
            if right {
                let _ = write!(l, "{cell:>w$}");
            } else {
                let _ = write!(l, "{cell:<w$}");
            }
        }
        let _ = writeln!(out, "{}", l.trim_end());
    };
    line(COLUMNS.map(|(h, _, _)| h));
    for s in &r.streams {
        let cells = row(s);
        line(std::array::from_fn(|i| cells[i].as_str()));
    }
    if r.streams.is_empty() {
        let _ = writeln!(out, "(nothing heard yet)");
    }
    if !r.undecodable.is_empty() || r.evicted > 0 || r.fragments_rejected > 0 {
        let reasons: Vec<String> = r
            .undecodable
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(
            out,
            "undecodable: {} | fragments rejected: {} | sessions evicted: {}",
            if reasons.is_empty() {
                "0".to_owned()
            } else {
                reasons.join(", ")
            },
            r.fragments_rejected,
            r.evicted
        );
    }
    if !r.refused.is_empty() {
        let reasons: Vec<String> = r.refused.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(out, "refused by the key: {}", reasons.join(", "));
    }
    let unchecked = r
        .streams
        .iter()
        .any(|s| s.auth.unverified > 0 || s.auth.encrypted > 0);
    if !r.verifying && unchecked {
        let _ = writeln!(
            out,
            "auth: no --key-file: `unverified` datagrams are read without checking (anyone \
             could have sent them), `encrypted` ones are counted, not read"
        );
    }
    out
}

/// The report as one line of JSON.
pub(crate) fn json(r: &Report) -> serde_json::Result<String> {
    serde_json::to_string(r)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    use grapevine::core::wire::{
        CycleBegin, DatagramHeader, DatagramWriter, Delta, Heartbeat, Message,
    };
    use grapevine::core::{CycleId, SeqNum, SessionId, StreamId};

    use super::*;
    use crate::tail::observer::Observer;

    fn report() -> Report {
        let t0 = Instant::now();
        let mut o = Observer::new(t0);
        let mut buf = vec![0u8; 2000];
        let header = DatagramHeader {
            stream: StreamId(9),
            session: SessionId(0xabc),
            datagram_seq: 0,
        };
        let mut w = DatagramWriter::new(&mut buf, &header).unwrap();
        for m in [
            Message::CycleBegin(CycleBegin {
                cycle: CycleId(3),
                start_seq: SeqNum(0),
                leaf_count: 40,
            }),
            Message::Delta(Delta {
                seq: SeqNum(2),
                prev_leaf_seq: SeqNum(0),
                creates: true,
                removes: false,
                key: b"k",
                payload: b"",
            }),
            Message::Heartbeat(Heartbeat {
                last_seq: SeqNum(2),
                sent_at_micros: 0,
                interval_ms: 100,
            }),
        ] {
            w.push(&m).unwrap();
        }
        let n = w.finish();
        let from: SocketAddr = "127.0.0.1:4242".parse().unwrap();
        o.observe(t0, from, &buf[..n]);
        o.observe(t0, from, b"not grapevine, just some bytes..");
        o.report(t0 + Duration::from_millis(200))
    }

    #[test]
    fn the_table_has_a_summary_a_header_and_a_row_per_session() {
        let text = table(&report(), "grapevine tail 239.255.77.77:7777 on lo");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(
            lines[0].starts_with("grapevine tail 239.255.77.77:7777 on lo | 0.2s | 2 datagrams")
        );
        assert!(lines[0].ends_with("1 sessions, 1 alive"), "{}", lines[0]);
        let header: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(header, COLUMNS.map(|(h, _, _)| h));
        let row: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            row,
            [
                "9",
                "0x0000000000000abc",
                "127.0.0.1:4242",
                "yes",
                "0.2s",
                "5.0",
                "5.0",
                "0.0",
                "0.0",
                "5.0",
                "1",
                "2",
                "1",
                "#3",
                "0/40",
                "plain"
            ]
        );
        // Columns line up: each header ends where its right-aligned
        // numbers end.
        let end = |line: &str, word: &str| line.find(word).unwrap() + word.len();
        assert_eq!(end(lines[1], "STREAM"), end(lines[2], "9"));
        assert_eq!(end(lines[1], "SEQ"), end(lines[2], "  2  ") - 2);
        assert_eq!(
            lines[3],
            "undecodable: bad_magic 1 | fragments rejected: 0 | sessions evicted: 0"
        );
        assert!(!text.contains('\x1b'));
    }

    /// The columns stay where they are from one redraw to the next, however
    /// small or large the values: extreme ones are abbreviated or cut.
    #[test]
    fn column_widths_do_not_change_with_the_values() {
        let small = report();
        let mut big = report();
        {
            let s = &mut big.streams[0];
            s.stream = u32::MAX;
            s.from = Some("[fe80::1234:5678:9abc:def0%4294967295]:65535".to_owned());
            s.last_heard_s = 1e7;
            s.datagram_rate = 12_345_678.9;
            s.rates.delta = 99.97;
            s.rates.retransmit = 1e12;
            s.counts.delta = u64::MAX;
            s.latest_seq = u64::MAX;
            s.gaps = 123_456_789;
            s.gaps_filled = 99_999;
            let c = s.cycle.as_mut().unwrap();
            (c.id, c.leaves, c.seen, c.ended) = (u32::MAX, u32::MAX, 1_000_000, true);
        }
        let (a, b) = (table(&small, "h"), table(&big, "h"));
        let (a, b): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
        assert_eq!(a[1], b[1], "the same header");
        // Every column but the last (left-aligned) starts at the same
        // place in the header and in both rows: two spaces before it.
        let mut at = 0;
        for (i, (h, w, right)) in COLUMNS.iter().enumerate() {
            for line in [a[1], a[2], b[2]] {
                let chars: Vec<char> = line.chars().collect();
                if i > 0 {
                    assert_eq!(&chars[at - 2..at], [' ', ' '], "{h} in {line:?}");
                }
                if *right {
                    assert_ne!(chars[at + w - 1], ' ', "{h} in {line:?}");
                }
            }
            at += w + 2;
        }
        let cells: Vec<&str> = b[2].split_whitespace().collect();
        assert_eq!(cells[0], "4294967295");
        assert_eq!(cells[2], "[fe80::123…295]:65535");
        assert_eq!(
            &cells[4..12],
            [
                "115d",
                "12345k",
                "100",
                "1000G",
                "0.0",
                "5.0",
                "18446P",
                "18446744T"
            ]
        );
        assert_eq!(&cells[12..14], ["123M", "(+99999)"]);
        assert_eq!(&cells[14..], ["#4294M", "1000k/4294M", "end", "plain"]);
        assert!(
            b[2].chars().count() <= a[2].chars().count() + 24,
            "{}",
            b[2]
        );
    }

    /// The AUTH column says how the latest datagram was sealed and
    /// checked; refusals get a line by reason, and without a key a note
    /// says what `unverified` and `encrypted` mean.
    #[test]
    fn auth_shows_per_row_with_refusals_and_a_note_without_a_key() {
        let cell = |r: &Report| {
            let text = table(r, "h");
            let row = text.lines().nth(2).unwrap().to_owned();
            (row.split_whitespace().last().unwrap().to_owned(), text)
        };
        let mut r = report();
        assert_eq!(cell(&r).0, "plain");
        assert!(!cell(&r).1.contains("auth:"), "plain needs no note");
        for (a, shown) in [
            (Auth::Unverified, "unverified"),
            (Auth::Encrypted, "encrypted"),
            (Auth::Verified, "verified"),
            (Auth::VerifiedEncrypted, "verified+enc"),
            (Auth::Refused, "refused"),
        ] {
            r.streams[0].auth.latest = Some(a);
            assert_eq!(cell(&r).0, shown);
        }
        r.streams[0].auth.unverified = 3;
        let (_, text) = cell(&r);
        assert!(
            text.lines().last().unwrap().starts_with(
                "auth: no --key-file: `unverified` datagrams are read without checking"
            ),
            "{text}"
        );
        assert!(!text.contains("refused by the key"));
        r.verifying = true;
        r.refused.insert("unknown_key".to_owned(), 4);
        r.refused.insert("bad_tag".to_owned(), 1);
        let (_, text) = cell(&r);
        assert_eq!(
            text.lines().last(),
            Some("refused by the key: bad_tag 1, unknown_key 4")
        );
        assert!(!text.contains("auth: no --key-file"));
        let v: serde_json::Value = serde_json::from_str(&json(&r).unwrap()).unwrap();
        assert_eq!(v["verifying"], true);
        assert_eq!(v["refused"]["unknown_key"], 4);
        assert_eq!(v["streams"][0]["auth"]["unverified"], 3);
        assert_eq!(v["streams"][0]["auth"]["latest"], "refused");
    }

    #[test]
    fn compact_values_fit_their_width() {
        assert_eq!(count(1234, 8), "1234");
        assert_eq!(count(123_456_789, 8), "123456k");
        assert_eq!(count(123_456_789, 5), "123M");
        assert_eq!(rate(0.04), "0.0");
        assert_eq!(rate(99.94), "99.9");
        assert_eq!(rate(99.96), "100");
        assert_eq!(rate(999_999.0), "999999");
        assert_eq!(rate(f64::NAN), "?");
        assert_eq!(age(0.25), "0.2s");
        assert_eq!(age(999.9), "999.9s");
        assert_eq!(age(1000.0), "17m");
        assert_eq!(age(7200.0), "2.0h");
        assert_eq!(age(1e12), "11Md");
        assert_eq!(fit("abcdefgh".to_owned(), 5), "ab…gh");
        assert_eq!(fit("abc".to_owned(), 5), "abc");
    }

    #[test]
    fn an_empty_report_says_so() {
        let mut r = report();
        r.streams.clear();
        r.undecodable.clear();
        r.final_report = true;
        let text = table(&r, "h");
        assert!(text
            .lines()
            .next()
            .unwrap()
            .ends_with("0 sessions, 0 alive | final"));
        assert_eq!(text.lines().last(), Some("(nothing heard yet)"));
    }

    #[test]
    fn json_is_one_line_with_the_documented_fields() {
        let line = json(&report()).unwrap();
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["final"], false);
        assert_eq!(v["undecodable"]["bad_magic"], 1);
        let s = &v["streams"][0];
        assert_eq!(s["stream"], 9);
        assert_eq!(s["session"], "0x0000000000000abc");
        assert_eq!(s["from"], "127.0.0.1:4242");
        assert_eq!(s["alive"], true);
        assert_eq!(s["counts"]["delta"], 1);
        assert_eq!(s["rates"]["heartbeat"], 5.0);
        assert_eq!(s["latest_seq"], 2);
        assert_eq!(s["gaps"], 1);
        assert_eq!(s["heartbeat_ms"], 100);
        assert_eq!(
            s["cycle"],
            serde_json::json!({"id": 3, "leaves": 40, "seen": 0, "ended": false})
        );
        // Every field the --help text names is there.
        for f in [
            "elapsed_s",
            "window_s",
            "datagrams",
            "bytes",
            "fragments_rejected",
            "evicted",
            "verifying",
            "refused",
        ] {
            assert!(v.get(f).is_some(), "{f}");
        }
        for f in [
            "alive_window_s",
            "first_heard_s",
            "last_heard_s",
            "datagrams",
            "bytes",
            "datagram_rate",
            "byte_rate",
            "datagrams_missed",
            "reassembled",
            "announced_seq",
            "gaps_filled",
            "duplicates",
            "cycles_begun",
            "cycles_complete",
            "auth",
        ] {
            assert!(s.get(f).is_some(), "{f}");
        }
    }
}
