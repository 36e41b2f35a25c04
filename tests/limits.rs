//! Per-source limits (`--max-conns-per-source`, `--max-conn-rate-per-source`) and per-backend
//! `max-conns` through the real binary: clients bound to distinct loopback source addresses,
//! backends that count their own open connections, and the refusals in
//! `uringlb_rejected_total{reason}` matching exactly the refusals the clients saw.

mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use uringlb_bench::EchoServer;

use util::*;

fn rejected(admin: &Admin, reason: &str) -> f64 {
    admin
        .metrics()
        .value("uringlb_rejected_total", &[("reason", reason)])
}

/// One line through an echo backend and back.
fn echo_line(s: &mut TcpStream, line: &str) {
    s.write_all(format!("{line}\n").as_bytes()).unwrap();
    assert_eq!(read_line(s), line);
}

/// Served (the echo answers) or refused (EOF or reset without a byte)?
fn served(s: &mut TcpStream, tag: &str) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The write may fail already on a refused connection.
    let _ = s.write_all(format!("{tag}\n").as_bytes());
    let mut buf = vec![0u8; tag.len() + 1];
    match s.read_exact(&mut buf) {
        Ok(()) => {
            assert_eq!(buf, format!("{tag}\n").as_bytes());
            true
        }
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
            ) =>
        {
            false
        }
        Err(e) => panic!("{tag}: neither served nor refused: {e}"),
    }
}

/// An echo backend that counts its open connections itself: (address, open now, most open
/// at once, accepted in all).
struct Counting {
    addr: SocketAddr,
    open: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    total: Arc<AtomicUsize>,
}

fn counting_echo() -> Counting {
    let open = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let total = Arc::new(AtomicUsize::new(0));
    let (o, p, t) = (open.clone(), peak.clone(), total.clone());
    let addr = serve(move |mut s| {
        let now = o.fetch_add(1, Ordering::SeqCst) + 1;
        p.fetch_max(now, Ordering::SeqCst);
        t.fetch_add(1, Ordering::SeqCst);
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        o.fetch_sub(1, Ordering::SeqCst);
    });
    Counting {
        addr,
        open,
        peak,
        total,
    }
}

impl Counting {
    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
    fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
    fn total(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }
}

// ---- --max-conns-per-source -----------------------------------------------------------------

#[test]
fn max_conns_per_source_refuses_only_that_source_across_workers() {
    let echo = EchoServer::start("127.0.0.1:0").unwrap();
    let backend = echo.addr().to_string();
    let (lb, admin) = start_with_admin(&[
        "--backend",
        &backend,
        "--max-conns-per-source",
        "3",
        "--workers",
        "2",
        "--health",
        "none",
    ]);
    let mut held: Vec<TcpStream> = (0..3)
        .map(|i| {
            let mut s = connect_from("127.0.0.2", lb.addr);
            echo_line(&mut s, &format!("held {i}"));
            s
        })
        .collect();
    let mut others = vec![connect_from("127.0.0.3", lb.addr)];
    echo_line(&mut others[0], "other 0");
    assert_eq!(echo.connections(), 4);

    // 127.0.0.2 is at its limit: more from it are closed at once (several, so that both
    // workers are likely to refuse one); other sources (each below its own limit of 3)
    // are served in between.
    let mut refusals = 0;
    for i in 0..4 {
        // Refused with a reset, which may come while the connect completes.
        let after = match connect_or_reset_from("127.0.0.2", lb.addr) {
            None => Duration::ZERO,
            Some(mut s) => closed_within(&mut s, Duration::from_secs(3))
                .unwrap_or_else(|| panic!("refusal {i}: not closed")),
        };
        assert!(
            after < Duration::from_secs(2),
            "closed only after {after:?}"
        );
        refusals += 1;
        let src = if i < 2 {
            "127.0.0.3".to_string()
        } else {
            format!("127.0.0.{}", 10 + i)
        };
        let mut o = connect_from(&src, lb.addr);
        echo_line(&mut o, &format!("other {} from {src}", i + 1));
        others.push(o);
    }
    // The refused ones never reached a backend.
    assert_eq!(echo.connections(), 4 + 4);
    assert_eq!(rejected(&admin, "max_conns_per_source"), refusals as f64);
    for (i, s) in held.iter_mut().enumerate() {
        echo_line(s, &format!("still held {i}"));
    }

    // One of the three closes: once the balancer has closed it too, 127.0.0.2 is served
    // again, and then it is at its limit again.
    drop(held.pop());
    wait_until(
        "the closed connection released",
        Duration::from_secs(5),
        || admin.metrics().sum("uringlb_connections_active") == (2 + others.len()) as f64,
    );
    let mut again = connect_from("127.0.0.2", lb.addr);
    echo_line(&mut again, "served again");
    held.push(again);
    if let Some(mut s) = connect_or_reset_from("127.0.0.2", lb.addr) {
        assert!(closed_within(&mut s, Duration::from_secs(3)).is_some());
    }
    refusals += 1;
    assert_eq!(rejected(&admin, "max_conns_per_source"), refusals as f64);
    assert_eq!(echo.connections(), 4 + 4 + 1);
    assert_eq!(rejected(&admin, "max_conn_rate_per_source"), 0.0);
}

// ---- --max-conn-rate-per-source -------------------------------------------------------------

#[test]
fn max_conn_rate_per_source_serves_five_a_second() {
    let echo = EchoServer::start("127.0.0.1:0").unwrap();
    let backend = echo.addr().to_string();
    let (lb, admin) = start_with_admin(&[
        "--backend",
        &backend,
        "--max-conn-rate-per-source",
        "5",
        "--workers",
        "2",
        "--health",
        "none",
    ]);
    // Ten connections from 127.0.0.4 in a burst, all kept open (the limit is on new
    // connections, not open ones).
    let start = Instant::now();
    let mut burst: Vec<Option<TcpStream>> = (0..10)
        .map(|_| connect_or_reset_from("127.0.0.4", lb.addr))
        .collect();
    let verdicts: Vec<bool> = burst
        .iter_mut()
        .enumerate()
        .map(|(i, s)| s.as_mut().is_some_and(|s| served(s, &format!("burst {i}"))))
        .collect();
    // Another source in the same second is not affected: its first five are all served.
    let mut other: Vec<TcpStream> = (0..5).map(|_| connect_from("127.0.0.5", lb.addr)).collect();
    for (i, s) in other.iter_mut().enumerate() {
        assert!(served(s, &format!("other {i}")), "127.0.0.5 refused");
    }
    // Every admission of the burst happened between `start` and now.
    let burst_done = Instant::now();
    let took = burst_done - start;
    let ok = verdicts.iter().filter(|&&v| v).count();
    println!("rate: burst of 10 took {took:?}: {ok} served, verdicts {verdicts:?}");
    if took < Duration::from_millis(950) {
        // All ten within one window (it starts at the first admission): exactly five.
        assert_eq!(ok, 5, "{verdicts:?}");
    } else {
        // A very slow machine: the burst may straddle two windows.
        assert!((5..10).contains(&ok), "{verdicts:?}");
    }
    let refused = 10 - ok;
    assert_eq!(rejected(&admin, "max_conn_rate_per_source"), refused as f64);
    assert_eq!(echo.connections() as usize, ok + 5);

    // The window that started in the burst is over a second after it ended: served again.
    // Time itself is the condition here (polling with connections would spend the new
    // window's budget and count refusals).
    let wait = (burst_done + Duration::from_millis(1050)).saturating_duration_since(Instant::now());
    std::thread::sleep(wait);
    let mut later = connect_from("127.0.0.4", lb.addr);
    assert!(
        served(&mut later, "next second"),
        "not served in a new window"
    );
    assert_eq!(rejected(&admin, "max_conn_rate_per_source"), refused as f64);
    assert_eq!(rejected(&admin, "max_conns_per_source"), 0.0);
}

// ---- per-backend max-conns ------------------------------------------------------------------

/// Backends a (max-conns=2) and b (no limit), round robin over two workers.
fn max_conns_pair() -> (Counting, Counting, Lb, Admin) {
    let a = counting_echo();
    let b = counting_echo();
    let (lb, admin) = start_with_admin(&[
        "--backend",
        &format!("{},name=a,max-conns=2", a.addr),
        "--backend",
        &format!("{},name=b", b.addr),
        "--workers",
        "2",
        "--health",
        "none",
    ]);
    (a, b, lb, admin)
}

#[test]
fn backend_max_conns_sends_the_rest_elsewhere() {
    let (a, b, lb, admin) = max_conns_pair();
    // Ten connections, one at a time, all held: a fills up to its limit, b takes the rest.
    let mut conns: Vec<TcpStream> = Vec::new();
    for i in 0..10 {
        let mut s = connect_from("127.0.0.1", lb.addr);
        assert!(served(&mut s, &format!("seq {i}")), "conn {i} refused");
        conns.push(s);
    }
    println!(
        "max-conns, one at a time: a open {} (peak {}), b open {}",
        a.open(),
        a.peak(),
        b.open()
    );
    assert!(a.peak() <= 2, "backend a had {} open at once", a.peak());
    assert_eq!((a.open(), b.open()), (2, 8));
    let m = admin.metrics();
    assert_eq!(
        m.value("uringlb_connections_active", &[("backend", "a")]),
        2.0
    );
    assert_eq!(m.sum("uringlb_rejected_total"), 0.0);
    // All leave: once the balancer has closed them, a is used again, up to its limit.
    drop(conns);
    wait_until("all closed", Duration::from_secs(5), || {
        admin.metrics().sum("uringlb_connections_active") == 0.0
    });
    let total_before = a.total();
    let mut conns: Vec<TcpStream> = Vec::new();
    for i in 0..10 {
        let mut s = connect_from("127.0.0.1", lb.addr);
        assert!(served(&mut s, &format!("again {i}")), "conn {i} refused");
        conns.push(s);
    }
    assert_eq!(a.total() - total_before, 2, "a took two again");
    assert!(a.peak() <= 2, "backend a had {} open at once", a.peak());
    assert_eq!((a.open(), b.open()), (2, 8));
}

#[test]
fn backend_max_conns_holds_when_connections_open_at_once() {
    let (a, b, lb, admin) = max_conns_pair();
    // Ten connections opened at once (their backend connects race, in both workers), then
    // each checked: a backend's connects in flight count toward its limit too.
    let mut conns: Vec<TcpStream> = (0..10)
        .map(|_| connect_from("127.0.0.1", lb.addr))
        .collect();
    for (i, s) in conns.iter_mut().enumerate() {
        assert!(served(s, &format!("conn {i}")), "conn {i} refused");
    }
    println!(
        "max-conns, opened at once: a open {} (peak {}), b open {}",
        a.open(),
        a.peak(),
        b.open()
    );
    assert_eq!(a.open() + b.open(), 10);
    assert_eq!(admin.metrics().sum("uringlb_rejected_total"), 0.0);
    assert!(
        a.peak() <= 2,
        "backend a (max-conns=2) had {} connections open at once",
        a.peak()
    );
}

#[test]
fn full_backend_queues_the_client_until_a_connection_frees() {
    let c = counting_echo();
    let (lb, admin) = start_with_admin(&[
        "--backend",
        &format!("{},max-conns=1", c.addr),
        "--workers",
        "1",
        "--connect-timeout",
        "5s",
        "--health",
        "none",
    ]);
    let mut first = lb.connect();
    echo_line(&mut first, "first");
    let mut second = lb.connect();
    second.write_all(b"second\n").unwrap();
    // Waiting: no answer while the first holds the only connection.
    second
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut b = [0u8; 1];
    match second.read(&mut b) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("the queued client got {other:?} while the backend was full"),
    }
    assert_eq!(c.total(), 1);
    assert_eq!(c.peak(), 1);
    // The first leaves: the second is served at once.
    drop(first);
    let freed = Instant::now();
    second
        .set_read_timeout(Some(Duration::from_secs(4)))
        .unwrap();
    assert_eq!(read_line(&mut second), "second");
    let waited = freed.elapsed();
    println!("queued client served {waited:?} after the first closed");
    assert!(
        waited < Duration::from_secs(1),
        "served only after {waited:?}"
    );
    assert_eq!(c.peak(), 1, "never two at once");
    assert_eq!(rejected(&admin, "backends_full"), 0.0);
}

#[test]
fn queued_client_is_closed_after_the_connect_timeout() {
    let c = counting_echo();
    let (lb, admin) = start_with_admin(&[
        "--backend",
        &format!("{},max-conns=1", c.addr),
        "--workers",
        "1",
        "--connect-timeout",
        "500ms",
        "--health",
        "none",
    ]);
    let mut first = lb.connect();
    echo_line(&mut first, "first");
    let start = Instant::now();
    let mut second = lb.connect();
    let after = closed_within(&mut second, Duration::from_secs(5))
        .map(|_| start.elapsed())
        .expect("the queued client was not closed");
    println!("queued client closed after {after:?} (connect timeout 500ms)");
    assert!(
        after >= Duration::from_millis(450),
        "closed after {after:?}, before the connect timeout"
    );
    assert!(
        after < Duration::from_secs(2),
        "closed only after {after:?}"
    );
    assert_eq!(rejected(&admin, "backends_full"), 1.0);
    assert_eq!(c.total(), 1);
    echo_line(&mut first, "first still served");
}
