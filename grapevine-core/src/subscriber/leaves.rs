//! The subscriber's per-leaf bookkeeping: each leaf's sequence number, the
//! chain check, deltas waiting for their leaf's snapshot, stale leaves, and
//! the ghost sweep.
//!
//! Invariant: for every leaf in the table, the replica holds exactly the
//! publisher's value of that leaf right after delta `seq` (or, when absent,
//! the leaf was absent at the publisher at `seq`). A leaf is *stale* when a
//! later delta for it is known (`stale_until > seq`) but could not be applied.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::coverage::{Hi, Lo};
use super::keymap::{KeyMap, Pos};
use super::{Event, SubscriberStats};
use crate::state::Replica;
use crate::SeqNum;

/// What the table knows of a leaf. Stored as a [`Stored`] (16 bytes: one
/// per leaf, a million for a large state), with `stale_until` kept aside
/// for the few stale leaves.
#[derive(Debug, Clone, Copy)]
struct LeafMeta {
    /// The value held is the publisher's right after delta `seq`, if
    /// `known`; else no value is known yet (deltas wait for the leaf's
    /// snapshot). See [`LeafMeta::seq`].
    seq: SeqNum,
    known: bool,
    present: bool,
    /// Highest seq of a delta for this leaf that could not be applied.
    stale_until: SeqNum,
}

impl LeafMeta {
    fn new(seq: Option<SeqNum>, present: bool, stale_until: SeqNum) -> Self {
        Self {
            seq: seq.unwrap_or(SeqNum::NONE),
            known: seq.is_some(),
            present,
            stale_until,
        }
    }

    /// The delta the value held is as of; `None`: no value known yet.
    fn seq(&self) -> Option<SeqNum> {
        self.known.then_some(self.seq)
    }

    fn set_seq(&mut self, seq: SeqNum) {
        self.seq = seq;
        self.known = true;
    }

    fn is_stale(&self) -> bool {
        self.stale_until > self.seq().unwrap_or(SeqNum::NONE)
    }

    fn stored(&self) -> Stored {
        Stored {
            seq: self.seq,
            known: self.known,
            present: self.present,
            stale: self.is_stale(),
        }
    }
}

/// A [`LeafMeta`] as the table stores it. A leaf that is not stale has no
/// use for its `stale_until` (it is at most its `seq`, and `mark_stale`
/// raises it past `seq`): only stale leaves keep one, in
/// `LeafTable::stale_until`.
#[derive(Debug, Clone, Copy)]
struct Stored {
    seq: SeqNum,
    known: bool,
    present: bool,
    stale: bool,
}

#[derive(Debug)]
struct Pending {
    prev: SeqNum,
    creates: bool,
    payload: Box<[u8]>,
}

/// A delta as the leaf table sees it.
pub(crate) struct DeltaRef<'a> {
    pub(crate) seq: SeqNum,
    pub(crate) prev: SeqNum,
    pub(crate) creates: bool,
    pub(crate) key: &'a [u8],
    pub(crate) payload: &'a [u8],
}

/// Outcome of one delta, for counters.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum DeltaOutcome {
    /// Applied; whether the leaf is present afterwards.
    Applied { present: bool },
    /// Already reflected by a newer snapshot.
    Covered,
    /// Waiting for the leaf's snapshot.
    Pending,
    /// The application could not decode it.
    Failed,
}

pub(crate) struct Ctx<'r, R: Replica + ?Sized> {
    pub(crate) replica: &'r mut R,
    pub(crate) events: &'r mut super::EventQueue,
    pub(crate) stats: &'r mut SubscriberStats,
    /// Whether the session is synced: then a leaf without an entry is known
    /// to be absent, and leaves going stale or repaired are reported.
    pub(crate) synced: bool,
    /// Byte budget of each of the subscriber's buffers.
    pub(crate) max_buffered_bytes: usize,
}

/// What a [`Ctx`] borrows, owned, for unit tests.
#[cfg(test)]
pub(crate) struct CtxParts<R> {
    pub(crate) replica: R,
    pub(crate) events: super::EventQueue,
    pub(crate) stats: SubscriberStats,
}

#[cfg(test)]
impl<R: Replica> CtxParts<R> {
    /// `replica`, an event queue of 64, no counts yet.
    pub(crate) fn new(replica: R) -> Self {
        Self {
            replica,
            events: super::EventQueue {
                queue: std::collections::VecDeque::new(),
                max: 64,
                dropped: 0,
            },
            stats: SubscriberStats::default(),
        }
    }

    pub(crate) fn ctx(&mut self, synced: bool, max_buffered_bytes: usize) -> Ctx<'_, R> {
        Ctx {
            replica: &mut self.replica,
            events: &mut self.events,
            stats: &mut self.stats,
            synced,
            max_buffered_bytes,
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct LeafTable {
    metas: KeyMap<Stored>,
    /// `stale_until` of the stale leaves.
    stale_until: BTreeMap<Box<[u8]>, SeqNum>,
    pending: BTreeMap<(Box<[u8]>, SeqNum), Pending>,
    pending_bytes: usize,
    stale: usize,
    /// Entries with `present` set.
    present: usize,
    /// Highest `seq` given to a leaf by a snapshot or sweep (may be ahead of
    /// the sequencer).
    pub(crate) max_installed: SeqNum,
}

impl LeafTable {
    pub(crate) fn stale_count(&self) -> usize {
        self.stale
    }

    pub(crate) fn contains(&self, key: &[u8]) -> bool {
        self.metas.contains_key(key)
    }

    /// What the table knows of `key`, whose entry is at `pos` (`None`: it
    /// has none), as found by `self.metas.position(key)`.
    fn meta_at(&self, key: &[u8], pos: Option<Pos>) -> Option<LeafMeta> {
        let s = self.metas.get_at(pos?)?;
        let stale_until = if s.stale {
            self.stale_until.get(key).copied().unwrap_or(SeqNum::NONE)
        } else {
            SeqNum::NONE
        };
        Some(LeafMeta {
            seq: s.seq,
            known: s.known,
            present: s.present,
            stale_until,
        })
    }

    /// Whether the leaf is held exactly (known, not stale) as of a
    /// sequence number before `seq`. Once synced, a leaf without an entry
    /// is held: known absent.
    pub(crate) fn is_held_before(&self, key: &[u8], seq: SeqNum, synced: bool) -> bool {
        match self.metas.get(key) {
            Some(m) => !m.stale && m.known && m.seq < seq,
            None => synced,
        }
    }

    #[cfg(test)]
    pub(crate) fn tracked_count(&self) -> usize {
        self.metas.len()
    }

    pub(crate) fn pending_count(&self) -> usize {
        self.pending.len()
    }

    pub(crate) fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    pub(crate) fn present_count(&self) -> usize {
        self.present
    }

    fn set_meta<R: Replica + ?Sized>(
        &mut self,
        key: &[u8],
        before: Option<LeafMeta>,
        after: LeafMeta,
        ctx: &mut Ctx<'_, R>,
    ) {
        let pos = self.metas.position(key);
        self.set_meta_at(key, pos, before, after, ctx);
    }

    /// As [`LeafTable::set_meta`], with `key`'s entry at `pos` (`None`:
    /// it has none), as `self.metas.position(key)` would find it: the
    /// entries must not have changed since it was taken.
    fn set_meta_at<R: Replica + ?Sized>(
        &mut self,
        key: &[u8],
        pos: Option<Pos>,
        before: Option<LeafMeta>,
        after: LeafMeta,
        ctx: &mut Ctx<'_, R>,
    ) {
        debug_assert_eq!(pos, self.metas.position(key), "a stale position");
        match (before.is_some_and(|m| m.present), after.present) {
            (false, true) => self.present += 1,
            (true, false) => self.present -= 1,
            _ => {}
        }
        let was = before.is_some_and(|m| m.is_stale());
        let is = after.is_stale();
        match (was, is) {
            (false, true) => {
                self.stale += 1;
                if ctx.synced {
                    ctx.events.push(Event::LeafStale { key: key.to_vec() });
                }
            }
            (true, false) => {
                self.stale -= 1;
                if ctx.synced {
                    ctx.events.push(Event::LeafRepaired { key: key.to_vec() });
                }
            }
            _ => {}
        }
        match (was, is) {
            (_, true) => match self.stale_until.get_mut(key) {
                Some(s) => *s = after.stale_until,
                None => {
                    self.stale_until.insert(key.into(), after.stale_until);
                }
            },
            (true, false) => {
                self.stale_until.remove(key);
            }
            (false, false) => {}
        }
        match pos.and_then(|p| self.metas.get_at_mut(p)) {
            Some(m) => *m = after.stored(),
            None => {
                self.metas.insert(key, after.stored());
            }
        }
        debug_assert_eq!(
            self.stale_until.len(),
            self.stale,
            "one stale_until per stale leaf"
        );
    }

    /// Processes a delta in global sequence order.
    pub(crate) fn on_delta<R: Replica + ?Sized>(
        &mut self,
        d: DeltaRef<'_>,
        max_pending: usize,
        max_pending_bytes: usize,
        ctx: &mut Ctx<'_, R>,
    ) -> DeltaOutcome {
        // One search for the leaf's entry, read here and written after the
        // replica applied the delta (which leaves the entries as they are).
        let pos = self.metas.position(d.key);
        let before = self.meta_at(d.key, pos);
        // What is known of the leaf: after sync, no entry means absent.
        // (After sync, no entry means absent; that is held as of no seq,
        // which neither covers a delta nor chains one, as no entry.)
        let held = before.and_then(|m| m.seq());
        if held.is_some_and(|h| d.seq <= h) {
            return DeltaOutcome::Covered;
        }
        let stale = before.is_some_and(|m| m.is_stale());
        let present_before = before.is_some_and(|m| m.present);
        // A delta that creates its leaf applies whatever is held (a leaf
        // still held then is the ghost of a missed removal); any other must
        // chain on the very delta the publisher applied before it.
        let chains = d.creates || (held == Some(d.prev) && present_before);
        if !stale && chains {
            let absent_first = d.creates && present_before;
            match ctx.replica.apply_delta(d.key, d.payload, absent_first) {
                Ok(present) => {
                    let stale_until = before.map_or(SeqNum::NONE, |m| m.stale_until);
                    let after = LeafMeta::new(Some(d.seq), present, stale_until);
                    self.set_meta_at(d.key, pos, before, after, ctx);
                    return DeltaOutcome::Applied { present };
                }
                Err(error) => {
                    ctx.stats.apply_errors += 1;
                    ctx.events.push(Event::ApplyFailed {
                        key: d.key.to_vec(),
                        seq: d.seq,
                        error,
                    });
                    self.mark_stale(d.key, before, d.seq, ctx);
                    return DeltaOutcome::Failed;
                }
            }
        }
        // The chain is broken (or already stale): keep the delta, bounded,
        // until the leaf's snapshot arrives.
        self.mark_stale(d.key, before, d.seq, ctx);
        if self.pending.len() < max_pending
            && self.pending_bytes + d.payload.len() + d.key.len() <= max_pending_bytes
        {
            self.pending_bytes += d.payload.len() + d.key.len();
            self.pending.insert(
                (d.key.into(), d.seq),
                Pending {
                    prev: d.prev,
                    creates: d.creates,
                    payload: d.payload.into(),
                },
            );
        } else {
            ctx.stats.pending_dropped += 1;
        }
        DeltaOutcome::Pending
    }

    fn mark_stale<R: Replica + ?Sized>(
        &mut self,
        key: &[u8],
        before: Option<LeafMeta>,
        seq: SeqNum,
        ctx: &mut Ctx<'_, R>,
    ) {
        let mut after = before.unwrap_or(LeafMeta::new(
            ctx.synced.then_some(SeqNum::NONE),
            false,
            SeqNum::NONE,
        ));
        after.stale_until = after.stale_until.max(seq);
        self.set_meta(key, before, after, ctx);
    }

    /// Installs a leaf's value (or absence) as of `seq`, if newer than what
    /// is held; then applies the leaf's pending deltas that chain on.
    pub(crate) fn install<R: Replica + ?Sized>(
        &mut self,
        key: &[u8],
        seq: SeqNum,
        value: Option<&[u8]>,
        ctx: &mut Ctx<'_, R>,
    ) -> bool {
        let pos = self.metas.position(key);
        let before = self.meta_at(key, pos);
        if before.and_then(|m| m.seq()).is_some_and(|h| seq <= h) {
            return false;
        }
        if let Err(error) = ctx.replica.install_leaf(key, value) {
            ctx.stats.apply_errors += 1;
            ctx.events.push(Event::ApplyFailed {
                key: key.to_vec(),
                seq,
                error,
            });
            self.mark_stale(key, before, seq, ctx);
            return false;
        }
        let stale_until = before.map_or(SeqNum::NONE, |m| m.stale_until);
        let mut after = LeafMeta::new(Some(seq), value.is_some(), stale_until);
        self.max_installed = self.max_installed.max(seq);
        // Only a stale leaf has pending deltas: the common case is done.
        if !before.is_some_and(|m| m.is_stale()) {
            // The entries are as `pos` found them: the replica changed.
            self.set_meta_at(key, pos, before, after, ctx);
            return true;
        }
        // Pending deltas for this leaf, in sequence order.
        let lo = (Box::<[u8]>::from(key), SeqNum::NONE);
        let hi = (Box::<[u8]>::from(key), SeqNum(u64::MAX));
        let queued: Vec<(SeqNum, Pending)> = {
            let keys: Vec<_> = self
                .pending
                .range(lo..=hi)
                .map(|(k, _)| k.clone())
                .collect();
            keys.into_iter()
                .filter_map(|k| {
                    let p = self.pending.remove(&k)?;
                    self.pending_bytes -= p.payload.len() + k.0.len();
                    Some((k.1, p))
                })
                .collect()
        };
        let mut broken = false;
        let mut held = seq;
        for (pseq, p) in queued {
            if pseq <= held {
                continue;
            }
            if !broken && (p.creates || (p.prev == held && after.present)) {
                let absent_first = p.creates && after.present;
                match ctx.replica.apply_delta(key, &p.payload, absent_first) {
                    Ok(present) => {
                        held = pseq;
                        after.set_seq(pseq);
                        after.present = present;
                        ctx.stats.deltas_applied += 1;
                        continue;
                    }
                    Err(_) => ctx.stats.apply_errors += 1,
                }
            }
            // Still a hole in this leaf's chain: keep waiting.
            broken = true;
            self.pending_bytes += p.payload.len() + key.len();
            self.pending.insert((key.into(), pseq), p);
        }
        self.set_meta(key, before, after, ctx);
        true
    }

    /// A cycle that started at `start_seq` carried no leaf strictly between
    /// `lo` and `hi`: every leaf held there with older knowledge was absent
    /// at the publisher at `start_seq`. Installs that absence (removing the
    /// ghosts of missed removals).
    pub(crate) fn sweep_between<R: Replica + ?Sized>(
        &mut self,
        lo: &Lo,
        hi: &Hi,
        start_seq: SeqNum,
        ctx: &mut Ctx<'_, R>,
    ) {
        let lower = match lo {
            Lo::Start => Bound::Unbounded,
            Lo::Key(k) => Bound::Excluded(k.as_ref()),
        };
        let upper = match hi {
            Hi::Key(k) => Bound::Excluded(k.as_ref()),
            Hi::End => Bound::Unbounded,
        };
        if let (Lo::Key(a), Hi::Key(b)) = (lo, hi) {
            if a >= b {
                return;
            }
        }
        // `install` leaves alone those known as of `start_seq` or later.
        let ghosts: Vec<(Box<[u8]>, bool)> = self
            .metas
            .range_collect(lower, upper)
            .into_iter()
            .map(|(k, m)| (k, m.present))
            .collect();
        for (key, was_present) in ghosts {
            if self.install(&key, start_seq, None, ctx) && was_present {
                ctx.stats.ghosts_removed += 1;
            }
        }
    }

    /// Forgets absent leaves that no delta still to come can refer to
    /// (known absent as of `before` or earlier, and up to `applied`). A leaf with
    /// pending deltas is stale and stays.
    pub(crate) fn forget_absent(&mut self, applied: SeqNum, before: SeqNum) {
        // A leaf whose value is not known yet is stale (only `mark_stale`
        // makes one), so it stays.
        let upto = applied.min(before);
        self.metas.retain(|_, m| {
            debug_assert!(m.known || m.stale, "an unknown leaf is stale");
            m.present || m.stale || m.seq > upto
        });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::state::{encode, MapDelta, Typed};

    type Map = BTreeMap<u32, u32>;

    /// A delta whose chain a snapshot does not reach keeps waiting, its
    /// bytes counted once; a snapshot that reaches it lets it apply.
    #[test]
    fn deltas_a_snapshot_does_not_reach_keep_waiting_counted_once() {
        let mut parts = CtxParts::new(Typed::new(Map::new()));
        let mut ctx = parts.ctx(true, 1 << 20);
        let mut t = LeafTable::default();
        let key = Typed::<Map>::encode_key(&1);
        let payload = Typed::<Map>::encode_delta(&MapDelta::Upsert(1, 8));
        // Seq 8 chains on 7, never heard: the leaf is stale and 8 waits.
        let d = DeltaRef {
            seq: SeqNum(8),
            prev: SeqNum(7),
            creates: false,
            key: &key,
            payload: &payload,
        };
        assert!(!matches!(
            t.on_delta(d, 100, 1 << 20, &mut ctx),
            DeltaOutcome::Applied { .. }
        ));
        let waiting = key.len() + payload.len();
        assert_eq!((t.pending_count(), t.pending_bytes()), (1, waiting));
        // A snapshot as of 5 does not reach 7: 8 still waits.
        assert!(t.install(&key, SeqNum(5), Some(&encode(&5u32)), &mut ctx));
        assert_eq!((t.pending_count(), t.pending_bytes()), (1, waiting));
        // As of 7 it does: 8 applies (counted), nothing waits.
        assert_eq!(ctx.stats.deltas_applied, 0);
        assert!(t.install(&key, SeqNum(7), Some(&encode(&7u32)), &mut ctx));
        assert_eq!((t.pending_count(), t.pending_bytes()), (0, 0));
        assert_eq!(ctx.stats.deltas_applied, 1);
        // The leaf is now held as of 8: the delta that chains on 8 applies.
        let p9 = Typed::<Map>::encode_delta(&MapDelta::Upsert(1, 9));
        let d9 = DeltaRef {
            seq: SeqNum(9),
            prev: SeqNum(8),
            creates: false,
            key: &key,
            payload: &p9,
        };
        assert_eq!(
            t.on_delta(d9, 100, 1 << 20, &mut ctx),
            DeltaOutcome::Applied { present: true }
        );
        // A waiting delta that does not decode fails when its turn comes:
        // counted, and the leaf stays stale.
        let key2 = Typed::<Map>::encode_key(&2);
        let junk = [0xff_u8; 9];
        let d = DeltaRef {
            seq: SeqNum(10),
            prev: SeqNum(9),
            creates: false,
            key: &key2,
            payload: &junk,
        };
        t.on_delta(d, 100, 1 << 20, &mut ctx);
        assert_eq!(t.pending_count(), 1);
        assert_eq!(ctx.stats.apply_errors, 0);
        t.install(&key2, SeqNum(9), Some(&encode(&9u32)), &mut ctx);
        assert_eq!(ctx.stats.apply_errors, 1);
        assert_eq!(t.pending_count(), 1, "still waiting for a snapshot");
        assert_eq!(parts.replica.state().get(&1), Some(&9));
        assert_eq!(parts.replica.state().get(&2), Some(&9));
    }

    /// Deltas waiting for their leaf's snapshot are bounded by count and by
    /// bytes (a delta that exactly fills the byte bound is kept); one that
    /// does not fit is dropped and counted, and the leaf stays stale.
    #[test]
    fn waiting_deltas_are_bounded_by_count_and_bytes() {
        let mut parts = CtxParts::new(Typed::new(Map::new()));
        let mut ctx = parts.ctx(true, 1 << 20);
        let payload = Typed::<Map>::encode_delta(&MapDelta::Upsert(1, 8));
        // Two-byte keys: a byte count that multiplied key and payload
        // lengths instead of adding them would differ.
        let keys: Vec<_> = (1000..=1003u32)
            .map(|k| Typed::<Map>::encode_key(&k))
            .collect();
        assert_eq!(keys[0].len(), 2);
        let size = keys[0].len() + payload.len();
        let broken = |i: usize| DeltaRef {
            seq: SeqNum(10 + i as u64),
            prev: SeqNum(5),
            creates: false,
            key: &keys[i],
            payload: &payload,
        };
        // By count: two may wait.
        let mut t = LeafTable::default();
        for i in 0..3 {
            assert!(matches!(
                t.on_delta(broken(i), 2, 1 << 20, &mut ctx),
                DeltaOutcome::Pending
            ));
        }
        assert_eq!((t.pending_count(), t.pending_bytes()), (2, 2 * size));
        assert_eq!(ctx.stats.pending_dropped, 1);
        assert_eq!(t.stale_count(), 3, "the dropped delta's leaf is stale too");
        // By bytes: exactly two deltas' worth.
        let mut t = LeafTable::default();
        for i in 0..3 {
            t.on_delta(broken(i), 100, 2 * size, &mut ctx);
        }
        assert_eq!((t.pending_count(), t.pending_bytes()), (2, 2 * size));
        assert_eq!(ctx.stats.pending_dropped, 2);
    }

    /// A leaf is held exactly before `seq` when it is known, not stale, as
    /// of an earlier seq; once synced, a leaf without an entry is known
    /// absent, so held.
    #[test]
    fn held_before_means_known_not_stale_and_older() {
        let mut parts = CtxParts::new(Typed::new(Map::new()));
        let mut ctx = parts.ctx(false, 1 << 20);
        let mut t = LeafTable::default();
        let (k1, k2, k3) = (
            Typed::<Map>::encode_key(&1),
            Typed::<Map>::encode_key(&2),
            Typed::<Map>::encode_key(&3),
        );
        assert!(!t.is_held_before(&k1, SeqNum(5), false), "unknown");
        assert!(t.is_held_before(&k1, SeqNum(5), true), "absent once synced");
        assert!(t.install(&k1, SeqNum(4), Some(&encode(&4u32)), &mut ctx));
        assert!(t.contains(&k1));
        assert!(t.is_held_before(&k1, SeqNum(5), false));
        assert!(!t.is_held_before(&k1, SeqNum(4), false), "not older");
        // Stale: a delta on k2 whose chain is broken.
        let payload = Typed::<Map>::encode_delta(&MapDelta::Upsert(2, 8));
        let d = DeltaRef {
            seq: SeqNum(8),
            prev: SeqNum(7),
            creates: false,
            key: &k2,
            payload: &payload,
        };
        t.on_delta(d, 100, 1 << 20, &mut ctx);
        assert!(t.contains(&k2));
        assert!(!t.is_held_before(&k2, SeqNum(20), true), "stale");
        assert!(!t.contains(&k3));
    }
}
