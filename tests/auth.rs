//! Who may do what (issue 26): a valid credential always passes, whatever its address's other
//! clients send (the throttle holds back failures only); `X-Forwarded-For` names the client
//! only when a `server.trusted_proxies` proxy sent it; the operator's endpoints (`/status`,
//! `/metrics`, `/v1/providers`) need `server.auth`'s key or an `admin: true` client.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

const CLIENTS: &str =
    "clients:\n  - name: alice\n    key: alice-key\n  - name: ops\n    key: ops-key\n    admin: true\n";

/// `method path` with `headers`: the status and the body as JSON (`null` when it is not).
async fn call(
    relay_or_url: &str,
    method: reqwest::Method,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, serde_json::Value) {
    let mut req = client().request(method.clone(), format!("{relay_or_url}{path}"));
    if method == reqwest::Method::POST {
        req = req.json(&message_body("claude-sonnet-4-5", false));
    }
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_default())
}

fn base(relay: &RelayProcess) -> String {
    relay.url("").trim_end_matches('/').to_owned()
}

/// Bad keys from `xff` (when given) until one is answered 429: that address is throttled now.
async fn fail_until_throttled(relay: &RelayProcess, xff: Option<&str>) {
    for _ in 0..200 {
        let mut headers = vec![("x-api-key", "revoked-key")];
        if let Some(x) = xff {
            headers.push(("x-forwarded-for", x));
        }
        let (status, body) = call(&base(relay), reqwest::Method::GET, "/v1/models", &headers).await;
        if status == 429 {
            assert_eq!(error_type(&body), "rate_limit_error");
            return;
        }
        assert_eq!(status, 401, "{body}");
    }
    panic!("200 failures in a row were never throttled");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_valid_key_passes_while_a_neighbour_on_its_address_keeps_failing() {
    let mock = start_mock().await;
    let config = format!("{}{CLIENTS}", pool_config(&mock, &[("k1", "sk-1", "")], ""));
    let relay = Arc::new(RelayProcess::start(
        "  auth:\n    api_key: operator-key\n",
        &config,
    ));
    // The neighbour: a revoked key, as fast as the loopback takes it, from the same address.
    let stop = Arc::new(AtomicBool::new(false));
    let neighbour = {
        let (relay, stop) = (relay.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut refused, mut throttled) = (0, 0);
            while !stop.load(Ordering::Relaxed) {
                let headers = [("x-api-key", "revoked-key")];
                let (status, body) =
                    call(&base(&relay), reqwest::Method::GET, "/v1/models", &headers).await;
                match status {
                    401 => refused += 1,
                    429 => throttled += 1,
                    _ => panic!("a revoked key got {status}: {body}"),
                }
            }
            (refused, throttled)
        })
    };
    fail_until_throttled(&relay, None).await;
    // Twenty requests with valid credentials over about two seconds (two throttle windows),
    // a client's key and the operator's, in either header.
    let mut statuses = Vec::new();
    for i in 0..20 {
        let credential = match i % 3 {
            0 => ("x-api-key", "alice-key"),
            1 => ("authorization", "Bearer alice-key"),
            _ => ("x-api-key", "operator-key"),
        };
        let (status, body) = call(
            &base(&relay),
            reqwest::Method::POST,
            "/v1/messages",
            &[credential],
        )
        .await;
        statuses.push((status, body["error"]["message"].clone()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (refused, throttled) = neighbour.await.unwrap();
    let passed = statuses.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(passed, 20, "valid credentials refused: {statuses:?}");
    // The neighbour is still held back: most of its failures were answered 429.
    assert!(throttled > refused, "{refused} × 401, {throttled} × 429");
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_for_names_the_client_only_from_a_trusted_proxy() {
    let mock = start_mock().await;
    let config = format!("{}{CLIENTS}", pool_config(&mock, &[("k1", "sk-1", "")], ""));
    // The tests connect from 127.0.0.1: here that is the load balancer.
    let relay = RelayProcess::start(
        "  auth:\n    api_key: operator-key\n  trusted_proxies: [\"10.0.0.0/8\", \"127.0.0.1/32\"]\n",
        &config,
    );
    let url = base(&relay);
    // One client behind the balancer keeps failing; its address is throttled, not the
    // balancer's: another client's failure is still a plain 401, each time.
    fail_until_throttled(&relay, Some("198.51.100.1")).await;
    for _ in 0..5 {
        let attacker = [
            ("x-api-key", "revoked-key"),
            ("x-forwarded-for", "198.51.100.1"),
        ];
        let (status, _) = call(&url, reqwest::Method::GET, "/v1/models", &attacker).await;
        assert_eq!(status, 429);
        // The client wrote a hop of its own in front: the right-most untrusted one counts.
        let other = [
            ("x-api-key", "mistyped-key"),
            ("x-forwarded-for", "198.51.100.1, 198.51.100.2, 10.1.2.3"),
        ];
        let (status, body) = call(&url, reqwest::Method::GET, "/v1/models", &other).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(error_type(&body), "authentication_error");
    }
    let (status, _) = call(
        &url,
        reqwest::Method::POST,
        "/v1/messages",
        &[
            ("x-api-key", "alice-key"),
            ("x-forwarded-for", "203.0.113.77"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    // The access log names the forwarded address.
    assert!(
        relay.wait_for_log(
            "client=203.0.113.77 client_name=alice",
            Duration::from_secs(5)
        ),
        "{}",
        relay.logs()
    );
    assert!(relay
        .logs()
        .contains("client=198.51.100.2 client_name=- method=GET"));

    // A relay that does not trust this peer ignores what it says: rotating the header does not
    // get past the throttle, and the log shows the real peer.
    let strict = RelayProcess::start(
        "  auth:\n    api_key: operator-key\n  trusted_proxies: [\"10.0.0.0/8\"]\n",
        &config,
    );
    let strict_url = base(&strict);
    fail_until_throttled(&strict, Some("198.51.100.1")).await;
    let spoofed = [
        ("x-api-key", "revoked-key"),
        ("x-forwarded-for", "198.51.100.9"),
    ];
    let (status, _) = call(&strict_url, reqwest::Method::GET, "/v1/models", &spoofed).await;
    assert_eq!(status, 429);
    let (status, _) = call(
        &strict_url,
        reqwest::Method::GET,
        "/v1/models",
        &[
            ("x-api-key", "alice-key"),
            ("x-forwarded-for", "198.51.100.9"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    assert!(strict.wait_for_log("client=127.0.0.1:", Duration::from_secs(5)));
    assert!(!strict.logs().contains("client=198.51.100"));
}

#[tokio::test(flavor = "multi_thread")]
async fn client_keys_do_not_read_the_operators_endpoints_unless_admin() {
    let mock = start_mock().await;
    let admin_port = free_port();
    let config = format!(
        "{}metrics:\n  enabled: true\n{CLIENTS}",
        pool_config(&mock, &[("k1", "sk-1", "")], "")
    );
    let relay = RelayProcess::start(
        &format!(
            "  admin_listen: \"127.0.0.1:{admin_port}\"\n  auth:\n    api_key: operator-key\n"
        ),
        &config,
    );
    let url = base(&relay);
    let admin = format!("http://127.0.0.1:{admin_port}");
    let get = reqwest::Method::GET;
    let operator_paths = [
        (&url, "/status"),
        (&url, "/metrics"),
        (&url, "/v1/providers"),
        (&admin, "/status"),
    ];

    // A client's key, in either header: 403 permission_error, saying what it needs.
    for credential in [
        ("x-api-key", "alice-key"),
        ("authorization", "Bearer alice-key"),
    ] {
        for (at, path) in operator_paths {
            let (status, body) = call(at, get.clone(), path, &[credential]).await;
            assert_eq!(status, 403, "{at}{path}: {body}");
            assert_eq!(error_type(&body), "permission_error");
            let message = body["error"]["message"].as_str().unwrap();
            assert!(message.contains("admin: true"), "{message}");
        }
        // What a client needs stays open to it.
        assert_eq!(
            call(&url, get.clone(), "/v1/models", &[credential]).await.0,
            200
        );
        assert_eq!(call(&url, get.clone(), "/health", &[]).await.0, 200);
        assert_eq!(call(&admin, get.clone(), "/health", &[]).await.0, 200);
        let (status, _) = call(&url, reqwest::Method::POST, "/v1/messages", &[credential]).await;
        assert_eq!(status, 200);
    }
    // The operator's key and an admin client's read them all; no key at all is still a 401.
    for credential in [("x-api-key", "operator-key"), ("x-api-key", "ops-key")] {
        for (at, path) in operator_paths {
            let (status, body) = call(at, get.clone(), path, &[credential]).await;
            assert_eq!(status, 200, "{at}{path} with {}: {body}", credential.1);
        }
    }
    for (at, path) in operator_paths {
        assert_eq!(call(at, get.clone(), path, &[]).await.0, 401, "{at}{path}");
    }

    // Clients without server.auth: only an admin client is the operator.
    let relay = RelayProcess::start("", &config);
    let url = base(&relay);
    assert_eq!(
        call(&url, get.clone(), "/status", &[("x-api-key", "alice-key")])
            .await
            .0,
        403
    );
    assert_eq!(
        call(&url, get.clone(), "/status", &[("x-api-key", "ops-key")])
            .await
            .0,
        200
    );

    // An open relay (no server.auth, no clients) stays open.
    let open = RelayProcess::start(
        "",
        &format!(
            "{}metrics:\n  enabled: true\n",
            pool_config(&mock, &[("k1", "sk-1", "")], "")
        ),
    );
    for path in ["/status", "/metrics", "/v1/providers"] {
        assert_eq!(
            call(&base(&open), get.clone(), path, &[]).await.0,
            200,
            "{path}"
        );
    }
}
