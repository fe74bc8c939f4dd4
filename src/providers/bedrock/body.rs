//! A Messages request as Bedrock's InvokeModel takes it: `model` moves to the path (URL-encoded,
//! `:` kept, an inference-profile ARN's `/` as `%2F`), `stream` picks the route, the body gains
//! `"anthropic_version": "bedrock-2023-05-31"`, the `anthropic-beta` header's values become an
//! `anthropic_beta` array, and what Bedrock refuses (an unknown top-level field, a beta it does
//! not know) is dropped with a debug line rather than costing the client a 400. Fields are
//! copied unparsed.

use base64::Engine;
use bytes::Bytes;

use crate::providers::wire::{path_segment, top_level, write_field, TopLevel};

pub const ANTHROPIC_VERSION: &str = "bedrock-2023-05-31";

/// Top-level fields Bedrock's Claude models take (model, stream and anthropic_version are the
/// relay's to set).
const FIELDS: [&str; 10] = [
    "max_tokens",
    "messages",
    "system",
    "temperature",
    "top_p",
    "top_k",
    "stop_sequences",
    "tools",
    "tool_choice",
    "thinking",
];

/// Betas Bedrock documents for Claude; others are dropped (Bedrock answers an unknown one with
/// 400 "invalid beta flag").
const BETAS: [&str; 8] = [
    "computer-use-2024-10-22",
    "computer-use-2025-01-24",
    "token-efficient-tools-2025-02-19",
    "interleaved-thinking-2025-05-14",
    "output-128k-2025-02-19",
    "dev-full-thinking-2025-05-14",
    "context-1m-2025-08-07",
    "context-management-2025-06-27",
];

/// The InvokeModel request.
pub struct Invoke {
    pub body: Bytes,
    pub model: String,
    pub stream: bool,
}

/// Translate a Messages body (and the client's `anthropic-beta` header, if any).
pub fn invoke(body: &[u8], beta_header: Option<&str>) -> Result<Invoke, String> {
    let TopLevel {
        fields,
        model,
        stream,
    } = top_level(body, "bedrock")?;
    let mut out = Vec::with_capacity(body.len() + 96);
    out.extend_from_slice(b"{\"anthropic_version\":\"");
    out.extend_from_slice(ANTHROPIC_VERSION.as_bytes());
    out.push(b'"');
    for (name, value) in &fields {
        if FIELDS.contains(&name.as_ref()) {
            out.push(b',');
            write_field(&mut out, name, value);
        } else if !matches!(name.as_ref(), "model" | "stream" | "anthropic_version") {
            log::debug!("bedrock: dropped the field {name:?}, which Bedrock refuses");
        }
    }
    let betas: Vec<&str> = beta_header
        .into_iter()
        .flat_map(|h| h.split(','))
        .map(str::trim)
        .filter(|b| !b.is_empty())
        .filter(|b| {
            let known = BETAS.contains(b);
            if !known {
                log::debug!("bedrock: dropped the beta {b:?}, which Bedrock does not take");
            }
            known
        })
        .collect();
    if !betas.is_empty() {
        out.extend_from_slice(b",\"anthropic_beta\":");
        serde_json::to_writer(&mut out, &betas).map_err(|e| e.to_string())?;
    }
    out.push(b'}');
    Ok(Invoke {
        body: Bytes::from(out),
        model,
        stream,
    })
}

/// count-tokens' body: the InvokeModel body, base64, in `{"input":{"invokeModel":{"body"}}}`.
pub fn count_tokens(invoke_body: &[u8]) -> Bytes {
    let encoded = base64::engine::general_purpose::STANDARD.encode(invoke_body);
    Bytes::from(serde_json::json!({"input": {"invokeModel": {"body": encoded}}}).to_string())
}

/// A model id as one path segment, `:` kept (an ARN's `/` becomes `%2F`), as the SDKs send it.
pub fn model_segment(model: &str) -> String {
    path_segment(model, b":")
}

/// The route for `model`: invoke, invoke-with-response-stream or count-tokens.
pub fn path(model: &str, stream: bool, counting: bool) -> String {
    let verb = match (counting, stream) {
        (true, _) => "count-tokens",
        (false, true) => "invoke-with-response-stream",
        (false, false) => "invoke",
    };
    format!("/model/{}/{verb}", model_segment(model))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_takes_bedrocks_shape() {
        let body = br#"{"model":"claude-sonnet-4-5","stream":true,"max_tokens":9,"metadata":{"user_id":"u"},"messages":[{"role":"user","content":"hi"}],"service_tier":"auto"}"#;
        let t = invoke(
            body,
            Some("interleaved-thinking-2025-05-14, made-up-beta-2099-01-01"),
        )
        .unwrap();
        assert_eq!(t.model, "claude-sonnet-4-5");
        assert!(t.stream);
        let v: serde_json::Value = serde_json::from_slice(&t.body).unwrap();
        assert_eq!(v["anthropic_version"], ANTHROPIC_VERSION);
        assert_eq!(v["max_tokens"], 9);
        assert_eq!(v["messages"][0]["content"], "hi");
        assert_eq!(
            v["anthropic_beta"],
            serde_json::json!(["interleaved-thinking-2025-05-14"])
        );
        for gone in ["model", "stream", "metadata", "service_tier"] {
            assert!(v.get(gone).is_none(), "{gone} stayed");
        }
        let plain = invoke(br#"{"model":"m","messages":[]}"#, None).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&plain.body).unwrap();
        assert!(v.get("anthropic_beta").is_none() && !plain.stream);
        assert!(invoke(b"[]", None).is_err());
    }

    #[test]
    fn routes_and_model_ids() {
        assert_eq!(
            path("us.anthropic.claude-sonnet-4-5-20250929-v1:0", true, false),
            "/model/us.anthropic.claude-sonnet-4-5-20250929-v1:0/invoke-with-response-stream"
        );
        assert_eq!(
            path(
                "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc123",
                false,
                false
            ),
            "/model/arn:aws:bedrock:us-east-1:123456789012:application-inference-profile%2Fabc123/invoke"
        );
        assert_eq!(path("m", true, true), "/model/m/count-tokens");
        let wrapped: serde_json::Value = serde_json::from_slice(&count_tokens(b"{}")).unwrap();
        assert_eq!(wrapped["input"]["invokeModel"]["body"], "e30=");
    }
}
