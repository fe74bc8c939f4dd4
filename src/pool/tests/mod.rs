//! Unit tests of the key pool, one file per concern. Time is driven explicitly through the
//! `*_at` variants from a `t0` taken at the start of each test.

mod bucket;
mod concurrency;
mod headers;
mod hostile;
mod learn;
mod reservation;
mod select;
mod share;

use std::time::{Duration, Instant};

use super::{Demand, KeyPool, KeySpec, Settlement, Strategy};

fn spec(id: &str, rpm: u64, itpm: u64, otpm: u64) -> KeySpec {
    KeySpec {
        id: id.to_string(),
        fingerprint: fingerprint(id),
        rpm_limit: rpm,
        itpm_limit: itpm,
        otpm_limit: otpm,
        priority: 1,
        weight: 1.0,
        max_cooldown: super::DEFAULT_MAX_COOLDOWN,
        max_concurrent: 0,
    }
}

fn with_priority(mut spec: KeySpec, priority: u8) -> KeySpec {
    spec.priority = priority;
    spec
}

fn with_weight(mut spec: KeySpec, weight: f64) -> KeySpec {
    spec.weight = weight;
    spec
}

/// Test fingerprints derive from the id (FNV-1a), as the real ones derive from the secret.
fn fingerprint(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn pool(specs: Vec<KeySpec>, strategy: Strategy) -> KeyPool {
    KeyPool::new(specs, strategy)
}

fn demand(input_tokens: u64, max_tokens: u64) -> Demand {
    Demand {
        input_tokens,
        max_tokens,
    }
}

fn usage(input_tokens: u64, output_tokens: u64) -> Settlement {
    Settlement {
        input_tokens,
        output_tokens,
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn after(t0: Instant, s: f64) -> Instant {
    t0 + secs(s)
}
