//! The worker's bounded pool of pipes for splice forwarding. A pipe is held only while
//! bytes are in it (or while its direction streams), so idle connections cost no pipe and
//! the pool bounds both memory and descriptors; when it is empty, connections copy.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use super::conn::{PipeId, Pipes};
use crate::net;

pub struct PipePool {
    /// `None`: not created yet, or discarded (closed) and to be created again.
    pipes: Vec<Option<(OwnedFd, OwnedFd)>>,
    free: Vec<PipeId>,
    max: usize,
    size: usize,
}

impl PipePool {
    /// At most `max` pipes of `size` bytes, created on first use.
    pub fn new(max: usize, size: usize) -> PipePool {
        PipePool {
            pipes: Vec::new(),
            free: Vec::new(),
            max,
            size,
        }
    }

    /// (read end, write end) of a pipe that is out.
    pub fn fds(&self, id: PipeId) -> (RawFd, RawFd) {
        match &self.pipes[id as usize] {
            Some((r, w)) => (r.as_raw_fd(), w.as_raw_fd()),
            None => (-1, -1),
        }
    }

    /// Closes a pipe that may still hold bytes (its connection was aborted); its place is
    /// refilled with a new pipe on a later `acquire`.
    pub fn discard(&mut self, id: PipeId) {
        self.pipes[id as usize] = None;
        self.free.push(id);
    }

    /// Pipes handed out now.
    pub fn in_use(&self) -> usize {
        self.pipes.len() - self.free.len()
    }

    fn create(&self) -> Option<(OwnedFd, OwnedFd)> {
        match net::pipe(self.size) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!("cannot create a pipe for splice: {e}; copying instead");
                None
            }
        }
    }
}

impl Pipes for PipePool {
    fn acquire(&mut self) -> Option<PipeId> {
        if let Some(id) = self.free.pop() {
            if self.pipes[id as usize].is_none() {
                match self.create() {
                    Some(p) => self.pipes[id as usize] = Some(p),
                    None => {
                        self.free.push(id);
                        return None;
                    }
                }
            }
            return Some(id);
        }
        if self.pipes.len() >= self.max {
            return None;
        }
        let p = self.create()?;
        self.pipes.push(Some(p));
        Some(self.pipes.len() as PipeId - 1)
    }

    fn release(&mut self, pipe: PipeId) {
        self.free.push(pipe);
    }
}
