//! `least-time`: power of two choices over Linkerd's cost, peak-EWMA connect time x
//! (active + 1) / weight. Latency alone would flood the fastest backend until its latency
//! rose; multiplying by the load it would have after this connection spreads the work while
//! still favouring fast backends. The latency comes from [`Pool::latency_ns`] at
//! `Request::now_ns` (see [`super::ewma`]).
//!
//! A backend without an estimate (0.0: no sample yet, or a pool that keeps none) borrows the
//! other candidate's, so the pair is compared on load alone; with no estimates at all this is
//! exactly `p2c`. An unknown backend is thus neither flooded nor starved until its first
//! connect gives it a sample.

use super::rng::{sample_two, WyRand};
use super::{Balance, Pool, Request};

#[derive(Debug, Clone)]
pub struct LeastTime {
    rng: WyRand,
}

impl LeastTime {
    pub fn new(seed: u64, worker: usize) -> LeastTime {
        LeastTime {
            rng: WyRand::new(seed, worker),
        }
    }
}

/// Finite, non-negative latency (0.0 = unknown).
fn latency(pool: &dyn Pool, i: usize, now_ns: u64) -> f64 {
    let l = pool.latency_ns(i, now_ns);
    if l.is_finite() && l > 0.0 {
        l
    } else {
        0.0
    }
}

fn cost(pool: &dyn Pool, i: usize, latency_ns: f64) -> f64 {
    latency_ns * (pool.active(i) as f64 + 1.0) / f64::from(pool.weight(i).max(1))
}

impl Balance for LeastTime {
    fn pick(&mut self, pool: &dyn Pool, req: &Request) -> Option<usize> {
        let (a, b) = match sample_two(&mut self.rng, pool)? {
            (a, Some(b)) => (a, b),
            (a, None) => return Some(a),
        };
        let (mut la, mut lb) = (latency(pool, a, req.now_ns), latency(pool, b, req.now_ns));
        if la == 0.0 || lb == 0.0 {
            // Compare on load alone: both get the known latency, or 1.0 if neither has one.
            let known = la.max(lb).max(1.0);
            (la, lb) = (known, known);
        }
        Some(if cost(pool, b, lb) < cost(pool, a, la) {
            b
        } else {
            a
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::VecPool;

    /// A pool with fixed latencies.
    struct Timed {
        inner: VecPool,
        latency: Vec<f64>,
    }

    impl Pool for Timed {
        fn len(&self) -> usize {
            self.inner.len()
        }
        fn weight(&self, i: usize) -> u32 {
            self.inner.weight(i)
        }
        fn eligible(&self, i: usize) -> bool {
            self.inner.eligible(i)
        }
        fn active(&self, i: usize) -> u64 {
            self.inner.active(i)
        }
        fn latency_ns(&self, i: usize, _now_ns: u64) -> f64 {
            self.latency[i]
        }
    }

    #[test]
    fn prefers_the_faster_of_two() {
        let pool = Timed {
            inner: VecPool::equal(2),
            latency: vec![5e6, 1e6],
        };
        let mut lt = LeastTime::new(1, 0);
        for _ in 0..50 {
            assert_eq!(lt.pick(&pool, &Request::default()), Some(1));
        }
    }

    #[test]
    fn load_offsets_speed() {
        // Twice as fast but four times as loaded: (3+1)*1 > (0+1)*2.
        let mut pool = Timed {
            inner: VecPool::equal(2),
            latency: vec![2e6, 1e6],
        };
        pool.inner.active = vec![0, 3];
        assert_eq!(
            LeastTime::new(1, 0).pick(&pool, &Request::default()),
            Some(0)
        );
    }

    #[test]
    fn spreads_in_proportion_to_speed() {
        let mut pool = Timed {
            inner: VecPool::equal(3),
            latency: vec![1e6, 1e6, 3e6],
        };
        let mut lt = LeastTime::new(7, 0);
        for _ in 0..700 {
            let i = lt.pick(&pool, &Request::default()).unwrap();
            pool.inner.active[i] += 1;
        }
        let a = &pool.inner.active;
        assert!(a[2] * 2 < a[0] && a[2] * 2 < a[1] && a[2] > 0, "{a:?}");
    }

    #[test]
    fn unknown_latency_means_p2c() {
        let mut pool = VecPool::equal(2);
        pool.active = vec![4, 1];
        let mut lt = LeastTime::new(1, 0);
        assert_eq!(lt.pick(&pool, &Request::default()), Some(1));
        let mut half = Timed {
            inner: VecPool::equal(2),
            latency: vec![0.0, 9e6],
        };
        half.inner.active = vec![4, 1];
        assert_eq!(lt.pick(&half, &Request::default()), Some(1));
        half.inner.active = vec![1, 4];
        assert_eq!(lt.pick(&half, &Request::default()), Some(0));
        half.inner.eligible = vec![false; 2];
        assert_eq!(lt.pick(&half, &Request::default()), None);
    }
}
