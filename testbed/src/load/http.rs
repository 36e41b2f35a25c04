//! HTTP/1.1 client side of the load: keep-alive, or `Connection: close`.

use std::io;
use std::net::SocketAddr;
use std::ops::Range;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::runner::Outcome;
use crate::http1::{find_head_end, parse_head, status_has_no_body, MAX_HEAD};

/// Bodies up to this size are kept so they can name the backend; larger ones are discarded.
const KEEP_BODY: usize = 4096;
/// Longest body taken as a backend name.
const MAX_NAME: usize = 128;
/// Read size for bodies that are only counted (large downloads).
const SCRATCH: usize = 256 * 1024;

/// Per-connection client state; buffers are reused across requests.
pub(crate) struct HttpProto {
    request: Vec<u8>,
    buf: Vec<u8>,
    scratch: Vec<u8>,
    body: Range<usize>,
}

impl HttpProto {
    /// `close`: ask the server to close after the response (`Connection: close`).
    pub(crate) fn new(path: &str, target: SocketAddr, close: bool) -> Self {
        let connection = if close { "Connection: close\r\n" } else { "" };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: uringlb-bench\r\n{connection}\r\n"
        );
        Self {
            request: request.into_bytes(),
            buf: Vec::with_capacity(8 * 1024),
            scratch: Vec::new(),
            body: 0..0,
        }
    }

    /// The last response body as a backend name, if it looks like one.
    pub(crate) fn backend(&self) -> Option<&str> {
        let body = self.buf.get(self.body.clone())?;
        let name = std::str::from_utf8(body).ok()?.trim_end();
        (!name.is_empty() && name.len() <= MAX_NAME).then_some(name)
    }

    pub(crate) async fn exchange(&mut self, s: &mut TcpStream) -> io::Result<Outcome> {
        s.write_all(&self.request).await?;
        self.buf.clear();
        self.body = 0..0;
        let (head_len, consumed) = loop {
            if let Some(found) = find_head_end(&self.buf) {
                break found;
            }
            if self.buf.len() > MAX_HEAD {
                return Err(invalid("response head too large"));
            }
            if s.read_buf(&mut self.buf).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before a complete response",
                ));
            }
        };
        let head = parse_head(&self.buf[..head_len]).ok_or_else(|| invalid("bad response head"))?;
        if !head.first.starts_with("HTTP/") {
            return Err(invalid("not an HTTP response"));
        }
        let status: u16 = head
            .second
            .parse()
            .map_err(|_| invalid("bad status code"))?;
        let mut close = head.close || (head.first == "HTTP/1.0" && !head.keep_alive);
        let (chunked, length) = (head.chunked, head.content_length);

        if status_has_no_body(status) {
            return Ok(Outcome {
                status: Some(status),
                close,
                bytes: 0,
                sent: self.request.len() as u64,
            });
        }
        if chunked {
            return Err(invalid("chunked responses are not supported"));
        }
        let bytes = match length {
            Some(len) if len <= KEEP_BODY as u64 => {
                let end = consumed + len as usize;
                while self.buf.len() < end {
                    if s.read_buf(&mut self.buf).await? == 0 {
                        return Err(truncated());
                    }
                }
                self.body = consumed..end;
                len
            }
            Some(len) => {
                let mut have = (self.buf.len() - consumed) as u64;
                self.scratch.resize(SCRATCH, 0);
                while have < len {
                    let n = s.read(&mut self.scratch).await?;
                    if n == 0 {
                        return Err(truncated());
                    }
                    have += n as u64;
                }
                len
            }
            None => {
                // No length: the body runs until the server closes.
                close = true;
                let mut total = (self.buf.len() - consumed) as u64;
                self.scratch.resize(SCRATCH, 0);
                loop {
                    let n = s.read(&mut self.scratch).await?;
                    if n == 0 {
                        break;
                    }
                    if self.buf.len() + n <= consumed + KEEP_BODY {
                        self.buf.extend_from_slice(&self.scratch[..n]);
                    }
                    total += n as u64;
                }
                self.body = consumed..self.buf.len();
                total
            }
        };
        Ok(Outcome {
            status: Some(status),
            close,
            bytes,
            sent: self.request.len() as u64,
        })
    }
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn truncated() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed mid-body")
}
