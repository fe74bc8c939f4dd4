//! One rate-limit dimension of one key: a token bucket kept as GCRA (the generic cell rate
//! algorithm) in one atomic instant.
//!
//! `tat` is when the bucket will be full again; its debt at `now` is `tat - now` nanoseconds, a
//! token costs `WINDOW / limit` nanoseconds, and `n` tokens are admitted when
//! `max(tat, now) + cost(n) - now <= WINDOW`. That is exactly a bucket of capacity `limit` that
//! refills continuously at `limit` per minute, yet reserving, refunding and "how long until this
//! fits" are each one CAS or one subtraction, with no refill bookkeeping.
//!
//! Debt is kept as time rather than tokens, so when a limit is learned and the cost of a token
//! changes, the debt keeps its meaning "this fraction of the bucket is in use", which is the best
//! guess until the upstream reports its level (and it does, on the same response).
//!
//! Every atomic here is used with `Relaxed` ordering: each is a self-contained value updated by
//! read-modify-write, and no other memory is published through them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::clock::{duration_ns, WINDOW_NS};
use super::headers::LimitHeaders;

/// `Bucket::share_ppm` of a bucket that may use the whole limit.
pub(crate) const FULL_SHARE: u64 = 1_000_000;

/// A token's cost is kept as nanoseconds × 2^16 so that the hot path multiplies instead of
/// dividing; 16 fractional bits keep the rounding error below 2^-16 ns per token.
const FP_SHIFT: u32 = 16;

/// What one reservation took from one bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Charge {
    /// Tokens charged: the demand capped at the limit, 0 while the limit was unknown.
    pub tokens: u64,
    /// The bucket's sync epoch when the charge was made (see [`Bucket::learn`]).
    pub epoch: u64,
}

pub(crate) struct Bucket {
    /// Theoretical arrival time on the pool clock: the instant the bucket is full again.
    tat: AtomicU64,
    /// Nothing is admitted before this instant: the upstream reported the dimension empty until
    /// its reset. The key keeps the latest hold of its buckets in one atomic for the hot path
    /// (`KeyCore::held_until`); admission checks that one, not this.
    hold: AtomicU64,
    /// Cost of one token in ns << FP_SHIFT; 0 = limit unknown, the dimension does not constrain.
    cost_fp: AtomicU64,
    /// Effective limit: the lower of the configured and the learned one that are known, times
    /// the share.
    limit: AtomicU64,
    /// The effective limit before the share is applied: what the whole key grants.
    whole: AtomicU64,
    /// The part of the limit this process may use, in millionths: all of it, except while the
    /// shared store (`shared_state`) is unreachable and each relay keeps to its share.
    share_ppm: AtomicU64,
    configured: AtomicU64,
    learned: AtomicU64,
    /// Bumped each time the upstream's `remaining` overwrites the bucket.
    epoch: AtomicU64,
    /// Whether the upstream counts this dimension when a request arrives (requests, input
    /// tokens) rather than as the response is produced (output tokens). Decides how a
    /// `remaining` header relates to reservations still in flight.
    counted_on_arrival: bool,
}

impl Bucket {
    pub fn new(configured: u64, counted_on_arrival: bool) -> Bucket {
        let bucket = Bucket {
            tat: AtomicU64::new(0),
            hold: AtomicU64::new(0),
            cost_fp: AtomicU64::new(0),
            limit: AtomicU64::new(0),
            whole: AtomicU64::new(0),
            share_ppm: AtomicU64::new(FULL_SHARE),
            configured: AtomicU64::new(configured),
            learned: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            counted_on_arrival,
        };
        bucket.apply_limits();
        bucket
    }

    /// The effective limit per minute; 0 = unknown.
    #[inline]
    pub fn limit(&self) -> u64 {
        self.limit.load(Relaxed)
    }

    /// The effective limit of the whole key, whatever this process's share of it.
    #[inline]
    pub fn whole_limit(&self) -> u64 {
        self.whole.load(Relaxed)
    }

    /// Keep to `ppm` millionths of the limit (`FULL_SHARE`: all of it). The debt is time, so
    /// the fraction of the bucket in use is kept: a bucket half used stays half used, of the
    /// smaller limit.
    pub fn set_share(&self, ppm: u64) {
        let ppm = ppm.clamp(1, FULL_SHARE);
        if self.share_ppm.swap(ppm, Relaxed) != ppm {
            self.apply_limits();
        }
    }

    /// `units` of the whole key, as units of this process's share.
    fn scaled(&self, units: u64) -> u64 {
        let ppm = self.share_ppm.load(Relaxed);
        if ppm >= FULL_SHARE {
            units
        } else {
            (units as u128 * ppm as u128 / FULL_SHARE as u128) as u64
        }
    }

    pub fn set_configured(&self, limit: u64) {
        self.configured.store(limit, Relaxed);
        self.apply_limits();
    }

    fn learn_limit(&self, limit: u64) {
        if limit > 0 && self.learned.swap(limit, Relaxed) != limit {
            self.apply_limits();
        }
    }

    /// A learned limit fills in an unknown one; a configured limit lower than the learned one
    /// wins (the operator may keep part of a key for something else), and a learned limit lower
    /// than the configured one wins too (the upstream will not grant more than it has).
    fn apply_limits(&self) {
        let configured = self.configured.load(Relaxed);
        let learned = self.learned.load(Relaxed);
        let whole = match (configured, learned) {
            (0, l) | (l, 0) => l,
            (c, l) => c.min(l),
        };
        // A share never rounds a known limit down to "unknown".
        let limit = if whole == 0 {
            0
        } else {
            self.scaled(whole).max(1)
        };
        self.whole.store(whole, Relaxed);
        let cost_fp = if limit == 0 {
            0
        } else {
            (((WINDOW_NS as u128) << FP_SHIFT) / limit as u128).max(1) as u64
        };
        self.limit.store(limit, Relaxed);
        self.cost_fp.store(cost_fp, Relaxed);
        if limit == 0 {
            // An unknown dimension carries no debt (keeps `open_debt` a necessary condition).
            self.tat.store(0, Relaxed);
        }
    }

    /// Whether the configured limit is below the upstream's: the local bucket is then the
    /// operator's budget, which the upstream's figures may lower but never raise.
    fn configured_binding(&self) -> bool {
        let configured = self.configured.load(Relaxed);
        configured > 0 && self.learned.load(Relaxed) > configured
    }

    /// Debt (ns) at `now` unless the bucket is already past full: a necessary condition for
    /// admitting anything, and the load figure, without computing a cost.
    #[inline(always)]
    pub fn open_debt(&self, now: u64) -> Option<u64> {
        let debt = self.tat.load(Relaxed).saturating_sub(now);
        (debt <= WINDOW_NS).then_some(debt)
    }

    /// Debt (ns) if `tokens` can be reserved at `now`, else `None`. Unknown limit: `Some(0)`.
    /// A demand larger than the whole bucket is treated as a full bucket: it waits for one,
    /// then the upstream decides.
    #[inline(always)]
    pub fn admits(&self, tokens: u64, now: u64) -> Option<u64> {
        let cost_fp = self.cost_fp.load(Relaxed);
        if cost_fp == 0 {
            return Some(0);
        }
        let debt = self.tat.load(Relaxed).saturating_sub(now);
        let cost = cost(tokens, cost_fp).min(WINDOW_NS);
        (debt.saturating_add(cost) <= WINDOW_NS).then_some(debt)
    }

    /// Reserve `tokens` (capped at the limit) if they fit now.
    #[inline]
    pub fn reserve(&self, tokens: u64, now: u64) -> Option<Charge> {
        self.take(tokens, now, true)
    }

    /// Reserve `tokens` (capped at the limit) whether or not they fit: the shared store, which
    /// sees every relay's use of the key, has already admitted them.
    pub fn reserve_admitted(&self, tokens: u64, now: u64) -> Charge {
        self.take(tokens, now, false)
            .expect("an unenforced reservation always succeeds")
    }

    #[inline(always)]
    fn take(&self, tokens: u64, now: u64, enforce: bool) -> Option<Charge> {
        // Read before the CAS: should a sync land in between, the charge counts as already
        // synced and is never refunded, which errs toward less budget, not more.
        let epoch = if self.counted_on_arrival {
            self.epoch.load(Relaxed)
        } else {
            0
        };
        let cost_fp = self.cost_fp.load(Relaxed);
        if cost_fp == 0 {
            return Some(Charge { tokens: 0, epoch });
        }
        let tokens = tokens.min(self.limit.load(Relaxed));
        let cost = cost(tokens, cost_fp);
        let deadline = now.saturating_add(WINDOW_NS);
        let mut tat = self.tat.load(Relaxed);
        loop {
            let next = tat.max(now).saturating_add(cost);
            if enforce && next > deadline {
                return None;
            }
            if cost == 0 {
                break;
            }
            match self.tat.compare_exchange_weak(tat, next, Relaxed, Relaxed) {
                Ok(_) => break,
                Err(current) => tat = current,
            }
        }
        Some(Charge { tokens, epoch })
    }

    /// Give back everything `charge` took.
    pub fn release(&self, charge: Charge) {
        if !self.superseded(charge) {
            self.refund(charge.tokens);
        }
    }

    /// Replace what `charge` took by the real usage: refund or charge the difference.
    ///
    /// The usage counts for at most one bucket beyond the reservation: a figure larger than
    /// that is not something a per-minute limit can have granted (or the upstream's figure is
    /// wrong, `output_tokens: 1e18`), and charged in full it would bench the key for as many
    /// minutes as it says, with the key never asked again to learn otherwise. So one response
    /// can put the key at most one window (60 s) past empty.
    pub fn settle(&self, charge: Charge, actual: u64, now: u64) {
        if self.superseded(charge) {
            return;
        }
        let actual = actual.min(charge.tokens.saturating_add(self.limit()));
        if actual > charge.tokens {
            self.charge(actual - charge.tokens, now);
        } else {
            self.refund(charge.tokens - actual);
        }
    }

    /// An upstream `remaining` that arrived after the charge already counts the request (it
    /// is counted on arrival), so correcting the charge locally would count it twice.
    fn superseded(&self, charge: Charge) -> bool {
        self.counted_on_arrival && self.epoch.load(Relaxed) != charge.epoch
    }

    fn refund(&self, tokens: u64) {
        let cost = cost(tokens, self.cost_fp.load(Relaxed));
        if cost > 0 {
            // Never fails: the closure always returns Some.
            let _ = self
                .tat
                .fetch_update(Relaxed, Relaxed, |tat| Some(tat.saturating_sub(cost)));
        }
    }

    /// Charge unconditionally (real usage already happened); may push the debt past a full
    /// bucket, which then simply takes longer to clear.
    fn charge(&self, tokens: u64, now: u64) {
        let cost = cost(tokens, self.cost_fp.load(Relaxed));
        if cost > 0 {
            let _ = self.tat.fetch_update(Relaxed, Relaxed, |tat| {
                Some(tat.max(now).saturating_add(cost))
            });
        }
    }

    /// Apply the upstream's figures for this dimension.
    ///
    /// The upstream's `remaining` overwrites the local level. How it relates to our
    /// reservations still in flight depends on when the upstream counts the dimension:
    /// - requests and input tokens are counted when a request arrives, so the figure already
    ///   includes the in-flight requests that were sent before this one (practically all of
    ///   them); the epoch is bumped so that settling or releasing those reservations later does
    ///   not correct them a second time.
    /// - output tokens are counted as they are produced, so in-flight reservations (`pending`
    ///   tokens, which the key tracks) are not in the figure yet; they are subtracted from it
    ///   and settle normally later.
    ///
    /// `remaining: 0` with a reset means the upstream admits nothing until the reset and is
    /// full at it (Anthropic's reset is "fully replenished"): the dimension holds until then.
    ///
    /// `lowering`: the figure may only lower the level (and lengthen a hold), never raise it:
    /// while this process keeps to a share of a key the others use through the shared store,
    /// what is left of the whole key is theirs as much as its own.
    pub fn learn(&self, figures: &LimitHeaders, pending: u64, now: u64, lowering: bool) {
        if let Some(limit) = figures.limit {
            self.learn_limit(limit);
        }
        let Some(remaining) = figures.remaining else {
            return;
        };
        // The upstream speaks for the whole key; this process may hold only its share of it.
        // "Nothing left" is the upstream's own zero, not a small balance that rounds to
        // zero in this process's share.
        let exhausted = remaining == 0;
        let remaining = self.scaled(remaining);
        let local = self.remaining(now);
        let reset = figures
            .reset
            .filter(|_| exhausted)
            .map(duration_ns)
            .map(|reset| now.saturating_add(reset));
        let limit = self.limit();
        let pending = if self.counted_on_arrival { 0 } else { pending };
        let tat = (limit > 0).then(|| match reset {
            Some(reset) => reset.saturating_add(cost(pending, self.cost_fp.load(Relaxed))),
            None => {
                let mut target = remaining.saturating_sub(pending).min(limit);
                if self.configured_binding() {
                    target = target.min(local);
                }
                now.saturating_add(window_share(limit - target, limit))
            }
        });
        if lowering {
            // Taken only where it leaves less to admit; reservations in flight keep their
            // epoch when it changed nothing.
            if let Some(reset) = reset {
                self.hold.fetch_max(reset, Relaxed);
            }
            let lowered = tat.is_some_and(|tat| self.tat.fetch_max(tat, Relaxed) < tat);
            if lowered && self.counted_on_arrival {
                self.epoch.fetch_add(1, Relaxed);
            }
            return;
        }
        if self.counted_on_arrival {
            self.epoch.fetch_add(1, Relaxed);
        }
        self.hold.store(reset.unwrap_or(0), Relaxed);
        if let Some(tat) = tat {
            self.tat.store(tat, Relaxed);
        }
    }

    /// Take the shared store's level for this dimension: `debt` ns of the window in use, as
    /// the store computed it for every relay together (this process's reservations included).
    pub fn sync_debt(&self, debt: u64, now: u64) {
        if self.limit() > 0 {
            self.tat
                .store(now.saturating_add(debt.min(2 * WINDOW_NS)), Relaxed);
        }
    }

    /// The debt at `now` in ns: the part of the window in use (0 when full or unknown).
    pub fn debt(&self, now: u64) -> u64 {
        if self.limit() == 0 {
            return 0;
        }
        self.tat.load(Relaxed).saturating_sub(now)
    }

    /// Forget a hold: something that counts every relay's use (the shared store) now keeps this
    /// balance, empty and refilling, instead of a wait until the upstream's reset.
    pub fn clear_hold(&self) {
        self.hold.store(0, Relaxed);
    }

    /// Until when the upstream's "nothing left until the reset" applies (0: it does not).
    pub fn hold(&self) -> u64 {
        self.hold.load(Relaxed)
    }

    /// Whole tokens available at `now` (0 when the limit is unknown).
    pub fn remaining(&self, now: u64) -> u64 {
        let limit = self.limit();
        if limit == 0 || self.hold() > now {
            return 0;
        }
        let free = WINDOW_NS.saturating_sub(self.tat.load(Relaxed).saturating_sub(now));
        (free as u128 * limit as u128 / WINDOW_NS as u128) as u64
    }

    /// Nanoseconds from `now` until the bucket is full again (0 when it is, or the limit is
    /// unknown): the upstream's reset when it said nothing is left, else the refill.
    pub fn full_in(&self, now: u64) -> u64 {
        if self.limit() == 0 {
            return 0;
        }
        self.tat.load(Relaxed).max(self.hold()).saturating_sub(now)
    }

    /// Nanoseconds from `now` until `tokens` would fit (0 if they fit now).
    pub fn wait(&self, tokens: u64, now: u64) -> u64 {
        let hold = self.hold.load(Relaxed);
        let cost_fp = self.cost_fp.load(Relaxed);
        let fits_at = if cost_fp == 0 {
            0
        } else {
            let cost = cost(tokens, cost_fp).min(WINDOW_NS);
            self.tat
                .load(Relaxed)
                .saturating_add(cost)
                .saturating_sub(WINDOW_NS)
        };
        fits_at.max(hold).saturating_sub(now)
    }
}

#[inline]
fn cost(tokens: u64, cost_fp: u64) -> u64 {
    let ns = (tokens as u128 * cost_fp as u128) >> FP_SHIFT;
    u64::try_from(ns).unwrap_or(u64::MAX)
}

/// The part of the window that `tokens` of `limit` stand for, in ns (exact, off the hot path).
fn window_share(tokens: u64, limit: u64) -> u64 {
    (tokens as u128 * WINDOW_NS as u128 / limit as u128) as u64
}
