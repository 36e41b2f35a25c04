//! The control thread's backend table: for each backend its health ([`Health`]), the state
//! an operator set (up, drain, maint), whether it is being removed, and its slow-start
//! ramp. From these it derives the one state the workers see ([`BackendState`]) in a
//! single function, [`Table::refresh`], which logs every change once.
//!
//! Pure apart from reading and resetting the shared connect-failure counters: time is an
//! argument, and the caller publishes [`Table::entries`] whenever [`Table::take_dirty`]
//! says something changed. The admin API calls the same methods.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::backend::{BackendId, BackendState, SharedCounters};
#[cfg(test)]
use crate::config::Config;
use crate::config::{BackendSpec, ProxyProtocol, ServiceSettings};
use crate::health::{Health, Params};
use crate::server::BackendEntry;
use crate::tier::Tier;

use super::slow_start;

/// A removed backend whose connections have not all closed by its drain deadline is
/// dropped this long after it (the workers close them within ~100 ms of the deadline).
const REMOVE_MARGIN: Duration = Duration::from_secs(2);

/// The state an operator asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminState {
    /// In service: up or down as its health says.
    Up,
    /// No new connections; open ones continue until they end or `--grace` runs out.
    Drain,
    /// Out of service: no new connections; open ones are left alone.
    Maint,
}

impl AdminState {
    /// `up`, `drain` (or `draining`), `maint`.
    pub fn from_name(s: &str) -> Option<AdminState> {
        match s {
            "up" => Some(AdminState::Up),
            "drain" | "draining" => Some(AdminState::Drain),
            "maint" => Some(AdminState::Maint),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            AdminState::Up => "up",
            AdminState::Drain => "drain",
            AdminState::Maint => "maint",
        }
    }
}

/// Why the table refused a change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("no backend named '{0}'")]
    Unknown(String),
    #[error("no service named '{0}'")]
    UnknownService(String),
    /// A route without a service name while there are several.
    #[error("there are several services ({}): name one, as /services/{{service}}/backends", .0.join(", "))]
    Ambiguous(Vec<String>),
    #[error("backend '{0}' is being removed")]
    Removing(String),
    #[error("a backend named '{0}' exists already")]
    Duplicate(String),
    /// The backend cannot be added as given (e.g. it is the balancer itself).
    #[error("{0}")]
    Invalid(String),
    #[error(
        "too many backends: at most {} at once, counting removed ones that still have connections",
        crate::backend::MAX_BACKENDS
    )]
    Full,
}

/// One logged change of a backend's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub name: String,
    pub from: BackendState,
    pub to: BackendState,
    pub why: String,
}

/// A backend as the table sees it now (for the admin API and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendStatus {
    pub name: String,
    pub addr: SocketAddr,
    /// Configured weight.
    pub weight: u32,
    pub state: BackendState,
    pub admin: AdminState,
    /// The health checks' verdict and no ejection.
    pub healthy: bool,
    pub ejected: bool,
    pub removing: bool,
    /// Used only while no primary backend is up.
    pub backup: bool,
}

/// What the prober needs to check one backend. `generation` changes when the backend's
/// address does, so results of a probe of the old address are ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTarget {
    pub name: String,
    pub addr: SocketAddr,
    pub generation: u64,
    /// The backend's own `proxy-protocol=` (the global `--proxy-protocol` applies when
    /// this is `None`, as on the data path).
    pub proxy_protocol: Option<ProxyProtocol>,
}

#[derive(Debug)]
struct Row {
    spec: BackendSpec,
    id: Option<BackendId>,
    health: Health,
    admin: AdminState,
    /// Set while draining (operator or removal): open connections are closed then.
    drain_deadline: Option<Instant>,
    /// Removed from the configuration: drained, then dropped.
    removing: bool,
    /// The state last published.
    state: BackendState,
    /// Slow start: when the ramp began, and the step last published.
    ramp: Option<(Instant, u32)>,
    generation: u64,
    /// The shared consecutive-failure count must restart from 0 (it became up again).
    reset_failures: bool,
    /// "Too many ejected" was logged for the current run of failures.
    refusal_logged: bool,
}

impl Row {
    fn new(spec: BackendSpec, id: Option<BackendId>, generation: u64) -> Row {
        Row {
            spec,
            id,
            health: Health::new(),
            admin: AdminState::Up,
            drain_deadline: None,
            removing: false,
            state: BackendState::Up,
            ramp: None,
            generation,
            reset_failures: false,
            refusal_logged: false,
        }
    }

    /// The one rule that turns everything known about a backend into what workers see.
    fn effective(&self) -> BackendState {
        if self.removing || self.admin == AdminState::Drain {
            BackendState::Draining
        } else if self.admin == AdminState::Maint {
            BackendState::Maint
        } else if self.health.is_up() {
            BackendState::Up
        } else {
            BackendState::Down
        }
    }
}

/// The backends the control thread manages. See the module docs.
#[derive(Debug)]
pub struct Table {
    rows: Vec<Row>,
    params: Params,
    grace: Duration,
    /// Zero when off or when the algorithm ignores weights.
    slow_start: Duration,
    panic: bool,
    /// As the workers derive it from the last published states.
    tier: Tier,
    dirty: bool,
    next_generation: u64,
    transitions: Vec<Transition>,
}

impl Table {
    /// The one service of `config` (tests).
    #[cfg(test)]
    pub fn new(config: &Config, ids: &mut dyn FnMut(&str) -> Option<BackendId>) -> Table {
        Table::for_service(&config.service, config.grace, ids)
    }

    /// Every configured backend of a service, up (as [`crate::server::Server::start`]
    /// published them). `ids` gives each name its shared-counter id.
    pub fn for_service(
        settings: &ServiceSettings,
        grace: Duration,
        ids: &mut dyn FnMut(&str) -> Option<BackendId>,
    ) -> Table {
        let mut t = Table {
            rows: Vec::new(),
            params: settings.health_params(),
            grace,
            slow_start: if slow_start::applies_to(settings.algorithm) {
                settings.slow_start
            } else {
                Duration::ZERO
            },
            panic: false,
            tier: Tier::Primary,
            dirty: false,
            next_generation: 0,
            transitions: Vec::new(),
        };
        for spec in &settings.backends {
            let g = t.generation();
            t.rows.push(Row::new(spec.clone(), ids(&spec.name), g));
        }
        t.tier = Tier::of(t.rows.iter().map(|r| (r.spec.backup, r.state)));
        t
    }

    fn generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }

    fn find(&self, name: &str) -> Option<usize> {
        self.rows.iter().position(|r| r.spec.name == name)
    }

    /// Something changed since the last call: publish [`entries`](Self::entries).
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// Every change so far, oldest first, emptying the record (tests look at it).
    pub fn take_transitions(&mut self) -> Vec<Transition> {
        std::mem::take(&mut self.transitions)
    }

    /// No backend is up, but some are down: the workers balance over the down ones.
    pub fn in_panic(&self) -> bool {
        self.panic
    }

    /// The backends the workers send new connections to now: the primaries, the backups
    /// (no primary is up) or, in panic mode, every down one.
    pub fn tier(&self) -> Tier {
        self.tier
    }

    /// Re-derives row `i`'s state; logs and records the change if there is one.
    fn refresh(&mut self, i: usize, now: Instant, why: &str) {
        let row = &mut self.rows[i];
        let (from, to) = (row.state, row.effective());
        if from == to {
            return;
        }
        row.state = to;
        self.dirty = true;
        if to == BackendState::Up {
            row.reset_failures = true;
            row.refusal_logged = false;
            if !self.slow_start.is_zero() {
                row.ramp = Some((now, 0));
            }
        } else {
            row.ramp = None;
        }
        tracing::info!(
            "backend {}: {} -> {} ({why})",
            row.spec.name,
            from.name(),
            to.name()
        );
        self.transitions.push(Transition {
            name: row.spec.name.clone(),
            from,
            to,
            why: why.to_string(),
        });
        self.update_panic();
    }

    /// Re-derives the tier the workers route with ([`Tier`]) and logs a change of it:
    /// panic mode, and the backups taking over from the primaries or handing back.
    fn update_panic(&mut self) {
        let tier = Tier::of(self.rows.iter().map(|r| (r.spec.backup, r.state)));
        let count = |state: BackendState, backup: bool| {
            self.rows
                .iter()
                .filter(|r| r.state == state && r.spec.backup == backup)
                .count()
        };
        let up = count(BackendState::Up, false) + count(BackendState::Up, true);
        let down = count(BackendState::Down, false) + count(BackendState::Down, true);
        let panic = tier == Tier::Panic && down > 0;
        if panic && !self.panic {
            tracing::warn!(
                "panic mode: no backend is up; balancing over all {down} down backend(s)"
            );
        } else if !panic && self.panic {
            tracing::info!("panic mode over: {up} backend(s) up");
        }
        if tier != self.tier {
            match tier {
                Tier::Backup => tracing::warn!(
                    "no primary backend is up; using {} backup backend(s)",
                    count(BackendState::Up, true)
                ),
                Tier::Primary if self.tier == Tier::Backup => tracing::info!(
                    "{} primary backend(s) up again; backups get no new connections",
                    count(BackendState::Up, false)
                ),
                _ => {}
            }
        }
        self.panic = panic;
        self.tier = tier;
    }

    /// What the workers should route with now.
    pub fn entries(&self) -> Vec<BackendEntry> {
        let ramping = self.rows.iter().any(|r| r.ramp.is_some());
        self.rows
            .iter()
            .map(|r| {
                let weight = match (ramping, r.ramp) {
                    (false, _) => r.spec.weight,
                    (true, None) => r.spec.weight.saturating_mul(slow_start::SCALE),
                    (true, Some((_, k))) => slow_start::ramped_weight(
                        r.spec.weight,
                        slow_start::fraction(self.slow_start, k),
                    ),
                };
                BackendEntry {
                    spec: r.spec.clone(),
                    state: r.state,
                    weight,
                    drain_deadline: r.drain_deadline,
                }
            })
            .collect()
    }

    /// The backends to health-check.
    pub fn probe_targets(&self) -> Vec<ProbeTarget> {
        self.rows
            .iter()
            .filter(|r| !r.removing)
            .map(|r| ProbeTarget {
                name: r.spec.name.clone(),
                addr: r.spec.addr,
                generation: r.generation,
                proxy_protocol: r.spec.proxy_protocol,
            })
            .collect()
    }

    /// One active check's result for `target`.
    pub fn on_check(&mut self, target: &ProbeTarget, result: Result<(), String>, now: Instant) {
        let Some(i) = self.find(&target.name) else {
            return;
        };
        if self.rows[i].generation != target.generation {
            return;
        }
        let params = self.params;
        if let Some(event) = self.rows[i].health.on_check(&params, result, now) {
            self.refresh(i, now, &event.to_string());
        }
    }

    /// Passive health: ejects backends whose consecutive connect failures (counted by the
    /// workers) reached `--eject-after`, keeping at most half of them ejected at once.
    pub fn poll_failures(&mut self, counters: &SharedCounters, now: Instant) {
        let params = self.params;
        let total = self.rows.iter().filter(|r| !r.removing).count();
        let limit = total / 2;
        let mut ejected = self.rows.iter().filter(|r| r.health.is_ejected()).count();
        for i in 0..self.rows.len() {
            let Some(id) = self.rows[i].id else { continue };
            let failures = &counters.get(id).consecutive_failures;
            if std::mem::take(&mut self.rows[i].reset_failures) {
                failures.store(0, Ordering::Relaxed);
                continue;
            }
            let n = failures.load(Ordering::Relaxed);
            let row = &mut self.rows[i];
            if row.state != BackendState::Up || !row.health.should_eject(&params, n) {
                continue;
            }
            if ejected >= limit {
                if !row.refusal_logged {
                    row.refusal_logged = true;
                    tracing::warn!(
                        "backend {}: {n} consecutive connect failures, but {ejected} of {} backends are ejected already (at most half may be); not ejecting",
                        row.spec.name,
                        total
                    );
                }
                continue;
            }
            let event = row.health.eject(&params, n, now);
            failures.store(0, Ordering::Relaxed);
            ejected += 1;
            self.refresh(i, now, &event.to_string());
        }
    }

    /// Time passing: ends expired ejections, moves slow-start ramps on, drops removed
    /// backends that have no connection left (or whose deadline is long past).
    pub fn tick(&mut self, counters: &SharedCounters, now: Instant) {
        let params = self.params;
        for i in 0..self.rows.len() {
            if let Some(event) = self.rows[i].health.tick(&params, now) {
                self.refresh(i, now, &event.to_string());
            }
            let window = self.slow_start;
            let row = &mut self.rows[i];
            if let Some((since, step)) = row.ramp {
                match slow_start::step_index(window, now.saturating_duration_since(since)) {
                    Some(k) if k == step => {}
                    Some(k) => {
                        row.ramp = Some((since, k));
                        self.dirty = true;
                    }
                    None => {
                        row.ramp = None;
                        self.dirty = true;
                        tracing::info!("backend {}: slow start done", row.spec.name);
                    }
                }
            }
        }
        let before = self.rows.len();
        self.rows.retain(|r| {
            if !r.removing {
                return true;
            }
            let active = r.id.map(|id| counters.get(id).active()).unwrap_or(0);
            let overdue = r.drain_deadline.is_some_and(|d| now >= d + REMOVE_MARGIN);
            if active == 0 || overdue {
                tracing::info!(
                    "backend {}: removed ({})",
                    r.spec.name,
                    if active == 0 {
                        "drained".to_string()
                    } else {
                        format!("{active} connection(s) still open after the drain deadline")
                    }
                );
                false
            } else {
                true
            }
        });
        if self.rows.len() != before {
            self.dirty = true;
            self.update_panic();
        }
    }

    /// An operator's state for `name`.
    pub fn set_state(
        &mut self,
        name: &str,
        state: AdminState,
        now: Instant,
    ) -> Result<(), TableError> {
        let i = self
            .find(name)
            .ok_or_else(|| TableError::Unknown(name.to_string()))?;
        let grace = self.grace;
        let row = &mut self.rows[i];
        if row.removing {
            return Err(TableError::Removing(name.to_string()));
        }
        if row.admin == state {
            return Ok(());
        }
        row.admin = state;
        row.drain_deadline = (state == AdminState::Drain).then(|| now + grace);
        self.dirty = true;
        self.refresh(i, now, &format!("set to {} by the operator", state.name()));
        Ok(())
    }

    /// The configuration's backends are now `specs`: new ones are added (up, with slow
    /// start if on), missing ones drain and are dropped once idle, changed ones updated.
    /// Returns whether the set of probe targets changed.
    pub fn set_backends(
        &mut self,
        specs: &[BackendSpec],
        now: Instant,
        ids: &mut dyn FnMut(&str) -> Option<BackendId>,
    ) -> bool {
        let before = self.probe_targets();
        let grace = self.grace;
        for i in 0..self.rows.len() {
            if !self.rows[i].removing && !specs.iter().any(|s| s.name == self.rows[i].spec.name) {
                let row = &mut self.rows[i];
                row.removing = true;
                row.drain_deadline = Some(now + grace);
                self.dirty = true;
                self.refresh(i, now, "removed from the configuration");
            }
        }
        for spec in specs {
            match self.find(&spec.name) {
                Some(i) => {
                    let g = self.generation();
                    let row = &mut self.rows[i];
                    if row.spec != *spec {
                        if row.spec.addr != spec.addr {
                            // A new address is a new server: its health is unknown.
                            row.health = Health::new();
                            row.generation = g;
                        }
                        row.spec = spec.clone();
                        self.dirty = true;
                        // It may have become a backup, or stopped being one.
                        self.update_panic();
                    }
                    let row = &mut self.rows[i];
                    if row.removing {
                        row.removing = false;
                        row.drain_deadline = None;
                        self.dirty = true;
                        self.refresh(i, now, "back in the configuration");
                    }
                }
                None => {
                    let g = self.generation();
                    let mut row = Row::new(spec.clone(), ids(&spec.name), g);
                    if !self.slow_start.is_zero() {
                        row.ramp = Some((now, 0));
                    }
                    tracing::info!("backend {}: added ({})", spec.name, spec.addr);
                    self.rows.push(row);
                    self.dirty = true;
                    self.update_panic();
                }
            }
        }
        self.probe_targets() != before
    }

    /// The backends in the configuration now (not those being removed), in table order:
    /// what [`set_backends`](Self::set_backends) would be given to keep everything as is.
    pub fn specs(&self) -> Vec<BackendSpec> {
        self.rows
            .iter()
            .filter(|r| !r.removing)
            .map(|r| r.spec.clone())
            .collect()
    }

    /// Adds one backend (the admin API). The name must be new, also among backends still
    /// draining out, and must get a counter id. Returns whether the probe targets changed.
    pub fn add(
        &mut self,
        spec: BackendSpec,
        now: Instant,
        ids: &mut dyn FnMut(&str) -> Option<BackendId>,
    ) -> Result<bool, TableError> {
        if self.find(&spec.name).is_some() {
            return Err(TableError::Duplicate(spec.name));
        }
        // Checked before the row exists: a row without an id would make every later
        // snapshot fail to build.
        ids(&spec.name).ok_or(TableError::Full)?;
        let mut specs = self.specs();
        specs.push(spec);
        Ok(self.set_backends(&specs, now, ids))
    }

    /// Changes one backend's configured weight (the admin API).
    pub fn set_weight(&mut self, name: &str, weight: u32, now: Instant) -> Result<(), TableError> {
        let i = self
            .find(name)
            .ok_or_else(|| TableError::Unknown(name.to_string()))?;
        if self.rows[i].removing {
            return Err(TableError::Removing(name.to_string()));
        }
        let mut specs = self.specs();
        if let Some(s) = specs.iter_mut().find(|s| s.name == name) {
            s.weight = weight;
        }
        self.set_backends(&specs, now, &mut |_| None);
        Ok(())
    }

    /// Removes one backend (the admin API): it drains, then goes once idle, as when it
    /// leaves the configuration. Returns whether the probe targets changed.
    pub fn remove(&mut self, name: &str, now: Instant) -> Result<bool, TableError> {
        let i = self
            .find(name)
            .ok_or_else(|| TableError::Unknown(name.to_string()))?;
        if self.rows[i].removing {
            return Err(TableError::Removing(name.to_string()));
        }
        let specs: Vec<BackendSpec> = self
            .specs()
            .into_iter()
            .filter(|s| s.name != name)
            .collect();
        Ok(self.set_backends(&specs, now, &mut |_| None))
    }

    /// Takes the reloadable settings of a service (health thresholds, ejection, slow
    /// start) and `--grace`; they apply from the next event on. Backends are set
    /// separately.
    pub fn reconfigure(&mut self, settings: &ServiceSettings, grace: Duration, now: Instant) {
        let was_active = self.params.active;
        self.params = settings.health_params();
        self.grace = grace;
        if was_active && !self.params.active {
            // No check will ever pass again: forget the failed ones.
            for i in 0..self.rows.len() {
                if !self.rows[i].health.checks_healthy() {
                    self.rows[i].health = Health::new();
                    self.refresh(i, now, "active health checks turned off");
                }
            }
        }
        let slow_start = if slow_start::applies_to(settings.algorithm) {
            settings.slow_start
        } else {
            Duration::ZERO
        };
        if slow_start != self.slow_start {
            self.slow_start = slow_start;
            // A ramp is a fraction of the old window; restarting it would surprise more
            // than ending it.
            for r in &mut self.rows {
                if r.ramp.take().is_some() {
                    self.dirty = true;
                }
            }
        }
    }

    /// Every backend's current state.
    pub fn status(&self) -> Vec<BackendStatus> {
        self.rows
            .iter()
            .map(|r| BackendStatus {
                name: r.spec.name.clone(),
                addr: r.spec.addr,
                weight: r.spec.weight,
                state: r.state,
                admin: r.admin,
                healthy: r.health.is_up(),
                ejected: r.health.is_ejected(),
                removing: r.removing,
                backup: r.spec.backup,
            })
            .collect()
    }

    /// The state workers see for `name`.
    pub fn state(&self, name: &str) -> Option<BackendState> {
        self.find(name).map(|i| self.rows[i].state)
    }
}

#[cfg(test)]
pub(crate) mod tests;
