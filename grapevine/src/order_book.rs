//! An order book: a ready-made [`State`] richer than a keyed map, used by the
//! examples, the CLI demo and the tests.
//!
//! An [`OrderBook`] holds two sides of price levels, each a quantity at a
//! price (prices are integer ticks). A leaf is one level, named by its
//! [`Level`] `(side, price)`; its value is the quantity.
//!
//! A [`BookDelta`] *adds* `change` to a level's quantity: it creates the level
//! if it is absent and removes it when the quantity reaches zero or below.
//! Unlike a keyed map's upsert, applying the same delta twice is not the same
//! as applying it once, so a replica that loses, duplicates or reorders deltas
//! visibly diverges: a good test of the protocol.
//!
//! # Applying deltas
//!
//! ```
//! use grapevine::order_book::{BookDelta, OrderBook, Side};
//! use grapevine::State;
//!
//! let mut book = OrderBook::new();
//! book.apply(&BookDelta::new(Side::Bid, 99, 10));
//! book.apply(&BookDelta::new(Side::Ask, 101, 5));
//! book.apply(&BookDelta::new(Side::Bid, 99, -4));
//! assert_eq!(book.best_bid(), Some((99, 6)));
//! assert_eq!(book.top_of_book().spread(), Some(2));
//!
//! // Taking a level to zero (or below) removes it.
//! book.apply(&BookDelta::new(Side::Ask, 101, -5));
//! assert_eq!(book.best_ask(), None);
//! assert_eq!(book.leaf_count(), 1);
//! ```
//!
//! # Generating books and deltas
//!
//! [`OrderBook::generate`] builds a deterministic book of any size and
//! [`BookDeltaGen`] a deterministic, realistic stream of deltas for it: mostly
//! quantity changes near the top of the book, some new levels, some
//! removals. Both are seeded; the same seed gives the same output on every
//! platform and version of this crate's dependencies.
//!
//! ```
//! use grapevine::order_book::{BookDeltaGen, OrderBook};
//! use grapevine::State;
//!
//! let mut book = OrderBook::generate(1_000, 42);
//! assert_eq!(book.leaf_count(), 1_000);
//! let mut deltas = BookDeltaGen::new(&book, 7);
//! for delta in deltas.by_ref().take(10_000) {
//!     book.apply(&delta);
//! }
//! assert_eq!(&book, deltas.book());
//! assert!(book.best_bid().unwrap().0 < book.best_ask().unwrap().0);
//! ```

use std::collections::BTreeMap;
use std::fmt;

use grapevine_core::state::State;
use serde::{Deserialize, Serialize};

/// The side of a price level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Side {
    /// Buy orders; the best bid is the highest price.
    Bid,
    /// Sell orders; the best ask is the lowest price.
    Ask,
}

impl Side {
    /// The other side.
    #[must_use]
    pub fn opposite(self) -> Side {
        match self {
            Side::Bid => Side::Ask,
            Side::Ask => Side::Bid,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Bid => "bid",
            Side::Ask => "ask",
        })
    }
}

/// Names one price level: the leaf key of an [`OrderBook`].
pub type Level = (Side, u64);

/// One change to one price level: adds `change` to its quantity.
///
/// A level that does not exist is created (with a positive `change`); a level
/// whose quantity reaches zero or below is removed. Quantities saturate at
/// `u64::MAX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BookDelta {
    /// The side of the level.
    pub side: Side,
    /// The level's price, in ticks.
    pub price: u64,
    /// Quantity added (negative: taken away).
    pub change: i64,
}

impl BookDelta {
    /// A delta adding `change` to the level at `price` on `side`.
    #[must_use]
    pub fn new(side: Side, price: u64, change: i64) -> Self {
        Self {
            side,
            price,
            change,
        }
    }

    /// The level this delta changes.
    #[must_use]
    pub fn level(&self) -> Level {
        (self.side, self.price)
    }
}

/// The best bid and best ask, each as `(price, quantity)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TopOfBook {
    /// The highest bid, if any.
    pub bid: Option<(u64, u64)>,
    /// The lowest ask, if any.
    pub ask: Option<(u64, u64)>,
}

impl TopOfBook {
    /// Best ask minus best bid, in ticks, when both sides have levels
    /// (negative if the book is crossed).
    #[must_use]
    pub fn spread(&self) -> Option<i128> {
        match (self.bid, self.ask) {
            (Some((bid, _)), Some((ask, _))) => Some(i128::from(ask) - i128::from(bid)),
            _ => None,
        }
    }
}

impl fmt::Display for TopOfBook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = |f: &mut fmt::Formatter<'_>, level: Option<(u64, u64)>| match level {
            Some((price, qty)) => write!(f, "{qty}@{price}"),
            None => f.write_str("-"),
        };
        f.write_str("bid ")?;
        side(f, self.bid)?;
        f.write_str(" | ask ")?;
        side(f, self.ask)
    }
}

/// A price-level order book: quantity per price on each side.
///
/// Every held level has a positive quantity. See the [module docs](self).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderBook {
    bids: BTreeMap<u64, u64>,
    asks: BTreeMap<u64, u64>,
}

impl OrderBook {
    /// The book's schema name, announced by its publishers and expected by
    /// its subscribers (PROTOCOL.md §4.8 and Appendix A): the encoding of
    /// Appendix A, version 1.
    ///
    /// ```
    /// use grapevine::core::schema::Schema;
    /// use grapevine::order_book::OrderBook;
    /// assert_eq!(Schema::of::<OrderBook>().fingerprint().to_string(), "66bd64a5d7082228");
    /// ```
    pub const SCHEMA: &'static str = "grapevine.demo.order_book/1";

    /// An empty book.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The bid levels, price to quantity.
    #[must_use]
    pub fn bids(&self) -> &BTreeMap<u64, u64> {
        &self.bids
    }

    /// The ask levels, price to quantity.
    #[must_use]
    pub fn asks(&self) -> &BTreeMap<u64, u64> {
        &self.asks
    }

    fn side(&self, side: Side) -> &BTreeMap<u64, u64> {
        match side {
            Side::Bid => &self.bids,
            Side::Ask => &self.asks,
        }
    }

    fn side_mut(&mut self, side: Side) -> &mut BTreeMap<u64, u64> {
        match side {
            Side::Bid => &mut self.bids,
            Side::Ask => &mut self.asks,
        }
    }

    /// The quantity at a level, if the level exists.
    #[must_use]
    pub fn quantity(&self, side: Side, price: u64) -> Option<u64> {
        self.side(side).get(&price).copied()
    }

    /// The highest bid as `(price, quantity)`.
    #[must_use]
    pub fn best_bid(&self) -> Option<(u64, u64)> {
        self.bids.last_key_value().map(|(p, q)| (*p, *q))
    }

    /// The lowest ask as `(price, quantity)`.
    #[must_use]
    pub fn best_ask(&self) -> Option<(u64, u64)> {
        self.asks.first_key_value().map(|(p, q)| (*p, *q))
    }

    /// The best bid and best ask.
    #[must_use]
    pub fn top_of_book(&self) -> TopOfBook {
        TopOfBook {
            bid: self.best_bid(),
            ask: self.best_ask(),
        }
    }

    /// Every level with its quantity: bids from the best (highest) down, then
    /// asks from the best (lowest) up.
    pub fn levels(&self) -> impl Iterator<Item = (Level, u64)> + '_ {
        let bids = self.bids.iter().rev().map(|(p, q)| ((Side::Bid, *p), *q));
        let asks = self.asks.iter().map(|(p, q)| ((Side::Ask, *p), *q));
        bids.chain(asks)
    }

    /// Number of levels on both sides.
    #[must_use]
    pub fn len(&self) -> usize {
        self.bids.len() + self.asks.len()
    }

    /// Whether the book has no level.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.bids.is_empty() && self.asks.is_empty()
    }

    /// A deterministic book of `levels` levels (half bids, half asks, one more
    /// bid when odd) around a mid price of 100,000 ticks, with gaps of one to
    /// three ticks between levels and quantities of 1 to 1,000. The same
    /// `seed` always gives the same book.
    ///
    /// ```
    /// use grapevine::order_book::OrderBook;
    /// let book = OrderBook::generate(5, 1);
    /// assert_eq!((book.bids().len(), book.asks().len()), (3, 2));
    /// assert_eq!(book, OrderBook::generate(5, 1));
    /// assert_ne!(book, OrderBook::generate(5, 2));
    /// ```
    #[must_use]
    pub fn generate(levels: usize, seed: u64) -> OrderBook {
        let mut rng = SplitMix64::new(seed);
        let mut book = OrderBook::new();
        let asks = levels / 2;
        let bids = levels - asks;
        let mut price = MID;
        for _ in 0..bids {
            price = price.saturating_sub(1 + rng.below(3));
            book.bids.insert(price, 1 + rng.below(1_000));
        }
        let mut price = MID;
        for _ in 0..asks {
            price = price.saturating_add(1 + rng.below(3));
            book.asks.insert(price, 1 + rng.below(1_000));
        }
        book
    }
}

/// A level's quantity after adding `change` to `old` (0 when absent):
/// `None` when it reaches zero or below (the level is removed); saturating
/// at `u64::MAX`.
fn quantity_after(old: u64, change: i64) -> Option<u64> {
    let new = i128::from(old) + i128::from(change);
    (new > 0).then(|| u64::try_from(new).unwrap_or(u64::MAX))
}

/// Mid price of generated books, in ticks.
const MID: u64 = 10_000_000;

impl State for OrderBook {
    type Key = Level;
    type Leaf = u64;
    type Delta = BookDelta;

    fn key_of(delta: &BookDelta) -> Level {
        delta.level()
    }

    fn apply(&mut self, delta: &BookDelta) {
        let levels = self.side_mut(delta.side);
        let old = levels.get(&delta.price).copied().unwrap_or(0);
        match quantity_after(old, delta.change) {
            Some(q) => levels.insert(delta.price, q),
            None => levels.remove(&delta.price),
        };
    }

    fn leaf(&self, key: &Level) -> Option<&u64> {
        self.side(key.0).get(&key.1)
    }

    /// Installs a level; a quantity of 0 removes it, keeping every held level
    /// positive.
    fn set_leaf(&mut self, key: &Level, leaf: Option<u64>) {
        let levels = self.side_mut(key.0);
        match leaf {
            Some(qty) if qty > 0 => {
                levels.insert(key.1, qty);
            }
            _ => {
                levels.remove(&key.1);
            }
        }
    }

    fn for_each_leaf(&self, f: &mut dyn FnMut(&Level, &u64)) {
        for (price, qty) in &self.bids {
            f(&(Side::Bid, *price), qty);
        }
        for (price, qty) in &self.asks {
            f(&(Side::Ask, *price), qty);
        }
    }

    fn leaf_count(&self) -> usize {
        self.len()
    }

    fn clear(&mut self) {
        self.bids.clear();
        self.asks.clear();
    }

    /// [`OrderBook::SCHEMA`].
    fn schema_name() -> String {
        Self::SCHEMA.to_owned()
    }
}

/// A deterministic stream of realistic [`BookDelta`]s for a book.
///
/// The generator keeps its own copy of the book and applies every delta it
/// yields to it, so the deltas stay meaningful as long as the caller applies
/// all of them, in order, to a book equal to the one it started from. Of the
/// deltas, about:
///
/// * 80 % change the quantity of an existing level (never to zero),
/// * 10 % create a new level,
/// * 10 % remove a level (`change` = minus its quantity),
///
/// with levels chosen near the top of the book far more often than deep in
/// it. The book never crosses (every bid stays below every ask) and a side
/// is never emptied by the generator. The iterator never ends.
///
/// ```
/// use grapevine::order_book::{BookDeltaGen, OrderBook};
///
/// let book = OrderBook::generate(100, 1);
/// let a: Vec<_> = BookDeltaGen::new(&book, 9).take(50).collect();
/// let b: Vec<_> = BookDeltaGen::new(&book, 9).take(50).collect();
/// assert_eq!(a, b);
/// ```
#[derive(Clone, Debug)]
pub struct BookDeltaGen {
    book: OrderBook,
    rng: SplitMix64,
}

impl BookDeltaGen {
    /// A generator for deltas to `book`, seeded with `seed`.
    #[must_use]
    pub fn new(book: &OrderBook, seed: u64) -> Self {
        Self {
            book: book.clone(),
            rng: SplitMix64::new(seed),
        }
    }

    /// The book as it is after every delta yielded so far.
    #[must_use]
    pub fn book(&self) -> &OrderBook {
        &self.book
    }

    /// The next delta (also applied to [`BookDeltaGen::book`]).
    pub fn next_delta(&mut self) -> BookDelta {
        let delta = self.pick();
        self.book.apply(&delta);
        delta
    }

    /// How many ticks from the top of the book: small values far more often.
    fn depth(&mut self) -> u64 {
        let a = self.rng.below(16);
        let b = self.rng.below(16);
        a * b / 4
    }

    fn pick(&mut self) -> BookDelta {
        let side = if self.rng.below(2) == 0 {
            Side::Bid
        } else {
            Side::Ask
        };
        let count = self.book.side(side).len();
        let roll = self.rng.below(100);
        if count < 2 || (80..90).contains(&roll) {
            return self.new_level(side);
        }
        let Some((price, qty)) = self.near_top(side) else {
            return self.new_level(side);
        };
        if roll >= 90 {
            return BookDelta::new(side, price, -i64::try_from(qty).unwrap_or(i64::MAX));
        }
        // Change by up to half the quantity (at least 1), never to zero.
        let max = (qty / 2).max(1);
        let size = i64::try_from(1 + self.rng.below(max)).unwrap_or(i64::MAX);
        let shrink = self.rng.below(2) == 0 && u64::try_from(size).is_ok_and(|s| s < qty);
        BookDelta::new(side, price, if shrink { -size } else { size })
    }

    /// An existing level near the top of `side`.
    fn near_top(&mut self, side: Side) -> Option<(u64, u64)> {
        let depth = self.depth();
        let levels = self.book.side(side);
        match side {
            Side::Bid => {
                let best = *levels.last_key_value()?.0;
                let target = best.saturating_sub(depth);
                levels
                    .range(..=target)
                    .next_back()
                    .or_else(|| levels.first_key_value())
            }
            Side::Ask => {
                let best = *levels.first_key_value()?.0;
                let target = best.saturating_add(depth);
                levels
                    .range(target..)
                    .next()
                    .or_else(|| levels.last_key_value())
            }
        }
        .map(|(p, q)| (*p, *q))
    }

    /// A delta creating a level on `side` that does not cross the book, at
    /// the first free price from a target near the top going deeper (or
    /// adding to a level, in the rare case no free price is found nearby).
    fn new_level(&mut self, side: Side) -> BookDelta {
        let qty = i64::try_from(1 + self.rng.below(1_000)).unwrap_or(1);
        let depth = self.depth();
        let bid = self.book.best_bid().map(|l| l.0);
        let ask = self.book.best_ask().map(|l| l.0);
        let price = match side {
            Side::Bid => {
                // One tick better than the best bid, or deeper, below the ask.
                let top = match (bid, ask) {
                    (Some(b), Some(a)) => (b + 1).min(a.saturating_sub(1)),
                    (Some(b), None) => b + 1,
                    (None, Some(a)) => a.saturating_sub(1),
                    (None, None) => MID,
                };
                top.saturating_sub(depth)
            }
            Side::Ask => {
                let top = match (bid, ask) {
                    (Some(b), Some(a)) => a.saturating_sub(1).max(b + 1),
                    (None, Some(a)) => a.saturating_sub(1),
                    (Some(b), None) => b + 1,
                    (None, None) => MID + 1,
                };
                top.saturating_add(depth)
            }
        };
        let levels = self.book.side(side);
        let mut free = price;
        for _ in 0..64 {
            if !levels.contains_key(&free) {
                return BookDelta::new(side, free, qty);
            }
            free = match side {
                Side::Bid => free.saturating_sub(1),
                Side::Ask => free.saturating_add(1),
            };
        }
        BookDelta::new(side, price, qty)
    }
}

impl Iterator for BookDeltaGen {
    type Item = BookDelta;

    fn next(&mut self) -> Option<BookDelta> {
        Some(self.next_delta())
    }
}

/// One price level of a [`PaddedBook`]: its quantity and filler bytes that
/// make the leaf as large as asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaddedLevel {
    /// The level's quantity (positive).
    pub quantity: u64,
    /// Filler, a deterministic function of the level, quantity and size.
    pub pad: Vec<u8>,
}

/// A delta of a [`PaddedBook`]: a [`BookDelta`] plus the size of the
/// filler the level gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaddedDelta {
    /// The change to the level's quantity.
    pub delta: BookDelta,
    /// Bytes of filler the level carries afterwards.
    pub value_size: u32,
}

/// An order book whose levels carry filler bytes, for leaves larger than a
/// datagram (the CLI's `--value-size`): the same quantities and deltas as
/// an [`OrderBook`], each level padded to a chosen size.
///
/// ```
/// use grapevine::order_book::{PaddedBook, PaddedDeltaGen};
/// use grapevine::State;
///
/// let mut book = PaddedBook::generate(10, 1, 65_536);
/// let mut deltas = PaddedDeltaGen::new(&book, 3, 65_536);
/// for delta in deltas.by_ref().take(100) {
///     book.apply(&delta);
/// }
/// let mut sizes = Vec::new();
/// book.for_each_leaf(&mut |_, level| sizes.push(level.pad.len()));
/// assert!(sizes.iter().all(|&n| n == 65_536));
/// assert_eq!(book.leaf_count(), deltas.book().len());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PaddedBook {
    levels: BTreeMap<Level, PaddedLevel>,
}

/// The filler of a level: `size` bytes from the level and quantity.
fn filler(level: Level, quantity: u64, size: u32) -> Vec<u8> {
    let mut rng = SplitMix64::new(level.1 ^ quantity.rotate_left(17) ^ (level.0 as u64));
    let mut out = Vec::with_capacity(size as usize);
    while out.len() < size as usize {
        out.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    out.truncate(size as usize);
    out
}

impl PaddedBook {
    /// [`OrderBook::generate`]'s book, each level padded to `value_size`
    /// bytes.
    #[must_use]
    pub fn generate(levels: usize, seed: u64, value_size: u32) -> PaddedBook {
        let book = OrderBook::generate(levels, seed);
        let levels = book
            .levels()
            .map(|(level, quantity)| {
                let pad = filler(level, quantity, value_size);
                (level, PaddedLevel { quantity, pad })
            })
            .collect();
        PaddedBook { levels }
    }

    /// The quantities alone, as an [`OrderBook`].
    #[must_use]
    pub fn to_book(&self) -> OrderBook {
        let mut book = OrderBook::new();
        for (level, l) in &self.levels {
            book.set_leaf(level, Some(l.quantity));
        }
        book
    }
}

impl State for PaddedBook {
    type Key = Level;
    type Leaf = PaddedLevel;
    type Delta = PaddedDelta;

    fn key_of(delta: &PaddedDelta) -> Level {
        delta.delta.level()
    }

    fn apply(&mut self, d: &PaddedDelta) {
        let level = d.delta.level();
        let old = self.levels.get(&level).map_or(0, |l| l.quantity);
        match quantity_after(old, d.delta.change) {
            Some(quantity) => {
                let pad = filler(level, quantity, d.value_size);
                self.levels.insert(level, PaddedLevel { quantity, pad });
            }
            None => {
                self.levels.remove(&level);
            }
        }
    }

    fn leaf(&self, key: &Level) -> Option<&PaddedLevel> {
        self.levels.get(key)
    }

    fn set_leaf(&mut self, key: &Level, leaf: Option<PaddedLevel>) {
        match leaf {
            Some(l) if l.quantity > 0 => {
                self.levels.insert(*key, l);
            }
            _ => {
                self.levels.remove(key);
            }
        }
    }

    fn for_each_leaf(&self, f: &mut dyn FnMut(&Level, &PaddedLevel)) {
        for (k, v) in &self.levels {
            f(k, v);
        }
    }

    fn leaf_count(&self) -> usize {
        self.levels.len()
    }

    fn clear(&mut self) {
        self.levels.clear();
    }

    /// `grapevine.demo.padded_book/1`.
    fn schema_name() -> String {
        "grapevine.demo.padded_book/1".to_owned()
    }
}

/// [`BookDeltaGen`]'s deltas for a [`PaddedBook`], each padding its level
/// to `value_size` bytes. Never ends.
#[derive(Clone, Debug)]
pub struct PaddedDeltaGen {
    inner: BookDeltaGen,
    value_size: u32,
}

impl PaddedDeltaGen {
    /// A generator for deltas to `book`, seeded with `seed`.
    #[must_use]
    pub fn new(book: &PaddedBook, seed: u64, value_size: u32) -> Self {
        Self {
            inner: BookDeltaGen::new(&book.to_book(), seed),
            value_size,
        }
    }

    /// The quantities after every delta yielded so far.
    #[must_use]
    pub fn book(&self) -> &OrderBook {
        self.inner.book()
    }
}

impl Iterator for PaddedDeltaGen {
    type Item = PaddedDelta;

    fn next(&mut self) -> Option<PaddedDelta> {
        Some(PaddedDelta {
            delta: self.inner.next_delta(),
            value_size: self.value_size,
        })
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast and fixed forever, so
/// generated books do not change when a dependency does.
#[derive(Clone, Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`), by multiply-shift.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use grapevine_core::state::{digest_of, Replica, Typed};

    #[test]
    fn apply_creates_changes_and_removes() {
        let mut book = OrderBook::new();
        book.apply(&BookDelta::new(Side::Bid, 100, 5));
        assert_eq!(book.quantity(Side::Bid, 100), Some(5));
        book.apply(&BookDelta::new(Side::Bid, 100, 3));
        assert_eq!(book.quantity(Side::Bid, 100), Some(8));
        book.apply(&BookDelta::new(Side::Bid, 100, -2));
        assert_eq!(book.quantity(Side::Bid, 100), Some(6));
        // Exactly to zero removes.
        book.apply(&BookDelta::new(Side::Bid, 100, -6));
        assert_eq!(book.quantity(Side::Bid, 100), None);
        // Below zero removes too; a negative delta on an absent level does
        // not create it.
        book.apply(&BookDelta::new(Side::Ask, 200, 1));
        book.apply(&BookDelta::new(Side::Ask, 200, -10));
        book.apply(&BookDelta::new(Side::Ask, 300, -1));
        assert!(book.is_empty());
    }

    #[test]
    fn quantities_saturate() {
        let mut book = OrderBook::new();
        book.apply(&BookDelta::new(Side::Ask, 1, i64::MAX));
        book.apply(&BookDelta::new(Side::Ask, 1, i64::MAX));
        book.apply(&BookDelta::new(Side::Ask, 1, i64::MAX));
        assert_eq!(book.quantity(Side::Ask, 1), Some(u64::MAX));
        book.apply(&BookDelta::new(Side::Ask, 1, i64::MIN));
        assert_eq!(book.quantity(Side::Ask, 1), Some(u64::MAX - (1 << 63)));
    }

    #[test]
    fn deltas_are_not_idempotent() {
        let delta = BookDelta::new(Side::Bid, 10, 4);
        let mut once = OrderBook::new();
        once.apply(&delta);
        let mut twice = once.clone();
        twice.apply(&delta);
        assert_ne!(once, twice);
        assert_ne!(digest_of(&once), digest_of(&twice));
    }

    #[test]
    fn state_trait_leaves() {
        let mut book = OrderBook::generate(10, 3);
        let delta = BookDelta::new(Side::Ask, 123_456, 7);
        assert_eq!(OrderBook::key_of(&delta), (Side::Ask, 123_456));
        book.apply(&delta);
        assert_eq!(book.leaf(&(Side::Ask, 123_456)), Some(&7));
        assert_eq!(book.leaf_count(), 11);
        book.set_leaf(&(Side::Ask, 123_456), Some(9));
        assert_eq!(book.leaf(&(Side::Ask, 123_456)), Some(&9));
        book.set_leaf(&(Side::Ask, 123_456), Some(0));
        assert_eq!(book.leaf(&(Side::Ask, 123_456)), None);
        book.set_leaf(&(Side::Bid, 1), Some(2));
        book.set_leaf(&(Side::Bid, 1), None);
        let mut seen = 0;
        book.for_each_leaf(&mut |key, qty| {
            assert_eq!(book.quantity(key.0, key.1), Some(*qty));
            seen += 1;
        });
        assert_eq!(seen, 10);
        assert_eq!(book.levels().count(), 10);
        State::clear(&mut book);
        assert!(book.is_empty());
    }

    #[test]
    fn top_of_book_and_levels_order() {
        let mut book = OrderBook::new();
        for (side, price, qty) in [
            (Side::Bid, 98, 1),
            (Side::Bid, 99, 2),
            (Side::Ask, 101, 3),
            (Side::Ask, 102, 4),
        ] {
            book.apply(&BookDelta::new(side, price, qty));
        }
        let top = book.top_of_book();
        assert_eq!(top.bid, Some((99, 2)));
        assert_eq!(top.ask, Some((101, 3)));
        assert_eq!(top.spread(), Some(2));
        assert_eq!(top.to_string(), "bid 2@99 | ask 3@101");
        assert_eq!(TopOfBook::default().to_string(), "bid - | ask -");
        let levels: Vec<_> = book.levels().map(|(l, _)| l).collect();
        assert_eq!(
            levels,
            [
                (Side::Bid, 99),
                (Side::Bid, 98),
                (Side::Ask, 101),
                (Side::Ask, 102)
            ]
        );
    }

    #[test]
    fn generate_is_deterministic_and_uncrossed() {
        for levels in [0, 1, 2, 7, 1_000] {
            let book = OrderBook::generate(levels, 11);
            assert_eq!(book.len(), levels);
            assert_eq!(book, OrderBook::generate(levels, 11));
            if let (Some(b), Some(a)) = (book.best_bid(), book.best_ask()) {
                assert!(b.0 < a.0);
            }
            assert!(book.levels().all(|(_, q)| (1..=1_000).contains(&q)));
        }
        assert_ne!(OrderBook::generate(100, 1), OrderBook::generate(100, 2));
    }

    #[test]
    fn generated_deltas_are_realistic() {
        let mut book = OrderBook::generate(1_000, 5);
        let mut gen = BookDeltaGen::new(&book, 6);
        let (mut changes, mut news, mut removals) = (0, 0, 0);
        for _ in 0..20_000 {
            let delta = gen.next_delta();
            assert_ne!(delta.change, 0);
            let old = book.quantity(delta.side, delta.price);
            book.apply(&delta);
            let new = book.quantity(delta.side, delta.price);
            match (old, new) {
                (None, Some(_)) => news += 1,
                (Some(_), None) => removals += 1,
                (Some(_), Some(_)) => changes += 1,
                (None, None) => panic!("delta {delta:?} did nothing"),
            }
            let (bid, ask) = (book.best_bid().unwrap(), book.best_ask().unwrap());
            assert!(bid.0 < ask.0, "crossed: {}", book.top_of_book());
        }
        assert_eq!(&book, gen.book());
        assert!(changes > 15_000, "changes {changes}");
        assert!(news > 1_000, "new levels {news}");
        assert!(removals > 1_000, "removals {removals}");
        assert!((800..1_200).contains(&book.len()), "len {}", book.len());
    }

    #[test]
    fn generator_on_an_empty_book() {
        let mut book = OrderBook::new();
        let mut gen = BookDeltaGen::new(&book, 1);
        for delta in gen.by_ref().take(1_000) {
            book.apply(&delta);
        }
        assert_eq!(&book, gen.book());
        assert!(!book.bids().is_empty() && !book.asks().is_empty());
        assert!(book.best_bid().unwrap().0 < book.best_ask().unwrap().0);
    }

    #[test]
    fn replicates_through_typed() {
        let book = OrderBook::generate(50, 8);
        let mut replica = Typed::new(OrderBook::new());
        book.for_each_leaf(&mut |key, qty| {
            let key = Typed::<OrderBook>::encode_key(key);
            let qty = grapevine_core::state::encode(qty);
            replica.install_leaf(&key, Some(&qty)).unwrap();
        });
        assert_eq!(replica.state(), &book);
        let delta = BookDelta::new(Side::Bid, 1, 3);
        let key = Typed::<OrderBook>::encode_key(&delta.level());
        let payload = Typed::<OrderBook>::encode_delta(&delta);
        assert_eq!(replica.apply_delta(&key, &payload, false), Ok(true));
        assert_eq!(replica.apply_delta(&key, &payload, true), Ok(true));
        assert_eq!(replica.state().quantity(Side::Bid, 1), Some(3));
    }

    #[test]
    fn splitmix_reference_values() {
        // First outputs for seed 0 from the reference implementation.
        let mut rng = SplitMix64::new(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        let mut rng = SplitMix64::new(1);
        assert!((0..1_000).all(|_| rng.below(3) < 3));
    }
}
