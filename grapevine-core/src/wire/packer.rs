//! Batching outgoing messages into datagrams, fragmenting the large ones.

use std::collections::VecDeque;

use super::datagram::DatagramWriter;
use super::{
    fragment_capacity, DatagramHeader, EncodeError, Fragments, KindCounts, Message, MessageKind,
    HEADER_LEN, MAX_BODY_LEN,
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
///         seq: SeqNum(seq), prev_leaf_seq: SeqNum::NONE, creates: false, removes: false,
///         key: b"key", payload: &[0; 40],
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
    /// Bytes of the datagrams finished so far, headers included.
    finished_bytes: u64,
    counts: KindCounts,
    next_frag_id: u32,
    cur: Vec<u8>,
    cur_len: usize,
    cur_msgs: usize,
    ready: VecDeque<(Vec<u8>, usize)>,
    /// Bytes of the datagrams in `ready`.
    ready_bytes: usize,
    pool: Vec<Vec<u8>>,
    scratch: Vec<u8>,
    /// Whether to keep a copy of every message split into fragments.
    keep: bool,
    /// Messages split into fragments since last drained: id, kind, body.
    kept: Vec<(u32, u8, Vec<u8>)>,
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
            finished_bytes: 0,
            counts: KindCounts::default(),
            next_frag_id: 0,
            cur: Vec::new(),
            cur_len: 0,
            cur_msgs: 0,
            ready: VecDeque::new(),
            ready_bytes: 0,
            pool: Vec::new(),
            scratch: Vec::new(),
            keep: false,
            kept: Vec::new(),
        }
    }

    /// Length of the oldest finished datagram, if any.
    #[must_use]
    pub fn next_len(&self) -> Option<usize> {
        self.ready.front().map(|(_, len)| *len)
    }

    /// Keep a copy of every message split into fragments from now on, for
    /// [`Packer::drain_fragmented`] (a publisher keeps them to answer
    /// requests for missing fragments).
    pub fn keep_fragmented(&mut self, on: bool) {
        self.keep = on;
        if !on {
            self.kept.clear();
        }
    }

    /// The messages split into fragments since the last call, with
    /// [`Packer::keep_fragmented`] on: `frag_id`, kind byte and whole body.
    pub fn drain_fragmented(&mut self) -> std::vec::Drain<'_, (u32, u8, Vec<u8>)> {
        self.kept.drain(..)
    }

    /// Number of datagrams finished so far (the next `datagram_seq`).
    #[must_use]
    pub fn datagrams(&self) -> u64 {
        self.next_datagram_seq
    }

    /// Bytes of the datagrams finished so far, headers included: what
    /// they cost on the wire.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.finished_bytes
    }

    /// The messages pushed so far and their bytes, by kind (a fragmented
    /// message as its fragments).
    #[must_use]
    pub fn counts(&self) -> &KindCounts {
        &self.counts
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

    /// Bytes of the finished datagrams waiting to be sent.
    #[must_use]
    pub fn ready_bytes(&self) -> usize {
        self.ready_bytes
    }

    /// Drops the oldest finished datagram unsent and returns its length;
    /// `None` if none is waiting. A publisher sheds this way when its
    /// socket falls behind: receivers see a loss and repair it.
    pub fn shed_oldest(&mut self) -> Option<usize> {
        let (d, len) = self.ready.pop_front()?;
        self.ready_bytes -= len;
        self.recycle(d);
        Some(len)
    }

    fn recycle(&mut self, d: Vec<u8>) {
        if self.pool.len() < 64 {
            self.pool.push(d);
        }
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
    /// [`EncodeError::InvalidMessage`] if a receiver would reject the
    /// message ([`Message::validate`]); [`EncodeError::FieldTooLong`] if a
    /// field exceeds its wire width (a key over 65,535 bytes, a body over
    /// 4 GiB). Nothing is queued or flushed then.
    pub fn push(&mut self, msg: &Message<'_>) -> Result<(), EncodeError> {
        msg.validate()?;
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
        self.counts.add(msg.kind_byte(), msg.encoded_len());
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
            Ok(frag_id)
        });
        self.scratch = scratch;
        let frag_id = res?;
        if self.keep {
            self.kept.push((frag_id, kind as u8, self.scratch.clone()));
        }
        Ok(())
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
        self.ready_bytes += self.cur_len;
        self.finished_bytes += self.cur_len as u64;
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
        self.ready_bytes -= len;
        let copied = match (buf.get_mut(..len), d.get(..len)) {
            (Some(dst), Some(src)) => {
                dst.copy_from_slice(src);
                Some(len)
            }
            _ => None,
        };
        self.recycle(d);
        copied
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::wire::{Datagram, Delta, EncodeError, LeafSnapshot};
    use crate::{CycleId, Reassembler, ReassemblyConfig, SeqNum};

    fn delta(seq: u64, key: &[u8]) -> Message<'_> {
        Message::Delta(Delta {
            seq: SeqNum(seq),
            prev_leaf_seq: SeqNum::NONE,
            creates: true,
            removes: false,
            key,
            payload: b"p",
        })
    }

    #[test]
    fn remaining_counts_the_room_left_in_the_datagram() {
        let mut p = Packer::new(StreamId(1), SessionId(2), 200);
        assert_eq!(p.max_datagram(), 200);
        assert_eq!(p.remaining(), 200 - HEADER_LEN, "none open");
        let m = delta(1, b"k");
        p.push(&m).unwrap();
        assert_eq!(p.remaining(), 200 - HEADER_LEN - m.encoded_len());
        p.flush();
        assert_eq!(p.remaining(), 200 - HEADER_LEN);
        // Idle only with nothing open and nothing ready.
        let mut p = Packer::new(StreamId(1), SessionId(2), 200);
        assert!(p.is_idle());
        p.push(&m).unwrap();
        assert!(p.is_open() && !p.is_idle(), "open");
        p.flush();
        assert!(!p.is_open() && !p.is_idle(), "ready");
        let mut buf = [0u8; 200];
        assert!(p.pop_into(&mut buf).is_some());
        assert!(p.is_idle());
        // Below the smallest datagram, the smallest is used.
        assert_eq!(
            Packer::new(StreamId(1), SessionId(2), 10).max_datagram(),
            HEADER_LEN + 64
        );
    }

    #[test]
    fn a_message_that_exactly_fills_the_room_left_joins_the_open_datagram() {
        let mut p = Packer::new(StreamId(1), SessionId(2), 200);
        p.push(&delta(1, b"k")).unwrap();
        // A key that makes the second delta exactly as long as the room left.
        let fixed = delta(2, b"").encoded_len();
        let key = vec![b'x'; p.remaining() - fixed];
        let m = delta(2, &key);
        assert_eq!(m.encoded_len(), p.remaining());
        p.push(&m).unwrap();
        assert_eq!(
            (p.ready_count(), p.remaining()),
            (0, 0),
            "one datagram, full"
        );
        // One byte more goes to the next datagram.
        let mut p = Packer::new(StreamId(1), SessionId(2), 200);
        p.push(&delta(1, b"k")).unwrap();
        let key = vec![b'x'; p.remaining() - fixed + 1];
        p.push(&delta(2, &key)).unwrap();
        assert_eq!(p.ready_count(), 1);
    }

    #[test]
    fn keys_up_to_65535_bytes_are_taken_longer_ones_refused() {
        let snap = |key| {
            Message::LeafSnapshot(LeafSnapshot {
                cycle: CycleId(1),
                position: 0,
                leaf_seq: SeqNum(1),
                key,
                value: Some(b"v"),
            })
        };
        let mut p = Packer::new(StreamId(1), SessionId(2), 1452);
        let longest = vec![b'k'; 65_535];
        let long = vec![b'k'; 65_536];
        p.push(&delta(1, &longest)).unwrap();
        p.push(&snap(&longest)).unwrap();
        for m in [delta(2, &long), snap(&long)] {
            assert_eq!(p.push(&m), Err(EncodeError::FieldTooLong { field: "key" }));
        }
    }

    /// `ready_bytes` sums the finished datagrams; shedding drops the
    /// oldest first, and popping and shedding both subtract.
    #[test]
    fn ready_bytes_count_what_waits_and_shedding_drops_the_oldest() {
        let mut p = Packer::new(StreamId(1), SessionId(2), 200);
        assert_eq!((p.ready_bytes(), p.shed_oldest()), (0, None));
        let mut lens = Vec::new();
        for (seq, key) in [(1, &b"a"[..]), (2, b"bbbbbbbb"), (3, b"cc")] {
            p.push(&delta(seq, key)).unwrap();
            p.flush();
            lens.push(p.ready_bytes() - lens.iter().sum::<usize>());
        }
        assert!(lens[0] < lens[1] && lens[2] < lens[1], "{lens:?}");
        assert_eq!(p.shed_oldest(), Some(lens[0]));
        assert_eq!(p.ready_bytes(), lens[1] + lens[2]);
        let mut buf = [0u8; 200];
        assert_eq!(p.pop_into(&mut buf), Some(lens[1]), "the second is next");
        let d = Datagram::decode(&buf[..lens[1]]).unwrap();
        assert_eq!(d.header().datagram_seq, 1);
        assert_eq!(p.ready_bytes(), lens[2]);
        assert_eq!(p.shed_oldest(), Some(lens[2]));
        assert_eq!((p.ready_bytes(), p.ready_count()), (0, 0));
    }

    #[test]
    fn sent_datagram_buffers_are_reused_up_to_64() {
        let mut p = Packer::new(StreamId(1), SessionId(2), 200);
        let mut buf = [0u8; 200];
        p.push(&delta(1, b"k")).unwrap();
        p.flush();
        assert!(p.pop_into(&mut buf).is_some());
        assert_eq!(p.pool.len(), 1, "kept for the next datagram");
        p.push(&delta(2, b"k")).unwrap();
        assert_eq!(p.pool.len(), 0, "and reused");
        for seq in 3..103 {
            p.push(&delta(seq, b"k")).unwrap();
            p.flush();
        }
        while p.pop_into(&mut buf).is_some() {}
        assert_eq!(p.pool.len(), 64, "at most 64 kept");
    }

    #[test]
    fn fragmented_messages_are_kept_only_while_asked() {
        let mut p = Packer::new(StreamId(1), SessionId(2), 200);
        let big = vec![7u8; 500];
        p.keep_fragmented(true);
        p.push(&delta(1, &big)).unwrap();
        let kept: Vec<_> = p.drain_fragmented().collect();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].1, MessageKind::Delta as u8);
        assert_eq!(kept[0].2.len(), delta(1, &big).body_len());
        // Kept, then turned off before draining: dropped.
        p.push(&delta(2, &big)).unwrap();
        p.keep_fragmented(false);
        assert_eq!(p.drain_fragmented().count(), 0);
        p.push(&delta(3, &big)).unwrap();
        assert_eq!(p.drain_fragmented().count(), 0, "off: nothing kept");
        // Turning it on again keeps what was kept (nothing is cleared).
        p.keep_fragmented(true);
        p.push(&delta(4, &big)).unwrap();
        p.keep_fragmented(true);
        assert_eq!(p.drain_fragmented().count(), 1);
    }

    #[test]
    fn refused_messages_leave_the_open_datagram_alone() {
        let mut p = Packer::new(StreamId(1), SessionId(2), 200);
        p.push(&delta(1, b"k")).unwrap();
        assert!(p.is_open());
        let err = p.push(&delta(0, b"k")).unwrap_err();
        assert!(matches!(err, EncodeError::InvalidMessage { .. }), "{err:?}");
        let long = vec![0u8; 70_000];
        assert_eq!(
            p.push(&delta(2, &long)),
            Err(EncodeError::FieldTooLong { field: "key" })
        );
        assert!(p.is_open());
        assert_eq!(p.ready_count(), 0);
        p.flush();
        let mut buf = [0u8; 200];
        let len = p.pop_into(&mut buf).unwrap();
        let msgs: Vec<_> = Datagram::decode(&buf[..len]).unwrap().messages().collect();
        assert_eq!(msgs, vec![delta(1, b"k")]);
    }

    #[test]
    fn a_large_message_goes_out_in_fragments_that_reassemble() {
        let value: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let snap = Message::LeafSnapshot(LeafSnapshot {
            cycle: CycleId(3),
            position: 0,
            leaf_seq: SeqNum(9),
            key: b"big",
            value: Some(&value),
        });
        let mut p = Packer::new(StreamId(1), SessionId(2), 1452);
        p.push(&delta(1, b"a")).unwrap();
        p.push(&snap).unwrap();
        p.flush();
        let mut r = Reassembler::new(ReassemblyConfig::default()).unwrap();
        let mut buf = [0u8; 1452];
        let (mut datagrams, mut whole, mut seqs) = (0, None, Vec::new());
        while let Some(len) = p.pop_into(&mut buf) {
            datagrams += 1;
            let d = Datagram::decode(&buf[..len]).unwrap();
            seqs.push(d.header().datagram_seq);
            for m in d.messages() {
                if let Message::Fragment(f) = m {
                    if let Some(done) = r
                        .handle_fragment(Instant::now(), StreamId(1), SessionId(2), &f)
                        .unwrap()
                    {
                        whole = Some(done);
                    }
                }
            }
        }
        assert!(datagrams >= 8, "{datagrams}");
        assert_eq!(
            seqs,
            (0..datagrams).collect::<Vec<u64>>(),
            "datagram_seq counts up"
        );
        let whole = whole.expect("reassembled");
        assert_eq!(whole.message().unwrap(), snap);
    }
}
