//! The benchmark's state: dense `u32` keys, each leaf a send timestamp and
//! padding up to the delta size asked for. Applying a delta at a subscriber
//! records its one-way latency (the publisher's wall clock at `publish` to
//! this process's at `apply`: both read the same host clock).

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use grapevine::State;
use serde::de::{self, Deserializer, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

/// Padding bytes: serialised as that many zero bytes, read back without
/// allocating (only the length is kept).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Pad(pub(crate) u16);

static ZEROS: [u8; u16::MAX as usize] = [0; u16::MAX as usize];

impl Serialize for Pad {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(ZEROS.get(..usize::from(self.0)).unwrap_or_default())
    }
}

impl<'de> Deserialize<'de> for Pad {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Len;
        impl Visitor<'_> for Len {
            type Value = Pad;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("padding bytes")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Pad, E> {
                u16::try_from(v.len())
                    .map(Pad)
                    .map_err(|_| E::custom("padding longer than 65535 bytes"))
            }
        }
        d.deserialize_bytes(Len)
    }
}

/// One leaf: when its last delta was published, and its padding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Leaf {
    /// Nanoseconds since the Unix epoch at `publish`.
    pub(crate) stamp_ns: u64,
    pub(crate) pad: Pad,
}

/// A delta: the leaf's new value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Delta {
    pub(crate) key: u32,
    pub(crate) leaf: Leaf,
}

/// Bytes a delta's encoding takes besides its padding: the key (up to 5
/// bytes as a varint), the stamp (9) and the padding's length (1 to 3).
pub(crate) const DELTA_OVERHEAD: u32 = 15;

/// Latency samples kept at most (the first ones; 8 MB).
const MAX_SAMPLES: usize = 2_000_000;

/// The replicated state, plus what a subscriber measures while applying.
#[derive(Debug, Default)]
pub(crate) struct BenchState {
    leaves: Vec<Option<Leaf>>,
    count: usize,
    /// Record latencies on apply (subscribers only).
    pub(crate) measure: bool,
    /// One-way latencies in nanoseconds.
    pub(crate) samples: Vec<u32>,
    /// Deltas applied, and the wall-clock nanoseconds of the first and last.
    pub(crate) applied: u64,
    pub(crate) first_ns: u64,
    pub(crate) last_ns: u64,
}

/// Nanoseconds since the Unix epoch.
pub(crate) fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl BenchState {
    /// `leaves` leaves, each stamped now and padded to `pad` bytes.
    pub(crate) fn with_leaves(leaves: u32, pad: u16) -> Self {
        let leaf = Leaf {
            stamp_ns: wall_ns(),
            pad: Pad(pad),
        };
        Self {
            leaves: vec![Some(leaf); leaves as usize],
            count: leaves as usize,
            ..Self::default()
        }
    }

    /// A subscriber's replica, measuring as it applies.
    pub(crate) fn measuring() -> Self {
        Self {
            measure: true,
            samples: Vec::with_capacity(MAX_SAMPLES.min(1 << 20)),
            ..Self::default()
        }
    }
}

impl State for BenchState {
    type Key = u32;
    type Leaf = Leaf;
    type Delta = Delta;

    fn key_of(delta: &Delta) -> u32 {
        delta.key
    }

    fn apply(&mut self, delta: &Delta) {
        self.set_leaf(&delta.key, Some(delta.leaf));
        if self.measure {
            let now = wall_ns();
            if self.applied == 0 {
                self.first_ns = now;
            }
            self.last_ns = now;
            self.applied += 1;
            if self.samples.len() < MAX_SAMPLES {
                let lat = now.saturating_sub(delta.leaf.stamp_ns);
                self.samples.push(u32::try_from(lat).unwrap_or(u32::MAX));
            }
        }
    }

    fn leaf(&self, key: &u32) -> Option<&Leaf> {
        self.leaves.get(*key as usize).and_then(Option::as_ref)
    }

    fn set_leaf(&mut self, key: &u32, leaf: Option<Leaf>) {
        let i = *key as usize;
        if i >= self.leaves.len() {
            if leaf.is_none() {
                return;
            }
            self.leaves.resize(i + 1, None);
        }
        if let Some(slot) = self.leaves.get_mut(i) {
            self.count = self.count + usize::from(leaf.is_some()) - usize::from(slot.is_some());
            *slot = leaf;
        }
    }

    fn for_each_leaf(&self, f: &mut dyn FnMut(&u32, &Leaf)) {
        for (k, leaf) in self.leaves.iter().enumerate() {
            if let (Some(leaf), Ok(k)) = (leaf, u32::try_from(k)) {
                f(&k, leaf);
            }
        }
    }

    fn leaf_count(&self) -> usize {
        self.count
    }

    fn clear(&mut self) {
        self.leaves.clear();
        self.count = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use grapevine::core::state::{decode, encode};

    /// A delta of `size` bytes encodes to that size, decodes back, and
    /// the state keeps its count through sets and removals.
    #[test]
    fn deltas_encode_to_the_size_asked_and_apply() {
        let d = Delta {
            key: 7,
            leaf: Leaf {
                stamp_ns: wall_ns(),
                pad: Pad(40),
            },
        };
        let bytes = encode(&d);
        assert_eq!(decode::<Delta>(&bytes).unwrap(), d);
        let mut s = BenchState::measuring();
        s.apply(&d);
        assert_eq!((s.leaf_count(), s.applied, s.samples.len()), (1, 1, 1));
        s.set_leaf(&7, None);
        s.set_leaf(&100, None);
        assert_eq!(s.leaf_count(), 0);
        let s = BenchState::with_leaves(3, 5);
        let mut keys = Vec::new();
        s.for_each_leaf(&mut |k, _| keys.push(*k));
        assert_eq!(keys, [0, 1, 2]);
    }
}
