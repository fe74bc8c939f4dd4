//! The client listener's guard around Pingora's HTTP app. Pingora bounds the reading of a
//! request header only per read (60 s, or the keep-alive timeout on a reused connection) and at
//! 1 MiB, and accepts every connection: a client dripping its header a byte a minute holds a
//! connection and its buffer for ever, and enough of them lock everyone out. The guard:
//! - counts open client connections (`server.max_connections`): past the cap a new
//!   connection is closed at once, before a byte of it is read;
//! - gives each request header a deadline (`server.client_header_timeout_ms`; on a reused
//!   connection the idle timeout comes on top): a connection whose header is not complete by
//!   then is closed. The stream is watched until the header's blank line (`\r\n\r\n`, which the
//!   HTTP/2 preface also ends with), then passed through untouched.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType,
};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::proxy::SharedState;

/// Client connections open now.
static OPEN: AtomicUsize = AtomicUsize::new(0);

/// Client connections open now (for `/status`).
pub fn open_connections() -> usize {
    OPEN.load(Ordering::Relaxed)
}

struct Open;

impl Drop for Open {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Pingora's HTTP app (`inner`) behind the guard.
pub struct Guarded<A> {
    pub inner: Arc<A>,
    pub state: SharedState,
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Guarded<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let (max, header_timeout, idle) = {
            let state = self.state.current.load();
            let server = &state.config.server;
            (
                server.max_connections,
                server.client_header_timeout,
                server.idle_timeout,
            )
        };
        let open = OPEN.fetch_add(1, Ordering::Relaxed) + 1;
        let _open = Open;
        if max > 0 && open > max {
            log::debug!("client connection refused: {max} open (server.max_connections)");
            return None;
        }
        let rearm = Arc::new(AtomicU64::new(0));
        let mut stream: Stream =
            Box::new(HeaderDeadline::new(stream, header_timeout, rearm.clone()));
        // This connection's requests, one after another, as Pingora's listener would loop; the
        // next header has the idle time and the header time.
        loop {
            stream = self.inner.process_new(stream, shutdown).await?;
            let within = (idle + header_timeout).as_millis().max(1);
            rearm.store(u64::try_from(within).unwrap_or(u64::MAX), Ordering::Relaxed);
        }
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

/// A client stream whose next request header must be complete before a deadline.
#[derive(Debug)]
pub struct HeaderDeadline {
    inner: Stream,
    /// Armed while a header is being read.
    deadline: Option<Pin<Box<Sleep>>>,
    /// How many bytes of `\r\n\r\n` the data read so far ends with.
    matched: u8,
    /// Set (ms) by the guard when the connection is reused: arm again at the next read.
    rearm: Arc<AtomicU64>,
}

impl HeaderDeadline {
    fn new(inner: Stream, within: Duration, rearm: Arc<AtomicU64>) -> HeaderDeadline {
        let mut guarded = HeaderDeadline {
            inner,
            deadline: None,
            matched: 0,
            rearm,
        };
        guarded.arm(within);
        guarded
    }

    fn arm(&mut self, within: Duration) {
        self.deadline = Some(Box::pin(tokio::time::sleep_until(Instant::now() + within)));
        self.matched = 0;
    }

    /// Follow `data` for the header's end; disarm there.
    fn watch(&mut self, data: &[u8]) {
        const END: &[u8; 4] = b"\r\n\r\n";
        for &b in data {
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
                return;
            }
        }
    }
}

impl AsyncRead for HeaderDeadline {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let rearm = this.rearm.swap(0, Ordering::Relaxed);
        if rearm > 0 {
            this.arm(Duration::from_millis(rearm));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if this.deadline.is_some() {
                    this.watch(&buf.filled()[before..]);
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

#[async_trait]
impl Peek for HeaderDeadline {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}
