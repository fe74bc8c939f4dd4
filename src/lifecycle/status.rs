//! `cc-relay status`: a running relay's `/status` as a table (providers, circuits, each key
//! by id with bars for what is left of its limits, cooldowns, in flight), or as JSON.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

use super::client::get_url_json;
use super::LifecycleError;
use crate::config;

/// Where the relay is and how to authenticate to it.
pub struct StatusTarget {
    pub url: String,
    pub api_key: Option<String>,
}

impl StatusTarget {
    /// `--url` / `--api-key` (else `CC_RELAY_API_KEY`), filling in from the config: its
    /// listen address and its `server.auth.api_key`.
    pub fn resolve(
        url: Option<String>,
        api_key: Option<String>,
        config_path: Option<&Path>,
    ) -> Result<StatusTarget, LifecycleError> {
        let api_key = api_key.or_else(|| std::env::var("CC_RELAY_API_KEY").ok());
        let (url, api_key) = match url {
            Some(url) => (url, api_key),
            None => {
                let (cfg, _) = config::discover(config_path)?;
                let key = api_key.or_else(|| {
                    cfg.server
                        .auth
                        .api_key
                        .as_ref()
                        .map(|k| k.expose().to_owned())
                });
                (super::client::local_url(&cfg), key)
            }
        };
        Ok(StatusTarget {
            url: url.trim_end_matches('/').to_owned(),
            api_key,
        })
    }

    /// `GET /health`: whether the relay answers (no key needed).
    pub fn health(&self) -> Result<(), LifecycleError> {
        let url = format!("{}/health", self.url);
        match get_url_json(&url, None).map_err(LifecycleError::Status)? {
            (200, _) => Ok(()),
            (code, _) => Err(LifecycleError::Status(format!("{url} answered {code}"))),
        }
    }

    /// `GET /status`.
    pub fn fetch(&self) -> Result<Value, LifecycleError> {
        let credential = self.api_key.clone().map(|k| ("x-api-key", k));
        let url = format!("{}/status", self.url);
        match get_url_json(&url, credential.as_ref()).map_err(LifecycleError::Status)? {
            (200, status) => Ok(status),
            (401, _) => Err(LifecycleError::Status(
                "the relay refused the credential (give --api-key or CC_RELAY_API_KEY)".into(),
            )),
            (code, body) => Err(LifecycleError::Status(format!(
                "{url} answered {code}: {}",
                body["error"]["message"].as_str().unwrap_or("no details")
            ))),
        }
    }
}

/// A bar of `width` cells for `remaining` of `limit` (an unknown limit shows as `?`).
fn bar(remaining: u64, limit: u64, width: usize) -> String {
    if limit == 0 {
        return format!("{:<width$}", "?", width = width + 2);
    }
    let filled = ((remaining.min(limit) as f64 / limit as f64) * width as f64).round() as usize;
    format!("[{}{}]", "#".repeat(filled), ".".repeat(width - filled))
}

/// The status as a table.
pub fn render_table(status: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "config generation {}  routing {}",
        status["config_generation"],
        status["routing"]["strategy"].as_str().unwrap_or("-")
    );
    let shared = &status["shared_state"];
    if shared.is_object() {
        let _ = writeln!(
            out,
            "shared state {}  breaker {}  relays {}  share {:.2}  admitted {}  refused {}  \
             errors {}  timeouts {}  admission p99 <= {} us",
            shared["namespace"].as_str().unwrap_or("-"),
            shared["breaker"].as_str().unwrap_or("-"),
            shared["relays"],
            shared["share"].as_f64().unwrap_or(0.0),
            shared["admitted"],
            shared["refused"],
            shared["errors"],
            shared["timeouts"],
            shared["latency_p99_us"]
        );
    }
    for p in status["providers"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "\n{} ({})  circuit {}  in flight {}  keys available {}",
            p["name"].as_str().unwrap_or("-"),
            p["type"].as_str().unwrap_or("-"),
            p["circuit"].as_str().unwrap_or("-"),
            p["in_flight"],
            p["keys_available"]
        );
        let keys = p["keys"].as_array().cloned().unwrap_or_default();
        if keys.is_empty() {
            let _ = writeln!(out, "  (passthrough: the clients' own credentials)");
            continue;
        }
        let _ = writeln!(
            out,
            "  {:<16} {:<22} {:<22} {:<22} {:<10} in flight",
            "key", "requests", "input tokens", "output tokens", "cooldown"
        );
        for k in keys {
            let dim = |d: &str| {
                let limit = k[d]["limit"].as_u64().unwrap_or(0);
                let remaining = k[d]["remaining"].as_u64().unwrap_or(0);
                format!("{} {}", bar(remaining, limit, 10), remaining)
            };
            let cooldown = match (k["disabled"].as_bool(), k["cooling_down_ms"].as_u64()) {
                (Some(true), _) => "disabled".to_owned(),
                (_, Some(ms)) => format!("{:.1}s", ms as f64 / 1000.0),
                _ => "-".to_owned(),
            };
            let _ = writeln!(
                out,
                "  {:<16} {:<22} {:<22} {:<22} {:<10} {}",
                k["id"].as_str().unwrap_or("-"),
                dim("requests"),
                dim("input_tokens"),
                dim("output_tokens"),
                cooldown,
                k["in_flight"]
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_store_gets_a_line_when_configured() {
        let without = serde_json::json!({"config_generation": 1, "providers": []});
        assert!(!render_table(&without).contains("shared state"));
        let with = serde_json::json!({
            "config_generation": 1,
            "providers": [],
            "shared_state": {"namespace": "cc", "breaker": "open", "relays": 3, "share": 0.3333,
                             "admitted": 5, "refused": 1, "errors": 2, "timeouts": 0,
                             "latency_p99_us": 750}
        });
        let table = render_table(&with);
        assert!(
            table.contains("shared state cc  breaker open  relays 3  share 0.33"),
            "{table}"
        );
    }

    #[test]
    fn bars_show_what_is_left() {
        assert_eq!(bar(50, 100, 10), "[#####.....]");
        assert_eq!(bar(100, 100, 4), "[####]");
        assert_eq!(bar(0, 100, 4), "[....]");
        assert_eq!(bar(5, 0, 4).trim(), "?");
    }
}
