//! What a relay counts.

/// Why a datagram or NAK was not relayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Dropped {
    /// Not a Grapevine datagram of version 1.
    NotGrapevine,
    /// Sent by this relay, heard back.
    OwnOutput,
    /// A subscriber's datagram (a NAK) heard as a stream datagram.
    FromSubscriber,
    /// A copy of a datagram already forwarded.
    Duplicate,
    /// A session another upstream carries.
    Standby,
    /// A stream this relay does not carry.
    ForeignStream,
    /// Larger than the link's peer takes.
    TooLarge,
    /// A repair from upstream that may not be repeated.
    NotRepeatable,
    /// A NAK that could not be read as one.
    BadNak,
    /// A NAK for a session this relay does not know.
    UnknownSession,
    /// A frame that does not belong on that link (a NAK from a feeder, a
    /// datagram from a subscriber).
    WrongDirection,
}

impl Dropped {
    /// Every reason, in order.
    pub const ALL: [Dropped; 11] = [
        Dropped::NotGrapevine,
        Dropped::OwnOutput,
        Dropped::FromSubscriber,
        Dropped::Duplicate,
        Dropped::Standby,
        Dropped::ForeignStream,
        Dropped::TooLarge,
        Dropped::NotRepeatable,
        Dropped::BadNak,
        Dropped::UnknownSession,
        Dropped::WrongDirection,
    ];

    /// A short name for logs and metric labels.
    #[must_use]
    pub fn code(self) -> &'static str {
        match self {
            Dropped::NotGrapevine => "not_grapevine",
            Dropped::OwnOutput => "own_output",
            Dropped::FromSubscriber => "from_subscriber",
            Dropped::Duplicate => "duplicate",
            Dropped::Standby => "standby",
            Dropped::ForeignStream => "foreign_stream",
            Dropped::TooLarge => "too_large",
            Dropped::NotRepeatable => "not_repeatable",
            Dropped::BadNak => "bad_nak",
            Dropped::UnknownSession => "unknown_session",
            Dropped::WrongDirection => "wrong_direction",
        }
    }
}

/// A relay's counters since its start (gauges as of the call).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayStats {
    /// Datagrams received from the group or links (repairs included).
    pub datagrams_in: u64,
    /// Their bytes.
    pub bytes_in: u64,
    /// Datagrams sent to the group (repeats included).
    pub datagrams_out_group: u64,
    /// Datagram and Repair frames sent on links.
    pub datagrams_out_link: u64,
    /// Bytes of both.
    pub bytes_out: u64,
    /// Dropped, per reason ([`Dropped::ALL`] order).
    pub dropped: [u64; 11],
    /// Datagrams shed from full or stale queues.
    pub shed_datagrams: u64,
    /// Their bytes.
    pub shed_bytes: u64,
    /// Datagrams the upstream relay reported shed (Shed frames).
    pub peer_shed_datagrams: u64,
    /// Their bytes.
    pub peer_shed_bytes: u64,
    /// NAKs received (from the group or links).
    pub naks_received: u64,
    /// Held datagrams chosen to answer NAKs.
    pub nak_answers: u64,
    /// NAKs forwarded upstream.
    pub naks_forwarded: u64,
    /// NAKs not forwarded: what they asked was asked upstream lately.
    pub naks_coalesced: u64,
    /// NAKs not forwarded: over the forwarding rate.
    pub naks_forward_limited: u64,
    /// NAKs dropped unread: over their origin's rate.
    pub naks_origin_limited: u64,
    /// NAKs not forwarded: the session's upstream is gone.
    pub naks_no_upstream: u64,
    /// Control frames dropped: the link's control lane was full.
    pub control_shed: u64,
    /// NAKs not answered here because the stream's session changed lately.
    pub repeats_refused_unsettled: u64,
    /// Datagrams repeated.
    pub repeats: u64,
    /// Their bytes.
    pub repeat_bytes: u64,
    /// Repeats skipped: the same datagram was repeated moments ago.
    pub repeats_coalesced: u64,
    /// Repeats skipped: over the stream's repeat budget.
    pub repeats_refused_budget: u64,
    /// Bytes queued now (group and links).
    pub queued_bytes: usize,
    /// Sessions known now.
    pub sessions: usize,
    /// Datagrams held for repeating now.
    pub held_datagrams: usize,
    /// Their bytes.
    pub held_bytes: usize,
}

impl RelayStats {
    pub(crate) fn count(&mut self, why: Dropped) {
        if let Some(c) = self.dropped.get_mut(why as usize) {
            *c += 1;
        }
    }

    /// Drops for `why`.
    #[must_use]
    pub fn dropped(&self, why: Dropped) -> u64 {
        self.dropped.get(why as usize).copied().unwrap_or(0)
    }
}
