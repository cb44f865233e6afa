//! One relay link at the byte level: frames read from and written to the
//! byte streams of a QUIC connection (a control stream and one lane per
//! Grapevine stream) or of one TLS-over-TCP stream (every lane on it), and
//! the Hello / Welcome handshake.
//!
//! Readers and writers are tasks of their own; the relay's main task talks
//! to them through channels only and never waits on a link (a full writer
//! channel leaves frames in the engine's bounded, shedding queues).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use grapevine_core::relay::frame::{self, Decoded, Frame, FrameError, Hello, Welcome};
use grapevine_core::relay::{Lane, LinkId};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, Notify};

use super::tls::Fingerprint;

/// The reading half of a byte stream of a link.
pub(crate) type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
/// The writing half.
pub(crate) type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// Ping on the control lane this often; a control lane silent for
/// [`DEAD_AFTER`] is dead (QUIC has its own keep-alive too; TCP has only
/// this).
pub(crate) const PING_EVERY: Duration = Duration::from_secs(2);
/// See [`PING_EVERY`].
pub(crate) const DEAD_AFTER: Duration = Duration::from_secs(10);
/// The handshake must be done within this.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames a lane writer's channel holds.
pub(crate) const LANE_FRAMES: usize = 64;

/// What a link's tasks tell the relay's main task.
#[derive(Debug)]
pub(crate) enum LinkEvent {
    /// One whole frame received on connection `generation` of `link`.
    Frame(LinkId, u64, Vec<u8>),
    /// A link's handshake is done.
    Up(Box<Established>),
    /// A link failed or closed; `generation` names which connection.
    Down {
        link: LinkId,
        generation: u64,
        why: String,
    },
}

/// A connection after its handshake.
#[derive(Debug)]
pub(crate) struct Established {
    pub(crate) link: LinkId,
    /// Counts the connections of a dialer's link, so that a late Down of an
    /// old connection does not take the new one down.
    pub(crate) generation: u64,
    pub(crate) kind: grapevine_core::relay::LinkKind,
    pub(crate) conn: Conn,
    pub(crate) peer: SocketAddr,
    pub(crate) fingerprint: Option<Fingerprint>,
    /// Whether this side dialed.
    pub(crate) dialed: bool,
    /// Dropped by the main task when the link goes down.
    pub(crate) on_down: Option<tokio::sync::oneshot::Sender<()>>,
    /// A unicast subscriber's place in the listener's count.
    pub(crate) slot: Option<super::driver::SubscriberSlot>,
}

/// The transport of an established link.
pub(crate) enum Conn {
    /// A QUIC connection: its control stream, and lanes to open.
    Quic {
        connection: quinn::Connection,
        control: Option<(BoxRead, BoxWrite)>,
    },
    /// One TLS stream for everything.
    Tcp {
        control: Option<(BoxRead, BoxWrite)>,
    },
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conn::Quic { .. } => "Quic",
            Conn::Tcp { .. } => "Tcp",
        })
    }
}

/// A link error, for logs.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    #[error("nothing received for {0:?}")]
    Silent(Duration),
    #[error("the peer closed the link")]
    Closed,
    #[error("refused: {0}")]
    Refused(String),
    #[error("unexpected {0} frame during the handshake")]
    Unexpected(&'static str),
    #[error("the relay stopped")]
    Stopped,
}

/// Reads frames from `r` and hands each to `tx` until the stream ends, a
/// frame is invalid, or (with `idle`) nothing arrives for that long.
pub(crate) async fn read_frames(
    mut r: BoxRead,
    link: LinkId,
    generation: u64,
    tx: mpsc::Sender<LinkEvent>,
    idle: Option<Duration>,
) -> Result<(), LinkError> {
    let mut reader = FrameReader::default();
    loop {
        while let Some(f) = reader.next()? {
            tx.send(LinkEvent::Frame(link, generation, f))
                .await
                .map_err(|_| LinkError::Stopped)?;
        }
        let read = reader.fill(&mut r);
        let n = match idle {
            Some(d) => tokio::time::timeout(d, read)
                .await
                .map_err(|_| LinkError::Silent(d))??,
            None => read.await?,
        };
        if n == 0 {
            return Err(LinkError::Closed);
        }
    }
}

/// Frames out of a byte stream.
#[derive(Debug, Default)]
pub(crate) struct FrameReader {
    buf: Vec<u8>,
    start: usize,
}

impl FrameReader {
    /// The next whole frame's bytes, if buffered.
    pub(crate) fn next(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        loop {
            let rest = self.buf.get(self.start..).unwrap_or_default();
            match frame::decode(rest)? {
                Decoded::Frame(_, used) => {
                    let f = rest.get(..used).unwrap_or_default().to_vec();
                    self.start += used;
                    return Ok(Some(f));
                }
                Decoded::Skipped { used, .. } => self.start += used,
                Decoded::Incomplete { .. } => return Ok(None),
            }
        }
    }

    /// Reads more bytes from `r`.
    pub(crate) async fn fill(&mut self, r: &mut BoxRead) -> std::io::Result<usize> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let mut chunk = [0u8; 16 * 1024];
        let n = r.read(&mut chunk).await?;
        self.buf
            .extend_from_slice(chunk.get(..n).unwrap_or_default());
        Ok(n)
    }
}

/// Writes the frames `rx` receives to `w`; on the control lane, a Ping
/// when nothing was written for [`PING_EVERY`]. Notifies `progress` after
/// each frame, so the main task offers more.
pub(crate) async fn write_frames(
    mut w: BoxWrite,
    mut rx: mpsc::Receiver<Vec<u8>>,
    progress: Arc<Notify>,
    ping: bool,
) -> Result<(), LinkError> {
    let mut token = 0u64;
    loop {
        let next = if ping {
            match tokio::time::timeout(PING_EVERY, rx.recv()).await {
                Ok(f) => f,
                Err(_) => {
                    token += 1;
                    let mut f = Vec::new();
                    Frame::Ping(token).encode(&mut f)?;
                    Some(f)
                }
            }
        } else {
            rx.recv().await
        };
        let Some(f) = next else {
            // The main task dropped the lane: close it cleanly.
            let _ = w.shutdown().await;
            return Ok(());
        };
        w.write_all(&f).await?;
        if rx.is_empty() {
            w.flush().await?;
        }
        progress.notify_one();
    }
}

/// Reads one frame during a handshake.
async fn read_one(r: &mut BoxRead, reader: &mut FrameReader) -> Result<Vec<u8>, LinkError> {
    loop {
        if let Some(f) = reader.next()? {
            return Ok(f);
        }
        if reader.fill(r).await? == 0 {
            return Err(LinkError::Closed);
        }
    }
}

async fn write_one(w: &mut BoxWrite, f: &Frame<'_>) -> Result<(), LinkError> {
    let mut buf = Vec::new();
    f.encode(&mut buf)?;
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

/// The dialer's side: sends `hello`, waits for Welcome or Refuse.
pub(crate) async fn dial_handshake(
    r: &mut BoxRead,
    w: &mut BoxWrite,
    hello: Hello,
) -> Result<Welcome, LinkError> {
    let run = async {
        write_one(w, &Frame::Hello(hello)).await?;
        let mut reader = FrameReader::default();
        let bytes = read_one(r, &mut reader).await?;
        match frame::decode(&bytes)? {
            Decoded::Frame(Frame::Welcome(welcome), _) => Ok(welcome),
            Decoded::Frame(Frame::Refuse { code, reason }, _) => Err(LinkError::Refused(format!(
                "{reason} (code {})",
                code.code()
            ))),
            Decoded::Frame(f, _) => Err(LinkError::Unexpected(kind_name(&f))),
            _ => Err(LinkError::Unexpected("unknown")),
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, run)
        .await
        .map_err(|_| LinkError::Silent(HANDSHAKE_TIMEOUT))?
}

/// The listener's side: reads the Hello.
pub(crate) async fn read_hello(r: &mut BoxRead) -> Result<Hello, LinkError> {
    let run = async {
        let mut reader = FrameReader::default();
        let bytes = read_one(r, &mut reader).await?;
        match frame::decode(&bytes)? {
            Decoded::Frame(Frame::Hello(h), _) => Ok(h),
            Decoded::Frame(f, _) => Err(LinkError::Unexpected(kind_name(&f))),
            _ => Err(LinkError::Unexpected("unknown")),
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, run)
        .await
        .map_err(|_| LinkError::Silent(HANDSHAKE_TIMEOUT))?
}

/// Answers a Hello.
pub(crate) async fn answer(w: &mut BoxWrite, f: &Frame<'_>) -> Result<(), LinkError> {
    write_one(w, f).await
}

fn kind_name(f: &Frame<'_>) -> &'static str {
    match f {
        Frame::Hello(_) => "Hello",
        Frame::Welcome(_) => "Welcome",
        Frame::Refuse { .. } => "Refuse",
        Frame::Datagram(_) => "Datagram",
        Frame::Repair(_) => "Repair",
        Frame::Nak { .. } => "Nak",
        Frame::Shed(_) => "Shed",
        Frame::Ping(_) => "Ping",
        Frame::Pong(_) => "Pong",
        _ => "Goodbye",
    }
}

/// Where the main task writes a lane's frames.
pub(crate) fn lane_of(conn: &Conn, lane: Lane) -> LaneKind {
    match (conn, lane) {
        (Conn::Quic { .. }, Lane::Stream(_)) => LaneKind::OwnStream,
        _ => LaneKind::Control,
    }
}

/// How a lane is carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LaneKind {
    /// On the control stream (every lane of a TCP link).
    Control,
    /// On a unidirectional QUIC stream of its own.
    OwnStream,
}
