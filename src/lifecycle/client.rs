//! The `reload` and `upgrade` commands: signal the running relay named by the pid file and
//! confirm through its own endpoints.

use std::path::Path;
use std::sync::Arc;
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
    let addr = local_url(&cfg);
    let credential = client_credential(&cfg.server.auth);
    // `None` when the running relay does not take this file's credential yet (the reload
    // changes it): then the first answer that does take it is the reload landing.
    let before = reload_state(&addr, credential.as_ref()).map(|s| s.attempts);

    signal_running(pid, pid_file, nix::sys::signal::Signal::SIGHUP)?;

    let wait = Duration::from_secs(5);
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        match reload_state(&addr, credential.as_ref()) {
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
    let health_addr = local_url(&cfg);
    let wait = UPGRADE_WAIT + Duration::from_secs(10);
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        match read_pid(pid_file) {
            Ok(new) if new != old && answers_health(&health_addr) => {
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
fn reload_state(addr: &str, credential: Option<&(&str, String)>) -> Option<ReloadState> {
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

/// Whether the relay at `base` answers `GET /health`.
fn answers_health(base: &str) -> bool {
    get_json(base, "/health", None).is_some_and(|(status, _)| status == 200)
}

/// One `GET` to the local relay: its status and JSON body (`None` when it does not answer).
fn get_json(
    base: &str,
    path: &str,
    credential: Option<&(&str, String)>,
) -> Option<(u16, serde_json::Value)> {
    get_url_json(&format!("{base}{path}"), credential).ok()
}

/// The relay of `cfg` as this machine reaches it: `http(s)://` + its listen address, an
/// unspecified address replaced by loopback.
pub(super) fn local_url(cfg: &config::Config) -> String {
    let scheme = if cfg.server.tls.is_some() {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{}", loopback_of(cfg.server.listen))
}

/// Whether `url` names this machine by a loopback address.
fn is_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.split('/').next().unwrap_or_default();
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The relay's own certificate, met on loopback by its own commands, need not name
/// `127.0.0.1` nor chain to a root this machine trusts: the handshake's signatures are still
/// checked, the certificate is not. Never used for another host.
#[derive(Debug)]
struct OwnRelayOnLoopback(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for OwnRelayOnLoopback {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn loopback_tls() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.dangerous()
                .with_custom_certificate_verifier(Arc::new(OwnRelayOnLoopback(provider)))
                .with_no_client_auth()
        });
    Arc::new(config.unwrap_or_else(|_| {
        rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
    }))
}

/// One `GET` to a relay: its status and JSON body, or why there is none (unreachable, not
/// JSON). Shared by `reload`, `upgrade` and `status`.
pub(super) fn get_url_json(
    url: &str,
    credential: Option<&(&str, String)>,
) -> Result<(u16, serde_json::Value), String> {
    let mut agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(2))
        .timeout(Duration::from_secs(5));
    if url.starts_with("https://") && is_loopback(url) {
        agent = agent.tls_config(loopback_tls());
    }
    let agent = agent.build();
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
