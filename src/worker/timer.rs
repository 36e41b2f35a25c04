//! A hashed timer wheel for idle deadlines, one per worker, driven by the loop's own clock.
//!
//! Each connection has at most one entry. Activity does not touch the wheel: when an entry
//! fires, the caller checks the connection's last activity and re-inserts it if it is not
//! yet due. That keeps the per-byte path free of timer work.

/// Entries are opaque `(slot, generation)` pairs.
pub type Entry = (u32, u32);

pub struct Wheel {
    buckets: Vec<Vec<(u64, Entry)>>,
    tick_ns: u64,
    /// Ticks before this one have been processed.
    current: u64,
}

impl Wheel {
    pub fn new(tick_ns: u64, buckets: usize, now_ns: u64) -> Wheel {
        Wheel {
            buckets: (0..buckets.max(1)).map(|_| Vec::new()).collect(),
            tick_ns: tick_ns.max(1),
            current: now_ns / tick_ns.max(1),
        }
    }

    /// Schedules `entry` to fire at or after `deadline_ns`.
    pub fn insert(&mut self, deadline_ns: u64, entry: Entry) {
        let tick = (deadline_ns.div_ceil(self.tick_ns)).max(self.current);
        let n = self.buckets.len() as u64;
        self.buckets[(tick % n) as usize].push((tick, entry));
    }

    /// Moves every entry due at `now_ns` into `due`.
    pub fn expire(&mut self, now_ns: u64, due: &mut Vec<Entry>) {
        let now_tick = now_ns / self.tick_ns;
        let n = self.buckets.len() as u64;
        // After a long stall, one pass over all buckets is enough.
        let last = now_tick.min(self.current + n - 1);
        while self.current <= last {
            let bucket = &mut self.buckets[(self.current % n) as usize];
            let mut i = 0;
            while i < bucket.len() {
                if bucket[i].0 <= now_tick {
                    due.push(bucket.swap_remove(i).1);
                } else {
                    i += 1;
                }
            }
            self.current += 1;
        }
        self.current = self.current.max(now_tick);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_at_deadline_not_before() {
        let mut w = Wheel::new(100, 8, 0);
        w.insert(250, (1, 0));
        w.insert(2_000, (2, 0)); // beyond one turn of the wheel
        let mut due = Vec::new();
        w.expire(200, &mut due);
        assert!(due.is_empty());
        w.expire(300, &mut due);
        assert_eq!(due, vec![(1, 0)]);
        due.clear();
        w.expire(1_900, &mut due);
        assert!(due.is_empty());
        w.expire(2_000, &mut due);
        assert_eq!(due, vec![(2, 0)]);
    }

    #[test]
    fn long_stall_catches_up() {
        let mut w = Wheel::new(10, 4, 0);
        for i in 0..10 {
            w.insert(i * 10, (i as u32, 0));
        }
        let mut due = Vec::new();
        w.expire(1_000, &mut due);
        assert_eq!(due.len(), 10);
    }
}
