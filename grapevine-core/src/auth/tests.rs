//! Sealing and opening: what opens, what is refused and why, and that a
//! refused datagram changes nothing.

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::wire::{
    Datagram, DatagramHeader, DatagramWriter, Delta, Heartbeat, Message, HEADER_LEN,
};
use crate::{SeqNum, SessionId, StreamId};

const STREAM: StreamId = StreamId(5);

fn ring(byte: u8) -> Keyring {
    Keyring::new(vec![StreamKey::from_bytes([byte; 32])]).unwrap()
}

/// A plain datagram of `STREAM`, session 9, with a heartbeat and a delta
/// whose payload is `payload`, in a buffer with room to seal it.
fn plain(datagram_seq: u64, payload: &[u8]) -> (Vec<u8>, usize) {
    let header = DatagramHeader {
        stream: STREAM,
        session: SessionId(9),
        datagram_seq,
    };
    let mut buf = vec![0u8; 512];
    let mut w = DatagramWriter::new(&mut buf, &header).unwrap();
    w.push(&Message::Heartbeat(Heartbeat {
        last_seq: SeqNum(3),
        sent_at_micros: 77,
        interval_ms: 100,
    }))
    .unwrap();
    w.push(&Message::Delta(Delta {
        seq: SeqNum(3),
        prev_leaf_seq: SeqNum::NONE,
        creates: true,
        removes: false,
        key: b"key",
        payload,
    }))
    .unwrap();
    let len = w.finish();
    (buf, len)
}

fn sealer(role: Role, salt: u8, encrypt: bool) -> Sealer {
    Sealer::new(&ring(7), role, STREAM, Salt([salt; 16]), encrypt).unwrap()
}

fn sealed(s: &mut Sealer, datagram_seq: u64) -> Vec<u8> {
    let (mut buf, len) = plain(datagram_seq, b"secret payload");
    let n = s.seal(&mut buf, len).unwrap();
    buf.truncate(n);
    buf
}

fn opener() -> Opener {
    Opener::new(ring(7), Role::Publisher, STREAM, 16)
}

fn open(o: &mut Opener, d: &[u8]) -> Result<Vec<u8>, Refused> {
    let mut b = d.to_vec();
    let opened = o.open(Instant::now(), &mut b)?;
    Ok(b[opened.plain].to_vec())
}

#[test]
fn a_sealed_datagram_opens_to_the_plain_one_in_both_modes() {
    for encrypt in [false, true] {
        let mut s = sealer(Role::Publisher, 1, encrypt);
        let (buf, len) = plain(0, b"secret payload");
        let want = buf[..len].to_vec();
        let d = sealed(&mut s, 0);
        assert_eq!(d.len(), len + OVERHEAD);
        let flags = FLAG_AUTH | if encrypt { FLAG_ENCRYPT } else { 0 };
        assert_eq!(d[5], flags);
        assert_eq!(&d[28..32], &ring(7).sealing_key().id().0.to_be_bytes());
        assert_eq!(&d[32..48], &[1; 16]);
        let shows = d.windows(14).any(|w| w == b"secret payload");
        assert_eq!(shows, !encrypt, "the payload is readable only unencrypted");
        let got = open(&mut opener(), &d).unwrap();
        assert_eq!(got, want);
        assert!(Datagram::decode(&got).is_ok());
        // A tool without the key reads an authenticated-only datagram.
        let mut view = Vec::new();
        assert_eq!(unverified_plain(&d, &mut view), !encrypt);
        if !encrypt {
            assert_eq!(view, want);
        }
    }
}

#[test]
fn replays_old_and_far_datagrams_are_refused() {
    let mut s = sealer(Role::Publisher, 1, false);
    let mut o = opener();
    let first = sealed(&mut s, 10);
    assert!(open(&mut o, &first).is_ok());
    assert_eq!(open(&mut o, &first), Err(Refused::Replayed));
    // Far ahead (beyond the jump of 100): refused, then corroborated.
    let far = sealed(&mut s, 10 + WINDOW + 500);
    assert_eq!(open(&mut o, &far), Err(Refused::TooFar));
    assert_eq!(
        open(&mut o, &far),
        Err(Refused::TooFar),
        "a copy proves nothing"
    );
    let next = sealed(&mut s, 10 + WINDOW + 501);
    assert!(open(&mut o, &next).is_ok());
    // The first is now out of the window.
    let mut s2 = sealer(Role::Publisher, 1, false);
    let old = sealed(&mut s2, 11);
    assert_eq!(open(&mut o, &old), Err(Refused::TooOld));
    assert_eq!(o.senders(), 1);
}

#[test]
fn each_check_refuses_what_it_should() {
    let mut o = opener();
    let (buf, len) = plain(0, b"x");
    assert_eq!(open(&mut o, &buf[..len]), Err(Refused::Unauthenticated));
    assert!(matches!(
        open(&mut o, b"GRPV"),
        Err(Refused::Malformed(
            crate::wire::DecodeError::ShortHeader { .. }
        ))
    ));
    let d = sealed(&mut sealer(Role::Publisher, 1, false), 0);
    assert_eq!(
        open(&mut o, &d[..HEADER_LEN + OVERHEAD - 1]),
        Err(Refused::ShortAuth(HEADER_LEN + OVERHEAD - 1))
    );
    // A subscriber's NAK reflected to a subscriber.
    let nak = sealed(&mut sealer(Role::Subscriber, 2, false), 0);
    assert_eq!(nak[5], FLAG_AUTH | FLAG_FROM_SUBSCRIBER);
    assert_eq!(open(&mut o, &nak), Err(Refused::WrongRole));
    // ... with the role bit cleared: the key differs, so the tag fails.
    let mut flipped = nak.clone();
    flipped[5] = FLAG_AUTH;
    assert_eq!(open(&mut o, &flipped), Err(Refused::BadTag));
    // The publisher's opener takes the NAK, and refuses the publisher's.
    let mut at_pub = Opener::new(ring(7), Role::Subscriber, STREAM, 16);
    assert!(open(&mut at_pub, &nak).is_ok());
    assert_eq!(open(&mut at_pub, &d), Err(Refused::WrongRole));
    // Another stream's opener.
    let mut other = Opener::new(ring(7), Role::Publisher, StreamId(6), 16);
    assert_eq!(open(&mut other, &d), Err(Refused::ForeignStream));
    // Another key.
    let mut stranger = Opener::new(ring(8), Role::Publisher, STREAM, 16);
    assert_eq!(
        open(&mut stranger, &d),
        Err(Refused::UnknownKey(ring(7).sealing_key().id()))
    );
    // Authenticated only where encryption is required.
    let mut strict = opener();
    strict.require_encrypt(true);
    assert_eq!(open(&mut strict, &d), Err(Refused::PlaintextRefused));
    let e = sealed(&mut sealer(Role::Publisher, 3, true), 0);
    assert!(open(&mut strict, &e).is_ok());
}

/// A rotation without a restart (PROTOCOL.md §11.3): the sealer moves to
/// the new key keeping its salt and its `datagram_seq`, the receiver takes
/// the new ring keeping the sender's window, late datagrams under the old
/// key still open, and once the old key is dropped from the ring they do
/// not.
#[test]
fn keys_rotate_without_a_restart() {
    let (old, new) = (
        StreamKey::from_bytes([7; 32]),
        StreamKey::from_bytes([9; 32]),
    );
    let both = Keyring::new(vec![old.clone(), new.clone()]).unwrap();
    let mut s = Sealer::new(&ring(7), Role::Publisher, STREAM, Salt([4; 16]), true).unwrap();
    let mut o = Opener::new(ring(7), Role::Publisher, STREAM, 16);
    let first = sealed(&mut s, 0);
    let late = sealed(&mut s, 1);
    assert!(open(&mut o, &first).is_ok());
    // Every node learns the new key, then seals with it.
    o.set_keyring(both.clone());
    let swapped = Keyring::new(vec![new.clone(), old]).unwrap();
    s.rekey(&swapped, STREAM).unwrap();
    assert_eq!(s.key_id(), new.id());
    assert_eq!(s.salt(), Salt([4; 16]));
    let (mut buf, len) = plain(1, b"p");
    assert_eq!(
        s.seal(&mut buf, len),
        Err(SealError::NonceReuse(1)),
        "seq still grows"
    );
    let after = sealed(&mut s, 2);
    assert_eq!(&after[28..32], &new.id().0.to_be_bytes());
    assert!(
        open(&mut o, &after).is_ok(),
        "the same sender under the new key"
    );
    assert_eq!(open(&mut o, &after), Err(Refused::Replayed), "one window");
    assert!(open(&mut o, &late).is_ok(), "a late one under the old key");
    assert_eq!(o.senders(), 1);
    // The old key retired.
    o.set_keyring(Keyring::new(vec![new]).unwrap());
    let mut old_sealer =
        Sealer::new(&ring(7), Role::Publisher, STREAM, Salt([5; 16]), true).unwrap();
    assert!(matches!(
        open(&mut o, &sealed(&mut old_sealer, 0)),
        Err(Refused::UnknownKey(_))
    ));
    assert!(
        open(&mut o, &sealed(&mut s, 3)).is_ok(),
        "the window survived"
    );
    assert_eq!(o.senders(), 1);
}

#[test]
fn a_rotated_key_opens_beside_the_old_one() {
    let old = StreamKey::from_bytes([7; 32]);
    let new = StreamKey::from_bytes([9; 32]);
    let mut o = Opener::new(
        Keyring::new(vec![old, new.clone()]).unwrap(),
        Role::Publisher,
        STREAM,
        16,
    );
    let by_new = Keyring::new(vec![new]).unwrap();
    let mut s = Sealer::new(&by_new, Role::Publisher, STREAM, Salt([4; 16]), false).unwrap();
    assert!(open(&mut o, &sealed(&mut s, 0)).is_ok());
    assert!(open(&mut o, &sealed(&mut sealer(Role::Publisher, 5, false), 0)).is_ok());
}

#[test]
fn a_sealer_says_what_it_seals_with_and_shows_no_key() {
    for encrypt in [false, true] {
        let s = sealer(Role::Subscriber, 9, encrypt);
        assert_eq!(s.encrypts(), encrypt);
        assert_eq!(s.salt(), Salt([9; 16]));
        let shown = format!("{s:?}");
        assert!(shown.starts_with("Sealer"), "{shown}");
        assert!(
            shown.contains("Subscriber") && shown.contains(&format!("{encrypt}")),
            "{shown}"
        );
        assert!(!shown.contains("0707"), "{shown}");
    }
}

#[test]
fn sealing_never_reuses_a_nonce_and_needs_room() {
    let mut s = sealer(Role::Publisher, 1, true);
    let _ = sealed(&mut s, 5);
    let (mut buf, len) = plain(5, b"p");
    assert_eq!(s.seal(&mut buf, len), Err(SealError::NonceReuse(5)));
    let (mut buf, len) = plain(4, b"p");
    assert_eq!(s.seal(&mut buf, len), Err(SealError::NonceReuse(4)));
    let (mut buf, len) = plain(6, b"p");
    let room = len + OVERHEAD - 1;
    assert_eq!(
        s.seal(&mut buf[..room], len),
        Err(SealError::NoRoom { len, room })
    );
    assert_eq!(s.seal(&mut buf, len), Ok(len + OVERHEAD), "6 was not used");
    // Fewer bytes than a header is no datagram; a bare header seals.
    let (mut buf, _) = plain(7, b"p");
    let room = buf.len();
    assert_eq!(
        s.seal(&mut buf, HEADER_LEN - 1),
        Err(SealError::NoRoom {
            len: HEADER_LEN - 1,
            room
        })
    );
    assert_eq!(s.seal(&mut buf, HEADER_LEN), Ok(HEADER_LEN + OVERHEAD));
}

#[test]
fn new_senders_cost_a_bounded_number_of_derivations() {
    let mut o = opener();
    let t0 = Instant::now();
    let forged = |salt: u32| {
        let mut d = sealed(&mut sealer(Role::Publisher, 1, false), 0);
        d[32..36].copy_from_slice(&salt.to_be_bytes());
        d
    };
    let mut refused = Vec::new();
    for i in 0..DERIVE_BURST + 10 {
        let mut d = forged(i + 1);
        refused.push(o.open(t0, &mut d).unwrap_err());
    }
    assert!(refused[..DERIVE_BURST as usize]
        .iter()
        .all(|r| *r == Refused::BadTag));
    assert!(refused[DERIVE_BURST as usize..]
        .iter()
        .all(|r| *r == Refused::DeriveLimited));
    assert_eq!(o.senders(), 0, "nothing cached from a bad tag");
    // The budget refills at DERIVE_PER_SEC: a real sender gets through.
    let mut real = sealed(&mut sealer(Role::Publisher, 0x33, false), 0);
    let later = t0 + Duration::from_secs(1) / DERIVE_PER_SEC;
    assert!(o.open(later, &mut real).is_ok());
}

#[test]
fn the_pinned_sender_outlives_any_number_of_others() {
    let mut o = Opener::new(ring(7), Role::Publisher, STREAM, 4);
    let mut pinned = sealer(Role::Publisher, 100, false);
    let first = sealed(&mut pinned, 0);
    assert!(open(&mut o, &first).is_ok());
    o.pin(Some(Salt([100; 16])));
    for salt in 1..20u8 {
        assert!(open(
            &mut o,
            &sealed(&mut sealer(Role::Publisher, salt, false), 0)
        )
        .is_ok());
        assert!(o.senders() <= 4);
    }
    // Its window was kept: the old datagram is still a replay.
    assert_eq!(open(&mut o, &first), Err(Refused::Replayed));
    // An unpinned sender forgotten: its window with it.
    let mut again = sealer(Role::Publisher, 1, false);
    assert!(open(&mut o, &sealed(&mut again, 0)).is_ok());
}

proptest! {
    /// Any change to a sealed datagram (bit flips, truncation, extension)
    /// is refused, and a refused datagram leaves the receiver as it was:
    /// the genuine datagram still opens afterwards.
    #[test]
    fn no_modified_datagram_opens(
        encrypt in any::<bool>(),
        flips in prop::collection::vec((0usize..200, 0u8..8), 1..4),
        cut in prop::option::of(0usize..120),
        extra in prop::collection::vec(any::<u8>(), 0..3),
    ) {
        let mut s = sealer(Role::Publisher, 1, encrypt);
        let genuine = sealed(&mut s, 42);
        let mut d = genuine.clone();
        for (at, bit) in &flips {
            let i = at % d.len();
            d[i] ^= 1 << bit;
        }
        if let Some(c) = cut {
            d.truncate(d.len().saturating_sub(c));
        }
        d.extend(&extra);
        prop_assume!(d != genuine);
        let mut o = opener();
        prop_assert!(open(&mut o, &d).is_err());
        prop_assert_eq!(o.senders(), 0);
        prop_assert!(open(&mut o, &genuine).is_ok());
    }
}

#[test]
fn keyrings_refuse_nothing_and_clashing_ids() {
    assert_eq!(Keyring::new(vec![]), Err(KeyringError::Empty));
    let a = StreamKey::from_bytes([1; 32]);
    let ring = Keyring::new(vec![a.clone(), a.clone()]).unwrap();
    assert_eq!(ring.keys().count(), 1, "the same key twice is kept once");
    assert_eq!(ring.get(a.id()), Some(&a));
    assert_eq!(ring.get(KeyId(a.id().0 ^ 1)), None);
    assert!(KeyringError::Empty.to_string().contains("keygen"));
    assert_eq!(
        Refused::BadTag.code(),
        "bad_tag",
        "codes are what metrics show"
    );
}

#[test]
fn snapshot_datagrams_are_flagged_when_sealed_encrypted_or_not() {
    use crate::wire::{carries_snapshots, CycleBegin, LeafSnapshot};
    use crate::CycleId;
    for encrypt in [false, true] {
        let header = DatagramHeader {
            stream: STREAM,
            session: SessionId(9),
            datagram_seq: 1,
        };
        let mut buf = vec![0u8; 300];
        let mut w = DatagramWriter::new(&mut buf, &header).unwrap();
        w.push(&Message::CycleBegin(CycleBegin {
            cycle: CycleId(0),
            start_seq: SeqNum(0),
            leaf_count: 1,
        }))
        .unwrap();
        w.push(&Message::LeafSnapshot(LeafSnapshot {
            cycle: CycleId(0),
            position: 0,
            leaf_seq: SeqNum(0),
            key: b"k",
            value: Some(b"v"),
        }))
        .unwrap();
        let len = w.finish();
        assert!(carries_snapshots(&buf[..len]));
        let n = sealer(Role::Publisher, 1, encrypt)
            .seal(&mut buf, len)
            .unwrap();
        assert_ne!(buf[5] & FLAG_SNAPSHOTS, 0);
        assert!(carries_snapshots(&buf[..n]));
        // The flag is covered by the tag.
        let mut cleared = buf[..n].to_vec();
        cleared[5] &= !FLAG_SNAPSHOTS;
        assert_eq!(open(&mut opener(), &cleared), Err(Refused::BadTag));
    }
    let (mut buf, len) = plain(0, b"p");
    let n = sealer(Role::Publisher, 1, false)
        .seal(&mut buf, len)
        .unwrap();
    assert!(!carries_snapshots(&buf[..n]), "a heartbeat and a delta");
}

/// PROTOCOL.md §11.6: every `sealed` block, derived, sealed and opened.
#[test]
fn protocol_md_sealed_vectors() {
    let text = include_str!("../../../PROTOCOL.md");
    let hex = |v: &str| -> Vec<u8> {
        let v: String = v.chars().filter(|c| !c.is_whitespace()).collect();
        (0..v.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&v[i..i + 2], 16).unwrap())
            .collect()
    };
    let mut checked = 0;
    for block in text.split("```sealed\n").skip(1) {
        let block = block.split("```").next().unwrap();
        let field = |name: &str| {
            block
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                .unwrap_or_else(|| panic!("no {name} in {block}"))
        };
        let name = field("name");
        let key = StreamKey::from_bytes(hex(field("key")).try_into().unwrap());
        assert_eq!(key.id().to_string(), field("key_id"), "{name}");
        let role = match field("role") {
            "0" => Role::Publisher,
            "1" => Role::Subscriber,
            r => panic!("{name}: role {r}"),
        };
        let salt = Salt(hex(field("salt")).try_into().unwrap());
        let plain = hex(field("plain"));
        let sealed = hex(field("sealed"));
        let stream = StreamId(u32::from_be_bytes(plain[8..12].try_into().unwrap()));
        let frame_key = super::keyring::derive_bytes(&key, role, stream, &salt).unwrap();
        assert_eq!(frame_key.to_vec(), hex(field("frame_key")), "{name}");
        let seq = u64::from_be_bytes(plain[20..28].try_into().unwrap());
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&seq.to_be_bytes());
        assert_eq!(nonce.to_vec(), hex(field("nonce")), "{name}");
        let encrypt = sealed[5] & FLAG_ENCRYPT != 0;
        let ring = Keyring::new(vec![key]).unwrap();
        let mut s = Sealer::new(&ring, role, stream, salt, encrypt).unwrap();
        let mut buf = plain.clone();
        buf.resize(plain.len() + OVERHEAD, 0);
        let n = s.seal(&mut buf, plain.len()).unwrap();
        assert_eq!(buf[..n], sealed[..], "{name}: sealing");
        let mut o = Opener::new(ring, role, stream, 1);
        let mut buf = sealed.clone();
        let opened = o.open(Instant::now(), &mut buf).unwrap();
        assert_eq!(buf[opened.plain], plain[..], "{name}: opening");
        checked += 1;
    }
    assert_eq!(checked, 4, "PROTOCOL.md §11.6 has four sealed vectors");
}

/// Found by review: a flood of datagrams with made-up salts (no key
/// needed) spent the derivation budget, and a new real sender (a
/// restarted publisher) was refused for as long as the flood lasted. With
/// a budget of DERIVE_PER_SEC, a flood at four times that lets a real
/// datagram in about one time in four.
#[test]
fn a_forged_salt_flood_does_not_lock_out_a_new_sender() {
    let mut o = opener();
    let t0 = Instant::now();
    let template = sealed(&mut sealer(Role::Publisher, 1, false), 0);
    let mut real = sealer(Role::Publisher, 0x42, false);
    let mut lcg = 0x2545_f491_4f6c_dd1du64;
    let flood_gap_ns = 1_000_000_000 / (4 * u64::from(DERIVE_PER_SEC));
    // The first real datagram once the burst is long spent.
    let (mut t, mut next_real, mut forged_n) = (0u64, 500_000_000u64, 0u32);
    let (mut tries, mut admitted) = (0u32, None);
    while t < 3_000_000_000 && admitted.is_none() {
        lcg = lcg.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        t += flood_gap_ns / 2 + (lcg >> 33) % flood_gap_ns;
        let now = t0 + Duration::from_nanos(t);
        if t >= next_real {
            tries += 1;
            let mut d = sealed(&mut real, u64::from(tries));
            if o.open(now, &mut d).is_ok() {
                admitted = Some(tries);
            }
            next_real += 100_000_000;
            continue;
        }
        forged_n += 1;
        let mut d = template.clone();
        d[32..36].copy_from_slice(&forged_n.to_be_bytes());
        assert!(o.open(now, &mut d).is_err());
    }
    let tries = admitted.unwrap_or_else(|| panic!("never admitted in {tries} tries"));
    eprintln!("admitted after {tries} tries");
    assert!(tries <= 20, "admitted after {tries} tries");
}

/// The smallest sealed datagram (a bare header, 64 bytes) opens and is
/// read by a tool; flags no version knows, or any flag without AUTH, are
/// malformed.
#[test]
fn the_edges_of_a_sealed_datagram() {
    let mut s = sealer(Role::Publisher, 1, false);
    let (mut buf, _) = plain(0, b"p");
    let n = s.seal(&mut buf, HEADER_LEN).unwrap();
    assert_eq!(n, HEADER_LEN + OVERHEAD);
    let bare = buf[..n].to_vec();
    let mut view = Vec::new();
    assert!(unverified_plain(&bare, &mut view));
    assert_eq!(view.len(), HEADER_LEN);
    assert!(!unverified_plain(&bare[..n - 1], &mut view));
    assert_eq!(open(&mut opener(), &bare).map(|p| p.len()), Ok(HEADER_LEN));
    let malformed = |flags: u8| {
        let mut d = bare.clone();
        d[5] = flags;
        matches!(
            open(&mut opener(), &d),
            Err(Refused::Malformed(
                crate::wire::DecodeError::UnsupportedFlags { .. }
            ))
        )
    };
    for flags in [
        FLAG_ENCRYPT,
        FLAG_SNAPSHOTS,
        FLAG_FROM_SUBSCRIBER,
        0x10 | FLAG_AUTH,
        0x80,
    ] {
        assert!(malformed(flags), "{flags:#x}");
    }
    for flags in [
        FLAG_AUTH,
        FLAG_AUTH | FLAG_SNAPSHOTS,
        FLAG_AUTH | FLAG_ENCRYPT,
    ] {
        assert!(!malformed(flags), "{flags:#x}");
    }
}

#[test]
fn keyrings_and_openers_show_ids_never_keys() {
    let r = Keyring::new(vec![
        StreamKey::from_bytes([7; 32]),
        StreamKey::from_bytes([8; 32]),
    ])
    .unwrap();
    let shown = format!("{r:?} {:?}", opener());
    for k in r.keys() {
        assert!(shown.contains(&k.id().to_string()), "{shown}");
    }
    assert!(
        shown.contains("Opener") && !shown.contains("0707"),
        "{shown}"
    );
    assert_eq!(ring(7), ring(7));
    assert_ne!(ring(7), ring(8));
    assert_ne!(ring(7), r);
}

/// Found by mutation testing: the derivation budget refills at exactly
/// DERIVE_PER_SEC, carrying what a datagram between two tokens earned,
/// and only up to DERIVE_BURST; the cache keeps up to its capacity.
#[test]
fn the_derivation_budget_refills_at_its_rate_and_the_cache_fills_to_capacity() {
    let template = sealed(&mut sealer(Role::Publisher, 1, false), 0);
    let forged = |n: u32| {
        let mut d = template.clone();
        d[32..36].copy_from_slice(&n.to_be_bytes());
        d
    };
    let mut o = opener();
    let t0 = Instant::now();
    let per = Duration::from_secs(1) / DERIVE_PER_SEC;
    let mut n = 0u32;
    for _ in 0..DERIVE_BURST {
        n += 1;
        assert_eq!(o.open(t0, &mut forged(n)), Err(Refused::BadTag));
    }
    n += 1;
    assert_eq!(
        o.open(t0 + per / 2, &mut forged(n)),
        Err(Refused::DeriveLimited)
    );
    // A datagram every 0.6 of a token's time, for 1000 tokens' time.
    let (mut t, mut derived) = (per / 2, 0u32);
    while t < per * 1000 {
        t += per * 3 / 5;
        n += 1;
        if o.open(t0 + t, &mut forged(n)) == Err(Refused::BadTag) {
            derived += 1;
        }
    }
    assert!((995..=1001).contains(&derived), "{derived} derivations");
    // Idle for long: the bucket holds DERIVE_BURST, no more.
    let later = t0 + Duration::from_secs(3600);
    let mut burst = 0;
    for _ in 0..2 * DERIVE_BURST {
        n += 1;
        if o.open(later, &mut forged(n)) == Err(Refused::BadTag) {
            burst += 1;
        }
    }
    assert_eq!(burst, DERIVE_BURST);
    // The cache keeps every sender up to its capacity: their windows
    // still know what they accepted.
    let mut o = Opener::new(ring(7), Role::Publisher, STREAM, 4);
    let firsts: Vec<Vec<u8>> = (1..=4u8)
        .map(|salt| sealed(&mut sealer(Role::Publisher, salt, false), 0))
        .collect();
    for d in &firsts {
        assert!(open(&mut o, d).is_ok());
    }
    assert_eq!(o.senders(), 4);
    for d in &firsts {
        assert_eq!(open(&mut o, d), Err(Refused::Replayed));
    }
}

/// Found by mutation testing: the least recently heard sender is the one
/// forgotten, round after round, never the one heard just before.
#[test]
fn the_least_recently_heard_sender_is_forgotten() {
    let mut o = Opener::new(ring(7), Role::Publisher, STREAM, 2);
    let mut a = sealer(Role::Publisher, 200, false);
    let mut kept = Vec::new();
    for round in 0..20u8 {
        let d = sealed(&mut a, u64::from(round));
        assert!(open(&mut o, &d).is_ok());
        kept.push(d);
        let other = sealed(&mut sealer(Role::Publisher, round, false), 0);
        assert!(open(&mut o, &other).is_ok());
        assert_eq!(o.senders(), 2);
    }
    // A was heard before every newcomer: its window was never forgotten.
    for d in &kept {
        assert_eq!(open(&mut o, d), Err(Refused::Replayed));
    }
}

/// Found by mutation testing: a sender's key becomes current only with its
/// newest datagram; a late datagram under another key is kept behind it.
#[test]
fn a_late_datagram_under_another_key_does_not_displace_the_current_one() {
    let keys = |b: &[u8]| {
        Keyring::new(b.iter().map(|x| StreamKey::from_bytes([*x; 32])).collect()).unwrap()
    };
    let mut o = Opener::new(keys(&[1, 2, 3]), Role::Publisher, STREAM, 4);
    let mut s = Sealer::new(&keys(&[1]), Role::Publisher, STREAM, Salt([6; 16]), false).unwrap();
    assert!(open(&mut o, &sealed(&mut s, 0)).is_ok());
    // A datagram under key 3, sealed earlier and arriving late.
    let mut three =
        Sealer::new(&keys(&[3]), Role::Publisher, STREAM, Salt([6; 16]), false).unwrap();
    let late = sealed(&mut three, 5);
    s.rekey(&keys(&[2, 1]), STREAM).unwrap();
    assert!(
        open(&mut o, &sealed(&mut s, 10)).is_ok(),
        "key 2, the newest"
    );
    assert!(open(&mut o, &late).is_ok(), "key 3, late");
    // Spend the derivation budget (made-up salts under a key it holds);
    // key 2 needs none.
    let t0 = Instant::now();
    let mut forger =
        Sealer::new(&keys(&[3]), Role::Publisher, STREAM, Salt([1; 16]), false).unwrap();
    let template = sealed(&mut forger, 0);
    for i in 0..2 * DERIVE_BURST {
        let mut d = template.clone();
        d[32..36].copy_from_slice(&(i + 1).to_be_bytes());
        assert!(o.open(t0, &mut d).is_err());
    }
    let mut probe = template.clone();
    probe[32..36].copy_from_slice(&u32::MAX.to_be_bytes());
    assert_eq!(
        o.open(t0, &mut probe),
        Err(Refused::DeriveLimited),
        "the budget is spent"
    );
    let mut d = sealed(&mut s, 11);
    assert!(o.open(t0, &mut d).is_ok(), "key 2 is still current");
}
