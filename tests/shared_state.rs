//! `shared_state`: several relays in front of one upstream share each key's budget through a
//! real redis-server, so together they never overdraw a key.
//!
//! The mock upstream enforces each key's true limit (a token bucket refilling continuously, as
//! Anthropic's) and counts the 429s it answers. Load is offered round-robin across three relays
//! at three times what the keys can take; every request either gets the upstream's answer or
//! the relay's own 429. The same run without `shared_state` is the negative control: each relay
//! then spends every key's whole budget on its own, and the upstream answers 429.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cc_relay_mock::KeyLimits;
use common::redis::RedisServer;
use common::*;

/// Requests per minute each key grants (scaled down from real limits so a test minute is
/// cheap; the arithmetic is the same).
const RPM: u64 = 600;
const SECRETS: [&str; 2] = ["sk-shared-key-one", "sk-shared-key-two"];
/// How long the upstream takes before its response headers in the acceptance run: answers take
/// a moment, as a model's do, so several requests are in flight at once and a relay cannot rely
/// on the last response's headers to know what the others took.
const UPSTREAM_LATENCY: Duration = Duration::from_millis(300);
/// Three times what the keys refill, per second.
const OFFERED_PER_SEC: f64 = 3.0 * (SECRETS.len() as f64) * RPM as f64 / 60.0;

fn relay_body(mock: &MockUpstream, shared: Option<(&RedisServer, &str)>) -> String {
    let mut s = format!(
        "providers:\n  - name: pool\n    type: anthropic\n    base_url: \"{}\"\n    keys:\n",
        mock.base_url()
    );
    for (i, secret) in SECRETS.iter().enumerate() {
        s.push_str(&format!(
            "      - name: k{}\n        key: \"{secret}\"\n        rpm_limit: {RPM}\n",
            i + 1
        ));
    }
    if let Some((redis, extra)) = shared {
        s.push_str(&format!(
            "shared_state:\n  redis_url: \"{}\"\n  namespace: test\n{extra}",
            redis.url()
        ));
    }
    s
}

/// Each key's true limit at the upstream: `RPM` requests a minute.
fn limited() -> KeyLimits {
    KeyLimits {
        rpm: RPM,
        ..Default::default()
    }
}

async fn start_mock(
    limits: KeyLimits,
    event_interval: Duration,
    latency: Duration,
) -> MockUpstream {
    MockUpstream::start(MockConfig {
        default_limits: limits,
        event_interval,
        latency,
        ..MockConfig::default()
    })
    .await
    .unwrap()
}

fn start_relays(body: &str, n: usize) -> Vec<RelayProcess> {
    (0..n)
        .map(|_| RelayProcess::start_with_log("", body, "warn,cc_relay=info"))
        .collect()
}

/// Wait until every relay says its store's breaker is closed (it has joined the others).
async fn wait_shared(relays: &[RelayProcess], count: u64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut ready = 0;
        for r in relays {
            let s = get_json(r, "/status").await;
            if s["shared_state"]["breaker"] == "closed"
                && s["shared_state"]["relays"].as_u64() >= Some(count)
            {
                ready += 1;
            }
        }
        if ready == relays.len() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the relays did not all join the store"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the clients saw, per relay.
#[derive(Default)]
struct Tally {
    ok: Vec<AtomicU64>,
    relay_429: Vec<AtomicU64>,
    other: Vec<AtomicU64>,
    /// No answer (connection refused, reset, or the client's timeout).
    failed: Vec<AtomicU64>,
}

impl Tally {
    fn new(n: usize) -> Tally {
        let v = || (0..n).map(|_| AtomicU64::new(0)).collect();
        Tally {
            ok: v(),
            relay_429: v(),
            other: v(),
            failed: v(),
        }
    }
    fn sum(v: &[AtomicU64]) -> u64 {
        v.iter().map(|a| a.load(Ordering::Relaxed)).sum()
    }
}

/// Offer `rate` requests per second on average for `duration`, round-robin across `urls`; returns when
/// every request has its answer. Each request has a 10 s timeout (a hang shows as `failed`).
async fn offer(urls: Vec<String>, rate: f64, duration: Duration, stream: bool) -> Arc<Tally> {
    let tally = Arc::new(Tally::new(urls.len()));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let body = message_body("claude-sonnet-4-5", stream);
    // Poisson arrivals: strictly periodic load would phase-lock with the keys' refill and
    // hand every freed request to whichever relay's turn follows it.
    let started = tokio::time::Instant::now();
    let mut at = Duration::ZERO;
    let mut tasks = Vec::new();
    let mut i = 0usize;
    loop {
        at += Duration::from_secs_f64(-(1.0 - fastrand::f64()).ln() / rate);
        if at >= duration {
            break;
        }
        tokio::time::sleep_until(started + at).await;
        let relay = i % urls.len();
        i += 1;
        let (client, url, body, tally) = (
            client.clone(),
            urls[relay].clone(),
            body.clone(),
            tally.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let counter = match client.post(&url).json(&body).send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    // Read the whole body: a stream cut short is not an answer.
                    match resp.bytes().await {
                        Ok(_) if status == 200 => &tally.ok,
                        Ok(_) if status == 429 => &tally.relay_429,
                        Ok(_) => &tally.other,
                        Err(_) => &tally.failed,
                    }
                }
                Err(_) => &tally.failed,
            };
            counter[relay].fetch_add(1, Ordering::Relaxed);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    tally
}

fn urls(relays: &[RelayProcess]) -> Vec<String> {
    relays.iter().map(|r| r.url("/v1/messages")).collect()
}

/// Every reservation the store holds has ended: no member of any in-flight set is still within
/// its lease, and each relay's own view has nothing in flight.
async fn assert_reservations_drained(
    redis: &RedisServer,
    relays: &[RelayProcess],
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
            .to_string();
        let held: i64 = redis
            .keys("test:*:f:*")
            .iter()
            .map(|set| redis.integer(&["ZCOUNT", set, &now_ms, "+inf"]))
            .sum();
        let mut local = 0;
        for r in relays {
            let s = get_json(r, "/status").await;
            local += s["providers"][0]["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["in_flight"].as_u64().unwrap())
                .sum::<u64>();
        }
        if held == 0 && local == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "reservations still held after traffic stopped: {held} in the store, {local} locally"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn report(name: &str, tally: &Tally, mock: &MockUpstream, elapsed: Duration) -> f64 {
    let ok = Tally::sum(&tally.ok);
    let capacity = SECRETS.len() as f64 * RPM as f64 * (1.0 + elapsed.as_secs_f64() / 60.0);
    let per_relay: Vec<u64> = tally.ok.iter().map(|a| a.load(Ordering::Relaxed)).collect();
    let (min, max) = (
        *per_relay.iter().min().unwrap() as f64,
        *per_relay.iter().max().unwrap() as f64,
    );
    eprintln!(
        "{name}: {ok} answered by the upstream ({:.1}% of the keys' capacity {capacity:.0} over \
         {:.1} s), {} refused by the relays, {} upstream 429s; per relay {per_relay:?} \
         (fairness min/max {:.2}); other {}, no answer {}",
        100.0 * ok as f64 / capacity,
        elapsed.as_secs_f64(),
        Tally::sum(&tally.relay_429),
        mock.rate_limited(),
        if max > 0.0 { min / max } else { 0.0 },
        Tally::sum(&tally.other),
        Tally::sum(&tally.failed),
    );
    ok as f64 / capacity
}

/// The acceptance load: 3× the keys' capacity for 60 s, round-robin across `relays`.
async fn acceptance_load(relays: &[RelayProcess]) -> (Arc<Tally>, Duration) {
    let started = Instant::now();
    let tally = offer(
        urls(relays),
        OFFERED_PER_SEC,
        Duration::from_secs(60),
        false,
    )
    .await;
    (tally, started.elapsed())
}

/// The acceptance run: three relays, one store, load at 3× the keys' capacity for 60 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_relays_share_the_keys_without_an_upstream_429() {
    let redis = RedisServer::start();
    let mock = start_mock(limited(), Duration::ZERO, UPSTREAM_LATENCY).await;
    let relays = start_relays(&relay_body(&mock, Some((&redis, ""))), 3);
    wait_shared(&relays, 3).await;
    let (tally, elapsed) = acceptance_load(&relays).await;
    let used = report("shared", &tally, &mock, elapsed);
    for r in &relays {
        eprintln!(
            "  store as relay {} saw it: {}",
            r.addr,
            get_json(r, "/status").await["shared_state"]
        );
    }
    assert_eq!(mock.rate_limited(), 0, "the upstream answered 429");
    assert_eq!(Tally::sum(&tally.failed) + Tally::sum(&tally.other), 0);
    assert!(
        used >= 0.9,
        "only {:.1}% of the keys' capacity used",
        used * 100.0
    );
    for (i, ok) in tally.ok.iter().enumerate() {
        // Round-robin load: each relay gets a fair part of what the keys grant.
        let ok = ok.load(Ordering::Relaxed) as f64;
        let total = Tally::sum(&tally.ok) as f64;
        assert!(ok >= total / 6.0, "relay {i} got {ok} of {total}");
    }
    assert_reservations_drained(&redis, &relays, Duration::from_secs(5)).await;
}

/// The negative control: the same relays and load without `shared_state` overdraw the keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_shared_state_the_relays_overdraw_the_keys() {
    let mock = start_mock(limited(), Duration::ZERO, UPSTREAM_LATENCY).await;
    let relays = start_relays(&relay_body(&mock, None), 3);
    let (tally, elapsed) = acceptance_load(&relays).await;
    report("control (no shared_state)", &tally, &mock, elapsed);
    assert!(
        mock.rate_limited() > 0,
        "without shared_state the upstream should have answered 429"
    );
}

/// The body of a relay for the fault runs: a short lease, so a dead relay's reservations stop
/// counting as in flight within the test.
const FAULT_SETTINGS: &str = "  timeout_ms: 50\n  lease_seconds: 3\n";

/// Offer 3× the keys' capacity through three relays for 20 s and apply `fault` 6 s in. Asserts
/// that the upstream never answered 429 and that every request sent to a live relay was
/// answered (200 or the relay's own 429) within its timeout.
async fn run_with_fault(
    name: &str,
    stream: bool,
    fault: impl FnOnce(&mut RedisServer, &mut Vec<RelayProcess>) + Send,
) -> (RedisServer, MockUpstream, Vec<RelayProcess>, Arc<Tally>) {
    let mut redis = RedisServer::start();
    let interval = if stream {
        Duration::from_millis(100)
    } else {
        Duration::ZERO
    };
    let mock = start_mock(limited(), interval, Duration::ZERO).await;
    let mut relays = start_relays(&relay_body(&mock, Some((&redis, FAULT_SETTINGS))), 3);
    wait_shared(&relays, 3).await;
    // Spend the keys' initial burst first, so the fault lands while they are at their limits.
    let drain = offer(
        urls(&relays),
        8.0 * OFFERED_PER_SEC,
        Duration::from_secs(3),
        false,
    )
    .await;
    if mock.rate_limited() > 0 {
        print_store_logs(name, &relays);
    }
    assert_eq!(
        mock.rate_limited(),
        0,
        "{name}: the upstream answered 429 while draining"
    );
    assert!(
        Tally::sum(&drain.relay_429) > 0,
        "{name}: the keys were not drained"
    );
    let started = Instant::now();
    let load = tokio::spawn(offer(
        urls(&relays),
        OFFERED_PER_SEC,
        Duration::from_secs(20),
        stream,
    ));
    tokio::time::sleep(Duration::from_secs(6)).await;
    let faulted = Instant::now();
    tokio::task::block_in_place(|| fault(&mut redis, &mut relays));
    let tally = load.await.unwrap();
    report(name, &tally, &mock, started.elapsed());
    for r in relays.iter_mut() {
        if r.child.try_wait().unwrap().is_none() {
            let s = get_json(r, "/status").await;
            eprintln!(
                "  {name}: {} {}",
                s["shared_state"], s["providers"][0]["keys"]
            );
        }
    }
    if mock.rate_limited() > 0 {
        print_store_logs(name, &relays);
        let at: Vec<String> = mock
            .rate_limited_at()
            .iter()
            .map(|t| {
                format!(
                    "{:+.3} s",
                    t.saturating_duration_since(faulted).as_secs_f64()
                        - faulted.saturating_duration_since(*t).as_secs_f64()
                )
            })
            .collect();
        eprintln!(
            "  {name}: the upstream's 429s, from the fault: {}",
            at.join(", ")
        );
    }
    assert_eq!(mock.rate_limited(), 0, "{name}: the upstream answered 429");
    assert!(
        Tally::sum(&tally.relay_429) > 0,
        "{name}: the load never reached the keys' limits"
    );
    assert_eq!(Tally::sum(&tally.other), 0, "{name}: unexpected answers");
    (redis, mock, relays, tally)
}

/// What the relays said of the store (their breaker, their share), for a failure.
fn print_store_logs(name: &str, relays: &[RelayProcess]) {
    for r in relays {
        let logs = r.logs();
        let said: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains("shared_state"))
            .collect();
        eprintln!("  {name}: relay log:\n{}", said.join("\n"));
    }
}

async fn breaker_openings(relays: &[RelayProcess]) -> u64 {
    let mut n = 0;
    for r in relays {
        n += get_json(r, "/status").await["shared_state"]["breaker_opened"]
            .as_u64()
            .unwrap();
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_and_restarted_empty() {
    let (redis, _mock, relays, tally) = run_with_fault("redis SIGKILL", false, |redis, _| {
        redis.kill();
        std::thread::sleep(Duration::from_secs(2));
        redis.restart();
    })
    .await;
    // They share again, through the new and empty server.
    assert_recovered(&redis, &relays, &tally).await;
}

/// After a fault of the store: every request was answered, the relays noticed (their breakers
/// opened), they share through the store again, and no reservation is left held.
async fn assert_recovered(redis: &RedisServer, relays: &[RelayProcess], tally: &Tally) {
    assert_eq!(Tally::sum(&tally.failed), 0, "a request went unanswered");
    assert!(
        breaker_openings(relays).await >= 1,
        "no relay noticed the store failing"
    );
    wait_shared(relays, 3).await;
    assert_reservations_drained(redis, relays, Duration::from_secs(6)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn script_flush_mid_run() {
    let (redis, _mock, relays, tally) = run_with_fault("SCRIPT FLUSH", false, |redis, _| {
        for _ in 0..3 {
            assert_eq!(redis.command(&["SCRIPT", "FLUSH"]).as_deref(), Some("+OK"));
            std::thread::sleep(Duration::from_secs(1));
        }
    })
    .await;
    assert_eq!(Tally::sum(&tally.failed), 0, "a request went unanswered");
    // The scripts were loaded again by the client, without a failed admission.
    assert_eq!(breaker_openings(&relays).await, 0);
    assert_reservations_drained(&redis, &relays, Duration::from_secs(6)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_paused_beyond_the_timeout() {
    let (redis, _mock, relays, tally) =
        run_with_fault("CLIENT PAUSE 1500 ms", false, |redis, _| {
            assert_eq!(
                redis.command(&["CLIENT", "PAUSE", "1500"]).as_deref(),
                Some("+OK")
            );
        })
        .await;
    assert_recovered(&redis, &relays, &tally).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_killed_mid_stream() {
    let (redis, _mock, mut relays, tally) =
        run_with_fault("a relay SIGKILLed mid-stream", true, |_, relays| {
            let _ = relays[2].child.kill();
            let _ = relays[2].child.wait();
        })
        .await;
    assert_eq!(
        tally.failed[0].load(Ordering::Relaxed) + tally.failed[1].load(Ordering::Relaxed),
        0,
        "a request to a live relay went unanswered"
    );
    relays.truncate(2);
    // The dead relay drops out of the count, and its reservations run out with their lease.
    wait_shared(&relays, 2).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while get_json(&relays[0], "/status").await["shared_state"]["relays"] != 2 {
        assert!(Instant::now() < deadline, "the dead relay still counts");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_reservations_drained(&redis, &relays, Duration::from_secs(8)).await;
}

/// A 429 one relay receives benches the key on every relay, through the store; without
/// `shared_state` the other relays keep sending to it (the control).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_429_seen_by_one_relay_cools_the_key_everywhere() {
    for shared in [true, false] {
        let redis = RedisServer::start();
        let mock = start_mock(KeyLimits::default(), Duration::ZERO, Duration::ZERO).await;
        let store = shared.then_some((&redis, ""));
        let relays = start_relays(&relay_body(&mock, store), 3);
        if shared {
            wait_shared(&relays, 3).await;
        }
        mock.push_fault(Some(SECRETS[0]), throttled("30"));
        let body = message_body("claude-sonnet-4-5", false);
        // Through the first relay until it has met the 429 on key one (it retries on key two,
        // so the client is answered either way).
        let mut cooled = false;
        for _ in 0..8 {
            let resp = post_messages(&relays[0], &body, &[]).await;
            assert_eq!(resp.status(), 200);
            let status = get_json(&relays[0], "/status").await;
            if key_status(&status, "k1")["cooling_down_ms"]
                .as_u64()
                .is_some()
            {
                cooled = true;
                break;
            }
        }
        assert!(cooled, "relay 0 never met the 429 on k1");
        // One round trip to the store, well within this.
        tokio::time::sleep(Duration::from_millis(50)).await;
        mock.clear();
        for relay in &relays[1..] {
            for _ in 0..10 {
                assert_eq!(post_messages(relay, &body, &[]).await.status(), 200);
            }
        }
        let to_k1 = mock.requests_by_key().get(SECRETS[0]).copied().unwrap_or(0);
        if shared {
            assert_eq!(
                to_k1, 0,
                "another relay sent to the key the upstream benched"
            );
        } else {
            assert!(to_k1 > 0, "control: without shared_state the others use k1");
        }
    }
}

/// `max_concurrent` is a key's cap on requests in flight across every relay: each key allows
/// one, the upstream holds each request for a second, and nine requests arrive at once through
/// three relays; two are served (one per key). Without `shared_state` each relay allows one per
/// key, so more get through (the control).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_concurrent_is_shared_by_the_relays() {
    for shared in [true, false] {
        let redis = RedisServer::start();
        let mock = start_mock(KeyLimits::default(), Duration::ZERO, Duration::from_secs(1)).await;
        let body = relay_body(&mock, shared.then_some((&redis, ""))).replace(
            &format!("rpm_limit: {RPM}\n"),
            &format!("rpm_limit: {RPM}\n        max_concurrent: 1\n"),
        );
        let relays = start_relays(&body, 3);
        if shared {
            wait_shared(&relays, 3).await;
        }
        let request = message_body("claude-sonnet-4-5", false);
        let answers =
            futures::future::join_all((0..9).map(|i| post_messages(&relays[i % 3], &request, &[])))
                .await;
        let served = answers.iter().filter(|r| r.status() == 200).count();
        if shared {
            assert_eq!(
                served, 2,
                "two keys of max_concurrent 1 served {served} at once"
            );
        } else {
            assert!(
                served > 2,
                "control: without shared_state each relay allows one per key, {served} served"
            );
        }
    }
}

/// A reload that adds a key: the new key is shared too (its budget lives in the store), and
/// requests keep flowing through the reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reload_adds_a_key_to_the_shared_pool() {
    let redis = RedisServer::start();
    let mock = start_mock(KeyLimits::default(), Duration::ZERO, Duration::ZERO).await;
    let body = format!(
        "{}metrics:\n  enabled: true\n",
        relay_body(&mock, Some((&redis, "")))
    );
    let relay = RelayProcess::start_with_log("", &body, "warn,cc_relay=info");
    wait_shared(std::slice::from_ref(&relay), 1).await;
    let added = body.replace(
        "shared_state:",
        "      - name: k3\n        key: \"sk-shared-key-three\"\n        rpm_limit: 600\nshared_state:",
    );
    relay.rewrite_config("", &added);
    relay.signal(nix::sys::signal::Signal::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while get_json(&relay, "/status").await["config_generation"] != 2 {
        assert!(Instant::now() < deadline, "the reload did not land");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let request = message_body("claude-sonnet-4-5", false);
    for _ in 0..12 {
        assert_eq!(post_messages(&relay, &request, &[]).await.status(), 200);
    }
    assert!(
        mock.requests_by_key()
            .get("sk-shared-key-three")
            .copied()
            .unwrap_or(0)
            > 0,
        "the added key was never used"
    );
    // Three keys, three budgets in the store, named without their secrets.
    let hashes = redis.keys("test:{pool}:k:*");
    assert_eq!(hashes.len(), 3, "{hashes:?}");
    assert!(hashes.iter().all(|h| !h.contains("sk-")));
    // The store's state is observable, and its URL is not shown anywhere.
    relay.wait_settled(None).await;
    let metrics = get_text(&relay, "/metrics").await;
    for line in [
        "cc_relay_shared_connected 1",
        "cc_relay_shared_breaker_open 0",
        "cc_relay_shared_relays 1",
        "cc_relay_shared_admissions_total{outcome=\"admitted\"} 12",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
    assert!(metrics.contains("cc_relay_shared_admission_seconds_bucket"));
    let status = get_json(&relay, "/status").await.to_string();
    for page in [&metrics, &status] {
        assert!(!page.contains(&redis.url()));
    }
}

/// The key of the start-up tests: `LIMIT` requests a minute, at the upstream too.
const LIMIT: u64 = 6;

fn small_key() -> KeyLimits {
    KeyLimits {
        rpm: LIMIT,
        ..Default::default()
    }
}

/// A relay with one key of `LIMIT` requests a minute, shared through `redis`.
fn one_key_body(mock: &MockUpstream, redis: &RedisServer, extra: &str) -> String {
    format!(
        "providers:\n  - name: pool\n    type: anthropic\n    base_url: \"{}\"\n    keys:\n      \
         - name: k1\n        key: \"{}\"\n        rpm_limit: {LIMIT}\n\
         shared_state:\n  redis_url: \"{}\"\n  namespace: test\n{extra}",
        mock.base_url(),
        SECRETS[0],
        redis.url()
    )
}

/// Issue 26, defect 8: a relay joining the store costs the pool nothing. One key of 6 requests
/// a minute (the upstream enforces 6 too), two relays sharing it, a third joining; at once, 18
/// requests round-robin across the three: exactly the 6 the key grants reach the upstream, as
/// through one relay alone, and the other 12 get the relays' own 429. (Joining used to push a
/// third of a heartbeat's debt into the store, which a burst right after turned into one
/// request fewer: 5 of 18.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_joining_costs_the_pool_nothing() {
    let redis = RedisServer::start();
    let mock = start_mock(small_key(), Duration::ZERO, Duration::ZERO).await;
    let body = one_key_body(&mock, &redis, "");
    let mut relays = start_relays(&body, 2);
    wait_shared(&relays, 2).await;
    // The third joins; the burst starts as soon as it shares the key.
    relays.push(RelayProcess::start_with_log(
        "",
        &body,
        "warn,cc_relay=info",
    ));
    let deadline = Instant::now() + Duration::from_secs(15);
    while get_json(&relays[2], "/status").await["shared_state"]["breaker"] != "closed" {
        assert!(Instant::now() < deadline, "the third relay did not join");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let request = message_body("claude-sonnet-4-5", false);
    let mut answers = [0u64; 3];
    let mut refused = 0;
    for i in 0..3 * LIMIT as usize {
        // The newcomer first.
        let relay = &relays[(i + 2) % 3];
        match post_messages(relay, &request, &[]).await.status().as_u16() {
            200 => answers[(i + 2) % 3] += 1,
            429 => refused += 1,
            other => panic!("request {i}: unexpected status {other}"),
        }
    }
    assert_reservations_drained(&redis, &relays, Duration::from_secs(5)).await;
    assert_eq!(mock.rate_limited(), 0, "the upstream answered 429");
    assert_eq!(
        mock.request_count() as u64,
        LIMIT,
        "{answers:?} answered per relay, {refused} refused by the relays"
    );
    assert_eq!(answers.iter().sum::<u64>(), LIMIT);
    assert_eq!(refused, 2 * LIMIT);
}

/// A relay's requests before the store's first answer wait for it (bounded) rather than being
/// decided at a local share: the store is paused as the relay starts (its first heartbeat
/// waits), the relay keeps to 1/3 of the key while it knows nothing (`min_relays: 3`), and 6
/// requests arrive at once. All 6 are admitted by the store once it answers; decided locally,
/// 2 would pass and 4 be refused (a full share would overdraw the key instead).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_starting_waits_for_the_store() {
    let redis = RedisServer::start();
    let mock = start_mock(small_key(), Duration::ZERO, Duration::ZERO).await;
    // Operations wait 4 s for the store: the first heartbeat outlasts the pause.
    let body = one_key_body(&mock, &redis, "  timeout_ms: 1000\n  min_relays: 3\n");
    assert_eq!(
        redis.command(&["CLIENT", "PAUSE", "1500"]).as_deref(),
        Some("+OK")
    );
    let paused = Instant::now();
    let relay = RelayProcess::start_with_log("", &body, "warn,cc_relay=info");
    assert!(
        paused.elapsed() < Duration::from_millis(1200),
        "the relay took longer to start than the store's pause: the test would not test the start"
    );
    let request = message_body("claude-sonnet-4-5", false);
    let answers =
        futures::future::join_all((0..LIMIT).map(|_| post_messages(&relay, &request, &[]))).await;
    let statuses: Vec<u16> = answers.iter().map(|r| r.status().as_u16()).collect();
    assert_reservations_drained(&redis, std::slice::from_ref(&relay), Duration::from_secs(5)).await;
    assert_eq!(statuses, vec![200; LIMIT as usize]);
    assert_eq!(mock.request_count() as u64, LIMIT);
    let store = &get_json(&relay, "/status").await["shared_state"];
    assert_eq!(store["admitted"], LIMIT, "{store}");
    assert_eq!(store["local_admissions"], 0, "{store}");
}
