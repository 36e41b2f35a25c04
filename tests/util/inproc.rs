//! The balancer run in process ([`Server`]): tests that publish backend sets themselves
//! or read the per-worker counters.

use std::sync::atomic::Ordering;
use std::time::Duration;

use uringlb::config::BackendSpec;
use uringlb::server::Server;
use uringlb_bench::NameServer;

use super::wait::wait_until;

/// A name backend as a backend spec (named by its name, weight 1).
pub fn spec(s: &NameServer) -> BackendSpec {
    BackendSpec {
        addr: s.addr(),
        weight: 1,
        name: s.name().to_string(),
        max_conns: None,
        proxy_protocol: None,
        backup: false,
    }
}

/// Publishes `backends` and waits until every worker routes with them.
pub fn publish_and_wait(server: &Server, backends: &[BackendSpec]) {
    let version = server.publish_backends(backends).expect("publish");
    wait_until(
        &format!("every worker to route with snapshot {version}"),
        Duration::from_secs(10),
        || server.applied(version),
    );
}

/// Connections each worker has accepted so far.
pub fn accepted_per_worker(server: &Server) -> Vec<u64> {
    server
        .shared()
        .stats
        .iter()
        .map(|s| s.accepted.load(Ordering::Relaxed))
        .collect()
}
