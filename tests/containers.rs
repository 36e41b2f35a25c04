//! Running where io_uring may be blocked (containers): the real binary under a seccomp
//! filter that refuses `io_uring_setup` (as Docker's default profile does) exits 2 with one
//! line naming the cause; and the contrib/ seccomp profile allows the three io_uring calls
//! while keeping its default of refusing.

mod util;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use util::*;

/// A classic BPF seccomp program: `io_uring_setup` fails with EPERM, everything else runs.
fn deny_io_uring_setup() -> Vec<libc::sock_filter> {
    const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    #[cfg(target_arch = "x86_64")]
    const ARCH: u32 = 0xC000_003E; // AUDIT_ARCH_X86_64
    #[cfg(target_arch = "aarch64")]
    const ARCH: u32 = 0xC000_00B7; // AUDIT_ARCH_AARCH64
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    vec![
        op(LD_W_ABS, 0, 0, 4), // seccomp_data.arch
        op(JEQ_K, 0, 3, ARCH), // another ABI: allow
        op(LD_W_ABS, 0, 0, 0), // seccomp_data.nr
        op(JEQ_K, 0, 1, libc::SYS_io_uring_setup as u32),
        op(RET_K, 0, 0, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        op(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ]
}

#[test]
fn io_uring_blocked_by_seccomp_exits_2_naming_it() {
    let echo = uringlb_bench::EchoServer::start("127.0.0.1:0").unwrap();
    let listen = free_addr();
    let filter = deny_io_uring_setup();
    let mut cmd = Command::new(BIN);
    cmd.args(["--listen", &listen.to_string()])
        .args(["--backend", &echo.addr().to_string(), "--health", "none"])
        .stdin(Stdio::null());
    // SAFETY: between fork and exec only prctl(2) runs (async-signal-safe, no allocation);
    // the program points into `filter`, which the closure owns until the exec.
    unsafe {
        cmd.pre_exec(move || {
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().expect("run uringlb under the seccomp filter");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{}: {stderr}", out.status);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line: {stderr}");
    let line = errors[0];
    for needle in [
        "io_uring is not available",
        "Operation not permitted",
        "seccomp",
        "io_uring_disabled",
        "kernel",
    ] {
        assert!(line.contains(needle), "{needle:?} missing from: {line}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Nothing was left listening.
    assert!(std::net::TcpStream::connect(listen).is_err());
}

fn profile() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/seccomp-io-uring.json");
    let text = std::fs::read_to_string(&path).expect("contrib/seccomp-io-uring.json");
    serde_json::from_str(&text).expect("the seccomp profile is JSON")
}

/// Names the profile allows (some only with an argument condition, as `clone`).
fn allowed(profile: &serde_json::Value) -> Vec<String> {
    profile["syscalls"]
        .as_array()
        .expect("syscalls: []")
        .iter()
        .filter(|r| r["action"] == "SCMP_ACT_ALLOW")
        .filter(|r| r.get("includes").is_none() && r.get("excludes").is_none())
        .flat_map(|r| r["names"].as_array().expect("names: []").iter())
        .map(|n| n.as_str().expect("a name is a string").to_string())
        .collect()
}

#[test]
fn seccomp_profile_allows_io_uring_and_refuses_by_default() {
    let p = profile();
    assert_eq!(
        p["defaultAction"], "SCMP_ACT_ERRNO",
        "{}",
        p["defaultAction"]
    );
    let allowed = allowed(&p);
    for call in ["io_uring_setup", "io_uring_enter", "io_uring_register"] {
        assert!(allowed.iter().any(|a| a == call), "{call} not allowed");
    }
    // What the balancer itself calls at start and on its data path.
    for call in [
        "socket",
        "bind",
        "listen",
        "setsockopt",
        "accept4",
        "connect",
        "epoll_wait",
        "eventfd2",
        "splice",
        "pipe2",
        "mmap",
        "madvise",
        "sched_setaffinity",
        "prlimit64",
        "clone",
        "futex",
        "execve",
        "exit_group",
    ] {
        assert!(allowed.iter().any(|a| a == call), "{call} not allowed");
    }
    // What Docker's default profile refuses stays refused.
    for call in [
        "mount",
        "umount2",
        "reboot",
        "kexec_load",
        "init_module",
        "bpf",
        "ptrace",
        "perf_event_open",
        "unshare",
        "setns",
        "keyctl",
        "add_key",
        "open_by_handle_at",
        "pivot_root",
        "swapon",
        "settimeofday",
    ] {
        assert!(!allowed.iter().any(|a| a == call), "{call} allowed");
    }
}
