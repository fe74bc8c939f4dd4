//! Upstream host names, re-resolved in the background (never on the request path).

use crate::proxy::SharedState;

/// Re-resolve upstream hosts: those without an address on every call, all of them when `all`.
pub(super) async fn refresh(state: &SharedState, all: bool) {
    let current = state.current.load_full();
    for p in &current.providers {
        if p.addrs.is_literal() || (!all && p.addrs.pick().is_some()) {
            continue;
        }
        match p.addrs.refresh().await {
            // A host that stays unresolvable is retried every few seconds: one line, then a
            // count every ten minutes.
            Err(e) => p.addrs.failures.occurred(|left_out| {
                log::warn!(
                    "re-resolving {} failed{}, keeping its previous addresses: {e} (logged again \
                     in ten minutes if it goes on)",
                    p.addrs.host(),
                    if left_out > 0 {
                        format!(" {} more times", left_out + 1)
                    } else {
                        String::new()
                    }
                )
            }),
            Ok(_) => {
                if let Some(left_out) = p.addrs.failures.ended() {
                    log::info!(
                        "{} resolves again (after {} more failed attempts)",
                        p.addrs.host(),
                        left_out
                    );
                }
            }
        }
    }
}
