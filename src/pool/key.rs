//! One key's state: its three buckets, cooldown, disable flag, in-flight count and output
//! estimate, all atomics.
//!
//! The atomics live in a [`KeyCore`] shared by every [`KeyState`] built for the same secret
//! (same fingerprint), so a reload hands the very same budgets to the new pool and requests
//! still in flight on the old pool settle into them.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::bucket::{Bucket, Charge};
use super::clock::{duration_ns, ns, WINDOW_NS};
use super::estimate::OutputEstimate;
use super::headers::{LimitHeaders, RateLimitHeaders};
use super::{Demand, KeySpec, Settlement};

pub(crate) const REQUESTS: usize = 0;
pub(crate) const INPUT: usize = 1;
pub(crate) const OUTPUT: usize = 2;

/// Bits of `KeyCore::flight` that count requests: a million in flight per key is plenty, and
/// leaves 44 bits (17 × 10^12) for output tokens.
const FLIGHT_BITS: u32 = 20;
const FLIGHT_MASK: u64 = (1 << FLIGHT_BITS) - 1;

#[inline]
fn flight_unit(output: Charge) -> u64 {
    (output.tokens << FLIGHT_BITS) | 1
}

/// A 429 whose `retry-after` says 0 still rests the key this long rather than hammering it.
const MIN_COOLDOWN: Duration = Duration::from_secs(1);
/// Exponential backoff for a 429 that says nothing: 1 s, 2 s, 4 s … capped here.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

pub(crate) struct KeyCore {
    /// Indexed by `REQUESTS`, `INPUT`, `OUTPUT`.
    pub buckets: [Bucket; 3],
    cooldown_until: AtomicU64,
    /// The latest hold of the three buckets (see `Bucket::hold`), so that admission checks one
    /// atomic instead of three.
    held_until: AtomicU64,
    /// Consecutive 429s that carried no timing; reset by a settled response.
    strikes: AtomicU32,
    /// Consecutive 403s; reset by a settled response. Each one benches the key twice as long.
    forbidden: AtomicU32,
    /// When the most recent `learn` said the key replenishes (0 = it said nothing).
    reset_hint: AtomicU64,
    disabled: AtomicBool,
    /// Requests in flight (low `FLIGHT_BITS` bits) and the output tokens they reserved (the
    /// rest), in one atomic so that admission and settlement pay one read-modify-write for both.
    flight: AtomicU64,
    /// `keys[].max_concurrent`: requests in flight at most (0 = no cap).
    max_in_flight: AtomicU64,
    output: OutputEstimate,
}

impl KeyCore {
    pub fn new(rpm: u64, itpm: u64, otpm: u64) -> KeyCore {
        KeyCore {
            buckets: [
                Bucket::new(rpm, true),
                Bucket::new(itpm, true),
                Bucket::new(otpm, false),
            ],
            cooldown_until: AtomicU64::new(0),
            held_until: AtomicU64::new(0),
            strikes: AtomicU32::new(0),
            forbidden: AtomicU32::new(0),
            reset_hint: AtomicU64::new(0),
            disabled: AtomicBool::new(false),
            flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
            output: OutputEstimate::new(),
        }
    }

    /// A reload: new configured limits, and the operator's word that a disabled key may be
    /// tried again.
    pub fn reconfigure(&self, rpm: u64, itpm: u64, otpm: u64) {
        for (bucket, limit) in self.buckets.iter().zip([rpm, itpm, otpm]) {
            bucket.set_configured(limit);
        }
        self.disabled.store(false, Relaxed);
    }

    /// `keys[].max_concurrent` (0 = no cap).
    pub fn set_max_in_flight(&self, max: u64) {
        self.max_in_flight.store(max, Relaxed);
    }

    /// Output tokens to reserve: the learned estimate, never more than `max_tokens` (when
    /// given) and never more than a full output bucket, so a request is always admissible on
    /// an idle key.
    #[inline]
    pub fn output_reservation(&self, max_tokens: u64) -> u64 {
        let mut tokens = self.output.get();
        if max_tokens > 0 {
            tokens = tokens.min(max_tokens);
        }
        let capacity = self.buckets[OUTPUT].limit();
        if capacity > 0 {
            tokens = tokens.min(capacity);
        }
        tokens
    }

    /// The key's load unless it is plainly unusable (disabled, cooling, held, a bucket past
    /// full): the debt of its fullest bucket in ns. Lower = more capacity left, comparable
    /// across dimensions and keys because every bucket spans the same window, so it is "min of
    /// remaining / limit" without a division. Necessary for `probe`, and much cheaper.
    #[inline(always)]
    pub fn screen(&self, now: u64) -> Option<u64> {
        if self.blocked(now) {
            return None;
        }
        let requests = self.buckets[REQUESTS].open_debt(now)?;
        let input = self.buckets[INPUT].open_debt(now)?;
        let output = self.buckets[OUTPUT].open_debt(now)?;
        Some(requests.max(input).max(output))
    }

    /// Whether the key can take this demand now: `Some(load)` as in `screen`.
    #[inline(always)]
    pub fn probe(&self, demand: &Demand, now: u64) -> Option<u64> {
        if self.blocked(now) {
            return None;
        }
        let output = self.output_reservation(demand.max_tokens);
        let requests = self.buckets[REQUESTS].admits(1, now)?;
        let input = self.buckets[INPUT].admits(demand.input_tokens, now)?;
        let output = self.buckets[OUTPUT].admits(output, now)?;
        Some(requests.max(input).max(output))
    }

    /// Disabled, cooling down, told by the upstream to hold, or at its concurrency cap.
    #[inline(always)]
    fn blocked(&self, now: u64) -> bool {
        self.disabled.load(Relaxed)
            || self.cooldown_until.load(Relaxed) > now
            || self.held_until.load(Relaxed) > now
            || self.at_concurrency_cap()
    }

    #[inline(always)]
    fn at_concurrency_cap(&self) -> bool {
        let max = self.max_in_flight.load(Relaxed);
        max != 0 && self.in_flight() >= max
    }

    /// Reserve the demand on all three buckets, or nothing. The caller has checked `blocked`.
    #[inline]
    pub fn reserve(&self, demand: &Demand, now: u64) -> Option<[Charge; 3]> {
        let output = self.output_reservation(demand.max_tokens);
        let requests = self.buckets[REQUESTS].reserve(1, now)?;
        let Some(input) = self.buckets[INPUT].reserve(demand.input_tokens, now) else {
            self.buckets[REQUESTS].release(requests);
            return None;
        };
        let Some(output) = self.buckets[OUTPUT].reserve(output, now) else {
            self.buckets[REQUESTS].release(requests);
            self.buckets[INPUT].release(input);
            return None;
        };
        let before = self.flight.fetch_add(flight_unit(output), Relaxed);
        let max = self.max_in_flight.load(Relaxed);
        if max != 0 && (before & FLIGHT_MASK) >= max {
            // A concurrent request took the last slot between the check and here.
            self.release(&[requests, input, output]);
            return None;
        }
        Some([requests, input, output])
    }

    /// Reserve the demand whatever the buckets say: the shared store admitted it, seeing every
    /// relay's use of the key (this process's view may lag behind the others' refunds).
    pub fn reserve_admitted(&self, demand: &Demand, now: u64) -> [Charge; 3] {
        let output = self.output_reservation(demand.max_tokens);
        let charges = [
            self.buckets[REQUESTS].reserve_admitted(1, now),
            self.buckets[INPUT].reserve_admitted(demand.input_tokens, now),
            self.buckets[OUTPUT].reserve_admitted(output, now),
        ];
        self.flight.fetch_add(flight_unit(charges[OUTPUT]), Relaxed);
        charges
    }

    /// Keep to `ppm` millionths of each limit (see `Bucket::set_share`).
    pub fn set_share(&self, ppm: u64) {
        for bucket in &self.buckets {
            bucket.set_share(ppm);
        }
    }

    pub fn settle(&self, charges: &[Charge; 3], usage: Settlement, now: u64) {
        self.buckets[REQUESTS].settle(charges[REQUESTS], 1, now);
        self.buckets[INPUT].settle(charges[INPUT], usage.input_tokens, now);
        self.buckets[OUTPUT].settle(charges[OUTPUT], usage.output_tokens, now);
        self.output.observe(usage.output_tokens);
        self.flight.fetch_sub(flight_unit(charges[OUTPUT]), Relaxed);
        if self.strikes.load(Relaxed) != 0 {
            self.strikes.store(0, Relaxed);
        }
        if self.forbidden.load(Relaxed) != 0 {
            self.forbidden.store(0, Relaxed);
        }
    }

    pub fn release(&self, charges: &[Charge; 3]) {
        for (bucket, charge) in self.buckets.iter().zip(charges) {
            bucket.release(*charge);
        }
        self.flight.fetch_sub(flight_unit(charges[OUTPUT]), Relaxed);
    }

    /// Nanoseconds until this key could take the demand (cooldown and every dimension).
    pub fn wait(&self, demand: &Demand, now: u64) -> u64 {
        let output = self.output_reservation(demand.max_tokens);
        let cooldown = self.cooldown_until.load(Relaxed).saturating_sub(now);
        cooldown
            .max(self.buckets[REQUESTS].wait(1, now))
            .max(self.buckets[INPUT].wait(demand.input_tokens, now))
            .max(self.buckets[OUTPUT].wait(output, now))
    }

    /// Not disabled, not cooling down, at least one request of budget, nothing on hold.
    pub fn is_available(&self, now: u64) -> bool {
        !self.blocked(now) && self.buckets[REQUESTS].admits(1, now).is_some()
    }

    #[inline]
    pub fn is_disabled(&self) -> bool {
        self.disabled.load(Relaxed)
    }

    #[inline]
    pub fn in_flight(&self) -> u64 {
        self.flight.load(Relaxed) & FLIGHT_MASK
    }

    /// Output tokens reserved by requests in flight.
    fn output_in_flight(&self) -> u64 {
        self.flight.load(Relaxed) >> FLIGHT_BITS
    }
}

/// One key of one pool: display data plus the shared atomic state.
pub struct KeyState {
    id: String,
    fingerprint: u64,
    priority: u8,
    weight: f64,
    /// `KeySpec::max_cooldown` in ns: the cap on any one cooldown or hold the upstream imposes.
    max_cooldown_ns: u64,
    pub(crate) core: Arc<KeyCore>,
}

impl KeyState {
    pub(crate) fn new(spec: &KeySpec, core: Arc<KeyCore>) -> KeyState {
        KeyState {
            id: spec.id.clone(),
            fingerprint: spec.fingerprint,
            priority: spec.priority.min(2),
            weight: if spec.weight.is_finite() && spec.weight > 0.0 {
                spec.weight
            } else {
                0.0
            },
            max_cooldown_ns: duration_ns(spec.max_cooldown.max(MIN_COOLDOWN)),
            core,
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Stable hash of the secret (not the secret): what carries state across reloads.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// 0..=2, 2 first.
    pub fn priority(&self) -> u8 {
        self.priority
    }

    pub fn weight(&self) -> f64 {
        self.weight
    }

    /// Apply what the upstream said about this key (authoritative remaining/reset/limits).
    pub fn learn(&self, limits: &RateLimitHeaders) {
        self.learn_at(limits, Instant::now());
    }

    /// As [`KeyState::learn`], but the figures may only lower this process's balances: while
    /// it keeps to its share of a key that other relays use through the shared store.
    pub fn learn_lowering(&self, limits: &RateLimitHeaders) {
        self.learn_with(limits, Instant::now(), true);
    }

    pub fn learn_at(&self, limits: &RateLimitHeaders, now: Instant) {
        self.learn_with(limits, now, false);
    }

    fn learn_with(&self, limits: &RateLimitHeaders, now: Instant, lowering: bool) {
        let now = ns(now);
        // A bucket refills within one window, so a reset further out is not a per-minute
        // limit's (a broken or hostile upstream, a clock gone wrong): it is cut to the window,
        // and to the key's cooldown cap, so no answer can lock the key away.
        let reset_cap = Duration::from_nanos(WINDOW_NS.min(self.max_cooldown_ns));
        // The legacy combined `tokens-*` figures bound input and output alike, so they stand in
        // for whichever of the two has no headers of its own; the next response's figures
        // correct any overlap between the two.
        let pick = |own: &LimitHeaders| -> LimitHeaders {
            if own.is_empty() {
                limits.tokens
            } else {
                *own
            }
        };
        let mut figures = [
            limits.requests,
            pick(&limits.input_tokens),
            pick(&limits.output_tokens),
        ];
        for f in &mut figures {
            f.reset = f.reset.map(|reset| reset.min(reset_cap));
        }
        let pending = self.core.output_in_flight();
        for (bucket, figures) in self.core.buckets.iter().zip(&figures) {
            bucket.learn(figures, pending, now, lowering);
        }
        let held = self
            .core
            .buckets
            .iter()
            .map(Bucket::hold)
            .max()
            .unwrap_or(0);
        self.core.held_until.store(held, Relaxed);
        let hint = reset_hint(&figures).map_or(0, |reset| now.saturating_add(duration_ns(reset)));
        self.core.reset_hint.store(hint, Relaxed);
    }

    /// The limits of the whole key per dimension (requests, input, output; 0 = unknown),
    /// whatever share of them this process keeps to.
    pub fn whole_limits(&self) -> [u64; 3] {
        self.core.buckets.each_ref().map(Bucket::whole_limit)
    }

    /// Each dimension's debt (ns of the window in use) at `now`.
    pub fn debts_at(&self, now: Instant) -> [u64; 3] {
        let now = ns(now);
        self.core.buckets.each_ref().map(|b| b.debt(now))
    }

    /// Take the shared store's levels (ns of each window in use, every relay counted).
    pub fn sync_debts_at(&self, debts: [u64; 3], now: Instant) {
        let now = ns(now);
        for (bucket, debt) in self.core.buckets.iter().zip(debts) {
            bucket.sync_debt(debt, now);
        }
    }

    /// `keys[].max_concurrent` (0: no cap).
    pub fn max_in_flight(&self) -> u64 {
        self.core.max_in_flight.load(Relaxed)
    }

    /// Output tokens a request with this `max_tokens` (0: none given) reserves on this key.
    pub fn output_reservation(&self, max_tokens: u64) -> u64 {
        self.core.output_reservation(max_tokens)
    }

    /// The latest cooldown or hold still running at `now`, in ns from `now` (0: none).
    pub fn benched_for_at(&self, now: Instant) -> u64 {
        let now = ns(now);
        self.core
            .cooldown_until
            .load(Relaxed)
            .max(self.core.held_until.load(Relaxed))
            .saturating_sub(now)
    }

    /// Drop the holds the upstream's `remaining: 0` set: with `shared_state` the store keeps
    /// that balance for every relay (empty, refilling), and a local hold would only keep this
    /// relay from a key the others may use as soon as it refills.
    pub fn clear_holds(&self) {
        for bucket in &self.core.buckets {
            bucket.clear_hold();
        }
        self.core.held_until.store(0, Relaxed);
    }

    /// Upstream said 429. `retry_after` from the response; without it, the reset the most recent
    /// `learn` reported, else exponential backoff (1 s, 2 s, 4 s … 60 s, reset by a success).
    /// Never longer than the key's `max_cooldown`.
    pub fn cool_down(&self, retry_after: Option<Duration>) {
        self.cool_down_at(retry_after, Instant::now());
    }

    pub fn cool_down_at(&self, retry_after: Option<Duration>, now: Instant) {
        let now = ns(now);
        let core = &self.core;
        let until = match retry_after {
            Some(delay) => now.saturating_add(duration_ns(delay.max(MIN_COOLDOWN))),
            None => {
                let hint = core.reset_hint.load(Relaxed);
                if hint > now {
                    hint
                } else {
                    let strikes = core.strikes.fetch_add(1, Relaxed).min(6);
                    let backoff = (MIN_COOLDOWN * (1 << strikes)).min(MAX_BACKOFF);
                    now.saturating_add(duration_ns(backoff))
                }
            }
        };
        self.bench_until(until, now);
    }

    /// Upstream said 403. Unlike a 401, that may be about the request (a model or region the
    /// organisation may not use) rather than the key, so one does not condemn the key: each
    /// consecutive 403 benches it twice as long as the one before (1 s, 2 s, 4 s …, up to
    /// `max_cooldown`), and a success clears the count.
    pub fn forbid(&self) {
        self.forbid_at(Instant::now());
    }

    pub fn forbid_at(&self, now: Instant) {
        let now = ns(now);
        let strikes = self.core.forbidden.fetch_add(1, Relaxed).min(24);
        let backoff = duration_ns(MIN_COOLDOWN).saturating_mul(1 << strikes);
        self.bench_until(now.saturating_add(backoff), now);
    }

    /// Consecutive 403s since the last success.
    pub fn forbidden_strikes(&self) -> u32 {
        self.core.forbidden.load(Relaxed)
    }

    /// Cool the key down until `until`, cut to `max_cooldown` from `now`; a longer cooldown
    /// already running is kept (within the same cap).
    fn bench_until(&self, until: u64, now: u64) {
        let until = until.min(now.saturating_add(self.max_cooldown_ns));
        self.core.cooldown_until.fetch_max(until, Relaxed);
    }

    /// 401: never selected again until the pool is rebuilt.
    pub fn disable(&self) {
        self.core.disabled.store(true, Relaxed);
    }

    pub fn is_disabled(&self) -> bool {
        self.core.is_disabled()
    }

    pub fn snapshot(&self) -> KeySnapshot {
        self.snapshot_at(Instant::now())
    }

    pub fn snapshot_at(&self, now: Instant) -> KeySnapshot {
        let now = ns(now);
        let core = &self.core;
        let dimension = |i: usize| DimensionSnapshot {
            limit: core.buckets[i].limit(),
            remaining: core.buckets[i].remaining(now),
            full_in: Duration::from_nanos(core.buckets[i].full_in(now)),
        };
        let cooling = core.cooldown_until.load(Relaxed).saturating_sub(now);
        KeySnapshot {
            id: self.id.clone(),
            priority: self.priority,
            weight: self.weight,
            disabled: core.is_disabled(),
            forbidden_strikes: core.forbidden.load(Relaxed),
            cooling_for: (cooling > 0).then(|| Duration::from_nanos(cooling)),
            in_flight: core.in_flight(),
            requests: dimension(REQUESTS),
            input_tokens: dimension(INPUT),
            output_tokens: dimension(OUTPUT),
            output_estimate: core.output_reservation(0),
        }
    }
}

/// Which reset a 429 without `retry-after` should wait for: the latest one among dimensions the
/// upstream reported empty (that is what refused the request), else the earliest one reported.
fn reset_hint(figures: &[LimitHeaders; 3]) -> Option<Duration> {
    let exhausted = figures
        .iter()
        .filter(|f| f.remaining == Some(0))
        .filter_map(|f| f.reset)
        .max();
    exhausted.or_else(|| figures.iter().filter_map(|f| f.reset).min())
}

/// One key's state as plain data, for a status endpoint and logs.
#[derive(Clone, Debug, PartialEq)]
pub struct KeySnapshot {
    pub id: String,
    pub priority: u8,
    pub weight: f64,
    pub disabled: bool,
    /// Consecutive 403s since the key last served a request.
    pub forbidden_strikes: u32,
    pub cooling_for: Option<Duration>,
    pub in_flight: u64,
    pub requests: DimensionSnapshot,
    pub input_tokens: DimensionSnapshot,
    pub output_tokens: DimensionSnapshot,
    /// Output tokens a request without `max_tokens` would reserve on this key now.
    pub output_estimate: u64,
}

/// One dimension of a [`KeySnapshot`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DimensionSnapshot {
    /// Configured or learned limit per minute (the lower when both are known); 0 = unknown.
    pub limit: u64,
    /// Whole units available now; 0 when the limit is unknown.
    pub remaining: u64,
    /// Until the dimension is full again (its reset); zero when it is or the limit is unknown.
    pub full_in: Duration,
}
