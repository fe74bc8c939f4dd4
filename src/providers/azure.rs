//! `type: azure`: Microsoft Foundry's native Anthropic endpoint. Claude on Foundry speaks
//! Anthropic's Messages API as is at `https://{resource}.services.ai.azure.com/anthropic`, with
//! the model field naming a deployment and the key in `x-api-key` (its SDK also sends
//! `api-key`). What differs from Anthropic: the base URL comes from `azure_resource_name`, a
//! provider may pin every request to one deployment (`azure_deployment_id`), `retry-after-ms`
//! may say how long to wait, and errors can come Azure-shaped (`{"error":{"code","message"}}`)
//! — those are rewritten into Anthropic's shape (`reshape.rs`) so clients and SDKs see
//! the errors they know.
//!
//! The Go relay's `azure` type targeted the OpenAI-shaped chat completions route and needed an
//! `azure_api_version`; Foundry's Anthropic endpoint takes none, so that key is accepted and
//! ignored.

use std::time::{Duration, SystemTime};

use http::{HeaderName, HeaderValue};
use pingora::http::ResponseHeader;

use super::anthropic::{prepare_wire, ANTHROPIC};
use super::reshape::error_adapter;
use super::{kind_option, ProviderKind, ResponseAdapter, UpstreamRequest};
use crate::config::{ConfigError, FieldSchema, ProviderConfig};

pub struct Foundry;

pub static AZURE: Foundry = Foundry;

/// Its own provider fields (the Go relay's names).
static FIELDS: [(&str, FieldSchema); 3] = [
    ("azure_resource_name", FieldSchema::Str),
    ("azure_deployment_id", FieldSchema::Str),
    ("azure_api_version", FieldSchema::Str),
];

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
            match kind_option(provider, "azure_resource_name") {
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
        if let Some(deployment) = kind_option(provider, "azure_deployment_id") {
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

    fn retry_after(&self, response: &ResponseHeader, now: SystemTime) -> Option<Duration> {
        let ms = ["retry-after-ms", "x-ms-retry-after-ms"]
            .iter()
            .find_map(|name| response.headers.get(*name))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_millis);
        ms.or_else(|| super::anthropic::retry_after_header(response, now))
    }

    fn response_adapter(
        &self,
        response: &mut ResponseHeader,
        _counting: bool,
    ) -> Option<Box<dyn ResponseAdapter>> {
        error_adapter(response, "Azure")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_names_are_host_labels() {
        assert!(valid_resource_name("my-foundry-1"));
        assert!(!valid_resource_name("evil.example/x"));
        assert!(!valid_resource_name("-x"));
        assert!(!valid_resource_name(""));
    }
}
