//! Running under systemd (`Type=notify`), through the real binary: the notifications it
//! sends to the Unix datagram socket in `NOTIFY_SOCKET` (here one the test owns, by path
//! and abstract), and the unit in contrib/ checked by `systemd-analyze verify`.
//!
//! - `READY=1` (with `STATUS=`) only once the listen port serves;
//! - `RELOADING=1` with `MONOTONIC_USEC=` (CLOCK_MONOTONIC, as systemd >= 253 expects),
//!   then `READY=1`, around a SIGHUP reload and a `POST /reload`, also a refused one;
//! - `STOPPING=1` on SIGTERM.

mod util;

use std::io::{Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use util::*;

/// The test's end of `NOTIFY_SOCKET`.
struct NotifySocket {
    socket: UnixDatagram,
    /// The value for `NOTIFY_SOCKET`.
    env: String,
    path: Option<PathBuf>,
}

impl NotifySocket {
    fn unique(kind: &str) -> String {
        static N: AtomicUsize = AtomicUsize::new(0);
        format!(
            "uringlb-notify-{kind}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn abstract_socket() -> NotifySocket {
        let name = Self::unique("abstract");
        let addr = UnixAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).expect("bind abstract socket");
        NotifySocket {
            socket,
            env: format!("@{name}"),
            path: None,
        }
    }

    fn path_socket() -> NotifySocket {
        let path = std::env::temp_dir().join(Self::unique("path"));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).expect("bind socket path");
        NotifySocket {
            socket,
            env: path.to_str().unwrap().to_string(),
            path: Some(path),
        }
    }

    /// The next notification that is not only a `STATUS=` update (those come whenever
    /// the status line changes); waits up to 20 s.
    fn next_state(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no notification within 20 s");
            self.socket.set_read_timeout(Some(left)).unwrap();
            let n = self
                .socket
                .recv(&mut buf)
                .expect("no notification within 20 s");
            let msg = String::from_utf8(buf[..n].to_vec()).expect("notification is UTF-8");
            if !msg.lines().all(|l| l.starts_with("STATUS=")) {
                return msg;
            }
        }
    }

    /// Nothing is waiting but `STATUS=` updates.
    fn only_status_pending(&self) -> bool {
        self.socket.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 4096];
        let mut ok = true;
        while let Ok(n) = self.socket.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            ok &= msg.lines().all(|l| l.starts_with("STATUS="));
        }
        self.socket.set_nonblocking(false).unwrap();
        ok
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        if let Some(p) = &self.path {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// `KEY`'s value in a notification.
fn field<'a>(msg: &'a str, key: &str) -> Option<&'a str> {
    msg.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the one we pass.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0);
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// A reload was announced with the time it started, between `before` and now, and then
/// finished with `READY=1`; returns the status sent with that `READY=1`.
fn expect_reload(notify: &NotifySocket, before: u64) -> String {
    let msg = notify.next_state();
    assert_eq!(msg.lines().next(), Some("RELOADING=1"), "{msg}");
    let usec: u64 = field(&msg, "MONOTONIC_USEC")
        .unwrap_or_else(|| panic!("RELOADING=1 without MONOTONIC_USEC: {msg}"))
        .parse()
        .unwrap();
    let after = monotonic_usec();
    assert!(
        (before..=after).contains(&usec),
        "MONOTONIC_USEC={usec} not within the reload's time [{before}, {after}]"
    );
    let msg = notify.next_state();
    assert_eq!(msg.lines().next(), Some("READY=1"), "{msg}");
    field(&msg, "STATUS")
        .unwrap_or_else(|| panic!("READY=1 without STATUS: {msg}"))
        .to_string()
}

fn echo_once(addr: std::net::SocketAddr) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the balancer");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"ping").unwrap();
    let mut got = [0u8; 4];
    s.read_exact(&mut got).expect("echo through the balancer");
    assert_eq!(&got, b"ping");
}

fn config_file(tag: &str, backends: &[&uringlb_bench::EchoServer]) -> String {
    let _ = tag;
    let mut s = String::from("health = \"none\"\n");
    for (i, b) in backends.iter().enumerate() {
        s.push_str(&format!(
            "[[backend]]\naddr = \"{}\"\nname = \"e{i}\"\n",
            b.addr()
        ));
    }
    s
}

fn temp_config(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("uringlb-systemd-{tag}-{}.toml", std::process::id()))
}

#[test]
fn ready_reloading_stopping_over_an_abstract_socket() {
    let e0 = uringlb_bench::EchoServer::start("127.0.0.1:0").unwrap();
    let e1 = uringlb_bench::EchoServer::start("127.0.0.1:0").unwrap();
    let path = temp_config("abstract");
    write_atomic(&path, &config_file("a", &[&e0]));
    let notify = NotifySocket::abstract_socket();
    let admin = free_addr().to_string();
    let mut lb = Lb::start_with_env(
        &["-c", path.to_str().unwrap(), "--admin", &admin],
        &[("NOTIFY_SOCKET", &notify.env)],
    );

    // READY=1 first, and once it is here the listen port serves.
    let msg = notify.next_state();
    assert_eq!(msg.lines().next(), Some("READY=1"), "{msg}");
    echo_once(lb.addr);
    let status = field(&msg, "STATUS").expect("READY=1 carries a STATUS");
    assert!(
        status.starts_with("serving 1 service(s), 1 of 1 backend(s) up"),
        "{status}"
    );

    // SIGHUP with a second backend in the file.
    write_atomic(&path, &config_file("a", &[&e0, &e1]));
    let before = monotonic_usec();
    lb.signal(libc::SIGHUP);
    let status = expect_reload(&notify, before);
    assert!(
        status.starts_with("serving 1 service(s), 2 of 2 backend(s) up"),
        "{status}"
    );
    echo_once(lb.addr);

    // POST /reload, back to one backend.
    write_atomic(&path, &config_file("a", &[&e1]));
    let before = monotonic_usec();
    let resp = http(admin.parse().unwrap(), "POST", "/reload", &[], None);
    assert_eq!(resp.status, 200, "{}", resp.body);
    let status = expect_reload(&notify, before);
    assert!(
        status.starts_with("serving 1 service(s), 1 of 1 backend(s) up"),
        "{status}"
    );

    lb.signal(libc::SIGTERM);
    let msg = notify.next_state();
    assert_eq!(msg.lines().next(), Some("STOPPING=1"), "{msg}");
    let st = lb
        .wait_exit(Duration::from_secs(30))
        .expect("exits after SIGTERM");
    assert!(st.success(), "{st}: {}", lb.log_text());
    assert!(notify.only_status_pending(), "nothing after STOPPING=1");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn refused_reload_is_still_followed_by_ready_over_a_socket_path() {
    let e0 = uringlb_bench::EchoServer::start("127.0.0.1:0").unwrap();
    let path = temp_config("path");
    write_atomic(&path, &config_file("p", &[&e0]));
    let notify = NotifySocket::path_socket();
    let admin = free_addr().to_string();
    let mut lb = Lb::start_with_env(
        &["-c", path.to_str().unwrap(), "--admin", &admin],
        &[("NOTIFY_SOCKET", &notify.env)],
    );
    let msg = notify.next_state();
    assert_eq!(msg.lines().next(), Some("READY=1"), "{msg}");
    echo_once(lb.addr);

    // An invalid file: nothing changes, and systemd must not be left waiting in
    // "reloading".
    write_atomic(&path, "algorithm = \"no-such\"\n");
    let before = monotonic_usec();
    let resp = http(admin.parse().unwrap(), "POST", "/reload", &[], None);
    assert!(resp.status >= 400, "{} {}", resp.status, resp.body);
    let status = expect_reload(&notify, before);
    assert!(
        status.starts_with("serving 1 service(s), 1 of 1 backend(s) up"),
        "{status}"
    );
    echo_once(lb.addr);

    lb.signal(libc::SIGTERM);
    let msg = notify.next_state();
    assert_eq!(msg.lines().next(), Some("STOPPING=1"), "{msg}");
    assert!(lb.wait_exit(Duration::from_secs(30)).is_some());
    let _ = std::fs::remove_file(&path);
}

/// Without `NOTIFY_SOCKET` nothing is sent and nothing is logged about it.
#[test]
fn no_notify_socket_no_noise() {
    let (_echo, mut lb) = echo_behind_lb(&[]);
    echo_once(lb.addr);
    lb.signal(libc::SIGTERM);
    assert!(lb.wait_exit(Duration::from_secs(30)).is_some());
    assert!(
        !lb.log_text().contains("NOTIFY_SOCKET"),
        "{}",
        lb.log_text()
    );
}

/// The unit as shipped, with ExecStart pointing at the binary just built (verify checks
/// that the program exists), passes `systemd-analyze verify` without a warning about it.
#[test]
fn unit_passes_systemd_analyze_verify() {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/uringlb.service");
    let text = std::fs::read_to_string(&unit).expect("contrib/uringlb.service");
    for key in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "LimitNOFILE=",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
    ] {
        assert!(text.contains(key), "the unit lacks {key}");
    }
    // A filter that denies io_uring would make the balancer exit 2 at start.
    for line in text.lines().filter(|l| l.starts_with("SystemCallFilter=")) {
        assert!(
            !line.contains("~@") || !line.contains("io_uring"),
            "denies io_uring: {line}"
        );
        assert!(!line.contains("~io_uring"), "denies io_uring: {line}");
    }
    let dir = std::env::temp_dir().join(format!("uringlb-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("uringlb.service");
    std::fs::write(&copy, text.replace("/usr/local/bin/uringlb", BIN)).unwrap();
    let socket_unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/uringlb.socket");
    let socket_copy = dir.join("uringlb.socket");
    std::fs::copy(&socket_unit, &socket_copy).expect("contrib/uringlb.socket");
    let analyze = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect(
            "systemd-analyze is missing: scripts/install-test-deps.sh installs it (package systemd)",
        );
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(&copy)
        .arg(&socket_copy)
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::remove_dir_all(&dir);
    let about_unit: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("uringlb.service") || l.contains("uringlb.socket"))
        .collect();
    assert!(
        out.status.success() && about_unit.is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
}

/// `systemd-socket-activate`, systemd's own tool for socket activation: it listens, and on
/// the first connection starts the balancer with the socket as descriptor 3 (`LISTEN_FDS=1`,
/// `LISTEN_PID`), as a `.socket` unit would.
fn socket_activate(listen: std::net::SocketAddr, args: &[&str]) -> std::process::Child {
    let tool = [
        "/usr/bin/systemd-socket-activate",
        "/bin/systemd-socket-activate",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .expect("systemd-socket-activate (package systemd): run scripts/install-test-deps.sh");
    Command::new(tool)
        .args(["-l", &listen.to_string(), BIN])
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start systemd-socket-activate")
}

/// Waits until `addr` accepts (the activator listens), with the connection that does it.
fn first_connection(addr: std::net::SocketAddr) -> std::net::TcpStream {
    wait_for("the activator listens", Duration::from_secs(20), || {
        std::net::TcpStream::connect(addr).ok()
    })
}

#[test]
fn socket_activation_serves_on_the_passed_socket_from_the_first_connection() {
    let e0 = uringlb_bench::EchoServer::start("127.0.0.1:0").unwrap();
    let listen = free_addr();
    let backend = e0.addr().to_string();
    let mut child = socket_activate(
        listen,
        &[
            "--listen",
            &listen.to_string(),
            "--backend",
            &backend,
            "--health",
            "none",
            "--workers",
            "2",
        ],
    );
    // The connection that starts the balancer waits in the socket's queue and is served.
    let mut first = first_connection(listen);
    first
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    first.write_all(b"ping").unwrap();
    let mut got = [0u8; 4];
    first
        .read_exact(&mut got)
        .expect("the first client is served");
    assert_eq!(&got, b"ping");
    for _ in 0..20 {
        echo_once(listen);
    }
    // The socket is the activator's: the balancer bound nothing of its own there (one
    // listening socket on the port, not one per worker).
    let ss = Command::new("ss")
        .args(["-Htln", &format!("sport = :{}", listen.port())])
        .output()
        .expect("ss (iproute2)");
    let listening = String::from_utf8_lossy(&ss.stdout).lines().count();
    assert_eq!(listening, 1, "{}", String::from_utf8_lossy(&ss.stdout));
    drop(first);
    send_signal(&mut child, libc::SIGTERM);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {err}", out.status);
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_passed_socket_no_listen_address_wants_exits_2_with_one_line() {
    let activated = free_addr();
    let configured = free_addr();
    let mut child = socket_activate(
        activated,
        &[
            "--listen",
            &configured.to_string(),
            "--backend",
            "127.0.0.1:9",
            "--health",
            "none",
        ],
    );
    let _first = first_connection(activated);
    let out = child_output_within(&mut child, Duration::from_secs(20));
    let (status, err) = out;
    assert_eq!(status.code(), Some(2), "{status}: {err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(
        errors[0].contains("socket activation") && errors[0].contains("matches no listen address"),
        "{err}"
    );
    assert!(
        std::net::TcpStream::connect(configured).is_err(),
        "nothing bound"
    );
}

/// Sends `sig` to the child by pid (through the `kill` command).
fn send_signal(child: &mut std::process::Child, sig: i32) {
    let status = Command::new("kill")
        .args([format!("-{sig}"), child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// The child's exit status and standard error, waiting at most `limit`.
fn child_output_within(
    child: &mut std::process::Child,
    limit: Duration,
) -> (std::process::ExitStatus, String) {
    let status = wait_for("the balancer exits", limit, || {
        child.try_wait().ok().flatten()
    });
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (status, err)
}
