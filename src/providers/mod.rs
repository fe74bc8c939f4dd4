//! Provider kinds: how each Anthropic-compatible upstream wants its credential, and where its
//! address comes from.
//!
//! Host names are resolved here, outside the request path: `HttpPeer::new` resolves DNS
//! synchronously and panics when resolution fails, so the proxy only ever builds peers from the
//! `SocketAddr`s this module keeps fresh in the background.

mod resolve;

pub use resolve::{resolve_now, ResolvedAddrs};

use crate::config::ProviderKind;

/// How a provider expects the API key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthStyle {
    /// `x-api-key: KEY` (Anthropic, Z.AI, Ollama when given a key).
    XApiKey,
    /// `Authorization: Bearer KEY` (MiniMax).
    Bearer,
}

impl AuthStyle {
    pub fn for_kind(kind: ProviderKind) -> AuthStyle {
        match kind {
            ProviderKind::Minimax => AuthStyle::Bearer,
            ProviderKind::Anthropic | ProviderKind::Zai | ProviderKind::Ollama => {
                AuthStyle::XApiKey
            }
        }
    }

    /// The header the key goes in.
    pub fn header_name(self) -> &'static str {
        match self {
            AuthStyle::XApiKey => "x-api-key",
            AuthStyle::Bearer => "authorization",
        }
    }

    /// The header value for `key`.
    pub fn header_value(self, key: &str) -> String {
        match self {
            AuthStyle::XApiKey => key.to_owned(),
            AuthStyle::Bearer => format!("Bearer {key}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimax_uses_bearer_and_the_rest_x_api_key() {
        assert_eq!(
            AuthStyle::for_kind(ProviderKind::Minimax).header_value("k"),
            "Bearer k"
        );
        assert_eq!(
            AuthStyle::for_kind(ProviderKind::Anthropic).header_name(),
            "x-api-key"
        );
        assert_eq!(
            AuthStyle::for_kind(ProviderKind::Zai).header_name(),
            "x-api-key"
        );
    }
}
