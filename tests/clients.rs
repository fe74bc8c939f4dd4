//! Per-client keys (`clients`): each client authenticates with its own key and meets its own
//! limits, budgets and allow-lists; the pool and the other clients are not affected.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use nix::sys::signal::Signal;

/// SHA-256 of `bob-key` (`printf %s bob-key | sha256sum`): the config need not hold bob's key.
const BOB_SHA256: &str = "9b94dc1a51a38769f135edf04033ad7f2f487b6c25929be7a861cfc1ab10cf98";

fn body() -> serde_json::Value {
    message_body("claude-sonnet-4-5", false)
}

async fn send(relay: &RelayProcess, headers: &[(&str, &str)]) -> (u16, serde_json::Value, String) {
    let resp = post_messages(relay, &body(), headers).await;
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, resp.json().await.unwrap(), retry_after)
}

/// `GET /status` with `key`: server.auth's or an `admin` client's.
fn message(body: &serde_json::Value) -> &str {
    body["error"]["message"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_clients_with_their_own_quotas_one_runs_out_the_other_does_not_notice() {
    let mock = start_mock().await;
    let config = format!(
        "{}metrics:\n  enabled: true\nclients:\n  - name: alice\n    key: alice-key\n    \
         rpm_limit: 2\n  - name: bob\n    key_sha256: {BOB_SHA256}\n",
        pool_config(&mock, &[("k1", "sk-1", "")], "")
    );
    let relay = RelayProcess::start("  auth:\n    api_key: shared-key\n", &config);
    let alice = [("x-api-key", "alice-key")];
    for _ in 0..2 {
        assert_eq!(send(&relay, &alice).await.0, 200);
    }
    let (status, body, retry_after) = send(&relay, &alice).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(error_type(&body), "rate_limit_error");
    assert!(
        message(&body)
            .contains("client 'alice' is over its own rpm_limit of 2 requests per minute"),
        "{body}"
    );
    // Two a minute, both taken just now: one more fits in about 30 s.
    let secs: u64 = retry_after.parse().unwrap();
    assert!((25..=31).contains(&secs), "retry-after {secs}");

    // Bob, with his key in either header, and the server.auth key are not affected.
    for i in 0..5 {
        let header = if i % 2 == 0 {
            ("x-api-key", "bob-key".to_owned())
        } else {
            ("authorization", "Bearer bob-key".to_owned())
        };
        let (status, body, _) = send(&relay, &[(header.0, &header.1)]).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(send(&relay, &[("x-api-key", "shared-key")]).await.0, 200);
    relay.wait_settled(Some("shared-key")).await;
    // Alice's refused request never reached the upstream, and no relay key was spent on it.
    assert_eq!(mock.requests().len(), 8);
    let status = status_as(&relay, "shared-key").await;
    assert!(key_status(&status, "k1")["cooling_down_ms"].is_null());
    let clients = status["clients"].as_array().unwrap();
    assert_eq!(clients[0]["name"], "alice");
    assert_eq!(clients[0]["requests"]["limit"], 2);
    assert_eq!(clients[0]["requests"]["remaining"], 0);

    // An unknown key and no key at all: 401.
    for headers in [&[("x-api-key", "mallory-key")][..], &[]] {
        let (status, body, _) = send(&relay, headers).await;
        assert_eq!(status, 401);
        assert_eq!(error_type(&body), "authentication_error");
    }

    // The client's name is a metrics label and in the access log; its key is in neither.
    let metrics = client()
        .get(relay.url("/metrics"))
        .header("x-api-key", "shared-key")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", relay.logs()))
        .text()
        .await
        .unwrap();
    for line in [
        "cc_relay_client_requests_total{client=\"alice\",status_class=\"2xx\"} 2",
        "cc_relay_client_requests_total{client=\"alice\",status_class=\"4xx\"} 1",
        "cc_relay_client_requests_total{client=\"bob\",status_class=\"2xx\"} 5",
        "cc_relay_client_refusals_total{client=\"alice\",limit=\"rpm_limit\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} not in:\n{metrics}");
    }
    assert!(relay.wait_for_log("client_name=bob", Duration::from_secs(2)));
    let logs = relay.logs();
    assert!(logs.contains("client_name=alice method=POST path=\"/v1/messages\" status=429"));
    for secret in ["alice-key", "bob-key", "shared-key"] {
        assert!(
            !logs.contains(secret) && !metrics.contains(secret),
            "{secret} leaked"
        );
    }
}

/// Seconds until the next UTC midnight, and that midnight as `2026-12-01T00:00:00Z`'s date.
fn next_midnight() -> (u64, u64) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let midnight = (now / 86_400 + 1) * 86_400;
    (midnight - now, midnight)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spent_budget_says_when_it_resets_and_survives_a_reload_and_a_restart() {
    let mock = start_mock().await;
    let state_dir = tempfile::tempdir().unwrap();
    let state_file = state_dir.path().join("budgets.json");
    let server = format!("  state_file: \"{}\"\n", state_file.display());
    let config = |extra: &str| {
        format!(
            "{}clients:\n  - name: carol\n    key: carol-key\n    daily_token_budget: 20\n  \
             - name: dan\n    key: dan-key\n    monthly_token_budget: 1000000\n    \
             admin: true\n{extra}",
            pool_config(&mock, &[("k1", "sk-1", "")], "")
        )
    };
    let mut relay = RelayProcess::start(&server, &config(""));
    let carol = [("x-api-key", "carol-key")];
    // Under the budget when it starts; the response's usage (input + 12 output) spends it,
    // once the relay has settled it (after the client has its response).
    assert_eq!(send(&relay, &carol).await.0, 200);
    relay.wait_settled(Some("dan-key")).await;
    let refused = |(status, body, retry_after): (u16, serde_json::Value, String)| {
        assert_eq!(status, 429, "{body}");
        assert_eq!(error_type(&body), "rate_limit_error");
        let (secs_left, _) = next_midnight();
        let after: u64 = retry_after.parse().unwrap();
        assert!(after.abs_diff(secs_left) <= 5, "{after} vs {secs_left}");
        let text = message(&body);
        assert!(
            text.starts_with("client 'carol' has used its daily_token_budget (")
                && text.contains(" of 20 tokens); it resets at ")
                && text.ends_with("T00:00:00Z"),
            "{text}"
        );
    };
    refused(send(&relay, &carol).await);
    assert_eq!(send(&relay, &[("x-api-key", "dan-key")]).await.0, 200);
    relay.wait_settled(Some("dan-key")).await;

    // A reload keeps the count.
    relay.rewrite_config(&server, &config("metrics:\n  enabled: true\n"));
    relay.signal(Signal::SIGHUP);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while get_json(&relay, "/health").await["config_generation"] != 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the reload did not land"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    refused(send(&relay, &carol).await);

    // A restart too: the stopping relay saves what it counted, the next one reads it.
    relay.signal(Signal::SIGTERM);
    assert!(relay.wait_exit(Duration::from_secs(10)).is_some());
    let saved = std::fs::read_to_string(&state_file).unwrap();
    let file: serde_json::Value = serde_json::from_str(&saved).unwrap();
    let used = file["clients"]["carol"]["day_tokens"].as_u64().unwrap();
    assert!(used >= 20, "{saved}");
    assert!(file["clients"]["dan"]["month_tokens"].as_u64().unwrap() > 0);
    assert!(!saved.contains("carol-key"));
    let relay = RelayProcess::start(&server, &config(""));
    refused(send(&relay, &carol).await);
    // Dan is an admin client: his key reads everyone's budgets (carol's would get 403).
    let status = status_as(&relay, "dan-key").await;
    let carol_status = &status["clients"][0];
    assert_eq!(carol_status["daily_budget"]["used"], used);
    assert_eq!(carol_status["daily_budget"]["limit"], 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn allow_lists_keep_a_client_to_its_models_and_providers() {
    let first = start_mock().await;
    let second = start_mock().await;
    let config = format!(
        "providers:\n{}{}clients:\n  - name: erin\n    key: erin-key\n    \
         models: [claude-sonnet-*]\n    providers: [second]\n",
        mock_provider("first", &first, &[("a", "sk-a")], ""),
        mock_provider("second", &second, &[("b", "sk-b")], ""),
    );
    let relay = RelayProcess::start("", &config);
    let erin = [("x-api-key", "erin-key")];
    for _ in 0..3 {
        assert_eq!(send(&relay, &erin).await.0, 200);
    }
    assert_eq!(first.requests().len(), 0);
    assert_eq!(second.requests().len(), 3);
    let resp = post_messages(&relay, &message_body("claude-opus-4-1", false), &erin).await;
    assert_eq!(resp.status(), 403);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(error_type(&body), "permission_error");
    assert_eq!(
        message(&body),
        "client 'erin' may not use model 'claude-opus-4-1' (its models: claude-sonnet-*)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn max_concurrent_caps_a_clients_requests_in_flight() {
    let mock = start_mock().await;
    let config = format!(
        "{}clients:\n  - name: fay\n    key: fay-key\n    max_concurrent: 1\n  - name: gus\n    \
         key: gus-key\n",
        pool_config(&mock, &[("k1", "sk-1", "")], "")
    );
    let relay = std::sync::Arc::new(RelayProcess::start("", &config));
    let slow = {
        let relay = relay.clone();
        tokio::spawn(async move {
            send(
                &relay,
                &[("x-api-key", "fay-key"), ("x-mock-latency-ms", "1500")],
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (status, body, retry_after) = send(&relay, &[("x-api-key", "fay-key")]).await;
    assert_eq!(status, 429, "{body}");
    assert!(message(&body).contains("client 'fay' is over its own max_concurrent of 1"));
    assert_eq!(retry_after, "1");
    // Another client is not held by fay's cap.
    assert_eq!(send(&relay, &[("x-api-key", "gus-key")]).await.0, 200);
    assert_eq!(slow.await.unwrap().0, 200);
    assert_eq!(send(&relay, &[("x-api-key", "fay-key")]).await.0, 200);
}

/// The request body as reqwest sends it (`.json()`), whose length bounds the input charged.
fn body_bytes(body: &serde_json::Value) -> u64 {
    serde_json::to_vec(body).unwrap().len() as u64
}

#[tokio::test(flavor = "multi_thread")]
async fn a_budget_is_charged_no_more_than_the_request_could_have_used() {
    let mock = start_mock().await;
    let state_dir = tempfile::tempdir().unwrap();
    let state_file = state_dir.path().join("budgets.json");
    let server = format!("  state_file: \"{}\"\n", state_file.display());
    let config = format!(
        "{}clients:\n  - name: hal\n    key: hal-key\n    daily_token_budget: 100000\n    \
         monthly_token_budget: 1000000\n    admin: true\n",
        pool_config(&mock, &[("k1", "sk-1", "")], "")
    );
    let relay = RelayProcess::start(&server, &config);
    let hal = [("x-api-key", "hal-key")];
    let mut body = body();
    body["max_tokens"] = 16.into();
    let bytes = body_bytes(&body);

    // An upstream that says a 16-token answer took a billion tokens: 16 are charged.
    let resp = post_messages(
        &relay,
        &body,
        &[hal[0], ("x-mock-output-tokens", "1000000000")],
    )
    .await;
    assert_eq!(resp.status(), 200);
    let usage = resp.json::<serde_json::Value>().await.unwrap()["usage"].clone();
    assert_eq!(usage["output_tokens"], 1_000_000_000, "{usage}");
    let input = usage["input_tokens"].as_u64().unwrap();
    relay.wait_settled(Some("hal-key")).await;
    let first = input + 16;
    assert_eq!(day_used(&relay, "hal-key", 0).await, first);

    // One that says the prompt took 2^64-1 tokens: no more than the body's bytes are charged,
    // and the client is still served.
    let resp = post_messages(
        &relay,
        &body,
        &[hal[0], ("x-mock-input-tokens", "18446744073709551615")],
    )
    .await;
    assert_eq!(resp.status(), 200);
    relay.wait_settled(Some("hal-key")).await;
    let second = first + bytes + 12;
    assert_eq!(day_used(&relay, "hal-key", 0).await, second);
    let status = status_as(&relay, "hal-key").await;
    assert_eq!(status["clients"][0]["monthly_budget"]["used"], second);
    assert_eq!(send(&relay, &hal).await.0, 200);
    // And the file holds no more than that either.
    relay.wait_settled(Some("hal-key")).await;
    let third = day_used(&relay, "hal-key", 0).await;
    assert!(third > second && third < 1000, "{third}");
    wait_saved(&state_file, &[("hal", third)], &relay).await;
}

/// Bob's next request adds to his count, in memory and in the file, and alice keeps hers: his
/// count after it.
async fn bob_adds(
    relay: &RelayProcess,
    state_file: &std::path::Path,
    alice_used: u64,
    bob_used: u64,
) -> u64 {
    assert_eq!(send(relay, &[("x-api-key", "bob-key")]).await.0, 200);
    relay.wait_settled(Some("bob-key")).await;
    let after = day_used(relay, "bob-key", 1).await;
    assert!(after > bob_used, "{after} after {bob_used}");
    wait_saved(state_file, &[("alice", alice_used), ("bob", after)], relay).await;
    assert_eq!(day_used(relay, "bob-key", 0).await, alice_used);
    after
}

#[tokio::test(flavor = "multi_thread")]
async fn a_state_file_replaced_or_deleted_under_the_relay_loses_no_count() {
    let mock = start_mock().await;
    let state_dir = tempfile::tempdir().unwrap();
    let state_file = state_dir.path().join("budgets.json");
    let server = format!("  state_file: \"{}\"\n", state_file.display());
    let config = format!(
        "{}clients:\n  - name: alice\n    key: alice-key\n    daily_token_budget: 100\n  \
         - name: bob\n    key: bob-key\n    daily_token_budget: 1000000\n    admin: true\n",
        pool_config(&mock, &[("k1", "sk-1", "")], "")
    );
    let mut relay = RelayProcess::start(&server, &config);
    let alice = [("x-api-key", "alice-key")];
    let bob = [("x-api-key", "bob-key")];
    // Alice spends her budget in one request; bob uses some of his.
    let resp = post_messages(
        &relay,
        &body(),
        &[alice[0], ("x-mock-output-tokens", "150")],
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(send(&relay, &bob).await.0, 200);
    relay.wait_settled(Some("bob-key")).await;
    let alice_used = day_used(&relay, "bob-key", 0).await;
    let mut bob_used = day_used(&relay, "bob-key", 1).await;
    assert!(alice_used > 150, "{alice_used}");
    wait_saved(
        &state_file,
        &[("alice", alice_used), ("bob", bob_used)],
        &relay,
    )
    .await;

    // Garbage in its place (moved aside, said once), then bob's next request: nobody's count
    // goes down, in memory or in the file written again.
    let garbage = state_dir.path().join("garbage");
    std::fs::write(&garbage, "not a state file {").unwrap();
    std::fs::rename(&garbage, &state_file).unwrap();
    bob_used = bob_adds(&relay, &state_file, alice_used, bob_used).await;
    assert_eq!(send(&relay, &alice).await.0, 429);
    let aside = std::fs::read_to_string(state_dir.path().join("budgets.json.unreadable"));
    assert_eq!(aside.unwrap(), "not a state file {");

    // Deleted: written again with what the relay knows, with no request to prompt it, and
    // bob's next request adds to his count rather than starting it over.
    std::fs::remove_file(&state_file).unwrap();
    wait_saved(
        &state_file,
        &[("alice", alice_used), ("bob", bob_used)],
        &relay,
    )
    .await;
    std::fs::remove_file(&state_file).unwrap();
    bob_used = bob_adds(&relay, &state_file, alice_used, bob_used).await;
    assert_eq!(
        relay.logs().matches("is not a state file").count(),
        1,
        "{}",
        relay.logs()
    );

    // After a restart alice is still over her budget.
    relay.signal(Signal::SIGTERM);
    assert!(relay.wait_exit(Duration::from_secs(10)).is_some());
    let relay = RelayProcess::start(&server, &config);
    assert_eq!(send(&relay, &alice).await.0, 429);
    assert_eq!(day_used(&relay, "bob-key", 0).await, alice_used);
    assert_eq!(day_used(&relay, "bob-key", 1).await, bob_used);
}
