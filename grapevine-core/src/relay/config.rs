//! The relay engine's settings.

use std::time::Duration;

use crate::{ConfigError, StreamId};

/// Settings of a [`Relay`](super::Relay), with defaults for a LAN-to-WAN
/// relay; [`RelayConfig::validate`] checks them.
///
/// ```
/// use grapevine_core::relay::RelayConfig;
///
/// let mut config = RelayConfig::default();
/// config.queue_bytes = 1 << 20;
/// config.validate()?;
/// config.queue_bytes = 0;
/// assert!(config.validate().is_err());
/// # Ok::<(), grapevine_core::ConfigError>(())
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RelayConfig {
    /// The streams carried; empty: any, up to `max_streams`.
    pub streams: Vec<StreamId>,
    /// Most streams carried when `streams` is empty; datagrams of further
    /// streams are dropped and counted.
    pub max_streams: usize,
    /// Emit what links deliver on the group this relay writes to.
    pub emit_to_group: bool,
    /// Most datagrams held per session for repeating.
    pub history_datagrams: usize,
    /// Most bytes held per session for repeating.
    pub history_bytes: usize,
    /// A held datagram is repeated only while fewer than this many
    /// datagrams of its session arrived after it: beyond, a subscriber's
    /// replay window (4096, PROTOCOL.md §11.4) would refuse it.
    pub fresh_datagrams: u64,
    /// Datagrams remembered per session to drop copies.
    pub seen_datagrams: usize,
    /// Most bytes queued per link and stream (and for the group); beyond,
    /// the oldest is shed and counted.
    pub queue_bytes: usize,
    /// The same for a unicast subscriber's link and stream.
    pub subscriber_queue_bytes: usize,
    /// Most bytes queued on all links together.
    pub max_queued_bytes: usize,
    /// What waited longer than this in a link's queue is shed: the next
    /// snapshot cycle repairs it better than a stale backlog.
    pub queue_age: Duration,
    /// A datagram repeated less than this long ago is not repeated again.
    pub repair_holdoff: Duration,
    /// A range (or, sealed, the same NAK bytes) asked upstream less than
    /// this long ago is not asked again: subscribers losing the same
    /// datagram ask once. Shorter than a subscriber's repair timeout (20
    /// ms), or its next attempt, after a lost answer, would be swallowed.
    pub forward_holdoff: Duration,
    /// Another upstream may take a session over once its upstream was
    /// silent this long.
    pub upstream_timeout: Duration,
    /// NAKs are answered from history only once no other session of the
    /// stream was heard for this long.
    pub session_settle: Duration,
    /// NAKs forwarded upstream per second, at most.
    pub nak_forward_rate: f64,
    /// NAKs taken per second from one origin (a subscriber's address, a
    /// link), at most: the rest is dropped unread.
    pub nak_origin_rate: f64,
    /// Repeats may take this share of a stream's live bytes...
    pub repeat_share: f64,
    /// ...plus this many bytes per second...
    pub repeat_floor: f64,
    /// ...and at most this many bytes at once.
    pub repeat_burst: f64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            streams: Vec::new(),
            max_streams: 16,
            emit_to_group: false,
            history_datagrams: 4096,
            history_bytes: 4 << 20,
            fresh_datagrams: 3840,
            seen_datagrams: 65_536,
            queue_bytes: 4 << 20,
            subscriber_queue_bytes: 1 << 20,
            max_queued_bytes: 64 << 20,
            queue_age: Duration::from_secs(1),
            repair_holdoff: Duration::from_millis(10),
            forward_holdoff: Duration::from_millis(15),
            upstream_timeout: Duration::from_secs(2),
            session_settle: Duration::from_secs(2),
            nak_forward_rate: 1000.0,
            nak_origin_rate: 200.0,
            repeat_share: 0.5,
            repeat_floor: 64.0 * 1024.0,
            repeat_burst: 1024.0 * 1024.0,
        }
    }
}

impl RelayConfig {
    /// Checks every value.
    ///
    /// # Errors
    ///
    /// [`ConfigError::OutOfRange`] naming the first bad value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_streams == 0 || self.max_streams > 4096 {
            return Err(ConfigError::out_of_range(
                "max_streams",
                self.max_streams,
                "1 to 4096",
            ));
        }
        if self.history_datagrams > 1 << 20 {
            return Err(ConfigError::out_of_range(
                "history_datagrams",
                self.history_datagrams,
                "0 to 1048576",
            ));
        }
        if self.history_bytes > 1 << 30 {
            return Err(ConfigError::out_of_range(
                "history_bytes",
                self.history_bytes,
                "at most 1 GiB",
            ));
        }
        if self.fresh_datagrams == 0 || self.fresh_datagrams > 4096 {
            return Err(ConfigError::out_of_range(
                "fresh_datagrams",
                self.fresh_datagrams,
                "1 to 4096 (a subscriber's replay window)",
            ));
        }
        if self.seen_datagrams == 0 || self.seen_datagrams > 1 << 22 {
            return Err(ConfigError::out_of_range(
                "seen_datagrams",
                self.seen_datagrams,
                "1 to 4194304",
            ));
        }
        for (field, v) in [
            ("queue_bytes", self.queue_bytes),
            ("subscriber_queue_bytes", self.subscriber_queue_bytes),
            ("max_queued_bytes", self.max_queued_bytes),
        ] {
            if !(65_536..=1 << 30).contains(&v) {
                return Err(ConfigError::out_of_range(field, v, "64 KiB to 1 GiB"));
            }
        }
        let secs = |d: Duration| d.as_secs_f64();
        for (field, d, lo, hi) in [
            ("queue_age", self.queue_age, 0.001, 600.0),
            ("repair_holdoff", self.repair_holdoff, 0.0, 10.0),
            ("forward_holdoff", self.forward_holdoff, 0.0, 10.0),
            ("upstream_timeout", self.upstream_timeout, 0.001, 600.0),
            ("session_settle", self.session_settle, 0.0, 600.0),
        ] {
            if !(lo..=hi).contains(&secs(d)) {
                return Err(ConfigError::out_of_range(
                    field,
                    format!("{d:?}"),
                    "a duration within its documented range",
                ));
            }
        }
        for (field, v, hi) in [
            ("nak_forward_rate", self.nak_forward_rate, 1e6),
            ("nak_origin_rate", self.nak_origin_rate, 1e6),
            ("repeat_share", self.repeat_share, 16.0),
            ("repeat_floor", self.repeat_floor, 1e10),
            ("repeat_burst", self.repeat_burst, 1e10),
        ] {
            if !v.is_finite() || !(0.0..=hi).contains(&v) {
                return Err(ConfigError::out_of_range(
                    field,
                    v,
                    "a finite, non-negative number",
                ));
            }
        }
        Ok(())
    }
}
