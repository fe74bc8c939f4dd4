//! Bedrock's event-stream decoder on arbitrary frames in arbitrary chunk splits: never a
//! panic, and what reaches the client ends in an `error` event unless `message_stop` went
//! through. Random bytes almost never carry valid CRCs, so with the mode bit set the input is
//! first made into real frames (one per `0xff`-separated piece: an event carrying the piece,
//! or an exception for a piece starting with `!`), which the split then cuts anywhere.
#![no_main]

use aws_smithy_eventstream::frame::write_message_to;
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use base64::Engine;
use bytes::Bytes;
use cc_relay::providers::bedrock::stream::EventStreamToSse;
use cc_relay::providers::ResponseAdapter;
use libfuzzer_sys::fuzz_target;

fn string(s: &str) -> HeaderValue {
    HeaderValue::String(s.to_owned().into())
}

fn frames(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in data.split(|&b| b == 0xff) {
        let message = match piece.strip_prefix(b"!") {
            Some(payload) => Message::new_from_parts(
                vec![
                    Header::new(":message-type", string("exception")),
                    Header::new(":exception-type", string("throttlingException")),
                ],
                Bytes::copy_from_slice(payload),
            ),
            None => {
                let encoded = base64::engine::general_purpose::STANDARD.encode(piece);
                Message::new_from_parts(
                    vec![
                        Header::new(":message-type", string("event")),
                        Header::new(":event-type", string("chunk")),
                    ],
                    Bytes::from(format!("{{\"bytes\":\"{encoded}\"}}")),
                )
            }
        };
        write_message_to(&message, &mut out).expect("a frame writes to a Vec");
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let stream = if mode & 0x80 != 0 {
        frames(rest)
    } else {
        rest.to_vec()
    };
    let size = usize::from(mode & 0x7f).max(1);
    let mut adapter = EventStreamToSse::default();
    let mut out = Vec::new();
    let mut chunks = stream.chunks(size).peekable();
    if chunks.peek().is_none() {
        let mut chunk = None;
        adapter.adapt(&mut chunk, true);
        out.extend(chunk.unwrap_or_default());
    }
    while let Some(piece) = chunks.next() {
        let last = chunks.peek().is_none();
        let mut chunk = Some(Bytes::copy_from_slice(piece));
        adapter.adapt(&mut chunk, last);
        out.extend(chunk.unwrap_or_default());
    }
    let text = String::from_utf8_lossy(&out);
    if !text.contains("event: message_stop") {
        assert!(text.contains("event: error\n"), "a stream that did not stop says why");
    }
});
