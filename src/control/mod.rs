//! The control thread: a tokio current_thread runtime that owns everything but the data
//! path. Here: signal handling (SIGTERM/SIGINT graceful stop; a second one stops at once).
//! It never touches a connection; it talks to the workers through [`Server`].

use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};

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
    rt.block_on(async {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let server = Server::start(config).map_err(StartFailed)?;
        let mut stopping = false;
        loop {
            tokio::select! {
                _ = term.recv() => stop(&server, config.grace, &mut stopping, "SIGTERM"),
                _ = int.recv() => stop(&server, config.grace, &mut stopping, "SIGINT"),
                _ = hup.recv() => tracing::warn!("SIGHUP: configuration reload is not supported yet; ignored"),
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    if server.all_exited() {
                        break;
                    }
                }
            }
        }
        server.join();
        tracing::info!("stopped");
        Ok(())
    })
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

/// A start-up failure, kept distinct so that `main` exits with status 2 for it.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct StartFailed(pub StartError);
