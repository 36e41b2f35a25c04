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
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::sync::oneshot;

use crate::config::{BackendSpec, Config};
use crate::server::Server;

use super::backends::{AdminState, BackendStatus, Table, TableError};
use super::checker::{CheckResult, Checker};
use super::discovery::Discovery;
use super::metrics::{self, BackendSample, Counts};
use super::reload::{self, Outcome, ReloadError};
use super::settle::{self, Held};
use super::slow_start;

/// How often the workers' failure counters and the clock are looked at: the passive
/// ejection reacts within this.
pub const POLL: Duration = Duration::from_millis(100);

/// A request to the control loop (from [`super::Controller`] and the admin API).
#[derive(Debug)]
pub enum Command {
    SetState {
        name: String,
        state: AdminState,
        reply: oneshot::Sender<Result<(), TableError>>,
    },
    SetBackends {
        backends: Vec<BackendSpec>,
        reply: oneshot::Sender<()>,
    },
    Status {
        reply: oneshot::Sender<Vec<BackendStatus>>,
    },
    /// Stop accepting; let open connections finish within `grace`.
    Stop { grace: Duration },
    /// Add one backend (validated by the caller); it is up at once. The reply is the
    /// backend as added.
    AddBackend {
        spec: BackendSpec,
        reply: oneshot::Sender<Result<BackendSample, TableError>>,
    },
    /// Change a backend's weight and/or operator state; nothing changes on an error. The
    /// reply is the backend as changed.
    Update {
        name: String,
        weight: Option<u32>,
        state: Option<AdminState>,
        reply: oneshot::Sender<Result<BackendSample, TableError>>,
    },
    /// Drain a backend, then drop it once its connections are gone. The reply is the
    /// backend as it starts draining (it may be gone by the time the caller looks again).
    RemoveBackend {
        name: String,
        reply: oneshot::Sender<Result<BackendSample, TableError>>,
    },
    /// Every backend with its connection counters.
    Backends {
        reply: oneshot::Sender<Vec<BackendSample>>,
    },
    /// Re-read the configuration file, as SIGHUP does.
    Reload {
        reply: oneshot::Sender<Result<Outcome, ReloadError>>,
    },
    /// The metrics exposition for one scrape.
    Metrics { reply: oneshot::Sender<String> },
    /// True while the balancer accepts connections (false once stopping).
    Health { reply: oneshot::Sender<bool> },
}

/// SIGTERM, SIGINT and SIGHUP, installed before the workers start so that a signal during
/// start-up is handled, never the default kill.
pub struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

enum Sig {
    Term,
    Int,
    Hup,
}

impl Signals {
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn next(&mut self) -> Sig {
        tokio::select! {
            _ = self.term.recv() => Sig::Term,
            _ = self.int.recv() => Sig::Int,
            _ = self.hup.recv() => Sig::Hup,
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
/// has exited.
pub async fn run(
    mut server: Server,
    mut config: Config,
    mut commands: UnboundedReceiver<Command>,
    mut signals: Option<Signals>,
) {
    if !config.service.slow_start.is_zero() && !slow_start::applies_to(config.service.algorithm) {
        tracing::warn!(
            "--slow-start has no effect with --algorithm {}; use a weighted or least-* algorithm",
            config.service.algorithm.name()
        );
    }
    let mut table = Table::new(&config, &mut |name| server.backend_id(name));
    let (results_tx, mut results) = mpsc::unbounded_channel();
    let mut checker = Checker::new(&config, results_tx.clone());
    checker.sync(&table.probe_targets());
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut stopping = false;
    let mut counts = Counts::default();
    // The settings changed (a reload): publish even if the table did not.
    let mut settings_changed = false;
    // `--discovery`: resolves in a task of its own; its answers arrive below.
    let mut discovery = Discovery::start(&config);
    // SIGHUP and `POST /reload`: the file is read off this thread; applied below.
    let mut reloads = reload::Queue::default();
    // Answers to table changes, waiting for the workers to run them.
    let mut held = Held::default();
    loop {
        tokio::select! {
            sig = next_signal(&mut signals) => match sig {
                Sig::Term => stop(&server, config.grace, &mut stopping, "SIGTERM"),
                Sig::Int => stop(&server, config.grace, &mut stopping, "SIGINT"),
                Sig::Hup => reloads.push(reload::Request { why: "SIGHUP", reply: None }),
            },
            Some(cmd) = commands.recv() => match cmd {
                Command::SetState { name, state, reply } => {
                    let r = table.set_state(&name, state, Instant::now());
                    answer(&mut held, reply, r);
                }
                Command::SetBackends { backends, reply } => {
                    let now = Instant::now();
                    if table.set_backends(&backends, now, &mut |name| server.backend_id(name)) {
                        checker.sync(&table.probe_targets());
                    }
                    held.hold(move || {
                        let _ = reply.send(());
                    });
                }
                Command::Status { reply } => {
                    let _ = reply.send(table.status());
                }
                Command::Stop { grace } => stop(&server, grace, &mut stopping, "stop requested"),
                Command::AddBackend { spec, reply } => {
                    let (name, addr) = (spec.name.clone(), spec.addr);
                    let r = match crate::config::check_not_self(addr, server.local_addrs()) {
                        Err(e) => Err(TableError::Invalid(format!("backend '{name}': {e}"))),
                        Ok(()) => table.add(spec, Instant::now(), &mut |name| server.backend_id(name)),
                    };
                    if let Ok(targets_changed) = r {
                        tracing::info!("admin API: backend {name} ({addr}) added");
                        if targets_changed {
                            checker.sync(&table.probe_targets());
                        }
                    }
                    answer(&mut held, reply, r.and_then(|_| sample(&table, &server, &name)));
                }
                Command::Update { name, weight, state, reply } => {
                    let r = update(&mut table, &name, weight, state);
                    answer(&mut held, reply, r.and_then(|_| sample(&table, &server, &name)));
                }
                Command::RemoveBackend { name, reply } => {
                    let r = table.remove(&name, Instant::now());
                    if let Ok(targets_changed) = r {
                        tracing::info!("admin API: backend {name} removed; draining");
                        if targets_changed {
                            checker.sync(&table.probe_targets());
                        }
                    }
                    answer(&mut held, reply, r.and_then(|_| sample(&table, &server, &name)));
                }
                Command::Backends { reply } => {
                    let _ = reply.send(samples(&table, &server));
                }
                Command::Reload { reply } => {
                    reloads.push(reload::Request { why: "POST /reload", reply: Some(reply) });
                }
                Command::Metrics { reply } => {
                    let samples = samples(&table, &server);
                    let names = samples.iter().map(|s| s.status.name.as_str()).collect();
                    counts.retain_backends(&names);
                    let published = server.published_version();
                    let text = metrics::encode(&counts, &samples, server.shared(), published);
                    let _ = reply.send(text);
                }
                Command::Health { reply } => {
                    let _ = reply.send(!stopping);
                }
            },
            Some(r) = results.recv() => {
                counts.on_check(&r.target.name, r.result.is_ok());
                table.on_check(&r.target, r.result, Instant::now());
            }
            _ = poll.tick() => {
                let now = Instant::now();
                let counters = &server.shared().counters;
                table.poll_failures(counters, now);
                table.tick(counters, now);
                if stopping && server.all_exited() {
                    break;
                }
                if !stopping {
                    if let Err(e) = server.supervise() {
                        tracing::error!("cannot start a worker in the place of a failed one: {e}");
                    }
                }
            }
            found = discovery.next() => discovery.found(found),
            (request, read) = reloads.finished(), if reloads.busy() => {
                let mut r = Reloader {
                    server: &server,
                    config: &mut config,
                    table: &mut table,
                    checker: &mut checker,
                    results_tx: &results_tx,
                    counts: &mut counts,
                };
                let outcome = r.apply(request.why, read);
                settings_changed |= outcome.is_ok();
                if let Some(reply) = request.reply {
                    answer(&mut held, reply, outcome);
                }
            }
            _ = tokio::time::sleep(settle::POLL), if !held.is_empty() => {}
        }
        reloads.start_next(&config);
        if discovery.reconcile(
            &mut table,
            &config.service.backends,
            Instant::now(),
            &mut |name| server.backend_id(name),
        ) {
            checker.sync(&table.probe_targets());
        }
        if table.take_dirty() | std::mem::take(&mut settings_changed) {
            if let Err(e) = server.publish_entries(&table.entries(), &config) {
                tracing::error!("cannot publish the backend table: {e}");
            }
        }
        let now = Instant::now();
        held.published(server.published_version(), now);
        held.release(server.applied_version(), now);
    }
    held.flush();
    drop(checker);
    server.join();
    tracing::info!("stopped");
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

/// Backend `name`, which the caller has just changed (so it is in the table), with the
/// workers' counters: taken in the same event as the change, so the answer describes it
/// even if the backend leaves the table right after (a drained removal does at the next
/// tick).
fn sample(table: &Table, server: &Server, name: &str) -> Result<BackendSample, TableError> {
    let status = table
        .status()
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| TableError::Unknown(name.to_string()))?;
    let id = server.backend_id(name);
    Ok(BackendSample::new(status, id, server.shared()))
}

/// Every backend in the table with the workers' counters.
fn samples(table: &Table, server: &Server) -> Vec<BackendSample> {
    table
        .status()
        .into_iter()
        .map(|s| {
            let id = server.backend_id(&s.name);
            BackendSample::new(s, id, server.shared())
        })
        .collect()
}

/// What a reload may change, borrowed from the loop.
struct Reloader<'a> {
    server: &'a Server,
    config: &'a mut Config,
    table: &'a mut Table,
    checker: &'a mut Checker,
    results_tx: &'a UnboundedSender<CheckResult>,
    counts: &'a mut Counts,
}

impl Reloader<'_> {
    /// Applies a configuration read again (`read`), or changes nothing if it could not be
    /// read. The caller publishes on `Ok` (with the new settings) even if no backend
    /// changed: the algorithm or a timeout may have.
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
        self.counts.on_reload(true);
        let restart_needed = reload::restart_needed(self.config, &new);
        if !restart_needed.is_empty() {
            tracing::warn!(
                "{why}: {} changed in the configuration; only a restart applies that (see the README: zero-downtime restart)",
                restart_needed.join(", ")
            );
        }
        let new = reload::in_effect(self.config, new);
        let desired = desired_backends(self.config, &new, self.table);
        let (added, removed, changed) = reload::diff(&self.table.specs(), &desired);
        let now = Instant::now();
        self.table.reconfigure(&new, now);
        let server = self.server;
        let targets_changed = self
            .table
            .set_backends(&desired, now, &mut |name| server.backend_id(name));
        if reload::checks_changed(self.config, &new) {
            // A new schedule: the old tasks stop when the old checker drops.
            *self.checker = Checker::new(&new, self.results_tx.clone());
            self.checker.sync(&self.table.probe_targets());
        } else if targets_changed {
            self.checker.sync(&self.table.probe_targets());
        }
        let file = new.config_file.clone().unwrap_or_default();
        tracing::info!(
            "{why}: configuration reloaded from {}: {} backend(s), added [{}], removed [{}], changed [{}]; algorithm {}",
            file.display(),
            desired.len(),
            added.join(", "),
            removed.join(", "),
            changed.join(", "),
            new.service.algorithm.name()
        );
        let outcome = Outcome {
            file,
            backends: desired.len(),
            added,
            removed,
            changed,
            restart_needed,
        };
        *self.config = new;
        Ok(outcome)
    }
}

/// The backends a reload sets: the file's. With `--discovery` on before and after, the
/// backends that did not come from the old file are discovery's (or the API's) and stay
/// until discovery's next reconcile decides, so a reload never drains a discovered
/// backend only to bring it back.
fn desired_backends(running: &Config, new: &Config, table: &Table) -> Vec<BackendSpec> {
    let mut desired = new.service.backends.clone();
    if running.service.discovery.is_some() && new.service.discovery.is_some() {
        for s in table.specs() {
            let from_file = running.service.backends.iter().any(|b| b.name == s.name);
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
