//! Source backend: sends a fixed amount of verifiable data.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::Ordering;

use tokio::io::AsyncWriteExt;

use super::serve::{linger_close, ServerCore};
use crate::pattern;

/// On accept writes `bytes` bytes of the [`pattern`] stream, then shuts down its write side
/// and waits (up to 2 s) for the client to close. Lets tests check bulk transfers byte for
/// byte.
pub struct SourceServer {
    core: ServerCore,
}

impl SourceServer {
    /// Starts serving on `addr` (e.g. `"127.0.0.1:0"`), sending `bytes` bytes per connection.
    pub fn start(addr: impl ToSocketAddrs, bytes: u64) -> io::Result<Self> {
        let core = ServerCore::start(addr, "source", move |mut stream, stats| async move {
            let mut buf = vec![0u8; 64 * 1024];
            let mut sent = 0u64;
            while sent < bytes {
                let n = (bytes - sent).min(buf.len() as u64) as usize;
                pattern::fill(sent, &mut buf[..n]);
                stream.write_all(&buf[..n]).await?;
                stats.add_bytes(n);
                sent += n as u64;
            }
            stream.shutdown().await?;
            linger_close(&mut stream).await;
            Ok(())
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

    /// Bytes sent since start, over all connections.
    pub fn bytes_sent(&self) -> u64 {
        self.core.stats().bytes.load(Ordering::Relaxed)
    }

    /// Closes the listener and all open connections; returns once they are closed.
    pub fn stop(&self) {
        self.core.stop()
    }
}
