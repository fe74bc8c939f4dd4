//! Errors the relay itself answers, in Anthropic's JSON error shape so SDKs and Claude Code
//! show them properly: `{"type":"error","error":{"type":...,"message":...}}`.

use std::time::Duration;

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorType};

/// Pingora's error type for an attempt that ends with the relay's own answer (the [`ApiError`]
/// is the error's cause).
pub const RELAY_ANSWER: ErrorType = ErrorType::Custom("RelayAnswer");
/// Pingora's error type for an attempt the relay turns into a retry (the [`RetryAttempt`] is
/// the error's cause).
pub const RELAY_RETRY: ErrorType = ErrorType::Custom("RelayRetry");

/// End the request with `err`: the relay's own answer travels as the cause of the Pingora
/// error, and `fail_to_proxy` writes it.
pub fn answer(err: ApiError) -> Box<Error> {
    Error::because(RELAY_ANSWER, "the relay answers the client itself", err)
}

/// The relay's own answer carried by `e`, if any.
pub fn relay_answer(e: &Error) -> Option<&ApiError> {
    e.root_cause().downcast_ref::<ApiError>()
}

/// An attempt the upstream refused before a byte reached the client, to be made again on
/// another key.
#[derive(Debug, thiserror::Error)]
#[error("attempt {attempt} got status {status}; retrying on another key")]
pub struct RetryAttempt {
    pub status: u16,
    pub attempt: u32,
}

/// The error that makes Pingora start another attempt (it runs `upstream_peer` again).
pub fn retry(status: u16, attempt: u32) -> Box<Error> {
    let mut e = Error::because(
        RELAY_RETRY,
        "retrying on another key",
        RetryAttempt { status, attempt },
    );
    e.set_retry(true);
    e
}

/// Whether `e` is the relay's own retry of an attempt.
pub fn is_relay_retry(e: &Error) -> bool {
    e.root_cause().is::<RetryAttempt>()
}

/// An error the relay answers without (or instead of) an upstream response.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("invalid or missing credentials for this relay")]
    Unauthorized,
    #[error("too many failed authentications from this address; retry after 2 s")]
    AuthThrottled,
    #[error("request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("{0}")]
    InvalidRequest(String),
    /// The body could not be read as HTTP (broken chunked encoding): the connection cannot be
    /// reused after it.
    #[error("the request body is malformed: {0}")]
    MalformedBody(String),
    #[error("request body is larger than the relay's limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("no route for {method} {path}")]
    NotFound { method: String, path: String },
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error(
        "every key of provider '{provider}' is out of capacity; retry after {retry_after_secs} s"
    )]
    PoolExhausted {
        provider: String,
        retry_after_secs: u64,
    },
    #[error(
        "every key of provider '{provider}' was refused by the upstream (401) and stays disabled \
         until the relay's config is reloaded"
    )]
    PoolDisabled { provider: String },
    #[error("no enabled provider is configured; see the relay's config")]
    NoProvider,
    #[error("the request body stopped arriving: nothing for {waited_ms} ms")]
    ClientTimeout { waited_ms: u128 },
    #[error(
        "the relay holds as many request bodies as it may ({limit} bytes together); retry after \
         1 s"
    )]
    BodiesFull { limit: usize },
    #[error(
        "the request body arrives too slowly: {received} bytes in {elapsed_ms} ms, below \
         server.min_body_rate_bytes_per_s ({rate} bytes/s) after the first {grace_ms} ms"
    )]
    BodyTooSlow {
        received: usize,
        elapsed_ms: u128,
        rate: u64,
        grace_ms: u128,
    },
    #[error(
        "the relay holds as many request bodies from your address as it may \
         (server.max_buffered_body_bytes_per_address: {limit} bytes together); retry after 1 s"
    )]
    AddressBodiesFull { limit: usize },
    #[error("the request header is larger than the relay's limit of {limit} bytes")]
    HeaderTooLarge { limit: usize },
    #[error(
        "every provider that could serve this request is failing (circuit open); retry after \
         {retry_after_secs} s"
    )]
    CircuitsOpen { retry_after_secs: u64 },
    #[error(
        "client '{client}' is over its own {limit} of {value} {unit}; retry after \
         {retry_after_secs} s"
    )]
    ClientLimit {
        client: String,
        limit: &'static str,
        value: u64,
        unit: &'static str,
        retry_after_secs: u64,
    },
    #[error(
        "client '{client}' has used its {budget} ({used} of {value} tokens); it resets at \
         {resets_at}"
    )]
    ClientBudget {
        client: String,
        budget: &'static str,
        value: u64,
        used: u64,
        resets_at: String,
        retry_after_secs: u64,
    },
    /// A client asked for what its allow-lists (`models`, `providers`) do not give it.
    #[error("{0}")]
    ClientForbidden(String),
    /// A client key without `admin: true` asked for an operator's endpoint (`/status`,
    /// `/metrics`, `/v1/providers`: every client's name and budget, upstream URLs, key ids).
    #[error(
        "{path} is for the relay's operator: it needs server.auth's key or the key of a client \
         with admin: true"
    )]
    OperatorOnly { path: &'static str },
    #[error("the relay is at its limit of {limit} concurrent requests")]
    Overloaded { limit: usize },
    #[error("upstream '{provider}' could not be reached: {reason}")]
    UpstreamUnreachable { provider: String, reason: String },
    #[error("upstream '{provider}' did not answer within {timeout_ms} ms")]
    UpstreamTimeout { provider: String, timeout_ms: u128 },
    #[error("internal relay error: {0}")]
    Internal(String),
}

impl ApiError {
    /// What the relay answers when `provider`'s pool cannot take a request: a rate limit with
    /// its true `Retry-After`, or — when every key is disabled — no rate limit at all.
    pub fn pool_refused(provider: &str, exhausted: crate::pool::Exhausted) -> ApiError {
        if exhausted.all_disabled {
            ApiError::PoolDisabled {
                provider: provider.to_owned(),
            }
        } else {
            ApiError::PoolExhausted {
                provider: provider.to_owned(),
                retry_after_secs: whole_seconds(exhausted.retry_after),
            }
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            ApiError::Unauthorized => 401,
            ApiError::InvalidJson(_) | ApiError::InvalidRequest(_) | ApiError::MalformedBody(_) => {
                400
            }
            ApiError::BodyTooLarge { .. } => 413,
            ApiError::ClientTimeout { .. } | ApiError::BodyTooSlow { .. } => 408,
            ApiError::HeaderTooLarge { .. } => 431,
            ApiError::NotFound { .. } => 404,
            ApiError::MethodNotAllowed { .. } => 405,
            ApiError::PoolExhausted { .. }
            | ApiError::AuthThrottled
            | ApiError::ClientLimit { .. }
            | ApiError::ClientBudget { .. } => 429,
            ApiError::ClientForbidden(_) | ApiError::OperatorOnly { .. } => 403,
            ApiError::Overloaded { .. }
            | ApiError::PoolDisabled { .. }
            | ApiError::NoProvider
            | ApiError::BodiesFull { .. }
            | ApiError::AddressBodiesFull { .. }
            | ApiError::CircuitsOpen { .. } => 503,
            ApiError::UpstreamUnreachable { .. } => 502,
            ApiError::UpstreamTimeout { .. } => 504,
            ApiError::Internal(_) => 500,
        }
    }

    /// Anthropic's `error.type` for this error.
    pub fn error_type(&self) -> &'static str {
        match self {
            ApiError::Unauthorized => "authentication_error",
            ApiError::InvalidJson(_)
            | ApiError::InvalidRequest(_)
            | ApiError::MalformedBody(_)
            | ApiError::ClientTimeout { .. }
            | ApiError::BodyTooSlow { .. }
            | ApiError::HeaderTooLarge { .. }
            | ApiError::MethodNotAllowed { .. } => "invalid_request_error",
            ApiError::BodyTooLarge { .. } => "request_too_large",
            ApiError::NotFound { .. } => "not_found_error",
            ApiError::PoolExhausted { .. }
            | ApiError::AuthThrottled
            | ApiError::ClientLimit { .. }
            | ApiError::ClientBudget { .. } => "rate_limit_error",
            ApiError::ClientForbidden(_) | ApiError::OperatorOnly { .. } => "permission_error",
            ApiError::Overloaded { .. }
            | ApiError::CircuitsOpen { .. }
            | ApiError::BodiesFull { .. }
            | ApiError::AddressBodiesFull { .. } => "overloaded_error",
            ApiError::UpstreamUnreachable { .. }
            | ApiError::PoolDisabled { .. }
            | ApiError::NoProvider
            | ApiError::UpstreamTimeout { .. }
            | ApiError::Internal(_) => "api_error",
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::PoolExhausted {
                retry_after_secs, ..
            }
            | ApiError::CircuitsOpen { retry_after_secs }
            | ApiError::ClientLimit {
                retry_after_secs, ..
            }
            | ApiError::ClientBudget {
                retry_after_secs, ..
            } => Some(Duration::from_secs(*retry_after_secs)),
            // The current window and the next: by then the last one no longer counts.
            ApiError::AuthThrottled => Some(Duration::from_secs(2)),
            // Bodies in flight finish within seconds; the share frees up as they do.
            ApiError::BodiesFull { .. } | ApiError::AddressBodiesFull { .. } => {
                Some(Duration::from_secs(1))
            }
            _ => None,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Bytes {
        let v = serde_json::json!({
            "type": "error",
            "error": { "type": self.error_type(), "message": self.to_string() },
        });
        Bytes::from(v.to_string())
    }

    /// The same error as one SSE event, for a stream that already started when it happened.
    pub fn sse_event(&self) -> Bytes {
        let mut out = b"event: error\ndata: ".to_vec();
        out.extend_from_slice(&self.body());
        out.extend_from_slice(b"\n\n");
        Bytes::from(out)
    }
}

/// Seconds for a `Retry-After`, rounded up, at least 1.
pub fn whole_seconds(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

/// Write `err` as the whole response. `request_id` goes in `x-request-id` (and `request-id`,
/// the header Anthropic's SDKs surface in their exceptions).
pub async fn write_error(
    session: &mut Session,
    err: &ApiError,
    request_id: &str,
) -> pingora::Result<()> {
    let body = err.body();
    let mut resp = ResponseHeader::build(err.status(), Some(6))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", body.len().to_string())?;
    if !request_id.is_empty() {
        resp.insert_header("x-request-id", request_id)?;
        resp.insert_header("request-id", request_id)?;
    }
    if let Some(after) = err.retry_after() {
        resp.insert_header("retry-after", after.as_secs().max(1).to_string())?;
    }
    if err.status() == 405 {
        resp.insert_header("allow", "POST")?;
    }
    // A request whose body we did not read cannot leave the connection reusable.
    if matches!(
        err,
        ApiError::BodyTooLarge { .. } | ApiError::MalformedBody(_)
    ) {
        resp.insert_header("connection", "close")?;
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

/// How long an answered request's unread body is read and dropped at most, so that a client
/// still sending it reads the answer rather than a connection reset (closing a socket with
/// unread data resets it). Bounded in time, never buffered.
const LINGER: Duration = Duration::from_secs(2);

/// After an answer given before the request body was read (413, 503, 429, 401, ...): read and
/// drop what the client still sends, for at most [`LINGER`]. Not for a body whose framing is
/// broken or that stopped arriving: there is nothing sound to read.
pub async fn linger(session: &mut Session, err: &ApiError) {
    if matches!(
        err,
        ApiError::MalformedBody(_) | ApiError::ClientTimeout { .. } | ApiError::BodyTooSlow { .. }
    ) || session.is_body_done()
    {
        return;
    }
    let _ = tokio::time::timeout(LINGER, session.drain_request_body()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_anthropic_error_shape() {
        let e = ApiError::PoolExhausted {
            provider: "anthropic".into(),
            retry_after_secs: 3,
        };
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "rate_limit_error");
        assert!(v["error"]["message"].as_str().unwrap().contains("3 s"));
        assert_eq!(e.status(), 429);
    }

    #[test]
    fn sse_event_is_one_complete_event() {
        let e = ApiError::UpstreamUnreachable {
            provider: "p".into(),
            reason: "connection reset".into(),
        };
        let ev = e.sse_event();
        assert!(ev.starts_with(b"event: error\ndata: {"));
        assert!(ev.ends_with(b"}\n\n"));
    }
}
