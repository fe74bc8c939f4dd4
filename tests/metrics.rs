//! Prometheus metrics, scraped from a running relay and parsed by the official Python client's
//! parser: counters move by exactly the requests sent, per-key gauges follow requests and a 429,
//! and no secret appears.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;
use serde_json::Value;

struct Sample {
    name: String,
    labels: serde_json::Map<String, Value>,
    value: f64,
}

/// Scrape `url` and parse it with prometheus_client (panics if it does not parse).
async fn scrape(url: &str) -> (String, Vec<Sample>) {
    let text = client()
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/metrics/parse.py");
    let mut child = Command::new(python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 with prometheus_client (make deps-test)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the scrape does not parse: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let samples = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            Sample {
                name: v["name"].as_str().unwrap().to_owned(),
                labels: v["labels"].as_object().unwrap().clone(),
                value: v["value"].as_f64().unwrap(),
            }
        })
        .collect();
    (text, samples)
}

/// The value of the sample `name` whose labels include `labels` (0 when absent).
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .find(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).and_then(Value::as_str) == Some(*v))
        })
        .map_or(0.0, |s| s.value)
}

#[tokio::test]
async fn metrics_count_requests_tokens_and_follow_each_keys_budget() {
    let mock = start_mock().await;
    let port = free_port();
    let body = format!(
        "{}metrics:\n  enabled: true\n  prometheus_listen: \"127.0.0.1:{port}\"\n",
        pool_config(&mock, &[("k1", "sk-metrics-secret", "rpm_limit: 50")], "")
    );
    let relay = RelayProcess::start("  auth:\n    api_key: relay-metrics-secret\n", &body);
    let url = format!("http://127.0.0.1:{port}/metrics");
    let auth = [("x-api-key", "relay-metrics-secret")];

    let (_, before) = scrape(&url).await;
    let remaining_before = value(
        &before,
        "cc_relay_key_remaining",
        &[("key", "k1"), ("dimension", "requests")],
    );
    assert_eq!(remaining_before, 50.0);

    for stream in [false, true, false] {
        let resp = post_messages(&relay, &message_body("m", stream), &auth).await;
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    }
    let unauthorized = post_messages(&relay, &message_body("m", false), &[]).await;
    assert_eq!(unauthorized.status(), 401);
    let missing = client()
        .get(relay.url("/v1/nope"))
        .header("x-api-key", "relay-metrics-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    // Requests are counted when they end (Pingora's logging phase), a moment after the client
    // read the response: wait until they are all settled.
    relay.wait_settled(Some("relay-metrics-secret")).await;
    let (text, after) = scrape(&url).await;
    assert!(!text.contains("sk-metrics-secret") && !text.contains("relay-metrics-secret"));
    let defined = defined_metric_names();
    for sample in &after {
        assert!(
            defined.contains(family_of(&sample.name)),
            "{} is exported but not found in src/admin/metrics.rs",
            sample.name
        );
    }
    // Each of the three attempts went out on a connection, new or reused; the requests
    // dimension refills within its minute.
    let connections: f64 = ["true", "false"]
        .iter()
        .map(|reused| {
            value(
                &after,
                "cc_relay_upstream_connections_total",
                &[("provider", "pool"), ("reused", reused)],
            )
        })
        .sum();
    assert_eq!(connections, 3.0);
    let reset = value(
        &after,
        "cc_relay_key_reset_seconds",
        &[("key", "k1"), ("dimension", "requests")],
    );
    assert!(reset > 0.0 && reset <= 60.0, "{reset}");
    let proxied = [
        ("provider", "pool"),
        ("key", "k1"),
        ("status_class", "2xx"),
        ("outcome", "proxied"),
    ];
    assert_eq!(value(&after, "cc_relay_requests_total", &proxied), 3.0);
    let client_errors = |class| {
        value(
            &after,
            "cc_relay_requests_total",
            &[
                ("provider", "-"),
                ("status_class", class),
                ("outcome", "client_error"),
            ],
        )
    };
    assert_eq!((client_errors("4xx")), 2.0, "the 401 and the 404");
    // The mock reports 12 output tokens a response.
    assert_eq!(
        value(
            &after,
            "cc_relay_tokens_total",
            &[("key", "k1"), ("kind", "output")]
        ),
        36.0
    );
    assert!(
        value(
            &after,
            "cc_relay_tokens_total",
            &[("key", "k1"), ("kind", "input")]
        ) > 0.0
    );
    assert_eq!(
        value(
            &after,
            "cc_relay_request_duration_seconds_count",
            &[("provider", "pool")]
        ),
        3.0
    );
    assert_eq!(
        value(
            &after,
            "cc_relay_time_to_first_byte_seconds_count",
            &[("provider", "pool")]
        ),
        3.0
    );
    assert_eq!(value(&after, "cc_relay_overhead_seconds_count", &[]), 3.0);
    let remaining = value(
        &after,
        "cc_relay_key_remaining",
        &[("key", "k1"), ("dimension", "requests")],
    );
    assert!(remaining < remaining_before, "{remaining}");
    assert_eq!(
        value(
            &after,
            "cc_relay_key_state",
            &[("key", "k1"), ("state", "available")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "cc_relay_provider_circuit_state",
            &[("provider", "pool"), ("state", "closed")]
        ),
        1.0
    );
    assert_eq!(value(&after, "cc_relay_config_generation", &[]), 1.0);
    assert_eq!(value(&after, "cc_relay_build_info", &[]), 1.0);

    // A 429 cools the key: the gauges say so, and the relay's own 429 is counted as such.
    mock.push_fault(Some("sk-metrics-secret"), throttled("30"));
    let throttled_resp = post_messages(&relay, &message_body("m", false), &auth).await;
    assert_eq!(throttled_resp.status(), 429);
    let local = post_messages(&relay, &message_body("m", false), &auth).await;
    assert_eq!(local.status(), 429);
    relay.wait_settled(Some("relay-metrics-secret")).await;
    let (_, cooled) = scrape(&url).await;
    assert_eq!(
        value(
            &cooled,
            "cc_relay_key_state",
            &[("key", "k1"), ("state", "cooling")]
        ),
        1.0
    );
    let cooldown = value(&cooled, "cc_relay_key_cooldown_seconds", &[("key", "k1")]);
    assert!((20.0..=30.0).contains(&cooldown), "{cooldown}");
    let upstream_429 = [
        ("key", "k1"),
        ("status_class", "4xx"),
        ("outcome", "proxied"),
    ];
    assert_eq!(
        value(&cooled, "cc_relay_requests_total", &upstream_429),
        1.0
    );
    assert_eq!(
        value(
            &cooled,
            "cc_relay_requests_total",
            &[("status_class", "4xx"), ("outcome", "local_429")]
        ),
        1.0
    );

    // On the client listener, /metrics is behind the relay's key.
    let denied = client().get(relay.url("/metrics")).send().await.unwrap();
    assert_eq!(denied.status(), 401);
    let allowed = client()
        .get(relay.url("/metrics"))
        .header("x-api-key", "relay-metrics-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200);
}

/// Every `cc_relay_*` metric name `src/admin/metrics.rs` registers.
fn defined_metric_names() -> std::collections::BTreeSet<String> {
    let source = include_str!("../src/admin/metrics.rs");
    metric_names(source)
        .into_iter()
        .filter(|n| source.contains(&format!("\"{n}\"")))
        .collect()
}

/// The `cc_relay_*` names in `text`.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("cc_relay_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

/// A histogram's series name without its `_bucket`, `_sum` or `_count`.
fn family_of(series: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| series.strip_suffix(suffix))
        .unwrap_or(series)
}

#[test]
fn the_grafana_dashboard_charts_every_metric_and_only_those_the_relay_defines() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/conf/grafana/cc-relay-dashboard.json"
    );
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut exprs = String::new();
    let mut ids = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "duplicate panel id"
        );
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push_str(target["expr"].as_str().unwrap());
            exprs.push('\n');
        }
    }
    let used: std::collections::BTreeSet<String> = metric_names(&exprs)
        .iter()
        .map(|n| family_of(n).to_owned())
        .collect();
    let defined = defined_metric_names();
    assert!(defined.len() >= 15, "{defined:?}");
    let unknown: Vec<_> = used.difference(&defined).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard charts undefined metrics {unknown:?}"
    );
    let uncharted: Vec<_> = defined.difference(&used).collect();
    assert!(
        uncharted.is_empty(),
        "the dashboard leaves out {uncharted:?}"
    );
}
