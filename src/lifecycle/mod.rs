//! Server lifecycle, one concern per module (after `pingora-core/src/server/`):
//! `server` builds Pingora's server and listener from our config, `task` is the running relay's
//! background task (signals, reload, drain), `reload` swaps a new config in, `upgrade` starts
//! the successor binary, `signals` handles SIGHUP/SIGINT outside Pingora, `logging` sets up
//! (and on reload re-applies) the logger, `pidfile` and `systemd` say who serves, `dns` keeps
//! upstream addresses fresh, and `client` is the `reload` / `upgrade` commands' side.
//!
//! Signals: SIGHUP = reload the YAML (ours); SIGUSR2 = upgrade in place: start the binary found
//! at this process's path with `serve --upgrade`, then hand it the listeners (ours, built on
//! Pingora's); SIGQUIT = hand the listeners to a process started with `serve --upgrade`, then
//! drain (Pingora's); SIGTERM = stop accepting, drain within the grace period, exit 0
//! (Pingora's); SIGINT = exit now (ours: Pingora's fast shutdown can hang, see
//! [`exit_on_interrupt`]).
//!
//! Under systemd (`Type=notify`, `NotifyAccess=all`) the relay reports `READY=1` with its pid, so
//! the process an upgrade starts becomes the service's main process.

mod claude_code;
mod client;
mod dns;
mod first_bytes;
mod guard;
mod health;
mod logging;
mod pidfile;
mod reload;
mod server;
mod signals;
mod status;
mod systemd;
mod task;
mod tls;
mod upgrade;
mod watch;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pingora::server::configuration::Opt;
use pingora::server::{RunArgs, Server};
use pingora::services::background::background_service;

use crate::config::{self, ConfigError, ConfigSource};
use crate::proxy::{shared, Relay, RuntimeState};

pub use claude_code::{settings_path as claude_code_settings_path, ClaudeCodeSetup};
pub use client::{send_reload, send_upgrade};
pub use logging::{init_logging, open_log_file};
pub use reload::reload_from;
pub use server::{client_listener, runtime_conf, server_conf, worker_services};
pub use status::{render_table, StatusTarget};
pub use watch::watch;

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("pid file {path}: {source}")]
    PidFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no running cc-relay with pid {pid} (from {path}): {reason}")]
    NotRunning {
        pid: i32,
        path: PathBuf,
        reason: String,
    },
    #[error("the relay did not confirm the reload within {0:?}; check its log")]
    ReloadUnconfirmed(Duration),
    #[error("no new process took over within {0:?}; the old one keeps serving (see its log)")]
    UpgradeUnconfirmed(Duration),
    #[error("the relay rejected the new config and keeps serving the old one:\n{0}")]
    ReloadRejected(String),
    #[error("{0}")]
    Status(String),
    #[error("cannot listen on {addr}: {source}{hint}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
        hint: &'static str,
    },
}

/// Run the relay until it is told to stop. `config_path` as given on the command line.
pub fn serve(config_path: Option<&Path>, upgrade: bool) -> Result<(), LifecycleError> {
    // A SIGHUP that arrives before the reload task is listening must not kill the process
    // (the default action); the task's handler replaces this disposition once it runs.
    signals::ignore_sighup();

    let (cfg, source, warnings) = config::discover_with_warnings(config_path)?;
    init_logging(&cfg.logging);
    log::info!("config loaded from {source}");
    for w in warnings {
        log::warn!("{w}");
    }
    for p in &cfg.providers {
        log::info!(
            "provider {} ({}) -> {} with {} key(s){}",
            p.name,
            p.kind.name(),
            p.base_url,
            p.keys.len(),
            if p.keys.is_empty() {
                " (passthrough of client credentials)"
            } else {
                ""
            }
        );
    }

    if !upgrade {
        // An upgrade takes the listening socket from the running relay instead.
        server::check_can_listen(cfg.server.listen)?;
        if let Some(admin) = cfg.server.admin_listen {
            server::check_can_listen(admin)?;
        }
        if let Some(metrics) = cfg.metrics.listen.filter(|_| cfg.metrics.enabled) {
            server::check_can_listen(metrics)?;
        }
    }

    let reload_path = match &source {
        ConfigSource::File(path) => Some(path.clone()),
        ConfigSource::Embedded => None,
    };
    let listen = cfg.server.listen;
    let admin_listen = cfg.server.admin_listen;
    let metrics_listen = cfg.metrics.listen.filter(|_| cfg.metrics.enabled);
    let metrics_endpoint = cfg.metrics.endpoint.clone();
    // Checked here, so that a certificate that does not load is a config error; each worker
    // service then builds its TLS settings from the same files.
    let http2 = cfg.server.enable_http2;
    let client_tls = match &cfg.server.tls {
        Some(files) => {
            tls::settings(files, http2).map_err(|e| ConfigError::invalid("server.tls", e))?;
            Some(files.clone())
        }
        None => None,
    };
    let h2c = cfg.server.enable_http2 && cfg.server.tls.is_none();
    let pid_file = cfg.server.pid_file.clone();
    let upgrade_sock = cfg.server.upgrade_sock.clone();
    let conf = server_conf(&cfg);
    let store = cfg.shared_state.as_ref().map(crate::shared::install);
    let state = shared(RuntimeState::build(cfg, None));
    if let Some(store) = &store {
        // Nothing is shared until the store answers: meanwhile each key is kept to a share.
        store.apply_share(&state.current.load());
    }

    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let idle_timeout = state.current.load().config.server.idle_timeout;
    let workers = server::worker_services(
        "cc-relay",
        server.configuration.threads,
        || {
            let mut app =
                pingora::proxy::http_proxy(&server.configuration, Relay::new(state.clone()));
            if http2 {
                let mut options = pingora::apps::HttpServerOptions::default();
                // HTTP/2 with prior knowledge on the plain listener (HTTP/1.1 still served).
                options.h2c = h2c;
                // An HTTP/2 connection with no stream open is closed after the idle timeout,
                // as a kept-alive HTTP/1.1 connection is (the idle time at start-up: Pingora
                // reads it from the app, built once).
                options.h2_idle_timeout = Some(idle_timeout);
                app.server_options = Some(options);
            }
            guard::Guarded {
                inner: std::sync::Arc::new(app),
                state: state.clone(),
                // The guard makes the handshake itself: the listener stays plain TCP.
                tls: client_tls.as_ref().map(|files| {
                    std::sync::Arc::new(
                        tls::settings(files, http2)
                            .expect("the certificate loaded a moment ago")
                            .build(),
                    )
                }),
                connections: &crate::telemetry::connections::CLIENT,
            }
        },
        || client_listener(listen),
    );
    for worker in workers {
        server.add_service(worker);
    }
    if let Some(admin_listen) = admin_listen {
        server.add_service(guarded_service(
            "cc-relay admin",
            crate::admin::AdminApp::new(state.clone()),
            &state,
            admin_listen,
            &crate::telemetry::connections::ADMIN,
        ));
    }
    if let Some(listen) = metrics_listen {
        server.add_service(guarded_service(
            "cc-relay metrics",
            crate::admin::MetricsApp::new(state.clone(), metrics_endpoint),
            &state,
            listen,
            &crate::telemetry::connections::METRICS,
        ));
    }
    if let Some(store) = store {
        server.add_service(background_service(
            "cc-relay shared state",
            crate::shared::StoreTask {
                store,
                state: state.clone(),
            },
        ));
    }
    server.add_service(background_service(
        "cc-relay lifecycle",
        task::LifecycleTask {
            state,
            listen,
            config_path: reload_path,
            pid_file: pid_file.clone(),
            upgrade_sock,
            exe: upgrade::own_executable(),
        },
    ));
    server::exit_when_listeners_fail(listen, pid_file.clone());
    signals::exit_on_interrupt(pid_file.clone());
    server.run(RunArgs::default());
    pidfile::remove_pid_file_if_ours(&pid_file);
    log::info!("cc-relay stopped");
    Ok(())
}

/// A side listener (admin, metrics) with the client listener's guard: its connections counted
/// and capped apart, each request header under the same deadline and size cap.
fn guarded_service<A: pingora::apps::ServerApp + Send + Sync + 'static>(
    name: &str,
    app: A,
    state: &crate::proxy::SharedState,
    listen: SocketAddr,
    connections: &'static crate::telemetry::Connections,
) -> pingora::services::listening::Service<guard::Guarded<A>> {
    let mut service = pingora::services::listening::Service::new(
        name.to_owned(),
        guard::Guarded::plain(app, state.clone(), connections),
    );
    service.add_tcp(&listen.to_string());
    service
}
