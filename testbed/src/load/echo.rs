//! Echo client side of the load.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::runner::{Mismatch, Outcome};
use crate::pattern;

/// Per-connection state: the message (pattern bytes, so corruption is caught) and a
/// receive buffer of the same size.
pub(crate) struct EchoProto {
    msg: Vec<u8>,
    buf: Vec<u8>,
}

impl EchoProto {
    pub(crate) fn new(size: usize) -> Self {
        let size = size.max(1);
        Self {
            msg: pattern::bytes(0, size),
            buf: vec![0; size],
        }
    }

    pub(crate) async fn exchange(&mut self, s: &mut TcpStream) -> io::Result<Outcome> {
        // Write and read concurrently: a message larger than the socket buffers would
        // otherwise deadlock against an echo server that is blocked writing back to us.
        let (mut rd, mut wr) = s.split();
        let write = wr.write_all(&self.msg);
        let read = rd.read_exact(&mut self.buf);
        tokio::try_join!(write, read)?;
        if let Some(i) = self.buf.iter().zip(&self.msg).position(|(a, b)| a != b) {
            return Err(Mismatch { offset: i as u64 }.into());
        }
        Ok(Outcome {
            status: None,
            close: false,
            bytes: self.msg.len() as u64,
            sent: self.msg.len() as u64,
        })
    }
}
