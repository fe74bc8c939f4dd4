//! Swapping a new config in (SIGHUP, `cc-relay reload`): validated first, pool state carried
//! across, what changed logged.

use std::path::Path;
use std::sync::Arc;

use super::logging::{init_logging, level_overridden};
use crate::config;
use crate::proxy::{RuntimeState, SharedState};

/// Load `path`, swap it in, carry pool state across, and log what changed.
/// Returns the error text (field paths, no secrets) when the new config is refused.
pub fn reload_from(state: &SharedState, path: &Path) -> Result<(), String> {
    let mut new_cfg = config::load_file(path).map_err(|e| e.to_string())?;
    let old = state.current.load_full();
    let changes = config::summarize_changes(&old.config, &new_cfg);
    config::keep_running_startup_settings(&mut new_cfg, &old.config);
    // The certificate is read again on every reload (renewed files under the same names);
    // one that does not load refuses the reload, and the current one keeps serving.
    if let Some(files) = &new_cfg.server.tls {
        super::tls::reload(files).map_err(|e| format!("server.tls: {e}"))?;
    }
    let logging_changed = new_cfg.logging != old.config.logging;
    if logging_changed {
        init_logging(&new_cfg.logging);
    }
    if new_cfg.routing.sticky_max_sessions != old.config.routing.sticky_max_sessions {
        // A table of another size: sessions stick again from their next request.
        let table = crate::routing::SessionTable::new(new_cfg.routing.sticky_max_sessions);
        state.sessions.store(Arc::new(table));
    }
    let next = RuntimeState::build(new_cfg, Some(&old));
    if let Some(store) = crate::shared::installed() {
        // New keys keep to the share the store's breaker calls for, like the others.
        store.apply_share(&next);
    }
    let generation = next.generation;
    state.current.store(Arc::new(next));
    state.last_reload_error.store(None);
    if changes.is_empty() {
        log::info!("config reloaded (generation {generation}): no changes");
    } else {
        log::info!("config reloaded (generation {generation}): {changes}");
    }
    if logging_changed && level_overridden() {
        log::warn!(
            "logging.* applied, but RUST_LOG is set and decides the level over logging.level"
        );
    }
    for setting in changes.needs_upgrade() {
        log::warn!(
            "{setting} changed but only takes effect through a binary upgrade \
             (`cc-relay upgrade`, or `cc-relay serve --upgrade` then SIGQUIT to the old process)"
        );
    }
    Ok(())
}
