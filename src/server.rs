//! Starting and stopping a balancer: binds every listener (one SO_REUSEPORT socket per
//! worker per address), spawns the pinned worker threads (each builds its own io_uring,
//! which must be created by the thread that submits to it), and returns the handle the
//! control thread uses to publish snapshots and to stop.
//!
//! `start` is all or nothing: any error (address in use, io_uring unavailable) stops what
//! was started and is returned; nothing is left running.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Sender;
use socket2::{Domain, Protocol, Socket, Type};

pub use crate::backend::BackendEntry;
use crate::backend::{Backend, BackendId, Policy, SharedCounters, Snapshot, MAX_BACKENDS};
use crate::backend_ids::BackendIds;
use crate::config::{BackendSpec, Config, Workers};
use crate::net;
use crate::uring::RingError;
use crate::worker::{Command, Shared, Worker, WorkerConfig, WorkerSetup};

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
    worker_config: WorkerConfig,
    /// Slots per worker: any worker may hold every place of `--max-conns`.
    slots: usize,
}

struct WorkerHandle {
    index: usize,
    cpu: Option<usize>,
    commands: Sender<Command>,
    wake: OwnedFd,
    thread: Option<JoinHandle<Result<(), RingError>>>,
}

/// What `publish` needs to give backends stable ids, and to know when one may be reused.
struct PublishState {
    version: u64,
    ids: BackendIds,
    /// Every snapshot published that may still be alive (a worker routes with it, or it
    /// waits in a worker's channel).
    published: Vec<Weak<Snapshot>>,
    counters: Arc<SharedCounters>,
    /// The snapshot published last (a restarted worker starts with it).
    last: Option<Arc<Snapshot>>,
}

impl PublishState {
    fn new(counters: Arc<SharedCounters>) -> PublishState {
        PublishState {
            version: 0,
            ids: BackendIds::default(),
            published: Vec::new(),
            counters,
            last: None,
        }
    }

    /// The id of `name`: the one it holds, or a free one (reclaiming unreferenced ids if
    /// none is free). `None` when [`MAX_BACKENDS`] backends are held.
    fn id_for(&mut self, name: &str) -> Option<BackendId> {
        if let Some(id) = self.ids.lookup(name) {
            return Some(id);
        }
        if let Some(id) = self.ids.assign(name) {
            return Some(id);
        }
        self.reclaim();
        self.ids.assign(name)
    }

    /// Frees every retired id that nothing refers to any more: no snapshot that is still
    /// alive holds it (so no worker can pick it again) and no connection counts on it. Its
    /// counters are reset, so a new backend starts from zero.
    fn reclaim(&mut self) {
        self.published.retain(|w| w.strong_count() > 0);
        let mut referenced = vec![false; MAX_BACKENDS];
        for snapshot in self.published.iter().filter_map(Weak::upgrade) {
            for b in &snapshot.backends {
                referenced[b.id.0 as usize] = true;
            }
        }
        // A worker's last use of an old snapshot (a pick that counted a connection)
        // happens before it drops the snapshot: see it before reading the counters.
        std::sync::atomic::fence(Ordering::Acquire);
        for id in self.ids.retired() {
            let c = self.counters.get(id);
            if !referenced[id.0 as usize] && c.active() == 0 {
                c.reset();
                self.ids.release(id);
            }
        }
    }
}

impl Server {
    /// Binds, spawns and returns once every worker runs, or fails with nothing running.
    pub fn start(config: &Config) -> Result<Server, StartError> {
        raise_nofile_limit();
        let Plan {
            cpus,
            n_workers,
            max_conns,
            state,
            snapshot,
        } = Plan::new(config)?;
        let (listeners, local_addrs) = bind_all(&config.service.listen, n_workers)?;
        let shared = Arc::new(Shared::new(n_workers, max_conns, state.counters.clone()));
        let worker_config = WorkerConfig {
            forward: config.forward,
            buf_size: BUF_SIZE,
            pipes_max: config.splice_pipes,
            pipe_size: PIPE_SIZE,
            fail_after: None,
        };
        // One balancer-wide limit, and any worker may end up holding all of it; a slot
        // costs memory only once used.
        let slots = max_conns;

        let mut workers = Vec::with_capacity(n_workers);
        let mut failure = None;
        for (index, listeners) in listeners.into_iter().enumerate() {
            let cpu = if config.pin && !cpus.is_empty() {
                Some(cpus[index % cpus.len()])
            } else {
                None
            };
            let mut wc = worker_config.clone();
            wc.fail_after = injected_failure(index);
            match spawn_worker(
                index,
                cpu,
                listeners,
                snapshot.clone(),
                shared.clone(),
                &wc,
                slots,
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
            worker_config,
            slots,
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
            backends = config.service.backends.len(),
            algorithm = config.service.algorithm.name(),
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
        let snapshot = build_snapshot(&mut state, entries, &settings.policy())?;
        let version = snapshot.version;
        for w in &self.workers {
            if w.commands.send(Command::Snapshot(snapshot.clone())).is_ok() {
                net::eventfd_signal(&w.wake);
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
                net::eventfd_signal(&w.wake);
            }
        }
    }

    /// Client connections open now.
    pub fn open_connections(&self) -> usize {
        self.shared.open_clients.load(Ordering::Relaxed)
    }

    /// Starts a new worker in the place of each one whose loop failed (its connections
    /// were reset and their counts given back); the new one binds its own listeners and
    /// routes with the last snapshot. A worker that ended because the balancer is stopping
    /// is left alone. Returns how many were restarted; an error if one cannot be (its
    /// listeners cannot be bound): the balancer then goes on with fewer workers.
    pub fn supervise(&mut self) -> Result<usize, StartError> {
        let mut restarted = 0;
        for i in 0..self.workers.len() {
            let finished = self.workers[i]
                .thread
                .as_ref()
                .is_some_and(|t| t.is_finished());
            if !finished {
                continue;
            }
            let outcome = self.workers[i].thread.take().map(|t| t.join());
            let why = match outcome {
                Some(Ok(Ok(()))) => continue, // stopped as asked
                Some(Ok(Err(e))) => e.to_string(),
                Some(Err(_)) => "it panicked".to_string(),
                None => continue,
            };
            let (index, cpu) = (self.workers[i].index, self.workers[i].cpu);
            tracing::error!(
                worker = index,
                "worker loop ended: {why}; starting a new one"
            );
            let (mut listeners, _) = bind_all(&self.local_addrs, 1)?;
            let snapshot = self
                .state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .last
                .clone()
                .expect("published at start");
            let handle = spawn_worker(
                index,
                cpu,
                listeners.pop().unwrap_or_default(),
                snapshot,
                self.shared.clone(),
                &self.worker_config,
                self.slots,
            )?;
            self.workers[i] = handle;
            self.shared.worker_restarts.fetch_add(1, Ordering::Relaxed);
            restarted += 1;
        }
        Ok(restarted)
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

impl Server {
    /// The id a backend name has (or gets) in the shared counters.
    pub fn backend_id(&self, name: &str) -> Option<BackendId> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.id_for(name)
    }
}

/// Everything [`Server::start`] decides before it binds a socket or starts a thread; also
/// what `--check` builds, so that it refuses whatever a start would.
struct Plan {
    cpus: Vec<usize>,
    n_workers: usize,
    max_conns: usize,
    state: PublishState,
    /// The first snapshot: every configured backend, up.
    snapshot: Arc<Snapshot>,
}

impl Plan {
    fn new(config: &Config) -> Result<Plan, StartError> {
        let cpus = allowed_cpus();
        let n_workers = match config.workers {
            Workers::Auto => cpus.len().max(1),
            Workers::Count(n) => n.max(1),
        };
        let max_conns = config
            .max_conns
            .unwrap_or_else(|| default_max_conns(n_workers, config.splice_pipes));
        let mut state = PublishState::new(SharedCounters::new());
        let entries: Vec<BackendEntry> = config
            .service
            .backends
            .iter()
            .map(BackendEntry::up)
            .collect();
        let snapshot = build_snapshot(&mut state, &entries, &config.policy())?;
        Ok(Plan {
            cpus,
            n_workers,
            max_conns,
            state,
            snapshot,
        })
    }
}

/// Runs every check a start runs, short of binding the listeners and starting workers
/// (`--check`).
pub fn check(config: &Config) -> Result<(), StartError> {
    Plan::new(config).map(|_| ())
}

/// Builds the next snapshot and records it as published; ids of backends it no longer
/// holds are retired, and those nothing refers to any more are reclaimed.
fn build_snapshot(
    state: &mut PublishState,
    entries: &[BackendEntry],
    policy: &Policy,
) -> Result<Arc<Snapshot>, StartError> {
    if entries.len() > MAX_BACKENDS {
        return Err(StartError::TooManyBackends(entries.len()));
    }
    let local_ips: Arc<[IpAddr]> = crate::loops::local_ips().into();
    let is_local = |ip: IpAddr| {
        let ip = crate::loops::canonical(ip);
        ip.is_loopback() || ip.is_unspecified() || local_ips.binary_search(&ip).is_ok()
    };
    let mut backends = Vec::with_capacity(entries.len());
    for e in entries {
        // Fails only while backends removed earlier still hold connections.
        let id = state
            .id_for(&e.spec.name)
            .ok_or(StartError::TooManyBackends(state.ids.taken() + 1))?;
        backends.push(Backend {
            id,
            name: e.spec.name.clone(),
            addr: e.spec.addr,
            weight: e.weight.max(1),
            max_conns: e.spec.max_conns,
            proxy_protocol: e.spec.proxy_protocol,
            backup: e.spec.backup,
            state: e.state,
            drain_deadline: e.drain_deadline,
            local: is_local(e.spec.addr.ip()),
        });
    }
    state.version += 1;
    let snapshot = Arc::new(Snapshot::new(state.version, backends, policy, local_ips));
    let names: HashSet<&str> = snapshot.backends.iter().map(|b| b.name.as_str()).collect();
    state.ids.retire_absent(&names);
    state.reclaim();
    state.published.push(Arc::downgrade(&snapshot));
    state.last = Some(snapshot.clone());
    Ok(snapshot)
}

/// The test hook `URINGLB_TEST_FAIL_WORKER=INDEX:WAITS`: worker INDEX's loop fails after
/// WAITS waits, once, so that the tests can see a failed worker replaced.
fn injected_failure(index: usize) -> Option<u64> {
    let v = std::env::var("URINGLB_TEST_FAIL_WORKER").ok()?;
    let (i, n) = v.split_once(':')?;
    (i.parse::<usize>().ok()? == index).then_some(())?;
    n.parse().ok()
}

fn spawn_worker(
    index: usize,
    cpu: Option<usize>,
    listeners: Vec<(OwnedFd, SocketAddr)>,
    snapshot: Arc<Snapshot>,
    shared: Arc<Shared>,
    config: &WorkerConfig,
    slots: usize,
) -> Result<WorkerHandle, StartError> {
    let wake = net::eventfd().map_err(|source| StartError::Worker { index, source })?;
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
        slots,
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
                    w.run()
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    Ok(())
                }
            }
        })
        .map_err(|source| StartError::Worker { index, source })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(WorkerHandle {
            index,
            cpu,
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

/// One SO_REUSEPORT listener per worker per address, with the address it is bound to. With
/// port 0 the first socket's kernel-chosen port is reused for the others.
#[allow(clippy::type_complexity)]
fn bind_all(
    addrs: &[SocketAddr],
    workers: usize,
) -> Result<(Vec<Vec<(OwnedFd, SocketAddr)>>, Vec<SocketAddr>), StartError> {
    let mut per_worker: Vec<Vec<(OwnedFd, SocketAddr)>> =
        (0..workers).map(|_| Vec::new()).collect();
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
            sockets.push((OwnedFd::from(sock), actual));
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
