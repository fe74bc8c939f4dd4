//! Claude through the clouds' endpoints, against strict mocks in the repo, driven by the
//! official Python SDK where a client would be: Microsoft Foundry (`type: azure`).

mod common;

use common::*;

const DEPLOYMENT: &str = "claude-foundry-deployment";

async fn foundry_mock() -> MockUpstream {
    MockUpstream::start(MockConfig {
        foundry_keys: Some(vec!["sk-foundry-one".into(), "sk-foundry-two".into()]),
        ..MockConfig::default()
    })
    .await
    .unwrap()
}

/// An azure provider in front of the Foundry mock (its `/anthropic` base), pinned to one
/// deployment.
fn foundry_config(mock: &MockUpstream, keys: &[(&str, &str)]) -> String {
    let mut s = format!(
        "providers:\n  - name: foundry\n    type: azure\n    base_url: \"{}/anthropic\"\n    \
         azure_deployment_id: {DEPLOYMENT}\n    azure_api_version: \"2024-05-01-preview\"\n    keys:\n",
        mock.base_url()
    );
    for (id, key) in keys {
        s.push_str(&format!("      - name: {id}\n        key: \"{key}\"\n"));
    }
    s
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sdk_works_through_foundry_json_stream_and_count_tokens() {
    let mock = foundry_mock().await;
    let relay = RelayProcess::start("", &foundry_config(&mock, &[("f1", "sk-foundry-one")]));
    tokio::task::block_in_place(|| run_sdk(&relay, "foundry"));
    let requests = mock.requests();
    assert_eq!(requests.len(), 3);
    for r in &requests {
        assert!(
            r.path_and_query.starts_with("/anthropic/v1/messages"),
            "{}",
            r.path_and_query
        );
        let header = |name: &str| {
            r.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(header("x-api-key"), Some("sk-foundry-one"));
        assert_eq!(header("api-key"), Some("sk-foundry-one"));
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["model"], DEPLOYMENT);
    }
    assert!(!relay.logs().contains("sk-foundry-one"));

    // The mock is as strict as Foundry: another key is refused, Azure-shaped.
    let refused = client()
        .post(format!("{}/anthropic/v1/messages", mock.base_url()))
        .header("api-key", "sk-not-a-foundry-key")
        .json(&message_body("m", false))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "401");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_azure_shaped_error_reaches_the_sdk_in_anthropics_shape() {
    let mock = foundry_mock().await;
    let relay = RelayProcess::start("", &foundry_config(&mock, &[("f1", "sk-foundry-one")]));
    mock.push_fault(
        None,
        Fault::Status {
            status: 400,
            retry_after: None,
        },
    );
    tokio::task::block_in_place(|| run_sdk(&relay, "foundry_error"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_throttled_foundry_key_cools_down_and_the_request_succeeds_on_the_other() {
    let mock = foundry_mock().await;
    let relay = RelayProcess::start(
        "",
        &foundry_config(&mock, &[("f1", "sk-foundry-one"), ("f2", "sk-foundry-two")]),
    );
    mock.push_fault(Some("sk-foundry-one"), throttled("20"));
    mock.push_fault(Some("sk-foundry-two"), throttled("20"));
    // Whichever key goes first is throttled; the relay retries on the other, whose own fault
    // then throttles it too: the third attempt finds both cooling and answers 429 itself with
    // an honest retry-after.
    let refused = post_messages(&relay, &message_body("m", false), &[]).await;
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((15..=20).contains(&retry_after), "{retry_after}");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(error_type(&body), "rate_limit_error");

    // The preferred key throttled, the other fine: the request succeeds on the other, and
    // the throttled one rests for what Foundry said.
    let mock = foundry_mock().await;
    let config = foundry_config(&mock, &[("f1", "sk-foundry-one"), ("f2", "sk-foundry-two")])
        .replace(
            "key: \"sk-foundry-one\"\n",
            "key: \"sk-foundry-one\"\n        priority: 2\n",
        );
    let relay = RelayProcess::start("", &config);
    mock.push_fault(Some("sk-foundry-one"), throttled("20"));
    let ok = post_messages(&relay, &message_body("m", false), &[]).await;
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["x-cc-relay-key-id"], "f2");
    let status = get_json(&relay, "/status").await;
    let cooling = key_status(&status, "f1")["cooling_down_ms"].as_u64();
    assert!(cooling.is_some_and(|ms| ms > 10_000), "{status}");
}

#[test]
fn an_azure_provider_needs_its_resource_or_a_base_url() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(
        &path,
        "providers:\n  - name: f\n    type: azure\n    keys:\n      - key: k\n",
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["config", "validate", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("providers[0].azure_resource_name: is required"),
        "{text}"
    );
}
