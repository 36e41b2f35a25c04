//! The control loop: one task on the control thread's runtime that owns the backend
//! [`Table`] and reacts to everything that may change it: health-check results, the
//! workers' connect-failure counters (polled every 100 ms), time passing (ejection
//! back-offs, slow-start steps, removals), commands, and signals. After each event it
//! publishes a new snapshot if the table changed, so one event means at most one snapshot.

use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc::{self, UnboundedReceiver};
use tokio::sync::oneshot;

use crate::config::{BackendSpec, Config};
use crate::server::Server;

use super::backends::{AdminState, BackendStatus, Table, TableError};
use super::checker::Checker;
use super::slow_start;

/// How often the workers' failure counters and the clock are looked at: the passive
/// ejection reacts within this.
pub const POLL: Duration = Duration::from_millis(100);

/// A request to the control loop (from [`super::Controller`], later the admin API).
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
    server: Server,
    config: Config,
    mut commands: UnboundedReceiver<Command>,
    mut signals: Option<Signals>,
) {
    if !config.slow_start.is_zero() && !slow_start::applies_to(config.algorithm) {
        tracing::warn!(
            "--slow-start has no effect with --algorithm {}; use a weighted or least-* algorithm",
            config.algorithm.name()
        );
    }
    let mut table = Table::new(&config, &mut |name| server.backend_id(name));
    let (results_tx, mut results) = mpsc::unbounded_channel();
    let mut checker = Checker::new(&config, results_tx);
    checker.sync(&table.probe_targets());
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut stopping = false;
    loop {
        tokio::select! {
            sig = next_signal(&mut signals) => match sig {
                Sig::Term => stop(&server, config.grace, &mut stopping, "SIGTERM"),
                Sig::Int => stop(&server, config.grace, &mut stopping, "SIGINT"),
                Sig::Hup => tracing::warn!("SIGHUP: configuration reload is not supported yet; ignored"),
            },
            Some(cmd) = commands.recv() => match cmd {
                Command::SetState { name, state, reply } => {
                    let _ = reply.send(table.set_state(&name, state, Instant::now()));
                }
                Command::SetBackends { backends, reply } => {
                    let now = Instant::now();
                    if table.set_backends(&backends, now, &mut |name| server.backend_id(name)) {
                        checker.sync(&table.probe_targets());
                    }
                    let _ = reply.send(());
                }
                Command::Status { reply } => {
                    let _ = reply.send(table.status());
                }
                Command::Stop { grace } => stop(&server, grace, &mut stopping, "stop requested"),
            },
            Some(r) = results.recv() => table.on_check(&r.target, r.result, Instant::now()),
            _ = poll.tick() => {
                let now = Instant::now();
                let counters = &server.shared().counters;
                table.poll_failures(counters, now);
                table.tick(counters, now);
                if stopping && server.all_exited() {
                    break;
                }
            }
        }
        if table.take_dirty() {
            if let Err(e) = server.publish_entries(&table.entries(), &config) {
                tracing::error!("cannot publish the backend table: {e}");
            }
        }
    }
    drop(checker);
    server.join();
    tracing::info!("stopped");
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
