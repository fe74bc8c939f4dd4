//! The relay's log under conditions that repeat or carry a lot: a megabyte upstream header, an
//! upstream that cannot be reached, a host that does not resolve. Each is written once (or as a
//! periodic summary), never once per request or per retry, and never with the bytes the
//! upstream sent.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An upstream that answers every request with a response header of `size` bytes.
async fn huge_header_upstream(size: usize) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let _ = s.read(&mut buf).await;
                let mut answer =
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-big: ".to_vec();
                answer.extend(std::iter::repeat_n(b'a', size));
                answer.extend_from_slice(b"\r\ncontent-length: 2\r\n\r\n{}");
                let _ = s.write_all(&answer).await;
                let _ = s.shutdown().await;
            });
        }
    });
    port
}

fn provider_at(url: &str) -> String {
    format!(
        "providers:\n  - name: up\n    type: anthropic\n    base_url: \"{url}\"\n    keys:\n      - name: k1\n        key: \"sk-1\"\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_megabyte_upstream_header_is_not_written_into_the_log() {
    // Past Pingora's 1 MiB limit for a response header: the upstream's answer is refused.
    let port = huge_header_upstream(2_000_000).await;
    let relay = RelayProcess::start_with_log(
        "",
        &provider_at(&format!("http://127.0.0.1:{port}")),
        "info",
    );
    for _ in 0..3 {
        let r = post_messages(&relay, &message_body("m", false), &[]).await;
        assert_eq!(r.status(), 502);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(error_type(&body), "api_error", "{body}");
    }
    relay.wait_settled(None).await;
    let logs = relay.logs();
    assert!(
        logs.len() < 20_000,
        "{} bytes of log for three requests: {}",
        logs.len(),
        &logs[..logs.len().min(600)]
    );
    assert!(
        !logs.contains("aaaaaaaaaaaaaaaa"),
        "the header's bytes are in the log"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_upstream_is_answered_without_an_error_line_per_request() {
    let closed = free_port();
    let relay = RelayProcess::start_with_log(
        "",
        &provider_at(&format!("http://127.0.0.1:{closed}")),
        "info",
    );
    // Three, under the circuit's failure threshold (past it the answer is 503, circuit open).
    for _ in 0..3 {
        let r = post_messages(&relay, &message_body("m", false), &[]).await;
        assert_eq!(r.status(), 502);
        // The relay closes the connection after its answer, and says so: a kept-alive client
        // would otherwise send its next request into a closed socket.
        assert_eq!(r.headers()["connection"], "close");
    }
    relay.wait_settled(None).await;
    let logs = relay.logs();
    let proxy_lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("Fail to proxy"))
        .collect();
    assert!(proxy_lines.is_empty(), "{}", proxy_lines.join("\n"));
    // The answers are not lost: /status keeps them among the recent errors.
    let status = get_json(&relay, "/status").await;
    assert!(
        status["recent_errors"].as_array().unwrap().len() >= 3,
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_that_does_not_resolve_is_logged_once_not_every_retry() {
    let relay = RelayProcess::start_with_log(
        "",
        &provider_at("http://cc-relay-test-host.invalid:8080"),
        "info",
    );
    // The relay retries an unresolved host every 5 s; wait for two retries.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(11) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let logs = relay.logs();
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("cc-relay-test-host.invalid") && l.contains("WARN"))
        .collect();
    // One at start-up (could not resolve), one for the first failed retry: not one per retry.
    assert!(lines.len() <= 2, "{}", lines.join("\n"));
    let r = post_messages(&relay, &message_body("m", false), &[]).await;
    assert_eq!(r.status(), 502);
}
