//! Resending a request body on every attempt.
//!
//! Why this exists: Pingora sends an attempt's body from the session's retry buffer (capped at
//! 64 KiB) followed by what the client has not sent yet. The relay must read the whole body
//! before choosing a provider and key (routing by model, rewriting the model, estimating
//! tokens), and Claude Code bodies are 76 KB and up — so past 64 KiB, Pingora alone would send
//! the headers of a retry with no body, and a rewritten body would never reach the upstream.
//!
//! `BodyReplaySession` wraps the real HTTP/1 session and passes everything through except the
//! request body: it reports the body as fully read and offers the relay's own buffer as the
//! retry buffer, so Pingora sends exactly that buffer (rewritten, any size) once per attempt
//! through `request_body_filter`. `restore` puts the real session back before Pingora finishes
//! the request, so the client connection stays reusable (a custom session is never kept alive).

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::custom::server::Session as SessionCustom;
use pingora::protocols::http::custom::CustomMessageWrite;
use pingora::protocols::http::{HttpTask, ServerSession};
use pingora::protocols::l4::socket::SocketAddr;
use pingora::protocols::Digest;
use pingora::Result;

type CustomMessageReader =
    Box<dyn futures::Stream<Item = Result<Bytes>> + Unpin + Send + Sync + 'static>;

pub struct BodyReplaySession {
    inner: ServerSession,
    body: Bytes,
}

impl BodyReplaySession {
    /// Wrap the downstream session of `session` so every attempt sends `body`.
    pub fn install(session: &mut pingora::proxy::Session, body: Bytes) {
        let placeholder = ServerSession::new_custom(Box::new(Detached));
        let inner = std::mem::replace(&mut *session.downstream_session, placeholder);
        *session.downstream_session =
            ServerSession::new_custom(Box::new(BodyReplaySession { inner, body }));
    }

    /// Put the real session back (idempotent). Returns whether a wrapper was removed.
    pub fn restore(session: &mut pingora::proxy::Session) -> bool {
        let Some(custom) = session.downstream_session.as_custom_mut() else {
            return false;
        };
        let placeholder: Box<dyn SessionCustom> = Box::new(Detached);
        let boxed = std::mem::replace(custom, placeholder);
        // SAFETY: the only custom downstream sessions in this process are the ones `install`
        // creates (the relay serves plain HTTP/1 and HTTP/2 listeners), so the trait object's
        // concrete type is `BodyReplaySession`. `Box::from_raw` takes back ownership of the
        // allocation `Box::into_raw` released, with the layout of that concrete type.
        let wrapper: Box<BodyReplaySession> =
            unsafe { Box::from_raw(Box::into_raw(boxed) as *mut BodyReplaySession) };
        *session.downstream_session = wrapper.inner;
        true
    }
}

#[async_trait]
impl SessionCustom for BodyReplaySession {
    fn req_header(&self) -> &RequestHeader {
        self.inner.req_header()
    }
    fn req_header_mut(&mut self) -> &mut RequestHeader {
        self.inner.req_header_mut()
    }
    async fn read_body_bytes(&mut self) -> Result<Option<Bytes>> {
        Ok(None)
    }
    async fn drain_request_body(&mut self) -> Result<()> {
        Ok(())
    }
    async fn write_response_header(&mut self, resp: Box<ResponseHeader>, _end: bool) -> Result<()> {
        self.inner.write_response_header(resp).await
    }
    async fn write_response_header_ref(&mut self, resp: &ResponseHeader, _end: bool) -> Result<()> {
        self.inner.write_response_header_ref(resp).await
    }
    async fn write_body(&mut self, data: Bytes, end: bool) -> Result<()> {
        self.inner.write_response_body(data, end).await
    }
    async fn write_trailers(&mut self, trailers: http::HeaderMap) -> Result<()> {
        self.inner.write_response_trailers(trailers).await
    }
    async fn response_duplex_vec(&mut self, tasks: Vec<HttpTask>) -> Result<bool> {
        self.inner.response_duplex_vec(tasks).await
    }
    fn proxy_tasks_enabled(&self) -> bool {
        self.inner.supports_proxy_task_api()
    }
    fn set_proxy_tasks_enabled(&mut self, enabled: bool) {
        self.inner.set_proxy_tasks_enabled(enabled)
    }
    fn send_proxy_task(&mut self, task: HttpTask) {
        self.inner.send_downstream_proxy_task(task)
    }
    fn has_pending_proxy_tasks(&self) -> bool {
        self.inner.has_pending_downstream_proxy_tasks()
    }
    async fn write_proxy_tasks(&mut self) -> Result<bool> {
        self.inner.write_downstream_proxy_tasks().await
    }
    fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.inner.set_read_timeout(timeout)
    }
    fn get_read_timeout(&self) -> Option<Duration> {
        self.inner.get_read_timeout()
    }
    fn set_write_timeout(&mut self, timeout: Option<Duration>) {
        self.inner.set_write_timeout(timeout)
    }
    fn get_write_timeout(&self) -> Option<Duration> {
        self.inner.get_write_timeout()
    }
    fn set_total_drain_timeout(&mut self, timeout: Option<Duration>) {
        self.inner.set_total_drain_timeout(timeout)
    }
    fn get_total_drain_timeout(&self) -> Option<Duration> {
        self.inner.get_total_drain_timeout()
    }
    fn request_summary(&self) -> String {
        self.inner.request_summary()
    }
    fn response_written(&self) -> Option<&ResponseHeader> {
        self.inner.response_written()
    }
    async fn shutdown(&mut self, _code: u32, _ctx: &str) {
        self.inner.shutdown().await
    }
    fn is_body_done(&mut self) -> bool {
        true
    }
    async fn finish(&mut self) -> Result<()> {
        self.inner.finish_body().await
    }
    fn is_body_empty(&mut self) -> bool {
        self.body.is_empty()
    }
    async fn read_body_or_idle(&mut self, _no_body_expected: bool) -> Result<Option<Bytes>> {
        // The body was read whole already: from here on, only watch for the client leaving.
        self.inner.read_body_or_idle(true).await
    }
    fn body_bytes_sent(&self) -> usize {
        self.inner.body_bytes_sent()
    }
    fn body_bytes_read(&self) -> usize {
        self.inner.body_bytes_read()
    }
    fn digest(&self) -> Option<&Digest> {
        self.inner.digest()
    }
    fn digest_mut(&mut self) -> Option<&mut Digest> {
        self.inner.digest_mut()
    }
    fn client_addr(&self) -> Option<&SocketAddr> {
        self.inner.client_addr()
    }
    fn server_addr(&self) -> Option<&SocketAddr> {
        self.inner.server_addr()
    }
    fn pseudo_raw_h1_request_header(&self) -> Bytes {
        self.inner.to_h1_raw()
    }
    fn enable_retry_buffering(&mut self) {}
    fn retry_buffer_truncated(&self) -> bool {
        false
    }
    fn get_retry_buffer(&self) -> Option<Bytes> {
        Some(self.body.clone())
    }
    async fn finish_custom(&mut self) -> Result<()> {
        Ok(())
    }
    fn take_custom_message_reader(&mut self) -> Option<CustomMessageReader> {
        None
    }
    fn restore_custom_message_reader(&mut self, _reader: CustomMessageReader) -> Result<()> {
        Ok(())
    }
    fn take_custom_message_writer(&mut self) -> Option<Box<dyn CustomMessageWrite>> {
        None
    }
    fn restore_custom_message_writer(
        &mut self,
        _writer: Box<dyn CustomMessageWrite>,
    ) -> Result<()> {
        Ok(())
    }
}

/// Stands in for the session for the instant it is moved between the wrapper and Pingora's
/// slot; never used for I/O.
struct Detached;

#[async_trait]
impl SessionCustom for Detached {
    fn req_header(&self) -> &RequestHeader {
        unreachable!("detached placeholder session is never read")
    }
    fn req_header_mut(&mut self) -> &mut RequestHeader {
        unreachable!("detached placeholder session is never read")
    }
    async fn read_body_bytes(&mut self) -> Result<Option<Bytes>> {
        Ok(None)
    }
    async fn drain_request_body(&mut self) -> Result<()> {
        Ok(())
    }
    async fn write_response_header(&mut self, _: Box<ResponseHeader>, _: bool) -> Result<()> {
        Ok(())
    }
    async fn write_response_header_ref(&mut self, _: &ResponseHeader, _: bool) -> Result<()> {
        Ok(())
    }
    async fn write_body(&mut self, _: Bytes, _: bool) -> Result<()> {
        Ok(())
    }
    async fn write_trailers(&mut self, _: http::HeaderMap) -> Result<()> {
        Ok(())
    }
    async fn response_duplex_vec(&mut self, _: Vec<HttpTask>) -> Result<bool> {
        Ok(true)
    }
    fn set_read_timeout(&mut self, _: Option<Duration>) {}
    fn get_read_timeout(&self) -> Option<Duration> {
        None
    }
    fn set_write_timeout(&mut self, _: Option<Duration>) {}
    fn get_write_timeout(&self) -> Option<Duration> {
        None
    }
    fn set_total_drain_timeout(&mut self, _: Option<Duration>) {}
    fn get_total_drain_timeout(&self) -> Option<Duration> {
        None
    }
    fn request_summary(&self) -> String {
        String::new()
    }
    fn response_written(&self) -> Option<&ResponseHeader> {
        None
    }
    async fn shutdown(&mut self, _: u32, _: &str) {}
    fn is_body_done(&mut self) -> bool {
        true
    }
    async fn finish(&mut self) -> Result<()> {
        Ok(())
    }
    fn is_body_empty(&mut self) -> bool {
        true
    }
    async fn read_body_or_idle(&mut self, _: bool) -> Result<Option<Bytes>> {
        Ok(None)
    }
    fn body_bytes_sent(&self) -> usize {
        0
    }
    fn body_bytes_read(&self) -> usize {
        0
    }
    fn digest(&self) -> Option<&Digest> {
        None
    }
    fn digest_mut(&mut self) -> Option<&mut Digest> {
        None
    }
    fn client_addr(&self) -> Option<&SocketAddr> {
        None
    }
    fn server_addr(&self) -> Option<&SocketAddr> {
        None
    }
    fn pseudo_raw_h1_request_header(&self) -> Bytes {
        Bytes::new()
    }
    fn enable_retry_buffering(&mut self) {}
    fn retry_buffer_truncated(&self) -> bool {
        false
    }
    fn get_retry_buffer(&self) -> Option<Bytes> {
        None
    }
    async fn finish_custom(&mut self) -> Result<()> {
        Ok(())
    }
    fn take_custom_message_reader(&mut self) -> Option<CustomMessageReader> {
        None
    }
    fn restore_custom_message_reader(&mut self, _: CustomMessageReader) -> Result<()> {
        Ok(())
    }
    fn take_custom_message_writer(&mut self) -> Option<Box<dyn CustomMessageWrite>> {
        None
    }
    fn restore_custom_message_writer(&mut self, _: Box<dyn CustomMessageWrite>) -> Result<()> {
        Ok(())
    }
}
