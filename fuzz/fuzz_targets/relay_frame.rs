//! Fuzz target `relay_frame`: arbitrary bytes as what a relay link lane
//! delivers (PROTOCOL.md §12.2), read frame after frame with [`decode`].
//!
//! Frames are taken from the front of the input, skipped kinds too, until
//! an error or an incomplete frame. For every input:
//!
//! * decoding never panics, and an error's `Display` does not either;
//! * a frame, decoded or skipped, uses at least a frame header and never
//!   more than the bytes left; a skipped one is of a kind in `0x40..=0x7f`;
//! * `Incomplete { needed }` asks for more than is left, and exactly: 3
//!   until the header is whole, then 3 + its `length`;
//! * every decoded frame re-encodes to exactly the bytes it was decoded
//!   from (`body_len` agreeing), and those decode back to an equal frame
//!   that uses all of them.

#![no_main]

use grapevine_core::relay::frame::{decode, Decoded, FRAME_HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    loop {
        match decode(rest) {
            Ok(Decoded::Frame(frame, used)) => {
                assert!(
                    (FRAME_HEADER_LEN..=rest.len()).contains(&used),
                    "{frame:?} used {used} of {} bytes",
                    rest.len()
                );
                assert_eq!(frame.body_len() + FRAME_HEADER_LEN, used, "{frame:?}");
                let mut out = Vec::new();
                frame
                    .encode(&mut out)
                    .unwrap_or_else(|e| panic!("re-encoding {frame:?}: {e}"));
                assert_eq!(out, rest[..used], "{frame:?} re-encoded to other bytes");
                match decode(&out) {
                    Ok(Decoded::Frame(back, n)) => {
                        assert_eq!(back, frame, "re-encoded frame decodes to another");
                        assert_eq!(n, out.len());
                    }
                    other => panic!("re-encoded {frame:?} decodes as {other:?}"),
                }
                rest = &rest[used..];
            }
            Ok(Decoded::Skipped { kind, used }) => {
                assert!((0x40..=0x7f).contains(&kind), "skipped kind {kind:#04x}");
                assert_eq!(rest.first(), Some(&kind));
                assert!(
                    (FRAME_HEADER_LEN..=rest.len()).contains(&used),
                    "skipped {used} of {} bytes",
                    rest.len()
                );
                rest = &rest[used..];
            }
            Ok(Decoded::Incomplete { needed }) => {
                let want = match rest {
                    [_, hi, lo, ..] => {
                        FRAME_HEADER_LEN + usize::from(u16::from_be_bytes([*hi, *lo]))
                    }
                    _ => FRAME_HEADER_LEN,
                };
                assert!(
                    needed > rest.len(),
                    "needed {needed} of {} held",
                    rest.len()
                );
                assert_eq!(needed, want);
                break;
            }
            Err(e) => {
                let _ = e.to_string();
                break;
            }
        }
    }
});
