//! The recent past, for the status page: requests and errors per 10-second slot over the last
//! ten minutes, and the last errors with their request ids. Process-wide and kept across
//! reloads. Recording never waits: a slot is one atomic word per series (its slot number and
//! its count packed together, so a slot that comes round again restarts at exactly 1), and the
//! error ring is a row of `ArcSwapOption`s written in turn.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use serde::Serialize;

/// The width of a slot.
pub const SLOT_SECS: u64 = 10;
/// Slots kept: ten minutes.
const SLOTS: usize = 60;
/// Errors kept.
const RECENT_ERRORS: usize = 20;

/// One request the relay did not answer with success.
#[derive(Debug, Serialize)]
pub struct ErrorRecord {
    /// Unix time in milliseconds.
    pub at_ms: u64,
    pub request_id: String,
    /// 0 when no response was written (the client went away, the connection broke).
    pub status: u16,
    pub method: String,
    pub path: String,
    pub provider: String,
    /// The key id, never the key.
    pub key: String,
    pub attempts: u32,
}

/// One slot's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SlotCounts {
    /// Unix time the slot starts at, in seconds.
    pub start: u64,
    pub requests: u64,
    pub errors: u64,
}

pub struct Activity {
    /// Per slot, (slot number mod 2^32) << 32 | count, for requests and errors.
    requests: [AtomicU64; SLOTS],
    errors: [AtomicU64; SLOTS],
    recent: [ArcSwapOption<ErrorRecord>; RECENT_ERRORS],
    next_error: AtomicUsize,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            requests: std::array::from_fn(|_| AtomicU64::new(0)),
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
            recent: std::array::from_fn(|_| ArcSwapOption::empty()),
            next_error: AtomicUsize::new(0),
        }
    }
}

/// Whether a status counts as an error on the page (anything but success; 0 = no answer).
pub fn is_error(status: u16) -> bool {
    status == 0 || status >= 400
}

pub fn unix_now() -> std::time::Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Count one in `cell` for slot `slot`, restarting the count when the cell held another slot.
fn bump(cell: &AtomicU64, slot: u64) {
    let tag = slot & 0xffff_ffff;
    let _ = cell.fetch_update(Relaxed, Relaxed, |word| {
        Some(if word >> 32 == tag {
            word.saturating_add(1).min(word | 0xffff_ffff)
        } else {
            tag << 32 | 1
        })
    });
}

/// The count `cell` holds for slot `slot` (0 when it holds another one).
fn count(cell: &AtomicU64, slot: u64) -> u64 {
    let word = cell.load(Relaxed);
    if word >> 32 == slot & 0xffff_ffff {
        word & 0xffff_ffff
    } else {
        0
    }
}

impl Activity {
    /// Count a request answered `status` at `unix_secs`.
    pub fn record(&self, unix_secs: u64, status: u16) {
        let slot = unix_secs / SLOT_SECS;
        let i = (slot % SLOTS as u64) as usize;
        bump(&self.requests[i], slot);
        if is_error(status) {
            bump(&self.errors[i], slot);
        }
    }

    /// Keep `error` as the newest of the recent errors.
    pub fn record_error(&self, error: ErrorRecord) {
        let i = self.next_error.fetch_add(1, Relaxed) % RECENT_ERRORS;
        self.recent[i].store(Some(Arc::new(error)));
    }

    /// The last ten minutes' slots, oldest first, the current (partial) one last.
    pub fn slots(&self, unix_secs: u64) -> Vec<SlotCounts> {
        let current = unix_secs / SLOT_SECS;
        (0..SLOTS as u64)
            .rev()
            .filter_map(|back| current.checked_sub(back))
            .map(|slot| {
                let i = (slot % SLOTS as u64) as usize;
                SlotCounts {
                    start: slot * SLOT_SECS,
                    requests: count(&self.requests[i], slot),
                    errors: count(&self.errors[i], slot),
                }
            })
            .collect()
    }

    /// The recent errors, newest first.
    pub fn recent_errors(&self) -> Vec<Arc<ErrorRecord>> {
        let mut errors: Vec<_> = self.recent.iter().filter_map(|e| e.load_full()).collect();
        errors.sort_by_key(|e| std::cmp::Reverse(e.at_ms));
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_count_requests_and_errors_and_restart_when_they_come_round() {
        let a = Activity::default();
        let t = 1_000_000;
        a.record(t, 200);
        a.record(t + 1, 429);
        a.record(t + 1, 0);
        a.record(t + SLOT_SECS, 200);
        let slots = a.slots(t + SLOT_SECS);
        assert_eq!(slots.len(), SLOTS);
        let last = slots[SLOTS - 1];
        let before = slots[SLOTS - 2];
        assert_eq!((before.requests, before.errors), (3, 2));
        assert_eq!((last.requests, last.errors), (1, 0));
        assert_eq!(last.start, (t + SLOT_SECS) / SLOT_SECS * SLOT_SECS);
        // Ten minutes later the first slot's cell is reused: it starts again from one.
        let later = t + SLOT_SECS * SLOTS as u64;
        a.record(later, 200);
        let slots = a.slots(later);
        assert_eq!(slots[SLOTS - 1].requests, 1);
        assert_eq!(slots[SLOTS - 1].errors, 0);
        assert!(slots[..SLOTS - 1].iter().all(|s| s.requests <= 1));
    }

    #[test]
    fn recent_errors_keep_the_newest_first_and_at_most_the_ring() {
        let a = Activity::default();
        for i in 0..(RECENT_ERRORS as u64 + 5) {
            a.record_error(ErrorRecord {
                at_ms: i,
                request_id: format!("req_{i}"),
                status: 502,
                method: "POST".into(),
                path: "/v1/messages".into(),
                provider: "p".into(),
                key: "k".into(),
                attempts: 1,
            });
        }
        let errors = a.recent_errors();
        assert_eq!(errors.len(), RECENT_ERRORS);
        assert_eq!(errors[0].request_id, format!("req_{}", RECENT_ERRORS + 4));
        assert_eq!(errors.last().unwrap().at_ms, 5);
    }
}
