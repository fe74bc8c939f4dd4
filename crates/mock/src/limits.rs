//! Per-credential request counters and rate limits.
//!
//! Limits are token buckets that refill continuously up to the limit over 60 s, as Anthropic's
//! are. A request is refused (429) when the request bucket has no whole request left, the
//! input bucket cannot cover its input tokens, or the output bucket is exhausted. Output tokens
//! are charged in full when the request is admitted, which may drive the output bucket into
//! debt: that models Anthropic adjusting the output charge to the real output at the end.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{lock, KeyLimits};

pub(super) type RateHeaders = Vec<(&'static str, String)>;

pub(super) enum Admission {
    /// Go ahead; send these `anthropic-ratelimit-*` headers (empty when the key has no limits).
    Allowed(RateHeaders),
    /// Refuse with 429 and `retry-after: retry_after_secs`.
    Limited {
        retry_after_secs: u64,
        headers: RateHeaders,
    },
}

#[derive(Default)]
pub(super) struct KeyTable {
    map: Mutex<HashMap<String, KeyEntry>>,
}

#[derive(Default)]
struct KeyEntry {
    requests: usize,
    limits: Option<KeyLimits>,
    buckets: Option<Buckets>,
}

impl KeyTable {
    pub(super) fn count(&self, key: &str) {
        let mut map = lock(&self.map);
        match map.get_mut(key) {
            Some(e) => e.requests += 1,
            None => {
                map.insert(
                    key.to_owned(),
                    KeyEntry {
                        requests: 1,
                        ..KeyEntry::default()
                    },
                );
            }
        }
    }

    pub(super) fn counts(&self) -> HashMap<String, usize> {
        lock(&self.map)
            .iter()
            .filter(|(_, e)| e.requests > 0)
            .map(|(k, e)| (k.clone(), e.requests))
            .collect()
    }

    pub(super) fn clear_counts(&self) {
        for e in lock(&self.map).values_mut() {
            e.requests = 0;
        }
    }

    pub(super) fn set_limits(&self, key: &str, limits: KeyLimits) {
        let mut map = lock(&self.map);
        let e = map.entry(key.to_owned()).or_default();
        e.limits = Some(limits);
        e.buckets = None;
    }

    /// Checks a Messages request against the key's limits and charges it when admitted.
    pub(super) fn admit(
        &self,
        key: &str,
        defaults: KeyLimits,
        input_tokens: u64,
        output_tokens: u64,
    ) -> Admission {
        let mut map = lock(&self.map);
        let Some(e) = map.get_mut(key) else {
            // `count` runs first for every request with a key, so this is unreachable in
            // practice; no entry means no per-key limits yet.
            return Admission::Allowed(Vec::new());
        };
        let limits = e.limits.unwrap_or(defaults);
        if limits == KeyLimits::default() {
            return Admission::Allowed(Vec::new());
        }
        let now = Instant::now();
        let b = e.buckets.get_or_insert_with(|| Buckets::full(limits, now));
        b.refill(now);
        let wait = b.wait_secs(input_tokens);
        if wait > 0.0 {
            return Admission::Limited {
                retry_after_secs: (wait.ceil() as u64).max(1),
                headers: b.headers(SystemTime::now()),
            };
        }
        b.charge(input_tokens, output_tokens);
        Admission::Allowed(b.headers(SystemTime::now()))
    }
}

struct Buckets {
    limits: KeyLimits,
    last: Instant,
    requests: f64,
    input: f64,
    output: f64,
}

/// Seconds until `level` reaches `need` at `limit` per minute.
fn secs_until(level: f64, need: f64, limit: u64) -> f64 {
    ((need - level).max(0.0)) * 60.0 / limit as f64
}

impl Buckets {
    fn full(limits: KeyLimits, now: Instant) -> Self {
        Self {
            limits,
            last: now,
            requests: limits.rpm as f64,
            input: limits.itpm as f64,
            output: limits.otpm as f64,
        }
    }

    fn refill(&mut self, now: Instant) {
        let minutes = now.duration_since(self.last).as_secs_f64() / 60.0;
        self.last = now;
        let fill = |level: &mut f64, limit: u64| {
            let limit = limit as f64;
            *level = (*level + limit * minutes).min(limit);
        };
        fill(&mut self.requests, self.limits.rpm);
        fill(&mut self.input, self.limits.itpm);
        fill(&mut self.output, self.limits.otpm);
    }

    /// 0 when the request fits, else the seconds until it would.
    fn wait_secs(&self, input_tokens: u64) -> f64 {
        let l = self.limits;
        let mut wait: f64 = 0.0;
        if l.rpm > 0 && self.requests < 1.0 {
            wait = wait.max(secs_until(self.requests, 1.0, l.rpm));
        }
        if l.itpm > 0 {
            // A request larger than the whole limit is let through once the bucket is full,
            // rather than refused forever.
            let need = input_tokens.min(l.itpm) as f64;
            if self.input < need {
                wait = wait.max(secs_until(self.input, need, l.itpm));
            }
        }
        if l.otpm > 0 && self.output < 1.0 {
            wait = wait.max(secs_until(self.output, 1.0, l.otpm));
        }
        wait
    }

    fn charge(&mut self, input_tokens: u64, output_tokens: u64) {
        if self.limits.rpm > 0 {
            self.requests -= 1.0;
        }
        if self.limits.itpm > 0 {
            self.input -= input_tokens as f64;
        }
        if self.limits.otpm > 0 {
            self.output -= output_tokens as f64;
        }
    }

    fn headers(&self, now: SystemTime) -> RateHeaders {
        let mut h = Vec::with_capacity(12);
        let l = self.limits;
        let dim = |h: &mut RateHeaders, names: [&'static str; 3], limit: u64, level: f64| {
            let remaining = level.max(0.0).floor() as u64;
            let reset =
                now + Duration::from_secs(secs_until(level, limit as f64, limit).ceil() as u64);
            h.push((names[0], limit.to_string()));
            h.push((names[1], remaining.to_string()));
            h.push((names[2], rfc3339(reset)));
        };
        if l.rpm > 0 {
            dim(&mut h, REQUESTS, l.rpm, self.requests);
        }
        if l.itpm > 0 {
            dim(&mut h, INPUT, l.itpm, self.input);
        }
        if l.otpm > 0 {
            dim(&mut h, OUTPUT, l.otpm, self.output);
        }
        // `tokens-*` reports the most restrictive of the token dimensions.
        let tokens = match (l.itpm > 0, l.otpm > 0) {
            (true, true) if self.output < self.input => Some((l.otpm, self.output)),
            (true, _) => Some((l.itpm, self.input)),
            (false, true) => Some((l.otpm, self.output)),
            (false, false) => None,
        };
        if let Some((limit, level)) = tokens {
            dim(&mut h, TOKENS, limit, level);
        }
        h
    }
}

const REQUESTS: [&str; 3] = [
    "anthropic-ratelimit-requests-limit",
    "anthropic-ratelimit-requests-remaining",
    "anthropic-ratelimit-requests-reset",
];
const INPUT: [&str; 3] = [
    "anthropic-ratelimit-input-tokens-limit",
    "anthropic-ratelimit-input-tokens-remaining",
    "anthropic-ratelimit-input-tokens-reset",
];
const OUTPUT: [&str; 3] = [
    "anthropic-ratelimit-output-tokens-limit",
    "anthropic-ratelimit-output-tokens-remaining",
    "anthropic-ratelimit-output-tokens-reset",
];
const TOKENS: [&str; 3] = [
    "anthropic-ratelimit-tokens-limit",
    "anthropic-ratelimit-tokens-remaining",
    "anthropic-ratelimit-tokens-reset",
];

/// RFC 3339 UTC with whole seconds (`2026-01-01T00:00:30Z`), as Anthropic's reset headers.
pub(super) fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_known_dates_and_httpdate() {
        let at = |s| UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(rfc3339(at(0)), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(at(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(at(1_767_225_630)), "2026-01-01T00:00:30Z");
        // Cross-check date and time fields against httpdate over many instants.
        let mut rng = fastrand::Rng::with_seed(1);
        for _ in 0..1000 {
            let t = at(rng.u64(0..4_000_000_000));
            let ours = rfc3339(t);
            let http = httpdate::fmt_http_date(t); // "Thu, 01 Jan 2026 00:00:30 GMT"
            assert_eq!(&ours[8..10], &http[5..7], "{ours} vs {http}");
            assert_eq!(&ours[0..4], &http[12..16], "{ours} vs {http}");
            assert_eq!(&ours[11..19], &http[17..25], "{ours} vs {http}");
        }
    }

    #[test]
    fn bucket_refuses_then_refills() {
        let t = KeyTable::default();
        t.count("k");
        t.set_limits(
            "k",
            KeyLimits {
                rpm: 2,
                itpm: 0,
                otpm: 0,
            },
        );
        let d = KeyLimits::default();
        assert!(matches!(t.admit("k", d, 1, 1), Admission::Allowed(_)));
        assert!(matches!(t.admit("k", d, 1, 1), Admission::Allowed(_)));
        match t.admit("k", d, 1, 1) {
            Admission::Limited {
                retry_after_secs, ..
            } => assert!((1..=30).contains(&retry_after_secs)),
            Admission::Allowed(_) => panic!("third request within a minute must be limited"),
        }
        // Simulate 30 s passing: one request refilled.
        {
            let mut map = lock(&t.map);
            let b = map.get_mut("k").and_then(|e| e.buckets.as_mut());
            if let Some(b) = b {
                b.last = b
                    .last
                    .checked_sub(Duration::from_secs(30))
                    .unwrap_or(b.last);
            }
        }
        assert!(matches!(t.admit("k", d, 1, 1), Admission::Allowed(_)));
    }
}
