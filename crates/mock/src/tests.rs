//! Drives the mock over real sockets with reqwest.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::*;
use cc_relay::usage::SseUsageParser;

async fn mock(cfg: MockConfig) -> MockUpstream {
    MockUpstream::start(cfg).await.expect("mock starts")
}

fn client() -> reqwest::Client {
    // no_proxy: an HTTP(S)_PROXY in the environment must not intercept 127.0.0.1.
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

fn request_body(stream: bool) -> Value {
    json!({
        "model": "claude-test-1",
        "max_tokens": 64000,
        "stream": stream,
        "messages": [{"role": "user", "content": "Say hello to the mock upstream, please."}],
    })
}

async fn post(
    m: &MockUpstream,
    key: &str,
    stream: bool,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut rb = client()
        .post(format!("{}/v1/messages?beta=true", m.base_url()))
        .header("x-api-key", key)
        .header("anthropic-version", "2023-06-01")
        .json(&request_body(stream));
    for (n, v) in headers {
        rb = rb.header(*n, *v);
    }
    rb.send().await.expect("response")
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

fn expected_input_tokens(stream: bool) -> u64 {
    let len = serde_json::to_vec(&request_body(stream)).map_or(0, |v| v.len());
    (len as u64 / 4).max(1)
}

#[tokio::test]
async fn json_round_trip_and_recording() {
    let m = mock(MockConfig::default()).await;
    let r = post(&m, "sk-a", false, &[("anthropic-beta", "x-1")]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), Some("application/json"));
    assert!(header(&r, "request-id").is_some_and(|v| v.starts_with("req_mock_")));
    assert!(header(&r, "anthropic-ratelimit-requests-limit").is_none());
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["model"], "claude-test-1");
    assert!(v["id"].as_str().is_some_and(|s| s.starts_with("msg_mock_")));
    assert_eq!(v["content"][0]["type"], "text");
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["usage"]["input_tokens"], expected_input_tokens(false));
    assert_eq!(v["usage"]["output_tokens"], 12);
    assert_eq!(v["usage"]["cache_read_input_tokens"], 0);

    let reqs = m.requests();
    assert_eq!(reqs.len(), 1);
    let rec = &reqs[0];
    assert_eq!(rec.method, "POST");
    assert_eq!(rec.path_and_query, "/v1/messages?beta=true");
    assert_eq!(rec.api_key.as_deref(), Some("sk-a"));
    assert_eq!(rec.header("Anthropic-Beta"), Some("x-1"));
    assert_eq!(rec.json()["max_tokens"], 64000);
    assert_eq!(m.request_count(), 1);
    m.clear();
    assert!(m.requests().is_empty());
    assert_eq!(m.request_count(), 0);
}

#[tokio::test]
async fn other_endpoints_and_errors() {
    let m = mock(MockConfig::default()).await;
    let c = client();
    let base = m.base_url();

    let r = c.head(format!("{base}/")).send().await.expect("head");
    assert_eq!(r.status(), 200);
    assert!(header(&r, "content-type").is_some() && header(&r, "request-id").is_some());

    let r = c
        .get(format!("{base}/v1/models"))
        .send()
        .await
        .expect("models");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert!(v["data"].as_array().is_some_and(|a| !a.is_empty()));

    let r = c
        .post(format!("{base}/v1/messages/count_tokens"))
        .header("authorization", "Bearer sk-bearer")
        .json(&request_body(false))
        .send()
        .await
        .expect("count");
    let v: Value = r.json().await.expect("json");
    assert_eq!(v, json!({"input_tokens": expected_input_tokens(false)}));
    assert_eq!(m.requests()[2].api_key.as_deref(), Some("sk-bearer"));

    let r = c.get(format!("{base}/v2/nope")).send().await.expect("404");
    assert_eq!(r.status(), 404);
    assert_eq!(header(&r, "content-type"), Some("application/json"));
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "not_found_error");
    assert!(v["error"]["message"].is_string());

    let r = c
        .post(format!("{base}/v1/messages"))
        .body("not json")
        .send()
        .await
        .expect("400");
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn sse_arrives_event_by_event_and_parses() {
    let interval = Duration::from_millis(40);
    let m = mock(MockConfig {
        event_interval: interval,
        ..MockConfig::default()
    })
    .await;
    let start = Instant::now();
    let mut r = post(&m, "sk-a", true, &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    let mut first_at = None;
    let mut text = Vec::new();
    let mut parser = SseUsageParser::new();
    while let Some(chunk) = r.chunk().await.expect("chunk") {
        first_at.get_or_insert_with(|| start.elapsed());
        parser.feed(&chunk);
        text.extend_from_slice(&chunk);
    }
    let total = start.elapsed();
    let first_at = first_at.expect("some chunk");
    // 5 deltas, each preceded by `interval`: the first event must come well before the end.
    assert!(total >= interval * 5, "{total:?}");
    assert!(
        first_at + interval * 3 <= total,
        "{first_at:?} vs {total:?}"
    );

    let text = String::from_utf8(text).expect("utf8");
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    let mut want = vec!["message_start", "content_block_start", "ping"];
    want.extend(["content_block_delta"; 5]);
    want.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names, want);
    assert!(text.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));

    assert!(parser.message_stopped());
    let u = parser.usage();
    assert_eq!(u.input_tokens, expected_input_tokens(true));
    assert_eq!(u.output_tokens, 12);
}

#[tokio::test]
async fn rate_limit_headers_decrease_then_429() {
    let m = mock(MockConfig::default()).await;
    let limits = KeyLimits {
        rpm: 3,
        itpm: 100_000,
        otpm: 1_000,
    };
    m.set_key_limits("sk-lim", limits);
    let remaining = |r: &reqwest::Response, dim: &str| -> u64 {
        header(r, &format!("anthropic-ratelimit-{dim}-remaining"))
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX)
    };
    let r1 = post(&m, "sk-lim", false, &[]).await;
    let r2 = post(&m, "sk-lim", true, &[]).await;
    assert_eq!((r1.status().as_u16(), r2.status().as_u16()), (200, 200));
    assert_eq!(header(&r1, "anthropic-ratelimit-requests-limit"), Some("3"));
    assert_eq!(remaining(&r1, "requests"), 2);
    assert_eq!(remaining(&r2, "requests"), 1);
    assert!(remaining(&r2, "input-tokens") < remaining(&r1, "input-tokens"));
    assert_eq!(remaining(&r1, "output-tokens"), 1_000 - 12);
    assert_eq!(remaining(&r2, "output-tokens"), 1_000 - 24);
    // tokens-* = the most restrictive token dimension (output here).
    assert_eq!(remaining(&r2, "tokens"), 1_000 - 24);
    let reset = header(&r1, "anthropic-ratelimit-requests-reset").unwrap_or("");
    assert!(
        reset.len() == 20 && reset.ends_with('Z') && &reset[10..11] == "T",
        "{reset}"
    );
    // Keys without limits get no headers.
    let other = post(&m, "sk-free", false, &[]).await;
    assert!(header(&other, "anthropic-ratelimit-requests-limit").is_none());

    assert_eq!(post(&m, "sk-lim", false, &[]).await.status(), 200);
    let r = post(&m, "sk-lim", false, &[]).await;
    assert_eq!(r.status(), 429);
    let retry: u64 = header(&r, "retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!((1..=20).contains(&retry), "retry-after {retry}");
    assert_eq!(remaining(&r, "requests"), 0);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"]["type"], "rate_limit_error");
}

#[tokio::test]
async fn input_token_limit_429() {
    let m = mock(MockConfig {
        default_limits: KeyLimits {
            rpm: 0,
            itpm: expected_input_tokens(false) + 5,
            otpm: 0,
        },
        ..MockConfig::default()
    })
    .await;
    assert_eq!(post(&m, "k", false, &[]).await.status(), 200);
    let r = post(&m, "k", false, &[]).await;
    assert_eq!(r.status(), 429);
    assert!(header(&r, "retry-after").is_some());
    assert!(header(&r, "anthropic-ratelimit-input-tokens-remaining").is_some());
    assert!(header(&r, "anthropic-ratelimit-requests-limit").is_none());
}

#[tokio::test]
async fn status_fault_and_header_overrides() {
    let m = mock(MockConfig::default()).await;
    m.push_fault(
        None,
        Fault::Status {
            status: 529,
            retry_after: Some("7".into()),
        },
    );
    let r = post(&m, "sk-a", false, &[]).await;
    assert_eq!(r.status(), 529);
    assert_eq!(header(&r, "retry-after"), Some("7"));
    assert!(header(&r, "request-id").is_some());
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"]["type"], "overloaded_error");

    let r = post(
        &m,
        "sk-a",
        false,
        &[("x-mock-status", "429"), ("x-mock-retry-after", "3")],
    )
    .await;
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "retry-after"), Some("3"));
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"]["type"], "rate_limit_error");

    for (status, ty) in [(401, "authentication_error"), (413, "request_too_large")] {
        let s = status.to_string();
        let r = post(&m, "sk-a", false, &[("x-mock-status", &s)]).await;
        assert_eq!(r.status().as_u16(), status);
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["error"]["type"], ty);
    }

    let r = post(&m, "sk-a", false, &[("x-mock-output-tokens", "777")]).await;
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["usage"]["output_tokens"], 777);

    let mut r = post(&m, "sk-a", true, &[("x-mock-events", "2")]).await;
    let mut p = SseUsageParser::new();
    let mut text = Vec::new();
    while let Some(c) = r.chunk().await.expect("chunk") {
        p.feed(&c);
        text.extend_from_slice(&c);
    }
    let deltas = String::from_utf8_lossy(&text)
        .matches("event: content_block_delta")
        .count();
    assert_eq!(deltas, 2);
    assert!(p.message_stopped());

    let t = Instant::now();
    let r = post(
        &m,
        "sk-a",
        true,
        &[
            ("x-mock-latency-ms", "150"),
            ("x-mock-event-interval-ms", "10"),
        ],
    )
    .await;
    assert!(t.elapsed() >= Duration::from_millis(150));
    let body = r.text().await.expect("body");
    assert!(body.contains("message_stop"));
    assert!(t.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn drop_after_events_cuts_the_stream() {
    let m = mock(MockConfig::default()).await;
    m.push_fault(Some("sk-a"), Fault::DropAfterEvents(3));
    let mut r = post(&m, "sk-a", true, &[]).await;
    assert_eq!(r.status(), 200);
    let mut got = Vec::new();
    let err = loop {
        match r.chunk().await {
            Ok(Some(c)) => got.extend_from_slice(&c),
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    assert!(err.is_some(), "body must end with an error");
    let text = String::from_utf8_lossy(&got);
    assert_eq!(text.matches("\n\n").count(), 3, "{text}");
    assert!(text.starts_with("event: message_start"));

    // Non-streaming: headers, then half the body, then the cut.
    m.push_fault(Some("sk-a"), Fault::DropAfterEvents(0));
    let r = post(&m, "sk-a", false, &[]).await;
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.is_err());

    // The mock keeps serving afterwards.
    assert_eq!(post(&m, "sk-a", false, &[]).await.status(), 200);
}

#[tokio::test]
async fn stall_latency_close_and_error_event_faults() {
    let m = mock(MockConfig::default()).await;
    let stall = Duration::from_millis(200);

    m.push_fault(None, Fault::StallAfterEvents(2, stall));
    let t = Instant::now();
    let mut r = post(&m, "sk-a", true, &[]).await;
    let mut first = None;
    let mut p = SseUsageParser::new();
    while let Some(c) = r.chunk().await.expect("chunk") {
        first.get_or_insert_with(|| t.elapsed());
        p.feed(&c);
    }
    assert!(p.message_stopped());
    assert!(t.elapsed() >= stall);
    assert!(
        first.is_some_and(|f| f < stall),
        "events before the stall arrive"
    );

    m.push_fault(None, Fault::StallAfterEvents(0, stall));
    let t = Instant::now();
    let v: Value = post(&m, "sk-a", false, &[])
        .await
        .json()
        .await
        .expect("stalled json completes");
    assert!(t.elapsed() >= stall);
    assert_eq!(v["type"], "message");

    m.push_fault(None, Fault::Latency(stall));
    let t = Instant::now();
    assert_eq!(post(&m, "sk-a", false, &[]).await.status(), 200);
    assert!(t.elapsed() >= stall);

    m.push_fault(None, Fault::CloseBeforeResponse);
    let res = client()
        .post(format!("{}/v1/messages", m.base_url()))
        .json(&request_body(false))
        .send()
        .await;
    assert!(res.is_err(), "no response expected");
    assert_eq!(m.request_count(), 4);

    m.push_fault(
        None,
        Fault::ErrorEventAfterEvents(4, "overloaded_error".into()),
    );
    let mut r = post(&m, "sk-a", true, &[]).await;
    let mut p = SseUsageParser::new();
    while let Some(c) = r.chunk().await.expect("chunk") {
        p.feed(&c);
    }
    assert_eq!(p.error_type(), Some("overloaded_error"));
    assert!(!p.message_stopped());

    m.push_fault(
        None,
        Fault::RateLimitHeaders(vec![(
            "anthropic-ratelimit-requests-remaining".into(),
            "0".into(),
        )]),
    );
    let r = post(&m, "sk-a", false, &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "anthropic-ratelimit-requests-remaining"),
        Some("0")
    );
}

#[tokio::test]
async fn one_shot_vs_sticky_by_key() {
    let m = mock(MockConfig::default()).await;
    let fault = |s| Fault::Status {
        status: s,
        retry_after: None,
    };
    m.push_fault(Some("sk-a"), fault(500));
    // A preflight does not consume it; another key does not match it.
    let r = client().head(format!("{}/", m.base_url())).send().await;
    assert_eq!(r.map(|r| r.status().as_u16()).ok(), Some(200));
    assert_eq!(post(&m, "sk-b", false, &[]).await.status(), 200);
    assert_eq!(post(&m, "sk-a", false, &[]).await.status(), 500);
    assert_eq!(post(&m, "sk-a", false, &[]).await.status(), 200);

    m.set_sticky_fault("sk-a", Some(fault(529)));
    m.push_fault(Some("sk-a"), fault(401));
    assert_eq!(post(&m, "sk-a", false, &[]).await.status(), 401);
    for _ in 0..3 {
        assert_eq!(post(&m, "sk-a", false, &[]).await.status(), 529);
    }
    assert_eq!(post(&m, "sk-b", false, &[]).await.status(), 200);
    m.set_sticky_fault("sk-a", None);
    assert_eq!(post(&m, "sk-a", false, &[]).await.status(), 200);

    let by_key = m.requests_by_key();
    assert_eq!(by_key.get("sk-a"), Some(&7));
    assert_eq!(by_key.get("sk-b"), Some(&2));
    assert_eq!(by_key.len(), 2);
}

#[tokio::test]
async fn no_record_counts_and_shutdown() {
    let m = mock(MockConfig {
        record: false,
        ..MockConfig::default()
    })
    .await;
    for _ in 0..3 {
        assert_eq!(post(&m, "sk-a", false, &[]).await.status(), 200);
    }
    assert!(m.requests().is_empty());
    assert_eq!(m.request_count(), 3);
    assert_eq!(m.requests_by_key().get("sk-a"), Some(&3));

    m.shutdown();
    // Give the accept loop a moment to drop the listener.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let res = client().get(format!("{}/", m.base_url())).send().await;
    assert!(res.is_err(), "connections are refused after shutdown");
}
