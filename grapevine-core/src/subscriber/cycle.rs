//! The snapshot cycle being heard: which positions arrived, and the links
//! between consecutive positions that verify key-space intervals.

use std::collections::HashMap;

use super::coverage::{Hi, Lo};
use crate::{CycleId, SeqNum};

/// One cycle being heard, from its CycleBegin.
#[derive(Debug)]
pub(crate) struct CycleTracker {
    pub(crate) id: CycleId,
    pub(crate) start_seq: SeqNum,
    pub(crate) leaf_count: u32,
    seen: Vec<u64>,
    seen_count: u32,
    /// Keys of received positions with a neighbour not received yet.
    edges: HashMap<u32, Box<[u8]>>,
    /// Bytes of keys in `edges`, and the most allowed.
    edge_bytes: usize,
    max_edge_bytes: usize,
}

/// What receiving one position established.
#[derive(Debug, Default)]
pub(crate) struct Marked {
    /// Intervals now verified: between this key and its received neighbours
    /// (or the ends of the key space).
    pub(crate) links: Vec<(Lo, Hi)>,
    /// Neighbouring keys out of order: the publisher broke the key order.
    pub(crate) disorder: bool,
}

impl CycleTracker {
    /// Tracks a cycle; keys kept for links use at most `max_edge_bytes`
    /// (beyond that, links are not formed: sync takes longer, nothing
    /// breaks).
    pub(crate) fn new(
        id: CycleId,
        start_seq: SeqNum,
        leaf_count: u32,
        max_edge_bytes: usize,
    ) -> Self {
        let words = (leaf_count as usize).div_ceil(64);
        Self {
            id,
            start_seq,
            leaf_count,
            seen: vec![0; words],
            seen_count: 0,
            edges: HashMap::new(),
            edge_bytes: 0,
            max_edge_bytes,
        }
    }

    fn is_seen(&self, position: u32) -> bool {
        let (word, bit) = ((position / 64) as usize, position % 64);
        self.seen.get(word).is_some_and(|w| w & (1 << bit) != 0)
    }

    /// Whether both neighbours of `position` have been received.
    fn settled(&self, position: u32) -> bool {
        (position == 0 || self.is_seen(position - 1))
            && (position + 1 >= self.leaf_count || self.is_seen(position + 1))
    }

    /// Records position `position` carrying `key`. Returns `None` if the
    /// position is out of range or was already received.
    pub(crate) fn mark(&mut self, position: u32, key: &[u8]) -> Option<Marked> {
        if position >= self.leaf_count || self.is_seen(position) {
            return None;
        }
        let (word, bit) = ((position / 64) as usize, position % 64);
        if let Some(w) = self.seen.get_mut(word) {
            *w |= 1 << bit;
        }
        self.seen_count += 1;
        let mut out = Marked::default();
        let last = self.leaf_count - 1;
        // Left link. The interval before the first key is proved only with
        // its right neighbour in order (or alone in the cycle): one forged
        // position 0 cannot verify "nothing before my key" by itself.
        if position == 0 {
            if last == 0 {
                out.links.push((Lo::Start, Hi::Key(key.into())));
            } else if let Some(right) = self.edges.get(&1) {
                if key < right.as_ref() {
                    out.links.push((Lo::Start, Hi::Key(key.into())));
                }
            }
        } else if let Some(left) = self.edges.get(&(position - 1)) {
            if left.as_ref() < key {
                out.links.push((Lo::Key(left.clone()), Hi::Key(key.into())));
                if position - 1 == 0 {
                    // Position 0 waited for this neighbour.
                    out.links.push((Lo::Start, Hi::Key(left.clone())));
                }
            } else {
                out.disorder = true;
            }
        }
        // Right link, likewise for the interval after the last key.
        if position == last {
            if last == 0 {
                out.links.push((Lo::Key(key.into()), Hi::End));
            } else if let Some(left) = self.edges.get(&(position - 1)) {
                if left.as_ref() < key {
                    out.links.push((Lo::Key(key.into()), Hi::End));
                }
            }
        } else if let Some(right) = self.edges.get(&(position + 1)) {
            if key < right.as_ref() {
                out.links
                    .push((Lo::Key(key.into()), Hi::Key(right.clone())));
                if position + 1 == last {
                    // The last position waited for this neighbour.
                    out.links.push((Lo::Key(right.clone()), Hi::End));
                }
            } else {
                out.disorder = true;
            }
        }
        // Keep keys only while a neighbour may still need them.
        if !self.settled(position) && self.edge_bytes + key.len() <= self.max_edge_bytes {
            self.edge_bytes += key.len();
            self.edges.insert(position, key.into());
        }
        for n in [position.checked_sub(1), position.checked_add(1)]
            .into_iter()
            .flatten()
        {
            if self.is_seen(n) && self.settled(n) {
                if let Some(k) = self.edges.remove(&n) {
                    self.edge_bytes -= k.len();
                }
            }
        }
        Some(out)
    }

    pub(crate) fn seen(&self) -> u32 {
        self.seen_count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_form_between_received_neighbours_in_any_order() {
        let mut c = CycleTracker::new(CycleId(1), SeqNum(5), 4, 1 << 20);
        let m = c.mark(1, b"b").unwrap();
        assert!(m.links.is_empty());
        let m = c.mark(3, b"d").unwrap();
        assert!(m.links.is_empty(), "the last key waits for its neighbour");
        let m = c.mark(0, b"a").unwrap();
        assert_eq!(m.links.len(), 2, "start..a and a..b");
        assert!(c.mark(0, b"a").is_none(), "duplicates add nothing");
        assert!(c.mark(4, b"e").is_none(), "out of range");
        let m = c.mark(2, b"c").unwrap();
        assert_eq!(m.links.len(), 3, "b..c, c..d and d..end");
        assert_eq!(c.seen(), 4);
        assert!(c.edges.is_empty(), "no key kept once settled");
    }

    #[test]
    fn keys_are_kept_for_links_within_the_byte_bound() {
        // 6 bytes of keys may wait for their neighbours: "bb" and "dddd"
        // fit exactly, "ff" no longer does.
        let mut c = CycleTracker::new(CycleId(1), SeqNum(5), 7, 6);
        assert!(c.mark(1, b"bb").unwrap().links.is_empty());
        assert!(c.mark(3, b"dddd").unwrap().links.is_empty());
        assert_eq!(c.edge_bytes, 6);
        assert!(c.mark(5, b"ff").unwrap().links.is_empty());
        assert_eq!((c.edges.len(), c.edge_bytes), (2, 6), "not kept");
        // Neighbours of kept keys link; of the dropped one, they cannot
        // (and the last position proves nothing without its neighbour).
        assert_eq!(c.mark(2, b"cc").unwrap().links.len(), 2, "bb..cc..dddd");
        assert!(c.mark(6, b"gg").unwrap().links.is_empty());
    }

    #[test]
    fn an_edge_position_alone_verifies_nothing() {
        // A forged last position with a key below every real key must not
        // prove "nothing after it".
        let mut c = CycleTracker::new(CycleId(1), SeqNum(5), 3, 1 << 20);
        let m = c.mark(2, b"a").unwrap();
        assert!(m.links.is_empty());
        let m = c.mark(1, b"m").unwrap();
        assert!(m.disorder);
        assert!(m.links.is_empty(), "{:?}", m.links);
        // A single-leaf cycle proves both ends at once.
        let mut one = CycleTracker::new(CycleId(2), SeqNum(5), 1, 1 << 20);
        assert_eq!(one.mark(0, b"k").unwrap().links.len(), 2);
    }

    #[test]
    fn keys_out_of_order_are_reported_not_linked() {
        let mut c = CycleTracker::new(CycleId(1), SeqNum(5), 3, 1 << 20);
        c.mark(1, b"m").unwrap();
        let m = c.mark(2, b"a").unwrap();
        assert!(m.disorder);
        assert!(m.links.is_empty(), "{:?}", m.links);
    }
}
