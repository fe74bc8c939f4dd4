//! Properties under randomness and concurrency.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use proptest::prelude::{
    any, prop, prop_assert, prop_assert_eq, prop_oneof, proptest, Just, ProptestConfig,
};
use proptest::test_runner::TestCaseError;

use super::super::Reservation;
use super::*;

/// Run `work` on its own thread and fail if it has not finished in `limit`: a deadlock
/// shows up as a failed test, not a hung one.
fn within<T: Send + 'static>(limit: Duration, work: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(work());
    });
    rx.recv_timeout(limit)
        .expect("pool operations did not finish in time (deadlock?)")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Each capable key is chosen in proportion to its weight; weight 0 never, unless all
    /// capable keys are 0; keys that cannot take the request (here: cooling down) never.
    #[test]
    fn weighted_selection_follows_the_weights(
        keys in prop::collection::vec((0u32..=10, prop::bool::weighted(0.3)), 2..=6),
    ) {
        let t0 = Instant::now();
        let specs = keys
            .iter()
            .enumerate()
            .map(|(i, &(w, _))| with_weight(spec(&format!("k{i}"), 0, 0, 0), f64::from(w)))
            .collect();
        let pool = pool(specs, Strategy::Weighted);
        for (key, &(_, cooling)) in pool.keys().iter().zip(&keys) {
            if cooling {
                key.cool_down_at(Some(Duration::from_secs(60)), t0);
            }
        }
        let capable: Vec<u32> = keys.iter().map(|&(w, cooling)| if cooling { 0 } else { w }).collect();
        let capable_count = keys.iter().filter(|&&(_, cooling)| !cooling).count();
        let total: u32 = capable.iter().sum();
        let expected = |i: usize| match (keys[i].1, total) {
            (true, _) => 0.0,
            (false, 0) => 1.0 / capable_count as f64,
            (false, _) => f64::from(capable[i]) / f64::from(total),
        };
        check_proportions(&pool, keys.len(), capable_count, expected, t0)?;
    }

    /// The random strategy is uniform over the keys that can take the request.
    #[test]
    fn random_selection_is_uniform_over_capable_keys(
        cooling in prop::collection::vec(prop::bool::weighted(0.5), 2..=12),
    ) {
        let t0 = Instant::now();
        let pool = pool(
            (0..cooling.len()).map(|i| spec(&format!("k{i}"), 0, 0, 0)).collect(),
            Strategy::Random,
        );
        for (key, &cooling) in pool.keys().iter().zip(&cooling) {
            if cooling {
                key.cool_down_at(Some(Duration::from_secs(60)), t0);
            }
        }
        let capable_count = cooling.iter().filter(|&&c| !c).count();
        let expected = |i: usize| if cooling[i] { 0.0 } else { 1.0 / capable_count as f64 };
        check_proportions(&pool, cooling.len(), capable_count, expected, t0)?;
    }

    /// 8 threads acquire, settle, release and drop at once on a small pool with the clock held
    /// still (no refill), so the accounting is exact:
    /// - requests and input (settled at most what was reserved): what the threads hold plus
    ///   what they settled never exceeds a key's limit;
    /// - output (may settle above the reservation): it exceeds the limit by at most the sum of
    ///   those overshoots, since every admission found it within the limit;
    /// - afterwards every bucket's remaining is exactly limit − settled usage, and nothing is
    ///   in flight: no reservation leaked or was refunded twice.
    #[test]
    fn concurrent_use_never_overdraws_and_accounts_exactly(
        seed in any::<u64>(),
        strategy in prop_oneof![
            Just(Strategy::LeastLoaded),
            Just(Strategy::RoundRobin),
            Just(Strategy::Random),
            Just(Strategy::Weighted),
        ],
    ) {
        within(Duration::from_secs(60), move || hammer(seed, strategy));
    }
}

/// Acquire (and release) many times; each key's share must match `expected` within 0.02
/// (8 standard deviations at worst: no false alarms in practice), exactly 0 where expected 0.
fn check_proportions(
    pool: &KeyPool,
    keys: usize,
    capable: usize,
    expected: impl Fn(usize) -> f64,
    t0: Instant,
) -> Result<(), TestCaseError> {
    const N: usize = 40_000;
    if capable == 0 {
        prop_assert!(pool.acquire_at(&demand(10, 0), &[], t0).is_err());
        return Ok(());
    }
    let mut counts = vec![0usize; keys];
    for _ in 0..N {
        counts[pool.acquire_at(&demand(10, 0), &[], t0).unwrap().index()] += 1;
    }
    for (i, &count) in counts.iter().enumerate() {
        let observed = count as f64 / N as f64;
        if expected(i) == 0.0 {
            prop_assert_eq!(count, 0, "key {} should never be chosen", i);
        }
        prop_assert!(
            (observed - expected(i)).abs() < 0.02,
            "key {}: {} vs {}",
            i,
            observed,
            expected(i)
        );
    }
    Ok(())
}

/// Limits dividing a minute exactly, so token costs are whole nanoseconds.
const RPM: u64 = 300;
const ITPM: u64 = 3_000_000;
const OTPM: u64 = 300_000;
const KEYS: usize = 3;
const THREADS: usize = 8;
const OPS: usize = 900;

/// The threads' own account of one key, kept so it never runs ahead of the pool: raised after
/// the pool took something, lowered before the pool gives it back.
#[derive(Default)]
struct Ledger {
    requests: AtomicU64,
    input: AtomicU64,
    output: AtomicU64,
    output_overshoot: AtomicU64,
    settled: [AtomicU64; 3],
}

fn hammer(seed: u64, strategy: Strategy) {
    let t0 = Instant::now();
    let pool = pool(
        (0..KEYS)
            .map(|i| with_weight(spec(&format!("k{i}"), RPM, ITPM, OTPM), 1.0 + i as f64))
            .collect(),
        strategy,
    );
    let ledgers: Vec<Ledger> = (0..KEYS).map(|_| Ledger::default()).collect();
    let refused = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let (pool, ledgers, refused) = (&pool, &ledgers, &refused);
            scope.spawn(move || {
                let mut rng = fastrand::Rng::with_seed(seed ^ ((thread as u64) << 32));
                let mut held: Vec<Reservation> = Vec::new();
                for _ in 0..OPS {
                    if held.len() < 4 && rng.bool() {
                        let d = demand(rng.u64(0..=3_000), rng.u64(0..=2_000));
                        let Ok(r) = pool.acquire_at(&d, &[], t0) else {
                            refused.fetch_add(1, SeqCst);
                            continue;
                        };
                        let ledger = &ledgers[r.index()];
                        let reserved = r.reserved();
                        let requests = ledger.requests.fetch_add(1, SeqCst) + 1;
                        let input = ledger.input.fetch_add(reserved.input_tokens, SeqCst)
                            + reserved.input_tokens;
                        let output = ledger.output.fetch_add(reserved.output_tokens, SeqCst)
                            + reserved.output_tokens;
                        assert!(requests <= RPM, "requests overdrawn: {requests}");
                        assert!(input <= ITPM, "input overdrawn: {input}");
                        let slack = ledger.output_overshoot.load(SeqCst);
                        assert!(
                            output <= OTPM + slack,
                            "output overdrawn: {output} > {OTPM} + {slack}"
                        );
                        held.push(r);
                    } else if !held.is_empty() {
                        let r = held.swap_remove(rng.usize(..held.len()));
                        finish(r, ledgers, &mut rng, t0);
                    }
                }
                for r in held {
                    finish(r, ledgers, &mut rng, t0);
                }
            });
        }
    });

    // Not vacuous: the budgets ran out part-way (so admission was tested at the limit) after
    // a good amount of traffic.
    let settled: u64 = ledgers.iter().map(|l| l.settled[0].load(SeqCst)).sum();
    assert!(settled > 300, "settled only {settled}");
    assert!(refused.load(SeqCst) > 0);
    for (key, ledger) in pool.keys().iter().zip(&ledgers) {
        let s = key.snapshot_at(t0);
        assert_eq!(s.in_flight, 0);
        let settled = |i: usize| ledger.settled[i].load(SeqCst);
        assert_eq!(s.requests.remaining, RPM - settled(0));
        assert_eq!(s.input_tokens.remaining, ITPM - settled(1));
        assert_eq!(s.output_tokens.remaining, OTPM.saturating_sub(settled(2)));
        assert_eq!(ledger.requests.load(SeqCst), settled(0));
    }
}

fn finish(r: Reservation, ledgers: &[Ledger], rng: &mut fastrand::Rng, t0: Instant) {
    let ledger = &ledgers[r.index()];
    let reserved = r.reserved();
    match rng.u8(0..10) {
        // Settle: input at most the estimate, output anywhere up to twice it.
        0..=3 => {
            let input = rng.u64(0..=reserved.input_tokens);
            let output = rng.u64(0..=reserved.output_tokens * 2 + 10);
            ledger
                .input
                .fetch_sub(reserved.input_tokens - input, SeqCst);
            if output < reserved.output_tokens {
                ledger
                    .output
                    .fetch_sub(reserved.output_tokens - output, SeqCst);
            } else {
                ledger
                    .output_overshoot
                    .fetch_add(output - reserved.output_tokens, SeqCst);
            }
            r.settle_at(usage(input, output), t0);
            if output > reserved.output_tokens {
                ledger
                    .output
                    .fetch_add(output - reserved.output_tokens, SeqCst);
            }
            ledger.settled[0].fetch_add(1, SeqCst);
            ledger.settled[1].fetch_add(input, SeqCst);
            ledger.settled[2].fetch_add(output, SeqCst);
        }
        // Release, or drop (which must be the same).
        n => {
            ledger.requests.fetch_sub(1, SeqCst);
            ledger.input.fetch_sub(reserved.input_tokens, SeqCst);
            ledger.output.fetch_sub(reserved.output_tokens, SeqCst);
            if n < 7 {
                r.release();
            } else {
                drop(r);
            }
        }
    }
}

/// Real clock, tiny budgets, every operation at once: no panic, no deadlock, and the pool
/// ends idle.
#[test]
fn concurrent_use_on_the_real_clock_stays_consistent() {
    within(Duration::from_secs(60), || {
        let pool = pool(
            vec![
                with_priority(spec("a", 30, 20_000, 4_000), 2),
                spec("b", 0, 10_000, 0),
                with_priority(spec("c", 60, 0, 8_000), 0),
            ],
            Strategy::LeastLoaded,
        );
        let deadline = Instant::now() + Duration::from_millis(300);
        std::thread::scope(|scope| {
            for thread in 0..THREADS {
                let pool = &pool;
                scope.spawn(move || {
                    let mut rng = fastrand::Rng::with_seed(thread as u64);
                    let mut ops = 0u64;
                    while Instant::now() < deadline {
                        let d = demand(rng.u64(0..5_000), 64_000);
                        if let Ok(r) = pool.acquire(&d, &[]) {
                            match rng.u8(0..4) {
                                0 => r.release(),
                                1 => drop(r),
                                2 => r.key().clone().cool_down(Some(Duration::from_millis(1))),
                                _ => r.settle(usage(d.input_tokens, rng.u64(0..2_000))),
                            }
                        }
                        ops += 1;
                    }
                    ops
                });
            }
        });
        for key in pool.keys() {
            assert_eq!(key.snapshot().in_flight, 0);
        }
    });
}
