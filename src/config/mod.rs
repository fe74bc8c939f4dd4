//! Configuration: YAML as users write it (compatible with the Go cc-relay) → validated runtime
//! types ([`Config`]).
//!
//! Loading: parse YAML → walk the tree against the schema in `raw.rs` (unknown keys are errors
//! with their path, Go-only keys are dropped with a warning, `${VAR}` is expanded, scalars are
//! type-checked) → deserialize into the raw serde types → `validate.rs` turns them into
//! [`Config`], reporting every problem at once. Errors and warnings name field paths and never
//! contain a secret.

mod cidr;
mod clients;
mod diff;
mod error;
mod expand;
mod load;
mod raw;
mod shared_state;
mod startup;
mod types;
mod validate;

#[cfg(test)]
mod tests;
pub mod tls;

pub use cidr::Cidr;
pub use diff::{summarize_changes, ChangeSummary};
pub use error::ConfigError;
pub use load::{
    discover, discover_with_warnings, embedded_default, load_file, load_file_as,
    load_file_with_warnings, load_str, load_str_as, load_str_as_with_env, load_str_with_warnings,
    search_paths, set_format_override, ConfigSource, Format, STARTER_CONFIG, STARTER_CONFIG_TOML,
};
pub use raw::go_ignored_keys;
pub use raw::Node as FieldSchema;
pub use startup::{keep_running_startup_settings, StartupSetting, STARTUP_SETTINGS};
pub use types::*;
pub use validate::{key_fingerprint, parse_base_url, MAX_MAX_ATTEMPTS};
