//! One try at an upstream: a provider, a key of its pool (or the client's own credentials), and
//! the request as that provider's kind prepares it. A request makes attempts until one is
//! answered or `routing.max_attempts` is reached; retries, and routing across providers, speak
//! in attempts.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;
use pingora::http::RequestHeader;

use crate::pool::{Demand, Reservation};
use crate::providers::UpstreamRequest;

use super::auth::RelayCredential;
use super::errors::ApiError;
use super::state::{ProviderRuntime, RuntimeState};
use crate::shared::Admission;

/// Headers that describe one hop, not the message: never forwarded upstream.
/// `accept-encoding` is dropped too so responses come back uncompressed and the relay can read
/// token usage from them.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "accept-encoding",
    "expect",
];

pub struct Attempt {
    /// 1 for the first attempt of a request.
    pub number: u32,
    /// Index into the runtime state's providers.
    pub provider: usize,
    /// The key's hold on its budget; `None` for passthrough (no pool).
    pub reservation: Option<Reservation>,
    /// What this attempt sends: the client's body with this provider's model mapping (and,
    /// for kinds that translate, their own shape).
    pub body: Bytes,
    /// The provider's response header arrived: a connection that breaks after it is no stale
    /// connection.
    pub answered: bool,
    /// Which upstream connection the attempt goes out on.
    pub connection: Connection,
    /// Counts the attempt in its provider's in-flight requests while it lives.
    _in_flight: InFlight,
}

/// The upstream connection of an attempt. A pooled connection that breaks before the provider
/// answered (it closed the connection as the relay reused it, a NAT forgot it) says nothing
/// about the provider: the attempt is made again, once, on a fresh connection; only that
/// one's failure is the provider's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Connection {
    /// Whatever the pool gives (a reused one, else a new one).
    Pooled,
    /// A reused connection broke; the next `upstream_peer` makes the attempt again.
    FreshPending,
    /// A new connection, used for this request only (never pooled).
    Fresh,
}

/// One request in flight on a provider (`least_loaded` compares these).
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

impl Attempt {
    pub fn new(
        number: u32,
        provider_index: usize,
        provider: &ProviderRuntime,
        body: Bytes,
    ) -> Attempt {
        provider.in_flight.fetch_add(1, Relaxed);
        Attempt {
            number,
            provider: provider_index,
            reservation: None,
            body,
            answered: false,
            connection: Connection::Pooled,
            _in_flight: InFlight(provider.in_flight.clone()),
        }
    }

    /// The pool key this attempt uses, as its index in the provider's pool.
    pub fn key_index(&self) -> Option<usize> {
        self.reservation.as_ref().map(Reservation::index)
    }

    /// Select and reserve a key of `provider`'s pool, skipping `tried`. Passthrough providers
    /// have none to reserve.
    pub fn reserve_key(
        &mut self,
        provider: &ProviderRuntime,
        demand: &Demand,
        tried: &[usize],
        preferred: Option<usize>,
    ) -> Result<(), ApiError> {
        let Some(pool) = &provider.pool else {
            return Ok(());
        };
        let reservation = pool
            .acquire_preferring(demand, tried, preferred)
            .map_err(|exhausted| ApiError::pool_refused(provider.name(), exhausted))?;
        self.reservation = Some(reservation);
        Ok(())
    }

    /// With `shared_state`: have the store confirm the key just reserved locally, or move the
    /// reservation to the key the store picks among the next best, or refuse when every relay
    /// together used the keys up. A store that fails leaves the pools at their local share,
    /// and the key is reserved again under it.
    pub async fn admit_shared(
        &mut self,
        state: &RuntimeState,
        provider: &ProviderRuntime,
        demand: &Demand,
        tried: &[usize],
        preferred: Option<usize>,
    ) -> Result<(), ApiError> {
        let (Some(store), Some(pool)) = (crate::shared::installed(), &provider.pool) else {
            return Ok(());
        };
        if provider.shared_keys.len() != pool.len() {
            return Ok(());
        }
        let Some(first) = self.reservation.take() else {
            return Ok(());
        };
        match store
            .admit(state, pool, &provider.shared_keys, demand, first, tried)
            .await
        {
            Admission::Granted(reservation) => {
                self.reservation = Some(reservation);
                Ok(())
            }
            Admission::Refused(exhausted) => {
                Err(ApiError::pool_refused(provider.name(), exhausted))
            }
            Admission::Failed => self.reserve_key(provider, demand, tried, preferred),
        }
    }

    /// Turn the client's request header into this attempt's upstream request: hop-by-hop
    /// headers and client credentials off, then the provider's kind prepares the rest (target,
    /// `Host`, the key, the body).
    pub fn prepare(
        &mut self,
        provider: &ProviderRuntime,
        client: RelayCredential,
        origin: &str,
        upstream: &mut RequestHeader,
    ) -> pingora::Result<()> {
        // Scan the names present (one or two match at most, e.g. `connection`) instead of ten
        // remove_header(&str) calls, each of which parses and hashes a name; no list is built.
        while let Some(name) = upstream
            .headers
            .keys()
            .find(|k| HOP_BY_HOP.contains(&k.as_str()))
            .cloned()
        {
            upstream.remove_header(&name);
        }
        let missing = |what: &str| {
            let i = self.key_index().unwrap_or_default();
            let id = provider.pool.as_ref().map_or("-", |p| p.keys()[i].id());
            super::errors::answer(super::ApiError::UpstreamUnreachable {
                provider: provider.name().to_owned(),
                reason: format!("key {id} has no {what} (see the relay's log)"),
            })
        };
        let credential = match self.key_index() {
            Some(i) => Some(
                provider
                    .current_credential(i)
                    .ok_or_else(|| missing("access token: its token exchange is failing"))?,
            ),
            None => None,
        };
        let aws = match self.key_index().and_then(|i| provider.aws_credential(i)) {
            Some(current) => {
                Some(current.ok_or_else(|| missing("AWS credentials: the AWS chain has none"))?)
            }
            None => None,
        };
        if credential.is_some() {
            // The relay supplies the key: no client credential reaches the upstream.
            upstream.remove_header("x-api-key");
            upstream.remove_header("authorization");
        } else if let Some(header) = client.header() {
            // Passthrough: the client's upstream credential goes on, the relay's own does not.
            upstream.remove_header(header);
        }
        let prepared = provider.config.kind.prepare(&mut UpstreamRequest {
            header: upstream,
            origin,
            base_url: &provider.config.base_url,
            host: &provider.host_value,
            credential: credential.as_deref(),
            aws: aws.as_deref(),
            options: &provider.config.options,
            body: &mut self.body,
        });
        // A body the provider cannot take is the client's to fix: a 400 saying why, not a 500.
        prepared.map_err(|e| match (e.etype(), &e.context) {
            (t, Some(why)) if *t == crate::providers::UNSENDABLE_BODY => {
                super::errors::answer(super::ApiError::InvalidRequest(why.as_str().to_owned()))
            }
            _ => e,
        })
    }
}
