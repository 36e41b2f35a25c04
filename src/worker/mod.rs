//! One worker: a pinned thread with its own io_uring, its own SO_REUSEPORT listeners and its
//! own copy of the backend table. The loop is: submit everything queued and wait for a
//! completion (one `io_uring_enter`), read the clock once, handle every completion.
//!
//! Each kind of completion has its file:
//!
//! - [`accept`]: one accept per listener, a client served only within `--max-conns`;
//! - [`handshake`]: a trusted client's PROXY header, and the one we send backends;
//! - [`sni`]: the TLS ClientHello whose server name picks the service;
//! - [`connect`]: picking a backend, connecting with a timeout, retries and replays;
//! - [`conn`]: forwarding, decided by the connection's state machine, performed here;
//! - [`control`]: snapshots and stop commands from the control thread, and the tick that
//!   drives idle deadlines, drain deadlines and the queue for full backends.
//!
//! docs/ARCHITECTURE.md tells how the pieces fit.

mod accept;
mod access_log;
mod candidates;
pub mod conn;
mod connect;
mod control;
mod handshake;
pub mod pipes;
mod services;
mod sni;
pub mod stats;
pub mod timer;
pub mod token;
mod udp;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::backend::{Routing, ServiceId, Snapshot};
use crate::direction::Dir;
use crate::net;
use crate::uring::{Completion, Ring, RingError};

use conn::{Action, Conn, Forwarding};
use pipes::PipePool;
pub use stats::{Shared, WorkerStats};
use token::{next_gen, OpKind, Token};

/// How bytes are forwarded (`--forward`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardMode {
    Copy,
    Splice,
    Auto,
}

impl ForwardMode {
    pub fn name(self) -> &'static str {
        match self {
            ForwardMode::Copy => "copy",
            ForwardMode::Splice => "splice",
            ForwardMode::Auto => "auto",
        }
    }
}

/// Messages from the control thread.
#[derive(Debug)]
pub enum Command {
    /// Route new connections with these tables from now on.
    Routing(Arc<Routing>),
    /// New listening sockets (a reload added listen addresses); sent before the routing
    /// that names them.
    Listen(Vec<crate::server::ListenerFd>),
    /// Stop accepting; let open connections finish for at most `grace`, then exit. A
    /// second one shortens the grace.
    Stop { grace: Duration },
    /// [`Command::Stop`] once another process took the listeners over: also stop reading
    /// the UDP listeners (their copies in the new process are read there).
    HandOver { grace: Duration },
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
    /// Test hook: the loop fails as if `io_uring_enter` had, after this many waits.
    pub fail_after: Option<u64>,
}

/// Everything a worker thread starts with.
pub struct WorkerSetup {
    pub index: usize,
    /// Listening sockets with the addresses they are bound to and their services.
    pub listeners: Vec<crate::server::ListenerFd>,
    pub wake: OwnedFd,
    pub commands: Receiver<Command>,
    pub routing: Arc<Routing>,
    pub shared: Arc<Shared>,
    pub config: WorkerConfig,
    /// Connection slots (memory is only touched when used).
    pub slots: usize,
}

/// The timer wheel's resolution: idle deadlines fire at most this late.
const TICK: Duration = Duration::from_millis(100);
/// How often, and after how long a quiet spell, idle connections' buffers are reclaimed.
const RECLAIM_EVERY: Duration = Duration::from_secs(1);
/// Submission queue entries.
const SQ_ENTRIES: u32 = 4096;

struct Slot {
    gen: u32,
    in_use: bool,
    /// Free, and its buffers may still hold pages; freed at `freed_ns`.
    dirty: bool,
    freed_ns: u64,
    /// The service whose listener accepted the client.
    service: ServiceId,
    /// The connection holds a place of its service's own `max_conns` (given back to that
    /// count even if a reload has since lifted the limit).
    service_place: Option<Arc<crate::backend::ServiceBudget>>,
    /// The listen address whose TLS server names pick the service (`None`: the
    /// listener's service is the connection's).
    sni_addr: Option<SocketAddr>,
    conn: Conn,
    /// Recorded in the loop table: the client (peer, our address, the address before NAT)
    /// and the backend connection (our address, backend), both ends local.
    incoming: Option<crate::loops::ClientEnds>,
    outgoing: Option<(SocketAddr, SocketAddr)>,
    /// The connect in progress to a backend on this host (see [`crate::loops`]).
    ticket: Option<crate::loops::Ticket>,
    /// A client from this host waiting to be judged until these connects are done.
    waiting: Option<crate::loops::Barrier>,
    /// What the access log and the per-backend byte counts need (see [`access_log`]).
    log: access_log::SlotLog,
}

/// The per-worker event loop.
pub struct Worker {
    index: usize,
    ring: Ring,
    listeners: Vec<accept::Listener>,
    wake: OwnedFd,
    commands: Receiver<Command>,
    services: services::Services,
    shared: Arc<Shared>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    pipes: PipePool,
    fwd: Forwarding,
    /// Client connections with a slot.
    open: usize,
    /// Clients accepted while the balancer was at `--max-conns`: served first when a place
    /// frees (at most one per listener: its accept is not renewed while one waits).
    parked: VecDeque<accept::Parked>,
    timers: timer::IdleTimers,
    epoch: Instant,
    now_ns: u64,
    accept_paused_until: u64,
    stopping: Option<u64>,
    hard_stop: bool,
    tick_multishot: bool,
    actions: Vec<Action>,
    /// Completions of operations done at once rather than through the ring (shutdown),
    /// handled after the ring's batch exactly like the ring's own.
    local: Vec<Completion>,
    due: Vec<usize>,
    /// Connections waiting for a backend below its max-conns (slot, generation).
    queue: Vec<(u32, u32)>,
    /// Clients from this host waiting to be judged (slot, generation): see [`crate::loops`].
    loop_waits: Vec<(u32, u32)>,
    next_prune_ns: u64,
    next_reclaim_ns: u64,
    /// Rate-limited warnings: none before this time.
    next_warn_ns: u64,
    fail_after: Option<u64>,
    /// UDP listeners and flows.
    udp: udp::Udp,
}

impl Worker {
    /// Sets up the ring; the error is what the caller reports when io_uring is unusable.
    pub fn new(setup: WorkerSetup) -> std::io::Result<Worker> {
        let ring = Ring::new(SQ_ENTRIES, setup.slots, setup.config.buf_size)?;
        let epoch = setup.shared.epoch;
        let services = services::Services::new(&setup.routing, setup.index, &setup.shared.counters);
        let udp = udp::Udp::carried_on(&setup.shared.udp[setup.index]);
        let cfg = &setup.config;
        // The kernel rounds pipe sizes; a full splice is judged against the real size.
        let pipe_size = match cfg.forward {
            ForwardMode::Copy => cfg.pipe_size,
            _ => net::pipe(cfg.pipe_size)
                .map(|(r, _w)| net::pipe_size(&r))
                .unwrap_or(cfg.pipe_size),
        };
        let fwd = Forwarding {
            mode: cfg.forward,
            buf_size: ring.buf_size(),
            pipe_size,
        };
        let pipes_max = match cfg.forward {
            ForwardMode::Copy => 0,
            _ => cfg.pipes_max,
        };
        let mut worker = Worker {
            index: setup.index,
            ring,
            listeners: Vec::new(),
            wake: setup.wake,
            commands: setup.commands,
            services,
            shared: setup.shared,
            slots: Vec::new(),
            free: Vec::new(),
            pipes: PipePool::new(pipes_max, pipe_size),
            fwd,
            open: 0,
            parked: VecDeque::new(),
            timers: timer::IdleTimers::new(TICK.as_nanos() as u64, 1024, 0),
            epoch,
            now_ns: 0,
            accept_paused_until: 0,
            stopping: None,
            hard_stop: false,
            tick_multishot: true,
            actions: Vec::with_capacity(8),
            local: Vec::with_capacity(64),
            due: Vec::new(),
            queue: Vec::new(),
            loop_waits: Vec::new(),
            next_prune_ns: 0,
            next_reclaim_ns: 0,
            next_warn_ns: 0,
            fail_after: cfg.fail_after,
            udp,
        };
        worker.take_listeners(setup.listeners);
        // A worker taking a failed one's place gets the sockets with the labels they were
        // bound with; the routing may have moved their addresses to other services since.
        worker.label_listeners();
        worker.udp_routing_changed();
        Ok(worker)
    }

    /// Takes listening sockets: TCP ones accept, UDP ones receive datagrams.
    fn take_listeners(&mut self, listeners: Vec<crate::server::ListenerFd>) {
        for (fd, addr, service) in listeners {
            if crate::udp_net::is_datagram(&fd) {
                self.add_udp_listener(fd, addr, service);
            } else {
                self.listeners
                    .push(accept::Listener::new(fd, addr, service));
            }
        }
    }

    fn stats(&self) -> &WorkerStats {
        &self.shared.stats[self.index]
    }

    /// The snapshot of service `id`: a listener's or a connection's service always has one
    /// (see [`services`]).
    fn service(&self, id: ServiceId) -> &Snapshot {
        self.services
            .get(id)
            .expect("a listener's or an open connection's service is kept")
    }

    /// Gives back the place the connection in `slot` held in its service's `max_conns`.
    fn give_back_service_place(&mut self, slot: usize) {
        if let Some(b) = self.slots[slot].service_place.take() {
            b.give_back();
        }
    }

    /// The snapshot of the service of the connection in `slot`.
    fn slot_service(&self, slot: usize) -> &Snapshot {
        self.service(self.slots[slot].service)
    }

    /// Runs until stopped and every connection is closed (or the grace period ran out).
    /// An error means the ring cannot go on: the connections of this worker are reset and
    /// released, and the caller may start a new worker in its place.
    pub fn run(mut self) -> Result<(), RingError> {
        tracing::debug!(worker = self.index, features = ?self.ring.features, "worker running");
        self.shared.alive[self.index].store(true, Ordering::Relaxed);
        let version = self.services.version();
        self.stats()
            .snapshot_version
            .store(version, Ordering::Relaxed);
        self.arm_accepts();
        self.ring.read_eventfd(
            self.wake.as_raw_fd(),
            Token::new(0, 0, OpKind::Wake).encode(),
        );
        self.ring
            .tick(TICK, Token::new(0, 0, OpKind::Tick).encode());
        let mut cqes: Vec<Completion> = Vec::with_capacity(1024);
        let result = loop {
            // Completions made outside a batch (a stop's aborts) before waiting for more.
            self.dispatch_local();
            if let Err(e) = self.wait() {
                break Err(e);
            }
            self.now_ns = self.epoch.elapsed().as_nanos() as u64;
            self.ring.reap(&mut cqes);
            for c in cqes.drain(..) {
                self.dispatch(c);
            }
            self.dispatch_local();
            self.recheck_loop_waits();
            if self.ring.cq_backlogged() {
                WorkerStats::add(&self.stats().cq_backlogged, 1);
            }
            if self.now_ns >= self.next_reclaim_ns {
                // After the whole batch: no completion of these buffers is left unhandled.
                self.reclaim_idle_buffers();
                self.flush_udp_bytes();
                self.next_reclaim_ns = self.now_ns + RECLAIM_EVERY.as_nanos() as u64;
            }
            if self.finished() {
                break Ok(());
            }
        };
        if let Err(e) = &result {
            tracing::error!(
                worker = self.index,
                open = self.open,
                "worker failed, resetting its connections: {e}"
            );
            self.abandon();
        }
        self.shared.alive[self.index].store(false, Ordering::Relaxed);
        tracing::debug!(worker = self.index, "worker stopped");
        result
    }

    /// One `io_uring_enter`: submit, wait for a completion.
    fn wait(&mut self) -> Result<(), RingError> {
        if let Some(n) = self.fail_after.as_mut() {
            if *n == 0 {
                self.fail_after = None;
                return Err(RingError::Enter(std::io::Error::other("injected failure")));
            }
            *n -= 1;
        }
        self.ring.submit_and_wait(1)
    }

    fn dispatch_local(&mut self) {
        while let Some(c) = self.local.pop() {
            self.dispatch(c);
        }
    }

    fn dispatch(&mut self, c: Completion) {
        let Some(tok) = Token::decode(c.user_data) else {
            return;
        };
        match tok.op {
            OpKind::Accept => self.on_accept(tok.slot as usize, c),
            OpKind::Wake => self.on_wake(c.result),
            OpKind::Tick => self.on_tick(c.more, c.result),
            OpKind::Ignore => {}
            OpKind::UdpListen => self.on_udp_listen(tok.slot as usize, c),
            OpKind::UdpBackend => self.on_udp_backend(tok, c),
            _ => self.on_conn_op(tok, c.result),
        }
    }

    /// A completion of a connection's operation.
    fn on_conn_op(&mut self, tok: Token, res: i32) {
        let slot = tok.slot as usize;
        match self.slots.get(slot) {
            Some(s) if s.in_use && s.gen == tok.gen => {}
            _ => return, // an earlier connection's completion: never acted on
        }
        self.slots[slot].conn.completed();
        match tok.op {
            OpKind::Recv(Dir::Up) if self.slots[slot].conn.phase() == conn::Phase::Handshake => {
                match self.slots[slot].conn.reading() {
                    conn::Reading::ProxyHeader => self.on_header(slot, res),
                    conn::Reading::Hello => self.on_hello(slot, res),
                }
            }
            OpKind::Connect => self.on_connected(slot, res),
            OpKind::ConnectTimeout => {}
            op => {
                let now = self.now_ns;
                let conn = &mut self.slots[slot].conn;
                let before = conn.bytes();
                conn.on_io(op, res, now, &mut self.pipes, &mut self.actions);
                let after = conn.bytes();
                let stats = &self.shared.stats[self.index];
                for dir in Dir::BOTH {
                    let n = after[dir] - before[dir];
                    if n > 0 {
                        WorkerStats::add(&stats.bytes[dir], n);
                        if op == OpKind::SpliceOut(dir) {
                            WorkerStats::add(&stats.spliced[dir], n);
                        }
                    }
                }
                self.perform(slot);
            }
        }
        self.release_if_done(slot);
    }

    /// Turns the connection's actions into ring operations.
    fn perform(&mut self, slot: usize) {
        let (gen, service) = (self.slots[slot].gen, self.slots[slot].service);
        let conn = &mut self.slots[slot].conn;
        let (cfd, bfd) = (conn.client_fd(), conn.backend_fd());
        // The source and the destination of each direction.
        let src = |dir: Dir| if dir == Dir::Up { cfd } else { bfd };
        let dst = |dir: Dir| if dir == Dir::Up { bfd } else { cfd };
        let tok = |op: OpKind| Token::new(slot, gen, op).encode();
        let ignore = Token::new(0, 0, OpKind::Ignore).encode();
        for a in self.actions.drain(..) {
            match a {
                Action::Recv(dir) => {
                    let wait = conn.expects_wait(dir);
                    self.ring
                        .recv(slot, dir, src(dir), wait, tok(OpKind::Recv(dir)));
                }
                Action::RecvHeader { offset } => {
                    let to = self.ring.buf_size() - crate::proxy_protocol::MAX_HEADER;
                    let ud = tok(OpKind::Recv(Dir::Up));
                    self.ring.recv_range(slot, Dir::Up, cfd, offset, to, ud);
                }
                Action::Send { dir, from, to } => {
                    let ud = tok(OpKind::Send(dir));
                    self.ring.send(slot, dir, dst(dir), from, to, ud);
                }
                Action::Shutdown(dir) => {
                    // A direct call: shutdown never blocks on a TCP socket, but io_uring
                    // always hands it to an io-wq thread (a quarter of the balancer's CPU
                    // in the connection-per-request benchmark went to those hand-offs).
                    let sock = if dir == Dir::Up {
                        conn.backend_sock()
                    } else {
                        conn.client()
                    };
                    let result = sock.map_or(-libc::EBADF, |s| net::shutdown_write(s.as_fd()));
                    let ud = tok(OpKind::Shutdown(dir));
                    self.local.push(Completion::local(ud, result));
                }
                Action::PollIn(dir) => {
                    let ud = tok(OpKind::PollIn(dir));
                    self.ring.poll(src(dir), libc::POLLIN as u32, ud);
                }
                Action::SpliceIn {
                    dir,
                    pipe,
                    poll_first,
                } => {
                    let (_, pipe_w) = self.pipes.fds(pipe);
                    let poll = poll_first
                        .then(|| (src(dir), libc::POLLIN as u32, tok(OpKind::LinkedPoll)));
                    let (size, ud) = (self.fwd.pipe_size, tok(OpKind::SpliceIn(dir)));
                    self.ring.splice(src(dir), pipe_w, size, ud, poll);
                }
                Action::SpliceOut {
                    dir,
                    pipe,
                    len,
                    poll_first,
                } => {
                    let (pipe_r, _) = self.pipes.fds(pipe);
                    let poll = poll_first
                        .then(|| (dst(dir), libc::POLLOUT as u32, tok(OpKind::LinkedPoll)));
                    let ud = tok(OpKind::SpliceOut(dir));
                    self.ring.splice(pipe_r, dst(dir), len, ud, poll);
                }
                Action::CancelAll(pipes) => {
                    // Both sockets and both ends of up to two pipes; no allocation.
                    let mut fds = [cfd, bfd, -1, -1, -1, -1];
                    for (i, p) in pipes.iter().enumerate() {
                        if let Some(p) = p {
                            (fds[2 + 2 * i], fds[3 + 2 * i]) = self.pipes.fds(*p);
                        }
                    }
                    for fd in fds.into_iter().filter(|&fd| fd >= 0) {
                        self.ring.cancel_fd(fd, ignore);
                    }
                }
                Action::Connect(addr) => {
                    let timeout = self
                        .services
                        .get(service)
                        .expect("an open connection's service is kept")
                        .connect_timeout;
                    let (ud, timeout_ud) = (tok(OpKind::Connect), tok(OpKind::ConnectTimeout));
                    self.ring.connect(slot, bfd, &addr, timeout, ud, timeout_ud);
                }
                Action::CloseBackend => {
                    if let Some(sock) = conn.take_backend_sock() {
                        self.ring.close(sock, ignore);
                    }
                }
            }
        }
    }

    /// Aborts a connection; `reset` closes both sides with a reset.
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
        self.flush_backend_bytes(slot);
        self.leave_queue(slot);
        self.log_end(slot);
        let released = self.slots[slot].conn.release();
        let ignore = Token::new(0, 0, OpKind::Ignore).encode();
        for sock in [released.client, released.backend].into_iter().flatten() {
            if released.reset {
                net::set_linger_zero(&sock);
            }
            self.ring.close(sock, ignore);
        }
        for pipe in released.pipes.into_iter().flatten() {
            self.pipes.discard(pipe);
        }
        if let Some(id) = released.counted {
            self.shared
                .counters
                .get(id)
                .active
                .fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(ip) = released.source {
            self.shared.sources.release(ip, self.now_ns);
        }
        self.forget_loop_entries(slot);
        let s = &mut self.slots[slot];
        s.in_use = false;
        s.dirty = true;
        s.freed_ns = self.now_ns;
        s.gen = next_gen(s.gen);
        self.free.push(slot as u32);
        self.open -= 1;
        self.shared.close_one();
        self.give_back_service_place(slot);
        if released.counted.is_some() {
            self.retry_queue();
        }
        self.serve_parked();
        self.arm_accepts();
    }

    fn forget_loop_entries(&mut self, slot: usize) {
        let s = &mut self.slots[slot];
        if let Some(ends) = s.incoming.take() {
            self.shared.loops.incoming_closed(ends);
        }
        if let Some(ticket) = s.ticket.take() {
            self.shared.loops.connect_done(ticket);
        }
        s.waiting = None;
        if let Some((local, backend)) = s.outgoing.take() {
            self.shared.loops.outgoing_closed(local, backend);
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
            if self.slots[slot].in_use {
                // Open connections' bytes reach the per-backend counts once a second.
                self.flush_backend_bytes(slot);
            }
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
        // An accept whose cancel has not completed may still hand over a client the kernel
        // took before the cancel: it is served like the others, never dropped unserved.
        let accepting = (0..self.listeners.len()).any(|i| self.ring.accepting(i));
        if self.open == 0 && self.parked.is_empty() && self.udp.idle() && !accepting {
            return true;
        }
        if self.now_ns >= deadline && !self.hard_stop {
            tracing::warn!(
                worker = self.index,
                open = self.open,
                "grace period over, resetting connections"
            );
            self.hard_stop = true;
            self.parked.clear();
            self.udp_end_all();
            for slot in 0..self.slots.len() {
                if self.slots[slot].in_use {
                    self.end_as(slot, crate::access_log::End::Drained);
                    self.abort(slot, true);
                }
            }
        }
        // Connections whose cancellations never complete must not hold the process forever.
        self.hard_stop && self.now_ns >= deadline + Duration::from_secs(2).as_nanos() as u64
    }

    /// The ring failed: give back everything this worker holds in shared state (backend and
    /// source counts, places of `--max-conns`, loop entries), and make the sockets close
    /// with a reset when the worker is dropped.
    fn abandon(&mut self) {
        self.parked.clear();
        self.udp_abandon();
        for slot in 0..self.slots.len() {
            if !self.slots[slot].in_use {
                continue;
            }
            let conn = &mut self.slots[slot].conn;
            if let Some(id) = conn.backend().filter(|_| conn.counted()) {
                self.shared
                    .counters
                    .get(id)
                    .active
                    .fetch_sub(1, Ordering::Relaxed);
            }
            if let Some(ip) = conn.take_source() {
                self.shared.sources.release(ip, self.now_ns);
            }
            for sock in [conn.client(), conn.backend_sock()].into_iter().flatten() {
                net::set_linger_zero(sock);
            }
            self.forget_loop_entries(slot);
            self.slots[slot].in_use = false;
            self.shared.close_one();
            self.give_back_service_place(slot);
        }
        self.open = 0;
    }
}
