//! A small seedable random number generator (SplitMix64) for the engines'
//! randomised delays, so that simulations are deterministic for a seed.

use std::time::Duration;

/// SplitMix64: fast, and deterministic for a seed. Not for cryptography.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed ^ 0x2545_f491_4f6c_dd1d)
    }

    /// A generator whose internal state starts at `state` exactly.
    #[cfg(test)]
    pub(crate) fn from_state(state: u64) -> Self {
        Rng(state)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A duration drawn uniformly from `0 ..= max`.
    pub(crate) fn up_to(&mut self, max: Duration) -> Duration {
        let us = u64::try_from(max.as_micros()).unwrap_or(u64::MAX);
        if us == 0 {
            return Duration::ZERO;
        }
        Duration::from_micros(self.next_u64() % us.saturating_add(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generator is SplitMix64: the reference outputs from state 0.
    #[test]
    fn it_is_splitmix64() {
        let mut r = Rng::from_state(0);
        assert_eq!(
            [r.next_u64(), r.next_u64(), r.next_u64()],
            [
                0xe220_a839_7b1d_cdaf,
                0x6e78_9e6a_a1b9_65f4,
                0x06c4_5d18_8009_454f
            ]
        );
    }

    /// Draws lie in `0 ..= max`, and a zero bound draws zero.
    #[test]
    fn draws_lie_within_the_bound() {
        let mut r = Rng::new(7);
        assert_eq!(r.up_to(Duration::ZERO), Duration::ZERO);
        let max = Duration::from_micros(3);
        let mut seen = [false; 4];
        for _ in 0..200 {
            let d = r.up_to(max);
            assert!(d <= max);
            seen[d.as_micros() as usize] = true;
        }
        assert_eq!(seen, [true; 4], "every value in 0 ..= 3 µs");
    }
}
