//! One proxied connection as a state machine, apart from I/O: it is fed completions and the
//! time, and answers with the [`Action`]s the worker turns into io_uring operations (the
//! sans-IO shape of `quinn-proto`).
//!
//! Two directions (flows) run at once: `UP` = client -> backend, `DOWN` = backend -> client.
//! Each has at most one operation in flight, recv then send, so a connection holds at most
//! one buffer per direction whatever the peers do: a slow reader stops our reads from the
//! writer, and TCP flow control pushes back on it.
//!
//! Closing: both directions done (EOF passed on as `shutdown(SHUT_WR)`) closes normally; an
//! error or reset on either side aborts both, and a reset is passed on as a reset. The slot
//! is released only when no operation of it is in flight any more.

use std::net::SocketAddr;
use std::os::fd::RawFd;

use crate::backend::BackendId;

use super::token::OpKind;

/// Client -> backend.
pub const UP: usize = 0;
/// Backend -> client.
pub const DOWN: usize = 1;

/// What the worker must do for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Receive from the source of `dir` into that direction's buffer.
    Recv(usize),
    /// Send `buf[from..to]` of direction `dir` to its destination.
    Send { dir: usize, from: usize, to: usize },
    /// `shutdown(SHUT_WR)` the destination of `dir`.
    Shutdown(usize),
    /// Cancel every operation in flight on both sockets.
    CancelAll,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlowState {
    /// Not started (still connecting).
    Idle,
    Reading,
    Writing,
    /// EOF seen; shutdown of the destination in flight.
    ShuttingDown,
    Done,
}

#[derive(Debug, Clone, Copy)]
struct Flow {
    state: FlowState,
    /// Bytes in the buffer from the last receive.
    len: usize,
    /// Bytes of them already sent.
    sent: usize,
    /// Bytes forwarded in this direction.
    bytes: u64,
}

impl Flow {
    const NEW: Flow = Flow {
        state: FlowState::Idle,
        len: 0,
        sent: 0,
        bytes: 0,
    };
}

/// Where the connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for a backend connect (possibly a retry).
    Connecting,
    Forwarding,
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
    phase: Phase,
    flows: [Flow; 2],
    /// Operations submitted whose completion has not arrived.
    inflight: u32,
    /// Close with a reset rather than a FIN.
    reset: bool,
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
            phase: Phase::Closing,
            flows: [Flow::NEW; 2],
            inflight: 0,
            reset: false,
        }
    }

    /// Resets the state for a newly accepted client socket.
    pub fn open(&mut self, client_fd: RawFd, client_addr: Option<SocketAddr>, now_ns: u64) {
        self.client_fd = client_fd;
        self.backend_fd = -1;
        self.client_addr = client_addr;
        self.backend = None;
        self.counted = false;
        self.tried.clear();
        self.connect_started_ns = now_ns;
        self.last_active_ns = now_ns;
        self.phase = Phase::Connecting;
        self.flows = [Flow::NEW; 2];
        self.inflight = 0;
        self.reset = false;
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn inflight(&self) -> u32 {
        self.inflight
    }

    /// Bytes forwarded client -> backend and backend -> client.
    pub fn bytes(&self) -> (u64, u64) {
        (self.flows[UP].bytes, self.flows[DOWN].bytes)
    }

    /// Whether closing should send a reset.
    pub fn reset(&self) -> bool {
        self.reset
    }

    /// The worker pushed `n` operations for this connection.
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

    /// The backend connect succeeded: start both directions.
    pub fn connected(&mut self, now_ns: u64, out: &mut Vec<Action>) {
        if self.phase != Phase::Connecting {
            return;
        }
        self.phase = Phase::Forwarding;
        self.last_active_ns = now_ns;
        for dir in [UP, DOWN] {
            self.flows[dir].state = FlowState::Reading;
            self.emit(Action::Recv(dir), out);
        }
    }

    /// Handles the completion of a forwarding operation (recv, send, shutdown).
    pub fn on_io(&mut self, op: OpKind, res: i32, now_ns: u64, out: &mut Vec<Action>) {
        if self.phase != Phase::Forwarding {
            return; // closing: results of cancelled or late operations don't matter
        }
        match op {
            OpKind::Recv0 | OpKind::Recv1 => {
                let dir = if op == OpKind::Recv0 { UP } else { DOWN };
                self.on_recv(dir, res, now_ns, out);
            }
            OpKind::Send0 | OpKind::Send1 => {
                let dir = if op == OpKind::Send0 { UP } else { DOWN };
                self.on_send(dir, res, now_ns, out);
            }
            OpKind::Shutdown0 | OpKind::Shutdown1 => {
                let dir = if op == OpKind::Shutdown0 { UP } else { DOWN };
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

    fn on_recv(&mut self, dir: usize, res: i32, now_ns: u64, out: &mut Vec<Action>) {
        let flow = &mut self.flows[dir];
        match res {
            n if n > 0 => {
                flow.len = n as usize;
                flow.sent = 0;
                flow.state = FlowState::Writing;
                self.last_active_ns = now_ns;
                self.emit(
                    Action::Send {
                        dir,
                        from: 0,
                        to: n as usize,
                    },
                    out,
                );
            }
            0 => {
                flow.state = FlowState::ShuttingDown;
                self.emit(Action::Shutdown(dir), out);
            }
            _ => self.abort(true, out),
        }
    }

    fn on_send(&mut self, dir: usize, res: i32, now_ns: u64, out: &mut Vec<Action>) {
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
            flow.state = FlowState::Reading;
            self.emit(Action::Recv(dir), out);
        }
    }

    /// Stops the connection: cancels what is in flight; `reset` closes with RST.
    pub fn abort(&mut self, reset: bool, out: &mut Vec<Action>) {
        if self.phase == Phase::Closing {
            return;
        }
        self.phase = Phase::Closing;
        self.reset |= reset;
        if self.inflight > 0 {
            out.push(Action::CancelAll);
        }
    }

    fn emit(&mut self, action: Action, out: &mut Vec<Action>) {
        if action != Action::CancelAll {
            self.inflight += 1;
        }
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

    fn forwarding() -> (Conn, Vec<Action>) {
        let mut c = Conn::new();
        c.open(5, None, 0);
        c.submitted(2); // connect + link timeout
        c.completed();
        c.completed();
        let mut out = Vec::new();
        c.connected(1, &mut out);
        assert_eq!(out, vec![Action::Recv(UP), Action::Recv(DOWN)]);
        assert_eq!(c.inflight(), 2);
        out.clear();
        (c, out)
    }

    #[test]
    fn short_send_is_resubmitted_then_reads_again() {
        let (mut c, mut out) = forwarding();
        c.completed();
        c.on_io(OpKind::Recv0, 100, 2, &mut out);
        assert_eq!(
            out,
            vec![Action::Send {
                dir: UP,
                from: 0,
                to: 100
            }]
        );
        out.clear();
        c.completed();
        c.on_io(OpKind::Send0, 40, 3, &mut out);
        assert_eq!(
            out,
            vec![Action::Send {
                dir: UP,
                from: 40,
                to: 100
            }]
        );
        out.clear();
        c.completed();
        c.on_io(OpKind::Send0, 60, 4, &mut out);
        assert_eq!(out, vec![Action::Recv(UP)]);
        assert_eq!(c.bytes(), (100, 0));
        assert_eq!(c.last_active_ns, 4);
    }

    #[test]
    fn half_close_each_way_then_close() {
        let (mut c, mut out) = forwarding();
        c.completed();
        c.on_io(OpKind::Recv0, 0, 2, &mut out);
        assert_eq!(out, vec![Action::Shutdown(UP)]);
        out.clear();
        c.completed();
        c.on_io(OpKind::Shutdown0, 0, 3, &mut out);
        assert_eq!(
            c.phase(),
            Phase::Forwarding,
            "the other direction keeps flowing"
        );
        c.completed();
        c.on_io(OpKind::Recv1, 10, 4, &mut out);
        assert_eq!(
            out,
            vec![Action::Send {
                dir: DOWN,
                from: 0,
                to: 10
            }]
        );
        out.clear();
        c.completed();
        c.on_io(OpKind::Send1, 10, 5, &mut out);
        c.completed();
        c.on_io(OpKind::Recv1, 0, 6, &mut out);
        c.completed();
        c.on_io(OpKind::Shutdown1, 0, 7, &mut out);
        assert!(c.releasable());
        assert!(!c.reset());
    }

    #[test]
    fn reset_aborts_both_and_waits_for_inflight() {
        let (mut c, mut out) = forwarding();
        c.completed();
        c.on_io(OpKind::Recv1, -libc::ECONNRESET, 2, &mut out);
        assert_eq!(out, vec![Action::CancelAll]);
        assert_eq!(c.phase(), Phase::Closing);
        assert!(!c.releasable(), "the client recv is still in flight");
        out.clear();
        c.completed();
        c.on_io(OpKind::Recv0, -libc::ECANCELED, 3, &mut out);
        assert!(out.is_empty());
        assert!(c.releasable());
        assert!(c.reset());
    }

    #[test]
    fn zero_byte_send_is_an_error() {
        let (mut c, mut out) = forwarding();
        c.completed();
        c.on_io(OpKind::Recv0, 10, 2, &mut out);
        out.clear();
        c.completed();
        c.on_io(OpKind::Send0, 0, 3, &mut out);
        assert_eq!(c.phase(), Phase::Closing);
    }
}
