//! `weighted-round-robin`: NGINX's smooth weighted round robin. Every pick adds each
//! backend's weight to its `current`, takes the largest, and subtracts the total from it;
//! over any window of sum(weights) picks each backend gets exactly its weight, interleaved
//! (5:1:1 gives a a b a c a a, not a a a a a b c).

use super::{Balance, Member, Pool, Request};

#[derive(Debug, Clone)]
pub struct SmoothWeighted {
    current: Vec<i64>,
}

impl SmoothWeighted {
    pub fn new(members: &[Member<'_>]) -> SmoothWeighted {
        SmoothWeighted::with_len(members.len())
    }

    /// For `len` backends; the weights are read from the pool at each pick.
    pub fn with_len(len: usize) -> SmoothWeighted {
        SmoothWeighted {
            current: vec![0; len],
        }
    }
}

impl Balance for SmoothWeighted {
    fn pick(&mut self, pool: &dyn Pool, req: &Request) -> Option<usize> {
        let n = pool.len().min(self.current.len());
        if req.retry {
            // The one the next pick would choose among the eligible, leaving the cycle as
            // it is.
            let next = |i: usize| self.current[i] + i64::from(pool.weight(i));
            return (0..n)
                .filter(|&i| pool.eligible(i))
                .fold(None, |best: Option<usize>, i| match best {
                    Some(b) if next(b) >= next(i) => Some(b),
                    _ => Some(i),
                });
        }
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for i in 0..n {
            if !pool.eligible(i) {
                continue;
            }
            let w = i64::from(pool.weight(i));
            self.current[i] += w;
            total += w;
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        self.current[b] -= total;
        Some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::VecPool;
    use proptest::prelude::*;

    fn members(w: &[u32]) -> Vec<Member<'static>> {
        w.iter().map(|&weight| Member { key: "", weight }).collect()
    }

    #[test]
    fn nginx_sequence() {
        let pool = VecPool::weighted(&[5, 1, 1]);
        let mut s = SmoothWeighted::new(&members(&[5, 1, 1]));
        let picks: Vec<_> = (0..7)
            .map(|_| s.pick(&pool, &Request::default()).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn ratio_3_2_1() {
        let pool = VecPool::weighted(&[3, 2, 1]);
        let mut s = SmoothWeighted::new(&members(&[3, 2, 1]));
        let mut counts = [0; 3];
        for _ in 0..300 {
            counts[s.pick(&pool, &Request::default()).unwrap()] += 1;
        }
        assert_eq!(counts, [150, 100, 50]);
    }

    #[test]
    fn skips_ineligible() {
        let mut pool = VecPool::weighted(&[3, 2, 1]);
        pool.eligible[0] = false;
        let mut s = SmoothWeighted::new(&members(&[3, 2, 1]));
        let mut counts = [0; 3];
        for _ in 0..30 {
            counts[s.pick(&pool, &Request::default()).unwrap()] += 1;
        }
        assert_eq!(counts, [0, 20, 10]);
        pool.eligible = vec![false; 3];
        assert_eq!(s.pick(&pool, &Request::default()), None);
    }

    proptest! {
        /// Every window of sum(weights) consecutive picks, wherever it starts, holds each
        /// backend exactly its weight times (the sequence has period sum(weights)).
        #[test]
        fn every_window_is_exact(weights in prop::collection::vec(1u32..=10, 1..=12)) {
            let pool = VecPool::weighted(&weights);
            let mut s = SmoothWeighted::with_len(weights.len());
            let total: usize = weights.iter().map(|&w| w as usize).sum();
            let picks: Vec<usize> =
                (0..3 * total).map(|_| s.pick(&pool, &Request::default()).unwrap()).collect();
            let mut window = vec![0u32; weights.len()];
            for &p in &picks[..total] {
                window[p] += 1;
            }
            prop_assert_eq!(&window, &weights);
            for start in 1..=2 * total {
                window[picks[start - 1]] -= 1;
                window[picks[start + total - 1]] += 1;
                prop_assert_eq!(&window, &weights, "window at {}", start);
            }
        }
    }
}
