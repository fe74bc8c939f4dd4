//! Upstream addresses, resolved off the request path and swapped in atomically.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::BaseUrl;
use crate::telemetry::Repeated;

/// The current addresses of one upstream host. Readers never wait: the list is an `ArcSwap`
/// replaced whole by the background refresher.
#[derive(Debug)]
pub struct ResolvedAddrs {
    host: String,
    port: u16,
    addrs: ArcSwap<Vec<SocketAddr>>,
    cursor: AtomicUsize,
    /// Failed re-resolutions: logged once, then every ten minutes with a count.
    pub failures: Repeated,
}

impl ResolvedAddrs {
    /// Starts with whatever `initial` holds (possibly nothing: a host that does not resolve at
    /// start-up must not stop the relay from serving the other providers).
    pub fn new(base_url: &BaseUrl, initial: Vec<SocketAddr>) -> Self {
        ResolvedAddrs {
            host: base_url.host.clone(),
            port: base_url.port,
            addrs: ArcSwap::from_pointee(initial),
            cursor: AtomicUsize::new(0),
            failures: Repeated::new(Duration::from_secs(600)),
        }
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// The next address to connect to, rotating over all of them; `None` while the host has
    /// never resolved.
    pub fn pick(&self) -> Option<SocketAddr> {
        let addrs = self.addrs.load();
        if addrs.is_empty() {
            return None;
        }
        let i = self.cursor.fetch_add(1, Ordering::Relaxed) % addrs.len();
        Some(addrs[i])
    }

    /// Whether the host is an IP literal (nothing to refresh).
    pub fn is_literal(&self) -> bool {
        self.host.parse::<IpAddr>().is_ok()
    }

    /// Re-resolve asynchronously and swap the result in. A failed lookup keeps the old
    /// addresses: a DNS hiccup should not take a working upstream away.
    pub async fn refresh(&self) -> std::io::Result<usize> {
        let found: Vec<SocketAddr> = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await?
            .collect();
        if found.is_empty() {
            return Ok(0);
        }
        let n = found.len();
        self.addrs.store(Arc::new(found));
        Ok(n)
    }
}

/// Resolve `base_url` now, blocking. For start-up and config loading, never for a request.
pub fn resolve_now(base_url: &BaseUrl) -> Vec<SocketAddr> {
    use std::net::ToSocketAddrs;
    if let Ok(ip) = base_url.host.parse::<IpAddr>() {
        return vec![SocketAddr::new(ip, base_url.port)];
    }
    match (base_url.host.as_str(), base_url.port).to_socket_addrs() {
        Ok(found) => found.collect(),
        Err(e) => {
            log::warn!(
                "could not resolve {}: {e}; requests to it fail with 502 until it resolves",
                base_url.host
            );
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(host: &str, port: u16) -> BaseUrl {
        BaseUrl {
            tls: false,
            host: host.into(),
            port,
            path_prefix: String::new(),
        }
    }

    #[test]
    fn literal_addresses_resolve_without_dns() {
        let u = url("127.0.0.1", 9);
        let addrs = ResolvedAddrs::new(&u, resolve_now(&u));
        assert!(addrs.is_literal());
        assert_eq!(addrs.pick(), Some("127.0.0.1:9".parse().unwrap()));
    }

    #[test]
    fn unresolvable_host_yields_no_address_instead_of_panicking() {
        let u = url("no-such-host.invalid", 443);
        let addrs = ResolvedAddrs::new(&u, resolve_now(&u));
        assert_eq!(addrs.pick(), None);
    }
}
