//! Switching from the Go cc-relay by swapping the binary: its command lines (`config cc
//! init/remove`, `--config` before the command, `./config.yaml`, TOML files) work here.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

/// Claude Code settings with the user's own entries, comments and a 4-space indent.
const SETTINGS: &str = r#"{
    "model": "opus",
    "permissions": {
        "allow": ["Bash(git status:*)"]
    },
    "env": {
        "DISABLE_TELEMETRY": "1",
        "ANTHROPIC_API_KEY": "users-own-key"
    },
    "hooks": {}
}
"#;

fn run(home: &Path, cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(cwd)
        .env("HOME", home)
        .env_remove("CLAUDE_CONFIG_DIR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn config_cc_init_then_remove_leaves_the_settings_byte_for_byte() {
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let settings = home.path().join(".claude/settings.json");
    std::fs::create_dir_all(settings.parent().unwrap()).unwrap();
    std::fs::write(&settings, SETTINGS).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&settings, std::fs::Permissions::from_mode(0o640)).unwrap();
    }
    // The relay's config where the Go relay looks for it, with a relay key taking bearers.
    std::fs::write(
        work.path().join("config.yaml"),
        "server:\n  listen: \"127.0.0.1:9911\"\n  auth:\n    api_key: \"${RELAY_KEY}\"\n    \
         allow_bearer: true\nproviders:\n  - name: anthropic\n    type: anthropic\n",
    )
    .unwrap();
    let env = [("RELAY_KEY", "relay-secret-abc123")];

    // --dry-run says what, changes nothing, shows no key.
    let dry = stdout(&run(
        home.path(),
        work.path(),
        &["config", "cc", "init", "--dry-run"],
        &env,
    ));
    assert!(
        dry.contains("env.ANTHROPIC_BASE_URL=http://127.0.0.1:9911"),
        "{dry}"
    );
    assert!(!dry.contains("relay-secret"), "{dry}");
    assert_eq!(std::fs::read_to_string(&settings).unwrap(), SETTINGS);

    let init = stdout(&run(
        home.path(),
        work.path(),
        &["config", "cc", "init"],
        &env,
    ));
    assert!(
        init.contains("Claude Code configured to use cc-relay at http://127.0.0.1:9911"),
        "{init}"
    );
    assert!(!init.contains("relay-secret"), "{init}");
    let written = std::fs::read_to_string(&settings).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&written).unwrap();
    assert_eq!(parsed["env"]["ANTHROPIC_BASE_URL"], "http://127.0.0.1:9911");
    assert_eq!(parsed["env"]["ANTHROPIC_AUTH_TOKEN"], "relay-secret-abc123");
    assert_eq!(parsed["env"]["ANTHROPIC_API_KEY"], "users-own-key");
    assert_eq!(parsed["model"], "opus");
    // The user's bytes before the new entries are untouched (indent, order).
    let end_of_users = SETTINGS.find("\"users-own-key\"").unwrap() + "\"users-own-key\"".len();
    assert_eq!(&written[..end_of_users], &SETTINGS[..end_of_users]);
    assert_eq!(
        std::fs::read_to_string(home.path().join(".claude/settings.json.cc-relay.bak")).unwrap(),
        SETTINGS
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&settings).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
    }

    // Idempotent.
    let again = stdout(&run(
        home.path(),
        work.path(),
        &["config", "cc", "init"],
        &env,
    ));
    assert!(again.contains("already configured"), "{again}");
    assert_eq!(std::fs::read_to_string(&settings).unwrap(), written);

    let removed = stdout(&run(
        home.path(),
        work.path(),
        &["config", "cc", "remove"],
        &env,
    ));
    assert!(removed.contains("- ANTHROPIC_BASE_URL"), "{removed}");
    assert!(removed.contains("- ANTHROPIC_AUTH_TOKEN"), "{removed}");
    assert_eq!(std::fs::read_to_string(&settings).unwrap(), SETTINGS);
    let nothing = stdout(&run(
        home.path(),
        work.path(),
        &["config", "cc", "remove"],
        &env,
    ));
    assert!(
        nothing.contains("No cc-relay configuration found"),
        "{nothing}"
    );
}

#[test]
fn config_cc_init_creates_settings_with_the_go_placeholder_when_the_relay_checks_no_key() {
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    // No config anywhere: the embedded default (127.0.0.1:8787, no relay key); Go's flag name.
    let out = stdout(&run(
        home.path(),
        work.path(),
        &[
            "config",
            "cc",
            "init",
            "--proxy-url",
            "http://relay.internal:8787/",
        ],
        &[],
    ));
    assert!(
        out.contains("ANTHROPIC_AUTH_TOKEN=managed-by-cc-relay"),
        "{out}"
    );
    let settings = home.path().join(".claude/settings.json");
    let parsed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&settings).unwrap()).unwrap();
    assert_eq!(
        parsed,
        serde_json::json!({"env": {
            "ANTHROPIC_BASE_URL": "http://relay.internal:8787",
            "ANTHROPIC_AUTH_TOKEN": "managed-by-cc-relay",
        }})
    );
    // --api-key-env, and a relay that takes only x-api-key: ANTHROPIC_API_KEY.
    std::fs::write(
        work.path().join("cc-relay.toml"),
        "[server.auth]\napi_key = \"from-config\"\n\n[[providers]]\nname = \"a\"\ntype = \"anthropic\"\n",
    )
    .unwrap();
    run(
        home.path(),
        work.path(),
        &["config", "cc", "init", "--api-key-env", "MY_RELAY_KEY"],
        &[("MY_RELAY_KEY", "from-env")],
    );
    let parsed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&settings).unwrap()).unwrap();
    assert_eq!(parsed["env"]["ANTHROPIC_API_KEY"], "from-env");
    assert_eq!(parsed["env"]["ANTHROPIC_BASE_URL"], "http://127.0.0.1:8787");
    // The earlier placeholder token would be sent instead of the key: gone.
    assert!(
        parsed["env"].get("ANTHROPIC_AUTH_TOKEN").is_none(),
        "{parsed}"
    );
}

#[test]
fn go_command_lines_work_config_before_the_command_toml_and_validate() {
    let work = tempfile::tempdir().unwrap();
    let toml = work.path().join("relay.toml");
    std::fs::write(
        &toml,
        "[server]\nlisten = \"127.0.0.1:9912\"\n\n[[providers]]\nname = \"a\"\ntype = \"anthropic\"\n",
    )
    .unwrap();
    let home = work.path();
    // `--config` before the command, as Go's persistent flag.
    let out = stdout(&run(
        home,
        work.path(),
        &["--config", toml.to_str().unwrap(), "config", "validate"],
        &[],
    ));
    assert!(
        out.starts_with(&format!("✓ {} is valid", toml.display())),
        "{out}"
    );
    // --format for a name that does not say it.
    let conf = work.path().join("relay.conf");
    std::fs::copy(&toml, &conf).unwrap();
    run(
        home,
        work.path(),
        &[
            "config",
            "validate",
            "--config",
            conf.to_str().unwrap(),
            "--format",
            "toml",
        ],
        &[],
    );
    // `config init --format toml` writes the TOML starter, which validates.
    run(
        home,
        work.path(),
        &["config", "init", "--format", "toml"],
        &[],
    );
    let starter = std::fs::read_to_string(work.path().join("cc-relay.toml")).unwrap();
    assert_eq!(starter, cc_relay::config::STARTER_CONFIG_TOML);
    run(home, work.path(), &["config", "validate"], &[]);
    // A broken TOML file: Go's failure line, the place, no quote of the line.
    std::fs::write(&toml, "[server]\nlisten = 127.0.0.1\n").unwrap();
    let out = Command::new(BIN)
        .args(["config", "validate", "-c", toml.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("✗ Config validation failed"), "{err}");
    assert!(err.contains("relay.toml:2:"), "{err}");
}

/// Claude Code's CLI, installed by `make deps-test` (or `CLAUDE_CODE_BIN`).
fn claude_code_cli() -> std::path::PathBuf {
    let path = std::env::var_os("CLAUDE_CODE_BIN").map_or_else(
        || {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("target/claude-code/node_modules/.bin/claude")
        },
        std::path::PathBuf::from,
    );
    assert!(
        path.exists(),
        "Claude Code's CLI is not at {}: run `make deps-test` (or `make test`)",
        path.display()
    );
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn claude_code_set_up_by_config_cc_init_reaches_the_relay() {
    let cli = claude_code_cli();
    let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
    let relay = RelayProcess::start(
        "  auth:\n    api_key: relay-key-for-claude\n    allow_bearer: true\n",
        &format!(
            "providers:\n{}",
            mock_provider("anthropic", &mock, &[("pool", "sk-pool-key")], "")
        ),
    );
    let home = tempfile::tempdir().unwrap();
    let url = relay.url("");
    tokio::task::block_in_place(|| {
        run(
            home.path(),
            home.path(),
            &[
                "config",
                "cc",
                "init",
                "--url",
                &url,
                "--api-key-env",
                "RELAY_KEY",
            ],
            &[("RELAY_KEY", "relay-key-for-claude")],
        );
        // Only the settings file tells Claude Code where to go and with which key.
        let out = Command::new(&cli)
            .args(["--print", "say hi"])
            .current_dir(home.path())
            .env("HOME", home.path())
            .env_remove("ANTHROPIC_API_KEY")
            .env_remove("ANTHROPIC_AUTH_TOKEN")
            .env_remove("ANTHROPIC_BASE_URL")
            .env_remove("CLAUDE_CONFIG_DIR")
            .env("DISABLE_AUTOUPDATER", "1")
            .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("cc-relay mock"),
            "claude --print: {}{}\nrelay logs:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            relay.logs()
        );
    });
    // Through the relay, with the pool's key (the relay's own key never goes upstream).
    let requests = mock.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.path_and_query.starts_with("/v1/messages")
                && r.header("x-api-key") == Some("sk-pool-key")),
        "{requests:?}"
    );
    assert!(requests.iter().all(|r| r
        .header("authorization")
        .is_none_or(|a| !a.contains("relay-key-for-claude"))));
}

/// A relay serving a TOML file reloads it: a new key is in the pool after `cc-relay reload`,
/// and a broken TOML reload is refused while the old config keeps serving.
#[tokio::test(flavor = "multi_thread")]
async fn a_toml_config_serves_and_reloads() {
    let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    let port = free_port();
    let write = |keys: &str| {
        std::fs::write(
            &path,
            format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\npid_file = \"{pid}\"\n\
                 upgrade_sock = \"{sock}\"\n\n[[providers]]\nname = \"anthropic\"\n\
                 type = \"anthropic\"\nbase_url = \"{base}\"\n{keys}",
                pid = dir.path().join("pid").display(),
                sock = dir.path().join("sock").display(),
                base = mock.base_url(),
            ),
        )
        .unwrap();
    };
    write("\n[[providers.keys]]\nname = \"one\"\nkey = \"sk-one\"\n");
    let mut relay = Command::new(BIN)
        .args(["serve", "--config", path.to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status_url = format!("http://127.0.0.1:{port}/status");
    let keys = || async {
        let status: serde_json::Value = reqwest::get(&status_url).await?.json().await?;
        Ok::<_, reqwest::Error>(
            status["providers"][0]["keys"]
                .as_array()
                .map(|k| k.iter().map(|k| k["id"].to_string()).collect::<Vec<_>>())
                .unwrap_or_default(),
        )
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while keys().await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the relay did not start"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(keys().await.unwrap(), ["\"one\""]);

    write(
        "\n[[providers.keys]]\nname = \"one\"\nkey = \"sk-one\"\n\n\
         [[providers.keys]]\nname = \"two\"\nkey = \"sk-two\"\n",
    );
    let reload = |path: std::path::PathBuf| {
        tokio::task::spawn_blocking(move || {
            Command::new(BIN)
                .args(["reload", "--config", path.to_str().unwrap()])
                .output()
                .unwrap()
        })
    };
    let out = reload(path.clone()).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(keys().await.unwrap(), ["\"one\"", "\"two\""]);

    std::fs::write(&path, "[server\nlisten = 1\n").unwrap();
    let out = reload(path.clone()).await.unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid TOML"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(keys().await.unwrap(), ["\"one\"", "\"two\""]);
    let _ = relay.kill();
    let _ = relay.wait();
}
