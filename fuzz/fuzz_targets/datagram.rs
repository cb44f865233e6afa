//! Fuzz target `datagram`: arbitrary bytes into [`Datagram::decode`].
//!
//! For every input:
//!
//! * decoding returns a value or a typed error and never panics, and an
//!   error's `code()` and `Display` do not panic either;
//! * an accepted datagram yields at least one message, and re-encoding its
//!   messages with a [`DatagramWriter`] (same header) gives a datagram that
//!   decodes to the same header and the same messages. Padding and the
//!   trailing bytes some kinds ignore are not re-encoded, so the copy is never
//!   longer than the input; the copy is canonical: encoding it again gives the
//!   same bytes;
//! * each message's body survives `encode_body` / `decode_body`, and
//!   `encoded_len()` is what the writer actually wrote;
//! * every fragment goes to a [`Reassembler`], whose limits hold after each
//!   one; a completed message is decoded with [`Reassembled::message`]
//!   (errors are fine, panics are not) and round-trips like the others.

#![no_main]

use std::time::{Duration, Instant};

use grapevine_core::wire::{Datagram, DatagramWriter, Message};
use grapevine_core::{Reassembled, Reassembler, ReassemblyConfig};
use libfuzzer_sys::fuzz_target;

const MAX_MESSAGE: usize = 64 << 10;
const MAX_BUFFERED: usize = 256 << 10;
const MAX_PARTIALS: usize = 8;
const TIMEOUT: Duration = Duration::from_secs(1);

fuzz_target!(|data: &[u8]| {
    let dg = match Datagram::decode(data) {
        Ok(dg) => dg,
        Err(e) => {
            let _ = e.code();
            let _ = e.to_string();
            return;
        }
    };
    let header = dg.header();
    let messages: Vec<Message<'_>> = dg.messages().collect();
    assert!(!messages.is_empty(), "accepted a datagram without messages");

    // Re-encode into a fresh datagram no longer than the input.
    let mut buf = vec![0u8; data.len()];
    let len = encode(&mut buf, &header, &messages);
    let copy = &buf[..len];
    let again = Datagram::decode(copy)
        .unwrap_or_else(|e| panic!("re-encoded datagram does not decode: {e}\n{copy:02x?}"));
    assert_eq!(again.header(), header);
    let decoded: Vec<Message<'_>> = again.messages().collect();
    assert_eq!(decoded, messages, "round trip changed the messages");

    // The re-encoded datagram is canonical: a second round gives the same bytes.
    let mut buf2 = vec![0u8; len];
    let len2 = encode(&mut buf2, &header, &decoded);
    assert_eq!(&buf2[..len2], copy, "encoding is not a fixed point");

    for m in &messages {
        body_round_trip(m);
    }

    // Feed the fragments to a reassembler.
    let mut cfg = ReassemblyConfig::default();
    cfg.max_message_size(MAX_MESSAGE)
        .max_buffered_bytes(MAX_BUFFERED)
        .max_partials(MAX_PARTIALS)
        .timeout(TIMEOUT);
    let mut reassembler = Reassembler::new(cfg).expect("valid config");
    let now = Instant::now();
    for m in &messages {
        let Message::Fragment(frag) = m else { continue };
        let res = reassembler.handle_fragment(now, header.stream, header.session, frag);
        assert!(reassembler.buffered_bytes() <= MAX_BUFFERED);
        assert!(reassembler.partial_count() <= MAX_PARTIALS);
        if let Ok(Some(done)) = res {
            check_reassembled(&done, frag.inner_kind, frag.total_len);
        }
    }
    assert_eq!(
        reassembler.poll_timeout().is_some(),
        reassembler.partial_count() > 0
    );
    reassembler.handle_timeout(now + TIMEOUT);
    assert_eq!(reassembler.partial_count(), 0);
    assert_eq!(reassembler.buffered_bytes(), 0);
});

/// Writes `messages` into `buf` under `header`; returns the datagram length.
fn encode(
    buf: &mut [u8],
    header: &grapevine_core::wire::DatagramHeader,
    messages: &[Message<'_>],
) -> usize {
    let mut w = DatagramWriter::new(buf, header).expect("the input held a header");
    for m in messages {
        let before = w.remaining();
        if let Err(e) = w.push(m) {
            panic!("re-encoding {m:?} failed: {e}");
        }
        assert_eq!(
            before - w.remaining(),
            m.encoded_len(),
            "encoded_len of {m:?}"
        );
    }
    assert_eq!(w.message_count(), messages.len());
    w.finish()
}

/// `encode_body` then `decode_body` gives the message back.
fn body_round_trip(m: &Message<'_>) {
    let _ = m.to_string();
    let mut body = Vec::new();
    m.encode_body(&mut body)
        .unwrap_or_else(|e| panic!("encode_body of {m:?}: {e}"));
    assert_eq!(body.len(), m.body_len());
    let back = Message::decode_body(m.kind_byte(), &body)
        .unwrap_or_else(|e| panic!("decode_body of {m:?}: {e}"));
    assert_eq!(back.as_ref(), Some(m));
}

fn check_reassembled(done: &Reassembled, kind: u8, total_len: u32) {
    assert_eq!(done.kind, kind);
    assert_eq!(done.body.len(), total_len as usize);
    match done.message() {
        Ok(inner) => body_round_trip(&inner),
        Err(e) => {
            let _ = e.code();
            let _ = e.to_string();
        }
    }
}
