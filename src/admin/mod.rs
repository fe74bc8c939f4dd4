//! The admin side: the operational endpoints (`/health`, `/status`; next `/metrics` and the
//! status page), rendered from the runtime state without touching the request path's locks.
//! They are served on the client listener (routed by the proxy's intake, behind the relay's
//! credential except `/health`) and, with `server.admin_listen`, on a listener of their own
//! ([`AdminApp`], a Pingora `ServeHttp` service) with the same authentication.

pub mod access_log;
pub mod activity;
mod app;
pub mod metrics;
pub mod ui;

use std::sync::atomic::Ordering;

use bytes::Bytes;

pub use app::{route_path, AdminApp, MetricsApp};

use crate::clients::budget::Period;
use crate::pool::{DimensionSnapshot, KeySnapshot};
use crate::proxy::{ProviderRuntime, RuntimeState, Shared};

/// `GET /health` (no auth): liveness and the config generation, nothing else. Why a reload
/// failed (which may quote the file) is in `/status`, behind the relay's credential.
pub fn health_body(state: &RuntimeState) -> Bytes {
    Bytes::from(format!(
        "{{\"status\":\"ok\",\"config_generation\":{}}}",
        state.generation
    ))
}

/// `GET /status`: every provider's keys by id with their live budgets, and how the last
/// reload went. Never a secret.
/// Each client's limits and what is left of them, its requests in flight and its budgets.
fn clients_status(state: &RuntimeState) -> Vec<serde_json::Value> {
    let calendar = crate::clients::budget::Calendar::now();
    let now = crate::pool::clock_ns(std::time::Instant::now());
    state
        .clients
        .iter()
        .map(|c| {
            let level = |(limit, remaining): (u64, u64)| {
                serde_json::json!({"limit": limit, "remaining": (limit > 0).then_some(remaining)})
            };
            let [requests, input, output] = c.quota.levels(now);
            let budget = |period: Period, limit: u64| {
                let budget = c.budget.as_ref().filter(|_| limit > 0)?;
                let (_, resets_at) = calendar.reset(period);
                Some(serde_json::json!({
                    "limit": limit,
                    "used": budget.used(period, &calendar),
                    "resets_at": resets_at,
                }))
            };
            serde_json::json!({
                "name": c.name(),
                "in_flight": c.quota.in_flight(),
                "max_concurrent": c.config.max_concurrent,
                "requests": level(requests),
                "input_tokens": level(input),
                "output_tokens": level(output),
                "daily_budget": budget(Period::Day, c.config.daily_token_budget),
                "monthly_budget": budget(Period::Month, c.config.monthly_token_budget),
                "models": c.config.models,
                "providers": c.config.providers,
            })
        })
        .collect()
}

pub fn status_body(state: &RuntimeState, shared: &Shared) -> Bytes {
    let providers: Vec<_> = state
        .providers
        .iter()
        .map(|p| {
            let keys: Vec<_> = key_snapshots(p)
                .map(|s| {
                    serde_json::json!({
                        "id": s.id,
                        "priority": s.priority,
                        "weight": s.weight,
                        "disabled": s.disabled,
                        "forbidden_strikes": s.forbidden_strikes,
                        "cooling_down_ms": s.cooling_for.map(|d| d.as_millis() as u64),
                        "in_flight": s.in_flight,
                        "requests": dimension(&s.requests),
                        "input_tokens": dimension(&s.input_tokens),
                        "output_tokens": dimension(&s.output_tokens),
                    })
                })
                .collect();
            serde_json::json!({
                "name": p.config.name,
                "type": p.config.kind.name(),
                "enabled": p.config.enabled,
                "base_url": p.config.base_url.to_string(),
                "passthrough": p.pool.is_none(),
                "priority": p.config.priority,
                "weight": p.config.weight,
                "circuit": p.breaker.state(&state.config.health).as_str(),
                "in_flight": p.in_flight.load(Ordering::Relaxed),
                "strategy": p.pool.as_ref().map(|pool| pool.strategy().as_str()),
                "keys_available": p.pool.as_ref().map(|pool| pool.available()),
                "keys": keys,
            })
        })
        .collect();
    let now = activity::unix_now();
    let recent_errors = shared.activity.recent_errors();
    let recent_errors: Vec<&activity::ErrorRecord> = recent_errors.iter().map(|e| &**e).collect();
    Bytes::from(
        serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "now_ms": now.as_millis() as u64,
            "config_generation": state.generation,
            "routing": {"strategy": state.config.routing.strategy.as_str()},
            "client_connections": {
                "open": crate::telemetry::connections::CLIENT.open(),
                "tls_handshake_failures": crate::telemetry::connections::CLIENT.handshake_failures(),
                "limit": state.config.server.max_connections,
            },
            "requests_unsettled": crate::proxy::unsettled_requests(),
            "buffered_body_bytes": {
                "held": crate::proxy::buffered_body_bytes(),
                "limit": state.config.server.max_buffered_body_bytes,
                "per_address_limit": state.config.server.max_buffered_body_bytes_per_address,
            },
            "reload": {
                "attempts": shared.reload_attempts.load(Ordering::Relaxed),
                "last_error": shared.last_reload_error.load().as_deref(),
            },
            "providers": providers,
            "clients": clients_status(state),
            "activity": {
                "slot_seconds": activity::SLOT_SECS,
                "slots": shared.activity.slots(now.as_secs()),
            },
            "recent_errors": recent_errors,
            "shared_state": crate::shared::installed().map(|store| store.status()),
        })
        .to_string(),
    )
}

/// One budget dimension of a key in `/status`.
fn dimension(d: &DimensionSnapshot) -> serde_json::Value {
    serde_json::json!({
        "limit": d.limit,
        "remaining": d.remaining,
        "reset_in_ms": d.full_in.as_millis() as u64,
    })
}

/// The live state of each key of `provider`'s pool (none for passthrough).
fn key_snapshots(provider: &ProviderRuntime) -> impl Iterator<Item = KeySnapshot> + '_ {
    provider
        .pool
        .iter()
        .flat_map(|pool| pool.keys())
        .map(|k| k.snapshot())
}

/// `GET /v1/providers`: the Go relay's shape (`{"object":"list","data":[{name, type, base_url,
/// models, active}]}`, enabled providers in config order), with each provider's circuit and its
/// keys' availability by id added. Never a key.
pub fn providers_body(state: &RuntimeState) -> Bytes {
    let health = &state.config.health;
    let data: Vec<_> = state
        .providers
        .iter()
        .filter(|p| p.config.enabled)
        .map(|p| {
            let circuit = p.breaker.state(health);
            let keys: Vec<_> = key_snapshots(p)
                .map(|s| {
                    serde_json::json!({
                        "id": s.id,
                        "available": !s.disabled && s.cooling_for.is_none(),
                    })
                })
                .collect();
            serde_json::json!({
                "name": p.config.name,
                "type": p.config.kind.name(),
                "base_url": p.config.base_url.to_string(),
                "models": p.config.models,
                "enabled": p.config.enabled,
                "active": circuit != crate::routing::CircuitState::Open,
                "health": circuit.as_str(),
                "priority": p.config.priority,
                "weight": p.config.weight,
                "keys_available": p.pool.as_ref().map(|pool| pool.available()),
                "keys": keys,
            })
        })
        .collect();
    Bytes::from(serde_json::json!({"object": "list", "data": data}).to_string())
}
