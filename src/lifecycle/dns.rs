//! Upstream host names, re-resolved in the background (never on the request path).

use crate::proxy::SharedState;

/// Re-resolve upstream hosts: those without an address on every call, all of them when `all`.
pub(super) async fn refresh(state: &SharedState, all: bool) {
    let current = state.current.load_full();
    for p in &current.providers {
        if p.addrs.is_literal() || (!all && p.addrs.pick().is_some()) {
            continue;
        }
        if let Err(e) = p.addrs.refresh().await {
            log::warn!(
                "re-resolving {} failed, keeping its previous addresses: {e}",
                p.addrs.host()
            );
        }
    }
}
