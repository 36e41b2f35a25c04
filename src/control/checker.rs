//! Schedules the active health checks: one task per backend on the control thread's
//! runtime. Backends start their rounds at evenly spaced offsets across the interval, and
//! each round is jittered by up to ±10%, so checks never all fire at the same instant and
//! do not fall into lockstep later.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use std::sync::Arc;

use crate::config::{HealthCheck, ProxyProtocol, ServiceSettings};
use crate::health::probe;

use super::backends::ProbeTarget;

/// One finished check.
#[derive(Debug)]
pub struct CheckResult {
    /// The service of the backend checked.
    pub service: Arc<str>,
    pub target: ProbeTarget,
    /// `Err` holds the reason, one line.
    pub result: Result<(), String>,
}

/// The running probe tasks, one per target.
pub struct Checker {
    service: Arc<str>,
    kind: HealthCheck,
    interval: Duration,
    timeout: Duration,
    /// `--proxy-protocol`: the header for backends that do not set their own.
    proxy_protocol: Option<ProxyProtocol>,
    results: UnboundedSender<CheckResult>,
    tasks: HashMap<String, (ProbeTarget, JoinHandle<()>)>,
    rng: u64,
}

impl Checker {
    /// The checks of service `service`'s backends, as `settings` say.
    pub fn new(
        service: &str,
        settings: &ServiceSettings,
        results: UnboundedSender<CheckResult>,
    ) -> Checker {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ u64::from(std::process::id());
        Checker {
            service: service.into(),
            kind: settings.active_check(),
            interval: settings.health_interval,
            timeout: settings.health_timeout,
            proxy_protocol: settings.proxy_protocol,
            results,
            tasks: HashMap::new(),
            rng: seed | 1,
        }
    }

    /// Makes the running probes match `targets`: stops the ones no longer wanted (or of an
    /// old address), starts the new ones. Must run inside the runtime.
    pub fn sync(&mut self, targets: &[ProbeTarget]) {
        if self.kind == HealthCheck::None {
            return;
        }
        self.tasks.retain(|name, (t, handle)| {
            let keep = targets.iter().any(|n| n == t) && !handle.is_finished();
            if !keep {
                tracing::debug!("health checks of {name} stopped");
                handle.abort();
            }
            keep
        });
        let first_round = self.tasks.is_empty();
        for (i, target) in targets.iter().enumerate() {
            if self.tasks.contains_key(&target.name) {
                continue;
            }
            // Evenly spaced at start-up; a backend added later starts anywhere.
            let offset = if first_round {
                spread(self.interval, i, targets.len())
            } else {
                self.interval.mul_f64(unit(next(&mut self.rng)))
            };
            let how = Probe {
                kind: self.kind.clone(),
                timeout: self.timeout,
                proxy: target.proxy_protocol.or(self.proxy_protocol),
                service: self.service.clone(),
            };
            let handle = tokio::spawn(probe_loop(
                target.clone(),
                how,
                self.interval,
                offset,
                next(&mut self.rng),
                self.results.clone(),
            ));
            self.tasks
                .insert(target.name.clone(), (target.clone(), handle));
        }
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        for (_, (_, h)) in self.tasks.drain() {
            h.abort();
        }
    }
}

/// How often a probe that cannot run for a local shortage says so.
const LOCAL_WARN_EVERY: Duration = Duration::from_secs(10);

/// One check of one backend, as [`probe::check`] runs it.
struct Probe {
    service: Arc<str>,
    kind: HealthCheck,
    timeout: Duration,
    /// The PROXY header to send first: the backend's own setting, else `--proxy-protocol`.
    proxy: Option<ProxyProtocol>,
}

async fn probe_loop(
    target: ProbeTarget,
    how: Probe,
    interval: Duration,
    offset: Duration,
    mut rng: u64,
    results: UnboundedSender<CheckResult>,
) {
    let mut at = Instant::now() + offset;
    let mut next_warn = at;
    loop {
        tokio::time::sleep_until(at).await;
        let result = probe::check(target.addr, &how.kind, how.timeout, how.proxy).await;
        match &result {
            Err(e) if e.is_local() => {
                // Our shortage, not the backend's failure: no result either way.
                if at >= next_warn {
                    tracing::warn!("health check of {} could not run: {e}", target.name);
                    next_warn = at + LOCAL_WARN_EVERY;
                }
            }
            _ => {
                if let Err(e) = &result {
                    tracing::debug!("health check of {} failed: {e}", target.name);
                }
                let msg = CheckResult {
                    service: how.service.clone(),
                    target: target.clone(),
                    result: result.map_err(|e| e.to_string()),
                };
                if results.send(msg).is_err() {
                    return;
                }
            }
        }
        let jitter = 0.9 + 0.2 * unit(next(&mut rng));
        at += interval.mul_f64(jitter);
        // A check slower than the interval: start the next one now rather than in a burst.
        let now = Instant::now();
        if at < now {
            at = now;
        }
    }
}

/// The `i`th of `n` evenly spaced start offsets within `interval`.
fn spread(interval: Duration, i: usize, n: usize) -> Duration {
    interval.mul_f64(i as f64 / n.max(1) as f64)
}

/// splitmix64: enough randomness for jitter, no dependency.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A number in [0, 1).
fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_range() {
        let mut s = 7;
        for _ in 0..1000 {
            let u = unit(next(&mut s));
            assert!((0.0..1.0).contains(&u));
        }
    }

    #[test]
    fn start_offsets_are_evenly_spaced() {
        let offsets: Vec<u128> = (0..4)
            .map(|i| spread(Duration::from_secs(4), i, 4).as_millis())
            .collect();
        assert_eq!(offsets, vec![0, 1000, 2000, 3000]);
        assert_eq!(spread(Duration::from_secs(1), 0, 0), Duration::ZERO);
    }
}
