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
use crate::backend::{
    Backend, BackendId, Policy, Routing, ServiceBudget, ServiceId, SharedCounters, Snapshot,
    MAX_BACKENDS,
};
use crate::backend_ids::BackendIds;
use crate::config::{Config, Protocol as ServiceProtocol, Workers};
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
    #[error("{0}")]
    AccessLog(std::io::Error),
    #[error("{0}")]
    Upgrade(std::io::Error),
    #[error("{0}")]
    Activation(String),
}

/// Forwarding buffer per direction per connection.
pub const BUF_SIZE: usize = 32 * 1024;
/// File descriptors kept back from RLIMIT_NOFILE for listeners, rings, eventfds, logs.
const FD_RESERVE: usize = 128;
/// Splice pipe size (`--splice-pipes` sets how many per worker).
pub const PIPE_SIZE: usize = 256 * 1024;

/// A listening socket handed to a worker: the address it is bound to and a service that
/// listens there (the worker labels it again with each routing: see [`bind_all`]).
pub type ListenerFd = (OwnedFd, SocketAddr, ServiceId);

/// One service's backends and policy, as [`Server::publish`] takes them.
pub struct ServiceTable<'a> {
    pub name: &'a str,
    pub entries: &'a [BackendEntry],
    pub policy: Policy,
    /// False while the service is being removed: its listeners close.
    pub accepting: bool,
    /// The service's own limit on open clients.
    pub max_conns: Option<usize>,
}

/// A listen address as bound (port 0 resolved), and the service it belongs to.
#[derive(Debug, Clone)]
pub struct Bound {
    /// As the configuration gives it (port 0 unresolved).
    pub wanted: SocketAddr,
    pub addr: SocketAddr,
    pub service: String,
    pub id: ServiceId,
    pub protocol: ServiceProtocol,
}

/// A listening socket another process bound (handed over on an upgrade), for the listen
/// address it was configured as (`wanted`) or is bound to (`addr`).
#[derive(Debug)]
pub struct Inherited {
    pub wanted: SocketAddr,
    pub addr: SocketAddr,
    pub protocol: ServiceProtocol,
    /// The service it was the listener of (several may share an address).
    pub service: String,
    pub fd: OwnedFd,
}

impl Inherited {
    fn matches(&self, addr: SocketAddr, protocol: ServiceProtocol) -> bool {
        self.protocol == protocol && (self.wanted == addr || self.addr == addr)
    }
}

/// The balancer's own copy of a worker's listening socket: what an upgrade hands over, and
/// what a worker started in the place of a failed one accepts from (so the clients queued
/// on it are not lost). Closed when the balancer stops or a reload drops its address.
struct Held {
    worker: usize,
    /// The address, as bound for the first service that listened there.
    bound: Bound,
    fd: OwnedFd,
}

impl Held {
    /// Whether a listen address configured as `wanted` (with `protocol`) is this socket's.
    fn serves(&self, wanted: SocketAddr, protocol: ServiceProtocol) -> bool {
        self.bound.wanted == wanted && self.bound.protocol == protocol
    }
}

/// A running balancer.
pub struct Server {
    workers: Vec<WorkerHandle>,
    shared: Arc<Shared>,
    state: Mutex<PublishState>,
    /// The configuration it started with.
    config: Config,
    worker_config: WorkerConfig,
    /// Slots per worker: any worker may hold every place of `--max-conns`.
    slots: usize,
    /// The access log's writer, when `--access-log` is on.
    access_log: Option<crate::access_log::writer::AccessLog>,
}

struct WorkerHandle {
    index: usize,
    cpu: Option<usize>,
    commands: Sender<Command>,
    wake: OwnedFd,
    thread: Option<JoinHandle<Result<(), RingError>>>,
}

/// What `publish` needs to give backends and services stable ids, and to know when a
/// backend's id may be reused.
struct PublishState {
    version: u64,
    /// Backend ids, keyed by [`backend_key`] (a backend is its service's).
    ids: BackendIds,
    /// Every snapshot published that may still be alive (a worker routes with it, or it
    /// waits in a worker's channel).
    published: Vec<Weak<Snapshot>>,
    counters: Arc<SharedCounters>,
    /// The routing published last (a restarted worker starts with it).
    last: Option<Arc<Routing>>,
    /// Service names by [`ServiceId`]: an id is never given to another name.
    services: Vec<String>,
    /// Every listen address bound now.
    bound: Vec<Bound>,
    /// A copy of every listening socket of every worker (empty once stopping).
    held: Vec<Held>,
    /// Each service's `max_conns` count, by [`ServiceId`].
    budgets: Vec<Arc<ServiceBudget>>,
    /// Service and backend names by id, for the access log.
    names: Arc<crate::access_log::Names>,
}

/// The key of a backend in [`BackendIds`]: names are unique within a service only.
fn backend_key(service: &str, name: &str) -> String {
    format!("{service}\u{0}{name}")
}

impl PublishState {
    fn new(counters: Arc<SharedCounters>) -> PublishState {
        PublishState {
            version: 0,
            ids: BackendIds::default(),
            published: Vec::new(),
            counters,
            last: None,
            services: Vec::new(),
            bound: Vec::new(),
            held: Vec::new(),
            budgets: Vec::new(),
            names: Arc::default(),
        }
    }

    /// The id of service `name`, given now if it has none.
    fn service_id(&mut self, name: &str) -> ServiceId {
        let i = match self.services.iter().position(|n| n == name) {
            Some(i) => i,
            None => {
                self.services.push(name.to_string());
                self.names
                    .set_service(ServiceId(self.services.len() as u32 - 1), name);
                self.services.len() - 1
            }
        };
        ServiceId(i as u32)
    }

    /// The id of backend `name` of `service`: the one it holds, or a free one (reclaiming
    /// unreferenced ids if none is free). `None` when [`MAX_BACKENDS`] backends are held.
    fn id_for(&mut self, service: &str, name: &str) -> Option<BackendId> {
        let key = backend_key(service, name);
        if let Some(id) = self.ids.lookup(&key) {
            return Some(id);
        }
        if let Some(id) = self.ids.assign(&key) {
            return Some(id);
        }
        self.reclaim();
        self.ids.assign(&key)
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
        Server::start_with(config, Vec::new(), Vec::new())
    }

    /// [`Server::start`], taking the `inherited` sockets for the listen addresses they
    /// match instead of binding new ones (an upgrade). Every inherited socket of an address
    /// is accepted from: with more of them than workers a worker takes several, with fewer
    /// the other workers bind their own `SO_REUSEPORT` sockets. Those matching no listen
    /// address are closed.
    ///
    /// `activated` are the sockets of systemd's socket activation: every worker accepts
    /// from each one (see [`crate::activation`]).
    pub fn start_with(
        config: &Config,
        inherited: Vec<Inherited>,
        activated: Vec<OwnedFd>,
    ) -> Result<Server, StartError> {
        raise_nofile_limit();
        let Plan {
            cpus,
            n_workers,
            max_conns,
            mut state,
        } = Plan::new(config)?;
        let wanted: Vec<(SocketAddr, String, ServiceId, ServiceProtocol)> = config
            .services()
            .iter()
            .flat_map(|s| {
                let id = state.service_id(&s.name);
                let protocol = s.settings.protocol;
                s.settings
                    .listen
                    .iter()
                    .map(move |a| (*a, s.name.clone(), id, protocol))
            })
            .collect();
        let mut inherited = inherited;
        inherited.extend(
            crate::activation::match_listeners(activated, &wanted, n_workers)
                .map_err(StartError::Activation)?,
        );
        let Bind {
            listeners,
            bound,
            held,
        } = bind_all(&wanted, n_workers, &mut inherited)?;
        for s in inherited {
            tracing::info!(
                "closing the inherited {} listener on {}: no longer configured",
                s.protocol.name(),
                s.addr
            );
        }
        // Again, now that the listen addresses are known (port 0 resolved).
        state.bound = bound;
        state.held = held;
        let routing = republish_all(&mut state, config)?;
        let mut shared = Shared::new(n_workers, max_conns, state.counters.clone());
        let access_log = crate::access_log::writer::AccessLog::start(
            &config.access_log,
            config.access_log_format,
            n_workers,
            state.names.clone(),
            shared.wall_epoch,
        )
        .map_err(StartError::AccessLog)?;
        shared.access_log = access_log.as_ref().map(|l| l.queues().clone());
        let shared = Arc::new(shared);
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
                routing.clone(),
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
            shared,
            state: Mutex::new(state),
            config: config.clone(),
            worker_config,
            slots,
            access_log,
        };
        if let Some(e) = failure {
            server.stop(Duration::ZERO);
            server.join();
            return Err(e);
        }
        tracing::info!(
            workers = n_workers,
            max_conns,
            listen = ?server.local_addrs(),
            services = config.services().len(),
            "uringlb running"
        );
        Ok(server)
    }

    /// Every bound listen address (port 0 resolved), of every service.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.bound().into_iter().map(|b| b.addr).collect()
    }

    /// The bound listen addresses of `protocol`: a backend of a service of that protocol
    /// at one of them would loop back to the balancer (a TCP backend at a UDP listen
    /// address would not).
    pub fn local_addrs_for(&self, protocol: ServiceProtocol) -> Vec<SocketAddr> {
        self.bound()
            .into_iter()
            .filter(|b| b.protocol == protocol)
            .map(|b| b.addr)
            .collect()
    }

    /// The bound listen addresses with their services.
    pub fn bound(&self) -> Vec<Bound> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .bound
            .clone()
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Publishes a new routing: the services in `changed` get new snapshots (backends with
    /// their states and effective weights, and their policy); the other services in `live`
    /// keep theirs; a service in neither is gone. A backend keeps its id (and so its shared
    /// counters) as long as its name stays in its service. Returns the routing's version;
    /// each worker routes new connections with it from the moment it swaps it in (see
    /// [`Server::applied`]); open connections keep their backends.
    pub fn publish(&self, changed: &[ServiceTable<'_>], live: &[&str]) -> Result<u64, StartError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let routing = build_routing(&mut state, changed, live)?;
        let version = routing.version;
        for w in &self.workers {
            if w.commands.send(Command::Routing(routing.clone())).is_ok() {
                net::eventfd_signal(&w.wake);
            }
        }
        Ok(version)
    }

    /// Makes the bound listen addresses `wanted` (address as configured, service): binds
    /// every address not bound yet (one socket per worker, handed to each worker now),
    /// gives a service joining a bound address that address's sockets, and forgets the
    /// addresses no service lists any more (each worker closes their sockets when the next
    /// routing no longer lists them). All or nothing: if one cannot be bound, none is, and
    /// nothing changes.
    pub fn update_listeners(
        &self,
        wanted: &[(SocketAddr, String, ServiceProtocol)],
    ) -> Result<(), StartError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let is_bound =
            |b: &Bound, (addr, service, protocol): &(SocketAddr, String, ServiceProtocol)| {
                b.wanted == *addr && b.service == *service && b.protocol == *protocol
            };
        let mut new: Vec<(SocketAddr, String, ServiceId, ServiceProtocol)> = Vec::new();
        let mut joined: Vec<Bound> = Vec::new();
        for w in wanted {
            if state.bound.iter().any(|b| is_bound(b, w)) {
                continue;
            }
            let id = state.service_id(&w.1);
            // A service joining an address another one (or one being removed) listens on
            // takes its sockets: none is closed or added, so no queued client is lost.
            match state.held.iter().find(|h| h.serves(w.0, w.2)) {
                Some(h) => joined.push(Bound {
                    wanted: w.0,
                    addr: h.bound.addr,
                    service: w.1.clone(),
                    id,
                    protocol: w.2,
                }),
                None => new.push((w.0, w.1.clone(), id, w.2)),
            }
        }
        let Bind {
            listeners,
            mut bound,
            held,
        } = bind_all(&new, self.workers.len(), &mut Vec::new())?;
        bound.extend(joined);
        for (w, l) in self.workers.iter().zip(listeners) {
            if !l.is_empty() && w.commands.send(Command::Listen(l)).is_ok() {
                net::eventfd_signal(&w.wake);
            }
        }
        state
            .bound
            .retain(|b| wanted.iter().any(|w| is_bound(b, w)));
        state
            .held
            .retain(|h| wanted.iter().any(|w| h.serves(w.0, w.2)));
        state.held.extend(held);
        for b in &bound {
            tracing::info!("service {}: listening on {}", b.service, b.addr);
        }
        state.bound.extend(bound);
        Ok(())
    }

    /// Routes new connections of the first service over `backends` (all up, configured
    /// weights), with the policy it started with: for embedders and tests that manage
    /// backends themselves. Returns the routing's version.
    pub fn publish_backends(
        &self,
        backends: &[crate::config::BackendSpec],
    ) -> Result<u64, StartError> {
        let services = self.config.services();
        let first = &services[0];
        let entries: Vec<BackendEntry> = backends.iter().map(BackendEntry::up).collect();
        let live: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
        let table = ServiceTable {
            name: &first.name,
            entries: &entries,
            policy: first.settings.policy(),
            accepting: true,
            max_conns: first.max_conns,
        };
        self.publish(&[table], &live)
    }

    /// The version of the routing published last.
    pub fn published_version(&self) -> u64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).version
    }

    /// The oldest routing version a running worker routes with: every new connection is
    /// placed by that routing or a later one. `None` once every worker has exited (a
    /// worker that died must not hold up whoever waits for it).
    pub fn applied_version(&self) -> Option<u64> {
        self.workers
            .iter()
            .zip(self.shared.stats.iter())
            .filter(|(w, _)| w.thread.as_ref().is_some_and(|t| !t.is_finished()))
            .map(|(_, s)| s.snapshot_version.load(Ordering::Acquire))
            .min()
    }

    /// Whether every running worker routes with routing `version` or a later one.
    pub fn applied(&self, version: u64) -> bool {
        self.applied_version().is_none_or(|v| v >= version)
    }

    /// Asks every worker to stop accepting and to finish within `grace`.
    pub fn stop(&self, grace: Duration) {
        self.stop_as(|| Command::Stop { grace });
    }

    /// [`Server::stop`] once another process took the listeners over: the workers stop
    /// reading the UDP listeners at once too (the new process reads them), and only send
    /// the replies of their open flows through them.
    pub fn hand_over(&self, grace: Duration) {
        self.stop_as(|| Command::HandOver { grace });
    }

    fn stop_as(&self, command: impl Fn() -> Command) {
        // The balancer's copies go first: a listener closed by its worker then stops
        // taking clients (another process on the address takes them).
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .held
            .clear();
        for w in &self.workers {
            if w.commands.send(command()).is_ok() {
                net::eventfd_signal(&w.wake);
            }
        }
    }

    /// A copy of every listening socket (one per worker per address, as bound now) with
    /// its address: what an upgrade hands over. Empty once stopping.
    pub fn listener_copies(&self) -> std::io::Result<Vec<Inherited>> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state
            .held
            .iter()
            .map(|h| {
                Ok(Inherited {
                    wanted: h.bound.wanted,
                    addr: h.bound.addr,
                    protocol: h.bound.protocol,
                    service: h.bound.service.clone(),
                    fd: h.fd.try_clone()?,
                })
            })
            .collect()
    }

    /// Client connections open now.
    pub fn open_connections(&self) -> usize {
        self.shared.open_clients.load(Ordering::Relaxed)
    }

    /// Starts a new worker in the place of each one whose loop failed (its connections
    /// were reset and their counts given back); the new one binds its own listeners and
    /// routes with the last routing. A worker that ended because the balancer is stopping
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
            // The failed worker's sockets stay open (the balancer holds a copy): the new
            // one accepts the clients queued on them.
            let listeners = self
                .worker_sockets(index)
                .map_err(|source| StartError::Worker { index, source })?;
            let routing = self
                .state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .last
                .clone()
                .expect("published at start");
            let handle = spawn_worker(
                index,
                cpu,
                listeners,
                routing,
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

    /// Waits for every worker thread to exit, then for the access log to write the
    /// records they left.
    pub fn join(mut self) {
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
        if let Some(mut log) = self.access_log.take() {
            log.stop();
        }
    }

    /// Reopens the access log file by its path (SIGUSR1, after logrotate moved it).
    pub fn reopen_access_log(&self) {
        if let Some(log) = &self.access_log {
            log.reopen();
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
    /// Copies of the listening sockets worker `index` was given.
    fn worker_sockets(&self, index: usize) -> std::io::Result<Vec<ListenerFd>> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state
            .held
            .iter()
            .filter(|h| h.worker == index)
            .map(|h| Ok((h.fd.try_clone()?, h.bound.addr, h.bound.id)))
            .collect()
    }

    /// The id of service `name`, if it has one.
    pub fn service_id(&self, name: &str) -> Option<ServiceId> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let i = state.services.iter().position(|n| n == name)?;
        Some(ServiceId(i as u32))
    }

    /// The id backend `name` of `service` has (or gets) in the shared counters.
    pub fn backend_id(&self, service: &str, name: &str) -> Option<BackendId> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.id_for(service, name)
    }
}

/// Everything [`Server::start`] decides before it binds a socket or starts a thread; also
/// what `--check` builds, so that it refuses whatever a start would.
struct Plan {
    cpus: Vec<usize>,
    n_workers: usize,
    max_conns: usize,
    state: PublishState,
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
        // What a start publishes first, built here so that `--check` refuses what it would.
        republish_all(&mut state, config)?;
        Ok(Plan {
            cpus,
            n_workers,
            max_conns,
            state,
        })
    }
}

/// A routing with every service of `config` and every configured backend, up.
fn republish_all(state: &mut PublishState, config: &Config) -> Result<Arc<Routing>, StartError> {
    let services = config.services();
    let entries: Vec<Vec<BackendEntry>> = services
        .iter()
        .map(|s| s.settings.backends.iter().map(BackendEntry::up).collect())
        .collect();
    let tables: Vec<ServiceTable<'_>> = services
        .iter()
        .zip(&entries)
        .map(|(s, e)| ServiceTable {
            name: &s.name,
            entries: e,
            policy: s.settings.policy(),
            accepting: true,
            max_conns: s.max_conns,
        })
        .collect();
    let live: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
    build_routing(state, &tables, &live)
}

/// Runs every check a start runs, short of binding the listeners and starting workers
/// (`--check`); the files a start makes are checked without being made
/// ([`crate::paths`]).
pub fn check(config: &Config) -> Result<(), StartError> {
    crate::access_log::writer::check(&config.access_log).map_err(StartError::AccessLog)?;
    if let Some(path) = &config.upgrade_socket {
        crate::paths::check_socket_path(path)
            .map_err(|e| StartError::Upgrade(upgrade_socket_error(path, e)))?;
    }
    Plan::new(config).map(|_| ())
}

/// An error about the upgrade socket at `path`, naming it.
pub fn upgrade_socket_error(path: &std::path::Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("upgrade socket {}: {e}", path.display()))
}

/// Builds the next routing and records it as published (see [`Server::publish`]); ids of
/// backends it no longer holds are retired, and those nothing refers to any more are
/// reclaimed.
fn build_routing(
    state: &mut PublishState,
    changed: &[ServiceTable<'_>],
    live: &[&str],
) -> Result<Arc<Routing>, StartError> {
    let total: usize = changed.iter().map(|t| t.entries.len()).sum();
    if total > MAX_BACKENDS {
        return Err(StartError::TooManyBackends(total));
    }
    let local_ips: Arc<[IpAddr]> = crate::loops::local_ips().into();
    let version = state.version + 1;
    let mut services = state
        .last
        .as_ref()
        .map(|r| r.services.clone())
        .unwrap_or_default();
    for t in changed {
        let id = state.service_id(t.name);
        let snapshot = build_snapshot(state, version, t, local_ips.clone())?;
        if services.len() <= id.0 as usize {
            services.resize(id.0 as usize + 1, None);
        }
        services[id.0 as usize] = Some(snapshot);
    }
    let live_ids: Vec<ServiceId> = live.iter().map(|n| state.service_id(n)).collect();
    if services.len() < state.services.len() {
        services.resize(state.services.len(), None);
    }
    for (i, s) in services.iter_mut().enumerate() {
        if !live_ids.contains(&ServiceId(i as u32)) {
            *s = None;
        }
    }
    state.version = version;
    let mut keys = HashSet::new();
    for (i, s) in services.iter().enumerate() {
        if let Some(s) = s {
            for b in &s.backends {
                keys.insert(backend_key(&state.services[i], &b.name));
            }
        }
    }
    let key_refs: HashSet<&str> = keys.iter().map(String::as_str).collect();
    state.ids.retire_absent(&key_refs);
    state.reclaim();
    let sni = sni_routes(&services);
    let routing = Arc::new(Routing {
        version,
        services,
        sni,
    });
    state.last = Some(routing.clone());
    Ok(routing)
}

/// The names of the services that route by TLS server name, by listen address as bound.
/// Only accepting services: a removed one's names are free for new connections at once.
/// The configuration was checked (each name once per address), so nothing is refused here;
/// were a name given twice anyway, the first service keeps it.
fn sni_routes(services: &[Option<Arc<Snapshot>>]) -> crate::sni::SniRoutes {
    let mut routes = crate::sni::SniRoutes::default();
    for (i, s) in services.iter().enumerate() {
        let Some(s) = s.as_ref().filter(|s| s.accepting && !s.sni.is_empty()) else {
            continue;
        };
        for addr in &s.listen {
            if let Err(e) = routes.add(*addr, &s.sni, ServiceId(i as u32)) {
                tracing::warn!("{e}");
            }
        }
    }
    routes
}

/// One service's snapshot, recorded as published.
fn build_snapshot(
    state: &mut PublishState,
    version: u64,
    table: &ServiceTable<'_>,
    local_ips: Arc<[IpAddr]>,
) -> Result<Arc<Snapshot>, StartError> {
    let is_local = |ip: IpAddr| {
        let ip = crate::loops::canonical(ip);
        ip.is_loopback() || ip.is_unspecified() || local_ips.binary_search(&ip).is_ok()
    };
    let mut backends = Vec::with_capacity(table.entries.len());
    for e in table.entries {
        // Fails only while backends removed earlier still hold connections.
        let id = state
            .id_for(table.name, &e.spec.name)
            .ok_or(StartError::TooManyBackends(state.ids.taken() + 1))?;
        state.names.set_backend(id, &e.spec.name);
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
    let mut snapshot = Snapshot::new(version, backends, &table.policy, local_ips.clone());
    snapshot.accepting = table.accepting;
    snapshot.name = Arc::from(table.name);
    snapshot.budget = table.max_conns.map(|max| {
        let id = state.service_id(table.name).0 as usize;
        if state.budgets.len() <= id {
            state
                .budgets
                .resize_with(id + 1, || Arc::new(ServiceBudget::default()));
        }
        state.budgets[id].set_max(max);
        state.budgets[id].clone()
    });
    snapshot.listen = state
        .bound
        .iter()
        .filter(|b| b.service == table.name)
        .map(|b| b.addr)
        .collect();
    let snapshot = Arc::new(snapshot);
    state.published.push(Arc::downgrade(&snapshot));
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
    listeners: Vec<ListenerFd>,
    routing: Arc<Routing>,
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
        routing,
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

/// What [`bind_all`] made: each worker's listeners, the addresses bound, and the
/// balancer's copies of the sockets.
struct Bind {
    listeners: Vec<Vec<ListenerFd>>,
    bound: Vec<Bound>,
    held: Vec<Held>,
}

/// The listeners of every address in `wanted` for `workers` workers: the sockets of
/// `inherited` that match the address (removed from it), spread over the workers, and one
/// new SO_REUSEPORT socket for each worker left without one. With port 0 the first
/// socket's kernel-chosen port is reused for the others.
///
/// The sockets are the address's, not a service's: services sharing an address (by TLS
/// server name) share them, each worker labels them with a service listening there, and a
/// reload that removes one of the services closes none. (Sockets of their own would put
/// each service's in the address's SO_REUSEPORT group, and the kernel queues any client
/// on any of them: closing one service's would reset the clients of the others waiting
/// in its queues.)
fn bind_all(
    wanted: &[(SocketAddr, String, ServiceId, ServiceProtocol)],
    workers: usize,
    inherited: &mut Vec<Inherited>,
) -> Result<Bind, StartError> {
    let mut per_worker: Vec<Vec<ListenerFd>> = (0..workers).map(|_| Vec::new()).collect();
    let mut bound: Vec<Bound> = Vec::with_capacity(wanted.len());
    let mut held = Vec::new();
    for (addr, service, id, protocol) in wanted {
        let addr = *addr;
        let earlier = bound
            .iter()
            .find(|b| b.wanted == addr && b.protocol == *protocol);
        if let Some(b) = earlier {
            let b = Bound {
                service: service.clone(),
                id: *id,
                ..b.clone()
            };
            bound.push(b);
            continue;
        }
        let (taken, rest): (Vec<Inherited>, Vec<Inherited>) = std::mem::take(inherited)
            .into_iter()
            .partition(|s| s.matches(addr, *protocol));
        *inherited = rest;
        let mut actual = taken.first().map_or(addr, |s| s.addr);
        let mut sockets: Vec<(usize, OwnedFd)> = Vec::new();
        let n_taken = taken.len();
        for (j, s) in taken.into_iter().enumerate() {
            sockets.push((j % workers, s.fd));
        }
        for worker in n_taken..workers {
            let sock = match protocol {
                ServiceProtocol::Tcp => listen_socket(actual),
                ServiceProtocol::Udp => crate::udp_net::listen_socket(actual),
            }
            .map_err(|source| StartError::Listen { addr, source })?;
            if actual.port() == 0 {
                if let Some(a) = sock.local_addr().ok().and_then(|a| a.as_socket()) {
                    actual = a;
                }
            }
            sockets.push((worker, OwnedFd::from(sock)));
        }
        let b = Bound {
            wanted: addr,
            addr: actual,
            service: service.clone(),
            id: *id,
            protocol: *protocol,
        };
        for (worker, fd) in sockets {
            let copy = fd
                .try_clone()
                .map_err(|source| StartError::Listen { addr, source })?;
            held.push(Held {
                worker,
                bound: b.clone(),
                fd: copy,
            });
            per_worker[worker].push((fd, actual, *id));
        }
        bound.push(b);
    }
    Ok(Bind {
        listeners: per_worker,
        bound,
        held,
    })
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
