//! Grapevine: replicate application state over UDP multicast.
//!
//! One [`Publisher`] owns a state and multicasts every change to it; any
//! number of [`Subscriber`]s on the group keep a replica. One `sendmsg`
//! reaches every subscriber, whatever their number; there is no broker.
//!
//! # The contract
//!
//! * A state is made of **leaves** (a map entry, a price level) and changed
//!   by **deltas**, each touching one leaf and applied deterministically
//!   ([`State`]). A [`BTreeMap`](std::collections::BTreeMap) with
//!   [`MapDelta`] works with no trait to implement.
//! * A subscriber that joins late, or loses datagrams, recovers from the
//!   publisher's continuous **snapshot cycle**: it is [`Status::synced`] once
//!   it has heard every leaf (about one cycle, even under loss: what one
//!   cycle misses the next fills in), and [`Status::consistent`] whenever its
//!   replica equals the publisher's state as of [`Status::seq`]. While it
//!   recovers from a loss only the leaves the loss touched are stale.
//! * A publisher restart (a new session) makes subscribers clear and resync
//!   ([`Event::PublisherRestarted`]); a silent publisher is reported
//!   ([`Event::PublisherGone`]) and the last replica stays readable.
//! * Nothing here blocks the caller: [`Publisher::publish`] sends its delta
//!   with a non-blocking send, and a background driver (a tokio task, or a
//!   busy-poll thread: [`Driver`]) does the rest: snapshots, heartbeats,
//!   repairs. What waits for a full socket is bounded.
//!
//! The protocol itself lives in the sans-IO [`grapevine_core`] (re-exported
//! as [`core`]); this crate drives it over real sockets. The wire format is
//! specified in PROTOCOL.md at the repository root.
//!
//! # Quick start
//!
//! A publisher of a keyed map and a subscriber, over loopback:
//!
//! ```
//! use std::collections::BTreeMap;
//! use std::time::Duration;
//! use grapevine::{MapDelta, Publisher, Subscriber};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), grapevine::Error> {
//! let group = "239.255.28.10".parse().unwrap();
//! let port = 28010;
//!
//! let publisher = Publisher::builder()
//!     .group(group)
//!     .port(port)
//!     .bind(BTreeMap::<String, u64>::new())
//!     .await?;
//! publisher.publish(MapDelta::Upsert("ACME".into(), 101))?;
//! publisher.publish(MapDelta::Upsert("INIT".into(), 7))?;
//!
//! // Joins late: it catches up from the snapshot cycle.
//! let subscriber = Subscriber::<BTreeMap<String, u64>>::builder()
//!     .group(group)
//!     .port(port)
//!     .bind()
//!     .await?;
//! publisher.publish(MapDelta::Remove("INIT".into()))?;
//!
//! subscriber
//!     .wait_until(|s| s.consistent && s.seq == publisher.last_seq(), Duration::from_secs(10))
//!     .await?;
//! assert_eq!(subscriber.read(|m| m.clone()), publisher.read(|m| m.clone()));
//! assert_eq!(subscriber.digest(), publisher.digest());
//! # Ok(())
//! # }
//! ```
//!
//! For a richer state, implement [`State`]; [`order_book`] has a complete
//! one (price levels whose deltas add to a quantity).
//!
//! # Networks: loopback by default
//!
//! The default interface is loopback (`lo`, 127.0.0.1) with a multicast TTL
//! of 0: nothing leaves this host. Reaching other hosts on a LAN is an
//! explicit choice: name the interface with `interface(...)` on the builders
//! **and** raise the TTL through a [`MulticastConfig`]:
//!
//! ```
//! use std::collections::BTreeMap;
//! use grapevine::{Interface, MulticastConfig, Publisher};
//!
//! let mut multicast = MulticastConfig::default();
//! multicast.interface(Interface::name("eth0")).ttl(1);
//! let builder = Publisher::<BTreeMap<u32, u32>>::builder().multicast(multicast);
//! // `builder.bind(BTreeMap::new()).await?` would send on eth0.
//! # drop(builder);
//! ```
//!
//! See the [`socket`] module for what is verified (IPv6 multicast does not
//! work over Linux `lo`).
//!
//! # Cargo features
//!
//! * `runtime-tokio` (default): [`Publisher`] and [`Subscriber`] with
//!   their drivers (tokio or busy-poll) and [`MulticastSocket::into_tokio`].
//!   Without it the crate offers the socket setup ([`socket`]), batched
//!   datagram I/O ([`io`]), the error type and the [`order_book`] state, for
//!   a driver of your own over [`core`].
//! * `relay` (off by default): [`relay`], the TLS identities, trust and
//!   QUIC/TLS-over-TCP endpoints of relay links (quinn, rustls and rcgen
//!   over the same aws-lc-rs).

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub use grapevine_core as core;

#[cfg(feature = "runtime-tokio")]
mod driver;
mod error;
pub mod io;
pub mod keys;
#[cfg(feature = "runtime-tokio")]
pub mod metrics;
pub mod order_book;
#[cfg(feature = "runtime-tokio")]
pub mod publisher;
#[cfg(feature = "runtime-tokio")]
mod random;
#[cfg(feature = "relay")]
pub mod relay;
#[cfg(feature = "runtime-tokio")]
mod runtime;
pub mod socket;
#[cfg(feature = "runtime-tokio")]
pub mod subscriber;

#[cfg(feature = "runtime-tokio")]
pub use driver::Driver;
pub use error::Error;
#[cfg(feature = "runtime-tokio")]
pub use publisher::{Publisher, PublisherBuilder, PublisherStats};
pub use socket::{
    bind_receiver, bind_sender, Interface, MulticastConfig, MulticastSocket, SocketError,
};
#[cfg(feature = "runtime-tokio")]
pub use subscriber::{Subscriber, SubscriberBuilder, SubscriberStats};

pub use grapevine_core::publisher::SnapshotRate;
pub use grapevine_core::state::{Digest, MapDelta, State};
pub use grapevine_core::subscriber::{Event, Status};
pub use grapevine_core::{SeqNum, SessionId, StreamId};

/// Rotates a running publisher's or subscriber's keys from anywhere
/// (`Publisher::rekeyer`, `Subscriber::rekeyer`): cheap to clone, and
/// usable after the handle it came from is gone (it then changes nothing
/// anyone reads).
#[cfg(feature = "runtime-tokio")]
#[derive(Clone)]
pub struct Rekeyer {
    set: std::sync::Arc<dyn Fn(core::auth::Keyring) -> Result<(), Error> + Send + Sync>,
}

#[cfg(feature = "runtime-tokio")]
impl Rekeyer {
    fn new(set: impl Fn(core::auth::Keyring) -> Result<(), Error> + Send + Sync + 'static) -> Self {
        Self {
            set: std::sync::Arc::new(set),
        }
    }

    /// Seals and opens with these keys from now on (the first seals).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if the publisher or subscriber was started without
    /// a key.
    pub fn set_keys(&self, keyring: core::auth::Keyring) -> Result<(), Error> {
        (self.set)(keyring)?;
        tracing::info!("keys rotated");
        Ok(())
    }
}

#[cfg(feature = "runtime-tokio")]
impl std::fmt::Debug for Rekeyer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rekeyer")
    }
}

/// The README's Rust example, compiled and run by `cargo test --doc`.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
