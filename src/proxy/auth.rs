//! The relay's own client authentication (`server.auth`).

use std::net::IpAddr;
use std::time::Duration;

use pingora::http::RequestHeader;
use pingora_limits::rate::Rate;
use subtle::ConstantTimeEq;

use super::errors::ApiError;
use super::state::RuntimeState;
use crate::clients::Clients;
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

/// Who a request authenticated as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Authenticated {
    /// Where its credential was (removed before the request goes upstream).
    pub credential: RelayCredential,
    /// Its client (index into the state's `clients`); `None` for `server.auth`'s key or an
    /// open relay.
    pub client: Option<usize>,
}

impl Authenticated {
    const OPEN: Authenticated = Authenticated {
        credential: RelayCredential::NotRequired,
        client: None,
    };
}

/// Check the client's credential: a client's own key (as `x-api-key` or a Bearer token), else
/// `server.auth`'s. With neither configured the relay is open.
pub fn authenticate(
    auth: &AuthConfig,
    clients: &Clients,
    req: &RequestHeader,
) -> Result<Authenticated, ApiError> {
    if !auth.is_enabled() && clients.is_empty() {
        return Ok(Authenticated::OPEN);
    }
    let api_key = req.headers.get("x-api-key").map(|v| v.as_bytes());
    let bearer = req
        .headers
        .get("authorization")
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    let as_client = |given: Option<&[u8]>, credential| {
        let client = clients.find(given?)?;
        Some(Authenticated {
            credential,
            client: Some(client),
        })
    };
    if let Some(found) = as_client(api_key, RelayCredential::XApiKey)
        .or_else(|| as_client(bearer, RelayCredential::Bearer))
    {
        return Ok(found);
    }
    let shorthand = |credential| Authenticated {
        credential,
        client: None,
    };
    if let (Some(expected), Some(given)) = (&auth.api_key, api_key) {
        if same_secret(given, expected.expose()) {
            return Ok(shorthand(RelayCredential::XApiKey));
        }
    }
    if auth.allow_bearer || auth.bearer_secret.is_some() {
        if let Some(token) = bearer {
            let expected = auth.bearer_secret.as_ref().or(auth.api_key.as_ref());
            if expected.is_some_and(|e| same_secret(token, e.expose())) {
                return Ok(shorthand(RelayCredential::Bearer));
            }
        }
    }
    Err(ApiError::Unauthorized)
}

/// Failed authentications an address may make per second before its requests are refused
/// unchecked for a while: guessing the relay key stays slow (10 guesses a second), while a
/// client with a mistyped key barely notices.
const MAX_FAILURES_PER_SECOND: isize = 10;
const WINDOW: Duration = Duration::from_secs(1);

/// Failed authentications per client address, in one-second windows (pingora-limits' `Rate`: a
/// count-min sketch in atomics, so fixed memory however many addresses try, and no lock).
pub struct AuthThrottle {
    failures: Rate,
}

impl AuthThrottle {
    pub fn new() -> AuthThrottle {
        AuthThrottle {
            failures: Rate::new(WINDOW),
        }
    }

    /// Whether `ip` may try to authenticate now: not when it failed too often in this window or
    /// the last one. Checked before the credential, so a right guess is refused like a wrong one.
    pub fn admits(&self, ip: &IpAddr) -> bool {
        let current = self.failures.observe(ip, 0);
        let previous = self.failures.rate(ip) * WINDOW.as_secs_f64();
        current < MAX_FAILURES_PER_SECOND && previous < MAX_FAILURES_PER_SECOND as f64
    }

    pub fn failed(&self, ip: &IpAddr) {
        self.failures.observe(ip, 1);
    }
}

/// [`authenticate`], for a client at `ip`, through `throttle`.
pub fn authenticate_client(
    throttle: &AuthThrottle,
    state: &RuntimeState,
    req: &RequestHeader,
    ip: Option<IpAddr>,
) -> Result<Authenticated, ApiError> {
    let auth = &state.config.server.auth;
    if !auth.is_enabled() && state.clients.is_empty() {
        return Ok(Authenticated::OPEN);
    }
    if ip.is_some_and(|ip| !throttle.admits(&ip)) {
        return Err(ApiError::AuthThrottled);
    }
    let outcome = authenticate(auth, &state.clients, req);
    if let (Err(_), Some(ip)) = (&outcome, ip) {
        throttle.failed(&ip);
    }
    outcome
}

/// The client's IP address, when the connection has one (not a Unix socket).
pub fn client_ip(addr: Option<&pingora::protocols::l4::socket::SocketAddr>) -> Option<IpAddr> {
    addr.and_then(|a| a.as_inet()).map(|a| a.ip())
}

impl Default for AuthThrottle {
    fn default() -> Self {
        Self::new()
    }
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
    fn an_address_that_keeps_failing_is_throttled_and_others_are_not() {
        let throttle = AuthThrottle::new();
        let attacker: IpAddr = "10.0.0.1".parse().unwrap();
        let neighbour: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..MAX_FAILURES_PER_SECOND {
            assert!(throttle.admits(&attacker));
            throttle.failed(&attacker);
        }
        assert!(!throttle.admits(&attacker));
        assert!(throttle.admits(&neighbour));
    }

    #[test]
    fn a_client_key_names_its_client_in_either_header_and_the_shorthand_still_works() {
        use crate::clients::test_client;
        let clients = Clients::build(
            &[test_client("alice", "ka"), test_client("bob", "kb")],
            &Default::default(),
            None,
            std::path::Path::new("/nonexistent/state.json"),
        );
        let a = auth(Some("shared"), false, None);
        let who = |headers: &[(&str, &str)]| authenticate(&a, &clients, &req(headers));
        assert_eq!(who(&[("x-api-key", "kb")]).unwrap().client, Some(1));
        assert_eq!(
            who(&[("authorization", "Bearer ka")]).unwrap(),
            Authenticated {
                credential: RelayCredential::Bearer,
                client: Some(0)
            }
        );
        assert_eq!(who(&[("x-api-key", "shared")]).unwrap().client, None);
        assert!(who(&[("x-api-key", "kc")]).is_err());
        assert!(who(&[("x-api-key", "k")]).is_err());
        // Clients alone switch authentication on.
        let none = auth(None, false, None);
        assert!(authenticate(&none, &clients, &req(&[])).is_err());
        assert_eq!(
            authenticate(&none, &clients, &req(&[("x-api-key", "ka")]))
                .unwrap()
                .client,
            Some(0)
        );
    }

    #[test]
    fn open_relay_requires_nothing() {
        let a = auth(None, false, None);
        assert_eq!(
            authenticate(&a, &Clients::default(), &req(&[]))
                .unwrap()
                .credential,
            RelayCredential::NotRequired
        );
    }

    #[test]
    fn api_key_must_match() {
        let a = auth(Some("relay-secret"), false, None);
        assert_eq!(
            authenticate(
                &a,
                &Clients::default(),
                &req(&[("x-api-key", "relay-secret")])
            )
            .unwrap()
            .credential,
            RelayCredential::XApiKey
        );
        assert!(authenticate(
            &a,
            &Clients::default(),
            &req(&[("x-api-key", "relay-secre")])
        )
        .is_err());
        assert!(authenticate(&a, &Clients::default(), &req(&[])).is_err());
        // Bearer is refused unless allowed.
        assert!(authenticate(
            &a,
            &Clients::default(),
            &req(&[("authorization", "Bearer relay-secret")])
        )
        .is_err());
    }

    #[test]
    fn bearer_accepts_the_bearer_secret_or_the_api_key() {
        let a = auth(Some("k"), true, None);
        assert_eq!(
            authenticate(
                &a,
                &Clients::default(),
                &req(&[("authorization", "Bearer k")])
            )
            .unwrap()
            .credential,
            RelayCredential::Bearer
        );
        let b = auth(Some("k"), true, Some("b"));
        assert!(authenticate(
            &b,
            &Clients::default(),
            &req(&[("authorization", "Bearer k")])
        )
        .is_err());
        assert_eq!(
            authenticate(
                &b,
                &Clients::default(),
                &req(&[("authorization", "Bearer b")])
            )
            .unwrap()
            .credential,
            RelayCredential::Bearer
        );
    }
}
