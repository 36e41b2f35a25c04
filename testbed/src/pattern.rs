//! Deterministic pseudo-random byte stream.
//!
//! Servers (`SourceServer`, `GET /big`) and clients (echo load, tests) generate it
//! independently, so either end can verify a transfer of any length, at any offset,
//! without keeping a copy. It is pseudo-random rather than a short cycle so that a
//! misplaced or duplicated chunk shows up as a mismatch.

const SEED: u64 = 0x5eed_0f00_1b1b_c0de;

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The byte at absolute position `pos` of the stream.
pub fn byte_at(pos: u64) -> u8 {
    splitmix64((pos / 8) ^ SEED).to_le_bytes()[(pos % 8) as usize]
}

/// Fills `buf` with the stream's bytes at `offset..offset + buf.len()`.
pub fn fill(offset: u64, buf: &mut [u8]) {
    let mut pos = offset;
    let mut i = 0;
    while i < buf.len() {
        let word = splitmix64((pos / 8) ^ SEED).to_le_bytes();
        let start = (pos % 8) as usize;
        let n = (8 - start).min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&word[start..start + n]);
        i += n;
        pos += n as u64;
    }
}

/// The stream's bytes at `offset..offset + len`, as a new vector.
pub fn bytes(offset: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    fill(offset, &mut v);
    v
}

/// Index in `buf` of the first byte that differs from the stream at `offset`, if any.
pub fn mismatch(offset: u64, buf: &[u8]) -> Option<usize> {
    let mut expect = [0u8; 4096];
    let mut done = 0;
    for chunk in buf.chunks(expect.len()) {
        let exp = &mut expect[..chunk.len()];
        fill(offset + done as u64, exp);
        if let Some(i) = chunk.iter().zip(exp.iter()).position(|(a, b)| a != b) {
            return Some(done + i);
        }
        done += chunk.len();
    }
    None
}

/// Checks a stream that arrives in pieces, e.g. successive `read()` results.
#[derive(Debug, Default, Clone)]
pub struct Checker {
    offset: u64,
    first_mismatch: Option<u64>,
}

impl Checker {
    /// A checker expecting the stream from position 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next piece received.
    pub fn update(&mut self, chunk: &[u8]) {
        if self.first_mismatch.is_none() {
            if let Some(i) = mismatch(self.offset, chunk) {
                self.first_mismatch = Some(self.offset + i as u64);
            }
        }
        self.offset += chunk.len() as u64;
    }

    /// Bytes fed so far.
    pub fn len(&self) -> u64 {
        self.offset
    }

    /// True when nothing has been fed yet.
    pub fn is_empty(&self) -> bool {
        self.offset == 0
    }

    /// Stream position of the first wrong byte, if any was seen.
    pub fn first_mismatch(&self) -> Option<u64> {
        self.first_mismatch
    }

    /// True while every byte fed so far matched.
    pub fn ok(&self) -> bool {
        self.first_mismatch.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_matches_byte_at_at_any_offset() {
        for offset in [0u64, 1, 7, 8, 13, 1 << 33] {
            let v = bytes(offset, 100);
            for (i, b) in v.iter().enumerate() {
                assert_eq!(*b, byte_at(offset + i as u64));
            }
        }
    }

    #[test]
    fn checker_finds_corruption() {
        let mut data = bytes(0, 10_000);
        let mut c = Checker::new();
        c.update(&data[..5000]);
        assert!(c.ok());
        data[6001] ^= 1;
        c.update(&data[5000..]);
        assert_eq!(c.first_mismatch(), Some(6001));
        assert_eq!(c.len(), 10_000);
    }
}
