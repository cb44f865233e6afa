//! The publisher's bounded record of what it sent, to answer NAKs: every
//! recent delta by sequence number, and every recent fragmented message by
//! `frag_id`. Bounded in count and bytes; the oldest entries go first.
//!
//! A durable segment log will later take the entries this history evicts.

use std::collections::VecDeque;
use std::time::Instant;

use crate::SeqNum;

/// Per-entry bookkeeping overhead counted against the byte bound.
const ENTRY_OVERHEAD: usize = 48;

#[derive(Debug)]
struct Entry {
    /// Where the Delta body, as sent, lies in the ring: offset and length;
    /// `None` for one larger than the whole byte bound (kept as a place
    /// holder: entries stay contiguous in `seq`).
    body: Option<(usize, usize)>,
    /// When it was last retransmitted.
    repaired_at: Option<Instant>,
    /// Whether any NAK has asked for it yet.
    requested: bool,
}

/// Recent deltas, contiguous in `seq`.
///
/// The bodies live back to back in one ring buffer, never split across its
/// end (a body that does not fit before the end starts over at 0), so
/// recording a delta allocates nothing once the ring has grown (to at most
/// `max_bytes`); writing a body evicts the oldest entries it overwrites.
#[derive(Debug)]
pub(crate) struct History {
    entries: VecDeque<Entry>,
    ring: Vec<u8>,
    /// Where the next body goes in `ring`.
    head: usize,
    /// Sequence number of `entries[0]`.
    first: u64,
    bytes: usize,
    max_count: usize,
    max_bytes: usize,
}

/// What the history says about one sequence number asked for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Lookup<'a> {
    /// Retransmit this body.
    Send(&'a [u8]),
    /// Retransmitted within the hold-off: a repair is already on its way.
    Coalesced,
    /// No longer (or not yet) held.
    Gone,
}

impl History {
    pub(crate) fn new(max_count: usize, max_bytes: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            ring: Vec::new(),
            head: 0,
            first: 1,
            bytes: 0,
            max_count,
            max_bytes,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// The oldest sequence number held, if any.
    pub(crate) fn first_seq(&self) -> Option<SeqNum> {
        (!self.entries.is_empty()).then_some(SeqNum(self.first))
    }

    /// Records delta `seq` (the next after the newest held) and evicts the
    /// oldest entries beyond the bounds.
    pub(crate) fn push(&mut self, seq: SeqNum, body: &[u8]) {
        if self.max_count == 0 {
            self.first = seq.0.saturating_add(1);
            return;
        }
        let slot = (body.len() + ENTRY_OVERHEAD <= self.max_bytes).then(|| {
            let at = self.place(body.len());
            if let Some(dst) = self.ring.get_mut(at..at + body.len()) {
                dst.copy_from_slice(body);
            }
            (at, body.len())
        });
        if self.entries.is_empty() {
            self.first = seq.0;
        }
        self.bytes += slot.map_or(0, |(_, len)| len) + ENTRY_OVERHEAD;
        self.entries.push_back(Entry {
            body: slot,
            repaired_at: None,
            requested: false,
        });
        while self.entries.len() > self.max_count
            || (self.bytes > self.max_bytes && self.entries.len() > 1)
        {
            self.evict();
        }
    }

    /// Room for a body of `len` bytes in the ring (growing it up to
    /// `max_bytes`, else starting over at 0): evicts the oldest entries
    /// whose bodies lie there, and returns where it starts.
    fn place(&mut self, len: usize) -> usize {
        if self.head + len > self.ring.len() {
            let want = (self.ring.len() * 2).max(self.head + len).max(4096);
            let grown = want.min(self.max_bytes).max(len);
            if self.head + len <= grown {
                self.ring.resize(grown, 0);
            } else {
                // Starting over at 0: the bodies between the head and the
                // end are the oldest (the previous lap's): they go first,
                // so that the entries the new lap overwrites are always
                // at the front.
                let tail = self.head;
                while self
                    .entries
                    .front()
                    .is_some_and(|e| e.body.is_none_or(|(at, _)| at >= tail))
                {
                    self.evict();
                }
                self.head = 0;
                // The ring may still be shorter than this one body.
                self.ring.resize(self.ring.len().max(len), 0);
            }
        }
        let (start, end) = (self.head, self.head + len);
        // Bodies written before lie in order after `head`: the ones this
        // one overwrites are the oldest, at the front (with any bodiless
        // entries before them).
        while self
            .entries
            .front()
            .is_some_and(|e| e.body.is_none_or(|(at, n)| at < end && start < at + n))
        {
            self.evict();
        }
        self.head = end;
        start
    }

    /// Drops the oldest entry.
    fn evict(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            self.bytes -= e.body.map_or(0, |(_, len)| len) + ENTRY_OVERHEAD;
            self.first += 1;
        }
    }

    /// Length of the body held for `seq`, if held.
    pub(crate) fn body_len(&self, seq: u64) -> Option<usize> {
        let i = usize::try_from(seq.checked_sub(self.first)?).ok()?;
        self.entries.get(i)?.body.map(|(_, len)| len)
    }

    /// Looks `seq` up for a repair at `now`: a body to retransmit unless it
    /// was retransmitted at or after `holdoff_since`. The second value is
    /// true the first time any NAK asks for `seq`.
    pub(crate) fn take(
        &mut self,
        seq: u64,
        now: Instant,
        holdoff_since: Option<Instant>,
    ) -> (Lookup<'_>, bool) {
        let Some(i) = seq.checked_sub(self.first) else {
            return (Lookup::Gone, false);
        };
        let Some(e) = usize::try_from(i)
            .ok()
            .and_then(|i| self.entries.get_mut(i))
        else {
            return (Lookup::Gone, false);
        };
        let first_ask = !e.requested;
        e.requested = true;
        let Some(body) = e.body.and_then(|(at, len)| self.ring.get(at..at + len)) else {
            return (Lookup::Gone, first_ask);
        };
        if let (Some(at), Some(since)) = (e.repaired_at, holdoff_since) {
            if at >= since {
                return (Lookup::Coalesced, first_ask);
            }
        }
        e.repaired_at = Some(now);
        (Lookup::Send(body), first_ask)
    }
}

/// Recent fragmented messages, to resend their missing pieces.
#[derive(Debug)]
pub(crate) struct FragHistory {
    entries: VecDeque<(u32, u8, Box<[u8]>)>,
    bytes: usize,
    max_bytes: usize,
}

impl FragHistory {
    pub(crate) fn new(max_bytes: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            bytes: 0,
            max_bytes,
        }
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Records a fragmented message, evicting the oldest beyond the bound.
    pub(crate) fn push(&mut self, frag_id: u32, kind: u8, body: Vec<u8>) {
        if body.len() > self.max_bytes {
            return;
        }
        self.bytes += body.len();
        self.entries
            .push_back((frag_id, kind, body.into_boxed_slice()));
        while self.bytes > self.max_bytes {
            match self.entries.pop_front() {
                Some((_, _, b)) => self.bytes -= b.len(),
                None => break,
            }
        }
    }

    /// The kind and body of message `frag_id`, if held.
    pub(crate) fn get(&self, frag_id: u32) -> Option<(u8, &[u8])> {
        self.entries
            .iter()
            .rev()
            .find(|(id, _, _)| *id == frag_id)
            .map(|(_, kind, body)| (*kind, &body[..]))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn history_is_bounded_by_count_and_bytes_and_forgets_the_oldest() {
        let mut h = History::new(3, 1 << 20);
        for seq in 1..=5 {
            h.push(SeqNum(seq), &[seq as u8; 10]);
        }
        assert_eq!(h.len(), 3);
        assert_eq!(h.first_seq(), Some(SeqNum(3)));
        let now = Instant::now();
        assert_eq!(h.take(2, now, None).0, Lookup::Gone);
        assert_eq!(h.take(6, now, None).0, Lookup::Gone);
        assert_eq!(h.take(4, now, None).0, Lookup::Send(&[4u8; 10][..]));

        let mut h = History::new(1000, 3 * (10 + ENTRY_OVERHEAD));
        for seq in 1..=10 {
            h.push(SeqNum(seq), &[0; 10]);
        }
        assert_eq!(h.len(), 3);
        assert!(h.bytes() <= 3 * (10 + ENTRY_OVERHEAD));
    }

    /// Bodies of varied lengths pushed far beyond the ring's size: every
    /// entry held gives back exactly its body, the held entries are the
    /// newest contiguous run, the ring never exceeds the byte bound, and
    /// once grown, pushing allocates nothing (the ring keeps its buffer).
    #[test]
    fn the_ring_keeps_every_held_body_intact_as_it_wraps() {
        let body = |seq: u64| -> Vec<u8> {
            let len = 20 + (seq * 7919 % 300) as usize;
            (0..len).map(|i| (seq as usize * 31 + i) as u8).collect()
        };
        for max_bytes in [700, 5_000, 64 << 10] {
            let mut h = History::new(1 << 20, max_bytes);
            let mut ring_ptr = None;
            for seq in 1..=5_000u64 {
                h.push(SeqNum(seq), &body(seq));
                assert!(h.ring.len() <= max_bytes && h.bytes() <= max_bytes);
                let first = h.first_seq().unwrap().0;
                assert_eq!(first + h.len() as u64 - 1, seq, "contiguous to the newest");
                let now = Instant::now();
                for s in first..=seq {
                    assert_eq!(h.body_len(s), Some(body(s).len()));
                    match h.take(s, now, None).0 {
                        Lookup::Send(b) => assert_eq!(b, &body(s)[..], "{max_bytes}: {s}"),
                        other => panic!("{max_bytes}: {s} {other:?}"),
                    }
                }
                if seq == 2_500 {
                    ring_ptr = Some(h.ring.as_ptr());
                }
            }
            assert_eq!(
                Some(h.ring.as_ptr()),
                ring_ptr,
                "{max_bytes}: no reallocation"
            );
            // Most of the bound is used: the ring is not evicting early.
            assert!(h.bytes() * 2 >= max_bytes, "{max_bytes}: {}", h.bytes());
        }
    }

    /// Found by review: wrapping to 0 must first drop the previous lap's
    /// bodies at the end of the ring, or the new lap overwrites newer
    /// bodies still held at its start.
    #[test]
    fn a_wrap_does_not_overwrite_held_bodies() {
        let mut h = History::new(1 << 20, 5_000);
        h.push(SeqNum(1), &[1; 3100]); // [0, 3100), ring 4096
        h.push(SeqNum(2), &[2; 100]); // [3100, 3200)
        h.push(SeqNum(3), &[3; 1801]); // wraps: [0, 1801), drops 1 and 2
        h.push(SeqNum(4), &[4; 1000]); // [1801, 2801)
        h.push(SeqNum(5), &[5; 2200]); // wraps again
        let now = Instant::now();
        for s in h.first_seq().unwrap().0..=5 {
            match h.take(s, now, None).0 {
                Lookup::Send(b) => assert!(b.iter().all(|&x| x == s as u8), "seq {s}"),
                other => panic!("{s}: {other:?}"),
            }
        }
    }

    /// Random body lengths up to half the bound, 20,000 pushes: every held
    /// body is intact after every push.
    #[test]
    fn random_lengths_keep_every_held_body_intact() {
        let (mut x, mut lens) = (12345u64, Vec::new());
        let mut h = History::new(1 << 20, 5_000);
        let body = |s: u64, len: usize| -> Vec<u8> {
            (0..len).map(|i| (s as usize * 31 + i) as u8).collect()
        };
        for seq in 1..=20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = 1 + (x % 2_500) as usize;
            lens.push(len);
            h.push(SeqNum(seq), &body(seq, len));
            let now = Instant::now();
            for s in h.first_seq().unwrap().0..=seq {
                match h.take(s, now, None).0 {
                    Lookup::Send(b) => {
                        assert_eq!(b, &body(s, lens[s as usize - 1])[..], "{seq}: {s}");
                    }
                    other => panic!("{seq}: {s} {other:?}"),
                }
            }
        }
    }

    /// The ring starts at 4 KiB and doubles (up to the bound); a body that
    /// exactly reaches its end does not make it grow; bodies written back
    /// to back are all held (the newest does not evict the one before).
    #[test]
    fn the_ring_doubles_and_fills_to_its_very_end() {
        let mut h = History::new(1 << 20, 1 << 20);
        h.push(SeqNum(1), &[1; 3000]);
        assert_eq!(h.ring.len(), 4096);
        h.push(SeqNum(2), &[2; 1096]);
        assert_eq!(h.ring.len(), 4096, "exactly to the end: no growth");
        h.push(SeqNum(3), &[3; 10]);
        assert_eq!(h.ring.len(), 8192, "doubled");
        let now = Instant::now();
        for (s, len) in [(1u64, 3000), (2, 1096), (3, 10)] {
            assert_eq!(
                h.take(s, now, None).0,
                Lookup::Send(&vec![s as u8; len][..])
            );
        }
    }

    /// Wrapping to 0 with a body longer than the ring has grown so far:
    /// the ring grows to hold it, and it is held intact.
    #[test]
    fn a_wrap_with_a_body_longer_than_the_ring_grows_the_ring() {
        let mut h = History::new(1 << 20, 6_000);
        h.push(SeqNum(1), &[1; 4000]);
        assert_eq!(h.ring.len(), 4096);
        h.push(SeqNum(2), &[2; 5000]);
        assert_eq!(h.ring.len(), 5000);
        assert_eq!((h.first_seq(), h.len()), (Some(SeqNum(2)), 1));
        let now = Instant::now();
        assert_eq!(h.take(2, now, None).0, Lookup::Send(&[2u8; 5000][..]));
    }

    #[test]
    fn a_delta_larger_than_the_byte_bound_is_not_kept() {
        let mut h = History::new(100, 1_000);
        h.push(SeqNum(1), &[1; 10]);
        h.push(SeqNum(2), &[2; 100_000]);
        h.push(SeqNum(3), &[3; 10]);
        assert!(h.bytes() <= 1_000, "{}", h.bytes());
        let now = Instant::now();
        assert_eq!(h.take(2, now, None).0, Lookup::Gone);
        assert_eq!(h.take(3, now, None).0, Lookup::Send(&[3u8; 10][..]));
    }

    /// A body that with its entry overhead exactly reaches the byte bound
    /// is kept, alone; the newest delta stays recorded (its body dropped)
    /// even when its overhead alone exceeds the bound.
    #[test]
    fn a_delta_of_exactly_the_byte_bound_is_kept_alone() {
        let mut h = History::new(100, 1_000);
        h.push(SeqNum(1), &[1; 10]);
        h.push(SeqNum(2), &[2; 1_000 - ENTRY_OVERHEAD]);
        assert_eq!(
            (h.len(), h.bytes(), h.first_seq()),
            (1, 1_000, Some(SeqNum(2)))
        );
        let now = Instant::now();
        assert_eq!(
            h.take(2, now, None).0,
            Lookup::Send(&[2u8; 1_000 - ENTRY_OVERHEAD][..])
        );
        let mut h = History::new(100, ENTRY_OVERHEAD - 1);
        h.push(SeqNum(1), &[1; 10]);
        h.push(SeqNum(2), &[2; 10]);
        assert_eq!((h.len(), h.first_seq()), (1, Some(SeqNum(2))));
        assert_eq!(h.take(2, now, None).0, Lookup::Gone);
    }

    #[test]
    fn a_repair_within_the_holdoff_is_coalesced_and_first_asks_are_told() {
        let mut h = History::new(10, 1 << 20);
        h.push(SeqNum(1), b"a");
        let t0 = Instant::now();
        let (l, first) = h.take(1, t0, None);
        assert_eq!((l, first), (Lookup::Send(&b"a"[..]), true));
        let t1 = t0 + Duration::from_millis(1);
        let (l, first) = h.take(1, t1, Some(t0));
        assert_eq!((l, first), (Lookup::Coalesced, false));
        let t2 = t0 + Duration::from_millis(50);
        let (l, _) = h.take(1, t2, Some(t2 - Duration::from_millis(10)));
        assert_eq!(l, Lookup::Send(&b"a"[..]));
    }

    #[test]
    fn fragment_history_keeps_the_newest_within_its_bytes() {
        let mut f = FragHistory::new(100);
        f.push(1, 3, vec![1; 60]);
        f.push(2, 3, vec![2; 60]);
        assert!(f.get(1).is_none());
        assert_eq!(f.get(2).map(|(k, b)| (k, b.len())), Some((3, 60)));
        f.push(3, 3, vec![3; 101]);
        assert!(f.get(3).is_none(), "larger than the whole bound: not kept");
        assert!(f.bytes() <= 100);
    }

    #[test]
    fn a_fragmented_message_of_exactly_the_bound_is_kept_alone() {
        let mut f = FragHistory::new(100);
        f.push(1, 3, vec![1; 40]);
        f.push(2, 3, vec![2; 100]);
        assert!(f.get(1).is_none(), "evicted to make room");
        assert_eq!(f.get(2).map(|(k, b)| (k, b.len())), Some((3, 100)));
        assert_eq!(f.bytes(), 100);
    }
}
