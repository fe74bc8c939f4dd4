//! `cc-relay config cc init` / `config cc remove`: point Claude Code at the relay through its
//! user settings file (`~/.claude/settings.json`, or `$CLAUDE_CONFIG_DIR/settings.json`), in
//! its `env` object, as the Go cc-relay does.
//!
//! What is written: `ANTHROPIC_BASE_URL` and the relay's key: `ANTHROPIC_AUTH_TOKEN` (sent as
//! a bearer token) when the relay accepts bearer tokens, `ANTHROPIC_API_KEY` (sent as
//! `x-api-key`) when it takes only that, and the Go relay's placeholder
//! `ANTHROPIC_AUTH_TOKEN=managed-by-cc-relay` when it checks no key. `remove` takes out what the
//! Go relay's takes out (`ANTHROPIC_BASE_URL`, `ANTHROPIC_AUTH_TOKEN`) and `ANTHROPIC_API_KEY`
//! when it holds the relay's key, then an `env` left empty.
//!
//! The file is edited as text through a concrete syntax tree (`jsonc-parser`), so every other
//! byte (key order, indentation, comments) stays as it was: `init` then `remove` gives back
//! the original file. A change is written to a temporary file in the same directory and renamed
//! over the original, after a copy of the original to `settings.json.cc-relay.bak`; nothing is
//! written when nothing changes. The key is never printed.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use jsonc_parser::cst::{CstInputValue, CstObject, CstRootNode};
use jsonc_parser::ParseOptions;

use super::LifecycleError;
use crate::config;

const BASE_URL: &str = "ANTHROPIC_BASE_URL";
const AUTH_TOKEN: &str = "ANTHROPIC_AUTH_TOKEN";
const API_KEY: &str = "ANTHROPIC_API_KEY";
/// The Go relay's token for a relay that checks none (Claude Code then asks for no login).
const PLACEHOLDER_TOKEN: &str = "managed-by-cc-relay";

fn failed(message: String) -> LifecycleError {
    LifecycleError::Status(message)
}

/// What `config cc` writes, and where.
pub struct ClaudeCodeSetup {
    pub settings: PathBuf,
    pub url: String,
    /// `(variable, value)`: the relay key's entry.
    key_entry: (&'static str, String),
    /// Whether the value is the relay's real key (masked in output) or the placeholder.
    key_is_secret: bool,
}

/// Claude Code's user settings file.
pub fn settings_path() -> Result<PathBuf, LifecycleError> {
    let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = env("CLAUDE_CONFIG_DIR") {
        return Ok(PathBuf::from(dir).join("settings.json"));
    }
    env("HOME")
        .map(|home| PathBuf::from(home).join(".claude").join("settings.json"))
        .ok_or_else(|| failed("HOME is not set: cannot find Claude Code's settings".into()))
}

impl ClaudeCodeSetup {
    /// The URL (`--url`, else the config's listen address), the key (`--api-key-env`'s
    /// variable, else the config's `server.auth`) and the variable Claude Code sends it in.
    pub fn resolve(
        url: Option<String>,
        api_key_env: Option<&str>,
        config_path: Option<&Path>,
    ) -> Result<ClaudeCodeSetup, LifecycleError> {
        let (cfg, _, _) = config::discover_with_warnings(config_path)?;
        let url = url
            .unwrap_or_else(|| super::client::local_url(&cfg))
            .trim_end_matches('/')
            .to_owned();
        let auth = &cfg.server.auth;
        let key = match api_key_env {
            Some(name) => Some(
                std::env::var(name)
                    .ok()
                    .filter(|v| !v.trim().is_empty())
                    .ok_or_else(|| failed(format!("{name} is not set or empty")))?,
            ),
            None => auth
                .bearer_secret
                .as_ref()
                .or(auth.api_key.as_ref())
                .map(|k| k.expose().to_owned()),
        };
        let bearer = auth.allow_bearer || auth.bearer_secret.is_some() || !auth.is_enabled();
        let (key_entry, key_is_secret) = match key {
            Some(key) if bearer => ((AUTH_TOKEN, key), true),
            Some(key) => ((API_KEY, key), true),
            None => ((AUTH_TOKEN, PLACEHOLDER_TOKEN.to_owned()), false),
        };
        Ok(ClaudeCodeSetup {
            settings: settings_path()?,
            url,
            key_entry,
            key_is_secret,
        })
    }

    fn shown(&self, name: &str, value: &str) -> String {
        if name == self.key_entry.0 && self.key_is_secret {
            format!("{name}=(the relay's key, {} characters)", value.len())
        } else {
            format!("{name}={value}")
        }
    }

    /// Write the relay's entries; report what was done (or, with `dry_run`, what would be).
    pub fn init(&self, dry_run: bool) -> Result<String, LifecycleError> {
        let original = read(&self.settings)?;
        let entries = [
            (BASE_URL, self.url.clone()),
            (self.key_entry.0, self.key_entry.1.clone()),
        ];
        // A placeholder token left by an earlier init would be sent instead of the key.
        let stale: &[(&str, &str)] = if self.key_entry.0 == API_KEY {
            &[(AUTH_TOKEN, PLACEHOLDER_TOKEN)]
        } else {
            &[]
        };
        let updated = with_entries(original.as_deref(), &entries, stale)
            .map_err(|e| failed(format!("{}: {e}", self.settings.display())))?;
        let mut out = String::new();
        if original.as_deref() == Some(updated.as_str()) {
            let _ = writeln!(
                out,
                "Claude Code is already configured to use cc-relay at {}\nSettings file: {}",
                self.url,
                self.settings.display()
            );
            return Ok(out);
        }
        if dry_run {
            let _ = writeln!(out, "Would set in {}:", self.settings.display());
            for (name, value) in &entries {
                let _ = writeln!(out, "  env.{}", self.shown(name, value));
            }
            return Ok(out);
        }
        replace(&self.settings, original.as_deref(), &updated)?;
        let _ = writeln!(
            out,
            "Claude Code configured to use cc-relay at {}\nSettings file: {}\n\n\
             Environment variables added:",
            self.url,
            self.settings.display()
        );
        for (name, value) in &entries {
            let _ = writeln!(out, "  {}", self.shown(name, value));
        }
        out.push_str("\nRestart Claude Code for changes to take effect.\n");
        Ok(out)
    }

    /// Take the relay's entries out; report what was done (or would be).
    pub fn remove(&self, dry_run: bool) -> Result<String, LifecycleError> {
        let none = || "No cc-relay configuration found in Claude Code settings.\n".to_owned();
        let Some(original) = read(&self.settings)? else {
            return Ok(none());
        };
        let relay_key = self.key_is_secret.then_some(self.key_entry.1.as_str());
        let (updated, removed) = without_entries(&original, relay_key)
            .map_err(|e| failed(format!("{}: {e}", self.settings.display())))?;
        if removed.is_empty() {
            return Ok(none());
        }
        let mut out = String::new();
        if dry_run {
            let _ = writeln!(out, "Would remove from {}:", self.settings.display());
        } else {
            replace(&self.settings, Some(&original), &updated)?;
            out.push_str("Removed cc-relay configuration from Claude Code:\n");
        }
        for name in &removed {
            let _ = writeln!(out, "  - {name}");
        }
        if !dry_run {
            let _ = writeln!(
                out,
                "\nSettings file: {}\nRestart Claude Code for changes to take effect.",
                self.settings.display()
            );
        }
        Ok(out)
    }
}

/// The file's text, `None` when there is none yet.
fn read(path: &Path) -> Result<Option<String>, LifecycleError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(failed(format!("cannot read {}: {e}", path.display()))),
    }
}

fn parse(text: &str) -> Result<CstRootNode, String> {
    let root = CstRootNode::parse(text, &ParseOptions::default())
        .map_err(|e| format!("not valid JSON ({e}); left untouched"))?;
    if root.value().is_some() && root.object_value().is_none() {
        return Err("its top level is not a JSON object; left untouched".into());
    }
    Ok(root)
}

/// The `env` object of `root`'s object, if it is one.
fn env_object(settings: &CstObject) -> Result<Option<CstObject>, String> {
    match settings.get("env") {
        None => Ok(None),
        Some(prop) => match prop.value().and_then(|v| v.as_object()) {
            Some(env) => Ok(Some(env)),
            None => Err("its \"env\" is not an object; left untouched".into()),
        },
    }
}

/// `text` (or a new settings file) with `entries` set in `env`: existing ones changed in
/// place, new ones appended; and without the `stale` entries that hold exactly that value.
fn with_entries(
    text: Option<&str>,
    entries: &[(&str, String)],
    stale: &[(&str, &str)],
) -> Result<String, String> {
    let Some(text) = text.filter(|t| !t.trim().is_empty()) else {
        let env: serde_json::Map<String, serde_json::Value> = entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), serde_json::Value::String(v.clone())))
            .collect();
        let settings = serde_json::json!({ "env": env });
        let mut fresh = serde_json::to_string_pretty(&settings).map_err(|e| e.to_string())?;
        fresh.push('\n');
        return Ok(fresh);
    };
    let root = parse(text)?;
    let settings = root.object_value_or_set();
    let env = match env_object(&settings)? {
        Some(env) => env,
        None => settings.object_value_or_set("env"),
    };
    for (name, value) in entries {
        match env.get(name) {
            Some(prop) => {
                if string_value(&prop).as_deref() != Some(value.as_str()) {
                    prop.set_value(CstInputValue::String(value.clone()));
                }
            }
            None => {
                env.append(name, CstInputValue::String(value.clone()));
            }
        }
    }
    for (name, value) in stale {
        if let Some(prop) = env.get(name) {
            if string_value(&prop).as_deref() == Some(*value) {
                prop.remove();
            }
        }
    }
    Ok(root.to_string())
}

/// A property's value when it is a string.
fn string_value(prop: &jsonc_parser::cst::CstObjectProp) -> Option<String> {
    prop.value()?.as_string_lit()?.decoded_value().ok()
}

/// `text` without the relay's entries (`ANTHROPIC_API_KEY` only when it is `relay_key`), and
/// the names taken out.
fn without_entries(
    text: &str,
    relay_key: Option<&str>,
) -> Result<(String, Vec<&'static str>), String> {
    let root = parse(text)?;
    let Some(settings) = root.object_value() else {
        return Ok((text.to_owned(), Vec::new()));
    };
    let Some(env) = env_object(&settings)? else {
        return Ok((text.to_owned(), Vec::new()));
    };
    let mut removed = Vec::new();
    for name in [BASE_URL, AUTH_TOKEN, API_KEY] {
        let Some(prop) = env.get(name) else {
            continue;
        };
        if name == API_KEY && (relay_key.is_none() || string_value(&prop).as_deref() != relay_key) {
            continue;
        }
        prop.remove();
        removed.push(name);
    }
    if env.properties().is_empty() {
        if let Some(prop) = settings.get("env") {
            prop.remove();
        }
    }
    Ok((root.to_string(), removed))
}

/// Replace `path`'s content with `text`: the original copied to `*.cc-relay.bak` first, the new
/// content written to a temporary file beside it and renamed over it (a reader sees the old
/// file or the new one, never half of one). Permissions: the original's, else 0600.
fn replace(path: &Path, original: Option<&str>, text: &str) -> Result<(), LifecycleError> {
    let io = |what: &str, e: std::io::Error| failed(format!("{what} {}: {e}", path.display()));
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| io("cannot create the directory of", e))?;
    if original.is_some() {
        let mut backup = path.as_os_str().to_owned();
        backup.push(".cc-relay.bak");
        std::fs::copy(path, &backup).map_err(|e| io("cannot back up", e))?;
    }
    let mut temp =
        tempfile::NamedTempFile::new_in(dir).map_err(|e| io("cannot write beside", e))?;
    temp.write_all(text.as_bytes())
        .and_then(|()| temp.as_file().sync_all())
        .map_err(|e| io("cannot write beside", e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).map_or(0o600, |m| m.permissions().mode() & 0o7777);
        std::fs::set_permissions(temp.path(), std::fs::Permissions::from_mode(mode))
            .map_err(|e| io("cannot set the permissions of", e))?;
    }
    temp.persist(path)
        .map_err(|e| io("cannot replace", e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: &str = r#"{
  "model": "opus",
  // a comment Claude Code users keep
  "permissions": {"allow": ["Bash(ls:*)"]},
  "env": {
    "DISABLE_TELEMETRY": "1"
  },
  "statusLine": {"type": "command", "command": "x"}
}
"#;

    fn entries(key: &str) -> [(&'static str, String); 2] {
        [
            (BASE_URL, "http://127.0.0.1:8787".to_owned()),
            (AUTH_TOKEN, key.to_owned()),
        ]
    }

    #[test]
    fn init_then_remove_gives_back_the_file_byte_for_byte() {
        let with = with_entries(Some(SETTINGS), &entries("relay-key"), &[]).unwrap();
        assert!(with.contains(
            "\"DISABLE_TELEMETRY\": \"1\",\n    \"ANTHROPIC_BASE_URL\": \"http://127.0.0.1:8787\""
        ));
        assert!(with.contains("// a comment Claude Code users keep"));
        // Idempotent.
        assert_eq!(
            with_entries(Some(&with), &entries("relay-key"), &[]).unwrap(),
            with
        );
        let (without, removed) = without_entries(&with, Some("relay-key")).unwrap();
        assert_eq!(removed, [BASE_URL, AUTH_TOKEN]);
        assert_eq!(without, SETTINGS);
    }

    #[test]
    fn an_env_the_relay_created_goes_again_and_a_new_file_is_plain_json() {
        let bare = "{\n  \"model\": \"opus\"\n}\n";
        let with = with_entries(Some(bare), &entries("k"), &[]).unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&with).unwrap();
        assert_eq!(parsed["env"][BASE_URL], "http://127.0.0.1:8787");
        assert_eq!(without_entries(&with, None).unwrap().0, bare);
        let fresh = with_entries(None, &entries("k"), &[]).unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&fresh).unwrap();
        assert_eq!(parsed["env"][AUTH_TOKEN], "k");
    }

    #[test]
    fn a_users_own_api_key_stays_and_broken_files_are_refused() {
        let text =
            "{\"env\": {\"ANTHROPIC_API_KEY\": \"users-own\", \"ANTHROPIC_BASE_URL\": \"u\"}}";
        let (without, removed) = without_entries(text, Some("relay-key")).unwrap();
        assert_eq!(removed, [BASE_URL]);
        assert!(without.contains("users-own"));
        assert!(with_entries(Some("{\"env\": "), &entries("k"), &[]).is_err());
        assert!(with_entries(Some("[1]"), &entries("k"), &[]).is_err());
        assert!(with_entries(Some("{\"env\": 3}"), &entries("k"), &[]).is_err());
    }
}
