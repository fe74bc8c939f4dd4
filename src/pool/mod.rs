//! The key pool: which upstream key a request goes to, and how much of each key's budget is
//! left.
//!
//! Pure Rust, no I/O, no async, no locks: every key's state is a handful of atomics
//! (`key.rs`), each rate-limit dimension is a GCRA bucket on a monotonic nanosecond clock
//! (`bucket.rs`, `clock.rs`), selection is a scan over a priority-ordered index with one
//! compare-and-swap per reserved dimension (`select.rs`), and a [`Reservation`] corrects the
//! budget to the real usage when the response ends (`reservation.rs`). What the upstream says in
//! its `anthropic-ratelimit-*` headers (`headers.rs`) is authoritative and overwrites the local
//! view.
//!
//! Every time-dependent operation has an `*_at(.., now: Instant)` twin so tests can drive the
//! clock; the plain versions use `Instant::now()`.

mod admission;
mod bucket;
mod clock;
mod estimate;
mod headers;
mod key;
mod reservation;
mod select;

#[cfg(test)]
mod tests;

use std::time::Duration;

// The GCRA bucket, its clock and the output estimate serve the clients' own quotas too.
pub(crate) use bucket::{Bucket, Charge, FULL_SHARE};
pub(crate) use clock::ns as clock_ns;
pub(crate) use estimate::OutputEstimate;
pub use headers::{parse_retry_after, LimitHeaders, RateLimitHeaders};
pub use key::{DimensionSnapshot, KeySnapshot, KeyState};
pub use reservation::{Lease, Reservation};
pub use select::KeyPool;

/// How a key is chosen among the keys of the highest priority tier that can admit a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Most remaining capacity (the scarcest dimension, as a fraction of its limit), then
    /// fewest requests in flight, then round robin.
    #[default]
    LeastLoaded,
    RoundRobin,
    Random,
    /// Random, proportional to `KeySpec::weight`.
    Weighted,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::LeastLoaded => "least_loaded",
            Strategy::RoundRobin => "round_robin",
            Strategy::Random => "random",
            Strategy::Weighted => "weighted",
        }
    }

    pub fn parse(s: &str) -> Option<Strategy> {
        match s {
            "least_loaded" => Some(Strategy::LeastLoaded),
            "round_robin" => Some(Strategy::RoundRobin),
            "random" => Some(Strategy::Random),
            "weighted" => Some(Strategy::Weighted),
            _ => None,
        }
    }
}

/// One configured key, as the pool sees it: never the secret itself.
#[derive(Clone, Debug)]
pub struct KeySpec {
    /// Display id, never the secret.
    pub id: String,
    /// Stable hash of the secret, to carry state across reloads.
    pub fingerprint: u64,
    /// Requests per minute; 0 = unknown until learned from response headers.
    pub rpm_limit: u64,
    /// Input tokens per minute; 0 = unknown until learned.
    pub itpm_limit: u64,
    /// Output tokens per minute; 0 = unknown until learned.
    pub otpm_limit: u64,
    /// 0..=2; keys of priority 2 are used first.
    pub priority: u8,
    /// Share of traffic under [`Strategy::Weighted`].
    pub weight: f64,
    /// The longest the upstream may bench this key in one go: a `retry-after`, a rate-limit
    /// reset or a 403 backoff further out is cut to this, so a hostile or broken upstream
    /// cannot lock a key away (the key is tried again when it ends and learns otherwise).
    pub max_cooldown: Duration,
    /// Requests in flight on this key at most (`keys[].max_concurrent`; 0 = no cap): a key at
    /// its cap is skipped like an exhausted one.
    pub max_concurrent: u32,
}

/// `KeySpec::max_cooldown` when the config does not say.
pub const DEFAULT_MAX_COOLDOWN: Duration = Duration::from_secs(600);

/// What one request is expected to cost, known before it is sent.
#[derive(Clone, Copy, Debug, Default)]
pub struct Demand {
    /// Estimate from the request body.
    pub input_tokens: u64,
    /// `max_tokens` from the body; 0 if absent.
    pub max_tokens: u64,
}

/// What one request really cost, from the response's `usage`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Settlement {
    /// `usage.input_tokens + usage.cache_creation_input_tokens` (cache reads do not count
    /// toward ITPM).
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// No key can admit the request now.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Exhausted {
    /// Time until the earliest non-disabled key could admit this demand (never zero; the
    /// caller rounds up to whole seconds); 60 s when every key is disabled.
    pub retry_after: Duration,
    /// Every key is disabled (refused with 401): no key will admit anything before a reload,
    /// so `retry_after` means nothing and must not be presented as a rate limit.
    pub all_disabled: bool,
}
