//! `p2c`: power of two choices (Mitzenmacher). Two distinct eligible backends at random, the
//! one with the lower (active + 1) / weight wins (Envoy's LEAST_REQUEST, HAProxy's
//! `random(2)`). Nearly as even as least-conn, O(1), and workers reading slightly stale
//! counters don't all herd onto the same least-loaded backend.

use super::rng::{less_loaded, sample_two, WyRand};
use super::{Balance, Pool, Request};

#[derive(Debug, Clone)]
pub struct P2c {
    rng: WyRand,
}

impl P2c {
    pub fn new(seed: u64, worker: usize) -> P2c {
        P2c {
            rng: WyRand::new(seed, worker),
        }
    }
}

impl Balance for P2c {
    fn pick(&mut self, pool: &dyn Pool, _req: &Request) -> Option<usize> {
        match sample_two(&mut self.rng, pool)? {
            (a, Some(b)) if less_loaded(pool, b, a) => Some(b),
            (a, _) => Some(a),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::VecPool;

    #[test]
    fn never_picks_the_most_loaded_of_two() {
        let mut pool = VecPool::equal(2);
        pool.active = vec![5, 1];
        let mut p = P2c::new(1, 0);
        for _ in 0..100 {
            assert_eq!(p.pick(&pool, &Request::default()), Some(1));
        }
    }

    #[test]
    fn evens_out_load() {
        let mut pool = VecPool::weighted(&[1, 1, 2, 4]);
        let mut p = P2c::new(5, 3);
        for _ in 0..800 {
            let i = p.pick(&pool, &Request::default()).unwrap();
            pool.active[i] += 1;
        }
        // Weight-proportional: 100, 100, 200, 400, give or take the sampling.
        for (a, want) in pool.active.iter().zip([100u64, 100, 200, 400]) {
            assert!(a.abs_diff(want) <= want / 10 + 2, "{:?}", pool.active);
        }
    }

    #[test]
    fn single_and_no_eligible() {
        let mut pool = VecPool::equal(3);
        pool.eligible = vec![false, false, true];
        let mut p = P2c::new(1, 0);
        assert_eq!(p.pick(&pool, &Request::default()), Some(2));
        pool.eligible[2] = false;
        assert_eq!(p.pick(&pool, &Request::default()), None);
    }
}
