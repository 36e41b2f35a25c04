//! Name backend: says who it is, then echoes.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;

use super::serve::{echo_until_eof, ServerCore};

/// On accept writes `"{name}\n"`, then behaves like [`EchoServer`](super::EchoServer), so a
/// test learns which backend it reached by reading one line and can still exchange bytes.
pub struct NameServer {
    core: ServerCore,
    name: Arc<str>,
}

impl NameServer {
    /// Starts serving on `addr` (e.g. `"127.0.0.1:0"`).
    pub fn start(addr: impl ToSocketAddrs, name: &str) -> io::Result<Self> {
        let name: Arc<str> = name.into();
        let greeting: Arc<[u8]> = format!("{name}\n").into_bytes().into();
        let core = ServerCore::start(addr, "name", move |mut stream, stats| {
            let greeting = greeting.clone();
            async move {
                stream.write_all(&greeting).await?;
                echo_until_eof(&mut stream, &stats).await
            }
        })?;
        Ok(Self { core, name })
    }

    /// The name this server announces.
    pub fn name(&self) -> &str {
        &self.name
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

    /// Closes the listener and all open connections; returns once they are closed.
    pub fn stop(&self) {
        self.core.stop()
    }
}
