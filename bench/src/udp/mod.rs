//! UDP request/response load (`uringlb-bench udp`) and a UDP echo backend
//! (`uringlb-bench serve-udp-echo`), DNS-like: small requests, one answer each.
//!
//! Each flow is a client socket of its own (its own source port, so one flow in the
//! balancer) with one request in flight: closed loop by default, or paced open loop with
//! `rate`, latency corrected for coordinated omission with the schedule of the TCP load
//! modes ([`crate::load::Schedule`]). With `new_flow_per_request` every request leaves from
//! a fresh socket, as resolvers with random source ports send, so every request is a new
//! flow for the balancer. UDP loses datagrams: a request with no answer within `timeout`
//! is counted as lost and its flow moves on.

mod echo;
mod load;
mod payload;
mod report;

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

pub use echo::UdpEchoServer;
pub use load::{run, run_async};
pub use payload::{Payload, DEFAULT_NAME, MAX_SIZE, MIN_SIZE};
pub use report::{UdpReport, UdpSummary};

/// How to run a UDP load; start from `UdpLoadConfig::new(target, flows, duration)`.
#[derive(Debug, Clone)]
pub struct UdpLoadConfig {
    pub target: SocketAddr,
    /// Client sockets, each with one request in flight.
    pub flows: usize,
    pub duration: Duration,
    /// Stop after this many requests sent in all, if set.
    pub requests: Option<u64>,
    /// Open loop: requests per second in all, paced per flow (`None`: closed loop).
    pub rate: Option<f64>,
    /// A request not answered within this is lost.
    pub timeout: Duration,
    /// Every request from a new socket (a new source port: a new flow).
    pub new_flow_per_request: bool,
    pub payload: Payload,
    /// Runtime worker threads.
    pub threads: usize,
    /// Set to true to end the run early (e.g. on Ctrl-C).
    pub stop: Option<Arc<AtomicBool>>,
}

impl UdpLoadConfig {
    /// Closed loop, 1 s timeout, a DNS query per request, one thread.
    pub fn new(target: SocketAddr, flows: usize, duration: Duration) -> Self {
        Self {
            target,
            flows,
            duration,
            requests: None,
            rate: None,
            timeout: Duration::from_secs(1),
            new_flow_per_request: false,
            payload: Payload::default(),
            threads: 1,
            stop: None,
        }
    }
}
