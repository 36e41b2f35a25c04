//! Zero-downtime restart through the real binary: a second uringlb (B) starts on the same
//! listen address (SO_REUSEPORT) while the first (A) serves a loop of new connections;
//! A gets SIGTERM, closes its listeners, drains its open connection and exits after it;
//! B serves on. No client connection may fail.
//!
//! A connection that has completed its handshake but still waits in A's accept queue when
//! A closes its listener is reset by the kernel, unless `net.ipv4.tcp_migrate_req = 1`
//! (Linux 5.14+), which moves it to another listener of the SO_REUSEPORT group (B's).
//! The sysctl is per network namespace, so the test runs in a private one and measures both
//! settings without touching the machine's; it asserts zero failures with migration on,
//! and prints the figures of both. It needs root (CI has it); without a private namespace
//! it fails, saying why, rather than pass without its assertion.

mod util;

use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use uringlb_bench::NameServer;

use util::*;

const MIGRATE: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

/// Moves this thread (and so everything it starts later: threads, processes) into a new
/// network namespace with loopback up.
fn enter_private_netns() -> Result<(), String> {
    // SAFETY: unshare only changes this thread's namespace membership.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(format!(
            "unshare(CLONE_NEWNET): {}",
            std::io::Error::last_os_error()
        ));
    }
    let st = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .map_err(|e| format!("ip link set lo up: {e}"))?;
    if !st.success() {
        return Err(format!("ip link set lo up: {st}"));
    }
    Ok(())
}

fn migrate_req() -> Option<u8> {
    std::fs::read_to_string(MIGRATE).ok()?.trim().parse().ok()
}

struct Figures {
    attempts: usize,
    failed: usize,
    after_a_exited: usize,
    a_lived_after_term: Duration,
    a_exit_after_close: Duration,
}

/// One restart under load; returns what the clients saw.
fn restart_under_load(label: &str) -> Figures {
    let n0 = NameServer::start("127.0.0.1:0", "n0").unwrap();
    let n1 = NameServer::start("127.0.0.1:0", "n1").unwrap();
    let b0 = format!("{},name=n0", n0.addr());
    let b1 = format!("{},name=n1", n1.addr());
    let args = [
        "--backend",
        &b0,
        "--backend",
        &b1,
        "--workers",
        "2",
        "--health",
        "none",
        "--grace",
        "20s",
    ];
    let addr = free_addr();
    let mut a = Lb::start_on(addr, &args);
    // A's last connection: open across the restart, used again before it closes.
    let mut long = TcpStream::connect(addr).unwrap();
    long.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert!(!read_line(&mut long).is_empty());

    let load = ConnLoop::start(addr, 3, Duration::ZERO);
    load.wait_more(100);
    // B joins A's SO_REUSEPORT group and takes its share of the load.
    let b_admin = free_addr().to_string();
    let mut b_args = args.to_vec();
    b_args.extend(["--admin", &b_admin]);
    let mut b = Lb::start_on(addr, &b_args);
    let b_admin = Admin::new(b_admin.parse().unwrap());
    wait_admin(b_admin.addr);
    wait_until("B to serve 50 connections", Duration::from_secs(20), || {
        b_admin.metrics().sum("uringlb_accepted_total") >= 50.0
    });
    a.signal(libc::SIGTERM);
    let term = Instant::now();
    // Both of A's workers close their listeners; the load goes on, all of it to B now.
    a.wait_log(&["stopping", "worker="], 2, Duration::from_secs(10));
    load.wait_more(100);
    assert!(
        a.running(),
        "A must wait for its open connection: {}",
        a.log_text()
    );
    long.write_all(b"still here\n").unwrap();
    assert_eq!(
        read_line(&mut long),
        "still here",
        "A's open connection still works"
    );
    let a_lived = term.elapsed();
    drop(long);
    let closed = Instant::now();
    let st = a
        .wait_exit(Duration::from_secs(10))
        .expect("A exits after its last connection");
    let exited = Instant::now();
    assert!(st.success(), "A: {st}: {}", a.log_text());
    load.wait_more(100);
    let attempts = load.finish();
    assert!(b.running(), "B runs on: {}", b.log_text());
    b.signal(libc::SIGTERM);
    let _ = b.wait_exit(Duration::from_secs(10));

    let failed: Vec<&Attempt> = attempts.iter().filter(|a| a.result.is_err()).collect();
    let after = attempts
        .iter()
        .filter(|x| x.start > exited && x.result.is_ok())
        .count();
    let f = Figures {
        attempts: attempts.len(),
        failed: failed.len(),
        after_a_exited: after,
        a_lived_after_term: a_lived,
        a_exit_after_close: exited - closed,
    };
    println!(
        "restart ({label}): connections attempted {}, failed {}, served by B after A exited {}; \
         A drained for {:?} after SIGTERM and exited {:?} after its last connection closed",
        f.attempts, f.failed, f.after_a_exited, f.a_lived_after_term, f.a_exit_after_close
    );
    for x in failed.iter().take(5) {
        println!(
            "restart ({label}): failed at +{:?} after SIGTERM: {:?}",
            x.start.saturating_duration_since(term),
            x.result
        );
    }
    assert!(f.after_a_exited > 0, "B served after A exited");
    assert!(
        f.a_exit_after_close < Duration::from_secs(2),
        "A exits soon after its last connection"
    );
    assert!(f.attempts > 300, "the load ran: {}", f.attempts);
    f
}

#[test]
fn zero_downtime_restart_under_load() {
    let host = migrate_req();
    println!("restart: this machine's net.ipv4.tcp_migrate_req = {host:?}");
    if let Err(why) = enter_private_netns() {
        panic!(
            "restart: cannot make a private network namespace ({why}). This test sets \
             net.ipv4.tcp_migrate_req, which it must not do to the machine's namespace: run \
             it as root (CI does), e.g. sudo -E cargo test --release --test restart"
        );
    }
    let mut figures = Vec::new();
    for setting in [0u8, 1] {
        std::fs::write(MIGRATE, setting.to_string())
            .expect("set tcp_migrate_req in the private namespace");
        assert_eq!(migrate_req(), Some(setting));
        figures.push((
            setting,
            restart_under_load(&format!("private netns, tcp_migrate_req={setting}")),
        ));
    }
    let with = &figures[1].1;
    let without = &figures[0].1;
    println!(
        "restart: failed connections without migration {} of {}, with migration {} of {}",
        without.failed, without.attempts, with.failed, with.attempts
    );
    // A failure here that reads "closed without a greeting" right at SIGTERM is a
    // connection the worker's multishot accept had already taken when the stop arrived,
    // closed unserved by `Worker::accepted` while stopping.
    assert_eq!(
        with.failed, 0,
        "zero failed connections with tcp_migrate_req = 1"
    );
}
