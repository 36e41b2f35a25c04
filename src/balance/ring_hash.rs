//! `ring-hash`: a Ketama ring (libketama; NGINX `hash ... consistent`, Pingora's
//! `KetamaHashing`). Each backend puts [`POINTS_PER_WEIGHT`] points per unit of weight on a
//! 64-bit circle, at the hashes of "key-0", "key-1", ...; a client goes to the first point
//! at or after its key, wrapping. Changing one backend moves only the keys that land on its
//! points. Fallback order: the next distinct backend clockwise, then (only if some backend
//! has no point at all) the rest.
//!
//! The ring depends only on the set of (key, weight) pairs: points are sorted by position,
//! ties by key.

use std::sync::Arc;

use super::bounded::first_fit;
use super::hash::hash_bytes;
use super::{Balance, Member, Pool, Request};

/// Ketama's 160 points per unit of weight.
pub const POINTS_PER_WEIGHT: u64 = 160;
/// Most points on one ring (12 bytes each). Past it every backend's count is scaled down in
/// proportion, with at least one point each.
pub const MAX_RING_POINTS: u64 = 1 << 20;

const RING_SEED: u64 = 0x6b65_7461_6d61_7269; // "ketamari"

/// The ring of one snapshot; immutable, shared by every worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashRing {
    /// Sorted point positions.
    points: Box<[u64]>,
    /// Backend index (in the order the members were given) of each point.
    owners: Box<[u32]>,
    members: usize,
}

impl HashRing {
    pub fn new(members: &[Member<'_>]) -> HashRing {
        let weight = |m: &Member<'_>| u64::from(m.weight.max(1));
        let total: u64 = members
            .iter()
            .fold(0u64, |t, m| t.saturating_add(weight(m) * POINTS_PER_WEIGHT));
        let count = |m: &Member<'_>| -> u64 {
            if total <= MAX_RING_POINTS {
                weight(m) * POINTS_PER_WEIGHT
            } else {
                let scaled = u128::from(weight(m) * POINTS_PER_WEIGHT)
                    * u128::from(MAX_RING_POINTS)
                    / u128::from(total);
                (scaled as u64).max(1)
            }
        };
        let mut ring: Vec<(u64, u32)> = Vec::new();
        let mut buf = Vec::new();
        for (idx, m) in members.iter().enumerate() {
            for i in 0..count(m) {
                buf.clear();
                buf.extend_from_slice(m.key.as_bytes());
                buf.push(b'-');
                push_decimal(&mut buf, i);
                ring.push((hash_bytes(&buf, RING_SEED), idx as u32));
            }
        }
        ring.sort_unstable_by(|a, b| {
            let (ma, mb) = (&members[a.1 as usize], &members[b.1 as usize]);
            (a.0, ma.key, ma.weight).cmp(&(b.0, mb.key, mb.weight))
        });
        HashRing {
            points: ring.iter().map(|p| p.0).collect(),
            owners: ring.iter().map(|p| p.1).collect(),
            members: members.len(),
        }
    }

    /// Number of points.
    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Index of the first point at or after `key`, wrapping.
    fn start(&self, key: u64) -> usize {
        let i = self.points.partition_point(|&p| p < key);
        if i == self.points.len() {
            0
        } else {
            i
        }
    }

    /// The backend the ring gives `key`, ignoring eligibility.
    pub fn lookup(&self, key: u64) -> Option<usize> {
        self.owners.get(self.start(key)).map(|&o| o as usize)
    }
}

fn push_decimal(buf: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

/// Clockwise walk yielding each backend once.
struct Walk<'a> {
    ring: &'a HashRing,
    pos: usize,
    steps: usize,
    /// Bit per backend: already yielded.
    seen: &'a mut [u64],
    yielded: usize,
    scan: usize,
}

impl Walk<'_> {
    fn first_visit(&mut self, i: usize) -> bool {
        let (w, b) = (i / 64, 1u64 << (i % 64));
        match self.seen.get_mut(w) {
            Some(word) if *word & b == 0 => {
                *word |= b;
                self.yielded += 1;
                true
            }
            _ => false,
        }
    }
}

impl Iterator for Walk<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let points = self.ring.owners.len();
        while self.steps < points && self.yielded < self.ring.members {
            let o = self.ring.owners[(self.pos + self.steps) % points] as usize;
            self.steps += 1;
            if self.first_visit(o) {
                return Some(o);
            }
        }
        while self.scan < self.ring.members {
            let i = self.scan;
            self.scan += 1;
            if self.first_visit(i) {
                return Some(i);
            }
        }
        None
    }
}

/// The `ring-hash` selector: a shared ring, the bounded-load factor, and scratch space for
/// the walk (so a pick allocates nothing).
#[derive(Debug, Clone)]
pub struct RingHash {
    ring: Arc<HashRing>,
    factor: Option<u32>,
    seen: Vec<u64>,
}

impl RingHash {
    pub fn new(ring: Arc<HashRing>, factor: Option<u32>) -> RingHash {
        let words = ring.members.div_ceil(64);
        RingHash {
            ring,
            factor,
            seen: vec![0; words],
        }
    }
}

impl Balance for RingHash {
    fn pick(&mut self, pool: &dyn Pool, req: &Request) -> Option<usize> {
        if self.factor.is_none() {
            // Fast path: the key's own backend, no walk state to reset.
            let first = self.ring.lookup(req.key)?;
            if first < pool.len() && pool.eligible(first) {
                return Some(first);
            }
        }
        self.seen.fill(0);
        let walk = Walk {
            ring: &self.ring,
            pos: self.ring.start(req.key),
            steps: 0,
            seen: &mut self.seen,
            yielded: 0,
            scan: 0,
        };
        first_fit(pool, self.factor, walk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::hash::fmix64;
    use crate::balance::testing::VecPool;
    use proptest::prelude::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("backend-{i}")).collect()
    }

    fn members<'a>(names: &'a [String], weights: &[u32]) -> Vec<Member<'a>> {
        names
            .iter()
            .zip(weights)
            .map(|(key, &weight)| Member { key, weight })
            .collect()
    }

    fn req(key: u64) -> Request {
        Request {
            key,
            now_ns: 0,
            retry: false,
        }
    }

    #[test]
    fn points_per_weight() {
        let n = names(3);
        let ring = HashRing::new(&members(&n, &[1, 2, 3]));
        assert_eq!(ring.len(), 960);
        let mut c = [0; 3];
        for &o in ring.owners.iter() {
            c[o as usize] += 1;
        }
        assert_eq!(c, [160, 320, 480]);
        assert!(ring.points.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn caps_huge_rings() {
        let n = names(2);
        let ring = HashRing::new(&members(&n, &[u32::MAX, 1]));
        assert!(ring.len() as u64 <= MAX_RING_POINTS + 1);
        assert!(ring.owners.contains(&1));
    }

    #[test]
    fn key_share_follows_weight() {
        let n = names(3);
        let ring = Arc::new(HashRing::new(&members(&n, &[1, 2, 1])));
        let mut rh = RingHash::new(ring, None);
        let pool = VecPool::weighted(&[1, 2, 1]);
        let mut c = [0u32; 3];
        for k in 0..40_000u64 {
            c[rh.pick(&pool, &req(fmix64(k))).unwrap()] += 1;
        }
        // 160 points per unit of weight leave each share off by several percent (about
        // 1 / sqrt(points)): within 15% of 1:2:1.
        for (c, want) in c.iter().zip([10_000u32, 20_000, 10_000]) {
            assert!(c.abs_diff(want) < want * 15 / 100, "{c} vs {want}");
        }
    }

    #[test]
    fn fallback_is_next_distinct_clockwise() {
        let n = names(4);
        let ring = Arc::new(HashRing::new(&members(&n, &[1; 4])));
        let mut rh = RingHash::new(ring.clone(), None);
        let mut pool = VecPool::equal(4);
        let key = fmix64(99);
        let start = ring.start(key);
        let mut expected = Vec::new();
        for s in 0..ring.len() {
            let o = ring.owners[(start + s) % ring.len()] as usize;
            if !expected.contains(&o) {
                expected.push(o);
            }
        }
        for &want in &expected {
            assert_eq!(rh.pick(&pool, &req(key)), Some(want));
            pool.eligible[want] = false;
        }
        assert_eq!(rh.pick(&pool, &req(key)), None);
        let mut empty = RingHash::new(Arc::new(HashRing::new(&[])), Some(150));
        assert_eq!(empty.pick(&VecPool::equal(0), &req(key)), None);
    }

    #[test]
    fn bounded_loads() {
        let n = names(3);
        let ring = Arc::new(HashRing::new(&members(&n, &[1; 3])));
        let key = fmix64(5);
        let home = ring.lookup(key).unwrap();
        let mut pool = VecPool::equal(3);
        pool.active[home] = 10;
        let other = RingHash::new(ring.clone(), Some(125))
            .pick(&pool, &req(key))
            .unwrap();
        assert_ne!(other, home);
        assert_eq!(RingHash::new(ring, None).pick(&pool, &req(key)), Some(home));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// The ring, and every key's fallback order, depend only on the set of members.
        #[test]
        fn independent_of_input_order(
            weights in prop::collection::vec(1u32..=5, 1..=30),
            seed in any::<u64>(),
        ) {
            let n = names(weights.len());
            let m = members(&n, &weights);
            let mut shuffled = m.clone();
            for i in (1..shuffled.len()).rev() {
                let j = (fmix64(seed ^ i as u64) % (i as u64 + 1)) as usize;
                shuffled.swap(i, j);
            }
            let mut a = RingHash::new(Arc::new(HashRing::new(&m)), None);
            let mut b = RingHash::new(Arc::new(HashRing::new(&shuffled)), None);
            let mut pa = VecPool::weighted(&weights);
            let mut pb = VecPool::weighted(&shuffled.iter().map(|m| m.weight).collect::<Vec<_>>());
            for k in 0..32u64 {
                let key = fmix64(k ^ seed);
                pa.eligible.fill(true);
                pb.eligible.fill(true);
                // Walk the whole fallback order by marking each pick ineligible.
                while let Some(x) = a.pick(&pa, &req(key)) {
                    let y = b.pick(&pb, &req(key));
                    prop_assert_eq!(Some(m[x].key), y.map(|y| shuffled[y].key));
                    pa.eligible[x] = false;
                    if let Some(y) = y {
                        pb.eligible[y] = false;
                    }
                }
                prop_assert_eq!(b.pick(&pb, &req(key)), None);
            }
        }
    }
}
