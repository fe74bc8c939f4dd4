//! The endpoint table, and the client-facing answers the relay gives itself (`/`,
//! `/v1/models`); the operational ones (`/health`, `/status`) are the admin side's.

use bytes::Bytes;
use pingora::http::{Method, ResponseHeader};
use pingora::proxy::Session;

use super::state::RuntimeState;

/// Which endpoint a request is for, by method and path (the query string never matters here:
/// Claude Code posts to `/v1/messages?beta=true`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `HEAD /` or `GET /`: Claude Code's connectivity preflight.
    Root,
    Health,
    Status,
    Models,
    /// `GET /v1/providers`: the Go relay's provider list, with circuits and key availability.
    Providers,
    /// `GET /metrics` (when `metrics.enabled`): Prometheus' text format, behind `server.auth`.
    Metrics,
    /// `GET /ui` and its script and style sheet: the status page (it asks for `/status`).
    Ui(&'static crate::admin::ui::Asset),
    Messages,
    CountTokens,
    WrongMethod,
    Unknown,
}

impl Endpoint {
    pub fn of(method: &Method, path: &str) -> Endpoint {
        let path = crate::admin::route_path(path);
        let (route, allowed) = match path {
            "/" => (
                Endpoint::Root,
                *method == Method::GET || *method == Method::HEAD,
            ),
            "/health" => (
                Endpoint::Health,
                *method == Method::GET || *method == Method::HEAD,
            ),
            "/status" => (Endpoint::Status, *method == Method::GET),
            "/v1/models" => (Endpoint::Models, *method == Method::GET),
            "/v1/providers" => (Endpoint::Providers, *method == Method::GET),
            "/metrics" => (Endpoint::Metrics, *method == Method::GET),
            "/v1/messages" => (Endpoint::Messages, *method == Method::POST),
            "/v1/messages/count_tokens" => (Endpoint::CountTokens, *method == Method::POST),
            _ => match crate::admin::ui::asset(path) {
                Some(asset) => (
                    Endpoint::Ui(asset),
                    *method == Method::GET || *method == Method::HEAD,
                ),
                None => return Endpoint::Unknown,
            },
        };
        if allowed {
            route
        } else {
            Endpoint::WrongMethod
        }
    }

    /// Whether the route goes to an upstream.
    pub fn is_proxied(self) -> bool {
        matches!(self, Endpoint::Messages | Endpoint::CountTokens)
    }

    /// The path of an operator's endpoint (what every client's name and budget, the upstreams'
    /// URLs or the key ids are shown by), which a client key reads only with `admin: true`.
    pub fn operator_only(self) -> Option<&'static str> {
        match self {
            Endpoint::Status => Some("/status"),
            Endpoint::Metrics => Some("/metrics"),
            Endpoint::Providers => Some("/v1/providers"),
            _ => None,
        }
    }

    /// Whether the route needs the relay's credential (health checks, the preflight and the
    /// status page's files don't: the page asks for the key before it reads `/status`).
    pub fn needs_auth(self) -> bool {
        !matches!(self, Endpoint::Root | Endpoint::Health | Endpoint::Ui(_))
    }
}

/// Write a small local JSON answer.
pub async fn respond_json(
    session: &mut Session,
    status: u16,
    body: Bytes,
    request_id: &str,
) -> pingora::Result<()> {
    respond(session, status, "application/json", body, request_id).await
}

/// Write a small local answer of `content_type`.
pub async fn respond(
    session: &mut Session,
    status: u16,
    content_type: &'static str,
    body: Bytes,
    request_id: &str,
) -> pingora::Result<()> {
    respond_with(session, status, content_type, &[], body, request_id).await
}

/// A file of the status page, with its security headers.
pub async fn respond_asset(
    session: &mut Session,
    asset: &'static crate::admin::ui::Asset,
    request_id: &str,
) -> pingora::Result<()> {
    let body = Bytes::from_static(asset.body);
    let headers = &crate::admin::ui::HEADERS;
    respond_with(session, 200, asset.content_type, headers, body, request_id).await
}

async fn respond_with(
    session: &mut Session,
    status: u16,
    content_type: &'static str,
    headers: &[(&'static str, &'static str)],
    body: Bytes,
    request_id: &str,
) -> pingora::Result<()> {
    let head_only = session.req_header().method == Method::HEAD;
    let mut resp = ResponseHeader::build(status, Some(4 + headers.len()))?;
    resp.insert_header("content-type", content_type)?;
    for &(name, value) in headers {
        resp.insert_header(name, value)?;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_ignore_trailing_slash_and_check_methods() {
        assert_eq!(
            Endpoint::of(&Method::POST, "/v1/messages"),
            Endpoint::Messages
        );
        assert_eq!(
            Endpoint::of(&Method::POST, "/v1/messages/"),
            Endpoint::Messages
        );
        assert_eq!(
            Endpoint::of(&Method::POST, "/v1/messages/count_tokens"),
            Endpoint::CountTokens
        );
        assert_eq!(
            Endpoint::of(&Method::GET, "/v1/messages"),
            Endpoint::WrongMethod
        );
        assert_eq!(Endpoint::of(&Method::HEAD, "/"), Endpoint::Root);
        assert_eq!(
            Endpoint::of(&Method::GET, "/v1/complete"),
            Endpoint::Unknown
        );
    }
}
