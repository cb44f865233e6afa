//! What a benchmark process measures of itself: CPU time, resident memory,
//! the kernel's drop counters, and latency percentiles.

use std::time::Duration;

use nix::sys::resource::{getrusage, UsageWho};
use serde::{Deserialize, Serialize};

/// CPU time (user + system) of this process so far, all threads.
pub(crate) fn cpu_time() -> Duration {
    let (user, system) = cpu_times();
    user + system
}

/// CPU time of this process so far, all threads: (user, system). System
/// time includes what the kernel does in the process's system calls, such
/// as delivering a loopback datagram to every socket of the group.
pub(crate) fn cpu_times() -> (Duration, Duration) {
    getrusage(UsageWho::RUSAGE_SELF).map_or((Duration::ZERO, Duration::ZERO), |u| {
        let t = |tv: nix::sys::time::TimeVal| {
            Duration::new(
                u64::try_from(tv.tv_sec()).unwrap_or(0),
                u32::try_from(tv.tv_usec()).unwrap_or(0) * 1_000,
            )
        };
        (t(u.user_time()), t(u.system_time()))
    })
}

/// Resident memory of this process in bytes (`VmRSS`), 0 if unknown.
pub(crate) fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Datagrams the kernel dropped for full receive queues, on every UDP
/// socket of this network namespace so far (`RcvbufErrors` of
/// `/proc/net/snmp` and `/proc/net/snmp6`). A per-socket count would be
/// gone with the subscriber processes' sockets; run the benchmark in a
/// namespace of its own (as `bench/run.sh` does) for a count of its own.
pub(crate) fn kernel_drops() -> u64 {
    let v4 = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut lines = v4.lines().filter(|l| l.starts_with("Udp:"));
    let v4 = match (lines.next(), lines.next()) {
        (Some(names), Some(values)) => names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == "RcvbufErrors")
            .and_then(|(_, v)| v.parse::<u64>().ok())
            .unwrap_or(0),
        _ => 0,
    };
    let v6 = std::fs::read_to_string("/proc/net/snmp6")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Udp6RcvbufErrors"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    v4 + v6
}

/// Percentiles of a latency sample, in microseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Percentiles {
    pub(crate) samples: u64,
    pub(crate) p50_us: f64,
    pub(crate) p90_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) p999_us: f64,
    pub(crate) max_us: f64,
    /// The whole curve, for plots: (percentile, microseconds).
    pub(crate) curve: Vec<(f64, f64)>,
}

/// Percentile points of the curve.
const CURVE: [f64; 12] = [
    0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.99, 100.0,
];

impl Percentiles {
    /// From latencies in nanoseconds (sorted in place).
    pub(crate) fn of(samples: &mut [u32]) -> Self {
        samples.sort_unstable();
        let at = |q: f64| -> f64 {
            if samples.is_empty() {
                return 0.0;
            }
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss
            )]
            let i = ((q / 100.0) * (samples.len() - 1) as f64).round() as usize;
            samples
                .get(i.min(samples.len() - 1))
                .map_or(0.0, |&ns| f64::from(ns) / 1_000.0)
        };
        Self {
            samples: samples.len() as u64,
            p50_us: at(50.0),
            p90_us: at(90.0),
            p99_us: at(99.0),
            p999_us: at(99.9),
            max_us: at(100.0),
            curve: CURVE.iter().map(|&q| (q, at(q))).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_sample() {
        let mut s: Vec<u32> = (1..=1000).rev().map(|i| i * 1000).collect();
        let p = Percentiles::of(&mut s);
        assert_eq!(p.samples, 1000);
        assert_eq!((p.p50_us, p.p99_us, p.max_us), (501.0, 990.0, 1000.0));
        assert_eq!(p.curve.first(), Some(&(0.0, 1.0)));
        assert_eq!(Percentiles::of(&mut []).p50_us, 0.0);
    }

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(30) {}
        assert!(cpu_time() > Duration::ZERO);
        assert!(rss_bytes() > 0);
    }
}
