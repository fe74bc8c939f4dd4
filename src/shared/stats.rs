//! What the store did, for `/status` and the metrics: counters and the admission latency.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use prometheus::core::{Collector, Metric};
use prometheus::{Histogram, HistogramOpts};
use serde::Serialize;

use crate::config::SharedStateConfig;

/// Admission round trips, 50 µs to 1 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.000075, 0.0001, 0.00015, 0.0002, 0.00025, 0.0003, 0.0004, 0.0005, 0.0006, 0.00075,
    0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

pub struct Stats {
    admitted: AtomicU64,
    refused: AtomicU64,
    local: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
    dropped: AtomicU64,
    op_failures: AtomicU64,
    breaker_opened: AtomicU64,
    latency: Histogram,
}

/// The store as `/status` shows it (never its URL: it may hold a password).
#[derive(Clone, Debug, Serialize)]
pub struct StoreStatus {
    pub namespace: String,
    /// A connection to the store exists (it may still be failing).
    pub connected: bool,
    /// `closed`: the store admits; `open`: each relay keeps to its share.
    pub breaker: &'static str,
    pub open_for_seconds: f64,
    /// Relays alive at the last heartbeat.
    pub relays: u32,
    /// This relay's share of each key now: 1 while the store admits, 1/N while it is open.
    pub share: f64,
    pub timeout_ms: u64,
    pub admitted: u64,
    pub refused: u64,
    /// Admissions made at the local share because the breaker was open.
    pub local_admissions: u64,
    pub errors: u64,
    pub timeouts: u64,
    /// Settlements and lessons dropped because the queue to the store was full.
    pub dropped: u64,
    /// Settlements and lessons the store failed after retries.
    pub op_failures: u64,
    pub breaker_opened: u64,
    /// Admission round trips, approximate (upper bounds of histogram buckets), in µs.
    pub latency_p50_us: Option<u64>,
    pub latency_p99_us: Option<u64>,
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            admitted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            local: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            op_failures: AtomicU64::new(0),
            breaker_opened: AtomicU64::new(0),
            latency: Histogram::with_opts(
                HistogramOpts::new(
                    crate::admin::metrics::SHARED_ADMISSION_SECONDS,
                    "Round trip of one admission through the shared store.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )
            .expect("valid histogram"),
        }
    }

    pub fn admitted(&self) {
        self.admitted.fetch_add(1, Relaxed);
    }
    pub fn refused(&self) {
        self.refused.fetch_add(1, Relaxed);
    }
    pub fn local(&self) {
        self.local.fetch_add(1, Relaxed);
    }
    pub fn error(&self) {
        self.errors.fetch_add(1, Relaxed);
    }
    pub fn timeout(&self) {
        self.timeouts.fetch_add(1, Relaxed);
    }
    pub fn dropped(&self) {
        self.dropped.fetch_add(1, Relaxed);
    }
    pub fn op_failed(&self) {
        self.op_failures.fetch_add(1, Relaxed);
    }
    pub fn breaker_opened(&self) {
        self.breaker_opened.fetch_add(1, Relaxed);
    }
    pub fn observe(&self, took: Duration) {
        self.latency.observe(took.as_secs_f64());
    }

    /// The latency histogram, for the metrics page.
    pub fn latency_families(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.latency.collect()
    }

    pub fn status(
        &self,
        connected: bool,
        closed: bool,
        open_for: Duration,
        relays: u32,
        share_divisor: f64,
        config: &SharedStateConfig,
    ) -> StoreStatus {
        let metric = self.latency.metric();
        let h = metric.get_histogram();
        let total = h.get_sample_count();
        let quantile = |q: f64| -> Option<u64> {
            if total == 0 {
                return None;
            }
            let rank = (total as f64 * q).ceil() as u64;
            h.get_bucket()
                .iter()
                .find(|b| b.cumulative_count() >= rank)
                .map(|b| (b.upper_bound() * 1e6).round() as u64)
                .or(Some(u64::MAX))
        };
        StoreStatus {
            namespace: config.namespace.clone(),
            connected,
            breaker: if closed { "closed" } else { "open" },
            open_for_seconds: open_for.as_secs_f64(),
            relays,
            share: 1.0 / share_divisor,
            timeout_ms: config.timeout.as_millis() as u64,
            admitted: self.admitted.load(Relaxed),
            refused: self.refused.load(Relaxed),
            local_admissions: self.local.load(Relaxed),
            errors: self.errors.load(Relaxed),
            timeouts: self.timeouts.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            op_failures: self.op_failures.load(Relaxed),
            breaker_opened: self.breaker_opened.load(Relaxed),
            latency_p50_us: quantile(0.5),
            latency_p99_us: quantile(0.99),
        }
    }
}
