//! Answering NAKs: a bounded queue of what was asked for, coalesced, and a
//! byte budget that paces repairs so that no NAK storm can crowd out live
//! traffic or make the publisher send more than its repair rate.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// Most disjoint sequence ranges queued; further ranges are dropped (the
/// subscribers asking will fall back to snapshot repair).
pub(crate) const MAX_QUEUED_RANGES: usize = 1024;
/// Most fragment ranges queued.
pub(crate) const MAX_QUEUED_FRAGMENTS: usize = 4096;

/// What to send next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Retransmit delta `seq`.
    Seq(u64),
    /// Resend bytes `start..end` of fragmented message `frag_id`.
    Fragment { frag_id: u32, start: u32, end: u32 },
}

#[derive(Debug)]
pub(crate) struct RepairQueue {
    /// Disjoint, non-adjacent ranges of `seq`: first -> last (inclusive).
    seqs: BTreeMap<u64, u64>,
    frags: VecDeque<(u32, u32, u32)>,
    /// Budget in bytes, refilled at `rate` bytes per second.
    tokens: f64,
    tokens_at: Instant,
    rate: f64,
    burst: f64,
}

impl RepairQueue {
    pub(crate) fn new(now: Instant, rate_bytes: u64, max_datagram: usize) -> Self {
        let rate = rate_bytes as f64;
        let burst = (rate * 0.010).max(2.0 * max_datagram as f64);
        Self {
            seqs: BTreeMap::new(),
            frags: VecDeque::new(),
            tokens: burst,
            tokens_at: now,
            rate,
            burst,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.seqs.is_empty() && self.frags.is_empty()
    }

    /// Queues `first..=last`, merged with what is queued. Returns false if
    /// it could not be queued (too many disjoint ranges).
    pub(crate) fn add_seqs(&mut self, first: u64, last: u64) -> bool {
        let (mut lo, mut hi) = (first, last);
        let touches_before = self
            .seqs
            .range(..=lo)
            .next_back()
            .filter(|(_, &l)| l.saturating_add(1) >= lo)
            .map(|(&f, _)| f);
        let touches_after = self
            .seqs
            .range(lo..)
            .next()
            .is_some_and(|(&f, _)| f <= hi.saturating_add(1));
        if touches_before.is_none() && !touches_after && self.seqs.len() >= MAX_QUEUED_RANGES {
            return false;
        }
        // Ranges that overlap or touch [lo, hi] merge into it.
        if let Some(f) = touches_before {
            if let Some(l) = self.seqs.remove(&f) {
                lo = f;
                hi = hi.max(l);
            }
        }
        while let Some((&f, &l)) = self
            .seqs
            .range(lo..)
            .next()
            .filter(|(&f, _)| f <= hi.saturating_add(1))
        {
            self.seqs.remove(&f);
            hi = hi.max(l);
        }
        self.seqs.insert(lo, hi);
        true
    }

    /// Queues bytes `start..end` of `frag_id`, merged with a queued range of
    /// the same message that it overlaps or touches. False when the queue
    /// is full.
    pub(crate) fn add_fragment(&mut self, frag_id: u32, start: u32, end: u32) -> bool {
        if let Some(r) = self
            .frags
            .iter_mut()
            .find(|r| r.0 == frag_id && r.1 <= end && start <= r.2)
        {
            r.1 = r.1.min(start);
            r.2 = r.2.max(end);
            return true;
        }
        if self.frags.len() >= MAX_QUEUED_FRAGMENTS {
            return false;
        }
        self.frags.push_back((frag_id, start, end));
        true
    }

    /// Puts the rest of a fragment range back at the front of the queue.
    pub(crate) fn push_front_fragment(&mut self, frag_id: u32, start: u32, end: u32) {
        self.frags.push_front((frag_id, start, end));
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.tokens_at).as_secs_f64();
        self.tokens_at = self.tokens_at.max(now);
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
    }

    /// Whether the budget allows sending at `now`.
    pub(crate) fn has_budget(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens > 0.0
    }

    /// Spends `bytes` of the budget.
    pub(crate) fn spend(&mut self, bytes: usize) {
        self.tokens -= bytes as f64;
    }

    /// When the budget allows sending again, if anything is queued.
    pub(crate) fn ready_at(&self) -> Option<Instant> {
        if self.is_empty() {
            return None;
        }
        if self.tokens > 0.0 {
            return Some(self.tokens_at);
        }
        let secs = (-self.tokens + 1.0) / self.rate;
        Some(self.tokens_at + Duration::from_secs_f64(secs.min(3600.0)))
    }

    /// Takes the next thing to send: fragments first (they complete a
    /// message someone holds most of), then the lowest sequence number.
    pub(crate) fn pop(&mut self) -> Option<Next> {
        if let Some((frag_id, start, end)) = self.frags.pop_front() {
            return Some(Next::Fragment {
                frag_id,
                start,
                end,
            });
        }
        let e = self.seqs.first_entry()?;
        let first = *e.key();
        let last = *e.get();
        if first == last {
            e.remove();
        } else {
            e.remove();
            self.seqs.insert(first + 1, last);
        }
        Some(Next::Seq(first))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_merge_and_come_out_in_order_fragments_first() {
        let now = Instant::now();
        let mut q = RepairQueue::new(now, 1_000_000, 1452);
        assert!(q.add_seqs(5, 7));
        assert!(q.add_seqs(8, 9), "adjacent merges");
        assert!(q.add_seqs(6, 6), "inside merges");
        assert!(q.add_seqs(2, 2));
        assert!(q.add_fragment(3, 0, 100));
        assert_eq!(q.seqs.len(), 2);
        assert_eq!(
            q.pop(),
            Some(Next::Fragment {
                frag_id: 3,
                start: 0,
                end: 100
            })
        );
        let seqs: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        let want: Vec<_> = [2, 5, 6, 7, 8, 9].into_iter().map(Next::Seq).collect();
        assert_eq!(seqs, want);
        assert!(q.is_empty());
    }

    #[test]
    fn the_number_of_disjoint_ranges_is_bounded() {
        let mut q = RepairQueue::new(Instant::now(), 1_000_000, 1452);
        for i in 0..MAX_QUEUED_RANGES as u64 {
            assert!(q.add_seqs(i * 10, i * 10));
        }
        assert!(!q.add_seqs(1_000_000, 1_000_001), "a new range when full");
        assert!(q.add_seqs(35, 39), "one that touches only the next");
        assert!(q.add_seqs(51, 55), "one that touches only the previous");
        assert_eq!(q.seqs.len(), MAX_QUEUED_RANGES);
        assert!(q.add_seqs(11, 19), "a range that merges two is still taken");
        assert_eq!(q.seqs.len(), MAX_QUEUED_RANGES - 1);
    }

    #[test]
    fn fragment_ranges_merge_only_within_one_message() {
        let mut q = RepairQueue::new(Instant::now(), 1_000_000, 1452);
        assert!(q.add_fragment(1, 10, 20));
        assert!(q.add_fragment(2, 0, 5), "another message, before");
        assert!(q.add_fragment(3, 25, 30), "another message, after");
        assert!(q.add_fragment(1, 20, 25), "touching merges");
        assert!(q.add_fragment(1, 0, 5), "disjoint, same message");
        let frags: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        let f = |frag_id, start, end| Next::Fragment {
            frag_id,
            start,
            end,
        };
        assert_eq!(
            frags,
            vec![f(1, 10, 25), f(2, 0, 5), f(3, 25, 30), f(1, 0, 5)]
        );
    }

    #[test]
    fn the_budget_paces_repairs() {
        let t0 = Instant::now();
        let mut q = RepairQueue::new(t0, 100_000, 1000);
        q.add_seqs(1, 1000);
        let mut sent = 0;
        while q.has_budget(t0) {
            q.spend(1000);
            sent += 1000;
        }
        // The burst allows 10 ms worth or two datagrams, whichever is more.
        assert!(sent <= 2000 + 1000, "sent {sent}");
        let at = q.ready_at().unwrap();
        assert!(at > t0);
        assert!(q.has_budget(at + Duration::from_micros(1)));
    }
}
