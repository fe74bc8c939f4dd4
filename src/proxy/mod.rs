//! The relay as a Pingora `ProxyHttp`: one request's path through the phases.
//!
//! ```text
//! request_filter           route, auth, read + parse the body, pick the provider, check the
//!                          pool can admit it (or answer 429 without touching the upstream)
//! upstream_peer            the provider's resolved address (no DNS here)
//! upstream_request_filter  select + reserve a key, inject it, strip client credentials,
//!                          Host, path prefix, Content-Length of the (rewritten) body
//! upstream_response_filter a throttled/failed attempt becomes a retry on another key
//! response_filter          learn anthropic-ratelimit-* into the pool, verdicts, headers
//! response_body_filter     read usage from the JSON body or the SSE stream as it passes
//! logging                  settle the reservation with the real usage
//! ```
//!
//! Retries: Pingora retries only connection errors and has no status-driven retry. A 429, 401,
//! 529 or 5xx seen in `upstream_response_filter` — before a byte reached the client — is turned
//! into an error marked retryable, and `error_while_proxy` keeps that mark for this request;
//! Pingora then runs `upstream_peer` and `upstream_request_filter` again, where the next key is
//! chosen excluding the ones tried. The body is resent from the relay's own buffer
//! (`replay::BodyReplaySession`), whatever its size. The last attempt is never turned into an
//! error: the client then sees the upstream's real response.

mod auth;
mod ctx;
mod errors;
mod local;
mod replay;
mod request;
mod state;
mod verdict;

use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};

pub use ctx::RequestCtx;
pub use errors::ApiError;
pub use local::Route;
pub use request::RequestFacts;
pub use state::{shared, ProviderRuntime, RuntimeState, Shared, SharedState};

use crate::pool::Demand;
use crate::usage::{JsonUsageScanner, SseUsageParser};
use ctx::{ConcurrencySlot, UsageTracker};
use replay::BodyReplaySession;
use verdict::Verdict;

/// Headers that describe one hop, not the message: never forwarded upstream.
/// `accept-encoding` is dropped too so responses come back uncompressed and the relay can read
/// token usage from them.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "accept-encoding",
    "expect",
];

/// Pingora's errors for a request body whose HTTP framing is broken (`v1/body.rs`).
const MALFORMED_BODY: &[&str] = &["InvalidChunk", "InvalidTrailerEnd"];

/// How long one wait for pool capacity sleeps at most, so a request held by
/// `pooling.max_wait_ms` notices capacity freed by settlements soon after it appears.
const CAPACITY_POLL: Duration = Duration::from_millis(50);

pub struct Relay {
    shared: SharedState,
}

impl Relay {
    pub fn new(shared: SharedState) -> Self {
        Relay { shared }
    }

    /// Answer `err` locally; the request ends here.
    async fn reject(&self, session: &mut Session, ctx: &RequestCtx, err: ApiError) -> Result<bool> {
        log::debug!(
            "{} {} -> {} ({})",
            ctx.request_id,
            session.req_header().uri.path(),
            err.status(),
            err
        );
        errors::write_error(session, &err, &ctx.request_id).await?;
        Ok(true)
    }

    /// Read the whole request body, refusing it past `limit` bytes. A body that arrives in one
    /// read is kept as it is, without a copy.
    async fn read_body(session: &mut Session, limit: usize) -> Result<Result<Bytes, ApiError>> {
        let declared = session
            .req_header()
            .headers
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Ok(Err(ApiError::BodyTooLarge { limit }));
        }
        // The relay reads the body before anything goes upstream, so it answers the client's
        // `Expect: 100-continue` itself (curl otherwise waits a second before sending), once
        // the declared size is known to be acceptable.
        let expects_continue = session
            .req_header()
            .headers
            .get("expect")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if expects_continue {
            session.write_continue_response().await?;
        }
        let mut first: Option<Bytes> = None;
        let mut rest: Option<BytesMut> = None;
        let mut total = 0usize;
        loop {
            let chunk = match session.read_request_body().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                // The client's framing is broken: its fault, answered (not a relay error).
                Err(e) if MALFORMED_BODY.contains(&e.etype().as_str()) => {
                    return Ok(Err(ApiError::MalformedBody(format!(
                        "{} (chunked transfer encoding)",
                        e.etype().as_str()
                    ))));
                }
                Err(e) => return Err(e),
            };
            total += chunk.len();
            if total > limit {
                return Ok(Err(ApiError::BodyTooLarge { limit }));
            }
            match (&mut first, &mut rest) {
                (None, _) => first = Some(chunk),
                (Some(f), None) => {
                    let mut buf = BytesMut::with_capacity(declared.unwrap_or(total).max(total));
                    buf.extend_from_slice(f);
                    buf.extend_from_slice(&chunk);
                    rest = Some(buf);
                }
                (Some(_), Some(buf)) => buf.extend_from_slice(&chunk),
            }
        }
        Ok(Ok(match (first, rest) {
            (_, Some(buf)) => buf.freeze(),
            (Some(f), None) => f,
            (None, None) => Bytes::new(),
        }))
    }

    /// Wait up to `max_wait` for the provider's pool to be able to admit `demand`.
    async fn admit(
        provider: &ProviderRuntime,
        demand: &Demand,
        max_wait: Duration,
    ) -> std::result::Result<(), ApiError> {
        let Some(pool) = &provider.pool else {
            return Ok(());
        };
        let deadline = tokio::time::Instant::now() + max_wait;
        loop {
            let exhausted = match pool.check(demand, &[]) {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            let now = tokio::time::Instant::now();
            if now >= deadline || exhausted.all_disabled {
                return Err(ApiError::pool_refused(provider.name(), exhausted));
            }
            let nap = exhausted.retry_after.min(CAPACITY_POLL).min(deadline - now);
            tokio::time::sleep(nap).await;
        }
    }

    fn max_attempts(ctx: &RequestCtx) -> u32 {
        ctx.state
            .as_ref()
            .map_or(1, |s| s.config.routing.max_attempts)
    }

    /// Whether a failed attempt with `verdict` should be tried again.
    fn should_retry(ctx: &RequestCtx, verdict: Verdict) -> bool {
        if ctx.attempt >= Self::max_attempts(ctx) || !verdict.is_retryable() {
            return false;
        }
        let Some(provider) = ctx.provider() else {
            return false;
        };
        match &provider.pool {
            // Another key must be able to take it now; otherwise the client is better served
            // by the upstream's own answer than by a local 429.
            Some(pool) => pool.check(&ctx.demand, &ctx.tried).is_ok(),
            // Passthrough: the same credential again, only for failures that are not its fault.
            None => verdict.is_transient(),
        }
    }

    fn retry_error(status: u16) -> Box<Error> {
        let mut e = Error::explain(
            ErrorType::HTTPStatus(status),
            "upstream refused the attempt; retrying on another key",
        );
        e.set_retry(true);
        e
    }
}

fn new_request_id() -> String {
    format!("req_relay_{:024x}", fastrand::u128(..) >> 32)
}

#[async_trait]
impl ProxyHttp for Relay {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx::new()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        let state = self.shared.current.load_full();
        ctx.request_id = new_request_id();
        if self
            .shared
            .draining
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            session.set_keepalive(None);
        }
        let route = {
            let req = session.req_header();
            Route::of(&req.method, req.uri.path())
        };
        ctx.route = route;

        match route {
            Route::Unknown => {
                let req = session.req_header();
                let err = ApiError::NotFound {
                    method: req.method.to_string(),
                    path: req.uri.path().to_owned(),
                };
                ctx.state = Some(state);
                return self.reject(session, ctx, err).await;
            }
            Route::WrongMethod => {
                let req = session.req_header();
                let err = ApiError::MethodNotAllowed {
                    method: req.method.to_string(),
                    path: req.uri.path().to_owned(),
                };
                return self.reject(session, ctx, err).await;
            }
            _ => {}
        }

        if route.needs_auth() {
            match auth::authenticate(&state.config.server.auth, session.req_header()) {
                Ok(cred) => ctx.credential = cred,
                Err(e) => return self.reject(session, ctx, e).await,
            }
        }

        match route {
            Route::Root => {
                let body = Bytes::from_static(b"{\"status\":\"ok\",\"service\":\"cc-relay\"}");
                local::respond_json(session, 200, body, &ctx.request_id).await?;
                return Ok(true);
            }
            Route::Health => {
                let body = local::health_body(&state);
                local::respond_json(session, 200, body, &ctx.request_id).await?;
                return Ok(true);
            }
            Route::Status => {
                let body = local::status_body(&state, &self.shared);
                local::respond_json(session, 200, body, &ctx.request_id).await?;
                return Ok(true);
            }
            Route::Models => {
                let body = local::models_body(&state);
                local::respond_json(session, 200, body, &ctx.request_id).await?;
                return Ok(true);
            }
            _ => {}
        }

        let server = &state.config.server;
        match ConcurrencySlot::acquire(&self.shared.in_flight, server.max_concurrent) {
            Some(slot) => ctx.slot = Some(slot),
            None => {
                let err = ApiError::Overloaded {
                    limit: server.max_concurrent,
                };
                return self.reject(session, ctx, err).await;
            }
        }

        let body = match Self::read_body(session, server.max_body_bytes).await? {
            Ok(b) => b,
            Err(e) => return self.reject(session, ctx, e).await,
        };
        let facts = match RequestFacts::parse(&body) {
            Ok(f) => f,
            Err(e) => return self.reject(session, ctx, e).await,
        };

        let Some((index, routed_model)) = state.route(facts.model.as_deref()) else {
            let err = ApiError::Internal("no enabled provider is configured".into());
            return self.reject(session, ctx, err).await;
        };
        let provider = &state.providers[index];
        let final_model = routed_model.map(|m| {
            provider
                .config
                .model_mapping
                .get(m)
                .map(String::as_str)
                .unwrap_or(m)
        });
        let body = match final_model {
            Some(m) if Some(m) != facts.model.as_deref() => facts.rewrite_model(&body, m),
            _ => body,
        };

        ctx.demand = match route {
            Route::Messages => Demand {
                input_tokens: RequestFacts::estimate_input_tokens(body.len()),
                max_tokens: facts.max_tokens,
            },
            // Token counting has its own limits upstream; it costs a request, no tokens.
            _ => Demand {
                input_tokens: 0,
                max_tokens: 1,
            },
        };
        if let Err(e) = Self::admit(provider, &ctx.demand, provider.config.pooling.max_wait).await {
            return self.reject(session, ctx, e).await;
        }

        ctx.provider = index;
        ctx.body_len = body.len();
        ctx.state = Some(state);
        BodyReplaySession::install(session, body);
        ctx.replay_installed = true;
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        ctx.attempt += 1;
        let state = ctx.state.clone().expect("set by request_filter");
        let provider = &state.providers[ctx.provider];
        let Some(addr) = provider.addrs.pick() else {
            ctx.local_error = Some(ApiError::UpstreamUnreachable {
                provider: provider.name().to_owned(),
                reason: format!("host {} did not resolve", provider.addrs.host()),
            });
            return Err(Error::explain(
                ErrorType::ConnectNoRoute,
                "upstream host has no address",
            ));
        };
        let base = &provider.config.base_url;
        let server = &state.config.server;
        let mut peer = HttpPeer::new(addr, base.tls, base.host.clone());
        peer.options.connection_timeout = Some(server.upstream_connect_timeout);
        peer.options.total_connection_timeout = Some(server.upstream_connect_timeout * 2);
        peer.options.read_timeout = Some(server.upstream_read_timeout);
        peer.options.write_timeout = Some(server.upstream_read_timeout);
        peer.options.idle_timeout = Some(Duration::from_secs(90));
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Nothing was sent and no key was charged yet: any attempt left may take it.
        let retry = ctx.attempt < Self::max_attempts(ctx);
        e.set_retry(retry);
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let state = ctx.state.clone().expect("set by request_filter");
        let provider = &state.providers[ctx.provider];

        // Scan the names present (one or two match at most, e.g. `connection`) instead of nine
        // remove_header(&str) calls, each of which parses and hashes a name; no list is built.
        while let Some(name) = upstream
            .headers
            .keys()
            .find(|k| HOP_BY_HOP.contains(&k.as_str()))
            .cloned()
        {
            upstream.remove_header(&name);
        }

        if let Some(pool) = &provider.pool {
            match pool.acquire(&ctx.demand, &ctx.tried) {
                Ok(reservation) => {
                    let index = reservation.index();
                    log::debug!(
                        "{} attempt {} -> provider {} key {} ({} of {} keys available)",
                        ctx.request_id,
                        ctx.attempt,
                        provider.name(),
                        reservation.key().id(),
                        pool.available(),
                        pool.len()
                    );
                    ctx.tried.push(index);
                    ctx.reservation = Some(reservation);
                    // The relay supplies the key: no client credential reaches the upstream.
                    upstream.remove_header("x-api-key");
                    upstream.remove_header("authorization");
                    upstream.insert_header(
                        provider.auth.header_name(),
                        provider.auth_value(index).clone(),
                    )?;
                }
                Err(exhausted) => {
                    ctx.local_error = Some(ApiError::pool_refused(provider.name(), exhausted));
                    return Err(Error::explain(
                        ErrorType::HTTPStatus(429),
                        "key pool exhausted",
                    ));
                }
            }
        } else if let Some(header) = ctx.credential.header() {
            // Passthrough: the client's upstream credential goes on, the relay's own does not.
            upstream.remove_header(header);
        }

        upstream.insert_header(http::header::HOST, provider.host_value.clone())?;
        upstream.insert_header(
            http::header::CONTENT_LENGTH,
            http::HeaderValue::from(ctx.body_len),
        )?;
        // Always origin form upstream (path and query), whatever form the client used: an
        // absolute-form target (`POST http://evil.example/v1/messages`) forwarded as is would
        // let an upstream that routes by the target serve it as another host, pool key and
        // all. Pingora keeps such a target verbatim for the wire; `set_uri` replaces it.
        let origin = session
            .req_header()
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str());
        let prefix = &provider.config.base_url.path_prefix;
        if !prefix.is_empty() {
            let joined = format!("{prefix}{origin}");
            let uri = joined.parse::<http::Uri>().map_err(|e| {
                Error::because(ErrorType::InternalError, "joining base_url path", e)
            })?;
            upstream.set_uri(uri);
        } else if upstream.raw_path() != origin.as_bytes() {
            let uri = origin.parse::<http::Uri>().map_err(|e| {
                Error::because(ErrorType::InternalError, "origin-form request target", e)
            })?;
            upstream.set_uri(uri);
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let status = upstream_response.status.as_u16();
        let verdict = Verdict::of(status);
        if Self::should_retry(ctx, verdict) {
            verdict::apply(ctx, upstream_response, verdict);
            log::info!(
                "{} attempt {} on provider {} got {}; retrying",
                ctx.request_id,
                ctx.attempt,
                ctx.provider_name(),
                status
            );
            ctx.release_reservation();
            ctx.retry_requested = true;
            return Err(Self::retry_error(status));
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let status = upstream_response.status.as_u16();
        ctx.upstream_status = status;
        verdict::apply(ctx, upstream_response, Verdict::of(status));

        if (200..300).contains(&status) && ctx.route == Route::Messages {
            let is_sse = upstream_response
                .headers
                .get("content-type")
                .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
            ctx.usage = if is_sse {
                UsageTracker::Sse(SseUsageParser::new())
            } else {
                UsageTracker::Json(JsonUsageScanner::new())
            };
        }

        upstream_response.insert_header("x-request-id", ctx.request_id.as_str())?;
        if let Some(provider) = ctx.provider() {
            if let Some(pool) = &provider.pool {
                if let Some(id) = ctx.tried.last().and_then(|&i| provider.key_id_value(i)) {
                    upstream_response.insert_header("x-cc-relay-key-id", id.clone())?;
                }
                upstream_response
                    .insert_header("x-cc-relay-keys-total", provider.keys_total_value.clone())?;
                upstream_response.insert_header(
                    "x-cc-relay-keys-available",
                    http::HeaderValue::from(pool.available()),
                )?;
            }
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<Duration>> {
        if let Some(chunk) = body {
            ctx.usage.feed(chunk);
        }
        Ok(None)
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Self::CTX,
        _client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("peer {peer}"));
        if std::mem::take(&mut ctx.retry_requested) {
            // Our own status-driven retry: keep it (Pingora's default refuses POST retries).
            e.set_retry(true);
            return e;
        }
        // The connection broke before any byte reached the client (e.g. a reused upstream
        // connection closed under us): the body is replayable, so another attempt is safe. A
        // timeout is not retried: the upstream may still be working on (and billing) it.
        let connection_failure = session.response_written().is_none()
            && *e.esource() == ErrorSource::Upstream
            && !matches!(
                e.etype(),
                ErrorType::ReadTimedout | ErrorType::WriteTimedout
            )
            && ctx.local_error.is_none()
            && ctx.attempt < Self::max_attempts(ctx);
        let mut retry = false;
        if connection_failure {
            // Not the key's fault: it may serve the next attempt too.
            if let Some(r) = ctx.reservation.take() {
                ctx.tried.retain(|&i| i != r.index());
                r.release();
            }
            retry = match ctx.provider().and_then(|p| p.pool.as_ref()) {
                Some(pool) => pool.check(&ctx.demand, &ctx.tried).is_ok(),
                None => true,
            };
        }
        e.set_retry(retry);
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy
    where
        Self::CTX: Send + Sync,
    {
        let provider = ctx.provider_name().to_owned();
        if session.response_written().is_some() {
            // The response already started: a status can no longer be sent. End an SSE stream
            // with an error event so the client's SDK reports what happened instead of waiting.
            if ctx.usage.is_unfinished_stream() {
                let err = ApiError::UpstreamUnreachable {
                    provider,
                    reason: format!("the upstream stream broke: {}", e.etype().as_str()),
                };
                let _ = session
                    .write_response_body(Some(err.sse_event()), true)
                    .await;
            }
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        let timeout_ms = ctx
            .state
            .as_ref()
            .map_or(0, |s| s.config.server.upstream_read_timeout.as_millis());
        let err = match ctx.local_error.take() {
            Some(err) => err,
            None => match (e.esource(), e.etype()) {
                (ErrorSource::Downstream, _) => {
                    // The client went away or sent garbage: nobody to answer.
                    return FailToProxy {
                        error_code: 0,
                        can_reuse_downstream: false,
                    };
                }
                (_, ErrorType::ReadTimedout | ErrorType::WriteTimedout) => {
                    ApiError::UpstreamTimeout {
                        provider,
                        timeout_ms,
                    }
                }
                (ErrorSource::Upstream, etype) | (_, etype @ ErrorType::HTTPStatus(_)) => {
                    ApiError::UpstreamUnreachable {
                        provider,
                        reason: etype.as_str().to_owned(),
                    }
                }
                (_, etype) => ApiError::Internal(etype.as_str().to_owned()),
            },
        };
        let code = err.status();
        if let Err(write_err) = errors::write_error(session, &err, &ctx.request_id).await {
            log::debug!("{}: could not send the error: {write_err}", ctx.request_id);
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Self::CTX, error: &Error) -> bool {
        // A local 429 from an exhausted pool is an answer, not a failure; it is logged at debug.
        matches!(error.etype(), ErrorType::HTTPStatus(429))
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        _ctx: &Self::CTX,
        error: &Error,
        _context: pingora::proxy::ProxyWarnLogContext,
    ) -> bool {
        // Status-driven retries are the relay's own, already logged with the key's id.
        matches!(error.etype(), ErrorType::HTTPStatus(_))
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Self::CTX) {
        if ctx.replay_installed && BodyReplaySession::restore(session) && e.is_some() {
            session.set_keepalive(None);
        }
        ctx.settle_reservation();
        // The usage is read again only for the debug line: not when it is filtered out.
        if ctx.route.is_proxied() && log::log_enabled!(log::Level::Debug) {
            let usage = ctx.usage.usage().unwrap_or_default();
            log::debug!(
                "{} {} provider={} status={} attempts={} in={} out={} ms={}",
                ctx.request_id,
                session.req_header().uri.path(),
                ctx.provider_name(),
                ctx.upstream_status,
                ctx.attempt,
                usage.input_tokens,
                usage.output_tokens,
                ctx.started.elapsed().as_millis()
            );
        }
    }
}
