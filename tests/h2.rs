//! HTTP/2 from clients behaves as HTTP/1.1: the same requests — JSON, a stream, the relay's own
//! errors, authentication, local answers, a status-driven retry on another key, a client's own
//! 429 — run over both on one relay (h2c with prior knowledge on its plain listener), with the
//! same answers.

mod common;

use std::time::Duration;

use common::*;

fn h2c() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// What one exchange came to: the HTTP version, the status, the `error.type` (or `-`) and
/// whether the body was a complete answer (a JSON message or an SSE stream to message_stop).
async fn exchange(
    http: &reqwest::Client,
    relay: &RelayProcess,
    method: reqwest::Method,
    path: &str,
    key: Option<&str>,
    body: Option<serde_json::Value>,
) -> (reqwest::Version, u16, String, bool) {
    let mut req = http.request(method, relay.url(path));
    if let Some(key) = key {
        req = req.header("x-api-key", key);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.unwrap();
    let (version, status) = (resp.version(), resp.status().as_u16());
    let text = resp.text().await.unwrap();
    let error = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["error"]["type"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "-".to_owned());
    let complete = text.contains("event: message_stop") || text.contains("\"usage\"");
    (version, status, error, complete)
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_errors_auth_local_answers_and_retries_are_the_same_over_h2c_and_http1() {
    let mock = start_mock().await;
    let config = format!(
        "{}clients:\n  - name: one\n    key: one-key\n    rpm_limit: 1\n  - name: two\n    key: \
         two-key\n    rpm_limit: 1\n",
        // k1 is tried first: its refusal is the first request's.
        pool_config(
            &mock,
            &[("k1", "sk-1", "priority: 2"), ("k2", "sk-2", "priority: 1")],
            "",
        )
    );
    let relay = RelayProcess::start(
        "  enable_http2: true\n  auth:\n    api_key: relay-key\n",
        &config,
    );
    let key = Some("relay-key");
    let mut outcomes = Vec::new();
    for (http, version, own) in [
        (client(), reqwest::Version::HTTP_11, "one-key"),
        (h2c(), reqwest::Version::HTTP_2, "two-key"),
    ] {
        use reqwest::Method;
        let json = Some(message_body("m", false));
        let stream = Some(message_body("m", true));
        // One of the pool's keys refuses its next request: the relay retries on the other.
        mock.push_fault(Some("sk-1"), throttled("1"));
        let upstream_before = mock.request_count();
        let not_an_object = Some(serde_json::json!(["not", "an", "object"]));
        let requests = [
            (Method::POST, "/v1/messages", key, json.clone()),
            (Method::POST, "/v1/messages", key, stream),
            (Method::POST, "/v1/messages", key, json.clone()),
            (Method::POST, "/v1/messages", None, json.clone()),
            (Method::POST, "/v1/nowhere", key, json.clone()),
            (Method::GET, "/v1/messages", key, None),
            (Method::POST, "/v1/messages", key, not_an_object),
            (Method::GET, "/health", None, None),
            (Method::GET, "/v1/models", key, None),
            (Method::POST, "/v1/messages", Some(own), json.clone()),
            (Method::POST, "/v1/messages", Some(own), json),
        ];
        let mut runs = Vec::new();
        for (method, path, key, body) in requests {
            runs.push(exchange(&http, &relay, method, path, key, body).await);
        }
        for (i, run) in runs.iter().enumerate() {
            assert_eq!(run.0, version, "request {i} went over {:?}", run.0);
        }
        outcomes.push(
            runs.into_iter()
                .map(|(_, status, error, complete)| (status, error, complete))
                .collect::<Vec<_>>(),
        );
        // Four answered upstream, and the refused attempt that was retried.
        assert_eq!(mock.request_count() - upstream_before, 5);
        // The refusing key's cooldown (retry-after 1) ends before the next protocol's turn.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let expected: Vec<(u16, &str, bool)> = vec![
        (200, "-", true),                      // JSON, after a retry on the other key
        (200, "-", true),                      // a stream to message_stop
        (200, "-", true),                      // JSON
        (401, "authentication_error", false),  // no key
        (404, "not_found_error", false),       // unknown path
        (405, "invalid_request_error", false), // wrong method
        (400, "invalid_request_error", false), // not an object
        (200, "-", false),                     // /health
        (200, "-", false),                     // /v1/models
        (200, "-", true),                      // the client's one request this minute
        (429, "rate_limit_error", false),      // and its own 429
    ];
    for outcome in &outcomes {
        let got: Vec<(u16, &str, bool)> = outcome
            .iter()
            .map(|(s, e, c)| (*s, e.as_str(), *c))
            .collect();
        assert_eq!(got, expected);
    }
    assert_eq!(outcomes[0], outcomes[1]);
}
