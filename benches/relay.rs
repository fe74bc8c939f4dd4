//! End-to-end latency of one request through the relay, against the floor measured in the same
//! run: the same request sent directly to the mock upstream.
//!
//! The mock upstream (the `cc-relay-mock` crate) runs in this process on its own one-thread tokio runtime
//! (as `cc-relay-mock` does by default); the relay is the real `cc-relay` binary, spawned twice
//! with a temp config: a pool of 1 key and a pool of 10 keys, both with `threads: 2` and
//! `logging.level: warn`. The client is one keep-alive reqwest client on a current-thread
//! runtime, one request at a time, reading the whole response (for SSE: to the last event).
//!
//! Groups: `json/{direct,relay_1key,relay_10keys}` and `sse/{...}`. Overhead = relay - direct;
//! the run ends by printing the ratios from criterion's own estimates.
//!
//! `cargo bench --bench relay` (~1 min; add `-- --measurement-time 2 --warm-up-time 1` for a
//! quick look, or a filter such as `-- sse`). `RELAY_BIN=path` measures another build of the
//! relay against the same direct floor (A/B two commits).

use std::hint::black_box;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use cc_relay_mock::{MockConfig, MockUpstream};
use criterion::{criterion_group, Criterion};

const GROUPS: [&str; 2] = ["json", "sse"];
const TARGETS: [&str; 3] = ["direct", "relay_1key", "relay_10keys"];

/// A Messages request of ~2 KB, like the one `scripts/load.sh` sends.
fn request_body(stream: bool) -> Bytes {
    let filler = "The quick brown fox jumps over the lazy dog. ".repeat(40);
    let body = serde_json::json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 64000,
        "stream": stream,
        "system": "You are a helpful assistant used for benchmarking a relay.",
        "messages": [{"role": "user", "content": filler}],
    });
    Bytes::from(serde_json::to_vec(&body).unwrap())
}

/// The real `cc-relay` binary on a free loopback port; killed on drop.
struct RelayProcess {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl RelayProcess {
    fn start(mock: &MockUpstream, keys: usize) -> RelayProcess {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut yaml = format!(
            "server:\n  listen: \"127.0.0.1:{port}\"\n  threads: 2\n  pid_file: \"{}\"\n  \
             upgrade_sock: \"{}\"\n  grace_period_seconds: 1\n  \
             graceful_shutdown_timeout_seconds: 1\nlogging:\n  level: warn\nproviders:\n  \
             - name: mock\n    type: anthropic\n    base_url: \"{}\"\n    keys:\n",
            dir.path().join("relay.pid").display(),
            dir.path().join("upgrade.sock").display(),
            mock.base_url(),
        );
        for i in 0..keys {
            yaml.push_str(&format!(
                "      - name: bench-{i}\n        key: \"sk-bench-{i}\"\n"
            ));
        }
        let config = dir.path().join("cc-relay.yaml");
        std::fs::File::create(&config)
            .unwrap()
            .write_all(yaml.as_bytes())
            .unwrap();
        // RELAY_BIN: another build of the relay to measure (A/B two commits, as `make load`).
        let bin = std::env::var_os("RELAY_BIN").map_or_else(
            || PathBuf::from(env!("CARGO_BIN_EXE_cc-relay")),
            PathBuf::from,
        );
        let child = Command::new(bin)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env_remove("RUST_LOG")
            .env_remove("ANTHROPIC_API_KEY")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn cc-relay");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "cc-relay did not start listening"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        RelayProcess {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn one_request(client: &reqwest::Client, url: &str, body: &Bytes) -> usize {
    let resp = client
        .post(url)
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01")
        .header("x-api-key", "sk-bench-client")
        .body(body.clone())
        .send()
        .await
        .expect("request");
    assert!(resp.status().is_success(), "status {}", resp.status());
    resp.bytes().await.expect("body").len()
}

fn relay_end_to_end(c: &mut Criterion) {
    // The mock's own runtime: one worker thread, as `cc-relay-mock --threads 1`.
    let mock_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mock = mock_rt
        .block_on(MockUpstream::start(MockConfig {
            record: false,
            ..MockConfig::default()
        }))
        .unwrap();
    let relay_1 = RelayProcess::start(&mock, 1);
    let relay_10 = RelayProcess::start(&mock, 10);
    let urls = [
        format!("{}/v1/messages", mock.base_url()),
        format!("http://{}/v1/messages", relay_1.addr),
        format!("http://{}/v1/messages", relay_10.addr),
    ];

    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(4)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    for group_name in GROUPS {
        let body = request_body(group_name == "sse");
        // Each target answers before measuring starts (and the keep-alive connections exist).
        for url in &urls {
            client_rt.block_on(one_request(&client, url, &body));
        }
        let mut group = c.benchmark_group(group_name);
        for (target, url) in TARGETS.iter().zip(&urls) {
            group.bench_function(*target, |b| {
                b.to_async(&client_rt)
                    .iter(|| async { black_box(one_request(&client, url, &body).await) })
            });
        }
        group.finish();
    }
    drop(relay_1);
    drop(relay_10);
    mock.shutdown();
}

/// Where criterion writes its estimates (same rule as criterion 0.5).
fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) => PathBuf::from(t).join("criterion"),
        None => PathBuf::from("target/criterion"),
    }
}

/// Median and mean of one benchmark from `new/estimates.json`, in nanoseconds; only when this
/// run wrote it (not an earlier run's, for benchmarks a filter skipped).
fn estimate(group: &str, target: &str, since: SystemTime) -> Option<(f64, f64)> {
    let path = criterion_dir()
        .join(group)
        .join(target)
        .join("new/estimates.json");
    if std::fs::metadata(&path).ok()?.modified().ok()? < since {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    Some((
        v["median"]["point_estimate"].as_f64()?,
        v["mean"]["point_estimate"].as_f64()?,
    ))
}

/// relay / direct from this run's estimates (skipped for benchmarks filtered out).
fn print_ratios(since: SystemTime) {
    println!("\nrelay vs direct (criterion medians; overhead = relay - direct):");
    println!(
        "{:<6} {:<14} {:>12} {:>12} {:>8}",
        "group", "target", "median", "overhead", "ratio"
    );
    for group in GROUPS {
        let Some((direct, _)) = estimate(group, "direct", since) else {
            continue;
        };
        println!(
            "{group:<6} {:<14} {:>9.1} µs {:>12} {:>8}",
            "direct",
            direct / 1e3,
            "-",
            "1.00x"
        );
        for target in &TARGETS[1..] {
            if let Some((median, _)) = estimate(group, target, since) {
                println!(
                    "{group:<6} {target:<14} {:>9.1} µs {:>9.1} µs {:>7.2}x",
                    median / 1e3,
                    (median - direct) / 1e3,
                    median / direct
                );
            }
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(8))
        .sample_size(60);
    targets = relay_end_to_end
}

fn main() {
    let started = SystemTime::now();
    benches();
    Criterion::default().configure_from_args().final_summary();
    // `cargo bench` passes `--bench`; `cargo test --benches` runs each benchmark once only.
    if std::env::args().any(|a| a == "--bench") {
        print_ratios(started);
    }
}
