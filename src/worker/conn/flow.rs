//! Forwarding: the two directions of a connection, each a small state machine that has at
//! most one step in flight, so a connection holds at most one buffer (or one pipe) per
//! direction whatever the peers do: a slow reader stops our reads from the writer, and TCP
//! flow control pushes back on it.
//!
//! A direction forwards by copy (recv into a buffer, send it) or by splice (socket -> pipe ->
//! socket, the bytes never enter user space):
//!
//! - splice: wait for `POLLIN` without holding a pipe (an idle connection costs no pipe),
//!   take a pipe from the pool, splice in, splice out until the pipe is empty. While the
//!   source streams (the last splice filled the pipe) the pipe is kept and the next
//!   `POLLIN` poll is linked ahead of the splice; when it goes quiet the pipe goes back. No
//!   pipe free: that chunk is copied instead.
//! - auto: copy until [`STREAM_STREAK`] full reads in a row, then splice.

use super::{Action, Conn, Phase};
use crate::direction::Dir;
use crate::worker::token::OpKind;
use crate::worker::ForwardMode;

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

/// One direction of a connection.
#[derive(Debug, Clone, Copy)]
pub(super) struct Flow {
    state: FlowState,
    /// Copy: bytes in the buffer from the last receive, and how many are sent.
    pub(super) len: usize,
    sent: usize,
    /// Splice: the pipe held, and the bytes in it.
    pub(super) pipe: Option<PipeId>,
    in_pipe: usize,
    /// The last splice in filled the pipe: the source is streaming.
    streaming: bool,
    /// This direction forwards by splice (from the start, or switched by `auto`).
    pub(super) splice: bool,
    /// Full reads in a row (for `auto`).
    pub(super) streak: u8,
    /// Bytes forwarded in this direction.
    pub(super) bytes: u64,
}

impl Flow {
    pub(super) const NEW: Flow = Flow {
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

    /// A send of the copy buffer is in flight.
    pub(super) fn writing(&self) -> bool {
        self.state == FlowState::Writing
    }

    fn done(&self) -> bool {
        self.state == FlowState::Done
    }
}

impl Conn {
    /// Starts both directions once connected; the first `prefill` bytes of the client ->
    /// backend buffer (our PROXY header, then early client bytes) go first.
    pub(super) fn start_flows(&mut self, prefill: usize, out: &mut Vec<Action>) {
        let splice = self.fwd.mode == ForwardMode::Splice;
        for dir in Dir::BOTH {
            self.flows[dir].splice = splice;
            if dir == Dir::Up && prefill > 0 {
                let flow = &mut self.flows[Dir::Up];
                flow.len = prefill;
                flow.sent = 0;
                flow.splice = false;
                flow.state = FlowState::Writing;
                let send = Action::Send {
                    dir,
                    from: 0,
                    to: prefill,
                };
                self.emit(send, out);
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
        if self.phase == Phase::Replaying && op == OpKind::Recv(Dir::Up) && res > 0 {
            // The client's pending read won the race with its cancellation: the buffer no
            // longer holds the first chunk alone, so it cannot be sent again.
            self.phase = Phase::Forwarding;
            return self.abort(true, out);
        }
        if self.phase != Phase::Forwarding {
            return; // closing or replaying: late results of cancelled operations don't matter
        }
        match op {
            OpKind::Recv(dir) => self.on_recv(dir, res, now_ns, out),
            OpKind::Send(dir) => self.on_send(dir, res, now_ns, pipes, out),
            OpKind::PollIn(dir) => self.on_readable(dir, res, pipes, out),
            OpKind::SpliceIn(dir) => self.on_splice_in(dir, res, now_ns, pipes, out),
            OpKind::SpliceOut(dir) => self.on_splice_out(dir, res, now_ns, pipes, out),
            OpKind::Shutdown(dir) => {
                // ENOTCONN after the peer already went away is not worth a reset; the
                // other direction finds out on its own.
                self.flows[dir].state = FlowState::Done;
                if self.flows.iter().all(Flow::done) {
                    self.phase = Phase::Closing;
                }
            }
            _ => {} // a linked poll: its splice reports what happened
        }
    }

    fn on_recv(&mut self, dir: Dir, res: i32, now_ns: u64, out: &mut Vec<Action>) {
        if dir == Dir::Down && res <= 0 && self.replayable(res < 0) {
            return self.begin_replay(out);
        }
        if res > 0 {
            self.pages_released = false;
            match dir {
                Dir::Up => self.up_chunks += 1,
                Dir::Down => self.answered = true,
            }
        }
        match res {
            n if n > 0 => {
                let n = n as usize;
                let full = n == self.fwd.buf_size;
                let flow = &mut self.flows[dir];
                flow.streak = if full {
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
            0 => self.eof(dir, out),
            _ => self.abort(true, out),
        }
    }

    fn on_send(
        &mut self,
        dir: Dir,
        res: i32,
        now_ns: u64,
        pipes: &mut dyn Pipes,
        out: &mut Vec<Action>,
    ) {
        if dir == Dir::Up && res < 0 && self.replayable(true) {
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
    fn read_next(&mut self, dir: Dir, pipes: &mut dyn Pipes, out: &mut Vec<Action>) {
        let auto = self.fwd.mode == ForwardMode::Auto;
        let flow = &mut self.flows[dir];
        if !flow.splice && auto && flow.streak >= STREAM_STREAK {
            // Streaming: switch to splice with the pollable-and-linked form right away.
            if let Some(pipe) = pipes.acquire() {
                flow.splice = true;
                flow.pipe = Some(pipe);
                flow.state = FlowState::SplicingIn;
                let splice = Action::SpliceIn {
                    dir,
                    pipe,
                    poll_first: true,
                };
                return self.emit(splice, out);
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
    fn on_readable(&mut self, dir: Dir, res: i32, pipes: &mut dyn Pipes, out: &mut Vec<Action>) {
        if res < 0 {
            return self.abort(true, out);
        }
        let flow = &mut self.flows[dir];
        match pipes.acquire() {
            Some(pipe) => {
                flow.pipe = Some(pipe);
                flow.state = FlowState::SplicingIn;
                let splice = Action::SpliceIn {
                    dir,
                    pipe,
                    poll_first: false,
                };
                self.emit(splice, out);
            }
            None => {
                flow.state = FlowState::Reading;
                self.emit(Action::Recv(dir), out);
            }
        }
    }

    fn on_splice_in(
        &mut self,
        dir: Dir,
        res: i32,
        now_ns: u64,
        pipes: &mut dyn Pipes,
        out: &mut Vec<Action>,
    ) {
        let pipe_size = self.fwd.pipe_size;
        let flow = &mut self.flows[dir];
        let Some(pipe) = flow.pipe else {
            return self.abort(true, out);
        };
        match res {
            n if n > 0 => {
                let n = n as usize;
                flow.in_pipe = n;
                flow.streaming = n >= pipe_size;
                flow.state = FlowState::SplicingOut;
                self.last_active_ns = now_ns;
                let splice = Action::SpliceOut {
                    dir,
                    pipe,
                    len: n,
                    poll_first: false,
                };
                self.emit(splice, out);
            }
            0 => {
                flow.pipe = None;
                pipes.release(pipe); // empty: nothing was spliced into it
                self.eof(dir, out);
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
        dir: Dir,
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
            let splice = Action::SpliceOut {
                dir,
                pipe,
                len,
                poll_first: true,
            };
            return self.emit(splice, out);
        }
        if flow.streaming {
            flow.state = FlowState::SplicingIn;
            let splice = Action::SpliceIn {
                dir,
                pipe,
                poll_first: true,
            };
            self.emit(splice, out);
        } else {
            flow.pipe = None;
            pipes.release(pipe);
            flow.state = FlowState::Polling;
            self.emit(Action::PollIn(dir), out);
        }
    }

    /// EOF from the source of `dir` with nothing buffered: pass it on.
    fn eof(&mut self, dir: Dir, out: &mut Vec<Action>) {
        self.flows[dir].state = FlowState::ShuttingDown;
        self.emit(Action::Shutdown(dir), out);
    }

    /// Can the client's bytes so far be sent again to another backend? Only while the
    /// backend has answered nothing, the client has sent at most one chunk (still in the
    /// copy buffer: the next read has not completed) and has not half-closed, and no PROXY
    /// header took the buffer. This is HAProxy's `retry-on empty-response` at layer 4: a
    /// backend that dies with a request inside, or before the client said anything, costs
    /// the client nothing.
    ///
    /// After the client half-closed, only a reset counts: a backend that reads a one-way
    /// upload and closes cleanly has done its job, and sending it again would duplicate it.
    fn replayable(&self, reset: bool) -> bool {
        let up = &self.flows[Dir::Up];
        let client_done = matches!(up.state, FlowState::ShuttingDown | FlowState::Done);
        self.header == 0
            && !self.answered
            && self.up_chunks <= 1
            && !up.splice
            && (matches!(up.state, FlowState::Reading | FlowState::Writing)
                || (client_done && reset))
            && self.flows[Dir::Down].bytes == 0
    }

    fn begin_replay(&mut self, out: &mut Vec<Action>) {
        self.early = self.flows[Dir::Up].len;
        self.phase = Phase::Replaying;
        if self.inflight > 0 {
            out.push(Action::CancelAll(self.pipes_held()));
        }
    }
}
