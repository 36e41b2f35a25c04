//! Slow start: a backend that comes back up gets its weight ramped linearly from 10% to
//! 100% over `--slow-start`, so a cold cache or a JIT warming up is not flooded at once.
//!
//! Weights are integers >= 1, and 10% of weight 1 is not one, so while any backend ramps
//! every published weight is multiplied by [`SCALE`]: a ramping backend of weight `w` gets
//! `max(1, round(w * SCALE * fraction))` against `w * SCALE` for the others. Only ratios
//! matter to the algorithms, so the scale comes and goes without effect. The ramp moves in
//! steps (each one is a new snapshot): a tenth of the window, at least 500 ms.

use std::time::Duration;

use crate::config::Algorithm;

/// Weight multiplier while a ramp is in progress.
pub const SCALE: u32 = 100;
/// The fraction of its weight a backend restarts with.
pub const START: f64 = 0.1;
/// Shortest step between two published weights.
const MIN_STEP: Duration = Duration::from_millis(500);

/// Whether slow start means anything for `algorithm`: the weighted and least-* ones.
/// Plain round-robin and random ignore weights, and the hashing algorithms would remap
/// keys (and rebuild a Maglev table or ring whose size grows with the weights) at every
/// step, so they keep the configured weights.
pub fn applies_to(algorithm: Algorithm) -> bool {
    use Algorithm::*;
    matches!(
        algorithm,
        WeightedRoundRobin | WeightedRandom | LeastConn | P2c | LeastTime
    )
}

/// Length of one ramp step for a `window`.
pub fn step(window: Duration) -> Duration {
    (window / 10).max(MIN_STEP).min(window)
}

/// The step `elapsed` falls in, or `None` once the ramp is over (or off).
pub fn step_index(window: Duration, elapsed: Duration) -> Option<u32> {
    if window.is_zero() || elapsed >= window {
        return None;
    }
    let k = elapsed.as_nanos() / step(window).as_nanos().max(1);
    Some(u32::try_from(k).unwrap_or(u32::MAX))
}

/// The fraction of its weight a backend has in step `k`: 10% in step 0, rising linearly.
pub fn fraction(window: Duration, k: u32) -> f64 {
    if window.is_zero() {
        return 1.0;
    }
    let at = step(window).as_secs_f64() * f64::from(k);
    (START + (1.0 - START) * at / window.as_secs_f64()).min(1.0)
}

/// The published (scaled) weight of a ramping backend of configured weight `weight`.
pub fn ramped_weight(weight: u32, fraction: f64) -> u32 {
    let w = (f64::from(weight) * f64::from(SCALE) * fraction).round();
    (w as u32).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn ramps_from_ten_percent_in_steps() {
        let w = ms(10_000);
        assert_eq!(step(w), ms(1000));
        assert_eq!(step(ms(2000)), ms(500), "at least 500 ms");
        assert_eq!(step(ms(300)), ms(300), "never longer than the window");
        assert_eq!(step_index(w, ms(0)), Some(0));
        assert_eq!(step_index(w, ms(999)), Some(0));
        assert_eq!(step_index(w, ms(1000)), Some(1));
        assert_eq!(step_index(w, ms(9999)), Some(9));
        assert_eq!(step_index(w, ms(10_000)), None);
        assert_eq!(step_index(Duration::ZERO, ms(0)), None);
        assert!((fraction(w, 0) - 0.1).abs() < 1e-9);
        assert!((fraction(w, 5) - 0.55).abs() < 1e-9);
        assert!((fraction(w, 9) - 0.91).abs() < 1e-9);
        let mut last = 0.0;
        for k in 0..10 {
            let f = fraction(w, k);
            assert!(f > last, "rises: {f} after {last}");
            last = f;
        }
    }

    #[test]
    fn weight_one_is_representable_at_ten_percent() {
        assert_eq!(ramped_weight(1, 0.1), 10);
        assert_eq!(ramped_weight(1, 1.0), SCALE);
        assert_eq!(ramped_weight(3, 0.55), 165);
        assert_eq!(ramped_weight(1, 0.0), 1, "never zero");
        assert_eq!(
            ramped_weight(crate::config::MAX_WEIGHT, 1.0),
            crate::config::MAX_WEIGHT * SCALE
        );
    }

    #[test]
    fn only_weight_aware_algorithms_ramp() {
        assert!(applies_to(Algorithm::WeightedRoundRobin));
        assert!(applies_to(Algorithm::LeastConn));
        assert!(!applies_to(Algorithm::RoundRobin));
        assert!(!applies_to(Algorithm::Maglev));
    }
}
