//! [`UdpIo`]: a multicast socket driven through quinn-udp.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd};

use quinn_udp::{Transmit, UdpSockRef, UdpSocketState};

use super::{DatagramIo, RecvBatch};
use crate::socket::MulticastSocket;

/// A socket from [`bind_receiver`](crate::bind_receiver) or
/// [`bind_sender`](crate::bind_sender), non-blocking, with batched I/O:
/// GSO sends and `recvmmsg`/GRO receives where the kernel has them (see the
/// [module docs](super)).
#[derive(Debug)]
pub struct UdpIo {
    socket: UdpSocket,
    state: UdpSocketState,
}

impl UdpIo {
    /// Makes `socket` non-blocking and probes what batching the kernel
    /// offers.
    ///
    /// # Errors
    ///
    /// The socket options quinn-udp sets could not be set.
    pub fn new(socket: MulticastSocket) -> io::Result<Self> {
        let socket = socket.into_std();
        let state = UdpSocketState::new(UdpSockRef::from(&socket))?;
        Ok(Self { socket, state })
    }

    /// The socket underneath.
    #[must_use]
    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// Most datagrams the kernel may coalesce into one received buffer
    /// (GRO; 1 without it).
    #[must_use]
    pub fn gro_segments(&self) -> usize {
        self.state.gro_segments()
    }
}

impl DatagramIo for UdpIo {
    fn try_send(
        &self,
        to: SocketAddr,
        contents: &[u8],
        segment_size: Option<usize>,
    ) -> io::Result<()> {
        let transmit = Transmit {
            destination: to,
            ecn: None,
            contents,
            segment_size: segment_size.filter(|&s| s > 0 && s < contents.len()),
            src_ip: None,
        };
        self.state
            .try_send(UdpSockRef::from(&self.socket), &transmit)
    }

    fn try_recv(&self, batch: &mut RecvBatch) -> io::Result<()> {
        batch.recv_with(|bufs, metas| self.state.recv(UdpSockRef::from(&self.socket), bufs, metas))
    }

    fn max_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}
