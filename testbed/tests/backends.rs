//! Each backend on 127.0.0.1:0, driven with plain blocking sockets.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use uringlb_testbed::{pattern, EchoServer, HttpServer, NameServer, SinkServer, SourceServer};

const LOCAL: &str = "127.0.0.1:0";

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Polls `cond` for up to 5 s: server counters are updated on the server's own thread.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Reads one HTTP response with a Content-Length body: (status, headers, body).
fn read_response(r: &mut BufReader<TcpStream>) -> (u16, Vec<String>, Vec<u8>) {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status: u16 = line.split(' ').nth(1).expect("status").parse().unwrap();
    let mut headers = Vec::new();
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        let h = h.trim_end().to_string();
        if h.is_empty() {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
        headers.push(h);
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).unwrap();
    (status, headers, body)
}

#[test]
fn ephemeral_port_is_reported() {
    let s = EchoServer::start(LOCAL).unwrap();
    assert_ne!(s.addr().port(), 0);
    assert!(s.addr().ip().is_loopback());
}

#[test]
fn echo_round_trip_with_half_close() {
    let server = EchoServer::start(LOCAL).unwrap();
    let mut c = connect(server.addr());
    // Larger than the socket buffers, written from another thread, so the echo has to
    // stream rather than buffer everything.
    let data = pattern::bytes(0, 4 << 20);
    let mut writer = c.try_clone().unwrap();
    let to_send = data.clone();
    let t = std::thread::spawn(move || {
        writer.write_all(&to_send).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap(); // ends only if the server half-closes after echoing
    t.join().unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data);
    assert_eq!(server.connections(), 1);
    eventually("active to drop", || server.active() == 0);
    assert_eq!(server.bytes(), data.len() as u64);
}

#[test]
fn echo_serves_many_connections_at_once() {
    let server = EchoServer::start(LOCAL).unwrap();
    let mut conns: Vec<TcpStream> = (0..300).map(|_| connect(server.addr())).collect();
    for (i, c) in conns.iter_mut().enumerate() {
        c.write_all(format!("hello {i}\n").as_bytes()).unwrap();
    }
    for (i, c) in conns.iter_mut().enumerate() {
        let want = format!("hello {i}\n");
        let mut buf = vec![0; want.len()];
        c.read_exact(&mut buf).unwrap();
        assert_eq!(buf, want.as_bytes());
    }
    assert_eq!(server.connections(), 300);
    assert_eq!(server.active(), 300);
}

#[test]
fn http_keepalive_100_requests_on_one_connection() {
    let server = HttpServer::start(LOCAL, "alpha").unwrap();
    assert_eq!(server.name(), "alpha");
    let mut w = connect(server.addr());
    let mut r = BufReader::new(w.try_clone().unwrap());
    for _ in 0..100 {
        w.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let (status, headers, body) = read_response(&mut r);
        assert_eq!(status, 200);
        assert_eq!(body, b"alpha\n");
        assert!(!headers
            .iter()
            .any(|h| h.eq_ignore_ascii_case("connection: close")));
    }
    assert_eq!(server.requests(), 100);
    assert_eq!(server.connections(), 1);
}

#[test]
fn http_connection_close_and_pipelining() {
    let server = HttpServer::start(LOCAL, "beta").unwrap();
    let mut w = connect(server.addr());
    // Two pipelined requests, the second with a body to skip, then a closing one.
    w.write_all(
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
          POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
          GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut r = BufReader::new(w.try_clone().unwrap());
    for _ in 0..3 {
        let (status, _, body) = read_response(&mut r);
        assert_eq!((status, body.as_slice()), (200, &b"beta\n"[..]));
    }
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap(); // the server closed after the third response
    assert!(rest.is_empty());
    assert_eq!(server.requests(), 3);
}

#[test]
fn http_1_0_closes_by_default() {
    let server = HttpServer::start(LOCAL, "old").unwrap();
    let mut w = connect(server.addr());
    w.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut all = String::new();
    w.read_to_string(&mut all).unwrap();
    assert!(all.starts_with("HTTP/1.0 200 OK\r\n"), "{all}");
    assert!(all.ends_with("\r\n\r\nold\n"), "{all}");
}

#[test]
fn http_big_and_status() {
    let server = HttpServer::start(LOCAL, "gamma").unwrap();
    let mut w = connect(server.addr());
    let mut r = BufReader::new(w.try_clone().unwrap());
    w.write_all(b"GET /big?bytes=3000001 HTTP/1.1\r\n\r\n")
        .unwrap();
    let (status, _, body) = read_response(&mut r);
    assert_eq!(status, 200);
    assert_eq!(body.len(), 3_000_001);
    assert_eq!(pattern::mismatch(0, &body), None);

    w.write_all(b"GET /status/503 HTTP/1.1\r\n\r\n").unwrap();
    let (status, _, body) = read_response(&mut r);
    assert_eq!((status, body.as_slice()), (503, &b"gamma\n"[..]));

    w.write_all(b"GET /status/204 HTTP/1.1\r\n\r\n").unwrap();
    let (status, headers, body) = read_response(&mut r);
    assert_eq!(status, 204);
    assert!(body.is_empty());
    assert!(!headers
        .iter()
        .any(|h| h.to_ascii_lowercase().starts_with("content-length")));

    // Still usable after all that.
    w.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut r).2, b"gamma\n");
    assert_eq!(server.requests(), 4);
}

#[test]
fn http_bad_request_gets_400_and_close() {
    let server = HttpServer::start(LOCAL, "delta").unwrap();
    let mut w = connect(server.addr());
    w.write_all(b"GARBAGE\r\n\r\n").unwrap();
    let mut all = String::new();
    w.read_to_string(&mut all).unwrap();
    assert!(all.starts_with("HTTP/1.1 400 "), "{all}");
}

#[test]
fn name_server_sends_name_then_echoes() {
    let server = NameServer::start(LOCAL, "b1").unwrap();
    let c = connect(server.addr());
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, "b1\n");
    let mut w = c;
    w.write_all(b"ping").unwrap();
    w.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"ping");
    assert_eq!(server.connections(), 1);
}

#[test]
fn source_sends_exact_byte_count() {
    let n = 5_000_003u64;
    let server = SourceServer::start(LOCAL, n).unwrap();
    for _ in 0..2 {
        let mut c = connect(server.addr());
        let mut checker = pattern::Checker::new();
        let mut buf = vec![0; 64 * 1024];
        loop {
            let k = c.read(&mut buf).unwrap();
            if k == 0 {
                break;
            }
            checker.update(&buf[..k]);
        }
        assert_eq!(checker.len(), n);
        assert!(checker.ok());
    }
    assert_eq!(server.connections(), 2);
    assert_eq!(server.bytes_sent(), 2 * n);
}

#[test]
fn sink_counts_bytes() {
    let server = SinkServer::start(LOCAL).unwrap();
    let mut c = connect(server.addr());
    c.write_all(&vec![7u8; 1_000_000]).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    eventually("sink to count all bytes", || server.bytes() == 1_000_000);
    eventually("connection to close", || server.active() == 0);
}

#[test]
fn never_read_sink_applies_backpressure() {
    let server = SinkServer::start_never_read(LOCAL).unwrap();
    let mut c = connect(server.addr());
    c.set_nonblocking(true).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    let mut sent = 0usize;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match c.write(&chunk) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("write failed: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "never blocked after {sent} bytes"
        );
    }
    assert!(sent > 0);
    assert_eq!(server.bytes(), 0);
    eventually("accept", || server.active() == 1);
}

#[test]
fn stop_is_prompt_with_open_connections() {
    let echo = EchoServer::start(LOCAL).unwrap();
    let http = HttpServer::start(LOCAL, "h").unwrap();
    let sink = SinkServer::start_never_read(LOCAL).unwrap();
    let addrs = [echo.addr(), http.addr(), sink.addr()];
    let mut clients: Vec<TcpStream> = addrs.iter().map(|a| connect(*a)).collect();
    // A client blocked in read on each, plus a connection mid-request on the HTTP server.
    clients[1]
        .write_all(b"GET / HTTP/1.1\r\nHost: partial")
        .unwrap();
    let readers: Vec<_> = clients
        .iter()
        .map(|c| {
            let mut c = c.try_clone().unwrap();
            std::thread::spawn(move || {
                let mut buf = [0u8; 16];
                // EOF or reset, either way promptly.
                let _ = c.read(&mut buf);
            })
        })
        .collect();
    eventually("all accepted", || {
        echo.active() == 1 && http.active() == 1 && sink.active() == 1
    });
    let t0 = Instant::now();
    echo.stop();
    http.stop();
    sink.stop();
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "stop took {:?}",
        t0.elapsed()
    );
    for r in readers {
        r.join().unwrap();
    }
    assert!(t0.elapsed() < Duration::from_secs(2));
    for a in addrs {
        assert!(
            TcpStream::connect(a).is_err(),
            "{a} still accepts after stop"
        );
    }
    echo.stop(); // idempotent
}

#[test]
fn drop_stops_the_server() {
    let server = EchoServer::start(LOCAL).unwrap();
    let addr = server.addr();
    let mut c = connect(addr);
    eventually("accept", || server.active() == 1);
    let t0 = Instant::now();
    drop(server);
    assert!(t0.elapsed() < Duration::from_secs(1));
    let mut buf = [0u8; 8];
    assert!(matches!(c.read(&mut buf), Ok(0) | Err(_)));
    assert!(TcpStream::connect(addr).is_err());
}

#[test]
fn restart_on_same_port() {
    let first = HttpServer::start(LOCAL, "one").unwrap();
    let addr = first.addr();
    let mut c = connect(addr);
    c.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let _ = read_response(&mut BufReader::new(c.try_clone().unwrap()));
    first.stop();
    let second = HttpServer::start(addr, "two").unwrap();
    assert_eq!(second.addr(), addr);
}

/// Soft limit on open files, from /proc (no libc needed).
fn max_open_files() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        })
        .unwrap_or(1024)
}

#[test]
fn thousands_of_connections_then_prompt_stop() {
    let n = 2000;
    if max_open_files() < 2 * n + 200 {
        eprintln!("skipped: open-file limit below {}", 2 * n + 200);
        return;
    }
    let echo = EchoServer::start(LOCAL).unwrap();
    let conns: Vec<TcpStream> = (0..n).map(|_| connect(echo.addr())).collect();
    eventually("all accepted", || echo.active() == n);
    let t0 = Instant::now();
    echo.stop();
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "stop took {:?}",
        t0.elapsed()
    );
    drop(conns);
}
