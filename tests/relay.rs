//! The relay end to end: the real binary over real sockets against the in-repo mock upstream.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};

fn single_key(mock: &MockUpstream, extra: &str) -> String {
    format!(
        "providers:\n{}",
        mock_provider("anthropic", mock, &[("main", "sk-upstream-1")], extra)
    )
}

#[tokio::test]
async fn json_round_trip_injects_the_key_and_strips_client_credentials() {
    let mock = start_mock().await;
    let relay = RelayProcess::start("", &single_key(&mock, ""));
    let resp = client()
        .post(relay.url("/v1/messages?beta=true"))
        .header("x-api-key", "client-key")
        .header("authorization", "Bearer client-bearer")
        .header("anthropic-version", "2023-06-01")
        .header("anthropic-beta", "interleaved-thinking-2025-05-14")
        .header("x-custom-e2e", "kept")
        .json(&message_body("claude-sonnet-4-5", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-request-id").is_some());
    assert_eq!(resp.headers()["x-cc-relay-key-id"], "main");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["type"], "message");
    assert_eq!(body["model"], "claude-sonnet-4-5");

    let seen = mock.requests();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!(r.path_and_query, "/v1/messages?beta=true");
    assert_eq!(r.api_key.as_deref(), Some("sk-upstream-1"));
    assert_eq!(r.header("x-api-key"), Some("sk-upstream-1"));
    assert_eq!(
        r.header("authorization"),
        None,
        "client bearer leaked upstream"
    );
    assert_eq!(r.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(
        r.header("anthropic-beta"),
        Some("interleaved-thinking-2025-05-14")
    );
    assert_eq!(r.header("x-custom-e2e"), Some("kept"));
    assert_eq!(r.header("host"), Some(mock.addr().to_string().as_str()));
    assert_eq!(r.json()["messages"][0]["content"], "Hello there");
}

#[tokio::test]
async fn hop_by_hop_headers_stay_on_the_client_side() {
    let mock = start_mock().await;
    let relay = RelayProcess::start("", &single_key(&mock, ""));
    let resp = client()
        .post(relay.url("/v1/messages"))
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic cHJveHk6c2VjcmV0")
        .header("te", "trailers")
        .header("accept-encoding", "gzip")
        .header("x-custom-e2e", "kept")
        .json(&message_body("m", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = mock.requests();
    let r = &seen[0];
    for name in ["keep-alive", "proxy-authorization", "te", "accept-encoding"] {
        assert_eq!(r.header(name), None, "{name} reached the upstream");
    }
    assert_eq!(r.header("x-custom-e2e"), Some("kept"));
}

#[tokio::test]
async fn streaming_is_relayed_event_by_event() {
    let mock = start_mock().await;
    let relay = RelayProcess::start("", &single_key(&mock, ""));
    let resp = post_messages(
        &relay,
        &message_body("claude-sonnet-4-5", true),
        &[("x-mock-events", "6"), ("x-mock-event-interval-ms", "300")],
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let started = Instant::now();
    let mut stream = resp.bytes_stream();
    let mut text = String::new();
    let mut first_event_at = None;
    while let Some(chunk) = stream.next().await {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        if first_event_at.is_none() && text.contains("message_start") {
            first_event_at = Some(started.elapsed());
        }
    }
    let total = started.elapsed();
    let first = first_event_at.expect("no message_start");
    // Six deltas 300 ms apart: the whole stream takes >= 1.8 s upstream. The first event must
    // not wait for it (no response buffering).
    assert!(
        total >= Duration::from_millis(1500),
        "stream too fast: {total:?}"
    );
    assert!(
        first + Duration::from_millis(1000) < total,
        "first event at {first:?} of {total:?}: the relay buffered the stream"
    );
    assert!(text.contains("event: message_stop"));
    assert_eq!(text.matches("event: content_block_delta").count(), 6);
}

#[tokio::test]
async fn model_mapping_rewrites_the_body_with_a_correct_length() {
    let mock = start_mock().await;
    let extra = "    model_mapping:\n      claude-sonnet-4-5: a-much-longer-upstream-model-name-for-testing\n";
    let relay = RelayProcess::start("", &single_key(&mock, extra));
    // A body over 64 KiB, past Pingora's own retry buffer.
    let mut body = message_body("claude-sonnet-4-5", false);
    body["system"] = json!("x".repeat(100_000));
    let resp = post_messages(&relay, &body, &[]).await;
    assert_eq!(resp.status(), 200);
    let got: Value = resp.json().await.unwrap();
    assert_eq!(
        got["model"],
        "a-much-longer-upstream-model-name-for-testing"
    );
    let r = &mock.requests()[0];
    let sent = r.json();
    assert_eq!(
        sent["model"],
        "a-much-longer-upstream-model-name-for-testing"
    );
    assert_eq!(sent["system"].as_str().unwrap().len(), 100_000);
    assert_eq!(
        r.header("content-length").unwrap(),
        r.body.len().to_string()
    );
}

#[tokio::test]
async fn passthrough_forwards_client_credentials_unchanged() {
    let mock = start_mock().await;
    let body = format!("providers:\n{}", mock_provider("anthropic", &mock, &[], ""));
    let relay = RelayProcess::start("", &body);
    let resp = post_messages(
        &relay,
        &message_body("claude-sonnet-4-5", false),
        &[("authorization", "Bearer sk-ant-oat-subscription")],
    )
    .await;
    assert_eq!(resp.status(), 200);
    let r = &mock.requests()[0];
    assert_eq!(
        r.header("authorization"),
        Some("Bearer sk-ant-oat-subscription")
    );
    assert_eq!(r.header("x-api-key"), None);
}

#[tokio::test]
async fn relay_auth_accepts_the_right_secret_and_never_forwards_it() {
    let mock = start_mock().await;
    let auth = "  auth:\n    api_key: relay-secret\n    allow_bearer: true\n";
    let relay = RelayProcess::start(auth, &single_key(&mock, ""));
    let c = client();

    let denied = c
        .post(relay.url("/v1/messages"))
        .header("x-api-key", "wrong")
        .json(&message_body("m", false))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 401);
    let body: Value = denied.json().await.unwrap();
    assert_eq!(error_type(&body), "authentication_error");

    let missing = c.get(relay.url("/v1/models")).send().await.unwrap();
    assert_eq!(missing.status(), 401);

    for (name, value) in [
        ("x-api-key", "relay-secret"),
        ("authorization", "Bearer relay-secret"),
    ] {
        let ok = c
            .post(relay.url("/v1/messages"))
            .header(name, value)
            .json(&message_body("m", false))
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200, "{name}");
    }
    assert_eq!(
        mock.request_count(),
        2,
        "a refused request reached the upstream"
    );
    for r in mock.requests() {
        assert_eq!(r.header("x-api-key"), Some("sk-upstream-1"));
        assert_eq!(r.header("authorization"), None);
    }
}

#[tokio::test]
async fn local_errors_use_anthropic_shape_and_status() {
    let mock = start_mock().await;
    let relay = RelayProcess::start("  max_body_bytes: 2048\n", &single_key(&mock, ""));
    let c = client();

    let bad = c
        .post(relay.url("/v1/messages"))
        .header("content-type", "application/json")
        .body("{\"model\": \"x\", ")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(
        error_type(&bad.json().await.unwrap()),
        "invalid_request_error"
    );

    let big = c
        .post(relay.url("/v1/messages"))
        .header("content-type", "application/json")
        .body(format!(
            "{{\"model\":\"x\",\"pad\":\"{}\"}}",
            "y".repeat(4096)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 413);
    assert_eq!(error_type(&big.json().await.unwrap()), "request_too_large");

    let unknown = c.get(relay.url("/v1/nope")).send().await.unwrap();
    assert_eq!(unknown.status(), 404);
    assert!(unknown.headers().get("x-request-id").is_some());
    assert_eq!(
        error_type(&unknown.json().await.unwrap()),
        "not_found_error"
    );

    assert_eq!(mock.request_count(), 0, "bad requests reached the upstream");

    // The relay still serves after all of that.
    let ok = c
        .post(relay.url("/v1/messages"))
        .json(&message_body("m", false))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn unreachable_upstream_is_502() {
    let port = free_port();
    let body = format!(
        "providers:\n  - name: gone\n    type: anthropic\n    base_url: \"http://127.0.0.1:{port}\"\n    keys:\n      - key: sk-1\n"
    );
    let relay = RelayProcess::start("", &body);
    let resp = post_messages(&relay, &message_body("m", false), &[]).await;
    assert_eq!(resp.status(), 502);
    assert_eq!(error_type(&resp.json().await.unwrap()), "api_error");
}

#[tokio::test]
async fn silent_upstream_is_504() {
    let mock = start_mock().await;
    let relay = RelayProcess::start("  timeout_ms: 500\n", &single_key(&mock, ""));
    let resp = post_messages(
        &relay,
        &message_body("m", false),
        &[("x-mock-latency-ms", "3000")],
    )
    .await;
    assert_eq!(resp.status(), 504);
    assert_eq!(error_type(&resp.json().await.unwrap()), "api_error");
}

#[tokio::test]
async fn over_max_concurrent_is_503() {
    let mock = start_mock().await;
    let relay = RelayProcess::start("  max_concurrent: 1\n", &single_key(&mock, ""));
    let c = client();
    let slow = tokio::spawn({
        let c = c.clone();
        let url = relay.url("/v1/messages");
        async move {
            c.post(url)
                .header("x-mock-latency-ms", "1500")
                .json(&message_body("m", false))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let second = c
        .post(relay.url("/v1/messages"))
        .json(&message_body("m", false))
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 503);
    assert_eq!(
        error_type(&second.json().await.unwrap()),
        "overloaded_error"
    );
    assert_eq!(slow.await.unwrap(), 200);
}

#[tokio::test]
async fn upstream_drop_mid_stream_ends_the_client_stream() {
    let mock = start_mock().await;
    let relay = RelayProcess::start("", &single_key(&mock, ""));
    mock.push_fault(None, Fault::DropAfterEvents(3));
    let resp = post_messages(&relay, &message_body("m", true), &[]).await;
    assert_eq!(resp.status(), 200);
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut text = String::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(c) => text.push_str(&String::from_utf8_lossy(&c)),
                Err(_) => break,
            }
        }
        text
    })
    .await
    .expect("the client stream hung after the upstream dropped");
    assert!(read.contains("message_start"));
    assert!(!read.contains("message_stop"));
    assert!(
        read.contains("event: error"),
        "the stream should end with an error event: {read}"
    );
}

#[tokio::test]
async fn preflight_health_models_and_count_tokens() {
    let mock = start_mock().await;
    let extra = "    models: [claude-sonnet-4-5, claude-haiku-4-5]\n";
    let relay = RelayProcess::start("", &single_key(&mock, extra));
    let c = client();

    let head = c.head(relay.url("/")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(mock.request_count(), 0, "the preflight went upstream");

    let health: Value = c
        .get(relay.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");

    let models: Value = c
        .get(relay.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<_> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["claude-sonnet-4-5", "claude-haiku-4-5"]);

    let counted: Value = c
        .post(relay.url("/v1/messages/count_tokens"))
        .json(&json!({"model": "claude-sonnet-4-5", "messages": [{"role":"user","content":"hi"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(counted["input_tokens"].as_u64().unwrap() > 0);
    assert_eq!(
        mock.requests()[0].path_and_query,
        "/v1/messages/count_tokens"
    );
}

#[tokio::test]
async fn keepalive_connections_serve_many_requests() {
    let mock = start_mock().await;
    let relay = RelayProcess::start("", &single_key(&mock, ""));
    let c = client();
    for i in 0..20 {
        let resp = c
            .post(relay.url("/v1/messages"))
            .json(&message_body("m", i % 2 == 0))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    }
    assert_eq!(mock.request_count(), 20);
}

/// `cc-relay config validate` on `yaml`: (success, stderr).
fn validate(yaml: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cc-relay.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["config", "validate", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn config_validate_names_the_path_of_a_bad_value() {
    let (ok, stderr) = validate(
        "providers:\n  - name: a\n    type: anthropic\n    keys:\n      - key: k1\n      - key: k2\n        priority: 7\n",
    );
    assert!(!ok);
    assert!(
        stderr.contains("providers[0].keys[1].priority"),
        "stderr: {stderr}"
    );
    assert!(
        !stderr.contains("k2"),
        "a key leaked into the error: {stderr}"
    );

    let (ok, stderr) = validate(
        "providers:\n  - name: a\n    type: anthropic\n    keys:\n      - key: k1\n        rpm_limt: 5\n",
    );
    assert!(!ok);
    assert!(stderr.contains("rpm_limt"), "stderr: {stderr}");
}

#[test]
fn config_init_writes_a_config_that_validates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cc-relay.yaml");
    let out = std::process::Command::new(BIN)
        .args(["config", "init", "-o"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let again = std::process::Command::new(BIN)
        .args(["config", "init", "-o"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!again.status.success(), "init overwrote without --force");
    let out = std::process::Command::new(BIN)
        .args(["config", "validate", "--config"])
        .arg(&path)
        .env_remove("ANTHROPIC_API_KEY")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn debug_logging_never_prints_a_key() {
    let mock = start_mock().await;
    let body = format!("{}logging:\n  level: debug\n", single_key(&mock, ""));
    let relay = RelayProcess::start_with_log("", &body, "debug");
    let resp = post_messages(
        &relay,
        &message_body("m", true),
        &[("x-api-key", "client-secret-key")],
    )
    .await;
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap();
    mock.push_fault(
        None,
        Fault::Status {
            status: 401,
            retry_after: None,
        },
    );
    let refused = post_messages(&relay, &message_body("m", false), &[]).await;
    assert_eq!(refused.status(), 401);
    assert!(relay.wait_for_log("disabled", Duration::from_secs(3)));
    let logs = relay.logs();
    assert!(logs.contains("DEBUG"), "debug logging is not on");
    assert!(
        !logs.contains("sk-upstream-1"),
        "the upstream key reached the log"
    );
    assert!(
        !logs.contains("client-secret-key"),
        "a client key reached the log"
    );
}

#[tokio::test]
async fn base_url_path_prefix_is_joined_with_the_request_path() {
    let mock = start_mock().await;
    let body = format!(
        "providers:\n  - name: zai-like\n    type: zai\n    base_url: \"{}/api/anthropic/\"\n    keys:\n      - key: sk-z\n",
        mock.base_url()
    );
    let relay = RelayProcess::start("", &body);
    // The mock serves /v1/* only, so it answers 404 here; what matters is the path it saw.
    let resp = client()
        .post(relay.url("/v1/messages?beta=true"))
        .json(&message_body("glm", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let seen = mock.requests();
    assert_eq!(
        seen[0].path_and_query,
        "/api/anthropic/v1/messages?beta=true"
    );
    assert_eq!(seen[0].header("x-api-key"), Some("sk-z"));
}

#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mock = start_mock().await;
    let relay = RelayProcess::start("", &single_key(&mock, ""));
    let body = serde_json::to_vec(&message_body("m", false)).unwrap();
    let mut conn = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_millis(800), conn.read(&mut buf))
        .await
        .expect("no 100 Continue: the client would stall")
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    conn.write_all(&body).await.unwrap();
    let n = conn.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert_eq!(mock.requests()[0].header("expect"), None);
}

#[tokio::test]
async fn guessing_the_relay_key_is_throttled_per_address() {
    let mock = start_mock().await;
    let auth = "  auth:\n    api_key: relay-secret\n";
    let relay = RelayProcess::start(auth, &single_key(&mock, ""));
    let mut statuses = Vec::new();
    for i in 0..25 {
        let wrong = format!("guess-{i}");
        let resp = post_messages(&relay, &message_body("m", false), &[("x-api-key", &wrong)]).await;
        statuses.push(resp.status().as_u16());
        if resp.status() == 429 {
            assert_eq!(resp.headers()["retry-after"], "2");
            assert_eq!(error_type(&resp.json().await.unwrap()), "rate_limit_error");
        }
    }
    assert_eq!(statuses[0], 401);
    assert!(statuses.contains(&429), "{statuses:?}");
    // While the address is throttled for its failures, a valid key still passes (behind a
    // load balancer every client shares the address), and the next wrong one is still 429.
    let right = [("x-api-key", "relay-secret")];
    let served = post_messages(&relay, &message_body("m", false), &right).await;
    assert_eq!(served.status(), 200);
    let wrong = post_messages(&relay, &message_body("m", false), &[("x-api-key", "guess")]).await;
    assert_eq!(wrong.status(), 429);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let served = post_messages(&relay, &message_body("m", false), &right).await;
    assert_eq!(served.status(), 200);
    assert_eq!(
        mock.request_count(),
        2,
        "a refused request reached the upstream"
    );
}
