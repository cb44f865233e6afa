//! The relay link's frames (PROTOCOL.md §12): what two relays, or a relay
//! and a unicast subscriber, say to each other over one reliable byte
//! stream (a QUIC stream, or TLS over TCP).
//!
//! A frame is `kind` (u8), `length` (u16, big-endian) and `length` bytes
//! of body. [`decode`] reads one from the front of a buffer and never
//! panics nor trusts a length; [`Frame::encode`] appends one to a vector.
//!
//! ```
//! use grapevine_core::relay::frame::{decode, Decoded, Frame};
//!
//! let mut buf = Vec::new();
//! Frame::Ping(7).encode(&mut buf)?;
//! match decode(&buf)? {
//!     Decoded::Frame(frame, used) => {
//!         assert_eq!(frame, Frame::Ping(7));
//!         assert_eq!(used, buf.len());
//!     }
//!     other => panic!("{other:?}"),
//! }
//! // Half a frame asks for more bytes.
//! assert!(matches!(decode(&buf[..2])?, Decoded::Incomplete { .. }));
//! # Ok::<(), grapevine_core::relay::frame::FrameError>(())
//! ```

use crate::wire::HEADER_LEN;
use crate::StreamId;

/// Bytes before a frame's body: `kind` and `length`.
pub const FRAME_HEADER_LEN: usize = 3;
/// The largest body a frame can carry.
pub const MAX_BODY: usize = u16::MAX as usize;
/// The first bytes of a Hello body.
pub const HELLO_MAGIC: [u8; 4] = *b"GRPR";
/// The link protocol version this crate speaks.
pub const LINK_VERSION: u8 = 1;
/// The TLS application protocol (ALPN) of the relay link.
pub const ALPN: &[u8] = b"grapevine-relay/1";
/// Most stream ids a Hello may name.
pub const MAX_HELLO_STREAMS: usize = 1024;
/// Nak frame flag: a hop downstream already answered this from its
/// history and was asked again; forward it to the publisher, do not
/// answer it.
pub const NAK_SECOND_ASK: u8 = 0x01;

/// Frame kinds (PROTOCOL.md §12.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
#[non_exhaustive]
pub enum FrameKind {
    /// The dialer's first frame.
    Hello = 0x01,
    /// The listener accepts a Hello.
    Welcome = 0x02,
    /// The listener refuses a Hello, then closes.
    Refuse = 0x03,
    /// One Grapevine datagram, as heard.
    Datagram = 0x10,
    /// One Grapevine datagram, repeated in answer to a NAK.
    Repair = 0x11,
    /// A subscriber's Nak or FragNak datagram, as it sent it.
    Nak = 0x12,
    /// What the sending side shed for lack of link capacity.
    Shed = 0x13,
    /// Liveness and round-trip time.
    Ping = 0x20,
    /// The answer to a Ping.
    Pong = 0x21,
    /// The sender closes the link, and why.
    Goodbye = 0x30,
}

/// What a relay link carries: a dialer's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Role {
    /// Another relay, sending streams to the listener (0).
    Feeder,
    /// A unicast subscriber, receiving streams from the listener (1).
    Subscriber,
}

/// The dialer's first frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Who dials.
    pub role: Role,
    /// Random per relay process: a listener refuses its own.
    pub relay_id: u64,
    /// The largest datagram the dialer takes or sends.
    pub max_datagram: u32,
    /// The streams the dialer sends (feeder) or wants (subscriber); empty:
    /// all.
    pub streams: Vec<StreamId>,
}

/// The listener's answer to a Hello it accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Welcome {
    /// The listener's relay id.
    pub relay_id: u64,
    /// The largest datagram the listener takes or sends.
    pub max_datagram: u32,
}

/// Why a listener refuses a Hello (PROTOCOL.md §12.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefuseCode {
    /// A link version the listener does not speak (1).
    Version,
    /// The dialer is the listener itself (2).
    SelfLink,
    /// The dialer's certificate is not allowed for its role (3).
    NotAllowed,
    /// The role is not served by this listener (4).
    Role,
    /// The listener serves as many links as it may (5).
    Busy,
    /// A code this version does not know.
    Other(u16),
}

impl RefuseCode {
    /// The code on the wire.
    #[must_use]
    pub fn code(self) -> u16 {
        match self {
            RefuseCode::Version => 1,
            RefuseCode::SelfLink => 2,
            RefuseCode::NotAllowed => 3,
            RefuseCode::Role => 4,
            RefuseCode::Busy => 5,
            RefuseCode::Other(c) => c,
        }
    }

    /// The code read from the wire.
    #[must_use]
    pub fn from_code(code: u16) -> Self {
        match code {
            1 => RefuseCode::Version,
            2 => RefuseCode::SelfLink,
            3 => RefuseCode::NotAllowed,
            4 => RefuseCode::Role,
            5 => RefuseCode::Busy,
            c => RefuseCode::Other(c),
        }
    }
}

/// What the sending side shed since its last Shed frame, for one session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shed {
    /// The stream.
    pub stream: StreamId,
    /// The session.
    pub session: crate::SessionId,
    /// Datagrams shed.
    pub datagrams: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// One decoded frame, borrowing the received bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Frame<'a> {
    /// The dialer's first frame.
    Hello(Hello),
    /// The listener accepts.
    Welcome(Welcome),
    /// The listener refuses.
    Refuse {
        /// Why.
        code: RefuseCode,
        /// For people.
        reason: &'a str,
    },
    /// One Grapevine datagram, as heard (at least a §3 header long).
    Datagram(&'a [u8]),
    /// One Grapevine datagram, repeated in answer to a NAK.
    Repair(&'a [u8]),
    /// A subscriber's NAK datagram, byte for byte.
    Nak {
        /// [`NAK_SECOND_ASK`] and reserved bits.
        flags: u8,
        /// The NAK datagram.
        datagram: &'a [u8],
    },
    /// Shed counts.
    Shed(Shed),
    /// Liveness probe.
    Ping(u64),
    /// Its answer.
    Pong(u64),
    /// The sender closes the link.
    Goodbye {
        /// Why (the same codes as Refuse, 0 for a plain close).
        code: u16,
        /// For people.
        reason: &'a str,
    },
}

/// What [`decode`] found at the front of a buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole frame, and the bytes it used.
    Frame(Frame<'a>, usize),
    /// A frame of an unknown kind that may be skipped (`0x40..=0x7f`), and
    /// the bytes it used.
    Skipped {
        /// Its kind.
        kind: u8,
        /// Bytes used.
        used: usize,
    },
    /// Not a whole frame yet: at least `needed` bytes in all are needed.
    Incomplete {
        /// Bytes the frame needs in all.
        needed: usize,
    },
}

/// A frame that cannot be read or written. A link that receives one is
/// closed (PROTOCOL.md §12.2).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// An unknown kind outside the skippable range.
    #[error("unknown relay frame kind {0:#04x}")]
    UnknownKind(u8),
    /// The body has the wrong length for its kind.
    #[error("relay frame kind {kind:#04x}: body of {len} bytes, expected {expected}")]
    BadLength {
        /// The kind.
        kind: u8,
        /// Its body's length.
        len: usize,
        /// What was expected.
        expected: &'static str,
    },
    /// A Hello without the magic, or of another version.
    #[error("relay Hello: not a Grapevine relay link (magic {magic:02x?}, version {version})")]
    BadHello {
        /// The first four bytes.
        magic: [u8; 4],
        /// The version byte.
        version: u8,
    },
    /// A role that is neither feeder nor subscriber.
    #[error("relay Hello: unknown role {0}")]
    BadRole(u8),
    /// A reason that is not UTF-8.
    #[error("relay frame kind {0:#04x}: reason is not UTF-8")]
    NotUtf8(u8),
    /// A frame too large to encode.
    #[error("relay frame body of {0} bytes exceeds {MAX_BODY}")]
    TooLarge(usize),
}

fn be<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    b.get(at..at + N)?.try_into().ok()
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    be(b, at).map(u16::from_be_bytes)
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    be(b, at).map(u32::from_be_bytes)
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    be(b, at).map(u64::from_be_bytes)
}

/// Reads one frame from the front of `buf`.
///
/// # Errors
///
/// [`FrameError`] for a frame that is not valid: the link must close.
pub fn decode(buf: &[u8]) -> Result<Decoded<'_>, FrameError> {
    let (Some(&kind), Some(len)) = (buf.first(), u16_at(buf, 1)) else {
        return Ok(Decoded::Incomplete {
            needed: FRAME_HEADER_LEN,
        });
    };
    let used = FRAME_HEADER_LEN + usize::from(len);
    let Some(body) = buf.get(FRAME_HEADER_LEN..used) else {
        return Ok(Decoded::Incomplete { needed: used });
    };
    let bad = |expected| FrameError::BadLength {
        kind,
        len: body.len(),
        expected,
    };
    let exact = |n: usize, expected| {
        if body.len() == n {
            Ok(())
        } else {
            Err(bad(expected))
        }
    };
    let text = |at: usize| {
        std::str::from_utf8(body.get(at..).unwrap_or_default())
            .map_err(|_| FrameError::NotUtf8(kind))
    };
    let frame = match kind {
        0x01 => Frame::Hello(decode_hello(body)?),
        0x02 => {
            exact(13, "13")?;
            let (Some(&version), Some(relay_id), Some(max_datagram)) =
                (body.first(), u64_at(body, 1), u32_at(body, 9))
            else {
                return Err(bad("13"));
            };
            if version != LINK_VERSION {
                return Err(FrameError::BadHello {
                    magic: HELLO_MAGIC,
                    version,
                });
            }
            Frame::Welcome(Welcome {
                relay_id,
                max_datagram,
            })
        }
        0x03 | 0x30 => {
            let code = u16_at(body, 0).ok_or_else(|| bad("at least 2"))?;
            let reason = text(2)?;
            if kind == 0x03 {
                Frame::Refuse {
                    code: RefuseCode::from_code(code),
                    reason,
                }
            } else {
                Frame::Goodbye { code, reason }
            }
        }
        0x10 | 0x11 => {
            if body.len() < HEADER_LEN {
                return Err(bad("at least a datagram header (28)"));
            }
            if kind == 0x10 {
                Frame::Datagram(body)
            } else {
                Frame::Repair(body)
            }
        }
        0x12 => match body.split_first() {
            Some((&flags, datagram)) if datagram.len() >= HEADER_LEN => {
                Frame::Nak { flags, datagram }
            }
            _ => return Err(bad("flags and at least a datagram header (29)")),
        },
        0x13 => {
            exact(28, "28")?;
            match (
                u32_at(body, 0),
                u64_at(body, 4),
                u64_at(body, 12),
                u64_at(body, 20),
            ) {
                (Some(stream), Some(session), Some(datagrams), Some(bytes)) => Frame::Shed(Shed {
                    stream: StreamId(stream),
                    session: crate::SessionId(session),
                    datagrams,
                    bytes,
                }),
                _ => return Err(bad("28")),
            }
        }
        0x20 | 0x21 => {
            exact(8, "8")?;
            let token = u64_at(body, 0).ok_or_else(|| bad("8"))?;
            if kind == 0x20 {
                Frame::Ping(token)
            } else {
                Frame::Pong(token)
            }
        }
        0x40..=0x7f => return Ok(Decoded::Skipped { kind, used }),
        _ => return Err(FrameError::UnknownKind(kind)),
    };
    Ok(Decoded::Frame(frame, used))
}

fn decode_hello(body: &[u8]) -> Result<Hello, FrameError> {
    let kind = FrameKind::Hello as u8;
    let bad = |expected| FrameError::BadLength {
        kind,
        len: body.len(),
        expected,
    };
    let magic: [u8; 4] = be(body, 0).ok_or_else(|| bad("at least 20"))?;
    let version = body.get(4).copied().ok_or_else(|| bad("at least 20"))?;
    if magic != HELLO_MAGIC || version != LINK_VERSION {
        return Err(FrameError::BadHello { magic, version });
    }
    let (Some(&role), Some(relay_id), Some(max_datagram), Some(count)) = (
        body.get(5),
        u64_at(body, 6),
        u32_at(body, 14),
        u16_at(body, 18),
    ) else {
        return Err(bad("at least 20"));
    };
    let role = match role {
        0 => Role::Feeder,
        1 => Role::Subscriber,
        r => return Err(FrameError::BadRole(r)),
    };
    let count = usize::from(count);
    if count > MAX_HELLO_STREAMS || body.len() != 20 + 4 * count {
        return Err(bad("20 + 4 x stream_count, at most 1024 streams"));
    }
    let streams = body
        .get(20..)
        .unwrap_or_default()
        .chunks_exact(4)
        .filter_map(|c| c.try_into().ok().map(|b| StreamId(u32::from_be_bytes(b))))
        .collect();
    Ok(Hello {
        role,
        relay_id,
        max_datagram,
        streams,
    })
}

impl Frame<'_> {
    /// Its kind.
    #[must_use]
    pub fn kind(&self) -> FrameKind {
        match self {
            Frame::Hello(_) => FrameKind::Hello,
            Frame::Welcome(_) => FrameKind::Welcome,
            Frame::Refuse { .. } => FrameKind::Refuse,
            Frame::Datagram(_) => FrameKind::Datagram,
            Frame::Repair(_) => FrameKind::Repair,
            Frame::Nak { .. } => FrameKind::Nak,
            Frame::Shed(_) => FrameKind::Shed,
            Frame::Ping(_) => FrameKind::Ping,
            Frame::Pong(_) => FrameKind::Pong,
            Frame::Goodbye { .. } => FrameKind::Goodbye,
        }
    }

    /// Bytes of its body.
    #[must_use]
    pub fn body_len(&self) -> usize {
        match self {
            Frame::Hello(h) => 20 + 4 * h.streams.len(),
            Frame::Welcome(_) => 13,
            Frame::Refuse { reason, .. } | Frame::Goodbye { reason, .. } => 2 + reason.len(),
            Frame::Datagram(d) | Frame::Repair(d) => d.len(),
            Frame::Nak { datagram, .. } => 1 + datagram.len(),
            Frame::Shed(_) => 28,
            Frame::Ping(_) | Frame::Pong(_) => 8,
        }
    }

    /// Appends the frame to `out`.
    ///
    /// # Errors
    ///
    /// [`FrameError::TooLarge`] if its body exceeds [`MAX_BODY`] (a Hello
    /// naming more than [`MAX_HELLO_STREAMS`] streams counts as too large);
    /// [`FrameError::BadLength`] for a Datagram, Repair or Nak whose
    /// datagram is shorter than a §3 header, which [`decode`] would refuse
    /// (and the link close). Nothing is appended then.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        let len = self.body_len();
        let short = match self {
            Frame::Datagram(d) | Frame::Repair(d) => {
                (d.len() < HEADER_LEN).then_some("at least a datagram header (28)")
            }
            Frame::Nak { datagram, .. } => {
                (datagram.len() < HEADER_LEN).then_some("flags and at least a datagram header (29)")
            }
            _ => None,
        };
        if let Some(expected) = short {
            return Err(FrameError::BadLength {
                kind: self.kind() as u8,
                len,
                expected,
            });
        }
        let hello_streams = match self {
            Frame::Hello(h) => h.streams.len(),
            _ => 0,
        };
        let Ok(len16) = u16::try_from(len) else {
            return Err(FrameError::TooLarge(len));
        };
        if hello_streams > MAX_HELLO_STREAMS {
            return Err(FrameError::TooLarge(len));
        }
        out.reserve(FRAME_HEADER_LEN + len);
        out.push(self.kind() as u8);
        out.extend_from_slice(&len16.to_be_bytes());
        match self {
            Frame::Hello(h) => {
                out.extend_from_slice(&HELLO_MAGIC);
                out.push(LINK_VERSION);
                out.push(match h.role {
                    Role::Feeder => 0,
                    Role::Subscriber => 1,
                });
                out.extend_from_slice(&h.relay_id.to_be_bytes());
                out.extend_from_slice(&h.max_datagram.to_be_bytes());
                out.extend_from_slice(&(h.streams.len() as u16).to_be_bytes());
                for s in &h.streams {
                    out.extend_from_slice(&s.0.to_be_bytes());
                }
            }
            Frame::Welcome(w) => {
                out.push(LINK_VERSION);
                out.extend_from_slice(&w.relay_id.to_be_bytes());
                out.extend_from_slice(&w.max_datagram.to_be_bytes());
            }
            Frame::Refuse { code, reason } => {
                out.extend_from_slice(&code.code().to_be_bytes());
                out.extend_from_slice(reason.as_bytes());
            }
            Frame::Goodbye { code, reason } => {
                out.extend_from_slice(&code.to_be_bytes());
                out.extend_from_slice(reason.as_bytes());
            }
            Frame::Datagram(d) | Frame::Repair(d) => out.extend_from_slice(d),
            Frame::Nak { flags, datagram } => {
                out.push(*flags);
                out.extend_from_slice(datagram);
            }
            Frame::Shed(s) => {
                out.extend_from_slice(&s.stream.0.to_be_bytes());
                out.extend_from_slice(&s.session.0.to_be_bytes());
                out.extend_from_slice(&s.datagrams.to_be_bytes());
                out.extend_from_slice(&s.bytes.to_be_bytes());
            }
            Frame::Ping(t) | Frame::Pong(t) => out.extend_from_slice(&t.to_be_bytes()),
        }
        Ok(())
    }
}
