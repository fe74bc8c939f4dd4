//! The relay's own client authentication (`server.auth`, `clients`), the throttle on an
//! address that keeps failing it, and who the client is (`server.trusted_proxies`).

use std::net::IpAddr;
use std::time::Duration;

use pingora::http::RequestHeader;
use pingora_limits::rate::Rate;
use subtle::ConstantTimeEq;

use super::errors::ApiError;
use super::state::RuntimeState;
use crate::clients::Clients;
use crate::config::{AuthConfig, Cidr};

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
    /// Whether it may read the operator's endpoints (`/status`, `/metrics`, `/v1/providers`):
    /// `server.auth`'s key, a client with `admin: true`, or anyone at an open relay.
    pub operator: bool,
}

impl Authenticated {
    const OPEN: Authenticated = Authenticated {
        credential: RelayCredential::NotRequired,
        client: None,
        operator: true,
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
            operator: clients.get(client).config.admin,
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
        operator: true,
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

/// Failed authentications an address may make per second before its failures are answered
/// 429 for a while: a client with a mistyped key barely notices, one that keeps failing is told
/// to slow down. A valid credential always passes, throttled or not: behind a load balancer (or
/// a NAT) many clients share an address, and one of them sending a revoked key must not lock
/// the others out. Guessing is not what this stops (a right guess passes); what stops guessing
/// is the keys themselves: compared in constant time, and long enough (see the README).
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

    /// Whether a failure from `ip` is still answered 401 (and counted): not when `ip` failed too
    /// often in this window or the last one.
    pub fn admits(&self, ip: &IpAddr) -> bool {
        let current = self.failures.observe(ip, 0);
        let previous = self.failures.rate(ip) * WINDOW.as_secs_f64();
        current < MAX_FAILURES_PER_SECOND && previous < MAX_FAILURES_PER_SECOND as f64
    }

    pub fn failed(&self, ip: &IpAddr) {
        self.failures.observe(ip, 1);
    }
}

/// [`authenticate`], for a client at `ip`, through `throttle`: the credential is checked first,
/// and only a failure consults (and feeds) the throttle.
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
    let outcome = authenticate(auth, &state.clients, req);
    if let (Err(_), Some(ip)) = (&outcome, ip) {
        if !throttle.admits(&ip) {
            return Err(ApiError::AuthThrottled);
        }
        throttle.failed(&ip);
    }
    outcome
}

/// Who sent a request, as far as the relay can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr {
    pub ip: IpAddr,
    /// Taken from `X-Forwarded-For` (sent by a trusted proxy), not the connection's peer.
    pub forwarded: bool,
}

/// The client's address: the TCP peer's, or, when the peer is one of `trusted` (a load
/// balancer, a reverse proxy), the right-most `X-Forwarded-For` hop that is not: each trusted
/// proxy appends the address it got the request from, so walking from the right while the hops
/// are trusted ends at the first address a trusted proxy vouches for and nobody trusted sent.
/// Everything left of it is whatever the client wrote, and ignored. `None` on a Unix socket.
/// Allocates nothing: a header walk, parses of addresses, masks.
pub fn client_addr(
    peer: Option<&pingora::protocols::l4::socket::SocketAddr>,
    headers: &http::HeaderMap,
    trusted: &[Cidr],
) -> Option<ClientAddr> {
    let peer = peer.and_then(|a| a.as_inet())?.ip().to_canonical();
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(ip));
    let direct = ClientAddr {
        ip: peer,
        forwarded: false,
    };
    if trusted.is_empty() || !is_trusted(peer) {
        return Some(direct);
    }
    let mut found = direct;
    // Several X-Forwarded-For lines read as one list, in order.
    for line in headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(text) = line.to_str() else {
            return Some(found);
        };
        for hop in text.rsplit(',') {
            // A hop that is not an address ends the walk at the last one that was.
            let Some(ip) = hop_ip(hop) else {
                return Some(found);
            };
            found = ClientAddr {
                ip,
                forwarded: true,
            };
            if !is_trusted(ip) {
                return Some(found);
            }
        }
    }
    // Every hop trusted: the left-most is as far as anyone can tell.
    Some(found)
}

/// One `X-Forwarded-For` entry: an address, also with a port (`1.2.3.4:5678`, `[::1]:80`).
fn hop_ip(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    let ip = hop
        .parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))?;
    Some(ip.to_canonical())
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

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|c| Cidr::parse(c).unwrap()).collect()
    }

    fn from(peer: &str, xff: &[&str], trusted: &[&str]) -> Option<ClientAddr> {
        let peer: std::net::SocketAddr = peer.parse().unwrap();
        let peer = pingora::protocols::l4::socket::SocketAddr::Inet(peer);
        let mut headers = http::HeaderMap::new();
        for line in xff {
            headers.append("x-forwarded-for", line.parse().unwrap());
        }
        client_addr(Some(&peer), &headers, &cidrs(trusted))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_read_only_from_a_trusted_peer_right_to_left() {
        let lb = ["10.0.0.0/8"];
        let direct = |s| {
            Some(ClientAddr {
                ip: ip(s),
                forwarded: false,
            })
        };
        let forwarded = |s| {
            Some(ClientAddr {
                ip: ip(s),
                forwarded: true,
            })
        };
        // An untrusted peer's header is its own word: ignored.
        assert_eq!(
            from("203.0.113.9:5000", &["198.51.100.1"], &lb),
            direct("203.0.113.9")
        );
        // No trusted proxies configured: the header is never read.
        assert_eq!(
            from("10.0.0.2:5000", &["198.51.100.1"], &[]),
            direct("10.0.0.2")
        );
        // Through the balancer: the address it appended.
        assert_eq!(
            from("10.0.0.2:5000", &["198.51.100.1"], &lb),
            forwarded("198.51.100.1")
        );
        // The client wrote a hop of its own first: the right-most untrusted one wins.
        assert_eq!(
            from("10.0.0.2:5000", &["1.1.1.1, 198.51.100.1, 10.0.0.7"], &lb),
            forwarded("198.51.100.1")
        );
        // Several header lines are one list.
        assert_eq!(
            from(
                "10.0.0.2:5000",
                &["1.1.1.1", "198.51.100.1", "10.0.0.7"],
                &lb
            ),
            forwarded("198.51.100.1")
        );
        // Garbage stops the walk at the last address that was one.
        assert_eq!(
            from("10.0.0.2:5000", &["1.1.1.1, nonsense, 10.0.0.7"], &lb),
            forwarded("10.0.0.7")
        );
        assert_eq!(
            from("10.0.0.2:5000", &["nonsense"], &lb),
            direct("10.0.0.2")
        );
        // No header from a trusted peer: the peer.
        assert_eq!(from("10.0.0.2:5000", &[], &lb), direct("10.0.0.2"));
        // All hops trusted: the left-most. Ports and IPv6 brackets are accepted.
        assert_eq!(
            from("10.0.0.2:5000", &["10.9.9.9:443, 10.0.0.7"], &lb),
            forwarded("10.9.9.9")
        );
        assert_eq!(
            from("[::ffff:10.0.0.2]:5000", &["[2001:db8::1]:80"], &lb),
            forwarded("2001:db8::1")
        );
    }

    #[test]
    fn a_valid_credential_passes_from_a_throttled_address() {
        let throttle = AuthThrottle::new();
        let shared: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..MAX_FAILURES_PER_SECOND {
            throttle.failed(&shared);
        }
        let config = crate::config::load_str(
            "server:\n  auth:\n    api_key: relay-secret\nproviders:\n  - name: a\n    \
             type: anthropic\n    base_url: http://127.0.0.1:9\n",
        )
        .unwrap();
        let state = RuntimeState::build(config, None);
        let good = req(&[("x-api-key", "relay-secret")]);
        let bad = req(&[("x-api-key", "revoked")]);
        assert!(authenticate_client(&throttle, &state, &good, Some(shared)).is_ok());
        assert!(matches!(
            authenticate_client(&throttle, &state, &bad, Some(shared)),
            Err(ApiError::AuthThrottled)
        ));
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
                client: Some(0),
                operator: false,
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
