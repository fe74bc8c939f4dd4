//! The relay driven by the official Anthropic Python SDK (installed by `make test`; the test
//! fails with instructions when it is missing, it never skips silently).

mod common;

use common::*;

fn config(mock: &MockUpstream, key_extra: &str) -> String {
    format!(
        "providers:\n  - name: anthropic\n    type: anthropic\n    base_url: \"{}\"\n    keys:\n      - name: k\n        key: sk-sdk\n{key_extra}",
        mock.base_url()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn sdk_json_stream_and_count_tokens() {
    let mock = start_mock().await;
    let relay = RelayProcess::start("", &config(&mock, ""));
    run_sdk(&relay, "happy");
    assert_eq!(mock.request_count(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn sdk_sees_an_error_event_when_the_upstream_drops_mid_stream() {
    let mock = start_mock().await;
    let relay = RelayProcess::start("", &config(&mock, ""));
    mock.push_fault(None, Fault::DropAfterEvents(4));
    run_sdk(&relay, "midstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn sdk_gets_rate_limit_error_with_retry_after_from_an_exhausted_pool() {
    let mock = start_mock().await;
    let relay = RelayProcess::start("", &config(&mock, "        rpm_limit: 1\n"));
    run_sdk(&relay, "exhausted");
    assert_eq!(
        mock.request_count(),
        1,
        "the refused request reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sdk_streams_through_a_failover_as_one_clean_stream() {
    let flaky = start_mock().await;
    let steady = start_mock().await;
    flaky.set_sticky_fault(
        "sk-flaky",
        Some(Fault::Status {
            status: 529,
            retry_after: None,
        }),
    );
    let body = format!(
        "providers:\n{}{}",
        mock_provider("flaky", &flaky, &[("f", "sk-flaky")], "    priority: 2\n"),
        mock_provider(
            "steady",
            &steady,
            &[("s", "sk-steady")],
            "    priority: 1\n"
        ),
    );
    let relay = RelayProcess::start("", &body);
    run_sdk(&relay, "failover");
    assert!(
        flaky.request_count() >= 1,
        "the first provider was never tried"
    );
    assert_eq!(steady.request_count(), 3);
}
