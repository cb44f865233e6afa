//! Global sequence ordering: a bounded reorder buffer and hole detection.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::SeqNum;

/// A delta held until the ones before it arrive.
#[derive(Debug, Clone)]
pub(crate) struct OwnedDelta {
    pub(crate) seq: SeqNum,
    pub(crate) prev: SeqNum,
    pub(crate) creates: bool,
    pub(crate) key: Box<[u8]>,
    pub(crate) payload: Box<[u8]>,
}

impl OwnedDelta {
    pub(crate) fn size(&self) -> usize {
        self.key.len() + self.payload.len() + 64
    }
}

/// What the sequencer says about an incoming sequence number.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// It is the next one: process it now.
    Next,
    /// Already processed or already buffered.
    Duplicate,
    /// Ahead of a hole: buffered.
    Buffered,
}

#[derive(Debug)]
pub(crate) struct Sequencer {
    /// Every delta `<= applied` has been processed or declared lost.
    pub(crate) applied: SeqNum,
    /// Highest sequence number known to exist.
    pub(crate) known_tail: SeqNum,
    buffer: BTreeMap<SeqNum, OwnedDelta>,
    buffer_bytes: usize,
    hole_since: Option<Instant>,
}

impl Sequencer {
    pub(crate) fn new(applied: SeqNum) -> Self {
        Self {
            applied,
            known_tail: applied,
            buffer: BTreeMap::new(),
            buffer_bytes: 0,
            hole_since: None,
        }
    }

    pub(crate) fn buffered(&self) -> usize {
        self.buffer.len()
    }

    pub(crate) fn buffered_bytes(&self) -> usize {
        self.buffer_bytes
    }

    /// Learns that `seq` exists (from a heartbeat or cycle marker).
    pub(crate) fn saw_tail(&mut self, now: Instant, seq: SeqNum) {
        if seq > self.known_tail {
            self.known_tail = seq;
        }
        self.update_hole(now);
    }

    pub(crate) fn admit(&mut self, now: Instant, d: &crate::wire::Delta<'_>) -> Admit {
        if d.seq <= self.applied || self.buffer.contains_key(&d.seq) {
            return Admit::Duplicate;
        }
        if d.seq > self.known_tail {
            self.known_tail = d.seq;
        }
        if Some(d.seq) == self.applied.next() {
            return Admit::Next;
        }
        let owned = OwnedDelta {
            seq: d.seq,
            prev: d.prev_leaf_seq,
            creates: d.creates,
            key: d.key.into(),
            payload: d.payload.into(),
        };
        self.buffer_bytes += owned.size();
        self.buffer.insert(d.seq, owned);
        self.update_hole(now);
        Admit::Buffered
    }

    /// Marks `seq` (the next one) processed.
    pub(crate) fn advance(&mut self, now: Instant, seq: SeqNum) {
        self.applied = seq;
        self.hole_since = None;
        self.update_hole(now);
    }

    /// The next buffered delta if it is the next in sequence.
    pub(crate) fn pop_next(&mut self) -> Option<OwnedDelta> {
        let next = self.applied.next()?;
        let d = self.buffer.remove(&next)?;
        self.buffer_bytes -= d.size();
        Some(d)
    }

    fn update_hole(&mut self, now: Instant) {
        if self.known_tail > self.applied {
            self.hole_since.get_or_insert(now);
        } else {
            self.hole_since = None;
        }
    }

    /// When the current hole must be given up on.
    pub(crate) fn deadline(&self, timeout: Duration) -> Option<Instant> {
        self.hole_since.map(|t| t + timeout)
    }

    /// The hole to give up on now, if its deadline passed or the buffer
    /// exceeds its bounds: `(first, last)` inclusive. Marks it processed.
    pub(crate) fn take_lost(
        &mut self,
        now: Instant,
        timeout: Duration,
        max_count: usize,
        max_bytes: usize,
    ) -> Option<(SeqNum, SeqNum)> {
        let overflow = self.buffer.len() > max_count || self.buffer_bytes > max_bytes;
        let expired = self.hole_since.is_some_and(|t| now >= t + timeout);
        if !(overflow || expired) || self.known_tail <= self.applied {
            return None;
        }
        let first = self.applied.next()?;
        let last = match self.buffer.keys().next() {
            Some(&s) => SeqNum(s.0 - 1),
            None => self.known_tail,
        };
        if last < first {
            return None;
        }
        self.applied = last;
        self.hole_since = None;
        self.update_hole(now);
        Some((first, last))
    }
}
