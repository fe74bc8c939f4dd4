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

// ---- Vertex AI --------------------------------------------------------------------------------

/// A service account of its own: an RSA key made by the openssl CLI (installed by `make
/// deps-test`), its key file naming the mock's token endpoint.
struct ServiceAccount {
    _dir: tempfile::TempDir,
    file: std::path::PathBuf,
    private_pem: String,
    public_pem: String,
}

const SA_EMAIL: &str = "relay@test-project.iam.gserviceaccount.com";

fn new_key_pair() -> ServiceAccount {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    let public = dir.path().join("public.pem");
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("the openssl CLI (make deps-test installs it)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        key.to_str().unwrap(),
    ]);
    run(&[
        "pkey",
        "-in",
        key.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    ServiceAccount {
        file: dir.path().join("service-account.json"),
        private_pem: std::fs::read_to_string(&key).unwrap(),
        public_pem: std::fs::read_to_string(&public).unwrap(),
        _dir: dir,
    }
}

/// The Vertex mock (tokens valid `ttl`) and a service account file it trusts.
async fn vertex_mock(ttl: std::time::Duration) -> (MockUpstream, ServiceAccount) {
    let sa = new_key_pair();
    let mock = MockUpstream::start(MockConfig {
        vertex: Some(cc_relay_mock::VertexMock {
            client_email: SA_EMAIL.into(),
            public_key_pem: sa.public_pem.clone(),
            token_ttl: ttl,
            project: "test-project".into(),
            region: "us-east5".into(),
            user: Some((
                "mock-client.apps.googleusercontent.com".into(),
                "mock-client-secret".into(),
                "mock-refresh-token".into(),
            )),
        }),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let file = serde_json::json!({
        "type": "service_account",
        "project_id": "test-project",
        "private_key_id": "key-1",
        "private_key": sa.private_pem,
        "client_email": SA_EMAIL,
        "token_uri": format!("{}/token", mock.base_url()),
    });
    std::fs::write(&sa.file, file.to_string()).unwrap();
    (mock, sa)
}

fn vertex_config(mock: &MockUpstream, sa: &ServiceAccount) -> String {
    format!(
        "providers:\n  - name: vertex\n    type: vertex\n    base_url: \"{}\"\n    \
         gcp_project_id: test-project\n    gcp_region: us-east5\n    keys:\n      - name: sa-1\n        \
         gcp_credentials_file: \"{}\"\n",
        mock.base_url(),
        sa.file.display()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sdk_works_through_vertex_json_stream_and_count_tokens() {
    let (mock, sa) = vertex_mock(std::time::Duration::from_secs(3600)).await;
    let relay = RelayProcess::start("", &vertex_config(&mock, &sa));
    tokio::task::block_in_place(|| run_sdk(&relay, "happy"));
    let prefix = "/v1/projects/test-project/locations/us-east5/publishers/anthropic/models/";
    let calls: Vec<String> = mock
        .requests()
        .iter()
        .filter(|r| r.path_and_query != "/token")
        .map(|r| {
            let auth = r.header("authorization").unwrap_or_default();
            assert!(auth.starts_with("Bearer ya29.mock-"), "{auth}");
            assert_eq!(r.json()["anthropic_version"], "vertex-2023-10-16");
            r.path_and_query.trim_start_matches(prefix).to_owned()
        })
        .collect();
    assert_eq!(
        calls,
        [
            "claude-sonnet-4-5:rawPredict",
            "claude-sonnet-4-5:streamRawPredict",
            "count-tokens:rawPredict"
        ]
    );
    let logs = relay.logs();
    assert!(!logs.contains("ya29.mock") && !logs.contains("PRIVATE KEY"));
    let status = get_json(&relay, "/status").await.to_string();
    assert!(!status.contains("ya29.mock") && !status.contains("PRIVATE KEY"));
}

#[tokio::test(flavor = "multi_thread")]
async fn vertex_keeps_serving_across_token_expiries_without_a_failed_request() {
    // Tokens live 2 s: over 7 s of traffic the relay must renew several times, ahead of time.
    let (mock, sa) = vertex_mock(std::time::Duration::from_secs(2)).await;
    let relay = RelayProcess::start("", &vertex_config(&mock, &sa));
    let started = std::time::Instant::now();
    let mut sent = 0;
    while started.elapsed() < std::time::Duration::from_secs(7) {
        let stream = sent % 2 == 1;
        let response = post_messages(&relay, &message_body("claude-sonnet-4-5", stream), &[]).await;
        assert_eq!(
            response.status(),
            200,
            "request {sent} failed: {}",
            relay.logs()
        );
        response.bytes().await.unwrap();
        sent += 1;
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    }
    assert!(mock.tokens_issued() >= 4, "{} tokens", mock.tokens_issued());
    assert!(sent > 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vertex_quota_error_is_a_rate_limit_error_and_cools_the_credential() {
    let (mock, sa) = vertex_mock(std::time::Duration::from_secs(3600)).await;
    let relay = RelayProcess::start("", &vertex_config(&mock, &sa));
    mock.push_fault(
        None,
        Fault::Status {
            status: 429,
            retry_after: None,
        },
    );
    let refused = post_messages(&relay, &message_body("claude-sonnet-4-5", false), &[]).await;
    assert_eq!(refused.status(), 429);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(error_type(&body), "rate_limit_error", "{body}");
    let status = get_json(&relay, "/status").await;
    assert!(
        key_status(&status, "sa-1")["cooling_down_ms"]
            .as_u64()
            .is_some(),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_keys_vertex_uses_application_default_credentials_from_the_metadata_server() {
    let (mock, _sa) = vertex_mock(std::time::Duration::from_secs(3600)).await;
    let body = format!(
        "providers:\n  - name: vertex\n    type: vertex\n    base_url: \"{}\"\n    \
         gcp_project_id: test-project\n    gcp_region: us-east5\n",
        mock.base_url()
    );
    // No credentials file anywhere: ADC falls through to the metadata server, here the mock.
    let home = tempfile::tempdir().unwrap();
    let metadata_host = mock.base_url().trim_start_matches("http://").to_owned();
    let relay = RelayProcess::start_with_env(
        "",
        &body,
        &[
            ("GCE_METADATA_HOST", metadata_host.as_str()),
            ("HOME", home.path().to_str().unwrap()),
            ("GOOGLE_APPLICATION_CREDENTIALS", ""),
        ],
    );
    let response = post_messages(&relay, &message_body("claude-sonnet-4-5", false), &[]).await;
    assert_eq!(response.status(), 200, "{}", relay.logs());
    assert_eq!(mock.tokens_issued(), 1);
    let metadata = mock
        .requests()
        .into_iter()
        .find(|r| r.path_and_query.starts_with("/computeMetadata/"))
        .expect("the relay asked the metadata server");
    assert_eq!(metadata.header("metadata-flavor"), Some("Google"));
    let status = get_json(&relay, "/status").await;
    assert!(key_status(&status, "adc")["disabled"] == false, "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_fails_over_from_anthropic_to_vertex_each_with_its_own_model_name() {
    // Anthropic (preferred) answers 529 to everything; the same model on Vertex, under its
    // Vertex name, takes over before a byte reaches the SDK.
    let anthropic = start_mock().await;
    anthropic.set_sticky_fault(
        "sk-anthropic",
        Some(Fault::Status {
            status: 529,
            retry_after: None,
        }),
    );
    let (vertex, sa) = vertex_mock(std::time::Duration::from_secs(3600)).await;
    let body = format!(
        "providers:\n{}{}",
        mock_provider(
            "anthropic",
            &anthropic,
            &[("a", "sk-anthropic")],
            "    priority: 2\n"
        ),
        vertex_config(&vertex, &sa)
            .trim_start_matches("providers:\n")
            .replace(
                "    gcp_region: us-east5\n",
                "    gcp_region: us-east5\n    priority: 1\n    model_mapping:\n      \
                 claude-sonnet-4-5: claude-sonnet-4-5@20250929\n",
            ),
    );
    let relay = RelayProcess::start("", &body);
    tokio::task::block_in_place(|| run_sdk(&relay, "failover"));
    let asked: Vec<String> = anthropic
        .requests()
        .iter()
        .map(|r| r.json()["model"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        !asked.is_empty() && asked.iter().all(|m| m == "claude-sonnet-4-5"),
        "{asked:?}"
    );
    let streamed = vertex
        .requests()
        .iter()
        .filter(|r| {
            r.path_and_query
                .ends_with("claude-sonnet-4-5@20250929:streamRawPredict")
        })
        .count();
    assert_eq!(streamed, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gcloud_user_credentials_file_works_through_the_refresh_token_grant() {
    let (mock, sa) = vertex_mock(std::time::Duration::from_secs(3600)).await;
    let user_file = sa
        .file
        .with_file_name("application_default_credentials.json");
    let user = serde_json::json!({
        "type": "authorized_user",
        "client_id": "mock-client.apps.googleusercontent.com",
        "client_secret": "mock-client-secret",
        "refresh_token": "mock-refresh-token",
        "token_uri": format!("{}/token", mock.base_url()),
    });
    std::fs::write(&user_file, user.to_string()).unwrap();
    let body = vertex_config(&mock, &sa).replace(
        &sa.file.display().to_string(),
        &user_file.display().to_string(),
    );
    let relay = RelayProcess::start("", &body);
    let response = post_messages(&relay, &message_body("claude-sonnet-4-5", true), &[]).await;
    assert_eq!(response.status(), 200, "{}", relay.logs());
    response.bytes().await.unwrap();
    let grant = mock
        .requests()
        .into_iter()
        .find(|r| r.path_and_query == "/token")
        .unwrap();
    assert!(String::from_utf8_lossy(&grant.body).contains("grant_type=refresh_token"));
    assert!(
        !relay.logs().contains("mock-refresh-token")
            && !relay.logs().contains("mock-client-secret")
    );
}

// ---- AWS Bedrock ------------------------------------------------------------------------------

async fn bedrock_mock() -> MockUpstream {
    bedrock_mock_with(|_| {}).await
}

async fn bedrock_mock_with(adjust: impl FnOnce(&mut cc_relay_mock::BedrockMock)) -> MockUpstream {
    let mut bedrock = cc_relay_mock::BedrockMock {
        region: "us-east-1".into(),
        credentials: vec![
            ("AKIDMOCKONE".into(), "secret-one/abc+def".into()),
            ("AKIDMOCKTWO".into(), "secret-two/ghi+jkl".into()),
        ],
        api_keys: vec!["bedrock-api-key-mock".into()],
        ..Default::default()
    };
    adjust(&mut bedrock);
    MockUpstream::start(MockConfig {
        bedrock: Some(bedrock),
        ..MockConfig::default()
    })
    .await
    .unwrap()
}

/// A bedrock provider with AWS credentials `(id, key id, secret)` and extra provider lines.
fn bedrock_config(mock: &MockUpstream, keys: &[(&str, &str, &str)], extra: &str) -> String {
    let mut s = format!(
        "providers:\n  - name: bedrock\n    type: bedrock\n    base_url: \"{}\"\n    \
         aws_region: us-east-1\n{extra}    keys:\n",
        mock.base_url()
    );
    for (id, key_id, secret) in keys {
        s.push_str(&format!(
            "      - name: {id}\n        aws_access_key_id: {key_id}\n        \
             aws_secret_access_key: \"{secret}\"\n"
        ));
    }
    s
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sdk_works_through_bedrock_json_stream_and_count_tokens() {
    let mock = bedrock_mock().await;
    let relay = RelayProcess::start(
        "",
        &bedrock_config(
            &mock,
            &[("acct-1", "AKIDMOCKONE", "secret-one/abc+def")],
            "",
        ),
    );
    tokio::task::block_in_place(|| run_sdk(&relay, "happy"));
    let paths: Vec<String> = mock
        .requests()
        .iter()
        .map(|r| r.path_and_query.clone())
        .collect();
    assert_eq!(
        paths,
        [
            "/model/claude-sonnet-4-5/invoke",
            "/model/claude-sonnet-4-5/invoke-with-response-stream",
            "/model/claude-sonnet-4-5/count-tokens"
        ]
    );
    let logs = relay.logs();
    assert!(!logs.contains("secret-one"), "a secret in the log");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_signature_is_refused_by_the_mock_and_reaches_the_client_in_anthropics_shape() {
    let mock = bedrock_mock().await;
    let relay = RelayProcess::start(
        "",
        &bedrock_config(&mock, &[("acct-1", "AKIDMOCKONE", "not-the-secret")], ""),
    );
    let refused = post_messages(&relay, &message_body("claude-sonnet-4-5", false), &[]).await;
    assert_eq!(refused.status(), 403);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(error_type(&body), "permission_error", "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("InvalidSignatureException"));
    assert!(!relay.logs().contains("not-the-secret"));
}

#[tokio::test(flavor = "multi_thread")]
async fn two_bedrock_accounts_pool_and_a_throttled_one_hands_over() {
    let mock = bedrock_mock().await;
    let config = bedrock_config(
        &mock,
        &[
            ("acct-1", "AKIDMOCKONE", "secret-one/abc+def"),
            ("acct-2", "AKIDMOCKTWO", "secret-two/ghi+jkl"),
        ],
        "",
    )
    .replace(
        "aws_access_key_id: AKIDMOCKONE\n",
        "aws_access_key_id: AKIDMOCKONE\n        priority: 2\n",
    );
    let relay = RelayProcess::start("", &config);
    mock.push_fault(Some("AKIDMOCKONE"), throttled("20"));
    let ok = post_messages(&relay, &message_body("claude-sonnet-4-5", true), &[]).await;
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["x-cc-relay-key-id"], "acct-2");
    let text = ok.text().await.unwrap();
    assert!(text.contains("event: message_stop"), "{text}");
    let status = get_json(&relay, "/status").await;
    assert!(key_status(&status, "acct-1")["cooling_down_ms"]
        .as_u64()
        .is_some_and(|ms| ms > 10_000));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mid_stream_bedrock_exception_is_an_error_the_sdk_raises() {
    let mock = bedrock_mock().await;
    let relay = RelayProcess::start(
        "",
        &bedrock_config(
            &mock,
            &[("acct-1", "AKIDMOCKONE", "secret-one/abc+def")],
            "",
        ),
    );
    mock.push_fault(None, Fault::ErrorEventAfterEvents(4, "api_error".into()));
    tokio::task::block_in_place(|| run_sdk(&relay, "midstream"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_mapped_to_an_inference_profile_arn_goes_in_the_path_encoded() {
    let mock = bedrock_mock().await;
    let arn = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc123";
    let relay = RelayProcess::start(
        "",
        &bedrock_config(
            &mock,
            &[("acct-1", "AKIDMOCKONE", "secret-one/abc+def")],
            &format!("    model_mapping:\n      claude-sonnet-4-5: \"{arn}\"\n"),
        ),
    );
    let response = post_messages(&relay, &message_body("claude-sonnet-4-5", false), &[]).await;
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        body["model"], arn,
        "the mock echoes the model it decoded from the path"
    );
    assert_eq!(
        mock.requests()[0].path_and_query,
        "/model/arn:aws:bedrock:us-east-1:123456789012:application-inference-profile%2Fabc123/invoke"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bedrock_api_key_goes_as_a_bearer_token_and_a_model_fails_over_to_bedrock() {
    // Anthropic (preferred) answers 529; the same model on Bedrock, under its Bedrock id and
    // with a Bedrock API key, takes the stream before a byte reaches the SDK.
    let anthropic = start_mock().await;
    anthropic.set_sticky_fault(
        "sk-anthropic",
        Some(Fault::Status {
            status: 529,
            retry_after: None,
        }),
    );
    let bedrock = bedrock_mock().await;
    let body = format!(
        "providers:\n{}  - name: bedrock\n    type: bedrock\n    base_url: \"{}\"\n    \
         aws_region: us-east-1\n    priority: 1\n    model_mapping:\n      \
         claude-sonnet-4-5: us.anthropic.claude-sonnet-4-5-20250929-v1:0\n    keys:\n      \
         - name: api-key\n        key: bedrock-api-key-mock\n",
        mock_provider(
            "anthropic",
            &anthropic,
            &[("a", "sk-anthropic")],
            "    priority: 2\n"
        ),
        bedrock.base_url(),
    );
    let relay = RelayProcess::start("", &body);
    tokio::task::block_in_place(|| run_sdk(&relay, "failover"));
    let streamed = bedrock
        .requests()
        .iter()
        .filter(|r| {
            r.path_and_query
                == "/model/us.anthropic.claude-sonnet-4-5-20250929-v1:0/invoke-with-response-stream"
                && r.header("authorization") == Some("Bearer bedrock-api-key-mock")
        })
        .count();
    assert_eq!(streamed, 3);
    assert!(anthropic.request_count() >= 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_keys_bedrock_signs_with_the_shared_credentials_files_profile() {
    let mock = bedrock_mock().await;
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join(".aws")).unwrap();
    std::fs::write(
        home.path().join(".aws/credentials"),
        "[default]\naws_access_key_id = AKIDMOCKONE\naws_secret_access_key = wrong\n\n\
         [relay]\n# the profile AWS_PROFILE names\naws_access_key_id = AKIDMOCKTWO\n\
         aws_secret_access_key = secret-two/ghi+jkl\n",
    )
    .unwrap();
    let body = format!(
        "providers:\n  - name: bedrock\n    type: bedrock\n    base_url: \"{}\"\n    \
         aws_region: us-east-1\n",
        mock.base_url()
    );
    let relay = RelayProcess::start_with_env(
        "",
        &body,
        &[
            ("HOME", home.path().to_str().unwrap()),
            ("AWS_PROFILE", "relay"),
            ("AWS_ACCESS_KEY_ID", ""),
            ("AWS_SECRET_ACCESS_KEY", ""),
        ],
    );
    let response = post_messages(&relay, &message_body("claude-sonnet-4-5", false), &[]).await;
    assert_eq!(response.status(), 200, "{}", relay.logs());
    assert_eq!(mock.requests_by_key().get("AKIDMOCKTWO"), Some(&1));
    assert!(!relay.logs().contains("secret-two"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_without_a_model_is_the_clients_400_on_vertex_and_bedrock() {
    // Both put the model in the URL: without one there is nothing to send, and the client is
    // told why rather than getting a 500.
    let (vertex, sa) = vertex_mock(std::time::Duration::from_secs(3600)).await;
    let bedrock = bedrock_mock().await;
    for config in [
        vertex_config(&vertex, &sa),
        bedrock_config(
            &bedrock,
            &[("acct-1", "AKIDMOCKONE", "secret-one/abc+def")],
            "",
        ),
    ] {
        let relay = RelayProcess::start("", &config);
        let body =
            serde_json::json!({"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
        let refused = post_messages(&relay, &body, &[]).await;
        assert_eq!(refused.status(), 400);
        let body: serde_json::Value = refused.json().await.unwrap();
        assert_eq!(error_type(&body), "invalid_request_error");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("names no model"),
            "{body}"
        );
    }
}

// ---- Bedrock without keys: the standard AWS credential chain ----------------------------------

/// A bedrock provider with no credentials of its own.
fn bedrock_chain_config(mock: &MockUpstream) -> String {
    format!(
        "providers:\n  - name: bedrock\n    type: bedrock\n    base_url: \"{}\"\n    \
         aws_region: us-east-1\n",
        mock.base_url()
    )
}

/// The relay's environment for the AWS chain: only `source` is there (empty values hide the
/// host's own AWS settings; HOME holds no AWS files; the instance metadata service is off
/// unless `source` turns it on).
fn aws_chain_env<'a>(home: &'a str, source: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![
        ("HOME", home),
        ("AWS_ACCESS_KEY_ID", ""),
        ("AWS_SECRET_ACCESS_KEY", ""),
        ("AWS_SESSION_TOKEN", ""),
        ("AWS_WEB_IDENTITY_TOKEN_FILE", ""),
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI", ""),
        ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", ""),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    for &(name, value) in source {
        env.retain(|(n, _)| *n != name);
        env.push((name, value));
    }
    env
}

/// What the mock issued must not be in the relay's log.
fn assert_no_aws_session_secret(mock: &MockUpstream, logs: &str) {
    for n in 1..=mock.aws_sessions_issued() {
        assert!(!logs.contains(&format!("session-secret-{n}/")), "{logs}");
        assert!(!logs.contains(&format!("session-token-{n}-")), "{logs}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_credentials_bedrock_signs_with_the_container_endpoints_and_renews_them_in_time() {
    // Credentials that hold 2 s: the relay must fetch new ones before each expires (the mock
    // refuses an expired one with AWS's ExpiredTokenException), off the request path.
    let mock = bedrock_mock_with(|b| {
        b.session_ttl = std::time::Duration::from_secs(2);
        b.container_token = Some("container-authorization-token".into());
    })
    .await;
    let home = tempfile::tempdir().unwrap();
    let uri = format!(
        "{}{}",
        mock.base_url(),
        cc_relay_mock::AWS_CONTAINER_CREDENTIALS_PATH
    );
    let env = aws_chain_env(
        home.path().to_str().unwrap(),
        &[
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", &uri),
            (
                "AWS_CONTAINER_AUTHORIZATION_TOKEN",
                "container-authorization-token",
            ),
        ],
    );
    let relay = RelayProcess::start_with_env("", &bedrock_chain_config(&mock), &env);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(7);
    let mut sent = 0;
    while std::time::Instant::now() < until {
        let stream = sent % 2 == 1;
        let response = post_messages(&relay, &message_body("claude-sonnet-4-5", stream), &[]).await;
        assert_eq!(response.status(), 200, "request {sent}: {}", relay.logs());
        response.bytes().await.unwrap();
        sent += 1;
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // Several credentials, one after another, each used before it expired.
    let signers = mock.requests_by_key();
    assert!(
        signers.len() >= 3 && signers.keys().all(|k| k.starts_with("ASIAMOCK")),
        "{signers:?}"
    );
    assert_eq!(signers.values().sum::<usize>(), sent);
    let logs = relay.logs();
    assert_no_aws_session_secret(&mock, &logs);
    assert!(!logs.contains("container-authorization-token"));
}

#[tokio::test(flavor = "multi_thread")]
async fn without_credentials_bedrock_signs_with_the_instance_roles_from_imdsv2() {
    let mock = bedrock_mock().await;
    let home = tempfile::tempdir().unwrap();
    let endpoint = mock.base_url();
    let env = aws_chain_env(
        home.path().to_str().unwrap(),
        &[
            ("AWS_EC2_METADATA_DISABLED", "false"),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &endpoint),
        ],
    );
    let relay = RelayProcess::start_with_env("", &bedrock_chain_config(&mock), &env);
    let response = post_messages(&relay, &message_body("claude-sonnet-4-5", true), &[]).await;
    assert_eq!(response.status(), 200, "{}", relay.logs());
    response.bytes().await.unwrap();
    assert_eq!(mock.aws_sessions_issued(), 1);
    assert_eq!(mock.requests_by_key().get("ASIAMOCK00000001"), Some(&1));
    assert_no_aws_session_secret(&mock, &relay.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn without_credentials_bedrock_assumes_the_web_identitys_role_through_sts() {
    let mock = bedrock_mock_with(|b| b.web_identity_token = Some("eks-projected-jwt".into())).await;
    let home = tempfile::tempdir().unwrap();
    let token_file = home.path().join("token");
    std::fs::write(&token_file, "eks-projected-jwt").unwrap();
    let sts = mock.base_url();
    let env = aws_chain_env(
        home.path().to_str().unwrap(),
        &[
            ("AWS_WEB_IDENTITY_TOKEN_FILE", token_file.to_str().unwrap()),
            ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/relay"),
            ("AWS_ROLE_SESSION_NAME", "relay"),
            ("AWS_ENDPOINT_URL_STS", &sts),
        ],
    );
    let relay = RelayProcess::start_with_env("", &bedrock_chain_config(&mock), &env);
    let response = post_messages(&relay, &message_body("claude-sonnet-4-5", false), &[]).await;
    assert_eq!(response.status(), 200, "{}", relay.logs());
    assert_eq!(mock.requests_by_key().get("ASIAMOCK00000001"), Some(&1));
    let logs = relay.logs();
    assert_no_aws_session_secret(&mock, &logs);
    assert!(!logs.contains("eks-projected-jwt"));
}

#[tokio::test(flavor = "multi_thread")]
async fn without_any_aws_credentials_bedrock_answers_502_saying_so() {
    let mock = bedrock_mock().await;
    let home = tempfile::tempdir().unwrap();
    let env = aws_chain_env(home.path().to_str().unwrap(), &[]);
    let relay = RelayProcess::start_with_env("", &bedrock_chain_config(&mock), &env);
    let response = post_messages(&relay, &message_body("claude-sonnet-4-5", false), &[]).await;
    assert_eq!(response.status(), 502);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(error_type(&body), "api_error", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("key aws has no credentials: the AWS credential chain has none"),
        "{body}"
    );
    assert_eq!(mock.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_provider_without_credentials_right_now_is_passed_by_for_the_next() {
    // Bedrock first, but its AWS chain has nothing: the request goes to Anthropic without
    // costing Bedrock an attempt.
    let bedrock = bedrock_mock().await;
    let anthropic = MockUpstream::start(MockConfig::default()).await.unwrap();
    let home = tempfile::tempdir().unwrap();
    let body = format!(
        "{}    priority: 2\n{}",
        bedrock_chain_config(&bedrock),
        mock_provider(
            "anthropic",
            &anthropic,
            &[("a", "sk-anthropic")],
            "    priority: 1\n"
        ),
    );
    let env = aws_chain_env(home.path().to_str().unwrap(), &[]);
    let relay = RelayProcess::start_with_env("", &body, &env);
    let response = post_messages(&relay, &message_body("claude-sonnet-4-5", false), &[]).await;
    assert_eq!(response.status(), 200, "{}", relay.logs());
    assert_eq!(bedrock.request_count(), 0);
    assert_eq!(anthropic.request_count(), 1);
}
