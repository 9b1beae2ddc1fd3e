//! The I/O loop around one SMTP session: reads lines and content, writes
//! replies (batched under PIPELINING), performs the session's effects
//! (STARTTLS, AUTH checks, spool commits) and enforces the timeouts.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, timeout, timeout_at};

use super::stream::Stream;
use crate::ops::metrics::{ListenerLabel, Metrics};
use crate::server::tls::Tls;
use crate::smtp::received::{self, Trace};
use crate::smtp::reply::Reply;
use crate::smtp::session::{Accepted, Effect, Session};
use crate::spool::{Envelope, Spool};

/// Longest command line with its CRLF (RFC 5321 §4.5.3.1.4).
const MAX_COMMAND: usize = 512;
/// Longest AUTH response line (RFC 4954 §4: at least 12288).
const MAX_AUTH_LINE: usize = 12288;
/// Room made for each read of message content.
const READ_CHUNK: usize = 16 * 1024;
/// Room made for each read of commands: a few pipelined command lines. An
/// idle session holds only this much input buffer (W5).
const COMMAND_ROOM: usize = 2 * MAX_COMMAND;

/// What a connection needs besides its session.
#[derive(Clone)]
pub(crate) struct ConnCtx {
    pub spool: Spool,
    pub tls: Option<Tls>,
    pub metrics: Arc<Metrics>,
    /// DKIM keys of the hosted domains, for signing submitted mail.
    pub dkim: crate::dkim::DkimKeys,
    /// SPF/DKIM/DMARC checks of mail on the smtp listener.
    pub inbound_auth: Arc<crate::smtp::inbound_auth::Checker>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS handshake: {0}")]
    Tls(std::io::Error),
    #[error("client timed out")]
    Timeout,
    #[error("session deadline reached")]
    Deadline,
    #[error("client closed the connection")]
    Closed,
}

struct Conn<S> {
    stream: Stream<S>,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    deadline: Instant,
    command_timeout: Duration,
    data_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Conn<S> {
    fn queue(&mut self, reply: &Reply) {
        self.metrics.reply(reply.code, reply.enhanced);
        reply.write_to(&mut self.outbuf);
    }

    async fn flush(&mut self) -> Result<(), ConnError> {
        if self.outbuf.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.outbuf);
        timeout(self.command_timeout, self.stream.write_all(&out))
            .await
            .map_err(|_| ConnError::Timeout)??;
        timeout(self.command_timeout, self.stream.flush())
            .await
            .map_err(|_| ConnError::Timeout)??;
        Ok(())
    }

    /// Read more input (up to at least `room` bytes), bounded by `wait`
    /// and by the session deadline.
    ///
    /// Reads straight into the spare capacity of `inbuf`: no zeroed chunk
    /// per read and no copy out of it (callgrind: a zeroed 16 KiB array
    /// per read was a quarter of the relay's instructions per message), and
    /// the session's future, which `tokio::spawn` moves, holds no buffer.
    async fn fill(&mut self, wait: Duration, room: usize) -> Result<(), ConnError> {
        self.inbuf.reserve(room);
        let read = timeout_at(
            self.deadline,
            timeout(wait, self.stream.read_buf(&mut self.inbuf)),
        );
        let n = read
            .await
            .map_err(|_| ConnError::Deadline)?
            .map_err(|_| ConnError::Timeout)??;
        if n == 0 {
            return Err(ConnError::Closed);
        }
        Ok(())
    }

    /// The next line, or `Err(len)` for a line longer than `max` (discarded
    /// up to and including its LF so the rest is never read as a command).
    async fn line(&mut self, max: usize) -> Result<Result<Vec<u8>, usize>, ConnError> {
        let mut discarded = 0usize;
        loop {
            if let Some(pos) = memchr::memchr(b'\n', &self.inbuf) {
                let line: Vec<u8> = self.inbuf.drain(..=pos).collect();
                if discarded > 0 || line.len() > max {
                    return Ok(Err(discarded + line.len()));
                }
                return Ok(Ok(line));
            }
            if self.inbuf.len() > max {
                discarded += self.inbuf.len();
                self.inbuf.clear();
            }
            // Replies to pipelined commands go out before we wait for more.
            self.flush().await?;
            self.fill(self.command_timeout, COMMAND_ROOM).await?;
        }
    }
}

/// Serve one session to its end.
/// `initial` holds bytes already read from the client (after a PROXY header).
pub(crate) async fn serve<S>(
    stream: S,
    mut session: Session,
    ctx: &ConnCtx,
    implicit_tls: bool,
    initial: Vec<u8>,
) -> Result<(), ConnError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let limits = session_limits(&session);
    let mut conn = Conn {
        stream: Stream::Plain(stream),
        inbuf: initial,
        outbuf: Vec::new(),
        deadline: Instant::now() + limits.2,
        command_timeout: limits.0,
        data_timeout: limits.1,
        metrics: Arc::clone(&ctx.metrics),
    };
    if implicit_tls {
        start_tls(&mut conn, &mut session, ctx).await?;
    }
    conn.queue(&session.greeting());
    let result = run(&mut conn, &mut session, ctx).await;
    let closing = match &result {
        Err(ConnError::Timeout) => Some(Reply::new(421, "4.4.2", "Timeout exceeded, closing")),
        Err(ConnError::Deadline) => Some(Reply::new(421, "4.4.2", "Session too long, closing")),
        _ => None,
    };
    if let Some(reply) = closing {
        conn.outbuf.clear();
        conn.queue(&reply);
        // Best effort: the client may be gone.
        let _ = timeout(Duration::from_secs(5), conn.flush()).await;
    }
    let _ = timeout(Duration::from_secs(5), conn.stream.shutdown()).await;
    match result {
        Err(ConnError::Closed) => Ok(()),
        other => other,
    }
}

fn session_limits(session: &Session) -> (Duration, Duration, Duration) {
    let l = session.limits_config();
    (
        Duration::from_secs(l.command_timeout_secs),
        Duration::from_secs(l.data_timeout_secs),
        Duration::from_secs(l.session_timeout_secs),
    )
}

async fn run<S>(conn: &mut Conn<S>, session: &mut Session, ctx: &ConnCtx) -> Result<(), ConnError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    loop {
        let max = if session.in_auth() {
            MAX_AUTH_LINE
        } else {
            MAX_COMMAND
        };
        let mut command = Vec::new();
        let outcome = match conn.line(max).await? {
            Ok(line) => {
                if is_mail(&line) {
                    session.set_storage_full(!ctx.spool.has_room().await);
                }
                let outcome = session.line(&line);
                command = line;
                outcome
            }
            Err(_) => session.line_too_long(),
        };
        if let Some(reply) = &outcome.reply {
            if reply.code >= 400 {
                // Like Postfix's NOQUEUE lines: refusals before a message exists.
                tracing::info!(client = %session.conn.client_ip, listener = %session.conn.listener, reply = %reply, "refused");
                crate::events::hooks::refused_command(&ctx.spool, session, &command, reply);
            }
            conn.queue(reply);
        }
        match outcome.effect {
            Effect::None => {}
            Effect::Close => {
                conn.flush().await?;
                return Ok(());
            }
            Effect::StartTls => {
                conn.flush().await?;
                start_tls(conn, session, ctx).await?;
            }
            Effect::Verify(credentials) => {
                let hash = session.runtime().accounts.hash_of(&credentials.login);
                let ok = tokio::task::spawn_blocking(move || {
                    crate::policy::accounts::verify(hash.as_deref(), &credentials.password)
                })
                .await
                .unwrap_or(false);
                if !ok {
                    ctx.metrics.auth_failures.inc();
                }
                let reply = session.auth_result(ok);
                conn.queue(&reply);
            }
            Effect::ReceiveData(mut reader) => {
                // The 354 must reach the client before it sends the content.
                conn.flush().await?;
                loop {
                    if let Some(used) = reader.feed(&conn.inbuf) {
                        conn.inbuf.drain(..used);
                        break;
                    }
                    conn.inbuf.clear();
                    conn.fill(conn.data_timeout, READ_CHUNK).await?;
                }
                let pending = crate::events::hooks::Pending::of(session);
                let reply = match session.data_end(reader.finish()) {
                    Ok(accepted) => commit(session, ctx, accepted).await,
                    Err(reply) => reply,
                };
                if reply.code >= 400 {
                    crate::events::hooks::refused_message(&ctx.spool, session, pending, &reply);
                }
                conn.queue(&reply);
            }
            Effect::ReceiveBdat { size, last } => {
                let mut left = size;
                while left > 0 {
                    if conn.inbuf.is_empty() {
                        conn.fill(conn.data_timeout, READ_CHUNK).await?;
                    }
                    let take = left.min(conn.inbuf.len());
                    session.bdat_data(&conn.inbuf[..take]);
                    conn.inbuf.drain(..take);
                    left -= take;
                }
                let pending = crate::events::hooks::Pending::of(session);
                let reply = match session.bdat_done(last) {
                    Ok(None) => Reply::new(250, "2.0.0", format!("{size} octets received")),
                    Ok(Some(accepted)) => commit(session, ctx, accepted).await,
                    Err(reply) => reply,
                };
                if reply.code >= 400 {
                    crate::events::hooks::refused_message(&ctx.spool, session, pending, &reply);
                }
                conn.queue(&reply);
            }
        }
    }
}

/// A MAIL command (case-insensitive verb, RFC 5321 §2.4): the moment to
/// ask whether the spool has room.
fn is_mail(line: &[u8]) -> bool {
    line.get(..5)
        .is_some_and(|verb| verb.eq_ignore_ascii_case(b"MAIL "))
}

async fn start_tls<S>(
    conn: &mut Conn<S>,
    session: &mut Session,
    ctx: &ConnCtx,
) -> Result<(), ConnError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let Some(tls) = &ctx.tls else {
        return Err(ConnError::Tls(std::io::Error::other(
            "no certificate loaded",
        )));
    };
    // RFC 3207 §4.2 / CVE-2011-0411: anything the client pipelined after
    // STARTTLS arrived in plain text and must not be acted on.
    conn.inbuf.clear();
    let plain = std::mem::replace(&mut conn.stream, Stream::Closed);
    let Stream::Plain(inner) = plain else {
        return Err(ConnError::Tls(std::io::Error::other(
            "TLS is already active",
        )));
    };
    let handshake = timeout(conn.command_timeout, tls.acceptor().accept(inner)).await;
    let tls_stream = match handshake {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            ctx.metrics
                .tls_handshakes
                .get_or_create(&crate::ops::metrics::ResultLabel { result: "failed" })
                .inc();
            return Err(ConnError::Tls(e));
        }
        Err(_) => return Err(ConnError::Timeout),
    };
    ctx.metrics
        .tls_handshakes
        .get_or_create(&crate::ops::metrics::ResultLabel { result: "ok" })
        .inc();
    let (_, state) = tls_stream.get_ref();
    let info = match (state.protocol_version(), state.negotiated_cipher_suite()) {
        (Some(v), Some(c)) => Some(format!(
            "{} with cipher {:?}",
            v.as_str().unwrap_or("TLS"),
            c.suite()
        )),
        _ => None,
    };
    conn.stream = Stream::Tls(Box::new(tls_stream));
    session.tls_started();
    session.conn.tls_info = info;
    Ok(())
}

/// Put an accepted message in the spool; the reply says whether it is ours now.
async fn commit(session: &Session, ctx: &ConnCtx, accepted: Accepted) -> Reply {
    let started = std::time::Instant::now();
    let id = ctx.spool.new_id();
    let id_text = id.to_string();
    // Inbound checks (smtp listener) and DKIM signing (submission) apply
    // to different mail; both happen before the spool, so 250 means the
    // message is on disk as it will leave.
    let (auth_headers, stripped, arc, report) = match crate::smtp::inbound_auth::stamp(
        &ctx.inbound_auth,
        &ctx.metrics.inbound_auth,
        session,
        &accepted,
        &id_text,
        ctx.spool.reports(),
    )
    .await
    {
        Ok(stamped) => (
            stamped.headers,
            match stamped.content {
                std::borrow::Cow::Owned(content) => Some(content),
                std::borrow::Cow::Borrowed(_) => None,
            },
            stamped.arc,
            stamped.report,
        ),
        Err(reply) => return reply,
    };
    let tx = &accepted.transaction;
    let content = stripped.unwrap_or(accepted.content);
    let (content, arc_set) = match crate::dkim::arc_seal::seal_accepted(
        &ctx.dkim,
        session,
        &id_text,
        &tx.recipients,
        arc,
        content,
    )
    .await
    {
        Ok(sealed) => sealed,
        Err(reply) => return reply,
    };
    let (content, signature) =
        match crate::dkim::sign_accepted(&ctx.dkim, session, &id_text, content).await {
            Ok(signed) => signed,
            Err(reply) => return reply,
        };
    let header = received::header(&Trace {
        conn: &session.conn,
        helo: session.helo().unwrap_or_default(),
        esmtp: session.esmtp(),
        authenticated: session.authenticated().is_some(),
        smtputf8: tx.smtputf8,
        hostname: &session.runtime().config.hostname,
        queue_id: &id_text,
        recipients: &tx.recipients,
        now: jiff::Timestamp::now(),
    });
    let signature = signature.unwrap_or_default();
    let arc_set = arc_set.unwrap_or_default();
    let dkim_signed = !signature.is_empty();
    let mut body = Vec::with_capacity(
        header.len() + arc_set.len() + auth_headers.len() + signature.len() + content.len(),
    );
    body.extend_from_slice(header.as_bytes());
    // RFC 8617 §5.1: the ARC set goes on top, above the
    // Authentication-Results it copies.
    body.extend_from_slice(arc_set.as_bytes());
    body.extend_from_slice(auth_headers.as_bytes());
    body.extend_from_slice(signature.as_bytes());
    body.extend_from_slice(&content);
    let envelope = Envelope {
        sender: tx
            .sender
            .as_ref()
            .map(|a| a.as_string())
            .unwrap_or_default(),
        recipients: tx.recipients.iter().map(|a| a.as_string()).collect(),
        received_at: jiff::Timestamp::now().as_second(),
        client_ip: session.conn.client_ip,
        helo: session.helo().unwrap_or_default().to_string(),
        auth: session.authenticated().map(str::to_string),
        tls: session.conn.tls,
        size: body.len() as u64,
        smtputf8: tx.smtputf8,
        body_8bit: tx.body_8bit,
        handed_off: None,
    };
    // The Receptions go to the event log before delivery can start (see
    // `Spool::commit_then`).
    let receptions = || {
        crate::events::hooks::accepted(&ctx.spool, session, &id, &envelope, &body, dkim_signed);
    };
    match ctx
        .spool
        .commit_then(&id, &envelope, &body, receptions)
        .await
    {
        Ok(()) => {
            ctx.metrics
                .messages_accepted
                .get_or_create(&ListenerLabel {
                    listener: session.conn.listener.as_str(),
                })
                .inc();
            ctx.metrics
                .acceptance_latency
                .observe(started.elapsed().as_secs_f64());
            ctx.metrics.message_bytes.inc_by(body.len() as u64);
            // The Receptions' event lines (one per recipient, always
            // written) say all of this; formatting it again cost about
            // 11,000 instructions a message.
            tracing::debug!(
                queue_id = %id_text,
                client = %envelope.client_ip,
                sender = %envelope.sender,
                recipients = envelope.recipients.len(),
                size = envelope.size,
                auth = envelope.auth.as_deref().unwrap_or(""),
                "accepted"
            );
            // Counted only now: a refusal before this would be retried.
            if let Some(r) = report {
                r.count(session.runtime());
            }
            Reply::new(250, "2.0.0", format!("Ok: queued as {id_text}"))
        }
        Err(e) => {
            tracing::error!(queue_id = %id_text, error = %e, "spool commit failed; message refused");
            // RFC 3463 4.3.1: mail system full (or failing); the client retries.
            Reply::storage_full()
        }
    }
}
