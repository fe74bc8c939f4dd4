//! The `reload` and `upgrade` commands: signal the running relay named by the pid file and
//! confirm through its own endpoints.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use super::pidfile::read_pid;
use super::server::loopback_of;
use super::upgrade::UPGRADE_WAIT;
use super::LifecycleError;
use crate::config;

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

/// One `GET` to the local relay: its status and JSON body (`None` when it does not answer).
fn get_json(
    addr: SocketAddr,
    path: &str,
    credential: Option<&(&str, String)>,
) -> Option<(u16, serde_json::Value)> {
    get_url_json(&format!("http://{addr}{path}"), credential).ok()
}

/// One `GET` to a relay: its status and JSON body, or why there is none (unreachable, not
/// JSON). Shared by `reload`, `upgrade` and `status`.
pub(super) fn get_url_json(
    url: &str,
    credential: Option<&(&str, String)>,
) -> Result<(u16, serde_json::Value), String> {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .build();
    let mut request = agent.get(url);
    if let Some((name, value)) = credential {
        request = request.set(name, value);
    }
    match request.call() {
        Ok(response) => {
            let status = response.status();
            let body = response
                .into_json()
                .map_err(|e| format!("the answer from {url} is not JSON: {e}"))?;
            Ok((status, body))
        }
        Err(ureq::Error::Status(status, response)) => {
            Ok((status, response.into_json().unwrap_or_default()))
        }
        Err(e) => Err(format!("no answer from {url}: {e}")),
    }
}
