//! The sending side: a draining relay moves every queued message to a peer
//! and forgets it locally only after the peer's 250 (which the peer sends
//! after its own fsync). A crash between the two leaves the message on
//! both relays: a duplicate, never a loss.
//!
//! To a peer that offers PIPELINING up to `WINDOW` messages are in flight:
//! one half of the session writes them, a few per write, while the other
//! reads the replies, matches each to its message (`pipeline::Ledger`) and
//! removes what the peer took. Waiting for each reply instead would cost
//! a round trip and a peer's fdatasync per message. The deadline stops
//! the sending, not the reading: replies to what is already out are still
//! read for `REPLY_GRACE`, so that a message the peer acknowledged in time
//! is removed here and not left on both relays.

use std::net::SocketAddr;
use std::time::Duration;

use ring::hmac;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, Semaphore, TryAcquireError, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::pipeline::{Ledger, Unexpected, Verdict};
use super::wire::{self, EXTENSION, PIPELINING, Transfer};
use crate::delivery::wire::{Reply, read_reply};
use crate::spool::{QueueId, Spool, SpoolError};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// For a reply; a message's reply waits for the peer's fsync.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// Messages in flight to a pipelining peer: enough for its group commit
/// to sync many at once, few enough that little is in the air when the
/// deadline comes.
const WINDOW: usize = 256;
/// Buffered messages are written once they reach this size, or when the
/// window is full, or when there is nothing more to send.
const FLUSH_BYTES: usize = 256 << 10;
/// After the deadline, how long replies to messages already sent are
/// still read. Well inside the pod's grace period after the deadline.
const REPLY_GRACE: Duration = Duration::from_secs(5);

/// What a hand-off achieved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Messages a peer acknowledged with its 250. Each was removed here,
    /// unless the removal failed (logged; the message is then also among
    /// `left`).
    pub handed: usize,
    /// Messages still in this relay's spool.
    pub left: usize,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum PeerError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Wire(#[from] crate::delivery::wire::WireError),
    #[error("timed out")]
    Timeout,
    #[error("hand-off deadline reached")]
    Deadline,
    #[error("not a hand-off listener: {0}")]
    NotHandoff(String),
    #[error("peer refused: {0}")]
    Refused(String),
    #[error("{0}")]
    Unexpected(#[from] Unexpected),
}

pub(super) struct Connection {
    pub(super) read: BufReader<OwnedReadHalf>,
    pub(super) write: OwnedWriteHalf,
    pub(super) nonce: String,
    /// The peer takes messages pipelined.
    pipelining: bool,
    /// The peer takes report aggregates (`XREPORTS`).
    pub(super) reports: bool,
}

pub(super) async fn answer(read: &mut BufReader<OwnedReadHalf>) -> Result<Reply, PeerError> {
    tokio::time::timeout(REPLY_TIMEOUT, read_reply(read))
        .await
        .map_err(|_| PeerError::Timeout)?
        .map_err(PeerError::from)
}

impl Connection {
    pub(super) async fn open(addr: SocketAddr, hostname: &str) -> Result<Connection, PeerError> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| PeerError::Timeout)??;
        stream.set_nodelay(true)?;
        let (read, write) = stream.into_split();
        let mut read = BufReader::new(read);
        let mut write = write;
        let greeting = answer(&mut read).await?;
        let nonce = match (greeting.code, greeting.lines.first()) {
            (220, Some(line)) if line.contains("mailrelay hand-off") => line
                .split_ascii_whitespace()
                .last()
                .unwrap_or_default()
                .to_string(),
            _ => return Err(PeerError::NotHandoff(greeting.text())),
        };
        write
            .write_all(format!("EHLO {hostname}\r\n").as_bytes())
            .await?;
        let ehlo = answer(&mut read).await?;
        if ehlo.code != 250 || !ehlo.has_extension(EXTENSION) {
            return Err(PeerError::NotHandoff(ehlo.text()));
        }
        Ok(Connection {
            read,
            write,
            nonce,
            pipelining: ehlo.has_extension(PIPELINING),
            reports: ehlo.has_extension(wire::REPORTS),
        })
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
            if remaining.is_empty() || Instant::now() >= deadline {
                break;
            }
            // Never cut off from outside: a session counts what it handed
            // and removes what was acknowledged even when time runs out.
            let session = to_peer(spool, peer, key, hostname, deadline, &mut remaining).await;
            handed += session.acknowledged;
            if let Some(e) = session.error {
                tracing::warn!(%peer, error = %e, handed = session.acknowledged,
                    left = remaining.len(), "hand-off to this peer stopped");
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

/// How one session with a peer went.
struct Session {
    /// Messages the peer acknowledged.
    acknowledged: usize,
    /// What ended it early.
    error: Option<PeerError>,
}

/// Send what `remaining` lists to `peer`; a message it takes leaves the
/// list (and the spool), the rest stays listed for the next peer.
async fn to_peer(
    spool: &Spool,
    peer: SocketAddr,
    key: &hmac::Key,
    hostname: &str,
    deadline: Instant,
    remaining: &mut Vec<QueueId>,
) -> Session {
    let conn = match tokio::time::timeout_at(deadline, Connection::open(peer, hostname)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            return Session {
                acknowledged: 0,
                error: Some(e),
            };
        }
        Err(_) => {
            return Session {
                acknowledged: 0,
                error: Some(PeerError::Deadline),
            };
        }
    };
    let window = if conn.pipelining { WINDOW } else { 1 };
    let Connection {
        mut read,
        write,
        nonce,
        ..
    } = conn;
    let room = Semaphore::new(window);
    let stop = Notify::new();
    let (sent_tx, sent_rx) = mpsc::unbounded_channel();
    let sending = Sending {
        spool,
        key,
        nonce: &nonce,
        write,
        room: &room,
        stop: &stop,
        sent: sent_tx,
        deadline,
        buf: Vec::with_capacity(FLUSH_BYTES + (64 << 10)),
        unsent: Vec::new(),
    };
    let mut receiving = Receiving {
        spool,
        peer,
        read: &mut read,
        sent: sent_rx,
        room: &room,
        deadline,
        ledger: Ledger::default(),
        kept: Vec::new(),
        removals: JoinSet::new(),
    };
    let ids = std::mem::take(remaining);
    let reading = async {
        let ended = receiving.run().await;
        receiving.finish(&stop);
        ended
    };
    let (sent, read_error) = tokio::join!(sending.run(ids), reading);
    // Every acknowledged message leaves this spool before the session is
    // done, deadline or not.
    while let Some(done) = receiving.removals.join_next().await {
        removed(done);
    }
    let acknowledged = receiving.ledger.acknowledged();
    *remaining = receiving.kept;
    remaining.extend(sent.unsent);
    let error = read_error.or(sent.error);
    if error.is_none() {
        quit(sent.write, &mut read).await;
    }
    Session {
        acknowledged,
        error,
    }
}

async fn quit(mut write: OwnedWriteHalf, read: &mut BufReader<OwnedReadHalf>) {
    let _ = write.write_all(b"QUIT\r\n").await;
    let _ = tokio::time::timeout(Duration::from_secs(2), read_reply(read)).await;
}

/// The writing half of a session.
struct Sending<'a> {
    spool: &'a Spool,
    key: &'a hmac::Key,
    nonce: &'a str,
    write: OwnedWriteHalf,
    /// A permit per message that may be in flight.
    room: &'a Semaphore,
    /// The reading half gave up: stop writing.
    stop: &'a Notify,
    /// Each message, to the reading half, before its bytes go out.
    sent: mpsc::UnboundedSender<QueueId>,
    deadline: Instant,
    buf: Vec<u8>,
    /// Taken from the list but not sent.
    unsent: Vec<QueueId>,
}

/// What the writing half leaves.
struct Sent {
    write: OwnedWriteHalf,
    unsent: Vec<QueueId>,
    error: Option<PeerError>,
}

/// A message ready to go but for its MAC, which depends on its place.
struct Outgoing {
    id: QueueId,
    transfer: String,
    body: Vec<u8>,
}

impl Sending<'_> {
    /// Consumes the sender, so that the reading half learns when nothing
    /// more will be sent.
    async fn run(mut self, ids: Vec<QueueId>) -> Sent {
        let mut ids = ids.into_iter();
        let mut error = self.send_all(&mut ids).await.err();
        // What is buffered is in flight already (the reading half awaits
        // its replies): out it goes, deadline or not.
        if matches!(error, None | Some(PeerError::Deadline))
            && let Err(e) = self.flush().await
        {
            error = Some(e);
        }
        self.unsent.extend(ids);
        Sent {
            write: self.write,
            unsent: self.unsent,
            error,
        }
    }

    async fn send_all(&mut self, ids: &mut std::vec::IntoIter<QueueId>) -> Result<(), PeerError> {
        let mut seq: u64 = 0;
        for id in ids.by_ref() {
            if Instant::now() >= self.deadline {
                self.unsent.push(id);
                return Err(PeerError::Deadline);
            }
            let Some(out) = self.load(id).await else {
                continue;
            };
            let permit = match self.room.try_acquire() {
                Ok(p) => p,
                Err(TryAcquireError::Closed) => {
                    self.unsent.push(out.id);
                    return Ok(());
                }
                Err(TryAcquireError::NoPermits) => {
                    // The window is full: what is buffered goes out first,
                    // or no reply would ever make room.
                    if let Err(e) = self.flush().await {
                        self.unsent.push(out.id);
                        return Err(e);
                    }
                    match tokio::time::timeout_at(self.deadline, self.room.acquire()).await {
                        Ok(Ok(p)) => p,
                        Ok(Err(_closed)) => {
                            self.unsent.push(out.id);
                            return Ok(());
                        }
                        Err(_) => {
                            self.unsent.push(out.id);
                            return Err(PeerError::Deadline);
                        }
                    }
                }
            };
            // Given back by the reading half when the reply arrives.
            permit.forget();
            let mac = wire::mac(self.key, self.nonce, seq, &out.transfer, &out.body);
            seq += 1;
            if self.sent.send(out.id).is_err() {
                // The reading half is done: nothing more is read.
                self.unsent.push(out.id);
                return Ok(());
            }
            let line = wire::command(out.body.len(), &out.transfer, &mac);
            self.buf.extend_from_slice(line.as_bytes());
            self.buf.extend_from_slice(b"\r\n");
            self.buf.extend_from_slice(&out.body);
            if self.buf.len() >= FLUSH_BYTES {
                self.flush().await?;
            }
        }
        Ok(())
    }

    /// A queued message as it goes on the wire; None (and logged, and
    /// listed as unsent) when it cannot be read.
    async fn load(&mut self, id: QueueId) -> Option<Outgoing> {
        let q = match self.spool.queued_one(&id) {
            Ok(Some(q)) => q,
            // Gone meanwhile (removed by an administrator): nothing to move.
            Ok(None) => return None,
            Err(e) => {
                tracing::error!(queue_id = %id, error = %e, "cannot read the message to hand it off; kept");
                self.unsent.push(id);
                return None;
            }
        };
        let body = match self.spool.read_body(&id).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(queue_id = %id, error = %e, "cannot read the body to hand it off; kept");
                self.unsent.push(id);
                return None;
            }
        };
        let transfer = Transfer {
            id: id.to_string(),
            envelope: q.envelope,
            recipients: q.recipients,
            held: q.held,
            warned: q.warned,
        };
        match wire::encode_transfer(&transfer) {
            Ok(transfer) => Some(Outgoing { id, transfer, body }),
            Err(e) => {
                tracing::error!(queue_id = %id, error = %e, "cannot encode the message to hand it off; kept");
                self.unsent.push(id);
                None
            }
        }
    }

    /// Write what is buffered, unless the reading half gives up first
    /// (the peer may have stopped reading) or its replies could no longer
    /// be read.
    async fn flush(&mut self) -> Result<(), PeerError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let until = self.deadline + REPLY_GRACE;
        let written = tokio::select! {
            r = tokio::time::timeout_at(until, self.write.write_all(&self.buf)) => r,
            () = self.stop.notified() => return Err(PeerError::Refused("the session ended".into())),
        };
        match written {
            Ok(Ok(())) => {
                self.buf.clear();
                Ok(())
            }
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(PeerError::Deadline),
        }
    }
}

/// The reading half of a session.
struct Receiving<'a> {
    spool: &'a Spool,
    peer: SocketAddr,
    read: &'a mut BufReader<OwnedReadHalf>,
    sent: mpsc::UnboundedReceiver<QueueId>,
    room: &'a Semaphore,
    deadline: Instant,
    ledger: Ledger,
    /// Sent and not taken: for the next peer.
    kept: Vec<QueueId>,
    /// Local copies being removed after the peer's 250.
    removals: JoinSet<Removal>,
}

impl Receiving<'_> {
    /// Read replies until nothing more was sent, or the session ends.
    async fn run(&mut self) -> Option<PeerError> {
        let grace_end = self.deadline + REPLY_GRACE;
        loop {
            while let Ok(id) = self.sent.try_recv() {
                self.ledger.sent(id);
            }
            if self.ledger.is_idle() {
                match self.sent.recv().await {
                    Some(id) => self.ledger.sent(id),
                    None => return None,
                }
            }
            let until = (Instant::now() + REPLY_TIMEOUT).min(grace_end);
            let reply = match tokio::time::timeout_at(until, read_reply(self.read)).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => return Some(e.into()),
                Err(_) if Instant::now() >= self.deadline => return Some(PeerError::Deadline),
                Err(_) => return Some(PeerError::Timeout),
            };
            self.room.add_permits(1);
            let (id, verdict) = match self.ledger.answer(&reply) {
                Ok(settled) => settled,
                Err(e) => return Some(e.into()),
            };
            match verdict {
                Verdict::Taken { peer_id } => {
                    let (spool, peer) = (self.spool.clone(), self.peer);
                    self.removals.spawn(async move {
                        crate::events::hooks::handed_off(&spool, &id, &peer.to_string()).await;
                        let result = spool.remove(&id).await;
                        Removal {
                            id,
                            peer,
                            peer_id,
                            result,
                        }
                    });
                    while let Some(done) = self.removals.try_join_next() {
                        removed(done);
                    }
                }
                Verdict::Kept => {
                    tracing::warn!(queue_id = %id, peer = %self.peer, reply = %reply.text(), "peer did not take the message");
                    self.kept.push(id);
                }
                Verdict::Ended => {
                    tracing::warn!(queue_id = %id, peer = %self.peer, reply = %reply.text(), "peer did not take the message");
                    self.kept.push(id);
                    return Some(PeerError::Refused(reply.text()));
                }
            }
        }
    }

    /// No more replies will be read: stop the writing half, and keep what
    /// is still in flight (whether the peer stored it is unknown).
    fn finish(&mut self, stop: &Notify) {
        self.room.close();
        self.sent.close();
        stop.notify_one();
        while let Ok(id) = self.sent.try_recv() {
            self.ledger.sent(id);
        }
        self.kept.extend(self.ledger.abandon());
    }
}

/// The local copy of a message a peer took, being removed.
struct Removal {
    id: QueueId,
    peer: SocketAddr,
    peer_id: String,
    result: Result<(), SpoolError>,
}

/// Log the end of one message's hand-off.
fn removed(done: Result<Removal, tokio::task::JoinError>) {
    match done {
        Ok(Removal {
            id,
            peer,
            peer_id,
            result: Ok(()),
        }) => {
            tracing::info!(queue_id = %id, %peer, peer_queue_id = %peer_id, "handed off to a peer");
        }
        Ok(Removal {
            id,
            peer,
            peer_id,
            result: Err(e),
        }) => {
            // The peer has it; ours stays and may be delivered twice.
            tracing::error!(queue_id = %id, %peer, peer_queue_id = %peer_id, error = %e,
                "handed off, but cannot remove the local copy");
        }
        Err(e) => {
            tracing::error!(error = %e, "a removal after a hand-off failed; the local copy may stay");
        }
    }
}
