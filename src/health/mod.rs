//! Backend health: [`state`] is the pure rise/fall and ejection state machine, [`probe`] the
//! TCP and HTTP checks that feed it. The control thread ([`crate::control`]) schedules the
//! probes, polls the workers' connect-failure counters for passive ejection, and publishes
//! a new snapshot whenever a backend's state changes.

pub mod dns;
pub mod probe;
pub mod state;

pub use probe::ProbeError;
pub use state::{Event, Health, Params};

use std::fmt;

/// The active check (`--health`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheck {
    Tcp,
    /// GET this path; 2xx/3xx is healthy.
    Http(String),
    /// UDP services: a DNS query for this name (type A) that must be answered.
    Dns(String),
    None,
}

impl fmt::Display for HealthCheck {
    /// The `--health` spelling.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HealthCheck::Tcp => f.write_str("tcp"),
            HealthCheck::Http(path) => write!(f, "http:{path}"),
            HealthCheck::Dns(name) => write!(f, "dns:{name}"),
            HealthCheck::None => f.write_str("none"),
        }
    }
}
