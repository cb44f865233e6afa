//! A unicast subscriber's link to a relay listener: a [`DatagramIo`] whose
//! datagrams come from the listener's Datagram and Repair frames and whose
//! NAKs go back as Nak frames, so that the whole subscriber engine and
//! both drivers run over it unchanged.
//!
//! The link's tasks write each datagram into one end of a Unix datagram
//! socket pair and the driver reads the other end: its readiness is a real
//! file descriptor, its buffer the bound (a subscriber that falls behind
//! stops reading the link, and the listener sheds on its side). The link
//! is redialed with backoff when it fails; the subscriber sees a silence
//! and a gap, as after any outage.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::time::{Duration, Instant};

use grapevine_core::relay::frame::{decode, Decoded, Frame, Hello, Role};
use grapevine_core::StreamId;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;

use super::link::{dial_handshake, BoxRead, BoxWrite, FrameReader, DEAD_AFTER, PING_EVERY};
use super::tls::{client_config, Trust};
use super::transport::{quic_client, quic_connect, tcp_connect};
use super::Transport;
use crate::io::{DatagramIo, RecvBatch};

/// NAK frames waiting for the link.
const NAK_FRAMES: usize = 256;

/// Where to subscribe: a relay listener, how to trust it, and over what.
#[derive(Clone, Debug)]
pub struct RelayLink {
    /// The listener's address.
    pub addr: SocketAddr,
    /// How its certificate is trusted.
    pub trust: Trust,
    /// The name checked in its certificate ([`Trust::Ca`]); default: the
    /// address.
    pub server_name: Option<String>,
    /// QUIC (default) or TLS over TCP.
    pub transport: Transport,
}

impl RelayLink {
    /// A link to `addr` over QUIC, trusting it by `trust`.
    #[must_use]
    pub fn new(addr: SocketAddr, trust: Trust) -> Self {
        Self {
            addr,
            trust,
            server_name: None,
            transport: Transport::Quic,
        }
    }
}

/// The subscriber's side of the link, as a socket.
pub(crate) struct LinkIo {
    rx: UnixDatagram,
    naks: mpsc::Sender<Vec<u8>>,
    from: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for LinkIo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LinkIo {
    /// Starts the link's task (on the current tokio runtime) and returns
    /// the socket the driver reads.
    pub(crate) fn connect(
        link: RelayLink,
        stream: StreamId,
        max_datagram: usize,
    ) -> io::Result<Self> {
        let (rx, tx) = UnixDatagram::pair()?;
        rx.set_nonblocking(true)?;
        tx.set_nonblocking(true)?;
        let tx = tokio::net::UnixDatagram::from_std(tx)?;
        let (naks, naks_rx) = mpsc::channel(NAK_FRAMES);
        let from = link.addr;
        let hello = Hello {
            role: Role::Subscriber,
            relay_id: rand::random(),
            max_datagram: u32::try_from(max_datagram).unwrap_or(u32::MAX),
            streams: vec![stream],
        };
        let task = tokio::spawn(run(link, hello, tx, naks_rx));
        Ok(Self {
            rx,
            naks,
            from,
            task,
        })
    }
}

impl DatagramIo for LinkIo {
    fn try_send(
        &self,
        _to: SocketAddr,
        contents: &[u8],
        segment_size: Option<usize>,
    ) -> io::Result<()> {
        let seg = segment_size
            .filter(|&s| s > 0)
            .unwrap_or(contents.len())
            .max(1);
        for datagram in contents.chunks(seg) {
            let mut f = Vec::with_capacity(datagram.len() + 4);
            Frame::Nak { flags: 0, datagram }
                .encode(&mut f)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            match self.naks.try_send(f) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    return Err(io::ErrorKind::WouldBlock.into())
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::NotConnected,
                        "the relay link stopped",
                    ))
                }
            }
        }
        Ok(())
    }

    fn try_recv(&self, batch: &mut RecvBatch) -> io::Result<()> {
        batch.clear();
        let mut buf = [0u8; 65_536];
        loop {
            match self.rx.recv(&mut buf) {
                Ok(n) => {
                    if !batch.push(self.from, buf.get(..n).unwrap_or_default()) {
                        // Full: this one is lost (counted by the engine as
                        // a gap, repaired like any loss).
                        return Ok(());
                    }
                    if batch.len() >= 64 {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return if batch.is_empty() { Err(e) } else { Ok(()) };
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn max_segments(&self) -> usize {
        1
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.rx.as_fd()
    }
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

async fn run(
    link: RelayLink,
    hello: Hello,
    tx: tokio::net::UnixDatagram,
    mut naks: mpsc::Receiver<Vec<u8>>,
) {
    let tx = Arc::new(tx);
    let mut backoff = BACKOFF_MIN;
    let endpoint = match link.transport {
        Transport::Quic => {
            let bind = if link.addr.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            };
            match bind.parse().map_err(|_| ()).and_then(|b| {
                quic_client(b, None, &link.trust).map_err(|e| {
                    tracing::error!("relay link: {e}");
                })
            }) {
                Ok(ep) => Some(ep),
                Err(()) => return,
            }
        }
        Transport::Tcp => None,
    };
    let name = link.server_name.clone().unwrap_or_else(|| {
        link.trust
            .server_name(&link.addr.ip().to_string())
            .to_string()
    });
    loop {
        let started = Instant::now();
        match session(
            &link,
            endpoint.as_ref(),
            &name,
            hello.clone(),
            &tx,
            &mut naks,
        )
        .await
        {
            Ok(()) => return,
            Err(e) => tracing::warn!(relay = %link.addr, "relay link: {e}"),
        }
        if started.elapsed() >= Duration::from_secs(10) {
            backoff = BACKOFF_MIN;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One connection, until it fails (an error) or the subscriber is gone
/// (`Ok`).
async fn session(
    link: &RelayLink,
    endpoint: Option<&quinn::Endpoint>,
    name: &str,
    hello: Hello,
    tx: &Arc<tokio::net::UnixDatagram>,
    naks: &mut mpsc::Receiver<Vec<u8>>,
) -> Result<(), String> {
    let (conn, mut r, mut w): (Option<quinn::Connection>, BoxRead, BoxWrite) = match endpoint {
        Some(ep) => {
            let c = quic_connect(ep, link.addr, name)
                .await
                .map_err(|e| e.to_string())?;
            let (send, recv) = c.open_bi().await.map_err(|e| e.to_string())?;
            (Some(c), Box::new(recv), Box::new(send))
        }
        None => {
            let config = Arc::new(client_config(None, &link.trust).map_err(|e| e.to_string())?);
            let s = tcp_connect(link.addr, name, config)
                .await
                .map_err(|e| e.to_string())?;
            let (r, w) = tokio::io::split(s);
            (None, Box::new(r), Box::new(w))
        }
    };
    dial_handshake(&mut r, &mut w, hello)
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(relay = %link.addr, "subscribed through the relay");
    let (pongs, mut pongs_rx) = mpsc::channel::<u64>(16);
    let (failed, mut failed_rx) = mpsc::channel::<String>(4);
    // Over QUIC the connection's idle timeout judges the link (see the
    // relay's `control_idle`): the first bytes of a lane after an outage
    // come later than its first packet.
    spawn_reader(
        r,
        Arc::clone(tx),
        pongs.clone(),
        Some(failed.clone()),
        conn.is_none().then_some(DEAD_AFTER),
    );
    if let Some(c) = &conn {
        let c = c.clone();
        let (tx, pongs) = (Arc::clone(tx), pongs.clone());
        tokio::spawn(async move {
            while let Ok(recv) = c.accept_uni().await {
                spawn_reader(Box::new(recv), Arc::clone(&tx), pongs.clone(), None, None);
            }
        });
    }
    let mut ping = tokio::time::interval(PING_EVERY);
    let mut token = 0u64;
    let result = loop {
        let frame = tokio::select! {
            f = naks.recv() => match f {
                Some(f) => f,
                None => break Ok(()),
            },
            Some(t) = pongs_rx.recv() => {
                let mut f = Vec::new();
                let _ = Frame::Pong(t).encode(&mut f);
                f
            }
            _ = ping.tick() => {
                token += 1;
                let mut f = Vec::new();
                let _ = Frame::Ping(token).encode(&mut f);
                f
            }
            Some(why) = failed_rx.recv() => break Err(why),
        };
        if let Err(e) = async {
            w.write_all(&frame).await?;
            w.flush().await
        }
        .await
        {
            break Err(e.to_string());
        }
    };
    if let Some(c) = conn {
        c.close(0u32.into(), b"bye");
    }
    result
}

/// Reads frames from one stream of the link: datagrams to the driver's
/// socket, Pings answered. The control lane's reader tells `failed` why it
/// ended (the link is over); a lane's end is not a failure.
fn spawn_reader(
    mut r: BoxRead,
    tx: Arc<tokio::net::UnixDatagram>,
    pongs: mpsc::Sender<u64>,
    failed: Option<mpsc::Sender<String>>,
    idle: Option<Duration>,
) {
    tokio::spawn(async move {
        let mut reader = FrameReader::default();
        let why = loop {
            match reader.next() {
                Ok(Some(bytes)) => {
                    let delivered = match decode(&bytes) {
                        // Waits while the driver is behind: the link
                        // slows, the listener sheds.
                        Ok(Decoded::Frame(Frame::Datagram(d) | Frame::Repair(d), _)) => {
                            tx.send(d).await.is_ok()
                        }
                        Ok(Decoded::Frame(Frame::Ping(t), _)) => {
                            let _ = pongs.try_send(t);
                            true
                        }
                        Ok(Decoded::Frame(Frame::Goodbye { reason, .. }, _)) => {
                            break format!("the relay closed the link: {reason}");
                        }
                        _ => true,
                    };
                    if !delivered {
                        break "the subscriber is gone".to_string();
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => break format!("bad frame: {e}"),
            }
            let read = reader.fill(&mut r);
            let n = match idle {
                Some(d) => match tokio::time::timeout(d, read).await {
                    Ok(r) => r,
                    Err(_) => break format!("nothing received for {d:?}"),
                },
                None => read.await,
            };
            match n {
                Ok(0) => break "the relay closed the link".to_string(),
                Ok(_) => {}
                Err(e) => break e.to_string(),
            }
        };
        if let Some(failed) = failed {
            let _ = failed.send(why).await;
        }
    });
}
