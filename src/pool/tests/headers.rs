//! Parsing `anthropic-ratelimit-*`, RFC 3339 and `retry-after`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::super::headers::parse_rfc3339;
use super::super::{parse_retry_after, LimitHeaders, RateLimitHeaders};

/// 2025-01-31T12:00:00Z
const NOW_UNIX: u64 = 1_738_324_800;

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW_UNIX)
}

fn observe_all(headers: &[(&str, &str)]) -> RateLimitHeaders {
    let mut parsed = RateLimitHeaders::default();
    for (name, value) in headers {
        parsed.observe(name, value.as_bytes(), now());
    }
    parsed
}

#[test]
fn a_full_set_of_anthropic_headers_parses() {
    let parsed = observe_all(&[
        ("anthropic-ratelimit-requests-limit", "50"),
        ("anthropic-ratelimit-requests-remaining", "49"),
        ("anthropic-ratelimit-requests-reset", "2025-01-31T12:00:01Z"),
        ("anthropic-ratelimit-tokens-limit", "38000"),
        ("anthropic-ratelimit-tokens-remaining", "37000"),
        ("anthropic-ratelimit-tokens-reset", "2025-01-31T12:00:02Z"),
        ("anthropic-ratelimit-input-tokens-limit", "30000"),
        ("anthropic-ratelimit-input-tokens-remaining", "29000"),
        (
            "anthropic-ratelimit-input-tokens-reset",
            "2025-01-31T12:00:02.5Z",
        ),
        ("anthropic-ratelimit-output-tokens-limit", "8000"),
        ("anthropic-ratelimit-output-tokens-remaining", "8000"),
        (
            "anthropic-ratelimit-output-tokens-reset",
            "2025-01-31T12:00:00Z",
        ),
        ("content-type", "application/json"),
        ("retry-after", "5"),
    ]);
    let expected = RateLimitHeaders {
        requests: LimitHeaders {
            limit: Some(50),
            remaining: Some(49),
            reset: Some(Duration::from_secs(1)),
        },
        tokens: LimitHeaders {
            limit: Some(38_000),
            remaining: Some(37_000),
            reset: Some(Duration::from_secs(2)),
        },
        input_tokens: LimitHeaders {
            limit: Some(30_000),
            remaining: Some(29_000),
            reset: Some(Duration::from_millis(2_500)),
        },
        output_tokens: LimitHeaders {
            limit: Some(8_000),
            remaining: Some(8_000),
            reset: Some(Duration::ZERO),
        },
    };
    assert_eq!(parsed, expected);
    assert!(!parsed.is_empty());
}

#[test]
fn no_anthropic_headers_leaves_it_empty() {
    let parsed = observe_all(&[
        ("content-type", "text/event-stream"),
        ("x-ratelimit-remaining", "5"),
        ("anthropic-ratelimit", "5"),
        ("anthropic-ratelimit-", "5"),
        ("anthropic-ratelimit-requests", "5"),
        ("anthropic-ratelimit-widgets-limit", "5"),
        ("anthropic-ratelimit-requests-used", "5"),
    ]);
    assert!(parsed.is_empty());
    assert_eq!(parsed, RateLimitHeaders::default());
}

#[test]
fn malformed_values_are_ignored_and_keep_an_earlier_good_value() {
    let parsed = observe_all(&[
        ("anthropic-ratelimit-requests-limit", "50"),
        ("anthropic-ratelimit-requests-limit", "fifty"),
        ("anthropic-ratelimit-requests-remaining", ""),
        ("anthropic-ratelimit-requests-remaining", "-1"),
        ("anthropic-ratelimit-requests-remaining", "1e3"),
        ("anthropic-ratelimit-requests-remaining", "12.5"),
        (
            "anthropic-ratelimit-requests-remaining",
            "99999999999999999999999",
        ),
        ("anthropic-ratelimit-tokens-limit", "1 000"),
        ("anthropic-ratelimit-requests-reset", "tomorrow"),
        ("anthropic-ratelimit-requests-reset", "2025-02-30T00:00:00Z"),
        ("anthropic-ratelimit-requests-reset", "2025-01-31T25:00:00Z"),
        ("anthropic-ratelimit-requests-reset", "2025-01-31T12:00:00"),
        (
            "anthropic-ratelimit-requests-reset",
            "2025-01-31T12:00:00.Z",
        ),
        (
            "anthropic-ratelimit-requests-reset",
            "2025-01-31T12:00:00Zjunk",
        ),
        (
            "anthropic-ratelimit-requests-reset",
            "2025-01-31T12:00:00+0100",
        ),
        ("anthropic-ratelimit-requests-reset", "1738324801"),
        ("anthropic-ratelimit-output-tokens-limit", "\u{1F600}"),
    ]);
    assert_eq!(parsed.requests.limit, Some(50));
    assert_eq!(parsed.requests.remaining, None);
    assert_eq!(parsed.requests.reset, None);
    assert!(parsed.tokens.is_empty());
    assert!(parsed.output_tokens.is_empty());
    let mut raw = RateLimitHeaders::default();
    raw.observe("anthropic-ratelimit-requests-limit", b"\xff\xfe", now());
    assert!(raw.is_empty());
}

#[test]
fn values_tolerate_surrounding_whitespace() {
    let parsed = observe_all(&[
        ("anthropic-ratelimit-requests-limit", " 50 "),
        (
            "anthropic-ratelimit-requests-reset",
            " 2025-01-31T12:00:03Z\t",
        ),
    ]);
    assert_eq!(parsed.requests.limit, Some(50));
    assert_eq!(parsed.requests.reset, Some(Duration::from_secs(3)));
}

#[test]
fn rfc3339_accepts_fractions_offsets_and_lower_case() {
    let at = |s: &str| {
        parse_rfc3339(s.as_bytes())
            .map(|t| t.duration_since(UNIX_EPOCH).unwrap())
            .unwrap_or_else(|| panic!("{s} should parse"))
    };
    assert_eq!(at("1970-01-01T00:00:00Z"), Duration::ZERO);
    assert_eq!(at("2025-01-31T12:00:00Z").as_secs(), NOW_UNIX);
    assert_eq!(at("2025-01-31t12:00:00z").as_secs(), NOW_UNIX);
    assert_eq!(at("2025-01-31 12:00:00Z").as_secs(), NOW_UNIX);
    assert_eq!(at("2025-01-31T13:30:00+01:30").as_secs(), NOW_UNIX);
    assert_eq!(at("2025-01-31T07:00:00-05:00").as_secs(), NOW_UNIX);
    assert_eq!(
        at("2025-01-31T12:00:00.123456789123Z"),
        Duration::new(NOW_UNIX, 123_456_789)
    );
    assert_eq!(
        at("2025-01-31T12:00:00.1Z"),
        Duration::new(NOW_UNIX, 100_000_000)
    );
    assert_eq!(at("2024-02-29T00:00:00Z").as_secs(), 1_709_164_800);
    assert_eq!(at("2000-03-01T00:00:00Z").as_secs(), 951_868_800);
    // A leap second reads as the last second of its minute.
    assert_eq!(at("2016-12-31T23:59:60Z").as_secs(), 1_483_228_799);
    for bad in [
        "1969-12-31T23:59:59Z",
        "2023-02-29T00:00:00Z",
        "2025-13-01T00:00:00Z",
        "2025-00-01T00:00:00Z",
        "2025-01-00T00:00:00Z",
        "2025-01-31T12:60:00Z",
        "2025-01-31T12:00:00+24:00",
        "2025-01-31X12:00:00Z",
        "2025/01/31T12:00:00Z",
        "2025-01-31T12:00:00",
        "",
    ] {
        assert_eq!(parse_rfc3339(bad.as_bytes()), None, "{bad}");
    }
}

#[test]
fn a_reset_in_the_past_is_zero() {
    let parsed = observe_all(&[("anthropic-ratelimit-requests-reset", "2025-01-31T11:59:00Z")]);
    assert_eq!(parsed.requests.reset, Some(Duration::ZERO));
}

#[test]
fn retry_after_takes_delay_seconds() {
    assert_eq!(parse_retry_after(b"0", now()), Some(Duration::ZERO));
    assert_eq!(
        parse_retry_after(b"17", now()),
        Some(Duration::from_secs(17))
    );
    assert_eq!(
        parse_retry_after(b" 30 ", now()),
        Some(Duration::from_secs(30))
    );
}

#[test]
fn retry_after_takes_an_http_date() {
    assert_eq!(
        parse_retry_after(b"Fri, 31 Jan 2025 12:00:42 GMT", now()),
        Some(Duration::from_secs(42))
    );
    assert_eq!(
        parse_retry_after(b"Fri, 31 Jan 2025 11:00:00 GMT", now()),
        Some(Duration::ZERO),
        "a date in the past means now"
    );
}

#[test]
fn retry_after_garbage_is_none() {
    for bad in [
        &b""[..],
        b"soon",
        b"-5",
        b"1.5",
        b"Fri, 31 Jan 2025",
        b"\xff",
    ] {
        assert_eq!(parse_retry_after(bad, now()), None, "{bad:?}");
    }
}
