//! AWS Bedrock (InvokeModel), as strict as the real service where the relay could go wrong: a
//! SigV4 signature is recomputed from the request (the signed headers, `x-amz-date`, the body)
//! and the credential's secret, and a wrong one gets AWS's 403; a Bedrock API key must be one
//! it knows; the body must be InvokeModel's (`anthropic_version`, no `model` or `stream`); the
//! model is the path's. Streams come back as event-stream frames written in odd-sized pieces.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_eventstream::frame::write_message_to;
use aws_smithy_runtime_api::client::identity::Identity;
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use base64::Engine;
use bytes::Bytes;

use super::aws_identity::SessionBook;

/// The mock's Bedrock mode.
#[derive(Clone, Debug, Default)]
pub struct BedrockMock {
    pub region: String,
    /// AWS credentials it accepts: `(access key id, secret access key)`.
    pub credentials: Vec<(String, String)>,
    /// Bedrock API keys it accepts (`Authorization: Bearer`).
    pub api_keys: Vec<String>,
    /// How long the temporary credentials its identity endpoints issue hold (zero: an hour);
    /// see `aws_identity`.
    pub session_ttl: Duration,
    /// The `Authorization` value its container credentials endpoint wants.
    pub container_token: Option<String>,
    /// The web identity token its STS AssumeRoleWithWebIdentity accepts.
    pub web_identity_token: Option<String>,
}

/// What a Bedrock request comes to for the Anthropic handler, or the error to answer.
pub(super) enum Routed {
    /// `(anthropic path, body with model and stream back in, streamed, the key it used)`.
    Api(&'static str, Bytes, bool, String),
    Error(u16, &'static str, String),
}

/// AWS's error shape: the type in `x-amzn-ErrorType`, `{"message"}` in the body.
pub(super) fn error_body(message: &str) -> Bytes {
    Bytes::from(serde_json::json!({ "message": message }).to_string())
}

/// The exception type Bedrock uses for an HTTP status.
pub(super) fn exception_for(status: u16) -> &'static str {
    match status {
        429 => "ThrottlingException",
        503 | 529 => "ServiceUnavailableException",
        400 => "ValidationException",
        403 => "AccessDeniedException",
        404 => "ResourceNotFoundException",
        408 => "ModelTimeoutException",
        _ => "InternalServerException",
    }
}

/// `YYYYMMDDTHHMMSSZ` as a time.
fn amz_date(text: &str) -> Option<SystemTime> {
    let digits = |r: std::ops::Range<usize>| text.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (digits(0..4)?, digits(4..6)?, digits(6..8)?);
    let (hh, mm, ss) = (digits(9..11)?, digits(11..13)?, digits(13..15)?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

/// Check the request's credential; the key id (or API key) it used.
fn authenticate(
    cfg: &BedrockMock,
    sessions: &SessionBook,
    parts: &http::request::Parts,
    body: &[u8],
) -> Result<String, Routed> {
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let denied = |m: &str| Routed::Error(403, "UnrecognizedClientException", m.to_owned());
    let authorization =
        header("authorization").ok_or_else(|| denied("Missing Authentication Token"))?;
    if let Some(key) = authorization.strip_prefix("Bearer ") {
        return if cfg.api_keys.iter().any(|k| k == key) {
            Ok(key.to_owned())
        } else {
            Err(denied(
                "Invalid API Key format: Must start with pre-defined prefix",
            ))
        };
    }
    let rest = authorization
        .strip_prefix("AWS4-HMAC-SHA256 Credential=")
        .ok_or_else(|| denied("Authorization header requires 'Credential' parameter"))?;
    let (scope, rest) = rest
        .split_once(", SignedHeaders=")
        .ok_or_else(|| denied("malformed"))?;
    let (signed_headers, _) = rest
        .split_once(", Signature=")
        .ok_or_else(|| denied("malformed"))?;
    let mut scope_parts = scope.split('/');
    let key_id = scope_parts.next().unwrap_or_default();
    let (_, region, service) = (scope_parts.next(), scope_parts.next(), scope_parts.next());
    if region != Some(cfg.region.as_str()) || service != Some("bedrock") {
        return Err(denied(
            "Credential should be scoped to a valid region and service bedrock",
        ));
    }
    let token = header("x-amz-security-token").map(str::to_owned);
    // A long-term credential it was given, or a temporary one it issued (which holds only
    // with its session token, and only until it expires).
    let (secret, expires) = match cfg.credentials.iter().find(|(id, _)| id == key_id) {
        Some((_, secret)) => (secret.clone(), None),
        None => match sessions.get(key_id) {
            Some((secret, session_token, expires)) if token.as_ref() == Some(&session_token) => {
                (secret, Some(expires))
            }
            _ => {
                return Err(denied(
                    "The security token included in the request is invalid.",
                ))
            }
        },
    };
    let time = header("x-amz-date")
        .and_then(amz_date)
        .ok_or_else(|| denied("no x-amz-date"))?;
    let identity: Identity = Credentials::new(key_id, secret.clone(), token, None, "mock").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&cfg.region)
        .name("bedrock")
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| denied(&e.to_string()))?
        .into();
    // Recompute over what the client said it signed (the signer adds x-amz-date and the
    // session token itself).
    let signed: Vec<(&str, &str)> = signed_headers
        .split(';')
        .filter(|h| !matches!(*h, "x-amz-date" | "x-amz-security-token"))
        .filter_map(|h| Some((h, header(h)?)))
        .collect();
    let host = header("host").unwrap_or_default();
    let url = format!(
        "http://{host}{}",
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let signable = SignableRequest::new(
        parts.method.as_str(),
        url,
        signed.into_iter(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| denied(&e.to_string()))?;
    let (instructions, _) = sign(signable, &params)
        .map_err(|e| denied(&e.to_string()))?
        .into_parts();
    let expected = instructions
        .headers()
        .find(|(n, _)| *n == "authorization")
        .map(|(_, v)| v.to_owned());
    if expires.is_some_and(|at| at <= SystemTime::now()) {
        return Err(Routed::Error(
            403,
            "ExpiredTokenException",
            "The security token included in the request is expired".into(),
        ));
    }
    if expected.as_deref() != Some(authorization) {
        return Err(Routed::Error(
            403,
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. \
             Check your AWS Secret Access Key and signing method."
                .into(),
        ));
    }
    Ok(key_id.to_owned())
}

pub(super) fn route(
    cfg: &BedrockMock,
    sessions: &SessionBook,
    parts: &http::request::Parts,
    body: &Bytes,
) -> Routed {
    let key = match authenticate(cfg, sessions, parts, body) {
        Ok(k) => k,
        Err(e) => return e,
    };
    let invalid = |m: &str| Routed::Error(400, "ValidationException", m.to_owned());
    let Some(rest) = parts.uri.path().strip_prefix("/model/") else {
        return Routed::Error(404, "UnknownOperationException", "unknown operation".into());
    };
    let Some((model, verb)) = rest.rsplit_once('/') else {
        return Routed::Error(404, "UnknownOperationException", "unknown operation".into());
    };
    let model = super::percent_decode(model);
    let (invoke_body, path, stream) = match verb {
        "invoke" => (body.clone(), "/v1/messages", false),
        "invoke-with-response-stream" => (body.clone(), "/v1/messages", true),
        "count-tokens" => {
            let inner = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| {
                    v["input"]["invokeModel"]["body"]
                        .as_str()
                        .map(str::to_owned)
                })
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok());
            match inner {
                Some(b) => (Bytes::from(b), "/v1/messages/count_tokens", false),
                None => return invalid("count-tokens wants input.invokeModel.body (base64)"),
            }
        }
        _ => return Routed::Error(404, "UnknownOperationException", "unknown operation".into()),
    };
    let Ok(serde_json::Value::Object(mut fields)) = serde_json::from_slice(&invoke_body) else {
        return invalid("Malformed input request, please reformat your input and try again.");
    };
    if fields.get("anthropic_version").and_then(|v| v.as_str()) != Some("bedrock-2023-05-31") {
        return invalid("Malformed input request: #: required key [anthropic_version] not found");
    }
    for refused in ["model", "stream"] {
        if fields.contains_key(refused) {
            return invalid(&format!(
                "Malformed input request: #: extraneous key [{refused}] is not permitted"
            ));
        }
    }
    fields.remove("anthropic_version");
    fields.insert("model".into(), serde_json::Value::String(model));
    fields.insert("stream".into(), serde_json::Value::Bool(stream));
    let body = Bytes::from(serde_json::Value::Object(fields).to_string());
    Routed::Api(path, body, stream, key)
}

/// One SSE event (`event: x\ndata: {json}\n\n`) as Bedrock's frame: a chunk event whose payload
/// carries the JSON in base64, or an exception for an `error` event.
pub(super) fn frame_of_sse(sse: &[u8]) -> Bytes {
    let text = String::from_utf8_lossy(sse);
    let data = text
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap_or("{}")
        .to_owned();
    let string = |s: &'static str| HeaderValue::String(s.into());
    let message = if text.starts_with("event: error") {
        let kind = serde_json::from_str::<serde_json::Value>(&data)
            .ok()
            .and_then(|v| v["error"]["type"].as_str().map(str::to_owned))
            .unwrap_or_default();
        let exception = match kind.as_str() {
            "overloaded_error" | "rate_limit_error" => "throttlingException",
            _ => "modelStreamErrorException",
        };
        Message::new_from_parts(
            vec![
                Header::new(":message-type", string("exception")),
                Header::new(":exception-type", string(exception)),
                Header::new(":content-type", string("application/json")),
            ],
            serde_json::json!({"message": "mock: error mid-stream"}).to_string(),
        )
    } else {
        let payload = serde_json::json!({
            "bytes": base64::engine::general_purpose::STANDARD.encode(&data),
            "p": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0",
        });
        Message::new_from_parts(
            vec![
                Header::new(":event-type", string("chunk")),
                Header::new(":content-type", string("application/json")),
                Header::new(":message-type", string("event")),
            ],
            payload.to_string(),
        )
    };
    let mut out = Vec::new();
    write_message_to(&message, &mut out).expect("a frame writes to a Vec");
    Bytes::from(out)
}
