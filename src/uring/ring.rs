//! A worker's io_uring and the memory its operations point at.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use io_uring::types::{CancelBuilder, Fd, TimeoutFlags, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring};

use super::arena::Arena;
use super::datagrams::{Datagram, Datagrams};
use crate::direction::Dir;

/// One completion, taken out of the completion queue.
#[derive(Debug)]
pub struct Completion {
    /// The user data the operation was pushed with.
    pub user_data: u64,
    pub result: i32,
    /// `IORING_CQE_F_MORE`: a multishot operation is still armed.
    pub more: bool,
    /// For a successful [`Ring::accept`]: the new socket, owned, and the client's address.
    pub accepted: Option<Accepted>,
    /// For a datagram receive: the provided buffer the datagram is in (read it with
    /// [`Ring::datagram`], then give it back with [`Ring::recycle`]).
    pub buffer: Option<u16>,
}

impl Completion {
    /// A completion of an operation done directly rather than through the ring.
    pub fn local(user_data: u64, result: i32) -> Completion {
        Completion {
            user_data,
            result,
            more: false,
            accepted: None,
            buffer: None,
        }
    }
}

/// A client socket an accept returned.
#[derive(Debug)]
pub struct Accepted {
    pub fd: OwnedFd,
    /// The client's address, as the kernel reported it.
    pub peer: Option<SocketAddr>,
}

/// The ring's own marks in the top two bits of `user_data`, for the operations whose memory
/// it tracks; the rest of `user_data` is the caller's, whose top two bits must be clear.
const TAG_MASK: u64 = 0b11 << 62;
const TAG_ACCEPT: u64 = 0b01 << 62;
const TAG_BUFFER: u64 = 0b10 << 62;
const TAG_CONNECT: u64 = 0b11 << 62;

/// What a connect points at, per connection slot.
struct ConnectIo {
    addr: libc::sockaddr_storage,
    addr_len: libc::socklen_t,
    timeout: Timespec,
    /// The tagged user data of the connect in flight, 0 when none.
    owner: u64,
}

/// Where an accept writes the client's address, per listener; boxed so it never moves.
struct AcceptIo {
    addr: libc::sockaddr_storage,
    addr_len: libc::socklen_t,
    /// The tagged user data of the accept in flight, 0 when none.
    owner: u64,
    /// The accept in flight is multishot: it writes no address.
    multishot: bool,
    /// A cancel of the accept in flight was submitted.
    cancelled: bool,
}

fn zeroed_sockaddr() -> libc::sockaddr_storage {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

/// The ring's records of which operation uses which memory, borrowed while reaping.
struct Owners<'a> {
    buf_owner: &'a mut [u64],
    connects: &'a mut [Box<ConnectIo>],
    accepts: &'a mut [Box<AcceptIo>],
}

impl Owners<'_> {
    /// The final completion of a tracked operation: its memory is free again.
    fn finished(&mut self, user_data: u64, result: i32) -> Option<Accepted> {
        let index = user_data as u32 as usize;
        match user_data & TAG_MASK {
            TAG_BUFFER => {
                for b in [2 * index, 2 * index + 1] {
                    if self.buf_owner.get(b) == Some(&user_data) {
                        self.buf_owner[b] = 0;
                    }
                }
                None
            }
            TAG_CONNECT => {
                if let Some(c) = self.connects.get_mut(index) {
                    if c.owner == user_data {
                        c.owner = 0;
                    }
                }
                None
            }
            TAG_ACCEPT => {
                let mut peer = None;
                if let Some(a) = self.accepts.get_mut(index) {
                    if a.owner == user_data {
                        a.owner = 0;
                        if !a.multishot {
                            peer = read_sockaddr(&a.addr, a.addr_len);
                        }
                    }
                }
                accepted_fd(result, peer)
            }
            _ => None,
        }
    }
}

/// The client socket of a successful accept (`result` a descriptor), with its address when
/// the accept wrote one.
fn accepted_fd(result: i32, peer: Option<SocketAddr>) -> Option<Accepted> {
    if result < 0 {
        return None;
    }
    // SAFETY: a non-negative accept result is a descriptor the kernel created for this
    // process and nothing else owns; each completion carries a different one.
    let fd = unsafe { OwnedFd::from_raw_fd(result) };
    Some(Accepted { fd, peer })
}

/// Which features the kernel granted when the ring was built (logged at start).
#[derive(Debug, Clone, Copy, Default)]
pub struct RingFeatures {
    pub defer_taskrun: bool,
    pub coop_taskrun: bool,
    pub single_issuer: bool,
}

/// Why the ring cannot go on; the worker stops on it (and is restarted).
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("io_uring_enter failed: {0}")]
    Enter(io::Error),
    #[error("the kernel dropped {0} completion(s): connections' in-flight counts are lost")]
    Dropped(u32),
}

/// A worker's io_uring plus the memory its operations reference.
pub struct Ring {
    // Field order matters: the ring is dropped (and drained, see `Drop`) before the memory.
    ring: IoUring,
    /// Connection slots the ring has room for; the per-slot memory below is made on a
    /// slot's first use (boxed, so it never moves), so unused slots cost nothing.
    slots: usize,
    // Boxed: the kernel holds pointers into them while the vectors grow.
    #[allow(clippy::vec_box)]
    connects: Vec<Box<ConnectIo>>,
    #[allow(clippy::vec_box)]
    accepts: Vec<Box<AcceptIo>>,
    arena: Arena,
    /// The provided buffers of UDP receives, made when the first UDP socket needs them.
    datagrams: Option<Datagrams>,
    /// Per buffer (two per slot): the tagged user data of the operation using it, 0 if none.
    buf_owner: Vec<u64>,
    wake_buf: Box<u64>,
    tick: Box<Timespec>,
    /// Operations pushed whose final completion has not been reaped yet.
    inflight: usize,
    /// Drained (or leaked) already: nothing left for `Drop` to wait for.
    drained: bool,
    pub features: RingFeatures,
}

/// `IORING_RECVSEND_POLL_FIRST` (the crate keeps its `sys` constants private).
const RECVSEND_POLL_FIRST: u16 = 1;
/// The kernel's largest completion queue (`IORING_MAX_CQ_ENTRIES`).
const MAX_CQ: u32 = 65536;
/// Completions one connection slot can have outstanding at once: per direction a splice
/// with its linked poll, or a copy; a connect with its timeout; the cancellations.
const CQ_PER_SLOT: u32 = 6;

impl Ring {
    /// Builds a ring with room for `entries` submissions, `slots` connection slots and
    /// forwarding buffers of `buf_size` bytes, and a completion queue sized so that every
    /// slot's operations fit. Uses single-issuer, cooperative and deferred task running where
    /// the kernel has them, falling back when it doesn't.
    pub fn new(entries: u32, slots: usize, buf_size: usize) -> io::Result<Ring> {
        let buf_size = buf_size.next_multiple_of(page_size());
        let mut arena = Some(Arena::new(slots, buf_size)?);
        let want = u32::try_from(slots)
            .unwrap_or(u32::MAX)
            .saturating_mul(CQ_PER_SLOT)
            .saturating_add(1024);
        let cq = want.max(entries.saturating_mul(4)).min(MAX_CQ);
        let attempts: [(bool, bool, bool); 3] = [
            (true, true, true),
            (true, true, false),
            (false, false, false),
        ];
        let mut last_err = None;
        for (single, coop, defer) in attempts {
            let mut b = IoUring::builder();
            b.setup_cqsize(cq).setup_clamp();
            if single {
                b.setup_single_issuer();
            }
            if coop {
                b.setup_coop_taskrun();
            }
            if defer {
                b.setup_defer_taskrun();
            }
            match b.build(entries) {
                Ok(ring) => {
                    // Splice and some blocking ops run on io-wq threads; cap them so that
                    // thousands of connections never mean thousands of kernel threads.
                    let mut max = [4u32, 4u32];
                    let _ = ring.submitter().register_iowq_max_workers(&mut max);
                    return Ok(Ring {
                        ring,
                        slots: slots.max(1),
                        connects: Vec::new(),
                        accepts: Vec::new(),
                        arena: arena.take().expect("built once"),
                        datagrams: None,
                        buf_owner: Vec::new(),
                        wake_buf: Box::new(0),
                        tick: Box::new(Timespec::new()),
                        inflight: 0,
                        drained: false,
                        features: RingFeatures {
                            defer_taskrun: defer,
                            coop_taskrun: coop,
                            single_issuer: single,
                        },
                    });
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("io_uring setup failed")))
    }

    /// Size of each forwarding buffer.
    pub fn buf_size(&self) -> usize {
        self.arena.buf_size()
    }

    /// Number of connection slots this ring has room for.
    pub fn slot_count(&self) -> usize {
        self.slots
    }

    /// Operations in flight (pushed, final completion not yet reaped).
    pub fn inflight(&self) -> usize {
        self.inflight
    }

    /// The caller's user data for an operation the ring tracks: top bits clear (they are
    /// the ring's), and the slot or listener index in the low 32 bits.
    fn tagged(user_data: u64, index: usize, tag: u64) -> u64 {
        assert_eq!(
            user_data & TAG_MASK,
            0,
            "user data uses the ring's tag bits"
        );
        assert_eq!(
            user_data as u32 as usize, index,
            "user data names another slot"
        );
        user_data | tag
    }

    fn push(&mut self, entry: squeue::Entry) {
        self.push_all(&[entry]);
    }

    /// Pushes entries as one unit (a linked chain stays together), submitting first when
    /// the submission queue lacks room.
    fn push_all(&mut self, entries: &[squeue::Entry]) {
        loop {
            {
                let mut sq = self.ring.submission();
                if sq.capacity() - sq.len() >= entries.len() {
                    // SAFETY: every entry built by this module points only at memory owned by
                    // `self` (slot buffers, connect and accept addresses, boxed timespecs and
                    // eventfd buffer), which stays allocated and unmoved until `Drop` has
                    // reaped every operation in flight (or leaked the memory). A buffer, a
                    // connect address or an accept address is handed to one operation at a
                    // time (the owner checks in the functions that build the entries), and
                    // Rust code reads or writes a buffer only while no operation owns it.
                    // Datagram receives point at the boxed, never-written `msghdr` of
                    // `datagrams` and draw buffers from its ring (see `Datagrams`).
                    unsafe { sq.push_multiple(entries) }.expect("room checked above");
                    self.inflight += entries.len();
                    return;
                }
            }
            if let Err(e) = self.ring.submit() {
                if e.raw_os_error() != Some(libc::EINTR) && e.raw_os_error() != Some(libc::EBUSY) {
                    tracing::error!("io_uring submit failed: {e}");
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }

    /// Submits everything queued and waits for at least `want` completions. Interruptions
    /// are not errors; anything else, or completions the kernel dropped, is.
    pub fn submit_and_wait(&mut self, want: usize) -> Result<(), RingError> {
        match self.ring.submit_and_wait(want) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EBUSY | libc::EAGAIN | libc::ETIME)
                ) => {}
            Err(e) if e.raw_os_error() == Some(libc::EBADR) => {
                return Err(RingError::Dropped(self.ring.completion().overflow().max(1)));
            }
            Err(e) => return Err(RingError::Enter(e)),
        }
        match self.ring.completion().overflow() {
            0 => Ok(()),
            n => Err(RingError::Dropped(n)),
        }
    }

    /// The completion queue filled up and the kernel holds completions back until there
    /// is room (nothing is lost; the next wait flushes them). Worth counting: the queue is
    /// too small for the load.
    pub fn cq_backlogged(&mut self) -> bool {
        self.ring.submission().cq_overflow()
    }

    /// Moves every available completion into `out` (cleared first), releasing the memory of
    /// the operations that are finished (their buffer, connect or accept address).
    pub fn reap(&mut self, out: &mut Vec<Completion>) {
        out.clear();
        let mut finals = 0;
        let mut owners = Owners {
            buf_owner: &mut self.buf_owner,
            connects: &mut self.connects,
            accepts: &mut self.accepts,
        };
        for cqe in self.ring.completion() {
            let (user_data, result) = (cqe.user_data(), cqe.result());
            let more = cqueue::more(cqe.flags());
            let buffer = cqueue::buffer_select(cqe.flags());
            if let (Some(bid), Some(d)) = (buffer, self.datagrams.as_mut()) {
                d.handed_over(bid);
            }
            let mut accepted = None;
            if !more {
                finals += 1;
                accepted = owners.finished(user_data, result);
            } else if user_data & TAG_MASK == TAG_ACCEPT {
                // A multishot accept's client; the accept stays armed.
                accepted = accepted_fd(result, None);
            }
            out.push(Completion {
                user_data: user_data & !TAG_MASK,
                result,
                more,
                accepted,
                buffer,
            });
        }
        debug_assert!(finals <= self.inflight, "more completions than operations");
        self.inflight = self.inflight.saturating_sub(finals);
    }

    /// Accepts one connection on `listener` (a non-blocking, close-on-exec socket); the
    /// completion carries it as [`Completion::accepted`]. At most one accept per listener
    /// index is in flight. `user_data`'s low 32 bits must be `index`.
    pub fn accept(&mut self, index: usize, listener: RawFd, user_data: u64) {
        let ud = self.accept_io(index, user_data, false);
        let a = &mut self.accepts[index];
        a.addr_len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let addr = std::ptr::addr_of_mut!(a.addr).cast::<libc::sockaddr>();
        let len = std::ptr::addr_of_mut!(a.addr_len);
        let e = opcode::Accept::new(Fd(listener), addr, len)
            .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
            .build()
            .user_data(ud);
        self.push(e);
    }

    /// A multishot accept on `listener`: every client the kernel queues completes it, with
    /// [`Completion::more`] set while it stays armed, and no address (ask the socket).
    /// Same rules as [`Ring::accept`].
    pub fn accept_multi(&mut self, index: usize, listener: RawFd, user_data: u64) {
        let ud = self.accept_io(index, user_data, true);
        let e = opcode::AcceptMulti::new(Fd(listener))
            .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
            .build()
            .user_data(ud);
        self.push(e);
    }

    /// Records listener `index`'s accept as in flight; returns its tagged user data.
    fn accept_io(&mut self, index: usize, user_data: u64, multishot: bool) -> u64 {
        while self.accepts.len() <= index {
            self.accepts.push(Box::new(AcceptIo {
                addr: zeroed_sockaddr(),
                addr_len: 0,
                owner: 0,
                multishot: false,
                cancelled: false,
            }));
        }
        let ud = Self::tagged(user_data, index, TAG_ACCEPT);
        let a = &mut self.accepts[index];
        assert_eq!(a.owner, 0, "one accept per listener");
        a.owner = ud;
        a.multishot = multishot;
        a.cancelled = false;
        ud
    }

    /// Whether the accept in flight on listener `index` is multishot.
    pub fn accepting_multi(&self, index: usize) -> bool {
        self.accepts
            .get(index)
            .is_some_and(|a| a.owner != 0 && a.multishot)
    }

    /// Whether an accept on listener `index` is in flight.
    pub fn accepting(&self, index: usize) -> bool {
        self.accepts.get(index).is_some_and(|a| a.owner != 0)
    }

    /// Cancels the accept in flight on listener `index`, if any.
    /// Submitted once per accept: asking again changes nothing.
    pub fn cancel_accept(&mut self, index: usize, user_data: u64) {
        let Some(a) = self.accepts.get_mut(index) else {
            return;
        };
        if a.owner == 0 || a.cancelled {
            return;
        }
        a.cancelled = true;
        let owner = a.owner;
        self.push(
            opcode::AsyncCancel::new(owner)
                .build()
                .user_data(user_data & !TAG_MASK),
        );
    }

    /// Reads the 8-byte counter of an eventfd (the control thread's wake-up).
    pub fn read_eventfd(&mut self, fd: RawFd, user_data: u64) {
        let ptr: *mut u64 = &mut *self.wake_buf;
        let e = opcode::Read::new(Fd(fd), ptr.cast::<u8>(), 8)
            .build()
            .user_data(user_data & !TAG_MASK);
        self.push(e);
    }

    /// A repeating timeout that completes every `every` (multishot), for the timer wheel.
    /// The kernel copies the timespec when it prepares the operation.
    pub fn tick(&mut self, every: Duration, user_data: u64) {
        *self.tick = Timespec::from(every);
        let ptr: *const Timespec = &*self.tick;
        let e = opcode::Timeout::new(ptr)
            .count(0)
            .flags(TimeoutFlags::MULTISHOT)
            .build()
            .user_data(user_data & !TAG_MASK);
        self.push(e);
    }

    /// A one-shot timeout, when multishot timeouts are unavailable.
    pub fn tick_once(&mut self, every: Duration, user_data: u64) {
        *self.tick = Timespec::from(every);
        let ptr: *const Timespec = &*self.tick;
        let e = opcode::Timeout::new(ptr)
            .build()
            .user_data(user_data & !TAG_MASK);
        self.push(e);
    }

    /// `connect(fd, addr)` linked to a timeout: two completions, `connect_ud` with the
    /// connect's result (`-ECANCELED` when the timeout fired) and `timeout_ud`. One connect
    /// per slot at a time; `connect_ud`'s low 32 bits must be `slot`.
    pub fn connect(
        &mut self,
        slot: usize,
        fd: RawFd,
        addr: &SocketAddr,
        timeout: Duration,
        connect_ud: u64,
        timeout_ud: u64,
    ) {
        let ud = Self::tagged(connect_ud, slot, TAG_CONNECT);
        assert!(slot < self.slots, "slot {slot} outside the ring");
        while self.connects.len() <= slot {
            self.connects.push(Box::new(ConnectIo {
                addr: zeroed_sockaddr(),
                addr_len: 0,
                timeout: Timespec::new(),
                owner: 0,
            }));
        }
        let c = &mut self.connects[slot];
        assert_eq!(c.owner, 0, "one connect per slot");
        c.owner = ud;
        let sa = socket2::SockAddr::from(*addr);
        // SAFETY: `sa.as_ptr()` points at `sa.len()` valid bytes of a sockaddr, which fit in
        // sockaddr_storage (socket2 stores it in one); the regions don't overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                sa.as_ptr().cast::<u8>(),
                std::ptr::addr_of_mut!(c.addr).cast::<u8>(),
                sa.len() as usize,
            );
        }
        c.addr_len = sa.len();
        // The kernel copies the timespec of a linked timeout when it prepares it, so the
        // next connect of the slot may overwrite it while this timeout is still armed.
        c.timeout = Timespec::from(timeout);
        let addr_ptr = std::ptr::addr_of!(c.addr).cast::<libc::sockaddr>();
        let ts_ptr: *const Timespec = &c.timeout;
        let connect = opcode::Connect::new(Fd(fd), addr_ptr, c.addr_len)
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(ud);
        let link = opcode::LinkTimeout::new(ts_ptr)
            .build()
            .user_data(timeout_ud & !TAG_MASK);
        self.push_all(&[connect, link]);
    }

    /// Marks buffer (`slot`, `dir`) as used by the operation `user_data` and returns its
    /// start; panics if another operation uses it (the state machine's one-operation-per-
    /// direction rule is broken: a bug that must not become a data race with the kernel).
    fn claim(&mut self, slot: usize, dir: Dir, user_data: u64) -> (u64, *mut u8) {
        let index = self.arena.index(slot, dir);
        let ud = Self::tagged(user_data, slot, TAG_BUFFER);
        if self.buf_owner.len() <= index | 1 {
            self.buf_owner.resize((index | 1) + 1, 0);
        }
        assert_eq!(self.buf_owner[index], 0, "buffer {slot}/{dir:?} is in use");
        let other = index ^ 1;
        assert_ne!(self.buf_owner[other], ud, "same user data on both buffers");
        self.buf_owner[index] = ud;
        (ud, self.arena.ptr(index))
    }

    /// Receives into the slot's buffer for `dir` (its whole length). `poll_first`: wait
    /// for data before the first attempt (`IORING_RECVSEND_POLL_FIRST`), for a socket that
    /// was just drained. `user_data`'s low 32 bits must be `slot`.
    pub fn recv(&mut self, slot: usize, dir: Dir, fd: RawFd, poll_first: bool, user_data: u64) {
        let len = self.buf_size() as u32;
        let (ud, ptr) = self.claim(slot, dir, user_data);
        let ioprio = if poll_first { RECVSEND_POLL_FIRST } else { 0 };
        let e = opcode::Recv::new(Fd(fd), ptr, len)
            .ioprio(ioprio)
            .build()
            .user_data(ud);
        self.push(e);
    }

    /// Receives into `buf[from..to]` of the slot's buffer for `dir` (a header that arrived in
    /// pieces is read after the piece already there).
    pub fn recv_range(
        &mut self,
        slot: usize,
        dir: Dir,
        fd: RawFd,
        from: usize,
        to: usize,
        user_data: u64,
    ) {
        let len = self.range_len(from, to);
        let (ud, ptr) = self.claim(slot, dir, user_data);
        // `from < to <= buf_size`: inside the buffer.
        let e = opcode::Recv::new(Fd(fd), ptr.wrapping_add(from), len)
            .build()
            .user_data(ud);
        self.push(e);
    }

    /// Sends `buf[from..to]` of the slot's buffer for `dir`.
    pub fn send(
        &mut self,
        slot: usize,
        dir: Dir,
        fd: RawFd,
        from: usize,
        to: usize,
        user_data: u64,
    ) {
        let len = self.range_len(from, to);
        let (ud, ptr) = self.claim(slot, dir, user_data);
        let e = opcode::Send::new(Fd(fd), ptr.wrapping_add(from), len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(ud);
        self.push(e);
    }

    /// Length of `buf[from..to]`; panics on a range outside the buffer (a state machine bug
    /// must never become an out-of-bounds kernel access).
    fn range_len(&self, from: usize, to: usize) -> u32 {
        assert!(
            from < to && to <= self.buf_size(),
            "range within the buffer"
        );
        (to - from) as u32
    }

    /// The bytes of the slot's buffer for `dir`, or `None` while an operation uses it.
    pub fn buf(&self, slot: usize, dir: Dir) -> Option<&[u8]> {
        let index = self.arena.index(slot, dir);
        let free = self.buf_owner.get(index).is_none_or(|&o| o == 0);
        // SAFETY: no operation owns the buffer (checked), so the kernel neither reads nor
        // writes it while the shared borrow of `self` lasts (pushing needs `&mut self`).
        free.then(|| unsafe { self.arena.slice(index) })
    }

    /// The slot's buffer for `dir`, to fill before a send, or `None` while an operation
    /// uses it.
    pub fn buf_mut(&mut self, slot: usize, dir: Dir) -> Option<&mut [u8]> {
        let index = self.arena.index(slot, dir);
        if self.buf_owner.get(index).is_some_and(|&o| o != 0) {
            return None;
        }
        // SAFETY: no operation owns the buffer (checked) and none can be pushed while the
        // exclusive borrow of `self` lasts.
        Some(unsafe { self.arena.slice_mut(index) })
    }

    /// Gives the physical pages of the slot's buffers back to the kernel
    /// (`MADV_DONTNEED`): the address range stays valid and the next write faults in a
    /// zeroed page. An idle connection then costs no buffer memory. Returns whether it did.
    ///
    /// The caller must know that no byte the kernel wrote into these buffers is still
    /// unprocessed (a data invariant, not a memory-safety one: no reference into them is
    /// alive). That holds when every completion has been handled and the ring runs with
    /// deferred task-run: a pending receive then copies into the buffer only inside a
    /// later `io_uring_enter` of this thread, after this call. Without deferred task-run a
    /// receive may complete at any syscall, so nothing is released.
    pub fn release_buf_pages(&mut self, slot: usize) -> bool {
        if !self.features.defer_taskrun {
            return false;
        }
        self.arena.release(slot);
        true
    }

    /// Waits until `fd` has one of `events` (`POLLIN`, `POLLOUT`).
    pub fn poll(&mut self, fd: RawFd, events: u32, user_data: u64) {
        let e = opcode::PollAdd::new(Fd(fd), events)
            .build()
            .user_data(user_data & !TAG_MASK);
        self.push(e);
    }

    /// A non-blocking `splice(fd_in -> fd_out, len)`; with `poll_first = Some((fd, events,
    /// user_data))` a poll is linked ahead of it, so the splice runs once the socket is
    /// ready (two completions). Splices are never linked to each other: a short first
    /// splice would cancel the second.
    pub fn splice(
        &mut self,
        fd_in: RawFd,
        fd_out: RawFd,
        len: usize,
        user_data: u64,
        poll_first: Option<(RawFd, u32, u64)>,
    ) {
        let len = len.min(u32::MAX as usize) as u32;
        let splice = opcode::Splice::new(Fd(fd_in), -1, Fd(fd_out), -1, len)
            .flags(libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE)
            .build()
            .user_data(user_data & !TAG_MASK);
        match poll_first {
            Some((fd, events, poll_ud)) => {
                let poll = opcode::PollAdd::new(Fd(fd), events)
                    .build()
                    .flags(squeue::Flags::IO_LINK)
                    .user_data(poll_ud & !TAG_MASK);
                self.push_all(&[poll, splice]);
            }
            None => self.push(splice),
        }
    }

    /// Closes `fd` in the ring (no syscall of its own). Operations still in flight on it
    /// hold their own reference to the file and complete normally or cancelled.
    pub fn close(&mut self, fd: OwnedFd, user_data: u64) {
        let e = opcode::Close::new(Fd(fd.into_raw_fd()))
            .build()
            .user_data(user_data & !TAG_MASK);
        self.push(e);
    }

    /// Cancels every operation in flight on `fd`.
    pub fn cancel_fd(&mut self, fd: RawFd, user_data: u64) {
        let e = opcode::AsyncCancel2::new(CancelBuilder::fd(Fd(fd)).all())
            .build()
            .user_data(user_data & !TAG_MASK);
        self.push(e);
    }

    /// Makes the provided buffer ring datagram receives use (once; later calls do nothing).
    pub fn enable_datagrams(&mut self) -> io::Result<()> {
        if self.datagrams.is_none() {
            self.datagrams = Some(Datagrams::new(&self.ring, page_size())?);
        }
        Ok(())
    }

    /// A multishot `recvmsg` on the UDP socket `fd`: one completion per datagram, each in
    /// a provided buffer, until it fails or is cancelled (a completion without `more`).
    /// Returns false (nothing submitted) before [`Ring::enable_datagrams`].
    pub fn recv_datagrams(&mut self, fd: RawFd, user_data: u64) -> bool {
        let Some(d) = self.datagrams.as_ref() else {
            return false;
        };
        let e = opcode::RecvMsgMulti::new(Fd(fd), d.msghdr(), super::datagrams::GROUP)
            .build()
            .user_data(user_data & !TAG_MASK);
        self.push(e);
        true
    }

    /// The datagram a receive completion put in buffer `bid` (`len` = its result).
    pub fn datagram(&self, bid: u16, len: usize) -> Option<Datagram<'_>> {
        self.datagrams.as_ref()?.datagram(bid, len)
    }

    /// Gives buffer `bid` back for the next datagrams; after this it cannot be read.
    pub fn recycle(&mut self, bid: u16) {
        if let Some(d) = self.datagrams.as_mut() {
            d.recycle(bid);
        }
    }

    /// Cancels everything in flight and waits up to `within` for the completions. If some
    /// never come, the memory they may still use is leaked (kept mapped forever) rather than
    /// freed under the kernel. Returns whether everything completed.
    pub fn drain(&mut self, within: Duration) -> bool {
        if self.drained {
            return !self.arena.is_leaked();
        }
        self.drained = true;
        if self.inflight == 0 {
            return true;
        }
        let e = opcode::AsyncCancel2::new(CancelBuilder::any().all())
            .build()
            .user_data(0);
        self.push(e);
        let deadline = Instant::now() + within;
        let mut out = Vec::new();
        while self.inflight > 0 && Instant::now() < deadline {
            let ts = Timespec::from(Duration::from_millis(50));
            let args = io_uring::types::SubmitArgs::new().timespec(&ts);
            let _ = self.ring.submitter().submit_with_args(1, &args);
            self.reap(&mut out);
        }
        if self.inflight == 0 {
            return true;
        }
        // The kernel may still write into this memory: never free it.
        std::mem::forget(std::mem::take(&mut self.connects));
        std::mem::forget(std::mem::take(&mut self.accepts));
        self.arena.leak();
        if let Some(d) = self.datagrams.as_mut() {
            d.leak();
        }
        std::mem::forget(std::mem::replace(&mut self.wake_buf, Box::new(0)));
        std::mem::forget(std::mem::replace(&mut self.tick, Box::new(Timespec::new())));
        false
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        self.drain(Duration::from_secs(2));
    }
}

/// The address an accept wrote, if it is an IPv4 or IPv6 one.
fn read_sockaddr(addr: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let mut storage = socket2::SockAddrStorage::zeroed();
    // SAFETY: `sockaddr_storage` is one of this platform's sockaddr types.
    *unsafe { storage.view_as::<libc::sockaddr_storage>() } = *addr;
    let len = len.min(std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t);
    // SAFETY: the kernel wrote a valid socket address of `len` bytes (clamped to the
    // storage) into `addr`, and the accept that wrote it has completed.
    unsafe { socket2::SockAddr::new(storage, len) }.as_socket()
}

fn page_size() -> usize {
    static PAGE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .map(|n| n as usize)
            .filter(|&n| n.is_power_of_two())
            .unwrap_or(4096)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn ring(slots: usize) -> Ring {
        Ring::new(64, slots, 4096).expect("io_uring available")
    }

    fn wait(r: &mut Ring) -> Vec<Completion> {
        let mut out = Vec::new();
        while out.is_empty() {
            r.submit_and_wait(1).unwrap();
            r.reap(&mut out);
        }
        out
    }

    #[test]
    fn a_buffer_is_unavailable_while_an_operation_uses_it() {
        let mut r = ring(2);
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        r.recv(1, Dir::Down, a.as_raw_fd(), false, 1);
        assert!(r.buf(1, Dir::Down).is_none() && r.buf_mut(1, Dir::Down).is_none());
        assert!(
            r.buf_mut(1, Dir::Up).is_some(),
            "the other direction is free"
        );
        std::io::Write::write_all(&mut &b, b"hello").unwrap();
        let c = wait(&mut r);
        assert_eq!((c[0].user_data, c[0].result), (1, 5));
        assert_eq!(&r.buf(1, Dir::Down).unwrap()[..5], b"hello");
        r.buf_mut(1, Dir::Down).unwrap()[..2].copy_from_slice(b"ok");
        r.send(1, Dir::Down, a.as_raw_fd(), 0, 2, 1);
        let c = wait(&mut r);
        assert_eq!(c[0].result, 2);
        assert!(r.buf(1, Dir::Down).is_some());
    }

    #[test]
    #[should_panic(expected = "is in use")]
    fn a_second_operation_on_a_busy_buffer_is_refused() {
        let mut r = ring(1);
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        r.recv(0, Dir::Up, a.as_raw_fd(), false, 0);
        r.send(0, Dir::Up, a.as_raw_fd(), 0, 10, 7u64 << 56);
    }

    #[test]
    #[should_panic(expected = "outside the arena")]
    fn a_slot_outside_the_arena_is_refused() {
        let mut r = ring(2);
        r.recv(2, Dir::Up, 0, false, 2);
    }

    #[test]
    #[should_panic(expected = "range within the buffer")]
    fn a_range_outside_the_buffer_is_refused() {
        let mut r = ring(1);
        r.send(0, Dir::Up, 0, 10, 4097, 0);
    }

    #[test]
    fn accept_hands_over_the_socket_and_the_peer() {
        let mut r = ring(1);
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        r.accept(0, l.as_raw_fd(), 0);
        assert!(r.accepting(0));
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let mut done = wait(&mut r);
        let a = done.pop().unwrap().accepted.expect("a socket");
        assert_eq!(a.peer, Some(c.local_addr().unwrap()));
        assert!(!r.accepting(0));
    }

    #[test]
    fn a_multishot_accept_hands_over_each_client_and_stays_armed_until_cancelled() {
        let mut r = ring(1);
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        r.accept_multi(0, l.as_raw_fd(), 0);
        let clients: Vec<_> = (0..3)
            .map(|_| std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap())
            .collect();
        let mut got = Vec::new();
        while got.len() < clients.len() {
            for c in wait(&mut r) {
                assert!(c.more, "still armed");
                let a = c.accepted.expect("a socket");
                assert_eq!(a.peer, None, "a multishot accept writes no address");
                got.push(crate::net::peer_addr(&a.fd).unwrap());
            }
        }
        let mut want: Vec<_> = clients.iter().map(|c| c.local_addr().unwrap()).collect();
        got.sort();
        want.sort();
        assert_eq!(got, want);
        assert!(r.accepting(0) && r.accepting_multi(0));
        r.cancel_accept(0, 9);
        r.cancel_accept(0, 9); // submitted once
        let mut finals = Vec::new();
        while !finals.iter().any(|c: &Completion| c.user_data == 0) {
            finals.extend(wait(&mut r));
        }
        assert_eq!(finals.iter().filter(|c| c.user_data == 9).count(), 1);
        let end = finals.iter().find(|c| c.user_data == 0).unwrap();
        assert_eq!((end.more, end.result), (false, -libc::ECANCELED));
        assert!(!r.accepting(0));
    }

    #[test]
    fn an_operation_that_never_completes_leaks_its_memory_instead_of_freeing_it() {
        let mut r = ring(1);
        let efd = crate::net::eventfd().unwrap();
        r.read_eventfd(efd.as_raw_fd(), 3);
        r.submit_and_wait(0).unwrap();
        assert_eq!(r.inflight(), 1);
        // No time to collect the cancellation: the read may still write into wake_buf.
        assert!(!r.drain(Duration::ZERO));
        assert!(r.arena.is_leaked());
        assert!(!r.drain(Duration::from_secs(1)), "drained once");
    }

    #[test]
    fn a_drained_ring_frees_its_memory() {
        let mut r = ring(1);
        let efd = crate::net::eventfd().unwrap();
        r.read_eventfd(efd.as_raw_fd(), 3);
        r.submit_and_wait(0).unwrap();
        assert!(r.drain(Duration::from_secs(2)));
        assert!(!r.arena.is_leaked());
    }
}
