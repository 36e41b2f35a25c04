//! The admin endpoint's open connections, at most [`MAX_CONNS`] at once (the admin socket
//! shares the process's descriptors with the data path). When they are all taken, a new
//! connection takes the place of the oldest one that has no request in progress: one
//! idling between requests, or a slow client still sending its request head. So however
//! many clients trickle bytes, an orchestrator's `GET /health` gets in at once; only while
//! every connection is busy answering does a new one wait in the kernel's backlog.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// Admin connections served at once.
pub const MAX_CONNS: usize = 32;

/// One open connection, as the table sees it.
#[derive(Debug, Default)]
pub struct ConnState {
    /// Requests being handled now (HTTP/1.1 handles one at a time, but count anyway).
    requests: AtomicUsize,
    /// Signalled when the connection is to be closed to make room.
    evict: Notify,
}

impl ConnState {
    fn busy(&self) -> bool {
        self.requests.load(Ordering::Relaxed) > 0
    }
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    /// Oldest first.
    open: Vec<(u64, Arc<ConnState>)>,
}

/// The table of open connections. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct Conns {
    inner: Arc<Mutex<Inner>>,
    /// Signalled when a connection closes or a request ends (room may have appeared).
    changed: Arc<Notify>,
}

/// The oldest connection without a request in progress, given each one's busy flag
/// (oldest first).
pub fn victim(busy: impl IntoIterator<Item = bool>) -> Option<usize> {
    busy.into_iter().position(|b| !b)
}

impl Conns {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn has_room(&self) -> bool {
        let inner = self.lock();
        inner.open.len() < MAX_CONNS || victim(inner.open.iter().map(|(_, c)| c.busy())).is_some()
    }

    /// Waits until a new connection may be accepted: one is free, or one can be evicted.
    pub async fn room(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the check: a change in between is not missed.
            changed.as_mut().enable();
            if self.has_room() {
                return;
            }
            changed.await;
        }
    }

    /// Registers a new connection; at the limit, evicts the oldest idle or slow one.
    pub fn admit(&self) -> Conn {
        let mut inner = self.lock();
        if inner.open.len() >= MAX_CONNS {
            if let Some(i) = victim(inner.open.iter().map(|(_, c)| c.busy())) {
                let (_, evicted) = inner.open.remove(i);
                evicted.evict.notify_one();
            }
        }
        inner.next_id += 1;
        let id = inner.next_id;
        let state = Arc::new(ConnState::default());
        inner.open.push((id, state.clone()));
        Conn {
            id,
            state,
            conns: self.clone(),
        }
    }

    /// Connections open now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().open.len()
    }
}

/// A registered connection; leaves the table when dropped.
#[derive(Debug)]
pub struct Conn {
    id: u64,
    state: Arc<ConnState>,
    conns: Conns,
}

impl Conn {
    /// Completes when the table wants this connection closed to make room.
    pub async fn evicted(&self) {
        self.state.evict.notified().await;
    }

    /// Marks a request in progress until the returned guard is dropped.
    pub fn request(&self) -> Request {
        self.state.requests.fetch_add(1, Ordering::Relaxed);
        Request {
            state: self.state.clone(),
            changed: self.conns.changed.clone(),
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.conns.lock().open.retain(|(id, _)| *id != self.id);
        self.conns.changed.notify_waiters();
    }
}

/// A request in progress on a connection (see [`Conn::request`]).
#[derive(Debug)]
pub struct Request {
    state: Arc<ConnState>,
    changed: Arc<Notify>,
}

impl Drop for Request {
    fn drop(&mut self) {
        self.state.requests.fetch_sub(1, Ordering::Relaxed);
        self.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_idle_connection_makes_room() {
        assert_eq!(victim([true, false, false]), Some(1));
        assert_eq!(victim([true, true]), None);
        assert_eq!(victim([]), None);

        let conns = Conns::default();
        let all: Vec<Conn> = (0..MAX_CONNS).map(|_| conns.admit()).collect();
        let _busy = all[0].request();
        assert!(conns.has_room(), "the others are idle");
        let newcomer = conns.admit();
        assert_eq!(conns.len(), MAX_CONNS);
        // all[1] was evicted (all[0] is busy): its signal is waiting for it.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(5), all[1].evicted())
                .await
                .expect("evicted");
        });
        drop(newcomer);
        assert_eq!(conns.len(), MAX_CONNS - 1);
        drop(all);
        assert_eq!(conns.len(), 0);
    }

    #[test]
    fn no_room_while_every_connection_is_busy() {
        let conns = Conns::default();
        let all: Vec<Conn> = (0..MAX_CONNS).map(|_| conns.admit()).collect();
        let busy: Vec<Request> = all.iter().map(Conn::request).collect();
        assert!(!conns.has_room());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let waiter = conns.clone();
            let room = tokio::spawn(async move { waiter.room().await });
            tokio::task::yield_now().await;
            assert!(!room.is_finished());
            drop(busy);
            tokio::time::timeout(std::time::Duration::from_secs(5), room)
                .await
                .expect("room once a request ended")
                .expect("task");
        });
    }
}
