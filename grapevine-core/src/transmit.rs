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
        self.segment().map_or(1, |s| self.size.div_ceil(s))
    }

    /// The segment size, if the transmit is split into segments (a zero
    /// one is not: the transmit is one datagram).
    fn segment(&self) -> Option<usize> {
        self.segment_size.filter(|&s| s > 0)
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
        let seg = self.segment().unwrap_or(self.size).max(1);
        all.chunks(seg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(size: usize, segment_size: Option<usize>) -> Transmit {
        Transmit {
            destination: Destination::Group,
            size,
            segment_size,
        }
    }

    /// A transmit holds `size` bytes in segments of `segment_size`, the
    /// last perhaps shorter; without a (non-zero) segment size it is one
    /// datagram.
    #[test]
    fn segments_split_the_bytes() {
        let buf: Vec<u8> = (0..10).collect();
        for (size, seg, want) in [
            (10, Some(4), vec![4, 4, 2]),
            (8, Some(4), vec![4, 4]),
            (10, None, vec![10]),
            (10, Some(0), vec![10]),
            (3, Some(10), vec![3]),
        ] {
            let t = t(size, seg);
            let lens: Vec<usize> = t.datagrams(&buf).map(<[u8]>::len).collect();
            assert_eq!(lens, want, "{size} {seg:?}");
            assert_eq!(t.segments(), want.len(), "{size} {seg:?}");
        }
    }
}
