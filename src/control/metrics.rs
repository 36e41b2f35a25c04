//! `/metrics`: the balancer's counters in the OpenMetrics text format (which Prometheus
//! scrapes natively), built at scrape time.
//!
//! Nothing here is on the data path. Workers count in their own cache-padded
//! [`WorkerStats`](crate::worker::WorkerStats) and in the per-backend
//! [`SharedCounters`](crate::backend::SharedCounters); a scrape sums them and merges the
//! workers' connect-time hdrhistograms into fixed Prometheus buckets. Only what the control
//! thread itself observes (health-check results, reloads) is counted here, in [`Counts`].
//!
//! Names are those the README lists under "Metrics". prometheus-client appends `_total` to counters, so
//! counters are registered without it (`uringlb_connections` is exposed as
//! `uringlb_connections_total`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};

use crate::backend::{BackendId, BackendState, ServiceId};
use crate::direction::{Dir, PerDir};
use crate::worker::stats::{Refused, ServiceCounts};
use crate::worker::Shared;

use super::backends::BackendStatus;

/// The Content-Type of a scrape: OpenMetrics 1.0 text, as prometheus-client writes it.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds (seconds) of `uringlb_connect_duration_seconds`. A connect on a LAN takes
/// tens of microseconds to a few milliseconds; the tail reaches `--connect-timeout`
/// (default 2 s), so the buckets span 50 us to 10 s.
pub const CONNECT_BUCKETS: [f64; 17] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// What the control thread counts itself.
#[derive(Debug, Default)]
pub struct Counts {
    /// Health-check results per (service, backend): [passed, failed].
    checks: HashMap<(String, String), [u64; 2]>,
    reloads_ok: u64,
    reloads_error: u64,
}

impl Counts {
    pub fn on_check(&mut self, service: &str, backend: &str, passed: bool) {
        let c = self
            .checks
            .entry((service.to_string(), backend.to_string()))
            .or_default();
        c[usize::from(!passed)] += 1;
    }

    pub fn on_reload(&mut self, ok: bool) {
        if ok {
            self.reloads_ok += 1;
        } else {
            self.reloads_error += 1;
        }
    }

    /// Forgets the check counts of backends no longer in a table (bounded memory when
    /// backends come and go): `live` are the (service, backend) pairs that are.
    pub fn retain_backends(&mut self, live: &HashSet<(&str, &str)>) {
        self.checks
            .retain(|(s, b), _| live.contains(&(s.as_str(), b.as_str())));
    }
}

/// One backend as `/backends` and `/metrics` show it: the table's view plus the workers'
/// shared counters.
#[derive(Debug, Clone)]
pub struct BackendSample {
    pub service: String,
    pub status: BackendStatus,
    pub active_conns: u64,
    pub total_conns: u64,
    pub connect_failures: u64,
    /// Its id in the shared counters (none for a backend not published yet).
    pub id: Option<BackendId>,
    /// Bytes forwarded on its connections, client -> backend and back.
    pub bytes: PerDir<u64>,
}

impl BackendSample {
    pub fn new(
        service: &str,
        status: BackendStatus,
        id: Option<BackendId>,
        shared: &Shared,
    ) -> BackendSample {
        let (active, total, failures, bytes) = match id {
            Some(id) => {
                let c = shared.counters.get(id);
                (
                    c.active.load(Ordering::Relaxed),
                    c.total.load(Ordering::Relaxed),
                    c.failures.load(Ordering::Relaxed),
                    PerDir::new(
                        c.bytes(Dir::Up).load(Ordering::Relaxed),
                        c.bytes(Dir::Down).load(Ordering::Relaxed),
                    ),
                )
            }
            None => (0, 0, 0, PerDir::new(0, 0)),
        };
        BackendSample {
            service: service.to_string(),
            status,
            active_conns: active,
            total_conns: total,
            connect_failures: failures,
            id,
            bytes,
        }
    }
}

type Labels = Vec<(String, String)>;

fn label(key: &str, value: &str) -> Labels {
    vec![(key.to_string(), value.to_string())]
}

/// The labels of a per-backend series.
fn backend_labels(b: &BackendSample) -> Labels {
    vec![
        ("service".to_string(), b.service.clone()),
        ("backend".to_string(), b.status.name.clone()),
    ]
}

/// The whole exposition for one scrape; `published` is the version of the latest snapshot.
pub fn encode(
    counts: &Counts,
    backends: &[BackendSample],
    services: &[(String, ServiceId)],
    udp_services: &[(String, ServiceId)],
    shared: &Shared,
    published: u64,
) -> String {
    let mut reg = Registry::default();
    register_service_counts(&mut reg, services, shared);

    let connections = Family::<Labels, Counter>::default();
    let active = Family::<Labels, Gauge>::default();
    let failures = Family::<Labels, Counter>::default();
    let up = Family::<Labels, Gauge>::default();
    let checks = Family::<Labels, Counter>::default();
    let backend_bytes = Family::<Labels, Counter>::default();
    for b in backends {
        let labels = backend_labels(b);
        for dir in Dir::BOTH {
            let mut l = labels.clone();
            l.push(("direction".to_string(), dir.label().to_string()));
            backend_bytes.get_or_create(&l).inc_by(b.bytes[dir]);
        }
        connections.get_or_create(&labels).inc_by(b.total_conns);
        active
            .get_or_create(&labels)
            .set(i64::try_from(b.active_conns).unwrap_or(i64::MAX));
        failures.get_or_create(&labels).inc_by(b.connect_failures);
        up.get_or_create(&labels)
            .set(i64::from(b.status.state == BackendState::Up));
        let key = (b.service.clone(), b.status.name.clone());
        let [passed, failed] = counts.checks.get(&key).copied().unwrap_or_default();
        for (result, n) in [("success", passed), ("failure", failed)] {
            let mut l = labels.clone();
            l.push(("result".to_string(), result.to_string()));
            checks.get_or_create(&l).inc_by(n);
        }
    }
    reg.register(
        "uringlb_connections",
        "Connections established to the backend",
        connections,
    );
    reg.register(
        "uringlb_connections_active",
        "Connections open to the backend now",
        active,
    );
    reg.register(
        "uringlb_connect_failures",
        "Failed connects to the backend (each retry counts)",
        failures,
    );
    reg.register(
        "uringlb_backend_up",
        "1 if the backend takes new connections (up), 0 if down, draining or in maintenance",
        up,
    );
    reg.register(
        "uringlb_health_checks",
        "Active health checks of the backend by result",
        checks,
    );
    reg.register(
        "uringlb_backend_bytes",
        "Bytes forwarded on the backend's connections by direction (open connections' \
         bytes are added once a second, the rest when they end)",
        backend_bytes,
    );

    let sum = |f: fn(&crate::worker::WorkerStats) -> u64| -> u64 {
        shared.stats.iter().map(|s| f(s)).sum()
    };
    let bytes = Family::<Labels, Counter>::default();
    for dir in Dir::BOTH {
        bytes
            .get_or_create(&label("direction", dir.label()))
            .inc_by(shared.bytes_forwarded(dir));
    }
    reg.register(
        "uringlb_bytes",
        "Bytes forwarded by direction: TCP streams' bytes and UDP payload bytes",
        bytes,
    );

    let spliced = Family::<Labels, Counter>::default();
    let version = Family::<Labels, Gauge>::default();
    for (i, s) in shared.stats.iter().enumerate() {
        let worker = label("worker", &i.to_string());
        spliced
            .get_or_create(&worker)
            .inc_by(s.spliced.iter().map(|n| n.load(Ordering::Relaxed)).sum());
        let v = s.snapshot_version.load(Ordering::Acquire);
        version
            .get_or_create(&worker)
            .set(i64::try_from(v).unwrap_or(i64::MAX));
    }
    reg.register(
        "uringlb_splice_bytes",
        "Bytes the worker forwarded by splice (zero-copy), both directions; part of uringlb_bytes_total",
        spliced,
    );
    reg.register(
        "uringlb_snapshot_version",
        "Version of the backend table the worker routes new connections with",
        version,
    );
    let latest = Gauge::<i64>::default();
    latest.set(i64::try_from(published).unwrap_or(i64::MAX));
    reg.register(
        "uringlb_snapshot_published_version",
        "Version of the latest backend table the control thread published; a change has \
         reached every worker when each uringlb_snapshot_version is at least this",
        latest,
    );

    let accepted = Family::<Labels, Counter>::default();
    for (i, s) in shared.stats.iter().enumerate() {
        accepted
            .get_or_create(&label("worker", &i.to_string()))
            .inc_by(s.accepted.load(Ordering::Relaxed));
    }
    reg.register(
        "uringlb_accepted",
        "Client connections accepted by the worker",
        accepted,
    );

    let rejected = Family::<Labels, Counter>::default();
    for why in Refused::ALL {
        rejected
            .get_or_create(&label("reason", why.label()))
            .inc_by(
                shared
                    .stats
                    .iter()
                    .map(|s| why.counter(s).load(Ordering::Relaxed))
                    .sum(),
            );
    }
    reg.register(
        "uringlb_rejected",
        "Client connections closed unserved, by reason: no backend reachable, no connection \
         slot free, a per-source limit, an allow/deny list, a bad PROXY header, every backend at max-conns \
         for the whole connect timeout, no local resource for the backend socket, the \
         balancer's own connection coming back, a TLS server name no service takes, no valid \
         ClientHello in time",
        rejected,
    );

    let replays = Counter::<u64>::default();
    replays.inc_by(sum(|s| s.replays.load(Ordering::Relaxed)));
    reg.register(
        "uringlb_replays",
        "Client first bytes sent again to another backend because theirs closed before answering",
        replays,
    );
    let cq = Counter::<u64>::default();
    cq.inc_by(sum(|s| s.cq_backlogged.load(Ordering::Relaxed)));
    reg.register(
        "uringlb_cq_overflows",
        "Times a worker's io_uring completion queue was full and the kernel held completions \
         back (none is lost; a sign the queue is too small for the load)",
        cq,
    );
    let alive = Gauge::<i64>::default();
    alive.set(shared.workers_alive() as i64);
    reg.register("uringlb_workers_alive", "Worker threads running", alive);
    let restarts = Counter::<u64>::default();
    restarts.inc_by(shared.worker_restarts.load(Ordering::Relaxed));
    reg.register(
        "uringlb_worker_restarts",
        "Workers started again after their event loop failed",
        restarts,
    );
    let open = Gauge::<i64>::default();
    open.set(shared.open_clients.load(Ordering::Relaxed) as i64);
    reg.register(
        "uringlb_client_connections",
        "Client connections open",
        open,
    );
    let max = Gauge::<i64>::default();
    max.set(shared.max_conns as i64);
    reg.register(
        "uringlb_client_connections_limit",
        "The balancer-wide limit of client connections (--max-conns)",
        max,
    );

    reg.register_with_unit(
        "uringlb_connect_duration",
        "Time to connect to the backend (successful connects)",
        Unit::Seconds,
        BackendHistograms(
            backends
                .iter()
                .filter_map(|b| Some((backend_labels(b), connect_histogram(shared, b.id?))))
                .collect(),
        ),
    );
    let dropped = Counter::<u64>::default();
    dropped.inc_by(sum(|s| s.access_log_dropped.load(Ordering::Relaxed)));
    reg.register(
        "uringlb_access_log_dropped",
        "Access log records dropped because a worker's queue was full (the destination \
         did not keep up); the connections themselves were not slowed",
        dropped,
    );

    let reloads = Family::<Labels, Counter>::default();
    reloads
        .get_or_create(&label("result", "ok"))
        .inc_by(counts.reloads_ok);
    reloads
        .get_or_create(&label("result", "error"))
        .inc_by(counts.reloads_error);
    reg.register(
        "uringlb_config_reloads",
        "Configuration reloads (SIGHUP, POST /reload) by result",
        reloads,
    );

    let resolutions = Counter::<u64>::default();
    resolutions.inc_by(super::discovery::RESOLUTIONS.load(Ordering::Relaxed));
    reg.register(
        "uringlb_discovery_resolutions",
        "Discovery answers received (DNS SRV or Consul)",
        resolutions,
    );
    let discovery_failures = Counter::<u64>::default();
    discovery_failures.inc_by(super::discovery::failures());
    reg.register(
        "uringlb_discovery_failures",
        "--discovery rounds that failed in whole or in part (the last known backends stay)",
        discovery_failures,
    );

    register_udp(&mut reg, udp_services, shared);

    let mut out = String::new();
    // Writing to a String cannot fail; an encoder error would mean a bug in a name.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &reg) {
        tracing::error!("cannot encode the metrics: {e}");
    }
    out
}

/// Per service: refusals by reason and the queue for backends at their max-conns, summed
/// over workers.
fn register_service_counts(reg: &mut Registry, services: &[(String, ServiceId)], shared: &Shared) {
    let refused = Family::<Labels, Counter>::default();
    let depth = Family::<Labels, Gauge>::default();
    let dequeued = Family::<Labels, Counter>::default();
    let waited = Family::<Labels, Counter<f64, AtomicU64>>::default();
    for (name, id) in services {
        let mut sum = ServiceCounts::default();
        for w in shared.stats.iter() {
            let c = w.service_counts(*id);
            for (a, b) in sum.refused.iter_mut().zip(c.refused) {
                *a += b;
            }
            sum.queued_now += c.queued_now;
            sum.dequeued += c.dequeued;
            sum.queue_wait_ns += c.queue_wait_ns;
        }
        let service = label("service", name);
        for (why, n) in Refused::ALL.iter().zip(sum.refused) {
            let mut l = service.clone();
            l.push(("reason".to_string(), why.label().to_string()));
            refused.get_or_create(&l).inc_by(n);
        }
        depth
            .get_or_create(&service)
            .set(i64::try_from(sum.queued_now).unwrap_or(i64::MAX));
        dequeued.get_or_create(&service).inc_by(sum.dequeued);
        waited
            .get_or_create(&service)
            .inc_by(sum.queue_wait_ns as f64 / 1e9);
    }
    reg.register(
        "uringlb_service_rejected",
        "Client connections of the service closed unserved, by reason (as uringlb_rejected_total)",
        refused,
    );
    reg.register(
        "uringlb_queue_depth",
        "Clients of the service waiting now for a backend below its max-conns",
        depth,
    );
    reg.register(
        "uringlb_queue_dequeued",
        "Clients of the service that waited for a backend below its max-conns, then got one \
         or ran out of connect timeout",
        dequeued,
    );
    reg.register_with_unit(
        "uringlb_queue_wait",
        "Time those clients waited in all (mean wait: its rate over uringlb_queue_dequeued_total's)",
        Unit::Seconds,
        waited,
    );
}

/// The UDP services' series, summed over the counts each worker published on its tick
/// (by service id): every UDP service has its series from the start, zeros until traffic,
/// and no other service has any.
fn register_udp(reg: &mut Registry, udp_services: &[(String, ServiceId)], shared: &Shared) {
    use crate::worker::stats::{UdpCounts, UdpDrop};
    let mut per_service: Vec<(&str, UdpCounts)> = udp_services
        .iter()
        .map(|(name, _)| (name.as_str(), UdpCounts::default()))
        .collect();
    for worker in shared.udp.iter() {
        let Ok(counts) = worker.lock() else { continue };
        for ((_, id), (_, total)) in udp_services.iter().zip(per_service.iter_mut()) {
            let Some(c) = counts.get(id.0 as usize) else {
                continue;
            };
            total.flows_active += c.flows_active;
            total.flows_total += c.flows_total;
            total.evictions += c.evictions;
            for d in 0..2 {
                total.datagrams[d] += c.datagrams[d];
                total.bytes[d] += c.bytes[d];
            }
            for (t, n) in total.drops.iter_mut().zip(c.drops) {
                *t += n;
            }
        }
    }
    let active = Family::<Labels, Gauge>::default();
    let flows = Family::<Labels, Counter>::default();
    let datagrams = Family::<Labels, Counter>::default();
    let bytes = Family::<Labels, Counter>::default();
    let evictions = Family::<Labels, Counter>::default();
    let drops = Family::<Labels, Counter>::default();
    for (name, t) in &per_service {
        let service = label("service", name);
        active
            .get_or_create(&service)
            .set(i64::try_from(t.flows_active).unwrap_or(i64::MAX));
        flows.get_or_create(&service).inc_by(t.flows_total);
        evictions.get_or_create(&service).inc_by(t.evictions);
        for (d, dir) in Dir::BOTH.iter().enumerate() {
            let mut l = service.clone();
            l.push(("direction".to_string(), dir.label().to_string()));
            datagrams.get_or_create(&l).inc_by(t.datagrams[d]);
            bytes.get_or_create(&l).inc_by(t.bytes[d]);
        }
        for (why, n) in UdpDrop::ALL.iter().zip(t.drops) {
            let mut l = service.clone();
            l.push(("reason".to_string(), why.label().to_string()));
            drops.get_or_create(&l).inc_by(n);
        }
    }
    reg.register(
        "uringlb_udp_flows_active",
        "UDP flows open (client addresses with a backend), per UDP service",
        active,
    );
    reg.register("uringlb_udp_flows", "UDP flows opened", flows);
    reg.register(
        "uringlb_udp_datagrams",
        "UDP datagrams forwarded, by direction",
        datagrams,
    );
    reg.register(
        "uringlb_udp_bytes",
        "UDP payload bytes forwarded, by direction",
        bytes,
    );
    reg.register(
        "uringlb_udp_evictions",
        "UDP flows ended to make room for a new one (max_flows)",
        evictions,
    );
    reg.register(
        "uringlb_udp_drops",
        "UDP datagrams dropped, by reason: larger than 64 KiB (truncated), no backend, a new \
         client while stopping, denied by allow/deny, send failed, a source's new flow over \
         its per-source limits",
        drops,
    );
}

/// A histogram whose buckets are computed once, at scrape time.
#[derive(Debug)]
struct ConstHistogram {
    sum: f64,
    count: u64,
    /// (upper bound, observations in this bucket alone); the encoder accumulates.
    buckets: Vec<(f64, u64)>,
}

impl TypedMetric for ConstHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for ConstHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<NoLabelSet>(self.sum, self.count, &self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// One [`ConstHistogram`] per backend, by its labels.
#[derive(Debug)]
struct BackendHistograms(Vec<(Labels, ConstHistogram)>);

impl TypedMetric for BackendHistograms {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for BackendHistograms {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, h) in &self.0 {
            h.encode(encoder.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// The sum of every worker's connect-time histogram (microseconds) of backend `id` in
/// [`CONNECT_BUCKETS`]. A value is placed by the top of its hdrhistogram bucket (2
/// significant digits), so an `le` count never includes a connect that took longer than
/// its bound; the sum is accurate to the same 1%.
fn connect_histogram(shared: &Shared, id: BackendId) -> ConstHistogram {
    let mut counts = vec![0u64; CONNECT_BUCKETS.len() + 1];
    let mut sum_us = 0f64;
    let mut total = 0u64;
    let epoch = shared.counters.get(id).epoch.load(Ordering::Acquire);
    for stats in shared.stats.iter() {
        let times = stats.connect_us.lock().unwrap_or_else(|p| p.into_inner());
        let Some(h) = times.get(id, epoch) else {
            continue;
        };
        for v in h.iter_recorded() {
            let n = u64::from(v.count_at_value());
            let top_s = v.value_iterated_to() as f64 / 1e6;
            let i = CONNECT_BUCKETS
                .iter()
                .position(|&b| top_s <= b)
                .unwrap_or(CONNECT_BUCKETS.len());
            counts[i] += n;
            sum_us += h.median_equivalent(v.value_iterated_to()) as f64 * n as f64;
            total += n;
        }
    }
    let buckets = CONNECT_BUCKETS
        .iter()
        .copied()
        .chain([f64::INFINITY])
        .zip(counts)
        .collect();
    ConstHistogram {
        sum: sum_us / 1e6,
        count: total,
        buckets,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::AdminState;

    fn shared(workers: usize) -> Shared {
        Shared::new(workers, 10, crate::backend::SharedCounters::new())
    }

    fn status(name: &str, state: BackendState) -> BackendStatus {
        BackendStatus {
            name: name.to_string(),
            addr: "127.0.0.1:1".parse().expect("addr"),
            weight: 1,
            state,
            admin: AdminState::Up,
            healthy: true,
            ejected: false,
            removing: false,
            backup: false,
        }
    }

    #[test]
    fn names_values_and_histogram() {
        let sh = shared(2);
        sh.stats[0].accepted.store(3, Ordering::Relaxed);
        sh.stats[1].accepted.store(4, Ordering::Relaxed);
        sh.stats[0].bytes[Dir::Up].store(100, Ordering::Relaxed);
        sh.stats[1].bytes[Dir::Up].store(23, Ordering::Relaxed);
        sh.stats[1].bytes[Dir::Down].store(7, Ordering::Relaxed);
        sh.stats[0].no_slot.store(2, Ordering::Relaxed);
        sh.stats[0].rejected_denied.store(4, Ordering::Relaxed);
        sh.stats[1].rejected_denied.store(1, Ordering::Relaxed);
        let id = BackendId(0);
        {
            let mut h = sh.stats[0].connect_us.lock().expect("lock");
            h.record(id, 0, 80); // 80 us
            h.record(id, 0, 3000); // 3 ms
            h.record(BackendId(1), 0, 3000); // another backend's
        }
        sh.stats[1]
            .connect_us
            .lock()
            .expect("lock")
            .record(id, 0, 20_000_000); // 20 s: above every bound
        sh.counters
            .get(id)
            .bytes(Dir::Up)
            .store(11, Ordering::Relaxed);
        sh.counters
            .get(id)
            .bytes(Dir::Down)
            .store(12, Ordering::Relaxed);
        sh.counters.get(id).total.store(5, Ordering::Relaxed);
        sh.counters.get(id).active.store(1, Ordering::Relaxed);
        sh.counters.get(id).failures.store(2, Ordering::Relaxed);
        let backends = vec![
            BackendSample::new("web", status("a", BackendState::Up), Some(id), &sh),
            BackendSample::new("web", status("b", BackendState::Draining), None, &sh),
        ];
        let mut counts = Counts::default();
        counts.on_check("web", "a", true);
        counts.on_check("web", "a", false);
        counts.on_check("web", "a", true);
        counts.on_check("db", "a", true);
        counts.on_reload(false);
        sh.stats[1].spliced[Dir::Down].store(5, Ordering::Relaxed);
        sh.stats[0].snapshot_version.store(3, Ordering::Relaxed);
        sh.stats[1].snapshot_version.store(2, Ordering::Relaxed);
        sh.stats[1].refused(ServiceId(0), Refused::Denied);
        sh.stats[0].with_service(ServiceId(0), |c| {
            c.queued_now = 2;
            c.dequeued = 3;
            c.queue_wait_ns = 1_500_000_000;
        });
        let ids = [("web".to_string(), ServiceId(0))];
        let text = encode(&counts, &backends, &ids, &[], &sh, 3);
        for line in [
            "uringlb_splice_bytes_total{worker=\"0\"} 0",
            "uringlb_splice_bytes_total{worker=\"1\"} 5",
            "uringlb_snapshot_version{worker=\"0\"} 3",
            "uringlb_snapshot_version{worker=\"1\"} 2",
            "uringlb_snapshot_published_version 3",
            "uringlb_connections_total{service=\"web\",backend=\"a\"} 5",
            "uringlb_connections_active{service=\"web\",backend=\"a\"} 1",
            "uringlb_connect_failures_total{service=\"web\",backend=\"a\"} 2",
            "uringlb_backend_up{service=\"web\",backend=\"a\"} 1",
            "uringlb_backend_up{service=\"web\",backend=\"b\"} 0",
            "uringlb_health_checks_total{service=\"web\",backend=\"a\",result=\"success\"} 2",
            "uringlb_health_checks_total{service=\"web\",backend=\"a\",result=\"failure\"} 1",
            "uringlb_health_checks_total{service=\"web\",backend=\"b\",result=\"success\"} 0",
            "uringlb_bytes_total{direction=\"client_to_backend\"} 123",
            "uringlb_bytes_total{direction=\"backend_to_client\"} 7",
            "uringlb_accepted_total{worker=\"0\"} 3",
            "uringlb_accepted_total{worker=\"1\"} 4",
            "uringlb_rejected_total{reason=\"no_backend\"} 0",
            "uringlb_rejected_total{reason=\"no_slot\"} 2",
            "uringlb_rejected_total{reason=\"denied\"} 6",
            "uringlb_config_reloads_total{result=\"ok\"} 0",
            "uringlb_config_reloads_total{result=\"error\"} 1",
            "# TYPE uringlb_connect_duration_seconds histogram",
            "uringlb_backend_bytes_total{service=\"web\",backend=\"a\",direction=\"client_to_backend\"} 11",
            "uringlb_backend_bytes_total{service=\"web\",backend=\"a\",direction=\"backend_to_client\"} 12",
            "uringlb_backend_bytes_total{service=\"web\",backend=\"b\",direction=\"client_to_backend\"} 0",
            "uringlb_access_log_dropped_total 0",
            "uringlb_service_rejected_total{service=\"web\",reason=\"denied\"} 1",
            "uringlb_service_rejected_total{service=\"web\",reason=\"no_backend\"} 0",
            "uringlb_queue_depth{service=\"web\"} 2",
            "uringlb_queue_dequeued_total{service=\"web\"} 3",
            "uringlb_queue_wait_seconds_total{service=\"web\"} 1.5",
            "uringlb_connect_duration_seconds_count{service=\"web\",backend=\"a\"} 3",
            "uringlb_connect_duration_seconds_bucket{le=\"0.00005\",service=\"web\",backend=\"a\"} 0",
            "uringlb_connect_duration_seconds_bucket{le=\"0.0001\",service=\"web\",backend=\"a\"} 1",
            "uringlb_connect_duration_seconds_bucket{le=\"0.0025\",service=\"web\",backend=\"a\"} 1",
            "uringlb_connect_duration_seconds_bucket{le=\"0.005\",service=\"web\",backend=\"a\"} 2",
            "uringlb_connect_duration_seconds_bucket{le=\"10.0\",service=\"web\",backend=\"a\"} 2",
            "uringlb_connect_duration_seconds_bucket{le=\"+Inf\",service=\"web\",backend=\"a\"} 3",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        let sum: f64 = text
            .lines()
            .find_map(|l| {
                l.strip_prefix(
                    "uringlb_connect_duration_seconds_sum{service=\"web\",backend=\"a\"} ",
                )
            })
            .and_then(|v| v.parse().ok())
            .expect("sum");
        assert!((sum - 20.00308).abs() < 20.0 * 0.01, "{sum}");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn check_counts_forget_removed_backends() {
        let mut c = Counts::default();
        c.on_check("s", "a", true);
        c.on_check("s", "b", false);
        c.on_check("t", "b", true);
        c.retain_backends(&HashSet::from([("s", "b")]));
        assert_eq!(c.checks.len(), 1);
        assert_eq!(c.checks[&("s".to_string(), "b".to_string())], [0, 1]);
    }
}
