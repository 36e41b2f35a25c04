//! Socket activation (systemd's `LISTEN_FDS`): the listening sockets a service manager made
//! for the balancer, matched to the configured listen addresses. Every worker accepts from
//! the one socket of an address (a copy each), so the socket needs no `SO_REUSEPORT`.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use socket2::{SockRef, Type};

use crate::backend::ServiceId;
use crate::config::Protocol as ServiceProtocol;
use crate::server::Inherited;

/// Turns the passed sockets into one inherited listener per worker for every listen
/// address they serve (services sharing an address share its sockets). A socket that
/// matches no listen address, that is not listening, or whose address cannot be read is
/// an error: a unit that passes it expects it served.
pub fn match_listeners(
    fds: Vec<OwnedFd>,
    wanted: &[(SocketAddr, String, ServiceId, ServiceProtocol)],
    workers: usize,
) -> Result<Vec<Inherited>, String> {
    let mut out = Vec::new();
    for (i, fd) in fds.into_iter().enumerate() {
        let n = 3 + i;
        let sock = SockRef::from(&fd);
        let addr = sock
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .ok_or_else(|| format!("socket activation: descriptor {n} is not an IP socket"))?;
        let protocol = match sock.r#type() {
            Ok(t) if t == Type::STREAM => ServiceProtocol::Tcp,
            Ok(t) if t == Type::DGRAM => ServiceProtocol::Udp,
            _ => {
                return Err(format!(
                    "socket activation: descriptor {n} ({addr}) is neither TCP nor UDP"
                ))
            }
        };
        let serves: Vec<&(SocketAddr, String, ServiceId, ServiceProtocol)> = wanted
            .iter()
            .filter(|(w, _, _, p)| *p == protocol && same_address(*w, addr))
            .collect();
        if serves.is_empty() {
            return Err(format!(
                "socket activation: descriptor {n} ({addr}, {}) matches no listen address",
                protocol.name()
            ));
        }
        let _ = sock.set_nonblocking(true);
        let mut done: Vec<SocketAddr> = Vec::new();
        for (w, service, _, _) in serves {
            if done.contains(w) {
                continue;
            }
            done.push(*w);
            for _ in 0..workers {
                let copy = fd
                    .try_clone()
                    .map_err(|e| format!("socket activation: descriptor {n}: {e}"))?;
                out.push(Inherited {
                    wanted: *w,
                    addr,
                    protocol,
                    service: service.clone(),
                    fd: copy,
                });
            }
        }
    }
    Ok(out)
}

/// A configured address is served by a socket bound to it; port 0 in the configuration
/// takes the socket's port.
fn same_address(wanted: SocketAddr, bound: SocketAddr) -> bool {
    wanted.ip() == bound.ip() && (wanted.port() == bound.port() || wanted.port() == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_serves_its_address_once_per_worker() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let wanted = vec![
            (addr, "a".to_string(), ServiceId(0), ServiceProtocol::Tcp),
            (addr, "b".to_string(), ServiceId(1), ServiceProtocol::Tcp),
            (addr, "u".to_string(), ServiceId(2), ServiceProtocol::Udp),
        ];
        let got = match_listeners(vec![OwnedFd::from(l)], &wanted, 3).unwrap();
        // Services "a" and "b" share the address, and so its sockets.
        assert_eq!(got.len(), 3);
        assert!(got.iter().all(|s| s.service == "a"));
        assert!(got
            .iter()
            .all(|s| s.protocol == ServiceProtocol::Tcp && s.addr == addr));
    }

    #[test]
    fn a_socket_no_address_wants_is_refused() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let other: SocketAddr = "127.0.0.2:80".parse().unwrap();
        let wanted = vec![(other, "a".to_string(), ServiceId(0), ServiceProtocol::Tcp)];
        let e = match_listeners(vec![OwnedFd::from(l)], &wanted, 2).unwrap_err();
        assert!(e.contains("matches no listen address"), "{e}");
    }
}
