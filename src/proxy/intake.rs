//! `request_filter` as a sequence of intake steps. Each step either lets the request go on or
//! says how the relay answers it itself, so the phase reads top to bottom with one exit point:
//!
//! ```text
//! header size → endpoint → authenticate (server.auth or a client's key) → local endpoints
//!   → admission (the relay's and the client's concurrency) → read body → parse facts
//!   → the client's model allow-list → plan (providers, the client's allow-list)
//!   → the client's budgets and quotas → pool admission → replay installed
//! ```

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora::proxy::Session;

use super::auth;
use super::body_budget::{BodyBudget, Caps, Refused};
use super::body_rate::MinRate;
use super::ctx::{ConcurrencySlot, RequestCtx};
use super::errors::{whole_seconds, ApiError};
use super::local::Endpoint;
use super::request::RequestFacts;
use super::state::{ProviderRuntime, RuntimeState, Shared};
use crate::admin::metrics::METRICS;
use crate::clients::budget::{Calendar, Period};
use crate::clients::{quota, ClientRuntime};
use crate::pool::{Demand, Exhausted};
use crate::routing::Candidate;

/// Claude Code's session header: requests of one conversation carry the same value.
const SESSION_HEADER: &str = "x-claude-code-session-id";

/// What a step decided.
pub enum Step {
    /// Go on with the next step.
    Continue,
    /// The relay answers this request itself.
    Respond(Answer),
}

/// A request the relay answers without an upstream.
pub enum Answer {
    Error(ApiError),
    /// A local JSON document (`/`, `/health`, `/status`, `/v1/models`).
    Json(Bytes),
    /// Prometheus' text exposition.
    Metrics(Bytes),
    /// A file of the status page.
    Asset(&'static crate::admin::ui::Asset),
}

impl From<ApiError> for Step {
    fn from(err: ApiError) -> Step {
        Step::Respond(Answer::Error(err))
    }
}

/// Pingora's errors for a request body whose HTTP framing is broken (`v1/body.rs`).
const MALFORMED_BODY: &[&str] = &["InvalidChunk", "InvalidTrailerEnd"];

/// How long one wait for pool capacity sleeps at most, so a request held by
/// `pooling.max_wait_ms` notices capacity freed by settlements soon after it appears.
const CAPACITY_POLL: Duration = Duration::from_millis(50);

/// Which endpoint; unknown paths and wrong methods are answered here.
pub fn endpoint(session: &Session, ctx: &mut RequestCtx) -> Step {
    let req = session.req_header();
    ctx.endpoint = Endpoint::of(&req.method, req.uri.path());
    match ctx.endpoint {
        Endpoint::Unknown => ApiError::NotFound {
            method: req.method.to_string(),
            path: req.uri.path().to_owned(),
        }
        .into(),
        Endpoint::WrongMethod => ApiError::MethodNotAllowed {
            method: req.method.to_string(),
            path: req.uri.path().to_owned(),
        }
        .into(),
        _ => Step::Continue,
    }
}

/// The relay's own credential (`server.auth`) or a client's, where the endpoint needs it. A
/// valid one always passes; an address that keeps failing gets 429 for its failures.
pub fn authenticate(
    session: &Session,
    ctx: &mut RequestCtx,
    state: &RuntimeState,
    shared: &Shared,
) -> Step {
    if !ctx.endpoint.needs_auth() {
        return Step::Continue;
    }
    let ip = ctx.client_addr.map(|a| a.ip);
    match auth::authenticate_client(&shared.auth_throttle, state, session.req_header(), ip) {
        Ok(who) => {
            ctx.credential = who.credential;
            ctx.client = who.client;
            ctx.operator = who.operator;
            Step::Continue
        }
        Err(e) => e.into(),
    }
}

/// Endpoints the relay answers from its own state. The operator's (every client's name and
/// budget, upstream URLs, key ids) only to the operator's credential or an `admin` client.
/// They settle nothing: they leave the count of requests not settled yet before they read it
/// (`/status`).
pub fn local_endpoints(ctx: &mut RequestCtx, state: &RuntimeState, shared: &Shared) -> Step {
    if !ctx.endpoint.is_proxied() {
        ctx.unsettled.end();
    }
    if let Some(path) = ctx.endpoint.operator_only() {
        if !ctx.operator {
            return ApiError::OperatorOnly { path }.into();
        }
    }
    let body = match ctx.endpoint {
        Endpoint::Root => Bytes::from_static(b"{\"status\":\"ok\",\"service\":\"cc-relay\"}"),
        Endpoint::Health => crate::admin::health_body(state),
        Endpoint::Status => crate::admin::status_body(state, shared),
        Endpoint::Models => super::local::models_body(state),
        Endpoint::Providers => crate::admin::providers_body(state),
        Endpoint::Ui(asset) => return Step::Respond(Answer::Asset(asset)),
        Endpoint::Metrics if state.config.metrics.enabled => {
            return Step::Respond(Answer::Metrics(Bytes::from(
                crate::admin::metrics::METRICS.render(shared),
            )));
        }
        Endpoint::Metrics => {
            return ApiError::NotFound {
                method: "GET".into(),
                path: "/metrics (metrics.enabled is false)".into(),
            }
            .into()
        }
        _ => return Step::Continue,
    };
    Step::Respond(Answer::Json(body))
}

/// `server.max_concurrent`, then the client's own `max_concurrent`: slots held for the life of
/// the request (taken before its body is read, so a client at its cap holds no buffer).
pub fn admission(ctx: &mut RequestCtx, state: &RuntimeState, shared: &Shared) -> Step {
    let limit = state.config.server.max_concurrent;
    match ConcurrencySlot::acquire(&shared.in_flight, limit) {
        Some(slot) => ctx.slot = Some(slot),
        None => return ApiError::Overloaded { limit }.into(),
    }
    if let Some(client) = ctx.client.map(|i| state.clients.get(i)) {
        match client.quota.enter(client.config.max_concurrent) {
            Ok(slot) => ctx.client_slot = Some(slot),
            Err(refusal) => return client_refused(client, refusal).into(),
        }
    }
    Step::Continue
}

/// A client's own limit refused its request: the 429 names the limit, the client's metrics
/// count it.
fn client_refused(client: &ClientRuntime, refusal: quota::Refusal) -> ApiError {
    let limit = refusal.limit.field();
    METRICS.client_refusal(client.name(), limit);
    ApiError::ClientLimit {
        client: client.name().to_owned(),
        limit,
        value: refusal.value,
        unit: refusal.limit.unit(),
        retry_after_secs: whole_seconds(refusal.retry_after),
    }
}

/// The client's `models` allow-list, once the body says which model it asks for.
pub fn client_model(ctx: &RequestCtx) -> Step {
    let Some(client) = ctx.client() else {
        return Step::Continue;
    };
    let model = ctx.facts.model.as_deref();
    if client.config.allows_model(model) {
        return Step::Continue;
    }
    METRICS.client_refusal(client.name(), "models");
    ApiError::ClientForbidden(format!(
        "client '{}' may not use model '{}' (its models: {})",
        client.name(),
        model.unwrap_or("(none)"),
        client.config.models.join(", ")
    ))
    .into()
}

/// The client's budgets, then its limits per minute: a request over either is answered 429
/// with the client's own figures, before any pool is asked.
pub fn client_quota(ctx: &mut RequestCtx, state: &RuntimeState) -> Step {
    let Some(client) = ctx.client.map(|i| state.clients.get(i)) else {
        return Step::Continue;
    };
    if let Some(budget) = &client.budget {
        let calendar = Calendar::now();
        let limits = [
            (Period::Day, client.config.daily_token_budget),
            (Period::Month, client.config.monthly_token_budget),
        ];
        for (period, value) in limits {
            let used = budget.used(period, &calendar);
            if value == 0 || used < value {
                continue;
            }
            let (retry_after, resets_at) = calendar.reset(period);
            METRICS.client_refusal(client.name(), period.field());
            return ApiError::ClientBudget {
                client: client.name().to_owned(),
                budget: period.field(),
                value,
                used,
                resets_at,
                retry_after_secs: whole_seconds(retry_after),
            }
            .into();
        }
    }
    match client.quota.admit(
        &ctx.demand,
        crate::pool::clock_ns(std::time::Instant::now()),
    ) {
        Ok(charge) => {
            ctx.client_charge = Some(charge);
            Step::Continue
        }
        Err(refusal) => client_refused(client, refusal).into(),
    }
}

/// Read the whole request body (refused past `server.max_body_bytes`) and what it says.
pub async fn read_and_parse_body(
    session: &mut Session,
    ctx: &mut RequestCtx,
    state: &RuntimeState,
) -> pingora::Result<Step> {
    let server = &state.config.server;
    let limits = BodyLimits {
        size: server.max_body_bytes,
        pause: server.client_body_timeout,
        rate: MinRate {
            grace: server.client_body_timeout,
            bytes_per_s: server.min_body_rate_bytes_per_s,
        },
        caps: Caps {
            all: server.max_buffered_body_bytes,
            per_address: server.max_buffered_body_bytes_per_address,
        },
    };
    // Nothing is held yet: the share is made for the client's address.
    ctx.body_budget = BodyBudget::new(ctx.client_addr.map(|a| a.ip));
    let body = match read_body(session, &limits, &mut ctx.body_budget).await? {
        Ok(b) => b,
        Err(e) => return Ok(e.into()),
    };
    match RequestFacts::parse(&body) {
        Ok(facts) => {
            ctx.facts = facts;
            ctx.body = body;
            Ok(Step::Continue)
        }
        Err(e) => Ok(e.into()),
    }
}

/// What the request will cost a pool, its session, and the plan: the candidate providers in
/// the order its attempts will try them.
pub fn plan(
    session: &Session,
    ctx: &mut RequestCtx,
    state: &RuntimeState,
    shared: &Shared,
) -> Step {
    ctx.demand = match ctx.endpoint {
        Endpoint::Messages => Demand {
            input_tokens: RequestFacts::estimate_input_tokens(ctx.body.len()),
            max_tokens: ctx.facts.max_tokens,
        },
        // Token counting has its own limits upstream; it costs a request, no tokens.
        _ => Demand {
            input_tokens: 0,
            max_tokens: 1,
        },
    };
    let routing = &state.config.routing;
    ctx.session = session
        .req_header()
        .headers
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .or(ctx.facts.user_id.as_deref())
        .map(Into::into);
    if routing.sticky_sessions {
        if let Some(id) = &ctx.session {
            ctx.sticky = shared
                .sessions
                .load()
                .get(id, state.generation, routing.sticky_ttl);
        }
    }

    let (mut providers, default) = state.candidates(ctx.facts.model.as_deref());
    if providers.is_empty() {
        return ApiError::NoProvider.into();
    }
    if let Some(client) = ctx.client.map(|i| state.clients.get(i)) {
        providers.retain(|&p| client.may_use_provider(p));
        if providers.is_empty() {
            METRICS.client_refusal(client.name(), "providers");
            return ApiError::ClientForbidden(format!(
                "client '{}' may use providers {}; none of them serves model '{}'",
                client.name(),
                client.config.providers.join(", "),
                ctx.facts.model.as_deref().unwrap_or("(none)")
            ))
            .into();
        }
    }
    let health = &state.config.health;
    let now = std::time::Instant::now();
    let mut candidates: Vec<Candidate> = providers
        .iter()
        .map(|&i| {
            let p = &state.providers[i];
            let load = match &p.pool {
                Some(pool) => pool.best_load(&ctx.demand, &[]),
                None => Some(0),
            };
            Candidate {
                provider: i,
                priority: p.config.priority,
                weight: p.config.weight,
                admits: load.is_some(),
                load: load.unwrap_or(u64::MAX),
                in_flight: p.in_flight.load(std::sync::atomic::Ordering::Relaxed),
                open: !p.breaker.would_pass(health, now),
            }
        })
        .collect();
    let sticky_provider = ctx.sticky.map(|s| s.provider);
    if ctx.facts.thinking_signed && candidates.len() > 1 {
        // Signed thinking blocks are accepted only by the provider that produced them: the
        // session's provider when known, else (as the Go relay does) the first candidate in
        // config order whose circuit is closed. No failover to another provider.
        let keep = sticky_provider
            .filter(|p| candidates.iter().any(|c| c.provider == *p))
            .or_else(|| candidates.iter().find(|c| !c.open).map(|c| c.provider));
        if let Some(keep) = keep {
            candidates.retain(|c| c.provider == keep);
        }
    }
    state
        .router
        .order(&mut candidates, sticky_provider.or(default));
    if candidates.iter().all(|c| c.open) {
        let soonest = candidates
            .iter()
            .map(|c| state.providers[c.provider].breaker.reopens_in(now))
            .min()
            .unwrap_or_default();
        return ApiError::CircuitsOpen {
            retry_after_secs: soonest.as_secs().max(1),
        }
        .into();
    }
    ctx.plan = candidates
        .iter()
        .filter(|c| !c.open)
        .map(|c| c.provider)
        .collect();
    ctx.plan_pos = 0;
    Step::Continue
}

/// With `shared_state`, wait (bounded) for the store's first verdict after start. Then wait up
/// to the first candidate's `pooling.max_wait_ms` for some candidate's pool to be able to admit
/// the request; else answer 429 with the earliest true Retry-After across them (or
/// 503 when every key of every candidate is refused) without touching an upstream.
pub async fn plan_admission(ctx: &RequestCtx, state: &RuntimeState) -> Step {
    if let Some(store) = crate::shared::installed() {
        // A relay just started asks the store before its pools answer for every relay's use.
        store.joined().await;
    }
    let first = &state.providers[ctx.plan[0]];
    let deadline = tokio::time::Instant::now() + first.config.pooling.max_wait;
    loop {
        let refusal = match plan_refusal(ctx, state) {
            None => return Step::Continue,
            Some(r) => r,
        };
        if let Some(missing) = missing_credentials(ctx, state) {
            return missing.into();
        }
        let now = tokio::time::Instant::now();
        if now >= deadline || refusal.all_disabled {
            let names: Vec<&str> = ctx
                .plan
                .iter()
                .map(|&i| state.providers[i].name())
                .collect();
            return ApiError::pool_refused(&names.join(", "), refusal).into();
        }
        let nap = refusal.retry_after.min(CAPACITY_POLL).min(deadline - now);
        tokio::time::sleep(nap).await;
    }
}

/// `None` when some provider of the plan can take the request now; otherwise the earliest
/// time one could (every key of every candidate refused: `all_disabled`).
pub fn plan_refusal(ctx: &RequestCtx, state: &RuntimeState) -> Option<Exhausted> {
    let mut earliest: Option<Exhausted> = None;
    for &i in &ctx.plan {
        let Some(pool) = &state.providers[i].pool else {
            return None;
        };
        let skipped = ctx.skipped_keys(i, &state.providers[i]);
        match pool.check(&ctx.demand, &skipped) {
            Ok(()) => return None,
            Err(e) => {
                earliest = Some(match earliest {
                    None => e,
                    Some(prev) => Exhausted {
                        retry_after: if e.all_disabled {
                            prev.retry_after
                        } else if prev.all_disabled {
                            e.retry_after
                        } else {
                            prev.retry_after.min(e.retry_after)
                        },
                        all_disabled: prev.all_disabled && e.all_disabled,
                    },
                });
            }
        }
    }
    earliest
}

/// When no provider of the plan can take the request because keys that could have taken it
/// have no credential right now (token exchange or AWS chain failing): the error saying so,
/// rather than a rate-limit answer for limits that are not what stops it.
pub fn missing_credentials(ctx: &RequestCtx, state: &RuntimeState) -> Option<ApiError> {
    ctx.plan.iter().find_map(|&i| {
        let provider = &state.providers[i];
        let pool = provider.pool.as_ref()?;
        let key = provider.uncredentialed().next()?;
        let tried: Vec<usize> = ctx.tried_keys(i).collect();
        pool.check(&ctx.demand, &tried).ok()?;
        Some(ApiError::UpstreamUnreachable {
            provider: provider.name().to_owned(),
            reason: format!(
                "key {} has no credentials: {} (see the relay's log)",
                pool.keys()[key].id(),
                if provider.config.kind.uses_tokens() {
                    "its token exchange is failing"
                } else {
                    "the AWS credential chain has none"
                }
            ),
        })
    })
}

/// The body this request sends to `provider`: the client's, with the global and the
/// provider's model mapping applied (spliced in place; the rest stays byte for byte).
pub fn body_for(ctx: &RequestCtx, state: &RuntimeState, provider: &ProviderRuntime) -> Bytes {
    let routed = state.mapped_model(ctx.facts.model.as_deref());
    let Some(model) = routed else {
        return ctx.body.clone();
    };
    let config = &provider.config;
    let model = config
        .model_mapping
        .get(model)
        .or(config.default_model.as_ref())
        .map(String::as_str)
        .unwrap_or(model);
    if Some(model) == ctx.facts.model.as_deref() {
        ctx.body.clone()
    } else {
        ctx.facts.rewrite_model(&ctx.body, model)
    }
}

/// A request header larger than `server.max_header_bytes`: 431 before anything else looks at
/// it (Pingora itself stops reading one at 1 MiB).
pub fn header_size(session: &Session, state: &RuntimeState) -> Step {
    let header = session.req_header();
    let limit = state.config.server.max_header_bytes;
    // The request line (method, target, version and separators) and each `name: value\r\n`.
    let mut size = header.method.as_str().len() + header.raw_path().len() + 12;
    for (name, value) in &header.headers {
        size += name.as_str().len() + value.len() + 4;
        if size > limit {
            return ApiError::HeaderTooLarge { limit }.into();
        }
    }
    Step::Continue
}

/// What bounds one request body: its size, the pause between two reads, the rate it must
/// arrive at, and what all bodies (and those of one address) buffered together may hold.
struct BodyLimits {
    size: usize,
    pause: Duration,
    rate: MinRate,
    caps: Caps,
}

/// Read the whole request body, refusing it past `limits.size` bytes. A body that arrives in one read
/// is kept as it is, without a copy. Client-side framing errors are the client's 400.
async fn read_body(
    session: &mut Session,
    limits: &BodyLimits,
    budget: &mut BodyBudget,
) -> pingora::Result<Result<Bytes, ApiError>> {
    let (limit, pause) = (limits.size, limits.pause);
    let full = |refused| match refused {
        Refused::All => ApiError::BodiesFull {
            limit: limits.caps.all,
        },
        Refused::Address => ApiError::AddressBodiesFull {
            limit: limits.caps.per_address,
        },
    };
    let declared = session
        .req_header()
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Ok(Err(ApiError::BodyTooLarge { limit }));
    }
    // A declared length is taken from the budget before a byte is read (refused at once);
    // without one, each chunk as it arrives.
    if let Some(n) = declared {
        if let Err(refused) = budget.take(n, limits.caps) {
            return Ok(Err(full(refused)));
        }
    }
    // The relay reads the body before anything goes upstream, so it answers the client's
    // `Expect: 100-continue` itself (curl otherwise waits a second before sending), once the
    // declared size is known to be acceptable.
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
    let started = tokio::time::Instant::now();
    loop {
        let (wait, by_rate) = limits.rate.next_wait(pause, started.elapsed(), total);
        let read = tokio::time::timeout(wait, session.read_request_body()).await;
        let Ok(read) = read else {
            // A client that stops sending its body, or sends it too slowly, holds a connection
            // and a buffer: 408, and the connection closes (the body is unfinished).
            return Ok(Err(if by_rate {
                ApiError::BodyTooSlow {
                    received: total,
                    elapsed_ms: started.elapsed().as_millis(),
                    rate: limits.rate.bytes_per_s,
                    grace_ms: limits.rate.grace.as_millis(),
                }
            } else {
                ApiError::ClientTimeout {
                    waited_ms: pause.as_millis(),
                }
            }));
        };
        let chunk = match read {
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
        if declared.is_none() {
            if let Err(refused) = budget.take(chunk.len(), limits.caps) {
                return Ok(Err(full(refused)));
            }
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
