//! The background health check (`health.health_check`): providers whose circuit is open are
//! probed with a TCP connection to their address — no request, so no tokens and no key budget
//! are spent. While the upstream does not accept connections, its circuit's open period starts
//! over, so real requests are not sent to it as half-open probes; once it accepts them, the
//! circuit half-opens when its open period ends and real requests decide.

use std::time::{Duration, Instant};

use crate::proxy::SharedState;

/// How long one probe may take to connect.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) async fn probe_open_circuits(state: &SharedState) {
    let current = state.current.load_full();
    let health = &current.config.health;
    if !health.health_check {
        return;
    }
    for provider in &current.providers {
        if provider.breaker.would_pass(health, Instant::now()) {
            continue;
        }
        let reachable = match provider.addrs.pick() {
            Some(addr) => matches!(
                tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr)).await,
                Ok(Ok(_))
            ),
            None => false,
        };
        if !reachable {
            log::debug!(
                "health check: {} does not accept connections; its circuit stays open",
                provider.name()
            );
            provider.breaker.still_down(health, Instant::now());
        }
    }
}
