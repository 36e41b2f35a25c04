use super::*;
use crate::worker::token::OpKind;
use std::os::fd::OwnedFd;

/// Any descriptor will do: the state machine does no I/O.
pub(super) fn fd() -> OwnedFd {
    std::fs::File::open("/dev/null").expect("/dev/null").into()
}

pub(super) fn target(id: u32) -> Target {
    Target {
        id: BackendId(id),
        addr: "127.0.0.1:9000".parse().expect("addr"),
        send_proxy: None,
        local: true,
    }
}

/// Connects to backend `id` and completes the connect and its timeout.
pub(super) fn connect(c: &mut Conn, id: u32) {
    let mut out = Vec::new();
    c.connect(target(id), fd(), 0, &mut out);
    assert_eq!(out, vec![Action::Connect(target(id).addr)]);
    assert_eq!(c.inflight(), 2);
    c.completed();
    c.completed();
}

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
    c.open(fd(), None, fwd, 0);
    connect(&mut c, 1);
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
    assert_eq!(out, vec![Action::Recv(Dir::Up), Action::Recv(Dir::Down)]);
}

#[test]
fn short_send_is_resubmitted_then_reads_again() {
    let (mut c, _) = forwarding(COPY);
    let p = &mut FakePipes::new(0);
    assert_eq!(
        feed(&mut c, OpKind::Recv(Dir::Up), 100, p),
        vec![Action::Send {
            dir: Dir::Up,
            from: 0,
            to: 100
        }]
    );
    assert_eq!(
        feed(&mut c, OpKind::Send(Dir::Up), 40, p),
        vec![Action::Send {
            dir: Dir::Up,
            from: 40,
            to: 100
        }]
    );
    assert_eq!(
        feed(&mut c, OpKind::Send(Dir::Up), 60, p),
        vec![Action::Recv(Dir::Up)]
    );
    assert_eq!(c.bytes(), PerDir::new(100, 0));
    assert_eq!(c.last_active_ns, 10);
}

#[test]
fn a_drained_socket_is_waited_for_a_streaming_one_is_not() {
    let (mut c, _) = forwarding(COPY);
    let p = &mut FakePipes::new(0);
    // Nothing forwarded yet: the client's first bytes may already be there.
    assert!(!c.expects_wait(Dir::Up));
    feed(&mut c, OpKind::Recv(Dir::Up), 60, p);
    feed(&mut c, OpKind::Send(Dir::Up), 60, p);
    assert!(c.expects_wait(Dir::Up), "a short read drained the socket");
    let full = c.fwd.buf_size as i32;
    feed(&mut c, OpKind::Recv(Dir::Up), full, p);
    feed(&mut c, OpKind::Send(Dir::Up), full, p);
    assert!(
        !c.expects_wait(Dir::Up),
        "a full read: more is probably queued"
    );
    assert!(!c.expects_wait(Dir::Down));
}

#[test]
fn half_close_each_way_then_close() {
    let (mut c, _) = forwarding(COPY);
    let p = &mut FakePipes::new(0);
    assert_eq!(
        feed(&mut c, OpKind::Recv(Dir::Up), 0, p),
        vec![Action::Shutdown(Dir::Up)]
    );
    feed(&mut c, OpKind::Shutdown(Dir::Up), 0, p);
    assert_eq!(
        c.phase(),
        Phase::Forwarding,
        "the other direction keeps flowing"
    );
    assert_eq!(
        feed(&mut c, OpKind::Recv(Dir::Down), 10, p),
        vec![Action::Send {
            dir: Dir::Down,
            from: 0,
            to: 10
        }]
    );
    feed(&mut c, OpKind::Send(Dir::Down), 10, p);
    feed(&mut c, OpKind::Recv(Dir::Down), 0, p);
    feed(&mut c, OpKind::Shutdown(Dir::Down), 0, p);
    assert!(c.releasable());
    assert!(!c.reset());
}

#[test]
fn reset_aborts_both_and_waits_for_inflight() {
    let (mut c, _) = forwarding(COPY);
    let p = &mut FakePipes::new(0);
    // The backend answered already: its reset is passed on (no replay).
    feed(&mut c, OpKind::Recv(Dir::Down), 5, p);
    feed(&mut c, OpKind::Send(Dir::Down), 5, p);
    assert_eq!(
        feed(&mut c, OpKind::Recv(Dir::Down), -libc::ECONNRESET, p),
        vec![Action::CancelAll([None, None])]
    );
    assert_eq!(c.phase(), Phase::Closing);
    assert!(!c.releasable(), "the client recv is still in flight");
    assert!(feed(&mut c, OpKind::Recv(Dir::Up), -libc::ECANCELED, p).is_empty());
    assert!(c.releasable());
    assert!(c.reset());
}

#[test]
fn zero_byte_send_is_an_error() {
    let (mut c, _) = forwarding(COPY);
    let p = &mut FakePipes::new(0);
    feed(&mut c, OpKind::Recv(Dir::Up), 10, p);
    feed(&mut c, OpKind::Send(Dir::Up), 0, p);
    assert_eq!(c.phase(), Phase::Closing);
}

#[test]
fn splice_idle_holds_no_pipe_and_streaming_keeps_it() {
    let fwd = Forwarding {
        mode: ForwardMode::Splice,
        ..COPY
    };
    let (mut c, out) = forwarding(fwd);
    assert_eq!(
        out,
        vec![Action::PollIn(Dir::Up), Action::PollIn(Dir::Down)]
    );
    let p = &mut FakePipes::new(4);
    assert!(p.out.is_empty(), "idle: no pipe held");
    let a = feed(&mut c, OpKind::PollIn(Dir::Down), libc::POLLIN as i32, p);
    assert_eq!(
        a,
        vec![Action::SpliceIn {
            dir: Dir::Down,
            pipe: 0,
            poll_first: false
        }]
    );
    // A full pipe: streaming.
    let a = feed(&mut c, OpKind::SpliceIn(Dir::Down), 1000, p);
    assert_eq!(
        a,
        vec![Action::SpliceOut {
            dir: Dir::Down,
            pipe: 0,
            len: 1000,
            poll_first: false
        }]
    );
    // Partly out: wait for room, then the rest.
    let a = feed(&mut c, OpKind::SpliceOut(Dir::Down), 600, p);
    assert_eq!(
        a,
        vec![Action::SpliceOut {
            dir: Dir::Down,
            pipe: 0,
            len: 400,
            poll_first: true
        }]
    );
    c.completed(); // the linked poll
                   // EAGAIN with bytes in the pipe means "wait for room", never "empty".
    let a = feed(&mut c, OpKind::SpliceOut(Dir::Down), -libc::EAGAIN, p);
    assert_eq!(
        a,
        vec![Action::SpliceOut {
            dir: Dir::Down,
            pipe: 0,
            len: 400,
            poll_first: true
        }]
    );
    c.completed();
    let a = feed(&mut c, OpKind::SpliceOut(Dir::Down), 400, p);
    assert_eq!(
        a,
        vec![Action::SpliceIn {
            dir: Dir::Down,
            pipe: 0,
            poll_first: true
        }],
        "streaming keeps the pipe"
    );
    c.completed();
    // A short read: quiet now; the pipe goes back after it drains.
    feed(&mut c, OpKind::SpliceIn(Dir::Down), 10, p);
    let a = feed(&mut c, OpKind::SpliceOut(Dir::Down), 10, p);
    assert_eq!(a, vec![Action::PollIn(Dir::Down)]);
    assert!(p.out.is_empty());
    assert_eq!(c.bytes(), PerDir::new(0, 1010));
    // EOF on splice passes on as shutdown.
    feed(&mut c, OpKind::PollIn(Dir::Down), 1, p);
    assert_eq!(
        feed(&mut c, OpKind::SpliceIn(Dir::Down), 0, p),
        vec![Action::Shutdown(Dir::Down)]
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
    assert_eq!(
        feed(&mut c, OpKind::PollIn(Dir::Up), 1, p),
        vec![Action::Recv(Dir::Up)]
    );
    feed(&mut c, OpKind::Recv(Dir::Up), 50, p);
    assert_eq!(
        feed(&mut c, OpKind::Send(Dir::Up), 50, p),
        vec![Action::PollIn(Dir::Up)]
    );
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
    let (recv, send) = (OpKind::Recv(Dir::Down), OpKind::Send(Dir::Down));
    // One full read short of a streak, then a short read: the count starts again.
    for _ in 1..STREAM_STREAK {
        feed(&mut c, recv, full, p);
        assert_eq!(feed(&mut c, send, full, p), vec![Action::Recv(Dir::Down)]);
    }
    feed(&mut c, recv, full - 1, p);
    assert_eq!(
        feed(&mut c, send, full - 1, p),
        vec![Action::Recv(Dir::Down)]
    );
    assert!(!c.splicing(Dir::Down));
    // Then exactly STREAM_STREAK full reads: copied up to the last, spliced after it.
    for i in 1..=STREAM_STREAK {
        feed(&mut c, recv, full, p);
        let a = feed(&mut c, send, full, p);
        if i < STREAM_STREAK {
            assert_eq!(a, vec![Action::Recv(Dir::Down)], "after full read {i}");
            assert!(!c.splicing(Dir::Down), "switched after {i} full reads");
        } else {
            let splice = Action::SpliceIn {
                dir: Dir::Down,
                pipe: 0,
                poll_first: true,
            };
            assert_eq!(a, vec![splice], "not switched after {i} full reads");
        }
    }
    assert!(c.splicing(Dir::Down));
    assert!(!c.splicing(Dir::Up));
}

#[test]
fn proxy_header_goes_first_and_is_not_counted() {
    let mut c = Conn::new();
    c.open(fd(), None, COPY, 0);
    let mut out = Vec::new();
    c.connected(1, 28, &mut out);
    assert_eq!(
        out,
        vec![
            Action::Send {
                dir: Dir::Up,
                from: 0,
                to: 28
            },
            Action::Recv(Dir::Down)
        ]
    );
    let p = &mut FakePipes::new(0);
    assert_eq!(
        feed(&mut c, OpKind::Send(Dir::Up), 28, p),
        vec![Action::Recv(Dir::Up)]
    );
    assert_eq!(c.bytes(), PerDir::new(0, 0));
    feed(&mut c, OpKind::Recv(Dir::Up), 10, p);
    feed(&mut c, OpKind::Send(Dir::Up), 10, p);
    assert_eq!(c.bytes(), PerDir::new(10, 0));
}

#[test]
fn backend_gone_before_answering_replays_the_first_chunk() {
    let (mut c, _) = forwarding(COPY);
    let p = &mut FakePipes::new(0);
    feed(&mut c, OpKind::Recv(Dir::Up), 40, p);
    assert_eq!(
        feed(&mut c, OpKind::Send(Dir::Up), 40, p),
        vec![Action::Recv(Dir::Up)]
    );
    // The backend dies: EOF without a byte of answer.
    assert_eq!(
        feed(&mut c, OpKind::Recv(Dir::Down), 0, p),
        vec![Action::CancelAll([None, None])]
    );
    assert_eq!(c.phase(), Phase::Replaying);
    assert!(!c.replay_ready(), "the client read is still in flight");
    feed(&mut c, OpKind::Recv(Dir::Up), -libc::ECANCELED, p);
    assert!(c.replay_ready());
    let mut out = Vec::new();
    assert_eq!(
        c.start_replay(&mut out),
        Some(LeftBackend {
            id: BackendId(1),
            counted: true
        })
    );
    assert_eq!(out, vec![Action::CloseBackend]);
    drop(c.take_backend_sock());
    connect(&mut c, 2);
    let mut out = Vec::new();
    c.connected(20, 0, &mut out);
    assert_eq!(
        out,
        vec![
            Action::Send {
                dir: Dir::Up,
                from: 0,
                to: 40
            },
            Action::Recv(Dir::Down)
        ]
    );
}

#[test]
fn no_replay_once_the_backend_answered_or_a_second_chunk_came() {
    let (mut c, _) = forwarding(COPY);
    let p = &mut FakePipes::new(0);
    feed(&mut c, OpKind::Recv(Dir::Up), 40, p);
    feed(&mut c, OpKind::Send(Dir::Up), 40, p);
    feed(&mut c, OpKind::Recv(Dir::Down), 5, p);
    feed(&mut c, OpKind::Send(Dir::Down), 5, p);
    feed(&mut c, OpKind::Recv(Dir::Down), -libc::ECONNRESET, p);
    assert_eq!(c.phase(), Phase::Closing);

    let (mut c, _) = forwarding(COPY);
    feed(&mut c, OpKind::Recv(Dir::Up), 40, p);
    feed(&mut c, OpKind::Send(Dir::Up), 40, p);
    feed(&mut c, OpKind::Recv(Dir::Up), 10, p);
    feed(&mut c, OpKind::Recv(Dir::Down), 0, p);
    assert_ne!(c.phase(), Phase::Replaying);
}

/// Opens a connection from a trusted source and feeds its header reads.
fn handshake(reads: &[i32]) -> (Conn, Vec<Action>) {
    let mut c = Conn::new();
    c.open(fd(), None, COPY, 0);
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
    connect(&mut c, 1);
    let mut out = Vec::new();
    c.connected(1, 16, &mut out); // we send a 16-byte header ahead of them
    assert_eq!(
        out,
        vec![
            Action::Send {
                dir: Dir::Up,
                from: 0,
                to: 41
            },
            Action::Recv(Dir::Down)
        ]
    );
    let p = &mut FakePipes::new(0);
    feed(&mut c, OpKind::Send(Dir::Up), 41, p);
    assert_eq!(
        c.bytes(),
        PerDir::new(25, 0),
        "our header is not counted as forwarded"
    );
}

#[test]
fn bytes_after_the_header_can_be_replayed() {
    let (mut c, _) = handshake(&[60]);
    c.header_done(25);
    connect(&mut c, 1);
    let mut out = Vec::new();
    c.connected(1, 0, &mut out);
    let p = &mut FakePipes::new(0);
    assert_eq!(
        feed(&mut c, OpKind::Send(Dir::Up), 25, p),
        vec![Action::Recv(Dir::Up)]
    );
    feed(&mut c, OpKind::Recv(Dir::Down), 0, p); // the backend closes without answering
    assert_eq!(c.phase(), Phase::Replaying);
    feed(&mut c, OpKind::Recv(Dir::Up), -libc::ECANCELED, p);
    assert!(c.replay_ready());
    let mut out = Vec::new();
    assert_eq!(
        c.start_replay(&mut out),
        Some(LeftBackend {
            id: BackendId(1),
            counted: true
        })
    );
    assert_eq!(out, vec![Action::CloseBackend]);
    drop(c.take_backend_sock());
    connect(&mut c, 2);
    let mut out = Vec::new();
    c.connected(2, 0, &mut out);
    assert_eq!(
        out[0],
        Action::Send {
            dir: Dir::Up,
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
        feed(&mut c, OpKind::Recv(Dir::Up), 40, p);
        feed(&mut c, OpKind::Send(Dir::Up), 40, p);
        // The client half-closes: EOF passed on as a shutdown.
        assert_eq!(
            feed(&mut c, OpKind::Recv(Dir::Up), 0, p),
            vec![Action::Shutdown(Dir::Up)]
        );
        feed(&mut c, OpKind::Shutdown(Dir::Up), 0, p);
        feed(&mut c, OpKind::Recv(Dir::Down), backend_res, p);
        assert_eq!(c.phase() == Phase::Replaying, replays, "res {backend_res}");
        if replays {
            assert!(c.replay_ready());
            let mut out = Vec::new();
            c.start_replay(&mut out);
            drop(c.take_backend_sock());
            connect(&mut c, 2);
            let mut out = Vec::new();
            c.connected(2, 0, &mut out);
            assert_eq!(
                out[0],
                Action::Send {
                    dir: Dir::Up,
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
    feed(&mut c, OpKind::Recv(Dir::Up), 40, p);
    feed(&mut c, OpKind::Send(Dir::Up), 40, p);
    feed(&mut c, OpKind::Recv(Dir::Down), -libc::ECONNRESET, p);
    assert_eq!(c.phase(), Phase::Replaying);
    feed(&mut c, OpKind::Recv(Dir::Up), 7, p);
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
    feed(&mut c, OpKind::PollIn(Dir::Up), 1, p);
    let a = feed(&mut c, OpKind::PollIn(Dir::Down), -libc::ECONNRESET, p);
    assert_eq!(a, vec![Action::CancelAll([Some(0), None])]);
    feed(&mut c, OpKind::SpliceIn(Dir::Up), -libc::ECANCELED, p);
    assert!(c.releasable());
    assert_eq!(c.take_pipes(), [Some(0), None]);
}

#[test]
fn a_failed_connect_lets_the_backend_go_and_the_next_one_is_tried() {
    let mut c = Conn::new();
    c.open(fd(), None, COPY, 0);
    connect(&mut c, 1);
    let mut out = Vec::new();
    let left = c.connect_failed(&mut out);
    assert_eq!(
        left,
        Some(LeftBackend {
            id: BackendId(1),
            counted: true
        })
    );
    assert_eq!(out, vec![Action::CloseBackend]);
    assert!(c.take_backend_sock().is_some());
    assert_eq!(c.backend(), None);
    assert_eq!(c.tried(), &[BackendId(1)]);
    connect(&mut c, 2);
    assert_eq!(c.tried(), &[BackendId(1), BackendId(2)]);
    out.clear();
    assert_eq!(c.connected(7, 0, &mut out), 7);
    assert_eq!(c.phase(), Phase::Forwarding);
    // Closing hands the count of the backend it ended with back once.
    c.abort(false, &mut out);
    for _ in 0..2 {
        c.completed();
    }
    let r = c.release();
    assert_eq!(r.counted, Some(BackendId(2)));
    assert!(r.client.is_some() && r.backend.is_some() && !r.reset);
}

#[test]
fn idle_deadlines_live_in_the_state_machine() {
    let (mut c, _) = forwarding(COPY);
    let p = &mut FakePipes::new(0);
    feed(&mut c, OpKind::Recv(Dir::Up), 10, p); // active at 10
    assert_eq!(c.poll_timeout(100), Some(110));
    let mut out = Vec::new();
    assert_eq!(c.on_timeout(50, 100, &mut out), Timeout::Later(110));
    assert!(out.is_empty());
    assert_eq!(c.on_timeout(110, 100, &mut out), Timeout::Idle);
    assert_eq!(out, vec![Action::CancelAll([None, None])]);
    assert!(
        c.reset(),
        "an idle connection is cut with a reset, never a FIN"
    );
    // Connecting: no idle deadline of its own.
    let mut c = Conn::new();
    c.open(fd(), None, COPY, 0);
    assert_eq!(c.poll_timeout(100), None);
    assert_eq!(c.on_timeout(500, 100, &mut out), Timeout::Later(600));
}

#[test]
fn a_header_never_finished_times_out_as_a_bad_header() {
    let (mut c, _) = handshake(&[7]);
    c.read_more_header(&mut Vec::new());
    let mut out = Vec::new();
    assert_eq!(c.on_timeout(1_000, 100, &mut out), Timeout::Header);
    assert_eq!(c.phase(), Phase::Closing);
}

#[test]
fn every_early_end_resets() {
    // Aborted by the balancer (grace, drain deadline, no backend): reset.
    let (mut c, _) = forwarding(COPY);
    let mut out = Vec::new();
    c.abort(true, &mut out);
    assert!(c.reset());
    // A reset asked for while already closing still applies.
    let (mut c, _) = forwarding(COPY);
    c.abort(false, &mut out);
    c.abort(true, &mut out);
    assert!(c.reset());
}

#[test]
fn a_backend_gone_before_the_client_said_anything_is_replaced() {
    let (mut c, _) = forwarding(COPY);
    let p = &mut FakePipes::new(0);
    // The backend closes before the client sent a byte (and before answering).
    assert_eq!(
        feed(&mut c, OpKind::Recv(Dir::Down), 0, p),
        vec![Action::CancelAll([None, None])]
    );
    assert_eq!(c.phase(), Phase::Replaying);
    feed(&mut c, OpKind::Recv(Dir::Up), -libc::ECANCELED, p);
    assert!(c.replay_ready());
    let mut out = Vec::new();
    c.start_replay(&mut out);
    drop(c.take_backend_sock());
    connect(&mut c, 2);
    out.clear();
    c.connected(20, 0, &mut out);
    assert_eq!(
        out,
        vec![Action::Recv(Dir::Up), Action::Recv(Dir::Down)],
        "nothing to send again"
    );
}

/// A client of an address routed by TLS server name, accepted at `now` with `sni_timeout`
/// of `timeout`, the worker asking for its ClientHello (as `Worker::read_hello` does).
fn hello_phase(now: u64, timeout: u64) -> (Conn, Vec<Action>) {
    let mut c = Conn::new();
    c.open(fd(), None, COPY, now);
    c.handshake_deadline(now + timeout);
    c.expect_hello(0);
    let mut out = Vec::new();
    c.read_more_header(&mut out);
    (c, out)
}

#[test]
fn a_hello_has_one_deadline_from_accept_that_trickling_bytes_do_not_move() {
    let (mut c, out) = hello_phase(100, 5_000);
    assert_eq!(out, vec![Action::RecvHeader { offset: 0 }]);
    assert_eq!(c.reading(), Reading::Hello);
    // The hello deadline stands in for the idle timeout, shorter or longer.
    assert_eq!(c.poll_timeout(1_000_000), Some(5_100));
    assert_eq!(c.poll_timeout(10), Some(5_100));
    // A byte at a time, just before the deadline each time: it does not move.
    let mut out = Vec::new();
    for (i, now) in [1_000u64, 3_000, 5_099].into_iter().enumerate() {
        c.completed();
        assert_eq!(c.header_bytes(1, &mut out), Some(i + 1));
        c.read_more_header(&mut out);
        assert_eq!(c.on_timeout(now, 10, &mut out), Timeout::Later(5_100));
    }
    assert_eq!(
        out,
        [1, 2, 3]
            .map(|offset| Action::RecvHeader { offset })
            .to_vec()
    );
    out.clear();
    // At the deadline, a read still in flight: a hello timeout, cut with a reset.
    assert_eq!(c.on_timeout(5_100, 1_000_000, &mut out), Timeout::Hello);
    assert_eq!(out, vec![Action::CancelAll([None, None])]);
    assert_eq!(c.phase(), Phase::Closing);
    assert!(c.reset());
}

#[test]
fn a_whole_hello_ends_its_deadline_and_the_idle_timeout_rules_again() {
    let (mut c, _) = hello_phase(0, 5_000);
    let mut out = Vec::new();
    c.completed();
    assert_eq!(c.header_bytes(517, &mut out), Some(517));
    c.header_done(517); // routed: the hello's bytes go first to the backend
    assert_eq!(c.phase(), Phase::Connecting);
    assert_eq!(
        c.poll_timeout(100),
        None,
        "connecting: the connect timeout covers it"
    );
    assert_eq!(c.on_timeout(6_000, 100, &mut out), Timeout::Later(6_100));
    assert!(
        out.is_empty(),
        "no longer anything to cut at the old deadline"
    );
    connect(&mut c, 1);
    c.connected(6_000, 0, &mut out);
    assert_eq!(c.phase(), Phase::Forwarding);
    assert_eq!(c.poll_timeout(100), Some(6_100));
    assert_eq!(c.on_timeout(6_099, 100, &mut out), Timeout::Later(6_100));
    assert_eq!(c.on_timeout(6_100, 100, &mut out), Timeout::Idle);
}

#[test]
fn a_proxy_header_then_a_hello_share_one_deadline() {
    // A trusted upstream: its PROXY header first, then the hello, within one sni_timeout.
    let mut c = Conn::new();
    c.open(fd(), None, COPY, 0);
    let mut out = Vec::new();
    c.open_handshake(&mut out);
    c.handshake_deadline(5_000);
    assert_eq!(c.reading(), Reading::ProxyHeader);
    assert_eq!(c.on_timeout(4_999, 10, &mut out), Timeout::Later(5_000));
    c.completed();
    assert_eq!(c.header_bytes(40, &mut out), Some(40));
    // The header took 16 bytes; 24 bytes of hello came with it.
    c.expect_hello(24);
    c.read_more_header(&mut out);
    assert_eq!(out.last(), Some(&Action::RecvHeader { offset: 24 }));
    assert_eq!(c.on_timeout(5_000, 10, &mut out), Timeout::Hello);
    // The same timeout while the header is still being read is a bad header.
    let (mut c, _) = handshake(&[7]);
    c.handshake_deadline(5_000);
    c.read_more_header(&mut out);
    assert_eq!(c.on_timeout(5_000, 1_000_000, &mut out), Timeout::Header);
}
