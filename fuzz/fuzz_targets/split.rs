//! Arbitrary chunk splits for the streaming parsers' targets: the input's first byte says how
//! many of the next bytes are chunk sizes (cycled), the rest is the stream.

/// `(chunk sizes, stream)` of a fuzz input.
pub fn parts(data: &[u8]) -> (&[u8], &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return (&[], &[]);
    };
    rest.split_at(usize::from(n % 16).min(rest.len()))
}

/// Feed `stream` to `feed` in chunks of `sizes` (cycled; one byte each when there are none).
pub fn feed_split(stream: &[u8], sizes: &[u8], mut feed: impl FnMut(&[u8])) {
    let sizes = if sizes.is_empty() { &[1u8][..] } else { sizes };
    let mut rest = stream;
    for &size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let n = usize::from(size).max(1).min(rest.len());
        feed(&rest[..n]);
        rest = &rest[n..];
    }
}
