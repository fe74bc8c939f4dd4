//! The relay as a Pingora `ProxyHttp`: one request's path through the phases, kept thin — the
//! work is in the intake steps (`intake`), the attempt (`attempt`), the provider kinds
//! (`crate::providers`) and the pool (`crate::pool`).
//!
//! ```text
//! request_filter           intake steps: endpoint, auth, local endpoints, admission, body,
//!                          facts, provider, pool admission (or a local answer, one exit point)
//! upstream_peer            a new attempt: the provider's resolved address (no DNS here)
//! upstream_request_filter  select + reserve a key, then the provider kind prepares the request
//! request_body_filter      the attempt's own body (model mapping, translation) goes upstream
//! upstream_response_filter the kind classifies the status; a refused attempt becomes a retry
//! response_filter          learn rate-limit headers into the pool, verdicts, headers
//! response_body_filter     the kind's body adapter (if any), then usage from JSON or SSE
//! logging                  settle the reservation with the real usage
//! ```
//!
//! Retries: Pingora retries only connection errors and has no status-driven retry. A 429, 401,
//! 403, 529 or 5xx seen in `upstream_response_filter` — before a byte reached the client — is
//! turned into an error whose cause is a [`errors::RetryAttempt`], marked retryable;
//! `error_while_proxy` keeps that mark; Pingora then runs `upstream_peer` and
//! `upstream_request_filter` again: a new attempt, on a key not tried yet. The body is resent
//! from the relay's own buffer (`replay::BodyReplaySession`), whatever its size. The last
//! attempt is never turned into an error: the client then sees the upstream's real response.
//! An answer of the relay's own (pool exhausted, upstream unreachable) travels the same way, as
//! the [`ApiError`] cause of the Pingora error, and `fail_to_proxy` writes it.

mod attempt;
mod auth;
mod body_budget;
mod body_rate;
mod ctx;
mod errors;
mod intake;
mod learn;
mod local;
mod replay;
mod request;
mod state;
mod unsettled;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};

pub use auth::{authenticate_client, client_addr, ClientAddr};
pub use body_budget::held as buffered_body_bytes;
pub use ctx::RequestCtx;
pub use errors::ApiError;
pub use local::Endpoint;
pub use request::RequestFacts;
pub use state::{shared, ProviderRuntime, RuntimeState, Shared, SharedState};
pub use unsettled::count as unsettled_requests;

use crate::admin::metrics::{local_outcome, Outcome, METRICS};
use crate::admin::{access_log, activity};
use crate::providers::Verdict;
use crate::usage::{JsonUsageScanner, SseUsageParser};
use attempt::{Attempt, Connection};
use ctx::UsageTracker;
use intake::{Answer, Step};
use replay::BodyReplaySession;

pub struct Relay {
    shared: SharedState,
}

impl Relay {
    pub fn new(shared: SharedState) -> Self {
        Relay { shared }
    }

    /// The intake steps, in order; the first that does not continue decides.
    async fn intake(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<Step> {
        let state = self.shared.current.load_full();
        ctx.state = Some(state.clone());
        ctx.client_addr = auth::client_addr(
            session.client_addr(),
            &session.req_header().headers,
            &state.config.server.trusted_proxies,
        );
        if self
            .shared
            .draining
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            session.set_keepalive(None);
        } else if session.get_keepalive().is_some() {
            // A kept-alive connection waits `server.idle_timeout_ms` for its next request
            // (Pingora's HTTP/1.1 default is forever); HTTP/1.0 and `Connection: close` stay
            // closing.
            let idle = state.config.server.idle_timeout;
            session.set_keepalive(Some(idle.as_secs().max(1)));
        }
        macro_rules! step {
            ($e:expr) => {
                if let Step::Respond(answer) = $e {
                    return Ok(Step::Respond(answer));
                }
            };
        }
        step!(intake::header_size(session, &state));
        step!(intake::endpoint(session, ctx));
        step!(intake::authenticate(session, ctx, &state, &self.shared));
        step!(intake::local_endpoints(ctx, &state, &self.shared));
        step!(intake::admission(ctx, &state, &self.shared));
        step!(intake::read_and_parse_body(session, ctx, &state).await?);
        step!(intake::client_model(ctx));
        step!(intake::plan(session, ctx, &state, &self.shared));
        step!(intake::client_quota(ctx, &state));
        step!(intake::plan_admission(ctx, &state).await);
        Ok(Step::Continue)
    }

    /// Whether provider `index` could take the request now (circuit not open, a key of its
    /// pool not tried yet that can admit it).
    fn can_take(ctx: &RequestCtx, state: &RuntimeState, index: usize) -> bool {
        let provider = &state.providers[index];
        if !provider
            .breaker
            .would_pass(&state.config.health, std::time::Instant::now())
        {
            return false;
        }
        match &provider.pool {
            Some(pool) => pool
                .check(&ctx.demand, &ctx.skipped_keys(index, provider))
                .is_ok(),
            None => true,
        }
    }

    /// Time to first byte, and the relay's own share of a request made in one attempt: from
    /// its body read to its upstream request sent, plus from the upstream's response header to
    /// the client's (the moment this runs).
    fn observe_response_header(ctx: &mut RequestCtx) {
        let now = std::time::Instant::now();
        ctx.first_byte = Some(now.duration_since(ctx.started));
        if ctx.attempts != 1 {
            return; // earlier attempts' upstream time would count as the relay's
        }
        if let (Some(intake), Some(sent), Some(header)) = (
            ctx.intake_done_at,
            ctx.upstream_sent_at,
            ctx.upstream_header_at,
        ) {
            let overhead = sent.saturating_duration_since(intake) + now.duration_since(header);
            METRICS.observe_overhead(overhead);
        }
    }

    /// One request's metrics, when it ends: how it was answered, its latency, its tokens.
    fn record_request(ctx: &RequestCtx) {
        let (status, outcome) = match (ctx.local_status, ctx.upstream_status) {
            (Some(status), _) => (status, local_outcome(status)),
            (None, 0) => return, // a local document (/health, /status) or nobody to answer
            (None, status) if ctx.attempts > 1 => (status, Outcome::FailedOver),
            (None, status) => (status, Outcome::Proxied),
        };
        let handles = ctx.metric_handles();
        handles.request(outcome, status);
        handles.latency(ctx.started.elapsed(), ctx.first_byte);
        if let Some(usage) = ctx.usage.usage() {
            handles.tokens(&usage);
        }
    }

    /// The status the client got (0: none was written), and the provider and key id that
    /// answered (`-` for none).
    fn answered<'a>(session: &Session, ctx: &'a RequestCtx) -> (u16, &'a str, &'a str) {
        let status = ctx
            .local_status
            .or_else(|| session.response_written().map(|r| r.status.as_u16()))
            .unwrap_or(0);
        let (provider, key) = match (ctx.provider(), &ctx.attempt) {
            (Some(p), Some(a)) => (
                p.name(),
                a.key_index()
                    .and_then(|k| p.pool.as_ref().map(|pool| pool.keys()[k].id()))
                    .unwrap_or("-"),
            ),
            _ => ("-", "-"),
        };
        (status, provider, key)
    }

    /// The request's access log line and its place in the status page's recent past (before
    /// the reservation is settled: they name the key).
    fn account(&self, session: &Session, ctx: &RequestCtx) {
        let (status, provider, key) = Self::answered(session, ctx);
        let req = session.req_header();
        // The admin documents (the status page polls /status) are not traffic.
        if ctx.endpoint.is_proxied() || ctx.local_status.is_some() {
            let now = activity::unix_now();
            let activity = &self.shared.activity;
            activity.record(now.as_secs(), status);
            if activity::is_error(status) {
                activity.record_error(activity::ErrorRecord {
                    at_ms: now.as_millis() as u64,
                    request_id: ctx.request_id.clone(),
                    status,
                    method: req.method.as_str().to_owned(),
                    path: req.uri.path().chars().take(200).collect(),
                    provider: provider.to_owned(),
                    key: key.to_owned(),
                    attempts: ctx.attempts,
                });
            }
        }
        if !access_log::enabled() {
            return;
        }
        access_log::record(&access_log::AccessEntry {
            request_id: &ctx.request_id,
            // The address a trusted proxy forwarded for, else the connection's peer (with its
            // port, which tells connections from one address apart).
            client: match ctx.client_addr {
                Some(a) if a.forwarded => Some(a.ip.to_string()),
                _ => session.client_addr().map(|a| a.to_string()),
            },
            client_name: ctx.client_name(),
            method: req.method.as_str(),
            path: req.uri.path(),
            status,
            provider,
            key,
            attempts: ctx.attempts,
            model: ctx.facts.model.as_deref(),
            usage: ctx.usage.usage().unwrap_or_default(),
            time_to_first_byte: ctx.first_byte,
            total: ctx.started.elapsed(),
            bytes_sent: session.body_bytes_sent(),
        });
    }

    /// `routing.debug`: how the response was routed, as the Go relay says it.
    fn debug_headers(ctx: &RequestCtx, response: &mut ResponseHeader) -> Result<()> {
        let (Some(state), Some(provider)) = (&ctx.state, ctx.provider()) else {
            return Ok(());
        };
        let strategy = state.config.routing.strategy.as_str();
        response.insert_header("x-cc-relay-strategy", strategy)?;
        response.insert_header("x-cc-relay-provider", provider.name())?;
        let health = provider.breaker.state(&state.config.health).as_str();
        response.insert_header("x-cc-relay-health", health)?;
        if ctx.facts.thinking_signed {
            response.insert_header("x-cc-relay-thinking-affinity", "true")?;
        }
        Ok(())
    }

    /// A session whose request succeeded sticks to the provider and key that served it.
    fn stick(&self, ctx: &RequestCtx) {
        let (Some(state), Some(session), Some(attempt)) = (&ctx.state, &ctx.session, &ctx.attempt)
        else {
            return;
        };
        if !state.config.routing.sticky_sessions {
            return;
        }
        if let Some(key) = attempt.key_index() {
            let stick = crate::routing::Stick {
                provider: attempt.provider,
                key,
            };
            if ctx.sticky != Some(stick) {
                self.shared
                    .sessions
                    .load()
                    .put(session, state.generation, stick);
            }
        }
    }

    /// Where the next attempt goes after the current one failed with `verdict` (a position in
    /// the plan), or `None` when none should be made: out of attempts or of
    /// `routing.failover_timeout`, a failure no other attempt can fix (the client's), or no
    /// candidate able to take it. A key's failure (429, 401, 403) moves to another key of the
    /// same provider first; a provider's failure (5xx, 529, a broken connection) to the next
    /// provider first.
    fn next_attempt(ctx: &RequestCtx, verdict: Verdict) -> Option<usize> {
        let state = ctx.state.as_ref()?;
        if ctx.attempts >= ctx.max_attempts()
            || ctx.started.elapsed() >= state.config.routing.failover_timeout
            || !verdict.is_retryable()
        {
            return None;
        }
        let provider = &state.providers[ctx.provider_index];
        let same = match &provider.pool {
            Some(_) => Self::can_take(ctx, state, ctx.provider_index),
            // Passthrough: the same credential again, only for failures not its fault.
            None => verdict.is_transient(),
        }
        .then_some(ctx.plan_pos);
        let next =
            (ctx.plan_pos + 1..ctx.plan.len()).find(|&i| Self::can_take(ctx, state, ctx.plan[i]));
        if verdict.is_transient() {
            next.or(same)
        } else {
            same.or(next)
        }
    }

    /// The upstream of an attempt on `provider`: its resolved address (never DNS here) and the
    /// connection's timeouts. `fresh`: a new connection, whatever the pool holds.
    fn peer(
        state: &RuntimeState,
        provider: &ProviderRuntime,
        fresh: bool,
    ) -> Result<Box<HttpPeer>> {
        let Some(addr) = provider.addrs.pick() else {
            return Err(errors::answer(ApiError::UpstreamUnreachable {
                provider: provider.name().to_owned(),
                reason: format!("host {} did not resolve", provider.addrs.host()),
            }));
        };
        let base = &provider.config.base_url;
        let server = &state.config.server;
        let mut peer = HttpPeer::new(addr, base.tls, base.host.clone());
        let options = &mut peer.options;
        options.connection_timeout = Some(server.upstream_connect_timeout);
        options.total_connection_timeout = Some(server.upstream_connect_timeout * 2);
        options.read_timeout = Some(server.upstream_read_timeout);
        options.write_timeout = Some(server.upstream_read_timeout);
        // A pooled connection is closed after this long unused, and probed while it waits: a
        // NAT or firewall that forgets idle connections silently would otherwise leave the next
        // request on it unanswered until `timeout_ms`.
        options.idle_timeout = Some(server.upstream_idle_timeout);
        options.tcp_keepalive = Some(UPSTREAM_KEEPALIVE);
        if fresh {
            // The pool is keyed by the peer's hash: a key of its own finds no pooled
            // connection. The request says `Connection: close`, so this one is not pooled
            // either (under a key nobody asks for again).
            peer.group_key = fastrand::u64(1..);
        }
        Ok(Box::new(peer))
    }

    /// Whether `e` broke the attempt's upstream connection before the provider's response
    /// header arrived — a reset, a close or an I/O error while writing the request or waiting
    /// for the answer — on an attempt that did not already get a fresh connection. A timeout is
    /// not one: the provider may be working on (and billing) the request.
    fn stale_connection(session: &Session, e: &Error, ctx: &RequestCtx) -> bool {
        let pooled = ctx
            .attempt
            .as_ref()
            .is_some_and(|a| !a.answered && a.connection == Connection::Pooled);
        pooled
            && session.response_written().is_none()
            && *e.esource() == ErrorSource::Upstream
            && matches!(
                e.etype(),
                ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
            )
            && errors::relay_answer(e).is_none()
    }

    /// Record an attempt's outcome in its provider's circuit breaker.
    fn record_outcome(ctx: &RequestCtx, failed: bool) {
        if let (Some(state), Some(attempt)) = (&ctx.state, &ctx.attempt) {
            let provider = &state.providers[attempt.provider];
            if failed {
                provider.breaker.record_failure(&state.config.health);
            } else {
                provider.breaker.record_success(&state.config.health);
            }
        }
    }
}

/// TCP keepalive on upstream sockets (Go's `net.Dialer` probes after 15 s too): the probes keep
/// a NAT's or firewall's entry of a pooled connection alive, and a connection whose peer is gone
/// fails them and leaves the pool. `user_timeout`: data the upstream has not acknowledged for
/// this long (a request written into a connection that leads nowhere) fails the connection
/// instead of waiting `timeout_ms` for an answer that cannot come.
const UPSTREAM_KEEPALIVE: pingora::protocols::TcpKeepalive = pingora::protocols::TcpKeepalive {
    idle: Duration::from_secs(15),
    interval: Duration::from_secs(5),
    count: 3,
    #[cfg(target_os = "linux")]
    user_timeout: Duration::from_secs(30),
};

/// Prometheus' text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The `reason` label of a retry after an upstream status.
fn status_reason(status: u16) -> &'static str {
    match status {
        401 => "401",
        403 => "403",
        429 => "429",
        529 => "529",
        _ => "5xx",
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
        ctx.unsettled = unsettled::Unsettled::begin();
        ctx.request_id = new_request_id();
        match self.intake(session, ctx).await? {
            Step::Continue => {
                BodyReplaySession::install(session, ctx.body.clone());
                ctx.replay_installed = true;
                if ctx.metrics_on() {
                    ctx.intake_done_at = Some(std::time::Instant::now());
                }
                Ok(false)
            }
            Step::Respond(Answer::Json(body)) => {
                local::respond_json(session, 200, body, &ctx.request_id).await?;
                Ok(true)
            }
            Step::Respond(Answer::Metrics(body)) => {
                local::respond(session, 200, PROMETHEUS_TEXT, body, &ctx.request_id).await?;
                Ok(true)
            }
            Step::Respond(Answer::Asset(asset)) => {
                local::respond_asset(session, asset, &ctx.request_id).await?;
                Ok(true)
            }
            Step::Respond(Answer::Error(err)) => {
                log::debug!(
                    "{} {} -> {} ({})",
                    ctx.request_id,
                    session.req_header().uri.path(),
                    err.status(),
                    err
                );
                ctx.local_status = Some(err.status());
                errors::write_error(session, &err, &ctx.request_id).await?;
                errors::linger(session, &err).await;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let state = ctx.state.clone().expect("set by request_filter");
        if let Some(attempt) = ctx.attempt.as_mut() {
            if attempt.connection == Connection::FreshPending {
                // The same attempt again (its provider, key and body) after a reused connection
                // broke: not a new attempt, and its circuit already let it through.
                attempt.connection = Connection::Fresh;
                return Self::peer(&state, &state.providers[attempt.provider], true);
            }
        }
        // The plan's provider for this attempt, or the next one that can take it now (and, when
        // its circuit is half-open, gets one of its probes).
        let health = &state.config.health;
        let now = std::time::Instant::now();
        let position = (ctx.plan_pos..ctx.plan.len()).find(|&i| {
            let index = ctx.plan[i];
            Self::can_take(ctx, &state, index)
                && state.providers[index].breaker.try_pass(health, now)
        });
        let Some(position) = position else {
            let names: Vec<&str> = ctx
                .plan
                .iter()
                .map(|&i| state.providers[i].name())
                .collect();
            let err = match intake::plan_refusal(ctx, &state) {
                Some(refusal) => intake::missing_credentials(ctx, &state)
                    .unwrap_or_else(|| ApiError::pool_refused(&names.join(", "), refusal)),
                None => ApiError::CircuitsOpen {
                    retry_after_secs: 1,
                },
            };
            return Err(errors::answer(err));
        };
        ctx.plan_pos = position;
        ctx.provider_index = ctx.plan[position];
        let provider = &state.providers[ctx.provider_index];
        ctx.attempts += 1;
        let body = intake::body_for(ctx, &state, provider);
        ctx.attempt = Some(Attempt::new(
            ctx.attempts,
            ctx.provider_index,
            provider,
            body,
        ));
        Self::peer(&state, provider, false)
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if let (true, Some(provider)) = (ctx.metrics_on(), ctx.provider()) {
            provider.connection_metrics.record(provider.name(), reused);
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Nothing was sent and no key was charged yet: the next provider (or this one again)
        // may take it.
        Self::record_outcome(ctx, true);
        let next = Self::next_attempt(ctx, Verdict::ServerError);
        if let Some(position) = next {
            if ctx.metrics_on() {
                METRICS.retry(ctx.provider_name(), "connect");
            }
            ctx.plan_pos = position;
        }
        e.set_retry(next.is_some());
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let state = ctx.state.clone().expect("set by request_filter");
        let provider = &state.providers[ctx.provider_index];
        let skipped = ctx.skipped_keys(ctx.provider_index, provider);
        let attempt = ctx.attempt.as_mut().expect("set by upstream_peer");
        let preferred = ctx
            .sticky
            .filter(|s| s.provider == attempt.provider)
            .map(|s| s.key);
        // Made again on a fresh connection, the attempt keeps the key it reserved.
        let reserved = attempt.reservation.is_some();
        if !reserved {
            attempt
                .reserve_key(provider, &ctx.demand, &skipped, preferred)
                .map_err(errors::answer)?;
            attempt
                .admit_shared(&state, provider, &ctx.demand, &skipped, preferred)
                .await
                .map_err(errors::answer)?;
        }
        if let (false, Some(key)) = (reserved, attempt.key_index()) {
            ctx.tried.push((attempt.provider, key));
            if log::log_enabled!(log::Level::Debug) {
                let pool = provider.pool.as_ref().expect("a reserved key has a pool");
                log::debug!(
                    "{} attempt {} -> provider {} key {} ({} of {} keys available)",
                    ctx.request_id,
                    attempt.number,
                    provider.name(),
                    pool.keys()[key].id(),
                    pool.available(),
                    pool.len()
                );
            }
        }
        let origin = session
            .req_header()
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str());
        attempt.prepare(provider, ctx.credential, origin, upstream)?;
        if attempt.connection == Connection::Fresh {
            // This connection was made for this request only (see `Relay::peer`).
            upstream.insert_header(http::header::CONNECTION, "close")?;
        }
        if ctx.metrics_on() {
            ctx.upstream_sent_at = Some(std::time::Instant::now());
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        // The replay session hands Pingora the client's body in one piece per attempt; what
        // goes upstream is this attempt's own (its provider's model, its kind's shape).
        if let (Some(chunk), Some(attempt)) = (body.as_mut(), &ctx.attempt) {
            if chunk.as_ptr() != attempt.body.as_ptr() || chunk.len() != attempt.body.len() {
                *chunk = attempt.body.clone();
            }
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
        if let Some(attempt) = ctx.attempt.as_mut() {
            attempt.answered = true;
        }
        if ctx.metrics_on() {
            ctx.upstream_header_at = Some(std::time::Instant::now());
        }
        let verdict = match ctx.provider() {
            Some(p) => p.config.kind.classify(status),
            None => Verdict::of(status),
        };
        // The provider answered: only its own failures (5xx, 529) count against its circuit.
        Self::record_outcome(ctx, verdict.is_transient());
        if let Some(position) = Self::next_attempt(ctx, verdict) {
            learn::apply(ctx, upstream_response, verdict);
            log::info!(
                "{} attempt {} on provider {} got {}; retrying{}",
                ctx.request_id,
                ctx.attempts,
                ctx.provider_name(),
                status,
                if position == ctx.plan_pos {
                    String::new()
                } else {
                    format!(
                        " on provider {}",
                        ctx.state
                            .as_ref()
                            .map_or("-", |s| s.providers[ctx.plan[position]].name())
                    )
                }
            );
            ctx.release_reservation();
            if ctx.metrics_on() {
                METRICS.retry(ctx.provider_name(), status_reason(status));
            }
            ctx.plan_pos = position;
            return Err(errors::retry(status, ctx.attempts));
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
        if let Some(provider) = ctx.provider() {
            learn::apply(
                ctx,
                upstream_response,
                provider.config.kind.classify(status),
            );
            let counting = ctx.endpoint == Endpoint::CountTokens;
            ctx.adapter = provider
                .config
                .kind
                .response_adapter(upstream_response, counting);
            if ctx.adapter.is_some() {
                // The body changes length: send it chunked.
                upstream_response.remove_header(&http::header::CONTENT_LENGTH);
                upstream_response.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
            }
        }

        if (200..300).contains(&status) {
            self.stick(ctx);
        }
        if (200..300).contains(&status) && ctx.endpoint == Endpoint::Messages {
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
        if ctx.state.as_ref().is_some_and(|s| s.config.routing.debug) {
            Self::debug_headers(ctx, upstream_response)?;
        }
        if let Some(provider) = ctx.provider() {
            if let Some(pool) = &provider.pool {
                let key = ctx.attempt.as_ref().and_then(Attempt::key_index);
                if let Some(id) = key.and_then(|i| provider.key_id_value(i)) {
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
        if ctx.metrics_on() {
            Self::observe_response_header(ctx);
        } else if access_log::enabled() {
            ctx.first_byte = Some(ctx.started.elapsed());
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<Duration>> {
        if let Some(adapter) = ctx.adapter.as_mut() {
            adapter.adapt(body, end_of_stream);
        }
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
        upstream_reused: bool,
    ) -> Box<Error> {
        // (Pingora's `client_reused` is its client side: the upstream connection.)
        let mut e = e.more_context(format!("peer {peer}"));
        if errors::is_relay_retry(&e) {
            // Our own status-driven retry: keep it (Pingora's default refuses POST retries).
            e.set_retry(true);
            return e;
        }
        if upstream_reused && Self::stale_connection(session, &e, ctx) {
            // A pooled connection broke before the provider answered (it had closed it, a
            // middlebox forgot it): the same attempt again on a fresh connection, as a browser
            // or Go's http.Transport does. No attempt used up, no failure for the circuit, the
            // key kept; the body is replayed whole.
            if let Some(attempt) = ctx.attempt.as_mut() {
                attempt.connection = Connection::FreshPending;
            }
            if let (true, Some(provider)) = (ctx.metrics_on(), ctx.provider()) {
                provider.connection_metrics.stale(provider.name());
            }
            log::debug!(
                "{} attempt {}: a reused connection to {} broke ({}); again on a fresh one",
                ctx.request_id,
                ctx.attempts,
                ctx.provider_name(),
                e.etype().as_str()
            );
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
            && errors::relay_answer(&e).is_none()
            && ctx.attempts < ctx.max_attempts();
        if *e.esource() == ErrorSource::Upstream && errors::relay_answer(&e).is_none() {
            // Broken connections and timeouts are the provider's failures.
            Self::record_outcome(ctx, true);
        }
        let mut retry = false;
        if connection_failure {
            // Not the key's fault: it may serve the next attempt too.
            if let Some(r) = ctx.attempt.as_mut().and_then(|a| a.reservation.take()) {
                let key = (ctx.provider_index, r.index());
                ctx.tried.retain(|&t| t != key);
                r.release();
            }
            if let Some(position) = Self::next_attempt(ctx, Verdict::ServerError) {
                if ctx.metrics_on() {
                    METRICS.retry(ctx.provider_name(), "connection");
                }
                ctx.plan_pos = position;
                retry = true;
            }
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
        let err = match errors::relay_answer(e) {
            Some(err) => err.clone(),
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
        ctx.local_status = Some(code);
        // Pingora closes the connection after this answer (can_reuse_downstream below): say so
        // in the answer, or a kept-alive client sends its next request into a closed socket.
        // No attempt follows, so the real session goes back now (the replay wrapper ignores
        // keep-alive settings).
        if ctx.replay_installed {
            BodyReplaySession::restore(session);
        }
        session.set_keepalive(None);
        if let Err(write_err) = errors::write_error(session, &err, &ctx.request_id).await {
            log::debug!("{}: could not send the error: {write_err}", ctx.request_id);
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &Self::CTX, error: &Error) -> bool {
        // What the relay answered itself (a 429 from an exhausted pool, a 502 for an upstream
        // that could not be reached, a 504) is an answer, recorded in the access log, the
        // metrics and /status's recent errors: not an ERROR line per request. Pingora still
        // logs what the relay could not make sense of (an internal error) and breaks after the
        // response started.
        matches!(ctx.local_status, Some(status) if status != 500)
            || matches!(
                errors::relay_answer(error),
                Some(ApiError::PoolExhausted { .. })
            )
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        _ctx: &Self::CTX,
        _error: &Error,
        _context: pingora::proxy::ProxyWarnLogContext,
    ) -> bool {
        // Every retry is the relay's own decision, counted in cc_relay_retries_total (a stale
        // pooled connection in cc_relay_upstream_reused_connection_retries_total): Pingora's
        // WARN line per retry would repeat the error with its context (for a malformed
        // upstream header, the header's bytes: a megabyte header wrote megabytes of log).
        true
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Self::CTX) {
        if ctx.replay_installed && BodyReplaySession::restore(session) && e.is_some() {
            session.set_keepalive(None);
        }
        if ctx.metrics_on() {
            Self::record_request(ctx);
        }
        self.account(session, ctx);
        ctx.settle_reservation();
        ctx.settle_client();
        // The usage is read again only for the debug line: not when it is filtered out.
        if ctx.endpoint.is_proxied() && log::log_enabled!(log::Level::Debug) {
            let usage = ctx.usage.usage().unwrap_or_default();
            log::debug!(
                "{} {} provider={} status={} attempts={} in={} out={} ms={}",
                ctx.request_id,
                session.req_header().uri.path(),
                ctx.provider_name(),
                ctx.upstream_status,
                ctx.attempts,
                usage.input_tokens,
                usage.output_tokens,
                ctx.started.elapsed().as_millis()
            );
        }
    }
}
