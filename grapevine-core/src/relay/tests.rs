//! The relay link's frames (PROTOCOL.md §12).

use super::frame::*;
use crate::wire::HEADER_LEN;

/// Found by review: `encode` wrote Datagram, Repair and Nak frames whose
/// datagram is shorter than a §3 header, which `decode` refuses and which
/// would close the link at the far end. It refuses them now, and writes
/// nothing.
#[test]
fn frames_too_short_for_a_datagram_are_not_encoded() {
    let short = [0u8; HEADER_LEN - 1];
    for f in [
        Frame::Datagram(&short),
        Frame::Repair(&[]),
        Frame::Nak {
            flags: NAK_SECOND_ASK,
            datagram: &short,
        },
    ] {
        let mut out = vec![9];
        assert!(
            matches!(f.encode(&mut out), Err(FrameError::BadLength { .. })),
            "{f:?}"
        );
        assert_eq!(out, [9], "nothing appended");
    }
    let header = [0u8; HEADER_LEN];
    let mut out = Vec::new();
    Frame::Repair(&header).encode(&mut out).unwrap();
    Frame::Nak {
        flags: 0,
        datagram: &header,
    }
    .encode(&mut out)
    .unwrap();
    assert_eq!(out.len(), 2 * (FRAME_HEADER_LEN + HEADER_LEN) + 1);
}
