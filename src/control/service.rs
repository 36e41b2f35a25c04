//! One service on the control thread: its settings, its backend [`Table`], its health
//! [`Checker`] and its [`Discovery`]. The control loop holds one per service and sends
//! each event to the service it concerns; a change to any of them publishes that
//! service's new snapshot.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use crate::config::{ServiceConfig, ServiceSettings};
use crate::server::{BackendEntry, Server, ServiceTable};

use super::backends::{Table, TableError};
use super::checker::{CheckResult, Checker};
use super::discovery::{Candidate, Discovery};
use super::metrics::BackendSample;

/// Where a service's background work reports to the control loop.
#[derive(Clone)]
pub struct Channels {
    pub checks: UnboundedSender<CheckResult>,
    pub found: UnboundedSender<(String, Vec<Candidate>)>,
}

pub struct Service {
    pub name: String,
    pub settings: ServiceSettings,
    /// The service's own limit on open clients.
    pub max_conns: Option<usize>,
    pub table: Table,
    pub checker: Checker,
    pub discovery: Discovery,
    /// Removed by a reload: its listeners are closed, its backends drain, and it is gone
    /// once the last one is.
    pub removing: bool,
    /// Its settings changed (a reload): publish even if the table did not.
    pub settings_changed: bool,
}

impl Service {
    /// Starts a service with every configured backend up (as the server published them).
    pub fn start(
        config: &ServiceConfig,
        grace: Duration,
        server: &Server,
        channels: &Channels,
        listen: Vec<SocketAddr>,
    ) -> Service {
        let name = config.name.clone();
        let settings = config.settings.clone();
        if !settings.slow_start.is_zero() && !super::slow_start::applies_to(settings.algorithm) {
            tracing::warn!(
                "service {name}: slow start has no effect with algorithm {}; use a weighted or least-* algorithm",
                settings.algorithm.name()
            );
        }
        let table = Table::for_service(&settings, grace, &mut |b| server.backend_id(&name, b));
        let mut checker = Checker::new(&name, &settings, channels.checks.clone());
        checker.sync(&table.probe_targets());
        let discovery = Discovery::start(&name, &settings, listen, channels.found.clone());
        Service {
            name,
            settings,
            max_conns: config.max_conns,
            table,
            checker,
            discovery,
            removing: false,
            settings_changed: false,
        }
    }

    /// The backends and policy to publish, if anything changed since the last time.
    fn take_changes(&mut self) -> Option<(Vec<BackendEntry>, crate::backend::Policy)> {
        let changed = self.table.take_dirty() | std::mem::take(&mut self.settings_changed);
        changed.then(|| (self.table.entries(), self.settings.policy()))
    }

    /// Every backend with the workers' counters.
    pub fn samples(&self, server: &Server) -> Vec<BackendSample> {
        self.table
            .status()
            .into_iter()
            .map(|s| {
                let id = server.backend_id(&self.name, &s.name);
                BackendSample::new(&self.name, s, id, server.shared())
            })
            .collect()
    }

    /// Backend `name`, which the caller has just changed (so it is in the table), with the
    /// workers' counters: taken in the same event as the change, so the answer describes it
    /// even if the backend leaves the table right after.
    pub fn sample(&self, server: &Server, name: &str) -> Result<BackendSample, TableError> {
        let status = self
            .table
            .status()
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| TableError::Unknown(name.to_string()))?;
        let id = server.backend_id(&self.name, name);
        Ok(BackendSample::new(&self.name, status, id, server.shared()))
    }

    /// Starts removing the service: every backend drains; [`Service::gone`] once they
    /// have.
    pub fn remove(&mut self, now: Instant) {
        self.removing = true;
        self.settings_changed = true;
        for b in self.table.specs() {
            let _ = self.table.remove(&b.name, now);
        }
        self.checker.sync(&self.table.probe_targets());
    }

    /// Removed and drained: it can leave the routing.
    pub fn gone(&self) -> bool {
        self.removing && self.table.status().is_empty()
    }
}

/// Publishes the services that changed; `services` are the routing's services (one that
/// left since the last publish is dropped from it: then `force`).
pub fn publish(server: &Server, services: &mut [Service], force: bool) {
    let changes: Vec<(usize, Vec<BackendEntry>, crate::backend::Policy)> = services
        .iter_mut()
        .enumerate()
        .filter_map(|(i, s)| s.take_changes().map(|(e, p)| (i, e, p)))
        .collect();
    if changes.is_empty() && !force {
        return;
    }
    let tables: Vec<ServiceTable<'_>> = changes
        .iter()
        .map(|(i, entries, policy)| ServiceTable {
            name: &services[*i].name,
            entries,
            policy: policy.clone(),
            accepting: !services[*i].removing,
            max_conns: services[*i].max_conns,
        })
        .collect();
    let live: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
    if let Err(e) = server.publish(&tables, &live) {
        tracing::error!("cannot publish the backend tables: {e}");
    }
}

/// The service a request names, or the only one when it names none.
pub fn pick<'a>(
    services: &'a mut [Service],
    name: Option<&str>,
) -> Result<&'a mut Service, TableError> {
    match name {
        Some(n) => services
            .iter_mut()
            .find(|s| s.name == n && !s.removing)
            .ok_or_else(|| TableError::UnknownService(n.to_string())),
        None => {
            let live: Vec<usize> = (0..services.len())
                .filter(|&i| !services[i].removing)
                .collect();
            match live.as_slice() {
                [i] => Ok(&mut services[*i]),
                _ => Err(TableError::Ambiguous(
                    live.iter().map(|&i| services[i].name.clone()).collect(),
                )),
            }
        }
    }
}
