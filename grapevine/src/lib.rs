//! Grapevine: replicate application state over UDP multicast.
//!
//! This is the crate applications depend on. It drives the sans-IO protocol
//! core ([`grapevine_core`], re-exported as [`core`]) over real sockets.
//!
//! The wire format is specified in PROTOCOL.md at the repository root.
//!
//! ```
//! use grapevine::core::wire::{Datagram, DecodeError};
//! // Foreign traffic is rejected with a typed error, never a panic.
//! assert!(matches!(Datagram::decode(b"hello"), Err(DecodeError::BadMagic { .. })));
//! ```

pub use grapevine_core as core;

pub mod socket;

pub use socket::{
    bind_receiver, bind_sender, Interface, MulticastConfig, MulticastSocket, SocketError,
};
