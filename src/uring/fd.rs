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

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// The sockets systemd's socket activation passed to this process: with `LISTEN_PID` equal
/// to our pid and `LISTEN_FDS=n`, descriptors 3 to 3+n-1 are ours. The variables are
/// removed so that nothing started later takes them as its own, which also makes a second
/// call return nothing: each descriptor gets one owner. Empty without those variables.
pub fn systemd_listen_fds() -> std::io::Result<Vec<OwnedFd>> {
    use std::io::{Error, ErrorKind};
    let pid = std::env::var("LISTEN_PID").ok();
    let count = std::env::var("LISTEN_FDS").ok();
    // Removed whatever they say (sd_listen_fds(3) with unset_environment).
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_FDNAMES");
    let (Some(pid), Some(count)) = (pid, count) else {
        return Ok(Vec::new());
    };
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(Vec::new());
    }
    let n: RawFd = count
        .trim()
        .parse()
        .ok()
        .filter(|n| (0..=1024).contains(n))
        .ok_or_else(|| Error::new(ErrorKind::InvalidInput, format!("LISTEN_FDS={count:?}")))?;
    let mut fds = Vec::with_capacity(n as usize);
    for fd in LISTEN_FDS_START..LISTEN_FDS_START + n {
        // SAFETY: F_GETFD only reads the descriptor's flags; any number is fine to ask about.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("LISTEN_FDS={n} but descriptor {fd} is not open"),
            ));
        }
        // SAFETY: LISTEN_PID names this process, so by the socket activation protocol
        // descriptors 3..3+n were opened for it by its parent and nothing in it has claimed
        // them: the variables that announce them were removed above, before any other
        // owner could be made, and the check above found each open.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        nix::fcntl::fcntl(
            &owned,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .map_err(Error::from)?;
        fds.push(owned);
    }
    Ok(fds)
}
