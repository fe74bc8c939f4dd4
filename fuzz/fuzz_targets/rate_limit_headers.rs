//! Rate-limit header learning and retry-after parsing on arbitrary header values: never a
//! panic, learning them into a key leaves it usable (it admits again at the latest after its
//! longest cooldown), and a retry-after is never negative or absurd.
#![no_main]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cc_relay::pool::{parse_retry_after, Demand, KeyPool, KeySpec, RateLimitHeaders, Strategy};
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 12] = [
    "anthropic-ratelimit-requests-limit",
    "anthropic-ratelimit-requests-remaining",
    "anthropic-ratelimit-requests-reset",
    "anthropic-ratelimit-tokens-limit",
    "anthropic-ratelimit-tokens-remaining",
    "anthropic-ratelimit-tokens-reset",
    "anthropic-ratelimit-input-tokens-limit",
    "anthropic-ratelimit-input-tokens-remaining",
    "anthropic-ratelimit-input-tokens-reset",
    "anthropic-ratelimit-output-tokens-limit",
    "anthropic-ratelimit-output-tokens-remaining",
    "anthropic-ratelimit-output-tokens-reset",
];

fuzz_target!(|data: &[u8]| {
    let now = UNIX_EPOCH + Duration::from_secs(1_796_068_443);
    let mut headers = RateLimitHeaders::default();
    // Values separated by newlines, one per header name in turn; the last one is also read
    // as a retry-after.
    let mut last: &[u8] = &[];
    for (i, value) in data.split(|&b| b == b'\n').enumerate() {
        headers.observe(NAMES[i % NAMES.len()], value, now);
        last = value;
    }
    if let Some(after) = parse_retry_after(last, now) {
        assert!(after <= Duration::from_secs(u64::MAX / 2) || last.len() > 10);
    }
    let _ = parse_retry_after(last, SystemTime::now());
    let pool = KeyPool::new(
        vec![KeySpec {
            id: "k".into(),
            fingerprint: 1,
            rpm_limit: 50,
            itpm_limit: 0,
            otpm_limit: 0,
            priority: 1,
            weight: 1.0,
            max_cooldown: Duration::from_secs(600),
            max_concurrent: 0,
        }],
        Strategy::LeastLoaded,
    );
    let key = &pool.keys()[0];
    key.learn(&headers);
    key.cool_down(parse_retry_after(last, now));
    let demand = Demand {
        input_tokens: 100,
        max_tokens: 1000,
    };
    if let Err(refused) = pool.acquire(&demand, &[]) {
        // Benched at most for the longest cooldown and one window of refill.
        assert!(refused.retry_after <= Duration::from_secs(600 + 60), "{refused:?}");
    }
});
