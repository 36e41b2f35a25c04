//! The faults and operations the soak throws at the balancer, at seeded random intervals:
//! kill and restart a backend, rewrite the config and reload it (SIGHUP or `POST /reload`),
//! drain a backend and bring it back (or delete and re-add it) over the admin API, and
//! open idle connections up to `--max-conns`, hold them, drop them.
//!
//! Kinds come from a shuffled bag, so every kind happens once in every four events. Kills
//! run on their own thread (the backend stays down while other events happen); the other
//! kinds run one after another, so an admin change and a reload never race each other.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::Serialize;

use super::admin::Admin;
use super::backends::Backends;
use super::rng::Rng;
use super::traffic::{utc_now, Marks};

/// Algorithms a reload switches between.
pub const ALGORITHMS: [&str; 3] = ["round-robin", "least-conn", "maglev"];

/// Counts of what happened, for the report.
#[derive(Debug, Default, Serialize)]
pub struct EventCounts {
    pub kills: u64,
    pub reloads_sighup: u64,
    pub reloads_post: u64,
    pub drains: u64,
    pub removes: u64,
    pub bursts: u64,
    /// Connections the killed backends had open when killed.
    pub conns_cut_by_kills: u64,
    /// Bursts during which the backends saw at least --max-conns connections at once.
    pub bursts_at_limit: u64,
    /// The most connections the backends had open at once during a burst.
    pub burst_peak_conns: u64,
    /// Burst connects that failed (the kernel backlog should hold them all).
    pub burst_connect_errors: u64,
    /// Operations that did not do what they should (an admin call refused, a reload not
    /// taken, a backend that would not restart): each is a failure of the run.
    pub errors: Vec<String>,
    /// Every event with its UTC time (as in uringlb's log), in order.
    pub timeline: Vec<String>,
}

impl EventCounts {
    fn log(&mut self, what: String) {
        self.timeline.push(format!("{} {what}", utc_now()));
    }
}

/// Timing of the events.
#[derive(Debug, Clone)]
pub struct EventSpec {
    pub interval_min: Duration,
    pub interval_max: Duration,
    pub downtime_min: Duration,
    pub downtime_max: Duration,
    pub burst_hold: Duration,
    pub max_conns: usize,
    pub seed: u64,
}

/// What an event needs to reach the balancer.
pub struct Target {
    pub listen: SocketAddr,
    pub admin: Admin,
    pub pid: u32,
    pub config: PathBuf,
}

/// The config file the soak writes: the algorithm and the backends, with weights. Every
/// other setting is a flag, so a reload never needs a restart.
pub fn config_text(algorithm: &str, backends: &Backends, weights: &[u32]) -> String {
    let mut s = format!("algorithm = \"{algorithm}\"\n");
    for i in 0..backends.len() {
        s.push_str(&format!(
            "\n[[backend]]\naddr = \"{}\"\nname = \"{}\"\nweight = {}\n",
            backends.addr(i),
            backends.name(i),
            weights.get(i).copied().unwrap_or(1)
        ));
    }
    s
}

/// Writes through a temporary file and a rename, so a reload never reads half a file.
pub fn write_config(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot rename to {}", path.display()))
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Kill,
    Reload,
    Drain,
    Burst,
}

/// The event thread's state.
struct Events {
    spec: EventSpec,
    target: Target,
    backends: Arc<Backends>,
    marks: Arc<Marks>,
    counts: Arc<Mutex<EventCounts>>,
    rng: Rng,
    weights: Vec<u32>,
    kill_thread: Option<JoinHandle<()>>,
}

/// Runs events until `stop`; returns the counts once the last event (and the restart of a
/// killed backend) is over, so the run ends with every backend up and in the table.
pub fn spawn(
    spec: EventSpec,
    target: Target,
    backends: Arc<Backends>,
    marks: Arc<Marks>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<EventCounts>> {
    let weights = vec![1; backends.len()];
    let mut ev = Events {
        rng: Rng::new(spec.seed, 1),
        spec,
        target,
        backends,
        marks,
        counts: Arc::new(Mutex::new(EventCounts::default())),
        weights,
        kill_thread: None,
    };
    std::thread::Builder::new()
        .name("soak-events".into())
        .spawn(move || {
            let mut bag: Vec<Kind> = Vec::new();
            // Per kind, so the variants of a kind alternate whatever the bag's order.
            let (mut reloads, mut drains) = (0u64, 0u64);
            loop {
                let wait = ev.rng.duration(ev.spec.interval_min, ev.spec.interval_max);
                if !sleep_unless(&stop, wait) {
                    break;
                }
                if bag.is_empty() {
                    bag = vec![Kind::Kill, Kind::Reload, Kind::Drain, Kind::Burst];
                    ev.rng.shuffle(&mut bag);
                }
                let Some(kind) = bag.pop() else { continue };
                let r = match kind {
                    Kind::Kill => ev.kill(),
                    Kind::Reload => {
                        reloads += 1;
                        ev.reload(reloads)
                    }
                    Kind::Drain => {
                        drains += 1;
                        ev.drain(drains)
                    }
                    Kind::Burst => ev.burst(),
                };
                if let Err(e) = r {
                    ev.error(format!("{kind:?}: {e:#}"));
                }
            }
            if let Some(t) = ev.kill_thread.take() {
                let _ = t.join();
            }
            let counts = std::mem::take(&mut *lock(&ev.counts));
            counts
        })
}

/// Sleeps `d` in small steps; false if `stop` was set meanwhile.
fn sleep_unless(stop: &AtomicBool, d: Duration) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20).min(end - Instant::now()));
    }
    !stop.load(Ordering::Relaxed)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Events {
    fn error(&self, e: String) {
        tracing::warn!("soak event failed: {e}");
        let mut c = lock(&self.counts);
        c.log(format!("ERROR {e}"));
        c.errors.push(e);
    }

    fn log(&self, what: String) {
        lock(&self.counts).log(what);
    }

    fn pick_backend(&mut self) -> usize {
        self.rng.range(0, self.backends.len() as u64 - 1) as usize
    }

    /// Kills a backend now and restarts it after a random downtime, on another thread.
    fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(t) = self.kill_thread.take() {
            let _ = t.join();
        }
        let i = self.pick_backend();
        let downtime = self
            .rng
            .duration(self.spec.downtime_min, self.spec.downtime_max);
        let (backends, marks, counts) = (
            self.backends.clone(),
            self.marks.clone(),
            self.counts.clone(),
        );
        self.kill_thread = Some(std::thread::Builder::new().name("soak-kill".into()).spawn(
            move || {
                // Marked around the kill: an exchange that sees its connection cut, or
                // that reached the backend while it was closing, sees the mark.
                marks.kill_phase.fetch_add(1, Ordering::SeqCst);
                let cut = backends.kill(i);
                marks.kill_phase.fetch_add(1, Ordering::SeqCst);
                {
                    let mut c = lock(&counts);
                    c.kills += 1;
                    c.conns_cut_by_kills += cut;
                    c.log(format!(
                        "killed {} ({cut} connections cut)",
                        backends.name(i)
                    ));
                }
                std::thread::sleep(downtime);
                let r = backends.restart(i);
                let mut c = lock(&counts);
                match r {
                    Ok(()) => c.log(format!("restarted {}", backends.name(i))),
                    Err(e) => {
                        c.log(format!("ERROR restart {}: {e:#}", backends.name(i)));
                        c.errors.push(format!("restart: {e:#}"));
                    }
                }
            },
        )?);
        Ok(())
    }

    /// New weights and algorithm in the file; SIGHUP and `POST /reload` in turn (`n`: which
    /// reload this is).
    fn reload(&mut self, n: u64) -> anyhow::Result<()> {
        let algorithm = ALGORITHMS[self.rng.range(0, ALGORITHMS.len() as u64 - 1) as usize];
        self.weights = (0..self.backends.len())
            .map(|_| self.rng.range(1, 4) as u32)
            .collect();
        write_config(
            &self.target.config,
            &config_text(algorithm, &self.backends, &self.weights),
        )?;
        self.log(format!(
            "reload ({}): {algorithm}, weights {:?}",
            if n % 2 == 1 { "SIGHUP" } else { "POST" },
            self.weights
        ));
        let admin = self.target.admin;
        let reloads = |m: &super::admin::Metrics| {
            m.get("uringlb_config_reloads_total", "result", "ok")
                .unwrap_or(0.0)
        };
        if n % 2 == 1 {
            let before = reloads(&admin.metrics()?);
            let pid = i32::try_from(self.target.pid).context("pid out of range")?;
            kill(Pid::from_raw(pid), Signal::SIGHUP).context("send SIGHUP")?;
            let deadline = Instant::now() + Duration::from_secs(10);
            while reloads(&admin.metrics()?) <= before {
                if Instant::now() > deadline {
                    bail!("SIGHUP: no successful reload within 10 s ({algorithm})");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            lock(&self.counts).reloads_sighup += 1;
        } else {
            let r = admin.expect("POST", "/reload", None, 200)?;
            let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
            if v["result"] != "ok" {
                bail!("POST /reload answered {}", r.body.trim());
            }
            lock(&self.counts).reloads_post += 1;
        }
        Ok(())
    }

    /// Drains a backend and sets it up again, or (every other time: `n` counts them) deletes
    /// it and adds it back once it has left the table.
    fn drain(&mut self, n: u64) -> anyhow::Result<()> {
        let i = self.pick_backend();
        let name = self.backends.name(i).to_string();
        let path = format!("/backends/{name}");
        let admin = self.target.admin;
        let hold = self
            .rng
            .duration(Duration::from_millis(500), Duration::from_millis(1500));
        if n % 2 == 1 {
            self.log(format!("drain {name}"));
            admin.expect("PATCH", &path, Some(r#"{"state":"drain"}"#), 200)?;
            std::thread::sleep(hold);
            self.log(format!("up {name}"));
            admin.expect("PATCH", &path, Some(r#"{"state":"up"}"#), 200)?;
            lock(&self.counts).drains += 1;
        } else {
            self.log(format!("delete {name}"));
            admin.expect("DELETE", &path, None, 202)?;
            std::thread::sleep(hold);
            let body = serde_json::json!({
                "addr": self.backends.addr(i).to_string(),
                "name": name,
                "weight": self.weights.get(i).copied().unwrap_or(1),
            })
            .to_string();
            // 409 while its last connections drain; long transfers may take a while.
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let r = admin.req("POST", "/backends", Some(&body))?;
                match r.status {
                    201 => {
                        self.log(format!("re-added {name}"));
                        break;
                    }
                    409 if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(100))
                    }
                    s => bail!("POST /backends ({name}): status {s}: {}", r.body.trim()),
                }
            }
            lock(&self.counts).removes += 1;
        }
        Ok(())
    }

    /// Opens `max_conns` idle connections (so with the load's own the balancer is at its
    /// limit and the rest wait in the kernel backlog), holds them, closes them.
    fn burst(&mut self) -> anyhow::Result<()> {
        self.log(format!("burst of {} idle connections", self.spec.max_conns));
        self.marks.burst_phase.fetch_add(1, Ordering::SeqCst);
        let mut conns = Vec::with_capacity(self.spec.max_conns);
        let mut errors = 0u64;
        for _ in 0..self.spec.max_conns {
            match TcpStream::connect_timeout(&self.target.listen, Duration::from_secs(2)) {
                Ok(s) => conns.push(s),
                Err(e) => {
                    errors += 1;
                    tracing::debug!("burst connect: {e}");
                    if errors > 20 {
                        break;
                    }
                }
            }
        }
        let mut peak = 0;
        let end = Instant::now() + self.spec.burst_hold;
        while Instant::now() < end {
            peak = peak.max(self.backends.active());
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(conns);
        self.log(format!("burst dropped (peak {peak} backend connections)"));
        // Let the balancer close them and take in what waited in the backlog.
        std::thread::sleep(Duration::from_millis(300));
        self.marks.burst_phase.fetch_add(1, Ordering::SeqCst);
        let mut c = lock(&self.counts);
        c.bursts += 1;
        c.burst_connect_errors += errors;
        c.burst_peak_conns = c.burst_peak_conns.max(peak);
        if peak >= self.spec.max_conns as u64 {
            c.bursts_at_limit += 1;
        }
        Ok(())
    }
}
