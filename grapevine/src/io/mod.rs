//! The socket layer the drivers read and write through: batched,
//! non-blocking datagram I/O behind one small trait.
//!
//! * [`DatagramIo`] is what a driver needs from a socket: send one
//!   transmit (one datagram, or several of one size in a single call),
//!   receive a batch, and an fd to wait on. Every call is non-blocking;
//!   "nothing to do" is [`io::ErrorKind::WouldBlock`].
//! * [`UdpIo`] is the real one, over [`quinn_udp`]: a transmit of several
//!   datagrams is one `sendmsg` with UDP GSO (`UDP_SEGMENT`) where the
//!   kernel has it, and a receive is one `recvmmsg` of up to
//!   [`quinn_udp::BATCH_SIZE`] buffers, each possibly holding several
//!   datagrams coalesced by GRO. Without GSO it sends datagram by
//!   datagram.
//! * [`Lossy`] wraps any `DatagramIo` and drops received datagrams at
//!   random, for demos and tests of recovery: loss simulation lives here,
//!   not in the drivers.
//!
//! ```
//! use grapevine::io::{DatagramIo, RecvBatch, UdpIo};
//! use grapevine::socket::{bind_receiver, bind_sender, MulticastConfig};
//!
//! let mut config = MulticastConfig::default();
//! config.group("239.255.28.2".parse()?).port(28002);
//! let receiver = UdpIo::new(bind_receiver(&config)?)?;
//! let sender = UdpIo::new(bind_sender(&config)?)?;
//!
//! // Three 100-byte datagrams in one call.
//! sender.try_send(config.group_addr(), &[7u8; 300], Some(100))?;
//!
//! let mut batch = RecvBatch::new();
//! let mut got = Vec::new();
//! while got.len() < 3 {
//!     match receiver.try_recv(&mut batch) {
//!         Ok(()) => batch.for_each(|_from, datagram| got.push(datagram.len())),
//!         Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::yield_now(),
//!         Err(e) => return Err(e.into()),
//!     }
//! }
//! assert_eq!(got, [100, 100, 100]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io;
use std::net::SocketAddr;
use std::os::fd::BorrowedFd;

mod batch;
mod lossy;
mod udp;

pub use batch::RecvBatch;
pub use lossy::{Loss, LossError, Lossy};
pub use udp::UdpIo;

/// Non-blocking, batched datagram I/O: what a driver needs from a socket.
///
/// Implementations are shared between threads (a publisher sends live
/// deltas from the publishing thread while its driver sends the rest), so
/// every method takes `&self`.
pub trait DatagramIo: Send + Sync + 'static {
    /// Sends `contents` to `to`: one datagram, or with `segment_size`
    /// several datagrams of that size (the last may be shorter).
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::WouldBlock`] when the socket's send buffer is
    /// full (nothing was sent: try the same transmit again once
    /// writable); any other error means the transmit was not sent.
    fn try_send(
        &self,
        to: SocketAddr,
        contents: &[u8],
        segment_size: Option<usize>,
    ) -> io::Result<()>;

    /// Receives what is waiting, up to one batch, into `batch` (which is
    /// cleared first).
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::WouldBlock`] when nothing is waiting; other
    /// errors are the socket's.
    fn try_recv(&self, batch: &mut RecvBatch) -> io::Result<()>;

    /// Most datagrams one [`try_send`](Self::try_send) may carry (1 without
    /// GSO). It may drop to 1 at run time if the kernel refuses GSO.
    fn max_segments(&self) -> usize;

    /// The file descriptor to wait on for readability and writability.
    fn fd(&self) -> BorrowedFd<'_>;

    /// Received datagrams this layer dropped on purpose ([`Lossy`]); 0 for
    /// a real socket.
    fn simulated_drops(&self) -> u64 {
        0
    }
}
