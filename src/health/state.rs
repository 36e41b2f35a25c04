//! The health of one backend as a pure state machine: active-check results counted the way
//! HAProxy counts them (`fall` failures in a row take a backend down, `rise` passes bring it
//! back) and passive ejection as Envoy's outlier detection does it (consecutive connect
//! failures eject a backend for a back-off that doubles with each ejection, up to a cap).
//!
//! No I/O and no clock: every input carries `now`, so the tests drive time by hand.

use std::fmt;
use std::time::{Duration, Instant};

/// The settings the state machine follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// Passed checks in a row that bring a down backend up.
    pub rise: u32,
    /// Failed checks in a row that take an up backend down.
    pub fall: u32,
    /// Active checks run (`--health` is not `none`): they, not only the back-off, can end
    /// an ejection.
    pub active: bool,
    /// Consecutive connect failures that eject a backend; 0 = never.
    pub eject_after: u32,
    /// The first ejection's length.
    pub eject_base: Duration,
    /// The longest ejection.
    pub eject_max: Duration,
}

/// Why a backend's health verdict flipped; its `Display` is the "why" of the log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `count` checks in a row failed; `error` is the last one's reason.
    ChecksFailed { count: u32, error: String },
    /// `count` checks in a row passed.
    ChecksPassed { count: u32 },
    /// Ejected after `failures` consecutive connect failures: the `nth` ejection in a row,
    /// for `duration`.
    Ejected {
        failures: u64,
        nth: u32,
        duration: Duration,
    },
    /// The ejection's back-off ran out.
    EjectionExpired,
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::ChecksFailed { count, error } => {
                write!(f, "{count} health check(s) failed, last: {error}")
            }
            Event::ChecksPassed { count } => write!(f, "{count} health check(s) passed"),
            Event::Ejected {
                failures,
                nth,
                duration,
            } => write!(
                f,
                "ejected after {failures} consecutive connect failures, ejection {nth} for {duration:?}"
            ),
            Event::EjectionExpired => f.write_str("ejection back-off expired"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ejection {
    until: Instant,
    /// Checks passed in a row since the ejection: `rise` of them end it early.
    passes: u32,
}

/// One backend's health: up when the active checks say so and it is not ejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// The active checks' verdict (always true without active checks).
    healthy: bool,
    passes: u32,
    fails: u32,
    ejection: Option<Ejection>,
    /// Ejections that lengthen the next back-off. One is forgiven for every `eject_base`
    /// spent without an ejection, so a backend that failed once long ago starts again at
    /// the base (Envoy decrements its ejection multiplier the same way).
    strikes: u32,
    /// When the last strike was added, or forgiven, or its ejection ended.
    strike_at: Option<Instant>,
}

impl Default for Health {
    fn default() -> Self {
        Health::new()
    }
}

impl Health {
    /// A new backend starts up, as HAProxy's servers do: traffic flows at once, and `fall`
    /// failed checks take it out if it is not really there.
    pub fn new() -> Health {
        Health {
            healthy: true,
            passes: 0,
            fails: 0,
            ejection: None,
            strikes: 0,
            strike_at: None,
        }
    }

    /// May it take new connections, as far as health goes?
    pub fn is_up(&self) -> bool {
        self.healthy && self.ejection.is_none()
    }

    /// The active checks' verdict alone.
    pub fn checks_healthy(&self) -> bool {
        self.healthy
    }

    pub fn is_ejected(&self) -> bool {
        self.ejection.is_some()
    }

    /// When the current ejection's back-off runs out.
    pub fn ejected_until(&self) -> Option<Instant> {
        self.ejection.map(|e| e.until)
    }

    /// One active check's result (`Err` holds its reason). Returns the event when it
    /// changes [`is_up`](Self::is_up).
    pub fn on_check(
        &mut self,
        p: &Params,
        result: Result<(), String>,
        now: Instant,
    ) -> Option<Event> {
        let was_up = self.is_up();
        let mut event = None;
        match result {
            Ok(()) => {
                self.fails = 0;
                self.passes = self.passes.saturating_add(1);
                if !self.healthy && self.passes >= p.rise {
                    self.healthy = true;
                    event = Some(Event::ChecksPassed { count: self.passes });
                }
                if let Some(e) = &mut self.ejection {
                    // Envoy's successful_active_health_check_uneject_host, counted like a
                    // rise: a backend proven back by its checks need not sit out the rest.
                    e.passes += 1;
                    if e.passes >= p.rise {
                        self.end_ejection(now);
                        event = Some(Event::ChecksPassed { count: self.passes });
                    }
                }
            }
            Err(error) => {
                self.passes = 0;
                self.fails = self.fails.saturating_add(1);
                if let Some(e) = &mut self.ejection {
                    e.passes = 0;
                }
                if self.healthy && self.fails >= p.fall {
                    self.healthy = false;
                    event = Some(Event::ChecksFailed {
                        count: self.fails,
                        error,
                    });
                }
            }
        }
        (self.is_up() != was_up).then_some(event).flatten()
    }

    /// Should `consecutive_failures` connect failures eject it now?
    pub fn should_eject(&self, p: &Params, consecutive_failures: u64) -> bool {
        p.eject_after > 0 && consecutive_failures >= u64::from(p.eject_after) && self.is_up()
    }

    /// Ejects it: out for `eject_base * 2^(strikes)`, at most `eject_max`.
    pub fn eject(&mut self, p: &Params, consecutive_failures: u64, now: Instant) -> Event {
        self.forgive(p, now);
        self.strikes = self.strikes.saturating_add(1);
        self.strike_at = Some(now);
        let duration = backoff(p, self.strikes);
        self.ejection = Some(Ejection {
            until: now + duration,
            passes: 0,
        });
        Event::Ejected {
            failures: consecutive_failures,
            nth: self.strikes,
            duration,
        }
    }

    /// Time passing: ends an expired ejection, forgives old strikes. Returns the event when
    /// it changes [`is_up`](Self::is_up).
    pub fn tick(&mut self, p: &Params, now: Instant) -> Option<Event> {
        let was_up = self.is_up();
        if self.ejection.is_some_and(|e| now >= e.until) {
            self.end_ejection(now);
        }
        self.forgive(p, now);
        (self.is_up() != was_up).then_some(Event::EjectionExpired)
    }

    fn end_ejection(&mut self, now: Instant) {
        self.ejection = None;
        self.strike_at = Some(now);
    }

    fn forgive(&mut self, p: &Params, now: Instant) {
        if self.ejection.is_some() {
            return;
        }
        while self.strikes > 0 {
            match self.strike_at {
                Some(at) if now.saturating_duration_since(at) >= p.eject_base => {
                    self.strikes -= 1;
                    self.strike_at = Some(at + p.eject_base);
                }
                _ => break,
            }
        }
    }
}

/// The `nth` ejection's length: the base doubled for each earlier one, capped.
pub fn backoff(p: &Params, nth: u32) -> Duration {
    let doublings = nth.saturating_sub(1).min(31);
    p.eject_base
        .checked_mul(1u32 << doublings)
        .unwrap_or(p.eject_max)
        .min(p.eject_max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(active: bool) -> Params {
        Params {
            rise: 2,
            fall: 3,
            active,
            eject_after: 5,
            eject_base: Duration::from_secs(30),
            eject_max: Duration::from_secs(300),
        }
    }

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn fail() -> Result<(), String> {
        Err("refused".to_string())
    }

    #[test]
    fn fall_failures_in_a_row_take_it_down_rise_passes_bring_it_back() {
        let p = params(true);
        let t = Instant::now();
        let mut h = Health::new();
        assert!(h.is_up());
        assert_eq!(h.on_check(&p, fail(), t), None);
        assert_eq!(h.on_check(&p, fail(), t), None);
        // A pass in between starts the count again.
        assert_eq!(h.on_check(&p, Ok(()), t), None);
        assert_eq!(h.on_check(&p, fail(), t), None);
        assert_eq!(h.on_check(&p, fail(), t), None);
        assert_eq!(
            h.on_check(&p, fail(), t),
            Some(Event::ChecksFailed {
                count: 3,
                error: "refused".into()
            })
        );
        assert!(!h.is_up());
        assert_eq!(
            h.on_check(&p, fail(), t),
            None,
            "already down: no new event"
        );
        assert_eq!(h.on_check(&p, Ok(()), t), None);
        assert_eq!(
            h.on_check(&p, fail(), t),
            None,
            "rise needs passes in a row"
        );
        assert_eq!(h.on_check(&p, Ok(()), t), None);
        assert_eq!(
            h.on_check(&p, Ok(()), t),
            Some(Event::ChecksPassed { count: 2 })
        );
        assert!(h.is_up());
    }

    #[test]
    fn rise_and_fall_of_one_flip_at_once() {
        let p = Params {
            rise: 1,
            fall: 1,
            ..params(true)
        };
        let t = Instant::now();
        let mut h = Health::new();
        assert!(h.on_check(&p, fail(), t).is_some());
        assert!(h.on_check(&p, Ok(()), t).is_some());
    }

    #[test]
    fn ejection_without_checks_lasts_the_backoff() {
        let p = params(false);
        let t = Instant::now();
        let mut h = Health::new();
        assert!(!h.should_eject(&p, 4));
        assert!(h.should_eject(&p, 5));
        let e = h.eject(&p, 5, t);
        assert_eq!(
            e,
            Event::Ejected {
                failures: 5,
                nth: 1,
                duration: s(30)
            }
        );
        assert_eq!(
            e.to_string(),
            "ejected after 5 consecutive connect failures, ejection 1 for 30s"
        );
        assert!(!h.is_up());
        assert!(!h.should_eject(&p, 100), "already out");
        assert_eq!(h.tick(&p, t + s(29)), None);
        assert_eq!(h.tick(&p, t + s(30)), Some(Event::EjectionExpired));
        assert!(h.is_up());
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_is_forgiven_with_time() {
        let p = params(false);
        let mut t = Instant::now();
        let mut h = Health::new();
        let mut lengths = Vec::new();
        for _ in 0..6 {
            match h.eject(&p, 5, t) {
                Event::Ejected { duration, .. } => lengths.push(duration.as_secs()),
                e => panic!("{e:?}"),
            }
            t = h.ejected_until().expect("ejected");
            assert_eq!(h.tick(&p, t), Some(Event::EjectionExpired));
        }
        assert_eq!(lengths, vec![30, 60, 120, 240, 300, 300]);
        // 6 strikes; 2 base periods of good behaviour forgive 2 of them.
        let e = h.eject(&p, 5, t + s(60));
        assert_eq!(
            e,
            Event::Ejected {
                failures: 5,
                nth: 5,
                duration: s(300)
            }
        );
        // Long after, the slate is clean again.
        let t = h.ejected_until().expect("ejected");
        h.tick(&p, t);
        match h.eject(&p, 5, t + s(3600)) {
            Event::Ejected { nth, duration, .. } => assert_eq!((nth, duration), (1, s(30))),
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn rise_passing_checks_end_an_ejection_early() {
        let p = params(true);
        let t = Instant::now();
        let mut h = Health::new();
        h.eject(&p, 7, t);
        assert_eq!(h.on_check(&p, Ok(()), t + s(1)), None);
        assert_eq!(
            h.on_check(&p, fail(), t + s(2)),
            None,
            "a failure restarts the count"
        );
        assert_eq!(h.on_check(&p, Ok(()), t + s(3)), None);
        assert_eq!(
            h.on_check(&p, Ok(()), t + s(4)),
            Some(Event::ChecksPassed { count: 2 })
        );
        assert!(h.is_up());
    }

    #[test]
    fn an_ejected_backend_whose_checks_fail_stays_down_after_the_backoff() {
        let p = params(true);
        let t = Instant::now();
        let mut h = Health::new();
        h.eject(&p, 5, t);
        for i in 1..=3 {
            assert_eq!(h.on_check(&p, fail(), t + s(i)), None, "already down");
        }
        assert!(!h.checks_healthy());
        assert_eq!(
            h.tick(&p, t + s(31)),
            None,
            "back-off over, checks still failing"
        );
        assert!(!h.is_up());
        h.on_check(&p, Ok(()), t + s(32));
        assert_eq!(
            h.on_check(&p, Ok(()), t + s(33)),
            Some(Event::ChecksPassed { count: 2 })
        );
    }

    #[test]
    fn never_ejects_when_disabled_or_down() {
        let p = Params {
            eject_after: 0,
            ..params(true)
        };
        let h = Health::new();
        assert!(!h.should_eject(&p, u64::MAX));
        let p = params(true);
        let mut h = Health::new();
        for _ in 0..3 {
            h.on_check(&p, fail(), Instant::now());
        }
        assert!(!h.should_eject(&p, 100), "down by checks already");
    }

    #[test]
    fn huge_backoffs_saturate_at_the_cap() {
        let p = Params {
            eject_base: Duration::from_secs(3600 * 24 * 365),
            eject_max: Duration::from_secs(3600 * 24 * 365),
            ..params(false)
        };
        assert_eq!(backoff(&p, u32::MAX), p.eject_max);
        assert_eq!(backoff(&params(false), 0), s(30));
    }
}
