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
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let signals = event_loop::Signals::install()?;
        let admin = match config.admin {
            Some(addr) => Some(admin::bind(addr).map_err(|e| admin_bind_failed(addr, e))?),
            None => None,
        };
        let server = Server::start(config).map_err(StartFailed)?;
        let (commands, rx) = mpsc::unbounded_channel();
        if let Some(listener) = admin {
            admin::spawn(listener, config.admin_token.clone(), commands);
        }
        let notify = notify::Notifier::from_env();
        event_loop::run(server, config.clone(), rx, Some(signals), notify).await;
        Ok(())
    });
    // A reload's DNS lookup still running on the blocking pool must not hold the exit.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    result
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
