//! Config reload without a restart: the relay watches its compiled config
//! (a mounted ConfigMap) and swaps in a new runtime when the content
//! changes. Sessions already open keep the runtime they started with and
//! finish under it; new sessions get the new one.
//!
//! Content, not modification time, decides: the kubelet updates a
//! ConfigMap volume by swapping a symlink, which leaves mtimes unreliable.
//! A config that does not load is logged and ignored; the running one stays.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mailrelay_crds::config::RelayConfig;
use sha2::{Digest, Sha256};

use crate::runtime::Runtime;
use crate::server::listener::Current;

/// How often the file is read. The kubelet itself takes up to a minute
/// (its sync period plus the ConfigMap cache TTL) to update the volume.
pub const POLL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: mailrelay_crds::config::ConfigError,
    },
}

/// The config in `path` and the hash of its bytes.
pub fn load(path: &Path) -> Result<(RelayConfig, [u8; 32]), ReloadError> {
    let bytes = std::fs::read(path).map_err(|source| ReloadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let hash: [u8; 32] = Sha256::digest(&bytes).into();
    let text = String::from_utf8_lossy(&bytes);
    let config = RelayConfig::from_json(&text).map_err(|source| ReloadError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((config, hash))
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
pub async fn watch(
    path: PathBuf,
    current: Current,
    mut hash: [u8; 32],
    adjust: impl Fn(&mut RelayConfig) + Send + 'static,
) {
    let mut tick = tokio::time::interval(POLL);
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
        let old = current.get();
        if let Some(what) = restart_needed(&old.config, &config) {
            tracing::warn!(
                what,
                "config changed in a way that needs a restart; other changes apply now"
            );
        }
        let (rt, warnings) = Runtime::build(config, jiff::Timestamp::now().as_second());
        for w in warnings {
            tracing::warn!("{w}");
        }
        let entries = rt.policy.entry_count();
        let domains = rt.config.domains.len();
        current.set(rt);
        tracing::info!(domains, blocklist_entries = entries, "config reloaded");
    }
}
