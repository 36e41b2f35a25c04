//! `random`: uniform over the eligible backends. Stateless apart from the PRNG, so workers
//! need no coordination and no backend sees bursts from synchronized cursors.

use super::rng::{sample_eligible, WyRand};
use super::{Balance, Pool, Request};

#[derive(Debug, Clone)]
pub struct Random {
    rng: WyRand,
}

impl Random {
    pub fn new(seed: u64, worker: usize) -> Random {
        Random {
            rng: WyRand::new(seed, worker),
        }
    }
}

impl Balance for Random {
    fn pick(&mut self, pool: &dyn Pool, _req: &Request) -> Option<usize> {
        sample_eligible(&mut self.rng, pool)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::VecPool;

    #[test]
    fn uniform_over_eligible() {
        let mut pool = VecPool::weighted(&[1, 9, 1, 1]);
        pool.eligible[2] = false;
        let mut r = Random::new(42, 0);
        let mut counts = [0u32; 4];
        for _ in 0..30_000 {
            counts[r.pick(&pool, &Request::default()).unwrap()] += 1;
        }
        assert_eq!(counts[2], 0);
        for c in [counts[0], counts[1], counts[3]] {
            assert!((9_400..10_600).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn none_when_nothing_eligible() {
        let mut pool = VecPool::equal(3);
        pool.eligible = vec![false; 3];
        assert_eq!(Random::new(1, 0).pick(&pool, &Request::default()), None);
        assert_eq!(
            Random::new(1, 0).pick(&VecPool::equal(0), &Request::default()),
            None
        );
    }
}
