//! The soak's echo backends: in-process, each on a fixed port, so one can be killed
//! (listener and every open connection closed at once) and restarted on the same address,
//! which the balancer only notices through its health checks and failed connects.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::EchoServer;

/// One backend slot: a stable name and address, and the server while it runs.
struct Slot {
    name: String,
    addr: SocketAddr,
    server: Mutex<Option<EchoServer>>,
}

/// Echo backends `b0`, `b1`, ... that can be killed and restarted.
pub struct Backends {
    slots: Vec<Slot>,
}

impl Backends {
    /// Starts `n` echo servers on free loopback ports.
    pub fn start(n: usize) -> anyhow::Result<Backends> {
        let slots = (0..n)
            .map(|i| {
                let server = EchoServer::start("127.0.0.1:0").context("start an echo backend")?;
                Ok(Slot {
                    name: format!("b{i}"),
                    addr: server.addr(),
                    server: Mutex::new(Some(server)),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Backends { slots })
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn name(&self, i: usize) -> &str {
        &self.slots[i].name
    }

    pub fn addr(&self, i: usize) -> SocketAddr {
        self.slots[i].addr
    }

    /// Kills backend `i`; returns how many connections it had open (the ones cut).
    pub fn kill(&self, i: usize) -> u64 {
        let server = lock(&self.slots[i].server).take();
        match server {
            Some(s) => {
                let open = s.active();
                s.stop();
                open
            }
            None => 0,
        }
    }

    /// Restarts backend `i` on its old address. The port was just released, so binding is
    /// retried for a while (another process could take it, which would end the run).
    pub fn restart(&self, i: usize) -> anyhow::Result<()> {
        let slot = &self.slots[i];
        let mut guard = lock(&slot.server);
        if guard.is_some() {
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match EchoServer::start(slot.addr) {
                Ok(s) => {
                    *guard = Some(s);
                    return Ok(());
                }
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!("restart {}: {e}; retrying", slot.name);
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot restart {}", slot.addr));
                }
            }
        }
    }

    /// Connections open on all running backends now.
    pub fn active(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| lock(&s.server).as_ref().map_or(0, |srv| srv.active()))
            .sum()
    }

    /// Stops every backend.
    pub fn stop_all(&self) {
        for i in 0..self.slots.len() {
            self.kill(i);
        }
    }
}

/// Poison-tolerant: a panicking load thread must not take the backends down with it.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
