//! Descriptors another process passed over a Unix socket (`SCM_RIGHTS`, an upgrade's
//! listener hand-over): nix's `recvmsg` reports them as plain numbers, and taking
//! ownership of a number is the one `unsafe` step of that path, so it lives here with the
//! balancer's other `unsafe` code.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Owns the descriptors a `recvmsg` just received in an `SCM_RIGHTS` message.
///
/// Call it only with the numbers of one `ControlMessageOwned::ScmRights`, once, right
/// after the `recvmsg` that returned them.
pub fn own_received(fds: Vec<RawFd>) -> Vec<OwnedFd> {
    fds.into_iter()
        .filter(|&fd| fd >= 0)
        // SAFETY: the kernel installed each of these descriptors in this process's table
        // during the `recvmsg` that reported them; nothing else knows their numbers, so
        // nothing else owns or closes them: each `OwnedFd` is their only owner.
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect()
}
