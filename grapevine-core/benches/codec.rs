//! Criterion benchmarks of the wire codec and the reassembler.
//!
//! * `codec/encode_deltas`: packs 20 small deltas (16-byte key, 32-byte
//!   payload) into one datagram, in a reused buffer.
//! * `codec/decode_deltas`: decodes that datagram and iterates its messages.
//! * `codec/encode_leaf_snapshots`: packs a datagram of leaf snapshots
//!   (16-byte key, 64-byte value), as a snapshot cycle does.
//! * `reassembly/in_order_64k`: reassembles a 64 KiB message from its
//!   fragments (default datagram size) delivered in order.
//!
//! Run with `cargo bench -p grapevine-core --bench codec`; add `-- --quick`
//! for a smoke run.

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use grapevine_core::wire::{
    fragment_capacity, Datagram, DatagramHeader, DatagramWriter, Delta, Fragment, Fragments,
    LeafSnapshot, Message, MessageKind, DEFAULT_MAX_DATAGRAM,
};
use grapevine_core::{CycleId, Reassembler, ReassemblyConfig, SeqNum, SessionId, StreamId};

const HEADER: DatagramHeader = DatagramHeader {
    stream: StreamId(1),
    session: SessionId(0x0123_4567_89ab_cdef),
    datagram_seq: 1000,
};

/// Deltas per datagram: 20 × (4 + 19 + 16 + 32) = 1420 bytes of messages,
/// plus the 28-byte header, fits the 1452-byte default.
const DELTAS: usize = 20;
/// Leaf snapshots per datagram: 13 × (4 + 19 + 16 + 64) = 1339 bytes.
const SNAPSHOTS: usize = 13;
/// Size of the fragmented message.
const BIG: usize = 64 << 10;

fn keys(n: usize) -> Vec<[u8; 16]> {
    (0..n)
        .map(|i| {
            let mut k = *b"sensor/0000/temp";
            k[7..11].copy_from_slice(format!("{i:04}").as_bytes());
            k
        })
        .collect()
}

fn deltas<'a>(keys: &'a [[u8; 16]], payload: &'a [u8; 32]) -> Vec<Message<'a>> {
    keys.iter()
        .zip(1u64..)
        .map(|(key, seq)| {
            Message::Delta(Delta {
                seq: SeqNum(1_000_000 + seq),
                prev_leaf_seq: SeqNum(seq),
                creates: false,
                removes: false,
                key,
                payload,
            })
        })
        .collect()
}

/// Encodes `messages` into `buf`; returns the datagram length.
fn encode(buf: &mut [u8], messages: &[Message<'_>]) -> usize {
    let mut w = DatagramWriter::new(buf, &HEADER).expect("buffer holds a header");
    for m in messages {
        w.push(m).expect("the messages fit one datagram");
    }
    w.finish()
}

fn codec(c: &mut Criterion) {
    let keys = keys(DELTAS.max(SNAPSHOTS));
    let payload = [0xa5u8; 32];
    let deltas = deltas(&keys[..DELTAS], &payload);
    let value = [0x5au8; 64];
    let snapshots: Vec<Message<'_>> = keys[..SNAPSHOTS]
        .iter()
        .zip(0u32..)
        .map(|(key, position)| {
            Message::LeafSnapshot(LeafSnapshot {
                cycle: CycleId(7),
                position,
                leaf_seq: SeqNum(1_000_000 + u64::from(position)),
                key,
                value: Some(&value),
            })
        })
        .collect();

    let mut buf = vec![0u8; DEFAULT_MAX_DATAGRAM];
    let delta_len = encode(&mut buf, &deltas);
    let delta_datagram = buf[..delta_len].to_vec();
    let snapshot_len = encode(&mut buf, &snapshots);

    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(DELTAS as u64));
    g.bench_function("encode_deltas", |b| {
        b.iter(|| encode(black_box(&mut buf), black_box(&deltas)));
    });
    g.bench_function("decode_deltas", |b| {
        b.iter(|| {
            let d = Datagram::decode(black_box(&delta_datagram)).expect("valid datagram");
            let mut n = 0;
            for m in d.messages() {
                if let Message::Delta(d) = m {
                    n += d.key.len() + d.payload.len();
                }
            }
            n
        });
    });
    g.throughput(Throughput::Bytes(snapshot_len as u64));
    g.bench_function("encode_leaf_snapshots", |b| {
        b.iter(|| encode(black_box(&mut buf), black_box(&snapshots)));
    });
    g.finish();
}

fn reassembly(c: &mut Criterion) {
    let body: Vec<u8> = (0..BIG).map(|i| (i * 31) as u8).collect();
    let frags: Vec<Fragment<'_>> = Fragments::new(
        0,
        MessageKind::LeafSnapshot,
        &body,
        fragment_capacity(DEFAULT_MAX_DATAGRAM),
    )
    .collect();
    let mut r = Reassembler::new(ReassemblyConfig::default()).expect("default config is valid");
    let now = Instant::now();
    // A fresh id per message: the reassembler drops late duplicates of the
    // ids it completed recently.
    let mut frag_id = 0u32;

    let mut g = c.benchmark_group("reassembly");
    g.throughput(Throughput::Bytes(BIG as u64));
    g.bench_function("in_order_64k", |b| {
        b.iter(|| {
            frag_id = frag_id.wrapping_add(1);
            let mut done = None;
            for f in &frags {
                let f = Fragment { frag_id, ..*f };
                if let Some(m) = r
                    .handle_fragment(now, HEADER.stream, HEADER.session, black_box(&f))
                    .expect("honest fragments are accepted")
                {
                    done = Some(m);
                }
            }
            done.expect("all fragments delivered")
        });
    });
    g.finish();
}

criterion_group!(benches, codec, reassembly);
criterion_main!(benches);
