//! The relay engine: forwarding, history, local repair, NAK forwarding and
//! bounded link queues, with no I/O (the house's sans-IO shape).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::classify::{asked, classify, NotRelayed};
use super::config::RelayConfig;
use super::frame::{Frame, NAK_SECOND_ASK};
use super::history::{History, Seen};
use super::stats::{Dropped, RelayStats};
use crate::transmit::Destination;
use crate::{SessionId, StreamId};

/// A link to another relay or a unicast subscriber, named by the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LinkId(pub u64);

/// Which way a stream's datagrams flow on a link.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkKind {
    /// The relay sends datagrams into it (a listener it feeds, or a unicast
    /// subscriber); NAKs come back. `streams` empty: all.
    Sink {
        /// The streams it takes; empty: all.
        streams: Vec<StreamId>,
        /// The largest datagram the peer takes.
        max_datagram: usize,
    },
    /// The relay receives datagrams from it (a feeder); NAKs go to it.
    Source,
}

/// Where a session's datagrams come from, and its NAKs go to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Upstream {
    /// The group read by this relay; NAKs go by unicast to `source`, the
    /// address its latest datagram came from (the publisher).
    Group { source: SocketAddr },
    /// A feeder's link.
    Link(LinkId),
}

impl Upstream {
    fn same_path(self, other: Upstream) -> bool {
        match (self, other) {
            (Upstream::Group { .. }, Upstream::Group { .. }) => true,
            (a, b) => a == b,
        }
    }
}

/// Where a NAK came from, and its repeats go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NakOrigin {
    /// A subscriber on the group this relay emits on (a unicast datagram
    /// to its emitting socket from `from`).
    Group(SocketAddr),
    /// A link (a downstream relay or a unicast subscriber).
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

#[derive(Debug)]
struct Queued {
    at: Instant,
    repair: bool,
    session: SessionId,
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
    lanes: BTreeMap<StreamId, Outbox>,
    /// Shed since the last Shed frame, per (stream, session).
    shed: BTreeMap<(StreamId, SessionId), (u64, u64)>,
    shed_reported: Option<Instant>,
}

impl Link {
    fn takes(&self, stream: StreamId) -> bool {
        match &self.kind {
            LinkKind::Sink { streams, .. } => streams.is_empty() || streams.contains(&stream),
            LinkKind::Source => false,
        }
    }

    /// Whether a Shed frame is due.
    fn shed_due(&self, now: Instant) -> bool {
        !self.shed.is_empty()
            && self
                .shed_reported
                .is_none_or(|t| now.saturating_duration_since(t) >= SHED_REPORT_EVERY)
    }

    fn max_datagram(&self) -> usize {
        match &self.kind {
            LinkKind::Sink { max_datagram, .. } => *max_datagram,
            LinkKind::Source => usize::MAX,
        }
    }
}

/// A token bucket in bytes or datagrams.
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

#[derive(Debug)]
struct Session {
    id: SessionId,
    upstream: Upstream,
    first_heard: Instant,
    last_heard: Instant,
    /// Datagrams forwarded in the session: the next arrival number.
    forwarded: u64,
    history: History,
    seen: Seen,
    /// Sequence numbers forwarded upstream, and when.
    forwarded_seqs: BTreeMap<u64, Instant>,
}

#[derive(Debug)]
struct Stream {
    sessions: Vec<Session>,
    /// Repeats of this stream's datagrams, in bytes: credited by live
    /// traffic (a share of it), refilled at a floor rate.
    repeat_budget: Bucket,
}

/// Most sessions held per stream: the newest and the one before.
const SESSIONS_PER_STREAM: usize = 2;
/// Most sequence numbers of one NAK looked up in the history; the rest is
/// asked upstream.
const MAX_ASKED: u64 = 16_384;
/// Most entries of a session's forwarded-sequence table.
const MAX_FORWARDED_SEQS: usize = 16_384;
/// At most one Shed frame per link this often.
const SHED_REPORT_EVERY: Duration = Duration::from_secs(1);

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
    nak_forward: Bucket,
    scratch: Vec<u8>,
    stats: RelayStats,
}

impl Relay {
    /// A relay with `config`; `seed` keys its duplicate detection (pass a
    /// random one).
    #[must_use]
    pub fn new(config: RelayConfig, now: Instant, seed: u64) -> Self {
        let rate = config.nak_forward_rate;
        Self {
            nak_forward: Bucket::new(now, rate, rate.max(1.0) * 0.1 + 16.0),
            config,
            seed,
            streams: HashMap::new(),
            links: BTreeMap::new(),
            own: Vec::new(),
            udp: VecDeque::new(),
            udp_bytes: 0,
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
        s.queued_bytes = self.udp_bytes
            + self
                .links
                .values()
                .flat_map(|l| l.lanes.values())
                .map(|o| o.bytes)
                .sum::<usize>();
        s.sessions = self.streams.values().map(|s| s.sessions.len()).sum();
        s.held_datagrams = self
            .streams
            .values()
            .flat_map(|s| &s.sessions)
            .map(|s| s.history.len())
            .sum();
        s.held_bytes = self
            .streams
            .values()
            .flat_map(|s| &s.sessions)
            .map(|s| s.history.bytes())
            .sum();
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
        self.links.insert(
            id,
            Link {
                kind,
                up,
                control: VecDeque::new(),
                lanes: BTreeMap::new(),
                shed: BTreeMap::new(),
                shed_reported: None,
            },
        );
    }

    /// A link went down or came back. A sink link's queues keep filling
    /// (and shedding) while it is down and drain when it is back; what was
    /// queued for its control lane is dropped.
    pub fn set_link_up(&mut self, id: LinkId, up: bool) {
        if let Some(l) = self.links.get_mut(&id) {
            l.up = up;
            l.control.clear();
            l.shed_reported = None;
        }
    }

    /// Forgets a link and everything queued for it.
    pub fn remove_link(&mut self, id: LinkId) {
        self.links.remove(&id);
    }

    /// Handles a datagram heard on the group this relay reads, from `from`.
    pub fn handle_group(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        if self.own.contains(&from) {
            self.stats.count(Dropped::OwnOutput);
            return;
        }
        self.accept(now, Upstream::Group { source: from }, datagram, false);
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
                self.accept(now, Upstream::Link(link), d, false)
            }
            (Frame::Repair(d), LinkKind::Source) => self.accept(now, Upstream::Link(link), d, true),
            (Frame::Nak { flags, datagram }, LinkKind::Sink { .. }) => {
                self.nak(
                    now,
                    NakOrigin::Link(link),
                    datagram,
                    flags & NAK_SECOND_ASK != 0,
                );
            }
            (Frame::Shed(s), LinkKind::Source) => {
                self.stats.peer_shed_datagrams += s.datagrams;
                self.stats.peer_shed_bytes += s.bytes;
            }
            (Frame::Ping(t), _) => self.control(link, &Frame::Pong(*t)),
            (Frame::Datagram(_) | Frame::Repair(_) | Frame::Shed(_), _)
            | (Frame::Nak { .. }, _) => {
                self.stats.count(Dropped::WrongDirection);
            }
            _ => {}
        }
    }

    fn control(&mut self, link: LinkId, frame: &Frame<'_>) {
        if let Some(l) = self.links.get_mut(&link).filter(|l| l.up) {
            let mut buf = Vec::new();
            if frame.encode(&mut buf).is_ok() {
                l.control.push_back(buf);
            }
        }
    }

    fn accept(&mut self, now: Instant, upstream: Upstream, datagram: &[u8], repair: bool) {
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
        if !self.admits(header.stream) {
            return self.stats.count(Dropped::ForeignStream);
        }
        let hash = xxhash_rust::xxh3::xxh3_64_with_seed(datagram, self.seed);
        let config = &self.config;
        let stream = self.streams.entry(header.stream).or_insert_with(|| Stream {
            sessions: Vec::new(),
            repeat_budget: Bucket::new(now, config.repeat_floor, config.repeat_burst),
        });
        let Some(at) = session_slot(stream, config, header.session, upstream, now) else {
            return self.stats.count(Dropped::Standby);
        };
        let Some(session) = stream.sessions.get_mut(at) else {
            return;
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
                session
                    .history
                    .insert(n, datagram.into(), &class.seqs, &class.frags);
            }
            let Some(number) = session.history.find(&class.seqs, &class.frags, datagram) else {
                return;
            };
            let id = session.id;
            return self.repeat(now, header.stream, id, number, None);
        }
        if !session.seen.insert(hash) {
            return self.stats.count(Dropped::Duplicate);
        }
        session.upstream = upstream;
        session.last_heard = now;
        let number = session.forwarded;
        session.forwarded += 1;
        let bytes: Arc<[u8]> = datagram.into();
        if class.repeatable() {
            session
                .history
                .insert(number, Arc::clone(&bytes), &class.seqs, &class.frags);
        }
        session
            .history
            .expire(session.forwarded, self.config.fresh_datagrams);
        stream
            .repeat_budget
            .credit(datagram.len() as f64 * self.config.repeat_share);
        let session_id = session.id;
        if self.config.emit_to_group && !matches!(upstream, Upstream::Group { .. }) {
            self.push_udp(Destination::Group, Arc::clone(&bytes));
        }
        let from_link = match upstream {
            Upstream::Link(l) => Some(l),
            Upstream::Group { .. } => None,
        };
        let sinks: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(id, l)| Some(**id) != from_link && l.takes(header.stream))
            .map(|(id, _)| *id)
            .collect();
        for link in sinks {
            self.enqueue(
                now,
                link,
                header.stream,
                session_id,
                Arc::clone(&bytes),
                false,
            );
        }
    }

    fn admits(&self, stream: StreamId) -> bool {
        if !self.config.streams.is_empty() {
            return self.config.streams.contains(&stream);
        }
        self.streams.contains_key(&stream) || self.streams.len() < self.config.max_streams
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
        session: SessionId,
        bytes: Arc<[u8]>,
        repair: bool,
    ) {
        let limit = self.config.queue_bytes;
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        if bytes.len() > l.max_datagram() {
            return self.stats.count(Dropped::TooLarge);
        }
        let out = l.lanes.entry(stream).or_default();
        out.bytes += bytes.len();
        out.queue.push_back(Queued {
            at: now,
            repair,
            session,
            bytes,
        });
        while out.bytes > limit {
            let Some(old) = out.queue.pop_front() else {
                break;
            };
            out.bytes -= old.bytes.len();
            shed(&mut self.stats, &mut l.shed, stream, &old);
        }
    }

    fn nak(&mut self, now: Instant, origin: NakOrigin, datagram: &[u8], second_ask: bool) {
        self.stats.naks_received += 1;
        let Some(ask) = asked(datagram, &mut self.scratch) else {
            return self.stats.count(Dropped::BadNak);
        };
        let Some(header) = ask.header else {
            return self.stats.count(Dropped::BadNak);
        };
        let config = &self.config;
        let Some(stream) = self.streams.get_mut(&header.stream) else {
            return self.stats.count(Dropped::UnknownSession);
        };
        let settled = settled(stream, header.session, now, config.session_settle);
        let Some(session) = stream.sessions.iter_mut().find(|s| s.id == header.session) else {
            return self.stats.count(Dropped::UnknownSession);
        };
        let local = ask.readable && !second_ask && settled;
        if ask.readable && !second_ask && !settled {
            self.stats.repeats_refused_unsettled += 1;
        }
        let plan = plan(session, &ask, local, now, config);
        self.stats.nak_answers += plan.answer.len() as u64;
        let (session_id, upstream) = (session.id, session.upstream);
        if plan.upstream && (plan.news || second_ask || plan.asked_again) {
            if self.nak_forward.take(now, 1.0) {
                remember_forwarded(session, &ask, now, config.forward_holdoff);
                self.forward_nak(upstream, datagram, second_ask || plan.asked_again);
            } else {
                self.stats.naks_forward_limited += 1;
            }
        } else if plan.upstream {
            self.stats.naks_coalesced += 1;
        }
        let to = match origin {
            NakOrigin::Group(_) => None,
            NakOrigin::Link(l) => Some(l),
        };
        for n in plan.answer {
            self.repeat(now, header.stream, session_id, n, Some(to));
        }
    }

    fn forward_nak(&mut self, upstream: Upstream, datagram: &[u8], second_ask: bool) {
        self.stats.naks_forwarded += 1;
        match upstream {
            Upstream::Group { source } => {
                self.push_udp(Destination::Unicast(source), datagram.into());
            }
            Upstream::Link(l) => {
                let flags = if second_ask { NAK_SECOND_ASK } else { 0 };
                self.control(l, &Frame::Nak { flags, datagram });
            }
        }
    }

    /// Repeats held datagram `number`: to the group (`to` = `Some(None)`,
    /// a NAK heard on the group), to one link (`Some(Some(link))`), or
    /// everywhere it would have gone live (`None`, a repair from upstream).
    fn repeat(
        &mut self,
        now: Instant,
        stream: StreamId,
        session: SessionId,
        number: u64,
        to: Option<Option<LinkId>>,
    ) {
        let Some(st) = self.streams.get_mut(&stream) else {
            return;
        };
        let Some(s) = st.sessions.iter_mut().find(|s| s.id == session) else {
            return;
        };
        let upstream = s.upstream;
        let Some(h) = s.history.get_mut(number) else {
            return;
        };
        if h.last_repeat
            .is_some_and(|t| now.saturating_duration_since(t) < self.config.repair_holdoff)
        {
            self.stats.repeats_coalesced += 1;
            return;
        }
        if !st.repeat_budget.take(now, h.bytes.len() as f64) {
            self.stats.repeats_refused_budget += 1;
            return;
        }
        h.last_repeat = Some(now);
        h.repeats += 1;
        let bytes = Arc::clone(&h.bytes);
        self.stats.repeats += 1;
        self.stats.repeat_bytes += bytes.len() as u64;
        let group = self.config.emit_to_group;
        match to {
            Some(None) => {
                if group {
                    self.push_udp(Destination::Group, bytes);
                }
            }
            Some(Some(link)) => self.enqueue(now, link, stream, session, bytes, true),
            None => {
                if group && !matches!(upstream, Upstream::Group { .. }) {
                    self.push_udp(Destination::Group, Arc::clone(&bytes));
                }
                let from = match upstream {
                    Upstream::Link(l) => Some(l),
                    Upstream::Group { .. } => None,
                };
                let sinks: Vec<LinkId> = self
                    .links
                    .iter()
                    .filter(|(id, l)| Some(**id) != from && l.takes(stream))
                    .map(|(id, _)| *id)
                    .collect();
                for link in sinks {
                    self.enqueue(now, link, stream, session, Arc::clone(&bytes), true);
                }
            }
        }
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
            .filter(|l| !l.control.is_empty() || l.shed_due(now))
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
                if l.shed_due(now) {
                    l.shed_reported = Some(now);
                    for ((stream, session), (datagrams, bytes)) in std::mem::take(&mut l.shed) {
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
                while let Some(q) = o.queue.pop_front() {
                    o.bytes -= q.bytes.len();
                    if now.saturating_duration_since(q.at) > age {
                        shed(&mut self.stats, &mut l.shed, stream, &q);
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
                    return true;
                }
                false
            }
        }
    }
}

fn shed(
    stats: &mut RelayStats,
    counts: &mut BTreeMap<(StreamId, SessionId), (u64, u64)>,
    stream: StreamId,
    q: &Queued,
) {
    stats.shed_datagrams += 1;
    stats.shed_bytes += q.bytes.len() as u64;
    let e = counts.entry((stream, q.session)).or_default();
    e.0 += 1;
    e.1 += q.bytes.len() as u64;
}

/// The index of `session`'s state in `stream`, made if new (the least
/// recently heard of [`SESSIONS_PER_STREAM`] is forgotten), or `None` when
/// another upstream carries it and was heard within the upstream timeout.
fn session_slot(
    stream: &mut Stream,
    config: &RelayConfig,
    id: SessionId,
    upstream: Upstream,
    now: Instant,
) -> Option<usize> {
    if let Some(at) = stream.sessions.iter().position(|s| s.id == id) {
        let s = stream.sessions.get(at)?;
        let alive = now.saturating_duration_since(s.last_heard) < config.upstream_timeout;
        if !s.upstream.same_path(upstream) && alive {
            return None;
        }
        return Some(at);
    }
    if stream.sessions.len() >= SESSIONS_PER_STREAM {
        let oldest = stream
            .sessions
            .iter()
            .enumerate()
            .min_by_key(|(_, s)| s.last_heard)
            .map(|(i, _)| i)?;
        stream.sessions.remove(oldest);
    }
    stream.sessions.push(Session {
        id,
        upstream,
        first_heard: now,
        last_heard: now,
        forwarded: 0,
        history: History::new(config.history_datagrams, config.history_bytes),
        seen: Seen::new(config.seen_datagrams),
        forwarded_seqs: BTreeMap::new(),
    });
    Some(stream.sessions.len() - 1)
}

/// Whether `session` may be answered from history: it is the stream's
/// newest, and no other session was heard within `settle` (repeats of one
/// session would restart other subscribers' proof of a new one, PROTOCOL.md
/// §8.2).
fn settled(stream: &Stream, session: SessionId, now: Instant, settle: Duration) -> bool {
    let Some(me) = stream.sessions.iter().find(|s| s.id == session) else {
        return false;
    };
    stream.sessions.iter().all(|s| {
        s.id == session
            || (s.first_heard < me.first_heard
                && now.saturating_duration_since(s.last_heard) >= settle)
    })
}

/// How a relay answers one NAK.
#[derive(Debug, Default)]
struct Plan {
    /// Held datagrams to repeat.
    answer: Vec<u64>,
    /// Some of it is not answered here.
    upstream: bool,
    /// Some of what is not answered here was not asked upstream lately.
    news: bool,
    /// Some of it was answered here before and is asked again.
    asked_again: bool,
}

fn plan(
    session: &mut Session,
    ask: &super::classify::Asked,
    local: bool,
    now: Instant,
    config: &RelayConfig,
) -> Plan {
    let mut plan = Plan {
        upstream: !local,
        news: !ask.readable,
        ..Plan::default()
    };
    let mut looked = 0u64;
    let mut numbers = Vec::new();
    for &(first, last) in &ask.seqs {
        let mut s = first;
        loop {
            if looked >= MAX_ASKED {
                plan.upstream = true;
                plan.news = true;
                break;
            }
            looked += 1;
            numbers.clear();
            numbers.extend_from_slice(session.history.by_seq(s));
            if !(local && answer_from(&numbers, session, now, config, &mut plan)) {
                plan.upstream = true;
                plan.news |= session
                    .forwarded_seqs
                    .get(&s)
                    .is_none_or(|&t| now.saturating_duration_since(t) >= config.forward_holdoff);
            }
            if s >= last {
                break;
            }
            s += 1;
        }
    }
    for &f in &ask.frags {
        numbers.clear();
        numbers.extend_from_slice(session.history.by_frag(f));
        if !(local && answer_from(&numbers, session, now, config, &mut plan)) {
            plan.upstream = true;
            plan.news = true;
        }
    }
    plan.answer.sort_unstable();
    plan.answer.dedup();
    plan
}

/// Adds the held datagrams `numbers` to the answer; false if none is held,
/// or one was repeated before and is asked for again (the local answer did
/// not do: the publisher gets a say too).
fn answer_from(
    numbers: &[u64],
    session: &mut Session,
    now: Instant,
    config: &RelayConfig,
    plan: &mut Plan,
) -> bool {
    let mut any = false;
    for &n in numbers {
        let Some(h) = session.history.get_mut(n) else {
            continue;
        };
        any = true;
        match h.last_repeat {
            Some(t) if now.saturating_duration_since(t) < config.repair_holdoff => {}
            Some(_) => {
                plan.answer.push(n);
                plan.asked_again = true;
                return false;
            }
            None => plan.answer.push(n),
        }
    }
    any
}

fn remember_forwarded(
    session: &mut Session,
    ask: &super::classify::Asked,
    now: Instant,
    holdoff: Duration,
) {
    let mut budget = MAX_ASKED;
    for &(first, last) in &ask.seqs {
        let mut s = first;
        while budget > 0 {
            session.forwarded_seqs.insert(s, now);
            budget -= 1;
            if s >= last {
                break;
            }
            s += 1;
        }
    }
    if session.forwarded_seqs.len() > MAX_FORWARDED_SEQS {
        session
            .forwarded_seqs
            .retain(|_, t| now.saturating_duration_since(*t) < holdoff);
        while session.forwarded_seqs.len() > MAX_FORWARDED_SEQS {
            session.forwarded_seqs.pop_first();
        }
    }
}
