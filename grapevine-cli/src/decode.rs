//! `grapevine decode`: print the meaning of datagrams given as hex.

use anyhow::{bail, Context, Result};
use grapevine::core::wire::{Datagram, Message};
use grapevine::core::{Reassembler, ReassemblyConfig, ReassemblyError};

fn parse_hex(s: &str) -> Result<Vec<u8>> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if let Some(bad) = digits.iter().find(|b| !b.is_ascii_hexdigit()) {
        bail!(
            "{:?} is not a hex digit: give each datagram as hex bytes, e.g. 47525056...",
            char::from(*bad)
        );
    }
    if !digits.len().is_multiple_of(2) {
        bail!("odd number of hex digits ({})", digits.len());
    }
    digits
        .chunks(2)
        .map(|pair| {
            let text = std::str::from_utf8(pair).context("not hex")?;
            u8::from_str_radix(text, 16).with_context(|| format!("{text:?} is not a hex byte"))
        })
        .collect()
}

/// The counter name of PROTOCOL.md §5 for a fragment rejected by
/// reassembly.
fn reassembly_code(e: &ReassemblyError) -> &'static str {
    match e {
        ReassemblyError::TooLarge { .. } => "fragment_too_large",
        ReassemblyError::Inconsistent { .. } => "fragment_inconsistent",
        ReassemblyError::Conflict { .. } => "fragment_conflict",
        ReassemblyError::TooFragmented { .. } => "fragment_too_many_ranges",
        _ => "fragment_rejected",
    }
}

/// Decodes each datagram and prints one line per header and message.
/// Fragments across the given datagrams are reassembled: a fragment that
/// completes a message is followed by a `reassembled:` line (or
/// `reassembled-error:` when the whole body does not decode), one that
/// reassembly rejects by a `fragment-error:` line, and one whose bytes were
/// already held (or whose message was completed recently) by a
/// `fragment-duplicate:` line. PROTOCOL.md §9 describes the notation.
pub(crate) fn run(mut datagrams: Vec<String>) -> Result<()> {
    if datagrams.is_empty() {
        datagrams = std::io::stdin()
            .lines()
            .collect::<Result<Vec<_>, _>>()
            .context("reading standard input")?
            .into_iter()
            .filter(|l| !l.trim().is_empty())
            .collect();
    }
    if datagrams.is_empty() {
        bail!("no datagrams: give them as hex arguments, or one per line on standard input");
    }
    let mut reassembler = Reassembler::new(ReassemblyConfig::default())?;
    let now = std::time::Instant::now();
    let mut failed = false;
    for text in &datagrams {
        let bytes = parse_hex(text)?;
        match Datagram::decode(&bytes) {
            Ok(d) => {
                let h = d.header();
                outln!("header: {h}")?;
                for m in d.messages() {
                    outln!("message: {m}")?;
                    if let Message::Fragment(f) = m {
                        let duplicates = reassembler.stats().duplicates;
                        match reassembler.handle_fragment(now, h.stream, h.session, &f) {
                            Ok(Some(done)) => match done.message() {
                                Ok(inner) => outln!("reassembled: {inner}")?,
                                Err(e) => outln!("reassembled-error: {} ({e})", e.code())?,
                            },
                            Ok(None) if reassembler.stats().duplicates > duplicates => {
                                outln!("fragment-duplicate: frag_id={}", f.frag_id)?;
                            }
                            Ok(None) => {}
                            Err(e) => outln!("fragment-error: {} ({e})", reassembly_code(&e))?,
                        }
                    }
                }
            }
            Err(e) => {
                failed = true;
                outln!("error: {} ({e})", e.code())?;
            }
        }
    }
    if failed {
        bail!("some datagrams did not decode");
    }
    Ok(())
}
