//! The Anthropic-compatible family: Anthropic itself and the vendors that serve its Messages
//! API as is (Z.AI, MiniMax, Ollama). They differ only in their default base URL and how they
//! take the key; requests, statuses and `anthropic-ratelimit-*` headers are Anthropic's.

use std::time::{Duration, SystemTime};

use http::header::{AUTHORIZATION, CONTENT_LENGTH, HOST};
use http::{HeaderName, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorType};

use super::{ProviderKind, UpstreamRequest};
use crate::pool::{parse_retry_after, RateLimitHeaders};

/// How a provider expects the API key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthStyle {
    /// `x-api-key: KEY` (Anthropic, Z.AI, Ollama when given a key).
    XApiKey,
    /// `Authorization: Bearer KEY` (MiniMax).
    Bearer,
}

impl AuthStyle {
    /// The header the key goes in.
    pub fn header_name(self) -> HeaderName {
        match self {
            AuthStyle::XApiKey => HeaderName::from_static("x-api-key"),
            AuthStyle::Bearer => AUTHORIZATION,
        }
    }

    /// The header value for `key`.
    pub fn header_value(self, key: &str) -> String {
        match self {
            AuthStyle::XApiKey => key.to_owned(),
            AuthStyle::Bearer => format!("Bearer {key}"),
        }
    }
}

/// One member of the family.
pub struct AnthropicCompatible {
    name: &'static str,
    default_base_url: &'static str,
    auth: AuthStyle,
}

pub static ANTHROPIC: AnthropicCompatible = AnthropicCompatible {
    name: "anthropic",
    default_base_url: "https://api.anthropic.com",
    auth: AuthStyle::XApiKey,
};

pub static ZAI: AnthropicCompatible = AnthropicCompatible {
    name: "zai",
    default_base_url: "https://api.z.ai/api/anthropic",
    auth: AuthStyle::XApiKey,
};

pub static MINIMAX: AnthropicCompatible = AnthropicCompatible {
    name: "minimax",
    default_base_url: "https://api.minimax.io/anthropic",
    auth: AuthStyle::Bearer,
};

pub static OLLAMA: AnthropicCompatible = AnthropicCompatible {
    name: "ollama",
    default_base_url: "http://localhost:11434",
    auth: AuthStyle::XApiKey,
};

const RATE_LIMIT_PREFIX: &str = "anthropic-ratelimit-";

impl ProviderKind for AnthropicCompatible {
    fn name(&self) -> &'static str {
        self.name
    }

    fn default_base_url(&self) -> &'static str {
        self.default_base_url
    }

    fn credential(&self, key: &str) -> Option<(HeaderName, HeaderValue)> {
        let value = HeaderValue::from_str(&self.auth.header_value(key)).ok()?;
        Some((self.auth.header_name(), value))
    }

    fn prepare(&self, request: &mut UpstreamRequest<'_>) -> pingora::Result<()> {
        if let Some((name, value)) = request.credential {
            request.header.insert_header(name.clone(), value.clone())?;
        }
        prepare_wire(request)
    }
}

/// The `anthropic-ratelimit-*` headers of a response (the default for every kind: the clouds
/// send none, and would be read the same way if they did).
pub(super) fn rate_limit_headers(response: &ResponseHeader, now: SystemTime) -> RateLimitHeaders {
    let mut limits = RateLimitHeaders::default();
    for (name, value) in response.headers.iter() {
        if name.as_str().starts_with(RATE_LIMIT_PREFIX) {
            limits.observe(name.as_str(), value.as_bytes(), now);
        }
    }
    limits
}

/// A response's `retry-after` (seconds or an HTTP date).
pub(super) fn retry_after_header(response: &ResponseHeader, now: SystemTime) -> Option<Duration> {
    let value = response.headers.get(http::header::RETRY_AFTER)?;
    parse_retry_after(value.as_bytes(), now)
}

/// What every kind that speaks Anthropic's wire format does to an attempt's request: `Host`,
/// `Content-Length` of the body to send, and the target in origin form joined to the base URL's
/// path prefix.
pub(super) fn prepare_wire(request: &mut UpstreamRequest<'_>) -> pingora::Result<()> {
    let header = &mut *request.header;
    header.insert_header(HOST, request.host.clone())?;
    header.insert_header(CONTENT_LENGTH, HeaderValue::from(request.body.len()))?;
    // Always origin form upstream (path and query), whatever form the client used: an
    // absolute-form target (`POST http://evil.example/v1/messages`) forwarded as is would let
    // an upstream that routes by the target serve it as another host, pool key and all.
    // Pingora keeps such a target verbatim for the wire; `set_uri` replaces it.
    let prefix = &request.base_url.path_prefix;
    if !prefix.is_empty() {
        let joined = format!("{prefix}{}", request.origin);
        header.set_uri(parse_target(&joined)?);
    } else if header.raw_path() != request.origin.as_bytes() {
        header.set_uri(parse_target(request.origin)?);
    }
    Ok(())
}

fn parse_target(target: &str) -> pingora::Result<http::Uri> {
    target
        .parse::<http::Uri>()
        .map_err(|e| Error::because(ErrorType::InternalError, "upstream request target", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_base_url;
    use bytes::Bytes;
    use pingora::http::RequestHeader;

    fn prepared(kind: &AnthropicCompatible, target: &[u8], base: &str) -> RequestHeader {
        let mut header = RequestHeader::build("POST", target, None).unwrap();
        let base_url = parse_base_url(base).unwrap();
        let host = HeaderValue::from_str(&base_url.host_header()).unwrap();
        let credential = kind.credential("sk-key");
        let mut body = Bytes::from_static(b"{}");
        let origin = String::from_utf8(target.to_vec()).unwrap();
        let origin = origin
            .split_once("example")
            .map_or(origin.as_str(), |(_, o)| o)
            .to_owned();
        kind.prepare(&mut UpstreamRequest {
            header: &mut header,
            origin: &origin,
            base_url: &base_url,
            host: &host,
            credential: credential.as_ref(),
            body: &mut body,
            aws: None,
            options: &serde_yaml::Mapping::new(),
        })
        .unwrap();
        header
    }

    #[test]
    fn minimax_uses_bearer_and_the_rest_x_api_key() {
        let h = prepared(
            &MINIMAX,
            b"/v1/messages",
            "https://api.minimax.io/anthropic",
        );
        assert_eq!(h.headers["authorization"], "Bearer sk-key");
        assert!(h.headers.get("x-api-key").is_none());
        for kind in [&ANTHROPIC, &ZAI, &OLLAMA] {
            let h = prepared(kind, b"/v1/messages", kind.default_base_url);
            assert_eq!(h.headers["x-api-key"], "sk-key");
        }
    }

    #[test]
    fn the_target_is_origin_form_joined_to_the_prefix() {
        let h = prepared(
            &ZAI,
            b"/v1/messages?beta=true",
            "https://api.z.ai/api/anthropic",
        );
        assert_eq!(h.raw_path(), b"/api/anthropic/v1/messages?beta=true");
        assert_eq!(h.headers["host"], "api.z.ai");
        assert_eq!(h.headers["content-length"], "2");
        let h = prepared(
            &ANTHROPIC,
            b"http://evil.example/v1/messages",
            "http://127.0.0.1:9",
        );
        assert_eq!(h.raw_path(), b"/v1/messages");
        assert_eq!(h.headers["host"], "127.0.0.1:9");
    }
}
