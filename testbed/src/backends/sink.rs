//! Sink backend: swallows data, or refuses to read it at all.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::Ordering;

use tokio::io::AsyncReadExt;

use super::serve::ServerCore;

/// Reads and discards everything, counting bytes. In never-read mode it accepts and then
/// never reads, so the sender's buffers fill up: the fixture for backpressure tests.
pub struct SinkServer {
    core: ServerCore,
}

impl SinkServer {
    /// Starts a sink that reads and discards, on `addr` (e.g. `"127.0.0.1:0"`).
    pub fn start(addr: impl ToSocketAddrs) -> io::Result<Self> {
        Self::start_with(addr, false)
    }

    /// Starts a sink that accepts but never reads. Its connections stay open until `stop()`,
    /// even after the peer closes, since noticing that would require reading.
    pub fn start_never_read(addr: impl ToSocketAddrs) -> io::Result<Self> {
        Self::start_with(addr, true)
    }

    /// Starts either kind of sink; `never_read` selects the backpressure mode.
    pub fn start_with(addr: impl ToSocketAddrs, never_read: bool) -> io::Result<Self> {
        let core = ServerCore::start(addr, "sink", move |mut stream, stats| async move {
            if never_read {
                let _hold = stream;
                std::future::pending::<()>().await;
                return Ok(());
            }
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    return Ok(());
                }
                stats.add_bytes(n);
            }
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

    /// Bytes received and discarded since start (always 0 in never-read mode).
    pub fn bytes(&self) -> u64 {
        self.core.stats().bytes.load(Ordering::Relaxed)
    }

    /// Closes the listener and all open connections; returns once they are closed.
    pub fn stop(&self) {
        self.core.stop()
    }
}
