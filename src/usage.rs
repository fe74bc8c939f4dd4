//! Token usage extracted from Anthropic Messages responses as they pass through.
//!
//! Pure and I/O-free so the proxy's (sync) body filters can call it per chunk. Both parsers are
//! incremental: chunks may split events, lines and even `"\r\n"` anywhere. They never hold a whole
//! body: the SSE parser keeps one line (plus the data of the few events that carry usage), the
//! JSON scanner keeps a bounded tail, because `usage` sits at the end of a Messages object.

use serde::Deserialize;
use std::borrow::Cow;

/// Token counts of one response. Missing fields count as 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub output_tokens: u64,
}

impl Usage {
    /// Output no more than the request allowed (`max_tokens`, when given): the upstream
    /// cannot have produced more, whatever its figure says.
    fn output_allowed(&self, max_tokens: u64) -> u64 {
        if max_tokens > 0 {
            self.output_tokens.min(max_tokens)
        } else {
            self.output_tokens
        }
    }

    /// What the response costs against `max_tokens` worth of output and the key's input
    /// budget: input plus cache writes (cache reads do not count toward input limits), added
    /// without wrapping, and output no more than [`Usage::output_allowed`].
    pub fn settlement(&self, max_tokens: u64) -> crate::pool::Settlement {
        crate::pool::Settlement {
            input_tokens: self
                .input_tokens
                .saturating_add(self.cache_creation_input_tokens),
            output_tokens: self.output_allowed(max_tokens),
        }
    }

    /// What a client's budget is charged for a request of `body_bytes` bytes: every token
    /// reported, with the output capped as the key's settlement caps it, and the input side
    /// (input, cache writes and reads: all the prompt the body carried) at most one token per
    /// byte of the body. A key's bucket caps what one response can cost it; a budget counts a
    /// whole month and is saved, so an upstream's figure (`input_tokens: 2^64-1`) must not
    /// lock a client out. A prompt takes several bytes a token; what a short body can pull in
    /// beyond that (a document by URL or file id, a server tool's results) goes uncounted, the
    /// price of not trusting the upstream's word.
    pub fn budget_tokens(&self, max_tokens: u64, body_bytes: u64) -> u64 {
        self.input_tokens
            .saturating_add(self.cache_creation_input_tokens)
            .saturating_add(self.cache_read_input_tokens)
            .min(body_bytes)
            .saturating_add(self.output_allowed(max_tokens))
    }
}

/// The `usage` object as sent: every field optional (and nullable), unknown fields (such as
/// `cache_creation`, `server_tool_use`, `service_tier`) ignored.
#[derive(Deserialize, Default)]
struct RawUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
}

impl RawUsage {
    fn is_empty(&self) -> bool {
        self.input_tokens.is_none()
            && self.cache_creation_input_tokens.is_none()
            && self.cache_read_input_tokens.is_none()
            && self.output_tokens.is_none()
    }
}

impl Usage {
    /// Overwrites the fields `raw` carries. `message_delta.usage` is cumulative, so overwriting
    /// (never adding) is the correct merge for every event.
    fn overwrite(&mut self, raw: &RawUsage) {
        if let Some(v) = raw.input_tokens {
            self.input_tokens = v;
        }
        if let Some(v) = raw.cache_creation_input_tokens {
            self.cache_creation_input_tokens = v;
        }
        if let Some(v) = raw.cache_read_input_tokens {
            self.cache_read_input_tokens = v;
        }
        if let Some(v) = raw.output_tokens {
            self.output_tokens = v;
        }
    }
}

/// The fields of an SSE `data:` payload that matter; everything else is skipped by serde.
#[derive(Deserialize)]
struct EventData<'a> {
    #[serde(rename = "type", borrow, default)]
    ty: Option<Cow<'a, str>>,
    #[serde(default)]
    message: Option<MessageData>,
    #[serde(default)]
    usage: Option<RawUsage>,
    #[serde(borrow, default)]
    error: Option<ErrorData<'a>>,
}

#[derive(Deserialize)]
struct MessageData {
    #[serde(default)]
    usage: Option<RawUsage>,
}

#[derive(Deserialize)]
struct ErrorData<'a> {
    #[serde(rename = "type", borrow, default)]
    ty: Option<Cow<'a, str>>,
}

/// What the current SSE event is, as far as usage accounting cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EventKind {
    /// No `event:` line yet and no data classified.
    None,
    MessageStart,
    MessageDelta,
    MessageStop,
    Error,
    /// Anything else (content_block_*, ping, ...): its data is skipped unparsed.
    Other,
    /// Data whose `"type"` is not the first key: parse it whole and decide then.
    Unknown,
}

impl EventKind {
    fn from_name(name: &[u8]) -> Self {
        match name {
            b"message_start" => Self::MessageStart,
            b"message_delta" => Self::MessageDelta,
            b"message_stop" => Self::MessageStop,
            b"error" => Self::Error,
            _ => Self::Other,
        }
    }

    /// Whether the data of this event must be kept and JSON-parsed.
    fn wants_data(self) -> bool {
        matches!(
            self,
            Self::MessageStart | Self::MessageDelta | Self::Error | Self::Unknown
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LineMode {
    /// Not yet known whether the line matters: bytes are buffered.
    Undecided,
    /// The line matters (event line, data of a wanted event): buffer it whole.
    Keep,
    /// The line is irrelevant (text deltas, comments): drop bytes until the line ends.
    Skip,
}

/// Enough of a data line to read `data: {"type": "content_block_delta"` and decide.
const CLASSIFY_PREFIX: usize = 64;
/// A hostile or broken upstream must not make one line grow without bound.
const MAX_LINE: usize = 1 << 20;

/// Incremental SSE parser for a streamed Messages response.
///
/// Feed chunks as they arrive; only `message_start`, `message_delta` and `error` events are
/// JSON-parsed. Text deltas are recognised by their `event:` line (or, without one, by the
/// `"type"` at the start of their data) and skipped without being buffered.
pub struct SseUsageParser {
    line: Vec<u8>,
    mode: LineMode,
    /// The previous chunk ended in `\r`: a leading `\n` in the next chunk belongs to it.
    after_cr: bool,
    event: EventKind,
    data: Vec<u8>,
    usage: Usage,
    stopped: bool,
    error: Option<String>,
}

impl Default for SseUsageParser {
    fn default() -> Self {
        Self::new()
    }
}

impl SseUsageParser {
    pub fn new() -> Self {
        Self {
            line: Vec::with_capacity(256),
            mode: LineMode::Undecided,
            after_cr: false,
            event: EventKind::None,
            data: Vec::new(),
            usage: Usage::default(),
            stopped: false,
            error: None,
        }
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        let mut i = 0;
        if self.after_cr && !chunk.is_empty() {
            self.after_cr = false;
            if chunk[0] == b'\n' {
                i = 1;
            }
        }
        while i < chunk.len() {
            let rest = &chunk[i..];
            match memchr::memchr2(b'\n', b'\r', rest) {
                Some(p) => {
                    self.push_partial(&rest[..p]);
                    i += p + 1;
                    if rest[p] == b'\r' {
                        match chunk.get(i) {
                            Some(b'\n') => i += 1,
                            Some(_) => {}
                            None => self.after_cr = true,
                        }
                    }
                    self.end_line();
                }
                None => {
                    self.push_partial(rest);
                    break;
                }
            }
        }
    }

    /// Usage so far: input/cache from `message_start`, output as of the last `message_delta`.
    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// Whether `message_stop` was seen, i.e. the stream completed.
    pub fn message_stopped(&self) -> bool {
        self.stopped
    }

    /// The `error.type` of an `event: error` seen mid-stream (e.g. `overloaded_error`).
    pub fn error_type(&self) -> Option<&str> {
        self.error.as_deref()
    }

    fn push_partial(&mut self, bytes: &[u8]) {
        if self.mode == LineMode::Skip || bytes.is_empty() {
            return;
        }
        self.line.extend_from_slice(bytes);
        if self.mode == LineMode::Undecided {
            self.decide();
        }
        if self.line.len() > MAX_LINE {
            self.line.clear();
            self.mode = LineMode::Skip;
        }
    }

    /// Classifies the buffered start of a line as soon as enough of it is known.
    fn decide(&mut self) {
        let line = &self.line[..];
        if line[0] == b':' {
            // SSE comment.
            self.mode = LineMode::Skip;
            return;
        }
        if line.len() < 5 {
            if !b"data:".starts_with(line) {
                self.mode = LineMode::Keep;
            }
            return;
        }
        if !line.starts_with(b"data:") {
            self.mode = LineMode::Keep;
            return;
        }
        if self.event == EventKind::None {
            // No `event:` line: classify by the data's leading `"type"`, if it is already there.
            // Only the line's first CLASSIFY_PREFIX bytes decide, so the answer is the same
            // however the stream was cut (found by fuzzing: a type name running past the
            // prefix was "unknown" when the line came in pieces, and skipped when it came
            // whole).
            let payload = &line[5..line.len().min(CLASSIFY_PREFIX)];
            match classify_data(payload) {
                Some(kind) => self.event = kind,
                None if line.len() < CLASSIFY_PREFIX => return,
                None => self.event = EventKind::Unknown,
            }
        }
        if self.event.wants_data() {
            self.mode = LineMode::Keep;
        } else {
            self.line.clear();
            self.mode = LineMode::Skip;
        }
    }

    fn end_line(&mut self) {
        let mode = std::mem::replace(&mut self.mode, LineMode::Undecided);
        if mode == LineMode::Skip {
            return;
        }
        if self.line.is_empty() {
            self.dispatch();
            return;
        }
        let line = &self.line[..];
        if let Some(value) = line.strip_prefix(b"event:") {
            self.event = EventKind::from_name(strip_one_space(value));
        } else if let Some(value) = line.strip_prefix(b"data:") {
            if self.event == EventKind::None {
                // A short data line ended before `decide` could classify it.
                self.event = classify_data(value).unwrap_or(EventKind::Unknown);
            }
            if self.event.wants_data() {
                if !self.data.is_empty() {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(strip_one_space(value));
            }
        }
        // Other fields (id:, retry:) do not matter.
        self.line.clear();
    }

    /// End of an event (blank line): apply what it carried and reset for the next one.
    fn dispatch(&mut self) {
        let kind = std::mem::replace(&mut self.event, EventKind::None);
        match kind {
            EventKind::None | EventKind::Other => {}
            EventKind::MessageStop => self.stopped = true,
            EventKind::MessageStart
            | EventKind::MessageDelta
            | EventKind::Error
            | EventKind::Unknown => {
                // Taken out (and put back, keeping its capacity) so `apply` may borrow self.
                let data = std::mem::take(&mut self.data);
                if let Ok(ev) = serde_json::from_slice::<EventData>(&data) {
                    self.apply(kind, ev);
                }
                self.data = data;
            }
        }
        self.data.clear();
    }

    fn apply(&mut self, kind: EventKind, ev: EventData) {
        let kind = match (kind, ev.ty.as_deref()) {
            (EventKind::Unknown, Some(t)) => EventKind::from_name(t.as_bytes()),
            (k, _) => k,
        };
        match kind {
            EventKind::MessageStart => {
                if let Some(u) = ev.message.as_ref().and_then(|m| m.usage.as_ref()) {
                    self.usage.overwrite(u);
                }
            }
            EventKind::MessageDelta => {
                if let Some(u) = &ev.usage {
                    self.usage.overwrite(u);
                }
            }
            EventKind::MessageStop => self.stopped = true,
            EventKind::Error => {
                let ty = ev
                    .error
                    .and_then(|e| e.ty)
                    .unwrap_or(Cow::Borrowed("error"));
                self.error = Some(ty.into_owned());
            }
            _ => {}
        }
    }
}

fn strip_one_space(v: &[u8]) -> &[u8] {
    v.strip_prefix(b" ").unwrap_or(v)
}

fn skip_ws(v: &[u8]) -> &[u8] {
    let n = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    &v[n..]
}

/// Reads `{"type": "name"` at the start of a data payload. `None` = not enough bytes yet;
/// `Some(Unknown)` = the payload does not start that way (parse it whole instead).
fn classify_data(payload: &[u8]) -> Option<EventKind> {
    const INCOMPLETE: Option<EventKind> = None;
    const UNKNOWN: Option<EventKind> = Some(EventKind::Unknown);
    let mut rest = skip_ws(payload);
    for expected in [&b"{"[..], b"\"type\"", b":", b"\""] {
        let n = expected.len().min(rest.len());
        if rest[..n] != expected[..n] {
            return UNKNOWN;
        }
        if n < expected.len() {
            return INCOMPLETE;
        }
        rest = skip_ws(&rest[n..]);
        if rest.is_empty() {
            return INCOMPLETE;
        }
    }
    match rest.iter().position(|&b| b == b'"') {
        Some(end) => Some(EventKind::from_name(&rest[..end])),
        None => INCOMPLETE,
    }
}

/// How much of the end of a JSON body is kept. `usage` (with its nested `cache_creation` and
/// `server_tool_use`) plus any fields after it fit well within this.
const JSON_TAIL: usize = 8 * 1024;

/// Incremental scanner for a non-streamed JSON Messages response: keeps only a bounded tail.
pub struct JsonUsageScanner {
    tail: Vec<u8>,
}

impl Default for JsonUsageScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl JsonUsageScanner {
    pub fn new() -> Self {
        Self { tail: Vec::new() }
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        if chunk.len() >= JSON_TAIL {
            self.tail.clear();
            self.tail
                .extend_from_slice(&chunk[chunk.len() - JSON_TAIL..]);
            return;
        }
        self.tail.extend_from_slice(chunk);
        // Trim lazily (at twice the window) so the memmove cost is amortised.
        if self.tail.len() > 2 * JSON_TAIL {
            let excess = self.tail.len() - JSON_TAIL;
            self.tail.drain(..excess);
        }
    }

    /// The last well-formed `"usage": {...}` object in the tail, if any. The top-level `usage`
    /// follows `content` in a Messages object, so the last occurrence is the right one.
    pub fn finish(&self) -> Option<Usage> {
        const KEY: &[u8] = b"\"usage\"";
        let buf = &self.tail[..];
        let mut end = buf.len();
        while let Some(pos) = memchr::memmem::rfind(&buf[..end], KEY) {
            end = pos;
            if is_escaped(buf, pos) {
                // `\"usage\"` inside a string, e.g. in the model's text.
                continue;
            }
            let after = skip_ws(&buf[pos + KEY.len()..]);
            let Some(after) = after.strip_prefix(b":") else {
                continue;
            };
            let after = skip_ws(after);
            if after.first() != Some(&b'{') {
                continue;
            }
            let mut it = serde_json::Deserializer::from_slice(after).into_iter::<RawUsage>();
            if let Some(Ok(raw)) = it.next() {
                if !raw.is_empty() {
                    let mut u = Usage::default();
                    u.overwrite(&raw);
                    return Some(u);
                }
            }
        }
        None
    }
}

/// Whether the quote at `pos` is escaped (preceded by an odd run of backslashes).
fn is_escaped(buf: &[u8], pos: usize) -> bool {
    let run = buf[..pos].iter().rev().take_while(|&&b| b == b'\\').count();
    run % 2 == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_type_name_is_classified_the_same_however_the_line_is_cut() {
        // From the fuzzer: a data line without an `event:` line whose type name runs past the
        // classifying prefix, then an error event whose data reads alone but not after it.
        let stream = format!(
            "data: {{\"type\":\"{}\"}}\nevent: error\ndata: {{\"x\":1}}\n\n",
            "t".repeat(100)
        );
        let whole = {
            let mut p = SseUsageParser::new();
            p.feed(stream.as_bytes());
            p.error_type().map(str::to_owned)
        };
        let bytewise = {
            let mut p = SseUsageParser::new();
            for b in stream.as_bytes() {
                p.feed(std::slice::from_ref(b));
            }
            p.error_type().map(str::to_owned)
        };
        assert_eq!(whole, bytewise);
    }

    #[test]
    fn settlement_never_wraps_and_never_exceeds_max_tokens() {
        let hostile = Usage {
            input_tokens: u64::MAX - 1,
            cache_creation_input_tokens: 10,
            cache_read_input_tokens: u64::MAX,
            output_tokens: 1_000_000_000_000_000_000,
        };
        let s = hostile.settlement(64_000);
        assert_eq!(s.input_tokens, u64::MAX);
        assert_eq!(s.output_tokens, 64_000);
        // Without max_tokens (count_tokens), the figure stands; the bucket caps its effect.
        assert_eq!(
            hostile.settlement(0).output_tokens,
            1_000_000_000_000_000_000
        );
        let honest = Usage {
            input_tokens: 100,
            cache_creation_input_tokens: 20,
            cache_read_input_tokens: 5_000,
            output_tokens: 300,
        };
        let s = honest.settlement(64_000);
        assert_eq!((s.input_tokens, s.output_tokens), (120, 300));
    }

    #[test]
    fn a_budget_is_charged_no_more_than_the_request_could_have_used() {
        let hostile = Usage {
            input_tokens: u64::MAX,
            cache_creation_input_tokens: 10,
            cache_read_input_tokens: u64::MAX,
            output_tokens: 1_000_000_000,
        };
        assert_eq!(hostile.budget_tokens(16, 300), 316);
        let honest = Usage {
            input_tokens: 100,
            cache_creation_input_tokens: 20,
            cache_read_input_tokens: 5_000,
            output_tokens: 300,
        };
        assert_eq!(honest.budget_tokens(64_000, 40_000), 5_420);
    }

    fn stream(output_deltas: &[u64]) -> String {
        let mut s = String::new();
        s.push_str("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":2095,\"cache_creation_input_tokens\":7,\"cache_read_input_tokens\":1500,\"cache_creation\":{\"ephemeral_5m_input_tokens\":7,\"ephemeral_1h_input_tokens\":0},\"output_tokens\":1,\"service_tier\":\"standard\"}}}\n\n");
        s.push_str("event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n");
        s.push_str("event: ping\ndata: {\"type\": \"ping\"}\n\n");
        for i in 0..20 {
            s.push_str(&format!("event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"word {i} with \\\"usage\\\":{{\\\"output_tokens\\\":999}} \\n\"}}}}\n\n"));
        }
        s.push_str(
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        );
        for o in output_deltas {
            s.push_str(&format!("event: message_delta\ndata: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"end_turn\",\"stop_sequence\":null}},\"usage\":{{\"output_tokens\":{o}}}}}\n\n"));
        }
        s.push_str("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
        s
    }

    const EXPECTED: Usage = Usage {
        input_tokens: 2095,
        cache_creation_input_tokens: 7,
        cache_read_input_tokens: 1500,
        output_tokens: 503,
    };

    fn parse_whole(s: &[u8]) -> SseUsageParser {
        let mut p = SseUsageParser::new();
        p.feed(s);
        p
    }

    #[test]
    fn whole_stream() {
        let p = parse_whole(stream(&[503]).as_bytes());
        assert_eq!(p.usage(), EXPECTED);
        assert!(p.message_stopped());
        assert_eq!(p.error_type(), None);
    }

    #[test]
    fn byte_by_byte_and_random_splits() {
        for s in [stream(&[503]), stream(&[503]).replace('\n', "\r\n")] {
            let bytes = s.as_bytes();
            let mut p = SseUsageParser::new();
            for b in bytes {
                p.feed(std::slice::from_ref(b));
            }
            assert_eq!(p.usage(), EXPECTED);
            assert!(p.message_stopped());

            let mut rng = fastrand::Rng::with_seed(7);
            for _ in 0..300 {
                let mut p = SseUsageParser::new();
                let mut i = 0;
                while i < bytes.len() {
                    let n = rng.usize(0..=40.min(bytes.len() - i));
                    p.feed(&bytes[i..i + n]);
                    i += n;
                }
                assert_eq!(p.usage(), EXPECTED);
                assert!(p.message_stopped());
            }
        }
    }

    #[test]
    fn crlf_and_lone_cr_line_endings() {
        let s = stream(&[503]);
        for sep in ["\r\n", "\r"] {
            let t = s.replace('\n', sep);
            let p = parse_whole(t.as_bytes());
            assert_eq!(p.usage(), EXPECTED, "separator {sep:?}");
            assert!(p.message_stopped());
        }
        // "\r" and "\n" of one CRLF in different chunks must not make an empty line (an event end)
        // in the middle of an event.
        let t = s.replace('\n', "\r\n");
        let mut p = SseUsageParser::new();
        for part in t.split_inclusive('\r') {
            p.feed(part.as_bytes());
        }
        assert_eq!(p.usage(), EXPECTED);
    }

    #[test]
    fn message_delta_is_cumulative_overwrite() {
        let p = parse_whole(stream(&[10, 200, 503]).as_bytes());
        assert_eq!(p.usage(), EXPECTED);
        // A delta that carries input/cache fields overwrites those too.
        let mut p = parse_whole(stream(&[]).as_bytes());
        assert_eq!(p.usage().output_tokens, 1);
        p.feed(b"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"input_tokens\":3000,\"cache_read_input_tokens\":null,\"output_tokens\":42}}\n\n");
        let u = p.usage();
        assert_eq!(u.input_tokens, 3000);
        assert_eq!(u.cache_read_input_tokens, 1500);
        assert_eq!(u.output_tokens, 42);
    }

    #[test]
    fn error_event_mid_stream() {
        let s = stream(&[]);
        let cut = s.find("event: content_block_stop").unwrap_or(s.len());
        let mut p = SseUsageParser::new();
        p.feed(&s.as_bytes()[..cut]);
        p.feed(b"event: error\r\ndata: {\"type\": \"error\", \"error\": {\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}\r\n\r\n");
        assert_eq!(p.error_type(), Some("overloaded_error"));
        assert!(!p.message_stopped());
        assert_eq!(p.usage().input_tokens, 2095);
    }

    #[test]
    fn without_event_lines_uses_data_type() {
        let s: String = stream(&[77])
            .lines()
            .filter(|l| !l.starts_with("event:"))
            .map(|l| format!("{l}\n"))
            .collect();
        let mut p = SseUsageParser::new();
        for b in s.as_bytes() {
            p.feed(std::slice::from_ref(b));
        }
        assert_eq!(p.usage().output_tokens, 77);
        assert_eq!(p.usage().input_tokens, 2095);
        assert!(p.message_stopped());
        // "type" not first: parsed whole, still understood.
        let mut p = SseUsageParser::new();
        p.feed(b"data: {\"usage\":{\"output_tokens\":5},\"type\":\"message_delta\"}\n\n: comment\n\ndata: {\"error\":{\"type\":\"api_error\"},\"type\":\"error\"}\n\n");
        assert_eq!(p.usage().output_tokens, 5);
        assert_eq!(p.error_type(), Some("api_error"));
    }

    #[test]
    fn text_deltas_are_not_buffered() {
        let mut p = SseUsageParser::new();
        p.feed(b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"");
        let big = vec![b'x'; 100_000];
        p.feed(&big);
        assert!(p.line.len() < CLASSIFY_PREFIX && p.data.is_empty());
        p.feed(b"\"}}\n\n");
        assert_eq!(p.usage(), Usage::default());
    }

    fn json_body(text_len: usize, trailing: &str) -> String {
        // Whole units only, so no escape sequence is cut in half.
        let unit = "lorem \\\"usage\\\": {\\\"input_tokens\\\": 1} ipsum ";
        let text = unit.repeat(text_len / unit.len() + 1);
        format!(
            "{{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude\",\"content\":[{{\"type\":\"text\",\"text\":\"{text}\"}},{{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"x\",\"input\":{{\"usage\":{{\"output_tokens\":1}},\"deep\":{{\"a\":[1,{{\"b\":2}}]}}}}}}],\"stop_reason\":\"end_turn\",\"stop_sequence\":null,\"usage\": {{\"input_tokens\": 12, \"cache_creation_input_tokens\": 3, \"cache_read_input_tokens\": 400, \"cache_creation\": {{\"ephemeral_5m_input_tokens\": 3}}, \"output_tokens\": 99, \"service_tier\": \"standard\"}}{trailing}}}"
        )
    }

    #[test]
    fn json_scanner_big_body_usage_at_end() {
        let want = Usage {
            input_tokens: 12,
            cache_creation_input_tokens: 3,
            cache_read_input_tokens: 400,
            output_tokens: 99,
        };
        for trailing in [
            "",
            ",\"container\":null,\"context_management\":{\"applied\":[]}",
        ] {
            let body = json_body(300_000, trailing);
            let mut rng = fastrand::Rng::with_seed(3);
            let bytes = body.as_bytes();
            let mut s = JsonUsageScanner::new();
            let mut i = 0;
            while i < bytes.len() {
                let n = rng.usize(1..=20_000.min(bytes.len() - i));
                s.feed(&bytes[i..i + n]);
                i += n;
                assert!(s.tail.len() <= 2 * JSON_TAIL);
            }
            assert_eq!(s.finish(), Some(want));
            // Whole body in one chunk, and a small body.
            let mut s = JsonUsageScanner::new();
            s.feed(bytes);
            assert_eq!(s.finish(), Some(want));
            let mut s = JsonUsageScanner::new();
            s.feed(json_body(10, trailing).as_bytes());
            assert_eq!(s.finish(), Some(want));
        }
    }

    #[test]
    fn json_scanner_without_usage() {
        let mut s = JsonUsageScanner::new();
        s.feed(br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#);
        assert_eq!(s.finish(), None);
        assert_eq!(JsonUsageScanner::new().finish(), None);
    }
}
