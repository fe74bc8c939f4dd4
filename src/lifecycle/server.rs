//! Pingora's server and client listener, built from our config; binding checked up front.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use pingora::server::configuration::ServerConf;

use super::pidfile::remove_pid_file_if_ours;
use super::LifecycleError;
use crate::config::Config;

/// How long start-up waits for Pingora's listener to accept connections (Pingora retries a
/// bind for a while before giving up).
pub(super) const LISTEN_WAIT: Duration = Duration::from_secs(60);

/// Bind `listen` once, before Pingora does and before anything is claimed (the pid file): a
/// port that is taken or not ours to bind is a clear error and a non-zero exit, not a process
/// that logs "listening", overwrites another relay's pid file and lives on without a listener.
pub(super) fn check_can_listen(listen: SocketAddr) -> Result<(), LifecycleError> {
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
pub(super) fn exit_when_listeners_fail(listen: SocketAddr, pid_file: PathBuf) {
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
        // Pingora's tries per request: every attempt, each possibly made again once on a fresh
        // connection (`routing.max_attempts` bounds the attempts themselves).
        max_retries: 2 * crate::config::MAX_MAX_ATTEMPTS as usize,
        ..runtime_conf(s.threads)
    }
}

/// Pingora timeouts longer than this (seconds) wait on tokio's timer: see `runtime_conf`.
pub const FAST_TIMER_HORIZON_SECS: u64 = 60;

/// How the relay runs Pingora, apart from its config: also the settings of the bare Pingora
/// proxy the benchmarks compare it with (`examples/bare_pingora.rs`), so the two cannot drift.
pub fn runtime_conf(threads: usize) -> ServerConf {
    ServerConf {
        threads: threads.max(1),
        // One single-threaded runtime per thread, each connection kept on the thread it was
        // given (like nginx workers): no work-stealing wake-ups between threads.
        work_stealing: false,
        // Pingora's timeouts longer than a minute on tokio's timer (issue 26, defect 9). Each
        // upstream read and write waits under the peer's read/write timeout
        // (`server.timeout_ms`, 600 s by default) and each pooled upstream connection's idle
        // wait under 90 s; up to this threshold (Pingora's default: 15 min) those are "fast"
        // timers: one timer per 10 ms slot of expiry time in a per-thread map, kept until that
        // time comes even when nothing waits on it any more. Under steady traffic every worker
        // thread adds a slot every 10 ms per such timeout, so the relay's memory grew for ten
        // minutes (~30 KB/s, ~20 MB before it would level off) where the bare Pingora proxy,
        // with no long timeouts, stayed flat. A tokio timer goes with the future that waited.
        // Timeouts up to a minute (a kept-alive client's wait: 60 s) stay on the cheaper fast
        // timers, whose map then holds at most a minute of slots per thread.
        fast_timeout_to_tokio_threshold_seconds: Some(FAST_TIMER_HORIZON_SECS),
        ..ServerConf::default()
    }
}

/// The client-facing service as `threads` single-threaded services, one per worker thread, all
/// listening on the same socket: Pingora's listen-fd table hands each the socket the first one
/// bound (and an upgrade hands that one socket over), and the kernel gives each accepted
/// connection to one of them. Each has its own app (`make_app`), so its own upstream connection
/// pool: a connection to an upstream is opened, driven and reused by one thread, where one
/// shared pool had connections registered with one thread's event loop handed to requests on
/// another (a cross-thread wake-up per read).
pub fn worker_services<A: pingora::apps::ServerApp + Send + Sync + 'static>(
    name: &str,
    threads: usize,
    mut make_app: impl FnMut() -> A,
    listener: impl Fn() -> pingora::listeners::ListenerConfig,
) -> Vec<pingora::services::listening::Service<A>> {
    (0..threads.max(1))
        .map(|i| {
            let mut service =
                pingora::services::listening::Service::new(format!("{name} {i}"), make_app());
            service.threads = Some(1);
            service.add_listener(listener());
            service
        })
        .collect()
}

/// The client listener as the relay opens it (and the benchmarks' bare Pingora proxy).
pub fn client_listener(listen: SocketAddr) -> pingora::listeners::ListenerConfig {
    // Pingora gives every client connection a 64 KiB read buffer by default, zero-filled and so
    // resident even while the connection idles. Requests are parsed into Pingora's own
    // buffers anyway: read straight from the socket.
    pingora::listeners::ListenerConfig::tcp(listen.to_string())
        .l4_buffer(pingora::listeners::L4BufferSettings::new(0, 1460))
}

/// Wait until `listen` accepts a connection (our listener: `check_can_listen` found the port
/// free, or an upgrade handed us the socket).
pub(super) async fn wait_listening(listen: SocketAddr) -> bool {
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

/// Where to reach `listen` from this host: the loopback address when it is unspecified.
pub(super) fn loopback_of(listen: SocketAddr) -> SocketAddr {
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match listen {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    addr
}
