//! The message kinds and their body layouts (PROTOCOL.md §4).

use core::fmt;

use super::cursor::{Reader, Short, Writer};
use super::{DecodeError, EncodeError, Malformed};
use crate::schema::SchemaFingerprint;
use crate::{CycleId, SeqNum, SeqRange};

/// The longest key a Delta, Retransmit or LeafSnapshot carries: its length
/// travels in 16 bits (PROTOCOL.md §5). The one place this rule is written;
/// encoders, the packer and the publisher all check keys with
/// [`check_key`].
pub const MAX_KEY_LEN: usize = u16::MAX as usize;

/// The length field of `key`, if it fits a message (at most
/// [`MAX_KEY_LEN`] bytes).
///
/// ```
/// use grapevine_core::wire::{check_key, EncodeError, MAX_KEY_LEN};
/// assert_eq!(check_key(b"ACME"), Ok(4));
/// assert_eq!(check_key(&vec![0; MAX_KEY_LEN]), Ok(u16::MAX));
/// assert_eq!(
///     check_key(&vec![0; MAX_KEY_LEN + 1]),
///     Err(EncodeError::FieldTooLong { field: "key" })
/// );
/// ```
///
/// # Errors
///
/// [`EncodeError::FieldTooLong`] naming the key.
pub fn check_key(key: &[u8]) -> Result<u16, EncodeError> {
    u16::try_from(key.len()).map_err(|_| EncodeError::FieldTooLong { field: "key" })
}

/// The kind byte of a message.
///
/// Kinds `0x0b..=0x7f` not listed here are skipped by receivers (forward
/// compatible); unknown kinds `0x80..=0xff` make the whole datagram invalid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[repr(u8)]
pub enum MessageKind {
    /// `0x00`: the rest of the datagram is padding.
    Padding = 0x00,
    /// `0x01`: a live change to one leaf.
    Delta = 0x01,
    /// `0x02`: a delta sent again in answer to a NAK.
    Retransmit = 0x02,
    /// `0x03`: the full value of one leaf, or its tombstone.
    LeafSnapshot = 0x03,
    /// `0x04`: a snapshot cycle starts.
    CycleBegin = 0x04,
    /// `0x05`: a snapshot cycle ends.
    CycleEnd = 0x05,
    /// `0x06`: liveness and the latest sequence number.
    Heartbeat = 0x06,
    /// `0x07`: a subscriber asks for missing sequence numbers.
    Nak = 0x07,
    /// `0x08`: one piece of a message too large for one datagram.
    Fragment = 0x08,
    /// `0x09`: a subscriber asks for missing byte ranges of a fragmented
    /// message.
    FragNak = 0x09,
    /// `0x0a`: what the stream carries: its schema fingerprint and name.
    StreamInfo = 0x0a,
}

impl MessageKind {
    /// The kind for a wire byte, if this version defines it.
    #[must_use]
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            0x00 => MessageKind::Padding,
            0x01 => MessageKind::Delta,
            0x02 => MessageKind::Retransmit,
            0x03 => MessageKind::LeafSnapshot,
            0x04 => MessageKind::CycleBegin,
            0x05 => MessageKind::CycleEnd,
            0x06 => MessageKind::Heartbeat,
            0x07 => MessageKind::Nak,
            0x08 => MessageKind::Fragment,
            0x09 => MessageKind::FragNak,
            0x0a => MessageKind::StreamInfo,
            _ => return None,
        })
    }
}

/// Bit in a leaf snapshot's `leaf_flags`: the leaf is absent (deleted).
pub const LEAF_FLAG_TOMBSTONE: u8 = 0x01;
/// Bit in a delta's `delta_flags`: the leaf did not exist at the publisher
/// before this delta.
pub const DELTA_FLAG_CREATES: u8 = 0x01;
/// Bit in a delta's `delta_flags`: the leaf does not exist at the publisher
/// after this delta (it was removed).
pub const DELTA_FLAG_REMOVES: u8 = 0x02;

/// A live change to one leaf (kinds Delta and Retransmit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delta<'a> {
    /// Global sequence number of this delta (`>= 1`).
    pub seq: SeqNum,
    /// Sequence number of the previous delta applied to the same leaf in this
    /// session, or [`SeqNum::NONE`] if none was (the leaf is untouched since
    /// the session started, or `creates` is set).
    pub prev_leaf_seq: SeqNum,
    /// The leaf did not exist at the publisher before this delta (then
    /// `prev_leaf_seq` is 0).
    pub creates: bool,
    /// The leaf does not exist at the publisher after this delta (the delta
    /// removed it).
    pub removes: bool,
    /// The leaf's key, as encoded by the application's key codec.
    pub key: &'a [u8],
    /// The encoded change.
    pub payload: &'a [u8],
}

/// The full value of one leaf during a snapshot cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeafSnapshot<'a> {
    /// The cycle this snapshot belongs to.
    pub cycle: CycleId,
    /// Position of the leaf in its cycle, `0..leaf_count`.
    pub position: u32,
    /// Sequence number of the last delta reflected in this value. For a
    /// tombstone: the publisher's latest sequence number when it was sent.
    pub leaf_seq: SeqNum,
    /// The leaf's key.
    pub key: &'a [u8],
    /// The encoded leaf, or `None` for a tombstone (the leaf is absent).
    pub value: Option<&'a [u8]>,
}

/// Opens a snapshot cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CycleBegin {
    /// The cycle.
    pub cycle: CycleId,
    /// The publisher's latest sequence number when the cycle started.
    pub start_seq: SeqNum,
    /// Number of leaves (positions) in the cycle.
    pub leaf_count: u32,
}

/// Closes a snapshot cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CycleEnd {
    /// The cycle.
    pub cycle: CycleId,
    /// The publisher's latest sequence number when the cycle ended.
    pub end_seq: SeqNum,
    /// Number of leaves (positions) in the cycle, as in its [`CycleBegin`].
    pub leaf_count: u32,
}

/// Liveness and tail-loss detection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// The publisher's latest sequence number ([`SeqNum::NONE`] before the
    /// first delta).
    pub last_seq: SeqNum,
    /// The publisher's wall clock, microseconds since the Unix epoch.
    pub sent_at_micros: u64,
    /// The publisher's heartbeat interval in milliseconds, so subscribers can
    /// tell when one is overdue.
    pub interval_ms: u32,
}

/// What a stream carries (PROTOCOL.md §4.8): sent by a publisher after
/// each Heartbeat, so that a subscriber of another type can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamInfo<'a> {
    /// The fingerprint of the state's schema ([`crate::schema`]).
    pub fingerprint: SchemaFingerprint,
    /// The schema's name, for people (at most 255 bytes of UTF-8).
    pub name: &'a str,
}

/// The ranges of a [`Nak`]: borrowed from the wire, or from a caller's slice.
#[derive(Clone, Copy)]
pub struct NakRanges<'a>(NakRangesRepr<'a>);

#[derive(Clone, Copy)]
enum NakRangesRepr<'a> {
    /// `count` validated 16-byte ranges.
    Wire(&'a [u8]),
    Slice(&'a [SeqRange]),
}

impl<'a> NakRanges<'a> {
    /// Ranges to encode.
    #[must_use]
    pub fn from_slice(ranges: &'a [SeqRange]) -> Self {
        NakRanges(NakRangesRepr::Slice(ranges))
    }

    /// Number of ranges.
    #[must_use]
    pub fn len(&self) -> usize {
        match self.0 {
            NakRangesRepr::Wire(b) => b.len() / 16,
            NakRangesRepr::Slice(s) => s.len(),
        }
    }

    /// Whether there is no range.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ranges in order.
    pub fn iter(&self) -> impl Iterator<Item = SeqRange> + 'a {
        let (wire, slice): (&'a [u8], &'a [SeqRange]) = match self.0 {
            NakRangesRepr::Wire(b) => (b, &[]),
            NakRangesRepr::Slice(s) => (&[], s),
        };
        wire.chunks_exact(16)
            .filter_map(|c| {
                let (a, b) = c.split_first_chunk::<8>()?;
                let b: [u8; 8] = b.try_into().ok()?;
                Some(SeqRange {
                    first: SeqNum(u64::from_be_bytes(*a)),
                    last: SeqNum(u64::from_be_bytes(b)),
                })
            })
            .chain(slice.iter().copied())
    }
}

impl PartialEq for NakRanges<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for NakRanges<'_> {}

impl fmt::Debug for NakRanges<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// A subscriber's request for missing sequence numbers (sent unicast to the
/// publisher).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nak<'a> {
    /// Random id of the requesting subscriber, for suppression and logging.
    pub requester: u32,
    /// The missing sequence numbers.
    pub ranges: NakRanges<'a>,
}

/// The byte ranges of a [`FragNak`]: borrowed from the wire, or from a
/// caller's slice. Each range is `(offset, end)`, end exclusive.
#[derive(Clone, Copy)]
pub struct FragRanges<'a>(FragRangesRepr<'a>);

#[derive(Clone, Copy)]
enum FragRangesRepr<'a> {
    /// Validated 8-byte ranges.
    Wire(&'a [u8]),
    Slice(&'a [(u32, u32)]),
}

impl<'a> FragRanges<'a> {
    /// Ranges to encode.
    #[must_use]
    pub fn from_slice(ranges: &'a [(u32, u32)]) -> Self {
        FragRanges(FragRangesRepr::Slice(ranges))
    }

    /// Number of ranges.
    #[must_use]
    pub fn len(&self) -> usize {
        match self.0 {
            FragRangesRepr::Wire(b) => b.len() / 8,
            FragRangesRepr::Slice(s) => s.len(),
        }
    }

    /// Whether there is no range.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ranges in order, as `(offset, end)` with `end` exclusive.
    pub fn iter(&self) -> impl Iterator<Item = (u32, u32)> + 'a {
        let (wire, slice): (&'a [u8], &'a [(u32, u32)]) = match self.0 {
            FragRangesRepr::Wire(b) => (b, &[]),
            FragRangesRepr::Slice(s) => (&[], s),
        };
        wire.chunks_exact(8)
            .filter_map(|c| {
                let (a, b) = c.split_first_chunk::<4>()?;
                let b: [u8; 4] = b.try_into().ok()?;
                Some((u32::from_be_bytes(*a), u32::from_be_bytes(b)))
            })
            .chain(slice.iter().copied())
    }
}

impl PartialEq for FragRanges<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for FragRanges<'_> {}

impl fmt::Debug for FragRanges<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// A subscriber's request for the missing bytes of a fragmented message
/// (sent unicast to the publisher), so that a large message is completed
/// without resending all of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragNak<'a> {
    /// Random id of the requesting subscriber.
    pub requester: u32,
    /// The fragmented message.
    pub frag_id: u32,
    /// The missing byte ranges of its body.
    pub ranges: FragRanges<'a>,
}

/// One piece of a message whose body is too large for one datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fragment<'a> {
    /// Identifies the fragmented message within its session.
    pub frag_id: u32,
    /// Length of the whole message body.
    pub total_len: u32,
    /// Where this piece starts in the whole body.
    pub offset: u32,
    /// Kind byte of the whole message.
    pub inner_kind: u8,
    /// This piece of the body (not empty).
    pub data: &'a [u8],
}

/// One message, borrowed from a datagram (or from the caller, for encoding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Message<'a> {
    /// A live change to one leaf.
    Delta(Delta<'a>),
    /// A delta sent again in answer to a NAK; same body as `Delta`.
    Retransmit(Delta<'a>),
    /// One leaf's value during a snapshot cycle.
    LeafSnapshot(LeafSnapshot<'a>),
    /// A snapshot cycle starts.
    CycleBegin(CycleBegin),
    /// A snapshot cycle ends.
    CycleEnd(CycleEnd),
    /// Liveness.
    Heartbeat(Heartbeat),
    /// A request for missing sequence numbers.
    Nak(Nak<'a>),
    /// A piece of a large message; feed it to a [`crate::Reassembler`].
    Fragment(Fragment<'a>),
    /// A request for missing pieces of a fragmented message.
    FragNak(FragNak<'a>),
    /// The schema the stream carries.
    StreamInfo(StreamInfo<'a>),
    /// A kind in `0x0b..=0x7f` that this version does not define; receivers
    /// skip it. Never produced for kinds this version defines, and never
    /// written with one ([`Malformed::ReservedKind`]). For tests and
    /// foreign-datagram tooling, an encoder also writes a critical kind
    /// `0x80..=0xff`, which makes receivers drop the whole datagram.
    Unknown {
        /// The kind byte.
        kind: u8,
        /// The raw body.
        body: &'a [u8],
    },
}

/// Fixed lengths of the bodies (PROTOCOL.md §4).
pub(crate) const DELTA_FIXED: usize = 8 + 8 + 1 + 2;
pub(crate) const SNAPSHOT_FIXED: usize = 4 + 4 + 8 + 1 + 2;
pub(crate) const CYCLE_LEN: usize = 4 + 8 + 4;
pub(crate) const HEARTBEAT_LEN: usize = 8 + 8 + 4;
pub(crate) const NAK_FIXED: usize = 4 + 2;
pub(crate) const FRAG_NAK_FIXED: usize = 4 + 4 + 2;
/// A StreamInfo's `fingerprint` and `name_len`.
pub const STREAM_INFO_FIXED: usize = 8 + 1;
/// Fixed part of a fragment body, before its data.
pub const FRAGMENT_FIXED: usize = 4 + 4 + 4 + 1;

impl<'a> Message<'a> {
    /// The kind byte written for this message.
    #[must_use]
    pub fn kind_byte(&self) -> u8 {
        match self {
            Message::Delta(_) => MessageKind::Delta as u8,
            Message::Retransmit(_) => MessageKind::Retransmit as u8,
            Message::LeafSnapshot(_) => MessageKind::LeafSnapshot as u8,
            Message::CycleBegin(_) => MessageKind::CycleBegin as u8,
            Message::CycleEnd(_) => MessageKind::CycleEnd as u8,
            Message::Heartbeat(_) => MessageKind::Heartbeat as u8,
            Message::Nak(_) => MessageKind::Nak as u8,
            Message::Fragment(_) => MessageKind::Fragment as u8,
            Message::FragNak(_) => MessageKind::FragNak as u8,
            Message::StreamInfo(_) => MessageKind::StreamInfo as u8,
            Message::Unknown { kind, .. } => *kind,
        }
    }

    /// Length of the body this message encodes to (without its 4-byte
    /// message header).
    #[must_use]
    pub fn body_len(&self) -> usize {
        match self {
            Message::Delta(d) | Message::Retransmit(d) => {
                DELTA_FIXED + d.key.len() + d.payload.len()
            }
            Message::LeafSnapshot(s) => {
                SNAPSHOT_FIXED + s.key.len() + s.value.map_or(0, <[u8]>::len)
            }
            Message::CycleBegin(_) | Message::CycleEnd(_) => CYCLE_LEN,
            Message::Heartbeat(_) => HEARTBEAT_LEN,
            Message::Nak(n) => NAK_FIXED + 16 * n.ranges.len(),
            Message::Fragment(f) => FRAGMENT_FIXED + f.data.len(),
            Message::FragNak(n) => FRAG_NAK_FIXED + 8 * n.ranges.len(),
            Message::StreamInfo(i) => STREAM_INFO_FIXED + i.name.len(),
            Message::Unknown { body, .. } => body.len(),
        }
    }

    /// Length of the whole message on the wire: 4-byte header plus body.
    #[must_use]
    pub fn encoded_len(&self) -> usize {
        super::MESSAGE_HEADER_LEN + self.body_len()
    }

    /// Decodes the body of a message of kind `kind`.
    ///
    /// Used for message bodies that come out of a [`crate::Reassembler`];
    /// [`super::Datagram::decode`] calls it for every message of a datagram.
    /// Returns `Ok(None)` for padding (kind `0x00`), which has no body.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Malformed`] if the body breaks the layout of its kind,
    /// [`DecodeError::UnknownCriticalKind`] for an unknown kind `>= 0x80`.
    pub fn decode_body(kind: u8, body: &'a [u8]) -> Result<Option<Message<'a>>, DecodeError> {
        let Some(known) = MessageKind::from_u8(kind) else {
            if kind & 0x80 != 0 {
                return Err(DecodeError::UnknownCriticalKind { kind });
            }
            return Ok(Some(Message::Unknown { kind, body }));
        };
        let bad = |reason| DecodeError::Malformed {
            kind: known,
            reason,
        };
        let short = |s: Short| {
            bad(Malformed::BodyTooShort {
                needed: body.len() - s.available + s.needed,
                available: body.len(),
            })
        };
        let mut r = Reader::new(body);
        // A Delta's flag bits this version does not define: its rules
        // check them in the order PROTOCOL.md §7 gives.
        let mut unknown_flags = 0;
        let msg = match known {
            MessageKind::Padding => return Ok(None),
            MessageKind::Delta | MessageKind::Retransmit => {
                let seq = r.u64().map_err(short)?;
                let prev = r.u64().map_err(short)?;
                let flags = r.u8().map_err(short)?;
                let key_len = r.u16().map_err(short)?;
                let key = r.bytes(key_len.into()).map_err(short)?;
                let payload = r.rest();
                unknown_flags = flags & !(DELTA_FLAG_CREATES | DELTA_FLAG_REMOVES);
                let creates = flags & DELTA_FLAG_CREATES != 0;
                let removes = flags & DELTA_FLAG_REMOVES != 0;
                let d = Delta {
                    seq: SeqNum(seq),
                    prev_leaf_seq: SeqNum(prev),
                    creates,
                    removes,
                    key,
                    payload,
                };
                if known == MessageKind::Delta {
                    Message::Delta(d)
                } else {
                    Message::Retransmit(d)
                }
            }
            MessageKind::LeafSnapshot => {
                let cycle = r.u32().map_err(short)?;
                let position = r.u32().map_err(short)?;
                let leaf_seq = r.u64().map_err(short)?;
                let flags = r.u8().map_err(short)?;
                let key_len = r.u16().map_err(short)?;
                let key = r.bytes(key_len.into()).map_err(short)?;
                let rest = r.rest();
                if flags & !LEAF_FLAG_TOMBSTONE != 0 {
                    return Err(bad(Malformed::UnknownLeafFlags(flags)));
                }
                let value = if flags & LEAF_FLAG_TOMBSTONE != 0 {
                    if !rest.is_empty() {
                        return Err(bad(Malformed::TombstoneWithValue));
                    }
                    None
                } else {
                    Some(rest)
                };
                Message::LeafSnapshot(LeafSnapshot {
                    cycle: CycleId(cycle),
                    position,
                    leaf_seq: SeqNum(leaf_seq),
                    key,
                    value,
                })
            }
            MessageKind::CycleBegin | MessageKind::CycleEnd => {
                let cycle = CycleId(r.u32().map_err(short)?);
                let seq = SeqNum(r.u64().map_err(short)?);
                let leaf_count = r.u32().map_err(short)?;
                // Trailing bytes are a compatible extension: ignored.
                if known == MessageKind::CycleBegin {
                    Message::CycleBegin(CycleBegin {
                        cycle,
                        start_seq: seq,
                        leaf_count,
                    })
                } else {
                    Message::CycleEnd(CycleEnd {
                        cycle,
                        end_seq: seq,
                        leaf_count,
                    })
                }
            }
            MessageKind::Heartbeat => Message::Heartbeat(Heartbeat {
                last_seq: SeqNum(r.u64().map_err(short)?),
                sent_at_micros: r.u64().map_err(short)?,
                interval_ms: r.u32().map_err(short)?,
            }),
            MessageKind::Nak => {
                let requester = r.u32().map_err(short)?;
                let count = r.u16().map_err(short)?;
                if count == 0 {
                    return Err(bad(Malformed::EmptyNak));
                }
                let raw = r.bytes(usize::from(count) * 16).map_err(short)?;
                let ranges = NakRanges(NakRangesRepr::Wire(raw));
                Message::Nak(Nak { requester, ranges })
            }
            MessageKind::FragNak => {
                let requester = r.u32().map_err(short)?;
                let frag_id = r.u32().map_err(short)?;
                let count = r.u16().map_err(short)?;
                if count == 0 {
                    return Err(bad(Malformed::EmptyNak));
                }
                let raw = r.bytes(usize::from(count) * 8).map_err(short)?;
                let ranges = FragRanges(FragRangesRepr::Wire(raw));
                Message::FragNak(FragNak {
                    requester,
                    frag_id,
                    ranges,
                })
            }
            MessageKind::Fragment => {
                let frag_id = r.u32().map_err(short)?;
                let total_len = r.u32().map_err(short)?;
                let offset = r.u32().map_err(short)?;
                let inner_kind = r.u8().map_err(short)?;
                let data = r.rest();
                Message::Fragment(Fragment {
                    frag_id,
                    total_len,
                    offset,
                    inner_kind,
                    data,
                })
            }
            MessageKind::StreamInfo => {
                let fingerprint = SchemaFingerprint(r.u64().map_err(short)?);
                let name_len = r.u8().map_err(short)?;
                let name = r.bytes(name_len.into()).map_err(short)?;
                // Trailing bytes are a compatible extension: ignored.
                let name = core::str::from_utf8(name).map_err(|e| {
                    bad(Malformed::SchemaNameNotUtf8 {
                        at: e.valid_up_to(),
                    })
                })?;
                Message::StreamInfo(StreamInfo { fingerprint, name })
            }
        };
        match &msg {
            Message::Delta(d) | Message::Retransmit(d) => delta_rules(d, unknown_flags),
            other => other.rules(),
        }
        .map_err(bad)?;
        Ok(Some(msg))
    }

    /// Checks the rules a receiver applies to a message of this kind
    /// (PROTOCOL.md §4, §5 and §7), so that an encoder never writes what a
    /// decoder would reject. Cheap: no allocation, one pass over the NAK
    /// ranges. Called by [`super::DatagramWriter::push`] and
    /// [`Message::encode_body`].
    ///
    /// Leaf snapshots, cycle markers and heartbeats are always valid (a
    /// tombstone cannot carry a value by construction). Widths of length
    /// fields are not checked here (see [`EncodeError::BodyTooLarge`] and
    /// [`EncodeError::FieldTooLong`]).
    ///
    /// # Errors
    ///
    /// [`EncodeError::InvalidMessage`] with the [`Malformed`] case a receiver
    /// would report: [`Malformed::ZeroSeq`], [`Malformed::PrevNotBeforeSeq`]
    /// and [`Malformed::CreatesWithPrev`] for a Delta or Retransmit;
    /// [`Malformed::EmptyNak`] and [`Malformed::BadNakRange`] for a NAK;
    /// [`Malformed::EmptyFragment`], [`Malformed::FragmentOutOfBounds`] and
    /// [`Malformed::BadInnerKind`] for a fragment;
    /// [`Malformed::ReservedKind`] for a [`Message::Unknown`] whose kind this
    /// version defines (`0x00..=0x0a`); [`Malformed::SchemaNameTooLong`]
    /// for a StreamInfo whose name exceeds 255 bytes.
    pub fn validate(&self) -> Result<(), EncodeError> {
        let invalid = |reason| EncodeError::InvalidMessage { reason };
        if let Message::Unknown { kind, .. } = self {
            if MessageKind::from_u8(*kind).is_some() {
                return Err(invalid(Malformed::ReservedKind(*kind)));
            }
        }
        self.rules().map_err(invalid)
    }

    /// The rules on a message's fields that a receiver enforces and an
    /// encoder obeys (PROTOCOL.md §4, §5 and §7), written once for
    /// [`Message::decode_body`] and [`Message::validate`]. Rules about the
    /// wire form alone (unknown flag bits, a tombstone's value, lengths)
    /// are the decoder's and the writer's.
    fn rules(&self) -> Result<(), Malformed> {
        match self {
            Message::Delta(d) | Message::Retransmit(d) => return delta_rules(d, 0),
            Message::Nak(n) => {
                if n.ranges.is_empty() {
                    return Err(Malformed::EmptyNak);
                }
                for range in n.ranges.iter() {
                    if range.first.0 == 0 || range.first > range.last {
                        return Err(Malformed::BadNakRange {
                            first: range.first.0,
                            last: range.last.0,
                        });
                    }
                }
            }
            Message::FragNak(n) => {
                if n.ranges.is_empty() {
                    return Err(Malformed::EmptyNak);
                }
                for (offset, end) in n.ranges.iter() {
                    if offset >= end {
                        return Err(Malformed::BadFragRange { offset, end });
                    }
                }
            }
            Message::Fragment(f) => {
                if f.data.is_empty() || f.total_len == 0 {
                    return Err(Malformed::EmptyFragment);
                }
                let end = u64::from(f.offset) + f.data.len() as u64;
                if end > u64::from(f.total_len) {
                    return Err(Malformed::FragmentOutOfBounds {
                        offset: f.offset,
                        end,
                        total_len: f.total_len,
                    });
                }
                if f.inner_kind == MessageKind::Padding as u8
                    || f.inner_kind == MessageKind::Fragment as u8
                {
                    return Err(Malformed::BadInnerKind(f.inner_kind));
                }
            }
            Message::StreamInfo(i) => {
                if i.name.len() > crate::schema::MAX_WIRE_NAME {
                    return Err(Malformed::SchemaNameTooLong { len: i.name.len() });
                }
            }
            Message::Unknown { .. }
            | Message::LeafSnapshot(_)
            | Message::CycleBegin(_)
            | Message::CycleEnd(_)
            | Message::Heartbeat(_) => {}
        }
        Ok(())
    }

    /// Writes the body (no message header) at the writer's position.
    pub(crate) fn write_body(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        let full = |_: Short| EncodeError::DoesNotFit {
            needed: self.body_len(),
            remaining: 0,
        };
        match self {
            Message::Delta(d) | Message::Retransmit(d) => {
                let kl = check_key(d.key)?;
                w.u64(d.seq.0).map_err(full)?;
                w.u64(d.prev_leaf_seq.0).map_err(full)?;
                let mut flags = 0;
                if d.creates {
                    flags |= DELTA_FLAG_CREATES;
                }
                if d.removes {
                    flags |= DELTA_FLAG_REMOVES;
                }
                w.u8(flags).map_err(full)?;
                w.u16(kl).map_err(full)?;
                w.put(d.key).map_err(full)?;
                w.put(d.payload).map_err(full)?;
            }
            Message::LeafSnapshot(s) => {
                let kl = check_key(s.key)?;
                w.u32(s.cycle.0).map_err(full)?;
                w.u32(s.position).map_err(full)?;
                w.u64(s.leaf_seq.0).map_err(full)?;
                let flags = if s.value.is_none() {
                    LEAF_FLAG_TOMBSTONE
                } else {
                    0
                };
                w.u8(flags).map_err(full)?;
                w.u16(kl).map_err(full)?;
                w.put(s.key).map_err(full)?;
                w.put(s.value.unwrap_or_default()).map_err(full)?;
            }
            Message::CycleBegin(c) => {
                w.u32(c.cycle.0).map_err(full)?;
                w.u64(c.start_seq.0).map_err(full)?;
                w.u32(c.leaf_count).map_err(full)?;
            }
            Message::CycleEnd(c) => {
                w.u32(c.cycle.0).map_err(full)?;
                w.u64(c.end_seq.0).map_err(full)?;
                w.u32(c.leaf_count).map_err(full)?;
            }
            Message::Heartbeat(h) => {
                w.u64(h.last_seq.0).map_err(full)?;
                w.u64(h.sent_at_micros).map_err(full)?;
                w.u32(h.interval_ms).map_err(full)?;
            }
            Message::Nak(n) => {
                let count =
                    u16::try_from(n.ranges.len()).map_err(|_| EncodeError::FieldTooLong {
                        field: "NAK ranges",
                    })?;
                w.u32(n.requester).map_err(full)?;
                w.u16(count).map_err(full)?;
                for r in n.ranges.iter() {
                    w.u64(r.first.0).map_err(full)?;
                    w.u64(r.last.0).map_err(full)?;
                }
            }
            Message::FragNak(n) => {
                let count =
                    u16::try_from(n.ranges.len()).map_err(|_| EncodeError::FieldTooLong {
                        field: "fragment NAK ranges",
                    })?;
                w.u32(n.requester).map_err(full)?;
                w.u32(n.frag_id).map_err(full)?;
                w.u16(count).map_err(full)?;
                for (offset, end) in n.ranges.iter() {
                    w.u32(offset).map_err(full)?;
                    w.u32(end).map_err(full)?;
                }
            }
            Message::Fragment(f) => {
                w.u32(f.frag_id).map_err(full)?;
                w.u32(f.total_len).map_err(full)?;
                w.u32(f.offset).map_err(full)?;
                w.u8(f.inner_kind).map_err(full)?;
                w.put(f.data).map_err(full)?;
            }
            Message::StreamInfo(i) => {
                let len = u8::try_from(i.name.len()).map_err(|_| EncodeError::FieldTooLong {
                    field: "schema name",
                })?;
                w.u64(i.fingerprint.0).map_err(full)?;
                w.u8(len).map_err(full)?;
                w.put(i.name.as_bytes()).map_err(full)?;
            }
            Message::Unknown { body, .. } => w.put(body).map_err(full)?,
        }
        Ok(())
    }

    /// Encodes the body (no message header) into `out`, replacing its
    /// contents. Reusing one `Vec` keeps this allocation-free once the vector
    /// has grown to the largest body; use it to prepare a body for
    /// [`super::Fragments`].
    ///
    /// # Errors
    ///
    /// [`EncodeError::InvalidMessage`] if a receiver would reject the message
    /// ([`Message::validate`]); [`EncodeError::FieldTooLong`] if a key or the
    /// NAK range list exceeds its wire field. `out` is left empty then.
    pub fn encode_body(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        out.clear();
        self.validate()?;
        out.resize(self.body_len(), 0);
        let mut w = Writer::new(out, 0);
        self.write_body(&mut w)
    }
}

/// A Delta's (or Retransmit's) rules, in the order of PROTOCOL.md §7;
/// `unknown_flags` are flag bits this version does not define (none, for
/// a message built in memory).
fn delta_rules(d: &Delta<'_>, unknown_flags: u8) -> Result<(), Malformed> {
    let (seq, prev) = (d.seq.0, d.prev_leaf_seq.0);
    if seq == 0 {
        return Err(Malformed::ZeroSeq);
    }
    if prev >= seq {
        return Err(Malformed::PrevNotBeforeSeq { seq, prev });
    }
    if unknown_flags != 0 {
        let known = (if d.creates { DELTA_FLAG_CREATES } else { 0 })
            | (if d.removes { DELTA_FLAG_REMOVES } else { 0 });
        return Err(Malformed::UnknownDeltaFlags(known | unknown_flags));
    }
    if d.creates && prev != 0 {
        return Err(Malformed::CreatesWithPrev { prev });
    }
    Ok(())
}

fn hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    if bytes.is_empty() {
        return f.write_str("-");
    }
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

/// The canonical one-line text of a message, as used by the test vectors of
/// PROTOCOL.md. Byte strings print as lowercase hex, or `-` when empty.
impl fmt::Display for Message<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Message::Delta(d) | Message::Retransmit(d) => {
                let name = if matches!(self, Message::Delta(_)) {
                    "Delta"
                } else {
                    "Retransmit"
                };
                write!(f, "{name} seq={} prev_leaf_seq={}", d.seq, d.prev_leaf_seq)?;
                if d.creates {
                    f.write_str(" creates")?;
                }
                if d.removes {
                    f.write_str(" removes")?;
                }
                f.write_str(" key=")?;
                hex(f, d.key)?;
                f.write_str(" payload=")?;
                hex(f, d.payload)
            }
            Message::LeafSnapshot(s) => {
                write!(
                    f,
                    "LeafSnapshot cycle={} position={} leaf_seq={} key=",
                    s.cycle, s.position, s.leaf_seq
                )?;
                hex(f, s.key)?;
                match s.value {
                    Some(v) => {
                        f.write_str(" value=")?;
                        hex(f, v)
                    }
                    None => f.write_str(" tombstone"),
                }
            }
            Message::CycleBegin(c) => write!(
                f,
                "CycleBegin cycle={} start_seq={} leaf_count={}",
                c.cycle, c.start_seq, c.leaf_count
            ),
            Message::CycleEnd(c) => write!(
                f,
                "CycleEnd cycle={} end_seq={} leaf_count={}",
                c.cycle, c.end_seq, c.leaf_count
            ),
            Message::Heartbeat(h) => write!(
                f,
                "Heartbeat last_seq={} sent_at_micros={} interval_ms={}",
                h.last_seq, h.sent_at_micros, h.interval_ms
            ),
            Message::Nak(n) => {
                write!(f, "Nak requester={:#010x} ranges=", n.requester)?;
                for (i, r) in n.ranges.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{r}")?;
                }
                Ok(())
            }
            Message::FragNak(n) => {
                write!(
                    f,
                    "FragNak requester={:#010x} frag_id={} ranges=",
                    n.requester, n.frag_id
                )?;
                for (i, (offset, end)) in n.ranges.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{offset}..{end}")?;
                }
                Ok(())
            }
            Message::Fragment(fr) => {
                write!(
                    f,
                    "Fragment frag_id={} total_len={} offset={} inner_kind={:#04x} data=",
                    fr.frag_id, fr.total_len, fr.offset, fr.inner_kind
                )?;
                hex(f, fr.data)
            }
            Message::StreamInfo(i) => {
                write!(f, "StreamInfo fingerprint={} name=", i.fingerprint)?;
                hex(f, i.name.as_bytes())
            }
            Message::Unknown { kind, body } => {
                write!(f, "Unknown kind={kind:#04x} body=")?;
                hex(f, body)
            }
        }
    }
}
