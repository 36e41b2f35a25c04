//! Open-loop pacing (`http --rate`, and the bench crate's `udp --rate`): when each connection sends, and from when a request's
//! latency counts.
//!
//! Connection `i` of `c` sends its `k`-th request at `i/R + k*c/R` seconds after the start
//! (`R` the total rate): the connections' sends interleave evenly instead of bunching. A
//! connection has at most one request in flight; when a response comes back after the next
//! request's scheduled time, that request goes out at once.
//!
//! Latency and coordinated omission: a request held back because the previous response was
//! late counts from its scheduled time, as wrk2 does (the system under test made it wait). A
//! request sent late only because the generator's own timer woke late (tokio timers have
//! about 1 ms resolution) while the connection was idle counts from when it was actually
//! sent: the generator's slop is not charged to the system under test.

use std::time::Duration;

/// One connection's schedule, as offsets from the start of the run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    offset: Duration,
    interval: Duration,
    next: u64,
}

impl Schedule {
    /// Connection `index` of `connections` sharing `rate` requests per second.
    pub fn new(rate: f64, connections: usize, index: usize) -> Schedule {
        let per_conn = rate / connections.max(1) as f64;
        Schedule {
            offset: Duration::from_secs_f64(index as f64 / rate),
            interval: Duration::from_secs_f64(1.0 / per_conn),
            next: 0,
        }
    }

    /// When the next request is due; advances to the one after.
    pub fn next_due(&mut self) -> Duration {
        let due = self.offset + self.interval.mul_f64(self.next as f64);
        self.next += 1;
        due
    }
}

/// Where a request's latency starts: its scheduled time if the connection was still busy
/// with the previous request then (`previous_done` after `scheduled`), else when it was
/// sent.
pub fn latency_origin(scheduled: Duration, sent: Duration, previous_done: Duration) -> Duration {
    if previous_done > scheduled {
        scheduled.min(sent)
    } else {
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: f64) -> Duration {
        Duration::from_secs_f64(n / 1000.0)
    }

    #[test]
    fn connections_interleave_evenly() {
        // 1000 req/s over 4 connections: each sends every 4 ms, offset by 1 ms.
        let mut all: Vec<Duration> = (0..4)
            .flat_map(|i| {
                let mut s = Schedule::new(1000.0, 4, i);
                (0..3).map(move |_| s.next_due()).collect::<Vec<_>>()
            })
            .collect();
        all.sort();
        let expect: Vec<Duration> = (0..12).map(|n| ms(n as f64)).collect();
        for (got, want) in all.iter().zip(&expect) {
            assert!(
                got.abs_diff(*want) < Duration::from_micros(1),
                "{got:?} vs {want:?}"
            );
        }
    }

    #[test]
    fn late_response_counts_from_the_schedule() {
        // Due at 10 ms, the previous response came at 14 ms, sent at 14 ms: the 4 ms of
        // waiting are the server's.
        assert_eq!(latency_origin(ms(10.0), ms(14.0), ms(14.0)), ms(10.0));
    }

    #[test]
    fn late_timer_on_an_idle_connection_counts_from_the_send() {
        // Due at 10 ms, the connection idle since 6 ms, our timer fired at 10.9 ms.
        assert_eq!(latency_origin(ms(10.0), ms(10.9), ms(6.0)), ms(10.9));
    }

    #[test]
    fn on_time_send_counts_from_the_send() {
        assert_eq!(latency_origin(ms(10.0), ms(10.0), ms(2.0)), ms(10.0));
    }
}
