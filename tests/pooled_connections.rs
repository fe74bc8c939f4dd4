//! Pooled upstream connections that go bad under the relay (issue 26, defect 4): an upstream
//! that resets kept-alive connections, a middlebox that forgets idle ones. Neither says anything
//! about the provider: every request is answered and its circuit stays closed.

mod common;

use std::time::Duration;

use common::*;

/// The value of `cc_relay_upstream_reused_connection_retries_total` for `provider` (0 when the
/// series does not exist yet).
async fn stale_retries(relay: &RelayProcess, provider: &str) -> u64 {
    let text = get_text(relay, "/metrics").await;
    let series =
        format!("cc_relay_upstream_reused_connection_retries_total{{provider=\"{provider}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

/// Wait until the relay has no request in flight (its accounting happens after the client got
/// its response).
async fn settled(relay: &RelayProcess) -> serde_json::Value {
    for _ in 0..100 {
        let status = get_json(relay, "/status").await;
        if status["providers"][0]["in_flight"] == 0 {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the relay did not settle");
}

const HEALTH: &str = "health:\n  health_check:\n    enabled: false\n  circuit_breaker:\n    \
                      failure_threshold: 5\n    open_duration_ms: 30000\n";

async fn relay_for(mock: &MockUpstream, server_extra: &str, max_attempts: u32) -> RelayProcess {
    let body = format!(
        "{}routing:\n  max_attempts: {max_attempts}\n{HEALTH}metrics:\n  enabled: true\n",
        pool_config(mock, &[("k1", "sk-1", "")], "")
    );
    RelayProcess::start(server_extra, &body)
}

/// The run: an upstream that resets every connection on its 4th request, 10 clients at
/// once, `max_attempts: 2`, `failure_threshold: 5`. Main answered 502s and then opened the
/// circuit (266 × 503 "circuit open") while the upstream answered every request it read.
#[tokio::test]
async fn an_upstream_resetting_reused_connections_answers_every_request() {
    let mock = MockUpstream::start(MockConfig {
        reset_connection_on_request: Some(4),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let relay = relay_for(&mock, "", 2).await;
    let clients: Vec<_> = (0..10)
        .map(|_| {
            let url = relay.url("/v1/messages");
            tokio::spawn(async move {
                let http = client();
                let mut statuses = Vec::new();
                for _ in 0..30 {
                    let sent = http.post(&url).json(&message_body("m", false)).send();
                    // 0: no answer at all (the connection to the relay broke).
                    let status = match sent.await {
                        Ok(resp) => {
                            let status = resp.status().as_u16();
                            resp.bytes().await.map_or(0, |_| status)
                        }
                        Err(_) => 0,
                    };
                    statuses.push(status);
                }
                statuses
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for c in clients {
        statuses.extend(c.await.unwrap());
    }
    let failed: Vec<_> = statuses.iter().filter(|s| **s != 200).collect();
    let status = settled(&relay).await;
    let resets = mock.connection_resets();
    assert!(
        failed.is_empty(),
        "{} of 300 not 200: {failed:?} ({resets} connections reset)",
        failed.len()
    );
    assert!(resets > 0, "the upstream never reset a connection");
    assert_eq!(status["providers"][0]["circuit"], "closed");
    // Each reset request went again, once, on a fresh connection; the upstream read each
    // request it answered exactly once.
    assert_eq!(stale_retries(&relay, "pool").await, resets);
    assert_eq!(mock.request_count(), 300);
}

/// A retry on a fresh connection uses up no attempt: with `max_attempts: 1`, a reset on a
/// reused connection is still answered (main: 502, the only attempt gone).
#[tokio::test]
async fn a_reset_reused_connection_takes_no_attempt() {
    let mock = MockUpstream::start(MockConfig {
        reset_connection_on_request: Some(2),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let relay = relay_for(&mock, "", 1).await;
    for i in 0..12 {
        let resp = post_messages(&relay, &message_body("m", false), &[]).await;
        let code = resp.status();
        assert_eq!(code, 200, "request {i}: {:?}", resp.text().await);
    }
    let status = settled(&relay).await;
    let resets = mock.connection_resets();
    assert!(resets > 0, "the upstream never reset a connection");
    assert_eq!(stale_retries(&relay, "pool").await, resets);
    assert_eq!(status["providers"][0]["circuit"], "closed");
    assert_eq!(mock.request_count(), 12);
}

/// A middlebox that forgets connections idle for 1.5 s, silently: a request on such a
/// connection is never answered, nothing is reset. The relay closes pooled connections after
/// `server.upstream_idle_timeout_ms` (here 500 ms), so it never sends one there. Main kept
/// them 90 s: after each pause the request hung until `timeout_ms` and got 504.
#[tokio::test]
async fn a_pooled_connection_a_middlebox_forgot_is_never_used() {
    let mock = MockUpstream::start(MockConfig {
        black_hole_after_idle: Some(Duration::from_millis(1500)),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let server = "  timeout_ms: 4000\n  upstream_idle_timeout_ms: 500\n";
    let relay = relay_for(&mock, server, 2).await;
    let mut statuses = Vec::new();
    for round in 0..4 {
        if round > 0 {
            tokio::time::sleep(Duration::from_millis(2000)).await;
        }
        for _ in 0..5 {
            let resp = post_messages(&relay, &message_body("m", false), &[]).await;
            statuses.push(resp.status().as_u16());
        }
    }
    let status = settled(&relay).await;
    assert_eq!(
        statuses,
        vec![200; 20],
        "{} black-holed",
        mock.black_holed()
    );
    assert_eq!(mock.black_holed(), 0);
    assert_eq!(status["providers"][0]["circuit"], "closed");
    assert_eq!(mock.request_count(), 20);
}

/// Upstream sockets carry TCP keepalive (idle 15 s): the kernel's keepalive timer is armed on
/// a pooled connection (`tr` 2 in /proc/net/tcp; 0 without SO_KEEPALIVE, as on main), so a
/// NAT's entry is refreshed and a dead peer is found while the connection waits in the pool.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn upstream_sockets_send_tcp_keepalives() {
    let mock = start_mock().await;
    let relay = relay_for(&mock, "", 2).await;
    let resp = post_messages(&relay, &message_body("m", false), &[]).await;
    assert_eq!(resp.status(), 200);
    settled(&relay).await;
    let port = format!(":{:04X}", mock.addr().port());
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    // sl local rem st tx:rx tr:when ...: the relay's side has the mock's port as its remote.
    let relay_side: Vec<Vec<&str>> = table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f[2].ends_with(&port) && f[3] == "01")
        .collect();
    assert!(!relay_side.is_empty(), "no pooled connection:\n{table}");
    for f in relay_side {
        let (timer, when) = f[5].split_once(':').unwrap();
        assert_eq!(timer, "02", "no keepalive timer: {f:?}");
        // In clock ticks (USER_HZ, 100 a second): the first probe within 15 s.
        let ticks = u64::from_str_radix(when, 16).unwrap();
        assert!(ticks <= 1500, "keepalive due in {ticks} ticks");
    }
}
