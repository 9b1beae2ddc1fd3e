//! TLS for STARTTLS and implicit TLS: the certificate and key come from
//! files (a mounted `kubernetes.io/tls` Secret) and are re-read when they
//! change, so cert-manager's rotations apply without a restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not valid PEM: {source}", path.display())]
    Pem { path: PathBuf, source: pem::Error },
    #[error("{}: no certificate in the file", .0.display())]
    NoCertificate(PathBuf),
    #[error("{}: no private key in the file", .0.display())]
    NoKey(PathBuf),
    #[error("certificate and key do not make a TLS configuration: {0}")]
    Config(#[from] tokio_rustls::rustls::Error),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Build a rustls server configuration from PEM files.
pub(crate) fn load(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let pem_error = |path: &Path, source| TlsError::Pem {
        path: path.to_path_buf(),
        source,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| pem_error(cert, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(cert.to_path_buf()));
    }
    // cert-manager writes RSA keys as PKCS#1 or PKCS#8 (its `encoding`) and
    // ECDSA keys as SEC1: the first key of any of these kinds is the one.
    let key: PrivateKeyDer<'static> = match PrivateKeyDer::from_pem_slice(&key_pem) {
        Ok(k) => k,
        Err(pem::Error::NoItemsFound) => return Err(TlsError::NoKey(key.to_path_buf())),
        Err(e) => return Err(pem_error(key, e)),
    };
    let config = ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    Ok(Arc::new(config))
}

/// The current acceptor, swapped when the files change.
#[derive(Clone)]
pub(crate) struct Tls {
    inner: Arc<RwLock<(TlsAcceptor, Option<SystemTime>)>>,
    cert: PathBuf,
    key: PathBuf,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl Tls {
    pub(crate) fn new(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let config = load(cert, key)?;
        Ok(Self {
            inner: Arc::new(RwLock::new((
                TlsAcceptor::from(config),
                modified(cert).max(modified(key)),
            ))),
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        })
    }

    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        match self.inner.read() {
            Ok(g) => g.0.clone(),
            Err(p) => p.into_inner().0.clone(),
        }
    }

    /// Re-read the files if they changed. A broken new pair is logged and
    /// the old one kept: a bad rotation must not take TLS down.
    pub(crate) fn refresh(&self) {
        let stamp = modified(&self.cert).max(modified(&self.key));
        let current = match self.inner.read() {
            Ok(g) => g.1,
            Err(p) => p.into_inner().1,
        };
        if stamp == current {
            return;
        }
        match load(&self.cert, &self.key) {
            Ok(config) => {
                if let Ok(mut g) = self.inner.write() {
                    *g = (TlsAcceptor::from(config), stamp);
                }
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => {
                tracing::warn!(error = %e, "new TLS certificate not usable; keeping the previous one")
            }
        }
    }

    /// Refresh every `period` until the task is dropped.
    pub(crate) fn watch(self, period: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                self.refresh();
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::standalone::write_self_signed;

    #[test]
    fn self_signed_pair_loads_and_reloads_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        write_self_signed("mx.test", &cert, &key).unwrap();
        let tls = Tls::new(&cert, &key).unwrap();
        std::fs::write(&cert, "garbage").unwrap();
        tls.refresh(); // keeps the old acceptor, logs
        let _ = tls.acceptor();
        assert!(matches!(load(&cert, &key), Err(TlsError::NoCertificate(_))));
        std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nAAAA\n").unwrap();
        assert!(matches!(load(&cert, &key), Err(TlsError::Pem { .. })));
        let (other_cert, empty_key) = (dir.path().join("b.crt"), dir.path().join("b.key"));
        write_self_signed("mx.test", &other_cert, &empty_key).unwrap();
        std::fs::write(&empty_key, "no key here\n").unwrap();
        assert!(matches!(
            load(&other_cert, &empty_key),
            Err(TlsError::NoKey(_))
        ));
        assert!(matches!(
            load(&dir.path().join("missing"), &key),
            Err(TlsError::Read { .. })
        ));
    }
}
