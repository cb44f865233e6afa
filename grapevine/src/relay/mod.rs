//! Relay links (docs/design/relay.md, issue 9): the TLS identities and trust
//! of a relay, and the QUIC and TLS-over-TCP endpoints it dials and listens
//! on. Feature `relay`.
//!
//! * [`tls`]: [`Fingerprint`](tls::Fingerprint), [`Identity`](tls::Identity)
//!   (generated, PEM files, or persisted with
//!   [`Identity::load_or_create`](tls::Identity::load_or_create)),
//!   [`Trust`](tls::Trust) (a pin or a CA file), the rustls configurations
//!   (TLS 1.3 only, ALPN `grapevine-relay/1`, no 0-RTT) and the feeder
//!   policy checked after the handshake.
//! * [`transport`]: quinn endpoints with the relay's transport settings and a
//!   stateless-reset key derived from the identity, and the TLS-over-TCP
//!   dialer and listener.

pub mod tls;
pub mod transport;
