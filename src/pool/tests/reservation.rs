//! A reservation's life (settle, release, drop), the output estimate, verdicts on a key
//! (cooldown, disable) and state carried across `rebuild`.

use std::time::{Duration, Instant};

use super::super::RateLimitHeaders;
use super::*;

fn remaining(pool: &KeyPool, index: usize, now: Instant) -> (u64, u64, u64) {
    let s = pool.keys()[index].snapshot_at(now);
    (
        s.requests.remaining,
        s.input_tokens.remaining,
        s.output_tokens.remaining,
    )
}

#[test]
fn release_gives_everything_back_the_request_included() {
    let t0 = Instant::now();
    let pool = pool(vec![spec("a", 60, 60_000, 6_000)], Strategy::LeastLoaded);
    let r = pool.acquire_at(&demand(5_000, 0), &[], t0).unwrap();
    assert_eq!(r.reserved(), usage(5_000, 1_024));
    assert_eq!(remaining(&pool, 0, t0), (59, 55_000, 4_976));
    assert_eq!(pool.keys()[0].snapshot_at(t0).in_flight, 1);
    r.release();
    assert_eq!(remaining(&pool, 0, t0), (60, 60_000, 6_000));
    assert_eq!(pool.keys()[0].snapshot_at(t0).in_flight, 0);
}

#[test]
fn settle_refunds_the_unused_part_and_keeps_the_request() {
    let t0 = Instant::now();
    let pool = pool(vec![spec("a", 60, 60_000, 6_000)], Strategy::LeastLoaded);
    let r = pool.acquire_at(&demand(5_000, 0), &[], t0).unwrap();
    r.settle_at(usage(4_000, 300), t0);
    assert_eq!(remaining(&pool, 0, t0), (59, 56_000, 5_700));
    assert_eq!(pool.keys()[0].snapshot_at(t0).in_flight, 0);
}

#[test]
fn settle_charges_usage_beyond_the_reservation() {
    let t0 = Instant::now();
    let pool = pool(vec![spec("a", 60, 60_000, 6_000)], Strategy::LeastLoaded);
    let r = pool.acquire_at(&demand(5_000, 0), &[], t0).unwrap();
    r.settle_at(usage(9_000, 2_000), t0);
    assert_eq!(remaining(&pool, 0, t0), (59, 51_000, 4_000));
}

#[test]
fn dropping_an_unsettled_reservation_releases_it() {
    let t0 = Instant::now();
    let pool = pool(vec![spec("a", 60, 60_000, 6_000)], Strategy::LeastLoaded);
    {
        let _r = pool.acquire_at(&demand(5_000, 0), &[], t0).unwrap();
        assert_eq!(remaining(&pool, 0, t0), (59, 55_000, 4_976));
    }
    assert_eq!(remaining(&pool, 0, t0), (60, 60_000, 6_000));
    // And a panic while holding one does not leak it either.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _r = pool.acquire_at(&demand(5_000, 0), &[], t0).unwrap();
        panic!("request handler failed");
    }));
    assert!(result.is_err());
    assert_eq!(remaining(&pool, 0, t0), (60, 60_000, 6_000));
    assert_eq!(pool.keys()[0].snapshot_at(t0).in_flight, 0);
}

#[test]
fn the_output_estimate_stays_admissible_under_claude_codes_max_tokens() {
    let t0 = Instant::now();
    // Tier 1: 50 RPM, 30k ITPM, 8k OTPM; Claude Code asks for max_tokens 64000 every time.
    let pool = pool(
        vec![spec("tier1", 50, 30_000, 8_000)],
        Strategy::LeastLoaded,
    );
    let d = demand(2_000, 64_000);
    let held: Vec<_> = (0..7)
        .map(|_| pool.acquire_at(&d, &[], t0).unwrap())
        .collect();
    assert!(held.iter().all(|r| r.reserved().output_tokens == 1_024));
    drop(held);
    // A small max_tokens caps the reservation.
    let r = pool.acquire_at(&demand(2_000, 100), &[], t0).unwrap();
    assert_eq!(r.reserved().output_tokens, 100);
}

#[test]
fn the_output_estimate_adapts_to_real_usage() {
    let t0 = Instant::now();
    let pool = pool(vec![spec("a", 0, 0, 8_000)], Strategy::LeastLoaded);
    let d = demand(2_000, 64_000);
    let key = pool.keys()[0].clone();
    // One response every 1000 s, so the output bucket is always full again.
    let mut now = t0;
    let mut respond = |output: u64, times: usize| {
        for _ in 0..times {
            now += Duration::from_secs(1_000);
            let r = pool.acquire_at(&d, &[], now).unwrap();
            r.settle_at(usage(2_000, output), now);
        }
        key.snapshot_at(now).output_estimate
    };
    let estimate = respond(200, 60);
    assert!((200..=260).contains(&estimate), "{estimate}");
    // Bigger answers raise it, with a margin above the mean, but never past a full bucket.
    let estimate = respond(6_000, 60);
    assert!((6_000..=8_000).contains(&estimate), "{estimate}");
    assert_eq!(respond(50_000, 60), 8_000);
    let later = after(t0, 1_000_000.0);
    assert_eq!(
        pool.acquire_at(&d, &[], later)
            .unwrap()
            .reserved()
            .output_tokens,
        8_000,
        "a full bucket still admits it"
    );
}

#[test]
fn a_response_without_output_leaves_the_estimate_alone() {
    let t0 = Instant::now();
    let pool = pool(vec![spec("a", 0, 0, 0)], Strategy::LeastLoaded);
    for _ in 0..50 {
        pool.acquire_at(&demand(10, 0), &[], t0)
            .unwrap()
            .settle_at(usage(10, 0), t0);
    }
    assert_eq!(pool.keys()[0].snapshot_at(t0).output_estimate, 1_024);
}

#[test]
fn varied_outputs_reserve_above_their_mean() {
    let t0 = Instant::now();
    let pool = pool(vec![spec("a", 0, 0, 0)], Strategy::LeastLoaded);
    for i in 0..200 {
        let output = if i % 2 == 0 { 200 } else { 1_800 };
        pool.acquire_at(&demand(10, 0), &[], t0)
            .unwrap()
            .settle_at(usage(10, output), t0);
    }
    let estimate = pool.keys()[0].snapshot_at(t0).output_estimate;
    assert!(estimate > 1_500, "{estimate}");
}

#[test]
fn cool_down_with_retry_after_skips_the_key_for_that_long() {
    let t0 = Instant::now();
    let pool = pool(vec![spec("a", 0, 0, 0)], Strategy::LeastLoaded);
    let key = &pool.keys()[0];
    key.cool_down_at(Some(Duration::from_secs(5)), t0);
    assert_eq!(
        key.snapshot_at(t0).cooling_for,
        Some(Duration::from_secs(5))
    );
    let err = pool.acquire_at(&demand(10, 0), &[], t0).unwrap_err();
    assert_eq!(err.retry_after, Duration::from_secs(5));
    assert!(pool
        .acquire_at(&demand(10, 0), &[], after(t0, 4.9))
        .is_err());
    assert!(pool.acquire_at(&demand(10, 0), &[], after(t0, 5.0)).is_ok());
    assert_eq!(key.snapshot_at(after(t0, 5.0)).cooling_for, None);
    // A shorter cooldown never shortens a longer one; retry-after 0 still rests the key 1 s.
    key.cool_down_at(Some(Duration::from_secs(30)), t0);
    key.cool_down_at(Some(Duration::from_secs(2)), t0);
    assert_eq!(
        key.snapshot_at(t0).cooling_for,
        Some(Duration::from_secs(30))
    );
    let fresh = super::pool(vec![spec("b", 0, 0, 0)], Strategy::LeastLoaded);
    fresh.keys()[0].cool_down_at(Some(Duration::ZERO), t0);
    assert_eq!(
        fresh.keys()[0].snapshot_at(t0).cooling_for,
        Some(Duration::from_secs(1))
    );
}

#[test]
fn cool_down_without_timing_backs_off_exponentially_until_a_success() {
    let t0 = Instant::now();
    let pool = pool(vec![spec("a", 0, 0, 0)], Strategy::LeastLoaded);
    let key = pool.keys()[0].clone();
    let mut now = t0;
    let mut seen = Vec::new();
    for _ in 0..9 {
        key.cool_down_at(None, now);
        let cooling = key.snapshot_at(now).cooling_for.unwrap();
        seen.push(cooling.as_secs());
        now += cooling;
    }
    assert_eq!(seen, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    pool.acquire_at(&demand(10, 0), &[], now)
        .unwrap()
        .settle_at(usage(10, 10), now);
    key.cool_down_at(None, now);
    assert_eq!(
        key.snapshot_at(now).cooling_for,
        Some(Duration::from_secs(1))
    );
}

#[test]
fn a_disabled_key_is_never_selected_again_until_rebuild() {
    let t0 = Instant::now();
    let specs = vec![spec("a", 0, 0, 0), spec("b", 0, 0, 0)];
    let pool = pool(specs.clone(), Strategy::RoundRobin);
    pool.keys()[0].disable();
    assert!(pool.keys()[0].is_disabled());
    assert!(pool.keys()[0].snapshot_at(t0).disabled);
    for at in [0.0, 60.0, 3_600.0] {
        for _ in 0..10 {
            assert_eq!(
                pool.acquire_at(&demand(1, 0), &[], after(t0, at))
                    .unwrap()
                    .index(),
                1
            );
        }
    }
    let rebuilt = pool.rebuild(specs, Strategy::RoundRobin);
    assert!(!rebuilt.keys()[0].is_disabled());
    let counts: Vec<usize> = (0..10)
        .map(|_| rebuilt.acquire_at(&demand(1, 0), &[], t0).unwrap().index())
        .collect();
    assert!(counts.contains(&0));
}

#[test]
fn rebuild_carries_state_of_unchanged_keys_and_takes_new_configuration() {
    let t0 = Instant::now();
    let old = pool(
        vec![spec("a", 60, 0, 0), spec("gone", 60, 0, 0)],
        Strategy::LeastLoaded,
    );
    let a = old.keys()[0].clone();
    let held = old.acquire_at(&demand(100, 64_000), &[1], t0).unwrap();
    for _ in 0..9 {
        old.acquire_at(&demand(100, 64_000), &[1], t0)
            .unwrap()
            .settle_at(usage(100, 300), t0);
    }
    a.learn_at(
        &RateLimitHeaders {
            input_tokens: super::super::LimitHeaders {
                limit: Some(30_000),
                remaining: Some(25_000),
                reset: None,
            },
            ..Default::default()
        },
        t0,
    );
    a.cool_down_at(Some(Duration::from_secs(20)), t0);
    let before = a.snapshot_at(t0);

    // Reload: "a" moves to the end, gets a new id, priority and configured RPM; "gone" is gone;
    // "new" is new.
    let mut renamed = with_priority(spec("a", 120, 0, 0), 2);
    renamed.id = "a-renamed".to_string();
    let new = old.rebuild(vec![spec("new", 0, 0, 0), renamed], Strategy::RoundRobin);
    assert_eq!(new.strategy(), Strategy::RoundRobin);
    assert_eq!(new.len(), 2);
    let carried = new.keys()[1].snapshot_at(t0);
    assert_eq!(carried.id, "a-renamed");
    assert_eq!(carried.priority, 2);
    assert_eq!(
        carried.requests.limit, 120,
        "configured limit from the new spec"
    );
    assert_eq!(carried.requests.remaining, 2 * before.requests.remaining);
    assert_eq!(
        carried.input_tokens, before.input_tokens,
        "learned state kept"
    );
    assert_eq!(carried.cooling_for, before.cooling_for);
    assert_eq!(carried.output_estimate, before.output_estimate);
    assert_eq!(carried.in_flight, 1);
    let fresh = new.keys()[0].snapshot_at(t0);
    assert_eq!(fresh.in_flight, 0);
    assert_eq!(fresh.output_estimate, 1_024);

    // A request admitted by the old pool settles into the budget the new pool uses.
    held.settle_at(usage(100, 300), t0);
    assert_eq!(new.keys()[1].snapshot_at(t0).in_flight, 0);
    assert_eq!(
        new.keys()[1].snapshot_at(t0).input_tokens.remaining,
        25_000,
        "synced input is not corrected twice"
    );
}

#[test]
fn the_plain_clock_variants_work() {
    let pool = pool(vec![spec("a", 60, 60_000, 6_000)], Strategy::LeastLoaded);
    assert_eq!(pool.available(), 1);
    let r = pool.acquire(&demand(100, 0), &[]).unwrap();
    assert_eq!(r.key().id(), "a");
    assert!(format!("{r:?}").contains("\"a\""));
    r.settle(usage(100, 100));
    let s = pool.keys()[0].snapshot();
    assert_eq!(s.requests.remaining, 59);
    let key = pool.keys()[0].clone();
    key.learn(&RateLimitHeaders::default());
    key.cool_down(Some(Duration::from_secs(1)));
    assert!(key.snapshot().cooling_for.is_some());
    assert_eq!(pool.available(), 0);
    assert!(pool.acquire(&demand(100, 0), &[]).is_err());
}
