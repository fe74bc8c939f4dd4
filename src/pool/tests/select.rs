//! Which key a request gets: tiers, strategies, skips, and the answer when none can take it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::super::KeySnapshot;
use super::*;

/// Acquire and release `n` times; how often each index was chosen.
fn tally(pool: &KeyPool, d: &Demand, n: usize, now: Instant) -> HashMap<usize, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let r = pool.acquire_at(d, &[], now).unwrap();
        *counts.entry(r.index()).or_default() += 1;
        r.release();
    }
    counts
}

#[test]
fn strategy_names_round_trip() {
    for strategy in [
        Strategy::LeastLoaded,
        Strategy::RoundRobin,
        Strategy::Random,
        Strategy::Weighted,
    ] {
        assert_eq!(Strategy::parse(strategy.as_str()), Some(strategy));
    }
    assert_eq!(Strategy::default(), Strategy::LeastLoaded);
    assert_eq!(Strategy::parse("least-loaded"), None);
    assert_eq!(Strategy::parse(""), None);
}

#[test]
fn higher_priority_tiers_are_used_first() {
    let t0 = Instant::now();
    for strategy in [
        Strategy::LeastLoaded,
        Strategy::RoundRobin,
        Strategy::Random,
        Strategy::Weighted,
    ] {
        let pool = pool(
            vec![
                with_priority(spec("low", 0, 0, 0), 0),
                with_priority(spec("mid", 0, 0, 0), 1),
                with_priority(spec("high-1", 0, 0, 0), 2),
                with_priority(spec("high-2", 0, 0, 0), 2),
            ],
            strategy,
        );
        let counts = tally(&pool, &demand(10, 0), 200, t0);
        assert_eq!(counts.keys().filter(|&&i| i < 2).count(), 0, "{strategy:?}");
        assert!(counts[&2] > 0 && counts[&3] > 0, "{strategy:?}: {counts:?}");
    }
}

#[test]
fn a_lower_tier_is_used_only_when_the_higher_one_lacks_capacity_for_this_demand() {
    let t0 = Instant::now();
    let pool = pool(
        vec![
            with_priority(spec("high", 0, 10_000, 0), 2),
            with_priority(spec("low", 0, 100_000, 0), 0),
        ],
        Strategy::LeastLoaded,
    );
    let _held = pool.acquire_at(&demand(8_000, 0), &[], t0).unwrap();
    // 2,000 input tokens left on the high key: a small request still goes there …
    let small = pool.acquire_at(&demand(1_500, 0), &[], t0).unwrap();
    assert_eq!(small.index(), 0);
    small.release();
    // … a larger one falls through to the low tier.
    let large = pool.acquire_at(&demand(5_000, 0), &[], t0).unwrap();
    assert_eq!(large.index(), 1);
}

#[test]
fn round_robin_is_even() {
    let t0 = Instant::now();
    let pool = pool(
        (0..4).map(|i| spec(&format!("k{i}"), 0, 0, 0)).collect(),
        Strategy::RoundRobin,
    );
    let counts = tally(&pool, &demand(10, 0), 400, t0);
    assert_eq!(counts.len(), 4);
    assert!(counts.values().all(|&c| c == 100), "{counts:?}");
}

#[test]
fn round_robin_only_rotates_over_keys_that_can_take_the_demand() {
    let t0 = Instant::now();
    let pool = pool(
        (0..3).map(|i| spec(&format!("k{i}"), 0, 0, 0)).collect(),
        Strategy::RoundRobin,
    );
    pool.keys()[1].cool_down_at(Some(Duration::from_secs(30)), t0);
    let counts = tally(&pool, &demand(10, 0), 300, t0);
    assert_eq!(counts.get(&1), None);
    assert_eq!(counts[&0] + counts[&2], 300);
}

#[test]
fn least_loaded_picks_the_key_with_most_remaining_capacity() {
    let t0 = Instant::now();
    let pool = pool(
        vec![
            spec("a", 100, 100_000, 0),
            spec("b", 100, 100_000, 0),
            spec("c", 100, 100_000, 0),
        ],
        Strategy::LeastLoaded,
    );
    // Use up 50 % of a's input, 20 % of b's requests, 30 % of c's input.
    let hold_a = pool.acquire_at(&demand(50_000, 0), &[1, 2], t0).unwrap();
    assert_eq!(hold_a.index(), 0);
    let mut held = vec![hold_a];
    for _ in 0..20 {
        held.push(pool.acquire_at(&demand(0, 0), &[0, 2], t0).unwrap());
    }
    held.push(pool.acquire_at(&demand(30_000, 0), &[0, 1], t0).unwrap());
    // b is at 80 % (its scarcest dimension), c at 70 %, a at 50 %.
    let r = pool.acquire_at(&demand(100, 0), &[], t0).unwrap();
    assert_eq!(r.index(), 1);
}

#[test]
fn least_loaded_normalises_across_dimensions_of_different_size() {
    let t0 = Instant::now();
    let pool = pool(
        vec![spec("small", 10, 0, 0), spec("large", 1_000, 0, 0)],
        Strategy::LeastLoaded,
    );
    // Two requests are 20 % of the small key but 0.2 % of the large one.
    let _a = pool.acquire_at(&demand(0, 0), &[1], t0).unwrap();
    let _b = pool.acquire_at(&demand(0, 0), &[1], t0).unwrap();
    let mut held = Vec::new();
    for _ in 0..100 {
        held.push(pool.acquire_at(&demand(0, 0), &[], t0).unwrap());
    }
    // The large key absorbs traffic until it is as loaded (in fraction) as the small one.
    assert!(held.iter().filter(|r| r.index() == 1).count() >= 98);
}

#[test]
fn least_loaded_ties_go_to_fewest_in_flight_then_rotate() {
    let t0 = Instant::now();
    // Unknown limits: every key is equally (un)loaded, so only in-flight counts separate them.
    let pool = pool(
        (0..4).map(|i| spec(&format!("k{i}"), 0, 0, 0)).collect(),
        Strategy::LeastLoaded,
    );
    let held: Vec<_> = (0..8)
        .map(|_| pool.acquire_at(&demand(10, 0), &[], t0).unwrap())
        .collect();
    let snapshots: Vec<KeySnapshot> = pool.keys().iter().map(|k| k.snapshot_at(t0)).collect();
    assert!(snapshots.iter().all(|s| s.in_flight == 2), "{snapshots:?}");
    drop(held);
    // Idle and tied: rotation spreads sequential requests.
    let counts = tally(&pool, &demand(10, 0), 400, t0);
    assert!(counts.values().all(|&c| c == 100), "{counts:?}");
}

#[test]
fn random_uses_every_capable_key() {
    let t0 = Instant::now();
    let pool = pool(
        (0..4).map(|i| spec(&format!("k{i}"), 0, 0, 0)).collect(),
        Strategy::Random,
    );
    pool.keys()[3].disable();
    let counts = tally(&pool, &demand(10, 0), 3_000, t0);
    assert_eq!(counts.get(&3), None);
    for i in 0..3 {
        assert!((800..1_200).contains(&counts[&i]), "{counts:?}");
    }
}

#[test]
fn weight_zero_is_never_chosen_while_a_weighted_key_can_take_the_demand() {
    let t0 = Instant::now();
    let pool = pool(
        vec![
            with_weight(spec("zero", 0, 0, 0), 0.0),
            with_weight(spec("one", 10, 0, 0), 1.0),
        ],
        Strategy::Weighted,
    );
    let mut held = Vec::new();
    for _ in 0..10 {
        let r = pool.acquire_at(&demand(10, 0), &[], t0).unwrap();
        assert_eq!(r.index(), 1);
        held.push(r);
    }
    // The weighted key is full: the zero-weight key is the fallback.
    assert_eq!(pool.acquire_at(&demand(10, 0), &[], t0).unwrap().index(), 0);

    let all_zero = super::pool(
        vec![
            with_weight(spec("z1", 0, 0, 0), 0.0),
            with_weight(spec("z2", 0, 0, 0), 0.0),
        ],
        Strategy::Weighted,
    );
    let counts = tally(&all_zero, &demand(10, 0), 1_000, t0);
    assert!(counts[&0] > 300 && counts[&1] > 300, "{counts:?}");
}

#[test]
fn tried_disabled_and_cooling_keys_are_skipped() {
    let t0 = Instant::now();
    for strategy in [
        Strategy::LeastLoaded,
        Strategy::RoundRobin,
        Strategy::Random,
        Strategy::Weighted,
    ] {
        let pool = pool(
            (0..4).map(|i| spec(&format!("k{i}"), 0, 0, 0)).collect(),
            strategy,
        );
        pool.keys()[0].disable();
        pool.keys()[1].cool_down_at(Some(Duration::from_secs(10)), t0);
        for _ in 0..50 {
            let r = pool.acquire_at(&demand(10, 0), &[2], t0).unwrap();
            assert_eq!(r.index(), 3, "{strategy:?}");
        }
        let err = pool.acquire_at(&demand(10, 0), &[2, 3], t0).unwrap_err();
        assert!(err.retry_after > Duration::ZERO);
        assert_eq!(
            pool.acquire_at(&demand(10, 0), &[2, 3], after(t0, 10.0))
                .unwrap()
                .index(),
            1
        );
    }
}

#[test]
fn exhausted_retry_after_is_the_earliest_time_any_key_could_admit_this_demand() {
    let t0 = Instant::now();
    let pool = pool(
        vec![
            spec("a", 60, 0, 0),
            spec("b", 0, 60_000, 0),
            spec("c", 0, 0, 0),
        ],
        Strategy::LeastLoaded,
    );
    pool.keys()[2].cool_down_at(Some(Duration::from_secs(45)), t0);
    let mut held = Vec::new();
    for _ in 0..60 {
        held.push(pool.acquire_at(&demand(0, 0), &[1, 2], t0).unwrap());
    }
    held.push(pool.acquire_at(&demand(50_000, 0), &[0, 2], t0).unwrap());
    // a: one request refills in 1 s. b: 30,000 tokens need 20 s. c: cooling 45 s.
    let err = pool.acquire_at(&demand(30_000, 0), &[], t0).unwrap_err();
    assert_eq!(err.retry_after, Duration::from_secs(1));
    pool.keys()[0].disable();
    let err = pool.acquire_at(&demand(30_000, 0), &[], t0).unwrap_err();
    assert_eq!(err.retry_after, Duration::from_secs(20));
    let err = pool
        .acquire_at(&demand(30_000, 0), &[], after(t0, 5.0))
        .unwrap_err();
    assert_eq!(err.retry_after, Duration::from_secs(15));
    pool.keys()[1].disable();
    let err = pool.acquire_at(&demand(30_000, 0), &[], t0).unwrap_err();
    assert_eq!(err.retry_after, Duration::from_secs(45));
    pool.keys()[2].disable();
    let err = pool.acquire_at(&demand(30_000, 0), &[], t0).unwrap_err();
    assert_eq!(err.retry_after, Duration::from_secs(60));
}

#[test]
fn exhausted_by_tried_keys_alone_is_never_zero() {
    let t0 = Instant::now();
    let pool = pool(vec![spec("a", 0, 0, 0)], Strategy::LeastLoaded);
    let err = pool.acquire_at(&demand(10, 0), &[0], t0).unwrap_err();
    assert!(err.retry_after > Duration::ZERO);
    assert!(err.retry_after <= Duration::from_secs(1));
}

#[test]
fn an_empty_pool_is_exhausted_for_a_minute() {
    let pool = pool(Vec::new(), Strategy::LeastLoaded);
    assert!(pool.is_empty());
    assert_eq!(pool.len(), 0);
    assert_eq!(pool.available(), 0);
    let err = pool.acquire(&demand(10, 0), &[]).unwrap_err();
    assert_eq!(err.retry_after, Duration::from_secs(60));
}

#[test]
fn available_counts_keys_with_a_request_of_budget() {
    let t0 = Instant::now();
    let pool = pool(
        vec![
            spec("a", 1, 0, 0),
            spec("b", 0, 0, 0),
            spec("c", 0, 0, 0),
            spec("d", 0, 0, 0),
        ],
        Strategy::LeastLoaded,
    );
    assert_eq!(pool.available_at(t0), 4);
    let _r = pool.acquire_at(&demand(0, 0), &[1, 2, 3], t0).unwrap();
    pool.keys()[1].disable();
    pool.keys()[2].cool_down_at(Some(Duration::from_secs(5)), t0);
    assert_eq!(pool.available_at(t0), 1);
    assert_eq!(pool.available_at(after(t0, 60.0)), 3);
}
