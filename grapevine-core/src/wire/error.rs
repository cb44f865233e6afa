//! Typed errors of the wire codec.

use super::MessageKind;

/// Why a received datagram was dropped.
///
/// A datagram is accepted or dropped whole: if any part of it is malformed,
/// none of its messages is used. Each variant maps to a stable counter name
/// through [`DecodeError::code`]; PROTOCOL.md §7 lists the same cases.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer bytes than the fixed datagram header.
    #[error(
        "datagram of {len} bytes is shorter than the {}-byte header",
        super::HEADER_LEN
    )]
    ShortHeader {
        /// Length of the datagram.
        len: usize,
    },
    /// The first four bytes are not `GRPV`: not a Grapevine datagram.
    #[error("foreign datagram: magic {found:02x?} is not \"GRPV\"")]
    BadMagic {
        /// The four bytes found.
        found: [u8; 4],
    },
    /// A protocol version this implementation does not speak.
    #[error("unsupported protocol version {version} (this implementation speaks 1)")]
    UnsupportedVersion {
        /// The version byte found.
        version: u8,
    },
    /// Header flags this implementation does not understand (for example an
    /// authentication tag it cannot check).
    #[error("unsupported datagram flags {flags:#04x}")]
    UnsupportedFlags {
        /// The flags byte found.
        flags: u8,
    },
    /// An authenticated datagram (`flags` bit 0, PROTOCOL.md §11) at a
    /// receiver that holds no key: it cannot be checked, so it is not used.
    #[error("authenticated datagram (flags {flags:#04x}) and no key to open it: give the stream's key file")]
    NoKey {
        /// The flags byte found.
        flags: u8,
    },
    /// The datagram holds a header but no message.
    #[error("datagram carries no message")]
    Empty,
    /// Fewer than four bytes remain where a message header should start.
    #[error("truncated message header at byte {offset}")]
    TruncatedMessageHeader {
        /// Offset of the message header within the datagram.
        offset: usize,
    },
    /// A message declares a body longer than what is left of the datagram.
    #[error("message at byte {offset} declares {declared} body bytes but only {available} remain")]
    MessageOverrun {
        /// Offset of the message header within the datagram.
        offset: usize,
        /// Body length the message header declares.
        declared: usize,
        /// Bytes left in the datagram after the message header.
        available: usize,
    },
    /// A message kind with the "must understand" bit (0x80) that this
    /// implementation does not know.
    #[error("unknown critical message kind {kind:#04x}")]
    UnknownCriticalKind {
        /// The kind byte found.
        kind: u8,
    },
    /// A message of a known kind whose body breaks its layout or rules.
    #[error("malformed {kind:?} message: {reason}")]
    Malformed {
        /// Kind of the offending message.
        kind: MessageKind,
        /// What is wrong with it.
        reason: Malformed,
    },
}

impl DecodeError {
    /// A short stable name for this case, suitable as a counter label.
    ///
    /// ```
    /// use grapevine_core::wire::{Datagram, DecodeError};
    /// let err = Datagram::decode(b"not grapevine at all, clearly not").unwrap_err();
    /// assert_eq!(err.code(), "bad_magic");
    /// ```
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::ShortHeader { .. } => "short_header",
            DecodeError::BadMagic { .. } => "bad_magic",
            DecodeError::UnsupportedVersion { .. } => "unsupported_version",
            DecodeError::UnsupportedFlags { .. } => "unsupported_flags",
            DecodeError::NoKey { .. } => "no_key",
            DecodeError::Empty => "empty",
            DecodeError::TruncatedMessageHeader { .. } => "truncated_message_header",
            DecodeError::MessageOverrun { .. } => "message_overrun",
            DecodeError::UnknownCriticalKind { .. } => "unknown_critical_kind",
            DecodeError::Malformed { reason, .. } => reason.code(),
        }
    }
}

/// What is wrong with the body of a message of a known kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Malformed {
    /// The body ends before a fixed field.
    #[error("body of {available} bytes is shorter than the {needed} bytes its fields need")]
    BodyTooShort {
        /// Bytes the fields needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// A sequence number that must be at least 1 is 0.
    #[error("sequence number 0 where at least 1 is required")]
    ZeroSeq,
    /// A delta whose `prev_leaf_seq` is not smaller than its `seq`.
    #[error("prev_leaf_seq {prev} is not before seq {seq}")]
    PrevNotBeforeSeq {
        /// The delta's sequence number.
        seq: u64,
        /// The declared previous sequence number of its leaf.
        prev: u64,
    },
    /// A delta with delta flag bits this version does not define.
    #[error("unknown delta flags {0:#04x}")]
    UnknownDeltaFlags(u8),
    /// A delta flagged as creating its leaf whose `prev_leaf_seq` is not 0.
    #[error("delta creates its leaf but names previous delta {prev}")]
    CreatesWithPrev {
        /// The declared previous sequence number.
        prev: u64,
    },
    /// A leaf snapshot with leaf flag bits this version does not define.
    #[error("unknown leaf flags {0:#04x}")]
    UnknownLeafFlags(u8),
    /// A tombstone snapshot that also carries a value.
    #[error("tombstone carries a value")]
    TombstoneWithValue,
    /// A NAK that lists no range.
    #[error("NAK carries no range")]
    EmptyNak,
    /// A NAK range whose first sequence number is 0 or after its last.
    #[error("NAK range {first}..={last} is invalid")]
    BadNakRange {
        /// First sequence number of the range.
        first: u64,
        /// Last sequence number of the range.
        last: u64,
    },
    /// A fragment NAK range that is empty or inverted (`offset >= end`).
    #[error("fragment NAK range {offset}..{end} is empty or inverted")]
    BadFragRange {
        /// Start of the range.
        offset: u32,
        /// End of the range (exclusive).
        end: u32,
    },
    /// A fragment that carries no data or declares a zero total length.
    #[error("fragment carries no data")]
    EmptyFragment,
    /// A fragment whose data runs past the declared total length.
    #[error("fragment bytes {offset}..{end} run past total length {total_len}")]
    FragmentOutOfBounds {
        /// Offset of the fragment's data.
        offset: u32,
        /// End of the fragment's data (exclusive).
        end: u64,
        /// Declared length of the whole message body.
        total_len: u32,
    },
    /// A fragment whose inner kind is padding or another fragment.
    #[error("fragment cannot carry kind {0:#04x}")]
    BadInnerKind(u8),
    /// An unknown message ([`super::Message::Unknown`]) whose kind this
    /// version defines (`0x00..=0x0a`). Only the encoder reports it
    /// ([`EncodeError::InvalidMessage`]): a decoder reads a defined kind as
    /// that kind, so PROTOCOL.md §7 has no counter for it.
    #[error("kind {0:#04x} is defined by this version and cannot be sent as an unknown message")]
    ReservedKind(u8),
    /// A StreamInfo whose schema name is not UTF-8.
    #[error("schema name is not UTF-8 (valid up to byte {at})")]
    SchemaNameNotUtf8 {
        /// Length of the valid UTF-8 prefix.
        at: usize,
    },
    /// A StreamInfo whose schema name is longer than its one-byte length
    /// field allows. Only the encoder reports it
    /// ([`EncodeError::InvalidMessage`]): a decoded name cannot be.
    #[error("schema name of {len} bytes exceeds 255")]
    SchemaNameTooLong {
        /// Length of the name.
        len: usize,
    },
}

impl Malformed {
    /// A short stable name for this case, suitable as a counter label.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Malformed::BodyTooShort { .. } => "body_too_short",
            Malformed::ZeroSeq => "zero_seq",
            Malformed::PrevNotBeforeSeq { .. } => "prev_not_before_seq",
            Malformed::UnknownDeltaFlags(_) => "unknown_delta_flags",
            Malformed::CreatesWithPrev { .. } => "creates_with_prev",
            Malformed::UnknownLeafFlags(_) => "unknown_leaf_flags",
            Malformed::TombstoneWithValue => "tombstone_with_value",
            Malformed::EmptyNak => "empty_nak",
            Malformed::BadNakRange { .. } => "bad_nak_range",
            Malformed::BadFragRange { .. } => "bad_frag_range",
            Malformed::EmptyFragment => "empty_fragment",
            Malformed::FragmentOutOfBounds { .. } => "fragment_out_of_bounds",
            Malformed::BadInnerKind(_) => "bad_inner_kind",
            Malformed::ReservedKind(_) => "reserved_kind",
            Malformed::SchemaNameNotUtf8 { .. } => "bad_schema_name",
            Malformed::SchemaNameTooLong { .. } => "schema_name_too_long",
        }
    }
}

/// Why a message could not be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The message does not fit in what is left of the datagram buffer.
    /// Flush the datagram and retry, or fragment the message.
    #[error("message of {needed} bytes does not fit in the {remaining} bytes left")]
    DoesNotFit {
        /// Encoded length of the message, header included.
        needed: usize,
        /// Bytes left in the datagram.
        remaining: usize,
    },
    /// The body is longer than the 65,535 bytes one message can carry; send it
    /// in fragments ([`super::Fragments`]).
    #[error("message body of {len} bytes exceeds 65535; fragment it")]
    BodyTooLarge {
        /// Body length.
        len: usize,
    },
    /// The buffer cannot even hold the datagram header.
    #[error("buffer of {len} bytes cannot hold the datagram header")]
    BufferTooSmall {
        /// Buffer length.
        len: usize,
    },
    /// The message breaks a rule of its kind, so a receiver would drop the
    /// whole datagram carrying it (PROTOCOL.md §7); nothing is written. See
    /// [`super::Message::validate`] for the checks: a Delta or Retransmit
    /// with `seq` 0, a `prev_leaf_seq` not below `seq`, or `creates` with a
    /// `prev_leaf_seq` other than 0; a NAK with no range or an invalid one; a
    /// fragment with no data, a zero `total_len`, data past `total_len`, or
    /// inner kind `0x00`/`0x08`; an unknown message whose kind this version
    /// defines. An unknown critical kind (`0x80..=0xff`) is written as asked:
    /// receivers dropping its datagram is what such a kind means.
    #[error("refusing to encode an invalid message: {reason}")]
    InvalidMessage {
        /// The rule broken, as a receiver would report it.
        reason: Malformed,
    },
    /// A field that exceeds its wire width (a key over 65,535 bytes, more
    /// than 65,535 NAK ranges, a fragmented body over 4 GiB).
    #[error("{field} is too long for its wire field")]
    FieldTooLong {
        /// Which field.
        field: &'static str,
    },
}
