//! The relay at the edge: TLS and HTTP/2 for clients (`server.tls`, `server.enable_http2`), a
//! certificate swapped by a reload under load.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

/// A relay with `server_extra` in its server block, one key, in front of a fresh mock.
async fn relay_with(server_extra: &str) -> (MockUpstream, RelayProcess) {
    let mock = start_mock().await;
    let relay = RelayProcess::start(server_extra, &pool_config(&mock, &[("k1", "sk-1", "")], ""));
    (mock, relay)
}

fn tls_block(cert: &Path, key: &Path, http2: bool) -> String {
    format!(
        "  enable_http2: {http2}\n  tls:\n    cert_file: \"{}\"\n    key_file: \"{}\"\n",
        cert.display(),
        key.display()
    )
}

fn https(relay: &RelayProcess, path: &str) -> String {
    format!("https://localhost:{}{path}", relay.addr.port())
}

/// `curl` with `args`: the HTTP version it used and the status, then the body.
fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-w",
            "\n%{http_version} %{http_code}",
        ])
        .args(args)
        .output()
        .expect("curl is needed for the HTTP/2 tests");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, line) = text.rsplit_once('\n').unwrap_or(("", &text));
    (line.to_owned(), body.to_owned())
}

const STREAM: &str =
    r#"{"model":"m","max_tokens":5,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
const JSON: &str = r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#;

fn post<'a>(url: &'a str, body: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![url, "-H", "content-type: application/json", "-d", body];
    args.extend_from_slice(extra);
    args
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sdk_over_https_and_curl_over_http2_by_alpn() {
    let mock = start_mock().await;
    let ca = TestCa::new();
    let (cert, key) = ca.issue("relay");
    let relay = RelayProcess::start(
        &tls_block(&cert, &key, true),
        &pool_config(&mock, &[("k1", "sk-1", "")], ""),
    );
    let ca_file = ca.cert.to_str().unwrap();
    tokio::task::block_in_place(|| {
        run_sdk_at(
            &relay,
            &https(&relay, ""),
            "happy",
            &[("CC_RELAY_TEST_CA", ca_file)],
        );
        let url = https(&relay, "/v1/messages");
        for (body, expect) in [(STREAM, "message_stop"), (JSON, "\"usage\"")] {
            let (status, text) = curl(&post(&url, body, &["--http2", "--cacert", ca_file]));
            assert_eq!(status, "2 200", "{text}");
            assert!(text.contains(expect), "{text}");
        }
        // HTTP/1.1 over the same listener.
        let (status, _) = curl(&post(&url, JSON, &["--http1.1", "--cacert", ca_file]));
        assert_eq!(status, "1.1 200");
        // Plain HTTP to the TLS port is not answered as HTTP.
        let (status, _) = curl(&[&relay.url("/health")]);
        assert_eq!(status, "0 000");
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn h2c_with_prior_knowledge_on_a_plain_listener_only_when_enabled() {
    let mock = start_mock().await;
    for enabled in [true, false] {
        let relay = RelayProcess::start(
            &format!("  enable_http2: {enabled}\n"),
            &pool_config(&mock, &[("k1", "sk-1", "")], ""),
        );
        let url = relay.url("/v1/messages");
        tokio::task::block_in_place(|| {
            let (status, text) = curl(&post(&url, STREAM, &["--http2-prior-knowledge"]));
            if enabled {
                assert_eq!(status, "2 200", "{text}");
                assert!(text.contains("message_stop"), "{text}");
                let (status, text) = curl(&post(&url, JSON, &["--http2-prior-knowledge"]));
                assert_eq!(status, "2 200", "{text}");
            } else {
                assert_ne!(status, "2 200", "{text}");
            }
            let (status, _) = curl(&post(&url, JSON, &["--http1.1"]));
            assert_eq!(status, "1.1 200");
        });
    }
}

/// The certificate's common name as a fresh handshake sees it.
fn served_name(port: u16) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} -servername localhost </dev/null \
             2>/dev/null | openssl x509 -noout -subject"
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_swapped_and_reloaded_under_load_fails_no_request() {
    let mock = start_mock().await;
    let ca = TestCa::new();
    let (cert_a, key_a) = ca.issue("relay-a");
    let (cert_b, key_b) = ca.issue("relay-b");
    let live = tempfile::tempdir().unwrap();
    let (cert, key) = (live.path().join("cert.pem"), live.path().join("key.pem"));
    std::fs::copy(&cert_a, &cert).unwrap();
    std::fs::copy(&key_a, &key).unwrap();
    let relay = RelayProcess::start(
        &tls_block(&cert, &key, true),
        &pool_config(&mock, &[("k1", "sk-1", "")], ""),
    );
    assert!(served_name(relay.addr.port()).contains("relay-a"));

    let root = reqwest::Certificate::from_pem(&std::fs::read(&ca.cert).unwrap()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let url = https(&relay, "/v1/messages");
    let mut workers = Vec::new();
    for worker in 0..4 {
        let (stop, ok, failed, root, url) = (
            stop.clone(),
            ok.clone(),
            failed.clone(),
            root.clone(),
            url.clone(),
        );
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                // Half the workers open a new connection (a new handshake) every request.
                let client = reqwest::Client::builder()
                    .add_root_certificate(root.clone())
                    .use_rustls_tls()
                    .http2_prior_knowledge_if(worker % 2 == 0)
                    .build()
                    .unwrap();
                let body = if worker % 2 == 0 { STREAM } else { JSON };
                let sent = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                let whole = match sent {
                    Ok(r) if r.status() == 200 => r.bytes().await.is_ok(),
                    _ => false,
                };
                if whole {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    std::fs::copy(&cert_b, &cert).unwrap();
    std::fs::copy(&key_b, &key).unwrap();
    let out = reload(&relay).await;
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        relay.logs()
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "{}", relay.logs());
    assert!(ok.load(Ordering::Relaxed) > 20);
    assert!(served_name(relay.addr.port()).contains("relay-b"));

    // A key that does not belong to the certificate: refused, naming the file; B stays.
    std::fs::copy(&key_a, &key).unwrap();
    let out = reload(&relay).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{} does not belong to", key.display())),
        "{err}"
    );
    assert!(served_name(relay.addr.port()).contains("relay-b"));
}

/// `cc-relay reload` on the relay's config.
async fn reload(relay: &RelayProcess) -> std::process::Output {
    let config = relay.config_path.clone();
    tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["reload", "--config", config.to_str().unwrap()])
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

trait PriorKnowledge {
    fn http2_prior_knowledge_if(self, on: bool) -> Self;
}

impl PriorKnowledge for reqwest::ClientBuilder {
    /// Over TLS, ALPN decides; `http2_prior_knowledge` then forces h2 through it.
    fn http2_prior_knowledge_if(self, on: bool) -> Self {
        if on {
            self.http2_prior_knowledge()
        } else {
            self.http1_only()
        }
    }
}

/// [`common::read_until_closed`] on a TCP stream, with what came as text.
fn read_until_closed(stream: &mut std::net::TcpStream, within: Duration) -> (bool, String) {
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let (closed, got) = common::read_until_closed(stream, within);
    (closed, String::from_utf8_lossy(&got).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_kept_alive_connection_is_closed_after_idle_timeout() {
    use std::io::Write;
    let mock = start_mock().await;
    for (idle, closes) in [("  idle_timeout_ms: 1000\n", true), ("", false)] {
        let relay = RelayProcess::start(idle, &pool_config(&mock, &[("k1", "sk-1", "")], ""));
        tokio::task::block_in_place(|| {
            let mut stream = std::net::TcpStream::connect(relay.addr).unwrap();
            stream
                .write_all(b"GET /health HTTP/1.1\r\nHost: relay\r\n\r\n")
                .unwrap();
            // The answer arrives, the connection stays open for the next request...
            let (closed, answer) = read_until_closed(&mut stream, Duration::from_millis(500));
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            assert!(!closed);
            // ...until it has idled for the timeout (the default is 60 s).
            let (closed, _) = read_until_closed(&mut stream, Duration::from_millis(2500));
            assert_eq!(closed, closes, "idle setting {idle:?}");
        });
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_stops_arriving_gets_408_while_others_are_served() {
    let (mock, relay) = relay_with("  client_body_timeout_ms: 1000\n").await;
    let slow = open_slow(
        &relay,
        20,
        b"POST /v1/messages HTTP/1.1\r\nHost: relay\r\ncontent-type: application/json\r\n\
          content-length: 100\r\n\r\n{\"model\":",
    );
    // Meanwhile a normal request is served at once.
    served_at_once(&relay).await;
    tokio::task::block_in_place(|| {
        for mut s in slow {
            let (closed, answer) = read_until_closed(&mut s, Duration::from_secs(3));
            assert!(closed, "{answer}");
            assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
            assert!(
                answer.contains("\"type\":\"invalid_request_error\"")
                    && answer.contains("nothing for 1000 ms"),
                "{answer}"
            );
        }
    });
    assert_eq!(mock.request_count(), 1);
}

/// `n` client connections to `relay` that each sent `head` and then nothing more.
fn open_slow(relay: &RelayProcess, n: usize, head: &[u8]) -> Vec<std::net::TcpStream> {
    use std::io::Write;
    (0..n)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(relay.addr).unwrap();
            s.write_all(head).unwrap();
            s
        })
        .collect()
}

/// A normal request is answered 200 within 0.9 s; when it started.
async fn served_at_once(relay: &RelayProcess) -> std::time::Instant {
    let started = std::time::Instant::now();
    let ok = post_messages(relay, &message_body("m", false), &[]).await;
    assert_eq!(ok.status(), 200);
    assert!(started.elapsed() < Duration::from_millis(900));
    started
}

#[tokio::test(flavor = "multi_thread")]
async fn a_header_past_max_header_bytes_gets_431() {
    let (mock, relay) = relay_with("  max_header_bytes: 32768\n").await;
    let big = "x".repeat(40_000);
    let refused = post_messages(&relay, &message_body("m", false), &[("x-padding", &big)]).await;
    assert_eq!(refused.status(), 431);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(error_type(&body), "invalid_request_error", "{body}");
    let small = "x".repeat(20_000);
    let ok = post_messages(&relay, &message_body("m", false), &[("x-padding", &small)]).await;
    assert_eq!(ok.status(), 200);
    assert_eq!(mock.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_megabyte_header_gets_431_as_it_arrives_finished_or_not() {
    use std::io::{Read, Write};
    let (mock, relay) = relay_with("").await;
    // Finished, 1 MB and 2 MB (past Pingora's own 1 MiB buffer, which closed without a word).
    for size in [1_000_000, 2_000_000] {
        let big = "x".repeat(size);
        let refused =
            post_messages(&relay, &message_body("m", false), &[("x-padding", &big)]).await;
        assert_eq!(refused.status(), 431, "{size} bytes");
        let body: serde_json::Value = refused.json().await.unwrap();
        assert_eq!(error_type(&body), "invalid_request_error", "{body}");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limit of 65536 bytes"));
    }
    // Unfinished: 1 MB of header and no end to it. The answer comes while the client is still
    // connected, before the header deadline.
    let mut s = std::net::TcpStream::connect(relay.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = std::time::Instant::now();
    let mut head = b"POST /v1/messages HTTP/1.1\r\nHost: relay\r\nx-padding: ".to_vec();
    head.extend(std::iter::repeat_n(b'x', 1_000_000));
    s.write_all(&head).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    assert!(answer.contains("\"invalid_request_error\""), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // Nothing reached the upstream, and the relay serves the next client.
    assert_eq!(mock.request_count(), 0);
    let ok = post_messages(&relay, &message_body("m", false), &[]).await;
    assert_eq!(ok.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_buffered_together_stay_within_max_buffered_body_bytes() {
    use std::io::Write;
    let (_mock, relay) = relay_with(
        "  max_body_bytes: 600000\n  max_buffered_body_bytes: 1000000\n  \
             max_buffered_body_bytes_per_address: 1000000\n",
    )
    .await;
    // One client declares 600 KB and sends a little of it: that share is held.
    let mut holder = std::net::TcpStream::connect(relay.addr).unwrap();
    holder
        .write_all(
            b"POST /v1/messages HTTP/1.1\r\nHost: relay\r\ncontent-type: application/json\r\n\
              content-length: 600000\r\n\r\n{\"model\":",
        )
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = get_json(&relay, "/status").await;
    assert_eq!(status["buffered_body_bytes"]["held"], 600_000, "{status}");
    assert_eq!(status["buffered_body_bytes"]["limit"], 1_000_000);
    // Another 600 KB body does not fit beside it: 503 overloaded_error, Retry-After 1, at once.
    let mut large = message_body("m", false);
    large["padding"] = serde_json::Value::String("y".repeat(590_000));
    let refused = post_messages(&relay, &large, &[]).await;
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(error_type(&body), "overloaded_error", "{body}");
    // A small one does.
    assert_eq!(
        post_messages(&relay, &message_body("m", false), &[])
            .await
            .status(),
        200
    );
    // The holder goes: its share comes back and the large body is taken.
    drop(holder);
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let status = post_messages(&relay, &large, &[]).await.status();
        if status == 200 {
            break;
        }
        assert_eq!(status, 503);
        assert!(
            std::time::Instant::now() < deadline,
            "the share never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A client that sends `head` (a declared body) and then a byte every 500 ms (each under the
/// pause timeout) until an answer comes: when the answer came after it connected, and what.
fn drip(addr: std::net::SocketAddr, head: &[u8], within: Duration) -> (Duration, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(head).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 4096];
    while started.elapsed() < within {
        match s.read(&mut buf) {
            Ok(0) => return (started.elapsed(), String::new()),
            Ok(n) => {
                // The answer has begun: read the rest, send nothing more.
                let at = started.elapsed();
                let mut got = buf[..n].to_vec();
                let (_, rest) = read_until_closed(&mut s, Duration::from_secs(2));
                got.extend_from_slice(rest.as_bytes());
                return (at, String::from_utf8_lossy(&got).into_owned());
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if s.write_all(b" ").is_err() {
                    return (started.elapsed(), String::new());
                }
            }
            Err(e) => return (started.elapsed(), format!("read error: {e}")),
        }
    }
    (started.elapsed(), "still open".into())
}

#[tokio::test(flavor = "multi_thread")]
async fn dripping_bodies_are_cut_below_min_body_rate_and_free_the_budget() {
    // Two clients declaring 1 MB bodies hold the whole budget and drip a byte every 500 ms,
    // under the 2 s pause timeout. Issue 26: they held it (everyone else 503) for as long as
    // they dripped.
    let (mock, relay) = relay_with(
        "  client_body_timeout_ms: 2000\n  min_body_rate_bytes_per_s: 1000\n  \
         max_body_bytes: 1000000\n  max_buffered_body_bytes: 2000000\n  \
         max_buffered_body_bytes_per_address: 2000000\n",
    )
    .await;
    // 250 bytes come with the header, so each falls behind 2.25 s in (plus 1 ms a byte): midway
    // between two drips, and no byte arrives as the relay closes (that would reset the socket
    // and lose the answer).
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: relay\r\ncontent-type: application/json\r\n\
         content-length: 1000000\r\n\r\n{{\"model\":\"m\",\"padding\":\"{}",
        "x".repeat(250 - 24)
    );
    let started = std::time::Instant::now();
    let drippers: Vec<_> = (0..2)
        .map(|_| {
            let (addr, head) = (relay.addr, head.clone());
            std::thread::spawn(move || drip(addr, head.as_bytes(), Duration::from_secs(8)))
        })
        .collect();
    // While they hold it, the budget is full.
    let mut status = get_json(&relay, "/status").await;
    while status["buffered_body_bytes"]["held"] != 2_000_000 {
        assert!(started.elapsed() < Duration::from_millis(1500), "{status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        status = get_json(&relay, "/status").await;
    }
    assert_eq!(
        post_messages(&relay, &message_body("m", false), &[])
            .await
            .status(),
        503
    );
    // Normal requests are served again soon after the 2 s grace, while the drippers drip.
    let served = loop {
        let status = post_messages(&relay, &message_body("m", false), &[])
            .await
            .status();
        if status == 200 {
            break started.elapsed();
        }
        assert_eq!(status, 503);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the drippers held the budget past the grace"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(served > Duration::from_millis(1900), "{served:?}");
    for d in drippers {
        let (at, answer) = d.join().unwrap();
        // Cut when it fell behind (2 s + 254 bytes at 1000/s), not at its next byte.
        assert!(
            at > Duration::from_millis(2200) && at < Duration::from_millis(3500),
            "{at:?}: {answer}"
        );
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(
            answer.contains("\"invalid_request_error\"")
                && answer.contains("server.min_body_rate_bytes_per_s (1000 bytes/s)"),
            "{answer}"
        );
    }
    let status = get_json(&relay, "/status").await;
    assert_eq!(status["buffered_body_bytes"]["held"], 0, "{status}");
    assert_eq!(mock.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_address_holds_at_most_max_buffered_body_bytes_per_address() {
    use std::io::Write;
    // Behind a trusted proxy (the test itself), X-Forwarded-For names the client.
    let (_mock, relay) = relay_with(
        "  max_body_bytes: 300000\n  max_buffered_body_bytes: 2000000\n  \
         max_buffered_body_bytes_per_address: 300000\n  trusted_proxies: [\"127.0.0.1/32\"]\n",
    )
    .await;
    // 10.0.0.1 declares a 300 KB body and sends a little of it (within the grace): its share.
    let mut holder = std::net::TcpStream::connect(relay.addr).unwrap();
    holder
        .write_all(
            b"POST /v1/messages HTTP/1.1\r\nHost: relay\r\nx-forwarded-for: 10.0.0.1\r\n\
              content-type: application/json\r\ncontent-length: 300000\r\n\r\n{\"model\":",
        )
        .unwrap();
    let started = std::time::Instant::now();
    let mut status = get_json(&relay, "/status").await;
    while status["buffered_body_bytes"]["held"] != 300_000 {
        assert!(started.elapsed() < Duration::from_secs(2), "{status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        status = get_json(&relay, "/status").await;
    }
    assert_eq!(status["buffered_body_bytes"]["per_address_limit"], 300_000);
    // Another body from 10.0.0.1: 503 naming the per-address limit, Retry-After 1.
    let refused = post_messages(
        &relay,
        &message_body("m", false),
        &[("x-forwarded-for", "10.0.0.1")],
    )
    .await;
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(error_type(&body), "overloaded_error", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("server.max_buffered_body_bytes_per_address: 300000 bytes"),
        "{body}"
    );
    // Another address, and the proxy's own, are served.
    for from in ["10.0.0.2", "127.0.0.1"] {
        let ok = post_messages(
            &relay,
            &message_body("m", false),
            &[("x-forwarded-for", from)],
        )
        .await;
        assert_eq!(ok.status(), 200, "from {from}");
    }
    // The holder goes: its address is served again.
    drop(holder);
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let status = post_messages(
            &relay,
            &message_body("m", false),
            &[("x-forwarded-for", "10.0.0.1")],
        )
        .await
        .status();
        if status == 200 {
            break;
        }
        assert_eq!(status, 503);
        assert!(
            std::time::Instant::now() < deadline,
            "the share never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn slowloris_connections_are_closed_at_the_header_deadline_while_others_are_served() {
    use std::io::Write;
    let (mock, relay) = relay_with("  client_header_timeout_ms: 1000\n").await;
    // 200 clients start a header; half of them keep dripping a byte every 200 ms.
    let mut slow = open_slow(
        &relay,
        200,
        b"POST /v1/messages HTTP/1.1\r\nHost: relay\r\n",
    );
    let started = served_at_once(&relay).await;
    // Counted once accepted (each worker thread accepts on its own): soon, and before their
    // deadline.
    let mut status = get_json(&relay, "/status").await;
    while status["client_connections"]["open"].as_u64().unwrap() < 200
        && started.elapsed() < Duration::from_millis(900)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
        status = get_json(&relay, "/status").await;
    }
    assert!(
        status["client_connections"]["open"].as_u64().unwrap() >= 200,
        "{status}"
    );
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        for s in slow.iter_mut().step_by(2) {
            let _ = s.write_all(b"x");
        }
    }
    tokio::task::block_in_place(|| {
        for (i, mut s) in slow.into_iter().enumerate() {
            let (closed, answer) = read_until_closed(&mut s, Duration::from_secs(2));
            assert!(closed, "connection {i} still open: {answer}");
        }
    });
    let status = get_json(&relay, "/status").await;
    assert!(
        status["client_connections"]["open"].as_u64().unwrap() < 10,
        "{status}"
    );
    assert_eq!(mock.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn past_max_connections_a_new_connection_is_closed_at_once() {
    let (_mock, relay) = relay_with("  max_connections: 20\n").await;
    let mut held: Vec<std::net::TcpStream> = (0..20)
        .map(|_| std::net::TcpStream::connect(relay.addr).unwrap())
        .collect();
    // The relay accepts the 20 in its own time (each of its threads has its own accept queue,
    // and a busy machine may leave some queued a while): until it has, a 21st may still be
    // served. Once it has, every 21st is closed at once; a relay without the cap serves them
    // all, and the wait ends in the assertion.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    tokio::task::block_in_place(|| loop {
        let mut extra = std::net::TcpStream::connect(relay.addr).unwrap();
        use std::io::Write;
        let _ = extra.write_all(b"GET /health HTTP/1.1\r\nHost: relay\r\n\r\n");
        let (closed, answer) = read_until_closed(&mut extra, Duration::from_secs(2));
        if closed && answer.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{answer}");
        std::thread::sleep(Duration::from_millis(100));
    });
    // One goes: room for one more.
    held.pop();
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let client = reqwest::Client::new();
        match client.get(relay.url("/health")).send().await {
            Ok(r) if r.status() == 200 => break,
            _ => {
                assert!(std::time::Instant::now() < deadline, "no room came back");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    drop(held);
}
