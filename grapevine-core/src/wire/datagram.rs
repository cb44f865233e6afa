//! The datagram: a fixed header followed by one or more messages.

use core::fmt;

use super::cursor::{Reader, Writer};
use super::{DecodeError, EncodeError, Message, MessageKind};
use crate::auth::{FLAG_AUTH, FLAG_SNAPSHOTS, KNOWN_FLAGS};
use crate::{SessionId, StreamId};

/// The four magic bytes that open every datagram: ASCII `GRPV`.
pub const MAGIC: [u8; 4] = *b"GRPV";
/// The protocol version this implementation speaks.
pub const VERSION: u8 = 1;
/// Length of the datagram header in bytes.
pub const HEADER_LEN: usize = 28;
/// Length of a message header (kind, flags, body length).
pub const MESSAGE_HEADER_LEN: usize = 4;
/// Largest body one message can carry; larger ones are fragmented.
pub const MAX_BODY_LEN: usize = u16::MAX as usize;
/// Default maximum datagram size: a 1500-byte Ethernet MTU less the IPv6
/// (40) and UDP (8) headers, so that no default datagram is IP-fragmented over
/// IPv4 or IPv6.
pub const DEFAULT_MAX_DATAGRAM: usize = 1452;

/// Whether `datagram` carries leaf snapshots: a CycleBegin copy followed
/// by a LeafSnapshot, as every datagram of snapshots a cycle sends is
/// (PROTOCOL.md §8.1). Only the kinds of the first two messages are looked
/// at; nothing is validated. An authenticated datagram (PROTOCOL.md §11),
/// encrypted or not, is read from its `flags` (bit 3, set by the sender
/// and covered by the tag; unverified here).
///
/// A receiver holding several datagrams may handle those after the
/// others: a snapshot may be handled in any order relative to deltas
/// (§8.2), so deltas need not wait behind them. A CycleEnd datagram (a
/// CycleBegin copy, then the CycleEnd) is not one of them: its `end_seq`
/// is a claim about the stream's tail, like a heartbeat's, and handled
/// late it could re-anchor the tail below newer deltas (§8.4).
///
/// ```
/// use grapevine_core::wire::carries_snapshots;
/// use grapevine_core::wire::{CycleBegin, DatagramHeader, DatagramWriter, LeafSnapshot, Message};
/// use grapevine_core::{CycleId, SeqNum, SessionId, StreamId};
///
/// let header = DatagramHeader { stream: StreamId(1), session: SessionId(2), datagram_seq: 1 };
/// let mut buf = [0u8; 128];
/// let mut w = DatagramWriter::new(&mut buf, &header).unwrap();
/// let begin = CycleBegin { cycle: CycleId(0), start_seq: SeqNum(0), leaf_count: 1 };
/// w.push(&Message::CycleBegin(begin)).unwrap();
/// let leaf = LeafSnapshot { cycle: CycleId(0), position: 0, leaf_seq: SeqNum(0), key: b"k", value: Some(b"v") };
/// w.push(&Message::LeafSnapshot(leaf)).unwrap();
/// let n = w.finish();
/// assert!(carries_snapshots(&buf[..n]));
/// assert!(!carries_snapshots(b"GRPV"));
/// ```
#[must_use]
pub fn carries_snapshots(datagram: &[u8]) -> bool {
    // An authenticated datagram says so in its flags (PROTOCOL.md §11.2),
    // encrypted or not.
    let start = match datagram.get(5).copied() {
        Some(0) => HEADER_LEN,
        Some(f) if f & FLAG_AUTH != 0 => return f & FLAG_SNAPSHOTS != 0,
        _ => return false,
    };
    let kind = |at: usize| datagram.get(at).copied();
    let Some(len) = datagram
        .get(start + 2..start + MESSAGE_HEADER_LEN)
        .and_then(|b| b.try_into().ok())
        .map(u16::from_be_bytes)
    else {
        return false;
    };
    kind(start) == Some(MessageKind::CycleBegin as u8)
        && kind(start + MESSAGE_HEADER_LEN + usize::from(len))
            == Some(MessageKind::LeafSnapshot as u8)
}

/// Checks what every datagram must have, sealed or not: the magic, a
/// whole header and the version, and returns its `flags`, unchecked.
pub(crate) fn check_header(buf: &[u8]) -> Result<u8, DecodeError> {
    // Check the magic before the length so that short foreign datagrams
    // are reported as foreign: bytes that are not a prefix of `GRPV` are
    // foreign even when fewer than four (missing bytes show as 0).
    let mut magic = [0u8; 4];
    for (dst, src) in magic.iter_mut().zip(buf) {
        *dst = *src;
    }
    let present = buf.len().min(MAGIC.len());
    if magic.get(..present) != MAGIC.get(..present) {
        return Err(DecodeError::BadMagic { found: magic });
    }
    let (Some(&version), Some(&flags)) = (buf.get(4), buf.get(5)) else {
        return Err(DecodeError::ShortHeader { len: buf.len() });
    };
    if buf.len() < HEADER_LEN {
        return Err(DecodeError::ShortHeader { len: buf.len() });
    }
    if version != VERSION {
        return Err(DecodeError::UnsupportedVersion { version });
    }
    Ok(flags)
}

/// Reads the header of a datagram, sealed or not, without looking at its
/// body: the magic and version are checked, nothing else is validated
/// (for a sealed datagram, nothing here is authenticated). Returns the
/// header and the `flags` byte.
///
/// ```
/// use grapevine_core::wire::{peek_header, DatagramHeader, DatagramWriter, Heartbeat, Message};
/// use grapevine_core::{SeqNum, SessionId, StreamId};
///
/// let header = DatagramHeader { stream: StreamId(7), session: SessionId(42), datagram_seq: 3 };
/// let mut buf = [0u8; 128];
/// let mut w = DatagramWriter::new(&mut buf, &header).unwrap();
/// w.push(&Message::Heartbeat(Heartbeat { last_seq: SeqNum(0), sent_at_micros: 0, interval_ms: 100 })).unwrap();
/// let n = w.finish();
/// assert_eq!(peek_header(&buf[..n]), Some((header, 0)));
/// assert_eq!(peek_header(&buf[..27]), None);
/// ```
#[must_use]
pub fn peek_header(buf: &[u8]) -> Option<(DatagramHeader, u8)> {
    let flags = check_header(buf).ok()?;
    let be = |at: usize, n: usize| -> Option<u64> {
        buf.get(at..at + n)?
            .iter()
            .try_fold(0u64, |acc, &b| Some(acc << 8 | u64::from(b)))
    };
    let header = DatagramHeader {
        stream: StreamId(u32::try_from(be(8, 4)?).ok()?),
        session: SessionId(be(12, 8)?),
        datagram_seq: be(20, 8)?,
    };
    Some((header, flags))
}

/// The fields of a datagram header that vary (PROTOCOL.md §3).
///
/// Magic, version and flags are fixed in version 1 and written by
/// [`DatagramWriter`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DatagramHeader {
    /// Which replicated state the datagram belongs to.
    pub stream: StreamId,
    /// The sender's publisher session.
    pub session: SessionId,
    /// Per-session datagram counter of the sender, starting at 0.
    pub datagram_seq: u64,
}

impl fmt::Display for DatagramHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "stream={} session={} datagram_seq={}",
            self.stream, self.session, self.datagram_seq
        )
    }
}

/// A validated datagram, borrowing the received bytes.
///
/// [`Datagram::decode`] checks the header and every message before returning,
/// so iterating [`Datagram::messages`] cannot fail.
///
/// ```
/// use grapevine_core::wire::{Datagram, DatagramHeader, DatagramWriter, Heartbeat, Message};
/// use grapevine_core::{SeqNum, SessionId, StreamId};
///
/// let header = DatagramHeader { stream: StreamId(7), session: SessionId(42), datagram_seq: 0 };
/// let hb = Message::Heartbeat(Heartbeat { last_seq: SeqNum(9), sent_at_micros: 0, interval_ms: 100 });
/// let mut buf = [0u8; 1452];
/// let mut w = DatagramWriter::new(&mut buf, &header)?;
/// w.push(&hb)?;
/// let len = w.finish();
///
/// let d = Datagram::decode(&buf[..len])?;
/// assert_eq!(d.header(), header);
/// assert_eq!(d.messages().collect::<Vec<_>>(), vec![hb]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Datagram<'a> {
    header: DatagramHeader,
    body: &'a [u8],
}

impl<'a> Datagram<'a> {
    /// Parses and validates a received datagram. Its messages are parsed
    /// again by [`Datagram::messages`]; a receiver that wants each message
    /// parsed once uses [`Datagram::decode_into`].
    ///
    /// # Errors
    ///
    /// Any [`DecodeError`]: the datagram must then be dropped whole (and
    /// counted under [`DecodeError::code`]).
    pub fn decode(buf: &'a [u8]) -> Result<Self, DecodeError> {
        Self::decode_with(buf, |_| {})
    }

    /// Parses and validates a received datagram in one pass, keeping the
    /// decoded messages in `out` (which lives on the caller's stack and is
    /// reused by no one else): iterating [`Decoded::iter`] afterwards
    /// parses nothing again, but for messages beyond the first
    /// [`DECODED_INLINE`] of an unusually full datagram.
    ///
    /// ```
    /// use grapevine_core::wire::{Datagram, DatagramHeader, DatagramWriter, Decoded, Heartbeat, Message};
    /// use grapevine_core::{SeqNum, SessionId, StreamId};
    ///
    /// let header = DatagramHeader { stream: StreamId(7), session: SessionId(42), datagram_seq: 0 };
    /// let hb = Message::Heartbeat(Heartbeat { last_seq: SeqNum(9), sent_at_micros: 0, interval_ms: 100 });
    /// let mut buf = [0u8; 1452];
    /// let mut w = DatagramWriter::new(&mut buf, &header)?;
    /// w.push(&hb)?;
    /// w.push(&hb)?;
    /// let len = w.finish();
    ///
    /// let mut decoded = Decoded::new();
    /// let d = Datagram::decode_into(&buf[..len], &mut decoded)?;
    /// assert_eq!(d.header(), header);
    /// assert_eq!(decoded.iter().collect::<Vec<_>>(), vec![hb, hb]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Datagram::decode`]; `out` is then left empty.
    pub fn decode_into(buf: &'a [u8], out: &mut Decoded<'a>) -> Result<Self, DecodeError> {
        out.clear();
        let res = Self::decode_with(buf, |m| out.push(m));
        if res.is_err() {
            out.clear();
        } else if let Ok(d) = &res {
            out.set_rest(d.body);
        }
        res
    }

    /// The one walk over a datagram: validates the header and every
    /// message, handing each message to `each` as it goes.
    fn decode_with(buf: &'a [u8], mut each: impl FnMut(Message<'a>)) -> Result<Self, DecodeError> {
        let flags = check_header(buf)?;
        if flags != 0 {
            return Err(if flags & FLAG_AUTH != 0 && flags & !KNOWN_FLAGS == 0 {
                DecodeError::NoKey { flags }
            } else {
                DecodeError::UnsupportedFlags { flags }
            });
        }
        let mut r = Reader::new(buf);
        let short = |_| DecodeError::ShortHeader { len: buf.len() };
        let _magic_version_flags = r.bytes(MAGIC.len() + 2).map_err(short)?;
        let _reserved = r.u16().map_err(short)?;
        let header = DatagramHeader {
            stream: StreamId(r.u32().map_err(short)?),
            session: SessionId(r.u64().map_err(short)?),
            datagram_seq: r.u64().map_err(short)?,
        };
        let body = r.rest();
        let mut count = 0usize;
        let mut walker = Walk { body, offset: 0 };
        while let Some(next) = walker.next_message() {
            each(next?);
            count += 1;
        }
        if count == 0 {
            return Err(DecodeError::Empty);
        }
        Ok(Datagram { header, body })
    }

    /// The datagram's header.
    #[must_use]
    pub fn header(&self) -> DatagramHeader {
        self.header
    }

    /// The messages, in order. Padding is not yielded.
    #[must_use]
    pub fn messages(&self) -> Messages<'a> {
        Messages {
            walk: Walk {
                body: self.body,
                offset: 0,
            },
        }
    }
}

/// How many messages [`Decoded`] keeps decoded: more than a datagram of
/// the default size holds of any real mix (~52 small leaf snapshots).
pub const DECODED_INLINE: usize = 64;

/// The messages of one datagram as [`Datagram::decode_into`] decoded
/// them: the first [`DECODED_INLINE`] kept, the rest (rare) parsed again
/// when iterated. About 4 KiB, for the caller's stack; nothing allocated.
#[derive(Clone, Debug)]
pub struct Decoded<'a> {
    inline: [Option<Message<'a>>; DECODED_INLINE],
    len: usize,
    /// The messages beyond the inline ones, still to parse.
    rest: Walk<'a>,
    /// How many messages `rest` skips (those kept inline).
    skip: usize,
}

impl Default for Decoded<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a> Decoded<'a> {
    /// Empty.
    #[must_use]
    pub fn new() -> Self {
        Self {
            inline: [None; DECODED_INLINE],
            len: 0,
            rest: Walk {
                body: &[],
                offset: 0,
            },
            skip: 0,
        }
    }

    fn clear(&mut self) {
        self.len = 0;
        self.skip = 0;
        self.rest = Walk {
            body: &[],
            offset: 0,
        };
    }

    fn push(&mut self, m: Message<'a>) {
        if let Some(slot) = self.inline.get_mut(self.len) {
            *slot = Some(m);
            self.len += 1;
        } else {
            self.skip = self.len;
        }
    }

    /// After a datagram of more than [`DECODED_INLINE`] messages was
    /// validated: where to resume parsing.
    fn set_rest(&mut self, body: &'a [u8]) {
        if self.skip > 0 {
            self.rest = Walk { body, offset: 0 };
        }
    }

    /// The number of messages kept decoded.
    #[must_use]
    pub fn inline_len(&self) -> usize {
        self.len
    }

    /// The messages, in order (padding excluded).
    pub fn iter(&self) -> impl Iterator<Item = Message<'a>> + '_ {
        let inline = self.inline.iter().take(self.len).flatten().copied();
        let mut rest = self.rest.clone();
        let skip = self.skip;
        let more = std::iter::from_fn(move || rest.next_message()?.ok()).skip(skip);
        inline.chain(more)
    }
}

/// Iterator over the messages of a validated [`Datagram`].
#[derive(Clone, Debug)]
pub struct Messages<'a> {
    walk: Walk<'a>,
}

impl<'a> Iterator for Messages<'a> {
    type Item = Message<'a>;

    fn next(&mut self) -> Option<Message<'a>> {
        // The datagram was validated, so an error cannot occur; if it did, the
        // iteration simply ends.
        self.walk.next_message()?.ok()
    }
}

/// Walks the message area of a datagram.
#[derive(Clone, Debug)]
struct Walk<'a> {
    body: &'a [u8],
    /// Offset of `body` within the datagram, for error reports.
    offset: usize,
}

impl<'a> Walk<'a> {
    /// The next non-padding message; `None` at the end or after padding.
    fn next_message(&mut self) -> Option<Result<Message<'a>, DecodeError>> {
        loop {
            if self.body.is_empty() {
                return None;
            }
            let at = HEADER_LEN + self.offset;
            let mut r = Reader::new(self.body);
            let Ok(kind) = r.u8() else { return None };
            if kind == MessageKind::Padding as u8 {
                self.body = &[];
                return None;
            }
            let head = r.u8().and_then(|_flags| r.u16());
            let Ok(len) = head else {
                self.body = &[];
                return Some(Err(DecodeError::TruncatedMessageHeader { offset: at }));
            };
            let len = usize::from(len);
            let available = r.remaining();
            let Ok(body) = r.bytes(len) else {
                self.body = &[];
                return Some(Err(DecodeError::MessageOverrun {
                    offset: at,
                    declared: len,
                    available,
                }));
            };
            self.body = r.rest();
            self.offset += MESSAGE_HEADER_LEN + len;
            match Message::decode_body(kind, body) {
                Ok(Some(m)) => return Some(Ok(m)),
                Ok(None) => continue,
                Err(e) => {
                    self.body = &[];
                    return Some(Err(e));
                }
            }
        }
    }
}

/// Packs messages into one datagram in a caller-provided buffer.
///
/// The buffer's length is the maximum datagram size. Nothing is allocated.
#[derive(Debug)]
pub struct DatagramWriter<'b> {
    buf: &'b mut [u8],
    len: usize,
    messages: usize,
}

impl<'b> DatagramWriter<'b> {
    /// Starts a datagram: writes the header into `buf`.
    ///
    /// # Errors
    ///
    /// [`EncodeError::BufferTooSmall`] if `buf` cannot hold the header.
    pub fn new(buf: &'b mut [u8], header: &DatagramHeader) -> Result<Self, EncodeError> {
        let too_small = |_| EncodeError::BufferTooSmall { len: 0 };
        let buf_len = buf.len();
        if buf_len < HEADER_LEN {
            return Err(EncodeError::BufferTooSmall { len: buf_len });
        }
        let mut w = Writer::new(buf, 0);
        w.put(&MAGIC).map_err(too_small)?;
        w.u8(VERSION).map_err(too_small)?;
        w.u8(0).map_err(too_small)?;
        w.u16(0).map_err(too_small)?;
        w.u32(header.stream.0).map_err(too_small)?;
        w.u64(header.session.0).map_err(too_small)?;
        w.u64(header.datagram_seq).map_err(too_small)?;
        Ok(Self {
            buf,
            len: HEADER_LEN,
            messages: 0,
        })
    }

    /// Continues a datagram of `len` bytes holding `messages` messages that
    /// an earlier writer on the same buffer produced.
    pub(crate) fn resume(buf: &'b mut [u8], len: usize, messages: usize) -> Self {
        Self {
            len: len.min(buf.len()),
            buf,
            messages,
        }
    }

    /// Bytes left for messages (each needs a 4-byte message header too).
    #[must_use]
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.len
    }

    /// Number of messages written so far.
    #[must_use]
    pub fn message_count(&self) -> usize {
        self.messages
    }

    /// Whether no message has been written yet.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.messages == 0
    }

    /// Appends one message. On error nothing is written: neither the
    /// datagram nor the bytes of `buf` past its current end change.
    ///
    /// # Errors
    ///
    /// [`EncodeError::InvalidMessage`] if a receiver would reject the message
    /// (see [`Message::validate`]);
    /// [`EncodeError::BodyTooLarge`] if its body exceeds [`MAX_BODY_LEN`];
    /// [`EncodeError::DoesNotFit`] if the message does not fit in what is
    /// left (finish this datagram and start another, or fragment the message
    /// when it would not fit even in an empty one). They are checked in that
    /// order.
    pub fn push(&mut self, msg: &Message<'_>) -> Result<(), EncodeError> {
        msg.validate()?;
        let body_len = msg.body_len();
        // A body of at most 65,535 bytes also bounds every length field
        // inside it (key, NAK range count), so writing the body cannot fail
        // once this and the space check pass.
        let len16 =
            u16::try_from(body_len).map_err(|_| EncodeError::BodyTooLarge { len: body_len })?;
        let needed = MESSAGE_HEADER_LEN + body_len;
        if needed > self.remaining() {
            return Err(EncodeError::DoesNotFit {
                needed,
                remaining: self.remaining(),
            });
        }
        let start = self.len;
        let full = |_| EncodeError::DoesNotFit {
            needed,
            remaining: 0,
        };
        // The body first, then the message header: should the body fail after
        // all, no header claims it.
        let mut w = Writer::new(self.buf, start + MESSAGE_HEADER_LEN);
        msg.write_body(&mut w)?;
        let end = w.pos();
        let mut w = Writer::new(self.buf, start);
        w.u8(msg.kind_byte()).map_err(full)?;
        w.u8(0).map_err(full)?;
        w.u16(len16).map_err(full)?;
        self.len = end;
        self.messages += 1;
        Ok(())
    }

    /// Ends the datagram padded with zero bytes to `len` bytes (capped at the
    /// buffer size; a datagram already that long is not shrunk) and returns
    /// its length: send `buf[..len]`. For batched sends that need
    /// equal-sized datagrams (UDP GSO). The padding starts with a `0x00`
    /// kind byte, which receivers read as the end of the messages
    /// (PROTOCOL.md §4.1); taking the writer by value makes a later push,
    /// which would be hidden behind it, impossible.
    #[must_use]
    pub fn finish_padded(self, len: usize) -> usize {
        let target = len.min(self.buf.len());
        match self.buf.get_mut(self.len..target) {
            Some(tail) => {
                tail.fill(0);
                target
            }
            None => self.len,
        }
    }

    /// Ends the datagram and returns its length: send `buf[..len]`.
    #[must_use]
    pub fn finish(self) -> usize {
        self.len
    }
}
