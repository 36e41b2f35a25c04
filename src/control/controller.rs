//! A balancer running on a control thread of its own, driven through a handle: what tests
//! and embedders use where the binary would use signals. With `admin` set in the config
//! it serves the admin API too.

use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::mpsc::{self, UnboundedSender};
use tokio::sync::oneshot;

use crate::config::{BackendSpec, Config};
use crate::server::{Server, StartError};

use super::admin;
use super::backends::{AdminState, BackendStatus, TableError};
use super::event_loop::{self, Command};
use super::notify::Notifier;

/// Why a [`Controller`] call failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("cannot start the control thread: {0}")]
    Thread(std::io::Error),
    #[error("cannot listen on {addr} (admin endpoint): {source}")]
    Admin {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the control thread has stopped")]
    Stopped,
    #[error(transparent)]
    Table(#[from] TableError),
}

/// Handle to a running balancer and its control thread. Dropping it stops the balancer at
/// once; [`stop`](Self::stop) stops it gracefully.
pub struct Controller {
    commands: UnboundedSender<Command>,
    thread: Option<JoinHandle<()>>,
    local_addrs: Vec<SocketAddr>,
    admin_addr: Option<SocketAddr>,
}

impl Controller {
    /// Starts the workers and the control loop (health checks included); returns once the
    /// balancer accepts connections, or fails with nothing left running.
    pub fn start(config: &Config) -> Result<Controller, ControlError> {
        let (tx, rx) = mpsc::unbounded_channel();
        type Ready = Result<(Vec<SocketAddr>, Option<SocketAddr>), ControlError>;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Ready>();
        let config = config.clone();
        let admin_tx = tx.clone();
        let thread = std::thread::Builder::new()
            .name("uringlb-control".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(ControlError::Thread(e)));
                        return;
                    }
                };
                rt.block_on(async move {
                    let admin = match config.admin.map(|addr| (addr, admin::bind(addr))) {
                        None => None,
                        Some((_, Ok(l))) => Some(l),
                        Some((addr, Err(source))) => {
                            let _ = ready_tx.send(Err(ControlError::Admin { addr, source }));
                            return;
                        }
                    };
                    let server = match Server::start(&config) {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.into()));
                            return;
                        }
                    };
                    let admin_addr = admin.map(|l| {
                        let addr = l.addr();
                        admin::spawn(l, config.admin_token.clone(), admin_tx);
                        addr
                    });
                    let _ = ready_tx.send(Ok((server.local_addrs().to_vec(), admin_addr)));
                    event_loop::run(server, config, rx, None, Notifier::off()).await;
                });
            })
            .map_err(ControlError::Thread)?;
        match ready_rx.recv() {
            Ok(Ok((local_addrs, admin_addr))) => Ok(Controller {
                commands: tx,
                thread: Some(thread),
                local_addrs,
                admin_addr,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(ControlError::Stopped)
            }
        }
    }

    /// The bound listen addresses (port 0 resolved).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// The admin endpoint's bound address, if `admin` was set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Sets a backend to up, drain or maint (see [`AdminState`]); returns once every worker
    /// routes new connections with the change.
    pub fn set_state(&self, name: &str, state: AdminState) -> Result<(), ControlError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::SetState {
            service: None,
            name: name.to_string(),
            state,
            reply,
        })?;
        rx.blocking_recv().map_err(|_| ControlError::Stopped)??;
        Ok(())
    }

    /// Replaces the configured backends: missing ones drain and go, new ones are added;
    /// returns once every worker routes new connections with the change.
    pub fn set_backends(&self, backends: Vec<BackendSpec>) -> Result<(), ControlError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::SetBackends {
            service: None,
            backends,
            reply,
        })?;
        rx.blocking_recv().map_err(|_| ControlError::Stopped)??;
        Ok(())
    }

    /// Every backend's state now.
    pub fn status(&self) -> Result<Vec<BackendStatus>, ControlError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Status {
            service: None,
            reply,
        })?;
        Ok(rx.blocking_recv().map_err(|_| ControlError::Stopped)??)
    }

    /// Stops accepting, lets open connections finish within `grace`, and waits for it.
    pub fn stop(mut self, grace: Duration) {
        let _ = self.send(Command::Stop { grace });
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn send(&self, cmd: Command) -> Result<(), ControlError> {
        self.commands.send(cmd).map_err(|_| ControlError::Stopped)
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.send(Command::Stop {
                grace: Duration::ZERO,
            });
            let _ = t.join();
        }
    }
}
