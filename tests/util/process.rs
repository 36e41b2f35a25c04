//! The real `uringlb` binary on loopback: started, its log read, looked at from outside
//! (/proc), signalled, and killed when the test drops it.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::net::free_addr;
use super::wait::poll;

pub const BIN: &str = env!("CARGO_BIN_EXE_uringlb");

/// A running balancer process.
pub struct Lb {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

impl Lb {
    /// Starts `uringlb --listen <free port> ARGS...` and waits until its workers run.
    pub fn start(args: &[&str]) -> Lb {
        Lb::start_on(free_addr(), args)
    }

    /// [`Lb::start`] with extra environment variables for the balancer process.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Lb {
        Lb::spawn(free_addr(), args, env)
    }

    /// Starts `uringlb --listen addr ARGS...` (two may share an address: SO_REUSEPORT),
    /// logging to a file of its own, and waits until its workers run.
    pub fn start_on(addr: SocketAddr, args: &[&str]) -> Lb {
        Lb::spawn(addr, args, &[])
    }

    /// Starts `uringlb ARGS...` with no `--listen` (a file of services says where), and
    /// waits until its workers run. `addr` is the address [`Lb::connect`] and the other
    /// helpers use: one of the file's.
    pub fn start_services(addr: SocketAddr, args: &[&str]) -> Lb {
        Lb::spawn_with(addr, false, args, &[])
    }

    fn spawn(addr: SocketAddr, args: &[&str], env: &[(&str, &str)]) -> Lb {
        Lb::spawn_with(addr, true, args, env)
    }

    fn spawn_with(addr: SocketAddr, listen: bool, args: &[&str], env: &[(&str, &str)]) -> Lb {
        static N: AtomicUsize = AtomicUsize::new(0);
        let log = std::env::temp_dir().join(format!(
            "uringlb-test-{}-{}-{}.log",
            std::process::id(),
            addr.port(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let logf = std::fs::File::create(&log).unwrap();
        let listen_args = if listen {
            vec!["--listen".to_string(), addr.to_string()]
        } else {
            Vec::new()
        };
        let child = Command::new(BIN)
            .args(listen_args)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("spawn uringlb");
        let mut lb = Lb { child, addr, log };
        // The listeners are bound before the workers run; this log line says they run.
        let started = poll(Duration::from_secs(10), || {
            lb.check_alive();
            lb.log_text().contains("uringlb running").then_some(())
        });
        assert!(
            started.is_some(),
            "uringlb did not start: {}",
            lb.log_text()
        );
        lb
    }

    /// Panics, with its log, if the process has exited.
    pub fn check_alive(&mut self) {
        if let Ok(Some(st)) = self.child.try_wait() {
            panic!("uringlb exited ({st}): {}", self.log_text());
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Log lines containing every one of `needles`.
    pub fn lines_with(&self, needles: &[&str]) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_string)
            .collect()
    }

    /// Waits until at least `count` log lines contain all of `needles`; returns the
    /// `count`-th.
    pub fn wait_log(&self, needles: &[&str], count: usize, timeout: Duration) -> String {
        poll(timeout, || {
            self.lines_with(needles).into_iter().nth(count - 1)
        })
        .unwrap_or_else(|| {
            panic!(
                "no {count} log line(s) with {needles:?} within {timeout:?}:\n{}",
                self.log_text()
            )
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Open file descriptors of the balancer process.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Threads of the process whose name starts with `prefix` (e.g. "iou-wrk").
    pub fn threads_named(&self, prefix: &str) -> usize {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{}/task", self.pid())) else {
            return 0;
        };
        dir.filter_map(|e| e.ok())
            .filter(|e| {
                std::fs::read_to_string(e.path().join("comm"))
                    .map(|c| c.starts_with(prefix))
                    .unwrap_or(false)
            })
            .count()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// True while the process has not exited.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the process to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        poll(timeout, || self.child.try_wait().ok().flatten())
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).expect("connect to balancer");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    }
}

impl Drop for Lb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Runs the binary to completion with `args`; returns (status, stdout, stderr).
pub fn run_bin(args: &[&str]) -> (ExitStatus, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run uringlb");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An echo backend and a balancer in front of it (`--health none`, plus `extra`); the echo
/// is returned so that it lives as long as the test needs it.
pub fn echo_behind_lb(extra: &[&str]) -> (uringlb_bench::EchoServer, Lb) {
    let echo = uringlb_bench::EchoServer::start("127.0.0.1:0").expect("echo backend");
    let backend = echo.addr().to_string();
    let mut args = vec!["--backend", backend.as_str(), "--health", "none"];
    args.extend_from_slice(extra);
    let lb = Lb::start(&args);
    (echo, lb)
}

/// Resident memory of process `pid` in KiB (VmRSS).
pub fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Writes `text` to `path` atomically (a reload never sees half a file).
pub fn write_atomic(path: &Path, text: &str) {
    let tmp: PathBuf = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("rename config");
}
