//! `shared_state`: key budgets and cooldowns shared by many relays through Redis or Valkey.

use std::time::Duration;

use redis::IntoConnectionInfo;

use super::raw::RawSharedState;
use super::types::{Secret, SharedStateConfig};
use super::validate::{non_negative, Ctx};

/// An admission waits this long for the store by default: on loopback or in one zone a
/// round trip is well under a millisecond, and a store slower than this is treated as down.
const DEFAULT_TIMEOUT_MS: i64 = 50;
/// A reservation nobody settles (its relay died) stops counting as in flight after this.
const DEFAULT_LEASE_SECONDS: i64 = 600;

pub(super) fn shared_state(raw: Option<RawSharedState>, c: &mut Ctx) -> Option<SharedStateConfig> {
    let raw = raw?;
    let url = match raw.redis_url.as_deref().map(str::trim) {
        None | Some("") => {
            c.error(
                "shared_state.redis_url",
                "is required: redis://[:password@]host:port[/db] or rediss:// for TLS",
            );
            return None;
        }
        Some(url) => url.to_owned(),
    };
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        c.error(
            "shared_state.redis_url",
            "must start with redis:// or rediss:// (TLS)",
        );
        return None;
    }
    // The URL may hold a password: the error says what is wrong, never the URL.
    if let Err(e) = url.as_str().into_connection_info() {
        c.error(
            "shared_state.redis_url",
            format!("is not a valid Redis URL ({:?})", e.kind()),
        );
        return None;
    }
    let timeout_ms = non_negative(
        raw.timeout_ms,
        DEFAULT_TIMEOUT_MS,
        "shared_state.timeout_ms",
        c,
    );
    if timeout_ms == 0 || timeout_ms > 10_000 {
        c.error(
            "shared_state.timeout_ms",
            format!("must be between 1 and 10000, got {timeout_ms}"),
        );
    }
    let namespace = match raw.namespace.as_deref().map(str::trim) {
        None | Some("") => "cc-relay".to_owned(),
        Some(ns)
            if ns
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "-_.:".contains(ch)) =>
        {
            ns.to_owned()
        }
        Some(_) => {
            c.error(
                "shared_state.namespace",
                "may hold letters, digits and - _ . : only",
            );
            "cc-relay".to_owned()
        }
    };
    let min_relays = non_negative(raw.min_relays, 1, "shared_state.min_relays", c);
    if !(1..=1000).contains(&min_relays) {
        c.error(
            "shared_state.min_relays",
            format!("must be between 1 and 1000, got {min_relays}"),
        );
    }
    let lease = non_negative(
        raw.lease_seconds,
        DEFAULT_LEASE_SECONDS,
        "shared_state.lease_seconds",
        c,
    );
    if lease == 0 {
        c.error("shared_state.lease_seconds", "must be at least 1");
    }
    Some(SharedStateConfig {
        redis_url: Secret::new(url),
        timeout: Duration::from_millis(timeout_ms.clamp(1, 10_000) as u64),
        namespace,
        min_relays: min_relays.clamp(1, 1000) as u32,
        lease: Duration::from_secs(lease.max(1) as u64),
    })
}
