//! An LMTP client (RFC 2033) on tokio: lettre does not speak LMTP. The
//! point of LMTP is the end of DATA: the server answers once per accepted
//! recipient, so one mailbox over quota does not fail the others.

use std::io;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::{Duration, timeout};

use super::wire::{Reply, StepError, check_address, encode_data, fill_missing, finish, read_reply};
use super::{Outcome, Timeouts};

/// One open LMTP connection, reusable for several messages.
pub struct LmtpClient<S = TcpStream> {
    stream: BufReader<S>,
    /// `host:port`, for reasons and logs.
    peer: String,
    timeouts: Timeouts,
    /// The LHLO reply: the extensions the server has.
    lhlo: Reply,
    /// Why the connection can no longer be used, once it cannot.
    broken: Option<String>,
}

impl LmtpClient<TcpStream> {
    /// Connect to `host:port` (a name is resolved by the system resolver,
    /// as a Kubernetes Service name must be) and say LHLO `hostname`.
    pub(crate) async fn connect(
        host: &str,
        port: u16,
        hostname: &str,
        timeouts: Timeouts,
    ) -> Result<Self, Outcome> {
        let peer = format!("{host}:{port}");
        let stream = match timeout(timeouts.connect, TcpStream::connect((host, port))).await {
            Ok(Ok(stream)) => {
                // Small writes go out at once (see `smtp::connect_tcp`).
                let _ = stream.set_nodelay(true);
                stream
            }
            Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
                return Err(Outcome::temp(format!("connection refused by {peer}")));
            }
            Ok(Err(e)) => return Err(Outcome::temp(format!("cannot connect to {peer}: {e}"))),
            Err(_) => {
                return Err(Outcome::temp(format!(
                    "connection to {peer} timed out after {}s",
                    timeouts.connect.as_secs_f32()
                )));
            }
        };
        Self::start(stream, peer, hostname, timeouts).await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> LmtpClient<S> {
    /// Greeting and LHLO over an open stream (tests use in-memory ones).
    pub(crate) async fn start(
        stream: S,
        peer: String,
        hostname: &str,
        timeouts: Timeouts,
    ) -> Result<Self, Outcome> {
        let mut client = LmtpClient {
            stream: BufReader::new(stream),
            peer,
            timeouts,
            lhlo: Reply {
                code: 0,
                lines: Vec::new(),
            },
            broken: None,
        };
        let greeting = client
            .reply("greeting", timeouts.greeting)
            .await
            .map_err(StepError::into_outcome)?;
        if greeting.code != 220 {
            return Err(unexpected(greeting));
        }
        // RFC 2033 §4.1: LHLO, never HELO or EHLO.
        let limit = timeouts.command;
        client.lhlo = client
            .command("LHLO", format!("LHLO {hostname}\r\n"), limit)
            .await
            .map_err(StepError::into_outcome)?;
        tracing::info!(peer = %client.peer, "LMTP connection established");
        Ok(client)
    }

    /// Why this connection cannot carry another message, if it cannot.
    pub(crate) fn broken(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    /// Deliver one message: MAIL FROM (`sender` empty for the null
    /// sender), RCPT per recipient, DATA if any was accepted, then one
    /// reply per accepted recipient. One outcome per recipient, in order.
    pub(crate) async fn send<R: AsRef<str>>(
        &mut self,
        sender: &str,
        recipients: &[R],
        body: &[u8],
    ) -> Vec<Outcome> {
        let rcpts: Vec<&str> = recipients.iter().map(AsRef::as_ref).collect();
        let mut outcomes: Vec<Option<Outcome>> = rcpts
            .iter()
            .map(|r| check_address(r).err().map(|e| Outcome::perm(e.to_string())))
            .collect();
        if let Some(why) = &self.broken {
            fill_missing(&mut outcomes, &Outcome::temp(why.clone()));
        } else if let Err(e) = check_address(sender) {
            fill_missing(&mut outcomes, &Outcome::perm(e.to_string()));
        } else {
            self.transaction(sender, &rcpts, body, &mut outcomes).await;
        }
        let outcomes = finish(outcomes);
        for (rcpt, outcome) in rcpts.iter().zip(&outcomes) {
            tracing::info!(peer = %self.peer, recipient = rcpt, outcome = outcome.kind(),
                reply = outcome.text(), "LMTP delivery result");
        }
        outcomes
    }

    async fn transaction(
        &mut self,
        sender: &str,
        rcpts: &[&str],
        body: &[u8],
        outcomes: &mut [Option<Outcome>],
    ) {
        let limit = self.timeouts.command;
        let mut params = String::new();
        if !body.is_ascii() && self.lhlo.has_extension("8BITMIME") {
            params.push_str(" BODY=8BITMIME");
        }
        let utf8 = !sender.is_ascii() || rcpts.iter().any(|r| !r.is_ascii());
        if utf8 && self.lhlo.has_extension("SMTPUTF8") {
            params.push_str(" SMTPUTF8");
        }
        let mail = format!("MAIL FROM:<{sender}>{params}\r\n");
        if let Err(e) = self.command("MAIL FROM", mail, limit).await {
            return fill_missing(outcomes, &e.into_outcome());
        }
        let mut accepted = Vec::new();
        for (i, rcpt) in rcpts.iter().enumerate() {
            if outcomes[i].is_some() {
                continue;
            }
            match self
                .command("RCPT TO", format!("RCPT TO:<{rcpt}>\r\n"), limit)
                .await
            {
                Ok(_) => accepted.push(i),
                Err(e @ StepError::Reply { .. }) => outcomes[i] = Some(e.into_outcome()),
                Err(e) => return fill_missing(outcomes, &e.into_outcome()),
            }
        }
        if accepted.is_empty() {
            // RFC 5321 §4.1.1.5: abandon the transaction, keep the connection.
            let _ = self.command("RSET", "RSET\r\n".into(), limit).await;
            return;
        }
        if let Err(e) = self.data(body).await {
            if matches!(e, StepError::Reply { .. }) {
                let _ = self.command("RSET", "RSET\r\n".into(), limit).await;
            }
            let outcome = e.into_outcome();
            for &i in &accepted {
                outcomes[i] = Some(outcome.clone());
            }
            return;
        }
        // RFC 2033 §4.2: one reply per accepted recipient, in RCPT order.
        // Once the connection is lost, the rest share that outcome (their
        // mail may or may not have been delivered; RFC 2033 §5 accepts the
        // duplicate a retry may make).
        for &i in &accepted {
            match self.reply("end of data", self.timeouts.data_end).await {
                Ok(reply) => outcomes[i] = Some(Outcome::from_reply(reply.code, reply.text())),
                Err(e) => return fill_missing(outcomes, &e.into_outcome()),
            }
        }
    }

    /// DATA, its 354, and the dot-stuffed body with the final dot.
    async fn data(&mut self, body: &[u8]) -> Result<(), StepError> {
        let go_ahead = self
            .command("DATA", "DATA\r\n".into(), self.timeouts.data_start)
            .await?;
        if go_ahead.code != 354 {
            // A 2xx here is not a delivery: the server and we disagree
            // about where we are, so this connection is done.
            let why = format!(
                "unexpected reply to DATA from {}: {}",
                self.peer,
                go_ahead.text()
            );
            self.broken = Some(why.clone());
            return Err(StepError::Lost(why));
        }
        let data = encode_data(body);
        let write = async {
            self.stream.write_all(&data).await?;
            self.stream.flush().await
        };
        let written = timeout(self.timeouts.data_end, write).await;
        self.lost_unless(written, "sending the message")
    }

    /// Send one command line and read its reply; a 4xx/5xx is an error.
    async fn command(
        &mut self,
        what: &str,
        line: String,
        limit: Duration,
    ) -> Result<Reply, StepError> {
        let write = async {
            self.stream.write_all(line.as_bytes()).await?;
            self.stream.flush().await
        };
        let written = timeout(limit, write).await;
        self.lost_unless(written, what)?;
        let reply = self.reply(what, limit).await?;
        if reply.code >= 400 {
            return Err(StepError::Reply {
                code: reply.code,
                text: reply.text(),
            });
        }
        Ok(reply)
    }

    /// Read one reply within `limit`.
    async fn reply(&mut self, what: &str, limit: Duration) -> Result<Reply, StepError> {
        let result = match timeout(limit, read_reply(&mut self.stream)).await {
            Ok(Ok(reply)) => return Ok(reply),
            Ok(Err(e)) => format!("{what} with {} failed: {e}", self.peer),
            Err(_) => format!(
                "{} did not answer {what} within {}s",
                self.peer,
                limit.as_secs_f32()
            ),
        };
        self.broken = Some(result.clone());
        Err(StepError::Lost(result))
    }

    fn lost_unless(
        &mut self,
        written: Result<io::Result<()>, tokio::time::error::Elapsed>,
        what: &str,
    ) -> Result<(), StepError> {
        let why = match written {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => format!("{what} to {} failed: {e}", self.peer),
            Err(_) => format!("{what} to {} timed out", self.peer),
        };
        self.broken = Some(why.clone());
        Err(StepError::Lost(why))
    }

    /// QUIT and close; errors only get logged.
    pub(crate) async fn quit(mut self) {
        if self.broken.is_some() {
            return;
        }
        let limit = self.timeouts.command;
        if let Err(e) = self.command("QUIT", "QUIT\r\n".into(), limit).await {
            tracing::debug!(peer = %self.peer, error = e.text(), "LMTP QUIT failed");
        }
    }
}

/// A reply that is not the one the protocol calls for at that point.
fn unexpected(reply: Reply) -> Outcome {
    match reply.code / 100 {
        4 | 5 => Outcome::from_reply(reply.code, reply.text()),
        _ => Outcome::temp(format!("unexpected reply: {}", reply.text())),
    }
}
