//! `clients`: validated into [`ClientConfig`]s. Errors name the client's position and field,
//! never a key.

use std::collections::HashMap;

use super::raw::RawClient;
use super::types::{AuthConfig, ClientConfig, KeyDigest, ProviderConfig};
use super::validate::{client_secret, non_negative, string_list, Ctx};

/// The longest client name: it is a metrics label and part of log lines.
const MAX_NAME: usize = 64;

pub(super) fn clients(
    raw: Vec<RawClient>,
    providers: &[ProviderConfig],
    auth: &AuthConfig,
    c: &mut Ctx,
) -> Vec<ClientConfig> {
    let mut out = Vec::with_capacity(raw.len());
    let mut by_name: HashMap<String, usize> = HashMap::new();
    let mut by_key: HashMap<KeyDigest, usize> = HashMap::new();
    let shorthand: Vec<KeyDigest> = [&auth.api_key, &auth.bearer_secret]
        .into_iter()
        .flatten()
        .map(|s| KeyDigest::of(s.expose().as_bytes()))
        .collect();
    for (i, r) in raw.into_iter().enumerate() {
        let path = format!("clients[{i}]");
        let name = name(r.name, &path, c);
        if let Some(name) = &name {
            if let Some(first) = by_name.insert(name.clone(), i) {
                c.error(
                    format!("{path}.name"),
                    format!("{name} is also the name of clients[{first}]"),
                );
            }
        }
        let digest = key(r.key, r.key_sha256, &path, c);
        if let Some(d) = digest {
            if let Some(first) = by_key.insert(d, i) {
                c.error(
                    format!("{path}.key"),
                    format!("is the same key as clients[{first}]'s: each client needs its own"),
                );
            }
            if shorthand.contains(&d) {
                c.error(
                    format!("{path}.key"),
                    "is the same key as server.auth's: a request with it could not be told apart",
                );
            }
        }
        let models = string_list(r.models, &format!("{path}.models"), c);
        for (j, m) in models.iter().enumerate() {
            if m.trim_end_matches('*').contains('*') {
                c.error(
                    format!("{path}.models[{j}]"),
                    "a * may only end a model pattern (claude-sonnet-*)",
                );
            }
        }
        let allowed = string_list(r.providers, &format!("{path}.providers"), c);
        for (j, p) in allowed.iter().enumerate() {
            if !providers.iter().any(|known| &known.name == p) {
                let names: Vec<&str> = providers.iter().map(|p| p.name.as_str()).collect();
                c.error(
                    format!("{path}.providers[{j}]"),
                    format!(
                        "names no configured provider: {p} (providers: {})",
                        names.join(", ")
                    ),
                );
            }
        }
        let mut limit =
            |v: Option<i64>, field: &str| non_negative(v, 0, &format!("{path}.{field}"), c) as u64;
        let rpm_limit = limit(r.rpm_limit, "rpm_limit");
        let itpm_limit = limit(r.itpm_limit, "itpm_limit");
        let otpm_limit = limit(r.otpm_limit, "otpm_limit");
        let max_concurrent = limit(r.max_concurrent, "max_concurrent");
        let daily_token_budget = limit(r.daily_token_budget, "daily_token_budget");
        let monthly_token_budget = limit(r.monthly_token_budget, "monthly_token_budget");
        let (Some(name), Some(key_sha256)) = (name, digest) else {
            continue;
        };
        out.push(ClientConfig {
            name,
            key_sha256,
            models,
            providers: allowed,
            rpm_limit,
            itpm_limit,
            otpm_limit,
            max_concurrent: u32::try_from(max_concurrent).unwrap_or(u32::MAX),
            daily_token_budget,
            monthly_token_budget,
            admin: r.admin.unwrap_or(false),
        });
    }
    out
}

/// Letters, digits, `.`, `_` and `-`: safe in a log line, a metrics label and a message.
fn name(v: Option<String>, path: &str, c: &mut Ctx) -> Option<String> {
    let name = v.map(|s| s.trim().to_owned()).unwrap_or_default();
    if name.is_empty() {
        c.error(format!("{path}.name"), "is required");
        return None;
    }
    let valid = name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !valid {
        c.error(
            format!("{path}.name"),
            format!("must be 1 to {MAX_NAME} letters, digits, '.', '_' or '-'"),
        );
        return None;
    }
    Some(name)
}

/// Exactly one of `key` and `key_sha256` (64 hex digits: `printf %s "$KEY" | sha256sum`).
fn key(
    key: Option<String>,
    key_sha256: Option<String>,
    path: &str,
    c: &mut Ctx,
) -> Option<KeyDigest> {
    let key = client_secret(key, &format!("{path}.key"), c);
    let hashed = key_sha256
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty());
    match (key, hashed) {
        (Some(_), Some(_)) => {
            c.error(
                format!("{path}.key_sha256"),
                "give either key or key_sha256, not both",
            );
            None
        }
        (None, None) => {
            c.error(
                format!("{path}.key"),
                "is required (or key_sha256, the SHA-256 of the key in hex)",
            );
            None
        }
        (Some(k), None) => Some(KeyDigest::of(k.expose().as_bytes())),
        (None, Some(h)) => match parse_hex(&h) {
            Some(d) => Some(KeyDigest(d)),
            None => {
                c.error(
                    format!("{path}.key_sha256"),
                    "must be 64 hexadecimal digits (printf %s \"$KEY\" | sha256sum)",
                );
                None
            }
        },
    }
}

fn parse_hex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_digests_parse_and_anything_else_does_not() {
        let d = KeyDigest::of(b"abc");
        let hex: String = d.0.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(parse_hex(&hex), Some(d.0));
        assert_eq!(parse_hex(&hex[1..]), None);
        assert_eq!(parse_hex(&format!("{}zz", &hex[2..])), None);
        assert_eq!(parse_hex("é".repeat(32).as_str()), None);
    }
}
