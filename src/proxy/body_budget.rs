//! The memory all buffered request bodies may hold together (`server.max_buffered_body_bytes`).
//! The relay buffers each body whole (to replay it on another key), so without a bound 40
//! clients sending 32 MiB bodies at once pin more than a gigabyte. A request takes its share
//! before reading (its declared length, or chunk by chunk when it declares none) and gives it
//! back when it ends; one that would go over gets 503 `overloaded_error` at once. One atomic
//! counter, no lock.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes held by all requests' bodies now.
static HELD: AtomicUsize = AtomicUsize::new(0);

/// Bytes held by all buffered request bodies now.
pub fn held() -> usize {
    HELD.load(Ordering::Relaxed)
}

/// One request's share of the budget, given back on drop.
#[derive(Debug, Default)]
pub struct BodyBudget {
    held: usize,
}

impl BodyBudget {
    /// Take `more` bytes if all bodies together stay within `cap`; `false` (nothing taken)
    /// otherwise.
    pub fn take(&mut self, more: usize, cap: usize) -> bool {
        let mut now = HELD.load(Ordering::Relaxed);
        loop {
            let Some(after) = now.checked_add(more).filter(|&a| a <= cap) else {
                return false;
            };
            match HELD.compare_exchange_weak(now, after, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => {
                    self.held += more;
                    return true;
                }
                Err(current) => now = current,
            }
        }
    }

    /// What this request holds.
    pub fn bytes(&self) -> usize {
        self.held
    }
}

impl Drop for BodyBudget {
    fn drop(&mut self) {
        if self.held > 0 {
            HELD.fetch_sub(self.held, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_taken_within_the_cap_and_given_back() {
        // Other tests in this binary do not buffer bodies; measure relative to now anyway.
        let base = held();
        let cap = base + 100;
        let mut a = BodyBudget::default();
        let mut b = BodyBudget::default();
        assert!(a.take(60, cap));
        assert!(!b.take(50, cap));
        assert_eq!(b.bytes(), 0);
        assert!(b.take(40, cap));
        assert!(!a.take(1, cap));
        drop(a);
        assert_eq!(held(), base + 40);
        drop(b);
        assert_eq!(held(), base);
    }
}
