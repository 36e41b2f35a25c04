//! Walking a key's fallback order, optionally with bounded loads ("consistent hashing with
//! bounded loads", Mirrokni, Thorup and Zadimoghaddam; HAProxy's `hash-balance-factor`).

use super::Pool;

/// The load bound for one decision, computed over the eligible backends and counting the
/// connection being placed.
#[derive(Debug, Clone, Copy)]
struct Bound {
    /// (total active + 1) * factor.
    numer: u128,
    /// 100 * sum of eligible weights.
    denom: u128,
}

impl Bound {
    /// `None` when no backend is eligible.
    fn new(pool: &dyn Pool, factor: u32) -> Option<Bound> {
        let (mut total, mut weights, mut any) = (0u128, 0u128, false);
        for i in 0..pool.len() {
            if pool.eligible(i) {
                total += u128::from(pool.active(i));
                weights += u128::from(pool.weight(i).max(1));
                any = true;
            }
        }
        any.then_some(Bound {
            numer: (total + 1) * u128::from(factor),
            denom: 100 * weights,
        })
    }

    /// Would `i` stay within its share of the bound after taking this connection? Its cap is
    /// ceil((total + 1) * factor / 100 * weight_i / sum of weights), which for equal weights
    /// is ceil((total + 1) * factor / 100 / n); `active + 1 <= ceil(x)` is `active < x`.
    fn admits(&self, pool: &dyn Pool, i: usize) -> bool {
        u128::from(pool.active(i)) * self.denom < self.numer * u128::from(pool.weight(i).max(1))
    }
}

/// The first eligible backend of `order`; with `factor`, the first one that stays within the
/// bound, else (all over it) the first eligible one. `order` must be finite and should end
/// by covering every backend, so that `None` means none is eligible.
pub fn first_fit(
    pool: &dyn Pool,
    factor: Option<u32>,
    order: impl IntoIterator<Item = usize>,
) -> Option<usize> {
    let n = pool.len();
    let mut order = order.into_iter().filter(|&i| i < n && pool.eligible(i));
    let Some(factor) = factor else {
        return order.next();
    };
    let bound = Bound::new(pool, factor)?;
    let mut plain = None;
    for i in order {
        if bound.admits(pool, i) {
            return Some(i);
        }
        plain.get_or_insert(i);
    }
    plain
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::VecPool;

    #[test]
    fn unbounded_takes_first_eligible() {
        let mut pool = VecPool::equal(4);
        pool.eligible[2] = false;
        assert_eq!(first_fit(&pool, None, [2, 3, 0]), Some(3));
        assert_eq!(first_fit(&pool, None, [2, 9]), None);
    }

    #[test]
    fn skips_backends_over_the_bound() {
        // 4 equal backends, 8 active: cap = ceil(9 * 125 / 100 / 4) = 3.
        let mut pool = VecPool::equal(4);
        pool.active = vec![3, 2, 2, 1];
        assert_eq!(first_fit(&pool, Some(125), [0, 1, 2, 3]), Some(1));
        // Factor 100, 9 active: cap = ceil(10 / 4) = 3, so 3 more would exceed it.
        pool.active = vec![3, 3, 3, 0];
        assert_eq!(first_fit(&pool, Some(100), [0, 1, 2, 3]), Some(3));
        // The mean is over eligible backends only: cap = ceil(9 / 3) = 3.
        pool.eligible[3] = false;
        pool.active = vec![3, 3, 2, 100];
        assert_eq!(first_fit(&pool, Some(100), [0, 1, 2, 3]), Some(2));
    }

    #[test]
    fn all_over_falls_back_to_plain_choice() {
        let mut pool = VecPool::equal(2);
        pool.active = vec![5, 5];
        // Only backend 1 is in this (partial) order and it is over: plain choice.
        assert_eq!(first_fit(&pool, Some(100), [1]), Some(1));
        pool.eligible = vec![false; 2];
        assert_eq!(first_fit(&pool, Some(100), [0, 1]), None);
    }

    #[test]
    fn bound_is_weighted() {
        // Weights 3:1, 8 active: caps ceil(9 * 3 / 4) = 7 and ceil(9 / 4) = 3.
        let mut pool = VecPool::weighted(&[3, 1]);
        pool.active = vec![6, 2];
        assert_eq!(first_fit(&pool, Some(100), [0, 1]), Some(0));
        pool.active = vec![7, 1];
        assert_eq!(first_fit(&pool, Some(100), [0, 1]), Some(1));
    }
}
