//! `limits.max_connections`: a cap on client connections open at once over
//! the public listeners (plain and TLS together), so a flood of idle or slow
//! connections meets a bound of ours before it exhausts file descriptors or
//! memory (about 60 KB per idle connection).
//!
//! Counted in [`super::deadline::HeaderDeadline::process_new`], the first
//! place a connection reaches our code: right after accept for plain HTTP,
//! after the TLS handshake for HTTPS (Pingora 0.9 runs the handshake, bounded
//! by its fixed 60 s, in the accept loop's task before any application code;
//! its `ConnectionFilter` sees only the peer address, with no way to learn
//! when the connection ends). A connection over the cap is closed at once,
//! before anything is read from it. The cost per connection is two atomic
//! operations and an `Arc` clone.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Debug)]
pub struct ConnLimit {
    max: usize,
    open: AtomicUsize,
    refused: AtomicU64,
}

/// Held for the life of a connection; the count drops with it.
#[derive(Debug)]
pub struct ConnPermit(Arc<ConnLimit>);

impl ConnLimit {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            open: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
        })
    }

    /// A permit for one more connection, or `None` (and counted) when
    /// `max` are open.
    pub fn try_acquire(self: &Arc<Self>) -> Option<ConnPermit> {
        let before = self.open.fetch_add(1, Ordering::AcqRel);
        if before >= self.max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(ConnPermit(self.clone()))
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_holds_and_frees() {
        let l = ConnLimit::new(2);
        let a = l.try_acquire().unwrap();
        let _b = l.try_acquire().unwrap();
        assert!(l.try_acquire().is_none());
        assert_eq!((l.open(), l.refused()), (2, 1));
        drop(a);
        assert!(l.try_acquire().is_some());
        assert_eq!(l.open(), 1);
    }
}
