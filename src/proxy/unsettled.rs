//! Requests not settled yet: from the start of their request filter until their context is
//! dropped, after Pingora's logging phase, where the relay settles what they used (keys,
//! client quotas and budgets), counts their metrics and writes their access-log line. A client
//! has its response before that phase runs, so whoever reads the relay's counts right after a
//! response (its tests first) waits until `/status` says `requests_unsettled: 0`. The relay's
//! own endpoints (`/status`, `/health`, `/metrics`, ...) stop counting before they answer, so
//! asking does not count itself. One atomic counter, no lock.

use std::sync::atomic::{AtomicUsize, Ordering};

static UNSETTLED: AtomicUsize = AtomicUsize::new(0);

/// Requests begun and not settled now.
pub fn count() -> usize {
    UNSETTLED.load(Ordering::Relaxed)
}

/// One request's place in the count, given back on drop (or by [`Unsettled::end`]).
#[derive(Debug, Default)]
pub struct Unsettled(bool);

impl Unsettled {
    pub fn begin() -> Unsettled {
        UNSETTLED.fetch_add(1, Ordering::AcqRel);
        Unsettled(true)
    }

    /// No longer counted (a request the relay answers from its own state).
    pub fn end(&mut self) {
        if std::mem::take(&mut self.0) {
            UNSETTLED.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Unsettled {
    fn drop(&mut self) {
        self.end();
    }
}
