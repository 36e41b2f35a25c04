//! Once-a-second progress snapshots for live output (the demo prints one line per tick).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Callback receiving a [`Progress`] about once a second, on a load worker thread.
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// Running totals at one tick.
#[derive(Debug, Clone)]
pub struct Progress {
    /// Time since the run started.
    pub elapsed: Duration,
    /// Completed requests so far.
    pub requests: u64,
    /// Errors so far.
    pub errors: u64,
    /// Completed requests since the previous tick.
    pub interval_requests: u64,
    /// Length of that interval.
    pub interval: Duration,
    /// Requests so far per backend name (HTTP only).
    pub per_backend: BTreeMap<String, u64>,
}

impl Progress {
    /// Request rate over the last interval.
    pub fn rate(&self) -> f64 {
        let secs = self.interval.as_secs_f64();
        if secs > 0.0 {
            self.interval_requests as f64 / secs
        } else {
            0.0
        }
    }

    /// One human-readable line, e.g. `[  3s]    12345 req/s  total 37012  errors 0  a=...`.
    pub fn line(&self) -> String {
        let mut s = format!(
            "[{:>4.0}s] {:>9.0} req/s  total {}  errors {}",
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.requests,
            self.errors
        );
        for (name, n) in &self.per_backend {
            s.push_str(&format!("  {name}={n}"));
        }
        s
    }
}
