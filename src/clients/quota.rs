//! A client's own limits per minute (`rpm_limit`, `itpm_limit`, `otpm_limit`) and its requests
//! in flight (`max_concurrent`): the pool's GCRA buckets, configured only (nothing is learned
//! from upstreams: the limits are the operator's), so a client's 429 is its own and its
//! `Retry-After` is when its own bucket admits the request.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::ClientConfig;
use crate::pool::{Bucket, Charge, Demand, OutputEstimate, Settlement};

/// One client's buckets and in-flight count; kept across reloads while the client keeps its
/// name (a reload does not hand out a fresh minute).
pub struct Quota {
    requests: Bucket,
    input: Bucket,
    output: Bucket,
    /// What its responses really produce, to reserve output tokens (as the pool does: Claude
    /// Code's `max_tokens` is far above what an answer uses).
    output_estimate: OutputEstimate,
    in_flight: AtomicU32,
}

/// Which of its limits refused a request, and for how long it will.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub limit: LimitKind,
    /// The limit's value.
    pub value: u64,
    pub retry_after: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitKind {
    Rpm,
    Itpm,
    Otpm,
    MaxConcurrent,
}

impl LimitKind {
    /// The config field, as the 429 names it.
    pub fn field(self) -> &'static str {
        match self {
            LimitKind::Rpm => "rpm_limit",
            LimitKind::Itpm => "itpm_limit",
            LimitKind::Otpm => "otpm_limit",
            LimitKind::MaxConcurrent => "max_concurrent",
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            LimitKind::Rpm => "requests per minute",
            LimitKind::Itpm => "input tokens per minute",
            LimitKind::Otpm => "output tokens per minute",
            LimitKind::MaxConcurrent => "requests in flight",
        }
    }
}

/// What one request took from its client's buckets, settled when it ends.
#[derive(Debug, Default)]
pub struct QuotaCharge {
    requests: Charge,
    input: Charge,
    output: Charge,
}

/// Holds one of the client's `max_concurrent` slots for the life of a request.
pub struct ClientSlot(Arc<Quota>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Quota {
    pub fn new(config: &ClientConfig) -> Quota {
        Quota {
            requests: Bucket::new(config.rpm_limit, true),
            input: Bucket::new(config.itpm_limit, true),
            output: Bucket::new(config.otpm_limit, false),
            output_estimate: OutputEstimate::new(),
            in_flight: AtomicU32::new(0),
        }
    }

    /// The limits of a reloaded config (the buckets keep what they hold).
    pub fn configure(&self, config: &ClientConfig) {
        self.requests.set_configured(config.rpm_limit);
        self.input.set_configured(config.itpm_limit);
        self.output.set_configured(config.otpm_limit);
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// A slot of `max_concurrent` (0 = no cap), or the refusal.
    pub fn enter(self: &Arc<Self>, max_concurrent: u32) -> Result<ClientSlot, Refusal> {
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        let slot = ClientSlot(self.clone());
        if max_concurrent > 0 && before >= max_concurrent {
            drop(slot);
            return Err(Refusal {
                limit: LimitKind::MaxConcurrent,
                value: u64::from(max_concurrent),
                // Requests end within seconds to minutes; a second is the honest minimum.
                retry_after: Duration::from_secs(1),
            });
        }
        Ok(slot)
    }

    /// Take `demand` from the buckets at `now` (pool clock), all or nothing.
    pub fn admit(&self, demand: &Demand, now: u64) -> Result<QuotaCharge, Refusal> {
        let output = match demand.max_tokens {
            0 => self.output_estimate.get(),
            max => max.min(self.output_estimate.get()),
        };
        let refused = |bucket: &Bucket, kind: LimitKind, tokens: u64| Refusal {
            limit: kind,
            value: bucket.limit(),
            retry_after: Duration::from_nanos(bucket.wait(tokens, now).max(1)),
        };
        let requests = self
            .requests
            .reserve(1, now)
            .ok_or_else(|| refused(&self.requests, LimitKind::Rpm, 1))?;
        let Some(input) = self.input.reserve(demand.input_tokens, now) else {
            self.requests.release(requests);
            return Err(refused(&self.input, LimitKind::Itpm, demand.input_tokens));
        };
        let Some(out) = self.output.reserve(output, now) else {
            self.requests.release(requests);
            self.input.release(input);
            return Err(refused(&self.output, LimitKind::Otpm, output));
        };
        Ok(QuotaCharge {
            requests,
            input,
            output: out,
        })
    }

    /// The request never reached an upstream (the relay answered it): it costs nothing.
    pub fn release(&self, charge: QuotaCharge) {
        self.requests.release(charge.requests);
        self.input.release(charge.input);
        self.output.release(charge.output);
    }

    /// The request went upstream: it counts as a request, and its tokens are what it used.
    pub fn settle(&self, charge: QuotaCharge, used: Settlement, now: u64) {
        self.input.settle(charge.input, used.input_tokens, now);
        self.output.settle(charge.output, used.output_tokens, now);
        self.output_estimate.observe(used.output_tokens);
    }

    /// Limit and what is left now, per dimension (requests, input, output), for `/status`.
    pub fn levels(&self, now: u64) -> [(u64, u64); 3] {
        [&self.requests, &self.input, &self.output].map(|b| (b.limit(), b.remaining(now)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const WINDOW_NS: u64 = 60_000_000_000;

    fn client(rpm: u64, itpm: u64, otpm: u64) -> ClientConfig {
        ClientConfig {
            rpm_limit: rpm,
            itpm_limit: itpm,
            otpm_limit: otpm,
            ..crate::clients::test_client("c", "k")
        }
    }

    const T0: u64 = 10 * WINDOW_NS;

    #[test]
    fn rpm_refuses_past_its_limit_with_the_time_until_one_more_fits() {
        let q = Quota::new(&client(2, 0, 0));
        let d = Demand {
            input_tokens: 10,
            max_tokens: 100,
        };
        q.admit(&d, T0).unwrap();
        q.admit(&d, T0).unwrap();
        let r = q.admit(&d, T0).unwrap_err();
        assert_eq!(r.limit, LimitKind::Rpm);
        assert_eq!(r.value, 2);
        // Two per minute: one more fits 30 s later.
        assert_eq!(r.retry_after.as_secs(), 30);
        assert!(q.admit(&d, T0 + WINDOW_NS / 2).is_ok());
    }

    #[test]
    fn a_request_answered_locally_gives_its_share_back() {
        let q = Quota::new(&client(1, 0, 0));
        let d = Demand::default();
        let c = q.admit(&d, T0).unwrap();
        q.release(c);
        assert!(q.admit(&d, T0).is_ok());
    }

    #[test]
    fn output_tokens_are_charged_as_used() {
        let q = Quota::new(&client(0, 0, 1000));
        let d = Demand {
            input_tokens: 0,
            max_tokens: 64_000,
        };
        let c = q.admit(&d, T0).unwrap();
        q.settle(
            c,
            Settlement {
                input_tokens: 0,
                output_tokens: 1000,
            },
            T0,
        );
        let r = q.admit(&d, T0).unwrap_err();
        assert_eq!(r.limit, LimitKind::Otpm);
    }

    #[test]
    fn max_concurrent_counts_slots_and_frees_them() {
        let q = Arc::new(Quota::new(&client(0, 0, 0)));
        let a = q.enter(1).unwrap();
        let r = q.enter(1).err().unwrap();
        assert_eq!(r.limit, LimitKind::MaxConcurrent);
        assert_eq!(q.in_flight(), 1);
        drop(a);
        assert!(q.enter(1).is_ok());
    }
}
