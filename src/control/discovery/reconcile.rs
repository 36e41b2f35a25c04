//! Keeps the backend [`Table`] equal to "static backends ∪ discovered backends of the
//! priority classes in use", on the control loop. Pure apart from the table: time is an
//! argument.
//!
//! It works from the table as it is rather than from what it last sent, so that other
//! writers of the table compose with it: a reload that sets the configured backends (and so
//! drops the discovered ones) is repaired at the next check, and backends added another way
//! (the admin API) are kept until they are removed that way. The price: removing a
//! discovered backend through the admin API is undone while DNS still lists it (set it to
//! `maint` instead).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::backend::BackendId;
use crate::config::BackendSpec;
use crate::control::backends::{AdminState, Table};

use super::records::{self, Candidate};

/// How often the table is looked at without a new DNS answer: a priority class that went
/// down hands over to the next one within this (plus the health checks' own delay).
pub const CHECK_EVERY: Duration = Duration::from_millis(100);

/// See the module docs.
#[derive(Debug, Default)]
pub struct Reconciler {
    /// The latest DNS answer; `None` until the first one (the table is left alone till then).
    found: Option<Vec<Candidate>>,
    /// `found` changed since the last check.
    fresh: bool,
    /// The set last given to the table (sorted by name).
    applied: Vec<BackendSpec>,
    /// The names in `applied` that came from the static backends or from DNS: any other
    /// live row was added by someone else and is kept.
    managed: HashSet<String>,
    last_check: Option<Instant>,
    /// Names already warned about (hidden by a static backend of the same name, or left
    /// out for want of an id), so each is logged once.
    shadow_logged: HashSet<String>,
    /// Where answers come from, for the log: "DNS" or "Consul".
    source: &'static str,
}

impl Reconciler {
    pub fn new() -> Reconciler {
        Reconciler::for_source("DNS")
    }

    /// A reconciler whose log lines say the answers come from `source`.
    pub fn for_source(source: &'static str) -> Reconciler {
        Reconciler {
            source,
            ..Reconciler::default()
        }
    }

    /// A new successful resolution.
    pub fn found(&mut self, candidates: Vec<Candidate>) {
        self.found = Some(candidates);
        self.fresh = true;
    }

    /// Brings the table in line if it is time to look; returns whether the set of probe
    /// targets changed (the caller re-syncs its health checker).
    pub fn reconcile(
        &mut self,
        table: &mut Table,
        statics: &[BackendSpec],
        now: Instant,
        ids: &mut dyn FnMut(&str) -> Option<BackendId>,
    ) -> bool {
        let Some(found) = &self.found else {
            return false;
        };
        let due = self
            .last_check
            .is_none_or(|t| now.saturating_duration_since(t) >= CHECK_EVERY);
        if !self.fresh && !due {
            return false;
        }
        self.fresh = false;
        self.last_check = Some(now);

        // One row per name: its spec, whether it is live (not being removed), whether it
        // counts as up for the priority rule (in service and healthy, being removed or not).
        let entries = table.entries();
        let status = table.status();
        let mut rows: HashMap<&str, (&BackendSpec, bool, bool)> = HashMap::new();
        for (e, s) in entries.iter().zip(&status) {
            if e.spec.name == s.name {
                rows.insert(
                    &s.name,
                    (&e.spec, !s.removing, s.admin == AdminState::Up && s.healthy),
                );
            }
        }
        let up = |name: &str| rows.get(name).is_none_or(|r| r.2);
        let selected = records::select(found, &up);
        let managed: HashSet<String> = statics
            .iter()
            .chain(&selected)
            .map(|s| s.name.clone())
            .collect();
        let kept: Vec<BackendSpec> = rows
            .iter()
            .filter(|(name, r)| r.1 && !self.managed.contains(**name))
            .map(|(_, r)| r.0.clone())
            .collect();
        let (mut desired, shadowed) = records::merge(statics, selected, kept);
        // A backend needs a shared-counter id, and an id is reused only once its backend
        // is gone: a new name that cannot get one is left out (a snapshot could not be
        // built with it).
        desired.retain(|d| {
            rows.contains_key(d.name.as_str()) || ids(&d.name).is_some() || {
                if self.shadow_logged.insert(format!("full:{}", d.name)) {
                    tracing::warn!(
                        "discovery: backend {} left out: no backend id left (too many backends at once, counting removed ones that still have connections)",
                        d.name
                    );
                }
                false
            }
        });
        for name in shadowed {
            if self.shadow_logged.insert(name.clone()) {
                tracing::warn!(
                    "discovery: backend {name} is also a static backend; the static one is used"
                );
            }
        }
        let live = desired
            .iter()
            .all(|d| rows.get(d.name.as_str()).is_some_and(|r| r.1 && r.0 == d));
        if live && desired == self.applied {
            return false;
        }
        if desired != self.applied {
            let discovered = desired
                .iter()
                .filter(|d| found.iter().any(|c| c.spec == **d))
                .count();
            tracing::info!(
                "discovery: {} backend(s) in use, {discovered} of them from {}",
                desired.len(),
                self.source
            );
        } else {
            tracing::debug!("discovery: restoring discovered backends in the table");
        }
        let changed = table.set_backends(&desired, now, ids);
        self.applied = desired;
        self.managed = managed;
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendState;
    use crate::config::{parse_backend, Config, HealthCheck, ServiceSettings};
    use crate::control::backends::tests::ids;
    use crate::control::backends::ProbeTarget;

    fn spec(name: &str, port: u16, weight: u32) -> BackendSpec {
        parse_backend(&format!("127.0.0.1:{port},name={name},weight={weight}")).expect("spec")
    }

    fn cand(name: &str, port: u16, weight: u32, priority: u16) -> Candidate {
        Candidate {
            spec: spec(name, port, weight),
            priority,
        }
    }

    fn config(statics: Vec<BackendSpec>) -> Config {
        Config {
            service: ServiceSettings {
                backends: statics,
                health: HealthCheck::Tcp,
                rise: 1,
                fall: 1,
                discovery: Some("dns-srv:_x._tcp.test".into()),
                ..Default::default()
            },
            ..Config::default()
        }
    }

    /// (name, state) of every row, sorted.
    fn rows(t: &Table) -> Vec<(String, BackendState)> {
        let mut v: Vec<_> = t
            .entries()
            .into_iter()
            .map(|e| (e.spec.name, e.state))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn live(t: &Table) -> Vec<String> {
        let mut v: Vec<String> = t
            .status()
            .into_iter()
            .filter(|s| !s.removing)
            .map(|s| s.name)
            .collect();
        v.sort();
        v
    }

    fn check(t: &mut Table, name: &str, ok: bool, now: Instant) {
        let p: ProbeTarget = t
            .probe_targets()
            .into_iter()
            .find(|p| p.name == name)
            .expect("target");
        t.on_check(&p, if ok { Ok(()) } else { Err("down".into()) }, now);
    }

    #[test]
    fn nothing_happens_before_the_first_answer() {
        let statics = vec![spec("s", 1, 1)];
        let mut t = Table::new(&config(statics.clone()), &mut ids());
        let mut r = Reconciler::new();
        assert!(!r.reconcile(&mut t, &statics, Instant::now(), &mut ids()));
        assert!(!t.take_dirty());
    }

    #[test]
    fn additions_removals_and_weight_changes() {
        let now = Instant::now();
        let statics = vec![spec("s", 1, 1)];
        let mut ids = ids();
        let mut t = Table::new(&config(statics.clone()), &mut ids);
        let mut r = Reconciler::new();
        r.found(vec![cand("a", 2, 1, 0), cand("b", 3, 1, 0)]);
        assert!(r.reconcile(&mut t, &statics, now, &mut ids));
        assert_eq!(live(&t), ["a", "b", "s"]);
        // Nothing new: no change, and not even a look before CHECK_EVERY.
        assert!(t.take_dirty());
        assert!(!r.reconcile(&mut t, &statics, now, &mut ids));
        assert!(!t.take_dirty());
        // Weight change.
        r.found(vec![cand("a", 2, 5, 0), cand("b", 3, 1, 0)]);
        r.reconcile(&mut t, &statics, now, &mut ids);
        assert!(t.take_dirty());
        assert_eq!(
            t.status().iter().find(|s| s.name == "a").map(|s| s.weight),
            Some(5)
        );
        // Removal drains.
        r.found(vec![cand("a", 2, 5, 0)]);
        assert!(r.reconcile(&mut t, &statics, now, &mut ids));
        assert_eq!(live(&t), ["a", "s"]);
        assert!(rows(&t).contains(&("b".to_string(), BackendState::Draining)));
    }

    #[test]
    fn lower_classes_wait_until_the_first_class_is_down() {
        let t0 = Instant::now();
        let statics = vec![];
        let mut ids = ids();
        let mut t = Table::new(&config(vec![]), &mut ids);
        let mut r = Reconciler::new();
        r.found(vec![cand("p0", 2, 1, 0), cand("p10", 3, 1, 10)]);
        r.reconcile(&mut t, &statics, t0, &mut ids);
        assert_eq!(live(&t), ["p0"]);
        // p0 fails its check (fall 1): p10 joins at the next look.
        check(&mut t, "p0", false, t0);
        let t1 = t0 + CHECK_EVERY;
        assert!(r.reconcile(&mut t, &statics, t1, &mut ids));
        assert_eq!(live(&t), ["p0", "p10"]);
        assert_eq!(t.state("p0"), Some(BackendState::Down));
        // p0 recovers (rise 1): p10 drains away.
        check(&mut t, "p0", true, t1);
        let t2 = t1 + CHECK_EVERY;
        assert!(r.reconcile(&mut t, &statics, t2, &mut ids));
        assert_eq!(live(&t), ["p0"]);
        assert_eq!(t.state("p10"), Some(BackendState::Draining));
        // An operator's maint counts as not up, too.
        t.set_state("p0", AdminState::Maint, t2).expect("maint");
        let t3 = t2 + CHECK_EVERY;
        r.reconcile(&mut t, &statics, t3, &mut ids);
        assert_eq!(live(&t), ["p0", "p10"]);
        assert_eq!(t.state("p10"), Some(BackendState::Up), "back, health kept");
    }

    #[test]
    fn a_reload_that_drops_discovered_backends_is_repaired_and_admin_additions_kept() {
        let t0 = Instant::now();
        let statics = vec![spec("s", 1, 1)];
        let mut ids = ids();
        let mut t = Table::new(&config(statics.clone()), &mut ids);
        let mut r = Reconciler::new();
        r.found(vec![cand("a", 2, 1, 0)]);
        r.reconcile(&mut t, &statics, t0, &mut ids);
        // A reload with new static backends sets only those.
        let reloaded = vec![spec("s2", 4, 1)];
        t.set_backends(&reloaded, t0, &mut ids);
        assert_eq!(live(&t), ["s2"]);
        // The admin API adds one.
        let mut with_admin = reloaded.clone();
        with_admin.push(spec("admin", 5, 1));
        t.set_backends(&with_admin, t0, &mut ids);
        let t1 = t0 + CHECK_EVERY;
        r.reconcile(&mut t, &reloaded, t1, &mut ids);
        assert_eq!(live(&t), ["a", "admin", "s2"]);
        assert_eq!(t.state("a"), Some(BackendState::Up));
        // A DNS change keeps the admin one; the old static stays gone.
        r.found(vec![cand("a", 2, 1, 0), cand("b", 3, 1, 0)]);
        r.reconcile(&mut t, &reloaded, t1, &mut ids);
        assert_eq!(live(&t), ["a", "admin", "b", "s2"]);
        r.found(vec![cand("b", 3, 1, 0)]);
        r.reconcile(&mut t, &reloaded, t1, &mut ids);
        assert_eq!(live(&t), ["admin", "b", "s2"]);
        r.found(vec![cand("a", 2, 1, 0), cand("b", 3, 1, 0)]);
        r.reconcile(&mut t, &reloaded, t1, &mut ids);
        assert_eq!(live(&t), ["a", "admin", "b", "s2"]);
        // Removed through the admin API: stays removed.
        let without: Vec<BackendSpec> = t
            .entries()
            .into_iter()
            .zip(t.status())
            .filter(|(e, s)| e.spec.name != "admin" && !s.removing)
            .map(|(e, _)| e.spec)
            .collect();
        t.set_backends(&without, t1, &mut ids);
        r.reconcile(&mut t, &reloaded, t1 + CHECK_EVERY, &mut ids);
        assert_eq!(live(&t), ["a", "b", "s2"]);
    }

    #[test]
    fn a_name_without_an_id_is_left_out() {
        let now = Instant::now();
        let mut t = Table::new(&config(vec![]), &mut ids());
        let mut r = Reconciler::new();
        r.found(vec![cand("ok", 2, 1, 0), cand("no-id", 3, 1, 0)]);
        let mut only_ok = |name: &str| (name == "ok").then_some(BackendId(0));
        r.reconcile(&mut t, &[], now, &mut only_ok);
        assert_eq!(live(&t), ["ok"]);
    }

    #[test]
    fn a_static_backend_wins_a_name_clash() {
        let now = Instant::now();
        let statics = vec![spec("same", 1, 3)];
        let mut ids = ids();
        let mut t = Table::new(&config(statics.clone()), &mut ids);
        let mut r = Reconciler::new();
        r.found(vec![cand("same", 2, 1, 0)]);
        r.reconcile(&mut t, &statics, now, &mut ids);
        let s = &t.status()[0];
        assert_eq!((s.addr.port(), s.weight), (1, 3));
    }
}
