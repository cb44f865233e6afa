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
    /// the same message; the partial message is dropped.
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
}

/// Puts fragmented messages back together; see the [module docs](self).
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
        self.partials
            .values()
            .map(|p| p.created + self.cfg.timeout)
            .min()
    }

    /// Drops partial messages whose timeout has passed at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let timeout = self.cfg.timeout;
        let before = self.partials.len();
        let mut freed = 0;
        self.partials.retain(|_, p| {
            let keep = p.created + timeout > now;
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
            Added::New => Ok(None),
        }
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
