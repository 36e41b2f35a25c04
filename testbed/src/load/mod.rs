//! Closed-loop load generators: each connection sends a request, waits for the answer,
//! records its latency, and repeats until the duration (or request budget) runs out.
//!
//! Modes: HTTP keep-alive, HTTP with a new connection per request (`Connection: close`;
//! latency then includes the connect), echo round trips, bulk transfers (each "request" is
//! one connection streaming N verified bytes each way through an echo) and downloads (HTTP
//! GETs of a large body, counting bytes).
//!
//! Connections that fail are counted as errors and re-established (with backoff after
//! repeated failures), so a run survives backends being killed under it. The blocking entry
//! points run a private multi-thread tokio runtime on their own thread, so they work from
//! plain code and from inside another runtime alike; the `_async` variants use the caller's.

mod bulk;
mod echo;
mod gate;
mod http;
mod progress;
mod report;
mod runner;
mod schedule;

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

pub use gate::Gate;
pub use progress::{Progress, ProgressFn};
pub use report::{
    fmt_us, per_second, LatencySummary, PercentilePoint, Report, Summary, PERCENTILES,
};
pub use schedule::{latency_origin, Schedule};

/// Which protocol a run spoke; kept in the [`Report`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadKind {
    /// HTTP/1.1 keep-alive GETs.
    Http,
    /// Fixed-size messages over a TCP echo.
    Echo,
    /// One connection per transfer, streaming `bulk_bytes` each way through a TCP echo.
    Bulk,
    /// HTTP/1.1 GETs of a large body (e.g. a file), counting the bytes received.
    Download,
}

/// How to run a load; start from `LoadConfig::new(connections, duration)` or `Default`.
#[derive(Clone)]
pub struct LoadConfig {
    /// Concurrent connections, each with one request in flight.
    pub connections: usize,
    /// How long to keep sending.
    pub duration: Duration,
    /// Runtime worker threads for the blocking entry points (the machine has 2 cores
    /// shared with the balancer and backends, so 1 is the default).
    pub threads: usize,
    /// Stop after this many requests in total (successful or not), if set.
    pub total_requests: Option<u64>,
    /// A request slower than this counts as an error and its connection is replaced.
    pub request_timeout: Duration,
    /// Connect attempts slower than this count as an error.
    pub connect_timeout: Duration,
    /// HTTP request target, e.g. `/` or `/big?bytes=1M`.
    pub path: String,
    /// HTTP: send `Connection: close` and open a new connection for every request (the
    /// latency then includes the connect).
    pub close: bool,
    /// Bulk: bytes each connection sends (and expects back) per transfer.
    pub bulk_bytes: u64,
    /// Echo message size in bytes.
    pub msg_size: usize,
    /// Open loop: requests per second in all, paced per connection (`None`: closed loop,
    /// each connection sends as soon as its previous answer is in).
    pub rate: Option<f64>,
    /// Called about once a second with running totals, e.g. to print a progress line.
    pub progress: Option<ProgressFn>,
    /// Set to true to end the run early (e.g. on Ctrl-C).
    pub stop: Option<Arc<AtomicBool>>,
}

impl Default for LoadConfig {
    fn default() -> Self {
        Self {
            connections: 16,
            duration: Duration::from_secs(5),
            threads: 1,
            total_requests: None,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            path: "/".to_string(),
            close: false,
            bulk_bytes: 64 << 20,
            msg_size: 64,
            rate: None,
            progress: None,
            stop: None,
        }
    }
}

impl std::fmt::Debug for LoadConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadConfig")
            .field("connections", &self.connections)
            .field("duration", &self.duration)
            .field("threads", &self.threads)
            .field("total_requests", &self.total_requests)
            .field("request_timeout", &self.request_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("path", &self.path)
            .field("close", &self.close)
            .field("bulk_bytes", &self.bulk_bytes)
            .field("msg_size", &self.msg_size)
            .field("rate", &self.rate)
            .field("progress", &self.progress.is_some())
            .field("stop", &self.stop)
            .finish()
    }
}

impl LoadConfig {
    /// Defaults with the given connection count and duration.
    pub fn new(connections: usize, duration: Duration) -> Self {
        Self {
            connections,
            duration,
            ..Self::default()
        }
    }

    /// Sets the progress callback.
    pub fn with_progress(mut self, f: impl Fn(&Progress) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(f));
        self
    }
}

/// HTTP/1.1 keep-alive `GET /` on `connections` connections for `duration`; responses are
/// counted per backend by their body (the [`HttpServer`](crate::HttpServer) name).
pub fn http_keepalive(
    target: SocketAddr,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<Report> {
    http_keepalive_with(target, &LoadConfig::new(connections, duration))
}

/// [`http_keepalive`] with full control (path, progress, request budget, early stop).
pub fn http_keepalive_with(target: SocketAddr, cfg: &LoadConfig) -> anyhow::Result<Report> {
    runner::run_blocking(LoadKind::Http, target, cfg.clone())
}

/// HTTP/1.1 GETs with `Connection: close`: every request on a new connection, its latency
/// measured from before the connect to the end of the response.
pub fn http_close(
    target: SocketAddr,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<Report> {
    let cfg = LoadConfig {
        close: true,
        ..LoadConfig::new(connections, duration)
    };
    http_keepalive_with(target, &cfg)
}

/// [`http_keepalive_with`] on the caller's tokio runtime.
pub async fn http_keepalive_async(target: SocketAddr, cfg: LoadConfig) -> Report {
    runner::run(LoadKind::Http, target, cfg).await
}

/// Request/response over a TCP echo: each connection writes `msg_size` bytes of the
/// [`pattern`](crate::pattern) stream and reads them back (verified) before the next.
pub fn echo(
    target: SocketAddr,
    connections: usize,
    duration: Duration,
    msg_size: usize,
) -> anyhow::Result<Report> {
    let cfg = LoadConfig {
        msg_size,
        ..LoadConfig::new(connections, duration)
    };
    echo_with(target, &cfg)
}

/// [`echo`] with full control; the message size is `cfg.msg_size`.
pub fn echo_with(target: SocketAddr, cfg: &LoadConfig) -> anyhow::Result<Report> {
    runner::run_blocking(LoadKind::Echo, target, cfg.clone())
}

/// [`echo_with`] on the caller's tokio runtime.
pub async fn echo_async(target: SocketAddr, cfg: LoadConfig) -> Report {
    runner::run(LoadKind::Echo, target, cfg).await
}

/// Bulk transfers through a TCP echo: each connection streams `cfg.bulk_bytes` bytes of the
/// [`pattern`](crate::pattern) stream, reads the same number back and checks every byte
/// against the pattern at its offset, then closes; one transfer per connection. Transfers
/// whose bytes differ count in [`Report::mismatches`] (and as errors). The run ends when
/// `cfg.total_requests` transfers (default: one per connection) were attempted, or at
/// `cfg.duration`.
pub fn bulk_with(target: SocketAddr, cfg: &LoadConfig) -> anyhow::Result<Report> {
    let mut cfg = cfg.clone();
    cfg.total_requests = Some(cfg.total_requests.unwrap_or(cfg.connections as u64));
    runner::run_blocking(LoadKind::Bulk, target, cfg)
}

/// [`bulk_with`] on the caller's tokio runtime.
pub async fn bulk_async(target: SocketAddr, mut cfg: LoadConfig) -> Report {
    cfg.total_requests = Some(cfg.total_requests.unwrap_or(cfg.connections as u64));
    runner::run(LoadKind::Bulk, target, cfg).await
}

/// Downloads over HTTP/1.1 keep-alive: GETs of `cfg.path` (e.g. `/big.bin` from an nginx
/// backend), counting body bytes; `cfg.total_requests` downloads in all (default: one per
/// connection), or until `cfg.duration`.
pub fn download_with(target: SocketAddr, cfg: &LoadConfig) -> anyhow::Result<Report> {
    let mut cfg = cfg.clone();
    cfg.total_requests = Some(cfg.total_requests.unwrap_or(cfg.connections as u64));
    runner::run_blocking(LoadKind::Download, target, cfg)
}
