//! Endpoints the relay answers itself, and the request routing table.

use bytes::Bytes;
use pingora::http::{Method, ResponseHeader};
use pingora::proxy::Session;

use std::sync::atomic::Ordering;

use super::state::{RuntimeState, Shared};

/// What a request is, by method and path (the query string never matters here: Claude Code
/// posts to `/v1/messages?beta=true`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `HEAD /` or `GET /`: Claude Code's connectivity preflight.
    Root,
    Health,
    Status,
    Models,
    Messages,
    CountTokens,
    WrongMethod,
    Unknown,
}

impl Route {
    pub fn of(method: &Method, path: &str) -> Route {
        let path = path
            .strip_suffix('/')
            .filter(|p| !p.is_empty())
            .unwrap_or(path);
        let (route, allowed) = match path {
            "/" => (
                Route::Root,
                *method == Method::GET || *method == Method::HEAD,
            ),
            "/health" => (
                Route::Health,
                *method == Method::GET || *method == Method::HEAD,
            ),
            "/status" => (Route::Status, *method == Method::GET),
            "/v1/models" => (Route::Models, *method == Method::GET),
            "/v1/messages" => (Route::Messages, *method == Method::POST),
            "/v1/messages/count_tokens" => (Route::CountTokens, *method == Method::POST),
            _ => return Route::Unknown,
        };
        if allowed {
            route
        } else {
            Route::WrongMethod
        }
    }

    /// Whether the route goes to an upstream.
    pub fn is_proxied(self) -> bool {
        matches!(self, Route::Messages | Route::CountTokens)
    }

    /// Whether the route needs the relay's credential (health checks and the preflight don't).
    pub fn needs_auth(self) -> bool {
        !matches!(self, Route::Root | Route::Health)
    }
}

/// Write a small local JSON answer.
pub async fn respond_json(
    session: &mut Session,
    status: u16,
    body: Bytes,
    request_id: &str,
) -> pingora::Result<()> {
    let head_only = session.req_header().method == Method::HEAD;
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header("x-request-id", request_id)?;
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// `GET /v1/models`: the configured models, in Anthropic's list shape.
pub fn models_body(state: &RuntimeState) -> Bytes {
    let mut seen = std::collections::HashSet::new();
    let mut data = Vec::new();
    let providers = state.providers.iter().filter(|p| p.config.enabled);
    for p in providers {
        let names = p
            .config
            .models
            .iter()
            .chain(p.config.model_mapping.keys())
            .chain(state.config.routing.model_mapping.keys());
        for m in names {
            if seen.insert(m.clone()) {
                data.push(serde_json::json!({
                    "type": "model",
                    "id": m,
                    "display_name": m,
                    "created_at": "1970-01-01T00:00:00Z",
                    "provider": p.config.name,
                }));
            }
        }
    }
    let first = data.first().map(|d| d["id"].clone());
    let last = data.last().map(|d| d["id"].clone());
    Bytes::from(
        serde_json::json!({
            "data": data,
            "has_more": false,
            "first_id": first,
            "last_id": last,
        })
        .to_string(),
    )
}

/// `GET /health` (no auth): liveness and the config generation, nothing else. Why a reload
/// failed (which may quote the file) is in `/status`, behind the relay's credential.
pub fn health_body(state: &RuntimeState) -> Bytes {
    Bytes::from(format!(
        "{{\"status\":\"ok\",\"config_generation\":{}}}",
        state.generation
    ))
}

/// `GET /status`: every provider's keys by id with their live budgets, and how the last
/// reload went. Never a secret.
pub fn status_body(state: &RuntimeState, shared: &Shared) -> Bytes {
    let providers: Vec<_> = state
        .providers
        .iter()
        .map(|p| {
            let keys: Vec<_> = p
                .pool
                .iter()
                .flat_map(|pool| pool.keys())
                .map(|k| {
                    let s = k.snapshot();
                    serde_json::json!({
                        "id": s.id,
                        "priority": s.priority,
                        "weight": s.weight,
                        "disabled": s.disabled,
                        "forbidden_strikes": s.forbidden_strikes,
                        "cooling_down_ms": s.cooling_for.map(|d| d.as_millis() as u64),
                        "in_flight": s.in_flight,
                        "requests": {"limit": s.requests.limit, "remaining": s.requests.remaining},
                        "input_tokens": {"limit": s.input_tokens.limit, "remaining": s.input_tokens.remaining},
                        "output_tokens": {"limit": s.output_tokens.limit, "remaining": s.output_tokens.remaining},
                    })
                })
                .collect();
            serde_json::json!({
                "name": p.config.name,
                "type": p.config.kind.as_str(),
                "enabled": p.config.enabled,
                "base_url": p.config.base_url.to_string(),
                "passthrough": p.pool.is_none(),
                "strategy": p.pool.as_ref().map(|pool| pool.strategy().as_str()),
                "keys_available": p.pool.as_ref().map(|pool| pool.available()),
                "keys": keys,
            })
        })
        .collect();
    Bytes::from(
        serde_json::json!({
            "config_generation": state.generation,
            "reload": {
                "attempts": shared.reload_attempts.load(Ordering::Relaxed),
                "last_error": shared.last_reload_error.load().as_deref(),
            },
            "providers": providers,
        })
        .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_ignore_trailing_slash_and_check_methods() {
        assert_eq!(Route::of(&Method::POST, "/v1/messages"), Route::Messages);
        assert_eq!(Route::of(&Method::POST, "/v1/messages/"), Route::Messages);
        assert_eq!(
            Route::of(&Method::POST, "/v1/messages/count_tokens"),
            Route::CountTokens
        );
        assert_eq!(Route::of(&Method::GET, "/v1/messages"), Route::WrongMethod);
        assert_eq!(Route::of(&Method::HEAD, "/"), Route::Root);
        assert_eq!(Route::of(&Method::GET, "/v1/complete"), Route::Unknown);
    }
}
