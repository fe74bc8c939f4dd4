//! Regressions for the defects found by probing the relay as an attacker and a careless
//! operator would: a pool key steered to another host, keys locked away by hostile upstream
//! figures, one 403 disabling a pool, a reload that crashes, a failed bind that leaves a zombie,
//! an empty auth variable that opens the relay, and the client's own errors answered as 500s.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A one-provider pool on the mock; `pooling` = extra lines of its `pooling:` section.
fn pool_of(mock: &MockUpstream, keys: &[KeyDef<'_>], pooling: &str) -> String {
    pool_config(mock, keys, &format!("    pooling:\n{pooling}"))
}

/// A request the pool must refuse locally: its `Retry-After` in seconds.
async fn local_retry_after(relay: &RelayProcess) -> u64 {
    let refused = post_messages(relay, &message_body("m", false), &[]).await;
    assert_eq!(refused.status(), 429);
    refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// One raw HTTP/1.1 exchange; the whole response as text (the relay closes or we read what
/// arrives within a second).
async fn raw_exchange(relay: &RelayProcess, request: &[u8]) -> String {
    let mut conn = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
    conn.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(Duration::from_secs(2), conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => {
                out.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&out);
                // A complete response with a Content-Length body is enough.
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().to_owned())
                        })
                        .and_then(|v| v.parse::<usize>().ok());
                    if len.is_some_and(|n| body.len() >= n) {
                        break;
                    }
                }
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn status_line(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"))
}

// ---- 1. absolute-form request target ---------------------------------------------------------

#[tokio::test]
async fn absolute_form_targets_reach_the_upstream_in_origin_form() {
    let mock = start_mock().await;
    let relay = RelayProcess::start("", &pool_of(&mock, &[("k", "sk-pool-secret", "")], ""));
    let body = serde_json::to_string(&message_body("m", false)).unwrap();
    for (target, host) in [
        ("http://evil.example/v1/messages", "evil.example"),
        ("http://evil.example/v1/messages?beta=true", "evil.example"),
        ("http://evil.example:8443/v1/messages", "evil.example:8443"),
    ] {
        let request = format!(
            "POST {target} HTTP/1.1\r\nHost: {host}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let response = raw_exchange(&relay, request.as_bytes()).await;
        assert_eq!(status_line(&response), 200, "{response}");
        let seen = mock.requests().last().unwrap().clone();
        let expected = target.split_once(host).unwrap().1;
        assert_eq!(
            seen.target, expected,
            "the upstream saw the client's target form"
        );
        assert!(seen.header("host").unwrap().starts_with("127.0.0.1"));
    }
}

#[tokio::test]
async fn absolute_form_is_joined_to_a_base_url_prefix_in_origin_form() {
    let mock = start_mock().await;
    let body = format!(
        "providers:\n  - name: p\n    type: anthropic\n    base_url: \"{}/prefix\"\n    keys:\n      - key: sk-1\n",
        mock.base_url()
    );
    let relay = RelayProcess::start("", &body);
    let payload = serde_json::to_string(&message_body("m", false)).unwrap();
    let request = format!(
        "POST http://evil.example/v1/messages?beta=true HTTP/1.1\r\nHost: evil.example\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{payload}",
        payload.len()
    );
    let response = raw_exchange(&relay, request.as_bytes()).await;
    // The mock serves /v1/messages only, so the prefixed path is a 404 from it: what matters is
    // the target it received.
    assert_ne!(status_line(&response), 0);
    assert_eq!(
        mock.requests().last().unwrap().target,
        "/prefix/v1/messages?beta=true"
    );
}

// ---- 2. upstream-supplied numbers are bounded -------------------------------------------------

const BOUNDED: &str = "      max_cooldown_ms: 2000\n";

#[tokio::test]
async fn a_huge_retry_after_is_cut_to_max_cooldown_and_the_key_serves_again() {
    for retry_after in ["99999999999", "Fri, 31 Dec 9999 23:59:59 GMT"] {
        let mock = start_mock().await;
        let relay = RelayProcess::start("", &pool_of(&mock, &[("k", "sk-k", "")], BOUNDED));
        mock.push_fault(Some("sk-k"), throttled(retry_after));
        let first = post_messages(&relay, &message_body("m", false), &[]).await;
        assert_eq!(first.status(), 429, "the upstream's own 429 passes");

        let st = get_json_auth(&relay, "/status", None).await;
        let cooling = key_status(&st, "k")["cooling_down_ms"].as_u64().unwrap();
        assert!(
            cooling <= 2000,
            "cooldown of {cooling} ms from {retry_after:?}"
        );

        // Meanwhile the relay's own 429 tells the truth.
        let after = local_retry_after(&relay).await;
        assert!(after <= 2, "retry-after {after}");

        tokio::time::sleep(Duration::from_millis(2100)).await;
        let again = post_messages(&relay, &message_body("m", false), &[]).await;
        assert_eq!(again.status(), 200, "the key was never tried again");
    }
}

#[tokio::test]
async fn a_reset_in_the_year_9999_holds_a_key_for_at_most_the_cap() {
    let mock = start_mock().await;
    let relay = RelayProcess::start("", &pool_of(&mock, &[("k", "sk-k", "")], BOUNDED));
    let far = "9999-12-31T23:59:59Z".to_string();
    mock.push_fault(
        Some("sk-k"),
        Fault::RateLimitHeaders(vec![
            ("anthropic-ratelimit-requests-limit".into(), "50".into()),
            ("anthropic-ratelimit-requests-remaining".into(), "0".into()),
            ("anthropic-ratelimit-requests-reset".into(), far.clone()),
            (
                "anthropic-ratelimit-output-tokens-limit".into(),
                "8000".into(),
            ),
            (
                "anthropic-ratelimit-output-tokens-remaining".into(),
                "0".into(),
            ),
            ("anthropic-ratelimit-output-tokens-reset".into(), far),
        ]),
    );
    assert_eq!(
        post_messages(&relay, &message_body("m", false), &[])
            .await
            .status(),
        200
    );
    // Held until its (cut) reset.
    let after = local_retry_after(&relay).await;
    assert!(after <= 2, "retry-after {after}");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        post_messages(&relay, &message_body("m", false), &[])
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn hostile_usage_cannot_lock_a_key_with_configured_limits() {
    let mock = start_mock().await;
    let relay = RelayProcess::start(
        "",
        &pool_of(
            &mock,
            &[(
                "k",
                "sk-k",
                "rpm_limit: 1000\nitpm_limit: 1000000\notpm_limit: 400000",
            )],
            "",
        ),
    );
    let body = json!({
        "model": "m", "max_tokens": 64000,
        "messages": [{"role": "user", "content": "hi"}],
    });
    let resp = post_messages(
        &relay,
        &body,
        &[("x-mock-output-tokens", "1000000000000000000")],
    )
    .await;
    assert_eq!(resp.status(), 200);
    // Charged at most what the request could use (max_tokens), so the key still has capacity.
    relay.wait_settled(None).await;
    let st = get_json_auth(&relay, "/status", None).await;
    let remaining = key_status(&st, "k")["output_tokens"]["remaining"]
        .as_u64()
        .unwrap();
    assert!(
        remaining >= 300_000,
        "output remaining {remaining} of 400000"
    );
    assert_eq!(
        post_messages(&relay, &body, &[]).await.status(),
        200,
        "the key was locked by a figure the request could not have used"
    );
}

#[tokio::test]
async fn hostile_usage_without_max_tokens_benches_a_key_for_at_most_two_windows() {
    let mock = start_mock().await;
    let relay = RelayProcess::start(
        "",
        &pool_of(
            &mock,
            &[("k", "sk-k", "rpm_limit: 1000\notpm_limit: 1000")],
            "",
        ),
    );
    // No max_tokens: the body says nothing the figure can be checked against.
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    let resp = post_messages(
        &relay,
        &body,
        &[("x-mock-output-tokens", "1000000000000000000")],
    )
    .await;
    assert_eq!(resp.status(), 200);
    let after = local_retry_after(&relay).await;
    // Its reservation (a full bucket here) plus at most one bucket more: two minutes at most.
    assert!(
        after <= 120,
        "retry-after {after}: the key is locked for good"
    );
}

// ---- 3. 403 is not 401 ----------------------------------------------------------------------

#[tokio::test]
async fn one_403_benches_a_key_briefly_instead_of_disabling_it() {
    let mock = start_mock().await;
    let keys = [("a", "sk-a", "priority: 2"), ("b", "sk-b", "priority: 1")];
    let relay = RelayProcess::start("", &pool_of(&mock, &keys, BOUNDED));
    mock.push_fault(
        Some("sk-a"),
        Fault::Status {
            status: 403,
            retry_after: None,
        },
    );
    let resp = post_messages(&relay, &message_body("m", false), &[]).await;
    assert_eq!(resp.status(), 200, "retried on the other key");
    assert_eq!(resp.headers()["x-cc-relay-key-id"], "b");

    let st = get_json_auth(&relay, "/status", None).await;
    let a = key_status(&st, "a");
    assert_eq!(a["disabled"], false, "one 403 disabled the key: {a}");
    assert_eq!(a["forbidden_strikes"], 1);
    assert!(
        a["cooling_down_ms"].as_u64().is_some_and(|ms| ms <= 1000),
        "{a}"
    );

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let resp = post_messages(&relay, &message_body("m", false), &[]).await;
    assert_eq!(resp.headers()["x-cc-relay-key-id"], "a", "a is used again");
    resp.bytes().await.unwrap();
    // The success is settled when the response has ended (Pingora's logging phase), which may
    // come a moment after the client has read it.
    relay.wait_settled(None).await;
    let st = get_json_auth(&relay, "/status", None).await;
    assert_eq!(
        key_status(&st, "a")["forbidden_strikes"],
        0,
        "a success clears the count"
    );
}

#[tokio::test]
async fn a_pool_of_refused_keys_is_not_answered_as_a_rate_limit() {
    let mock = start_mock().await;
    let relay = RelayProcess::start("", &pool_of(&mock, &[("k", "sk-k", "")], ""));
    mock.set_sticky_fault(
        "sk-k",
        Some(Fault::Status {
            status: 401,
            retry_after: None,
        }),
    );
    let first = post_messages(&relay, &message_body("m", false), &[]).await;
    assert_eq!(first.status(), 401, "the upstream's own answer passes");
    let count = mock.request_count();
    let next = post_messages(&relay, &message_body("m", false), &[]).await;
    assert_eq!(next.status(), 503);
    assert!(
        next.headers().get("retry-after").is_none(),
        "a false Retry-After"
    );
    let body: Value = next.json().await.unwrap();
    assert_eq!(error_type(&body), "api_error");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("reload"));
    assert_eq!(
        mock.request_count(),
        count,
        "a disabled pool reached the upstream"
    );
}

// ---- 4. expansion depth ---------------------------------------------------------------------

fn nested_key(depth: usize) -> String {
    format!("{}${{KEY}}{}", "${N:-".repeat(depth), "}".repeat(depth))
}

#[test]
fn deeply_nested_defaults_are_a_clear_error_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    for depth in [10_000, 40_000] {
        let path = dir.path().join(format!("nested-{depth}.yaml"));
        std::fs::write(
            &path,
            format!(
                "providers:\n  - name: a\n    type: anthropic\n    keys:\n      - key: \"{}\"\n",
                nested_key(depth)
            ),
        )
        .unwrap();
        let out = std::process::Command::new(BIN)
            .args(["config", "validate", "--config"])
            .arg(&path)
            .env("KEY", "sk-secret")
            .env_remove("N")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("providers[0].keys[0].key"), "{stderr}");
        assert!(stderr.contains("nested more than"), "{stderr}");
    }
}

#[test]
fn deeply_nested_yaml_is_a_clear_error_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deep.yaml");
    let depth = 100_000;
    std::fs::write(
        &path,
        format!("routing: {}{}\n", "[".repeat(depth), "]".repeat(depth)),
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["config", "validate", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("recursion limit"), "{stderr}");
}

#[tokio::test]
async fn a_reload_with_deeply_nested_defaults_keeps_the_relay_serving() {
    let mock = start_mock().await;
    let good = pool_of(&mock, &[("k", "sk-k", "")], "");
    let relay = RelayProcess::start_with_env("", &good, &[("KEY", "sk-k")]);
    let hostile = good.replace("key: \"sk-k\"", &format!("key: \"{}\"", nested_key(10_000)));
    relay.rewrite_config("", &hostile);
    relay.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(
        relay.wait_for_log("config reload failed", Duration::from_secs(10)),
        "{}",
        relay.logs()
    );
    assert_eq!(
        post_messages(&relay, &message_body("m", false), &[])
            .await
            .status(),
        200
    );
    let st = get_json_auth(&relay, "/status", None).await;
    assert!(st["reload"]["last_error"]
        .as_str()
        .unwrap()
        .contains("nested more than"));
}

// ---- 5. a failed bind ---------------------------------------------------------------------------

#[tokio::test]
async fn a_second_relay_on_a_busy_port_exits_non_zero_and_leaves_the_first_alone() {
    let mock = start_mock().await;
    let relay = RelayProcess::start("", &pool_of(&mock, &[("k", "sk-k", "")], ""));
    let pid_file = relay.dir.path().join("relay.pid");
    let first_pid = relay.child.id().to_string();
    assert!(wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(&pid_file).is_ok_and(|p| p.trim() == first_pid)
    }));

    let started = Instant::now();
    let second = tokio::task::spawn_blocking({
        let config = relay.config_path.clone();
        move || {
            let mut child = std::process::Command::new(BIN)
                .args(["serve", "--config"])
                .arg(config)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            // A relay that lives on without a listener is the defect: don't wait for ever.
            let exited = wait_until(Duration::from_secs(20), || {
                child.try_wait().unwrap().is_some()
            });
            if !exited {
                let _ = child.kill();
            }
            let out = child.wait_with_output().unwrap();
            assert!(
                exited,
                "still running: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            out
        }
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_ne!(second.status.code(), Some(0), "{stderr}");
    assert!(
        second.status.code().is_some(),
        "killed by a signal: {stderr}"
    );
    assert!(stderr.contains("cannot listen on"), "{stderr}");
    assert!(stderr.contains("in use"), "{stderr}");
    assert!(!stderr.contains("listening on http"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        first_pid,
        "the pid file was taken over"
    );
    assert_eq!(
        post_messages(&relay, &message_body("m", false), &[])
            .await
            .status(),
        200
    );
}

fn wait_until(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

// ---- 6. empty auth variable ---------------------------------------------------------------------

#[test]
fn an_auth_variable_set_to_empty_is_refused_not_an_open_relay() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("auth.yaml");
    std::fs::write(
        &path,
        "server:\n  auth:\n    api_key: \"${RELAY_KEY}\"\nproviders:\n  - name: a\n    type: anthropic\n",
    )
    .unwrap();
    let validate = |value: &str| {
        std::process::Command::new(BIN)
            .args(["config", "validate", "--config"])
            .arg(&path)
            .env("RELAY_KEY", value)
            .output()
            .unwrap()
    };
    let out = validate("");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("server.auth.api_key"), "{stderr}");
    assert!(stderr.contains("RELAY_KEY"), "{stderr}");

    let out = validate("relay-sec\nret-4711");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("server.auth.api_key"), "{stderr}");
    assert!(!stderr.contains("4711"), "the key was shown: {stderr}");

    assert_eq!(validate("relay-secret").status.code(), Some(0));
}

// ---- 7. the smaller ones --------------------------------------------------------------------------

#[tokio::test]
async fn a_malformed_chunked_body_is_the_clients_400() {
    let mock = start_mock().await;
    let relay = RelayProcess::start("", &pool_of(&mock, &[("k", "sk-k", "")], ""));
    let request = b"POST /v1/messages HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n";
    let response = raw_exchange(&relay, request).await;
    assert_eq!(status_line(&response), 400, "{response}");
    assert!(response.contains("invalid_request_error"), "{response}");
    assert_eq!(mock.request_count(), 0);
    assert!(!relay.logs().contains("ERROR"), "{}", relay.logs());
}

#[tokio::test]
async fn bodies_that_are_not_json_objects_or_not_utf8_are_400() {
    let mock = start_mock().await;
    let relay = RelayProcess::start("", &pool_of(&mock, &[("k", "sk-k", "")], ""));
    let bodies: [&[u8]; 3] = [
        br#"["claude",true,5]"#,
        b"{\"model\":\"m\",\"max_tokens\":5,\"messages\":[{\"role\":\"user\",\"content\":\"caf\xe9\"}]}",
        b"\"claude\"",
    ];
    for body in bodies {
        let resp = client()
            .post(relay.url("/v1/messages"))
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{:?}", String::from_utf8_lossy(body));
        assert_eq!(
            error_type(&resp.json().await.unwrap()),
            "invalid_request_error"
        );
    }
    assert_eq!(mock.request_count(), 0, "a bad body reached the upstream");
}

#[tokio::test]
async fn health_says_only_status_and_generation_and_reload_errors_need_auth() {
    let mock = start_mock().await;
    let body = pool_of(&mock, &[("k", "sk-k", "")], "");
    let auth = "  auth:\n    api_key: relay-secret\n";
    let relay = RelayProcess::start(auth, &body);
    let dir = relay.dir.path().to_owned();
    // A config symlinked to a file of secrets: its text must not reach an open endpoint.
    let secrets = dir.join("secrets.txt");
    std::fs::write(&secrets, "root:$6$very-secret-hash:19000:0:99999:7:::\n").unwrap();
    std::fs::remove_file(&relay.config_path).unwrap();
    std::os::unix::fs::symlink(&secrets, &relay.config_path).unwrap();
    relay.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(relay.wait_for_log("config reload failed", Duration::from_secs(10)));

    let health = get_json(&relay, "/health").await;
    let fields: Vec<&String> = health.as_object().unwrap().keys().collect();
    assert_eq!(fields, ["config_generation", "status"], "{health}");

    let denied = client().get(relay.url("/status")).send().await.unwrap();
    assert_eq!(denied.status(), 401);
    let st = get_json_auth(&relay, "/status", Some("relay-secret")).await;
    assert!(st["reload"]["last_error"].as_str().is_some(), "{st}");
    assert_eq!(st["reload"]["attempts"], 1);
}

/// `GET path` as JSON, with the relay key when given.
async fn get_json_auth(relay: &RelayProcess, path: &str, key: Option<&str>) -> Value {
    let mut req = client().get(relay.url(path));
    if let Some(key) = key {
        req = req.header("x-api-key", key);
    }
    req.send().await.unwrap().json().await.unwrap()
}
