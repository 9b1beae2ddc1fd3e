//! Report aggregates travel with the queue: after its messages, a
//! draining relay sends every period it counted to a peer that offers
//! `XREPORTS` (see `wire`), in one frame, and deletes its own once the
//! peer has merged and written them. If no peer takes them they stay in
//! this relay's `reports/` for its return.
//!
//! At least once, not exactly once: a peer that merged and wrote the
//! counts but whose 250 never arrived (the connection cut, the drain's
//! deadline reached between its write and its reply) looks to us like a
//! peer that refused them, so we offer them to the next peer or keep
//! them, and those counts are then reported twice for their periods. A
//! hand-off id the receivers remember would only narrow that window (a
//! lost answer stays a lost answer), and it needs a connection to die in
//! the few milliseconds between a peer's fsync and its reply during a
//! drain; aggregate reports are statistics, so we accept it rather than
//! risk losing the counts.

use std::net::SocketAddr;
use std::time::Duration;

use ring::hmac;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::client::{Connection, PeerError, answer};
use super::wire;
use crate::ops::reports::Reports;

/// Hand `reports`' periods to one of `peers` before `deadline`; whether a
/// peer took them (or there was nothing to hand).
pub(crate) async fn hand_off(
    reports: &Reports,
    peers: &[SocketAddr],
    key: &hmac::Key,
    hostname: &str,
    deadline: Instant,
) -> bool {
    let periods = reports.take_all();
    if periods.is_empty() {
        return true;
    }
    let body = match serde_json::to_vec(&periods) {
        Ok(b) if b.len() as u64 <= wire::MAX_REPORTS => b,
        Ok(b) => {
            tracing::warn!(
                bytes = b.len(),
                limit = wire::MAX_REPORTS,
                "report aggregates too large for a hand-off; they stay in this relay's spool"
            );
            keep(reports, &periods);
            return false;
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot encode the report aggregates");
            keep(reports, &periods);
            return false;
        }
    };
    for &peer in peers {
        if Instant::now() >= deadline {
            break;
        }
        match tokio::time::timeout_at(deadline, to_peer(peer, key, hostname, &body)).await {
            Ok(Ok(())) => {
                tracing::info!(%peer, periods = periods.len(), "report aggregates handed off");
                if let Err(e) = reports.handed(&periods) {
                    tracing::warn!(error = %e, "cannot delete the report aggregates handed off");
                }
                return true;
            }
            Ok(Err(e)) => {
                tracing::warn!(%peer, error = %e, "report aggregates not handed to this peer")
            }
            Err(_) => tracing::warn!(%peer, "report aggregates hand-off: deadline reached"),
        }
    }
    keep(reports, &periods);
    tracing::warn!(
        periods = periods.len(),
        "no peer took the report aggregates; they stay in this relay's spool"
    );
    false
}

/// Put `periods` back and write them: nobody else has them.
fn keep(reports: &Reports, periods: &[mailrelay_crds::reports::PeriodAggregates]) {
    reports.restore(periods);
    if let Err(e) = reports.flush() {
        tracing::warn!(error = %e, "cannot write the report aggregates");
    }
}

async fn to_peer(
    peer: SocketAddr,
    key: &hmac::Key,
    hostname: &str,
    body: &[u8],
) -> Result<(), PeerError> {
    let mut conn = Connection::open(peer, hostname).await?;
    if !conn.reports {
        return Err(PeerError::NotHandoff(format!(
            "the peer does not offer {}",
            wire::REPORTS
        )));
    }
    let mac = wire::reports_mac(key, &conn.nonce, body);
    let mut frame = format!("{} {} {mac}\r\n", wire::REPORTS, body.len()).into_bytes();
    frame.extend_from_slice(body);
    conn.write.write_all(&frame).await?;
    let reply = answer(&mut conn.read).await?;
    let _ = conn.write.write_all(b"QUIT\r\n").await;
    let _ = tokio::time::timeout(Duration::from_secs(2), answer(&mut conn.read)).await;
    if reply.code == 250 {
        Ok(())
    } else {
        Err(PeerError::Refused(reply.text()))
    }
}
