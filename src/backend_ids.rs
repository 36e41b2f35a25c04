//! Which backend name holds which [`BackendId`] (the index of its shared counters).
//!
//! A name keeps its id for as long as it is published, and a while after: once a name is
//! in no snapshot the control thread publishes, its id is *retired* (a name that comes back
//! meanwhile gets the same id, counters and all). The server releases a retired id once
//! nothing refers to it any more (no snapshot a worker may still route with holds it, and
//! no connection counts on it); a released id is free for the next new name. So the
//! [`MAX_BACKENDS`] ids bound the backends that exist at once, not the names ever seen.
//!
//! Pure bookkeeping: what "nothing refers to it" means is the server's to decide.

use std::collections::{HashMap, HashSet};

use crate::backend::{BackendId, MAX_BACKENDS};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Slot {
    Free,
    /// In the snapshot last published (or about to be).
    Live(String),
    /// Not in the last snapshot; may still be referenced.
    Retired(String),
}

/// The id table. See the module docs.
#[derive(Debug)]
pub struct BackendIds {
    slots: Vec<Slot>,
    by_name: HashMap<String, BackendId>,
}

impl Default for BackendIds {
    fn default() -> Self {
        BackendIds {
            slots: vec![Slot::Free; MAX_BACKENDS],
            by_name: HashMap::new(),
        }
    }
}

impl BackendIds {
    /// The id `name` holds, if any (a retired one is live again).
    pub fn lookup(&mut self, name: &str) -> Option<BackendId> {
        let id = *self.by_name.get(name)?;
        let slot = &mut self.slots[id.0 as usize];
        if let Slot::Retired(n) = slot {
            *slot = Slot::Live(std::mem::take(n));
        }
        Some(id)
    }

    /// Gives `name` (which holds no id) the lowest free id; `None` when every id is taken.
    pub fn assign(&mut self, name: &str) -> Option<BackendId> {
        debug_assert!(!self.by_name.contains_key(name));
        let i = self.slots.iter().position(|s| *s == Slot::Free)?;
        self.slots[i] = Slot::Live(name.to_string());
        let id = BackendId(i as u32);
        self.by_name.insert(name.to_string(), id);
        Some(id)
    }

    /// Retires the id of every live name that is not in `published`.
    pub fn retire_absent(&mut self, published: &HashSet<&str>) {
        for slot in &mut self.slots {
            if let Slot::Live(n) = slot {
                if !published.contains(n.as_str()) {
                    *slot = Slot::Retired(std::mem::take(n));
                }
            }
        }
    }

    /// The retired ids, lowest first.
    pub fn retired(&self) -> Vec<BackendId> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s, Slot::Retired(_)))
            .map(|(i, _)| BackendId(i as u32))
            .collect()
    }

    /// Frees a retired id: its name is forgotten. The caller has reset its counters.
    pub fn release(&mut self, id: BackendId) {
        let slot = &mut self.slots[id.0 as usize];
        if let Slot::Retired(n) = slot {
            self.by_name.remove(n.as_str());
            *slot = Slot::Free;
        }
    }

    /// Ids held now, live or retired.
    pub fn taken(&self) -> usize {
        self.by_name.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set<'a>(names: &[&'a str]) -> HashSet<&'a str> {
        names.iter().copied().collect()
    }

    #[test]
    fn names_keep_their_id_until_released() {
        let mut ids = BackendIds::default();
        let a = ids.assign("a").expect("id");
        let b = ids.assign("b").expect("id");
        assert_eq!((a, b), (BackendId(0), BackendId(1)));
        assert_eq!(ids.lookup("a"), Some(a));
        assert_eq!(ids.lookup("c"), None);
        ids.retire_absent(&set(&["b"]));
        assert_eq!(ids.retired(), vec![a]);
        // Back before it was released: the same id, live again.
        assert_eq!(ids.lookup("a"), Some(a));
        assert!(ids.retired().is_empty());
        ids.retire_absent(&set(&["b"]));
        ids.release(a);
        assert_eq!(ids.lookup("a"), None);
        assert_eq!(ids.assign("c"), Some(a), "the lowest free id is reused");
        // Releasing a live id does nothing.
        ids.release(b);
        assert_eq!(ids.lookup("b"), Some(b));
        assert_eq!(ids.taken(), 2);
    }

    #[test]
    fn ids_run_out_only_while_all_are_held() {
        let mut ids = BackendIds::default();
        for i in 0..MAX_BACKENDS {
            assert!(ids.assign(&format!("n{i}")).is_some());
        }
        assert_eq!(ids.assign("one-more"), None);
        ids.retire_absent(&set(&["n0"]));
        assert_eq!(ids.assign("one-more"), None, "retired is not free");
        for id in ids.retired() {
            ids.release(id);
        }
        assert_eq!(ids.taken(), 1);
        assert_eq!(ids.assign("one-more"), Some(BackendId(1)));
    }
}
