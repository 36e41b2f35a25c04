//! Backup backends (`--backend ADDR,backup`, `backup = true`), as HAProxy's and NGINX's
//! `backup`: which backends new connections may use, decided from the backends' states
//! alone so that the workers and the control thread always agree.
//!
//! While some primary (non-backup) backend is up, only the up primaries are used; when no
//! primary is up and some backup is, only the up backups. Only when nothing at all is up
//! does panic mode ignore the health checks and use every `down` backend, primary and
//! backup alike. Drained and maintenance backends are never used.

use crate::backend::BackendState;

/// The backends new connections may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// Some primary is up: the up primaries.
    Primary,
    /// No primary is up, some backup is: the up backups.
    Backup,
    /// Nothing is up: every `down` backend of both kinds (panic mode).
    Panic,
}

impl Tier {
    /// The tier for backends given as (is a backup, state).
    pub fn of(backends: impl IntoIterator<Item = (bool, BackendState)>) -> Tier {
        let mut backup_up = false;
        for (backup, state) in backends {
            if state == BackendState::Up {
                if !backup {
                    return Tier::Primary;
                }
                backup_up = true;
            }
        }
        if backup_up {
            Tier::Backup
        } else {
            Tier::Panic
        }
    }

    /// May a backend of this kind, in this state, take a new connection in this tier?
    pub fn admits(self, backup: bool, state: BackendState) -> bool {
        match self {
            Tier::Primary => !backup && state.accepts_new(),
            Tier::Backup => backup && state.accepts_new(),
            Tier::Panic => state == BackendState::Down,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use BackendState::{Down, Draining, Maint, Up};

    const P: bool = false;
    const B: bool = true;

    #[test]
    fn a_primary_up_means_primaries_only() {
        let t = Tier::of([(P, Down), (P, Up), (B, Up)]);
        assert_eq!(t, Tier::Primary);
        assert!(t.admits(P, Up));
        assert!(!t.admits(B, Up), "a backup waits while a primary is up");
        assert!(!t.admits(P, Down));
        assert!(!t.admits(P, Draining));
        assert!(!t.admits(P, Maint));
    }

    #[test]
    fn no_primary_up_means_the_up_backups() {
        for primaries in [Down, Maint, Draining] {
            let t = Tier::of([(P, primaries), (B, Down), (B, Up)]);
            assert_eq!(t, Tier::Backup, "primaries {primaries:?}");
            assert!(t.admits(B, Up));
            assert!(!t.admits(B, Down));
            assert!(!t.admits(P, Down), "not panic: a backup is up");
            assert!(!t.admits(P, primaries));
        }
        assert_eq!(Tier::of([(B, Up)]), Tier::Backup, "only backups configured");
    }

    #[test]
    fn nothing_up_is_panic_over_both_kinds() {
        let t = Tier::of([(P, Down), (B, Down), (P, Maint), (B, Draining)]);
        assert_eq!(t, Tier::Panic);
        assert!(t.admits(P, Down));
        assert!(t.admits(B, Down));
        assert!(!t.admits(P, Maint));
        assert!(!t.admits(B, Draining));
        assert_eq!(Tier::of([]), Tier::Panic);
    }

    #[test]
    fn a_recovered_primary_takes_over_again() {
        let mut states = vec![(P, Down), (P, Down), (B, Up)];
        assert_eq!(Tier::of(states.clone()), Tier::Backup);
        states[1].1 = Up;
        let t = Tier::of(states);
        assert_eq!(t, Tier::Primary);
        assert!(!t.admits(B, Up));
    }
}
