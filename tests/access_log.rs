//! The access log (`--access-log`) through the real binary: one line per finished
//! connection with the byte counts the peers saw, every `result` produced by its real
//! cause, JSON parsed strictly and logfmt parsed, SIGUSR1 reopening a moved file, and a
//! destination that takes nothing: records are dropped and counted, and no connection
//! waits for the log.

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use uringlb_bench::EchoServer;

use util::*;

/// A connection that has echoed `len` bytes and is kept open.
fn open_after_echo(addr: SocketAddr, len: usize) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let data = pattern(7, len);
    s.write_all(&data).expect("write");
    let mut got = vec![0u8; len];
    s.read_exact(&mut got).expect("read echo");
    assert!(got == data);
    s
}

fn echo_lb(echo: &EchoServer, log: &TempLog, extra: &[&str]) -> Lb {
    let backend = format!("{},name=echo", echo.addr());
    let path = log.arg();
    let mut args = vec![
        "--backend",
        &backend,
        "--health",
        "none",
        "--access-log",
        &path,
    ];
    args.extend_from_slice(extra);
    Lb::start(&args)
}

#[test]
fn one_json_line_per_connection_with_the_exact_bytes() {
    let echo = EchoServer::start("127.0.0.1:0").unwrap();
    let log = TempLog::new("bytes");
    let lb = echo_lb(&echo, &log, &["--workers", "2"]);
    let sizes = [0usize, 1, 1000, 32_768, 100_000, 1_000_000];
    let clients: Vec<SocketAddr> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| echo_exchange(lb.addr, i as u64, n))
        .collect();
    let lines = wait_json_lines(&log.0, sizes.len());
    assert_eq!(lines.len(), sizes.len(), "one line per connection");
    for (client, &size) in clients.iter().zip(&sizes) {
        let l = lines
            .iter()
            .find(|l| l.client.as_deref() == Some(client.to_string().as_str()))
            .unwrap_or_else(|| panic!("no line for {client}: {lines:?}"));
        println!("access log: {size} bytes each way -> {l:?}");
        assert_eq!((l.bytes_in, l.bytes_out), (size as u64, size as u64));
        assert_eq!(l.result, "closed");
        assert_eq!(l.service, "default");
        assert_eq!(l.listen, lb.addr.to_string());
        assert_eq!(l.backend.as_deref(), Some("echo"));
        assert_eq!(l.backend_addr, Some(echo.addr().to_string()));
        assert_eq!(l.sni, None);
        assert_eq!(l.retries, 0);
        let connect = l.connect_ms.expect("connect_ms of a connected backend");
        assert!(connect >= 0.0 && connect <= l.duration_ms, "{l:?}");
    }
    // What the backend echoed is what the lines say.
    let logged: u64 = lines.iter().map(|l| l.bytes_in).sum();
    assert_eq!(logged, echo.bytes());
}

#[test]
fn a_peer_reset_is_reset_and_an_idle_connection_is_idle_timeout() {
    let echo = EchoServer::start("127.0.0.1:0").unwrap();
    let log = TempLog::new("reset");
    let lb = echo_lb(&echo, &log, &["--idle-timeout", "300ms"]);
    let s = open_after_echo(lb.addr, 10);
    close_reset(s);
    let lines = wait_json_lines(&log.0, 1);
    println!("access log: client reset -> {:?}", lines[0]);
    assert_eq!(lines[0].result, "reset");
    assert_eq!((lines[0].bytes_in, lines[0].bytes_out), (10, 10));

    let mut s = open_after_echo(lb.addr, 5);
    assert!(
        closed_within(&mut s, Duration::from_secs(10)).is_some(),
        "cut by the idle timeout"
    );
    let lines = wait_json_lines(&log.0, 2);
    println!("access log: idle -> {:?}", lines[1]);
    assert_eq!(lines[1].result, "idle_timeout");
    assert_eq!((lines[1].bytes_in, lines[1].bytes_out), (5, 5));
    assert!(lines[1].duration_ms >= 300.0, "{:?}", lines[1]);
}

#[test]
fn failed_connects_are_connect_failed_and_denied_clients_rejected() {
    let (dead, dead2) = (closed_port(), closed_port());
    let log = TempLog::new("failed");
    let backend = format!("{dead},name=dead");
    let backend2 = format!("{dead2},name=dead2");
    let path = log.arg();
    let lb = Lb::start(&[
        "--backend",
        &backend,
        "--backend",
        &backend2,
        "--health",
        "none",
        "--eject-after",
        "0",
        "--retries",
        "1",
        "--deny",
        "127.0.0.2",
        "--access-log",
        &path,
    ]);
    let mut s = lb.connect();
    assert!(closed_within(&mut s, Duration::from_secs(10)).is_some());
    let lines = wait_json_lines(&log.0, 1);
    println!("access log: dead backend -> {:?}", lines[0]);
    let l = &lines[0];
    assert_eq!(l.result, "connect_failed");
    assert_eq!(l.retries, 1, "tried both");
    // The last one tried: round robin starts anywhere.
    let last = if l.backend.as_deref() == Some("dead") {
        dead
    } else {
        dead2
    };
    assert_eq!(l.backend_addr, Some(last.to_string()), "{l:?}");
    assert_eq!((l.connect_ms, l.bytes_in, l.bytes_out), (None, 0, 0));

    if let Some(mut s) = connect_or_reset_from("127.0.0.2", lb.addr) {
        assert!(closed_within(&mut s, Duration::from_secs(10)).is_some());
    }
    let lines = wait_json_lines(&log.0, 2);
    println!("access log: denied -> {:?}", lines[1]);
    let l = &lines[1];
    assert_eq!(l.result, "rejected");
    assert!(
        l.client
            .as_deref()
            .is_some_and(|c| c.starts_with("127.0.0.2:")),
        "{l:?}"
    );
    assert_eq!((l.backend.as_deref(), l.connect_ms), (None, None));
}

#[test]
fn a_drained_backend_cuts_at_its_deadline_then_there_is_no_backend() {
    let echo = EchoServer::start("127.0.0.1:0").unwrap();
    let log = TempLog::new("drain");
    let backend = format!("{},name=a", echo.addr());
    let path = log.arg();
    let (lb, admin) = start_with_admin(&[
        "--backend",
        &backend,
        "--health",
        "none",
        "--grace",
        "500ms",
        "--access-log",
        &path,
    ]);
    let mut s = open_after_echo(lb.addr, 7);
    let r = admin.req("PATCH", "/backends/a", Some(r#"{"state": "drain"}"#));
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        closed_within(&mut s, Duration::from_secs(10)).is_some(),
        "cut at the drain deadline"
    );
    let lines = wait_json_lines(&log.0, 1);
    println!("access log: drained -> {:?}", lines[0]);
    assert_eq!(lines[0].result, "drained");
    assert_eq!((lines[0].bytes_in, lines[0].bytes_out), (7, 7));

    // Its only backend draining, the service has none for a new client.
    let mut s = lb.connect();
    assert!(closed_within(&mut s, Duration::from_secs(10)).is_some());
    let lines = wait_json_lines(&log.0, 2);
    println!("access log: no backend -> {:?}", lines[1]);
    assert_eq!(lines[1].result, "no_backend");
    assert_eq!((lines[1].backend.as_deref(), lines[1].retries), (None, 0));
}

#[test]
fn logfmt_to_stderr() {
    let (echo, lb) = echo_behind_lb(&["--access-log", "stderr", "--access-log-format", "logfmt"]);
    let client = echo_exchange(lb.addr, 1, 123);
    let line = wait_for("a logfmt line on stderr", Duration::from_secs(20), || {
        lb.log_text()
            .lines()
            .find(|l| l.starts_with("ts="))
            .map(str::to_string)
    });
    let kv = parse_logfmt(&line);
    println!("access log: logfmt {kv:?}");
    let keys: Vec<&str> = kv.keys().map(String::as_str).collect();
    let mut want: Vec<&str> = KEYS.iter().copied().filter(|&k| k != "sni").collect();
    want.sort_unstable();
    assert_eq!(keys, want, "{line}");
    check_ts(&kv["ts"]);
    assert_eq!(kv["client"], client.to_string());
    assert_eq!(
        kv["backend"],
        echo.addr().to_string(),
        "named by its address"
    );
    assert_eq!(kv["backend_addr"], echo.addr().to_string());
    assert_eq!(
        (kv["bytes_in"].as_str(), kv["bytes_out"].as_str()),
        ("123", "123")
    );
    assert_eq!(
        (kv["retries"].as_str(), kv["result"].as_str()),
        ("0", "closed")
    );
    let d: f64 = kv["duration_ms"].parse().expect("a number");
    let c: f64 = kv["connect_ms"].parse().expect("a number");
    assert!(c >= 0.0 && c <= d, "{line}");
}

#[test]
fn sigusr1_reopens_the_file_after_it_was_moved() {
    let echo = EchoServer::start("127.0.0.1:0").unwrap();
    let log = TempLog::new("rotate");
    let rotated = TempLog(log.0.with_extension("log.1"));
    let lb = echo_lb(&echo, &log, &[]);
    echo_exchange(lb.addr, 1, 10);
    wait_json_lines(&log.0, 1);
    std::fs::rename(&log.0, &rotated.0).expect("move the log");
    // Until told, the balancer writes on in the file it has open (now the moved one).
    echo_exchange(lb.addr, 2, 20);
    wait_json_lines(&rotated.0, 2);
    assert!(!log.0.exists());
    lb.signal(libc::SIGUSR1);
    lb.wait_log(&["access log reopened"], 1, Duration::from_secs(10));
    echo_exchange(lb.addr, 3, 30);
    let new = wait_json_lines(&log.0, 1);
    assert_eq!(new.len(), 1);
    assert_eq!(new[0].bytes_in, 30);
    let old = wait_json_lines(&rotated.0, 2);
    assert_eq!(
        old.iter().map(|l| l.bytes_in).collect::<Vec<_>>(),
        [10, 20],
        "the moved file keeps its lines"
    );
    assert!(
        lb.log_text().lines().all(|l| !l.contains("ERROR")),
        "{}",
        lb.log_text()
    );
}

/// One short connection: connect, one byte each way, close with a reset (no TIME_WAIT
/// left behind by a hundred thousand of them). Returns how long it took.
fn short_conn(addr: SocketAddr) -> Duration {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(b"x").expect("write");
    let mut b = [0u8; 1];
    s.read_exact(&mut b).expect("echo");
    let took = start.elapsed();
    close_reset(s);
    took
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

#[test]
fn a_destination_that_takes_nothing_drops_records_and_slows_no_connection() {
    let echo = EchoServer::start("127.0.0.1:0").unwrap();
    // A FIFO whose reader reads nothing until the end: once its 64 KiB are full, the
    // writer thread blocks in write() for as long as the test likes.
    let fifo = TempLog::new("fifo");
    let c = std::ffi::CString::new(fifo.arg()).unwrap();
    // SAFETY: a valid C string; mkfifo only creates a file.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo.0)
        .expect("open the FIFO for reading");
    let backend = format!("{},name=echo", echo.addr());
    let path = fifo.arg();
    let (lb_on, on) = start_with_admin(&[
        "--backend",
        &backend,
        "--health",
        "none",
        "--workers",
        "2",
        "--access-log",
        &path,
    ]);
    let (lb_off, _off) =
        start_with_admin(&["--backend", &backend, "--health", "none", "--workers", "2"]);

    // The same short connections through both, interleaved, one at a time.
    let (mut with_log, mut without) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        without.extend((0..400).map(|_| short_conn(lb_off.addr)));
        with_log.extend((0..400).map(|_| short_conn(lb_on.addr)));
    }
    let measured = with_log.len();

    // The burst: 100 000 short connections from 4 threads.
    let total = 100_000usize;
    let next = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (next, addr) = (next.clone(), lb_on.addr);
            std::thread::spawn(move || {
                let mut worst = Duration::ZERO;
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    worst = worst.max(short_conn(addr));
                }
                worst
            })
        })
        .collect();
    let started = Instant::now();
    let worst = threads
        .into_iter()
        .map(|t| t.join().expect("load thread"))
        .max()
        .unwrap_or_default();
    let burst = started.elapsed();
    let m = on.metrics();
    let dropped = m.value("uringlb_access_log_dropped_total", &[]);
    println!(
        "access log: {total} connections in {burst:?} ({:.0}/s), slowest {worst:?}; {dropped} records dropped",
        total as f64 / burst.as_secs_f64()
    );
    // Nearly all: the writer is stuck on the full FIFO, each worker queue holds 8192.
    assert!(dropped >= (total - 2 * 8192 - 1000) as f64, "{dropped}");

    let (a, b) = (median(with_log.clone()), median(without.clone()));
    println!("access log: median connection {a:?} with the log blocked, {b:?} without");
    assert!(
        a.as_secs_f64() <= 2.0 * b.as_secs_f64() + 0.000_2,
        "connections slowed by a stuck log: {a:?} against {b:?}"
    );

    // Now read everything: every connection is either a line or a counted drop.
    let all = measured + total;
    let stop = Arc::new(AtomicBool::new(false));
    let lines = Arc::new(AtomicUsize::new(0));
    let drain = {
        let (stop, lines) = (stop.clone(), lines.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            while !stop.load(Ordering::Relaxed) {
                match reader.read(&mut buf) {
                    Ok(n) if n > 0 => {
                        let nl = buf[..n].iter().filter(|&&c| c == b'\n').count();
                        lines.fetch_add(nl, Ordering::Relaxed);
                    }
                    _ => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        })
    };
    wait_until(
        "every connection to be a line or a counted drop",
        Duration::from_secs(30),
        || {
            let dropped = on.metrics().value("uringlb_access_log_dropped_total", &[]);
            lines.load(Ordering::Relaxed) + dropped as usize >= all
        },
    );
    stop.store(true, Ordering::Relaxed);
    drain.join().unwrap();
    let dropped = on.metrics().value("uringlb_access_log_dropped_total", &[]) as usize;
    let written = lines.load(Ordering::Relaxed);
    println!("access log: {written} lines written + {dropped} dropped = {all} connections");
    assert_eq!(written + dropped, all);
    assert_eq!(on.metrics().sum("uringlb_accepted_total"), all as f64);
}

#[test]
fn file_keys_set_it_and_bad_values_exit_2_naming_the_flag() {
    let echo = EchoServer::start("127.0.0.1:0").unwrap();
    let log = TempLog::new("file-keys");
    let config = TempLog::new("config");
    std::fs::write(
        &config.0,
        format!(
            "access_log = \"{}\"\naccess_log_format = \"logfmt\"\nhealth = \"none\"\n\
             [[backend]]\naddr = \"{}\"\nname = \"e\"\n",
            log.arg(),
            echo.addr()
        ),
    )
    .unwrap();
    let path = config.arg();
    let lb = Lb::start(&["-c", &path]);
    echo_exchange(lb.addr, 5, 55);
    let line = wait_for("a logfmt line in the file", Duration::from_secs(20), || {
        file_lines(&log.0).into_iter().next()
    });
    let kv = parse_logfmt(&line);
    assert_eq!(
        (kv["backend"].as_str(), kv["bytes_in"].as_str()),
        ("e", "55")
    );

    let (st, _, err) = run_bin(&["--backend", "127.0.0.1:9", "--access-log-format", "xml"]);
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(
        err.contains("--access-log-format") && err.lines().count() == 1,
        "{err}"
    );
    let (st, _, err) = run_bin(&[
        "--backend",
        "127.0.0.1:9",
        "--listen",
        &free_addr().to_string(),
        "--access-log",
        "/nonexistent-dir/access.log",
    ]);
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(
        err.contains("cannot open the access log /nonexistent-dir/access.log")
            && err.lines().count() == 1,
        "{err}"
    );
}

/// `--check` refuses an access log the start would refuse, with the same line, and
/// creates no file when it accepts one.
#[test]
fn check_refuses_an_access_log_the_start_would_and_creates_none() {
    let check = |log: &str| run_bin(&["--check", "--backend", "127.0.0.1:9", "--access-log", log]);
    let dir = std::env::temp_dir();
    for bad in ["/nonexistent-dir/access.log", dir.to_str().unwrap()] {
        let (st, out, err) = check(bad);
        assert_eq!(st.code(), Some(2), "{bad}: {out}{err}");
        assert!(
            err.contains(&format!("cannot open the access log {bad}")) && err.lines().count() == 1,
            "{bad}: {err}"
        );
    }
    let missing = TempLog::new("check-creates-none");
    let _ = std::fs::remove_file(&missing.0);
    let (st, out, err) = check(&missing.arg());
    assert_eq!(st.code(), Some(0), "{out}{err}");
    assert!(!missing.0.exists(), "--check created {}", missing.arg());
    std::fs::write(&missing.0, "kept\n").unwrap();
    let (st, out, err) = check(&missing.arg());
    assert_eq!(st.code(), Some(0), "{out}{err}");
    assert_eq!(std::fs::read_to_string(&missing.0).unwrap(), "kept\n");
}
