//! A private anonymous mapping that the kernel may read and write through operations: the
//! memory of the forwarding [`arena`](super::arena) and of the UDP buffer ring
//! ([`datagrams`](super::datagrams)).

use std::io;

/// `len` bytes of address space (`MAP_NORESERVE`: a page costs memory only once written),
/// unmapped on drop unless [`Mapping::leak`] said operations may still point into it.
pub(super) struct Mapping {
    base: *mut u8,
    len: usize,
    /// Operations may still point into the mapping: never unmap it.
    leaked: bool,
}

impl Mapping {
    pub(super) fn new(len: usize) -> io::Result<Mapping> {
        // SAFETY: a fresh private anonymous mapping at an address the kernel picks; no
        // existing memory is affected. The result is checked before use.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            base: base.cast(),
            len,
            leaked: false,
        })
    }

    /// Start of the mapping, page-aligned.
    pub(super) fn base(&self) -> *mut u8 {
        self.base
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Operations may still point into the mapping: keep it mapped forever.
    pub(super) fn leak(&mut self) {
        self.leaked = true;
    }

    pub(super) fn is_leaked(&self) -> bool {
        self.leaked
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if !self.leaked {
            // SAFETY: `base`/`len` are the mapping made in `new`, unmapped only here; the
            // owner drained the ring that pointed operations into it first, or leaked it.
            unsafe {
                libc::munmap(self.base.cast(), self.len);
            }
        }
    }
}
