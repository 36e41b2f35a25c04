//! `uringlb demo`: embedded backends, the balancer in front, a short load, a report.

/// Runs the demo.
pub fn run() -> anyhow::Result<()> {
    anyhow::bail!("the demo is not built yet")
}
