//! A relay's share of its keys (`shared_state` with the store unreachable), and reservations
//! the store admitted.

use super::*;
use crate::pool::RateLimitHeaders;

#[test]
fn a_share_scales_every_limit_and_keeps_the_fraction_in_use() {
    let p = pool(vec![spec("a", 60, 0, 0)], Strategy::LeastLoaded);
    let key = &p.keys()[0];
    for _ in 0..30 {
        p.acquire(&demand(0, 0), &[]).unwrap().settle(usage(0, 0));
    }
    assert_eq!(key.snapshot().requests.remaining, 30);
    p.set_share(crate::pool::FULL_SHARE / 2);
    let s = key.snapshot();
    assert_eq!(s.requests.limit, 30, "half of the limit");
    assert_eq!(
        s.requests.remaining, 15,
        "half of the bucket is still in use"
    );
    assert_eq!(
        key.whole_limits()[0],
        60,
        "the store is still told the whole limit"
    );
    for _ in 0..15 {
        p.acquire(&demand(0, 0), &[]).unwrap().settle(usage(0, 0));
    }
    assert!(p.acquire(&demand(0, 0), &[]).is_err(), "the share is spent");
    p.set_share(crate::pool::FULL_SHARE);
    assert_eq!(
        key.snapshot().requests.remaining,
        0,
        "spent is spent at any scale"
    );
}

#[test]
fn a_learned_zero_holds_but_a_small_balance_scaled_down_does_not() {
    let p = pool(vec![spec("a", 60, 0, 0)], Strategy::LeastLoaded);
    p.set_share(crate::pool::FULL_SHARE / 3);
    let key = &p.keys()[0];
    let mut h = RateLimitHeaders::default();
    h.requests.limit = Some(60);
    h.requests.remaining = Some(2);
    h.requests.reset = Some(secs(30.0));
    key.learn(&h);
    assert!(key.snapshot().cooling_for.is_none());
    assert_eq!(
        key.benched_for_at(Instant::now()),
        0,
        "2 left is not 'nothing left'"
    );
}

#[test]
fn a_reservation_the_store_admitted_is_taken_even_past_the_local_view() {
    let p = pool(vec![spec("a", 1, 0, 0)], Strategy::LeastLoaded);
    let first = p.acquire(&demand(0, 0), &[]).unwrap();
    assert!(p.acquire(&demand(0, 0), &[]).is_err());
    let second = p.reserve_admitted(0, &demand(0, 0));
    assert_eq!(p.keys()[0].snapshot().in_flight, 2);
    drop(first);
    drop(second);
    assert_eq!(p.keys()[0].snapshot().in_flight, 0);
}
