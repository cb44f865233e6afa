//! Found by the second review of authenticated frames (each failed on the
//! code it reviewed): an attacker without the key never gets a datagram
//! accepted twice, whatever jumps, rotations and key reloads came before,
//! and a refused datagram changes no sender.

use std::time::Instant;

use super::*;
use crate::wire::{DatagramHeader, DatagramWriter, Heartbeat, Message};
use crate::{SeqNum, SessionId, StreamId};

const STREAM: StreamId = StreamId(5);
const PUB_SALT: Salt = Salt([1; 16]);

fn key(b: u8) -> StreamKey {
    StreamKey::from_bytes([b; 32])
}

fn ring_of(bytes: &[u8]) -> Keyring {
    Keyring::new(bytes.iter().map(|b| key(*b)).collect()).unwrap()
}

fn seal(s: &mut Sealer, seq: u64) -> Vec<u8> {
    let header = DatagramHeader {
        stream: STREAM,
        session: SessionId(9),
        datagram_seq: seq,
    };
    let mut buf = vec![0u8; 256];
    let mut w = DatagramWriter::new(&mut buf, &header).unwrap();
    w.push(&Message::Heartbeat(Heartbeat {
        last_seq: SeqNum(3),
        sent_at_micros: seq,
        interval_ms: 100,
    }))
    .unwrap();
    let len = w.finish();
    let n = s.seal(&mut buf, len).unwrap();
    buf.truncate(n);
    buf
}

fn open(o: &mut Opener, d: &[u8]) -> Result<(), Refused> {
    let mut b = d.to_vec();
    o.open(Instant::now(), &mut b).map(|_| ())
}

/// The real publisher's sealer and the receiver's opener, one key.
fn setup() -> (Sealer, Opener) {
    let ring = ring_of(&[7]);
    let s = Sealer::new(&ring, Role::Publisher, STREAM, PUB_SALT, false).unwrap();
    let mut o = Opener::new(ring, Role::Publisher, STREAM, 16);
    o.pin(Some(PUB_SALT));
    (s, o)
}

/// A key holder (any subscriber) sealing as the publisher: same salt,
/// its own sealer, any datagram_seq.
fn key_holder() -> Sealer {
    Sealer::new(&ring_of(&[7]), Role::Publisher, STREAM, PUB_SALT, false).unwrap()
}

/// A benign corroborated jump (the receiver lost more than MAX_JUMP
/// datagrams: a partition, a suspend, a full socket buffer), then replays
/// by an attacker without the key of datagrams accepted after it, once they
/// aged out of the window: none is accepted again. (A recovery rule, since
/// removed, reset the window on such replays.)
#[test]
fn keyless_replay_after_a_benign_jump_is_accepted_again() {
    let (mut s, mut o) = setup();
    let mut rec = std::collections::BTreeMap::new();
    for seq in 0..100 {
        let d = seal(&mut s, seq);
        assert!(open(&mut o, &d).is_ok());
        rec.insert(seq, d);
    }
    // 100..3000 lost at this receiver; it hears 3000, 3001, ... 12000.
    for seq in 3000..12_000 {
        let d = seal(&mut s, seq);
        let r = open(&mut o, &d);
        assert!(seq == 3000 || r.is_ok(), "{seq}: {r:?}");
        rec.insert(seq, d);
    }
    // The attacker (no key) replays recorded datagrams this receiver
    // already accepted.
    let mut accepted_twice = Vec::new();
    for seq in 3001..3009 {
        if open(&mut o, &rec[&seq]).is_ok() {
            accepted_twice.push(seq);
        }
    }
    for seq in 3009..5000 {
        if open(&mut o, &rec[&seq]).is_ok() {
            accepted_twice.push(seq);
        }
    }
    assert!(
        accepted_twice.is_empty(),
        "{} replays of already-accepted datagrams accepted again, e.g. {:?}",
        accepted_twice.len(),
        &accepted_twice[..accepted_twice.len().min(5)]
    );
}

/// A key holder's two datagrams far ahead (which blind the receiver to the
/// real sender: PROTOCOL.md §11.5), then an attacker without the key
/// replaying the datagrams from before the jump: none is accepted again.
#[test]
fn a_key_holders_jump_reopens_nothing_from_before_it() {
    let (mut s, mut o) = setup();
    let mut rec = Vec::new();
    for seq in 0..1000 {
        let d = seal(&mut s, seq);
        assert!(open(&mut o, &d).is_ok());
        rec.push(d);
    }
    let mut kh = key_holder();
    assert_eq!(open(&mut o, &seal(&mut kh, 1 << 40)), Err(Refused::TooFar));
    assert!(open(&mut o, &seal(&mut kh, (1 << 40) + 1)).is_ok());
    assert_eq!(open(&mut o, &seal(&mut s, 1000)), Err(Refused::TooOld));
    let again = rec.iter().filter(|d| open(&mut o, d).is_ok()).count();
    assert_eq!(again, 0, "pre-jump datagrams accepted a second time");
}

/// Refused replays under older keys (mid-rotation, three keys in the ring)
/// do not change the sender's keys: its current key still needs no
/// derivation when a flood has spent the budget.
#[test]
fn a_refused_replay_changes_the_senders_keys() {
    flip(true);
}

#[test]
fn control_without_the_replays_the_current_key_needs_no_derivation() {
    flip(false);
}

fn flip(replay: bool) {
    let ring = ring_of(&[3, 2, 1]);
    let mut o = Opener::new(ring, Role::Publisher, STREAM, 16);
    let mut s = Sealer::new(&ring_of(&[1]), Role::Publisher, STREAM, PUB_SALT, false).unwrap();
    for seq in 0..100 {
        assert!(open(&mut o, &seal(&mut s, seq)).is_ok());
    }
    let mut rec = std::collections::BTreeMap::new();
    for seq in 3000..20_000 {
        if seq == 6000 {
            s.rekey(&ring_of(&[2, 1]), STREAM).unwrap();
        }
        if seq == 7000 {
            s.rekey(&ring_of(&[3, 2, 1]), STREAM).unwrap();
        }
        let d = seal(&mut s, seq);
        let _ = open(&mut o, &d);
        rec.insert(seq, d);
    }
    // The sender's keys are now [3, 2]; replays under keys 1 and 2 are too
    // old, and must not move key 3 out.
    if replay {
        assert_eq!(open(&mut o, &rec[&5000]), Err(Refused::TooOld));
        assert_eq!(open(&mut o, &rec[&6500]), Err(Refused::TooOld));
    }
    // Spend the derivation budget (a keyless flood of made-up salts), all
    // at one instant so that nothing refills.
    let t0 = Instant::now();
    let mut forger = Sealer::new(&ring_of(&[9]), Role::Publisher, STREAM, PUB_SALT, false).unwrap();
    let mut junk = seal(&mut forger, 1);
    junk[28..32].copy_from_slice(&key(3).id().0.to_be_bytes());
    for i in 0..2 * DERIVE_BURST {
        junk[32..36].copy_from_slice(&i.to_be_bytes());
        let mut b = junk.clone();
        let _ = o.open(t0, &mut b);
    }
    let mut b = seal(&mut s, 20_000);
    assert_eq!(
        o.open(t0, &mut b).map(|_| ()),
        Ok(()),
        "the followed publisher's current key was flipped out by two refused replays"
    );
}

/// A key file reloaded without the publisher's key by mistake, then
/// fixed: the sender's window was kept, so its recorded datagrams are not
/// accepted again.
#[test]
fn a_key_removed_and_restored_forgets_the_pinned_window() {
    let (mut s, mut o) = setup();
    let mut rec = Vec::new();
    for seq in 0..1000 {
        let d = seal(&mut s, seq);
        assert!(open(&mut o, &d).is_ok());
        rec.push(d);
    }
    o.set_keyring(ring_of(&[8]));
    o.set_keyring(ring_of(&[7, 8]));
    let again = rec.iter().filter(|d| open(&mut o, d).is_ok()).count();
    assert_eq!(
        again, 0,
        "the followed publisher's datagrams accepted a second time"
    );
}
