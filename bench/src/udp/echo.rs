//! A UDP echo backend: every datagram goes back to its sender as it came.
//!
//! One thread, blocking `recv_from`/`send_to` on one socket: two system calls per datagram
//! and no parsing, so it costs less than any balancer in front of it (dnsmasq, the other
//! real backend the tests use, parses and answers each query in one thread of its own).

use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;

/// Socket buffers big enough that bursts from many flows are queued, not dropped.
const SOCKET_BUFFER: usize = 4 << 20;

/// A running UDP echo; stops when dropped.
pub struct UdpEchoServer {
    addr: SocketAddr,
    echoed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpEchoServer {
    /// Binds `listen` (port 0 picks one) and starts echoing.
    pub fn start(listen: impl ToSocketAddrs) -> anyhow::Result<UdpEchoServer> {
        let sock = UdpSocket::bind(listen).context("cannot bind the UDP echo")?;
        let addr = sock.local_addr()?;
        let sref = socket2::SockRef::from(&sock);
        // Best effort: the kernel caps them at net.core.{r,w}mem_max.
        let _ = sref.set_recv_buffer_size(SOCKET_BUFFER);
        let _ = sref.set_send_buffer_size(SOCKET_BUFFER);
        // Wakes up now and then to notice `stop`; a busy echo never waits that long.
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        let echoed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (e, s) = (echoed.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("udp-echo".into())
            .spawn(move || {
                let mut buf = vec![0u8; 65_536];
                while !s.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = sock.recv_from(&mut buf) {
                        if sock.send_to(&buf[..n], from).is_ok() {
                            e.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })?;
        Ok(UdpEchoServer {
            addr,
            echoed,
            stop,
            thread: Some(thread),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Datagrams echoed so far.
    pub fn echoed(&self) -> u64 {
        self.echoed.load(Ordering::Relaxed)
    }
}

impl Drop for UdpEchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
