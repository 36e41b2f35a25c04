//! Answers to changes of the backend table, held until every worker routes with the
//! snapshot that carries the change. Whoever changed the table (the admin API, a
//! [`super::Controller`] caller, a test) and connects right after the answer reaches the
//! new table, never the old one.
//!
//! The control loop never blocks on the workers: a held answer waits here, and the loop
//! looks at the workers' reported versions after each event (and every [`POLL`] while
//! anything waits). A worker that has exited is not waited for; one that does not catch up
//! within [`BOUND`] gets the answer sent anyway, with a warning.

use std::time::{Duration, Instant};

/// The longest an answer waits for the workers.
pub const BOUND: Duration = Duration::from_secs(2);
/// How often the workers' versions are looked at while an answer waits. A worker swaps a
/// snapshot in microseconds after its eventfd fires, so this is the usual delay.
pub const POLL: Duration = Duration::from_millis(1);

type Reply = Box<dyn FnOnce() + Send>;

/// Answers waiting for the workers.
#[derive(Default)]
pub struct Held {
    /// Answers to the current event's change: the snapshot that carries it is published at
    /// the end of the event.
    unpublished: Vec<Reply>,
    /// (snapshot version to wait for, when to answer anyway, the answer), oldest first.
    waiting: Vec<(u64, Instant, Reply)>,
}

impl Held {
    /// Holds `reply` until the snapshot published after the current event runs everywhere.
    pub fn hold(&mut self, reply: impl FnOnce() + Send + 'static) {
        self.unpublished.push(Box::new(reply));
    }

    /// The event's publishing is done: `version` is the latest snapshot (the one carrying
    /// the held changes, or an earlier one when the change needed no new snapshot).
    pub fn published(&mut self, version: u64, now: Instant) {
        let deadline = now + BOUND;
        for r in self.unpublished.drain(..) {
            self.waiting.push((version, deadline, r));
        }
    }

    /// Sends every answer whose snapshot every running worker has applied (`applied` is the
    /// oldest version a running worker reports, `None` when none runs), and every answer
    /// past its bound.
    pub fn release(&mut self, applied: Option<u64>, now: Instant) {
        if self.waiting.is_empty() {
            return;
        }
        for (version, deadline, reply) in std::mem::take(&mut self.waiting) {
            let done = applied.is_none_or(|a| a >= version);
            if done || now >= deadline {
                if !done {
                    tracing::warn!(
                        "a worker still routes with snapshot {} {BOUND:?} after version {version} was published; answering anyway",
                        applied.unwrap_or_default()
                    );
                }
                reply();
            } else {
                self.waiting.push((version, deadline, reply));
            }
        }
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.unpublished.is_empty() && self.waiting.is_empty()
    }

    /// Sends every answer now (the balancer has stopped: no worker is left to wait for).
    pub fn flush(&mut self) {
        let unpublished = std::mem::take(&mut self.unpublished);
        let waiting = std::mem::take(&mut self.waiting);
        for reply in unpublished
            .into_iter()
            .chain(waiting.into_iter().map(|(_, _, r)| r))
        {
            reply();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn recorder() -> (Arc<Mutex<Vec<u32>>>, impl Fn(u32) -> Reply) {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let s = sent.clone();
        let make = move |id: u32| -> Reply {
            let s = s.clone();
            Box::new(move || s.lock().unwrap().push(id))
        };
        (sent, make)
    }

    #[test]
    fn answers_once_every_worker_runs_the_version() {
        let (sent, reply) = recorder();
        let mut h = Held::default();
        let t = Instant::now();
        h.unpublished.push(reply(1));
        h.release(Some(9), t);
        assert!(
            sent.lock().unwrap().is_empty(),
            "not before it is published"
        );
        h.published(5, t);
        h.release(Some(4), t);
        assert!(sent.lock().unwrap().is_empty(), "a worker still runs 4");
        h.unpublished.push(reply(2));
        h.published(6, t);
        h.release(Some(5), t);
        assert_eq!(*sent.lock().unwrap(), [1]);
        h.release(Some(7), t);
        assert_eq!(*sent.lock().unwrap(), [1, 2]);
        assert!(h.is_empty());
    }

    #[test]
    fn answers_anyway_after_the_bound_or_without_workers() {
        let (sent, reply) = recorder();
        let mut h = Held::default();
        let t = Instant::now();
        h.unpublished.push(reply(1));
        h.published(3, t);
        h.release(Some(2), t + BOUND - Duration::from_millis(1));
        assert!(sent.lock().unwrap().is_empty());
        h.release(Some(2), t + BOUND);
        assert_eq!(*sent.lock().unwrap(), [1]);
        h.unpublished.push(reply(2));
        h.published(4, t);
        h.release(None, t);
        assert_eq!(*sent.lock().unwrap(), [1, 2], "every worker exited");
        h.unpublished.push(reply(3));
        h.published(5, t);
        h.unpublished.push(reply(4));
        h.flush();
        assert_eq!(*sent.lock().unwrap(), [1, 2, 4, 3]);
        assert!(h.is_empty());
    }
}
