//! Fuzz target `sealed`: authenticated datagrams (PROTOCOL.md §11).
//!
//! The input is split at its first byte: the rest is either taken whole as
//! a received datagram (even first byte), or used as edits to a genuine
//! sealed datagram (odd first byte: pairs of offset and XOR mask, then a
//! length to cut to). For every input:
//!
//! * opening never panics, and a refusal's `code()` and `Display` do not
//!   either;
//! * arbitrary bytes never open (only a key holder can seal);
//! * an edited genuine datagram opens only if the edits changed nothing,
//!   and then to the genuine plain datagram; a refused one leaves the
//!   receiver able to open the genuine datagram afterwards;
//! * `unverified_plain` and `carries_snapshots` never panic on any input.

#![no_main]

use std::time::Instant;

use grapevine_core::auth::{unverified_plain, Keyring, Opener, Role, Salt, Sealer, StreamKey};
use grapevine_core::wire::{carries_snapshots, DatagramHeader, DatagramWriter, Heartbeat, Message};
use grapevine_core::{SeqNum, SessionId, StreamId};
use libfuzzer_sys::fuzz_target;

fn ring() -> Keyring {
    Keyring::new(vec![StreamKey::from_bytes([7; 32])]).expect("one key")
}

fn genuine(encrypt: bool) -> (Vec<u8>, Vec<u8>) {
    let header = DatagramHeader {
        stream: StreamId(1),
        session: SessionId(9),
        datagram_seq: 5,
    };
    let mut buf = vec![0u8; 256];
    let mut w = DatagramWriter::new(&mut buf, &header).expect("room");
    w.push(&Message::Heartbeat(Heartbeat {
        last_seq: SeqNum(3),
        sent_at_micros: 1,
        interval_ms: 100,
    }))
    .expect("fits");
    let len = w.finish();
    let plain = buf[..len].to_vec();
    let mut s = Sealer::new(
        &ring(),
        Role::Publisher,
        StreamId(1),
        Salt([3; 16]),
        encrypt,
    )
    .expect("derived");
    let n = s.seal(&mut buf, len).expect("room");
    buf.truncate(n);
    (plain, buf)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut view = Vec::new();
    let _ = unverified_plain(rest, &mut view);
    let _ = carries_snapshots(rest);
    let mut opener = Opener::new(ring(), Role::Publisher, StreamId(1), 4);
    let now = Instant::now();
    if mode & 1 == 0 {
        let mut buf = rest.to_vec();
        match opener.open(now, &mut buf) {
            Ok(_) => panic!("arbitrary bytes opened"),
            Err(e) => {
                let _ = (e.code(), e.to_string());
            }
        }
        return;
    }
    let (plain, sealed) = genuine(mode & 2 != 0);
    let mut edited = sealed.clone();
    let mut edits = rest.chunks_exact(3);
    for e in edits.by_ref() {
        let at = usize::from(u16::from_be_bytes([e[0], e[1]])) % edited.len();
        edited[at] ^= e[2];
    }
    if let [cut, ..] = edits.remainder() {
        edited.truncate(usize::from(*cut).min(edited.len()));
    }
    let mut buf = edited.clone();
    match opener.open(now, &mut buf) {
        Ok(o) => {
            assert_eq!(edited, sealed, "an edited datagram opened");
            assert_eq!(buf[o.plain], plain[..]);
        }
        Err(e) => {
            let _ = (e.code(), e.to_string());
            let mut again = sealed.clone();
            let o = opener
                .open(now, &mut again)
                .expect("the genuine one still opens");
            assert_eq!(again[o.plain], plain[..]);
        }
    }
});
