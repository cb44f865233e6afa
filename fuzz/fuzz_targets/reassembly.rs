//! Fuzz target `reassembly`: a [`Reassembler`] with tight limits, driven by a
//! small program decoded from the input.
//!
//! The first input byte picks the mode (bit 0):
//!
//! * **ops** (bit 0 clear): each 9-byte record is one operation on the
//!   reassembler: a fragment with few possible ids, sessions and kinds, a
//!   total length, offset, data length and content chosen by the input (valid
//!   or not; overlapping fragments agree or differ everywhere, or at their
//!   first or last byte only), a burst of up to 2048 small fragments with
//!   gaps, forwards or backwards (range merging and the `MAX_RANGES` limit),
//!   or a `handle_timeout` / `forget_session`, each after a time advance.
//!   A [`Mirror`] of the documented behaviour (PROTOCOL.md §5, "Reassembly
//!   in order": expiry, size limit, recently completed ids, inconsistency,
//!   eviction oldest first, conflicts, duplicates, the range limit,
//!   completion) holds, per partial message, the bytes accepted since it was
//!   created, and predicts every result exactly: the error, `None`, or the
//!   completed message byte for byte; the counters, the number of partials,
//!   the bytes reserved and the expiry deadline must match it after every
//!   operation. Every fragment is handled at a later instant than the one
//!   before (1 µs apart at least), so "oldest first" never meets a tie.
//! * **honest** (bit 0 set): one or two message bodies derived from the
//!   input (bit 2: two) are split with [`Fragments`] and their fragments
//!   delivered in an input-chosen order, with duplicates, drops and time
//!   advances (3-byte records); bit 1 then delivers every fragment once more
//!   in order. A model of the documented behaviour predicts each result: a
//!   message completes exactly when all its fragments arrived within the
//!   timeout of the first one kept, it completes once, and it is
//!   byte-identical to the original body. Nothing is ever rejected. After
//!   every delivery, `poll_missing` (the requests for missing pieces) names
//!   exactly the bytes not received yet of each partial message, in order,
//!   at most `MISSING_RANGES` ranges and `MISSING_ATTEMPTS` times per
//!   partial, and `missing_timeout` agrees with it.
//!
//! Both modes end with a timeout sweep that must leave nothing buffered.

#![no_main]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use grapevine_core::wire::{Fragment, Fragments, MessageKind};
use grapevine_core::{
    Missing, Reassembler, ReassemblyConfig, ReassemblyError, ReassemblyStats, SessionId, StreamId,
    MAX_RANGES,
};
use libfuzzer_sys::fuzz_target;

const MAX_MESSAGE: usize = 4096;
const MAX_PARTIALS: usize = 4;
const MAX_BUFFERED: usize = 8192;
const TIMEOUT: Duration = Duration::from_secs(1);
const STREAM: StreamId = StreamId(7);
/// How many completed messages a reassembler remembers (PROTOCOL.md §5).
const RECENT_DONE: usize = 64;

/// Inner kinds the ops mode picks from (the reassembler does not look at them).
const KINDS: [u8; 4] = [
    MessageKind::Delta as u8,
    MessageKind::LeafSnapshot as u8,
    0x42,
    0x80,
];
/// Total lengths around the limits, picked by a set top bit of the selector.
const TOTALS: [u32; 8] = [0, 1, 64, 1407, 4095, 4096, 4097, u32::MAX];
/// Fragment contents: byte `p` of a message is `pattern(p) ^ SEEDS[s]`.
const SEEDS: [u8; 4] = [0x5a, 0xa5, 0x3c, 0xc3];
/// `poll_missing` in the honest mode: asked at once (no quiet time), again
/// after `MISSING_RETRY`, at most `MISSING_ATTEMPTS` times per partial, at
/// most `MISSING_RANGES` ranges each.
const MISSING_RETRY: Duration = Duration::from_millis(5);
const MISSING_ATTEMPTS: u32 = 3;
const MISSING_RANGES: usize = 4;

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let Some(mode) = input.u8() else { return };
    let mut cfg = ReassemblyConfig::default();
    cfg.max_message_size(MAX_MESSAGE)
        .max_partials(MAX_PARTIALS)
        .max_buffered_bytes(MAX_BUFFERED)
        .timeout(TIMEOUT);
    let mut r = Reassembler::new(cfg).expect("valid config");
    let start = Instant::now();
    let now = if mode & 1 == 0 {
        ops(&mut r, start, &mut input)
    } else {
        honest(&mut r, start, mode, &mut input)
    };
    r.handle_timeout(now + TIMEOUT);
    assert_eq!(r.partial_count(), 0);
    assert_eq!(r.buffered_bytes(), 0);
    assert_eq!(r.poll_timeout(), None);
});

/// Reads the program.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes([self.u8()?, self.u8()?]))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes([
            self.u8()?,
            self.u8()?,
            self.u8()?,
            self.u8()?,
        ]))
    }
}

/// Mostly small steps, sometimes past the timeout.
fn advance(code: u8) -> Duration {
    let code = u64::from(code);
    if code < 200 {
        Duration::from_millis(code)
    } else {
        Duration::from_millis((code - 199) * 50)
    }
}

fn pattern(pos: usize) -> u8 {
    ((pos as u32).wrapping_mul(0x9e37_79b1) >> 24) as u8
}

/// `swept` is the time of the last call that drops expired partials
/// (`handle_fragment`, `handle_timeout`; `forget_session` does not).
fn check_bounds(r: &Reassembler, swept: Instant) {
    assert!(
        r.buffered_bytes() <= MAX_BUFFERED,
        "{} bytes buffered",
        r.buffered_bytes()
    );
    assert!(
        r.partial_count() <= MAX_PARTIALS,
        "{} partials",
        r.partial_count()
    );
    // No partial left had expired at the last sweep, and one exists iff a
    // deadline does.
    match r.poll_timeout() {
        Some(deadline) => {
            assert!(r.partial_count() > 0);
            assert!(deadline > swept, "an expired partial was kept");
        }
        None => assert_eq!(r.partial_count(), 0),
    }
    if r.partial_count() == 0 {
        assert_eq!(r.buffered_bytes(), 0);
    }
}

/// Each fragment of the ops mode is handled this much after the previous
/// call at least, so that no two partials are created at the same instant.
const TICK: Duration = Duration::from_micros(1);

/// Mode "ops": arbitrary, possibly invalid, fragments and housekeeping calls.
fn ops(r: &mut Reassembler, mut now: Instant, input: &mut Input<'_>) -> Instant {
    let mut mirror = Mirror::default();
    let mut data = Vec::new();
    while let (
        Some(ctl),
        Some(kind_sel),
        Some(total_sel),
        Some(offset_sel),
        Some(len_sel),
        Some(step),
    ) = (
        input.u8(),
        input.u8(),
        input.u16(),
        input.u16(),
        input.u16(),
        input.u8(),
    ) {
        now += advance(step);
        let session = u64::from((ctl >> 2) & 1);
        let mut frag = FragOp {
            frag_id: u32::from(ctl & 3),
            session,
            inner_kind: KINDS[usize::from(kind_sel & 3)],
            seed: SEEDS[usize::from((kind_sel >> 2) & 3)],
            total_len: if total_sel & 0x8000 != 0 {
                TOTALS[usize::from(total_sel & 7)]
            } else {
                u32::from(total_sel & 0x1fff)
            },
            offset: 0,
            len: 0,
            odd: None,
        };
        frag.offset = if offset_sel & 0x8000 != 0 {
            u32::MAX - u32::from(offset_sel & 0x7fff)
        } else {
            u32::from(offset_sel) % frag.total_len.saturating_add(16)
        };
        match ctl >> 5 {
            // A burst of many small fragments with gaps, forwards or
            // backwards: exercises range merging and the MAX_RANGES limit.
            // Bit 7 of `kind_sel` makes the first byte of each one differ.
            5 => {
                frag.len = 1 + usize::from((kind_sel >> 4) & 3);
                frag.odd = (kind_sel & 0x80 != 0).then_some(0);
                let stride = frag.len + usize::from((len_sel >> 12) & 7);
                let count = usize::from(len_sel & 0x07ff) + 1;
                let base = frag.offset as usize;
                for k in 0..count {
                    let k = if kind_sel & 0x40 != 0 {
                        count - 1 - k
                    } else {
                        k
                    };
                    frag.offset = u32::try_from(base + k * stride).unwrap_or(u32::MAX);
                    now += TICK;
                    frag.apply(r, &mut mirror, now, &mut data);
                    mirror.check(r);
                }
            }
            6 => {
                r.handle_timeout(now);
                mirror.sweep(now);
            }
            7 => {
                r.forget_session(STREAM, SessionId(session));
                mirror.partials.retain(|p| p.key.0 != session);
            }
            // One fragment. Bit 7 of `kind_sel` makes one byte differ: its
            // first (bit 6 clear) or its last.
            _ => {
                frag.len = usize::from(len_sel) % 4200;
                frag.odd = (kind_sel & 0x80 != 0).then(|| {
                    if kind_sel & 0x40 != 0 {
                        frag.len.saturating_sub(1)
                    } else {
                        0
                    }
                });
                now += TICK;
                frag.apply(r, &mut mirror, now, &mut data);
            }
        }
        mirror.check(r);
    }
    now
}

/// One fragment of the ops mode; its data is `pattern(p) ^ seed` at each
/// position `p`, except at index `odd` of the data if set: so overlapping
/// fragments agree iff they share the seed and no odd byte.
struct FragOp {
    frag_id: u32,
    session: u64,
    inner_kind: u8,
    seed: u8,
    total_len: u32,
    offset: u32,
    len: usize,
    odd: Option<usize>,
}

impl FragOp {
    fn apply(&self, r: &mut Reassembler, mirror: &mut Mirror, now: Instant, data: &mut Vec<u8>) {
        data.clear();
        data.extend((0..self.len).map(|i| pattern(self.offset as usize + i) ^ self.seed));
        if let Some(b) = self.odd.and_then(|i| data.get_mut(i)) {
            *b ^= 0x01;
        }
        let frag = Fragment {
            frag_id: self.frag_id,
            total_len: self.total_len,
            offset: self.offset,
            inner_kind: self.inner_kind,
            data,
        };
        let res = r.handle_fragment(now, STREAM, SessionId(self.session), &frag);
        let want = mirror.fragment(now, self.session, &frag);
        match want {
            Expect::Rejected(e) => assert_eq!(res, Err(e), "{frag:?}"),
            Expect::Invalid => {
                assert!(res.is_err(), "{frag:?} -> {res:?}");
                // PROTOCOL.md §7 keeps such fragments from the reassembler,
                // so §5 does not say whether they drop their partial:
                // follow the reassembler.
                let key = (self.session, self.frag_id);
                if r.partial_count() + 1 == mirror.partials.len() {
                    let at = mirror.partials.iter().position(|p| p.key == key);
                    mirror.remove(at.expect("only its own partial may go"));
                }
            }
            Expect::Nothing => assert_eq!(res, Ok(None), "{frag:?}"),
            Expect::Complete(kind, body) => {
                let done = res
                    .unwrap_or_else(|e| panic!("{frag:?} rejected ({e}), should complete"))
                    .unwrap_or_else(|| panic!("{frag:?} should complete its message"));
                assert_eq!(done.kind, kind);
                assert!(
                    done.body == body,
                    "message {:?} completed with bytes other than those accepted",
                    (self.session, self.frag_id)
                );
                let _ = done.message();
            }
        }
    }
}

/// What a fragment should do, by [`Mirror`].
enum Expect {
    Rejected(ReassemblyError),
    /// Empty, or running past its `total_len`: rejected somehow.
    Invalid,
    /// `Ok(None)`: held, or a duplicate.
    Nothing,
    /// Completes a message of this kind and body.
    Complete(u8, Vec<u8>),
}

/// One partial message of the [`Mirror`].
struct MirrorPartial {
    /// (session, frag_id); the stream is always `STREAM`.
    key: (u64, u32),
    kind: u8,
    created: Instant,
    /// The bytes accepted since the partial was created.
    held: Vec<Option<u8>>,
    held_count: usize,
    /// Maximal runs of held bytes: the disjoint ranges the partial tracks.
    runs: usize,
}

/// The reassembler as PROTOCOL.md §5 describes it, for the limits of this
/// target.
#[derive(Default)]
struct Mirror {
    partials: Vec<MirrorPartial>,
    /// The most recently completed messages, oldest first.
    recent_done: VecDeque<(u64, u32)>,
    stats: ReassemblyStats,
}

impl Mirror {
    fn remove(&mut self, at: usize) -> MirrorPartial {
        self.partials.swap_remove(at)
    }

    fn buffered(&self) -> usize {
        self.partials.iter().map(|p| p.held.len()).sum()
    }

    /// Step 1: partials that reached their timeout are dropped.
    fn sweep(&mut self, now: Instant) {
        let before = self.partials.len();
        self.partials.retain(|p| p.created + TIMEOUT > now);
        self.stats.expired += (before - self.partials.len()) as u64;
    }

    fn reject(&mut self, e: ReassemblyError) -> Expect {
        self.stats.rejected += 1;
        Expect::Rejected(e)
    }

    fn fragment(&mut self, now: Instant, session: u64, f: &Fragment<'_>) -> Expect {
        self.sweep(now);
        let key = (session, f.frag_id);
        let total = f.total_len as usize;
        if total > MAX_MESSAGE {
            return self.reject(ReassemblyError::TooLarge {
                total_len: f.total_len,
                max: MAX_MESSAGE,
            });
        }
        let (start, end) = (f.offset as usize, f.offset as usize + f.data.len());
        if f.data.is_empty() || end > total {
            self.stats.rejected += 1;
            return Expect::Invalid;
        }
        if self.recent_done.contains(&key) {
            self.stats.duplicates += 1;
            return Expect::Nothing;
        }
        let frag_id = f.frag_id;
        let at = match self.partials.iter().position(|p| p.key == key) {
            Some(at) => {
                let p = &self.partials[at];
                if p.kind != f.inner_kind || p.held.len() != total {
                    self.remove(at);
                    return self.reject(ReassemblyError::Inconsistent { frag_id });
                }
                at
            }
            None => {
                // Evict oldest first until the new partial fits both bounds.
                while !self.partials.is_empty()
                    && (self.partials.len() >= MAX_PARTIALS
                        || self.buffered() + total > MAX_BUFFERED)
                {
                    let oldest = (0..self.partials.len())
                        .min_by_key(|&i| self.partials[i].created)
                        .unwrap();
                    self.remove(oldest);
                    self.stats.evicted += 1;
                }
                self.partials.push(MirrorPartial {
                    key,
                    kind: f.inner_kind,
                    created: now,
                    held: vec![None; total],
                    held_count: 0,
                    runs: 0,
                });
                self.partials.len() - 1
            }
        };
        let p = &mut self.partials[at];
        let slots = &p.held[start..end];
        if slots
            .iter()
            .zip(f.data)
            .any(|(h, d)| h.is_some_and(|h| h != *d))
        {
            self.remove(at);
            return self.reject(ReassemblyError::Conflict { frag_id });
        }
        if slots.iter().all(Option::is_some) {
            self.stats.duplicates += 1;
            return Expect::Nothing;
        }
        // The runs that overlap or touch [start, end) merge with it.
        let window = start.saturating_sub(1)..(end + 1).min(total);
        let merged = window
            .clone()
            .filter(|&q| p.held[q].is_some() && (q == window.start || p.held[q - 1].is_none()))
            .count();
        p.runs = p.runs + 1 - merged;
        for (h, &d) in p.held[start..end].iter_mut().zip(f.data) {
            if h.replace(d).is_none() {
                p.held_count += 1;
            }
        }
        if p.runs > MAX_RANGES {
            self.remove(at);
            return self.reject(ReassemblyError::TooFragmented { frag_id });
        }
        if p.held_count < total {
            return Expect::Nothing;
        }
        let p = self.remove(at);
        if self.recent_done.len() == RECENT_DONE {
            self.recent_done.pop_front();
        }
        self.recent_done.push_back(key);
        self.stats.completed += 1;
        Expect::Complete(p.kind, p.held.into_iter().map(Option::unwrap).collect())
    }

    /// The reassembler's state agrees with the mirror's.
    fn check(&self, r: &Reassembler) {
        assert_eq!(r.stats(), self.stats);
        assert_eq!(r.partial_count(), self.partials.len());
        assert_eq!(r.buffered_bytes(), self.buffered());
        assert!(r.buffered_bytes() <= MAX_BUFFERED);
        assert!(r.partial_count() <= MAX_PARTIALS);
        assert_eq!(
            r.poll_timeout(),
            self.partials.iter().map(|p| p.created + TIMEOUT).min()
        );
    }
}

/// What the honest mode expects of one message.
struct Model<'a> {
    frag_id: u32,
    kind: u8,
    body: &'a [u8],
    frags: Vec<Fragment<'a>>,
    /// When the partial now held was created, if one is.
    created: Option<Instant>,
    got: Vec<bool>,
    got_count: usize,
    done: bool,
    /// Times `poll_missing` named the partial now held.
    asked: u32,
}

/// Mode "honest": correct fragments, arbitrary order, loss and duplication.
fn honest(r: &mut Reassembler, mut now: Instant, mode: u8, input: &mut Input<'_>) -> Instant {
    let count = if mode & 4 != 0 { 2 } else { 1 };
    let mut specs = Vec::new();
    for frag_id in 0..count {
        let (Some(kind_sel), Some(len_sel), Some(max_sel), Some(seed)) =
            (input.u8(), input.u16(), input.u8(), input.u32())
        else {
            return now;
        };
        let kind = [
            MessageKind::Delta,
            MessageKind::LeafSnapshot,
            MessageKind::Nak,
            MessageKind::Heartbeat,
        ][usize::from(kind_sel & 3)];
        let len = 1 + usize::from(len_sel) % MAX_MESSAGE;
        // At least 2 bytes per fragment, so that even the worst arrival
        // order needs at most MAX_RANGES disjoint ranges for 4096 bytes.
        let max_data = if max_sel < 128 {
            2 + usize::from(max_sel)
        } else {
            usize::from(max_sel - 127) * 32
        };
        let mut x = seed | 1;
        let body: Vec<u8> = (0..len)
            .map(|_| {
                // xorshift32
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        specs.push((frag_id, kind, body, max_data));
    }
    let mut models: Vec<Model<'_>> = specs
        .iter()
        .map(|(frag_id, kind, body, max_data)| {
            let frags: Vec<Fragment<'_>> =
                Fragments::new(*frag_id, *kind, body, *max_data).collect();
            assert_eq!(frags.len(), body.len().div_ceil(*max_data));
            Model {
                frag_id: *frag_id,
                kind: *kind as u8,
                body,
                got: vec![false; frags.len()],
                frags,
                created: None,
                got_count: 0,
                done: false,
                asked: 0,
            }
        })
        .collect();

    while let (Some(ctl), Some(idx)) = (input.u8(), input.u16()) {
        now += advance(ctl >> 1);
        let m = &mut models[usize::from(ctl & 1) % count as usize];
        let i = usize::from(idx) % m.frags.len();
        deliver(r, now, m, i);
        check_missing(r, now, &mut models);
    }
    if mode & 2 != 0 {
        for m in &mut models {
            for i in 0..m.frags.len() {
                deliver(r, now, m, i);
            }
            assert!(
                m.done,
                "all fragments of message {} delivered at once, not completed",
                m.frag_id
            );
        }
    }
    now
}

/// Delivers fragment `i` of `m` and checks the result against the model.
fn deliver(r: &mut Reassembler, now: Instant, m: &mut Model<'_>, i: usize) {
    let frag = m.frags[i];
    let res = r.handle_fragment(now, STREAM, SessionId(1), &frag);
    let res = res
        .unwrap_or_else(|e| panic!("honest fragment {i} of message {} rejected: {e}", m.frag_id));
    if m.done {
        assert!(res.is_none(), "message {} completed twice", m.frag_id);
    } else {
        if m.created.is_some_and(|c| c + TIMEOUT <= now) {
            m.created = None;
            m.got.fill(false);
            m.got_count = 0;
            m.asked = 0;
        }
        m.created.get_or_insert(now);
        if !m.got[i] {
            m.got[i] = true;
            m.got_count += 1;
        }
        if m.got_count == m.frags.len() {
            let done = res.unwrap_or_else(|| {
                panic!(
                    "message {} not completed though all its fragments arrived in time",
                    m.frag_id
                )
            });
            assert_eq!(done.kind, m.kind);
            assert!(
                done.body == m.body,
                "message {} reassembled wrong",
                m.frag_id
            );
            m.done = true;
        } else {
            assert!(
                res.is_none(),
                "message {} completed with fragments missing",
                m.frag_id
            );
        }
    }
    check_bounds(r, now);
}

/// `poll_missing` names, for each partial message, the bytes it lacks.
fn check_missing(r: &mut Reassembler, now: Instant, models: &mut [Model<'_>]) {
    let due = r.missing_timeout(Duration::ZERO, MISSING_ATTEMPTS);
    let missing = r.poll_missing(
        now,
        Duration::ZERO,
        MISSING_RETRY,
        MISSING_ATTEMPTS,
        MISSING_RANGES,
    );
    assert_eq!(
        due.is_some_and(|t| t <= now),
        !missing.is_empty(),
        "missing_timeout {due:?} at {now:?} disagrees with poll_missing {missing:?}"
    );
    for Missing {
        stream,
        session,
        frag_id,
        ranges,
    } in missing
    {
        assert_eq!((stream, session), (STREAM, SessionId(1)));
        let m = models
            .iter_mut()
            .find(|m| m.frag_id == frag_id)
            .expect("a message sent");
        assert!(!m.done && m.created.is_some(), "no partial of {frag_id}");
        m.asked += 1;
        assert!(m.asked <= MISSING_ATTEMPTS, "asked {} times", m.asked);
        assert!(!ranges.is_empty() && ranges.len() <= MISSING_RANGES);
        // The complement of what arrived, in order.
        let mut want = Vec::new();
        let mut at = 0usize;
        for (f, &got) in m.frags.iter().zip(&m.got) {
            let start = f.offset as usize;
            if got {
                if start > at {
                    want.push((at as u32, start as u32));
                }
                at = at.max(start + f.data.len());
            }
        }
        if at < m.body.len() {
            want.push((at as u32, m.body.len() as u32));
        }
        // Touching gaps between fragments not received form one range.
        want.dedup_by(|b, a| {
            if a.1 == b.0 {
                a.1 = b.1;
                true
            } else {
                false
            }
        });
        want.truncate(MISSING_RANGES);
        assert_eq!(ranges, want, "missing pieces of message {frag_id}");
    }
}
