//! Counts of messages and their bytes by kind.

use super::MessageKind;

/// The kinds this version defines, in wire order.
const KINDS: [MessageKind; 11] = [
    MessageKind::Padding,
    MessageKind::Delta,
    MessageKind::Retransmit,
    MessageKind::LeafSnapshot,
    MessageKind::CycleBegin,
    MessageKind::CycleEnd,
    MessageKind::Heartbeat,
    MessageKind::Nak,
    MessageKind::Fragment,
    MessageKind::FragNak,
    MessageKind::StreamInfo,
];

impl MessageKind {
    /// A short lower-case name, as metrics label kinds: `delta`,
    /// `leaf_snapshot`, `frag_nak`, ...
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            MessageKind::Padding => "padding",
            MessageKind::Delta => "delta",
            MessageKind::Retransmit => "retransmit",
            MessageKind::LeafSnapshot => "leaf_snapshot",
            MessageKind::CycleBegin => "cycle_begin",
            MessageKind::CycleEnd => "cycle_end",
            MessageKind::Heartbeat => "heartbeat",
            MessageKind::Nak => "nak",
            MessageKind::Fragment => "fragment",
            MessageKind::FragNak => "frag_nak",
            MessageKind::StreamInfo => "stream_info",
        }
    }
}

/// Messages and their bytes (message headers included), by kind; kinds
/// this version does not define are counted together.
///
/// ```
/// use grapevine_core::wire::{KindCounts, MessageKind};
///
/// let mut c = KindCounts::default();
/// c.add(MessageKind::Delta as u8, 64);
/// c.add(MessageKind::Delta as u8, 70);
/// c.add(0x42, 9);
/// assert_eq!(c.get(MessageKind::Delta), (2, 134));
/// assert_eq!(c.unknown(), (1, 9));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KindCounts {
    known: [(u64, u64); KINDS.len()],
    unknown: (u64, u64),
}

impl KindCounts {
    /// Counts one message of wire kind `kind`, `len` bytes long.
    pub fn add(&mut self, kind: u8, len: usize) {
        let slot = match self.known.get_mut(usize::from(kind)) {
            Some(slot) => slot,
            None => &mut self.unknown,
        };
        slot.0 += 1;
        slot.1 += len as u64;
    }

    /// Messages and bytes of `kind`.
    #[must_use]
    pub fn get(&self, kind: MessageKind) -> (u64, u64) {
        self.known.get(kind as usize).copied().unwrap_or_default()
    }

    /// Messages and bytes of kinds this version does not define.
    #[must_use]
    pub fn unknown(&self) -> (u64, u64) {
        self.unknown
    }

    /// Every defined kind with its messages and bytes, in wire order.
    pub fn iter(&self) -> impl Iterator<Item = (MessageKind, u64, u64)> + '_ {
        KINDS
            .iter()
            .zip(self.known.iter())
            .map(|(&k, &(n, b))| (k, n, b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_counted_in_its_own_slot_with_its_name() {
        let mut c = KindCounts::default();
        for (i, k) in KINDS.iter().enumerate() {
            assert_eq!(MessageKind::from_u8(*k as u8), Some(*k));
            for _ in 0..=i {
                c.add(*k as u8, 10 * (i + 1));
            }
        }
        c.add(0x0b, 5);
        c.add(0xff, 6);
        assert_eq!(c.iter().count(), KINDS.len());
        for (i, (k, n, b)) in c.iter().enumerate() {
            assert_eq!(k, KINDS[i]);
            assert_eq!((n, b), ((i + 1) as u64, ((i + 1) * 10 * (i + 1)) as u64));
            assert_eq!(c.get(k), (n, b));
        }
        assert_eq!(c.unknown(), (2, 11));
        let names: Vec<&str> = KINDS.iter().map(|k| k.name()).collect();
        assert_eq!(
            names,
            [
                "padding",
                "delta",
                "retransmit",
                "leaf_snapshot",
                "cycle_begin",
                "cycle_end",
                "heartbeat",
                "nak",
                "fragment",
                "frag_nak",
                "stream_info"
            ]
        );
    }
}
