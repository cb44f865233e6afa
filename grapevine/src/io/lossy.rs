//! [`Lossy`]: simulated loss of received datagrams, as a socket wrapper.

use std::io;
use std::net::SocketAddr;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{DatagramIo, RecvBatch};

/// A loss rate and the seed of the random choices that apply it.
///
/// ```
/// use grapevine::io::Loss;
///
/// let loss = Loss::new(0.05, 7)?;
/// assert_eq!(loss.probability(), 0.05);
/// assert!(Loss::new(1.5, 7).is_err());
/// assert!(Loss::new(f64::NAN, 7).is_err());
/// # Ok::<(), grapevine::io::LossError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Loss {
    probability: f64,
    seed: u64,
}

/// A loss probability outside `0.0 ..= 1.0` (or NaN).
#[derive(Clone, Copy, Debug, PartialEq, thiserror::Error)]
#[error("loss probability {0} is not within 0.0 ..= 1.0; use e.g. 0.05 for 5 %")]
pub struct LossError(pub f64);

impl Loss {
    /// Drops each datagram with `probability`, choices drawn from `seed`.
    ///
    /// # Errors
    ///
    /// [`LossError`] unless `0.0 <= probability <= 1.0`.
    pub fn new(probability: f64, seed: u64) -> Result<Self, LossError> {
        if (0.0..=1.0).contains(&probability) {
            Ok(Self { probability, seed })
        } else {
            Err(LossError(probability))
        }
    }

    /// The probability of dropping a datagram.
    #[must_use]
    pub fn probability(&self) -> f64 {
        self.probability
    }
}

/// Wraps a [`DatagramIo`] and drops each received datagram with a given
/// probability before the protocol sees it: recovery from loss can be shown
/// and tested on one host without touching the network. Sending is passed
/// through untouched. The choices are a pure function of the seed and the
/// order of arrival.
#[derive(Debug)]
pub struct Lossy<I> {
    inner: I,
    /// `probability` scaled to 2^53, compared with 53 random bits.
    threshold: u64,
    /// SplitMix64's state, advanced once per datagram.
    state: AtomicU64,
    drops: AtomicU64,
}

/// SplitMix64's increment.
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

impl<I: DatagramIo> Lossy<I> {
    /// `inner`, losing received datagrams as `loss` says.
    pub fn new(inner: I, loss: Loss) -> Self {
        // Exact for 0.0 and 1.0: 53 random bits are always below 2^53.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let threshold = (loss.probability * (1u64 << 53) as f64) as u64;
        Self {
            inner,
            threshold,
            state: AtomicU64::new(loss.seed),
            drops: AtomicU64::new(0),
        }
    }

    /// Whether to drop the next datagram.
    fn lose(&self) -> bool {
        let s = self
            .state
            .fetch_add(GAMMA, Ordering::Relaxed)
            .wrapping_add(GAMMA);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) < self.threshold
    }
}

impl<I: DatagramIo> DatagramIo for Lossy<I> {
    fn try_send(
        &self,
        to: SocketAddr,
        contents: &[u8],
        segment_size: Option<usize>,
    ) -> io::Result<()> {
        self.inner.try_send(to, contents, segment_size)
    }

    fn try_recv(&self, batch: &mut RecvBatch) -> io::Result<()> {
        self.inner.try_recv(batch)?;
        let before = batch.len();
        batch.retain(|_, _| !self.lose());
        let lost = (before - batch.len()) as u64;
        self.drops.fetch_add(lost, Ordering::Relaxed);
        Ok(())
    }

    fn max_segments(&self) -> usize {
        self.inner.max_segments()
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.inner.fd()
    }

    fn simulated_drops(&self) -> u64 {
        self.drops.load(Ordering::Relaxed) + self.inner.simulated_drops()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// A socket that always delivers the same ten datagrams.
    struct Ten(std::net::UdpSocket);

    impl DatagramIo for Ten {
        fn try_send(&self, _: SocketAddr, _: &[u8], _: Option<usize>) -> io::Result<()> {
            Ok(())
        }
        fn try_recv(&self, batch: &mut RecvBatch) -> io::Result<()> {
            batch.clear();
            let from = SocketAddr::from(([127, 0, 0, 1], 9));
            for i in 0..10u8 {
                assert!(batch.push(from, &[i; 3]));
            }
            Ok(())
        }
        fn max_segments(&self) -> usize {
            1
        }
        fn fd(&self) -> BorrowedFd<'_> {
            self.0.as_fd()
        }
    }

    fn ten() -> Ten {
        Ten(std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
    }

    fn kept(lossy: &Lossy<Ten>, rounds: usize) -> Vec<u8> {
        let mut batch = RecvBatch::new();
        let mut kept = Vec::new();
        for _ in 0..rounds {
            lossy.try_recv(&mut batch).unwrap();
            batch.for_each(|_, d| kept.push(d[0]));
        }
        kept
    }

    /// 0 keeps everything, 1 drops everything; in between, the share lost
    /// is near the probability, every drop is counted, the bytes count
    /// follows, and the same seed loses the same datagrams.
    #[test]
    fn drops_the_given_share_counted_and_repeatable() {
        let none = Lossy::new(ten(), Loss::new(0.0, 1).unwrap());
        assert_eq!(kept(&none, 10).len(), 100);
        assert_eq!(none.simulated_drops(), 0);
        let all = Lossy::new(ten(), Loss::new(1.0, 1).unwrap());
        assert!(kept(&all, 10).is_empty());
        assert_eq!(all.simulated_drops(), 100);

        let a = Lossy::new(ten(), Loss::new(0.3, 5).unwrap());
        let got = kept(&a, 1_000);
        let lost = 10_000 - got.len() as u64;
        assert!((2_700..3_300).contains(&lost), "{lost}");
        assert_eq!(a.simulated_drops(), lost);
        let b = Lossy::new(ten(), Loss::new(0.3, 5).unwrap());
        assert_eq!(kept(&b, 1_000), got);
        let c = Lossy::new(ten(), Loss::new(0.3, 6).unwrap());
        assert_ne!(kept(&c, 1_000), got);

        let mut batch = RecvBatch::new();
        a.try_recv(&mut batch).unwrap();
        assert_eq!(batch.bytes(), batch.len() * 3);
    }
}
