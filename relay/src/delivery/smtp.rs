//! Outbound SMTP with lettre, driven command by command: lettre's
//! high-level transport gives up on a whole transaction at the first
//! rejected RCPT, but a relay needs one outcome per recipient. lettre's
//! `AsyncSmtpConnection` does the wire (greeting, EHLO, STARTTLS, AUTH,
//! reply parsing, dot-stuffing); this module decides what to send and what
//! each reply means.

use lettre::transport::smtp::authentication::{Credentials as LettreCredentials, Mechanism};
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::extension::{ClientId, Extension};
use lettre::transport::smtp::response::Response;
use mailrelay_crds::maildomain::TlsMode;
use tokio::net::TcpStream;

use super::outbound::{CertCheck, tls_parameters};
use super::smtp_steps::{Stage, peer, response_text, run};
use super::wire::{StepError, check_address, fill_missing, finish, normalize_crlf};
use super::{OutboundConfig, Outcome, Security, Target, Timeouts};

/// One open SMTP connection, reusable for several messages.
pub struct SmtpClient {
    pub(super) conn: AsyncSmtpConnection,
    pub(super) target: Target,
    pub(super) timeouts: Timeouts,
    security: Security,
    /// Why the connection can no longer be used, once it cannot.
    pub(super) broken: Option<String>,
    /// The server offers PIPELINING (RFC 2920): MAIL, RCPT and DATA go
    /// out together (see `smtp_pipeline`).
    pub(super) pipelining: bool,
}

/// How to open a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plan {
    Clear,
    OpportunisticStartTls,
    RequiredStartTls,
    Implicit,
}

/// Why [`SmtpClient::connect_checked`] failed: the outcome every
/// recipient of the attempt gets, and whether TLS was the reason.
#[derive(Clone, Debug)]
pub(crate) struct ConnectFailure {
    pub outcome: Outcome,
    pub tls: bool,
}

/// Why opening failed: a STARTTLS failure is apart because opportunistic
/// TLS can try again in clear.
enum OpenError {
    Failed(Outcome),
    Tls(String),
}

impl SmtpClient {
    /// Connect to `target`, EHLO, STARTTLS and AUTH as `config` says.
    /// Failure is the outcome every recipient of this attempt gets; a
    /// router would usually try the next target.
    pub async fn connect(target: &Target, config: &OutboundConfig) -> Result<SmtpClient, Outcome> {
        Self::connect_checked(target, config)
            .await
            .map_err(|f| f.outcome)
    }

    /// [`connect`](Self::connect), saying whether a failure was TLS's:
    /// STARTTLS missing where required, refused, or a failed handshake or
    /// certificate check. Outbound TLS policy counts those.
    pub(crate) async fn connect_checked(
        target: &Target,
        config: &OutboundConfig,
    ) -> Result<SmtpClient, ConnectFailure> {
        let opened = match config.tls {
            TlsMode::None => open(target, config, Plan::Clear).await,
            TlsMode::Required => open(target, config, Plan::RequiredStartTls).await,
            TlsMode::Implicit => open(target, config, Plan::Implicit).await,
            TlsMode::Opportunistic => {
                match open(target, config, Plan::OpportunisticStartTls).await {
                    // The TLS state of that connection is unknown: start
                    // again in clear, and say so.
                    Err(OpenError::Tls(error)) => {
                        tracing::warn!(host = %target.host, addr = %target.addr, %error,
                            "opportunistic STARTTLS failed; delivering in clear");
                        open(target, config, Plan::Clear).await.map(|mut client| {
                            client.security = Security::ClearAfterTlsFailure { error };
                            client
                        })
                    }
                    other => other,
                }
            }
        };
        let mut client = opened.map_err(|e| match e {
            OpenError::Failed(outcome) => ConnectFailure {
                outcome,
                tls: false,
            },
            OpenError::Tls(reason) => ConnectFailure {
                outcome: Outcome::temp(reason),
                tls: true,
            },
        })?;
        let failed = |outcome| ConnectFailure {
            outcome,
            tls: false,
        };
        // Before AUTH: an EHLO after it may cost the authentication.
        client.pipelining = client
            .probe_pipelining(&config.hostname)
            .await
            .map_err(failed)?;
        if let Some(credentials) = &config.auth {
            client.authenticate(credentials).await.map_err(failed)?;
        }
        tracing::info!(host = %target.host, addr = %target.addr, security = ?client.security,
            "SMTP connection established");
        Ok(client)
    }

    /// AUTH PLAIN or LOGIN (RFC 4954), never over a clear connection
    /// (§4: credentials in clear are exposed). A refusal is temporary, as
    /// Postfix's `smtp_sasl_auth_soft_bounce` has it: a wrong or rotated
    /// password must not bounce every message of the queue.
    async fn authenticate(&mut self, credentials: &super::Credentials) -> Result<(), Outcome> {
        if matches!(
            self.security,
            Security::Clear | Security::ClearAfterTlsFailure { .. }
        ) {
            abort(&mut self.conn, self.timeouts.command).await;
            return Err(Outcome::temp(format!(
                "not sending credentials to {} over a connection without TLS",
                peer(&self.target)
            )));
        }
        let credentials =
            LettreCredentials::new(credentials.username.clone(), credentials.password.clone());
        let mechanisms = [Mechanism::Plain, Mechanism::Login];
        // Up to three round trips (LOGIN), each a command.
        let limit = self.timeouts.command.saturating_mul(3);
        let auth = self.conn.auth(&mechanisms, &credentials);
        match run(&self.target, Stage::Auth, limit, auth).await {
            Ok(_) => Ok(()),
            Err(e) => {
                abort(&mut self.conn, self.timeouts.command).await;
                Err(Outcome::temp(e.text()))
            }
        }
    }

    pub(crate) fn security(&self) -> &Security {
        &self.security
    }

    pub(crate) fn target(&self) -> &Target {
        &self.target
    }

    /// The server's certificate chain (DER, leaf first) when the
    /// connection is encrypted.
    pub(crate) fn peer_certificates(&self) -> Option<Vec<Vec<u8>>> {
        if !self.conn.is_encrypted() {
            return None;
        }
        self.conn.certificate_chain().ok()
    }

    /// Why this connection cannot carry another message, if it cannot.
    pub(crate) fn broken(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    /// Send one message: MAIL FROM (`sender` empty for the null sender of
    /// a bounce), one RCPT per recipient, DATA only if a recipient was
    /// accepted. One outcome per recipient, in order.
    pub async fn send<R: AsRef<str>>(
        &mut self,
        sender: &str,
        recipients: &[R],
        body: &[u8],
    ) -> Vec<Outcome> {
        let rcpts: Vec<&str> = recipients.iter().map(AsRef::as_ref).collect();
        if let Some(why) = &self.broken {
            return vec![Outcome::temp(why.clone()); rcpts.len()];
        }
        if let Err(e) = check_address(sender) {
            return vec![Outcome::perm(e.to_string()); rcpts.len()];
        }
        let utf8 = self
            .conn
            .server_info()
            .supports_feature(Extension::SmtpUtfEight);
        if !sender.is_ascii() && !utf8 {
            // RFC 6531 §3.2: without SMTPUTF8 a UTF-8 sender cannot go.
            let reason = format!(
                "{} does not support SMTPUTF8, needed for <{sender}>",
                peer(&self.target)
            );
            return vec![Outcome::perm(reason); rcpts.len()];
        }
        let mut outcomes: Vec<Option<Outcome>> = rcpts
            .iter()
            .map(|r| match check_address(r) {
                Err(e) => Some(Outcome::perm(e.to_string())),
                Ok(()) if !r.is_ascii() && !utf8 => Some(Outcome::perm(format!(
                    "{} does not support SMTPUTF8, needed for <{r}>",
                    peer(&self.target)
                ))),
                Ok(()) => None,
            })
            .collect();
        self.transaction(sender, &rcpts, body, &mut outcomes).await;
        let outcomes = finish(outcomes);
        for (rcpt, outcome) in rcpts.iter().zip(&outcomes) {
            // The queue logs the delivery event itself; this is the wire detail.
            tracing::debug!(host = %self.target.host, addr = %self.target.addr, recipient = rcpt,
                outcome = outcome.kind(), reply = outcome.text(), "SMTP delivery result");
        }
        outcomes
    }

    /// The commands of one transaction; fills every `None` in `outcomes`.
    async fn transaction(
        &mut self,
        sender: &str,
        rcpts: &[&str],
        body: &[u8],
        outcomes: &mut [Option<Outcome>],
    ) {
        let info = self.conn.server_info();
        let mut params = String::new();
        // RFC 6152: say so when the body is 8-bit and the server knows how.
        // A server without 8BITMIME gets the body as it is (we do not
        // downgrade to quoted-printable; nearly every server has it).
        if !body.is_ascii() && info.supports_feature(Extension::EightBitMime) {
            params.push_str(" BODY=8BITMIME");
        }
        // RFC 6531 §3.4. Without the extension, UTF-8 addresses were
        // refused before this point.
        let utf8 = !sender.is_ascii() || rcpts.iter().any(|r| !r.is_ascii());
        if utf8 && info.supports_feature(Extension::SmtpUtfEight) {
            params.push_str(" SMTPUTF8");
        }
        let mail = format!("MAIL FROM:<{sender}>{params}\r\n");
        if self.pipelining {
            return self.pipelined(mail, rcpts, body, outcomes).await;
        }
        if let Err(e) = self.step(Stage::Mail, mail).await {
            // Transaction-level: every recipient of the attempt gets it.
            return fill_missing(outcomes, &e.into_outcome());
        }
        let mut accepted = Vec::new();
        for (i, rcpt) in rcpts.iter().enumerate() {
            if outcomes[i].is_some() {
                continue;
            }
            match self
                .step(Stage::Rcpt, format!("RCPT TO:<{rcpt}>\r\n"))
                .await
            {
                Ok(_) => accepted.push(i),
                Err(e @ StepError::Reply { .. }) => outcomes[i] = Some(e.into_outcome()),
                Err(e) => return fill_missing(outcomes, &e.into_outcome()),
            }
        }
        if accepted.is_empty() {
            // RFC 5321 §4.1.1.5: abandon the transaction, keep the connection.
            let _ = self.step(Stage::Rset, "RSET\r\n".to_string()).await;
            return;
        }
        let result = match self.step(Stage::Data, "DATA\r\n".to_string()).await {
            Ok(_) => self.message(body).await,
            Err(e) => {
                if matches!(e, StepError::Reply { .. }) {
                    let _ = self.step(Stage::Rset, "RSET\r\n".to_string()).await;
                }
                Err(e)
            }
        };
        let outcome = match result {
            Ok(reply) => Outcome::Delivered { reply },
            Err(e) => e.into_outcome(),
        };
        for i in accepted {
            outcomes[i] = Some(outcome.clone());
        }
    }

    /// One command and its reply, within the step's timeout; a lost
    /// connection marks the client broken.
    pub(super) async fn step(
        &mut self,
        stage: Stage,
        command: String,
    ) -> Result<Response, StepError> {
        let limit = match stage {
            Stage::Data => self.timeouts.data_start,
            _ => self.timeouts.command,
        };
        let result = run(&self.target, stage, limit, self.conn.command(command)).await;
        if let Err(StepError::Lost(why)) = &result {
            self.broken = Some(why.clone());
        }
        result
    }

    /// The body after a 354. lettre dot-stuffs (RFC 5321 §4.5.2) and
    /// appends `CRLF . CRLF`; it recognises line starts only after CRLF,
    /// so line endings are made CRLF first, and the body's own final CRLF
    /// is left to lettre's terminator. (An empty body therefore arrives as
    /// one empty line: lettre cannot send zero bytes of data.)
    pub(super) async fn message(&mut self, body: &[u8]) -> Result<String, StepError> {
        let mut data = normalize_crlf(body);
        if data.ends_with(b"\r\n") {
            data.truncate(data.len() - 2);
        }
        let limit = self.timeouts.data_end;
        let result = run(
            &self.target,
            Stage::EndOfData,
            limit,
            self.conn.message(&data),
        )
        .await;
        if let Err(StepError::Lost(why)) = &result {
            self.broken = Some(why.clone());
        }
        result.map(|r| response_text(&r))
    }

    /// QUIT and close (RFC 5321 §4.1.1.10). Errors only get logged: the
    /// outcomes are already known.
    pub(crate) async fn quit(mut self) {
        if self.broken.is_some() {
            return;
        }
        let limit = self.timeouts.command;
        if let Err(e) = run(&self.target, Stage::Quit, limit, self.conn.quit()).await {
            tracing::debug!(host = %self.target.host, error = e.text(), "QUIT failed");
        }
    }
}

/// QUIT and close, for a connection we give up on. lettre's `abort`
/// waits for the QUIT reply without a limit, so it gets one.
async fn abort(conn: &mut AsyncSmtpConnection, limit: std::time::Duration) {
    let _ = tokio::time::timeout(limit, conn.abort()).await;
}

/// A TCP connection to `target` with Nagle's algorithm off. lettre writes
/// a message body and its final `.` line in two writes and then waits for
/// the reply: with Nagle on, the `.` waits for the ACK of the body, which a
/// server delays (40 ms on Linux) because it is waiting for that very line.
/// Measured here: 50 ms per message and connection, 400 messages/s at
/// most over 20 connections, whatever the CPU.
async fn connect_tcp(target: &Target, limit: std::time::Duration) -> Result<TcpStream, Outcome> {
    let who = peer(target);
    match tokio::time::timeout(limit, TcpStream::connect(target.addr)).await {
        Ok(Ok(stream)) => {
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(peer = %who, error = %e, "cannot set TCP_NODELAY");
            }
            Ok(stream)
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            Err(Outcome::temp(format!("connection refused by {who}")))
        }
        Ok(Err(e)) => Err(Outcome::temp(format!("cannot connect to {who}: {e}"))),
        Err(_) => Err(Outcome::temp(format!("connection to {who} timed out"))),
    }
}

/// Connect, greeting, EHLO, and STARTTLS per `plan`.
async fn open(
    target: &Target,
    config: &OutboundConfig,
    plan: Plan,
) -> Result<SmtpClient, OpenError> {
    let t = &config.timeouts;
    let id = ClientId::Domain(config.hostname.clone());
    let setup = |check| {
        tls_parameters(&target.host, check, &config.extra_roots)
            .map_err(|e| OpenError::Failed(Outcome::temp(e)))
    };
    let implicit = match plan {
        Plan::Implicit => Some(setup(CertCheck::Verify)?),
        _ => None,
    };
    let limit = t.connect + t.greeting + t.command;
    let mut conn = match implicit {
        // lettre opens the TLS session before the greeting itself.
        Some(tls) => {
            let connect = AsyncSmtpConnection::connect_tokio1(
                target.addr,
                Some(t.connect),
                &id,
                Some(tls),
                None,
            );
            run(target, Stage::Connect, limit, connect).await
        }
        None => {
            let stream = connect_tcp(target, t.connect)
                .await
                .map_err(OpenError::Failed)?;
            let greet = AsyncSmtpConnection::connect_with_transport(Box::new(stream), &id);
            run(target, Stage::Connect, t.greeting + t.command, greet).await
        }
    }
    .map_err(|e| OpenError::Failed(e.into_outcome()))?;
    let mut security = if plan == Plan::Implicit {
        Security::Verified
    } else {
        Security::Clear
    };
    let check = match plan {
        Plan::OpportunisticStartTls => Some(CertCheck::Accept),
        Plan::RequiredStartTls if config.check_after_handshake => Some(CertCheck::Accept),
        Plan::RequiredStartTls => Some(CertCheck::Verify),
        Plan::Clear | Plan::Implicit => None,
    };
    if let Some(check) = check {
        if conn.can_starttls() {
            let params = setup(check)?;
            // The STARTTLS reply, the handshake and the second EHLO.
            let limit = t.connect + t.command.saturating_mul(2);
            run(target, Stage::StartTls, limit, conn.starttls(params, &id))
                .await
                .map_err(|e| match e {
                    StepError::Reply { text, .. } => {
                        OpenError::Tls(format!("STARTTLS with {} failed: {text}", peer(target)))
                    }
                    StepError::Lost(reason) => OpenError::Tls(reason),
                })?;
            security = match check {
                CertCheck::Verify => Security::Verified,
                CertCheck::Accept => Security::Encrypted,
            };
        } else if plan == Plan::RequiredStartTls {
            // RFC 3207 §4: a client that requires TLS must not go on.
            abort(&mut conn, t.command).await;
            return Err(OpenError::Tls(format!(
                "TLS is required but {} does not offer STARTTLS",
                peer(target)
            )));
        }
    }
    Ok(SmtpClient {
        conn,
        target: target.clone(),
        timeouts: *t,
        security,
        broken: None,
        pipelining: false,
    })
}
