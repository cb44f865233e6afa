//! A fixed-size latency histogram: log-linear buckets (8 per power of two)
//! over microseconds, so quantiles are within about 12 % and memory never
//! grows.

use std::time::Duration;

const SUB: u32 = 8;
/// 8 exact buckets below 8 µs, then 8 per power of two from 2^3 to 2^63.
const BUCKETS: usize = 62 * SUB as usize;

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
    const EXACT: u64 = SUB as u64;
    // One bucket per microsecond below SUB (a range pattern: at SUB itself
    // both ways give bucket SUB).
    if let 0..EXACT = us {
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
    // (At SUB itself both ways give SUB.)
    if let 0..SUB = b {
        return u64::from(b);
    }
    let shift = b / SUB - 1;
    u64::from(SUB + b % SUB) << shift
}

impl LatencyHistogram {
    /// Records one duration.
    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        if let Some(c) = self.counts.get_mut(bucket(us)) {
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

    /// What was recorded since `earlier` (an older copy of this
    /// histogram): for each bucket that grew, its lower end and by how
    /// many, in increasing order. An exporter feeds these to a histogram of
    /// its own (Prometheus buckets, say) without keeping every duration.
    pub fn recorded_since<'a>(
        &'a self,
        earlier: &'a LatencyHistogram,
    ) -> impl Iterator<Item = (Duration, u64)> + 'a {
        self.counts
            .iter()
            .zip(earlier.counts.iter())
            .enumerate()
            .filter_map(|(b, (&now, &then))| {
                let grew = now.saturating_sub(then);
                (grew > 0).then(|| (Duration::from_micros(lower(b)), grew))
            })
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

    /// Every value falls in the bucket whose range holds it: at or above
    /// its lower end and below the next bucket's, within an eighth.
    #[test]
    fn every_value_lies_within_its_bucket() {
        let mut values: Vec<u64> = (0..1 << 14).collect();
        for e in 14..64 {
            for d in [0, 1, 2, 3] {
                values.push((1u64 << e) - d);
                values.push((1u64 << e) + d);
            }
        }
        values.push(u64::MAX);
        for us in values {
            let b = bucket(us);
            assert!(b < BUCKETS, "{us}");
            assert!(lower(b) <= us, "{us}: bucket {b} starts at {}", lower(b));
            if b + 1 < BUCKETS {
                assert!(
                    us < lower(b + 1),
                    "{us}: bucket {b} ends at {}",
                    lower(b + 1)
                );
            }
            assert!(us - lower(b) <= us / 8, "{us}");
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    /// Quantiles rank the values recorded: the value of rank
    /// ceil(q × count), at least the first, q clamped to 0 ..= 1.
    #[test]
    fn quantiles_rank_the_values() {
        let mut h = LatencyHistogram::default();
        for us in 1..=100 {
            h.record(Duration::from_micros(us));
        }
        assert_eq!(h.count(), 100);
        let q = |q: f64| h.quantile(q).unwrap().as_micros();
        assert_eq!(q(-1.0), 1);
        assert_eq!(q(0.0), 1);
        assert_eq!(q(0.01), 1);
        assert_eq!(q(0.02), 2);
        assert_eq!(q(0.09), 9);
        assert_eq!(q(0.5), 48, "50 lies in 48..=51");
        assert_eq!(q(1.0), 96, "100 lies in 96..=103");
        assert_eq!(q(7.0), 96);
        // Beyond u64 microseconds: the last bucket.
        h.record(Duration::MAX);
        assert_eq!(h.count(), 101);
        assert_eq!(
            h.quantile(1.0),
            Some(Duration::from_micros(lower(BUCKETS - 1)))
        );
    }

    /// Only what grew since the earlier copy is listed, by bucket, with
    /// the growth: nothing for an unchanged histogram, everything for a
    /// copy taken when it was empty.
    #[test]
    fn recorded_since_lists_the_growth_by_bucket() {
        let mut h = LatencyHistogram::default();
        let empty = h.clone();
        assert_eq!(h.recorded_since(&empty).count(), 0);
        h.record(Duration::from_micros(3));
        h.record(Duration::from_micros(100));
        let then = h.clone();
        assert_eq!(h.recorded_since(&then).count(), 0);
        h.record(Duration::from_micros(100));
        h.record(Duration::from_micros(101));
        h.record(Duration::from_millis(5));
        let us = |d: Duration| d.as_micros();
        let since: Vec<_> = h.recorded_since(&then).map(|(d, n)| (us(d), n)).collect();
        assert_eq!(since, [(96, 2), (4608, 1)]);
        let all: Vec<_> = h.recorded_since(&empty).map(|(d, n)| (us(d), n)).collect();
        assert_eq!(all, [(3, 1), (96, 3), (4608, 1)]);
    }
}
