//! Tests of the `grapevine` command, run as a user would run it.

use std::process::Command;

use grapevine::core::wire::{Datagram, DatagramWriter};

fn grapevine() -> Command {
    Command::new(env!("CARGO_BIN_EXE_grapevine"))
}

struct Vector {
    name: String,
    hexes: Vec<String>,
    expected: Vec<String>,
    canonical: bool,
}

/// The ```vector blocks of PROTOCOL.md §9.
fn vectors() -> Vec<Vector> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../PROTOCOL.md");
    let text = std::fs::read_to_string(path).expect("PROTOCOL.md is at the repository root");
    let mut out = Vec::new();
    let mut current: Option<Vector> = None;
    for line in text.lines() {
        if line == "```vector" {
            current = Some(Vector {
                name: String::new(),
                hexes: Vec::new(),
                expected: Vec::new(),
                canonical: true,
            });
            continue;
        }
        let Some(v) = current.as_mut() else { continue };
        if line == "```" {
            out.extend(current.take());
        } else if let Some(name) = line.strip_prefix("name: ") {
            v.name = name.to_owned();
        } else if let Some(hex) = line.strip_prefix("hex: ") {
            v.hexes.push(hex.to_owned());
        } else if line == "canonical: no" {
            v.canonical = false;
        } else {
            v.expected.push(line.to_owned());
        }
    }
    assert!(current.is_none(), "unterminated vector block");
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
            if e.starts_with("error: ") {
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
}

#[test]
fn decode_rejects_non_hex_with_a_clear_message() {
    let out = grapevine().args(["decode", "zz"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a hex byte"), "{err}");
}
