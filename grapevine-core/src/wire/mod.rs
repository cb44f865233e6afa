//! The wire format: datagram header, message kinds, packing and fragmentation.
//!
//! PROTOCOL.md at the repository root is the normative description; this
//! module implements it. Decoding never panics and never trusts a length:
//! [`Datagram::decode`] validates a whole datagram or returns a typed
//! [`DecodeError`]. Encoding writes into a buffer the caller owns
//! ([`DatagramWriter`]) and allocates nothing.
//!
//! # Packing several messages in one datagram
//!
//! ```
//! use grapevine_core::wire::*;
//! use grapevine_core::{SeqNum, SessionId, StreamId};
//!
//! let header = DatagramHeader { stream: StreamId(1), session: SessionId(0xfeed), datagram_seq: 3 };
//! let mut buf = vec![0u8; DEFAULT_MAX_DATAGRAM];
//! let mut w = DatagramWriter::new(&mut buf, &header)?;
//! for seq in 1..=3u64 {
//!     w.push(&Message::Delta(Delta {
//!         seq: SeqNum(seq),
//!         prev_leaf_seq: SeqNum::NONE,
//!         creates: false,
//!         removes: false,
//!         key: b"k",
//!         payload: &seq.to_be_bytes(),
//!     }))?;
//! }
//! let len = w.finish();
//! let seqs: Vec<u64> = Datagram::decode(&buf[..len])?
//!     .messages()
//!     .map(|m| match m { Message::Delta(d) => d.seq.0, _ => 0 })
//!     .collect();
//! assert_eq!(seqs, [1, 2, 3]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Fragmenting a large message
//!
//! A body that does not fit in one datagram is encoded once into a reusable
//! buffer ([`Message::encode_body`]) and split by [`Fragments`]; the receiver
//! feeds each [`Fragment`] to a [`crate::Reassembler`].

mod cursor;
mod datagram;
mod error;
mod fragment;
mod kinds;
mod message;
mod packer;

pub(crate) use datagram::check_header;
pub use datagram::{
    carries_snapshots, peek_header, Datagram, DatagramHeader, DatagramWriter, Decoded, Messages,
    DECODED_INLINE, DEFAULT_MAX_DATAGRAM, HEADER_LEN, MAGIC, MAX_BODY_LEN, MESSAGE_HEADER_LEN,
    VERSION,
};
pub use error::{DecodeError, EncodeError, Malformed};
pub use fragment::{fragment_capacity, Fragments};
pub use kinds::KindCounts;
pub(crate) use message::HEARTBEAT_LEN;
pub use message::{
    check_key, CycleBegin, CycleEnd, Delta, FragNak, FragRanges, Fragment, Heartbeat, LeafSnapshot,
    Message, MessageKind, Nak, NakRanges, StreamInfo, DELTA_FLAG_CREATES, DELTA_FLAG_REMOVES,
    FRAGMENT_FIXED, LEAF_FLAG_TOMBSTONE, MAX_KEY_LEN, STREAM_INFO_FIXED,
};
pub use packer::Packer;

#[cfg(test)]
mod tests;
