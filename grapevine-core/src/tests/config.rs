//! Every configuration value is checked at its bounds: the first value out
//! of range is rejected naming its field, the values at the bounds are
//! accepted, and the engines refuse a config that does not validate.

use std::time::Duration;

use crate::publisher::{PublisherConfig, SnapshotRate};
use crate::subscriber::SubscriberConfig;
use crate::wire::HEADER_LEN;
use crate::{ConfigError, ReassemblyConfig, StreamId};

/// The field a rejected config names.
fn field(res: Result<(), ConfigError>) -> Option<&'static str> {
    match res {
        Ok(()) => None,
        Err(ConfigError::OutOfRange { field, value, hint }) => {
            assert!(!value.is_empty() && !hint.is_empty(), "{field}: empty text");
            Some(field)
        }
        Err(e) => panic!("not a range error: {e}"),
    }
}

/// `set(cfg, ok)` accepted and `set(cfg, bad)` rejected naming `name`, for
/// each pair.
fn bounds<C: Clone + Default, T: Copy + std::fmt::Debug>(
    validate: impl Fn(&C) -> Result<(), ConfigError>,
    set: impl Fn(&mut C, T),
    name: &str,
    accepted: &[T],
    rejected: &[T],
) {
    for &v in accepted {
        let mut c = C::default();
        set(&mut c, v);
        assert_eq!(field(validate(&c)), None, "{name} = {v:?} rejected");
    }
    for &v in rejected {
        let mut c = C::default();
        set(&mut c, v);
        assert_eq!(field(validate(&c)), Some(name), "{name} = {v:?}");
    }
}

const MS: Duration = Duration::from_millis(1);
const S: Duration = Duration::from_secs(1);
const NS: Duration = Duration::from_nanos(1);

#[test]
fn publisher_config_bounds() {
    let v = |c: &PublisherConfig| c.validate();
    assert_eq!(field(v(&PublisherConfig::default())), None);
    let dg = HEADER_LEN + 64;
    bounds(
        v,
        |c, n| {
            c.max_datagram(n);
        },
        "max_datagram",
        &[dg, 1452, 65_507],
        &[0, dg - 1, 65_508, usize::MAX],
    );
    bounds(
        v,
        |c, r| {
            c.snapshot_rate(r);
        },
        "snapshot_rate",
        &[
            SnapshotRate::LeavesPerSec(1),
            SnapshotRate::BytesPerSec(1),
            SnapshotRate::LeavesPerSec(u32::MAX),
        ],
        &[SnapshotRate::LeavesPerSec(0), SnapshotRate::BytesPerSec(0)],
    );
    bounds(
        v,
        |c, t| {
            c.min_cycle_interval(t);
        },
        "min_cycle_interval",
        &[Duration::ZERO, 3600 * S],
        &[3600 * S + NS, Duration::MAX],
    );
    bounds(
        v,
        |c, t| {
            c.heartbeat_interval(t);
        },
        "heartbeat_interval",
        &[MS, 3600 * S],
        &[Duration::ZERO, MS - NS, 3600 * S + NS],
    );
    bounds(
        v,
        |c, t| {
            c.tail_heartbeat(t);
        },
        "tail_heartbeat",
        &[Duration::ZERO, 3600 * S],
        &[3600 * S + NS],
    );
    bounds(
        v,
        |c, b| {
            c.history(1024, b);
        },
        "history bytes",
        &[0, 1 << 40],
        &[(1 << 40) + 1],
    );
    bounds(
        v,
        |c, b| {
            c.fragment_history_bytes(b);
        },
        "history bytes",
        &[0, 1 << 40],
        &[(1 << 40) + 1],
    );
    bounds(
        v,
        |c, r| {
            c.repair_rate(r);
        },
        "repair_rate",
        &[1, 1 << 40],
        &[0, (1 << 40) + 1, u64::MAX],
    );
    bounds(
        v,
        |c, t| {
            c.repair_holdoff(t);
        },
        "repair_holdoff",
        &[Duration::ZERO, 60 * S],
        &[60 * S + NS],
    );
    bounds(
        v,
        |c, b| {
            c.max_queued_bytes(b);
        },
        "max_queued_bytes",
        &[1452, 1 << 40],
        &[0, 1451, (1 << 40) + 1, usize::MAX],
    );
    // The engine refuses what does not validate.
    let mut c = PublisherConfig::default();
    c.repair_rate(0);
    let now = std::time::Instant::now();
    assert!(crate::publisher::Publisher::new(c, crate::SessionId(1), now).is_err());
}

#[test]
fn subscriber_config_bounds() {
    let v = |c: &SubscriberConfig| c.validate();
    assert_eq!(field(v(&SubscriberConfig::default())), None);
    bounds(
        v,
        |c, n| {
            c.reorder_window(n);
        },
        "reorder_window",
        &[1, 4096],
        &[0],
    );
    bounds(
        v,
        |c, t| {
            c.reorder_timeout(t);
        },
        "reorder_timeout",
        &[NS, 3600 * S],
        &[Duration::ZERO, 3600 * S + NS],
    );
    bounds(
        v,
        |c, n| {
            c.missed_heartbeats(n);
        },
        "missed_heartbeats",
        &[1, 1000],
        &[0, 1001],
    );
    bounds(
        v,
        |c, n| {
            c.max_events(n);
        },
        "max_events",
        &[1],
        &[0],
    );
    let dg = HEADER_LEN + 64;
    bounds(
        v,
        |c, n| {
            c.max_datagram(n);
        },
        "max_datagram",
        &[dg, 65_507],
        &[dg - 1, 65_508],
    );
    bounds(
        v,
        |c, t| {
            c.nak_delay(t);
        },
        "nak_delay",
        &[Duration::ZERO, 10 * S],
        &[10 * S + NS],
    );
    bounds(
        v,
        |c, t| {
            c.repair_timeout(t);
        },
        "repair_timeout",
        &[NS, 60 * S],
        &[Duration::ZERO, 60 * S + NS],
    );
    bounds(
        v,
        |c, n| {
            c.nak_attempts(n);
        },
        "nak_attempts",
        &[1, 100],
        &[0, 101],
    );
    bounds(
        v,
        |c, n| {
            c.max_seq_jump(n);
        },
        "max_seq_jump",
        &[1, 1 << 40],
        &[0, (1 << 40) + 1],
    );
    // The reassembly limits are checked as part of the subscriber's.
    let mut c = SubscriberConfig::default();
    let mut r = ReassemblyConfig::default();
    r.max_partials(0);
    c.reassembly(r);
    assert_eq!(field(v(&c)), Some("reassembly.max_partials"));
    // The engine refuses what does not validate.
    let mut c = SubscriberConfig::default();
    c.nak_attempts(0);
    assert!(crate::subscriber::Subscriber::new(c).is_err());
    // Whether a seed was given.
    let mut c = SubscriberConfig::default();
    assert!(!c.is_seeded());
    c.rng_seed(0);
    assert!(c.is_seeded());
}

#[test]
fn reassembly_config_bounds() {
    let v = |c: &ReassemblyConfig| c.validate();
    assert_eq!(field(v(&ReassemblyConfig::default())), None);
    let max = u32::MAX as usize;
    bounds(
        v,
        |c, n| {
            c.max_message_size(n).max_buffered_bytes(usize::MAX);
        },
        "reassembly.max_message_size",
        &[1, max],
        &[0, max + 1],
    );
    // The buffer holds at least one message of the largest size.
    bounds(
        v,
        |c, n| {
            c.max_message_size(1000).max_buffered_bytes(n);
        },
        "reassembly.max_buffered_bytes",
        &[1000, 1001],
        &[0, 999],
    );
    bounds(
        v,
        |c, n| {
            c.max_partials(n);
        },
        "reassembly.max_partials",
        &[1],
        &[0],
    );
    bounds(
        v,
        |c, t| {
            c.timeout(t);
        },
        "reassembly.timeout",
        &[NS],
        &[Duration::ZERO],
    );
}

/// The stream id set is the one read back, on both sides.
#[test]
fn the_stream_id_reads_back() {
    let mut p = PublisherConfig::default();
    let mut s = SubscriberConfig::default();
    assert_eq!((p.stream_id(), s.stream_id()), (StreamId(1), StreamId(1)));
    p.stream(StreamId(70_000));
    s.stream(StreamId(70_001));
    assert_eq!(p.stream_id(), StreamId(70_000));
    assert_eq!(s.stream_id(), StreamId(70_001));
}
