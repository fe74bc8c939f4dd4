//! GCRA bucket arithmetic: capacity, continuous refill, refunds, charges, limit changes.

use super::super::bucket::Bucket;
use super::super::clock::WINDOW_NS;
use super::super::headers::LimitHeaders;

const S: u64 = 1_000_000_000;
/// An arbitrary pool-clock instant well away from 0.
const T: u64 = 10_000 * S;

#[test]
fn a_fresh_bucket_is_full_and_holds_exactly_its_limit() {
    let bucket = Bucket::new(60, true);
    assert_eq!(bucket.remaining(T), 60);
    for _ in 0..60 {
        assert!(bucket.reserve(1, T).is_some());
    }
    assert_eq!(bucket.remaining(T), 0);
    assert!(bucket.reserve(1, T).is_none());
    assert!(bucket.admits(1, T).is_none());
}

#[test]
fn refill_is_continuous_at_limit_per_minute_and_capped_at_capacity() {
    let bucket = Bucket::new(60, true);
    assert_eq!(bucket.reserve(60, T).unwrap().tokens, 60);
    assert_eq!(bucket.remaining(T + S / 2), 0);
    assert_eq!(bucket.remaining(T + S), 1);
    assert_eq!(bucket.remaining(T + 30 * S), 30);
    assert_eq!(bucket.remaining(T + 60 * S), 60);
    assert_eq!(bucket.remaining(T + 600 * S), 60, "idle time does not bank");
    // After a long idle period a burst is still bounded by the capacity.
    let later = T + 600 * S;
    assert!(bucket.reserve(60, later).is_some());
    assert!(bucket.reserve(1, later).is_none());
}

#[test]
fn wait_is_the_time_until_the_demand_fits() {
    let bucket = Bucket::new(60, true);
    bucket.reserve(60, T).unwrap();
    assert_eq!(bucket.wait(1, T), S);
    assert_eq!(bucket.wait(30, T), 30 * S);
    assert_eq!(bucket.wait(30, T + 10 * S), 20 * S);
    assert_eq!(bucket.wait(1, T + 61 * S), 0);
    // More than a bucket holds waits for a full bucket, never forever.
    assert_eq!(bucket.wait(1_000, T), WINDOW_NS);
}

#[test]
fn a_demand_above_capacity_is_admitted_on_a_full_bucket_and_charged_the_capacity() {
    let bucket = Bucket::new(1_000, true);
    let charge = bucket.reserve(5_000, T).unwrap();
    assert_eq!(charge.tokens, 1_000);
    assert_eq!(bucket.remaining(T), 0);
}

#[test]
fn an_unknown_limit_never_constrains_and_reports_zero() {
    let bucket = Bucket::new(0, true);
    for _ in 0..10_000 {
        assert_eq!(bucket.reserve(1_000_000, T).unwrap().tokens, 0);
    }
    assert_eq!(bucket.remaining(T), 0);
    assert_eq!(bucket.wait(u64::MAX, T), 0);
}

#[test]
fn release_refunds_and_settle_corrects_to_actual_usage() {
    let bucket = Bucket::new(6_000, false);
    let a = bucket.reserve(1_000, T).unwrap();
    let b = bucket.reserve(1_000, T).unwrap();
    assert_eq!(bucket.remaining(T), 4_000);
    bucket.release(a);
    assert_eq!(bucket.remaining(T), 5_000);
    bucket.settle(b, 2_500, T);
    assert_eq!(bucket.remaining(T), 3_500);
    let c = bucket.reserve(1_000, T).unwrap();
    bucket.settle(c, 200, T);
    assert_eq!(bucket.remaining(T), 3_300);
}

#[test]
fn a_charge_after_the_bucket_refilled_counts_from_now() {
    let bucket = Bucket::new(60, true);
    let charge = bucket.reserve(1, T).unwrap();
    // Long after, the request turns out to have cost more (not typical for requests, but the
    // arithmetic is the same for tokens): the extra is charged against a full bucket.
    bucket.settle(charge, 11, T + 120 * S);
    assert_eq!(bucket.remaining(T + 120 * S), 50);
}

#[test]
fn usage_beyond_capacity_is_debt_that_takes_longer_to_clear() {
    let bucket = Bucket::new(60, false);
    let charge = bucket.reserve(60, T).unwrap();
    bucket.settle(charge, 120, T);
    assert_eq!(bucket.remaining(T + 60 * S), 0);
    assert_eq!(bucket.remaining(T + 90 * S), 30);
    assert_eq!(bucket.wait(1, T), 61 * S);
}

#[test]
fn a_learned_limit_keeps_the_fraction_in_use() {
    let bucket = Bucket::new(0, true);
    let figures = LimitHeaders {
        limit: Some(60),
        ..Default::default()
    };
    bucket.learn(&figures, 0, T, false);
    bucket.reserve(30, T).unwrap();
    assert_eq!(bucket.remaining(T), 30);
    bucket.learn(
        &LimitHeaders {
            limit: Some(120),
            ..Default::default()
        },
        0,
        T,
        false,
    );
    assert_eq!(bucket.limit(), 120);
    assert_eq!(bucket.remaining(T), 60);
}

/// While a relay keeps to its share of a key the others use through the shared store, the
/// upstream's `remaining` (what is left of the whole key) may lower its share, never refill it.
#[test]
fn a_lowering_figure_never_raises_the_level() {
    let bucket = Bucket::new(60, true);
    bucket.reserve(50, T).unwrap();
    let remaining = |r: u64| LimitHeaders {
        limit: Some(60),
        remaining: Some(r),
        ..Default::default()
    };
    bucket.learn(&remaining(40), 0, T, true);
    assert_eq!(
        bucket.remaining(T),
        10,
        "a fuller key does not refill the share"
    );
    bucket.learn(&remaining(4), 0, T, true);
    assert_eq!(bucket.remaining(T), 4, "an emptier key lowers it");
    bucket.learn(&remaining(40), 0, T, false);
    assert_eq!(
        bucket.remaining(T),
        40,
        "without a share the upstream's figure stands"
    );
}
