//! Test backends and load generators for uringlb.
//!
//! Three users share this crate: the `uringlb demo` command (starts [`backends`] and drives
//! them with [`load`]), the balancer's integration tests (run backends in-process, or the
//! `uringlb-bench` binary as a separate process they can kill), and benchmarking: the load
//! modes, plus [`compare`] (aggregates `bench/compare.sh` runs) and [`plot`] (SVG latency
//! plots), and [`soak`], the fault soak of the real balancer binary.
//!
//! Everything runs on its own threads with its own tokio runtime, so callers need no
//! runtime of their own and may call in from inside one.

pub mod backends;
pub mod compare;
mod http1;
pub mod idle_memory;
pub mod load;
pub mod pattern;
pub mod plot;
pub mod soak;
pub mod units;

pub use backends::{EchoServer, HttpServer, NameServer, SinkServer, SourceServer};
pub use load::{LoadConfig, LoadKind, Progress, ProgressFn, Report, Summary};
pub use units::{parse_bytes, parse_duration};
