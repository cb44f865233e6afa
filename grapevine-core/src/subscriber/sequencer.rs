//! Global sequence ordering: a bounded reorder buffer, the missing sequence
//! numbers ("holes") with their NAK schedule, and the decision to give a
//! hole up to snapshot repair.
//!
//! Invariant: the holes and the buffered deltas together are exactly the
//! sequence numbers in `applied + 1 ..= known_tail`, holes disjoint and in
//! order; `applied + 1` is always in the first hole when `known_tail >
//! applied` (it would have been processed otherwise).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::{SeqNum, SeqRange};

/// How many repair timeouts a hole that retransmissions keep filling may
/// wait, in all, before it is given up anyway.
const PROGRESS_ROUNDS: u32 = 16;

/// A delta held until the ones before it arrive.
#[derive(Debug, Clone)]
pub(crate) struct OwnedDelta {
    pub(crate) seq: SeqNum,
    pub(crate) prev: SeqNum,
    pub(crate) creates: bool,
    pub(crate) removes: bool,
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

/// A run of missing sequence numbers and its repair schedule.
#[derive(Debug, Clone, Copy)]
struct Hole {
    last: u64,
    /// When these sequence numbers were first known to be missing.
    since: Instant,
    /// NAKs sent for them so far.
    naks: u32,
    /// When to NAK next (or, once the NAKs are used up, to give up).
    next_nak: Instant,
    /// Already held back once in this round by a repair heard for others.
    postponed: bool,
}

/// How holes are repaired: by NAK, or by waiting for reordering only.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RepairPolicy {
    /// NAKs may be sent (repair on, and the publisher's address known).
    pub(crate) nak: bool,
    /// NAKs per hole before giving up.
    pub(crate) attempts: u32,
    /// Wait after a NAK before the next one (or before giving up).
    pub(crate) retry: Duration,
    /// Without NAK: how long a hole is waited for.
    pub(crate) reorder_timeout: Duration,
}

/// A missing sequence number filled, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Filled {
    /// Time since it was known missing.
    pub(crate) waited: Duration,
    /// Whether it had been NAKed.
    pub(crate) naked: bool,
}

/// A repair filling a hole: what is left of the hole waits `wait` more.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Progress {
    pub(crate) wait: Duration,
    /// Only if the hole was NAKed (a late copy of an original delta, which
    /// a relay repeats: PROTOCOL.md §8.3).
    pub(crate) if_naked: bool,
}

#[derive(Debug)]
pub(crate) struct Sequencer {
    /// Every delta `<= applied` has been processed or declared lost.
    pub(crate) applied: SeqNum,
    /// The last delta processed (not declared lost), if any.
    processed: SeqNum,
    /// Highest sequence number known to exist.
    pub(crate) known_tail: SeqNum,
    /// When `known_tail` took its current value.
    tail_at: Option<Instant>,
    buffer: BTreeMap<SeqNum, OwnedDelta>,
    buffer_bytes: usize,
    holes: BTreeMap<u64, Hole>,
}

impl Sequencer {
    /// A sequencer starting at `applied` (the starting point), at `now`.
    /// The starting point counts as a claim of the tail made at `now`: a
    /// heartbeat showing it beyond the stream re-anchors it too.
    pub(crate) fn new(applied: SeqNum, now: Instant) -> Self {
        Self {
            applied,
            processed: SeqNum::NONE,
            known_tail: applied,
            tail_at: Some(now),
            buffer: BTreeMap::new(),
            buffer_bytes: 0,
            holes: BTreeMap::new(),
        }
    }

    pub(crate) fn buffered(&self) -> usize {
        self.buffer.len()
    }

    pub(crate) fn buffered_bytes(&self) -> usize {
        self.buffer_bytes
    }

    /// Number of missing sequence numbers.
    pub(crate) fn missing(&self) -> u64 {
        self.holes
            .iter()
            .map(|(f, h)| h.last - f + 1)
            .fold(0u64, u64::saturating_add)
    }

    /// Raises the known tail to `seq`; the sequence numbers between the old
    /// tail and `upto_missing` become a hole, first NAKed at `nak_at`.
    fn raise_tail(&mut self, now: Instant, seq: SeqNum, upto_missing: u64, nak_at: Instant) {
        if seq <= self.known_tail {
            return;
        }
        let first = self.known_tail.0 + 1;
        if upto_missing >= first {
            self.holes.insert(
                first,
                Hole {
                    last: upto_missing,
                    since: now,
                    naks: 0,
                    next_nak: nak_at,
                    postponed: false,
                },
            );
        }
        self.known_tail = seq;
        self.tail_at = Some(now);
    }

    /// Learns that `seq` exists (from a heartbeat or cycle marker).
    pub(crate) fn saw_tail(&mut self, now: Instant, seq: SeqNum, nak_at: Instant) {
        self.raise_tail(now, seq, seq.0, nak_at);
    }

    /// Takes delta `d`. When it fills a hole, the second value says how long
    /// it was missing. `progress` is set for a retransmission: the rest of
    /// its hole then waits that much longer (see [`Sequencer::fill`]).
    pub(crate) fn admit(
        &mut self,
        now: Instant,
        d: &crate::wire::Delta<'_>,
        nak_at: Instant,
        progress: Option<Progress>,
    ) -> (Admit, Option<Filled>) {
        if d.seq <= self.applied || self.buffer.contains_key(&d.seq) {
            return (Admit::Duplicate, None);
        }
        let filled = if d.seq > self.known_tail {
            self.raise_tail(now, d.seq, d.seq.0 - 1, nak_at);
            None
        } else {
            self.fill(now, d.seq.0, progress)
        };
        if Some(d.seq) == self.applied.next() {
            return (Admit::Next, filled);
        }
        let owned = OwnedDelta {
            seq: d.seq,
            prev: d.prev_leaf_seq,
            creates: d.creates,
            removes: d.removes,
            key: d.key.into(),
            payload: d.payload.into(),
        };
        self.buffer_bytes += owned.size();
        self.buffer.insert(d.seq, owned);
        (Admit::Buffered, filled)
    }

    /// Removes `seq` from its hole. A hole being filled is making progress:
    /// what is left of it waits `progress` more before its next NAK (or
    /// before being given up), so that a long repair is not cut short.
    fn fill(&mut self, now: Instant, seq: u64, progress: Option<Progress>) -> Option<Filled> {
        let (&first, &found) = self.holes.range(..=seq).next_back()?;
        if found.last < seq {
            return None;
        }
        let mut hole = found;
        let progress = progress
            .filter(|p| !p.if_naked || found.naks > 0)
            .map(|p| p.wait);
        if let Some(p) = progress {
            // Not beyond PROGRESS_ROUNDS waits after the hole was found: a
            // hole that repairs fill slower than that (a small repair
            // budget, a large backlog) is left to snapshot repair, which is
            // then faster.
            let cap = found.since.checked_add(p * PROGRESS_ROUNDS).unwrap_or(now);
            hole.next_nak = hole.next_nak.max((now + p).min(cap));
        }
        self.holes.remove(&first);
        if first < seq {
            self.holes.insert(
                first,
                Hole {
                    last: seq - 1,
                    ..hole
                },
            );
        }
        if seq < hole.last {
            self.holes.insert(seq + 1, hole);
        }
        Some(Filled {
            waited: now.saturating_duration_since(found.since),
            naked: found.naks > 0,
        })
    }

    /// Marks `seq` (the next one) processed.
    pub(crate) fn advance(&mut self, seq: SeqNum) {
        self.applied = seq;
        self.processed = seq;
    }

    /// The next buffered delta if it is the next in sequence.
    pub(crate) fn pop_next(&mut self) -> Option<OwnedDelta> {
        let next = self.applied.next()?;
        let d = self.buffer.remove(&next)?;
        self.buffer_bytes -= d.size();
        Some(d)
    }

    /// When the first hole is given up on, under `policy`.
    fn give_up_at(&self, policy: &RepairPolicy) -> Option<Instant> {
        let (_, h) = self.holes.first_key_value()?;
        if !policy.nak {
            return h.since.checked_add(policy.reorder_timeout);
        }
        (h.naks >= policy.attempts).then_some(h.next_nak)
    }

    /// When something is due: the next NAK or giving a hole up.
    pub(crate) fn deadline(&self, policy: &RepairPolicy) -> Option<Instant> {
        let nak = if policy.nak {
            self.holes
                .values()
                .filter(|h| h.naks < policy.attempts)
                .map(|h| h.next_nak)
                .min()
        } else {
            None
        };
        [nak, self.give_up_at(policy)].into_iter().flatten().min()
    }

    /// The ranges to NAK at `now` (at most `max`), marking them NAKed.
    pub(crate) fn due_naks(
        &mut self,
        now: Instant,
        policy: &RepairPolicy,
        max: usize,
    ) -> Vec<SeqRange> {
        let mut out = Vec::new();
        if !policy.nak {
            return out;
        }
        for (&first, h) in &mut self.holes {
            if out.len() >= max {
                break;
            }
            if h.naks >= policy.attempts || h.next_nak > now {
                continue;
            }
            h.naks += 1;
            h.next_nak = now + policy.retry;
            h.postponed = false;
            out.push(SeqRange {
                first: SeqNum(first),
                last: SeqNum(h.last),
            });
        }
        out
    }

    /// A repair of `seq` was heard: someone else's NAK is being answered,
    /// so holes after it may be filled by the same burst. Holds back (once
    /// per round) their NAKs not yet sent until `until`. Returns how many
    /// were held back.
    pub(crate) fn postpone_after(&mut self, seq: SeqNum, until: Instant) -> u64 {
        let mut n = 0;
        for (_, h) in self.holes.range_mut(seq.0.saturating_add(1)..) {
            if !h.postponed && h.next_nak < until {
                h.next_nak = until;
                h.postponed = true;
                n += 1;
            }
        }
        n
    }

    /// A heartbeat or cycle end of the session says its latest sequence
    /// number is `latest`, below the known tail. If the tail has been known
    /// for at least `settle` (longer than any reordering), the sequence
    /// numbers above `latest` were never sent (a forged or corrupt claim):
    /// forget them, and take back those already declared lost (never
    /// processed), which no delta would ever come to. Returns whether it
    /// re-anchored.
    pub(crate) fn reanchor(&mut self, now: Instant, latest: SeqNum, settle: Duration) -> bool {
        if latest >= self.known_tail || self.tail_at.is_none_or(|t| now < t + settle) {
            return false;
        }
        let tail = latest.max(self.processed);
        self.applied = self.applied.min(tail);
        self.known_tail = tail;
        self.tail_at = Some(now);
        let dropped = self.buffer.split_off(&SeqNum(tail.0.saturating_add(1)));
        for d in dropped.values() {
            self.buffer_bytes -= d.size();
        }
        let above = self.holes.split_off(&(tail.0.saturating_add(1)));
        drop(above);
        if let Some(mut e) = self.holes.last_entry() {
            let h = e.get_mut();
            h.last = h.last.min(tail.0);
        }
        true
    }

    /// The hole to give up on now, if its repair is over or the buffer
    /// exceeds its bounds: `(first, last)` inclusive. Marks it processed.
    pub(crate) fn take_lost(
        &mut self,
        now: Instant,
        policy: &RepairPolicy,
        max_count: usize,
        max_bytes: usize,
    ) -> Option<(SeqNum, SeqNum)> {
        let overflow = self.buffer.len() > max_count || self.buffer_bytes > max_bytes;
        let expired = self.give_up_at(policy).is_some_and(|t| now >= t);
        if !(overflow || expired) {
            return None;
        }
        let (first, hole) = self.holes.pop_first()?;
        if Some(SeqNum(first)) != self.applied.next() {
            // Cannot happen (see the invariant); stay consistent anyway.
            self.holes.insert(first, hole);
            return None;
        }
        self.applied = SeqNum(hole.last);
        Some((SeqNum(first), SeqNum(hole.last)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Delta;

    fn d(seq: u64) -> Delta<'static> {
        Delta {
            seq: SeqNum(seq),
            prev_leaf_seq: SeqNum::NONE,
            creates: true,
            removes: false,
            key: b"k",
            payload: b"",
        }
    }

    fn policy() -> RepairPolicy {
        RepairPolicy {
            nak: true,
            attempts: 2,
            retry: Duration::from_millis(10),
            reorder_timeout: Duration::from_millis(5),
        }
    }

    #[test]
    fn holes_are_naked_then_given_up_in_order() {
        let t0 = Instant::now();
        let p = policy();
        let mut q = Sequencer::new(SeqNum(0), t0);
        assert_eq!(q.admit(t0, &d(1), t0, None).0, Admit::Next);
        q.advance(SeqNum(1));
        assert_eq!(q.admit(t0, &d(4), t0, None).0, Admit::Buffered);
        q.saw_tail(t0, SeqNum(6), t0);
        assert_eq!(q.missing(), 2 + 2, "2..=3 and 5..=6");
        let ranges = q.due_naks(t0, &p, 10);
        assert_eq!(ranges.len(), 2);
        assert_eq!(q.due_naks(t0, &p, 10), vec![], "not again before the retry");
        let t1 = t0 + Duration::from_millis(10);
        assert_eq!(q.due_naks(t1, &p, 1).len(), 1, "at most `max` ranges");
        assert!(
            q.take_lost(t1, &p, 100, 1 << 20).is_none(),
            "5..=6 still has a NAK left"
        );
        // 2..=3 used both NAKs at t0 and t1: given up at t1 + retry.
        let t2 = t1 + Duration::from_millis(10);
        assert_eq!(
            q.take_lost(t2, &p, 100, 1 << 20),
            Some((SeqNum(2), SeqNum(3)))
        );
        assert_eq!(q.pop_next().map(|d| d.seq), Some(SeqNum(4)));
    }

    #[test]
    fn a_retransmission_fills_and_splits_a_hole() {
        let t0 = Instant::now();
        let mut q = Sequencer::new(SeqNum(0), t0);
        q.saw_tail(t0, SeqNum(10), t0);
        let t1 = t0 + Duration::from_millis(3);
        let (admit, filled) = q.admit(t1, &d(5), t1, None);
        assert_eq!(admit, Admit::Buffered);
        assert_eq!(filled.map(|f| f.waited), Some(Duration::from_millis(3)));
        assert_eq!(q.missing(), 9);
        assert_eq!(q.holes.len(), 2, "1..=4 and 6..=10");
        let (admit, filled) = q.admit(t1, &d(1), t1, None);
        assert_eq!(admit, Admit::Next);
        assert!(filled.is_some());
        assert_eq!(q.admit(t1, &d(5), t1, None).0, Admit::Duplicate);
    }

    #[test]
    fn buffered_bytes_count_what_waits_and_return_to_zero() {
        let t0 = Instant::now();
        let mut q = Sequencer::new(SeqNum(0), t0);
        assert_eq!(q.admit(t0, &d(3), t0, None).0, Admit::Buffered);
        let one = q.buffered_bytes();
        assert_eq!(
            one,
            1 + 64,
            "a buffered delta costs its key and payload, and 64"
        );
        assert_eq!(q.admit(t0, &d(2), t0, None).0, Admit::Buffered);
        assert_eq!((q.buffered(), q.buffered_bytes()), (2, 2 * one));
        assert_eq!(q.admit(t0, &d(1), t0, None).0, Admit::Next);
        q.advance(SeqNum(1));
        assert_eq!(q.pop_next().map(|d| d.seq), Some(SeqNum(2)));
        assert_eq!(q.buffered_bytes(), one);
        q.advance(SeqNum(2));
        assert_eq!(q.pop_next().map(|d| d.seq), Some(SeqNum(3)));
        assert_eq!((q.buffered(), q.buffered_bytes()), (0, 0));
    }

    #[test]
    fn a_tail_never_confirmed_by_the_session_is_forgotten() {
        let t0 = Instant::now();
        let settle = Duration::from_millis(20);
        let mut q = Sequencer::new(SeqNum(0), t0);
        q.admit(t0, &d(1), t0, None);
        q.advance(SeqNum(1));
        q.admit(t0, &d(900), t0, None); // forged
        assert!(!q.reanchor(t0 + Duration::from_millis(1), SeqNum(3), settle));
        assert!(q.reanchor(t0 + settle, SeqNum(3), settle));
        assert_eq!(q.known_tail, SeqNum(3));
        assert_eq!((q.buffered(), q.buffered_bytes()), (0, 0));
        assert_eq!(q.missing(), 2, "2..=3 only");
    }

    #[test]
    fn hearing_a_repair_holds_later_naks_back_once() {
        let t0 = Instant::now();
        let p = policy();
        let mut q = Sequencer::new(SeqNum(0), t0);
        q.saw_tail(t0, SeqNum(3), t0);
        let later = t0 + Duration::from_millis(2);
        assert_eq!(
            q.postpone_after(SeqNum(3), later),
            0,
            "1..=3 is before the repair"
        );
        q.admit(t0, &d(5), t0, None);
        q.admit(t0, &d(8), t0, None);
        assert_eq!(
            q.postpone_after(SeqNum(4), t0),
            0,
            "6..=7 falls due then anyway"
        );
        assert_eq!(q.postpone_after(SeqNum(4), later), 1, "6..=7 held back");
        assert_eq!(
            q.postpone_after(SeqNum(4), later + later.duration_since(t0)),
            0
        );
        assert_eq!(q.due_naks(t0, &p, 10).len(), 2, "1..=3 and 4..=4");
        assert_eq!(q.due_naks(later, &p, 10).len(), 1);
    }

    /// A retransmission filling part of a hole puts the rest's next NAK
    /// `progress` after it, but never beyond 16 × `progress` after the hole
    /// was found.
    #[test]
    fn a_repair_in_progress_holds_the_rest_of_its_hole_back_within_a_cap() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let p = policy();
        let mut q = Sequencer::new(SeqNum(0), t0);
        q.saw_tail(t0, SeqNum(40), t0);
        let next_nak = |q: &Sequencer| q.holes.values().map(|h| h.next_nak).min().unwrap();
        assert_eq!(next_nak(&q), t0);
        // Seq 1 repaired at 3 ms: the rest waits 20 ms from then.
        q.admit(
            t0 + ms(3),
            &d(1),
            t0,
            Some(Progress {
                wait: ms(20),
                if_naked: false,
            }),
        );
        q.advance(SeqNum(1));
        assert_eq!(next_nak(&q), t0 + ms(23));
        assert_eq!(q.deadline(&p), Some(t0 + ms(23)));
        // Repairs keep coming: at most 16 × 20 ms after the hole was found.
        for s in 2..=39 {
            q.admit(
                t0 + ms(10 * s),
                &d(s),
                t0,
                Some(Progress {
                    wait: ms(20),
                    if_naked: false,
                }),
            );
            q.advance(SeqNum(s));
            let want = (t0 + ms(10 * s + 20)).min(t0 + ms(320));
            assert_eq!(next_nak(&q), want, "seq {s}");
        }
    }

    /// A late copy of an original delta (`if_naked`) holds back the rest of
    /// its hole only once the hole was NAKed: before that, nothing of it
    /// is in progress.
    #[test]
    fn a_late_copy_holds_back_only_a_naked_hole() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let p = policy(); // retry 10 ms
        let mut q = Sequencer::new(SeqNum(0), t0);
        q.saw_tail(t0, SeqNum(40), t0);
        let next_nak = |q: &Sequencer| q.holes.values().map(|h| h.next_nak).min().unwrap();
        let late = Some(Progress {
            wait: ms(20),
            if_naked: true,
        });
        // Not NAKed yet: the rest of the hole stays due at once.
        q.admit(t0 + ms(3), &d(1), t0, late);
        q.advance(SeqNum(1));
        assert_eq!(next_nak(&q), t0);
        // NAKed at 3 ms (next at 13 ms); a late copy at 5 ms holds the rest
        // until 25 ms.
        assert_eq!(q.due_naks(t0 + ms(3), &p, 10).len(), 1);
        assert_eq!(next_nak(&q), t0 + ms(13));
        q.admit(t0 + ms(5), &d(2), t0, late);
        q.advance(SeqNum(2));
        assert_eq!(next_nak(&q), t0 + ms(25));
    }

    /// The deadline is the next NAK of a hole with attempts left, or the
    /// first hole's giving up: a later hole out of attempts waits for the
    /// holes before it, so it is no deadline.
    #[test]
    fn a_later_hole_out_of_attempts_is_no_deadline() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let p = policy(); // 2 attempts, retry 10 ms
        let mut q = Sequencer::new(SeqNum(0), t0);
        q.saw_tail(t0, SeqNum(3), t0);
        q.admit(t0, &d(4), t0, None);
        q.saw_tail(t0, SeqNum(10), t0);
        // Holes 1..=3 and 5..=10, both NAKed at t0.
        assert_eq!(q.due_naks(t0, &p, 10).len(), 2);
        // Seq 1 repaired at 1 ms, long progress: 2..=3 waits until 101 ms.
        q.admit(
            t0 + ms(1),
            &d(1),
            t0,
            Some(Progress {
                wait: ms(100),
                if_naked: false,
            }),
        );
        q.advance(SeqNum(1));
        // 5..=10 NAKed again at 10 ms: out of attempts, given up at 20 ms
        // once it is first.
        assert_eq!(q.due_naks(t0 + ms(10), &p, 10).len(), 1);
        assert_eq!(q.deadline(&p), Some(t0 + ms(101)));
    }

    /// The first hole is given up at once when the buffer holds more deltas
    /// or more bytes than its bounds; at the bounds it waits for its repair.
    #[test]
    fn an_overflowing_buffer_gives_up_the_first_hole() {
        let t0 = Instant::now();
        let p = policy();
        let two = || {
            let mut q = Sequencer::new(SeqNum(0), t0);
            q.admit(t0, &d(3), t0, None);
            q.admit(t0, &d(4), t0, None);
            assert_eq!((q.buffered(), q.buffered_bytes()), (2, 130));
            q
        };
        assert_eq!(two().take_lost(t0, &p, 2, 130), None);
        let lost = Some((SeqNum(1), SeqNum(2)));
        assert_eq!(two().take_lost(t0, &p, 1, 130), lost);
        assert_eq!(two().take_lost(t0, &p, 2, 129), lost);
    }
}
