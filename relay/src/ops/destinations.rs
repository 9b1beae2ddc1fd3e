//! `mailrelay queue destinations`: where mail waits and whether each place
//! takes attempts — from a running relay's admin API
//! (`GET /queue/destinations`, loopback only), since destination health
//! lives in the relay's memory, not in the spool.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One destination as the admin API and the CLI show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationRow {
    /// `mx:HOSTS` (an MX site), `smarthost` (the Relay's),
    /// `smarthost:DOMAIN` (a MailDomain's), `lmtp:HOST:PORT`,
    /// `smtp:HOST:PORT` or `maildir:PATH`.
    pub destination: String,
    /// `active`, `suspended` (after connection failures), `throttled`
    /// (suspended by a throttle rule) or `slowed` (a throttle rule's rate).
    pub state: String,
    /// Messages waiting for it: ready, being tried, or parked.
    pub depth: usize,
    /// Attempts under way.
    pub running: usize,
    /// Its shaping: most connections at once, and the message rate.
    #[serde(default)]
    pub shaping: String,
    /// A throttle rule in force: what it does, until when, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle: Option<String>,
    /// The last connection-level failure.
    pub last_error: Option<String>,
    /// When a suspended destination is probed next (RFC 3339).
    pub next_probe: Option<String>,
}

/// What the admin API needs of the delivery manager; the queue
/// implements it, so `ops` does not depend on `queue`.
pub(crate) trait QueueControl: Send + Sync {
    /// Look at a message again now (the admin API changed it).
    fn look(&self, id: crate::spool::QueueId);
    /// Look at every message again (the admin API flushed the queue).
    fn look_all(&self);
    fn destinations(&self) -> Vec<DestinationRow>;
}

#[derive(Debug, thiserror::Error)]
pub enum DestinationsError {
    #[error(
        "cannot reach the relay's admin endpoint at {addr}: {source} (give its --http address, 127.0.0.1:9725 standalone, 127.0.0.1:9090 in a pod)"
    )]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the relay at {addr} did not answer in time")]
    Timeout { addr: SocketAddr },
    #[error("the relay at {addr} answered {status}: {body}")]
    Status {
        addr: SocketAddr,
        status: String,
        body: String,
    },
    #[error("the relay at {addr} sent what is not a destination list: {source}")]
    Json {
        addr: SocketAddr,
        source: serde_json::Error,
    },
}

/// Ask the relay whose admin API listens on `addr`.
pub async fn fetch(addr: SocketAddr) -> Result<Vec<DestinationRow>, DestinationsError> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /queue/destinations HTTP/1.0\r\nHost: mailrelay\r\n\r\n")
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| DestinationsError::Timeout { addr })?
        .map_err(|source| DestinationsError::Connect { addr, source })?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(DestinationsError::Status {
            addr,
            status: status.to_string(),
            body: body.trim().to_string(),
        });
    }
    serde_json::from_str(body).map_err(|source| DestinationsError::Json { addr, source })
}

/// The table `mailrelay queue destinations` prints.
pub fn format(rows: &[DestinationRow]) -> String {
    if rows.is_empty() {
        return "No destination has mail waiting or a failure on record.\n".into();
    }
    let width = rows
        .iter()
        .map(|r| r.destination.len())
        .max()
        .unwrap_or(0)
        .max("DESTINATION".len());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:width$}  {:9}  {:>7}  {:>7}  {:16}  {:20}  LAST ERROR / THROTTLE",
        "DESTINATION", "STATE", "DEPTH", "RUNNING", "SHAPING", "NEXT PROBE"
    );
    for r in rows {
        let last = match (&r.throttle, &r.last_error) {
            (Some(t), _) => t.as_str(),
            (None, Some(e)) => e.as_str(),
            (None, None) => "-",
        };
        let _ = writeln!(
            out,
            "{:width$}  {:9}  {:>7}  {:>7}  {:16}  {:20}  {}",
            r.destination,
            r.state,
            r.depth,
            r.running,
            r.shaping,
            r.next_probe.as_deref().unwrap_or("-"),
            last,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_list_says_so() {
        assert!(format(&[]).starts_with("No destination"));
    }
}
