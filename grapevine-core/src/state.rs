//! Replicated states: the [`State`] trait, the zero-boilerplate keyed map,
//! the byte-level interfaces the protocol engines use, and the state
//! [`Digest`].
//!
//! The publisher and subscriber engines handle keys, deltas and leaves as
//! opaque bytes. They reach the application's state through two small
//! traits: [`LeafSource`] (publisher: "encode the leaf at this key") and
//! [`Replica`] (subscriber: "apply this delta", "install this leaf").
//! [`Typed`] implements both for any [`State`], encoding with serde and
//! postcard.
//!
//! # A keyed map, no trait to implement
//!
//! ```
//! use std::collections::BTreeMap;
//! use grapevine_core::state::{MapDelta, State};
//!
//! let mut prices: BTreeMap<String, u64> = BTreeMap::new();
//! prices.apply(&MapDelta::Upsert("ACME".into(), 101));
//! prices.apply(&MapDelta::Upsert("INIT".into(), 7));
//! prices.apply(&MapDelta::Remove("INIT".into()));
//! assert_eq!(prices.get("ACME"), Some(&101));
//! assert_eq!(<BTreeMap<String, u64> as State>::key_of(&MapDelta::Remove("X".into())), "X");
//! ```
//!
//! # A richer state
//!
//! Implement [`State`] when a delta is more than "set this leaf", for example
//! an order book whose deltas add to or take from a price level (see the
//! `order_book` example of the `grapevine` crate).

use std::collections::BTreeMap;
use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A replicated state made of keyed leaves.
///
/// A leaf is a small self-contained unit (a price level, a row); a delta
/// changes exactly one leaf, the one named by [`State::key_of`], and applying
/// the same deltas in the same order must give the same state on every
/// machine.
pub trait State {
    /// Names a leaf.
    type Key: Serialize + DeserializeOwned + Clone + Ord + fmt::Debug;
    /// The full value of one leaf, as sent in snapshots.
    type Leaf: Serialize + DeserializeOwned + Clone + PartialEq + fmt::Debug;
    /// One change to one leaf.
    type Delta: Serialize + DeserializeOwned + Clone + fmt::Debug;

    /// The leaf a delta changes.
    fn key_of(delta: &Self::Delta) -> Self::Key;
    /// Applies a delta, deterministically. An absent leaf is treated as the
    /// delta defines (for example, created).
    fn apply(&mut self, delta: &Self::Delta);
    /// The current value of a leaf, if present.
    fn leaf(&self, key: &Self::Key) -> Option<&Self::Leaf>;
    /// Replaces a leaf (from a snapshot), or removes it with `None`.
    fn set_leaf(&mut self, key: &Self::Key, leaf: Option<Self::Leaf>);
    /// Calls `f` for every present leaf.
    fn for_each_leaf(&self, f: &mut dyn FnMut(&Self::Key, &Self::Leaf));
    /// Number of present leaves.
    fn leaf_count(&self) -> usize;
    /// Removes every leaf.
    fn clear(&mut self);

    /// The name of this state's schema: what a publisher announces and a
    /// subscriber expects (PROTOCOL.md §4.8), fingerprinted by
    /// [`crate::schema::SchemaFingerprint::of`].
    ///
    /// The default, [`crate::schema::default_name`], is derived from the
    /// serde shapes of [`State::Key`], [`State::Leaf`] and [`State::Delta`]:
    /// types that encode differently get different names, while renaming
    /// a field or a type keeps the name. It looks no deeper than the first
    /// variant of an enum, nor than one element of a sequence, so two
    /// states that differ only beyond that share it: override it with a
    /// name of your own (a name and a version, such as
    /// `"acme.prices/2"`) to be sure, and change the name when the
    /// encoding changes.
    fn schema_name() -> String {
        crate::schema::default_name::<Self::Key, Self::Leaf, Self::Delta>()
    }
}

/// The delta of the keyed-map mode: set or remove one entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MapDelta<K, V> {
    /// Insert or replace the value at a key.
    Upsert(K, V),
    /// Remove the key.
    Remove(K),
}

impl<K, V> State for BTreeMap<K, V>
where
    K: Serialize + DeserializeOwned + Clone + Ord + fmt::Debug,
    V: Serialize + DeserializeOwned + Clone + PartialEq + fmt::Debug,
{
    type Key = K;
    type Leaf = V;
    type Delta = MapDelta<K, V>;

    fn key_of(delta: &MapDelta<K, V>) -> K {
        match delta {
            MapDelta::Upsert(k, _) | MapDelta::Remove(k) => k.clone(),
        }
    }

    fn apply(&mut self, delta: &MapDelta<K, V>) {
        match delta {
            MapDelta::Upsert(k, v) => {
                self.insert(k.clone(), v.clone());
            }
            MapDelta::Remove(k) => {
                self.remove(k);
            }
        }
    }

    fn leaf(&self, key: &K) -> Option<&V> {
        self.get(key)
    }

    fn set_leaf(&mut self, key: &K, leaf: Option<V>) {
        match leaf {
            Some(v) => {
                self.insert(key.clone(), v);
            }
            None => {
                self.remove(key);
            }
        }
    }

    fn for_each_leaf(&self, f: &mut dyn FnMut(&K, &V)) {
        for (k, v) in self {
            f(k, v);
        }
    }

    fn leaf_count(&self) -> usize {
        self.len()
    }

    fn clear(&mut self) {
        BTreeMap::clear(self);
    }

    /// `map<K,V>` with the serde shapes of `K` and `V`
    /// ([`crate::schema::shape_of`]), for example `map<str,u64>` for
    /// `BTreeMap<String, u64>`.
    fn schema_name() -> String {
        format!(
            "map<{},{}>",
            crate::schema::shape_of::<K>(),
            crate::schema::shape_of::<V>()
        )
    }
}

/// An order-independent fingerprint of a whole state.
///
/// The sum (mod 2^128) of the xxh3-128 hash of every leaf's encoded key and
/// value. Two states have equal digests exactly when they hold the same
/// leaves (up to a 2^-128 chance of collision), whatever order the leaves
/// were added in, so publisher and subscriber can compare states by printing
/// one number.
///
/// ```
/// use grapevine_core::state::Digest;
/// let mut a = Digest::default();
/// a.add(b"k1", b"v1");
/// a.add(b"k2", b"v2");
/// let mut b = Digest::default();
/// b.add(b"k2", b"v2");
/// b.add(b"k1", b"v1");
/// assert_eq!(a, b);
/// b.remove(b"k2", b"v2");
/// assert_ne!(a, b);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Digest(pub u128);

impl Digest {
    fn leaf_hash(key: &[u8], value: &[u8]) -> u128 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(&(key.len() as u64).to_be_bytes());
        h.update(key);
        h.update(value);
        h.digest128()
    }

    /// Adds a leaf.
    pub fn add(&mut self, key: &[u8], value: &[u8]) {
        self.0 = self.0.wrapping_add(Self::leaf_hash(key, value));
    }

    /// Removes a leaf previously added.
    pub fn remove(&mut self, key: &[u8], value: &[u8]) {
        self.0 = self.0.wrapping_sub(Self::leaf_hash(key, value));
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// Why the application could not take a delta or a leaf.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// The key bytes do not decode as the state's key type.
    #[error("key does not decode: {0}")]
    Key(String),
    /// The payload does not decode as the state's delta or leaf type.
    #[error("payload does not decode: {0}")]
    Payload(String),
    /// The delta decodes but names another leaf than the key it was sent
    /// with.
    #[error("delta names another leaf than the key it was sent with")]
    KeyMismatch,
}

/// The publisher's view of the application state: encodes a leaf on demand
/// for the snapshot cycle.
pub trait LeafSource {
    /// Appends the encoded value of the leaf at `key` to `out` and returns
    /// `true`, or returns `false` if the leaf is absent.
    fn encode_leaf(&self, key: &[u8], out: &mut Vec<u8>) -> bool;
}

/// The subscriber's view of the application replica.
pub trait Replica {
    /// Applies an encoded delta to the leaf at `key` (first removing the leaf
    /// if `absent_first`). Returns whether the leaf is present afterwards.
    ///
    /// # Errors
    ///
    /// [`ApplyError`] if the key or delta does not decode; the replica must
    /// then be unchanged.
    fn apply_delta(
        &mut self,
        key: &[u8],
        payload: &[u8],
        absent_first: bool,
    ) -> Result<bool, ApplyError>;

    /// Installs a leaf from a snapshot, or removes it (`None`). Removing a
    /// leaf whose key does not decode must succeed: such a leaf cannot be
    /// held.
    ///
    /// # Errors
    ///
    /// [`ApplyError`] if the key or value does not decode; the replica must
    /// then be unchanged.
    fn install_leaf(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), ApplyError>;

    /// Removes every leaf (publisher restarted).
    fn clear(&mut self);
}

/// Adapts a [`State`] to the byte-level [`LeafSource`] and [`Replica`]
/// interfaces, encoding keys, leaves and deltas with postcard.
///
/// ```
/// use std::collections::BTreeMap;
/// use grapevine_core::state::{MapDelta, Replica, Typed};
///
/// let mut replica = Typed::new(BTreeMap::<u32, String>::new());
/// let key = Typed::<BTreeMap<u32, String>>::encode_key(&7);
/// let delta = Typed::<BTreeMap<u32, String>>::encode_delta(&MapDelta::Upsert(7, "seven".into()));
/// assert_eq!(replica.apply_delta(&key, &delta, false), Ok(true));
/// assert_eq!(replica.state().get(&7).map(String::as_str), Some("seven"));
/// ```
///
/// Its [`Digest`] can be kept up to date as leaves change
/// ([`Typed::kept_digest`]): computed once over every leaf, then O(1).
#[derive(Clone, Debug, Default)]
pub struct Typed<S> {
    state: S,
    /// The digest, once [`Typed::kept_digest`] was first asked for: every
    /// change through `Typed` then moves it by the changed leaf's hash.
    kept: Option<Digest>,
    /// Scratch for the changed leaf's key and value, while one is kept.
    key_buf: Vec<u8>,
    leaf_buf: Vec<u8>,
}

impl<S: State> Typed<S> {
    /// Wraps a state.
    pub fn new(state: S) -> Self {
        Self {
            state,
            kept: None,
            key_buf: Vec::new(),
            leaf_buf: Vec::new(),
        }
    }

    /// The state.
    pub fn state(&self) -> &S {
        &self.state
    }

    /// The state, mutably. Changes made here are not replicated: publish
    /// deltas instead. A [kept digest](Typed::kept_digest) is dropped (the
    /// next one walks every leaf again): use [`Typed::apply`] and
    /// [`Typed::set_leaf`] to keep it.
    pub fn state_mut(&mut self) -> &mut S {
        self.kept = None;
        &mut self.state
    }

    /// Applies `delta` to the state, keeping a kept digest up to date.
    pub fn apply(&mut self, delta: &S::Delta) {
        let key = S::key_of(delta);
        self.unkeep(&key);
        self.state.apply(delta);
        self.keep(&key);
    }

    /// Sets or removes one leaf, keeping a kept digest up to date.
    pub fn set_leaf(&mut self, key: &S::Key, leaf: Option<S::Leaf>) {
        self.unkeep(key);
        self.state.set_leaf(key, leaf);
        self.keep(key);
    }

    /// The digest of the whole state, kept from this call on: the first
    /// call walks every leaf (O(leaves)); later ones cost nothing, and
    /// every change through `Typed` (a delta applied, a leaf installed,
    /// the state cleared) costs two leaf hashes while it is kept. Equal to
    /// [`Typed::digest`].
    ///
    /// ```
    /// use std::collections::BTreeMap;
    /// use grapevine_core::state::{MapDelta, Typed};
    ///
    /// let mut t = Typed::new(BTreeMap::from([(1u32, 10u32), (2, 20)]));
    /// let first = t.kept_digest(); // O(leaves), once
    /// t.apply(&MapDelta::Upsert(3, 30));
    /// assert_ne!(t.kept_digest(), first); // O(1)
    /// assert_eq!(t.kept_digest(), t.digest());
    /// ```
    pub fn kept_digest(&mut self) -> Digest {
        *self.kept.get_or_insert_with(|| digest_of(&self.state))
    }

    /// Takes the leaf of `key`, if held, out of a kept digest.
    fn unkeep(&mut self, key: &S::Key) {
        self.keep_with(key, Digest::remove);
    }

    /// Puts the leaf of `key`, if held, into a kept digest.
    fn keep(&mut self, key: &S::Key) {
        self.keep_with(key, Digest::add);
    }

    /// Hands the encoded key and leaf of `key`, if held, to `f` with the
    /// kept digest, if one is kept.
    fn keep_with(&mut self, key: &S::Key, f: fn(&mut Digest, &[u8], &[u8])) {
        if let Some(d) = self.kept.as_mut() {
            if let Some(leaf) = self.state.leaf(key) {
                self.key_buf.clear();
                encode_into(key, &mut self.key_buf);
                self.leaf_buf.clear();
                encode_into(leaf, &mut self.leaf_buf);
                f(d, &self.key_buf, &self.leaf_buf);
            }
        }
    }

    /// Unwraps the state.
    pub fn into_inner(self) -> S {
        self.state
    }

    /// Encodes a key.
    pub fn encode_key(key: &S::Key) -> Vec<u8> {
        encode(key)
    }

    /// Encodes a delta.
    pub fn encode_delta(delta: &S::Delta) -> Vec<u8> {
        encode(delta)
    }

    /// The digest of the whole state (O(leaves)).
    pub fn digest(&self) -> Digest {
        digest_of(&self.state)
    }
}

/// Encodes a value with postcard. Serialising into a `Vec` cannot fail for
/// the types `State` requires, except for types whose `Serialize` impl
/// itself errors; those encode as empty.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).unwrap_or_default()
}

/// Appends the postcard encoding of `value` to `out`.
pub fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) {
    let buf = std::mem::take(out);
    *out = postcard::to_extend(value, buf).unwrap_or_default();
}

/// Decodes a postcard value that must use all of `bytes`.
///
/// # Errors
///
/// The postcard error as text, or "trailing bytes".
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let (v, rest) = postcard::take_from_bytes(bytes).map_err(|e| e.to_string())?;
    if rest.is_empty() {
        Ok(v)
    } else {
        Err(format!("{} trailing bytes", rest.len()))
    }
}

/// The [`Digest`] of a state (O(leaves)).
pub fn digest_of<S: State>(state: &S) -> Digest {
    let mut d = Digest::default();
    let mut k = Vec::new();
    let mut v = Vec::new();
    state.for_each_leaf(&mut |key, leaf| {
        k.clear();
        v.clear();
        encode_into(key, &mut k);
        encode_into(leaf, &mut v);
        d.add(&k, &v);
    });
    d
}

impl<S: State> LeafSource for Typed<S> {
    fn encode_leaf(&self, key: &[u8], out: &mut Vec<u8>) -> bool {
        let Ok(key) = decode::<S::Key>(key) else {
            return false;
        };
        match self.state.leaf(&key) {
            Some(leaf) => {
                encode_into(leaf, out);
                true
            }
            None => false,
        }
    }
}

impl<S: State> Replica for Typed<S> {
    fn apply_delta(
        &mut self,
        key: &[u8],
        payload: &[u8],
        absent_first: bool,
    ) -> Result<bool, ApplyError> {
        let k: S::Key = decode(key).map_err(ApplyError::Key)?;
        let delta: S::Delta = decode(payload).map_err(ApplyError::Payload)?;
        if S::key_of(&delta) != k {
            return Err(ApplyError::KeyMismatch);
        }
        self.unkeep(&k);
        if absent_first {
            self.state.set_leaf(&k, None);
        }
        self.state.apply(&delta);
        self.keep(&k);
        Ok(self.state.leaf(&k).is_some())
    }

    fn install_leaf(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), ApplyError> {
        let k: S::Key = match decode(key) {
            Ok(k) => k,
            // A key the state cannot represent is never held: its absence is
            // already true.
            Err(_) if value.is_none() => return Ok(()),
            Err(e) => return Err(ApplyError::Key(e)),
        };
        let leaf = match value {
            Some(v) => Some(decode::<S::Leaf>(v).map_err(ApplyError::Payload)?),
            None => None,
        };
        self.set_leaf(&k, leaf);
        Ok(())
    }

    fn clear(&mut self) {
        self.state.clear();
        if let Some(d) = self.kept.as_mut() {
            *d = Digest::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    type Map = BTreeMap<u32, String>;

    /// Keys and deltas encoded by `Typed` are postcard's encoding, and a
    /// replica applies them (the doctest above, run as a unit test too).
    #[test]
    fn typed_encodes_with_postcard_and_applies() {
        let key = Typed::<Map>::encode_key(&7);
        assert_eq!(key, postcard::to_allocvec(&7u32).unwrap());
        let up = MapDelta::Upsert(7, "seven".to_string());
        let delta = Typed::<Map>::encode_delta(&up);
        assert_eq!(delta, postcard::to_allocvec(&up).unwrap());
        assert_eq!(decode::<MapDelta<u32, String>>(&delta), Ok(up));
        let mut replica = Typed::new(Map::new());
        assert_eq!(replica.apply_delta(&key, &delta, false), Ok(true));
        assert_eq!(replica.state().get(&7).map(String::as_str), Some("seven"));
        let gone = Typed::<Map>::encode_delta(&MapDelta::Remove(7));
        assert_eq!(replica.apply_delta(&key, &gone, false), Ok(false));
        assert!(replica.state().is_empty());
    }

    /// One change to a kept digest's state, through each way `Typed`
    /// changes it.
    #[derive(Clone, Debug)]
    enum Change {
        Delta(MapDelta<u8, u8>, bool),
        Install(u8, Option<u8>),
        Apply(MapDelta<u8, u8>),
        Set(u8, Option<u8>),
        Clear,
        /// A change the digest cannot follow (it is dropped, then computed
        /// again).
        Behind(u8, u8),
    }

    fn change() -> impl proptest::strategy::Strategy<Value = Change> {
        use proptest::prelude::*;
        let delta = prop_oneof![
            (0u8..8, any::<u8>()).prop_map(|(k, v)| MapDelta::Upsert(k, v)),
            (0u8..8).prop_map(MapDelta::Remove),
        ];
        prop_oneof![
            4 => (delta.clone(), any::<bool>()).prop_map(|(d, a)| Change::Delta(d, a)),
            2 => (0u8..8, proptest::option::of(any::<u8>())).prop_map(|(k, v)| Change::Install(k, v)),
            2 => delta.prop_map(Change::Apply),
            2 => (0u8..8, proptest::option::of(any::<u8>())).prop_map(|(k, v)| Change::Set(k, v)),
            1 => Just(Change::Clear),
            1 => (0u8..8, any::<u8>()).prop_map(|(k, v)| Change::Behind(k, v)),
        ]
    }

    proptest::proptest! {
        /// A kept digest equals the digest computed over every leaf after
        /// any sequence of changes, whenever it was first asked for.
        #[test]
        fn a_kept_digest_follows_every_change(
            changes in proptest::collection::vec(change(), 0..40),
            first_at in 0usize..40,
        ) {
            type M = BTreeMap<u8, u8>;
            let mut t = Typed::new(M::new());
            for (i, c) in changes.into_iter().enumerate() {
                if i == first_at {
                    t.kept_digest();
                }
                match c {
                    Change::Delta(d, absent_first) => {
                        let key = Typed::<M>::encode_key(&M::key_of(&d));
                        let payload = Typed::<M>::encode_delta(&d);
                        t.apply_delta(&key, &payload, absent_first).unwrap();
                    }
                    Change::Install(k, v) => {
                        let v = v.map(|v| encode(&v));
                        t.install_leaf(&encode(&k), v.as_deref()).unwrap();
                    }
                    Change::Apply(d) => t.apply(&d),
                    Change::Set(k, v) => t.set_leaf(&k, v),
                    Change::Clear => Replica::clear(&mut t),
                    Change::Behind(k, v) => {
                        t.state_mut().insert(k, v);
                    }
                }
                if let Some(kept) = t.kept {
                    proptest::prop_assert_eq!(kept, t.digest());
                }
            }
            proptest::prop_assert_eq!(t.kept_digest(), t.digest());
        }
    }

    /// The digest of PROTOCOL.md §9's `one-leaf` vector: a leaf's hash, in
    /// the text form; removing the leaf returns to the empty digest.
    #[test]
    fn the_digest_of_the_one_leaf_vector() {
        let mut d = Digest::default();
        assert_eq!(d.to_string(), "0".repeat(32));
        d.add(b"k1", b"v1");
        assert_eq!(d.to_string(), "f2d6a7b7626a68be023c536f191d2fa6");
        d.remove(b"k1", b"v1");
        assert_eq!(d, Digest::default());
    }

    /// A `BTreeMap` as a state: its leaves, their count, each visited once,
    /// cleared; and its digest is its leaves'.
    #[test]
    fn a_btreemap_is_a_state() {
        let mut m = Map::new();
        m.apply(&MapDelta::Upsert(1, "one".into()));
        m.apply(&MapDelta::Upsert(2, "two".into()));
        m.set_leaf(&3, Some("three".into()));
        m.set_leaf(&2, None);
        assert_eq!(State::leaf_count(&m), 2);
        assert_eq!(m.leaf(&3).map(String::as_str), Some("three"));
        assert_eq!(Map::key_of(&MapDelta::Remove(9)), 9);
        let mut seen = Vec::new();
        m.for_each_leaf(&mut |k, v| seen.push((*k, v.clone())));
        assert_eq!(seen, vec![(1, "one".into()), (3, "three".into())]);
        let mut want = Digest::default();
        for (k, v) in &seen {
            want.add(&encode(k), &encode(v));
        }
        assert_eq!(digest_of(&m), want);
        assert_ne!(want, Digest::default());
        State::clear(&mut m);
        assert_eq!(State::leaf_count(&m), 0);
        assert!(m.is_empty());
    }
}
