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

/// The same starter in TOML (`config init --format toml`); a test checks that both load into the
/// same configuration.
pub const STARTER_CONFIG_TOML: &str = include_str!("../../conf/example.toml");

/// The syntax of a config file. The schema, validation, field paths and `${VAR}` expansion are
/// the same for both: a TOML document is turned into the YAML value tree and walked as one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Toml,
}

/// `--format`: the syntax of every config file this process reads, whatever its name.
static FORMAT_OVERRIDE: once_cell::sync::OnceCell<Format> = once_cell::sync::OnceCell::new();

/// Read every config file as `format` from now on (the command line's `--format`; reloads
/// included). The first call wins.
pub fn set_format_override(format: Format) {
    let _ = FORMAT_OVERRIDE.set(format);
}

impl Format {
    /// `--format` when given, else by extension as the Go cc-relay decides: `.toml` is TOML,
    /// anything else YAML.
    pub fn of_path(path: &Path) -> Format {
        if let Some(format) = FORMAT_OVERRIDE.get() {
            return *format;
        }
        Self::of_extension(path)
    }

    /// By extension alone.
    pub fn of_extension(path: &Path) -> Format {
        match path.extension() {
            Some(e) if e.eq_ignore_ascii_case("toml") => Format::Toml,
            _ => Format::Yaml,
        }
    }

    /// `yaml`/`yml` or `toml`.
    pub fn parse(name: &str) -> Option<Format> {
        match name.to_ascii_lowercase().as_str() {
            "yaml" | "yml" => Some(Format::Yaml),
            "toml" => Some(Format::Toml),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Yaml => "YAML",
            Format::Toml => "TOML",
        }
    }

    /// The documented starter config in this format.
    pub fn starter(self) -> &'static str {
        match self {
            Format::Yaml => STARTER_CONFIG,
            Format::Toml => STARTER_CONFIG_TOML,
        }
    }
}

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

/// [`load_str_with_warnings`] for text in `format`.
pub fn load_str_as(text: &str, format: Format) -> Result<(Config, Vec<String>), ConfigError> {
    load_format_with_env(text, format, &process_env)
}

/// [`load_str_as`] with `env` in place of the process environment for `${VAR}` expansion
/// (tests that load other people's configs).
pub fn load_str_as_with_env(
    text: &str,
    format: Format,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Config, Vec<String>), ConfigError> {
    load_format_with_env(text, format, env)
}

/// Reads, parses and validates a YAML file. Warnings go to `log::warn!`.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let (config, warnings) = load_file_with_warnings(path)?;
    log_warnings(&warnings);
    Ok(config)
}

/// [`load_file`], returning the warnings instead of logging them. The format follows the
/// extension ([`Format::of_path`]).
pub fn load_file_with_warnings(path: &Path) -> Result<(Config, Vec<String>), ConfigError> {
    load_file_as(path, Format::of_path(path))
}

/// [`load_file_with_warnings`] in an explicit format (`--format`).
pub fn load_file_as(path: &Path, format: Format) -> Result<(Config, Vec<String>), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    load_format_with_env(&text, format, &process_env).map_err(|e| e.in_file(path))
}

/// The files [`discover`] looks for, in order, when no path is given: `./cc-relay.yaml`,
/// `./cc-relay.toml`, then the Go cc-relay's `./config.yaml`, `./config.toml` and
/// `$HOME/.config/cc-relay/config.yaml` (or `.toml`).
pub fn search_paths() -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = [
        "cc-relay.yaml",
        "cc-relay.toml",
        "config.yaml",
        "config.toml",
    ]
    .into_iter()
    .map(PathBuf::from)
    .collect();
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        let dir = PathBuf::from(home).join(".config").join("cc-relay");
        paths.push(dir.join("config.yaml"));
        paths.push(dir.join("config.toml"));
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
    load_format_with_env(yaml, Format::Yaml, env)
}

/// The document as the YAML value tree the walker reads.
fn parse(text: &str, format: Format) -> Result<Value, ConfigError> {
    match format {
        Format::Yaml => {
            let mut value: Value =
                serde_yaml::from_str(text).map_err(|e| ConfigError::from_yaml(&e))?;
            // `<<: *defaults` merge keys, handy for keys sharing limits.
            value
                .apply_merge()
                .map_err(|e| ConfigError::from_yaml(&e))?;
            Ok(value)
        }
        Format::Toml => {
            let table: toml::Table =
                toml::from_str(text).map_err(|e| ConfigError::from_toml(&e, text))?;
            Ok(toml_to_yaml(toml::Value::Table(table)))
        }
    }
}

/// A TOML value as the same YAML value (a datetime, which no field takes, as its text).
fn toml_to_yaml(value: toml::Value) -> Value {
    match value {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::Number(i.into()),
        toml::Value::Float(f) => Value::Number(f.into()),
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(items) => Value::Sequence(items.into_iter().map(toml_to_yaml).collect()),
        toml::Value::Table(table) => Value::Mapping(
            table
                .into_iter()
                .map(|(k, v)| (Value::String(k), toml_to_yaml(v)))
                .collect(),
        ),
    }
}

/// Values a `${VAR}` put into the config at least this long are never quoted by an error or a
/// warning, wherever in a message they landed: such a value may be a credential, and shorter
/// ones (ports, flags) are what the messages need to show.
const HIDDEN_FROM: usize = 8;

pub(crate) fn load_format_with_env(
    text: &str,
    format: Format,
    env: Env<'_>,
) -> Result<(Config, Vec<String>), ConfigError> {
    let substituted = std::cell::RefCell::new(Vec::<String>::new());
    let recording = |name: &str| {
        let value = env(name);
        if let Some(v) = value.as_ref().filter(|v| v.len() >= HIDDEN_FROM) {
            substituted.borrow_mut().push(v.clone());
        }
        value
    };
    let loaded = load_expanded(text, format, &recording);
    let substituted = substituted.into_inner();
    match loaded {
        Ok((config, mut warnings)) => {
            for warning in &mut warnings {
                hide(warning, &substituted);
            }
            Ok((config, warnings))
        }
        Err(mut error) => {
            hide_in_error(&mut error, &substituted);
            Err(error)
        }
    }
}

/// Replace every value of `substituted` in `message`.
fn hide(message: &mut String, substituted: &[String]) {
    for value in substituted {
        if message.contains(value.as_str()) {
            *message = message.replace(value.as_str(), "(a value from the environment, not shown)");
        }
    }
}

fn hide_in_error(error: &mut ConfigError, substituted: &[String]) {
    match error {
        ConfigError::Invalid { message, .. } | ConfigError::Syntax { message, .. } => {
            hide(message, substituted)
        }
        ConfigError::Many { errors } => {
            for e in errors {
                hide_in_error(e, substituted);
            }
        }
        ConfigError::Io { .. } => {}
    }
}

fn load_expanded(
    text: &str,
    format: Format,
    env: Env<'_>,
) -> Result<(Config, Vec<String>), ConfigError> {
    let mut value = parse(text, format)?;
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
    if format == Format::Toml {
        for e in &mut errors {
            explain_toml_table(e);
        }
    }
    Err(ConfigError::from_issues(errors))
}

/// A field that belongs to an enclosing table but was written after a sub-table's header (TOML
/// puts it in the sub-table): say where it was meant to go.
fn explain_toml_table(error: &mut ConfigError) {
    if let ConfigError::Invalid { path, message } = error {
        if let Some(owner) = super::raw::enclosing_owner(path) {
            let field = path.rsplit('.').next().unwrap_or_default();
            message.push_str(&format!(
                " (`{field}` is a field of `{owner}`: in TOML every line after a [table] \
                 header belongs to that table, so write it above the header)"
            ));
        }
    }
}

fn log_warnings(warnings: &[String]) {
    for w in warnings {
        log::warn!("config: {w}");
    }
}
