//! The balancer's life: idle timeout, graceful stop, start-up errors, the connection limit,
//! and no descriptor leaked after many connections.

mod util;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use uringlb_bench::{EchoServer, NameServer};
use util::*;

#[test]
fn idle_timeout_closes_an_idle_connection() {
    let (_echo, lb) = echo_behind_lb(&["--workers", "1", "--idle-timeout", "1s"]);
    let mut s = lb.connect();
    s.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).unwrap();
    let t = Instant::now();
    // Activity keeps it open: 1.5 s of traffic every 300 ms (the pause is the point: each
    // is shorter than the idle timeout, together they are longer).
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(300));
        s.write_all(b"ping").unwrap();
        s.read_exact(&mut buf).unwrap();
    }
    assert!(t.elapsed() > Duration::from_millis(1400));
    let idle_from = Instant::now();
    let n = s.read(&mut buf).unwrap_or(0);
    let idle = idle_from.elapsed();
    assert_eq!(n, 0, "closed by the balancer");
    assert!(
        idle >= Duration::from_millis(900),
        "closed too early: {idle:?}"
    );
    assert!(
        idle < Duration::from_millis(2500),
        "closed too late: {idle:?}"
    );
}

#[test]
fn graceful_stop_lets_an_open_transfer_finish() {
    let echo = EchoServer::start("127.0.0.1:0").unwrap();
    let b = echo.addr().to_string();
    let mut lb = Lb::start(&[
        "--backend",
        &b,
        "--workers",
        "2",
        "--health",
        "none",
        "--grace",
        "20s",
    ]);
    let mut s = lb.connect();
    let data = pattern(5, 8 << 20);
    let mut w = s.try_clone().unwrap();
    let to_send = data.clone();
    let writer = std::thread::spawn(move || {
        // Slowly (paced): about 2 s for 8 MiB, so that the stop comes in the middle.
        for c in to_send.chunks(256 * 1024) {
            w.write_all(c).unwrap();
            std::thread::sleep(Duration::from_millis(60));
        }
        w.shutdown(Shutdown::Write).unwrap();
    });
    // The transfer runs: the balancer has connected it to the backend.
    wait_until(
        "the transfer to reach the backend",
        Duration::from_secs(10),
        || echo.active() == 1,
    );
    lb.signal(libc::SIGTERM);
    // Both workers stop accepting: a new connection is refused.
    lb.wait_log(&["stopping", "worker="], 2, Duration::from_secs(10));
    wait_until(
        "new connections to be refused",
        Duration::from_secs(10),
        || TcpStream::connect(lb.addr).is_err(),
    );
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    writer.join().unwrap();
    assert!(
        got == data,
        "transfer not byte-exact ({} of {} bytes)",
        got.len(),
        data.len()
    );
    let st = lb
        .wait_exit(Duration::from_secs(10))
        .expect("exits after the last connection");
    assert!(st.success(), "{st}");
}

#[test]
fn grace_period_bounds_the_stop() {
    let echo = EchoServer::start("127.0.0.1:0").unwrap();
    let b = echo.addr().to_string();
    let mut lb = Lb::start(&[
        "--backend",
        &b,
        "--workers",
        "1",
        "--health",
        "none",
        "--grace",
        "1s",
    ]);
    let mut s = lb.connect();
    s.write_all(b"x").unwrap();
    let mut one = [0u8; 1];
    s.read_exact(&mut one).unwrap();
    let t = Instant::now();
    lb.signal(libc::SIGTERM);
    let st = lb.wait_exit(Duration::from_secs(10)).expect("exits");
    assert!(st.success());
    assert!(
        t.elapsed() >= Duration::from_millis(900) && t.elapsed() < Duration::from_secs(5),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(s.read(&mut one).unwrap_or(0), 0);
}

#[test]
fn listen_address_in_use_exits_2_with_one_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (st, _out, err) = run_bin(&[
        "--listen",
        &addr,
        "--backend",
        "127.0.0.1:9",
        "--health",
        "none",
    ]);
    assert_eq!(st.code(), Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains(&addr) && err.to_lowercase().contains("in use"),
        "{err}"
    );
}

#[test]
fn fd_count_returns_to_start_after_10000_connections() {
    let name = NameServer::start("127.0.0.1:0", "n").unwrap();
    let b = name.addr().to_string();
    let lb = Lb::start(&["--backend", &b, "--workers", "2", "--health", "none"]);
    let start = lb.fd_count();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let addr = lb.addr;
            std::thread::spawn(move || {
                for _ in 0..2500 {
                    let mut s = TcpStream::connect(addr).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    assert_eq!(read_line(&mut s), "n");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // The last connections close a moment after their clients' reads returned.
    let now = poll(Duration::from_secs(10), || {
        let n = lb.fd_count();
        (n == start).then_some(n)
    });
    assert_eq!(
        now.unwrap_or_else(|| lb.fd_count()),
        start,
        "descriptors leaked"
    );
    assert_eq!(name.connections(), 10_000);
}

#[test]
fn max_conns_pauses_accept_without_failing() {
    let (_echo, lb) = echo_behind_lb(&["--workers", "1", "--max-conns", "4"]);
    let mut held: Vec<TcpStream> = (0..4).map(|_| lb.connect()).collect();
    for s in &mut held {
        s.write_all(b"a").unwrap();
        let mut one = [0u8; 1];
        s.read_exact(&mut one).unwrap();
    }
    // The fifth waits in the kernel backlog: connected at TCP level, but not served.
    let mut fifth = lb.connect();
    fifth.write_all(b"b").unwrap();
    fifth
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut one = [0u8; 1];
    assert!(
        fifth.read_exact(&mut one).is_err(),
        "served beyond --max-conns"
    );
    // One closes: the fifth is served.
    drop(held.pop());
    fifth
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    fifth.read_exact(&mut one).unwrap();
    assert_eq!(&one, b"b");
}

/// Waits until the balancer's log has `needle`, at most `timeout`.
fn wait_log(lb: &Lb, needle: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !lb.log_text().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no '{needle}' in the log: {}",
            lb.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_second_sigterm_stops_at_once() {
    let echo = EchoServer::start("127.0.0.1:0").unwrap();
    let b = echo.addr().to_string();
    let mut lb = Lb::start(&[
        "--backend",
        &b,
        "--workers",
        "2",
        "--health",
        "none",
        "--grace",
        "120s",
    ]);
    // An open connection that would keep the balancer for the whole grace.
    let mut s = lb.connect();
    s.write_all(b"x").unwrap();
    let mut one = [0u8; 1];
    s.read_exact(&mut one).unwrap();
    lb.signal(libc::SIGTERM);
    // Signals sent before the first is handled may merge into one: wait for it.
    wait_log(&lb, "SIGTERM: stopping gracefully", Duration::from_secs(10));
    assert!(lb.child.try_wait().unwrap().is_none(), "the grace runs");
    let t = Instant::now();
    lb.signal(libc::SIGTERM);
    wait_log(&lb, "SIGTERM again: stopping now", Duration::from_secs(10));
    let st = lb
        .wait_exit(Duration::from_secs(15))
        .unwrap_or_else(|| panic!("still running after a second SIGTERM: {}", lb.log_text()));
    assert!(st.success(), "{st}");
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    // The open connection was closed, not left hanging.
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(s.read(&mut one).unwrap_or(0), 0);
}
