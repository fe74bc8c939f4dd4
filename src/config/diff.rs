//! What changed between two configurations, for the one log line a reload writes, and which of
//! the changes only an upgrade (a new process) can apply.

use std::collections::HashMap;
use std::fmt;
use std::fmt::Display;

use super::startup::STARTUP_SETTINGS;
use super::types::{ClientConfig, Config, KeyConfig, ProviderConfig};
use super::validate::key_fingerprint;

/// The differences between two configurations, by field name and key id; never a secret.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChangeSummary {
    parts: Vec<String>,
    upgrade: Vec<&'static str>,
}

impl ChangeSummary {
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// Settings that changed but cannot change in a running process (listeners, worker
    /// threads, files the server opened, its shutdown timings): they take effect on the next
    /// binary upgrade or restart.
    pub fn needs_upgrade(&self) -> Vec<&'static str> {
        self.upgrade.clone()
    }

    /// The individual changes, in the order the line shows them.
    pub fn parts(&self) -> &[String] {
        &self.parts
    }

    fn change(&mut self, field: &str, old: impl Display, new: impl Display) {
        self.parts.push(format!("{field} {old}→{new}"));
    }

    fn upgrade_change(&mut self, field: &'static str, old: impl Display, new: impl Display) {
        self.parts
            .push(format!("{field} {old}→{new} (needs upgrade)"));
        self.upgrade.push(field);
    }
}

impl fmt::Display for ChangeSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.parts.is_empty() {
            f.write_str("no changes")
        } else {
            f.write_str(&self.parts.join("; "))
        }
    }
}

pub fn summarize_changes(old: &Config, new: &Config) -> ChangeSummary {
    let mut s = ChangeSummary::default();
    server(old, new, &mut s);
    providers(&old.providers, &new.providers, &mut s);
    routing(old, new, &mut s);
    logging(old, new, &mut s);
    clients(&old.clients, &new.clients, &mut s);
    s
}

/// Clients added (+), removed (-) and changed (~), by name (a changed key shows as a change,
/// not which key).
fn clients(old: &[ClientConfig], new: &[ClientConfig], s: &mut ChangeSummary) {
    let mut list = Vec::new();
    for n in new {
        match old.iter().find(|o| o.name == n.name) {
            None => list.push(format!("+{}", n.name)),
            Some(o) if o != n => list.push(format!("~{}", n.name)),
            Some(_) => {}
        }
    }
    for o in old.iter().filter(|o| !new.iter().any(|n| n.name == o.name)) {
        list.push(format!("-{}", o.name));
    }
    if !list.is_empty() {
        s.parts.push(format!("clients {}", list.join(" ")));
    }
}

fn server(old: &Config, new: &Config, s: &mut ChangeSummary) {
    let (o, n) = (&old.server, &new.server);
    for setting in STARTUP_SETTINGS {
        let (was, now) = ((setting.show)(old), (setting.show)(new));
        if was != now {
            s.upgrade_change(setting.field, was, now);
        }
    }
    if o.upstream_read_timeout != n.upstream_read_timeout {
        s.change(
            "server.timeout_ms",
            o.upstream_read_timeout.as_millis(),
            n.upstream_read_timeout.as_millis(),
        );
    }
    if o.upstream_connect_timeout != n.upstream_connect_timeout {
        s.change(
            "server.connect_timeout_ms",
            o.upstream_connect_timeout.as_millis(),
            n.upstream_connect_timeout.as_millis(),
        );
    }
    if o.upstream_idle_timeout != n.upstream_idle_timeout {
        s.change(
            "server.upstream_idle_timeout_ms",
            o.upstream_idle_timeout.as_millis(),
            n.upstream_idle_timeout.as_millis(),
        );
    }
    if o.max_body_bytes != n.max_body_bytes {
        s.change("server.max_body_bytes", o.max_body_bytes, n.max_body_bytes);
    }
    if o.max_concurrent != n.max_concurrent {
        s.change("server.max_concurrent", o.max_concurrent, n.max_concurrent);
    }
    let (oa, na) = (&o.auth, &n.auth);
    if oa.api_key != na.api_key
        || oa.allow_bearer != na.allow_bearer
        || oa.bearer_secret != na.bearer_secret
    {
        // Which secret changed is not said: the line goes to logs.
        s.parts.push("server.auth changed".to_string());
    }
    if o.trusted_proxies != n.trusted_proxies {
        let show = |list: &[super::Cidr]| {
            let items: Vec<String> = list.iter().map(ToString::to_string).collect();
            format!("[{}]", items.join(", "))
        };
        s.change(
            "server.trusted_proxies",
            show(&o.trusted_proxies),
            show(&n.trusted_proxies),
        );
    }
}

fn providers(old: &[ProviderConfig], new: &[ProviderConfig], s: &mut ChangeSummary) {
    let mut list = Vec::new();
    for p in new.iter().filter(|p| !old.iter().any(|o| o.name == p.name)) {
        list.push(format!("+{}", p.name));
    }
    for p in old.iter().filter(|p| !new.iter().any(|n| n.name == p.name)) {
        list.push(format!("-{}", p.name));
    }
    // Order decides failover, so a reordering is a change.
    let old_order: Vec<&str> = old
        .iter()
        .map(|p| p.name.as_str())
        .filter(|n| new.iter().any(|p| p.name == *n))
        .collect();
    let new_order: Vec<&str> = new
        .iter()
        .map(|p| p.name.as_str())
        .filter(|n| old.iter().any(|p| p.name == *n))
        .collect();
    if old_order != new_order {
        list.push(format!(
            "order {}→{}",
            old_order.join(","),
            new_order.join(",")
        ));
    }
    if !list.is_empty() {
        s.parts.push(format!("providers: {}", list.join(" ")));
    }

    for n in new {
        if let Some(o) = old.iter().find(|o| o.name == n.name) {
            let items = provider(o, n);
            if !items.is_empty() {
                s.parts.push(format!("{}: {}", n.name, items.join(", ")));
            }
        }
    }
}

fn provider(o: &ProviderConfig, n: &ProviderConfig) -> Vec<String> {
    let mut items = Vec::new();
    if o.kind != n.kind {
        items.push(format!("type {}→{}", o.kind.name(), n.kind.name()));
    }
    if o.enabled != n.enabled {
        items.push(if n.enabled { "enabled" } else { "disabled" }.to_string());
    }
    if o.base_url != n.base_url {
        items.push(format!("base_url {}→{}", o.base_url, n.base_url));
    }
    if o.models != n.models {
        items.push("models changed".to_string());
    }
    if o.model_mapping != n.model_mapping {
        items.push("model_mapping changed".to_string());
    }
    if o.pooling.strategy != n.pooling.strategy {
        items.push(format!(
            "strategy {}→{}",
            o.pooling.strategy.as_str(),
            n.pooling.strategy.as_str()
        ));
    }
    if o.pooling.enabled != n.pooling.enabled {
        let show = |e: Option<bool>| e.map_or("auto".to_string(), |b| b.to_string());
        items.push(format!(
            "pooling.enabled {}→{}",
            show(o.pooling.enabled),
            show(n.pooling.enabled)
        ));
    }
    if o.pooling.max_wait != n.pooling.max_wait {
        items.push(format!(
            "pooling.max_wait_ms {}→{}",
            o.pooling.max_wait.as_millis(),
            n.pooling.max_wait.as_millis()
        ));
    }
    if o.pooling.max_cooldown != n.pooling.max_cooldown {
        items.push(format!(
            "pooling.max_cooldown_ms {}→{}",
            o.pooling.max_cooldown.as_millis(),
            n.pooling.max_cooldown.as_millis()
        ));
    }
    keys(&o.keys, &n.keys, &mut items);
    items
}

/// Keys are matched by the fingerprint of their secret: a renamed key is the same key with a
/// new id, a key whose secret changed under the same name is a replaced key.
fn keys(old: &[KeyConfig], new: &[KeyConfig], items: &mut Vec<String>) {
    let fp = |k: &KeyConfig| key_fingerprint(k.key.expose());
    let old_by_fp: HashMap<u64, &KeyConfig> = old.iter().map(|k| (fp(k), k)).collect();
    let new_by_fp: HashMap<u64, &KeyConfig> = new.iter().map(|k| (fp(k), k)).collect();

    let added: Vec<&KeyConfig> = new
        .iter()
        .filter(|k| !old_by_fp.contains_key(&fp(k)))
        .collect();
    let removed: Vec<&KeyConfig> = old
        .iter()
        .filter(|k| !new_by_fp.contains_key(&fp(k)))
        .collect();
    let mut set = Vec::new();
    let mut replaced = Vec::new();
    for a in &added {
        if removed.iter().any(|r| r.id == a.id) {
            replaced.push(a.id.as_str());
        } else {
            set.push(format!("+{}", a.id));
        }
    }
    for r in &removed {
        if !added.iter().any(|a| a.id == r.id) {
            set.push(format!("-{}", r.id));
        }
    }
    if !set.is_empty() {
        items.push(format!("keys {}", set.join(" ")));
    }
    for id in replaced {
        items.push(format!("{id} key replaced"));
    }

    for n in new {
        let Some(o) = old_by_fp.get(&fp(n)) else {
            continue;
        };
        let mut changes = Vec::new();
        let mut num = |field: &str, a: String, b: String| {
            if a != b {
                changes.push(format!("{field} {a}→{b}"));
            }
        };
        num("rpm", o.rpm_limit.to_string(), n.rpm_limit.to_string());
        num("itpm", o.itpm_limit.to_string(), n.itpm_limit.to_string());
        num("otpm", o.otpm_limit.to_string(), n.otpm_limit.to_string());
        num("priority", o.priority.to_string(), n.priority.to_string());
        num("weight", o.weight.to_string(), n.weight.to_string());
        // A renamed key reads as its id changing: `key-3a1b2c3d→primary`.
        let label = if o.id == n.id {
            o.id.clone()
        } else {
            format!("{}→{}", o.id, n.id)
        };
        if o.id != n.id || !changes.is_empty() {
            items.push(
                std::iter::once(label)
                    .chain(changes)
                    .collect::<Vec<_>>()
                    .join(" "),
            );
        }
    }
}

fn routing(old: &Config, new: &Config, s: &mut ChangeSummary) {
    let (o, n) = (&old.routing, &new.routing);
    if o.strategy != n.strategy {
        s.change("routing.strategy", o.strategy.as_str(), n.strategy.as_str());
    }
    if o.model_mapping != n.model_mapping {
        s.parts.push("routing.model_mapping changed".to_string());
    }
    if o.default_provider != n.default_provider {
        let show = |d: &Option<String>| d.clone().unwrap_or_else(|| "none".to_string());
        s.change(
            "routing.default_provider",
            show(&o.default_provider),
            show(&n.default_provider),
        );
    }
    if o.max_attempts != n.max_attempts {
        s.change("routing.max_attempts", o.max_attempts, n.max_attempts);
    }
}

fn logging(old: &Config, new: &Config, s: &mut ChangeSummary) {
    let (o, n) = (&old.logging, &new.logging);
    if o.level != n.level {
        s.change("logging.level", &o.level, &n.level);
    }
    if o.format != n.format {
        s.change("logging.format", &o.format, &n.format);
    }
    if o.output != n.output {
        s.change("logging.output", &o.output, &n.output);
    }
}
