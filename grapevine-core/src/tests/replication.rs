//! The sync algorithm under a simulated network, over many seeds.
//!
//! Every run asserts, at every step, that a subscriber claiming consistency
//! holds exactly the publisher's state at the sequence number it reports,
//! and, at quiescence, that every subscriber is synced, consistent and equal
//! to the publisher.

use std::time::{Duration, Instant};

use super::sim::*;
use crate::subscriber::Event;
use crate::SessionId;

/// One scenario's shape, drawn from the seed.
#[derive(Debug, Clone)]
struct Scenario {
    seed: u64,
    subscribers: usize,
    /// When each subscriber starts listening.
    joins: Vec<Duration>,
    initial_leaves: usize,
    key_space: u16,
    delta_gap: Duration,
    faults: Faults,
    /// Publisher restarts at these times.
    restarts: Vec<Duration>,
    /// A window in which every datagram is lost.
    partition: Option<(Duration, Duration)>,
    run: Duration,
}

impl Scenario {
    fn draw(seed: u64) -> Self {
        let mut r = Rng::new(seed);
        let subscribers = 1 + r.below(3) as usize;
        let run = Duration::from_millis(300 + r.below(700));
        let joins = (0..subscribers)
            .map(|_| Duration::from_millis(r.below(run.as_millis() as u64)))
            .collect();
        let loss = [0.0, 0.01, 0.05, 0.2][r.below(4) as usize];
        let faults = Faults {
            loss,
            duplicate: [0.0, 0.05][r.below(2) as usize],
            jitter: Duration::from_micros([0, 500, 5_000][r.below(3) as usize]),
            dup_delay: Duration::ZERO,
        };
        let restarts = if r.chance(0.2) {
            vec![Duration::from_millis(r.below(run.as_millis() as u64))]
        } else {
            vec![]
        };
        let partition = r.chance(0.1).then(|| {
            let at = Duration::from_millis(r.below(run.as_millis() as u64));
            (at, at + Duration::from_millis(50 + r.below(200)))
        });
        Scenario {
            seed,
            subscribers,
            joins,
            initial_leaves: r.below(60) as usize,
            key_space: 1 + r.below(80) as u16,
            delta_gap: Duration::from_micros(200 + r.below(3000)),
            faults,
            restarts,
            partition,
            run,
        }
    }
}

struct Outcome {
    claims: u64,
    gaps: u64,
    synced_events: usize,
}

fn run(sc: &Scenario) -> Result<Outcome, String> {
    let mut rng = Rng::new(sc.seed.wrapping_mul(31) + 7);
    let start = Instant::now();
    let pub_cfg = sim_publisher_config(&mut rng);
    let initial: Vec<(u16, i64)> = (0..sc.initial_leaves as u16)
        .map(|k| (k % sc.key_space, i64::from(k)))
        .collect();
    let mut publisher = SimPublisher::new(
        pub_cfg.clone(),
        SessionId(rng.next_u64()),
        start,
        &initial,
        Default::default(),
    );
    let mut subs: Vec<SimSubscriber> = (0..sc.subscribers)
        .map(|_| SimSubscriber::new(sim_subscriber_config(&mut rng)))
        .collect();
    let mut net = Net::default();
    let mut restarts = sc.restarts.clone();
    let end = start + sc.run;
    let settle_until = end + Duration::from_secs(2);
    let mut now = start;
    let mut next_delta = start;
    let mut buf = vec![0u8; 1452];
    let mut steps = 0u64;
    while now <= settle_until {
        steps += 1;
        if steps > 2_000_000 {
            return Err("simulation did not finish".into());
        }
        let elapsed = now - start;
        let quiet = now > end;
        let faults = if quiet { Faults::default() } else { sc.faults };
        let partitioned = sc
            .partition
            .is_some_and(|(a, b)| elapsed >= a && elapsed < b && !quiet);
        // Joins.
        for (i, s) in subs.iter_mut().enumerate() {
            if !s.joined && elapsed >= sc.joins[i] {
                s.joined = true;
            }
        }
        // Restart: a new session with a fresh state.
        if restarts.first().is_some_and(|&t| elapsed >= t) {
            restarts.remove(0);
            let history = std::mem::take(&mut publisher.history);
            let fresh: Vec<(u16, i64)> = (0..rng.below(20) as u16)
                .map(|k| (k % sc.key_space, -i64::from(k)))
                .collect();
            publisher = SimPublisher::new(
                pub_cfg.clone(),
                SessionId(rng.next_u64()),
                now,
                &fresh,
                history,
            );
        }
        // Deltas: a few at a time, so that they share datagrams.
        if !quiet && now >= next_delta {
            for _ in 0..1 + rng.below(4) {
                let key = rng.below(u64::from(sc.key_space)) as u16;
                let op = match rng.below(10) {
                    0..=4 => Op::Add(key, 1 + rng.below(9) as i64),
                    5..=7 => Op::Set(key, rng.below(1000) as i64),
                    _ => Op::Remove(key),
                };
                publisher.publish(&op);
            }
            next_delta = now + sc.delta_gap;
        }
        // Publisher output goes to every subscriber that listens.
        while let Some(len) = publisher
            .core
            .poll_transmit(now, &publisher.state, &mut buf)
        {
            if partitioned {
                continue;
            }
            for (i, s) in subs.iter().enumerate() {
                if s.joined {
                    net.send(&mut rng, now, i, faults, &buf[..len]);
                }
            }
        }
        // Deliveries.
        while let Some((to, d)) = net.pop_due(now) {
            let s = &mut subs[to];
            s.core.handle_datagram(now, &d, &mut s.replica);
            s.check(&publisher.history, &publisher.states)
                .map_err(|e| format!("after a datagram at {:?}: {e}", now - start))?;
        }
        for s in subs.iter_mut() {
            if s.core.poll_timeout().is_some_and(|t| t <= now) {
                s.core.handle_timeout(now, &mut s.replica);
                s.check(&publisher.history, &publisher.states)
                    .map_err(|e| format!("after a timeout at {:?}: {e}", now - start))?;
            }
        }
        // Advance the clock to the next thing that happens.
        let mut next = [
            publisher.core.poll_timeout(),
            net.next_time(),
            (!quiet).then_some(next_delta),
            Some(settle_until + Duration::from_micros(1)),
        ]
        .into_iter()
        .flatten()
        .chain(subs.iter().filter_map(|s| s.core.poll_timeout()))
        .chain(restarts.first().map(|&t| start + t))
        .chain(sc.joins.iter().map(|&t| start + t).filter(|&t| t > now))
        .min()
        .unwrap_or(settle_until);
        if next <= now {
            next = now + Duration::from_micros(1);
        }
        now = next;
    }
    // Quiescence: everyone equal to the publisher.
    let want = publisher.state.state();
    let mut claims = 0;
    let mut gaps = 0;
    let mut synced_events = 0;
    for (i, s) in subs.iter().enumerate() {
        let st = s.core.status();
        if !(st.synced && st.consistent) {
            return Err(format!(
                "subscriber {i} not converged: {st:?} {:?}",
                s.core.stats()
            ));
        }
        if st.session != Some(publisher.core.session()) || st.seq != publisher.core.last_seq() {
            return Err(format!(
                "subscriber {i} at {:?}/{} but publisher at {}/{}",
                st.session,
                st.seq,
                publisher.core.session(),
                publisher.core.last_seq()
            ));
        }
        if s.replica.typed.state() != want {
            return Err(format!(
                "subscriber {i} differs:\n replica   {:?}\n publisher {:?}",
                s.replica.typed.state(),
                want
            ));
        }
        if st.leaves != want.0.len() || st.stale_leaves != 0 {
            return Err(format!("subscriber {i} status miscounts leaves: {st:?}"));
        }
        if s.replica.typed.digest() != publisher.state.digest() {
            return Err(format!("subscriber {i} digest differs"));
        }
        claims += s.consistent_claims;
        gaps += s.core.stats().gaps;
        synced_events += s
            .events
            .iter()
            .filter(|e| matches!(e, Event::Synced { .. }))
            .count();
    }
    Ok(Outcome {
        claims,
        gaps,
        synced_events,
    })
}

fn seeds() -> u64 {
    std::env::var("GRAPEVINE_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000)
}

#[test]
fn converges_over_many_seeds() {
    let n = seeds();
    if let Some(only) = std::env::var("GRAPEVINE_SIM_ONLY")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        let sc = Scenario::draw(only);
        run(&sc).unwrap_or_else(|e| panic!("seed {only}: {e}\n{sc:?}"));
        return;
    }
    let mut claims = 0;
    let mut gaps = 0;
    let mut lossy = 0;
    for seed in 0..n {
        let sc = Scenario::draw(seed);
        if sc.faults.loss > 0.0 {
            lossy += 1;
        }
        match run(&sc) {
            Ok(o) => {
                claims += o.claims;
                gaps += o.gaps;
                assert!(
                    o.synced_events >= sc.subscribers,
                    "seed {seed}: each subscriber synced"
                );
            }
            Err(e) => panic!("seed {seed} failed: {e}\nscenario: {sc:?}"),
        }
    }
    // The runs exercised what they claim to.
    assert!(lossy > n / 2, "most scenarios are lossy");
    assert!(gaps > n, "losses produced gaps: {gaps}");
    assert!(
        claims > n * 10,
        "consistency was claimed and checked: {claims}"
    );
}

#[test]
fn late_joiner_syncs_from_one_cycle_without_deltas() {
    // A publisher with 50 leaves and no deltas at all: a subscriber that
    // joins late must sync from snapshots alone.
    let sc = Scenario {
        seed: 1,
        subscribers: 1,
        joins: vec![Duration::from_millis(200)],
        initial_leaves: 50,
        key_space: 50,
        delta_gap: Duration::from_secs(3600),
        faults: Faults::default(),
        restarts: vec![],
        partition: None,
        run: Duration::from_millis(0),
    };
    let o = run(&sc).unwrap();
    assert_eq!(o.synced_events, 1);
    assert_eq!(o.gaps, 0);
}

#[test]
fn heavy_loss_with_restart_and_partition_converges() {
    for seed in 0..20 {
        let mut sc = Scenario::draw(10_000 + seed);
        sc.faults.loss = 0.3;
        sc.faults.duplicate = 0.1;
        sc.faults.jitter = Duration::from_millis(3);
        sc.restarts = vec![sc.run / 2];
        sc.partition = Some((sc.run / 4, sc.run / 4 + Duration::from_millis(100)));
        sc.subscribers = 3;
        sc.joins = vec![Duration::ZERO, sc.run / 3, sc.run];
        if let Err(e) = run(&sc) {
            panic!("seed {seed}: {e}\n{sc:?}");
        }
    }
}
