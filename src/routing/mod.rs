//! The plan of a request: which providers may serve it, and in which order its attempts try
//! them (`routing.strategy`), with circuit breakers (`breaker`) and session stickiness
//! (`sticky`). Pure ordering over plain data: the proxy describes each candidate provider (its
//! priority, weight, whether its pool can admit the request and how loaded it is, its circuit)
//! and gets the order back, so this is unit-tested and benchmarked without a server.

mod breaker;
mod sticky;

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

pub use breaker::{Breaker, CircuitState};
pub use sticky::{SessionTable, Stick};

use crate::config::RoutingStrategy;

/// What the plan needs to know of one candidate provider.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    /// Index into the runtime state's providers.
    pub provider: usize,
    /// 0–2, 2 first.
    pub priority: u8,
    /// > 0.
    pub weight: f64,
    /// Its pool (or passthrough) can admit the request now.
    pub admits: bool,
    /// Its best key's load for the request's demand (lower = more capacity left).
    pub load: u64,
    /// Requests in flight on it.
    pub in_flight: usize,
    /// Its circuit is open: nothing may be sent there now.
    pub open: bool,
}

/// Strategy state of one config generation: rotation cursors and the weighted schedule.
pub struct Router {
    strategy: RoutingStrategy,
    cursor: AtomicUsize,
    /// Smooth weighted round robin over all providers (indexes), computed once per config.
    schedule: Vec<usize>,
}

/// Longest smooth-WRR schedule kept (weights are scaled down to fit).
const MAX_SCHEDULE: usize = 1024;

impl Router {
    /// `weights[i]` is provider `i`'s weight.
    pub fn new(strategy: RoutingStrategy, weights: &[f64]) -> Router {
        Router {
            strategy,
            cursor: AtomicUsize::new(0),
            schedule: smooth_schedule(weights),
        }
    }

    pub fn strategy(&self) -> RoutingStrategy {
        self.strategy
    }

    /// Order `candidates` for a request: by strategy, then those that can take the request now
    /// before those whose pool cannot, and those with an open circuit last (the caller never
    /// sends to them). `sticky` (a session's provider) goes first when it can take it.
    pub fn order(&self, candidates: &mut [Candidate], sticky: Option<usize>) {
        if candidates.len() > 1 {
            match self.strategy {
                RoutingStrategy::Failover | RoutingStrategy::ModelBased => {
                    candidates.sort_by_key(|c| std::cmp::Reverse(c.priority));
                }
                RoutingStrategy::RoundRobin => {
                    let n = candidates.len();
                    candidates.rotate_left(self.cursor.fetch_add(1, Relaxed) % n);
                }
                RoutingStrategy::WeightedRoundRobin => self.weighted_round_robin(candidates),
                RoutingStrategy::Shuffle => self.shuffle(candidates),
                RoutingStrategy::LeastLoaded => {
                    candidates.sort_by_key(|c| (c.load, c.in_flight));
                }
                RoutingStrategy::WeightedFailover => weighted_random_order(candidates),
            }
        }
        if let Some(p) = sticky {
            if let Some(i) = candidates
                .iter()
                .position(|c| c.provider == p && c.admits && !c.open)
            {
                candidates[..=i].rotate_right(1);
            }
        }
        // Stable: the strategy's order holds within each group.
        candidates.sort_by_key(|c| (c.open, !c.admits));
    }

    /// The next provider of the schedule that is a candidate goes first; the rest by weight.
    fn weighted_round_robin(&self, candidates: &mut [Candidate]) {
        candidates.sort_by(|a, b| b.weight.total_cmp(&a.weight));
        if self.schedule.is_empty() {
            return;
        }
        let start = self.cursor.fetch_add(1, Relaxed);
        for step in 0..self.schedule.len() {
            let p = self.schedule[(start + step) % self.schedule.len()];
            if let Some(i) = candidates.iter().position(|c| c.provider == p) {
                candidates[..=i].rotate_right(1);
                return;
            }
        }
    }

    /// Deal from a shuffled deck: every candidate once, in a random order, before any gets a
    /// second request. The deck of round `r` is a permutation seeded by `r`, so concurrent
    /// requests share it without a lock.
    fn shuffle(&self, candidates: &mut [Candidate]) {
        let n = candidates.len();
        let draw = self.cursor.fetch_add(1, Relaxed);
        let (round, position) = (draw / n, draw % n);
        candidates.sort_by_key(|c| c.provider);
        let mut rng = fastrand::Rng::with_seed(round as u64 ^ 0x9e37_79b9_7f4a_7c15);
        rng.shuffle(candidates);
        candidates.rotate_left(position);
    }
}

/// A weighted random order: each place drawn among the rest in proportion to weight.
fn weighted_random_order(candidates: &mut [Candidate]) {
    let mut rng = fastrand::Rng::new();
    for start in 0..candidates.len() - 1 {
        let total: f64 = candidates[start..].iter().map(|c| c.weight).sum();
        let mut r = rng.f64() * total;
        let mut pick = start;
        for (i, c) in candidates.iter().enumerate().skip(start) {
            pick = i;
            if r < c.weight {
                break;
            }
            r -= c.weight;
        }
        candidates.swap(start, pick);
    }
}

/// nginx's smooth weighted round robin, unrolled into a schedule of provider indexes (weights
/// scaled to whole numbers, at most `MAX_SCHEDULE` entries).
fn smooth_schedule(weights: &[f64]) -> Vec<usize> {
    if weights.is_empty() {
        return Vec::new();
    }
    let min = weights
        .iter()
        .copied()
        .filter(|w| *w > 0.0)
        .fold(f64::INFINITY, f64::min);
    let min = if min.is_finite() { min } else { 1.0 };
    let mut whole: Vec<i64> = weights
        .iter()
        .map(|w| ((w.max(min) / min).round() as i64).max(1))
        .collect();
    let total: i64 = whole.iter().sum();
    if total as usize > MAX_SCHEDULE {
        let scale = MAX_SCHEDULE as f64 / total as f64;
        for w in &mut whole {
            *w = ((*w as f64 * scale).round() as i64).max(1);
        }
    }
    let total: i64 = whole.iter().sum();
    let mut current = vec![0i64; whole.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&whole) {
            *c += w;
        }
        let (best, _) = current
            .iter()
            .enumerate()
            .max_by_key(|(i, c)| (**c, std::cmp::Reverse(*i)))
            .expect("non-empty");
        current[best] -= total;
        schedule.push(best);
    }
    schedule
}

/// The provider a model maps to under `model_based`: the longest `model_mapping` prefix that
/// the model starts with.
pub fn longest_prefix<'a>(
    mapping: &'a std::collections::HashMap<String, String>,
    model: &str,
) -> Option<&'a str> {
    mapping
        .iter()
        .filter(|(prefix, _)| model.starts_with(prefix.as_str()))
        .max_by_key(|(prefix, _)| prefix.len())
        .map(|(_, provider)| provider.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands(specs: &[(u8, f64)]) -> Vec<Candidate> {
        specs
            .iter()
            .enumerate()
            .map(|(i, &(priority, weight))| Candidate {
                provider: i,
                priority,
                weight,
                admits: true,
                load: 0,
                in_flight: 0,
                open: false,
            })
            .collect()
    }

    fn firsts(router: &Router, specs: &[(u8, f64)], n: usize) -> Vec<usize> {
        let mut counts = vec![0; specs.len()];
        for _ in 0..n {
            let mut c = cands(specs);
            router.order(&mut c, None);
            counts[c[0].provider] += 1;
        }
        counts
    }

    #[test]
    fn round_robin_and_shuffle_are_even() {
        let specs = [(1, 1.0); 3];
        let rr = Router::new(RoutingStrategy::RoundRobin, &[1.0; 3]);
        assert_eq!(firsts(&rr, &specs, 30), [10, 10, 10]);
        let shuffle = Router::new(RoutingStrategy::Shuffle, &[1.0; 3]);
        assert_eq!(firsts(&shuffle, &specs, 30), [10, 10, 10]);
    }

    #[test]
    fn weighted_round_robin_follows_the_weights_exactly() {
        let specs = [(1, 3.0), (1, 1.0)];
        let wrr = Router::new(RoutingStrategy::WeightedRoundRobin, &[3.0, 1.0]);
        assert_eq!(firsts(&wrr, &specs, 40), [30, 10]);
        assert_eq!(smooth_schedule(&[5.0, 1.0, 1.0]), [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn failover_takes_the_highest_priority_and_skips_what_cannot_serve() {
        let router = Router::new(RoutingStrategy::Failover, &[1.0; 3]);
        let mut c = cands(&[(1, 1.0), (2, 1.0), (2, 1.0)]);
        router.order(&mut c, None);
        assert_eq!(c.iter().map(|c| c.provider).collect::<Vec<_>>(), [1, 2, 0]);
        let mut c = cands(&[(1, 1.0), (2, 1.0), (2, 1.0)]);
        c[1].open = true;
        c[2].admits = false;
        router.order(&mut c, None);
        assert_eq!(c.iter().map(|c| c.provider).collect::<Vec<_>>(), [0, 2, 1]);
    }

    #[test]
    fn least_loaded_then_fewest_in_flight_and_sticky_first() {
        let router = Router::new(RoutingStrategy::LeastLoaded, &[1.0; 3]);
        let mut c = cands(&[(1, 1.0); 3]);
        c[0].load = 50;
        c[1].load = 10;
        c[2].load = 10;
        c[1].in_flight = 4;
        router.order(&mut c, None);
        assert_eq!(c.iter().map(|c| c.provider).collect::<Vec<_>>(), [2, 1, 0]);
        let mut c = cands(&[(1, 1.0); 3]);
        router.order(&mut c, Some(0));
        assert_eq!(c[0].provider, 0);
    }

    #[test]
    fn weighted_failover_draws_by_weight() {
        let router = Router::new(RoutingStrategy::WeightedFailover, &[3.0, 1.0]);
        let counts = firsts(&router, &[(1, 3.0), (1, 1.0)], 4000);
        assert!((2700..3300).contains(&counts[0]), "{counts:?}");
    }

    #[test]
    fn the_longest_prefix_wins() {
        let mapping = [("claude", "a"), ("claude-opus", "b"), ("glm", "c")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(longest_prefix(&mapping, "claude-opus-4-1"), Some("b"));
        assert_eq!(longest_prefix(&mapping, "claude-sonnet-4-5"), Some("a"));
        assert_eq!(longest_prefix(&mapping, "qwen3"), None);
    }
}
