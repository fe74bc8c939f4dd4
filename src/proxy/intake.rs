//! `request_filter` as a sequence of intake steps. Each step either lets the request go on or
//! says how the relay answers it itself, so the phase reads top to bottom with one exit point:
//!
//! ```text
//! endpoint → authenticate → local endpoints → admission (concurrency) → read body
//!          → parse facts → choose the provider → pool admission → replay installed
//! ```

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora::proxy::Session;

use super::auth;
use super::ctx::{ConcurrencySlot, RequestCtx};
use super::errors::ApiError;
use super::local::Endpoint;
use super::request::RequestFacts;
use super::state::{ProviderRuntime, RuntimeState, Shared};
use crate::pool::Demand;

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

/// The relay's own credential (`server.auth`), where the endpoint needs it. An address that
/// keeps failing is refused for a while before its credential is even looked at.
pub fn authenticate(
    session: &Session,
    ctx: &mut RequestCtx,
    state: &RuntimeState,
    shared: &Shared,
) -> Step {
    if !ctx.endpoint.needs_auth() {
        return Step::Continue;
    }
    let ip = auth::client_ip(session.client_addr());
    let auth = &state.config.server.auth;
    match auth::authenticate_client(&shared.auth_throttle, auth, session.req_header(), ip) {
        Ok(credential) => {
            ctx.credential = credential;
            Step::Continue
        }
        Err(e) => e.into(),
    }
}

/// Endpoints the relay answers from its own state.
pub fn local_endpoints(ctx: &RequestCtx, state: &RuntimeState, shared: &Shared) -> Step {
    let body = match ctx.endpoint {
        Endpoint::Root => Bytes::from_static(b"{\"status\":\"ok\",\"service\":\"cc-relay\"}"),
        Endpoint::Health => crate::admin::health_body(state),
        Endpoint::Status => crate::admin::status_body(state, shared),
        Endpoint::Models => super::local::models_body(state),
        _ => return Step::Continue,
    };
    Step::Respond(Answer::Json(body))
}

/// `server.max_concurrent`: a slot held for the life of the request.
pub fn admission(ctx: &mut RequestCtx, state: &RuntimeState, shared: &Shared) -> Step {
    let limit = state.config.server.max_concurrent;
    match ConcurrencySlot::acquire(&shared.in_flight, limit) {
        Some(slot) => {
            ctx.slot = Some(slot);
            Step::Continue
        }
        None => ApiError::Overloaded { limit }.into(),
    }
}

/// Read the whole request body (refused past `server.max_body_bytes`) and what it says.
pub async fn read_and_parse_body(
    session: &mut Session,
    ctx: &mut RequestCtx,
    state: &RuntimeState,
) -> pingora::Result<Step> {
    let body = match read_body(session, state.config.server.max_body_bytes).await? {
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

/// The provider for the request's model, and what the request will cost its pool.
pub fn choose_provider(ctx: &mut RequestCtx, state: &RuntimeState) -> Step {
    let Some(index) = state.provider_for_model(ctx.facts.model.as_deref()) else {
        return ApiError::Internal("no enabled provider is configured".into()).into();
    };
    ctx.provider_index = index;
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
    Step::Continue
}

/// Wait up to the provider's `pooling.max_wait_ms` for its pool to be able to admit the
/// request; answer 429 (or 503 for a pool of refused keys) without touching the upstream.
pub async fn pool_admission(ctx: &RequestCtx, provider: &ProviderRuntime) -> Step {
    let Some(pool) = &provider.pool else {
        return Step::Continue;
    };
    let deadline = tokio::time::Instant::now() + provider.config.pooling.max_wait;
    loop {
        let exhausted = match pool.check(&ctx.demand, &[]) {
            Ok(()) => return Step::Continue,
            Err(e) => e,
        };
        let now = tokio::time::Instant::now();
        if now >= deadline || exhausted.all_disabled {
            return ApiError::pool_refused(provider.name(), exhausted).into();
        }
        let nap = exhausted.retry_after.min(CAPACITY_POLL).min(deadline - now);
        tokio::time::sleep(nap).await;
    }
}

/// The body this request sends to `provider`: the client's, with the global and the
/// provider's model mapping applied (spliced in place; the rest stays byte for byte).
pub fn body_for(ctx: &RequestCtx, state: &RuntimeState, provider: &ProviderRuntime) -> Bytes {
    let routed = state.mapped_model(ctx.facts.model.as_deref());
    let Some(model) = routed else {
        return ctx.body.clone();
    };
    let model = provider
        .config
        .model_mapping
        .get(model)
        .map(String::as_str)
        .unwrap_or(model);
    if Some(model) == ctx.facts.model.as_deref() {
        ctx.body.clone()
    } else {
        ctx.facts.rewrite_model(&ctx.body, model)
    }
}

/// Read the whole request body, refusing it past `limit` bytes. A body that arrives in one read
/// is kept as it is, without a copy. Client-side framing errors are the client's 400.
async fn read_body(
    session: &mut Session,
    limit: usize,
) -> pingora::Result<Result<Bytes, ApiError>> {
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
