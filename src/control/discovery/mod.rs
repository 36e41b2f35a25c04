//! Service discovery from DNS SRV records (`--discovery dns-srv:NAME[@RESOLVER]`): how
//! Consul's DNS interface and Kubernetes headless services publish endpoints; and from
//! Consul's HTTP health API (`--discovery consul:SERVICE[@HOST:PORT]`).
//!
//! - [`records`] (pure): SRV records -> backend specs: stable names (`TARGET:PORT`),
//!   weights (0 -> 1, clamped to the config's maximum), priority classes, and the union
//!   with static `--backend`s;
//! - [`resolve`] (I/O): the task that resolves with hickory-resolver every
//!   `--discovery-interval` or at TTL expiry, whichever is first;
//! - [`consul`] (pure) and [`consul_watch`] (I/O): Consul's health answers to backend
//!   specs, followed with blocking queries;
//! - [`reconcile`]: applies the answer to the control loop's table (removed backends
//!   drain), and hands over to the next priority class while the first one is all down.
//!
//! Several balancer instances fed by the same DNS answers get the same names and weights,
//! so they build the same Maglev table and send a client to the same backend.
//!
//! The counters below are process-wide statics so that the metrics endpoint can read them
//! without a handle to the control loop.

pub mod consul;
pub mod consul_watch;
pub mod reconcile;
pub mod records;
pub mod resolve;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::sync::mpsc::{self, UnboundedSender};
use tokio::task::JoinHandle;

use crate::backend::BackendId;
use crate::config::{parse_consul_token, BackendSpec, ConsulSource, ServiceSettings};
use crate::control::backends::Table;

pub use reconcile::Reconciler;
pub use records::Candidate;
pub use resolve::Source;

/// Failed resolutions (timeout, SERVFAIL, NXDOMAIN, no usable record, a target's address
/// lookup failing), since the process started: `uringlb_discovery_failures_total`.
pub static FAILURES: AtomicU64 = AtomicU64::new(0);
/// Successful resolutions since the process started: `uringlb_discovery_resolutions_total`.
pub static RESOLUTIONS: AtomicU64 = AtomicU64::new(0);
/// Backends in the latest successful answer (all priority classes).
pub static DISCOVERED: AtomicU64 = AtomicU64::new(0);

/// [`FAILURES`] now.
pub fn failures() -> u64 {
    FAILURES.load(Ordering::Relaxed)
}

/// The control loop's end of discovery: the resolver task's answers and the
/// [`Reconciler`] that applies them. Inert when `--discovery` is not set. Dropping it
/// stops the task.
#[derive(Debug)]
pub struct Discovery {
    task: Option<JoinHandle<()>>,
    reconciler: Reconciler,
    /// The balancer's listen addresses: a discovered backend at one of them is dropped.
    listen: Vec<std::net::SocketAddr>,
}

impl Discovery {
    /// Starts the resolver task for service `service`'s `discovery`, if set; its answers
    /// arrive on `found` tagged with the service's name. `listen` are the balancer's
    /// listen addresses. Must run inside the control thread's tokio runtime.
    pub fn start(
        service: &str,
        settings: &ServiceSettings,
        listen: Vec<std::net::SocketAddr>,
        found: UnboundedSender<(String, Vec<Candidate>)>,
    ) -> Discovery {
        let off = Discovery {
            task: None,
            reconciler: Reconciler::new(),
            listen: listen.clone(),
        };
        let Some(spec) = &settings.discovery else {
            return off;
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (watcher, source_label) = if spec.trim().starts_with("consul:") {
            let source = match ConsulSource::parse(spec) {
                Ok(s) => s,
                Err(e) => {
                    // validate() has accepted it, so this is not expected; never panic for it.
                    tracing::error!("service {service}: discovery off: {e}");
                    return off;
                }
            };
            let token = consul_token(service, settings);
            tracing::info!(
                "service {service}: discovery following Consul service {} at {} (blocking queries{})",
                source.service,
                source.authority(),
                if token.is_some() { ", with an ACL token" } else { "" }
            );
            let watch = consul_watch::run(source, token, settings.discovery_interval, tx);
            (tokio::spawn(watch), "Consul")
        } else {
            let source = match Source::parse(spec) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!("service {service}: discovery off: {e}");
                    return off;
                }
            };
            tracing::info!(
                "service {service}: discovery resolving SRV {} via {} every {:?} (or at TTL expiry)",
                source.name,
                source
                    .resolver
                    .map_or_else(|| "the system resolver".to_string(), |a| a.to_string()),
                settings.discovery_interval
            );
            let interval = settings.discovery_interval;
            (tokio::spawn(resolve::run(source, interval, tx)), "DNS")
        };
        let name = service.to_string();
        let task = tokio::spawn(async move {
            while let Some(c) = rx.recv().await {
                if found.send((name.clone(), c)).is_err() {
                    break;
                }
            }
            watcher.abort();
        });
        Discovery {
            task: Some(task),
            reconciler: Reconciler::for_source(source_label),
            listen,
        }
    }

    /// Takes an answer from the resolver. A backend at one of the balancer's own
    /// listen addresses is left out (it would loop), with a warning.
    pub fn found(&mut self, mut candidates: Vec<Candidate>) {
        candidates.retain(|c| {
            let own = crate::config::check_not_self(c.spec.addr, &self.listen);
            if let Err(e) = &own {
                tracing::warn!("discovery: backend {} left out: {e}", c.spec.name);
            }
            own.is_ok()
        });
        self.reconciler.found(candidates);
    }

    /// Call after every event of the control loop (cheap: it looks at the table at most
    /// every [`reconcile::CHECK_EVERY`] unless a new answer came). `statics` are the
    /// configured `--backend`s. Returns whether the health checker must re-sync.
    pub fn reconcile(
        &mut self,
        table: &mut Table,
        statics: &[BackendSpec],
        now: Instant,
        ids: &mut dyn FnMut(&str) -> Option<BackendId>,
    ) -> bool {
        if self.task.is_none() {
            return false;
        }
        self.reconciler.reconcile(table, statics, now, ids)
    }
}

/// The service's `consul_token`, else `CONSUL_HTTP_TOKEN` (as Consul's own tools read it);
/// an unusable variable is ignored with a warning.
fn consul_token(service: &str, settings: &ServiceSettings) -> Option<crate::config::ConsulToken> {
    if let Some(t) = &settings.consul_token {
        return Some(t.clone());
    }
    let v = std::env::var("CONSUL_HTTP_TOKEN").ok()?;
    if v.is_empty() {
        return None;
    }
    match parse_consul_token(&v) {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::warn!("service {service}: CONSUL_HTTP_TOKEN ignored: {e}");
            None
        }
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}
