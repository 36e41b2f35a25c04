//! Stable 64-bit hashing for the hashing algorithms. Hand-written rather than `std`'s
//! `RandomState` or `DefaultHasher` because the result must be identical in every process,
//! on every machine and in every release: two balancer instances with the same backends must
//! send a client to the same backend without sharing state.

use std::net::{IpAddr, SocketAddr};

use super::HashKey;

/// Seed of [`hash_client`]; distinct from the seeds the tables use for backend keys so that
/// client keys and table positions are independent functions.
const CLIENT_SEED: u64 = 0x51af_d7ed_558c_cd00;

/// MurmurHash3's 64-bit finalizer: a bijection with full avalanche, so any input bit flips
/// each output bit with probability about one half.
#[inline]
pub fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Hash of `bytes` under `seed`: eight bytes at a time, each word folded in through
/// `fmix64`. The seed and length go into the starting state, so different seeds give
/// unrelated functions (Maglev needs two independent hashes of one key) and inputs that
/// differ only by trailing zero bytes differ.
pub fn hash_bytes(bytes: &[u8], seed: u64) -> u64 {
    let mut h = fmix64(seed ^ 0x9e37_79b9_7f4a_7c15 ^ (bytes.len() as u64).rotate_left(32));
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        h = fmix64(h ^ u64::from_le_bytes(b));
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut b = [0u8; 8];
        b[..rest.len()].copy_from_slice(rest);
        h = fmix64(h ^ u64::from_le_bytes(b));
    }
    h
}

/// Hash of a client address for [`super::Request::key`]: the IP (and the port with
/// [`HashKey::SourceIpPort`]). An IPv4-mapped IPv6 address (a dual-stack listener's view of
/// an IPv4 client) hashes as the IPv4 address, so listeners of either family agree; the
/// IPv6 flow label and scope id are ignored.
pub fn hash_client(addr: &SocketAddr, key: HashKey) -> u64 {
    let ip = match addr.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    let mut buf = [0u8; 18];
    let mut len = match ip {
        IpAddr::V4(v4) => {
            buf[..4].copy_from_slice(&v4.octets());
            4
        }
        IpAddr::V6(v6) => {
            buf[..16].copy_from_slice(&v6.octets());
            16
        }
    };
    if key == HashKey::SourceIpPort {
        buf[len..len + 2].copy_from_slice(&addr.port().to_be_bytes());
        len += 2;
    }
    hash_bytes(&buf[..len], CLIENT_SEED)
}

/// Maps a well-mixed 64-bit hash onto `0..n` by its high bits (Lemire's multiply-shift): one
/// multiplication instead of a division, unbiased to within n / 2^64.
#[inline]
pub fn reduce(h: u64, n: u64) -> u64 {
    ((u128::from(h) * u128::from(n)) >> 64) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_values() {
        // Pinned: changing these moves every client of every deployed balancer.
        let v4: SocketAddr = "192.0.2.7:4000".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::7]:4000".parse().unwrap();
        let got = [
            hash_client(&v4, HashKey::SourceIp),
            hash_client(&v4, HashKey::SourceIpPort),
            hash_client(&v6, HashKey::SourceIp),
            hash_bytes(b"backend-0", 0),
        ];
        assert_eq!(got, STABLE);
    }

    const STABLE: [u64; 4] = [
        7022542183670167571,
        6790128090485671626,
        7486102096949449210,
        12974917892892148141,
    ];

    #[test]
    fn ip_only_ignores_port_and_mapped_v6_equals_v4() {
        let a: SocketAddr = "192.0.2.7:4000".parse().unwrap();
        let b: SocketAddr = "192.0.2.7:4001".parse().unwrap();
        let m: SocketAddr = "[::ffff:192.0.2.7]:4000".parse().unwrap();
        assert_eq!(
            hash_client(&a, HashKey::SourceIp),
            hash_client(&b, HashKey::SourceIp)
        );
        assert_ne!(
            hash_client(&a, HashKey::SourceIpPort),
            hash_client(&b, HashKey::SourceIpPort)
        );
        assert_eq!(
            hash_client(&a, HashKey::SourceIpPort),
            hash_client(&m, HashKey::SourceIpPort)
        );
        let v6: SocketAddr = "[2001:db8::7]:4000".parse().unwrap();
        assert_ne!(
            hash_client(&v6, HashKey::SourceIp),
            hash_client(&a, HashKey::SourceIp)
        );
    }

    #[test]
    fn seeds_and_lengths_differ() {
        assert_ne!(hash_bytes(b"web-1", 1), hash_bytes(b"web-1", 2));
        assert_ne!(hash_bytes(b"ab", 1), hash_bytes(b"ab\0", 1));
        assert_ne!(hash_bytes(b"", 1), hash_bytes(b"\0", 1));
    }

    #[test]
    fn avalanche() {
        // Flipping one input bit flips close to half of the output bits on average.
        let mut flips = 0u32;
        let mut trials = 0u32;
        for i in 0u32..64 {
            let base = i.to_le_bytes();
            let h = hash_bytes(&base, 7);
            for bit in 0..32 {
                let x = (i ^ (1 << bit)).to_le_bytes();
                flips += (h ^ hash_bytes(&x, 7)).count_ones();
                trials += 1;
            }
        }
        let mean = f64::from(flips) / f64::from(trials);
        assert!((30.0..34.0).contains(&mean), "mean flipped bits {mean}");
    }

    #[test]
    fn reduce_covers_range_evenly() {
        let mut counts = [0u32; 10];
        for i in 0..100_000u64 {
            counts[reduce(fmix64(i), 10) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_500..10_500).contains(&c)),
            "{counts:?}"
        );
    }
}
