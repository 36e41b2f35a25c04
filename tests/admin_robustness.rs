//! The admin endpoint under abuse and churn, through the real binary: thousands of
//! add/remove cycles (no spurious 404, backend ids recycled, a recycled id starts from
//! zero), and slow clients that trickle their requests (health probes keep answering, with
//! and without a token; a trickled body times out).

mod util;
use util::*;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use uringlb_bench::NameServer;

/// A keep-alive HTTP/1.1 connection to the admin endpoint (thousands of requests without
/// thousands of TIME_WAIT sockets).
struct KeepAlive {
    s: TcpStream,
    addr: SocketAddr,
}

impl KeepAlive {
    fn new(addr: SocketAddr) -> KeepAlive {
        let s = TcpStream::connect(addr).expect("connect to admin");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.set_nodelay(true).unwrap();
        KeepAlive { s, addr }
    }

    /// One request; (status, JSON body).
    fn req(&mut self, method: &str, path: &str, json: Option<&str>) -> (u16, Value) {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        if let Some(b) = json {
            req += &format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            );
        }
        req += "\r\n";
        req += json.unwrap_or_default();
        self.s.write_all(req.as_bytes()).expect("write request");
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            self.s.read_exact(&mut b).expect("read response head");
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head).to_string();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("bad status line: {head:?}"));
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or_else(|| panic!("no Content-Length: {head:?}"));
        let mut body = vec![0u8; len];
        self.s.read_exact(&mut body).expect("read body");
        let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
        (status, v)
    }
}

#[test]
fn thousands_of_add_and_remove_cycles_neither_404_nor_run_out_of_ids() {
    let a = NameServer::start("127.0.0.1:0", "a").unwrap();
    let t = NameServer::start("127.0.0.1:0", "t").unwrap();
    let backend = format!("{},name=a", a.addr());
    let (lb, admin) =
        start_with_admin(&["--backend", &backend, "--workers", "2", "--health", "none"]);
    let mut api = KeepAlive::new(admin.addr);

    // A backend with history: five connections, then removed. Its id is reused below, and
    // whoever gets it must not start with its counts.
    let add_t = format!(r#"{{"addr": "{}", "name": "t0"}}"#, t.addr());
    assert_eq!(api.req("POST", "/backends", Some(&add_t)).0, 201);
    assert_eq!(
        api.req("PATCH", "/backends/a", Some(r#"{"state": "maint"}"#))
            .0,
        200
    );
    for _ in 0..5 {
        assert_eq!(greet_once(lb.addr).as_deref(), Ok("t"));
    }
    assert_eq!(
        api.req("PATCH", "/backends/a", Some(r#"{"state": "up"}"#))
            .0,
        200
    );
    let (st, t0) = api.req("DELETE", "/backends/t0", None);
    assert_eq!(st, 202, "{t0}");
    assert_eq!(t0["total_conns"], 5, "{t0}");

    // More cycles than there are ids: each name is new.
    const CYCLES: usize = 5000;
    let started = Instant::now();
    for i in 0..CYCLES {
        let name = format!("n{i}");
        let body = format!(r#"{{"addr": "{}", "name": "{name}"}}"#, a.addr());
        let (st, added) = api.req("POST", "/backends", Some(&body));
        assert_eq!(st, 201, "cycle {i}: POST answered {st}: {added}");
        assert_eq!(added["name"], name.as_str());
        assert_eq!(
            (
                &added["total_conns"],
                &added["active_conns"],
                &added["connect_failures"]
            ),
            (&Value::from(0), &Value::from(0), &Value::from(0)),
            "cycle {i}: a new backend starts from zero: {added}"
        );
        let (st, removed) = api.req("DELETE", &format!("/backends/{name}"), None);
        assert_eq!(st, 202, "cycle {i}: DELETE answered {st}: {removed}");
        assert_eq!(removed["name"], name.as_str());
        assert_eq!(removed["state"], "draining", "{removed}");
    }
    let took = started.elapsed();
    println!("{CYCLES} POST/DELETE cycles in {took:?}");
    // The data path followed along: the one configured backend serves.
    assert_eq!(greet_once(lb.addr).as_deref(), Ok("a"));
    wait_until(
        "the removed backends to leave",
        Duration::from_secs(10),
        || admin.backends().keys().eq(["a"]),
    );
}

// ---- slow clients ---------------------------------------------------------------------

/// A slowloris: connects and sends a request head one byte every `every`, reconnecting
/// whenever the server closes, until `stop`. Counts its connections in `connects`.
fn trickler(
    addr: SocketAddr,
    every: Duration,
    stop: Arc<AtomicBool>,
    connects: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let head =
            b"GET /backends HTTP/1.1\r\nHost: slow\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        while !stop.load(Ordering::Relaxed) {
            let Ok(mut s) = TcpStream::connect(addr) else {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            };
            connects.fetch_add(1, Ordering::Relaxed);
            'conn: for b in head {
                if s.write_all(&[*b]).is_err() {
                    break;
                }
                let until = Instant::now() + every;
                while Instant::now() < until {
                    if stop.load(Ordering::Relaxed) {
                        break 'conn;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            close_reset(s);
        }
    })
}

/// `GET path` on a new connection, answered within `within`: (status, how long it took).
fn timed_get(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    within: Duration,
) -> (u16, Duration) {
    let start = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, within).expect("connect to admin");
    s.set_read_timeout(Some(within)).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!("GET {path} HTTP/1.1\r\nHost: probe\r\n{auth}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).expect("write probe");
    let mut raw = Vec::new();
    if let Err(e) = s.read_to_end(&mut raw) {
        panic!(
            "GET {path}: no complete answer within {within:?} ({e}); got {:?}",
            String::from_utf8_lossy(&raw)
        );
    }
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("GET {path}: no HTTP answer: {text:?}"));
    (status, start.elapsed())
}

fn probes_answer_while_slow_clients_trickle(token: Option<&str>) {
    let a = NameServer::start("127.0.0.1:0", "a").unwrap();
    let backend = format!("{},name=a", a.addr());
    let mut args = vec![
        "--backend",
        backend.as_str(),
        "--workers",
        "1",
        "--health",
        "none",
    ];
    if let Some(t) = token {
        args.extend(["--admin-token", t]);
    }
    let (lb, admin) = start_with_admin(&args);
    let fds_before = lb.fd_count();
    let stop = Arc::new(AtomicBool::new(false));
    let connects = Arc::new(AtomicUsize::new(0));
    const SLOW: usize = 40;
    let threads: Vec<_> = (0..SLOW)
        .map(|_| {
            trickler(
                admin.addr,
                Duration::from_secs(2),
                stop.clone(),
                connects.clone(),
            )
        })
        .collect();
    wait_until(
        "every slow client to connect",
        Duration::from_secs(10),
        || connects.load(Ordering::Relaxed) >= SLOW,
    );
    // Probes for a while, as an orchestrator would: each answered promptly.
    let within = Duration::from_secs(3);
    let until = Instant::now() + Duration::from_secs(8);
    let mut probes = 0;
    let mut slowest = Duration::ZERO;
    while Instant::now() < until {
        let (st, took) = timed_get(admin.addr, "/health", None, within);
        assert_eq!(st, 200);
        slowest = slowest.max(took);
        if let Some(t) = token {
            let (st, took) = timed_get(admin.addr, "/backends", Some(t), within);
            assert_eq!(st, 200);
            slowest = slowest.max(took);
        }
        probes += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    let grown = lb.fd_count().saturating_sub(fds_before);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    println!(
        "token {}: {probes} probes among {SLOW} slow clients ({} connections), slowest {slowest:?}, {grown} descriptors more",
        token.is_some(),
        connects.load(Ordering::Relaxed)
    );
    assert!(
        grown <= 32 + 4,
        "{SLOW} slow clients took {grown} descriptors (bound 32)"
    );
    // The data path was never involved.
    assert_eq!(greet_once(lb.addr).as_deref(), Ok("a"));
}

#[test]
fn health_probes_answer_while_slow_clients_hold_connections() {
    probes_answer_while_slow_clients_trickle(None);
}

#[test]
fn health_probes_answer_while_slow_clients_hold_connections_with_a_token() {
    probes_answer_while_slow_clients_trickle(Some("s3cret"));
}

#[test]
fn request_heads_and_bodies_have_deadlines() {
    let a = NameServer::start("127.0.0.1:0", "a").unwrap();
    let backend = format!("{},name=a", a.addr());
    let (_lb, admin) = start_with_admin(&["--backend", &backend, "--health", "none"]);
    // A head that trickles in is cut after a few seconds, though bytes keep coming.
    let mut s = TcpStream::connect(admin.addr).unwrap();
    let started = Instant::now();
    let mut closed = false;
    for b in b"GET /health HTTP/1.1\r\nHost: slow\r\nX-Slow: 0123456789012345678901234567890123456789\r\n\r\n" {
        if s.write_all(&[*b]).is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
        if started.elapsed() > Duration::from_secs(20) {
            break;
        }
    }
    if !closed {
        // The close may only show on a read.
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut buf = [0u8; 256];
        closed = matches!(s.read(&mut buf), Ok(0) | Err(_))
            && started.elapsed() < Duration::from_secs(20);
    }
    assert!(
        closed,
        "a head trickled over {:?} was still read",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "cut after {:?}",
        started.elapsed()
    );

    // A body that trickles in gets 408 within a few seconds.
    let mut s = TcpStream::connect(admin.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    s.write_all(
        b"POST /backends HTTP/1.1\r\nHost: slow\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{",
    )
    .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while started.elapsed() < Duration::from_secs(20) {
        let _ = s.write_all(b" ");
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        if answer.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.starts_with("HTTP/1.1 408"),
        "{text:?} after {:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "{:?}",
        started.elapsed()
    );
    // Nothing was added.
    assert!(admin.backends().keys().eq(["a"]));
}
