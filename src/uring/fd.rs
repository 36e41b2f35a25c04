//! Descriptors another process passes over a Unix socket (`SCM_RIGHTS`, an upgrade's
//! listener hand-over): nix's `recvmsg` reports them as plain numbers, and taking
//! ownership of a number is the one `unsafe` step of that path, so the receive lives here
//! with the balancer's other `unsafe` code.

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{self as nsock, ControlMessageOwned, MsgFlags};

/// What one [`recv_with_fds`] got.
pub struct Received {
    /// Bytes read into the buffer; 0 at end of stream.
    pub bytes: usize,
    /// The descriptors that came with them, owned.
    pub fds: Vec<OwnedFd>,
    /// The kernel dropped descriptors that did not fit (`MSG_CTRUNC`).
    pub fds_lost: bool,
}

/// Most descriptors one message can carry (the kernel's `SCM_MAX_FD`).
const MAX_FDS: usize = 253;

/// One `recvmsg` on the stream socket `sock` into `buf`, taking ownership of every
/// descriptor of its `SCM_RIGHTS` messages (close-on-exec).
pub fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> nix::Result<Received> {
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = nsock::recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(numbers) = c {
            fds.extend(
                numbers
                    .into_iter()
                    .filter(|&fd| fd >= 0)
                    // SAFETY: the kernel installed each of these descriptors in this
                    // process's table during the `recvmsg` above, which reported them
                    // once; nothing else knows their numbers, so each `OwnedFd` is their
                    // only owner.
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    Ok(Received {
        bytes: msg.bytes,
        fds,
        fds_lost: msg.flags.contains(MsgFlags::MSG_CTRUNC),
    })
}
