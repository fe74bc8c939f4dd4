//! Bodies of `POST /v1/messages`: the JSON message and the SSE stream, in Anthropic's exact
//! format, plus the producers that pace, stall or cut them.

use std::io;
use std::time::{Duration, Instant};

use bytes::Bytes;
use once_cell::sync::Lazy;
use tokio::sync::mpsc::Sender;

use super::body::{self, Chunk, MockBody};

/// What to say in one Messages response.
pub(super) struct Reply {
    pub id: u64,
    /// The request's model as a JSON string literal (quotes included, escaped).
    pub model_json: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Number of text deltas.
    pub events: usize,
    /// Pause before each text delta.
    pub interval: Duration,
}

/// How a body should misbehave (from `Fault`); positions count SSE events from 0 =
/// `message_start`.
pub(super) enum BodyFault {
    None,
    Drop(usize),
    Stall(usize, Duration),
    ErrorEvent(usize, String),
}

const WORDS: [&str; 8] = [
    "Hello",
    " from",
    " the",
    " cc-relay",
    " mock",
    " upstream",
    ",",
    " streaming.",
];

/// Text deltas are the bulk of a stream and never change, so they are rendered once.
static DELTAS: Lazy<Vec<Bytes>> = Lazy::new(|| {
    WORDS
        .iter()
        .map(|w| {
            Bytes::from(format!(
                "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{w}\"}}}}\n\n"
            ))
        })
        .collect()
});

const CONTENT_BLOCK_START: &[u8] = b"event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n";
// Anthropic's ping really has the spaces.
const PING: &[u8] = b"event: ping\ndata: {\"type\": \"ping\"}\n\n";
const CONTENT_BLOCK_STOP: &[u8] =
    b"event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n";
const MESSAGE_STOP: &[u8] = b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

/// The text the deltas spell out, for the JSON response.
fn text(events: usize) -> String {
    (0..events).map(|i| WORDS[i % WORDS.len()]).collect()
}

pub(super) fn message_json(r: &Reply) -> Bytes {
    Bytes::from(format!(
        "{{\"id\":\"msg_mock_{}\",\"type\":\"message\",\"role\":\"assistant\",\"model\":{},\"content\":[{{\"type\":\"text\",\"text\":\"{}\"}}],\"stop_reason\":\"end_turn\",\"stop_sequence\":null,\"usage\":{{\"input_tokens\":{},\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":{}}}}}",
        r.id,
        r.model_json,
        text(r.events),
        r.input_tokens,
        r.output_tokens
    ))
}

fn message_start(r: &Reply) -> Bytes {
    Bytes::from(format!(
        "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"id\":\"msg_mock_{}\",\"type\":\"message\",\"role\":\"assistant\",\"model\":{},\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{{\"input_tokens\":{},\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":1}}}}}}\n\n",
        r.id, r.model_json, r.input_tokens
    ))
}

fn message_delta(r: &Reply) -> Bytes {
    Bytes::from(format!(
        "event: message_delta\ndata: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"end_turn\",\"stop_sequence\":null}},\"usage\":{{\"output_tokens\":{}}}}}\n\n",
        r.output_tokens
    ))
}

fn error_event(error_type: &str) -> Bytes {
    let data = serde_json::json!({
        "type": "error",
        "error": {"type": error_type, "message": "mock: error mid-stream"},
    });
    Bytes::from(format!("event: error\ndata: {data}\n\n"))
}

/// Event `i` of a stream with `r.events` deltas (6 + events in all).
fn event(r: &Reply, i: usize) -> Bytes {
    let n = r.events;
    match i {
        0 => message_start(r),
        1 => Bytes::from_static(CONTENT_BLOCK_START),
        2 => Bytes::from_static(PING),
        i if i < 3 + n => DELTAS[(i - 3) % DELTAS.len()].clone(),
        i if i == 3 + n => Bytes::from_static(CONTENT_BLOCK_STOP),
        i if i == 4 + n => message_delta(r),
        _ => Bytes::from_static(MESSAGE_STOP),
    }
}

/// A streamed response: each event is its own body frame, produced by a task so it can be
/// paced and faulted.
pub(super) fn stream(r: Reply, fault: BodyFault) -> MockBody {
    let (tx, body) = body::channel();
    tokio::spawn(produce_stream(r, fault, tx, false));
    body
}

/// The same stream as Bedrock sends it: each event an event-stream frame, written in odd-sized
/// pieces; an error becomes an exception frame.
pub(super) fn event_stream(r: Reply, fault: BodyFault) -> MockBody {
    let (tx, body) = body::channel();
    tokio::spawn(produce_stream(r, fault, tx, true));
    body
}

/// Send `bytes`, as Bedrock frames when `framed`, in pieces of 7, 13 and 29 bytes in turn.
async fn send(tx: &Sender<Chunk>, bytes: Bytes, framed: bool) -> bool {
    if !framed {
        return tx.send(Ok(bytes)).await.is_ok();
    }
    let frame = super::bedrock::frame_of_sse(&bytes);
    let mut at = 0;
    for size in [7usize, 13, 29].iter().cycle() {
        if at >= frame.len() {
            return true;
        }
        let end = (at + size).min(frame.len());
        if tx.send(Ok(frame.slice(at..end))).await.is_err() {
            return false;
        }
        at = end;
    }
    true
}

async fn produce_stream(r: Reply, fault: BodyFault, tx: Sender<Chunk>, framed: bool) {
    let total = r.events + 6;
    // Position `total` is "after the last event": faults with larger counts act there.
    for i in 0..=total {
        let due = |n: usize| n.min(total) == i;
        match &fault {
            BodyFault::Drop(n) if due(*n) => return cut(tx).await,
            BodyFault::ErrorEvent(n, ty) if due(*n) => {
                // Anthropic ends the stream normally after an error event.
                let _ = send(&tx, error_event(ty), framed).await;
                return;
            }
            _ => {}
        }
        let stall = match &fault {
            BodyFault::Stall(n, d) if due(*n) => *d,
            _ => Duration::ZERO,
        };
        if !stall.is_zero() && !pause(&tx, stall).await {
            return;
        }
        if i == total {
            break;
        }
        let is_delta = (3..3 + r.events).contains(&i);
        if is_delta && !r.interval.is_zero() && !pause(&tx, r.interval).await {
            return;
        }
        if !send(&tx, event(&r, i), framed).await {
            return; // client gone
        }
    }
}

/// A JSON body that may be cut or stalled halfway. The caller sets `content-length` to the
/// full length, so a cut body is visibly short.
pub(super) fn json(body: Bytes, fault: BodyFault) -> MockBody {
    let stall = match fault {
        BodyFault::Drop(_) => None,
        BodyFault::Stall(_, d) => Some(d),
        BodyFault::None | BodyFault::ErrorEvent(..) => return MockBody::full(body),
    };
    let (tx, out) = body::channel();
    tokio::spawn(async move {
        let half = body.slice(..body.len() / 2);
        let rest = body.slice(body.len() / 2..);
        if tx.send(Ok(half)).await.is_err() {
            return;
        }
        match stall {
            None => cut(tx).await,
            Some(d) => {
                if pause(&tx, d).await {
                    let _ = tx.send(Ok(rest)).await;
                }
            }
        }
    });
    out
}

/// Sleeps, or returns false early if the client went away (so stalls don't pin tasks).
async fn pause(tx: &Sender<Chunk>, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = tx.closed() => false,
    }
}

/// Ends the body with an error, which makes hyper drop the connection without a terminating
/// chunk. hyper discards bytes it buffered but has not written when the body errors, so first
/// let it drain the channel and flush what was sent.
async fn cut(tx: Sender<Chunk>) {
    let deadline = Instant::now() + Duration::from_secs(1);
    while tx.capacity() < tx.max_capacity() && Instant::now() < deadline {
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    let err = io::Error::new(io::ErrorKind::ConnectionAborted, "mock: connection cut");
    let _ = tx.send(Err(err)).await;
}
