//! The relay's clients (`clients`): each authenticates with its own key and has its own
//! allow-lists (models, providers), limits per minute and in flight (`quota.rs`) and token
//! budgets per day and month (`budget.rs`, persisted by `store.rs`).
//!
//! A presented key is looked up by its SHA-256 in a hash map: one hash and one lookup whatever
//! the number of clients, and what a lookup's timing could reveal is about the digest, which
//! says nothing usable about the key. The config may hold only the digest (`key_sha256`).

pub mod budget;
mod file_lock;
pub mod quota;
pub mod store;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::admin::metrics::ClientHandleCell;
use crate::config::{ClientConfig, KeyDigest};
use budget::Budget;
use quota::Quota;

/// One client, ready for requests.
pub struct ClientRuntime {
    pub config: ClientConfig,
    /// The providers (indexes into the runtime state's) its requests may go to; `None`: any.
    pub providers: Option<Vec<usize>>,
    /// Its limits' state; kept across reloads while it keeps its name.
    pub quota: Arc<Quota>,
    /// Its usage toward its budgets, when it has one (shared with the state file's writer).
    pub budget: Option<Arc<Budget>>,
    /// Its metric label handles (resolved on first use).
    pub metrics: ClientHandleCell,
}

impl ClientRuntime {
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Whether its requests may go to the provider at `index`.
    pub fn may_use_provider(&self, index: usize) -> bool {
        self.providers.as_ref().is_none_or(|p| p.contains(&index))
    }
}

/// The clients of one config, and their keys' index.
#[derive(Default)]
pub struct Clients {
    list: Vec<ClientRuntime>,
    by_key: HashMap<KeyDigest, usize>,
}

impl Clients {
    /// The clients of `configs`. `provider_index` maps provider names to their index; a client
    /// that keeps its name keeps its quota's state from `previous`. The first client with a
    /// budget opens `state_file` (blocking: start-up or a reload's build, never a request).
    pub fn build(
        configs: &[ClientConfig],
        provider_index: &HashMap<String, usize>,
        previous: Option<&Clients>,
        state_file: &Path,
    ) -> Clients {
        let list: Vec<ClientRuntime> = configs
            .iter()
            .map(|c| {
                let quota = match previous.and_then(|p| p.named(&c.name)) {
                    Some(old) => {
                        old.quota.configure(c);
                        old.quota.clone()
                    }
                    None => Arc::new(Quota::new(c)),
                };
                let providers = (!c.providers.is_empty()).then(|| {
                    c.providers
                        .iter()
                        .filter_map(|p| provider_index.get(p).copied())
                        .collect()
                });
                ClientRuntime {
                    budget: c.has_budget().then(|| store::budget(&c.name, state_file)),
                    config: c.clone(),
                    providers,
                    quota,
                    metrics: ClientHandleCell::default(),
                }
            })
            .collect();
        let by_key = list
            .iter()
            .enumerate()
            .map(|(i, c)| (c.config.key_sha256, i))
            .collect();
        Clients { list, by_key }
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The client whose key is `presented`.
    pub fn find(&self, presented: &[u8]) -> Option<usize> {
        if self.list.is_empty() {
            return None;
        }
        self.by_key.get(&KeyDigest::of(presented)).copied()
    }

    pub fn get(&self, index: usize) -> &ClientRuntime {
        &self.list[index]
    }

    pub fn iter(&self) -> impl Iterator<Item = &ClientRuntime> {
        self.list.iter()
    }

    fn named(&self, name: &str) -> Option<&ClientRuntime> {
        self.list.iter().find(|c| c.config.name == name)
    }
}

/// A client with no allow-list, limit or budget, for unit tests.
#[cfg(test)]
pub fn test_client(name: &str, key: &str) -> ClientConfig {
    ClientConfig {
        name: name.into(),
        key_sha256: KeyDigest::of(key.as_bytes()),
        models: vec![],
        providers: vec![],
        rpm_limit: 0,
        itpm_limit: 0,
        otpm_limit: 0,
        max_concurrent: 0,
        daily_token_budget: 0,
        monthly_token_budget: 0,
        admin: false,
    }
}
