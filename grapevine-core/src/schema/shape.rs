//! The serde shape of a type: what its encoding is made of, without names.
//!
//! A probe deserializer asks the type's `Deserialize` implementation what
//! it reads, and writes it down: primitives by name (`u64`, `str`,
//! `bytes`, …), `option<T>`, `seq<T>`, `map<K,V>`, tuples and tuple
//! structs as `(A,B)`, structs as `{A,B}` (field types in order, names
//! left out), newtype structs as their content, and enums as
//! `enum<N:S>` with `N` the number of variants and `S` the shape of the
//! first variant's content (`unit` for none). The probe feeds zero values
//! (`0`, `false`, `""`, the first variant) so that nested types are
//! visited too. It stops, keeping what it wrote, at a type that accepts
//! any input (`any`), at a value its implementation refuses, past 16
//! levels of nesting or past 1024 bytes (written as `…`): the result is
//! deterministic whatever the type.

use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, EnumAccess, IntoDeserializer, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};

const MAX_DEPTH: usize = 16;
const MAX_LEN: usize = 1024;

/// The shape of `T` (see the module docs).
///
/// ```
/// use std::collections::BTreeMap;
/// use grapevine_core::schema::shape_of;
///
/// #[derive(serde::Deserialize)]
/// struct Level { price: u64, qty: Option<i64>, tag: String }
/// #[derive(serde::Deserialize)]
/// enum Side { Bid, Ask }
///
/// assert_eq!(shape_of::<u64>(), "u64");
/// assert_eq!(shape_of::<Level>(), "{u64,option<i64>,str}");
/// assert_eq!(shape_of::<(Side, u64)>(), "(enum<2:unit>,u64)");
/// assert_eq!(shape_of::<BTreeMap<String, Vec<u8>>>(), "map<str,seq<u8>>");
/// ```
#[must_use]
pub fn shape_of<T: DeserializeOwned>() -> String {
    let mut out = String::new();
    let _ = T::deserialize(Probe {
        out: &mut out,
        depth: 0,
    });
    out
}

/// The probe ran out of depth or length, or met a type it cannot follow.
#[derive(Debug)]
struct Stop;

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("shape probe stopped")
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Stop
    }
}

struct Probe<'a> {
    out: &'a mut String,
    depth: usize,
}

impl Probe<'_> {
    /// Checks the bounds and writes `token`.
    fn enter(&mut self, token: &str) -> Result<(), Stop> {
        if self.depth >= MAX_DEPTH || self.out.len() >= MAX_LEN {
            self.out.push('…');
            return Err(Stop);
        }
        self.out.push_str(token);
        Ok(())
    }

    fn child(&mut self) -> Probe<'_> {
        Probe {
            out: self.out,
            depth: self.depth + 1,
        }
    }

    fn seq<'de, V: Visitor<'de>>(
        mut self,
        open: &str,
        len: usize,
        close: char,
        v: V,
    ) -> Result<V::Value, Stop> {
        self.enter(open)?;
        let value = v.visit_seq(Elems {
            probe: self.child(),
            left: len,
            first: true,
        })?;
        self.out.push(close);
        Ok(value)
    }
}

macro_rules! primitives {
    ($($method:ident $name:literal $visit:ident($($value:expr)?);)*) => {
        $(
            fn $method<V: Visitor<'de>>(mut self, v: V) -> Result<V::Value, Stop> {
                self.enter($name)?;
                v.$visit($($value)?)
            }
        )*
    };
}

impl<'de> de::Deserializer<'de> for Probe<'_> {
    type Error = Stop;

    primitives! {
        deserialize_bool "bool" visit_bool(false);
        deserialize_i8 "i8" visit_i8(0);
        deserialize_i16 "i16" visit_i16(0);
        deserialize_i32 "i32" visit_i32(0);
        deserialize_i64 "i64" visit_i64(0);
        deserialize_i128 "i128" visit_i128(0);
        deserialize_u8 "u8" visit_u8(0);
        deserialize_u16 "u16" visit_u16(0);
        deserialize_u32 "u32" visit_u32(0);
        deserialize_u64 "u64" visit_u64(0);
        deserialize_u128 "u128" visit_u128(0);
        deserialize_f32 "f32" visit_f32(0.0);
        deserialize_f64 "f64" visit_f64(0.0);
        deserialize_char "char" visit_char('\0');
        deserialize_str "str" visit_str("");
        deserialize_string "str" visit_str("");
        deserialize_bytes "bytes" visit_bytes(&[]);
        deserialize_byte_buf "bytes" visit_bytes(&[]);
        deserialize_unit "unit" visit_unit();
    }

    fn deserialize_any<V: Visitor<'de>>(mut self, _v: V) -> Result<V::Value, Stop> {
        self.enter("any")?;
        Err(Stop)
    }

    fn deserialize_option<V: Visitor<'de>>(mut self, v: V) -> Result<V::Value, Stop> {
        self.enter("option<")?;
        let value = v.visit_some(self.child())?;
        self.out.push('>');
        Ok(value)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, Stop> {
        self.deserialize_unit(v)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        mut self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, Stop> {
        self.enter("")?;
        v.visit_newtype_struct(self.child())
    }

    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Stop> {
        self.seq("seq<", 1, '>', v)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, v: V) -> Result<V::Value, Stop> {
        self.seq("(", len, ')', v)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        len: usize,
        v: V,
    ) -> Result<V::Value, Stop> {
        self.seq("(", len, ')', v)
    }

    fn deserialize_map<V: Visitor<'de>>(mut self, v: V) -> Result<V::Value, Stop> {
        self.enter("map<")?;
        let value = v.visit_map(Entries {
            probe: self.child(),
            left: 1,
        })?;
        self.out.push('>');
        Ok(value)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Stop> {
        self.seq("{", fields.len(), '}', v)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        mut self,
        _name: &'static str,
        variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Stop> {
        self.enter(&format!("enum<{}", variants.len()))?;
        if variants.is_empty() {
            self.out.push('>');
            return Err(Stop);
        }
        self.out.push(':');
        let value = v.visit_enum(FirstVariant {
            probe: self.child(),
        })?;
        self.out.push('>');
        Ok(value)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Stop> {
        v.visit_u32(0)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Stop> {
        v.visit_unit()
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

/// `left` elements, separated by commas.
struct Elems<'a> {
    probe: Probe<'a>,
    left: usize,
    first: bool,
}

impl<'de> SeqAccess<'de> for Elems<'_> {
    type Error = Stop;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Stop> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        if !std::mem::take(&mut self.first) {
            self.probe.out.push(',');
        }
        seed.deserialize(self.probe.child()).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

/// One entry: key, a comma, value.
struct Entries<'a> {
    probe: Probe<'a>,
    left: usize,
}

impl<'de> MapAccess<'de> for Entries<'_> {
    type Error = Stop;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Stop> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(self.probe.child()).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Stop> {
        self.probe.out.push(',');
        seed.deserialize(self.probe.child())
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

/// Variant 0 of an enum, and its content.
struct FirstVariant<'a> {
    probe: Probe<'a>,
}

impl<'de, 'a> EnumAccess<'de> for FirstVariant<'a> {
    type Error = Stop;
    type Variant = Probe<'a>;

    fn variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<(S::Value, Probe<'a>), Stop> {
        let index: de::value::U32Deserializer<Stop> = 0u32.into_deserializer();
        Ok((seed.deserialize(index)?, self.probe))
    }
}

impl<'de> VariantAccess<'de> for Probe<'_> {
    type Error = Stop;

    fn unit_variant(mut self) -> Result<(), Stop> {
        self.enter("unit")
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Stop> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, v: V) -> Result<V::Value, Stop> {
        self.seq("(", len, ')', v)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Stop> {
        self.seq("{", fields.len(), '}', v)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Level {
        price: u64,
        qty: i64,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Renamed {
        cost: u64,
        amount: i64,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Wrapper(u32);

    #[derive(Deserialize)]
    #[allow(dead_code)]
    enum Delta {
        Set { level: Level, note: Option<String> },
        Clear,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Tree {
        children: Vec<Tree>,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Picky(std::num::NonZeroU64, u8);

    #[test]
    fn shapes_follow_types_not_names() {
        assert_eq!(shape_of::<Level>(), "{u64,i64}");
        assert_eq!(shape_of::<Level>(), shape_of::<Renamed>());
        assert_ne!(shape_of::<Level>(), shape_of::<(i64, u64)>());
        assert_eq!(shape_of::<Wrapper>(), "u32");
        assert_eq!(shape_of::<Delta>(), "enum<2:{{u64,i64},option<str>}>");
        assert_eq!(shape_of::<()>(), "unit");
        assert_eq!(
            shape_of::<(bool, char, f64, u128)>(),
            "(bool,char,f64,u128)"
        );
        assert_eq!(shape_of::<BTreeMap<String, Vec<u8>>>(), "map<str,seq<u8>>");
        assert_eq!(shape_of::<serde_bytes_like::Bytes>(), "bytes");
    }

    #[test]
    fn the_probe_stops_deterministically() {
        let tree = shape_of::<Tree>();
        assert!(tree.starts_with("{seq<{seq<"), "{tree}");
        assert!(tree.ends_with('…'), "{tree}");
        assert_eq!(tree, shape_of::<Tree>());
        // A value the type refuses (0 for NonZeroU64) ends the probe there.
        assert_eq!(shape_of::<Picky>(), "(u64");
    }

    mod serde_bytes_like {
        /// A type that reads bytes.
        pub(super) struct Bytes;

        impl<'de> serde::Deserialize<'de> for Bytes {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = Bytes;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str("bytes")
                    }
                    fn visit_bytes<E>(self, _: &[u8]) -> Result<Bytes, E> {
                        Ok(Bytes)
                    }
                }
                d.deserialize_bytes(V)
            }
        }
    }
}
