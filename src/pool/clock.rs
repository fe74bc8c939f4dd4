//! The pool's monotonic clock: nanoseconds as a plain `u64`, so that instants fit in atomics.

use std::time::{Duration, Instant};

use once_cell::sync::Lazy;

/// Anthropic's buckets refill in full over one minute.
pub(crate) const WINDOW_NS: u64 = 60_000_000_000;

/// Where the pool clock's epoch sits on the `u64` line. Instants taken shortly before the epoch
/// was fixed (a test's `t0`, created before the first pool) still map in order, and the value 0
/// that the atomics start from ("no deadline", "bucket full") lies an hour in the past.
const BASE_NS: u64 = 3_600_000_000_000;

static EPOCH: Lazy<Instant> = Lazy::new(Instant::now);

/// Fix the epoch; called when a pool is built so later conversions never initialise it.
pub(crate) fn init() {
    Lazy::force(&EPOCH);
}

/// `at` on the pool clock. A `u64` of nanoseconds lasts 584 years from the epoch.
#[inline]
pub(crate) fn ns(at: Instant) -> u64 {
    let epoch = *EPOCH;
    match at.checked_duration_since(epoch) {
        Some(d) => BASE_NS.saturating_add(d.as_nanos() as u64),
        None => BASE_NS.saturating_sub(epoch.duration_since(at).as_nanos() as u64),
    }
}

#[inline]
pub(crate) fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
