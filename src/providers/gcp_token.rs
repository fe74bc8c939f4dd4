//! OAuth2 access tokens for Vertex AI, kept fresh off the request path. A request reads the
//! current token of its key (an `ArcSwapOption`, no lock) and never waits for an exchange; a
//! thread of its own renews each token at half its lifetime, so an expiring one never reaches
//! the upstream, and retries a failed renewal with backoff while the current token still holds.
//!
//! Where a token comes from:
//! - a service account key file: the JWT-bearer grant (RFC 7523) to the file's `token_uri`,
//!   the assertion signed RS256 with its private key (`jsonwebtoken`);
//! - a user's credentials file (`authorized_user`, what `gcloud auth application-default
//!   login` writes): the refresh-token grant;
//! - Application Default Credentials: `GOOGLE_APPLICATION_CREDENTIALS`, else gcloud's file,
//!   else the metadata server (`GCE_METADATA_HOST` redirects it).
//!
//! Nothing here logs or returns a private key, a refresh token or an access token.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use http::header::AUTHORIZATION;
use http::{HeaderName, HeaderValue};
use once_cell::sync::Lazy;
use serde::Deserialize;

/// The scope Vertex AI needs.
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// Google's token endpoint, for user credentials that name none.
const GOOGLE_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// How often the refresher looks at its tokens.
const TICK: Duration = Duration::from_millis(200);
/// A token exchange that takes longer than this has failed.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path} is not a usable Google credentials file: {reason}")]
    Invalid { path: String, reason: String },
    #[error("the token exchange with {endpoint} failed: {reason}")]
    Exchange { endpoint: String, reason: String },
}

/// Where a key's tokens come from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CredentialSource {
    /// A service account or user credentials file.
    File(PathBuf),
    /// Application Default Credentials.
    Adc,
}

/// What a credentials file holds (the fields this relay uses).
#[derive(Deserialize)]
struct CredentialsFile {
    #[serde(rename = "type")]
    kind: String,
    client_email: Option<String>,
    private_key: Option<String>,
    private_key_id: Option<String>,
    token_uri: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    refresh_token: Option<String>,
}

/// How to get a token.
enum Grant {
    ServiceAccount {
        email: String,
        key: jsonwebtoken::EncodingKey,
        key_id: Option<String>,
        token_uri: String,
    },
    User {
        client_id: String,
        client_secret: String,
        refresh_token: String,
        token_uri: String,
    },
    Metadata {
        host: String,
    },
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Grant::ServiceAccount { email, .. } => write!(f, "service account {email}"),
            Grant::User { .. } => f.write_str("user credentials"),
            Grant::Metadata { host } => write!(f, "metadata server {host}"),
        }
    }
}

impl Grant {
    fn endpoint(&self) -> String {
        match self {
            Grant::ServiceAccount { token_uri, .. } | Grant::User { token_uri, .. } => {
                token_uri.clone()
            }
            Grant::Metadata { host } => format!("http://{host}"),
        }
    }
}

/// Read and check a credentials file (at config load, so a broken one is a config error).
fn load_file(path: &Path) -> Result<Grant, TokenError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| TokenError::Read {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    let invalid = |reason: &str| TokenError::Invalid {
        path: shown.clone(),
        reason: reason.to_owned(),
    };
    // serde_json's messages quote no input, so a malformed key file leaks nothing here.
    let file: CredentialsFile =
        serde_json::from_str(&text).map_err(|e| invalid(&format!("not JSON ({e})")))?;
    match file.kind.as_str() {
        "service_account" => {
            let email = file
                .client_email
                .ok_or_else(|| invalid("no client_email"))?;
            let pem = file.private_key.ok_or_else(|| invalid("no private_key"))?;
            let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes())
                .map_err(|_| invalid("private_key is not an RSA private key in PEM"))?;
            Ok(Grant::ServiceAccount {
                email,
                key,
                key_id: file.private_key_id,
                token_uri: file
                    .token_uri
                    .unwrap_or_else(|| GOOGLE_TOKEN_URI.to_owned()),
            })
        }
        "authorized_user" => Ok(Grant::User {
            client_id: file.client_id.ok_or_else(|| invalid("no client_id"))?,
            client_secret: file
                .client_secret
                .ok_or_else(|| invalid("no client_secret"))?,
            refresh_token: file
                .refresh_token
                .ok_or_else(|| invalid("no refresh_token"))?,
            token_uri: file
                .token_uri
                .unwrap_or_else(|| GOOGLE_TOKEN_URI.to_owned()),
        }),
        other => Err(invalid(&format!(
            "type {other:?} (expected service_account or authorized_user)"
        ))),
    }
}

/// Application Default Credentials, in Google's order.
fn application_default() -> Result<Grant, TokenError> {
    let named = std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS").filter(|p| !p.is_empty());
    if let Some(path) = named {
        return load_file(Path::new(&path));
    }
    if let Some(home) = std::env::var_os("HOME") {
        let gcloud = Path::new(&home).join(".config/gcloud/application_default_credentials.json");
        if gcloud.exists() {
            return load_file(&gcloud);
        }
    }
    let host = std::env::var("GCE_METADATA_HOST")
        .unwrap_or_else(|_| "metadata.google.internal".to_owned());
    Ok(Grant::Metadata { host })
}

/// Check `source` without fetching a token (config validation).
pub fn check(source: &CredentialSource) -> Result<(), TokenError> {
    match source {
        CredentialSource::File(path) => load_file(path).map(|_| ()),
        CredentialSource::Adc => application_default().map(|_| ()),
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: Option<u64>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// One token exchange: the token and its lifetime.
fn exchange(grant: &Grant) -> Result<(String, Duration), TokenError> {
    let failed = |reason: String| TokenError::Exchange {
        endpoint: grant.endpoint(),
        reason,
    };
    let agent = ureq::AgentBuilder::new().timeout(EXCHANGE_TIMEOUT).build();
    let response = match grant {
        Grant::ServiceAccount {
            email,
            key,
            key_id,
            token_uri,
        } => {
            let now = unix_now();
            let claims = serde_json::json!({
                "iss": email, "scope": SCOPE, "aud": token_uri, "iat": now, "exp": now + 3600,
            });
            let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
            header.kid = key_id.clone();
            let assertion = jsonwebtoken::encode(&header, &claims, key)
                .map_err(|e| failed(format!("signing the assertion: {e}")))?;
            agent.post(token_uri).send_form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", &assertion),
            ])
        }
        Grant::User {
            client_id,
            client_secret,
            refresh_token,
            token_uri,
        } => agent.post(token_uri).send_form(&[
            ("grant_type", "refresh_token"),
            ("client_id", client_id),
            ("client_secret", client_secret),
            ("refresh_token", refresh_token),
        ]),
        Grant::Metadata { host } => agent
            .get(&format!(
                "http://{host}/computeMetadata/v1/instance/service-accounts/default/token"
            ))
            .set("Metadata-Flavor", "Google")
            .call(),
    };
    let response = match response {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => {
            // The endpoint's own words (`invalid_grant`, ...), cut short; they quote no secret.
            let body: String = r
                .into_string()
                .unwrap_or_default()
                .chars()
                .take(200)
                .collect();
            return Err(failed(format!("HTTP {code}: {body}")));
        }
        Err(e) => return Err(failed(e.to_string())),
    };
    let token: TokenResponse = response
        .into_json()
        .map_err(|e| failed(format!("unreadable answer: {e}")))?;
    let lifetime = Duration::from_secs(token.expires_in.unwrap_or(3600).max(1));
    Ok((token.access_token, lifetime))
}

/// When to renew and until when the current token holds.
struct Schedule {
    renew_at: Instant,
    expires_at: Option<Instant>,
    failures: u32,
}

/// One key's token, as requests read it.
pub struct TokenSlot {
    grant: Grant,
    /// `Bearer <token>`, marked sensitive.
    current: ArcSwapOption<HeaderValue>,
    /// Only the refresher (and the first fetch) touch it.
    schedule: Mutex<Schedule>,
}

impl TokenSlot {
    /// The credential header to send now, `None` while there is no valid token.
    pub fn credential(&self) -> Option<(HeaderName, HeaderValue)> {
        self.current
            .load()
            .as_ref()
            .map(|v| (AUTHORIZATION, HeaderValue::clone(v)))
    }

    /// Whether it has a valid token now.
    pub fn has_token(&self) -> bool {
        self.current.load().is_some()
    }

    /// Exchange now and schedule the next renewal (or a retry).
    fn renew(&self) {
        let now = Instant::now();
        let result = exchange(&self.grant);
        let mut schedule = self.schedule.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok((token, lifetime)) => match HeaderValue::from_str(&format!("Bearer {token}")) {
                Ok(mut value) => {
                    value.set_sensitive(true);
                    self.current.store(Some(Arc::new(value)));
                    schedule.renew_at = now + lifetime / 2;
                    schedule.expires_at = Some(now + lifetime);
                    schedule.failures = 0;
                }
                Err(_) => log::error!(
                    "vertex: the token from {:?} cannot be sent in a header",
                    self.grant
                ),
            },
            Err(e) => {
                schedule.failures += 1;
                let backoff = Duration::from_secs(1 << schedule.failures.min(6));
                schedule.renew_at = now + backoff;
                log::warn!(
                    "vertex: renewing the token of {:?} failed ({e}); again in {}s",
                    self.grant,
                    backoff.as_secs()
                );
            }
        }
        if schedule.expires_at.is_some_and(|at| at <= Instant::now()) {
            self.current.store(None);
            schedule.expires_at = None;
        }
    }

    fn due(&self, now: Instant) -> bool {
        let schedule = self.schedule.lock().unwrap_or_else(|e| e.into_inner());
        schedule.renew_at <= now
    }
}

/// Live slots by source: a reload keeps a key's slot (and its token) when its source stays.
static SLOTS: Lazy<Mutex<HashMap<CredentialSource, Weak<TokenSlot>>>> =
    Lazy::new(|| Mutex::new(HashMap::new()));

/// The slot for `source`, shared with the running config's when there is one; a new one gets
/// its first token now (startup and reload, never a request) and joins the refresher.
pub fn slot_for(source: &CredentialSource) -> Result<Arc<TokenSlot>, TokenError> {
    if let Some(slot) = lock_slots().get(source).and_then(Weak::upgrade) {
        return Ok(slot);
    }
    let grant = match source {
        CredentialSource::File(path) => load_file(path)?,
        CredentialSource::Adc => application_default()?,
    };
    let slot = Arc::new(TokenSlot {
        grant,
        current: ArcSwapOption::empty(),
        schedule: Mutex::new(Schedule {
            renew_at: Instant::now(),
            expires_at: None,
            failures: 0,
        }),
    });
    slot.renew();
    lock_slots().insert(source.clone(), Arc::downgrade(&slot));
    start_refresher();
    Ok(slot)
}

fn lock_slots() -> std::sync::MutexGuard<'static, HashMap<CredentialSource, Weak<TokenSlot>>> {
    SLOTS.lock().unwrap_or_else(|e| e.into_inner())
}

fn start_refresher() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("cc-relay-gcp-tokens".into())
            .spawn(|| loop {
                std::thread::sleep(TICK);
                let now = Instant::now();
                let due: Vec<Arc<TokenSlot>> = {
                    let mut slots = lock_slots();
                    slots.retain(|_, slot| slot.strong_count() > 0);
                    slots.values().filter_map(Weak::upgrade).collect()
                };
                for slot in due.iter().filter(|s| s.due(now)) {
                    slot.renew();
                }
            });
        if let Err(e) = spawned {
            log::error!("vertex: cannot start the token refresher: {e}");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// Google's token endpoints are HTTPS: the exchange must open TLS (a build without a TLS
    /// stack fails every real exchange while every plain-HTTP mock passes).
    #[test]
    fn an_https_token_endpoint_gets_a_tls_handshake() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let first_byte = std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            let mut byte = [0u8; 1];
            socket.read_exact(&mut byte).map(|_| byte[0]).ok()
        });
        let grant = Grant::User {
            client_id: "id".into(),
            client_secret: "secret".into(),
            refresh_token: "refresh".into(),
            token_uri: format!("https://127.0.0.1:{port}/token"),
        };
        assert!(exchange(&grant).is_err());
        // 0x16: a TLS handshake record (the ClientHello).
        assert_eq!(first_byte.join().unwrap(), Some(0x16));
    }
}
