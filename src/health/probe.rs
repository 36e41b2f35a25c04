//! The active checks' I/O: a TCP connect, or an HTTP/1.1 GET whose status line is parsed
//! by `httparse` (2xx and 3xx are healthy). Each probe is one short-lived connection, closed
//! with a reset so that thousands of checks leave no TIME_WAIT sockets on the balancer.
//!
//! A backend that is sent a PROXY protocol header on the data path expects one on every
//! connection (NGINX's `listen ... proxy_protocol` closes any other), so its checks send
//! one too, first, as HAProxy's `check-send-proxy` does. It carries the check connection's
//! own addresses: there is no client behind a check.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::HealthCheck;
use crate::proxy_protocol::{self, ProxyProtocol};

/// A response head larger than this is not a health check answer.
const MAX_HEAD: usize = 16 * 1024;

/// Why a check failed; one line for the log.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("{0}")]
    Io(std::io::Error),
    #[error("connection closed before a complete HTTP response head")]
    Closed,
    #[error("invalid HTTP response: {0}")]
    Invalid(String),
    #[error("HTTP status {0}")]
    Status(u16),
}

impl ProbeError {
    /// The check could not run for want of a local resource (descriptors, socket buffers,
    /// memory): it says nothing about the backend, so it is not counted against it.
    pub fn is_local(&self) -> bool {
        match self {
            ProbeError::Connect(e) | ProbeError::Io(e) => matches!(
                e.raw_os_error(),
                Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
            ),
            _ => false,
        }
    }
}

/// Runs one check against `addr`, all of it within `timeout`; with `proxy`, the
/// connection starts with a PROXY header of that version.
pub async fn check(
    addr: SocketAddr,
    kind: &HealthCheck,
    timeout: Duration,
    proxy: Option<ProxyProtocol>,
) -> Result<(), ProbeError> {
    let run = async {
        match kind {
            HealthCheck::None => Ok(()),
            HealthCheck::Tcp => tcp(addr, proxy).await,
            HealthCheck::Http(path) => http(addr, path, proxy).await,
            HealthCheck::Dns(name) => super::dns::check(addr, name).await,
        }
    };
    tokio::time::timeout(timeout, run)
        .await
        .unwrap_or(Err(ProbeError::Timeout(timeout)))
}

/// Healthy when the connection is accepted (and, with `proxy`, the header written: the
/// backend then reads a complete header before the reset, rather than a broken one).
pub async fn tcp(addr: SocketAddr, proxy: Option<ProxyProtocol>) -> Result<(), ProbeError> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(ProbeError::Connect)?;
    let result = match proxy_header(&stream, proxy) {
        Ok(header) if !header.is_empty() => stream.write_all(&header).await.map_err(ProbeError::Io),
        Ok(_) => Ok(()),
        Err(e) => Err(e),
    };
    close_with_reset(stream);
    result
}

/// Healthy when `GET path` answers 2xx or 3xx.
pub async fn http(
    addr: SocketAddr,
    path: &str,
    proxy: Option<ProxyProtocol>,
) -> Result<(), ProbeError> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(ProbeError::Connect)?;
    let _ = stream.set_nodelay(true);
    let result = match proxy_header(&stream, proxy) {
        Ok(mut head) => {
            // One write: the header and the request in the same segment.
            head.extend_from_slice(&request(addr, path));
            exchange(&mut stream, &head).await
        }
        Err(e) => Err(e),
    };
    close_with_reset(stream);
    let code = result?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(ProbeError::Status(code))
    }
}

/// The PROXY header for the check connection `stream` (empty without `proxy`): from the
/// check's local address to the backend's.
fn proxy_header(stream: &TcpStream, proxy: Option<ProxyProtocol>) -> Result<Vec<u8>, ProbeError> {
    let Some(version) = proxy else {
        return Ok(Vec::new());
    };
    let src = stream.local_addr().map_err(ProbeError::Io)?;
    let dst = stream.peer_addr().map_err(ProbeError::Io)?;
    let mut buf = [0u8; proxy_protocol::MAX_HEADER];
    let n = proxy_protocol::encode(version, src, dst, &mut buf);
    Ok(buf[..n].to_vec())
}

/// Sends `request` (PROXY header included) and reads the response's status.
async fn exchange(stream: &mut TcpStream, request: &[u8]) -> Result<u16, ProbeError> {
    stream.write_all(request).await.map_err(ProbeError::Io)?;
    let mut buf = Vec::with_capacity(1024);
    loop {
        if stream.read_buf(&mut buf).await.map_err(ProbeError::Io)? == 0 {
            return Err(ProbeError::Closed);
        }
        if let Some(code) = parse_status(&buf)? {
            return Ok(code);
        }
        if buf.len() > MAX_HEAD {
            return Err(ProbeError::Invalid(format!(
                "response head longer than {MAX_HEAD} bytes"
            )));
        }
    }
}

/// The check's request. `Host` is the backend's address: the balancer knows no better
/// name, and HTTP/1.1 requires the header.
pub fn request(addr: SocketAddr, path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: uringlb-health\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )
    .into_bytes()
}

/// The status code once `buf` holds a complete response head; `None` while it is partial.
/// Interim 1xx responses (100 Continue) are skipped, as a client must.
pub fn parse_status(buf: &[u8]) -> Result<Option<u16>, ProbeError> {
    let mut rest = buf;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(rest) {
            Ok(httparse::Status::Partial) => return Ok(None),
            Ok(httparse::Status::Complete(len)) => {
                let code = resp.code.unwrap_or(0);
                if (100..200).contains(&code) && code != 101 {
                    rest = &rest[len..];
                    continue;
                }
                return Ok(Some(code));
            }
            Err(e) => return Err(ProbeError::Invalid(e.to_string())),
        }
    }
}

/// Drops the connection with SO_LINGER 0: a reset rather than a TIME_WAIT per check.
fn close_with_reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_are_parsed_not_matched() {
        assert_eq!(
            parse_status(b"HTTP/1.1 200 OK\r\n\r\n").ok().flatten(),
            Some(200)
        );
        assert_eq!(
            parse_status(b"HTTP/1.0 302 Found\r\nLocation: /\r\n\r\n")
                .ok()
                .flatten(),
            Some(302)
        );
        assert_eq!(
            parse_status(b"HTTP/1.1 200 OK\r\nContent-").ok(),
            Some(None)
        );
        assert_eq!(parse_status(b"HTTP/1.1 20").ok(), Some(None));
        // A body that mentions "200 OK" does not make a 500 healthy.
        assert_eq!(
            parse_status(b"HTTP/1.1 500 Internal\r\n\r\nHTTP/1.1 200 OK")
                .ok()
                .flatten(),
            Some(500)
        );
        assert_eq!(
            parse_status(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n")
                .ok()
                .flatten(),
            Some(204)
        );
        assert!(parse_status(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(parse_status(b"200 OK HTTP/1.1\r\n\r\n").is_err());
    }

    #[test]
    fn only_a_shortage_of_our_own_is_local() {
        let os = |n| std::io::Error::from_raw_os_error(n);
        for n in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert!(ProbeError::Connect(os(n)).is_local(), "{n}");
        }
        for n in [libc::ECONNREFUSED, libc::ETIMEDOUT, libc::EHOSTUNREACH] {
            assert!(!ProbeError::Connect(os(n)).is_local(), "{n}");
        }
        assert!(!ProbeError::Status(503).is_local());
        assert!(!ProbeError::Timeout(Duration::from_secs(1)).is_local());
    }

    #[test]
    fn the_request_has_a_host_header() {
        let r = request("127.0.0.1:8080".parse().expect("addr"), "/healthz");
        let text = String::from_utf8(r).expect("ascii");
        assert!(text.starts_with("GET /healthz HTTP/1.1\r\n"), "{text}");
        assert!(text.contains("\r\nHost: 127.0.0.1:8080\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"));
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// A one-shot server answering every connection with `reply` (None: never answers).
    async fn server(reply: Option<&'static [u8]>) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    match reply {
                        Some(r) => {
                            let _ = s.write_all(r).await;
                        }
                        None => tokio::time::sleep(Duration::from_secs(10)).await,
                    }
                });
            }
        });
        addr
    }

    #[test]
    fn http_checks_over_real_sockets() {
        rt().block_on(async {
            let t = Duration::from_secs(2);
            let ok = server(Some(b"HTTP/1.1 204 No Content\r\n\r\n")).await;
            assert!(check(ok, &HealthCheck::Http("/".into()), t, None)
                .await
                .is_ok());
            let bad = server(Some(
                b"HTTP/1.1 503 Unavailable\r\nContent-Length: 0\r\n\r\n",
            ))
            .await;
            let e = check(bad, &HealthCheck::Http("/".into()), t, None).await;
            assert!(matches!(e, Err(ProbeError::Status(503))), "{e:?}");
            let silent = server(None).await;
            let e = check(
                silent,
                &HealthCheck::Http("/".into()),
                Duration::from_millis(200),
                None,
            )
            .await;
            assert!(matches!(e, Err(ProbeError::Timeout(_))), "{e:?}");
            // TCP only needs the accept.
            assert!(check(silent, &HealthCheck::Tcp, t, None).await.is_ok());
            let closed = {
                let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
                l.local_addr().expect("addr")
            };
            let e = check(closed, &HealthCheck::Tcp, t, None).await;
            assert!(matches!(e, Err(ProbeError::Connect(_))), "{e:?}");
            let garbage = server(Some(b"hello\r\n\r\n")).await;
            let e = check(garbage, &HealthCheck::Http("/".into()), t, None).await;
            assert!(matches!(e, Err(ProbeError::Invalid(_))), "{e:?}");
            let hangup = server(Some(b"HTTP/1.1 200")).await;
            let e = check(hangup, &HealthCheck::Http("/".into()), t, None).await;
            assert!(matches!(e, Err(ProbeError::Closed)), "{e:?}");
        });
    }
}
