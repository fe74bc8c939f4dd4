//! Raw (as written) → runtime (validated) configuration.
//!
//! Every check records its problem and carries on with a default, so that one run reports every
//! problem in the file. Messages name the field path and the allowed values; they quote a
//! configured value only for fields that cannot hold a secret, and even then not when it looks
//! like a credential (see [`shown`]).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use http::Uri;

use super::cidr::Cidr;
use super::error::ConfigError;
use super::raw::{
    RawAuth, RawConfig, RawHealth, RawKey, RawLogging, RawMetrics, RawPooling, RawProvider,
    RawRouting, RawServer,
};
use super::types::*;
use crate::pool::Strategy;
use crate::providers::{kind_named, supported_kinds, KINDS};

pub(crate) const DEFAULT_LISTEN: &str = "127.0.0.1:8787";
const DEFAULT_TIMEOUT_MS: i64 = 600_000;
/// The Go version's cap on `timeout_ms` (24 h): larger values are typos, not intentions.
const MAX_TIMEOUT_MS: i64 = 24 * 60 * 60 * 1000;
const DEFAULT_CONNECT_TIMEOUT_MS: i64 = 10_000;
const DEFAULT_MAX_BODY_BYTES: i64 = 32 * 1024 * 1024;
const MAX_THREADS: i64 = 1024;
const DEFAULT_GRACE_PERIOD_SECONDS: i64 = 30;
const DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS: i64 = 5;
const DEFAULT_PID_FILE: &str = "/tmp/cc-relay.pid";
const DEFAULT_UPGRADE_SOCK: &str = "/tmp/cc-relay_upgrade.sock";
const DEFAULT_PRIORITY: i64 = 1;
const DEFAULT_MAX_ATTEMPTS: i64 = 2;
/// The most `routing.max_attempts` may be.
pub const MAX_MAX_ATTEMPTS: i64 = 10;

/// The stable, non-cryptographic fingerprint of a key (FNV-1a, 64 bit). Used for display ids
/// and to recognise the same key across reloads; it is not a way to protect the key.
pub fn key_fingerprint(secret: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    secret
        .bytes()
        .fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// `key-` + the first 8 hex digits of the fingerprint.
pub(crate) fn fingerprint_id(fingerprint: u64) -> String {
    format!("key-{:08x}", fingerprint >> 32)
}

pub(super) struct Ctx<'w> {
    errors: Vec<ConfigError>,
    warnings: &'w mut Vec<String>,
}

impl Ctx<'_> {
    pub(super) fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError::invalid(path, message));
    }
    fn warn(&mut self, message: String) {
        self.warnings.push(message);
    }
}

pub(crate) fn validate(
    raw: RawConfig,
    warnings: &mut Vec<String>,
) -> Result<Config, Vec<ConfigError>> {
    let mut c = Ctx {
        errors: Vec::new(),
        warnings,
    };
    let server = server(raw.server, &mut c);
    let providers = providers(raw.providers, &mut c);
    let routing = routing(raw.routing, &providers, &mut c);
    let health = health(raw.health, &mut c);
    let metrics = metrics(raw.metrics, &mut c);
    let logging = logging(raw.logging, &mut c);
    let clients = super::clients::clients(raw.clients, &providers, &server.auth, &mut c);
    let shared_state = super::shared_state::shared_state(raw.shared_state, &mut c);
    if c.errors.is_empty() {
        Ok(Config {
            server,
            providers,
            routing,
            health,
            metrics,
            logging,
            clients,
            shared_state,
        })
    } else {
        Err(c.errors)
    }
}

// ---------------------------------------------------------------------------------------------
// server
// ---------------------------------------------------------------------------------------------

fn server(raw: RawServer, c: &mut Ctx) -> ServerSettings {
    let admin_listen = match raw.admin_listen.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(text) => match parse_listen(text) {
            Ok(addr) => Some(addr),
            Err(m) => {
                c.error("server.admin_listen", m);
                None
            }
        },
    };
    let listen_text = raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let listen = parse_listen(listen_text).unwrap_or_else(|m| {
        c.error("server.listen", m);
        SocketAddr::from(([127, 0, 0, 1], 8787))
    });

    // Go treated 0 as "use the default"; so do we, so that a Go config means the same here.
    let timeout_ms = match raw.timeout_ms {
        None | Some(0) => DEFAULT_TIMEOUT_MS,
        Some(t) if t < 0 => {
            c.error("server.timeout_ms", format!("must be >= 0, got {t}"));
            DEFAULT_TIMEOUT_MS
        }
        Some(t) if t > MAX_TIMEOUT_MS => {
            c.error(
                "server.timeout_ms",
                format!("must be at most {MAX_TIMEOUT_MS} (24 h), got {t}"),
            );
            DEFAULT_TIMEOUT_MS
        }
        Some(t) => t,
    };
    let connect_ms = match raw.connect_timeout_ms {
        None => DEFAULT_CONNECT_TIMEOUT_MS,
        Some(t) if t <= 0 || t > MAX_TIMEOUT_MS => {
            c.error(
                "server.connect_timeout_ms",
                format!("must be between 1 and {MAX_TIMEOUT_MS}, got {t}"),
            );
            DEFAULT_CONNECT_TIMEOUT_MS
        }
        Some(t) => t,
    };
    let max_body_bytes = match raw.max_body_bytes {
        None => DEFAULT_MAX_BODY_BYTES,
        Some(b) if b <= 0 => {
            c.error(
                "server.max_body_bytes",
                format!(
                    "must be > 0, got {b} (the Go cc-relay read 0 as unlimited; this relay \
                     buffers request bodies, so it needs a limit: omit the field for the default \
                     of {DEFAULT_MAX_BODY_BYTES})"
                ),
            );
            DEFAULT_MAX_BODY_BYTES
        }
        Some(b) => b,
    };
    let max_concurrent = non_negative(raw.max_concurrent, 0, "server.max_concurrent", c);
    let threads = match raw.threads {
        None | Some(0) => default_threads(),
        Some(t) if !(1..=MAX_THREADS).contains(&t) => {
            c.error(
                "server.threads",
                format!("must be between 1 and {MAX_THREADS} (or 0 for one per core), got {t}"),
            );
            default_threads()
        }
        Some(t) => t as usize,
    };
    let grace = non_negative(
        raw.grace_period_seconds,
        DEFAULT_GRACE_PERIOD_SECONDS,
        "server.grace_period_seconds",
        c,
    );
    let shutdown = non_negative(
        raw.graceful_shutdown_timeout_seconds,
        DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS,
        "server.graceful_shutdown_timeout_seconds",
        c,
    );
    let pid_file = path_field(raw.pid_file, DEFAULT_PID_FILE, "server.pid_file", c);
    let upgrade_sock = path_field(
        raw.upgrade_sock,
        DEFAULT_UPGRADE_SOCK,
        "server.upgrade_sock",
        c,
    );
    let auth = auth(raw.auth, raw.api_key, c);
    let trusted_proxies = trusted_proxies(raw.trusted_proxies, c);
    let state_file = match raw.state_file.as_deref().map(str::trim) {
        Some("") => {
            c.error("server.state_file", "must not be empty (or leave it out)");
            default_state_file()
        }
        Some(p) => PathBuf::from(p),
        None => default_state_file(),
    };
    let tls = raw.tls.and_then(|t| tls(t, c));
    let max_buffered_body_bytes = match raw.max_buffered_body_bytes {
        None => (256 << 20).max(max_body_bytes as usize),
        Some(n) if n < max_body_bytes => {
            c.error(
                "server.max_buffered_body_bytes",
                format!(
                    "must be at least server.max_body_bytes ({max_body_bytes}), got {n}: a body \
                     of the largest size allowed must fit"
                ),
            );
            256 << 20
        }
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
    };
    let max_buffered_body_bytes_per_address = per_address(
        raw.max_buffered_body_bytes_per_address,
        max_body_bytes as usize,
        max_buffered_body_bytes,
        c,
    );
    let min_body_rate_bytes_per_s = non_negative(
        raw.min_body_rate_bytes_per_s,
        1024,
        "server.min_body_rate_bytes_per_s",
        c,
    ) as u64;
    let max_header_bytes = match raw.max_header_bytes {
        None => 64 << 10,
        // Pingora refuses headers past 1 MiB while reading them.
        Some(n @ 1024..=1_048_575) => n as usize,
        Some(n) => {
            c.error(
                "server.max_header_bytes",
                format!("must be between 1024 and 1048575, got {n}"),
            );
            64 << 10
        }
    };
    let idle_timeout = client_timeout(raw.idle_timeout_ms, 60_000, "server.idle_timeout_ms", c);
    let client_body_timeout = client_timeout(
        raw.client_body_timeout_ms,
        30_000,
        "server.client_body_timeout_ms",
        c,
    );

    let upstream_idle_timeout = client_timeout(
        raw.upstream_idle_timeout_ms,
        30_000,
        "server.upstream_idle_timeout_ms",
        c,
    );

    ServerSettings {
        listen,
        admin_listen,
        upstream_read_timeout: Duration::from_millis(timeout_ms as u64),
        upstream_connect_timeout: Duration::from_millis(connect_ms as u64),
        max_body_bytes: usize::try_from(max_body_bytes).unwrap_or(usize::MAX),
        max_concurrent: usize::try_from(max_concurrent).unwrap_or(usize::MAX),
        auth,
        trusted_proxies,
        threads,
        grace_period: Duration::from_secs(grace as u64),
        graceful_shutdown_timeout: Duration::from_secs(shutdown as u64),
        pid_file,
        upgrade_sock,
        tls,
        enable_http2: raw.enable_http2.unwrap_or(false),
        idle_timeout,
        client_body_timeout,
        upstream_idle_timeout,
        max_buffered_body_bytes,
        max_buffered_body_bytes_per_address,
        min_body_rate_bytes_per_s,
        max_header_bytes,
        client_header_timeout: client_timeout(
            raw.client_header_timeout_ms,
            30_000,
            "server.client_header_timeout_ms",
            c,
        ),
        max_connections: match raw.max_connections {
            None => 4096,
            Some(n) if n >= 0 => usize::try_from(n).unwrap_or(usize::MAX),
            Some(n) => {
                c.error(
                    "server.max_connections",
                    format!("must be >= 0 (0 = no cap), got {n}"),
                );
                4096
            }
        },
        state_file,
    }
}

/// `$XDG_STATE_HOME/cc-relay/state.json`, else `~/.local/state/cc-relay/state.json`, else (no
/// home) `./cc-relay-state.json`.
fn default_state_file() -> PathBuf {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    let base = var("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".local/state")));
    match base {
        Some(dir) => dir.join("cc-relay").join("state.json"),
        None => PathBuf::from("cc-relay-state.json"),
    }
}

/// A client-side timeout in ms: 1 ms to 24 h.
fn client_timeout(v: Option<i64>, default: u64, path: &str, c: &mut Ctx) -> Duration {
    match v {
        None => Duration::from_millis(default),
        Some(t) if t <= 0 || t > MAX_TIMEOUT_MS => {
            c.error(
                path,
                format!("must be between 1 and {MAX_TIMEOUT_MS} (ms), got {t}"),
            );
            Duration::from_millis(default)
        }
        Some(t) => Duration::from_millis(t as u64),
    }
}

/// `server.tls`: both files, and they must load (a certificate that would fail the listener
/// fails the config instead, naming the file).
fn tls(raw: crate::config::raw::RawTls, c: &mut Ctx) -> Option<TlsFiles> {
    let file = |v: Option<String>, field: &str, c: &mut Ctx| match v.map(|s| s.trim().to_owned()) {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => {
            c.error(
                format!("server.tls.{field}"),
                "is required with server.tls (a PEM file)",
            );
            None
        }
    };
    let files = TlsFiles {
        cert_file: file(raw.cert_file, "cert_file", c)?,
        key_file: file(raw.key_file, "key_file", c)?,
    };
    if let Err(e) = super::tls::load(&files) {
        c.error("server.tls", e);
        return None;
    }
    Some(files)
}

fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// A share of traffic: finite and >= 0.
fn weight(v: Option<f64>, default: f64, path: &str, c: &mut Ctx) -> f64 {
    match v {
        None => default,
        Some(w) if w.is_finite() && w >= 0.0 => w,
        Some(w) => {
            c.error(path, format!("must be a finite number >= 0, got {w}"));
            default
        }
    }
}

/// Whether a credential can travel in an HTTP header as is: visible ASCII only (no space, line
/// break, control or non-ASCII character, which a pasted key may carry).
fn header_safe(secret: &str) -> bool {
    secret.bytes().all(|b| b.is_ascii_graphic())
}

/// `server.max_buffered_body_bytes_per_address`: between `max_body_bytes` (a body of the
/// largest size allowed must fit) and `all` (more would mean nothing); by default an eighth of
/// `all`, so at least eight addresses share it.
fn per_address(v: Option<i64>, max_body_bytes: usize, all: usize, c: &mut Ctx) -> usize {
    let default = (all / 8).max(max_body_bytes).min(all);
    match v {
        None => default,
        Some(n) if usize::try_from(n).is_ok_and(|n| (max_body_bytes..=all).contains(&n)) => {
            n as usize
        }
        Some(n) => {
            c.error(
                "server.max_buffered_body_bytes_per_address",
                format!(
                    "must be between server.max_body_bytes ({max_body_bytes}) and \
                     server.max_buffered_body_bytes ({all}), got {n}"
                ),
            );
            default
        }
    }
}

pub(super) fn non_negative(v: Option<i64>, default: i64, path: &str, c: &mut Ctx) -> i64 {
    match v {
        None => default,
        Some(n) if n < 0 => {
            c.error(path, format!("must be >= 0, got {n}"));
            default
        }
        Some(n) => n,
    }
}

fn path_field(v: Option<String>, default: &str, path: &str, c: &mut Ctx) -> PathBuf {
    match v {
        None => PathBuf::from(default),
        Some(s) if s.trim().is_empty() => {
            c.error(path, format!("must not be empty (default: {default})"));
            PathBuf::from(default)
        }
        Some(s) => PathBuf::from(s.trim()),
    }
}

/// `127.0.0.1:8787`, `[::1]:8787`, Go's `:8787` (all interfaces, IPv4) and `localhost:8787`.
/// Other host names are refused rather than resolved: what a name resolves to can change, and
/// a relay that holds API keys should bind to an address its operator chose.
pub(crate) fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    const HINT: &str = "expected IP:PORT, e.g. 127.0.0.1:8787, [::1]:8787, :8787 (all \
                        interfaces) or localhost:8787";
    let s = text.trim();
    if let Some(port) = s.strip_prefix(':') {
        return parse_port(port).map(|p| SocketAddr::from((Ipv4Addr::UNSPECIFIED, p)));
    }
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("missing port; {HINT}"));
    };
    let port = parse_port(port)?;
    if host.eq_ignore_ascii_case("localhost") {
        Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
    } else if host.parse::<IpAddr>().is_ok() {
        Err(format!("IPv6 addresses need brackets; {HINT}"))
    } else if host.starts_with('[') {
        Err(format!("invalid IPv6 address; {HINT}"))
    } else {
        Err(format!(
            "host names other than localhost are not resolved, use an IP address; {HINT}"
        ))
    }
}

fn parse_port(p: &str) -> Result<u16, String> {
    p.parse::<u16>()
        .map_err(|_| format!("port must be a number from 0 to 65535, got {}", shown(p)))
}

fn auth(raw: RawAuth, legacy_api_key: Option<String>, c: &mut Ctx) -> AuthConfig {
    let api_key = client_secret(raw.api_key, "server.auth.api_key", c);
    let legacy = client_secret(legacy_api_key, "server.api_key", c);
    let api_key = match (api_key, legacy) {
        (Some(k), Some(l)) => {
            if k != l {
                c.warn(
                    "server.api_key: ignored because server.auth.api_key is set (server.api_key \
                     is the Go cc-relay's older spelling)"
                        .to_string(),
                );
            }
            Some(k)
        }
        (k, l) => k.or(l),
    };
    let bearer_secret = client_secret(raw.bearer_secret, "server.auth.bearer_secret", c);
    let mut allow_bearer =
        raw.allow_bearer.unwrap_or(false) || raw.allow_subscription.unwrap_or(false);
    if bearer_secret.is_some() && !allow_bearer {
        // A Bearer secret nobody may present would lock every client out (or, as in Go, be
        // silently ignored): setting one means Bearer authentication is wanted.
        c.warn(
            "server.auth.bearer_secret: set without allow_bearer; Bearer authentication is \
             enabled (allow_bearer: true implied)"
                .to_string(),
        );
        allow_bearer = true;
    }
    AuthConfig {
        api_key,
        allow_bearer,
        bearer_secret,
    }
}

/// `server.trusted_proxies`: CIDRs (or single addresses), each checked here so a request
/// never parses one.
fn trusted_proxies(raw: Vec<String>, c: &mut Ctx) -> Vec<Cidr> {
    raw.iter()
        .enumerate()
        .filter_map(|(i, text)| {
            let parsed = Cidr::parse(text);
            if parsed.is_none() {
                c.error(
                    format!("server.trusted_proxies[{i}]"),
                    format!(
                        "not a CIDR: {} (expected an address range such as 10.0.0.0/8 or \
                         fd00::/8, or one address)",
                        shown(text.trim())
                    ),
                );
            }
            parsed
        })
        .collect()
}

/// Empty (after expansion) means "not set", as in Go: `api_key: ${PROXY_API_KEY:-}` (the walk
/// has already refused a `${VAR}` set to the empty string). A credential no client could send
/// in a header (a line break, a space, a control or non-ASCII character) would lock every
/// client out: refused, without showing it.
pub(super) fn client_secret(v: Option<String>, path: &str, c: &mut Ctx) -> Option<Secret> {
    let s = v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())?;
    if !header_safe(&s) {
        c.error(
            path,
            "contains a space, a control character or a non-ASCII character, which no client \
             can send in an HTTP header (a key pasted with a line break?)",
        );
        return None;
    }
    Some(Secret::new(s))
}

// ---------------------------------------------------------------------------------------------
// providers
// ---------------------------------------------------------------------------------------------

fn providers(raw: Vec<RawProvider>, c: &mut Ctx) -> Vec<ProviderConfig> {
    let mut out: Vec<ProviderConfig> = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, p) in raw.into_iter().enumerate() {
        let path = format!("providers[{i}]");
        let kind_text = p.kind.as_deref().map(|k| k.trim().to_ascii_lowercase());
        let kind = match kind_text.as_deref() {
            None | Some("") => {
                c.error(
                    format!("{path}.type"),
                    format!("is required (one of: {})", supported_kinds()),
                );
                None
            }
            Some(t) => {
                let kind = kind_named(t);
                if kind.is_none() {
                    c.error(
                        format!("{path}.type"),
                        format!(
                            "unknown provider type {} (supported: {})",
                            shown(t),
                            supported_kinds()
                        ),
                    );
                }
                kind
            }
        };

        let name = match p.name.as_deref().map(str::trim) {
            None | Some("") => {
                c.error(format!("{path}.name"), "is required");
                format!("provider-{i}")
            }
            Some(n) => {
                if let Some(first) = seen.get(n) {
                    c.error(
                        format!("{path}.name"),
                        format!("duplicate provider name {n:?} (also providers[{first}])"),
                    );
                }
                seen.entry(n.to_string()).or_insert(i);
                n.to_string()
            }
        };

        let checked_kind = kind.is_some();
        let kind = kind.unwrap_or(KINDS[0]);
        let default_base_url = || {
            parse_base_url(kind.default_base_url()).expect("built-in default base URLs are valid")
        };
        let base_url_given = p.base_url.as_deref().is_some_and(|u| !u.trim().is_empty());
        let base_url = match p.base_url.as_deref().map(str::trim) {
            None | Some("") => default_base_url(),
            Some(u) => parse_base_url(u).unwrap_or_else(|m| {
                c.error(format!("{path}.base_url"), m);
                default_base_url()
            }),
        };

        let models = string_list(p.models, &format!("{path}.models"), c);
        let model_mapping = string_map(p.model_mapping, &format!("{path}.model_mapping"), c);
        let pooling = pooling(p.pooling, &path, c);
        let keys = keys(p.keys, &path, c);

        // Go took a provider's priority and weight from its first key; they can be set on the
        // provider itself here, which wins.
        let priority = match p.priority {
            None => keys.first().map_or(DEFAULT_PRIORITY as u8, |k| k.priority),
            Some(n @ 0..=2) => n as u8,
            Some(n) => {
                c.error(
                    format!("{path}.priority"),
                    format!("must be 0, 1 or 2, got {n}"),
                );
                DEFAULT_PRIORITY as u8
            }
        };
        let default_weight = keys.first().map_or(1.0, |k| k.weight);
        let weight = weight(p.weight, default_weight, &format!("{path}.weight"), c);
        let mut provider = ProviderConfig {
            name,
            kind,
            enabled: p.enabled.unwrap_or(true),
            priority,
            // As in Go, a weight of 0 counts as 1 between providers.
            weight: if weight > 0.0 { weight } else { 1.0 },
            base_url,
            models,
            model_mapping,
            default_model: None,
            pooling,
            keys,
            options: p.options,
        };
        if !kind.takes_aws_credentials() {
            for (j, k) in provider.keys.iter().enumerate() {
                if k.aws.is_some() {
                    c.error(
                        format!("{path}.keys[{j}].aws_access_key_id"),
                        format!("is for type bedrock; type {} takes key", kind.name()),
                    );
                }
            }
        }
        if !kind.uses_tokens() {
            for (j, k) in provider.keys.iter().enumerate() {
                if k.gcp_credentials_file.is_some() {
                    c.error(
                        format!("{path}.keys[{j}].gcp_credentials_file"),
                        format!("is for type vertex; type {} takes key", kind.name()),
                    );
                }
            }
        }
        if checked_kind {
            let errors = kind.configure(&mut provider, base_url_given, &path);
            if provider.enabled {
                c.errors.extend(errors);
            } else {
                // A disabled provider must not stop a config from loading (the Go example
                // config lists incomplete cloud providers, disabled): say what it lacks.
                for e in errors {
                    c.warn(format!("{e} (the provider is disabled)"));
                }
            }
        }
        out.push(provider);
    }

    if out.is_empty() {
        // The Go relay accepts a config without providers (a placeholder, or a docs snippet of
        // one section): so does this one, loudly.
        c.warn(
            "providers: none configured; requests will be refused (add e.g. \
             - { name: anthropic, type: anthropic })"
                .to_string(),
        );
    } else if out.iter().all(|p| !p.enabled) {
        c.warn("providers: every provider is disabled; requests will be refused".to_string());
    }
    out
}

/// An absolute http(s) URL with a host; no credentials, query or fragment.
pub fn parse_base_url(text: &str) -> Result<BaseUrl, String> {
    // The URL is never quoted back: it could carry credentials (`https://user:pass@host`).
    if text.contains('#') {
        return Err("must not have a #fragment".to_string());
    }
    let uri: Uri = text.parse().map_err(|_| {
        "is not a valid URL (expected e.g. https://api.example.com/prefix)".to_string()
    })?;
    let tls = match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
        Some("https") => true,
        Some("http") => false,
        Some(_) => return Err("must be an http:// or https:// URL".to_string()),
        None => return Err("must be an absolute URL starting with http:// or https://".to_string()),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| "must include a host".to_string())?;
    if authority.as_str().contains('@') {
        return Err(
            "must not contain credentials (user:password@); configure keys under `keys`"
                .to_string(),
        );
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    if host.is_empty() {
        return Err("must include a host".to_string());
    }
    let port = match authority.port_u16() {
        Some(0) => return Err("port must be 1-65535".to_string()),
        Some(p) => p,
        None if authority.as_str().ends_with(':') => {
            return Err("has an empty port".to_string());
        }
        None if tls => 443,
        None => 80,
    };
    if uri.query().is_some() {
        return Err("must not have a ?query".to_string());
    }
    let path_prefix = uri.path().trim_end_matches('/').to_string();
    Ok(BaseUrl {
        tls,
        host,
        port,
        path_prefix,
    })
}

/// Trimmed, duplicates dropped (first one kept, order kept) in linear time: a list of 100,000
/// models must not take a quadratic scan.
pub(super) fn string_list(raw: Vec<String>, path: &str, c: &mut Ctx) -> Vec<String> {
    let mut out = Vec::with_capacity(raw.len());
    let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
    for (i, s) in raw.into_iter().enumerate() {
        let s = s.trim();
        if s.is_empty() {
            c.error(format!("{path}[{i}]"), "must not be empty");
        } else if seen.insert(s.to_string()) {
            out.push(s.to_string());
        }
    }
    out
}

fn string_map(raw: HashMap<String, String>, path: &str, c: &mut Ctx) -> HashMap<String, String> {
    let mut out = HashMap::with_capacity(raw.len());
    for (k, v) in raw {
        let (k, v) = (k.trim().to_string(), v.trim().to_string());
        if k.is_empty() {
            c.error(path, "has an empty model name as a key");
        } else if v.is_empty() {
            c.error(format!("{path}[{k:?}]"), "must not be empty");
        } else {
            out.insert(k, v);
        }
    }
    out
}

/// Bounds of `pooling.max_cooldown_ms`: a key benched for less than a second would be hammered
/// by a throttling upstream; for more than a day, it is as good as lost.
const MIN_COOLDOWN_CAP_MS: i64 = 1_000;
const MAX_COOLDOWN_CAP_MS: i64 = 86_400_000;

fn pooling(raw: RawPooling, provider_path: &str, c: &mut Ctx) -> PoolingConfig {
    let strategy = match raw.strategy.as_deref().map(str::trim) {
        None | Some("") => Strategy::default(),
        Some(s) => Strategy::parse(&s.to_ascii_lowercase()).unwrap_or_else(|| {
            c.error(
                format!("{provider_path}.pooling.strategy"),
                format!(
                    "unknown strategy {} (one of: least_loaded, round_robin, random, weighted)",
                    shown(s)
                ),
            );
            Strategy::default()
        }),
    };
    let max_wait_ms = non_negative(
        raw.max_wait_ms,
        0,
        &format!("{provider_path}.pooling.max_wait_ms"),
        c,
    );
    let max_cooldown_path = format!("{provider_path}.pooling.max_cooldown_ms");
    let default_cooldown = crate::pool::DEFAULT_MAX_COOLDOWN.as_millis() as i64;
    let max_cooldown_ms = match raw.max_cooldown_ms {
        None => default_cooldown,
        Some(ms) if (MIN_COOLDOWN_CAP_MS..=MAX_COOLDOWN_CAP_MS).contains(&ms) => ms,
        Some(ms) => {
            c.error(
                max_cooldown_path,
                format!(
                    "must be from {MIN_COOLDOWN_CAP_MS} (1 s) to {MAX_COOLDOWN_CAP_MS} (24 h), \
                     got {ms}"
                ),
            );
            default_cooldown
        }
    };
    PoolingConfig {
        strategy,
        enabled: raw.enabled,
        max_wait: Duration::from_millis(max_wait_ms as u64),
        max_cooldown: Duration::from_millis(max_cooldown_ms as u64),
    }
}

/// `aws_access_key_id` + `aws_secret_access_key` (+ `aws_session_token`) of a key, both or
/// neither.
fn aws_credential(k: &RawKey, path: &str, c: &mut Ctx) -> Option<AwsCredential> {
    fn field(v: &Option<String>) -> Option<&str> {
        v.as_deref().map(str::trim).filter(|v| !v.is_empty())
    }
    match (field(&k.aws_access_key_id), field(&k.aws_secret_access_key)) {
        (Some(id), Some(secret)) => Some(AwsCredential {
            access_key_id: id.to_owned(),
            secret_access_key: Secret::new(secret),
            session_token: field(&k.aws_session_token).map(Secret::new),
        }),
        (None, None) => None,
        (Some(_), None) => {
            c.error(
                format!("{path}.aws_secret_access_key"),
                "is required with aws_access_key_id",
            );
            None
        }
        (None, Some(_)) => {
            c.error(
                format!("{path}.aws_access_key_id"),
                "is required with aws_secret_access_key",
            );
            None
        }
    }
}

fn keys(raw: Vec<RawKey>, provider_path: &str, c: &mut Ctx) -> Vec<KeyConfig> {
    let mut out: Vec<KeyConfig> = Vec::with_capacity(raw.len());
    // fingerprint → index, id → index: to report duplicates by position, never by value.
    let mut by_fp: HashMap<u64, usize> = HashMap::new();
    let mut by_id: HashMap<String, usize> = HashMap::new();
    for (i, k) in raw.into_iter().enumerate() {
        let path = format!("{provider_path}.keys[{i}]");
        let credentials_file = k
            .gcp_credentials_file
            .as_deref()
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .map(std::path::PathBuf::from);
        let aws = aws_credential(&k, &path, c);
        let secret = match (k.key.as_deref().map(str::trim), &credentials_file) {
            _ if aws.is_some() => {
                if k.key.is_some() || credentials_file.is_some() {
                    c.error(
                        format!("{path}.aws_access_key_id"),
                        "give either an AWS credential or key, not both",
                    );
                }
                aws.as_ref().map(|a| format!("aws:{}", a.access_key_id))
            }
            (Some(_), Some(_)) => {
                c.error(
                    format!("{path}.gcp_credentials_file"),
                    "give either key or gcp_credentials_file, not both",
                );
                None
            }
            (None, Some(file)) => Some(format!("gcp:{}", file.display())),
            (key, None) => match key {
                None => {
                    c.error(format!("{path}.key"), "is required");
                    None
                }
                Some("") => {
                    c.error(
                    format!("{path}.key"),
                    "is empty (if it comes from an environment variable, that variable is empty); \
                     remove the entry for passthrough of the clients' own credentials",
                );
                    None
                }
                // Sent as a header value on every request: refuse what cannot be sent rather than
                // have every request on this key fail. The message never shows the key.
                Some(s) if !header_safe(s) => {
                    c.error(
                        format!("{path}.key"),
                        "contains a space, a control character or a non-ASCII character, which an \
                     HTTP header cannot carry (a key pasted with a line break?)",
                    );
                    None
                }
                Some(s) => Some(s.to_string()),
            },
        };
        let fp = secret.as_deref().map(key_fingerprint);
        if let Some(fp) = fp {
            if let Some(first) = by_fp.get(&fp) {
                c.error(
                    format!("{path}.key"),
                    format!("same key as {provider_path}.keys[{first}]"),
                );
            }
            by_fp.entry(fp).or_insert(i);
        }

        let name = k
            .name
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_string);
        if let Some(n) = &name {
            // Names are shown in logs and status output; a key pasted into `name` would leak.
            if secret.as_deref() == Some(n.as_str()) || n.starts_with("sk-ant-") {
                c.error(
                    format!("{path}.name"),
                    "looks like the API key itself; names are shown in logs, use a label",
                );
            }
        }
        let id = match (&name, fp) {
            (Some(n), _) => n.clone(),
            (None, Some(fp)) => fingerprint_id(fp),
            (None, None) => format!("key-{i}"),
        };
        // A repeated secret was reported above (and repeats its auto id); anything else that
        // collides comes from names.
        let repeated_secret = fp.is_some_and(|f| by_fp.get(&f) != Some(&i));
        if let (Some(first), false) = (by_id.get(&id), repeated_secret) {
            c.error(
                format!("{path}.name"),
                format!(
                    "duplicate key id {id:?} (also {provider_path}.keys[{first}]); give each key \
                     a distinct name"
                ),
            );
        }
        by_id.entry(id.clone()).or_insert(i);

        let limit = |v: Option<i64>, field: &str, c: &mut Ctx| -> u64 {
            non_negative(v, 0, &format!("{path}.{field}"), c) as u64
        };
        let rpm = limit(k.rpm_limit, "rpm_limit", c);
        let mut itpm = limit(k.itpm_limit, "itpm_limit", c);
        let mut otpm = limit(k.otpm_limit, "otpm_limit", c);
        let tpm = limit(k.tpm_limit, "tpm_limit", c);
        // As the Go cc-relay (KeyConfig.GetEffectiveTPM): the legacy combined limit applies only
        // when neither split limit is set, and is split equally between input and output.
        if tpm > 0 {
            if itpm == 0 && otpm == 0 {
                itpm = tpm / 2;
                otpm = tpm / 2;
            } else {
                c.warn(format!(
                    "{path}.tpm_limit: ignored because itpm_limit/otpm_limit are set"
                ));
            }
        }

        let priority = match k.priority.unwrap_or(DEFAULT_PRIORITY) {
            p @ 0..=2 => p as u8,
            p => {
                c.error(
                    format!("{path}.priority"),
                    format!("must be 0, 1 or 2, got {p}"),
                );
                DEFAULT_PRIORITY as u8
            }
        };
        let weight = weight(k.weight, 1.0, &format!("{path}.weight"), c);

        let max_concurrent = match k.max_concurrent {
            None => 0,
            Some(n @ 0..=1_000_000) => n as u32,
            Some(n) => {
                c.error(
                    format!("{path}.max_concurrent"),
                    format!("must be from 0 (no cap) to 1000000, got {n}"),
                );
                0
            }
        };

        if let Some(secret) = secret {
            out.push(KeyConfig {
                key: Secret::new(secret),
                id,
                rpm_limit: rpm,
                itpm_limit: itpm,
                otpm_limit: otpm,
                priority,
                weight,
                max_concurrent,
                gcp_credentials_file: credentials_file,
                aws,
                aws_chain: false,
            });
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// routing, logging
// ---------------------------------------------------------------------------------------------

fn routing(raw: RawRouting, providers: &[ProviderConfig], c: &mut Ctx) -> RoutingConfig {
    let names = || {
        providers
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let strategy = match raw
        .strategy
        .as_deref()
        .map(|s| s.trim().to_ascii_lowercase())
    {
        None => RoutingStrategy::Failover,
        Some(s) if s.is_empty() => RoutingStrategy::Failover,
        Some(s) => match RoutingStrategy::parse(&s) {
            Some(strategy) => strategy,
            None => match OLDER_GO_STRATEGIES.iter().find(|(old, _)| *old == s) {
                Some(&(old, now)) => {
                    c.warn(format!(
                        "routing.strategy: {old} is an older Go cc-relay name; it is {} here",
                        now.as_str()
                    ));
                    now
                }
                None => {
                    let known: Vec<&str> = RoutingStrategy::ALL.iter().map(|(n, _)| *n).collect();
                    c.error(
                        "routing.strategy",
                        format!(
                            "unknown strategy {} (one of: {})",
                            shown(&s),
                            known.join(", ")
                        ),
                    );
                    RoutingStrategy::Failover
                }
            },
        },
    };

    let model_mapping = string_map(raw.model_mapping, "routing.model_mapping", c);
    if strategy == RoutingStrategy::ModelBased {
        // As in Go: model-name prefix → provider name.
        let mut prefixes: Vec<&String> = model_mapping.keys().collect();
        prefixes.sort();
        for prefix in prefixes {
            let target = &model_mapping[prefix];
            if !providers.iter().any(|p| &p.name == target) {
                c.error(
                    format!("routing.model_mapping[{prefix:?}]"),
                    format!("no provider named {target:?} (providers: {})", names()),
                );
            }
        }
    } else if model_mapping
        .values()
        .any(|v| providers.iter().any(|p| &p.name == v))
    {
        // Same key, two meanings: say so rather than send requests for a model named "zai".
        c.warn(
            "routing.model_mapping: maps model-name prefixes to providers only with strategy \
             model_based (as in the Go cc-relay); with this strategy it rewrites model names \
             exactly (old name: new name), and some values here are provider names"
                .to_string(),
        );
    }

    let default_provider = match raw.default_provider.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(d) => {
            match providers.iter().find(|p| p.name == d) {
                // A config with no providers (a placeholder, as Go allows) names none yet.
                None if providers.is_empty() => c.warn(format!(
                    "routing.default_provider: no provider named {d:?} (there are none)"
                )),
                None => c.error(
                    "routing.default_provider",
                    format!("no provider named {d:?} (providers: {})", names()),
                ),
                Some(p) if !p.enabled => c.warn(format!(
                    "routing.default_provider: provider {d:?} is disabled, so there is no default"
                )),
                Some(_) => {}
            }
            Some(d.to_string())
        }
    };

    let max_attempts = match raw.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS) {
        n @ 1..=MAX_MAX_ATTEMPTS => n as u32,
        n => {
            c.error(
                "routing.max_attempts",
                format!("must be between 1 and {MAX_MAX_ATTEMPTS}, got {n}"),
            );
            DEFAULT_MAX_ATTEMPTS as u32
        }
    };
    let failover_timeout = match raw.failover_timeout {
        // Go used its default for 0 as well.
        None | Some(0) => DEFAULT_FAILOVER_TIMEOUT_MS,
        Some(n) if n > 0 => n,
        Some(n) => {
            c.error(
                "routing.failover_timeout",
                format!("must be >= 0 (ms), got {n}"),
            );
            DEFAULT_FAILOVER_TIMEOUT_MS
        }
    };
    let sticky_max_sessions = match raw.sticky_max_sessions {
        None => 16_384,
        Some(n @ 1..=16_777_216) => n,
        Some(n) => {
            c.error(
                "routing.sticky_max_sessions",
                format!("must be from 1 to 16777216, got {n}"),
            );
            16_384
        }
    };
    let sticky_ttl_ms = match raw.sticky_ttl_ms {
        None => 3_600_000,
        Some(n) if n > 0 => n,
        Some(n) => {
            c.error("routing.sticky_ttl_ms", format!("must be > 0, got {n}"));
            3_600_000
        }
    };

    RoutingConfig {
        strategy,
        model_mapping,
        default_provider,
        max_attempts,
        failover_timeout: Duration::from_millis(failover_timeout as u64),
        sticky_sessions: raw.sticky_sessions.unwrap_or(true),
        sticky_max_sessions: sticky_max_sessions as usize,
        sticky_ttl: Duration::from_millis(sticky_ttl_ms as u64),
        debug: raw.debug.unwrap_or(false),
    }
}

/// Older strategy names from the Go cc-relay's documentation, and what they are here.
const OLDER_GO_STRATEGIES: [(&str, RoutingStrategy); 6] = [
    ("simple-shuffle", RoutingStrategy::Shuffle),
    ("round-robin", RoutingStrategy::RoundRobin),
    ("least-busy", RoutingStrategy::LeastLoaded),
    ("model-based", RoutingStrategy::ModelBased),
    ("cost-based", RoutingStrategy::Failover),
    ("latency-based", RoutingStrategy::Failover),
];

const DEFAULT_FAILOVER_TIMEOUT_MS: i64 = 30_000;

fn metrics(raw: RawMetrics, c: &mut Ctx) -> MetricsConfig {
    let listen = match raw.prometheus_listen.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(text) => match parse_listen(text) {
            Ok(addr) => Some(addr),
            Err(m) => {
                c.error("metrics.prometheus_listen", m);
                None
            }
        },
    };
    let endpoint = match raw.prometheus_endpoint.as_deref().map(str::trim) {
        None | Some("") => "/metrics".to_string(),
        Some(p) if p.starts_with('/') && !p.contains(char::is_whitespace) => p.to_string(),
        Some(p) => {
            c.error(
                "metrics.prometheus_endpoint",
                format!("must be a path starting with /, got {}", shown(p)),
            );
            "/metrics".to_string()
        }
    };
    MetricsConfig {
        enabled: raw.enabled.unwrap_or(false),
        listen,
        endpoint,
    }
}

fn health(raw: RawHealth, c: &mut Ctx) -> HealthConfig {
    let d = HealthConfig::default();
    let positive = |v: Option<i64>, default: i64, path: &str, c: &mut Ctx| match v {
        // Go used its default for 0.
        None | Some(0) => default,
        Some(n) if n > 0 => n,
        Some(n) => {
            c.error(path, format!("must be > 0, got {n}"));
            default
        }
    };
    let cb = raw.circuit_breaker;
    let failure_threshold = positive(
        cb.failure_threshold,
        d.failure_threshold.into(),
        "health.circuit_breaker.failure_threshold",
        c,
    );
    let open_ms = positive(
        cb.open_duration_ms,
        d.open_duration.as_millis() as i64,
        "health.circuit_breaker.open_duration_ms",
        c,
    );
    let probes = positive(
        cb.half_open_probes,
        d.half_open_probes.into(),
        "health.circuit_breaker.half_open_probes",
        c,
    );
    let interval_ms = positive(
        raw.health_check.interval_ms,
        d.health_check_interval.as_millis() as i64,
        "health.health_check.interval_ms",
        c,
    );
    HealthConfig {
        failure_threshold: u32::try_from(failure_threshold).unwrap_or(u32::MAX),
        open_duration: Duration::from_millis(open_ms as u64),
        half_open_probes: u32::try_from(probes).unwrap_or(u32::MAX),
        health_check: raw.health_check.enabled.unwrap_or(true),
        health_check_interval: Duration::from_millis(interval_ms as u64),
    }
}

fn logging(raw: RawLogging, c: &mut Ctx) -> LoggingConfig {
    let level = match raw.level.as_deref().map(|s| s.trim().to_ascii_lowercase()) {
        None => "info".to_string(),
        Some(l) if l.is_empty() => "info".to_string(),
        Some(l) if l == "warning" => "warn".to_string(),
        Some(l) if ["error", "warn", "info", "debug", "trace"].contains(&l.as_str()) => l,
        Some(l) => {
            c.error(
                "logging.level",
                format!(
                    "unknown level {} (one of: error, warn, info, debug, trace)",
                    shown(&l)
                ),
            );
            "info".to_string()
        }
    };
    let format = match raw.format.as_deref().map(|s| s.trim().to_ascii_lowercase()) {
        None => "text".to_string(),
        Some(f) if f.is_empty() => "text".to_string(),
        // Go's names for its human-readable format.
        Some(f) if f == "text" || f == "console" || f == "pretty" => "text".to_string(),
        Some(f) if f == "json" => f,
        Some(f) => {
            c.error(
                "logging.format",
                format!("unknown format {} (one of: text, json)", shown(&f)),
            );
            "text".to_string()
        }
    };
    let output = match raw.output.as_deref().map(str::trim) {
        None | Some("") => "stderr".to_string(),
        Some(o) if o.eq_ignore_ascii_case("stdout") || o.eq_ignore_ascii_case("stderr") => {
            o.to_ascii_lowercase()
        }
        // A file, appended to (and reopened on SIGUSR1, for logrotate). Its directory must
        // exist: the relay creates files, not directories.
        Some(path) => {
            let dir = std::path::Path::new(path)
                .parent()
                .filter(|d| !d.as_os_str().is_empty());
            if dir.is_some_and(|d| !d.is_dir()) {
                c.error(
                    "logging.output",
                    format!(
                        "must be stdout, stderr or a file in an existing directory; {} does not \
                         exist",
                        dir.map(|d| d.display().to_string()).unwrap_or_default()
                    ),
                );
                "stderr".to_string()
            } else {
                path.to_string()
            }
        }
    };
    LoggingConfig {
        level,
        format,
        output,
    }
}

/// A user-supplied value quoted for an error message, unless it could be a credential written
/// in the file (what a `${VAR}` put anywhere in it is hidden from every message by the loader).
fn shown(s: &str) -> String {
    if s.len() > 64 || s.starts_with("sk-") {
        "(value not shown)".to_string()
    } else {
        format!("{s:?}")
    }
}
