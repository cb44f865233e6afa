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

/// A place in a cycle's key order.
#[derive(Clone, Copy, Debug)]
enum At<'a> {
    /// Before every key.
    Start,
    Key(&'a [u8]),
    /// After every key.
    End,
    /// A position not received (or whose key was not kept).
    Unknown,
}

impl At<'_> {
    /// Whether `self` comes strictly before `other` (both known).
    fn before(&self, other: &At<'_>) -> bool {
        match (self, other) {
            (At::Start, At::Key(_) | At::End) | (At::Key(_), At::End) => true,
            (At::Key(a), At::Key(b)) => a < b,
            _ => false,
        }
    }
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

    /// Whether every position within three of `position` has been
    /// received: the links that need its key (those from `position - 2` to
    /// `position + 1`, each needing the keys from one before to two after
    /// it) have all formed or cannot.
    fn settled(&self, position: u32) -> bool {
        let (lo, hi) = Self::reach(position, self.leaf_count);
        (lo..=hi).all(|q| self.is_seen(q))
    }

    /// The positions within three of `position`.
    fn reach(position: u32, leaf_count: u32) -> (u32, u32) {
        (
            position.saturating_sub(3),
            position.saturating_add(3).min(leaf_count - 1),
        )
    }

    /// What is known at `index` of the cycle's key order: -1 is the start
    /// of the key space, `leaf_count` its end, `position` carries `key`.
    fn at<'a>(&'a self, index: i64, position: u32, key: &'a [u8]) -> At<'a> {
        if index < 0 {
            return At::Start;
        }
        if index >= i64::from(self.leaf_count) {
            return At::End;
        }
        let q = u32::try_from(index).unwrap_or(u32::MAX);
        if q == position {
            return At::Key(key);
        }
        if !self.is_seen(q) {
            return At::Unknown;
        }
        self.edges
            .get(&q)
            .map_or(At::Unknown, |k| At::Key(k.as_ref()))
    }

    /// The link between `i` and `i + 1` (`-1` .. `leaf_count - 1`), if it is
    /// proved: the four keys from `i - 1` to `i + 2` (those within the key
    /// space) are known and strictly increasing. Each key of the link is
    /// then in order with both of its neighbours, so a key that is not the
    /// publisher's (a forged or corrupt position) links only if it lies
    /// between its real neighbours, and proves nothing about any other
    /// real key.
    fn link(&self, i: i64, position: u32, key: &[u8]) -> Option<(Lo, Hi)> {
        let n = i64::from(self.leaf_count);
        let (mut prev, mut lo, mut hi) = (None::<At<'_>>, None, None);
        for j in (i - 1).max(-1)..=(i + 2).min(n) {
            let cur = self.at(j, position, key);
            if matches!(cur, At::Unknown) || prev.is_some_and(|p| !p.before(&cur)) {
                return None;
            }
            if let At::Key(k) = cur {
                if j == i {
                    lo = Some(k);
                } else if j == i + 1 {
                    hi = Some(k);
                }
            }
            prev = Some(cur);
        }
        Some((
            lo.map_or(Lo::Start, |k| Lo::Key(k.into())),
            hi.map_or(Hi::End, |k| Hi::Key(k.into())),
        ))
    }

    /// Records position `position` carrying `key`. Returns `None` if the
    /// position is out of range or was already received.
    ///
    /// The interval between the keys at positions `i` and `i + 1` is
    /// verified once the keys from `i - 1` to `i + 2` are known and in
    /// order (the ends of the key space standing in before position 0 and
    /// after the last): every link forms exactly once, when the last of its
    /// four keys arrives, in any order.
    pub(crate) fn mark(&mut self, position: u32, key: &[u8]) -> Option<Marked> {
        if position >= self.leaf_count || self.is_seen(position) {
            return None;
        }
        let mut out = Marked::default();
        let p = i64::from(position);
        let (left, right) = (self.at(p - 1, position, key), self.at(p + 1, position, key));
        for (a, b) in [(left, At::Key(key)), (At::Key(key), right)] {
            if matches!((a, b), (At::Key(_), At::Key(_))) && !a.before(&b) {
                out.disorder = true;
            }
        }
        for i in (p - 2).max(-1)..=(p + 1).min(i64::from(self.leaf_count) - 1) {
            if let Some(l) = self.link(i, position, key) {
                out.links.push(l);
            }
        }
        let (word, bit) = ((position / 64) as usize, position % 64);
        if let Some(w) = self.seen.get_mut(word) {
            *w |= 1 << bit;
        }
        self.seen_count += 1;
        // Keep keys only while a link may still need them.
        let (lo, hi) = Self::reach(position, self.leaf_count);
        for q in lo..=hi {
            if q != position && self.edges.contains_key(&q) && self.settled(q) {
                if let Some(k) = self.edges.remove(&q) {
                    self.edge_bytes -= k.len();
                }
            }
        }
        if !self.settled(position) && self.edge_bytes + key.len() <= self.max_edge_bytes {
            self.edge_bytes += key.len();
            self.edges.insert(position, key.into());
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
        assert_eq!(m.links.len(), 1, "start..a; a..b waits for c");
        assert!(c.mark(0, b"a").is_none(), "duplicates add nothing");
        assert!(c.mark(4, b"e").is_none(), "out of range");
        let m = c.mark(2, b"c").unwrap();
        assert_eq!(m.links.len(), 4, "a..b, b..c, c..d and d..end");
        assert_eq!(c.seen(), 4);
        assert!(c.edges.is_empty(), "no key kept once settled");
    }

    /// Every link of a cycle forms exactly once whatever the order its
    /// positions arrive in: together they cover the key space.
    #[test]
    fn every_link_forms_once_in_any_order() {
        let keys: Vec<[u8; 1]> = (0..7u8).map(|k| [b'a' + k]).collect();
        for order in [
            [0, 1, 2, 3, 4, 5, 6],
            [6, 5, 4, 3, 2, 1, 0],
            [3, 0, 6, 1, 5, 2, 4],
            [1, 3, 5, 0, 2, 4, 6],
        ] {
            let mut c = CycleTracker::new(CycleId(1), SeqNum(5), 7, 1 << 20);
            let mut links = Vec::new();
            for p in order {
                links.extend(c.mark(p, &keys[p as usize]).unwrap().links);
            }
            links.sort();
            let mut want = vec![(Lo::Start, Hi::Key(keys[0].into()))];
            for w in keys.windows(2) {
                want.push((Lo::Key(w[0].into()), Hi::Key(w[1].into())));
            }
            want.push((Lo::Key(keys[6].into()), Hi::End));
            want.sort();
            assert_eq!(links, want, "{order:?}");
            assert!(c.edges.is_empty());
        }
    }

    /// A position carrying a key that is not between its neighbours'
    /// proves nothing about any other key: no interval links across a
    /// real key.
    #[test]
    fn a_key_out_of_place_links_nothing_across_real_keys() {
        // Real keys b c d e f g; position 2 carries z (after every real
        // key, in order with c) or a (before every one).
        for forged in [b"z", b"a"] {
            let real = [b"b", b"c", b"d", b"e", b"f", b"g"];
            let mut c = CycleTracker::new(CycleId(1), SeqNum(5), 6, 1 << 20);
            let mut links = Vec::new();
            for p in 0..6u32 {
                let key: &[u8] = if p == 2 { forged } else { real[p as usize] };
                links.extend(c.mark(p, key).unwrap().links);
            }
            let inside = |(lo, hi): &(Lo, Hi), k: &[u8]| {
                let above = match lo {
                    Lo::Start => true,
                    Lo::Key(l) => l.as_ref() < k,
                };
                let below = match hi {
                    Hi::End => true,
                    Hi::Key(h) => k < h.as_ref(),
                };
                above && below
            };
            for k in real {
                assert!(
                    !links.iter().any(|l| inside(l, k)),
                    "{forged:?}: {k:?} inside {links:?}"
                );
            }
        }
    }

    #[test]
    fn keys_are_kept_for_links_within_the_byte_bound() {
        // 7 bytes of keys may wait for the positions within three.
        let mut c = CycleTracker::new(CycleId(1), SeqNum(5), 9, 7);
        assert!(c.mark(1, b"bb").unwrap().links.is_empty());
        assert!(c.mark(3, b"dddd").unwrap().links.is_empty());
        assert_eq!(c.mark(0, b"a").unwrap().links.len(), 1, "start..a");
        assert_eq!(c.edge_bytes, 7);
        assert!(c.mark(5, b"ff").unwrap().links.is_empty());
        assert_eq!((c.edges.len(), c.edge_bytes), (3, 7), "ff not kept");
        // a..bb and bb..cc; "a" is no longer needed, "cc" does not fit.
        assert_eq!(c.mark(2, b"cc").unwrap().links.len(), 2);
        assert_eq!((c.edges.len(), c.edge_bytes), (2, 6));
        // Without cc and ff, nothing links around ee.
        assert!(c.mark(4, b"ee").unwrap().links.is_empty());
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
        // The same key twice is out of order too, on either side.
        for (first, second) in [(0, 1), (1, 0), (1, 2), (2, 1)] {
            let mut c = CycleTracker::new(CycleId(1), SeqNum(5), 3, 1 << 20);
            let others = [0, 1, 2]
                .into_iter()
                .filter(|p| *p != first && *p != second);
            let mut links = Vec::new();
            for p in others {
                links.extend(c.mark(p, if p == 0 { b"a" } else { b"z" }).unwrap().links);
            }
            links.extend(c.mark(first, b"m").unwrap().links);
            let m = c.mark(second, b"m").unwrap();
            assert!(m.disorder, "{first} {second}");
            links.extend(m.links);
            assert!(
                !links
                    .iter()
                    .any(|(lo, hi)| matches!((lo, hi), (Lo::Key(l), Hi::Key(h)) if l == h)),
                "{links:?}"
            );
            assert!(links.len() <= 2, "{first} {second}: {links:?}");
        }
    }
}
