//! The SSE usage parser on arbitrary bytes in arbitrary chunk splits: never a panic, and the
//! same usage, stop and error however the stream is split.
#![no_main]

use cc_relay::usage::SseUsageParser;
use libfuzzer_sys::fuzz_target;

mod split;

fn run(stream: &[u8], sizes: &[u8]) -> (cc_relay::usage::Usage, bool, Option<String>) {
    let mut parser = SseUsageParser::new();
    split::feed_split(stream, sizes, |chunk| parser.feed(chunk));
    (
        parser.usage(),
        parser.message_stopped(),
        parser.error_type().map(str::to_owned),
    )
}

fuzz_target!(|data: &[u8]| {
    let (sizes, stream) = split::parts(data);
    assert_eq!(run(stream, &[255]), run(stream, sizes));
});
