//! Finding, reading and loading configuration files.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};

use super::error::ConfigError;
use super::expand::{process_env, Env};
use super::raw::{decode, Walker, TOP};
use super::types::Config;
use super::validate::validate;

/// The documented reference configuration written by `cc-relay config init`. It loads as is,
/// with no environment variables set.
pub const STARTER_CONFIG: &str = include_str!("../../conf/example.yaml");

/// The configuration used when no file is found: listen on loopback, one Anthropic provider.
/// Its key list is added only when `ANTHROPIC_API_KEY` is set, because an empty key is an error
/// while no key at all is a meaningful mode (passthrough of each client's own credentials).
const EMBEDDED_BASE: &str = "\
server:
  listen: \"127.0.0.1:8787\"
providers:
  - name: anthropic
    type: anthropic
";
// No `\` line continuation here: it would eat the indentation YAML needs.
const EMBEDDED_KEYS: &str = "    keys:\n      - key: \"${ANTHROPIC_API_KEY}\"\n";

/// Where the running configuration came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    File(PathBuf),
    Embedded,
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigSource::File(p) => write!(f, "{}", p.display()),
            ConfigSource::Embedded => f.write_str("built-in defaults (no config file found)"),
        }
    }
}

/// Parses and validates YAML text. Warnings (Go keys that are ignored, …) go to `log::warn!`;
/// use [`load_str_with_warnings`] where no logger is set up yet.
pub fn load_str(yaml: &str) -> Result<Config, ConfigError> {
    let (config, warnings) = load_str_with_warnings(yaml)?;
    log_warnings(&warnings);
    Ok(config)
}

/// [`load_str`], returning the warnings instead of logging them.
pub fn load_str_with_warnings(yaml: &str) -> Result<(Config, Vec<String>), ConfigError> {
    load_with_env(yaml, &process_env)
}

/// Reads, parses and validates a YAML file. Warnings go to `log::warn!`.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let (config, warnings) = load_file_with_warnings(path)?;
    log_warnings(&warnings);
    Ok(config)
}

/// [`load_file`], returning the warnings instead of logging them.
pub fn load_file_with_warnings(path: &Path) -> Result<(Config, Vec<String>), ConfigError> {
    let is_toml = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("toml"));
    if is_toml {
        // The Go cc-relay also read TOML; say so plainly instead of a YAML syntax error.
        return Err(ConfigError::invalid(
            path.display().to_string(),
            "TOML configuration files are not supported; write the same keys as YAML",
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    load_with_env(&text, &process_env).map_err(|e| e.in_file(path))
}

/// The files [`discover`] looks for, in order, when no path is given: `./cc-relay.yaml`, then
/// `$HOME/.config/cc-relay/config.yaml`.
pub fn search_paths() -> Vec<PathBuf> {
    let mut paths = vec![PathBuf::from("cc-relay.yaml")];
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        paths.push(
            PathBuf::from(home)
                .join(".config")
                .join("cc-relay")
                .join("config.yaml"),
        );
    }
    paths
}

/// The configuration to run with: `explicit` if given (it must exist), else the first of
/// [`search_paths`] that exists, else [`embedded_default`]. Warnings go to `log::warn!`.
pub fn discover(explicit: Option<&Path>) -> Result<(Config, ConfigSource), ConfigError> {
    let (config, source, warnings) = discover_with_warnings(explicit)?;
    log_warnings(&warnings);
    Ok((config, source))
}

/// [`discover`], returning the warnings instead of logging them.
pub fn discover_with_warnings(
    explicit: Option<&Path>,
) -> Result<(Config, ConfigSource, Vec<String>), ConfigError> {
    let found = match explicit {
        Some(p) => Some(p.to_path_buf()),
        // `exists`, not `is_file`: a path that exists but cannot be read is an error to
        // report, not a reason to fall back silently to another configuration.
        None => search_paths().into_iter().find(|p| p.exists()),
    };
    match found {
        Some(path) => {
            let (config, warnings) = load_file_with_warnings(&path)?;
            Ok((config, ConfigSource::File(path), warnings))
        }
        None => {
            let (config, warnings) = embedded_with_env(&process_env);
            Ok((config, ConfigSource::Embedded, warnings))
        }
    }
}

/// Listen on 127.0.0.1:8787 with one provider `anthropic`; its key is `ANTHROPIC_API_KEY` when
/// that is set and non-empty, otherwise it has no keys and forwards each client's credentials.
pub fn embedded_default() -> Config {
    embedded_with_env(&process_env).0
}

pub(crate) fn embedded_with_env(env: Env<'_>) -> (Config, Vec<String>) {
    // Read the variable once, so the choice of template and the expansion agree even if the
    // environment changes in between.
    let key = env("ANTHROPIC_API_KEY").filter(|k| !k.trim().is_empty());
    let yaml = if key.is_some() {
        format!("{EMBEDDED_BASE}{EMBEDDED_KEYS}")
    } else {
        EMBEDDED_BASE.to_string()
    };
    let env = |name: &str| {
        if name == "ANTHROPIC_API_KEY" {
            key.clone()
        } else {
            env(name)
        }
    };
    load_with_env(&yaml, &env).expect("the embedded default configuration is valid")
}

pub(crate) fn load_with_env(
    yaml: &str,
    env: Env<'_>,
) -> Result<(Config, Vec<String>), ConfigError> {
    let mut value: Value = serde_yaml::from_str(yaml).map_err(|e| ConfigError::from_yaml(&e))?;
    // `<<: *defaults` merge keys, handy for keys sharing limits.
    value
        .apply_merge()
        .map_err(|e| ConfigError::from_yaml(&e))?;
    if value.is_null() {
        // An empty file (or only comments): every section takes its defaults.
        value = Value::Mapping(Mapping::new());
    }

    let mut walker = Walker::new(env);
    let walked = walker.walk(value, &TOP, "", false);
    let walk_errors = walker.errors;
    let mut warnings = walker.warnings;
    let raw = match walked {
        Some(v) => decode(v)?,
        // The document is not a mapping at all: nothing else is worth saying.
        None => return Err(ConfigError::from_issues(walk_errors)),
    };

    let validate_errors = match validate(raw, &mut warnings) {
        Ok(config) if walk_errors.is_empty() => return Ok((config, warnings)),
        Ok(_) => Vec::new(),
        Err(errors) => errors,
    };
    // A field the walk rejected was dropped, so validation may complain again about the same
    // place ("is required"): keep only the first, more precise, message for each place.
    // A set of the places, and each later message checked by its prefixes ending at a `.` or a
    // `[`: linear in the number of messages (a file can hold 100,000 broken entries).
    let errored: std::collections::HashSet<String> = walk_errors
        .iter()
        .filter_map(|e| e.path().map(str::to_string))
        .collect();
    let mut errors = walk_errors;
    errors.extend(validate_errors.into_iter().filter(|e| {
        let p = e.path().unwrap_or("");
        let within = |end: usize| errored.contains(&p[..end]);
        !(within(p.len())
            || p.char_indices()
                .any(|(i, ch)| (ch == '.' || ch == '[') && within(i)))
    }));
    Err(ConfigError::from_issues(errors))
}

fn log_warnings(warnings: &[String]) {
    for w in warnings {
        log::warn!("config: {w}");
    }
}
