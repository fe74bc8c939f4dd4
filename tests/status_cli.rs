//! `cc-relay status` against a running relay: the table, `--json`, the address and key taken
//! from the config, and a clear error without the key.

mod common;

use std::process::Command;

use common::*;

fn status(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("status")
        .args(args)
        .env_remove("CC_RELAY_API_KEY")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn status_prints_each_keys_budget_as_a_table_and_as_json() {
    let mock = start_mock().await;
    let relay = RelayProcess::start(
        "  auth:\n    api_key: relay-status-secret\n",
        &pool_config(&mock, &[("k1", "sk-status-secret", "rpm_limit: 50")], ""),
    );
    let auth = [("x-api-key", "relay-status-secret")];
    assert_eq!(
        post_messages(&relay, &message_body("m", false), &auth)
            .await
            .status(),
        200
    );
    let url = relay.url("");

    let json = tokio::task::spawn_blocking({
        let url = url.clone();
        move || status(&["--url", &url, "--api-key", "relay-status-secret", "--json"])
    })
    .await
    .unwrap();
    assert!(
        json.status.success(),
        "{}",
        String::from_utf8_lossy(&json.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(key_status(&v, "k1")["requests"]["limit"], 50);
    assert_eq!(key_status(&v, "k1")["requests"]["remaining"], 49);

    // Address and key from the config file, as `serve` read it.
    let config = relay.config_path.display().to_string();
    let table = tokio::task::spawn_blocking(move || status(&["--config", &config]))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(
        table.status.success(),
        "{}",
        String::from_utf8_lossy(&table.stderr)
    );
    assert!(text.contains("pool (anthropic)  circuit closed"), "{text}");
    let row = text
        .lines()
        .find(|l| l.trim_start().starts_with("k1"))
        .unwrap();
    assert!(row.contains("[##########] 49"), "{row}");
    assert!(!text.contains("sk-status-secret") && !text.contains("relay-status-secret"));

    let denied = tokio::task::spawn_blocking(move || status(&["--url", &url]))
        .await
        .unwrap();
    assert!(!denied.status.success());
    assert!(String::from_utf8_lossy(&denied.stderr).contains("refused the credential"));
}
