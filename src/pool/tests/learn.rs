//! What the upstream says about a key overrides the local view.

use std::time::{Duration, Instant};

use super::super::{LimitHeaders, RateLimitHeaders};
use super::*;

fn figures(limit: Option<u64>, remaining: Option<u64>, reset: Option<f64>) -> LimitHeaders {
    LimitHeaders {
        limit,
        remaining,
        reset: reset.map(secs),
    }
}

fn requests(limit: u64, remaining: u64, reset: f64) -> RateLimitHeaders {
    RateLimitHeaders {
        requests: figures(Some(limit), Some(remaining), Some(reset)),
        ..Default::default()
    }
}

#[test]
fn learned_limits_fill_in_unknown_ones() {
    let t0 = Instant::now();
    let pool = pool(vec![spec("a", 0, 0, 0)], Strategy::LeastLoaded);
    let key = &pool.keys()[0];
    assert_eq!(key.snapshot_at(t0).requests.limit, 0);
    key.learn_at(
        &RateLimitHeaders {
            requests: figures(Some(50), None, None),
            input_tokens: figures(Some(30_000), None, None),
            output_tokens: figures(Some(8_000), None, None),
            ..Default::default()
        },
        t0,
    );
    let snapshot = key.snapshot_at(t0);
    assert_eq!(snapshot.requests.limit, 50);
    assert_eq!(snapshot.input_tokens.limit, 30_000);
    assert_eq!(snapshot.output_tokens.limit, 8_000);
    assert_eq!(snapshot.requests.remaining, 50);
}

#[test]
fn upstream_remaining_overwrites_the_local_level() {
    let t0 = Instant::now();
    let pool = pool(vec![spec("a", 50, 30_000, 8_000)], Strategy::LeastLoaded);
    let key = &pool.keys()[0];
    key.learn_at(
        &RateLimitHeaders {
            requests: figures(Some(50), Some(20), Some(36.0)),
            input_tokens: figures(Some(30_000), Some(12_000), Some(40.0)),
            ..Default::default()
        },
        t0,
    );
    let snapshot = key.snapshot_at(t0);
    assert_eq!(snapshot.requests.remaining, 20);
    assert_eq!(snapshot.input_tokens.remaining, 12_000);
    assert_eq!(snapshot.output_tokens.remaining, 8_000);
    // And it refills from there at limit per minute.
    assert_eq!(key.snapshot_at(after(t0, 12.0)).requests.remaining, 30);
    // A later, fuller figure raises the level again: the upstream is authoritative both ways.
    key.learn_at(&requests(50, 45, 6.0), after(t0, 12.0));
    assert_eq!(key.snapshot_at(after(t0, 12.0)).requests.remaining, 45);
}

#[test]
fn remaining_zero_skips_the_key_until_the_reset_then_it_is_full() {
    let t0 = Instant::now();
    let pool = pool(
        vec![with_priority(spec("a", 50, 0, 0), 2), spec("b", 50, 0, 0)],
        Strategy::LeastLoaded,
    );
    pool.keys()[0].learn_at(&requests(50, 0, 20.0), t0);
    let d = demand(100, 0);
    assert_eq!(pool.available_at(t0), 1);
    for at in [0.0, 5.0, 19.9] {
        let r = pool.acquire_at(&d, &[], after(t0, at)).unwrap();
        assert_eq!(r.index(), 1, "key a must be skipped at +{at}s");
    }
    let r = pool.acquire_at(&d, &[], after(t0, 20.0)).unwrap();
    assert_eq!(r.index(), 0);
    assert_eq!(
        pool.keys()[0]
            .snapshot_at(after(t0, 20.0))
            .requests
            .remaining,
        49
    );
}

#[test]
fn remaining_zero_on_any_dimension_blocks_every_demand() {
    let t0 = Instant::now();
    let pool = pool(vec![spec("a", 50, 30_000, 8_000)], Strategy::LeastLoaded);
    pool.keys()[0].learn_at(
        &RateLimitHeaders {
            output_tokens: figures(Some(8_000), Some(0), Some(30.0)),
            ..Default::default()
        },
        t0,
    );
    let err = pool.acquire_at(&demand(10, 1), &[], t0).unwrap_err();
    assert_eq!(err.retry_after, secs(30.0));
    assert_eq!(pool.available_at(t0), 0);
    assert!(pool
        .acquire_at(&demand(10, 1), &[], after(t0, 30.0))
        .is_ok());
}

#[test]
fn a_configured_limit_lower_than_the_learned_one_wins() {
    let t0 = Instant::now();
    let pool = pool(vec![spec("a", 10, 0, 0)], Strategy::LeastLoaded);
    let key = &pool.keys()[0];
    key.learn_at(&requests(50, 48, 2.4), t0);
    let snapshot = key.snapshot_at(t0);
    assert_eq!(snapshot.requests.limit, 10);
    assert_eq!(snapshot.requests.remaining, 10);
    // The upstream may lower the operator's budget (someone else uses the key) …
    key.learn_at(&requests(50, 3, 56.0), t0);
    assert_eq!(key.snapshot_at(t0).requests.remaining, 3);
    // … but never raise it above what the local bucket allows.
    key.learn_at(&requests(50, 49, 1.0), t0);
    assert_eq!(key.snapshot_at(t0).requests.remaining, 3);
}

#[test]
fn a_learned_limit_lower_than_the_configured_one_wins() {
    let t0 = Instant::now();
    let pool = pool(vec![spec("a", 100, 0, 0)], Strategy::LeastLoaded);
    let key = &pool.keys()[0];
    key.learn_at(&requests(50, 50, 0.0), t0);
    assert_eq!(key.snapshot_at(t0).requests.limit, 50);
}

#[test]
fn in_flight_output_is_subtracted_from_the_upstream_figure() {
    let t0 = Instant::now();
    let pool = pool(vec![spec("a", 0, 0, 8_000)], Strategy::LeastLoaded);
    let key = pool.keys()[0].clone();
    let r = pool.acquire_at(&demand(100, 64_000), &[], t0).unwrap();
    assert_eq!(r.reserved().output_tokens, 1_024);
    // The upstream has not produced that output yet, so its figure does not include it.
    key.learn_at(
        &RateLimitHeaders {
            output_tokens: figures(Some(8_000), Some(7_000), None),
            ..Default::default()
        },
        t0,
    );
    assert_eq!(key.snapshot_at(t0).output_tokens.remaining, 7_000 - 1_024);
    // When it ends, the upstream has counted the real output and so have we.
    r.settle_at(usage(100, 600), t0);
    assert_eq!(key.snapshot_at(t0).output_tokens.remaining, 7_000 - 600);
}

#[test]
fn in_flight_requests_are_not_refunded_twice_after_a_sync() {
    let t0 = Instant::now();
    let pool = pool(vec![spec("a", 60, 60_000, 0)], Strategy::LeastLoaded);
    let key = pool.keys()[0].clone();
    let r = pool.acquire_at(&demand(5_000, 0), &[], t0).unwrap();
    // The upstream counted the request and its input on arrival.
    key.learn_at(
        &RateLimitHeaders {
            requests: figures(Some(60), Some(40), None),
            input_tokens: figures(Some(60_000), Some(30_000), None),
            ..Default::default()
        },
        t0,
    );
    r.release();
    let snapshot = key.snapshot_at(t0);
    assert_eq!(snapshot.requests.remaining, 40);
    assert_eq!(snapshot.input_tokens.remaining, 30_000);
    assert_eq!(snapshot.in_flight, 0);
    // A reservation made after the sync is corrected as usual.
    let r = pool.acquire_at(&demand(5_000, 0), &[], t0).unwrap();
    r.settle_at(usage(3_000, 10), t0);
    let snapshot = key.snapshot_at(t0);
    assert_eq!(snapshot.requests.remaining, 39);
    assert_eq!(snapshot.input_tokens.remaining, 27_000);
}

#[test]
fn legacy_combined_tokens_stand_in_for_missing_input_and_output() {
    let t0 = Instant::now();
    let pool = pool(
        vec![spec("a", 0, 0, 0), spec("b", 0, 0, 0)],
        Strategy::LeastLoaded,
    );
    let legacy = figures(Some(40_000), Some(30_000), Some(15.0));
    pool.keys()[0].learn_at(
        &RateLimitHeaders {
            tokens: legacy,
            ..Default::default()
        },
        t0,
    );
    let snapshot = pool.keys()[0].snapshot_at(t0);
    assert_eq!(snapshot.input_tokens.limit, 40_000);
    assert_eq!(snapshot.input_tokens.remaining, 30_000);
    assert_eq!(snapshot.output_tokens.limit, 40_000);
    assert_eq!(snapshot.output_tokens.remaining, 30_000);
    // Specific figures win where present.
    pool.keys()[1].learn_at(
        &RateLimitHeaders {
            tokens: legacy,
            input_tokens: figures(Some(20_000), Some(20_000), None),
            ..Default::default()
        },
        t0,
    );
    let snapshot = pool.keys()[1].snapshot_at(t0);
    assert_eq!(snapshot.input_tokens.limit, 20_000);
    assert_eq!(snapshot.output_tokens.limit, 40_000);
}

#[test]
fn a_429_without_retry_after_waits_for_the_reset_learn_saw() {
    let t0 = Instant::now();
    let pool = pool(vec![spec("a", 0, 0, 0)], Strategy::LeastLoaded);
    let key = &pool.keys()[0];
    key.learn_at(
        &RateLimitHeaders {
            requests: figures(Some(50), Some(10), Some(12.0)),
            input_tokens: figures(Some(30_000), Some(0), Some(25.0)),
            output_tokens: figures(Some(8_000), Some(0), Some(7.0)),
            ..Default::default()
        },
        t0,
    );
    key.cool_down_at(None, t0);
    assert_eq!(key.snapshot_at(t0).cooling_for, Some(secs(25.0)));

    // Without an exhausted dimension, the earliest reset.
    let fresh = super::pool(vec![spec("b", 0, 0, 0)], Strategy::LeastLoaded);
    let key = &fresh.keys()[0];
    key.learn_at(
        &RateLimitHeaders {
            requests: figures(Some(50), Some(10), Some(12.0)),
            input_tokens: figures(Some(30_000), Some(5), Some(25.0)),
            ..Default::default()
        },
        t0,
    );
    key.cool_down_at(None, t0);
    assert_eq!(key.snapshot_at(t0).cooling_for, Some(secs(12.0)));
}

#[test]
fn a_reset_hint_that_has_passed_falls_back_to_backoff() {
    let t0 = Instant::now();
    let pool = pool(vec![spec("a", 0, 0, 0)], Strategy::LeastLoaded);
    let key = &pool.keys()[0];
    key.learn_at(&requests(50, 0, 3.0), t0);
    let later = after(t0, 10.0);
    key.cool_down_at(None, later);
    assert_eq!(
        key.snapshot_at(later).cooling_for,
        Some(Duration::from_secs(1))
    );
}
