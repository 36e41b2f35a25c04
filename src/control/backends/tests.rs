//! Unit tests of the backend table.

use super::*;
use crate::config::{parse_backend, Algorithm, HealthCheck, ServiceSettings};

fn config(n: usize) -> Config {
    Config {
        service: ServiceSettings {
            backends: (0..n)
                .map(|i| parse_backend(&format!("127.0.0.1:{},name=b{i}", 9000 + i)).expect("spec"))
                .collect(),
            health: HealthCheck::Tcp,
            rise: 2,
            fall: 2,
            eject_after: 3,
            eject_base: Duration::from_secs(10),
            eject_max: Duration::from_secs(100),
            ..Default::default()
        },
        grace: Duration::from_secs(5),
        ..Config::default()
    }
}

/// Backend ids handed out in order of first sight, as the server does (for tests of
/// anything built on a `Table`).
pub(crate) fn ids() -> impl FnMut(&str) -> Option<BackendId> {
    let mut names: Vec<String> = Vec::new();
    move |name: &str| {
        let i = names.iter().position(|n| n == name).unwrap_or_else(|| {
            names.push(name.to_string());
            names.len() - 1
        });
        Some(BackendId(i as u32))
    }
}

fn target(t: &Table, name: &str) -> ProbeTarget {
    t.probe_targets()
        .into_iter()
        .find(|p| p.name == name)
        .expect("target")
}

fn fail(t: &mut Table, name: &str, now: Instant) {
    let p = target(t, name);
    t.on_check(&p, Err("refused".into()), now);
}

fn pass(t: &mut Table, name: &str, now: Instant) {
    let p = target(t, name);
    t.on_check(&p, Ok(()), now);
}

fn states(t: &Table) -> Vec<BackendState> {
    t.entries().iter().map(|e| e.state).collect()
}

#[test]
fn checks_change_the_published_state_and_log_each_change_once() {
    let now = Instant::now();
    let mut t = Table::new(&config(2), &mut ids());
    assert!(!t.take_dirty());
    fail(&mut t, "b0", now);
    assert!(!t.take_dirty());
    fail(&mut t, "b0", now);
    fail(&mut t, "b0", now);
    assert!(t.take_dirty());
    assert_eq!(states(&t), vec![BackendState::Down, BackendState::Up]);
    let log = t.take_transitions();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(
        (log[0].from, log[0].to),
        (BackendState::Up, BackendState::Down)
    );
    assert!(
        log[0]
            .why
            .contains("2 health check(s) failed, last: refused"),
        "{log:?}"
    );
    pass(&mut t, "b0", now);
    pass(&mut t, "b0", now);
    assert_eq!(states(&t), vec![BackendState::Up, BackendState::Up]);
    assert!(t.take_transitions()[0].why.contains("passed"));
}

#[test]
fn panic_mode_when_nothing_is_up() {
    let now = Instant::now();
    let mut t = Table::new(&config(2), &mut ids());
    for name in ["b0", "b1"] {
        fail(&mut t, name, now);
        fail(&mut t, name, now);
    }
    assert!(t.in_panic());
    pass(&mut t, "b1", now);
    pass(&mut t, "b1", now);
    assert!(!t.in_panic());
    // All in maintenance is not panic: nothing may be used.
    t.set_state("b1", AdminState::Maint, now).expect("set");
    assert!(t.in_panic(), "b0 is down, nothing up");
    t.set_state("b0", AdminState::Maint, now).expect("set");
    assert!(!t.in_panic());
}

#[test]
fn backups_take_over_only_while_no_primary_is_up() {
    let now = Instant::now();
    let mut cfg = config(3);
    cfg.service.backends[2].backup = true;
    let mut t = Table::new(&cfg, &mut ids());
    assert_eq!(t.tier(), Tier::Primary);
    fail(&mut t, "b0", now);
    fail(&mut t, "b0", now);
    assert_eq!(t.tier(), Tier::Primary, "b1 is still up");
    t.set_state("b1", AdminState::Maint, now).expect("maint");
    assert_eq!(t.tier(), Tier::Backup);
    assert!(!t.in_panic(), "the backup is up");
    fail(&mut t, "b2", now);
    fail(&mut t, "b2", now);
    assert_eq!(t.tier(), Tier::Panic);
    assert!(t.in_panic(), "b0 and b2 are down, nothing up");
    pass(&mut t, "b2", now);
    pass(&mut t, "b2", now);
    assert_eq!(t.tier(), Tier::Backup);
    t.set_state("b1", AdminState::Up, now).expect("up");
    assert_eq!(t.tier(), Tier::Primary, "a recovered primary takes over");
    // A reload that makes b1 a backup too: only backups are up now.
    let mut specs = t.specs();
    specs[1].backup = true;
    assert!(!t.set_backends(&specs, now, &mut ids()));
    assert!(t.take_dirty());
    assert_eq!(t.tier(), Tier::Backup);
    assert!(t.status()[1].backup);
    assert!(t.entries()[1].spec.backup);
}

#[test]
fn passive_ejection_and_its_limit() {
    let now = Instant::now();
    let counters = SharedCounters::new();
    let mut t = Table::new(&config(4), &mut ids());
    for id in 0..3 {
        counters
            .get(BackendId(id))
            .consecutive_failures
            .store(3, Ordering::Relaxed);
    }
    counters
        .get(BackendId(3))
        .consecutive_failures
        .store(2, Ordering::Relaxed);
    t.poll_failures(&counters, now);
    // Half of 4: two ejected, the third refused.
    assert_eq!(
        states(&t),
        vec![
            BackendState::Down,
            BackendState::Down,
            BackendState::Up,
            BackendState::Up
        ]
    );
    assert_eq!(
        counters
            .get(BackendId(0))
            .consecutive_failures
            .load(Ordering::Relaxed),
        0
    );
    assert_eq!(
        counters
            .get(BackendId(2))
            .consecutive_failures
            .load(Ordering::Relaxed),
        3
    );
    let log = t.take_transitions();
    assert!(
        log[0]
            .why
            .contains("ejected after 3 consecutive connect failures"),
        "{log:?}"
    );
    // Two passing checks bring an ejected backend back (active checks are on).
    pass(&mut t, "b0", now);
    pass(&mut t, "b0", now);
    assert_eq!(t.state("b0"), Some(BackendState::Up));
    // Coming back up clears stale failures before they can eject it again.
    counters
        .get(BackendId(0))
        .consecutive_failures
        .store(9, Ordering::Relaxed);
    t.poll_failures(&counters, now);
    assert_eq!(
        counters
            .get(BackendId(0))
            .consecutive_failures
            .load(Ordering::Relaxed),
        0
    );
    // And b2 could go in the same poll: only b1 is ejected now.
    assert_eq!(t.state("b2"), Some(BackendState::Down));
}

#[test]
fn without_checks_the_backoff_brings_it_back() {
    let now = Instant::now();
    let counters = SharedCounters::new();
    let mut cfg = config(2);
    cfg.service.health = HealthCheck::None;
    let mut t = Table::new(&cfg, &mut ids());
    counters
        .get(BackendId(1))
        .consecutive_failures
        .store(3, Ordering::Relaxed);
    t.poll_failures(&counters, now);
    assert_eq!(t.state("b1"), Some(BackendState::Down));
    t.tick(&counters, now + Duration::from_secs(9));
    assert_eq!(t.state("b1"), Some(BackendState::Down));
    t.tick(&counters, now + Duration::from_secs(10));
    assert_eq!(t.state("b1"), Some(BackendState::Up));
    let log = t.take_transitions();
    assert!(log[1].why.contains("back-off expired"), "{log:?}");
}

#[test]
fn drain_maint_and_up_by_the_operator() {
    let now = Instant::now();
    let mut t = Table::new(&config(2), &mut ids());
    t.set_state("b1", AdminState::Drain, now).expect("drain");
    let e = &t.entries()[1];
    assert_eq!(e.state, BackendState::Draining);
    assert_eq!(e.drain_deadline, Some(now + Duration::from_secs(5)));
    t.set_state("b1", AdminState::Maint, now).expect("maint");
    assert_eq!(t.entries()[1].state, BackendState::Maint);
    assert_eq!(t.entries()[1].drain_deadline, None);
    // Health goes on underneath: back to up means down if its checks failed meanwhile.
    fail(&mut t, "b1", now);
    fail(&mut t, "b1", now);
    t.set_state("b1", AdminState::Up, now).expect("up");
    assert_eq!(t.state("b1"), Some(BackendState::Down));
    assert_eq!(
        t.set_state("nope", AdminState::Up, now),
        Err(TableError::Unknown("nope".into()))
    );
    assert_eq!(AdminState::from_name("drain"), Some(AdminState::Drain));
    assert_eq!(AdminState::from_name("down"), None);
}

#[test]
fn a_removed_backend_drains_then_goes() {
    let now = Instant::now();
    let counters = SharedCounters::new();
    let cfg = config(3);
    let mut ids = ids();
    let mut t = Table::new(&cfg, &mut ids);
    counters
        .get(BackendId(1))
        .active
        .store(2, Ordering::Relaxed);
    let keep = vec![
        cfg.service.backends[0].clone(),
        cfg.service.backends[2].clone(),
    ];
    assert!(
        t.set_backends(&keep, now, &mut ids),
        "b1 is no longer probed"
    );
    assert!(t.take_dirty());
    let e = &t.entries()[1];
    assert_eq!(
        (e.spec.name.as_str(), e.state),
        ("b1", BackendState::Draining)
    );
    assert_eq!(e.drain_deadline, Some(now + Duration::from_secs(5)));
    assert_eq!(
        t.set_state("b1", AdminState::Up, now),
        Err(TableError::Removing("b1".into()))
    );
    t.tick(&counters, now + Duration::from_secs(1));
    assert_eq!(t.entries().len(), 3, "still has connections");
    counters
        .get(BackendId(1))
        .active
        .store(0, Ordering::Relaxed);
    t.tick(&counters, now + Duration::from_secs(2));
    assert_eq!(t.entries().len(), 2);
    assert!(t.take_dirty());
    // Overdue: dropped even with connections the counters still show.
    t.set_backends(&keep[..1], now, &mut ids);
    counters
        .get(BackendId(2))
        .active
        .store(1, Ordering::Relaxed);
    t.tick(&counters, now + Duration::from_secs(6));
    assert_eq!(t.entries().len(), 2);
    t.tick(&counters, now + Duration::from_secs(7));
    assert_eq!(t.entries().len(), 1);
    // Re-added: a fresh backend, up.
    assert!(t.set_backends(&cfg.service.backends, now, &mut ids));
    assert_eq!(t.entries().len(), 3);
    assert!(t.entries().iter().all(|e| e.state == BackendState::Up));
}

#[test]
fn a_recovered_backend_ramps_its_weight() {
    let t0 = Instant::now();
    let counters = SharedCounters::new();
    let mut cfg = config(2);
    cfg.service.algorithm = Algorithm::WeightedRoundRobin;
    cfg.service.slow_start = Duration::from_secs(10);
    cfg.service.backends[1].weight = 2;
    let mut t = Table::new(&cfg, &mut ids());
    let weights = |t: &Table| t.entries().iter().map(|e| e.weight).collect::<Vec<_>>();
    assert_eq!(weights(&t), vec![1, 2], "no ramp at start-up");
    fail(&mut t, "b1", t0);
    fail(&mut t, "b1", t0);
    pass(&mut t, "b1", t0);
    pass(&mut t, "b1", t0);
    assert!(t.take_dirty());
    assert_eq!(weights(&t), vec![100, 20], "10% of 2, everyone scaled");
    let mut seen = vec![20];
    for s in 1..=10 {
        t.tick(&counters, t0 + Duration::from_secs(s));
        assert!(t.take_dirty(), "a step each second");
        seen.push(weights(&t)[1]);
    }
    assert_eq!(seen, vec![20, 38, 56, 74, 92, 110, 128, 146, 164, 182, 2]);
    assert_eq!(weights(&t), vec![1, 2], "done: configured weights again");
    t.tick(&counters, t0 + Duration::from_secs(11));
    assert!(!t.take_dirty());
}

#[test]
fn admin_add_reweight_remove_and_reconfigure() {
    let now = Instant::now();
    let cfg = config(2);
    let mut ids = ids();
    let mut t = Table::new(&cfg, &mut ids);
    let c = parse_backend("127.0.0.1:9100,name=c,weight=3").expect("spec");
    assert_eq!(t.add(c.clone(), now, &mut ids), Ok(true));
    assert_eq!(
        t.add(c.clone(), now, &mut ids),
        Err(TableError::Duplicate("c".into()))
    );
    assert_eq!(
        t.add(c, now, &mut |_| None),
        Err(TableError::Duplicate("c".into()))
    );
    let d = parse_backend("127.0.0.1:9101,name=d").expect("spec");
    assert_eq!(t.add(d, now, &mut |_| None), Err(TableError::Full));
    assert!(t.take_dirty());
    assert_eq!(t.specs().len(), 3);
    t.set_weight("b1", 7, now).expect("weight");
    assert!(t.take_dirty());
    assert_eq!(t.entries()[1].weight, 7);
    assert_eq!(
        t.set_weight("nope", 2, now),
        Err(TableError::Unknown("nope".into()))
    );
    assert_eq!(t.remove("c", now), Ok(true));
    assert_eq!(t.state("c"), Some(BackendState::Draining));
    assert_eq!(t.specs().len(), 2, "a departing backend is not configured");
    assert_eq!(t.remove("c", now), Err(TableError::Removing("c".into())));
    assert_eq!(
        t.set_weight("c", 2, now),
        Err(TableError::Removing("c".into()))
    );
    assert_eq!(
        t.add(
            parse_backend("127.0.0.1:1,name=c").expect("spec"),
            now,
            &mut ids
        ),
        Err(TableError::Duplicate("c".into()))
    );

    // Checks turned off by a reload: a backend their failures took down comes back.
    fail(&mut t, "b0", now);
    fail(&mut t, "b0", now);
    assert_eq!(t.state("b0"), Some(BackendState::Down));
    let mut off = cfg.clone();
    off.service.health = HealthCheck::None;
    off.grace = Duration::from_secs(9);
    t.reconfigure(&off.service, off.grace, now);
    assert_eq!(t.state("b0"), Some(BackendState::Up));
    t.set_state("b1", AdminState::Drain, now).expect("drain");
    assert_eq!(
        t.entries()[1].drain_deadline,
        Some(now + Duration::from_secs(9))
    );
}

#[test]
fn slow_start_is_ignored_by_algorithms_without_weights() {
    let t0 = Instant::now();
    let mut cfg = config(2);
    cfg.service.slow_start = Duration::from_secs(10);
    cfg.service.algorithm = Algorithm::RoundRobin;
    let mut t = Table::new(&cfg, &mut ids());
    fail(&mut t, "b1", t0);
    fail(&mut t, "b1", t0);
    pass(&mut t, "b1", t0);
    pass(&mut t, "b1", t0);
    assert_eq!(t.entries()[1].weight, 1);
}
