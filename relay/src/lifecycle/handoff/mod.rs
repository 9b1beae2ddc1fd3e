//! Queue hand-off between the pods of one Relay: a pod that is scaled in
//! (or otherwise stopped) moves its queued mail to a peer before it goes,
//! over an internal listener only peers holding the Relay's shared secret
//! can use (see `wire` for the protocol and why it is safe).

pub mod client;
mod pipeline;
pub(crate) mod reports;
pub mod server;
pub mod wire;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Shortest secret accepted: 128 bits.
const MIN_SECRET: usize = 16;

/// `mailrelay run` flags for draining and hand-off.
#[derive(Clone, Debug, clap::Args)]
pub struct DrainArgs {
    /// Listen for queue hand-offs from draining peers here (ADDR:PORT);
    /// needs --handoff-secret-file.
    #[arg(long, requires = "handoff_secret_file")]
    pub handoff_listen: Option<SocketAddr>,
    /// File holding the shared secret of the Relay's pods (at least 16
    /// bytes; surrounding whitespace is ignored). Needed to give and to
    /// take a hand-off.
    #[arg(long)]
    pub handoff_secret_file: Option<PathBuf>,
    /// A peer's hand-off listener (ADDR:PORT); repeatable.
    #[arg(long = "peer")]
    pub peers: Vec<SocketAddr>,
    /// A name whose addresses are the peers' (the Relay's headless
    /// Service), with the hand-off port: NAME:PORT. Resolved when draining.
    #[arg(long)]
    pub peers_dns: Option<String>,
    /// This pod's own address, never taken for a peer.
    #[arg(long, env = "POD_IP")]
    pub pod_ip: Option<IpAddr>,
    /// After SIGTERM, keep accepting connections this long (while
    /// endpoints and load balancers stop sending new ones).
    #[arg(long, default_value = "5s", value_parser = duration)]
    pub drain_accept: Duration,
    /// Then give open sessions this long to finish.
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub drain_sessions: Duration,
    /// Keep delivering until this long after SIGTERM, then hand the rest
    /// to peers.
    #[arg(long, default_value = "60s", value_parser = duration)]
    pub drain_deliver: Duration,
    /// Stop handing off this long after SIGTERM (inside the pod's grace
    /// period); what is left stays in the spool.
    #[arg(long, default_value = "100s", value_parser = duration)]
    pub drain_deadline: Duration,
    /// Drain without being stopped when this file (the pod's annotations
    /// through the downward API) holds `mailrelay.io/drain="true"`: the
    /// relay then hands its queue off and stays up, not ready, until it is
    /// stopped.
    #[arg(long)]
    pub drain_request_file: Option<PathBuf>,
}

fn duration(s: &str) -> Result<Duration, String> {
    mailrelay_crds::compile::normalize::duration(s)
}

#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error("cannot read the hand-off secret {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the hand-off secret {} is shorter than {MIN_SECRET} bytes", path.display())]
    Short { path: PathBuf },
}

/// The secret in a secret file (surrounding whitespace removed): the
/// hand-off key, and the internal API's (`reports::internal_key`).
pub(crate) fn load_secret(path: &Path) -> Result<Vec<u8>, HandoffError> {
    let bytes = std::fs::read(path).map_err(|source| HandoffError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let secret = bytes.trim_ascii();
    if secret.len() < MIN_SECRET {
        return Err(HandoffError::Short {
            path: path.to_path_buf(),
        });
    }
    Ok(secret.to_vec())
}

/// The peers to try, in a random order (so draining pods spread their
/// queues), without this relay itself.
pub(crate) async fn peers(args: &DrainArgs) -> Vec<SocketAddr> {
    let mut found = args.peers.clone();
    if let Some(name) = &args.peers_dns {
        // The system resolver, unlike the relay's: the headless Service's
        // short name needs the pod's search domains.
        match tokio::net::lookup_host(name.as_str()).await {
            Ok(addrs) => found.extend(addrs),
            Err(e) => tracing::warn!(peers_dns = %name, error = %e, "cannot resolve the peers"),
        }
    }
    let own = |a: &SocketAddr| args.handoff_listen == Some(*a) || args.pod_ip == Some(a.ip());
    found.retain(|a| !own(a));
    found.sort();
    found.dedup();
    use rand::seq::SliceRandom;
    found.shuffle(&mut rand::rng());
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        drain: DrainArgs,
    }

    fn args(extra: &[&str]) -> DrainArgs {
        let mut argv = vec!["x"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv)
            .map(|c| c.drain)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn a_relay_is_never_its_own_peer() {
        let a = args(&[
            "--handoff-listen",
            "127.0.0.1:10025",
            "--handoff-secret-file",
            "/dev/null",
            "--peer",
            "127.0.0.1:10025",
            "--peer",
            "127.0.0.2:10025",
            "--peer",
            "127.0.0.2:10025",
            "--peer",
            "10.0.0.7:10025",
            "--pod-ip",
            "10.0.0.7",
        ]);
        let p = peers(&a).await;
        assert_eq!(p, vec!["127.0.0.2:10025".parse().unwrap_or(a.peers[0])]);
    }

    #[test]
    fn defaults_fit_the_pod_grace_period() {
        let a = args(&[]);
        assert!(a.drain_accept + a.drain_sessions <= a.drain_deliver);
        assert!(a.drain_deliver < a.drain_deadline);
        assert_eq!(a.drain_deadline, Duration::from_secs(100));
        let b = args(&["--drain-accept", "0s", "--drain-deadline", "2m"]);
        assert_eq!(b.drain_accept, Duration::ZERO);
        assert_eq!(b.drain_deadline, Duration::from_secs(120));
    }

    #[test]
    fn short_secrets_are_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("s");
        std::fs::write(&path, "too short\n").unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            load_secret(&path),
            Err(HandoffError::Short { .. })
        ));
        std::fs::write(&path, "  0123456789abcdef0123\n").unwrap_or_else(|e| panic!("{e}"));
        assert!(load_secret(&path).is_ok());
        assert!(matches!(
            load_secret(&dir.path().join("missing")),
            Err(HandoffError::Read { .. })
        ));
    }
}
