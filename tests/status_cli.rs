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
    relay.wait_settled(Some("relay-status-secret")).await;
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
    assert!(
        text.starts_with(&format!("✓ cc-relay is running ({})", relay.addr)),
        "{text}"
    );
    assert!(text.contains("pool (anthropic)  circuit closed"), "{text}");
    let row = text
        .lines()
        .find(|l| l.trim_start().starts_with("k1"))
        .unwrap();
    assert!(row.contains("[##########] 49"), "{row}");
    assert!(!text.contains("sk-status-secret") && !text.contains("relay-status-secret"));

    // Without the key: running, as the Go relay's `status` says (exit 0), and why no table.
    let denied = tokio::task::spawn_blocking({
        let url = url.clone();
        move || status(&["--url", &url])
    })
    .await
    .unwrap();
    assert!(denied.status.success());
    assert!(String::from_utf8_lossy(&denied.stdout).starts_with("✓ cc-relay is running"));
    assert!(String::from_utf8_lossy(&denied.stderr).contains("refused the credential"));
    let url_down = url.clone();
    let json_denied = tokio::task::spawn_blocking(move || status(&["--url", &url, "--json"]))
        .await
        .unwrap();
    assert!(!json_denied.status.success());

    // Nothing listening: Go's line and a failure.
    drop(relay);
    let down = tokio::task::spawn_blocking(move || status(&["--url", &url_down]))
        .await
        .unwrap();
    assert!(!down.status.success());
    assert!(
        String::from_utf8_lossy(&down.stdout).starts_with("✗ cc-relay is not running"),
        "{}",
        String::from_utf8_lossy(&down.stdout)
    );
}

/// `cc-relay status --watch` in a pseudo-terminal (`script` from util-linux gives it one): the
/// live view shows each key and follows the budget, and `q` quits it.
#[tokio::test(flavor = "multi_thread")]
async fn status_watch_draws_live_in_a_terminal_and_quits_on_q() {
    use std::io::{Read, Write};
    use std::process::Stdio;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    let mock = start_mock().await;
    let relay = RelayProcess::start(
        "  auth:\n    api_key: relay-watch-secret\n",
        // Six a minute: one comes back every 10 s, so what the view shows after two requests
        // holds still long enough to be seen on a loaded machine.
        &pool_config(
            &mock,
            &[("watch-key", "sk-watch-secret", "rpm_limit: 6")],
            "",
        ),
    );
    // The pseudo-terminal starts at 0x0: give it a size first.
    let command = format!(
        "stty rows 40 cols 150 && exec {BIN} status --watch --interval 200ms --url {} --api-key relay-watch-secret",
        relay.url("")
    );
    let mut child = Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .env("TERM", "xterm-256color")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("`script` (util-linux) runs the live view in a pseudo-terminal");
    let screen = Arc::new(Mutex::new(Vec::new()));
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn({
        let screen = screen.clone();
        move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                screen.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        }
    });
    // What the terminal shows now: the output so far, as a 40x150 terminal draws it.
    let contents = || {
        let mut terminal = vt100::Parser::new(40, 150, 0);
        terminal.process(&screen.lock().unwrap());
        terminal.screen().contents()
    };
    let seen = |needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if contents().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    };
    let shown = |needle: &'static str| {
        let seen = &seen;
        tokio::task::block_in_place(|| seen(needle))
    };
    assert!(shown("watch-key"), "{}", contents());
    assert!(shown(" 6/6"), "{}", contents());
    let auth = [("x-api-key", "relay-watch-secret")];
    for _ in 0..2 {
        let response = post_messages(&relay, &message_body("m", false), &auth).await;
        assert_eq!(response.status(), 200);
    }
    assert!(shown(" 4/6"), "the budget did not move: {}", contents());
    child.stdin.as_mut().unwrap().write_all(b"q").unwrap();
    let exited = tokio::task::block_in_place(|| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    assert!(
        exited.is_some_and(|s| s.success()),
        "q did not quit: {exited:?}"
    );
    reader.join().unwrap();
    let screen = String::from_utf8_lossy(&screen.lock().unwrap()).into_owned();
    assert!(!screen.contains("sk-watch-secret") && !screen.contains("relay-watch-secret"));
}
