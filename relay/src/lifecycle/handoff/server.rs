//! The receiving side: the internal listener where a draining peer of the
//! same Relay leaves its queue. Each message is stored before the 250, with
//! its recipient states, so its retry schedule, expiry and bounces carry on
//! here as if it had never moved.
//!
//! A session has two halves. One reads the commands and checks each
//! message's MAC in turn (its sequence number is its place in the
//! session), then stores it in a task of its own, so the messages a
//! pipelining client has in flight share the spool's fdatasyncs. The other
//! writes the replies in command order, each once its message is on disk,
//! several per write when several are ready.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use ring::hmac;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{self, error::TryRecvError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use super::wire::{self, EXTENSION, MAX_COMMAND, PIPELINING, REPORTS, Transfer};
use crate::config::Current;
use crate::spool::{HandedOff, QueueId, Queued, RecipientState, Spool, SpoolError};

/// Idle time allowed between commands, and for a body to arrive.
const IDLE: Duration = Duration::from_secs(120);
/// Sessions at once: a few draining pods at a time is the normal case.
const MAX_SESSIONS: usize = 32;
/// Room for the headers a relay adds on top of the size limit it enforced.
const SIZE_MARGIN: u64 = 1 << 20;
/// Replies a session may owe at once; past this it reads no more commands
/// until some are written. Above a client's window (`client::WINDOW`).
const MAX_OWED: usize = 1024;
/// Message bytes a session holds at once between reading them and the
/// reply (one message is always allowed, whatever its size): with
/// `MAX_SESSIONS` of them, what pipelining may add to the relay's memory.
const MAX_HELD_BYTES: usize = 16 << 20;

pub(crate) struct Receiver {
    pub spool: Spool,
    pub current: Current,
    pub key: hmac::Key,
    /// Messages taken from peers.
    pub received: Counter,
    /// Where peers' report aggregates are merged (`XREPORTS`).
    pub reports: Option<crate::ops::reports::Reports>,
}

/// Accept hand-off sessions until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, receiver: Arc<Receiver>) {
    let sessions = Arc::new(Semaphore::new(MAX_SESSIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "hand-off listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&sessions).try_acquire_owned() else {
            tracing::warn!(%peer, "hand-off listener: too many sessions; refused");
            continue;
        };
        let receiver = Arc::clone(&receiver);
        tokio::spawn(async move {
            if let Err(e) = session(stream, receiver).await {
                tracing::info!(%peer, error = %e, "hand-off session ended");
            }
            drop(permit);
        });
    }
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("idle for {IDLE:?}")]
    Idle,
    #[error("command line longer than {MAX_COMMAND} bytes")]
    LineTooLong,
}

async fn reply<W: AsyncWrite + Unpin>(w: &mut W, text: &str) -> std::io::Result<()> {
    w.write_all(format!("{text}\r\n").as_bytes()).await?;
    w.flush().await
}

/// A reply the session owes, in command order.
enum Owed {
    Now(String),
    /// The session's last reply: it closes after it.
    Last(String),
    /// A message being stored; the reply comes when it is on disk. The
    /// permit holds its bytes' place in `MAX_HELD_BYTES`.
    Stored(JoinHandle<String>, OwnedSemaphorePermit),
}

async fn session(stream: TcpStream, rx: Arc<Receiver>) -> Result<(), SessionError> {
    let peer = stream.peer_addr()?;
    // Replies go out as soon as they are written: Nagle's algorithm would
    // hold each until the client's delayed ACK of the one before.
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let hostname = rx.current.get().config.hostname.clone();
    let nonce = wire::new_nonce();
    reply(
        &mut write,
        &format!("220 {hostname} mailrelay hand-off {nonce}"),
    )
    .await?;
    let (owed, owing) = mpsc::channel(MAX_OWED);
    let commands = Commands {
        read: BufReader::new(read),
        rx: &rx,
        peer,
        hostname: &hostname,
        nonce: &nonce,
        owed,
        held: Arc::new(Semaphore::new(MAX_HELD_BYTES)),
    };
    let (read_result, write_result) = tokio::join!(commands.run(), write_replies(write, owing));
    read_result.and(write_result)
}

/// The reading half of a session.
struct Commands<'a> {
    read: BufReader<OwnedReadHalf>,
    rx: &'a Arc<Receiver>,
    peer: std::net::SocketAddr,
    hostname: &'a str,
    nonce: &'a str,
    /// To the writing half; dropped when this half ends.
    owed: mpsc::Sender<Owed>,
    held: Arc<Semaphore>,
}

/// Whether the session goes on after a command.
enum Next {
    Reply(Owed),
    Close(String),
}

impl Commands<'_> {
    async fn run(mut self) -> Result<(), SessionError> {
        let mut seq: u64 = 0;
        // One aggregates frame per session: a replayed one would count twice.
        let mut reports_taken = false;
        let mut line = Vec::with_capacity(1024);
        loop {
            line.clear();
            let n = tokio::time::timeout(
                IDLE,
                (&mut self.read)
                    .take(MAX_COMMAND as u64)
                    .read_until(b'\n', &mut line),
            )
            .await
            .map_err(|_| SessionError::Idle)??;
            if n == 0 {
                return Ok(());
            }
            if !line.ends_with(b"\n") {
                let _ = self
                    .owed
                    .send(Owed::Last("500 5.5.2 line too long".into()))
                    .await;
                return Err(SessionError::LineTooLong);
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\r', '\n']);
            let (verb, args) = text.split_once(' ').unwrap_or((text, ""));
            let next = match verb.to_ascii_uppercase().as_str() {
                "EHLO" | "HELO" => Next::Reply(Owed::Now(match self.rx.reports {
                    Some(_) => format!(
                        "250-{}\r\n250-{PIPELINING}\r\n250-{REPORTS}\r\n250 {EXTENSION}",
                        self.hostname
                    ),
                    None => format!(
                        "250-{}\r\n250-{PIPELINING}\r\n250 {EXTENSION}",
                        self.hostname
                    ),
                })),
                "XREPORTS" if self.rx.reports.is_some() && !reports_taken => {
                    reports_taken = true;
                    self.reports(args).await?
                }
                "NOOP" | "RSET" => Next::Reply(Owed::Now("250 2.0.0 ok".into())),
                "QUIT" => Next::Close("221 2.0.0 bye".into()),
                "XMESSAGE" => {
                    let this = seq;
                    seq += 1;
                    self.message(args, this).await?
                }
                _ => Next::Reply(Owed::Now("500 5.5.1 command not recognized".into())),
            };
            match next {
                Next::Reply(owed) => {
                    if self.owed.send(owed).await.is_err() {
                        // The writing half is gone: so is the client.
                        return Ok(());
                    }
                }
                Next::Close(text) => {
                    let _ = self.owed.send(Owed::Last(text)).await;
                    return Ok(());
                }
            }
        }
    }

    /// An XREPORTS frame: a peer's report aggregates, merged into ours and
    /// written before the 250.
    async fn reports(&mut self, args: &str) -> Result<Next, SessionError> {
        let mut words = args.split_ascii_whitespace();
        let (Some(len), Some(mac), None) = (words.next(), words.next(), words.next()) else {
            return Ok(Next::Close(
                "501 5.5.4 expected XREPORTS LENGTH MAC; closing".into(),
            ));
        };
        let Some(len) = len.parse::<u64>().ok().filter(|l| *l <= wire::MAX_REPORTS) else {
            return Ok(Next::Close(format!(
                "552 5.3.4 bad or too large length {len}; closing"
            )));
        };
        // Nothing is authenticated before the frame's MAC, which covers
        // the body: so the body takes its place in the session's held
        // bytes like a message, and the buffer grows with the bytes that
        // actually arrive rather than with the length announced.
        let share = u32::try_from(len.min(MAX_HELD_BYTES as u64)).unwrap_or(u32::MAX);
        let Ok(_held) = Arc::clone(&self.held).acquire_many_owned(share).await else {
            return Ok(Next::Close("421 4.3.0 closing".into()));
        };
        let mut body = Vec::new();
        tokio::time::timeout(IDLE, (&mut self.read).take(len).read_to_end(&mut body))
            .await
            .map_err(|_| SessionError::Idle)??;
        if body.len() as u64 != len {
            return Err(SessionError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        if !wire::verify_reports(&self.rx.key, self.nonce, &body, mac) {
            tracing::warn!(peer = %self.peer, "report aggregates refused: bad MAC");
            return Ok(Next::Close(
                "535 5.7.8 hand-off authentication failed".into(),
            ));
        }
        let periods: Vec<mailrelay_crds::reports::PeriodAggregates> =
            match serde_json::from_slice(&body) {
                Ok(p) => p,
                Err(e) => return Ok(Next::Reply(Owed::Now(format!("501 5.6.0 {e}")))),
            };
        let Some(reports) = self.rx.reports.clone() else {
            return Ok(Next::Reply(Owed::Now("502 5.5.1 not taken here".into())));
        };
        let n = periods.len();
        let merged = tokio::task::spawn_blocking(move || reports.merge_in(&periods)).await;
        Ok(Next::Reply(Owed::Now(match merged {
            Ok(Ok(())) => {
                tracing::info!(peer = %self.peer, periods = n, "report aggregates taken from a draining peer");
                format!("250 2.0.0 {n} periods merged")
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot write report aggregates from a peer");
                format!("451 4.3.0 cannot store the aggregates: {e}")
            }
            Err(e) => format!("451 4.3.0 cannot store the aggregates: {e}"),
        })))
    }

    /// An XMESSAGE, the `seq`th of the session: read its body, check its
    /// MAC and start storing it.
    async fn message(&mut self, args: &str, seq: u64) -> Result<Next, SessionError> {
        let cmd = match wire::parse_message_args(args) {
            Ok(c) => c,
            // The body's length is unknown: the stream cannot be followed
            // past it.
            Err(e) => return Ok(Next::Close(format!("501 5.5.4 {e}; closing"))),
        };
        let limit = self.rx.current.get().config.limits.max_message_size + SIZE_MARGIN;
        if cmd.len > limit {
            return Ok(Next::Close(format!(
                "552 5.3.4 {} bytes is over the limit of {limit}; closing",
                cmd.len
            )));
        }
        let len = usize::try_from(cmd.len).unwrap_or(usize::MAX);
        let share = u32::try_from(len.min(MAX_HELD_BYTES)).unwrap_or(u32::MAX);
        let Ok(held) = Arc::clone(&self.held).acquire_many_owned(share).await else {
            return Ok(Next::Close("421 4.3.0 closing".into()));
        };
        let mut body = vec![0; len];
        tokio::time::timeout(IDLE, self.read.read_exact(&mut body))
            .await
            .map_err(|_| SessionError::Idle)??;
        if !wire::verify(&self.rx.key, self.nonce, seq, cmd.transfer, &body, cmd.mac) {
            tracing::warn!(peer = %self.peer, "hand-off refused: bad MAC (wrong secret or altered in transit)");
            return Ok(Next::Close(
                "535 5.7.8 hand-off authentication failed".into(),
            ));
        }
        Ok(Next::Reply(match wire::decode_transfer(cmd.transfer) {
            Err(e) => Owed::Now(format!("501 5.6.0 {e}")),
            Ok(t) => {
                let rx = Arc::clone(self.rx);
                let peer = self.peer;
                Owed::Stored(
                    tokio::spawn(async move { take(&rx, t, &body, peer).await }),
                    held,
                )
            }
        }))
    }
}

/// The writing half of a session: each reply in command order, as soon as
/// it is known, those known together in one write.
async fn write_replies(
    mut write: OwnedWriteHalf,
    mut owing: mpsc::Receiver<Owed>,
) -> Result<(), SessionError> {
    let mut out = Vec::with_capacity(4096);
    loop {
        let next = match owing.try_recv() {
            Ok(owed) => owed,
            Err(TryRecvError::Empty) => {
                flush(&mut write, &mut out).await?;
                match owing.recv().await {
                    Some(owed) => owed,
                    None => break,
                }
            }
            Err(TryRecvError::Disconnected) => break,
        };
        let (text, last) = match next {
            Owed::Now(text) => (text, false),
            Owed::Last(text) => (text, true),
            Owed::Stored(task, _held) => {
                if !task.is_finished() {
                    flush(&mut write, &mut out).await?;
                }
                let text = task.await.unwrap_or_else(|e| {
                    tracing::error!(error = %e, "storing a handed-off message failed");
                    "451 4.3.0 cannot store the message".into()
                });
                (text, false)
            }
        };
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(b"\r\n");
        if last {
            break;
        }
    }
    flush(&mut write, &mut out).await?;
    let _ = write.shutdown().await;
    Ok(())
}

async fn flush(write: &mut OwnedWriteHalf, out: &mut Vec<u8>) -> std::io::Result<()> {
    if !out.is_empty() {
        write.write_all(out).await?;
        out.clear();
    }
    Ok(())
}

/// Store a handed-over message; the reply for the sender.
async fn take(rx: &Receiver, t: Transfer, body: &[u8], peer: std::net::SocketAddr) -> String {
    if !rx.spool.has_room().await {
        return "452 4.3.1 insufficient system storage".into();
    }
    let from = t.id.clone();
    match store(&rx.spool, t, body, peer).await {
        Ok(id) => {
            rx.received.inc();
            format!("250 2.0.0 {id} queued (handed off from {from})")
        }
        Err(e) => {
            tracing::error!(from_queue_id = %from, error = %e, "cannot store a handed-off message");
            format!("451 4.3.0 cannot store the message: {e}")
        }
    }
}

async fn store(
    spool: &Spool,
    t: Transfer,
    body: &[u8],
    peer: std::net::SocketAddr,
) -> Result<QueueId, SpoolError> {
    let id = spool.new_id();
    let mut envelope = t.envelope;
    let mut history = envelope.handed_off.take().unwrap_or_default();
    history.lineage.push(t.id.clone());
    envelope.handed_off = Some(HandedOff {
        lineage: history.lineage,
        warned: t.warned,
    });
    let states: Vec<(usize, RecipientState)> = t
        .recipients
        .into_iter()
        .enumerate()
        .filter(|(_, s)| *s != RecipientState::Pending)
        .collect();
    // In one step: stored first and given its states after, the message
    // would look new to delivery in between, every recipient pending, and
    // be delivered again to those the peer had already delivered it to.
    spool
        .commit_with_states(&id, &envelope, body, &states, t.held)
        .await?;
    let mut recipients = vec![RecipientState::Pending; envelope.recipients.len()];
    for (i, s) in &states {
        if let Some(r) = recipients.get_mut(*i) {
            r.clone_from(s);
        }
    }
    let stored = Queued {
        id,
        envelope,
        recipients,
        held: t.held,
        warned: t.warned,
    };
    crate::events::hooks::handed_in(spool, &stored, &peer.to_string());
    let envelope = stored.envelope;
    tracing::info!(
        queue_id = %id, from_queue_id = %t.id, sender = %envelope.sender,
        recipients = envelope.recipients.len(), held = t.held,
        "queued: handed off by a draining peer"
    );
    Ok(id)
}
