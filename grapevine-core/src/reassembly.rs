//! Reassembly of fragmented messages, with memory bounded by configuration.
//!
//! A [`Reassembler`] holds the partial messages of its senders. Its memory is
//! bounded by [`ReassemblyConfig`]: the body bytes of all partials together
//! never exceed `max_buffered_bytes` (each partial reserves its declared total
//! length when its first fragment arrives), there are never more than
//! `max_partials` of them, and each tracks at most [`MAX_RANGES`] disjoint
//! received ranges. When a new partial needs room the oldest ones are evicted,
//! so a flood of first fragments cannot grow memory; a partial older than
//! `timeout` is dropped.
//!
//! ```
//! use std::time::Instant;
//! use grapevine_core::wire::{Fragments, Message, MessageKind};
//! use grapevine_core::{Reassembler, ReassemblyConfig, SessionId, StreamId};
//!
//! let body: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
//! let mut r = Reassembler::new(ReassemblyConfig::default())?;
//! let now = Instant::now();
//! let mut done = None;
//! // Fragments may arrive in any order.
//! for frag in Fragments::new(9, MessageKind::Delta, &body, 1000).collect::<Vec<_>>().into_iter().rev() {
//!     if let Some(msg) = r.handle_fragment(now, StreamId(1), SessionId(2), &frag)? {
//!         done = Some(msg);
//!     }
//! }
//! let done = done.expect("all fragments delivered");
//! assert_eq!(done.kind, MessageKind::Delta as u8);
//! assert_eq!(done.body, body);
//! assert_eq!(r.buffered_bytes(), 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::wire::{DecodeError, Fragment, Message};
use crate::{ConfigError, SessionId, StreamId};

/// Most disjoint received ranges one partial message may track. Fragments of
/// an honest sender merge into few ranges whatever their arrival order
/// (a 1 MiB body in 1.4 KB fragments has at most ~370); more means a hostile
/// or broken sender and the partial is dropped.
pub const MAX_RANGES: usize = 1024;

/// How many completed message ids are remembered to drop late duplicates.
const RECENT_DONE: usize = 64;

/// Limits of a [`Reassembler`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReassemblyConfig {
    max_message_size: usize,
    max_partials: usize,
    max_buffered_bytes: usize,
    timeout: Duration,
}

impl Default for ReassemblyConfig {
    fn default() -> Self {
        Self {
            max_message_size: 4 << 20,
            max_partials: 64,
            max_buffered_bytes: 16 << 20,
            timeout: Duration::from_secs(1),
        }
    }
}

impl ReassemblyConfig {
    /// Largest message body accepted (default 4 MiB). Fragments declaring a
    /// larger total are rejected.
    pub fn max_message_size(&mut self, bytes: usize) -> &mut Self {
        self.max_message_size = bytes;
        self
    }

    /// Most partial messages held at once (default 64).
    pub fn max_partials(&mut self, n: usize) -> &mut Self {
        self.max_partials = n;
        self
    }

    /// Most body bytes reserved by all partial messages together (default
    /// 16 MiB).
    pub fn max_buffered_bytes(&mut self, bytes: usize) -> &mut Self {
        self.max_buffered_bytes = bytes;
        self
    }

    /// How long a partial message may wait for its missing fragments (default
    /// 1 s).
    pub fn timeout(&mut self, timeout: Duration) -> &mut Self {
        self.timeout = timeout;
        self
    }

    /// Checks the limits are usable together.
    ///
    /// # Errors
    ///
    /// [`ConfigError::OutOfRange`] naming the first bad value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_message_size == 0 || self.max_message_size > u32::MAX as usize {
            return Err(ConfigError::out_of_range(
                "reassembly.max_message_size",
                self.max_message_size,
                "use 1 byte ..= 4 GiB - 1",
            ));
        }
        if self.max_buffered_bytes < self.max_message_size {
            return Err(ConfigError::out_of_range(
                "reassembly.max_buffered_bytes",
                self.max_buffered_bytes,
                "must be at least max_message_size, or no message of that size could be held",
            ));
        }
        if self.max_partials == 0 {
            return Err(ConfigError::out_of_range(
                "reassembly.max_partials",
                0,
                "use at least 1",
            ));
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::out_of_range(
                "reassembly.timeout",
                "0s",
                "use a positive duration, e.g. 1s",
            ));
        }
        Ok(())
    }
}

/// Why a fragment was rejected. The fragment is dropped; where the variant
/// says so, its partial message is dropped too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReassemblyError {
    /// The declared total length exceeds `max_message_size`.
    #[error("fragmented message of {total_len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Declared total length.
        total_len: u32,
        /// The configured limit.
        max: usize,
    },
    /// The fragment's kind or total length differs from earlier fragments of
    /// the same message (the partial message is dropped), or the fragment is
    /// empty or runs past its total length (it is ignored;
    /// [`Datagram::decode`](crate::wire::Datagram::decode) never yields such
    /// a fragment).
    #[error("fragment disagrees with earlier fragments of message {frag_id}")]
    Inconsistent {
        /// The message id.
        frag_id: u32,
    },
    /// The fragment overlaps received bytes with different content; the
    /// partial message is dropped.
    #[error("fragment overlaps message {frag_id} with conflicting bytes")]
    Conflict {
        /// The message id.
        frag_id: u32,
    },
    /// The partial message would track more than [`MAX_RANGES`] disjoint
    /// ranges; it is dropped.
    #[error("message {frag_id} arrived in too many disjoint pieces")]
    TooFragmented {
        /// The message id.
        frag_id: u32,
    },
}

/// Counters of a [`Reassembler`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReassemblyStats {
    /// Messages completed.
    pub completed: u64,
    /// Fragments whose bytes were already held, or that belong to a message
    /// completed recently.
    pub duplicates: u64,
    /// Partial messages dropped by timeout.
    pub expired: u64,
    /// Partial messages evicted to make room for newer ones.
    pub evicted: u64,
    /// Fragments rejected with a [`ReassemblyError`].
    pub rejected: u64,
}

/// A message put back together from its fragments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reassembled {
    /// The message's kind byte.
    pub kind: u8,
    /// The message's body.
    pub body: Vec<u8>,
}

impl Reassembled {
    /// Decodes the reassembled message.
    ///
    /// # Errors
    ///
    /// As [`Message::decode_body`]: the reassembled body may still be
    /// malformed.
    pub fn message(&self) -> Result<Message<'_>, DecodeError> {
        Message::decode_body(self.kind, &self.body)?.ok_or(DecodeError::Empty)
    }
}

type Key = (StreamId, SessionId, u32);

#[derive(Debug)]
struct Partial {
    kind: u8,
    buf: Vec<u8>,
    /// Sorted, disjoint, non-adjacent `[start, end)` ranges received.
    ranges: Vec<(usize, usize)>,
    created: Instant,
    /// When a fragment last added bytes.
    progress: Instant,
    /// Requests for the missing bytes sent so far.
    naks: u32,
    /// Not before this may the missing bytes be requested (again).
    nak_at: Option<Instant>,
}

/// A request for the missing bytes of one partial message
/// ([`Reassembler::poll_missing`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Missing {
    /// The stream of the partial message.
    pub stream: StreamId,
    /// The publisher session of the partial message.
    pub session: SessionId,
    /// The fragmented message.
    pub frag_id: u32,
    /// Missing `[offset, end)` byte ranges of its body, in order (at most
    /// the `max_ranges` asked for).
    pub ranges: Vec<(u32, u32)>,
}

/// Puts fragmented messages back together, within the memory bounds of its
/// [`ReassemblyConfig`] (see the crate docs on reassembly).
#[derive(Debug)]
pub struct Reassembler {
    cfg: ReassemblyConfig,
    partials: HashMap<Key, Partial>,
    buffered: usize,
    recent_done: VecDeque<Key>,
    stats: ReassemblyStats,
}

impl Reassembler {
    /// A reassembler with the given limits.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] if the limits are unusable
    /// ([`ReassemblyConfig::validate`]).
    pub fn new(cfg: ReassemblyConfig) -> Result<Self, ConfigError> {
        cfg.validate()?;
        Ok(Self {
            cfg,
            partials: HashMap::new(),
            buffered: 0,
            recent_done: VecDeque::with_capacity(RECENT_DONE),
            stats: ReassemblyStats::default(),
        })
    }

    /// Body bytes currently reserved by partial messages.
    #[must_use]
    pub fn buffered_bytes(&self) -> usize {
        self.buffered
    }

    /// Number of partial messages held.
    #[must_use]
    pub fn partial_count(&self) -> usize {
        self.partials.len()
    }

    /// The counters.
    #[must_use]
    pub fn stats(&self) -> ReassemblyStats {
        self.stats
    }

    /// When the oldest partial message expires, if any: call
    /// [`Reassembler::handle_timeout`] then.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        // A deadline past what `Instant` can represent never comes.
        self.partials
            .values()
            .filter_map(|p| p.created.checked_add(self.cfg.timeout))
            .min()
    }

    /// Drops partial messages whose timeout has passed at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let timeout = self.cfg.timeout;
        let before = self.partials.len();
        let mut freed = 0;
        self.partials.retain(|_, p| {
            let keep = p
                .created
                .checked_add(timeout)
                .is_none_or(|deadline| deadline > now);
            if !keep {
                freed += p.buf.len();
            }
            keep
        });
        self.buffered -= freed;
        self.stats.expired += (before - self.partials.len()) as u64;
    }

    /// Drops every partial message of `session` on `stream` (for example when
    /// that publisher session has been replaced).
    pub fn forget_session(&mut self, stream: StreamId, session: SessionId) {
        let mut freed = 0;
        self.partials.retain(|k, p| {
            let keep = !(k.0 == stream && k.1 == session);
            if !keep {
                freed += p.buf.len();
            }
            keep
        });
        self.buffered -= freed;
    }

    /// Takes one fragment received at `now` from `session` on `stream`.
    /// Returns the whole message when this fragment completes it.
    ///
    /// # Errors
    ///
    /// A [`ReassemblyError`] when the fragment is rejected; count it and go
    /// on.
    pub fn handle_fragment(
        &mut self,
        now: Instant,
        stream: StreamId,
        session: SessionId,
        frag: &Fragment<'_>,
    ) -> Result<Option<Reassembled>, ReassemblyError> {
        self.handle_timeout(now);
        let res = self.insert(now, (stream, session, frag.frag_id), frag);
        if res.is_err() {
            self.stats.rejected += 1;
        }
        res
    }

    fn insert(
        &mut self,
        now: Instant,
        key: Key,
        frag: &Fragment<'_>,
    ) -> Result<Option<Reassembled>, ReassemblyError> {
        let total = frag.total_len as usize;
        let frag_id = frag.frag_id;
        if total > self.cfg.max_message_size {
            return Err(ReassemblyError::TooLarge {
                total_len: frag.total_len,
                max: self.cfg.max_message_size,
            });
        }
        let start = frag.offset as usize;
        let end = start + frag.data.len();
        if frag.data.is_empty() || end > total {
            // Datagram::decode already rejects these; stay safe for callers
            // that build fragments themselves.
            return Err(ReassemblyError::Inconsistent { frag_id });
        }
        if self.recent_done.contains(&key) {
            self.stats.duplicates += 1;
            return Ok(None);
        }
        if let Some(p) = self.partials.get(&key) {
            if p.kind != frag.inner_kind || p.buf.len() != total {
                self.remove(&key);
                return Err(ReassemblyError::Inconsistent { frag_id });
            }
        } else {
            self.make_room(total);
            self.buffered += total;
            self.partials.insert(
                key,
                Partial {
                    kind: frag.inner_kind,
                    buf: vec![0; total],
                    ranges: Vec::new(),
                    created: now,
                    progress: now,
                    naks: 0,
                    nak_at: None,
                },
            );
        }
        let Some(p) = self.partials.get_mut(&key) else {
            return Ok(None);
        };
        match p.add(start, end, frag.data) {
            Added::Duplicate => {
                self.stats.duplicates += 1;
                Ok(None)
            }
            Added::Conflict => {
                self.remove(&key);
                Err(ReassemblyError::Conflict { frag_id })
            }
            Added::New if p.ranges.len() > MAX_RANGES => {
                self.remove(&key);
                Err(ReassemblyError::TooFragmented { frag_id })
            }
            Added::New if p.ranges.as_slice() == [(0, total)] => {
                let kind = p.kind;
                let body = self.remove(&key).map(|p| p.buf).unwrap_or_default();
                if self.recent_done.len() == RECENT_DONE {
                    self.recent_done.pop_front();
                }
                self.recent_done.push_back(key);
                self.stats.completed += 1;
                Ok(Some(Reassembled { kind, body }))
            }
            Added::New => {
                p.progress = now;
                Ok(None)
            }
        }
    }

    /// The partial messages that have made no progress for `quiet` and were
    /// asked for at most `attempts - 1` times before, with their missing
    /// byte ranges (at most `max_ranges` each): the caller sends a request
    /// for each (PROTOCOL.md §4.7). Each one returned may be returned again
    /// after `retry`, at most `attempts` times in all.
    pub fn poll_missing(
        &mut self,
        now: Instant,
        quiet: Duration,
        retry: Duration,
        attempts: u32,
        max_ranges: usize,
    ) -> Vec<Missing> {
        let mut out = Vec::new();
        for (key, p) in &mut self.partials {
            let due = p
                .nak_at
                .unwrap_or_else(|| p.progress.checked_add(quiet).unwrap_or(p.progress));
            if p.naks >= attempts || now < due {
                continue;
            }
            let mut ranges = Vec::new();
            let mut at = 0usize;
            for &(s, e) in p
                .ranges
                .iter()
                .chain(std::iter::once(&(p.buf.len(), p.buf.len())))
            {
                if s > at && ranges.len() < max_ranges {
                    ranges.push((
                        u32::try_from(at).unwrap_or(u32::MAX),
                        u32::try_from(s).unwrap_or(u32::MAX),
                    ));
                }
                at = e;
            }
            p.naks += 1;
            p.nak_at = now.checked_add(retry);
            if !ranges.is_empty() {
                out.push(Missing {
                    stream: key.0,
                    session: key.1,
                    frag_id: key.2,
                    ranges,
                });
            }
        }
        out
    }

    /// When [`Reassembler::poll_missing`] next has something to return, for
    /// the same `quiet` and `attempts`.
    #[must_use]
    pub fn missing_timeout(&self, quiet: Duration, attempts: u32) -> Option<Instant> {
        self.partials
            .values()
            .filter(|p| p.naks < attempts)
            .filter_map(|p| p.nak_at.or_else(|| p.progress.checked_add(quiet)))
            .min()
    }

    fn remove(&mut self, key: &Key) -> Option<Partial> {
        let p = self.partials.remove(key)?;
        self.buffered -= p.buf.len();
        Some(p)
    }

    /// Evicts the oldest partials until one more of `total` bytes fits.
    fn make_room(&mut self, total: usize) {
        while !self.partials.is_empty()
            && (self.partials.len() >= self.cfg.max_partials
                || self.buffered + total > self.cfg.max_buffered_bytes)
        {
            let oldest = self
                .partials
                .iter()
                .min_by_key(|(_, p)| p.created)
                .map(|(k, _)| *k);
            let Some(oldest) = oldest else { break };
            self.remove(&oldest);
            self.stats.evicted += 1;
        }
    }
}

enum Added {
    New,
    Duplicate,
    Conflict,
}

impl Partial {
    /// Records `data` at `[start, end)`; `end <= buf.len()` is checked by the
    /// caller.
    fn add(&mut self, start: usize, end: usize, data: &[u8]) -> Added {
        // Overlapping bytes must agree with what is held.
        for &(s, e) in &self.ranges {
            if s >= end {
                break;
            }
            if e <= start {
                continue;
            }
            let (lo, hi) = (s.max(start), e.min(end));
            let held = self.buf.get(lo..hi);
            let new = data.get(lo - start..hi - start);
            if held != new {
                return Added::Conflict;
            }
            if s <= start && end <= e {
                return Added::Duplicate;
            }
        }
        if let Some(dst) = self.buf.get_mut(start..end) {
            dst.copy_from_slice(data);
        }
        // Merge with every range that overlaps or touches [start, end).
        let first = self.ranges.partition_point(|&(_, e)| e < start);
        let last = self.ranges.partition_point(|&(s, _)| s <= end);
        let (mut lo, mut hi) = (start, end);
        if let Some(merged) = self.ranges.get(first..last) {
            if let (Some(a), Some(b)) = (merged.first(), merged.last()) {
                lo = lo.min(a.0);
                hi = hi.max(b.1);
            }
        }
        self.ranges.splice(first..last, [(lo, hi)]);
        Added::New
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    use proptest::collection::vec;
    use proptest::prelude::*;
    use proptest::sample::Index;

    use super::*;
    use crate::wire::{Fragments, MessageKind};

    const STREAM: StreamId = StreamId(1);
    const SESSION: SessionId = SessionId(0xfeed);
    const DELTA: u8 = MessageKind::Delta as u8;
    const SNAPSHOT: u8 = MessageKind::LeafSnapshot as u8;

    fn frag(
        frag_id: u32,
        total_len: u32,
        offset: u32,
        inner_kind: u8,
        data: &[u8],
    ) -> Fragment<'_> {
        Fragment {
            frag_id,
            total_len,
            offset,
            inner_kind,
            data,
        }
    }

    /// Every byte of an overlap is compared: a second fragment that differs
    /// from what is held at any single position of the overlap, first and
    /// last included, is a conflict; one that agrees everywhere is not.
    #[test]
    fn a_conflict_at_any_position_of_an_overlap_is_caught() {
        let body: Vec<u8> = (0..40u8).collect();
        let now = Instant::now();
        for (start, end) in [(5, 15), (10, 30), (25, 40), (12, 13), (0, 40)] {
            let overlap = (start.max(10)..end.min(30)).collect::<Vec<usize>>();
            for &pos in &overlap {
                let mut r = reassembler(|_| {});
                let first = frag(9, 40, 10, DELTA, &body[10..30]);
                assert_eq!(r.handle_fragment(now, STREAM, SESSION, &first), Ok(None));
                let mut data = body[start..end].to_vec();
                data[pos - start] ^= 0xff;
                let second = frag(9, 40, start as u32, DELTA, &data);
                assert_eq!(
                    r.handle_fragment(now, STREAM, SESSION, &second),
                    Err(ReassemblyError::Conflict { frag_id: 9 }),
                    "overlap {start}..{end}, byte {pos} differs"
                );
            }
            let mut r = reassembler(|_| {});
            let first = frag(9, 40, 10, DELTA, &body[10..30]);
            assert_eq!(r.handle_fragment(now, STREAM, SESSION, &first), Ok(None));
            let second = frag(9, 40, start as u32, DELTA, &body[start..end]);
            assert!(
                r.handle_fragment(now, STREAM, SESSION, &second).is_ok(),
                "{start}..{end} agrees"
            );
        }
    }

    /// The missing pieces of a partial message are asked for once it has
    /// been quiet for `quiet`, then again every `retry`, at most `attempts`
    /// times, each time at most `max_ranges` ranges in order; and
    /// `missing_timeout` names exactly when the next request is due.
    #[test]
    fn missing_pieces_are_asked_for_when_quiet_then_every_retry_up_to_attempts() {
        let mut r = reassembler(|_| {});
        let t0 = Instant::now();
        let quiet = Duration::from_millis(5);
        let retry = Duration::from_millis(20);
        let tick = Duration::from_micros(1);
        let body: Vec<u8> = (0..100u8).collect();
        // Bytes 10..20, 30..40 and 50..60 arrive.
        for off in [10usize, 30, 50] {
            let f = frag(4, 100, off as u32, DELTA, &body[off..off + 10]);
            assert_eq!(r.handle_fragment(t0, STREAM, SESSION, &f), Ok(None));
        }
        let missing = |ranges: &[(u32, u32)]| {
            vec![Missing {
                stream: STREAM,
                session: SESSION,
                frag_id: 4,
                ranges: ranges.to_vec(),
            }]
        };
        // Not before it has been quiet for `quiet`.
        assert_eq!(r.missing_timeout(quiet, 2), Some(t0 + quiet));
        assert_eq!(
            r.poll_missing(t0 + quiet - tick, quiet, retry, 2, 3),
            vec![]
        );
        // Then the first `max_ranges` gaps, in order.
        let t1 = t0 + quiet;
        assert_eq!(
            r.poll_missing(t1, quiet, retry, 2, 3),
            missing(&[(0, 10), (20, 30), (40, 50)])
        );
        // Again only after `retry`.
        assert_eq!(r.missing_timeout(quiet, 2), Some(t1 + retry));
        assert_eq!(
            r.poll_missing(t1 + retry - tick, quiet, retry, 2, 8),
            vec![]
        );
        assert_eq!(
            r.poll_missing(t1 + retry, quiet, retry, 2, 8),
            missing(&[(0, 10), (20, 30), (40, 50), (60, 100)])
        );
        // Two attempts made: never again for 2, once more for 3.
        assert_eq!(r.missing_timeout(quiet, 2), None);
        assert_eq!(r.poll_missing(t1 + retry * 10, quiet, retry, 2, 8), vec![]);
        assert_eq!(r.missing_timeout(quiet, 3), Some(t1 + retry * 2));
        assert_eq!(
            r.poll_missing(t1 + retry * 2, quiet, retry, 3, 1),
            missing(&[(0, 10)])
        );
        assert_eq!(r.missing_timeout(quiet, 3), None);
        // The rest completes the message all the same.
        for (s, e) in [(0usize, 10usize), (20, 30), (40, 50), (60, 100)] {
            let done = r
                .handle_fragment(
                    t1,
                    STREAM,
                    SESSION,
                    &frag(4, 100, s as u32, DELTA, &body[s..e]),
                )
                .unwrap();
            assert_eq!(done.is_some(), s == 60);
        }
        assert_eq!(r.missing_timeout(quiet, 3), None);
    }

    fn reassembler(f: impl FnOnce(&mut ReassemblyConfig)) -> Reassembler {
        let mut cfg = ReassemblyConfig::default();
        f(&mut cfg);
        Reassembler::new(cfg).unwrap()
    }

    /// A tiny deterministic RNG (SplitMix64) driven by a proptest seed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn body(len: usize, seed: u64) -> Vec<u8> {
        let mut rng = Rng(seed);
        (0..len).map(|_| rng.next() as u8).collect()
    }

    #[track_caller]
    fn assert_bounded(r: &Reassembler) {
        assert!(
            r.buffered_bytes() <= r.cfg.max_buffered_bytes,
            "{} buffered > {}",
            r.buffered_bytes(),
            r.cfg.max_buffered_bytes
        );
        assert!(r.partial_count() <= r.cfg.max_partials);
        // The counter matches what the partials actually hold.
        let held: usize = r.partials.values().map(|p| p.buf.len()).sum();
        assert_eq!(r.buffered_bytes(), held);
        for p in r.partials.values() {
            assert!(p.ranges.len() <= MAX_RANGES);
            assert!(
                p.ranges.windows(2).all(|w| w[0].1 < w[1].0),
                "{:?}",
                p.ranges
            );
            assert!(p.ranges.iter().all(|&(s, e)| s < e && e <= p.buf.len()));
        }
    }

    #[derive(Clone, Debug)]
    struct Spec {
        len: usize,
        seed: u64,
        max_data: usize,
        kind: MessageKind,
    }

    fn spec() -> impl Strategy<Value = Spec> {
        (
            1usize..=20_000,
            any::<u64>(),
            1usize..=4000,
            proptest::sample::select(vec![
                MessageKind::Delta,
                MessageKind::Retransmit,
                MessageKind::LeafSnapshot,
                MessageKind::Nak,
            ]),
        )
            .prop_map(|(len, seed, max_data, kind)| Spec {
                len,
                seed,
                // At most 300 fragments per message keeps the suite fast.
                max_data: max_data.max(len.div_ceil(300)),
                kind,
            })
    }

    /// Message `i` of a test: messages 2k and 2k+1 share frag_id k but belong
    /// to different sessions, so keys must include the session.
    fn key_of(i: usize) -> Key {
        (STREAM, SessionId(1 + (i % 2) as u64), (i / 2) as u32)
    }

    /// What PROTOCOL.md §5 says a delivery does to one message, when no
    /// timeout, eviction or other message is involved.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Outcome {
        /// New bytes held; the message is not complete yet.
        Held,
        /// All its bytes were held already, or the message was completed.
        Duplicate,
        /// It overlaps held bytes with different ones: the partial is dropped.
        Conflict,
        /// It completes the message.
        Complete,
    }

    /// The bytes held for one message since its partial was (re)created.
    struct OneMessage {
        held: Vec<Option<u8>>,
        done: bool,
    }

    impl OneMessage {
        fn deliver(&mut self, offset: usize, data: &[u8]) -> Outcome {
            if self.done {
                return Outcome::Duplicate;
            }
            let slots = &mut self.held[offset..offset + data.len()];
            if slots
                .iter()
                .zip(data)
                .any(|(h, d)| h.is_some_and(|h| h != *d))
            {
                self.held.fill(None);
                return Outcome::Conflict;
            }
            if slots.iter().all(Option::is_some) {
                return Outcome::Duplicate;
            }
            for (h, &d) in slots.iter_mut().zip(data) {
                *h = Some(d);
            }
            if self.held.iter().all(Option::is_some) {
                self.done = true;
                Outcome::Complete
            } else {
                Outcome::Held
            }
        }
    }

    /// A non-empty range `[start, end)` of `0..len` from two indices.
    fn range_in(len: usize, (s, e): (Index, Index)) -> (usize, usize) {
        let start = s.index(len);
        (start, start + 1 + e.index(len - start))
    }

    proptest! {
        #[test]
        fn any_delivery_reassembles_correctly_within_bounds(
            specs in vec(spec(), 1..=4),
            seed in any::<u64>(),
            lossy in any::<bool>(),
            tight in any::<bool>(),
            tight_partials in 1usize..=3,
            tight_extra in 0usize..=25_000,
            step_us in prop_oneof![Just(0u64), 0u64..=2_000, 0u64..=300_000],
        ) {
            let timeout = Duration::from_secs(1);
            let mut cfg = ReassemblyConfig::default();
            cfg.max_message_size(20_000).timeout(timeout);
            if tight {
                cfg.max_partials(tight_partials).max_buffered_bytes(20_000 + tight_extra);
            }
            let mut r = Reassembler::new(cfg).unwrap();

            let bodies: Vec<Vec<u8>> = specs.iter().map(|s| body(s.len, s.seed)).collect();
            let frags: Vec<Vec<Fragment<'_>>> = specs
                .iter()
                .zip(&bodies)
                .enumerate()
                .map(|(i, (s, b))| Fragments::new(key_of(i).2, s.kind, b, s.max_data).collect())
                .collect();

            // Each fragment is delivered 0..=3 times (0 only when lossy), all
            // copies in one random order.
            let mut rng = Rng(seed);
            let mut lost = vec![false; specs.len()];
            let mut deliveries: Vec<(usize, usize)> = Vec::new();
            for (i, fs) in frags.iter().enumerate() {
                for j in 0..fs.len() {
                    let copies = match rng.below(20) {
                        0..=1 if lossy => 0,
                        0..=14 => 1,
                        15..=18 => 2,
                        _ => 3,
                    };
                    lost[i] |= copies == 0;
                    deliveries.extend(std::iter::repeat_n((i, j), copies));
                }
            }
            for k in (1..deliveries.len()).rev() {
                deliveries.swap(k, rng.below(k as u64 + 1) as usize);
            }

            let t0 = Instant::now();
            let at = |step: usize| t0 + Duration::from_micros(step as u64 * step_us);
            let mut first_at: Vec<Option<Instant>> = vec![None; specs.len()];
            let mut last_at: Vec<Option<Instant>> = vec![None; specs.len()];
            let mut completed = vec![0u32; specs.len()];
            for (step, &(i, j)) in deliveries.iter().enumerate() {
                let now = at(step);
                first_at[i].get_or_insert(now);
                last_at[i] = Some(now);
                let (stream, session, _) = key_of(i);
                // Honest fragments are never rejected.
                let out = r.handle_fragment(now, stream, session, &frags[i][j]).unwrap();
                if let Some(whole) = out {
                    prop_assert!(!lost[i], "message {} completed with a fragment lost", i);
                    prop_assert_eq!(whole.kind, specs[i].kind as u8);
                    prop_assert!(whole.body == bodies[i], "message {} corrupted", i);
                    completed[i] += 1;
                }
                assert_bounded(&r);
            }
            // Never twice (fewer than RECENT_DONE messages per test).
            prop_assert!(completed.iter().all(|&c| c <= 1), "{:?}", completed);
            let stats = r.stats();
            prop_assert_eq!(stats.completed, completed.iter().map(|&c| u64::from(c)).sum::<u64>());
            prop_assert_eq!(stats.rejected, 0);

            let in_time = (0..specs.len()).all(|i| match (first_at[i], last_at[i]) {
                (Some(f), Some(l)) => l - f < timeout,
                _ => true,
            });
            if !lossy && !tight && in_time {
                prop_assert!(completed.iter().all(|&c| c == 1), "{:?}", completed);
                prop_assert_eq!(r.buffered_bytes(), 0);
                prop_assert_eq!(r.partial_count(), 0);
                prop_assert_eq!(r.poll_timeout(), None);
                let fragments: usize = frags.iter().map(Vec::len).sum();
                prop_assert_eq!(stats.duplicates, (deliveries.len() - fragments) as u64);
                prop_assert_eq!(stats.evicted, 0);
                prop_assert_eq!(stats.expired, 0);
            }
        }

        /// Arbitrary (possibly hostile) fragments for a few message ids:
        /// whatever happens, limits hold and the bookkeeping stays consistent.
        #[test]
        fn hostile_fragments_keep_the_bounds(
            frags in vec(
                (0u32..4, 1u32..=3000, 0u32..=3000, 1u8..=3, vec(any::<u8>(), 1..200), 0u64..400_000),
                1..200,
            ),
            max_partials in 1usize..=4,
        ) {
            let mut r = reassembler(|c| {
                c.max_message_size(2500)
                    .max_buffered_bytes(5000)
                    .max_partials(max_partials)
                    .timeout(Duration::from_millis(100));
            });
            let t0 = Instant::now();
            let mut now = t0;
            let mut rejected = 0;
            for (id, total, offset, kind, data, dt_us) in &frags {
                now += Duration::from_micros(*dt_us);
                let f = frag(*id, *total, *offset, *kind, data);
                match r.handle_fragment(now, STREAM, SESSION, &f) {
                    Ok(Some(whole)) => {
                        prop_assert_eq!(whole.kind, *kind);
                        prop_assert_eq!(whole.body.len(), *total as usize);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        rejected += 1;
                        if *total > 2500 {
                            prop_assert_eq!(e, ReassemblyError::TooLarge { total_len: *total, max: 2500 });
                        }
                    }
                }
                assert_bounded(&r);
                if let Some(deadline) = r.poll_timeout() {
                    prop_assert!(deadline > now);
                }
            }
            prop_assert_eq!(r.stats().rejected, rejected);
        }

        /// Two fragments `a` and `b` of one message overlap; with `corrupt`,
        /// `b` differs from the body at exactly one byte of the overlap (its
        /// first, its last or any). They are delivered in any order, some
        /// twice, with other pieces of the body and a tiling of it. Each
        /// result is the one §5 prescribes given what the live partial holds
        /// (see [`OneMessage`]). With `corrupt` the last byte of the body is
        /// never sent, so nothing completes and the disagreement must be
        /// caught: at least one `Conflict`, each dropping the partial.
        /// Without, nothing is rejected and the message completes once,
        /// byte-identical, exactly when its last missing byte arrives.
        #[test]
        fn a_conflict_anywhere_in_an_overlap_drops_the_partial(
            len in 2usize..=64,
            seed in any::<u64>(),
            overlap in (any::<Index>(), prop_oneof![Just(0usize), 0usize..64]),
            outer in (any::<Index>(), any::<Index>(), any::<Index>(), any::<Index>()),
            at in prop_oneof![Just(0usize), Just(usize::MAX), any::<usize>()],
            flip in 1u8..=255,
            corrupt in any::<bool>(),
            others in vec((any::<Index>(), any::<Index>()), 0..4),
            cuts in vec(any::<Index>(), 0..6),
        ) {
            let whole = body(len, seed);
            // The overlap [lo, hi) and two fragments that both cover it.
            let lo = overlap.0.index(len);
            let hi = lo + 1 + overlap.1 % (len - lo);
            let a = (outer.0.index(lo + 1), hi + outer.1.index(len - hi + 1));
            let b = (outer.2.index(lo + 1), hi + outer.3.index(len - hi + 1));
            let pos = match at {
                0 => lo,
                usize::MAX => hi - 1,
                _ => lo + at % (hi - lo),
            };
            let mut b_data = whole[b.0..b.1].to_vec();
            if corrupt {
                b_data[pos - b.0] ^= flip;
            }
            let mut pieces: Vec<(usize, Vec<u8>)> =
                vec![(a.0, whole[a.0..a.1].to_vec()), (b.0, b_data)];
            for &r in &others {
                let (s, e) = range_in(len, r);
                pieces.push((s, whole[s..e].to_vec()));
            }
            let mut bounds: Vec<usize> = cuts.iter().map(|c| c.index(len)).collect();
            bounds.extend([0, len]);
            bounds.sort_unstable();
            bounds.dedup();
            for w in bounds.windows(2) {
                pieces.push((w[0], whole[w[0]..w[1]].to_vec()));
            }
            let total = if corrupt { len + 1 } else { len };

            let mut rng = Rng(seed ^ 0x5eed);
            let mut order: Vec<usize> = (0..pieces.len())
                .flat_map(|i| std::iter::repeat_n(i, 1 + usize::from(rng.below(4) == 0)))
                .collect();
            for k in (1..order.len()).rev() {
                order.swap(k, rng.below(k as u64 + 1) as usize);
            }

            let mut r = reassembler(|_| {});
            let mut model = OneMessage { held: vec![None; total], done: false };
            let now = Instant::now();
            let (mut conflicts, mut completed) = (0u64, 0u64);
            for &i in &order {
                let (offset, data) = &pieces[i];
                let f = frag(3, total as u32, *offset as u32, DELTA, data);
                let got = r.handle_fragment(now, STREAM, SESSION, &f);
                let want = model.deliver(*offset, data);
                let what = format!("piece {i} ({offset}..{}) of {pieces:?}", offset + data.len());
                match want {
                    Outcome::Held | Outcome::Duplicate => {
                        prop_assert_eq!(got, Ok(None), "{} expected {:?}", what, want);
                    }
                    Outcome::Conflict => {
                        prop_assert_eq!(got, Err(ReassemblyError::Conflict { frag_id: 3 }), "{}", what);
                        conflicts += 1;
                    }
                    Outcome::Complete => {
                        let body: Vec<u8> = model.held.iter().map(|b| b.unwrap()).collect();
                        prop_assert_eq!(got, Ok(Some(Reassembled { kind: DELTA, body })), "{}", what);
                        completed += 1;
                    }
                }
                // A dropped partial holds nothing; a live one its whole reservation.
                let live = model.held.iter().any(Option::is_some) && !model.done;
                prop_assert_eq!(r.partial_count(), usize::from(live), "{}", what);
                prop_assert_eq!(r.buffered_bytes(), if live { total } else { 0 });
            }
            let stats = r.stats();
            prop_assert_eq!(stats.rejected, conflicts);
            prop_assert_eq!(stats.completed, completed);
            if corrupt {
                prop_assert!(conflicts >= 1, "byte {} of {:?} and {:?} differs, never caught", pos, a, b);
                prop_assert_eq!(completed, 0);
            } else {
                prop_assert_eq!(conflicts, 0);
                prop_assert_eq!(completed, 1);
                prop_assert!(model.done && model.held.iter().map(|b| b.unwrap()).eq(whole.iter().copied()));
            }
        }
    }

    #[test]
    fn flood_of_first_fragments_is_bounded_by_bytes() {
        let mut r = reassembler(|c| {
            c.max_message_size(64 << 10)
                .max_buffered_bytes(1 << 20)
                .max_partials(10_000);
        });
        let now = Instant::now();
        let data = [0x42u8; 100];
        let n = 5_000u32;
        for id in 0..n {
            let f = frag(id, 64 << 10, 0, DELTA, &data);
            assert_eq!(r.handle_fragment(now, STREAM, SESSION, &f), Ok(None));
            assert!(r.buffered_bytes() <= 1 << 20);
        }
        assert_eq!(r.partial_count(), 16);
        assert_eq!(r.buffered_bytes(), 1 << 20);
        assert_eq!(r.stats().evicted, u64::from(n) - 16);
        assert_bounded(&r);
    }

    #[test]
    fn flood_of_first_fragments_is_bounded_by_count() {
        let mut r = reassembler(|c| {
            c.max_partials(8);
        });
        let t0 = Instant::now();
        let data = [1u8; 10];
        for id in 0..3_000u32 {
            // Distinct, increasing creation times make "oldest" unambiguous.
            let now = t0 + Duration::from_nanos(u64::from(id));
            let f = frag(id, 1_000_000, 0, DELTA, &data);
            assert_eq!(r.handle_fragment(now, STREAM, SESSION, &f), Ok(None));
            assert!(r.partial_count() <= 8);
        }
        assert_eq!(r.partial_count(), 8);
        assert_eq!(r.buffered_bytes(), 8 * 1_000_000);
        assert_eq!(r.stats().evicted, 3_000 - 8);
        // The survivors are the newest eight.
        let mut ids: Vec<u32> = r.partials.keys().map(|k| k.2).collect();
        ids.sort_unstable();
        assert_eq!(ids, (2_992..3_000).collect::<Vec<_>>());
    }

    #[test]
    fn eviction_takes_the_oldest_and_others_still_complete() {
        let mut r = reassembler(|c| {
            c.max_partials(2);
        });
        let t0 = Instant::now();
        let t = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(
            r.handle_fragment(t(0), STREAM, SESSION, &frag(1, 4, 0, DELTA, b"ab")),
            Ok(None)
        );
        assert_eq!(
            r.handle_fragment(t(1), STREAM, SESSION, &frag(2, 4, 0, DELTA, b"cd")),
            Ok(None)
        );
        assert_eq!(
            r.handle_fragment(t(2), STREAM, SESSION, &frag(3, 4, 0, DELTA, b"ef")),
            Ok(None)
        );
        assert_eq!(r.stats().evicted, 1);
        // 2 and 3 survive and complete; 1 was evicted and starts over.
        let two = r
            .handle_fragment(t(3), STREAM, SESSION, &frag(2, 4, 2, DELTA, b"CD"))
            .unwrap();
        assert_eq!(two.unwrap().body, b"cdCD");
        let three = r
            .handle_fragment(t(3), STREAM, SESSION, &frag(3, 4, 2, DELTA, b"EF"))
            .unwrap();
        assert_eq!(three.unwrap().body, b"efEF");
        assert_eq!(
            r.handle_fragment(t(4), STREAM, SESSION, &frag(1, 4, 2, DELTA, b"AB")),
            Ok(None)
        );
        assert_eq!(r.partial_count(), 1);
        assert_eq!(r.buffered_bytes(), 4);
    }

    #[test]
    fn changed_kind_is_inconsistent_and_drops_the_partial() {
        let mut r = reassembler(|_| {});
        let now = Instant::now();
        assert_eq!(
            r.handle_fragment(now, STREAM, SESSION, &frag(7, 6, 0, DELTA, b"ab")),
            Ok(None)
        );
        assert_eq!(
            r.handle_fragment(now, STREAM, SESSION, &frag(7, 6, 2, SNAPSHOT, b"cd")),
            Err(ReassemblyError::Inconsistent { frag_id: 7 })
        );
        assert_eq!(r.partial_count(), 0);
        assert_eq!(r.buffered_bytes(), 0);
        assert_eq!(r.stats().rejected, 1);
        // The rest of the original message no longer completes it.
        assert_eq!(
            r.handle_fragment(now, STREAM, SESSION, &frag(7, 6, 2, DELTA, b"cd")),
            Ok(None)
        );
        assert_eq!(
            r.handle_fragment(now, STREAM, SESSION, &frag(7, 6, 4, DELTA, b"ef")),
            Ok(None)
        );
        assert_eq!(r.stats().completed, 0);
    }

    #[test]
    fn changed_total_len_is_inconsistent_and_drops_the_partial() {
        let mut r = reassembler(|_| {});
        let now = Instant::now();
        assert_eq!(
            r.handle_fragment(now, STREAM, SESSION, &frag(7, 6, 0, DELTA, b"ab")),
            Ok(None)
        );
        assert_eq!(
            r.handle_fragment(now, STREAM, SESSION, &frag(7, 8, 2, DELTA, b"cd")),
            Err(ReassemblyError::Inconsistent { frag_id: 7 })
        );
        assert_eq!(r.partial_count(), 0);
        assert_eq!(r.buffered_bytes(), 0);
    }

    #[test]
    fn malformed_caller_built_fragments_are_rejected() {
        let mut r = reassembler(|_| {});
        let now = Instant::now();
        for f in [
            frag(1, 10, 0, DELTA, b""),
            frag(1, 10, 8, DELTA, b"abc"),
            frag(1, 0, 0, DELTA, b"a"),
        ] {
            assert_eq!(
                r.handle_fragment(now, STREAM, SESSION, &f),
                Err(ReassemblyError::Inconsistent { frag_id: 1 })
            );
        }
        assert_eq!(r.partial_count(), 0);
        assert_eq!(r.stats().rejected, 3);
    }

    #[test]
    fn conflicting_overlap_drops_the_partial() {
        let mut r = reassembler(|_| {});
        let now = Instant::now();
        assert_eq!(
            r.handle_fragment(now, STREAM, SESSION, &frag(3, 10, 0, DELTA, b"abcdef")),
            Ok(None)
        );
        assert_eq!(
            r.handle_fragment(now, STREAM, SESSION, &frag(3, 10, 4, DELTA, b"eXgh")),
            Err(ReassemblyError::Conflict { frag_id: 3 })
        );
        assert_eq!(r.partial_count(), 0);
        assert_eq!(r.buffered_bytes(), 0);
        // A conflict with the second of two held ranges is caught too.
        assert_eq!(
            r.handle_fragment(now, STREAM, SESSION, &frag(4, 10, 0, DELTA, b"ab")),
            Ok(None)
        );
        assert_eq!(
            r.handle_fragment(now, STREAM, SESSION, &frag(4, 10, 6, DELTA, b"gh")),
            Ok(None)
        );
        assert_eq!(
            r.handle_fragment(now, STREAM, SESSION, &frag(4, 10, 1, DELTA, b"bcdefgX")),
            Err(ReassemblyError::Conflict { frag_id: 4 })
        );
        assert_eq!(r.partial_count(), 0);
    }

    #[test]
    fn agreeing_overlap_and_duplicates_are_accepted() {
        let mut r = reassembler(|_| {});
        let now = Instant::now();
        let whole = b"abcdefghij";
        assert_eq!(
            r.handle_fragment(now, STREAM, SESSION, &frag(3, 10, 0, DELTA, &whole[..6])),
            Ok(None)
        );
        // Contained in what is held: a duplicate.
        assert_eq!(
            r.handle_fragment(now, STREAM, SESSION, &frag(3, 10, 2, DELTA, &whole[2..5])),
            Ok(None)
        );
        assert_eq!(r.stats().duplicates, 1);
        // Overlapping with agreeing bytes and extending: completes.
        let done = r
            .handle_fragment(now, STREAM, SESSION, &frag(3, 10, 4, DELTA, &whole[4..]))
            .unwrap();
        assert_eq!(
            done,
            Some(Reassembled {
                kind: DELTA,
                body: whole.to_vec()
            })
        );
        assert_eq!(r.stats().duplicates, 1);
        assert_eq!(r.stats().completed, 1);
    }

    #[test]
    fn too_large() {
        let mut r = reassembler(|c| {
            c.max_message_size(1000);
        });
        let now = Instant::now();
        assert_eq!(
            r.handle_fragment(now, STREAM, SESSION, &frag(1, 1001, 0, DELTA, b"a")),
            Err(ReassemblyError::TooLarge {
                total_len: 1001,
                max: 1000
            })
        );
        assert_eq!(
            r.handle_fragment(now, STREAM, SESSION, &frag(1, u32::MAX, 0, DELTA, b"a")),
            Err(ReassemblyError::TooLarge {
                total_len: u32::MAX,
                max: 1000
            })
        );
        assert_eq!(r.partial_count(), 0);
        assert_eq!(r.stats().rejected, 2);
        // At the limit is fine.
        assert_eq!(
            r.handle_fragment(now, STREAM, SESSION, &frag(1, 1000, 0, DELTA, b"a")),
            Ok(None)
        );
        assert_eq!(r.buffered_bytes(), 1000);
    }

    #[test]
    fn too_fragmented() {
        let mut r = reassembler(|_| {});
        let now = Instant::now();
        let total = 2 * MAX_RANGES as u32 + 10;
        // Alternate 1-byte fragments: each one is a new disjoint range.
        for i in 0..MAX_RANGES as u32 {
            assert_eq!(
                r.handle_fragment(now, STREAM, SESSION, &frag(9, total, 2 * i, DELTA, b"x")),
                Ok(None)
            );
        }
        assert_eq!(r.partials[&(STREAM, SESSION, 9)].ranges.len(), MAX_RANGES);
        assert_eq!(
            r.handle_fragment(
                now,
                STREAM,
                SESSION,
                &frag(9, total, 2 * MAX_RANGES as u32, DELTA, b"x")
            ),
            Err(ReassemblyError::TooFragmented { frag_id: 9 })
        );
        assert_eq!(r.partial_count(), 0);
        assert_eq!(r.buffered_bytes(), 0);
    }

    #[test]
    fn filling_gaps_merges_ranges() {
        let mut r = reassembler(|_| {});
        let now = Instant::now();
        let total = 2 * MAX_RANGES as u32;
        for i in 0..MAX_RANGES as u32 {
            assert_eq!(
                r.handle_fragment(now, STREAM, SESSION, &frag(9, total, 2 * i, DELTA, b"x")),
                Ok(None)
            );
        }
        // Filling the gaps merges everything back into one range.
        let mut done = None;
        for i in 0..MAX_RANGES as u32 {
            if let Some(m) = r
                .handle_fragment(
                    now,
                    STREAM,
                    SESSION,
                    &frag(9, total, 2 * i + 1, DELTA, b"y"),
                )
                .unwrap()
            {
                assert!(done.is_none());
                done = Some(m);
            } else {
                let ranges = r.partials[&(STREAM, SESSION, 9)].ranges.len();
                assert_eq!(ranges, MAX_RANGES - i as usize - 1);
            }
        }
        let body = done.unwrap().body;
        assert_eq!(body, b"xy".repeat(MAX_RANGES));
    }

    #[test]
    fn timeout_expires_partials_at_their_deadline() {
        let timeout = Duration::from_millis(500);
        let mut r = reassembler(|c| {
            c.timeout(timeout);
        });
        let t0 = Instant::now();
        assert_eq!(r.poll_timeout(), None);
        assert_eq!(
            r.handle_fragment(t0, STREAM, SESSION, &frag(1, 4, 0, DELTA, b"ab")),
            Ok(None)
        );
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(
            r.handle_fragment(t1, STREAM, SESSION, &frag(2, 6, 0, DELTA, b"ab")),
            Ok(None)
        );
        assert_eq!(r.poll_timeout(), Some(t0 + timeout));

        r.handle_timeout(t0 + timeout - Duration::from_nanos(1));
        assert_eq!(r.partial_count(), 2);
        r.handle_timeout(t0 + timeout);
        assert_eq!(r.partial_count(), 1);
        assert_eq!(r.buffered_bytes(), 6);
        assert_eq!(r.stats().expired, 1);
        assert_eq!(r.poll_timeout(), Some(t1 + timeout));

        // Expiry also happens inside handle_fragment: the rest of message 2
        // arrives too late and starts a new partial instead of completing.
        let late = t1 + timeout;
        assert_eq!(
            r.handle_fragment(late, STREAM, SESSION, &frag(2, 6, 2, DELTA, b"cdef")),
            Ok(None)
        );
        assert_eq!(r.stats().expired, 2);
        assert_eq!(r.partial_count(), 1);
        assert_eq!(r.poll_timeout(), Some(late + timeout));
        r.handle_timeout(late + timeout);
        assert_eq!(r.partial_count(), 0);
        assert_eq!(r.buffered_bytes(), 0);
        assert_eq!(r.poll_timeout(), None);
    }

    #[test]
    fn a_message_completing_just_in_time_is_delivered() {
        let timeout = Duration::from_millis(500);
        let mut r = reassembler(|c| {
            c.timeout(timeout);
        });
        let t0 = Instant::now();
        assert_eq!(
            r.handle_fragment(t0, STREAM, SESSION, &frag(1, 4, 0, DELTA, b"ab")),
            Ok(None)
        );
        let just = t0 + timeout - Duration::from_nanos(1);
        let done = r
            .handle_fragment(just, STREAM, SESSION, &frag(1, 4, 2, DELTA, b"cd"))
            .unwrap();
        assert_eq!(done.unwrap().body, b"abcd");
    }

    #[test]
    fn huge_timeout_does_not_overflow() {
        // `Duration::MAX` passes validation ("never expire"); the deadline
        // arithmetic must not overflow `Instant`.
        let mut r = reassembler(|c| {
            c.timeout(Duration::MAX);
        });
        let t0 = Instant::now();
        assert_eq!(
            r.handle_fragment(t0, STREAM, SESSION, &frag(1, 4, 0, DELTA, b"ab")),
            Ok(None)
        );
        assert_eq!(
            r.handle_fragment(
                t0 + Duration::from_secs(86_400 * 365),
                STREAM,
                SESSION,
                &frag(2, 4, 0, DELTA, b"ab")
            ),
            Ok(None)
        );
        r.handle_timeout(t0 + Duration::from_secs(86_400 * 3650));
        assert_eq!(r.partial_count(), 2);
        assert_eq!(r.poll_timeout(), None);
    }

    #[test]
    fn forget_session_drops_only_that_session() {
        let mut r = reassembler(|_| {});
        let now = Instant::now();
        let other_session = SessionId(0xbeef);
        let other_stream = StreamId(2);
        for (stream, session) in [
            (STREAM, SESSION),
            (STREAM, other_session),
            (other_stream, SESSION),
        ] {
            assert_eq!(
                r.handle_fragment(now, stream, session, &frag(1, 4, 0, DELTA, b"ab")),
                Ok(None)
            );
            assert_eq!(
                r.handle_fragment(now, stream, session, &frag(2, 8, 0, DELTA, b"ab")),
                Ok(None)
            );
        }
        assert_eq!(r.partial_count(), 6);
        assert_eq!(r.buffered_bytes(), 36);
        r.forget_session(STREAM, SESSION);
        assert_eq!(r.partial_count(), 4);
        assert_eq!(r.buffered_bytes(), 24);
        assert_bounded(&r);
        // Forgotten: the rest does not complete; others still do.
        assert_eq!(
            r.handle_fragment(now, STREAM, SESSION, &frag(1, 4, 2, DELTA, b"cd")),
            Ok(None)
        );
        for (stream, session) in [(STREAM, other_session), (other_stream, SESSION)] {
            let done = r
                .handle_fragment(now, stream, session, &frag(1, 4, 2, DELTA, b"cd"))
                .unwrap();
            assert_eq!(done.unwrap().body, b"abcd");
        }
        // Forgetting an unknown session is a no-op.
        r.forget_session(StreamId(99), SessionId(99));
        assert_eq!(r.partial_count(), 3);
    }

    #[test]
    fn duplicates_after_completion_are_dropped() {
        let mut r = reassembler(|_| {});
        let now = Instant::now();
        let a = frag(5, 4, 0, DELTA, b"ab");
        let b = frag(5, 4, 2, DELTA, b"cd");
        assert_eq!(r.handle_fragment(now, STREAM, SESSION, &a), Ok(None));
        assert!(r
            .handle_fragment(now, STREAM, SESSION, &b)
            .unwrap()
            .is_some());
        for f in [a, b, a] {
            assert_eq!(r.handle_fragment(now, STREAM, SESSION, &f), Ok(None));
        }
        assert_eq!(
            r.partial_count(),
            0,
            "a late duplicate started a new partial"
        );
        assert_eq!(r.stats().duplicates, 3);
        assert_eq!(r.stats().completed, 1);
        // A single-fragment message duplicated is delivered once too.
        let one = frag(6, 3, 0, DELTA, b"xyz");
        assert!(r
            .handle_fragment(now, STREAM, SESSION, &one)
            .unwrap()
            .is_some());
        assert_eq!(r.handle_fragment(now, STREAM, SESSION, &one), Ok(None));
        // The same frag_id in another session is another message.
        assert!(r
            .handle_fragment(now, STREAM, SessionId(1), &one)
            .unwrap()
            .is_some());
    }

    #[test]
    fn completed_ids_are_remembered_for_a_bounded_window() {
        let mut r = reassembler(|_| {});
        let now = Instant::now();
        let first = frag(0, 1, 0, DELTA, b"x");
        assert!(r
            .handle_fragment(now, STREAM, SESSION, &first)
            .unwrap()
            .is_some());
        for id in 1..RECENT_DONE as u32 {
            assert!(r
                .handle_fragment(now, STREAM, SESSION, &frag(id, 1, 0, DELTA, b"x"))
                .unwrap()
                .is_some());
            // Still within the window: dropped.
            assert_eq!(r.handle_fragment(now, STREAM, SESSION, &first), Ok(None));
        }
        assert_eq!(r.recent_done.len(), RECENT_DONE);
        // One more completion pushes id 0 out of the window.
        assert!(r
            .handle_fragment(now, STREAM, SESSION, &frag(1000, 1, 0, DELTA, b"x"))
            .unwrap()
            .is_some());
        assert_eq!(r.recent_done.len(), RECENT_DONE);
        assert!(r
            .handle_fragment(now, STREAM, SESSION, &first)
            .unwrap()
            .is_some());
    }

    #[test]
    fn reassembled_message_decodes_or_reports() {
        let ok = Reassembled {
            kind: 0x06,
            body: [0u8; 20].to_vec(),
        };
        assert!(matches!(ok.message(), Ok(Message::Heartbeat(_))));
        let short = Reassembled {
            kind: 0x06,
            body: vec![0; 3],
        };
        assert_eq!(short.message().unwrap_err().code(), "body_too_short");
        let critical = Reassembled {
            kind: 0x90,
            body: vec![1],
        };
        assert_eq!(
            critical.message().unwrap_err(),
            DecodeError::UnknownCriticalKind { kind: 0x90 }
        );
        let padding = Reassembled {
            kind: 0x00,
            body: vec![1],
        };
        assert_eq!(padding.message().unwrap_err(), DecodeError::Empty);
    }

    #[test]
    fn config_validation() {
        assert_eq!(ReassemblyConfig::default().validate(), Ok(()));
        let field_of = |f: fn(&mut ReassemblyConfig)| {
            let mut cfg = ReassemblyConfig::default();
            f(&mut cfg);
            let err = cfg.validate().unwrap_err();
            assert_eq!(Reassembler::new(cfg).unwrap_err(), err);
            assert!(!err.to_string().is_empty());
            let ConfigError::OutOfRange { field, .. } = err else {
                panic!("{err}");
            };
            field
        };
        assert_eq!(
            field_of(|c| {
                c.max_message_size(0);
            }),
            "reassembly.max_message_size"
        );
        assert_eq!(
            field_of(|c| {
                c.max_message_size(u32::MAX as usize + 1)
                    .max_buffered_bytes(usize::MAX);
            }),
            "reassembly.max_message_size"
        );
        assert_eq!(
            field_of(|c| {
                c.max_message_size(1000).max_buffered_bytes(999);
            }),
            "reassembly.max_buffered_bytes"
        );
        assert_eq!(
            field_of(|c| {
                c.max_partials(0);
            }),
            "reassembly.max_partials"
        );
        assert_eq!(
            field_of(|c| {
                c.timeout(Duration::ZERO);
            }),
            "reassembly.timeout"
        );
        // Boundaries that are accepted.
        let mut cfg = ReassemblyConfig::default();
        cfg.max_message_size(u32::MAX as usize)
            .max_buffered_bytes(u32::MAX as usize)
            .max_partials(1)
            .timeout(Duration::from_nanos(1));
        assert_eq!(cfg.validate(), Ok(()));
        let mut cfg = ReassemblyConfig::default();
        cfg.max_message_size(1).max_buffered_bytes(1);
        assert!(Reassembler::new(cfg).is_ok());
    }

    #[test]
    fn keys_are_independent() {
        // Interleaved fragments of messages with the same frag_id on
        // different sessions do not mix.
        let mut r = reassembler(|_| {});
        let now = Instant::now();
        let mut done = HashMap::new();
        let parts: [(u64, u32, &[u8]); 4] =
            [(1, 0, b"ab"), (2, 0, b"AB"), (2, 2, b"CD"), (1, 2, b"cd")];
        for (session, offset, data) in parts {
            if let Some(m) = r
                .handle_fragment(
                    now,
                    STREAM,
                    SessionId(session),
                    &frag(0, 4, offset, DELTA, data),
                )
                .unwrap()
            {
                done.insert(session, m.body);
            }
        }
        assert_eq!(done[&1], b"abcd");
        assert_eq!(done[&2], b"ABCD");
    }
}
