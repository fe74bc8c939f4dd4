//! The relay's own client authentication (`server.auth`).

use pingora::http::RequestHeader;
use subtle::ConstantTimeEq;

use super::errors::ApiError;
use crate::config::AuthConfig;

/// Where the client put the relay's credential, so that header is removed before the request
/// goes upstream: the relay's own secret is never forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayCredential {
    /// Auth is off; nothing to strip.
    NotRequired,
    XApiKey,
    Bearer,
}

impl RelayCredential {
    pub fn header(self) -> Option<&'static str> {
        match self {
            RelayCredential::NotRequired => None,
            RelayCredential::XApiKey => Some("x-api-key"),
            RelayCredential::Bearer => Some("authorization"),
        }
    }
}

fn same_secret(given: &[u8], expected: &str) -> bool {
    // Constant time in the content; the length is not secret enough to matter.
    given.ct_eq(expected.as_bytes()).into()
}

/// Check the client's credential against `server.auth`.
pub fn authenticate(auth: &AuthConfig, req: &RequestHeader) -> Result<RelayCredential, ApiError> {
    if !auth.is_enabled() {
        return Ok(RelayCredential::NotRequired);
    }
    if let (Some(expected), Some(given)) = (&auth.api_key, req.headers.get("x-api-key")) {
        if same_secret(given.as_bytes(), expected.expose()) {
            return Ok(RelayCredential::XApiKey);
        }
    }
    if auth.allow_bearer || auth.bearer_secret.is_some() {
        let token = req
            .headers
            .get("authorization")
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        if let Some(token) = token {
            let expected = auth.bearer_secret.as_ref().or(auth.api_key.as_ref());
            if expected.is_some_and(|e| same_secret(token, e.expose())) {
                return Ok(RelayCredential::Bearer);
            }
        }
    }
    Err(ApiError::Unauthorized)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/v1/messages", None).unwrap();
        for (k, v) in headers {
            r.insert_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn auth(api_key: Option<&str>, allow_bearer: bool, bearer: Option<&str>) -> AuthConfig {
        AuthConfig {
            api_key: api_key.map(Secret::new),
            allow_bearer,
            bearer_secret: bearer.map(Secret::new),
        }
    }

    #[test]
    fn open_relay_requires_nothing() {
        let a = auth(None, false, None);
        assert_eq!(
            authenticate(&a, &req(&[])).unwrap(),
            RelayCredential::NotRequired
        );
    }

    #[test]
    fn api_key_must_match() {
        let a = auth(Some("relay-secret"), false, None);
        assert_eq!(
            authenticate(&a, &req(&[("x-api-key", "relay-secret")])).unwrap(),
            RelayCredential::XApiKey
        );
        assert!(authenticate(&a, &req(&[("x-api-key", "relay-secre")])).is_err());
        assert!(authenticate(&a, &req(&[])).is_err());
        // Bearer is refused unless allowed.
        assert!(authenticate(&a, &req(&[("authorization", "Bearer relay-secret")])).is_err());
    }

    #[test]
    fn bearer_accepts_the_bearer_secret_or_the_api_key() {
        let a = auth(Some("k"), true, None);
        assert_eq!(
            authenticate(&a, &req(&[("authorization", "Bearer k")])).unwrap(),
            RelayCredential::Bearer
        );
        let b = auth(Some("k"), true, Some("b"));
        assert!(authenticate(&b, &req(&[("authorization", "Bearer k")])).is_err());
        assert_eq!(
            authenticate(&b, &req(&[("authorization", "Bearer b")])).unwrap(),
            RelayCredential::Bearer
        );
    }
}
