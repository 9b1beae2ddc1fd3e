//! Config reload without a restart: the relay watches its compiled config
//! (a mounted ConfigMap) and swaps in a new runtime when the content
//! changes. Sessions already open keep the runtime they started with and
//! finish under it; new sessions get the new one.
//!
//! Content, not modification time, decides: the kubelet updates a
//! ConfigMap volume by swapping a symlink, which leaves mtimes unreliable.
//! A config that does not load is logged and ignored; the running one stays.
//! The file may come plain, gzipped or in gzipped shards with a hash beside
//! it: `mailrelay_crds::configformat` is the contract with the operator.

use std::path::{Path, PathBuf};
use std::time::Duration;

use std::collections::BTreeMap;

use mailrelay_crds::config::RelayConfig;
use mailrelay_crds::configformat;
use sha2::{Digest, Sha256};

use crate::config::Current;
use crate::config::runtime::Runtime;

/// How often the file is read. The kubelet itself takes up to a minute
/// (its sync period plus the ConfigMap cache TTL) to update the volume,
/// which is why pods also watch their ConfigMaps through the API
/// ([`crate::config::watch`]) and take the file only at start.
pub(crate) const POLL: Duration = Duration::from_secs(2);

/// Overrides `POLL`, in milliseconds (at least 50): for a config file that
/// is not a ConfigMap volume and may change faster (and for tests that
/// swap configs many times).
pub const POLL_ENV: &str = "MAILRELAY_CONFIG_POLL_MS";

/// How often the file is read: `POLL`, or what `POLL_ENV` says.
pub(crate) fn poll_interval() -> Duration {
    poll_from(std::env::var(POLL_ENV).ok().as_deref())
}

fn poll_from(value: Option<&str>) -> Duration {
    match value.map(|v| v.trim().parse::<u64>()) {
        Some(Ok(ms)) => Duration::from_millis(ms.max(50)),
        Some(Err(_)) => {
            tracing::warn!("{POLL_ENV} is not a number of milliseconds; polling every {POLL:?}");
            POLL
        }
        None => POLL,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Assemble {
        path: PathBuf,
        source: configformat::AssembleError,
    },
    #[error("{}: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: mailrelay_crds::config::ConfigError,
    },
}

/// The files of the config set named by `path` (`relay.json`, or its
/// compressed or sharded forms beside it, and the hash), by key name.
fn read_set(path: &Path) -> Result<BTreeMap<String, Vec<u8>>, ReloadError> {
    let read_err = |source| ReloadError::Read {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let file = entry.file_name().to_string_lossy().into_owned();
        // Other files in the directory are not ours.
        if file != name && !file.starts_with(&format!("{name}.")) {
            continue;
        }
        // Mapped to the operator's key names, whatever --config calls the file.
        let key = file.replacen(&name, configformat::JSON_KEY, 1);
        let bytes = std::fs::read(entry.path()).map_err(read_err)?;
        files.insert(key, bytes);
    }
    Ok(files)
}

/// The config named by `path` and the hash of its JSON.
pub(crate) fn load(path: &Path) -> Result<(RelayConfig, [u8; 32]), ReloadError> {
    let files = read_set(path)?;
    let json = configformat::assemble(&files).map_err(|source| ReloadError::Assemble {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&json).map_err(|source| ReloadError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// Things a reload cannot change in a running process.
fn restart_needed(old: &RelayConfig, new: &RelayConfig) -> Option<&'static str> {
    if old.listeners != new.listeners {
        Some("listeners changed")
    } else if old.tls != new.tls {
        Some("the TLS Secret changed")
    } else {
        None
    }
}

/// Watch `path` until the task is dropped. `adjust` applies the command
/// line's overrides (listener addresses) to each new config, as at start.
pub(crate) async fn watch(
    path: PathBuf,
    current: Current,
    mut hash: [u8; 32],
    adjust: impl Fn(&mut RelayConfig) + Send + 'static,
) {
    let mut tick = tokio::time::interval(poll_interval());
    loop {
        tick.tick().await;
        let path2 = path.clone();
        let loaded = tokio::task::spawn_blocking(move || load(&path2)).await;
        let (mut config, new_hash) = match loaded {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "config not reloaded; keeping the running one");
                continue;
            }
            Err(_) => continue,
        };
        if new_hash == hash {
            continue;
        }
        hash = new_hash;
        adjust(&mut config);
        swap(&current, config).await;
    }
}

/// Parse an assembled config: the config and the hash of its JSON.
pub(crate) fn parse(
    json: &str,
) -> Result<(RelayConfig, [u8; 32]), mailrelay_crds::config::ConfigError> {
    let hash: [u8; 32] = Sha256::digest(json.as_bytes()).into();
    Ok((RelayConfig::from_json(json)?, hash))
}

/// Swap `config` in: new sessions get it, open ones finish under the old.
pub(crate) async fn swap(current: &Current, config: RelayConfig) {
    let old = current.get();
    if let Some(what) = restart_needed(&old.config, &config) {
        tracing::warn!(
            what,
            "config changed in a way that needs a restart; other changes apply now"
        );
    }
    // Building reads account files and indexes the blocklists: off the
    // async threads, which keep serving sessions meanwhile.
    let built = tokio::task::spawn_blocking(move || {
        Runtime::build(config, jiff::Timestamp::now().as_second())
    })
    .await;
    let Ok((rt, warnings)) = built else { return };
    for w in warnings {
        tracing::warn!("{w}");
    }
    let entries = rt.policy.entry_count();
    let domains = rt.config.domains.len();
    current.set(rt);
    tracing::info!(domains, blocklist_entries = entries, "config reloaded");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_poll_interval_can_be_shortened_but_not_to_nothing() {
        assert_eq!(poll_from(None), POLL);
        assert_eq!(poll_from(Some("250")), Duration::from_millis(250));
        assert_eq!(poll_from(Some("0")), Duration::from_millis(50));
        assert_eq!(poll_from(Some("2s")), POLL);
    }

    fn config_json() -> String {
        let (rt, _dir) = crate::testutil::runtime();
        rt.config.to_json().unwrap()
    }

    #[test]
    fn plain_compressed_and_sharded_configs_load_alike() {
        let json = config_json();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.json");
        std::fs::write(&path, &json).unwrap();
        let (plain, hash) = load(&path).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.json");
        let gz = {
            use std::io::Write;
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(json.as_bytes()).unwrap();
            e.finish().unwrap()
        };
        let (a, b) = gz.split_at(gz.len() / 2);
        std::fs::write(dir.path().join("relay.json.gz.000"), a).unwrap();
        std::fs::write(dir.path().join("relay.json.gz.001"), b).unwrap();
        std::fs::write(
            dir.path().join("relay.json.sha256"),
            configformat::hex_sha256(json.as_bytes()),
        )
        .unwrap();
        std::fs::write(dir.path().join("unrelated.txt"), "x").unwrap();
        let (sharded, hash2) = load(&path).unwrap();
        assert_eq!(plain, sharded);
        assert_eq!(hash, hash2);

        // A torn set (the hash of another config) is refused.
        std::fs::write(dir.path().join("relay.json.sha256"), "00").unwrap();
        assert!(matches!(load(&path), Err(ReloadError::Assemble { .. })));
    }
}
