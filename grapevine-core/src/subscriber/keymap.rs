//! [`KeyMap`]: an ordered map from byte-string keys to small values, built
//! to hold a million leaves in little more than their key bytes.
//!
//! A `BTreeMap<Box<[u8]>, V>` costs a heap allocation per key (32 bytes for
//! a 4-byte key) and, filled in key order as a snapshot cycle fills it,
//! leaves its nodes about half full: some 100 bytes per leaf for a 4-byte
//! key and a 24-byte value. Here the entries live in sorted chunks of at
//! most [`CHUNK`] entries and [`CHUNK_BYTES`] key bytes: each chunk keeps
//! its keys back to back in one buffer, their end offsets (16 bits), and the
//! values. A chunk that grows past either bound splits in two, except when the entry went to the very end of
//! the map (in-order filling), where the new entry starts a chunk of its
//! own and the full one stays full. A chunk that shrinks below a quarter
//! merges with a neighbour when both fit one. Lookups are two binary
//! searches (chunks by first key, then within the chunk); an insertion or
//! removal moves at most one chunk's entries.

use std::cmp::Ordering;
use std::ops::Bound;

/// Most entries per chunk.
pub(crate) const CHUNK: usize = 128;
/// Most key bytes per chunk: end offsets fit 16 bits. A key is at most
/// 65,535 bytes (PROTOCOL.md §5), so any one key fits a chunk.
pub(crate) const CHUNK_BYTES: usize = u16::MAX as usize;

/// The order of keys: bytewise, a prefix before what extends it, as
/// `[u8]::cmp`; but the first 8 bytes are compared as one integer, so that
/// the short keys of most states never reach `memcmp`.
#[inline]
fn cmp_keys(a: &[u8], b: &[u8]) -> Ordering {
    #[inline]
    fn head(k: &[u8]) -> u64 {
        if let Some(h) = k.first_chunk::<8>() {
            return u64::from_be_bytes(*h);
        }
        let mut v = 0u64;
        for (i, &b) in k.iter().enumerate() {
            v |= u64::from(b) << (56 - 8 * i);
        }
        v
    }
    // Equal heads: the bytes after the eighth decide; if those are equal
    // too, the shorter key is a prefix of the longer. Keys of at most 8
    // bytes (whose zero padding made the heads equal) are decided by their
    // lengths without a call to `memcmp`.
    match head(a).cmp(&head(b)) {
        Ordering::Equal => match (a.get(8..), b.get(8..)) {
            (Some(x @ [_, ..]), Some(y @ [_, ..])) => x.cmp(y),
            _ => a.len().cmp(&b.len()),
        },
        o => o,
    }
}

#[derive(Debug, Clone)]
struct Chunk<V> {
    /// The keys, back to back, in increasing order.
    bytes: Vec<u8>,
    /// End offset in `bytes` of each key (a key starts where the previous
    /// one ends).
    ends: Vec<u16>,
    vals: Vec<V>,
}

impl<V: Copy> Chunk<V> {
    fn with_capacity(n: usize) -> Self {
        Self {
            bytes: Vec::new(),
            ends: Vec::with_capacity(n),
            vals: Vec::with_capacity(n),
        }
    }

    fn len(&self) -> usize {
        self.vals.len()
    }

    fn span(&self, i: usize) -> (usize, usize) {
        let start = match i.checked_sub(1) {
            Some(p) => self.ends.get(p).map_or(0, |&e| e as usize),
            None => 0,
        };
        let end = self.ends.get(i).map_or(start, |&e| e as usize);
        (start, end)
    }

    fn key(&self, i: usize) -> &[u8] {
        let (start, end) = self.span(i);
        self.bytes.get(start..end).unwrap_or_default()
    }

    /// Where `key` is (`Ok`) or would go (`Err`).
    fn search(&self, key: &[u8]) -> Result<usize, usize> {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match cmp_keys(self.key(mid), key) {
                Ordering::Less => lo = mid + 1,
                Ordering::Greater => hi = mid,
                Ordering::Equal => return Ok(mid),
            }
        }
        Err(lo)
    }

    fn insert_at(&mut self, i: usize, key: &[u8], v: V) {
        let (start, _) = self.span(i);
        self.bytes.splice(start..start, key.iter().copied());
        // Callers split a chunk before its bytes pass `CHUNK_BYTES`.
        let grow = key.len() as u16;
        for e in self.ends.iter_mut().skip(i) {
            *e += grow;
        }
        self.ends.insert(i, (start + key.len()) as u16);
        self.vals.insert(i, v);
    }

    fn remove_at(&mut self, i: usize) -> V {
        let (start, end) = self.span(i);
        self.bytes.drain(start..end);
        let shrink = (end - start) as u16;
        self.ends.remove(i);
        for e in self.ends.iter_mut().skip(i) {
            *e -= shrink;
        }
        self.vals.remove(i)
    }

    /// Moves the entries from `at` on into a new chunk.
    fn split_off(&mut self, at: usize) -> Self {
        let (cut, _) = self.span(at);
        let mut right = Self::with_capacity(CHUNK);
        right.bytes = self.bytes.split_off(cut);
        right.ends = self.ends.split_off(at);
        for e in &mut right.ends {
            *e -= cut as u16;
        }
        right.vals = self.vals.split_off(at);
        self.bytes.shrink_to_fit();
        right
    }

    /// Appends all of `other`.
    fn append(&mut self, other: Self) {
        let base = self.bytes.len() as u16;
        self.bytes.extend_from_slice(&other.bytes);
        self.ends.extend(other.ends.iter().map(|e| e + base));
        self.vals.extend_from_slice(&other.vals);
    }

    #[cfg(test)]
    fn heap_bytes(&self) -> usize {
        self.bytes.capacity()
            + self.ends.capacity() * std::mem::size_of::<u16>()
            + self.vals.capacity() * std::mem::size_of::<V>()
    }
}

/// Where an entry lies in a [`KeyMap`]: found once, to read and then
/// update an entry without a second search.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pos {
    chunk: usize,
    index: usize,
}

/// An ordered map of byte-string keys to `V`: see the [module docs](self).
#[derive(Debug, Clone)]
pub(crate) struct KeyMap<V> {
    chunks: Vec<Chunk<V>>,
    len: usize,
}

impl<V> Default for KeyMap<V> {
    fn default() -> Self {
        Self {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<V: Copy> KeyMap<V> {
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The chunk that holds `key` or where it would go: the last one whose
    /// first key is not greater than `key` (the first chunk if none).
    fn chunk_for(&self, key: &[u8]) -> usize {
        self.chunks
            .partition_point(|c| cmp_keys(c.key(0), key) != Ordering::Greater)
            .saturating_sub(1)
    }

    fn find(&self, key: &[u8]) -> Option<(usize, usize)> {
        let c = self.chunk_for(key);
        let i = self.chunks.get(c)?.search(key).ok()?;
        Some((c, i))
    }

    /// Where `key`'s entry is, if it has one: valid until the map next
    /// changes (an insertion or removal may move entries).
    pub(crate) fn position(&self, key: &[u8]) -> Option<Pos> {
        self.find(key).map(|(chunk, index)| Pos { chunk, index })
    }

    /// The value at `pos` (see [`KeyMap::position`]).
    pub(crate) fn get_at(&self, pos: Pos) -> Option<&V> {
        self.chunks.get(pos.chunk)?.vals.get(pos.index)
    }

    /// The value at `pos`, mutably (see [`KeyMap::position`]).
    pub(crate) fn get_at_mut(&mut self, pos: Pos) -> Option<&mut V> {
        self.chunks.get_mut(pos.chunk)?.vals.get_mut(pos.index)
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<&V> {
        let (c, i) = self.find(key)?;
        self.chunks.get(c)?.vals.get(i)
    }

    #[cfg(test)]
    pub(crate) fn get_mut(&mut self, key: &[u8]) -> Option<&mut V> {
        let (c, i) = self.find(key)?;
        self.chunks.get_mut(c)?.vals.get_mut(i)
    }

    pub(crate) fn contains_key(&self, key: &[u8]) -> bool {
        self.find(key).is_some()
    }

    /// Inserts or replaces; returns the value replaced.
    pub(crate) fn insert(&mut self, key: &[u8], v: V) -> Option<V> {
        let c = self.chunk_for(key);
        let last = c + 1 == self.chunks.len();
        let Some(chunk) = self.chunks.get_mut(c) else {
            let mut first = Chunk::with_capacity(CHUNK);
            first.insert_at(0, key, v);
            self.chunks.push(first);
            self.len = 1;
            return None;
        };
        let i = match chunk.search(key) {
            Ok(i) => {
                let slot = chunk.vals.get_mut(i)?;
                return Some(std::mem::replace(slot, v));
            }
            Err(i) => i,
        };
        self.len += 1;
        // (A key whose bytes do not fit goes to a chunk of its own below.)
        if chunk.len() >= CHUNK && last && i == chunk.len() {
            // Filling in key order: keep the full chunk full.
            let mut next = Chunk::with_capacity(CHUNK);
            next.insert_at(0, key, v);
            self.chunks.push(next);
            return None;
        }
        if chunk.bytes.len() + key.len() > CHUNK_BYTES {
            // The key's bytes do not fit (offsets stay within 16 bits): it
            // goes to a chunk of its own, between the entries before it and
            // those after it (the chunk splits there; neither side is kept
            // empty).
            let right = chunk.split_off(i);
            let left_empty = chunk.len() == 0;
            let mut alone = Chunk::with_capacity(1);
            alone.insert_at(0, key, v);
            let mut at = c + 1;
            if left_empty {
                self.chunks.remove(c);
                at = c;
            }
            self.chunks.insert(at, alone);
            if right.len() > 0 {
                self.chunks.insert(at + 1, right);
            }
            return None;
        }
        chunk.insert_at(i, key, v);
        if chunk.len() > CHUNK {
            let right = chunk.split_off(chunk.len() / 2);
            self.chunks.insert(c + 1, right);
        }
        None
    }

    #[cfg(test)]
    pub(crate) fn remove(&mut self, key: &[u8]) -> Option<V> {
        let (c, i) = self.find(key)?;
        let chunk = self.chunks.get_mut(c)?;
        let v = chunk.remove_at(i);
        self.len -= 1;
        self.rebalance(c);
        Some(v)
    }

    /// After chunk `c` shrank: drops it if empty, or merges it with a
    /// neighbour when it is below a quarter full and both fit one.
    fn rebalance(&mut self, c: usize) {
        let Some(n) = self.chunks.get(c).map(Chunk::len) else {
            return;
        };
        if n == 0 {
            self.chunks.remove(c);
            return;
        }
        if n >= CHUNK / 4 {
            return;
        }
        for (left, right) in [(c, c + 1), (c.wrapping_sub(1), c)] {
            let fits = match (self.chunks.get(left), self.chunks.get(right)) {
                (Some(l), Some(r)) => {
                    l.len() + r.len() <= CHUNK && l.bytes.len() + r.bytes.len() <= CHUNK_BYTES
                }
                _ => false,
            };
            if fits {
                let r = self.chunks.remove(right);
                if let Some(l) = self.chunks.get_mut(left) {
                    l.append(r);
                }
                return;
            }
        }
    }

    /// Keeps the entries for which `keep` returns true.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&[u8], &V) -> bool) {
        for chunk in &mut self.chunks {
            let mut i = 0;
            while i < chunk.len() {
                let k = chunk.vals.get(i).is_some_and(|v| keep(chunk.key(i), v));
                if k {
                    i += 1;
                } else {
                    chunk.remove_at(i);
                    self.len -= 1;
                }
            }
        }
        // Drops the chunks left empty, merges those left small.
        let mut c = 0;
        while self.chunks.get(c).is_some() {
            let before = self.chunks.len();
            self.rebalance(c);
            if self.chunks.len() == before {
                c += 1;
            }
        }
    }

    /// The entries with keys within the bounds, in order, as owned keys
    /// and values (for callers that change the map while going through
    /// them).
    pub(crate) fn range_collect(
        &self,
        lower: Bound<&[u8]>,
        upper: Bound<&[u8]>,
    ) -> Vec<(Box<[u8]>, V)> {
        let mut out = Vec::new();
        // The first entry within the lower bound: its chunk, then its
        // place in the chunk, by binary search.
        let (start, mut first) = match lower {
            Bound::Unbounded => (0, 0),
            Bound::Included(k) | Bound::Excluded(k) => {
                let c = self.chunk_for(k);
                let i = match self.chunks.get(c).map(|ch| ch.search(k)) {
                    Some(Ok(i)) if matches!(lower, Bound::Excluded(_)) => i + 1,
                    Some(Ok(i) | Err(i)) => i,
                    None => 0,
                };
                (c, i)
            }
        };
        for chunk in self.chunks.iter().skip(start) {
            for (i, v) in chunk.vals.iter().enumerate().skip(first) {
                let k = chunk.key(i);
                let below = match upper {
                    Bound::Included(u) => cmp_keys(k, u) != Ordering::Greater,
                    Bound::Excluded(u) => cmp_keys(k, u) == Ordering::Less,
                    Bound::Unbounded => true,
                };
                if !below {
                    return out;
                }
                out.push((k.into(), *v));
            }
            first = 0;
        }
        out
    }

    /// Bytes held on the heap (capacities, not lengths).
    #[cfg(test)]
    pub(crate) fn heap_bytes(&self) -> usize {
        self.chunks.capacity() * std::mem::size_of::<Chunk<V>>()
            + self.chunks.iter().map(Chunk::heap_bytes).sum::<usize>()
    }

    #[cfg(test)]
    fn entries(&self) -> Vec<(Vec<u8>, V)> {
        self.chunks
            .iter()
            .flat_map(|c| (0..c.len()).map(move |i| (c.key(i).to_vec(), c.vals[i])))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(Vec<u8>, u32),
        Remove(Vec<u8>),
        Retain(u32),
        Range(Vec<u8>, Vec<u8>, u8),
    }

    fn key() -> impl Strategy<Value = Vec<u8>> {
        // Few distinct bytes and lengths 0 to 5: many collisions, prefixes
        // and equal keys.
        proptest::collection::vec(0u8..4, 0..6)
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (key(), any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
            3 => key().prop_map(Op::Remove),
            1 => (1u32..5).prop_map(Op::Retain),
            1 => (key(), key(), 0u8..9).prop_map(|(a, b, m)| Op::Range(a, b, m)),
        ]
    }

    fn bound(k: &[u8], mode: u8) -> Bound<&[u8]> {
        match mode % 3 {
            0 => Bound::Included(k),
            1 => Bound::Excluded(k),
            _ => Bound::Unbounded,
        }
    }

    fn check(m: &KeyMap<u32>, model: &BTreeMap<Vec<u8>, u32>) {
        let want: Vec<(Vec<u8>, u32)> = model.iter().map(|(k, v)| (k.clone(), *v)).collect();
        assert_eq!(m.entries(), want);
        assert_eq!(m.len(), model.len());
        for c in &m.chunks {
            assert!(c.len() > 0 && c.len() <= CHUNK);
        }
    }

    /// `cmp_keys` is `[u8]::cmp` on every pair of keys of 0 to 11 bytes
    /// made of zeros with at most one 1 (equal heads, prefixes, the 8-byte
    /// boundary from both sides).
    #[test]
    fn keys_compare_as_byte_strings_at_the_boundary() {
        let mut keys = Vec::new();
        for len in 0..12usize {
            keys.push(vec![0u8; len]);
            for one in 0..len {
                let mut k = vec![0u8; len];
                k[one] = 1;
                keys.push(k);
            }
        }
        for a in &keys {
            for b in &keys {
                assert_eq!(cmp_keys(a, b), a.cmp(b), "{a:?} {b:?}");
            }
        }
    }

    proptest! {
        /// `cmp_keys` is `[u8]::cmp`, across the 8-byte boundary too.
        #[test]
        fn keys_compare_as_byte_strings(
            a in proptest::collection::vec(0u8..3, 0..12),
            b in proptest::collection::vec(0u8..3, 0..12),
        ) {
            prop_assert_eq!(cmp_keys(&a, &b), a.cmp(&b));
        }

        /// Any sequence of operations leaves the map equal to a BTreeMap
        /// given the same: contents, order, lookups, ranges.
        #[test]
        fn behaves_as_a_btreemap(ops in proptest::collection::vec(op(), 1..400)) {
            let mut m = KeyMap::default();
            let mut model = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => {
                        prop_assert_eq!(m.insert(&k, v), model.insert(k.clone(), v));
                    }
                    Op::Remove(k) => prop_assert_eq!(m.remove(&k), model.remove(&k)),
                    Op::Retain(d) => {
                        m.retain(|_, v| v % d != 0);
                        model.retain(|_, v| *v % d != 0);
                    }
                    Op::Range(a, b, mode) => {
                        let (lo, hi) = (bound(&a, mode), bound(&b, mode / 3));
                        let ordered = match (lo, hi) {
                            (Bound::Included(l) | Bound::Excluded(l), Bound::Included(h) | Bound::Excluded(h)) => l < h || (l == h && matches!((lo, hi), (Bound::Included(_), Bound::Included(_)))),
                            _ => true,
                        };
                        if ordered {
                            let got = m.range_collect(lo, hi);
                            let want: Vec<(Box<[u8]>, u32)> = model
                                .range::<[u8], _>((lo, hi))
                                .map(|(k, v)| (k.clone().into_boxed_slice(), *v))
                                .collect();
                            prop_assert_eq!(got, want);
                        }
                    }
                }
                for k in [vec![], vec![0], vec![1, 2], vec![3, 3, 3]] {
                    prop_assert_eq!(m.get(&k), model.get(&k));
                    prop_assert_eq!(m.contains_key(&k), model.contains_key(&k));
                    // A position reads and writes that key's entry.
                    let pos = m.position(&k);
                    prop_assert_eq!(pos.is_some(), model.contains_key(&k));
                    if let Some(p) = pos {
                        prop_assert_eq!(m.get_at(p), model.get(&k));
                        let v = m.get_at(p).copied().unwrap_or(0).wrapping_add(1);
                        *m.get_at_mut(p).unwrap() = v;
                        model.insert(k.clone(), v);
                        prop_assert_eq!(m.get(&k), Some(&v));
                    }
                }
                check(&m, &model);
            }
        }
    }

    /// Long keys: no chunk holds more than 65,535 key bytes, whatever the
    /// order of insertion, and the map stays equal to a BTreeMap.
    #[test]
    fn long_keys_keep_chunks_within_16_bit_offsets() {
        let mut m = KeyMap::default();
        let mut model = BTreeMap::new();
        let lens = [
            65_535usize,
            30_000,
            1,
            40_000,
            65_535,
            0,
            20_000,
            25_000,
            100,
        ];
        for round in 0..3u8 {
            for (i, &len) in lens.iter().enumerate() {
                let mut k = vec![round; len];
                if let Some(b) = k.first_mut() {
                    *b = (i as u8) * 3 + round;
                }
                m.insert(&k, u32::from(round));
                model.insert(k, u32::from(round));
                for c in &m.chunks {
                    assert!(c.bytes.len() <= CHUNK_BYTES);
                }
                check(&m, &model);
            }
        }
        let keys: Vec<Vec<u8>> = model.keys().cloned().collect();
        for k in keys.iter().step_by(2) {
            assert_eq!(m.remove(k), model.remove(k));
            check(&m, &model);
        }
    }

    /// A chunk takes keys up to exactly 65,535 bytes in all; one byte more
    /// starts another.
    #[test]
    fn a_chunk_holds_exactly_65535_key_bytes() {
        let mut m = KeyMap::default();
        m.insert(&[1u8; 65_000], 1u32);
        m.insert(&[2u8; 535], 2);
        assert_eq!(m.chunks.len(), 1);
        m.insert(&[3u8; 1], 3);
        assert_eq!(m.chunks.len(), 2);
        assert_eq!(m.entries().len(), 3);
    }

    /// A retain that leaves chunks small merges them.
    #[test]
    fn retain_merges_what_it_leaves_small() {
        let mut m = KeyMap::default();
        for i in 0..10_000u32 {
            m.insert(&i.to_be_bytes(), i);
        }
        assert_eq!(m.chunks.len(), 10_000usize.div_ceil(CHUNK));
        m.retain(|_, v| v % 10 == 0);
        assert_eq!(m.len(), 1_000);
        assert!(m.chunks.len() < 40, "{} chunks", m.chunks.len());
        assert!(m.chunks.iter().all(|c| c.len() > 0));
    }

    /// Two chunks of 16-byte keys merge once one falls below a quarter and
    /// both fit one chunk, in entries and in bytes.
    #[test]
    fn small_neighbours_merge() {
        let key = |i: u32| {
            let mut k = [0u8; 16];
            k[12..].copy_from_slice(&i.to_be_bytes());
            k
        };
        let mut m = KeyMap::default();
        for i in 0..200u32 {
            m.insert(&key(i), i);
        }
        assert_eq!(m.chunks.len(), 2);
        for i in 40..128u32 {
            m.remove(&key(i));
        }
        for i in 128..160u32 {
            m.remove(&key(i));
        }
        assert_eq!(
            (m.chunks.len(), m.chunks[0].len(), m.chunks[1].len()),
            (2, 40, 40)
        );
        for i in 160..169u32 {
            m.remove(&key(i));
        }
        assert_eq!(m.chunks.len(), 1, "40 + 31 entries, 1,136 bytes: one chunk");
        assert_eq!(m.len(), 71);
    }

    /// Many entries in and out of order, then most removed: chunk sizes
    /// stay within bounds, `get_mut` changes what `get` sees.
    #[test]
    fn large_fills_split_and_merge() {
        let mut m = KeyMap::default();
        let mut model = BTreeMap::new();
        for i in (0..5_000u32).rev() {
            let k = i.to_be_bytes();
            m.insert(&k, i);
            model.insert(k.to_vec(), i);
        }
        // Filled from the front, each split leaves two half-full chunks: the
        // right half (65 entries) is never touched again.
        assert!(m.chunks.iter().skip(1).all(|c| c.len() == CHUNK / 2 + 1));
        assert!(m.chunks.len() > 70);
        // A chunk a quarter full or more is left alone by removals.
        let before = m.chunks.len();
        let second: Vec<Vec<u8>> = (0..m.chunks[1].len())
            .map(|i| m.chunks[1].key(i).to_vec())
            .collect();
        for k in &second[..second.len() - CHUNK / 4] {
            m.remove(k);
            model.remove(k);
        }
        assert_eq!(m.chunks[1].len(), CHUNK / 4);
        assert_eq!(m.chunks.len(), before, "not merged at a quarter");
        m.remove(&second[second.len() - 1]);
        model.remove(&second[second.len() - 1]);
        assert_eq!(m.chunks.len(), before - 1, "merged below a quarter");
        check(&m, &model);
        for i in 10_000..15_000u32 {
            let k = i.to_be_bytes();
            m.insert(&k, i);
            model.insert(k.to_vec(), i);
        }
        check(&m, &model);
        *m.get_mut(&7u32.to_be_bytes()).unwrap() = 70;
        assert_eq!(m.get(&7u32.to_be_bytes()), Some(&70));
        model.insert(7u32.to_be_bytes().to_vec(), 70);
        for i in (0..15_000u32).filter(|i| i % 10 != 0) {
            m.remove(&i.to_be_bytes());
            model.remove(&i.to_be_bytes()[..]);
        }
        check(&m, &model);
        assert!(m.chunks.len() * CHUNK / 4 <= m.len() + CHUNK, "merged");
    }

    /// Filled in key order, as a snapshot cycle fills it, a million 4-byte
    /// keys with 24-byte values take under 34 bytes each (a BTreeMap of
    /// boxed keys takes about 100).
    #[test]
    fn in_order_filling_is_compact() {
        let mut m: KeyMap<[u64; 3]> = KeyMap::default();
        let n = 1_000_000u32;
        for i in 0..n {
            m.insert(&i.to_be_bytes(), [u64::from(i); 3]);
        }
        assert_eq!(m.len(), n as usize);
        let per = m.heap_bytes() as f64 / f64::from(n);
        assert!(per < 34.0, "{per} bytes per entry");
        assert_eq!(m.get(&123_456u32.to_be_bytes()), Some(&[123_456; 3]));
    }
}
