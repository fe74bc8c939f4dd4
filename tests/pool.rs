//! The key pool through the real relay: selection by capacity, learning from the upstream's
//! headers, cooldowns, disabling, transparent retries and the local 429.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};

struct Sent {
    status: u16,
    key_id: Option<String>,
    retry_after: Option<String>,
    body: Value,
}

async fn send(relay: &RelayProcess, body: &Value, headers: &[(&str, &str)]) -> Sent {
    let resp = post_messages(relay, body, headers).await;
    let status = resp.status().as_u16();
    let h = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let key_id = h("x-cc-relay-key-id");
    let retry_after = h("retry-after");
    let body = resp.json().await.unwrap_or(Value::Null);
    Sent {
        status,
        key_id,
        retry_after,
        body,
    }
}

fn tally(mock: &MockUpstream) -> HashMap<String, usize> {
    mock.requests_by_key()
}

#[tokio::test]
async fn traffic_spreads_by_remaining_capacity() {
    let mock = start_mock().await;
    let keys = [
        ("big", "sk-big", "rpm_limit: 100"),
        ("small", "sk-small", "rpm_limit: 10"),
    ];
    let relay = RelayProcess::start("", &pool_config(&mock, &keys, ""));
    for _ in 0..30 {
        assert_eq!(
            send(&relay, &message_body("m", false), &[]).await.status,
            200
        );
    }
    let t = tally(&mock);
    let big = t.get("sk-big").copied().unwrap_or(0);
    let small = t.get("sk-small").copied().unwrap_or(0);
    assert_eq!(big + small, 30);
    assert!(small >= 1, "the smaller key was never used: {t:?}");
    assert!(big >= 3 * small, "selection ignored capacity: {t:?}");
}

#[tokio::test]
async fn an_exhausted_key_hands_over_without_a_failed_request() {
    let mock = start_mock().await;
    let keys = [
        ("one", "sk-one", "rpm_limit: 1\npriority: 2"),
        ("other", "sk-other", "rpm_limit: 100\npriority: 1"),
    ];
    let relay = RelayProcess::start("", &pool_config(&mock, &keys, ""));
    let mut ids = Vec::new();
    for _ in 0..6 {
        let s = send(&relay, &message_body("m", false), &[]).await;
        assert_eq!(s.status, 200);
        ids.push(s.key_id.unwrap());
    }
    assert_eq!(ids[0], "one");
    assert!(ids[1..].iter().all(|id| id == "other"), "{ids:?}");
    assert_eq!(tally(&mock).get("sk-one"), Some(&1));
}

#[tokio::test]
async fn an_exhausted_pool_answers_429_locally_with_retry_after() {
    let mock = start_mock().await;
    let keys = [("a", "sk-a", "rpm_limit: 1"), ("b", "sk-b", "rpm_limit: 1")];
    let relay = RelayProcess::start("", &pool_config(&mock, &keys, ""));
    for _ in 0..2 {
        assert_eq!(
            send(&relay, &message_body("m", false), &[]).await.status,
            200
        );
    }
    let s = send(&relay, &message_body("m", false), &[]).await;
    assert_eq!(s.status, 429);
    assert_eq!(error_type(&s.body), "rate_limit_error");
    let after: u64 = s.retry_after.expect("no retry-after").parse().unwrap();
    // One request per minute refills in 60 s; some of it has passed.
    assert!((1..=60).contains(&after), "retry-after {after}");
    assert!(
        after >= 50,
        "retry-after {after} is not the real refill time"
    );
    assert_eq!(
        mock.request_count(),
        2,
        "the relay sent a request it knew would fail"
    );
}

#[tokio::test]
async fn upstream_remaining_zero_skips_the_key_until_reset() {
    let mock = start_mock().await;
    let keys = [
        ("first", "sk-first", "priority: 2"),
        ("second", "sk-second", "priority: 1"),
    ];
    let relay = RelayProcess::start("", &pool_config(&mock, &keys, ""));
    let reset =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(40))
            .to_string();
    mock.push_fault(
        Some("sk-first"),
        Fault::RateLimitHeaders(vec![
            ("anthropic-ratelimit-requests-limit".into(), "50".into()),
            ("anthropic-ratelimit-requests-remaining".into(), "0".into()),
            ("anthropic-ratelimit-requests-reset".into(), reset),
        ]),
    );
    let first = send(&relay, &message_body("m", false), &[]).await;
    assert_eq!(first.key_id.as_deref(), Some("first"));
    for _ in 0..4 {
        let s = send(&relay, &message_body("m", false), &[]).await;
        assert_eq!(s.status, 200);
        assert_eq!(
            s.key_id.as_deref(),
            Some("second"),
            "a key with 0 remaining was used"
        );
    }
    let st = get_json(&relay, "/status").await;
    assert_eq!(key_status(&st, "first")["requests"]["limit"], 50);
}

#[tokio::test]
async fn upstream_429_cools_the_key_and_retries_transparently() {
    let mock = start_mock().await;
    let keys = [
        ("hot", "sk-hot", "priority: 2"),
        ("spare", "sk-spare", "priority: 1"),
    ];
    let relay = RelayProcess::start("", &pool_config(&mock, &keys, ""));
    mock.push_fault(Some("sk-hot"), throttled("30"));
    // A Claude Code-sized body, past Pingora's 64 KiB retry buffer: it must be resent whole.
    let mut body = message_body("m", false);
    body["system"] = json!("z".repeat(120_000));
    let s = send(&relay, &body, &[]).await;
    assert_eq!(s.status, 200, "{:?}", s.body);
    assert_eq!(s.key_id.as_deref(), Some("spare"));
    let seen = mock.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].api_key.as_deref(), Some("sk-hot"));
    assert_eq!(seen[1].api_key.as_deref(), Some("sk-spare"));
    assert_eq!(
        seen[0].body, seen[1].body,
        "the retry sent a different body"
    );
    assert_eq!(seen[1].json()["system"].as_str().unwrap().len(), 120_000);

    // The hot key stays out for its retry-after.
    let next = send(&relay, &message_body("m", false), &[]).await;
    assert_eq!(next.key_id.as_deref(), Some("spare"));
    let st = get_json(&relay, "/status").await;
    let cooling = key_status(&st, "hot")["cooling_down_ms"].as_u64().unwrap();
    assert!((20_000..=30_000).contains(&cooling), "cooling {cooling} ms");
}

#[tokio::test]
async fn streaming_request_retries_on_529_before_any_byte() {
    let mock = start_mock().await;
    let keys = [("a", "sk-a", "priority: 2"), ("b", "sk-b", "priority: 1")];
    let relay = RelayProcess::start("", &pool_config(&mock, &keys, ""));
    mock.push_fault(
        Some("sk-a"),
        Fault::Status {
            status: 529,
            retry_after: None,
        },
    );
    let resp = post_messages(&relay, &message_body("m", true), &[]).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.contains("message_stop"));
    // 529 is not the key's fault: no cooldown.
    let st = get_json(&relay, "/status").await;
    assert!(key_status(&st, "a")["cooling_down_ms"].is_null());
}

#[tokio::test]
async fn a_refused_key_is_disabled_and_routed_around() {
    let mock = start_mock().await;
    let keys = [
        ("revoked", "sk-revoked", "priority: 2"),
        ("good", "sk-good", "priority: 1"),
    ];
    let relay = RelayProcess::start("", &pool_config(&mock, &keys, ""));
    mock.set_sticky_fault(
        "sk-revoked",
        Some(Fault::Status {
            status: 401,
            retry_after: None,
        }),
    );
    for _ in 0..4 {
        let s = send(&relay, &message_body("m", false), &[]).await;
        assert_eq!(s.status, 200);
        assert_eq!(s.key_id.as_deref(), Some("good"));
    }
    assert_eq!(tally(&mock).get("sk-revoked"), Some(&1));
    let st = get_json(&relay, "/status").await;
    assert_eq!(key_status(&st, "revoked")["disabled"], true);
    assert!(relay.wait_for_log("revoked", Duration::from_secs(2)));
    assert!(
        !relay.logs().contains("sk-revoked"),
        "a secret reached the log"
    );
}

#[tokio::test]
async fn higher_priority_tier_is_used_first() {
    let mock = start_mock().await;
    let keys = [
        ("low", "sk-low", "priority: 0"),
        ("high", "sk-high", "priority: 2"),
        ("mid", "sk-mid", "priority: 1"),
    ];
    let relay = RelayProcess::start("", &pool_config(&mock, &keys, ""));
    for _ in 0..8 {
        let s = send(&relay, &message_body("m", false), &[]).await;
        assert_eq!(s.key_id.as_deref(), Some("high"));
    }
}

#[tokio::test]
async fn round_robin_is_even() {
    let mock = start_mock().await;
    let keys = [("a", "sk-a", ""), ("b", "sk-b", ""), ("c", "sk-c", "")];
    let extra = "    pooling:\n      strategy: round_robin\n";
    let relay = RelayProcess::start("", &pool_config(&mock, &keys, extra));
    for _ in 0..12 {
        assert_eq!(
            send(&relay, &message_body("m", false), &[]).await.status,
            200
        );
    }
    let t = tally(&mock);
    for k in ["sk-a", "sk-b", "sk-c"] {
        assert_eq!(t.get(k), Some(&4), "{t:?}");
    }
}

#[tokio::test]
async fn streamed_usage_settles_output_tokens() {
    let mock = start_mock().await;
    let keys = [("only", "sk-only", "otpm_limit: 10000\nitpm_limit: 1000000")];
    let relay = RelayProcess::start("", &pool_config(&mock, &keys, ""));
    let resp = post_messages(
        &relay,
        &message_body("m", true),
        &[("x-mock-output-tokens", "3000")],
    )
    .await;
    let mut stream = resp.bytes_stream();
    while stream.next().await.is_some() {}
    // Settlement happens as the response ends, after the client has read it.
    relay.wait_settled(None).await;
    let st = get_json(&relay, "/status").await;
    let remaining = key_status(&st, "only")["output_tokens"]["remaining"]
        .as_u64()
        .unwrap();
    // 10,000 - 3,000 used, plus at most a few seconds of refill (10,000/60 per second).
    assert!(
        (7000..=7700).contains(&remaining),
        "output budget after a 3,000-token stream: {remaining}"
    );
}

#[tokio::test]
async fn max_wait_holds_a_request_until_a_key_cools_down() {
    let mock = start_mock().await;
    let keys = [("solo", "sk-solo", "")];
    let extra = "    pooling:\n      max_wait_ms: 3000\n";
    let relay = RelayProcess::start("", &pool_config(&mock, &keys, extra));
    mock.push_fault(Some("sk-solo"), throttled("1"));
    // No other key: the upstream's own 429 reaches the client.
    let first = send(&relay, &message_body("m", false), &[]).await;
    assert_eq!(first.status, 429);
    let started = Instant::now();
    let second = send(&relay, &message_body("m", false), &[]).await;
    assert_eq!(second.status, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "the request did not wait for the cooldown"
    );
}
