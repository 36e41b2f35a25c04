//! `least-conn`: the backend with the fewest active connections per unit of weight, from the
//! shared counters, so the count is global across workers. Compared as (active + 1) /
//! weight (HAProxy's `leastconn`): the load *after* this connection, so between idle
//! backends the heavier one wins instead of a tie with a 1-weight backend. Ties go to the
//! first one after the previous pick, so equal backends rotate.

use super::{Balance, Pool, Request};

#[derive(Debug, Clone)]
pub struct LeastConn {
    next: usize,
}

impl LeastConn {
    /// Each worker starts its tie-breaking cursor at a different backend.
    pub fn new(len: usize, worker: usize) -> LeastConn {
        LeastConn {
            next: if len == 0 { 0 } else { worker % len },
        }
    }
}

impl Balance for LeastConn {
    fn pick(&mut self, pool: &dyn Pool, req: &Request) -> Option<usize> {
        let n = pool.len();
        // (index, active + 1, weight) of the best so far; compared exactly in u128.
        let mut best: Option<(usize, u128, u128)> = None;
        let start = self.next.min(n);
        for i in (start..n).chain(0..start) {
            if !pool.eligible(i) {
                continue;
            }
            let (load, weight) = (
                u128::from(pool.active(i)) + 1,
                u128::from(pool.weight(i).max(1)),
            );
            if best.is_none_or(|(_, bl, bw)| load * bw < bl * weight) {
                best = Some((i, load, weight));
            }
        }
        let (b, _, _) = best?;
        if !req.retry {
            self.next = (b + 1) % n;
        }
        Some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::VecPool;

    #[test]
    fn fewest_per_weight() {
        let mut pool = VecPool::weighted(&[1, 4, 1]);
        pool.active = vec![2, 7, 3];
        // (2+1)/1 = 3, (7+1)/4 = 2, (3+1)/1 = 4.
        assert_eq!(
            LeastConn::new(3, 0).pick(&pool, &Request::default()),
            Some(1)
        );
        pool.eligible[1] = false;
        assert_eq!(
            LeastConn::new(3, 0).pick(&pool, &Request::default()),
            Some(0)
        );
    }

    #[test]
    fn ties_rotate() {
        let pool = VecPool::equal(3);
        let mut lc = LeastConn::new(3, 0);
        let picks: Vec<_> = (0..6)
            .map(|_| lc.pick(&pool, &Request::default()).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn follows_the_counts() {
        let mut pool = VecPool::equal(3);
        let mut lc = LeastConn::new(3, 2);
        for _ in 0..30 {
            let i = lc.pick(&pool, &Request::default()).unwrap();
            pool.active[i] += 1;
        }
        assert_eq!(pool.active, vec![10, 10, 10]);
        pool.eligible = vec![false; 3];
        assert_eq!(lc.pick(&pool, &Request::default()), None);
    }
}
