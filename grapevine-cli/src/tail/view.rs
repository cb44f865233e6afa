//! How `grapevine tail` prints a [`Report`]: a table for people, one JSON
//! object per report for programs.

use std::fmt::Write as _;

use super::observer::{Report, StreamReport};

/// Clears a terminal and moves the cursor home (ANSI).
pub(crate) const CLEAR: &str = "\x1b[2J\x1b[H";

/// Column headers and, for each, whether it is right-aligned (numbers).
const COLUMNS: [(&str, bool); 14] = [
    ("STREAM", true),
    ("SESSION", false),
    ("FROM", false),
    ("ALIVE", false),
    ("LAST", true),
    ("DGRAM/S", true),
    ("DELTA/S", true),
    ("RETX/S", true),
    ("SNAP/S", true),
    ("HB/S", true),
    ("DELTAS", true),
    ("SEQ", true),
    ("GAPS", true),
    ("CYCLE", false),
];

fn rate(r: f64) -> String {
    if r >= 100.0 {
        format!("{r:.0}")
    } else {
        format!("{r:.1}")
    }
}

fn row(s: &StreamReport) -> [String; 14] {
    let cycle = match s.cycle {
        Some(c) => format!(
            "#{} {}/{}{}",
            c.id,
            c.seen,
            c.leaves,
            if c.ended { " end" } else { "" }
        ),
        None => "-".to_owned(),
    };
    let gaps = if s.gaps_filled > 0 {
        format!("{} (+{} filled)", s.gaps, s.gaps_filled)
    } else {
        s.gaps.to_string()
    };
    [
        s.stream.to_string(),
        s.session.clone(),
        s.from.clone().unwrap_or_else(|| "-".to_owned()),
        if s.alive { "yes" } else { "no" }.to_owned(),
        format!("{:.1}s", s.last_heard_s),
        rate(s.datagram_rate),
        rate(s.rates.delta),
        rate(s.rates.retransmit),
        rate(s.rates.snapshot),
        rate(s.rates.heartbeat),
        s.counts.delta.to_string(),
        s.latest_seq.to_string(),
        gaps,
        cycle,
    ]
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
    let rows: Vec<[String; 14]> = r.streams.iter().map(row).collect();
    let mut widths = COLUMNS.map(|(h, _)| h.len());
    for cells in &rows {
        for (w, c) in widths.iter_mut().zip(cells) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut line = |cells: [&str; 14]| {
        let mut l = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let (w, right) = (widths[i], COLUMNS[i].1);
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
    line(COLUMNS.map(|(h, _)| h));
    for cells in &rows {
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
        assert_eq!(header, COLUMNS.map(|(h, _)| h));
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
                "0/40"
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
        ] {
            assert!(s.get(f).is_some(), "{f}");
        }
    }
}
