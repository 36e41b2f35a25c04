//! Configuration reload (SIGHUP, `POST /reload`): re-reads `--config` with
//! [`config::reload`] (the command-line flags are laid over the file again) and says what
//! the control loop must do with the result. All or nothing: an invalid file changes
//! nothing.
//!
//! The file is read, and its host names resolved, on the runtime's blocking pool within
//! [`READ_TIMEOUT`] ([`Queue`]): the control thread goes on serving health checks, the
//! admin API and signals meanwhile, whatever the disk or DNS do.
//!
//! What a reload changes without touching an open connection: services (added ones start
//! listening, removed ones stop at once and drain), listen addresses, the backends
//! (removed ones drain), weights, the algorithm and hashing settings, timeouts, retries,
//! the PROXY header, the client allow/deny lists, health checks and ejection, slow start, discovery, `--grace`. Those
//! travel in the next routing or live on the control thread. Workers and the admin
//! endpoint are set up once at start; a change to them is logged and needs a restart.
//!
//! Backends added, re-weighted or removed through the admin API are runtime state: the
//! file wins on reload (as HAProxy's runtime API changes are lost on reload). An
//! operator's drain or maintenance of a backend that stays in the file is kept.

use std::collections::VecDeque;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::oneshot;

use crate::config::{self, BackendSpec, Config, ConfigError, ServiceSettings};

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("nothing to reload: uringlb was started without --config")]
    NoConfigFile,
    /// The file cannot be read or is invalid; its Display has file:line:column.
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("reading the configuration file and resolving its host names took longer than {0:?}")]
    TimedOut(Duration),
    #[error("reading the configuration file failed: {0}")]
    Aborted(String),
    /// A new listen address cannot be bound.
    #[error("{0}")]
    Listen(String),
}

/// How long reading the file and resolving its host names may take.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// What a successful reload did (logged, and `POST /reload`'s answer). With `[[service]]`
/// tables a backend is named `service/backend`.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub file: PathBuf,
    /// Services in the configuration now, and those added and removed.
    pub services: Vec<String>,
    pub services_added: Vec<String>,
    pub services_removed: Vec<String>,
    /// Backends in the configuration now.
    pub backends: usize,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Address, weight, max-conns, PROXY header or backup flag changed.
    pub changed: Vec<String>,
    /// Settings that differ from the running ones but only apply after a restart (flags).
    pub restart_needed: Vec<&'static str>,
}

/// Reads the configuration again. `running` is what the balancer runs with now.
pub fn read(running: &Config) -> Result<Config, ReloadError> {
    if running.config_file.is_none() {
        return Err(ReloadError::NoConfigFile);
    }
    Ok(config::reload(running)?)
}

/// [`read`] on the blocking pool, given up after [`READ_TIMEOUT`] (the blocking call then
/// finishes on its own and its result is dropped).
pub fn read_in_background(
    running: &Config,
) -> impl Future<Output = Result<Config, ReloadError>> + Send + 'static {
    let running = running.clone();
    async move {
        if running.config_file.is_none() {
            return Err(ReloadError::NoConfigFile);
        }
        let task = tokio::task::spawn_blocking(move || read(&running));
        match tokio::time::timeout(READ_TIMEOUT, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(ReloadError::Aborted(e.to_string())),
            Err(_) => Err(ReloadError::TimedOut(READ_TIMEOUT)),
        }
    }
}

/// Who asked for a reload: the log line's prefix, and an API caller's answer.
#[derive(Debug)]
pub struct Request {
    pub why: &'static str,
    pub reply: Option<oneshot::Sender<Result<Outcome, ReloadError>>>,
}

type Reading = Pin<Box<dyn Future<Output = Result<Config, ReloadError>> + Send>>;

/// Reload requests, served one at a time in order: each reads the file as it is when its
/// turn comes, so a SIGHUP sent after an edit never gets an older file.
#[derive(Default)]
pub struct Queue {
    waiting: VecDeque<Request>,
    current: Option<(Request, Reading)>,
}

impl Queue {
    pub fn push(&mut self, request: Request) {
        self.waiting.push_back(request);
    }

    /// Starts reading for the next request if none is being read.
    pub fn start_next(&mut self, running: &Config) {
        if self.current.is_none() {
            if let Some(next) = self.waiting.pop_front() {
                self.current = Some((next, Box::pin(read_in_background(running))));
            }
        }
    }

    /// A read is under way ([`finished`](Self::finished) may be awaited).
    pub fn busy(&self) -> bool {
        self.current.is_some()
    }

    /// The current request and what its read gave, once done. Pending forever when no
    /// read is under way.
    pub async fn finished(&mut self) -> (Request, Result<Config, ReloadError>) {
        let Some((_, reading)) = self.current.as_mut() else {
            return std::future::pending().await;
        };
        let result = reading.await;
        match self.current.take() {
            Some((request, _)) => (request, result),
            None => std::future::pending().await,
        }
    }
}

/// The settings fixed at start whose value differs in `new`, by flag name.
pub fn restart_needed(running: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut check = |differs: bool, flag: &'static str| {
        if differs {
            out.push(flag);
        }
    };
    check(running.workers != new.workers, "--workers");
    check(running.pin != new.pin, "--pin");
    check(running.forward != new.forward, "--forward");
    check(running.max_conns != new.max_conns, "--max-conns");
    check(running.splice_pipes != new.splice_pipes, "--splice-pipes");
    check(running.admin != new.admin, "--admin");
    check(running.admin_token != new.admin_token, "--admin-token");
    check(running.log_level != new.log_level, "--log-level");
    check(running.access_log != new.access_log, "--access-log");
    check(
        running.access_log_format != new.access_log_format,
        "--access-log-format",
    );
    check(
        running.upgrade_socket != new.upgrade_socket,
        "--upgrade-socket",
    );
    out
}

/// `new` with the start-only settings of `running`, so the loop's configuration stays
/// what is really in effect (and a later reload warns again about the same difference).
pub fn in_effect(running: &Config, new: Config) -> Config {
    Config {
        workers: running.workers,
        pin: running.pin,
        forward: running.forward,
        max_conns: running.max_conns,
        splice_pipes: running.splice_pipes,
        admin: running.admin,
        admin_token: running.admin_token.clone(),
        log_level: running.log_level.clone(),
        access_log: running.access_log.clone(),
        access_log_format: running.access_log_format,
        upgrade_socket: running.upgrade_socket.clone(),
        ..new
    }
}

/// The active checks must be rescheduled: their kind, interval, timeout or PROXY header
/// changed.
pub fn checks_changed(running: &ServiceSettings, new: &ServiceSettings) -> bool {
    running.health != new.health
        || running.health_interval != new.health_interval
        || running.health_timeout != new.health_timeout
        || running.proxy_protocol != new.proxy_protocol
}

/// The resolver must be started again: its name or its interval changed.
pub fn discovery_changed(running: &ServiceSettings, new: &ServiceSettings) -> bool {
    running.discovery != new.discovery
        || running.discovery_interval != new.discovery_interval
        || running.consul_token != new.consul_token
}

/// Names added, removed and changed going from `before` to `after`.
pub fn diff(
    before: &[BackendSpec],
    after: &[BackendSpec],
) -> (Vec<String>, Vec<String>, Vec<String>) {
    let find = |list: &[BackendSpec], name: &str| list.iter().position(|b| b.name == name);
    let added = after
        .iter()
        .filter(|b| find(before, &b.name).is_none())
        .map(|b| b.name.clone())
        .collect();
    let removed = before
        .iter()
        .filter(|b| find(after, &b.name).is_none())
        .map(|b| b.name.clone())
        .collect();
    let changed = after
        .iter()
        .filter(|b| find(before, &b.name).is_some_and(|i| before[i] != **b))
        .map(|b| b.name.clone())
        .collect();
    (added, removed, changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_backend, ForwardMode, HealthCheck, Workers};
    use std::time::Duration;

    #[test]
    fn without_a_file_there_is_nothing_to_reload() {
        let c = Config {
            service: ServiceSettings {
                backends: vec![parse_backend("127.0.0.1:1").expect("b")],
                ..Default::default()
            },
            ..Config::default()
        };
        assert!(matches!(read(&c), Err(ReloadError::NoConfigFile)));
    }

    #[test]
    fn start_only_settings_are_named_and_kept() {
        let running = Config::default();
        let new = Config {
            service: ServiceSettings {
                listen: vec!["127.0.0.1:1".parse().expect("addr")],
                retries: 9,
                health: HealthCheck::None,
                ..Default::default()
            },
            workers: Workers::Count(3),
            forward: ForwardMode::Copy,
            ..Config::default()
        };
        assert_eq!(
            restart_needed(&running, &new),
            vec!["--workers", "--forward"]
        );
        let eff = in_effect(&running, new.clone());
        assert_eq!(
            eff.service.listen, new.service.listen,
            "listeners are reloaded"
        );
        assert_eq!(eff.workers, Workers::Auto);
        assert_eq!(
            eff.service.retries, 9,
            "reloadable settings come from the file"
        );
        assert!(restart_needed(&running, &eff).is_empty());
        assert!(checks_changed(&running.service, &new.service));
        let listed = ServiceSettings {
            allow: vec!["10.0.0.0/8".parse().expect("net")],
            deny: vec!["10.9.0.0/16".parse().expect("net")],
            ..Default::default()
        };
        let listed = Config {
            service: listed,
            ..Config::default()
        };
        assert!(
            restart_needed(&running, &listed).is_empty(),
            "allow/deny travel in the snapshot"
        );
        assert_eq!(in_effect(&running, listed.clone()), listed);
        let slower = ServiceSettings {
            health_interval: Duration::from_secs(9),
            ..Default::default()
        };
        assert!(checks_changed(&running.service, &slower));
        let proxied = ServiceSettings {
            proxy_protocol: Some(crate::config::ProxyProtocol::V2),
            ..Default::default()
        };
        assert!(
            checks_changed(&running.service, &proxied),
            "checks send the header too"
        );
        assert!(!checks_changed(&running.service, &running.service.clone()));
        let discovering = ServiceSettings {
            discovery: Some("dns-srv:_a._tcp.example".into()),
            ..Default::default()
        };
        assert!(discovery_changed(&running.service, &discovering));
    }

    #[test]
    fn backend_diff() {
        let a = parse_backend("127.0.0.1:1,name=a").expect("b");
        let b = parse_backend("127.0.0.1:2,name=b").expect("b");
        let b2 = parse_backend("127.0.0.1:2,name=b,weight=5").expect("b");
        let c = parse_backend("127.0.0.1:3,name=c").expect("b");
        let (added, removed, changed) = diff(&[a.clone(), b], &[b2, c]);
        assert_eq!(
            (added, removed, changed),
            (vec!["c".into()], vec!["a".into()], vec!["b".into()])
        );
        let a_backup = parse_backend("127.0.0.1:1,name=a,backup").expect("b");
        let (_, _, changed) = diff(std::slice::from_ref(&a), &[a_backup]);
        assert_eq!(
            changed,
            vec!["a".to_string()],
            "becoming a backup is a change"
        );
    }
}
