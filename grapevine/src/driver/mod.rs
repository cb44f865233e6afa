//! The runtime-agnostic half of the drivers: what to do with a received
//! batch, what to send, and when to wake next, for each engine. It does no
//! waiting of its own; a runtime ([`Driver`]) decides how to wait (tokio's
//! reactor, or a busy-poll loop on a thread of its own) and calls in here.
//!
//! Each engine sits behind a mutex shared with the user's handle, and is
//! only ever touched under it: the runtime loop receives a batch without
//! the lock, then takes it to hand the batch to the protocol core and to
//! send what the core asks for.

use std::io;
use std::net::SocketAddr;

use crate::io::DatagramIo;

pub(crate) mod publisher;
pub(crate) mod subscriber;

/// How a [`Publisher`](crate::Publisher) or
/// [`Subscriber`](crate::Subscriber) waits for datagrams and timers.
///
/// ```
/// use grapevine::{Driver, Publisher};
/// # use std::collections::BTreeMap;
/// let builder = Publisher::<BTreeMap<u32, u32>>::builder().driver(Driver::BusyPoll);
/// # drop(builder);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Driver {
    /// A task on the current tokio runtime, woken by the reactor and by
    /// tokio timers (the default). Costs no CPU while idle; a datagram is
    /// handled after a reactor wake-up (typically some microseconds).
    #[default]
    Tokio,
    /// A dedicated thread that polls the socket and the clock without ever
    /// sleeping: the lowest latency, at the price of one CPU core kept at
    /// 100 % for as long as the handle lives. For hosts with cores to
    /// spare.
    BusyPoll,
}

/// Outcome of sending what is due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flush {
    /// Everything due was sent.
    Done,
    /// The socket is full; wait until it is writable.
    Blocked,
}

/// What became of one transmit.
pub(crate) enum Sent {
    /// Handed to the socket (`datagrams` of them, `bytes` bytes); `failed`
    /// more of a split batch were refused.
    Ok {
        datagrams: u64,
        bytes: u64,
        failed: u64,
    },
    /// The socket's buffer is full: nothing was sent.
    WouldBlock,
    /// Refused by the operating system: dropped, like a loss on the network.
    Failed { datagrams: u64 },
}

/// Sends `contents` (datagrams of `segment_size`, or one) through `io`:
/// in one call where the socket takes the batch; where the kernel refuses
/// GSO and the socket has meanwhile dropped to one datagram per call,
/// datagram by datagram. A "would block" on the first datagram sends
/// nothing and is returned as such; datagrams of a split batch that fail
/// after that are given up (like a loss on the network) rather than resent
/// out of order, and counted as failed.
pub(crate) fn send(
    io: &dyn DatagramIo,
    to: SocketAddr,
    contents: &[u8],
    segment_size: Option<usize>,
) -> Sent {
    let seg = segment_size
        .filter(|&s| s > 0)
        .unwrap_or(contents.len())
        .max(1);
    let datagrams = contents.len().div_ceil(seg).max(1) as u64;
    match io.try_send(to, contents, segment_size) {
        Ok(()) => Sent::Ok {
            datagrams,
            bytes: contents.len() as u64,
            failed: 0,
        },
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Sent::WouldBlock,
        Err(_) if datagrams > 1 && io.max_segments() == 1 => {
            let (mut sent, mut bytes, mut failed) = (0, 0, 0);
            for datagram in contents.chunks(seg) {
                match io.try_send(to, datagram, None) {
                    Ok(()) => {
                        sent += 1;
                        bytes += datagram.len() as u64;
                    }
                    Err(e) if sent == 0 && failed == 0 && e.kind() == io::ErrorKind::WouldBlock => {
                        return Sent::WouldBlock;
                    }
                    Err(_) => failed += 1,
                }
            }
            if sent == 0 {
                Sent::Failed { datagrams: failed }
            } else {
                Sent::Ok {
                    datagrams: sent,
                    bytes,
                    failed,
                }
            }
        }
        Err(_) => Sent::Failed { datagrams },
    }
}

/// Segments per transmit for datagrams of up to `max_datagram` bytes: what
/// the socket takes in one call, within the 64 KiB a GSO send may carry.
pub(crate) fn segments_for(io: &dyn DatagramIo, max_datagram: usize) -> usize {
    (GSO_BYTES / max_datagram.max(1)).clamp(1, io.max_segments().max(1))
}

/// Most bytes of one GSO send (the UDP payload limit, minus headroom).
pub(crate) const GSO_BYTES: usize = 65_000;

#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd, BorrowedFd};
    use std::sync::Mutex;

    use super::*;
    use crate::io::RecvBatch;

    /// A socket whose kernel refuses GSO (as some NICs do: EIO), sends
    /// single datagrams, and is full after `room` of them.
    struct NoGso {
        sock: std::net::UdpSocket,
        room: usize,
        sent: Mutex<Vec<usize>>,
    }

    impl DatagramIo for NoGso {
        fn try_send(&self, _: SocketAddr, c: &[u8], seg: Option<usize>) -> io::Result<()> {
            if seg.is_some() {
                return Err(io::Error::from_raw_os_error(5));
            }
            let mut sent = self.sent.lock().unwrap();
            if sent.len() == self.room {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            sent.push(c.len());
            Ok(())
        }
        fn try_recv(&self, _: &mut RecvBatch) -> io::Result<()> {
            Err(io::ErrorKind::WouldBlock.into())
        }
        fn max_segments(&self) -> usize {
            1
        }
        fn fd(&self) -> BorrowedFd<'_> {
            self.sock.as_fd()
        }
    }

    fn no_gso(room: usize) -> NoGso {
        NoGso {
            sock: std::net::UdpSocket::bind("127.0.0.1:0").unwrap(),
            room,
            sent: Mutex::new(Vec::new()),
        }
    }

    /// A batch the kernel refuses for GSO goes out datagram by datagram;
    /// a full socket on the first datagram is "would block" (nothing
    /// sent, to retry), while a later one gives up the rest as lost.
    #[test]
    fn a_refused_gso_batch_is_resent_one_datagram_at_a_time() {
        let to = SocketAddr::from(([127, 0, 0, 1], 9));
        let io = no_gso(10);
        let sent = send(&io, to, &[0; 250], Some(100));
        assert!(matches!(
            sent,
            Sent::Ok {
                datagrams: 3,
                bytes: 250,
                failed: 0
            }
        ));
        assert_eq!(*io.sent.lock().unwrap(), [100, 100, 50]);

        let full = no_gso(0);
        assert!(matches!(
            send(&full, to, &[0; 250], Some(100)),
            Sent::WouldBlock
        ));
        // Found by review: a partial fallback counts what it sent, and the
        // rest as failed.
        let part = no_gso(1);
        assert!(matches!(
            send(&part, to, &[0; 250], Some(100)),
            Sent::Ok {
                datagrams: 1,
                bytes: 100,
                failed: 2
            }
        ));
        assert_eq!(*part.sent.lock().unwrap(), [100]);

        // One datagram that fails is not retried.
        let one = no_gso(10);
        assert!(matches!(
            send(&one, to, &[0; 250], Some(250)),
            Sent::Failed { datagrams: 1 }
        ));
    }

    /// Segments per send: what 64 KiB holds, within what the socket takes.
    #[test]
    fn segments_fit_64_kib_and_the_socket() {
        let io = no_gso(0);
        assert_eq!(segments_for(&io, 1452), 1);
        struct Gso(NoGso);
        impl DatagramIo for Gso {
            fn try_send(&self, _: SocketAddr, _: &[u8], _: Option<usize>) -> io::Result<()> {
                Ok(())
            }
            fn try_recv(&self, b: &mut RecvBatch) -> io::Result<()> {
                self.0.try_recv(b)
            }
            fn max_segments(&self) -> usize {
                64
            }
            fn fd(&self) -> BorrowedFd<'_> {
                self.0.fd()
            }
        }
        let gso = Gso(no_gso(0));
        assert_eq!(segments_for(&gso, 1452), 44);
        assert_eq!(segments_for(&gso, 500), 64);
        assert_eq!(segments_for(&gso, 65_507), 1);
    }
}
