//! Zero-downtime lifecycle against the real binary: SIGHUP reloads, binary upgrade, graceful
//! shutdown. Every test bounds its own time and its processes die with their handles.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use nix::sys::signal::Signal;

/// Requests sent in a loop by `workers` tasks until stopped; counts successes and failures.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    errors: Arc<std::sync::Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(url: String, workers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
        let tasks = (0..workers)
            .map(|_| {
                let (stop, ok, failed, errors, url) = (
                    stop.clone(),
                    ok.clone(),
                    failed.clone(),
                    errors.clone(),
                    url.clone(),
                );
                tokio::spawn(async move {
                    let c = client();
                    while !stop.load(Ordering::Relaxed) {
                        let r = c.post(&url).json(&message_body("m", false)).send().await;
                        let outcome = match r {
                            Ok(resp) if resp.status() == 200 => {
                                resp.bytes().await.map(|_| ()).map_err(|e| e.to_string())
                            }
                            Ok(resp) => Err(format!("status {}", resp.status())),
                            Err(e) => Err(format!("{e:?}")),
                        };
                        match outcome {
                            Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                errors.lock().unwrap().push(e);
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            errors,
            tasks,
        }
    }

    async fn finish(self) -> (usize, usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let errors = self.errors.lock().unwrap().clone();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            errors,
        )
    }
}

fn provider(mock: &MockUpstream, keys: &str, extra: &str) -> String {
    format!(
        "providers:\n  - name: anthropic\n    type: anthropic\n    base_url: \"{}\"\n{extra}    keys:\n{keys}",
        mock.base_url()
    )
}

const ONE_KEY: &str = "      - name: one\n        key: sk-one\n        priority: 1\n";
const TWO_KEYS: &str = "      - name: one\n        key: sk-one\n        priority: 1\n      - name: two\n        key: sk-two\n        priority: 2\n";

/// A streamed `/v1/messages` whose `events` deltas come `interval_ms` apart: a request that is
/// still in flight while a signal arrives.
async fn open_stream(relay: &RelayProcess, events: &str, interval_ms: &str) -> reqwest::Response {
    let resp = post_messages(
        relay,
        &message_body("m", true),
        &[
            ("x-mock-events", events),
            ("x-mock-event-interval-ms", interval_ms),
        ],
    )
    .await;
    assert_eq!(resp.status(), 200);
    resp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_adds_a_key_and_a_mapping_without_a_failed_request() {
    let mock = start_mock().await;
    let relay = RelayProcess::start("", &provider(&mock, ONE_KEY, ""));
    let load = Load::start(relay.url("/v1/messages"), 4);
    tokio::time::sleep(Duration::from_millis(500)).await;

    relay.rewrite_config(
        "",
        &provider(&mock, TWO_KEYS, "    model_mapping:\n      m: m-mapped\n"),
    );
    let out = run_cli("reload", &relay.config_path).await;
    assert!(
        out.status.success(),
        "reload failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        relay.logs()
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("generation 2"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ok, failed, errors) = load.finish().await;
    assert_eq!(failed, 0, "failed requests during reload: {errors:?}");
    assert!(ok > 20, "the load loop barely ran: {ok}");

    let resp = post_messages(&relay, &message_body("m", false), &[]).await;
    assert_eq!(resp.headers()["x-cc-relay-key-id"], "two");
    let last = mock.requests().pop().unwrap();
    assert_eq!(last.json()["model"], "m-mapped");
    assert!(relay.logs().contains("keys +two"), "{}", relay.logs());
    assert!(!relay.logs().contains("sk-two"), "a secret reached the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_on_sighup_keeps_the_old_one_serving() {
    let mock = start_mock().await;
    let relay = RelayProcess::start("", &provider(&mock, ONE_KEY, ""));
    relay.rewrite_config(
        "",
        &provider(
            &mock,
            "      - name: one\n        key: sk-one\n        priority: 9\n",
            "",
        ),
    );
    relay.signal(Signal::SIGHUP);
    assert!(
        relay.wait_for_log("providers[0].keys[0].priority", Duration::from_secs(5)),
        "the reload error does not name the field:\n{}",
        relay.logs()
    );
    let status = get_json(&relay, "/status").await;
    assert_eq!(status["config_generation"], 1);
    assert!(status["reload"]["last_error"]
        .as_str()
        .unwrap()
        .contains("priority"));
    let resp = post_messages(&relay, &message_body("m", false), &[]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-cc-relay-key-id"], "one");

    // The client command refuses it too, naming the field, before signalling anything.
    let out = run_cli("reload", &relay.config_path).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("providers[0].keys[0].priority"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learned_cooldown_survives_a_reload() {
    let mock = start_mock().await;
    let relay = RelayProcess::start("", &provider(&mock, TWO_KEYS, ""));
    mock.push_fault(Some("sk-two"), throttled("40"));
    let resp = post_messages(&relay, &message_body("m", false), &[]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-cc-relay-key-id"], "one");

    let three = format!("{TWO_KEYS}      - name: three\n        key: sk-three\n");
    relay.rewrite_config("", &provider(&mock, &three, ""));
    let out = run_cli("reload", &relay.config_path).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = get_json(&relay, "/status").await;
    let keys = status["providers"][0]["keys"].as_array().unwrap();
    let two = keys.iter().find(|k| k["id"] == "two").unwrap();
    let cooling = two["cooling_down_ms"]
        .as_u64()
        .expect("cooldown lost on reload");
    assert!(cooling > 30_000, "cooling {cooling}");
    assert_eq!(keys.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_upgrade_under_load_loses_nothing_and_finishes_streams() {
    let mock = start_mock().await;
    let old = RelayProcess::start("", &provider(&mock, ONE_KEY, ""));
    let load = Load::start(old.url("/v1/messages"), 4);

    // A long stream begun on the old process: 16 events, 400 ms apart.
    let stream = tokio::spawn({
        let url = old.url("/v1/messages");
        async move {
            let resp = client()
                .post(url)
                .header("x-mock-events", "16")
                .header("x-mock-event-interval-ms", "400")
                .json(&message_body("m", true))
                .send()
                .await
                .unwrap();
            let mut body = resp.bytes_stream();
            let mut text = String::new();
            while let Some(chunk) = body.next().await {
                text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            }
            text
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut new = old.start_upgrade();
    let sock = old.dir.path().join("upgrade.sock");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        sock.exists(),
        "the new process never waited for the listeners"
    );
    old.signal(Signal::SIGQUIT);

    let text = tokio::time::timeout(Duration::from_secs(30), stream)
        .await
        .expect("the old process cut the stream")
        .unwrap();
    assert!(text.contains("message_stop"), "stream incomplete: {text}");
    assert_eq!(text.matches("event: content_block_delta").count(), 16);

    // The new process owns the port now: requests keep flowing while the old one drains.
    assert!(
        new.wait_for_log("listening", Duration::from_secs(10)),
        "{}",
        new.logs()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (ok, failed, errors) = load.finish().await;
    assert_eq!(failed, 0, "failed requests during the upgrade: {errors:?}");
    assert!(ok > 20);

    let mut old = old;
    assert_eq!(
        old.wait_exit(Duration::from_secs(20)),
        Some(0),
        "the old process did not exit cleanly"
    );
    let resp = post_messages(&new, &message_body("m", false), &[]).await;
    assert_eq!(resp.status(), 200);
    let pid: u32 = std::fs::read_to_string(new.dir.path().join("relay.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        pid,
        new.child.id(),
        "the pid file does not name the new process"
    );
    new.signal(Signal::SIGINT);
    assert!(new.wait_exit(Duration::from_secs(10)).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_a_stream_in_flight_then_exits_zero() {
    let mock = start_mock().await;
    let mut relay = RelayProcess::start("", &provider(&mock, ONE_KEY, ""));
    let resp = open_stream(&relay, "10", "200").await;
    relay.signal(Signal::SIGTERM);
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    while let Some(chunk) = body.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    assert!(text.contains("message_stop"), "the stream was cut: {text}");
    assert_eq!(relay.wait_exit(Duration::from_secs(15)), Some(0));
    assert!(!relay.dir.path().join("relay.pid").exists());
    // It left as soon as the stream was done, not at the end of the grace period.
    assert!(
        relay.wait_for_log("drained", Duration::from_secs(1)),
        "{}",
        relay.logs()
    );
}

/// Kills a process by pid when dropped (for processes the relay itself started).
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0), Signal::SIGKILL);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_command_replaces_the_process_in_place() {
    let mock = start_mock().await;
    let mut old = RelayProcess::start("", &provider(&mock, ONE_KEY, ""));
    let load = Load::start(old.url("/v1/messages"), 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = run_cli("upgrade", &old.config_path).await;
    let pid: i32 = std::fs::read_to_string(old.dir.path().join("relay.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _new = KillOnDrop(pid);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        old.logs()
    );
    assert_ne!(pid, old.child.id() as i32);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ok, failed, errors) = load.finish().await;
    assert_eq!(failed, 0, "failed requests during the upgrade: {errors:?}");
    assert!(ok > 10);
    assert_eq!(old.wait_exit(Duration::from_secs(20)), Some(0));
    let resp = post_messages(&old, &message_body("m", false), &[]).await;
    assert_eq!(resp.status(), 200, "the new process does not serve");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_exits_at_once_without_spinning_on_closed_signal_streams() {
    let mock = start_mock().await;
    let mut relay = RelayProcess::start("", &provider(&mock, ONE_KEY, ""));
    // A stream in flight: SIGINT does not wait for it (that is SIGTERM's job).
    let _stream = open_stream(&relay, "100", "200").await;
    relay.signal(Signal::SIGINT);
    assert_eq!(relay.wait_exit(Duration::from_secs(5)), Some(0));
    assert!(!relay.dir.path().join("relay.pid").exists());
    let logs = relay.logs();
    // Our own SIGINT thread (for when Pingora's fast shutdown hangs) and Pingora's fast
    // shutdown both answer the signal; whichever ends the process first, it ends at once and
    // cleanly (Pingora's way, when its runtimes exit before our thread logs, says so on the
    // way out).
    assert!(
        logs.contains("SIGINT: exiting now") || logs.contains("cc-relay stopped"),
        "{logs}"
    );
    assert!(!logs.contains("config reloaded"), "{logs}");
    assert!(!logs.contains("upgrade:"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_command_confirms_through_the_authenticated_status() {
    let mock = start_mock().await;
    let auth = "  auth:\n    api_key: relay-secret\n";
    let relay = RelayProcess::start(auth, &provider(&mock, ONE_KEY, ""));
    relay.rewrite_config(auth, &provider(&mock, TWO_KEYS, ""));
    let out = run_cli("reload", &relay.config_path).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        relay.logs()
    );
    assert!(stdout.contains("generation 2"), "{stdout}");
    // What the command read is not on the open endpoint.
    let health = get_json(&relay, "/health").await;
    assert!(health.get("reload").is_none() && health.get("last_reload_error").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_logging_level_takes_effect() {
    let mock = start_mock().await;
    let quiet = format!("{}logging:\n  level: warn\n", provider(&mock, ONE_KEY, ""));
    // No RUST_LOG: the file decides the level.
    let relay = RelayProcess::start_with_env("", &quiet, &[("RUST_LOG", "")]);
    let debug_line = "attempt 1 -> provider";
    post_messages(&relay, &message_body("m", false), &[]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!relay.logs().contains(debug_line), "{}", relay.logs());

    let verbose = quiet.replace("level: warn", "level: debug");
    relay.rewrite_config("", &verbose);
    let out = run_cli("reload", &relay.config_path).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    post_messages(&relay, &message_body("m", false), &[]).await;
    assert!(
        relay.wait_for_log(debug_line, Duration::from_secs(2)),
        "logging.level debug did not apply:\n{}",
        relay.logs()
    );
}
