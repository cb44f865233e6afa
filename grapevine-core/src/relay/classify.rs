//! What a relay that holds no key may know of a datagram: its header, its
//! mode, and for readable datagrams (plain, or authenticated without
//! encryption, read **unverified**) which delta sequence numbers and
//! fragments it carries and whether it carries a claim about the stream's
//! tail (a Heartbeat or a CycleEnd, PROTOCOL.md §8.4 rule 4).

use crate::auth::{unverified_plain, FLAG_AUTH, FLAG_ENCRYPT, FLAG_FROM_SUBSCRIBER};
use crate::wire::{carries_snapshots, peek_header, Datagram, DatagramHeader, Message};

/// How much of a datagram a keyless relay can read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Not sealed.
    Plain,
    /// Sealed, not encrypted: messages readable, unverified.
    Authenticated,
    /// Sealed and encrypted: only the header.
    Encrypted,
}

/// Why a datagram is not relayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NotRelayed {
    /// Not a Grapevine datagram of version 1.
    NotGrapevine,
    /// A subscriber's datagram (a NAK): never forwarded as a datagram.
    FromSubscriber,
}

/// A datagram a relay may forward, as far as it can read it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Class {
    pub(crate) header: Option<DatagramHeader>,
    /// Its messages could be read (plain or authenticated-only) and were
    /// well formed.
    pub(crate) readable: bool,
    /// Carries a Heartbeat or a CycleEnd: a claim about the tail that,
    /// heard late, re-anchors a subscriber (PROTOCOL.md §8.4 rule 4).
    pub(crate) anchors: bool,
    /// Carries leaf snapshots.
    pub(crate) snapshots: bool,
    /// Delta and Retransmit sequence numbers it carries.
    pub(crate) seqs: Vec<u64>,
    /// Fragmented messages it carries pieces of.
    pub(crate) frags: Vec<u32>,
}

impl Class {
    /// The datagram may be repeated in answer to a NAK: its messages were
    /// read, it carries deltas or fragments, and nothing that re-anchors
    /// nor snapshots (PROTOCOL.md §12.4).
    pub(crate) fn repeatable(&self) -> bool {
        self.readable
            && !self.anchors
            && !self.snapshots
            && (!self.seqs.is_empty() || !self.frags.is_empty())
    }
}

/// The mode of a datagram with these `flags`.
pub(crate) fn mode(flags: u8) -> Mode {
    if flags & FLAG_AUTH == 0 {
        Mode::Plain
    } else if flags & FLAG_ENCRYPT == 0 {
        Mode::Authenticated
    } else {
        Mode::Encrypted
    }
}

/// The plain bytes of `datagram` to read, using `scratch` for an
/// authenticated one; `None` when encrypted or too short.
pub(crate) fn readable<'a>(
    datagram: &'a [u8],
    flags: u8,
    scratch: &'a mut Vec<u8>,
) -> Option<&'a [u8]> {
    match mode(flags) {
        Mode::Plain => Some(datagram),
        Mode::Authenticated => unverified_plain(datagram, scratch).then_some(scratch.as_slice()),
        Mode::Encrypted => None,
    }
}

/// Classifies a datagram heard on a group or a link.
pub(crate) fn classify(datagram: &[u8], scratch: &mut Vec<u8>) -> Result<Class, NotRelayed> {
    let (header, flags) = peek_header(datagram).ok_or(NotRelayed::NotGrapevine)?;
    if flags & FLAG_FROM_SUBSCRIBER != 0 {
        return Err(NotRelayed::FromSubscriber);
    }
    let mut class = Class {
        header: Some(header),
        snapshots: carries_snapshots(datagram),
        ..Class::default()
    };
    let Some(plain) = readable(datagram, flags, scratch) else {
        return Ok(class);
    };
    let Ok(d) = Datagram::decode(plain) else {
        // Malformed messages: forwarded as they are (the subscribers judge
        // them), never repeated.
        return Ok(class);
    };
    class.readable = true;
    for m in d.messages() {
        match m {
            Message::Delta(x) | Message::Retransmit(x) => class.seqs.push(x.seq.0),
            Message::Heartbeat(_) | Message::CycleEnd(_) => class.anchors = true,
            Message::LeafSnapshot(_) => class.snapshots = true,
            Message::Fragment(f) => class.frags.push(f.frag_id),
            Message::Nak(_) | Message::FragNak(_) => return Err(NotRelayed::FromSubscriber),
            _ => {}
        }
    }
    Ok(class)
}

/// What a NAK datagram asks for, as far as a keyless relay can read it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Asked {
    pub(crate) header: Option<DatagramHeader>,
    /// The ranges could be read.
    pub(crate) readable: bool,
    /// Missing delta sequence numbers, as inclusive ranges.
    pub(crate) seqs: Vec<(u64, u64)>,
    /// Fragmented messages with missing pieces.
    pub(crate) frags: Vec<u32>,
}

/// Reads a NAK or FragNak datagram (PROTOCOL.md §4.6, §4.7), sealed or
/// not. `None` when it is not a Grapevine datagram, or is a sealed one
/// not from a subscriber, or readable and holding anything but NAKs.
pub(crate) fn asked(datagram: &[u8], scratch: &mut Vec<u8>) -> Option<Asked> {
    let (header, flags) = peek_header(datagram)?;
    if flags & FLAG_AUTH != 0 && flags & FLAG_FROM_SUBSCRIBER == 0 {
        return None;
    }
    let mut asked = Asked {
        header: Some(header),
        ..Asked::default()
    };
    let Some(plain) = readable(datagram, flags, scratch) else {
        return Some(asked);
    };
    let d = Datagram::decode(plain).ok()?;
    for m in d.messages() {
        match m {
            Message::Nak(n) => asked
                .seqs
                .extend(n.ranges.iter().map(|r| (r.first.0, r.last.0))),
            Message::FragNak(f) => asked.frags.push(f.frag_id),
            _ => return None,
        }
    }
    asked.readable = true;
    Some(asked)
}
