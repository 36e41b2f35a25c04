//! The provided buffer ring UDP receives draw from: one per worker ring, shared by every
//! multishot `recvmsg` (the listeners' and the flows' backend sockets), so a quiet flow
//! holds no buffer. The kernel picks a free buffer for each datagram and names it in the
//! completion; the worker reads it and gives it back ([`Datagrams::recycle`]).
//!
//! Each buffer holds the kernel's `io_uring_recvmsg_out` header, the source address, the
//! control messages and the payload; it is large enough for the largest UDP payload, so
//! a datagram is never cut (a cut one is flagged `MSG_TRUNC` anyway, and dropped).

use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::IoUring;

use super::mapping::Mapping;

/// Buffers in the ring (a power of two): datagrams received and not yet handled at once.
pub const BUFFERS: u16 = 256;
/// Payload room of a buffer: the largest UDP payload (65 535 - 8 bytes of UDP header
/// over IPv6; 65 507 over IPv4) fits.
const PAYLOAD: usize = 65536;
/// The source address room: a `sockaddr_in6` (the larger of the two families).
const NAME_LEN: usize = std::mem::size_of::<libc::sockaddr_in6>();
/// The kernel's `io_uring_recvmsg_out` header at the start of each buffer.
const RECVMSG_OUT: usize = 16;
/// The buffer group id of the ring.
pub const GROUP: u16 = 1;

/// One received datagram, read from its buffer.
#[derive(Debug)]
pub struct Datagram<'a> {
    /// The raw source address (`sockaddr_in`/`sockaddr_in6` bytes).
    pub name: &'a [u8],
    /// The raw control messages (packet info of a wildcard listener).
    pub control: &'a [u8],
    pub payload: &'a [u8],
    /// The datagram was larger than the buffer (`MSG_TRUNC`): the payload is cut.
    pub truncated: bool,
}

pub(super) struct Datagrams {
    /// The ring entries, then the buffers.
    map: Mapping,
    /// Bytes of the ring entries, page-aligned; the buffers follow.
    ring_bytes: usize,
    buf_len: usize,
    /// The next tail value to publish.
    tail: u16,
    /// Per buffer: in the kernel's ring (true) or handed to us by a completion (false).
    in_ring: Vec<bool>,
    /// What every multishot `recvmsg` points at: only its name and control lengths are
    /// read. Boxed, never changed while the ring lives.
    msghdr: Box<libc::msghdr>,
}

impl Datagrams {
    /// Maps the ring and its buffers and registers them with `ring` as group [`GROUP`].
    pub(super) fn new(ring: &IoUring, page: usize) -> io::Result<Datagrams> {
        let entries = usize::from(BUFFERS);
        let ring_bytes = (entries * std::mem::size_of::<BufRingEntry>()).next_multiple_of(page);
        let control = crate::udp_net::CONTROL_LEN;
        let header = RECVMSG_OUT + NAME_LEN + control;
        let buf_len = (PAYLOAD + header).next_multiple_of(page);
        let len = ring_bytes + entries * buf_len;
        let map = Mapping::new(len)?;
        // SAFETY: msghdr is plain old data; all-zero is a valid value.
        let mut msghdr: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        msghdr.msg_namelen = NAME_LEN as libc::socklen_t;
        msghdr.msg_controllen = control as _;
        let mut d = Datagrams {
            map,
            ring_bytes,
            buf_len,
            tail: 0,
            in_ring: vec![false; entries],
            msghdr,
        };
        // SAFETY: the ring memory is page-aligned, `BUFFERS` entries long, zeroed (an
        // empty ring) and lives until `Drop`, after the io_uring it is registered with is
        // closed (the `Ring` field order) or never unmapped if operations may remain.
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(d.map.base() as u64, BUFFERS, GROUP, 0)
        }?;
        for bid in 0..BUFFERS {
            d.recycle(bid);
        }
        Ok(d)
    }

    /// The `msghdr` multishot receives point at.
    pub(super) fn msghdr(&self) -> *const libc::msghdr {
        &*self.msghdr
    }

    /// A completion handed buffer `bid` over: it is ours until recycled.
    pub(super) fn handed_over(&mut self, bid: u16) {
        if let Some(b) = self.in_ring.get_mut(usize::from(bid)) {
            *b = false;
        }
    }

    /// The datagram in buffer `bid`, `len` bytes as the completion said. `None` for a
    /// buffer the kernel owns or a length that does not fit.
    pub(super) fn datagram(&self, bid: u16, len: usize) -> Option<Datagram<'_>> {
        let i = usize::from(bid);
        if *self.in_ring.get(i)? || len > self.buf_len {
            return None;
        }
        // SAFETY: buffer `i` lies inside the mapping (`i < BUFFERS`, `len <= buf_len`),
        // and it is not in the kernel's ring (`in_ring` is false from the completion that
        // handed it over until `recycle`), so the kernel does not write it while the
        // slice, borrowed from `&self`, lives (`recycle` needs `&mut self`).
        let buf = unsafe {
            std::slice::from_raw_parts(self.map.base().add(self.ring_bytes + i * self.buf_len), len)
        };
        parse(buf, NAME_LEN, crate::udp_net::CONTROL_LEN)
    }

    /// Gives buffer `bid` back to the kernel's ring. A buffer already there is left alone
    /// (a second recycle would let the kernel write it twice at once).
    pub(super) fn recycle(&mut self, bid: u16) {
        let i = usize::from(bid);
        if self.in_ring.get(i) != Some(&false) {
            return;
        }
        self.in_ring[i] = true;
        let mask = usize::from(BUFFERS) - 1;
        let slot = usize::from(self.tail) & mask;
        let addr = self.map.base() as u64 + (self.ring_bytes + i * self.buf_len) as u64;
        // SAFETY: entry `slot` lies in the ring area (`slot < BUFFERS`); the kernel reads
        // entries only up to the published tail, and this one is past it until the store
        // below. Entry 0's `resv` field is the tail, which only the store below writes.
        unsafe {
            let e = &mut *self.map.base().cast::<BufRingEntry>().add(slot);
            e.set_addr(addr);
            e.set_len(self.buf_len as u32);
            e.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail is a u16 inside entry 0 of the page-aligned ring (suitably
        // aligned for an atomic u16); the kernel reads it concurrently, hence the atomic
        // release store that publishes the entry written above.
        unsafe {
            let tail =
                BufRingEntry::tail(self.map.base().cast::<BufRingEntry>()) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    /// Operations may still point into the mapping: keep it mapped forever.
    pub(super) fn leak(&mut self) {
        self.map.leak();
    }
}

/// Reads a multishot `recvmsg` buffer: `struct io_uring_recvmsg_out { u32 namelen,
/// controllen, payloadlen, flags }`, then the name field (`name_len` bytes), the control
/// field (`control_len` bytes), then the payload.
fn parse(buf: &[u8], name_len: usize, control_len: usize) -> Option<Datagram<'_>> {
    let word = |i: usize| -> Option<usize> {
        Some(u32::from_ne_bytes(buf.get(4 * i..4 * i + 4)?.try_into().ok()?) as usize)
    };
    let (namelen, controllen, payloadlen, flags) = (word(0)?, word(1)?, word(2)?, word(3)?);
    let name_at = RECVMSG_OUT;
    let control_at = name_at + name_len;
    let payload_at = control_at + control_len;
    let payload_end = payload_at.checked_add(payloadlen)?.min(buf.len());
    Some(Datagram {
        name: buf.get(name_at..name_at + namelen.min(name_len))?,
        control: buf.get(control_at..control_at + controllen.min(control_len))?,
        payload: buf.get(payload_at..payload_end)?,
        truncated: flags & libc::MSG_TRUNC as usize != 0 || payload_at + payloadlen > buf.len(),
    })
}
