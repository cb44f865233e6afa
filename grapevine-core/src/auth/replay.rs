//! A sliding replay window over one sender's `datagram_seq`.

/// How many `datagram_seq` values below the highest accepted one a window
/// remembers: older ones are refused as too old.
pub const WINDOW: u64 = 4096;

const WORDS: usize = (WINDOW / 64) as usize;

/// What a window says of a `datagram_seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not seen before and within reach: accepted (by
    /// [`ReplayWindow::accept`]) or acceptable (by [`ReplayWindow::check`]).
    Fresh,
    /// Seen before.
    Replayed,
    /// [`WINDOW`] or more below the highest accepted: whether it was seen
    /// is no longer known.
    TooOld,
    /// More than `jump` beyond the highest accepted, and not corroborated:
    /// held as a claim that a second such datagram confirms.
    TooFar,
}

/// One sender's replay window: the highest `datagram_seq` accepted and
/// which of the [`WINDOW`] below it were, in 512 bytes.
///
/// A datagram may move the window forward by at most `jump` (the
/// opener's `MAX_JUMP`, half the window), so that one datagram far ahead, sealed by
/// a key holder, cannot make every later real one look too old. A second
/// authenticated datagram beyond the first far one, within `jump` of it,
/// corroborates it and moves the window there (after a partition, say);
/// the first, dropped as too far, is not marked seen. A copy of the first
/// does not corroborate it.
///
/// ```
/// use grapevine_core::auth::{ReplayWindow, Verdict};
///
/// let mut w = ReplayWindow::default();
/// assert_eq!(w.accept(7, 100), Verdict::Fresh);
/// assert_eq!(w.check(7), Verdict::Replayed);
/// assert_eq!(w.accept(5, 100), Verdict::Fresh, "late but not seen");
/// assert_eq!(w.accept(1_000_000, 100), Verdict::TooFar);
/// assert_eq!(w.accept(1_000_000, 100), Verdict::TooFar, "a copy proves nothing");
/// assert_eq!(w.accept(1_000_001, 100), Verdict::Fresh, "corroborated");
/// assert_eq!(w.check(8), Verdict::TooOld);
/// ```
#[derive(Clone, Debug)]
pub struct ReplayWindow {
    /// Bit `i` of the ring: `top - i` (mod the ring) was accepted; the ring
    /// turns with `top`.
    bits: [u64; WORDS],
    top: Option<u64>,
    /// A far datagram's `datagram_seq`, waiting for a second to confirm it.
    claim: Option<u64>,
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self {
            bits: [0; WORDS],
            top: None,
            claim: None,
        }
    }
}

impl ReplayWindow {
    /// The highest `datagram_seq` accepted, if any.
    #[must_use]
    pub fn top(&self) -> Option<u64> {
        self.top
    }

    /// What [`accept`](Self::accept) would say of `seq`, without changing
    /// anything: the cheap check before a tag is verified. A datagram
    /// beyond the window is [`Verdict::Fresh`] here (whether it is too far
    /// is decided once it is authenticated).
    #[must_use]
    pub fn check(&self, seq: u64) -> Verdict {
        match self.top {
            Some(top) if seq <= top => {
                if top - seq >= WINDOW {
                    Verdict::TooOld
                } else if self.get(seq) {
                    Verdict::Replayed
                } else {
                    Verdict::Fresh
                }
            }
            _ => Verdict::Fresh,
        }
    }

    /// Accepts `seq`, of a datagram whose tag verified, if the window
    /// allows it, moving the window forward by at most `jump` unless a
    /// second far datagram corroborates the first.
    pub fn accept(&mut self, seq: u64, jump: u64) -> Verdict {
        let Some(top) = self.top else {
            self.top = Some(seq);
            self.set(seq);
            return Verdict::Fresh;
        };
        if seq <= top {
            let v = self.check(seq);
            if v == Verdict::Fresh {
                self.set(seq);
            }
            return v;
        }
        let near = seq - top <= jump;
        let confirmed = self
            .claim
            .is_some_and(|c| seq > c && seq - c <= jump.max(1));
        if !near && !confirmed {
            self.claim = Some(seq);
            return Verdict::TooFar;
        }
        // The far datagram held as a claim was dropped, not handled: it is
        // not marked, and a copy of it may still be accepted.
        self.claim = None;
        self.advance(top, seq);
        self.set(seq);
        Verdict::Fresh
    }

    /// Moves the top from `top` to `new` (above it), forgetting what falls
    /// out of the window.
    fn advance(&mut self, top: u64, new: u64) {
        let shift = new - top;
        if shift >= WINDOW {
            self.bits = [0; WORDS];
        } else {
            for s in top + 1..=new {
                self.clear(s);
            }
        }
        self.top = Some(new);
    }

    fn slot(seq: u64) -> (usize, u64) {
        let i = seq % WINDOW;
        ((i / 64) as usize, 1u64 << (i % 64))
    }

    fn get(&self, seq: u64) -> bool {
        let (w, b) = Self::slot(seq);
        self.bits.get(w).is_some_and(|x| x & b != 0)
    }

    fn set(&mut self, seq: u64) {
        let (w, b) = Self::slot(seq);
        if let Some(x) = self.bits.get_mut(w) {
            *x |= b;
        }
    }

    fn clear(&mut self, seq: u64) {
        let (w, b) = Self::slot(seq);
        if let Some(x) = self.bits.get_mut(w) {
            *x &= !b;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    /// The window as a rule over every `datagram_seq` ever accepted.
    #[derive(Default)]
    struct Model {
        seen: BTreeSet<u64>,
        top: Option<u64>,
        claim: Option<u64>,
    }

    impl Model {
        fn accept(&mut self, seq: u64, jump: u64) -> Verdict {
            let Some(top) = self.top else {
                self.top = Some(seq);
                self.seen.insert(seq);
                return Verdict::Fresh;
            };
            if seq <= top {
                if top - seq >= WINDOW {
                    return Verdict::TooOld;
                }
                return if self.seen.insert(seq) {
                    Verdict::Fresh
                } else {
                    Verdict::Replayed
                };
            }
            let confirmed = self
                .claim
                .is_some_and(|c| seq > c && seq - c <= jump.max(1));
            if seq - top > jump && !confirmed {
                self.claim = Some(seq);
                return Verdict::TooFar;
            }
            self.claim = None;
            self.top = Some(seq);
            self.seen.insert(seq);
            Verdict::Fresh
        }
    }

    fn ops() -> impl Strategy<Value = Vec<u64>> {
        // Mostly near the running top, sometimes far ahead or far behind.
        prop::collection::vec(
            prop_oneof![
                8 => 0u64..64,
                2 => 0u64..6000,
                1 => 0u64..200_000,
            ],
            1..400,
        )
    }

    proptest! {
        /// The window agrees with the model on every datagram: the same
        /// seq is never accepted twice, nothing at or beyond WINDOW below
        /// the top, a far one only once corroborated.
        #[test]
        fn the_window_agrees_with_a_model_that_remembers_everything(
            deltas in ops(), back in prop::collection::vec(any::<bool>(), 400), jump in 1u64..10_000,
        ) {
            let (mut w, mut m) = (ReplayWindow::default(), Model::default());
            let mut cur = 1_000_000u64;
            for (i, d) in deltas.iter().enumerate() {
                let seq = if back.get(i).copied().unwrap_or(false) {
                    cur.saturating_sub(*d)
                } else {
                    cur + d
                };
                let checked = w.check(seq);
                let got = w.accept(seq, jump);
                let want = m.accept(seq, jump);
                prop_assert_eq!(got, want, "seq {} (#{})", seq, i);
                if checked != Verdict::Fresh {
                    prop_assert_eq!(checked, got, "check agrees with accept");
                }
                prop_assert_eq!(w.top(), m.top);
                cur = m.top.unwrap_or(cur);
            }
        }
    }

    #[test]
    fn the_edges_of_the_window() {
        let mut w = ReplayWindow::default();
        assert_eq!(w.check(10), Verdict::Fresh);
        assert_eq!(w.top(), None);
        assert_eq!(w.accept(WINDOW + 10, 1), Verdict::Fresh);
        assert_eq!(w.check(11), Verdict::Fresh, "WINDOW - 1 below the top");
        assert_eq!(w.check(10), Verdict::TooOld, "WINDOW below the top");
        assert_eq!(w.accept(11, 1), Verdict::Fresh);
        assert_eq!(w.accept(11, 1), Verdict::Replayed);
        // Moving by exactly `jump` is near; one more is far.
        assert_eq!(w.accept(WINDOW + 15, 5), Verdict::Fresh);
        assert_eq!(w.accept(WINDOW + 21, 5), Verdict::TooFar);
        assert_eq!(w.top(), Some(WINDOW + 15));
        // The same far datagram again (a replay of it) confirms nothing.
        assert_eq!(w.accept(WINDOW + 21, 5), Verdict::TooFar);
        assert_eq!(w.top(), Some(WINDOW + 15));
        // A second far one within `jump` of the claim moves the window
        // there; the first, dropped, is not marked as seen.
        assert_eq!(w.accept(WINDOW + 26, 5), Verdict::Fresh);
        assert_eq!(w.accept(WINDOW + 21, 5), Verdict::Fresh);
        assert_eq!(w.accept(WINDOW + 21, 5), Verdict::Replayed);
        // Moving by the whole window forgets everything below.
        assert_eq!(w.accept(3 * WINDOW, 1 << 20), Verdict::Fresh);
        assert_eq!(w.check(2 * WINDOW + 1), Verdict::Fresh);
        assert_eq!(w.check(2 * WINDOW), Verdict::TooOld);
        // A jump of half the number space, corroborated, at once.
        assert_eq!(w.accept(u64::MAX / 2, u64::MAX), Verdict::Fresh);
        assert_eq!(w.check(u64::MAX / 2 - 1), Verdict::Fresh);
        assert_eq!(w.check(u64::MAX / 2 - WINDOW), Verdict::TooOld);
        // And again, to twice as far: the window is cleared, not walked.
        assert_eq!(w.accept(u64::MAX - 1, u64::MAX), Verdict::Fresh);
        assert_eq!(w.check(u64::MAX / 2), Verdict::TooOld);
        // A seq the ring reuses (same slot, one window apart) is not seen.
        let mut w = ReplayWindow::default();
        assert_eq!(w.accept(5, 1 << 20), Verdict::Fresh);
        assert_eq!(w.accept(5 + WINDOW - 1, 1 << 20), Verdict::Fresh);
        assert_eq!(w.accept(5 + WINDOW, 1), Verdict::Fresh);
        assert_eq!(w.check(5 + WINDOW), Verdict::Replayed);
    }
}
