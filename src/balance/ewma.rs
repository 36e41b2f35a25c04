//! Peak-EWMA of connect time, the latency model of Linkerd's balancer (tower's `PeakEwma`).
//! Pure math on a (value, stamp) pair, so the worker can keep both in two `AtomicU64`s
//! ([`PeakEwma::to_bits`], [`PeakEwma::from_bits`]) shared by every worker.
//!
//! - A sample above the current value replaces it at once ("peak"): a backend that turns
//!   slow is avoided from its first slow connect.
//! - A lower sample pulls the value down with a weight that grows with the time since the
//!   last sample (1 - e^(-dt/tau)): averaging over time, not over sample count.
//! - Without samples the value decays toward zero, so a backend that was slow (and so got
//!   no traffic) is eventually tried again.
//!
//! Reading is pure ([`PeakEwma::get_at`] does not store the decay), so the value does not
//! depend on how often it is read.

/// Linkerd's default decay time constant: 10 s.
pub const DEFAULT_DECAY_NS: f64 = 10e9;

/// A latency estimate in nanoseconds and when it was last updated (monotonic nanoseconds).
/// The default, all zero, is "no samples yet" and reads as 0.0.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PeakEwma {
    pub value_ns: f64,
    pub stamp_ns: u64,
}

impl PeakEwma {
    /// e^(-elapsed / decay): how much of the old value survives until `now_ns`. A `now_ns`
    /// before the stamp (another worker's slightly newer clock reading) counts as no time.
    fn survival(&self, now_ns: u64, decay_ns: f64) -> f64 {
        let elapsed = now_ns.saturating_sub(self.stamp_ns) as f64;
        if decay_ns > 0.0 {
            (-elapsed / decay_ns).exp()
        } else {
            0.0
        }
    }

    /// The estimate at `now_ns`: the stored value decayed toward zero since its stamp.
    pub fn get_at(&self, now_ns: u64, decay_ns: f64) -> f64 {
        self.value_ns * self.survival(now_ns, decay_ns)
    }

    /// The state after a sample of `sample_ns` taken at `now_ns`. A sample that is not a
    /// finite, non-negative number is ignored.
    #[must_use]
    pub fn observe(self, sample_ns: f64, now_ns: u64, decay_ns: f64) -> PeakEwma {
        if !(sample_ns.is_finite() && sample_ns >= 0.0) {
            return self;
        }
        let sample = sample_ns;
        let keep = self.survival(now_ns, decay_ns);
        let current = self.value_ns * keep;
        let value_ns = if sample >= current {
            sample
        } else {
            // Between the sample and the current value; the sample's weight is the share
            // of the decay window that has passed.
            current * keep + sample * (1.0 - keep)
        };
        PeakEwma {
            value_ns,
            stamp_ns: now_ns.max(self.stamp_ns),
        }
    }

    /// (value bits, stamp) for two `AtomicU64`s. A reader may see a value and a stamp from
    /// different updates; that only shifts the decay by one update's age.
    pub fn to_bits(self) -> (u64, u64) {
        (self.value_ns.to_bits(), self.stamp_ns)
    }

    pub fn from_bits(value_bits: u64, stamp_ns: u64) -> PeakEwma {
        let v = f64::from_bits(value_bits);
        PeakEwma {
            value_ns: if v.is_finite() { v.max(0.0) } else { 0.0 },
            stamp_ns,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAU: f64 = DEFAULT_DECAY_NS;
    const S: u64 = 1_000_000_000;

    #[test]
    fn empty_reads_zero() {
        assert_eq!(PeakEwma::default().get_at(5 * S, TAU), 0.0);
    }

    #[test]
    fn peaks_jump_up_at_once() {
        let e = PeakEwma::default()
            .observe(1e6, S, TAU)
            .observe(5e6, S + 1, TAU);
        assert_eq!(e.value_ns, 5e6);
        assert_eq!(e.stamp_ns, S + 1);
    }

    #[test]
    fn lower_samples_pull_down_by_elapsed_time() {
        let e = PeakEwma::default().observe(10e6, 0, TAU);
        // Right after: the low sample barely counts.
        let soon = e.observe(1e6, 1_000, TAU);
        assert!(soon.value_ns > 9.99e6 && soon.value_ns < 10e6);
        // One time constant later: the current value 10e6/e moves 1 - 1/e of the way to 1e6.
        let later = e.observe(1e6, 10 * S, TAU);
        let k = (-1.0f64).exp();
        let want = 10e6 * k * k + 1e6 * (1.0 - k);
        assert!(
            (later.value_ns - want).abs() < 1.0,
            "{} vs {want}",
            later.value_ns
        );
        assert!(later.value_ns > 1e6 && later.value_ns < e.get_at(10 * S, TAU));
        // Long after, the sample is all that is left.
        let much_later = e.observe(1e6, 1_000 * S, TAU);
        assert_eq!(much_later.value_ns, 1e6);
    }

    #[test]
    fn decays_toward_zero_without_samples() {
        let e = PeakEwma::default().observe(8e6, S, TAU);
        assert_eq!(e.get_at(S, TAU), 8e6);
        let half = e.get_at(S + (TAU * std::f64::consts::LN_2) as u64, TAU);
        assert!((half - 4e6).abs() < 1.0, "{half}");
        // A reader with an older clock sees no decay, not growth.
        assert_eq!(e.get_at(0, TAU), 8e6);
    }

    #[test]
    fn constant_samples_hold_the_value() {
        let mut e = PeakEwma::default();
        for i in 0..1000 {
            e = e.observe(2e6, i * 1_000_000, TAU);
        }
        assert_eq!(e.value_ns, 2e6);
    }

    #[test]
    fn bits_round_trip_and_reject_garbage() {
        let e = PeakEwma::default().observe(3.5e6, 7, TAU);
        let (v, s) = e.to_bits();
        assert_eq!(PeakEwma::from_bits(v, s), e);
        assert_eq!(PeakEwma::from_bits(f64::NAN.to_bits(), 1).value_ns, 0.0);
        assert_eq!(e.observe(f64::INFINITY, 8, TAU), e);
        assert_eq!(e.observe(-1.0, 8, TAU), e);
    }
}
