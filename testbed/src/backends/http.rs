//! Minimal HTTP/1.1 backend.

use std::io::{self, Write as _};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::serve::{linger_close, ServerCore, Stats};
use crate::http1::{self, find_head_end, parse_head, MAX_HEAD};
use crate::pattern;

/// Answers every request `200 OK` with body `"{name}\n"`, so a client can tell which backend
/// served it. Keep-alive (the HTTP/1.1 default), `Connection: close`, pipelining and
/// `Content-Length` request bodies are handled. Special paths:
/// - `GET /big?bytes=N`: N bytes of the [`pattern`] stream, for bulk transfer.
/// - `GET /status/CODE`: answers with that status (body still `"{name}\n"` where allowed).
pub struct HttpServer {
    core: ServerCore,
    name: Arc<str>,
}

impl HttpServer {
    /// Starts serving on `addr` (e.g. `"127.0.0.1:0"`) as backend `name`.
    pub fn start(addr: impl ToSocketAddrs, name: &str) -> io::Result<Self> {
        let name: Arc<str> = name.into();
        let body: Arc<[u8]> = format!("{name}\n").into_bytes().into();
        let core = ServerCore::start(addr, "http", move |stream, stats| {
            serve_conn(stream, body.clone(), stats)
        })?;
        Ok(Self { core, name })
    }

    /// The name this server puts in its responses.
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

    /// Requests answered since start.
    pub fn requests(&self) -> u64 {
        self.core.stats().requests.load(Ordering::Relaxed)
    }

    /// Closes the listener and all open connections; returns once they are closed.
    pub fn stop(&self) {
        self.core.stop()
    }
}

/// What to send for one request.
enum Reply {
    /// Status, and whether the status allows the name body.
    Small { code: u16, body_allowed: bool },
    /// `/big`: stream this many pattern bytes.
    Big(u64),
}

async fn serve_conn(mut stream: TcpStream, body: Arc<[u8]>, stats: Arc<Stats>) -> io::Result<()> {
    let mut inbuf: Vec<u8> = Vec::with_capacity(8 * 1024);
    let mut out: Vec<u8> = Vec::with_capacity(8 * 1024);
    // Request body bytes still to skip; bodies are not buffered, only discarded.
    let mut discard: u64 = 0;
    loop {
        let mut close = false;
        // Answer every complete request already buffered (pipelining) before reading more.
        loop {
            if discard > 0 {
                let n = discard.min(inbuf.len() as u64) as usize;
                inbuf.drain(..n);
                discard -= n as u64;
                if discard > 0 {
                    break;
                }
            }
            let Some((head_len, consumed)) = find_head_end(&inbuf) else {
                if inbuf.len() > MAX_HEAD {
                    write_simple(&mut out, 431, "HTTP/1.1", true, b"");
                    close = true;
                }
                break;
            };
            let Some(head) = parse_head(&inbuf[..head_len]) else {
                write_simple(&mut out, 400, "HTTP/1.1", true, b"bad request\n");
                close = true;
                break;
            };
            let version = if head.third == "HTTP/1.0" {
                "HTTP/1.0"
            } else {
                "HTTP/1.1"
            };
            let keep_alive = if version == "HTTP/1.0" {
                head.keep_alive && !head.close
            } else {
                !head.close
            };
            if head.chunked {
                // Unsupported framing: we cannot find the next request, so refuse and close.
                write_simple(&mut out, 400, version, true, b"chunked not supported\n");
                close = true;
                break;
            }
            let is_head = head.first == "HEAD";
            let reply = route(head.second);
            discard = head.content_length.unwrap_or(0);
            inbuf.drain(..consumed);
            stats.requests.fetch_add(1, Ordering::Relaxed);
            match reply {
                Reply::Small { code, body_allowed } => {
                    let b: &[u8] = if body_allowed { &body } else { b"" };
                    write_response(&mut out, code, version, !keep_alive, b, is_head);
                }
                Reply::Big(n) => {
                    write_head(&mut out, 200, version, !keep_alive, Some(n));
                    stream.write_all(&out).await?;
                    out.clear();
                    if !is_head {
                        stream_pattern(&mut stream, n, &stats).await?;
                    }
                }
            }
            if !keep_alive {
                close = true;
                break;
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            stats.add_bytes(out.len());
            out.clear();
        }
        if close {
            stream.shutdown().await?;
            linger_close(&mut stream).await;
            return Ok(());
        }
        if stream.read_buf(&mut inbuf).await? == 0 {
            return Ok(());
        }
    }
}

fn route(target: &str) -> Reply {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path == "/big" {
        let n = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("bytes="))
            .and_then(|v| crate::units::parse_bytes(v).ok());
        return match n {
            Some(n) => Reply::Big(n),
            None => Reply::Small {
                code: 400,
                body_allowed: true,
            },
        };
    }
    if let Some(code) = path.strip_prefix("/status/") {
        return match code.parse::<u16>() {
            Ok(code) if (200..=599).contains(&code) => Reply::Small {
                code,
                body_allowed: !http1::status_has_no_body(code),
            },
            _ => Reply::Small {
                code: 400,
                body_allowed: true,
            },
        };
    }
    Reply::Small {
        code: 200,
        body_allowed: true,
    }
}

/// Writes a status line and headers; `content_length: None` omits the header (204/304).
fn write_head(
    out: &mut Vec<u8>,
    code: u16,
    version: &str,
    close: bool,
    content_length: Option<u64>,
) {
    let _ = write!(out, "{version} {code} {}\r\n", http1::reason(code));
    if let Some(n) = content_length {
        let _ = write!(out, "Content-Length: {n}\r\n");
    }
    out.extend_from_slice(b"Content-Type: text/plain\r\n");
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if version == "HTTP/1.0" {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn write_response(
    out: &mut Vec<u8>,
    code: u16,
    version: &str,
    close: bool,
    body: &[u8],
    is_head: bool,
) {
    let length = if http1::status_has_no_body(code) {
        None
    } else {
        Some(body.len() as u64)
    };
    write_head(out, code, version, close, length);
    if !is_head {
        out.extend_from_slice(body);
    }
}

fn write_simple(out: &mut Vec<u8>, code: u16, version: &str, close: bool, body: &[u8]) {
    write_response(out, code, version, close, body, false);
}

async fn stream_pattern(stream: &mut TcpStream, total: u64, stats: &Stats) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent = 0u64;
    while sent < total {
        let n = (total - sent).min(buf.len() as u64) as usize;
        pattern::fill(sent, &mut buf[..n]);
        stream.write_all(&buf[..n]).await?;
        stats.add_bytes(n);
        sent += n as u64;
    }
    Ok(())
}
