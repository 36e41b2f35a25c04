//! Helpers for integration tests: run the real `uringlb` binary on loopback, talk to it
//! over real sockets, and look at the process from outside (/proc).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_uringlb");

/// A free loopback port (bound then released; good enough on a test machine).
pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap()
}

/// A running balancer process.
pub struct Lb {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

impl Lb {
    /// Starts `uringlb --listen <free port> ARGS...` and waits until it accepts.
    pub fn start(args: &[&str]) -> Lb {
        let addr = free_addr();
        Lb::start_on(addr, args)
    }

    pub fn start_on(addr: SocketAddr, args: &[&str]) -> Lb {
        let log = std::env::temp_dir().join(format!(
            "uringlb-test-{}-{}.log",
            std::process::id(),
            addr.port()
        ));
        let logf = std::fs::File::create(&log).unwrap();
        let child = Command::new(BIN)
            .arg("--listen")
            .arg(addr.to_string())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("spawn uringlb");
        let mut lb = Lb { child, addr, log };
        lb.wait_listening();
        lb
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("uringlb exited early ({st}): {}", self.log_text());
            }
            // The listener is bound before workers run; the log line says they run.
            if self.log_text().contains("uringlb running") {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("uringlb did not start: {}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
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

    /// Waits for the process to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
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

/// Reads one line (up to '\n') from a stream.
pub fn read_line(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).map(|n| n == 1).unwrap_or(false) {
        if b[0] == b'\n' {
            break;
        }
        out.push(b[0]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Connects through the balancer and returns the name the backend greets with.
pub fn which_backend(lb: &Lb) -> String {
    let mut s = lb.connect();
    let name = read_line(&mut s);
    let _ = s.write_all(b"");
    name
}

/// Deterministic pseudo-random bytes (xorshift), so both ends can check a stream.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A port on loopback with nothing listening (connects are refused).
pub fn closed_port() -> SocketAddr {
    free_addr()
}

/// Runs `handler` on its own thread for every connection to a new loopback listener.
pub fn serve<F>(handler: F) -> SocketAddr
where
    F: Fn(TcpStream) + Send + Sync + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").expect("bind backend");
    let addr = l.local_addr().unwrap();
    let handler = std::sync::Arc::new(handler);
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let h = handler.clone();
            std::thread::spawn(move || h(s));
        }
    });
    addr
}

/// FNV-1a over a byte stream, for checking long transfers.
#[derive(Clone, Copy)]
pub struct Fnv(pub u64);

impl Fnv {
    pub fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    pub fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x100_0000_01b3);
        }
    }
}

/// Writes `len` bytes of `pattern(seed)`-style data in chunks; returns their hash.
pub fn write_stream(s: &mut TcpStream, seed: u64, len: usize) -> u64 {
    let chunk = pattern(seed, 1 << 20);
    let mut h = Fnv::new();
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len());
        s.write_all(&chunk[..n]).expect("write stream");
        h.update(&chunk[..n]);
        left -= n;
    }
    h.0
}

/// Reads to EOF; returns (bytes, hash).
pub fn read_stream(s: &mut TcpStream) -> (usize, u64) {
    let mut buf = vec![0u8; 1 << 16];
    let mut h = Fnv::new();
    let mut total = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                h.update(&buf[..n]);
                total += n;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read stream: {e}"),
        }
    }
    (total, h.0)
}

/// `--backend ADDR` argument pairs for the given addresses.
pub fn backend_args(addrs: &[SocketAddr]) -> Vec<String> {
    addrs
        .iter()
        .flat_map(|a| ["--backend".to_string(), a.to_string()])
        .collect()
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
