//! The admin endpoints as a Pingora `ServeHttp` app, for `server.admin_listen`.

use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::proxy::{authenticate_client, client_addr, ApiError, SharedState};

/// Serves `/health` (open), `/status` (to the operator's credential, as on the client listener:
/// `server.auth`'s key or an `admin` client's) and the status page's files (open: the page
/// asks for the key before it reads `/status`).
pub struct AdminApp {
    shared: SharedState,
}

impl AdminApp {
    pub fn new(shared: SharedState) -> AdminApp {
        AdminApp { shared }
    }

    fn answer(&self, session: &ServerSession) -> Result<Bytes, ApiError> {
        let req = session.req_header();
        let path = route_path(req.uri.path());
        let state = self.shared.current.load();
        let readable = req.method == Method::GET || req.method == Method::HEAD;
        match path {
            _ if !readable
                && (matches!(path, "/health" | "/status") || super::ui::asset(path).is_some()) =>
            {
                Err(ApiError::MethodNotAllowed {
                    method: req.method.to_string(),
                    path: path.to_owned(),
                })
            }
            "/health" => Ok(super::health_body(&state)),
            "/status" => {
                let trusted = &state.config.server.trusted_proxies;
                let ip = client_addr(session.client_addr(), &req.headers, trusted).map(|a| a.ip);
                let who = authenticate_client(&self.shared.auth_throttle, &state, req, ip)?;
                if !who.operator {
                    return Err(ApiError::OperatorOnly { path: "/status" });
                }
                Ok(super::status_body(&state, &self.shared))
            }
            _ => Err(ApiError::NotFound {
                method: req.method.to_string(),
                path: path.to_owned(),
            }),
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let path = route_path(req.uri.path());
        if let (Some(asset), &Method::GET | &Method::HEAD) = (super::ui::asset(path), &req.method) {
            let body = if req.method == Method::HEAD {
                Vec::new()
            } else {
                asset.body.to_vec()
            };
            let mut response = respond(200, asset.content_type, body);
            if req.method == Method::HEAD {
                let length = http::HeaderValue::from(asset.body.len());
                response
                    .headers_mut()
                    .insert(http::header::CONTENT_LENGTH, length);
            }
            for (name, value) in super::ui::HEADERS {
                let value = http::HeaderValue::from_static(value);
                response.headers_mut().insert(name, value);
            }
            return response;
        }
        let (status, body) = match self.answer(session) {
            Ok(body) => (200, body),
            Err(err) => (err.status(), err.body()),
        };
        let head_only = session.req_header().method == Method::HEAD;
        let mut response = respond(status, "application/json", body.to_vec());
        if status == 405 {
            let allow = http::HeaderValue::from_static("GET, HEAD");
            response.headers_mut().insert(http::header::ALLOW, allow);
        }
        if head_only {
            response.body_mut().clear();
        }
        response
    }
}

/// A path as routes are matched: without a trailing slash (`/` stays `/`).
pub fn route_path(path: &str) -> &str {
    path.strip_suffix('/')
        .filter(|p| !p.is_empty())
        .unwrap_or(path)
}

/// A whole response: status, content type and length, body.
fn respond(status: u16, content_type: &'static str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body)
        .expect("a valid response")
}

/// Prometheus metrics on `metrics.prometheus_listen`, at `metrics.prometheus_endpoint` (no
/// auth, as Prometheus scrapes: keep the listener on a private interface).
pub struct MetricsApp {
    shared: SharedState,
    endpoint: String,
}

impl MetricsApp {
    pub fn new(shared: SharedState, endpoint: String) -> MetricsApp {
        MetricsApp { shared, endpoint }
    }
}

#[async_trait]
impl ServeHttp for MetricsApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        if req.uri.path() == self.endpoint && req.method == Method::GET {
            let body = super::metrics::METRICS.render(&self.shared);
            return respond(200, "text/plain; version=0.0.4; charset=utf-8", body);
        }
        let err = ApiError::NotFound {
            method: req.method.to_string(),
            path: req.uri.path().to_owned(),
        };
        respond(404, "application/json", err.body().to_vec())
    }
}
