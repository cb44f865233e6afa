//! The relay link's frames (PROTOCOL.md §12): the §12.5 vectors, round
//! trips of every kind, and decoding that never trusts a length.

use std::fmt::Write as _;

use proptest::prelude::*;

use super::frame::*;
use crate::wire::HEADER_LEN;
use crate::{SessionId, StreamId};

/// The name PROTOCOL.md §12.2 gives an error.
fn error_name(e: &FrameError) -> &'static str {
    match e {
        FrameError::UnknownKind(_) => "unknown_kind",
        FrameError::BadLength { .. } => "bad_length",
        FrameError::BadHello { .. } => "bad_hello",
        FrameError::BadRole(_) => "bad_role",
        FrameError::NotUtf8(_) => "not_utf8",
        FrameError::TooLarge(_) => "too_large",
    }
}

fn bytes(b: &[u8]) -> String {
    if b.is_empty() {
        return "-".into();
    }
    b.iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

/// A frame as PROTOCOL.md §12.5 writes it.
fn frame_text(f: &Frame<'_>) -> String {
    match f {
        Frame::Hello(h) => {
            let streams = if h.streams.is_empty() {
                "-".to_string()
            } else {
                let ids: Vec<String> = h.streams.iter().map(|s| s.0.to_string()).collect();
                ids.join(",")
            };
            let role = match h.role {
                Role::Feeder => "feeder",
                Role::Subscriber => "subscriber",
            };
            format!(
                "Hello role={role} relay_id=0x{:016x} max_datagram={} streams={streams}",
                h.relay_id, h.max_datagram
            )
        }
        Frame::Welcome(w) => format!(
            "Welcome relay_id=0x{:016x} max_datagram={}",
            w.relay_id, w.max_datagram
        ),
        Frame::Refuse { code, reason } => {
            format!(
                "Refuse code={} reason={}",
                code.code(),
                bytes(reason.as_bytes())
            )
        }
        Frame::Datagram(d) => format!("Datagram datagram={}", bytes(d)),
        Frame::Repair(d) => format!("Repair datagram={}", bytes(d)),
        Frame::Nak { flags, datagram } => {
            format!("Nak flags=0x{flags:02x} datagram={}", bytes(datagram))
        }
        Frame::Shed(s) => format!(
            "Shed stream={} session=0x{:016x} datagrams={} bytes={}",
            s.stream.0, s.session.0, s.datagrams, s.bytes
        ),
        Frame::Ping(t) => format!("Ping token={t}"),
        Frame::Pong(t) => format!("Pong token={t}"),
        Frame::Goodbye { code, reason } => {
            format!("Goodbye code={code} reason={}", bytes(reason.as_bytes()))
        }
    }
}

/// The result line of a §12.5 block for `buf`, checking `used` on the way.
fn result_line(buf: &[u8]) -> String {
    match decode(buf) {
        Ok(Decoded::Frame(f, used)) => {
            assert_eq!(used, buf.len(), "a vector holds one frame");
            format!("decoded: {}", frame_text(&f))
        }
        Ok(Decoded::Skipped { kind, used }) => {
            assert_eq!(used, buf.len(), "a vector holds one frame");
            format!("skipped: kind=0x{kind:02x}")
        }
        Ok(Decoded::Incomplete { needed }) => format!("incomplete: needed={needed}"),
        Err(e) => format!("error: {}", error_name(&e)),
    }
}

fn hex(v: &str) -> Vec<u8> {
    let v: String = v.chars().filter(|c| !c.is_whitespace()).collect();
    (0..v.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&v[i..i + 2], 16).unwrap())
        .collect()
}

/// The value of `field` in the fenced block of `tag` named `name`.
fn block_field(text: &str, tag: &str, name: &str, field: &str) -> Vec<u8> {
    let block = text
        .split(&format!("```{tag}\n"))
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .find(|b| b.lines().next() == Some(&format!("name: {name}")))
        .unwrap_or_else(|| panic!("no {tag} block named {name}"));
    hex(block
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}: ")))
        .unwrap_or_else(|| panic!("{tag} {name}: no {field}")))
}

/// PROTOCOL.md §12.5: every `relay-frame` block decodes as it says, and
/// every decoded frame encodes back to exactly its bytes.
#[test]
fn protocol_md_relay_vectors() {
    let text = include_str!("../../../PROTOCOL.md");
    let mut names = Vec::new();
    for block in text.split("```relay-frame\n").skip(1) {
        let block = block.split("```").next().unwrap();
        let lines: Vec<&str> = block.lines().collect();
        let [name, frame, result] = lines[..] else {
            panic!("a relay-frame block has three lines: {block}");
        };
        let name = name.strip_prefix("name: ").expect("name first");
        let buf = hex(frame.strip_prefix("frame: ").expect("frame second"));
        assert_eq!(result_line(&buf), result, "{name}");
        if let Ok(Decoded::Frame(f, _)) = decode(&buf) {
            let mut out = Vec::new();
            f.encode(&mut out).unwrap();
            assert_eq!(out, buf, "{name}: encoding");
            assert_eq!(f.body_len() + FRAME_HEADER_LEN, buf.len(), "{name}");
        }
        names.push(name);
    }
    for want in [
        "hello-feeder",
        "hello-subscriber",
        "welcome",
        "refuse-not-allowed",
        "datagram-heartbeat",
        "nak-second-ask",
        "shed",
        "ping",
        "goodbye",
        "skippable-unknown",
        "length-past-the-end",
        "critical-unknown",
        "datagram-too-short",
        "hello-bad-magic",
        "hello-count-disagrees",
    ] {
        assert!(names.contains(&want), "§12.5 lacks {want}");
    }
    assert_eq!(names.len(), 22, "PROTOCOL.md §12.5 has 22 vectors");
    // The wrapped datagrams are the spec's own vectors, byte for byte.
    for (frame, skip, tag, name, field) in [
        ("datagram-heartbeat", 3, "vector", "heartbeat", "hex"),
        ("repair-retransmit", 3, "vector", "retransmit", "hex"),
        ("nak-second-ask", 4, "sealed", "sealed-nak", "sealed"),
    ] {
        let buf = block_field(text, "relay-frame", frame, "frame");
        assert_eq!(buf[skip..], block_field(text, tag, name, field), "{frame}");
    }
}

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

#[test]
fn the_size_limits_of_encoding() {
    let hello = |n: u32| Hello {
        role: Role::Feeder,
        relay_id: 1,
        max_datagram: 1452,
        streams: (0..n).map(StreamId).collect(),
    };
    let mut out = Vec::new();
    let most = MAX_HELLO_STREAMS as u32;
    Frame::Hello(hello(most)).encode(&mut out).unwrap();
    assert_eq!(out.len(), FRAME_HEADER_LEN + 20 + 4 * MAX_HELLO_STREAMS);
    assert!(matches!(
        decode(&out),
        Ok(Decoded::Frame(Frame::Hello(h), _)) if h == hello(most)
    ));
    out.clear();
    assert!(matches!(
        Frame::Hello(hello(most + 1)).encode(&mut out),
        Err(FrameError::TooLarge(_))
    ));
    assert!(out.is_empty());
    let big = vec![0u8; MAX_BODY];
    Frame::Datagram(&big).encode(&mut out).unwrap();
    assert_eq!(out.len(), FRAME_HEADER_LEN + MAX_BODY);
    assert!(
        matches!(decode(&out), Ok(Decoded::Frame(Frame::Datagram(d), n)) if d.len() == MAX_BODY && n == out.len())
    );
    out.clear();
    let bigger = vec![0u8; MAX_BODY + 1];
    assert_eq!(
        Frame::Repair(&bigger).encode(&mut out),
        Err(FrameError::TooLarge(MAX_BODY + 1))
    );
    assert_eq!(
        Frame::Nak {
            flags: 0,
            datagram: &big,
        }
        .encode(&mut out),
        Err(FrameError::TooLarge(MAX_BODY + 1))
    );
    assert!(out.is_empty());
    // A Hello naming 1025 streams, its length agreeing, is refused.
    let mut body = b"GRPR\x01\x00".to_vec();
    body.extend_from_slice(&[0; 12]);
    body.extend_from_slice(&1025u16.to_be_bytes());
    body.extend(std::iter::repeat_n(0u8, 4 * 1025));
    let mut buf = vec![0x01];
    buf.extend_from_slice(&(body.len() as u16).to_be_bytes());
    buf.extend_from_slice(&body);
    assert!(matches!(
        decode(&buf),
        Err(FrameError::BadLength { kind: 0x01, .. })
    ));
}

/// Every kind this version defines is the kind its frames carry.
#[test]
fn kinds_are_the_table_of_section_12_2() {
    let d = [0u8; HEADER_LEN];
    let frames = [
        (
            Frame::Welcome(Welcome {
                relay_id: 0,
                max_datagram: 0,
            }),
            0x02,
        ),
        (
            Frame::Refuse {
                code: RefuseCode::Busy,
                reason: "",
            },
            0x03,
        ),
        (Frame::Datagram(&d), 0x10),
        (Frame::Repair(&d), 0x11),
        (
            Frame::Nak {
                flags: 0,
                datagram: &d,
            },
            0x12,
        ),
        (Frame::Ping(0), 0x20),
        (Frame::Pong(0), 0x21),
        (
            Frame::Goodbye {
                code: 0,
                reason: "",
            },
            0x30,
        ),
    ];
    for (f, kind) in frames {
        assert_eq!(f.kind() as u8, kind, "{f:?}");
        let mut out = Vec::new();
        f.encode(&mut out).unwrap();
        assert_eq!(out[0], kind);
    }
    for code in 0..=7 {
        assert_eq!(RefuseCode::from_code(code).code(), code);
    }
}

/// An owned frame, for strategies (a [`Frame`] borrows its bytes).
#[derive(Clone, Debug)]
enum Owned {
    Hello(Hello),
    Welcome(Welcome),
    Refuse(u16, String),
    Datagram(Vec<u8>),
    Repair(Vec<u8>),
    Nak(u8, Vec<u8>),
    Shed(Shed),
    Ping(u64),
    Pong(u64),
    Goodbye(u16, String),
    /// A frame of a kind in `0x40..=0x7f`, written by hand.
    Skippable(u8, Vec<u8>),
}

impl Owned {
    fn frame(&self) -> Option<Frame<'_>> {
        Some(match self {
            Owned::Hello(h) => Frame::Hello(h.clone()),
            Owned::Welcome(w) => Frame::Welcome(*w),
            Owned::Refuse(c, r) => Frame::Refuse {
                code: RefuseCode::from_code(*c),
                reason: r,
            },
            Owned::Datagram(d) => Frame::Datagram(d),
            Owned::Repair(d) => Frame::Repair(d),
            Owned::Nak(flags, d) => Frame::Nak {
                flags: *flags,
                datagram: d,
            },
            Owned::Shed(s) => Frame::Shed(*s),
            Owned::Ping(t) => Frame::Ping(*t),
            Owned::Pong(t) => Frame::Pong(*t),
            Owned::Goodbye(c, r) => Frame::Goodbye {
                code: *c,
                reason: r,
            },
            Owned::Skippable(..) => return None,
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match (self, self.frame()) {
            (_, Some(f)) => f.encode(out).unwrap(),
            (Owned::Skippable(kind, body), None) => {
                out.push(*kind);
                out.extend_from_slice(&(body.len() as u16).to_be_bytes());
                out.extend_from_slice(body);
            }
            _ => unreachable!(),
        }
    }
}

fn datagram() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => prop::collection::vec(any::<u8>(), HEADER_LEN..HEADER_LEN + 64),
        1 => prop::collection::vec(any::<u8>(), MAX_BODY..=MAX_BODY),
    ]
}

fn reason() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), ".{0,40}"]
}

fn hello() -> impl Strategy<Value = Hello> {
    (
        any::<bool>(),
        any::<u64>(),
        any::<u32>(),
        prop_oneof![
            8 => prop::collection::vec(any::<u32>(), 0..8),
            1 => prop::collection::vec(any::<u32>(), MAX_HELLO_STREAMS..=MAX_HELLO_STREAMS),
        ],
    )
        .prop_map(|(sub, relay_id, max_datagram, ids)| Hello {
            role: if sub { Role::Subscriber } else { Role::Feeder },
            relay_id,
            max_datagram,
            streams: ids.into_iter().map(StreamId).collect(),
        })
}

fn owned() -> impl Strategy<Value = Owned> {
    prop_oneof![
        hello().prop_map(Owned::Hello),
        (any::<u64>(), any::<u32>()).prop_map(|(relay_id, max_datagram)| Owned::Welcome(Welcome {
            relay_id,
            max_datagram
        })),
        (any::<u16>(), reason()).prop_map(|(c, r)| Owned::Refuse(c, r)),
        datagram().prop_map(Owned::Datagram),
        datagram().prop_map(Owned::Repair),
        (
            any::<u8>(),
            prop::collection::vec(any::<u8>(), HEADER_LEN..HEADER_LEN + 64)
        )
            .prop_map(|(f, d)| Owned::Nak(f, d)),
        (any::<u32>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(s, x, d, b)| {
            Owned::Shed(Shed {
                stream: StreamId(s),
                session: SessionId(x),
                datagrams: d,
                bytes: b,
            })
        }),
        any::<u64>().prop_map(Owned::Ping),
        any::<u64>().prop_map(Owned::Pong),
        (any::<u16>(), reason()).prop_map(|(c, r)| Owned::Goodbye(c, r)),
        (0x40u8..=0x7f, prop::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(k, b)| Owned::Skippable(k, b)),
    ]
}

/// Bytes that look like frames often enough to reach every check: a kind
/// near the defined ones, a length that is the body's or not, and a body
/// that may start like a Hello or a datagram.
fn framelike() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![
            prop::sample::select(vec![
                0x00u8, 0x01, 0x02, 0x03, 0x04, 0x10, 0x11, 0x12, 0x13, 0x14, 0x20, 0x21, 0x22,
                0x30, 0x3f, 0x40, 0x41, 0x7f, 0x80, 0xff
            ]),
            any::<u8>(),
        ],
        prop_oneof![
            Just(Vec::new()),
            Just(b"GRPR\x01".to_vec()),
            Just(b"GRPR\x01\x00".to_vec()),
            Just(b"GRPR\x01\x01".to_vec()),
            Just(b"GRPV\x01\x00\x00\x00".to_vec()),
        ],
        prop::collection::vec(any::<u8>(), 0..64),
        prop::option::of(any::<u16>()),
        prop::collection::vec(any::<u8>(), 0..8),
    )
        .prop_map(|(kind, start, rest, length, trailing)| {
            let mut body = start;
            body.extend(rest);
            let length = length.unwrap_or(body.len() as u16);
            let mut buf = vec![kind];
            buf.extend_from_slice(&length.to_be_bytes());
            buf.extend(body);
            buf.extend(trailing);
            buf
        })
}

/// Decoding `buf`: never more than the buffer, an exact `needed`, and
/// every frame it accepts re-encodes to exactly the bytes it used.
fn check_decode(buf: &[u8]) -> Result<(), TestCaseError> {
    match decode(buf) {
        Ok(Decoded::Frame(f, used)) => {
            prop_assert!((FRAME_HEADER_LEN..=buf.len()).contains(&used));
            let mut out = Vec::new();
            f.encode(&mut out).unwrap();
            prop_assert_eq!(&out[..], &buf[..used]);
            let _ = frame_text(&f);
        }
        Ok(Decoded::Skipped { kind, used }) => {
            prop_assert!((0x40..=0x7f).contains(&kind));
            prop_assert!((FRAME_HEADER_LEN..=buf.len()).contains(&used));
        }
        Ok(Decoded::Incomplete { needed }) => {
            prop_assert!(needed > buf.len());
            let want = if buf.len() < FRAME_HEADER_LEN {
                FRAME_HEADER_LEN
            } else {
                FRAME_HEADER_LEN + usize::from(u16::from_be_bytes([buf[1], buf[2]]))
            };
            prop_assert_eq!(needed, want);
        }
        Err(e) => {
            let _ = e.to_string();
            let _ = error_name(&e);
        }
    }
    Ok(())
}

proptest! {
    /// Every frame kind: encoding then decoding gives the same frame, and
    /// uses exactly what was written.
    #[test]
    fn every_frame_round_trips(o in owned()) {
        let mut buf = Vec::new();
        o.encode(&mut buf);
        match (o.frame(), decode(&buf)) {
            (Some(f), Ok(Decoded::Frame(back, used))) => {
                prop_assert_eq!(used, buf.len());
                prop_assert_eq!(f.body_len() + FRAME_HEADER_LEN, buf.len());
                prop_assert_eq!(back, f);
            }
            (None, Ok(Decoded::Skipped { kind, used })) => {
                prop_assert_eq!(used, buf.len());
                prop_assert_eq!(kind, buf[0]);
            }
            (f, other) => prop_assert!(false, "{f:?} decoded as {other:?}"),
        }
    }

    /// Arbitrary bytes: no panic, nothing used beyond the buffer, and what
    /// is accepted is canonical.
    #[test]
    fn arbitrary_bytes_never_overrun(buf in prop::collection::vec(any::<u8>(), 0..96)) {
        check_decode(&buf)?;
    }

    /// The same for bytes shaped like frames, which reach every check.
    #[test]
    fn framelike_bytes_never_overrun(buf in framelike()) {
        check_decode(&buf)?;
    }

    /// Frames written back to back come out one by one, skipped ones
    /// included, each using exactly its own bytes.
    #[test]
    fn concatenated_frames_decode_one_by_one(frames in prop::collection::vec(owned(), 1..8)) {
        let mut buf = Vec::new();
        let mut ends = Vec::new();
        for o in &frames {
            o.encode(&mut buf);
            ends.push(buf.len());
        }
        let mut at = 0;
        for (o, end) in frames.iter().zip(ends) {
            match (o.frame(), decode(&buf[at..])) {
                (Some(f), Ok(Decoded::Frame(back, used))) => {
                    prop_assert_eq!(back, f);
                    at += used;
                }
                (None, Ok(Decoded::Skipped { used, .. })) => at += used,
                (f, other) => prop_assert!(false, "{f:?} decoded as {other:?}"),
            }
            prop_assert_eq!(at, end);
        }
        prop_assert_eq!(decode(&buf[at..]), Ok(Decoded::Incomplete { needed: FRAME_HEADER_LEN }));
    }

    /// Every truncation of a valid frame asks for exactly the bytes the
    /// frame needs: 3 until the header is there, then the whole frame.
    #[test]
    fn every_truncation_asks_for_exactly_what_is_missing(o in owned()) {
        let mut buf = Vec::new();
        o.encode(&mut buf);
        for cut in 0..buf.len() {
            let needed = if cut < FRAME_HEADER_LEN { FRAME_HEADER_LEN } else { buf.len() };
            prop_assert_eq!(decode(&buf[..cut]), Ok(Decoded::Incomplete { needed }), "cut {}", cut);
        }
    }
}
