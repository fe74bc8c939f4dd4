//! A circuit breaker per provider, in atomics (no lock on the request path).
//!
//! Closed: requests flow; consecutive failures (connect errors, timeouts, 5xx, 529 — not client
//! errors, not a 429 that only cooled one key) are counted, and at `failure_threshold` the
//! circuit opens. Open: no request is sent there until `open_duration` has passed (the
//! background check, when on, pushes that end back while the upstream is unreachable). Then
//! half-open: `half_open_probes` requests are let through; that many successes close it, one
//! failure opens it again.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use once_cell::sync::Lazy;

use crate::config::HealthConfig;

static EPOCH: Lazy<Instant> = Lazy::new(Instant::now);

/// Milliseconds since the process's breaker epoch, never 0 (0 means "closed").
fn now_ms(now: Instant) -> u64 {
    now.saturating_duration_since(*EPOCH).as_millis() as u64 + 1
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug)]
pub struct Breaker {
    /// Consecutive failures while closed.
    failures: AtomicU32,
    /// 0 = closed; otherwise the instant (ms) the open period ends and half-open begins.
    open_until: AtomicU64,
    /// Half-open requests let through since the circuit last opened.
    probes_sent: AtomicU32,
    /// Successful half-open requests since the circuit last opened.
    probes_ok: AtomicU32,
    /// Times the circuit opened (for status and tests).
    opened: AtomicU64,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker::new()
    }
}

impl Breaker {
    pub fn new() -> Breaker {
        Lazy::force(&EPOCH);
        Breaker {
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            probes_sent: AtomicU32::new(0),
            probes_ok: AtomicU32::new(0),
            opened: AtomicU64::new(0),
        }
    }

    pub fn state(&self, health: &HealthConfig) -> CircuitState {
        self.state_at(health, Instant::now())
    }

    pub fn state_at(&self, health: &HealthConfig, now: Instant) -> CircuitState {
        let until = self.open_until.load(Relaxed);
        if until == 0 {
            CircuitState::Closed
        } else if now_ms(now) < until {
            CircuitState::Open
        } else if self.probes_sent.load(Relaxed) < health.half_open_probes {
            CircuitState::HalfOpen
        } else {
            // Every probe is out: nothing more until they report.
            CircuitState::Open
        }
    }

    /// Whether a request may be sent now (a half-open probe is taken when it may).
    pub fn try_pass(&self, health: &HealthConfig, now: Instant) -> bool {
        let until = self.open_until.load(Relaxed);
        if until == 0 {
            return true;
        }
        let now_ms = now_ms(now);
        if now_ms < until {
            return false;
        }
        // Probes whose outcome never came back (a client that went away) must not hold the
        // circuit half-open for good: after another open period, the probes start over.
        let stale = until + health.open_duration.as_millis() as u64;
        if now_ms >= stale
            && self
                .open_until
                .compare_exchange(until, now_ms, Relaxed, Relaxed)
                .is_ok()
        {
            self.probes_sent.store(0, Relaxed);
            self.probes_ok.store(0, Relaxed);
        }
        self.probes_sent
            .fetch_update(Relaxed, Relaxed, |n| {
                (n < health.half_open_probes).then_some(n + 1)
            })
            .is_ok()
    }

    /// Whether the circuit would let a request through now (no probe taken).
    pub fn would_pass(&self, health: &HealthConfig, now: Instant) -> bool {
        self.state_at(health, now) != CircuitState::Open
    }

    pub fn record_success(&self, health: &HealthConfig) {
        if self.open_until.load(Relaxed) == 0 {
            if self.failures.load(Relaxed) != 0 {
                self.failures.store(0, Relaxed);
            }
            return;
        }
        let ok = self.probes_ok.fetch_add(1, Relaxed) + 1;
        if ok >= health.half_open_probes {
            self.failures.store(0, Relaxed);
            self.open_until.store(0, Relaxed);
            log::info!("circuit closed after {ok} successful probes");
        }
    }

    pub fn record_failure(&self, health: &HealthConfig) {
        self.record_failure_at(health, Instant::now());
    }

    pub fn record_failure_at(&self, health: &HealthConfig, now: Instant) {
        let half_open = self.open_until.load(Relaxed) != 0;
        let failures = self.failures.fetch_add(1, Relaxed) + 1;
        if half_open || failures >= health.failure_threshold {
            self.open(health, now);
        }
    }

    /// Open (or re-open) the circuit for `open_duration` from `now`.
    pub fn open(&self, health: &HealthConfig, now: Instant) {
        let until = now_ms(now) + health.open_duration.as_millis() as u64;
        self.probes_sent.store(0, Relaxed);
        self.probes_ok.store(0, Relaxed);
        if self.open_until.swap(until, Relaxed) == 0 {
            self.opened.fetch_add(1, Relaxed);
        }
    }

    /// The background check found the upstream unreachable: the open period starts again.
    pub fn still_down(&self, health: &HealthConfig, now: Instant) {
        if self.open_until.load(Relaxed) != 0 {
            self.open(health, now);
        }
    }

    /// Time until an open circuit half-opens (zero when it is not open).
    pub fn reopens_in(&self, now: Instant) -> Duration {
        let until = self.open_until.load(Relaxed);
        Duration::from_millis(until.saturating_sub(now_ms(now)))
    }

    pub fn times_opened(&self) -> u64 {
        self.opened.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> HealthConfig {
        HealthConfig {
            failure_threshold: 3,
            open_duration: Duration::from_secs(10),
            half_open_probes: 2,
            ..HealthConfig::default()
        }
    }

    #[test]
    fn opens_after_the_threshold_half_opens_and_closes_on_successes() {
        let h = health();
        let b = Breaker::new();
        let t0 = Instant::now();
        b.record_failure_at(&h, t0);
        b.record_success(&h);
        b.record_failure_at(&h, t0);
        b.record_failure_at(&h, t0);
        assert_eq!(
            b.state_at(&h, t0),
            CircuitState::Closed,
            "a success reset the count"
        );
        b.record_failure_at(&h, t0);
        assert_eq!(b.state_at(&h, t0), CircuitState::Open);
        assert!(!b.try_pass(&h, t0 + Duration::from_secs(9)));
        let later = t0 + Duration::from_secs(10);
        assert_eq!(b.state_at(&h, later), CircuitState::HalfOpen);
        assert!(b.try_pass(&h, later) && b.try_pass(&h, later));
        assert!(!b.try_pass(&h, later), "only half_open_probes go through");
        b.record_success(&h);
        b.record_success(&h);
        assert_eq!(b.state_at(&h, later), CircuitState::Closed);
        assert_eq!(b.times_opened(), 1);
    }

    #[test]
    fn a_failed_probe_opens_it_again() {
        let h = health();
        let b = Breaker::new();
        let t0 = Instant::now();
        for _ in 0..3 {
            b.record_failure_at(&h, t0);
        }
        let later = t0 + Duration::from_secs(10);
        assert!(b.try_pass(&h, later));
        b.record_failure_at(&h, later);
        assert_eq!(b.state_at(&h, later), CircuitState::Open);
        assert_eq!(b.reopens_in(later), Duration::from_secs(10));
    }
}
