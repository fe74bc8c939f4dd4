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
    _dir: tempfile::TempDir,
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn openssl(args: &[&str], dir: &std::path::Path) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stderr(Stdio::null())
        .status()
        .expect("openssl is needed to make test certificates");
    assert!(status.success(), "openssl {args:?}");
}

/// A test CA, a server certificate for 127.0.0.1 signed by it, and an HTTPS upstream serving
/// with that certificate. (webpki refuses a self-signed CA certificate as a server's.)
fn tls_upstream() -> TlsUpstream {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    let steps: [&[&str]; 3] = [
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
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "key.pem",
            "-out",
            "leaf.csr",
        ],
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
            "-out",
            "cert.pem",
        ],
    ];
    for step in steps {
        openssl(step, d);
    }
    let (cert, key) = (d.join("cert.pem"), d.join("key.pem"));
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
        cert: d.join("ca.pem"),
        _dir: dir,
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
