//! What an upstream status means for the key that got it, and feeding the response's
//! rate-limit headers back into the pool.

use std::time::SystemTime;

use pingora::http::ResponseHeader;

use super::ctx::RequestCtx;
use crate::pool::{parse_retry_after, RateLimitHeaders};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Success,
    /// 429: this key is throttled.
    RateLimited,
    /// 401: this key is refused (revoked, mistyped).
    KeyRejected,
    /// 403: not allowed — by the key's permissions, or for this request (a model or region
    /// the organisation may not use). Retried on another key; the key is benched briefly.
    Forbidden,
    /// 529: Anthropic is overloaded; not the key's fault.
    Overloaded,
    /// Other 5xx: not the key's fault.
    ServerError,
    /// Other statuses (400, 404, 413...): the request's fault; passed to the client as is.
    ClientError,
}

impl Verdict {
    pub fn of(status: u16) -> Verdict {
        match status {
            200..=399 => Verdict::Success,
            429 => Verdict::RateLimited,
            401 => Verdict::KeyRejected,
            403 => Verdict::Forbidden,
            529 => Verdict::Overloaded,
            500..=599 => Verdict::ServerError,
            _ => Verdict::ClientError,
        }
    }

    /// Another attempt (on another key) may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Verdict::RateLimited
                | Verdict::KeyRejected
                | Verdict::Forbidden
                | Verdict::Overloaded
                | Verdict::ServerError
        )
    }

    /// The failure is the upstream's, not the credential's.
    pub fn is_transient(self) -> bool {
        matches!(self, Verdict::Overloaded | Verdict::ServerError)
    }
}

/// Learn the response's `anthropic-ratelimit-*` headers into the key that served this attempt
/// and apply the verdict to it (cool down on 429 or 403, disable on 401).
pub fn apply(ctx: &RequestCtx, resp: &ResponseHeader, verdict: Verdict) {
    let Some(key) = ctx.reservation.as_ref().map(|r| r.key()) else {
        return;
    };
    let mut now = None;
    let mut limits = RateLimitHeaders::default();
    for (name, value) in resp.headers.iter() {
        if name.as_str().starts_with("anthropic-ratelimit-") {
            let now = *now.get_or_insert_with(SystemTime::now);
            limits.observe(name.as_str(), value.as_bytes(), now);
        }
    }
    if !limits.is_empty() {
        key.learn(&limits);
    }
    match verdict {
        Verdict::RateLimited => {
            let retry_after = resp.headers.get("retry-after").and_then(|v| {
                parse_retry_after(v.as_bytes(), *now.get_or_insert_with(SystemTime::now))
            });
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_verdicts() {
        assert_eq!(Verdict::of(200), Verdict::Success);
        assert_eq!(Verdict::of(429), Verdict::RateLimited);
        assert_eq!(Verdict::of(401), Verdict::KeyRejected);
        assert_eq!(Verdict::of(403), Verdict::Forbidden);
        assert!(Verdict::Forbidden.is_retryable() && !Verdict::Forbidden.is_transient());
        assert_eq!(Verdict::of(529), Verdict::Overloaded);
        assert_eq!(Verdict::of(503), Verdict::ServerError);
        assert_eq!(Verdict::of(400), Verdict::ClientError);
        assert!(!Verdict::ClientError.is_retryable());
        assert!(Verdict::RateLimited.is_retryable() && !Verdict::RateLimited.is_transient());
    }
}
