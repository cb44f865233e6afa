//! Where a session's datagrams come from, and so where its NAKs go
//! (PROTOCOL.md §8.4 rule 9): the address most of its believed datagrams
//! came from, while that address is heard; once it has been silent for a
//! while, the address heard most recently (a relay restarted on another
//! port, a standby relay taking over). One forged datagram cannot redirect
//! NAKs while the main source is alive.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Most addresses remembered; the least heard gives way.
const MAX_SOURCES: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Source {
    pub(crate) addr: SocketAddr,
    pub(crate) count: u64,
    pub(crate) last: Instant,
}

/// The sources of one session.
#[derive(Debug, Clone)]
pub(crate) struct Sources(pub(crate) Vec<Source>);

impl Sources {
    pub(crate) fn new() -> Self {
        Sources(Vec::new())
    }

    /// Counts one believed datagram from `addr` at `now`.
    pub(crate) fn record(&mut self, addr: SocketAddr, now: Instant) {
        if let Some(e) = self.0.iter_mut().find(|e| e.addr == addr) {
            e.count = e.count.saturating_add(1);
            e.last = e.last.max(now);
        } else if self.0.len() < MAX_SOURCES {
            self.0.push(Source {
                addr,
                count: 1,
                last: now,
            });
        } else if let Some(e) = self.0.iter_mut().min_by_key(|e| e.count) {
            *e = Source {
                addr,
                count: 1,
                last: now,
            };
        }
    }

    /// Every source heard within `within` of `now` (at most four).
    pub(crate) fn recent(&self, now: Instant, within: Duration) -> Vec<SocketAddr> {
        self.0
            .iter()
            .filter(|e| now.saturating_duration_since(e.last) < within)
            .map(|e| e.addr)
            .collect()
    }

    /// Where NAKs go at `now`: the source most datagrams came from, unless
    /// it has been silent for `silent` or longer; then the one heard last.
    pub(crate) fn main(&self, now: Instant, silent: Duration) -> Option<SocketAddr> {
        let most = self.0.iter().max_by_key(|e| e.count)?;
        if now.saturating_duration_since(most.last) < silent {
            return Some(most.addr);
        }
        self.0.iter().max_by_key(|e| e.last).map(|e| e.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(n: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], n))
    }

    /// NAKs go to the address most of the session's datagrams came from; at
    /// most four addresses are remembered, the least heard giving way.
    #[test]
    fn naks_go_to_the_main_source_of_at_most_four() {
        let t = Instant::now();
        let long = Duration::from_secs(3600);
        let mut s = Sources::new();
        for _ in 0..4 {
            s.record(a(1), t);
        }
        s.record(a(2), t);
        assert_eq!(s.main(t, long), Some(a(1)));
        assert_eq!(s.0.len(), 2);
        for n in [2, 3, 3, 4, 4] {
            s.record(a(n), t);
        }
        let counts = |s: &Sources| s.0.iter().map(|e| (e.addr, e.count)).collect::<Vec<_>>();
        assert_eq!(counts(&s), vec![(a(1), 4), (a(2), 2), (a(3), 2), (a(4), 2)]);
        // A fifth address replaces the least heard (the first of them).
        s.record(a(5), t);
        assert_eq!(counts(&s), vec![(a(1), 4), (a(5), 1), (a(3), 2), (a(4), 2)]);
        for _ in 0..4 {
            s.record(a(5), t);
        }
        assert_eq!(s.main(t, long), Some(a(5)));
    }

    /// One datagram from elsewhere moves nothing while the main source is
    /// heard; once it has been silent for `silent`, the address heard last
    /// takes over (a relay restarted on another port), and the main source
    /// takes its place back when it is heard again.
    #[test]
    fn a_silent_main_source_gives_way_to_the_one_heard_last() {
        let t = Instant::now();
        let silent = Duration::from_millis(200);
        let mut s = Sources::new();
        for i in 0..100 {
            s.record(a(1), t + Duration::from_millis(i));
        }
        let t1 = t + Duration::from_millis(100);
        s.record(a(9), t1);
        assert_eq!(s.main(t1, silent), Some(a(1)));
        // The main source falls silent; another one goes on.
        let t2 = t1 + Duration::from_millis(150);
        s.record(a(2), t2);
        assert_eq!(s.main(t2, silent), Some(a(1)), "not silent long enough");
        let t3 = t + Duration::from_millis(100 + 200);
        s.record(a(2), t3);
        assert_eq!(s.main(t3, silent), Some(a(2)));
        // Back.
        let t4 = t3 + Duration::from_millis(10);
        s.record(a(1), t4);
        assert_eq!(s.main(t4, silent), Some(a(1)));
        assert_eq!(Sources::new().main(t4, silent), None);
    }
}
