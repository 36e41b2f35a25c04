//! Pattern bytes and their hash: both ends of a long transfer can check every byte without
//! keeping it.

use std::io::{Read, Write};
use std::net::TcpStream;

/// Deterministic pseudo-random bytes (xorshift).
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// FNV-1a over a byte stream.
#[derive(Clone, Copy)]
pub struct Fnv(pub u64);

impl Fnv {
    pub fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    pub fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x100_0000_01b3);
        }
    }
}

/// Writes `len` bytes of `pattern(seed)`-style data in chunks; returns their hash.
pub fn write_stream(s: &mut TcpStream, seed: u64, len: usize) -> u64 {
    let chunk = pattern(seed, 1 << 20);
    let mut h = Fnv::new();
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len());
        s.write_all(&chunk[..n]).expect("write stream");
        h.update(&chunk[..n]);
        left -= n;
    }
    h.0
}

/// Reads to EOF; returns (bytes, hash).
pub fn read_stream(s: &mut TcpStream) -> (usize, u64) {
    let mut buf = vec![0u8; 1 << 16];
    let mut h = Fnv::new();
    let mut total = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                h.update(&buf[..n]);
                total += n;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read stream: {e}"),
        }
    }
    (total, h.0)
}
