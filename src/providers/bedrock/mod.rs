//! `type: bedrock`: Claude on AWS Bedrock's InvokeModel API.
//! The request is translated (`body`) and signed (`sign`, SigV4 service `bedrock`) or sent with
//! a Bedrock API key as a bearer token; a streamed answer's event-stream frames become
//! Anthropic's SSE (`stream`); errors (`x-amzn-ErrorType` and `{"message"}`) become Anthropic's
//! shape and status; count-tokens' `{"inputTokens"}` becomes `{"input_tokens"}`.

pub mod body;
pub mod sign;
pub mod stream;

use std::time::SystemTime;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::{HeaderName, HeaderValue, StatusCode};
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorType};

use super::reshape::whole_body;
use super::{kind_option, ProviderKind, ResponseAdapter, UpstreamRequest, Verdict};
use crate::config::{
    parse_base_url, AwsCredential, ConfigError, FieldSchema, KeyConfig, ProviderConfig, Secret,
};

pub struct Bedrock;

pub static BEDROCK: Bedrock = Bedrock;

static FIELDS: [(&str, FieldSchema); 3] = [
    ("aws_region", FieldSchema::Str),
    ("aws_access_key_id", FieldSchema::Str),
    ("aws_secret_access_key", FieldSchema::Str),
];

/// The region of a bedrock provider, from its own fields (checked by `configure`).
pub fn region(provider_options: &serde_yaml::Mapping) -> &str {
    provider_options
        .get("aws_region")
        .and_then(|v| v.as_str())
        .map_or("", str::trim)
}

impl ProviderKind for Bedrock {
    fn name(&self) -> &'static str {
        "bedrock"
    }

    /// Only a placeholder: `configure` derives the real one from `aws_region`.
    fn default_base_url(&self) -> &'static str {
        "https://bedrock-runtime.us-east-1.amazonaws.com"
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
        let region = kind_option(provider, "aws_region").map(str::to_owned);
        match region.as_deref() {
            Some(r) if r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') => {
                if !base_url_given {
                    let url = format!("https://bedrock-runtime.{r}.amazonaws.com");
                    match parse_base_url(&url) {
                        Ok(b) => provider.base_url = b,
                        Err(m) => {
                            errors.push(ConfigError::invalid(format!("{path}.aws_region"), m))
                        }
                    }
                }
            }
            Some(r) => errors.push(ConfigError::invalid(
                format!("{path}.aws_region"),
                format!("{r:?} is not an AWS region"),
            )),
            None => errors.push(ConfigError::invalid(
                format!("{path}.aws_region"),
                "is required for type bedrock (it is part of the signature)",
            )),
        }
        // No keys: the provider's own credential (the Go relay's fields), else the standard AWS
        // chain's (environment, profiles, web identity, container, instance metadata), which
        // `aws_credentials` keeps fresh.
        if provider.keys.is_empty() {
            let own = (
                kind_option(provider, "aws_access_key_id").map(str::to_owned),
                kind_option(provider, "aws_secret_access_key").map(str::to_owned),
            );
            match own {
                (Some(id), Some(secret)) => {
                    let mut key = KeyConfig::implicit("aws");
                    key.key = Secret::new(format!("aws:{id}"));
                    key.aws = Some(AwsCredential {
                        access_key_id: id,
                        secret_access_key: Secret::new(secret),
                        session_token: None,
                    });
                    provider.keys.push(key);
                }
                (None, None) => {
                    let mut key = KeyConfig::implicit("aws");
                    key.aws_chain = true;
                    provider.keys.push(key);
                }
                (Some(_), None) | (None, Some(_)) => errors.push(ConfigError::invalid(
                    format!("{path}.aws_secret_access_key"),
                    "aws_access_key_id and aws_secret_access_key go together",
                )),
            }
        }
        errors
    }

    fn takes_aws_credentials(&self) -> bool {
        true
    }

    /// A Bedrock API key goes as a bearer token; AWS credentials sign each request instead.
    fn credential(&self, key: &str) -> Option<(HeaderName, HeaderValue)> {
        let value = HeaderValue::from_str(&format!("Bearer {key}")).ok()?;
        Some((AUTHORIZATION, value))
    }

    fn prepare(&self, request: &mut UpstreamRequest<'_>) -> pingora::Result<()> {
        let fail = |m: String| Error::explain(ErrorType::InternalError, m);
        let (path, _) = request
            .origin
            .split_once('?')
            .unwrap_or((request.origin, ""));
        let counting = path.trim_end_matches('/') == "/v1/messages/count_tokens";
        let header = &mut *request.header;
        let betas = header
            .headers
            .get("anthropic-beta")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        for name in [
            "anthropic-beta",
            "anthropic-version",
            "x-api-key",
            "authorization",
        ] {
            header.remove_header(name);
        }
        let invoke = body::invoke(request.body, betas.as_deref())
            .map_err(|m| Error::explain(super::UNSENDABLE_BODY, m))?;
        let target = format!(
            "{}{}",
            request.base_url.path_prefix,
            body::path(&invoke.model, invoke.stream, counting)
        );
        *request.body = if counting {
            body::count_tokens(&invoke.body)
        } else {
            invoke.body
        };
        let accept = if invoke.stream && !counting {
            "application/vnd.amazon.eventstream"
        } else {
            "application/json"
        };
        let host = request.host.to_str().unwrap_or_default().to_owned();
        header.insert_header(HOST, request.host.clone())?;
        header.insert_header(CONTENT_TYPE, "application/json")?;
        header.insert_header(ACCEPT, accept)?;
        header.insert_header(CONTENT_LENGTH, HeaderValue::from(request.body.len()))?;
        match request.aws {
            Some(aws) => {
                let scheme = if request.base_url.tls {
                    "https"
                } else {
                    "http"
                };
                let url = format!("{scheme}://{host}{target}");
                let signed = sign::signature_headers(
                    &sign::ToSign {
                        method: "POST",
                        url: &url,
                        headers: &[
                            ("host", &host),
                            ("content-type", "application/json"),
                            ("accept", accept),
                        ],
                        body: request.body,
                    },
                    aws,
                    region(request.options),
                    "bedrock",
                    SystemTime::now(),
                )
                .map_err(|e| fail(e.to_string()))?;
                for (name, value) in signed {
                    header.insert_header(name, value)?;
                }
            }
            None => {
                if let Some((name, value)) = request.credential {
                    header.insert_header(name.clone(), value.clone())?;
                }
            }
        }
        let uri = target
            .parse::<http::Uri>()
            .map_err(|e| Error::because(ErrorType::InternalError, "bedrock request target", e))?;
        header.set_uri(uri);
        Ok(())
    }

    fn classify(&self, status: u16) -> Verdict {
        match status {
            503 => Verdict::Overloaded,
            408 | 424 => Verdict::ServerError,
            s => Verdict::of(s),
        }
    }

    fn response_adapter(
        &self,
        response: &mut ResponseHeader,
        counting: bool,
    ) -> Option<Box<dyn ResponseAdapter>> {
        let status = response.status.as_u16();
        let content_type = response
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        if status >= 400 {
            let error = response
                .headers
                .get("x-amzn-errortype")
                .and_then(|v| v.to_str().ok())
                .map(|v| v.split(':').next().unwrap_or(v).to_owned())
                .unwrap_or_default();
            // Anthropic's statuses for what Bedrock says differently.
            let anthropic_status = match (status, error.as_str()) {
                (503, _) | (_, "ServiceUnavailableException") => 529,
                (408, _) => 504,
                (424, _) => 502,
                (_, "ServiceQuotaExceededException") => 429,
                (s, _) => s,
            };
            if let Ok(code) = StatusCode::from_u16(anthropic_status) {
                let _ = response.set_status(code);
            }
            let _ = response.insert_header(CONTENT_TYPE, "application/json");
            return Some(whole_body(move |body| {
                Some(error_body(&error, anthropic_status, body))
            }));
        }
        if content_type.starts_with("application/vnd.amazon.eventstream") {
            let _ = response.insert_header(CONTENT_TYPE, "text/event-stream; charset=utf-8");
            return Some(Box::new(stream::EventStreamToSse::default()));
        }
        counting.then(|| whole_body(count_tokens_body))
    }
}

/// A Bedrock error body (`{"message": …}`, its type `error` from `x-amzn-ErrorType`) as
/// Anthropic's, for the client's `status`.
fn error_body(error: &str, status: u16, body: &[u8]) -> Bytes {
    let said = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "Bedrock refused the request".to_owned());
    let name = if error.is_empty() {
        "Bedrock error"
    } else {
        error
    };
    let body = serde_json::json!({
        "type": "error",
        "error": {
            "type": stream::error_type_or(name, status),
            "message": format!("{said} ({name})"),
        },
    });
    Bytes::from(body.to_string())
}

/// count-tokens' `{"inputTokens": N}` as Anthropic's `{"input_tokens": N}`.
fn count_tokens_body(body: &[u8]) -> Option<Bytes> {
    #[derive(serde::Deserialize)]
    struct Counted {
        #[serde(rename = "inputTokens")]
        input_tokens: u64,
    }
    let counted: Counted = serde_json::from_slice(body).ok()?;
    Some(Bytes::from(format!(
        "{{\"input_tokens\":{}}}",
        counted.input_tokens
    )))
}
