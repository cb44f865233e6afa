//! Tracking which positions of a snapshot cycle have been received.

use crate::{CycleId, SeqNum};

/// One cycle being heard, from its CycleBegin.
#[derive(Debug)]
pub(crate) struct CycleTracker {
    pub(crate) id: CycleId,
    pub(crate) start_seq: SeqNum,
    pub(crate) leaf_count: u32,
    seen: Vec<u64>,
    seen_count: u32,
}

impl CycleTracker {
    pub(crate) fn new(id: CycleId, start_seq: SeqNum, leaf_count: u32) -> Self {
        let words = (leaf_count as usize).div_ceil(64);
        Self {
            id,
            start_seq,
            leaf_count,
            seen: vec![0; words],
            seen_count: 0,
        }
    }

    /// Marks a position; returns false if it is out of range.
    pub(crate) fn mark(&mut self, position: u32) -> bool {
        if position >= self.leaf_count {
            return false;
        }
        let (word, bit) = ((position / 64) as usize, position % 64);
        if let Some(w) = self.seen.get_mut(word) {
            if *w & (1 << bit) == 0 {
                *w |= 1 << bit;
                self.seen_count += 1;
            }
        }
        true
    }

    pub(crate) fn seen(&self) -> u32 {
        self.seen_count
    }

    pub(crate) fn is_complete(&self) -> bool {
        self.seen_count == self.leaf_count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_position_once() {
        let mut c = CycleTracker::new(CycleId(1), SeqNum(5), 130);
        assert!(!c.is_complete());
        for p in (0..130).chain(0..10) {
            assert!(c.mark(p));
        }
        assert!(!c.mark(130));
        assert_eq!(c.seen(), 130);
        assert!(c.is_complete());
        assert!(CycleTracker::new(CycleId(2), SeqNum(0), 0).is_complete());
    }
}
