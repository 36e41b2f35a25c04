//! The balancer's view of a snapshot for one connection ([`Pool`]): a backend is eligible
//! when it is up and not already tried by this connection, and below its max-conns. In
//! panic mode (no backend up) the health checks are ignored and every `down` backend is
//! eligible; drained and maintenance ones never are.

use std::sync::atomic::Ordering;

use crate::backend::{BackendId, BackendState, SharedCounters, Snapshot};
use crate::balance::{ewma, PeakEwma, Pool};

pub(super) struct Candidates<'a> {
    snapshot: &'a Snapshot,
    counters: &'a SharedCounters,
    tried: &'a [BackendId],
    panic: bool,
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
            panic: snapshot.none_up(),
        }
    }

    /// Backends in the snapshot.
    pub(super) fn backends(&self) -> usize {
        self.snapshot.backends.len()
    }

    pub(super) fn eligible_ignoring_limit(&self, i: usize) -> bool {
        let b = &self.snapshot.backends[i];
        let state_ok = b.state.accepts_new() || (self.panic && b.state == BackendState::Down);
        state_ok && !self.tried.contains(&b.id)
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
