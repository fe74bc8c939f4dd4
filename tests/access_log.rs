//! The access log: exactly one line per request — proxied, the relay's own 429, 404, failed
//! authentication — carrying the request id the client got, and never a secret.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use serde_json::Value;

#[tokio::test]
async fn one_line_per_request_with_the_clients_request_id() {
    let mock = start_mock().await;
    let body = format!(
        "{}logging:\n  format: json\n",
        pool_config(&mock, &[("k1", "sk-access-secret", "rpm_limit: 1")], "")
    );
    let relay = RelayProcess::start("  auth:\n    api_key: relay-access-secret\n", &body);
    let auth = [("x-api-key", "relay-access-secret")];
    let mut sent: Vec<(String, u16)> = Vec::new();
    let mut note = |resp: &reqwest::Response| {
        let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
        sent.push((id, resp.status().as_u16()));
    };
    let proxied = post_messages(&relay, &message_body("m", false), &auth).await;
    note(&proxied);
    let local_429 = post_messages(&relay, &message_body("m", false), &auth).await;
    note(&local_429);
    let unauthorized = post_messages(&relay, &message_body("m", false), &[]).await;
    note(&unauthorized);
    let missing = client()
        .get(relay.url("/v1/nope"))
        .header("x-api-key", "relay-access-secret")
        .send()
        .await
        .unwrap();
    note(&missing);
    assert_eq!(
        sent.iter().map(|(_, s)| *s).collect::<Vec<_>>(),
        [200, 429, 401, 404]
    );

    // The writer is a thread of its own: give it a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let lines = loop {
        let lines: Vec<Value> = relay
            .logs()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["kind"] == "access")
            .collect();
        if lines.len() >= sent.len() || std::time::Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let by_id: HashMap<&str, &Value> = lines
        .iter()
        .map(|l| (l["request_id"].as_str().unwrap(), l))
        .collect();
    assert_eq!(lines.len(), sent.len(), "{lines:#?}");
    for (id, status) in &sent {
        let line = by_id
            .get(id.as_str())
            .unwrap_or_else(|| panic!("no line for {id}"));
        assert_eq!(line["status"], *status, "{line}");
        assert!(line["total_ms"].as_f64().is_some());
    }
    let first = by_id[sent[0].0.as_str()];
    assert_eq!(first["provider"], "pool");
    assert_eq!(first["key"], "k1");
    assert_eq!(first["model"], "m");
    assert_eq!(first["output_tokens"], 12);
    assert_eq!(first["attempts"], 1);
    assert_eq!(first["method"], "POST");
    assert_eq!(first["path"], "/v1/messages");
    assert!(first["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    let logs = relay.logs();
    assert!(!logs.contains("sk-access-secret") && !logs.contains("relay-access-secret"));
}

#[tokio::test]
async fn a_log_file_is_reopened_on_sigusr1_after_logrotate_moved_it() {
    let mock = start_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("relay.log");
    let rotated = dir.path().join("relay.log.1");
    let body = format!(
        "{}logging:\n  format: json\n  output: \"{}\"\n",
        pool_config(&mock, &[("k1", "sk-1", "")], ""),
        log.display()
    );
    let relay = RelayProcess::start("", &body);
    let access_ids = |path: &std::path::Path| -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["kind"] == "access")
            .map(|v| v["request_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let wait_for = |path: &std::path::Path, id: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while std::time::Instant::now() < deadline {
            if access_ids(path).iter().any(|i| i == id) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    };
    let first = post_messages(&relay, &message_body("m", false), &[]).await;
    let first_id = first.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(
        wait_for(&log, &first_id),
        "{:?}",
        std::fs::read_to_string(&log)
    );

    std::fs::rename(&log, &rotated).unwrap();
    relay.signal(nix::sys::signal::Signal::SIGUSR1);
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while !log.exists() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let second = post_messages(&relay, &message_body("m", false), &[]).await;
    let second_id = second.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        wait_for(&log, &second_id),
        "the new file did not get the line"
    );
    assert_eq!(access_ids(&rotated), [first_id]);
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("SIGUSR1: log files reopened"));
}
