//! Tests of loading, validation, expansion and diffing. Most use an explicit environment map
//! (`load_with_env`); the few that need the process environment or working directory hold
//! `PROCESS_ENV` because both are process-global.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use super::expand::expand;
use super::load::{embedded_with_env, load_with_env};
use super::validate::{parse_base_url, parse_listen};
use super::*;
use crate::pool::Strategy;

static PROCESS_ENV: Mutex<()> = Mutex::new(());

fn lock_env() -> std::sync::MutexGuard<'static, ()> {
    PROCESS_ENV.lock().unwrap_or_else(|e| e.into_inner())
}

fn env_map(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name: &str| map.get(name).cloned()
}

fn load_env(yaml: &str, pairs: &[(&str, &str)]) -> Result<(Config, Vec<String>), ConfigError> {
    load_with_env(yaml, &env_map(pairs))
}

fn load(yaml: &str) -> Config {
    match load_env(yaml, &[]) {
        Ok((c, _)) => c,
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    }
}

fn warnings(yaml: &str) -> Vec<String> {
    match load_env(yaml, &[]) {
        Ok((_, w)) => w,
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    }
}

/// All error lines of an invalid config.
fn errors(yaml: &str) -> Vec<String> {
    errors_env(yaml, &[])
}

fn errors_env(yaml: &str, pairs: &[(&str, &str)]) -> Vec<String> {
    match load_env(yaml, pairs) {
        Ok(_) => panic!("expected an error for:\n{yaml}"),
        Err(e) => e.errors().iter().map(|e| e.to_string()).collect(),
    }
}

fn one_error(yaml: &str) -> String {
    let errs = errors(yaml);
    assert_eq!(errs.len(), 1, "expected one error, got {errs:#?}");
    errs.into_iter().next().unwrap()
}

/// A provider wrapper for tests about one key.
fn with_key(key_fields: &str) -> String {
    format!(
        "providers:\n  - name: a\n    type: anthropic\n    keys:\n      - key: sk-one\n      - {key_fields}\n"
    )
}

const ONE: &str = "providers:\n  - name: anthropic\n    type: anthropic\n";

// ---------------------------------------------------------------------------------------------
// defaults
// ---------------------------------------------------------------------------------------------

#[test]
fn defaults() {
    let c = load(ONE);
    let s = &c.server;
    assert_eq!(s.listen, "127.0.0.1:8787".parse::<SocketAddr>().unwrap());
    assert_eq!(s.upstream_read_timeout, Duration::from_millis(600_000));
    assert_eq!(s.upstream_connect_timeout, Duration::from_millis(10_000));
    assert_eq!(s.max_body_bytes, 32 * 1024 * 1024);
    assert_eq!(s.max_concurrent, 0);
    assert!(s.threads >= 1);
    assert_eq!(s.grace_period, Duration::from_secs(30));
    assert_eq!(s.graceful_shutdown_timeout, Duration::from_secs(5));
    assert_eq!(s.pid_file, Path::new("/tmp/cc-relay.pid"));
    assert_eq!(s.upgrade_sock, Path::new("/tmp/cc-relay_upgrade.sock"));
    assert!(!s.auth.is_enabled());
    assert!(!s.auth.allow_bearer);

    let p = &c.providers[0];
    assert_eq!(p.kind.name(), "anthropic");
    assert!(p.enabled);
    assert_eq!(p.base_url.to_string(), "https://api.anthropic.com");
    assert!(p.keys.is_empty() && p.models.is_empty() && p.model_mapping.is_empty());
    assert_eq!(p.pooling.strategy, Strategy::LeastLoaded);
    assert_eq!(p.pooling.enabled, None);
    assert_eq!(p.pooling.max_wait, Duration::ZERO);

    assert_eq!(c.routing.strategy, RoutingStrategy::Failover);
    assert_eq!(c.routing.max_attempts, 2);
    assert_eq!(c.routing.default_provider, None);
    assert_eq!(
        (
            c.logging.level.as_str(),
            c.logging.format.as_str(),
            c.logging.output.as_str()
        ),
        ("info", "text", "stderr")
    );
}

#[test]
fn key_defaults_and_fields() {
    let c = load(
        "providers:\n  - name: a\n    type: anthropic\n    keys:\n      - key: sk-one\n      \
         - key: sk-two\n        name: second\n        rpm_limit: 50\n        itpm_limit: 30000\n        \
         otpm_limit: 8000\n        priority: 2\n        weight: 2.5\n",
    );
    let k = &c.providers[0].keys;
    assert_eq!(k[0].priority, 1);
    assert_eq!(k[0].weight, 1.0);
    assert_eq!(
        (k[0].rpm_limit, k[0].itpm_limit, k[0].otpm_limit),
        (0, 0, 0)
    );
    assert_eq!(k[0].key.expose(), "sk-one");
    assert_eq!(k[1].id, "second");
    assert_eq!(
        (k[1].rpm_limit, k[1].itpm_limit, k[1].otpm_limit),
        (50, 30000, 8000)
    );
    assert_eq!((k[1].priority, k[1].weight), (2, 2.5));
}

#[test]
fn a_document_without_providers_loads_with_a_warning_as_in_go() {
    for yaml in ["", "# nothing\n", "server: {}\n"] {
        let (c, w) = load_env(yaml, &[]).unwrap();
        assert!(c.providers.is_empty());
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("providers: none configured"), "{w:?}");
    }
}

#[test]
fn a_toml_provider_field_after_a_key_table_says_where_it_belongs() {
    let e = crate::config::load_str_as(
        "[[providers]]\nname = \"a\"\ntype = \"anthropic\"\n[[providers.keys]]\n\
         key = \"k\"\nmodels = [\"m\"]\n",
        crate::config::Format::Toml,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("providers[0].keys[0].models: unknown field")
            && e.contains("`models` is a field of `providers[0]`"),
        "{e}"
    );
    // Not said for a plain typo, nor in YAML.
    let typo = crate::config::load_str_as(
        "[[providers]]\nname = \"a\"\ntype = \"anthropic\"\ncolour = 1\n",
        crate::config::Format::Toml,
    )
    .unwrap_err()
    .to_string();
    assert!(!typo.contains("is a field of"), "{typo}");
}

#[test]
fn null_sections_and_lists_are_absent() {
    let c = load(
        "server:\nproviders:\n  - name: a\n    type: ollama\n    keys:\n    models:\nrouting:\n",
    );
    assert!(c.providers[0].keys.is_empty());
}

#[test]
fn disabled_provider_is_kept_and_marked() {
    let c = load(
        "providers:\n  - name: a\n    type: anthropic\n  - name: b\n    type: zai\n    enabled: false\n",
    );
    assert_eq!(c.providers.len(), 2);
    assert!(c.providers[0].enabled);
    assert!(!c.providers[1].enabled);
}

#[test]
fn all_disabled_warns() {
    let w = warnings("providers:\n  - name: a\n    type: anthropic\n    enabled: false\n");
    assert!(
        w.iter().any(|w| w.contains("every provider is disabled")),
        "{w:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// validation rules, each with its exact path
// ---------------------------------------------------------------------------------------------

#[test]
fn priority_range() {
    assert_eq!(
        one_error(&with_key("key: sk-two\n        priority: 7")),
        "providers[0].keys[1].priority: must be 0, 1 or 2, got 7"
    );
    assert_eq!(
        one_error(&with_key("key: sk-two\n        priority: -1")),
        "providers[0].keys[1].priority: must be 0, 1 or 2, got -1"
    );
}

#[test]
fn weight_must_be_finite_and_non_negative() {
    assert_eq!(
        one_error(&with_key("key: sk-two\n        weight: -1")),
        "providers[0].keys[1].weight: must be a finite number >= 0, got -1"
    );
    assert!(one_error(&with_key("key: sk-two\n        weight: .nan"))
        .starts_with("providers[0].keys[1].weight: must be a finite number >= 0"));
    assert!(one_error(&with_key("key: sk-two\n        weight: .inf"))
        .starts_with("providers[0].keys[1].weight: must be a finite number >= 0"));
    assert_eq!(
        load(&with_key("key: sk-two\n        weight: 0")).providers[0].keys[1].weight,
        0.0
    );
}

#[test]
fn limits_are_non_negative_integers() {
    for field in ["rpm_limit", "itpm_limit", "otpm_limit", "tpm_limit"] {
        assert_eq!(
            one_error(&with_key(&format!("key: sk-two\n        {field}: -5"))),
            format!("providers[0].keys[1].{field}: must be >= 0, got -5")
        );
    }
    assert_eq!(
        one_error(&with_key("key: sk-two\n        rpm_limit: 1.5")),
        "providers[0].keys[1].rpm_limit: expected a whole number, got a fractional number"
    );
    assert_eq!(
        one_error(&with_key("key: sk-two\n        rpm_limit: lots")),
        "providers[0].keys[1].rpm_limit: expected a whole number, got a non-numeric string"
    );
    assert_eq!(
        one_error(&with_key("key: sk-two\n        rpm_limit: [1]")),
        "providers[0].keys[1].rpm_limit: expected a whole number, got a list"
    );
    // Go's YAML decoder took underscores.
    assert_eq!(
        load(&with_key("key: sk-two\n        rpm_limit: 1_000")).providers[0].keys[1].rpm_limit,
        1000
    );
}

#[test]
fn legacy_tpm_limit_is_split_like_go() {
    let c = load(&with_key("key: sk-two\n        tpm_limit: 100001"));
    let k = &c.providers[0].keys[1];
    assert_eq!((k.itpm_limit, k.otpm_limit), (50000, 50000));

    let (c, w) = load_env(
        &with_key("key: sk-two\n        tpm_limit: 100000\n        itpm_limit: 7"),
        &[],
    )
    .unwrap();
    let k = &c.providers[0].keys[1];
    assert_eq!((k.itpm_limit, k.otpm_limit), (7, 0));
    assert!(w
        .iter()
        .any(|w| w
            == "providers[0].keys[1].tpm_limit: ignored because itpm_limit/otpm_limit are set"));
}

#[test]
fn key_ids() {
    // FNV-1a 64 test vectors.
    assert_eq!(key_fingerprint(""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(key_fingerprint("a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(key_fingerprint("foobar"), 0x8594_4171_f739_67e8);

    let c = load(&with_key("key: sk-two\n        name: ' named '"));
    let keys = &c.providers[0].keys;
    let expected = format!("key-{:08x}", key_fingerprint("sk-one") >> 32);
    assert_eq!(keys[0].id, expected);
    assert_eq!(keys[0].id.len(), 12);
    assert_eq!(keys[1].id, "named");
}

#[test]
fn key_that_cannot_be_a_header_value_is_an_error_without_showing_it() {
    for key in ["'sk-ant-a b'", "\"sk-ant-a\\nb\"", "'sk-ant-é'"] {
        let err = one_error(&with_key(&format!("key: {key}")));
        assert!(
            err.starts_with("providers[0].keys[1].key: contains a space"),
            "{key}: {err}"
        );
        assert!(!err.contains("sk-ant"), "the key leaked: {err}");
    }
}

#[test]
fn empty_key_is_an_error() {
    assert_eq!(
        errors_env(&with_key("key: ${EMPTY}"), &[("EMPTY", "")]),
        vec![
            "providers[0].keys[1].key: is empty (if it comes from an environment variable, that \
              variable is empty); remove the entry for passthrough of the clients' own credentials"
        ]
    );
    assert!(one_error(&with_key("key: '   '")).starts_with("providers[0].keys[1].key: is empty"));
    assert_eq!(
        one_error(&with_key("name: x")),
        "providers[0].keys[1].key: is required"
    );
}

#[test]
fn keys_are_trimmed() {
    let c = load(&with_key("key: '  sk-two  '"));
    assert_eq!(c.providers[0].keys[1].key.expose(), "sk-two");
}

#[test]
fn duplicate_keys_and_ids() {
    assert_eq!(
        one_error(&with_key("key: sk-one")),
        "providers[0].keys[1].key: same key as providers[0].keys[0]"
    );
    assert!(one_error(
        "providers:\n  - name: a\n    type: anthropic\n    keys:\n      - {key: k1, name: x}\n      - {key: k2, name: x}\n"
    )
    .starts_with("providers[0].keys[1].name: duplicate key id \"x\" (also providers[0].keys[0])"));
}

#[test]
fn key_name_must_not_be_the_key() {
    let e = one_error(&with_key(
        "key: sk-secret-value\n        name: sk-secret-value",
    ));
    assert!(
        e.starts_with("providers[0].keys[1].name: looks like the API key itself"),
        "{e}"
    );
    assert!(!e.contains("sk-secret-value"));
}

#[test]
fn provider_names() {
    assert_eq!(
        one_error("providers:\n  - name: a\n    type: anthropic\n  - name: a\n    type: zai\n"),
        "providers[1].name: duplicate provider name \"a\" (also providers[0])"
    );
    assert_eq!(
        one_error("providers:\n  - type: anthropic\n"),
        "providers[0].name: is required"
    );
    assert_eq!(
        one_error("providers:\n  - name: a\n"),
        "providers[0].type: is required (one of: anthropic, zai, minimax, ollama, azure, vertex, \
         bedrock)"
    );
}

#[test]
fn provider_types() {
    assert_eq!(
        one_error("providers:\n  - name: a\n    type: openai\n"),
        "providers[0].type: unknown provider type \"openai\" (supported: anthropic, zai, minimax, ollama, \
         azure, vertex, bedrock)"
    );
    for (t, kind) in [
        ("anthropic", "anthropic"),
        ("zai", "zai"),
        ("MiniMax", "minimax"),
        ("ollama", "ollama"),
        ("azure", "azure"),
    ] {
        let c = load(&format!(
            "providers:\n  - name: a\n    type: {t}\n    base_url: http://127.0.0.1:1\n"
        ));
        assert_eq!(c.providers[0].kind.name(), kind);
    }
}

#[test]
fn an_azure_provider_takes_its_base_url_from_its_resource() {
    let c = load(
        "providers:\n  - name: f\n    type: azure\n    azure_resource_name: my-res\n    \
         azure_deployment_id: claude-deploy\n    azure_api_version: 2024-05-01\n    keys:\n      \
         - key: k\n",
    );
    let p = &c.providers[0];
    assert_eq!(p.base_url.host, "my-res.services.ai.azure.com");
    assert_eq!(p.base_url.path_prefix, "/anthropic");
    assert!(p.base_url.tls);
    assert_eq!(p.default_model.as_deref(), Some("claude-deploy"));
    assert!(warnings(
        "providers:\n  - name: f\n    type: azure\n    azure_resource_name: r\n    \
         azure_api_version: v\n"
    )
    .is_empty());
    assert_eq!(
        one_error("providers:\n  - name: f\n    type: azure\n    azure_resource_name: a.b/c\n"),
        "providers[0].azure_resource_name: \"a.b/c\" is not a Foundry resource name (letters, \
         digits and inner hyphens, at most 63)"
    );
}

#[test]
fn go_cloud_providers() {
    // Every Go type is a kind now. A bedrock provider without credentials of its own signs
    // with the standard AWS chain's: one implicit key marked so.
    let c = load(
        "providers:\n  - name: a\n    type: anthropic\n  - name: b\n    type: bedrock\n    aws_region: us-east-1\n",
    );
    let keys = &c.providers[1].keys;
    assert_eq!(keys.len(), 1);
    assert!(keys[0].aws_chain && keys[0].aws.is_none(), "{keys:?}");
    assert_eq!(
        one_error(
            "providers:\n  - name: b\n    type: bedrock\n    aws_region: us-east-1\n    \
             aws_access_key_id: AKID\n"
        ),
        "providers[0].aws_secret_access_key: aws_access_key_id and aws_secret_access_key go \
         together"
    );
    // A disabled vertex provider as the Go example config has it (older field names, no
    // project): it loads; what it lacks is a warning, not an error.
    let (c, w) = load_env(
        "providers:\n  - name: a\n    type: anthropic\n  - name: v\n    type: vertex\n    \
         enabled: false\n    project_id: p\n    region: us-east5\n",
        &[],
    )
    .unwrap();
    assert_eq!(c.providers.len(), 2);
    assert!(!c.providers[1].enabled);
    assert!(
        w.iter()
            .any(|w| w.contains("providers[1].gcp_project_id: is required")
                && w.contains("disabled")),
        "{w:?}"
    );
}

#[test]
fn a_vertex_provider_needs_its_project_region_and_readable_credentials() {
    assert_eq!(
        one_error("providers:\n  - name: v\n    type: vertex\n    gcp_region: us-east5\n"),
        "providers[0].gcp_project_id: is required for type vertex (the Google Cloud project id)"
    );
    let err = one_error(
        "providers:\n  - name: v\n    type: vertex\n    gcp_project_id: p\n    \
         gcp_region: us-east5\n    keys:\n      - gcp_credentials_file: /nonexistent/sa.json\n",
    );
    assert!(
        err.starts_with(
            "providers[0].keys[0].gcp_credentials_file: cannot read /nonexistent/sa.json"
        ),
        "{err}"
    );
    assert_eq!(
        one_error(
            "providers:\n  - name: a\n    type: anthropic\n    keys:\n      - \
             gcp_credentials_file: /x.json\n"
        ),
        "providers[0].keys[0].gcp_credentials_file: is for type vertex; type anthropic takes key"
    );
    let c = load(
        "providers:\n  - name: v\n    type: vertex\n    gcp_project_id: my-proj\n    \
         gcp_region: global\n",
    );
    let p = &c.providers[0];
    assert_eq!(p.base_url.host, "aiplatform.googleapis.com");
    assert_eq!(
        p.base_url.path_prefix,
        "/v1/projects/my-proj/locations/global/publishers/anthropic/models"
    );
    assert_eq!(p.keys.len(), 1, "application default credentials");
    assert_eq!(p.keys[0].id, "adc");
}

#[test]
fn cloud_fields_on_a_supported_provider_warn() {
    let w = warnings("providers:\n  - name: a\n    type: anthropic\n    aws_region: x\n");
    assert_eq!(
        w,
        vec![
            "providers[0].aws_region: accepted for compatibility with the Go cc-relay but not \
              implemented; ignored"
        ]
    );
}

#[test]
fn pooling_strategy() {
    assert_eq!(
        one_error(
            "providers:\n  - name: a\n    type: anthropic\n    pooling:\n      strategy: fastest\n"
        ),
        "providers[0].pooling.strategy: unknown strategy \"fastest\" (one of: least_loaded, \
         round_robin, random, weighted)"
    );
    let c = load(
        "providers:\n  - name: a\n    type: anthropic\n    pooling:\n      strategy: weighted\n      \
         enabled: true\n      max_wait_ms: 250\n",
    );
    let p = &c.providers[0].pooling;
    assert_eq!(p.strategy, Strategy::Weighted);
    assert_eq!(p.enabled, Some(true));
    assert_eq!(p.max_wait, Duration::from_millis(250));
    assert_eq!(
        one_error(
            "providers:\n  - name: a\n    type: anthropic\n    pooling:\n      max_wait_ms: -1\n"
        ),
        "providers[0].pooling.max_wait_ms: must be >= 0, got -1"
    );
}

#[test]
fn server_numbers() {
    let c = load(&format!(
        "server:\n  timeout_ms: 0\n  threads: 0\n  max_concurrent: 12\n  connect_timeout_ms: 500\n  \
         grace_period_seconds: 0\n  graceful_shutdown_timeout_seconds: 1\n  max_body_bytes: 1024\n{ONE}"
    ));
    let s = &c.server;
    // Go read timeout_ms: 0 as "default".
    assert_eq!(s.upstream_read_timeout, Duration::from_millis(600_000));
    assert!(s.threads >= 1);
    assert_eq!(s.max_concurrent, 12);
    assert_eq!(s.upstream_connect_timeout, Duration::from_millis(500));
    assert_eq!(s.grace_period, Duration::ZERO);
    assert_eq!(s.graceful_shutdown_timeout, Duration::from_secs(1));
    assert_eq!(s.max_body_bytes, 1024);

    let errs = errors(&format!(
        "server:\n  max_body_bytes: 0\n  timeout_ms: -1\n  connect_timeout_ms: 0\n  \
         max_concurrent: -1\n  threads: 5000\n  grace_period_seconds: -2\n  pid_file: ''\n{ONE}"
    ));
    let paths: Vec<&str> = errs.iter().map(|e| e.split(':').next().unwrap()).collect();
    assert_eq!(
        paths,
        [
            "server.timeout_ms",
            "server.connect_timeout_ms",
            "server.max_body_bytes",
            "server.max_concurrent",
            "server.threads",
            "server.grace_period_seconds",
            "server.pid_file"
        ]
    );
    assert!(errs[2].starts_with("server.max_body_bytes: must be > 0, got 0"));
    assert!(
        one_error(&format!("server:\n  timeout_ms: 86400001\n{ONE}"))
            .starts_with("server.timeout_ms: must be at most 86400000")
    );
}

#[test]
fn listen_forms() {
    let ok = |s: &str| parse_listen(s).unwrap().to_string();
    assert_eq!(ok("127.0.0.1:8787"), "127.0.0.1:8787");
    assert_eq!(ok("[::1]:8787"), "[::1]:8787");
    assert_eq!(ok(":8787"), "0.0.0.0:8787");
    assert_eq!(ok("localhost:8787"), "127.0.0.1:8787");
    assert_eq!(ok("0.0.0.0:0"), "0.0.0.0:0");
    for bad in [
        "8787",
        "example.com:8787",
        "::1:8787",
        ":99999",
        "127.0.0.1:",
        "[::1:8787",
    ] {
        assert!(parse_listen(bad).is_err(), "{bad} should be rejected");
    }
    assert!(parse_listen("example.com:8787")
        .unwrap_err()
        .contains("host names other than localhost are not resolved"));

    let c = load(&format!("server:\n  listen: ':9000'\n{ONE}"));
    assert_eq!(c.server.listen.to_string(), "0.0.0.0:9000");
    assert!(one_error(&format!("server:\n  listen: nowhere\n{ONE}")).starts_with("server.listen: "));
}

#[test]
fn base_url_defaults() {
    for (t, url) in [
        ("anthropic", "https://api.anthropic.com"),
        ("zai", "https://api.z.ai/api/anthropic"),
        ("minimax", "https://api.minimax.io/anthropic"),
        ("ollama", "http://localhost:11434"),
    ] {
        let c = load(&format!("providers:\n  - name: a\n    type: {t}\n"));
        assert_eq!(c.providers[0].base_url.to_string(), url);
    }
    let c = load("providers:\n  - name: a\n    type: zai\n");
    assert_eq!(
        c.providers[0].base_url,
        BaseUrl {
            tls: true,
            host: "api.z.ai".into(),
            port: 443,
            path_prefix: "/api/anthropic".into()
        }
    );
}

#[test]
fn base_url_parsing() {
    let u = parse_base_url("https://gw.example.com/v2/anthropic/").unwrap();
    assert_eq!(
        (u.tls, u.host.as_str(), u.port, u.path_prefix.as_str()),
        (true, "gw.example.com", 443, "/v2/anthropic")
    );
    let u = parse_base_url("http://10.0.0.1").unwrap();
    assert_eq!((u.tls, u.port, u.path_prefix.as_str()), (false, 80, ""));
    let u = parse_base_url("http://[::1]:11434/").unwrap();
    assert_eq!((u.host.as_str(), u.port), ("::1", 11434));
    assert_eq!(u.to_string(), "http://[::1]:11434");
    let u = parse_base_url("HTTPS://API.Example.com:8443").unwrap();
    assert_eq!((u.host.as_str(), u.port), ("api.example.com", 8443));
    assert_eq!(u.host_header(), "api.example.com:8443");

    for bad in [
        "ftp://example.com",
        "example.com",
        "localhost:11434",
        "https://",
        "https://:80",
        "https://h/?a=1",
        "https://h/#x",
        "https://h:0",
        "not a url",
    ] {
        assert!(parse_base_url(bad).is_err(), "{bad} should be rejected");
    }
    let e = one_error(
        "providers:\n  - name: a\n    type: anthropic\n    base_url: https://user:hunter2@example.com\n",
    );
    assert!(
        e.starts_with("providers[0].base_url: must not contain credentials"),
        "{e}"
    );
    assert!(!e.contains("hunter2"));
}

#[test]
fn routing_rules() {
    let (c, w) = load_env(
        "providers:\n  - name: a\n    type: anthropic\nrouting:\n  strategy: round_robin\n  \
         default_provider: a\n  max_attempts: 10\n  failover_timeout: 4000\n  model_mapping:\n    old: new\n",
        &[],
    )
    .unwrap();
    assert_eq!(c.routing.strategy, RoutingStrategy::RoundRobin);
    assert_eq!(c.routing.default_provider.as_deref(), Some("a"));
    assert_eq!(c.routing.max_attempts, 10);
    assert_eq!(c.routing.failover_timeout, Duration::from_millis(4000));
    assert_eq!(c.routing.model_mapping["old"], "new");
    assert!(c.routing.sticky_sessions);
    assert!(w.is_empty(), "{w:?}");
    for (name, strategy) in RoutingStrategy::ALL {
        let c = load(&format!("{ONE}routing:\n  strategy: {name}\n"));
        assert_eq!(c.routing.strategy, strategy);
    }
    // Older Go names load, with a word on what they are here.
    let w = warnings(&format!("{ONE}routing:\n  strategy: simple-shuffle\n"));
    assert_eq!(
        w,
        ["routing.strategy: simple-shuffle is an older Go cc-relay name; it is shuffle here"]
    );

    assert!(
        one_error(&format!("{ONE}routing:\n  strategy: fastest\n")).starts_with(
            "routing.strategy: unknown strategy \"fastest\" (one of: failover, round_robin"
        )
    );
    assert_eq!(
        one_error(&format!("{ONE}routing:\n  default_provider: zai\n")),
        "routing.default_provider: no provider named \"zai\" (providers: anthropic)"
    );
    for n in [0, 11] {
        assert_eq!(
            one_error(&format!("{ONE}routing:\n  max_attempts: {n}\n")),
            format!("routing.max_attempts: must be between 1 and 10, got {n}")
        );
    }
    assert_eq!(
        one_error(&format!("{ONE}routing:\n  failover_timeout: -1\n")),
        "routing.failover_timeout: must be >= 0 (ms), got -1"
    );
}

#[test]
fn model_based_maps_prefixes_to_providers_that_exist() {
    let c = load(&format!(
        "{ONE}routing:\n  strategy: model_based\n  model_mapping:\n    claude-opus: anthropic\n"
    ));
    assert_eq!(c.routing.model_mapping["claude-opus"], "anthropic");
    assert_eq!(
        one_error(&format!(
            "{ONE}routing:\n  strategy: model_based\n  model_mapping:\n    glm: zai\n"
        )),
        "routing.model_mapping[\"glm\"]: no provider named \"zai\" (providers: anthropic)"
    );
    // With another strategy, provider-valued entries are a likely mix-up: say so.
    let w = warnings(&format!(
        "{ONE}routing:\n  model_mapping:\n    claude-opus: anthropic\n"
    ));
    assert!(w
        .iter()
        .any(|w| w.starts_with("routing.model_mapping: maps model-name prefixes")));
}

#[test]
fn provider_priority_weight_and_key_concurrency() {
    let c = load(
        "providers:\n  - name: a\n    type: anthropic\n    keys:\n      - key: k1\n        priority: 2\n        weight: 3\n        max_concurrent: 1\n  - name: b\n    type: anthropic\n    priority: 0\n    weight: 0\n",
    );
    let (a, b) = (&c.providers[0], &c.providers[1]);
    assert_eq!(
        (a.priority, a.weight),
        (2, 3.0),
        "from the first key, as in Go"
    );
    assert_eq!(a.keys[0].max_concurrent, 1);
    assert_eq!((b.priority, b.weight), (0, 1.0), "weight 0 counts as 1");
    assert_eq!(
        one_error("providers:\n  - name: a\n    type: anthropic\n    priority: 3\n"),
        "providers[0].priority: must be 0, 1 or 2, got 3"
    );
    assert_eq!(
        one_error("providers:\n  - name: a\n    type: anthropic\n    weight: -1\n"),
        "providers[0].weight: must be a finite number >= 0, got -1"
    );
}

#[test]
fn health_section_is_read() {
    let c = load(&format!(
        "{ONE}health:\n  health_check:\n    enabled: false\n    interval_ms: 500\n  circuit_breaker:\n    failure_threshold: 2\n    open_duration_ms: 1000\n    half_open_probes: 1\n"
    ));
    let h = &c.health;
    assert_eq!((h.failure_threshold, h.half_open_probes), (2, 1));
    assert_eq!(h.open_duration, Duration::from_secs(1));
    assert!(!h.health_check);
    assert_eq!(h.health_check_interval, Duration::from_millis(500));
    assert_eq!(load(ONE).health, HealthConfig::default());
    assert_eq!(
        one_error(&format!(
            "{ONE}health:\n  circuit_breaker:\n    failure_threshold: -2\n"
        )),
        "health.circuit_breaker.failure_threshold: must be > 0, got -2"
    );
}

#[test]
fn logging_rules() {
    let c = load(&format!(
        "{ONE}logging:\n  level: WARNING\n  format: console\n  output: stdout\n"
    ));
    assert_eq!(
        (
            c.logging.level.as_str(),
            c.logging.format.as_str(),
            c.logging.output.as_str()
        ),
        ("warn", "text", "stdout")
    );
    assert_eq!(
        load(&format!("{ONE}logging:\n  format: json\n"))
            .logging
            .format,
        "json"
    );
    assert!(
        one_error(&format!("{ONE}logging:\n  level: loud\n")).starts_with(
            "logging.level: unknown level \"loud\" (one of: error, warn, info, debug, trace)"
        )
    );
    assert!(one_error(&format!("{ONE}logging:\n  format: xml\n"))
        .starts_with("logging.format: unknown format \"xml\" (one of: text, json)"));
    assert_eq!(
        load(&format!("{ONE}logging:\n  output: /tmp/relay.log\n"))
            .logging
            .output,
        "/tmp/relay.log"
    );
    assert!(one_error(&format!(
        "{ONE}logging:\n  output: /no/such/dir/relay.log\n"
    ))
    .starts_with("logging.output: must be stdout, stderr or a file in an existing directory"));
}

#[test]
fn auth_settings_and_go_aliases() {
    let c = load(&format!(
        "server:\n  auth:\n    api_key: relay-key\n    allow_subscription: true\n{ONE}"
    ));
    let a = &c.server.auth;
    assert_eq!(a.api_key.as_ref().unwrap().expose(), "relay-key");
    assert!(a.allow_bearer);
    assert!(a.bearer_secret.is_none());

    // Go's legacy server.api_key.
    let c = load(&format!("server:\n  api_key: legacy\n{ONE}"));
    assert_eq!(c.server.auth.api_key.as_ref().unwrap().expose(), "legacy");

    // An empty key (unset variable with `:-`) means no auth, as in Go.
    let c = load(&format!(
        "server:\n  auth:\n    api_key: '${{NOPE:-}}'\n{ONE}"
    ));
    assert!(!c.server.auth.is_enabled());

    let (c, w) = load_env(
        &format!("server:\n  auth:\n    bearer_secret: tok\n{ONE}"),
        &[],
    )
    .unwrap();
    assert!(c.server.auth.allow_bearer);
    assert!(w[0].starts_with("server.auth.bearer_secret: set without allow_bearer"));
}

// ---------------------------------------------------------------------------------------------
// unknown keys and Go keys
// ---------------------------------------------------------------------------------------------

#[test]
fn unknown_key_is_an_error_with_its_path() {
    assert_eq!(
        one_error(&with_key("key: sk-two\n        rpm_limt: 5")),
        "providers[0].keys[1].rpm_limt: unknown field; did you mean `rpm_limit`?"
    );
    let e = one_error(&format!("{ONE}colour: blue\n"));
    assert!(
        e.starts_with(
            "colour: unknown field (expected one of: server, providers, routing, logging, health, \
             metrics, clients, shared_state)"
        ),
        "{e}"
    );
    assert_eq!(
        one_error(&format!("server:\n  lisen: ':1'\n{ONE}")),
        "server.lisen: unknown field; did you mean `listen`?"
    );
}

#[test]
fn unknown_key_that_looks_like_a_secret_is_not_echoed() {
    let e = one_error(&format!("{ONE}sk-ant-api03-abcdef: 1\n"));
    assert!(!e.contains("abcdef"), "{e}");
    assert!(e.starts_with("<unknown key of 19 characters>: unknown field"));
}

#[test]
fn go_keys_are_accepted_with_a_warning() {
    let w = warnings(&format!("logging:\n  pretty: true\n{ONE}"));
    assert_eq!(
        w,
        vec![
            "logging.pretty: accepted for compatibility with the Go cc-relay but not \
              implemented; ignored"
        ]
    );
    // enable_http2 is implemented now.
    assert!(warnings(&format!("server:\n  enable_http2: true\n{ONE}")).is_empty());

    let w = warnings(&format!(
        "{ONE}health:\n  health_check:\n    enabled: true\n    interval_ms: 10000\n\
         cache:\n  mode: single\n  ristretto: {{max_cost: 1}}\ngrpc:\n  listen: 127.0.0.1:9090\n\
         metrics:\n  enabled: true\nlogging:\n  pretty: true\n  debug_options:\n    log_request_body: true\n\
         routing:\n  failover_timeout: 5000\n  debug: true\n"
    ));
    let paths: Vec<&str> = w.iter().map(|w| w.split(':').next().unwrap()).collect();
    assert_eq!(
        paths,
        // health.*, metrics.*, routing.failover_timeout and routing.debug are implemented.
        ["cache", "grpc", "logging.pretty", "logging.debug_options"]
    );
    // Ignored sections are not expanded: an unset variable there is no error.
    load(&format!(
        "{ONE}cache:\n  olric:\n    bind_addr: ${{UNSET_OLRIC}}\n"
    ));

    let listed = go_ignored_keys();
    assert!(listed.contains(&"logging.pretty".to_string()));
    assert!(listed.contains(&"providers[].aws_region".to_string()));
}

#[test]
fn go_example_config_loads() {
    // The Go project's documented multi-provider config (YAML only; env expanded).
    let yaml = r#"
server:
  listen: "127.0.0.1:8787"
  timeout_ms: 600000
  max_concurrent: 0
  enable_http2: true
  auth:
    api_key: "${PROXY_API_KEY}"
    allow_subscription: true
    bearer_secret: "${BEARER_SECRET}"
providers:
  - name: "anthropic"
    type: "anthropic"
    enabled: true
    base_url: "https://api.anthropic.com"
    keys:
      - key: "${ANTHROPIC_API_KEY}"
        rpm_limit: 60
        tpm_limit: 100000
    models:
      - "claude-sonnet-4-5-20250514"
  - name: "zai"
    type: "zai"
    enabled: true
    base_url: "https://api.z.ai/api/anthropic"
    keys:
      - key: "${ZAI_API_KEY}"
    model_mapping:
      "claude-sonnet-4-5-20250514": "GLM-4.7"
    models:
      - "GLM-4.7"
  - name: "bedrock"
    type: "bedrock"
    enabled: false
    region: "us-east-1"
    auth:
      method: "iam"
logging:
  level: "info"
  format: "text"
  pretty: true
  debug_options:
    log_request_body: false
    max_body_log_size: 1000
cache:
  mode: single
  ristretto:
    num_counters: 1000000
routing:
  strategy: failover
  failover_timeout: 5000
  debug: false
grpc:
  listen: "127.0.0.1:9090"
metrics:
  enabled: true
health:
  check_interval_seconds: 30
  circuit_breaker:
    failure_threshold: 5
"#;
    let (c, _) = load_env(
        yaml,
        &[
            ("PROXY_API_KEY", "p"),
            ("BEARER_SECRET", "b"),
            ("ANTHROPIC_API_KEY", "sk-a"),
            ("ZAI_API_KEY", "z"),
        ],
    )
    .unwrap();
    // Its disabled bedrock provider loads too (what it lacks is a warning).
    assert_eq!(c.providers.len(), 3);
    assert!(!c.providers[2].enabled);
    let k = &c.providers[0].keys[0];
    assert_eq!(
        (k.rpm_limit, k.itpm_limit, k.otpm_limit),
        (60, 50000, 50000)
    );
    assert!(c.server.auth.allow_bearer);
}

// ---------------------------------------------------------------------------------------------
// environment expansion
// ---------------------------------------------------------------------------------------------

#[test]
fn expansion_syntax() {
    let env = env_map(&[("A", "x"), ("EMPTY", ""), ("B_2", "y")]);
    let ok = |s: &str| expand(s, &env).unwrap();
    assert_eq!(ok("${A}"), "x");
    assert_eq!(ok("$A-$B_2"), "x-y");
    assert_eq!(ok("pre${A}post"), "prexpost");
    assert_eq!(ok("${UNSET:-dflt}"), "dflt");
    assert_eq!(ok("${EMPTY:-dflt}"), "dflt");
    assert_eq!(ok("${A:-dflt}"), "x");
    assert_eq!(ok("${UNSET:-}"), "");
    assert_eq!(ok("${EMPTY}"), "");
    assert_eq!(ok("${UNSET:-${A}}"), "x");
    assert_eq!(ok("${UNSET:-a:b}"), "a:b");
    assert_eq!(ok("$$"), "$");
    assert_eq!(ok("$${A}"), "${A}");
    assert_eq!(ok("cost $5 or $"), "cost $5 or $");
    assert_eq!(ok("no dollars"), "no dollars");

    let err = |s: &str| expand(s, &env).unwrap_err();
    assert!(err("${NOPE}")[0].starts_with("environment variable NOPE is not set"));
    assert!(err("$NOPE")[0].starts_with("environment variable NOPE is not set"));
    assert_eq!(err("${NOPE1}${NOPE2}").len(), 2);
    assert!(err("${A")[0].starts_with("unterminated"));
    assert!(err("${}")[0].starts_with("invalid `${...}`"));
    assert!(!err("${sk-secret}")[0].contains("secret"));
}

#[test]
fn unset_variable_error_names_variable_and_path() {
    assert_eq!(
        errors(&with_key("key: ${ANTHROPIC_KEY_2}")),
        vec![
            "providers[0].keys[1].key: environment variable ANTHROPIC_KEY_2 is not set (set it, \
              or give a default: ${ANTHROPIC_KEY_2:-default}; write $$ for a literal $)"
        ]
    );
}

#[test]
fn expansion_in_numbers_bools_and_maps() {
    let yaml = "server:\n  max_concurrent: ${MAXC}\nproviders:\n  - name: ${NAME:-p}\n    type: anthropic\n    \
                enabled: ${ON}\n    model_mapping:\n      ${FROM}: ${TO}\n    keys:\n      - key: $KEY\n        \
                rpm_limit: \"${RPM}\"\n        weight: ${W}\n";
    let (c, _) = load_env(
        yaml,
        &[
            ("MAXC", "7"),
            ("ON", "false"),
            ("FROM", "a"),
            ("TO", "b"),
            ("KEY", "sk-k"),
            ("RPM", "50"),
            ("W", "0.5"),
        ],
    )
    .unwrap();
    assert_eq!(c.server.max_concurrent, 7);
    let p = &c.providers[0];
    assert_eq!(p.name, "p");
    assert!(!p.enabled);
    assert_eq!(p.model_mapping["a"], "b");
    assert_eq!(p.keys[0].key.expose(), "sk-k");
    assert_eq!((p.keys[0].rpm_limit, p.keys[0].weight), (50, 0.5));
}

#[test]
fn comments_are_not_expanded() {
    load(&format!(
        "# key: ${{NOT_SET_ANYWHERE}}\n{ONE}  # ${{ALSO_NOT_SET}}\n"
    ));
}

#[test]
fn expanded_values_cannot_inject_yaml() {
    let (c, _) = load_env(
        "providers:\n  - name: ${N}\n    type: anthropic\n",
        &[("N", "x\n    type: zai")],
    )
    .unwrap();
    assert_eq!(c.providers[0].kind.name(), "anthropic");
}

// ---------------------------------------------------------------------------------------------
// errors: all at once, located, secret-free
// ---------------------------------------------------------------------------------------------

#[test]
fn all_errors_are_reported_at_once() {
    let yaml =
        "server:\n  listen: nowhere\nproviders:\n  - name: a\n    type: nope\n    keys:\n      \
                - key: k\n        priority: 9\n        rpm_limt: 1\nrouting:\n  max_attempts: 0\n";
    let err = load_env(yaml, &[]).unwrap_err();
    assert!(matches!(err, ConfigError::Many { .. }));
    let text = err.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    for p in [
        "providers[0].keys[0].rpm_limt:",
        "server.listen:",
        "providers[0].type:",
        "providers[0].keys[0].priority:",
        "routing.max_attempts:",
    ] {
        assert!(
            lines.iter().any(|l| l.starts_with(p)),
            "{p} missing in\n{text}"
        );
    }
}

#[test]
fn type_errors_are_not_repeated_by_validation() {
    // `name` is dropped by the walk; validation must not add "name: is required".
    assert_eq!(
        errors("providers:\n  - name: [x]\n    type: anthropic\n"),
        vec!["providers[0].name: expected a string, got a list"]
    );
    assert_eq!(
        errors("providers:\n  - just-a-string\n"),
        vec!["providers[0]: expected a mapping, got a string"]
    );
    assert_eq!(
        errors("providers: {name: a}\n"),
        vec!["providers: expected a list, got a mapping"]
    );
}

#[test]
fn yaml_syntax_error_has_a_location() {
    let err = load_env("providers:\n  - name: [a,\n", &[]).unwrap_err();
    match &err {
        ConfigError::Syntax { line, column, .. } => {
            assert!(line.is_some() && column.is_some());
        }
        other => panic!("expected a YAML error, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.starts_with("3:1: invalid YAML: "), "{text}");
    assert!(!text.contains("at line"), "location shown twice: {text}");
}

#[test]
fn document_must_be_a_mapping() {
    assert_eq!(
        errors("- a\n- b\n"),
        vec!["(top level): expected a mapping, got a list"]
    );
}

#[test]
fn secrets_never_appear_in_debug_or_errors() {
    const SECRET: &str = "sk-ant-api03-SUPERSECRET";
    let env = [("K", SECRET)];
    // Debug of a valid config.
    let (c, _) = load_env(
        &format!(
            "server:\n  auth:\n    api_key: ${{K}}\n    bearer_secret: b-${{K}}\n{}",
            "providers:\n  - name: a\n    type: anthropic\n    keys:\n      - key: ${K}\n"
        ),
        &env,
    )
    .unwrap();
    let debug = format!("{c:?}");
    assert!(!debug.contains("SUPERSECRET"), "{debug}");
    assert!(debug.contains("Secret(***)"));

    // A secret in every kind of wrong place.
    let bad = [
        "providers:\n  - name: a\n    type: anthropic\n    keys:\n      - key: ${K}\n      - key: ${K}\n",
        "providers:\n  - name: a\n    type: anthropic\n    keys:\n      - key: ${K}\n        name: ${K}\n",
        "providers:\n  - name: a\n    type: anthropic\n    keys:\n      - key: x\n        rpm_limit: ${K}\n",
        "providers:\n  - name: a\n    type: anthropic\n    keys:\n      - key: x\n        priority: ${K}\n",
        "providers:\n  - name: a\n    type: ${K}\n",
        "providers:\n  - name: a\n    type: anthropic\n    pooling:\n      strategy: ${K}\n",
        "providers:\n  - name: a\n    type: anthropic\n    base_url: https://u:${K}@h\n",
        "providers:\n  - name: a\n    type: anthropic\n    base_url: ${K}\n",
        "server:\n  listen: ${K}\nproviders:\n  - name: a\n    type: anthropic\n",
        "providers:\n  - name: a\n    type: anthropic\nlogging:\n  level: ${K}\n  output: ${K}\n",
        "providers:\n  - name: a\n    type: anthropic\nrouting:\n  strategy: ${K}\n",
        "providers:\n  - name: a\n    type: anthropic\n    enabled: ${K}\n",
        "sk-ant-api03-SUPERSECRET: 1\nproviders:\n  - name: a\n    type: anthropic\n",
        "providers:\n  - name: a\n    type: anthropic\n    keys:\n      - key: ${K:-x}${MISSING}\n",
    ];
    for yaml in bad {
        let err = load_env(yaml, &env).expect_err(yaml);
        let text = format!("{err} / {err:?}");
        assert!(
            !text.contains("SUPERSECRET"),
            "secret leaked for\n{yaml}\n{text}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// files, discovery, embedded default, shipped configs
// ---------------------------------------------------------------------------------------------

#[test]
fn load_file_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.yaml");
    let e = load_file(&missing).unwrap_err();
    assert!(matches!(e, ConfigError::Io { .. }));
    assert!(e.to_string().contains("missing.yaml"));

    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "providers: [\n").unwrap();
    let e = load_file(&bad).unwrap_err();
    assert!(e.to_string().starts_with(&bad.display().to_string()), "{e}");

    // A .toml file is TOML: a syntax error says so with file:line:column, without quoting
    // the line (it could hold a key).
    let toml = dir.path().join("config.toml");
    std::fs::write(
        &toml,
        "[server]\nlisten = \"127.0.0.1:1\"\n\n[[providers]]\nkey = sk-ant-secret\n",
    )
    .unwrap();
    let e = load_file(&toml).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("{}:5:7: invalid TOML:", toml.display())),
        "{e}"
    );
    assert!(!e.contains("sk-ant-secret"), "{e}");
}

/// The same configuration written as YAML and as TOML.
const SAME_YAML: &str = "\
server:
  listen: \"127.0.0.1:9000\"
  auth:
    api_key: \"${RELAY_KEY}\"
providers:
  - name: anthropic
    type: anthropic
    keys:
      - key: \"${KEY_A}\"
        rpm_limit: 50
        priority: 2
      - key: \"${KEY_B:-sk-b}\"
    pooling:
      strategy: round_robin
  - name: glm
    type: zai
    models: [glm-4.6]
    model_mapping:
      claude-sonnet-4-5: glm-4.6
    keys:
      - key: zai-key
routing:
  strategy: failover
  failover_timeout: 5000
  model_mapping:
    claude-opus: anthropic
health:
  circuit_breaker:
    failure_threshold: 3
";

const SAME_TOML: &str = r#"
[server]
listen = "127.0.0.1:9000"
auth = { api_key = "${RELAY_KEY}" }

[[providers]]
name = "anthropic"
type = "anthropic"
pooling = { strategy = "round_robin" }

[[providers.keys]]
key = "${KEY_A}"
rpm_limit = 50
priority = 2

[[providers.keys]]
key = "${KEY_B:-sk-b}"

[[providers]]
name = "glm"
type = "zai"
models = ["glm-4.6"]
model_mapping = { claude-sonnet-4-5 = "glm-4.6" }
keys = [{ key = "zai-key" }]

[routing]
strategy = "failover"
failover_timeout = 5000
model_mapping = { claude-opus = "anthropic" }

[health.circuit_breaker]
failure_threshold = 3
"#;

#[test]
fn the_same_config_as_yaml_and_as_toml_validates_the_same() {
    let env = |name: &str| match name {
        "RELAY_KEY" => Some("relay-secret".to_owned()),
        "KEY_A" => Some("sk-a".to_owned()),
        _ => None,
    };
    let (yaml, yaml_warnings) =
        crate::config::load_str_as_with_env(SAME_YAML, crate::config::Format::Yaml, &env).unwrap();
    let (toml, toml_warnings) =
        crate::config::load_str_as_with_env(SAME_TOML, crate::config::Format::Toml, &env).unwrap();
    assert!(yaml == toml, "{yaml:#?}\n{toml:#?}");
    assert_eq!(yaml_warnings, toml_warnings);
    assert_eq!(toml.providers[0].keys[1].key.expose(), "sk-b");
    assert_eq!(toml.providers[0].keys[0].rpm_limit, 50);
}

#[test]
fn toml_errors_name_the_field_path() {
    let errors = crate::config::load_str_as(
        "[[providers]]\nname = \"a\"\ntype = \"anthropic\"\n\n[[providers.keys]]\n\
         key = \"k\"\npriority = 7\ncolour = \"red\"\n",
        crate::config::Format::Toml,
    )
    .unwrap_err()
    .to_string();
    assert!(errors.contains("providers[0].keys[0].priority"), "{errors}");
    assert!(errors.contains("providers[0].keys[0].colour"), "{errors}");
}

#[test]
fn the_toml_starter_is_the_yaml_starter() {
    let env = |_: &str| None;
    let yaml = crate::config::load_str_as_with_env(
        crate::config::STARTER_CONFIG,
        crate::config::Format::Yaml,
        &env,
    )
    .unwrap();
    let toml = crate::config::load_str_as_with_env(
        crate::config::STARTER_CONFIG_TOML,
        crate::config::Format::Toml,
        &env,
    )
    .unwrap();
    assert!(yaml.0 == toml.0, "{:#?}\n{:#?}", yaml.0, toml.0);
    assert_eq!(yaml.1, toml.1);
}

#[test]
fn discover_order() {
    let _g = lock_env();
    let old_home = std::env::var_os("HOME");
    let old_cwd = std::env::current_dir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let cwd = tempfile::tempdir().unwrap();
    std::env::set_var("HOME", home.path());
    std::env::set_current_dir(cwd.path()).unwrap();

    let result = std::panic::catch_unwind(|| {
        // Nothing anywhere: embedded.
        let (_, src) = discover(None).unwrap();
        assert_eq!(src, ConfigSource::Embedded);
        assert!(src.to_string().contains("built-in"));

        // $HOME/.config/cc-relay/config.yaml.
        let home_cfg = home.path().join(".config/cc-relay/config.yaml");
        std::fs::create_dir_all(home_cfg.parent().unwrap()).unwrap();
        std::fs::write(&home_cfg, "providers:\n  - {name: home, type: anthropic}\n").unwrap();
        let (c, src) = discover(None).unwrap();
        assert_eq!(
            (c.providers[0].name.as_str(), src),
            ("home", ConfigSource::File(home_cfg))
        );

        // ./cc-relay.yaml wins.
        std::fs::write(
            "cc-relay.yaml",
            "providers:\n  - {name: local, type: anthropic}\n",
        )
        .unwrap();
        let (c, src) = discover(None).unwrap();
        assert_eq!(c.providers[0].name, "local");
        assert_eq!(src.to_string(), "cc-relay.yaml");

        // An explicit path wins, and must exist.
        let explicit = cwd.path().join("x.yaml");
        std::fs::write(&explicit, "providers:\n  - {name: explicit, type: zai}\n").unwrap();
        let (c, _) = discover(Some(&explicit)).unwrap();
        assert_eq!(c.providers[0].name, "explicit");
        assert!(matches!(
            discover(Some(Path::new("/nonexistent/cc.yaml"))),
            Err(ConfigError::Io { .. })
        ));
    });

    std::env::set_current_dir(old_cwd).unwrap();
    match old_home {
        Some(h) => std::env::set_var("HOME", h),
        None => std::env::remove_var("HOME"),
    }
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}

#[test]
fn embedded_default_without_key_is_passthrough() {
    let (c, w) = embedded_with_env(&env_map(&[]));
    assert!(w.is_empty());
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:8787");
    assert_eq!(c.providers.len(), 1);
    let p = &c.providers[0];
    assert_eq!((p.name.as_str(), p.kind.name()), ("anthropic", "anthropic"));
    assert_eq!(p.base_url.to_string(), "https://api.anthropic.com");
    assert!(p.keys.is_empty());

    let (c, _) = embedded_with_env(&env_map(&[("ANTHROPIC_API_KEY", "  ")]));
    assert!(c.providers[0].keys.is_empty());
}

#[test]
fn embedded_default_with_key() {
    let (c, _) = embedded_with_env(&env_map(&[("ANTHROPIC_API_KEY", "sk-ant-x")]));
    let keys = &c.providers[0].keys;
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].key.expose(), "sk-ant-x");
    assert_eq!(
        keys[0].id,
        format!("key-{:08x}", key_fingerprint("sk-ant-x") >> 32)
    );
}

#[test]
fn embedded_default_reads_the_process_environment() {
    let _g = lock_env();
    let old = std::env::var_os("ANTHROPIC_API_KEY");
    std::env::set_var("ANTHROPIC_API_KEY", "sk-ant-process");
    let with = embedded_default();
    std::env::remove_var("ANTHROPIC_API_KEY");
    let without = embedded_default();
    if let Some(v) = old {
        std::env::set_var("ANTHROPIC_API_KEY", v);
    }
    assert_eq!(with.providers[0].keys[0].key.expose(), "sk-ant-process");
    assert!(without.providers[0].keys.is_empty());
}

#[test]
fn starter_config_loads_with_no_environment() {
    let (c, w) = load_env(STARTER_CONFIG, &[]).unwrap();
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:8787");
    assert!(!c.server.auth.is_enabled());
    let names: Vec<&str> = c.providers.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["anthropic", "ollama"]);
    assert!(c.providers[0].keys.is_empty());
    assert!(!c.providers[1].enabled);

    // With the documented variables set.
    let (c, _) = load_env(
        STARTER_CONFIG,
        &[
            ("CC_RELAY_API_KEY", "relay"),
            ("OLLAMA_HOST_URL", "http://10.0.0.2:11434"),
        ],
    )
    .unwrap();
    assert!(c.server.auth.is_enabled());
    assert_eq!(c.providers[1].base_url.to_string(), "http://10.0.0.2:11434");
}

#[test]
fn starter_config_commented_examples_load() {
    // Uncommenting the examples (`# ` removed from indented blocks) must give a valid config.
    let uncommented: String = STARTER_CONFIG
        .lines()
        .map(|l| {
            let t = l.trim_start();
            let indent = l.len() - t.len();
            match t.strip_prefix("# ") {
                Some(rest)
                    if indent >= 2
                        && (rest.starts_with(' ')
                            || rest.starts_with("- ")
                            || rest.starts_with("keys:")
                            || rest.starts_with("model_mapping:")
                            || rest.starts_with("default_provider:")
                            || rest.starts_with("threads:")
                            || rest.starts_with("bearer_secret:")
                            || rest.starts_with("base_url:")
                            || rest.starts_with("models:")) =>
                {
                    format!("{}{}", &l[..indent], rest)
                }
                _ => l.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        // The single-key example and the pool both say `keys:`; keep the pool.
        .replacen("keys:\n      - key: \"${ANTHROPIC_API_KEY}\"\n", "", 1)
        .replace("    keys: []\n", "");
    let env = [
        ("CC_RELAY_BEARER_SECRET", "b"),
        ("ANTHROPIC_API_KEY_1", "k1"),
        ("ANTHROPIC_API_KEY_2", "k2"),
        ("ANTHROPIC_API_KEY_3", "k3"),
        ("ZAI_API_KEY", "z"),
        ("MINIMAX_API_KEY", "m"),
        ("FOUNDRY_API_KEY", "f"),
        ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
        ("AWS_SECRET_ACCESS_KEY", "example-secret"),
    ];
    let (c, _) = match load_env(&uncommented, &env) {
        Ok(r) => r,
        Err(e) => panic!("{e}\n---\n{uncommented}"),
    };
    let names: Vec<&str> = c.providers.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "anthropic",
            "zai",
            "minimax",
            "foundry",
            "vertex",
            "bedrock",
            "ollama"
        ]
    );
    let keys = &c.providers[0].keys;
    assert_eq!(keys.len(), 3);
    assert_eq!((keys[1].itpm_limit, keys[1].otpm_limit), (20000, 20000));
    assert_eq!(c.routing.default_provider.as_deref(), Some("anthropic"));
}

#[test]
fn minimal_config_loads() {
    let minimal = include_str!("../../conf/minimal.yaml");
    let (c, w) = load_env(minimal, &[("ANTHROPIC_API_KEY", "sk-ant-min")]).unwrap();
    assert!(w.is_empty());
    assert_eq!(c.providers[0].keys[0].key.expose(), "sk-ant-min");
    // Without the variable, the error says which one.
    assert!(errors(minimal)[0].contains("ANTHROPIC_API_KEY is not set"));
}

#[test]
fn yaml_anchors_and_merges_work_in_lists() {
    let c = load(
        "providers:\n  - name: a\n    type: anthropic\n    keys:\n      - &k\n        key: k1\n        \
         rpm_limit: 5\n        priority: 2\n      - <<: *k\n        key: k2\n",
    );
    let k = &c.providers[0].keys[1];
    assert_eq!((k.key.expose(), k.rpm_limit, k.priority), ("k2", 5, 2));
}

// ---------------------------------------------------------------------------------------------
// diff
// ---------------------------------------------------------------------------------------------

#[test]
fn diff_summary() {
    let old = load(
        "providers:\n  - name: anthropic\n    type: anthropic\n    keys:\n      - key: sk-keep\n        \
         rpm_limit: 50\n      - key: sk-old\n        name: old\n      - key: sk-ren\n      - key: sk-a\n        \
         name: swapped\n",
    );
    let new = load(
        "server:\n  listen: ':9999'\nproviders:\n  - name: anthropic\n    type: anthropic\n    pooling:\n      \
         strategy: round_robin\n    model_mapping:\n      a: b\n    keys:\n      - key: sk-keep\n        \
         rpm_limit: 60\n      - key: sk-new\n      - key: sk-ren\n        name: renamed\n      - key: sk-b\n        \
         name: swapped\n  - name: zai\n    type: zai\nrouting:\n  max_attempts: 3\nlogging:\n  level: debug\n",
    );
    let s = summarize_changes(&old, &new);
    let line = s.to_string();
    assert!(!line.contains('\n'));
    let keep = format!("key-{:08x}", key_fingerprint("sk-keep") >> 32);
    let added = format!("key-{:08x}", key_fingerprint("sk-new") >> 32);
    let ren = format!("key-{:08x}", key_fingerprint("sk-ren") >> 32);
    assert_eq!(
        line,
        format!(
            "server.listen 127.0.0.1:8787→0.0.0.0:9999 (needs upgrade); providers: +zai; \
             anthropic: model_mapping changed, strategy least_loaded→round_robin, keys +{added} -old, \
             swapped key replaced, {keep} rpm 50→60, {ren}→renamed; routing.max_attempts 2→3; \
             logging.level info→debug"
        )
    );
    assert_eq!(s.needs_upgrade(), vec!["server.listen"]);
    assert!(!s.is_empty());
    for secret in ["sk-keep", "sk-old", "sk-new", "sk-ren", "sk-a", "sk-b"] {
        assert!(!line.contains(secret));
    }

    let same = summarize_changes(&old, &old);
    assert!(same.is_empty());
    assert_eq!(same.to_string(), "no changes");
    assert!(same.needs_upgrade().is_empty());
}

#[test]
fn diff_upgrade_only_settings_and_auth() {
    let old = load(ONE);
    let new = load(&format!(
        "server:\n  threads: 3\n  pid_file: /run/x.pid\n  upgrade_sock: /run/x.sock\n  \
         auth:\n    api_key: secret-value\n{ONE}  - name: b\n    type: zai\n    enabled: false\n"
    ));
    let s = summarize_changes(&old, &new);
    let up = s.needs_upgrade();
    assert!(up.contains(&"server.pid_file") && up.contains(&"server.upgrade_sock"));
    // threads differs unless the machine happens to have 3 cores.
    let line = s.to_string();
    assert!(line.contains("server.auth changed"));
    assert!(!line.contains("secret-value"));
    assert!(line.contains("providers: +b"));

    let reordered =
        load("providers:\n  - name: b\n    type: zai\n  - name: anthropic\n    type: anthropic\n");
    let two =
        load("providers:\n  - name: anthropic\n    type: anthropic\n  - name: b\n    type: zai\n");
    assert_eq!(
        summarize_changes(&two, &reordered).to_string(),
        "providers: order anthropic,b→b,anthropic"
    );
}

const ONE_PROVIDER: &str = "providers:\n  - name: a\n    type: anthropic\n";

#[test]
fn nested_defaults_are_bounded() {
    let env = env_map(&[("KEY", "k")]);
    let nested = |depth: usize| format!("{}${{KEY}}{}", "${N:-".repeat(depth), "}".repeat(depth));
    assert_eq!(expand(&nested(16), &env).unwrap(), "k");
    let errs = expand(&nested(17), &env).unwrap_err();
    assert!(errs[0].contains("nested more than 16 levels"), "{errs:?}");
    // What crashed a running relay on reload: an error, no stack overflow.
    assert!(expand(&nested(40_000), &env).is_err());
}

#[test]
fn an_auth_secret_from_an_empty_variable_is_an_error_and_an_explicit_empty_default_is_not() {
    for field in ["auth:\n    api_key", "auth:\n    bearer_secret", "api_key"] {
        let yaml = format!("server:\n  {field}: \"${{RELAY_KEY}}\"\n{ONE_PROVIDER}");
        let errs = errors_env(&yaml, &[("RELAY_KEY", "")]);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].contains("RELAY_KEY is set to the empty string"),
            "{errs:?}"
        );
        assert!(errs[0].starts_with("server."), "{errs:?}");
    }
    // `${VAR:-}` is the documented way to make it optional; absent stays open too.
    let optional = format!("server:\n  auth:\n    api_key: \"${{RELAY_KEY:-}}\"\n{ONE_PROVIDER}");
    let (config, _) = load_env(&optional, &[("RELAY_KEY", "")]).unwrap();
    assert!(!config.server.auth.is_enabled());
    let required = format!("server:\n  auth:\n    api_key: \"${{RELAY_KEY}}\"\n{ONE_PROVIDER}");
    let (config, _) = load_env(&required, &[("RELAY_KEY", "s3")]).unwrap();
    assert!(config.server.auth.is_enabled());
}

#[test]
fn an_auth_secret_no_header_can_carry_is_refused_without_showing_it() {
    for bad in [
        "abc\ndef-4711",
        "abc def-4711",
        "abcé-4711",
        "abc\tdef-4711",
    ] {
        let yaml = format!("server:\n  auth:\n    api_key: \"${{RELAY_KEY}}\"\n{ONE_PROVIDER}");
        let errs = errors_env(&yaml, &[("RELAY_KEY", bad)]);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("server.auth.api_key: contains"),
            "{errs:?}"
        );
        assert!(!errs[0].contains("4711"), "the key was shown: {errs:?}");
    }
}

#[test]
fn max_cooldown_is_bounded_and_defaults_to_ten_minutes() {
    let provider = |extra: &str| {
        format!("providers:\n  - name: a\n    type: anthropic\n    pooling:\n{extra}")
    };
    let c = load(&provider("      strategy: least_loaded\n"));
    assert_eq!(
        c.providers[0].pooling.max_cooldown,
        Duration::from_secs(600)
    );
    let c = load(&provider("      max_cooldown_ms: 2000\n"));
    assert_eq!(c.providers[0].pooling.max_cooldown, Duration::from_secs(2));
    for bad in ["999", "86400001", "-5"] {
        let errs = errors(&provider(&format!("      max_cooldown_ms: {bad}\n")));
        assert!(
            errs[0].starts_with("providers[0].pooling.max_cooldown_ms: must be from 1000"),
            "{errs:?}"
        );
    }
}

#[test]
fn long_model_lists_keep_order_and_drop_duplicates() {
    let models: Vec<String> = (0..100_000).map(|i| format!("m{}", i % 50_000)).collect();
    let yaml = format!(
        "providers:\n  - name: a\n    type: anthropic\n    models: [{}]\n",
        models.join(", ")
    );
    let c = load(&yaml);
    let got = &c.providers[0].models;
    assert_eq!(got.len(), 50_000);
    assert_eq!(got[0], "m0");
    assert_eq!(got[49_999], "m49999");
}

// ---------------------------------------------------------------------------------------------
// clients
// ---------------------------------------------------------------------------------------------

#[test]
fn clients_load_with_a_key_or_its_digest_and_their_limits() {
    let c = load(&format!(
        "{ONE}clients:\n  - name: alice\n    key: ka\n    models: [claude-sonnet-*]\n    \
         providers: [anthropic]\n    rpm_limit: 10\n    daily_token_budget: 5000\n  \
         - name: bob\n    key_sha256: \
         BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD\n"
    ));
    assert_eq!(c.clients.len(), 2);
    let (alice, bob) = (&c.clients[0], &c.clients[1]);
    assert_eq!(alice.key_sha256, KeyDigest::of(b"ka"));
    assert_eq!(alice.rpm_limit, 10);
    assert!(alice.has_budget() && !bob.has_budget());
    assert!(alice.allows_model(Some("claude-sonnet-4-5")));
    assert!(!alice.allows_model(Some("claude-opus-4-1")));
    assert!(!alice.allows_model(None));
    assert!(bob.allows_model(None));
    assert_eq!(bob.key_sha256, KeyDigest::of(b"abc"));
    // The digest is not shown by Debug.
    assert!(!format!("{c:?}").contains("ba7816"));
}

#[test]
fn client_mistakes_are_named_by_position_never_by_key() {
    let errs = errors(&format!(
        "{ONE}server:\n  auth:\n    api_key: shared\nclients:\n  - name: alice\n    key: ka\n  \
         - name: alice\n    key: ka\n  - name: bad name\n    key: kc\n  - name: both\n    \
         key: kd\n    key_sha256: 00\n  - name: none\n  - name: hex\n    key_sha256: xyz\n  \
         - name: shorthand\n    key: shared\n  - name: where\n    key: kw\n    \
         providers: [nowhere]\n  - name: star\n    key: ks\n    models: ['cl*ude']\n"
    ));
    let expected = [
        "clients[1].name: alice is also the name of clients[0]",
        "clients[1].key: is the same key as clients[0]'s",
        "clients[2].name: must be 1 to 64 letters",
        "clients[3].key_sha256: give either key or key_sha256",
        "clients[4].key: is required",
        "clients[5].key_sha256: must be 64 hexadecimal digits",
        "clients[6].key: is the same key as server.auth's",
        "clients[7].providers[0]: names no configured provider: nowhere",
        "clients[8].models[0]: a * may only end a model pattern",
    ];
    for e in expected {
        assert!(
            errs.iter().any(|x| x.starts_with(e)),
            "{e} not in {errs:#?}"
        );
    }
    assert_eq!(errs.len(), expected.len(), "{errs:#?}");
    for secret in ["ka", "kd", "shared"] {
        assert!(!errs.iter().any(|e| e.contains(&format!(" {secret} "))));
    }
}

#[test]
fn shared_state_defaults_and_variables() {
    let c = load_env(
        "shared_state:\n  redis_url: \"redis://:${REDIS_PASSWORD}@127.0.0.1:6379/0\"\n",
        &[("REDIS_PASSWORD", "hunter2")],
    )
    .unwrap()
    .0;
    let s = c.shared_state.expect("configured");
    assert_eq!(s.redis_url.expose(), "redis://:hunter2@127.0.0.1:6379/0");
    assert_eq!(s.timeout, std::time::Duration::from_millis(50));
    assert_eq!(s.namespace, "cc-relay");
    assert_eq!(s.min_relays, 1);
    assert!(
        !format!("{s:?}").contains("hunter2"),
        "the URL's password is a secret"
    );
    assert!(load("providers: []\n").shared_state.is_none());
}

#[test]
fn shared_state_errors_name_the_field_and_never_the_url() {
    let e = errors("shared_state:\n  redis_url: \"http://:hunter2@host\"\n");
    assert!(e[0].contains("shared_state.redis_url"), "{e:?}");
    assert!(!e.join("\n").contains("hunter2"), "{e:?}");
    let e = errors("shared_state:\n  timeout_ms: 5\n");
    assert!(
        e[0].contains("shared_state.redis_url") && e[0].contains("required"),
        "{e:?}"
    );
    let e = errors(
        "shared_state:\n  redis_url: redis://h:6379\n  timeout_ms: 0\n  namespace: \"a b\"\n  min_relays: 0\n",
    );
    let all = e.join("\n");
    for field in ["timeout_ms", "namespace", "min_relays"] {
        assert!(all.contains(&format!("shared_state.{field}")), "{all}");
    }
    let e = errors("shared_state:\n  redis_url: redis://h:6379\n  redis_pasword: x\n");
    assert!(e[0].contains("shared_state.redis_pasword"), "{e:?}");
}

/// Found by the config_load fuzzer: a variable expanded into the middle of a value that an
/// error quotes (`/metri${KEY}…`) must not show the key.
#[test]
fn an_error_does_not_quote_a_value_holding_a_key() {
    let e = errors_env(
        "metrics:\n  prometheus_endpoint: \"/metri${KEY} x\"\n",
        &[("KEY", "sk-ant-secret-0123")],
    );
    assert!(e[0].contains("metrics.prometheus_endpoint"), "{e:?}");
    assert!(!e.join("\n").contains("sk-ant-secret"), "{e:?}");
}

/// Any value a `${VAR}` put into the config, whatever it looks like, stays out of the errors
/// (the loader hides it in every message), while the rest of the message is kept.
#[test]
fn an_error_does_not_quote_any_value_from_the_environment() {
    let e = errors_env(
        "metrics:\n  prometheus_endpoint: \"metrics-${TOKEN}\"\n",
        &[("TOKEN", "AKIAIOSFODNN7EXAMPLE")],
    );
    assert!(e[0].contains("must be a path starting with /"), "{e:?}");
    assert!(e[0].contains("not shown"), "{e:?}");
    assert!(!e.join("\n").contains("AKIAIOSFODNN7EXAMPLE"), "{e:?}");
}

// ---------------------------------------------------------------------------------------------
// server.trusted_proxies, clients[].admin
// ---------------------------------------------------------------------------------------------

#[test]
fn trusted_proxies_are_cidrs_checked_at_load_and_admin_defaults_to_false() {
    let c = load(&format!(
        "{ONE}server:\n  trusted_proxies: [10.0.0.0/8, \"fd00::/8\", 192.0.2.7]\nclients:\n  \
         - name: ops\n    key: ko\n    admin: true\n  - name: dev\n    key: kd\n"
    ));
    let shown: Vec<String> = c
        .server
        .trusted_proxies
        .iter()
        .map(|c| c.to_string())
        .collect();
    assert_eq!(shown, ["10.0.0.0/8", "fd00::/8", "192.0.2.7/32"]);
    assert!(c.clients[0].admin && !c.clients[1].admin);
    assert!(load(ONE).server.trusted_proxies.is_empty());

    let errs = errors(&format!(
        "{ONE}server:\n  trusted_proxies: [10.0.0.0/8, 10.0.0.0/33, proxy.internal]\n"
    ));
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert!(
        errs[0].starts_with("server.trusted_proxies[1]: not a CIDR: \"10.0.0.0/33\""),
        "{errs:#?}"
    );
    assert!(errs[1].starts_with("server.trusted_proxies[2]: not a CIDR"));
    assert!(
        one_error(&format!("{ONE}server:\n  trusted_proxies: 10.0.0.0/8\n"))
            .starts_with("server.trusted_proxies: expected a list")
    );
    assert!(one_error(&format!(
        "{ONE}clients:\n  - name: a\n    key: k\n    admin: maybe\n"
    ))
    .starts_with("clients[0].admin: expected true or false"));
}
