//! Batching outgoing messages into datagrams, fragmenting the large ones.

use std::collections::VecDeque;

use super::datagram::DatagramWriter;
use super::{
    fragment_capacity, DatagramHeader, EncodeError, Fragments, Message, MessageKind, HEADER_LEN,
    MAX_BODY_LEN,
};
use crate::{SessionId, StreamId};

/// Packs messages of one stream and session into datagrams of at most a
/// configured size: as many messages per datagram as fit, and messages too
/// large for one datagram split into fragments.
///
/// Buffers are allocated once and reused: pushing a message allocates
/// nothing once the packer has warmed up.
///
/// ```
/// use grapevine_core::wire::{Datagram, Delta, Message, Packer};
/// use grapevine_core::{SeqNum, SessionId, StreamId};
///
/// let mut packer = Packer::new(StreamId(1), SessionId(2), 1452);
/// for seq in 1..=100u64 {
///     packer.push(&Message::Delta(Delta {
///         seq: SeqNum(seq), prev_leaf_seq: SeqNum::NONE, creates: false, key: b"key", payload: &[0; 40],
///     }))?;
/// }
/// packer.flush();
/// let mut buf = [0u8; 1452];
/// let mut datagrams = 0;
/// while let Some(len) = packer.pop_into(&mut buf) {
///     assert!(Datagram::decode(&buf[..len]).is_ok());
///     datagrams += 1;
/// }
/// assert!(datagrams < 100 / 10, "about 20 deltas fit per datagram");
/// # Ok::<(), grapevine_core::wire::EncodeError>(())
/// ```
#[derive(Debug)]
pub struct Packer {
    stream: StreamId,
    session: SessionId,
    max_datagram: usize,
    next_datagram_seq: u64,
    next_frag_id: u32,
    cur: Vec<u8>,
    cur_len: usize,
    cur_msgs: usize,
    ready: VecDeque<(Vec<u8>, usize)>,
    pool: Vec<Vec<u8>>,
    scratch: Vec<u8>,
}

impl Packer {
    /// A packer for datagrams of at most `max_datagram` bytes (at least
    /// [`HEADER_LEN`] + 64; smaller values are raised to that).
    #[must_use]
    pub fn new(stream: StreamId, session: SessionId, max_datagram: usize) -> Self {
        let max_datagram = max_datagram.max(HEADER_LEN + 64);
        Self {
            stream,
            session,
            max_datagram,
            next_datagram_seq: 0,
            next_frag_id: 0,
            cur: Vec::new(),
            cur_len: 0,
            cur_msgs: 0,
            ready: VecDeque::new(),
            pool: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// The maximum datagram size.
    #[must_use]
    pub fn max_datagram(&self) -> usize {
        self.max_datagram
    }

    /// Bytes left in the datagram being filled (0 if none is open).
    #[must_use]
    pub fn remaining(&self) -> usize {
        if self.cur_msgs == 0 {
            self.max_datagram - HEADER_LEN
        } else {
            self.max_datagram - self.cur_len
        }
    }

    /// Number of finished datagrams waiting to be sent.
    #[must_use]
    pub fn ready_count(&self) -> usize {
        self.ready.len()
    }

    /// Whether a datagram is being filled (holds at least one message).
    #[must_use]
    pub fn is_open(&self) -> bool {
        self.cur_msgs > 0
    }

    /// Whether nothing waits to be sent: no finished datagram and no open one.
    #[must_use]
    pub fn is_idle(&self) -> bool {
        self.ready.is_empty() && self.cur_msgs == 0
    }

    /// Adds a message to the open datagram, finishing it first if the message
    /// does not fit, or splits the message into fragments if it would not fit
    /// even in an empty datagram.
    ///
    /// # Errors
    ///
    /// [`EncodeError::FieldTooLong`] if a field exceeds its wire width (a key
    /// over 65,535 bytes, a body over 4 GiB).
    pub fn push(&mut self, msg: &Message<'_>) -> Result<(), EncodeError> {
        let body_len = msg.body_len();
        let fits_alone =
            body_len <= MAX_BODY_LEN && msg.encoded_len() <= self.max_datagram - HEADER_LEN;
        if !fits_alone {
            return self.push_fragmented(msg);
        }
        if msg.encoded_len() > self.remaining() {
            self.flush();
        }
        self.open();
        let mut w = DatagramWriter::resume(&mut self.cur, self.cur_len, self.cur_msgs);
        w.push(msg)?;
        self.cur_msgs = w.message_count();
        self.cur_len = w.finish();
        Ok(())
    }

    fn push_fragmented(&mut self, msg: &Message<'_>) -> Result<(), EncodeError> {
        let Some(kind) = MessageKind::from_u8(msg.kind_byte()) else {
            return Err(EncodeError::BodyTooLarge {
                len: msg.body_len(),
            });
        };
        if u32::try_from(msg.body_len()).is_err() {
            return Err(EncodeError::FieldTooLong {
                field: "fragmented body",
            });
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        let res = msg.encode_body(&mut scratch).and_then(|()| {
            let frag_id = self.next_frag_id;
            self.next_frag_id = self.next_frag_id.wrapping_add(1);
            self.flush();
            let cap = fragment_capacity(self.max_datagram);
            for frag in Fragments::new(frag_id, kind, &scratch, cap) {
                self.push(&Message::Fragment(frag))?;
            }
            Ok(())
        });
        self.scratch = scratch;
        res
    }

    fn open(&mut self) {
        if self.cur_msgs > 0 {
            return;
        }
        if self.cur.len() != self.max_datagram {
            self.cur = self.pool.pop().unwrap_or_default();
            self.cur.resize(self.max_datagram, 0);
        }
        let header = DatagramHeader {
            stream: self.stream,
            session: self.session,
            datagram_seq: self.next_datagram_seq,
        };
        // The buffer is at least HEADER_LEN + 64 bytes, so this cannot fail.
        if let Ok(w) = DatagramWriter::new(&mut self.cur, &header) {
            self.cur_len = w.finish();
        }
    }

    /// Finishes the open datagram, if it holds any message, and queues it.
    pub fn flush(&mut self) {
        if self.cur_msgs == 0 {
            return;
        }
        let full = std::mem::take(&mut self.cur);
        self.ready.push_back((full, self.cur_len));
        self.cur_msgs = 0;
        self.cur_len = 0;
        self.next_datagram_seq += 1;
    }

    /// Copies the oldest finished datagram into `buf` and returns its length,
    /// or `None` if no datagram is finished (call [`Packer::flush`] first to
    /// send a partly filled one). `buf` must hold the maximum datagram size;
    /// a datagram that does not fit in a smaller `buf` is dropped.
    pub fn pop_into(&mut self, buf: &mut [u8]) -> Option<usize> {
        let (d, len) = self.ready.pop_front()?;
        let copied = match (buf.get_mut(..len), d.get(..len)) {
            (Some(dst), Some(src)) => {
                dst.copy_from_slice(src);
                Some(len)
            }
            _ => None,
        };
        if self.pool.len() < 64 {
            self.pool.push(d);
        }
        copied
    }
}
