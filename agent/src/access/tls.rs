//! TLS for the exposed listeners: a certificate and key from files (the chart's Secret,
//! user-supplied, generated or cert-manager's). The files are re-read while the agent
//! runs: Kubernetes swaps a renewed Secret's files in place, and clients that trust the
//! new CA must get the new certificate without an agent restart. Connections are served by
//! `export::listener`, which bounds each handshake in time.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use rustls::{
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use tracing::{info, warn};

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

/// The files as last read, and the pair made of them.
struct Loaded {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    pair: Arc<CertifiedKey>,
}

/// The certificate every handshake is given: the last good pair read from the files.
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    loaded: RwLock<Loaded>,
}

impl std::fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish()
    }
}

/// What a reload found.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    /// The files are as last read.
    Unchanged,
    /// A new pair is served from now on.
    Replaced,
}

impl ReloadingCert {
    /// Read both files; a bad pair is an error naming the file and the fix.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Self>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (cert_pem, key_pem) = read(cert, key)?;
        let pair = pair(cert, key, &cert_pem, &key_pem, &provider)?;
        Ok(Arc::new(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            provider,
            loaded: RwLock::new(Loaded {
                cert_pem,
                key_pem,
                pair,
            }),
        }))
    }

    /// Re-read the files. A changed, usable pair replaces the served one; a changed pair
    /// that is not usable (half-written, mismatched) is an error and the old one stays.
    pub fn reload(&self) -> Result<Reload, TlsError> {
        let (cert_pem, key_pem) = read(&self.cert, &self.key)?;
        {
            let l = self.loaded.read().unwrap_or_else(|p| p.into_inner());
            if l.cert_pem == cert_pem && l.key_pem == key_pem {
                return Ok(Reload::Unchanged);
            }
        }
        let pair = pair(&self.cert, &self.key, &cert_pem, &key_pem, &self.provider)?;
        *self.loaded.write().unwrap_or_else(|p| p.into_inner()) = Loaded {
            cert_pem,
            key_pem,
            pair,
        };
        Ok(Reload::Replaced)
    }

    /// A server configuration that asks this resolver at every handshake, offering `alpn`
    /// (e.g. `h2` for the index's follower streams; none for HTTP/1.1 listeners).
    pub fn server_config(
        self: &Arc<Self>,
        alpn: &[&[u8]],
    ) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Pair(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }

    /// Re-read the files every `every` until the task is dropped, counting each outcome.
    pub async fn watch(self: Arc<Self>, every: Duration, reloads: prometheus::IntCounterVec) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let me = self.clone();
            let outcome = tokio::task::spawn_blocking(move || me.reload()).await;
            match outcome {
                Ok(Ok(Reload::Unchanged)) => {}
                Ok(Ok(Reload::Replaced)) => {
                    reloads.with_label_values(&["replaced"]).inc();
                    info!(cert = %self.cert.display(), "TLS certificate replaced from its files");
                }
                Ok(Err(e)) => {
                    reloads.with_label_values(&["failed"]).inc();
                    warn!(error = %e, "TLS certificate files changed but are not usable; still serving the previous pair");
                }
                Err(e) => warn!(error = %e, "TLS reload task failed"),
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.loaded
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .pair
                .clone(),
        )
    }
}

/// Both files, read like every other input: regular files only, bounded, never a
/// blocking open.
fn read(cert: &Path, key: &Path) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let cert_pem =
        crate::input::read_bytes(cert, PEM_MAX, PEM_HINT).map_err(|e| TlsError::Cert {
            path: cert.display().to_string(),
            message: e.to_string(),
        })?;
    let key_pem = crate::input::read_bytes(key, PEM_MAX, PEM_HINT).map_err(|e| TlsError::Key {
        path: key.display().to_string(),
        message: e.to_string(),
    })?;
    Ok((cert_pem, key_pem))
}

/// The certified key of a PEM chain and key, checked to belong together.
fn pair(
    cert: &Path,
    key: &Path,
    cert_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let cert_err = |message: String| TlsError::Cert {
        path: cert.display().to_string(),
        message,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(cert_err("no certificate in it".into()));
    }
    let private = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Key {
        path: key.display().to_string(),
        message: e.to_string(),
    })?;
    let pair = CertifiedKey::from_der(certs, private, provider)
        .map_err(|e| TlsError::Pair(e.to_string()))?;
    Ok(Arc::new(pair))
}
