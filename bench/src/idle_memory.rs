//! Memory per idle proxied connection: the balancer's resident memory with N connections
//! open and idle (no byte sent yet), then after each has echoed one small message and gone
//! idle again, plus the kernel's TCP memory (`/proc/net/sockstat`) at each step.
//! `uringlb-bench idle-memory`.
//!
//! The echo backend runs as a separate process (`uringlb-bench serve-echo`), so this process
//! holds only the N client sockets and the balancer 2N: 9000 connections fit an open-file
//! limit of 20000.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::Serialize;

use crate::pattern;
use crate::soak::balancer::Balancer;
use crate::soak::procfs::{self, Fds, Mem, TcpSockstat};

#[derive(Debug, Clone)]
pub struct IdleMemoryConfig {
    pub uringlb: PathBuf,
    /// The `uringlb-bench` binary, run as `serve-echo` for the backend.
    pub bench: PathBuf,
    pub conns: usize,
    /// One run per value of the balancer's `--workers`.
    pub workers: Vec<String>,
    /// Bytes each connection sends (and gets back) in the second step.
    pub message: usize,
    /// `--forward` of the balancer.
    pub forward: String,
    /// Pause before each measurement, so the balancer has finished what it was doing.
    pub settle: Duration,
}

/// One measurement point.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Point {
    pub mem: Mem,
    pub fds: Fds,
    pub tcp: TcpSockstat,
}

/// One run (one `--workers` value).
#[derive(Debug, Clone, Default, Serialize)]
pub struct IdleMemoryRun {
    pub workers: String,
    pub conns: usize,
    pub message: usize,
    pub forward: String,
    pub base: Point,
    pub idle: Point,
    pub after_message: Point,
    /// (idle - base) / conns, VmRSS and RssAnon.
    pub rss_per_conn_idle: f64,
    pub anon_per_conn_idle: f64,
    pub rss_per_conn_after_message: f64,
    pub anon_per_conn_after_message: f64,
    /// sockstat TCP `mem` delta per connection: the kernel side of all four sockets of a
    /// proxied connection (client, the balancer's two, backend), system-wide.
    pub kernel_per_conn_idle: f64,
    pub kernel_per_conn_after_message: f64,
}

/// The echo backend process; killed on drop.
struct EchoChild {
    child: Child,
    addr: SocketAddr,
}

impl EchoChild {
    fn start(bench: &PathBuf) -> anyhow::Result<EchoChild> {
        let mut child = Command::new(bench)
            .args(["serve-echo", "--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {} serve-echo", bench.display()))?;
        let out = child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok());
        match addr {
            Some(addr) => Ok(EchoChild { child, addr }),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("serve-echo said {line:?}, not `listening on ADDR`")
            }
        }
    }
}

impl Drop for EchoChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn point(pid: u32) -> anyhow::Result<Point> {
    Ok(Point {
        mem: procfs::mem(pid).context("cannot read the balancer's memory")?,
        fds: procfs::fds(pid).context("cannot read the balancer's descriptors")?,
        tcp: procfs::tcp_sockstat().context("cannot read /proc/net/sockstat")?,
    })
}

fn per_conn(after: u64, before: u64, n: usize) -> f64 {
    (after as f64 - before as f64) / n.max(1) as f64
}

/// Runs one measurement per `--workers` value.
pub fn run(cfg: &IdleMemoryConfig) -> anyhow::Result<Vec<IdleMemoryRun>> {
    cfg.workers.iter().map(|w| run_one(cfg, w)).collect()
}

fn run_one(cfg: &IdleMemoryConfig, workers: &str) -> anyhow::Result<IdleMemoryRun> {
    let echo = EchoChild::start(&cfg.bench)?;
    let log = std::env::temp_dir().join(format!(
        "uringlb-idle-memory-{}-{workers}.log",
        std::process::id()
    ));
    let args: Vec<String> = [
        "--backend",
        &echo.addr.to_string(),
        "--workers",
        workers,
        "--max-conns",
        &(cfg.conns + 100).to_string(),
        "--forward",
        &cfg.forward,
        "--health",
        "none",
        "--idle-timeout",
        "1h",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut lb = Balancer::start(&cfg.uringlb, &args, log.clone())?;
    let pid = lb.pid();

    // A few full exchanges first, so that what is allocated once (buffers of the first
    // connections, the allocator's arenas) is in the base and not charged to N.
    for i in 0..16u64 {
        let mut s = connect(lb.listen)?;
        exchange(&mut s, i * 1000, cfg.message)?;
    }
    std::thread::sleep(cfg.settle);
    let base = point(pid)?;

    let mut conns = Vec::with_capacity(cfg.conns);
    for _ in 0..cfg.conns {
        conns.push(connect(lb.listen)?);
    }
    // Each connection is idle once the balancer holds both its sockets.
    let want = base.fds.sockets + 2 * cfg.conns;
    let deadline = Instant::now() + Duration::from_secs(60);
    while procfs::fds(pid).map_or(0, |f| f.sockets) < want {
        lb.check_alive()?;
        if Instant::now() > deadline {
            bail!(
                "the balancer holds {:?} descriptors, expected {want} sockets",
                procfs::fds(pid)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(cfg.settle);
    let idle = point(pid)?;

    // One message each: all written first, then all read back and checked.
    for (i, s) in conns.iter_mut().enumerate() {
        let msg = pattern::bytes(i as u64 * 1000, cfg.message);
        s.write_all(&msg).context("write a message")?;
    }
    for (i, s) in conns.iter_mut().enumerate() {
        let mut got = vec![0u8; cfg.message];
        s.read_exact(&mut got).context("read the echo back")?;
        if let Some(at) = pattern::mismatch(i as u64 * 1000, &got) {
            bail!("connection {i}: byte {at} of the echo differs");
        }
    }
    std::thread::sleep(cfg.settle);
    let after_message = point(pid)?;
    lb.check_alive()?;
    drop(conns);
    lb.stop(Duration::from_secs(10));
    drop(echo);
    let _ = std::fs::remove_file(&log);

    let n = cfg.conns;
    Ok(IdleMemoryRun {
        workers: workers.to_string(),
        conns: n,
        message: cfg.message,
        forward: cfg.forward.clone(),
        rss_per_conn_idle: per_conn(idle.mem.rss, base.mem.rss, n),
        anon_per_conn_idle: per_conn(idle.mem.rss_anon, base.mem.rss_anon, n),
        rss_per_conn_after_message: per_conn(after_message.mem.rss, base.mem.rss, n),
        anon_per_conn_after_message: per_conn(after_message.mem.rss_anon, base.mem.rss_anon, n),
        kernel_per_conn_idle: per_conn(idle.tcp.mem_bytes, base.tcp.mem_bytes, n),
        kernel_per_conn_after_message: per_conn(after_message.tcp.mem_bytes, base.tcp.mem_bytes, n),
        base,
        idle,
        after_message,
    })
}

fn connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .with_context(|| format!("connect to the balancer {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_nodelay(true)?;
    Ok(s)
}

fn exchange(s: &mut TcpStream, offset: u64, len: usize) -> anyhow::Result<()> {
    let msg = pattern::bytes(offset, len);
    s.write_all(&msg)?;
    let mut got = vec![0u8; len];
    s.read_exact(&mut got)?;
    if got != msg {
        bail!("the warm-up echo came back different");
    }
    Ok(())
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

/// The runs as a table.
pub fn table(runs: &[IdleMemoryRun]) -> String {
    let mut t = String::new();
    t.push_str(&format!(
        "{:<8} {:>6} {:>10} {:>10} {:>10} {:>12} {:>12} {:>12} {:>12}\n",
        "workers",
        "conns",
        "RSS base",
        "idle",
        "after msg",
        "B/conn idle",
        "B/conn msg",
        "kernel idle",
        "kernel msg"
    ));
    for r in runs {
        t.push_str(&format!(
            "{:<8} {:>6} {:>10} {:>10} {:>10} {:>12.0} {:>12.0} {:>12.0} {:>12.0}\n",
            r.workers,
            r.conns,
            mib(r.base.mem.rss),
            mib(r.idle.mem.rss),
            mib(r.after_message.mem.rss),
            r.rss_per_conn_idle,
            r.rss_per_conn_after_message,
            r.kernel_per_conn_idle,
            r.kernel_per_conn_after_message,
        ));
    }
    t.push_str(
        "B/conn: the balancer's VmRSS growth per connection over the base (RssAnon in JSON).\n\
         kernel: /proc/net/sockstat TCP mem growth per connection (all four sockets, system-wide).\n",
    );
    for r in runs {
        t.push_str(&format!(
            "workers {}: fds {} -> {} -> {}, sockstat mem pages {} -> {} -> {}\n",
            r.workers,
            r.base.fds.total,
            r.idle.fds.total,
            r.after_message.fds.total,
            r.base.tcp.fields.get("mem").copied().unwrap_or(0),
            r.idle.tcp.fields.get("mem").copied().unwrap_or(0),
            r.after_message.tcp.fields.get("mem").copied().unwrap_or(0),
        ));
    }
    t
}
