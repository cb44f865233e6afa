//! The relay engine: forwarding, history, local repair, NAK forwarding and
//! bounded link queues, with no I/O (the house's sans-IO shape).
//!
//! What one hostile datagram, NAK or frame can do here is bounded by rules
//! a keyless relay can apply without trusting any claim (PROTOCOL.md
//! §12.4; docs/design/relay.md has the reviews that found the holes):
//!
//! * A session is *established* only after [`ESTABLISH`] distinct
//!   datagrams; before that it is a candidate, forwarded (its NAKs too) but
//!   holding no history and displacing nothing. An established session
//!   still heard is never evicted, and only a session established before
//!   it takes its local repair away.
//! * A session's upstream changes only once its path went silent or away;
//!   NAKs for a group upstream go to every source of the session heard
//!   lately (a keyless relay cannot tell which is genuine).
//! * NAKs are rate-limited per origin before they are read, answered only
//!   within the stream's repeat budget (what the budget refuses goes
//!   upstream), and coalesced upstream by range (plain) or by bytes only
//!   (sealed: a relay cannot tell a forged NAK from a genuine one).
//! * Queues are bounded per link and lane, in all, and on the control lane.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::classify::{asked, classify, Asked, NotRelayed};
use super::config::RelayConfig;
use super::frame::{Frame, NAK_SECOND_ASK};
use super::history::{History, Seen};
use super::stats::{Dropped, RelayStats};
use crate::auth::FLAG_AUTH;
use crate::sources::Sources;
use crate::transmit::Destination;
use crate::wire::peek_header;
use crate::{SessionId, StreamId};

/// A link to another relay or a unicast subscriber, named by the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LinkId(pub u64);

/// Which way a stream's datagrams flow on a link.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkKind {
    /// The relay sends datagrams into it: a relay it feeds. NAKs come
    /// back, with the second-ask flag honoured.
    Sink {
        /// The streams it takes; empty: all.
        streams: Vec<StreamId>,
        /// The largest datagram the peer takes.
        max_datagram: usize,
    },
    /// A unicast subscriber: datagrams of its streams go to it, its NAKs
    /// are answered (a second-ask flag from it is ignored), its queue is
    /// `subscriber_queue_bytes`.
    Subscriber {
        /// The streams it takes; empty: all.
        streams: Vec<StreamId>,
        /// The largest datagram it takes.
        max_datagram: usize,
    },
    /// The relay receives datagrams from it (a feeder); NAKs go to it.
    Source,
}

/// Where a NAK came from, and its repeats go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NakOrigin {
    /// A subscriber on the group this relay emits on (a unicast datagram
    /// to its emitting socket from this address).
    Group(SocketAddr),
    /// A link (a downstream relay or a unicast subscriber).
    Link(LinkId),
}

/// Whose NAKs share a bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum OriginKey {
    Host(std::net::IpAddr),
    Link(LinkId),
}

/// One lane of a link (PROTOCOL.md §12.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Lane {
    /// Hello, Nak, Shed, Ping and the like.
    Control,
    /// Datagram and Repair frames of one stream.
    Stream(StreamId),
}

/// Where a session's datagrams arrive from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    /// The group this relay reads.
    Group,
    /// A feeder's link.
    Link(LinkId),
}

#[derive(Debug)]
struct Queued {
    at: Instant,
    repair: bool,
    bytes: Arc<[u8]>,
}

#[derive(Debug, Default)]
struct Outbox {
    queue: VecDeque<Queued>,
    bytes: usize,
}

#[derive(Debug)]
struct Link {
    kind: LinkKind,
    up: bool,
    control: VecDeque<Vec<u8>>,
    /// A Pong owed (only the latest Ping is answered).
    pong: Option<u64>,
    lanes: BTreeMap<StreamId, Outbox>,
    /// Shed since the last Shed frame, per stream: (session, datagrams,
    /// bytes), the session being the latest shed.
    shed: BTreeMap<StreamId, (SessionId, u64, u64)>,
    shed_reported: Option<Instant>,
}

impl Link {
    fn takes(&self, stream: StreamId) -> bool {
        match &self.kind {
            LinkKind::Sink { streams, .. } | LinkKind::Subscriber { streams, .. } => {
                streams.is_empty() || streams.contains(&stream)
            }
            LinkKind::Source => false,
        }
    }

    fn max_datagram(&self) -> usize {
        match &self.kind {
            LinkKind::Sink { max_datagram, .. } | LinkKind::Subscriber { max_datagram, .. } => {
                *max_datagram
            }
            LinkKind::Source => usize::MAX,
        }
    }

    /// Whether a Shed frame is due.
    fn shed_due(&self, now: Instant) -> bool {
        !self.shed.is_empty()
            && self
                .shed_reported
                .is_none_or(|t| now.saturating_duration_since(t) >= SHED_REPORT_EVERY)
    }

    fn queued(&self) -> usize {
        self.lanes.values().map(|o| o.bytes).sum::<usize>()
            + self.control.iter().map(Vec::len).sum::<usize>()
    }
}

/// A token bucket.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
}

impl Bucket {
    fn new(now: Instant, rate: f64, burst: f64) -> Self {
        Self {
            tokens: burst,
            rate,
            burst,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now.max(self.at);
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
    }

    fn credit(&mut self, amount: f64) {
        self.tokens = (self.tokens + amount).min(self.burst);
    }

    fn take(&mut self, now: Instant, amount: f64) -> bool {
        self.refill(now);
        if self.tokens >= amount {
            self.tokens -= amount;
            true
        } else {
            false
        }
    }
}

/// What was asked upstream lately, to ask once.
#[derive(Debug, Default)]
struct AskedUpstream {
    /// Plain NAKs: ranges forwarded, and when.
    ranges: VecDeque<(u64, u64, Instant)>,
    /// Sealed NAKs: the hashes of the bytes forwarded, and when.
    bytes: VecDeque<(u64, Instant)>,
}

/// Most entries of either list of [`AskedUpstream`].
const MAX_ASKED_UPSTREAM: usize = 256;

impl AskedUpstream {
    fn covered(&self, first: u64, last: u64, now: Instant, holdoff: Duration) -> bool {
        self.ranges
            .iter()
            .any(|&(f, l, t)| f <= first && last <= l && now.saturating_duration_since(t) < holdoff)
    }

    fn seen(&self, hash: u64, now: Instant, holdoff: Duration) -> bool {
        self.bytes
            .iter()
            .any(|&(h, t)| h == hash && now.saturating_duration_since(t) < holdoff)
    }

    fn remember(&mut self, ask: &Asked, hash: u64, sealed: bool, now: Instant) {
        if sealed || !ask.readable {
            self.bytes.push_back((hash, now));
        } else {
            self.ranges
                .extend(ask.seqs.iter().map(|&(f, l)| (f, l, now)));
        }
        while self.ranges.len() > MAX_ASKED_UPSTREAM {
            self.ranges.pop_front();
        }
        while self.bytes.len() > MAX_ASKED_UPSTREAM {
            self.bytes.pop_front();
        }
    }
}

#[derive(Debug)]
struct Session {
    id: SessionId,
    path: Path,
    /// When it was established: older sessions keep local repair.
    established: Instant,
    /// The source its establishing datagram came from (group path): the
    /// "main" source of its index, which a keyless relay cannot learn from
    /// counts (anyone can send more datagrams).
    origin: Option<SocketAddr>,
    /// The longest silence heard between two of its datagrams (capped): a
    /// quiet stream's heartbeat interval.
    gap: Duration,
    /// Its path went away (a link removed or down): the next datagram from
    /// any path takes the session over.
    orphan: bool,
    /// For a group path: the addresses its datagrams come from.
    sources: Sources,
    last_heard: Instant,
    /// Datagrams forwarded in the session: the next arrival number.
    forwarded: u64,
    history: History,
    seen: Seen,
    asked: AskedUpstream,
}

/// A session heard, not yet established.
#[derive(Debug)]
struct Candidate {
    id: SessionId,
    path: Path,
    /// Where its latest datagram came from (group path): NAKs for it go
    /// there (and to its path) while it is not established.
    source: Option<SocketAddr>,
    last_heard: Instant,
    /// Distinct datagrams heard.
    count: u32,
}

/// How long a session counts as heard: `timeout`, or 2.5 of its longest
/// silence (a quiet stream's heartbeat interval), capped at a minute.
fn alive_for(timeout: Duration, gap: Duration) -> Duration {
    timeout
        .max(gap.mul_f64(2.5))
        .min(Duration::from_secs(60).max(timeout))
}

#[derive(Debug)]
struct Stream {
    sessions: Vec<Session>,
    /// The path, and the sources, of its latest new datagrams, whatever
    /// their session: where NAKs of a session not held go.
    last_path: Path,
    sources: Sources,
    candidates: Vec<Candidate>,
    /// Copies of candidates' datagrams.
    candidate_seen: Seen,
    last_heard: Instant,
    /// Repeats of this stream's datagrams, in bytes: credited by live
    /// traffic (a share of it), refilled at a floor rate.
    repeat_budget: Bucket,
}

/// Distinct datagrams that establish a session.
pub const ESTABLISH: u32 = 4;

/// What forwarding a NAK costs the forwarding budget: one per full-size
/// datagram of it, so that large NAKs cannot flood the link upstream.
fn forward_cost(datagram: &[u8]) -> f64 {
    (datagram.len() as f64 / 1452.0).max(1.0)
}
/// Most established sessions per stream: the newest and the one before.
const SESSIONS_PER_STREAM: usize = 2;
/// Most candidate sessions per stream.
const CANDIDATES_PER_STREAM: usize = 8;
/// Datagrams of candidate sessions remembered per stream, to drop copies.
const CANDIDATE_SEEN: usize = 4096;
/// Most held sequence numbers one NAK looks at; the rest is asked upstream.
const MAX_ASKED: usize = 4096;
/// At most one Shed frame per link this often.
const SHED_REPORT_EVERY: Duration = Duration::from_secs(1);
/// Most frames, and bytes, waiting on a link's control lane (not counted
/// in the data lanes' bounds).
const MAX_CONTROL: usize = 1024;
const MAX_CONTROL_BYTES: usize = 256 * 1024;
/// Most NAK origins with a bucket of their own.
const MAX_ORIGINS: usize = 1024;

/// The relay engine (PROTOCOL.md §12; docs/design/relay.md).
///
/// Datagrams come in from the group it reads ([`Relay::handle_group`]) or
/// from links ([`Relay::handle_frame`]); NAKs from subscribers on the group
/// it emits on ([`Relay::handle_nak`]) or in Nak frames. What it sends
/// comes out of [`Relay::poll_transmit`] (UDP: the group, or a NAK to a
/// publisher) and [`Relay::poll_lane`] (frames per link and lane). Nothing
/// it sends is made by it: every datagram is a byte-for-byte copy.
///
/// ```
/// use std::time::Instant;
/// use grapevine_core::relay::{LinkId, LinkKind, Relay, RelayConfig, Lane};
///
/// let now = Instant::now();
/// let mut relay = Relay::new(RelayConfig::default(), now, 7);
/// relay.add_link(LinkId(1), LinkKind::Sink { streams: vec![], max_datagram: 1452 }, true);
/// // A datagram heard on the group is queued for the link, byte for byte.
/// # use grapevine_core::wire::{DatagramHeader, DatagramWriter, Heartbeat, Message};
/// # use grapevine_core::{SeqNum, SessionId, StreamId};
/// # let header = DatagramHeader { stream: StreamId(1), session: SessionId(2), datagram_seq: 0 };
/// # let mut buf = [0u8; 128];
/// # let mut w = DatagramWriter::new(&mut buf, &header).unwrap();
/// # w.push(&Message::Heartbeat(Heartbeat { last_seq: SeqNum(0), sent_at_micros: 0, interval_ms: 100 })).unwrap();
/// # let n = w.finish();
/// # let datagram = buf[..n].to_vec();
/// relay.handle_group(now, "10.0.0.1:5000".parse().unwrap(), &datagram);
/// let mut out = Vec::new();
/// let lane = relay.pending_lanes(now, LinkId(1)).next().unwrap();
/// assert!(relay.poll_lane(now, LinkId(1), lane, &mut out));
/// assert_eq!(&out[3..], &datagram[..]);
/// ```
#[derive(Debug)]
pub struct Relay {
    config: RelayConfig,
    seed: u64,
    streams: HashMap<StreamId, Stream>,
    links: BTreeMap<LinkId, Link>,
    own: Vec<SocketAddr>,
    udp: VecDeque<(Destination, Arc<[u8]>)>,
    udp_bytes: usize,
    /// Bytes in every link's queues.
    link_bytes: usize,
    nak_forward: Bucket,
    origins: HashMap<OriginKey, Bucket>,
    /// The bucket every origin shares once `origins` is full.
    overflow: Bucket,
    scratch: Vec<u8>,
    stats: RelayStats,
}

impl Relay {
    /// A relay with `config`; `seed` keys its duplicate detection (pass a
    /// random one).
    #[must_use]
    pub fn new(config: RelayConfig, now: Instant, seed: u64) -> Self {
        let rate = config.nak_forward_rate;
        let origin_rate = config.nak_origin_rate;
        Self {
            nak_forward: Bucket::new(now, rate, rate * 0.1 + 16.0),
            config,
            seed,
            streams: HashMap::new(),
            links: BTreeMap::new(),
            own: Vec::new(),
            udp: VecDeque::new(),
            udp_bytes: 0,
            link_bytes: 0,
            origins: HashMap::new(),
            overflow: Bucket::new(now, origin_rate, origin_rate * 0.1 + 8.0),
            scratch: Vec::new(),
            stats: RelayStats::default(),
        }
    }

    /// Its configuration.
    #[must_use]
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// Counters since the start.
    #[must_use]
    pub fn stats(&self) -> RelayStats {
        let mut s = self.stats.clone();
        s.queued_bytes = self.udp_bytes + self.links.values().map(Link::queued).sum::<usize>();
        let sessions = || self.streams.values().flat_map(|s| &s.sessions);
        s.sessions = sessions().count();
        s.held_datagrams = sessions().map(|s| s.history.len()).sum();
        s.held_bytes = sessions().map(|s| s.history.bytes()).sum();
        s
    }

    /// An address this relay sends from: datagrams from it heard on a group
    /// are its own, looped back, and dropped.
    pub fn add_own_address(&mut self, addr: SocketAddr) {
        if !self.own.contains(&addr) {
            self.own.push(addr);
        }
    }

    /// Adds a link (or replaces one of the same id, keeping nothing).
    /// `up`: whether it can carry frames now.
    pub fn add_link(&mut self, id: LinkId, kind: LinkKind, up: bool) {
        self.remove_link(id);
        self.links.insert(
            id,
            Link {
                kind,
                up,
                control: VecDeque::new(),
                pong: None,
                lanes: BTreeMap::new(),
                shed: BTreeMap::new(),
                shed_reported: None,
            },
        );
    }

    /// The largest datagram the peer of sink `id` takes (its Welcome).
    pub fn set_max_datagram(&mut self, id: LinkId, max: usize) {
        if let Some(l) = self.links.get_mut(&id) {
            match &mut l.kind {
                LinkKind::Sink { max_datagram, .. } | LinkKind::Subscriber { max_datagram, .. } => {
                    *max_datagram = max;
                }
                LinkKind::Source => {}
            }
        }
    }

    /// A link went down or came back. A sink's queues keep filling (and
    /// shedding) while it is down and drain when it is back; what was
    /// queued for its control lane is dropped. A source that goes down
    /// leaves its sessions to whichever path brings them next.
    pub fn set_link_up(&mut self, id: LinkId, up: bool) {
        if let Some(l) = self.links.get_mut(&id) {
            l.up = up;
            l.control.clear();
            l.pong = None;
            l.shed_reported = None;
        }
        if !up {
            self.orphan(id);
        }
    }

    /// Forgets a link and everything queued for it.
    pub fn remove_link(&mut self, id: LinkId) {
        if let Some(l) = self.links.remove(&id) {
            self.link_bytes -= l
                .lanes
                .values()
                .map(|o| o.bytes)
                .sum::<usize>()
                .min(self.link_bytes);
        }
        self.orphan(id);
    }

    fn orphan(&mut self, id: LinkId) {
        for s in self.streams.values_mut().flat_map(|s| &mut s.sessions) {
            if s.path == Path::Link(id) {
                s.orphan = true;
            }
        }
    }

    /// Handles a datagram heard on the group this relay reads, from `from`.
    pub fn handle_group(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        if self.own.contains(&from) {
            self.stats.count(Dropped::OwnOutput);
            return;
        }
        self.accept(now, Path::Group, Some(from), datagram, false);
    }

    /// Handles a NAK (a subscriber's Nak or FragNak datagram, sealed or
    /// not) that reached this relay's emitting socket from `from`.
    pub fn handle_nak(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        self.nak(now, NakOrigin::Group(from), datagram, false);
    }

    /// Handles a frame received on `link`. Hello, Welcome, Refuse, Pong and
    /// Goodbye are the driver's (the handshake and liveness) and ignored
    /// here.
    pub fn handle_frame(&mut self, now: Instant, link: LinkId, frame: &Frame<'_>) {
        let Some(kind) = self.links.get(&link).map(|l| l.kind.clone()) else {
            return;
        };
        match (frame, kind) {
            (Frame::Datagram(d), LinkKind::Source) => {
                self.accept(now, Path::Link(link), None, d, false)
            }
            (Frame::Repair(d), LinkKind::Source) => {
                self.accept(now, Path::Link(link), None, d, true)
            }
            (Frame::Nak { flags, datagram }, LinkKind::Sink { .. }) => {
                self.nak(
                    now,
                    NakOrigin::Link(link),
                    datagram,
                    flags & NAK_SECOND_ASK != 0,
                );
            }
            // A subscriber's word is not enough to skip local answers.
            (Frame::Nak { datagram, .. }, LinkKind::Subscriber { .. }) => {
                self.nak(now, NakOrigin::Link(link), datagram, false);
            }
            (Frame::Shed(s), LinkKind::Source) => {
                self.stats.peer_shed_datagrams += s.datagrams;
                self.stats.peer_shed_bytes += s.bytes;
            }
            (Frame::Ping(t), _) => {
                if let Some(l) = self.links.get_mut(&link).filter(|l| l.up) {
                    l.pong = Some(*t);
                }
            }
            (Frame::Datagram(_) | Frame::Repair(_) | Frame::Shed(_) | Frame::Nak { .. }, _) => {
                self.stats.count(Dropped::WrongDirection);
            }
            _ => {}
        }
    }

    /// Queues a control frame on `link`; false if it cannot go (no such
    /// link, down, or its control lane full).
    fn control(&mut self, link: LinkId, frame: &Frame<'_>) -> bool {
        let Some(l) = self.links.get_mut(&link).filter(|l| l.up) else {
            return false;
        };
        let queued: usize = l.control.iter().map(Vec::len).sum();
        if l.control.len() >= MAX_CONTROL || queued + frame.body_len() > MAX_CONTROL_BYTES {
            self.stats.control_shed += 1;
            return false;
        }
        let mut buf = Vec::new();
        if frame.encode(&mut buf).is_err() {
            return false;
        }
        l.control.push_back(buf);
        true
    }

    fn accept(
        &mut self,
        now: Instant,
        path: Path,
        from: Option<SocketAddr>,
        datagram: &[u8],
        repair: bool,
    ) {
        self.stats.datagrams_in += 1;
        self.stats.bytes_in += datagram.len() as u64;
        let class = match classify(datagram, &mut self.scratch) {
            Ok(c) => c,
            Err(NotRelayed::NotGrapevine) => return self.stats.count(Dropped::NotGrapevine),
            Err(NotRelayed::FromSubscriber) => return self.stats.count(Dropped::FromSubscriber),
        };
        let Some(header) = class.header else {
            return self.stats.count(Dropped::NotGrapevine);
        };
        if !self.admit_stream(header.stream, now) {
            return self.stats.count(Dropped::ForeignStream);
        }
        let hash = xxhash_rust::xxh3::xxh3_64_with_seed(datagram, self.seed);
        let config = &self.config;
        let Some(stream) = self.streams.get_mut(&header.stream) else {
            return;
        };
        stream.last_heard = now;
        // A session not established counts distinct datagrams only (copies
        // from a second feeder, replays, repairs do not establish it).
        let established = stream.sessions.iter().any(|s| s.id == header.session);
        if (!established && (repair || !stream.candidate_seen.insert(hash)))
            || (established && !repair && stream.candidate_seen.contains(hash))
        {
            return self.stats.count(Dropped::Duplicate);
        }
        if !repair {
            stream.last_path = path;
            if let Some(addr) = from {
                stream.sources.record(addr, now);
            }
        }
        let at = match place(stream, config, header.session, path, from, now) {
            Placed::Standby => return self.stats.count(Dropped::Standby),
            Placed::Candidate => None,
            Placed::Session(at) => Some(at),
        };
        let bytes: Arc<[u8]> = datagram.into();
        if let Some(session) = at.and_then(|i| stream.sessions.get_mut(i)) {
            // The source that established the session is its main one: a
            // keyless relay cannot tell who else is genuine.
            let main = match (path, from) {
                (Path::Group, Some(addr)) => session.origin.is_none_or(|o| o == addr),
                _ => true,
            };
            if repair {
                // An upstream relay's repeat: already forwarded live, or lost
                // on the way. Never counted as live traffic.
                if !class.repeatable() {
                    return self.stats.count(Dropped::NotRepeatable);
                }
                if session.seen.insert(hash) {
                    let n = session.forwarded;
                    session.forwarded += 1;
                    session.history.insert(n, bytes, hash, main, &class.seqs);
                }
                let Some(number) = session.history.by_hash(hash) else {
                    return;
                };
                let id = session.id;
                return self.repeat_everywhere(now, header.stream, id, number, path);
            }
            if !session.seen.insert(hash) {
                return self.stats.count(Dropped::Duplicate);
            }
            // Sources heard with new bytes: NAKs go to each lately heard.
            if let (Path::Group, Some(addr)) = (path, from) {
                session.sources.record(addr, now);
            }
            session.last_heard = now;
            let number = session.forwarded;
            session.forwarded += 1;
            if class.repeatable() {
                session
                    .history
                    .insert(number, Arc::clone(&bytes), hash, main, &class.seqs);
            }
            session
                .history
                .expire(session.forwarded, config.fresh_datagrams);
            stream
                .repeat_budget
                .credit(datagram.len() as f64 * config.repeat_share);
        }
        self.fan_out(now, header.stream, path, bytes, false);
    }

    /// Sends a datagram everywhere it goes: the group (if this relay emits
    /// and it did not come from there) and every sink taking its stream
    /// but the link it came from.
    fn fan_out(
        &mut self,
        now: Instant,
        stream: StreamId,
        path: Path,
        bytes: Arc<[u8]>,
        repair: bool,
    ) {
        if self.config.emit_to_group && path != Path::Group {
            self.push_udp(Destination::Group, Arc::clone(&bytes));
        }
        let sinks: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(id, l)| Path::Link(**id) != path && l.takes(stream))
            .map(|(id, _)| *id)
            .collect();
        for link in sinks {
            self.enqueue(now, link, stream, Arc::clone(&bytes), repair);
        }
    }

    /// Whether datagrams of `stream` are carried: a configured one, or one
    /// known, or a new one while there is room (a stream silent for
    /// `upstream_timeout` gives its room away).
    fn admit_stream(&mut self, stream: StreamId, now: Instant) -> bool {
        if !self.config.streams.is_empty() && !self.config.streams.contains(&stream) {
            return false;
        }
        if !self.streams.contains_key(&stream) {
            if self.config.streams.is_empty() && self.streams.len() >= self.config.max_streams {
                let stale = self
                    .streams
                    .iter()
                    .filter(|(_, s)| {
                        now.saturating_duration_since(s.last_heard) >= self.config.upstream_timeout
                    })
                    .min_by_key(|(_, s)| s.last_heard)
                    .map(|(id, _)| *id);
                match stale {
                    Some(id) => {
                        self.streams.remove(&id);
                    }
                    None => return false,
                }
            }
            let c = &self.config;
            self.streams.insert(
                stream,
                Stream {
                    sessions: Vec::new(),
                    last_path: Path::Group,
                    sources: Sources::new(),
                    candidates: Vec::new(),
                    candidate_seen: Seen::new(CANDIDATE_SEEN),
                    last_heard: now,
                    repeat_budget: Bucket::new(now, c.repeat_floor, c.repeat_burst),
                },
            );
        }
        true
    }

    fn push_udp(&mut self, dest: Destination, bytes: Arc<[u8]>) {
        self.udp_bytes += bytes.len();
        self.udp.push_back((dest, bytes));
        while self.udp_bytes > self.config.queue_bytes {
            let Some((_, old)) = self.udp.pop_front() else {
                break;
            };
            self.udp_bytes -= old.len();
            self.stats.shed_datagrams += 1;
            self.stats.shed_bytes += old.len() as u64;
        }
    }

    fn enqueue(
        &mut self,
        now: Instant,
        link: LinkId,
        stream: StreamId,
        bytes: Arc<[u8]>,
        repair: bool,
    ) {
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        if bytes.len() > l.max_datagram() {
            return self.stats.count(Dropped::TooLarge);
        }
        let limit = match l.kind {
            LinkKind::Subscriber { .. } => self.config.subscriber_queue_bytes,
            _ => self.config.queue_bytes,
        };
        let session = peek_header(&bytes).map_or(SessionId(0), |(h, _)| h.session);
        let out = l.lanes.entry(stream).or_default();
        out.bytes += bytes.len();
        self.link_bytes += bytes.len();
        out.queue.push_back(Queued {
            at: now,
            repair,
            bytes,
        });
        // The lane's bound, and all links' together.
        while out.bytes > limit || self.link_bytes > self.config.max_queued_bytes {
            let Some(old) = out.queue.pop_front() else {
                break;
            };
            out.bytes -= old.bytes.len();
            self.link_bytes -= old.bytes.len();
            shed(
                &mut self.stats,
                &mut l.shed,
                stream,
                session,
                old.bytes.len(),
            );
        }
    }

    fn nak(&mut self, now: Instant, origin: NakOrigin, datagram: &[u8], second_ask: bool) {
        self.stats.naks_received += 1;
        if !self.origin_allows(now, origin) {
            self.stats.naks_origin_limited += 1;
            return;
        }
        let Some(ask) = asked(datagram, &mut self.scratch) else {
            return self.stats.count(Dropped::BadNak);
        };
        let Some(header) = ask.header else {
            return self.stats.count(Dropped::BadNak);
        };
        let sealed = peek_header(datagram).is_some_and(|(_, f)| f & FLAG_AUTH != 0);
        let hash = xxhash_rust::xxh3::xxh3_64_with_seed(datagram, self.seed);
        let config = &self.config;
        let Some(stream) = self.streams.get_mut(&header.stream) else {
            return self.stats.count(Dropped::UnknownSession);
        };
        let settled = settled(stream, header.session, now, config.session_settle);
        let Some(session) = stream.sessions.iter_mut().find(|s| s.id == header.session) else {
            // Not established (a restarted publisher's first datagrams, or
            // a session kept out by forged ones): nothing is held to answer
            // with, but its NAKs go upstream, to its path.
            let (path, sources) = match stream.candidates.iter().find(|c| c.id == header.session) {
                Some(c) => (c.path, c.source.into_iter().collect()),
                // Not even a candidate (kept out by forged ones): where the
                // stream's latest datagrams came from.
                None => {
                    self.stats.count(Dropped::UnknownSession);
                    let recent = stream.sources.recent(now, config.upstream_timeout);
                    (stream.last_path, recent)
                }
            };
            if self.nak_forward.take(now, forward_cost(datagram)) {
                if !self.forward_nak(Some(path), sources, datagram, second_ask) {
                    self.stats.naks_no_upstream += 1;
                }
            } else {
                self.stats.naks_forward_limited += 1;
            }
            return;
        };
        // Repeats go where the NAK came from: the group only if this relay
        // emits on one.
        let can_answer = match origin {
            NakOrigin::Group(_) => config.emit_to_group,
            NakOrigin::Link(_) => true,
        };
        let local = ask.readable && !second_ask && settled && can_answer;
        if ask.readable && !second_ask && can_answer && !settled {
            self.stats.repeats_refused_unsettled += 1;
        }
        let to = match origin {
            NakOrigin::Group(_) => None,
            NakOrigin::Link(l) => Some(l.0),
        };
        let plan = plan(
            session,
            &mut stream.repeat_budget,
            &ask,
            local,
            to,
            now,
            config,
        );
        self.stats.nak_answers += plan.answer.len() as u64;
        self.stats.repeats_refused_budget += plan.refused_budget;
        let news = if sealed || !ask.readable {
            !session.asked.seen(hash, now, config.forward_holdoff)
        } else {
            plan.news
        };
        let (session_id, path, orphan) = (session.id, session.path, session.orphan);
        // Every source heard lately: a keyless relay cannot tell the
        // publisher from a sender of junk, so each gets the NAK.
        let publishers = session
            .sources
            .recent(now, alive_for(config.upstream_timeout, session.gap));
        if plan.upstream && (news || second_ask || plan.asked_again) {
            let flag = second_ask || plan.asked_again;
            let upstream = if orphan { None } else { Some(path) };
            if !self.nak_forward.take(now, forward_cost(datagram)) {
                self.stats.naks_forward_limited += 1;
            } else if self.forward_nak(upstream, publishers, datagram, flag) {
                if let Some(s) = self
                    .streams
                    .get_mut(&header.stream)
                    .and_then(|s| s.sessions.iter_mut().find(|s| s.id == session_id))
                {
                    s.asked.remember(&ask, hash, sealed, now);
                }
            } else {
                self.stats.naks_no_upstream += 1;
            }
        } else if plan.upstream {
            self.stats.naks_coalesced += 1;
        }
        for n in plan.answer {
            self.repeat_to(now, header.stream, session_id, n, origin);
        }
    }

    /// Whether `origin` may send another NAK now. Each origin (a host,
    /// whatever its ports; a link) has a bucket of its own, so that one
    /// cannot take every other's share; once 1,024 are known, newcomers
    /// share one bucket instead of being refused.
    fn origin_allows(&mut self, now: Instant, origin: NakOrigin) -> bool {
        let key = match origin {
            NakOrigin::Group(addr) => OriginKey::Host(addr.ip()),
            NakOrigin::Link(l) => OriginKey::Link(l),
        };
        let (rate, burst) = (
            self.config.nak_origin_rate,
            self.config.nak_origin_rate * 0.1 + 8.0,
        );
        if !self.origins.contains_key(&key) && self.origins.len() >= MAX_ORIGINS {
            // Forget the full buckets: origins that were quiet.
            self.origins.retain(|_, b| {
                b.refill(now);
                b.tokens < b.burst
            });
            if self.origins.len() >= MAX_ORIGINS {
                return self.overflow.take(now, 1.0);
            }
        }
        self.origins
            .entry(key)
            .or_insert_with(|| Bucket::new(now, rate, burst))
            .take(now, 1.0)
    }

    /// Sends a NAK upstream: a Nak frame on the feeder's link, or by unicast
    /// to the session's main source. False if there is nowhere to send it.
    fn forward_nak(
        &mut self,
        upstream: Option<Path>,
        publishers: Vec<SocketAddr>,
        datagram: &[u8],
        second_ask: bool,
    ) -> bool {
        let sent = match upstream {
            Some(Path::Group) if !publishers.is_empty() => {
                let bytes: Arc<[u8]> = datagram.into();
                for addr in publishers {
                    self.push_udp(Destination::Unicast(addr), Arc::clone(&bytes));
                }
                true
            }
            Some(Path::Link(l)) => {
                let flags = if second_ask { NAK_SECOND_ASK } else { 0 };
                self.control(l, &Frame::Nak { flags, datagram })
            }
            _ => false,
        };
        if sent {
            self.stats.naks_forwarded += 1;
        }
        sent
    }

    /// Repeats held datagram `number` (its budget was taken) to where a NAK
    /// came from.
    fn repeat_to(
        &mut self,
        now: Instant,
        stream: StreamId,
        session: SessionId,
        number: u64,
        to: NakOrigin,
    ) {
        let Some(bytes) = self
            .held(stream, session, number)
            .map(|h| Arc::clone(&h.bytes))
        else {
            return;
        };
        self.stats.repeats += 1;
        self.stats.repeat_bytes += bytes.len() as u64;
        match to {
            NakOrigin::Group(_) => self.push_udp(Destination::Group, bytes),
            NakOrigin::Link(link) => self.enqueue(now, link, stream, bytes, true),
        }
    }

    /// Repeats a datagram an upstream relay repaired, everywhere it goes,
    /// each copy within the stream's budget.
    fn repeat_everywhere(
        &mut self,
        now: Instant,
        stream: StreamId,
        session: SessionId,
        number: u64,
        path: Path,
    ) {
        let holdoff = self.config.repair_holdoff;
        let Some(h) = self.held(stream, session, number) else {
            return;
        };
        if h.last_repeat
            .is_some_and(|(_, t)| now.saturating_duration_since(t) < holdoff)
        {
            self.stats.repeats_coalesced += 1;
            return;
        }
        h.last_repeat = Some((None, now));
        let bytes = Arc::clone(&h.bytes);
        let copies = usize::from(self.config.emit_to_group && path != Path::Group)
            + self
                .links
                .iter()
                .filter(|(id, l)| Path::Link(**id) != path && l.takes(stream))
                .count();
        let cost = (bytes.len() * copies) as f64;
        let budget = self.streams.get_mut(&stream).map(|s| &mut s.repeat_budget);
        if copies == 0 || !budget.is_some_and(|b| b.take(now, cost)) {
            self.stats.repeats_refused_budget += 1;
            return;
        }
        self.stats.repeats += copies as u64;
        self.stats.repeat_bytes += cost as u64;
        self.fan_out(now, stream, path, bytes, true);
    }

    fn held(
        &mut self,
        stream: StreamId,
        session: SessionId,
        number: u64,
    ) -> Option<&mut super::history::Held> {
        self.streams
            .get_mut(&stream)?
            .sessions
            .iter_mut()
            .find(|s| s.id == session)?
            .history
            .get_mut(number)
    }

    /// The next UDP datagram to send, written to `buf`: to the group this
    /// relay emits on, or a NAK to a publisher.
    pub fn poll_transmit(&mut self, buf: &mut Vec<u8>) -> Option<Destination> {
        let (dest, bytes) = self.udp.pop_front()?;
        self.udp_bytes -= bytes.len();
        buf.clear();
        buf.extend_from_slice(&bytes);
        if dest == Destination::Group {
            self.stats.datagrams_out_group += 1;
            self.stats.bytes_out += bytes.len() as u64;
        }
        Some(dest)
    }

    /// The lanes of `link` with frames to send at `now` (none while it is
    /// down).
    pub fn pending_lanes(&self, now: Instant, link: LinkId) -> impl Iterator<Item = Lane> + '_ {
        let l = self.links.get(&link).filter(|l| l.up);
        let control = l
            .filter(|l| !l.control.is_empty() || l.pong.is_some() || l.shed_due(now))
            .map(|_| Lane::Control);
        control.into_iter().chain(
            l.into_iter()
                .flat_map(|l| l.lanes.iter())
                .filter(|(_, o)| !o.queue.is_empty())
                .map(|(s, _)| Lane::Stream(*s)),
        )
    }

    /// Appends the next frame of `lane` on `link` to `out`; false when
    /// there is none (or the link is down). What waited longer than the
    /// queue age is shed first.
    pub fn poll_lane(&mut self, now: Instant, link: LinkId, lane: Lane, out: &mut Vec<u8>) -> bool {
        let age = self.config.queue_age;
        let Some(l) = self.links.get_mut(&link).filter(|l| l.up) else {
            return false;
        };
        match lane {
            Lane::Control => {
                if let Some(t) = l.pong.take() {
                    return Frame::Pong(t).encode(out).is_ok();
                }
                if l.shed_due(now) {
                    l.shed_reported = Some(now);
                    for (stream, (session, datagrams, bytes)) in std::mem::take(&mut l.shed) {
                        let f = Frame::Shed(super::frame::Shed {
                            stream,
                            session,
                            datagrams,
                            bytes,
                        });
                        let mut buf = Vec::new();
                        if f.encode(&mut buf).is_ok() {
                            l.control.push_back(buf);
                        }
                    }
                }
                let Some(frame) = l.control.pop_front() else {
                    return false;
                };
                out.extend_from_slice(&frame);
                true
            }
            Lane::Stream(stream) => {
                let Some(o) = l.lanes.get_mut(&stream) else {
                    return false;
                };
                let sent = loop {
                    let Some(q) = o.queue.pop_front() else {
                        break false;
                    };
                    o.bytes -= q.bytes.len();
                    self.link_bytes -= q.bytes.len().min(self.link_bytes);
                    if now.saturating_duration_since(q.at) > age {
                        let session =
                            peek_header(&q.bytes).map_or(SessionId(0), |(h, _)| h.session);
                        shed(&mut self.stats, &mut l.shed, stream, session, q.bytes.len());
                        continue;
                    }
                    let f = if q.repair {
                        Frame::Repair(&q.bytes)
                    } else {
                        Frame::Datagram(&q.bytes)
                    };
                    if f.encode(out).is_err() {
                        continue;
                    }
                    self.stats.datagrams_out_link += 1;
                    self.stats.bytes_out += q.bytes.len() as u64;
                    break true;
                };
                // An empty lane is forgotten (a stream seen once keeps
                // nothing on the link).
                if o.queue.is_empty() {
                    l.lanes.remove(&stream);
                }
                sent
            }
        }
    }
}

fn shed(
    stats: &mut RelayStats,
    counts: &mut BTreeMap<StreamId, (SessionId, u64, u64)>,
    stream: StreamId,
    session: SessionId,
    len: usize,
) {
    stats.shed_datagrams += 1;
    stats.shed_bytes += len as u64;
    let e = counts.entry(stream).or_insert((session, 0, 0));
    e.0 = session;
    e.1 += 1;
    e.2 += len as u64;
}

/// Where a datagram of `id` on `path` stands.
enum Placed {
    /// Another path carries its session, heard lately.
    Standby,
    /// A session not established yet.
    Candidate,
    /// An established session, at this index.
    Session(usize),
}

/// Places a datagram of session `id` arriving on `path` from `source`
/// (its bytes not heard before, if the session is not established): an
/// established session (taken over if its path went silent or away), a
/// candidate (established after [`ESTABLISH`] distinct datagrams, if a slot
/// is free: an established session that is still heard is never evicted),
/// or standby.
fn place(
    stream: &mut Stream,
    config: &RelayConfig,
    id: SessionId,
    path: Path,
    source: Option<SocketAddr>,
    now: Instant,
) -> Placed {
    if let Some(at) = stream.sessions.iter().position(|s| s.id == id) {
        let Some(s) = stream.sessions.get_mut(at) else {
            return Placed::Standby;
        };
        let silence = now.saturating_duration_since(s.last_heard);
        let alive = silence < alive_for(config.upstream_timeout, s.gap);
        if s.path != path {
            if alive && !s.orphan {
                return Placed::Standby;
            }
            s.path = path;
            s.sources = Sources::new();
            s.origin = source;
        }
        s.gap = s.gap.max(silence.min(Duration::from_secs(60)));
        s.orphan = false;
        return Placed::Session(at);
    }
    let c = match stream.candidates.iter().position(|c| c.id == id) {
        Some(i) => i,
        None => {
            if stream.candidates.len() >= CANDIDATES_PER_STREAM {
                // The one heard least gives way; one that is only waiting
                // for a slot never does.
                let weakest = stream
                    .candidates
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.count < ESTABLISH)
                    .min_by_key(|(_, c)| (c.count, std::cmp::Reverse(c.last_heard)))
                    .map(|(i, _)| i);
                match weakest {
                    Some(i) => {
                        stream.candidates.swap_remove(i);
                    }
                    None => return Placed::Candidate,
                }
            }
            stream.candidates.push(Candidate {
                id,
                path,
                source,
                last_heard: now,
                count: 0,
            });
            stream.candidates.len() - 1
        }
    };
    let Some(cand) = stream.candidates.get_mut(c) else {
        return Placed::Candidate;
    };
    cand.count = cand.count.saturating_add(1);
    cand.last_heard = now;
    cand.path = path;
    if source.is_some() {
        cand.source = source;
    }
    if cand.count < ESTABLISH {
        return Placed::Candidate;
    }
    // Established: a free slot, or one of a session no longer heard.
    if stream.sessions.len() >= SESSIONS_PER_STREAM {
        let stale = stream
            .sessions
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                now.saturating_duration_since(s.last_heard)
                    >= alive_for(config.upstream_timeout, s.gap)
            })
            .min_by_key(|(_, s)| s.last_heard)
            .map(|(i, _)| i);
        match stale {
            Some(i) => {
                stream.sessions.remove(i);
            }
            None => return Placed::Candidate,
        }
    }
    stream.candidates.swap_remove(c);
    stream.sessions.push(Session {
        id,
        path,
        established: now,
        origin: source,
        gap: Duration::ZERO,
        orphan: false,
        sources: Sources::new(),
        last_heard: now,
        forwarded: 0,
        history: History::new(config.history_datagrams, config.history_bytes),
        seen: Seen::new(config.seen_datagrams),
        asked: AskedUpstream::default(),
    });
    Placed::Session(stream.sessions.len() - 1)
}

/// Whether `session` may be answered from history: no session of the
/// stream established *before* it was heard within `settle` (after a
/// publisher restart, repeats of the new session would restart other
/// subscribers' proof of it, PROTOCOL.md §8.2). A session established
/// after it (a forged one, say) never takes local repair away from it.
fn settled(stream: &Stream, session: SessionId, now: Instant, settle: Duration) -> bool {
    let Some(me) = stream.sessions.iter().find(|s| s.id == session) else {
        return false;
    };
    stream.sessions.iter().all(|s| {
        s.id == session
            || s.established > me.established
            || now.saturating_duration_since(s.last_heard) >= settle
    })
}

/// How a relay answers one NAK.
#[derive(Debug, Default)]
struct Plan {
    /// Held datagrams to repeat (their budget taken).
    answer: Vec<u64>,
    /// Some of it is not answered here.
    upstream: bool,
    /// Some of what is not answered here was not asked upstream lately
    /// (plain NAKs, by range).
    news: bool,
    /// Some of it was answered here before and is asked again.
    asked_again: bool,
    /// Repeats the budget refused (asked upstream instead).
    refused_budget: u64,
}

fn plan(
    session: &mut Session,
    budget: &mut Bucket,
    ask: &Asked,
    local: bool,
    to: Option<u64>,
    now: Instant,
    config: &RelayConfig,
) -> Plan {
    let mut plan = Plan {
        upstream: !local,
        news: !ask.readable,
        ..Plan::default()
    };
    let mut looked = 0usize;
    let mut numbers = Vec::new();
    for &(first, last) in &ask.seqs {
        let span = last.saturating_sub(first).saturating_add(1);
        let mut held = 0u64;
        let mut unanswered = !local;
        if local {
            numbers.clear();
            for (_, claim) in session.history.claims(first, last) {
                if looked >= MAX_ASKED {
                    unanswered = true;
                    break;
                }
                looked += 1;
                held += 1;
                if claim.contested {
                    unanswered = true;
                } else {
                    numbers.push(claim.held.iter().map(|&(n, _)| n).collect::<Vec<_>>());
                }
            }
            for n in &numbers {
                if !answer_from(n, session, budget, to, now, config, &mut plan) {
                    unanswered = true;
                }
            }
        }
        if held < span {
            unanswered = true;
        }
        if unanswered {
            plan.upstream = true;
            plan.news |= !session
                .asked
                .covered(first, last, now, config.forward_holdoff);
        }
    }
    // FragNaks go upstream: which held datagrams carry the pieces asked
    // for, and which of them are genuine, a keyless relay cannot tell well
    // enough to answer (a forger can pre-claim fragment ids).
    if !ask.frags.is_empty() {
        plan.upstream = true;
        plan.news = true;
    }
    plan.answer.sort_unstable();
    plan.answer.dedup();
    plan
}

/// Adds the held datagrams `numbers` to the answer, each within the
/// budget; false if none is held, the budget refuses one, or one was
/// repeated before and is asked for again (the local answer did not do:
/// the publisher gets a say too).
fn answer_from(
    numbers: &[u64],
    session: &mut Session,
    budget: &mut Bucket,
    to: Option<u64>,
    now: Instant,
    config: &RelayConfig,
    plan: &mut Plan,
) -> bool {
    let mut answered = !numbers.is_empty();
    for &n in numbers {
        if plan.answer.contains(&n) {
            continue;
        }
        let Some(h) = session.history.get_mut(n) else {
            answered = false;
            continue;
        };
        // Only a repeat to the same place holds this one back, or makes it
        // a second ask.
        let last = h
            .last_repeat
            .filter(|(dest, _)| *dest == to)
            .map(|(_, t)| t);
        match last {
            Some(t) if now.saturating_duration_since(t) < config.repair_holdoff => {}
            last => {
                if last.is_some() {
                    plan.asked_again = true;
                    answered = false;
                }
                if budget.take(now, h.bytes.len() as f64) {
                    h.last_repeat = Some((to, now));
                    plan.answer.push(n);
                } else {
                    plan.refused_budget += 1;
                    answered = false;
                }
            }
        }
    }
    answered
}
