//! The response body type: either a complete buffer or a channel fed by a producer task.
//!
//! A channel (rather than a pre-built stream) lets the producer sleep between SSE events and
//! stall, and an `Err` sent through it makes hyper abort the connection mid-body, which is how
//! `Fault::DropAfterEvents` cuts a response without a terminating chunk.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

pub(crate) type Chunk = Result<Bytes, io::Error>;

pub(crate) enum MockBody {
    Full(Option<Bytes>),
    Channel(mpsc::Receiver<Chunk>),
}

impl MockBody {
    pub(crate) fn full(b: impl Into<Bytes>) -> Self {
        MockBody::Full(Some(b.into()))
    }
}

impl From<Bytes> for MockBody {
    fn from(b: Bytes) -> Self {
        MockBody::full(b)
    }
}

impl From<&'static str> for MockBody {
    fn from(s: &'static str) -> Self {
        MockBody::full(Bytes::from_static(s.as_bytes()))
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            MockBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            MockBody::Channel(rx) => rx.poll_recv(cx).map(|c| c.map(|r| r.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, MockBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            MockBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            MockBody::Full(None) => SizeHint::with_exact(0),
            MockBody::Channel(_) => SizeHint::default(),
        }
    }
}

/// A channel-backed body and its sender. Small capacity: the producer should run just ahead of
/// the socket, not buffer a whole response.
pub(crate) fn channel() -> (mpsc::Sender<Chunk>, MockBody) {
    let (tx, rx) = mpsc::channel(8);
    (tx, MockBody::Channel(rx))
}
