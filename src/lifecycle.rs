//! Server lifecycle: building Pingora's server from our config, the in-process config reload on
//! SIGHUP (Pingora has no hook for it), the pid file, and the `reload` client command.
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

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};

use crate::config::{self, Config, ConfigError, ConfigSource};
use crate::proxy::{shared, Relay, RuntimeState, SharedState};

/// Pingora crates whose debug output includes raw request headers.
const PINGORA_MODULES: &[&str] = &[
    "pingora_core",
    "pingora_proxy",
    "pingora_pool",
    "pingora_http",
];

/// How often host names of upstreams are resolved again.
const DNS_REFRESH: Duration = Duration::from_secs(60);

/// How often a host that has no address yet (e.g. DNS was down at start-up) is retried.
const DNS_RETRY: Duration = Duration::from_secs(5);

/// How long start-up waits for Pingora's listener to accept connections (Pingora retries a
/// bind for a while before giving up).
const LISTEN_WAIT: Duration = Duration::from_secs(60);

/// How long an in-place upgrade waits for the new process to be ready for the listeners.
const UPGRADE_WAIT: Duration = Duration::from_secs(30);

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
    #[error("cannot listen on {addr}: {source}{hint}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
        hint: &'static str,
    },
}

/// Bind `listen` once, before Pingora does and before anything is claimed (the pid file): a
/// port that is taken or not ours to bind is a clear error and a non-zero exit, not a process
/// that logs "listening", overwrites another relay's pid file and lives on without a listener.
fn check_can_listen(listen: SocketAddr) -> Result<(), LifecycleError> {
    std::net::TcpListener::bind(listen)
        .map(drop)
        .map_err(|source| LifecycleError::Listen {
            addr: listen,
            hint: match source.kind() {
                std::io::ErrorKind::AddrInUse => {
                    " (another process, perhaps another cc-relay, is listening there)"
                }
                std::io::ErrorKind::PermissionDenied => {
                    " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
                }
                _ => "",
            },
            source,
        })
}

/// Pingora builds its listeners inside a service task and panics there when it cannot (after
/// retrying for a while); the rest of the process would live on without a listener. Should
/// that happen after `check_can_listen` (the port taken in between), end the process.
fn exit_when_listeners_fail(listen: SocketAddr, pid_file: PathBuf) {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("Failed to build listeners") {
            log::error!("cannot listen on {listen}: {message}; exiting");
            remove_pid_file_if_ours(&pid_file);
            std::process::exit(1);
        }
    }));
}

/// Pingora's server settings from ours: one config file for the user.
pub fn server_conf(cfg: &Config) -> ServerConf {
    let s = &cfg.server;
    ServerConf {
        grace_period_seconds: Some(s.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(s.graceful_shutdown_timeout.as_secs()),
        pid_file: s.pid_file.display().to_string(),
        upgrade_sock: s.upgrade_sock.display().to_string(),
        ..runtime_conf(s.threads)
    }
}

/// How the relay runs Pingora, apart from its config: also the settings of the bare Pingora
/// proxy the benchmarks compare it with (`examples/bare_pingora.rs`), so the two cannot drift.
pub fn runtime_conf(threads: usize) -> ServerConf {
    ServerConf {
        threads: threads.max(1),
        // One single-threaded runtime per thread, each connection kept on the thread it was
        // given (like nginx workers): no work-stealing wake-ups between threads.
        work_stealing: false,
        ..ServerConf::default()
    }
}

/// The client listener as the relay opens it (and the benchmarks' bare Pingora proxy).
pub fn client_listener(listen: SocketAddr) -> pingora::listeners::ListenerConfig {
    // Pingora gives every client connection a 64 KiB read buffer by default, zero-filled and so
    // resident even while the connection idles. Requests are parsed into Pingora's own
    // buffers anyway: read straight from the socket.
    pingora::listeners::ListenerConfig::tcp(listen.to_string())
        .l4_buffer(pingora::listeners::L4BufferSettings::new(0, 1460))
}

/// Run the relay until it is told to stop. `config_path` as given on the command line.
pub fn serve(config_path: Option<&Path>, upgrade: bool) -> Result<(), LifecycleError> {
    // A SIGHUP that arrives before the reload task is listening must not kill the process
    // (the default action); the task's handler replaces this disposition once it runs.
    ignore_sighup();

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
            p.kind.as_str(),
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
        check_can_listen(cfg.server.listen)?;
    }

    let reload_path = match &source {
        ConfigSource::File(path) => Some(path.clone()),
        ConfigSource::Embedded => None,
    };
    let listen = cfg.server.listen;
    let pid_file = cfg.server.pid_file.clone();
    let upgrade_sock = cfg.server.upgrade_sock.clone();
    let conf = server_conf(&cfg);
    let state = shared(RuntimeState::build(cfg, None));

    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        Relay::new(state.clone()),
        "cc-relay",
    );
    proxy.add_listener(client_listener(listen));
    server.add_service(proxy);
    server.add_service(background_service(
        "cc-relay lifecycle",
        LifecycleTask {
            state,
            listen,
            config_path: reload_path,
            pid_file: pid_file.clone(),
            upgrade_sock,
            exe: own_executable(),
        },
    ));
    exit_when_listeners_fail(listen, pid_file.clone());
    exit_on_interrupt(pid_file.clone());
    server.run(RunArgs::default());
    remove_pid_file_if_ours(&pid_file);
    log::info!("cc-relay stopped");
    Ok(())
}

fn ignore_sighup() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: SIG_IGN installs no handler code; nothing else in the process relies on the
    // previous disposition at this point of start-up.
    unsafe {
        let _ = signal(Signal::SIGHUP, SigHandler::SigIgn);
    }
}

/// SIGINT means "exit now", and Pingora's fast shutdown does not always manage it: with
/// `work_stealing: false` it joins one thread per runtime, and a listener whose I/O driver has
/// already been shut down on another thread spins on "Accept() failed ... being shutdown" without
/// yielding, so that join can wait for ever while the log fills the disk (seen under load in
/// valgrind). A thread of our own, outside Pingora's runtimes, ends the process instead.
fn exit_on_interrupt(pid_file: PathBuf) {
    let wait_for_interrupt = || -> std::io::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        runtime.block_on(async {
            signal(SignalKind::interrupt())?.recv().await;
            Ok(())
        })
    };
    let watcher = std::thread::Builder::new()
        .name("cc-relay-sigint".into())
        .spawn(move || match wait_for_interrupt() {
            Ok(()) => {
                log::info!("SIGINT: exiting now");
                remove_pid_file_if_ours(&pid_file);
                std::process::exit(0);
            }
            Err(e) => log::warn!("SIGINT is left to Pingora: {e}"),
        });
    if let Err(e) = watcher {
        log::warn!("SIGINT is left to Pingora: {e}");
    }
}

/// Set up `log` from `logging`; `RUST_LOG` overrides the level.
pub fn init_logging(logging: &config::LoggingConfig) {
    let mut builder = env_logger::Builder::new();
    builder.parse_filters(&logging.level);
    let rust_log = std::env::var("RUST_LOG").unwrap_or_default();
    // Pingora's debug logs print whole upstream request headers, the injected API key
    // included: cap them at info unless RUST_LOG names a pingora module on purpose.
    if !rust_log.contains("pingora") {
        let cap = logging
            .level
            .parse::<log::LevelFilter>()
            .unwrap_or(log::LevelFilter::Info)
            .min(log::LevelFilter::Info);
        for module in PINGORA_MODULES {
            builder.filter_module(module, cap);
        }
    }
    builder.parse_filters(&rust_log);
    builder.target(if logging.output == "stdout" {
        env_logger::Target::Stdout
    } else {
        env_logger::Target::Stderr
    });
    if logging.format == "json" {
        builder.format(|buf, record| {
            let line = serde_json::json!({
                "ts": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
                "level": record.level().as_str(),
                "target": record.target(),
                "msg": record.args().to_string(),
            });
            writeln!(buf, "{line}")
        });
    }
    let logger = BenignPingoraErrors(builder.build());
    let max_level = logger.0.filter();
    // A second init (tests, `reload` after `serve` in one process) keeps the first logger.
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(max_level);
    }
}

/// Pingora messages logged at ERROR that are no error of the relay's and nothing an operator
/// can act on; they go out at DEBUG instead, so that an ERROR line under normal load means
/// something.
///
/// "failed to acquire reusable stream": with `work_stealing: false` and more than one thread,
/// a pooled upstream connection taken on one thread can still be referenced for a moment by its
/// idle watcher on another; Pingora then drops it and connects afresh, and the request goes on
/// unharmed (about 1 request in 400 under a saturating load here; never with one thread).
const BENIGN_PINGORA_ERRORS: &[(&str, &str)] = &[(
    "pingora_core::connectors",
    "failed to acquire reusable stream",
)];

struct BenignPingoraErrors(env_logger::Logger);

impl log::Log for BenignPingoraErrors {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &log::Record) {
        if record.level() == log::Level::Error {
            let message = record.args().as_str();
            if BENIGN_PINGORA_ERRORS
                .iter()
                .any(|&(target, text)| record.target() == target && message == Some(text))
            {
                let demoted = log::Record::builder()
                    .args(*record.args())
                    .level(log::Level::Debug)
                    .target(record.target())
                    .module_path(record.module_path())
                    .file(record.file())
                    .line(record.line())
                    .build();
                if self.0.enabled(demoted.metadata()) {
                    self.0.log(&demoted);
                }
                return;
            }
        }
        self.0.log(record);
    }

    fn flush(&self) {
        self.0.flush();
    }
}

/// The path this process was started from. Not `/proc/self/exe`: after the binary is replaced
/// on disk that names the deleted old file, and an upgrade must start the new one.
fn own_executable() -> PathBuf {
    let arg0 = PathBuf::from(std::env::args_os().next().unwrap_or_default());
    if arg0.components().count() > 1 {
        std::path::absolute(&arg0).unwrap_or(arg0)
    } else {
        // Started through $PATH: the running image's path is the best we know.
        std::env::current_exe().unwrap_or(arg0)
    }
}

/// The background task of a running relay: pid file, SIGHUP reloads, SIGUSR2 upgrades, DNS
/// refresh.
struct LifecycleTask {
    state: SharedState,
    listen: SocketAddr,
    config_path: Option<PathBuf>,
    pid_file: PathBuf,
    upgrade_sock: PathBuf,
    exe: PathBuf,
}

#[async_trait]
impl BackgroundService for LifecycleTask {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let signals = (|| {
            Ok::<_, std::io::Error>((
                signal(SignalKind::hangup())?,
                signal(SignalKind::user_defined2())?,
                signal(SignalKind::quit())?,
                signal(SignalKind::terminate())?,
            ))
        })();
        let (mut hangup, mut usr2, mut quit, mut term) = match signals {
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
        log::info!(
            "cc-relay {} listening on http://{}",
            env!("CARGO_PKG_VERSION"),
            self.listen
        );
        if let Err(e) = write_pid_file(&self.pid_file) {
            log::warn!("{e}; `cc-relay reload` will not find this process");
        }
        notify_systemd(&format!("READY=1\nMAINPID={}", std::process::id()));
        let mut dns = tokio::time::interval(DNS_RETRY);
        dns.tick().await;
        let mut ticks: u32 = 0;
        loop {
            tokio::select! {
                // `Some` only: a signal stream yields `None` for ever once the runtime is
                // shutting down, which must not turn into a loop of reloads or upgrades.
                Some(()) = hangup.recv() => self.reload().await,
                Some(()) = usr2.recv() => self.upgrade().await,
                // Pingora acts on these too; we only stop keeping connections alive.
                Some(()) = quit.recv() => self.state.draining.store(true, Ordering::Relaxed),
                Some(()) = term.recv() => self.state.draining.store(true, Ordering::Relaxed),
                _ = dns.tick() => {
                    ticks = ticks.wrapping_add(1);
                    let all = ticks.is_multiple_of((DNS_REFRESH.as_secs() / DNS_RETRY.as_secs()) as u32);
                    self.refresh_dns(all).await;
                }
                _ = shutdown.changed() => break,
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

    /// Start the binary at our own path with `serve --upgrade`; once it waits on the upgrade
    /// socket, SIGQUIT ourselves so Pingora hands it the listeners and we drain.
    async fn upgrade(&self) {
        // A socket file left by an earlier upgrade would look like the new process waiting.
        let _ = std::fs::remove_file(&self.upgrade_sock);
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.arg("serve").arg("--upgrade");
        if let Some(path) = &self.config_path {
            cmd.arg("--config").arg(path);
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                log::error!("upgrade: cannot start {}: {e}", self.exe.display());
                return;
            }
        };
        log::info!(
            "upgrade: started {} (pid {}), waiting for it to take the listeners",
            self.exe.display(),
            child.id().unwrap_or(0)
        );
        let deadline = tokio::time::Instant::now() + UPGRADE_WAIT;
        while !self.upgrade_sock.exists() {
            if let Ok(Some(status)) = child.try_wait() {
                log::error!(
                    "upgrade: the new process exited ({status}) before taking over; still serving"
                );
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                log::error!("upgrade: the new process did not get ready in {UPGRADE_WAIT:?}; stopping it, still serving");
                let _ = child.kill().await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The new process outlives us: let it go rather than reap it.
        drop(child);
        use nix::sys::signal::{raise, Signal};
        if let Err(e) = raise(Signal::SIGQUIT) {
            log::error!("upgrade: cannot hand over the listeners: {e}");
        }
    }

    /// Pingora's graceful shutdown sleeps the whole grace period even when nothing is left to
    /// serve. Once it has stopped accepting, exit as soon as no proxied request is in flight
    /// (the grace period stays the upper bound: Pingora ends the process then anyway).
    async fn exit_when_drained(&self) {
        if !self.state.draining.load(Ordering::Relaxed) {
            return; // SIGINT: `exit_on_interrupt` ends the process
        }
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
        std::process::exit(0);
    }

    /// Re-resolve upstream hosts: those without an address on every call, all of them when
    /// `all`.
    async fn refresh_dns(&self, all: bool) {
        let current = self.state.current.load_full();
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
}

/// Load `path`, swap it in, carry pool state across, and log what changed.
/// Returns the error text (field paths, no secrets) when the new config is refused.
pub fn reload_from(state: &SharedState, path: &Path) -> Result<(), String> {
    let new_cfg = config::load_file(path).map_err(|e| e.to_string())?;
    let old = state.current.load_full();
    let changes = config::summarize_changes(&old.config, &new_cfg);
    let needs_upgrade = changes.needs_upgrade();
    let mut new_cfg = new_cfg;
    // Settings bound at start-up keep their running values until an upgrade.
    new_cfg.server.listen = old.config.server.listen;
    new_cfg.server.threads = old.config.server.threads;
    new_cfg.server.pid_file = old.config.server.pid_file.clone();
    new_cfg.server.upgrade_sock = old.config.server.upgrade_sock.clone();
    let next = RuntimeState::build(new_cfg, Some(&old));
    let generation = next.generation;
    state.current.store(Arc::new(next));
    state.last_reload_error.store(None);
    if changes.is_empty() {
        log::info!("config reloaded (generation {generation}): no changes");
    } else {
        log::info!("config reloaded (generation {generation}): {changes}");
    }
    for setting in needs_upgrade {
        log::warn!(
            "{setting} changed but only takes effect through a binary upgrade \
             (`cc-relay serve --upgrade`, then SIGQUIT to the old process)"
        );
    }
    Ok(())
}

/// Wait until `listen` accepts a connection (our listener: `check_can_listen` found the port
/// free, or an upgrade handed us the socket).
async fn wait_listening(listen: SocketAddr) -> bool {
    let addr = loopback_of(listen);
    let deadline = tokio::time::Instant::now() + LISTEN_WAIT;
    while tokio::time::Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Tell systemd (when it started us with `Type=notify`) about our state. Silent otherwise.
fn notify_systemd(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    use std::os::unix::net::UnixDatagram;
    let sent = UnixDatagram::unbound().and_then(|sock| {
        let bytes = socket.as_encoded_bytes();
        match bytes.strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                sock.send_to_addr(state.as_bytes(), &addr)
            }
            None => sock.send_to(state.as_bytes(), &socket),
        }
    });
    if let Err(e) = sent {
        log::warn!("could not notify systemd: {e}");
    }
}

fn write_pid_file(path: &Path) -> Result<(), LifecycleError> {
    std::fs::write(path, format!("{}\n", std::process::id())).map_err(|source| {
        LifecycleError::PidFile {
            path: path.to_owned(),
            source,
        }
    })
}

/// After an upgrade the new process owns the pid file: only remove it if it still names us.
fn remove_pid_file_if_ours(path: &Path) {
    if read_pid(path).ok() == Some(std::process::id() as i32) {
        let _ = std::fs::remove_file(path);
    }
}

fn read_pid(path: &Path) -> Result<i32, LifecycleError> {
    let text = std::fs::read_to_string(path).map_err(|source| LifecycleError::PidFile {
        path: path.to_owned(),
        source,
    })?;
    text.trim().parse().map_err(|_| LifecycleError::PidFile {
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not a pid"),
    })
}

/// `cc-relay reload`: validate the file, signal the running relay, wait for it to confirm.
pub fn send_reload(config_path: &Path) -> Result<String, LifecycleError> {
    // Refuse locally first: the error then names the field without touching the server.
    let cfg = config::load_file(config_path)?;
    let pid_file = &cfg.server.pid_file;
    let pid = read_pid(pid_file)?;
    let addr = loopback_of(cfg.server.listen);
    let credential = client_credential(&cfg.server.auth);
    // `None` when the running relay does not take this file's credential yet (the reload
    // changes it): then the first answer that does take it is the reload landing.
    let before = reload_state(addr, credential.as_ref()).map(|s| s.attempts);

    signal_running(pid, pid_file, nix::sys::signal::Signal::SIGHUP)?;

    let wait = Duration::from_secs(5);
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        match reload_state(addr, credential.as_ref()) {
            Some(s) if before.is_none_or(|b| s.attempts > b) => {
                return match s.error {
                    Some(error) => Err(LifecycleError::ReloadRejected(error)),
                    None => Ok(format!(
                        "reloaded: pid {pid} now serves config generation {}",
                        s.generation
                    )),
                }
            }
            _ => {}
        }
    }
    Err(LifecycleError::ReloadUnconfirmed(wait))
}

/// `cc-relay upgrade`: ask the running relay to start the binary now installed at its path and
/// hand it the listeners (SIGUSR2); wait until the pid file names the new process and it answers.
pub fn send_upgrade(config_path: &Path) -> Result<String, LifecycleError> {
    let cfg = config::load_file(config_path)?;
    let pid_file = &cfg.server.pid_file;
    let old = read_pid(pid_file)?;
    signal_running(old, pid_file, nix::sys::signal::Signal::SIGUSR2)?;
    let health_addr = loopback_of(cfg.server.listen);
    let wait = UPGRADE_WAIT + Duration::from_secs(10);
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        match read_pid(pid_file) {
            Ok(new) if new != old && answers_health(health_addr) => {
                return Ok(format!(
                    "upgraded: pid {new} serves; pid {old} drains its requests and exits"
                ))
            }
            _ => {}
        }
    }
    Err(LifecycleError::UpgradeUnconfirmed(wait))
}

/// Send `signal` to the relay named by `pid_file`.
fn signal_running(
    pid: i32,
    pid_file: &Path,
    signal: nix::sys::signal::Signal,
) -> Result<(), LifecycleError> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).map_err(|e| {
        LifecycleError::NotRunning {
            pid,
            path: pid_file.to_owned(),
            reason: e.to_string(),
        }
    })
}

fn loopback_of(listen: SocketAddr) -> SocketAddr {
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match listen {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    addr
}

/// How the running relay's reloads went, from its `/status`.
struct ReloadState {
    generation: u64,
    attempts: u64,
    error: Option<String>,
}

/// The header a client presents the relay's credential in, from `server.auth`.
fn client_credential(auth: &config::AuthConfig) -> Option<(&'static str, String)> {
    if let Some(key) = &auth.api_key {
        return Some(("x-api-key", key.expose().to_owned()));
    }
    auth.bearer_secret
        .as_ref()
        .map(|s| ("authorization", format!("Bearer {}", s.expose())))
}

/// `GET /status` (behind the relay's credential: a failed reload's message may quote the file).
fn reload_state(addr: SocketAddr, credential: Option<&(&str, String)>) -> Option<ReloadState> {
    let (status, v) = get_json(addr, "/status", credential)?;
    if status != 200 {
        return None;
    }
    Some(ReloadState {
        generation: v["config_generation"].as_u64()?,
        attempts: v["reload"]["attempts"].as_u64()?,
        error: v["reload"]["last_error"].as_str().map(str::to_owned),
    })
}

/// Whether the relay at `addr` answers `GET /health`.
fn answers_health(addr: SocketAddr) -> bool {
    get_json(addr, "/health", None).is_some_and(|(status, _)| status == 200)
}

/// One blocking HTTP/1.1 exchange with the local relay: status and JSON body.
fn get_json(
    addr: SocketAddr,
    path: &str,
    credential: Option<&(&str, String)>,
) -> Option<(u16, serde_json::Value)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some((name, value)) = credential {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, serde_json::from_str(body.trim()).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use log::Log;
    use std::sync::Mutex;

    /// A pipe for env_logger that the test can read back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logger(level: &str) -> (BenignPingoraErrors, Captured) {
        let out = Captured::default();
        let mut builder = env_logger::Builder::new();
        builder
            .parse_filters(level)
            .target(env_logger::Target::Pipe(Box::new(out.clone())));
        (BenignPingoraErrors(builder.build()), out)
    }

    fn emit(logger: &BenignPingoraErrors, target: &str, args: std::fmt::Arguments) {
        logger.log(
            &log::Record::builder()
                .args(args)
                .level(log::Level::Error)
                .target(target)
                .build(),
        );
    }

    fn text(out: &Captured) -> String {
        String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn benign_pingora_error_is_demoted_and_real_errors_stay() {
        let (quiet, out) = logger("info");
        emit(
            &quiet,
            "pingora_core::connectors",
            format_args!("failed to acquire reusable stream"),
        );
        assert_eq!(text(&out), "", "shown at ERROR under an info filter");
        emit(
            &quiet,
            "pingora_core::connectors",
            format_args!("something else broke"),
        );
        emit(
            &quiet,
            "cc_relay",
            format_args!("failed to acquire reusable stream"),
        );
        let shown = text(&out);
        assert!(shown.contains("ERROR pingora_core::connectors] something else broke"));
        assert!(shown.contains("ERROR cc_relay] failed to acquire reusable stream"));

        let (verbose, out) = logger("debug");
        emit(
            &verbose,
            "pingora_core::connectors",
            format_args!("failed to acquire reusable stream"),
        );
        assert!(text(&out).contains("DEBUG pingora_core::connectors] failed to acquire"));
    }
}
