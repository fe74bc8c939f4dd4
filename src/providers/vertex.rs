//! `type: vertex`: Claude on Google Vertex AI. The Messages API is served per model at
//! `{base}/v1/projects/{project}/locations/{region}/publishers/anthropic/models/{model}:rawPredict`
//! (`:streamRawPredict` for streams, `count-tokens:rawPredict` for token counts). The body
//! loses `model` (it is in the path) and gains `"anthropic_version": "vertex-2023-10-16"`;
//! responses are Anthropic's JSON and SSE as they are, errors Google-shaped (rewritten into
//! Anthropic's). Each key is a Google credential (`gcp_credentials_file`, or Application
//! Default Credentials when the provider lists none) whose OAuth token `gcp_token` keeps fresh.

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST};
use http::{HeaderName, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorType};

use super::gcp_token::{check, CredentialSource};
use super::reshape::error_adapter;
use super::wire::{path_segment, top_level, write_field, TopLevel};
use super::{kind_option, ProviderKind, ResponseAdapter, UpstreamRequest, Verdict};
use crate::config::{parse_base_url, ConfigError, FieldSchema, KeyConfig, ProviderConfig};

pub struct Vertex;

pub static VERTEX: Vertex = Vertex;

const ANTHROPIC_VERSION: &str = "vertex-2023-10-16";

static FIELDS: [(&str, FieldSchema); 2] = [
    ("gcp_project_id", FieldSchema::Str),
    ("gcp_region", FieldSchema::Str),
];

/// A project id or region as it may appear in a URL path (letters, digits, `-`, `_`, `.`).
fn path_safe(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Vertex's endpoint for `region`: global, the `us`/`eu` multi-regions, or a region.
fn regional_base(region: &str) -> String {
    match region {
        "global" => "https://aiplatform.googleapis.com".to_owned(),
        "us" | "eu" => format!("https://aiplatform.{region}.rep.googleapis.com"),
        r => format!("https://{r}-aiplatform.googleapis.com"),
    }
}

/// Where a key's tokens come from.
pub fn credential_source(key: &KeyConfig) -> CredentialSource {
    match &key.gcp_credentials_file {
        Some(path) => CredentialSource::File(path.clone()),
        None => CredentialSource::Adc,
    }
}

impl ProviderKind for Vertex {
    fn name(&self) -> &'static str {
        "vertex"
    }

    /// Only a placeholder: `configure` derives the real one from the region.
    fn default_base_url(&self) -> &'static str {
        "https://aiplatform.googleapis.com"
    }

    fn config_fields(&self) -> &'static [(&'static str, FieldSchema)] {
        &FIELDS
    }

    fn configure(
        &self,
        provider: &mut ProviderConfig,
        base_url_given: bool,
        path: &str,
    ) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let mut required = |name: &str, what: &str| match kind_option(provider, name) {
            Some(v) if path_safe(v) => Some(v.to_owned()),
            Some(v) => {
                errors.push(ConfigError::invalid(
                    format!("{path}.{name}"),
                    format!("{v:?} is not a {what} (letters, digits, '-', '_', '.')"),
                ));
                None
            }
            None => {
                errors.push(ConfigError::invalid(
                    format!("{path}.{name}"),
                    format!("is required for type vertex (the {what})"),
                ));
                None
            }
        };
        let project = required("gcp_project_id", "Google Cloud project id");
        let region = required("gcp_region", "Vertex AI region");
        if let (Some(project), Some(region)) = (project, region) {
            let base = if base_url_given {
                let b = &provider.base_url;
                let scheme = if b.tls { "https" } else { "http" };
                format!("{scheme}://{}{}", b.host_header(), b.path_prefix)
            } else {
                regional_base(&region)
            };
            let url = format!(
                "{base}/v1/projects/{project}/locations/{region}/publishers/anthropic/models"
            );
            match parse_base_url(&url) {
                Ok(b) => provider.base_url = b,
                Err(m) => errors.push(ConfigError::invalid(format!("{path}.gcp_region"), m)),
            }
        }
        // No keys: one implicit credential, Application Default Credentials.
        if provider.keys.is_empty() {
            provider.keys.push(KeyConfig::implicit("adc"));
        }
        for (i, key) in provider.keys.iter().enumerate() {
            if let Err(e) = check(&credential_source(key)) {
                errors.push(ConfigError::invalid(
                    format!("{path}.keys[{i}].gcp_credentials_file"),
                    e.to_string(),
                ));
            }
        }
        errors
    }

    /// Tokens are not a fixed header: `gcp_token` supplies them.
    fn credential(&self, _key: &str) -> Option<(HeaderName, HeaderValue)> {
        None
    }

    fn uses_tokens(&self) -> bool {
        true
    }

    fn prepare(&self, request: &mut UpstreamRequest<'_>) -> pingora::Result<()> {
        let (path, _) = request
            .origin
            .split_once('?')
            .unwrap_or((request.origin, ""));
        let counting = path.trim_end_matches('/') == "/v1/messages/count_tokens";
        let translated = translate(request.body, counting)
            .map_err(|m| Error::explain(super::UNSENDABLE_BODY, m))?;
        let method = match (counting, translated.stream) {
            (true, _) => "count-tokens:rawPredict".to_owned(),
            (false, true) => format!("{}:streamRawPredict", encode_segment(&translated.model)),
            (false, false) => format!("{}:rawPredict", encode_segment(&translated.model)),
        };
        *request.body = translated.body;
        let header = &mut *request.header;
        if let Some((name, value)) = request.credential {
            header.insert_header(name.clone(), value.clone())?;
        }
        header.insert_header(HOST, request.host.clone())?;
        header.insert_header(CONTENT_LENGTH, HeaderValue::from(request.body.len()))?;
        let target = format!("{}/{method}", request.base_url.path_prefix);
        let uri = target
            .parse::<http::Uri>()
            .map_err(|e| Error::because(ErrorType::InternalError, "vertex request target", e))?;
        header.set_uri(uri);
        Ok(())
    }

    /// A 401 means the access token was refused (expired, clock skew), which the next renewal
    /// mends, not that the credential is gone: bench the key briefly (403's backoff) rather
    /// than disable it until a reload. Vertex's 503 is its overload.
    fn classify(&self, status: u16) -> Verdict {
        match status {
            401 => Verdict::Forbidden,
            503 => Verdict::Overloaded,
            s => Verdict::of(s),
        }
    }

    fn response_adapter(
        &self,
        response: &mut ResponseHeader,
        _counting: bool,
    ) -> Option<Box<dyn ResponseAdapter>> {
        error_adapter(response, "Google")
    }
}

/// A Messages body as Vertex takes it.
struct Translated {
    body: Bytes,
    model: String,
    stream: bool,
}

/// Drop `model` (kept for count_tokens, whose path names no model), add `anthropic_version`;
/// everything else is copied as it came, unparsed.
fn translate(body: &[u8], counting: bool) -> Result<Translated, String> {
    let TopLevel {
        fields,
        model,
        stream,
    } = top_level(body, "vertex")?;
    let mut out = Vec::with_capacity(body.len() + 48);
    out.push(b'{');
    for (name, value) in &fields {
        if (name == "model" && !counting) || name == "anthropic_version" {
            continue;
        }
        write_field(&mut out, name, value);
        out.push(b',');
    }
    out.extend_from_slice(b"\"anthropic_version\":\"");
    out.extend_from_slice(ANTHROPIC_VERSION.as_bytes());
    out.extend_from_slice(b"\"}");
    Ok(Translated {
        body: Bytes::from(out),
        model,
        stream,
    })
}

/// `model` as one path segment, `@` (Vertex's version separator) kept.
fn encode_segment(model: &str) -> String {
    path_segment(model, b"@")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_loses_its_model_and_gains_the_version() {
        let t = translate(
            br#"{"model":"claude-sonnet-4-5@20250929","stream":true,"max_tokens":5,"messages":[{"role":"user","content":"hi \"x\""}]}"#,
            false,
        )
        .unwrap();
        assert_eq!(t.model, "claude-sonnet-4-5@20250929");
        assert!(t.stream);
        let v: serde_json::Value = serde_json::from_slice(&t.body).unwrap();
        assert!(v.get("model").is_none());
        assert_eq!(v["anthropic_version"], ANTHROPIC_VERSION);
        assert_eq!(v["stream"], true);
        assert_eq!(v["messages"][0]["content"], "hi \"x\"");
        let counted = translate(br#"{"model":"m","messages":[]}"#, true).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&counted.body).unwrap();
        assert_eq!(v["model"], "m");
        assert!(translate(b"[1]", false).is_err());
        assert!(translate(br#"{"messages":[]}"#, false).is_err());
    }

    #[test]
    fn regions_and_model_segments() {
        assert_eq!(regional_base("global"), "https://aiplatform.googleapis.com");
        assert_eq!(
            regional_base("eu"),
            "https://aiplatform.eu.rep.googleapis.com"
        );
        assert_eq!(
            regional_base("us-east5"),
            "https://us-east5-aiplatform.googleapis.com"
        );
        assert_eq!(encode_segment("claude-opus-4@2025"), "claude-opus-4@2025");
        assert_eq!(encode_segment("a/b:c"), "a%2Fb%3Ac");
    }
}
