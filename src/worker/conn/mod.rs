//! One proxied connection as a state machine, apart from I/O: it is fed completions and the
//! time, and answers with the [`Action`]s the worker turns into io_uring operations (the
//! sans-IO shape of `quinn-proto`). docs/ARCHITECTURE.md draws its phases.
//!
//! Its life: [`Phase::Handshake`] (a trusted client's PROXY header), [`Phase::Connecting`]
//! (one backend after another, up to the retries), [`Phase::Forwarding`] (both directions,
//! see [`flow`]), then [`Phase::Closing`] until nothing of it is in flight. A backend that
//! goes away before answering sends it through [`Phase::Replaying`] back to connecting.
//!
//! The connection owns its two sockets and its connect bookkeeping (which backend, which
//! were tried, whether it is counted in the backend's active connections); the worker asks
//! it for decisions and applies their effects on shared counters. Closing: both directions
//! done (EOF passed on as `shutdown(SHUT_WR)`) closes normally; anything else that ends a
//! connection early (an error, a reset from a peer, the idle timeout, a drain deadline, the
//! end of the grace period) resets both sides, so no peer mistakes a cut stream for a
//! complete one. The slot is released only when no operation of it is in flight any more.

mod flow;
#[cfg(test)]
mod model;
#[cfg(test)]
mod tests;

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::backend::BackendId;
use crate::direction::{Dir, PerDir};
use crate::proxy_protocol::ProxyProtocol;

use super::ForwardMode;
use flow::Flow;
pub use flow::{PipeId, Pipes, STREAM_STREAK};

/// What the worker must do for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Receive from the source of `dir` into that direction's buffer.
    Recv(Dir),
    /// Send `buf[from..to]` of direction `dir` to its destination.
    Send { dir: Dir, from: usize, to: usize },
    /// Wait until the source of `dir` is readable.
    PollIn(Dir),
    /// Splice from the source of `dir` into `pipe`; `poll_first` links a `POLLIN` poll
    /// ahead of it (two completions).
    SpliceIn {
        dir: Dir,
        pipe: PipeId,
        poll_first: bool,
    },
    /// Splice `len` bytes from `pipe` to the destination of `dir`; `poll_first` links a
    /// `POLLOUT` poll ahead of it (two completions).
    SpliceOut {
        dir: Dir,
        pipe: PipeId,
        len: usize,
        poll_first: bool,
    },
    /// `shutdown(SHUT_WR)` the destination of `dir`.
    Shutdown(Dir),
    /// Cancel every operation in flight on both sockets and on these pipes.
    CancelAll([Option<PipeId>; 2]),
    /// Receive more of a PROXY protocol header from the client into the client -> backend
    /// buffer, after the `offset` bytes already there.
    RecvHeader { offset: usize },
    /// Connect the backend socket to this address, with the connect timeout linked (two
    /// completions: the connect and its timeout).
    Connect(SocketAddr),
    /// Close the backend socket (a failed connect, or a backend left behind by a replay).
    CloseBackend,
}

impl Action {
    /// Completions the action's operations will produce.
    fn completions(self) -> u32 {
        match self {
            Action::SpliceIn { poll_first, .. } | Action::SpliceOut { poll_first, .. } => {
                1 + u32::from(poll_first)
            }
            Action::Connect(_) => 2,
            Action::CancelAll(_) | Action::CloseBackend => 0,
            _ => 1,
        }
    }
}

/// How a connection forwards: the mode and the sizes that tell a full read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forwarding {
    pub mode: ForwardMode,
    /// Copy buffer size per direction.
    pub buf_size: usize,
    /// Pipe capacity (bytes asked of one splice in).
    pub pipe_size: usize,
}

/// Where the connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading the PROXY protocol header of a trusted client (`--accept-proxy`), or the
    /// TLS ClientHello whose server name picks the service (see [`Reading`]).
    Handshake,
    /// Waiting for a backend connect (possibly a retry), or for a backend below its
    /// max-conns.
    Connecting,
    Forwarding,
    /// The backend went away before answering: waiting for in-flight operations, then the
    /// worker connects to another backend and the client's first bytes are sent again.
    Replaying,
    /// Aborted or finished: waiting for in-flight operations, then released.
    Closing,
}

/// What the handshake phase reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// A trusted client's PROXY protocol header.
    ProxyHeader,
    /// The TLS ClientHello (after the PROXY header, if any).
    Hello,
}

/// The backend a connection is sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub id: BackendId,
    pub addr: SocketAddr,
    /// The PROXY protocol header this backend gets, if any.
    pub send_proxy: Option<ProxyProtocol>,
    /// The backend is on this host (its connections are watched for loops).
    pub local: bool,
}

/// A backend the connection let go of: the worker closes nothing (the socket close is an
/// [`Action::CloseBackend`]) but gives back its active-connection count when `counted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeftBackend {
    pub id: BackendId,
    pub counted: bool,
}

/// What a released connection leaves for the worker to clean up.
#[derive(Debug)]
pub struct Released {
    pub client: Option<OwnedFd>,
    pub backend: Option<OwnedFd>,
    /// Close with a reset (`SO_LINGER` 0) rather than a FIN.
    pub reset: bool,
    /// Give back this backend's active-connection count.
    pub counted: Option<BackendId>,
    /// Give back this source's count in the per-source limits table.
    pub source: Option<IpAddr>,
    /// Pipes that may still hold bytes: to discard, not to reuse.
    pub pipes: [Option<PipeId>; 2],
}

/// What a deadline meant for the connection ([`Conn::on_timeout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    /// Not due yet: look again at this time.
    Later(u64),
    /// Idle in both directions for the whole idle timeout: aborted with a reset.
    Idle,
    /// A trusted client did not finish its PROXY header within the idle timeout: aborted.
    Header,
    /// The client did not finish its ClientHello within `sni_timeout`: aborted.
    Hello,
}

/// A proxied connection.
#[derive(Debug)]
pub struct Conn {
    client: Option<OwnedFd>,
    backend_sock: Option<OwnedFd>,
    pub client_addr: Option<SocketAddr>,
    /// The backend connected to (or being connected to).
    backend: Option<Target>,
    /// Counted in the backend's active connections.
    counted: bool,
    /// Backends tried so far (retries skip them). Keeps its capacity across reuse.
    tried: Vec<BackendId>,
    connect_started_ns: u64,
    last_active_ns: u64,
    fwd: Forwarding,
    phase: Phase,
    flows: PerDir<Flow>,
    /// Operations submitted whose completion has not arrived.
    inflight: u32,
    /// Close with a reset rather than a FIN.
    reset: bool,
    /// Bytes of a PROXY protocol header sent ahead of the client's bytes (not counted as
    /// forwarded).
    header: usize,
    /// Chunks received from the client so far (a replay needs all of them in the buffer).
    up_chunks: u32,
    /// Any byte received from the backend.
    answered: bool,
    /// Client bytes at the start of the client -> backend buffer to send before reading
    /// more: the rest of the first read after a PROXY header, or the first chunk being
    /// sent again to the next backend (replay).
    early: usize,
    /// The address the client connected to, when a PROXY header told it.
    pub orig_dst: Option<SocketAddr>,
    /// The source IP counted in the per-source limits table (released at close).
    source: Option<IpAddr>,
    /// Waiting since then for a backend below its max-conns.
    queued_ns: Option<u64>,
    /// The copy buffers' pages were given back since the last read.
    pages_released: bool,
    /// What the handshake phase reads.
    reading: Reading,
    /// When the handshake must be over (a ClientHello's `sni_timeout`), if not the idle
    /// timeout.
    handshake_deadline: Option<u64>,
    /// The TLS server name the connection was routed by (fixed size: no allocation).
    pub sni: Option<crate::sni::SniName>,
}

impl Conn {
    pub fn new() -> Conn {
        Conn {
            client: None,
            backend_sock: None,
            client_addr: None,
            backend: None,
            counted: false,
            tried: Vec::new(),
            connect_started_ns: 0,
            last_active_ns: 0,
            fwd: Forwarding {
                mode: ForwardMode::Copy,
                buf_size: 1,
                pipe_size: 1,
            },
            phase: Phase::Closing,
            flows: PerDir::new(Flow::NEW, Flow::NEW),
            inflight: 0,
            reset: false,
            header: 0,
            up_chunks: 0,
            answered: false,
            early: 0,
            orig_dst: None,
            source: None,
            queued_ns: None,
            pages_released: false,
            reading: Reading::ProxyHeader,
            handshake_deadline: None,
            sni: None,
        }
    }

    /// Starts over for a newly accepted client socket.
    pub fn open(
        &mut self,
        client: OwnedFd,
        client_addr: Option<SocketAddr>,
        fwd: Forwarding,
        now_ns: u64,
    ) {
        debug_assert!(self.client.is_none() && self.backend_sock.is_none());
        debug_assert_eq!(self.inflight, 0, "a slot reused with operations in flight");
        self.client = Some(client);
        self.backend_sock = None;
        self.client_addr = client_addr;
        self.backend = None;
        self.counted = false;
        self.tried.clear();
        self.connect_started_ns = now_ns;
        self.last_active_ns = now_ns;
        self.fwd = fwd;
        self.phase = Phase::Connecting;
        self.flows = PerDir::new(Flow::NEW, Flow::NEW);
        self.inflight = 0;
        self.reset = false;
        self.header = 0;
        self.up_chunks = 0;
        self.answered = false;
        self.early = 0;
        self.orig_dst = None;
        self.source = None;
        self.queued_ns = None;
        self.pages_released = false;
        self.reading = Reading::ProxyHeader;
        self.handshake_deadline = None;
        self.sni = None;
    }

    // ---- what the worker reads ------------------------------------------------------

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn inflight(&self) -> u32 {
        self.inflight
    }

    /// The client socket's number, or -1 once closed.
    pub fn client_fd(&self) -> RawFd {
        self.client.as_ref().map_or(-1, AsRawFd::as_raw_fd)
    }

    /// The backend socket's number, or -1 while there is none.
    pub fn backend_fd(&self) -> RawFd {
        self.backend_sock.as_ref().map_or(-1, AsRawFd::as_raw_fd)
    }

    pub fn client(&self) -> Option<&OwnedFd> {
        self.client.as_ref()
    }

    /// The backend connected to (or being connected to).
    pub fn backend(&self) -> Option<BackendId> {
        self.backend.map(|t| t.id)
    }

    /// The backend connected to (or being connected to), with its address.
    pub fn target(&self) -> Option<Target> {
        self.backend
    }

    /// Whether closing will reset both sides.
    pub fn reset(&self) -> bool {
        self.reset
    }

    /// Counted in the backend's active connections.
    pub fn counted(&self) -> bool {
        self.counted
    }

    /// The backend socket, while there is one.
    pub fn backend_sock(&self) -> Option<&OwnedFd> {
        self.backend_sock.as_ref()
    }

    /// Takes the source IP counted in the per-source limits table, to give it back.
    pub fn take_source(&mut self) -> Option<IpAddr> {
        self.source.take()
    }

    /// Backends tried so far, in order.
    pub fn tried(&self) -> &[BackendId] {
        &self.tried
    }

    /// The PROXY header the backend being connected to gets.
    pub fn send_proxy(&self) -> Option<ProxyProtocol> {
        self.backend.and_then(|t| t.send_proxy)
    }

    /// When the current connect attempt started.
    pub fn connect_started_ns(&self) -> u64 {
        self.connect_started_ns
    }

    /// Bytes forwarded client -> backend and backend -> client.
    pub fn bytes(&self) -> PerDir<u64> {
        let up = self.flows[Dir::Up].bytes.saturating_sub(self.header as u64);
        PerDir::new(up, self.flows[Dir::Down].bytes)
    }

    /// Whether direction `dir` has switched to (or started in) splice.
    pub fn splicing(&self, dir: Dir) -> bool {
        self.flows[dir].splice
    }

    /// The last read of `dir` drained its socket (it came back short), so the next one is
    /// likely to find nothing yet: the ring should wait for data before trying (request and
    /// response traffic), rather than try, fail and then wait.
    pub fn expects_wait(&self, dir: Dir) -> bool {
        let flow = &self.flows[dir];
        flow.bytes > 0 && flow.streak == 0
    }

    /// Client bytes waiting at the start of the client -> backend buffer.
    pub fn early(&self) -> usize {
        self.early
    }

    /// Records the source IP counted in the per-source limits table.
    pub fn count_source(&mut self, ip: IpAddr) {
        self.source = Some(ip);
    }

    // ---- in-flight accounting -------------------------------------------------------

    /// The worker pushed `n` operations for this connection outside [`Action`]s.
    pub fn submitted(&mut self, n: u32) {
        self.inflight += n;
    }

    /// A completion for this connection arrived (any kind). Call before the handler.
    /// Memory safety depends on this count (a slot is reused only at zero), so an
    /// underflow is a bug that debug builds stop at.
    pub fn completed(&mut self) {
        debug_assert!(self.inflight > 0, "a completion nothing was waiting for");
        self.inflight = self.inflight.saturating_sub(1);
    }

    /// True when the slot can be released: closing with nothing in flight.
    pub fn releasable(&self) -> bool {
        self.phase == Phase::Closing && self.inflight == 0
    }

    /// Hands the worker what a finished connection leaves behind. Only when
    /// [`Conn::releasable`].
    pub fn release(&mut self) -> Released {
        debug_assert!(self.releasable());
        let counted = std::mem::take(&mut self.counted)
            .then_some(self.backend())
            .flatten();
        Released {
            client: self.client.take(),
            backend: self.backend_sock.take(),
            reset: self.reset,
            counted,
            source: self.source.take(),
            pipes: self.take_pipes(),
        }
    }

    /// Pipes still held (only after an abort: they may hold bytes and must be discarded).
    pub fn take_pipes(&mut self) -> [Option<PipeId>; 2] {
        [
            self.flows[Dir::Up].pipe.take(),
            self.flows[Dir::Down].pipe.take(),
        ]
    }

    // ---- handshake: a trusted client's PROXY header ---------------------------------

    /// A trusted client: read its PROXY header before connecting anywhere.
    pub fn open_handshake(&mut self, out: &mut Vec<Action>) {
        self.phase = Phase::Handshake;
        self.reading = Reading::ProxyHeader;
        self.flows[Dir::Up].len = 0;
        self.emit(Action::RecvHeader { offset: 0 }, out);
    }

    /// The handshake must be over by `deadline` (whatever the client sends meanwhile):
    /// a client routed by its TLS server name.
    pub fn handshake_deadline(&mut self, deadline: u64) {
        self.handshake_deadline = Some(deadline);
    }

    /// Read a TLS ClientHello next, after the `have` bytes at the start of the client ->
    /// backend buffer (what followed a PROXY header). The worker looks at those first and
    /// asks for more with [`Conn::read_more_header`].
    pub fn expect_hello(&mut self, have: usize) {
        self.phase = Phase::Handshake;
        self.reading = Reading::Hello;
        self.flows[Dir::Up].len = have;
    }

    /// What the handshake phase reads.
    pub fn reading(&self) -> Reading {
        self.reading
    }

    /// A header read completed with `res`: the bytes now in the buffer, or `None` when the
    /// client closed or failed (the connection is then aborted).
    pub fn header_bytes(&mut self, res: i32, out: &mut Vec<Action>) -> Option<usize> {
        if self.phase != Phase::Handshake {
            return None;
        }
        if res <= 0 {
            self.abort(res < 0, out);
            return None;
        }
        self.flows[Dir::Up].len += res as usize;
        Some(self.flows[Dir::Up].len)
    }

    /// Header bytes read so far (while reading it).
    pub fn header_received(&self) -> usize {
        if self.phase == Phase::Handshake {
            self.flows[Dir::Up].len
        } else {
            0
        }
    }

    /// The header is not complete yet: read more after what is there.
    pub fn read_more_header(&mut self, out: &mut Vec<Action>) {
        let offset = self.flows[Dir::Up].len;
        self.emit(Action::RecvHeader { offset }, out);
    }

    /// The header is read; the worker moved the `early` client bytes that followed it to
    /// the start of the buffer. Next: connect.
    pub fn header_done(&mut self, early: usize) {
        self.phase = Phase::Connecting;
        self.handshake_deadline = None;
        self.flows[Dir::Up].len = 0;
        self.early = early;
        if early > 0 {
            self.up_chunks = 1;
        }
    }

    // ---- connecting -----------------------------------------------------------------

    /// Connects to `target` over `sock`, a new socket. The caller counts the connection in
    /// the backend's active connections now (connects in flight are load too, and a burst
    /// must not run past a backend's max-conns); the connection remembers that it was, and
    /// hands the count back when it lets the backend go.
    pub fn connect(&mut self, target: Target, sock: OwnedFd, now_ns: u64, out: &mut Vec<Action>) {
        debug_assert_eq!(self.phase, Phase::Connecting);
        debug_assert!(self.backend_sock.is_none());
        self.backend_sock = Some(sock);
        self.backend = Some(target);
        self.queued_ns = None;
        self.counted = true;
        self.tried.push(target.id);
        self.connect_started_ns = now_ns;
        self.emit(Action::Connect(target.addr), out);
    }

    /// The backend connect succeeded: start both directions. With `header > 0` the worker
    /// has put that many bytes (a PROXY protocol header) in the client -> backend buffer,
    /// ahead of the [`Conn::early`] client bytes; both are sent before anything else.
    /// Returns how long the connect took.
    pub fn connected(&mut self, now_ns: u64, header: usize, out: &mut Vec<Action>) -> u64 {
        if self.phase != Phase::Connecting {
            return 0;
        }
        self.phase = Phase::Forwarding;
        self.last_active_ns = now_ns;
        self.header = header;
        let prefill = header + std::mem::take(&mut self.early);
        self.start_flows(prefill, out);
        now_ns.saturating_sub(self.connect_started_ns)
    }

    /// The connect failed (refused, timed out): the backend socket is closed and the
    /// backend let go; the worker counts the failure and tries the next one.
    pub fn connect_failed(&mut self, out: &mut Vec<Action>) -> Option<LeftBackend> {
        if self.phase != Phase::Connecting {
            return None;
        }
        self.leave_backend(out)
    }

    fn leave_backend(&mut self, out: &mut Vec<Action>) -> Option<LeftBackend> {
        let id = self.backend.take()?.id;
        let counted = std::mem::take(&mut self.counted);
        if self.backend_sock.is_some() {
            self.emit(Action::CloseBackend, out);
        }
        Some(LeftBackend { id, counted })
    }

    /// Every backend it may go to is at its max-conns: it waits (from the first time on).
    pub fn queue(&mut self, now_ns: u64) {
        self.queued_ns.get_or_insert(now_ns);
    }

    /// How long it has waited for a backend below its max-conns, if it is waiting.
    pub fn waited(&self, now_ns: u64) -> Option<u64> {
        self.queued_ns.map(|since| now_ns.saturating_sub(since))
    }

    /// It stops waiting (a backend has room, or it is closed): how long it waited, if it
    /// was waiting.
    pub fn dequeue(&mut self, now_ns: u64) -> Option<u64> {
        self.queued_ns
            .take()
            .map(|since| now_ns.saturating_sub(since))
    }

    /// Takes the backend socket for [`Action::CloseBackend`].
    pub fn take_backend_sock(&mut self) -> Option<OwnedFd> {
        self.backend_sock.take()
    }

    // ---- replay: the backend went away before answering ------------------------------

    /// Replaying and nothing in flight: the worker may connect to the next backend.
    pub fn replay_ready(&self) -> bool {
        self.phase == Phase::Replaying && self.inflight == 0
    }

    /// Leaves the backend that went away (its socket is closed) and goes back to connecting,
    /// with the client's first chunk kept to send again.
    pub fn start_replay(&mut self, out: &mut Vec<Action>) -> Option<LeftBackend> {
        debug_assert!(self.replay_ready());
        self.phase = Phase::Connecting;
        self.flows = PerDir::new(Flow::NEW, Flow::NEW);
        self.leave_backend(out)
    }

    // ---- time -----------------------------------------------------------------------

    /// When the connection's idle deadline falls, given the idle timeout, or `None` while
    /// it has none (connecting: the connect timeout covers it).
    pub fn poll_timeout(&self, idle_ns: u64) -> Option<u64> {
        match self.phase {
            Phase::Handshake if self.handshake_deadline.is_some() => self.handshake_deadline,
            Phase::Handshake | Phase::Forwarding => Some(self.last_active_ns + idle_ns),
            _ => None,
        }
    }

    /// Its deadline may have come: abort it (with a reset) if it has been idle for the
    /// whole `idle_ns`; otherwise say when to look again.
    pub fn on_timeout(&mut self, now_ns: u64, idle_ns: u64, out: &mut Vec<Action>) -> Timeout {
        match self.poll_timeout(idle_ns) {
            Some(deadline) if deadline <= now_ns => {
                let handshake = (self.phase == Phase::Handshake).then_some(self.reading);
                self.abort(true, out);
                match handshake {
                    Some(Reading::Hello) => Timeout::Hello,
                    Some(Reading::ProxyHeader) => Timeout::Header,
                    None => Timeout::Idle,
                }
            }
            Some(deadline) => Timeout::Later(deadline),
            // Connecting (a new connection of the slot, or a replay): look again later.
            None => Timeout::Later(now_ns + idle_ns),
        }
    }

    // ---- memory ---------------------------------------------------------------------

    /// The copy buffers hold nothing the connection still needs (no send in flight, no
    /// first chunk kept for a replay) and it has been quiet for `quiet_ns`: their memory
    /// can go back to the kernel until the next read. Each quiet spell releases once.
    pub fn buffers_reclaimable(&self, now_ns: u64, quiet_ns: u64) -> bool {
        self.phase == Phase::Forwarding
            && !self.pages_released
            && now_ns.saturating_sub(self.last_active_ns) >= quiet_ns
            && self.flows.iter().all(|f| !f.writing())
            && (self.answered || self.up_chunks != 1)
    }

    pub fn pages_released(&mut self) {
        self.pages_released = true;
    }

    // ---- ending ---------------------------------------------------------------------

    /// Stops the connection: cancels what is in flight; `reset` closes both sides with a
    /// reset rather than a FIN.
    pub fn abort(&mut self, reset: bool, out: &mut Vec<Action>) {
        if self.phase == Phase::Closing {
            self.reset |= reset;
            return;
        }
        let was_replaying = self.phase == Phase::Replaying;
        self.phase = Phase::Closing;
        self.reset |= reset;
        if was_replaying {
            return; // its cancellation is already under way
        }
        if self.inflight > 0 {
            out.push(Action::CancelAll(self.pipes_held()));
        }
    }

    fn pipes_held(&self) -> [Option<PipeId>; 2] {
        [self.flows[Dir::Up].pipe, self.flows[Dir::Down].pipe]
    }

    fn emit(&mut self, action: Action, out: &mut Vec<Action>) {
        self.inflight += action.completions();
        out.push(action);
    }
}

impl Default for Conn {
    fn default() -> Self {
        Conn::new()
    }
}
