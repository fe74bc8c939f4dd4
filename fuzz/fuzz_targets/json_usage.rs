//! The JSON usage scanner on arbitrary bytes in arbitrary chunk splits: never a panic, and the
//! same answer however the body is split.
#![no_main]

use cc_relay::usage::JsonUsageScanner;
use libfuzzer_sys::fuzz_target;

mod split;

fn run(body: &[u8], sizes: &[u8]) -> Option<cc_relay::usage::Usage> {
    let mut scanner = JsonUsageScanner::new();
    split::feed_split(body, sizes, |chunk| scanner.feed(chunk));
    scanner.finish()
}

fuzz_target!(|data: &[u8]| {
    let (sizes, body) = split::parts(data);
    assert_eq!(run(body, &[255]), run(body, sizes));
});
