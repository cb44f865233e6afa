//! A fixed-size latency histogram: log-linear buckets (8 per power of two)
//! over microseconds, so quantiles are within about 12 % and memory never
//! grows.

use std::time::Duration;

const SUB: u32 = 8;
const BUCKETS: usize = 64 * SUB as usize;

/// Counts of durations, for quantiles such as p50 and p99.
///
/// ```
/// use std::time::Duration;
/// use grapevine_core::LatencyHistogram;
///
/// let mut h = LatencyHistogram::default();
/// for ms in 1..=100 {
///     h.record(Duration::from_millis(ms));
/// }
/// let p50 = h.quantile(0.5).unwrap();
/// assert!(p50 >= Duration::from_millis(44) && p50 <= Duration::from_millis(57));
/// assert_eq!(h.count(), 100);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LatencyHistogram {
    counts: Vec<u64>,
    total: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            total: 0,
        }
    }
}

fn bucket(us: u64) -> usize {
    if us < u64::from(SUB) {
        return us as usize;
    }
    let exp = 63 - us.leading_zeros();
    let shift = exp - SUB.trailing_zeros();
    let sub = (us >> shift) as u32 - SUB;
    ((exp - SUB.trailing_zeros() + 1) * SUB + sub) as usize
}

/// The smallest value in bucket `b`.
fn lower(b: usize) -> u64 {
    let b = b as u32;
    if b < SUB {
        return u64::from(b);
    }
    let shift = b / SUB - 1;
    u64::from(SUB + b % SUB) << shift
}

impl LatencyHistogram {
    /// Records one duration.
    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        if let Some(c) = self.counts.get_mut(bucket(us).min(BUCKETS - 1)) {
            *c += 1;
            self.total += 1;
        }
    }

    /// Number of durations recorded.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The duration below which a share `q` (0.0 ..= 1.0) of the recorded
    /// ones lie (the lower end of its bucket), or `None` if none was
    /// recorded.
    #[must_use]
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Duration::from_micros(lower(b)));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_within_an_eighth() {
        let mut prev = 0;
        for us in [0u64, 1, 7, 8, 9, 15, 16, 17, 100, 1000, 12_345, 1 << 40] {
            let b = bucket(us);
            assert!(b >= prev, "{us}");
            prev = b;
            let lo = lower(b);
            assert!(lo <= us, "{us}: lower {lo}");
            assert!(us - lo <= us / 8 + 1, "{us}: lower {lo}");
        }
    }

    #[test]
    fn quantiles_of_known_values() {
        let mut h = LatencyHistogram::default();
        assert_eq!(h.quantile(0.5), None);
        for _ in 0..99 {
            h.record(Duration::from_micros(100));
        }
        h.record(Duration::from_secs(1));
        assert_eq!(h.quantile(0.5), Some(Duration::from_micros(96)));
        assert!(h.quantile(1.0).unwrap() > Duration::from_millis(800));
    }
}
