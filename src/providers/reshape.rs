//! Whole small bodies rewritten ([`whole_body`]): errors in a cloud's shape into Anthropic's,
//! so that clients and SDKs raise the error classes they know whichever provider answered.

use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;

use super::ResponseAdapter;

/// The reshaper for `response` when it is a JSON error (`cloud` names whose codes they are).
pub fn error_adapter(
    response: &ResponseHeader,
    cloud: &'static str,
) -> Option<Box<dyn ResponseAdapter>> {
    let status = response.status.as_u16();
    let json = response
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.contains("json"));
    (status >= 400 && json).then(|| whole_body(move |body| reshape(status, cloud, body)))
}

/// A body longer than this is passed on as it is rather than buffered and rewritten.
const MAX_WHOLE_BODY: usize = 64 * 1024;

/// Anthropic's error type for an HTTP status.
pub fn error_type(status: u16) -> &'static str {
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

/// An adapter that holds a small body whole, then sends `rewrite`'s version of it (`None`:
/// the body as it came). A body past [`MAX_WHOLE_BODY`] is let through unchanged.
pub fn whole_body<F>(rewrite: F) -> Box<dyn ResponseAdapter>
where
    F: FnOnce(&[u8]) -> Option<Bytes> + Send + Sync + 'static,
{
    Box::new(WholeBody {
        rewrite: Some(rewrite),
        buffered: BytesMut::new(),
    })
}

struct WholeBody<F> {
    /// Taken when it has run, or when the body turned out too long for it.
    rewrite: Option<F>,
    buffered: BytesMut,
}

impl<F> ResponseAdapter for WholeBody<F>
where
    F: FnOnce(&[u8]) -> Option<Bytes> + Send + Sync,
{
    fn adapt(&mut self, chunk: &mut Option<Bytes>, end_of_stream: bool) {
        if self.rewrite.is_none() {
            return;
        }
        if let Some(data) = chunk.take() {
            self.buffered.extend_from_slice(&data);
        }
        if self.buffered.len() > MAX_WHOLE_BODY {
            self.rewrite = None;
            *chunk = Some(std::mem::take(&mut self.buffered).freeze());
        } else if end_of_stream {
            let body = std::mem::take(&mut self.buffered).freeze();
            let rewritten = self.rewrite.take().and_then(|rewrite| rewrite(&body));
            *chunk = Some(rewritten.unwrap_or(body));
        }
    }
}

/// `{"error":{"code":…,"message":…}}` (also inside a one-element array) as Anthropic's
/// `{"type":"error","error":{"type":…,"message":…}}`; `None` when it is not that shape.
fn reshape(status: u16, cloud: &str, body: &[u8]) -> Option<Bytes> {
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
    let state = error.get("status").and_then(|s| s.as_str());
    let message = match (code, state) {
        (Some(code), Some(state)) => format!("{message} ({cloud} {code} {state})"),
        (Some(code), None) => format!("{message} ({cloud} code {code})"),
        (None, _) => message.to_owned(),
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
        let mut adapter = whole_body(move |body| reshape(status, "Azure", body));
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
    fn google_errors_say_their_status() {
        let out = adapt_all(
            429,
            &[br#"[{"error":{"code":429,"message":"Quota exceeded","status":"RESOURCE_EXHAUSTED"}}]"#],
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["error"]["type"], "rate_limit_error");
        assert_eq!(
            v["error"]["message"],
            "Quota exceeded (Azure 429 RESOURCE_EXHAUSTED)"
        );
    }
}
