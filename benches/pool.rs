//! Key pool hot paths: select + reserve (+ release) per strategy and pool size, single-threaded
//! and contended, and learning one response's rate-limit headers.
//!
//! Baselines measured in the same run, so figures can be read as ratios: one `Instant::now()`
//! (every acquisition reads the clock once), and the acquire/release cycle on a
//! `Mutex`-guarded array of in-flight counters (least in flight wins). The latter does much
//! less than the pool (no budgets, no learning), so it is a floor for a locked design, not a
//! like-for-like rival; what it shows is how each behaves as threads contend.
//!
//! `cargo bench --bench pool` (add `-- --measurement-time 2 --warm-up-time 1` for a quick run).

use std::hint::black_box;
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant, SystemTime};

use cc_relay::config::{HealthConfig, RoutingStrategy};
use cc_relay::pool::{Demand, KeyPool, KeySpec, RateLimitHeaders, Strategy};
use cc_relay::routing::{Breaker, Candidate, Router, SessionTable, Stick};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};

const SIZES: [usize; 3] = [2, 10, 100];
const THREADS: [usize; 2] = [2, 4];
const STRATEGIES: [Strategy; 4] = [
    Strategy::LeastLoaded,
    Strategy::RoundRobin,
    Strategy::Random,
    Strategy::Weighted,
];

/// A Claude Code request: ~20k input tokens, max_tokens 64000.
const DEMAND: Demand = Demand {
    input_tokens: 20_000,
    max_tokens: 64_000,
};

/// Keys with every limit known (the expensive case: all three buckets are checked and
/// reserved), spread over two priority tiers with the higher tier holding the most keys.
fn pool(keys: usize, strategy: Strategy) -> KeyPool {
    let specs = (0..keys)
        .map(|i| KeySpec {
            id: format!("key-{i}"),
            fingerprint: 0x9e37_79b9_7f4a_7c15 ^ i as u64,
            rpm_limit: 4_000,
            itpm_limit: 2_000_000,
            otpm_limit: 400_000,
            priority: if i % 4 == 3 { 1 } else { 2 },
            weight: 1.0 + (i % 3) as f64,
            max_cooldown: cc_relay::pool::DEFAULT_MAX_COOLDOWN,
            max_concurrent: 0,
        })
        .collect();
    KeyPool::new(specs, strategy)
}

fn acquire_release(pool: &KeyPool) {
    let reservation = pool.acquire(black_box(&DEMAND), &[]).expect("capacity");
    black_box(reservation.index());
    reservation.release();
}

/// A floor for a locked design: one mutex around per-key in-flight counters.
struct LockedBaseline(Mutex<Vec<u64>>);

impl LockedBaseline {
    fn acquire_release(&self) {
        let index = {
            let mut in_flight = self.0.lock().unwrap();
            let (index, _) = in_flight
                .iter()
                .enumerate()
                .min_by_key(|&(_, n)| *n)
                .expect("keys");
            in_flight[index] += 1;
            index
        };
        black_box(index);
        self.0.lock().unwrap()[index] -= 1;
    }
}

/// Select + reserve alone: reservations are dropped (released) in batches outside the timing.
fn acquire_only(c: &mut Criterion) {
    let mut group = c.benchmark_group("acquire");
    group.bench_function("baseline_instant_now", |b| b.iter(Instant::now));
    for &keys in &SIZES {
        for strategy in STRATEGIES {
            let pool = pool(keys, strategy);
            group.bench_function(BenchmarkId::new(strategy.as_str(), keys), |b| {
                b.iter_batched(
                    || (),
                    |()| pool.acquire(black_box(&DEMAND), &[]).expect("capacity"),
                    BatchSize::NumIterations(64),
                )
            });
        }
    }
    group.finish();
}

fn single_threaded(c: &mut Criterion) {
    let mut group = c.benchmark_group("acquire_release");
    for &keys in &SIZES {
        let baseline = LockedBaseline(Mutex::new(vec![0; keys]));
        group.bench_function(BenchmarkId::new("baseline_mutex", keys), |b| {
            b.iter(|| baseline.acquire_release())
        });
        for strategy in STRATEGIES {
            let pool = pool(keys, strategy);
            group.bench_function(BenchmarkId::new(strategy.as_str(), keys), |b| {
                b.iter(|| acquire_release(&pool))
            });
        }
    }
    group.finish();
}

/// `threads` threads each run `iters` cycles at once; the time reported per iteration is the
/// wall time of the whole run divided by `iters`, i.e. one cycle's latency under contention.
fn contended_run(threads: usize, iters: u64, work: &(dyn Fn() + Sync)) -> Duration {
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    for _ in 0..iters {
                        work();
                    }
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        for handle in handles {
            handle.join().expect("bench thread");
        }
        start.elapsed()
    })
}

fn contended(c: &mut Criterion) {
    let mut group = c.benchmark_group("acquire_release_contended");
    for &threads in &THREADS {
        for &keys in &SIZES {
            let id = |name: &str| BenchmarkId::new(format!("{name}/{threads}t"), keys);
            let baseline = LockedBaseline(Mutex::new(vec![0; keys]));
            group.bench_function(id("baseline_mutex"), |b| {
                b.iter_custom(|iters| contended_run(threads, iters, &|| baseline.acquire_release()))
            });
            for strategy in [Strategy::LeastLoaded, Strategy::RoundRobin] {
                let pool = pool(keys, strategy);
                group.bench_function(id(strategy.as_str()), |b| {
                    b.iter_custom(|iters| contended_run(threads, iters, &|| acquire_release(&pool)))
                });
            }
        }
    }
    group.finish();
}

/// The rate-limit headers of one real-looking Anthropic response, resets in RFC 3339.
fn response_headers(now: SystemTime) -> Vec<(&'static str, Vec<u8>)> {
    let at = |secs: u64| {
        humantime::format_rfc3339_seconds(now + Duration::from_secs(secs))
            .to_string()
            .into_bytes()
    };
    vec![
        ("anthropic-ratelimit-requests-limit", b"4000".to_vec()),
        ("anthropic-ratelimit-requests-remaining", b"3999".to_vec()),
        ("anthropic-ratelimit-requests-reset", at(1)),
        ("anthropic-ratelimit-tokens-limit", b"2400000".to_vec()),
        ("anthropic-ratelimit-tokens-remaining", b"2376000".to_vec()),
        ("anthropic-ratelimit-tokens-reset", at(2)),
        (
            "anthropic-ratelimit-input-tokens-limit",
            b"2000000".to_vec(),
        ),
        (
            "anthropic-ratelimit-input-tokens-remaining",
            b"1980000".to_vec(),
        ),
        ("anthropic-ratelimit-input-tokens-reset", at(1)),
        (
            "anthropic-ratelimit-output-tokens-limit",
            b"400000".to_vec(),
        ),
        (
            "anthropic-ratelimit-output-tokens-remaining",
            b"396000".to_vec(),
        ),
        ("anthropic-ratelimit-output-tokens-reset", at(1)),
    ]
}

fn learning(c: &mut Criterion) {
    let mut group = c.benchmark_group("learn");
    let pool = pool(10, Strategy::LeastLoaded);
    let key = pool.keys()[0].clone();
    let headers = response_headers(SystemTime::now());
    let observe_all = |now: SystemTime| {
        let mut parsed = RateLimitHeaders::default();
        for (name, value) in &headers {
            parsed.observe(black_box(name), black_box(value), now);
        }
        parsed
    };
    let parsed = observe_all(SystemTime::now());
    assert!(
        parsed.input_tokens.reset.is_some(),
        "bench headers must parse"
    );

    group.bench_function("observe_12_headers", |b| {
        b.iter(|| observe_all(SystemTime::now()))
    });
    group.bench_function("apply", |b| b.iter(|| key.learn(black_box(&parsed))));
    group.bench_function("observe_12_headers_and_apply", |b| {
        b.iter(|| key.learn(&observe_all(SystemTime::now())))
    });
    group.finish();
}

/// The routing decision of one request over 5 providers of 10 keys each, as the relay's intake
/// makes it: each provider's circuit, its pool's best load for the demand, the session table
/// lookup, then the strategy's order.
fn routing(c: &mut Criterion) {
    let mut group = c.benchmark_group("route");
    let pools: Vec<KeyPool> = (0..5).map(|_| pool(10, Strategy::LeastLoaded)).collect();
    let breakers: Vec<Breaker> = (0..5).map(|_| Breaker::new()).collect();
    let health = HealthConfig::default();
    let sessions = SessionTable::new(16_384);
    sessions.put(
        "session-1",
        1,
        Stick {
            provider: 3,
            key: 4,
        },
    );
    let ttl = Duration::from_secs(3600);
    for strategy in [
        RoutingStrategy::Failover,
        RoutingStrategy::RoundRobin,
        RoutingStrategy::WeightedRoundRobin,
        RoutingStrategy::Shuffle,
        RoutingStrategy::LeastLoaded,
        RoutingStrategy::WeightedFailover,
    ] {
        let router = Router::new(strategy, &[1.0, 2.0, 1.0, 3.0, 1.0]);
        group.bench_function(BenchmarkId::new("5x10", strategy.as_str()), |b| {
            b.iter(|| {
                let now = Instant::now();
                let sticky = sessions.get(black_box("session-1"), 1, ttl);
                let mut candidates: Vec<Candidate> = pools
                    .iter()
                    .zip(&breakers)
                    .enumerate()
                    .map(|(i, (pool, breaker))| {
                        let load = pool.best_load(&DEMAND, &[]);
                        Candidate {
                            provider: i,
                            priority: (i % 3) as u8,
                            weight: 1.0,
                            admits: load.is_some(),
                            load: load.unwrap_or(u64::MAX),
                            in_flight: 0,
                            open: !breaker.would_pass(&health, now),
                        }
                    })
                    .collect();
                router.order(&mut candidates, sticky.map(|s| s.provider));
                black_box(candidates[0].provider)
            })
        });
    }
    group.finish();
}

/// What `metrics.enabled` adds to one request: its outcome counter, two latency histograms
/// and four token counters (label handles resolved once), plus the overhead histogram.
fn metrics(c: &mut Criterion) {
    use cc_relay::admin::metrics::{Outcome, METRICS};
    let mut group = c.benchmark_group("metrics");
    let handles = METRICS.for_key("anthropic", "key-1");
    let usage = cc_relay::usage::Usage {
        input_tokens: 1200,
        cache_creation_input_tokens: 0,
        cache_read_input_tokens: 5000,
        output_tokens: 300,
    };
    group.bench_function("record_one_request", |b| {
        b.iter(|| {
            handles.request(black_box(Outcome::Proxied), black_box(200));
            handles.latency(
                black_box(Duration::from_millis(1500)),
                Some(Duration::from_millis(300)),
            );
            handles.tokens(black_box(&usage));
            METRICS.observe_overhead(black_box(Duration::from_micros(60)));
        })
    });
    // What every request costs the status page (metrics on or off): its count in the current
    // 10-second slot (the clock read included).
    let activity = cc_relay::admin::activity::Activity::default();
    group.bench_function("status_page_slot", |b| {
        b.iter(|| {
            let now = cc_relay::admin::activity::unix_now();
            activity.record(black_box(now.as_secs()), black_box(200));
        })
    });
    group.finish();
}

/// What a provider kind does to one attempt's request: the Anthropic family only sets headers
/// and the target; vertex also rewrites the body (model out, anthropic_version in, the other
/// fields copied unparsed) and builds the per-model target. A Claude Code-sized body (~76 KB).
fn prepare(c: &mut Criterion) {
    use cc_relay::providers::{ProviderKind, UpstreamRequest, ANTHROPIC, VERTEX};
    let mut group = c.benchmark_group("prepare");
    let text = "x".repeat(75_000);
    let body = bytes::Bytes::from(
        serde_json::json!({
            "model": "claude-sonnet-4-5", "max_tokens": 64000, "stream": true,
            "system": [{"type": "text", "text": "You are Claude Code."}],
            "messages": [{"role": "user", "content": text}],
        })
        .to_string(),
    );
    let base = cc_relay::config::parse_base_url(
        "https://us-east5-aiplatform.googleapis.com/v1/projects/p/locations/us-east5/publishers/anthropic/models",
    )
    .unwrap();
    let host = http::HeaderValue::from_static("us-east5-aiplatform.googleapis.com");
    let credential = (
        http::header::AUTHORIZATION,
        http::HeaderValue::from_static("Bearer ya29.token"),
    );
    for (name, kind) in [
        ("anthropic", &ANTHROPIC as &dyn ProviderKind),
        ("vertex", &VERTEX),
    ] {
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let header =
                        pingora::http::RequestHeader::build("POST", b"/v1/messages", None).unwrap();
                    (header, body.clone())
                },
                |(mut header, mut body)| {
                    kind.prepare(&mut UpstreamRequest {
                        header: &mut header,
                        origin: "/v1/messages",
                        base_url: &base,
                        host: &host,
                        credential: Some(&credential),
                        body: &mut body,
                        aws: None,
                        options: &serde_yaml::Mapping::new(),
                    })
                    .unwrap();
                    black_box(body.len())
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

/// The Bedrock path's own work per request: SigV4 over a ~2 KB body, and one streamed answer
/// (9 events) decoded from event-stream frames to SSE.
fn bedrock(c: &mut Criterion) {
    use aws_smithy_eventstream::frame::write_message_to;
    use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
    use base64::Engine;
    use cc_relay::config::{AwsCredential, Secret};
    use cc_relay::providers::bedrock::{sign, stream::EventStreamToSse};
    use cc_relay::providers::ResponseAdapter;
    let mut group = c.benchmark_group("bedrock");
    let body = vec![b'x'; 2048];
    let credential = AwsCredential {
        access_key_id: "AKIDEXAMPLE".into(),
        secret_access_key: Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
        session_token: None,
    };
    group.bench_function("sign_2k", |b| {
        b.iter(|| {
            let request = sign::ToSign {
                method: "POST",
                url: "https://bedrock-runtime.us-east-1.amazonaws.com/model/m/invoke",
                headers: &[
                    ("host", "bedrock-runtime.us-east-1.amazonaws.com"),
                    ("content-type", "application/json"),
                    ("accept", "application/json"),
                ],
                body: &body,
            };
            black_box(
                sign::signature_headers(
                    &request,
                    &credential,
                    "us-east-1",
                    "bedrock",
                    SystemTime::now(),
                )
                .unwrap(),
            )
        })
    });
    let events = [
        r#"{"type":"message_start","message":{"id":"m","usage":{"input_tokens":9,"output_tokens":1}}}"#,
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" from"}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" Bedrock"}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"."}}"#,
        r#"{"type":"content_block_stop","index":0}"#,
        r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":4}}"#,
        r#"{"type":"message_stop"}"#,
    ];
    let frames: Vec<bytes::Bytes> = events
        .iter()
        .map(|e| {
            let payload = serde_json::json!({
                "bytes": base64::engine::general_purpose::STANDARD.encode(e),
            });
            let message = Message::new_from_parts(
                vec![
                    Header::new(":message-type", HeaderValue::String("event".into())),
                    Header::new(":event-type", HeaderValue::String("chunk".into())),
                ],
                payload.to_string(),
            );
            let mut out = Vec::new();
            write_message_to(&message, &mut out).unwrap();
            bytes::Bytes::from(out)
        })
        .collect();
    group.bench_function("decode_9_events", |b| {
        b.iter(|| {
            let mut adapter = EventStreamToSse::default();
            let mut total = 0;
            for (i, frame) in frames.iter().enumerate() {
                let mut chunk = Some(frame.clone());
                adapter.adapt(&mut chunk, i + 1 == frames.len());
                total += chunk.map_or(0, |c| c.len());
            }
            black_box(total)
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    acquire_only,
    single_threaded,
    contended,
    learning,
    routing,
    metrics,
    prepare,
    bedrock
);
criterion_main!(benches);
