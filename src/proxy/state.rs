//! The runtime state requests read: the validated config plus, per provider, its key pool and
//! resolved addresses. Held in an `ArcSwap` so a reload replaces it whole while requests in
//! flight keep the `Arc` they started with.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use http::{HeaderName, HeaderValue};

use super::auth::AuthThrottle;
use crate::admin::metrics::{ConnectionHandles, KeyHandleCell};
use crate::clients::Clients;
use crate::config::{self, Config, ProviderConfig, RoutingStrategy};
use crate::pool::{KeyPool, KeySpec};
use crate::providers::aws_credentials::{chain_slot, AwsCredentials};
use crate::providers::gcp_token::TokenSlot;
use crate::providers::{resolve_now, ResolvedAddrs};
use crate::routing::{longest_prefix, Breaker, Router, SessionTable};

/// One provider, ready for requests.
pub struct ProviderRuntime {
    pub config: ProviderConfig,
    /// Present when the provider has keys; `None` = passthrough of the client's credentials.
    pub pool: Option<KeyPool>,
    pub addrs: Arc<ResolvedAddrs>,
    /// Its circuit breaker; carried across reloads while the provider keeps its name.
    pub breaker: Arc<Breaker>,
    /// Requests in flight on it (for `least_loaded`); carried across reloads too.
    pub in_flight: Arc<AtomicUsize>,
    /// Its metric label handles: per key, and for passthrough (resolved on first use).
    pub key_metrics: Vec<KeyHandleCell>,
    pub passthrough_metrics: KeyHandleCell,
    pub connection_metrics: ConnectionHandles,
    /// Header values built once per config rather than per request (a clone is a reference
    /// count): the upstream's `Host`, per key its credential (marked sensitive) and its id, the
    /// pool size.
    pub host_value: HeaderValue,
    credentials: Vec<(HeaderName, HeaderValue)>,
    /// Per key, for kinds whose keys are Google credentials: its OAuth token, kept fresh off
    /// the request path. Empty for other kinds.
    tokens: Vec<Option<Arc<TokenSlot>>>,
    /// Per key, for kinds that sign with AWS credentials: the key's (`None` for a key that is
    /// not an AWS credential, e.g. a Bedrock API key). Empty for other kinds.
    aws: Vec<Option<AwsCredentials>>,
    key_id_values: Vec<Option<HeaderValue>>,
    pub keys_total_value: HeaderValue,
    /// Per key, where `shared_state` keeps its budget (empty without `shared_state` or keys).
    pub shared_keys: Vec<Arc<crate::shared::KeyNames>>,
}

impl ProviderRuntime {
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Whether this provider serves `model` (an empty model list serves every model).
    pub fn serves(&self, model: &str) -> bool {
        self.config.models.is_empty() || self.config.models.iter().any(|m| m == model)
    }

    /// The credential to send for the key at `index`: its current OAuth token for kinds that
    /// use them (`None` while it has none), else its fixed header.
    pub fn current_credential(
        &self,
        index: usize,
    ) -> Option<std::borrow::Cow<'_, (HeaderName, HeaderValue)>> {
        match self.tokens.get(index) {
            Some(slot) => slot
                .as_ref()
                .and_then(|s| s.credential())
                .map(std::borrow::Cow::Owned),
            // The fixed header, built once per config: borrowed, not cloned per request.
            None => Some(std::borrow::Cow::Borrowed(&self.credentials[index])),
        }
    }

    /// The keys that have no credential to send right now (an OAuth token or AWS credentials
    /// not fetched yet, or expired while their source fails): routing passes them by, as it
    /// passes a key that is cooling down. Empty (and cheap) for kinds with fixed credentials.
    pub fn uncredentialed(&self) -> impl Iterator<Item = usize> + '_ {
        let tokens = self
            .tokens
            .iter()
            .enumerate()
            .filter(|(_, slot)| slot.as_ref().is_none_or(|s| !s.has_token()))
            .map(|(i, _)| i);
        let aws = self
            .aws
            .iter()
            .enumerate()
            .filter(|(_, c)| c.as_ref().is_some_and(|c| !c.is_available()))
            .map(|(i, _)| i);
        tokens.chain(aws)
    }

    /// The AWS credentials to sign with for the key at `index`: `None` when the key is not an
    /// AWS credential, `Some(None)` while the AWS chain has none for it.
    pub fn aws_credential(
        &self,
        index: usize,
    ) -> Option<Option<Arc<crate::config::AwsCredential>>> {
        self.aws.get(index)?.as_ref().map(AwsCredentials::current)
    }

    /// The `x-cc-relay-key-id` value for the key at `index`, `None` when the id is not a valid
    /// header value.
    pub fn key_id_value(&self, index: usize) -> Option<&HeaderValue> {
        self.key_id_values.get(index).and_then(Option::as_ref)
    }
}

/// Per key: its credential header as the provider's kind wants it, the value marked sensitive
/// (never logged by the `http` crate). Config validation refuses keys that a header cannot
/// carry; were one to get through, it would be sent empty and refused upstream like any wrong
/// key.
fn credentials(provider: &ProviderConfig) -> Vec<(HeaderName, HeaderValue)> {
    provider
        .keys
        .iter()
        .map(|k| {
            let (name, mut value) = provider.kind.credential(k.key.expose()).unwrap_or_else(|| {
                (
                    HeaderName::from_static("x-api-key"),
                    HeaderValue::from_static(""),
                )
            });
            value.set_sensitive(true);
            (name, value)
        })
        .collect()
}

/// Per key of a provider whose kind uses OAuth tokens, its token slot (a new one gets its first
/// token now: at startup or reload, never on a request).
fn token_slots(provider: &ProviderConfig) -> Vec<Option<Arc<TokenSlot>>> {
    if !provider.kind.uses_tokens() {
        return Vec::new();
    }
    provider
        .keys
        .iter()
        .map(|k| {
            crate::providers::gcp_token::slot_for(&crate::providers::credential_source(k))
                .map_err(|e| log::error!("provider {} key {}: {e}", provider.name, k.id))
                .ok()
        })
        .collect()
}

/// Per key of a provider whose kind signs with AWS credentials: its own, or the AWS chain's
/// slot for the provider's region (a new slot gets its first credentials now: at start-up or
/// reload, never on a request).
fn aws_credentials(provider: &ProviderConfig) -> Vec<Option<AwsCredentials>> {
    if !provider.kind.takes_aws_credentials() {
        return Vec::new();
    }
    let region = crate::providers::bedrock::region(&provider.options);
    provider
        .keys
        .iter()
        .map(|k| match (&k.aws, k.aws_chain) {
            (Some(own), _) => Some(AwsCredentials::Fixed(Arc::new(own.clone()))),
            (None, true) => Some(AwsCredentials::Chain(chain_slot(region))),
            (None, false) => None,
        })
        .collect()
}

pub struct RuntimeState {
    pub config: Arc<Config>,
    pub providers: Vec<ProviderRuntime>,
    /// The routing strategy's state for this config (rotation cursors, weighted schedule).
    pub router: Router,
    /// Index into `providers` by name.
    by_name: HashMap<String, usize>,
    /// Bumped by every successful reload, so clients (e.g. `cc-relay reload`) can see it land.
    pub generation: u64,
    /// The relay's clients (`clients`): their keys, allow-lists, quotas and budgets.
    pub clients: Clients,
}

fn key_specs(provider: &ProviderConfig) -> Vec<KeySpec> {
    provider
        .keys
        .iter()
        .map(|k| KeySpec {
            id: k.id.clone(),
            fingerprint: config::key_fingerprint(k.key.expose()),
            rpm_limit: k.rpm_limit,
            itpm_limit: k.itpm_limit,
            otpm_limit: k.otpm_limit,
            priority: k.priority,
            weight: k.weight,
            max_cooldown: provider.pooling.max_cooldown,
            max_concurrent: k.max_concurrent,
        })
        .collect()
}

impl RuntimeState {
    /// Build the state for `config`. With `previous`, every provider that keeps its name keeps
    /// its pool's state for the keys that are still there, and its resolved addresses when the
    /// host did not change. Resolves new hosts (blocking): call from start-up or a background
    /// task, never from a request.
    pub fn build(config: Config, previous: Option<&RuntimeState>) -> RuntimeState {
        let mut providers = Vec::with_capacity(config.providers.len());
        for p in &config.providers {
            let old = previous.and_then(|s| s.provider(&p.name));
            let specs = key_specs(p);
            let pool = if specs.is_empty() {
                None
            } else {
                Some(match old.and_then(|o| o.pool.as_ref()) {
                    Some(old_pool) => old_pool.rebuild(specs, p.pooling.strategy),
                    None => KeyPool::new(specs, p.pooling.strategy),
                })
            };
            let addrs = match old {
                Some(o)
                    if o.config.base_url.host == p.base_url.host
                        && o.config.base_url.port == p.base_url.port =>
                {
                    o.addrs.clone()
                }
                _ => Arc::new(ResolvedAddrs::new(&p.base_url, resolve_now(&p.base_url))),
            };
            providers.push(ProviderRuntime {
                host_value: HeaderValue::from_str(&p.base_url.host_header())
                    .unwrap_or_else(|_| HeaderValue::from_static("")),
                credentials: credentials(p),
                tokens: token_slots(p),
                aws: aws_credentials(p),
                key_id_values: p
                    .keys
                    .iter()
                    .map(|k| HeaderValue::from_str(&k.id).ok())
                    .collect(),
                keys_total_value: HeaderValue::from(p.keys.len()),
                shared_keys: match &config.shared_state {
                    Some(s) if pool.is_some() => crate::shared::pool_names(
                        &s.namespace,
                        &p.name,
                        p.keys.iter().map(|k| k.key.expose()),
                    ),
                    _ => Vec::new(),
                },
                breaker: old.map_or_else(Default::default, |o| o.breaker.clone()),
                in_flight: old.map_or_else(Default::default, |o| o.in_flight.clone()),
                key_metrics: p.keys.iter().map(|_| KeyHandleCell::default()).collect(),
                passthrough_metrics: KeyHandleCell::default(),
                connection_metrics: ConnectionHandles::default(),
                config: p.clone(),
                pool,
                addrs,
            });
        }
        let by_name = providers
            .iter()
            .enumerate()
            .map(|(i, p)| (p.config.name.clone(), i))
            .collect();
        let clients = Clients::build(
            &config.clients,
            &by_name,
            previous.map(|s| &s.clients),
            &config.server.state_file,
        );
        let weights: Vec<f64> = providers.iter().map(|p| p.config.weight).collect();
        RuntimeState {
            router: Router::new(config.routing.strategy, &weights),
            generation: previous.map_or(1, |s| s.generation + 1),
            config: Arc::new(config),
            providers,
            by_name,
            clients,
        }
    }

    pub fn provider(&self, name: &str) -> Option<&ProviderRuntime> {
        self.by_name.get(name).map(|&i| &self.providers[i])
    }

    /// The model after the global `routing.model_mapping` (exact rewrites; under `model_based`
    /// the mapping picks providers instead and the model is left alone).
    pub fn mapped_model<'a>(&'a self, model: Option<&'a str>) -> Option<&'a str> {
        let routing = &self.config.routing;
        if routing.strategy == RoutingStrategy::ModelBased {
            return model;
        }
        model.map(|m| {
            routing
                .model_mapping
                .get(m)
                .map(String::as_str)
                .unwrap_or(m)
        })
    }

    /// The enabled providers that may serve `model`, in config order, and the one to prefer
    /// among them (`routing.default_provider` when it applies).
    ///
    /// `model_based`: the provider of the longest `routing.model_mapping` prefix, else
    /// `routing.default_provider`, else as below. Otherwise: the providers that list the model
    /// (after the global mapping); if none does, those that serve any model (`models` empty),
    /// `routing.default_provider` preferred; if there are none, every enabled provider.
    pub fn candidates(&self, model: Option<&str>) -> (Vec<usize>, Option<usize>) {
        let routing = &self.config.routing;
        let enabled = |i: &usize| self.providers[*i].config.enabled;
        let default = routing
            .default_provider
            .as_deref()
            .and_then(|d| self.by_name.get(d).copied())
            .filter(enabled);
        if routing.strategy == RoutingStrategy::ModelBased {
            let mapped = model
                .and_then(|m| longest_prefix(&routing.model_mapping, m))
                .and_then(|name| self.by_name.get(name).copied())
                .filter(enabled);
            if let Some(p) = mapped.or(default) {
                return (vec![p], None);
            }
        }
        let all = || (0..self.providers.len()).filter(enabled);
        if let Some(m) = self.mapped_model(model) {
            let listing: Vec<usize> = all()
                .filter(|&i| {
                    let p = &self.providers[i];
                    !p.config.models.is_empty() && p.serves(m)
                })
                .collect();
            if !listing.is_empty() {
                return (listing, None);
            }
        }
        let generic: Vec<usize> = all()
            .filter(|&i| self.providers[i].config.models.is_empty())
            .chain(default)
            .collect();
        let mut generic = generic;
        generic.sort_unstable();
        generic.dedup();
        if generic.is_empty() {
            (all().collect(), default)
        } else {
            (generic, default)
        }
    }
}

/// The state shared by the proxy and the reloader.
pub struct Shared {
    pub current: ArcSwap<RuntimeState>,
    /// The error of the last reload when it failed (cleared by a successful one).
    pub last_reload_error: ArcSwapOption<String>,
    /// Every reload attempt, successful or not, so a client can tell its own one finished.
    pub reload_attempts: AtomicU64,
    /// Set when the process got SIGQUIT or SIGTERM: it is handing over or stopping, so every
    /// response from now on closes its connection. Clients then move to the new process while
    /// this one still serves, instead of racing an idle keep-alive connection that Pingora
    /// drops when the drain begins.
    pub draining: AtomicBool,
    /// Proxied requests in flight (`server.max_concurrent` counts these; a drain waits for 0).
    pub in_flight: Arc<AtomicUsize>,
    /// Failed authentications per client address; kept across reloads.
    pub auth_throttle: AuthThrottle,
    /// Where each session sticks (`routing.sticky_*`); replaced only when its size changes.
    pub sessions: ArcSwap<SessionTable>,
    /// The recent past for the status page (requests and errors per slot, the last errors).
    pub activity: crate::admin::activity::Activity,
}

pub type SharedState = Arc<Shared>;

pub fn shared(state: RuntimeState) -> SharedState {
    Arc::new(Shared {
        last_reload_error: ArcSwapOption::empty(),
        reload_attempts: AtomicU64::new(0),
        draining: AtomicBool::new(false),
        in_flight: Arc::new(AtomicUsize::new(0)),
        auth_throttle: AuthThrottle::new(),
        sessions: ArcSwap::from_pointee(SessionTable::new(
            state.config.routing.sticky_max_sessions,
        )),
        current: ArcSwap::from_pointee(state),
        activity: Default::default(),
    })
}
