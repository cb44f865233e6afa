//! [`RecvBatch`]: the buffers one batched receive fills, split into
//! datagrams.

use std::io::IoSliceMut;
use std::net::SocketAddr;

/// Largest datagram (or GRO-coalesced run of datagrams) one buffer holds:
/// the largest UDP payload, rounded up.
pub(crate) const BUFFER_LEN: usize = 65_536;

/// Buffers per batch: as many as one `recvmmsg` of quinn-udp fills.
pub(crate) const BUFFERS: usize = quinn_udp::BATCH_SIZE;

/// The datagrams of one batched receive, in arrival order.
///
/// Allocated once ([`BUFFERS`](quinn_udp::BATCH_SIZE) buffers of 64 KiB,
/// 2 MiB on Linux) and reused: receiving allocates nothing.
pub struct RecvBatch {
    bytes: Vec<u8>,
    metas: Vec<quinn_udp::RecvMeta>,
    slots: Vec<Slot>,
    len: usize,
}

/// Where one datagram lies in `bytes`.
#[derive(Clone, Copy, Debug)]
struct Slot {
    from: SocketAddr,
    start: usize,
    end: usize,
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("datagrams", &self.slots.len())
            .finish_non_exhaustive()
    }
}

impl RecvBatch {
    /// An empty batch with its buffers allocated.
    #[must_use]
    pub fn new() -> Self {
        Self::with_buffers(BUFFERS)
    }

    /// An empty batch of `buffers` buffers (1 to [`BUFFERS`]): one receive
    /// takes at most that many datagrams (or GRO runs).
    pub(crate) fn with_buffers(buffers: usize) -> Self {
        let buffers = buffers.clamp(1, BUFFERS);
        Self {
            bytes: vec![0; buffers * BUFFER_LEN],
            metas: vec![quinn_udp::RecvMeta::default(); buffers],
            slots: Vec::with_capacity(buffers * 4),
            len: 0,
        }
    }

    /// Number of datagrams in the batch.
    #[must_use]
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the batch holds no datagram.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Bytes of the datagrams in the batch.
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.len
    }

    /// Empties the batch.
    pub fn clear(&mut self) {
        self.slots.clear();
        self.len = 0;
    }

    /// Appends one datagram (for [`DatagramIo`](super::DatagramIo)
    /// implementations other than [`UdpIo`](super::UdpIo), such as a
    /// simulated network). Returns false, appending nothing, when the
    /// batch is full or the datagram longer than 65,536 bytes.
    pub fn push(&mut self, from: SocketAddr, datagram: &[u8]) -> bool {
        if datagram.len() > BUFFER_LEN {
            return false;
        }
        let start = self.slots.last().map_or(0, |s| s.end);
        let end = start + datagram.len();
        let Some(dst) = self.bytes.get_mut(start..end) else {
            return false;
        };
        dst.copy_from_slice(datagram);
        self.slots.push(Slot { from, start, end });
        self.len += datagram.len();
        true
    }

    /// Calls `f` with the sender and bytes of each datagram, in order. The
    /// bytes are mutable so that a protocol engine can open authenticated
    /// datagrams in place.
    pub fn for_each(&mut self, mut f: impl FnMut(SocketAddr, &mut [u8])) {
        for s in &self.slots {
            if let Some(d) = self.bytes.get_mut(s.start..s.end) {
                f(s.from, d);
            }
        }
    }

    /// Keeps only the datagrams for which `keep` returns true.
    pub fn retain(&mut self, mut keep: impl FnMut(SocketAddr, &[u8]) -> bool) {
        let bytes = &self.bytes;
        let mut dropped = 0;
        self.slots.retain(|s| {
            let d = bytes.get(s.start..s.end).unwrap_or_default();
            let k = keep(s.from, d);
            if !k {
                dropped += d.len();
            }
            k
        });
        self.len -= dropped;
    }

    /// One batched receive through quinn-udp: fills the buffers, then
    /// splits each (by its GRO stride) into datagrams.
    pub(crate) fn recv_with(
        &mut self,
        recv: impl FnOnce(&mut [IoSliceMut<'_>], &mut [quinn_udp::RecvMeta]) -> std::io::Result<usize>,
    ) -> std::io::Result<()> {
        self.clear();
        let mut chunks = self.bytes.chunks_exact_mut(BUFFER_LEN);
        let mut slices: [IoSliceMut<'_>; BUFFERS] =
            std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
        let buffers = self.metas.len().min(BUFFERS);
        let n = recv(
            slices.get_mut(..buffers).unwrap_or_default(),
            &mut self.metas,
        )?;
        for (i, meta) in self.metas.iter().take(n).enumerate() {
            let base = i * BUFFER_LEN;
            let len = meta.len.min(BUFFER_LEN);
            let stride = if meta.stride == 0 { len } else { meta.stride };
            if len == 0 {
                // An empty datagram: the engine counts it as malformed.
                self.slots.push(Slot {
                    from: meta.addr,
                    start: base,
                    end: base,
                });
            }
            let mut at = 0;
            while at < len {
                let end = (at + stride).min(len);
                self.slots.push(Slot {
                    from: meta.addr,
                    start: base + at,
                    end: base + end,
                });
                self.len += end - at;
                at = end;
            }
        }
        Ok(())
    }
}
