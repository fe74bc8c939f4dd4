//! `server.tls`'s files: read and checked at config load (so a certificate that would fail the
//! listener, or a reload, fails the config instead), and again by the listener's resolver.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use super::TlsFiles;

fn shown(path: &Path) -> String {
    path.display().to_string()
}

/// Read and check a certificate chain and its key (errors name the file, never quote it).
pub fn load(files: &TlsFiles) -> Result<CertifiedKey, String> {
    let cert_file = shown(&files.cert_file);
    let key_file = shown(&files.key_file);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert_file)
        .map_err(|e| format!("{cert_file}: {e}"))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{cert_file}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{cert_file}: no PEM certificate in it"));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key_file).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            format!("{key_file}: no PEM private key in it")
        }
        e => format!("{key_file}: {e}"),
    })?;
    let signing = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("{key_file}: {e}"))?;
    let certified = CertifiedKey::new(certs, signing);
    certified
        .keys_match()
        .map_err(|e| format!("{key_file} does not belong to {cert_file}: {e}"))?;
    Ok(certified)
}
