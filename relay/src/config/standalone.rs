//! Standalone mode: the manifests a user would `kubectl apply`, compiled
//! with the operator's own `compile()` and made runnable on one machine.
//! Listeners bind loopback, Secrets among the manifests are written to a
//! private directory, and a missing TLS Secret is replaced by a
//! self-signed certificate (with a warning) so submission can be tried.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use mailrelay_crds::compile;
use mailrelay_crds::config::RelayConfig;
use mailrelay_crds::dkimkey;
use mailrelay_crds::manifests::{Manifests, load_dir};

#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
    #[error("{0}")]
    Manifests(String),
    #[error("{dir}: no Relay in the manifests")]
    NoRelay { dir: String },
    #[error("{dir}: several Relays ({names}); choose one with --relay")]
    SeveralRelays { dir: String, names: String },
    #[error("{dir}: no Relay named {name:?}")]
    UnknownRelay { dir: String, name: String },
    #[error("the Relay does not compile:\n{0}")]
    Compile(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create a self-signed certificate: {0}")]
    SelfSigned(#[from] rcgen::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StandaloneError + '_ {
    move |source| StandaloneError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The config to run, and problems of other objects to show as warnings.
pub(crate) struct Prepared {
    pub config: RelayConfig,
    pub warnings: Vec<String>,
}

/// Compile the Relay in `dir` (or the one named `relay`).
pub(crate) fn prepare(
    dir: &Path,
    relay: Option<&str>,
    secrets_dir: &Path,
) -> Result<Prepared, StandaloneError> {
    let manifests = load_dir(dir).map_err(|errors| {
        StandaloneError::Manifests(
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n"),
        )
    })?;
    let dir_text = dir.display().to_string();
    let chosen = match relay {
        Some(name) => manifests
            .relays
            .iter()
            .find(|r| r.object.metadata.name.as_deref() == Some(name))
            .ok_or_else(|| StandaloneError::UnknownRelay {
                dir: dir_text.clone(),
                name: name.into(),
            })?,
        None => match manifests.relays.as_slice() {
            [] => return Err(StandaloneError::NoRelay { dir: dir_text }),
            [one] => one,
            many => {
                let names: Vec<_> = many
                    .iter()
                    .filter_map(|r| r.object.metadata.name.clone())
                    .collect();
                return Err(StandaloneError::SeveralRelays {
                    dir: dir_text,
                    names: names.join(", "),
                });
            }
        },
    };
    let compiled = compile(
        &chosen.object,
        &manifests.domain_objects(),
        &manifests.blocklist_objects(),
    )
    .map_err(|problems| {
        StandaloneError::Compile(
            problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n"),
        )
    })?;
    let mut warnings: Vec<String> = compiled.problems.iter().map(ToString::to_string).collect();
    let mut config = compiled.config;
    write_secrets(&manifests, &config.relay.namespace, secrets_dir)?;
    config.secrets_dir = secrets_dir.to_string_lossy().into_owned();
    if let Some(files) = &config.tls {
        let (cert, key) = (
            files.cert.path(&config.secrets_dir),
            files.key.path(&config.secrets_dir),
        );
        if !cert.exists() || !key.exists() {
            if let Some(parent) = cert.parent() {
                private_dir(parent)?;
            }
            write_self_signed(&config.hostname, &cert, &key)?;
            warnings.push(format!(
                "Secret {} is not among the manifests: using a self-signed certificate for {}",
                files.cert.secret, config.hostname
            ));
        }
    }
    let domains = manifests.domain_objects();
    warnings.extend(generate_dkim_keys(&config, &domains)?);
    warnings.extend(missing_smarthost_secrets(&config));
    for listener in &mut config.listeners {
        listener
            .address
            .set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    Ok(Prepared { config, warnings })
}

/// What the operator does for `spec.dkim.generate`, for a try-out: a DKIM
/// key whose Secret is not among the manifests is generated into the
/// private directory, and the record to publish is shown.
fn generate_dkim_keys(
    config: &RelayConfig,
    domains: &[mailrelay_crds::MailDomain],
) -> Result<Vec<String>, StandaloneError> {
    let mut notes = Vec::new();
    for d in &config.domains {
        let Some(dkim) = &d.dkim else { continue };
        let generate = domains.iter().any(|m| {
            m.metadata.name.as_deref() == Some(d.source.name.as_str())
                && m.spec.dkim.as_ref().is_some_and(|k| k.generate)
        });
        let path = dkim.private_key.path(&config.secrets_dir);
        if !generate || path.exists() {
            continue;
        }
        let pem = dkimkey::generate(dkim.algorithm).map_err(|e| StandaloneError::Io {
            path: path.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        if let Some(parent) = path.parent() {
            private_dir(parent)?;
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, pem.as_bytes()))
            .map_err(io(&path))?;
        let record = dkimkey::public_key(&pem, dkim.algorithm)
            .map(|p| {
                dkimkey::record(
                    &dkim.selector,
                    &d.name,
                    &dkimkey::txt_value(dkim.algorithm, &p),
                )
            })
            .unwrap_or_default();
        notes.push(format!(
            "Secret {} is not among the manifests: generated a DKIM key for {}; its record: {record}",
            dkim.private_key.secret, d.name
        ));
    }
    Ok(notes)
}

/// Smarthost credentials, the Relay's and the MailDomains' alike, whose
/// Secret is not among the manifests: mail through that smarthost waits
/// in the queue until they are there.
fn missing_smarthost_secrets(config: &RelayConfig) -> Vec<String> {
    let relay = config
        .smarthost
        .iter()
        .map(|s| ("the Relay's smarthost".to_string(), s));
    let tenants = config.domains.iter().filter_map(|d| {
        let s = d.smarthost.as_ref()?;
        Some((format!("the smarthost of {}", d.name), s))
    });
    relay
        .chain(tenants)
        .flat_map(|(whose, s)| {
            [&s.username, &s.password]
                .into_iter()
                .flatten()
                .filter(|f| !f.path(&config.secrets_dir).exists())
                .map(move |f| {
                    format!(
                        "Secret {} (key {}) is not among the manifests: mail through {whose} waits in the queue until it is",
                        f.secret, f.key
                    )
                })
        })
        .collect()
}

fn private_dir(path: &Path) -> Result<(), StandaloneError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(io(path))
}

/// Write the Secrets of `namespace` as `DIR/NAME/KEY`, readable by us only.
fn write_secrets(m: &Manifests, namespace: &str, dir: &Path) -> Result<(), StandaloneError> {
    private_dir(dir)?;
    for s in &m.secrets {
        let secret = &s.object;
        if secret.metadata.namespace.as_deref().unwrap_or_default() != namespace {
            continue;
        }
        let Some(name) = secret.metadata.name.as_deref() else {
            continue;
        };
        if compile::normalize::object_name(name).is_err() {
            continue;
        }
        let sdir = dir.join(name);
        private_dir(&sdir)?;
        let data = secret
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k, v.0.as_slice()));
        let string_data = secret
            .string_data
            .iter()
            .flatten()
            .map(|(k, v)| (k, v.as_bytes()));
        for (key, value) in data.chain(string_data) {
            if compile::normalize::secret_key(key).is_err() {
                continue;
            }
            let path = sdir.join(key);
            use std::io::Write as _;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)
                .map_err(io(&path))?;
            f.write_all(value).map_err(io(&path))?;
        }
    }
    Ok(())
}

/// Write a self-signed certificate for `hostname` (standalone try-outs
/// only: real deployments mount a Secret).
pub(crate) fn write_self_signed(
    hostname: &str,
    cert: &Path,
    key: &Path,
) -> Result<(), StandaloneError> {
    let generated = rcgen::generate_simple_self_signed(vec![hostname.to_string()])?;
    std::fs::write(cert, generated.cert.pem()).map_err(io(cert))?;
    std::fs::write(key, generated.signing_key.serialize_pem()).map_err(io(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smarthost_credentials_come_from_the_manifests_for_the_relay_and_its_tenants_alike() {
        let dir = tempfile::tempdir().unwrap();
        let smarthost = |secret: &str| {
            format!(
                "{{host: smtp.provider.test, credentials: {{username: {{name: {secret}, key: username}}, password: {{name: {secret}, key: password}}}}}}"
            )
        };
        let domain = |name: &str, secret: &str| {
            format!(
                "---\napiVersion: mailrelay.io/v1alpha1\nkind: MailDomain\nmetadata: {{name: {name}}}\nspec:\n  domain: {name}.test\n  inbound: {{localParts: [a]}}\n  delivery: {{lmtp: {{host: 127.0.0.1, port: 24}}}}\n  outbound: {{smarthost: {}}}\n",
                smarthost(secret)
            )
        };
        let manifests = format!(
            "apiVersion: mailrelay.io/v1alpha1\nkind: Relay\nmetadata: {{name: r}}\nspec: {{hostname: mx.test, smarthost: {}}}\n{}{}---\napiVersion: v1\nkind: Secret\nmetadata: {{name: tenant-auth}}\nstringData: {{username: tenant, password: pass}}\n",
            smarthost("relay-auth"),
            domain("tenant", "tenant-auth"),
            domain("other", "other-auth"),
        );
        std::fs::write(dir.path().join("all.yaml"), manifests).unwrap();
        let secrets = tempfile::tempdir().unwrap();
        let p = prepare(dir.path(), None, secrets.path()).unwrap();
        let tenant = p.config.domains.iter().find(|d| d.name == "tenant.test");
        let user = tenant.and_then(|d| d.smarthost.as_ref()?.username.as_ref());
        let path = user.unwrap().path(&p.config.secrets_dir);
        assert_eq!(std::fs::read_to_string(path).unwrap(), "tenant");
        let missing: Vec<&String> = p
            .warnings
            .iter()
            .filter(|w| w.contains("smarthost"))
            .collect();
        assert_eq!(
            missing,
            [
                "Secret relay-auth (key username) is not among the manifests: mail through the Relay's smarthost waits in the queue until it is",
                "Secret relay-auth (key password) is not among the manifests: mail through the Relay's smarthost waits in the queue until it is",
                "Secret other-auth (key username) is not among the manifests: mail through the smarthost of other.test waits in the queue until it is",
                "Secret other-auth (key password) is not among the manifests: mail through the smarthost of other.test waits in the queue until it is",
            ],
            "{:?}",
            p.warnings
        );
    }

    #[test]
    fn the_examples_prepare_with_a_self_signed_certificate_on_loopback() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/examples");
        let secrets = tempfile::tempdir().unwrap();
        let p = prepare(&dir, None, secrets.path()).unwrap();
        assert!(
            p.config
                .listeners
                .iter()
                .all(|l| l.address.ip().is_loopback())
        );
        assert!(
            p.warnings.iter().any(|w| w.contains("self-signed")),
            "{:?}",
            p.warnings
        );
        let tls = p.config.tls.as_ref().unwrap();
        assert!(tls.cert.path(&p.config.secrets_dir).exists());
        assert!(
            secrets.path().join("example-com-accounts/passwd").exists(),
            "the accounts Secret is written"
        );
        // example-com asks for a generated Ed25519 DKIM key, as the
        // operator would make it; the relay can sign with it.
        let key = secrets.path().join("example-com-dkim/private.pem");
        let pem = std::fs::read(&key).expect("the DKIM key is generated");
        assert!(
            crate::dkim::keys::parse(
                &pem,
                mailrelay_crds::maildomain::DkimAlgorithm::Ed25519Sha256,
                "k"
            )
            .is_ok()
        );
        assert!(
            p.warnings
                .iter()
                .any(|w| w
                    .contains("mail2026._domainkey.example.com. IN TXT \"v=DKIM1; k=ed25519; p=")),
            "{:?}",
            p.warnings
        );
    }
}
