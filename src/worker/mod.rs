//! One worker: a pinned thread with its own io_uring, its own SO_REUSEPORT listeners and its
//! own copy of the backend table. The loop is: submit everything queued and wait for a
//! completion (one `io_uring_enter`), read the clock once, handle every completion.
//!
//! - accept: multishot, re-armed when the kernel ends it; paused at `--max-conns`, backed
//!   off on EMFILE/ENFILE;
//! - connect: a non-blocking connect linked to a timeout, retried on the next backend of
//!   the balancer's order;
//! - forwarding: [`conn::Conn`] decides, this module performs;
//! - control: snapshots and stop commands arrive on a channel, with an eventfd read in the
//!   ring so an idle loop wakes at once;
//! - time: a repeating tick drives a timer wheel of idle deadlines.

pub mod conn;
pub mod pipes;
pub mod timer;
pub mod token;

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use crossbeam_utils::CachePadded;

use crate::backend::{BackendId, BackendState, SharedCounters, Snapshot};
use crate::balance::{self, Balance, PeakEwma, Pool, Request};
use crate::uring::{self, Completion, Ring};

use crate::config::ForwardMode;
use crate::proxy_protocol::Decoded;
use conn::{Action, Conn, Forwarding, Phase};
use pipes::PipePool;
use token::{next_gen, OpKind, Token};

/// Messages from the control thread.
#[derive(Debug)]
pub enum Command {
    /// Route new connections with this table from now on.
    Snapshot(Arc<Snapshot>),
    /// Stop accepting; let open connections finish for at most `grace`, then exit.
    Stop { grace: Duration },
}

/// Settings a worker needs from the configuration.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub forward: ForwardMode,
    /// Forwarding buffer per direction.
    pub buf_size: usize,
    /// Pipes for splice: how many at most per worker, and their size.
    pub pipes_max: usize,
    pub pipe_size: usize,
}

/// Counters of one worker, on their own cache line; only this worker writes them and the
/// control thread sums them on a scrape (no shared read-modify-write on the hot path).
#[derive(Debug)]
pub struct WorkerStats {
    pub accepted: AtomicU64,
    /// Bytes forwarded client -> backend and backend -> client, as they are sent.
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    /// Of those, the bytes forwarded by splice (both directions), so that zero-copy
    /// forwarding can be seen to run.
    pub splice_bytes: AtomicU64,
    /// Version of the snapshot this worker routes with, stored once it is swapped in: the
    /// control thread answers a change only after every worker runs it.
    pub snapshot_version: AtomicU64,
    pub connect_failures: AtomicU64,
    /// Client connections closed because no backend could be reached.
    pub no_backend: AtomicU64,
    /// Client connections closed at once because no slot was free.
    pub no_slot: AtomicU64,
    /// Requests sent again to another backend because theirs closed before answering.
    pub replays: AtomicU64,
    /// Client connections refused by `--max-conns-per-source`.
    pub rejected_source_conns: AtomicU64,
    /// Client connections refused by `--max-conn-rate-per-source`.
    pub rejected_source_rate: AtomicU64,
    /// Trusted clients closed for a missing, malformed or truncated PROXY header.
    pub rejected_proxy_header: AtomicU64,
    /// Clients that waited the whole connect timeout for a backend below its max-conns.
    pub rejected_backends_full: AtomicU64,
    /// Connect times in microseconds. The lock is taken once per established connection
    /// by this worker and once per scrape by the control thread: uncontended.
    pub connect_us: std::sync::Mutex<hdrhistogram::Histogram<u64>>,
}

impl Default for WorkerStats {
    fn default() -> Self {
        WorkerStats {
            accepted: AtomicU64::new(0),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            splice_bytes: AtomicU64::new(0),
            snapshot_version: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            no_backend: AtomicU64::new(0),
            no_slot: AtomicU64::new(0),
            replays: AtomicU64::new(0),
            rejected_source_conns: AtomicU64::new(0),
            rejected_source_rate: AtomicU64::new(0),
            rejected_proxy_header: AtomicU64::new(0),
            rejected_backends_full: AtomicU64::new(0),
            // 1 us .. 1 h at 3 significant digits; new_with_bounds only fails on bad bounds.
            connect_us: std::sync::Mutex::new(
                hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap_or_else(
                    |_| hdrhistogram::Histogram::new(3).expect("3 sigfigs is valid"),
                ),
            ),
        }
    }
}

impl WorkerStats {
    fn add(counter: &AtomicU64, n: u64) {
        // Single writer: a load and a store, no locked read-modify-write.
        counter.store(counter.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }
}

/// State shared by all workers and the control thread.
#[derive(Debug)]
pub struct Shared {
    pub counters: Arc<SharedCounters>,
    /// The clock all workers measure `now_ns` from, so shared time stamps agree.
    pub epoch: Instant,
    /// Client connections open in the whole balancer.
    pub open_clients: AtomicUsize,
    pub max_conns: usize,
    /// Open connections and connection rates per client IP (`--max-conns-per-source`).
    pub sources: crate::limits::SourceTable,
    pub stats: Box<[CachePadded<WorkerStats>]>,
}

/// Everything a worker thread starts with.
pub struct WorkerSetup {
    pub index: usize,
    pub listeners: Vec<OwnedFd>,
    pub wake: OwnedFd,
    pub commands: Receiver<Command>,
    pub snapshot: Arc<Snapshot>,
    pub shared: Arc<Shared>,
    pub config: WorkerConfig,
    /// Connection slots (memory is only touched when used).
    pub slots: usize,
}

/// The timer wheel's resolution: idle deadlines fire at most this late.
const TICK: Duration = Duration::from_millis(100);
/// How often, and after how long a quiet spell, idle connections' buffers are reclaimed.
const RECLAIM_EVERY: Duration = Duration::from_secs(1);
/// Wait after EMFILE/ENFILE before accepting again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

struct Slot {
    gen: u32,
    in_use: bool,
    /// Free, and its buffers may still hold pages; freed at `freed_ns`.
    dirty: bool,
    freed_ns: u64,
    conn: Conn,
}

struct Listener {
    fd: Option<OwnedFd>,
    /// A multishot accept is in flight.
    armed: bool,
}

/// The per-worker event loop.
pub struct Worker {
    index: usize,
    ring: Ring,
    listeners: Vec<Listener>,
    wake: OwnedFd,
    commands: Receiver<Command>,
    snapshot: Arc<Snapshot>,
    balancer: Box<dyn Balance>,
    shared: Arc<Shared>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    pipes: PipePool,
    fwd: Forwarding,
    open: usize,
    timers: timer::IdleTimers,
    epoch: Instant,
    now_ns: u64,
    accept_paused_until: u64,
    stopping: Option<u64>,
    hard_stop: bool,
    /// Picks made so far; a new snapshot's selector continues from here.
    picks: u64,
    tick_multishot: bool,
    actions: Vec<Action>,
    /// Completions of operations done at once rather than through the ring (shutdown),
    /// handled after the ring's batch exactly like the ring's own.
    local: Vec<Completion>,
    due: Vec<usize>,
    /// Connections waiting for a backend below its max-conns (slot, generation).
    queue: Vec<(u32, u32)>,
    next_prune_ns: u64,
    next_reclaim_ns: u64,
}

impl Worker {
    /// Sets up the ring; the error is what the caller reports when io_uring is unusable.
    pub fn new(setup: WorkerSetup) -> std::io::Result<Worker> {
        let ring = Ring::new(4096, setup.slots, setup.config.buf_size)?;
        let epoch = setup.shared.epoch;
        let balancer = build_balancer(&setup.snapshot, setup.index);
        setup.shared.stats[setup.index]
            .snapshot_version
            .store(setup.snapshot.version, Ordering::Release);
        let cfg = &setup.config;
        // The kernel rounds pipe sizes; a full splice is judged against the real size.
        let pipe_size = match cfg.forward {
            ForwardMode::Copy => cfg.pipe_size,
            _ => uring::pipe(cfg.pipe_size)
                .map(|(r, _w)| uring::pipe_size(r.as_raw_fd()))
                .unwrap_or(cfg.pipe_size),
        };
        let fwd = Forwarding {
            mode: cfg.forward,
            buf_size: cfg.buf_size,
            pipe_size,
        };
        let pipes = PipePool::new(
            if cfg.forward == ForwardMode::Copy {
                0
            } else {
                cfg.pipes_max
            },
            pipe_size,
        );
        Ok(Worker {
            index: setup.index,
            ring,
            listeners: setup
                .listeners
                .into_iter()
                .map(|fd| Listener {
                    fd: Some(fd),
                    armed: false,
                })
                .collect(),
            wake: setup.wake,
            commands: setup.commands,
            snapshot: setup.snapshot,
            balancer,
            shared: setup.shared,
            slots: Vec::new(),
            free: Vec::new(),
            pipes,
            fwd,
            open: 0,
            timers: timer::IdleTimers::new(TICK.as_nanos() as u64, 1024, 0),
            epoch,
            now_ns: 0,
            accept_paused_until: 0,
            stopping: None,
            hard_stop: false,
            picks: 0,
            tick_multishot: true,
            actions: Vec::with_capacity(8),
            local: Vec::with_capacity(64),
            due: Vec::new(),
            queue: Vec::new(),
            next_prune_ns: 0,
            next_reclaim_ns: 0,
        })
    }

    fn stats(&self) -> &WorkerStats {
        &self.shared.stats[self.index]
    }

    /// Runs until stopped and every connection is closed (or the grace period ran out).
    pub fn run(mut self) {
        tracing::debug!(worker = self.index, features = ?self.ring.features, "worker running");
        self.arm_accepts();
        self.ring.read_eventfd(
            self.wake.as_raw_fd(),
            Token::new(0, 0, OpKind::Wake).encode(),
        );
        self.ring
            .tick(TICK, Token::new(0, 0, OpKind::Tick).encode());
        let mut cqes: Vec<Completion> = Vec::with_capacity(1024);
        loop {
            // Completions made outside a batch (a stop's aborts) before waiting for more.
            self.dispatch_local();
            if let Err(e) = self.ring.submit_and_wait(1) {
                tracing::error!(worker = self.index, "io_uring_enter failed: {e}");
                break;
            }
            self.now_ns = self.epoch.elapsed().as_nanos() as u64;
            self.ring.reap(&mut cqes);
            for c in &cqes {
                self.dispatch(*c);
            }
            self.dispatch_local();
            if self.now_ns >= self.next_reclaim_ns {
                // After the whole batch: no completion of these buffers is left unhandled.
                self.reclaim_idle_buffers();
                self.next_reclaim_ns = self.now_ns + RECLAIM_EVERY.as_nanos() as u64;
            }
            if self.finished() {
                break;
            }
        }
        tracing::debug!(worker = self.index, "worker stopped");
    }

    fn dispatch_local(&mut self) {
        while let Some(c) = self.local.pop() {
            self.dispatch(c);
        }
    }

    /// Gives back the buffer memory of connections quiet for [`RECLAIM_EVERY`], and of
    /// slots free for as long: an idle connection then costs its slot and its sockets'
    /// kernel memory, not two buffers, and a burst of connections leaves no memory behind.
    /// Free slots are reused last-freed first, so the ones a steady load keeps reusing are
    /// never free that long.
    fn reclaim_idle_buffers(&mut self) {
        let quiet = RECLAIM_EVERY.as_nanos() as u64;
        for slot in 0..self.slots.len() {
            let s = &self.slots[slot];
            let idle_conn = s.in_use && s.conn.buffers_reclaimable(self.now_ns, quiet);
            let cold_slot = !s.in_use && s.dirty && self.now_ns.saturating_sub(s.freed_ns) >= quiet;
            if idle_conn || cold_slot {
                if !self.ring.release_buf_pages(slot) {
                    return;
                }
                let s = &mut self.slots[slot];
                s.dirty = false;
                s.conn.pages_released();
            }
        }
    }

    /// Stopping, and either nothing is open or the grace period is over.
    fn finished(&mut self) -> bool {
        let Some(deadline) = self.stopping else {
            return false;
        };
        if self.open == 0 {
            return true;
        }
        if self.now_ns >= deadline && !self.hard_stop {
            tracing::warn!(
                worker = self.index,
                open = self.open,
                "grace period over, closing connections"
            );
            self.hard_stop = true;
            for slot in 0..self.slots.len() {
                if self.slots[slot].in_use {
                    self.abort(slot, false);
                }
            }
        }
        // Connections whose cancellations never complete must not hold the process forever.
        self.hard_stop && self.now_ns >= deadline + Duration::from_secs(2).as_nanos() as u64
    }

    fn dispatch(&mut self, c: Completion) {
        let Some(tok) = Token::decode(c.user_data) else {
            return;
        };
        match tok.op {
            OpKind::Accept => self.on_accept(tok.slot as usize, c),
            OpKind::Wake => self.on_wake(c),
            OpKind::Tick => self.on_tick(c),
            OpKind::Ignore => {}
            _ => self.on_conn_op(tok, c.result),
        }
    }

    // ---- accept -----------------------------------------------------------------------

    fn arm_accepts(&mut self) {
        for i in 0..self.listeners.len() {
            let l = &mut self.listeners[i];
            if let (Some(fd), false) = (&l.fd, l.armed) {
                let fd = fd.as_raw_fd();
                l.armed = true;
                self.ring
                    .accept_multi(fd, Token::new(i, 0, OpKind::Accept).encode());
            }
        }
    }

    fn accept_allowed(&self) -> bool {
        self.stopping.is_none()
            && self.now_ns >= self.accept_paused_until
            && self.shared.open_clients.load(Ordering::Relaxed) < self.shared.max_conns
            && (!self.free.is_empty() || self.slots.len() < self.ring.slot_count())
    }

    /// Cancels the armed accepts (limit reached, backing off, or stopping).
    fn pause_accepts(&mut self) {
        for i in 0..self.listeners.len() {
            if self.listeners[i].armed {
                let target = Token::new(i, 0, OpKind::Accept).encode();
                self.ring
                    .cancel(target, Token::new(0, 0, OpKind::Ignore).encode());
            }
        }
    }

    fn on_accept(&mut self, listener: usize, c: Completion) {
        if !c.more {
            self.listeners[listener].armed = false;
        }
        if c.result >= 0 {
            self.accepted(c.result);
        } else {
            match -c.result {
                libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM => {
                    tracing::warn!(
                        worker = self.index,
                        "accept: {}; backing off",
                        std::io::Error::from_raw_os_error(-c.result)
                    );
                    self.accept_paused_until = self.now_ns + ACCEPT_BACKOFF.as_nanos() as u64;
                    self.pause_accepts();
                }
                libc::ECANCELED => {}
                e => tracing::debug!(
                    worker = self.index,
                    "accept: {}",
                    std::io::Error::from_raw_os_error(e)
                ),
            }
        }
        if !self.listeners[listener].armed && self.accept_allowed() {
            self.arm_accepts();
        }
    }

    /// A client socket arrived: give it a slot and connect it to a backend.
    ///
    /// Also while stopping: a connection the kernel handed over before the accept was
    /// cancelled is a client already waiting; it is served within the grace period.
    fn accepted(&mut self, fd: RawFd) {
        let Some(slot) = self.alloc_slot() else {
            // Only possible when accept raced past the limit; the kernel had already queued it.
            tracing::warn!(
                worker = self.index,
                "no free connection slot; closing a new client"
            );
            uring::close_now(fd);
            return;
        };
        WorkerStats::add(&self.stats().accepted, 1);
        let open_clients = self.shared.open_clients.fetch_add(1, Ordering::Relaxed) + 1;
        if open_clients >= self.shared.max_conns {
            self.pause_accepts();
        }
        self.open += 1;
        let client_addr = if self.snapshot.needs_peer_addr {
            uring::peer_addr(fd)
        } else {
            None
        };
        self.slots[slot]
            .conn
            .open(fd, client_addr, self.fwd, self.now_ns);
        if client_addr.is_some_and(|a| self.snapshot.trusts_proxy(&a)) {
            // The upstream balancer's header comes first; it may change the client address
            // that limits and hashing see, so both wait for it.
            self.arm_idle_timer(slot);
            self.slots[slot].conn.open_handshake(&mut self.actions);
            return self.perform(slot);
        }
        if self.admit(slot) {
            self.connect_next(slot);
        }
    }

    /// Applies the per-source limits to the connection's client address; a refused client
    /// is closed at once and counted. Returns whether it may go on.
    fn admit(&mut self, slot: usize) -> bool {
        let limits = self.snapshot.limits;
        let Some(addr) = self.slots[slot].conn.client_addr else {
            return true;
        };
        if !limits.any() {
            return true;
        }
        match self.shared.sources.admit(addr.ip(), self.now_ns, limits) {
            Ok(()) => {
                self.slots[slot].conn.source = Some(addr.ip());
                true
            }
            Err(refusal) => {
                let stats = &self.shared.stats[self.index];
                let counter = match refusal {
                    crate::limits::Refusal::TooManyConns => &stats.rejected_source_conns,
                    crate::limits::Refusal::TooFast => &stats.rejected_source_rate,
                };
                WorkerStats::add(counter, 1);
                tracing::debug!(worker = self.index, client = %addr, "refused: {refusal:?}");
                self.abort(slot, false);
                false
            }
        }
    }

    /// Makes sure the slot's idle deadline is looked at in time (its entry may be one a
    /// previous connection of the slot armed, firing earlier).
    fn arm_idle_timer(&mut self, slot: usize) {
        let deadline = self.now_ns + self.snapshot.idle_timeout.as_nanos() as u64;
        self.timers.arm(slot, deadline);
    }

    /// A read of a trusted client's PROXY header completed.
    fn on_header(&mut self, slot: usize, res: i32) {
        let had = self.slots[slot].conn.header_received();
        let Some(total) = self.slots[slot].conn.header_bytes(res, &mut self.actions) else {
            if had > 0 || res < 0 {
                // Truncated: the client went away in the middle of its header.
                WorkerStats::add(&self.shared.stats[self.index].rejected_proxy_header, 1);
            }
            return self.perform(slot);
        };
        // Room kept for the header we may send ourselves ahead of the client's bytes.
        let limit = self.ring.buf_size() - crate::proxy_protocol::MAX_HEADER;
        let decoded = crate::proxy_protocol::decode(&self.ring.buf(slot, conn::UP)[..total]);
        match decoded {
            Ok(Decoded::Incomplete) if total < limit => {
                self.slots[slot].conn.read_more_header(&mut self.actions);
                self.perform(slot);
            }
            Ok(Decoded::Incomplete) => self.bad_header(slot, "header too long"),
            Err(e) => self.bad_header(slot, &e.to_string()),
            Ok(Decoded::Header { len, addrs }) => {
                self.ring.buf_mut(slot, conn::UP).copy_within(len..total, 0);
                let conn = &mut self.slots[slot].conn;
                if let Some((src, dst)) = addrs {
                    conn.client_addr = Some(src);
                    conn.orig_dst = Some(dst);
                }
                conn.header_done(total - len);
                if self.admit(slot) {
                    self.connect_next(slot);
                }
            }
        }
    }

    /// A trusted client sent something that is not a valid PROXY header: close it (only it).
    fn bad_header(&mut self, slot: usize, why: &str) {
        WorkerStats::add(&self.shared.stats[self.index].rejected_proxy_header, 1);
        tracing::debug!(worker = self.index, slot, "bad PROXY header: {why}");
        self.abort(slot, false);
    }

    fn alloc_slot(&mut self) -> Option<usize> {
        let slot = if let Some(s) = self.free.pop() {
            s as usize
        } else if self.slots.len() < self.ring.slot_count() {
            self.slots.push(Slot {
                gen: 0,
                in_use: false,
                dirty: false,
                freed_ns: 0,
                conn: Conn::new(),
            });
            self.slots.len() - 1
        } else {
            return None;
        };
        self.slots[slot].in_use = true;
        Some(slot)
    }

    // ---- connect ----------------------------------------------------------------------

    /// Connects the slot's client to the next backend it has not tried, or closes the
    /// client when none is left.
    fn connect_next(&mut self, slot: usize) {
        let attempts = self.slots[slot].conn.tried.len() as u32;
        let pick = if attempts > self.snapshot.retries {
            None
        } else {
            self.pick(slot)
        };
        let Some(i) = pick else {
            if attempts <= self.snapshot.retries && self.all_eligible_full(slot) {
                // Every backend it could go to is at its max-conns: wait in line (HAProxy's
                // server queue) for at most the connect timeout.
                let conn = &mut self.slots[slot].conn;
                if conn.queued_ns.is_none() {
                    conn.queued_ns = Some(self.now_ns);
                }
                let gen = self.slots[slot].gen;
                self.queue.push((slot as u32, gen));
                return;
            }
            WorkerStats::add(&self.stats().no_backend, 1);
            return self.abort(slot, false);
        };
        let backend = &self.snapshot.backends[i];
        let (id, addr) = (backend.id, backend.addr);
        let send_proxy = backend.proxy_protocol.or(self.snapshot.proxy_protocol);
        let fd = match uring::tcp_socket(&addr) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!(worker = self.index, "backend socket: {e}");
                return self.abort(slot, false);
            }
        };
        uring::set_nodelay(fd);
        let gen = self.slots[slot].gen;
        let conn = &mut self.slots[slot].conn;
        conn.backend_fd = fd;
        conn.backend = Some(id);
        conn.send_proxy = send_proxy;
        conn.queued_ns = None;
        // Counted from the pick, not from the connect's success: connects in flight are
        // load too (least-conn), and a burst must not run past a backend's max-conns.
        self.shared
            .counters
            .get(id)
            .active
            .fetch_add(1, Ordering::Relaxed);
        conn.counted = true;
        conn.tried.push(id);
        conn.connect_started_ns = self.now_ns;
        conn.submitted(2);
        self.ring.connect(
            slot,
            fd,
            &addr,
            self.snapshot.connect_timeout,
            Token::new(slot, gen, OpKind::Connect).encode(),
            Token::new(slot, gen, OpKind::ConnectTimeout).encode(),
        );
    }

    /// No backend was eligible for the slot, and some were left out only for being at
    /// their max-conns.
    fn all_eligible_full(&self, slot: usize) -> bool {
        let pool = Candidates {
            snapshot: &self.snapshot,
            counters: &self.shared.counters,
            tried: &self.slots[slot].conn.tried,
            panic: self.snapshot.none_up(),
        };
        (0..pool.len()).any(|i| pool.eligible_ignoring_limit(i) && pool.full(i))
    }

    /// Connections waiting for a backend below its max-conns try again; those that waited
    /// the whole connect timeout are closed.
    fn retry_queue(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        let waiting = std::mem::take(&mut self.queue);
        let timeout = self.snapshot.connect_timeout.as_nanos() as u64;
        for &(slot, gen) in &waiting {
            let slot = slot as usize;
            let s = &self.slots[slot];
            if !s.in_use || s.gen != gen || s.conn.phase() != Phase::Connecting {
                continue;
            }
            let Some(since) = s.conn.queued_ns else {
                continue;
            };
            if self.now_ns.saturating_sub(since) >= timeout {
                WorkerStats::add(&self.shared.stats[self.index].rejected_backends_full, 1);
                self.abort(slot, false);
            } else {
                self.connect_next(slot);
            }
        }
    }

    fn pick(&mut self, slot: usize) -> Option<usize> {
        let conn = &self.slots[slot].conn;
        let key = conn
            .client_addr
            .map(|a| client_key(&a, self.snapshot.hash_key))
            .unwrap_or(0);
        let pool = Candidates {
            snapshot: &self.snapshot,
            counters: &self.shared.counters,
            tried: &conn.tried,
            panic: self.snapshot.none_up(),
        };
        let req = Request {
            key,
            now_ns: self.now_ns,
        };
        self.picks += 1;
        self.balancer.pick(&pool, &req)
    }

    fn on_connected(&mut self, slot: usize, res: i32) {
        let now = self.now_ns;
        let conn = &mut self.slots[slot].conn;
        if conn.phase() != Phase::Connecting {
            return;
        }
        let Some(id) = conn.backend else { return };
        let counters = self.shared.counters.get(id);
        if res == 0 {
            counters.total.fetch_add(1, Ordering::Relaxed);
            counters.consecutive_failures.store(0, Ordering::Relaxed);
            let took = now.saturating_sub(conn.connect_started_ns);
            record_connect_time(counters, took, now);
            if let Ok(mut h) = self.shared.stats[self.index].connect_us.lock() {
                h.saturating_record((took / 1000).max(1));
            }
            let header = self.proxy_header(slot);
            let conn = &mut self.slots[slot].conn;
            conn.connected(now, header, &mut self.actions);
            self.arm_idle_timer(slot);
            self.perform(slot);
        } else {
            counters.failures.fetch_add(1, Ordering::Relaxed);
            counters
                .consecutive_failures
                .fetch_add(1, Ordering::Relaxed);
            WorkerStats::add(&self.shared.stats[self.index].connect_failures, 1);
            tracing::debug!(
                worker = self.index,
                backend = id.0,
                "connect failed: {}",
                std::io::Error::from_raw_os_error(-res)
            );
            if std::mem::take(&mut conn.counted) {
                counters.active.fetch_sub(1, Ordering::Relaxed);
            }
            let fd = std::mem::replace(&mut conn.backend_fd, -1);
            conn.backend = None;
            self.ring
                .close(fd, Token::new(0, 0, OpKind::Ignore).encode());
            self.connect_next(slot);
        }
    }

    /// Writes the PROXY protocol header (if configured) into the slot's client -> backend
    /// buffer; returns its length (0 = none).
    fn proxy_header(&mut self, slot: usize) -> usize {
        let conn = &self.slots[slot].conn;
        let Some(version) = conn.send_proxy else {
            return 0;
        };
        let dst = conn.orig_dst.or_else(|| uring::local_addr(conn.client_fd));
        let (Some(src), Some(dst)) = (conn.client_addr, dst) else {
            return 0;
        };
        let early = conn.early();
        let mut header = [0u8; crate::proxy_protocol::MAX_HEADER];
        let n = crate::proxy_protocol::encode(version, src, dst, &mut header);
        // The client's early bytes (after its own PROXY header) move behind ours; the
        // handshake left room for that.
        let buf = self.ring.buf_mut(slot, conn::UP);
        buf.copy_within(..early, n);
        buf[..n].copy_from_slice(&header[..n]);
        n
    }

    // ---- forwarding -------------------------------------------------------------------

    fn on_conn_op(&mut self, tok: Token, res: i32) {
        let slot = tok.slot as usize;
        match self.slots.get(slot) {
            Some(s) if s.in_use && s.gen == tok.gen => {}
            _ => return, // an earlier connection's completion: never acted on
        }
        self.slots[slot].conn.completed();
        match tok.op {
            OpKind::Recv0 if self.slots[slot].conn.phase() == Phase::Handshake => {
                self.on_header(slot, res)
            }
            OpKind::Connect => self.on_connected(slot, res),
            OpKind::ConnectTimeout => {}
            op => {
                let now = self.now_ns;
                let conn = &mut self.slots[slot].conn;
                let before = conn.bytes();
                conn.on_io(op, res, now, &mut self.pipes, &mut self.actions);
                let after = conn.bytes();
                if after != before {
                    let stats = &self.shared.stats[self.index];
                    WorkerStats::add(&stats.bytes_up, after.0 - before.0);
                    WorkerStats::add(&stats.bytes_down, after.1 - before.1);
                    if matches!(op, OpKind::SpliceOut0 | OpKind::SpliceOut1) {
                        let n = (after.0 - before.0) + (after.1 - before.1);
                        WorkerStats::add(&stats.splice_bytes, n);
                    }
                }
                self.perform(slot);
            }
        }
        self.release_if_done(slot);
    }

    /// Turns the connection's actions into ring operations.
    fn perform(&mut self, slot: usize) {
        let gen = self.slots[slot].gen;
        let conn = &self.slots[slot].conn;
        let (cfd, bfd) = (conn.client_fd, conn.backend_fd);
        let (src, dst) = ([cfd, bfd], [bfd, cfd]);
        for a in self.actions.drain(..) {
            match a {
                Action::Recv(dir) => {
                    let ud = Token::new(slot, gen, OpKind::recv(dir)).encode();
                    self.ring
                        .recv(slot, dir, src[dir], conn.expects_wait(dir), ud);
                }
                Action::RecvHeader { offset } => {
                    let ud = Token::new(slot, gen, OpKind::recv(conn::UP)).encode();
                    let to = self.ring.buf_size() - crate::proxy_protocol::MAX_HEADER;
                    self.ring.recv_range(slot, conn::UP, cfd, offset, to, ud);
                }
                Action::Send { dir, from, to } => {
                    let ud = Token::new(slot, gen, OpKind::send(dir)).encode();
                    self.ring.send(slot, dir, dst[dir], from, to, ud);
                }
                Action::Shutdown(dir) => {
                    // A direct call: shutdown never blocks on a TCP socket, but io_uring
                    // always hands it to an io-wq thread (a quarter of the balancer's CPU
                    // in the connection-per-request benchmark went to those hand-offs).
                    let user_data = Token::new(slot, gen, OpKind::shutdown(dir)).encode();
                    let result = uring::shutdown_write(dst[dir]);
                    self.local.push(Completion {
                        user_data,
                        result,
                        more: false,
                    });
                }
                Action::PollIn(dir) => {
                    let ud = Token::new(slot, gen, OpKind::poll_in(dir)).encode();
                    self.ring.poll(src[dir], libc::POLLIN as u32, ud);
                }
                Action::SpliceIn {
                    dir,
                    pipe,
                    poll_first,
                } => {
                    let (_, pipe_w) = self.pipes.fds(pipe);
                    let ud = Token::new(slot, gen, OpKind::splice_in(dir)).encode();
                    let poll_ud = Token::new(slot, gen, OpKind::LinkedPoll).encode();
                    let poll = poll_first.then_some((src[dir], libc::POLLIN as u32, poll_ud));
                    self.ring
                        .splice(src[dir], pipe_w, self.fwd.pipe_size, ud, poll);
                }
                Action::SpliceOut {
                    dir,
                    pipe,
                    len,
                    poll_first,
                } => {
                    let (pipe_r, _) = self.pipes.fds(pipe);
                    let ud = Token::new(slot, gen, OpKind::splice_out(dir)).encode();
                    let poll_ud = Token::new(slot, gen, OpKind::LinkedPoll).encode();
                    let poll = poll_first.then_some((dst[dir], libc::POLLOUT as u32, poll_ud));
                    self.ring.splice(pipe_r, dst[dir], len, ud, poll);
                }
                Action::CancelAll(pipes) => {
                    let ud = Token::new(0, 0, OpKind::Ignore).encode();
                    // Both sockets and both ends of up to two pipes; no allocation.
                    let mut fds = [cfd, bfd, -1, -1, -1, -1];
                    for (i, p) in pipes.iter().enumerate() {
                        if let Some(p) = p {
                            (fds[2 + 2 * i], fds[3 + 2 * i]) = self.pipes.fds(*p);
                        }
                    }
                    for fd in fds.into_iter().filter(|&fd| fd >= 0) {
                        self.ring.cancel_fd(fd, ud);
                    }
                }
            }
        }
    }

    fn abort(&mut self, slot: usize, reset: bool) {
        self.slots[slot].conn.abort(reset, &mut self.actions);
        self.perform(slot);
        self.release_if_done(slot);
    }

    /// Frees the slot once the connection is closing and nothing of it is in flight; or,
    /// for a connection whose backend died before answering, connects to the next backend.
    fn release_if_done(&mut self, slot: usize) {
        if self.slots[slot].in_use && self.slots[slot].conn.replay_ready() {
            return self.replay(slot);
        }
        if !self.slots[slot].in_use || !self.slots[slot].conn.releasable() {
            return;
        }
        let conn = &mut self.slots[slot].conn;
        let reset = conn.reset();
        let ignore = Token::new(0, 0, OpKind::Ignore).encode();
        for fd in [conn.client_fd, conn.backend_fd] {
            if fd >= 0 {
                if reset {
                    uring::set_linger_zero(fd);
                }
                self.ring.close(fd, ignore);
            }
        }
        conn.client_fd = -1;
        conn.backend_fd = -1;
        for pipe in conn.take_pipes().into_iter().flatten() {
            self.pipes.discard(pipe);
        }
        let freed_backend = conn.counted;
        if conn.counted {
            if let Some(id) = conn.backend {
                self.shared
                    .counters
                    .get(id)
                    .active
                    .fetch_sub(1, Ordering::Relaxed);
            }
            conn.counted = false;
        }
        if let Some(ip) = conn.source.take() {
            self.shared.sources.release(ip, self.now_ns);
        }
        let s = &mut self.slots[slot];
        s.in_use = false;
        s.dirty = true;
        s.freed_ns = self.now_ns;
        s.gen = next_gen(s.gen);
        self.free.push(slot as u32);
        self.open -= 1;
        self.shared.open_clients.fetch_sub(1, Ordering::Relaxed);
        if freed_backend {
            self.retry_queue();
        }
        if self.accept_allowed() {
            self.arm_accepts();
        }
    }

    /// The backend went away before answering: count it as a failure of that backend,
    /// close its socket, and send the client's first bytes to the next backend.
    fn replay(&mut self, slot: usize) {
        let conn = &mut self.slots[slot].conn;
        if let Some(id) = conn.backend {
            let c = self.shared.counters.get(id);
            if conn.counted {
                c.active.fetch_sub(1, Ordering::Relaxed);
                conn.counted = false;
            }
            c.failures.fetch_add(1, Ordering::Relaxed);
            c.consecutive_failures.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                worker = self.index,
                backend = id.0,
                "backend closed before answering: replaying"
            );
        }
        for pipe in conn.take_pipes().into_iter().flatten() {
            self.pipes.discard(pipe);
        }
        let fd = std::mem::replace(&mut conn.backend_fd, -1);
        conn.backend = None;
        conn.replay_connecting();
        WorkerStats::add(&self.shared.stats[self.index].replays, 1);
        self.ring
            .close(fd, Token::new(0, 0, OpKind::Ignore).encode());
        self.connect_next(slot);
    }

    // ---- control and time -------------------------------------------------------------

    fn on_wake(&mut self, c: Completion) {
        while let Ok(cmd) = self.commands.try_recv() {
            match cmd {
                Command::Snapshot(s) => {
                    tracing::debug!(worker = self.index, version = s.version, "new snapshot");
                    let pool = Candidates {
                        snapshot: &s,
                        counters: &self.shared.counters,
                        tried: &[],
                        panic: s.none_up(),
                    };
                    self.balancer = s.balance.selector_at(self.index, self.picks, &pool);
                    let version = s.version;
                    self.snapshot = s;
                    self.stats()
                        .snapshot_version
                        .store(version, Ordering::Release);
                }
                Command::Stop { grace } => self.begin_stop(grace),
            }
        }
        if c.result != -libc::ECANCELED {
            let ud = Token::new(0, 0, OpKind::Wake).encode();
            self.ring.read_eventfd(self.wake.as_raw_fd(), ud);
        }
    }

    fn begin_stop(&mut self, grace: Duration) {
        if self.stopping.is_some() {
            return;
        }
        self.stopping = Some(self.now_ns + grace.as_nanos() as u64);
        self.pause_accepts();
        // Close the listeners so the kernel stops queueing connections for this worker
        // (another process on the same SO_REUSEPORT address takes them).
        let ignore = Token::new(0, 0, OpKind::Ignore).encode();
        for l in &mut self.listeners {
            if let Some(fd) = l.fd.take() {
                // Hand the fd to the ring: the close runs after the cancel queued above.
                let raw = std::os::fd::IntoRawFd::into_raw_fd(fd);
                self.ring.close(raw, ignore);
            }
        }
        tracing::info!(worker = self.index, open = self.open, "stopping");
    }

    fn on_tick(&mut self, c: Completion) {
        if !c.more {
            if c.result == -libc::EINVAL && self.tick_multishot {
                self.tick_multishot = false; // kernel without multishot timeouts
            }
            let ud = Token::new(0, 0, OpKind::Tick).encode();
            if self.tick_multishot {
                self.ring.tick(TICK, ud);
            } else {
                self.ring.tick_once(TICK, ud);
            }
        }
        let mut due = std::mem::take(&mut self.due);
        self.timers.expire(self.now_ns, &mut due);
        let idle = self.snapshot.idle_timeout.as_nanos() as u64;
        for slot in due.drain(..) {
            let s = &self.slots[slot];
            if !s.in_use {
                continue; // armed by a connection that is gone; the next one arms again
            }
            if !matches!(s.conn.phase(), Phase::Forwarding | Phase::Handshake) {
                // Connecting (a new connection of the slot, or a replay): look again later.
                self.timers.arm(slot, self.now_ns + idle);
                continue;
            }
            let deadline = s.conn.last_active_ns + idle;
            if deadline <= self.now_ns && s.conn.phase() == Phase::Handshake {
                // A trusted peer that never finished its PROXY header: a bad header too.
                self.bad_header(slot, "none within the idle timeout");
            } else if deadline <= self.now_ns {
                tracing::debug!(worker = self.index, slot, "idle timeout");
                self.abort(slot, false);
            } else {
                self.timers.arm(slot, deadline);
            }
        }
        self.due = due;
        self.close_drained();
        self.retry_queue();
        if self.index == 0 && self.snapshot.limits.max_rate.is_some() {
            // Rate windows of sources that closed everything end without a close to
            // forget them: sweep once a second.
            if self.now_ns >= self.next_prune_ns {
                self.shared.sources.prune(self.now_ns);
                self.next_prune_ns = self.now_ns + crate::limits::RATE_WINDOW_NS;
            }
        }
        if self.accept_allowed() {
            self.arm_accepts();
        }
    }
}

impl Worker {
    /// Closes connections to draining backends whose drain deadline has passed.
    fn close_drained(&mut self) {
        let now = Instant::now();
        let expired: Vec<BackendId> = self
            .snapshot
            .backends
            .iter()
            .filter(|b| {
                b.state == BackendState::Draining && b.drain_deadline.is_some_and(|d| d <= now)
            })
            .map(|b| b.id)
            .collect();
        if expired.is_empty() {
            return;
        }
        for slot in 0..self.slots.len() {
            let s = &self.slots[slot];
            if s.in_use
                && s.conn.phase() == Phase::Forwarding
                && s.conn.backend.is_some_and(|id| expired.contains(&id))
            {
                tracing::debug!(worker = self.index, slot, "drain deadline: closing");
                self.abort(slot, false);
            }
        }
    }
}

/// The balancer's view of a snapshot for one connection: eligible = up and not already
/// tried by this connection. In panic mode (no backend up) the health checks are ignored
/// and every `down` backend is eligible; drained and maintenance ones never are.
struct Candidates<'a> {
    snapshot: &'a Snapshot,
    counters: &'a SharedCounters,
    tried: &'a [BackendId],
    panic: bool,
}

impl Candidates<'_> {
    fn eligible_ignoring_limit(&self, i: usize) -> bool {
        let b = &self.snapshot.backends[i];
        let state_ok = b.state.accepts_new() || (self.panic && b.state == BackendState::Down);
        state_ok && !self.tried.contains(&b.id)
    }

    /// At its max-conns (open connections across all workers).
    fn full(&self, i: usize) -> bool {
        let b = &self.snapshot.backends[i];
        b.max_conns
            .is_some_and(|m| self.counters.get(b.id).active() >= u64::from(m))
    }
}

impl Pool for Candidates<'_> {
    fn len(&self) -> usize {
        self.snapshot.backends.len()
    }
    fn weight(&self, i: usize) -> u32 {
        self.snapshot.backends[i].weight
    }
    fn eligible(&self, i: usize) -> bool {
        self.eligible_ignoring_limit(i) && !self.full(i)
    }
    fn active(&self, i: usize) -> u64 {
        self.counters.get(self.snapshot.backends[i].id).active()
    }
    fn latency_ns(&self, i: usize, now_ns: u64) -> f64 {
        let c = self.counters.get(self.snapshot.backends[i].id);
        PeakEwma::from_bits(
            c.ewma_ns_bits.load(Ordering::Relaxed),
            c.ewma_stamp_ns.load(Ordering::Relaxed),
        )
        .get_at(now_ns, balance::ewma::DEFAULT_DECAY_NS)
    }
}

fn build_balancer(snapshot: &Snapshot, worker: usize) -> Box<dyn Balance> {
    snapshot.balance.selector(worker)
}

/// The hashing algorithms' key for a client address.
fn client_key(addr: &SocketAddr, key: crate::config::HashKey) -> u64 {
    balance::hash_client(addr, key)
}

/// Folds one connect time into the backend's shared peak-EWMA (for `least-time`). Two
/// workers updating at once may lose one sample; the estimate stays sound.
fn record_connect_time(c: &crate::backend::BackendCounters, sample_ns: u64, now_ns: u64) {
    let old = PeakEwma::from_bits(
        c.ewma_ns_bits.load(Ordering::Relaxed),
        c.ewma_stamp_ns.load(Ordering::Relaxed),
    );
    let (bits, stamp) = old
        .observe(sample_ns as f64, now_ns, balance::ewma::DEFAULT_DECAY_NS)
        .to_bits();
    c.ewma_ns_bits.store(bits, Ordering::Relaxed);
    c.ewma_stamp_ns.store(stamp, Ordering::Relaxed);
}
