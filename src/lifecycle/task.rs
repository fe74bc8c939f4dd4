//! The running relay's background task: pid file and readiness once listening, then SIGHUP
//! reloads, SIGUSR2 upgrades, drain on SIGQUIT/SIGTERM, DNS refresh.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::logging::init_logging;
use super::pidfile::{remove_pid_file_if_ours, write_pid_file};
use super::reload::reload_from;
use super::server::{wait_listening, LISTEN_WAIT};
use super::systemd::notify_systemd;
use super::{dns, health, upgrade};
use crate::proxy::SharedState;

/// How often host names of upstreams are resolved again.
const DNS_REFRESH: Duration = Duration::from_secs(60);

/// How often a host that has no address yet (e.g. DNS was down at start-up) is retried.
const DNS_RETRY: Duration = Duration::from_secs(5);

/// The background task of a running relay: pid file, SIGHUP reloads, SIGUSR2 upgrades, DNS
/// refresh.
pub(super) struct LifecycleTask {
    pub(super) state: SharedState,
    pub(super) listen: SocketAddr,
    pub(super) config_path: Option<PathBuf>,
    pub(super) pid_file: PathBuf,
    pub(super) upgrade_sock: PathBuf,
    pub(super) exe: PathBuf,
}

#[async_trait]
impl BackgroundService for LifecycleTask {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let signals = (|| {
            Ok::<_, std::io::Error>((
                signal(SignalKind::hangup())?,
                signal(SignalKind::user_defined2())?,
                signal(SignalKind::user_defined1())?,
                signal(SignalKind::quit())?,
                signal(SignalKind::terminate())?,
            ))
        })();
        let (mut hangup, mut usr2, mut usr1, mut quit, mut term) = match signals {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot listen for signals, reload and upgrade are off: {e}");
                return;
            }
        };
        // The pid file and systemd's READY say "this process serves": only once it does.
        if !wait_listening(self.listen).await {
            log::error!(
                "not listening on {} after {LISTEN_WAIT:?}; exiting",
                self.listen
            );
            std::process::exit(1);
        }
        let scheme = if self.state.current.load().config.server.tls.is_some() {
            "https"
        } else {
            "http"
        };
        log::info!(
            "cc-relay {} listening on {scheme}://{}",
            env!("CARGO_PKG_VERSION"),
            self.listen
        );
        if let Err(e) = write_pid_file(&self.pid_file) {
            log::warn!("{e}; `cc-relay reload` will not find this process");
        }
        notify_systemd(&format!("READY=1\nMAINPID={}", std::process::id()));
        let mut dns = tokio::time::interval(DNS_RETRY);
        dns.tick().await;
        let check_every = self
            .state
            .current
            .load()
            .config
            .health
            .health_check_interval;
        let mut health_check = tokio::time::interval(check_every);
        health_check.tick().await;
        let mut ticks: u32 = 0;
        loop {
            tokio::select! {
                // `Some` only: a signal stream yields `None` for ever once the runtime is
                // shutting down, which must not turn into a loop of reloads or upgrades.
                Some(()) = hangup.recv() => self.reload().await,
                // logrotate moved the log file away: open the configured one again.
                Some(()) = usr1.recv() => {
                    init_logging(&self.state.current.load().config.logging);
                    log::info!("SIGUSR1: log files reopened");
                }
                Some(()) = usr2.recv() => {
                    upgrade::hand_over(&self.exe, self.config_path.as_deref(), &self.upgrade_sock)
                        .await
                }
                // Pingora acts on these too; we only stop keeping connections alive.
                Some(()) = quit.recv() => self.state.draining.store(true, Ordering::Relaxed),
                Some(()) = term.recv() => self.state.draining.store(true, Ordering::Relaxed),
                _ = health_check.tick() => health::probe_open_circuits(&self.state).await,
                _ = dns.tick() => {
                    ticks = ticks.wrapping_add(1);
                    let all = ticks.is_multiple_of((DNS_REFRESH.as_secs() / DNS_RETRY.as_secs()) as u32);
                    dns::refresh(&self.state, all).await;
                }
                // Pingora's graceful shutdown (SIGTERM, or SIGQUIT handing over to an upgrade):
                // its broadcast can win the race with our own SIGTERM branch above, so it
                // marks the drain too. (SIGINT never gets here: `exit_on_interrupt` exits.)
                _ = shutdown.changed() => {
                    self.state.draining.store(true, Ordering::Relaxed);
                    break;
                }
            }
        }
        self.exit_when_drained().await;
    }
}

impl LifecycleTask {
    async fn reload(&self) {
        let Some(path) = self.config_path.clone() else {
            log::warn!("SIGHUP: the relay runs on its embedded default config; nothing to reload");
            return;
        };
        let state = self.state.clone();
        // File I/O and DNS resolution of new hosts: off the async workers.
        let outcome = tokio::task::spawn_blocking(move || reload_from(&state, &path)).await;
        crate::admin::metrics::METRICS.reload(matches!(outcome, Ok(Ok(()))));
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(message)) => {
                log::error!("config reload failed, still serving the previous config:\n{message}");
                self.state.last_reload_error.store(Some(Arc::new(message)));
            }
            Err(e) => log::error!("config reload task failed: {e}"),
        }
        self.state.reload_attempts.fetch_add(1, Ordering::Release);
    }

    /// Pingora's graceful shutdown sleeps the whole grace period even when nothing is left to
    /// serve. Once it has stopped accepting, exit as soon as no proxied request is in flight
    /// (the grace period stays the upper bound: Pingora ends the process then anyway).
    async fn exit_when_drained(&self) {
        loop {
            if self.state.in_flight.load(Ordering::Acquire) == 0 {
                // Let a response whose last bytes are being flushed finish.
                tokio::time::sleep(Duration::from_millis(200)).await;
                if self.state.in_flight.load(Ordering::Acquire) == 0 {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        log::info!("drained: no request in flight, exiting");
        remove_pid_file_if_ours(&self.pid_file);
        crate::admin::access_log::flush();
        crate::clients::store::flush();
        std::process::exit(0);
    }
}
