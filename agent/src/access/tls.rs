//! TLS for the exposed listeners: a certificate and key from files (the chart's Secret,
//! user-supplied or generated). Connections are served by `export::listener`, which
//! bounds each handshake in time.

use std::{path::Path, sync::Arc};

use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "--tls-cert {path}: {message}: give the PEM certificate (chain) of the records listener"
    )]
    Cert { path: String, message: String },
    #[error("--tls-key {path}: {message}: give the PEM private key of --tls-cert")]
    Key { path: String, message: String },
    #[error("--tls-cert / --tls-key do not make a usable pair: {0}")]
    Pair(String),
}

/// A PEM certificate chain or key is a few KiB.
const PEM_MAX: u64 = 1 << 20;
const PEM_HINT: &str = "a PEM certificate chain or key is a few KiB";

/// A server configuration from PEM files.
pub fn load(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    // Read like every other input: regular files only, bounded, never a blocking open.
    let cert_pem =
        crate::input::read_bytes(cert, PEM_MAX, PEM_HINT).map_err(|e| TlsError::Cert {
            path: cert.display().to_string(),
            message: e.to_string(),
        })?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Cert {
            path: cert.display().to_string(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Cert {
            path: cert.display().to_string(),
            message: "no certificate in it".into(),
        });
    }
    let key_pem = crate::input::read_bytes(key, PEM_MAX, PEM_HINT).map_err(|e| TlsError::Key {
        path: key.display().to_string(),
        message: e.to_string(),
    })?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Key {
        path: key.display().to_string(),
        message: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Pair(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Pair(e.to_string()))?;
    Ok(Arc::new(config))
}
