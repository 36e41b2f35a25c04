//! Defects an adversarial run found on the data path, each through the real binary: the
//! connection limit, connections cut early, a backend that is the balancer itself, retries
//! and the round-robin cursor, a failed worker, local resource exhaustion, memory for a
//! large limit.

mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use util::*;

/// A backend that echoes and tracks how many connections it has open at once.
struct CountingEcho {
    addr: SocketAddr,
    open: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

fn counting_echo() -> CountingEcho {
    let open = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (o, p) = (open.clone(), peak.clone());
    let addr = serve(move |mut s| {
        let now = o.fetch_add(1, Ordering::SeqCst) + 1;
        p.fetch_max(now, Ordering::SeqCst);
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 || s.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        o.fetch_sub(1, Ordering::SeqCst);
    });
    CountingEcho { addr, open, peak }
}

/// `clients` clients each send a byte and wait for its echo, holding their connection
/// until `release`; with `--max-conns max`, at most `max` may be served at once, the others
/// must wait (not be reset) and be served once the first ones close.
fn limit_holds(workers: &str, max: usize, clients: usize) {
    let echo = counting_echo();
    let b = echo.addr.to_string();
    let m = max.to_string();
    let (lb, admin) = start_with_admin(&[
        "--backend",
        &b,
        "--health",
        "none",
        "--workers",
        workers,
        "--max-conns",
        &m,
    ]);
    let served = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..clients)
        .map(|i| {
            let (addr, served, release) = (lb.addr, served.clone(), release.clone());
            std::thread::spawn(move || -> Result<(), String> {
                let mut s = TcpStream::connect(addr).map_err(|e| format!("{i}: connect: {e}"))?;
                s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                s.write_all(&[i as u8])
                    .map_err(|e| format!("{i}: write: {e}"))?;
                let mut b = [0u8; 1];
                s.read_exact(&mut b)
                    .map_err(|e| format!("{i}: read: {e}"))?;
                if b[0] != i as u8 {
                    return Err(format!("{i}: wrong echo"));
                }
                served.fetch_add(1, Ordering::SeqCst);
                while !release.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(10)); // holds the connection
                }
                Ok(())
            })
        })
        .collect();
    wait_until(
        "the limit's worth of clients served",
        Duration::from_secs(30),
        || served.load(Ordering::SeqCst) >= max,
    );
    // The rest are accepted by the kernel and wait; the balancer must not serve them now.
    wait_until(
        "waiting clients held in the backlog",
        Duration::from_secs(30),
        || admin.metrics().value("uringlb_client_connections", &[]) as usize == max,
    );
    assert_eq!(echo.open.load(Ordering::SeqCst), max);
    release.store(true, Ordering::SeqCst);
    let errors: Vec<String> = threads
        .into_iter()
        .filter_map(|t| t.join().expect("client thread").err())
        .collect();
    assert!(errors.is_empty(), "clients failed: {errors:?}");
    assert_eq!(served.load(Ordering::SeqCst), clients);
    let peak = echo.peak.load(Ordering::SeqCst);
    println!("max-conns {max}, {workers} worker(s): {clients} clients, peak {peak} served at once");
    assert!(
        peak <= max,
        "{peak} clients served at once with --max-conns {max}"
    );
    let m = admin.metrics();
    assert_eq!(
        m.value("uringlb_rejected_total", &[("reason", "no_slot")]),
        0.0
    );
    assert!(!lb.log_text().contains("closing a new client"));
}

#[test]
fn max_conns_is_never_overshot_and_waiting_clients_are_served_not_reset() {
    limit_holds("1", 100, 400);
    limit_holds("2", 50, 300);
}

/// A backend that streams bytes forever, and a client that connects through the balancer
/// and does not read for `stall`: returns what the client then reads.
fn stalled_download(
    extra: &[&str],
    stall: Duration,
    during: impl FnOnce(&Lb),
) -> std::io::Result<usize> {
    let backend = serve(|mut s| {
        let chunk = vec![7u8; 64 * 1024];
        while s.write_all(&chunk).is_ok() {}
    });
    let b = backend.to_string();
    let mut args = vec![
        "--backend",
        b.as_str(),
        "--health",
        "none",
        "--workers",
        "1",
    ];
    args.extend_from_slice(extra);
    let lb = Lb::start(&args);
    let mut s = lb.connect();
    std::thread::sleep(stall); // the client reads nothing: the connection goes idle
    during(&lb);
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[test]
fn an_idle_timeout_ends_in_a_reset_not_a_clean_eof() {
    let r = stalled_download(&["--idle-timeout", "1s"], Duration::from_secs(3), |_| {});
    match r {
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
        Ok(n) => panic!("the cut stream ended in a clean EOF after {n} bytes"),
    }
}

#[test]
fn the_end_of_the_grace_period_resets_what_is_still_open() {
    let r = stalled_download(&["--grace", "1s"], Duration::from_millis(300), |lb| {
        lb.signal(libc::SIGTERM);
    });
    match r {
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
        Ok(n) => panic!("the cut stream ended in a clean EOF after {n} bytes"),
    }
}

#[test]
fn a_drain_deadline_resets_what_is_still_open() {
    let backend = serve(|mut s| {
        let chunk = vec![7u8; 64 * 1024];
        while s.write_all(&chunk).is_ok() {}
    });
    let b = format!("{backend},name=stream");
    let (lb, admin) = start_with_admin(&[
        "--backend",
        &b,
        "--health",
        "none",
        "--workers",
        "1",
        "--grace",
        "1s",
    ]);
    let mut s = lb.connect();
    let mut first = [0u8; 1];
    s.read_exact(&mut first).unwrap();
    let r = admin.req("PATCH", "/backends/stream", Some(r#"{"state":"drain"}"#));
    assert_eq!(r.status, 200, "{r:?}");
    std::thread::sleep(Duration::from_secs(2)); // not reading past the drain deadline
    let mut buf = vec![0u8; 1 << 16];
    let end = loop {
        match s.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(_) => {}
            Err(e) => break Err(e),
        }
    };
    match end {
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
        Ok(()) => panic!("the cut stream ended in a clean EOF"),
    }
}

#[test]
fn a_backend_at_our_own_listen_address_is_refused() {
    let addr = free_addr();
    let own = addr.to_string();
    // At start and in --check.
    for check in [true, false] {
        let mut args = vec!["--listen", own.as_str(), "--backend", own.as_str()];
        if check {
            args.push("--check");
        }
        let (st, _, err) = run_bin(&args);
        assert_eq!(st.code(), Some(2), "{err}");
        assert!(err.contains("the balancer's own listen address"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    // A wildcard listener owns every local address of its port.
    let wild = format!("0.0.0.0:{}", addr.port());
    let (st, _, err) = run_bin(&["--listen", &wild, "--backend", &own, "--check"]);
    assert_eq!(st.code(), Some(2), "{err}");
    // By the admin API: refused, nothing added.
    let echo = counting_echo();
    let b = echo.addr.to_string();
    let (lb, admin) = start_with_admin(&["--backend", &b, "--health", "none"]);
    let body = format!(r#"{{"addr": "{}", "name": "me"}}"#, lb.addr);
    let r = admin.req("POST", "/backends", Some(&body));
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.error().contains("own listen address"), "{r:?}");
    assert!(!admin.backends().contains_key("me"));
}

/// Runs `f` on a thread in a network namespace of its own (root only), where iptables
/// rules touch nothing of the machine's.
fn in_private_netns(f: impl FnOnce() + Send + 'static) {
    std::thread::spawn(move || {
        // SAFETY: unshare only changes this thread's namespace membership.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET) needs root: {}",
            std::io::Error::last_os_error()
        );
        let st = std::process::Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .expect("ip");
        assert!(st.success());
        f();
    })
    .join()
    .expect("the test in its namespace");
}

#[test]
fn a_loop_through_nat_is_cut_at_its_first_turn() {
    in_private_netns(|| {
        let echo = counting_echo();
        let lb_addr: SocketAddr = "127.0.0.1:18080".parse().unwrap();
        // 127.0.0.1:9999 looks like any backend; NAT sends it to the balancer.
        let st = std::process::Command::new("iptables")
            .args([
                "-t",
                "nat",
                "-A",
                "OUTPUT",
                "-p",
                "tcp",
                "-d",
                "127.0.0.1",
                "--dport",
                "9999",
                "-j",
                "REDIRECT",
                "--to-ports",
                "18080",
            ])
            .status()
            .expect("iptables (scripts/install-test-deps.sh installs it)");
        assert!(st.success());
        let admin_addr = free_addr();
        let a = admin_addr.to_string();
        let good = format!("{},name=good", echo.addr);
        let lb = Lb::start_on(
            lb_addr,
            &[
                "--admin",
                &a,
                "--backend",
                "127.0.0.1:9999,name=loop",
                "--backend",
                &good,
                "--health",
                "none",
                "--algorithm",
                "round-robin",
                "--retries",
                "0",
            ],
        );
        wait_admin(admin_addr);
        let admin = Admin::new(admin_addr);
        let r = admin.req("PATCH", "/backends/good", Some(r#"{"state":"maint"}"#));
        assert_eq!(r.status, 200, "{r:?}");
        // One client: sent to the loop backend, which is the balancer again.
        let mut s = lb.connect();
        let _ = s.write_all(b"hello");
        let mut buf = [0u8; 16];
        let r = s.read(&mut buf);
        assert!(
            !matches!(r, Ok(n) if n > 0),
            "got an answer through a loop: {r:?}"
        );
        wait_until("the loop detected", Duration::from_secs(10), || {
            admin
                .metrics()
                .value("uringlb_rejected_total", &[("reason", "loop")])
                >= 1.0
        });
        let m = admin.metrics();
        let accepted = m.sum("uringlb_accepted_total");
        println!("a loop through NAT: {accepted} connection(s) accepted in all");
        assert_eq!(accepted, 2.0, "the loop went round {accepted} times");
        wait_until(
            "the loop's connections closed",
            Duration::from_secs(10),
            || admin.metrics().value("uringlb_client_connections", &[]) == 0.0,
        );
        // The balancer serves on.
        let r = admin.req("PATCH", "/backends/good", Some(r#"{"state":"up"}"#));
        assert_eq!(r.status, 200, "{r:?}");
        let r = admin.req("PATCH", "/backends/loop", Some(r#"{"state":"maint"}"#));
        assert_eq!(r.status, 200, "{r:?}");
        let mut s = lb.connect();
        s.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"x");
    });
}

/// A backend address whose connects hang: a listener whose accept queue is full drops
/// new SYNs. Keep the returned sockets alive.
fn black_hole() -> (SocketAddr, Vec<socket2::Socket>) {
    use socket2::{Domain, Socket, Type};
    let l = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    l.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    l.listen(0).unwrap();
    let addr = l.local_addr().unwrap().as_socket().unwrap();
    let mut keep = vec![l];
    for _ in 0..8 {
        let c = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        if c.connect_timeout(&addr.into(), Duration::from_millis(200))
            .is_err()
        {
            break; // the queue is full: this one hangs
        }
        keep.push(c);
    }
    (addr, keep)
}

#[test]
fn a_retry_does_not_drag_round_robin_onto_the_dead_backend() {
    let echo = counting_echo();
    let (dead, _keep) = black_hole();
    let good = format!("{},name=good", echo.addr);
    let dead = format!("{dead},name=dead");
    let (lb, admin) = start_with_admin(&[
        "--backend",
        &good,
        "--backend",
        &dead,
        "--retries",
        "1",
        "--connect-timeout",
        "300ms",
        "--health",
        "none",
        "--eject-after",
        "0",
        "--workers",
        "1",
    ]);
    for i in 0..12u8 {
        let mut s = lb.connect();
        s.write_all(&[i]).unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        assert_eq!(b[0], i);
    }
    let m = admin.metrics();
    let first_on_dead = m.value("uringlb_connect_failures_total", &[("backend", "dead")]);
    println!("12 clients, {first_on_dead} tried the dead backend first");
    assert_eq!(first_on_dead, 6.0, "every other client, not every one");
}

#[test]
fn a_failed_worker_is_replaced_and_gives_back_what_it_held() {
    let echo = counting_echo();
    let b = format!("{},name=e", echo.addr);
    let admin_addr = free_addr();
    let a = admin_addr.to_string();
    let lb = Lb::start_with_env(
        &[
            "--admin",
            &a,
            "--backend",
            &b,
            "--health",
            "none",
            "--workers",
            "1",
        ],
        &[("URINGLB_TEST_FAIL_WORKER", "0:40")],
    );
    wait_admin(admin_addr);
    let admin = Admin::new(admin_addr);
    // A connection held open across the failure, and traffic to drive the loop on.
    let mut held = lb.connect();
    held.write_all(b"a").unwrap();
    let mut one = [0u8; 1];
    held.read_exact(&mut one).unwrap();
    wait_until("the worker replaced", Duration::from_secs(30), || {
        if let Ok(mut s) = TcpStream::connect(lb.addr) {
            let _ = s.write_all(b"b");
        }
        admin.metrics().value("uringlb_worker_restarts_total", &[]) >= 1.0
    });
    assert!(lb.log_text().contains("worker failed"), "{}", lb.log_text());
    // The held connection was reset, and its counts given back.
    held.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert!(
        !matches!(held.read(&mut one), Ok(1)),
        "the held connection survived"
    );
    wait_until("counts given back", Duration::from_secs(10), || {
        let m = admin.metrics();
        m.value("uringlb_connections_active", &[("backend", "e")]) == 0.0
            && m.value("uringlb_client_connections", &[]) == 0.0
    });
    assert_eq!(admin.metrics().value("uringlb_workers_alive", &[]), 1.0);
    // The new worker serves.
    let mut s = lb.connect();
    s.write_all(b"z").unwrap();
    s.read_exact(&mut one).unwrap();
    assert_eq!(&one, b"z");
}

/// Sets the soft open-file limit of process `pid` (the hard one stays).
/// The descriptor numbers process `pid` has open.
fn open_fds(pid: i32) -> std::collections::BTreeSet<usize> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

fn set_nofile(pid: i32, n: usize) {
    let st = std::process::Command::new("prlimit")
        .args([format!("--pid={pid}"), format!("--nofile={n}:")])
        .status()
        .expect("prlimit (util-linux)");
    assert!(st.success());
}

#[test]
fn no_descriptor_for_the_backend_is_counted_and_logged_once_a_second() {
    let echo = counting_echo();
    let b = echo.addr.to_string();
    // The admin endpoint is listening once the balancer runs; no request reaches it before
    // the limit is set, so no descriptor of its comes or goes meanwhile.
    let admin_addr = free_addr();
    let a = admin_addr.to_string();
    let lb = Lb::start(&[
        "--admin",
        &a,
        "--backend",
        &b,
        "--health",
        "none",
        "--workers",
        "1",
    ]);
    let admin = Admin::new(admin_addr);
    // No descriptor left for a backend socket once a client is accepted: the limit is on
    // descriptor numbers, so it goes right above the second free number.
    let used = open_fds(lb.pid());
    let second_free = (0..).filter(|n| !used.contains(n)).nth(1).unwrap();
    set_nofile(lb.pid(), second_free);
    let open = used.len();
    let mut refused = 0;
    for _ in 0..10 {
        let mut s = lb.connect();
        let _ = s.write_all(b"x");
        let mut b = [0u8; 1];
        if !matches!(s.read(&mut b), Ok(1)) {
            refused += 1;
        }
    }
    set_nofile(lb.pid(), open + 1000);
    assert_eq!(refused, 10, "clients served without a backend socket");
    let m = admin.metrics();
    let local = m.value("uringlb_rejected_total", &[("reason", "local_error")]);
    assert!(local >= 1.0, "local errors {local}");
    assert_eq!(
        m.value("uringlb_rejected_total", &[("reason", "no_backend")]),
        0.0
    );
    assert_eq!(
        m.value("uringlb_connect_failures_total", &[("backend", &b)]),
        0.0
    );
    let logged = lb
        .log_text()
        .matches("cannot open a backend socket")
        .count();
    assert!(logged <= 2, "logged {logged} times in about a second");
    let mut s = lb.connect();
    s.write_all(b"y").unwrap();
    let mut one = [0u8; 1];
    s.read_exact(&mut one).unwrap();
}

#[test]
fn a_health_check_without_a_descriptor_is_not_the_backends_failure() {
    let echo = counting_echo();
    let b = echo.addr.to_string();
    let admin_addr = free_addr();
    let a = admin_addr.to_string();
    let named = format!("{b},name=web");
    let lb = Lb::start(&[
        "--admin",
        &a,
        "--backend",
        &named,
        "--health",
        "tcp",
        "--health-interval",
        "100ms",
        "--fall",
        "1",
        "--rise",
        "1",
        "--workers",
        "1",
    ]);
    let admin = Admin::new(admin_addr);
    // A backend starts up. Not one descriptor left: every check fails at its socket, for
    // our want, not the backend's; with --fall 1, one such failure counted would take the
    // backend down. (No admin request before the limit: its descriptors would come and go.)
    // A check's own socket is open for a moment every 100 ms, and one look at the
    // descriptors may catch it (the limit would then leave its number free for the next
    // check): the lowest free number over three check intervals is the one held by none.
    let used = open_fds(lb.pid());
    let looking = std::time::Instant::now();
    let mut lowest_free = usize::MAX;
    while looking.elapsed() < Duration::from_millis(300) {
        let now = open_fds(lb.pid());
        lowest_free = lowest_free.min((0..).find(|n| !now.contains(n)).unwrap());
    }
    set_nofile(lb.pid(), lowest_free);
    wait_until("a check under the limit", Duration::from_secs(10), || {
        let log = lb.log_text();
        log.contains("could not run") || log.contains("up -> down")
    });
    set_nofile(lb.pid(), used.len() + 1000);
    assert_eq!(admin.backends()["web"]["state"], "up");
    let log = lb.log_text();
    assert!(!log.contains("up -> down"), "{log}");
}

#[test]
fn a_large_max_conns_costs_memory_only_when_used() {
    let echo = counting_echo();
    let b = echo.addr.to_string();
    let lb = Lb::start(&[
        "--backend",
        &b,
        "--health",
        "none",
        "--workers",
        "2",
        "--max-conns",
        "1000000",
    ]);
    let rss = rss_kib(lb.pid());
    println!("--max-conns 1000000, 2 workers: {rss} KiB resident");
    assert!(rss < 48 * 1024, "{rss} KiB resident before any connection");
}
