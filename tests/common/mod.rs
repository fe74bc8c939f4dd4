//! Test harness: the real `cc-relay` binary on a free loopback port, configured against the
//! in-repo mock upstream. Every process a test starts is killed when its handle drops.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// Each test binary uses a different part of this module.
#[allow(unused_imports)]
pub use cc_relay_mock::{Fault, MockConfig, MockUpstream};

pub mod browser;
pub mod redis;

pub const BIN: &str = env!("CARGO_BIN_EXE_cc-relay");

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running relay process.
pub struct RelayProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: Arc<tempfile::TempDir>,
    pub config_path: PathBuf,
    logs: Arc<Mutex<String>>,
}

/// The `server:` block every test config starts with: its own port, pid file and upgrade
/// socket in the test's temp dir, short grace periods (unless `extra` sets its own).
pub fn server_block(port: u16, dir: &Path, extra: &str) -> String {
    let mut grace = String::new();
    for (field, secs) in [
        ("grace_period_seconds", 3),
        ("graceful_shutdown_timeout_seconds", 2),
    ] {
        if !extra.contains(&format!("  {field}:")) {
            grace.push_str(&format!("  {field}: {secs}\n"));
        }
    }
    format!(
        "server:\n  listen: \"127.0.0.1:{port}\"\n  threads: 2\n  pid_file: \"{}\"\n  upgrade_sock: \"{}\"\n{grace}{extra}",
        dir.join("relay.pid").display(),
        dir.join("upgrade.sock").display(),
    )
}

/// A provider block for the mock with the given keys (`name: secret` pairs; empty = passthrough).
pub fn mock_provider(
    name: &str,
    mock: &MockUpstream,
    keys: &[(&str, &str)],
    extra: &str,
) -> String {
    let mut s = format!(
        "  - name: {name}\n    type: anthropic\n    base_url: \"{}\"\n{extra}",
        mock.base_url()
    );
    if keys.is_empty() {
        s.push_str("    keys: []\n");
    } else {
        s.push_str("    keys:\n");
        for (id, secret) in keys {
            s.push_str(&format!("      - name: {id}\n        key: \"{secret}\"\n"));
        }
    }
    s
}

impl RelayProcess {
    /// Start a relay with `body` (everything after the `server:` block) and wait until it
    /// answers `/health`.
    pub fn start(server_extra: &str, body: &str) -> RelayProcess {
        Self::start_with_log(server_extra, body, "info,cc_relay=debug")
    }

    /// [`Self::start`] with the given `RUST_LOG`.
    pub fn start_with_log(server_extra: &str, body: &str, rust_log: &str) -> RelayProcess {
        Self::start_with_env(server_extra, body, &[("RUST_LOG", rust_log)])
    }

    /// [`Self::start`] with extra environment variables for the relay. The port comes from
    /// [`free_port`], which another process may take before the relay binds it: the relay then
    /// exits at once saying it cannot listen, and it is started again on another port.
    pub fn start_with_env(server_extra: &str, body: &str, env: &[(&str, &str)]) -> RelayProcess {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let config_path = dir.path().join("cc-relay.yaml");
        for _ in 0..5 {
            let port = free_port();
            let yaml = format!("{}{body}", server_block(port, dir.path(), server_extra));
            std::fs::write(&config_path, yaml).unwrap();
            let mut relay = Self::spawn(dir.clone(), config_path.clone(), port, false, env);
            if relay.wait_listening(Duration::from_secs(20)) {
                return relay;
            }
            let exited = relay.child.try_wait().unwrap().is_some();
            if !(exited && relay.logs().contains("cannot listen on")) {
                panic!("relay did not start listening; logs:\n{}", relay.logs());
            }
        }
        panic!("no free port for the relay after 5 tries");
    }

    /// Start another process on the same config (and so the same port, pid file and upgrade
    /// socket) with `--upgrade`; it takes the listeners when the old one gets SIGQUIT.
    pub fn start_upgrade(&self) -> RelayProcess {
        Self::spawn(
            self.dir.clone(),
            self.config_path.clone(),
            self.addr.port(),
            true,
            &[],
        )
    }

    fn spawn(
        dir: Arc<tempfile::TempDir>,
        config_path: PathBuf,
        port: u16,
        upgrade: bool,
        env: &[(&str, &str)],
    ) -> Self {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve").arg("--config").arg(&config_path);
        if upgrade {
            cmd.arg("--upgrade");
        }
        cmd.env("RUST_LOG", "info,cc_relay=debug");
        // An empty value hides the variable (some readers, e.g. the AWS SDK's container
        // provider, refuse an empty one rather than skipping it).
        for &(name, value) in env {
            if value.is_empty() {
                cmd.env_remove(name);
            } else {
                cmd.env(name, value);
            }
        }
        cmd.env_remove("ANTHROPIC_API_KEY")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn cc-relay");
        let logs = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        RelayProcess {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
            config_path,
            logs,
        }
    }

    /// Wait until the relay accepts connections; `false` if it exited or did not in time.
    fn wait_listening(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(self.addr).is_ok() {
                // The relay writes its pid file just after it starts listening; the reload and
                // upgrade commands read it. Under load that comes a moment later: wait for it
                // (briefly: a config may put it elsewhere).
                let pid_file = self.dir.path().join("relay.pid");
                let until = Instant::now() + Duration::from_secs(5);
                while !pid_file.exists() && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(20));
                }
                return true;
            }
            if self.child.try_wait().unwrap().is_some() {
                // Let the log reader take the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Wait until the logs contain `needle`.
    pub fn wait_for_log(&self, needle: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.logs().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    /// Wait for the process to exit by itself; its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Wait until every request the relay began is settled: what it used charged to its key,
    /// client quotas and budgets, its metrics counted and its access-log line written. That
    /// happens in Pingora's logging phase, after the client has its response, so a test that
    /// asserts on counts right after a response waits here first. `api_key`: the relay's
    /// credential when `/status` needs one.
    pub async fn wait_settled(&self, api_key: Option<&str>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut req = client().get(self.url("/status"));
            if let Some(key) = api_key {
                req = req.header("x-api-key", key);
            }
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 200, "/status for wait_settled");
            let status: serde_json::Value = resp.json().await.unwrap();
            let unsettled = status["requests_unsettled"]
                .as_u64()
                .unwrap_or_else(|| panic!("no requests_unsettled in /status: {status}"));
            if unsettled == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{unsettled} requests still unsettled after 10 s; logs:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn rewrite_config(&self, server_extra: &str, body: &str) {
        let yaml = format!(
            "{}{body}",
            server_block(self.addr.port(), self.dir.path(), server_extra)
        );
        std::fs::write(&self.config_path, yaml).unwrap();
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

pub fn message_body(model: &str, stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": model,
        "max_tokens": 64000,
        "stream": stream,
        "messages": [{"role": "user", "content": "Hello there"}],
    })
}

pub async fn start_mock() -> MockUpstream {
    MockUpstream::start(MockConfig::default()).await.unwrap()
}

/// The `error.type` of an Anthropic error body.
pub fn error_type(body: &serde_json::Value) -> &str {
    assert_eq!(body["type"], "error", "not an Anthropic error: {body}");
    body["error"]["type"].as_str().unwrap()
}

/// `POST /v1/messages` on `relay` with `body` and extra headers.
pub async fn post_messages(
    relay: &RelayProcess,
    body: &serde_json::Value,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = client().post(relay.url("/v1/messages")).json(body);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.send().await.unwrap()
}

/// `GET path` on `relay`, as JSON (`/health`, `/status`).
pub async fn get_json(relay: &RelayProcess, path: &str) -> serde_json::Value {
    client()
        .get(relay.url(path))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// `GET path` on `relay`, as text (`/metrics`).
pub async fn get_text(relay: &RelayProcess, path: &str) -> String {
    let resp = client().get(relay.url(path)).send().await.unwrap();
    resp.text().await.unwrap()
}

/// `/status` read with `key` (a client's, for its own view, or an operator's), answered 200.
pub async fn status_as(relay: &RelayProcess, key: &str) -> serde_json::Value {
    let resp = client()
        .get(relay.url("/status"))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

/// The day's tokens `/status` (read with `key`) says client `index` has used.
pub async fn day_used(relay: &RelayProcess, key: &str, index: usize) -> u64 {
    status_as(relay, key).await["clients"][index]["daily_budget"]["used"]
        .as_u64()
        .unwrap()
}

/// The client budgets' state file's day count for `client`, once it parses and has one.
pub fn saved_day_tokens(path: &Path, client: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let file: serde_json::Value = serde_json::from_str(&text).ok()?;
    file["clients"][client]["day_tokens"].as_u64()
}

/// Wait until the state file holds `want` for each client's day (the writer saves each second).
pub async fn wait_saved(path: &Path, want: &[(&str, u64)], relay: &RelayProcess) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !want
        .iter()
        .all(|(c, n)| saved_day_tokens(path, c) == Some(*n))
    {
        assert!(
            Instant::now() < deadline,
            "the state file never held {want:?}: {:?}\nlogs:\n{}",
            std::fs::read_to_string(path),
            relay.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `cc-relay <command> --config <config>`, run off the async runtime.
pub async fn run_cli(command: &'static str, config: &Path) -> std::process::Output {
    let config = config.to_owned();
    tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args([command, "--config"])
            .arg(config)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// `(id, secret, extra yaml lines for the key)`.
pub type KeyDef<'a> = (&'a str, &'a str, &'a str);

pub fn pool_config(mock: &MockUpstream, keys: &[KeyDef<'_>], provider_extra: &str) -> String {
    let mut s = format!(
        "providers:\n  - name: pool\n    type: anthropic\n    base_url: \"{}\"\n{provider_extra}    keys:\n",
        mock.base_url()
    );
    for (id, secret, extra) in keys {
        s.push_str(&format!("      - name: {id}\n        key: \"{secret}\"\n"));
        for line in extra.lines() {
            s.push_str(&format!("        {line}\n"));
        }
    }
    s
}

/// The `/status` entry of key `id` of the first provider.
pub fn key_status<'a>(status: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    status["providers"][0]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id)
        .unwrap()
}

/// The upstream answers 429 with `retry-after: <secs>`.
pub fn throttled(secs: &str) -> Fault {
    Fault::Status {
        status: 429,
        retry_after: Some(secs.into()),
    }
}

/// Run `scenario` of `tests/sdk/sdk_client.py` (the official Anthropic Python SDK, installed by
/// `make deps-test`; a missing SDK fails with instructions, never skips) against `relay`.
pub fn run_sdk(relay: &RelayProcess, scenario: &str) {
    run_sdk_at(relay, &relay.url(""), scenario, &[]);
}

/// [`run_sdk`] against `base_url` (e.g. the relay's https URL) with `env` for the client.
pub fn run_sdk_at(relay: &RelayProcess, base_url: &str, scenario: &str, env: &[(&str, &str)]) {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/sdk_client.py");
    let probe = Command::new(&python)
        .args(["-c", "import anthropic"])
        .output()
        .expect("python3 is needed for the SDK test");
    assert!(
        probe.status.success(),
        "the anthropic Python SDK is not installed: run `make deps-test` (or `make test`)"
    );
    let out = Command::new(&python)
        .arg(script)
        .arg(base_url)
        .arg(scenario)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "SDK scenario {scenario} failed:\n{}\n{}\nrelay logs:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        relay.logs()
    );
}

/// A test certificate authority (openssl CLI) and the server certificates it issues.
pub struct TestCa {
    pub dir: tempfile::TempDir,
    /// The CA certificate (PEM), for clients to trust.
    pub cert: PathBuf,
}

fn openssl(args: &[&str], dir: &Path) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stderr(Stdio::null())
        .status()
        .expect("openssl is needed to make test certificates");
    assert!(status.success(), "openssl {args:?}");
}

impl TestCa {
    pub fn new() -> TestCa {
        let dir = tempfile::tempdir().unwrap();
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=cc-relay test CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
            dir.path(),
        );
        let cert = dir.path().join("ca.pem");
        TestCa { dir, cert }
    }

    /// A certificate for 127.0.0.1 and localhost with common name `name`: `(cert, key)`.
    /// (webpki refuses a self-signed CA certificate as a server's, hence the CA.)
    pub fn issue(&self, name: &str) -> (PathBuf, PathBuf) {
        let d = self.dir.path();
        let ext = format!("{name}.ext");
        std::fs::write(
            d.join(&ext),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        let (key, csr, cert) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        let subject = format!("/CN={name}");
        openssl(
            &[
                "req", "-newkey", "rsa:2048", "-nodes", "-subj", &subject, "-keyout", &key, "-out",
                &csr,
            ],
            d,
        );
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &ext,
                "-out",
                &cert,
            ],
            d,
        );
        (d.join(cert), d.join(key))
    }
}

/// Read from `stream` until it closes or `within` passes: whether it closed, and what came.
/// (`stream` needs a short read timeout of its own so the deadline is checked.)
pub fn read_until_closed<S: std::io::Read>(stream: &mut S, within: Duration) -> (bool, Vec<u8>) {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return (true, got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return (true, got),
        }
    }
    (false, got)
}
