//! Feeding what a response says back into the key that served the attempt: its rate-limit
//! headers (read by the provider's kind) and what its status means for the key.

use std::time::SystemTime;

use pingora::http::ResponseHeader;

use super::ctx::RequestCtx;
use crate::providers::Verdict;

/// Learn the response's `anthropic-ratelimit-*` headers into the key that served this attempt
/// and apply the verdict to it (cool down on 429 or 403, disable on 401).
pub fn apply(ctx: &RequestCtx, resp: &ResponseHeader, verdict: Verdict) {
    let Some(attempt) = &ctx.attempt else {
        return;
    };
    let Some(key) = attempt.reservation.as_ref().map(|r| r.key()) else {
        return;
    };
    let Some(provider) = ctx.state.as_ref().map(|s| &s.providers[attempt.provider]) else {
        return;
    };
    let kind = provider.config.kind;
    let now = SystemTime::now();
    let limits = kind.rate_limits(resp, now);
    if !limits.is_empty() {
        if crate::shared::installed().is_some_and(|store| store.keeps_to_share()) {
            // The others admit through the store meanwhile: the figures may only lower this
            // relay's share, or what is left of the key would be taken twice.
            key.learn_lowering(&limits);
        } else {
            key.learn(&limits);
        }
    }
    match verdict {
        Verdict::RateLimited => {
            let retry_after = kind.retry_after(resp, now);
            log::info!(
                "{}: key {} throttled by the upstream; cooling down for {}",
                ctx.request_id,
                key.id(),
                retry_after.map_or_else(|| "a backoff".to_owned(), |d| format!("{d:?}"))
            );
            key.cool_down(retry_after);
        }
        Verdict::KeyRejected => {
            log::warn!(
                "{}: key {} was refused by the upstream (401); disabled until the next reload",
                ctx.request_id,
                key.id(),
            );
            key.disable();
        }
        Verdict::Forbidden => {
            key.forbid();
            log::info!(
                "{}: the upstream answered 403 on key {} ({} in a row); benched for a while",
                ctx.request_id,
                key.id(),
                key.forbidden_strikes()
            );
        }
        _ => {}
    }
    share(attempt, provider, key, &limits, verdict);
}

/// With `shared_state`, what the response taught reaches every relay: the upstream's
/// `remaining` figures and a cooldown or hold, off the request path. Only for a reservation the
/// store admitted (while its breaker is open there is nobody to tell).
fn share(
    attempt: &super::attempt::Attempt,
    provider: &super::state::ProviderRuntime,
    key: &crate::pool::KeyState,
    limits: &crate::pool::RateLimitHeaders,
    verdict: Verdict,
) {
    let Some(store) = crate::shared::installed() else {
        return;
    };
    let Some(reservation) = attempt.reservation.as_ref() else {
        return;
    };
    let Some(lease) = reservation.lease() else {
        return;
    };
    let Some(names) = provider.shared_keys.get(reservation.index()) else {
        return;
    };
    key.clear_holds();
    let either = |own: &crate::pool::LimitHeaders| own.remaining.or(limits.tokens.remaining);
    let remaining = [
        limits.requests.remaining,
        either(&limits.input_tokens),
        either(&limits.output_tokens),
    ];
    // A 429 or a 403 benches the key for every relay. A `remaining: 0` is not shared as a
    // bench: the store counts that balance as empty and refilling, which is what it is.
    let bench = match verdict {
        Verdict::RateLimited | Verdict::Forbidden => key.benched_for_at(std::time::Instant::now()),
        _ => 0,
    };
    if bench > 0 {
        // Every relay must stop using the key now, not when this response ends.
        store.learn(
            names,
            key.whole_limits(),
            remaining,
            std::time::Duration::from_nanos(bench),
        );
    } else {
        // The figures travel with the settlement: one call to the store per request, not two.
        lease.note_remaining(remaining);
    }
}
