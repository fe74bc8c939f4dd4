//! A mock Anthropic upstream (hyper 1, HTTP/1.1) for integration tests, benches, load tests and
//! `make demo`.
//!
//! It speaks enough of the Messages API to exercise the relay: JSON and SSE responses with
//! realistic usage, per-credential rate limits with `anthropic-ratelimit-*` headers, and injected
//! faults (statuses, dropped or stalled streams, closed connections). Everything that can be set
//! from Rust can also be set per request with `x-mock-*` headers, so it works through the relay.
//!
//! The request path takes no locks beyond brief std mutexes for recording and per-key counters
//! (and the fault book, only while faults are armed), so it stays out of the way in load tests.

mod aws_identity;
mod bedrock;
mod body;
mod faults;
mod limits;
mod server;
mod sse;
#[cfg(test)]
mod tests;
mod vertex;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

pub use aws_identity::CONTAINER_PATH as AWS_CONTAINER_CREDENTIALS_PATH;
pub use bedrock::BedrockMock;
pub use vertex::VertexMock;

/// Behaviour of a [`MockUpstream`]; per-request `x-mock-*` headers override most of it.
#[derive(Clone, Debug)]
pub struct MockConfig {
    /// Delay before response headers (`x-mock-latency-ms` replaces it per request).
    pub latency: Duration,
    /// Number of `text_delta` events in a streamed response (`x-mock-events`).
    pub stream_events: usize,
    /// Pause before each text delta (`x-mock-event-interval-ms`).
    pub event_interval: Duration,
    /// Output tokens reported (`x-mock-output-tokens`).
    pub output_tokens: u64,
    /// Keep every request for [`MockUpstream::requests`]; turn off for load tests.
    pub record: bool,
    /// Limits of credentials without [`MockUpstream::set_key_limits`].
    pub default_limits: KeyLimits,
    /// Act as Microsoft Foundry's Anthropic endpoint: the API under `/anthropic`, only these
    /// keys accepted (in `api-key` or `x-api-key`), errors Azure-shaped
    /// (`{"error":{"code","message"}}`), no `anthropic-ratelimit-*` headers.
    pub foundry_keys: Option<Vec<String>>,
    /// Act as Vertex AI (see [`VertexMock`]).
    pub vertex: Option<VertexMock>,
    /// Act as AWS Bedrock (see [`BedrockMock`]).
    pub bedrock: Option<BedrockMock>,
    /// Reset (RST) every connection when its Nth request arrives, without answering it: an
    /// upstream, or a load balancer in front of it, that drops kept-alive connections after N
    /// requests (or while they were idle) just as the client reuses one.
    pub reset_connection_on_request: Option<usize>,
    /// A middlebox that silently forgets connections idle longer than this: a request that
    /// arrives on a connection after such a pause is read but never answered, and the socket
    /// stays open (no RST, no FIN), as when the packets go nowhere. Idle counts from the
    /// moment the previous response's header was handed to the connection.
    pub black_hole_after_idle: Option<Duration>,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            stream_events: 5,
            event_interval: Duration::ZERO,
            output_tokens: 12,
            record: true,
            default_limits: KeyLimits::default(),
            foundry_keys: None,
            vertex: None,
            bedrock: None,
            reset_connection_on_request: None,
            black_hole_after_idle: None,
        }
    }
}

/// Per-minute limits of one credential (token buckets refilling continuously, like Anthropic's).
/// 0 = no limit and no headers for that dimension.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyLimits {
    pub rpm: u64,
    pub itpm: u64,
    pub otpm: u64,
}

/// A misbehaviour to inject into a response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and an Anthropic error body of the matching type.
    Status {
        status: u16,
        retry_after: Option<String>,
    },
    /// Streaming: headers + N SSE events, then the connection is cut (no terminating chunk).
    /// Non-streaming: headers + half the body, then cut.
    DropAfterEvents(usize),
    /// Send N events (non-streaming: half the body), go silent for the duration, then finish.
    StallAfterEvents(usize, Duration),
    /// Streaming: N events, then `event: error` with this error type (e.g. `overloaded_error`)
    /// and a normal end of stream, as Anthropic does when it fails mid-stream. Non-streaming:
    /// ignored.
    ErrorEventAfterEvents(usize, String),
    /// Extra delay before the headers of this request.
    Latency(Duration),
    /// Respond normally, with these headers instead of computed `anthropic-ratelimit-*` ones
    /// (the request is not charged against the key's limits either).
    RateLimitHeaders(Vec<(String, String)>),
    /// Read the request, then close the connection without any response.
    CloseBeforeResponse,
}

/// A request as the mock received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    /// The request target exactly as it arrived: origin form (`/v1/messages?beta=true`) or,
    /// if a proxy forwarded what a client sent, absolute form (`http://host/v1/messages`).
    pub target: String,
    pub path_and_query: String,
    /// Lower-case names (repeated headers appear once per value).
    pub headers: Vec<(String, String)>,
    pub body: bytes::Bytes,
    /// From `x-api-key`, else `Authorization: Bearer`.
    pub api_key: Option<String>,
}

impl RecordedRequest {
    /// First value of a header (name matched case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Value::Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// State shared by the handle and the server tasks.
struct Shared {
    cfg: MockConfig,
    next_message_id: AtomicU64,
    request_count: AtomicUsize,
    recorded: Mutex<Vec<RecordedRequest>>,
    faults: faults::FaultBook,
    keys: limits::KeyTable,
    tokens: vertex::TokenBook,
    /// Temporary AWS credentials Bedrock mode's identity endpoints issued.
    aws_sessions: aws_identity::SessionBook,
    /// `http://ADDR/token`: the audience Vertex mode's assertions must name.
    token_uri: String,
    shutdown: watch::Sender<bool>,
    /// 429s answered because a key's limits were exceeded (not injected faults).
    rate_limited: AtomicU64,
    /// When each of those 429s was answered, for a test to place them in its run.
    rate_limited_at: Mutex<Vec<std::time::Instant>>,
    /// Connections reset by `reset_connection_on_request`, requests left unanswered by
    /// `black_hole_after_idle`.
    connection_resets: AtomicU64,
    black_holed: AtomicU64,
}

/// A running mock upstream. Cheap to clone; it serves until [`MockUpstream::shutdown`] or until
/// its tokio runtime ends (dropping the handles does not stop it).
#[derive(Clone)]
pub struct MockUpstream {
    shared: Arc<Shared>,
    addr: SocketAddr,
}

impl MockUpstream {
    /// Binds `127.0.0.1:0` and serves on the current tokio runtime.
    pub async fn start(cfg: MockConfig) -> std::io::Result<MockUpstream> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), cfg).await
    }

    pub async fn start_on(addr: SocketAddr, cfg: MockConfig) -> std::io::Result<MockUpstream> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            cfg,
            next_message_id: AtomicU64::new(1),
            request_count: AtomicUsize::new(0),
            recorded: Mutex::new(Vec::new()),
            faults: faults::FaultBook::default(),
            keys: limits::KeyTable::default(),
            tokens: vertex::TokenBook::default(),
            aws_sessions: aws_identity::SessionBook::default(),
            token_uri: format!("http://{addr}/token"),
            shutdown,
            rate_limited: AtomicU64::new(0),
            rate_limited_at: Mutex::new(Vec::new()),
            connection_resets: AtomicU64::new(0),
            black_holed: AtomicU64::new(0),
        });
        tokio::spawn(server::serve(listener, shared.clone()));
        Ok(MockUpstream { shared, addr })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Recorded requests, oldest first (empty when `record` is off).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.recorded).clone()
    }

    /// 429s the mock answered because a key was over its limits (injected faults excluded):
    /// what a relay that keeps to the keys' budgets never causes.
    pub fn rate_limited(&self) -> u64 {
        self.shared.rate_limited.load(Ordering::Relaxed)
    }

    /// When each of [`MockUpstream::rate_limited`]'s 429s was answered, oldest first.
    pub fn rate_limited_at(&self) -> Vec<std::time::Instant> {
        lock(&self.shared.rate_limited_at).clone()
    }

    /// Connections reset by [`MockConfig::reset_connection_on_request`].
    pub fn connection_resets(&self) -> u64 {
        self.shared.connection_resets.load(Ordering::Relaxed)
    }

    /// Requests never answered because of [`MockConfig::black_hole_after_idle`].
    pub fn black_holed(&self) -> u64 {
        self.shared.black_holed.load(Ordering::Relaxed)
    }

    /// Requests received (every path, counted even when `record` is off).
    pub fn request_count(&self) -> usize {
        self.shared.request_count.load(Ordering::Relaxed)
    }

    /// Forgets recorded requests and resets `request_count` and `requests_by_key`. Faults and
    /// limits (and their buckets) stay.
    pub fn clear(&self) {
        lock(&self.shared.recorded).clear();
        self.shared.request_count.store(0, Ordering::Relaxed);
        self.shared.keys.clear_counts();
    }

    /// One-shot fault, FIFO: consumed by the next `/v1/*` request whose credential is `key`
    /// (`None` = any request). `HEAD /` and `GET /` never consume faults, so a client's
    /// preflight does not eat them.
    pub fn push_fault(&self, key: Option<&str>, fault: Fault) {
        self.shared.faults.push(key, fault);
    }

    /// Applies `fault` to every `/v1/*` request with this credential until set to `None`.
    /// One-shot faults are consumed first.
    pub fn set_sticky_fault(&self, key: &str, fault: Option<Fault>) {
        self.shared.faults.set_sticky(key, fault);
    }

    /// Drops all one-shot and sticky faults.
    pub fn clear_faults(&self) {
        self.shared.faults.clear();
    }

    /// Replaces the key's limits; its buckets restart full.
    pub fn set_key_limits(&self, key: &str, limits: KeyLimits) {
        self.shared.keys.set_limits(key, limits);
    }

    /// Requests received per credential (requests without one are not listed).
    /// Temporary AWS credentials Bedrock mode's identity endpoints (container, instance
    /// metadata, STS) have issued.
    pub fn aws_sessions_issued(&self) -> u64 {
        self.shared.aws_sessions.issued()
    }

    /// Access tokens Vertex mode has issued.
    pub fn tokens_issued(&self) -> u64 {
        self.shared.tokens.issued()
    }

    pub fn requests_by_key(&self) -> HashMap<String, usize> {
        self.shared.keys.counts()
    }

    /// Stops accepting and closes every open connection (in-flight responses are cut).
    pub fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
    }
}

/// Locks ignoring poison: the data behind these mutexes stays consistent even if a holder
/// panicked, and a test helper must not cascade one failure into all later requests.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `%XX` escapes of a path segment decoded (Vertex and Bedrock model ids).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
