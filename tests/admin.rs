//! The admin side on a listener of its own (`server.admin_listen`): the same endpoints, the
//! same authentication as on the client listener, and never a secret.

mod common;

use common::*;

#[tokio::test]
async fn admin_listener_serves_health_open_and_status_behind_the_relay_key() {
    let mock = start_mock().await;
    let admin_port = free_port();
    let server =
        format!("  admin_listen: \"127.0.0.1:{admin_port}\"\n  auth:\n    api_key: relay-secret\n");
    let relay = RelayProcess::start(
        &server,
        &pool_config(&mock, &[("k1", "sk-pool-secret", "rpm_limit: 50")], ""),
    );
    let admin = format!("http://127.0.0.1:{admin_port}");
    let c = client();

    let health = c.get(format!("{admin}/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let health: serde_json::Value = health.json().await.unwrap();
    assert_eq!(health["status"], "ok");

    let denied = c.get(format!("{admin}/status")).send().await.unwrap();
    assert_eq!(denied.status(), 401);
    assert_eq!(
        error_type(&denied.json().await.unwrap()),
        "authentication_error"
    );

    // Traffic on the client listener shows on the admin side.
    let resp = post_messages(
        &relay,
        &message_body("m", false),
        &[("x-api-key", "relay-secret")],
    )
    .await;
    assert_eq!(resp.status(), 200);
    let status = c
        .get(format!("{admin}/status"))
        .header("x-api-key", "relay-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 200);
    let text = status.text().await.unwrap();
    assert!(!text.contains("sk-pool-secret") && !text.contains("relay-secret"));
    let status: serde_json::Value = serde_json::from_str(&text).unwrap();
    let key = key_status(&status, "k1");
    assert_eq!(key["requests"]["limit"], 50);
    assert!(key["requests"]["remaining"].as_u64().unwrap() < 50, "{key}");

    let unknown = c.get(format!("{admin}/v1/messages")).send().await.unwrap();
    assert_eq!(unknown.status(), 404);
    let wrong = c.post(format!("{admin}/status")).send().await.unwrap();
    assert_eq!(wrong.status(), 405);
}

#[tokio::test(flavor = "multi_thread")]
async fn status_counts_a_request_until_it_is_settled_and_never_itself() {
    let mock = start_mock().await;
    let relay = std::sync::Arc::new(RelayProcess::start(
        "",
        &pool_config(&mock, &[("k1", "sk-1", "")], ""),
    ));
    let unsettled = |status: serde_json::Value| status["requests_unsettled"].as_u64().unwrap();
    assert_eq!(unsettled(get_json(&relay, "/status").await), 0);
    let slow = {
        let relay = relay.clone();
        tokio::spawn(async move {
            post_messages(
                &relay,
                &message_body("m", false),
                &[("x-mock-latency-ms", "1000")],
            )
            .await
            .status()
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while unsettled(get_json(&relay, "/status").await) != 1 {
        assert!(std::time::Instant::now() < deadline, "never counted");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(slow.await.unwrap(), 200);
    relay.wait_settled(None).await;
    let status = get_json(&relay, "/status").await;
    assert_eq!(unsettled(status.clone()), 0);
    // Settled means counted: the key's in-flight reservation is over too.
    assert_eq!(key_status(&status, "k1")["in_flight"], 0);
}
