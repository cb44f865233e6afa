//! The sans-IO protocol core of Grapevine.
//!
//! Grapevine replicates a keyed state from one publisher to any number of
//! subscribers over UDP multicast. This crate holds the protocol itself, with
//! **no I/O**: it opens no socket, starts no thread and reads no clock. Bytes
//! come in as slices, time comes in as a `now: Instant` argument, and
//! outgoing datagrams are written into buffers the caller owns. The
//! `grapevine` crate drives it over real sockets; tests drive it over a
//! simulated network, deterministically.
//!
//! ```text
//!  application ──publish──▶ ┌──────────────┐ ──transmits──▶ socket / sim
//!                           │ grapevine-   │   (group or unicast)
//!  socket / sim ─datagrams─▶│ core         │ ──events────▶ application
//!   (with source address)   │              │
//!  clock ─────now, wall───▶ └──────────────┘ ──deadline──▶ timer
//! ```
//!
//! # Contents
//!
//! * [`wire`]: the wire format of PROTOCOL.md: datagram header, message
//!   kinds, packing several messages per datagram, fragmentation.
//! * [`publisher`]: the publisher state machine (sequence stamping, snapshot
//!   cycle, heartbeats, NAK repair from a bounded history).
//! * [`subscriber`]: the subscriber state machine (late join, ordering,
//!   NAK repair with suppression, per-leaf chains, snapshot repair, ghost
//!   removal, restart and liveness).
//! * [`Transmit`] and [`Destination`]: what an engine asks its driver to
//!   send, and where (the group, or one host by unicast).
//! * [`state`]: the [`state::State`] trait for replicated states, the keyed
//!   map mode, and the order-independent [`state::Digest`].
//! * [`schema`]: schema names and their fingerprints, announced by
//!   publishers and checked by subscribers.
//! * [`Reassembler`]: puts fragmented messages back together within
//!   configured memory bounds.
//! * Protocol numbers as newtypes: [`SeqNum`], [`StreamId`], [`SessionId`],
//!   [`CycleId`].
//!
//! # Guarantees on untrusted input
//!
//! Every decoder returns a typed error for malformed input and never panics
//! (checked by property tests and a fuzz target in `fuzz/`). The library's
//! lints forbid `unsafe`, `unwrap`, `panic!` and unchecked slice indexing
//! outside tests.

#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]
#![forbid(unsafe_code)]

pub mod auth;
mod config;
mod histogram;
pub mod publisher;
mod reassembly;
pub mod relay;
mod rng;
pub mod schema;
mod seq;
mod sources;
pub mod state;
pub mod subscriber;
mod timer;
mod transmit;
pub mod wire;

pub use config::ConfigError;
pub use histogram::LatencyHistogram;
pub use reassembly::{
    Missing, Reassembled, Reassembler, ReassemblyConfig, ReassemblyError, ReassemblyStats,
    MAX_RANGES,
};
pub use seq::{CycleId, SeqNum, SeqRange, SessionId, StreamId};
pub use transmit::{Destination, Transmit};

#[cfg(test)]
mod tests;
