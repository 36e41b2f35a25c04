//! The io_uring ring of one worker, and the only `unsafe` code of the balancer.
//!
//! Pushing an SQE is unsafe because the kernel will read or write the memory it points at
//! until the matching CQE arrives. This module makes that safe to call by owning all such
//! memory itself:
//!
//! - per connection slot, a [`SlotIo`]: the backend address and connect timeout, inside a
//!   boxed slice sized once and never reallocated;
//! - the slots' forwarding buffers, two per slot in one [`Arena`] mapping that lives as
//!   long as the ring (memory is only used for pages written; idle ones are given back);
//! - the eventfd read target and the tick timespec, boxed.
//!
//! The caller (the worker) only names slots and directions. It must not reuse a slot's
//! buffer for a new operation while an older one on it is in flight; that is a data
//! invariant (a wrong byte), never a dangling pointer, and the connection state machine
//! keeps it by allowing one operation per direction. On drop the ring cancels what is
//! still in flight and waits for it; if the kernel does not answer in time the memory is
//! leaked rather than freed under it.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use io_uring::types::{CancelBuilder, Fd, TimeoutFlags, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring};

/// One completion, copied out of the completion queue.
#[derive(Debug, Clone, Copy)]
pub struct Completion {
    pub user_data: u64,
    pub result: i32,
    /// `IORING_CQE_F_MORE`: a multishot operation is still armed.
    pub more: bool,
}

/// Memory that operations of one connection slot point at (besides its buffers).
struct SlotIo {
    addr: libc::sockaddr_storage,
    addr_len: libc::socklen_t,
    connect_timeout: Timespec,
}

impl SlotIo {
    fn new() -> SlotIo {
        SlotIo {
            // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
            addr: unsafe { std::mem::zeroed() },
            addr_len: 0,
            connect_timeout: Timespec::new(),
        }
    }
}

/// The forwarding buffers of every slot: one private anonymous mapping of
/// `slots x 2 x buf_size` bytes of address space (`MAP_NORESERVE`). A page costs memory
/// only once written, so untouched slots cost nothing, and [`Arena::release`] gives an idle
/// slot's pages back. Buffers are page-aligned, so a release never touches a neighbour.
struct Arena {
    base: *mut u8,
    len: usize,
    buf_size: usize,
    /// Operations may still point into the mapping: never unmap it.
    leaked: bool,
}

impl Arena {
    /// `buf_size` is a multiple of the page size.
    fn new(slots: usize, buf_size: usize) -> io::Result<Arena> {
        let len = slots
            .max(1)
            .checked_mul(2 * buf_size)
            .ok_or_else(|| io::Error::other("buffer arena size overflows"))?;
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
        Ok(Arena {
            base: base.cast(),
            len,
            buf_size,
            leaked: false,
        })
    }

    fn offset(&self, slot: usize, dir: usize) -> usize {
        let off = (slot * 2 + dir) * self.buf_size;
        assert!(off + self.buf_size <= self.len, "slot within the arena");
        off
    }

    fn ptr(&self, slot: usize, dir: usize) -> *mut u8 {
        // In bounds: checked by `offset`.
        self.base.wrapping_add(self.offset(slot, dir))
    }

    fn slice(&self, slot: usize, dir: usize) -> &[u8] {
        let p = self.ptr(slot, dir);
        // SAFETY: `p .. p + buf_size` lies inside the mapping, which is readable and lives
        // as long as `self`. Bytes a pending receive may write are plain `u8`s: any value
        // is valid, and the state machine reads a buffer only between its operations.
        unsafe { std::slice::from_raw_parts(p, self.buf_size) }
    }

    fn slice_mut(&mut self, slot: usize, dir: usize) -> &mut [u8] {
        let p = self.ptr(slot, dir);
        // SAFETY: as in `slice`; `&mut self` makes this the only slice of the arena the
        // program holds.
        unsafe { std::slice::from_raw_parts_mut(p, self.buf_size) }
    }

    /// Gives the slot's two buffers' pages back (their contents read as zeros after).
    fn release(&mut self, slot: usize) {
        let p = self.ptr(slot, 0);
        // SAFETY: the slot's two buffers are adjacent, page-aligned and inside the mapping.
        // MADV_DONTNEED on private anonymous memory only replaces its contents with zeros
        // on next access; a later kernel write (a pending recv) faults a page in as any
        // user copy does.
        unsafe {
            libc::madvise(p.cast(), 2 * self.buf_size, libc::MADV_DONTNEED);
        }
    }

    fn leak(&mut self) {
        self.leaked = true;
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        if !self.leaked {
            // SAFETY: `base`/`len` are the mapping made in `new`, unmapped only here; the
            // ring that pointed operations into it was drained (or this was leaked).
            unsafe {
                libc::munmap(self.base.cast(), self.len);
            }
        }
    }
}

/// Which features the kernel granted when the ring was built (logged at start).
#[derive(Debug, Clone, Copy, Default)]
pub struct RingFeatures {
    pub defer_taskrun: bool,
    pub coop_taskrun: bool,
    pub single_issuer: bool,
}

/// A worker's io_uring plus the memory its operations reference.
pub struct Ring {
    // Field order matters: the ring is dropped (and drained, see `Drop`) before the memory.
    ring: IoUring,
    slots: Box<[SlotIo]>,
    arena: Arena,
    wake_buf: Box<u64>,
    tick: Box<Timespec>,
    buf_size: usize,
    /// Operations pushed whose final CQE has not been reaped yet.
    inflight: usize,
    pub features: RingFeatures,
}

/// `IORING_RECVSEND_POLL_FIRST` (the crate keeps its `sys` constants private).
const RECVSEND_POLL_FIRST: u16 = 1;
impl Ring {
    /// Builds a ring with room for `entries` submissions, `slots` connection slots and
    /// forwarding buffers of `buf_size` bytes. Uses single-issuer, cooperative and deferred
    /// task running where the kernel has them, falling back when it doesn't.
    pub fn new(entries: u32, slots: usize, buf_size: usize) -> io::Result<Ring> {
        let buf_size = buf_size.next_multiple_of(page_size());
        let arena = Arena::new(slots, buf_size)?;
        let mut arena = Some(arena);
        let cq = entries.saturating_mul(4);
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
                        slots: (0..slots).map(|_| SlotIo::new()).collect(),
                        arena: arena.take().expect("built once"),
                        wake_buf: Box::new(0),
                        tick: Box::new(Timespec::new()),
                        buf_size,
                        inflight: 0,
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
        self.buf_size
    }

    /// Number of connection slots this ring has memory for.
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// Operations in flight (pushed, final completion not yet reaped).
    pub fn inflight(&self) -> usize {
        self.inflight
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
                    // SAFETY: every entry built by this module points only at memory owned
                    // by `self` (slot buffers, slot addresses, boxed timespecs and eventfd
                    // buffer) which stays allocated and unmoved until `Drop` has reaped every
                    // in-flight operation (or leaked the memory); see the module docs.
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

    /// Submits everything queued and waits for at least `want` completions.
    pub fn submit_and_wait(&mut self, want: usize) -> io::Result<()> {
        match self.ring.submit_and_wait(want) {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EBUSY | libc::EAGAIN | libc::ETIME)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Moves every available completion into `out` (cleared first).
    pub fn reap(&mut self, out: &mut Vec<Completion>) {
        out.clear();
        for cqe in self.ring.completion() {
            let more = cqueue::more(cqe.flags());
            out.push(Completion {
                user_data: cqe.user_data(),
                result: cqe.result(),
                more,
            });
        }
        let finals = out.iter().filter(|c| !c.more).count();
        self.inflight = self.inflight.saturating_sub(finals);
    }

    /// Multishot accept on a listening socket; accepted sockets are non-blocking.
    pub fn accept_multi(&mut self, listener: RawFd, user_data: u64) {
        let e = opcode::AcceptMulti::new(Fd(listener))
            .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
            .build()
            .user_data(user_data);
        self.push(e);
    }

    /// Reads the 8-byte counter of an eventfd (the control thread's wake-up).
    pub fn read_eventfd(&mut self, fd: RawFd, user_data: u64) {
        let ptr: *mut u64 = &mut *self.wake_buf;
        let e = opcode::Read::new(Fd(fd), ptr.cast::<u8>(), 8)
            .build()
            .user_data(user_data);
        self.push(e);
    }

    /// A repeating timeout that completes every `every` (multishot), for the timer wheel.
    pub fn tick(&mut self, every: Duration, user_data: u64) {
        *self.tick = Timespec::from(every);
        let ptr: *const Timespec = &*self.tick;
        let e = opcode::Timeout::new(ptr)
            .count(0)
            .flags(TimeoutFlags::MULTISHOT)
            .build()
            .user_data(user_data);
        self.push(e);
    }

    /// A one-shot timeout, when multishot timeouts are unavailable.
    pub fn tick_once(&mut self, every: Duration, user_data: u64) {
        *self.tick = Timespec::from(every);
        let ptr: *const Timespec = &*self.tick;
        let e = opcode::Timeout::new(ptr).build().user_data(user_data);
        self.push(e);
    }

    /// `connect(fd, addr)` linked to a timeout: two completions, `connect_ud` with the
    /// connect's result (`-ECANCELED` when the timeout fired) and `timeout_ud`.
    pub fn connect(
        &mut self,
        slot: usize,
        fd: RawFd,
        addr: &SocketAddr,
        timeout: Duration,
        connect_ud: u64,
        timeout_ud: u64,
    ) {
        let s = &mut self.slots[slot];
        let sa = socket2::SockAddr::from(*addr);
        // SAFETY: `sa.as_ptr()` points at `sa.len()` valid bytes of a sockaddr, which
        // fit in sockaddr_storage (socket2 stores it in one); the regions don't overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                sa.as_ptr().cast::<u8>(),
                std::ptr::addr_of_mut!(s.addr).cast::<u8>(),
                sa.len() as usize,
            );
        }
        s.addr_len = sa.len();
        s.connect_timeout = Timespec::from(timeout);
        let addr_ptr = std::ptr::addr_of!(s.addr).cast::<libc::sockaddr>();
        let ts_ptr: *const Timespec = &s.connect_timeout;
        let connect = opcode::Connect::new(Fd(fd), addr_ptr, s.addr_len)
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(connect_ud);
        let link = opcode::LinkTimeout::new(ts_ptr)
            .build()
            .user_data(timeout_ud);
        self.push_all(&[connect, link]);
    }

    fn buf_ptr(&mut self, slot: usize, dir: usize) -> *mut u8 {
        self.arena.ptr(slot, dir)
    }

    /// Receives into the slot's buffer for `dir` (its whole length). `poll_first`: wait
    /// for data before the first attempt (`IORING_RECVSEND_POLL_FIRST`), for a socket that
    /// was just drained.
    pub fn recv(&mut self, slot: usize, dir: usize, fd: RawFd, poll_first: bool, user_data: u64) {
        let ptr = self.buf_ptr(slot, dir);
        let ioprio = if poll_first { RECVSEND_POLL_FIRST } else { 0 };
        let e = opcode::Recv::new(Fd(fd), ptr, self.buf_size as u32)
            .ioprio(ioprio)
            .build()
            .user_data(user_data);
        self.push(e);
    }

    /// Start of `buf[from..to]` of the slot's buffer for `dir`; panics on a range outside it
    /// (a state machine bug must never become an out-of-bounds kernel write).
    fn range_ptr(&mut self, slot: usize, dir: usize, from: usize, to: usize) -> *mut u8 {
        assert!(from < to && to <= self.buf_size, "range within the buffer");
        // `from < buf_size`, so the offset stays inside the buffer.
        self.buf_ptr(slot, dir).wrapping_add(from)
    }

    /// Receives into `buf[from..to]` of the slot's buffer for `dir` (a PROXY header that
    /// arrived in pieces is read after the piece already there).
    pub fn recv_range(
        &mut self,
        slot: usize,
        dir: usize,
        fd: RawFd,
        from: usize,
        to: usize,
        user_data: u64,
    ) {
        let ptr = self.range_ptr(slot, dir, from, to);
        let e = opcode::Recv::new(Fd(fd), ptr, (to - from) as u32)
            .build()
            .user_data(user_data);
        self.push(e);
    }

    /// Sends `buf[from..to]` of the slot's buffer for `dir`.
    pub fn send(
        &mut self,
        slot: usize,
        dir: usize,
        fd: RawFd,
        from: usize,
        to: usize,
        user_data: u64,
    ) {
        let ptr = self.range_ptr(slot, dir, from, to);
        let e = opcode::Send::new(Fd(fd), ptr, (to - from) as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(user_data);
        self.push(e);
    }

    /// The slot's buffer for `dir`, to fill before a send. Only while no operation on that
    /// buffer is in flight (the connection state machine's one-step-per-direction rule).
    pub fn buf_mut(&mut self, slot: usize, dir: usize) -> &mut [u8] {
        self.arena.slice_mut(slot, dir)
    }

    /// Gives the physical pages of the slot's buffers back to the kernel
    /// (`MADV_DONTNEED`): the address range stays valid and the next write faults in a
    /// zeroed page. An idle connection then costs no buffer memory. Returns whether it did.
    ///
    /// The caller must know that no byte the kernel wrote into these buffers is still
    /// unprocessed. That holds when every completion has been handled and the ring runs
    /// with deferred task-run: a pending receive then copies into the buffer only inside a
    /// later `io_uring_enter` of this thread, after this call. Without deferred task-run a
    /// receive may complete at any syscall, so nothing is released.
    pub fn release_buf_pages(&mut self, slot: usize) -> bool {
        if !self.features.defer_taskrun {
            return false;
        }
        self.arena.release(slot);
        true
    }

    /// The bytes of the slot's buffer for `dir` (valid up to what the last recv returned).
    pub fn buf(&self, slot: usize, dir: usize) -> &[u8] {
        self.arena.slice(slot, dir)
    }

    /// Waits until `fd` has one of `events` (`POLLIN`, `POLLOUT`).
    pub fn poll(&mut self, fd: RawFd, events: u32, user_data: u64) {
        let e = opcode::PollAdd::new(Fd(fd), events)
            .build()
            .user_data(user_data);
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
            .user_data(user_data);
        match poll_first {
            Some((fd, events, poll_ud)) => {
                let poll = opcode::PollAdd::new(Fd(fd), events)
                    .build()
                    .flags(squeue::Flags::IO_LINK)
                    .user_data(poll_ud);
                self.push_all(&[poll, splice]);
            }
            None => self.push(splice),
        }
    }

    /// `close(fd)` in the ring (no syscall of its own).
    pub fn close(&mut self, fd: RawFd, user_data: u64) {
        let e = opcode::Close::new(Fd(fd)).build().user_data(user_data);
        self.push(e);
    }

    /// Cancels every operation in flight on `fd`.
    pub fn cancel_fd(&mut self, fd: RawFd, user_data: u64) {
        let e = opcode::AsyncCancel2::new(CancelBuilder::fd(Fd(fd)).all())
            .build()
            .user_data(user_data);
        self.push(e);
    }

    /// Cancels the operation(s) submitted with `target` as user data.
    pub fn cancel(&mut self, target: u64, user_data: u64) {
        let e = opcode::AsyncCancel2::new(CancelBuilder::user_data(target).all())
            .build()
            .user_data(user_data);
        self.push(e);
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        if self.inflight == 0 {
            return;
        }
        let e = opcode::AsyncCancel2::new(CancelBuilder::any().all())
            .build()
            .user_data(u64::MAX);
        self.push(e);
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut out = Vec::new();
        while self.inflight > 0 && Instant::now() < deadline {
            let ts = Timespec::from(Duration::from_millis(50));
            let args = io_uring::types::SubmitArgs::new().timespec(&ts);
            let _ = self.ring.submitter().submit_with_args(1, &args);
            self.reap(&mut out);
        }
        if self.inflight > 0 {
            // The kernel may still write into these buffers: never free them.
            let slots = std::mem::take(&mut self.slots);
            std::mem::forget(slots);
            self.arena.leak();
            std::mem::forget(std::mem::replace(&mut self.wake_buf, Box::new(0)));
            std::mem::forget(std::mem::replace(&mut self.tick, Box::new(Timespec::new())));
        }
    }
}

/// `shutdown(fd, SHUT_WR)`: 0 or the negated errno, as a completion would carry it.
pub fn shutdown_write(fd: RawFd) -> i32 {
    // SAFETY: plain syscall on a descriptor number; an invalid one only makes it fail.
    let r = unsafe { libc::shutdown(fd, libc::SHUT_WR) };
    if r == 0 {
        0
    } else {
        -io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    }
}

/// Sets `SO_LINGER {on, 0}` so that closing `fd` sends a reset instead of a FIN.
pub fn set_linger_zero(fd: RawFd) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `l` is a valid linger struct and its exact size is passed; an invalid fd only
    // makes the call fail, which is harmless here.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::addr_of!(l).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Sets `TCP_NODELAY` on `fd` (forwarded bytes are never held back by Nagle).
pub fn set_nodelay(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: `one` is a valid c_int and its exact size is passed.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            std::ptr::addr_of!(one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// A new non-blocking, close-on-exec TCP socket for `addr`'s family.
pub fn tcp_socket(addr: &SocketAddr) -> io::Result<RawFd> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain syscall with constant arguments; the result is checked.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(fd)
    }
}

/// Closes `fd` now (outside the ring; for error paths before a slot exists).
pub fn close_now(fd: RawFd) {
    // SAFETY: the caller owns `fd` and never uses it again.
    unsafe {
        libc::close(fd);
    }
}

/// The peer address of a connected socket.
pub fn peer_addr(fd: RawFd) -> Option<SocketAddr> {
    // SAFETY: the caller owns the open socket `fd` for the duration of this call.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    socket2::SockRef::from(&borrowed)
        .peer_addr()
        .ok()?
        .as_socket()
}

/// A non-blocking pipe of (about) `size` bytes: (read end, write end).
pub fn pipe(size: usize) -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let (r, w) = (own_fd(fds[0]), own_fd(fds[1]));
    // SAFETY: F_SETPIPE_SZ takes an int argument; failure (size above pipe-max-size) just
    // leaves the default size, which still works.
    unsafe {
        libc::fcntl(fds[1], libc::F_SETPIPE_SZ, size as libc::c_int);
    }
    Ok((r, w))
}

/// The capacity of a pipe in bytes.
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

pub fn pipe_size(fd: RawFd) -> usize {
    // SAFETY: F_GETPIPE_SZ takes no argument and only returns a number.
    let n = unsafe { libc::fcntl(fd, libc::F_GETPIPE_SZ) };
    n.max(0) as usize
}

/// Takes ownership of a descriptor this process just created.
pub fn own_fd(fd: RawFd) -> std::os::fd::OwnedFd {
    // SAFETY: callers pass a freshly created descriptor that nothing else owns or closes.
    unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }
}

/// The local address of a socket (for an accepted client: the address it connected to).
pub fn local_addr(fd: RawFd) -> Option<SocketAddr> {
    // SAFETY: the caller owns the open socket `fd` for the duration of this call.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    socket2::SockRef::from(&borrowed)
        .local_addr()
        .ok()?
        .as_socket()
}

/// A non-blocking eventfd (the control thread's wake-up for a worker).
pub fn eventfd() -> io::Result<RawFd> {
    // SAFETY: plain syscall with constant arguments; the result is checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(fd)
    }
}

/// Adds 1 to an eventfd's counter, waking a ring that reads it.
pub fn eventfd_signal(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes exactly the 8 bytes of `one`; a full counter (EAGAIN) is fine, the
    // reader is already due to wake.
    unsafe {
        libc::write(fd, std::ptr::addr_of!(one).cast(), 8);
    }
}
