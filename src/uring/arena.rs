//! The forwarding buffers of every connection slot in one private anonymous mapping.

use std::io;

use super::mapping::Mapping;
use crate::direction::Dir;

/// `slots x 2 x buf_size` bytes of address space (`MAP_NORESERVE`). A page costs memory only
/// once written, so untouched slots cost nothing, and [`Arena::release`] gives an idle slot's
/// pages back. Buffers are page-aligned, so a release never touches a neighbour.
pub(super) struct Arena {
    map: Mapping,
    slots: usize,
    buf_size: usize,
}

impl Arena {
    /// `buf_size` must be a multiple of the page size.
    pub(super) fn new(slots: usize, buf_size: usize) -> io::Result<Arena> {
        let slots = slots.max(1);
        let len = slots
            .checked_mul(2 * buf_size)
            .ok_or_else(|| io::Error::other("buffer arena size overflows"))?;
        Ok(Arena {
            map: Mapping::new(len)?,
            slots,
            buf_size,
        })
    }

    pub(super) fn buf_size(&self) -> usize {
        self.buf_size
    }

    /// Index of a buffer: two per slot. Panics on a slot outside the arena (a bug must never
    /// become an out-of-bounds kernel write).
    pub(super) fn index(&self, slot: usize, dir: Dir) -> usize {
        assert!(slot < self.slots, "slot {slot} outside the arena");
        slot * 2 + dir.index()
    }

    /// Start of buffer `index`; in bounds by construction of `index`.
    pub(super) fn ptr(&self, index: usize) -> *mut u8 {
        let off = index * self.buf_size;
        debug_assert!(off + self.buf_size <= self.map.len());
        self.map.base().wrapping_add(off)
    }

    /// The bytes of buffer `index`.
    ///
    /// # Safety
    /// No operation may be writing into the buffer while the slice lives (the ring checks
    /// this before calling).
    pub(super) unsafe fn slice(&self, index: usize) -> &[u8] {
        // SAFETY: `ptr(index) .. + buf_size` lies inside the mapping, which is readable and
        // lives as long as `self`; the caller guarantees no concurrent kernel write.
        unsafe { std::slice::from_raw_parts(self.ptr(index), self.buf_size) }
    }

    /// The bytes of buffer `index`, writable.
    ///
    /// # Safety
    /// No operation may be reading or writing the buffer while the slice lives (the ring
    /// checks this before calling); `&mut self` makes it the only slice of the arena.
    pub(super) unsafe fn slice_mut(&mut self, index: usize) -> &mut [u8] {
        // SAFETY: as in `slice`, and the caller guarantees no concurrent kernel access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr(index), self.buf_size) }
    }

    /// Gives the slot's two buffers' pages back (their contents read as zeros after).
    pub(super) fn release(&mut self, slot: usize) {
        let p = self.ptr(self.index(slot, Dir::Up));
        // SAFETY: the slot's two buffers are adjacent, page-aligned and inside the mapping.
        // MADV_DONTNEED on private anonymous memory only replaces its contents with zeros on
        // next access; no Rust reference into the arena is alive (`&mut self`).
        unsafe {
            libc::madvise(p.cast(), 2 * self.buf_size, libc::MADV_DONTNEED);
        }
    }

    /// Operations may still point into the mapping: keep it mapped forever.
    pub(super) fn leak(&mut self) {
        self.map.leak();
    }

    pub(super) fn is_leaked(&self) -> bool {
        self.map.is_leaked()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_apart_and_bounded() {
        let mut a = Arena::new(3, 4096).unwrap();
        assert_eq!(a.index(0, Dir::Up), 0);
        assert_eq!(a.index(2, Dir::Down), 5);
        // SAFETY: no operation uses this arena.
        unsafe { a.slice_mut(a.index(1, Dir::Up)) }.fill(7);
        // SAFETY: as above.
        let (up, down) = unsafe { (a.slice(2), a.slice(3)) };
        assert!(up.iter().all(|&b| b == 7) && down.iter().all(|&b| b == 0));
        a.release(1);
        // SAFETY: as above.
        let up = unsafe { a.slice(2) };
        assert!(up.iter().all(|&b| b == 0), "released pages read 0");
    }

    #[test]
    #[should_panic(expected = "outside the arena")]
    fn a_slot_past_the_end_is_refused() {
        let a = Arena::new(3, 4096).unwrap();
        a.index(3, Dir::Up);
    }
}
