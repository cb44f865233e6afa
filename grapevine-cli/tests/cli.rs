//! Tests of the `grapevine` command, run as a user would run it.

use std::process::Command;

use grapevine::core::state::{decode, digest_of, encode, Digest, Replica, Typed};
use grapevine::core::wire::{Datagram, DatagramWriter};
use grapevine::order_book::{BookDelta, OrderBook, Side};
use grapevine::State;

fn grapevine() -> Command {
    Command::new(env!("CARGO_BIN_EXE_grapevine"))
}

struct Vector {
    name: String,
    hexes: Vec<String>,
    expected: Vec<String>,
    canonical: bool,
}

/// The lines of every block fenced as ```` ```tag ```` in PROTOCOL.md.
fn blocks(tag: &str) -> Vec<Vec<String>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../PROTOCOL.md");
    let text = std::fs::read_to_string(path).expect("PROTOCOL.md is at the repository root");
    let fence = format!("```{tag}");
    let mut out = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in text.lines() {
        match current.as_mut() {
            None if line == fence => current = Some(Vec::new()),
            None => {}
            Some(_) if line == "```" => out.extend(current.take()),
            Some(lines) => lines.push(line.to_owned()),
        }
    }
    assert!(current.is_none(), "unterminated {tag} block");
    out
}

/// The name of a block: its first line, `name: ...`.
fn block_name(lines: &[String]) -> &str {
    let name = lines
        .first()
        .and_then(|l| l.strip_prefix("name: "))
        .unwrap_or_else(|| panic!("block without a first `name:` line: {lines:?}"));
    assert!(!name.is_empty());
    name
}

/// Line tags `grapevine decode` prints (PROTOCOL.md §9).
const OUTPUT_TAGS: [&str; 7] = [
    "header: ",
    "message: ",
    "reassembled: ",
    "reassembled-error: ",
    "fragment-error: ",
    "fragment-duplicate: ",
    "error: ",
];

/// Output lines that name a counter, followed in the output by a human
/// explanation in parentheses.
const COUNTER_TAGS: [&str; 3] = ["error: ", "fragment-error: ", "reassembled-error: "];

/// The ```vector blocks of PROTOCOL.md (§9 and Appendix A).
fn vectors() -> Vec<Vector> {
    let mut out = Vec::new();
    for lines in blocks("vector") {
        let mut v = Vector {
            name: block_name(&lines).to_owned(),
            hexes: Vec::new(),
            expected: Vec::new(),
            canonical: true,
        };
        for line in &lines[1..] {
            if let Some(hex) = line.strip_prefix("hex: ") {
                v.hexes.push(hex.to_owned());
            } else if line == "canonical: no" {
                v.canonical = false;
            } else {
                assert!(
                    OUTPUT_TAGS.iter().any(|t| line.starts_with(t)),
                    "vector {}: line {line:?} is not in the §9 notation",
                    v.name
                );
                v.expected.push(line.clone());
            }
        }
        out.push(v);
    }
    out
}

fn unhex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

#[test]
fn protocol_md_vectors_match_the_decoder() {
    let vectors = vectors();
    assert!(
        vectors.len() >= 30,
        "expected the full vector set, found {}",
        vectors.len()
    );
    for v in &vectors {
        assert!(!v.name.is_empty() && !v.hexes.is_empty() && !v.expected.is_empty());
        let out = grapevine().arg("decode").args(&v.hexes).output().unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        let got: Vec<&str> = stdout.lines().collect();
        let expects_error = v.expected.iter().any(|l| l.starts_with("error: "));
        assert_eq!(
            out.status.success(),
            !expects_error,
            "vector {}: exit status",
            v.name
        );
        assert_eq!(got.len(), v.expected.len(), "vector {}: {got:#?}", v.name);
        for (g, e) in got.iter().zip(&v.expected) {
            if COUNTER_TAGS.iter().any(|t| e.starts_with(t)) {
                // The counter name must match; a human explanation follows it.
                assert!(
                    g.strip_prefix(e.as_str())
                        .is_some_and(|rest| rest.starts_with(" (")),
                    "vector {}: got {g:?}, want {e:?}",
                    v.name
                );
            } else {
                assert_eq!(g, e, "vector {}", v.name);
            }
        }
    }
}

#[test]
fn protocol_md_valid_vectors_reencode_byte_for_byte() {
    let mut checked = 0;
    for v in vectors().iter().filter(|v| v.canonical) {
        for hex in &v.hexes {
            let bytes = unhex(hex);
            let Ok(d) = Datagram::decode(&bytes) else {
                continue;
            };
            let mut buf = vec![0u8; bytes.len()];
            let mut w = DatagramWriter::new(&mut buf, &d.header()).unwrap();
            for m in d.messages() {
                w.push(&m).unwrap();
            }
            let len = w.finish();
            assert_eq!(&buf[..len], &bytes[..], "vector {}", v.name);
            checked += 1;
        }
    }
    assert!(checked >= 8, "only {checked} datagrams re-encoded");
}

#[test]
fn decode_reads_stdin_and_reports_foreign_bytes() {
    use std::io::Write;
    let mut child = grapevine()
        .arg("decode")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"68656c6c6f\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("error: bad_magic"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("some datagrams did not decode"));
}

/// Output into a reader that went away (`| head -1`) ends the command
/// quietly, not with a panic; no input at all is an error, not silence.
#[test]
fn decode_stops_quietly_when_its_reader_goes_away() {
    use std::io::{BufRead, BufReader, Write};
    let line = "47525056 01000000 00000007 01234567 89abcdef 00000000 00000000 \
                06000014 00000000 00000000 00064459 41624000 00000064\n";
    let mut child = grapevine()
        .arg("decode")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        for _ in 0..5_000 {
            if stdin.write_all(line.as_bytes()).is_err() {
                break;
            }
        }
    });
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("header: "), "{first}");
    // The reader is gone now; the decoder meets a closed pipe.
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(0), "{err}");

    let none = grapevine()
        .arg("decode")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(none.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("no datagrams"),
        "{none:?}"
    );
}

#[test]
fn decode_rejects_non_hex_with_a_clear_message() {
    let out = grapevine().args(["decode", "zz"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a hex digit"), "{err}");
}

/// The `name=value` fields of a vector line, in order; every name in
/// `names` must appear exactly once and no other.
fn fields<'a>(line: &'a str, names: &[&str]) -> Vec<&'a str> {
    let tokens: Vec<(&str, &str)> = line
        .split_whitespace()
        .map(|t| {
            t.split_once('=')
                .unwrap_or_else(|| panic!("{t:?} in {line:?} is not name=value"))
        })
        .collect();
    assert_eq!(
        tokens.iter().map(|t| t.0).collect::<Vec<_>>(),
        names,
        "fields of {line:?}"
    );
    tokens.into_iter().map(|t| t.1).collect()
}

/// Bytes written as in the vectors: lowercase hex, or `-` when empty.
fn bytes_of(text: &str) -> Vec<u8> {
    if text == "-" {
        return Vec::new();
    }
    assert!(
        !text.is_empty()
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{text:?} is not lowercase hex"
    );
    unhex(text)
}

#[test]
fn protocol_md_digest_vectors_match_the_library() {
    let blocks = blocks("digest-vector");
    assert!(blocks.len() >= 2, "found {} digest vectors", blocks.len());
    for lines in &blocks {
        let name = block_name(lines);
        let mut leaves = Vec::new();
        let mut expected = None;
        for line in &lines[1..] {
            if let Some(rest) = line.strip_prefix("leaf: ") {
                let f = fields(rest, &["key", "value", "hash"]);
                let (key, value) = (bytes_of(f[0]), bytes_of(f[1]));
                let mut one = Digest::default();
                one.add(&key, &value);
                assert_eq!(one.to_string(), f[2], "{name}: hash of {line:?}");
                leaves.push((key, value));
            } else if let Some(digest) = line.strip_prefix("digest: ") {
                assert!(expected.is_none(), "{name}: two digest lines");
                expected = Some(digest);
            } else {
                panic!("{name}: unexpected line {line:?}");
            }
        }
        let expected = expected.unwrap_or_else(|| panic!("{name}: no digest line"));
        let mut forward = Digest::default();
        for (k, v) in &leaves {
            forward.add(k, v);
        }
        assert_eq!(forward.to_string(), expected, "{name}");
        let mut backward = Digest::default();
        for (k, v) in leaves.iter().rev() {
            backward.add(k, v);
        }
        assert_eq!(
            backward, forward,
            "{name}: the digest depends on leaf order"
        );
        for (k, v) in &leaves {
            forward.remove(k, v);
        }
        assert_eq!(forward, Digest::default(), "{name}");
    }
    assert_eq!(Digest::default().to_string(), "0".repeat(32));
}

/// The ```schema-vector blocks of PROTOCOL.md §4.8: each schema name's
/// fingerprint, and the demo book's and a string map's names as the
/// library derives them.
#[test]
fn protocol_md_schema_vectors_match_the_library() {
    use grapevine::core::schema::{Schema, SchemaFingerprint};
    let blocks = blocks("schema-vector");
    assert!(blocks.len() >= 3, "found {} schema vectors", blocks.len());
    let mut names = Vec::new();
    for lines in &blocks {
        let name = block_name(lines);
        let [schema, fingerprint] = &lines[1..] else {
            panic!("{name}: expected a schema and a fingerprint line: {lines:?}");
        };
        let schema = schema.strip_prefix("schema: ").expect("a schema line");
        let fingerprint = fingerprint
            .strip_prefix("fingerprint: ")
            .expect("a fingerprint line");
        let schema = String::from_utf8(bytes_of(schema)).unwrap();
        assert_eq!(
            SchemaFingerprint::of(&schema).to_string(),
            fingerprint,
            "{name}"
        );
        names.push((name.to_owned(), schema));
    }
    let of = |vector: &str| {
        names
            .iter()
            .find(|(n, _)| n == vector)
            .map(|(_, s)| s.clone())
    };
    assert_eq!(
        of("order-book"),
        Some(Schema::of::<OrderBook>().name().to_owned())
    );
    assert_eq!(
        of("map-of-strings-to-u64"),
        Some(
            Schema::of::<std::collections::BTreeMap<String, u64>>()
                .name()
                .to_owned()
        )
    );
}

fn side_of(text: &str) -> Side {
    match text {
        "bid" => Side::Bid,
        "ask" => Side::Ask,
        other => panic!("{other:?} is not a side"),
    }
}

#[test]
fn protocol_md_book_vectors_match_the_order_book() {
    let blocks = blocks("book-vector");
    assert!(blocks.len() >= 2, "found {} book vectors", blocks.len());
    for lines in &blocks {
        let name = block_name(lines);
        let mut replica = Typed::new(OrderBook::new());
        let mut generated = None;
        // The book of the `level:` lines, once a delta has been applied.
        let mut start: Option<OrderBook> = None;
        let mut last_key: Option<Vec<u8>> = None;
        let mut digests = 0;
        for line in &lines[1..] {
            if let Some(rest) = line.strip_prefix("generated: ") {
                let f = fields(rest, &["levels", "seed"]);
                generated = Some((f[0].parse::<usize>().unwrap(), f[1].parse::<u64>().unwrap()));
            } else if let Some(rest) = line.strip_prefix("level: ") {
                assert!(start.is_none(), "{name}: a level after a delta");
                let f = fields(rest, &["side", "price", "qty", "key", "value"]);
                let level = (side_of(f[0]), f[1].parse::<u64>().unwrap());
                let qty: u64 = f[2].parse().unwrap();
                let (key, value) = (bytes_of(f[3]), bytes_of(f[4]));
                assert_eq!(encode(&level), key, "{name}: key of {line:?}");
                assert_eq!(decode::<(Side, u64)>(&key), Ok(level), "{name}");
                assert_eq!(encode(&qty), value, "{name}: value of {line:?}");
                assert_eq!(decode::<u64>(&value), Ok(qty), "{name}");
                assert!(qty > 0, "{name}: a held level has a positive quantity");
                // Listed in cycle order: strictly increasing key bytes.
                assert!(
                    last_key.as_ref().is_none_or(|k| *k < key),
                    "{name}: {line:?} is out of key order"
                );
                last_key = Some(key.clone());
                replica.install_leaf(&key, Some(&value)).unwrap();
                assert_eq!(replica.state().leaf(&level), Some(&qty), "{name}");
            } else if let Some(rest) = line.strip_prefix("delta: ") {
                start.get_or_insert_with(|| replica.state().clone());
                let f = fields(rest, &["side", "price", "change", "key", "payload", "qty"]);
                let change: i64 = f[2].parse().unwrap();
                let delta = BookDelta::new(side_of(f[0]), f[1].parse().unwrap(), change);
                let (key, payload) = (bytes_of(f[3]), bytes_of(f[4]));
                let after = match f[5] {
                    "absent" => None,
                    qty => Some(qty.parse::<u64>().unwrap()),
                };
                assert_eq!(encode(&delta.level()), key, "{name}: key of {line:?}");
                assert_eq!(
                    Typed::<OrderBook>::encode_delta(&delta),
                    payload,
                    "{name}: payload of {line:?}"
                );
                assert_eq!(decode::<BookDelta>(&payload), Ok(delta), "{name}");
                let present = replica.apply_delta(&key, &payload, false).unwrap();
                assert_eq!(
                    replica.state().quantity(delta.side, delta.price),
                    after,
                    "{name}: {line:?}"
                );
                assert_eq!(present, after.is_some(), "{name}");
            } else if let Some(digest) = line.strip_prefix("digest: ") {
                assert_eq!(digest_of(replica.state()).to_string(), digest, "{name}");
                // The same digest from the encoded leaves, summed by hand.
                let mut d = Digest::default();
                replica.state().for_each_leaf(&mut |level, qty| {
                    d.add(&encode(level), &encode(qty));
                });
                assert_eq!(d, replica.digest(), "{name}");
                digests += 1;
            } else {
                panic!("{name}: unexpected line {line:?}");
            }
        }
        assert!(digests > 0, "{name}: no digest line");
        if let Some((levels, seed)) = generated {
            let start = start.unwrap_or_else(|| replica.state().clone());
            assert_eq!(
                OrderBook::generate(levels, seed),
                start,
                "{name}: the level lines are not the generated book"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Contracts of `demo`, `pub` and `sub` over loopback multicast (no root).
// ---------------------------------------------------------------------------

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
}

#[test]
fn demo_json_shows_every_subscriber_consistent_equal_and_repairing_by_nak() {
    let out = grapevine()
        .args([
            "demo",
            "--port",
            "17401",
            "--leaves",
            "2000",
            "--rate",
            "2000",
            "--subscribers",
            "2",
            "--duration",
            "1",
            "--loss",
            "0.05",
            "--json",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json(stdout.trim());
    let publisher = &v["publisher"];
    let subs = v["subscribers"].as_array().unwrap();
    assert_eq!(subs.len(), 2);
    for s in subs {
        assert_eq!(s["consistent"], true, "{s}");
        assert_eq!(s["digest"], publisher["digest"], "{s}");
        assert_eq!(s["seq"], publisher["seq"], "{s}");
        assert!(s["simulated_drops"].as_u64().unwrap() > 0, "{s}");
        assert!(s["repaired_by_nak"].as_u64().unwrap() > 0, "{s}");
        assert!(s["naks_sent"].as_u64().unwrap() > 0, "{s}");
        let share = s["consistent_share"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&share), "{s}");
        assert!(s.get("repaired_by_snapshot").is_some() && s.get("repair_p99_ms").is_some());
    }
    assert!(
        publisher["retransmits"].as_u64().unwrap() > 0,
        "{publisher}"
    );
}

#[test]
fn pub_and_sub_as_processes_agree_on_the_digest_and_report_repair() {
    let net = ["--port", "17402", "--stream", "4"];
    let sub = grapevine()
        .arg("sub")
        .args(net)
        .args([
            "--until-seq",
            "3000",
            "--json",
            "--timeout",
            "30",
            "--loss",
            "0.05",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The publisher lingers until told to stop: SIGTERM ends it with its
    // final line.
    let publisher = grapevine()
        .arg("pub")
        .args(net)
        .args([
            "--leaves", "1000", "--deltas", "3000", "--rate", "6000", "--linger", "30",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let sub = sub.wait_with_output().unwrap();
    let term = Command::new("kill")
        .args(["-TERM", &publisher.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let publisher = publisher.wait_with_output().unwrap();
    assert!(publisher.status.success(), "{:?}", publisher.status);
    let sub_out = String::from_utf8_lossy(&sub.stdout);
    assert!(
        sub.status.success(),
        "{sub_out} {}",
        String::from_utf8_lossy(&sub.stderr)
    );
    let pub_out = String::from_utf8_lossy(&publisher.stdout);
    let lines: Vec<_> = pub_out.lines().collect();
    assert_eq!(lines.len(), 2, "{pub_out}");
    let (state, last) = (json(lines[0]), json(lines[1]));
    let s = json(sub_out.trim());
    assert_eq!(state["seq"], 3000);
    assert_eq!(s["seq"], 3000, "{s}");
    assert_eq!(s["digest"], state["digest"]);
    assert_eq!(s["session"], state["session"]);
    assert_eq!(s["consistent"], true);
    assert_eq!(last["final"], true);
    assert_eq!(last["digest"], state["digest"]);
    assert!(s["repaired_by_nak"].as_u64().unwrap() > 0, "{s}");
    assert!(last["naks_received"].as_u64().unwrap() > 0, "{last}");
    assert!(last["retransmits"].as_u64().unwrap() > 0, "{last}");
}

/// Values out of range are refused at once, with a message that names the
/// flag and what to use, and never a panic or a silent run.
#[test]
fn bad_repair_flags_are_refused_with_a_reason() {
    for args in [
        &["pub", "--value-size", "99999999"][..],
        &["sub", "--value-size", "99999999"][..],
        &["pub", "--linger", "nan"][..],
        &["pub", "--snapshot-bytes-rate", "0", "--value-size", "10"][..],
        &["sub", "--timeout", "1e300"][..],
        // Found by the [operations] review: each panicked, hung silently
        // or was quietly changed.
        &["demo", "--duration", "1e300"][..],
        &["demo", "--duration", "nan"][..],
        &["demo", "--settle-timeout", "1e300"][..],
        &["demo", "--subscribers", "18446744073709551615"][..],
        &["demo", "--leaves", "18446744073709551615"][..],
        &["demo", "--rate", "18446744073709551615"][..],
        &["pub", "--leaves", "18446744073709551615"][..],
        &["pub", "--rate", "18446744073709551615", "--deltas", "1"][..],
        &["pub", "--heartbeat-ms", "0"][..],
        &["pub", "--heartbeat-ms", "18446744073709551615"][..],
        &["decode", "+1+1"][..],
        &["sub", "--interface", "nosuch0", "--timeout", "1"][..],
        &["sub", "--interface", "999", "--timeout", "1"][..],
        // The CPUs grapevine bench pins its fan-out subscribers to.
        &["bench-sub", "--cpus", "99999"][..],
    ] {
        let out = grapevine().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("error: "), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        // Written for a command line, not for the library's API.
        assert!(!err.contains("Interface::"), "{args:?}: {err}");
    }
}

/// `bench --mode latency-raw`, the bare-socket baseline of the latency
/// measure, as a user runs it: a bare sender, a `bench-sub --stamped`
/// process waiting as each driver does; every datagram sent is received
/// and timed. With `--relay` it is refused with a reason.
#[test]
fn bench_latency_raw_times_every_datagram_it_sends() {
    for driver in ["tokio", "busy-poll"] {
        let out = grapevine()
            .args(["bench", "--mode", "latency-raw", "--driver", driver])
            .args([
                "--duration",
                "0.5",
                "--rate",
                "2000",
                "--port",
                "17450",
                "--json",
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{driver}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(r["all_consistent"], true, "{driver}: {r}");
        let sent = r["deltas_published"].as_u64().unwrap();
        assert!(sent >= 500, "{driver}: {r}");
        let (p50, p99) = (r["p50_us"].as_f64().unwrap(), r["p99_us"].as_f64().unwrap());
        assert!(p50 > 0.0 && p50 <= p99, "{driver}: {r}");
    }
    let out = grapevine()
        .args(["bench", "--mode", "latency-raw", "--relay", "quic"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--relay: latency-raw measures bare sockets"),
        "{err}"
    );
}

/// `sub --until-seq` beyond what the publisher sends ends once the
/// publisher has gone silent (and no other took its place), not at its
/// timeout, and says why: on standard output the JSON line with
/// `outcome: publisher_gone` and `publisher_alive: false`, on standard error
/// the reason; exit 1. Follow-mode and final lines carry `publisher_alive`.
#[test]
fn until_seq_ends_with_a_reason_when_the_publisher_is_gone() {
    let net = ["--port", "17403", "--stream", "5"];
    let sub = grapevine()
        .arg("sub")
        .args(net)
        .args(["--until-seq", "1000000", "--json", "--timeout", "600"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let publisher = grapevine()
        .arg("pub")
        .args(net)
        .args([
            "--leaves", "100", "--deltas", "100", "--rate", "1000", "--linger", "2",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(publisher.success());
    let sub = sub.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&sub.stderr);
    assert_eq!(sub.status.code(), Some(1), "{err}");
    let s = json(String::from_utf8_lossy(&sub.stdout).trim());
    assert_eq!(s["outcome"], "publisher_gone", "{s}");
    assert_eq!(s["publisher_alive"], false, "{s}");
    assert_eq!(s["seq"], 100, "{s}");
    assert_eq!(s["consistent"], true, "{s}");
    assert!(err.contains("went silent at seq 100"), "{err}");
}

/// A publisher announcing another schema (`pub --schema`): `sub` does not
/// decode its stream as an order book but says so in one line naming both
/// schemas and their fingerprints, and exits 1: with `--until-seq` at once
/// (`outcome: schema_mismatch`, not a timeout), and when following too.
#[test]
fn sub_of_another_schema_names_both_and_exits_1() {
    for (port, until) in [("17530", true), ("17531", false)] {
        let net = ["--port", port, "--stream", "7"];
        let mut c = grapevine();
        c.arg("sub").args(net).args(["--json", "--timeout", "60"]);
        if until {
            // Beyond what the publisher reaches in its run: a subscriber
            // uses the stream until the second StreamInfo proves the
            // mismatch (about two heartbeat intervals, PROTOCOL.md §8.2),
            // and could otherwise reach a low target meanwhile.
            c.args(["--until-seq", "1000000"]);
        }
        let sub = c
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut publisher = grapevine()
            .arg("pub")
            .args(net)
            .args(["--schema", "acme.prices/2", "--leaves", "100"])
            .args(["--deltas", "1000000", "--rate", "1000"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        let sub = sub.wait_with_output().unwrap();
        let _ = publisher.kill();
        let _ = publisher.wait();
        let err = String::from_utf8_lossy(&sub.stderr);
        assert_eq!(sub.status.code(), Some(1), "{err}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "not a timeout: {err}"
        );
        let mismatch: Vec<_> = err
            .lines()
            .filter(|l| l.contains("schema mismatch"))
            .collect();
        assert_eq!(mismatch.len(), 1, "{err}");
        assert!(
            mismatch[0].contains("expects grapevine.demo.order_book/1 (66bd64a5d7082228)")
                && mismatch[0].contains("sends acme.prices/2 ("),
            "{err}"
        );
        if until {
            let s = json(String::from_utf8_lossy(&sub.stdout).trim());
            assert_eq!(s["outcome"], "schema_mismatch", "{s}");
            assert_eq!(s["leaves"], 0, "{s}");
        }
    }
}

/// SIGINT or SIGTERM ends `sub` with a last line, `outcome: interrupted`:
/// exit 1 below `--until-seq` (the target was not reached), 0 when
/// following.
#[test]
fn sub_ends_with_a_last_line_on_sigint_and_sigterm() {
    use std::io::{BufRead as _, BufReader, Read as _};
    for (signal, until, code) in [("INT", true, 1), ("TERM", false, 0)] {
        let mut c = grapevine();
        c.args(["-v", "sub", "--port", "17406", "--json", "--timeout", "30"]);
        if until {
            c.args(["--until-seq", "1000"]);
        }
        let mut sub = c
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = BufReader::new(sub.stderr.take().unwrap());
        let mut line = String::new();
        err.read_line(&mut line).unwrap();
        assert!(line.contains("subscriber started"), "{line}");
        let killed = Command::new("kill")
            .args([format!("-{signal}"), sub.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let mut out = String::new();
        sub.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        let status = sub.wait().unwrap();
        assert_eq!(status.code(), Some(code), "SIG{signal}: {out}");
        let last = json(out.lines().last().unwrap_or_default());
        assert_eq!(last["outcome"], "interrupted", "SIG{signal}: {out}");
    }
}

/// Two publishers on one group, port and stream: the subscriber warns,
/// keeps following one session, and its JSON lines count the other.
#[test]
fn a_second_publisher_on_the_stream_is_reported() {
    let net = ["--port", "17404", "--stream", "6"];
    let sub = grapevine()
        .arg("sub")
        .args(net)
        .args(["--json", "--timeout", "4"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let publisher = |seed: &str| {
        grapevine()
            .arg("pub")
            .args(net)
            .args([
                "--leaves", "100", "--deltas", "10", "--linger", "3.5", "--seed", seed,
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let (mut a, mut b) = (publisher("1"), publisher("2"));
    let sub = sub.wait_with_output().unwrap();
    assert!(a.wait().unwrap().success() && b.wait().unwrap().success());
    let err = String::from_utf8_lossy(&sub.stderr);
    assert_eq!(
        err.matches("another publisher is sending on this stream")
            .count(),
        1,
        "{err}"
    );
    assert!(err.contains("WARN"), "logged as a warning: {err}");
    assert!(
        err.contains("subscriber{stream=6}: another publisher"),
        "the line names its subscriber: {err}"
    );
    let lines: Vec<_> = String::from_utf8_lossy(&sub.stdout)
        .lines()
        .map(json)
        .collect();
    assert!(lines.iter().any(|l| l["other_sessions"] == 1), "{lines:?}");
    let sessions: std::collections::BTreeSet<_> =
        lines.iter().filter_map(|l| l["session"].as_str()).collect();
    assert_eq!(sessions.len(), 1, "one session followed: {lines:?}");
}

/// Logs: warnings by default; `-v` adds info lines (here the subscriber's
/// start), `-q` removes warnings, and `RUST_LOG` decides when set.
#[test]
fn verbosity_flags_and_rust_log_choose_the_log_lines() {
    let run = |args: &[&str], rust_log: Option<&str>| {
        let mut c = grapevine();
        c.args(["sub", "--port", "17405", "--timeout", "0.5"])
            .args(args);
        c.env_remove("RUST_LOG");
        if let Some(spec) = rust_log {
            c.env("RUST_LOG", spec);
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(!run(&[], None).contains("subscriber started"));
    assert!(run(&["-v"], None).contains("INFO"));
    assert!(run(&["-v"], None).contains("subscriber started"));
    assert!(!run(&["-v", "-q"], None).contains("subscriber started"));
    assert!(run(&[], Some("grapevine=info")).contains("subscriber started"));
    assert!(!run(&["-v"], Some("off")).contains("subscriber started"));
    // -qq: nothing at all on standard error, not even the reason of a
    // failure (the exit code tells); -q keeps that reason.
    let quiet = |flag: &str| {
        let out = grapevine()
            .args([
                flag,
                "sub",
                "--port",
                "17405",
                "--until-seq",
                "5",
                "--timeout",
                "0.3",
            ])
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(quiet("-q").contains("timed out"));
    assert_eq!(quiet("-qq"), "");
    // A TTL that crosses routers is warned about; 1 is not.
    let ttl = |t: &str| {
        let out = grapevine()
            .args(["sub", "--port", "17405", "--ttl", t, "--timeout", "0.2"])
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(ttl("2").contains("--ttl 2 lets the stream cross up to 1 router(s)"));
    assert!(!ttl("1").contains("--ttl"));
}

mod metrics {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    use std::net::TcpStream;
    use std::process::{Child, Stdio};
    use std::time::{Duration, Instant};

    use super::grapevine;

    /// Starts `grapevine ARGS --metrics 127.0.0.1:0` and returns it with
    /// the address it serves metrics on (its first line on stderr).
    /// With `-v`, it returns once the command logged that it started (a
    /// subscriber has joined the group then).
    fn with_metrics(args: &[&str]) -> (Child, String) {
        let mut child = grapevine()
            .arg("-v")
            .args(args)
            .args(["--metrics", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        err.read_line(&mut line).unwrap();
        let mut started = String::new();
        while !started.contains(" started") {
            started.clear();
            assert!(err.read_line(&mut started).unwrap() > 0, "it never started");
        }
        // The rest is drained, so the child never writes to a closed pipe.
        std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
        let addr = line
            .trim()
            .strip_prefix("metrics: http://")
            .and_then(|a| a.strip_suffix("/metrics"))
            .unwrap_or_else(|| panic!("no metrics address: {line:?}"))
            .to_owned();
        (child, addr)
    }

    /// One scrape: the status line and the body.
    fn scrape(addr: &str, path: &str) -> (String, String) {
        let mut conn = TcpStream::connect(addr).unwrap();
        write!(conn, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
        let mut reply = String::new();
        conn.read_to_string(&mut reply).unwrap();
        let (head, body) = reply.split_once("\r\n\r\n").unwrap();
        (head.lines().next().unwrap().to_owned(), body.to_owned())
    }

    /// The value of the sample `name` (labels included, as rendered).
    fn sample(page: &str, name: &str) -> Option<f64> {
        page.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Scrapes until every `(name, value)` of `want` reads so (metrics are
    /// recorded once a second) or 15 s have passed; returns the last page.
    fn scrape_until(addr: &str, want: &[(&str, f64)]) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (status, page) = scrape(addr, "/metrics");
            assert_eq!(status, "HTTP/1.1 200 OK");
            let all = want.iter().all(|(n, v)| sample(&page, n) == Some(*v));
            if all || Instant::now() > deadline {
                return page;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `pub` and `sub` with `--metrics` serve Prometheus text at /metrics:
    /// every name prefixed `grapevine_`, counters and gauges that match
    /// what was published, drops by reason, and the sync-time histogram.
    #[test]
    fn pub_and_sub_serve_their_counters_to_a_scrape() {
        let net = ["--port", "17430", "--stream", "11"];
        let (mut sub, sub_addr) =
            with_metrics(&[&["sub"][..], &net, &["--timeout", "30"]].concat());
        let (mut publisher, pub_addr) = with_metrics(
            &[
                &["pub"][..],
                &net,
                &[
                    "--leaves", "100", "--deltas", "200", "--rate", "1000", "--linger", "30",
                ],
            ]
            .concat(),
        );
        let s = |name: &str| format!("grapevine_subscriber_{name}{{stream=\"11\"}}");
        let page = scrape_until(&sub_addr, &[(&s("seq"), 200.0), (&s("consistent"), 1.0)]);
        let pub_page = scrape_until(
            &pub_addr,
            &[(
                "grapevine_publisher_messages_total{stream=\"11\",kind=\"delta\"}",
                200.0,
            )],
        );
        let not_found = scrape(&sub_addr, "/").0;
        let _ = (sub.kill(), publisher.kill(), sub.wait(), publisher.wait());
        assert_eq!(not_found, "HTTP/1.1 404 Not Found");

        // Every delta heard (the first datagram of a session is only
        // heard, so one may have come again by NAK); most applied, the
        // rest covered by newer snapshots.
        let kind = |k: &str| {
            sample(
                &page,
                &format!("grapevine_subscriber_messages_total{{stream=\"11\",kind=\"{k}\"}}"),
            )
            .unwrap()
        };
        assert!(kind("delta") + kind("retransmit") >= 200.0, "{page}");
        assert!(kind("leaf_snapshot") > 0.0, "{page}");
        let applied = sample(&page, &s("deltas_applied_total")).unwrap();
        assert!((1.0..=200.0).contains(&applied), "{page}");
        assert_eq!(sample(&page, &s("seq")), Some(200.0), "{page}");
        assert_eq!(sample(&page, &s("consistent")), Some(1.0), "{page}");
        assert_eq!(sample(&page, &s("publisher_alive")), Some(1.0), "{page}");
        assert_eq!(sample(&page, &s("syncs_total")), Some(1.0), "{page}");
        assert_eq!(sample(&page, &s("sync_seconds_count")), Some(1.0), "{page}");
        assert!(sample(&page, &s("datagrams_total")).unwrap() > 0.0);
        assert_eq!(
            sample(
                &page,
                "grapevine_subscriber_dropped_total{stream=\"11\",reason=\"foreign_stream\"}"
            ),
            Some(0.0),
            "{page}"
        );
        assert!(page.contains("# TYPE grapevine_subscriber_sync_seconds histogram"));
        assert_eq!(
            sample(&pub_page, "grapevine_publisher_seq{stream=\"11\"}"),
            Some(200.0),
            "{pub_page}"
        );
        for p in [&page, &pub_page] {
            for l in p.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
                assert!(l.starts_with("grapevine_"), "{l}");
            }
            // Every metric is described.
            for family in p.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
                let name = family.split(' ').next().unwrap();
                assert!(p.contains(&format!("# HELP {name} ")), "no help for {name}");
            }
        }
    }

    /// Malformed datagrams are logged as a warning by reason, one line per
    /// second at most however many arrive, with their count; NAK repair is
    /// logged at debug (`-vv`).
    #[test]
    fn malformed_datagrams_are_logged_by_reason_at_most_once_a_second() {
        let mut sub = grapevine()
            .args(["-v", "sub", "--port", "17432", "--timeout", "2.5"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = BufReader::new(sub.stderr.take().unwrap());
        let mut line = String::new();
        err.read_line(&mut line).unwrap();
        assert!(line.contains("subscriber started"), "{line}");
        for _ in 0..50 {
            super::tail::send_to_group(17432, b"not grapevine");
        }
        let mut rest = String::new();
        err.read_to_string(&mut rest).unwrap();
        assert!(sub.wait().unwrap().success());
        let lines: Vec<&str> = rest
            .lines()
            .filter(|l| l.contains("malformed datagrams dropped"))
            .collect();
        // A run of 2.5 s: three summaries at most, however many datagrams.
        assert!((1..=3).contains(&lines.len()), "{rest}");
        let counted: u64 = lines
            .iter()
            .map(|l| {
                assert!(
                    l.contains("WARN") && l.contains("reason=\"bad_magic\""),
                    "{l}"
                );
                let n = l.split("count=").nth(1).unwrap().split(' ').next().unwrap();
                n.parse::<u64>().unwrap()
            })
            .sum();
        assert_eq!(counted, 50, "{rest}");
    }

    /// A `--metrics` address that cannot be listened on is refused at
    /// start, naming the flag.
    #[test]
    fn a_metrics_address_in_use_is_refused() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let out = grapevine()
            .args([
                "sub",
                "--port",
                "17431",
                "--timeout",
                "1",
                "--metrics",
                &addr,
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!("--metrics {addr}: cannot listen")),
            "{err}"
        );
        let out = grapevine()
            .args(["sub", "--metrics", "localhost"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("--metrics"));
    }
}

// ---------------------------------------------------------------------------
// `grapevine tail` (ports 17410-17419).
// ---------------------------------------------------------------------------

mod tail {
    use super::*;

    use std::io::{BufRead, BufReader, Read};
    use std::process::{Child, ChildStderr, Stdio};
    use std::time::{Duration, Instant};

    /// A child process that is killed if the test fails before it ends.
    struct Reaped(Child);

    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    impl Reaped {
        /// Waits at most `limit` for the process to end; kills it and
        /// fails the test if it does not.
        fn wait_within(&mut self, limit: Duration) -> std::process::ExitStatus {
            let deadline = Instant::now() + limit;
            loop {
                if let Some(status) = self.0.try_wait().unwrap() {
                    return status;
                }
                assert!(
                    Instant::now() < deadline,
                    "still running after {limit:?}: killed"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }

        fn read_all(r: Option<impl Read>) -> String {
            let mut s = String::new();
            if let Some(mut r) = r {
                r.read_to_string(&mut s).unwrap();
            }
            s
        }
    }

    /// Starts `grapevine tail` and returns once it listens (its first line
    /// on standard error says so), with that standard error.
    fn start(args: &[&str]) -> (Reaped, BufReader<ChildStderr>) {
        let mut child = Reaped(
            grapevine()
                .arg("tail")
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let mut err = BufReader::new(child.0.stderr.take().unwrap());
        let mut first = String::new();
        err.read_line(&mut first).unwrap();
        assert!(first.ends_with(": listening\n"), "{first:?}");
        (child, err)
    }

    /// Sends `bytes` to the group on `port` from this process (loopback,
    /// TTL 0, like every test here).
    pub(super) fn send_to_group(port: u16, bytes: &[u8]) {
        let mut config = grapevine::socket::MulticastConfig::default();
        config.port(port);
        let sender = grapevine::socket::bind_sender(&config).unwrap();
        sender.socket().send_to(bytes, config.group_addr()).unwrap();
    }

    /// A publisher's whole run as `tail --json` sees it: its stream and
    /// session, every delta once and the latest seq, no gap, complete
    /// snapshot cycles of its leaves, its heartbeat interval, alive while
    /// it runs; and a foreign datagram counted as undecodable.
    #[test]
    fn tail_json_shows_a_publishers_stream_session_deltas_and_cycles() {
        let (mut tail, _err) = start(&["--port", "17410", "--json", "--duration", "3"]);
        let publisher = grapevine()
            .arg("pub")
            .args(["--port", "17410", "--stream", "9"])
            .args([
                "--leaves", "100", "--deltas", "200", "--rate", "1000", "--linger", "1",
            ])
            .stderr(Stdio::null())
            .output()
            .unwrap();
        assert!(publisher.status.success(), "{publisher:?}");
        let pub_line = json(
            String::from_utf8_lossy(&publisher.stdout)
                .lines()
                .next()
                .unwrap(),
        );
        send_to_group(17410, b"not a grapevine datagram, only bytes");

        let status = tail.wait_within(Duration::from_secs(20));
        let out = Reaped::read_all(tail.0.stdout.take());
        assert!(status.success(), "{status:?} {out}");
        let lines: Vec<serde_json::Value> = out.lines().map(json).collect();
        assert!(lines.len() >= 2, "{out}");
        let (last, before) = lines.split_last().unwrap();
        assert_eq!(last["final"], true, "{last}");
        assert!(before.iter().all(|l| l["final"] == false), "{out}");

        let streams = last["streams"].as_array().unwrap();
        assert_eq!(streams.len(), 1, "one stream, one session: {last}");
        let s = &streams[0];
        assert_eq!(s["stream"], 9);
        assert_eq!(s["session"], pub_line["session"]);
        assert!(s["from"].as_str().unwrap().starts_with("127.0.0.1:"), "{s}");
        assert_eq!(s["latest_seq"], 200, "{s}");
        assert_eq!(s["announced_seq"], 200, "{s}");
        assert_eq!(s["counts"]["delta"], 200, "{s}");
        assert_eq!(s["counts"]["retransmit"], 0, "nobody NAKed: {s}");
        assert_eq!(s["gaps"], 0, "{s}");
        assert_eq!(s["duplicates"], 0, "{s}");
        assert_eq!(s["heartbeat_ms"], 100, "{s}");
        assert!(s["counts"]["heartbeat"].as_u64().unwrap() >= 1, "{s}");
        let leaves = &pub_line["leaves"];
        assert!(leaves.as_u64().unwrap() > 50, "{pub_line}");
        assert!(
            s["counts"]["snapshot"].as_u64().unwrap() >= leaves.as_u64().unwrap(),
            "{s}"
        );
        assert!(s["cycles_complete"].as_u64().unwrap() >= 1, "{s}");
        assert_eq!(&s["cycle"]["leaves"], leaves, "{s}");
        assert_eq!(s["datagrams_missed"], 0, "{s}");
        assert!(
            lines.iter().any(|l| l["streams"][0]["alive"] == true),
            "alive while it published: {out}"
        );
        assert_eq!(last["undecodable"]["bad_magic"], 1, "{last}");
        assert_eq!(
            last["datagrams"].as_u64().unwrap(),
            s["datagrams"].as_u64().unwrap() + 1,
            "{last}"
        );
    }

    /// `tail --json | head -1`: once the reader has gone, the next report
    /// meets a closed pipe and tail ends quietly with exit 0.
    #[test]
    fn tail_stops_quietly_when_its_reader_goes_away() {
        let (mut tail, mut err) = start(&[
            "--port",
            "17411",
            "--json",
            "--interval",
            "0.1",
            "--duration",
            "60",
        ]);
        let mut first = String::new();
        BufReader::new(tail.0.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert_eq!(json(&first)["final"], false, "{first}");
        // The reader is dropped here: the pipe is closed.
        let status = tail.wait_within(Duration::from_secs(10));
        let mut rest = String::new();
        err.read_to_string(&mut rest).unwrap();
        assert!(!rest.contains("panicked"), "{rest}");
        assert_eq!(status.code(), Some(0), "{rest}");
    }

    /// Without `--json` and not on a terminal: a plain table per report,
    /// with no escape sequences, the last one marked final.
    #[test]
    fn tail_prints_plain_tables_when_not_on_a_terminal() {
        let (mut tail, _err) =
            start(&["--port", "17412", "--interval", "0.2", "--duration", "0.5"]);
        send_to_group(17412, b"GRPV");
        let status = tail.wait_within(Duration::from_secs(10));
        let out = Reaped::read_all(tail.0.stdout.take());
        assert!(status.success(), "{out}");
        assert!(!out.contains('\x1b'), "{out:?}");
        let headings: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("grapevine tail 239.255.77.77:17412 on lo | "))
            .collect();
        assert!(headings.len() >= 2, "{out}");
        assert!(headings.last().unwrap().ends_with(" | final"), "{out}");
        assert!(out.contains("STREAM  SESSION"), "{out}");
        assert!(out.contains("undecodable: short_header 1"), "{out}");
    }

    /// `--duration` a multiple of `--interval`: the report due at the end is
    /// the final one; no report has rates over a window of ~0 s.
    #[test]
    fn tail_ending_on_an_interval_gives_one_final_report_over_a_real_window() {
        let (mut tail, _err) = start(&[
            "--port",
            "17500",
            "--json",
            "--interval",
            "0.25",
            "--duration",
            "0.75",
        ]);
        let status = tail.wait_within(Duration::from_secs(10));
        let out = Reaped::read_all(tail.0.stdout.take());
        assert!(status.success(), "{out}");
        let lines: Vec<serde_json::Value> = out.lines().map(json).collect();
        assert!((1..=3).contains(&lines.len()), "{out}");
        let (last, before) = lines.split_last().unwrap();
        assert_eq!(last["final"], true, "{out}");
        assert!(before.iter().all(|l| l["final"] == false), "{out}");
        assert!(last["elapsed_s"].as_f64().unwrap() >= 0.7, "{out}");
        for l in &lines {
            let w = l["window_s"].as_f64().unwrap();
            assert!(w >= 0.025 - 1e-6, "a window of {w} s: {out}");
        }
    }

    /// Out-of-range numbers are refused at once, naming the flag, without
    /// a panic.
    #[test]
    fn tail_refuses_bad_flags_with_a_reason() {
        for args in [
            &["--interval", "0"][..],
            &["--interval", "nan"][..],
            &["--interval", "1e300"][..],
            &["--interval", "-1"][..],
            &["--interval", "3601"][..],
            &["--duration", "-1"][..],
            &["--duration", "0"][..],
            &["--duration", "inf"][..],
            &["--duration", "1e300"][..],
            &["--interval", "soon"][..],
        ] {
            let start = Instant::now();
            let out = grapevine()
                .arg("tail")
                .args(["--port", "17413"])
                .args(args)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                matches!(out.status.code(), Some(1 | 2)),
                "{args:?}: {:?} {err}",
                out.status
            );
            assert!(err.starts_with("error: "), "{args:?}: {err}");
            assert!(err.contains(args[0]), "{args:?}: {err}");
            assert!(!err.contains("panicked"), "{args:?}: {err}");
            assert!(start.elapsed() < Duration::from_secs(5), "{args:?}");
        }
        let out = grapevine()
            .args(["tail", "--port", "17413", "--interface", "nosuch0"])
            .args(["--duration", "1"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("nosuch0") && !err.contains("Interface::"),
            "{err}"
        );
    }
}

mod doctor {
    use super::*;

    fn doctor(args: &[&str]) -> std::process::Output {
        grapevine().arg("doctor").args(args).output().unwrap()
    }

    fn check<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no check {name}: {report}"))
    }

    /// On loopback this host passes: the join is listed and the probe is
    /// heard. Warnings (a route through another interface) are allowed.
    #[test]
    fn doctor_on_loopback_passes_with_the_probe_heard() {
        let out = doctor(&["--port", "17420", "--group", "239.255.74.20", "--json"]);
        assert!(out.status.success(), "{out:?}");
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert_eq!(stdout.lines().count(), 1, "one JSON object: {stdout}");
        let r = json(&stdout);
        assert_eq!(r["group"], "239.255.74.20");
        assert_eq!(r["port"], 17420);
        assert_eq!(r["interface"], "loopback");
        assert_eq!(r["resolved"], "lo");
        assert_eq!(r["ok"], true);
        assert_eq!(r["failed"], 0);
        let names: Vec<&str> = r["checks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "group",
                "interface",
                "route",
                "rp_filter",
                "rmem_max",
                "wmem_max",
                "firewall",
                "join",
                "probe"
            ]
        );
        let counted: u64 = ["passed", "warnings", "failed", "skipped"]
            .iter()
            .map(|k| r[k].as_u64().unwrap())
            .sum();
        assert_eq!(counted, 9);
        for c in r["checks"].as_array().unwrap() {
            let outcome = c["outcome"].as_str().unwrap();
            assert!(["ok", "warn", "skipped"].contains(&outcome), "{c}");
            assert!(!c["detail"].as_str().unwrap().is_empty(), "{c}");
            // A warning says how to fix it; an ok needs no fix.
            assert_eq!(outcome == "warn", c["fix"].is_string(), "{c}");
        }
        let interface = check(&r, "interface");
        assert_eq!(interface["outcome"], "ok");
        assert!(
            interface["detail"]
                .as_str()
                .unwrap()
                .starts_with("lo (index "),
            "{interface}"
        );
        assert_eq!(check(&r, "rp_filter")["outcome"], "ok");
        let join = check(&r, "join");
        assert_eq!(join["outcome"], "ok");
        assert!(
            join["detail"]
                .as_str()
                .unwrap()
                .starts_with("joined 239.255.74.20 on lo: listed in /proc/net/igmp"),
            "{join}"
        );
        let probe = check(&r, "probe");
        assert_eq!(probe["outcome"], "ok");
        let detail = probe["detail"].as_str().unwrap();
        assert!(
            detail.contains("to 239.255.74.20:17420 on lo with TTL 0 and heard them back"),
            "{probe}"
        );
        assert!(
            detail.starts_with("sent ") && detail.contains(" from 127.0.0.1:"),
            "{probe}"
        );
    }

    /// The text form: one line per check, then a summary.
    #[test]
    fn doctor_text_has_a_line_per_check_and_a_summary() {
        let out = doctor(&["--port", "17421", "--group", "239.255.74.21"]);
        assert!(out.status.success(), "{out:?}");
        let stdout = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = stdout.lines().collect();
        let tagged: Vec<&str> = lines
            .iter()
            .filter(|l| {
                ["ok ", "warn ", "FAIL ", "skip "]
                    .iter()
                    .any(|t| l.starts_with(t))
            })
            .copied()
            .collect();
        assert_eq!(tagged.len(), 9, "{stdout}");
        assert!(
            lines.iter().any(|l| l
                .starts_with("ok    group      239.255.74.21 is administratively scoped")),
            "{stdout}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("ok    probe      sent ")),
            "{stdout}"
        );
        // Every fix line follows a warning or failure.
        for (i, l) in lines.iter().enumerate() {
            if l.trim_start().starts_with("fix: ") {
                assert!(lines[i - 1].starts_with("warn") || lines[i - 1].starts_with("FAIL"));
            }
        }
        let last = lines.last().unwrap();
        assert!(
            last.starts_with("doctor: 239.255.74.21:17421 on lo: usable on this host ("),
            "{last}"
        );
    }

    #[test]
    fn doctor_names_a_missing_interface_and_exits_1() {
        let out = doctor(&["--port", "17422", "--interface", "nosuchif0"]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(
            stdout.contains("FAIL  interface  no interface is named \"nosuchif0\""),
            "{stdout}"
        );
        assert!(stdout.contains("fix: give --interface a name"), "{stdout}");
        assert!(stdout.contains("NOT usable"), "{stdout}");
        let out = doctor(&["--port", "17422", "--interface", "nosuchif0", "--json"]);
        assert_eq!(out.status.code(), Some(1));
        let r = json(String::from_utf8(out.stdout).unwrap().trim());
        assert_eq!(r["ok"], false);
        assert_eq!(r["resolved"], serde_json::Value::Null);
        let c = check(&r, "interface");
        assert_eq!(c["outcome"], "fail");
        assert!(c["detail"].as_str().unwrap().contains("nosuchif0"), "{c}");
        assert!(c["fix"].as_str().unwrap().contains("--interface"), "{c}");
        assert_eq!(check(&r, "probe")["outcome"], "skipped");
    }

    /// IPv6 multicast never works over `lo` on Linux: the doctor says so.
    #[test]
    fn doctor_refuses_ipv6_on_loopback_with_the_reason() {
        let out = doctor(&["--port", "17423", "--group", "ff15::7423", "--json"]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let r = json(String::from_utf8(out.stdout).unwrap().trim());
        let c = check(&r, "interface");
        assert_eq!(c["outcome"], "fail");
        assert!(
            c["detail"].as_str().unwrap().contains("MULTICAST flag"),
            "{c}"
        );
        assert!(c["fix"].as_str().unwrap().contains("IPv4 group"), "{c}");
        assert_eq!(check(&r, "join")["outcome"], "fail");
    }

    #[test]
    fn doctor_refuses_bad_flags_with_a_reason() {
        for (args, why) in [
            (&["--group", "10.0.0.1"][..], "is not a multicast group"),
            (&["--group", "nonsense"][..], "is not an IP address"),
            (&["--port", "0"][..], "--port"),
            (&["--port", "70000"][..], "--port"),
            (&["--interface", ""][..], "empty"),
            (&["--recv-buffer", "0"][..], "0 bytes"),
            (&["--send-buffer", "lots"][..], "not a number of bytes"),
            (
                &["--group", "ff15::1", "--interface", "127.0.0.1"][..],
                "is an IPv4 address",
            ),
        ] {
            let out = doctor(args);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains(why), "{args:?}: {err}");
            assert!(out.stdout.is_empty(), "{args:?}");
        }
    }
}

/// Every flag that takes a value, fed values no flag accepts: each run
/// ends at once with exit code 1 or 2 and a message naming the flag or
/// the value, and never panics or hangs. The per-flag limits (a rate of
/// u64::MAX, 1e300 seconds, ...) are checked by the earlier tests; here
/// the point is that no flag was forgotten.
mod every_flag {
    use std::io::Read as _;
    use std::process::{Child, Stdio};
    use std::time::{Duration, Instant};

    use super::grapevine;

    /// Waits at most `limit` for `child`; kills it and fails if it is
    /// still running.
    fn wait_bounded(mut child: Child, limit: Duration, what: &str) -> (Option<i32>, String) {
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                // What it said, on either stream (`doctor` reports on
                // standard output).
                let mut said = String::new();
                if let Some(mut e) = child.stderr.take() {
                    e.read_to_string(&mut said).unwrap();
                }
                if let Some(mut o) = child.stdout.take() {
                    o.read_to_string(&mut said).unwrap();
                }
                return (status.code(), said);
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what}: still running after {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The flags that take a value, by command, read from `--help`.
    fn value_flags(command: &str) -> Vec<String> {
        let out = grapevine().args([command, "--help"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let l = l.trim_start();
                let l = l.split_once(", ").map_or(l, |(_, rest)| rest);
                let (flag, rest) = l.split_once(' ')?;
                (flag.starts_with("--") && rest.starts_with('<')).then(|| flag.to_owned())
            })
            .collect()
    }

    /// Every command that prints, its standard output closed by the
    /// reader before it prints (`| head -0`): it ends quietly, exit 0,
    /// without a panic or a "Broken pipe" message.
    #[test]
    fn every_command_stops_quietly_when_its_reader_is_gone() {
        let runs: [&[&str]; 6] = [
            &[
                "pub", "--port", "17441", "--leaves", "10", "--deltas", "10", "--linger", "0.2",
            ],
            &["sub", "--port", "17442", "--timeout", "1"],
            &["sub", "--port", "17442", "--timeout", "1", "--json"],
            &[
                "demo",
                "--port",
                "17443",
                "--duration",
                "1",
                "--leaves",
                "100",
                "--rate",
                "100",
                "--json",
            ],
            &["doctor", "--port", "17444", "--json"],
            &[
                "tail",
                "--port",
                "17444",
                "--interval",
                "0.1",
                "--duration",
                "1",
            ],
        ];
        for args in runs {
            let mut child = grapevine()
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            drop(child.stdout.take());
            let what = args.join(" ");
            let (code, err) = wait_bounded(child, Duration::from_secs(20), &what);
            assert_eq!(code, Some(0), "{what}: {err}");
            assert!(
                !err.contains("panicked") && !err.contains("Broken pipe"),
                "{what}: {err}"
            );
        }
    }

    #[test]
    fn no_flag_takes_an_absurd_value_and_none_panics() {
        let absurd = [
            "-1",
            "nan",
            "inf",
            "-inf",
            "1e300",
            "18446744073709551616",
            "340282366920938463463374607431768211456",
            "",
            "x",
            "\u{1F4A5}",
        ];
        let mut checked = 0;
        for command in ["demo", "pub", "sub", "bench", "tail", "doctor"] {
            let flags = value_flags(command);
            assert!(flags.len() >= 3, "{command}: {flags:?}");
            for flag in &flags {
                for value in absurd {
                    // `--interface` takes any name: "x" would be an
                    // interface that does not exist (refused at bind).
                    // `--schema` takes any name without spaces that does
                    // not start with '-' (so "nan" or "x" run); the
                    // others are refused like any absurd value.
                    let any_name = !value.is_empty()
                        && !value.starts_with('-')
                        && !value.contains(char::is_whitespace);
                    if flag == "--schema" && any_name {
                        continue;
                    }
                    let child = grapevine()
                        .args([command, &format!("{flag}={value}")])
                        .stdin(Stdio::null())
                        .stdout(Stdio::piped())
                        .stderr(Stdio::piped())
                        .spawn()
                        .unwrap();
                    let what = format!("{command} {flag}={value:?}");
                    let (code, err) = wait_bounded(child, Duration::from_secs(10), &what);
                    assert!(
                        matches!(code, Some(1 | 2)),
                        "{what}: exit {code:?}, stderr: {err}"
                    );
                    assert!(!err.contains("panicked"), "{what}: {err}");
                    let named =
                        err.contains(flag.as_str()) || (!value.is_empty() && err.contains(value));
                    assert!(named, "{what}: the message names neither: {err}");
                    checked += 1;
                }
            }
        }
        assert!(checked > 300, "{checked}");
    }
}

// ---------------------------------------------------------------------------
// Stream keys: `keygen`, `--key-file`, `GRAPEVINE_KEY_FILE`, `--encrypt`
// (ports 17550-17579).
// ---------------------------------------------------------------------------

mod keys {
    use super::{grapevine, json};

    use std::os::unix::fs::PermissionsExt as _;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Output, Stdio};

    const ENV: &str = "GRAPEVINE_KEY_FILE";

    /// A directory of its own for one test, emptied first.
    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("grapevine-cli-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// `grapevine` without a key file from the environment.
    fn gv() -> Command {
        let mut c = grapevine();
        c.env_remove(ENV);
        c
    }

    fn text(b: &[u8]) -> String {
        String::from_utf8_lossy(b).into_owned()
    }

    /// A new key file at `path`; its id and its key's hex digits.
    fn keygen(path: &Path) -> (String, String) {
        let out = gv().args(["keygen", "--out"]).arg(path).output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        let line = std::fs::read_to_string(path).unwrap();
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields.len(), 4, "{line:?}");
        (fields[2].to_owned(), fields[3].to_owned())
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// A child process killed if the test fails before it ends.
    struct Reaped(Option<Child>);

    impl Reaped {
        fn spawn(c: &mut Command) -> Self {
            Self(Some(
                c.stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap(),
            ))
        }

        /// SIGTERM, then everything it printed.
        fn terminate(mut self) -> Output {
            let child = self.0.take().unwrap();
            let term = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .unwrap();
            assert!(term.success());
            child.wait_with_output().unwrap()
        }

        fn output(mut self) -> Output {
            self.0.take().unwrap().wait_with_output().unwrap()
        }
    }

    impl Drop for Reaped {
        fn drop(&mut self) {
            if let Some(mut c) = self.0.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    #[test]
    fn keygen_writes_a_private_file_never_replaces_one_and_shows_only_the_id() {
        let d = dir("keygen");
        let path = d.join("stream.key");
        let out = gv().args(["keygen", "--out"]).arg(&path).output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(mode(&path), 0o600);
        let line = std::fs::read_to_string(&path).unwrap();
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields[..2], ["grapevine-key", "1"], "{line:?}");
        let (id, hex) = (fields[2], fields[3]);
        assert!(id.len() == 8 && hex.len() == 64, "{line:?}");
        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()));
        let err = text(&out.stderr);
        assert!(err.contains(&format!("key id: {id}")), "{err}");
        assert!(err.contains(&format!("wrote {}", path.display())), "{err}");
        assert!(!err.contains(hex) && out.stdout.is_empty(), "{err}");

        // Again: refused, the file named and unchanged.
        let again = gv().args(["keygen", "--out"]).arg(&path).output().unwrap();
        assert_eq!(again.status.code(), Some(1));
        let err = text(&again.stderr);
        assert!(
            err.contains(&format!("--out {}: the file exists", path.display())),
            "{err}"
        );
        assert!(err.contains("never replaces"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), line);

        // To standard output (a pipe: no warning), a different key.
        let out = gv().arg("keygen").output().unwrap();
        assert!(out.status.success());
        let printed = text(&out.stdout);
        let f: Vec<&str> = printed.split_whitespace().collect();
        assert_eq!((f.len(), f[0]), (4, "grapevine-key"), "{printed:?}");
        assert_ne!(f[3], hex);
        let err = text(&out.stderr);
        assert_eq!(err.trim(), format!("key id: {}", f[2]));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_key_file_others_can_read_is_refused_with_the_fix() {
        let d = dir("loose");
        let path = d.join("stream.key");
        keygen(&path);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let p = path.to_str().unwrap();
        for args in [
            &["sub", "--port", "17550", "--timeout", "5", "--key-file", p][..],
            &["pub", "--port", "17550", "--linger", "5", "--key-file", p],
            &[
                "tail",
                "--port",
                "17550",
                "--duration",
                "5",
                "--key-file",
                p,
            ],
        ] {
            let out = gv().args(args).output().unwrap();
            assert_eq!(out.status.code(), Some(1), "{args:?}");
            let err = text(&out.stderr);
            assert!(
                err.contains(&format!("run `chmod 600 {p}`")),
                "{args:?}: {err}"
            );
            assert!(err.contains("--key-file"), "{err}");
            assert!(out.stdout.is_empty(), "{args:?}: nothing ran");
        }
        // Read from the environment, it is named as such.
        let out = gv()
            .env(ENV, &path)
            .args(["sub", "--port", "17550"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = text(&out.stderr);
        assert!(err.contains(&format!("{ENV}: key file {p}")), "{err}");
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn encryption_without_a_key_file_and_a_missing_file_are_clear_errors() {
        for command in ["pub", "sub", "demo", "bench"] {
            for flag in ["--encrypt", "--require-encrypt"] {
                let out = gv().args([command, flag]).output().unwrap();
                assert_eq!(out.status.code(), Some(1), "{command} {flag}");
                let err = text(&out.stderr);
                assert!(
                    err.starts_with(&format!("error: {flag} needs a key: add `--key-file PATH`")),
                    "{command}: {err}"
                );
            }
        }
        let missing = "/nonexistent/grapevine-test.key";
        let out = gv().args(["sub", "--key-file", missing]).output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!("--key-file {missing}: no such file")),
            "{err}"
        );
        assert!(err.contains("grapevine keygen --out"), "{err}");
        let out = gv().env(ENV, missing).arg("pub").output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(
            text(&out.stderr).contains(&format!("{ENV}={missing}: no such file")),
            "{}",
            text(&out.stderr)
        );
        // An empty variable is no key file.
        let out = gv()
            .env(ENV, "")
            .args(["sub", "--encrypt"])
            .output()
            .unwrap();
        assert!(text(&out.stderr).contains("--encrypt needs a key"));
    }

    /// Keys rotate without a restart: `pub` re-reads its key file on
    /// SIGHUP and seals with the new first key, which a subscriber holding
    /// only that key proves by converging.
    #[test]
    fn sighup_rotates_a_publishers_keys() {
        use std::io::{BufRead as _, BufReader};
        let d = dir("rotate");
        let (pk, kb) = (d.join("pub.key"), d.join("b.key"));
        keygen(&pk);
        keygen(&kb);
        let old = std::fs::read_to_string(&pk).unwrap();
        let new = std::fs::read_to_string(&kb).unwrap();
        let mut publ = gv();
        publ.args(["-v", "pub", "--port", "17555", "--key-file"])
            .arg(&pk)
            .args(["--leaves", "300", "--deltas", "1000", "--rate", "1000"])
            .args(["--linger", "60"]);
        let mut publ = Reaped::spawn(&mut publ);
        let child = publ.0.as_mut().unwrap();
        let lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in lines.map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let wait_for = |what: &str| loop {
            let l = rx
                .recv_timeout(std::time::Duration::from_secs(30))
                .unwrap_or_else(|e| panic!("no line with {what:?}: {e}"));
            if l.contains(what) {
                return l;
            }
        };
        // Its SIGHUP handler is in place once it says it publishes.
        wait_for("publishing");
        std::fs::write(&pk, format!("{new}{old}")).unwrap();
        let hup = Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(hup.success());
        let reloaded = wait_for("keys reloaded");
        let new_id = new.split_whitespace().nth(2).unwrap();
        assert!(reloaded.contains(new_id), "{reloaded}");
        let sub = gv()
            .args(["sub", "--port", "17555", "--until-seq", "1000", "--json"])
            .args(["--timeout", "30", "--key-file"])
            .arg(&kb)
            .output()
            .unwrap();
        let out = text(&sub.stdout);
        assert!(sub.status.success(), "{out} {}", text(&sub.stderr));
        let s = json(out.trim());
        assert_eq!(s["consistent"], true, "{s}");
        assert_eq!(s["refused"], serde_json::json!({}), "{s}");
        let _ = publ.terminate();
    }

    /// A keyed publisher and subscriber converge with losses repaired by
    /// (sealed) NAKs, authenticated and encrypted; the subscriber takes its
    /// key from `GRAPEVINE_KEY_FILE` the second time. Nothing is refused
    /// but datagrams heard before the first heartbeat, and at -vvv neither
    /// prints a byte of the key, only its id.
    #[test]
    fn keyed_pub_and_sub_converge_authenticated_and_encrypted() {
        let d = dir("converge");
        let path = d.join("stream.key");
        let (id, hex) = keygen(&path);
        for (port, encrypt) in [("17551", false), ("17552", true)] {
            let mut sub = gv();
            sub.args([
                "-vvv",
                "sub",
                "--port",
                port,
                "--until-seq",
                "2000",
                "--json",
            ])
            .args(["--timeout", "60", "--loss", "0.05"]);
            let mut publ = gv();
            publ.args(["-vvv", "pub", "--port", port, "--key-file"])
                .arg(&path)
                .args(["--leaves", "500", "--deltas", "2000", "--rate", "4000"])
                .args(["--linger", "60"]);
            if encrypt {
                sub.env(ENV, &path).args(["--encrypt", "--require-encrypt"]);
                publ.arg("--encrypt");
            } else {
                sub.arg("--key-file").arg(&path);
            }
            let sub = Reaped::spawn(&mut sub);
            let publ = Reaped::spawn(&mut publ);
            let sub = sub.output();
            let publ = publ.terminate();
            let (sub_out, sub_err) = (text(&sub.stdout), text(&sub.stderr));
            let (pub_out, pub_err) = (text(&publ.stdout), text(&publ.stderr));
            assert!(sub.status.success(), "{sub_out} {}", sub_err.len());
            assert!(publ.status.success(), "{:?}", publ.status);
            let s = json(sub_out.trim());
            let lines: Vec<&str> = pub_out.lines().collect();
            assert_eq!(lines.len(), 2, "{pub_out}");
            let (state, last) = (json(lines[0]), json(lines[1]));
            assert_eq!(
                (s["seq"].as_u64(), s["consistent"].as_bool()),
                (Some(2000), Some(true))
            );
            assert_eq!(s["digest"], state["digest"], "{s}");
            // Nothing is refused between honest nodes (what a joiner
            // hears before the first heartbeat is `awaiting_heartbeat`).
            assert_eq!(s["refused"], serde_json::json!({}), "{s}");
            assert_eq!(s["malformed"], serde_json::json!({}), "{s}");
            assert!(s["repaired_by_nak"].as_u64().unwrap() > 0, "{s}");
            assert!(last["naks_received"].as_u64().unwrap() > 0, "{last}");
            for f in ["auth_refused", "auth_bad_tag", "auth_replayed"] {
                assert_eq!(last[f], 0, "{last}");
            }
            let sealed = if encrypt {
                "encrypted"
            } else {
                "authenticated"
            };
            assert!(
                pub_err.contains(&format!("{sealed} with key {id}")),
                "{}",
                &pub_err[..pub_err.len().min(2000)]
            );
            // The logs name the key by its id.
            for err in [&pub_err, &sub_err] {
                assert!(err.contains(&format!("key_id={id}")), "{err}");
                assert!(err.contains("INFO"), "-vvv logs: {err}");
            }
            for (what, said) in [
                ("sub stdout", &sub_out),
                ("sub stderr", &sub_err),
                ("pub stdout", &pub_out),
                ("pub stderr", &pub_err),
            ] {
                assert!(!said.contains(&hex), "{what} shows the key");
                assert!(!said.contains(&hex.to_uppercase()), "{what} shows the key");
                assert!(!said.contains(&hex[..16]), "{what} shows part of the key");
            }
        }
        std::fs::remove_dir_all(d).unwrap();
    }

    /// Against a keyed publisher, a subscriber without a key counts every
    /// datagram as `no_key`, one with another key as `unknown_key`: neither
    /// follows the stream, both give up at the timeout with the fix.
    #[test]
    fn subscribers_without_the_key_count_refusals_and_never_follow() {
        let d = dir("strangers");
        let (key, other) = (d.join("stream.key"), d.join("other.key"));
        keygen(&key);
        keygen(&other);
        let port = "17553";
        let sub = |key: Option<&Path>| {
            let mut c = gv();
            c.args(["sub", "--port", port, "--until-seq", "100", "--json"])
                .args(["--timeout", "3"]);
            if let Some(k) = key {
                c.arg("--key-file").arg(k);
            }
            Reaped::spawn(&mut c)
        };
        let keyless = sub(None);
        let stranger = sub(Some(&other));
        let publ = Reaped::spawn(
            gv().args(["pub", "--port", port, "--key-file"])
                .arg(&key)
                .args(["--leaves", "100", "--deltas", "100", "--linger", "60"]),
        );
        for (sub, code, fix) in [
            (
                keyless,
                "no_key",
                "has no key: give it the stream's key file",
            ),
            (stranger, "unknown_key", "a key that is not in --key-file"),
        ] {
            let out = sub.output();
            assert_eq!(out.status.code(), Some(1), "{code}");
            let s = json(text(&out.stdout).trim());
            assert_eq!(s["outcome"], "timeout", "{s}");
            assert_eq!(
                (s["synced"].as_bool(), s["consistent"].as_bool()),
                (Some(false), Some(false))
            );
            assert_eq!(s["session"], serde_json::Value::Null, "{s}");
            assert_eq!(s["leaves"], 0, "{s}");
            let counted = s["malformed"][code]
                .as_u64()
                .or(s["refused"][code].as_u64())
                .unwrap_or(0);
            assert!(counted > 10, "{code}: {s}");
            let err = text(&out.stderr);
            assert!(err.contains(fix), "{code}: {err}");
        }
        let publ = publ.terminate();
        let last = json(text(&publ.stdout).lines().last().unwrap());
        assert_eq!(last["auth_refused"], 0, "strangers sent no NAK it refused");
        std::fs::remove_dir_all(d).unwrap();
    }

    /// `tail` without a key reads an authenticated stream unverified; with
    /// the key it verifies it; with another key it refuses it.
    #[test]
    fn tail_reads_unverified_verifies_with_the_key_and_refuses_another() {
        use std::io::{BufRead as _, BufReader};

        let d = dir("tail");
        let (key, other) = (d.join("stream.key"), d.join("other.key"));
        keygen(&key);
        keygen(&other);
        let port = "17554";
        let tail = |key: Option<&Path>| {
            let mut c = gv();
            c.args(["tail", "--port", port, "--json", "--interval", "60"])
                .args(["--duration", "2.5"]);
            if let Some(k) = key {
                c.arg("--key-file").arg(k);
            }
            let mut t = Reaped::spawn(&mut c);
            // Listening once it says so.
            let err = t.0.as_mut().unwrap().stderr.as_mut().unwrap();
            let mut first = String::new();
            BufReader::new(err).read_line(&mut first).unwrap();
            assert!(first.ends_with(": listening\n"), "{first:?}");
            t
        };
        let tails = [tail(None), tail(Some(&key)), tail(Some(&other))];
        let publ = gv()
            .args(["pub", "--port", port, "--key-file"])
            .arg(&key)
            .args([
                "--leaves", "50", "--deltas", "200", "--rate", "2000", "--linger", "0.3",
            ])
            .output()
            .unwrap();
        assert!(publ.status.success(), "{}", text(&publ.stderr));
        let [keyless, keyed, stranger] = tails.map(|t| {
            let out = t.output();
            assert!(out.status.success(), "{}", text(&out.stderr));
            json(text(&out.stdout).lines().last().unwrap())
        });
        let first = |r: &serde_json::Value| r["streams"][0].clone();
        let s = first(&keyless);
        assert_eq!(keyless["verifying"], false);
        assert!(s["auth"]["unverified"].as_u64().unwrap() > 0, "{s}");
        assert_eq!(
            (s["auth"]["verified"].as_u64(), s["auth"]["plain"].as_u64()),
            (Some(0), Some(0))
        );
        assert_eq!(s["latest_seq"], 200, "{s}");
        let s = first(&keyed);
        assert_eq!(keyed["verifying"], true);
        assert_eq!(keyed["refused"], serde_json::json!({}), "{keyed}");
        assert_eq!(s["auth"]["verified"], s["datagrams"], "{s}");
        assert_eq!(s["latest_seq"], 200, "{s}");
        let s = first(&stranger);
        assert_eq!(s["auth"]["refused"], s["datagrams"], "{s}");
        assert_eq!(
            stranger["refused"]["unknown_key"], s["datagrams"],
            "{stranger}"
        );
        assert_eq!(s["counts"]["delta"], 0, "{s}");
        std::fs::remove_dir_all(d).unwrap();
    }
}

// ---------------------------------------------------------------------------
// `grapevine relay` (ports 17600-17619).
// ---------------------------------------------------------------------------

mod relay {
    use std::io::{BufRead as _, BufReader};
    use std::process::{Child, Command, Stdio};
    use std::sync::mpsc;
    use std::time::Duration;

    use super::{grapevine, json};

    /// A child killed if the test fails before it ends.
    struct Reaped(Child);

    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// The lines a child writes on standard error, as they come.
    fn stderr_lines(child: &mut Child) -> mpsc::Receiver<String> {
        let lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in lines.map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        rx
    }

    /// The first line starting with `prefix`, within 30 s.
    fn line(rx: &mpsc::Receiver<String>, prefix: &str) -> String {
        loop {
            let l = rx
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|e| panic!("no line starting with {prefix:?}: {e}"));
            if let Some(rest) = l.strip_prefix(prefix) {
                return rest.trim().to_owned();
            }
        }
    }

    fn term(child: &Reaped) {
        let ok = Command::new("kill")
            .args(["-TERM", &child.0.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// The last JSON line a relay printed (its final counters).
    fn last_stats(mut child: Reaped) -> serde_json::Value {
        term(&child);
        let mut out = String::new();
        std::io::Read::read_to_string(child.0.stdout.as_mut().unwrap(), &mut out).unwrap();
        let status = child.0.wait().unwrap();
        assert!(status.success(), "{status:?}");
        json(out.lines().last().expect("a stats line"))
    }

    fn run_pair(transport: &[&str], ports: (u16, u16, u16)) {
        let (listen, near_port, far_port) = ports;
        let listen_addr = format!("127.0.0.1:{listen}");
        let mut far = grapevine();
        far.arg("relay")
            .args([
                "--listen",
                &listen_addr,
                "--allow-any-feeder",
                "--stats",
                "0.2",
            ])
            .args(["--to-group", &format!("239.255.61.2:{far_port}")])
            .args(transport)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut far = Reaped(far.spawn().unwrap());
        let far_err = stderr_lines(&mut far.0);
        let fp = line(&far_err, "fingerprint:");
        assert_eq!(fp.len(), 64, "{fp}");
        assert!(
            fp.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
            "{fp}"
        );
        line(&far_err, "listening:");
        let mut near = grapevine();
        near.arg("relay")
            .args(["--from-group", &format!("239.255.61.1:{near_port}")])
            .args(["--to", &listen_addr, "--pin", &fp, "--stats", "0.2"])
            .args(transport)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let near = Reaped(near.spawn().unwrap());
        let sub = grapevine()
            .args([
                "sub",
                "--group",
                "239.255.61.2",
                "--port",
                &far_port.to_string(),
            ])
            .args([
                "--until-seq",
                "3000",
                "--json",
                "--timeout",
                "30",
                "--loss",
                "0.05",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let publ = grapevine()
            .args([
                "pub",
                "--group",
                "239.255.61.1",
                "--port",
                &near_port.to_string(),
            ])
            .args([
                "--leaves", "1000", "--deltas", "3000", "--rate", "6000", "--linger", "30",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let publ = Reaped(publ);
        let sub = sub.wait_with_output().unwrap();
        let sub_out = String::from_utf8_lossy(&sub.stdout);
        assert!(
            sub.status.success(),
            "{sub_out} {}",
            String::from_utf8_lossy(&sub.stderr)
        );
        // `grapevine tail` on the far group sees the relayed stream as a
        // publisher's: the same session, alive.
        let tail = grapevine()
            .args([
                "tail",
                "--group",
                "239.255.61.2",
                "--port",
                &far_port.to_string(),
            ])
            .args(["--json", "--interval", "0.5", "--duration", "1"])
            .output()
            .unwrap();
        assert!(tail.status.success(), "{tail:?}");
        let tail_out = String::from_utf8_lossy(&tail.stdout);
        let last = json(tail_out.lines().last().expect("a tail report"));
        let streams = last["streams"].as_array().expect("streams");
        assert!(
            streams
                .iter()
                .any(|s| s["alive"] == true && s["session"] == json(sub_out.trim())["session"]),
            "tail on the far group: {last}"
        );
        term(&publ);
        let mut pub_out = String::new();
        let mut publ = publ;
        std::io::Read::read_to_string(publ.0.stdout.as_mut().unwrap(), &mut pub_out).unwrap();
        let state = json(pub_out.lines().next().expect("the publisher's state line"));
        let s = json(sub_out.trim());
        assert_eq!(s["consistent"], true);
        assert_eq!(s["seq"], 3000);
        assert_eq!(
            s["digest"], state["digest"],
            "the far subscriber equals the publisher"
        );
        let n = last_stats(near);
        let f = last_stats(far);
        assert_eq!(n["link_connects"], 1, "{n}");
        assert!(n["datagrams_out_link"].as_u64().unwrap() > 0, "{n}");
        assert!(f["datagrams_out_group"].as_u64().unwrap() > 0, "{f}");
        // The far subscriber's losses were answered on the far side.
        assert!(f["naks_received"].as_u64().unwrap() > 0, "{f}");
        assert!(f["repeats"].as_u64().unwrap() > 0, "{f}");
    }

    #[test]
    fn a_relay_pair_carries_a_stream_and_repairs_far_losses_there() {
        run_pair(&[], (17600, 17601, 17602));
    }

    #[test]
    fn a_relay_pair_over_tcp_does_too() {
        run_pair(&["--tcp"], (17603, 17604, 17605));
    }

    /// Every bad combination or value is refused at once, exit 1 or 2,
    /// with a message that names what is wrong; never a panic.
    #[test]
    fn bad_relay_flags_are_refused_with_a_reason() {
        let pin = "ab".repeat(32);
        let cases: &[(&[&str], &str)] = &[
            (&[], "nothing to relay"),
            (&["--from-group", "239.255.61.9:17606"], "nowhere to send"),
            (
                &["--from-group", "10.0.0.1:17606", "--listen", "127.0.0.1:0"],
                "not a multicast group",
            ),
            (
                &["--from-group", "239.255.61.9:0", "--listen", "127.0.0.1:0"],
                "port",
            ),
            (
                &["--from-group", "239.255.61.9:17606", "--to", "127.0.0.1:1"],
                "--pin",
            ),
            (
                &[
                    "--from-group",
                    "239.255.61.9:17606",
                    "--to",
                    "127.0.0.1:1",
                    "--pin",
                    "abc",
                ],
                "--pin",
            ),
            (
                &[
                    "--from-group",
                    "239.255.61.9:17606",
                    "--to",
                    "127.0.0.1:1",
                    "--pin",
                    &pin,
                    "--ca",
                    "x.pem",
                ],
                "one way",
            ),
            (
                &[
                    "--from-group",
                    "239.255.61.9:17606",
                    "--to",
                    "no-such-host.invalid:1",
                    "--pin",
                    &pin,
                ],
                "--to",
            ),
            (
                &[
                    "--listen",
                    "127.0.0.1:0",
                    "--to-group",
                    "239.255.61.9:17606",
                ],
                "--allow",
            ),
            (&["--listen", "127.0.0.1:0", "--pin", &pin], "--pin"),
            (
                &[
                    "--from-group",
                    "239.255.61.9:17606",
                    "--to-group",
                    "239.255.61.8:17607",
                    "--listen",
                    "127.0.0.1:0",
                ],
                "--to-group",
            ),
            (
                &["--listen", "127.0.0.1:0", "--interface", "lo"],
                "--interface",
            ),
            (
                &["--listen", "127.0.0.1:0", "--max-subscribers", "0"],
                "--max-subscribers",
            ),
            (
                &["--listen", "127.0.0.1:0", "--queue-bytes", "10"],
                "--queue-bytes",
            ),
            (
                &["--listen", "127.0.0.1:0", "--queue-age-ms", "0"],
                "--queue-age",
            ),
            (&["--listen", "127.0.0.1:0", "--stats", "nan"], "--stats"),
            (&["--listen", "127.0.0.1:0", "--stats", "-1"], "-1"),
            (
                &["--listen", "127.0.0.1:0", "--duration", "inf"],
                "--duration",
            ),
            (&["--listen", "127.0.0.1:0", "--cert", "a.pem"], "--key"),
            (&["--listen", "127.0.0.1:0", "--allow", "x"], "--allow"),
            (
                &[
                    "--listen",
                    "127.0.0.1:0",
                    "--ttl",
                    "300",
                    "--allow-any-feeder",
                    "--to-group",
                    "239.255.61.9:17606",
                ],
                "--ttl",
            ),
        ];
        for (args, expected) in cases {
            let out = grapevine()
                .arg("relay")
                .args(*args)
                .stdin(Stdio::null())
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            let what = args.join(" ");
            assert!(
                matches!(out.status.code(), Some(1 | 2)),
                "{what}: {:?} {err}",
                out.status
            );
            assert!(
                err.contains(expected),
                "{what}: expected {expected:?} in {err}"
            );
            assert!(!err.contains("panicked"), "{what}: {err}");
        }
    }

    #[test]
    fn stats_stop_quietly_when_the_reader_is_gone() {
        let mut child = grapevine()
            .args([
                "relay",
                "--listen",
                "127.0.0.1:0",
                "--stats",
                "0.05",
                "--duration",
                "1",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{err}");
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "{err}"
        );
    }
}
