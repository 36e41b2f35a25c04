//! uringlb: a thread-per-core io_uring TCP load balancer.
//!
//! Reading order: `main.rs` -> [`cli`] / [`config`] -> [`server`] (binds listeners, spawns
//! one [`worker`] per CPU, runs the control thread) -> [`worker`] (the io_uring loop) ->
//! [`worker::conn`] (one proxied connection as a state machine). All `unsafe` is in [`uring`].
//! docs/ARCHITECTURE.md has the threads, the snapshot flow, the connection state machine,
//! the unsafe contract and where each kind of change goes.

#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod access;
pub mod access_log;
pub mod activation;
pub mod backend;
pub mod backend_ids;
pub mod balance;
pub mod cli;
pub mod config;
pub mod config_file;
pub mod control;
pub mod demo;
pub mod direction;
/// The shared entry points of the fuzz targets and of the corpus replay test.
pub mod fuzzing;
pub mod health;
pub mod limits;
pub mod loops;
pub mod net;
pub mod paths;
pub mod proxy_protocol;
pub mod server;
pub mod sni;
pub mod tier;
pub mod tls_hello;
pub mod udp_flows;
pub mod udp_net;
/// The only module allowed `unsafe`: see its documentation.
#[allow(unsafe_code)]
pub mod uring;
pub mod worker;
