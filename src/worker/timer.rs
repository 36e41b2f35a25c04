//! Idle deadlines, one per worker, driven by the loop's own clock: a hashed timer wheel and,
//! over it, [`IdleTimers`], which keeps at most one live entry per connection slot.
//!
//! Activity does not touch the wheel: when a slot's entry fires, the caller checks the
//! connection's last activity and arms the slot again if it is not yet due. That keeps the
//! per-byte path free of timer work. An entry outlives the connection that armed it and
//! serves the slot's next connection (whose deadline is later): one entry per slot, not one
//! per connection, so the wheel's memory is bounded by the slots, not by the connection rate
//! times the idle timeout.

/// Wheel entries are opaque `(slot, sequence)` pairs.
pub type Entry = (u32, u32);

pub struct Wheel {
    buckets: Vec<Vec<(u64, Entry)>>,
    tick_ns: u64,
    /// Ticks before this one have been processed.
    current: u64,
    len: usize,
}

impl Wheel {
    pub fn new(tick_ns: u64, buckets: usize, now_ns: u64) -> Wheel {
        Wheel {
            buckets: (0..buckets.max(1)).map(|_| Vec::new()).collect(),
            tick_ns: tick_ns.max(1),
            current: now_ns / tick_ns.max(1),
            len: 0,
        }
    }

    /// Schedules `entry` to fire at or after `deadline_ns`.
    pub fn insert(&mut self, deadline_ns: u64, entry: Entry) {
        let tick = (deadline_ns.div_ceil(self.tick_ns)).max(self.current);
        let n = self.buckets.len() as u64;
        self.buckets[(tick % n) as usize].push((tick, entry));
        self.len += 1;
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
                    self.len -= 1;
                } else {
                    i += 1;
                }
            }
            self.current += 1;
        }
        self.current = self.current.max(now_tick);
    }

    /// Entries waiting.
    pub fn entries(&self) -> usize {
        self.len
    }
}

/// A slot's timer: the sequence number of its live entry, and that entry's deadline.
#[derive(Clone, Copy, Default)]
struct SlotTimer {
    seq: u32,
    live: Option<u64>,
}

/// Idle deadlines of connection slots: at most one live entry per slot. An entry made
/// stale (a shorter deadline armed after it, after a reload shortened the idle timeout) is
/// dropped when it fires.
pub struct IdleTimers {
    wheel: Wheel,
    slots: Vec<SlotTimer>,
    fired: Vec<Entry>,
}

impl IdleTimers {
    pub fn new(tick_ns: u64, buckets: usize, now_ns: u64) -> IdleTimers {
        IdleTimers {
            wheel: Wheel::new(tick_ns, buckets, now_ns),
            slots: Vec::new(),
            fired: Vec::new(),
        }
    }

    /// Makes sure `slot` is looked at no later than `deadline_ns`: nothing to do when its
    /// live entry fires earlier (the caller then arms it again).
    pub fn arm(&mut self, slot: usize, deadline_ns: u64) {
        if slot >= self.slots.len() {
            self.slots.resize(slot + 1, SlotTimer::default());
        }
        let t = &mut self.slots[slot];
        if t.live.is_some_and(|d| d <= deadline_ns) {
            return;
        }
        t.seq = t.seq.wrapping_add(1);
        t.live = Some(deadline_ns);
        self.wheel.insert(deadline_ns, (slot as u32, t.seq));
    }

    /// The slots whose live entry is due at `now_ns`, into `due`; they have no entry until
    /// armed again.
    pub fn expire(&mut self, now_ns: u64, due: &mut Vec<usize>) {
        self.wheel.expire(now_ns, &mut self.fired);
        for (slot, seq) in self.fired.drain(..) {
            let t = &mut self.slots[slot as usize];
            if t.seq == seq && t.live.is_some() {
                t.live = None;
                due.push(slot as usize);
            }
        }
    }

    /// Entries in the wheel, stale ones included.
    pub fn entries(&self) -> usize {
        self.wheel.entries()
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

    #[test]
    fn one_entry_per_slot_however_many_connections_use_it() {
        let mut t = IdleTimers::new(100, 16, 0);
        let mut due = Vec::new();
        // 1000 short connections on slot 3, each arming a deadline 10 s after its start.
        for i in 0..1000u64 {
            t.arm(3, i * 10 + 10_000);
            t.expire(i * 10, &mut due);
        }
        assert_eq!(t.entries(), 1, "later deadlines reuse the live entry");
        assert!(due.is_empty());
        // The entry fires at the first connection's deadline; the caller re-arms.
        t.expire(10_000, &mut due);
        assert_eq!(due, vec![3]);
        assert_eq!(t.entries(), 0);
    }

    #[test]
    fn a_shorter_deadline_fires_on_time_and_the_stale_entry_is_dropped() {
        let mut t = IdleTimers::new(100, 16, 0);
        let mut due = Vec::new();
        t.arm(1, 5_000);
        t.arm(1, 1_000); // the idle timeout was shortened by a reload
        assert_eq!(t.entries(), 2);
        t.expire(1_000, &mut due);
        assert_eq!(due, vec![1]);
        due.clear();
        t.expire(5_000, &mut due);
        assert!(due.is_empty(), "the stale entry fires for nobody");
        assert_eq!(t.entries(), 0);
    }

    #[test]
    fn slots_fire_independently() {
        let mut t = IdleTimers::new(100, 16, 0);
        let mut due = Vec::new();
        t.arm(0, 300);
        t.arm(7, 200);
        t.expire(250, &mut due);
        assert_eq!(due, vec![7]);
        t.arm(7, 900);
        t.expire(1_000, &mut due);
        due.sort();
        assert_eq!(due, vec![0, 7, 7]);
    }
}
