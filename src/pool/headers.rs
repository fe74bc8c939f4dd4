//! What an upstream response says about its key's limits: `anthropic-ratelimit-*` and
//! `retry-after`. Parsing never fails: a value that does not parse is ignored, because a
//! malformed header must not cost a request.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

const PREFIX: &str = "anthropic-ratelimit-";

/// `limit` / `remaining` / `reset` of one dimension.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimitHeaders {
    pub limit: Option<u64>,
    pub remaining: Option<u64>,
    /// From the `observe` call's `now` to the RFC 3339 reset instant; zero if already past.
    pub reset: Option<Duration>,
}

impl LimitHeaders {
    pub fn is_empty(&self) -> bool {
        self.limit.is_none() && self.remaining.is_none() && self.reset.is_none()
    }
}

/// Parsed `anthropic-ratelimit-*` headers of one response. Every field optional.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RateLimitHeaders {
    pub requests: LimitHeaders,
    /// Legacy combined input + output figures; used for a dimension whose own headers are
    /// absent.
    pub tokens: LimitHeaders,
    pub input_tokens: LimitHeaders,
    pub output_tokens: LimitHeaders,
}

impl RateLimitHeaders {
    /// Feed one response header (name in lower case). Names that are not
    /// `anthropic-ratelimit-*` and malformed values are ignored.
    pub fn observe(&mut self, name: &str, value: &[u8], now: SystemTime) {
        let Some((dimension, field)) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.rsplit_once('-'))
        else {
            return;
        };
        let group = match dimension {
            "requests" => &mut self.requests,
            "tokens" => &mut self.tokens,
            "input-tokens" => &mut self.input_tokens,
            "output-tokens" => &mut self.output_tokens,
            _ => return,
        };
        match field {
            "limit" => group.limit = parse_u64(value).or(group.limit),
            "remaining" => group.remaining = parse_u64(value).or(group.remaining),
            "reset" => {
                if let Some(at) = parse_rfc3339(value) {
                    group.reset = Some(at.duration_since(now).unwrap_or(Duration::ZERO));
                }
            }
            _ => {}
        }
    }

    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
            && self.tokens.is_empty()
            && self.input_tokens.is_empty()
            && self.output_tokens.is_empty()
    }
}

/// A `retry-after` value: delay-seconds or an HTTP-date (zero if the date is past).
pub fn parse_retry_after(value: &[u8], now: SystemTime) -> Option<Duration> {
    let value = value.trim_ascii();
    if let Some(secs) = parse_u64(value) {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(std::str::from_utf8(value).ok()?).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

fn parse_u64(value: &[u8]) -> Option<u64> {
    let value = value.trim_ascii();
    if value.is_empty() || value.len() > 20 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// RFC 3339 date-time (`2025-01-31T12:00:00Z`, `…T12:00:00.123+01:00`); `None` if malformed or
/// before 1970. Hand-written because it is on the per-response path and must accept offsets.
pub(crate) fn parse_rfc3339(value: &[u8]) -> Option<SystemTime> {
    let s = value.trim_ascii();
    if s.len() < 20 {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = s.get(range)?;
        digits.iter().try_fold(0i64, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + i64::from(d - b'0'))
        })
    };
    let sep = |at: usize, allowed: &[u8]| s.get(at).is_some_and(|c| allowed.contains(c));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }

    let mut i = 19;
    let mut nanos = 0u32;
    if s[i] == b'.' {
        i += 1;
        let start = i;
        while i < s.len() && s[i].is_ascii_digit() {
            if i - start < 9 {
                nanos = nanos * 10 + u32::from(s[i] - b'0');
            }
            i += 1;
        }
        let digits = i - start;
        if digits == 0 {
            return None;
        }
        nanos *= 10u32.pow(9 - digits.min(9) as u32);
    }
    let offset = match s.get(i)? {
        b'Z' | b'z' => {
            i += 1;
            0
        }
        sign @ (b'+' | b'-') => {
            if !sep(i + 3, b":") {
                return None;
            }
            let (h, m) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if h > 23 || m > 59 {
                return None;
            }
            i += 6;
            let offset = h * 3600 + m * 60;
            if *sign == b'-' {
                -offset
            } else {
                offset
            }
        }
        _ => return None,
    };
    if i != s.len() {
        return None;
    }

    // A leap second is read as the last second of the minute.
    let second = second.min(59);
    let secs =
        days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset;
    let secs = u64::try_from(secs).ok()?;
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}
