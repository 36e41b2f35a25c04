//! The machinery every backend shares: bind, accept loop, counters, stop.

use std::future::Future;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Deep enough that a test opening thousands of connections at once gets no SYN drops
/// (and so no one-second retransmit stalls); the kernel caps it at `somaxconn`.
const BACKLOG: i32 = 4096;

/// Counters a server updates as it works; read through the server's accessors.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub connections: AtomicU64,
    pub active: AtomicU64,
    pub requests: AtomicU64,
    pub bytes: AtomicU64,
}

impl Stats {
    pub fn add_bytes(&self, n: usize) {
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Decrements `active` however the connection task ends, including being dropped on stop.
struct ActiveGuard(Arc<Stats>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A running server: its address, counters and the means to stop it.
pub(crate) struct ServerCore {
    addr: SocketAddr,
    stats: Arc<Stats>,
    stop_tx: Mutex<Option<oneshot::Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl ServerCore {
    /// Binds `addr` and serves each accepted connection with `handler` on a new thread.
    pub fn start<A, F, Fut>(addr: A, kind: &'static str, handler: F) -> io::Result<Self>
    where
        A: ToSocketAddrs,
        F: Fn(TcpStream, Arc<Stats>) -> Fut + Send + 'static,
        Fut: Future<Output = io::Result<()>> + Send + 'static,
    {
        let std_listener = bind(addr)?;
        let addr = std_listener.local_addr()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let stats = Arc::new(Stats::default());
        let (stop_tx, stop_rx) = oneshot::channel();
        let thread_stats = stats.clone();
        let thread = std::thread::Builder::new()
            .name(format!("bench-{kind}-{}", addr.port()))
            .spawn(move || {
                rt.block_on(accept_loop(
                    std_listener,
                    stop_rx,
                    thread_stats,
                    handler,
                    kind,
                ));
                // Dropping the runtime drops every connection task and so closes its socket.
                drop(rt);
            })?;
        Ok(Self {
            addr,
            stats,
            stop_tx: Mutex::new(Some(stop_tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Closes the listener and all connections, then joins the server thread. Idempotent.
    pub fn stop(&self) {
        if let Some(tx) = lock(&self.stop_tx).take() {
            let _ = tx.send(());
        }
        let handle = lock(&self.thread).take();
        if let Some(handle) = handle {
            if handle.thread().id() != std::thread::current().id() {
                let _ = handle.join();
            }
        }
    }
}

impl Drop for ServerCore {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Poison-tolerant lock: a panic elsewhere must not make `stop()` panic too.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn bind<A: ToSocketAddrs>(addr: A) -> io::Result<std::net::TcpListener> {
    let mut last_err = None;
    for addr in addr.to_socket_addrs()? {
        match bind_one(addr) {
            Ok(l) => return Ok(l),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "address resolved to nothing")
    }))
}

fn bind_one(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // A test that kills a backend and restarts it on the same port must not hit EADDRINUSE
    // because of connections lingering in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

async fn accept_loop<F, Fut>(
    std_listener: std::net::TcpListener,
    mut stop_rx: oneshot::Receiver<()>,
    stats: Arc<Stats>,
    handler: F,
    kind: &'static str,
) where
    F: Fn(TcpStream, Arc<Stats>) -> Fut,
    Fut: Future<Output = io::Result<()>> + Send + 'static,
{
    let listener = match TcpListener::from_std(std_listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(kind, error = %e, "cannot register listener");
            return;
        }
    };
    loop {
        tokio::select! {
            biased;
            // Fires on stop() and also if the handle vanished without sending.
            _ = &mut stop_rx => return,
            res = listener.accept() => match res {
                Ok((stream, peer)) => {
                    stats.connections.fetch_add(1, Ordering::Relaxed);
                    stats.active.fetch_add(1, Ordering::Relaxed);
                    let guard = ActiveGuard(stats.clone());
                    // Request/response traffic must not wait for Nagle.
                    let _ = stream.set_nodelay(true);
                    let fut = handler(stream, stats.clone());
                    tokio::spawn(async move {
                        let _guard = guard;
                        if let Err(e) = fut.await {
                            tracing::debug!(kind, %peer, error = %e, "connection ended with error");
                        }
                    });
                }
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning on a full fd table.
                    tracing::warn!(kind, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
}

/// Copies everything read back to the writer; on EOF finishes sending, then half-closes.
pub(crate) async fn echo_until_eof(stream: &mut TcpStream, stats: &Stats) -> io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        stats.add_bytes(n);
        stream.write_all(&buf[..n]).await?;
    }
    stream.shutdown().await
}

/// After our side is done: wait (bounded) for the peer to close before dropping the socket,
/// so unread request bytes do not turn our close into a RST that destroys the response.
pub(crate) async fn linger_close(stream: &mut TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    let drain = async {
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
}
