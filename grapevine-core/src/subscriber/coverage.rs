//! Which parts of the key space have been verified by snapshot cycles.
//!
//! A cycle sends the publisher's leaves in increasing key order, so two
//! consecutive positions `p` and `p + 1` of one cycle name two keys with no
//! other leaf between them at the cycle's start. Receiving both verifies the
//! closed interval between the two keys "as of" the cycle's `start_seq`.
//! Intervals verified by different cycles join up, so a subscriber that loses
//! some snapshots in one cycle fills the holes from the next: it never needs
//! one cycle without loss.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::SeqNum;

/// The lower end of an interval.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Lo {
    /// Before every key.
    Start,
    /// From this key (inclusive).
    Key(Box<[u8]>),
}

/// The upper end of an interval.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Hi {
    /// Up to this key (inclusive).
    Key(Box<[u8]>),
    /// After every key.
    End,
}

/// `hi >= lo`: the intervals `[.., hi]` and `[lo, ..]` meet or overlap.
fn meets(hi: &Hi, lo: &Lo) -> bool {
    match (hi, lo) {
        (Hi::End, _) | (_, Lo::Start) => true,
        (Hi::Key(h), Lo::Key(l)) => h >= l,
    }
}

/// Disjoint verified intervals, keyed by their lower end.
#[derive(Debug, Default)]
pub(crate) struct Coverage {
    intervals: BTreeMap<Lo, (Hi, SeqNum)>,
}

impl Coverage {
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.intervals.len()
    }

    /// Whether one interval covers the whole key space.
    pub(crate) fn is_full(&self) -> bool {
        matches!(
            self.intervals.first_key_value(),
            Some((Lo::Start, (Hi::End, _)))
        )
    }

    /// Forgets intervals verified before `seq`.
    pub(crate) fn drop_older_than(&mut self, seq: SeqNum) {
        self.intervals.retain(|_, (_, as_of)| *as_of >= seq);
    }

    /// Adds `[lo, hi]` verified as of `as_of`, merging it with every interval
    /// it meets. A merged interval keeps the oldest `as_of` of its parts.
    pub(crate) fn insert(&mut self, lo: Lo, hi: Hi, as_of: SeqNum) {
        let (mut lo, mut hi, mut as_of) = (lo, hi, as_of);
        // The interval starting at or before `lo` may reach it.
        let before = self
            .intervals
            .range((Bound::Unbounded, Bound::Included(&lo)))
            .next_back()
            .filter(|(_, (h, _))| meets(h, &lo))
            .map(|(l, _)| l.clone());
        if let Some(l) = before {
            if let Some((h, a)) = self.intervals.remove(&l) {
                lo = l;
                hi = hi.max(h);
                as_of = as_of.min(a);
            }
        }
        // Intervals starting inside [lo, hi] are absorbed.
        loop {
            let next = self
                .intervals
                .range((Bound::Included(&lo), Bound::Unbounded))
                .next()
                .filter(|(l, _)| meets(&hi, l))
                .map(|(l, _)| l.clone());
            let Some(l) = next else { break };
            if let Some((h, a)) = self.intervals.remove(&l) {
                hi = hi.max(h);
                as_of = as_of.min(a);
            }
        }
        self.intervals.insert(lo, (hi, as_of));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(b: u8) -> Box<[u8]> {
        vec![b].into()
    }

    #[test]
    fn links_from_two_lossy_cycles_join_up() {
        let mut c = Coverage::default();
        // Cycle A saw keys 1,2,3 then lost 4; saw 5 (last).
        c.insert(Lo::Start, Hi::Key(k(1)), SeqNum(10));
        c.insert(Lo::Key(k(1)), Hi::Key(k(2)), SeqNum(10));
        c.insert(Lo::Key(k(2)), Hi::Key(k(3)), SeqNum(10));
        c.insert(Lo::Key(k(5)), Hi::End, SeqNum(10));
        assert!(!c.is_full());
        assert_eq!(c.len(), 2);
        // Cycle B fills [3, 5].
        c.insert(Lo::Key(k(3)), Hi::Key(k(4)), SeqNum(20));
        assert!(!c.is_full());
        c.insert(Lo::Key(k(4)), Hi::Key(k(5)), SeqNum(20));
        assert!(c.is_full());
        assert_eq!(c.intervals.first_key_value().unwrap().1 .1, SeqNum(10));
        // A loss after 10 invalidates what was verified as of 10.
        c.drop_older_than(SeqNum(11));
        assert!(!c.is_full());
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn overlapping_and_nested_intervals_merge() {
        let mut c = Coverage::default();
        c.insert(Lo::Key(k(2)), Hi::Key(k(6)), SeqNum(1));
        c.insert(Lo::Key(k(3)), Hi::Key(k(4)), SeqNum(2));
        assert_eq!(c.len(), 1);
        c.insert(Lo::Key(k(8)), Hi::Key(k(9)), SeqNum(2));
        assert_eq!(c.len(), 2);
        c.insert(Lo::Key(k(5)), Hi::Key(k(8)), SeqNum(3));
        assert_eq!(c.len(), 1);
        c.insert(Lo::Start, Hi::Key(k(2)), SeqNum(3));
        c.insert(Lo::Key(k(9)), Hi::End, SeqNum(3));
        assert!(c.is_full());
        c.insert(Lo::Start, Hi::End, SeqNum(4));
        assert_eq!(c.len(), 1);
    }
}
