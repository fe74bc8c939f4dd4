//! Where a pool's keys live in the store.
//!
//! `<namespace>:{<provider>}:k:<id>` holds a key's buckets and cooldown, `…:f:<id>` its
//! reservations in flight. The provider name in braces is the hash tag: one pool's keys land
//! in one Redis Cluster slot, which a script touching several of them needs. The id is a hash
//! of the secret, the same on every relay (and never the secret, which no relay writes to the
//! store): two relays configured with the same key share its budget whatever they call it.

use std::sync::Arc;

use sha2::{Digest, Sha256};

/// The store's names for one key.
#[derive(Debug)]
pub struct KeyNames {
    /// The pool's hash tag: keys with the same one can go to one script call.
    pub tag: Arc<str>,
    pub hash: Arc<str>,
    pub flight: Arc<str>,
}

/// The names of every key of one provider's pool, in the pool's order.
pub fn pool_names<'a>(
    namespace: &str,
    provider: &str,
    secrets: impl Iterator<Item = &'a str>,
) -> Vec<Arc<KeyNames>> {
    // Braces would end the hash tag early; the name is only a label here.
    let tag: String = provider
        .chars()
        .map(|c| if c == '{' || c == '}' { '_' } else { c })
        .collect();
    let shared_tag: Arc<str> = format!("{namespace}:{{{tag}}}").into();
    secrets
        .map(|secret| {
            let id = key_id(secret);
            Arc::new(KeyNames {
                tag: shared_tag.clone(),
                hash: format!("{namespace}:{{{tag}}}:k:{id}").into(),
                flight: format!("{namespace}:{{{tag}}}:f:{id}").into(),
            })
        })
        .collect()
}

/// The sorted set where every relay of the namespace stamps its heartbeat.
pub fn relays_set(namespace: &str) -> String {
    format!("{namespace}:relays")
}

/// 96 bits of SHA-256 over the secret (domain-separated): stable, and of no use for finding
/// the secret.
fn key_id(secret: &str) -> String {
    let digest = Sha256::new()
        .chain_update(b"cc-relay shared_state key id\0")
        .chain_update(secret.as_bytes())
        .finalize();
    digest[..12].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_pool_one_hash_tag_and_no_secret() {
        let names = pool_names(
            "cc",
            "anth{x}",
            ["sk-ant-secret-1", "sk-ant-secret-2"].into_iter(),
        );
        assert_eq!(names.len(), 2);
        for n in &names {
            assert!(n.hash.starts_with("cc:{anth_x_}:k:"), "{}", n.hash);
            assert!(n.flight.starts_with("cc:{anth_x_}:f:"), "{}", n.flight);
            assert!(!n.hash.contains("secret"));
        }
        assert_ne!(names[0].hash, names[1].hash);
        let again = pool_names("cc", "other", ["sk-ant-secret-1"].into_iter());
        assert_eq!(
            names[0].hash.rsplit(':').next(),
            again[0].hash.rsplit(':').next(),
            "the same secret has the same id under any provider"
        );
    }
}
