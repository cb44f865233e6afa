//! The error type of the public API.

use std::io;
use std::time::Duration;

use grapevine_core::publisher::PublishError;
use grapevine_core::schema::Schema;
use grapevine_core::subscriber::Status;
use grapevine_core::ConfigError;

use crate::socket::SocketError;

/// Why a [`Publisher`](crate::Publisher) or [`Subscriber`](crate::Subscriber)
/// operation failed.
///
/// Each message says what went wrong and how to fix it; wrapped errors are
/// available through [`std::error::Error::source`].
///
/// ```
/// use grapevine::Error;
///
/// let err = Error::Closed;
/// assert!(err.to_string().contains("driver"));
/// let io: std::io::Error = err.into();
/// assert_eq!(io.kind(), std::io::ErrorKind::BrokenPipe);
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A protocol setting (snapshot rate, heartbeat interval, datagram size,
    /// reorder timeout, ...) is out of range. The message names the setting
    /// and the accepted values.
    #[error("invalid protocol configuration: {0}")]
    Config(ConfigError),

    /// The multicast socket could not be set up: a group that is not
    /// multicast, an unknown interface, a port in use, ...
    #[error(transparent)]
    Socket(#[from] SocketError),

    /// A delta could not be published; the state is unchanged.
    #[error("cannot publish: {0}")]
    Publish(PublishError),

    /// An I/O error outside socket setup.
    #[error("I/O error: {0}")]
    Io(io::Error),

    /// [`Subscriber::wait_until`](crate::Subscriber::wait_until) gave up:
    /// the condition did not hold within the time allowed.
    #[error(
        "condition not met within {waited:?} (status: synced {}, consistent {}, \
         seq {}, publisher alive {}): check that the publisher runs on the same \
         group, port, interface and stream, or allow more time",
        .status.synced,
        .status.consistent,
        .status.seq,
        .status.publisher_alive
    )]
    Timeout {
        /// How long was waited.
        waited: Duration,
        /// The subscriber's status when it gave up.
        status: Status,
    },

    /// The background driver has stopped: the handle was shut down, or
    /// the tokio runtime that ran it is shutting down. Create a new
    /// publisher or subscriber inside a running runtime.
    #[error(
        "the driver has stopped (shut down, or its tokio runtime ended): \
         bind a new publisher or subscriber inside a running runtime"
    )]
    Closed,

    /// The publisher followed announces another schema than the
    /// subscriber's state type: its datagrams are dropped, not decoded as
    /// the wrong type (PROTOCOL.md §8.2, "Schema"). Run the subscriber
    /// with the publisher's state type, or give both the same schema name
    /// (`schema` on both builders) if their encodings agree.
    #[error(
        "schema mismatch: the subscriber expects {expected}, the publisher \
         sends {found}: subscribe with the publisher's state type, or give \
         both sides the same schema name if their encodings agree"
    )]
    SchemaMismatch {
        /// The schema the subscriber expects.
        expected: Schema,
        /// The schema the publisher announces.
        found: Schema,
    },
}

// The errors wrapped by `Config`, `Publish` and `Io` are part of their
// message, so they are not also given as `source()`: a report that walks
// the chain (anyhow's `{:#}`) would print them twice.
impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Self {
        Error::Config(e)
    }
}

impl From<PublishError> for Error {
    fn from(e: PublishError) -> Self {
        Error::Publish(e)
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

impl From<Error> for io::Error {
    fn from(err: Error) -> Self {
        let kind = match err {
            Error::Io(e) => return e,
            Error::Socket(e) => return e.into(),
            Error::Timeout { .. } => io::ErrorKind::TimedOut,
            Error::Closed => io::ErrorKind::BrokenPipe,
            Error::Config(_) | Error::Publish(_) => io::ErrorKind::InvalidInput,
            Error::SchemaMismatch { .. } => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, err)
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use grapevine_core::publisher::PublisherConfig;

    use super::*;

    /// Each message is said once in a report that walks the source chain:
    /// the wrapped error is in the message, not also the source.
    #[test]
    fn a_wrapped_error_is_reported_once() {
        let mut cfg = PublisherConfig::default();
        cfg.heartbeat_interval(Duration::ZERO);
        let config = Error::from(cfg.validate().unwrap_err());
        let publish = Error::from(PublishError::SeqExhausted);
        let io = Error::from(io::Error::other("disk on fire"));
        for e in [config, publish, io] {
            let mut chain = e.to_string();
            let mut source = e.source();
            while let Some(s) = source {
                chain.push_str(&format!(": {s}"));
                source = s.source();
            }
            assert_eq!(chain, e.to_string(), "said twice: {chain}");
        }
        assert!(Error::from(io::Error::other("disk on fire"))
            .to_string()
            .contains("disk on fire"));
    }
}
