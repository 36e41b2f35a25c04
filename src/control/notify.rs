//! systemd's readiness protocol (`sd_notify(3)`, `Type=notify` units): one datagram per
//! state change to the Unix socket named by `NOTIFY_SOCKET`: `READY=1` once the balancer
//! serves, `RELOADING=1` (with `MONOTONIC_USEC=`) then `READY=1` around a reload,
//! `STOPPING=1` on a graceful stop, and `STATUS=` lines for `systemctl status`.
//!
//! A few lines over std's `UnixDatagram` rather than a crate: the protocol is one
//! `sendto` of `KEY=VALUE` lines, and std reaches abstract sockets (`@name`) too. Without
//! `NOTIFY_SOCKET` (not under systemd, or the tests' in-process balancer) every call does
//! nothing. A send that fails is logged once and never stops the balancer: systemd then
//! judges the service by its own timeouts.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Where the notifications go and what was said last.
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    /// The `STATUS=` sent last: a status is sent only when it changes.
    status: String,
    /// Between `RELOADING=1` and its `READY=1`.
    reloading: bool,
    stopping: bool,
    /// A send failed already (logged once).
    failed: bool,
}

impl Notifier {
    /// Notifies the socket in `NOTIFY_SOCKET`, or nothing when it is unset. A value that is
    /// not a Unix socket address is logged and ignored.
    pub fn from_env() -> Notifier {
        let Some(value) = std::env::var_os("NOTIFY_SOCKET") else {
            return Notifier::off();
        };
        let target = parse_address(&value.to_string_lossy())
            .and_then(|addr| {
                let socket = UnixDatagram::unbound().map_err(|e| e.to_string())?;
                Ok((socket, addr))
            })
            .map_err(|e| tracing::warn!("NOTIFY_SOCKET ignored: {e}"))
            .ok();
        Notifier {
            target,
            ..Notifier::off()
        }
    }

    /// Notifies nobody.
    pub fn off() -> Notifier {
        Notifier {
            target: None,
            status: String::new(),
            reloading: false,
            stopping: false,
            failed: false,
        }
    }

    /// Whether notifications go anywhere (a status line is worth computing).
    pub fn is_on(&self) -> bool {
        self.target.is_some()
    }

    /// The balancer serves: every listener is bound and every worker runs.
    pub fn ready(&mut self, status: String) {
        self.status = status;
        self.send(&format!("READY=1\nSTATUS={}", self.status));
    }

    /// A reload has started (idempotent until [`reloaded`](Self::reloaded)).
    pub fn reloading(&mut self) {
        if self.reloading || self.stopping {
            return;
        }
        self.reloading = true;
        self.send(&reloading_message(monotonic_usec()));
    }

    /// The reloads asked for are done (applied or refused: the balancer serves either way).
    /// `status` is called only when a reload was under way.
    pub fn reloaded(&mut self, status: impl FnOnce() -> String) {
        if !self.reloading || self.stopping {
            return;
        }
        self.reloading = false;
        self.status = status();
        self.send(&format!("READY=1\nSTATUS={}", self.status));
    }

    /// A graceful stop has started (sent once; `status` is called then only).
    pub fn stopping(&mut self, status: impl FnOnce() -> String) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        self.status = status();
        self.send(&format!("STOPPING=1\nSTATUS={}", self.status));
    }

    /// The status line, sent if it changed.
    pub fn status(&mut self, status: String) {
        if status != self.status {
            self.status = status;
            self.send(&format!("STATUS={}", self.status));
        }
    }

    fn send(&mut self, message: &str) {
        let Some((socket, addr)) = &self.target else {
            return;
        };
        if let Err(e) = socket.send_to_addr(message.as_bytes(), addr) {
            if !std::mem::replace(&mut self.failed, true) {
                tracing::warn!("cannot notify systemd (NOTIFY_SOCKET): {e}");
            }
        }
    }
}

/// `NOTIFY_SOCKET`'s value as a socket address: a path, or `@name` for an abstract socket.
pub fn parse_address(value: &str) -> Result<SocketAddr, String> {
    if let Some(name) = value.strip_prefix('@') {
        SocketAddr::from_abstract_name(name.as_bytes())
            .map_err(|e| format!("abstract socket '{value}': {e}"))
    } else if value.starts_with('/') {
        SocketAddr::from_pathname(value).map_err(|e| format!("socket path '{value}': {e}"))
    } else {
        Err(format!(
            "'{value}' is neither a socket path nor an abstract socket (@name)"
        ))
    }
}

/// `RELOADING=1` with the time the reload started, as `Type=notify-reload` (systemd >= 253)
/// requires.
pub fn reloading_message(monotonic_usec: u64) -> String {
    format!("RELOADING=1\nMONOTONIC_USEC={monotonic_usec}\nSTATUS=reloading the configuration")
}

/// `CLOCK_MONOTONIC` in microseconds, the clock systemd compares `MONOTONIC_USEC` with.
fn monotonic_usec() -> u64 {
    use nix::time::{clock_gettime, ClockId};
    match clock_gettime(ClockId::CLOCK_MONOTONIC) {
        Ok(t) => (t.tv_sec() as u64) * 1_000_000 + (t.tv_nsec() as u64) / 1_000,
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let path = parse_address("/run/systemd/notify").unwrap();
        assert_eq!(
            path.as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
        let abs = parse_address("@/org/freedesktop/systemd1/notify/42").unwrap();
        assert_eq!(
            abs.as_abstract_name(),
            Some(&b"/org/freedesktop/systemd1/notify/42"[..])
        );
        assert!(parse_address("vsock:2:1234").is_err());
        assert!(parse_address("").is_err());
    }

    #[test]
    fn reloading_carries_the_time() {
        let m = reloading_message(1_234_567);
        assert!(m.starts_with("RELOADING=1\n"), "{m}");
        assert!(m.contains("\nMONOTONIC_USEC=1234567\n"), "{m}");
        assert!(monotonic_usec() > 0);
    }

    #[test]
    fn datagrams_in_order() {
        let dir = std::env::temp_dir().join(format!("uringlb-notify-unit-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let rx = UnixDatagram::bind(&dir).unwrap();
        rx.set_nonblocking(true).unwrap();
        let mut n = Notifier {
            target: Some((
                UnixDatagram::unbound().unwrap(),
                SocketAddr::from_pathname(&dir).unwrap(),
            )),
            ..Notifier::off()
        };
        n.ready("a".into());
        n.status("a".into()); // unchanged: not sent
        n.reloaded(|| "b".into()); // no reload under way: not sent
        n.reloading();
        n.reloading(); // once
        n.reloaded(|| "b".into());
        n.stopping(|| "c".into());
        n.reloading(); // stopping: not sent
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        while let Ok(len) = rx.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..len]).into_owned());
        }
        let _ = std::fs::remove_file(&dir);
        let firsts: Vec<&str> = got.iter().map(|m| m.lines().next().unwrap()).collect();
        assert_eq!(
            firsts,
            ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"],
            "{got:?}"
        );
        assert!(got[2].contains("STATUS=b"));
    }
}
