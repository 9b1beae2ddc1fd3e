//! The receiving side: the internal listener where a draining peer of the
//! same Relay leaves its queue. Each message is stored before the 250, with
//! its recipient states, so its retry schedule, expiry and bounces carry on
//! here as if it had never moved.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use ring::hmac;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::wire::{self, EXTENSION, MAX_COMMAND, Transfer};
use crate::config::Current;
use crate::spool::{HandedOff, QueueId, RecipientState, Spool, SpoolError};

/// Idle time allowed between commands, and for a body to arrive.
const IDLE: Duration = Duration::from_secs(120);
/// Sessions at once: a few draining pods at a time is the normal case.
const MAX_SESSIONS: usize = 32;
/// Room for the headers a relay adds on top of the size limit it enforced.
const SIZE_MARGIN: u64 = 1 << 20;

pub(crate) struct Receiver {
    pub spool: Spool,
    pub current: Current,
    pub key: hmac::Key,
    /// Messages taken from peers.
    pub received: Counter,
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
            if let Err(e) = session(stream, &receiver).await {
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
    w.write_all(text.as_bytes()).await?;
    w.write_all(b"\r\n").await?;
    w.flush().await
}

async fn session(stream: TcpStream, rx: &Receiver) -> Result<(), SessionError> {
    let peer = stream.peer_addr()?;
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let hostname = rx.current.get().config.hostname.clone();
    let nonce = wire::new_nonce();
    reply(
        &mut write,
        &format!("220 {hostname} mailrelay hand-off {nonce}"),
    )
    .await?;
    let mut seq: u64 = 0;
    let mut line = Vec::with_capacity(1024);
    loop {
        line.clear();
        let n = tokio::time::timeout(
            IDLE,
            (&mut read)
                .take(MAX_COMMAND as u64)
                .read_until(b'\n', &mut line),
        )
        .await
        .map_err(|_| SessionError::Idle)??;
        if n == 0 {
            return Ok(());
        }
        if !line.ends_with(b"\n") {
            reply(&mut write, "500 5.5.2 line too long").await?;
            return Err(SessionError::LineTooLong);
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        let (verb, args) = text.split_once(' ').unwrap_or((text, ""));
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" | "HELO" => {
                reply(&mut write, &format!("250-{hostname}\r\n250 {EXTENSION}")).await?;
            }
            "NOOP" | "RSET" => reply(&mut write, "250 2.0.0 ok").await?,
            "QUIT" => {
                reply(&mut write, "221 2.0.0 bye").await?;
                return Ok(());
            }
            "XMESSAGE" => {
                let cmd = match wire::parse_message_args(args) {
                    Ok(c) => c,
                    Err(e) => {
                        // The body's length is unknown: the stream cannot
                        // be followed past it.
                        reply(&mut write, &format!("501 5.5.4 {e}; closing")).await?;
                        return Ok(());
                    }
                };
                let limit = rx.current.get().config.limits.max_message_size + SIZE_MARGIN;
                if cmd.len > limit {
                    reply(
                        &mut write,
                        &format!(
                            "552 5.3.4 {} bytes is over the limit of {limit}; closing",
                            cmd.len
                        ),
                    )
                    .await?;
                    return Ok(());
                }
                let mut body = vec![0; usize::try_from(cmd.len).unwrap_or(usize::MAX)];
                tokio::time::timeout(IDLE, read.read_exact(&mut body))
                    .await
                    .map_err(|_| SessionError::Idle)??;
                let this = seq;
                seq += 1;
                if !wire::verify(&rx.key, &nonce, this, cmd.transfer, &body, cmd.mac) {
                    tracing::warn!(%peer, "hand-off refused: bad MAC (wrong secret or altered in transit)");
                    reply(&mut write, "535 5.7.8 hand-off authentication failed").await?;
                    return Ok(());
                }
                let answer = match wire::decode_transfer(cmd.transfer) {
                    Err(e) => format!("501 5.6.0 {e}"),
                    Ok(t) => take(rx, t, &body).await,
                };
                reply(&mut write, &answer).await?;
            }
            _ => reply(&mut write, "500 5.5.1 command not recognized").await?,
        }
    }
}

/// Store a handed-over message; the reply for the sender.
async fn take(rx: &Receiver, t: Transfer, body: &[u8]) -> String {
    if !rx.spool.has_room().await {
        return "452 4.3.1 insufficient system storage".into();
    }
    let from = t.id.clone();
    match store(&rx.spool, t, body).await {
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

async fn store(spool: &Spool, t: Transfer, body: &[u8]) -> Result<QueueId, SpoolError> {
    let id = spool.new_id();
    let mut envelope = t.envelope;
    let mut history = envelope.handed_off.take().unwrap_or_default();
    history.lineage.push(t.id.clone());
    envelope.handed_off = Some(HandedOff {
        lineage: history.lineage,
        warned: t.warned,
    });
    spool.commit(&id, &envelope, body).await?;
    let states: Vec<(usize, RecipientState)> = t
        .recipients
        .into_iter()
        .enumerate()
        .filter(|(_, s)| *s != RecipientState::Pending)
        .collect();
    let mut result = Ok(());
    if !states.is_empty() {
        result = spool.record(&id, &states).await;
    }
    if result.is_ok() && t.held {
        result = spool.set_held(&id, true).await;
    }
    if let Err(e) = result {
        // Without its states the message would be delivered again to
        // recipients who have it: let the sender keep it and try elsewhere.
        if let Err(e) = spool.remove(&id).await {
            tracing::error!(queue_id = %id, error = %e, "cannot take back a half-stored hand-off; it may be delivered twice");
        }
        return Err(e);
    }
    tracing::info!(
        queue_id = %id, from_queue_id = %t.id, sender = %envelope.sender,
        recipients = envelope.recipients.len(), held = t.held,
        "queued: handed off by a draining peer"
    );
    Ok(id)
}
