//! Counters, gauges and histograms through the [`metrics`] facade.
//!
//! Publishers and subscribers record what they count into whatever
//! recorder the application installed (`metrics-exporter-prometheus`,
//! StatsD, ...); without one, recording costs a few lookups a second. The
//! drivers record at most once every [`INTERVAL`] (so a value is at most
//! that old), whether or not anything arrives: counters are set to the
//! totals of [`SubscriberStats`] and [`PublisherStats`], gauges to the
//! [`Status`], and histograms get what was measured since the last time.
//!
//! Every name starts with `grapevine_`. Every metric carries the label
//! `stream` (the stream id) and, when the builder was given one
//! ([`SubscriberBuilder::name`](crate::SubscriberBuilder::name),
//! [`PublisherBuilder::name`](crate::PublisherBuilder::name)), `name`, so
//! that several publishers or subscribers in one process stay apart.
//!
//! | metric | kind | what |
//! |---|---|---|
//! | `grapevine_subscriber_datagrams_total`, `_bytes_total` | counter | received from the socket |
//! | `grapevine_subscriber_messages_total{kind}`, `_message_bytes_total{kind}` | counter | messages of the stream received, and their bytes, by kind (`delta`, `retransmit`, `leaf_snapshot`, `cycle_begin`, `cycle_end`, `heartbeat`, `fragment`, ..., `unknown`) |
//! | `grapevine_subscriber_dropped_total{reason}` | counter | datagrams or messages dropped: each malformed code of PROTOCOL.md §7, each authentication refusal of §11.4 (`unauthenticated`, `bad_tag`, `replayed`, ...), `foreign_stream`, `other_session`, `unknown_message`, `fragment_rejected`, `duplicate`, `unbelieved`, `bad_position`, `stale_snapshot`, `oversized_cycle`, `pending_full`, `simulated_loss`, `awaiting_heartbeat` (authenticated datagrams of a session not yet proven fresh) |
//! | `grapevine_subscriber_kernel_drops_total` | counter | datagrams the kernel dropped because the socket's receive queue was full (Linux: `/proc/net/udp`) |
//! | `grapevine_subscriber_{deltas_applied, snapshots_applied, syncs, restarts, gaps, lost_seqs, naks_sent, nak_ranges_sent, frag_naks_sent, repaired_by_nak, filled_late, apply_errors, ghosts_removed, events_dropped, recv_errors, send_errors}_total` | counter | as [`SubscriberStats`] |
//! | `grapevine_subscriber_{synced, consistent, publisher_alive}` | gauge | 0 or 1 |
//! | `grapevine_subscriber_{seq, known_seq, missing_seqs, stale_leaves, leaves, other_sessions}` | gauge | as [`Status`] |
//! | `grapevine_subscriber_sync_seconds` | histogram | from a session's first datagram to sync |
//! | `grapevine_subscriber_repair_seconds` | histogram | from a sequence number known missing to its repair by NAK |
//! | `grapevine_publisher_datagrams_total`, `_bytes_total`, `_send_calls_total` | counter | handed to the socket |
//! | `grapevine_publisher_messages_total{kind}`, `_message_bytes_total{kind}` | counter | messages sent and their bytes, by kind, as for subscribers |
//! | `grapevine_publisher_{tombstones, fragments_resent, snapshot_bytes, repair_bytes, cycles, naks_received, nak_seqs_requested, nak_seqs_unavailable, repairs_coalesced, shed_datagrams, shed_bytes, send_errors, send_blocked, recv_errors}_total` | counter | as [`PublisherStats`] |
//! | `grapevine_publisher_dropped_total{reason}` | counter | received datagrams dropped: `malformed`, `foreign_stream`, `other_session`, `unexpected_message`, and refused by authentication: `auth_bad_tag`, `auth_replayed`, `auth_refused_other` |
//! | `grapevine_publisher_seal_refused_total` | counter | datagrams not sent because sealing them would have reused a nonce (never expected) |
//! | `grapevine_publisher_{seq, leaves, queued_bytes}` | gauge | the last sequence number, the state's leaves, bytes waiting for the socket |
//! | `grapevine_relay_{datagrams_in, bytes_in, datagrams_out_group, datagrams_out_link, bytes_out, shed_datagrams, shed_bytes, peer_shed_datagrams, naks_received, nak_answers, naks_forwarded, naks_coalesced, naks_forward_limited, naks_origin_limited, naks_no_upstream, control_shed, repeats, repeat_bytes, repeats_coalesced, repeats_refused_budget, repeats_refused_unsettled, link_connects, link_failures, dial_failures, refused}_total` | counter | a relay's counters (feature `relay`; label `name`) |
//! | `grapevine_relay_dropped_total{reason}` | counter | datagrams and NAKs a relay did not relay: `not_grapevine`, `own_output`, `from_subscriber`, `duplicate`, `standby`, `foreign_stream`, `too_large`, `not_repeatable`, `bad_nak`, `unknown_session`, `wrong_direction` |
//! | `grapevine_relay_{links_up, subscribers, queued_bytes, sessions, held_datagrams, held_bytes}` | gauge | a relay's links, unicast subscribers, queues and history |
//!
//! [`SubscriberStats`]: crate::SubscriberStats
//! [`PublisherStats`]: crate::PublisherStats
//! [`Status`]: crate::Status

use std::time::{Duration, Instant};

use grapevine_core::subscriber::Status;
use grapevine_core::wire::KindCounts;
use grapevine_core::LatencyHistogram;
use metrics::Label;

use crate::publisher::PublisherStats;
use crate::subscriber::SubscriberStats;
use crate::StreamId;

/// Describes every metric to the installed recorder (the `# HELP` lines
/// of a Prometheus page). Call it once, after installing the recorder.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    for &(name, kind, help) in DESCRIPTIONS {
        match kind {
            Kind::Counter => describe_counter!(name, help),
            Kind::Gauge => describe_gauge!(name, help),
            Kind::Seconds => describe_histogram!(name, Unit::Seconds, help),
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Seconds,
}

const DESCRIPTIONS: &[(&str, Kind, &str)] = {
    use Kind::{Counter as C, Gauge as G, Seconds as S};
    &[
        ("grapevine_subscriber_datagrams_total", C, "Datagrams received from the socket."),
        ("grapevine_subscriber_bytes_total", C, "Bytes received from the socket."),
        ("grapevine_subscriber_messages_total", C, "Messages of the stream received, by kind."),
        ("grapevine_subscriber_message_bytes_total", C, "Bytes of the messages of the stream received (message headers included), by kind."),
        ("grapevine_subscriber_dropped_total", C, "Datagrams or messages dropped, by reason (the malformed codes of PROTOCOL.md section 7 among them)."),
        ("grapevine_subscriber_kernel_drops_total", C, "Datagrams the kernel dropped because the socket's receive queue was full."),
        ("grapevine_subscriber_deltas_applied_total", C, "Deltas applied to the replica."),
        ("grapevine_subscriber_snapshots_applied_total", C, "Leaf snapshots installed."),
        ("grapevine_subscriber_syncs_total", C, "Times the replica became synced (once per publisher session)."),
        ("grapevine_subscriber_restarts_total", C, "Publisher restarts seen."),
        ("grapevine_subscriber_gaps_total", C, "Gaps declared: sequence numbers given up to snapshot repair."),
        ("grapevine_subscriber_lost_seqs_total", C, "Sequence numbers declared lost (repaired by snapshots)."),
        ("grapevine_subscriber_naks_sent_total", C, "NAK datagrams sent."),
        ("grapevine_subscriber_nak_ranges_sent_total", C, "Sequence ranges named by the NAKs sent."),
        ("grapevine_subscriber_frag_naks_sent_total", C, "FragNak datagrams sent."),
        ("grapevine_subscriber_repaired_by_nak_total", C, "Missing sequence numbers filled by a retransmission."),
        ("grapevine_subscriber_filled_late_total", C, "Missing sequence numbers filled late by the original delta."),
        ("grapevine_subscriber_apply_errors_total", C, "Deltas or leaves the state could not decode."),
        ("grapevine_subscriber_ghosts_removed_total", C, "Leaves removed as ghosts of missed deletions."),
        ("grapevine_subscriber_events_dropped_total", C, "Events dropped because the application fell behind."),
        ("grapevine_subscriber_recv_errors_total", C, "Receive errors reported by the socket."),
        ("grapevine_subscriber_send_errors_total", C, "NAK datagrams the socket refused."),
        ("grapevine_subscriber_synced", G, "1 once snapshot cycles have verified the whole key space in this session."),
        ("grapevine_subscriber_consistent", G, "1 while the replica equals the publisher's state as of grapevine_subscriber_seq."),
        ("grapevine_subscriber_publisher_alive", G, "1 while the publisher is heard within the liveness limit."),
        ("grapevine_subscriber_seq", G, "Every delta up to this sequence number has been processed."),
        ("grapevine_subscriber_known_seq", G, "Highest sequence number known to exist."),
        ("grapevine_subscriber_missing_seqs", G, "Sequence numbers known to exist, not yet received nor given up on."),
        ("grapevine_subscriber_stale_leaves", G, "Leaves whose chain is broken, waiting for a snapshot."),
        ("grapevine_subscriber_leaves", G, "Present leaves held."),
        ("grapevine_subscriber_other_sessions", G, "Other publisher sessions alive on the stream (0 unless two publishers share it)."),
        ("grapevine_subscriber_sync_seconds", S, "Time from a session's first datagram to sync."),
        ("grapevine_subscriber_repair_seconds", S, "Time from a sequence number known missing to its repair by NAK."),
        ("grapevine_publisher_datagrams_total", C, "Datagrams handed to the socket."),
        ("grapevine_publisher_bytes_total", C, "Bytes handed to the socket."),
        ("grapevine_publisher_send_calls_total", C, "Send calls (several datagrams per call with segmentation offload)."),
        ("grapevine_publisher_messages_total", C, "Messages sent, by kind."),
        ("grapevine_publisher_message_bytes_total", C, "Bytes of the messages sent (message headers included), by kind."),
        ("grapevine_publisher_tombstones_total", C, "Tombstones sent in snapshot cycles."),
        ("grapevine_publisher_fragments_resent_total", C, "Fragments resent in answer to FragNaks."),
        ("grapevine_publisher_dropped_total", C, "Received datagrams dropped, by reason."),
        ("grapevine_publisher_seal_refused_total", C, "Datagrams not sent because sealing them would have reused a nonce (never expected)."),
        ("grapevine_publisher_snapshot_bytes_total", C, "Bytes of snapshot and cycle messages."),
        ("grapevine_publisher_repair_bytes_total", C, "Bytes of repair messages (retransmissions and fragments resent)."),
        ("grapevine_publisher_cycles_total", C, "Snapshot cycles completed."),
        ("grapevine_publisher_naks_received_total", C, "NAK messages received for this session."),
        ("grapevine_publisher_nak_seqs_requested_total", C, "Distinct sequence numbers NAKs asked for that the history held."),
        ("grapevine_publisher_nak_seqs_unavailable_total", C, "Sequence numbers asked for that the history no longer held."),
        ("grapevine_publisher_repairs_coalesced_total", C, "Requests for a delta retransmitted within the hold-off."),
        ("grapevine_publisher_shed_datagrams_total", C, "Datagrams dropped unsent because the send queue was over its bound."),
        ("grapevine_publisher_shed_bytes_total", C, "Bytes of the datagrams shed."),
        ("grapevine_publisher_send_errors_total", C, "Datagrams the operating system refused."),
        ("grapevine_publisher_send_blocked_total", C, "Times the socket's send buffer was full."),
        ("grapevine_publisher_recv_errors_total", C, "Receive errors on the publisher's socket."),
        ("grapevine_publisher_seq", G, "The last sequence number published."),
        ("grapevine_publisher_leaves", G, "Leaves in the published state."),
        ("grapevine_publisher_queued_bytes", G, "Bytes of datagrams waiting for the socket."),
        ("grapevine_relay_datagrams_in_total", C, "Datagrams a relay received from its group or links."),
        ("grapevine_relay_bytes_in_total", C, "Bytes of them."),
        ("grapevine_relay_datagrams_out_group_total", C, "Datagrams a relay emitted on its group (repeats included)."),
        ("grapevine_relay_datagrams_out_link_total", C, "Datagram and Repair frames a relay sent on links."),
        ("grapevine_relay_bytes_out_total", C, "Bytes of both."),
        ("grapevine_relay_shed_datagrams_total", C, "Datagrams a relay shed from full or stale queues."),
        ("grapevine_relay_shed_bytes_total", C, "Bytes of them."),
        ("grapevine_relay_peer_shed_datagrams_total", C, "Datagrams the upstream relay reported shed."),
        ("grapevine_relay_naks_received_total", C, "NAKs a relay received."),
        ("grapevine_relay_nak_answers_total", C, "Held datagrams chosen to answer NAKs locally."),
        ("grapevine_relay_naks_forwarded_total", C, "NAKs forwarded upstream."),
        ("grapevine_relay_naks_coalesced_total", C, "NAKs not forwarded: asked upstream lately."),
        ("grapevine_relay_naks_forward_limited_total", C, "NAKs not forwarded: over the forwarding rate."),
        ("grapevine_relay_naks_origin_limited_total", C, "NAKs dropped unread: over their origin's rate."),
        ("grapevine_relay_naks_no_upstream_total", C, "NAKs not forwarded: the session's upstream is gone."),
        ("grapevine_relay_control_shed_total", C, "Control frames dropped: a link's control lane was full."),
        ("grapevine_relay_repeats_total", C, "Datagrams repeated in answer to NAKs."),
        ("grapevine_relay_repeat_bytes_total", C, "Bytes of them."),
        ("grapevine_relay_repeats_coalesced_total", C, "Repeats skipped: repeated moments ago."),
        ("grapevine_relay_repeats_refused_budget_total", C, "Repeats skipped: over the stream's repeat budget."),
        ("grapevine_relay_repeats_refused_unsettled_total", C, "NAKs not answered locally: the stream's session changed lately."),
        ("grapevine_relay_link_connects_total", C, "Links established."),
        ("grapevine_relay_link_failures_total", C, "Links lost."),
        ("grapevine_relay_dial_failures_total", C, "Dial attempts that failed."),
        ("grapevine_relay_refused_total", C, "Dialers a listener refused."),
        ("grapevine_relay_dropped_total", C, "Datagrams and NAKs a relay did not relay, by reason."),
        ("grapevine_relay_links_up", G, "Links up."),
        ("grapevine_relay_subscribers", G, "Unicast subscribers connected."),
        ("grapevine_relay_queued_bytes", G, "Bytes queued for the group and links."),
        ("grapevine_relay_sessions", G, "Sessions known."),
        ("grapevine_relay_held_datagrams", G, "Datagrams held to answer NAKs."),
        ("grapevine_relay_held_bytes", G, "Bytes of them."),
    ]
};

/// How often a driver records its metrics.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// The labels of one publisher or subscriber.
fn labels(stream: StreamId, name: Option<&str>) -> Vec<Label> {
    let mut l = vec![Label::new("stream", stream.0.to_string())];
    if let Some(name) = name {
        l.push(Label::new("name", name.to_owned()));
    }
    l
}

/// When the next recording is due.
#[derive(Debug)]
struct Pace {
    next: Instant,
}

impl Pace {
    fn new(now: Instant) -> Self {
        Self { next: now }
    }

    /// Whether a recording is due at `now`; if so, the next one is set.
    fn due(&mut self, now: Instant) -> bool {
        if now < self.next {
            return false;
        }
        self.next = now + INTERVAL;
        true
    }
}

fn counter(name: &'static str, labels: &[Label], value: u64) {
    metrics::counter!(name, labels.iter()).absolute(value);
}

fn counter_with(name: &'static str, labels: &[Label], key: &'static str, v: &str, value: u64) {
    let mut l = labels.to_vec();
    l.push(Label::new(key, v.to_owned()));
    metrics::counter!(name, l.iter()).absolute(value);
}

/// Messages and bytes by kind, as two counters labelled `kind`.
fn by_kind(messages: &'static str, bytes: &'static str, labels: &[Label], c: &KindCounts) {
    for (kind, n, b) in c.iter() {
        counter_with(messages, labels, "kind", kind.name(), n);
        counter_with(bytes, labels, "kind", kind.name(), b);
    }
    let (n, b) = c.unknown();
    counter_with(messages, labels, "kind", "unknown", n);
    counter_with(bytes, labels, "kind", "unknown", b);
}

fn gauge(name: &'static str, labels: &[Label], value: f64) {
    metrics::gauge!(name, labels.iter()).set(value);
}

/// Feeds what `h` recorded since `seen` to the histogram `name`, in
/// seconds, and remembers `h` as seen.
fn histogram_since(
    name: &'static str,
    labels: &[Label],
    h: &LatencyHistogram,
    seen: &mut LatencyHistogram,
) {
    if h.count() == seen.count() {
        return;
    }
    let hist = metrics::histogram!(name, labels.iter());
    for (at, n) in h.recorded_since(seen) {
        hist.record_many(at.as_secs_f64(), usize::try_from(n).unwrap_or(usize::MAX));
    }
    seen.clone_from(h);
}

/// The inode of a socket, which names it in `/proc/net/udp`.
pub(crate) fn inode_of(fd: std::os::fd::BorrowedFd<'_>) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    let file = std::fs::File::from(fd.try_clone_to_owned().ok()?);
    file.metadata().ok().map(|m| m.ino())
}

/// Linux: the datagrams the kernel dropped for the UDP socket with inode
/// `inode` (the `drops` column of `/proc/net/udp` and `udp6`).
pub(crate) fn kernel_drops(inode: u64) -> Option<u64> {
    ["/proc/self/net/udp", "/proc/self/net/udp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .find_map(|table| drops_in(&table, inode))
}

/// The `drops` column of the row of `inode` in a `/proc/net/udp` table.
fn drops_in(table: &str, inode: u64) -> Option<u64> {
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let row_inode = cols.get(9)?.parse::<u64>().ok()?;
        (row_inode == inode).then(|| cols.last()?.parse().ok())?
    })
}

/// A publisher's received datagrams dropped, by reason.
fn publisher_drops(p: &grapevine_core::publisher::PublisherStats) -> [(&'static str, u64); 7] {
    let auth_other = p
        .auth_refused
        .saturating_sub(p.auth_bad_tag)
        .saturating_sub(p.auth_replayed);
    [
        ("malformed", p.malformed_received),
        ("foreign_stream", p.foreign_received),
        ("other_session", p.other_session_naks),
        ("unexpected_message", p.unexpected_messages),
        ("auth_bad_tag", p.auth_bad_tag),
        ("auth_replayed", p.auth_replayed),
        ("auth_refused_other", auth_other),
    ]
}

/// The totals last logged, to log what grew since: drops and repairs are
/// logged as one line per reason per [`INTERVAL`] at most, never one per
/// datagram (a flood of hostile datagrams cannot flood the logs).
#[derive(Debug, Default)]
struct Seen(std::collections::BTreeMap<&'static str, u64>);

impl Seen {
    /// How much `total` grew since the last call for `key`.
    fn grew(&mut self, key: &'static str, total: u64) -> u64 {
        let last = self.0.insert(key, total).unwrap_or(0);
        total.saturating_sub(last)
    }
}

/// A subscriber's metrics.
#[derive(Debug)]
pub(crate) struct SubscriberMetrics {
    labels: Vec<Label>,
    pace: Pace,
    repair_seen: LatencyHistogram,
    /// The socket's inode, to find its kernel drops.
    inode: Option<u64>,
    seen: Seen,
}

impl SubscriberMetrics {
    pub(crate) fn new(stream: StreamId, name: Option<&str>, inode: Option<u64>) -> Self {
        Self {
            labels: labels(stream, name),
            pace: Pace::new(Instant::now()),
            repair_seen: LatencyHistogram::default(),
            inode,
            seen: Seen::default(),
        }
    }

    /// When the next recording is due.
    pub(crate) fn next(&self) -> Instant {
        self.pace.next
    }

    /// A session synced after `elapsed`.
    pub(crate) fn synced(&self, elapsed: Duration) {
        metrics::histogram!("grapevine_subscriber_sync_seconds", self.labels.iter())
            .record(elapsed.as_secs_f64());
    }

    /// Whether a recording is due at `now` (the next one is then set):
    /// the caller gathers the figures and calls [`Self::record`] only then.
    pub(crate) fn due(&mut self, now: Instant) -> bool {
        self.pace.due(now)
    }

    /// Records everything.
    pub(crate) fn record(&mut self, s: &SubscriberStats, status: &Status) {
        let l = &self.labels;
        let p = &s.protocol;
        counter(
            "grapevine_subscriber_datagrams_total",
            l,
            s.datagrams_received,
        );
        counter("grapevine_subscriber_bytes_total", l, s.bytes_received);
        by_kind(
            "grapevine_subscriber_messages_total",
            "grapevine_subscriber_message_bytes_total",
            l,
            &p.received,
        );
        let dropped = "grapevine_subscriber_dropped_total";
        for (&code, &n) in &p.malformed {
            counter_with(dropped, l, "reason", code, n);
            let grew = self.seen.grew(code, n);
            if grew > 0 {
                tracing::warn!(
                    reason = code,
                    count = grew,
                    total = n,
                    "malformed datagrams dropped (PROTOCOL.md section 7)"
                );
            }
        }
        for (&code, &n) in &p.refused {
            counter_with(dropped, l, "reason", code, n);
            let grew = self.seen.grew(code, n);
            if grew > 0 {
                tracing::warn!(
                    reason = code,
                    count = grew,
                    total = n,
                    "datagrams refused by authentication (PROTOCOL.md section 11)"
                );
            }
        }
        for (reason, n) in [
            ("foreign_stream", p.foreign_stream),
            ("other_session", p.other_session),
            ("unknown_message", p.unknown_messages),
            ("fragment_rejected", p.fragments_rejected),
            ("duplicate", p.duplicates),
            ("unbelieved", p.unbelieved),
            ("bad_position", p.bad_positions),
            ("stale_snapshot", p.stale_snapshots),
            ("oversized_cycle", p.oversized_cycles),
            ("pending_full", p.pending_dropped),
            ("simulated_loss", s.simulated_drops),
            ("awaiting_heartbeat", p.awaiting_heartbeat),
        ] {
            counter_with(dropped, l, "reason", reason, n);
            let grew = self.seen.grew(reason, n);
            if grew > 0 {
                tracing::debug!(reason, count = grew, total = n, "dropped");
            }
        }
        if let Some(drops) = self.inode.and_then(kernel_drops) {
            counter("grapevine_subscriber_kernel_drops_total", l, drops);
            let grew = self.seen.grew("kernel", drops);
            if grew > 0 {
                tracing::warn!(
                    count = grew,
                    total = drops,
                    "the kernel dropped datagrams: the socket's receive queue overflowed \
                     (raise net.core.rmem_max and the receive buffer, or keep the receiver \
                     from falling behind)"
                );
            }
        }
        let repair = [
            ("naks_sent", s.naks_sent),
            ("nak_ranges_sent", p.nak_ranges_sent),
            ("repaired_by_nak", p.repaired_by_nak),
            ("filled_late", p.filled_late),
            ("lost", p.lost),
        ];
        let grew = repair.map(|(k, n)| self.seen.grew(k, n));
        if grew.iter().any(|&g| g > 0) {
            tracing::debug!(
                naks_sent = grew[0],
                nak_ranges = grew[1],
                repaired_by_nak = grew[2],
                filled_late = grew[3],
                lost = grew[4],
                "repair since the last report"
            );
        }
        for (name, n) in [
            (
                "grapevine_subscriber_deltas_applied_total",
                p.deltas_applied,
            ),
            (
                "grapevine_subscriber_snapshots_applied_total",
                p.snapshots_applied,
            ),
            ("grapevine_subscriber_syncs_total", p.syncs),
            ("grapevine_subscriber_restarts_total", p.restarts),
            ("grapevine_subscriber_gaps_total", p.gaps),
            ("grapevine_subscriber_lost_seqs_total", p.lost),
            ("grapevine_subscriber_naks_sent_total", s.naks_sent),
            (
                "grapevine_subscriber_nak_ranges_sent_total",
                p.nak_ranges_sent,
            ),
            (
                "grapevine_subscriber_frag_naks_sent_total",
                p.frag_naks_sent,
            ),
            (
                "grapevine_subscriber_repaired_by_nak_total",
                p.repaired_by_nak,
            ),
            ("grapevine_subscriber_filled_late_total", p.filled_late),
            ("grapevine_subscriber_apply_errors_total", p.apply_errors),
            (
                "grapevine_subscriber_ghosts_removed_total",
                p.ghosts_removed,
            ),
            (
                "grapevine_subscriber_events_dropped_total",
                s.events_dropped + p.events_dropped,
            ),
            ("grapevine_subscriber_recv_errors_total", s.recv_errors),
            ("grapevine_subscriber_send_errors_total", s.send_errors),
        ] {
            counter(name, l, n);
        }
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        gauge("grapevine_subscriber_synced", l, flag(status.synced));
        gauge(
            "grapevine_subscriber_consistent",
            l,
            flag(status.consistent),
        );
        gauge(
            "grapevine_subscriber_publisher_alive",
            l,
            flag(status.publisher_alive),
        );
        gauge("grapevine_subscriber_seq", l, status.seq.0 as f64);
        gauge(
            "grapevine_subscriber_known_seq",
            l,
            status.known_seq.0 as f64,
        );
        gauge(
            "grapevine_subscriber_missing_seqs",
            l,
            status.missing as f64,
        );
        gauge(
            "grapevine_subscriber_stale_leaves",
            l,
            status.stale_leaves as f64,
        );
        gauge("grapevine_subscriber_leaves", l, status.leaves as f64);
        gauge(
            "grapevine_subscriber_other_sessions",
            l,
            f64::from(status.other_sessions),
        );
        histogram_since(
            "grapevine_subscriber_repair_seconds",
            &self.labels,
            &p.repair_latency,
            &mut self.repair_seen,
        );
    }
}

/// A publisher's metrics.
#[derive(Debug)]
pub(crate) struct PublisherMetrics {
    labels: Vec<Label>,
    pace: Pace,
    seen: Seen,
}

/// What a publisher's gauges show.
pub(crate) struct PublisherGauges {
    pub(crate) seq: u64,
    pub(crate) leaves: usize,
    pub(crate) queued_bytes: usize,
}

impl PublisherMetrics {
    pub(crate) fn new(stream: StreamId, name: Option<&str>) -> Self {
        Self {
            labels: labels(stream, name),
            pace: Pace::new(Instant::now()),
            seen: Seen::default(),
        }
    }

    /// When the next recording is due.
    pub(crate) fn next(&self) -> Instant {
        self.pace.next
    }

    /// Whether a recording is due at `now` (the next one is then set).
    pub(crate) fn due(&mut self, now: Instant) -> bool {
        self.pace.due(now)
    }

    /// Records everything.
    pub(crate) fn record(&mut self, s: &PublisherStats, g: &PublisherGauges) {
        self.log(s);
        let l = &self.labels;
        let p = &s.protocol;
        counter("grapevine_publisher_datagrams_total", l, s.datagrams_sent);
        counter("grapevine_publisher_bytes_total", l, s.bytes_sent);
        counter("grapevine_publisher_send_calls_total", l, s.send_calls);
        by_kind(
            "grapevine_publisher_messages_total",
            "grapevine_publisher_message_bytes_total",
            l,
            &p.messages,
        );
        counter("grapevine_publisher_tombstones_total", l, p.tombstones);
        counter(
            "grapevine_publisher_fragments_resent_total",
            l,
            p.fragments_resent,
        );
        let dropped = "grapevine_publisher_dropped_total";
        for (reason, n) in publisher_drops(p) {
            counter_with(dropped, l, "reason", reason, n);
        }
        counter("grapevine_publisher_seal_refused_total", l, p.seal_refused);
        for (name, n) in [
            ("grapevine_publisher_snapshot_bytes_total", p.snapshot_bytes),
            ("grapevine_publisher_repair_bytes_total", p.repair_bytes),
            ("grapevine_publisher_cycles_total", p.cycles),
            ("grapevine_publisher_naks_received_total", p.naks_received),
            (
                "grapevine_publisher_nak_seqs_requested_total",
                p.nak_seqs_requested,
            ),
            (
                "grapevine_publisher_nak_seqs_unavailable_total",
                p.nak_seqs_unavailable,
            ),
            (
                "grapevine_publisher_repairs_coalesced_total",
                p.repairs_coalesced,
            ),
            ("grapevine_publisher_shed_datagrams_total", p.datagrams_shed),
            ("grapevine_publisher_shed_bytes_total", p.bytes_shed),
            ("grapevine_publisher_send_errors_total", s.send_errors),
            ("grapevine_publisher_send_blocked_total", s.send_blocked),
            ("grapevine_publisher_recv_errors_total", s.recv_errors),
        ] {
            counter(name, l, n);
        }
        gauge("grapevine_publisher_seq", l, g.seq as f64);
        gauge("grapevine_publisher_leaves", l, g.leaves as f64);
        gauge("grapevine_publisher_queued_bytes", l, g.queued_bytes as f64);
    }
}

impl PublisherMetrics {
    /// Logs what grew since the last report: shedding and refused sends as
    /// warnings, repairs and drops at debug.
    fn log(&mut self, s: &PublisherStats) {
        let p = &s.protocol;
        let shed = self.seen.grew("shed", p.datagrams_shed);
        if shed > 0 {
            tracing::warn!(
                count = shed,
                total = p.datagrams_shed,
                "datagrams shed: more than the send queue's bound waited for the socket \
                 (subscribers repair them from snapshots)"
            );
        }
        let refused = self.seen.grew("send_errors", s.send_errors);
        if refused > 0 {
            tracing::warn!(
                count = refused,
                total = s.send_errors,
                "the socket refused datagrams"
            );
        }
        let repair = [
            ("naks_received", p.naks_received),
            ("retransmits", p.retransmits),
            ("nak_seqs_unavailable", p.nak_seqs_unavailable),
            ("fragments_resent", p.fragments_resent),
        ];
        let grew = repair.map(|(k, n)| self.seen.grew(k, n));
        if grew.iter().any(|&g| g > 0) {
            tracing::debug!(
                naks_received = grew[0],
                retransmits = grew[1],
                unavailable = grew[2],
                fragments_resent = grew[3],
                "repairs since the last report"
            );
        }
        for (reason, n) in publisher_drops(p) {
            let grew = self.seen.grew(reason, n);
            if grew > 0 && reason.starts_with("auth") {
                tracing::warn!(
                    reason,
                    count = grew,
                    total = n,
                    "received datagrams refused by authentication (PROTOCOL.md section 11)"
                );
            } else if grew > 0 {
                tracing::debug!(
                    reason,
                    count = grew,
                    total = n,
                    "received datagrams dropped"
                );
            }
        }
    }
}

/// Records a relay's counters and gauges, labelled `name`.
#[cfg(feature = "relay")]
pub(crate) fn record_relay(name: &str, s: &crate::relay::Stats) {
    let l = vec![Label::new("name", name.to_owned())];
    let c = &s.core;
    for (metric, v) in [
        ("grapevine_relay_datagrams_in_total", c.datagrams_in),
        ("grapevine_relay_bytes_in_total", c.bytes_in),
        (
            "grapevine_relay_datagrams_out_group_total",
            c.datagrams_out_group,
        ),
        (
            "grapevine_relay_datagrams_out_link_total",
            c.datagrams_out_link,
        ),
        ("grapevine_relay_bytes_out_total", c.bytes_out),
        ("grapevine_relay_shed_datagrams_total", c.shed_datagrams),
        ("grapevine_relay_shed_bytes_total", c.shed_bytes),
        (
            "grapevine_relay_peer_shed_datagrams_total",
            c.peer_shed_datagrams,
        ),
        ("grapevine_relay_naks_received_total", c.naks_received),
        ("grapevine_relay_nak_answers_total", c.nak_answers),
        ("grapevine_relay_naks_forwarded_total", c.naks_forwarded),
        ("grapevine_relay_naks_coalesced_total", c.naks_coalesced),
        (
            "grapevine_relay_naks_forward_limited_total",
            c.naks_forward_limited,
        ),
        (
            "grapevine_relay_naks_origin_limited_total",
            c.naks_origin_limited,
        ),
        ("grapevine_relay_naks_no_upstream_total", c.naks_no_upstream),
        ("grapevine_relay_control_shed_total", c.control_shed),
        ("grapevine_relay_repeats_total", c.repeats),
        ("grapevine_relay_repeat_bytes_total", c.repeat_bytes),
        (
            "grapevine_relay_repeats_coalesced_total",
            c.repeats_coalesced,
        ),
        (
            "grapevine_relay_repeats_refused_budget_total",
            c.repeats_refused_budget,
        ),
        (
            "grapevine_relay_repeats_refused_unsettled_total",
            c.repeats_refused_unsettled,
        ),
        ("grapevine_relay_link_connects_total", s.link_connects),
        ("grapevine_relay_link_failures_total", s.link_failures),
        ("grapevine_relay_dial_failures_total", s.dial_failures),
        ("grapevine_relay_refused_total", s.refused),
    ] {
        counter(metric, &l, v);
    }
    for why in crate::relay::Dropped::ALL {
        counter_with(
            "grapevine_relay_dropped_total",
            &l,
            "reason",
            why.code(),
            c.dropped(why),
        );
    }
    for (metric, v) in [
        ("grapevine_relay_links_up", s.links_up),
        ("grapevine_relay_subscribers", s.subscribers),
        ("grapevine_relay_queued_bytes", c.queued_bytes),
        ("grapevine_relay_sessions", c.sessions),
        ("grapevine_relay_held_datagrams", c.held_datagrams),
        ("grapevine_relay_held_bytes", c.held_bytes),
    ] {
        metrics::gauge!(metric, l.iter()).set(v as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_are_read_from_the_row_of_the_socket() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
            1: 00000000:1E61 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 0\n\
            2: 00000000:1E61 00000000:0000 07 00000000:00000D00 00:00000000 00000000     0        0 4243 2 0000000000000000 17\n";
        assert_eq!(drops_in(table, 4243), Some(17));
        assert_eq!(drops_in(table, 4242), Some(0));
        assert_eq!(drops_in(table, 99), None);
        assert_eq!(drops_in("", 4242), None);
    }

    #[test]
    fn what_grew_is_told_once() {
        let mut seen = Seen::default();
        assert_eq!(seen.grew("a", 5), 5);
        assert_eq!(seen.grew("a", 5), 0);
        assert_eq!(seen.grew("a", 9), 4);
        assert_eq!(seen.grew("b", 1), 1);
        assert_eq!(
            seen.grew("a", 2),
            0,
            "a total that fell (a new session) grows by nothing"
        );
    }

    #[test]
    fn recordings_are_paced_by_the_interval() {
        let t0 = Instant::now();
        let mut pace = Pace::new(t0);
        assert!(pace.due(t0), "the first is due at once");
        assert!(!pace.due(t0 + INTERVAL / 2));
        assert!(pace.due(t0 + INTERVAL));
        assert_eq!(pace.next, t0 + 2 * INTERVAL);
    }
}
