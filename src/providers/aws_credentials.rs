//! AWS credentials for Bedrock keys, as requests read them: a key's own (fixed for the config's
//! life) or the standard AWS chain's, kept fresh off the request path.
//!
//! The chain is the AWS SDK's own (`aws-config`'s `DefaultCredentialsChain`): the environment
//! (`AWS_ACCESS_KEY_ID`, …), the shared config and credentials files (`AWS_PROFILE`, SSO,
//! `credential_process`, role assumption), web identity (`AWS_WEB_IDENTITY_TOKEN_FILE` +
//! `AWS_ROLE_ARN`, EKS), the container endpoint (ECS, EKS Pod Identity) and the EC2 instance
//! metadata service (IMDSv2). Its HTTP client is rustls over ring, as the rest of the relay.
//!
//! One task per region (the chain's STS calls are regional) on a runtime of its own fetches
//! credentials, stores them in an `ArcSwapOption` requests read without a lock, and fetches
//! again at half the remaining lifetime (every 15 minutes for credentials that do not expire,
//! so a rotated file or environment is picked up by a reload at the latest). A failed fetch is
//! retried with backoff while the current credentials still hold; once they have expired the
//! key has none and its attempts fail like a key whose token exchange fails.
//!
//! Nothing here logs or returns a secret access key or a session token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use aws_config::default_provider::credentials::DefaultCredentialsChain;
use aws_config::provider_config::ProviderConfig;
use aws_config::Region;
use aws_credential_types::provider::ProvideCredentials;
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use once_cell::sync::Lazy;

use crate::config::{AwsCredential, Secret};

/// Credentials that do not expire (environment, files) are read again this often.
const REREAD: Duration = Duration::from_secs(15 * 60);
/// Never fetch again sooner than this after a success.
const MIN_RENEW: Duration = Duration::from_secs(1);
/// How long start-up or a reload waits for a new region's first credentials before going on
/// without them (the task keeps trying).
const FIRST_FETCH: Duration = Duration::from_secs(10);

/// A Bedrock key's AWS credentials.
pub enum AwsCredentials {
    /// The key's own (`aws_access_key_id`, … in `keys`, or the provider's).
    Fixed(Arc<AwsCredential>),
    /// The standard chain's, for a provider without credentials of its own.
    Chain(Arc<ChainSlot>),
}

impl AwsCredentials {
    /// The credentials to sign with now; `None` while the chain has none.
    pub fn current(&self) -> Option<Arc<AwsCredential>> {
        match self {
            AwsCredentials::Fixed(c) => Some(c.clone()),
            AwsCredentials::Chain(slot) => slot.current.load_full(),
        }
    }
}

impl AwsCredentials {
    /// Whether there are credentials to sign with now (without taking a reference to them).
    pub fn is_available(&self) -> bool {
        match self {
            AwsCredentials::Fixed(_) => true,
            AwsCredentials::Chain(slot) => slot.current.load().is_some(),
        }
    }
}

/// The chain's current credentials for one region.
pub struct ChainSlot {
    current: ArcSwapOption<AwsCredential>,
}

/// Live slots by region: a reload keeps a region's slot (and its credentials).
static SLOTS: Lazy<Mutex<HashMap<String, Weak<ChainSlot>>>> =
    Lazy::new(|| Mutex::new(HashMap::new()));

/// The runtime the chain's tasks run on (the AWS SDK is async; the proxy's runtimes belong to
/// Pingora's services and may be replaced on a reload).
static RUNTIME: Lazy<Option<tokio::runtime::Runtime>> = Lazy::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("cc-relay-aws-credentials")
        .enable_all()
        .build()
        .map_err(|e| log::error!("bedrock: cannot start the AWS credentials runtime: {e}"))
        .ok()
});

/// The chain's slot for `region`, shared with the running config's when there is one. A new
/// one starts its task and waits (at start-up or reload, never on a request) up to
/// [`FIRST_FETCH`] for the first credentials.
pub fn chain_slot(region: &str) -> Arc<ChainSlot> {
    let mut slots = SLOTS.lock().unwrap_or_else(|e| e.into_inner());
    slots.retain(|_, slot| slot.strong_count() > 0);
    if let Some(slot) = slots.get(region).and_then(Weak::upgrade) {
        return slot;
    }
    let slot = Arc::new(ChainSlot {
        current: ArcSwapOption::empty(),
    });
    slots.insert(region.to_owned(), Arc::downgrade(&slot));
    drop(slots);
    let Some(runtime) = RUNTIME.as_ref() else {
        return slot;
    };
    let (first, fetched) = std::sync::mpsc::channel();
    runtime.spawn(keep_fresh(region.to_owned(), Arc::downgrade(&slot), first));
    if fetched.recv_timeout(FIRST_FETCH).is_err() {
        log::warn!(
            "bedrock: no AWS credentials for {region} after {}s; requests on its key fail \
             until the chain answers",
            FIRST_FETCH.as_secs()
        );
    }
    slot
}

/// When to fetch again after a success: at half the remaining lifetime.
fn renew_after(expiry: Option<SystemTime>, now: SystemTime) -> Duration {
    match expiry {
        Some(at) => (at.duration_since(now).unwrap_or_default() / 2).max(MIN_RENEW),
        None => REREAD,
    }
}

fn converted(c: &aws_credential_types::Credentials) -> AwsCredential {
    AwsCredential {
        access_key_id: c.access_key_id().to_owned(),
        secret_access_key: Secret::new(c.secret_access_key().to_owned()),
        session_token: c.session_token().map(|t| Secret::new(t.to_owned())),
    }
}

/// The task behind one slot; it ends when the slot is dropped.
async fn keep_fresh(region: String, slot: Weak<ChainSlot>, first: std::sync::mpsc::Sender<()>) {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let chain = DefaultCredentialsChain::builder()
        .configure(ProviderConfig::default().with_http_client(http))
        .region(Region::new(region.clone()))
        .build()
        .await;
    let mut expiry: Option<SystemTime> = None;
    let mut failures = 0u32;
    loop {
        let fetched = chain.provide_credentials().await;
        let Some(slot) = slot.upgrade() else {
            return;
        };
        let now = SystemTime::now();
        let wait = match fetched {
            Ok(credentials) => {
                if failures > 0 || slot.current.load().is_none() {
                    log::info!(
                        "bedrock: AWS credentials for {region} from the chain (key id {})",
                        credentials.access_key_id()
                    );
                }
                slot.current.store(Some(Arc::new(converted(&credentials))));
                expiry = credentials.expiry();
                failures = 0;
                renew_after(expiry, now)
            }
            Err(e) => {
                failures += 1;
                let mut backoff = Duration::from_secs(1 << failures.min(6));
                match expiry.map(|at| at.duration_since(now)) {
                    // Expired: the key has no credentials until a fetch succeeds.
                    Some(Err(_)) => {
                        slot.current.store(None);
                        expiry = None;
                    }
                    // Wake up when they expire at the latest, to stop signing with them.
                    Some(Ok(left)) => backoff = backoff.min(left.max(MIN_RENEW)),
                    None => {}
                }
                log::warn!(
                    "bedrock: the AWS credential chain for {region} failed ({}); again in {}s",
                    messages(&e),
                    backoff.as_secs()
                );
                backoff
            }
        };
        drop(slot);
        let _ = first.send(());
        tokio::time::sleep(wait).await;
    }
}

/// An error and its sources, their messages only: the SDK's `Debug` forms carry raw responses
/// (a token, a credential document), which must not reach the log.
fn messages(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let message = s.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_renewed_at_half_their_remaining_lifetime() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let hour = Duration::from_secs(3600);
        assert_eq!(renew_after(Some(now + hour), now), hour / 2);
        assert_eq!(
            renew_after(Some(now + Duration::from_millis(10)), now),
            MIN_RENEW
        );
        assert_eq!(renew_after(Some(now - hour), now), MIN_RENEW);
        assert_eq!(renew_after(None, now), REREAD);
    }
}
