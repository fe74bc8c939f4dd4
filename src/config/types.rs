//! Validated runtime configuration: what the rest of the relay reads.
//!
//! These types are produced only by `config::load*` from the raw serde types (see `raw.rs`), so
//! every value here has already been checked: addresses parse, priorities are in range, names
//! are unique. Nothing outside `config` constructs them from user input.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::pool::Strategy;
pub use crate::providers::Kind;

/// The whole validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub server: ServerSettings,
    pub providers: Vec<ProviderConfig>,
    pub routing: RoutingConfig,
    pub health: HealthConfig,
    pub metrics: MetricsConfig,
    pub logging: LoggingConfig,
    /// `clients`: the relay's clients, each with its own key (empty: `server.auth` alone).
    pub clients: Vec<ClientConfig>,
    /// `shared_state`: key budgets and cooldowns kept in Redis for many relays (absent: each
    /// relay keeps its own, in memory).
    pub shared_state: Option<SharedStateConfig>,
}

/// `shared_state`: where the relays that share the keys keep their budgets.
#[derive(Clone, Debug, PartialEq)]
pub struct SharedStateConfig {
    /// `redis://` or `rediss://` (TLS); may hold a password, hence a secret.
    pub redis_url: Secret,
    /// How long an admission waits for the store before the relay treats it as down.
    pub timeout: Duration,
    /// Prefix of every key the relay writes, so several pools can share one server.
    pub namespace: String,
    /// While the store is down each relay keeps to 1/N of every key, N being the relays last
    /// seen alive, never fewer than this.
    pub min_relays: u32,
    /// A reservation never settled (its relay died) stops counting as in flight after this.
    pub lease: Duration,
}

/// One of `clients`: who it is, how it authenticates, what it may use and how much.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientConfig {
    /// `name`: shown in the access log, metrics and its own 429s (never its key).
    pub name: String,
    /// SHA-256 of its key (`key`, hashed at load, or `key_sha256` as given).
    pub key_sha256: KeyDigest,
    /// `models`: the models it may ask for (a trailing `*` matches a prefix); empty = any.
    pub models: Vec<String>,
    /// `providers`: the providers its requests may go to; empty = any.
    pub providers: Vec<String>,
    /// Its own limits per minute (0 = none): requests, input tokens, output tokens.
    pub rpm_limit: u64,
    pub itpm_limit: u64,
    pub otpm_limit: u64,
    /// Its requests in flight at most (0 = no cap).
    pub max_concurrent: u32,
    /// Tokens (input, cache writes and reads, output) per UTC day and per UTC month (0 = none).
    pub daily_token_budget: u64,
    pub monthly_token_budget: u64,
    /// `admin` (default false): its key also reads the operator's endpoints (`/status`,
    /// `/metrics`, `/v1/providers`), as `server.auth`'s does.
    pub admin: bool,
}

impl ClientConfig {
    /// Whether the client has a token budget (its usage is then persisted).
    pub fn has_budget(&self) -> bool {
        self.daily_token_budget > 0 || self.monthly_token_budget > 0
    }

    /// Whether the client may ask for `model` (`None`: the request names none).
    pub fn allows_model(&self, model: Option<&str>) -> bool {
        if self.models.is_empty() {
            return true;
        }
        let Some(model) = model else { return false };
        self.models.iter().any(|m| match m.strip_suffix('*') {
            Some(prefix) => model.starts_with(prefix),
            None => m == model,
        })
    }
}

/// The SHA-256 of a client key: what the config keeps and what a presented key is looked up
/// by. Its `Debug` does not show it (a digest of a weak key can be brute-forced).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyDigest(pub [u8; 32]);

impl KeyDigest {
    pub fn of(secret: &[u8]) -> KeyDigest {
        use sha2::Digest;
        KeyDigest(sha2::Sha256::digest(secret).into())
    }
}

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyDigest(***)")
    }
}

/// `metrics.*` (the Go cc-relay's keys).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct MetricsConfig {
    /// `metrics.enabled` (default false): serve Prometheus metrics.
    pub enabled: bool,
    /// `metrics.prometheus_listen`: a listener of their own (no auth: put it on a private
    /// interface). Without it they are served at `/metrics` on `server.listen`, behind
    /// `server.auth`.
    pub listen: Option<SocketAddr>,
    /// `metrics.prometheus_endpoint` (default `/metrics`): the path on `prometheus_listen`.
    pub endpoint: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ServerSettings {
    /// `server.listen`; Go-style `:8787` means `0.0.0.0:8787`.
    pub listen: SocketAddr,
    /// `server.admin_listen`: a listener of its own for the operational endpoints (`/health`,
    /// `/status`), e.g. on a private interface. They stay on `listen` too.
    pub admin_listen: Option<SocketAddr>,
    /// `server.timeout_ms`: the longest an upstream may stay silent (between two reads of a
    /// response, streaming included) before the relay answers 504 / ends the stream.
    pub upstream_read_timeout: Duration,
    /// `server.connect_timeout_ms` (default 10 s).
    pub upstream_connect_timeout: Duration,
    /// `server.max_body_bytes` (default 32 MiB); larger request bodies get 413.
    pub max_body_bytes: usize,
    /// `server.max_concurrent` (0 = unlimited); above it the relay answers 503.
    pub max_concurrent: usize,
    pub auth: AuthConfig,
    /// `server.trusted_proxies`: the load balancers / reverse proxies whose `X-Forwarded-For`
    /// names the client. Only a connection from one of them is read for it; empty: the TCP
    /// peer is the client, whatever a header says.
    pub trusted_proxies: Vec<super::Cidr>,
    /// `server.threads` (default: number of cores).
    pub threads: usize,
    /// `server.grace_period_seconds` (default 30): how long an old process keeps serving
    /// in-flight requests after an upgrade / SIGTERM.
    pub grace_period: Duration,
    /// `server.graceful_shutdown_timeout_seconds` (default 5).
    pub graceful_shutdown_timeout: Duration,
    /// `server.pid_file` (default `/tmp/cc-relay.pid`).
    pub pid_file: PathBuf,
    /// `server.upgrade_sock` (default `/tmp/cc-relay_upgrade.sock`).
    pub upgrade_sock: PathBuf,
    /// `server.tls`: serve clients over TLS with this certificate (reloaded with the config).
    pub tls: Option<TlsFiles>,
    /// `server.enable_http2` (the Go relay's key): HTTP/2 from clients, by ALPN over TLS and
    /// as h2c (prior knowledge) on a plain listener.
    pub enable_http2: bool,
    /// `server.idle_timeout_ms` (default 60 s, whole seconds): how long a kept-alive client
    /// connection may wait for its next request (each read of it) before it is closed.
    pub idle_timeout: Duration,
    /// `server.client_body_timeout_ms` (default 30 s): the longest a client may pause between
    /// two reads of its request body before the relay answers 408 and closes.
    pub client_body_timeout: Duration,
    /// `server.upstream_idle_timeout_ms` (default 30 s): how long an upstream connection may
    /// wait in the pool for its next request before it is closed; under what a NAT or firewall
    /// between the relay and the provider tolerates (one that forgets a connection silently
    /// would leave the next request on it unanswered).
    pub upstream_idle_timeout: Duration,
    /// `server.max_buffered_body_bytes` (default 256 MiB): what all request bodies buffered at
    /// once may hold together; above it a request gets 503 `overloaded_error`.
    pub max_buffered_body_bytes: usize,
    /// `server.max_buffered_body_bytes_per_address` (default the larger of
    /// `max_buffered_body_bytes / 8` and `max_body_bytes`): what the bodies of one client
    /// address (an IPv6 client: its /64) may hold together; above it a request gets 503
    /// `overloaded_error`, so a few clients cannot hold the whole budget.
    pub max_buffered_body_bytes_per_address: usize,
    /// `server.min_body_rate_bytes_per_s` (default 1024, 0 = none): after the first
    /// `client_body_timeout`, a request body must have arrived at this average rate, else 408
    /// and the connection closes.
    pub min_body_rate_bytes_per_s: u64,
    /// `server.max_header_bytes` (default 64 KiB): a larger request header gets 431.
    pub max_header_bytes: usize,
    /// `server.client_header_timeout_ms` (default 30 s): a request header must be complete
    /// within it (on a reused connection: the idle timeout plus it), else the connection closes.
    pub client_header_timeout: Duration,
    /// `server.max_connections` (default 4096, 0 = no cap): client connections open at once;
    /// past it a new one is closed at once.
    pub max_connections: usize,
    /// `server.state_file` (default `$XDG_STATE_HOME/cc-relay/state.json`, else
    /// `~/.local/state/cc-relay/state.json`): where the clients' token budgets are kept across
    /// restarts; used only when a client has a budget.
    pub state_file: PathBuf,
}

/// `server.tls`: a PEM certificate chain and its private key.
#[derive(Clone, Debug, PartialEq)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// The relay's own client authentication (`server.auth`). All `None`/false = open relay.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AuthConfig {
    /// `server.auth.api_key`: clients must send this as `x-api-key` (or Bearer when allowed).
    pub api_key: Option<Secret>,
    /// `server.auth.allow_bearer` (Go: also `allow_subscription`): accept `Authorization: Bearer`.
    pub allow_bearer: bool,
    /// `server.auth.bearer_secret`: the Bearer token to accept; when `None` and `allow_bearer`,
    /// `api_key` is accepted as a Bearer token too.
    pub bearer_secret: Option<Secret>,
}

impl AuthConfig {
    /// Whether the relay checks client credentials at all.
    pub fn is_enabled(&self) -> bool {
        self.api_key.is_some() || self.bearer_secret.is_some()
    }
}

/// A parsed, absolute upstream base URL (`base_url`, or the kind's default).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseUrl {
    pub tls: bool,
    /// Host name or IP literal, without brackets; used for `Host` and SNI.
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash (`""` for none), joined before the request path.
    pub path_prefix: String,
}

impl BaseUrl {
    /// The `Host` header value: `host` or `host:port` when the port is not the scheme's default.
    pub fn host_header(&self) -> String {
        let default_port = if self.tls { 443 } else { 80 };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == default_port {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.host_header(), self.path_prefix)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: Kind,
    pub enabled: bool,
    /// `providers[].priority` (0–2, 2 first; default: its first key's priority, else 1).
    pub priority: u8,
    /// `providers[].weight` (> 0; default: its first key's weight, else 1; 0 counts as 1).
    pub weight: f64,
    pub base_url: BaseUrl,
    /// Models this provider serves (routing and `GET /v1/models`). Empty = any model.
    pub models: Vec<String>,
    /// Exact-match rewrites of the request body's `model` for this provider.
    pub model_mapping: HashMap<String, String>,
    /// The model sent when `model_mapping` names none (a kind may set it, e.g. azure's
    /// `azure_deployment_id`).
    pub default_model: Option<String>,
    pub pooling: PoolingConfig,
    /// Empty = passthrough: the client's own credentials are forwarded unchanged.
    pub keys: Vec<KeyConfig>,
    /// The kind's own fields (`ProviderKind::config_fields`), checked by the walker and by
    /// `ProviderKind::validate`; empty for kinds that have none.
    pub options: serde_yaml::Mapping,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PoolingConfig {
    /// `pooling.strategy` (default `least_loaded`).
    pub strategy: Strategy,
    /// `pooling.enabled`; `None` = on when the provider has more than one key.
    pub enabled: Option<bool>,
    /// `pooling.max_wait_ms` (default 0): hold a request this long for capacity before 429.
    pub max_wait: Duration,
    /// `pooling.max_cooldown_ms` (default 10 min, 1 s to 24 h): the longest the upstream may
    /// bench one key in one go (`retry-after`, a rate-limit reset, a 403 backoff).
    pub max_cooldown: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct KeyConfig {
    pub key: Secret,
    /// Display id: `name` if given, else `key-` + first 8 hex chars of a hash of the key.
    pub id: String,
    /// 0 = unknown until learned from response headers.
    pub rpm_limit: u64,
    pub itpm_limit: u64,
    pub otpm_limit: u64,
    /// 0..=2; 2 is tried first.
    pub priority: u8,
    /// >= 0, used by the `weighted` strategy. Default 1.
    pub weight: f64,
    /// `keys[].max_concurrent` (0 = no cap): requests in flight on this key at most.
    pub max_concurrent: u32,
    /// `keys[].gcp_credentials_file` (type vertex): a Google credentials file whose OAuth
    /// tokens are the key; `key` then holds `gcp:` + the path (for the id and duplicates).
    pub gcp_credentials_file: Option<std::path::PathBuf>,
    /// `keys[].aws_access_key_id` + `aws_secret_access_key` (+ `aws_session_token`), type
    /// bedrock: requests are signed with it (SigV4); `key` then holds `aws:` + the key id.
    pub aws: Option<AwsCredential>,
    /// Type bedrock without credentials of its own: requests are signed with the standard AWS
    /// chain's (`providers::aws_credentials`).
    pub aws_chain: bool,
}

/// One AWS credential of a Bedrock key.
#[derive(Clone, Debug, PartialEq)]
pub struct AwsCredential {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
}

impl KeyConfig {
    /// A key the provider's kind supplies itself (vertex: Application Default Credentials),
    /// with id `id`, no limits of its own.
    pub fn implicit(id: &str) -> KeyConfig {
        KeyConfig {
            key: Secret::new(format!("implicit:{id}")),
            id: id.to_owned(),
            rpm_limit: 0,
            itpm_limit: 0,
            otpm_limit: 0,
            priority: 1,
            weight: 1.0,
            max_concurrent: 0,
            gcp_credentials_file: None,
            aws: None,
            aws_chain: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct RoutingConfig {
    /// `routing.strategy` (default `failover`): the order in which a request's candidate
    /// providers are tried.
    pub strategy: RoutingStrategy,
    /// `model_based`: model-name prefix → provider name (longest prefix wins). Any other
    /// strategy: exact model rewrites applied before choosing a provider.
    pub model_mapping: HashMap<String, String>,
    /// `routing.default_provider`: used when no provider lists the requested model (and, for
    /// `model_based`, when no prefix matches).
    pub default_provider: Option<String>,
    /// `routing.max_attempts` (default 2): attempts per request across keys and providers.
    pub max_attempts: u32,
    /// `routing.failover_timeout` (ms, default 30000): no new attempt starts once this long
    /// has passed since the request arrived.
    pub failover_timeout: Duration,
    /// `routing.sticky_sessions` (default on): a session's requests stay on one provider and
    /// key while that key can take them.
    pub sticky_sessions: bool,
    /// `routing.sticky_max_sessions` (default 16384): slots of the session table (fixed memory).
    pub sticky_max_sessions: usize,
    /// `routing.sticky_ttl_ms` (default 1 h): a session idle this long is forgotten.
    pub sticky_ttl: Duration,
    /// `routing.debug` (Go's): responses say how they were routed (`X-CC-Relay-Strategy`,
    /// `X-CC-Relay-Provider`, `X-CC-Relay-Health`, `X-CC-Relay-Thinking-Affinity`).
    pub debug: bool,
}

/// `routing.strategy`, with the Go cc-relay's names and meanings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RoutingStrategy {
    /// Highest provider priority first (config order between equals).
    #[default]
    Failover,
    RoundRobin,
    /// Smooth weighted round robin by `providers[].weight`.
    WeightedRoundRobin,
    /// Every provider once, in a random order, before any gets a second request.
    Shuffle,
    /// The provider whose pool can best take the request's demand, then fewest in flight.
    LeastLoaded,
    /// A weighted random order (`providers[].weight`).
    WeightedFailover,
    /// `routing.model_mapping` prefixes pick the provider, else `default_provider`.
    ModelBased,
}

impl RoutingStrategy {
    pub const ALL: [(&'static str, RoutingStrategy); 7] = [
        ("failover", RoutingStrategy::Failover),
        ("round_robin", RoutingStrategy::RoundRobin),
        ("weighted_round_robin", RoutingStrategy::WeightedRoundRobin),
        ("shuffle", RoutingStrategy::Shuffle),
        ("least_loaded", RoutingStrategy::LeastLoaded),
        ("weighted_failover", RoutingStrategy::WeightedFailover),
        ("model_based", RoutingStrategy::ModelBased),
    ];

    pub fn parse(s: &str) -> Option<RoutingStrategy> {
        Self::ALL.iter().find(|(n, _)| *n == s).map(|&(_, v)| v)
    }

    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, v)| *v == self)
            .map_or("failover", |(n, _)| n)
    }
}

/// `health.*`: the per-provider circuit breaker and its background check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    /// `health.circuit_breaker.failure_threshold` (default 5): consecutive failures that open
    /// the circuit.
    pub failure_threshold: u32,
    /// `health.circuit_breaker.open_duration_ms` (default 30000).
    pub open_duration: Duration,
    /// `health.circuit_breaker.half_open_probes` (default 3): requests let through half-open;
    /// that many successes close the circuit.
    pub half_open_probes: u32,
    /// `health.health_check.enabled` (default true): probe open circuits in the background.
    pub health_check: bool,
    /// `health.health_check.interval_ms` (default 10000).
    pub health_check_interval: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            failure_threshold: 5,
            open_duration: Duration::from_millis(30_000),
            half_open_probes: 3,
            health_check: true,
            health_check_interval: Duration::from_millis(10_000),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggingConfig {
    /// `error`, `warn`, `info`, `debug`, `trace` (default `info`). `RUST_LOG` overrides.
    pub level: String,
    /// `text` or `json` (default `text`).
    pub format: String,
    /// `stdout` or `stderr` (default `stderr`).
    pub output: String,
}

/// A credential. Its `Debug` and `Display` never show the value, so a secret cannot reach a log
/// by accident through formatting a config.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The raw value, for the one place that must send it (the upstream request header).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}
