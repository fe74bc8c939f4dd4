//! Provider kinds: everything that makes an upstream "anthropic", "zai", "vertex" or "bedrock"
//! lives in the kind's own module, behind [`ProviderKind`]. The rest of the relay asks the kind:
//! the config walker for its own fields, validation for their checks and its default base URL,
//! the proxy for how to prepare an attempt's request, what a response status means, what the
//! response headers teach the pool, and whether the response body needs adapting before usage
//! is read.
//!
//! Adding a kind: write its module (implement [`ProviderKind`]), add it to [`KINDS`]. Nothing
//! else changes: `docs/ARCHITECTURE.md` lists the files.
//!
//! Host names are resolved here too (`resolve`), outside the request path: `HttpPeer::new`
//! resolves DNS synchronously and panics when resolution fails, so the proxy only ever builds
//! peers from the `SocketAddr`s kept fresh in the background.

mod anthropic;
pub mod aws_credentials;
mod azure;
pub mod bedrock;
mod classify;
pub mod gcp_token;
pub mod reshape;
mod resolve;
mod vertex;
mod wire;

use std::fmt;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};

pub use anthropic::{AuthStyle, ANTHROPIC, MINIMAX, OLLAMA, ZAI};
pub use azure::AZURE;
pub use classify::Verdict;
pub use resolve::{resolve_now, ResolvedAddrs};
pub use vertex::{credential_source, VERTEX};

use crate::config::{BaseUrl, ConfigError, FieldSchema, ProviderConfig};
use crate::pool::RateLimitHeaders;

/// What one kind of provider knows about itself. Implementations are stateless statics; what
/// a configured provider needs at run time is in its `ProviderConfig` (and, for a kind's own
/// fields, `ProviderConfig::options`).
pub trait ProviderKind: Send + Sync + 'static {
    /// Its `type:` in the config.
    fn name(&self) -> &'static str;

    /// The upstream when the provider sets no `base_url`.
    fn default_base_url(&self) -> &'static str;

    /// Provider fields only this kind has, with their schema: the config walker checks them
    /// (types, `${VAR}` expansion, unknown-field errors with their path) and keeps them in
    /// `ProviderConfig::options`.
    fn config_fields(&self) -> &'static [(&'static str, FieldSchema)] {
        &[]
    }

    /// Finish a configured provider of this kind from its own fields (e.g. a base URL derived
    /// from them when `base_url_given` is false) and check them beyond the common checks, each
    /// error with its field path under `path`.
    fn configure(
        &self,
        _provider: &mut ProviderConfig,
        _base_url_given: bool,
        _path: &str,
    ) -> Vec<ConfigError> {
        Vec::new()
    }

    /// The header that carries one of its keys, built once per config (the value marked
    /// sensitive by the caller). `None` when the key cannot be carried in a header.
    fn credential(&self, key: &str) -> Option<(HeaderName, HeaderValue)>;

    /// Whether its keys are Google credentials whose OAuth tokens `gcp_token` keeps fresh (the
    /// attempt's credential is then the key's current token, not `credential`).
    fn uses_tokens(&self) -> bool {
        false
    }

    /// Whether its keys may be AWS credentials (`aws_access_key_id`, … in `keys`), with which
    /// `prepare` signs.
    fn takes_aws_credentials(&self) -> bool {
        false
    }

    /// Prepare one attempt's upstream request: target, `Host`, credential, body.
    fn prepare(&self, request: &mut UpstreamRequest<'_>) -> pingora::Result<()>;

    /// What a response status means for the attempt and its key.
    fn classify(&self, status: u16) -> Verdict {
        Verdict::of(status)
    }

    /// What the response headers say about the key's limits (authoritative for the pool).
    fn rate_limits(&self, response: &ResponseHeader, now: SystemTime) -> RateLimitHeaders {
        anthropic::rate_limit_headers(response, now)
    }

    /// How long a throttled key should rest, when the response says.
    fn retry_after(&self, response: &ResponseHeader, now: SystemTime) -> Option<Duration> {
        anthropic::retry_after_header(response, now)
    }

    /// A response body adapter for a kind whose wire format is not Anthropic's SSE or JSON
    /// (e.g. an event stream to re-emit as SSE), applied before usage is read. It may rewrite
    /// the response header to match (content type, status). `counting`: the request was
    /// `count_tokens`.
    fn response_adapter(
        &self,
        _response: &mut ResponseHeader,
        _counting: bool,
    ) -> Option<Box<dyn ResponseAdapter>> {
        None
    }
}

/// The error type of a kind's `prepare` when the client's body cannot be sent to the provider
/// (e.g. it names no model, which Vertex and Bedrock need for the URL): the relay answers it
/// with a 400 carrying the kind's message, as the client's mistake.
pub const UNSENDABLE_BODY: pingora::ErrorType =
    pingora::ErrorType::Custom("the request body cannot be sent to this provider");

/// Rewrites a response body chunk by chunk (sync: Pingora's body filters are).
pub trait ResponseAdapter: Send + Sync {
    fn adapt(&mut self, chunk: &mut Option<Bytes>, end_of_stream: bool);
}

/// One attempt's upstream request as a provider kind prepares it.
pub struct UpstreamRequest<'a> {
    /// The request header Pingora will send (a copy of the client's, hop-by-hop and client
    /// credentials already removed when the relay supplies the key).
    pub header: &'a mut RequestHeader,
    /// The client's path and query (origin form), whatever target form the client used.
    pub origin: &'a str,
    pub base_url: &'a BaseUrl,
    /// The upstream's `Host` value, built once per config.
    pub host: &'a HeaderValue,
    /// The key's credential header, built once per config; `None` = passthrough of the client's
    /// own credentials.
    pub credential: Option<&'a (HeaderName, HeaderValue)>,
    /// The body to send; the kind may replace it (a translation, or a signature over it).
    pub body: &'a mut Bytes,
    /// The AWS credentials of this attempt's key, for kinds that sign with them (`None`:
    /// passthrough, or a key that is not an AWS credential).
    pub aws: Option<&'a crate::config::AwsCredential>,
    /// The provider's kind-specific fields (`ProviderConfig::options`), e.g. its AWS region.
    pub options: &'a serde_yaml::Mapping,
}

/// A kind's own field of `provider` (`ProviderConfig::options`), trimmed; `None` when absent
/// or empty.
fn kind_option<'a>(provider: &'a ProviderConfig, name: &str) -> Option<&'a str> {
    provider
        .options
        .get(name)
        .and_then(|v| v.as_str())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// A provider kind, as configs and runtime state hold it: a reference to its static.
#[derive(Clone, Copy)]
pub struct Kind(&'static dyn ProviderKind);

impl std::ops::Deref for Kind {
    type Target = dyn ProviderKind;
    fn deref(&self) -> &Self::Target {
        self.0
    }
}

impl fmt::Debug for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.name())
    }
}

impl PartialEq for Kind {
    fn eq(&self, other: &Self) -> bool {
        self.0.name() == other.0.name()
    }
}

impl Eq for Kind {}

/// Every kind the relay implements, by `type:` name.
pub static KINDS: &[Kind] = &[
    Kind(&ANTHROPIC),
    Kind(&ZAI),
    Kind(&MINIMAX),
    Kind(&OLLAMA),
    Kind(&AZURE),
    Kind(&VERTEX),
    Kind(&bedrock::BEDROCK),
];

/// The kind named `name` (as written in `type:`, matched case-insensitively).
pub fn kind_named(name: &str) -> Option<Kind> {
    KINDS
        .iter()
        .copied()
        .find(|k| k.name().eq_ignore_ascii_case(name.trim()))
}

/// `anthropic, zai, …`, for messages.
pub fn supported_kinds() -> String {
    KINDS
        .iter()
        .map(|k| k.name())
        .collect::<Vec<_>>()
        .join(", ")
}
