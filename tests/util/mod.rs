//! Helpers for the integration tests, one copy of each, in files by job:
//!
//! - [`process`]: the real `uringlb` binary ([`Lb`]): start it, read its log, look at it
//!   from /proc, config files it reads;
//! - [`wait`]: waiting for a condition (a counter, a log line, a version the workers
//!   report), never for a fixed time;
//! - [`net`]: ports, clients (from a chosen source address, reading a backend's greeting),
//!   and the spread of new connections over backends;
//! - [`backends`]: test backends and the `--backend` flags and specs that name them;
//! - [`data`]: pattern bytes and their hash, for byte-exact transfers;
//! - [`http`]: a small HTTP/1.1 client;
//! - [`access_log`]: the access log's lines, parsed strictly;
//! - [`admin`]: the admin endpoint (`--admin`) through that client;
//! - [`metrics`]: a strict parser of the OpenMetrics text `/metrics` serves;
//! - [`load`]: loops of new connections and long byte-checked echo transfers;
//! - [`inproc`]: the balancer run in process (`Server`), waited on by snapshot version;
//! - [`peers`]: real NGINX and HAProxy, and PROXY protocol headers built by hand;
//! - [`udp`]: dnsmasq, a UDP echo backend and hand-built DNS queries for UDP services.
//!
//! Each test file declares `mod util;` and `use util::*;`.
#![allow(dead_code)]

pub mod access_log;
pub mod admin;
pub mod backends;
pub mod consul;
pub mod data;
pub mod http;
pub mod inproc;
pub mod load;
pub mod metrics;
pub mod net;
pub mod peers;
pub mod process;
pub mod udp;
pub mod wait;

// Not every test file uses every helper.
#[allow(unused_imports)]
pub use self::{
    access_log::*, admin::*, backends::*, data::*, http::*, inproc::*, load::*, metrics::*, net::*,
    peers::*, process::*, udp::*, wait::*,
};
