//! HTTPS upstreams: the relay speaks real TLS (rustls), verifies the certificate against the
//! trust store, and sends SNI and Host from the base URL.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use common::*;
use serde_json::Value;

struct TlsUpstream {
    child: Child,
    port: u16,
    /// The CA that signed the upstream's certificate.
    cert: std::path::PathBuf,
    _ca: TestCa,
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTPS upstream serving a certificate from a test CA.
fn tls_upstream() -> TlsUpstream {
    let ca = TestCa::new();
    let (cert, key) = ca.issue("127.0.0.1");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tls/tls_upstream.py");
    let mut child = Command::new("python3")
        .arg(script)
        .arg(&cert)
        .arg(&key)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    TlsUpstream {
        child,
        port: line.trim().parse().expect("upstream port"),
        cert: ca.cert.clone(),
        _ca: ca,
    }
}

fn config(port: u16) -> String {
    format!(
        "providers:\n  - name: secure\n    type: anthropic\n    base_url: \"https://127.0.0.1:{port}\"\n    keys:\n      - name: k\n        key: sk-tls\n"
    )
}

#[tokio::test]
async fn https_upstream_with_a_trusted_certificate() {
    let up = tls_upstream();
    let ca = up.cert.to_str().unwrap().to_owned();
    let relay = RelayProcess::start_with_env("", &config(up.port), &[("SSL_CERT_FILE", &ca)]);
    let resp = post_messages(&relay, &message_body("m", false), &[]).await;
    assert_eq!(resp.status(), 200, "{}", relay.logs());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["content"][0]["text"], "over tls");
    assert_eq!(body["seen_api_key"], "sk-tls");
    assert_eq!(body["seen_host"], format!("127.0.0.1:{}", up.port));
}

#[tokio::test]
async fn https_upstream_with_an_untrusted_certificate_is_refused() {
    let up = tls_upstream();
    let relay = RelayProcess::start("", &config(up.port));
    let resp = post_messages(&relay, &message_body("m", false), &[]).await;
    assert_eq!(resp.status(), 502);
    assert_eq!(error_type(&resp.json().await.unwrap()), "api_error");
}
