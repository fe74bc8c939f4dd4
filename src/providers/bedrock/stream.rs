//! Bedrock's streaming answer (`application/vnd.amazon.eventstream`) as Anthropic's SSE. Each
//! event-stream message carries one Anthropic event, base64 in a JSON payload
//! (`{"bytes": "…"}`); it is re-emitted as `event: {type}\ndata: {json}\n\n`, as the official
//! SDKs do. Frames may arrive split at any byte: the decoder (`aws-smithy-eventstream`, CRCs
//! checked) keeps what it has not used. An exception message, a corrupt frame, or a stream that
//! ends inside a frame or before `message_stop` ends the client's stream with an Anthropic
//! `error` event, never a panic or a silent truncation; nothing after it is forwarded.

use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
use aws_smithy_types::event_stream::{HeaderValue, Message};
use base64::Engine;
use bytes::{Bytes, BytesMut};

use crate::providers::ResponseAdapter;

#[derive(Default)]
pub struct EventStreamToSse {
    decoder: MessageFrameDecoder,
    pending: BytesMut,
    /// An error event was sent: the stream is over for the client.
    ended: bool,
    /// `message_stop` went through: the answer is complete.
    stopped: bool,
}

/// The string value of header `name` of `message`.
fn header<'a>(message: &'a Message, name: &str) -> Option<&'a str> {
    message
        .headers()
        .iter()
        .find(|h| h.name().as_str() == name)
        .and_then(|h| match h.value() {
            HeaderValue::String(s) => Some(s.as_str()),
            _ => None,
        })
}

/// Anthropic's error type for a Bedrock exception.
pub fn error_type(exception: &str) -> &'static str {
    error_type_or(exception, 500)
}

/// Anthropic's error type for a Bedrock exception, else for the HTTP status it came with.
pub fn error_type_or(exception: &str, status: u16) -> &'static str {
    let name = exception.trim_end_matches("Exception").to_ascii_lowercase();
    match name.as_str() {
        "throttling" | "servicequotaexceeded" => "rate_limit_error",
        "validation" => "invalid_request_error",
        "accessdenied" => "permission_error",
        "resourcenotfound" => "not_found_error",
        "serviceunavailable" | "modelnotready" => "overloaded_error",
        _ => crate::providers::reshape::error_type(status),
    }
}

fn error_event(out: &mut BytesMut, kind: &str, message: &str) {
    let data = serde_json::json!({"type": "error", "error": {"type": kind, "message": message}});
    out.extend_from_slice(b"event: error\ndata: ");
    out.extend_from_slice(data.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}

#[derive(serde::Deserialize)]
struct Chunk {
    bytes: String,
}

#[derive(serde::Deserialize)]
struct EventType<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
}

impl EventStreamToSse {
    /// Append the SSE for `message`; false when it ended the stream.
    fn emit(&mut self, message: &Message, out: &mut BytesMut) -> bool {
        match header(message, ":message-type") {
            Some("event") => {
                let event = serde_json::from_slice::<Chunk>(message.payload())
                    .ok()
                    .and_then(|c| {
                        base64::engine::general_purpose::STANDARD
                            .decode(c.bytes)
                            .ok()
                    });
                let Some(event) = event else {
                    error_event(
                        out,
                        "api_error",
                        "stream broke: Bedrock sent an unreadable event",
                    );
                    return false;
                };
                // Only the event's type is read (no tree of the event is built).
                let kind = serde_json::from_slice::<EventType>(&event)
                    .ok()
                    .map(|e| e.kind);
                let Some(kind) = kind else {
                    error_event(
                        out,
                        "api_error",
                        "stream broke: Bedrock sent an event without a type",
                    );
                    return false;
                };
                self.stopped |= kind == "message_stop";
                out.extend_from_slice(b"event: ");
                out.extend_from_slice(kind.as_bytes());
                out.extend_from_slice(b"\ndata: ");
                out.extend_from_slice(&event);
                out.extend_from_slice(b"\n\n");
                true
            }
            other => {
                // `exception` (with `:exception-type`) or `error` (with `:error-code`).
                let name = header(message, ":exception-type")
                    .or_else(|| header(message, ":error-code"))
                    .unwrap_or(other.unwrap_or("unknown"));
                let said = serde_json::from_slice::<serde_json::Value>(message.payload())
                    .ok()
                    .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
                    .unwrap_or_default();
                let text = format!("stream broke: Bedrock {name}: {said}");
                error_event(out, error_type(name), text.trim_end_matches(": "));
                false
            }
        }
    }
}

impl ResponseAdapter for EventStreamToSse {
    fn adapt(&mut self, chunk: &mut Option<Bytes>, end_of_stream: bool) {
        let data = chunk.take();
        if self.ended {
            return;
        }
        if let Some(data) = data {
            self.pending.extend_from_slice(&data);
        }
        let mut out = BytesMut::new();
        loop {
            match self.decoder.decode_frame(&mut self.pending) {
                Ok(DecodedFrame::Incomplete) => break,
                Ok(DecodedFrame::Complete(message)) => {
                    if !self.emit(&message, &mut out) {
                        self.ended = true;
                        break;
                    }
                }
                Err(e) => {
                    let text =
                        format!("stream broke: a corrupt event-stream frame from Bedrock ({e})");
                    error_event(&mut out, "api_error", &text);
                    self.ended = true;
                    break;
                }
            }
        }
        if end_of_stream && !self.ended && !self.stopped {
            let why = if self.pending.is_empty() {
                "stream broke: Bedrock's stream ended before message_stop"
            } else {
                "stream broke: Bedrock's stream ended inside a frame"
            };
            error_event(&mut out, "api_error", why);
            self.ended = true;
        }
        if !out.is_empty() {
            *chunk = Some(out.freeze());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_smithy_eventstream::frame::write_message_to;
    use aws_smithy_types::event_stream::Header;
    use proptest::prelude::*;

    fn frame(headers: Vec<Header>, payload: Vec<u8>) -> Vec<u8> {
        let mut out = Vec::new();
        write_message_to(&Message::new_from_parts(headers, payload), &mut out).unwrap();
        out
    }

    fn event(json: &str) -> Vec<u8> {
        let payload = serde_json::json!({
            "bytes": base64::engine::general_purpose::STANDARD.encode(json),
            "p": "abcdefghij",
        });
        frame(
            vec![
                Header::new(":message-type", HeaderValue::String("event".into())),
                Header::new(":event-type", HeaderValue::String("chunk".into())),
                Header::new(
                    ":content-type",
                    HeaderValue::String("application/json".into()),
                ),
            ],
            payload.to_string().into_bytes(),
        )
    }

    fn exception(kind: &'static str, message: &str) -> Vec<u8> {
        frame(
            vec![
                Header::new(":message-type", HeaderValue::String("exception".into())),
                Header::new(":exception-type", HeaderValue::String(kind.into())),
            ],
            serde_json::json!({ "message": message })
                .to_string()
                .into_bytes(),
        )
    }

    const EVENTS: [&str; 4] = [
        r#"{"type":"message_start","message":{"id":"msg_1","usage":{"input_tokens":9}}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hé"}}"#,
        r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":7}}"#,
        r#"{"type":"message_stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":9}}"#,
    ];

    fn stream() -> Vec<u8> {
        EVENTS.iter().flat_map(|e| event(e)).collect()
    }

    fn expected_sse() -> String {
        EVENTS
            .iter()
            .map(|e| {
                let kind = serde_json::from_str::<serde_json::Value>(e).unwrap()["type"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                format!("event: {kind}\ndata: {e}\n\n")
            })
            .collect()
    }

    /// Feed `bytes` cut at `cuts` and collect what comes out.
    fn run(bytes: &[u8], cuts: &[usize]) -> String {
        let mut adapter = EventStreamToSse::default();
        let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        bounds.push(0);
        bounds.push(bytes.len());
        bounds.sort_unstable();
        bounds.dedup();
        let mut out = Vec::new();
        for (i, w) in bounds.windows(2).enumerate() {
            let mut chunk = Some(Bytes::copy_from_slice(&bytes[w[0]..w[1]]));
            adapter.adapt(&mut chunk, i + 2 == bounds.len());
            out.extend_from_slice(&chunk.unwrap_or_default());
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn every_single_split_point_gives_the_same_sse() {
        let bytes = stream();
        for cut in 0..=bytes.len() {
            assert_eq!(run(&bytes, &[cut]), expected_sse(), "cut at {cut}");
        }
    }

    proptest! {
        #[test]
        fn any_splits_give_the_same_sse(cuts in proptest::collection::vec(any::<usize>(), 0..12)) {
            prop_assert_eq!(run(&stream(), &cuts), expected_sse());
        }

        #[test]
        fn a_corrupt_byte_ends_with_an_error_event_never_a_panic(at in any::<usize>(), flip in 1u8..) {
            let mut bytes = stream();
            let at = at % bytes.len();
            bytes[at] ^= flip;
            let out = run(&bytes, &[at, at / 2]);
            // Whatever came before the corrupt frame, the stream ends with one error event
            // (a flipped payload byte breaks the message CRC, a flipped length the prelude CRC).
            prop_assert!(out.ends_with("\n\n"));
            prop_assert_eq!(out.matches("event: error").count(), 1, "{}", out);
            prop_assert!(out.rsplit("event: ").next().unwrap().starts_with("error\n"), "{}", out);
        }

        #[test]
        fn a_truncated_stream_ends_with_an_error_event(len in 1usize..600) {
            let bytes = stream();
            let len = len.min(bytes.len() - 1);
            let out = run(&bytes[..len], &[len / 3]);
            prop_assert!(out.ends_with("\n\n"), "{}", out);
            prop_assert_eq!(out.matches("event: error").count(), 1, "{}", out);
        }
    }

    #[test]
    fn an_exception_ends_the_stream_with_an_anthropic_error_event() {
        let mut bytes = event(EVENTS[0]);
        bytes.extend(exception(
            "throttlingException",
            "Too many tokens, please wait.",
        ));
        bytes.extend(event(EVENTS[1]));
        let out = run(&bytes, &[7]);
        assert!(out.starts_with("event: message_start\n"), "{out}");
        let last = out.rsplit("data: ").next().unwrap().trim();
        let error: serde_json::Value = serde_json::from_str(last).unwrap();
        assert_eq!(error["error"]["type"], "rate_limit_error");
        assert!(error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("throttlingException: Too many tokens"));
        assert!(
            !out.contains("content_block_delta"),
            "nothing after the error: {out}"
        );
    }
}
