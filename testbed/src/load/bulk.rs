//! Bulk client: one connection per transfer, N bytes each way through a TCP echo.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::runner::{Mismatch, Outcome};
use crate::pattern;

/// Write and read size; big enough that per-call overhead does not cap the throughput.
const CHUNK: usize = 256 * 1024;

/// Per-connection state: send and receive buffers, reused across transfers.
pub(crate) struct BulkProto {
    bytes: u64,
    out: Vec<u8>,
    inbuf: Vec<u8>,
}

impl BulkProto {
    pub(crate) fn new(bytes: u64) -> Self {
        Self {
            bytes,
            out: vec![0; CHUNK],
            inbuf: vec![0; CHUNK],
        }
    }

    /// Streams `bytes` pattern bytes out while reading the echo back, checking each byte
    /// against the pattern at its offset; then half-closes and expects the peer's EOF right
    /// after the last byte. Writing and reading run concurrently: the echo can only send
    /// back what it has read, and neither side may stall the other.
    pub(crate) async fn exchange(&mut self, s: &mut TcpStream) -> io::Result<Outcome> {
        let total = self.bytes;
        let (mut rd, mut wr) = s.split();
        let out = &mut self.out;
        let write = async {
            let mut sent = 0u64;
            while sent < total {
                let n = (total - sent).min(out.len() as u64) as usize;
                pattern::fill(sent, &mut out[..n]);
                wr.write_all(&out[..n]).await?;
                sent += n as u64;
            }
            wr.shutdown().await?;
            Ok::<_, io::Error>(sent)
        };
        let inbuf = &mut self.inbuf;
        let read = async {
            let mut checker = pattern::Checker::new();
            loop {
                let n = rd.read(inbuf).await?;
                if n == 0 {
                    break;
                }
                checker.update(&inbuf[..n]);
                if checker.len() > total {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("received more than the {total} bytes sent"),
                    ));
                }
            }
            if let Some(offset) = checker.first_mismatch() {
                return Err(Mismatch { offset }.into());
            }
            if checker.len() < total {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("connection closed after {} of {total} bytes", checker.len()),
                ));
            }
            Ok(checker.len())
        };
        let (sent, received) = tokio::try_join!(write, read)?;
        Ok(Outcome {
            status: None,
            close: true,
            bytes: received,
            sent,
        })
    }
}
