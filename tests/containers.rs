//! Running where io_uring may be blocked (containers): the real binary under a seccomp
//! filter that refuses `io_uring_setup` (as Docker's default profile does) exits 2 with one
//! line naming the cause; and the contrib/ seccomp profile allows the three io_uring calls
//! while keeping its default of refusing.

mod util;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

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

/// An OCI bundle that runs the real binary the way a container runtime does: its own pid,
/// mount, IPC and UTS namespaces, a read-only root made of the host's system directories,
/// no capabilities, no new privileges, user `nobody`, and the contrib/ seccomp profile
/// (Docker's format turned into the OCI one: `archMap` becomes `architectures`). The
/// network namespace is the host's, so the test reaches it on loopback.
struct Container {
    dir: std::path::PathBuf,
    name: String,
    /// `runc run`, in the foreground: it exits with the container's process.
    child: Option<std::process::Child>,
}

impl Container {
    /// Starts `args` in the container under `seccomp` (a profile in Docker's format).
    fn run(seccomp: &serde_json::Value, args: &[String]) -> Container {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let name = format!(
            "uringlb-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(dir.join("rootfs")).unwrap();
        let bin_dir = Path::new(BIN)
            .parent()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let mut mounts = vec![
            serde_json::json!({"destination": "/proc", "type": "proc", "source": "proc"}),
            serde_json::json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}),
            serde_json::json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                               "options": ["nosuid", "mode=755"]}),
        ];
        for d in ["/usr", "/lib", "/lib64", "/bin", "/etc", bin_dir.as_str()] {
            if Path::new(d).exists() {
                mounts.push(
                    serde_json::json!({"destination": d, "type": "bind", "source": d,
                                               "options": ["rbind", "ro"]}),
                );
            }
        }
        let mut architectures = Vec::new();
        for a in seccomp["archMap"].as_array().expect("archMap: []") {
            architectures.push(a["architecture"].clone());
            architectures.extend(
                a["subArchitectures"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
            );
        }
        let mut process_args = vec![BIN.to_string()];
        process_args.extend(args.iter().cloned());
        let config = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": 65534, "gid": 65534},
                "args": process_args,
                "env": ["PATH=/usr/bin:/bin"],
                "cwd": "/",
                "noNewPrivileges": true,
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 4096}],
                "capabilities": {"bounding": [], "effective": [], "permitted": [],
                                 "inheritable": [], "ambient": []},
            },
            "root": {"path": "rootfs", "readonly": true},
            "hostname": "uringlb",
            "mounts": mounts,
            "linux": {
                "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"},
                               {"type": "uts"}],
                "seccomp": {
                    "defaultAction": seccomp["defaultAction"],
                    "defaultErrnoRet": seccomp["defaultErrnoRet"],
                    "architectures": architectures,
                    "syscalls": seccomp["syscalls"],
                },
            },
        });
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        let runc = which("runc");
        let child = Command::new(runc)
            .arg("--root")
            .arg(dir.join("state"))
            .args(["run", "--bundle"])
            .arg(&dir)
            .arg(&name)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start runc");
        Container {
            dir,
            name,
            child: Some(child),
        }
    }

    /// Waits for the container's process to exit; its status and output.
    fn wait(mut self) -> (std::process::ExitStatus, String) {
        let child = self.child.take().expect("running");
        let out = child.wait_with_output().expect("wait for runc");
        let text = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        (out.status, text)
    }

    /// Sends SIGTERM to the container's process, as `docker stop` does.
    fn stop(&self) {
        let out = self.runc(&["kill", &self.name, "TERM"]);
        assert!(out.status.success(), "runc kill: {out:?}");
    }

    fn runc(&self, args: &[&str]) -> std::process::Output {
        Command::new(which("runc"))
            .arg("--root")
            .arg(self.dir.join("state"))
            .args(args)
            .output()
            .expect("run runc")
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.runc(&["delete", "--force", &self.name]);
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn the_profile_runs_the_balancer_in_an_oci_container() {
    let echo = uringlb_bench::EchoServer::start("127.0.0.1:0").unwrap();
    let (listen, admin) = (free_addr(), free_addr());
    let args: Vec<String> = [
        "--listen",
        &listen.to_string(),
        "--backend",
        &echo.addr().to_string(),
        "--admin",
        &admin.to_string(),
        "--health",
        "tcp",
        "--forward",
        "auto",
        "--workers",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let c = Container::run(&profile(), &args);
    // The admin API can answer before the workers' listeners are bound: wait for both.
    wait_until(
        "the admin API and the listener answer from the container",
        Duration::from_secs(30),
        || {
            std::net::TcpStream::connect(admin).is_ok()
                && std::net::TcpStream::connect(listen).is_ok()
        },
    );
    // Copy and splice (auto switches to splice after a few full reads) both ways.
    echo_exchange(listen, 7, 8 << 20);
    let metrics = http(admin, "GET", "/metrics", &[], None);
    assert_eq!(metrics.status, 200, "{:?}", metrics.body);
    assert!(
        metrics.body.contains("uringlb_connections_total"),
        "{}",
        metrics.body
    );
    c.stop();
    let (status, out) = c.wait();
    assert!(status.success(), "{status}: {out}");
    assert!(out.contains("stopped"), "{out}");
    assert!(!out.contains("panicked"), "{out}");
}

/// The same container without the three io_uring calls, which is what Docker's default
/// profile amounts to: one line naming the cause and status 2. This also proves the runtime
/// really applied the profile of the test above.
#[test]
fn without_its_io_uring_calls_the_profile_stops_the_balancer_with_one_line() {
    let mut p = profile();
    for rule in p["syscalls"].as_array_mut().unwrap() {
        if let Some(names) = rule["names"].as_array_mut() {
            names.retain(|n| !n.as_str().unwrap().starts_with("io_uring_"));
        }
    }
    assert!(!allowed(&p).iter().any(|a| a.starts_with("io_uring")));
    let args = [
        "--listen",
        &free_addr().to_string(),
        "--backend",
        "127.0.0.1:9",
        "--health",
        "none",
    ]
    .map(String::from);
    let (status, out) = Container::run(&p, &args).wait();
    assert_eq!(status.code(), Some(2), "{status}: {out}");
    let errors: Vec<&str> = out.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{out}");
    assert!(errors[0].contains("io_uring is not available"), "{out}");
}

/// The path of `cmd`, or a loud failure: scripts/install-test-deps.sh installs it.
fn which(cmd: &str) -> String {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        let p = format!("{dir}/{cmd}");
        if Path::new(&p).exists() {
            return p;
        }
    }
    panic!("{cmd} is not installed: run scripts/install-test-deps.sh");
}
