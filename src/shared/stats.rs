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

/// What the store did, counted.
#[derive(Clone, Copy)]
pub enum Event {
    Admitted,
    Refused,
    /// Admitted at this relay's share because the breaker was open.
    Local,
    Error,
    Timeout,
    /// A settlement or lesson dropped because the queue to the store was full.
    Dropped,
    /// A settlement or lesson the store failed after retries.
    OpFailed,
    BreakerOpened,
    /// An admission the store granted after its request stopped waiting, given back at once.
    GivenBack,
    /// A script call carrying admissions and settlements.
    Call,
}
const EVENTS: usize = Event::Call as usize + 1;

pub struct Stats {
    counts: [AtomicU64; EVENTS],
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
    /// Admissions the store granted after their request had stopped waiting (a timeout), given
    /// back at once.
    pub given_back: u64,
    /// Script calls that carried admissions and settlements (several per call under load).
    pub calls: u64,
    /// Admission round trips, approximate (upper bounds of histogram buckets), in µs.
    pub latency_p50_us: Option<u64>,
    pub latency_p99_us: Option<u64>,
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            counts: [const { AtomicU64::new(0) }; EVENTS],
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

    pub fn count(&self, event: Event) {
        self.counts[event as usize].fetch_add(1, Relaxed);
    }

    fn get(&self, event: Event) -> u64 {
        self.counts[event as usize].load(Relaxed)
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
            admitted: self.get(Event::Admitted),
            refused: self.get(Event::Refused),
            local_admissions: self.get(Event::Local),
            errors: self.get(Event::Error),
            timeouts: self.get(Event::Timeout),
            dropped: self.get(Event::Dropped),
            op_failures: self.get(Event::OpFailed),
            breaker_opened: self.get(Event::BreakerOpened),
            given_back: self.get(Event::GivenBack),
            calls: self.get(Event::Call),
            latency_p50_us: quantile(0.5),
            latency_p99_us: quantile(0.99),
        }
    }
}
