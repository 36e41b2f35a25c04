//! Loopback backends for tests, the demo and benchmarks.
//!
//! Each server binds synchronously in `start` (so bind errors and the real port of
//! `127.0.0.1:0` are known at once), then serves from one dedicated thread running a
//! single-threaded tokio runtime. `stop()` (also run on drop) closes the listener and every
//! open connection and joins that thread, so a test can simulate a backend dying.
//! I/O errors only end the connection they happened on; they are logged at debug level.

mod echo;
mod http;
mod name;
mod serve;
mod sink;
mod source;

pub use echo::EchoServer;
pub use http::HttpServer;
pub use name::NameServer;
pub use sink::SinkServer;
pub use source::SourceServer;
