//! Schema fingerprints: what a stream carries (PROTOCOL.md §4.8).
//!
//! A publisher announces the schema of its state in a StreamInfo message:
//! a human-readable **schema name** and a 64-bit **fingerprint** of it. A
//! subscriber that expects another fingerprint reports a clear error
//! instead of decoding the stream as its own type.
//!
//! The fingerprint is computed from an explicit string, never from
//! `std::any::type_name` (whose output the compiler may change between
//! versions):
//!
//! ```text
//! fingerprint(name) = first 8 bytes, as a big-endian u64, of
//!                     SHA-256("grapevine schema v1" ‖ 0x00 ‖ name as UTF-8)
//! ```
//!
//! ```
//! use grapevine_core::schema::{Schema, SchemaFingerprint};
//!
//! let s = Schema::named("grapevine.demo.order_book/1");
//! assert_eq!(s.fingerprint(), SchemaFingerprint::of("grapevine.demo.order_book/1"));
//! assert_eq!(s.fingerprint().to_string(), "66bd64a5d7082228");
//! ```
//!
//! # Default names
//!
//! [`crate::state::State::schema_name`] gives each state type a name. Its
//! default, [`default_name`], is derived from the serde shape of the
//! state's key, leaf and delta types ([`shape_of`]): field and variant
//! names do not count (postcard does not encode them), types and their
//! order do. Renaming a field keeps the fingerprint; changing a field's
//! type, adding one or reordering them changes it.

use std::fmt;

use aws_lc_rs::digest;
use serde::de::DeserializeOwned;

mod shape;

pub use shape::shape_of;

/// The domain-separation prefix hashed before a schema name.
pub const FINGERPRINT_DOMAIN: &[u8] = b"grapevine schema v1\0";

/// Longest schema name a StreamInfo message carries (its length travels in
/// one byte). A longer name is still fingerprinted whole; only the name
/// sent is cut ([`Schema::wire_name`]).
pub const MAX_WIRE_NAME: usize = 255;

/// A 64-bit fingerprint of a schema name; printed as 16 lowercase hex
/// digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SchemaFingerprint(pub u64);

impl SchemaFingerprint {
    /// The fingerprint of `name` (see the [module docs](self)).
    #[must_use]
    pub fn of(name: &str) -> Self {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(FINGERPRINT_DOMAIN);
        ctx.update(name.as_bytes());
        let d = ctx.finish();
        let mut first = [0u8; 8];
        if let Some(head) = d.as_ref().get(..8) {
            first.copy_from_slice(head);
        }
        SchemaFingerprint(u64::from_be_bytes(first))
    }
}

impl fmt::Display for SchemaFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A schema: its name and fingerprint.
///
/// [`Schema::named`] derives the fingerprint from the name; a schema heard
/// on the wire ([`Schema::from_parts`]) may carry any pair, since receivers
/// compare fingerprints and show names.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Schema {
    name: String,
    fingerprint: SchemaFingerprint,
}

impl Schema {
    /// The schema called `name`, with its derived fingerprint.
    #[must_use]
    pub fn named(name: impl Into<String>) -> Self {
        let name = name.into();
        let fingerprint = SchemaFingerprint::of(&name);
        Self { name, fingerprint }
    }

    /// A schema from a fingerprint and a name as heard (the name need not
    /// be the one the fingerprint was derived from).
    #[must_use]
    pub fn from_parts(fingerprint: SchemaFingerprint, name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            fingerprint,
        }
    }

    /// The schema of state type `S`: [`crate::state::State::schema_name`].
    #[must_use]
    pub fn of<S: crate::state::State>() -> Self {
        Self::named(S::schema_name())
    }

    /// The name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The fingerprint.
    #[must_use]
    pub fn fingerprint(&self) -> SchemaFingerprint {
        self.fingerprint
    }

    /// The name as sent: at most `max` bytes (and at most
    /// [`MAX_WIRE_NAME`]), cut at a character boundary.
    #[must_use]
    pub fn wire_name(&self, max: usize) -> &str {
        truncate(&self.name, max.min(MAX_WIRE_NAME))
    }
}

impl fmt::Display for Schema {
    /// `name (fingerprint)`, or `(fingerprint)` for an empty name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.name.is_empty() {
            write!(f, "({})", self.fingerprint)
        } else {
            write!(f, "{} ({})", self.name, self.fingerprint)
        }
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends at a
/// character boundary.
fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

/// The default schema name of a state whose keys, leaves and deltas are
/// `K`, `L` and `D`: `state(key=…,leaf=…,delta=…)` with each type's
/// [`shape_of`].
///
/// ```
/// use grapevine_core::schema::default_name;
/// assert_eq!(
///     default_name::<(u8, u64), String, Vec<i32>>(),
///     "state(key=(u8,u64),leaf=str,delta=seq<i32>)"
/// );
/// ```
#[must_use]
pub fn default_name<K: DeserializeOwned, L: DeserializeOwned, D: DeserializeOwned>() -> String {
    format!(
        "state(key={},leaf={},delta={})",
        shape_of::<K>(),
        shape_of::<L>(),
        shape_of::<D>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_sha256_prefixes_of_the_domain_and_name() {
        // Independent check: SHA-256("grapevine schema v1\0") computed by
        // hand over the same bytes.
        let d = digest::digest(&digest::SHA256, b"grapevine schema v1\0abc");
        let mut want = [0u8; 8];
        want.copy_from_slice(&d.as_ref()[..8]);
        assert_eq!(SchemaFingerprint::of("abc").0, u64::from_be_bytes(want));
        assert_ne!(SchemaFingerprint::of("abc"), SchemaFingerprint::of("abd"));
        assert_ne!(SchemaFingerprint::of(""), SchemaFingerprint::of("\0"));
        assert_eq!(
            SchemaFingerprint(0x0123_4567_89ab_cdef).to_string(),
            "0123456789abcdef"
        );
    }

    #[test]
    fn wire_names_are_cut_at_character_boundaries() {
        let s = Schema::named("aé".repeat(100));
        assert_eq!(s.name().len(), 300);
        assert_eq!(s.wire_name(1000).len(), 255);
        assert_eq!(s.wire_name(2), "a");
        assert_eq!(s.wire_name(3), "aé");
        assert_eq!(s.wire_name(0), "");
        assert_eq!(s.fingerprint(), SchemaFingerprint::of(&"aé".repeat(100)));
        assert_eq!(
            Schema::from_parts(SchemaFingerprint(1), "x").to_string(),
            "x (0000000000000001)"
        );
        assert_eq!(
            Schema::from_parts(SchemaFingerprint(1), "").to_string(),
            "(0000000000000001)"
        );
    }
}
