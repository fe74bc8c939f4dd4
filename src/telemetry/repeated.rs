//! A log line for a condition that can happen many times a second: the first occurrence is
//! written at once, later ones within `every` are only counted, and the next one after that
//! writes a line that says how many were left out. Lock-free: two atomics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One repeated condition's log line.
#[derive(Debug)]
pub struct Repeated {
    /// At most one line per this many milliseconds.
    every_ms: u64,
    /// When the last line was written (ms since the epoch; 0 = never).
    last_ms: AtomicU64,
    /// Occurrences since the last line that wrote none.
    left_out: AtomicU64,
}

impl Repeated {
    pub const fn new(every: Duration) -> Repeated {
        Repeated {
            every_ms: every.as_millis() as u64,
            last_ms: AtomicU64::new(0),
            left_out: AtomicU64::new(0),
        }
    }

    /// One occurrence: `write` is called (with how many occurrences went unlogged since the
    /// last line) when a line is due, otherwise the occurrence is only counted.
    pub fn occurred(&self, write: impl FnOnce(u64)) {
        let now = now_ms();
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= self.every_ms;
        if due
            && self
                .last_ms
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            write(self.left_out.swap(0, Ordering::Relaxed));
        } else {
            self.left_out.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The condition is over: the next occurrence is logged at once again. `Some(n)` when it
    /// had occurred (`n` occurrences went unlogged since the last line), for a closing line;
    /// `None` when there is nothing to close.
    pub fn ended(&self) -> Option<u64> {
        if self.last_ms.swap(0, Ordering::Relaxed) == 0 {
            return None;
        }
        Some(self.left_out.swap(0, Ordering::Relaxed))
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_is_written_the_rest_counted_until_due() {
        let r = Repeated::new(Duration::from_secs(3600));
        let mut lines = Vec::new();
        for _ in 0..5 {
            r.occurred(|left_out| lines.push(left_out));
        }
        assert_eq!(lines, vec![0]);
        assert_eq!(r.ended(), Some(4));
        assert_eq!(r.ended(), None);
        r.occurred(|left_out| lines.push(left_out));
        assert_eq!(lines, vec![0, 0]);
    }

    #[test]
    fn a_due_line_says_how_many_were_left_out() {
        let r = Repeated::new(Duration::ZERO);
        let mut lines = Vec::new();
        r.occurred(|n| lines.push(n));
        r.occurred(|n| lines.push(n));
        assert_eq!(lines, vec![0, 0]);
    }
}
