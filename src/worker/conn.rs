//! One proxied connection as a state machine, apart from I/O: it is fed completions and the
//! time, and answers with the [`Action`]s the worker turns into io_uring operations (the
//! sans-IO shape of `quinn-proto`).
//!
//! Two directions (flows) run at once: `UP` = client -> backend, `DOWN` = backend -> client.
//! Each has at most one step in flight, so a connection holds at most one buffer (or one
//! pipe) per direction whatever the peers do: a slow reader stops our reads from the
//! writer, and TCP flow control pushes back on it.
//!
//! A flow forwards by copy (recv into a buffer, send it) or by splice (socket -> pipe ->
//! socket, the bytes never enter user space):
//!
//! - splice: wait for `POLLIN` without holding a pipe (an idle connection costs no pipe),
//!   take a pipe from the pool, splice in, splice out until the pipe is empty. While the
//!   source streams (the last splice filled the pipe) the pipe is kept and the next
//!   `POLLIN` poll is linked ahead of the splice; when it goes quiet the pipe goes back. No
//!   pipe free: that chunk is copied instead.
//! - auto: copy until `STREAM_STREAK` full reads in a row, then splice.
//!
//! Closing: both directions done (EOF passed on as `shutdown(SHUT_WR)`) closes normally; an
//! error or reset on either side aborts both, and a reset is passed on as a reset. The slot
//! is released only when no operation of it is in flight any more.

use std::net::SocketAddr;
use std::os::fd::RawFd;

use crate::backend::BackendId;
use crate::config::ForwardMode;

use super::token::OpKind;

/// Client -> backend.
pub const UP: usize = 0;
/// Backend -> client.
pub const DOWN: usize = 1;

/// Full reads in a row after which `--forward auto` switches a direction to splice.
pub const STREAM_STREAK: u8 = 4;

/// A pipe of the worker's pool, by index.
pub type PipeId = u32;

/// The worker's pipe pool as the state machine sees it.
pub trait Pipes {
    /// An empty pipe, or `None` when the pool is exhausted.
    fn acquire(&mut self) -> Option<PipeId>;
    /// Gives back an empty pipe.
    fn release(&mut self, pipe: PipeId);
}

/// What the worker must do for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Receive from the source of `dir` into that direction's buffer.
    Recv(usize),
    /// Send `buf[from..to]` of direction `dir` to its destination.
    Send { dir: usize, from: usize, to: usize },
    /// Wait until the source of `dir` is readable.
    PollIn(usize),
    /// Splice from the source of `dir` into `pipe`; `poll_first` links a `POLLIN` poll
    /// ahead of it (two completions).
    SpliceIn {
        dir: usize,
        pipe: PipeId,
        poll_first: bool,
    },
    /// Splice `len` bytes from `pipe` to the destination of `dir`; `poll_first` links a
    /// `POLLOUT` poll ahead of it (two completions).
    SpliceOut {
        dir: usize,
        pipe: PipeId,
        len: usize,
        poll_first: bool,
    },
    /// `shutdown(SHUT_WR)` the destination of `dir`.
    Shutdown(usize),
    /// Cancel every operation in flight on both sockets and on these pipes.
    CancelAll([Option<PipeId>; 2]),
    /// Receive more of a PROXY protocol header from the client into the client -> backend
    /// buffer, after the `offset` bytes already there.
    RecvHeader { offset: usize },
}

impl Action {
    /// Completions the action's operations will produce.
    fn completions(self) -> u32 {
        match self {
            Action::SpliceIn { poll_first, .. } | Action::SpliceOut { poll_first, .. } => {
                1 + u32::from(poll_first)
            }
            Action::CancelAll(_) => 0,
            Action::RecvHeader { .. } => 1,
            _ => 1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlowState {
    /// Not started (still connecting).
    Idle,
    /// Copy: recv in flight.
    Reading,
    /// Copy: send in flight.
    Writing,
    /// Splice: `POLLIN` poll in flight, no pipe held.
    Polling,
    /// Splice: socket -> pipe in flight.
    SplicingIn,
    /// Splice: pipe -> socket in flight.
    SplicingOut,
    /// EOF seen; shutdown of the destination in flight.
    ShuttingDown,
    Done,
}

#[derive(Debug, Clone, Copy)]
struct Flow {
    state: FlowState,
    /// Copy: bytes in the buffer from the last receive, and how many are sent.
    len: usize,
    sent: usize,
    /// Splice: the pipe held, and the bytes in it.
    pipe: Option<PipeId>,
    in_pipe: usize,
    /// The last splice in filled the pipe: the source is streaming.
    streaming: bool,
    /// This direction forwards by splice (from the start, or switched by `auto`).
    splice: bool,
    /// Full reads in a row (for `auto`).
    streak: u8,
    /// Bytes forwarded in this direction.
    bytes: u64,
}

impl Flow {
    const NEW: Flow = Flow {
        state: FlowState::Idle,
        len: 0,
        sent: 0,
        pipe: None,
        in_pipe: 0,
        streaming: false,
        splice: false,
        streak: 0,
        bytes: 0,
    };
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
    /// Reading the PROXY protocol header of a trusted client (`--accept-proxy`).
    Handshake,
    /// Waiting for a backend connect (possibly a retry).
    Connecting,
    Forwarding,
    /// The backend went away before answering: waiting for in-flight operations, then the
    /// worker connects to another backend and the client's first bytes are sent again.
    Replaying,
    /// Aborted or finished: waiting for in-flight operations, then released.
    Closing,
}

/// A proxied connection.
#[derive(Debug)]
pub struct Conn {
    pub client_fd: RawFd,
    /// `-1` while no backend socket is open.
    pub backend_fd: RawFd,
    pub client_addr: Option<SocketAddr>,
    /// The backend connected to (or being connected to).
    pub backend: Option<BackendId>,
    /// Counted in the backend's active connections.
    pub counted: bool,
    /// Backends tried so far (retries skip them). Keeps its capacity across reuse.
    pub tried: Vec<BackendId>,
    pub connect_started_ns: u64,
    pub last_active_ns: u64,
    fwd: Forwarding,
    phase: Phase,
    flows: [Flow; 2],
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
    /// The PROXY protocol version to send the backend being connected to.
    pub send_proxy: Option<crate::config::ProxyProtocol>,
    /// The address the client connected to, when a PROXY header told it.
    pub orig_dst: Option<SocketAddr>,
    /// The source IP counted in the per-source limits table (released at close).
    pub source: Option<std::net::IpAddr>,
    /// Waiting since then for a backend below its max-conns.
    pub queued_ns: Option<u64>,
    /// The copy buffers' pages were given back since the last read.
    pages_released: bool,
}

impl Conn {
    pub fn new() -> Conn {
        Conn {
            client_fd: -1,
            backend_fd: -1,
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
            flows: [Flow::NEW; 2],
            inflight: 0,
            reset: false,
            header: 0,
            up_chunks: 0,
            answered: false,
            early: 0,
            send_proxy: None,
            orig_dst: None,
            source: None,
            queued_ns: None,
            pages_released: false,
        }
    }

    /// Resets the state for a newly accepted client socket.
    pub fn open(
        &mut self,
        client_fd: RawFd,
        client_addr: Option<SocketAddr>,
        fwd: Forwarding,
        now_ns: u64,
    ) {
        self.client_fd = client_fd;
        self.backend_fd = -1;
        self.client_addr = client_addr;
        self.backend = None;
        self.counted = false;
        self.tried.clear();
        self.connect_started_ns = now_ns;
        self.last_active_ns = now_ns;
        self.fwd = fwd;
        self.phase = Phase::Connecting;
        self.flows = [Flow::NEW; 2];
        self.inflight = 0;
        self.reset = false;
        self.header = 0;
        self.up_chunks = 0;
        self.answered = false;
        self.early = 0;
        self.send_proxy = None;
        self.orig_dst = None;
        self.source = None;
        self.queued_ns = None;
        self.pages_released = false;
    }

    /// A trusted client: read its PROXY header before connecting anywhere.
    pub fn open_handshake(&mut self, out: &mut Vec<Action>) {
        self.phase = Phase::Handshake;
        self.flows[UP].len = 0;
        self.emit(Action::RecvHeader { offset: 0 }, out);
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
        self.flows[UP].len += res as usize;
        Some(self.flows[UP].len)
    }

    /// The copy buffers hold nothing the connection still needs (no send in flight, no
    /// first chunk kept for a replay) and it has been quiet for `quiet_ns`: their memory
    /// can go back to the kernel until the next read. Each quiet spell releases once.
    pub fn buffers_reclaimable(&self, now_ns: u64, quiet_ns: u64) -> bool {
        self.phase == Phase::Forwarding
            && !self.pages_released
            && now_ns.saturating_sub(self.last_active_ns) >= quiet_ns
            && self.flows.iter().all(|f| f.state != FlowState::Writing)
            && (self.answered || self.up_chunks != 1)
    }

    pub fn pages_released(&mut self) {
        self.pages_released = true;
    }

    /// Header bytes read so far (while reading it).
    pub fn header_received(&self) -> usize {
        if self.phase == Phase::Handshake {
            self.flows[UP].len
        } else {
            0
        }
    }

    /// The header is not complete yet: read more after what is there.
    pub fn read_more_header(&mut self, out: &mut Vec<Action>) {
        let offset = self.flows[UP].len;
        self.emit(Action::RecvHeader { offset }, out);
    }

    /// The header is read; the worker moved the `early` client bytes that followed it to
    /// the start of the buffer. Next: connect.
    pub fn header_done(&mut self, early: usize) {
        self.phase = Phase::Connecting;
        self.flows[UP].len = 0;
        self.early = early;
        if early > 0 {
            self.up_chunks = 1;
        }
    }

    /// Client bytes waiting at the start of the client -> backend buffer.
    pub fn early(&self) -> usize {
        self.early
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn inflight(&self) -> u32 {
        self.inflight
    }

    /// Bytes forwarded client -> backend and backend -> client.
    pub fn bytes(&self) -> (u64, u64) {
        let up = self.flows[UP].bytes.saturating_sub(self.header as u64);
        (up, self.flows[DOWN].bytes)
    }

    /// Whether closing should send a reset.
    pub fn reset(&self) -> bool {
        self.reset
    }

    /// Pipes still held (only after an abort: they may hold bytes and must be discarded).
    pub fn take_pipes(&mut self) -> [Option<PipeId>; 2] {
        [self.flows[UP].pipe.take(), self.flows[DOWN].pipe.take()]
    }

    /// Whether direction `dir` has switched to (or started in) splice.
    pub fn splicing(&self, dir: usize) -> bool {
        self.flows[dir].splice
    }

    /// The worker pushed `n` operations for this connection outside [`Action`]s.
    /// The last read of `dir` drained its socket (it came back short), so the next one is
    /// likely to find nothing yet: the ring should wait for data before trying (request and
    /// response traffic), rather than try, fail and then wait.
    pub fn expects_wait(&self, dir: usize) -> bool {
        let flow = &self.flows[dir];
        flow.bytes > 0 && flow.streak == 0
    }

    pub fn submitted(&mut self, n: u32) {
        self.inflight += n;
    }

    /// A completion for this connection arrived (any kind). Call before the handler.
    pub fn completed(&mut self) {
        self.inflight = self.inflight.saturating_sub(1);
    }

    /// True when the slot can be released: closing with nothing in flight.
    pub fn releasable(&self) -> bool {
        self.phase == Phase::Closing && self.inflight == 0
    }

    /// The backend connect succeeded: start both directions. With `header > 0` the worker
    /// has put that many bytes (a PROXY protocol header) in the client -> backend buffer,
    /// ahead of the [`Conn::early`] client bytes; both are sent before anything else.
    pub fn connected(&mut self, now_ns: u64, header: usize, out: &mut Vec<Action>) {
        if self.phase != Phase::Connecting {
            return;
        }
        self.phase = Phase::Forwarding;
        self.last_active_ns = now_ns;
        self.header = header;
        let prefill = header + std::mem::take(&mut self.early);
        let splice = self.fwd.mode == ForwardMode::Splice;
        for dir in [UP, DOWN] {
            self.flows[dir].splice = splice;
            if dir == UP && prefill > 0 {
                let flow = &mut self.flows[UP];
                flow.len = prefill;
                flow.sent = 0;
                flow.splice = false;
                flow.state = FlowState::Writing;
                self.emit(
                    Action::Send {
                        dir: UP,
                        from: 0,
                        to: prefill,
                    },
                    out,
                );
            } else if splice {
                self.flows[dir].state = FlowState::Polling;
                self.emit(Action::PollIn(dir), out);
            } else {
                self.flows[dir].state = FlowState::Reading;
                self.emit(Action::Recv(dir), out);
            }
        }
    }

    /// Handles the completion of a forwarding operation.
    pub fn on_io(
        &mut self,
        op: OpKind,
        res: i32,
        now_ns: u64,
        pipes: &mut dyn Pipes,
        out: &mut Vec<Action>,
    ) {
        if self.phase == Phase::Replaying && op == OpKind::Recv0 && res > 0 {
            // The client's pending read won the race with its cancellation: the buffer no
            // longer holds the first chunk alone, so it cannot be sent again.
            self.phase = Phase::Forwarding;
            return self.abort(true, out);
        }
        if self.phase != Phase::Forwarding {
            return; // closing or replaying: late results of cancelled operations don't matter
        }
        let Some(dir) = op.dir() else {
            return; // a linked poll: its splice reports what happened
        };
        match op {
            OpKind::Recv0 | OpKind::Recv1 => self.on_recv(dir, res, now_ns, pipes, out),
            OpKind::Send0 | OpKind::Send1 => self.on_send(dir, res, now_ns, pipes, out),
            OpKind::PollIn0 | OpKind::PollIn1 => self.on_readable(dir, res, pipes, out),
            OpKind::SpliceIn0 | OpKind::SpliceIn1 => {
                self.on_splice_in(dir, res, now_ns, pipes, out)
            }
            OpKind::SpliceOut0 | OpKind::SpliceOut1 => {
                self.on_splice_out(dir, res, now_ns, pipes, out)
            }
            OpKind::Shutdown0 | OpKind::Shutdown1 => {
                // ENOTCONN after the peer already went away is not worth a reset; the
                // other direction finds out on its own.
                self.flows[dir].state = FlowState::Done;
                if self.flows.iter().all(|f| f.state == FlowState::Done) {
                    self.phase = Phase::Closing;
                }
            }
            _ => {}
        }
    }

    fn on_recv(
        &mut self,
        dir: usize,
        res: i32,
        now_ns: u64,
        pipes: &mut dyn Pipes,
        out: &mut Vec<Action>,
    ) {
        if dir == DOWN && res <= 0 && self.replayable(res < 0) {
            return self.begin_replay(out);
        }
        if res > 0 {
            self.pages_released = false;
            if dir == UP {
                self.up_chunks += 1;
            } else {
                self.answered = true;
            }
        }
        match res {
            n if n > 0 => {
                let n = n as usize;
                let flow = &mut self.flows[dir];
                flow.streak = if n == self.fwd.buf_size {
                    flow.streak.saturating_add(1)
                } else {
                    0
                };
                flow.len = n;
                flow.sent = 0;
                flow.state = FlowState::Writing;
                self.last_active_ns = now_ns;
                self.emit(
                    Action::Send {
                        dir,
                        from: 0,
                        to: n,
                    },
                    out,
                );
            }
            0 => self.eof(dir, pipes, out),
            _ => self.abort(true, out),
        }
    }

    fn on_send(
        &mut self,
        dir: usize,
        res: i32,
        now_ns: u64,
        pipes: &mut dyn Pipes,
        out: &mut Vec<Action>,
    ) {
        if dir == UP && res < 0 && self.replayable(true) {
            return self.begin_replay(out);
        }
        if res <= 0 {
            // A zero-byte send of a non-empty range would repeat forever: treat as error.
            return self.abort(true, out);
        }
        let flow = &mut self.flows[dir];
        flow.sent += res as usize;
        flow.bytes += res as u64;
        self.last_active_ns = now_ns;
        if flow.sent < flow.len {
            let (from, to) = (flow.sent, flow.len);
            self.emit(Action::Send { dir, from, to }, out);
        } else {
            self.read_next(dir, pipes, out);
        }
    }

    /// The buffer of `dir` is empty: read more, by copy or by splice.
    fn read_next(&mut self, dir: usize, pipes: &mut dyn Pipes, out: &mut Vec<Action>) {
        let flow = &mut self.flows[dir];
        if !flow.splice && self.fwd.mode == ForwardMode::Auto && flow.streak >= STREAM_STREAK {
            // Streaming: switch to splice with the pollable-and-linked form right away.
            if let Some(pipe) = pipes.acquire() {
                flow.splice = true;
                flow.pipe = Some(pipe);
                flow.state = FlowState::SplicingIn;
                return self.emit(
                    Action::SpliceIn {
                        dir,
                        pipe,
                        poll_first: true,
                    },
                    out,
                );
            }
        }
        if flow.splice {
            flow.state = FlowState::Polling;
            self.emit(Action::PollIn(dir), out);
        } else {
            flow.state = FlowState::Reading;
            self.emit(Action::Recv(dir), out);
        }
    }

    /// Splice mode: the source is readable. Take a pipe, or copy this chunk without one.
    fn on_readable(&mut self, dir: usize, res: i32, pipes: &mut dyn Pipes, out: &mut Vec<Action>) {
        if res < 0 {
            return self.abort(true, out);
        }
        let flow = &mut self.flows[dir];
        match pipes.acquire() {
            Some(pipe) => {
                flow.pipe = Some(pipe);
                flow.state = FlowState::SplicingIn;
                self.emit(
                    Action::SpliceIn {
                        dir,
                        pipe,
                        poll_first: false,
                    },
                    out,
                );
            }
            None => {
                flow.state = FlowState::Reading;
                self.emit(Action::Recv(dir), out);
            }
        }
    }

    fn on_splice_in(
        &mut self,
        dir: usize,
        res: i32,
        now_ns: u64,
        pipes: &mut dyn Pipes,
        out: &mut Vec<Action>,
    ) {
        let flow = &mut self.flows[dir];
        let Some(pipe) = flow.pipe else {
            return self.abort(true, out);
        };
        match res {
            n if n > 0 => {
                let n = n as usize;
                flow.in_pipe = n;
                flow.streaming = n >= self.fwd.pipe_size;
                flow.state = FlowState::SplicingOut;
                self.last_active_ns = now_ns;
                self.emit(
                    Action::SpliceOut {
                        dir,
                        pipe,
                        len: n,
                        poll_first: false,
                    },
                    out,
                );
            }
            0 => {
                flow.pipe = None;
                pipes.release(pipe); // empty: nothing was spliced into it
                self.eof(dir, pipes, out);
            }
            e if e == -libc::EAGAIN => {
                // Woken without data: give the pipe back and wait again.
                flow.pipe = None;
                flow.streaming = false;
                pipes.release(pipe);
                flow.state = FlowState::Polling;
                self.emit(Action::PollIn(dir), out);
            }
            _ => self.abort(true, out),
        }
    }

    fn on_splice_out(
        &mut self,
        dir: usize,
        res: i32,
        now_ns: u64,
        pipes: &mut dyn Pipes,
        out: &mut Vec<Action>,
    ) {
        let flow = &mut self.flows[dir];
        let Some(pipe) = flow.pipe else {
            return self.abort(true, out);
        };
        if res > 0 {
            let m = (res as usize).min(flow.in_pipe);
            flow.in_pipe -= m;
            flow.bytes += m as u64;
            self.last_active_ns = now_ns;
        } else if res != 0 && res != -libc::EAGAIN {
            return self.abort(true, out);
        }
        let flow = &mut self.flows[dir];
        if flow.in_pipe > 0 {
            // Bytes left in the pipe: wait for room at the destination, then go on.
            let len = flow.in_pipe;
            return self.emit(
                Action::SpliceOut {
                    dir,
                    pipe,
                    len,
                    poll_first: true,
                },
                out,
            );
        }
        if flow.streaming {
            flow.state = FlowState::SplicingIn;
            self.emit(
                Action::SpliceIn {
                    dir,
                    pipe,
                    poll_first: true,
                },
                out,
            );
        } else {
            flow.pipe = None;
            pipes.release(pipe);
            flow.state = FlowState::Polling;
            self.emit(Action::PollIn(dir), out);
        }
    }

    /// EOF from the source of `dir` with nothing buffered: pass it on.
    fn eof(&mut self, dir: usize, _pipes: &mut dyn Pipes, out: &mut Vec<Action>) {
        self.flows[dir].state = FlowState::ShuttingDown;
        self.emit(Action::Shutdown(dir), out);
    }

    /// Can the client's bytes so far be sent again to another backend? Only while the
    /// backend has answered nothing, the client has sent one chunk (still in the copy
    /// buffer: the next read has not completed) and has not half-closed, and no PROXY
    /// header took the buffer. This is HAProxy's `retry-on empty-response` at layer 4: a
    /// backend that dies with a request inside costs the client nothing.
    ///
    /// After the client half-closed, only a reset counts: a backend that reads a one-way
    /// upload and closes cleanly has done its job, and sending it again would duplicate it.
    fn replayable(&self, reset: bool) -> bool {
        let up = &self.flows[UP];
        let client_done = matches!(up.state, FlowState::ShuttingDown | FlowState::Done);
        self.header == 0
            && !self.answered
            && self.up_chunks == 1
            && !up.splice
            && (matches!(up.state, FlowState::Reading | FlowState::Writing)
                || (client_done && reset))
            && self.flows[DOWN].bytes == 0
    }

    fn begin_replay(&mut self, out: &mut Vec<Action>) {
        self.early = self.flows[UP].len;
        self.phase = Phase::Replaying;
        if self.inflight > 0 {
            out.push(Action::CancelAll([
                self.flows[UP].pipe,
                self.flows[DOWN].pipe,
            ]));
        }
    }

    /// Replaying and nothing in flight: the worker may close the old backend socket and
    /// connect to the next backend.
    pub fn replay_ready(&self) -> bool {
        self.phase == Phase::Replaying && self.inflight == 0
    }

    /// The worker is connecting to the next backend for a replay.
    pub fn replay_connecting(&mut self) {
        self.phase = Phase::Connecting;
        self.flows = [Flow::NEW; 2];
    }

    /// Stops the connection: cancels what is in flight; `reset` closes with RST.
    pub fn abort(&mut self, reset: bool, out: &mut Vec<Action>) {
        if self.phase == Phase::Closing {
            return;
        }
        let was_replaying = self.phase == Phase::Replaying;
        self.phase = Phase::Closing;
        if was_replaying {
            self.reset |= reset;
            return; // its cancellation is already under way
        }
        self.reset |= reset;
        if self.inflight > 0 {
            out.push(Action::CancelAll([
                self.flows[UP].pipe,
                self.flows[DOWN].pipe,
            ]));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool of `n` pipes that remembers what is out.
    struct FakePipes {
        free: Vec<PipeId>,
        out: Vec<PipeId>,
    }

    impl FakePipes {
        fn new(n: u32) -> FakePipes {
            FakePipes {
                free: (0..n).rev().collect(),
                out: Vec::new(),
            }
        }
    }

    impl Pipes for FakePipes {
        fn acquire(&mut self) -> Option<PipeId> {
            let p = self.free.pop()?;
            self.out.push(p);
            Some(p)
        }
        fn release(&mut self, pipe: PipeId) {
            self.out.retain(|&p| p != pipe);
            self.free.push(pipe);
        }
    }

    const COPY: Forwarding = Forwarding {
        mode: ForwardMode::Copy,
        buf_size: 100,
        pipe_size: 1000,
    };

    fn forwarding(fwd: Forwarding) -> (Conn, Vec<Action>) {
        let mut c = Conn::new();
        c.open(5, None, fwd, 0);
        c.submitted(2); // connect + link timeout
        c.completed();
        c.completed();
        let mut out = Vec::new();
        c.connected(1, 0, &mut out);
        assert_eq!(c.inflight(), 2);
        (c, out)
    }

    /// Feeds one completion (the op had been counted in flight).
    fn feed(c: &mut Conn, op: OpKind, res: i32, pipes: &mut FakePipes) -> Vec<Action> {
        let mut out = Vec::new();
        c.completed();
        c.on_io(op, res, 10, pipes, &mut out);
        out
    }

    #[test]
    fn copy_starts_both_directions() {
        let (_, out) = forwarding(COPY);
        assert_eq!(out, vec![Action::Recv(UP), Action::Recv(DOWN)]);
    }

    #[test]
    fn short_send_is_resubmitted_then_reads_again() {
        let (mut c, _) = forwarding(COPY);
        let p = &mut FakePipes::new(0);
        assert_eq!(
            feed(&mut c, OpKind::Recv0, 100, p),
            vec![Action::Send {
                dir: UP,
                from: 0,
                to: 100
            }]
        );
        assert_eq!(
            feed(&mut c, OpKind::Send0, 40, p),
            vec![Action::Send {
                dir: UP,
                from: 40,
                to: 100
            }]
        );
        assert_eq!(feed(&mut c, OpKind::Send0, 60, p), vec![Action::Recv(UP)]);
        assert_eq!(c.bytes(), (100, 0));
        assert_eq!(c.last_active_ns, 10);
    }

    #[test]
    fn a_drained_socket_is_waited_for_a_streaming_one_is_not() {
        let (mut c, _) = forwarding(COPY);
        let p = &mut FakePipes::new(0);
        // Nothing forwarded yet: the client's first bytes may already be there.
        assert!(!c.expects_wait(UP));
        feed(&mut c, OpKind::Recv0, 60, p);
        feed(&mut c, OpKind::Send0, 60, p);
        assert!(c.expects_wait(UP), "a short read drained the socket");
        let full = c.fwd.buf_size as i32;
        feed(&mut c, OpKind::Recv0, full, p);
        feed(&mut c, OpKind::Send0, full, p);
        assert!(!c.expects_wait(UP), "a full read: more is probably queued");
        assert!(!c.expects_wait(DOWN));
    }

    #[test]
    fn half_close_each_way_then_close() {
        let (mut c, _) = forwarding(COPY);
        let p = &mut FakePipes::new(0);
        assert_eq!(
            feed(&mut c, OpKind::Recv0, 0, p),
            vec![Action::Shutdown(UP)]
        );
        feed(&mut c, OpKind::Shutdown0, 0, p);
        assert_eq!(
            c.phase(),
            Phase::Forwarding,
            "the other direction keeps flowing"
        );
        assert_eq!(
            feed(&mut c, OpKind::Recv1, 10, p),
            vec![Action::Send {
                dir: DOWN,
                from: 0,
                to: 10
            }]
        );
        feed(&mut c, OpKind::Send1, 10, p);
        feed(&mut c, OpKind::Recv1, 0, p);
        feed(&mut c, OpKind::Shutdown1, 0, p);
        assert!(c.releasable());
        assert!(!c.reset());
    }

    #[test]
    fn reset_aborts_both_and_waits_for_inflight() {
        let (mut c, _) = forwarding(COPY);
        let p = &mut FakePipes::new(0);
        assert_eq!(
            feed(&mut c, OpKind::Recv1, -libc::ECONNRESET, p),
            vec![Action::CancelAll([None, None])]
        );
        assert_eq!(c.phase(), Phase::Closing);
        assert!(!c.releasable(), "the client recv is still in flight");
        assert!(feed(&mut c, OpKind::Recv0, -libc::ECANCELED, p).is_empty());
        assert!(c.releasable());
        assert!(c.reset());
    }

    #[test]
    fn zero_byte_send_is_an_error() {
        let (mut c, _) = forwarding(COPY);
        let p = &mut FakePipes::new(0);
        feed(&mut c, OpKind::Recv0, 10, p);
        feed(&mut c, OpKind::Send0, 0, p);
        assert_eq!(c.phase(), Phase::Closing);
    }

    #[test]
    fn splice_idle_holds_no_pipe_and_streaming_keeps_it() {
        let fwd = Forwarding {
            mode: ForwardMode::Splice,
            ..COPY
        };
        let (mut c, out) = forwarding(fwd);
        assert_eq!(out, vec![Action::PollIn(UP), Action::PollIn(DOWN)]);
        let p = &mut FakePipes::new(4);
        assert!(p.out.is_empty(), "idle: no pipe held");
        let a = feed(&mut c, OpKind::PollIn1, libc::POLLIN as i32, p);
        assert_eq!(
            a,
            vec![Action::SpliceIn {
                dir: DOWN,
                pipe: 0,
                poll_first: false
            }]
        );
        // A full pipe: streaming.
        let a = feed(&mut c, OpKind::SpliceIn1, 1000, p);
        assert_eq!(
            a,
            vec![Action::SpliceOut {
                dir: DOWN,
                pipe: 0,
                len: 1000,
                poll_first: false
            }]
        );
        // Partly out: wait for room, then the rest.
        let a = feed(&mut c, OpKind::SpliceOut1, 600, p);
        assert_eq!(
            a,
            vec![Action::SpliceOut {
                dir: DOWN,
                pipe: 0,
                len: 400,
                poll_first: true
            }]
        );
        c.completed(); // the linked poll
                       // EAGAIN with bytes in the pipe means "wait for room", never "empty".
        let a = feed(&mut c, OpKind::SpliceOut1, -libc::EAGAIN, p);
        assert_eq!(
            a,
            vec![Action::SpliceOut {
                dir: DOWN,
                pipe: 0,
                len: 400,
                poll_first: true
            }]
        );
        c.completed();
        let a = feed(&mut c, OpKind::SpliceOut1, 400, p);
        assert_eq!(
            a,
            vec![Action::SpliceIn {
                dir: DOWN,
                pipe: 0,
                poll_first: true
            }],
            "streaming keeps the pipe"
        );
        c.completed();
        // A short read: quiet now; the pipe goes back after it drains.
        feed(&mut c, OpKind::SpliceIn1, 10, p);
        let a = feed(&mut c, OpKind::SpliceOut1, 10, p);
        assert_eq!(a, vec![Action::PollIn(DOWN)]);
        assert!(p.out.is_empty());
        assert_eq!(c.bytes(), (0, 1010));
        // EOF on splice passes on as shutdown.
        feed(&mut c, OpKind::PollIn1, 1, p);
        assert_eq!(
            feed(&mut c, OpKind::SpliceIn1, 0, p),
            vec![Action::Shutdown(DOWN)]
        );
        assert!(p.out.is_empty());
    }

    #[test]
    fn splice_without_a_free_pipe_copies_the_chunk() {
        let fwd = Forwarding {
            mode: ForwardMode::Splice,
            ..COPY
        };
        let (mut c, _) = forwarding(fwd);
        let p = &mut FakePipes::new(0);
        assert_eq!(feed(&mut c, OpKind::PollIn0, 1, p), vec![Action::Recv(UP)]);
        feed(&mut c, OpKind::Recv0, 50, p);
        assert_eq!(feed(&mut c, OpKind::Send0, 50, p), vec![Action::PollIn(UP)]);
    }

    #[test]
    fn auto_switches_after_exactly_a_streak_of_full_reads() {
        let fwd = Forwarding {
            mode: ForwardMode::Auto,
            ..COPY
        };
        let (mut c, _) = forwarding(fwd);
        let p = &mut FakePipes::new(1);
        let full = c.fwd.buf_size as i32;
        // One full read short of a streak, then a short read: the count starts again.
        for _ in 1..STREAM_STREAK {
            feed(&mut c, OpKind::Recv1, full, p);
            assert_eq!(
                feed(&mut c, OpKind::Send1, full, p),
                vec![Action::Recv(DOWN)]
            );
        }
        feed(&mut c, OpKind::Recv1, full - 1, p);
        let a = feed(&mut c, OpKind::Send1, full - 1, p);
        assert_eq!(a, vec![Action::Recv(DOWN)]);
        assert!(!c.splicing(DOWN));
        // Then exactly STREAM_STREAK full reads: copied up to the last, spliced after it.
        for i in 1..=STREAM_STREAK {
            feed(&mut c, OpKind::Recv1, full, p);
            let a = feed(&mut c, OpKind::Send1, full, p);
            if i < STREAM_STREAK {
                assert_eq!(a, vec![Action::Recv(DOWN)], "after full read {i}");
                assert!(!c.splicing(DOWN), "switched after {i} full reads");
            } else {
                assert_eq!(
                    a,
                    vec![Action::SpliceIn {
                        dir: DOWN,
                        pipe: 0,
                        poll_first: true
                    }],
                    "not switched after {i} full reads"
                );
            }
        }
        assert!(c.splicing(DOWN));
        assert!(!c.splicing(UP));
    }

    #[test]
    fn proxy_header_goes_first_and_is_not_counted() {
        let mut c = Conn::new();
        c.open(5, None, COPY, 0);
        let mut out = Vec::new();
        c.connected(1, 28, &mut out);
        assert_eq!(
            out,
            vec![
                Action::Send {
                    dir: UP,
                    from: 0,
                    to: 28
                },
                Action::Recv(DOWN)
            ]
        );
        let p = &mut FakePipes::new(0);
        assert_eq!(feed(&mut c, OpKind::Send0, 28, p), vec![Action::Recv(UP)]);
        assert_eq!(c.bytes(), (0, 0));
        feed(&mut c, OpKind::Recv0, 10, p);
        feed(&mut c, OpKind::Send0, 10, p);
        assert_eq!(c.bytes(), (10, 0));
    }

    #[test]
    fn backend_gone_before_answering_replays_the_first_chunk() {
        let (mut c, _) = forwarding(COPY);
        let p = &mut FakePipes::new(0);
        feed(&mut c, OpKind::Recv0, 40, p);
        assert_eq!(feed(&mut c, OpKind::Send0, 40, p), vec![Action::Recv(UP)]);
        // The backend dies: EOF without a byte of answer.
        assert_eq!(
            feed(&mut c, OpKind::Recv1, 0, p),
            vec![Action::CancelAll([None, None])]
        );
        assert_eq!(c.phase(), Phase::Replaying);
        assert!(!c.replay_ready(), "the client read is still in flight");
        feed(&mut c, OpKind::Recv0, -libc::ECANCELED, p);
        assert!(c.replay_ready());
        c.replay_connecting();
        c.submitted(2);
        c.completed();
        c.completed();
        let mut out = Vec::new();
        c.connected(20, 0, &mut out);
        assert_eq!(
            out,
            vec![
                Action::Send {
                    dir: UP,
                    from: 0,
                    to: 40
                },
                Action::Recv(DOWN)
            ]
        );
    }

    #[test]
    fn no_replay_once_the_backend_answered_or_a_second_chunk_came() {
        let (mut c, _) = forwarding(COPY);
        let p = &mut FakePipes::new(0);
        feed(&mut c, OpKind::Recv0, 40, p);
        feed(&mut c, OpKind::Send0, 40, p);
        feed(&mut c, OpKind::Recv1, 5, p);
        feed(&mut c, OpKind::Send1, 5, p);
        feed(&mut c, OpKind::Recv1, -libc::ECONNRESET, p);
        assert_eq!(c.phase(), Phase::Closing);

        let (mut c, _) = forwarding(COPY);
        feed(&mut c, OpKind::Recv0, 40, p);
        feed(&mut c, OpKind::Send0, 40, p);
        feed(&mut c, OpKind::Recv0, 10, p);
        feed(&mut c, OpKind::Recv1, 0, p);
        assert_ne!(c.phase(), Phase::Replaying);
    }

    /// Opens a connection from a trusted source and feeds its header reads.
    fn handshake(reads: &[i32]) -> (Conn, Vec<Action>) {
        let mut c = Conn::new();
        c.open(5, None, COPY, 0);
        let mut out = Vec::new();
        c.open_handshake(&mut out);
        for (i, &r) in reads.iter().enumerate() {
            c.completed();
            if c.header_bytes(r, &mut out).is_some() && i + 1 < reads.len() {
                c.read_more_header(&mut out);
            }
        }
        (c, out)
    }

    #[test]
    fn a_header_in_pieces_is_read_after_what_is_there() {
        let (c, out) = handshake(&[7, 5]);
        assert_eq!(c.inflight(), 0);
        assert_eq!(
            out,
            vec![
                Action::RecvHeader { offset: 0 },
                Action::RecvHeader { offset: 7 }
            ]
        );
        assert_eq!(c.header_received(), 12);
        assert_eq!(c.phase(), Phase::Handshake);
    }

    #[test]
    fn a_client_gone_during_its_header_is_closed() {
        let (c, _) = handshake(&[7, 0]);
        assert_eq!(c.phase(), Phase::Closing);
        assert!(c.releasable());
        let (c, out) = handshake(&[-libc::ECONNRESET]);
        assert!(c.releasable() && c.reset());
        assert_eq!(out, vec![Action::RecvHeader { offset: 0 }]);
    }

    #[test]
    fn bytes_after_the_header_go_first_behind_our_own_header() {
        let (mut c, _) = handshake(&[60]);
        c.header_done(25); // a 35-byte header, then 25 client bytes
        assert_eq!(c.phase(), Phase::Connecting);
        assert_eq!(c.early(), 25);
        c.submitted(2);
        c.completed();
        c.completed();
        let mut out = Vec::new();
        c.connected(1, 16, &mut out); // we send a 16-byte header ahead of them
        assert_eq!(
            out,
            vec![
                Action::Send {
                    dir: UP,
                    from: 0,
                    to: 41
                },
                Action::Recv(DOWN)
            ]
        );
        let p = &mut FakePipes::new(0);
        feed(&mut c, OpKind::Send0, 41, p);
        assert_eq!(c.bytes(), (25, 0), "our header is not counted as forwarded");
    }

    #[test]
    fn bytes_after_the_header_can_be_replayed() {
        let (mut c, _) = handshake(&[60]);
        c.header_done(25);
        c.submitted(2);
        c.completed();
        c.completed();
        let mut out = Vec::new();
        c.connected(1, 0, &mut out);
        let p = &mut FakePipes::new(0);
        assert_eq!(feed(&mut c, OpKind::Send0, 25, p), vec![Action::Recv(UP)]);
        feed(&mut c, OpKind::Recv1, 0, p); // the backend closes without answering
        assert_eq!(c.phase(), Phase::Replaying);
        feed(&mut c, OpKind::Recv0, -libc::ECANCELED, p);
        assert!(c.replay_ready());
        c.replay_connecting();
        c.submitted(2);
        c.completed();
        c.completed();
        let mut out = Vec::new();
        c.connected(2, 0, &mut out);
        assert_eq!(
            out[0],
            Action::Send {
                dir: UP,
                from: 0,
                to: 25
            }
        );
    }

    #[test]
    fn a_half_closed_request_is_replayed_on_reset_only() {
        for (backend_res, replays) in [(-libc::ECONNRESET, true), (0, false)] {
            let (mut c, _) = forwarding(COPY);
            let p = &mut FakePipes::new(0);
            feed(&mut c, OpKind::Recv0, 40, p);
            feed(&mut c, OpKind::Send0, 40, p);
            // The client half-closes: EOF passed on as a shutdown.
            assert_eq!(
                feed(&mut c, OpKind::Recv0, 0, p),
                vec![Action::Shutdown(UP)]
            );
            feed(&mut c, OpKind::Shutdown0, 0, p);
            feed(&mut c, OpKind::Recv1, backend_res, p);
            assert_eq!(c.phase() == Phase::Replaying, replays, "res {backend_res}");
            if replays {
                assert!(c.replay_ready());
                c.replay_connecting();
                c.submitted(2);
                c.completed();
                c.completed();
                let mut out = Vec::new();
                c.connected(2, 0, &mut out);
                assert_eq!(
                    out[0],
                    Action::Send {
                        dir: UP,
                        from: 0,
                        to: 40
                    }
                );
            }
        }
    }

    #[test]
    fn a_late_client_read_during_replay_aborts() {
        let (mut c, _) = forwarding(COPY);
        let p = &mut FakePipes::new(0);
        feed(&mut c, OpKind::Recv0, 40, p);
        feed(&mut c, OpKind::Send0, 40, p);
        feed(&mut c, OpKind::Recv1, -libc::ECONNRESET, p);
        assert_eq!(c.phase(), Phase::Replaying);
        feed(&mut c, OpKind::Recv0, 7, p);
        assert_eq!(c.phase(), Phase::Closing);
        assert!(c.releasable());
    }

    #[test]
    fn abort_while_splicing_hands_back_the_pipe_for_discard() {
        let fwd = Forwarding {
            mode: ForwardMode::Splice,
            ..COPY
        };
        let (mut c, _) = forwarding(fwd);
        let p = &mut FakePipes::new(2);
        feed(&mut c, OpKind::PollIn0, 1, p);
        let a = feed(&mut c, OpKind::PollIn1, -libc::ECONNRESET, p);
        assert_eq!(a, vec![Action::CancelAll([Some(0), None])]);
        feed(&mut c, OpKind::SpliceIn0, -libc::ECANCELED, p);
        assert!(c.releasable());
        assert_eq!(c.take_pipes(), [Some(0), None]);
    }
}
