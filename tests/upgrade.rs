//! Binary upgrade by listener hand-over (`--upgrade-socket`) through the real binary: a
//! new process takes the running one's listening sockets over a Unix socket, serves, and
//! the old one stops accepting and drains. Unlike the naive restart (a second process
//! binding the address with SO_REUSEPORT, then SIGTERM to the first; tests/restart.rs),
//! no socket with clients in its accept queue is ever closed, so no client is refused or
//! reset, without `net.ipv4.tcp_migrate_req`. The tests set that sysctl to 0 while they
//! run (root) or refuse to run with it on, so that it cannot be what saves them.

mod util;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use util::*;

const MIGRATE: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

/// `tcp_migrate_req` is 0 while it lives (set so, as root, and restored), so the kernel
/// does not move queued clients between listeners: only the hand-over can keep them.
/// With the sysctl on and no way to turn it off the test fails, saying why.
struct NoMigration {
    restore: Option<String>,
    _lock: std::sync::MutexGuard<'static, ()>,
}

impl NoMigration {
    fn ensure() -> NoMigration {
        // The tests of this file run in parallel and share the setting.
        static LOCK: Mutex<()> = Mutex::new(());
        let lock = LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::fs::read_to_string(MIGRATE).unwrap_or_else(|_| "0".to_string());
        let now = now.trim().to_string();
        if now == "0" {
            return NoMigration {
                restore: None,
                _lock: lock,
            };
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            panic!(
                "{MIGRATE} is {now}: the kernel would move queued clients itself and hide a \
                 failed hand-over; run as root (the test sets it to 0 and restores it) or set it \
                 to 0"
            );
        }
        std::fs::write(MIGRATE, "0").expect("set tcp_migrate_req to 0");
        NoMigration {
            restore: Some(now),
            _lock: lock,
        }
    }
}

impl Drop for NoMigration {
    fn drop(&mut self) {
        if let Some(v) = &self.restore {
            let _ = std::fs::write(MIGRATE, v);
        }
    }
}

/// A directory of its own for the upgrade socket, removed at the end.
struct SockDir(PathBuf);

impl SockDir {
    fn new() -> SockDir {
        let dir = std::env::temp_dir().join(format!(
            "uringlb-upgrade-{}-{}",
            std::process::id(),
            fixed_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        SockDir(dir)
    }

    fn sock(&self) -> PathBuf {
        self.0.join("up.sock")
    }
}

impl Drop for SockDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One request on a new connection: 1000 pattern bytes, the echo read to EOF and compared.
/// Any refusal, reset, timeout or difference is a failure.
fn echo_once(addr: SocketAddr) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let data = pattern(
        u64::from(s.local_addr().map(|a| a.port()).unwrap_or(1)),
        1000,
    );
    s.write_all(&data).map_err(|e| format!("write: {e}"))?;
    s.shutdown(Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    let mut got = Vec::new();
    s.read_to_end(&mut got)
        .map_err(|e| format!("read after {} bytes: {e}", got.len()))?;
    if got != data {
        return Err(format!("echo differs ({} of 1000 bytes)", got.len()));
    }
    Ok("echo".to_string())
}

fn lb_args<'a>(backend: &'a str, workers: &'a str, sock: &'a Path) -> Vec<&'a str> {
    vec![
        "--backend",
        backend,
        "--workers",
        workers,
        "--health",
        "none",
        "--grace",
        "20s",
        "--upgrade-socket",
        sock.to_str().unwrap(),
    ]
}

/// Starts the next generation on `addr` and waits until it has taken the listeners over.
fn upgrade_to(addr: SocketAddr, args: &[&str]) -> Lb {
    let next = Lb::start_on(addr, args);
    next.wait_log(
        &["upgrade: taken", "listeners from pid"],
        1,
        Duration::from_secs(30),
    );
    next
}

/// Waits for `old` to exit by itself after handing over; it must exit 0.
fn wait_old_exits(old: &mut Lb) {
    let st = old
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the old process did not exit: {}", old.log_text()));
    assert!(st.success(), "old process: {st}: {}", old.log_text());
    assert_eq!(
        old.lines_with(&["upgrade: handed", "listeners to pid"])
            .len(),
        1,
        "{}",
        old.log_text()
    );
}

#[test]
fn five_upgrades_under_load_lose_no_connection() {
    let _no_migration = NoMigration::ensure();
    let echo = uringlb_bench::EchoServer::start("127.0.0.1:0").unwrap();
    let backend = echo.addr().to_string();
    let dir = SockDir::new();
    let sock = dir.sock();
    let addr = free_addr();
    // Worker counts by generation: fewer workers than the sockets handed over (a worker
    // takes several) and more (the new process binds extra SO_REUSEPORT ones).
    let workers = ["2", "1", "3", "2", "1", "2"];
    let mut current = Lb::start_on(addr, &lb_args(&backend, workers[0], &sock));
    let load = ConnLoop::start_with(addr, 4, Duration::ZERO, echo_once);
    load.wait_more(200);
    for (i, w) in workers.iter().enumerate().skip(1) {
        let mut next = upgrade_to(addr, &lb_args(&backend, w, &sock));
        load.wait_more(100);
        wait_old_exits(&mut current);
        next.check_alive();
        println!(
            "upgrade {i}: {}",
            next.lines_with(&["upgrade: taken"]).join("")
        );
        current = next;
        load.wait_more(100);
    }
    let attempts = load.finish();
    let what = format!("upgrade under load, {} upgrades", workers.len() - 1);
    let failed = report_failures(&what, &attempts);
    assert!(failed.is_empty(), "no connection may fail across upgrades");
    assert!(attempts.len() > 1000, "the load ran: {}", attempts.len());
    assert!(echo_once(addr).is_ok(), "the last generation serves");
}

/// Failed attempts of [`echo_counted`], as they happen.
static NAIVE_FAILED: AtomicUsize = AtomicUsize::new(0);

fn echo_counted(addr: SocketAddr) -> Result<String, String> {
    let r = echo_once(addr);
    if r.is_err() {
        NAIVE_FAILED.fetch_add(1, Ordering::Relaxed);
    }
    r
}

/// The control: the same load through the naive restart (a second process binds the
/// address with SO_REUSEPORT, then the first gets SIGTERM) loses the clients queued on the
/// first's listeners when it closes them: it shows the detector above can fail. A loss
/// needs a client in the queue at that moment, so it restarts until one is lost (a few
/// times usually), at most 40 times.
#[test]
fn the_naive_restart_loses_connections_the_hand_over_keeps() {
    let _no_migration = NoMigration::ensure();
    let echo = uringlb_bench::EchoServer::start("127.0.0.1:0").unwrap();
    let backend = echo.addr().to_string();
    let addr = free_addr();
    let args = [
        "--backend",
        backend.as_str(),
        "--workers",
        "2",
        "--health",
        "none",
        "--grace",
        "20s",
    ];
    let mut current = Lb::start_on(addr, &args);
    let load = ConnLoop::start_with(addr, 4, Duration::ZERO, echo_counted);
    load.wait_more(200);
    let mut restarts = 0;
    while restarts < 40 && NAIVE_FAILED.load(Ordering::Relaxed) == 0 {
        let next = Lb::start_on(addr, &args);
        load.wait_more(100);
        current.signal(libc::SIGTERM);
        let _ = current.wait_exit(Duration::from_secs(30));
        current = next;
        load.wait_more(100);
        restarts += 1;
    }
    let attempts = load.finish();
    let what = format!("naive restart under load, {restarts} restarts");
    let failed = report_failures(&what, &attempts);
    assert!(
        !failed.is_empty(),
        "the naive restart was expected to lose connections (tcp_migrate_req is 0)"
    );
}

#[test]
fn a_long_transfer_on_the_old_process_finishes_after_the_hand_over() {
    let _no_migration = NoMigration::ensure();
    let echo = uringlb_bench::EchoServer::start("127.0.0.1:0").unwrap();
    let backend = echo.addr().to_string();
    let dir = SockDir::new();
    let sock = dir.sock();
    let addr = free_addr();
    // Both on the same admin address: the new process takes the admin listener too.
    let admin_addr = free_addr();
    let admin = admin_addr.to_string();
    let mut args = lb_args(&backend, "2", &sock);
    args.extend(["--admin", admin.as_str()]);
    let mut old = Lb::start_on(addr, &args);
    wait_admin(admin_addr);
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let long = LongEcho::on(s, String::new(), 7, 64 * 1024, Duration::from_millis(10));
    wait_until("the transfer to start", Duration::from_secs(10), || {
        long.sent() > 256 * 1024
    });
    let mut new = upgrade_to(addr, &args);
    // Two TCP listeners and the admin one.
    new.wait_log(&["upgrade: taken 3 listeners"], 1, Duration::from_secs(10));
    old.wait_log(&["upgrade: handed 3 listeners"], 1, Duration::from_secs(10));
    // Both of the old process's workers stopped accepting: every new connection is the
    // new one's.
    old.wait_log(&["stopping", "worker="], 2, Duration::from_secs(10));
    let before = long.sent();
    for seed in 0..20 {
        echo_exchange(addr, seed, 10_000);
    }
    wait_until("the transfer to go on", Duration::from_secs(20), || {
        long.sent() > before + 1024 * 1024
    });
    assert!(old.running(), "the old process drains its open transfer");
    let r = long.finish().expect("the long transfer");
    assert!(r.exact, "byte-exact echo after the hand-over: {r:?}");
    assert!(r.received > 1024 * 1024, "{r:?}");
    wait_old_exits(&mut old);
    new.check_alive();
    echo_exchange(addr, 99, 10_000);
    // Only the new process is left to answer on the admin address.
    let new_admin = Admin::new(admin_addr);
    assert!(
        new_admin.metrics().sum("uringlb_accepted_total") >= 21.0,
        "the new process served the new connections, and its admin endpoint answers"
    );
}

#[test]
fn a_stale_socket_is_removed_and_a_bad_config_leaves_the_old_serving() {
    let echo = uringlb_bench::EchoServer::start("127.0.0.1:0").unwrap();
    let backend = echo.addr().to_string();
    let dir = SockDir::new();
    let sock = dir.sock();
    // A socket file nobody listens on: what a killed balancer leaves.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let addr = free_addr();
    let mut old = Lb::start_on(addr, &lb_args(&backend, "1", &sock));
    old.wait_log(
        &["nobody answers (a stale socket); removed"],
        1,
        Duration::from_secs(5),
    );
    echo_exchange(addr, 1, 10_000);
    let listed = wait_for("the upgrade socket", Duration::from_secs(10), || {
        std::os::unix::net::UnixStream::connect(&sock).ok()
    });
    drop(listed);
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&sock).unwrap().permissions());
    assert_eq!(
        mode & 0o777,
        0o600,
        "the upgrade socket is its owner's only"
    );

    // A new process with a bad configuration: it exits 2 and asks the old one nothing.
    let addr_s = addr.to_string();
    let sock_s = sock.to_str().unwrap();
    for bad in [
        vec![
            "--listen",
            &addr_s,
            "--backend",
            "nowhere",
            "--upgrade-socket",
            sock_s,
        ],
        vec![
            "--listen",
            &addr_s,
            "--backend",
            &backend,
            "--algorithm",
            "maglev",
            "--maglev-table-size",
            "100",
            "--upgrade-socket",
            sock_s,
        ],
    ] {
        let (st, _, err) = run_bin(&bad);
        assert_eq!(st.code(), Some(2), "{bad:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
    // A config file that is not TOML, too.
    let file = dir.0.join("bad.toml");
    std::fs::write(&file, "listen = [\n").unwrap();
    let (st, _, err) = run_bin(&[
        "--config",
        file.to_str().unwrap(),
        "--upgrade-socket",
        sock_s,
    ]);
    assert_eq!(st.code(), Some(2), "{err}");
    old.check_alive();
    assert!(
        old.lines_with(&["upgrade: handed"]).is_empty(),
        "{}",
        old.log_text()
    );
    echo_exchange(addr, 2, 10_000);

    // A valid one still upgrades through the same socket afterwards.
    let _new = upgrade_to(addr, &lb_args(&backend, "1", &sock));
    wait_old_exits(&mut old);
    echo_exchange(addr, 3, 10_000);
}

/// A mistyped `--upgrade-socket` never replaces a file: a regular file at the path is
/// refused, by `--check` and by a start alike (exit 2, one line naming it), and left as it
/// was; a path in a missing directory is refused by `--check` as the start refuses it.
#[test]
fn an_upgrade_socket_path_that_is_not_a_socket_is_refused_and_left_alone() {
    let dir = SockDir::new();
    let file = dir.0.join("precious.conf");
    std::fs::write(&file, "kept\n").unwrap();
    let missing = dir.0.join("no-such-dir").join("lb.sock");
    let listen = free_addr().to_string();
    for path in [&file, &missing] {
        let p = path.to_str().unwrap();
        for check in [true, false] {
            let mut args = vec!["--listen", &listen, "--backend", "127.0.0.1:9"];
            args.extend(["--health", "none", "--upgrade-socket", p]);
            if check {
                args.push("--check");
            }
            let (st, out, err) = run_bin(&args);
            assert_eq!(st.code(), Some(2), "{args:?}: {out}{err}");
            assert!(
                err.contains(&format!("upgrade socket {p}")) && err.trim().lines().count() == 1,
                "{args:?}: {err}"
            );
        }
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "kept\n");
}

#[test]
fn a_udp_service_is_answered_by_the_new_process_after_an_upgrade() {
    let backend = UdpEcho::start("127.0.0.1:0".parse().unwrap());
    let b = backend.addr.to_string();
    let dir = SockDir::new();
    let sock = dir.sock();
    let addr = SocketAddr::from(([127, 0, 0, 1], fixed_port()));
    let args = [
        "--protocol",
        "udp",
        "--backend",
        b.as_str(),
        "--health",
        "none",
        "--workers",
        "2",
        "--udp-idle-timeout",
        "1s",
        "--grace",
        "10s",
        "--upgrade-socket",
        sock.to_str().unwrap(),
    ];
    let ask = |payload: &[u8]| -> Option<Vec<u8>> {
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        for _ in 0..20 {
            c.send_to(payload, addr).unwrap();
            let mut buf = [0u8; 1500];
            if let Ok((n, _)) = c.recv_from(&mut buf) {
                return Some(buf[..n].to_vec());
            }
        }
        None
    };
    let mut old = Lb::start_on(addr, &args);
    assert_eq!(ask(b"before").as_deref(), Some(&b"before"[..]));
    let mut new = upgrade_to(addr, &args);
    // The old one reads its copies no more: the new one answers at once.
    assert_eq!(ask(b"during").as_deref(), Some(&b"during"[..]));
    wait_old_exits(&mut old);
    assert_eq!(ask(b"after").as_deref(), Some(&b"after"[..]));
    new.check_alive();
    new.signal(libc::SIGTERM);
    let st = new.wait_exit(Duration::from_secs(20)).expect("exits");
    assert!(st.success());
}
