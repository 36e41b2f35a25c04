//! The control thread: a tokio current_thread runtime that owns everything but the data
//! path: signal handling (SIGTERM/SIGINT graceful stop; a second one stops at once), the
//! active health checks, passive ejection, draining and slow start. It never touches a
//! connection; it talks to the workers through [`Server`] by publishing snapshots (the
//! way a snapshot reaches the workers: docs/ARCHITECTURE.md).
//!
//! - [`backends`]: the backend table and the rules that derive each backend's state;
//! - [`checker`]: schedules the health probes;
//! - [`slow_start`]: the weight ramp of a recovered backend;
//! - [`event_loop`]: the loop that ties them together and publishes;
//! - [`discovery`]: DNS SRV discovery (`--discovery`), feeding the loop's table;
//! - [`admin`]: the HTTP API (`--admin`), which sends the loop [`event_loop::Command`]s;
//! - [`metrics`]: `/metrics`, summed from the workers' counters at scrape time;
//! - [`reload`]: SIGHUP and `POST /reload`;
//! - [`notify`]: systemd's readiness notifications (`NOTIFY_SOCKET`);
//! - [`settle`]: answers to table changes held until every worker runs them;
//! - [`upgrade`]: the listener hand-over of a binary upgrade (`--upgrade-socket`);
//! - [`controller`]: the same loop on a thread of its own, behind a handle (tests).

pub mod admin;
pub mod backends;
pub mod checker;
pub mod controller;
pub mod discovery;
pub mod event_loop;
pub mod metrics;
pub mod notify;
pub mod reload;
pub mod service;
pub mod settle;
pub mod slow_start;
pub mod upgrade;

pub use backends::{AdminState, BackendStatus, Table, TableError};
pub use controller::{ControlError, Controller};

use tokio::sync::mpsc;

use crate::config::Config;
use crate::server::{Server, StartError};

/// Starts the balancer and runs the control loop until it has stopped.
///
/// Signal handlers are installed before the workers start, so a SIGTERM that arrives during
/// start-up is a graceful stop too, never the default kill.
pub fn run(config: &Config) -> anyhow::Result<()> {
    // First, before any other thread reads the environment this removes variables from.
    let activated = crate::uring::fd::systemd_listen_fds()
        .map_err(|e| StartFailed(StartError::Activation(format!("socket activation: {e}"))))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let signals = event_loop::Signals::install()?;
        // With an upgrade socket: everything a start checks is checked before a running
        // balancer is asked for anything, so a bad configuration leaves it untouched.
        let (upgrade_socket, taken) = match &config.upgrade_socket {
            Some(path) => {
                crate::server::check(config).map_err(StartFailed)?;
                let listening = upgrade::Listening::bind(path).map_err(upgrade_failed)?;
                let taken = upgrade::take_over(path).map_err(upgrade_failed)?;
                (Some(listening), taken)
            }
            None => (None, None),
        };
        let (mut taken, listeners, old_admin) = match taken {
            Some(mut t) => {
                let listeners = std::mem::take(&mut t.listeners);
                let admin = t.admin.take();
                (Some(t), listeners, admin)
            }
            None => (None, Vec::new(), None),
        };
        // The old process's admin socket if it was for the same address, else a new one.
        let admin = match config.admin {
            Some(addr) => {
                let adopted = old_admin
                    .filter(|(wanted, _)| *wanted == addr)
                    .map(|(_, fd)| admin::adopt(fd));
                Some(match adopted {
                    Some(l) => (l.map_err(|e| admin_bind_failed(addr, e))?, true),
                    None => (
                        admin::bind(addr).map_err(|e| admin_bind_failed(addr, e))?,
                        false,
                    ),
                })
            }
            None => None,
        };
        let server = Server::start_with(config, listeners, activated).map_err(StartFailed)?;
        let (commands, rx) = mpsc::unbounded_channel();
        let mut admin_taken = false;
        let mut admin_hand_over = None;
        if let Some((listener, adopted)) = admin {
            admin_taken = adopted;
            let fd = listener.try_clone_fd();
            let task = admin::spawn(listener, config.admin_token.clone(), commands.clone());
            if let (Ok(fd), Some(wanted)) = (fd, config.admin) {
                admin_hand_over = Some(upgrade::AdminHandOver { wanted, fd, task });
            }
        }
        // Serving (every worker runs): the old process may stop accepting.
        if let Some(t) = taken.take() {
            t.ready(admin_taken);
        }
        let published = match upgrade_socket {
            Some(l) => match l.publish(commands.clone(), admin_hand_over) {
                Ok(p) => Some(p),
                Err(e) => {
                    // Serving already: an upgrade will not find this process, nothing else.
                    tracing::error!("{e}; binary upgrades by hand-over are off");
                    None
                }
            },
            None => None,
        };
        let notify = notify::Notifier::from_env();
        event_loop::run(server, config.clone(), rx, Some(signals), notify).await;
        if let Some(p) = published {
            p.remove();
        }
        Ok(())
    });
    // A reload's DNS lookup still running on the blocking pool must not hold the exit.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

/// The upgrade socket cannot be bound or reached: a start-up error (exit 2).
fn upgrade_failed(e: std::io::Error) -> StartFailed {
    StartFailed(StartError::Upgrade(e))
}

/// A busy or bad `--admin` address is a start-up error like a busy `--listen` (exit 2).
fn admin_bind_failed(addr: std::net::SocketAddr, e: std::io::Error) -> StartFailed {
    StartFailed(StartError::Listen {
        addr,
        source: std::io::Error::new(e.kind(), format!("admin endpoint: {e}")),
    })
}

/// A start-up failure, kept distinct so that `main` exits with status 2 for it.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct StartFailed(pub StartError);
