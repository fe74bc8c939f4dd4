//! Prometheus metrics (`metrics.*`), named `cc_relay_*` after Prometheus' conventions (base
//! units in the name, `_total` counters). Labels carry provider names and key **ids**, never a
//! key; their cardinality is bounded by the config.
//!
//! Two kinds of metrics, so the request path takes no lock for them:
//! - events (requests, retries, tokens, latencies) are counters and histograms whose label
//!   handles a request resolves once per (provider, key) and then only increments atomics
//!   (`EventMetrics::for_key` caches them in the runtime state, built once per config);
//! - state (each key's limits, remaining budget, cooldown, in flight; each circuit; the config
//!   generation) is read from the live state when Prometheus scrapes ([`StateCollector`]), so
//!   it costs requests nothing.

use std::sync::atomic::Ordering;
use std::time::Duration;

use once_cell::sync::{Lazy, OnceCell};
use prometheus::core::Collector;
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::clients::budget::Period;
use crate::proxy::Shared;

/// Latency buckets (seconds): 1 ms to 10 min, for requests that stream for minutes.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
];
/// The relay's own share of a request: 10 µs to 100 ms.
const OVERHEAD_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1,
];

/// `shared_state`'s admission round trip (a histogram the store keeps, `crate::shared`).
pub const SHARED_ADMISSION_SECONDS: &str = "cc_relay_shared_admission_seconds";

/// How a request ended, for `cc_relay_requests_total{outcome}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream's answer went to the client (first attempt).
    Proxied,
    /// The upstream's answer went to the client after an attempt failed over or was retried.
    FailedOver,
    /// The relay answered 429 itself (every candidate out of capacity).
    Local429,
    /// The relay refused the request itself (bad body, auth, 404, 413, ...).
    ClientError,
    /// The relay answered for an upstream that failed (502, 504, 503).
    UpstreamError,
}

impl Outcome {
    const ALL: [Outcome; 5] = [
        Outcome::Proxied,
        Outcome::FailedOver,
        Outcome::Local429,
        Outcome::ClientError,
        Outcome::UpstreamError,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Outcome::Proxied => "proxied",
            Outcome::FailedOver => "failed_over",
            Outcome::Local429 => "local_429",
            Outcome::ClientError => "client_error",
            Outcome::UpstreamError => "upstream_error",
        }
    }
}

/// The event metrics of the process (one registry; kept across reloads).
pub struct EventMetrics {
    registry: Registry,
    requests: IntCounterVec,
    retries: IntCounterVec,
    tokens: IntCounterVec,
    duration: HistogramVec,
    ttfb: HistogramVec,
    overhead: Histogram,
    reloads: IntCounterVec,
    upstream_connections: IntCounterVec,
    reused_connection_retries: IntCounterVec,
    in_flight: IntGauge,
    access_log_dropped: IntCounter,
    client_requests: IntCounterVec,
    client_tokens: IntCounterVec,
    client_refusals: IntCounterVec,
}

/// The index of `status`'s class (1xx..5xx) in the handles' arrays.
fn status_class(status: u16) -> usize {
    usize::from((status / 100).clamp(1, 5)) - 1
}

/// Add `usage` to the counters of its four kinds (input, output, cache_read, cache_creation).
fn count_tokens(counters: &[IntCounter; 4], usage: &crate::usage::Usage) {
    let [input, output, cache_read, cache_creation] = counters;
    input.inc_by(usage.input_tokens);
    output.inc_by(usage.output_tokens);
    cache_read.inc_by(usage.cache_read_input_tokens);
    cache_creation.inc_by(usage.cache_creation_input_tokens);
}

/// The label handles of one client (`clients[].name`), resolved once.
pub struct ClientHandles {
    /// By status class (1xx..5xx).
    requests: [IntCounter; 5],
    /// input, output, cache_read, cache_creation.
    tokens: [IntCounter; 4],
}

impl ClientHandles {
    pub fn request(&self, status: u16) {
        self.requests[status_class(status)].inc();
    }

    pub fn tokens(&self, usage: &crate::usage::Usage) {
        count_tokens(&self.tokens, usage);
    }
}

/// A lazily resolved [`ClientHandles`].
#[derive(Default)]
pub struct ClientHandleCell(OnceCell<ClientHandles>);

impl ClientHandleCell {
    pub fn get(&self, client: &str) -> &ClientHandles {
        self.0.get_or_init(|| ClientHandles {
            requests: ["1xx", "2xx", "3xx", "4xx", "5xx"]
                .map(|class| METRICS.client_requests.with_label_values(&[client, class])),
            tokens: ["input", "output", "cache_read", "cache_creation"]
                .map(|kind| METRICS.client_tokens.with_label_values(&[client, kind])),
        })
    }
}

/// The label handles of one (provider, key) pair, resolved once.
pub struct KeyHandles {
    /// Indexed by outcome, then status class (1xx..5xx).
    requests: Vec<[IntCounter; 5]>,
    /// input, output, cache_read, cache_creation.
    tokens: [IntCounter; 4],
    duration: Histogram,
    ttfb: Histogram,
}

/// A provider's upstream connections (new, reused) and the reused ones that broke before an
/// answer, resolved once per provider.
#[derive(Default)]
pub struct ConnectionHandles(OnceCell<([IntCounter; 2], IntCounter)>);

impl ConnectionHandles {
    fn get(&self, provider: &str) -> &([IntCounter; 2], IntCounter) {
        self.0.get_or_init(|| {
            let connections = ["false", "true"].map(|reused| {
                METRICS
                    .upstream_connections
                    .with_label_values(&[provider, reused])
            });
            let stale = METRICS
                .reused_connection_retries
                .with_label_values(&[provider]);
            (connections, stale)
        })
    }

    pub fn record(&self, provider: &str, reused: bool) {
        self.get(provider).0[usize::from(reused)].inc();
    }

    /// A reused connection broke before the provider answered; the attempt goes again on a
    /// fresh one.
    pub fn stale(&self, provider: &str) {
        self.get(provider).1.inc();
    }
}

pub static METRICS: Lazy<EventMetrics> = Lazy::new(EventMetrics::new);

/// Requests answered before a provider was chosen (404, 401, 413, ...): provider and key `-`.
pub static UNROUTED: KeyHandleCell = KeyHandleCell(OnceCell::new());

impl EventMetrics {
    fn new() -> EventMetrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("registered once");
            c
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: &[f64]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                labels,
            )
            .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("registered once");
            h
        };
        let requests = counter(
            "cc_relay_requests_total",
            "Requests answered, by provider, key id, status class and outcome.",
            &["provider", "key", "status_class", "outcome"],
        );
        let retries = counter(
            "cc_relay_retries_total",
            "Attempts made again on another key or provider, by the provider that failed and why.",
            &["provider", "reason"],
        );
        let tokens = counter(
            "cc_relay_tokens_total",
            "Tokens the upstream reported, by provider, key id and kind.",
            &["provider", "key", "kind"],
        );
        let duration = histogram(
            "cc_relay_request_duration_seconds",
            "Time from the request's arrival to the end of its response.",
            &["provider"],
            LATENCY_BUCKETS,
        );
        let ttfb = histogram(
            "cc_relay_time_to_first_byte_seconds",
            "Time from the request's arrival to its response header.",
            &["provider"],
            LATENCY_BUCKETS,
        );
        let overhead = Histogram::with_opts(
            HistogramOpts::new(
                "cc_relay_overhead_seconds",
                "Time a proxied request spent in the relay itself: from its body read to its \
                 upstream request sent, plus from the upstream's response header to the \
                 client's (the client's upload and the upstream's work excluded).",
            )
            .buckets(OVERHEAD_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        registry
            .register(Box::new(overhead.clone()))
            .expect("registered once");
        let reloads = counter(
            "cc_relay_reloads_total",
            "Configuration reloads, by result.",
            &["result"],
        );
        let upstream_connections = counter(
            "cc_relay_upstream_connections_total",
            "Connections to upstreams an attempt went out on, by provider and whether it was \
             reused from the pool (a new one costs a TCP and TLS handshake).",
            &["provider", "reused"],
        );
        let reused_connection_retries = counter(
            "cc_relay_upstream_reused_connection_retries_total",
            "Attempts made again on a fresh connection because the reused one broke before the \
             provider answered (the provider had closed it, or a middlebox forgot it); not \
             counted as attempts nor as the provider's failures.",
            &["provider"],
        );
        let in_flight = IntGauge::new("cc_relay_requests_in_flight", "Proxied requests in flight.")
            .expect("valid metric");
        registry
            .register(Box::new(in_flight.clone()))
            .expect("registered once");
        let access_log_dropped = IntCounter::new(
            "cc_relay_access_log_dropped_total",
            "Access log lines dropped because the writer fell behind.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(access_log_dropped.clone()))
            .expect("registered once");
        let client_requests = counter(
            "cc_relay_client_requests_total",
            "Requests of a client (clients[].name) answered, by status class.",
            &["client", "status_class"],
        );
        let client_tokens = counter(
            "cc_relay_client_tokens_total",
            "Tokens the upstream reported for a client's requests, by kind.",
            &["client", "kind"],
        );
        let client_refusals = counter(
            "cc_relay_client_refusals_total",
            "A client's requests refused by its own limits, budgets or allow-lists, by the \
             limit (rpm_limit, itpm_limit, otpm_limit, max_concurrent, daily_token_budget, \
             monthly_token_budget, models, providers).",
            &["client", "limit"],
        );
        let build = IntGaugeVec::new(
            Opts::new("cc_relay_build_info", "The running build (value 1)."),
            &["version"],
        )
        .expect("valid metric");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        registry.register(Box::new(build)).expect("registered once");
        EventMetrics {
            registry,
            requests,
            retries,
            tokens,
            duration,
            ttfb,
            overhead,
            reloads,
            upstream_connections,
            reused_connection_retries,
            in_flight,
            access_log_dropped,
            client_requests,
            client_tokens,
            client_refusals,
        }
    }

    /// A client's request refused by its own `limit` (a config field name).
    pub fn client_refusal(&self, client: &str, limit: &str) {
        self.client_refusals
            .with_label_values(&[client, limit])
            .inc();
    }

    /// The handles of `key` (an id, or `-` for passthrough) of `provider`.
    pub fn for_key(&self, provider: &str, key: &str) -> KeyHandles {
        let requests = Outcome::ALL
            .iter()
            .map(|o| {
                ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|class| {
                    self.requests
                        .with_label_values(&[provider, key, class, o.as_str()])
                })
            })
            .collect();
        let tokens = ["input", "output", "cache_read", "cache_creation"]
            .map(|kind| self.tokens.with_label_values(&[provider, key, kind]));
        KeyHandles {
            requests,
            tokens,
            duration: self.duration.with_label_values(&[provider]),
            ttfb: self.ttfb.with_label_values(&[provider]),
        }
    }

    pub fn retry(&self, provider: &str, reason: &str) {
        self.retries.with_label_values(&[provider, reason]).inc();
    }

    pub fn reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.reloads.with_label_values(&[result]).inc();
    }

    pub fn observe_overhead(&self, overhead: Duration) {
        self.overhead.observe(overhead.as_secs_f64());
    }

    pub fn access_log_dropped(&self) {
        self.access_log_dropped.inc();
    }

    pub fn in_flight(&self) -> &IntGauge {
        &self.in_flight
    }

    /// The text exposition of every metric, the live state's included.
    pub fn render(&self, shared: &Shared) -> Vec<u8> {
        let mut families = self.registry.gather();
        families.extend(StateCollector { shared }.gather());
        // A gauge with no series this scrape (no client has a budget, no provider has keys)
        // is left out: the encoder refuses an empty family.
        families.retain(|f| !f.get_metric().is_empty());
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&families, &mut out)
            .expect("the text encoder writes to a Vec");
        out
    }
}

impl KeyHandles {
    pub fn request(&self, outcome: Outcome, status: u16) {
        let class = status_class(status);
        let row = Outcome::ALL.iter().position(|o| *o == outcome).unwrap_or(0);
        self.requests[row][class].inc();
    }

    pub fn tokens(&self, usage: &crate::usage::Usage) {
        count_tokens(&self.tokens, usage);
    }

    pub fn latency(&self, total: Duration, first_byte: Option<Duration>) {
        self.duration.observe(total.as_secs_f64());
        if let Some(t) = first_byte {
            self.ttfb.observe(t.as_secs_f64());
        }
    }
}

/// A lazily resolved [`KeyHandles`] (resolving takes the prometheus crate's lock once).
#[derive(Default)]
pub struct KeyHandleCell(OnceCell<KeyHandles>);

/// How a request the relay answered itself ended, by its status.
pub fn local_outcome(status: u16) -> Outcome {
    match status {
        429 => Outcome::Local429,
        500..=599 => Outcome::UpstreamError,
        _ => Outcome::ClientError,
    }
}

impl KeyHandleCell {
    pub fn get(&self, provider: &str, key: &str) -> &KeyHandles {
        self.0.get_or_init(|| METRICS.for_key(provider, key))
    }
}

/// The live state as gauges, read at scrape time.
struct StateCollector<'a> {
    shared: &'a Shared,
}

impl StateCollector<'_> {
    fn gather(&self) -> Vec<MetricFamily> {
        let state = self.shared.current.load();
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        let limit = gauge(
            "cc_relay_key_limit",
            "A key's limit per minute (configured or learned; 0 = unknown), by dimension.",
            &["provider", "key", "dimension"],
        );
        let remaining = gauge(
            "cc_relay_key_remaining",
            "What a key has left now, by dimension.",
            &["provider", "key", "dimension"],
        );
        let full_in = prometheus::GaugeVec::new(
            Opts::new(
                "cc_relay_key_reset_seconds",
                "Time until a key's dimension is full again (its reset; 0 when it is full or \
                 its limit unknown).",
            ),
            &["provider", "key", "dimension"],
        )
        .expect("valid metric");
        let cooldown = prometheus::GaugeVec::new(
            Opts::new(
                "cc_relay_key_cooldown_seconds",
                "Time until a cooling key is used again (0 when it is not cooling).",
            ),
            &["provider", "key"],
        )
        .expect("valid metric");
        let key_in_flight = gauge(
            "cc_relay_key_in_flight",
            "Requests in flight on a key.",
            &["provider", "key"],
        );
        let key_state = gauge(
            "cc_relay_key_state",
            "A key's state: 1 for the one it is in (available, cooling, disabled).",
            &["provider", "key", "state"],
        );
        let circuit = gauge(
            "cc_relay_provider_circuit_state",
            "A provider's circuit: 1 for the state it is in (closed, open, half_open).",
            &["provider", "state"],
        );
        let generation = IntGauge::new(
            "cc_relay_config_generation",
            "The running config's generation (1 at start, +1 per reload).",
        )
        .expect("valid metric");
        generation.set(state.generation as i64);
        for p in &state.providers {
            let name = p.name();
            let circuit_now = p.breaker.state(&state.config.health);
            for s in [
                crate::routing::CircuitState::Closed,
                crate::routing::CircuitState::Open,
                crate::routing::CircuitState::HalfOpen,
            ] {
                circuit
                    .with_label_values(&[name, s.as_str()])
                    .set(i64::from(s == circuit_now));
            }
            for k in p.pool.iter().flat_map(|pool| pool.keys()) {
                let s = k.snapshot();
                let id = s.id.as_str();
                for (dimension, d) in [
                    ("requests", s.requests),
                    ("input_tokens", s.input_tokens),
                    ("output_tokens", s.output_tokens),
                ] {
                    limit
                        .with_label_values(&[name, id, dimension])
                        .set(d.limit as i64);
                    remaining
                        .with_label_values(&[name, id, dimension])
                        .set(d.remaining as i64);
                    full_in
                        .with_label_values(&[name, id, dimension])
                        .set(d.full_in.as_secs_f64());
                }
                let cooling = s.cooling_for.unwrap_or_default();
                cooldown
                    .with_label_values(&[name, id])
                    .set(cooling.as_secs_f64());
                key_in_flight
                    .with_label_values(&[name, id])
                    .set(s.in_flight as i64);
                let now = if s.disabled {
                    "disabled"
                } else if s.cooling_for.is_some() {
                    "cooling"
                } else {
                    "available"
                };
                for st in ["available", "cooling", "disabled"] {
                    key_state
                        .with_label_values(&[name, id, st])
                        .set(i64::from(st == now));
                }
            }
        }
        let client_in_flight = gauge(
            "cc_relay_client_in_flight",
            "A client's requests in flight.",
            &["client"],
        );
        let budget_used = gauge(
            "cc_relay_client_budget_used_tokens",
            "Tokens a client used in the current UTC day or month (clients with a budget).",
            &["client", "period"],
        );
        let budget_limit = gauge(
            "cc_relay_client_budget_tokens",
            "A client's token budget per UTC day or month (0 = none).",
            &["client", "period"],
        );
        let calendar = crate::clients::budget::Calendar::now();
        for c in state.clients.iter() {
            let name = c.name();
            client_in_flight
                .with_label_values(&[name])
                .set(i64::from(c.quota.in_flight()));
            let Some(budget) = &c.budget else { continue };
            for (period, limit) in [
                (Period::Day, c.config.daily_token_budget),
                (Period::Month, c.config.monthly_token_budget),
            ] {
                let label = [name, period.as_str()];
                budget_limit.with_label_values(&label).set(limit as i64);
                budget_used
                    .with_label_values(&label)
                    .set(budget.used(period, &calendar) as i64);
            }
        }
        let in_flight = self.shared.in_flight.load(Ordering::Relaxed);
        METRICS.in_flight.set(in_flight as i64);
        let collectors: [&dyn Collector; 11] = [
            &client_in_flight,
            &budget_used,
            &budget_limit,
            &limit,
            &remaining,
            &full_in,
            &cooldown,
            &key_in_flight,
            &key_state,
            &circuit,
            &generation,
        ];
        let mut families: Vec<MetricFamily> = collectors.iter().flat_map(|c| c.collect()).collect();
        families.extend(connection_families());
        if let Some(store) = crate::shared::installed() {
            families.extend(shared_state_families(store));
        }
        families
    }
}

/// The client listener's connections: open now, and TLS handshakes that failed.
fn connection_families() -> Vec<MetricFamily> {
    let open = IntGauge::new(
        "cc_relay_client_connections_open",
        "Client connections open now (TLS ones from their first byte; server.max_connections \
         caps them).",
    )
    .expect("valid metric");
    open.set(crate::telemetry::connections::CLIENT.open() as i64);
    let failed = IntCounter::new(
        "cc_relay_tls_handshake_failures_total",
        "TLS handshakes on the client listener that failed or did not finish within \
         server.client_header_timeout_ms.",
    )
    .expect("valid metric");
    failed.inc_by(crate::telemetry::connections::CLIENT.handshake_failures());
    let mut families = open.collect();
    families.extend(failed.collect());
    families
}

/// `shared_state`: the store's connection, breaker, relays and admissions.
fn shared_state_families(store: &crate::shared::Store) -> Vec<MetricFamily> {
    let s = store.status();
    let gauge = |name: &str, help: &str, value: i64| {
        let g = IntGauge::new(name, help).expect("valid metric");
        g.set(value);
        g.collect()
    };
    let counter = IntCounterVec::new(
        Opts::new(
            "cc_relay_shared_admissions_total",
            "Admissions through the shared store, by outcome (admitted, refused; local: made \
             at this relay's share while the breaker was open; error, timeout: the store \
             failed).",
        ),
        &["outcome"],
    )
    .expect("valid metric");
    for (outcome, n) in [
        ("admitted", s.admitted),
        ("refused", s.refused),
        ("local", s.local_admissions),
        ("error", s.errors),
        ("timeout", s.timeouts),
    ] {
        counter.with_label_values(&[outcome]).inc_by(n);
    }
    let ops = IntCounterVec::new(
        Opts::new(
            "cc_relay_shared_ops_lost_total",
            "Settlements and lessons that never reached the store (dropped: queue full; \
             failed: after retries). Their reservations come back when their lease runs out.",
        ),
        &["reason"],
    )
    .expect("valid metric");
    ops.with_label_values(&["dropped"]).inc_by(s.dropped);
    ops.with_label_values(&["failed"]).inc_by(s.op_failures);
    let calls = IntCounter::new(
        "cc_relay_shared_calls_total",
        "Script calls to the shared store carrying admissions and settlements (a call carries \
         whatever a worker thread had waiting, so several per call under load).",
    )
    .expect("valid metric");
    calls.inc_by(s.calls);
    let given_back = IntCounter::new(
        "cc_relay_shared_given_back_total",
        "Admissions the shared store granted after their request had stopped waiting (timeout), \
         given back at once.",
    )
    .expect("valid metric");
    given_back.inc_by(s.given_back);
    let mut families = Vec::new();
    families.extend(calls.collect());
    families.extend(given_back.collect());
    families.extend(gauge(
        "cc_relay_shared_connected",
        "1 when a connection to the shared store exists.",
        i64::from(s.connected),
    ));
    families.extend(gauge(
        "cc_relay_shared_breaker_open",
        "1 while the shared store's breaker is open (each relay keeps to its share).",
        i64::from(s.breaker == "open"),
    ));
    families.extend(gauge(
        "cc_relay_shared_relays",
        "Relays alive at the last heartbeat.",
        i64::from(s.relays),
    ));
    let opened = IntCounter::new(
        "cc_relay_shared_breaker_opened_total",
        "Times the shared store's breaker opened.",
    )
    .expect("valid metric");
    opened.inc_by(s.breaker_opened);
    families.extend(opened.collect());
    families.extend(counter.collect());
    families.extend(ops.collect());
    families.extend(store.stats().latency_families());
    families
}
