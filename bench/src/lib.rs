//! Load generator, test backends and benchmarking for uringlb.
//!
//! The backends and load modes come from `uringlb-testbed` (re-exported here, so the
//! balancer's integration tests and this crate's binary use one path for everything). This
//! crate adds what only benchmarking needs: [`compare`] (aggregates `bench/compare.sh`
//! runs), [`plot`] (SVG latency plots), [`soak`] (the fault soak of the real balancer
//! binary), [`idle_memory`] and [`udp`] (UDP load and echo).
//!
//! Everything runs on its own threads with its own tokio runtime, so callers need no
//! runtime of their own and may call in from inside one.

pub mod compare;
pub mod idle_memory;
pub mod plot;
pub mod soak;
pub mod udp;

pub use uringlb_testbed::{backends, load, pattern, units};
pub use uringlb_testbed::{parse_bytes, parse_duration};
pub use uringlb_testbed::{EchoServer, HttpServer, NameServer, SinkServer, SourceServer};
pub use uringlb_testbed::{LoadConfig, LoadKind, Progress, ProgressFn, Report, Summary};
