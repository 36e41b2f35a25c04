//! Socket and descriptor calls of the data path, all safe: descriptors are `OwnedFd`s (or
//! borrowed from one), and the calls go through `socket2` and `nix`. The io_uring side,
//! where handing memory to the kernel is the unsafe step, is [`crate::uring`].

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::eventfd::{EfdFlags, EventFd};
use socket2::{Domain, SockRef, Socket, Type};

/// `shutdown(fd, SHUT_WR)`: 0 or the negated errno, as an io_uring completion carries it.
pub fn shutdown_write(fd: impl AsFd) -> i32 {
    match SockRef::from(&fd).shutdown(Shutdown::Write) {
        Ok(()) => 0,
        Err(e) => -e.raw_os_error().unwrap_or(libc::EIO),
    }
}

/// Sets `SO_LINGER {on, 0}` so that closing the socket sends a reset instead of a FIN.
pub fn set_linger_zero(fd: impl AsFd) {
    let _ = SockRef::from(&fd).set_linger(Some(Duration::ZERO));
}

/// Sets `TCP_NODELAY` (forwarded bytes are never held back by Nagle).
pub fn set_nodelay(fd: impl AsFd) {
    let _ = SockRef::from(&fd).set_tcp_nodelay(true);
}

/// A new non-blocking, close-on-exec TCP socket for `addr`'s family.
pub fn tcp_socket(addr: &SocketAddr) -> io::Result<OwnedFd> {
    let sock = Socket::new(
        Domain::for_address(*addr),
        Type::STREAM.nonblocking().cloexec(),
        None,
    )?;
    Ok(sock.into())
}

/// The peer address of a connected socket.
pub fn peer_addr(fd: impl AsFd) -> Option<SocketAddr> {
    SockRef::from(&fd).peer_addr().ok()?.as_socket()
}

/// The local address of a socket (for an accepted client: the address it connected to).
pub fn local_addr(fd: impl AsFd) -> Option<SocketAddr> {
    SockRef::from(&fd).local_addr().ok()?.as_socket()
}

/// The address a client connected to before NAT changed it (`SO_ORIGINAL_DST`; its own
/// address when NAT did not), if connection tracking knows the connection; `v6`: the
/// socket is IPv6.
pub fn original_dst(fd: impl AsFd, v6: bool) -> Option<SocketAddr> {
    let sock = SockRef::from(&fd);
    let orig = if v6 {
        sock.original_dst_v6()
    } else {
        sock.original_dst_v4()
    };
    orig.ok()?.as_socket()
}

/// A non-blocking pipe of (about) `size` bytes: (read end, write end). If the size cannot
/// be set (above `pipe-max-size`), the pipe keeps the default size, which still works.
pub fn pipe(size: usize) -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
    let size = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
    let _ = fcntl(&w, FcntlArg::F_SETPIPE_SZ(size));
    Ok((r, w))
}

/// The capacity of a pipe in bytes.
pub fn pipe_size(fd: impl AsFd) -> usize {
    fcntl(fd, FcntlArg::F_GETPIPE_SZ).map_or(0, |n| n.max(0) as usize)
}

/// A non-blocking eventfd: the control thread's wake-up for a worker.
pub fn eventfd() -> io::Result<OwnedFd> {
    let efd = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
    Ok(efd.into())
}

/// Adds 1 to an eventfd's counter, waking a ring that reads it. A full counter (EAGAIN)
/// is fine: the reader is due to wake anyway.
pub fn eventfd_signal(fd: impl AsFd) {
    let _ = nix::unistd::write(fd, &1u64.to_ne_bytes());
}

/// Turns TCP keepalive on, the first probe after `idle` without traffic (the interval and
/// count of probes are the system's). Best effort: a socket that refuses is left as it is.
pub fn set_keepalive(fd: impl AsFd, idle: Duration) {
    let ka = socket2::TcpKeepalive::new().with_time(idle);
    let _ = SockRef::from(&fd).set_tcp_keepalive(&ka);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipe_has_the_asked_size_and_eventfd_counts() {
        let (r, _w) = pipe(256 * 1024).unwrap();
        assert!(pipe_size(&r) >= 64 * 1024);
        let e = eventfd().unwrap();
        eventfd_signal(&e);
        eventfd_signal(&e);
        let mut buf = [0u8; 8];
        assert_eq!(nix::unistd::read(&e, &mut buf).unwrap(), 8);
        assert_eq!(u64::from_ne_bytes(buf), 2);
    }

    #[test]
    fn socket_calls_on_a_real_connection() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let c = std::net::TcpStream::connect(addr).unwrap();
        let (s, peer) = l.accept().unwrap();
        assert_eq!(peer_addr(&s), Some(peer));
        assert_eq!(local_addr(&s), Some(addr));
        assert_eq!(shutdown_write(&c), 0);
        let mut b = [0u8; 1];
        assert_eq!(
            std::io::Read::read(&mut &s, &mut b).unwrap(),
            0,
            "EOF after SHUT_WR"
        );
        let fresh = tcp_socket(&addr).unwrap();
        set_nodelay(&fresh);
        set_linger_zero(&fresh);
        assert!(shutdown_write(&fresh) < 0, "not connected");
    }
}
