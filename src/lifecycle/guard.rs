//! The client listener's guard around Pingora's HTTP app. Pingora bounds the reading of a
//! request header only per read (60 s, or the keep-alive timeout on a reused connection) and at
//! 1 MiB, and accepts every connection: a client dripping its header a byte a minute holds a
//! connection and its buffer for ever, and enough of them lock everyone out. The guard:
//! - counts open client connections (`server.max_connections`): past the cap a new
//!   connection is closed at once, before a byte of it is read;
//! - builds nothing for a connection until its client sends something (first_bytes.rs), and
//!   serves it in a task of its own rather than Pingora's, so that thousands of connections
//!   that say nothing cost little memory (issue 26: about 5 KiB each, from 25);
//! - gives each request header a deadline (`server.client_header_timeout_ms`; on a reused
//!   connection the idle timeout comes on top): a connection whose header is not complete by
//!   then is closed. The stream is watched until the header's blank line (`\r\n\r\n`, which the
//!   HTTP/2 preface also ends with), then passed through untouched;
//! - caps the bytes of a request header as they are read (`server.max_header_bytes`): Pingora
//!   buffers up to 1 MiB of an unfinished header per connection, so 300 clients sending 1 MB
//!   headers held 300 MB before anything looked at them. Past the cap the guard stops handing
//!   the bytes to Pingora, answers 431 itself, and closes after a short lingering drain (so the
//!   client, still sending, reads the answer instead of a reset).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::listeners::tls::Acceptor;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType,
};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::first_bytes;
use crate::proxy::SharedState;
use crate::telemetry::Connections;

/// Holds a listener's place for one open connection.
struct Open(&'static Connections);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.closed();
    }
}

/// A Pingora app (`inner`: the relay's HTTP proxy, the admin or the metrics app) behind the
/// guard. With `tls`, the guard makes the TLS handshake itself (the listener is plain TCP), so
/// the handshake is counted, bounded by the header deadline and failed quietly: Pingora's own
/// listener gives every handshake a fixed 60 s and logs an ERROR line per failure.
pub struct Guarded<A> {
    pub inner: Arc<A>,
    pub state: SharedState,
    pub tls: Option<Arc<Acceptor>>,
    pub connections: &'static Connections,
}

impl<A> Guarded<A> {
    /// `inner` on a plain listener counted in `connections`.
    pub fn plain(inner: A, state: SharedState, connections: &'static Connections) -> Guarded<A> {
        Guarded {
            inner: Arc::new(inner),
            state,
            tls: None,
            connections,
        }
    }
}

/// A connection's limits, read from the config once, when it is accepted.
#[derive(Clone, Copy)]
struct Limits {
    header_timeout: Duration,
    idle: Duration,
    max_header: usize,
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Guarded<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let accepted = Instant::now();
        let (max, limits) = {
            let state = self.state.current.load();
            let server = &state.config.server;
            let limits = Limits {
                header_timeout: server.client_header_timeout,
                idle: server.idle_timeout,
                max_header: server.max_header_bytes,
            };
            (server.max_connections, limits)
        };
        let open = self.connections.opened();
        let place = Open(self.connections);
        if max > 0 && open > max {
            log::debug!("client connection refused: {max} open (server.max_connections)");
            return None;
        }
        // Pingora's task for a connection is sized for the TLS handshake its own listener would
        // make (8.8 KiB; this listener is plain TCP, so the space is never used) and held for
        // the connection's life. The connection moves to a task of its own, sized for what the
        // guard holds while it waits, and Pingora's task ends here: a silent connection costs
        // about 4 KiB instead of 12 (issue 26).
        let mut serve = Box::pin(self.clone().serve(
            stream,
            shutdown.clone(),
            place,
            accepted + limits.header_timeout,
            limits,
        ));
        // Its first step is taken here, as it was in Pingora's task: a connection the client
        // closed already is uncounted before the accept loop counts the next ones.
        if futures::poll!(serve.as_mut()).is_pending() {
            tokio::spawn(serve);
        }
        None
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

impl<A: ServerApp + Send + Sync + 'static> Guarded<A> {
    /// One connection, from its first byte: the handshake and the first request header by
    /// `deadline`, then its requests one after another, as Pingora's listener would loop.
    async fn serve(
        self: Arc<Self>,
        stream: Stream,
        shutdown: ShutdownWatch,
        _place: Open,
        deadline: Instant,
        limits: Limits,
    ) {
        // Nothing is built for the connection until its client sends something
        // (first_bytes.rs): the wait is part of this future, which therefore holds no large
        // future inline.
        let (stream, first) = match &self.tls {
            Some(acceptor) => match self.handshake(acceptor, stream, deadline).await {
                Some(tls) => (tls, None),
                None => return,
            },
            None => {
                let mut stream = stream;
                match tokio::time::timeout_at(deadline, first_bytes::first_byte(&mut stream)).await
                {
                    Ok(Some(first)) => (stream, Some(first)),
                    _ => return,
                }
            }
        };
        let rearm = Arc::new(AtomicU64::new(0));
        let mut stream: Stream = Box::new(HeaderDeadline::new(
            stream,
            deadline,
            limits.max_header,
            rearm.clone(),
            first,
        ));
        // The next header on a reused connection has the idle time and the header time.
        let within = (limits.idle + limits.header_timeout).as_millis().max(1);
        let within = u64::try_from(within).unwrap_or(u64::MAX);
        while let Some(reused) = self.inner.process_new(stream, &shutdown).await {
            stream = reused;
            rearm.store(within, Ordering::Relaxed);
        }
    }
}

impl<A> Guarded<A> {
    /// The TLS handshake on the accepted TCP stream, by `deadline`; `None` (counted, and
    /// logged at most once a minute) when it fails or is late.
    async fn handshake(
        &self,
        acceptor: &Acceptor,
        stream: Stream,
        deadline: Instant,
    ) -> Option<Stream> {
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().map(|a| a.to_string()))
            .unwrap_or_default();
        // The listener is plain TCP, so what it hands over is Pingora's L4 stream.
        let tcp = stream
            .into_any()
            .downcast::<pingora::protocols::l4::stream::Stream>()
            .ok();
        let failure = match tcp {
            None => "the accepted connection is not a TCP stream".to_owned(),
            Some(mut tcp) => {
                match tokio::time::timeout_at(deadline, first_bytes::first_tls_record(&mut tcp))
                    .await
                {
                    Ok(Ok(())) => {
                        // The client is talking: now rustls's connection and the handshake's
                        // future (a TLS stream's size: boxed, and freed once it is done).
                        let handshake = Box::pin(acceptor.tls_handshake(*tcp));
                        match tokio::time::timeout_at(deadline, handshake).await {
                            Ok(Ok(tls)) => return Some(Box::new(tls)),
                            Ok(Err(e)) => e.to_string(),
                            Err(_) => late_handshake(),
                        }
                    }
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => late_handshake(),
                }
            }
        };
        self.connections.handshake_failed(|left_out| {
            let more = if left_out > 0 {
                format!(" ({left_out} more failed since the last such line)")
            } else {
                String::new()
            };
            log::warn!("TLS handshake from {peer} failed: {failure}{more}; at most one such line a minute, all counted in cc_relay_tls_handshake_failures_total");
        });
        None
    }
}

fn late_handshake() -> String {
    "not finished within server.client_header_timeout_ms".to_owned()
}

/// The HTTP/2 connection preface (RFC 9113 §3.4), which Pingora peeks for on an h2c listener.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long a connection refused for its header size keeps reading (and dropping) what the
/// client still sends, and how much of it, before it closes: closing with unread data would
/// reset the connection and the client could lose the 431 before reading it.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 2 << 20;

/// A client stream whose next request header must be complete before a deadline, and no
/// larger than a cap.
#[derive(Debug)]
pub struct HeaderDeadline {
    inner: Stream,
    /// Armed while a header is being read.
    deadline: Option<Pin<Box<Sleep>>>,
    /// How many bytes of `\r\n\r\n` the data read so far ends with.
    matched: u8,
    /// Bytes of the header being read so far, and the most it may have.
    header_bytes: usize,
    max_header_bytes: usize,
    /// Set once the header passed its cap: the guard's own answer, being sent.
    refusal: Option<Refusal>,
    /// Set (ms) by the guard when the connection is reused: arm again at the next read.
    rearm: Arc<AtomicU64>,
    /// Bytes read (and watched) to answer a peek, handed out before anything else is read:
    /// `peeked[peeked_from..peeked_len]`.
    peeked: [u8; H2_PREFACE.len()],
    peeked_from: u8,
    peeked_len: u8,
}

/// The 431 the guard sends itself, how much of it went out, then the lingering drain.
#[derive(Debug)]
struct Refusal {
    response: Vec<u8>,
    written: usize,
    flushed: bool,
    closed_write: bool,
    drained: usize,
    linger: Pin<Box<Sleep>>,
}

impl Refusal {
    fn new(limit: usize) -> Refusal {
        let body = crate::proxy::ApiError::HeaderTooLarge { limit }.body();
        let mut response = format!(
            "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        response.extend_from_slice(&body);
        Refusal {
            response,
            written: 0,
            flushed: false,
            closed_write: false,
            drained: 0,
            linger: Box::pin(tokio::time::sleep(LINGER)),
        }
    }
}

impl HeaderDeadline {
    fn new(
        inner: Stream,
        deadline: Instant,
        max_header_bytes: usize,
        rearm: Arc<AtomicU64>,
        first: Option<u8>,
    ) -> HeaderDeadline {
        let mut guarded = HeaderDeadline {
            inner,
            deadline: None,
            matched: 0,
            header_bytes: 0,
            max_header_bytes,
            refusal: None,
            rearm,
            peeked: [0; H2_PREFACE.len()],
            peeked_from: 0,
            peeked_len: 0,
        };
        guarded.arm(deadline);
        if let Some(byte) = first {
            // Read by the guard before the stream was wrapped: watched, and handed out first.
            // One byte is within any cap (server.max_header_bytes is at least 1,024).
            guarded.watch(&[byte]);
            guarded.peeked[0] = byte;
            guarded.peeked_len = 1;
        }
        guarded
    }

    fn arm(&mut self, deadline: Instant) {
        self.deadline = Some(Box::pin(tokio::time::sleep_until(deadline)));
        self.matched = 0;
        self.header_bytes = 0;
    }

    /// Follow `data` for the header's end (disarm there) and count the header's bytes in it;
    /// whether the header is still within its cap.
    fn watch(&mut self, data: &[u8]) -> bool {
        const END: &[u8; 4] = b"\r\n\r\n";
        for (i, &b) in data.iter().enumerate() {
            self.matched = if b == END[self.matched as usize] {
                self.matched + 1
            } else if b == b'\r' {
                1
            } else {
                0
            };
            if self.matched == 4 {
                self.deadline = None;
                self.matched = 0;
                self.header_bytes += i + 1;
                return self.header_bytes <= self.max_header_bytes;
            }
        }
        self.header_bytes += data.len();
        self.header_bytes <= self.max_header_bytes
    }

    /// Send the 431, close the writing side, drain what the client still sends for a while,
    /// then end the connection with an error (Pingora then drops it).
    fn poll_refusal(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let Some(r) = self.refusal.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let inner = &mut self.inner;
        while r.written < r.response.len() {
            match Pin::new(&mut *inner).poll_write(cx, &r.response[r.written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(too_large())),
                Poll::Ready(Ok(n)) => r.written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if !r.flushed {
            std::task::ready!(Pin::new(&mut *inner).poll_flush(cx))?;
            r.flushed = true;
        }
        if !r.closed_write {
            // A failed shutdown only means the client is gone already.
            let _ = std::task::ready!(Pin::new(&mut *inner).poll_shutdown(cx));
            r.closed_write = true;
        }
        let mut scratch = [0u8; 8192];
        while r.drained < LINGER_BYTES {
            let mut dropped = ReadBuf::new(&mut scratch);
            match Pin::new(&mut *inner).poll_read(cx, &mut dropped) {
                Poll::Ready(Ok(())) if !dropped.filled().is_empty() => {
                    r.drained += dropped.filled().len();
                }
                Poll::Ready(_) => break,
                Poll::Pending => {
                    if r.linger.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    break;
                }
            }
        }
        Poll::Ready(Err(too_large()))
    }
}

impl AsyncRead for HeaderDeadline {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.peeked_from < this.peeked_len {
            // Read and watched already, for a peek.
            let (from, len) = (this.peeked_from as usize, this.peeked_len as usize);
            let n = buf.remaining().min(len - from);
            buf.put_slice(&this.peeked[from..from + n]);
            this.peeked_from += n as u8;
            if this.peeked_from == this.peeked_len {
                (this.peeked_from, this.peeked_len) = (0, 0);
            }
            return Poll::Ready(Ok(()));
        }
        this.poll_read_watched(cx, buf)
    }
}

impl HeaderDeadline {
    /// A read from the client, watched for the header's end, size and deadline.
    fn poll_read_watched(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self;
        if this.refusal.is_some() {
            return this.poll_refusal(cx);
        }
        let rearm = this.rearm.swap(0, Ordering::Relaxed);
        if rearm > 0 {
            this.arm(Instant::now() + Duration::from_millis(rearm));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if this.deadline.is_some() && !this.watch(&buf.filled()[before..]) {
                    // Pingora never sees this read: the guard answers 431 itself.
                    buf.set_filled(before);
                    log::debug!(
                        "client request header past {} bytes (server.max_header_bytes): 431",
                        this.max_header_bytes
                    );
                    this.refusal = Some(Refusal::new(this.max_header_bytes));
                    return this.poll_refusal(cx);
                }
                // A client that drips its header keeps this read path busy: check here too.
                if this.deadline.as_ref().is_some_and(|d| d.is_elapsed()) {
                    return Poll::Ready(Err(late()));
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let late_now = this
                    .deadline
                    .as_mut()
                    .is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if late_now {
                    Poll::Ready(Err(late()))
                } else {
                    Poll::Pending
                }
            }
            other => other,
        }
    }
}

fn too_large() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "the request header is larger than server.max_header_bytes (answered 431)",
    )
}

fn late() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "the request header did not arrive in time (server.client_header_timeout_ms)",
    )
}

impl AsyncWrite for HeaderDeadline {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for HeaderDeadline {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

impl UniqueID for HeaderDeadline {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeaderDeadline {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<pingora::protocols::ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeaderDeadline {
    fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeaderDeadline {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: pingora::protocols::raw_connect::ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for HeaderDeadline {
    fn get_socket_digest(&self) -> Option<Arc<pingora::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: pingora::protocols::SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

/// Pingora peeks at a new connection on an h2c listener for the HTTP/2 preface. The peek reads
/// through the guard (so the header deadline and size cap hold while the client says nothing)
/// and keeps what it read for the reads that follow. It answers as soon as the bytes differ
/// from the preface: an HTTP/1 request shorter than the preface (`GET / HTTP/1.0` and its blank
/// line) is not left waiting for bytes that will never come.
#[async_trait]
impl Peek for HeaderDeadline {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        // Pingora peeks for the preface only; a longer peek gets the preface's length.
        let want = buf.len().min(self.peeked.len());
        // The preface holds a blank line at byte 18, where the header watch would disarm:
        // the rest of the preface is still due by the same deadline.
        let until = self.deadline.as_ref().map(|d| d.deadline());
        loop {
            let have = &self.peeked[self.peeked_from as usize..self.peeked_len as usize];
            let not_preface = !H2_PREFACE.starts_with(have);
            if have.len() >= want || not_preface {
                let n = have.len().min(want);
                buf[..n].copy_from_slice(&have[..n]);
                buf[n..].fill(0);
                return Ok(true);
            }
            if let (None, Some(until)) = (&self.deadline, until) {
                self.arm(until);
            }
            // Unread peeked bytes move to the front; the read appends after them.
            let (from, len) = (self.peeked_from as usize, self.peeked_len as usize);
            self.peeked.copy_within(from..len, 0);
            (self.peeked_from, self.peeked_len) = (0, (len - from) as u8);
            let mut more = [0u8; H2_PREFACE.len()];
            let mut read = ReadBuf::new(&mut more[..want - (len - from)]);
            std::future::poll_fn(|cx| self.poll_read_watched(cx, &mut read)).await?;
            let n = read.filled().len();
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the client closed the connection before a request",
                ));
            }
            let at = self.peeked_len as usize;
            self.peeked[at..at + n].copy_from_slice(&more[..n]);
            self.peeked_len += n as u8;
        }
    }
}
