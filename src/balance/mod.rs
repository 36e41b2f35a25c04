//! Backend selection. Pure: no I/O and no clock reads (time is an argument), so every
//! algorithm is a plain struct that unit and property tests drive directly.
//!
//! The control thread makes one [`Prepared`] per snapshot (it holds what all workers share:
//! the Maglev table, the hash ring); each worker takes its own [`Balance`] from it with
//! [`Prepared::selector`] (per-worker state such as a cursor or a PRNG lives there) and calls
//! [`Balance::pick`] for each new connection. Connect retries call `pick` again with the
//! failed backends marked ineligible by the [`Pool`], which walks the algorithm's fallback
//! order: deterministic per key for the hashing algorithms, and `None` only when no backend
//! is eligible.

mod algorithm;
mod bounded;
pub mod ewma;
mod hash;
mod least_conn;
mod least_time;
mod maglev;
mod p2c;
mod random;
mod ring_hash;
mod rng;
mod round_robin;
mod source_hash;
mod weighted;
mod weighted_random;

pub use algorithm::{Algorithm, HashKey, MAX_MAGLEV_TABLE_SIZE};
pub use ewma::PeakEwma;
pub use hash::{hash_bytes, hash_client};
pub use least_conn::LeastConn;
pub use least_time::LeastTime;
pub use maglev::{
    table_size_for, validate_table_size, Maglev, MaglevTable, DEFAULT_TABLE_SIZE,
    MIN_SLOTS_PER_BACKEND,
};
pub use p2c::P2c;
pub use random::Random;
pub use ring_hash::{HashRing, RingHash};
pub use round_robin::RoundRobin;
pub use source_hash::SourceHash;
pub use weighted::SmoothWeighted;
pub use weighted_random::WeightedRandom;

use std::sync::Arc;

/// What an algorithm may know about the backends of the current snapshot, by index.
pub trait Pool {
    /// Number of backends (indices `0..len()`).
    fn len(&self) -> usize;
    /// No backends at all.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Effective weight (>= 1).
    fn weight(&self, i: usize) -> u32;
    /// May backend `i` take this connection (healthy, not already tried)?
    fn eligible(&self, i: usize) -> bool;
    /// Active connections to `i` across all workers.
    fn active(&self, i: usize) -> u64;
    /// Connect-time estimate of `i` at `now_ns` in nanoseconds, 0.0 if unknown: the
    /// peak-EWMA from the shared counters read with [`PeakEwma::get_at`]. Only `least-time`
    /// asks; without it `least-time` is `p2c`.
    fn latency_ns(&self, _i: usize, _now_ns: u64) -> f64 {
        0.0
    }
}

/// The inputs of one decision besides the pool.
#[derive(Debug, Clone, Copy, Default)]
pub struct Request {
    /// Hash of the client address (per `--hash-key`); used by the hashing algorithms.
    pub key: u64,
    /// Monotonic time in nanoseconds, for time-decaying state.
    pub now_ns: u64,
    /// Another backend of this connection failed: the pick walks the fallback order but
    /// must not move a cursor, or the next connection would start behind the failed one
    /// (with round robin and one dead backend out of two, every client would try the dead
    /// one first).
    pub retry: bool,
}

/// A backend selection algorithm with its per-worker state.
pub trait Balance: Send {
    /// Index of the backend for this request, skipping ineligible ones, or `None` when no
    /// eligible backend is left.
    fn pick(&mut self, pool: &dyn Pool, req: &Request) -> Option<usize>;
}

/// Backend facts an algorithm is built from, in snapshot order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member<'a> {
    /// The stable key (backend name).
    pub key: &'a str,
    pub weight: u32,
}

/// What a selector is built with besides the algorithm and the members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildOptions {
    /// Maglev table size. Should pass [`validate_table_size`] (check it with the config);
    /// if it doesn't, the build grows it to [`table_size_for`] rather than fail.
    pub maglev_table_size: u64,
    /// `--hash-balance-factor` (percent of the mean load) for the hashing algorithms.
    pub hash_balance_factor: Option<u32>,
    /// Seeds the random choices (`random`, `weighted-random`, `p2c`, `least-time`), mixed
    /// with the worker number. Never affects the hashing algorithms, which must agree across
    /// instances.
    pub seed: u64,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            maglev_table_size: DEFAULT_TABLE_SIZE,
            hash_balance_factor: None,
            seed: 0x7572_696e_676c_6221,
        }
    }
}

/// What every worker's selector for one snapshot shares: the Maglev table or hash ring,
/// built once (on the control thread) and cloned by `Arc`. Workers call
/// [`Prepared::selector`] for their own per-worker state.
#[derive(Debug, Clone)]
pub struct Prepared {
    algorithm: Algorithm,
    members: usize,
    opts: BuildOptions,
    maglev: Option<Arc<MaglevTable>>,
    ring: Option<Arc<HashRing>>,
}

impl Prepared {
    pub fn new(algorithm: Algorithm, members: &[Member<'_>], opts: &BuildOptions) -> Prepared {
        let maglev = (algorithm == Algorithm::Maglev)
            .then(|| Arc::new(MaglevTable::new_or_grow(members, opts.maglev_table_size)));
        let ring = (algorithm == Algorithm::RingHash).then(|| Arc::new(HashRing::new(members)));
        Prepared {
            algorithm,
            members: members.len(),
            opts: *opts,
            maglev,
            ring,
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The selector for `worker` that continues a sequence `position` picks in (the
    /// worker's picks so far), so that a new snapshot does not restart it: round-robin
    /// cursors move on, smooth weighted round robin is advanced to the same point of its
    /// cycle over `pool`, and random streams are re-seeded with the position. Without this,
    /// frequent snapshots (slow start, health changes) would skew every pick towards the
    /// same backends. The hashing algorithms don't depend on it.
    pub fn selector_at(&self, worker: usize, position: u64, pool: &dyn Pool) -> Box<dyn Balance> {
        let stream = worker.wrapping_add(position as usize);
        match self.algorithm {
            Algorithm::RoundRobin | Algorithm::LeastConn => self.selector(stream),
            Algorithm::WeightedRoundRobin => {
                let mut s = SmoothWeighted::with_len(self.members);
                let total: u64 = (0..pool.len())
                    .filter(|&i| pool.eligible(i))
                    .map(|i| u64::from(pool.weight(i)))
                    .sum();
                // One cycle is sum(weights) picks; bounded so a huge total can't stall.
                for _ in 0..(position % total.max(1)).min(100_000) {
                    s.pick(pool, &Request::default());
                }
                Box::new(s)
            }
            _ => {
                let mut again = self.clone();
                again.opts.seed ^= position.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                again.selector(worker)
            }
        }
    }

    /// The selector for `worker`: per-worker cursors and PRNG streams start apart so that
    /// workers don't move in lockstep.
    pub fn selector(&self, worker: usize) -> Box<dyn Balance> {
        let (n, seed, factor) = (self.members, self.opts.seed, self.opts.hash_balance_factor);
        match self.algorithm {
            Algorithm::RoundRobin => Box::new(RoundRobin::new(n, worker)),
            Algorithm::WeightedRoundRobin => Box::new(SmoothWeighted::with_len(n)),
            Algorithm::Random => Box::new(Random::new(seed, worker)),
            Algorithm::WeightedRandom => Box::new(WeightedRandom::new(seed, worker)),
            Algorithm::LeastConn => Box::new(LeastConn::new(n, worker)),
            Algorithm::P2c => Box::new(P2c::new(seed, worker)),
            Algorithm::LeastTime => Box::new(LeastTime::new(seed, worker)),
            Algorithm::SourceHash => Box::new(SourceHash::new(factor)),
            Algorithm::Maglev => {
                let table = self.maglev.clone().unwrap_or_else(|| {
                    Arc::new(MaglevTable::new_or_grow(&[], self.opts.maglev_table_size))
                });
                Box::new(Maglev::new(table, factor))
            }
            Algorithm::RingHash => {
                let ring = self
                    .ring
                    .clone()
                    .unwrap_or_else(|| Arc::new(HashRing::new(&[])));
                Box::new(RingHash::new(ring, factor))
            }
        }
    }
}

/// Builds the selector for `algorithm` over `members` with [`BuildOptions::default`];
/// `worker` spreads starting points so that workers don't move in lockstep.
pub fn build(algorithm: Algorithm, members: &[Member<'_>], worker: usize) -> Box<dyn Balance> {
    build_with(algorithm, members, worker, &BuildOptions::default())
}

/// [`build`] with options. Builds any shared table anew: with several workers, prefer one
/// [`Prepared`] per snapshot and [`Prepared::selector`] per worker.
pub fn build_with(
    algorithm: Algorithm,
    members: &[Member<'_>],
    worker: usize,
    opts: &BuildOptions,
) -> Box<dyn Balance> {
    Prepared::new(algorithm, members, opts).selector(worker)
}

#[cfg(test)]
mod tests {
    use super::testing::VecPool;
    use super::*;

    /// The retry contract, for every algorithm: marking each pick ineligible walks through
    /// every backend exactly once, then `None`; hashing algorithms walk the same order on
    /// every worker and every instance.
    #[test]
    fn every_algorithm_walks_every_backend_once() {
        let names: Vec<String> = (0..6).map(|i| format!("b{i}")).collect();
        let weights = [1, 3, 2, 1, 5, 1];
        let members: Vec<Member<'_>> = names
            .iter()
            .zip(weights)
            .map(|(key, weight)| Member { key, weight })
            .collect();
        for (name, algorithm) in Algorithm::ALL {
            for factor in [None, Some(125)] {
                let opts = BuildOptions {
                    hash_balance_factor: factor,
                    ..BuildOptions::default()
                };
                let prepared = Prepared::new(algorithm, &members, &opts);
                assert_eq!(prepared.algorithm(), algorithm);
                for key in [0u64, 1, u64::MAX, 0x1234_5678_9abc_def0] {
                    let walk = |worker: usize| {
                        let mut sel = prepared.selector(worker);
                        let mut pool = VecPool::weighted(&weights);
                        pool.active = vec![3, 0, 1, 4, 2, 0];
                        let mut order = Vec::new();
                        let req = |retry| Request {
                            key,
                            now_ns: 5,
                            retry,
                        };
                        while let Some(i) = sel.pick(&pool, &req(!order.is_empty())) {
                            assert!(pool.eligible[i], "{name}: picked ineligible {i}");
                            pool.eligible[i] = false;
                            order.push(i);
                        }
                        order
                    };
                    let mut order = walk(0);
                    if matches!(
                        algorithm,
                        Algorithm::SourceHash | Algorithm::Maglev | Algorithm::RingHash
                    ) {
                        assert_eq!(order, walk(3), "{name}: differs between workers");
                    }
                    order.sort_unstable();
                    assert_eq!(order, vec![0, 1, 2, 3, 4, 5], "{name} {factor:?}");
                }
            }
            let mut empty = build(algorithm, &[], 0);
            assert_eq!(
                empty.pick(&VecPool::equal(0), &Request::default()),
                None,
                "{name}"
            );
        }
    }

    #[test]
    fn build_grows_a_table_too_small_for_the_backends() {
        let names: Vec<String> = (0..20).map(|i| format!("b{i}")).collect();
        let members: Vec<Member<'_>> = names.iter().map(|key| Member { key, weight: 1 }).collect();
        let opts = BuildOptions {
            maglev_table_size: 101,
            ..BuildOptions::default()
        };
        let p = Prepared::new(Algorithm::Maglev, &members, &opts);
        assert_eq!(p.maglev.as_ref().map(|t| t.size()), Some(2003));
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A [`Pool`] over plain vectors for tests.
    use super::Pool;

    #[derive(Debug, Clone, Default)]
    pub struct VecPool {
        pub weights: Vec<u32>,
        pub eligible: Vec<bool>,
        pub active: Vec<u64>,
    }

    impl VecPool {
        pub fn equal(n: usize) -> VecPool {
            VecPool::weighted(&vec![1; n])
        }
        pub fn weighted(w: &[u32]) -> VecPool {
            VecPool {
                weights: w.to_vec(),
                eligible: vec![true; w.len()],
                active: vec![0; w.len()],
            }
        }
    }

    impl Pool for VecPool {
        fn len(&self) -> usize {
            self.weights.len()
        }
        fn weight(&self, i: usize) -> u32 {
            self.weights[i]
        }
        fn eligible(&self, i: usize) -> bool {
            self.eligible[i]
        }
        fn active(&self, i: usize) -> u64 {
            self.active[i]
        }
    }
}
