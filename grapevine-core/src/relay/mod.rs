//! Stream repeaters (PROTOCOL.md §12): carry a stream from a network that
//! has it by multicast to one that has not, over a reliable unicast link.
//!
//! A relay never makes a Grapevine datagram: everything it puts on a group
//! or a link is a byte-for-byte copy of a datagram it heard, and everything
//! it sends upstream is a copy of a subscriber's NAK. It holds no key, so
//! with authenticated streams it cannot make anything a subscriber accepts;
//! what it may repeat, and when, is in [`Relay`].
//!
//! * [`frame`]: the link's frames.
//! * [`Relay`]: the engine (sans-IO): forwarding, a history to answer NAKs
//!   on its side, NAKs forwarded upstream, bounded per-link queues.

mod classify;
mod config;
mod engine;
pub mod frame;
mod history;
mod stats;

pub use classify::Mode;
pub use config::RelayConfig;
pub use engine::{Lane, LinkId, LinkKind, NakOrigin, Relay, ESTABLISH};
pub use stats::{Dropped, RelayStats};

#[cfg(test)]
mod tests;

#[cfg(test)]
mod review_tests;

#[cfg(test)]
mod review2_tests;
