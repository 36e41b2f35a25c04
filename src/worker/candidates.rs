//! The balancer's view of a snapshot for one connection ([`Pool`]): a backend is eligible
//! when its tier admits it ([`Tier`]: the up primaries, else the up backups, else in panic
//! mode every `down` backend; drained and maintenance ones never), it was not already
//! tried by this connection, and it is below its max-conns. Retries stay in the tier.

use std::sync::atomic::Ordering;

use crate::backend::{BackendId, SharedCounters, Snapshot};
use crate::balance::{ewma, PeakEwma, Pool};
use crate::tier::Tier;

pub(super) struct Candidates<'a> {
    snapshot: &'a Snapshot,
    counters: &'a SharedCounters,
    tried: &'a [BackendId],
    tier: Tier,
}

impl<'a> Candidates<'a> {
    pub(super) fn new(
        snapshot: &'a Snapshot,
        counters: &'a SharedCounters,
        tried: &'a [BackendId],
    ) -> Candidates<'a> {
        Candidates {
            snapshot,
            counters,
            tried,
            tier: snapshot.tier(),
        }
    }

    /// Backends in the snapshot.
    pub(super) fn backends(&self) -> usize {
        self.snapshot.backends.len()
    }

    pub(super) fn eligible_ignoring_limit(&self, i: usize) -> bool {
        let b = &self.snapshot.backends[i];
        self.tier.admits(b.backup, b.state) && !self.tried.contains(&b.id)
    }

    /// At its max-conns (open connections across all workers).
    pub(super) fn full(&self, i: usize) -> bool {
        let b = &self.snapshot.backends[i];
        b.max_conns
            .is_some_and(|m| self.counters.get(b.id).active() >= u64::from(m))
    }
}

impl Pool for Candidates<'_> {
    fn len(&self) -> usize {
        self.snapshot.backends.len()
    }
    fn weight(&self, i: usize) -> u32 {
        self.snapshot.backends[i].weight
    }
    fn eligible(&self, i: usize) -> bool {
        self.eligible_ignoring_limit(i) && !self.full(i)
    }
    fn active(&self, i: usize) -> u64 {
        self.counters.get(self.snapshot.backends[i].id).active()
    }
    fn latency_ns(&self, i: usize, now_ns: u64) -> f64 {
        let c = self.counters.get(self.snapshot.backends[i].id);
        PeakEwma::from_bits(
            c.ewma_ns_bits.load(Ordering::Relaxed),
            c.ewma_stamp_ns.load(Ordering::Relaxed),
        )
        .get_at(now_ns, ewma::DEFAULT_DECAY_NS)
    }
}
