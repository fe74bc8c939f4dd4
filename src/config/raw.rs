//! The configuration exactly as users write it, and the schema walk that guards it.
//!
//! Loading is two steps. First the parsed YAML tree is walked against [`TOP`], a schema of every
//! key we know: unknown keys are errors naming their path (a typo such as `rpm_limt` must not
//! pass silently), keys of the Go cc-relay that we do not implement are dropped with a warning
//! (so a Go config keeps working after switching binaries), `${VAR}` references are expanded,
//! and scalars are checked and normalised to the type the field needs. Then the normalised tree,
//! which now matches the serde types below by construction, is deserialized into them.
//! `deny_unknown_fields` stays on them as a second line of defence.
//!
//! `serde(deny_unknown_fields)` alone could not do this: it cannot tell a Go key from a typo, it
//! stops at the first problem, and its messages quote the offending value, which may be a key.

use std::collections::HashMap;

use serde::Deserialize;
use serde_yaml::{Mapping, Number, Value};

use super::error::ConfigError;
use super::expand::{expand, expand_tracked, Env};

// ---------------------------------------------------------------------------------------------
// Serde types
// ---------------------------------------------------------------------------------------------

// No `Debug` on these: they hold secrets as plain strings.

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawConfig {
    pub server: RawServer,
    pub providers: Vec<RawProvider>,
    pub routing: RawRouting,
    pub health: RawHealth,
    pub metrics: RawMetrics,
    pub logging: RawLogging,
    pub clients: Vec<RawClient>,
    pub shared_state: Option<RawSharedState>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawSharedState {
    pub redis_url: Option<String>,
    pub timeout_ms: Option<i64>,
    pub namespace: Option<String>,
    pub min_relays: Option<i64>,
    pub lease_seconds: Option<i64>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawClient {
    pub name: Option<String>,
    pub key: Option<String>,
    pub key_sha256: Option<String>,
    pub models: Vec<String>,
    pub providers: Vec<String>,
    pub rpm_limit: Option<i64>,
    pub itpm_limit: Option<i64>,
    pub otpm_limit: Option<i64>,
    pub max_concurrent: Option<i64>,
    pub daily_token_budget: Option<i64>,
    pub monthly_token_budget: Option<i64>,
    pub admin: Option<bool>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawMetrics {
    pub enabled: Option<bool>,
    pub prometheus_listen: Option<String>,
    pub prometheus_endpoint: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawServer {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub timeout_ms: Option<i64>,
    pub connect_timeout_ms: Option<i64>,
    pub max_body_bytes: Option<i64>,
    pub max_concurrent: Option<i64>,
    pub threads: Option<i64>,
    pub grace_period_seconds: Option<i64>,
    pub graceful_shutdown_timeout_seconds: Option<i64>,
    pub pid_file: Option<String>,
    pub upgrade_sock: Option<String>,
    pub auth: RawAuth,
    pub trusted_proxies: Vec<String>,
    /// Go's legacy spelling of `server.auth.api_key`; `auth.api_key` wins when both are set.
    pub api_key: Option<String>,
    pub tls: Option<RawTls>,
    pub enable_http2: Option<bool>,
    pub idle_timeout_ms: Option<i64>,
    pub client_body_timeout_ms: Option<i64>,
    pub upstream_idle_timeout_ms: Option<i64>,
    pub max_buffered_body_bytes: Option<i64>,
    pub max_buffered_body_bytes_per_address: Option<i64>,
    pub min_body_rate_bytes_per_s: Option<i64>,
    pub max_header_bytes: Option<i64>,
    pub client_header_timeout_ms: Option<i64>,
    pub max_connections: Option<i64>,
    pub state_file: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawTls {
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawAuth {
    pub api_key: Option<String>,
    pub allow_bearer: Option<bool>,
    /// Go's alias of `allow_bearer` (Claude Code subscriptions authenticate with Bearer tokens).
    pub allow_subscription: Option<bool>,
    pub bearer_secret: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawProvider {
    pub name: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub enabled: Option<bool>,
    pub priority: Option<i64>,
    pub weight: Option<f64>,
    pub base_url: Option<String>,
    pub models: Vec<String>,
    pub model_mapping: HashMap<String, String>,
    pub pooling: RawPooling,
    pub keys: Vec<RawKey>,
    /// The provider kind's own fields (`ProviderKind::config_fields`), already walked; the
    /// walker puts them here, a file cannot (`options` is not a field of the schema).
    pub options: Mapping,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawPooling {
    pub strategy: Option<String>,
    pub enabled: Option<bool>,
    pub max_wait_ms: Option<i64>,
    pub max_cooldown_ms: Option<i64>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawKey {
    pub key: Option<String>,
    pub gcp_credentials_file: Option<String>,
    pub aws_access_key_id: Option<String>,
    pub aws_secret_access_key: Option<String>,
    pub aws_session_token: Option<String>,
    pub name: Option<String>,
    pub rpm_limit: Option<i64>,
    pub itpm_limit: Option<i64>,
    pub otpm_limit: Option<i64>,
    /// Legacy combined limit (Go: split equally between input and output).
    pub tpm_limit: Option<i64>,
    pub priority: Option<i64>,
    pub weight: Option<f64>,
    pub max_concurrent: Option<i64>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawRouting {
    pub strategy: Option<String>,
    pub model_mapping: HashMap<String, String>,
    pub default_provider: Option<String>,
    pub max_attempts: Option<i64>,
    pub failover_timeout: Option<i64>,
    pub sticky_sessions: Option<bool>,
    pub sticky_max_sessions: Option<i64>,
    pub sticky_ttl_ms: Option<i64>,
    pub debug: Option<bool>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawHealth {
    pub circuit_breaker: RawCircuitBreaker,
    pub health_check: RawHealthCheck,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawCircuitBreaker {
    pub failure_threshold: Option<i64>,
    pub open_duration_ms: Option<i64>,
    pub half_open_probes: Option<i64>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawHealthCheck {
    pub enabled: Option<bool>,
    pub interval_ms: Option<i64>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawLogging {
    pub level: Option<String>,
    pub format: Option<String>,
    pub output: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Schema
// ---------------------------------------------------------------------------------------------

/// What a key's value must be.
pub enum Node {
    Str,
    /// A credential clients must present (`server.auth.*`): a string, where a `${VAR}` set to
    /// the empty string is an error rather than "not set", because it would open the relay to
    /// everyone without a word. An explicit empty default (`${VAR:-}`) still means "not set".
    ClientSecret,
    Int,
    Float,
    Bool,
    StrList,
    /// A mapping of free-form string keys to strings (`model_mapping`).
    StrMap,
    Map(&'static [(&'static str, Node)]),
    List(&'static Node),
    /// A key of the Go cc-relay that this relay does not implement: accepted, warned about,
    /// dropped (with its whole subtree, unchecked: we do not use it).
    GoIgnored,
}

use Node::*;

pub(crate) static TOP: Node = Map(&[
    ("server", SERVER),
    ("providers", List(&PROVIDER)),
    ("routing", ROUTING),
    ("logging", LOGGING),
    // Go sections for subsystems this relay does not have (or does differently).
    ("health", HEALTH),
    ("cache", GoIgnored),
    ("grpc", GoIgnored),
    ("metrics", METRICS),
    ("clients", List(&CLIENT)),
    ("shared_state", SHARED_STATE),
]);

/// `shared_state`: key budgets and cooldowns shared by many relays through Redis or Valkey.
const SHARED_STATE: Node = Map(&[
    ("redis_url", Str),
    ("timeout_ms", Int),
    ("namespace", Str),
    ("min_relays", Int),
    ("lease_seconds", Int),
]);

/// `clients[]`: who may use the relay, with their own key, allow-lists, quotas and budgets.
static CLIENT: Node = Map(&[
    ("name", Str),
    ("key", ClientSecret),
    ("key_sha256", Str),
    ("models", StrList),
    ("providers", StrList),
    ("rpm_limit", Int),
    ("itpm_limit", Int),
    ("otpm_limit", Int),
    ("max_concurrent", Int),
    ("daily_token_budget", Int),
    ("monthly_token_budget", Int),
    ("admin", Bool),
]);

const SERVER: Node = Map(&[
    ("listen", Str),
    ("admin_listen", Str),
    ("timeout_ms", Int),
    ("connect_timeout_ms", Int),
    ("max_body_bytes", Int),
    ("max_concurrent", Int),
    ("threads", Int),
    ("grace_period_seconds", Int),
    ("graceful_shutdown_timeout_seconds", Int),
    ("pid_file", Str),
    ("upgrade_sock", Str),
    ("auth", AUTH),
    ("trusted_proxies", StrList),
    ("api_key", ClientSecret),
    ("tls", TLS),
    ("enable_http2", Bool),
    ("idle_timeout_ms", Int),
    ("client_body_timeout_ms", Int),
    ("upstream_idle_timeout_ms", Int),
    ("max_buffered_body_bytes", Int),
    ("max_buffered_body_bytes_per_address", Int),
    ("min_body_rate_bytes_per_s", Int),
    ("max_header_bytes", Int),
    ("client_header_timeout_ms", Int),
    ("max_connections", Int),
    ("state_file", Str),
]);

const TLS: Node = Map(&[("cert_file", Str), ("key_file", Str)]);

const AUTH: Node = Map(&[
    ("api_key", ClientSecret),
    ("allow_bearer", Bool),
    ("allow_subscription", Bool),
    ("bearer_secret", ClientSecret),
]);

/// Provider fields the Go version used for its bedrock / vertex / azure types (both the
/// released struct fields and the older documented spellings).
const CLOUD_FIELDS: [&str; 12] = [
    "aws_region",
    "aws_access_key_id",
    "aws_secret_access_key",
    "gcp_project_id",
    "gcp_region",
    "azure_resource_name",
    "azure_deployment_id",
    "azure_api_version",
    "region",
    "project_id",
    "resource",
    "auth",
];

static PROVIDER: Node = Map(&[
    ("name", Str),
    ("type", Str),
    ("enabled", Bool),
    ("priority", Int),
    ("weight", Float),
    ("base_url", Str),
    ("models", StrList),
    ("model_mapping", StrMap),
    ("pooling", POOLING),
    ("keys", List(&KEY)),
    ("aws_region", GoIgnored),
    ("aws_access_key_id", GoIgnored),
    ("aws_secret_access_key", GoIgnored),
    ("gcp_project_id", GoIgnored),
    ("gcp_region", GoIgnored),
    ("azure_resource_name", GoIgnored),
    ("azure_deployment_id", GoIgnored),
    ("azure_api_version", GoIgnored),
    ("region", GoIgnored),
    ("project_id", GoIgnored),
    ("resource", GoIgnored),
    ("auth", GoIgnored),
]);

const POOLING: Node = Map(&[
    ("strategy", Str),
    ("enabled", Bool),
    ("max_wait_ms", Int),
    ("max_cooldown_ms", Int),
]);

static KEY: Node = Map(&[
    ("key", Str),
    // type: vertex: a Google credentials file instead of a key.
    ("gcp_credentials_file", Str),
    // type: bedrock: an AWS credential instead of a key (a key is a Bedrock API key).
    ("aws_access_key_id", Str),
    ("aws_secret_access_key", Str),
    ("aws_session_token", Str),
    ("name", Str),
    ("rpm_limit", Int),
    ("itpm_limit", Int),
    ("otpm_limit", Int),
    ("tpm_limit", Int),
    ("priority", Int),
    ("weight", Float),
    ("max_concurrent", Int),
]);

const ROUTING: Node = Map(&[
    ("strategy", Str),
    ("model_mapping", StrMap),
    ("default_provider", Str),
    ("max_attempts", Int),
    ("failover_timeout", Int),
    ("sticky_sessions", Bool),
    ("sticky_max_sessions", Int),
    ("sticky_ttl_ms", Int),
    ("debug", Bool),
    // Older Go documentation.
    ("failover", GoIgnored),
    ("cost_based", GoIgnored),
]);

const METRICS: Node = Map(&[
    ("enabled", Bool),
    ("prometheus_listen", Str),
    ("prometheus_endpoint", Str),
]);

const HEALTH: Node = Map(&[
    ("circuit_breaker", CIRCUIT_BREAKER),
    ("health_check", HEALTH_CHECK),
    // Older Go documentation (`config init` template): the Go loader ignored them too.
    ("check_interval_seconds", GoIgnored),
]);

const CIRCUIT_BREAKER: Node = Map(&[
    ("failure_threshold", Int),
    ("open_duration_ms", Int),
    ("half_open_probes", Int),
    ("recovery_timeout_seconds", GoIgnored),
    ("triggers", GoIgnored),
]);

const HEALTH_CHECK: Node = Map(&[("enabled", Bool), ("interval_ms", Int)]);

const LOGGING: Node = Map(&[
    ("level", Str),
    ("format", Str),
    ("output", Str),
    ("pretty", GoIgnored),
    ("debug_options", GoIgnored),
    // Older Go documentation.
    ("file", GoIgnored),
]);

/// Every Go key accepted with a warning, as dotted paths (`providers[].x` for provider fields).
pub fn go_ignored_keys() -> Vec<String> {
    fn collect(node: &Node, path: &str, out: &mut Vec<String>) {
        match node {
            Map(fields) => {
                for (name, child) in fields.iter() {
                    let p = if path.is_empty() {
                        (*name).to_string()
                    } else {
                        format!("{path}.{name}")
                    };
                    collect(child, &p, out);
                }
            }
            List(item) => collect(item, &format!("{path}[]"), out),
            GoIgnored => out.push(path.to_string()),
            _ => {}
        }
    }
    let mut out = Vec::new();
    collect(&TOP, "", &mut out);
    out
}

// ---------------------------------------------------------------------------------------------
// Walk
// ---------------------------------------------------------------------------------------------

pub(crate) struct Walker<'a> {
    env: Env<'a>,
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<String>,
}

impl<'a> Walker<'a> {
    pub fn new(env: Env<'a>) -> Self {
        Walker {
            env,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    fn error(&mut self, path: &str, message: impl Into<String>) {
        let path = if path.is_empty() { "(top level)" } else { path };
        self.errors.push(ConfigError::invalid(path, message));
    }

    /// Checks and normalises `value` against `node`. `None` = drop the key (absent, ignored, or
    /// in error; errors are recorded). `quiet` silences Go-key warnings (inside a provider of a
    /// Go-only type, whose fields are expected to be Go-only).
    pub fn walk(&mut self, value: Value, node: &Node, path: &str, quiet: bool) -> Option<Value> {
        // `key:` with nothing after it is null in YAML; Go treats it as the zero value, we as
        // "not set", which is the same thing here.
        if value.is_null() && !matches!(node, GoIgnored) {
            return None;
        }
        if let Value::Tagged(_) = value {
            self.error(path, "YAML tags (`!name`) are not supported here");
            return None;
        }
        match node {
            Str => self.string(value, path).map(Value::String),
            ClientSecret => self.client_secret(value, path).map(Value::String),
            Int => self.int(value, path),
            Float => self.float(value, path),
            Bool => self.bool(value, path),
            StrList => {
                let items = self.sequence(value, path)?;
                let out = items
                    .into_iter()
                    .enumerate()
                    .filter_map(|(i, v)| {
                        let p = format!("{path}[{i}]");
                        if v.is_null() {
                            self.error(&p, "expected a string, got null");
                            return None;
                        }
                        self.string(v, &p).map(Value::String)
                    })
                    .collect();
                Some(Value::Sequence(out))
            }
            StrMap => {
                let map = self.mapping(value, path)?;
                let mut out = Mapping::new();
                for (k, v) in map {
                    let Some(k) = self.map_key(k, path) else {
                        continue;
                    };
                    let p = map_entry_path(path, &k);
                    let k = match expand(&k, self.env) {
                        Ok(k) => k,
                        Err(errs) => {
                            for e in errs {
                                self.error(&p, e);
                            }
                            continue;
                        }
                    };
                    if v.is_null() {
                        self.error(&p, "expected a string, got null");
                        continue;
                    }
                    if let Some(v) = self.string(v, &p) {
                        out.insert(Value::String(k), Value::String(v));
                    }
                }
                Some(Value::Mapping(out))
            }
            List(item) => {
                let items = self.sequence(value, path)?;
                let out = items
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| {
                        // Keep every position, even a broken one, so that indices in later
                        // messages still match the file.
                        self.walk(v, item, &format!("{path}[{i}]"), quiet)
                            .unwrap_or_else(|| Value::Mapping(Mapping::new()))
                    })
                    .collect();
                Some(Value::Sequence(out))
            }
            Map(fields) => {
                let map = self.mapping(value, path)?;
                // Inside a provider of a Go-only type (rejected or skipped by validation), its
                // Go-only fields are expected: don't warn about each.
                let is_provider = fields.iter().any(|(name, _)| *name == "type");
                let quiet = quiet || (is_provider && is_cloud_provider(&map));
                // A provider's kind adds fields of its own, which take precedence over the Go
                // keys accepted for compatibility (e.g. a cloud kind's `aws_region`).
                let kind_fields = if is_provider {
                    provider_kind_fields(&map)
                } else {
                    &[]
                };
                let mut out = Mapping::new();
                let mut options = Mapping::new();
                for (k, v) in map {
                    let Some(k) = self.map_key(k, path) else {
                        continue;
                    };
                    let p = child_path(path, &k);
                    if let Some((_, child)) = kind_fields.iter().find(|(name, _)| *name == k) {
                        if let Some(v) = self.walk(v, child, &p, quiet) {
                            options.insert(Value::String(k), v);
                        }
                        continue;
                    }
                    match fields.iter().find(|(name, _)| *name == k) {
                        Some((_, GoIgnored)) => {
                            if !quiet {
                                self.warnings.push(format!(
                                    "{p}: accepted for compatibility with the Go cc-relay but \
                                     not implemented; ignored"
                                ));
                            }
                        }
                        Some((_, child)) => {
                            if let Some(v) = self.walk(v, child, &p, quiet) {
                                out.insert(Value::String(k), v);
                            }
                        }
                        None => {
                            let message = unknown_field_message(&k, fields);
                            self.error(&child_path(path, &redact_key(&k)), message);
                        }
                    }
                }
                if !options.is_empty() {
                    out.insert(Value::String("options".into()), Value::Mapping(options));
                }
                Some(Value::Mapping(out))
            }
            GoIgnored => None,
        }
    }

    fn mapping(&mut self, value: Value, path: &str) -> Option<Mapping> {
        match value {
            Value::Mapping(m) => Some(m),
            other => {
                self.error(path, format!("expected a mapping, got {}", kind(&other)));
                None
            }
        }
    }

    fn sequence(&mut self, value: Value, path: &str) -> Option<Vec<Value>> {
        match value {
            Value::Sequence(s) => Some(s),
            other => {
                self.error(path, format!("expected a list, got {}", kind(&other)));
                None
            }
        }
    }

    fn map_key(&mut self, key: Value, path: &str) -> Option<String> {
        match key {
            Value::String(s) => Some(s),
            // `1: x` or `true: x`: YAML typed the key, but it is still text to the user.
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            other => {
                self.error(
                    path,
                    format!("mapping keys must be strings, found {}", kind(&other)),
                );
                None
            }
        }
    }

    /// A string, `${VAR}`-expanded. Numbers and booleans are taken as their text, as Go's YAML
    /// decoder did for string fields (`name: 123`).
    fn string(&mut self, value: Value, path: &str) -> Option<String> {
        match value {
            Value::String(s) => match expand(&s, self.env) {
                Ok(s) => Some(s),
                Err(errs) => {
                    for e in errs {
                        self.error(path, e);
                    }
                    None
                }
            },
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            other => {
                self.error(path, format!("expected a string, got {}", kind(&other)));
                None
            }
        }
    }

    /// A client credential: as [`Self::string`], refusing an empty result that came from a
    /// variable set to the empty string. The message names the variable, never a value.
    fn client_secret(&mut self, value: Value, path: &str) -> Option<String> {
        let Value::String(s) = value else {
            return self.string(value, path);
        };
        match expand_tracked(&s, self.env) {
            Ok(e) if e.text.trim().is_empty() && !e.empty_variables.is_empty() => {
                self.error(
                    path,
                    format!(
                        "is empty because {} is set to the empty string; the relay would then \
                         accept every client without a key. Set it, or write `${{{}:-}}` to \
                         run without this credential on purpose",
                        e.empty_variables.join(", "),
                        e.empty_variables[0]
                    ),
                );
                None
            }
            Ok(e) => Some(e.text),
            Err(errs) => {
                for e in errs {
                    self.error(path, e);
                }
                None
            }
        }
    }

    /// A string field's text for a value that must be parsed as another type: after expansion
    /// (`rpm_limit: ${RPM}` is a string in the YAML tree; Go expanded the text before parsing,
    /// where it became a number).
    fn scalar_text(&mut self, value: Value, path: &str, expected: &str) -> Option<String> {
        match value {
            Value::String(s) => match expand(&s, self.env) {
                Ok(s) => Some(s.trim().to_string()),
                Err(errs) => {
                    for e in errs {
                        self.error(path, e);
                    }
                    None
                }
            },
            other => {
                self.error(path, format!("expected {expected}, got {}", kind(&other)));
                None
            }
        }
    }

    fn int(&mut self, value: Value, path: &str) -> Option<Value> {
        const EXPECTED: &str = "a whole number";
        if let Value::Number(n) = &value {
            if let Some(i) = n.as_i64() {
                return Some(Value::Number(i.into()));
            }
            let message = if n.is_u64() {
                "number too large".to_string()
            } else {
                format!("expected {EXPECTED}, got a fractional number")
            };
            self.error(path, message);
            return None;
        }
        let text = self.scalar_text(value, path, EXPECTED)?;
        // Go's YAML decoder accepted `100_000`.
        match text.replace('_', "").parse::<i64>() {
            Ok(i) if !text.is_empty() => Some(Value::Number(i.into())),
            // Not echoed: the text may have come from an environment variable holding a secret.
            _ => {
                self.error(
                    path,
                    format!("expected {EXPECTED}, got a non-numeric string"),
                );
                None
            }
        }
    }

    fn float(&mut self, value: Value, path: &str) -> Option<Value> {
        const EXPECTED: &str = "a number";
        if let Value::Number(n) = &value {
            return n.as_f64().map(|f| Value::Number(Number::from(f)));
        }
        let text = self.scalar_text(value, path, EXPECTED)?;
        match text.replace('_', "").parse::<f64>() {
            Ok(f) => Some(Value::Number(Number::from(f))),
            Err(_) => {
                self.error(
                    path,
                    format!("expected {EXPECTED}, got a non-numeric string"),
                );
                None
            }
        }
    }

    fn bool(&mut self, value: Value, path: &str) -> Option<Value> {
        const EXPECTED: &str = "true or false";
        if let Value::Bool(b) = value {
            return Some(Value::Bool(b));
        }
        let text = self.scalar_text(value, path, EXPECTED)?;
        // Go's YAML decoder also took YAML 1.1's yes/no/on/off for boolean fields.
        match text.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" => Some(Value::Bool(true)),
            "false" | "no" | "off" => Some(Value::Bool(false)),
            _ => {
                self.error(path, format!("expected {EXPECTED}, got another string"));
                None
            }
        }
    }
}

/// Deserializes a walked tree. It matches the serde types by construction; should it still
/// fail, serde's message is not shown because it quotes values.
pub(crate) fn decode(value: Value) -> Result<RawConfig, ConfigError> {
    serde_yaml::from_value(value).map_err(|_| {
        ConfigError::invalid(
            "(config)",
            "internal error: the checked configuration could not be decoded",
        )
    })
}

/// The fields of the provider kind named by the mapping's `type` (none when it names no kind).
fn provider_kind_fields(map: &Mapping) -> &'static [(&'static str, Node)] {
    match map.get("type") {
        Some(Value::String(t)) => {
            crate::providers::kind_named(t).map_or(&[], |k| k.config_fields())
        }
        _ => &[],
    }
}

fn is_cloud_provider(map: &Mapping) -> bool {
    match map.get("type") {
        // A typed provider's fields are its kind's (or unknown, and said so).
        Some(Value::String(_)) => false,
        // No type: it is a cloud provider if it only makes sense as one.
        None => map
            .keys()
            .filter_map(Value::as_str)
            .any(|k| CLOUD_FIELDS.contains(&k) && k != "auth"),
        _ => false,
    }
}

pub(crate) fn child_path(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Free-form map keys (model names such as `qwen3:32b`) are quoted unless plain.
fn map_entry_path(path: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if plain {
        format!("{path}.{key}")
    } else {
        format!("{path}[{key:?}]")
    }
}

/// A mistyped key is echoed so the user can find it, unless it looks like a pasted credential.
fn redact_key(key: &str) -> String {
    if key.len() > 64 || key.starts_with("sk-") {
        format!("<unknown key of {} characters>", key.chars().count())
    } else {
        key.to_string()
    }
}

fn unknown_field_message(key: &str, fields: &[(&str, Node)]) -> String {
    let known: Vec<&str> = fields
        .iter()
        .filter(|(_, n)| !matches!(n, GoIgnored))
        .map(|(name, _)| *name)
        .collect();
    let closest = known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .min_by_key(|(d, _)| *d)
        .filter(|(d, k)| *d <= 2.max(k.len() / 4));
    match closest {
        Some((_, k)) => format!("unknown field; did you mean `{k}`?"),
        None => format!("unknown field (expected one of: {})", known.join(", ")),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "true/false",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// For an error at `path` (e.g. `providers[0].keys[0].models`): the nearest enclosing table
/// above the field's own whose schema has a field of that name (`providers[0]`), if any. In
/// TOML every line after a `[table]` header belongs to that table, so a provider field written
/// after `[[providers.keys]]` lands in the key: this names where it was meant to go.
pub(crate) fn enclosing_owner(path: &str) -> Option<String> {
    let mut segments: Vec<&str> = path.split('.').collect();
    let field = segments.pop()?;
    let field = field.split('[').next().unwrap_or(field);
    // Walk the schema along the containers, remembering each Map with its path.
    let mut maps: Vec<(String, &'static [(&'static str, Node)])> = Vec::new();
    let mut node: &'static Node = &TOP;
    let mut so_far = String::new();
    if let Map(fields) = node {
        maps.push((String::new(), fields));
    }
    for segment in &segments {
        let mut parts = segment.split('[');
        let name = parts.next()?;
        let Map(fields) = node else {
            return None;
        };
        node = &fields.iter().find(|(n, _)| *n == name)?.1;
        if !so_far.is_empty() {
            so_far.push('.');
        }
        so_far.push_str(segment);
        for _ in parts {
            let List(item) = node else {
                return None;
            };
            node = item;
        }
        if let Map(fields) = node {
            maps.push((so_far.clone(), fields));
        }
    }
    // The field's own container is the last level walked; look above it.
    let own = if matches!(node, Map(_)) {
        maps.len().checked_sub(1)?
    } else {
        maps.len()
    };
    maps[..own]
        .iter()
        .rev()
        .find(|(_, fields)| fields.iter().any(|(n, _)| *n == field))
        .map(|(at, _)| at.clone())
}
