//! Binary upgrade by listener hand-over (`--upgrade-socket PATH`), as HAProxy's
//! `expose-fd listeners` and Envoy's hot restart do it.
//!
//! A balancer started with the option listens on a Unix stream socket at PATH (mode 0600).
//! A new process started with the same option, once its configuration is checked, connects
//! to it; if an old one answers:
//!
//! 1. new -> old `hello`; old -> new `listeners` (one or more, each carrying its sockets
//!    as `SCM_RIGHTS`, in the order of their descriptions) then `end`: every listening
//!    socket of every worker, and the admin listener. The old process keeps its own
//!    copies: both now hold the same open sockets.
//! 2. The new process starts on them ([`Server::start_with`](crate::server::Server)),
//!    then sends `ready`; the old one stops accepting (its workers cancel their accepts
//!    and close their copies, stop reading the UDP listeners, its admin server stops if
//!    handed over), answers `done`, and drains like a graceful stop. No socket is ever
//!    closed while clients wait in its queue, so none is refused or reset.
//! 3. The new process renames its own socket over PATH, for the next upgrade.
//!
//! Failures change nothing on the running side: nobody answering at PATH (a stale socket
//! file) is logged, the file removed and the new process binds as usual; an old process
//! that goes away before `end` (or refuses: it is stopping) leaves the new one binding as
//! usual too (the sockets received so far are closed); one that goes away after `end`
//! leaves the new one serving on the sockets it took (they stay open while it holds them).
//!
//! Messages are one JSON object per line ([`Message`], [`Lines`]); [`Channel`] is the
//! blocking transport with the descriptors.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{self as nsock, ControlMessage, MsgFlags};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc::UnboundedSender, oneshot};

use super::event_loop::Command;
use crate::config::Protocol;
use crate::server::{upgrade_socket_error, Inherited};

/// Descriptors per message: the kernel passes at most 253 (`SCM_MAX_FD`) in one.
const FDS_PER_MESSAGE: usize = 200;
/// Longest message line accepted (a description is about 100 bytes).
const MAX_LINE: usize = 1 << 20;
/// How long either side waits for an answer that comes at once (`listeners`, `done`).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the old process waits for the new one to start on the listeners.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// What a handed-over socket is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Tcp,
    Udp,
    Admin,
}

/// The description of one handed-over socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desc {
    pub kind: Kind,
    /// The address as the old process's configuration gives it (port 0 unresolved).
    pub wanted: SocketAddr,
    /// The address it is bound to.
    pub addr: SocketAddr,
    /// The service it listens for (empty for the admin listener).
    #[serde(default)]
    pub service: String,
}

/// One message of the hand-over, in either direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "lowercase")]
pub enum Message {
    /// new -> old: please hand over your listeners.
    Hello { pid: u32 },
    /// old -> new: these sockets, attached to this message in this order.
    Listeners { pid: u32, sockets: Vec<Desc> },
    /// old -> new: every socket is sent, `count` in all.
    End { count: usize },
    /// old -> new: no hand-over (the old process is stopping).
    Refused { reason: String },
    /// new -> old: serving on the listeners; `admin`: it took the admin listener.
    Ready { pid: u32, admin: bool },
    /// old -> new: stopped accepting, draining.
    Done,
}

/// A message as a line.
pub fn encode(m: &Message) -> Vec<u8> {
    let mut line = serde_json::to_vec(m).expect("a message always serializes");
    line.push(b'\n');
    line
}

/// Splits received bytes into messages.
#[derive(Default)]
pub struct Lines {
    buf: Vec<u8>,
}

impl Lines {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message, if one is in; an error for a line that is not one, or
    /// for a line longer than [`MAX_LINE`].
    pub fn next_message(&mut self) -> Result<Option<Message>, String> {
        let Some(end) = self.buf.iter().position(|&b| b == b'\n') else {
            if self.buf.len() > MAX_LINE {
                return Err(format!("a message longer than {MAX_LINE} bytes"));
            }
            return Ok(None);
        };
        let line: Vec<u8> = self.buf.drain(..=end).collect();
        serde_json::from_slice(&line[..end])
            .map(Some)
            .map_err(|e| format!("not a hand-over message: {e}"))
    }
}

/// The description of a listener the server holds.
pub fn describe(s: &Inherited) -> Desc {
    Desc {
        kind: match s.protocol {
            Protocol::Tcp => Kind::Tcp,
            Protocol::Udp => Kind::Udp,
        },
        wanted: s.wanted,
        addr: s.addr,
        service: s.service.clone(),
    }
}

/// The sockets of an offer, sorted: the data-path listeners and the admin listener.
pub fn sort_offer(sockets: Vec<(Desc, OwnedFd)>) -> (Vec<Inherited>, Option<(Desc, OwnedFd)>) {
    let mut listeners = Vec::new();
    let mut admin = None;
    for (d, fd) in sockets {
        let protocol = match d.kind {
            Kind::Tcp => Protocol::Tcp,
            Kind::Udp => Protocol::Udp,
            Kind::Admin => {
                admin = Some((d, fd));
                continue;
            }
        };
        listeners.push(Inherited {
            wanted: d.wanted,
            addr: d.addr,
            protocol,
            service: d.service,
            fd,
        });
    }
    (listeners, admin)
}

/// A connection of the hand-over: messages with descriptors attached, blocking.
pub struct Channel {
    stream: UnixStream,
    lines: Lines,
    /// Received and not yet claimed by a `listeners` message, in order.
    fds: VecDeque<OwnedFd>,
}

impl Channel {
    pub fn new(stream: UnixStream) -> Channel {
        Channel {
            stream,
            lines: Lines::default(),
            fds: VecDeque::new(),
        }
    }

    /// Sends `m` with `fds` attached (one message; at most 253 descriptors).
    pub fn send(&mut self, m: &Message, fds: &[RawFd]) -> io::Result<()> {
        let line = encode(m);
        if fds.is_empty() {
            return self.stream.write_all(&line);
        }
        let cmsg = [ControlMessage::ScmRights(fds)];
        let sent = nsock::sendmsg::<()>(
            self.stream.as_raw_fd(),
            &[IoSlice::new(&line)],
            &cmsg,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )?;
        // The descriptors went with the first byte; the rest of the line, if the socket
        // took only part of it, follows plainly.
        self.stream.write_all(&line[sent..])
    }

    /// The next message, waiting at most `timeout`; the descriptors that came with it are
    /// kept for [`Channel::take_fds`].
    pub fn recv(&mut self, timeout: Duration) -> io::Result<Message> {
        self.stream.set_read_timeout(Some(timeout))?;
        loop {
            match self.lines.next_message() {
                Ok(Some(m)) => return Ok(m),
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
            let mut buf = [0u8; 4096];
            let got = crate::uring::fd::recv_with_fds(self.stream.as_fd(), &mut buf).map_err(
                |e| match e {
                    nix::errno::Errno::EAGAIN => io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no answer within {timeout:?}"),
                    ),
                    e => io::Error::from(e),
                },
            )?;
            let (n, truncated) = (got.bytes, got.fds_lost);
            self.fds.extend(got.fds);
            if truncated {
                return Err(io::Error::other("descriptors lost in transit (MSG_CTRUNC)"));
            }
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the other process closed the connection",
                ));
            }
            self.lines.push(&buf[..n]);
        }
    }

    /// The next `n` descriptors received.
    pub fn take_fds(&mut self, n: usize) -> io::Result<Vec<OwnedFd>> {
        if self.fds.len() < n {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{n} sockets described, {} received", self.fds.len()),
            ));
        }
        Ok(self.fds.drain(..n).collect())
    }
}

// ---- the new process ----------------------------------------------------------------

/// The listeners taken from the old process, and the connection to tell it when serving.
pub struct Taken {
    pub listeners: Vec<Inherited>,
    /// The admin listener, as the old process configured it.
    pub admin: Option<(SocketAddr, OwnedFd)>,
    channel: Channel,
    old_pid: u32,
    count: usize,
}

/// Asks the balancer listening on `path`, if any, for its listeners. `None`: nobody to
/// take them from (no socket, a stale one, or an old process that refused or went away
/// before sending them all: the caller binds as usual). An error only when `path` cannot
/// be reached at all (permissions).
pub fn take_over(path: &Path) -> io::Result<Option<Taken>> {
    let stream = match UnixStream::connect(path) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(
                "upgrade socket {}: nobody answers (a stale socket); removed, binding the listeners",
                path.display()
            );
            remove_if_socket(path);
            return Ok(None);
        }
        Err(e) => return Err(upgrade_socket_error(path, e)),
    };
    let mut channel = Channel::new(stream);
    match receive_offer(&mut channel) {
        Ok(Offer::Refused(reason)) => {
            tracing::warn!(
                "the running balancer refused the hand-over ({reason}); binding the listeners"
            );
            Ok(None)
        }
        Ok(Offer::Sockets(old_pid, sockets)) => {
            let count = sockets.len();
            let (listeners, admin) = sort_offer(sockets);
            Ok(Some(Taken {
                listeners,
                admin: admin.map(|(d, fd)| (d.wanted, fd)),
                channel,
                old_pid,
                count,
            }))
        }
        Err(e) => {
            tracing::warn!(
                "the running balancer went away during the hand-over ({e}); binding the listeners"
            );
            Ok(None)
        }
    }
}

enum Offer {
    Sockets(u32, Vec<(Desc, OwnedFd)>),
    Refused(String),
}

fn receive_offer(channel: &mut Channel) -> io::Result<Offer> {
    channel.send(
        &Message::Hello {
            pid: std::process::id(),
        },
        &[],
    )?;
    let mut sockets = Vec::new();
    let mut old_pid = 0;
    loop {
        match channel.recv(ANSWER_TIMEOUT)? {
            Message::Listeners { pid, sockets: d } => {
                old_pid = pid;
                let fds = channel.take_fds(d.len())?;
                sockets.extend(d.into_iter().zip(fds));
            }
            Message::End { count } if count == sockets.len() => {
                return Ok(Offer::Sockets(old_pid, sockets))
            }
            Message::End { count } => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{count} sockets announced, {} received", sockets.len()),
                ))
            }
            Message::Refused { reason } => return Ok(Offer::Refused(reason)),
            m => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unexpected message {m:?}"),
                ))
            }
        }
    }
}

impl Taken {
    /// Tells the old process this one serves, and waits for it to stop accepting. Never
    /// fails: if the old process does not answer, it is logged (this one serves anyway).
    pub fn ready(mut self, admin_taken: bool) {
        let ready = Message::Ready {
            pid: std::process::id(),
            admin: admin_taken,
        };
        let answer = self
            .channel
            .send(&ready, &[])
            .and_then(|()| self.channel.recv(ANSWER_TIMEOUT));
        match answer {
            Ok(Message::Done) => tracing::info!(
                "upgrade: taken {} listeners from pid {}",
                self.count,
                self.old_pid
            ),
            Ok(m) => tracing::warn!(
                "upgrade: taken {} listeners from pid {}, which answered {m:?}; it may still accept",
                self.count,
                self.old_pid
            ),
            Err(e) => tracing::warn!(
                "upgrade: taken {} listeners from pid {}, which did not confirm ({e}); it may still accept",
                self.count,
                self.old_pid
            ),
        }
    }
}

// ---- the old process ----------------------------------------------------------------

/// This process's upgrade socket: bound under a temporary name (so a failure leaves PATH
/// alone), then renamed over PATH by [`Listening::publish`].
pub struct Listening {
    listener: UnixListener,
    path: PathBuf,
    temp: Option<PathBuf>,
}

impl Listening {
    /// Binds the socket next to `path`, mode 0600.
    pub fn bind(path: &Path) -> io::Result<Listening> {
        let mut temp = path.as_os_str().to_owned();
        temp.push(format!(".{}.new", std::process::id()));
        let temp = PathBuf::from(temp);
        let _ = std::fs::remove_file(&temp);
        let in_context = |e: io::Error| upgrade_socket_error(path, e);
        let listener = UnixListener::bind(&temp).map_err(in_context)?;
        let listening = Listening {
            listener,
            path: path.to_path_buf(),
            temp: Some(temp.clone()),
        };
        std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o600))
            .map_err(in_context)?;
        Ok(listening)
    }

    /// Puts the socket at PATH (replacing an old process's: the next upgrade comes here)
    /// and answers hand-over requests from a thread of its own. Returns what
    /// [`Published::remove`] needs to remove PATH at exit, if it is still this one's.
    pub fn publish(
        mut self,
        commands: UnboundedSender<Command>,
        admin: Option<AdminHandOver>,
    ) -> io::Result<Published> {
        let temp = self.temp.take().expect("published once");
        if let Err(e) = std::fs::rename(&temp, &self.path) {
            let _ = std::fs::remove_file(&temp);
            return Err(upgrade_socket_error(&self.path, e));
        }
        let published = Published::of(&self.path)?;
        tracing::debug!("upgrade socket on {}", self.path.display());
        let listener = self.listener.try_clone()?;
        std::thread::Builder::new()
            .name("uringlb-upgrade".to_string())
            .spawn(move || serve(listener, commands, admin))?;
        Ok(published)
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        if let Some(temp) = &self.temp {
            let _ = std::fs::remove_file(temp);
        }
    }
}

/// PATH as this process put it there.
pub struct Published {
    path: PathBuf,
    id: (u64, u64),
}

impl Published {
    fn of(path: &Path) -> io::Result<Published> {
        let m = std::fs::symlink_metadata(path)?;
        Ok(Published {
            path: path.to_path_buf(),
            id: (m.dev(), m.ino()),
        })
    }

    /// Removes PATH unless another process has put its own socket there since.
    pub fn remove(&self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if (m.dev(), m.ino()) == self.id {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// The admin listener, for a hand-over: its configured address, a copy of the socket,
/// and the server task to stop once the new process took it.
pub struct AdminHandOver {
    pub wanted: SocketAddr,
    pub fd: OwnedFd,
    pub task: tokio::task::AbortHandle,
}

/// Answers hand-over requests one at a time until one succeeds.
fn serve(listener: UnixListener, commands: UnboundedSender<Command>, admin: Option<AdminHandOver>) {
    let mut admin = admin;
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("upgrade socket: accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        match hand_over(Channel::new(stream), &commands, &mut admin) {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => tracing::warn!("upgrade: hand-over aborted, still serving: {e}"),
        }
    }
}

/// One request: offers the listeners, waits for the new process to serve on them, then
/// stops accepting. `Ok(false)`: refused (stopping).
fn hand_over(
    mut channel: Channel,
    commands: &UnboundedSender<Command>,
    admin: &mut Option<AdminHandOver>,
) -> io::Result<bool> {
    let pid = match channel.recv(ANSWER_TIMEOUT)? {
        Message::Hello { pid } => pid,
        m => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unexpected message {m:?}"),
            ))
        }
    };
    let (tx, rx) = oneshot::channel();
    let copies = commands
        .send(Command::Listeners { reply: tx })
        .ok()
        .and_then(|()| rx.blocking_recv().ok())
        .unwrap_or_else(|| Err("stopping".to_string()));
    let mut sockets: Vec<(Desc, OwnedFd)> = match copies {
        Ok(c) => c.into_iter().map(|s| (describe(&s), s.fd)).collect(),
        Err(reason) => {
            channel.send(&Message::Refused { reason }, &[])?;
            return Ok(false);
        }
    };
    if let Some(a) = admin.as_ref() {
        let fd = a.fd.try_clone()?;
        let addr = std::net::TcpListener::from(fd.try_clone()?).local_addr()?;
        sockets.push((
            Desc {
                kind: Kind::Admin,
                wanted: a.wanted,
                addr,
                service: String::new(),
            },
            fd,
        ));
    }
    let me = std::process::id();
    for chunk in sockets.chunks(FDS_PER_MESSAGE) {
        let descs: Vec<Desc> = chunk.iter().map(|(d, _)| d.clone()).collect();
        let fds: Vec<RawFd> = chunk.iter().map(|(_, fd)| fd.as_fd().as_raw_fd()).collect();
        channel.send(
            &Message::Listeners {
                pid: me,
                sockets: descs,
            },
            &fds,
        )?;
    }
    let count = sockets.len();
    channel.send(&Message::End { count }, &[])?;
    // The new process holds its own copies now.
    drop(sockets);
    let admin_taken = match channel.recv(READY_TIMEOUT)? {
        Message::Ready { admin, .. } => admin,
        m => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unexpected message {m:?}"),
            ))
        }
    };
    if admin_taken {
        if let Some(a) = admin.take() {
            a.task.abort();
        }
    }
    let (tx, rx) = oneshot::channel();
    let _ = commands.send(Command::HandOver {
        pid,
        listeners: count,
        reply: tx,
    });
    let _ = rx.blocking_recv();
    channel.send(&Message::Done, &[])?;
    Ok(true)
}

/// Removes `path` if it is a socket (never a file someone put there by mistake).
fn remove_if_socket(path: &Path) {
    use std::os::unix::fs::FileTypeExt;
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(kind: Kind, port: u16) -> Desc {
        Desc {
            kind,
            wanted: format!("127.0.0.1:{port}").parse().unwrap(),
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            service: "web".to_string(),
        }
    }

    #[test]
    fn messages_round_trip_as_lines() {
        let all = vec![
            Message::Hello { pid: 7 },
            Message::Listeners {
                pid: 8,
                sockets: vec![
                    desc(Kind::Tcp, 80),
                    desc(Kind::Udp, 53),
                    desc(Kind::Admin, 9),
                ],
            },
            Message::End { count: 3 },
            Message::Refused {
                reason: "stopping".to_string(),
            },
            Message::Ready {
                pid: 7,
                admin: true,
            },
            Message::Done,
        ];
        let mut lines = Lines::default();
        for m in &all {
            let line = encode(m);
            assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
            assert_eq!(line.last(), Some(&b'\n'));
            lines.push(&line);
        }
        for m in &all {
            assert_eq!(lines.next_message().unwrap().as_ref(), Some(m));
        }
        assert_eq!(lines.next_message().unwrap(), None);
    }

    #[test]
    fn a_message_split_anywhere_is_read_once_whole() {
        let line = encode(&Message::Ready {
            pid: 1,
            admin: false,
        });
        let mut lines = Lines::default();
        for b in &line[..line.len() - 1] {
            lines.push(&[*b]);
            assert_eq!(lines.next_message().unwrap(), None);
        }
        lines.push(b"\n");
        assert_eq!(
            lines.next_message().unwrap(),
            Some(Message::Ready {
                pid: 1,
                admin: false
            })
        );
    }

    #[test]
    fn bad_lines_are_errors() {
        let mut lines = Lines::default();
        lines.push(b"{\"msg\":\"bogus\"}\n");
        assert!(lines.next_message().is_err());
        let mut lines = Lines::default();
        lines.push(b"not json\n");
        assert!(lines.next_message().is_err());
        let mut lines = Lines::default();
        lines.push(&vec![b'x'; MAX_LINE + 1]);
        assert!(lines.next_message().is_err());
    }

    #[test]
    fn an_offer_is_sorted_into_listeners_and_admin() {
        let fd = || OwnedFd::from(std::net::UdpSocket::bind("127.0.0.1:0").unwrap());
        let (listeners, admin) = sort_offer(vec![
            (desc(Kind::Tcp, 80), fd()),
            (desc(Kind::Admin, 9), fd()),
            (desc(Kind::Udp, 53), fd()),
        ]);
        assert_eq!(listeners.len(), 2);
        assert_eq!(listeners[0].protocol, Protocol::Tcp);
        assert_eq!(listeners[1].protocol, Protocol::Udp);
        assert_eq!(admin.map(|(d, _)| d.addr.port()), Some(9));
    }

    #[test]
    fn sockets_pass_between_channels_with_their_descriptions() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut a, mut b) = (Channel::new(a), Channel::new(b));
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        let fd = OwnedFd::from(sock);
        let m = Message::Listeners {
            pid: 1,
            sockets: vec![desc(Kind::Udp, addr.port())],
        };
        a.send(&m, &[fd.as_raw_fd()]).unwrap();
        a.send(&Message::End { count: 1 }, &[]).unwrap();
        assert_eq!(b.recv(ANSWER_TIMEOUT).unwrap(), m);
        let got = b.take_fds(1).unwrap();
        let received = std::net::UdpSocket::from(got.into_iter().next().unwrap());
        assert_eq!(received.local_addr().unwrap(), addr);
        assert_eq!(b.recv(ANSWER_TIMEOUT).unwrap(), Message::End { count: 1 });
        assert!(b.take_fds(1).is_err());
        drop(a);
        assert_eq!(
            b.recv(ANSWER_TIMEOUT).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }
}
