//! The schema check of PROTOCOL.md §8.2 ("Schema"): does the followed
//! session carry the state type the subscriber expects?
//!
//! Datagrams are not authenticated yet, so one StreamInfo proves nothing:
//! the session's schema changes (from the expected one to another, or
//! back) only once two datagrams with increasing `datagram_seq` carry the
//! same fingerprint, and a StreamInfo carrying the schema currently
//! believed clears a claim for another.

use crate::schema::{Schema, SchemaFingerprint};
use crate::wire::StreamInfo;
use crate::SessionId;

/// What to do with a datagram of the followed session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Use it.
    Use,
    /// Drop it: the session carries another schema.
    Drop,
    /// Two datagrams now agree that the session carries another schema
    /// than the one expected: report it, reset the replica, drop it.
    Mismatch,
    /// Two datagrams now agree that the session carries the expected
    /// schema again: use it.
    Recovered,
}

#[derive(Debug, Default)]
pub(super) struct SchemaCheck {
    /// The schema expected, if any.
    expected: Option<Schema>,
    /// The session the rest is about.
    session: Option<SessionId>,
    /// The schema the session last announced (one datagram's word).
    announced: Option<Schema>,
    /// The fingerprint believed for the session: the expected one until
    /// two datagrams agree on another.
    believed: Option<SchemaFingerprint>,
    /// Another fingerprint carried by one datagram, with its
    /// `datagram_seq`.
    claim: Option<(SchemaFingerprint, u64)>,
}

impl SchemaCheck {
    pub(super) fn new(expected: Option<Schema>) -> Self {
        Self {
            believed: expected.as_ref().map(Schema::fingerprint),
            expected,
            ..Self::default()
        }
    }

    pub(super) fn expected(&self) -> Option<&Schema> {
        self.expected.as_ref()
    }

    /// The schema the followed session last announced.
    pub(super) fn announced(&self) -> Option<&Schema> {
        self.announced.as_ref()
    }

    /// The fingerprint the followed session is believed to carry, when it
    /// is not the one expected.
    pub(super) fn mismatch(&self) -> Option<SchemaFingerprint> {
        let expected = self.expected.as_ref()?.fingerprint();
        self.believed.filter(|&b| b != expected)
    }

    /// Judges a datagram of session `session` numbered `datagram_seq`
    /// whose first StreamInfo, if any, is `info`.
    pub(super) fn judge(
        &mut self,
        session: SessionId,
        datagram_seq: u64,
        info: Option<StreamInfo<'_>>,
    ) -> Verdict {
        if self.session != Some(session) {
            *self = Self::new(self.expected.take());
            self.session = Some(session);
        }
        let Some(info) = info else {
            return self.verdict(false);
        };
        let same = self
            .announced
            .as_ref()
            .is_some_and(|a| a.fingerprint() == info.fingerprint && a.name() == info.name);
        if !same {
            self.announced = Some(Schema::from_parts(info.fingerprint, info.name));
        }
        let Some(believed) = self.believed else {
            return Verdict::Use;
        };
        if info.fingerprint == believed {
            self.claim = None;
            return self.verdict(false);
        }
        match self.claim {
            Some((fp, seq)) if fp == info.fingerprint && datagram_seq > seq => {
                self.claim = None;
                self.believed = Some(fp);
                self.verdict(true)
            }
            _ => {
                self.claim = Some((info.fingerprint, datagram_seq));
                self.verdict(false)
            }
        }
    }

    fn verdict(&self, changed: bool) -> Verdict {
        match (self.mismatch().is_some(), changed) {
            (true, true) => Verdict::Mismatch,
            (true, false) => Verdict::Drop,
            (false, true) => Verdict::Recovered,
            (false, false) => Verdict::Use,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str) -> Option<StreamInfo<'_>> {
        Some(StreamInfo {
            fingerprint: SchemaFingerprint::of(name),
            name,
        })
    }

    const S: SessionId = SessionId(1);

    #[test]
    fn two_increasing_datagrams_make_a_mismatch_and_two_undo_it() {
        let mut c = SchemaCheck::new(Some(Schema::named("a")));
        assert_eq!(c.judge(S, 1, None), Verdict::Use);
        assert_eq!(c.judge(S, 2, info("b")), Verdict::Use);
        assert_eq!(c.announced().map(Schema::name), Some("b"));
        // Not increasing: the claim restarts from this datagram.
        assert_eq!(c.judge(S, 2, info("b")), Verdict::Use);
        assert_eq!(c.judge(S, 1, info("b")), Verdict::Use);
        assert_eq!(c.mismatch(), None);
        assert_eq!(c.judge(S, 3, info("b")), Verdict::Mismatch);
        assert_eq!(c.mismatch(), Some(SchemaFingerprint::of("b")));
        assert_eq!(c.judge(S, 4, None), Verdict::Drop);
        assert_eq!(c.judge(S, 5, info("b")), Verdict::Drop);
        // One datagram of the expected schema does not undo it; two do.
        assert_eq!(c.judge(S, 6, info("a")), Verdict::Drop);
        assert_eq!(c.judge(S, 7, info("a")), Verdict::Recovered);
        assert_eq!(c.mismatch(), None);
        assert_eq!(c.judge(S, 8, None), Verdict::Use);
    }

    #[test]
    fn a_matching_or_other_claim_clears_a_pending_one() {
        let mut c = SchemaCheck::new(Some(Schema::named("a")));
        assert_eq!(c.judge(S, 1, info("b")), Verdict::Use);
        assert_eq!(c.judge(S, 2, info("a")), Verdict::Use);
        assert_eq!(c.judge(S, 3, info("b")), Verdict::Use, "claim was cleared");
        assert_eq!(c.judge(S, 4, info("c")), Verdict::Use, "another claim");
        assert_eq!(c.judge(S, 5, info("b")), Verdict::Use, "and another");
        assert_eq!(c.judge(S, 6, info("b")), Verdict::Mismatch);
    }

    #[test]
    fn a_new_session_starts_over_and_no_expectation_checks_nothing() {
        let mut c = SchemaCheck::new(Some(Schema::named("a")));
        assert_eq!(c.judge(S, 1, info("b")), Verdict::Use);
        assert_eq!(c.judge(SessionId(2), 2, info("b")), Verdict::Use);
        assert_eq!(c.judge(SessionId(2), 3, info("b")), Verdict::Mismatch);
        assert_eq!(c.judge(S, 4, info("b")), Verdict::Use, "session 1 anew");
        assert!(c.announced().is_some());

        let mut none = SchemaCheck::new(None);
        for seq in 0..4 {
            assert_eq!(none.judge(S, seq, info("b")), Verdict::Use);
        }
        assert_eq!(none.mismatch(), None);
        assert_eq!(none.announced().map(Schema::name), Some("b"));
    }
}
