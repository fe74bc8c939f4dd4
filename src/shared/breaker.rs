//! The breaker around the store: closed while it answers in time; open from the first
//! admission it fails (an error or a missed `timeout_ms`) until a heartbeat gets through again
//! and this relay's view has been pushed back into it.
//!
//! One atomic: the request path reads it once per admission and never waits on it.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::pool::clock_ns;

/// Closed: the store admits. Any other value: open since that pool-clock instant.
const CLOSED: u64 = 0;

pub struct Breaker {
    opened_at: AtomicU64,
    /// Times it closed: a connection made before the last closing may have met the failure
    /// that opened it.
    closings: AtomicU64,
}

impl Breaker {
    /// Starts open: nothing is shared until the store has answered a first heartbeat.
    pub fn new_open() -> Breaker {
        Breaker {
            opened_at: AtomicU64::new(now().max(1)),
            closings: AtomicU64::new(0),
        }
    }

    #[inline]
    pub fn is_closed(&self) -> bool {
        self.opened_at.load(Relaxed) == CLOSED
    }

    /// Open it; true when this call is the one that opened it.
    pub fn open(&self) -> bool {
        self.opened_at
            .compare_exchange(CLOSED, now().max(1), Relaxed, Relaxed)
            .is_ok()
    }

    pub fn close(&self) {
        self.closings.fetch_add(1, Relaxed);
        self.opened_at.store(CLOSED, Relaxed);
    }

    /// Times it closed so far.
    pub fn closings(&self) -> u64 {
        self.closings.load(Relaxed)
    }

    /// How long it has been open (zero when closed).
    pub fn open_for(&self) -> std::time::Duration {
        match self.opened_at.load(Relaxed) {
            CLOSED => std::time::Duration::ZERO,
            since => std::time::Duration::from_nanos(now().saturating_sub(since)),
        }
    }
}

fn now() -> u64 {
    clock_ns(std::time::Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_once_and_closes() {
        let b = Breaker::new_open();
        assert!(!b.is_closed());
        b.close();
        assert!(b.is_closed());
        assert_eq!(b.closings(), 1);
        assert!(b.open());
        assert!(!b.open(), "a second failure does not reopen it");
        assert!(!b.is_closed());
    }
}
