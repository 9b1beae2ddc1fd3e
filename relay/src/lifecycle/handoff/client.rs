//! The sending side: a draining relay moves every queued message to a peer
//! and forgets it locally only after the peer's 250 (which the peer sends
//! after its own fsync). A crash between the two leaves the message on
//! both relays: a duplicate, never a loss.

use std::net::SocketAddr;
use std::time::Duration;

use ring::hmac;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;

use super::wire::{self, EXTENSION, Transfer};
use crate::delivery::wire::{Reply, read_reply};
use crate::spool::{QueueId, Spool};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// For a reply; a message's reply waits for the peer's fsync.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// What a hand-off achieved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Messages a peer took and this relay removed.
    pub handed: usize,
    /// Messages still in this relay's spool.
    pub left: usize,
}

#[derive(Debug, thiserror::Error)]
enum PeerError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Wire(#[from] crate::delivery::wire::WireError),
    #[error("timed out")]
    Timeout,
    #[error("not a hand-off listener: {0}")]
    NotHandoff(String),
    #[error("peer refused: {0}")]
    Refused(String),
}

struct Connection {
    read: BufReader<OwnedReadHalf>,
    write: OwnedWriteHalf,
    nonce: String,
    seq: u64,
}

async fn answer(read: &mut BufReader<OwnedReadHalf>) -> Result<Reply, PeerError> {
    tokio::time::timeout(REPLY_TIMEOUT, read_reply(read))
        .await
        .map_err(|_| PeerError::Timeout)?
        .map_err(PeerError::from)
}

impl Connection {
    async fn open(addr: SocketAddr, hostname: &str) -> Result<Connection, PeerError> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| PeerError::Timeout)??;
        stream.set_nodelay(true)?;
        let (read, write) = stream.into_split();
        let mut c = Connection {
            read: BufReader::new(read),
            write,
            nonce: String::new(),
            seq: 0,
        };
        let greeting = answer(&mut c.read).await?;
        c.nonce = match (greeting.code, greeting.lines.first()) {
            (220, Some(line)) if line.contains("mailrelay hand-off") => line
                .split_ascii_whitespace()
                .last()
                .unwrap_or_default()
                .to_string(),
            _ => return Err(PeerError::NotHandoff(greeting.text())),
        };
        c.write
            .write_all(format!("EHLO {hostname}\r\n").as_bytes())
            .await?;
        let ehlo = answer(&mut c.read).await?;
        if ehlo.code != 250 || !ehlo.has_extension(EXTENSION) {
            return Err(PeerError::NotHandoff(ehlo.text()));
        }
        Ok(c)
    }

    /// Send one message; the peer's reply.
    async fn send(
        &mut self,
        key: &hmac::Key,
        transfer: &Transfer,
        body: &[u8],
    ) -> Result<Reply, PeerError> {
        let encoded = wire::encode_transfer(transfer)
            .map_err(|e| PeerError::Refused(format!("cannot encode: {e}")))?;
        let mac = wire::mac(key, &self.nonce, self.seq, &encoded, body);
        self.seq += 1;
        let mut line = wire::command(body.len(), &encoded, &mac);
        line.push_str("\r\n");
        self.write.write_all(line.as_bytes()).await?;
        self.write.write_all(body).await?;
        self.write.flush().await?;
        answer(&mut self.read).await
    }

    async fn quit(mut self) {
        let _ = self.write.write_all(b"QUIT\r\n").await;
        let _ = tokio::time::timeout(Duration::from_secs(2), read_reply(&mut self.read)).await;
    }
}

/// Hand every queued message to one of `peers`, trying them in turn,
/// until `deadline`. Nothing may be delivering from the spool meanwhile
/// (the delivery manager is stopped first).
pub(crate) async fn hand_off(
    spool: &Spool,
    peers: &[SocketAddr],
    key: &hmac::Key,
    hostname: &str,
    deadline: Instant,
) -> Report {
    let mut remaining: Vec<QueueId> = spool.ids();
    let mut handed = 0;
    // Rounds until everything is placed or time is up: a peer that is
    // starting or briefly full may take the rest on the next round.
    while !remaining.is_empty() && Instant::now() < deadline && !peers.is_empty() {
        let before = handed;
        for &peer in peers {
            if remaining.is_empty() {
                break;
            }
            match tokio::time::timeout_at(
                deadline,
                to_peer(spool, peer, key, hostname, &mut remaining),
            )
            .await
            {
                Ok(Ok(n)) => handed += n,
                Ok(Err((n, e))) => {
                    handed += n;
                    tracing::warn!(%peer, error = %e, left = remaining.len(), "hand-off to this peer stopped");
                }
                Err(_) => {
                    tracing::warn!(%peer, "hand-off deadline reached");
                    break;
                }
            }
        }
        if handed == before {
            tokio::time::sleep_until(deadline.min(Instant::now() + Duration::from_secs(1))).await;
        }
    }
    Report {
        handed,
        left: spool.stats().messages,
    }
}

/// Send what `remaining` lists to `peer`; a message it takes leaves the
/// list (and the spool). The count taken, with the error that ended the
/// session early.
async fn to_peer(
    spool: &Spool,
    peer: SocketAddr,
    key: &hmac::Key,
    hostname: &str,
    remaining: &mut Vec<QueueId>,
) -> Result<usize, (usize, PeerError)> {
    let mut conn = Connection::open(peer, hostname).await.map_err(|e| (0, e))?;
    let mut handed = 0;
    let mut kept = Vec::new();
    let ids = std::mem::take(remaining);
    let mut ids = ids.into_iter();
    for id in ids.by_ref() {
        let Some(q) = spool.queued_one(&id) else {
            continue;
        };
        let body = match spool.read_body(&id).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(queue_id = %id, error = %e, "cannot read the body to hand it off; kept");
                kept.push(id);
                continue;
            }
        };
        let transfer = Transfer {
            id: id.to_string(),
            envelope: q.envelope,
            recipients: q.recipients,
            held: q.held,
            warned: q.warned,
        };
        let reply = match conn.send(key, &transfer, &body).await {
            Ok(r) => r,
            Err(e) => {
                // Unknown whether the peer stored it: keep ours (a
                // duplicate at worst) and stop using this connection.
                kept.push(id);
                kept.extend(ids);
                *remaining = kept;
                return Err((handed, e));
            }
        };
        if reply.code != 250 {
            tracing::warn!(queue_id = %id, %peer, reply = %reply.text(), "peer did not take the message");
            kept.push(id);
            if reply.code == 535 || reply.code == 421 {
                kept.extend(ids);
                *remaining = kept;
                return Err((handed, PeerError::Refused(reply.text())));
            }
            continue;
        }
        let peer_id = reply
            .lines
            .first()
            .and_then(|l| l.split_ascii_whitespace().nth(1))
            .unwrap_or_default()
            .to_string();
        match spool.remove(&id).await {
            Ok(()) => {
                handed += 1;
                tracing::info!(queue_id = %id, %peer, peer_queue_id = %peer_id, "handed off to a peer");
            }
            Err(e) => {
                // The peer has it; ours stays and may be delivered twice.
                tracing::error!(queue_id = %id, %peer, peer_queue_id = %peer_id, error = %e,
                    "handed off, but cannot remove the local copy");
            }
        }
    }
    *remaining = kept;
    conn.quit().await;
    Ok(handed)
}
