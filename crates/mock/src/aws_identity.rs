//! Where AWS credentials come from, for Bedrock mode: the container credentials endpoint (ECS,
//! EKS Pod Identity; its authorization token checked), the instance metadata service (IMDSv2:
//! a session token first, then the role, then its credentials) and STS's
//! AssumeRoleWithWebIdentity (the web identity token checked). Each issues new temporary
//! credentials valid [`BedrockMock::session_ttl`]; Bedrock mode accepts them only with their
//! session token and only until they expire (AWS's `ExpiredTokenException` after), so a relay
//! that does not renew them in time fails.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use aws_smithy_types::date_time::{DateTime, Format};
use bytes::Bytes;

use super::BedrockMock;

/// The container endpoint's path (`AWS_CONTAINER_CREDENTIALS_FULL_URI` = base URL + this).
pub const CONTAINER_PATH: &str = "/ecs/credentials";
/// The instance role the metadata service names.
const ROLE: &str = "relay-instance-role";

/// Temporary credentials issued and how long each holds.
#[derive(Default)]
pub(super) struct SessionBook {
    issued: AtomicU64,
    sessions: Mutex<HashMap<String, Session>>,
    imds_tokens: Mutex<HashSet<String>>,
}

pub(super) struct Session {
    pub secret: String,
    pub token: String,
    pub expires: SystemTime,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SessionBook {
    pub(super) fn issued(&self) -> u64 {
        self.issued.load(Ordering::Relaxed)
    }

    /// The secret, session token and expiry of the temporary credential `key_id`.
    pub(super) fn get(&self, key_id: &str) -> Option<(String, String, SystemTime)> {
        lock(&self.sessions)
            .get(key_id)
            .map(|s| (s.secret.clone(), s.token.clone(), s.expires))
    }

    /// Issue a new credential: `(key id, secret, session token, expiry as RFC 3339)`.
    fn issue(&self, ttl: Duration) -> (String, String, String, String) {
        let n = self.issued.fetch_add(1, Ordering::Relaxed) + 1;
        let key_id = format!("ASIAMOCK{n:08}");
        let secret = format!("session-secret-{n}/{:x}", fastish(n));
        let token = format!("session-token-{n}-{:x}", fastish(n + 7));
        let ttl = if ttl.is_zero() {
            Duration::from_secs(3600)
        } else {
            ttl
        };
        let expires = SystemTime::now() + ttl;
        let shown = DateTime::from(expires)
            .fmt(Format::DateTime)
            .unwrap_or_default();
        lock(&self.sessions).insert(
            key_id.clone(),
            Session {
                secret: secret.clone(),
                token: token.clone(),
                expires,
            },
        );
        (key_id, secret, token, shown)
    }
}

/// Distinct-looking digits for secrets (not random: the tests only need them to differ).
fn fastish(n: u64) -> u64 {
    n.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// An identity endpoint's answer.
pub(super) enum Answer {
    Ok(&'static str, Bytes),
    /// An IMDSv2 session token, with the TTL it holds for (seconds, echoed back in a header).
    ImdsToken(Bytes, String),
    Error(u16, &'static str, String),
}

/// Answer `parts` if it is one of the identity endpoints; `None` for anything else.
pub(super) fn route(
    cfg: &BedrockMock,
    book: &SessionBook,
    parts: &http::request::Parts,
    body: &[u8],
) -> Option<Answer> {
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let path = parts.uri.path();
    let json = |v: serde_json::Value| Answer::Ok("application/json", Bytes::from(v.to_string()));
    match (parts.method.as_str(), path) {
        ("GET", CONTAINER_PATH) => {
            if header("authorization") != cfg.container_token.as_deref() {
                return Some(Answer::Error(
                    401,
                    "application/json",
                    r#"{"message":"Unauthorized"}"#.into(),
                ));
            }
            let (id, secret, token, expiration) = book.issue(cfg.session_ttl);
            Some(json(serde_json::json!({
                "AccessKeyId": id, "SecretAccessKey": secret, "Token": token,
                "Expiration": expiration,
                "RoleArn": "arn:aws:iam::123456789012:role/relay-task-role",
            })))
        }
        ("PUT", "/latest/api/token") => {
            let ttl = header("x-aws-ec2-metadata-token-ttl-seconds")?;
            let token = format!("imds-token-{}", book.issued() + 1);
            lock(&book.imds_tokens).insert(token.clone());
            Some(Answer::ImdsToken(Bytes::from(token), ttl.to_owned()))
        }
        ("GET", p) if p.starts_with("/latest/meta-data/iam/security-credentials/") => {
            let known = header("x-aws-ec2-metadata-token")
                .is_some_and(|t| lock(&book.imds_tokens).contains(t));
            if !known {
                return Some(Answer::Error(401, "text/plain", String::new()));
            }
            let role = &p["/latest/meta-data/iam/security-credentials/".len()..];
            if role.is_empty() {
                return Some(Answer::Ok(
                    "text/plain",
                    Bytes::from_static(ROLE.as_bytes()),
                ));
            }
            if role != ROLE {
                return Some(Answer::Error(404, "text/plain", "Not Found".into()));
            }
            let (id, secret, token, expiration) = book.issue(cfg.session_ttl);
            Some(json(serde_json::json!({
                "Code": "Success", "LastUpdated": "2026-11-30T00:00:00Z", "Type": "AWS-HMAC",
                "AccessKeyId": id, "SecretAccessKey": secret, "Token": token,
                "Expiration": expiration,
            })))
        }
        ("POST", "/") => {
            let form: HashMap<String, String> = form_urlencoded::parse(body).into_owned().collect();
            if form.get("Action").map(String::as_str) != Some("AssumeRoleWithWebIdentity") {
                return None;
            }
            Some(assume_role_with_web_identity(cfg, book, &form))
        }
        _ => None,
    }
}

fn assume_role_with_web_identity(
    cfg: &BedrockMock,
    book: &SessionBook,
    form: &HashMap<String, String>,
) -> Answer {
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
    if cfg.web_identity_token.is_none()
        || Some(field("WebIdentityToken")) != cfg.web_identity_token.as_deref()
    {
        return Answer::Error(
            400,
            "text/xml",
            "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error>\
             <Type>Sender</Type><Code>InvalidIdentityToken</Code><Message>Couldn't retrieve \
             verification key from your identity provider</Message></Error>\
             <RequestId>mock</RequestId></ErrorResponse>"
                .into(),
        );
    }
    let (role, session) = (field("RoleArn"), field("RoleSessionName"));
    let (id, secret, token, expiration) = book.issue(cfg.session_ttl);
    let xml = format!(
        "<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\
         <AssumeRoleWithWebIdentityResult><Credentials><AccessKeyId>{id}</AccessKeyId>\
         <SecretAccessKey>{secret}</SecretAccessKey><SessionToken>{token}</SessionToken>\
         <Expiration>{expiration}</Expiration></Credentials>\
         <SubjectFromWebIdentityToken>system:serviceaccount:relay</SubjectFromWebIdentityToken>\
         <AssumedRoleUser><Arn>{role}/{session}</Arn><AssumedRoleId>AROAMOCK:{session}\
         </AssumedRoleId></AssumedRoleUser><Provider>mock</Provider>\
         <Audience>sts.amazonaws.com</Audience></AssumeRoleWithWebIdentityResult>\
         <ResponseMetadata><RequestId>mock</RequestId></ResponseMetadata>\
         </AssumeRoleWithWebIdentityResponse>"
    );
    Answer::Ok("text/xml", Bytes::from(xml))
}
