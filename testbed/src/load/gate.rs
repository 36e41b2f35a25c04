//! The end of a run, shared by its connections (or flows): who may make one more attempt
//! under the request budget, and the signal that stops everything still waiting.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// Raised once by the run's watchdog; every attempt checks it.
pub struct Gate {
    done: watch::Sender<bool>,
    issued: AtomicU64,
    /// The request budget, if any.
    max: Option<u64>,
}

impl Gate {
    pub fn new(max: Option<u64>) -> Gate {
        Gate {
            done: watch::Sender::new(false),
            issued: AtomicU64::new(0),
            max,
        }
    }

    /// Claims the right to one more attempt; false once the run is over or the budget
    /// is spent.
    pub fn take_ticket(&self) -> bool {
        if self.is_done() {
            return false;
        }
        match self.max {
            None => true,
            Some(max) => self.issued.fetch_add(1, Ordering::Relaxed) < max,
        }
    }

    /// Runs `f` unless the run ends first (then `None`).
    pub async fn until_done<F: Future>(&self, f: F) -> Option<F::Output> {
        let mut rx = self.done.subscribe();
        tokio::select! {
            biased;
            _ = rx.wait_for(|done| *done) => None,
            v = f => Some(v),
        }
    }

    /// Waits for the next request's turn: `pause` first (after failures), then its due
    /// time on an open-loop `schedule` (`start` is the run's). Returns the instant its
    /// latency counts from (corrected for coordinated omission, see
    /// [`super::latency_origin`]), or `None` when the run ended meanwhile.
    pub async fn next_turn(
        &self,
        start: Instant,
        schedule: Option<&mut super::Schedule>,
        pause: Option<Duration>,
        previous_done: Duration,
    ) -> Option<Instant> {
        if let Some(p) = pause {
            self.until_done(tokio::time::sleep(p)).await?;
        }
        match schedule {
            None => Some(Instant::now()),
            Some(s) => {
                let due = s.next_due();
                self.until_done(tokio::time::sleep_until((start + due).into()))
                    .await?;
                Some(start + super::latency_origin(due, start.elapsed(), previous_done))
            }
        }
    }

    /// Ends the run: attempts waiting in [`Gate::until_done`] give up.
    pub fn finish(&self) {
        self.done.send_replace(true);
    }

    pub fn is_done(&self) -> bool {
        *self.done.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_gives_exactly_max_tickets() {
        let g = Gate::new(Some(3));
        assert_eq!((0..10).filter(|_| g.take_ticket()).count(), 3);
    }

    #[test]
    fn finishing_refuses_tickets_and_cancels_waits() {
        let g = Gate::new(None);
        assert!(g.take_ticket());
        g.finish();
        assert!(!g.take_ticket());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let long = std::time::Duration::from_secs(60);
        let r = rt.block_on(async { g.until_done(tokio::time::sleep(long)).await });
        assert!(r.is_none());
    }
}
