//! Tests of the wire codec: property-based round trips of every message kind
//! (alone and packed into datagrams), robustness against arbitrary and mutated
//! input, one unit test per decode error, the writer's edge cases, and
//! fragmentation through real datagrams into a [`Reassembler`].

use std::time::Instant;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

use super::*;
use crate::schema::SchemaFingerprint;
use crate::{CycleId, Reassembler, ReassemblyConfig, SeqNum, SeqRange, SessionId, StreamId};

// ---------------------------------------------------------------------------
// Owned messages: strategies generate these, tests borrow `Message`s from them.
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Owned {
    Delta {
        retransmit: bool,
        seq: u64,
        prev: u64,
        creates: bool,
        removes: bool,
        key: Vec<u8>,
        payload: Vec<u8>,
    },
    Snapshot {
        cycle: u32,
        position: u32,
        leaf_seq: u64,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
    },
    CycleBegin(CycleBegin),
    CycleEnd(CycleEnd),
    Heartbeat(Heartbeat),
    Nak {
        requester: u32,
        ranges: Vec<SeqRange>,
    },
    Fragment {
        frag_id: u32,
        total_len: u32,
        offset: u32,
        inner_kind: u8,
        data: Vec<u8>,
    },
    FragNak {
        requester: u32,
        frag_id: u32,
        ranges: Vec<(u32, u32)>,
    },
    StreamInfo {
        fingerprint: u64,
        name: String,
    },
    Unknown {
        kind: u8,
        body: Vec<u8>,
    },
}

impl Owned {
    fn msg(&self) -> Message<'_> {
        match self {
            Owned::Delta {
                retransmit,
                seq,
                prev,
                creates,
                removes,
                key,
                payload,
            } => {
                let d = Delta {
                    seq: SeqNum(*seq),
                    prev_leaf_seq: SeqNum(*prev),
                    creates: *creates,
                    removes: *removes,
                    key,
                    payload,
                };
                if *retransmit {
                    Message::Retransmit(d)
                } else {
                    Message::Delta(d)
                }
            }
            Owned::Snapshot {
                cycle,
                position,
                leaf_seq,
                key,
                value,
            } => Message::LeafSnapshot(LeafSnapshot {
                cycle: CycleId(*cycle),
                position: *position,
                leaf_seq: SeqNum(*leaf_seq),
                key,
                value: value.as_deref(),
            }),
            Owned::CycleBegin(c) => Message::CycleBegin(*c),
            Owned::CycleEnd(c) => Message::CycleEnd(*c),
            Owned::Heartbeat(h) => Message::Heartbeat(*h),
            Owned::Nak { requester, ranges } => Message::Nak(Nak {
                requester: *requester,
                ranges: NakRanges::from_slice(ranges),
            }),
            Owned::Fragment {
                frag_id,
                total_len,
                offset,
                inner_kind,
                data,
            } => Message::Fragment(Fragment {
                frag_id: *frag_id,
                total_len: *total_len,
                offset: *offset,
                inner_kind: *inner_kind,
                data,
            }),
            Owned::FragNak {
                requester,
                frag_id,
                ranges,
            } => Message::FragNak(FragNak {
                requester: *requester,
                frag_id: *frag_id,
                ranges: FragRanges::from_slice(ranges),
            }),
            Owned::StreamInfo { fingerprint, name } => Message::StreamInfo(StreamInfo {
                fingerprint: SchemaFingerprint(*fingerprint),
                name,
            }),
            Owned::Unknown { kind, body } => Message::Unknown { kind: *kind, body },
        }
    }
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..=max)
}

/// A sequence number `>= min`, biased towards the edges.
fn seq_from(min: u64) -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(min),
        Just(u64::MAX),
        min..=min.saturating_add(100),
        min..=u64::MAX,
    ]
}

fn delta() -> impl Strategy<Value = Owned> {
    (any::<bool>(), seq_from(1))
        .prop_flat_map(|(retransmit, seq)| {
            (
                Just(retransmit),
                Just(seq),
                prop_oneof![Just(0), Just(seq - 1), 0..seq],
                bytes(40),
                bytes(400),
            )
        })
        .prop_flat_map(|(retransmit, seq, prev, key, payload)| {
            // Only a delta whose prev is 0 may create its leaf.
            let creates = if prev == 0 {
                any::<bool>().boxed()
            } else {
                Just(false).boxed()
            };
            (
                Just((retransmit, seq, prev, key, payload)),
                creates,
                any::<bool>(),
            )
        })
        .prop_map(
            |((retransmit, seq, prev, key, payload), creates, removes)| Owned::Delta {
                retransmit,
                seq,
                prev,
                creates,
                removes,
                key,
                payload,
            },
        )
}

fn snapshot() -> impl Strategy<Value = Owned> {
    (
        any::<u32>(),
        any::<u32>(),
        any::<u64>(),
        bytes(40),
        proptest::option::of(bytes(400)),
    )
        .prop_map(|(cycle, position, leaf_seq, key, value)| Owned::Snapshot {
            cycle,
            position,
            leaf_seq,
            key,
            value,
        })
}

fn nak_range() -> impl Strategy<Value = SeqRange> {
    seq_from(1)
        .prop_flat_map(|first| (Just(first), seq_from(first)))
        .prop_map(|(first, last)| SeqRange {
            first: SeqNum(first),
            last: SeqNum(last),
        })
}

/// A fragment NAK range `(offset, end)` with `offset < end`.
fn frag_range() -> impl Strategy<Value = (u32, u32)> {
    prop_oneof![Just(0u32), any::<u32>().prop_map(|o| o.min(u32::MAX - 1))].prop_flat_map(
        |offset| {
            (
                Just(offset),
                prop_oneof![Just(offset + 1), Just(u32::MAX), offset + 1..=u32::MAX],
            )
        },
    )
}

fn inner_kind() -> impl Strategy<Value = u8> {
    prop_oneof![1u8..=7, 9u8..=u8::MAX]
}

fn fragment() -> impl Strategy<Value = Owned> {
    (any::<u32>(), inner_kind(), vec(any::<u8>(), 1..=400))
        .prop_flat_map(|(frag_id, inner_kind, data)| {
            let min_total = u32::try_from(data.len()).unwrap();
            (
                Just(frag_id),
                Just(inner_kind),
                Just(data),
                prop_oneof![Just(min_total), min_total..=u32::MAX],
            )
        })
        .prop_flat_map(|(frag_id, inner_kind, data, total_len)| {
            let max_offset = total_len - u32::try_from(data.len()).unwrap();
            (
                Just(frag_id),
                Just(inner_kind),
                Just(data),
                Just(total_len),
                prop_oneof![Just(0), Just(max_offset), 0..=max_offset],
            )
        })
        .prop_map(
            |(frag_id, inner_kind, data, total_len, offset)| Owned::Fragment {
                frag_id,
                total_len,
                offset,
                inner_kind,
                data,
            },
        )
}

fn message() -> impl Strategy<Value = Owned> {
    prop_oneof![
        3 => delta(),
        2 => snapshot(),
        1 => (any::<u32>(), any::<u64>(), any::<u32>()).prop_map(|(c, s, n)| {
            Owned::CycleBegin(CycleBegin { cycle: CycleId(c), start_seq: SeqNum(s), leaf_count: n })
        }),
        1 => (any::<u32>(), any::<u64>(), any::<u32>()).prop_map(|(c, s, n)| {
            Owned::CycleEnd(CycleEnd { cycle: CycleId(c), end_seq: SeqNum(s), leaf_count: n })
        }),
        1 => (any::<u64>(), any::<u64>(), any::<u32>()).prop_map(|(l, t, i)| {
            Owned::Heartbeat(Heartbeat { last_seq: SeqNum(l), sent_at_micros: t, interval_ms: i })
        }),
        1 => (any::<u32>(), vec(nak_range(), 1..=20))
            .prop_map(|(requester, ranges)| Owned::Nak { requester, ranges }),
        2 => fragment(),
        1 => (any::<u32>(), any::<u32>(), vec(frag_range(), 1..=20)).prop_map(
            |(requester, frag_id, ranges)| Owned::FragNak { requester, frag_id, ranges }
        ),
        1 => (any::<u64>(), "\\PC{0,40}")
            .prop_filter("at most 255 bytes", |(_, n): &(u64, String)| n.len() <= 255)
            .prop_map(|(fingerprint, name)| Owned::StreamInfo { fingerprint, name }),
        1 => (0x0bu8..=0x7f, bytes(200)).prop_map(|(kind, body)| Owned::Unknown { kind, body }),
    ]
}

/// A number biased towards 0, 1 and small values, sometimes anything.
fn loose_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1u64),
        0u64..6,
        any::<u64>(),
        Just(u64::MAX)
    ]
}

fn loose_u32() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0u32), 0u32..12, any::<u32>(), Just(u32::MAX)]
}

/// Messages with fields chosen without regard to the rules of their kind,
/// valid or not.
fn loose_message() -> impl Strategy<Value = Owned> {
    prop_oneof![
        (
            any::<bool>(),
            loose_u64(),
            loose_u64(),
            any::<bool>(),
            bytes(3),
            bytes(3),
            any::<bool>(),
        )
            .prop_map(|(retransmit, seq, prev, creates, key, payload, removes)| {
                Owned::Delta {
                    retransmit,
                    seq,
                    prev,
                    creates,
                    removes,
                    key,
                    payload,
                }
            }),
        (any::<u32>(), vec((loose_u64(), loose_u64()), 0..4)).prop_map(|(requester, r)| {
            Owned::Nak {
                requester,
                ranges: r
                    .into_iter()
                    .map(|(first, last)| SeqRange {
                        first: SeqNum(first),
                        last: SeqNum(last),
                    })
                    .collect(),
            }
        }),
        (
            any::<u32>(),
            loose_u32(),
            loose_u32(),
            any::<u8>(),
            bytes(4)
        )
            .prop_map(
                |(frag_id, total_len, offset, inner_kind, data)| Owned::Fragment {
                    frag_id,
                    total_len,
                    offset,
                    inner_kind,
                    data,
                }
            ),
        (
            any::<u32>(),
            any::<u32>(),
            vec((loose_u32(), loose_u32()), 0..4)
        )
            .prop_map(|(requester, frag_id, ranges)| Owned::FragNak {
                requester,
                frag_id,
                ranges,
            }),
        (any::<u8>(), bytes(24)).prop_map(|(kind, body)| Owned::Unknown { kind, body }),
        message(),
    ]
}

fn header() -> impl Strategy<Value = DatagramHeader> {
    (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(stream, session, datagram_seq)| {
        DatagramHeader {
            stream: StreamId(stream),
            session: SessionId(session),
            datagram_seq,
        }
    })
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

const H: DatagramHeader = DatagramHeader {
    stream: StreamId(0x0102_0304),
    session: SessionId(0x1112_1314_1516_1718),
    datagram_seq: 42,
};

/// One datagram produced by [`pack`].
struct Packed {
    header: DatagramHeader,
    bytes: Vec<u8>,
    /// Indices of the messages it carries, in order.
    carried: Vec<usize>,
}

/// Packs `msgs` greedily into datagrams of at most `max` bytes, starting a new
/// datagram on `DoesNotFit`. A message too large for an empty datagram is
/// skipped; its index is returned in the second list.
fn pack(base: DatagramHeader, msgs: &[Message<'_>], max: usize) -> (Vec<Packed>, Vec<usize>) {
    let mut out: Vec<Packed> = Vec::new();
    let mut skipped = Vec::new();
    let mut i = 0;
    while i < msgs.len() {
        let header = DatagramHeader {
            datagram_seq: base.datagram_seq.wrapping_add(out.len() as u64),
            ..base
        };
        let mut buf = vec![0u8; max];
        let mut w = DatagramWriter::new(&mut buf, &header).unwrap();
        let mut carried = Vec::new();
        let mut expected_len = HEADER_LEN;
        while let Some(m) = msgs.get(i) {
            let remaining = w.remaining();
            match w.push(m) {
                Ok(()) => {
                    assert!(m.encoded_len() <= remaining);
                    assert_eq!(w.remaining(), remaining - m.encoded_len());
                    expected_len += m.encoded_len();
                    carried.push(i);
                    i += 1;
                }
                Err(EncodeError::DoesNotFit {
                    needed,
                    remaining: left,
                }) => {
                    assert_eq!(needed, m.encoded_len());
                    assert_eq!(left, remaining);
                    assert!(needed > left);
                    assert_eq!(w.remaining(), remaining, "a failed push used space");
                    if w.is_empty() {
                        assert!(m.encoded_len() > max - HEADER_LEN);
                        skipped.push(i);
                        i += 1;
                    } else {
                        break;
                    }
                }
                Err(e) => panic!("unexpected {e:?} for {m}"),
            }
        }
        assert_eq!(w.message_count(), carried.len());
        let len = w.finish();
        assert_eq!(len, expected_len);
        assert!(len <= max);
        if !carried.is_empty() {
            buf.truncate(len);
            out.push(Packed {
                header,
                bytes: buf,
                carried,
            });
        }
    }
    (out, skipped)
}

/// Encodes `msgs` into one exactly sized datagram.
fn encode(header: &DatagramHeader, msgs: &[Message<'_>]) -> Vec<u8> {
    let len = HEADER_LEN + msgs.iter().map(Message::encoded_len).sum::<usize>();
    let mut buf = vec![0u8; len];
    let mut w = DatagramWriter::new(&mut buf, header).unwrap();
    for m in msgs {
        w.push(m).unwrap();
    }
    assert_eq!(w.finish(), len);
    buf
}

/// Decodes `bytes`: the decoder must agree with the reference decoder
/// ([`assert_agrees_with_spec`]); an error is fine; an accepted datagram must carry at least
/// one message and re-encode to a datagram that decodes identically, and whose
/// re-encoding is the same bytes (a fixed point). Returns the message count.
fn check_consistent(bytes: &[u8]) -> Option<usize> {
    assert_agrees_with_spec(bytes);
    let d = match Datagram::decode(bytes) {
        Ok(d) => d,
        Err(e) => {
            assert!(!e.code().is_empty());
            assert!(!e.to_string().is_empty());
            return None;
        }
    };
    let msgs: Vec<Message<'_>> = d.messages().collect();
    assert!(!msgs.is_empty(), "accepted a datagram without messages");
    for m in &msgs {
        let kind = m.kind_byte();
        assert!(kind != 0x00 && kind < 0x80, "yielded kind {kind:#04x}");
        // Each body survives encode_body / decode_body on its own.
        let mut body = Vec::new();
        m.encode_body(&mut body).unwrap();
        assert_eq!(body.len(), m.body_len());
        assert_eq!(Message::decode_body(kind, &body).unwrap(), Some(*m));
    }
    let copy = encode(&d.header(), &msgs);
    assert!(copy.len() <= bytes.len());
    let again = Datagram::decode(&copy).unwrap();
    assert_eq!(again.header(), d.header());
    let msgs2: Vec<Message<'_>> = again.messages().collect();
    assert_eq!(msgs2, msgs);
    assert_eq!(encode(&again.header(), &msgs2), copy);
    Some(msgs.len())
}

fn header_bytes(version: u8, flags: u8) -> Vec<u8> {
    let mut b = MAGIC.to_vec();
    b.extend([version, flags, 0, 0]);
    b.extend(H.stream.0.to_be_bytes());
    b.extend(H.session.0.to_be_bytes());
    b.extend(H.datagram_seq.to_be_bytes());
    assert_eq!(b.len(), HEADER_LEN);
    b
}

fn msg_bytes(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut b = vec![kind, 0];
    b.extend(u16::try_from(body.len()).unwrap().to_be_bytes());
    b.extend(body);
    b
}

/// A version 1 datagram carrying the given raw (kind, body) messages.
fn datagram(msgs: &[(u8, &[u8])]) -> Vec<u8> {
    let mut b = header_bytes(VERSION, 0);
    for (kind, body) in msgs {
        b.extend(msg_bytes(*kind, body));
    }
    b
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn heartbeat(last: u64) -> Message<'static> {
    Message::Heartbeat(Heartbeat {
        last_seq: SeqNum(last),
        sent_at_micros: 1_764_000_000_000_000,
        interval_ms: 100,
    })
}

fn heartbeat_body(last: u64) -> Vec<u8> {
    cat(&[
        &last.to_be_bytes(),
        &1_764_000_000_000_000u64.to_be_bytes(),
        &100u32.to_be_bytes(),
    ])
}

fn delta_body(seq: u64, prev: u64, flags: u8, key: &[u8], payload: &[u8]) -> Vec<u8> {
    cat(&[
        &seq.to_be_bytes(),
        &prev.to_be_bytes(),
        &[flags],
        &u16::try_from(key.len()).unwrap().to_be_bytes(),
        key,
        payload,
    ])
}

fn snapshot_body(flags: u8, key: &[u8], value: &[u8]) -> Vec<u8> {
    cat(&[
        &3u32.to_be_bytes(),
        &1u32.to_be_bytes(),
        &9u64.to_be_bytes(),
        &[flags],
        &u16::try_from(key.len()).unwrap().to_be_bytes(),
        key,
        value,
    ])
}

fn nak_body(ranges: &[(u64, u64)]) -> Vec<u8> {
    let mut b = cat(&[
        &0xdead_beefu32.to_be_bytes(),
        &u16::try_from(ranges.len()).unwrap().to_be_bytes(),
    ]);
    for (first, last) in ranges {
        b.extend(first.to_be_bytes());
        b.extend(last.to_be_bytes());
    }
    b
}

fn frag_nak_body(ranges: &[(u32, u32)]) -> Vec<u8> {
    let mut b = cat(&[
        &0xdead_beefu32.to_be_bytes(),
        &7u32.to_be_bytes(),
        &u16::try_from(ranges.len()).unwrap().to_be_bytes(),
    ]);
    for (offset, end) in ranges {
        b.extend(offset.to_be_bytes());
        b.extend(end.to_be_bytes());
    }
    b
}

fn fragment_body(total_len: u32, offset: u32, inner_kind: u8, data: &[u8]) -> Vec<u8> {
    cat(&[
        &5u32.to_be_bytes(),
        &total_len.to_be_bytes(),
        &offset.to_be_bytes(),
        &[inner_kind],
        data,
    ])
}

fn malformed(kind: MessageKind, reason: Malformed) -> DecodeError {
    DecodeError::Malformed { kind, reason }
}

/// Decodes `bytes`, expecting exactly `expected` with counter name `code`.
#[track_caller]
fn assert_rejects(bytes: &[u8], expected: DecodeError, code: &str) {
    let err = Datagram::decode(bytes).unwrap_err();
    assert_eq!(err, expected);
    assert_eq!(err.code(), code);
    if let DecodeError::Malformed { reason, .. } = err {
        assert_eq!(reason.code(), code);
    }
}

/// A tiny deterministic RNG (SplitMix64) for shuffles driven by a proptest seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

// ---------------------------------------------------------------------------
// Property tests
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Mutation {
    Flip(Index, u8),
    Set(Index, u8),
    Truncate(Index),
    Extend(Vec<u8>),
    Insert(Index, Vec<u8>),
    Remove(Index, usize),
    /// Sets the byte at this position, if the datagram is that long.
    SetAt(usize, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<Index>(), 0u8..8).prop_map(|(i, bit)| Mutation::Flip(i, bit)),
        3 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => vec(any::<u8>(), 1..16).prop_map(Mutation::Extend),
        1 => (any::<Index>(), vec(any::<u8>(), 1..8)).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (any::<Index>(), 1usize..8).prop_map(|(i, n)| Mutation::Remove(i, n)),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        if let Mutation::Extend(b) | Mutation::Insert(_, b) = m {
            bytes.extend(b);
        }
        return;
    }
    match m {
        Mutation::Flip(i, bit) => {
            let at = i.index(bytes.len());
            bytes[at] ^= 1 << bit;
        }
        Mutation::Set(i, b) => {
            let at = i.index(bytes.len());
            bytes[at] = *b;
        }
        Mutation::Truncate(i) => bytes.truncate(i.index(bytes.len())),
        Mutation::Extend(b) => bytes.extend(b),
        Mutation::Insert(i, b) => {
            let at = i.index(bytes.len() + 1);
            bytes.splice(at..at, b.iter().copied());
        }
        Mutation::Remove(i, n) => {
            let at = i.index(bytes.len());
            let end = (at + n).min(bytes.len());
            bytes.drain(at..end);
        }
        Mutation::SetAt(at, b) => {
            if let Some(x) = bytes.get_mut(*at) {
                *x = *b;
            }
        }
    }
}

/// Message kinds for the "message soup" strategy: mostly defined kinds, some
/// unknown ones of both classes.
fn soup_kind() -> impl Strategy<Value = u8> {
    prop_oneof![
        8 => 0x01u8..=0x09,
        1 => Just(0x00u8),
        1 => 0x0bu8..=0x7f,
        1 => 0x80u8..=0xff,
    ]
}

proptest! {
    #[test]
    fn single_message_round_trips(owned in message(), header in header()) {
        let m = owned.msg();
        let bytes = encode(&header, &[m]);
        prop_assert_eq!(bytes.len(), HEADER_LEN + MESSAGE_HEADER_LEN + m.body_len());
        let d = Datagram::decode(&bytes).unwrap();
        prop_assert_eq!(d.header(), header);
        prop_assert_eq!(d.messages().collect::<Vec<_>>(), vec![m]);

        let mut body = Vec::new();
        m.encode_body(&mut body).unwrap();
        prop_assert_eq!(&body[..], &bytes[HEADER_LEN + MESSAGE_HEADER_LEN..]);
        prop_assert_eq!(Message::decode_body(m.kind_byte(), &body).unwrap(), Some(m));
        // The canonical text never panics and names the kind.
        prop_assert!(!m.to_string().is_empty());
    }

    #[test]
    fn batches_round_trip(
        owned in vec(message(), 0..40),
        base in header(),
        max in 64usize..=9000,
    ) {
        let msgs: Vec<Message<'_>> = owned.iter().map(Owned::msg).collect();
        let (packed, skipped) = pack(base, &msgs, max);
        // Every message is carried exactly once, in order, unless it could not
        // fit even an empty datagram.
        let mut seen: Vec<usize> = packed.iter().flat_map(|p| p.carried.clone()).collect();
        seen.extend(&skipped);
        seen.sort_unstable();
        prop_assert_eq!(seen, (0..msgs.len()).collect::<Vec<_>>());
        let carried: Vec<usize> = packed.iter().flat_map(|p| p.carried.clone()).collect();
        prop_assert!(carried.windows(2).all(|w| w[0] < w[1]));
        for &i in &skipped {
            prop_assert!(msgs[i].encoded_len() > max - HEADER_LEN);
        }
        for (n, p) in packed.iter().enumerate() {
            prop_assert!(p.bytes.len() <= max);
            let d = Datagram::decode(&p.bytes).unwrap();
            prop_assert_eq!(d.header(), p.header);
            prop_assert_eq!(d.header().datagram_seq, base.datagram_seq.wrapping_add(n as u64));
            let got: Vec<Message<'_>> = d.messages().collect();
            let want: Vec<Message<'_>> = p.carried.iter().map(|&i| msgs[i]).collect();
            prop_assert_eq!(got, want);
            // Greedy packing: the next message really did not fit.
            if let Some(next) = packed.get(n + 1) {
                let first_next = next.carried[0];
                let gap_skipped = skipped.iter().any(|&s| {
                    s > *p.carried.last().unwrap() && s < first_next
                });
                if !gap_skipped {
                    prop_assert!(p.bytes.len() + msgs[first_next].encoded_len() > max);
                }
            }
        }
    }

    /// The writer refuses exactly what a receiver rejects, for the same
    /// reason, apart from unknown kinds: a defined kind is never written as
    /// unknown, a critical one is (receivers then drop the datagram).
    #[test]
    fn validate_agrees_with_the_decoder(owned in loose_message()) {
        let m = owned.msg();
        let kind = m.kind_byte();
        let raw = raw_body(&m);
        match (m.validate(), Message::decode_body(kind, &raw)) {
            (Err(EncodeError::InvalidMessage { reason: Malformed::ReservedKind(k) }), _) => {
                let unknown = matches!(m, Message::Unknown { .. });
                prop_assert!(unknown);
                prop_assert_eq!(k, kind);
                prop_assert!(MessageKind::from_u8(k).is_some());
            }
            (Ok(()), Ok(Some(back))) => prop_assert_eq!(back, m),
            (Ok(()), Err(DecodeError::UnknownCriticalKind { kind: k })) => {
                prop_assert_eq!(k, kind);
                prop_assert!(kind >= 0x80);
            }
            (
                Err(EncodeError::InvalidMessage { reason }),
                Err(DecodeError::Malformed { reason: got, .. }),
            ) => prop_assert_eq!(reason, got),
            (v, d) => prop_assert!(false, "{m:?}: validate {v:?}, decode {d:?}"),
        }
        let mut body = Vec::new();
        prop_assert_eq!(m.encode_body(&mut body).is_ok(), m.validate().is_ok());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..2048)) {
        check_consistent(&bytes);
    }

    #[test]
    fn arbitrary_bytes_after_a_valid_header_never_panic(
        header in header(),
        tail in vec(any::<u8>(), 0..2048),
    ) {
        let mut bytes = encode(&header, &[]);
        bytes.extend(&tail);
        if let Err(e) = Datagram::decode(&bytes) {
            // The header is valid, so only the message walker can object.
            prop_assert!(!matches!(
                e,
                DecodeError::ShortHeader { .. }
                    | DecodeError::BadMagic { .. }
                    | DecodeError::UnsupportedVersion { .. }
                    | DecodeError::UnsupportedFlags { .. }
                    | DecodeError::NoKey { .. }
            ), "{e:?}");
        }
        check_consistent(&bytes);
    }

    /// Plausible messages so that each body decoder sees near-valid bodies:
    /// real encoded bodies, sometimes under another kind byte, sometimes with
    /// trailing bytes or a declared length a little off, mixed with random
    /// bodies.
    #[test]
    fn message_soup_after_a_valid_header_never_panics(
        header in header(),
        parts in vec(
            (
                prop_oneof![
                    3 => message().prop_map(|o| {
                        let mut body = Vec::new();
                        o.msg().encode_body(&mut body).unwrap();
                        (o.msg().kind_byte(), body)
                    }),
                    1 => (soup_kind(), bytes(48)),
                ],
                proptest::option::weighted(0.2, soup_kind()),
                any::<u8>(),
                bytes(2),
                prop_oneof![6 => Just(0i32), 1 => -3i32..=3],
            ),
            1..6,
        ),
    ) {
        let mut bytes = encode(&header, &[]);
        for ((kind, body), other_kind, flags, extra, skew) in &parts {
            let body = cat(&[body, extra]);
            let declared = (body.len() as i32 + skew).clamp(0, 0xffff) as u16;
            bytes.push(other_kind.unwrap_or(*kind));
            bytes.push(*flags);
            bytes.extend(declared.to_be_bytes());
            bytes.extend(&body);
        }
        check_consistent(&bytes);
    }

    #[test]
    fn decode_body_never_panics(kind in any::<u8>(), body in bytes(200)) {
        match Message::decode_body(kind, &body) {
            Err(e) => prop_assert!(!e.code().is_empty()),
            Ok(None) => prop_assert_eq!(kind, 0x00),
            Ok(Some(m)) => {
                prop_assert_eq!(m.kind_byte(), kind);
                prop_assert!(m.body_len() <= body.len());
                let mut again = Vec::new();
                m.encode_body(&mut again).unwrap();
                prop_assert_eq!(&again[..], &body[..again.len()]);
                prop_assert_eq!(Message::decode_body(kind, &again).unwrap(), Some(m));
            }
        }
    }

    #[test]
    fn mutated_datagrams_decode_consistently(
        owned in vec(message(), 1..8),
        header in header(),
        mutations in vec(mutation(), 1..6),
    ) {
        let msgs: Vec<Message<'_>> = owned.iter().map(Owned::msg).collect();
        let mut bytes = encode(&header, &msgs);
        prop_assert_eq!(check_consistent(&bytes), Some(msgs.len()));
        for m in &mutations {
            apply(&mut bytes, m);
            check_consistent(&bytes);
        }
    }

    #[test]
    fn fragments_reassemble_through_datagrams(
        owned in prop_oneof![
            (seq_from(1), bytes(40), vec(any::<u8>(), 0..6000)).prop_map(|(seq, key, payload)| {
                Owned::Delta { retransmit: false, seq, prev: seq - 1, creates: false, removes: false, key, payload }
            }),
            (any::<u32>(), bytes(40), vec(any::<u8>(), 0..6000)).prop_map(|(cycle, key, value)| {
                Owned::Snapshot { cycle, position: 0, leaf_seq: 1, key, value: Some(value) }
            }),
            (any::<u32>(), vec(nak_range(), 1..300))
                .prop_map(|(requester, ranges)| Owned::Nak { requester, ranges }),
        ],
        frag_id in any::<u32>(),
        max in 64usize..=9000,
        interleave in vec(message(), 0..10),
        seed in any::<u64>(),
    ) {
        let m = owned.msg();
        let kind = MessageKind::from_u8(m.kind_byte()).unwrap();
        let mut body = Vec::new();
        m.encode_body(&mut body).unwrap();

        let cap = fragment_capacity(max);
        prop_assert_eq!(cap, max - HEADER_LEN - MESSAGE_HEADER_LEN - FRAGMENT_FIXED);
        let frags: Vec<Fragment<'_>> = Fragments::new(frag_id, kind, &body, cap).collect();
        prop_assert_eq!(frags.len(), body.len().div_ceil(cap));
        let joined: Vec<u8> = frags.iter().flat_map(|f| f.data.iter().copied()).collect();
        prop_assert_eq!(&joined, &body);

        // Fragments mixed with other messages (whose fragments never share our
        // frag_id), packed into datagrams of `max` and delivered in any order.
        let mut all: Vec<Message<'_>> = frags.iter().map(|f| Message::Fragment(*f)).collect();
        all.extend(interleave.iter().map(|o| match o.msg() {
            Message::Fragment(f) if f.frag_id == frag_id => {
                Message::Fragment(Fragment { frag_id: frag_id.wrapping_add(1), ..f })
            }
            other => other,
        }));
        let mut rng = Rng(seed);
        rng.shuffle(&mut all);
        let (mut packed, skipped) = pack(H, &all, max);
        for &s in &skipped {
            // Each of our fragments fits an empty datagram by construction.
            prop_assert!(!matches!(all[s], Message::Fragment(f) if f.frag_id == frag_id));
        }
        rng.shuffle(&mut packed);

        // Room for ours next to the interleaved partials (up to 4 MiB each).
        let mut cfg = ReassemblyConfig::default();
        cfg.max_buffered_bytes(64 << 20);
        let mut r = Reassembler::new(cfg).unwrap();
        let now = Instant::now();
        let mut ours = Vec::new();
        for p in &packed {
            let d = Datagram::decode(&p.bytes).unwrap();
            let (stream, session) = (d.header().stream, d.header().session);
            for msg in d.messages() {
                let Message::Fragment(f) = msg else { continue };
                let res = r.handle_fragment(now, stream, session, &f);
                if f.frag_id == frag_id {
                    // Ours are honest: never rejected.
                    if let Some(whole) = res.unwrap() {
                        ours.push(whole);
                    }
                }
            }
        }
        prop_assert_eq!(ours.len(), 1);
        prop_assert_eq!(ours[0].kind, kind as u8);
        prop_assert_eq!(&ours[0].body, &body);
        prop_assert_eq!(ours[0].message().unwrap(), m);
    }
}

// ---------------------------------------------------------------------------
// Validity: a reference decoder written from PROTOCOL.md, and exact
// expectations for truncated datagrams and for length fields that run past
// their datagram or their message
// ---------------------------------------------------------------------------
//
// The round trips above only show that what the decoder accepts re-encodes to
// itself; a decoder that accepted too much (a body one byte past the end of
// the datagram, a key running past its body) would pass them. The properties
// below say what must be *rejected*, and how.

/// The big-endian number in `b[at..at + n]`, if all those bytes exist.
fn be(b: &[u8], at: usize, n: usize) -> Option<u64> {
    let bytes = b.get(at..at.checked_add(n)?)?;
    Some(bytes.iter().fold(0, |v, &x| (v << 8) | u64::from(x)))
}

/// The kinds PROTOCOL.md §4 defines, padding aside.
fn spec_kind(kind: u8) -> Option<MessageKind> {
    Some(match kind {
        0x01 => MessageKind::Delta,
        0x02 => MessageKind::Retransmit,
        0x03 => MessageKind::LeafSnapshot,
        0x04 => MessageKind::CycleBegin,
        0x05 => MessageKind::CycleEnd,
        0x06 => MessageKind::Heartbeat,
        0x07 => MessageKind::Nak,
        0x08 => MessageKind::Fragment,
        0x09 => MessageKind::FragNak,
        0x0a => MessageKind::StreamInfo,
        _ => return None,
    })
}

/// Consecutive fields of one message body, read from its start (§4). A field
/// the body ends before is `body_too_short`, `needed` being where the field
/// would end (§7).
struct Fields<'b> {
    kind: MessageKind,
    body: &'b [u8],
    at: usize,
}

impl<'b> Fields<'b> {
    fn slice(&mut self, n: usize) -> Result<&'b [u8], DecodeError> {
        let end = self.at + n;
        let Some(s) = self.body.get(self.at..end) else {
            return Err(malformed(
                self.kind,
                Malformed::BodyTooShort {
                    needed: end,
                    available: self.body.len(),
                },
            ));
        };
        self.at = end;
        Ok(s)
    }

    fn num(&mut self, n: usize) -> Result<u64, DecodeError> {
        let s = self.slice(n)?;
        Ok(be(s, 0, n).unwrap())
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::try_from(self.num(4)?).unwrap())
    }

    fn rest(&mut self) -> &'b [u8] {
        let s = &self.body[self.at..];
        self.at = self.body.len();
        s
    }
}

/// One message body of kind `kind` by §4 and the per-kind rules of §7, in
/// the order §7 gives.
fn spec_body(kind: u8, body: &[u8]) -> Result<Owned, DecodeError> {
    let Some(k) = spec_kind(kind) else {
        return if kind >= 0x80 {
            Err(DecodeError::UnknownCriticalKind { kind })
        } else {
            Ok(Owned::Unknown {
                kind,
                body: body.to_vec(),
            })
        };
    };
    let bad = |reason| Err(malformed(k, reason));
    let mut f = Fields {
        kind: k,
        body,
        at: 0,
    };
    match kind {
        0x01 | 0x02 => {
            let seq = f.num(8)?;
            let prev = f.num(8)?;
            let flags = f.num(1)? as u8;
            let key_len = f.num(2)? as usize;
            let key = f.slice(key_len)?.to_vec();
            let payload = f.rest().to_vec();
            if seq == 0 {
                return bad(Malformed::ZeroSeq);
            }
            if prev >= seq {
                return bad(Malformed::PrevNotBeforeSeq { seq, prev });
            }
            if flags & 0b1111_1100 != 0 {
                return bad(Malformed::UnknownDeltaFlags(flags));
            }
            let creates = flags & 1 == 1;
            if creates && prev != 0 {
                return bad(Malformed::CreatesWithPrev { prev });
            }
            Ok(Owned::Delta {
                retransmit: kind == 0x02,
                seq,
                prev,
                creates,
                removes: flags & 2 == 2,
                key,
                payload,
            })
        }
        0x03 => {
            let cycle = f.u32()?;
            let position = f.u32()?;
            let leaf_seq = f.num(8)?;
            let flags = f.num(1)? as u8;
            let key_len = f.num(2)? as usize;
            let key = f.slice(key_len)?.to_vec();
            let value = f.rest();
            if flags > 1 {
                return bad(Malformed::UnknownLeafFlags(flags));
            }
            if flags == 1 && !value.is_empty() {
                return bad(Malformed::TombstoneWithValue);
            }
            Ok(Owned::Snapshot {
                cycle,
                position,
                leaf_seq,
                key,
                value: (flags == 0).then(|| value.to_vec()),
            })
        }
        0x04 | 0x05 => {
            let cycle = CycleId(f.u32()?);
            let seq = SeqNum(f.num(8)?);
            let leaf_count = f.u32()?;
            Ok(if kind == 0x04 {
                Owned::CycleBegin(CycleBegin {
                    cycle,
                    start_seq: seq,
                    leaf_count,
                })
            } else {
                Owned::CycleEnd(CycleEnd {
                    cycle,
                    end_seq: seq,
                    leaf_count,
                })
            })
        }
        0x06 => Ok(Owned::Heartbeat(Heartbeat {
            last_seq: SeqNum(f.num(8)?),
            sent_at_micros: f.num(8)?,
            interval_ms: f.u32()?,
        })),
        0x07 => {
            let requester = f.u32()?;
            let count = f.num(2)? as usize;
            if count == 0 {
                return bad(Malformed::EmptyNak);
            }
            let raw = f.slice(16 * count)?;
            let mut ranges = Vec::new();
            for i in 0..count {
                let (first, last) = (be(raw, 16 * i, 8).unwrap(), be(raw, 16 * i + 8, 8).unwrap());
                if first == 0 || first > last {
                    return bad(Malformed::BadNakRange { first, last });
                }
                ranges.push(SeqRange {
                    first: SeqNum(first),
                    last: SeqNum(last),
                });
            }
            Ok(Owned::Nak { requester, ranges })
        }
        0x08 => {
            let frag_id = f.u32()?;
            let total_len = f.u32()?;
            let offset = f.u32()?;
            let inner_kind = f.num(1)? as u8;
            let data = f.rest();
            if data.is_empty() || total_len == 0 {
                return bad(Malformed::EmptyFragment);
            }
            let end = u64::from(offset) + data.len() as u64;
            if end > u64::from(total_len) {
                return bad(Malformed::FragmentOutOfBounds {
                    offset,
                    end,
                    total_len,
                });
            }
            if inner_kind == 0x00 || inner_kind == 0x08 {
                return bad(Malformed::BadInnerKind(inner_kind));
            }
            Ok(Owned::Fragment {
                frag_id,
                total_len,
                offset,
                inner_kind,
                data: data.to_vec(),
            })
        }
        0x09 => {
            let requester = f.u32()?;
            let frag_id = f.u32()?;
            let count = f.num(2)? as usize;
            if count == 0 {
                return bad(Malformed::EmptyNak);
            }
            let raw = f.slice(8 * count)?;
            let mut ranges = Vec::new();
            for i in 0..count {
                let offset = u32::try_from(be(raw, 8 * i, 4).unwrap()).unwrap();
                let end = u32::try_from(be(raw, 8 * i + 4, 4).unwrap()).unwrap();
                if offset >= end {
                    return bad(Malformed::BadFragRange { offset, end });
                }
                ranges.push((offset, end));
            }
            Ok(Owned::FragNak {
                requester,
                frag_id,
                ranges,
            })
        }
        0x0a => {
            let fingerprint = f.num(8)?;
            let name_len = f.num(1)? as usize;
            let name = f.slice(name_len)?;
            let _extension = f.rest();
            match std::str::from_utf8(name) {
                Ok(name) => Ok(Owned::StreamInfo {
                    fingerprint,
                    name: name.to_owned(),
                }),
                Err(e) => bad(Malformed::SchemaNameNotUtf8 {
                    at: e.valid_up_to(),
                }),
            }
        }
        _ => unreachable!("kind {kind:#04x} is defined"),
    }
}

/// A whole datagram by §3, §4 and §7: the header, then the messages in
/// order up to the end or to padding; the first failing check decides.
fn spec_decode(b: &[u8]) -> Result<(DatagramHeader, Vec<Owned>), DecodeError> {
    let present = b.len().min(4);
    if b[..present] != b"GRPV"[..present] {
        let mut found = [0u8; 4];
        found[..present].copy_from_slice(&b[..present]);
        return Err(DecodeError::BadMagic { found });
    }
    if b.len() < 28 {
        return Err(DecodeError::ShortHeader { len: b.len() });
    }
    if b[4] != 1 {
        return Err(DecodeError::UnsupportedVersion { version: b[4] });
    }
    // §11: bit 0 (AUTH), with only bits 1 to 3 beside it, is a sealed
    // datagram; anything else non-zero is unsupported.
    if b[5] & 0x01 != 0 && b[5] & !0x0f == 0 {
        return Err(DecodeError::NoKey { flags: b[5] });
    }
    if b[5] != 0 {
        return Err(DecodeError::UnsupportedFlags { flags: b[5] });
    }
    let header = DatagramHeader {
        stream: StreamId(u32::try_from(be(b, 8, 4).unwrap()).unwrap()),
        session: SessionId(be(b, 12, 8).unwrap()),
        datagram_seq: be(b, 20, 8).unwrap(),
    };
    let mut msgs = Vec::new();
    let mut at = 28;
    while at < b.len() && b[at] != 0x00 {
        if b.len() - at < 4 {
            return Err(DecodeError::TruncatedMessageHeader { offset: at });
        }
        let declared = be(b, at + 2, 2).unwrap() as usize;
        let available = b.len() - at - 4;
        if declared > available {
            return Err(DecodeError::MessageOverrun {
                offset: at,
                declared,
                available,
            });
        }
        msgs.push(spec_body(b[at], &b[at + 4..at + 4 + declared])?);
        at += 4 + declared;
    }
    if msgs.is_empty() {
        return Err(DecodeError::Empty);
    }
    Ok((header, msgs))
}

/// The decoder accepts `bytes` exactly when [`spec_decode`] does, with the
/// same header and messages, field by field; otherwise both report the same
/// error.
#[track_caller]
fn assert_agrees_with_spec(bytes: &[u8]) {
    match (Datagram::decode(bytes), spec_decode(bytes)) {
        (Ok(d), Ok((header, want))) => {
            assert_eq!(d.header(), header, "{bytes:02x?}");
            let want: Vec<Message<'_>> = want.iter().map(Owned::msg).collect();
            assert_eq!(d.messages().collect::<Vec<_>>(), want, "{bytes:02x?}");
        }
        (Err(got), Err(want)) => assert_eq!(got, want, "{bytes:02x?}"),
        (Ok(d), Err(want)) => panic!(
            "accepted ({} messages), PROTOCOL.md says {want:?}: {bytes:02x?}",
            d.messages().count()
        ),
        (Err(got), Ok(_)) => panic!("rejected with {got:?}, PROTOCOL.md accepts: {bytes:02x?}"),
    }
}

/// Where each message of `msgs` starts in a datagram carrying them in order.
fn starts(msgs: &[Message<'_>]) -> Vec<usize> {
    msgs.iter()
        .scan(HEADER_LEN, |at, m| {
            let s = *at;
            *at += m.encoded_len();
            Some(s)
        })
        .collect()
}

/// Decodes `bytes` expecting either `Err(err)` or the messages `msgs`.
#[track_caller]
fn assert_decodes(bytes: &[u8], want: Result<&[Message<'_>], DecodeError>) {
    match (Datagram::decode(bytes), want) {
        (Ok(d), Ok(msgs)) => assert_eq!(d.messages().collect::<Vec<_>>(), msgs),
        (Err(got), Err(want)) => assert_eq!(got, want),
        (got, want) => panic!("got {got:?}, want {want:?}"),
    }
}

/// Fields of a message starting at `s` that the rules of §4 and §7 are
/// about, as (position, width): its kind byte and `length`, a `key_len`, a
/// `range_count`, a fragment's `total_len`, `offset` and `inner_kind`, and
/// the `delta_flags` and `leaf_flags` bytes.
fn rule_fields(m: &Message<'_>, s: usize) -> Vec<(usize, usize)> {
    let b = s + MESSAGE_HEADER_LEN;
    let mut out = vec![(s, 1), (s + 2, 2)];
    match m {
        Message::Delta(_) | Message::Retransmit(_) | Message::LeafSnapshot(_) => {
            out.extend([(b + 16, 1), (b + 17, 2)]);
        }
        Message::Nak(_) => out.push((b + 4, 2)),
        Message::FragNak(_) => out.push((b + 8, 2)),
        Message::Fragment(_) => out.extend([(b + 4, 4), (b + 8, 4), (b + 12, 1)]),
        Message::StreamInfo(_) => out.push((b + 8, 1)),
        _ => {}
    }
    out
}

/// Writes the low `width` bytes of `v` big-endian into `bytes[at..]`.
fn put_be(bytes: &mut [u8], at: usize, width: usize, v: u64) {
    bytes[at..at + width].copy_from_slice(&v.to_be_bytes()[8 - width..]);
}

/// Where the fields of a message of `m`'s kind end, up to and including
/// the variable part its length fields require (key, ranges), as §4 lays
/// them out: a body declared shorter than the last one is `body_too_short`
/// at the first one past it.
fn field_ends(m: &Message<'_>) -> Vec<usize> {
    match m {
        Message::Delta(d) | Message::Retransmit(d) => vec![8, 16, 17, 19, 19 + d.key.len()],
        Message::LeafSnapshot(s) => vec![4, 8, 16, 17, 19, 19 + s.key.len()],
        Message::CycleBegin(_) | Message::CycleEnd(_) => vec![4, 12, 16],
        Message::Heartbeat(_) => vec![8, 16, 20],
        Message::Nak(n) => vec![4, 6, 6 + 16 * n.ranges.len()],
        Message::FragNak(n) => vec![4, 8, 10, 10 + 8 * n.ranges.len()],
        Message::Fragment(_) => vec![4, 8, 12, 13],
        Message::StreamInfo(i) => vec![8, 9, 9 + i.name.len()],
        _ => vec![],
    }
}

/// A mutation that knows the datagram's layout: one of its
/// [`rule_fields`] nudged by a small amount or set to a small or any value.
#[derive(Clone, Debug)]
enum FieldTweak {
    Add(Index, i64),
    Set(Index, u32),
}

fn field_tweak() -> impl Strategy<Value = FieldTweak> {
    prop_oneof![
        3 => (any::<Index>(), prop_oneof![-3i64..=3, -300i64..=300])
            .prop_map(|(i, d)| FieldTweak::Add(i, d)),
        1 => (any::<Index>(), prop_oneof![0u32..=9, any::<u32>()])
            .prop_map(|(i, v)| FieldTweak::Set(i, v)),
    ]
}

fn tweak(bytes: &mut [u8], fields: &[(usize, usize)], t: &FieldTweak) {
    let (FieldTweak::Add(i, _) | FieldTweak::Set(i, _)) = t;
    let (at, width) = fields[i.index(fields.len())];
    let new = match t {
        FieldTweak::Add(_, d) => be(bytes, at, width).unwrap().wrapping_add(*d as u64),
        FieldTweak::Set(_, v) => u64::from(*v),
    };
    put_be(bytes, at, width, new);
}

/// Messages for the reference comparison: those of [`loose_message`], and
/// small leaf snapshots (values and tombstones) so that their flag rules get
/// exercised as often as those of deltas.
fn spec_message() -> impl Strategy<Value = Owned> {
    prop_oneof![
        4 => loose_message(),
        1 => (loose_u32(), loose_u32(), loose_u64(), bytes(3), proptest::option::of(bytes(3)))
            .prop_map(|(cycle, position, leaf_seq, key, value)| Owned::Snapshot {
                cycle,
                position,
                leaf_seq,
                key,
                value,
            }),
    ]
}

/// A datagram of `msgs` written without the encoder's checks, and where its
/// header bytes (magic, version, flags, reserved) and [`rule_fields`] are.
fn raw_datagram(header: &DatagramHeader, msgs: &[Message<'_>]) -> (Vec<u8>, Vec<(usize, usize)>) {
    let mut bytes = encode(header, &[]);
    let mut fields: Vec<(usize, usize)> = (0..8).map(|i| (i, 1)).collect();
    for m in msgs {
        fields.extend(rule_fields(m, bytes.len()));
        bytes.extend(msg_bytes(m.kind_byte(), &raw_body(m)));
    }
    (bytes, fields)
}

/// Mutations for the reference comparison: those of [`mutation`], and a
/// header byte (magic, version, flags, reserved) set to anything.
fn spec_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        6 => mutation(),
        1 => (0usize..8, any::<u8>()).prop_map(|(i, b)| Mutation::SetAt(i, b)),
    ]
}

/// A copy of `bytes` with `v` written at `at` must decode to `Err(want)`,
/// and the reference decoder must agree.
#[track_caller]
fn assert_edit_rejected(bytes: &[u8], at: usize, width: usize, v: u64, want: DecodeError) {
    let mut copy = bytes.to_vec();
    put_be(&mut copy, at, width, v);
    assert_decodes(&copy, Err(want));
    assert_agrees_with_spec(&copy);
}

proptest! {
    /// A valid datagram cut short anywhere is rejected with the error §7
    /// names for where the cut falls (in the header, in a message header, in
    /// a body), except where the format allows a shorter datagram: a cut
    /// exactly between two messages, or in the padding, leaves a valid
    /// datagram carrying the messages before the cut.
    #[test]
    fn every_truncation_is_rejected_or_a_prefix(
        owned in vec(message(), 1..6),
        header in header(),
        padding in prop_oneof![3 => Just(0usize), 1 => 1usize..40],
    ) {
        let msgs: Vec<Message<'_>> = owned.iter().map(Owned::msg).collect();
        let mut bytes = encode(&header, &msgs);
        bytes.resize(bytes.len() + padding, 0);
        let starts = starts(&msgs);
        assert_decodes(&bytes, Ok(&msgs));
        for cut in 0..bytes.len() {
            // The messages wholly before the cut; the cut is in the next one.
            let whole = starts
                .iter()
                .zip(&msgs)
                .take_while(|(&s, m)| s + m.encoded_len() <= cut)
                .count();
            let want = if cut < HEADER_LEN {
                Err(DecodeError::ShortHeader { len: cut })
            } else if whole == msgs.len() || cut == starts[whole] {
                if whole == 0 {
                    Err(DecodeError::Empty)
                } else {
                    Ok(&msgs[..whole])
                }
            } else if cut - starts[whole] < MESSAGE_HEADER_LEN {
                Err(DecodeError::TruncatedMessageHeader { offset: starts[whole] })
            } else {
                Err(DecodeError::MessageOverrun {
                    offset: starts[whole],
                    declared: msgs[whole].body_len(),
                    available: cut - starts[whole] - MESSAGE_HEADER_LEN,
                })
            };
            assert_decodes(&bytes[..cut], want);
        }
    }

    /// In a valid datagram, each length field of each message in turn is
    /// made to run past what holds it, and the datagram is rejected at that
    /// message with the error §7 names: a message `length` past the end of
    /// the datagram (by one byte, and by more) is `message_overrun`; a
    /// `length` that cuts the fixed fields, or the key or ranges the body's
    /// own length fields announce, is `body_too_short` at the first field
    /// cut; a `key_len` or `range_count` past the body is `body_too_short`,
    /// a `range_count` of 0 `empty_nak`; a fragment `total_len` or `offset`
    /// that puts its data past `total_len` is `fragment_out_of_bounds` (a
    /// zero `total_len`, or no data left, `empty_fragment`).
    #[test]
    fn length_fields_running_past_are_rejected(
        owned in vec(message(), 1..6),
        header in header(),
        padding in prop_oneof![3 => Just(0usize), 1 => 1usize..40],
        extra in any::<u16>(),
        pick in any::<Index>(),
    ) {
        let msgs: Vec<Message<'_>> = owned.iter().map(Owned::msg).collect();
        let mut bytes = encode(&header, &msgs);
        bytes.resize(bytes.len() + padding, 0);
        let extra = usize::from(extra);
        for (m, s) in msgs.iter().zip(starts(&msgs)) {
            let b = s + MESSAGE_HEADER_LEN;
            let body_len = m.body_len();
            let bad = |reason| malformed(MessageKind::from_u8(m.kind_byte()).unwrap(), reason);
            let short = |needed, available| bad(Malformed::BodyTooShort { needed, available });

            let available = bytes.len() - b;
            for declared in [available + 1, available + 1 + extra % (0xffff - available)] {
                let want = DecodeError::MessageOverrun { offset: s, declared, available };
                assert_edit_rejected(&bytes, s + 2, 2, declared as u64, want);
            }

            let ends = field_ends(m);
            if let Some(&need) = ends.last() {
                for declared in [need - 1, pick.index(need)] {
                    let needed = *ends.iter().find(|&&e| e > declared).unwrap();
                    assert_edit_rejected(&bytes, s + 2, 2, declared as u64, short(needed, declared));
                }
            }

            match m {
                Message::Delta(_) | Message::Retransmit(_) | Message::LeafSnapshot(_) => {
                    let fits = body_len - 19;
                    for key_len in [fits + 1, fits + 1 + extra % (0xffff - fits)] {
                        let want = short(19 + key_len, body_len);
                        assert_edit_rejected(&bytes, b + 17, 2, key_len as u64, want);
                    }
                }
                Message::Nak(_) | Message::FragNak(_) => {
                    let (at, fixed, size) = if matches!(m, Message::Nak(_)) {
                        (b + 4, 6, 16)
                    } else {
                        (b + 8, 10, 8)
                    };
                    let fits = (body_len - fixed) / size;
                    for count in [fits + 1, (fits + 1).max(extra)] {
                        let want = short(fixed + size * count, body_len);
                        assert_edit_rejected(&bytes, at, 2, count as u64, want);
                    }
                    assert_edit_rejected(&bytes, at, 2, 0, bad(Malformed::EmptyNak));
                }
                Message::Fragment(f) => {
                    let len = f.data.len() as u64;
                    let end = u64::from(f.offset) + len;
                    for total in [end - 1, pick.index(end as usize) as u64] {
                        let want = if total == 0 {
                            bad(Malformed::EmptyFragment)
                        } else {
                            bad(Malformed::FragmentOutOfBounds {
                                offset: f.offset,
                                end,
                                total_len: total as u32,
                            })
                        };
                        assert_edit_rejected(&bytes, b + 4, 4, total, want);
                    }
                    let first_past = u64::from(f.total_len) - len + 1;
                    if first_past <= u64::from(u32::MAX) {
                        let span = (u64::from(u32::MAX) - first_past) as usize + 1;
                        for offset in [first_past, first_past + pick.index(span) as u64] {
                            let want = bad(Malformed::FragmentOutOfBounds {
                                offset: offset as u32,
                                end: offset + len,
                                total_len: f.total_len,
                            });
                            assert_edit_rejected(&bytes, b + 8, 4, offset, want);
                        }
                    }
                    assert_edit_rejected(&bytes, s + 2, 2, 13, bad(Malformed::EmptyFragment));
                }
                _ => {}
            }
        }
    }

    /// Valid and invalid messages (written without the encoder's checks),
    /// then each header byte and each of the [`rule_fields`] in turn edited
    /// alone (plus and minus one, all ones, each bit of its low byte and its
    /// top bit flipped, 0 to 10): the decoder agrees with the reference
    /// decoder on every edit, field by field or error by error.
    #[test]
    fn every_field_edit_agrees_with_the_spec(
        owned in vec(spec_message(), 1..4),
        header in header(),
    ) {
        let msgs: Vec<Message<'_>> = owned.iter().map(Owned::msg).collect();
        let (bytes, fields) = raw_datagram(&header, &msgs);
        assert_agrees_with_spec(&bytes);
        let mut copy = bytes.clone();
        for &(at, width) in &fields {
            let v = be(&bytes, at, width).unwrap();
            let top = 1u64 << (8 * width - 1);
            let mut edits = vec![v.wrapping_add(1), v.wrapping_sub(1), 0, u64::MAX, v ^ top];
            edits.extend((0..8).map(|bit| v ^ (1 << bit)));
            edits.extend(1..=10);
            for new in edits {
                put_be(&mut copy, at, width, new);
                assert_agrees_with_spec(&copy);
            }
            copy[at..at + width].copy_from_slice(&bytes[at..at + width]);
        }
    }

    /// Valid and invalid messages (written without the encoder's checks),
    /// optionally followed by padding with junk after it, then kind, length
    /// and flag fields nudged or set, and bytes flipped, set, inserted, removed or cut: after
    /// each step the decoder accepts exactly what the reference decoder
    /// written from PROTOCOL.md accepts, with the same fields, and otherwise
    /// reports the same error.
    #[test]
    fn mutated_datagrams_agree_with_the_spec(
        owned in vec(spec_message(), 1..5),
        header in header(),
        padding in proptest::option::weighted(0.2, bytes(8)),
        tweaks in vec(field_tweak(), 0..4),
        mutations in vec(spec_mutation(), 0..4),
    ) {
        let msgs: Vec<Message<'_>> = owned.iter().map(Owned::msg).collect();
        let (mut bytes, fields) = raw_datagram(&header, &msgs);
        if let Some(junk) = padding {
            bytes.push(0x00);
            bytes.extend(junk);
        }
        assert_agrees_with_spec(&bytes);
        for t in &tweaks {
            tweak(&mut bytes, &fields, t);
            assert_agrees_with_spec(&bytes);
        }
        for m in &mutations {
            apply(&mut bytes, m);
            assert_agrees_with_spec(&bytes);
        }
    }
}

// ---------------------------------------------------------------------------
// Header errors
// ---------------------------------------------------------------------------

#[test]
fn valid_datagram_decodes() {
    let bytes = datagram(&[(0x06, &heartbeat_body(2))]);
    let d = Datagram::decode(&bytes).unwrap();
    assert_eq!(d.header(), H);
    assert_eq!(d.messages().collect::<Vec<_>>(), vec![heartbeat(2)]);
}

#[test]
fn short_header() {
    let full = datagram(&[(0x06, &heartbeat_body(2))]);
    // Fewer than four bytes are short only if they could start `GRPV`.
    for len in [0, 1, 2, 3, 4, 5, HEADER_LEN - 1] {
        assert_rejects(
            &full[..len],
            DecodeError::ShortHeader { len },
            "short_header",
        );
    }
}

#[test]
fn bad_magic() {
    let mut full = datagram(&[(0x06, &heartbeat_body(2))]);
    full[0] = b'X';
    assert_rejects(
        &full,
        DecodeError::BadMagic { found: *b"XRPV" },
        "bad_magic",
    );
    // A short foreign datagram is reported as foreign, not as short.
    assert_rejects(
        b"hello",
        DecodeError::BadMagic { found: *b"hell" },
        "bad_magic",
    );
    assert_rejects(
        b"XRPV",
        DecodeError::BadMagic { found: *b"XRPV" },
        "bad_magic",
    );
    assert_rejects(
        &full[..HEADER_LEN - 1],
        DecodeError::BadMagic { found: *b"XRPV" },
        "bad_magic",
    );
    // Fewer than four bytes that cannot start `GRPV`: foreign, the missing
    // bytes shown as 0.
    for (bytes, found) in [
        (&b"X"[..], *b"X\0\0\0"),
        (b"\0", [0; 4]),
        (b"GX", *b"GX\0\0"),
        (b"XR", *b"XR\0\0"),
        (b"GRX", *b"GRX\0"),
        (b"GRp", *b"GRp\0"),
        (b"hel", *b"hel\0"),
    ] {
        assert_rejects(bytes, DecodeError::BadMagic { found }, "bad_magic");
    }
}

#[test]
fn unsupported_version() {
    for version in [0, 2, 0xff] {
        let mut b = header_bytes(version, 0);
        b.extend(msg_bytes(0x06, &heartbeat_body(2)));
        assert_rejects(
            &b,
            DecodeError::UnsupportedVersion { version },
            "unsupported_version",
        );
    }
}

#[test]
fn unsupported_flags() {
    for flags in [0x02, 0x04, 0x06, 0x08, 0x0e, 0x10, 0x11, 0x80, 0x81] {
        let mut b = header_bytes(VERSION, flags);
        b.extend(msg_bytes(0x06, &heartbeat_body(2)));
        assert_rejects(
            &b,
            DecodeError::UnsupportedFlags { flags },
            "unsupported_flags",
        );
    }
}

#[test]
fn sealed_datagrams_need_a_key() {
    for flags in [0x01, 0x03, 0x05, 0x07, 0x09, 0x0b, 0x0f] {
        let mut b = header_bytes(VERSION, flags);
        b.extend(msg_bytes(0x06, &heartbeat_body(2)));
        assert_rejects(&b, DecodeError::NoKey { flags }, "no_key");
    }
}

#[test]
fn reserved_and_message_flags_are_ignored() {
    let mut b = datagram(&[(0x06, &heartbeat_body(2)), (0x06, &heartbeat_body(3))]);
    b[6] = 0xab; // reserved
    b[7] = 0xcd;
    b[HEADER_LEN + 1] = 0xff; // msg_flags of the first message
    let d = Datagram::decode(&b).unwrap();
    assert_eq!(d.header(), H);
    assert_eq!(
        d.messages().collect::<Vec<_>>(),
        vec![heartbeat(2), heartbeat(3)]
    );
}

#[test]
fn empty() {
    assert_rejects(&header_bytes(VERSION, 0), DecodeError::Empty, "empty");
    // Padding only, of any length.
    for pad in [1, 3, 4, 100] {
        let mut b = header_bytes(VERSION, 0);
        b.extend(vec![0u8; pad]);
        assert_rejects(&b, DecodeError::Empty, "empty");
    }
    // Padding hides whatever follows it, even a message.
    let mut b = header_bytes(VERSION, 0);
    b.push(0x00);
    b.extend(msg_bytes(0x06, &heartbeat_body(2)));
    assert_rejects(&b, DecodeError::Empty, "empty");
}

// ---------------------------------------------------------------------------
// Message walker errors
// ---------------------------------------------------------------------------

#[test]
fn truncated_message_header() {
    for tail in [&[0x06][..], &[0x06, 0x00], &[0x06, 0x00, 0x00]] {
        let mut b = header_bytes(VERSION, 0);
        b.extend(tail);
        assert_rejects(
            &b,
            DecodeError::TruncatedMessageHeader { offset: HEADER_LEN },
            "truncated_message_header",
        );
    }
    // After a valid message, the offset points at the truncated header.
    let mut b = datagram(&[(0x06, &heartbeat_body(2))]);
    b.extend([0x01, 0x00]);
    assert_rejects(
        &b,
        DecodeError::TruncatedMessageHeader {
            offset: HEADER_LEN + MESSAGE_HEADER_LEN + 20,
        },
        "truncated_message_header",
    );
}

#[test]
fn message_overrun() {
    let mut b = header_bytes(VERSION, 0);
    b.extend([0x06, 0x00, 0x00, 21]);
    b.extend(heartbeat_body(2));
    assert_rejects(
        &b,
        DecodeError::MessageOverrun {
            offset: HEADER_LEN,
            declared: 21,
            available: 20,
        },
        "message_overrun",
    );
    // Second message, declaring the largest length with nothing left.
    let mut b = datagram(&[(0x06, &heartbeat_body(2))]);
    b.extend([0x20, 0x00, 0xff, 0xff]);
    assert_rejects(
        &b,
        DecodeError::MessageOverrun {
            offset: HEADER_LEN + 24,
            declared: 0xffff,
            available: 0,
        },
        "message_overrun",
    );
}

#[test]
fn unknown_critical_kind() {
    for kind in [0x80, 0x81, 0xfe, 0xff] {
        let b = datagram(&[(kind, &[]), (0x06, &heartbeat_body(2))]);
        assert_rejects(
            &b,
            DecodeError::UnknownCriticalKind { kind },
            "unknown_critical_kind",
        );
        // Also after a valid message, and with a body.
        let b = datagram(&[(0x06, &heartbeat_body(2)), (kind, b"xyz")]);
        assert_rejects(
            &b,
            DecodeError::UnknownCriticalKind { kind },
            "unknown_critical_kind",
        );
    }
}

#[test]
fn a_bad_message_poisons_the_whole_datagram() {
    let b = datagram(&[
        (0x06, &heartbeat_body(2)),
        (0x01, &delta_body(0, 0, 0, b"k", b"")),
    ]);
    assert_rejects(
        &b,
        malformed(MessageKind::Delta, Malformed::ZeroSeq),
        "zero_seq",
    );
}

// ---------------------------------------------------------------------------
// Malformed bodies
// ---------------------------------------------------------------------------

#[test]
fn body_too_short_for_each_kind() {
    // `needed` counts the bytes up to the end of the first field that does not
    // fit.
    let delta = delta_body(5, 4, 0, b"key", b"");
    let snap = snapshot_body(0, b"key", b"");
    let cycle = [0u8; 16];
    let nak = nak_body(&[(1, 2), (3, 4)]);
    let frag = fragment_body(10, 0, 0x01, b"");
    let frag_nak = frag_nak_body(&[(0, 2), (3, 4)]);
    let cases: Vec<(u8, MessageKind, Vec<u8>, usize)> = vec![
        (0x01, MessageKind::Delta, vec![], 8),
        // seq and prev_leaf_seq, no delta_flags.
        (0x01, MessageKind::Delta, delta[..16].to_vec(), 17),
        // Half of key_len.
        (0x01, MessageKind::Delta, delta[..18].to_vec(), 19),
        // key_len says 3, only 2 key bytes present.
        (0x01, MessageKind::Delta, delta[..21].to_vec(), 22),
        (0x02, MessageKind::Retransmit, delta[..15].to_vec(), 16),
        (0x02, MessageKind::Retransmit, delta[..17].to_vec(), 19),
        (0x03, MessageKind::LeafSnapshot, snap[..16].to_vec(), 17),
        (0x03, MessageKind::LeafSnapshot, snap[..18].to_vec(), 19),
        (0x03, MessageKind::LeafSnapshot, snap[..21].to_vec(), 22),
        (0x04, MessageKind::CycleBegin, cycle[..15].to_vec(), 16),
        (0x04, MessageKind::CycleBegin, vec![], 4),
        (0x05, MessageKind::CycleEnd, cycle[..11].to_vec(), 12),
        (
            0x06,
            MessageKind::Heartbeat,
            heartbeat_body(1)[..19].to_vec(),
            20,
        ),
        (
            0x06,
            MessageKind::Heartbeat,
            heartbeat_body(1)[..10].to_vec(),
            16,
        ),
        (0x07, MessageKind::Nak, nak[..5].to_vec(), 6),
        // range_count says 2, one range and a half present.
        (0x07, MessageKind::Nak, nak[..6 + 24].to_vec(), 6 + 32),
        (0x08, MessageKind::Fragment, frag[..12].to_vec(), 13),
        (0x08, MessageKind::Fragment, vec![1], 4),
        (0x09, MessageKind::FragNak, vec![], 4),
        (0x09, MessageKind::FragNak, frag_nak[..9].to_vec(), 10),
        // range_count says 2, one range and a half present.
        (
            0x09,
            MessageKind::FragNak,
            frag_nak[..10 + 12].to_vec(),
            10 + 16,
        ),
    ];
    for (byte, kind, body, needed) in cases {
        assert_eq!(kind as u8, byte);
        let available = body.len();
        assert_rejects(
            &datagram(&[(byte, &body)]),
            malformed(kind, Malformed::BodyTooShort { needed, available }),
            "body_too_short",
        );
        assert_eq!(
            Message::decode_body(byte, &body).unwrap_err(),
            malformed(kind, Malformed::BodyTooShort { needed, available }),
        );
    }
}

#[test]
fn zero_seq() {
    for (byte, kind) in [(0x01, MessageKind::Delta), (0x02, MessageKind::Retransmit)] {
        assert_rejects(
            &datagram(&[(byte, &delta_body(0, 0, 0, b"k", b"v"))]),
            malformed(kind, Malformed::ZeroSeq),
            "zero_seq",
        );
    }
}

#[test]
fn prev_not_before_seq() {
    for (seq, prev) in [(5, 5), (5, 6), (1, u64::MAX)] {
        assert_rejects(
            &datagram(&[(0x01, &delta_body(seq, prev, 0, b"k", b""))]),
            malformed(
                MessageKind::Delta,
                Malformed::PrevNotBeforeSeq { seq, prev },
            ),
            "prev_not_before_seq",
        );
    }
    // The boundary is accepted.
    let b = datagram(&[(0x02, &delta_body(5, 4, 0, b"k", b""))]);
    assert!(Datagram::decode(&b).is_ok());
}

#[test]
fn unknown_delta_flags() {
    for (byte, kind) in [(0x01, MessageKind::Delta), (0x02, MessageKind::Retransmit)] {
        for (prev, flags) in [
            (0, 0x04),
            (0, 0x07),
            (0, 0x80),
            (0, 0xff),
            (4, 0x04),
            (4, 0x06),
        ] {
            assert_rejects(
                &datagram(&[(byte, &delta_body(5, prev, flags, b"k", b"v"))]),
                malformed(kind, Malformed::UnknownDeltaFlags(flags)),
                "unknown_delta_flags",
            );
        }
    }
    // The sequence checks come first.
    assert_rejects(
        &datagram(&[(0x01, &delta_body(0, 0, 0xff, b"k", b""))]),
        malformed(MessageKind::Delta, Malformed::ZeroSeq),
        "zero_seq",
    );
    assert_rejects(
        &datagram(&[(0x01, &delta_body(5, 5, 0xff, b"k", b""))]),
        malformed(
            MessageKind::Delta,
            Malformed::PrevNotBeforeSeq { seq: 5, prev: 5 },
        ),
        "prev_not_before_seq",
    );
}

#[test]
fn creates_with_prev() {
    for (byte, kind) in [(0x01, MessageKind::Delta), (0x02, MessageKind::Retransmit)] {
        for (seq, prev) in [(5, 4), (5, 1), (u64::MAX, u64::MAX - 1)] {
            assert_rejects(
                &datagram(&[(byte, &delta_body(seq, prev, DELTA_FLAG_CREATES, b"k", b"v"))]),
                malformed(kind, Malformed::CreatesWithPrev { prev }),
                "creates_with_prev",
            );
        }
    }
    // With prev_leaf_seq 0 the flag is accepted, and without it prev 0 means
    // "present, untouched since the session started".
    let b = datagram(&[
        (0x01, &delta_body(5, 0, DELTA_FLAG_CREATES, b"k", b"v")),
        (0x02, &delta_body(6, 0, 0, b"k", b"w")),
    ]);
    let creates: Vec<_> = Datagram::decode(&b)
        .unwrap()
        .messages()
        .map(|m| match m {
            Message::Delta(d) | Message::Retransmit(d) => (d.prev_leaf_seq, d.creates),
            other => panic!("{other}"),
        })
        .collect();
    assert_eq!(creates, vec![(SeqNum(0), true), (SeqNum(0), false)]);
}

#[test]
fn creates_round_trips() {
    for retransmit in [false, true] {
        let d = Delta {
            seq: SeqNum(1),
            prev_leaf_seq: SeqNum::NONE,
            creates: true,
            removes: false,
            key: b"k1",
            payload: b"\x0a",
        };
        let m = if retransmit {
            Message::Retransmit(d)
        } else {
            Message::Delta(d)
        };
        let bytes = encode(&H, &[m]);
        let body = &bytes[HEADER_LEN + MESSAGE_HEADER_LEN..];
        assert_eq!(body, delta_body(1, 0, DELTA_FLAG_CREATES, b"k1", b"\x0a"));
        assert_eq!(body[16], 0x01, "delta_flags at offset 16");
        let got: Vec<_> = Datagram::decode(&bytes).unwrap().messages().collect();
        assert_eq!(got, vec![m]);
        let name = if retransmit { "Retransmit" } else { "Delta" };
        assert_eq!(
            m.to_string(),
            format!("{name} seq=1 prev_leaf_seq=0 creates key=6b31 payload=0a")
        );
        // Without the flag, the byte is 0 and the text has no `creates`.
        let plain = Message::Delta(Delta {
            creates: false,
            ..d
        });
        let bytes = encode(&H, &[plain]);
        assert_eq!(bytes[HEADER_LEN + MESSAGE_HEADER_LEN + 16], 0);
        assert_eq!(
            plain.to_string(),
            "Delta seq=1 prev_leaf_seq=0 key=6b31 payload=0a"
        );
    }
}

#[test]
fn unknown_leaf_flags() {
    for flags in [0x02, 0x03, 0x80, 0xff] {
        assert_rejects(
            &datagram(&[(0x03, &snapshot_body(flags, b"k", b""))]),
            malformed(
                MessageKind::LeafSnapshot,
                Malformed::UnknownLeafFlags(flags),
            ),
            "unknown_leaf_flags",
        );
    }
}

#[test]
fn tombstone_with_value() {
    assert_rejects(
        &datagram(&[(0x03, &snapshot_body(LEAF_FLAG_TOMBSTONE, b"k", b"v"))]),
        malformed(MessageKind::LeafSnapshot, Malformed::TombstoneWithValue),
        "tombstone_with_value",
    );
    // Without a value it is a tombstone; without the flag, an empty value.
    let b = datagram(&[
        (0x03, &snapshot_body(LEAF_FLAG_TOMBSTONE, b"k", b"")),
        (0x03, &snapshot_body(0, b"k", b"")),
    ]);
    let values: Vec<_> = Datagram::decode(&b)
        .unwrap()
        .messages()
        .map(|m| match m {
            Message::LeafSnapshot(s) => s.value,
            other => panic!("{other}"),
        })
        .collect();
    assert_eq!(values, vec![None, Some(&[][..])]);
}

#[test]
fn empty_nak() {
    assert_rejects(
        &datagram(&[(0x07, &nak_body(&[]))]),
        malformed(MessageKind::Nak, Malformed::EmptyNak),
        "empty_nak",
    );
}

#[test]
fn bad_nak_range() {
    for (ranges, first, last) in [
        (&[(0, 5)][..], 0, 5),
        (&[(0, 0)], 0, 0),
        (&[(7, 6)], 7, 6),
        (&[(1, 1), (u64::MAX, 1)], u64::MAX, 1),
    ] {
        assert_rejects(
            &datagram(&[(0x07, &nak_body(ranges))]),
            malformed(MessageKind::Nak, Malformed::BadNakRange { first, last }),
            "bad_nak_range",
        );
    }
    let ok = datagram(&[(0x07, &nak_body(&[(1, 1), (5, u64::MAX)]))]);
    assert!(Datagram::decode(&ok).is_ok());
}

#[test]
fn empty_frag_nak() {
    assert_rejects(
        &datagram(&[(0x09, &frag_nak_body(&[]))]),
        malformed(MessageKind::FragNak, Malformed::EmptyNak),
        "empty_nak",
    );
}

#[test]
fn bad_frag_range() {
    for (ranges, offset, end) in [
        (&[(5, 5)][..], 5, 5),
        (&[(0, 0)], 0, 0),
        (&[(7, 6)], 7, 6),
        (&[(0, 1), (u32::MAX, 1)], u32::MAX, 1),
    ] {
        assert_rejects(
            &datagram(&[(0x09, &frag_nak_body(ranges))]),
            malformed(
                MessageKind::FragNak,
                Malformed::BadFragRange { offset, end },
            ),
            "bad_frag_range",
        );
    }
    let ok = datagram(&[(0x09, &frag_nak_body(&[(0, 1), (5, u32::MAX)]))]);
    let msgs: Vec<_> = Datagram::decode(&ok).unwrap().messages().collect();
    assert_eq!(
        msgs,
        vec![Message::FragNak(FragNak {
            requester: 0xdead_beef,
            frag_id: 7,
            ranges: FragRanges::from_slice(&[(0, 1), (5, u32::MAX)]),
        })]
    );
    assert_eq!(
        msgs[0].to_string(),
        "FragNak requester=0xdeadbeef frag_id=7 ranges=0..1,5..4294967295"
    );
}

#[test]
fn removes_round_trips() {
    for (creates, removes, flags) in [(false, true, 0x02), (true, true, 0x03)] {
        let d = Delta {
            seq: SeqNum(4),
            prev_leaf_seq: SeqNum::NONE,
            creates,
            removes,
            key: b"k1",
            payload: b"",
        };
        for m in [Message::Delta(d), Message::Retransmit(d)] {
            let bytes = encode(&H, &[m]);
            let body = &bytes[HEADER_LEN + MESSAGE_HEADER_LEN..];
            assert_eq!(body, delta_body(4, 0, flags, b"k1", b""));
            let got: Vec<_> = Datagram::decode(&bytes).unwrap().messages().collect();
            assert_eq!(got, vec![m]);
            assert!(m.to_string().contains(" removes "), "{m}");
        }
    }
    assert_eq!(DELTA_FLAG_REMOVES, 0x02);
}

#[test]
fn empty_fragment() {
    for body in [
        fragment_body(10, 0, 0x01, b""),
        fragment_body(0, 0, 0x01, b"abc"),
    ] {
        assert_rejects(
            &datagram(&[(0x08, &body)]),
            malformed(MessageKind::Fragment, Malformed::EmptyFragment),
            "empty_fragment",
        );
    }
}

#[test]
fn fragment_out_of_bounds() {
    for (total_len, offset, data, end) in [
        (10u32, 8u32, &b"abc"[..], 11u64),
        (14, 10, b"abcde", 15),
        (u32::MAX, u32::MAX, b"a", 1 << 32),
        (3, 0, b"abcd", 4),
    ] {
        assert_rejects(
            &datagram(&[(0x08, &fragment_body(total_len, offset, 0x01, data))]),
            malformed(
                MessageKind::Fragment,
                Malformed::FragmentOutOfBounds {
                    offset,
                    end,
                    total_len,
                },
            ),
            "fragment_out_of_bounds",
        );
    }
    // Exactly at the end is fine.
    let ok = datagram(&[(0x08, &fragment_body(10, 7, 0x01, b"abc"))]);
    assert!(Datagram::decode(&ok).is_ok());
}

#[test]
fn bad_inner_kind() {
    for inner in [0x00, 0x08] {
        assert_rejects(
            &datagram(&[(0x08, &fragment_body(10, 0, inner, b"abc"))]),
            malformed(MessageKind::Fragment, Malformed::BadInnerKind(inner)),
            "bad_inner_kind",
        );
    }
    // Unknown inner kinds pass the codec: reassembly decides.
    for inner in [0x09, 0x7f, 0x80, 0xff] {
        let ok = datagram(&[(0x08, &fragment_body(10, 0, inner, b"abc"))]);
        assert!(Datagram::decode(&ok).is_ok(), "{inner:#04x}");
    }
}

// ---------------------------------------------------------------------------
// Compatible extensions
// ---------------------------------------------------------------------------

#[test]
fn trailing_bytes_after_fixed_fields_are_ignored() {
    let cycle = cat(&[
        &3u32.to_be_bytes(),
        &7u64.to_be_bytes(),
        &2u32.to_be_bytes(),
        b"future",
    ]);
    let b = datagram(&[
        (0x04, &cycle),
        (0x05, &cycle),
        (0x06, &cat(&[&heartbeat_body(2), b"more fields"])),
        (0x07, &cat(&[&nak_body(&[(5, 7)]), b"x"])),
        (0x06, &heartbeat_body(3)),
    ]);
    let ranges = [SeqRange {
        first: SeqNum(5),
        last: SeqNum(7),
    }];
    assert_eq!(
        Datagram::decode(&b).unwrap().messages().collect::<Vec<_>>(),
        vec![
            Message::CycleBegin(CycleBegin {
                cycle: CycleId(3),
                start_seq: SeqNum(7),
                leaf_count: 2
            }),
            Message::CycleEnd(CycleEnd {
                cycle: CycleId(3),
                end_seq: SeqNum(7),
                leaf_count: 2
            }),
            heartbeat(2),
            Message::Nak(Nak {
                requester: 0xdead_beef,
                ranges: NakRanges::from_slice(&ranges),
            }),
            heartbeat(3),
        ]
    );
}

#[test]
fn unknown_kinds_are_yielded_and_skipped() {
    for kind in 0x0b..=0x7fu8 {
        let b = datagram(&[(kind, b"opaque"), (0x06, &heartbeat_body(2)), (kind, b"")]);
        let msgs: Vec<_> = Datagram::decode(&b).unwrap().messages().collect();
        assert_eq!(
            msgs,
            vec![
                Message::Unknown {
                    kind,
                    body: b"opaque"
                },
                heartbeat(2),
                Message::Unknown { kind, body: b"" },
            ]
        );
        // A consumer that skips what it does not know sees the heartbeat only.
        let known: Vec<_> = msgs
            .into_iter()
            .filter(|m| !matches!(m, Message::Unknown { .. }))
            .collect();
        assert_eq!(known, vec![heartbeat(2)]);
        // A datagram of unknown messages only is not empty.
        assert!(Datagram::decode(&datagram(&[(kind, b"")])).is_ok());
        // The decoder never reports a defined kind as unknown.
        assert!(MessageKind::from_u8(kind).is_none());
    }
    for kind in 0x00..=0x09u8 {
        assert_eq!(MessageKind::from_u8(kind).unwrap() as u8, kind);
    }
}

#[test]
fn padding_ends_the_message_area() {
    let mut b = datagram(&[(0x06, &heartbeat_body(2))]);
    // Padding followed by bytes that would be an error if they were parsed.
    b.extend([0x00, 0x80, 0xff, 0xff, 0x01]);
    let d = Datagram::decode(&b).unwrap();
    assert_eq!(d.messages().collect::<Vec<_>>(), vec![heartbeat(2)]);
}

// ---------------------------------------------------------------------------
// The writer
// ---------------------------------------------------------------------------

#[test]
fn failed_push_writes_nothing() {
    let mut buf = vec![0xaa; 100];
    let mut w = DatagramWriter::new(&mut buf, &H).unwrap();
    w.push(&heartbeat(1)).unwrap();
    w.push(&heartbeat(2)).unwrap();
    assert_eq!(w.remaining(), 100 - 28 - 48);
    let payload = [7u8; 10];
    let big = Message::Delta(Delta {
        seq: SeqNum(9),
        prev_leaf_seq: SeqNum::NONE,
        creates: false,
        removes: false,
        key: b"k",
        payload: &payload,
    });
    assert_eq!(big.encoded_len(), 34);
    assert_eq!(
        w.push(&big),
        Err(EncodeError::DoesNotFit {
            needed: 34,
            remaining: 24
        })
    );
    assert_eq!(w.remaining(), 24);
    assert_eq!(w.message_count(), 2);
    // A message that fits exactly still goes in after the failure.
    w.push(&heartbeat(3)).unwrap();
    assert_eq!(w.remaining(), 0);
    assert_eq!(
        w.push(&Message::Unknown {
            kind: 0x20,
            body: b""
        }),
        Err(EncodeError::DoesNotFit {
            needed: 4,
            remaining: 0
        })
    );
    assert_eq!(w.finish(), 100);
    let d = Datagram::decode(&buf).unwrap();
    assert_eq!(
        d.messages().collect::<Vec<_>>(),
        vec![heartbeat(1), heartbeat(2), heartbeat(3)]
    );
}

#[test]
fn failed_push_leaves_the_buffer_untouched() {
    let mut buf = vec![0xaa; 60];
    let mut w = DatagramWriter::new(&mut buf, &H).unwrap();
    w.push(&heartbeat(1)).unwrap();
    let err = w.push(&heartbeat(2)).unwrap_err();
    assert!(matches!(err, EncodeError::DoesNotFit { .. }));
    let huge = vec![0u8; MAX_BODY_LEN + 1];
    let err = w
        .push(&Message::Unknown {
            kind: 0x20,
            body: &huge,
        })
        .unwrap_err();
    assert_eq!(
        err,
        EncodeError::BodyTooLarge {
            len: MAX_BODY_LEN + 1
        }
    );
    let len = w.finish();
    assert_eq!(len, 52);
    assert!(
        buf[len..].iter().all(|&b| b == 0xaa),
        "{:02x?}",
        &buf[len..]
    );
    assert_eq!(
        Datagram::decode(&buf[..len])
            .unwrap()
            .messages()
            .collect::<Vec<_>>(),
        vec![heartbeat(1)]
    );
}

#[test]
fn body_too_large() {
    let mut buf = vec![0u8; HEADER_LEN + MESSAGE_HEADER_LEN + MAX_BODY_LEN + 100];
    let mut w = DatagramWriter::new(&mut buf, &H).unwrap();
    let big = vec![0x5a; MAX_BODY_LEN + 1];
    assert_eq!(
        w.push(&Message::Unknown {
            kind: 0x30,
            body: &big
        }),
        Err(EncodeError::BodyTooLarge {
            len: MAX_BODY_LEN + 1
        })
    );
    // A key over 65535 bytes makes the body too large before the key field
    // can overflow.
    let key = vec![1u8; 70_000];
    assert_eq!(
        w.push(&Message::Delta(Delta {
            seq: SeqNum(1),
            prev_leaf_seq: SeqNum::NONE,
            creates: false,
            removes: false,
            key: &key,
            payload: b""
        })),
        Err(EncodeError::BodyTooLarge { len: 70_019 })
    );
    assert!(w.is_empty());
    // The largest body fits and decodes.
    let max = &big[..MAX_BODY_LEN];
    w.push(&Message::Unknown {
        kind: 0x30,
        body: max,
    })
    .unwrap();
    let len = w.finish();
    assert_eq!(len, HEADER_LEN + MESSAGE_HEADER_LEN + MAX_BODY_LEN);
    assert_eq!(
        Datagram::decode(&buf[..len])
            .unwrap()
            .messages()
            .collect::<Vec<_>>(),
        vec![Message::Unknown {
            kind: 0x30,
            body: max
        }]
    );
}

#[test]
fn field_too_long() {
    let key = vec![1u8; 70_000];
    let mut out = Vec::new();
    let d = Message::Delta(Delta {
        seq: SeqNum(1),
        prev_leaf_seq: SeqNum::NONE,
        creates: false,
        removes: false,
        key: &key,
        payload: b"",
    });
    assert_eq!(
        d.encode_body(&mut out),
        Err(EncodeError::FieldTooLong { field: "key" })
    );
    let s = Message::LeafSnapshot(LeafSnapshot {
        cycle: CycleId(1),
        position: 0,
        leaf_seq: SeqNum(1),
        key: &key,
        value: None,
    });
    assert_eq!(
        s.encode_body(&mut out),
        Err(EncodeError::FieldTooLong { field: "key" })
    );
    let ranges = vec![
        SeqRange {
            first: SeqNum(1),
            last: SeqNum(1)
        };
        65_536
    ];
    let n = Message::Nak(Nak {
        requester: 1,
        ranges: NakRanges::from_slice(&ranges),
    });
    assert_eq!(
        n.encode_body(&mut out),
        Err(EncodeError::FieldTooLong {
            field: "NAK ranges"
        })
    );
    // The largest key works.
    let d = Message::Delta(Delta {
        seq: SeqNum(1),
        prev_leaf_seq: SeqNum::NONE,
        creates: false,
        removes: false,
        key: &key[..65_535],
        payload: b"",
    });
    d.encode_body(&mut out).unwrap();
    assert_eq!(Message::decode_body(0x01, &out).unwrap(), Some(d));
}

#[test]
fn buffer_too_small() {
    for len in [0, 1, HEADER_LEN - 1] {
        let mut buf = vec![0u8; len];
        assert_eq!(
            DatagramWriter::new(&mut buf, &H).unwrap_err(),
            EncodeError::BufferTooSmall { len }
        );
    }
    let mut buf = vec![0u8; HEADER_LEN];
    let mut w = DatagramWriter::new(&mut buf, &H).unwrap();
    assert_eq!(w.remaining(), 0);
    assert!(matches!(
        w.push(&heartbeat(1)),
        Err(EncodeError::DoesNotFit {
            needed: 24,
            remaining: 0
        })
    ));
    assert_eq!(w.finish(), HEADER_LEN);
}

#[test]
fn finish_padded_gives_exact_length_and_same_messages() {
    for target in [HEADER_LEN + 24, HEADER_LEN + 25, HEADER_LEN + 27, 200, 1452] {
        let mut buf = vec![0xaa; 1452];
        let mut w = DatagramWriter::new(&mut buf, &H).unwrap();
        w.push(&heartbeat(1)).unwrap();
        let len = w.finish_padded(target);
        assert_eq!(len, target);
        assert!(buf[HEADER_LEN + 24..len].iter().all(|&b| b == 0));
        assert!(buf[len..].iter().all(|&b| b == 0xaa));
        let d = Datagram::decode(&buf[..len]).unwrap();
        assert_eq!(d.header(), H);
        assert_eq!(d.messages().collect::<Vec<_>>(), vec![heartbeat(1)]);
    }
}

#[test]
fn finish_padded_never_shrinks_and_is_capped_at_the_buffer() {
    for (target, want) in [
        (0, 52),
        (10, 52),
        (52, 52),
        (53, 53),
        (100, 100),
        (1_000, 100),
    ] {
        let mut buf = vec![0xaa; 100];
        let mut w = DatagramWriter::new(&mut buf, &H).unwrap();
        w.push(&heartbeat(1)).unwrap();
        assert_eq!(w.finish_padded(target), want, "target {target}");
        assert!(buf[52..want].iter().all(|&b| b == 0));
        assert!(buf[want..].iter().all(|&b| b == 0xaa));
        assert_eq!(
            Datagram::decode(&buf[..want])
                .unwrap()
                .messages()
                .collect::<Vec<_>>(),
            vec![heartbeat(1)]
        );
    }
    // A full datagram stays as it is.
    let mut buf = vec![0xaa; HEADER_LEN + 24];
    let mut w = DatagramWriter::new(&mut buf, &H).unwrap();
    w.push(&heartbeat(1)).unwrap();
    assert_eq!(w.finish_padded(1_000), HEADER_LEN + 24);
    // So does a datagram with no message (which no receiver accepts).
    let mut buf = vec![0xaa; 64];
    let w = DatagramWriter::new(&mut buf, &H).unwrap();
    assert_eq!(w.finish_padded(40), 40);
    assert_rejects(&buf[..40], DecodeError::Empty, "empty");
}

/// Raw body bytes of `m`, written without [`Message::validate`]: what a
/// careless encoder would send.
fn raw_body(m: &Message<'_>) -> Vec<u8> {
    let mut out = vec![0u8; m.body_len()];
    let mut w = super::cursor::Writer::new(&mut out, 0);
    m.write_body(&mut w).unwrap();
    out
}

#[test]
fn push_refuses_messages_a_receiver_would_reject() {
    let delta = |seq: u64, prev: u64, creates: bool| Delta {
        seq: SeqNum(seq),
        prev_leaf_seq: SeqNum(prev),
        creates,
        removes: false,
        key: b"k",
        payload: b"v",
    };
    let r = |first: u64, last: u64| SeqRange {
        first: SeqNum(first),
        last: SeqNum(last),
    };
    let nak_zero = [r(0, 3)];
    let nak_inverted = [r(1, 1), r(9, 3)];
    let frag_empty = [(7u32, 7u32)];
    let frag_inverted = [(0u32, 1u32), (9, 3)];
    let frag = |total_len: u32, offset: u32, inner_kind: u8, data: &'static [u8]| Fragment {
        frag_id: 1,
        total_len,
        offset,
        inner_kind,
        data,
    };
    let cases: Vec<(Message<'_>, Malformed)> = vec![
        (Message::Delta(delta(0, 0, false)), Malformed::ZeroSeq),
        (Message::Retransmit(delta(0, 0, true)), Malformed::ZeroSeq),
        (
            Message::Delta(delta(5, 5, false)),
            Malformed::PrevNotBeforeSeq { seq: 5, prev: 5 },
        ),
        (
            Message::Retransmit(delta(5, 9, true)),
            Malformed::PrevNotBeforeSeq { seq: 5, prev: 9 },
        ),
        (
            Message::Delta(delta(5, 4, true)),
            Malformed::CreatesWithPrev { prev: 4 },
        ),
        (
            Message::Retransmit(delta(5, 1, true)),
            Malformed::CreatesWithPrev { prev: 1 },
        ),
        (
            Message::Nak(Nak {
                requester: 1,
                ranges: NakRanges::from_slice(&[]),
            }),
            Malformed::EmptyNak,
        ),
        (
            Message::Nak(Nak {
                requester: 1,
                ranges: NakRanges::from_slice(&nak_zero),
            }),
            Malformed::BadNakRange { first: 0, last: 3 },
        ),
        (
            Message::Nak(Nak {
                requester: 1,
                ranges: NakRanges::from_slice(&nak_inverted),
            }),
            Malformed::BadNakRange { first: 9, last: 3 },
        ),
        (
            Message::FragNak(FragNak {
                requester: 1,
                frag_id: 2,
                ranges: FragRanges::from_slice(&[]),
            }),
            Malformed::EmptyNak,
        ),
        (
            Message::FragNak(FragNak {
                requester: 1,
                frag_id: 2,
                ranges: FragRanges::from_slice(&frag_empty),
            }),
            Malformed::BadFragRange { offset: 7, end: 7 },
        ),
        (
            Message::FragNak(FragNak {
                requester: 1,
                frag_id: 2,
                ranges: FragRanges::from_slice(&frag_inverted),
            }),
            Malformed::BadFragRange { offset: 9, end: 3 },
        ),
        (
            Message::Fragment(frag(10, 0, 0x01, b"")),
            Malformed::EmptyFragment,
        ),
        (
            Message::Fragment(frag(0, 0, 0x01, b"abc")),
            Malformed::EmptyFragment,
        ),
        (
            Message::Fragment(frag(10, 8, 0x01, b"abc")),
            Malformed::FragmentOutOfBounds {
                offset: 8,
                end: 11,
                total_len: 10,
            },
        ),
        (
            Message::Fragment(frag(u32::MAX, u32::MAX, 0x01, b"a")),
            Malformed::FragmentOutOfBounds {
                offset: u32::MAX,
                end: 1 << 32,
                total_len: u32::MAX,
            },
        ),
        (
            Message::Fragment(frag(10, 0, 0x00, b"abc")),
            Malformed::BadInnerKind(0x00),
        ),
        (
            Message::Fragment(frag(10, 0, 0x08, b"abc")),
            Malformed::BadInnerKind(0x08),
        ),
    ];
    let mut reserved = Vec::new();
    for kind in 0x00..=0x09u8 {
        reserved.push((
            Message::Unknown { kind, body: b"" },
            Malformed::ReservedKind(kind),
        ));
        reserved.push((
            Message::Unknown {
                kind,
                body: &[1u8; 40],
            },
            Malformed::ReservedKind(kind),
        ));
    }
    for (m, reason) in cases.iter().chain(&reserved) {
        let want = EncodeError::InvalidMessage { reason: *reason };
        assert_eq!(m.validate(), Err(want), "{m}");
        let mut buf = vec![0xaa; 200];
        let mut w = DatagramWriter::new(&mut buf, &H).unwrap();
        w.push(&heartbeat(1)).unwrap();
        assert_eq!(w.push(m), Err(want), "{m}");
        // Nothing was written, not even the message header.
        assert_eq!(w.message_count(), 1);
        assert_eq!(w.remaining(), 200 - 52);
        assert_eq!(w.finish(), 52);
        assert!(buf[52..].iter().all(|&b| b == 0xaa), "{m}");
        // Refused also when it would not fit: validity is checked first.
        let mut small = vec![0u8; HEADER_LEN];
        let mut w = DatagramWriter::new(&mut small, &H).unwrap();
        assert_eq!(w.push(m), Err(want), "{m}");
        let mut body = vec![1, 2, 3];
        assert_eq!(m.encode_body(&mut body), Err(want), "{m}");
        assert!(body.is_empty());
        assert!(!want.to_string().is_empty());
        assert!(!reason.code().is_empty());
    }
    // What the writer refuses, a receiver rejects with the same reason.
    for (m, reason) in &cases {
        let kind = MessageKind::from_u8(m.kind_byte()).unwrap();
        assert_rejects(
            &datagram(&[(m.kind_byte(), &raw_body(m))]),
            malformed(kind, *reason),
            reason.code(),
        );
    }
    // A defined kind sent as unknown would be read as padding (0x00: the
    // heartbeat after it is lost) or as that kind.
    let b = datagram(&[(0x00, b""), (0x06, &heartbeat_body(2))]);
    assert_rejects(&b, DecodeError::Empty, "empty");
}

#[test]
fn push_writes_unknown_kinds_of_both_classes() {
    for kind in [0x0b, 0x20, 0x7f, 0x80, 0xc3, 0xff] {
        let m = Message::Unknown { kind, body: b"xyz" };
        assert_eq!(m.validate(), Ok(()));
        let mut buf = vec![0u8; 100];
        let mut w = DatagramWriter::new(&mut buf, &H).unwrap();
        w.push(&heartbeat(1)).unwrap();
        w.push(&m).unwrap();
        let len = w.finish();
        let res = Datagram::decode(&buf[..len]);
        if kind < 0x80 {
            assert_eq!(res.unwrap().messages().count(), 2);
        } else {
            // Critical unknown kinds are how tests build datagrams a receiver
            // must drop.
            assert_eq!(res.unwrap_err(), DecodeError::UnknownCriticalKind { kind });
        }
    }
}

#[test]
fn push_accepts_the_edge_cases_a_receiver_accepts() {
    let ranges = [SeqRange {
        first: SeqNum(1),
        last: SeqNum(u64::MAX),
    }];
    let msgs = [
        Message::Delta(Delta {
            seq: SeqNum(1),
            prev_leaf_seq: SeqNum(0),
            creates: true,
            removes: false,
            key: b"",
            payload: b"",
        }),
        Message::Retransmit(Delta {
            seq: SeqNum(u64::MAX),
            prev_leaf_seq: SeqNum(u64::MAX - 1),
            creates: false,
            removes: false,
            key: b"k",
            payload: b"",
        }),
        Message::Nak(Nak {
            requester: 0,
            ranges: NakRanges::from_slice(&ranges),
        }),
        Message::Fragment(Fragment {
            frag_id: 0,
            total_len: u32::MAX,
            offset: u32::MAX - 1,
            inner_kind: 0xff,
            data: b"a",
        }),
        Message::LeafSnapshot(LeafSnapshot {
            cycle: CycleId(0),
            position: 0,
            leaf_seq: SeqNum(0),
            key: b"",
            value: None,
        }),
    ];
    let bytes = encode(&H, &msgs);
    assert_eq!(
        Datagram::decode(&bytes)
            .unwrap()
            .messages()
            .collect::<Vec<_>>(),
        msgs
    );
}

// ---------------------------------------------------------------------------
// Fragments
// ---------------------------------------------------------------------------

#[test]
fn fragment_capacity_fits_exactly() {
    assert_eq!(
        fragment_capacity(HEADER_LEN + MESSAGE_HEADER_LEN + FRAGMENT_FIXED),
        0
    );
    assert_eq!(fragment_capacity(0), 0);
    for max in [46, 64, 1452, 9000] {
        let cap = fragment_capacity(max);
        assert!(cap > 0);
        let body = vec![9u8; cap + 1];
        let frags: Vec<_> = Fragments::new(3, MessageKind::Delta, &body, cap).collect();
        assert_eq!(frags.len(), 2);
        assert_eq!(frags[0].data.len(), cap);
        // A full fragment fills an empty datagram of `max` bytes exactly.
        let mut buf = vec![0u8; max];
        let mut w = DatagramWriter::new(&mut buf, &H).unwrap();
        w.push(&Message::Fragment(frags[0])).unwrap();
        assert_eq!(w.remaining(), 0);
        assert_eq!(w.finish(), max);
        // One more byte of data would not fit.
        let body2 = vec![9u8; cap + 1];
        let one_more = Fragments::new(3, MessageKind::Delta, &body2, cap + 1)
            .next()
            .unwrap();
        let mut w = DatagramWriter::new(&mut buf, &H).unwrap();
        assert!(matches!(
            w.push(&Message::Fragment(one_more)),
            Err(EncodeError::DoesNotFit { .. })
        ));
    }
}

#[test]
fn fragments_cover_the_body_in_order() {
    let body: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
    for max_data in [1, 7, 999, 1000, 5000] {
        let frags: Vec<_> =
            Fragments::new(11, MessageKind::LeafSnapshot, &body, max_data).collect();
        assert_eq!(frags.len(), body.len().div_ceil(max_data));
        let mut at = 0;
        for f in &frags {
            assert_eq!(f.frag_id, 11);
            assert_eq!(f.total_len, 1000);
            assert_eq!(f.inner_kind, MessageKind::LeafSnapshot as u8);
            assert_eq!(f.offset as usize, at);
            assert!(!f.data.is_empty() && f.data.len() <= max_data);
            assert_eq!(f.data, &body[at..at + f.data.len()]);
            at += f.data.len();
        }
        assert_eq!(at, body.len());
    }
    // max_data 0 means the default datagram's capacity.
    let big = vec![1u8; 5000];
    let frags: Vec<_> = Fragments::new(1, MessageKind::Delta, &big, 0).collect();
    assert_eq!(frags[0].data.len(), fragment_capacity(DEFAULT_MAX_DATAGRAM));
    // An empty body yields no fragment (a fragment must carry data).
    assert_eq!(Fragments::new(1, MessageKind::Delta, &[], 10).count(), 0);
}

#[test]
fn fragmented_message_reassembles_through_datagrams() {
    let payload: Vec<u8> = (0..4000u32).map(|i| (i % 251) as u8).collect();
    let original = Message::Delta(Delta {
        seq: SeqNum(3),
        prev_leaf_seq: SeqNum(2),
        creates: false,
        removes: false,
        key: b"k1",
        payload: &payload,
    });
    let mut body = Vec::new();
    original.encode_body(&mut body).unwrap();
    let frags: Vec<Message<'_>> =
        Fragments::new(77, MessageKind::Delta, &body, fragment_capacity(1452))
            .map(Message::Fragment)
            .collect();
    assert_eq!(frags.len(), 3);
    let (packed, skipped) = pack(H, &frags, 1452);
    assert!(skipped.is_empty());
    assert_eq!(packed.len(), 3);

    let mut r = Reassembler::new(ReassemblyConfig::default()).unwrap();
    let now = Instant::now();
    let mut done = None;
    // Last datagram first, the middle one twice.
    for i in [2, 1, 1, 0] {
        let d = Datagram::decode(&packed[i].bytes).unwrap();
        for m in d.messages() {
            let Message::Fragment(f) = m else {
                panic!("{m}")
            };
            let out = r
                .handle_fragment(now, d.header().stream, d.header().session, &f)
                .unwrap();
            if let Some(whole) = out {
                assert!(done.is_none(), "completed twice");
                done = Some(whole);
            }
        }
    }
    let whole = done.unwrap();
    assert_eq!(whole.kind, 0x01);
    assert_eq!(whole.message().unwrap(), original);
    assert_eq!(r.buffered_bytes(), 0);
    assert_eq!(r.stats().duplicates, 1);
}

#[test]
fn error_codes_are_stable() {
    let cases: [(DecodeError, &str); 9] = [
        (DecodeError::NoKey { flags: 1 }, "no_key"),
        (DecodeError::ShortHeader { len: 0 }, "short_header"),
        (DecodeError::BadMagic { found: [0; 4] }, "bad_magic"),
        (
            DecodeError::UnsupportedVersion { version: 2 },
            "unsupported_version",
        ),
        (
            DecodeError::UnsupportedFlags { flags: 1 },
            "unsupported_flags",
        ),
        (DecodeError::Empty, "empty"),
        (
            DecodeError::TruncatedMessageHeader { offset: 28 },
            "truncated_message_header",
        ),
        (
            DecodeError::MessageOverrun {
                offset: 28,
                declared: 1,
                available: 0,
            },
            "message_overrun",
        ),
        (
            DecodeError::UnknownCriticalKind { kind: 0x80 },
            "unknown_critical_kind",
        ),
    ];
    for (e, code) in cases {
        assert_eq!(e.code(), code);
        assert!(!e.to_string().is_empty());
    }
    let reasons: [(Malformed, &str); 14] = [
        (
            Malformed::BodyTooShort {
                needed: 1,
                available: 0,
            },
            "body_too_short",
        ),
        (Malformed::ZeroSeq, "zero_seq"),
        (
            Malformed::PrevNotBeforeSeq { seq: 1, prev: 1 },
            "prev_not_before_seq",
        ),
        (Malformed::UnknownDeltaFlags(2), "unknown_delta_flags"),
        (Malformed::CreatesWithPrev { prev: 1 }, "creates_with_prev"),
        (Malformed::UnknownLeafFlags(2), "unknown_leaf_flags"),
        (Malformed::TombstoneWithValue, "tombstone_with_value"),
        (Malformed::EmptyNak, "empty_nak"),
        (
            Malformed::BadNakRange { first: 0, last: 0 },
            "bad_nak_range",
        ),
        (
            Malformed::BadFragRange { offset: 1, end: 1 },
            "bad_frag_range",
        ),
        (Malformed::EmptyFragment, "empty_fragment"),
        (
            Malformed::FragmentOutOfBounds {
                offset: 1,
                end: 2,
                total_len: 1,
            },
            "fragment_out_of_bounds",
        ),
        (Malformed::BadInnerKind(8), "bad_inner_kind"),
        (Malformed::ReservedKind(1), "reserved_kind"),
    ];
    for (reason, code) in reasons {
        assert_eq!(reason.code(), code);
        let e = DecodeError::Malformed {
            kind: MessageKind::Delta,
            reason,
        };
        assert_eq!(e.code(), code);
        assert!(!e.to_string().is_empty());
        assert!(!EncodeError::InvalidMessage { reason }
            .to_string()
            .is_empty());
    }
}

/// The text form of NAKs lists every range, comma-separated, in order (what
/// `grapevine decode` prints).
#[test]
fn naks_display_every_range() {
    let seq = |first, last| SeqRange {
        first: SeqNum(first),
        last: SeqNum(last),
    };
    let ranges = [seq(1, 2), seq(5, 5), seq(9, 12)];
    let nak = Message::Nak(Nak {
        requester: 0xab,
        ranges: NakRanges::from_slice(&ranges),
    });
    assert_eq!(
        nak.to_string(),
        "Nak requester=0x000000ab ranges=1..=2,5..=5,9..=12"
    );
    let frag_ranges = [(0, 10), (20, 30), (40, 50)];
    let frag_nak = Message::FragNak(FragNak {
        requester: 1,
        frag_id: 7,
        ranges: FragRanges::from_slice(&frag_ranges),
    });
    assert_eq!(
        frag_nak.to_string(),
        "FragNak requester=0x00000001 frag_id=7 ranges=0..10,20..30,40..50"
    );
}

/// A datagram header's text form (what `grapevine decode` prints first).
#[test]
fn datagram_header_display() {
    let h = DatagramHeader {
        stream: StreamId(7),
        session: SessionId(0xabc),
        datagram_seq: 42,
    };
    assert_eq!(
        h.to_string(),
        format!(
            "stream={} session={} datagram_seq=42",
            StreamId(7),
            SessionId(0xabc)
        )
    );
    assert!(h.to_string().starts_with("stream=7 session="), "{h}");
}

/// NAK and FragNak ranges compare by their ranges, in order, whether read
/// from the wire or given as a slice, and print as the list of them.
#[test]
fn nak_ranges_compare_by_content() {
    let seq = |first, last| SeqRange {
        first: SeqNum(first),
        last: SeqNum(last),
    };
    let ranges = [seq(1, 2), seq(5, 5)];
    let header = DatagramHeader {
        stream: StreamId(1),
        session: SessionId(2),
        datagram_seq: 3,
    };
    let frag_ranges = [(0, 10), (20, 30)];
    let bytes = encode(
        &header,
        &[
            Message::Nak(Nak {
                requester: 1,
                ranges: NakRanges::from_slice(&ranges),
            }),
            Message::FragNak(FragNak {
                requester: 1,
                frag_id: 7,
                ranges: FragRanges::from_slice(&frag_ranges),
            }),
        ],
    );
    let d = Datagram::decode(&bytes).unwrap();
    let mut msgs = d.messages();
    let (Some(Message::Nak(wire)), Some(Message::FragNak(frag_wire))) = (msgs.next(), msgs.next())
    else {
        panic!("a NAK and a FragNak");
    };
    assert_eq!(wire.ranges, NakRanges::from_slice(&ranges));
    assert_ne!(wire.ranges, NakRanges::from_slice(&[seq(1, 2), seq(5, 6)]));
    assert_ne!(wire.ranges, NakRanges::from_slice(&[seq(1, 2)]));
    assert_ne!(NakRanges::from_slice(&[seq(1, 2)]), wire.ranges);
    assert_eq!(frag_wire.ranges, FragRanges::from_slice(&frag_ranges));
    assert_ne!(
        frag_wire.ranges,
        FragRanges::from_slice(&[(0, 10), (20, 31)])
    );
    assert_ne!(frag_wire.ranges, FragRanges::from_slice(&[(0, 10)]));
    // Their Debug form is the list of ranges.
    assert_eq!(format!("{:?}", wire.ranges), format!("{ranges:?}"));
    assert_eq!(
        format!("{:?}", frag_wire.ranges),
        format!("{frag_ranges:?}")
    );
}

/// `decode_into` yields exactly what `decode` then `messages` yield, for
/// datagrams of 0 to 150 messages (beyond the inline ones too), with
/// padding at the end; on a malformed datagram it fails the same way and
/// leaves nothing behind.
#[test]
fn decode_into_agrees_with_decode_at_every_message_count() {
    for n in [1usize, 2, 63, 64, 65, 100, 150] {
        let bodies: Vec<Vec<u8>> = (0..n as u64).map(|i| heartbeat_body(i + 1)).collect();
        let msgs: Vec<(u8, &[u8])> = bodies.iter().map(|b| (0x06, &b[..])).collect();
        let mut buf = datagram(&msgs);
        buf.extend_from_slice(&[0; 7]); // padding
        let twice: Vec<Message<'_>> = Datagram::decode(&buf).unwrap().messages().collect();
        let mut decoded = Decoded::new();
        let d = Datagram::decode_into(&buf, &mut decoded).unwrap();
        assert_eq!(d.header(), Datagram::decode(&buf).unwrap().header());
        let once: Vec<Message<'_>> = decoded.iter().collect();
        assert_eq!(once.len(), n);
        assert_eq!(once, twice, "{n} messages");
        assert_eq!(once[n - 1], heartbeat(n as u64));
        assert_eq!(decoded.inline_len(), n.min(DECODED_INLINE));
        // The same buffer made malformed at its last message.
        let cut = buf.len() - 7 - 2;
        let bad = &buf[..cut];
        let mut after = decoded.clone();
        assert_eq!(
            Datagram::decode_into(bad, &mut after).unwrap_err(),
            Datagram::decode(bad).unwrap_err()
        );
        assert_eq!(after.iter().count(), 0, "{n}: nothing left behind");
    }
}

/// `carries_snapshots` is true exactly for a datagram that opens with a
/// CycleBegin followed by a LeafSnapshot (every datagram of snapshots),
/// false for a CycleEnd datagram, a CycleBegin alone, any other first
/// message and bytes too short to tell.
#[test]
fn carries_snapshots_looks_at_the_first_two_messages() {
    let header = DatagramHeader {
        stream: StreamId(1),
        session: SessionId(2),
        datagram_seq: 1,
    };
    let of = |msgs: &[Message<'_>]| {
        let mut buf = [0u8; 256];
        let mut w = DatagramWriter::new(&mut buf, &header).unwrap();
        for m in msgs {
            w.push(m).unwrap();
        }
        let n = w.finish();
        buf[..n].to_vec()
    };
    let begin = Message::CycleBegin(CycleBegin {
        cycle: CycleId(3),
        start_seq: SeqNum(4),
        leaf_count: 5,
    });
    let leaf = Message::LeafSnapshot(LeafSnapshot {
        cycle: CycleId(3),
        position: 0,
        leaf_seq: SeqNum(4),
        key: b"key",
        value: Some(b"value"),
    });
    let end = Message::CycleEnd(CycleEnd {
        cycle: CycleId(3),
        end_seq: SeqNum(4),
        leaf_count: 5,
    });
    let heartbeat = Message::Heartbeat(Heartbeat {
        last_seq: SeqNum(4),
        interval_ms: 100,
        sent_at_micros: 0,
    });
    let snapshots = of(&[begin, leaf, leaf]);
    assert!(carries_snapshots(&snapshots));
    assert!(
        !carries_snapshots(&of(&[begin, end])),
        "a CycleEnd datagram"
    );
    assert!(!carries_snapshots(&of(&[begin])));
    assert!(!carries_snapshots(&of(&[heartbeat, leaf])));
    assert!(!carries_snapshots(&of(&[leaf, leaf])));
    assert!(
        !carries_snapshots(&snapshots[..HEADER_LEN + 3]),
        "a cut header"
    );
    assert!(!carries_snapshots(&[]));
    // The snapshots flag counts only on an authenticated datagram
    // (PROTOCOL.md §11.2): on a plain one, other flags make it one this
    // cannot judge, whatever they say.
    let mut flagged = of(&[heartbeat, leaf]);
    flagged[5] = crate::auth::FLAG_SNAPSHOTS;
    assert!(!carries_snapshots(&flagged), "the flag without AUTH");
    flagged[5] = crate::auth::FLAG_SNAPSHOTS | crate::auth::FLAG_AUTH;
    assert!(carries_snapshots(&flagged), "the flag with AUTH");
}
