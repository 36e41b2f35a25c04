//! A small PRNG for the randomized algorithms, kept in each selector: a worker-local state
//! needs no locking, and `rand`'s machinery is more than a pick needs.

use super::hash::fmix64;
use super::Pool;

/// wyrand (Wang Yi): one 64x64->128 multiply per number, passes BigCrush and PractRand.
#[derive(Debug, Clone)]
pub struct WyRand {
    state: u64,
}

impl WyRand {
    /// A generator for `worker` under `seed`; workers get unrelated streams.
    pub fn new(seed: u64, worker: usize) -> WyRand {
        WyRand {
            state: fmix64(seed ^ fmix64(worker as u64 ^ 0x2545_f491_4f6c_dd1d)),
        }
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.state) * u128::from(self.state ^ 0xe703_7ed1_a0b4_28db);
        (t as u64) ^ ((t >> 64) as u64)
    }

    /// Uniform in `0..n` (multiply-shift; bias below n / 2^64). `n` must be > 0.
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        super::hash::reduce(self.next_u64(), n)
    }
}

/// The `rank`-th eligible backend in index order.
fn nth_eligible(pool: &dyn Pool, mut rank: usize) -> Option<usize> {
    for i in 0..pool.len() {
        if pool.eligible(i) {
            if rank == 0 {
                return Some(i);
            }
            rank -= 1;
        }
    }
    None
}

fn count_eligible(pool: &dyn Pool) -> usize {
    (0..pool.len()).filter(|&i| pool.eligible(i)).count()
}

/// Uniform over the eligible backends. Tries a few random indices first (exact by rejection
/// sampling, O(1) while most are eligible), then counts and picks by rank.
pub fn sample_eligible(rng: &mut WyRand, pool: &dyn Pool) -> Option<usize> {
    let n = pool.len();
    if n == 0 {
        return None;
    }
    for _ in 0..4 {
        let i = rng.below(n as u64) as usize;
        if pool.eligible(i) {
            return Some(i);
        }
    }
    match count_eligible(pool) {
        0 => None,
        c => nth_eligible(pool, rng.below(c as u64) as usize),
    }
}

/// Two distinct eligible backends, uniform over pairs; the second is `None` when only one
/// backend is eligible.
pub fn sample_two(rng: &mut WyRand, pool: &dyn Pool) -> Option<(usize, Option<usize>)> {
    let n = pool.len();
    if n >= 2 {
        let a = rng.below(n as u64) as usize;
        let mut b = rng.below(n as u64 - 1) as usize;
        if b >= a {
            b += 1;
        }
        if pool.eligible(a) && pool.eligible(b) {
            return Some((a, Some(b)));
        }
    }
    match count_eligible(pool) {
        0 => None,
        1 => nth_eligible(pool, 0).map(|a| (a, None)),
        c => {
            let ra = rng.below(c as u64) as usize;
            let mut rb = rng.below(c as u64 - 1) as usize;
            if rb >= ra {
                rb += 1;
            }
            Some((nth_eligible(pool, ra)?, nth_eligible(pool, rb)))
        }
    }
}

/// `(active_a + 1) / weight_a < (active_b + 1) / weight_b`, exactly (no float, no
/// overflow): the load each backend would have after taking this connection.
#[inline]
pub fn less_loaded(pool: &dyn Pool, a: usize, b: usize) -> bool {
    let la = u128::from(pool.active(a)) + 1;
    let lb = u128::from(pool.active(b)) + 1;
    la * u128::from(pool.weight(b).max(1)) < lb * u128::from(pool.weight(a).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::VecPool;

    #[test]
    fn below_is_uniform() {
        let mut r = WyRand::new(1, 0);
        let mut counts = [0u32; 7];
        for _ in 0..70_000 {
            counts[r.below(7) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_600..10_400).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn workers_get_different_streams() {
        assert_ne!(WyRand::new(1, 0).next_u64(), WyRand::new(1, 1).next_u64());
    }

    #[test]
    fn sampling_respects_eligibility() {
        let mut pool = VecPool::equal(5);
        pool.eligible = vec![false, true, false, false, true];
        let mut r = WyRand::new(3, 0);
        for _ in 0..200 {
            let i = sample_eligible(&mut r, &pool).unwrap();
            assert!(i == 1 || i == 4);
            let (a, b) = sample_two(&mut r, &pool).unwrap();
            assert!(b.is_some_and(|b| b != a && (b == 1 || b == 4)) && (a == 1 || a == 4));
        }
        pool.eligible = vec![false, false, true, false, false];
        assert_eq!(sample_two(&mut r, &pool), Some((2, None)));
        pool.eligible = vec![false; 5];
        assert_eq!(sample_eligible(&mut r, &pool), None);
        assert_eq!(sample_two(&mut r, &pool), None);
        assert_eq!(sample_two(&mut r, &VecPool::equal(0)), None);
    }
}
