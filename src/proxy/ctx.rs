//! Per-request state carried through Pingora's phases (per-attempt state is in `attempt`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::admin::metrics::{KeyHandles, UNROUTED};
use crate::clients::quota::{ClientSlot, QuotaCharge};
use crate::clients::ClientRuntime;
use crate::pool::{Demand, Settlement};
use crate::routing::Stick;
use crate::usage::{JsonUsageScanner, SseUsageParser, Usage};

use super::attempt::Attempt;
use super::auth::RelayCredential;
use super::local::Endpoint;
use super::request::RequestFacts;
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

/// What one client request carries through Pingora's phases. What belongs to one try at an
/// upstream is in [`Attempt`]; a request has as many as it takes (`routing.max_attempts`).
pub struct RequestCtx {
    pub started: Instant,
    pub request_id: String,
    pub endpoint: Endpoint,
    /// The runtime state this request started with; a reload does not change it mid-request.
    pub state: Option<Arc<RuntimeState>>,
    pub credential: RelayCredential,
    /// Who sent it (`server.trusted_proxies` decide whether `X-Forwarded-For` is believed).
    pub client_addr: Option<super::auth::ClientAddr>,
    /// Whether its credential may read the operator's endpoints (`/status`, `/metrics`,
    /// `/v1/providers`).
    pub operator: bool,
    /// Its client (index into the state's `clients`), when it authenticated as one; the slot
    /// of the client's `max_concurrent` it holds, and what it took from the client's quotas.
    pub client: Option<usize>,
    pub client_slot: Option<ClientSlot>,
    pub client_charge: Option<QuotaCharge>,
    /// The body as the client sent it (validated), and what it says.
    pub body: Bytes,
    /// The body's share of `server.max_buffered_body_bytes`, given back when the request ends.
    pub body_budget: super::body_budget::BodyBudget,
    pub facts: RequestFacts,
    pub demand: Demand,
    /// The candidate providers, in the order attempts try them (`routing.strategy`).
    pub plan: Vec<usize>,
    /// The position in `plan` of the provider the next attempt goes to.
    pub plan_pos: usize,
    /// The provider of the current (or last) attempt (index into `state.providers`).
    pub provider_index: usize,
    /// The session's identity (`x-claude-code-session-id`, else `metadata.user_id`).
    pub session: Option<Box<str>>,
    /// Where the session stuck before this request, if anywhere.
    pub sticky: Option<Stick>,
    /// Attempts started so far (the current one included).
    pub attempts: u32,
    /// The attempt in progress, if any.
    pub attempt: Option<Attempt>,
    /// Keys already used by this request, as (provider index, key index); a retry never picks
    /// them again.
    pub tried: Vec<(usize, usize)>,
    pub upstream_status: u16,
    /// The status of an answer the relay gave itself (an error), for the metrics.
    pub local_status: Option<u16>,
    /// Metrics timestamps: the request body read (intake done), the last attempt's upstream
    /// request sent, its upstream response header received; and the time to first byte.
    pub intake_done_at: Option<Instant>,
    pub upstream_sent_at: Option<Instant>,
    pub upstream_header_at: Option<Instant>,
    pub first_byte: Option<std::time::Duration>,
    pub usage: UsageTracker,
    /// The provider kind's rewrite of the response body, when its wire format needs one.
    pub adapter: Option<Box<dyn crate::providers::ResponseAdapter>>,
    pub replay_installed: bool,
    pub slot: Option<ConcurrencySlot>,
    /// Its place among the requests not settled yet. Last, so it is dropped last: once it is
    /// given back, every slot and share the request held is too.
    pub unsettled: super::unsettled::Unsettled,
}

impl RequestCtx {
    pub fn new() -> Self {
        RequestCtx {
            started: Instant::now(),
            request_id: String::new(),
            endpoint: Endpoint::Unknown,
            state: None,
            credential: RelayCredential::NotRequired,
            client_addr: None,
            operator: false,
            client: None,
            client_slot: None,
            client_charge: None,
            body: Bytes::new(),
            body_budget: Default::default(),
            facts: RequestFacts::default(),
            demand: Demand::default(),
            plan: Vec::new(),
            plan_pos: 0,
            provider_index: 0,
            session: None,
            sticky: None,
            attempts: 0,
            attempt: None,
            tried: Vec::new(),
            upstream_status: 0,
            local_status: None,
            intake_done_at: None,
            upstream_sent_at: None,
            upstream_header_at: None,
            first_byte: None,
            adapter: None,
            usage: UsageTracker::Off,
            replay_installed: false,
            slot: None,
            unsettled: Default::default(),
        }
    }

    /// Its client, when it authenticated as one.
    pub fn client(&self) -> Option<&ClientRuntime> {
        let (state, index) = (self.state.as_ref()?, self.client?);
        Some(state.clients.get(index))
    }

    /// The client's name for the access log (`-` for none).
    pub fn client_name(&self) -> &str {
        self.client().map_or("-", ClientRuntime::name)
    }

    /// What the request used, by the response's `usage` (when it was answered with one).
    fn used(&self) -> Option<Settlement> {
        let answered = (200..300).contains(&self.upstream_status);
        match (answered, self.endpoint, self.usage.usage()) {
            (true, Endpoint::Messages, Some(u)) => Some(u.settlement(self.demand.max_tokens)),
            // Answered but no usage could be read (e.g. the stream broke before
            // message_start): the estimate the admission made.
            (true, Endpoint::Messages, None) => Some(Settlement {
                input_tokens: self.demand.input_tokens,
                output_tokens: 0,
            }),
            _ => None,
        }
    }

    /// The request is over: charge its client's quotas and budgets what it used (nothing when
    /// it never reached an upstream), and count it in the client's metrics.
    pub fn settle_client(&mut self) {
        let Some(state) = self.state.clone() else {
            return;
        };
        let Some(client) = self.client.map(|i| state.clients.get(i)) else {
            return;
        };
        if let Some(charge) = self.client_charge.take() {
            if self.attempts == 0 {
                client.quota.release(charge);
            } else {
                let used = self.used().unwrap_or_default();
                client
                    .quota
                    .settle(charge, used, crate::pool::clock_ns(Instant::now()));
            }
        }
        let usage = self.usage.usage();
        if let (Some(budget), Some(u)) = (&client.budget, &usage) {
            let tokens = u.budget_tokens(self.demand.max_tokens, self.body.len() as u64);
            budget.add(tokens, &crate::clients::budget::Calendar::now());
        }
        if self.metrics_on() {
            let handles = client.metrics.get(client.name());
            if let Some(status) = self
                .local_status
                .or(Some(self.upstream_status).filter(|s| *s > 0))
            {
                handles.request(status);
            }
            if let Some(u) = &usage {
                handles.tokens(u);
            }
        }
    }

    /// The provider of the current (or last) attempt.
    pub fn provider(&self) -> Option<&ProviderRuntime> {
        self.state
            .as_ref()
            .map(|s| &s.providers[self.provider_index])
    }

    pub fn provider_name(&self) -> &str {
        self.provider().map_or("-", |p| p.name())
    }

    /// Whether `metrics.enabled` (the request then records its metrics).
    pub fn metrics_on(&self) -> bool {
        self.state
            .as_ref()
            .is_some_and(|s| s.config.metrics.enabled)
    }

    /// The metric handles for the attempt's provider and key (`-` before a provider).
    pub fn metric_handles(&self) -> &KeyHandles {
        let (Some(provider), Some(attempt)) = (self.provider(), &self.attempt) else {
            return UNROUTED.get("-", "-");
        };
        match attempt.key_index() {
            Some(k) => {
                let id = provider.pool.as_ref().map_or("-", |p| p.keys()[k].id());
                provider.key_metrics[k].get(provider.name(), id)
            }
            None => provider.passthrough_metrics.get(provider.name(), "-"),
        }
    }

    /// `routing.max_attempts` of the config this request started with.
    pub fn max_attempts(&self) -> u32 {
        self.state
            .as_ref()
            .map_or(1, |s| s.config.routing.max_attempts)
    }

    /// Key indexes of `provider` this request already used.
    pub fn tried_keys(&self, provider: usize) -> impl Iterator<Item = usize> + '_ {
        self.tried
            .iter()
            .filter(move |(p, _)| *p == provider)
            .map(|&(_, k)| k)
    }

    /// The keys of `provider` (at `index`) this request must not be given: those it tried and
    /// those without a credential to send right now.
    pub fn skipped_keys(&self, index: usize, provider: &ProviderRuntime) -> Vec<usize> {
        let mut keys: Vec<usize> = self.tried_keys(index).collect();
        keys.extend(provider.uncredentialed());
        keys
    }

    /// The attempt got no answer the key must pay for: give its reservation back.
    pub fn release_reservation(&mut self) {
        if let Some(r) = self.attempt.as_mut().and_then(|a| a.reservation.take()) {
            r.release();
        }
    }

    /// The response is over: charge the key what was really used.
    pub fn settle_reservation(&mut self) {
        let Some(r) = self.attempt.as_mut().and_then(|a| a.reservation.take()) else {
            return;
        };
        match self.used() {
            Some(used) => r.settle(used),
            None => r.release(),
        }
    }
}

impl Default for RequestCtx {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The context lives inside Pingora's per-request future, which is allocated (and moved
    /// twice) for every request. Issue 15 measured it at 736 bytes against a 14.5 KB future
    /// (lever 6: boxing half of it would save ~800 bytes of memcpy, ~0.5% of the instructions
    /// per request; not done); this fails when it grows past 768 bytes, so growth is a decision.
    #[test]
    fn the_request_context_stays_small() {
        let size = std::mem::size_of::<RequestCtx>();
        assert!(size <= 768, "RequestCtx is {size} bytes");
    }
}
