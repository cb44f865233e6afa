//! What a relay holds of a session to answer NAKs with: recent datagrams
//! that may be repeated, indexed by the delta sequence numbers and
//! fragments they carry, plus a record of every datagram's bytes to drop
//! duplicates.
//!
//! Nothing here trusts a datagram's claims to order it: datagrams are
//! numbered by arrival, evicted by arrival and by bytes, and each
//! sequence number indexes up to [`CANDIDATES`] datagrams, so one forged
//! datagram can neither evict real ones early nor hide one (a keyless
//! relay cannot tell them apart; the subscribers can, with a key).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

/// Datagrams kept per sequence number or fragment id: the first ones
/// heard with distinct bytes.
pub(crate) const CANDIDATES: usize = 2;
/// Most datagrams one fragmented message is indexed to.
const MAX_PER_FRAGMENT: usize = 256;

/// A datagram held for repeating.
#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) bytes: Arc<[u8]>,
    /// Its arrival number in the session (every datagram forwarded counts).
    pub(crate) number: u64,
    seqs: Vec<u64>,
    frags: Vec<u32>,
    /// When it was last repeated, and how often.
    pub(crate) last_repeat: Option<Instant>,
    pub(crate) repeats: u32,
}

/// A session's repeatable datagrams, by arrival.
#[derive(Debug)]
pub(crate) struct History {
    held: VecDeque<Held>,
    bytes: usize,
    by_seq: HashMap<u64, Vec<u64>>,
    by_frag: HashMap<u32, Vec<u64>>,
    max_datagrams: usize,
    max_bytes: usize,
}

impl History {
    pub(crate) fn new(max_datagrams: usize, max_bytes: usize) -> Self {
        Self {
            held: VecDeque::new(),
            bytes: 0,
            by_seq: HashMap::new(),
            by_frag: HashMap::new(),
            max_datagrams,
            max_bytes,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.held.len()
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Holds a datagram numbered `number` (above every number held).
    pub(crate) fn insert(&mut self, number: u64, bytes: Arc<[u8]>, seqs: &[u64], frags: &[u32]) {
        if bytes.len() > self.max_bytes || self.max_datagrams == 0 {
            return;
        }
        while self.held.len() >= self.max_datagrams || self.bytes + bytes.len() > self.max_bytes {
            if !self.evict_oldest() {
                break;
            }
        }
        for &s in seqs {
            let v = self.by_seq.entry(s).or_default();
            if v.len() < CANDIDATES {
                v.push(number);
            }
        }
        for &f in frags {
            let v = self.by_frag.entry(f).or_default();
            if v.len() < MAX_PER_FRAGMENT && v.last() != Some(&number) {
                v.push(number);
            }
        }
        self.bytes += bytes.len();
        self.held.push_back(Held {
            bytes,
            number,
            seqs: seqs.to_vec(),
            frags: frags.to_vec(),
            last_repeat: None,
            repeats: 0,
        });
    }

    /// Drops what arrived `fresh` or more datagrams before `next`: a
    /// subscriber's replay window no longer takes it (PROTOCOL.md §11.4).
    pub(crate) fn expire(&mut self, next: u64, fresh: u64) {
        while self
            .held
            .front()
            .is_some_and(|h| next.saturating_sub(h.number) >= fresh)
        {
            self.evict_oldest();
        }
    }

    fn evict_oldest(&mut self) -> bool {
        let Some(h) = self.held.pop_front() else {
            return false;
        };
        self.bytes -= h.bytes.len();
        for s in &h.seqs {
            unindex(&mut self.by_seq, *s, h.number);
        }
        for f in &h.frags {
            unindex(&mut self.by_frag, *f, h.number);
        }
        true
    }

    /// The held datagram numbered `number`.
    pub(crate) fn get_mut(&mut self, number: u64) -> Option<&mut Held> {
        let first = self.held.front()?.number;
        // Numbers are increasing but not contiguous: search.
        let at = self
            .held
            .binary_search_by_key(&number, |h| h.number)
            .ok()
            .filter(|_| number >= first)?;
        self.held.get_mut(at)
    }

    /// The number of the held datagram with exactly these bytes, found
    /// through the sequence numbers and fragments it carries.
    pub(crate) fn find(&self, seqs: &[u64], frags: &[u32], bytes: &[u8]) -> Option<u64> {
        let by_seq = seqs.first().map_or(&[][..], |&s| self.by_seq(s));
        let by_frag = frags.first().map_or(&[][..], |&f| self.by_frag(f));
        by_seq.iter().chain(by_frag).copied().find(|&n| {
            self.held
                .binary_search_by_key(&n, |h| h.number)
                .ok()
                .and_then(|at| self.held.get(at))
                .is_some_and(|h| &*h.bytes == bytes)
        })
    }

    /// Numbers of the datagrams holding delta `seq`.
    pub(crate) fn by_seq(&self, seq: u64) -> &[u64] {
        self.by_seq.get(&seq).map_or(&[], Vec::as_slice)
    }

    /// Numbers of the datagrams holding pieces of `frag_id`.
    pub(crate) fn by_frag(&self, frag_id: u32) -> &[u64] {
        self.by_frag.get(&frag_id).map_or(&[], Vec::as_slice)
    }
}

fn unindex<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Vec<u64>>, key: K, number: u64) {
    if let Some(v) = map.get_mut(&key) {
        v.retain(|&n| n != number);
        if v.is_empty() {
            map.remove(&key);
        }
    }
}

/// Hashes of the last datagrams forwarded in a session, to drop copies
/// (a second feeder, a loop, a repeat heard back).
#[derive(Debug)]
pub(crate) struct Seen {
    order: VecDeque<u64>,
    set: HashSet<u64>,
    max: usize,
}

impl Seen {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            order: VecDeque::new(),
            set: HashSet::new(),
            max,
        }
    }

    /// Records `hash`; false if it was recorded already.
    pub(crate) fn insert(&mut self, hash: u64) -> bool {
        if !self.set.insert(hash) {
            return false;
        }
        self.order.push_back(hash);
        while self.order.len() > self.max {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}
