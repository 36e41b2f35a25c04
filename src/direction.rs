//! The two directions of a proxied connection, one vocabulary for the connection state
//! machine, the io_uring tokens, the buffer arena, the counters and the metrics.

use std::ops::{Index, IndexMut};

/// A direction of a proxied connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dir {
    /// Client -> backend.
    Up,
    /// Backend -> client.
    Down,
}

impl Dir {
    pub const BOTH: [Dir; 2] = [Dir::Up, Dir::Down];

    /// 0 for `Up`, 1 for `Down`: the index into a [`PerDir`].
    pub fn index(self) -> usize {
        match self {
            Dir::Up => 0,
            Dir::Down => 1,
        }
    }

    /// The `direction` label of the byte counters.
    pub fn label(self) -> &'static str {
        match self {
            Dir::Up => "client_to_backend",
            Dir::Down => "backend_to_client",
        }
    }
}

/// One value per direction, indexed by [`Dir`] (never by a bare number).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PerDir<T>(pub [T; 2]);

impl<T> PerDir<T> {
    pub fn new(up: T, down: T) -> PerDir<T> {
        PerDir([up, down])
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.0.iter()
    }
}

impl<T> Index<Dir> for PerDir<T> {
    type Output = T;
    fn index(&self, dir: Dir) -> &T {
        &self.0[dir.index()]
    }
}

impl<T> IndexMut<Dir> for PerDir<T> {
    fn index_mut(&mut self, dir: Dir) -> &mut T {
        &mut self.0[dir.index()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_and_labels() {
        let mut p = PerDir::new(1, 2);
        p[Dir::Down] += 10;
        assert_eq!((p[Dir::Up], p[Dir::Down]), (1, 12));
        assert_eq!(Dir::BOTH.map(Dir::index), [0, 1]);
        assert_eq!(Dir::Up.label(), "client_to_backend");
    }
}
