//! The pool: choosing a key for a request and reserving its demand on it.
//!
//! Selection reads the keys' atomics without locks and allocates nothing: keys are visited in
//! a precomputed priority order, one tier at a time, and the strategy picks among the keys of
//! the tier that can admit this very demand. The pick is then reserved by CAS; losing that race
//! to a concurrent request simply means picking again, and the loser key no longer qualifies if
//! its capacity went to the winner.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::clock::{self, ns};
use super::key::{KeyCore, KeyState};
use super::reservation::Reservation;
use super::{Demand, Exhausted, KeySpec, Strategy};

/// What a candidate key is checked against: the cost-free screen, or the demand in full.
struct Check<'a> {
    demand: &'a Demand,
    tried: &'a [usize],
    now: u64,
    full: bool,
}

/// `retry_after` when no key can ever admit again before a reload (all disabled, or none).
const ALL_DISABLED_RETRY: Duration = Duration::from_secs(60);
/// Floor of `retry_after`: never zero, even when the only capable keys were already tried.
const MIN_RETRY: Duration = Duration::from_millis(1);
/// Priority tiers, highest first.
const TIERS: usize = 3;
/// Random draws before the random strategies fall back to a full pass.
const DRAWS: usize = 4;

pub struct KeyPool {
    keys: Vec<Arc<KeyState>>,
    /// `keys[i].core` and `keys[i].weight()`, side by side so that a scan reads one pointer
    /// per key instead of two.
    cores: Vec<Arc<KeyCore>>,
    weights: Vec<f64>,
    /// Running sum of weights along `order`, restarting at each tier.
    cumulative_weights: Vec<f64>,
    strategy: Strategy,
    /// Key indexes ordered by priority, highest first (stable within a priority).
    order: Vec<usize>,
    /// `order[tiers[t].0..tiers[t].1]` are the keys of priority `2 - t`.
    tiers: [(usize, usize); TIERS],
    /// Per-tier rotation for round robin.
    cursors: [AtomicUsize; TIERS],
}

impl KeyPool {
    pub fn new(specs: Vec<KeySpec>, strategy: Strategy) -> KeyPool {
        KeyPool::build(specs, strategy, &HashMap::new())
    }

    /// A new pool for new specs. Keys whose fingerprint matches a key here keep their state
    /// (learned limits, buckets, cooldown, output estimate) — the very same atomics, so
    /// reservations still in flight on this pool settle into the new one; configured limits
    /// come from the new spec, and a key disabled by 401/403 is enabled again (a reload is the
    /// operator's signal that its credentials changed).
    pub fn rebuild(&self, specs: Vec<KeySpec>, strategy: Strategy) -> KeyPool {
        let existing = self
            .keys
            .iter()
            .map(|key| (key.fingerprint(), key.core.clone()))
            .collect();
        KeyPool::build(specs, strategy, &existing)
    }

    fn build(
        specs: Vec<KeySpec>,
        strategy: Strategy,
        existing: &HashMap<u64, Arc<KeyCore>>,
    ) -> KeyPool {
        clock::init();
        // One secret, one budget: specs repeating a fingerprint share their state, with the
        // lowest configured limits among them.
        let mut limits: HashMap<u64, [u64; 3]> = HashMap::new();
        for spec in &specs {
            let merged = limits.entry(spec.fingerprint).or_insert([0; 3]);
            let configured = [spec.rpm_limit, spec.itpm_limit, spec.otpm_limit];
            for (merged, configured) in merged.iter_mut().zip(configured) {
                *merged = match (*merged, configured) {
                    (0, l) | (l, 0) => l,
                    (a, b) => a.min(b),
                };
            }
        }
        let cores: HashMap<u64, Arc<KeyCore>> = limits
            .into_iter()
            .map(|(fingerprint, [rpm, itpm, otpm])| {
                let core = match existing.get(&fingerprint) {
                    Some(core) => {
                        core.reconfigure(rpm, itpm, otpm);
                        core.clone()
                    }
                    None => Arc::new(KeyCore::new(rpm, itpm, otpm)),
                };
                // One secret, one cap: the lowest configured among its specs.
                let cap = specs
                    .iter()
                    .filter(|s| s.fingerprint == fingerprint && s.max_concurrent > 0)
                    .map(|s| u64::from(s.max_concurrent))
                    .min()
                    .unwrap_or(0);
                core.set_max_in_flight(cap);
                (fingerprint, core)
            })
            .collect();
        let keys: Vec<Arc<KeyState>> = specs
            .iter()
            .map(|spec| Arc::new(KeyState::new(spec, cores[&spec.fingerprint].clone())))
            .collect();

        let mut order: Vec<usize> = (0..keys.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(keys[i].priority()));
        let mut tiers = [(0, 0); TIERS];
        for (t, tier) in tiers.iter_mut().enumerate() {
            let priority = (TIERS - 1 - t) as u8;
            let start = order.partition_point(|&i| keys[i].priority() > priority);
            let end = order.partition_point(|&i| keys[i].priority() >= priority);
            *tier = (start, end);
        }
        let mut cumulative_weights = Vec::with_capacity(order.len());
        for &(start, end) in &tiers {
            let mut sum = 0.0;
            for &i in &order[start..end] {
                sum += keys[i].weight();
                cumulative_weights.push(sum);
            }
        }
        KeyPool {
            cumulative_weights,
            cores: keys.iter().map(|key| key.core.clone()).collect(),
            weights: keys.iter().map(|key| key.weight()).collect(),
            keys,
            strategy,
            order,
            tiers,
            cursors: Default::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn keys(&self) -> &[Arc<KeyState>] {
        &self.keys
    }

    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    pub(super) fn keys_with_core(&self) -> impl Iterator<Item = &KeyCore> {
        self.keys.iter().map(|k| &*k.core)
    }

    /// Select a key and reserve 1 request + `demand.input_tokens` + an output estimate on it.
    /// `tried` = indexes already attempted by this request; they are never chosen again.
    pub fn acquire(&self, demand: &Demand, tried: &[usize]) -> Result<Reservation, Exhausted> {
        self.acquire_at(demand, tried, Instant::now())
    }

    pub fn acquire_at(
        &self,
        demand: &Demand,
        tried: &[usize],
        now: Instant,
    ) -> Result<Reservation, Exhausted> {
        let now = ns(now);
        for (tier, &(start, end)) in self.tiers.iter().enumerate() {
            let members = &self.order[start..end];
            // The first candidate is chosen on the cost-free screen and simply tried (the
            // reservation checks the demand); after a miss, candidates are chosen among keys
            // checked in full. The result is the same as checking every key in full up front:
            // the screen is a necessary condition, least-loaded's load is the same figure
            // either way, and a uniform or weighted draw retried on a miss is still uniform or
            // weighted over the keys that qualify. Later misses are races lost to concurrent
            // requests, so the bound is only hit by a pathological schedule.
            let mut check = Check {
                demand,
                tried,
                now,
                full: false,
            };
            let Some(mut index) = self.choose(tier, members, &check) else {
                continue;
            };
            check.full = true;
            for _ in 0..members.len() * 2 + 4 {
                if let Some(charges) = self.cores[index].reserve(demand, now) {
                    return Ok(Reservation::new(self.keys[index].clone(), index, charges));
                }
                match self.choose(tier, members, &check) {
                    Some(next) => index = next,
                    None => break,
                }
            }
        }
        Err(self.exhausted(demand, now))
    }

    /// As [`Self::acquire`], trying `preferred` first (a sticky session's key) when it can take
    /// the demand.
    pub fn acquire_preferring(
        &self,
        demand: &Demand,
        tried: &[usize],
        preferred: Option<usize>,
    ) -> Result<Reservation, Exhausted> {
        if let Some(i) = preferred.filter(|i| *i < self.keys.len() && !tried.contains(i)) {
            let now = ns(Instant::now());
            if self.cores[i].probe(demand, now).is_some() {
                if let Some(charges) = self.cores[i].reserve(demand, now) {
                    return Ok(Reservation::new(self.keys[i].clone(), i, charges));
                }
            }
        }
        self.acquire(demand, tried)
    }

    /// Reserve `demand` on key `index` whatever its buckets say: the shared store admitted it
    /// there, seeing every relay's use of the key.
    pub fn reserve_admitted(&self, index: usize, demand: &Demand) -> Reservation {
        let charges = self.cores[index].reserve_admitted(demand, ns(Instant::now()));
        Reservation::new(self.keys[index].clone(), index, charges)
    }

    /// Keep to `ppm` millionths of every key's limits (1_000_000: all of it): what a relay may
    /// use alone while the store that shares the keys among relays cannot be reached.
    pub fn set_share(&self, ppm: u64) {
        for core in &self.cores {
            core.set_share(ppm);
        }
    }

    /// Into `out`, after `first`: the other keys outside `tried` that look able to take a
    /// request now (not disabled, cooling or at a cap, no bucket past full), in the order this
    /// pool prefers them (higher priority, then more capacity left). Returns how many were
    /// written. What another relay did to their budgets is not known here: the shared store
    /// decides among them.
    pub fn alternatives(&self, first: usize, tried: &[usize], out: &mut [usize]) -> usize {
        let now = ns(Instant::now());
        let mut n = 0;
        for &(start, end) in &self.tiers {
            let tier_start = n;
            for &i in &self.order[start..end] {
                if n == out.len() {
                    break;
                }
                if i != first && !tried.contains(&i) && self.cores[i].screen(now).is_some() {
                    out[n] = i;
                    n += 1;
                }
            }
            out[tier_start..n].sort_by_key(|&i| self.cores[i].screen(now).unwrap_or(u64::MAX));
        }
        n
    }

    /// The load of the key that could best take `demand` now (lower = more capacity left, as
    /// least-loaded selection compares keys), or `None` when no key can.
    pub fn best_load(&self, demand: &Demand, tried: &[usize]) -> Option<u64> {
        let now = ns(Instant::now());
        self.cores
            .iter()
            .enumerate()
            .filter(|(i, _)| !tried.contains(i))
            .filter_map(|(_, core)| core.probe(demand, now))
            .min()
    }

    /// Keys that are not disabled, not cooling down and have at least one request of budget now.
    pub fn available(&self) -> usize {
        self.available_at(Instant::now())
    }

    pub fn available_at(&self, now: Instant) -> usize {
        let now = ns(now);
        self.cores
            .iter()
            .filter(|core| core.is_available(now))
            .count()
    }

    /// The key's load if it passes `check` (see `KeyCore::screen` and `KeyCore::probe`).
    #[inline(always)]
    fn load(&self, i: usize, check: &Check) -> Option<u64> {
        if check.tried.contains(&i) {
            return None;
        }
        let core = &self.cores[i];
        if check.full {
            core.probe(check.demand, check.now)
        } else {
            core.screen(check.now)
        }
    }

    /// The strategy's choice among `members` that pass `check`.
    #[inline(always)]
    fn choose(&self, tier: usize, members: &[usize], check: &Check) -> Option<usize> {
        if members.is_empty() {
            return None;
        }
        match self.strategy {
            Strategy::RoundRobin => rotated(members, &self.cursors[tier])
                .copied()
                .find(|&i| self.load(i, check).is_some()),
            Strategy::LeastLoaded => {
                let mut best = None;
                let mut best_load = u64::MAX;
                // In-flight counts only matter between equal loads: read them only then.
                let mut best_in_flight = None;
                for &i in rotated_per_thread(members) {
                    let Some(load) = self.load(i, check) else {
                        continue;
                    };
                    if load < best_load {
                        (best, best_load, best_in_flight) = (Some(i), load, None);
                    } else if load == best_load {
                        let current = *best_in_flight
                            .get_or_insert_with(|| best.map_or(0, |b| self.cores[b].in_flight()));
                        let in_flight = self.cores[i].in_flight();
                        // Strictly fewer only: remaining ties go to the first in rotated order.
                        if in_flight < current {
                            (best, best_in_flight) = (Some(i), Some(in_flight));
                        }
                    }
                }
                best
            }
            Strategy::Random => {
                let mut rng = fastrand::Rng::new();
                // Draw, and redraw on a key that does not qualify: uniform over the qualifying
                // keys, in O(1) while most of them qualify.
                for _ in 0..DRAWS {
                    let i = members[rng.usize(..members.len())];
                    if self.load(i, check).is_some() {
                        return Some(i);
                    }
                }
                // Most do not: reservoir sampling over one pass, uniform as well.
                let mut seen = 0;
                let mut chosen = None;
                for &i in members {
                    if self.load(i, check).is_some() {
                        seen += 1;
                        if rng.usize(..seen) == 0 {
                            chosen = Some(i);
                        }
                    }
                }
                chosen
            }
            Strategy::Weighted => {
                let mut rng = fastrand::Rng::new();
                // As for random, drawing in proportion to weight from the tier's cumulative
                // weights (binary search). Weight-0 keys have empty intervals: never drawn.
                let (start, end) = self.tiers[tier];
                let cumulative = &self.cumulative_weights[start..end];
                let total = cumulative[cumulative.len() - 1];
                if total > 0.0 {
                    for _ in 0..DRAWS {
                        let r = rng.f64() * total;
                        let Some(&i) = members.get(cumulative.partition_point(|&c| c <= r)) else {
                            continue;
                        };
                        if self.load(i, check).is_some() {
                            return Some(i);
                        }
                    }
                }
                // Weighted reservoir sampling (Chao): key i is kept with probability w_i / W so
                // far, which leaves each qualifying key chosen with probability w_i / W in
                // total. Weight-0 keys are a uniform fallback for when no qualifying key has
                // weight.
                let mut total = 0.0;
                let mut weighted = None;
                let mut zero_seen = 0;
                let mut zero = None;
                for &i in members {
                    if self.load(i, check).is_none() {
                        continue;
                    }
                    let weight = self.weights[i];
                    if weight > 0.0 {
                        total += weight;
                        if rng.f64() * total < weight {
                            weighted = Some(i);
                        }
                    } else {
                        zero_seen += 1;
                        if rng.usize(..zero_seen) == 0 {
                            zero = Some(i);
                        }
                    }
                }
                weighted.or(zero)
            }
        }
    }

    /// Time until the earliest non-disabled key could admit this demand.
    pub(super) fn exhausted(&self, demand: &Demand, now: u64) -> Exhausted {
        let wait = self
            .cores
            .iter()
            .filter(|core| !core.is_disabled())
            .map(|core| core.wait(demand, now))
            .min();
        Exhausted {
            retry_after: wait.map_or(ALL_DISABLED_RETRY, |ns| {
                Duration::from_nanos(ns).max(MIN_RETRY)
            }),
            all_disabled: wait.is_none(),
        }
    }
}

/// The tier's members starting at the tier's cursor, which advances by one per call.
#[inline]
fn rotated<'a>(members: &'a [usize], cursor: &AtomicUsize) -> impl Iterator<Item = &'a usize> {
    let start = match members.len() {
        0 | 1 => 0,
        n => cursor.fetch_add(1, Relaxed) % n,
    };
    let (head, tail) = members.split_at(start);
    tail.iter().chain(head)
}

thread_local! {
    static TIE_BREAK: Cell<usize> = const { Cell::new(0) };
}

/// Like `rotated`, with a per-thread cursor: least-loaded only needs rotation to break ties,
/// and a shared cursor would be one more contended cache line on every acquisition.
#[inline]
fn rotated_per_thread(members: &[usize]) -> impl Iterator<Item = &usize> {
    let start = match members.len() {
        0 | 1 => 0,
        n => TIE_BREAK.with(|cursor| {
            // Wraps without a division; a thread moving between pools of different sizes just
            // restarts its rotation.
            let next = cursor.get() + 1;
            let next = if next >= n { 0 } else { next };
            cursor.set(next);
            next
        }),
    };
    let (head, tail) = members.split_at(start);
    tail.iter().chain(head)
}
