//! What an upstream status means for the attempt that got it and for its key: the one
//! classification that retries (and, with routing, failover and circuit breakers) go by.

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
    /// 529: the provider is overloaded; not the key's fault.
    Overloaded,
    /// Other 5xx: not the key's fault.
    ServerError,
    /// Other statuses (400, 404, 413...): the request's fault; passed to the client as is.
    ClientError,
}

impl Verdict {
    /// Anthropic's meaning of each status (shared by the Anthropic-compatible kinds).
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
