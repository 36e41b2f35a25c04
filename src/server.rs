//! Starting and stopping a balancer: binds every listener (one SO_REUSEPORT socket per
//! worker per address), spawns the pinned worker threads (each builds its own io_uring,
//! which must be created by the thread that submits to it), and returns the handle the
//! control thread uses to publish snapshots and to stop.
//!
//! `start` is all or nothing: any error (address in use, io_uring unavailable) stops what
//! was started and is returned; nothing is left running.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Sender;
use crossbeam_utils::CachePadded;
use socket2::{Domain, Protocol, Socket, Type};

use crate::backend::{Backend, BackendId, BackendState, SharedCounters, Snapshot, MAX_BACKENDS};
use crate::config::{BackendSpec, Config, Workers};
use crate::uring;
use crate::worker::{Command, Shared, Worker, WorkerConfig, WorkerSetup, WorkerStats};

/// Why a balancer could not start. Each is one line for the user.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("io_uring is not available ({0}); check /proc/sys/kernel/io_uring_disabled, seccomp filters, or use a kernel >= 6.1")]
    Uring(std::io::Error),
    #[error("cannot start worker {index}: {source}")]
    Worker {
        index: usize,
        source: std::io::Error,
    },
    #[error("too many backends: {0} (at most {MAX_BACKENDS})")]
    TooManyBackends(usize),
}

/// Forwarding buffer per direction per connection.
pub const BUF_SIZE: usize = 32 * 1024;
/// File descriptors kept back from RLIMIT_NOFILE for listeners, rings, eventfds, logs.
const FD_RESERVE: usize = 128;
/// Splice pipe size (`--splice-pipes` sets how many per worker).
pub const PIPE_SIZE: usize = 256 * 1024;

/// A running balancer.
pub struct Server {
    workers: Vec<WorkerHandle>,
    local_addrs: Vec<SocketAddr>,
    shared: Arc<Shared>,
    state: Mutex<PublishState>,
    config: Config,
}

struct WorkerHandle {
    commands: Sender<Command>,
    wake: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

/// What `publish` needs to give backends stable ids.
struct PublishState {
    version: u64,
    /// Backend name -> id, for every name ever seen (ids are never reused while named).
    ids: Vec<String>,
}

impl PublishState {
    fn id_for(&mut self, name: &str) -> Option<BackendId> {
        if let Some(i) = self.ids.iter().position(|n| n == name) {
            return Some(BackendId(i as u32));
        }
        if self.ids.len() >= MAX_BACKENDS {
            return None;
        }
        self.ids.push(name.to_string());
        Some(BackendId(self.ids.len() as u32 - 1))
    }
}

impl Server {
    /// Binds, spawns and returns once every worker runs, or fails with nothing running.
    pub fn start(config: &Config) -> Result<Server, StartError> {
        raise_nofile_limit();
        let cpus = allowed_cpus();
        let n_workers = match config.workers {
            Workers::Auto => cpus.len().max(1),
            Workers::Count(n) => n.max(1),
        };
        let max_conns = config
            .max_conns
            .unwrap_or_else(|| default_max_conns(n_workers, config.splice_pipes));
        let (listeners, local_addrs) = bind_all(&config.listen, n_workers)?;

        let shared = Arc::new(Shared {
            counters: SharedCounters::new(),
            epoch: std::time::Instant::now(),
            open_clients: AtomicUsize::new(0),
            max_conns,
            sources: crate::limits::SourceTable::default(),
            stats: (0..n_workers)
                .map(|_| CachePadded::new(WorkerStats::default()))
                .collect(),
        });
        let mut state = PublishState {
            version: 0,
            ids: Vec::new(),
        };
        let entries: Vec<BackendEntry> = config.backends.iter().map(BackendEntry::up).collect();
        let snapshot = Arc::new(build_snapshot(&mut state, &entries, config)?);
        let worker_config = WorkerConfig {
            forward: config.forward,
            buf_size: BUF_SIZE,
            pipes_max: config.splice_pipes,
            pipe_size: PIPE_SIZE,
        };

        let mut workers = Vec::with_capacity(n_workers);
        let mut failure = None;
        for (index, listeners) in listeners.into_iter().enumerate() {
            let cpu = if config.pin && !cpus.is_empty() {
                Some(cpus[index % cpus.len()])
            } else {
                None
            };
            match spawn_worker(
                index,
                cpu,
                listeners,
                snapshot.clone(),
                shared.clone(),
                &worker_config,
                max_conns,
            ) {
                Ok(h) => workers.push(h),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let server = Server {
            workers,
            local_addrs,
            shared,
            state: Mutex::new(state),
            config: config.clone(),
        };
        if let Some(e) = failure {
            server.stop(Duration::ZERO);
            server.join();
            return Err(e);
        }
        tracing::info!(
            workers = n_workers,
            max_conns,
            listen = ?server.local_addrs,
            backends = config.backends.len(),
            algorithm = config.algorithm.name(),
            "uringlb running"
        );
        Ok(server)
    }

    /// The bound listen addresses (port 0 resolved).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Routes new connections over `backends` (all up, configured weights) from the moment
    /// each worker swaps the snapshot in (see [`Server::applied`]); open connections keep
    /// theirs. Returns the snapshot's version.
    pub fn publish(&self, backends: &[BackendSpec]) -> Result<u64, StartError> {
        let entries: Vec<BackendEntry> = backends.iter().map(BackendEntry::up).collect();
        self.publish_entries(&entries, &self.config)
    }

    /// Publishes backends with their states and effective weights, and the reloadable
    /// settings of `settings` (algorithm, hashing, timeouts, retries). A backend keeps its
    /// id (and so its shared counters) as long as its name stays.
    pub fn publish_entries(
        &self,
        entries: &[BackendEntry],
        settings: &Config,
    ) -> Result<u64, StartError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let snapshot = Arc::new(build_snapshot(&mut state, entries, settings)?);
        let version = snapshot.version;
        for w in &self.workers {
            if w.commands.send(Command::Snapshot(snapshot.clone())).is_ok() {
                uring::eventfd_signal(w.wake.as_raw_fd());
            }
        }
        Ok(version)
    }

    /// The version of the snapshot published last.
    pub fn published_version(&self) -> u64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).version
    }

    /// The oldest snapshot version a running worker routes with: every new connection is
    /// placed by that snapshot or a later one. `None` once every worker has exited (a
    /// worker that died must not hold up whoever waits for it).
    pub fn applied_version(&self) -> Option<u64> {
        self.workers
            .iter()
            .zip(self.shared.stats.iter())
            .filter(|(w, _)| w.thread.as_ref().is_some_and(|t| !t.is_finished()))
            .map(|(_, s)| s.snapshot_version.load(Ordering::Acquire))
            .min()
    }

    /// Whether every running worker routes with snapshot `version` or a later one.
    pub fn applied(&self, version: u64) -> bool {
        self.applied_version().is_none_or(|v| v >= version)
    }

    /// Asks every worker to stop accepting and to finish within `grace`.
    pub fn stop(&self, grace: Duration) {
        for w in &self.workers {
            if w.commands.send(Command::Stop { grace }).is_ok() {
                uring::eventfd_signal(w.wake.as_raw_fd());
            }
        }
    }

    /// Client connections open now.
    pub fn open_connections(&self) -> usize {
        self.shared.open_clients.load(Ordering::Relaxed)
    }

    /// Waits for every worker thread to exit.
    pub fn join(mut self) {
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }

    /// True once every worker thread has exited (normally only after `stop`).
    pub fn all_exited(&self) -> bool {
        self.workers
            .iter()
            .all(|w| w.thread.as_ref().is_none_or(|t| t.is_finished()))
    }
}

/// A backend as the control thread publishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendEntry {
    pub spec: BackendSpec,
    pub state: BackendState,
    /// Effective weight (slow start applied), at least 1.
    pub weight: u32,
    /// Draining: open connections are closed at this time.
    pub drain_deadline: Option<std::time::Instant>,
}

impl BackendEntry {
    /// Up, at its configured weight.
    pub fn up(spec: &BackendSpec) -> BackendEntry {
        BackendEntry {
            spec: spec.clone(),
            state: BackendState::Up,
            weight: spec.weight,
            drain_deadline: None,
        }
    }
}

impl Server {
    /// The id a backend name has (or gets) in the shared counters.
    pub fn backend_id(&self, name: &str) -> Option<BackendId> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.id_for(name)
    }
}

fn build_snapshot(
    state: &mut PublishState,
    entries: &[BackendEntry],
    config: &Config,
) -> Result<Snapshot, StartError> {
    let mut backends = Vec::with_capacity(entries.len());
    for e in entries {
        let id = state
            .id_for(&e.spec.name)
            .ok_or(StartError::TooManyBackends(state.ids.len() + 1))?;
        backends.push(Backend {
            id,
            name: e.spec.name.clone(),
            addr: e.spec.addr,
            weight: e.weight.max(1),
            max_conns: e.spec.max_conns,
            proxy_protocol: e.spec.proxy_protocol,
            state: e.state,
            drain_deadline: e.drain_deadline,
        });
    }
    state.version += 1;
    Ok(Snapshot::new(state.version, backends, config))
}

#[allow(clippy::too_many_arguments)]
fn spawn_worker(
    index: usize,
    cpu: Option<usize>,
    listeners: Vec<OwnedFd>,
    snapshot: Arc<Snapshot>,
    shared: Arc<Shared>,
    config: &WorkerConfig,
    max_conns: usize,
) -> Result<WorkerHandle, StartError> {
    let wake_raw = uring::eventfd().map_err(|source| StartError::Worker { index, source })?;
    let wake: OwnedFd = uring::own_fd(wake_raw);
    let wake_for_worker = wake
        .try_clone()
        .map_err(|source| StartError::Worker { index, source })?;
    let (tx, rx) = crossbeam_channel::unbounded();
    let (ready_tx, ready_rx) = crossbeam_channel::bounded::<std::io::Result<()>>(1);
    let setup = WorkerSetup {
        index,
        listeners,
        wake: wake_for_worker,
        commands: rx,
        snapshot,
        shared,
        config: config.clone(),
        // One balancer-wide limit, but any worker may end up holding all of it.
        slots: max_conns + 64,
    };
    let thread = std::thread::Builder::new()
        .name(format!("uringlb-w{index}"))
        .spawn(move || {
            if let Some(cpu) = cpu {
                pin_to(cpu);
            }
            match Worker::new(setup) {
                Ok(w) => {
                    let _ = ready_tx.send(Ok(()));
                    w.run();
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })
        .map_err(|source| StartError::Worker { index, source })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(WorkerHandle {
            commands: tx,
            wake,
            thread: Some(thread),
        }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(StartError::Uring(e))
        }
        Err(_) => {
            let _ = thread.join();
            Err(StartError::Worker {
                index,
                source: std::io::Error::other("worker thread exited during setup"),
            })
        }
    }
}

/// One SO_REUSEPORT listener per worker per address. With port 0 the first socket's
/// kernel-chosen port is reused for the others.
fn bind_all(
    addrs: &[SocketAddr],
    workers: usize,
) -> Result<(Vec<Vec<OwnedFd>>, Vec<SocketAddr>), StartError> {
    let mut per_worker: Vec<Vec<OwnedFd>> = (0..workers).map(|_| Vec::new()).collect();
    let mut bound = Vec::with_capacity(addrs.len());
    for &addr in addrs {
        let mut actual = addr;
        for sockets in per_worker.iter_mut() {
            let sock =
                listen_socket(actual).map_err(|source| StartError::Listen { addr, source })?;
            if actual.port() == 0 {
                if let Some(a) = sock.local_addr().ok().and_then(|a| a.as_socket()) {
                    actual = a;
                }
            }
            sockets.push(OwnedFd::from(sock));
        }
        bound.push(actual);
    }
    Ok((per_worker, bound))
}

fn listen_socket(addr: SocketAddr) -> std::io::Result<Socket> {
    let sock = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.cloexec(),
        Some(Protocol::TCP),
    )?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    // Accepted sockets inherit TCP_NODELAY from the listener.
    sock.set_tcp_nodelay(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(4096)?;
    Ok(sock)
}

/// CPUs this process may run on, in order.
fn allowed_cpus() -> Vec<usize> {
    match nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) {
        Ok(set) => (0..nix::sched::CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn pin_to(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        if let Err(e) = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set) {
            tracing::warn!("cannot pin worker to CPU {cpu}: {e}");
        }
    }
}

/// Raises the soft open-file limit to the hard one, as nginx's `worker_rlimit_nofile` does.
fn raise_nofile_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

/// Two descriptors per proxied connection, minus a reserve.
pub fn default_max_conns(workers: usize, pipes_per_worker: usize) -> usize {
    use nix::sys::resource::{getrlimit, Resource};
    let soft = getrlimit(Resource::RLIMIT_NOFILE)
        .map(|(s, _)| s)
        .unwrap_or(1024) as usize;
    let reserve = FD_RESERVE + (8 + 2 * pipes_per_worker) * workers;
    (soft.saturating_sub(reserve) / 2).max(1)
}
