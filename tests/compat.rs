//! The Go cc-relay's own configs load here: its example.yaml, every config in its README and
//! docs (YAML and TOML tabs), and the configs of its config package's tests, copied unchanged
//! into tests/compat/go/ by scripts/extract_go_configs.py (SOURCE.md says where each is from;
//! NOTICE, their licence). Each loads with exactly the warnings listed here (by the path each
//! warning names), or is refused with the message listed here. A new fixture with neither
//! listed must load without a warning.

use std::collections::BTreeMap;
use std::path::Path;

use cc_relay::config::{load_str_as_with_env, Format};

/// Fixtures that load with warnings: the paths the warnings name, in order. `providers`: a
/// docs snippet of one section, with no provider (Go accepts that; so does this relay, with a
/// warning). The others are Go keys this relay accepts and ignores.
const WARNINGS: &[(&str, &[&str])] = &[
    ("caching-01.yaml", &["cache", "providers"]),
    ("caching-02.toml", &["cache", "providers"]),
    ("caching-03.yaml", &["cache", "providers"]),
    ("caching-04.toml", &["cache", "providers"]),
    ("caching-05.yaml", &["cache", "providers"]),
    ("caching-06.toml", &["cache", "providers"]),
    ("caching-07.yaml", &["cache", "providers"]),
    ("caching-08.toml", &["cache", "providers"]),
    ("caching-09.yaml", &["cache", "providers"]),
    ("caching-10.toml", &["cache", "providers"]),
    ("caching-11.yaml", &["cache", "providers"]),
    ("caching-12.toml", &["cache", "providers"]),
    ("caching-13.toml", &["cache", "providers"]),
    ("caching-14.yaml", &["cache", "providers"]),
    ("caching-15.toml", &["cache", "providers"]),
    ("caching-16.yaml", &["providers"]),
    ("caching-17.toml", &["providers"]),
    (
        "configuration-03.yaml",
        &["logging.pretty", "logging.debug_options", "cache"],
    ),
    ("configuration-05.yaml", &["providers"]),
    ("configuration-06.toml", &["providers"]),
    ("configuration-07.yaml", &["providers"]),
    ("configuration-08.toml", &["providers"]),
    ("configuration-09.yaml", &["providers"]),
    ("configuration-10.toml", &["providers"]),
    ("configuration-11.yaml", &["providers"]),
    ("configuration-12.toml", &["providers"]),
    ("configuration-13.yaml", &["providers"]),
    ("configuration-14.toml", &["providers"]),
    ("configuration-15.yaml", &["providers"]),
    ("configuration-16.toml", &["providers"]),
    ("configuration-27.yaml", &["providers"]),
    ("configuration-28.toml", &["providers"]),
    (
        "configuration-29.yaml",
        &["logging.debug_options", "providers"],
    ),
    (
        "configuration-30.toml",
        &["logging.debug_options", "providers"],
    ),
    ("configuration-31.yaml", &["cache", "providers"]),
    ("configuration-32.toml", &["cache", "providers"]),
    ("configuration-33.yaml", &["cache", "providers"]),
    ("configuration-34.toml", &["cache", "providers"]),
    ("configuration-35.yaml", &["cache", "providers"]),
    ("configuration-36.toml", &["cache", "providers"]),
    ("configuration-37.yaml", &["cache", "providers"]),
    ("configuration-38.toml", &["cache", "providers"]),
    ("configuration-39.yaml", &["providers"]),
    ("configuration-40.toml", &["providers"]),
    (
        "configuration-47.yaml",
        &["logging.pretty", "logging.debug_options"],
    ),
    (
        "configuration-48.toml",
        &["logging.pretty", "logging.debug_options"],
    ),
    ("example.yaml", &["cache", "grpc"]),
    ("getting-started-03.yaml", &["providers"]),
    ("getting-started-04.toml", &["providers"]),
    ("health-01.yaml", &["providers"]),
    ("health-02.toml", &["providers"]),
    ("health-03.yaml", &["providers"]),
    ("health-04.toml", &["providers"]),
    ("health-05.yaml", &["providers"]),
    ("health-06.toml", &["providers"]),
    ("health-07.yaml", &["providers"]),
    ("health-08.toml", &["providers"]),
    ("providers-03.yaml", &["providers"]),
    ("providers-04.toml", &["providers"]),
    (
        "routing-01.yaml",
        &["providers", "routing.default_provider"],
    ),
    (
        "routing-02.toml",
        &["providers", "routing.default_provider"],
    ),
    ("routing-03.yaml", &["providers"]),
    ("routing-04.toml", &["providers"]),
    ("routing-07.yaml", &["providers"]),
    ("routing-08.toml", &["providers"]),
    ("go-test-load-server-api-key-01.yaml", &["providers"]),
];

/// Fixtures refused, with what the message must say. The docs' TOML tabs that write a
/// provider's `models` after its `[[providers.keys]]` or `[providers.model_mapping]` header put
/// it in that table (Go's decoder drops it silently: the provider then serves every model);
/// the snippets of a provider's `model_mapping` shown at the top level are fragments; the
/// tests' invalid ones are meant to be refused.
const REFUSED: &[(&str, &str)] = &[
    (
        "configuration-04.toml",
        "`models` is a field of `providers[0]`",
    ),
    (
        "configuration-20.toml",
        "`models` is a field of `providers[0]`",
    ),
    (
        "configuration-22.toml",
        "`models` is a field of `providers[0]`",
    ),
    ("providers-02.toml", "`models` is a field of `providers[0]`"),
    ("providers-06.toml", "`models` is a field of `providers[0]`"),
    ("providers-10.toml", "`models` is a field of `providers[0]`"),
    ("providers-22.toml", "`models` is a field of `providers[0]`"),
    ("providers-07.yaml", "model_mapping: unknown field"),
    ("providers-08.toml", "model_mapping: unknown field"),
    ("providers-17.yaml", "model_mapping: unknown field"),
    ("providers-18.toml", "model_mapping: unknown field"),
    ("providers-23.yaml", "model_mapping: unknown field"),
    ("providers-24.toml", "model_mapping: unknown field"),
    (
        "invalid-go-test-load-invalid-toml-01.toml",
        "3:25: invalid TOML:",
    ),
    ("invalid-go-test-load-invalid-yaml-01.yaml", "invalid YAML:"),
];

/// What `${VAR}` expands to in the fixtures: a URL for URL-ish names, a word otherwise.
fn env(name: &str) -> Option<String> {
    Some(if name.ends_with("_URL") || name.ends_with("_HOST") {
        "http://127.0.0.1:1".to_owned()
    } else {
        format!("test-{}", name.to_ascii_lowercase())
    })
}

fn fixtures() -> BTreeMap<String, (Format, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compat/go");
    std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            let format = match p.extension()?.to_str()? {
                "yaml" => Format::Yaml,
                "toml" => Format::Toml,
                _ => return None,
            };
            let name = p.file_name()?.to_str()?.to_owned();
            Some((name, (format, std::fs::read_to_string(&p).unwrap())))
        })
        .collect()
}

#[test]
fn every_go_config_loads_with_only_its_listed_warnings_or_is_refused_as_listed() {
    let fixtures = fixtures();
    assert!(fixtures.len() >= 140, "{} fixtures", fixtures.len());
    let mut failures = Vec::new();
    for (name, (format, text)) in &fixtures {
        let warned: Vec<&str> = WARNINGS
            .iter()
            .find(|(n, _)| n == name)
            .map_or(&[][..], |(_, w)| w)
            .to_vec();
        let refused = REFUSED.iter().find(|(n, _)| n == name).map(|(_, m)| *m);
        match (load_str_as_with_env(text, *format, &env), refused) {
            (Ok((_, warnings)), None) => {
                let paths: Vec<&str> = warnings
                    .iter()
                    .map(|w| w.split(':').next().unwrap_or_default())
                    .collect();
                if paths != warned {
                    failures.push(format!(
                        "{name}: warnings {warnings:?}, expected {warned:?}"
                    ));
                }
            }
            (Ok(_), Some(m)) => failures.push(format!("{name}: loaded, expected {m:?}")),
            (Err(e), Some(m)) if e.to_string().contains(m) => {}
            (Err(e), _) => failures.push(format!("{name}: refused: {e}")),
        }
    }
    let listed = WARNINGS.iter().map(|(n, _)| *n);
    for listed in listed.chain(REFUSED.iter().map(|(n, _)| *n)) {
        if !fixtures.contains_key(listed) {
            failures.push(format!("{listed}: listed but not a fixture"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Go's own example, TOML tab by YAML tab: where the docs show a config both ways, both load
/// into the same configuration here.
#[test]
fn each_docs_toml_tab_is_its_yaml_tab() {
    let fixtures = fixtures();
    let mut compared = 0;
    for (name, (format, text)) in &fixtures {
        if *format != Format::Yaml || name.starts_with("go-test") || name == "example.yaml" {
            continue;
        }
        // Tabs are extracted in order: the YAML tab `doc-NN`, then its TOML tab `doc-NN+1`.
        let Some((stem, n)) = name.trim_end_matches(".yaml").rsplit_once('-') else {
            continue;
        };
        let Ok(n) = n.parse::<u32>() else { continue };
        let Some((_, toml)) = fixtures.get(&format!("{stem}-{:02}.toml", n + 1)) else {
            continue;
        };
        let (Ok(yaml), Ok(toml)) = (
            load_str_as_with_env(text, Format::Yaml, &env),
            load_str_as_with_env(toml, Format::Toml, &env),
        ) else {
            continue;
        };
        assert!(yaml.0 == toml.0, "{name}: {:#?}\n{:#?}", yaml.0, toml.0);
        compared += 1;
    }
    assert!(compared >= 40, "only {compared} YAML/TOML pairs compared");
}

/// Every key of the Go relay's config structs (internal/config, internal/health,
/// internal/cache at the commit in tests/compat/go/SOURCE.md) has a row in the README's table.
#[test]
fn the_readme_says_what_becomes_of_every_go_config_key() {
    const GO_KEYS: &[&str] = &[
        "server.listen",
        "timeout_ms",
        "max_concurrent",
        "server.max_body_bytes",
        "server.api_key",
        "server.auth.api_key",
        "bearer_secret",
        "allow_bearer",
        "allow_subscription",
        "server.enable_http2",
        "providers[].name",
        "type",
        "enabled",
        "base_url",
        "models",
        "model_mapping",
        "providers[].keys[].key",
        "rpm_limit",
        "itpm_limit",
        "otpm_limit",
        "tpm_limit",
        "priority",
        "weight",
        "providers[].pooling.strategy",
        "providers[].pooling.enabled",
        "providers[].aws_region",
        "aws_access_key_id",
        "aws_secret_access_key",
        "providers[].gcp_project_id",
        "gcp_region",
        "providers[].azure_resource_name",
        "azure_deployment_id",
        "providers[].azure_api_version",
        "routing.strategy",
        "default_provider",
        "failover_timeout",
        "debug",
        "logging.level",
        "format",
        "output",
        "logging.pretty",
        "logging.debug_options",
        "health.health_check.enabled",
        "interval_ms",
        "health.circuit_breaker.failure_threshold",
        "open_duration_ms",
        "half_open_probes",
        "cache.*",
        "ristretto",
        "olric",
    ];
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let table: String = readme
        .lines()
        .skip_while(|l| !l.starts_with("| Go key |"))
        .take_while(|l| l.starts_with('|'))
        .map(|l| l.split('|').nth(1).unwrap_or_default())
        .collect();
    let missing: Vec<&&str> = GO_KEYS.iter().filter(|k| !table.contains(**k)).collect();
    assert!(missing.is_empty(), "no README row for {missing:?}");
}
