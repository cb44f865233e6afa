//! The sync algorithm under the simulated network of [`super::sim`], over
//! many seeds and every profile.
//!
//! Every run asserts, at every step, that a subscriber claiming consistency
//! holds exactly the publisher's state at the sequence number it reports and
//! that memory stays within its bounds, and, at quiescence, that every
//! subscriber is synced, consistent and equal to the publisher. Over all
//! seeds, the runs must have exercised what they claim to (NAKs, repairs,
//! snapshot fallbacks, forgeries, restarts...).
//!
//! Environment:
//!
//! * `GRAPEVINE_SIM_SEEDS=N`: seeds of `converges_over_many_seeds` (default
//!   [`DEFAULT_SEEDS`]); `GRAPEVINE_SIM_FIRST=K`: first seed (default 0);
//! * `GRAPEVINE_SIM_PROFILE=name`: only that profile (default: the profile
//!   cycles with the seed);
//! * `GRAPEVINE_SIM_ONLY=seed`: that one seed (with its profile);
//! * `GRAPEVINE_SIM_THREADS=n`: worker threads (default: the machine's
//!   parallelism);
//! * `GRAPEVINE_SIM_SETTLE=secs`: the settle period (default 4 s);
//! * `GRAPEVINE_SIM_TRACE=i`: print what subscriber `i` receives (with
//!   `GRAPEVINE_SIM_ONLY`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::sim::*;

/// Seeds of the default `cargo test` run: every profile gets a share.
const DEFAULT_SEEDS: u64 = 1100;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

fn profile_of(seed: u64) -> Profile {
    match std::env::var("GRAPEVINE_SIM_PROFILE") {
        Ok(name) => Profile::from_name(&name)
            .unwrap_or_else(|| panic!("unknown profile {name}; one of {PROFILES:?}")),
        Err(_) => PROFILES[(seed % PROFILES.len() as u64) as usize],
    }
}

/// The outcome of many seeds.
#[derive(Default)]
struct Sweep {
    total: Tally,
    by_profile: BTreeMap<&'static str, Tally>,
    failures: Vec<(u64, Profile, String)>,
}

/// Runs every seed of `seeds` on worker threads.
fn sweep(seeds: Vec<u64>) -> Sweep {
    let threads = env_u64("GRAPEVINE_SIM_THREADS")
        .map(|n| n as usize)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, 64);
    let next = AtomicU64::new(0);
    let out = Mutex::new(Sweep::default());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(&seed) = seeds.get(i) else { break };
                let profile = profile_of(seed);
                let res = std::panic::catch_unwind(|| run(seed, profile)).unwrap_or_else(|p| {
                    Err(p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "panicked".into()))
                });
                let mut o = out.lock().unwrap();
                match res {
                    Ok(t) => {
                        o.total.add(&t);
                        o.by_profile.entry(profile.name()).or_default().add(&t);
                    }
                    Err(e) => o.failures.push((seed, profile, e)),
                }
            });
        }
    });
    out.into_inner().unwrap()
}

#[test]
fn converges_over_many_seeds() {
    if let Some(only) = env_u64("GRAPEVINE_SIM_ONLY") {
        let profile = profile_of(only);
        let t = run(only, profile).unwrap_or_else(|e| panic!("{e}"));
        eprintln!("seed {only} ({}): {t:?}", profile.name());
        return;
    }
    let n = env_u64("GRAPEVINE_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
    let first = env_u64("GRAPEVINE_SIM_FIRST").unwrap_or(0);
    let started = Instant::now();
    let s = sweep((first..first + n).collect());
    eprintln!(
        "{n} seeds from {first} in {:.1?}: {} failed",
        started.elapsed(),
        s.failures.len()
    );
    for (name, t) in &s.by_profile {
        eprintln!(
            "  {name:>10}: runs {} claims {} naks {} by-nak {} by-snapshot {} frag-naks {} \
             unbelieved {} reanchors {} restarts {}/{}",
            t.runs,
            t.claims,
            t.naks_sent,
            t.repaired_by_nak,
            t.repaired_by_snapshot,
            t.frag_naks_sent,
            t.unbelieved,
            t.reanchors,
            t.restarts,
            t.sub_restarts
        );
    }
    for (seed, profile, e) in s.failures.iter().take(5) {
        eprintln!("\nseed {seed} ({}) failed: {e}\n", profile.name());
    }
    let failed: Vec<_> = s.failures.iter().map(|f| (f.0, f.1.name())).collect();
    assert!(failed.is_empty(), "failing seeds: {failed:?}");
    if std::env::var("GRAPEVINE_SIM_PROFILE").is_err() && n >= PROFILES.len() as u64 * 10 {
        assert_exercised(&s, n);
    }
}

/// The runs exercised what they claim to.
fn assert_exercised(s: &Sweep, n: u64) {
    let t = &s.total;
    for p in PROFILES {
        let runs = s.by_profile.get(p.name()).map_or(0, |t| t.runs);
        assert!(
            runs >= n / PROFILES.len() as u64,
            "profile {} ran {runs} times",
            p.name()
        );
    }
    let checks: [(&str, bool); 25] = [
        (
            "sealed runs, with datagrams refused",
            t.sealed_runs > n / 10 && t.refused > 0,
        ),
        ("consistency claimed and checked", t.claims > n * 10),
        ("every subscriber synced", t.synced_events >= t.runs),
        ("NAKs sent", t.naks_sent > n),
        ("NAKs received by publishers", t.naks_received > n),
        ("deltas retransmitted", t.retransmits > n),
        ("holes repaired by NAK", t.repaired_by_nak > n),
        (
            "holes given up to snapshot repair",
            t.repaired_by_snapshot > 0 && t.gaps > 0,
        ),
        ("holes filled late by reordering", t.filled_late > 0),
        ("NAKs held back on hearing a repair", t.naks_postponed > 0),
        ("repairs coalesced by the hold-off", t.repairs_coalesced > 0),
        ("FragNaks sent", t.frag_naks_sent > 0),
        ("fragments resent", t.fragments_resent > 0),
        ("messages fragmented", t.fragmented > 0),
        ("huge forgeries injected", t.forged_huge > 0),
        ("small forged jumps injected", t.forged_small > 0),
        ("claims unbelieved", t.unbelieved > t.forged_huge),
        ("tails re-anchored", t.reanchors > 0),
        (
            "heartbeats in answer to NAKs beyond the latest",
            t.future_nak_heartbeats > 0,
        ),
        (
            "publisher restarts",
            t.restarts > 0 && t.publisher_restarts_seen > 0,
        ),
        (
            "subscriber restarts",
            t.sub_restarts > 0 && t.sub_restart_events > 0,
        ),
        ("partitions and stalls", t.partitions > 0 && t.stalls > 0),
        ("NAKs lost", t.naks_lost > 0),
        ("repairs lost", t.repairs_lost > 0),
        (
            "duplicates dropped and ghosts removed",
            t.duplicates > 0 && t.ghosts_removed > 0,
        ),
    ];
    let missing: Vec<&str> = checks.iter().filter(|c| !c.1).map(|c| c.0).collect();
    assert!(missing.is_empty(), "not exercised: {missing:?}\n{t:#?}");
}

#[test]
fn late_joiner_syncs_from_one_cycle_without_deltas() {
    // A publisher with 50 leaves and no deltas at all: a subscriber that
    // joins late must sync from snapshots alone.
    let mut sc = Scenario::draw(1, Profile::Calm);
    sc.sub_cfgs.truncate(1);
    sc.joins = vec![Duration::from_millis(200)];
    sc.initial_leaves = 50;
    sc.key_space = 50;
    sc.fat = None;
    sc.delta_gap = Duration::from_secs(3600);
    sc.down = Faults::default();
    sc.up = Faults::default();
    sc.restarts.clear();
    sc.sub_restarts.clear();
    sc.stalls.clear();
    sc.run = Duration::from_millis(300);
    let mut w = World::new(sc);
    w.auto_deltas = false;
    let t = w.run().unwrap();
    assert_eq!(t.synced_events, 1);
    assert_eq!(t.gaps, 0);
    assert_eq!(t.naks_sent, 0);
}

#[test]
fn heavy_loss_with_restart_and_partition_converges() {
    let mut total = Tally::default();
    for seed in 0..20 {
        let mut sc = Scenario::draw(10_000 + seed, Profile::Mixed);
        sc.down.loss = 0.3;
        sc.down.duplicate = 0.1;
        sc.down.jitter = Duration::from_millis(3);
        sc.up.loss = 0.3;
        sc.repair_loss = 0.3;
        sc.restarts = vec![sc.run / 2];
        sc.partitions = vec![Partition {
            from: sc.run / 4,
            to: sc.run / 4 + Duration::from_millis(100),
            mask: u64::MAX,
        }];
        while sc.sub_cfgs.len() < 3 {
            sc.sub_cfgs.push(sc.sub_cfgs[0].clone());
        }
        sc.sub_cfgs.truncate(3);
        sc.joins = vec![Duration::ZERO, sc.run / 3, sc.run];
        sc.sub_restarts.retain(|&(_, i)| i < 3);
        let t = World::new(sc).run().unwrap_or_else(|e| panic!("{e}"));
        total.add(&t);
    }
    assert!(
        total.repaired_by_nak > 0 && total.repaired_by_snapshot > 0,
        "{total:?}"
    );
}
