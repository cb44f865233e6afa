//! Protocol numbers as newtypes: sequence numbers, stream, session and cycle ids.
//!
//! Sequence numbers are plain `u64` counters that start at 1 in every publisher
//! session and never wrap (at a billion deltas per second a session would need
//! 584 years to exhaust them), so they compare with ordinary integer order.
//! `0` is reserved to mean "no delta yet" (for example the `prev_leaf_seq` of
//! the first delta that touches a leaf).

use core::fmt;

/// A global delta sequence number within one publisher session.
///
/// ```
/// use grapevine_core::SeqNum;
/// let s = SeqNum(41);
/// assert_eq!(s.next(), Some(SeqNum(42)));
/// assert!(SeqNum::NONE < s);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeqNum(pub u64);

impl SeqNum {
    /// "No delta yet": the value before the first sequence number of a session.
    pub const NONE: SeqNum = SeqNum(0);

    /// The sequence number after this one, or `None` at `u64::MAX`.
    #[must_use]
    pub fn next(self) -> Option<SeqNum> {
        self.0.checked_add(1).map(SeqNum)
    }

    /// Whether this is [`SeqNum::NONE`].
    #[must_use]
    pub fn is_none(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for SeqNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Identifies one replicated state (one publisher's stream) on a group.
///
/// Receivers drop datagrams whose stream id is not the one they subscribed to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId(pub u32);

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A publisher incarnation: random per publisher start. A new session id on a
/// stream means the publisher restarted and subscribers must resynchronise.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#018x}", self.0)
    }
}

/// Identifies one pass of the publisher's snapshot cycle. Wraps at `u32::MAX`;
/// only compared for equality.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CycleId(pub u32);

impl CycleId {
    /// The id of the following cycle (wrapping).
    #[must_use]
    pub fn next(self) -> CycleId {
        CycleId(self.0.wrapping_add(1))
    }

    /// Whether this cycle comes after `other`, in serial-number arithmetic
    /// (RFC 1982): true when it is at most 2^31 - 1 cycles ahead.
    ///
    /// ```
    /// use grapevine_core::CycleId;
    /// assert!(CycleId(1).is_after(CycleId(0)));
    /// assert!(CycleId(0).is_after(CycleId(u32::MAX)));
    /// assert!(!CycleId(5).is_after(CycleId(5)));
    /// assert!(!CycleId(4).is_after(CycleId(5)));
    /// ```
    #[must_use]
    pub fn is_after(self, other: CycleId) -> bool {
        let d = self.0.wrapping_sub(other.0);
        d != 0 && d < 1 << 31
    }
}

impl fmt::Display for CycleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An inclusive range of sequence numbers, as carried by a NAK.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SeqRange {
    /// First missing sequence number.
    pub first: SeqNum,
    /// Last missing sequence number (inclusive, `>= first`).
    pub last: SeqNum,
}

impl fmt::Display for SeqRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..={}", self.first, self.last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn none_is_seq_zero() {
        assert!(SeqNum::NONE.is_none());
        assert!(SeqNum(0).is_none());
        assert!(!SeqNum(1).is_none());
    }

    /// Serial arithmetic (RFC 1982) on cycle ids: ahead by 1 to 2^31 - 1,
    /// wrapping; exactly 2^31 apart neither is after the other.
    #[test]
    fn cycle_ids_compare_in_serial_arithmetic() {
        assert!(CycleId(1).is_after(CycleId(0)));
        assert!(CycleId(0).is_after(CycleId(u32::MAX)));
        assert!(CycleId((1 << 31) - 1).is_after(CycleId(0)));
        assert!(!CycleId(1 << 31).is_after(CycleId(0)));
        assert!(!CycleId(0).is_after(CycleId(1 << 31)));
        assert!(!CycleId(5).is_after(CycleId(5)));
        assert!(!CycleId(4).is_after(CycleId(5)));
        assert_eq!(CycleId(u32::MAX).next(), CycleId(0));
    }

    #[test]
    fn ids_display_as_documented() {
        assert_eq!(SeqNum(42).to_string(), "42");
        assert_eq!(StreamId(7).to_string(), "7");
        assert_eq!(SessionId(0xab).to_string(), "0x00000000000000ab");
        assert_eq!(CycleId(9).to_string(), "9");
        let r = SeqRange {
            first: SeqNum(3),
            last: SeqNum(5),
        };
        assert_eq!(r.to_string(), "3..=5");
    }
}
