//! A hand-driven rig: one publisher, one subscriber, and a test that decides
//! which datagrams arrive and when timers fire. Every step checks the claim
//! "consistent ⇒ equal to the publisher as of `status().seq`".

use std::time::{Duration, Instant};

use super::sim::{DigestReplica, Op, SimPublisher};
use crate::publisher::{PublisherConfig, SnapshotRate};
use crate::subscriber::{Event, Subscriber, SubscriberConfig};
use crate::{SessionId, StreamId};

pub(crate) struct Rig {
    pub(crate) now: Instant,
    pub(crate) publisher: SimPublisher,
    pub(crate) sub: Subscriber,
    pub(crate) replica: DigestReplica,
    pub(crate) buf: Vec<u8>,
    /// Times the claim was made and checked.
    pub(crate) claims: std::cell::Cell<u64>,
    /// Every event the subscriber emitted, in order.
    pub(crate) events: Vec<Event>,
}

pub(crate) fn rig_pub_config() -> PublisherConfig {
    let mut c = PublisherConfig::default();
    c.stream(StreamId(3))
        .snapshot_rate(SnapshotRate::LeavesPerSec(10_000))
        .heartbeat_interval(Duration::from_millis(10))
        .min_cycle_interval(Duration::from_millis(20));
    c
}

pub(crate) fn rig_sub_config() -> SubscriberConfig {
    let mut c = SubscriberConfig::default();
    c.stream(StreamId(3))
        .reorder_timeout(Duration::from_millis(5))
        .missed_heartbeats(5);
    c
}

pub(crate) fn leaves(n: u16) -> Vec<(u16, i64)> {
    (0..n).map(|k| (k, i64::from(k) * 10)).collect()
}

impl Rig {
    pub(crate) fn new(initial: &[(u16, i64)], sub_cfg: SubscriberConfig) -> Self {
        let now = Instant::now();
        Self {
            now,
            publisher: SimPublisher::new(
                rig_pub_config(),
                SessionId(1),
                now,
                initial,
                Default::default(),
            ),
            sub: Subscriber::new(sub_cfg).unwrap(),
            replica: DigestReplica::default(),
            buf: vec![0; 1452],
            claims: std::cell::Cell::new(0),
            events: Vec::new(),
        }
    }

    pub(crate) fn output(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(len) =
            self.publisher
                .core
                .poll_transmit(self.now, &self.publisher.state, &mut self.buf)
        {
            out.push(self.buf[..len].to_vec());
        }
        out
    }

    pub(crate) fn deliver(&mut self, datagrams: &[Vec<u8>]) {
        for d in datagrams {
            self.sub.handle_datagram(self.now, d, &mut self.replica);
            self.check_claim();
            self.drain_events();
        }
    }

    /// Fires the subscriber's timers at `now`.
    pub(crate) fn tick(&mut self) {
        self.sub.handle_timeout(self.now, &mut self.replica);
        self.check_claim();
        self.drain_events();
    }

    pub(crate) fn drain_events(&mut self) {
        while let Some(e) = self.sub.poll_event() {
            self.events.push(e);
        }
    }

    /// Publishes a delta whose datagrams are lost.
    pub(crate) fn publish_dropped(&mut self, op: Op) {
        self.publisher.publish(&op);
        let _lost = self.output();
    }

    pub(crate) fn assert_equal(&self) {
        assert_eq!(self.replica.typed.state(), self.publisher.state.state());
    }

    /// 1 ms steps, delivering everything; returns what was sent.
    pub(crate) fn run(&mut self, dt: Duration) -> Vec<Vec<u8>> {
        let end = self.now + dt;
        let mut sent = Vec::new();
        while self.now < end {
            self.now += Duration::from_millis(1);
            let out = self.output();
            self.deliver(&out);
            self.tick();
            sent.extend(out);
        }
        sent
    }

    pub(crate) fn publish_delivered(&mut self, op: Op) {
        self.publisher.publish(&op);
        let out = self.output();
        self.deliver(&out);
    }

    /// The claim under review: consistent ⇒ the replica equals the
    /// publisher's state as of `status().seq`.
    pub(crate) fn claim_holds(&self) -> Result<(), String> {
        let st = self.sub.status();
        if !st.consistent {
            return Ok(());
        }
        self.claims.set(self.claims.get() + 1);
        if st.session != Some(self.publisher.core.session()) {
            // An earlier session: compare digests.
            let session = st.session.ok_or("consistent without a session")?;
            let want = self
                .publisher
                .history
                .get(&session)
                .and_then(|h| h.get(st.seq.0 as usize))
                .ok_or_else(|| format!("consistent at unknown seq {} of {session}", st.seq))?;
            if *want != self.replica.digest {
                return Err(format!(
                    "claims consistent at {session}/{} but differs",
                    st.seq
                ));
            }
            return Ok(());
        }
        let want = self
            .publisher
            .states
            .get(st.seq.0 as usize)
            .ok_or_else(|| format!("consistent at unknown seq {}", st.seq))?;
        if want != self.replica.typed.state() {
            return Err(format!(
                "claims consistent at seq {} but\n replica   {:?}\n publisher {:?}",
                st.seq,
                self.replica.typed.state().0,
                want.0
            ));
        }
        Ok(())
    }

    pub(crate) fn check_claim(&self) {
        if let Err(e) = self.claim_holds() {
            panic!("{e}\nstats {:?}", self.sub.stats());
        }
    }

    pub(crate) fn converged(&self) -> bool {
        let st = self.sub.status();
        st.synced
            && st.consistent
            && st.session == Some(self.publisher.core.session())
            && st.seq == self.publisher.core.last_seq()
            && self.replica.typed.state() == self.publisher.state.state()
    }
}
