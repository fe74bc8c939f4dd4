//! Vertex AI, as strict as the real one where the relay could go wrong: a token endpoint that
//! grants short-lived access tokens only for an RS256 assertion signed by the configured
//! service account (audience, issuer, scope and expiry checked), an API that refuses a missing,
//! unknown or expired token (Google-shaped 401), and the `rawPredict` routes that want the
//! Vertex body (`anthropic_version`, no `model` but for count-tokens) and name the model in the
//! path.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// The mock's Vertex mode.
#[derive(Clone, Debug)]
pub struct VertexMock {
    /// The service account allowed to get tokens (`iss` of its assertions).
    pub client_email: String,
    /// Its public key (PEM), to verify the assertions.
    pub public_key_pem: String,
    /// How long an access token is valid.
    pub token_ttl: Duration,
    pub project: String,
    pub region: String,
    /// A gcloud user's credentials the token endpoint also honours (the refresh-token grant):
    /// `(client_id, client_secret, refresh_token)`.
    pub user: Option<(String, String, String)>,
}

/// Tokens issued and until when they hold.
#[derive(Default)]
pub(super) struct TokenBook {
    issued: AtomicU64,
    valid_until: Mutex<HashMap<String, Instant>>,
}

impl TokenBook {
    pub(super) fn issued(&self) -> u64 {
        self.issued.load(Ordering::Relaxed)
    }
}

/// What a Vertex request comes to for the Anthropic handler, or the error to answer.
pub(super) enum Routed {
    /// `(anthropic path, body with the model back in)`.
    Api(&'static str, Bytes),
    Token(Bytes),
    Error(u16, &'static str, String),
}

const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// A Google-shaped error body.
pub(super) fn error_body(status: u16, state: &str, message: &str) -> Bytes {
    let body = serde_json::json!({"error": {"code": status, "message": message, "status": state}});
    Bytes::from(body.to_string())
}

/// Route a request of Vertex mode: `cfg`, the tokens issued and the token endpoint's own URI
/// (the audience assertions must name), then the request.
pub(super) fn route(
    (cfg, book, token_uri): (&VertexMock, &TokenBook, &str),
    parts: &http::request::Parts,
    body: &Bytes,
) -> Routed {
    let (method, path) = (&parts.method, parts.uri.path());
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let (authorization, metadata_flavor) = (header("authorization"), header("metadata-flavor"));
    if path == "/token" && *method == http::Method::POST {
        return grant(cfg, book, token_uri, body);
    }
    if path == "/computeMetadata/v1/instance/service-accounts/default/token" {
        // The metadata server answers only requests that say they mean it.
        return match metadata_flavor {
            Some("Google") => Routed::Token(issue(cfg, book)),
            _ => Routed::Error(
                403,
                "PERMISSION_DENIED",
                "missing Metadata-Flavor: Google".into(),
            ),
        };
    }
    let prefix = format!(
        "/v1/projects/{}/locations/{}/publishers/anthropic/models/",
        cfg.project, cfg.region
    );
    let Some(call) = path.strip_prefix(&prefix) else {
        return Routed::Error(404, "NOT_FOUND", format!("no such resource: {path}"));
    };
    let token = authorization.and_then(|a| a.strip_prefix("Bearer "));
    let valid = token.is_some_and(|t| {
        book.valid_until
            .lock()
            .unwrap()
            .get(t)
            .is_some_and(|until| Instant::now() < *until)
    });
    if !valid {
        return Routed::Error(
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials. Expected OAuth 2 access token, \
             login cookie or other valid authentication credential."
                .into(),
        );
    }
    let Ok(serde_json::Value::Object(mut fields)) = serde_json::from_slice(body) else {
        return Routed::Error(
            400,
            "INVALID_ARGUMENT",
            "the body is not a JSON object".into(),
        );
    };
    if fields.get("anthropic_version").and_then(|v| v.as_str()) != Some("vertex-2023-10-16") {
        return Routed::Error(
            400,
            "INVALID_ARGUMENT",
            "anthropic_version: vertex-2023-10-16 is required".into(),
        );
    }
    fields.remove("anthropic_version");
    let (model, verb) = match call.rsplit_once(':') {
        Some(parts) => parts,
        None => return Routed::Error(404, "NOT_FOUND", format!("no method in {path}")),
    };
    let anthropic_path = match (model, verb) {
        ("count-tokens", "rawPredict") => {
            if !fields.contains_key("model") {
                return Routed::Error(400, "INVALID_ARGUMENT", "model is required".into());
            }
            "/v1/messages/count_tokens"
        }
        (_, "rawPredict" | "streamRawPredict") => {
            if fields.contains_key("model") {
                return Routed::Error(
                    400,
                    "INVALID_ARGUMENT",
                    "model: extra inputs are not permitted (the model is in the path)".into(),
                );
            }
            let streaming = fields.get("stream").and_then(|s| s.as_bool()) == Some(true);
            if streaming != (verb == "streamRawPredict") {
                return Routed::Error(
                    400,
                    "INVALID_ARGUMENT",
                    format!("{verb} does not match stream: {streaming}"),
                );
            }
            let model = super::percent_decode(model);
            fields.insert("model".into(), serde_json::Value::String(model));
            "/v1/messages"
        }
        _ => return Routed::Error(404, "NOT_FOUND", format!("no method {verb}")),
    };
    Routed::Api(
        anthropic_path,
        Bytes::from(serde_json::Value::Object(fields).to_string()),
    )
}

#[derive(serde::Deserialize)]
struct Claims {
    iss: String,
    scope: String,
}

/// The JWT-bearer grant: verify the assertion, issue a token.
fn grant(cfg: &VertexMock, book: &TokenBook, token_uri: &str, body: &Bytes) -> Routed {
    let form: HashMap<String, String> = form_urlencoded::parse(body).into_owned().collect();
    let bad = |m: &str| Routed::Error(400, "invalid_grant", m.to_owned());
    if form.get("grant_type").map(String::as_str) == Some("refresh_token") {
        let field = |name: &str| form.get(name).cloned().unwrap_or_default();
        let given = (
            field("client_id"),
            field("client_secret"),
            field("refresh_token"),
        );
        return match &cfg.user {
            Some(user) if *user == given => Routed::Token(issue(cfg, book)),
            _ => bad("Bad Request: unknown client or refresh token"),
        };
    }
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return bad("unsupported grant_type");
    }
    let Some(assertion) = form.get("assertion") else {
        return bad("no assertion");
    };
    let Ok(key) = jsonwebtoken::DecodingKey::from_rsa_pem(cfg.public_key_pem.as_bytes()) else {
        return Routed::Error(500, "INTERNAL", "mock: bad public key".into());
    };
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[token_uri]);
    validation.set_required_spec_claims(&["exp", "iat", "aud", "iss"]);
    validation.leeway = 0;
    let claims = match jsonwebtoken::decode::<Claims>(assertion, &key, &validation) {
        Ok(data) => data.claims,
        Err(e) => return bad(&format!("Invalid JWT: {e}")),
    };
    if claims.iss != cfg.client_email {
        return bad("Invalid JWT: unknown issuer");
    }
    if !claims.scope.split(' ').any(|s| s == SCOPE) {
        return bad("Invalid JWT: scope lacks cloud-platform");
    }
    Routed::Token(issue(cfg, book))
}

/// A new access token, valid for the configured time, as the token endpoints answer it.
fn issue(cfg: &VertexMock, book: &TokenBook) -> Bytes {
    let n = book.issued.fetch_add(1, Ordering::Relaxed) + 1;
    let token = format!("ya29.mock-{n}-{:016x}", fastrand_u64(n));
    book.valid_until
        .lock()
        .unwrap()
        .insert(token.clone(), Instant::now() + cfg.token_ttl);
    let answer = serde_json::json!({
        "access_token": token,
        "expires_in": cfg.token_ttl.as_secs().max(1),
        "token_type": "Bearer",
    });
    Bytes::from(answer.to_string())
}

/// A token suffix that differs between mocks (not a secret: the mock's tokens are fakes).
fn fastrand_u64(n: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}
