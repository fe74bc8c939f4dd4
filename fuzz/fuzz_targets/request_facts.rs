//! The request body's facts and the model rewrite on arbitrary bytes: parsing never panics;
//! a body that parses, rewritten to another model, parses again with that model and the
//! same other facts.
#![no_main]

use bytes::Bytes;
use cc_relay::proxy::RequestFacts;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(facts) = RequestFacts::parse(data) else {
        return;
    };
    let body = Bytes::copy_from_slice(data);
    let rewritten = facts.rewrite_model(&body, "claude-\"mapped\"\u{e9}");
    match &facts.model {
        None => assert_eq!(rewritten, body),
        Some(_) => {
            let again = RequestFacts::parse(&rewritten).expect("a rewritten body parses");
            assert_eq!(again.model.as_deref(), Some("claude-\"mapped\"\u{e9}"));
            assert_eq!(again.stream, facts.stream);
            assert_eq!(again.max_tokens, facts.max_tokens);
            assert_eq!(again.user_id, facts.user_id);
            // (Not `serde_json::Value`: a body may carry a number no f64 holds, `8e8888`, in
            // a field the relay skips; it goes upstream as sent, for the upstream to judge.)
        }
    }
});
