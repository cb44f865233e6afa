//! What a relay holds of a session to answer NAKs with: recent datagrams
//! that may be repeated, indexed by the delta sequence numbers they carry
//! and by their bytes, plus a record of every
//! datagram's bytes to drop duplicates.
//!
//! Nothing here trusts a datagram's claims to order it: datagrams are
//! numbered by arrival, evicted by arrival and by bytes. Each sequence
//! number indexes up to [`CANDIDATES`] datagrams; one from the session's
//! main source displaces one that is not, and a sequence number claimed by
//! more than that is *contested* (a keyless relay cannot tell the genuine
//! one: it asks upstream instead of answering).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

/// Datagrams kept per sequence number or fragment id.
pub(crate) const CANDIDATES: usize = 2;

/// A datagram held for repeating.
#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) bytes: Arc<[u8]>,
    /// Its arrival number in the session (every datagram forwarded counts).
    pub(crate) number: u64,
    seqs: Vec<u64>,
    hash: u64,
    /// When it was last repeated, and where to (the group: `None`; a
    /// link). A repeat to one place does not hold back one to another.
    pub(crate) last_repeat: Option<(Option<u64>, Instant)>,
}

/// The datagrams holding one sequence number.
#[derive(Debug, Default)]
pub(crate) struct Claim {
    /// Arrival numbers, and whether each came from the main source.
    pub(crate) held: Vec<(u64, bool)>,
    /// More distinct datagrams claimed it than are kept.
    pub(crate) contested: bool,
}

/// A session's repeatable datagrams, by arrival.
#[derive(Debug)]
pub(crate) struct History {
    held: VecDeque<Held>,
    bytes: usize,
    by_seq: BTreeMap<u64, Claim>,
    by_hash: HashMap<u64, u64>,
    max_datagrams: usize,
    max_bytes: usize,
}

impl History {
    pub(crate) fn new(max_datagrams: usize, max_bytes: usize) -> Self {
        Self {
            held: VecDeque::new(),
            bytes: 0,
            by_seq: BTreeMap::new(),
            by_hash: HashMap::new(),
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

    /// Holds a datagram numbered `number` (above every number held), with
    /// its `hash`; `main`: it came from the session's main source.
    pub(crate) fn insert(
        &mut self,
        number: u64,
        bytes: Arc<[u8]>,
        hash: u64,
        main: bool,
        seqs: &[u64],
    ) {
        if bytes.len() > self.max_bytes
            || self.max_datagrams == 0
            || self.by_hash.contains_key(&hash)
        {
            return;
        }
        while self.held.len() >= self.max_datagrams || self.bytes + bytes.len() > self.max_bytes {
            if !self.evict_oldest() {
                break;
            }
        }
        let mut kept_seqs = Vec::with_capacity(seqs.len());
        for &s in seqs {
            let claim = self.by_seq.entry(s).or_default();
            if claim.held.len() < CANDIDATES {
                claim.held.push((number, main));
                kept_seqs.push(s);
            } else if let Some(slot) = claim.held.iter_mut().find(|(_, m)| main && !m) {
                // The main source's datagram displaces another's.
                let displaced = slot.0;
                *slot = (number, main);
                kept_seqs.push(s);
                if let Some(h) = self.held.iter_mut().find(|h| h.number == displaced) {
                    h.seqs.retain(|&x| x != s);
                }
            } else {
                claim.contested = true;
            }
        }
        self.by_hash.insert(hash, number);
        self.bytes += bytes.len();
        self.held.push_back(Held {
            bytes,
            number,
            seqs: kept_seqs,
            hash,
            last_repeat: None,
        });
    }

    /// Drops what more than `fresh` datagrams arrived after (`next` is the
    /// next arrival number): a subscriber's replay window would no longer
    /// take it (PROTOCOL.md §11.4).
    pub(crate) fn expire(&mut self, next: u64, fresh: u64) {
        while self
            .held
            .front()
            .is_some_and(|h| next.saturating_sub(h.number) > fresh)
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
            if let Some(claim) = self.by_seq.get_mut(s) {
                claim.held.retain(|&(n, _)| n != h.number);
                if claim.held.is_empty() {
                    self.by_seq.remove(s);
                }
            }
        }
        self.by_hash.remove(&h.hash);
        true
    }

    /// The held datagram numbered `number`.
    pub(crate) fn get_mut(&mut self, number: u64) -> Option<&mut Held> {
        // Numbers are increasing but not contiguous: search.
        let at = self.held.binary_search_by_key(&number, |h| h.number).ok()?;
        self.held.get_mut(at)
    }

    /// The number of the held datagram with these bytes' `hash`.
    pub(crate) fn by_hash(&self, hash: u64) -> Option<u64> {
        self.by_hash.get(&hash).copied()
    }

    /// The claims on sequence numbers `first..=last`, in order.
    pub(crate) fn claims(&self, first: u64, last: u64) -> impl Iterator<Item = (u64, &Claim)> + '_ {
        self.by_seq
            .range(first..=last.max(first))
            .map(|(&s, c)| (s, c))
    }
}

/// Hashes of the last datagrams forwarded, to drop copies (a second
/// feeder, a loop, a repeat heard back).
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

    /// Whether `hash` was recorded.
    pub(crate) fn contains(&self, hash: u64) -> bool {
        self.set.contains(&hash)
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
