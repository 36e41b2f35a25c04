//! Echo backend.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::Ordering;

use super::serve::{echo_until_eof, ServerCore};

/// Echoes every byte back. On client EOF it sends what is left, then shuts down its write
/// side, so half-close through the balancer can be tested end to end.
pub struct EchoServer {
    core: ServerCore,
}

impl EchoServer {
    /// Starts serving on `addr` (e.g. `"127.0.0.1:0"`).
    pub fn start(addr: impl ToSocketAddrs) -> io::Result<Self> {
        let core = ServerCore::start(addr, "echo", |mut stream, stats| async move {
            echo_until_eof(&mut stream, &stats).await
        })?;
        Ok(Self { core })
    }

    /// The bound address, with the real port when started on port 0.
    pub fn addr(&self) -> SocketAddr {
        self.core.addr()
    }

    /// Connections accepted since start.
    pub fn connections(&self) -> u64 {
        self.core.stats().connections.load(Ordering::Relaxed)
    }

    /// Connections currently open.
    pub fn active(&self) -> u64 {
        self.core.stats().active.load(Ordering::Relaxed)
    }

    /// Bytes echoed since start.
    pub fn bytes(&self) -> u64 {
        self.core.stats().bytes.load(Ordering::Relaxed)
    }

    /// Closes the listener and all open connections; returns once they are closed.
    pub fn stop(&self) {
        self.core.stop()
    }
}
