//! DKIM private keys from mounted Secret files, kept parsed in memory.
//!
//! The accept path only looks a key up; files are read by [`DkimKeys::refresh`]
//! (at start, then every [`REFRESH`] from a background task) and, for a key
//! path the running config names for the first time (a config reload),
//! once by the first message that needs it. Content decides, not mtimes: a
//! Secret volume is updated by swapping a symlink. Each change — a new key,
//! a key that became unreadable or invalid — is logged once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use mail_auth::common::crypto::{DkimKey, Ed25519Key, RsaKey, Sha256};
use mailrelay_crds::maildomain::DkimAlgorithm;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

use crate::config::Current;
use crate::config::runtime::Runtime;

/// How often the key files are re-read. Kubernetes takes a minute or more
/// to update a mounted Secret anyway.
pub(crate) const REFRESH: Duration = Duration::from_secs(10);

/// Why a key file cannot be used to sign.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}: no PEM private key (expected PKCS#8 `BEGIN PRIVATE KEY`)")]
    NoPem { path: String },
    #[error("{path}: the key is {found} but spec.dkim.algorithm is {configured}")]
    WrongAlgorithm {
        path: String,
        found: &'static str,
        configured: &'static str,
    },
    #[error("{path}: not a usable {algorithm} key: {reason}")]
    Invalid {
        path: String,
        algorithm: &'static str,
        reason: String,
    },
}

pub(crate) fn algorithm_name(a: DkimAlgorithm) -> &'static str {
    match a {
        DkimAlgorithm::RsaSha256 => "rsa-sha256",
        DkimAlgorithm::Ed25519Sha256 => "ed25519-sha256",
    }
}

/// Parse a PEM private key for `algorithm`: PKCS#8 for both, and for RSA
/// also PKCS#1 (`BEGIN RSA PRIVATE KEY`, what `opendkim-genkey` writes).
pub fn parse(pem: &[u8], algorithm: DkimAlgorithm, path: &str) -> Result<DkimKey, KeyError> {
    // Sections of other kinds (a certificate, an EC key) are passed over; the
    // first PKCS#8 or PKCS#1 key is the one, and malformed PEM before it
    // means there is none.
    let der = PrivateKeyDer::pem_slice_iter(pem)
        .find_map(|item| match item {
            Ok(k @ (PrivateKeyDer::Pkcs8(_) | PrivateKeyDer::Pkcs1(_))) => Some(Ok(k)),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })
        .and_then(Result::ok)
        .ok_or_else(|| KeyError::NoPem {
            path: path.to_string(),
        })?;
    let invalid = |reason: String| KeyError::Invalid {
        path: path.to_string(),
        algorithm: algorithm_name(algorithm),
        reason,
    };
    let wrong = |found: &'static str| KeyError::WrongAlgorithm {
        path: path.to_string(),
        found,
        configured: algorithm_name(algorithm),
    };
    match algorithm {
        DkimAlgorithm::RsaSha256 => match RsaKey::<Sha256>::from_key_der(der.clone_key()) {
            Ok(k) => Ok(DkimKey::Rsa(k)),
            Err(_) if is_ed25519(&der) => Err(wrong("Ed25519")),
            Err(e) => Err(invalid(e.to_string())),
        },
        DkimAlgorithm::Ed25519Sha256 => {
            let PrivateKeyDer::Pkcs8(pkcs8) = &der else {
                return Err(wrong("RSA (PKCS#1)"));
            };
            // "maybe unchecked": PKCS#8 v1 keys (OpenSSL's) carry no public key.
            match Ed25519Key::from_pkcs8_maybe_unchecked_der(pkcs8.secret_pkcs8_der()) {
                Ok(k) => Ok(DkimKey::Ed25519(k)),
                Err(_) if RsaKey::<Sha256>::from_key_der(der.clone_key()).is_ok() => {
                    Err(wrong("RSA"))
                }
                Err(e) => Err(invalid(e.to_string())),
            }
        }
    }
}

fn is_ed25519(der: &PrivateKeyDer<'_>) -> bool {
    match der {
        PrivateKeyDer::Pkcs8(k) => {
            Ed25519Key::from_pkcs8_maybe_unchecked_der(k.secret_pkcs8_der()).is_ok()
        }
        _ => false,
    }
}

/// What one key file gave when it was last read.
struct Slot {
    algorithm: DkimAlgorithm,
    /// The file's bytes, or the read error's text: what "changed" compares.
    seen: Result<Vec<u8>, String>,
    key: Result<Arc<DkimKey>, KeyError>,
}

/// The keys of the running config, by file path. Cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct DkimKeys {
    slots: Arc<RwLock<HashMap<PathBuf, Slot>>>,
}

impl DkimKeys {
    /// The key at `path` for `algorithm`: from memory, or read now when the
    /// path is new (the first message after a config change names it).
    pub(crate) async fn get(
        &self,
        path: &Path,
        algorithm: DkimAlgorithm,
    ) -> Result<Arc<DkimKey>, KeyError> {
        if let Some(slot) = self.read_slots().get(path)
            && slot.algorithm == algorithm
        {
            return slot.key.clone();
        }
        self.load(path, algorithm).await
    }

    /// Re-read every key the runtime's domains name; forget the others.
    pub(crate) async fn refresh(&self, rt: &Runtime) {
        let mut wanted = Vec::new();
        for d in &rt.config.domains {
            if let Some(dkim) = &d.dkim {
                let path = dkim.private_key.path(&rt.config.secrets_dir);
                self.load(&path, dkim.algorithm).await.ok();
                wanted.push(path);
            }
        }
        if let Ok(mut slots) = self.slots.write() {
            slots.retain(|p, _| wanted.contains(p));
        }
    }

    /// Refresh from the current runtime every `period`, until dropped.
    pub(crate) fn watch(self, current: Current, period: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                self.refresh(&current.get()).await;
            }
        })
    }

    /// Read and parse one file, store it, and log when it changed.
    async fn load(&self, path: &Path, algorithm: DkimAlgorithm) -> Result<Arc<DkimKey>, KeyError> {
        let shown = path.display().to_string();
        let seen = tokio::fs::read(path).await.map_err(|e| e.to_string());
        if let Some(slot) = self.read_slots().get(path)
            && slot.algorithm == algorithm
            && slot.seen == seen
        {
            return slot.key.clone();
        }
        let key = match &seen {
            Ok(pem) => parse(pem, algorithm, &shown).map(Arc::new),
            Err(reason) => Err(KeyError::Read {
                path: shown.clone(),
                reason: reason.clone(),
            }),
        };
        match &key {
            Ok(_) => {
                tracing::info!(path = %shown, algorithm = algorithm_name(algorithm), "DKIM key loaded")
            }
            Err(e) => {
                tracing::error!(error = %e, "DKIM key not usable: mail that should be signed with it is refused with 451 until it is fixed")
            }
        }
        if let Ok(mut slots) = self.slots.write() {
            slots.insert(
                path.to_path_buf(),
                Slot {
                    algorithm,
                    seen,
                    key: key.clone(),
                },
            );
        }
        key
    }

    fn read_slots(&self) -> std::sync::RwLockReadGuard<'_, HashMap<PathBuf, Slot>> {
        match self.slots.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}
