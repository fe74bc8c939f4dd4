//! What the relay needs to know about a Messages request body, read without building a JSON
//! tree: the model (and where it sits, to rewrite it in place), whether it streams, and
//! `max_tokens`. serde_json still validates the whole document, so a broken body is refused
//! here with a clear 400 instead of at the upstream.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::errors::ApiError;

/// The fields of a request body that routing and admission use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestFacts {
    pub model: Option<String>,
    /// Byte range of the model's JSON string literal (quotes included) in the body.
    model_span: Option<(usize, usize)>,
    pub stream: bool,
    pub max_tokens: u64,
    /// `metadata.user_id`: a session identity when the client sends no session header.
    pub user_id: Option<String>,
    /// Assistant messages carry `thinking` blocks with a `signature`: only the provider that
    /// produced them accepts them back.
    pub thinking_signed: bool,
}

#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    metadata: Option<Metadata>,
}

#[derive(Deserialize)]
struct Metadata {
    #[serde(default)]
    user_id: Option<String>,
}

/// Only what thinking-signature detection reads of the messages.
#[derive(Deserialize)]
struct SignedProbe {
    #[serde(default)]
    messages: Vec<SignedMessage>,
}

#[derive(Deserialize)]
struct SignedMessage {
    #[serde(default)]
    role: String,
    #[serde(default)]
    content: serde_json::Value,
}

/// Whether an assistant message holds a `thinking` block with a non-empty `signature`. The
/// body is parsed for it only when both words appear in it (rare), as Go's relay detects it.
fn has_thinking_signature(text: &str) -> bool {
    let bytes = text.as_bytes();
    if memchr::memmem::find(bytes, b"\"signature\"").is_none()
        || memchr::memmem::find(bytes, b"thinking").is_none()
    {
        return false;
    }
    let Ok(probe) = serde_json::from_str::<SignedProbe>(text) else {
        return false;
    };
    probe
        .messages
        .iter()
        .filter(|m| m.role == "assistant")
        .any(|m| {
            m.content.as_array().is_some_and(|blocks| {
                blocks.iter().any(|b| {
                    b["type"] == "thinking"
                        && b["signature"].as_str().is_some_and(|s| !s.is_empty())
                })
            })
        })
}

impl RequestFacts {
    pub fn parse(body: &[u8]) -> Result<RequestFacts, ApiError> {
        if body.is_empty() {
            return Err(ApiError::InvalidJson("the body is empty".into()));
        }
        // serde_json checks UTF-8 only inside the strings it reads, not in those it skips:
        // check the whole body first (then `from_str` does not check it again).
        let text = std::str::from_utf8(body).map_err(|e| {
            ApiError::InvalidJson(format!(
                "the body is not valid UTF-8 (at byte {})",
                e.valid_up_to()
            ))
        })?;
        // A struct also deserializes from a JSON array, field by field: `["claude", true, 5]`
        // would read as model, stream and max_tokens. The Messages API takes an object.
        if text.trim_start().as_bytes().first() != Some(&b'{') {
            return Err(ApiError::InvalidRequest(
                "the request body must be a JSON object".into(),
            ));
        }
        let probe: Probe<'_> =
            serde_json::from_str(text).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
        let (model, model_span) = match probe.model {
            Some(raw) => {
                let text = raw.get();
                let model: String = serde_json::from_str(text)
                    .map_err(|_| ApiError::InvalidRequest("model: must be a string".to_string()))?;
                // RawValue borrows from `body`, so its offset is a pointer difference.
                let start = text.as_ptr() as usize - body.as_ptr() as usize;
                (Some(model), Some((start, start + text.len())))
            }
            None => (None, None),
        };
        Ok(RequestFacts {
            model,
            model_span,
            stream: probe.stream.unwrap_or(false),
            max_tokens: probe.max_tokens.unwrap_or(0),
            user_id: probe
                .metadata
                .and_then(|m| m.user_id)
                .filter(|u| !u.is_empty()),
            thinking_signed: has_thinking_signature(text),
        })
    }

    /// A rough input-token estimate for admission: ~4 bytes of JSON per token. Settlement
    /// replaces it with the upstream's real count, so it only needs to be the right size.
    pub fn estimate_input_tokens(body_len: usize) -> u64 {
        (body_len as u64 / 4).max(1)
    }

    /// The body with the model replaced by `new_model`, spliced in place so the rest of the
    /// document stays byte-for-byte what the client sent.
    pub fn rewrite_model(&self, body: &Bytes, new_model: &str) -> Bytes {
        let Some((start, end)) = self.model_span else {
            return body.clone();
        };
        let literal = serde_json::to_string(new_model).expect("a string always serialises");
        let mut out = Vec::with_capacity(body.len() - (end - start) + literal.len());
        out.extend_from_slice(&body[..start]);
        out.extend_from_slice(literal.as_bytes());
        out.extend_from_slice(&body[end..]);
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_model_stream_and_max_tokens() {
        let body = br#"{"max_tokens": 64000, "model":"claude-x", "stream": true, "messages": []}"#;
        let f = RequestFacts::parse(body).unwrap();
        assert_eq!(f.model.as_deref(), Some("claude-x"));
        assert!(f.stream);
        assert_eq!(f.max_tokens, 64000);
    }

    #[test]
    fn rewrite_keeps_everything_else_byte_for_byte() {
        let body = Bytes::from_static(
            br#"{"messages":[{"role":"user","content":"model \"a\""}], "model" : "a", "x":1}"#,
        );
        let f = RequestFacts::parse(&body).unwrap();
        let out = f.rewrite_model(&body, "a-much-longer-model-name");
        assert_eq!(
            &out[..],
            br#"{"messages":[{"role":"user","content":"model \"a\""}], "model" : "a-much-longer-model-name", "x":1}"#
        );
        let again = RequestFacts::parse(&out).unwrap();
        assert_eq!(again.model.as_deref(), Some("a-much-longer-model-name"));
    }

    #[test]
    fn session_and_thinking_signatures_are_read() {
        let body = br#"{"model":"m","metadata":{"user_id":"user_1"},"messages":[
            {"role":"user","content":"hi"},
            {"role":"assistant","content":[{"type":"thinking","thinking":"hmm","signature":"EqQB"},
                                           {"type":"text","text":"hello"}]}]}"#;
        let f = RequestFacts::parse(body).unwrap();
        assert_eq!(f.user_id.as_deref(), Some("user_1"));
        assert!(f.thinking_signed);
        let unsigned = br#"{"messages":[{"role":"assistant","content":[{"type":"thinking","thinking":"x","signature":""}]}],"note":"signature"}"#;
        assert!(!RequestFacts::parse(unsigned).unwrap().thinking_signed);
        assert!(
            !RequestFacts::parse(br#"{"model":"m"}"#)
                .unwrap()
                .thinking_signed
        );
    }

    #[test]
    fn escaped_model_names_are_decoded() {
        let f = RequestFacts::parse(br#"{"model":"cl\u0061ude"}"#).unwrap();
        assert_eq!(f.model.as_deref(), Some("claude"));
    }

    #[test]
    fn a_body_that_is_not_an_object_is_400() {
        for body in [&br#"["claude",true,5]"#[..], b" 7", br#""claude""#, b"null"] {
            let e = RequestFacts::parse(body).unwrap_err();
            assert_eq!(e.status(), 400, "{:?}", std::str::from_utf8(body));
            assert_eq!(e.error_type(), "invalid_request_error");
        }
    }

    #[test]
    fn invalid_utf8_anywhere_is_400() {
        // In a field the relay never reads, and in one it does.
        let skipped = b"{\"model\":\"m\",\"messages\":[{\"content\":\"caf\xe9\"}]}";
        let read = b"{\"model\":\"m\xff\"}";
        for body in [&skipped[..], &read[..]] {
            let e = RequestFacts::parse(body).unwrap_err();
            assert_eq!(e.status(), 400);
            assert!(e.to_string().contains("UTF-8"), "{e}");
        }
    }

    #[test]
    fn broken_json_and_wrong_types_are_400() {
        for body in [&b""[..], b"{", b"[1,2", b"not json", br#"{"model": 7}"#] {
            let e = RequestFacts::parse(body).unwrap_err();
            assert_eq!(e.status(), 400, "{:?}", std::str::from_utf8(body));
        }
    }
}
