//! `round-robin`: the next eligible backend in snapshot order.

use super::{Balance, Pool, Request};

/// Cursor over the backends; each worker starts at a different offset.
#[derive(Debug, Clone)]
pub struct RoundRobin {
    next: usize,
}

impl RoundRobin {
    pub fn new(len: usize, worker: usize) -> RoundRobin {
        RoundRobin {
            next: if len == 0 { 0 } else { worker % len },
        }
    }
}

impl Balance for RoundRobin {
    fn pick(&mut self, pool: &dyn Pool, req: &Request) -> Option<usize> {
        let n = pool.len();
        for step in 0..n {
            let i = (self.next + step) % n;
            if pool.eligible(i) {
                if !req.retry {
                    self.next = (i + 1) % n;
                }
                return Some(i);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::VecPool;

    #[test]
    fn cycles_in_order() {
        let pool = VecPool::equal(3);
        let mut rr = RoundRobin::new(3, 0);
        let picks: Vec<_> = (0..6)
            .map(|_| rr.pick(&pool, &Request::default()).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn workers_start_apart_and_skip_ineligible() {
        let mut pool = VecPool::equal(3);
        assert_eq!(
            RoundRobin::new(3, 1).pick(&pool, &Request::default()),
            Some(1)
        );
        pool.eligible[1] = false;
        let mut rr = RoundRobin::new(3, 1);
        assert_eq!(rr.pick(&pool, &Request::default()), Some(2));
        assert_eq!(rr.pick(&pool, &Request::default()), Some(0));
        pool.eligible = vec![false; 3];
        assert_eq!(rr.pick(&pool, &Request::default()), None);
    }

    #[test]
    fn a_retry_does_not_move_the_cursor() {
        // Two backends, the first dead: each client tries it at most every other time.
        let mut pool = VecPool::equal(2);
        let mut rr = RoundRobin::new(2, 0);
        let mut dead_first = 0;
        for _ in 0..12 {
            pool.eligible = vec![true; 2];
            let first = rr.pick(&pool, &Request::default()).unwrap();
            if first == 0 {
                dead_first += 1;
                pool.eligible[0] = false;
                let retry = Request {
                    retry: true,
                    ..Request::default()
                };
                assert_eq!(rr.pick(&pool, &retry), Some(1));
            }
        }
        assert_eq!(dead_first, 6);
    }

    #[test]
    fn empty_pool() {
        assert_eq!(
            RoundRobin::new(0, 3).pick(&VecPool::equal(0), &Request::default()),
            None
        );
    }
}
