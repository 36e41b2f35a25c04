//! The control loop: one task on the control thread's runtime that owns the backend
//! [`Table`] and reacts to everything that may change it: health-check results, the
//! workers' connect-failure counters (polled every 100 ms), time passing (ejection
//! back-offs, slow-start steps, removals), commands (the admin API, [`super::Controller`]),
//! and signals (SIGHUP reloads, see [`super::reload`]). After each event it publishes a new
//! snapshot if the table or the settings changed, so one event means at most one snapshot.
//! A command that changed the table is answered only once every worker routes with that
//! snapshot (see [`super::settle`]).

use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc::{self, UnboundedReceiver};
use tokio::sync::oneshot;

use crate::config::{BackendSpec, Config, ServiceSettings};
use crate::server::Server;

use super::admin::status::{StatusSample, Totals};
use super::backends::{AdminState, BackendStatus, Table, TableError};
use super::checker::Checker;
use super::discovery::Discovery;
use super::metrics::{self, BackendSample, Counts};
use super::notify::Notifier;
use super::reload::{self, Outcome, ReloadError};
use super::service::{self, Channels, Service};
use super::settle::{self, Held};

/// How often the workers' failure counters and the clock are looked at: the passive
/// ejection reacts within this.
pub const POLL: Duration = Duration::from_millis(100);

/// A request to the control loop (from [`super::Controller`] and the admin API). A
/// `service` of `None` means the only service (an error when there are several).
#[derive(Debug)]
pub enum Command {
    SetState {
        service: Option<String>,
        name: String,
        state: AdminState,
        reply: oneshot::Sender<Result<(), TableError>>,
    },
    SetBackends {
        service: Option<String>,
        backends: Vec<BackendSpec>,
        reply: oneshot::Sender<Result<(), TableError>>,
    },
    Status {
        service: Option<String>,
        reply: oneshot::Sender<Result<Vec<BackendStatus>, TableError>>,
    },
    /// Stop accepting; let open connections finish within `grace`.
    Stop { grace: Duration },
    /// Add one backend (validated by the caller); it is up at once. The reply is the
    /// backend as added.
    AddBackend {
        service: Option<String>,
        spec: BackendSpec,
        reply: oneshot::Sender<Result<BackendSample, TableError>>,
    },
    /// Change a backend's weight and/or operator state; nothing changes on an error. The
    /// reply is the backend as changed.
    Update {
        service: Option<String>,
        name: String,
        weight: Option<u32>,
        state: Option<AdminState>,
        reply: oneshot::Sender<Result<BackendSample, TableError>>,
    },
    /// Drain a backend, then drop it once its connections are gone. The reply is the
    /// backend as it starts draining (it may be gone by the time the caller looks again).
    RemoveBackend {
        service: Option<String>,
        name: String,
        reply: oneshot::Sender<Result<BackendSample, TableError>>,
    },
    /// Every backend of a service with its connection counters.
    Backends {
        service: Option<String>,
        reply: oneshot::Sender<Result<Vec<BackendSample>, TableError>>,
    },
    /// Every service.
    Services {
        reply: oneshot::Sender<Vec<ServiceSample>>,
    },
    /// Every service with its backends, and the process totals (the status page).
    StatusPage {
        reply: oneshot::Sender<StatusSample>,
    },
    /// Re-read the configuration file, as SIGHUP does.
    Reload {
        reply: oneshot::Sender<Result<Outcome, ReloadError>>,
    },
    /// The metrics exposition for one scrape.
    Metrics { reply: oneshot::Sender<String> },
    /// True while the balancer accepts connections (false once stopping).
    Health { reply: oneshot::Sender<bool> },
    /// Copies of every listening socket, for an upgrade's hand-over (an error once
    /// stopping: nothing to hand over).
    Listeners {
        reply: oneshot::Sender<Result<Vec<crate::server::Inherited>, String>>,
    },
    /// Process `pid` serves on the `listeners` handed over: stop accepting and drain, as
    /// a graceful stop does. Answered once the workers were told.
    HandOver {
        pid: u32,
        listeners: usize,
        reply: oneshot::Sender<()>,
    },
}

/// One service as `GET /services` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServiceSample {
    pub name: String,
    pub protocol: &'static str,
    /// As bound (port 0 resolved).
    pub listen: Vec<String>,
    pub algorithm: &'static str,
    pub backends: usize,
    pub backends_up: usize,
    pub active_conns: u64,
    /// The TLS server names it takes on its addresses (empty: every client).
    pub sni: Vec<String>,
}

/// SIGTERM, SIGINT, SIGHUP and SIGUSR1 (reopen the access log), installed before the workers start so that a signal during
/// start-up is handled, never the default kill.
pub struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
    usr1: Signal,
}

enum Sig {
    Term,
    Int,
    Hup,
    Usr1,
}

impl Signals {
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            usr1: signal(SignalKind::user_defined1())?,
        })
    }

    async fn next(&mut self) -> Sig {
        tokio::select! {
            _ = self.term.recv() => Sig::Term,
            _ = self.int.recv() => Sig::Int,
            _ = self.hup.recv() => Sig::Hup,
            _ = self.usr1.recv() => Sig::Usr1,
        }
    }
}

async fn next_signal(signals: &mut Option<Signals>) -> Sig {
    match signals {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// Runs until the balancer has stopped (a signal or [`Command::Stop`]) and every worker
/// has exited. `notify` is told when it serves, reloads and stops (systemd).
pub async fn run(
    mut server: Server,
    mut config: Config,
    mut commands: UnboundedReceiver<Command>,
    mut signals: Option<Signals>,
    mut notify: Notifier,
) {
    let (checks_tx, mut results) = mpsc::unbounded_channel();
    let (found_tx, mut found) = mpsc::unbounded_channel();
    let channels = Channels {
        checks: checks_tx,
        found: found_tx,
    };
    let mut services: Vec<Service> = config
        .services()
        .iter()
        .map(|s| {
            let own = server.local_addrs_for(s.settings.protocol);
            Service::start(s, config.grace, &server, &channels, own)
        })
        .collect();
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut stopping = false;
    let mut counts = Counts::default();
    // A service left the routing: publish even if no table changed.
    let mut membership_changed = false;
    // SIGHUP and `POST /reload`: the file is read off this thread; applied below.
    let mut reloads = reload::Queue::default();
    // Answers to table changes, waiting for the workers to run them.
    let mut held = Held::default();
    // Every listener is bound and every worker runs (`Server::start`): clients are served.
    notify.ready(status_line(&services, &server, false));
    loop {
        tokio::select! {
            sig = next_signal(&mut signals) => match sig {
                Sig::Term => stop(&server, config.grace, &mut stopping, "SIGTERM"),
                Sig::Int => stop(&server, config.grace, &mut stopping, "SIGINT"),
                Sig::Hup => reloads.push(reload::Request { why: "SIGHUP", reply: None }),
                Sig::Usr1 => server.reopen_access_log(),
            },
            Some(cmd) = commands.recv() => {
                match cmd {
                    Command::HandOver { pid, listeners, reply } => {
                        tracing::info!(open = server.open_connections(), grace = ?config.grace,
                            "upgrade: handed {listeners} listeners to pid {pid}; stopping gracefully");
                        server.hand_over(config.grace);
                        stopping = true;
                        let _ = reply.send(());
                    }
                    cmd => {
                        let stop_now = handle(cmd, &mut services, &server, &mut held, &mut counts, &mut reloads, stopping);
                        if let Some(grace) = stop_now {
                            stop(&server, grace, &mut stopping, "stop requested");
                        }
                    }
                }
            }
            Some(r) = results.recv() => {
                if let Some(s) = services.iter_mut().find(|s| *s.name == *r.service) {
                    counts.on_check(&s.name, &r.target.name, r.result.is_ok());
                    s.table.on_check(&r.target, r.result, Instant::now());
                }
            }
            _ = poll.tick() => {
                let now = Instant::now();
                let counters = &server.shared().counters;
                for s in &mut services {
                    s.table.poll_failures(counters, now);
                    s.table.tick(counters, now);
                }
                let before = services.len();
                services.retain(|s| {
                    let gone = s.gone();
                    if gone {
                        tracing::info!("service {}: removed, its connections are gone", s.name);
                    }
                    !gone
                });
                membership_changed |= services.len() != before;
                if stopping && server.all_exited() {
                    break;
                }
                if notify.is_on() {
                    notify.status(status_line(&services, &server, stopping));
                }
                if !stopping {
                    if let Err(e) = server.supervise() {
                        tracing::error!("cannot start a worker in the place of a failed one: {e}");
                    }
                }
            }
            Some((name, candidates)) = found.recv() => {
                if let Some(s) = services.iter_mut().find(|s| s.name == name) {
                    s.discovery.found(candidates);
                }
            }
            (request, read) = reloads.finished(), if reloads.busy() => {
                let mut r = Reloader {
                    server: &server,
                    config: &mut config,
                    services: &mut services,
                    channels: &channels,
                    counts: &mut counts,
                };
                let outcome = r.apply(request.why, read);
                if let Some(reply) = request.reply {
                    answer(&mut held, reply, outcome);
                }
            }
            _ = tokio::time::sleep(settle::POLL), if !held.is_empty() => {}
        }
        reloads.start_next(&config);
        if stopping {
            notify.stopping(|| status_line(&services, &server, true));
        } else if reloads.busy() {
            notify.reloading();
        } else {
            notify.reloaded(|| status_line(&services, &server, false));
        }
        let now = Instant::now();
        for s in &mut services {
            let name = s.name.clone();
            if s.discovery
                .reconcile(&mut s.table, &s.settings.backends, now, &mut |b| {
                    server.backend_id(&name, b)
                })
            {
                s.checker.sync(&s.table.probe_targets());
            }
        }
        service::publish(
            &server,
            &mut services,
            std::mem::take(&mut membership_changed),
        );
        let now = Instant::now();
        held.published(server.published_version(), now);
        held.release(server.applied_version(), now);
    }
    held.flush();
    drop(services);
    server.join();
    tracing::info!("stopped");
}

/// One command. Returns the grace of a stop it asks for.
fn handle(
    cmd: Command,
    services: &mut [Service],
    server: &Server,
    held: &mut Held,
    counts: &mut Counts,
    reloads: &mut reload::Queue,
    stopping: bool,
) -> Option<Duration> {
    match cmd {
        Command::SetState {
            service,
            name,
            state,
            reply,
        } => {
            let r = service::pick(services, service.as_deref())
                .and_then(|s| s.table.set_state(&name, state, Instant::now()));
            answer(held, reply, r);
        }
        Command::SetBackends {
            service,
            backends,
            reply,
        } => {
            let r = service::pick(services, service.as_deref()).map(|s| {
                let name = s.name.clone();
                let now = Instant::now();
                if s.table
                    .set_backends(&backends, now, &mut |b| server.backend_id(&name, b))
                {
                    s.checker.sync(&s.table.probe_targets());
                }
            });
            answer(held, reply, r);
        }
        Command::Status { service, reply } => {
            let r = service::pick(services, service.as_deref()).map(|s| s.table.status());
            let _ = reply.send(r);
        }
        Command::Stop { grace } => return Some(grace),
        Command::AddBackend {
            service,
            spec,
            reply,
        } => {
            let (name, addr) = (spec.name.clone(), spec.addr);
            let r = service::pick(services, service.as_deref()).and_then(|s| {
                let svc = s.name.clone();
                let own = server.local_addrs_for(s.settings.protocol);
                crate::config::check_not_self(addr, &own)
                    .and_then(|()| {
                        crate::config::check_backend_protocol(s.settings.protocol, &spec)
                    })
                    .map_err(|e| TableError::Invalid(format!("backend '{name}': {e}")))?;
                let targets_changed = s
                    .table
                    .add(spec, Instant::now(), &mut |b| server.backend_id(&svc, b))?;
                tracing::info!("admin API: service {svc}: backend {name} ({addr}) added");
                if targets_changed {
                    s.checker.sync(&s.table.probe_targets());
                }
                s.sample(server, &name)
            });
            answer(held, reply, r);
        }
        Command::Update {
            service,
            name,
            weight,
            state,
            reply,
        } => {
            let r = service::pick(services, service.as_deref()).and_then(|s| {
                update(&mut s.table, &name, weight, state)?;
                s.sample(server, &name)
            });
            answer(held, reply, r);
        }
        Command::RemoveBackend {
            service,
            name,
            reply,
        } => {
            let r = service::pick(services, service.as_deref()).and_then(|s| {
                let targets_changed = s.table.remove(&name, Instant::now())?;
                tracing::info!(
                    "admin API: service {}: backend {name} removed; draining",
                    s.name
                );
                if targets_changed {
                    s.checker.sync(&s.table.probe_targets());
                }
                s.sample(server, &name)
            });
            answer(held, reply, r);
        }
        Command::Backends { service, reply } => {
            let r = service::pick(services, service.as_deref()).map(|s| s.samples(server));
            let _ = reply.send(r);
        }
        Command::Services { reply } => {
            let _ = reply.send(service_samples(services, server));
        }
        Command::StatusPage { reply } => {
            let all = service_samples(services, server)
                .into_iter()
                .map(|sample| {
                    let backends = services
                        .iter()
                        .find(|s| s.name == sample.name && !s.removing)
                        .map(|s| s.samples(server))
                        .unwrap_or_default();
                    (sample, backends)
                })
                .collect();
            let _ = reply.send(StatusSample {
                services: all,
                totals: Totals::read(server.shared()),
            });
        }
        Command::Reload { reply } => {
            reloads.push(reload::Request {
                why: "POST /reload",
                reply: Some(reply),
            });
        }
        Command::Metrics { reply } => {
            let samples: Vec<BackendSample> =
                services.iter().flat_map(|s| s.samples(server)).collect();
            let live = samples
                .iter()
                .map(|s| (s.service.as_str(), s.status.name.as_str()))
                .collect();
            counts.retain_backends(&live);
            let published = server.published_version();
            // Every service, and the UDP ones again for their own series.
            let (mut ids, mut udp) = (Vec::new(), Vec::new());
            for s in services.iter() {
                let Some(id) = server.service_id(&s.name) else {
                    continue;
                };
                if s.settings.protocol == crate::config::Protocol::Udp {
                    udp.push((s.name.to_string(), id));
                }
                ids.push((s.name.to_string(), id));
            }
            let text = metrics::encode(counts, &samples, &ids, &udp, server.shared(), published);
            let _ = reply.send(text);
        }
        Command::Health { reply } => {
            let _ = reply.send(!stopping);
        }
        Command::Listeners { reply } => {
            let copies = if stopping {
                Err("it is stopping".to_string())
            } else {
                server.listener_copies().map_err(|e| e.to_string())
            };
            let _ = reply.send(copies);
        }
        Command::HandOver { reply, .. } => {
            // Handled by the loop itself (it stops).
            let _ = reply.send(());
        }
    }
    None
}

/// The one-line status systemd shows (`systemctl status`).
fn status_line(services: &[Service], server: &Server, stopping: bool) -> String {
    if stopping {
        return format!("stopping: {} connection(s) open", server.open_connections());
    }
    let live: Vec<&Service> = services.iter().filter(|s| !s.removing).collect();
    let (mut up, mut total) = (0, 0);
    for s in &live {
        // A backend being removed (draining) is no longer one of the service's.
        let status: Vec<BackendStatus> = s
            .table
            .status()
            .into_iter()
            .filter(|b| !b.removing)
            .collect();
        total += status.len();
        up += status
            .iter()
            .filter(|b| b.state == crate::backend::BackendState::Up)
            .count();
    }
    format!(
        "serving {} service(s), {up} of {total} backend(s) up, {} connection(s) open",
        live.len(),
        server.open_connections()
    )
}

/// `GET /services`: every service that is not being removed.
fn service_samples(services: &[Service], server: &Server) -> Vec<ServiceSample> {
    let bound = server.bound();
    services
        .iter()
        .filter(|s| !s.removing)
        .map(|s| {
            let samples = s.samples(server);
            ServiceSample {
                name: s.name.clone(),
                protocol: s.settings.protocol.name(),
                listen: bound
                    .iter()
                    .filter(|b| b.service == s.name)
                    .map(|b| b.addr.to_string())
                    .collect(),
                algorithm: s.settings.algorithm.name(),
                backends: samples.len(),
                backends_up: samples
                    .iter()
                    .filter(|b| b.status.state == crate::backend::BackendState::Up)
                    .count(),
                active_conns: samples.iter().map(|b| b.active_conns).sum(),
                sni: s.settings.sni.iter().map(ToString::to_string).collect(),
            }
        })
        .collect()
}

/// Answers an error at once (nothing changed); a success once the workers run the change.
fn answer<T, E>(held: &mut Held, reply: oneshot::Sender<Result<T, E>>, r: Result<T, E>)
where
    T: Send + 'static,
    E: Send + 'static,
{
    if r.is_ok() {
        held.hold(move || {
            let _ = reply.send(r);
        });
    } else {
        let _ = reply.send(r);
    }
}

/// `PATCH /backends/{name}`: both changes or neither (both fail only on an unknown or
/// departing backend, checked first).
fn update(
    table: &mut Table,
    name: &str,
    weight: Option<u32>,
    state: Option<AdminState>,
) -> Result<(), TableError> {
    let now = Instant::now();
    match table.status().into_iter().find(|b| b.name == name) {
        None => return Err(TableError::Unknown(name.to_string())),
        Some(b) if b.removing => return Err(TableError::Removing(name.to_string())),
        Some(_) => {}
    }
    if let Some(w) = weight {
        table.set_weight(name, w, now)?;
        tracing::info!("admin API: backend {name} weight set to {w}");
    }
    if let Some(s) = state {
        table.set_state(name, s, now)?;
    }
    Ok(())
}

/// What a reload may change, borrowed from the loop.
struct Reloader<'a> {
    server: &'a Server,
    config: &'a mut Config,
    services: &'a mut Vec<Service>,
    channels: &'a Channels,
    counts: &'a mut Counts,
}

impl Reloader<'_> {
    /// Applies a configuration read again (`read`), or changes nothing if it could not be
    /// read or its new listen addresses cannot be bound.
    fn apply(
        &mut self,
        why: &str,
        read: Result<Config, ReloadError>,
    ) -> Result<Outcome, ReloadError> {
        let new = match read {
            Ok(new) => new,
            Err(e) => {
                self.counts.on_reload(false);
                tracing::error!("{why}: configuration not reloaded, nothing changed: {e}");
                return Err(e);
            }
        };
        let restart_needed = reload::restart_needed(self.config, &new);
        let new = reload::in_effect(self.config, new);
        let wanted: Vec<(std::net::SocketAddr, String, crate::config::Protocol)> = new
            .services()
            .iter()
            .flat_map(|s| {
                let protocol = s.settings.protocol;
                s.settings
                    .listen
                    .iter()
                    .map(move |a| (*a, s.name.clone(), protocol))
            })
            .collect();
        // Listeners first: the one step that can fail, and then nothing has changed.
        if let Err(e) = self.server.update_listeners(&wanted) {
            self.counts.on_reload(false);
            let e = ReloadError::Listen(e.to_string());
            tracing::error!("{why}: configuration not reloaded, nothing changed: {e}");
            return Err(e);
        }
        self.counts.on_reload(true);
        if !restart_needed.is_empty() {
            tracing::warn!(
                "{why}: {} changed in the configuration; only a restart applies that (see the README: Upgrades)",
                restart_needed.join(", ")
            );
        }
        let now = Instant::now();
        let qualified = new.has_service_tables() || self.config.has_service_tables();
        let name_of = |svc: &str, b: &str| {
            if qualified {
                format!("{svc}/{b}")
            } else {
                b.to_string()
            }
        };
        let (mut added, mut removed, mut changed) = (Vec::new(), Vec::new(), Vec::new());
        let (mut services_added, mut services_removed) = (Vec::new(), Vec::new());
        let mut backends = 0;
        let new_services = new.services();
        for sc in &new_services {
            let server = self.server;
            match self.services.iter_mut().find(|s| s.name == sc.name) {
                Some(s) => {
                    let desired = desired_backends(&s.settings, &sc.settings, &s.table);
                    let (a, r, c) = reload::diff(&s.table.specs(), &desired);
                    added.extend(a.iter().map(|b| name_of(&s.name, b)));
                    removed.extend(r.iter().map(|b| name_of(&s.name, b)));
                    changed.extend(c.iter().map(|b| name_of(&s.name, b)));
                    backends += desired.len();
                    if s.removing {
                        s.removing = false;
                        services_added.push(s.name.clone());
                    }
                    s.table.reconfigure(&sc.settings, new.grace, now);
                    let name = s.name.clone();
                    let targets_changed = s
                        .table
                        .set_backends(&desired, now, &mut |b| server.backend_id(&name, b));
                    if reload::checks_changed(&s.settings, &sc.settings) {
                        // A new schedule: the old tasks stop when the old checker drops.
                        s.checker = Checker::new(&name, &sc.settings, self.channels.checks.clone());
                        s.checker.sync(&s.table.probe_targets());
                    } else if targets_changed {
                        s.checker.sync(&s.table.probe_targets());
                    }
                    if reload::discovery_changed(&s.settings, &sc.settings) {
                        s.discovery = Discovery::start(
                            &name,
                            &sc.settings,
                            server.local_addrs_for(sc.settings.protocol),
                            self.channels.found.clone(),
                        );
                    }
                    s.settings = sc.settings.clone();
                    s.max_conns = sc.max_conns;
                    s.settings_changed = true;
                }
                None => {
                    let own = server.local_addrs_for(sc.settings.protocol);
                    let mut s = Service::start(sc, new.grace, server, self.channels, own);
                    s.settings_changed = true;
                    added.extend(
                        sc.settings
                            .backends
                            .iter()
                            .map(|b| name_of(&sc.name, &b.name)),
                    );
                    backends += sc.settings.backends.len();
                    services_added.push(sc.name.clone());
                    self.services.push(s);
                }
            }
        }
        for s in self.services.iter_mut() {
            if !s.removing && !new_services.iter().any(|n| n.name == s.name) {
                removed.extend(s.table.specs().iter().map(|b| name_of(&s.name, &b.name)));
                services_removed.push(s.name.clone());
                s.remove(now);
                tracing::info!(
                    "{why}: service {} removed: its listeners close, its connections drain",
                    s.name
                );
            }
        }
        let file = new.config_file.clone().unwrap_or_default();
        let names: Vec<String> = new_services.iter().map(|s| s.name.clone()).collect();
        let described: Vec<String> = new_services
            .iter()
            .map(|s| format!("{}: algorithm {}", s.name, s.settings.algorithm.name()))
            .collect();
        tracing::info!(
            "{why}: configuration reloaded from {}: {} service(s) [{}], {} backend(s), added [{}], removed [{}], changed [{}]",
            file.display(),
            names.len(),
            described.join("; "),
            backends,
            added.join(", "),
            removed.join(", "),
            changed.join(", "),
        );
        let outcome = Outcome {
            file,
            services: names,
            services_added,
            services_removed,
            backends,
            added,
            removed,
            changed,
            restart_needed,
        };
        *self.config = new;
        Ok(outcome)
    }
}

/// The backends a reload sets: the file's. With discovery on before and after, the
/// backends that did not come from the old file are discovery's (or the API's) and stay
/// until discovery's next reconcile decides, so a reload never drains a discovered
/// backend only to bring it back.
fn desired_backends(
    running: &ServiceSettings,
    new: &ServiceSettings,
    table: &Table,
) -> Vec<BackendSpec> {
    let mut desired = new.backends.clone();
    if running.discovery.is_some() && new.discovery.is_some() {
        for s in table.specs() {
            let from_file = running.backends.iter().any(|b| b.name == s.name);
            if !from_file && !desired.iter().any(|b| b.name == s.name) {
                desired.push(s);
            }
        }
    }
    desired
}

fn stop(server: &Server, grace: Duration, stopping: &mut bool, why: &str) {
    if *stopping {
        tracing::info!("{why} again: stopping now");
        server.stop(Duration::ZERO);
    } else {
        tracing::info!(open = server.open_connections(), grace = ?grace, "{why}: stopping gracefully");
        server.stop(grace);
        *stopping = true;
    }
}
