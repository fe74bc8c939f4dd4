//! Many providers as one endpoint, through the real relay and several mock upstreams: routing
//! strategies, failover inside a request, circuit breakers, stickiness, per-key concurrency.

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};

/// `providers:` with one block per `(name, mock, key secret, extra lines)`.
fn providers(blocks: &[(&str, &MockUpstream, &str, &str)]) -> String {
    let mut s = String::from("providers:\n");
    for (name, mock, secret, extra) in blocks {
        s.push_str(&mock_provider(name, mock, &[(name, secret)], extra));
    }
    s
}

async fn ok(relay: &RelayProcess, model: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let resp = post_messages(relay, &message_body(model, false), headers).await;
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    resp
}

fn status_500() -> Fault {
    Fault::Status {
        status: 500,
        retry_after: None,
    }
}

#[tokio::test]
async fn round_robin_spreads_evenly_over_three_providers() {
    let (a, b, c) = (start_mock().await, start_mock().await, start_mock().await);
    let body = providers(&[
        ("a", &a, "sk-a", ""),
        ("b", &b, "sk-b", ""),
        ("c", &c, "sk-c", ""),
    ]);
    let relay = RelayProcess::start("", &format!("{body}routing:\n  strategy: round_robin\n"));
    for _ in 0..30 {
        ok(&relay, "m", &[]).await;
    }
    let counts = [a.request_count(), b.request_count(), c.request_count()];
    assert_eq!(counts, [10, 10, 10]);
}

#[tokio::test]
async fn shuffle_deals_each_provider_once_per_round() {
    let (a, b, c) = (start_mock().await, start_mock().await, start_mock().await);
    let body = providers(&[
        ("a", &a, "sk-a", ""),
        ("b", &b, "sk-b", ""),
        ("c", &c, "sk-c", ""),
    ]);
    let relay = RelayProcess::start("", &format!("{body}routing:\n  strategy: shuffle\n"));
    for _ in 0..30 {
        ok(&relay, "m", &[]).await;
    }
    let counts = [a.request_count(), b.request_count(), c.request_count()];
    assert_eq!(counts, [10, 10, 10]);
}

#[tokio::test]
async fn weighted_strategies_follow_the_weights() {
    for strategy in ["weighted_round_robin", "weighted_failover"] {
        let (a, b) = (start_mock().await, start_mock().await);
        let body = providers(&[
            ("a", &a, "sk-a", "    weight: 3\n"),
            ("b", &b, "sk-b", "    weight: 1\n"),
        ]);
        let relay = RelayProcess::start("", &format!("{body}routing:\n  strategy: {strategy}\n"));
        let n = if strategy == "weighted_round_robin" {
            40
        } else {
            200
        };
        for _ in 0..n {
            ok(&relay, "m", &[]).await;
        }
        let share = a.request_count() as f64 / n as f64;
        // 3:1 is a share of 0.75; within ±15 % of it.
        assert!(
            (0.6375..=0.8625).contains(&share),
            "{strategy}: share {share}"
        );
        if strategy == "weighted_round_robin" {
            assert_eq!((a.request_count(), b.request_count()), (30, 10));
        }
    }
}

#[tokio::test]
async fn failover_sends_everything_to_the_highest_priority() {
    let (a, b, c) = (start_mock().await, start_mock().await, start_mock().await);
    let body = providers(&[
        ("a", &a, "sk-a", "    priority: 1\n"),
        ("b", &b, "sk-b", "    priority: 2\n"),
        ("c", &c, "sk-c", "    priority: 0\n"),
    ]);
    let routing = "routing:\n  strategy: failover\n  debug: true\n";
    let relay = RelayProcess::start("", &format!("{body}{routing}"));
    for _ in 0..30 {
        let resp = ok(&relay, "m", &[]).await;
        // routing.debug: the Go relay's headers.
        assert_eq!(resp.headers()["x-cc-relay-strategy"], "failover");
        assert_eq!(resp.headers()["x-cc-relay-provider"], "b");
        assert_eq!(resp.headers()["x-cc-relay-health"], "closed");
    }
    assert_eq!(
        [a.request_count(), b.request_count(), c.request_count()],
        [0, 30, 0]
    );
}

#[tokio::test]
async fn least_loaded_prefers_the_provider_with_capacity_left() {
    let (a, b) = (start_mock().await, start_mock().await);
    let body = format!(
        "providers:\n{}{}",
        mock_provider("a", &a, &[("a", "sk-a")], ""),
        mock_provider("b", &b, &[("b", "sk-b")], ""),
    );
    let body = body.replace(
        "key: \"sk-a\"\n",
        "key: \"sk-a\"\n        rpm_limit: 1000\n",
    );
    let body = body.replace("key: \"sk-b\"\n", "key: \"sk-b\"\n        rpm_limit: 10\n");
    let relay = RelayProcess::start("", &format!("{body}routing:\n  strategy: least_loaded\n"));
    for _ in 0..10 {
        ok(&relay, "m", &[]).await;
    }
    // Both start idle; once b has served one request a tenth of its minute is spent, while
    // a's nine cost it 0.9 % of its own: everything else goes to a.
    assert!(b.request_count() <= 1, "b served {}", b.request_count());
    assert_eq!(a.request_count() + b.request_count(), 10);
}

#[tokio::test]
async fn model_based_routes_by_the_longest_prefix_and_defaults_the_rest() {
    let (a, b, c) = (start_mock().await, start_mock().await, start_mock().await);
    let body = providers(&[
        ("a", &a, "sk-a", ""),
        ("b", &b, "sk-b", ""),
        ("c", &c, "sk-c", ""),
    ]);
    let routing = "routing:\n  strategy: model_based\n  default_provider: c\n  model_mapping:\n    claude: b\n    claude-opus: a\n";
    let relay = RelayProcess::start("", &format!("{body}{routing}"));
    for model in ["claude-opus-4-1", "claude-sonnet-4-5", "glm-4.6"] {
        for _ in 0..10 {
            ok(&relay, model, &[]).await;
        }
    }
    assert_eq!(
        [a.request_count(), b.request_count(), c.request_count()],
        [10, 10, 10]
    );
    // The model is not rewritten by a prefix mapping.
    assert_eq!(a.requests()[0].json()["model"], "claude-opus-4-1");
}

#[tokio::test]
async fn a_failing_provider_is_routed_around_inside_the_request() {
    let flaky = start_mock().await;
    let steady = start_mock().await;
    let body = providers(&[
        ("flaky", &flaky, "sk-flaky", "    priority: 2\n"),
        ("steady", &steady, "sk-steady", "    priority: 1\n"),
    ]);
    // A threshold the phases do not reach: every request tries flaky first.
    let health = "health:\n  circuit_breaker:\n    failure_threshold: 100\n";
    let relay = RelayProcess::start("", &format!("{body}{health}"));

    // A 120 KB body, streamed and not: it must arrive at the second provider byte for byte.
    let big = json!({
        "model": "m", "max_tokens": 100,
        "messages": [{"role": "user", "content": "x".repeat(120 * 1024)}],
    });
    let big_bytes = serde_json::to_vec(&big).unwrap();
    let phases: [(&str, Option<Fault>); 3] = [
        (
            "529",
            Some(Fault::Status {
                status: 529,
                retry_after: None,
            }),
        ),
        ("500", Some(status_500())),
        ("refused", None),
    ];
    for (phase, fault) in phases {
        match fault {
            Some(f) => flaky.set_sticky_fault("sk-flaky", Some(f)),
            None => flaky.shutdown(),
        }
        for _ in 0..3 {
            ok(&relay, "m", &[]).await;
        }
        steady.clear();
        let resp = client()
            .post(relay.url("/v1/messages"))
            .header("content-type", "application/json")
            .body(big_bytes.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{phase}");
        assert_eq!(resp.headers()["x-cc-relay-key-id"], "steady", "{phase}");
        assert_eq!(
            steady.requests()[0].body,
            big_bytes,
            "{phase}: body changed"
        );

        let resp = post_messages(&relay, &message_body("m", true), &[]).await;
        assert_eq!(resp.status(), 200, "{phase}");
        let mut text = String::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        }
        assert!(text.contains("event: message_stop"), "{phase}: {text}");
        assert!(!text.contains("event: error"), "{phase}: {text}");
    }
}

#[tokio::test]
async fn the_breaker_opens_half_opens_and_closes() {
    let flaky = start_mock().await;
    let steady = start_mock().await;
    let body = providers(&[
        ("flaky", &flaky, "sk-flaky", "    priority: 2\n"),
        ("steady", &steady, "sk-steady", "    priority: 1\n"),
    ]);
    let health = "health:\n  health_check:\n    enabled: false\n  circuit_breaker:\n    failure_threshold: 2\n    open_duration_ms: 1500\n    half_open_probes: 1\n";
    let relay = RelayProcess::start("", &format!("{body}{health}"));
    flaky.set_sticky_fault("sk-flaky", Some(status_500()));
    for _ in 0..2 {
        ok(&relay, "m", &[]).await;
    }
    assert_eq!(flaky.request_count(), 2);
    let circuit = |v: &Value| v["data"][0]["health"].as_str().unwrap().to_owned();
    assert_eq!(circuit(&get_json(&relay, "/v1/providers").await), "open");
    for _ in 0..5 {
        ok(&relay, "m", &[]).await;
    }
    assert_eq!(
        flaky.request_count(),
        2,
        "an open circuit was sent requests"
    );

    flaky.clear_faults();
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(
        circuit(&get_json(&relay, "/v1/providers").await),
        "half_open"
    );
    let resp = ok(&relay, "m", &[]).await;
    assert_eq!(
        resp.headers()["x-cc-relay-key-id"],
        "flaky",
        "the half-open probe"
    );
    assert_eq!(circuit(&get_json(&relay, "/v1/providers").await), "closed");
    let st = get_json(&relay, "/status").await;
    assert_eq!(st["providers"][0]["circuit"], "closed");
}

#[tokio::test]
async fn an_exhausted_provider_hands_the_request_to_the_next() {
    let (a, b) = (start_mock().await, start_mock().await);
    let body = providers(&[
        ("a", &a, "sk-a", "    priority: 2\n"),
        ("b", &b, "sk-b", "    priority: 1\n"),
    ])
    .replace("key: \"sk-a\"\n", "key: \"sk-a\"\n        rpm_limit: 1\n");
    let relay = RelayProcess::start("", &body);
    let first = ok(&relay, "m", &[]).await;
    assert_eq!(first.headers()["x-cc-relay-key-id"], "a");
    let second = ok(&relay, "m", &[]).await;
    assert_eq!(
        second.headers()["x-cc-relay-key-id"],
        "b",
        "a 429 instead of failover"
    );
}

#[tokio::test]
async fn all_exhausted_is_a_local_429_with_the_earliest_retry_after() {
    let (a, b) = (start_mock().await, start_mock().await);
    let body = providers(&[
        ("a", &a, "sk-a", "    priority: 2\n"),
        ("b", &b, "sk-b", "    priority: 1\n"),
    ]);
    let relay = RelayProcess::start("", &body);
    let reset_in = |secs: u64| {
        let at = SystemTime::now() + Duration::from_secs(secs);
        humantime::format_rfc3339_seconds(at).to_string()
    };
    let empty_until = |secs| {
        Fault::RateLimitHeaders(vec![
            ("anthropic-ratelimit-requests-limit".into(), "50".into()),
            ("anthropic-ratelimit-requests-remaining".into(), "0".into()),
            ("anthropic-ratelimit-requests-reset".into(), reset_in(secs)),
        ])
    };
    a.push_fault(Some("sk-a"), empty_until(40));
    b.push_fault(Some("sk-b"), empty_until(5));
    assert_eq!(
        ok(&relay, "m", &[]).await.headers()["x-cc-relay-key-id"],
        "a"
    );
    assert_eq!(
        ok(&relay, "m", &[]).await.headers()["x-cc-relay-key-id"],
        "b"
    );
    let refused = post_messages(&relay, &message_body("m", false), &[]).await;
    assert_eq!(refused.status(), 429);
    let after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=6).contains(&after),
        "retry-after {after}: not the earliest (b's, 5 s)"
    );
    assert_eq!(
        error_type(&refused.json().await.unwrap()),
        "rate_limit_error"
    );
    assert_eq!(
        (a.request_count(), b.request_count()),
        (1, 1),
        "no upstream request"
    );
}

#[tokio::test]
async fn a_session_sticks_to_one_key_while_others_spread() {
    let mock = start_mock().await;
    let keys = [("k1", "sk-1"), ("k2", "sk-2"), ("k3", "sk-3")];
    let relay = RelayProcess::start(
        "",
        &format!("providers:\n{}", mock_provider("p", &mock, &keys, "")),
    );
    let mut sticky = std::collections::HashSet::new();
    for _ in 0..20 {
        let resp = ok(&relay, "m", &[("x-claude-code-session-id", "session-one")]).await;
        sticky.insert(
            resp.headers()["x-cc-relay-key-id"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(sticky.len(), 1, "one session used keys {sticky:?}");
    let mut spread = std::collections::HashSet::new();
    for i in 0..9 {
        let session = format!("session-{i}");
        let resp = ok(&relay, "m", &[("x-claude-code-session-id", &session)]).await;
        spread.insert(
            resp.headers()["x-cc-relay-key-id"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert!(spread.len() > 1, "other sessions all used {spread:?}");

    // metadata.user_id identifies a session too.
    let mut by_user = std::collections::HashSet::new();
    for _ in 0..10 {
        let mut body = message_body("m", false);
        body["metadata"] = json!({"user_id": "user-42"});
        let resp = post_messages(&relay, &body, &[]).await;
        by_user.insert(
            resp.headers()["x-cc-relay-key-id"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(by_user.len(), 1, "{by_user:?}");
}

#[tokio::test]
async fn signed_thinking_returns_to_the_provider_that_produced_it() {
    let (a, b) = (start_mock().await, start_mock().await);
    let body = providers(&[
        ("a", &a, "sk-a", "    priority: 2\n"),
        ("b", &b, "sk-b", "    priority: 1\n"),
    ]);
    let relay = RelayProcess::start("", &body);
    // The conversation's first turn fails over to b.
    a.push_fault(
        Some("sk-a"),
        Fault::Status {
            status: 529,
            retry_after: None,
        },
    );
    let session = [("x-claude-code-session-id", "thinking-session")];
    assert_eq!(
        ok(&relay, "m", &session).await.headers()["x-cc-relay-key-id"],
        "b"
    );
    // The next turn carries b's signed thinking: back to b, although a is healthy again.
    let mut turn = message_body("m", false);
    turn["messages"] = json!([
        {"role": "user", "content": "think"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "EqQBCkgIARABGAIiQL"},
            {"type": "text", "text": "done"}]},
        {"role": "user", "content": "again"},
    ]);
    for _ in 0..3 {
        let resp = post_messages(&relay, &turn, &session).await;
        assert_eq!(resp.headers()["x-cc-relay-key-id"], "b");
    }
    // A session without history there goes where the strategy says.
    let resp = post_messages(&relay, &message_body("m", false), &[]).await;
    assert_eq!(resp.headers()["x-cc-relay-key-id"], "a");
}

#[tokio::test]
async fn a_key_at_max_concurrent_hands_a_second_stream_to_another_key() {
    let mock = start_mock().await;
    let extra = "    pooling:\n      strategy: least_loaded\n";
    let body = format!(
        "providers:\n{}",
        mock_provider("p", &mock, &[("first", "sk-1"), ("second", "sk-2")], extra)
    )
    .replace(
        "key: \"sk-1\"\n",
        "key: \"sk-1\"\n        priority: 2\n        max_concurrent: 1\n",
    );
    let relay = RelayProcess::start("", &body);
    let slow = [("x-mock-event-interval-ms", "150")];
    let one = post_messages(&relay, &message_body("m", true), &slow).await;
    let two = post_messages(&relay, &message_body("m", true), &slow).await;
    let ids = (
        one.headers()["x-cc-relay-key-id"]
            .to_str()
            .unwrap()
            .to_owned(),
        two.headers()["x-cc-relay-key-id"]
            .to_str()
            .unwrap()
            .to_owned(),
    );
    assert_eq!(ids, ("first".to_owned(), "second".to_owned()));
    let (t1, t2) = tokio::join!(one.text(), two.text());
    assert!(t1.unwrap().contains("message_stop") && t2.unwrap().contains("message_stop"));
}

#[tokio::test]
async fn providers_endpoint_lists_circuits_and_keys_by_id_only() {
    let (a, b) = (start_mock().await, start_mock().await);
    let body = providers(&[
        ("a", &a, "sk-secret-a", ""),
        ("b", &b, "sk-secret-b", "    enabled: false\n"),
    ]);
    let relay = RelayProcess::start("", &body);
    let resp = client()
        .get(relay.url("/v1/providers"))
        .send()
        .await
        .unwrap();
    let text = resp.text().await.unwrap();
    assert!(!text.contains("sk-secret"), "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["object"], "list");
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 1, "disabled providers are not listed");
    assert_eq!(data[0]["name"], "a");
    assert_eq!(data[0]["type"], "anthropic");
    assert_eq!(data[0]["health"], "closed");
    assert_eq!(data[0]["active"], true);
    assert_eq!(data[0]["keys"][0]["id"], "a");
}

#[test]
fn the_go_projects_routing_and_health_sections_load_without_warnings() {
    // The `routing:` and `health:` sections of the Go cc-relay's example.yaml, verbatim but for
    // comments (github.com/omarluq/cc-relay, MIT).
    let go = "routing:\n  strategy: \"failover\"\n  failover_timeout: 5000\n  debug: false\n\
health:\n  health_check:\n    enabled: true\n    interval_ms: 10000\n  circuit_breaker:\n    \
failure_threshold: 5\n    open_duration_ms: 30000\n    half_open_probes: 3\n";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("go.yaml");
    std::fs::write(
        &path,
        format!("providers:\n  - name: anthropic\n    type: anthropic\n{go}"),
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["config", "validate", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{all}");
    assert!(!all.contains("not implemented"), "{all}");
    assert!(!all.to_lowercase().contains("warn"), "{all}");
}
