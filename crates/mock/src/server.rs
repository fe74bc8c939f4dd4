//! Accept loop, connections and request handling (routing, faults, limits, responses).

use std::borrow::Cow;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpListener;

use super::body::MockBody;
use super::faults::{azure_error_body, error_body};
use super::limits::{Admission, RateHeaders};
use super::sse::{self, BodyFault, Reply};
use super::{lock, Fault, RecordedRequest, Shared};

const JSON: &str = "application/json";
const SSE: &str = "text/event-stream; charset=utf-8";
const EVENT_STREAM: &str = "application/vnd.amazon.eventstream";

pub(super) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, _)) => {
                // SSE events and small responses must not wait for Nagle.
                let _ = stream.set_nodelay(true);
                tokio::spawn(connection(stream, shared.clone()));
            }
            Err(e) => {
                // Typically EMFILE under load: back off instead of spinning.
                log::warn!("mock upstream: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn connection(stream: tokio::net::TcpStream, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    if *shutdown.borrow() {
        return;
    }
    if shared.cfg.reset_connection_on_request.is_some() {
        // Closing the socket then sends RST instead of FIN (the fault's point; without the
        // fault every close stays graceful).
        let _ = stream.set_zero_linger();
    }
    let conn_state = Arc::new(ConnState::default());
    let svc_shared = shared.clone();
    let svc_conn = conn_state.clone();
    let svc = service_fn(move |req| {
        let (shared, conn) = (svc_shared.clone(), svc_conn.clone());
        async move {
            conn_fault(&shared, &conn).await;
            let resp = handle(shared, req).await;
            *lock(&conn.idle_since) = Instant::now();
            resp
        }
    });
    let conn = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), svc);
    tokio::select! {
        r = conn => {
            // Errors here are mostly our own injected cuts or clients going away.
            if let Err(e) = r {
                log::debug!("mock upstream: connection ended: {e}");
            }
        }
        // Dropped with a zero linger: the socket is reset.
        _ = conn_state.reset.notified() => {}
        // Dropping the connection closes the socket, cutting any in-flight response.
        _ = shutdown.changed() => {}
    }
}

/// What the requests of one connection share, for the connection faults.
struct ConnState {
    /// Requests that arrived on it.
    requests: AtomicUsize,
    /// When its last response was handed over (or it was accepted).
    idle_since: Mutex<Instant>,
    /// Reset it now.
    reset: tokio::sync::Notify,
}

impl Default for ConnState {
    fn default() -> Self {
        ConnState {
            requests: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            reset: tokio::sync::Notify::new(),
        }
    }
}

/// `reset_connection_on_request` and `black_hole_after_idle`: a request they catch never
/// returns (the connection is reset under it, or it waits for the mock's shutdown).
async fn conn_fault(shared: &Shared, conn: &ConnState) {
    let n = conn.requests.fetch_add(1, Ordering::Relaxed) + 1;
    if shared.cfg.reset_connection_on_request == Some(n) {
        shared.connection_resets.fetch_add(1, Ordering::Relaxed);
        conn.reset.notify_one();
        std::future::pending::<()>().await;
    }
    let idle = lock(&conn.idle_since).elapsed();
    if n > 1
        && shared
            .cfg
            .black_hole_after_idle
            .is_some_and(|limit| idle > limit)
    {
        shared.black_holed.fetch_add(1, Ordering::Relaxed);
        std::future::pending::<()>().await;
    }
}

/// Per-request knobs: config defaults, overridden by `x-mock-*` headers.
struct Knobs {
    output_tokens: u64,
    /// Input tokens reported instead of the body's estimate (`x-mock-input-tokens`): an
    /// upstream whose figure is wrong. Its rate limits still charge the estimate.
    input_tokens: Option<u64>,
    events: usize,
    interval: Duration,
    latency: Duration,
}

fn header_u64(h: &HeaderMap, name: &str) -> Option<u64> {
    h.get(name)?.to_str().ok()?.trim().parse().ok()
}

impl Knobs {
    fn new(shared: &Shared, h: &HeaderMap) -> Self {
        let cfg = &shared.cfg;
        let ms = |name| header_u64(h, name).map(Duration::from_millis);
        Knobs {
            output_tokens: header_u64(h, "x-mock-output-tokens").unwrap_or(cfg.output_tokens),
            input_tokens: header_u64(h, "x-mock-input-tokens"),
            events: header_u64(h, "x-mock-events").map_or(cfg.stream_events, |n| n as usize),
            interval: ms("x-mock-event-interval-ms").unwrap_or(cfg.event_interval),
            latency: ms("x-mock-latency-ms").unwrap_or(cfg.latency),
        }
    }
}

/// `x-api-key`, else `Authorization: Bearer`.
fn credential(h: &HeaderMap) -> Option<&str> {
    if let Some(k) = h.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(k);
    }
    let auth = h.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    auth.strip_prefix("Bearer ")
        .or_else(|| auth.strip_prefix("bearer "))
        .map(str::trim)
}

/// `x-mock-status` (+ `x-mock-retry-after`) as a fault.
fn header_fault(h: &HeaderMap) -> Option<Fault> {
    let status = header_u64(h, "x-mock-status")?;
    let retry_after = h
        .get("x-mock-retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Some(Fault::Status {
        status: u16::try_from(status).unwrap_or(500),
        retry_after,
    })
}

fn record(shared: &Shared, parts: &http::request::Parts, body: &Bytes, key: Option<&str>) {
    let headers = parts
        .headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned());
    let rec = RecordedRequest {
        method: parts.method.as_str().to_owned(),
        target: parts.uri.to_string(),
        path_and_query,
        headers,
        body: body.clone(),
        api_key: key.map(str::to_owned),
    };
    lock(&shared.recorded).push(rec);
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> io::Result<Response<MockBody>> {
    let n = shared.request_count.fetch_add(1, Ordering::Relaxed) + 1;
    let request_id = format!("req_mock_{n}");
    let (parts, body) = req.into_parts();
    let mut body = body
        .collect()
        .await
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
        .to_bytes();
    let headers = &parts.headers;
    // Bedrock mode: authenticate and translate first (the credential is the signing key id).
    let mut bedrock_key = None;
    let mut bedrock_route = None;
    if let Some(cfg) = &shared.cfg.bedrock {
        match super::aws_identity::route(cfg, &shared.aws_sessions, &parts, &body) {
            Some(super::aws_identity::Answer::Ok(content_type, answer)) => {
                return Ok(respond(200, content_type, &request_id, answer));
            }
            Some(super::aws_identity::Answer::ImdsToken(token, ttl)) => {
                let mut resp = respond(200, "text/plain", &request_id, token);
                if let Ok(v) = HeaderValue::from_str(&ttl) {
                    resp.headers_mut()
                        .insert("x-aws-ec2-metadata-token-ttl-seconds", v);
                }
                return Ok(resp);
            }
            Some(super::aws_identity::Answer::Error(status, content_type, answer)) => {
                return Ok(respond(
                    status,
                    content_type,
                    &request_id,
                    Bytes::from(answer),
                ));
            }
            None => {}
        }
        match super::bedrock::route(cfg, &shared.aws_sessions, &parts, &body) {
            super::bedrock::Routed::Api(path, translated, stream, key) => {
                bedrock_key = Some(key);
                bedrock_route = Some((path, translated, stream));
            }
            super::bedrock::Routed::Error(status, exception, message) => {
                if shared.cfg.record {
                    record(&shared, &parts, &body, None);
                }
                return Ok(bedrock_error(status, exception, &message, &request_id));
            }
        }
    }
    let key = bedrock_key.as_deref().or_else(|| credential(headers));
    if let Some(k) = key {
        shared.keys.count(k);
    }
    if shared.cfg.record {
        record(&shared, &parts, &body, key);
    }

    let mut path = parts.uri.path();
    if let Some((anthropic_path, translated, _)) = bedrock_route {
        path = anthropic_path;
        body = translated;
    }
    if let Some(cfg) = &shared.cfg.vertex {
        let vertex = (cfg, &shared.tokens, shared.token_uri.as_str());
        let routed = super::vertex::route(vertex, &parts, &body);
        match routed {
            super::vertex::Routed::Token(answer) => {
                return Ok(respond(200, JSON, &request_id, answer));
            }
            super::vertex::Routed::Error(status, state, message) => {
                let error = super::vertex::error_body(status, state, &message);
                return Ok(respond(status, JSON, &request_id, error));
            }
            super::vertex::Routed::Api(anthropic_path, anthropic_body) => {
                path = anthropic_path;
                body = anthropic_body;
            }
        }
    }
    let foundry = shared.cfg.foundry_keys.as_deref();
    if let Some(keys) = foundry {
        let Some(rest) = path.strip_prefix("/anthropic") else {
            return Ok(azure_error(404, Some("Resource not found"), &request_id));
        };
        path = rest;
        let given = ["api-key", "x-api-key"]
            .iter()
            .filter_map(|name| headers.get(*name).and_then(|v| v.to_str().ok()));
        let accepted = given.clone().any(|k| keys.iter().any(|known| known == k));
        if !accepted {
            let message = "Access denied due to invalid subscription key or wrong API \
                           endpoint. Make sure to provide a valid key for an active \
                           subscription and use a correct regional API endpoint for your \
                           resource.";
            return Ok(azure_error(401, Some(message), &request_id));
        }
    }
    // Health checks (`HEAD /`, Claude Code's preflight) get no faults and no latency.
    let api = path.starts_with("/v1/");
    let knobs = Knobs::new(&shared, headers);
    let fault = if api {
        shared.faults.take(key).or_else(|| header_fault(headers))
    } else {
        None
    };
    let mut delay = if api { knobs.latency } else { Duration::ZERO };
    if let Some(Fault::Latency(d)) = &fault {
        delay += *d;
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    match fault {
        Some(Fault::CloseBeforeResponse) => {
            // A service error makes hyper close the connection without writing anything.
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "mock: CloseBeforeResponse",
            ));
        }
        Some(Fault::Status {
            status,
            retry_after,
        }) => {
            let mut resp = match (foundry, &shared.cfg.vertex) {
                _ if shared.cfg.bedrock.is_some() => {
                    let exception = super::bedrock::exception_for(status);
                    bedrock_error(status, exception, "mock: injected", &request_id)
                }
                (_, Some(_)) => {
                    let state = if status == 429 {
                        "RESOURCE_EXHAUSTED"
                    } else {
                        "UNAVAILABLE"
                    };
                    let message = format!("mock: injected {status}");
                    let error = super::vertex::error_body(status, state, &message);
                    respond(status, JSON, &request_id, error)
                }
                (Some(_), None) => azure_error(status, None, &request_id),
                (None, None) => respond(
                    status,
                    JSON,
                    &request_id,
                    error_body(status, None, &request_id),
                ),
            };
            if let Some(v) = retry_after.and_then(|v| HeaderValue::try_from(v).ok()) {
                resp.headers_mut().insert(RETRY_AFTER, v);
            }
            return Ok(resp);
        }
        _ => {}
    }

    let resp = match (&parts.method, path) {
        (&Method::HEAD | &Method::GET, "/") => respond(200, "text/plain", &request_id, "ok\n"),
        (&Method::POST, "/v1/messages") => messages(&shared, key, &body, knobs, fault, &request_id),
        (&Method::POST, "/v1/messages/count_tokens") => match parse_request(&body) {
            Ok(_) => {
                let json = if shared.cfg.bedrock.is_some() {
                    format!("{{\"inputTokens\":{}}}", input_tokens(&body))
                } else {
                    format!("{{\"input_tokens\":{}}}", input_tokens(&body))
                };
                json_response(200, &request_id, Bytes::from(json), body_fault(fault))
            }
            Err(msg) => invalid_request(&request_id, &msg),
        },
        (&Method::GET, "/v1/models") => json_response(
            200,
            &request_id,
            Bytes::from_static(MODELS),
            body_fault(fault),
        ),
        _ => respond(404, JSON, &request_id, error_body(404, None, &request_id)),
    };
    Ok(resp)
}

const MODELS: &[u8] = br#"{"data":[{"type":"model","id":"claude-sonnet-4-5-20250929","display_name":"Claude Sonnet 4.5","created_at":"2025-09-29T00:00:00Z"},{"type":"model","id":"claude-haiku-4-5-20251001","display_name":"Claude Haiku 4.5","created_at":"2025-10-01T00:00:00Z"},{"type":"model","id":"claude-opus-4-1-20250805","display_name":"Claude Opus 4.1","created_at":"2025-08-05T00:00:00Z"}],"has_more":false,"first_id":"claude-sonnet-4-5-20250929","last_id":"claude-opus-4-1-20250805"}"#;

/// The fields of a Messages request the mock uses; the rest is skipped by serde unparsed.
#[derive(Deserialize)]
struct MessagesRequest<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    stream: bool,
}

fn parse_request(body: &[u8]) -> Result<MessagesRequest<'_>, String> {
    // A JSON array would deserialize into the struct positionally; Anthropic wants an object.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err("mock: request body must be a JSON object".to_owned());
    }
    serde_json::from_slice(body).map_err(|e| format!("mock: invalid JSON body: {e}"))
}

/// Roughly 4 bytes per token, at least 1.
fn input_tokens(body: &[u8]) -> u64 {
    (body.len() as u64 / 4).max(1)
}

fn body_fault(fault: Option<Fault>) -> BodyFault {
    match fault {
        Some(Fault::DropAfterEvents(n)) => BodyFault::Drop(n),
        Some(Fault::StallAfterEvents(n, d)) => BodyFault::Stall(n, d),
        Some(Fault::ErrorEventAfterEvents(n, t)) => BodyFault::ErrorEvent(n, t),
        _ => BodyFault::None,
    }
}

fn messages(
    shared: &Shared,
    key: Option<&str>,
    body: &Bytes,
    knobs: Knobs,
    fault: Option<Fault>,
    request_id: &str,
) -> Response<MockBody> {
    let req = match parse_request(body) {
        Ok(r) => r,
        Err(msg) => return invalid_request(request_id, &msg),
    };
    let input = input_tokens(body);
    let rate_headers: RateHeaders = match (&fault, key) {
        // Explicit headers replace the computed ones; the request is not charged.
        (Some(Fault::RateLimitHeaders(_)), _) | (_, None) => Vec::new(),
        (_, Some(k)) => {
            match shared
                .keys
                .admit(k, shared.cfg.default_limits, input, knobs.output_tokens)
            {
                Admission::Allowed(h) => h,
                Admission::Limited {
                    retry_after_secs,
                    headers,
                } => {
                    shared
                        .rate_limited
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    crate::lock(&shared.rate_limited_at).push(std::time::Instant::now());
                    if shared.cfg.bedrock.is_some() {
                        let message = "Too many requests, please wait before trying again.";
                        return bedrock_error(429, "ThrottlingException", message, request_id);
                    }
                    if shared.cfg.foundry_keys.is_some() {
                        let mut resp = azure_error(429, None, request_id);
                        let seconds = HeaderValue::from(retry_after_secs);
                        resp.headers_mut().insert(RETRY_AFTER, seconds);
                        return resp;
                    }
                    let mut resp =
                        respond(429, JSON, request_id, error_body(429, None, request_id));
                    let h = resp.headers_mut();
                    h.insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
                    add_rate_headers(h, &headers);
                    return resp;
                }
            }
        }
    };
    let model = req.model.as_deref().unwrap_or("claude-mock");
    let reply = Reply {
        id: shared.next_message_id.fetch_add(1, Ordering::Relaxed),
        model_json: serde_json::to_string(model).unwrap_or_else(|_| "\"claude-mock\"".into()),
        input_tokens: knobs.input_tokens.unwrap_or(input),
        output_tokens: knobs.output_tokens,
        events: knobs.events,
        interval: knobs.interval,
    };
    let explicit = match &fault {
        Some(Fault::RateLimitHeaders(h)) => Some(h.clone()),
        _ => None,
    };
    let bedrock = shared.cfg.bedrock.is_some();
    let (input, output) = (reply.input_tokens, reply.output_tokens);
    let mut resp = if req.stream && bedrock {
        let frames = sse::event_stream(reply, body_fault(fault));
        respond(200, EVENT_STREAM, request_id, frames)
    } else if req.stream {
        let mut r = respond(200, SSE, request_id, sse::stream(reply, body_fault(fault)));
        r.headers_mut()
            .insert("cache-control", HeaderValue::from_static("no-cache"));
        r
    } else {
        json_response(
            200,
            request_id,
            sse::message_json(&reply),
            body_fault(fault),
        )
    };
    let h = resp.headers_mut();
    // Foundry, Vertex and Bedrock send no rate-limit headers; Bedrock counts tokens in its own.
    if shared.cfg.foundry_keys.is_none() && shared.cfg.vertex.is_none() && !bedrock {
        add_rate_headers(h, &rate_headers);
    }
    if bedrock && !req.stream {
        h.insert("x-amzn-bedrock-input-token-count", HeaderValue::from(input));
        h.insert(
            "x-amzn-bedrock-output-token-count",
            HeaderValue::from(output),
        );
    }
    for (name, value) in explicit.iter().flatten() {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            h.append(n, v);
        }
    }
    resp
}

fn add_rate_headers(h: &mut HeaderMap, rate: &RateHeaders) {
    for (name, value) in rate {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(*name, v);
        }
    }
}

/// An error as Bedrock answers it: `x-amzn-ErrorType` and `{"message"}`.
fn bedrock_error(
    status: u16,
    exception: &str,
    message: &str,
    request_id: &str,
) -> Response<MockBody> {
    let mut resp = respond(
        status,
        JSON,
        request_id,
        super::bedrock::error_body(message),
    );
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{exception}:http://internal.amazon.com/coral/com.amazon.bedrock/"
    )) {
        resp.headers_mut().insert("x-amzn-errortype", v);
    }
    resp
}

fn azure_error(status: u16, message: Option<&str>, request_id: &str) -> Response<MockBody> {
    respond(status, JSON, request_id, azure_error_body(status, message))
}

fn invalid_request(request_id: &str, msg: &str) -> Response<MockBody> {
    respond(
        400,
        JSON,
        request_id,
        error_body(400, Some(msg), request_id),
    )
}

/// A JSON response whose body may be cut or stalled; `content-length` is the full length.
fn json_response(
    status: u16,
    request_id: &str,
    body: Bytes,
    fault: BodyFault,
) -> Response<MockBody> {
    let len = body.len();
    let mut resp = respond(status, JSON, request_id, sse::json(body, fault));
    resp.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(len));
    resp
}

fn respond(
    status: u16,
    content_type: &'static str,
    request_id: &str,
    body: impl Into<MockBody>,
) -> Response<MockBody> {
    let mut resp = Response::new(body.into());
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert("request-id", v);
    }
    resp
}
