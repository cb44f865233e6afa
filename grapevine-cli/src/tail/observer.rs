//! What `grapevine tail` heard, without any I/O: an [`Observer`] is fed
//! `(now, from, datagram)` and summarises it per (stream, session) in a
//! [`Report`].
//!
//! Everything here is what **this host** heard. A gap is a sequence number
//! this host never received, not necessarily one the publisher failed to
//! send or a subscriber failed to get; and NAKs, which subscribers send by
//! unicast to the publisher (PROTOCOL.md §2), are only counted when they
//! reach the group anyway.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use grapevine::core::auth::{
    unverified_plain, Keyring, Opener, Refused, Role, FLAG_ENCRYPT, FLAG_FROM_SUBSCRIBER,
};
use grapevine::core::wire::{
    CycleBegin, CycleEnd, Datagram, DecodeError, LeafSnapshot, Message, HEADER_LEN,
};
use grapevine::core::{CycleId, Reassembler, ReassemblyConfig, SessionId, StreamId};
use serde::Serialize;

/// How many (stream, session) entries are tracked at most by default; the
/// longest silent is evicted to make room for a new one.
pub(crate) const DEFAULT_MAX_ENTRIES: usize = 64;

/// A session is alive when heard within this long, if none of its
/// heartbeats (which carry the publisher's interval) has been heard.
pub(crate) const DEFAULT_ALIVE_WINDOW: Duration = Duration::from_secs(3);

/// A session heard within this many heartbeat intervals is alive.
pub(crate) const ALIVE_HEARTBEATS: u32 = 3;

/// Disjoint runs of missing sequence numbers remembered per session; the
/// lowest run is forgotten beyond this (its sequence numbers stay counted
/// as gaps, but a late copy of them no longer fills one).
const MAX_GAP_RANGES: usize = 256;

/// With a key: senders remembered per (stream, role), each with its replay
/// window.
const SENDERS_PER_OPENER: usize = 64;

/// How a datagram was sealed, and what `tail` could check of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Auth {
    /// Not sealed.
    Plain,
    /// Authenticated only, and `tail` holds no key: read without checking
    /// its tag. Anyone could have sent it.
    Unverified,
    /// Encrypted, and `tail` holds no key: counted from its header, not
    /// read.
    Encrypted,
    /// Authenticated only, and its tag verified with `tail`'s key.
    Verified,
    /// Encrypted, verified and decrypted with `tail`'s key.
    VerifiedEncrypted,
    /// Sealed, and refused by `tail`'s key (the report's `refused` says
    /// why): not read.
    Refused,
}

/// Datagrams of one (stream, session) by how they were sealed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct AuthCounts {
    pub(crate) plain: u64,
    pub(crate) unverified: u64,
    pub(crate) encrypted: u64,
    /// Opened with `tail`'s key, encrypted or not.
    pub(crate) verified: u64,
    pub(crate) refused: u64,
    /// The latest datagram's (`null` before any).
    pub(crate) latest: Option<Auth>,
}

impl AuthCounts {
    fn add(&mut self, a: Auth) {
        match a {
            Auth::Plain => self.plain += 1,
            Auth::Unverified => self.unverified += 1,
            Auth::Encrypted => self.encrypted += 1,
            Auth::Verified | Auth::VerifiedEncrypted => self.verified += 1,
            Auth::Refused => self.refused += 1,
        }
        self.latest = Some(a);
    }
}

/// The message kinds counted, in report order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Delta,
    Retransmit,
    Snapshot,
    CycleBegin,
    CycleEnd,
    Heartbeat,
    Nak,
    Fragment,
    FragNak,
    StreamInfo,
    Unknown,
}

const KINDS: usize = 11;

impl Kind {
    fn of(m: &Message<'_>) -> Kind {
        match m {
            Message::Delta(_) => Kind::Delta,
            Message::Retransmit(_) => Kind::Retransmit,
            Message::LeafSnapshot(_) => Kind::Snapshot,
            Message::CycleBegin(_) => Kind::CycleBegin,
            Message::CycleEnd(_) => Kind::CycleEnd,
            Message::Heartbeat(_) => Kind::Heartbeat,
            Message::Nak(_) => Kind::Nak,
            Message::Fragment(_) => Kind::Fragment,
            Message::FragNak(_) => Kind::FragNak,
            Message::StreamInfo(_) => Kind::StreamInfo,
            _ => Kind::Unknown,
        }
    }

    /// Whether a subscriber sends it (to the publisher, by unicast).
    fn sent_by_subscribers(self) -> bool {
        matches!(self, Kind::Nak | Kind::FragNak)
    }
}

/// One value per message kind; the field names are those of the JSON.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub(crate) struct PerKind<T> {
    pub(crate) delta: T,
    pub(crate) retransmit: T,
    pub(crate) snapshot: T,
    pub(crate) cycle_begin: T,
    pub(crate) cycle_end: T,
    pub(crate) heartbeat: T,
    pub(crate) nak: T,
    pub(crate) fragment: T,
    pub(crate) frag_nak: T,
    pub(crate) stream_info: T,
    pub(crate) unknown: T,
}

impl<T: Copy> PerKind<T> {
    fn from_array(a: [T; KINDS]) -> Self {
        let [delta, retransmit, snapshot, cycle_begin, cycle_end, heartbeat, nak, fragment, frag_nak, stream_info, unknown] =
            a;
        Self {
            delta,
            retransmit,
            snapshot,
            cycle_begin,
            cycle_end,
            heartbeat,
            nak,
            fragment,
            frag_nak,
            stream_info,
            unknown,
        }
    }
}

/// Delta sequence numbers heard, and the runs missing between them.
#[derive(Debug, Default)]
struct Seqs {
    /// Sequence numbers at or below this were sent before this host
    /// started listening: not tracked. `None` until the first claim.
    base: Option<u64>,
    /// Highest sequence number known to exist (from a delta or a claim).
    high: u64,
    /// Highest Delta or Retransmit `seq` heard.
    latest: u64,
    /// Highest `seq` a Heartbeat, CycleBegin or CycleEnd announced.
    announced: u64,
    /// Missing runs, inclusive, ascending and disjoint.
    missing: VecDeque<(u64, u64)>,
    /// Sequence numbers missing (including forgotten runs).
    gaps: u64,
    /// Missing sequence numbers heard later (a Retransmit or a late Delta).
    filled: u64,
    /// Delta or Retransmit heard again.
    duplicates: u64,
}

impl Seqs {
    /// A claim that sequence numbers up to `seq` exist.
    fn claim(&mut self, seq: u64) {
        let Some(_) = self.base else {
            self.base = Some(seq);
            self.high = seq;
            return;
        };
        if seq > self.high {
            self.add_missing(self.high + 1, seq);
            self.high = seq;
        }
    }

    fn announce(&mut self, seq: u64) {
        self.announced = self.announced.max(seq);
        self.claim(seq);
    }

    fn delta(&mut self, seq: u64) {
        self.latest = self.latest.max(seq);
        let base = *self.base.get_or_insert(seq.saturating_sub(1));
        if self.high < base {
            self.high = base;
        }
        if seq > self.high {
            if seq > self.high + 1 {
                self.add_missing(self.high + 1, seq - 1);
            }
            self.high = seq;
        } else if seq > base {
            if self.fill(seq) {
                self.filled += 1;
            } else {
                self.duplicates += 1;
            }
        }
        // At or below the base: sent before we listened; a Retransmit for
        // another subscriber, neither a gap nor a duplicate to us.
    }

    fn add_missing(&mut self, first: u64, last: u64) {
        self.gaps += last - first + 1;
        self.missing.push_back((first, last));
        self.trim();
    }

    fn trim(&mut self) {
        while self.missing.len() > MAX_GAP_RANGES {
            self.missing.pop_front();
        }
    }

    /// Removes `seq` from the missing runs; whether it was missing.
    fn fill(&mut self, seq: u64) -> bool {
        let i = self.missing.partition_point(|&(_, last)| last < seq);
        let Some(&(first, last)) = self.missing.get(i) else {
            return false;
        };
        if seq < first {
            return false;
        }
        match (seq == first, seq == last) {
            (true, true) => {
                self.missing.remove(i);
            }
            (true, false) => self.missing[i].0 = seq + 1,
            (false, true) => self.missing[i].1 = seq - 1,
            (false, false) => {
                self.missing[i].1 = seq - 1;
                self.missing.insert(i + 1, (seq + 1, last));
                self.trim();
            }
        }
        self.gaps -= 1;
        true
    }
}

/// The snapshot cycle in progress, as heard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct CycleProgress {
    /// Its `cycle_id`.
    pub(crate) id: u32,
    /// `leaf_count` of its CycleBegin: the positions it sends.
    pub(crate) leaves: u32,
    /// Positions heard, counted in increasing order (a copy or an earlier
    /// position heard late is not counted again).
    pub(crate) seen: u32,
    /// Whether its CycleEnd was heard.
    pub(crate) ended: bool,
    #[serde(skip)]
    last_position: Option<u32>,
}

#[derive(Debug)]
struct Entry {
    stream: StreamId,
    session: SessionId,
    /// Source of the latest datagram from the publisher (not a NAK).
    from: Option<SocketAddr>,
    first_heard: Instant,
    /// Latest datagram of the entry (NAKs included).
    last_heard: Instant,
    /// Latest datagram from the publisher: what `alive` looks at.
    last_published: Option<Instant>,
    datagrams: u64,
    bytes: u64,
    counts: [u64; KINDS],
    /// `counts`, `datagrams` and `bytes` when the rate window began.
    window: ([u64; KINDS], u64, u64),
    /// The same when the previous window began (see
    /// [`Observer::final_report`]).
    prev_window: ([u64; KINDS], u64, u64),
    /// Publisher datagrams and their lowest and highest `datagram_seq`.
    published: u64,
    datagram_seqs: Option<(u64, u64)>,
    seqs: Seqs,
    heartbeat: Option<Duration>,
    cycle: Option<CycleProgress>,
    cycles_begun: u64,
    cycles_complete: u64,
    reassembled: u64,
    auth: AuthCounts,
}

impl Entry {
    fn new(now: Instant, stream: StreamId, session: SessionId) -> Self {
        Self {
            stream,
            session,
            from: None,
            first_heard: now,
            last_heard: now,
            last_published: None,
            datagrams: 0,
            bytes: 0,
            counts: [0; KINDS],
            window: ([0; KINDS], 0, 0),
            prev_window: ([0; KINDS], 0, 0),
            published: 0,
            datagram_seqs: None,
            seqs: Seqs::default(),
            heartbeat: None,
            cycle: None,
            cycles_begun: 0,
            cycles_complete: 0,
            reassembled: 0,
            auth: AuthCounts::default(),
        }
    }

    /// Takes a datagram of the entry, heard at `now`, `len` bytes long.
    fn heard(&mut self, now: Instant, len: usize, auth: Auth) {
        self.datagrams += 1;
        self.bytes += len as u64;
        self.last_heard = now;
        self.auth.add(auth);
    }

    /// Takes the publisher's datagram `datagram_seq` from `from`.
    fn published(&mut self, now: Instant, from: SocketAddr, datagram_seq: u64) {
        self.from = Some(from);
        self.last_published = Some(now);
        self.published += 1;
        let s = datagram_seq;
        self.datagram_seqs = Some(match self.datagram_seqs {
            None => (s, s),
            Some((lo, hi)) => (lo.min(s), hi.max(s)),
        });
    }

    fn alive_window(&self) -> Duration {
        self.heartbeat
            .map_or(DEFAULT_ALIVE_WINDOW, |h| h * ALIVE_HEARTBEATS)
    }

    /// Takes one message (received whole or reassembled).
    fn message(&mut self, m: &Message<'_>) {
        self.counts[Kind::of(m) as usize] += 1;
        match m {
            Message::Delta(d) | Message::Retransmit(d) => self.seqs.delta(d.seq.0),
            Message::Heartbeat(h) => {
                self.seqs.announce(h.last_seq.0);
                if h.interval_ms > 0 {
                    self.heartbeat = Some(Duration::from_millis(u64::from(h.interval_ms)));
                }
            }
            Message::CycleBegin(b) => self.cycle_begin(b),
            Message::LeafSnapshot(s) => self.snapshot(s),
            Message::CycleEnd(e) => self.cycle_end(e),
            _ => {}
        }
    }

    fn cycle_begin(&mut self, b: &CycleBegin) {
        self.seqs.announce(b.start_seq.0);
        let newer = self.cycle.is_none_or(|c| b.cycle.is_after(CycleId(c.id)));
        if newer {
            self.cycles_begun += 1;
            self.cycle = Some(CycleProgress {
                id: b.cycle.0,
                leaves: b.leaf_count,
                seen: 0,
                ended: false,
                last_position: None,
            });
        }
    }

    fn snapshot(&mut self, s: &LeafSnapshot<'_>) {
        let Some(c) = self.cycle.as_mut() else { return };
        if s.cycle.0 != c.id || c.ended || s.position >= c.leaves {
            return;
        }
        if c.last_position.is_none_or(|p| s.position > p) {
            c.seen += 1;
            c.last_position = Some(s.position);
        }
    }

    fn cycle_end(&mut self, e: &CycleEnd) {
        self.seqs.announce(e.end_seq.0);
        let Some(c) = self.cycle.as_mut() else { return };
        if e.cycle.0 == c.id && !c.ended {
            c.ended = true;
            if c.seen == c.leaves {
                self.cycles_complete += 1;
            }
        }
    }
}

/// Summarises the datagrams heard on a group and port.
#[derive(Debug)]
pub(crate) struct Observer {
    entries: BTreeMap<(StreamId, SessionId), Entry>,
    max_entries: usize,
    evicted: u64,
    datagrams: u64,
    bytes: u64,
    undecodable: BTreeMap<&'static str, u64>,
    reassembler: Reassembler,
    fragments_rejected: u64,
    started: Instant,
    window_start: Instant,
    /// When the previous rate window began, once a report was made.
    prev_window_start: Option<Instant>,
    /// `--key-file`: the keys sealed datagrams are checked with.
    keyring: Option<Keyring>,
    /// One opener per (stream, sealed by a subscriber), with when it was
    /// last used; at most [`Observer::max_openers`].
    openers: BTreeMap<(StreamId, bool), (Opener, u64)>,
    opener_uses: u64,
    /// Sealed datagrams refused by the key, by [`Refused::code`].
    refused: BTreeMap<&'static str, u64>,
    /// A copy of a sealed datagram being opened or read.
    scratch: Vec<u8>,
}

impl Observer {
    pub(crate) fn new(now: Instant) -> Self {
        Self::with_max_entries(now, DEFAULT_MAX_ENTRIES)
    }

    /// An observer that tracks at most `max_entries` (stream, session)
    /// pairs (at least 1).
    pub(crate) fn with_max_entries(now: Instant, max_entries: usize) -> Self {
        Self {
            entries: BTreeMap::new(),
            max_entries: max_entries.max(1),
            evicted: 0,
            datagrams: 0,
            bytes: 0,
            undecodable: BTreeMap::new(),
            reassembler: Reassembler::new(ReassemblyConfig::default())
                .expect("the default reassembly configuration is valid"),
            fragments_rejected: 0,
            started: now,
            window_start: now,
            prev_window_start: None,
            keyring: None,
            openers: BTreeMap::new(),
            opener_uses: 0,
            refused: BTreeMap::new(),
            scratch: Vec::new(),
        }
    }

    /// Checks sealed datagrams with these keys (`--key-file`) instead of
    /// reading authenticated-only ones unverified and counting encrypted
    /// ones unread.
    pub(crate) fn verifying(mut self, keyring: Keyring) -> Self {
        self.keyring = Some(keyring);
        self
    }

    /// Openers kept at most: one per role for every entry.
    fn max_openers(&self) -> usize {
        2 * self.max_entries
    }

    /// Takes one datagram received at `now` from `from`.
    ///
    /// A sealed datagram (PROTOCOL.md §11) is opened with the key, if the
    /// observer holds one, or refused and counted by reason. Without a key,
    /// an authenticated-only one is read unverified, and an encrypted one
    /// is counted from its header (in clear) only.
    pub(crate) fn observe(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        self.datagrams += 1;
        self.bytes += datagram.len() as u64;
        match Datagram::decode(datagram) {
            Ok(d) => self.take(now, from, &d, datagram.len(), Auth::Plain),
            Err(DecodeError::NoKey { flags }) => self.sealed(now, from, datagram, flags),
            Err(e) => *self.undecodable.entry(e.code()).or_default() += 1,
        }
    }

    /// A datagram whose header says it is sealed (with `flags`).
    fn sealed(&mut self, now: Instant, from: SocketAddr, datagram: &[u8], flags: u8) {
        // The header of a sealed datagram is in clear (PROTOCOL.md §3).
        let Some((clear, _)) = grapevine::core::wire::peek_header(datagram) else {
            // Not reached: the header was checked whole.
            *self.undecodable.entry("short_header").or_default() += 1;
            return;
        };
        let by_subscriber = flags & FLAG_FROM_SUBSCRIBER != 0;
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let len = datagram.len();
        if self.keyring.is_some() {
            scratch.extend_from_slice(datagram);
            let opened = self
                .opener(clear.stream, by_subscriber)
                .map(|o| o.open(now, &mut scratch));
            match opened {
                Some(Ok(o)) => {
                    let auth = if o.encrypted {
                        Auth::VerifiedEncrypted
                    } else {
                        Auth::Verified
                    };
                    match scratch.get(o.plain).map(Datagram::decode) {
                        Some(Ok(d)) => self.take(now, from, &d, len, auth),
                        Some(Err(e)) => *self.undecodable.entry(e.code()).or_default() += 1,
                        None => *self.undecodable.entry("short_auth").or_default() += 1,
                    }
                }
                Some(Err(Refused::Malformed(e))) => {
                    *self.undecodable.entry(e.code()).or_default() += 1;
                }
                Some(Err(e)) => {
                    *self.refused.entry(e.code()).or_default() += 1;
                    // Counted where its header says, and nothing more: it
                    // may be forged.
                    self.entry(now, clear.stream, clear.session)
                        .heard(now, len, Auth::Refused);
                }
                None => {}
            }
        } else if flags & FLAG_ENCRYPT != 0 {
            if len < HEADER_LEN + grapevine::core::auth::OVERHEAD {
                *self.undecodable.entry("short_auth").or_default() += 1;
            } else {
                let e = self.entry(now, clear.stream, clear.session);
                e.heard(now, len, Auth::Encrypted);
                if !by_subscriber {
                    e.published(now, from, clear.datagram_seq);
                }
            }
        } else if unverified_plain(datagram, &mut scratch) {
            match Datagram::decode(&scratch) {
                Ok(d) => self.take(now, from, &d, len, Auth::Unverified),
                Err(e) => *self.undecodable.entry(e.code()).or_default() += 1,
            }
        } else {
            *self.undecodable.entry("short_auth").or_default() += 1;
        }
        self.scratch = scratch;
    }

    /// The opener of datagrams sealed for `stream` by a subscriber or the
    /// publisher, made on first use; the least recently used one is
    /// dropped beyond [`Observer::max_openers`]. `None` without a key.
    fn opener(&mut self, stream: StreamId, by_subscriber: bool) -> Option<&mut Opener> {
        let keyring = self.keyring.as_ref()?;
        let key = (stream, by_subscriber);
        if !self.openers.contains_key(&key) && self.openers.len() >= self.max_openers() {
            let oldest = self
                .openers
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.openers.remove(&k);
            }
        }
        self.opener_uses += 1;
        let uses = self.opener_uses;
        let role = if by_subscriber {
            Role::Subscriber
        } else {
            Role::Publisher
        };
        let (opener, used) = self.openers.entry(key).or_insert_with(|| {
            (
                Opener::new(keyring.clone(), role, stream, SENDERS_PER_OPENER),
                uses,
            )
        });
        *used = uses;
        Some(opener)
    }

    /// The entry of (`stream`, `session`), made (evicting the longest
    /// silent if full) if new.
    fn entry(&mut self, now: Instant, stream: StreamId, session: SessionId) -> &mut Entry {
        let key = (stream, session);
        if !self.entries.contains_key(&key) && self.entries.len() >= self.max_entries {
            self.evict_one();
        }
        self.entries
            .entry(key)
            .or_insert_with(|| Entry::new(now, stream, session))
    }

    /// Takes a datagram that decoded (plain, or opened): `len` bytes on
    /// the wire, sealed as `auth` says.
    fn take(&mut self, now: Instant, from: SocketAddr, d: &Datagram<'_>, len: usize, auth: Auth) {
        let h = d.header();
        let entry = match self.entries.get_mut(&(h.stream, h.session)) {
            Some(e) => e,
            None => {
                if self.entries.len() >= self.max_entries {
                    self.evict_one();
                }
                self.entries
                    .entry((h.stream, h.session))
                    .or_insert_with(|| Entry::new(now, h.stream, h.session))
            }
        };
        entry.heard(now, len, auth);
        let mut from_publisher = false;
        for m in d.messages() {
            from_publisher |= !Kind::of(&m).sent_by_subscribers();
            entry.message(&m);
            if let Message::Fragment(f) = m {
                match self
                    .reassembler
                    .handle_fragment(now, h.stream, h.session, &f)
                {
                    Ok(Some(done)) => match done.message() {
                        Ok(inner) => {
                            entry.reassembled += 1;
                            entry.message(&inner);
                        }
                        Err(_) => self.fragments_rejected += 1,
                    },
                    Ok(None) => {}
                    Err(_) => self.fragments_rejected += 1,
                }
            }
        }
        if from_publisher {
            entry.published(now, from, h.datagram_seq);
        }
    }

    fn evict_one(&mut self) {
        let oldest = self
            .entries
            .iter()
            .min_by_key(|(_, e)| e.last_heard)
            .map(|(k, _)| *k);
        if let Some(key) = oldest {
            self.entries.remove(&key);
            self.reassembler.forget_session(key.0, key.1);
            self.evicted += 1;
        }
    }

    /// What was heard until `now`; rates are over the time since the
    /// previous report (or the start), and a new rate window begins.
    pub(crate) fn report(&mut self, now: Instant) -> Report {
        let window = now.saturating_duration_since(self.window_start);
        let secs = window.as_secs_f64();
        let rate = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        let age = |t: Instant| now.saturating_duration_since(t).as_secs_f64();
        let mut streams = Vec::with_capacity(self.entries.len());
        for e in self.entries.values_mut() {
            let (counts0, datagrams0, bytes0) = e.window;
            let rates: [f64; KINDS] = std::array::from_fn(|i| rate(e.counts[i] - counts0[i]));
            let alive_window = e.alive_window();
            streams.push(StreamReport {
                stream: e.stream.0,
                session: e.session.to_string(),
                from: e.from.map(|a| a.to_string()),
                alive: e
                    .last_published
                    .is_some_and(|t| now.saturating_duration_since(t) <= alive_window),
                alive_window_s: alive_window.as_secs_f64(),
                heartbeat_ms: e.heartbeat.map(|h| h.as_millis() as u64),
                first_heard_s: age(e.first_heard),
                last_heard_s: age(e.last_heard),
                datagrams: e.datagrams,
                bytes: e.bytes,
                datagram_rate: rate(e.datagrams - datagrams0),
                byte_rate: rate(e.bytes - bytes0),
                datagrams_missed: e.datagram_seqs.map_or(0, |(lo, hi)| {
                    (hi - lo).saturating_add(1).saturating_sub(e.published)
                }),
                counts: PerKind::from_array(e.counts),
                rates: PerKind::from_array(rates),
                reassembled: e.reassembled,
                latest_seq: e.seqs.latest,
                announced_seq: e.seqs.announced,
                gaps: e.seqs.gaps,
                gaps_filled: e.seqs.filled,
                duplicates: e.seqs.duplicates,
                cycle: e.cycle,
                cycles_begun: e.cycles_begun,
                cycles_complete: e.cycles_complete,
                auth: e.auth,
            });
            e.prev_window = e.window;
            e.window = (e.counts, e.datagrams, e.bytes);
        }
        streams.sort_by(|a, b| {
            b.alive
                .cmp(&a.alive)
                .then(a.stream.cmp(&b.stream))
                .then(a.last_heard_s.total_cmp(&b.last_heard_s))
                .then_with(|| a.session.cmp(&b.session))
        });
        self.prev_window_start = Some(self.window_start);
        self.window_start = now;
        Report {
            elapsed_s: age(self.started),
            window_s: secs,
            final_report: false,
            datagrams: self.datagrams,
            bytes: self.bytes,
            undecodable: self
                .undecodable
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect(),
            fragments_rejected: self.fragments_rejected,
            evicted: self.evicted,
            verifying: self.keyring.is_some(),
            refused: self
                .refused
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect(),
            streams,
        }
    }
}

impl Observer {
    /// The last report, marked final. When the window since the previous
    /// report is shorter than `min_window` (the run ended at, or just
    /// after, a report), its rates would be noise or 0: the previous
    /// window is extended to `now` instead, so the final report has the
    /// rates of the last real window (and `window_s` says how long that
    /// was).
    pub(crate) fn final_report(&mut self, now: Instant, min_window: Duration) -> Report {
        if let Some(prev) = self.prev_window_start {
            if now.saturating_duration_since(self.window_start) < min_window {
                self.window_start = prev;
                for e in self.entries.values_mut() {
                    e.window = e.prev_window;
                }
            }
        }
        let mut r = self.report(now);
        r.final_report = true;
        r
    }
}

/// Everything heard, as of one report. Serialised as one JSON object.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Report {
    /// Seconds since `tail` started listening.
    pub(crate) elapsed_s: f64,
    /// Seconds the rates were measured over (since the previous report).
    pub(crate) window_s: f64,
    /// Whether this is the last report (`--duration` over, or Ctrl-C).
    #[serde(rename = "final")]
    pub(crate) final_report: bool,
    /// Every datagram received, decodable or not.
    pub(crate) datagrams: u64,
    pub(crate) bytes: u64,
    /// Datagrams dropped undecoded, by the reason of PROTOCOL.md §7
    /// (`bad_magic` for what is not Grapevine at all).
    pub(crate) undecodable: BTreeMap<String, u64>,
    /// Fragments that reassembly rejected, and reassembled messages that
    /// did not decode.
    pub(crate) fragments_rejected: u64,
    /// (stream, session) entries dropped to stay within the bound.
    pub(crate) evicted: u64,
    /// Whether sealed datagrams are checked with a key (`--key-file`);
    /// without, authenticated-only ones are read unverified and encrypted
    /// ones counted unread.
    pub(crate) verifying: bool,
    /// Sealed datagrams the key refused, by reason (PROTOCOL.md §11):
    /// `unknown_key`, `bad_tag`, `replayed`, `wrong_role`, ...
    pub(crate) refused: BTreeMap<String, u64>,
    /// One per (stream, session): alive ones first, then by stream, then
    /// the most recently heard first (then by session).
    pub(crate) streams: Vec<StreamReport>,
}

/// What was heard of one (stream, session).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct StreamReport {
    pub(crate) stream: u32,
    pub(crate) session: String,
    /// Source address of the publisher's latest datagram (`null` if only
    /// NAKs were heard).
    pub(crate) from: Option<String>,
    /// A publisher datagram was heard within `alive_window_s`.
    pub(crate) alive: bool,
    /// 3 heartbeat intervals, as the heartbeats announce it; 3 s before
    /// any heartbeat is heard.
    pub(crate) alive_window_s: f64,
    /// The interval the latest heartbeat announced.
    pub(crate) heartbeat_ms: Option<u64>,
    /// Seconds since the first and the latest datagram.
    pub(crate) first_heard_s: f64,
    pub(crate) last_heard_s: f64,
    pub(crate) datagrams: u64,
    pub(crate) bytes: u64,
    /// Per second, over the report's window.
    pub(crate) datagram_rate: f64,
    pub(crate) byte_rate: f64,
    /// Publisher datagrams not heard between the lowest and highest
    /// `datagram_seq` heard.
    pub(crate) datagrams_missed: u64,
    /// Messages heard, by kind; messages reassembled from fragments count
    /// both as fragments and as their own kind.
    pub(crate) counts: PerKind<u64>,
    /// Messages per second, by kind, over the report's window.
    pub(crate) rates: PerKind<f64>,
    pub(crate) reassembled: u64,
    /// Highest Delta or Retransmit `seq` heard.
    pub(crate) latest_seq: u64,
    /// Highest `seq` announced by a Heartbeat, CycleBegin or CycleEnd.
    pub(crate) announced_seq: u64,
    /// Sequence numbers known to exist (from later deltas or
    /// announcements) that this host has not heard.
    pub(crate) gaps: u64,
    /// Sequence numbers once missing and heard later.
    pub(crate) gaps_filled: u64,
    /// Deltas or Retransmits heard again.
    pub(crate) duplicates: u64,
    /// The latest snapshot cycle begun.
    pub(crate) cycle: Option<CycleProgress>,
    pub(crate) cycles_begun: u64,
    /// Cycles whose every position was heard before their CycleEnd.
    pub(crate) cycles_complete: u64,
    /// Datagrams by how they were sealed and checked: `plain`,
    /// `unverified` (authenticated only, read without a key: anyone could
    /// have sent them), `encrypted` (no key: not read), `verified` (opened
    /// with the key), `refused` (by the key; not read), and the `latest`
    /// datagram's (`plain`, `unverified`, `encrypted`, `verified`,
    /// `verified_encrypted` or `refused`).
    pub(crate) auth: AuthCounts,
}

#[cfg(test)]
mod tests {
    use super::*;
    use grapevine::core::auth::{Salt, Sealer, StreamKey, OVERHEAD, TAG_LEN};
    use grapevine::core::wire::{
        fragment_capacity, DatagramHeader, DatagramWriter, Delta, Fragments, Heartbeat,
        MessageKind, Nak, NakRanges,
    };
    use grapevine::core::{SeqNum, SeqRange};

    const FROM: &str = "127.0.0.1:40000";

    fn from() -> SocketAddr {
        FROM.parse().unwrap()
    }

    fn dg(stream: u32, session: u64, datagram_seq: u64, msgs: &[Message<'_>]) -> Vec<u8> {
        let mut buf = vec![0u8; 65_000];
        let header = DatagramHeader {
            stream: StreamId(stream),
            session: SessionId(session),
            datagram_seq,
        };
        let mut w = DatagramWriter::new(&mut buf, &header).unwrap();
        for m in msgs {
            w.push(m).unwrap();
        }
        let n = w.finish();
        buf.truncate(n);
        buf
    }

    fn delta(seq: u64) -> Delta<'static> {
        Delta {
            seq: SeqNum(seq),
            prev_leaf_seq: SeqNum(0),
            creates: true,
            removes: false,
            key: b"k",
            payload: b"v",
        }
    }

    fn heartbeat(last_seq: u64, interval_ms: u32) -> Message<'static> {
        Message::Heartbeat(Heartbeat {
            last_seq: SeqNum(last_seq),
            sent_at_micros: 0,
            interval_ms,
        })
    }

    fn begin(cycle: u32, start_seq: u64, leaf_count: u32) -> Message<'static> {
        Message::CycleBegin(CycleBegin {
            cycle: CycleId(cycle),
            start_seq: SeqNum(start_seq),
            leaf_count,
        })
    }

    fn end(cycle: u32, end_seq: u64, leaf_count: u32) -> Message<'static> {
        Message::CycleEnd(CycleEnd {
            cycle: CycleId(cycle),
            end_seq: SeqNum(end_seq),
            leaf_count,
        })
    }

    fn snap(cycle: u32, position: u32, key: &[u8]) -> Message<'_> {
        Message::LeafSnapshot(LeafSnapshot {
            cycle: CycleId(cycle),
            position,
            leaf_seq: SeqNum(0),
            key,
            value: Some(b"value"),
        })
    }

    fn only(r: &Report) -> &StreamReport {
        assert_eq!(r.streams.len(), 1, "{r:?}");
        &r.streams[0]
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn counts_kinds_datagrams_bytes_and_the_latest_seq() {
        let t0 = Instant::now();
        let mut o = Observer::new(t0);
        let deltas: Vec<Message<'_>> = (1..=5).map(|s| Message::Delta(delta(s))).collect();
        let a = dg(9, 0xfeed, 0, &deltas);
        let info = Message::StreamInfo(grapevine::core::wire::StreamInfo {
            fingerprint: grapevine::core::schema::SchemaFingerprint::of("x"),
            name: "x",
        });
        let b = dg(9, 0xfeed, 1, &[heartbeat(5, 100), info]);
        o.observe(t0, from(), &a);
        o.observe(t0 + ms(10), from(), &b);
        let r = o.report(t0 + ms(20));
        assert_eq!((r.datagrams, r.bytes), (2, (a.len() + b.len()) as u64));
        let s = only(&r);
        assert_eq!(s.stream, 9);
        assert_eq!(s.session, SessionId(0xfeed).to_string());
        assert_eq!(s.from.as_deref(), Some(FROM));
        assert_eq!((s.datagrams, s.bytes), (2, (a.len() + b.len()) as u64));
        assert_eq!(s.counts.delta, 5);
        assert_eq!(s.counts.heartbeat, 1);
        assert_eq!((s.counts.stream_info, s.counts.unknown), (1, 0));
        assert_eq!(s.counts.retransmit + s.counts.snapshot + s.counts.nak, 0);
        assert_eq!((s.latest_seq, s.announced_seq), (5, 5));
        assert_eq!((s.gaps, s.gaps_filled, s.duplicates), (0, 0, 0));
        assert_eq!(s.heartbeat_ms, Some(100));
        assert_eq!(s.datagrams_missed, 0);
        assert!(
            (s.first_heard_s - 0.020).abs() < 1e-9,
            "{}",
            s.first_heard_s
        );
        assert!((s.last_heard_s - 0.010).abs() < 1e-9, "{}", s.last_heard_s);
    }

    /// Gaps are sequence numbers known to exist and not heard here: from a
    /// later delta or a heartbeat; a Retransmit fills one, a second copy is
    /// a duplicate; what was sent before the first claim is not a gap.
    #[test]
    fn gaps_are_counted_filled_and_told_from_duplicates() {
        let t0 = Instant::now();
        let mut o = Observer::new(t0);
        let mut n = 0;
        let mut feed = |o: &mut Observer, msgs: &[Message<'_>]| {
            o.observe(t0, from(), &dg(1, 7, n, msgs));
            n += 1;
        };
        // Joins at seq 10: 1..=9 were before us.
        feed(
            &mut o,
            &[Message::Delta(delta(10)), Message::Delta(delta(11))],
        );
        feed(&mut o, &[Message::Delta(delta(14))]);
        let s = o.report(t0).streams[0].clone();
        assert_eq!((s.latest_seq, s.gaps, s.gaps_filled), (14, 2, 0));
        feed(&mut o, &[Message::Retransmit(delta(12))]);
        feed(&mut o, &[Message::Retransmit(delta(12))]);
        feed(&mut o, &[Message::Retransmit(delta(3))]);
        let s = o.report(t0).streams[0].clone();
        assert_eq!((s.gaps, s.gaps_filled, s.duplicates), (1, 1, 1));
        assert_eq!(s.counts.retransmit, 3);
        // Tail loss: the heartbeat announces 15..=17.
        feed(&mut o, &[heartbeat(17, 100)]);
        let s = o.report(t0).streams[0].clone();
        assert_eq!((s.latest_seq, s.announced_seq, s.gaps), (14, 17, 4));
        // A late delta in the middle of a run splits it.
        feed(&mut o, &[Message::Delta(delta(16))]);
        feed(
            &mut o,
            &[Message::Delta(delta(13)), Message::Delta(delta(15))],
        );
        feed(&mut o, &[Message::Delta(delta(17))]);
        let s = o.report(t0).streams[0].clone();
        assert_eq!((s.gaps, s.gaps_filled, s.duplicates), (0, 5, 1));
        assert_eq!(s.latest_seq, 17);
    }

    #[test]
    fn a_heartbeat_first_sets_where_counting_starts() {
        let t0 = Instant::now();
        let mut o = Observer::new(t0);
        o.observe(t0, from(), &dg(1, 7, 0, &[heartbeat(100, 100)]));
        o.observe(t0, from(), &dg(1, 7, 1, &[Message::Delta(delta(103))]));
        let s = o.report(t0).streams[0].clone();
        assert_eq!((s.latest_seq, s.announced_seq, s.gaps), (103, 100, 2));
    }

    #[test]
    fn the_missing_runs_kept_are_bounded() {
        let t0 = Instant::now();
        let mut o = Observer::new(t0);
        // Every other seq lost: 1,000 runs of one.
        for i in 0..=1000u64 {
            o.observe(
                t0,
                from(),
                &dg(1, 7, i, &[Message::Delta(delta(2 * i + 1))]),
            );
        }
        let e = o.entries.values().next().unwrap();
        assert_eq!(e.seqs.missing.len(), MAX_GAP_RANGES);
        assert_eq!(e.seqs.gaps, 1000);
        // The newest runs can still be filled, the oldest forgotten ones not.
        o.observe(
            t0,
            from(),
            &dg(1, 7, 2000, &[Message::Retransmit(delta(2000))]),
        );
        o.observe(
            t0,
            from(),
            &dg(1, 7, 2001, &[Message::Retransmit(delta(2))]),
        );
        let s = o.report(t0).streams[0].clone();
        assert_eq!((s.gaps, s.gaps_filled, s.duplicates), (999, 1, 1));
    }

    #[test]
    fn rates_are_per_second_over_the_report_window() {
        let t0 = Instant::now();
        let mut o = Observer::new(t0);
        for i in 0..10 {
            let d = dg(
                1,
                7,
                i,
                &[Message::Delta(delta(i + 1)), heartbeat(i + 1, 100)],
            );
            o.observe(t0 + ms(10 * i), from(), &d);
        }
        let r = o.report(t0 + ms(500));
        assert!((r.window_s - 0.5).abs() < 1e-9);
        let s = only(&r);
        assert!((s.rates.delta - 20.0).abs() < 1e-9, "{:?}", s.rates);
        assert!((s.rates.heartbeat - 20.0).abs() < 1e-9, "{:?}", s.rates);
        assert!((s.datagram_rate - 20.0).abs() < 1e-9);
        assert!((s.byte_rate - s.bytes as f64 / 0.5).abs() < 1e-9);
        assert_eq!(s.rates.snapshot, 0.0);
        // A new window: nothing more heard, rates fall to 0, counts stay.
        o.observe(
            t0 + ms(700),
            from(),
            &dg(1, 7, 10, &[Message::Delta(delta(11))]),
        );
        let r = o.report(t0 + ms(1500));
        let s = only(&r);
        assert!((s.rates.delta - 1.0).abs() < 1e-9, "{:?}", s.rates);
        assert_eq!(s.rates.heartbeat, 0.0);
        assert_eq!(s.counts.delta, 11);
        let r = o.report(t0 + ms(1500));
        assert_eq!(only(&r).rates.delta, 0.0, "an empty window has no rate");
    }

    /// A final report right after a periodic one (the duration ended on an
    /// interval boundary, or Ctrl-C just then) has the rates of the last
    /// real window, not rates over ~0 s; a longer last window keeps its
    /// own rates.
    #[test]
    fn a_final_report_just_after_a_report_keeps_the_last_real_window() {
        let t0 = Instant::now();
        let mut o = Observer::new(t0);
        for i in 0..10 {
            let d = dg(1, 7, i, &[Message::Delta(delta(i + 1))]);
            o.observe(t0 + ms(100 * i), from(), &d);
        }
        let periodic = o.report(t0 + ms(1000));
        assert!((only(&periodic).rates.delta - 10.0).abs() < 1e-9);
        // A session first heard in the short tail still has its rate.
        o.observe(
            t0 + ms(1001),
            from(),
            &dg(2, 8, 0, &[Message::Delta(delta(1))]),
        );
        let last = o.final_report(t0 + ms(1002), ms(100));
        assert!(last.final_report);
        assert!((last.window_s - 1.002).abs() < 1e-9, "{}", last.window_s);
        let s = &last.streams[0];
        assert_eq!(s.stream, 1);
        assert!((s.rates.delta - 10.0 / 1.002).abs() < 1e-9, "{:?}", s.rates);
        assert!(s.datagram_rate > 9.0, "{}", s.datagram_rate);
        assert!((last.streams[1].rates.delta - 1.0 / 1.002).abs() < 1e-9);

        // A final report well after the previous one: its own window.
        let mut o = Observer::new(t0);
        o.observe(t0, from(), &dg(1, 7, 0, &[Message::Delta(delta(1))]));
        o.report(t0 + ms(1000));
        o.observe(
            t0 + ms(1100),
            from(),
            &dg(1, 7, 1, &[Message::Delta(delta(2))]),
        );
        let last = o.final_report(t0 + ms(1500), ms(100));
        assert!((last.window_s - 0.5).abs() < 1e-9);
        assert!((only(&last).rates.delta - 2.0).abs() < 1e-9);
        // No report before: the whole run is the window.
        let mut o = Observer::new(t0);
        o.observe(t0, from(), &dg(1, 7, 0, &[Message::Delta(delta(1))]));
        let last = o.final_report(t0 + ms(50), ms(100));
        assert!((last.window_s - 0.05).abs() < 1e-9);
        assert!((only(&last).rates.delta - 20.0).abs() < 1e-9);
    }

    /// Rows: alive sessions first, then by stream, then the most recently
    /// heard first, whatever their session ids.
    #[test]
    fn sessions_are_sorted_alive_first_then_stream_then_most_recent() {
        let t0 = Instant::now();
        let mut o = Observer::new(t0);
        let d = |session: u64| [Message::Delta(delta(session))];
        // Dead by the report (heard 4 s before it, no heartbeat: 3 s).
        o.observe(t0, from(), &dg(1, 1, 0, &d(1)));
        o.observe(t0, from(), &dg(3, 2, 0, &d(1)));
        // Alive: stream 5 (session 9, then session 3 heard later), stream 4.
        o.observe(t0 + ms(3000), from(), &dg(5, 9, 0, &d(1)));
        o.observe(t0 + ms(3500), from(), &dg(5, 3, 0, &d(1)));
        o.observe(t0 + ms(3100), from(), &dg(4, 0xffff, 0, &d(1)));
        let r = o.report(t0 + ms(4000));
        let got: Vec<(bool, u32, String)> = r
            .streams
            .iter()
            .map(|s| (s.alive, s.stream, s.session.clone()))
            .collect();
        let sid = |n: u64| SessionId(n).to_string();
        assert_eq!(
            got,
            [
                (true, 4, sid(0xffff)),
                (true, 5, sid(3)),
                (true, 5, sid(9)),
                (false, 1, sid(1)),
                (false, 3, sid(2)),
            ]
        );
    }

    /// Alive: heard within 3 heartbeat intervals (as the heartbeats say),
    /// or 3 s before any heartbeat; a NAK to the group is not the
    /// publisher and does not keep a session alive.
    #[test]
    fn alive_follows_the_heartbeat_interval_or_three_seconds() {
        let t0 = Instant::now();
        let mut o = Observer::new(t0);
        o.observe(t0, from(), &dg(1, 7, 0, &[Message::Delta(delta(1))]));
        let s = o.report(t0 + ms(2999)).streams[0].clone();
        assert!(s.alive);
        assert_eq!(s.alive_window_s, 3.0);
        assert!(!o.report(t0 + ms(3001)).streams[0].alive);

        o.observe(t0 + ms(4000), from(), &dg(1, 7, 1, &[heartbeat(1, 50)]));
        let s = o.report(t0 + ms(4150)).streams[0].clone();
        assert!(s.alive, "{s:?}");
        assert!((s.alive_window_s - 0.15).abs() < 1e-9);
        assert!(!o.report(t0 + ms(4151)).streams[0].alive);

        let ranges = [SeqRange {
            first: SeqNum(1),
            last: SeqNum(1),
        }];
        let nak = Message::Nak(Nak {
            requester: 3,
            ranges: NakRanges::from_slice(&ranges),
        });
        let subscriber: SocketAddr = "127.0.0.1:50000".parse().unwrap();
        o.observe(t0 + ms(5000), subscriber, &dg(1, 7, 0, &[nak]));
        let s = o.report(t0 + ms(5001)).streams[0].clone();
        assert!(!s.alive, "{s:?}");
        assert_eq!(s.counts.nak, 1);
        assert_eq!(
            s.from.as_deref(),
            Some(FROM),
            "the publisher's address stays"
        );
        assert_eq!(s.datagrams, 3);
        assert_eq!(
            s.datagrams_missed, 0,
            "the NAK's datagram_seq is the subscriber's"
        );
        assert!((s.last_heard_s - 0.001).abs() < 1e-9);
    }

    #[test]
    fn sessions_and_streams_are_told_apart_and_bounded() {
        let t0 = Instant::now();
        let mut o = Observer::with_max_entries(t0, 3);
        let hb = [heartbeat(0, 100)];
        // (stream, session) heard at t0 + i ms.
        for (i, (stream, session)) in [(1, 1), (1, 2), (2, 1)].into_iter().enumerate() {
            o.observe(t0 + ms(i as u64), from(), &dg(stream, session, 0, &hb));
        }
        // (1, 1) heard again: now (1, 2) is the longest silent.
        o.observe(t0 + ms(5), from(), &dg(1, 1, 1, &hb));
        o.observe(t0 + ms(6), from(), &dg(3, 9, 0, &hb));
        let r = o.report(t0 + ms(7));
        let keys: Vec<_> = r
            .streams
            .iter()
            .map(|s| (s.stream, s.session.clone()))
            .collect();
        let sid = |n: u64| SessionId(n).to_string();
        assert_eq!(keys, [(1, sid(1)), (2, sid(1)), (3, sid(9))]);
        assert_eq!(r.evicted, 1);
        assert_eq!(r.streams[0].datagrams, 2);
        // The evicted one comes back as new, evicting (2, 1).
        o.observe(t0 + ms(8), from(), &dg(1, 2, 1, &hb));
        let r = o.report(t0 + ms(9));
        assert_eq!(r.evicted, 2);
        assert_eq!(r.streams.len(), 3);
        assert!(r.streams.iter().all(|s| s.stream != 2));
        let back = r.streams.iter().find(|s| s.session == sid(2)).unwrap();
        assert_eq!(back.datagrams, 1);
    }

    #[test]
    fn undecodable_datagrams_are_counted_by_reason() {
        let t0 = Instant::now();
        let mut o = Observer::new(t0);
        let mut v2 = dg(1, 7, 0, &[heartbeat(0, 100)]);
        v2[4] = 2;
        let mut critical = dg(1, 7, 0, &[heartbeat(0, 100)]);
        critical[28] = 0x80;
        for d in [
            &b"hello, not grapevine at all, no"[..],
            b"GRPV",
            b"definitely not grapevine either",
            &v2,
            &critical,
        ] {
            o.observe(t0, from(), d);
        }
        let r = o.report(t0);
        assert_eq!(r.datagrams, 5);
        assert!(r.streams.is_empty());
        let got: Vec<(&str, u64)> = r
            .undecodable
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        assert_eq!(
            got,
            [
                ("bad_magic", 2),
                ("short_header", 1),
                ("unknown_critical_kind", 1),
                ("unsupported_version", 1)
            ]
        );
    }

    /// Cycle progress: positions heard of the newest cycle begun, counted
    /// once each in increasing order; a cycle is complete when every
    /// position was heard before its CycleEnd.
    #[test]
    fn cycle_progress_follows_the_newest_cycle() {
        let t0 = Instant::now();
        let mut o = Observer::new(t0);
        let mut n = 0;
        let mut feed = |o: &mut Observer, msgs: &[Message<'_>]| {
            o.observe(t0, from(), &dg(1, 7, n, msgs));
            n += 1;
        };
        let cycle = |o: &mut Observer| o.report(t0).streams[0].cycle.unwrap();
        feed(
            &mut o,
            &[begin(7, 0, 4), snap(7, 0, b"a"), snap(7, 1, b"b")],
        );
        let c = cycle(&mut o);
        assert_eq!((c.id, c.leaves, c.seen, c.ended), (7, 4, 2, false));
        // A copy of the CycleBegin and of position 1 change nothing.
        feed(
            &mut o,
            &[begin(7, 0, 4), snap(7, 1, b"b"), snap(7, 2, b"c")],
        );
        // Position 3 lost.
        feed(&mut o, &[begin(7, 0, 4), end(7, 0, 4)]);
        let c = cycle(&mut o);
        assert_eq!((c.seen, c.ended), (3, true));
        let s = o.report(t0).streams[0].clone();
        assert_eq!((s.cycles_begun, s.cycles_complete), (1, 0));
        assert_eq!(s.counts.cycle_begin, 3);
        assert_eq!(s.counts.snapshot, 4);
        feed(
            &mut o,
            &[begin(8, 0, 2), snap(8, 0, b"a"), snap(9, 1, b"b")],
        );
        // A late copy of cycle 7 does not go back.
        feed(&mut o, &[begin(7, 0, 4), snap(7, 3, b"d")]);
        feed(
            &mut o,
            &[begin(8, 0, 2), snap(8, 1, b"b"), snap(8, 5, b"z")],
        );
        feed(&mut o, &[begin(8, 0, 2), end(8, 0, 2)]);
        let c = cycle(&mut o);
        assert_eq!((c.id, c.leaves, c.seen, c.ended), (8, 2, 2, true));
        let s = o.report(t0).streams[0].clone();
        assert_eq!((s.cycles_begun, s.cycles_complete), (2, 1));
        // Cycle ids wrap (RFC 1982): 0 comes after u32::MAX, which does
        // not come after 8.
        feed(&mut o, &[begin(u32::MAX, 0, 0)]);
        assert_eq!(cycle(&mut o).id, 8);
        let mut w = Observer::new(t0);
        w.observe(t0, from(), &dg(1, 7, 0, &[begin(u32::MAX, 0, 0)]));
        w.observe(t0, from(), &dg(1, 7, 1, &[begin(0, 0, 0)]));
        let s = w.report(t0).streams[0].clone();
        assert_eq!((s.cycle.unwrap().id, s.cycles_begun), (0, 2));
    }

    /// A snapshot too large for a datagram is counted as fragments and,
    /// once reassembled, as the position it is.
    #[test]
    fn fragmented_messages_are_reassembled_and_counted() {
        let t0 = Instant::now();
        let mut o = Observer::new(t0);
        let value = vec![5u8; 3000];
        let big = Message::LeafSnapshot(LeafSnapshot {
            cycle: CycleId(1),
            position: 0,
            leaf_seq: SeqNum(0),
            key: b"k",
            value: Some(&value),
        });
        let mut body = Vec::new();
        big.encode_body(&mut body).unwrap();
        let frags: Vec<_> =
            Fragments::new(0, MessageKind::LeafSnapshot, &body, fragment_capacity(1452)).collect();
        assert_eq!(frags.len(), 3);
        o.observe(t0, from(), &dg(1, 7, 0, &[begin(1, 0, 1)]));
        for (i, f) in frags.iter().enumerate() {
            o.observe(
                t0,
                from(),
                &dg(1, 7, 1 + i as u64, &[Message::Fragment(*f)]),
            );
        }
        let s = o.report(t0).streams[0].clone();
        assert_eq!(
            (s.counts.fragment, s.counts.snapshot, s.reassembled),
            (3, 1, 1)
        );
        assert_eq!(s.cycle.unwrap().seen, 1);
        // A copy of a completed message's fragment, or of a held one, is
        // a duplicate; one that conflicts with the held bytes is rejected.
        o.observe(t0, from(), &dg(1, 7, 4, &[Message::Fragment(frags[0])]));
        let mut first = frags[0];
        first.frag_id = 1;
        o.observe(t0, from(), &dg(1, 7, 5, &[Message::Fragment(first)]));
        o.observe(t0, from(), &dg(1, 7, 6, &[Message::Fragment(first)]));
        assert_eq!(o.report(t0).fragments_rejected, 0);
        let mut clash = first;
        let flipped: Vec<u8> = first.data.iter().map(|b| !b).collect();
        clash.data = &flipped;
        o.observe(t0, from(), &dg(1, 7, 7, &[Message::Fragment(clash)]));
        assert_eq!(o.report(t0).fragments_rejected, 1);
        assert_eq!(o.report(t0).streams[0].reassembled, 1);
    }

    /// `dg`, sealed by `sealer` (its `datagram_seq` must grow per sealer).
    fn sealed(
        sealer: &mut Sealer,
        stream: u32,
        session: u64,
        datagram_seq: u64,
        msgs: &[Message<'_>],
    ) -> Vec<u8> {
        let mut d = dg(stream, session, datagram_seq, msgs);
        let n = d.len();
        d.resize(n + OVERHEAD, 0);
        let len = sealer.seal(&mut d, n).unwrap();
        d.truncate(len);
        d
    }

    fn ring(byte: u8) -> Keyring {
        Keyring::new(vec![StreamKey::from_bytes([byte; 32])]).unwrap()
    }

    fn sealer(ring: &Keyring, role: Role, stream: u32, salt: u8, encrypt: bool) -> Sealer {
        Sealer::new(ring, role, StreamId(stream), Salt([salt; 16]), encrypt).unwrap()
    }

    fn nak() -> Message<'static> {
        const RANGES: [SeqRange; 1] = [SeqRange {
            first: SeqNum(1),
            last: SeqNum(1),
        }];
        Message::Nak(Nak {
            requester: 3,
            ranges: NakRanges::from_slice(&RANGES),
        })
    }

    fn stream_of(r: &Report, stream: u32) -> StreamReport {
        r.streams
            .iter()
            .find(|s| s.stream == stream)
            .unwrap_or_else(|| panic!("no stream {stream} in {r:?}"))
            .clone()
    }

    /// Without a key: an authenticated-only datagram is read, marked
    /// unverified (a forged tag reads the same: nothing was checked); an
    /// encrypted one is counted from its header only, as the publisher's
    /// unless its FROM_SUBSCRIBER flag is set.
    #[test]
    fn without_a_key_sealed_datagrams_are_read_unverified_or_counted_encrypted() {
        let t0 = Instant::now();
        let mut o = Observer::new(t0);
        let k = ring(1);
        let mut publ = sealer(&k, Role::Publisher, 9, 1, false);
        let deltas: Vec<Message<'_>> = (1..=3).map(|s| Message::Delta(delta(s))).collect();
        o.observe(t0, from(), &sealed(&mut publ, 9, 7, 0, &deltas));
        let mut forged = sealed(&mut publ, 9, 7, 1, &[heartbeat(3, 100)]);
        let last = forged.len() - 1;
        forged[last] ^= 1;
        o.observe(t0, from(), &forged);

        let mut secret = sealer(&k, Role::Publisher, 10, 2, true);
        let mut nak_sealer = sealer(&k, Role::Subscriber, 10, 3, true);
        let subscriber: SocketAddr = "127.0.0.1:50000".parse().unwrap();
        o.observe(t0, from(), &sealed(&mut secret, 10, 8, 0, &deltas));
        o.observe(t0, from(), &sealed(&mut secret, 10, 8, 2, &deltas));
        o.observe(t0, subscriber, &sealed(&mut nak_sealer, 10, 8, 9, &[nak()]));
        // Too short to hold an auth header and a tag.
        let mut short = dg(10, 8, 3, &[heartbeat(0, 100)]);
        short[5] = 0x01;
        short.truncate(40);
        o.observe(t0, from(), &short);

        let r = o.report(t0 + ms(10));
        assert!(!r.verifying && r.refused.is_empty());
        assert_eq!(r.undecodable.get("short_auth"), Some(&1), "{r:?}");
        let s = stream_of(&r, 9);
        assert_eq!(
            (s.counts.delta, s.counts.heartbeat, s.latest_seq),
            (3, 1, 3)
        );
        assert_eq!(
            (s.auth.unverified, s.auth.plain, s.auth.verified),
            (2, 0, 0)
        );
        assert_eq!(s.auth.latest, Some(Auth::Unverified));
        assert_eq!((s.from.as_deref(), s.alive), (Some(FROM), true));

        let e = stream_of(&r, 10);
        assert_eq!(
            (e.datagrams, e.auth.encrypted, e.auth.unverified),
            (3, 3, 0)
        );
        assert_eq!(e.auth.latest, Some(Auth::Encrypted));
        assert_eq!(e.counts, PerKind::default(), "nothing read");
        assert_eq!(e.session, SessionId(8).to_string());
        assert_eq!(
            e.from.as_deref(),
            Some(FROM),
            "the NAK is not the publisher"
        );
        assert!(e.alive);
        assert_eq!(e.datagrams_missed, 1, "datagram_seq 1 of the publisher");
    }

    /// With a key: sealed datagrams are opened and read (encrypted ones
    /// too), publisher's and subscribers' each with their role; a copy, a
    /// forged tag and a stranger's key are refused and counted by reason,
    /// not read; plain datagrams are still shown, as plain.
    #[test]
    fn with_a_key_datagrams_are_verified_and_refusals_counted_by_reason() {
        let t0 = Instant::now();
        let k = ring(1);
        let mut o = Observer::new(t0).verifying(k.clone());
        let mut publ = sealer(&k, Role::Publisher, 9, 1, true);
        let mut sub = sealer(&k, Role::Subscriber, 9, 2, false);
        let mut stranger = sealer(&ring(2), Role::Publisher, 11, 3, false);
        let subscriber: SocketAddr = "127.0.0.1:50000".parse().unwrap();

        let first = sealed(&mut publ, 9, 7, 0, &[Message::Delta(delta(1))]);
        o.observe(t0, from(), &first);
        o.observe(t0, from(), &first);
        let mut forged = sealed(&mut publ, 9, 7, 1, &[Message::Delta(delta(2))]);
        forged[HEADER_LEN + OVERHEAD - TAG_LEN + 2] ^= 0x40;
        o.observe(t0, from(), &forged);
        let hb = sealed(&mut publ, 9, 7, 2, &[heartbeat(2, 100)]);
        o.observe(t0, from(), &hb);
        o.observe(t0, subscriber, &sealed(&mut sub, 9, 7, 0, &[nak()]));
        o.observe(
            t0,
            from(),
            &sealed(&mut stranger, 11, 5, 0, &[heartbeat(9, 100)]),
        );
        o.observe(t0, from(), &dg(12, 4, 0, &[Message::Delta(delta(1))]));

        let r = o.report(t0 + ms(10));
        assert!(r.verifying);
        let refused: Vec<(&str, u64)> = r.refused.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(
            refused,
            [("bad_tag", 1), ("replayed", 1), ("unknown_key", 1)]
        );
        assert!(r.undecodable.is_empty(), "{r:?}");
        let s = stream_of(&r, 9);
        assert_eq!(
            (s.counts.delta, s.counts.heartbeat, s.counts.nak),
            (1, 1, 1)
        );
        assert_eq!((s.latest_seq, s.announced_seq, s.gaps), (1, 2, 1));
        assert_eq!((s.auth.verified, s.auth.refused, s.datagrams), (3, 2, 5));
        assert_eq!(s.auth.latest, Some(Auth::Verified), "the NAK was last");
        assert_eq!(s.from.as_deref(), Some(FROM));

        let st = stream_of(&r, 11);
        assert_eq!((st.auth.refused, st.datagrams), (1, 1));
        assert_eq!(st.auth.latest, Some(Auth::Refused));
        assert_eq!(st.counts, PerKind::default(), "nothing read");
        assert_eq!((st.from, st.alive), (None, false), "nothing believed");

        let p = stream_of(&r, 12);
        assert_eq!((p.auth.plain, p.auth.latest), (1, Some(Auth::Plain)));
        assert_eq!(p.counts.delta, 1);

        // Encrypted: its latest is told apart.
        o.observe(
            t0,
            from(),
            &sealed(&mut publ, 9, 7, 3, &[heartbeat(2, 100)]),
        );
        let s = stream_of(&o.report(t0 + ms(20)), 9);
        assert_eq!(s.auth.latest, Some(Auth::VerifiedEncrypted));
        assert_eq!(s.counts.heartbeat, 2);
    }

    /// Forged stream ids cost one opener each, and openers are bounded.
    #[test]
    fn openers_are_bounded() {
        let t0 = Instant::now();
        let k = ring(1);
        let mut o = Observer::with_max_entries(t0, 2).verifying(k.clone());
        for stream in 0..20u32 {
            let mut s = sealer(&k, Role::Publisher, stream, 1, false);
            o.observe(
                t0,
                from(),
                &sealed(&mut s, stream, 1, 0, &[heartbeat(0, 100)]),
            );
        }
        assert_eq!(o.openers.len(), 4);
        let r = o.report(t0);
        assert_eq!(r.streams.len(), 2);
        assert_eq!(r.evicted, 18);
        assert!(r.streams.iter().all(|s| s.auth.verified == 1), "{r:?}");
    }

    #[test]
    fn datagrams_missed_come_from_the_datagram_seq() {
        let t0 = Instant::now();
        let mut o = Observer::new(t0);
        for s in [3, 4, 7, 5] {
            o.observe(t0, from(), &dg(1, 7, s, &[heartbeat(0, 100)]));
        }
        assert_eq!(o.report(t0).streams[0].datagrams_missed, 1);
    }
}
