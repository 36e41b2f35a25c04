//! `weighted-random`: each eligible backend with probability weight / (sum of eligible
//! weights). Reads weights from the pool on every pick rather than precomputing, so an
//! effective weight that changes (slow start) and ineligible backends are honoured exactly.

use super::rng::WyRand;
use super::{Balance, Pool, Request};

#[derive(Debug, Clone)]
pub struct WeightedRandom {
    rng: WyRand,
}

impl WeightedRandom {
    pub fn new(seed: u64, worker: usize) -> WeightedRandom {
        WeightedRandom {
            rng: WyRand::new(seed, worker),
        }
    }
}

impl Balance for WeightedRandom {
    fn pick(&mut self, pool: &dyn Pool, _req: &Request) -> Option<usize> {
        let n = pool.len();
        let total: u64 = (0..n)
            .filter(|&i| pool.eligible(i))
            .map(|i| u64::from(pool.weight(i).max(1)))
            .sum();
        if total == 0 {
            return None;
        }
        let mut r = self.rng.below(total);
        let mut last = None;
        for i in 0..n {
            if !pool.eligible(i) {
                continue;
            }
            let w = u64::from(pool.weight(i).max(1));
            if r < w {
                return Some(i);
            }
            r -= w;
            last = Some(i);
        }
        // Only reachable if the pool changed between the two passes.
        last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::VecPool;

    #[test]
    fn proportional_to_weight() {
        let mut pool = VecPool::weighted(&[1, 3, 5, 6]);
        pool.eligible[3] = false;
        let mut r = WeightedRandom::new(9, 1);
        let mut counts = [0u32; 4];
        for _ in 0..90_000 {
            counts[r.pick(&pool, &Request::default()).unwrap()] += 1;
        }
        assert_eq!(counts[3], 0);
        for (c, want) in counts.iter().zip([10_000u32, 30_000, 50_000]) {
            assert!(c.abs_diff(want) < want / 25, "{counts:?}");
        }
    }

    #[test]
    fn none_when_nothing_eligible() {
        let mut pool = VecPool::equal(2);
        pool.eligible = vec![false; 2];
        assert_eq!(
            WeightedRandom::new(1, 0).pick(&pool, &Request::default()),
            None
        );
    }
}
