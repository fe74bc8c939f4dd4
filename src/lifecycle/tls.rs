//! TLS for clients (`server.tls`): rustls through Pingora's listener, with the certificate
//! served by a resolver of our own so that a reload (SIGHUP, `cc-relay reload`) can swap it
//! without touching the listener or a connection. A certificate that does not load (missing
//! file, no certificate, a key that does not match) refuses the reload and the old one stays.
//! ALPN offers `h2` and `http/1.1` when `server.enable_http2` is on, `http/1.1` otherwise.

use std::sync::Arc;

use arc_swap::ArcSwap;
use once_cell::sync::OnceCell;
use pingora::listeners::tls::TlsSettings;
use pingora::protocols::ALPN;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::tls::load;
use crate::config::TlsFiles;

/// The certificate clients are served, swappable.
struct ClientCert {
    current: ArcSwap<CertifiedKey>,
}

impl std::fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientCert")
    }
}

impl ResolvesServerCert for ClientCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The one resolver of this process (its listener is built once).
static CERT: OnceCell<Arc<ClientCert>> = OnceCell::new();

/// The listener's TLS settings: the certificate (loaded now) behind the swappable resolver.
pub fn settings(files: &TlsFiles, http2: bool) -> Result<TlsSettings, String> {
    let certified = Arc::new(load(files)?);
    let resolver = CERT.get_or_init(|| {
        Arc::new(ClientCert {
            current: ArcSwap::new(certified.clone()),
        })
    });
    resolver.current.store(certified);
    let mut tls = TlsSettings::intermediate("", "").map_err(|e| e.to_string())?;
    tls.set_cert_resolver(resolver.clone());
    tls.set_alpn(if http2 { ALPN::H2H1 } else { ALPN::H1 });
    Ok(tls)
}

/// On a reload: serve `files`' certificate from now on (new handshakes; open connections keep
/// theirs). `Err` leaves the current one in place.
pub fn reload(files: &TlsFiles) -> Result<(), String> {
    let certified = load(files)?;
    if let Some(resolver) = CERT.get() {
        resolver.current.store(Arc::new(certified));
    }
    Ok(())
}
