//! CPU pinning for the fan-out measures: the publisher's process on one
//! CPU, the subscribers' on the others. On a network the subscribers run on
//! other hosts; on one host they would otherwise share the publisher's
//! core (preempting it, evicting its caches), and the publisher's CPU per
//! delta would grow with their number for reasons that are not its own.

use anyhow::{bail, Context, Result};
use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// The CPUs this process may run on, in order.
fn allowed() -> Vec<usize> {
    let Ok(set) = sched_getaffinity(Pid::from_raw(0)) else {
        return Vec::new();
    };
    (0..CpuSet::count())
        .filter(|&c| set.is_set(c).unwrap_or(false))
        .collect()
}

/// The publisher's CPU and the subscribers' (the rest), if this process
/// may run on two or more.
pub(crate) fn split() -> Option<(usize, Vec<usize>)> {
    let cpus = allowed();
    let (&first, rest) = cpus.split_first()?;
    (!rest.is_empty()).then(|| (first, rest.to_vec()))
}

/// Pins the calling thread, and the threads and processes it starts from
/// now on, to `cpus`.
pub(crate) fn pin(cpus: &[usize]) -> Result<()> {
    if cpus.is_empty() {
        bail!("no CPU to pin to");
    }
    let mut set = CpuSet::new();
    for &c in cpus {
        set.set(c).with_context(|| {
            format!(
                "CPU {c} is out of range: this system has at most {}",
                CpuSet::count()
            )
        })?;
    }
    sched_setaffinity(Pid::from_raw(0), &set)
        .with_context(|| format!("pinning to CPUs {cpus:?} (are they online and allowed?)"))
}

/// `1,2,3`.
pub(crate) fn list(cpus: &[usize]) -> String {
    cpus.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cpu_beyond_the_set_is_refused_with_its_number() {
        let e = pin(&[CpuSet::count() + 5]).unwrap_err();
        assert!(format!("{e:#}").contains("out of range"), "{e:#}");
        assert!(pin(&[]).is_err());
        assert_eq!(list(&[1, 2, 3]), "1,2,3");
    }

    /// Pinning a thread to one allowed CPU leaves it only that one.
    #[test]
    fn a_thread_pinned_runs_on_that_cpu_only() {
        let first = allowed()[0];
        std::thread::spawn(move || {
            pin(&[first]).unwrap();
            assert_eq!(allowed(), vec![first]);
        })
        .join()
        .unwrap();
    }
}
