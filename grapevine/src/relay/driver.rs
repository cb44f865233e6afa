//! The relay's tasks: the main task owns the engine
//! ([`grapevine_core::relay::Relay`]) and the UDP sockets; dialer and
//! listener tasks make links; each link has reader and writer tasks.
//!
//! The main task never waits on a link: it hands a lane a frame only when
//! that lane's writer channel has room, so a slow link fills (and sheds)
//! the engine's bounded queues, never the group reader.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use grapevine_core::relay::frame::{decode, Decoded, Frame, Hello, RefuseCode, Role, Welcome};
use grapevine_core::relay::{Lane, LinkId, LinkKind, Relay as Engine};
use grapevine_core::Destination;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch, Notify};

use super::link::{
    answer, dial_handshake, lane_of, read_frames, read_hello, write_frames, BoxRead, BoxWrite,
    Conn, Established, LaneKind, LinkEvent, DEAD_AFTER, LANE_FRAMES,
};
use super::tls::{peer_fingerprint, tls_peer_fingerprint, FeederPolicy, Identity, Trust};
use super::transport::{quic_client, quic_connect, quic_server, tcp_connect, TcpTlsListener};
use super::{RelayError, Stats, Transport};

/// The dialed link's id.
pub(crate) const DIALED: LinkId = LinkId(0);

/// What the main task needs.
pub(crate) struct Main {
    pub(crate) engine: Engine,
    pub(crate) group_rx: Option<UdpSocket>,
    pub(crate) sender: UdpSocket,
    pub(crate) to_group: Option<SocketAddr>,
    pub(crate) events: mpsc::Receiver<LinkEvent>,
    /// For the link tasks the main task starts.
    pub(crate) events_tx: mpsc::Sender<LinkEvent>,
    pub(crate) stats: Arc<Mutex<Stats>>,
    pub(crate) stop: watch::Receiver<bool>,
    pub(crate) name: String,
    pub(crate) metrics_due: Option<Instant>,
}

struct LinkState {
    generation: u64,
    conn: Conn,
    writers: HashMap<Lane, mpsc::Sender<Vec<u8>>>,
    control: Option<mpsc::Sender<Vec<u8>>>,
    peer: SocketAddr,
    dialed: bool,
    subscriber: bool,
    /// Dropped when the link is: tells its dialer.
    _on_down: Option<tokio::sync::oneshot::Sender<()>>,
    /// Dropped when the link is: tells the listener a subscriber left.
    _slot: Option<SubscriberSlot>,
    /// For its lane writers to report a failure.
    events: Option<mpsc::Sender<LinkEvent>>,
    /// A feeder's link, and its certificate.
    feeder: bool,
    fingerprint: Option<super::tls::Fingerprint>,
}

/// A unicast subscriber's place in the listener's count, given back when
/// dropped.
#[derive(Debug)]
pub(crate) struct SubscriberSlot(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for SubscriberSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Main {
    pub(crate) async fn run(mut self) -> Result<(), RelayError> {
        let progress = Arc::new(Notify::new());
        let mut links: HashMap<LinkId, LinkState> = HashMap::new();
        let mut gbuf = vec![0u8; 65_536];
        let mut nbuf = vec![0u8; 65_536];
        let mut out = Vec::with_capacity(65_536);
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A datagram the socket would not take yet.
        let mut pending: Option<(SocketAddr, Vec<u8>)> = None;
        // NAKs reach the emitting socket; a relay that emits on no group
        // takes nothing there.
        let naks_here = self.to_group.is_some();
        loop {
            let now = Instant::now();
            self.flush_udp(&mut out, &mut pending);
            self.flush_links(now, &mut links, &progress);
            tokio::select! {
                r = self.sender.writable(), if pending.is_some() => {
                    if r.is_err() {
                        pending = None;
                    }
                }
                r = recv(self.group_rx.as_ref(), &mut gbuf) => match r {
                    Ok((n, from)) => {
                        if let Some(d) = gbuf.get(..n) {
                            self.engine.handle_group(Instant::now(), from, d);
                        }
                    }
                    Err(e) => tracing::warn!(relay = %self.name, "group receive failed: {e}"),
                },
                                r = self.sender.recv_from(&mut nbuf), if naks_here => match r {
                    Ok((n, from)) => {
                        if let Some(d) = nbuf.get(..n) {
                            self.engine.handle_nak(Instant::now(), from, d);
                        }
                    }
                    Err(e) => tracing::debug!(relay = %self.name, "receive on the emitting socket failed: {e}"),
                },
                ev = self.events.recv() => match ev {
                    Some(ev) => self.link_event(ev, &mut links, &progress),
                    None => return Ok(()),
                },
                () = progress.notified() => {}
                _ = tick.tick() => self.publish_stats(&links),
                r = self.stop.changed() => {
                    if r.is_err() || *self.stop.borrow() {
                        self.publish_stats(&links);
                        for (_, l) in links.drain() {
                            if let Conn::Quic { connection, .. } = &l.conn {
                                connection.close(0u32.into(), b"relay stopped");
                            }
                        }
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Sends what the engine has for UDP without waiting: what the socket
    /// will not take yet waits in `pending` (and the engine's queue, bounded
    /// and shedding, behind it).
    fn flush_udp(&mut self, out: &mut Vec<u8>, pending: &mut Option<(SocketAddr, Vec<u8>)>) {
        loop {
            let (to, bytes) = match pending.take() {
                Some(p) => p,
                None => {
                    let Some(dest) = self.engine.poll_transmit(out) else {
                        return;
                    };
                    let to = match dest {
                        Destination::Group => match self.to_group {
                            Some(g) => g,
                            None => continue,
                        },
                        Destination::Unicast(a) => a,
                        _ => continue,
                    };
                    (to, std::mem::take(out))
                }
            };
            match self.sender.try_send_to(&bytes, to) {
                Ok(_) => *out = bytes,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    *pending = Some((to, bytes));
                    return;
                }
                Err(e) => {
                    tracing::debug!(relay = %self.name, "send to {to} failed: {e}");
                    *out = bytes;
                }
            }
        }
    }

    fn flush_links(
        &mut self,
        now: Instant,
        links: &mut HashMap<LinkId, LinkState>,
        progress: &Arc<Notify>,
    ) {
        for (&id, l) in links.iter_mut() {
            let lanes: Vec<Lane> = self.engine.pending_lanes(now, id).collect();
            for lane in lanes {
                let Some(tx) = writer(l, id, lane, progress) else {
                    continue;
                };
                loop {
                    let Ok(permit) = tx.try_reserve() else {
                        break;
                    };
                    let mut f = Vec::new();
                    if !self.engine.poll_lane(now, id, lane, &mut f) {
                        break;
                    }
                    permit.send(f);
                }
            }
        }
    }

    fn link_event(
        &mut self,
        ev: LinkEvent,
        links: &mut HashMap<LinkId, LinkState>,
        progress: &Arc<Notify>,
    ) {
        match ev {
            LinkEvent::Frame(id, generation, bytes) => {
                // Frames of an earlier connection of the link are its.
                if links.get(&id).is_none_or(|l| l.generation != generation) {
                    return;
                }
                match decode(&bytes) {
                    Ok(Decoded::Frame(Frame::Pong(_), _)) => {}
                    Ok(Decoded::Frame(Frame::Goodbye { code, reason }, _)) => {
                        let why = format!("the peer said goodbye ({code}): {reason}");
                        self.link_event(
                            LinkEvent::Down {
                                link: id,
                                generation,
                                why,
                            },
                            links,
                            progress,
                        );
                    }
                    Ok(Decoded::Frame(f, _)) => self.engine.handle_frame(Instant::now(), id, &f),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(relay = %self.name, link = id.0, "bad frame: {e}"),
                }
            }
            LinkEvent::Up(est) => {
                let est = *est;
                let id = est.link;
                tracing::info!(
                    relay = %self.name,
                    link = id.0,
                    peer = %est.peer,
                    transport = ?est.conn,
                    fingerprint = %est.fingerprint.map(|f| f.to_string()).unwrap_or_else(|| "none".into()),
                    kind = ?est.kind,
                    "link up"
                );
                let subscriber = matches!(&est.kind, LinkKind::Subscriber { .. });
                // A feeder reconnecting (restarted, or its old connection
                // not yet known dead) replaces its old link at once: its
                // sessions are not left standby behind a dead one.
                if est.kind == LinkKind::Source && est.fingerprint.is_some() {
                    let stale: Vec<(LinkId, u64)> = links
                        .iter()
                        .filter(|(_, l)| l.feeder && l.fingerprint == est.fingerprint)
                        .map(|(id, l)| (*id, l.generation))
                        .collect();
                    for (link, generation) in stale {
                        let why = "the feeder reconnected".to_string();
                        self.link_event(
                            LinkEvent::Down {
                                link,
                                generation,
                                why,
                            },
                            links,
                            progress,
                        );
                    }
                }
                if est.dialed {
                    self.engine.set_link_up(id, true);
                    if let LinkKind::Sink { max_datagram, .. } = est.kind {
                        self.engine.set_max_datagram(id, max_datagram);
                    }
                } else {
                    self.engine.add_link(id, est.kind.clone(), true);
                }
                let mut state = LinkState {
                    generation: est.generation,
                    conn: est.conn,
                    writers: HashMap::new(),
                    control: None,
                    peer: est.peer,
                    dialed: est.dialed,
                    subscriber,
                    _on_down: est.on_down,
                    _slot: est.slot,
                    events: None,
                    feeder: est.kind == LinkKind::Source,
                    fingerprint: est.fingerprint,
                };
                start_control(&mut state, id, progress, self.events_tx.clone());
                state.events = Some(self.events_tx.clone());
                if let Ok(mut s) = self.stats.lock() {
                    s.link_connects += 1;
                }
                links.insert(id, state);
            }
            LinkEvent::Down {
                link,
                generation,
                why,
            } => {
                let Some(l) = links.get(&link) else {
                    return;
                };
                if l.generation != generation {
                    return;
                }
                tracing::warn!(relay = %self.name, link = link.0, peer = %l.peer, "link down: {why}");
                if let Ok(mut s) = self.stats.lock() {
                    s.link_failures += 1;
                }
                if let Some(l) = links.remove(&link) {
                    if let Conn::Quic { connection, .. } = &l.conn {
                        connection.close(0u32.into(), b"link down");
                    }
                    if l.dialed {
                        self.engine.set_link_up(link, false);
                    } else {
                        self.engine.remove_link(link);
                    }
                }
            }
        }
    }

    fn publish_stats(&mut self, links: &HashMap<LinkId, LinkState>) {
        let snapshot = match self.stats.lock() {
            Ok(mut s) => {
                s.core = self.engine.stats();
                s.links_up = links.len();
                s.subscribers = links.values().filter(|l| l.subscriber).count();
                s.clone()
            }
            Err(_) => return,
        };
        let now = Instant::now();
        if self.metrics_due.is_none_or(|t| now >= t) {
            self.metrics_due = Some(now + crate::metrics::INTERVAL);
            crate::metrics::record_relay(&self.name, &snapshot);
        }
    }
}

async fn recv(sock: Option<&UdpSocket>, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
    match sock {
        Some(s) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

/// Starts the control lane's reader and writer (and, for QUIC, the
/// acceptor of the peer's lanes).
fn start_control(
    l: &mut LinkState,
    id: LinkId,
    progress: &Arc<Notify>,
    events: mpsc::Sender<LinkEvent>,
) {
    let control = match &mut l.conn {
        Conn::Quic { control, .. } | Conn::Tcp { control } => control.take(),
    };
    let Some((r, w)) = control else {
        return;
    };
    let generation = l.generation;
    let idle = control_idle(&l.conn);
    let (tx, rx) = mpsc::channel(LANE_FRAMES);
    l.control = Some(tx);
    let down = events.clone();
    let p = Arc::clone(progress);
    tokio::spawn(async move {
        if let Err(e) = write_frames(w, rx, p, true).await {
            let _ = down
                .send(LinkEvent::Down {
                    link: id,
                    generation,
                    why: format!("writing: {e}"),
                })
                .await;
        }
    });
    let down = events.clone();
    let ev = events.clone();
    tokio::spawn(async move {
        let e = read_frames(r, id, generation, ev, idle).await;
        let why = match e {
            Ok(()) => "closed".to_string(),
            Err(e) => e.to_string(),
        };
        let _ = down
            .send(LinkEvent::Down {
                link: id,
                generation,
                why,
            })
            .await;
    });
    if let Conn::Quic { connection, .. } = &l.conn {
        let connection = connection.clone();
        tokio::spawn(async move {
            while let Ok(recv) = connection.accept_uni().await {
                let ev = events.clone();
                tokio::spawn(async move {
                    let _ = read_frames(Box::new(recv), id, generation, ev, None).await;
                });
            }
        });
    }
}

/// How long the control lane of `conn` may be silent before the link is
/// dead: [`DEAD_AFTER`] over TCP, where it is the only sign of life. A QUIC
/// connection is judged by QUIC's own idle timeout (the same length, see
/// [`transport_config`](super::transport::transport_config)), which counts
/// every packet the peer sends. The control lane's bytes come later than
/// the first packet after an outage: QUIC's probes back off exponentially
/// (after a 3 s outage the first may come 6 s after it began) and the
/// lane's frames then wait behind the lost data resent. Timing the lane
/// took a link down that a 3 s outage left alive.
fn control_idle(conn: &Conn) -> Option<Duration> {
    match conn {
        Conn::Quic { .. } => None,
        Conn::Tcp { .. } => Some(DEAD_AFTER),
    }
}

/// The channel of `lane` on link `l`, started if needed.
fn writer(
    l: &mut LinkState,
    id: LinkId,
    lane: Lane,
    progress: &Arc<Notify>,
) -> Option<mpsc::Sender<Vec<u8>>> {
    if lane_of(&l.conn, lane) == LaneKind::Control {
        return l.control.clone();
    }
    if let Some(tx) = l.writers.get(&lane) {
        return Some(tx.clone());
    }
    let Conn::Quic { connection, .. } = &l.conn else {
        return l.control.clone();
    };
    let (tx, rx) = mpsc::channel(LANE_FRAMES);
    let connection = connection.clone();
    let p = Arc::clone(progress);
    let (events, generation) = (l.events.clone(), l.generation);
    tokio::spawn(async move {
        // A lane that cannot be opened or written takes the link down (its
        // dialer reconnects): a stream must not be black-holed.
        // Bounded: past the peer's stream limit, opening waits for ever.
        let why = match tokio::time::timeout(DEAD_AFTER, connection.open_uni()).await {
            Ok(Ok(send)) => match write_frames(Box::new(send), rx, p, false).await {
                Ok(()) => return,
                Err(e) => format!("a lane failed: {e}"),
            },
            Ok(Err(e)) => format!("cannot open a lane: {e}"),
            Err(_) => format!("no lane opened within {DEAD_AFTER:?} (the peer's stream limit)"),
        };
        if let Some(events) = events {
            let _ = events
                .send(LinkEvent::Down {
                    link: id,
                    generation,
                    why,
                })
                .await;
        }
    });
    l.writers.insert(lane, tx.clone());
    Some(tx)
}

/// What a dialer needs.
pub(crate) struct Dialer {
    pub(crate) to: SocketAddr,
    pub(crate) server_name: String,
    pub(crate) trust: Trust,
    pub(crate) identity: Option<Identity>,
    pub(crate) transport: Transport,
    pub(crate) hello: Hello,
    pub(crate) events: mpsc::Sender<LinkEvent>,
    pub(crate) stop: watch::Receiver<bool>,
    pub(crate) stats: Arc<Mutex<Stats>>,
    pub(crate) name: String,
}

/// Reconnect backoff: 100 ms doubling to 10 s, reset after a link stayed
/// up 10 s.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

impl Dialer {
    pub(crate) async fn run(mut self) -> Result<(), RelayError> {
        let endpoint = match self.transport {
            Transport::Quic => {
                let bind: SocketAddr = if self.to.is_ipv4() {
                    "0.0.0.0:0"
                        .parse()
                        .map_err(|_| RelayError::Config("bind".into()))?
                } else {
                    "[::]:0"
                        .parse()
                        .map_err(|_| RelayError::Config("bind".into()))?
                };
                Some(quic_client(bind, self.identity.as_ref(), &self.trust)?)
            }
            Transport::Tcp => None,
        };
        let client = Arc::new(super::tls::client_config(
            self.identity.as_ref(),
            &self.trust,
        )?);
        let mut backoff = BACKOFF_MIN;
        let mut generation = 0u64;
        loop {
            if *self.stop.borrow() {
                return Ok(());
            }
            generation += 1;
            let started = Instant::now();
            let attempt = self.connect(endpoint.as_ref(), &client, generation).await;
            match attempt {
                Ok(closed) => {
                    // Wait for the link to end, or the relay to stop.
                    tokio::select! {
                        () = closed => {}
                        _ = self.stop.changed() => return Ok(()),
                    }
                }
                Err(e) => {
                    tracing::warn!(relay = %self.name, to = %self.to, "cannot connect: {e}");
                    if let Ok(mut s) = self.stats.lock() {
                        s.dial_failures += 1;
                    }
                }
            }
            if started.elapsed() >= Duration::from_secs(10) {
                backoff = BACKOFF_MIN;
            }
            let jitter = 0.8 + 0.4 * (rand::random::<u32>() as f64 / u32::MAX as f64);
            let wait = backoff.mul_f64(jitter);
            backoff = (backoff * 2).min(BACKOFF_MAX);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = self.stop.changed() => return Ok(()),
            }
        }
    }

    /// One connection: handshake, then hands it to the main task; returns a
    /// future that ends when the link does.
    async fn connect(
        &self,
        endpoint: Option<&quinn::Endpoint>,
        client: &Arc<rustls::ClientConfig>,
        generation: u64,
    ) -> Result<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>, RelayError> {
        let (conn, mut r, mut w, fingerprint): (_, BoxRead, BoxWrite, _) = match endpoint {
            Some(ep) => {
                let c = quic_connect(ep, self.to, &self.server_name).await?;
                let (send, recv) = c
                    .open_bi()
                    .await
                    .map_err(|e| RelayError::Link(e.to_string()))?;
                let fp = peer_fingerprint(&c);
                (Some(c), Box::new(recv), Box::new(send), fp)
            }
            None => {
                let s = tcp_connect(self.to, &self.server_name, Arc::clone(client)).await?;
                let fp = tls_peer_fingerprint(s.get_ref().1);
                let (r, w) = tokio::io::split(s);
                (None, Box::new(r), Box::new(w), fp)
            }
        };
        let welcome: Welcome = dial_handshake(&mut r, &mut w, self.hello.clone())
            .await
            .map_err(|e| RelayError::Link(e.to_string()))?;
        tracing::debug!(relay = %self.name, peer_relay = welcome.relay_id, "welcomed");
        let control = Some((r, w));
        let conn = match conn {
            Some(connection) => Conn::Quic {
                connection,
                control,
            },
            None => Conn::Tcp { control },
        };
        // The main task learns when the link goes down (from its readers)
        // and drops `on_down`.
        let (on_down, down) = tokio::sync::oneshot::channel();
        let est = Established {
            slot: None,
            on_down: Some(on_down),
            link: DIALED,
            generation,
            kind: LinkKind::Sink {
                streams: vec![],
                max_datagram: welcome.max_datagram as usize,
            },
            conn,
            peer: self.to,
            fingerprint,
            dialed: true,
        };
        self.events
            .send(LinkEvent::Up(Box::new(est)))
            .await
            .map_err(|_| RelayError::Link("the relay stopped".into()))?;
        Ok(Box::pin(async move {
            let _ = down.await;
        }))
    }
}

/// What a listener needs.
pub(crate) struct Listener {
    pub(crate) quic: Option<quinn::Endpoint>,
    pub(crate) tcp: Option<TcpTlsListener>,
    pub(crate) relay_id: u64,
    pub(crate) max_datagram: u32,
    pub(crate) feeders: FeederPolicy,
    pub(crate) subscribers: bool,
    pub(crate) max_subscribers: usize,
    /// Unicast subscribers connected now.
    pub(crate) subscriber_count: Arc<std::sync::atomic::AtomicUsize>,
    pub(crate) stats: Arc<Mutex<Stats>>,
    pub(crate) events: mpsc::Sender<LinkEvent>,
    pub(crate) name: String,
}

static NEXT_LINK: AtomicU64 = AtomicU64::new(1);

impl Listener {
    pub(crate) async fn run(self) -> Result<(), RelayError> {
        let me = Arc::new(self);
        loop {
            if let Some(ep) = &me.quic {
                let Some(incoming) = ep.accept().await else {
                    return Ok(());
                };
                let me = Arc::clone(&me);
                tokio::spawn(async move {
                    let peer = incoming.remote_address();
                    let result = async {
                        let c = incoming.await.map_err(|e| e.to_string())?;
                        let (send, recv) = tokio::time::timeout(DEAD_AFTER, c.accept_bi())
                            .await
                            .map_err(|_| "no control stream".to_string())?
                            .map_err(|e| e.to_string())?;
                        let fp = peer_fingerprint(&c);
                        let conn = Conn::Quic {
                            connection: c.clone(),
                            control: None,
                        };
                        me.admit(conn, Box::new(recv), Box::new(send), peer, fp)
                            .await
                    }
                    .await;
                    if let Err(e) = result {
                        tracing::info!(relay = %me.name, %peer, "link refused: {e}");
                    }
                });
            } else if let Some(l) = &me.tcp {
                let incoming = match l.accept().await {
                    Ok(i) => i,
                    Err(e) => {
                        tracing::warn!(relay = %me.name, "accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let me = Arc::clone(&me);
                tokio::spawn(async move {
                    let peer = incoming.remote_addr();
                    let result = async {
                        let s = incoming.handshake().await.map_err(|e| e.to_string())?;
                        let fp = tls_peer_fingerprint(s.get_ref().1);
                        let (r, w) = tokio::io::split(s);
                        me.admit(
                            Conn::Tcp { control: None },
                            Box::new(r),
                            Box::new(w),
                            peer,
                            fp,
                        )
                        .await
                    }
                    .await;
                    if let Err(e) = result {
                        tracing::info!(relay = %me.name, %peer, "link refused: {e}");
                    }
                });
            } else {
                return Ok(());
            }
        }
    }

    /// Reads the Hello, admits or refuses, and hands the link over.
    async fn admit(
        &self,
        mut conn: Conn,
        mut r: BoxRead,
        mut w: BoxWrite,
        peer: SocketAddr,
        fingerprint: Option<super::tls::Fingerprint>,
    ) -> Result<(), String> {
        let hello = read_hello(&mut r).await.map_err(|e| e.to_string())?;
        let refusal = if hello.relay_id == self.relay_id {
            Some((
                RefuseCode::SelfLink,
                "a relay cannot link to itself".to_string(),
            ))
        } else {
            match hello.role {
                Role::Feeder => self
                    .feeders
                    .check(fingerprint.as_ref())
                    .err()
                    .map(|e| (RefuseCode::NotAllowed, e.to_string())),
                Role::Subscriber if !self.subscribers => Some((
                    RefuseCode::Role,
                    "this listener serves no subscribers".to_string(),
                )),
                _ => None,
            }
        };
        // A subscriber's place is taken now, atomically, and given back
        // when its link goes.
        let mut slot = None;
        let refusal = match (refusal, hello.role) {
            (None, Role::Subscriber) => {
                let n = self.subscriber_count.fetch_add(1, Ordering::Relaxed);
                slot = Some(SubscriberSlot(Arc::clone(&self.subscriber_count)));
                (n >= self.max_subscribers)
                    .then(|| (RefuseCode::Busy, "too many subscribers".to_string()))
            }
            (r, _) => r,
        };
        if let Some((code, reason)) = refusal {
            if let Ok(mut s) = self.stats.lock() {
                s.refused += 1;
            }
            let _ = answer(
                &mut w,
                &Frame::Refuse {
                    code,
                    reason: &reason,
                },
            )
            .await;
            return Err(reason);
        }
        answer(
            &mut w,
            &Frame::Welcome(Welcome {
                relay_id: self.relay_id,
                max_datagram: self.max_datagram,
            }),
        )
        .await
        .map_err(|e| e.to_string())?;
        let kind = match hello.role {
            Role::Feeder => LinkKind::Source,
            _ => LinkKind::Subscriber {
                streams: hello.streams,
                max_datagram: hello.max_datagram as usize,
            },
        };
        match &mut conn {
            Conn::Quic { control, .. } | Conn::Tcp { control } => *control = Some((r, w)),
        }
        let est = Established {
            slot,
            on_down: None,
            link: LinkId(NEXT_LINK.fetch_add(1, Ordering::Relaxed)),
            generation: 0,
            kind,
            conn,
            peer,
            fingerprint,
            dialed: false,
        };
        self.events
            .send(LinkEvent::Up(Box::new(est)))
            .await
            .map_err(|e| e.to_string())
    }
}

/// Builds the listener side's endpoints.
pub(crate) async fn listen(
    addr: SocketAddr,
    transport: Transport,
    identity: &Identity,
) -> Result<(Option<quinn::Endpoint>, Option<TcpTlsListener>, SocketAddr), RelayError> {
    match transport {
        Transport::Quic => {
            let ep = quic_server(addr, identity)?;
            let local = ep
                .local_addr()
                .map_err(|e| RelayError::Link(e.to_string()))?;
            Ok((Some(ep), None, local))
        }
        Transport::Tcp => {
            let l = TcpTlsListener::bind(addr, identity).await?;
            let local = l
                .local_addr()
                .map_err(|e| RelayError::Link(e.to_string()))?;
            Ok((None, Some(l), local))
        }
    }
}
