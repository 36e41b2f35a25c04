//! Loopback test backends and a load generator for uringlb.
//!
//! Shared by the `uringlb demo` command (starts [`backends`] and drives them with [`load`])
//! and by `uringlb-bench`, which re-exports all of it and adds the benchmark-only parts. It
//! is a crate of its own so that the balancer binary, which needs it for the demo, does not
//! link the benchmark code and its dependencies.
//!
//! Everything runs on its own threads with its own tokio runtime, so callers need no
//! runtime of their own and may call in from inside one.

pub mod backends;
mod http1;
pub mod load;
pub mod pattern;
pub mod units;

pub use backends::{EchoServer, HttpServer, NameServer, SinkServer, SourceServer};
pub use load::{LoadConfig, LoadKind, Progress, ProgressFn, Report, Summary};
pub use units::{parse_bytes, parse_duration};
