//! What a broken or hostile upstream says is bounded: no answer locks a key away for longer
//! than its cooldown cap or a window, and one 403 does not condemn a key.

use std::time::{Duration, Instant};

use super::super::{LimitHeaders, RateLimitHeaders};
use super::*;

const CENTURIES: Duration = Duration::from_secs(584 * 365 * 86_400);

fn capped(cap: Duration) -> KeyPool {
    let mut s = spec("a", 50, 30_000, 8_000);
    s.max_cooldown = cap;
    pool(vec![s], Strategy::LeastLoaded)
}

#[test]
fn a_retry_after_of_centuries_is_cut_to_the_cap() {
    let t0 = Instant::now();
    let pool = capped(secs(120.0));
    let key = &pool.keys()[0];
    key.cool_down_at(Some(CENTURIES), t0);
    assert_eq!(key.snapshot_at(t0).cooling_for, Some(secs(120.0)));
    assert!(pool
        .acquire_at(&demand(10, 10), &[], after(t0, 119.0))
        .is_err());
    assert!(pool
        .acquire_at(&demand(10, 10), &[], after(t0, 120.0))
        .is_ok());
}

#[test]
fn a_reset_in_the_far_future_holds_at_most_one_window() {
    let t0 = Instant::now();
    let pool = capped(secs(600.0));
    let key = &pool.keys()[0];
    let empty_for_ever = LimitHeaders {
        limit: Some(50),
        remaining: Some(0),
        reset: Some(CENTURIES),
    };
    key.learn_at(
        &RateLimitHeaders {
            requests: empty_for_ever,
            ..Default::default()
        },
        t0,
    );
    let refused = pool.acquire_at(&demand(10, 10), &[], t0).unwrap_err();
    assert_eq!(refused.retry_after, secs(60.0));
    assert!(pool
        .acquire_at(&demand(10, 10), &[], after(t0, 60.0))
        .is_ok());
    // And a 429 without retry-after that waits for that reset waits no longer either.
    key.cool_down_at(None, after(t0, 60.0));
    assert!(key.snapshot_at(after(t0, 60.0)).cooling_for <= Some(secs(60.0)));
}

#[test]
fn the_cap_also_bounds_a_reset_within_the_window() {
    let t0 = Instant::now();
    let pool = capped(secs(2.0));
    pool.keys()[0].learn_at(
        &RateLimitHeaders {
            output_tokens: LimitHeaders {
                limit: Some(8_000),
                remaining: Some(0),
                reset: Some(secs(50.0)),
            },
            ..Default::default()
        },
        t0,
    );
    assert!(pool
        .acquire_at(&demand(10, 10), &[], after(t0, 1.9))
        .is_err());
    assert!(pool
        .acquire_at(&demand(10, 10), &[], after(t0, 2.0))
        .is_ok());
}

#[test]
fn a_settlement_counts_at_most_one_bucket_beyond_its_reservation() {
    let t0 = Instant::now();
    let pool = capped(secs(600.0));
    let r = pool.acquire_at(&demand(1_000, 1_000), &[], t0).unwrap();
    r.settle_at(usage(u64::MAX, u64::MAX), t0);
    // Both token buckets are at most one window past empty: a fresh demand fits within two.
    let d = demand(1_000, 1_000);
    let refused = pool.acquire_at(&d, &[], t0).unwrap_err();
    assert!(
        refused.retry_after <= secs(120.0),
        "{:?}",
        refused.retry_after
    );
    assert!(pool.acquire_at(&d, &[], after(t0, 120.0)).is_ok());
}

#[test]
fn each_403_in_a_row_benches_the_key_twice_as_long_and_a_success_clears_them() {
    let t0 = Instant::now();
    let pool = capped(secs(5.0));
    let key = &pool.keys()[0];
    for (n, expected) in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (30, 5.0)] {
        while key.forbidden_strikes() < n {
            key.forbid_at(t0);
        }
        // Each one from t0: the cooldown is the latest, at most the cap.
        assert!(key.snapshot_at(t0).cooling_for <= Some(secs(expected)));
    }
    assert!(!key.is_disabled());
    let r = pool.acquire_at(&demand(1, 1), &[], after(t0, 5.0)).unwrap();
    r.settle_at(usage(1, 1), after(t0, 5.0));
    assert_eq!(key.forbidden_strikes(), 0);
    key.forbid_at(after(t0, 5.0));
    assert_eq!(key.snapshot_at(after(t0, 5.0)).cooling_for, Some(secs(1.0)));
}

#[test]
fn a_pool_of_disabled_keys_says_so_instead_of_a_retry_after() {
    let t0 = Instant::now();
    let pool = pool(
        vec![spec("a", 0, 0, 0), spec("b", 0, 0, 0)],
        Strategy::LeastLoaded,
    );
    pool.keys()[0].disable();
    let cooling = &pool.keys()[1];
    cooling.cool_down_at(Some(secs(3.0)), t0);
    let refused = pool.acquire_at(&demand(1, 1), &[], t0).unwrap_err();
    assert!(!refused.all_disabled, "one key only cools down");
    assert_eq!(refused.retry_after, secs(3.0));
    cooling.disable();
    let refused = pool.acquire_at(&demand(1, 1), &[], t0).unwrap_err();
    assert!(refused.all_disabled);
}

#[test]
fn a_key_at_its_concurrency_cap_is_skipped_until_a_request_ends() {
    let t0 = Instant::now();
    let mut capped = spec("capped", 0, 0, 0);
    capped.max_concurrent = 1;
    capped.priority = 2;
    let pool = pool(vec![capped, spec("other", 0, 0, 0)], Strategy::LeastLoaded);
    let first = pool.acquire_at(&demand(1, 1), &[], t0).unwrap();
    assert_eq!(first.key().id(), "capped");
    let second = pool.acquire_at(&demand(1, 1), &[], t0).unwrap();
    assert_eq!(
        second.key().id(),
        "other",
        "the capped key was used twice at once"
    );
    first.release();
    let third = pool.acquire_at(&demand(1, 1), &[], t0).unwrap();
    assert_eq!(third.key().id(), "capped");
}
