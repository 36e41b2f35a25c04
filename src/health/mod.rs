//! Backend health: [`state`] is the pure rise/fall and ejection state machine, [`probe`] the
//! TCP and HTTP checks that feed it. The control thread ([`crate::control`]) schedules the
//! probes, polls the workers' connect-failure counters for passive ejection, and publishes
//! a new snapshot whenever a backend's state changes.

pub mod probe;
pub mod state;

pub use probe::ProbeError;
pub use state::{Event, Health, Params};
