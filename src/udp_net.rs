//! The socket calls of UDP services, all safe (socket2, nix), and the reading of the
//! packet-info control message a receive carries (plain bytes, no pointers).
//!
//! Sends are direct calls rather than ring operations: a UDP send never waits (a full
//! socket buffer drops the datagram with `EAGAIN`/`ENOBUFS`, which is counted), and the
//! datagram's receive buffer goes back to the kernel as soon as the call returns.

use std::io::{self, IoSlice};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::sys::socket::{self as nsock, sockopt, ControlMessage, MsgFlags, SockaddrStorage};
use socket2::{Domain, SockRef, Socket, Type};

/// Receive buffer of a UDP listener: room for bursts while the worker is busy.
const LISTEN_RCVBUF: usize = 4 << 20;

/// A `SO_REUSEPORT` UDP socket bound to `addr`, one per worker (the kernel's 4-tuple hash
/// keeps one client's datagrams on one worker). A wildcard socket asks for each
/// datagram's destination address, so replies can leave from it.
pub fn listen_socket(addr: SocketAddr) -> io::Result<Socket> {
    let sock = Socket::new(
        Domain::for_address(addr),
        Type::DGRAM.nonblocking().cloexec(),
        None,
    )?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    let _ = sock.set_recv_buffer_size(LISTEN_RCVBUF);
    if addr.ip().is_unspecified() {
        match addr {
            SocketAddr::V4(_) => nsock::setsockopt(&sock, sockopt::Ipv4PacketInfo, &true)?,
            SocketAddr::V6(_) => {
                // One family per socket: a v4-mapped client could not be answered from
                // the right address.
                sock.set_only_v6(true)?;
                nsock::setsockopt(&sock, sockopt::Ipv6RecvPacketInfo, &true)?
            }
        }
    }
    sock.bind(&addr.into())?;
    Ok(sock)
}

/// Whether `fd` is a datagram socket (a UDP listener rather than a TCP one).
pub fn is_datagram(fd: impl AsFd) -> bool {
    SockRef::from(&fd).r#type().is_ok_and(|t| t == Type::DGRAM)
}

/// A flow's socket to its backend: non-blocking, connected, so the kernel filters what
/// comes back to that one backend and reports its ICMP errors (`ECONNREFUSED`).
pub fn backend_socket(backend: SocketAddr) -> io::Result<OwnedFd> {
    let sock = Socket::new(
        Domain::for_address(backend),
        Type::DGRAM.nonblocking().cloexec(),
        None,
    )?;
    sock.connect(&backend.into())?;
    Ok(sock.into())
}

/// Sends one datagram on a connected socket; the whole datagram or an error.
pub fn send(fd: impl AsFd, payload: &[u8]) -> io::Result<()> {
    SockRef::from(&fd).send(payload).map(|_| ())
}

/// Sends `payload` from the listener `fd` to `to`, leaving from address `from` when the
/// listener is a wildcard one (`IP_PKTINFO` / `IPV6_PKTINFO`).
pub fn send_to(
    fd: impl AsFd,
    payload: &[u8],
    to: SocketAddr,
    from: Option<IpAddr>,
) -> io::Result<()> {
    let dest = SockaddrStorage::from(to);
    let iov = [IoSlice::new(payload)];
    let v4;
    let v6;
    let cmsg: Vec<ControlMessage<'_>> = match from {
        Some(IpAddr::V4(ip)) => {
            v4 = libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from(ip).to_be(),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            vec![ControlMessage::Ipv4PacketInfo(&v4)]
        }
        Some(IpAddr::V6(ip)) => {
            v6 = libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr {
                    s6_addr: ip.octets(),
                },
                ipi6_ifindex: 0,
            };
            vec![ControlMessage::Ipv6PacketInfo(&v6)]
        }
        None => Vec::new(),
    };
    nsock::sendmsg(
        fd.as_fd().as_raw_fd(),
        &iov,
        &cmsg,
        MsgFlags::MSG_DONTWAIT,
        Some(&dest),
    )
    .map(|_| ())
    .map_err(io::Error::from)
}

/// Room a receive leaves for control messages: one `in6_pktinfo` (the larger) with its
/// header, rounded up.
pub const CONTROL_LEN: usize = 64;

/// The destination address of a received datagram, from its `IP_PKTINFO` or
/// `IPV6_PKTINFO` control message (`control` is the raw `msg_control` bytes).
pub fn pktinfo_dst(control: &[u8]) -> Option<IpAddr> {
    let word = std::mem::size_of::<usize>();
    let header = std::mem::size_of::<libc::cmsghdr>();
    let mut at = 0;
    while at + header <= control.len() {
        let len = usize::from_ne_bytes(control[at..at + word].try_into().ok()?);
        let level = i32::from_ne_bytes(control[at + word..at + word + 4].try_into().ok()?);
        let kind = i32::from_ne_bytes(control[at + word + 4..at + word + 8].try_into().ok()?);
        if len < header || at + len > control.len() {
            return None;
        }
        let data = &control[at + header..at + len];
        match (level, kind) {
            // struct in_pktinfo { int ifindex; in_addr spec_dst; in_addr addr; }
            (libc::IPPROTO_IP, libc::IP_PKTINFO) if data.len() >= 12 => {
                let b: [u8; 4] = data[8..12].try_into().ok()?;
                return Some(IpAddr::from(b));
            }
            // struct in6_pktinfo { in6_addr addr; int ifindex; }
            (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) if data.len() >= 16 => {
                let b: [u8; 16] = data[..16].try_into().ok()?;
                return Some(IpAddr::from(b));
            }
            _ => {}
        }
        at += len.next_multiple_of(word);
    }
    None
}

/// The address in a `sockaddr` the kernel wrote (raw bytes of `sockaddr_in`/`_in6`).
pub fn sockaddr_from_bytes(name: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes(name.get(..2)?.try_into().ok()?);
    let port = u16::from_be_bytes(name.get(2..4)?.try_into().ok()?);
    match i32::from(family) {
        libc::AF_INET => {
            let ip: [u8; 4] = name.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::from((ip, port)))
        }
        libc::AF_INET6 => {
            let ip: [u8; 16] = name.get(8..24)?.try_into().ok()?;
            let scope = u32::from_ne_bytes(name.get(24..28)?.try_into().ok()?);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip.into(),
                port,
                0,
                scope,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_bytes_read_back() {
        let mut v4 = vec![0u8; 16];
        v4[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        v4[2..4].copy_from_slice(&5353u16.to_be_bytes());
        v4[4..8].copy_from_slice(&[127, 1, 2, 3]);
        assert_eq!(
            sockaddr_from_bytes(&v4),
            Some("127.1.2.3:5353".parse().unwrap())
        );
        let mut v6 = vec![0u8; 28];
        v6[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        v6[2..4].copy_from_slice(&53u16.to_be_bytes());
        v6[23] = 1;
        assert_eq!(sockaddr_from_bytes(&v6), Some("[::1]:53".parse().unwrap()));
        assert_eq!(sockaddr_from_bytes(&v6[..5]), None);
    }

    #[test]
    fn pktinfo_is_read_from_a_real_datagram() {
        let rx = listen_socket("0.0.0.0:0".parse().unwrap()).unwrap();
        let port = rx.local_addr().unwrap().as_socket().unwrap().port();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(b"x", ("127.0.0.2", port)).unwrap();
        let mut buf = [0u8; 16];
        let mut cmsg = nix::cmsg_space!(libc::in_pktinfo);
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        rx.set_nonblocking(false).unwrap();
        let len = nsock::recvmsg::<SockaddrStorage>(
            rx.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::empty(),
        )
        .unwrap()
        .bytes;
        assert_eq!(len, 1);
        assert_eq!(pktinfo_dst(&cmsg), Some("127.0.0.2".parse().unwrap()));
        assert_eq!(pktinfo_dst(&[]), None);
        assert_eq!(pktinfo_dst(&[0xff; 40]), None);
    }
}
