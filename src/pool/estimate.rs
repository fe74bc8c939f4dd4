//! How many output tokens to reserve for a request whose output is not known yet.
//!
//! Reserving `max_tokens` is what the upstream's own accounting suggests, but Claude Code sends
//! `max_tokens: 64000` on every request while a tier-1 key allows 8,000 output tokens a minute:
//! a pool that reserved it would refuse all Claude Code traffic. Reserving nothing lets the
//! output bucket overshoot the upstream's and earns 429s. So each key learns what its responses
//! really produce and reserves `mean + 2 × mean deviation` of the settled output tokens, kept as
//! exponentially weighted averages (gains 1/8 and 1/4, as TCP's retransmission timer estimates a
//! round trip, Jacobson/Karels). The mean alone would under-reserve about half the requests; the
//! deviation term approximates a high percentile without keeping any history, in one atomic.
//! It starts at 1024 tokens: a modest answer, small enough that a fresh tier-1 key admits
//! several requests at once, and adapts within a few dozen responses. The caller further caps it
//! at `max_tokens` and at the output bucket's capacity, so it is always admissible.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Fractional bits of the fixed-point mean and deviation (each packed into 32 bits).
const FRAC: u32 = 4;
/// Largest sample taken into account; keeps the packed halves from overflowing.
const MAX_SAMPLE: u64 = (u32::MAX >> FRAC) as u64 / 4;
const INITIAL_MEAN: u64 = 1024;

pub(crate) struct OutputEstimate(AtomicU64);

impl OutputEstimate {
    pub fn new() -> OutputEstimate {
        OutputEstimate(AtomicU64::new(pack(INITIAL_MEAN << FRAC, 0)))
    }

    /// Tokens to reserve, at least 1.
    #[inline]
    pub fn get(&self) -> u64 {
        let (mean, dev) = unpack(self.0.load(Relaxed));
        ((mean + 2 * dev + (1 << FRAC) - 1) >> FRAC).max(1)
    }

    /// Feed the output tokens one response really used. Zero is skipped: a response that
    /// produced nothing (a stream cut before its first token) says nothing about how much a
    /// real answer produces, and would only drag the estimate down.
    pub fn observe(&self, output_tokens: u64) {
        if output_tokens == 0 {
            return;
        }
        let sample = (output_tokens.min(MAX_SAMPLE) << FRAC) as i64;
        // Never fails: the closure always returns Some.
        let _ = self.0.fetch_update(Relaxed, Relaxed, |packed| {
            let (mean, dev) = unpack(packed);
            let (mean, dev) = (mean as i64, dev as i64);
            let error = sample - mean;
            let mean = mean + error / 8;
            let dev = dev + (error.abs() - dev) / 4;
            Some(pack(mean.max(0) as u64, dev.max(0) as u64))
        });
    }
}

#[inline]
fn pack(mean: u64, dev: u64) -> u64 {
    (mean << 32) | (dev & u64::from(u32::MAX))
}

#[inline]
fn unpack(packed: u64) -> (u64, u64) {
    (packed >> 32, packed & u64::from(u32::MAX))
}
