//! The balancer under test: the real `uringlb` binary as a child process, its log in a
//! file, stopped (and reaped) however the run ends.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::admin::Admin;

/// `$UR_BIN`, else `uringlb` next to the running executable (both binaries land in
/// `target/release`).
pub fn default_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("UR_BIN") {
        return PathBuf::from(p);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("uringlb")))
        .unwrap_or_else(|| PathBuf::from("target/release/uringlb"))
}

/// A free loopback address (bound, then released: good enough on a test machine).
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

/// A running balancer.
pub struct Balancer {
    child: Child,
    pub listen: SocketAddr,
    pub admin: Admin,
    pub log: PathBuf,
}

impl Balancer {
    /// Starts `bin --listen LISTEN --admin ADMIN ARGS...` with stderr to `log`, and waits
    /// until it says it runs and its admin endpoint answers.
    pub fn start(bin: &Path, args: &[String], log: PathBuf) -> anyhow::Result<Balancer> {
        let listen = free_addr()?;
        let admin = free_addr()?;
        let logf = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let child = Command::new(bin)
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--admin")
            .arg(admin.to_string())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut b = Balancer {
            child,
            listen,
            admin: Admin { addr: admin },
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            b.check_alive()?;
            if b.log_text().contains("uringlb running") && TcpStream::connect(admin).is_ok() {
                return Ok(b);
            }
            if Instant::now() > deadline {
                bail!("uringlb did not start in 15 s:\n{}", b.log_tail(20));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An error (with the end of its log) if the process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(st)) => bail!("uringlb exited ({st}):\n{}", self.log_tail(30)),
            Err(e) => bail!("cannot check on uringlb: {e}"),
        }
    }

    pub fn signal(&self, sig: Signal) -> anyhow::Result<()> {
        let pid = i32::try_from(self.pid()).context("pid out of range")?;
        kill(Pid::from_raw(pid), sig).with_context(|| format!("cannot send {sig} to uringlb"))
    }

    /// SIGTERM, then waits up to `timeout` for the exit (SIGKILL after that: `None`).
    pub fn stop(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Ok(Some(st)) = self.child.try_wait() {
            return Some(st);
        }
        let _ = self.signal(Signal::SIGTERM);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Log lines at WARN or ERROR (tracing's default format names the level).
    pub fn warnings(&self) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
