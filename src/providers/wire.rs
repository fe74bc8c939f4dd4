//! What the cloud kinds share when they reshape a Messages request: its top-level fields read
//! without parsing their values, and a model id made into one URL path segment.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::value::RawValue;

/// A Messages body's top-level fields, each value as the client wrote it (borrowed, unparsed),
/// and the two the routes depend on.
pub struct TopLevel<'a> {
    pub fields: BTreeMap<Cow<'a, str>, &'a RawValue>,
    pub model: String,
    pub stream: bool,
}

/// Read `body`'s top-level fields; `kind` names the provider kind in the error.
pub fn top_level<'a>(body: &'a [u8], kind: &str) -> Result<TopLevel<'a>, String> {
    let fields: BTreeMap<Cow<'a, str>, &'a RawValue> =
        serde_json::from_slice(body).map_err(|e| format!("{kind}: request body: {e}"))?;
    let model = fields
        .get("model")
        .and_then(|m| serde_json::from_str::<String>(m.get()).ok())
        .ok_or_else(|| format!("{kind}: the request names no model"))?;
    let stream = fields.get("stream").is_some_and(|s| s.get() == "true");
    Ok(TopLevel {
        fields,
        model,
        stream,
    })
}

/// Append `"name":value` (value as written) to `out`.
pub fn write_field(out: &mut Vec<u8>, name: &str, value: &RawValue) {
    serde_json::to_writer(&mut *out, name).expect("a string serialises to a Vec");
    out.push(b':');
    out.extend_from_slice(value.get().as_bytes());
}

/// `id` as one path segment: unreserved characters and those in `keep` as they are, the rest
/// percent-encoded.
pub fn path_segment(id: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(id.len() + 8);
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') || keep.contains(&b)
        {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}
