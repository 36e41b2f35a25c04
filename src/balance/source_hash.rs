//! `source-hash`: the client key modulo the number of backends (HAProxy's `balance source`
//! with `hash-type map-based`). Simple and even, but a change in the backend count moves
//! almost every client; `maglev` and `ring-hash` move only the changed backend's share.
//! Fallback order: the following indices, wrapping.

use super::bounded::first_fit;
use super::{Balance, Pool, Request};

#[derive(Debug, Clone)]
pub struct SourceHash {
    factor: Option<u32>,
}

impl SourceHash {
    /// `factor`: bounded-load percent (`--hash-balance-factor`), if any.
    pub fn new(factor: Option<u32>) -> SourceHash {
        SourceHash { factor }
    }
}

impl Balance for SourceHash {
    fn pick(&mut self, pool: &dyn Pool, req: &Request) -> Option<usize> {
        let n = pool.len();
        if n == 0 {
            return None;
        }
        let start = (req.key % n as u64) as usize;
        first_fit(pool, self.factor, (0..n).map(|s| (start + s) % n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::VecPool;

    fn req(key: u64) -> Request {
        Request {
            key,
            now_ns: 0,
            retry: false,
        }
    }

    #[test]
    fn key_modulo_count_then_next() {
        let mut pool = VecPool::equal(4);
        let mut s = SourceHash::new(None);
        assert_eq!(s.pick(&pool, &req(7)), Some(3));
        pool.eligible[3] = false;
        assert_eq!(s.pick(&pool, &req(7)), Some(0));
        pool.eligible[0] = false;
        assert_eq!(s.pick(&pool, &req(7)), Some(1));
        pool.eligible = vec![false; 4];
        assert_eq!(s.pick(&pool, &req(7)), None);
        assert_eq!(s.pick(&VecPool::equal(0), &req(7)), None);
    }

    #[test]
    fn bounded_loads_walk_on() {
        let mut pool = VecPool::equal(3);
        pool.active = vec![0, 6, 0];
        // Cap = ceil(7 * 150 / 100 / 3) = 4: backend 1 is over, its keys go to 2.
        let mut s = SourceHash::new(Some(150));
        assert_eq!(s.pick(&pool, &req(4)), Some(2));
        assert_eq!(SourceHash::new(None).pick(&pool, &req(4)), Some(1));
    }
}
