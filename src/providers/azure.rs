//! `type: azure`: Microsoft Foundry's native Anthropic endpoint. Claude on Foundry speaks
//! Anthropic's Messages API as is at `https://{resource}.services.ai.azure.com/anthropic`, with
//! the model field naming a deployment and the key in `x-api-key` (its SDK also sends
//! `api-key`). What differs from Anthropic: the base URL comes from `azure_resource_name`, a
//! provider may pin every request to one deployment (`azure_deployment_id`), `retry-after-ms`
//! may say how long to wait, and errors can come Azure-shaped (`{"error":{"code","message"}}`)
//! — those are rewritten into Anthropic's shape so clients and SDKs see the errors they know.
//!
//! The Go relay's `azure` type targeted the OpenAI-shaped chat completions route and needed an
//! `azure_api_version`; Foundry's Anthropic endpoint takes none, so that key is accepted and
//! ignored.

use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue};
use pingora::http::ResponseHeader;

use super::anthropic::{prepare_wire, ANTHROPIC};
use super::{ProviderKind, ResponseAdapter, UpstreamRequest};
use crate::config::{ConfigError, FieldSchema, ProviderConfig};
use crate::pool::RateLimitHeaders;

pub struct Foundry;

pub static AZURE: Foundry = Foundry;

/// Its own provider fields (the Go relay's names).
static FIELDS: [(&str, FieldSchema); 3] = [
    ("azure_resource_name", FieldSchema::Str),
    ("azure_deployment_id", FieldSchema::Str),
    ("azure_api_version", FieldSchema::Str),
];

/// An error body longer than this is passed on as it is rather than buffered and rewritten.
const MAX_ERROR_BODY: usize = 64 * 1024;

fn option<'a>(provider: &'a ProviderConfig, name: &str) -> Option<&'a str> {
    provider
        .options
        .get(name)
        .and_then(|v| v.as_str())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// A resource name as Azure allows it (letters, digits, hyphens): it becomes a host name.
fn valid_resource_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

impl ProviderKind for Foundry {
    fn name(&self) -> &'static str {
        "azure"
    }

    /// Only a placeholder: `configure` derives the real one from `azure_resource_name`, or the
    /// provider sets `base_url`.
    fn default_base_url(&self) -> &'static str {
        "https://services.ai.azure.com/anthropic"
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
        if !base_url_given {
            match option(provider, "azure_resource_name") {
                Some(name) if valid_resource_name(name) => {
                    let url = format!("https://{name}.services.ai.azure.com/anthropic");
                    match crate::config::parse_base_url(&url) {
                        Ok(base) => provider.base_url = base,
                        Err(m) => errors.push(ConfigError::invalid(
                            format!("{path}.azure_resource_name"),
                            m,
                        )),
                    }
                }
                Some(name) => errors.push(ConfigError::invalid(
                    format!("{path}.azure_resource_name"),
                    format!(
                        "{name:?} is not a Foundry resource name (letters, digits and inner \
                         hyphens, at most 63)"
                    ),
                )),
                None => errors.push(ConfigError::invalid(
                    format!("{path}.azure_resource_name"),
                    "is required for type azure without base_url (the Foundry resource: \
                     https://{name}.services.ai.azure.com/anthropic)",
                )),
            }
        }
        if let Some(deployment) = option(provider, "azure_deployment_id") {
            provider.default_model = Some(deployment.to_owned());
        }
        errors
    }

    fn credential(&self, key: &str) -> Option<(HeaderName, HeaderValue)> {
        ANTHROPIC.credential(key)
    }

    fn prepare(&self, request: &mut UpstreamRequest<'_>) -> pingora::Result<()> {
        if let Some((name, value)) = request.credential {
            // `x-api-key` as Anthropic's SDKs send it, `api-key` as Azure's do.
            request.header.insert_header(name.clone(), value.clone())?;
            request
                .header
                .insert_header(HeaderName::from_static("api-key"), value.clone())?;
        }
        prepare_wire(request)
    }

    fn rate_limits(&self, response: &ResponseHeader, now: SystemTime) -> RateLimitHeaders {
        ANTHROPIC.rate_limits(response, now)
    }

    fn retry_after(&self, response: &ResponseHeader, now: SystemTime) -> Option<Duration> {
        let ms = ["retry-after-ms", "x-ms-retry-after-ms"]
            .iter()
            .find_map(|name| response.headers.get(*name))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_millis);
        ms.or_else(|| ANTHROPIC.retry_after(response, now))
    }

    fn response_adapter(&self, response: &ResponseHeader) -> Option<Box<dyn ResponseAdapter>> {
        let status = response.status.as_u16();
        let json = response
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.contains("json"));
        (status >= 400 && json).then(|| {
            Box::new(ErrorReshaper {
                status,
                buffered: BytesMut::new(),
                passing: false,
            }) as Box<dyn ResponseAdapter>
        })
    }
}

/// Anthropic's error type for an HTTP status.
fn error_type(status: u16) -> &'static str {
    match status {
        400 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

/// Rewrites an Azure-shaped error body into Anthropic's; an Anthropic-shaped one, or anything
/// it does not recognise, passes unchanged.
struct ErrorReshaper {
    status: u16,
    buffered: BytesMut,
    /// Too long to buffer: what was held has been let through, the rest follows as it comes.
    passing: bool,
}

impl ResponseAdapter for ErrorReshaper {
    fn adapt(&mut self, chunk: &mut Option<Bytes>, end_of_stream: bool) {
        if self.passing {
            return;
        }
        if let Some(data) = chunk.take() {
            self.buffered.extend_from_slice(&data);
        }
        if self.buffered.len() > MAX_ERROR_BODY {
            self.passing = true;
            *chunk = Some(std::mem::take(&mut self.buffered).freeze());
            return;
        }
        if end_of_stream {
            let body = std::mem::take(&mut self.buffered).freeze();
            *chunk = Some(reshape(self.status, &body).unwrap_or(body));
        }
    }
}

/// `{"error":{"code":…,"message":…}}` (also inside a one-element array) as Anthropic's
/// `{"type":"error","error":{"type":…,"message":…}}`; `None` when it is not that shape.
fn reshape(status: u16, body: &[u8]) -> Option<Bytes> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let value = match value {
        serde_json::Value::Array(mut items) if items.len() == 1 => items.pop()?,
        v => v,
    };
    if value.get("type").and_then(|t| t.as_str()) == Some("error") {
        return None;
    }
    let error = value.get("error")?;
    let message = error
        .get("message")
        .and_then(|m| m.as_str())
        .unwrap_or("the upstream refused the request");
    let code = error.get("code").and_then(|c| match c {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    });
    let message = match code {
        Some(code) => format!("{message} (Azure code {code})"),
        None => message.to_owned(),
    };
    let reshaped = serde_json::json!({
        "type": "error",
        "error": {"type": error_type(status), "message": message},
    });
    Some(Bytes::from(reshaped.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adapt_all(status: u16, parts: &[&[u8]]) -> Vec<u8> {
        let mut adapter = ErrorReshaper {
            status,
            buffered: BytesMut::new(),
            passing: false,
        };
        let mut out = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let mut chunk = Some(Bytes::copy_from_slice(part));
            adapter.adapt(&mut chunk, i + 1 == parts.len());
            if let Some(c) = chunk {
                out.extend_from_slice(&c);
            }
        }
        out
    }

    #[test]
    fn azure_errors_become_anthropic_errors_and_anthropic_ones_pass() {
        let out = adapt_all(
            429,
            &[
                br#"{"error":{"code":"429","mess"#,
                br#"age":"Rate limit is exceeded."}}"#,
            ],
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "rate_limit_error");
        assert_eq!(
            v["error"]["message"],
            "Rate limit is exceeded. (Azure code 429)"
        );
        let anthropic =
            br#"{"type":"error","error":{"type":"invalid_request_error","message":"x"}}"#;
        assert_eq!(adapt_all(400, &[anthropic]), anthropic);
        assert_eq!(adapt_all(500, &[b"not json"]), b"not json");
        let wrapped = adapt_all(
            401,
            &[br#"[{"error":{"code":401,"message":"Access denied"}}]"#],
        );
        let v: serde_json::Value = serde_json::from_slice(&wrapped).unwrap();
        assert_eq!(v["error"]["type"], "authentication_error");
    }

    #[test]
    fn resource_names_are_host_labels() {
        assert!(valid_resource_name("my-foundry-1"));
        assert!(!valid_resource_name("evil.example/x"));
        assert!(!valid_resource_name("-x"));
        assert!(!valid_resource_name(""));
    }
}
