//! TLS for STARTTLS and implicit TLS: the certificate and key come from
//! files (a mounted `kubernetes.io/tls` Secret) and are re-read when they
//! change, so cert-manager's rotations apply without a restart. The
//! certificate's expiry is kept in a gauge, so a rotation that never comes
//! is seen before clients see it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::gauge::Gauge;
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
    #[error("{}: the certificate does not parse: {message}", path.display())]
    Certificate { path: PathBuf, message: String },
    #[error("certificate and key do not make a TLS configuration: {0}")]
    Config(#[from] tokio_rustls::rustls::Error),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// A server configuration and when its certificate expires.
pub(crate) struct Loaded {
    pub config: Arc<ServerConfig>,
    /// The leaf certificate's notAfter, Unix seconds.
    pub not_after: i64,
}

/// Build a rustls server configuration from PEM files.
pub(crate) fn load(cert: &Path, key: &Path) -> Result<Loaded, TlsError> {
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let pem_error = |path: &Path, source| TlsError::Pem {
        path: path.to_path_buf(),
        source,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| pem_error(cert, e))?;
    let Some(leaf) = certs.first() else {
        return Err(TlsError::NoCertificate(cert.to_path_buf()));
    };
    let not_after = not_after(leaf).map_err(|message| TlsError::Certificate {
        path: cert.to_path_buf(),
        message,
    })?;
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
    Ok(Loaded {
        config: Arc::new(config),
        not_after,
    })
}

/// The notAfter of a DER certificate, Unix seconds. The first certificate
/// of the file is the one clients check: the rest is its chain.
fn not_after(der: &CertificateDer<'_>) -> Result<i64, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    Ok(cert.validity().not_after.timestamp())
}

/// The current acceptor, swapped when the files change.
#[derive(Clone)]
pub(crate) struct Tls {
    inner: Arc<RwLock<(TlsAcceptor, Option<SystemTime>)>>,
    cert: PathBuf,
    key: PathBuf,
    expiry: Gauge,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl Tls {
    pub(crate) fn new(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let loaded = load(cert, key)?;
        let expiry = Gauge::default();
        expiry.set(loaded.not_after);
        Ok(Self {
            inner: Arc::new(RwLock::new((
                TlsAcceptor::from(loaded.config),
                modified(cert).max(modified(key)),
            ))),
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            expiry,
        })
    }

    /// The expiry of the certificate in use (Unix seconds), kept current
    /// across reloads; registered with the other metrics.
    pub(crate) fn expiry(&self) -> Gauge {
        self.expiry.clone()
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
            Ok(loaded) => {
                if let Ok(mut g) = self.inner.write() {
                    *g = (TlsAcceptor::from(loaded.config), stamp);
                }
                self.expiry.set(loaded.not_after);
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
        std::fs::write(
            &cert,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert!(matches!(
            load(&cert, &key),
            Err(TlsError::Certificate { .. })
        ));
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

    /// A self-signed pair for `mx.test` valid until midnight UTC of `until`.
    fn write_pair(cert: &Path, key: &Path, until: (i32, u8, u8)) {
        let mut params = rcgen::CertificateParams::new(vec!["mx.test".to_string()]).unwrap();
        params.not_after = rcgen::date_time_ymd(until.0, until.1, until.2);
        let signing = rcgen::KeyPair::generate().unwrap();
        let generated = params.self_signed(&signing).unwrap();
        std::fs::write(cert, generated.pem()).unwrap();
        std::fs::write(key, signing.serialize_pem()).unwrap();
    }

    fn midnight(y: i16, m: i8, d: i8) -> i64 {
        jiff::civil::date(y, m, d)
            .to_zoned(jiff::tz::TimeZone::UTC)
            .unwrap()
            .timestamp()
            .as_second()
    }

    #[test]
    fn the_expiry_gauge_is_the_certificates_not_after_and_follows_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        write_pair(&cert, &key, (2031, 5, 17));
        let tls = Tls::new(&cert, &key).unwrap();
        let expiry = tls.expiry();
        assert_eq!(expiry.get(), midnight(2031, 5, 17));

        write_pair(&cert, &key, (2032, 1, 2));
        // The reload is keyed on the files' times: make them move for sure.
        let later = SystemTime::now() + Duration::from_secs(5);
        for path in [&cert, &key] {
            std::fs::File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_modified(later)
                .unwrap();
        }
        tls.refresh();
        assert_eq!(expiry.get(), midnight(2032, 1, 2));

        // A broken rotation keeps the old certificate, so its expiry too.
        std::fs::write(&cert, "garbage").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&cert)
            .unwrap()
            .set_modified(later + Duration::from_secs(5))
            .unwrap();
        tls.refresh();
        assert_eq!(expiry.get(), midnight(2032, 1, 2));
    }
}
