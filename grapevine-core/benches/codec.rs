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
//! * `auth/seal_{authenticate,encrypt}`, `auth/open_{authenticate,encrypt}`:
//!   seals and opens a full datagram of deltas (PROTOCOL.md §11); opening
//!   includes the replay window (a fresh `datagram_seq` each time).
//! * `auth/derive`: a new sender's frame key (HKDF-Expand and the AES key
//!   schedule), what a datagram with an unknown salt costs a receiver.
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

fn auth(c: &mut Criterion) {
    use grapevine_core::auth::{Keyring, Opener, Role, Salt, Sealer, StreamKey, OVERHEAD};
    let keys = self::keys(DELTAS);
    let payload = [7u8; 32];
    let msgs = deltas(&keys, &payload);
    let ring = Keyring::new(vec![StreamKey::from_bytes([9; 32])]).expect("one key");
    let mut g = c.benchmark_group("auth");
    g.throughput(Throughput::Elements(1));
    for (name, encrypt) in [("authenticate", false), ("encrypt", true)] {
        let mut plain = vec![0u8; DEFAULT_MAX_DATAGRAM + OVERHEAD];
        let mut sealer =
            Sealer::new(&ring, Role::Publisher, StreamId(1), Salt([1; 16]), encrypt).expect("key");
        let mut seq = 0u64;
        g.bench_function(format!("seal_{name}"), |b| {
            b.iter(|| {
                seq += 1;
                let header = DatagramHeader {
                    datagram_seq: seq,
                    ..HEADER
                };
                let mut w = DatagramWriter::new(&mut plain, &header).expect("room");
                for m in &msgs {
                    w.push(m).expect("fits");
                }
                let len = w.finish();
                sealer.seal(black_box(&mut plain), len).expect("sealed")
            });
        });
        // Sealed datagrams to open, each with its own datagram_seq.
        let mut sealer =
            Sealer::new(&ring, Role::Publisher, StreamId(1), Salt([2; 16]), encrypt).expect("key");
        let sealed: Vec<Vec<u8>> = (0..4096u64)
            .map(|seq| {
                let header = DatagramHeader {
                    datagram_seq: seq,
                    ..HEADER
                };
                let mut buf = vec![0u8; DEFAULT_MAX_DATAGRAM + OVERHEAD];
                let mut w = DatagramWriter::new(&mut buf, &header).expect("room");
                for m in &msgs {
                    w.push(m).expect("fits");
                }
                let len = w.finish();
                let n = sealer.seal(&mut buf, len).expect("sealed");
                buf.truncate(n);
                buf
            })
            .collect();
        let now = Instant::now();
        // 64 datagrams per iteration (the first derives its sender's key).
        g.throughput(Throughput::Elements(64));
        g.bench_function(format!("open_{name}"), |b| {
            b.iter_batched(
                || Opener::new(ring.clone(), Role::Publisher, StreamId(1), 4),
                |mut opener| {
                    let mut buf = Vec::with_capacity(DEFAULT_MAX_DATAGRAM + OVERHEAD);
                    for d in &sealed[..64] {
                        buf.clear();
                        buf.extend_from_slice(d);
                        opener.open(now, &mut buf).expect("opens");
                    }
                },
                criterion::BatchSize::SmallInput,
            );
        });
        g.throughput(Throughput::Elements(1));
    }
    g.bench_function("derive", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            let mut salt = [0u8; 16];
            salt[..8].copy_from_slice(&i.to_be_bytes());
            Sealer::new(&ring, Role::Publisher, StreamId(1), Salt(salt), false).expect("key")
        });
    });
    g.finish();
}

criterion_group!(benches, codec, reassembly, auth);
criterion_main!(benches);
