//! Per-request state carried through Pingora's phases.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::pool::{Demand, Reservation, Settlement};
use crate::usage::{JsonUsageScanner, SseUsageParser, Usage};

use super::auth::RelayCredential;
use super::errors::ApiError;
use super::local::Route;
use super::state::{ProviderRuntime, RuntimeState};

/// Holds one slot of `server.max_concurrent` for the life of a request.
pub struct ConcurrencySlot(Arc<AtomicUsize>);

impl ConcurrencySlot {
    /// Take a slot, or `None` when `limit` requests are already in flight.
    pub fn acquire(counter: &Arc<AtomicUsize>, limit: usize) -> Option<ConcurrencySlot> {
        let prev = counter.fetch_add(1, Ordering::AcqRel);
        if limit > 0 && prev >= limit {
            counter.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(ConcurrencySlot(counter.clone()))
    }
}

impl Drop for ConcurrencySlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Where the response's token usage is read from.
pub enum UsageTracker {
    Off,
    Sse(SseUsageParser),
    Json(JsonUsageScanner),
}

impl UsageTracker {
    pub fn feed(&mut self, chunk: &[u8]) {
        match self {
            UsageTracker::Off => {}
            UsageTracker::Sse(p) => p.feed(chunk),
            UsageTracker::Json(s) => s.feed(chunk),
        }
    }

    pub fn usage(&self) -> Option<Usage> {
        match self {
            UsageTracker::Off => None,
            UsageTracker::Sse(p) => Some(p.usage()),
            UsageTracker::Json(s) => s.finish(),
        }
    }

    /// A stream that began but has not reached `message_stop`.
    pub fn is_unfinished_stream(&self) -> bool {
        matches!(self, UsageTracker::Sse(p) if !p.message_stopped())
    }
}

pub struct RequestCtx {
    pub started: Instant,
    pub request_id: String,
    pub route: Route,
    /// The runtime state this request started with; a reload does not change it mid-request.
    pub state: Option<Arc<RuntimeState>>,
    pub provider: usize,
    pub credential: RelayCredential,
    pub demand: Demand,
    pub body_len: usize,
    /// Attempts made so far (incremented when an upstream is chosen for one).
    pub attempt: u32,
    /// Key indexes already used by this request; a retry never picks them again.
    pub tried: Vec<usize>,
    pub reservation: Option<Reservation>,
    /// Set when the relay itself raised the error that ends an attempt, to retry it.
    pub retry_requested: bool,
    /// An error the relay will answer in `fail_to_proxy`.
    pub local_error: Option<ApiError>,
    pub upstream_status: u16,
    pub usage: UsageTracker,
    pub replay_installed: bool,
    pub slot: Option<ConcurrencySlot>,
}

impl RequestCtx {
    pub fn new() -> Self {
        RequestCtx {
            started: Instant::now(),
            request_id: String::new(),
            route: Route::Unknown,
            state: None,
            provider: 0,
            credential: RelayCredential::NotRequired,
            demand: Demand::default(),
            body_len: 0,
            attempt: 0,
            tried: Vec::new(),
            reservation: None,
            retry_requested: false,
            local_error: None,
            upstream_status: 0,
            usage: UsageTracker::Off,
            replay_installed: false,
            slot: None,
        }
    }

    pub fn provider(&self) -> Option<&ProviderRuntime> {
        self.state.as_ref().map(|s| &s.providers[self.provider])
    }

    pub fn provider_name(&self) -> &str {
        self.provider().map_or("-", |p| p.name())
    }

    /// The request never got an answer the key must pay for: give the reservation back.
    pub fn release_reservation(&mut self) {
        if let Some(r) = self.reservation.take() {
            r.release();
        }
    }

    /// The response is over: charge the key what was really used.
    pub fn settle_reservation(&mut self) {
        let Some(r) = self.reservation.take() else {
            return;
        };
        let answered = (200..300).contains(&self.upstream_status);
        match (answered, self.route, self.usage.usage()) {
            (true, Route::Messages, Some(u)) => r.settle(u.settlement(self.demand.max_tokens)),
            // Answered but no usage could be read (e.g. the stream broke before
            // message_start): charge the estimate the admission made.
            (true, Route::Messages, None) => r.settle(Settlement {
                input_tokens: self.demand.input_tokens,
                output_tokens: 0,
            }),
            _ => r.release(),
        }
    }
}

impl Default for RequestCtx {
    fn default() -> Self {
        Self::new()
    }
}
