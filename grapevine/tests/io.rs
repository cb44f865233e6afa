//! Integration tests of the I/O crate over real sockets on loopback.
//!
//! One test binary for the whole crate: add a module per area below, with its
//! tests in `tests/io/<area>.rs`. The crate root of a test binary looks for
//! modules next to itself, hence the `#[path]`.

#[path = "io/socket.rs"]
mod socket;

#[path = "io/replication.rs"]
mod replication;

#[path = "io/drivers.rs"]
mod drivers;

#[cfg(feature = "relay")]
#[path = "io/relay.rs"]
mod relay;
