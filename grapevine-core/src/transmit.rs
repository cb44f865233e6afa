//! What an engine asks its driver to send: [`Transmit`].

use std::net::SocketAddr;

/// Where a [`Transmit`] goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Destination {
    /// The stream's multicast group and port.
    Group,
    /// One host, by unicast: a NAK to the publisher's source address (the
    /// address *and port* its datagrams come from).
    Unicast(SocketAddr),
}

/// One or more datagrams for the same destination, written back to back at
/// the start of the caller's buffer.
///
/// With `segment_size` set, the buffer's first `size` bytes hold several
/// datagrams of `segment_size` bytes each (the last may be shorter), ready
/// for one `sendmsg` with UDP GSO (`UDP_SEGMENT`) or for a loop of sends:
/// [`Transmit::datagrams`] splits them. Datagrams other than the last are
/// padded to `segment_size` with PROTOCOL.md §4.1 padding, which receivers
/// ignore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Transmit {
    /// Where to send.
    pub destination: Destination,
    /// Bytes of the buffer to send.
    pub size: usize,
    /// Size of each datagram when the transmit holds more than one.
    pub segment_size: Option<usize>,
}

impl Transmit {
    /// Number of datagrams in this transmit.
    #[must_use]
    pub fn segments(&self) -> usize {
        match self.segment_size {
            Some(s) if s > 0 => self.size.div_ceil(s),
            _ => 1,
        }
    }

    /// The datagrams of this transmit within `buf` (the buffer the engine
    /// wrote to).
    ///
    /// ```
    /// use grapevine_core::{Destination, Transmit};
    /// # fn send(_: &[u8]) {}
    /// # fn demo(t: Transmit, buf: &[u8]) {
    /// for datagram in t.datagrams(buf) {
    ///     send(datagram);
    /// }
    /// # }
    /// ```
    pub fn datagrams<'b>(&self, buf: &'b [u8]) -> impl Iterator<Item = &'b [u8]> + 'b {
        let all = buf.get(..self.size).unwrap_or_default();
        let seg = self.segment_size.unwrap_or(self.size).max(1);
        all.chunks(seg)
    }
}
