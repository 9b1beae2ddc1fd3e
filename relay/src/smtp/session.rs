//! The SMTP session as a state machine (RFC 5321, with RFC 1870 SIZE,
//! 6152 8BITMIME, 6531 SMTPUTF8, 2920 PIPELINING, 3030 CHUNKING, 3207
//! STARTTLS, 4954 AUTH). No I/O: each input gives an [`Outcome`] — the
//! reply to send and what the connection loop must do next — so every
//! rule here is tested with plain values.

use std::sync::Arc;

use mailrelay_crds::relay::ListenerName;
use smtp_proto::Request;

use super::address::{self, AddressError};
use super::auth::Credentials;
use super::data::{BdatCollector, ContentError, DataReader};
use super::reply::Reply;
use super::{ConnInfo, Transaction};
use crate::config::runtime::{Recipient, Runtime};
use crate::policy::NameRole;
use crate::policy::limits::{LimitSettings, Limiter};

/// What the connection loop does after sending `reply`.
#[derive(Debug)]
pub enum Effect {
    None,
    /// Upgrade to TLS; bytes already received are discarded (CVE-2011-0411).
    StartTls,
    /// Read message content with this reader, then call [`Session::data_end`].
    ReceiveData(Box<DataReader>),
    /// Read exactly `size` bytes into [`Session::bdat_data`], then call
    /// [`Session::bdat_done`].
    ReceiveBdat {
        size: usize,
        last: bool,
    },
    /// Check a password off the async runtime, then call [`Session::auth_result`].
    Verify(Credentials),
    Close,
}

#[derive(Debug)]
pub struct Outcome {
    pub reply: Option<Reply>,
    pub effect: Effect,
}

impl Outcome {
    fn reply(reply: Reply) -> Self {
        let effect = if reply.close {
            Effect::Close
        } else {
            Effect::None
        };
        Self {
            reply: Some(reply),
            effect,
        }
    }
}

impl From<Reply> for Outcome {
    fn from(reply: Reply) -> Self {
        Outcome::reply(reply)
    }
}

/// Waiting for what kind of line.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Expect {
    Command,
    AuthPlain,
    LoginUser,
    LoginPassword(String),
    Verifying(String),
    Content,
}

/// A message ready for the spool.
#[derive(Debug)]
pub struct Accepted {
    pub transaction: Transaction,
    pub content: Vec<u8>,
}

/// Too many unknown or out-of-sequence commands: a confused or hostile client.
const MAX_ERRORS: u32 = 20;

pub struct Session {
    rt: Arc<Runtime>,
    limiter: Arc<Limiter>,
    pub conn: ConnInfo,
    helo: Option<String>,
    esmtp: bool,
    /// The authenticated login (normalised).
    auth: Option<String>,
    tx: Option<Transaction>,
    bdat: Option<BdatCollector>,
    expect: Expect,
    errors: u32,
    /// TLS can be offered (a certificate is loaded).
    tls_available: bool,
    /// The spool has no room for new mail (the loop says so before MAIL).
    storage_full: bool,
}

impl Session {
    pub fn new(
        rt: Arc<Runtime>,
        limiter: Arc<Limiter>,
        conn: ConnInfo,
        tls_available: bool,
    ) -> Self {
        Self {
            rt,
            limiter,
            conn,
            helo: None,
            esmtp: false,
            auth: None,
            tx: None,
            bdat: None,
            expect: Expect::Command,
            errors: 0,
            tls_available,
            storage_full: false,
        }
    }

    fn hostname(&self) -> &str {
        &self.rt.config.hostname
    }

    fn limits(&self) -> LimitSettings {
        LimitSettings::from(&self.rt.config.limits)
    }

    pub fn greeting(&self) -> Reply {
        Reply::plain(220, format!("{} ESMTP mailrelay", self.hostname()))
    }

    pub(crate) fn authenticated(&self) -> Option<&str> {
        self.auth.as_deref()
    }

    fn is_submission(&self) -> bool {
        self.conn.listener != ListenerName::Smtp
    }

    /// A trusted client that the Relay lets relay without AUTH.
    fn trusted_relay(&self) -> bool {
        self.rt.config.relay_from_trusted_networks && self.rt.is_trusted(self.conn.client_ip)
    }

    fn error(&mut self, reply: Reply) -> Outcome {
        self.errors += 1;
        if self.errors >= MAX_ERRORS {
            return Reply::new(
                421,
                "4.7.0",
                format!("{} Too many errors, closing", self.hostname()),
            )
            .and_close()
            .into();
        }
        reply.into()
    }

    /// One line from the client (with its line ending).
    pub fn line(&mut self, line: &[u8]) -> Outcome {
        match std::mem::replace(&mut self.expect, Expect::Command) {
            Expect::Command => self.command(line),
            Expect::AuthPlain => self.sasl_plain(line),
            Expect::LoginUser => self.sasl_login_user(line),
            Expect::LoginPassword(user) => self.sasl_login_password(user, line),
            state @ (Expect::Verifying(_) | Expect::Content) => {
                // The loop never sends lines in these states; stay put.
                self.expect = state;
                Reply::new(503, "5.5.1", "Bad sequence of commands").into()
            }
        }
    }

    /// A command line longer than 512 octets (RFC 5321 §4.5.3.1.4), already discarded.
    pub fn line_too_long(&mut self) -> Outcome {
        self.error(Reply::new(500, "5.5.2", "Line too long"))
    }

    fn command(&mut self, line: &[u8]) -> Outcome {
        let request = match Request::parse(&mut line.iter()) {
            Ok(r) => r,
            Err(e) => {
                if let Some(reply) = routing_trick(line) {
                    return reply.into();
                }
                return self.parse_error(e);
            }
        };
        match request {
            Request::Ehlo { host } => self.hello(&host, true),
            Request::Helo { host } => self.hello(&host, false),
            Request::Lhlo { .. } => self.error(Reply::new(500, "5.5.1", "LHLO is for LMTP")),
            Request::Mail { from } => self.mail(&from.address, from.flags, from.size),
            Request::Rcpt { to } => self.rcpt(&to.address),
            Request::Data => self.data(),
            Request::Bdat {
                chunk_size,
                is_last,
            } => self.bdat(chunk_size, is_last),
            Request::Rset => {
                self.reset();
                Reply::new(250, "2.0.0", "Ok").into()
            }
            Request::Noop { .. } => Reply::new(250, "2.0.0", "Ok").into(),
            Request::Quit => Reply::new(221, "2.0.0", format!("{} Bye", self.hostname()))
                .and_close()
                .into(),
            // RFC 5321 §3.5.3: 252 says nothing about whether a user exists.
            Request::Vrfy { .. } => {
                Reply::new(252, "2.5.0", "Cannot VRFY user; send mail and see").into()
            }
            Request::Expn { .. } => Reply::new(502, "5.5.1", "EXPN is not supported").into(),
            Request::Help { .. } => Reply::new(214, "2.0.0", "See RFC 5321").into(),
            Request::StartTls => self.starttls(),
            Request::Auth {
                mechanism,
                initial_response,
            } => self.auth(mechanism, &initial_response),
            Request::Etrn { .. } | Request::Atrn { .. } | Request::Burl { .. } => {
                self.error(Reply::new(502, "5.5.1", "Command not implemented"))
            }
        }
    }

    fn parse_error(&mut self, e: smtp_proto::Error) -> Outcome {
        use smtp_proto::Error as E;
        let reply = match e {
            E::UnknownCommand => Reply::new(500, "5.5.2", "Command not recognized"),
            E::InvalidSenderAddress => Reply::new(553, "5.1.7", "Bad sender address syntax"),
            E::InvalidRecipientAddress => Reply::new(501, "5.1.3", "Bad recipient address syntax"),
            E::SyntaxError { syntax } => Reply::new(501, "5.5.4", format!("Syntax: {syntax}")),
            E::InvalidParameter { param } => {
                Reply::new(501, "5.5.4", format!("Invalid {param} parameter"))
            }
            E::UnsupportedParameter { .. } => Reply::new(555, "5.5.4", "Unsupported parameter"),
            _ => Reply::new(500, "5.5.2", "Syntax error"),
        };
        self.error(reply)
    }

    fn reset(&mut self) {
        self.tx = None;
        self.bdat = None;
    }

    fn hello(&mut self, host: &str, esmtp: bool) -> Outcome {
        if host.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return self.error(Reply::new(501, "5.5.4", "Syntax: EHLO domain"));
        }
        self.reset();
        self.helo = Some(host.to_string());
        self.esmtp = esmtp;
        if !esmtp {
            return Reply::plain(250, self.hostname().to_string()).into();
        }
        let mut lines = vec![
            self.hostname().to_string(),
            "PIPELINING".into(),
            format!("SIZE {}", self.rt.config.limits.max_message_size),
            "8BITMIME".into(),
            "SMTPUTF8".into(),
            "ENHANCEDSTATUSCODES".into(),
            "CHUNKING".into(),
        ];
        if self.tls_available && !self.conn.tls {
            lines.push("STARTTLS".into());
        }
        // RFC 8314 §3: credentials only over TLS, so AUTH is not even offered before.
        if self.is_submission() && self.conn.tls && self.auth.is_none() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        Reply::multiline(250, lines).into()
    }

    fn mail(&mut self, path: &str, flags: u64, size: usize) -> Outcome {
        if self.helo.is_none() {
            return self.error(Reply::new(503, "5.5.1", "Send EHLO or HELO first"));
        }
        if self.tx.is_some() {
            return self.error(Reply::new(503, "5.5.1", "Nested MAIL command"));
        }
        if self.is_submission() && self.auth.is_none() && !self.trusted_relay() {
            return Reply::new(530, "5.7.0", "Authentication required").into();
        }
        if self.storage_full {
            // RFC 5321 §4.3.2 (452 is a MAIL reply), RFC 3463 4.3.1: say so
            // before the client sends the message; it keeps it and retries.
            return Reply::storage_full().into();
        }
        if self.auth.is_none()
            && let Some(block) = self.conn.connect_block.clone()
        {
            return block.into();
        }
        if let Some(hit) = self
            .helo
            .as_deref()
            .and_then(|h| self.rt.policy.check_name(NameRole::Helo, h))
        {
            return super::policy_reply(&hit.reply()).into();
        }
        let max = self.rt.config.limits.max_message_size;
        if size as u64 > max {
            return Reply::new(
                552,
                "5.3.4",
                format!("Message size exceeds the limit of {max} bytes"),
            )
            .into();
        }
        let sender = if path.is_empty() {
            None
        } else {
            match address::parse(path) {
                Ok(a) => Some(a),
                Err(e) => {
                    return Reply::new(
                        553,
                        "5.1.7",
                        format!("Sender address refused: {}", e.reason()),
                    )
                    .into();
                }
            }
        };
        if let Some(s) = &sender {
            let hit = self
                .rt
                .policy
                .check_sender(&s.normalised())
                .or_else(|| self.rt.policy.check_name(NameRole::SenderDomain, &s.domain));
            if let Some(hit) = hit {
                return super::policy_reply(&hit.reply()).into();
            }
        }
        if let Some(login) = &self.auth {
            let owned = sender
                .as_ref()
                .is_some_and(|s| self.rt.may_send_as(login, &s.normalised()));
            if !owned {
                return Reply::new(553, "5.7.1", format!("Sender address not owned by {login}"))
                    .into();
            }
        }
        if !self.limiter.message(self.conn.client_ip, &self.limits()) {
            return Reply::new(
                450,
                "4.7.1",
                "Too many messages from your address; try again later",
            )
            .into();
        }
        self.tx = Some(Transaction {
            sender,
            recipients: Vec::new(),
            body_8bit: flags & smtp_proto::MAIL_BODY_8BITMIME != 0,
            smtputf8: flags & smtp_proto::MAIL_SMTPUTF8 != 0,
        });
        Reply::new(250, "2.1.0", "Ok").into()
    }

    fn rcpt(&mut self, path: &str) -> Outcome {
        let authenticated = self.auth.is_some();
        let may_relay = authenticated || self.trusted_relay();
        let max = self.rt.config.limits.max_recipients as usize;
        let Some(tx) = &self.tx else {
            return self.error(Reply::new(503, "5.5.1", "Need MAIL before RCPT"));
        };
        if tx.recipients.len() >= max {
            // RFC 5321 §4.5.3.1.10: 452, and the client sends the rest later.
            return Reply::new(452, "4.5.3", "Too many recipients").into();
        }
        let to = match address::parse(path) {
            Ok(a) => a,
            Err(e @ AddressError::Routing(_)) => {
                return Reply::new(550, "5.7.1", format!("Relay access denied: {}", e.reason()))
                    .into();
            }
            Err(e) => {
                return Reply::new(
                    501,
                    "5.1.3",
                    format!("Bad recipient address: {}", e.reason()),
                )
                .into();
            }
        };
        let reply = match self.rt.recipient(&to.local, &to.domain) {
            Recipient::Hosted(_) => None,
            Recipient::InboundDisabled(_) if may_relay => None,
            Recipient::InboundDisabled(d) => Some(Reply::new(
                550,
                "5.7.1",
                format!("{} does not accept mail from outside", d.name),
            )),
            Recipient::UnknownUser(_) => Some(Reply::new(550, "5.1.1", "No such user here")),
            Recipient::Remote if may_relay => None,
            Recipient::Remote => Some(Reply::new(550, "5.7.1", "Relay access denied")),
        };
        if let Some(reply) = reply {
            return reply.into();
        }
        // Suppression after routing: a client that may not send here
        // learns nothing of the list.
        if self.rt.policy.suppresses_recipients()
            && let Some(hit) = self.rt.policy.check_recipient(&to.normalised(), &to.domain)
        {
            return super::policy_reply(&hit.reply()).into();
        }
        if let Some(tx) = self.tx.as_mut() {
            tx.recipients.push(to);
        }
        Reply::new(250, "2.1.5", "Ok").into()
    }

    fn data(&mut self) -> Outcome {
        if self.bdat.is_some() {
            return self.error(Reply::new(503, "5.5.1", "DATA after BDAT"));
        }
        match &self.tx {
            None => self.error(Reply::new(503, "5.5.1", "Need MAIL command")),
            Some(tx) if tx.recipients.is_empty() => {
                self.error(Reply::new(554, "5.5.1", "No valid recipients"))
            }
            Some(_) => {
                self.expect = Expect::Content;
                let max =
                    usize::try_from(self.rt.config.limits.max_message_size).unwrap_or(usize::MAX);
                Outcome {
                    reply: Some(Reply::plain(354, "End data with <CR><LF>.<CR><LF>")),
                    effect: Effect::ReceiveData(Box::new(DataReader::new(max))),
                }
            }
        }
    }

    /// The content of DATA has been read to its end.
    pub fn data_end(&mut self, content: Result<Vec<u8>, ContentError>) -> Result<Accepted, Reply> {
        self.expect = Expect::Command;
        let tx = self.tx.take();
        let content = content.map_err(|e| self.content_error(e))?;
        let transaction = tx.ok_or_else(|| Reply::new(503, "5.5.1", "No transaction"))?;
        Ok(Accepted {
            transaction,
            content,
        })
    }

    fn content_error(&self, e: ContentError) -> Reply {
        match e {
            ContentError::TooLarge => Reply::new(
                552,
                "5.3.4",
                format!(
                    "Message size exceeds the limit of {} bytes",
                    self.rt.config.limits.max_message_size
                ),
            ),
            // RFC 5321 §2.3.8: lines end with CRLF and nothing else.
            ContentError::BareLf => {
                Reply::new(554, "5.6.0", "Bare <LF> in message content is not accepted")
            }
            ContentError::BareCr => {
                Reply::new(554, "5.6.0", "Bare <CR> in message content is not accepted")
            }
            ContentError::LineTooLong => Reply::new(
                554,
                "5.6.0",
                "A line in the message is longer than 998 octets",
            ),
        }
    }

    fn bdat(&mut self, size: usize, last: bool) -> Outcome {
        // The chunk is always read (RFC 3030 §2): what follows it is not a command.
        self.expect = Expect::Content;
        if self.bdat.is_none() {
            let max = usize::try_from(self.rt.config.limits.max_message_size).unwrap_or(usize::MAX);
            self.bdat = Some(BdatCollector::new(max));
        }
        Outcome {
            reply: None,
            effect: Effect::ReceiveBdat { size, last },
        }
    }

    /// Part of a BDAT chunk's bytes, as they arrive.
    pub fn bdat_data(&mut self, piece: &[u8]) {
        if let Some(collector) = self.bdat.as_mut() {
            collector.push(piece);
        }
    }

    /// A BDAT chunk has been read in full. `Ok(None)`: more chunks to come.
    pub fn bdat_done(&mut self, last: bool) -> Result<Option<Accepted>, Reply> {
        self.expect = Expect::Command;
        let ready = self.tx.as_ref().is_some_and(|t| !t.recipients.is_empty());
        if !ready {
            self.bdat = None;
            return Err(Reply::new(503, "5.5.1", "Need MAIL and RCPT before BDAT"));
        }
        if !last {
            return Ok(None);
        }
        let content = self
            .bdat
            .take()
            .map(BdatCollector::finish)
            .unwrap_or(Ok(Vec::new()));
        self.data_end(content).map(Some)
    }

    fn starttls(&mut self) -> Outcome {
        if self.conn.tls {
            return self.error(Reply::new(503, "5.5.1", "TLS already active"));
        }
        if !self.tls_available {
            return self.error(Reply::new(454, "4.7.0", "TLS not available"));
        }
        Outcome {
            reply: Some(Reply::new(220, "2.0.0", "Ready to start TLS")),
            effect: Effect::StartTls,
        }
    }

    /// TLS is up: RFC 3207 §4.2 — forget everything said in plain text.
    pub fn tls_started(&mut self) {
        self.conn.tls = true;
        self.helo = None;
        self.esmtp = false;
        self.auth = None;
        self.reset();
        self.expect = Expect::Command;
    }
}

/// A RCPT the parser refused may still be a routing trick (`a@b@c`,
/// `host!user`, `user@[IP]`): answer it as the relay refusal it is.
fn routing_trick(line: &[u8]) -> Option<Reply> {
    let text = std::str::from_utf8(line).ok()?;
    let (verb, rest) = text.split_at_checked(8)?;
    if !verb.eq_ignore_ascii_case("RCPT TO:") {
        return None;
    }
    let path = rest.trim().strip_prefix('<')?;
    let path = &path[..path.rfind('>')?];
    match address::parse(path) {
        Err(e @ AddressError::Routing(_)) => Some(Reply::new(
            550,
            "5.7.1",
            format!("Relay access denied: {}", e.reason()),
        )),
        _ => None,
    }
}

/// What was said, for logs and the Received: header; what the loop needs.
impl Session {
    pub(crate) fn runtime(&self) -> &Runtime {
        &self.rt
    }

    pub fn limits_config(&self) -> &mailrelay_crds::config::LimitsConfig {
        &self.rt.config.limits
    }

    /// Waiting for an AUTH response line (longer lines are allowed).
    pub fn in_auth(&self) -> bool {
        matches!(
            self.expect,
            Expect::AuthPlain | Expect::LoginUser | Expect::LoginPassword(_)
        )
    }

    /// Whether the spool has room for a new message: the loop asks the
    /// spool before each MAIL and says it here.
    pub fn set_storage_full(&mut self, full: bool) {
        self.storage_full = full;
    }

    pub(crate) fn helo(&self) -> Option<&str> {
        self.helo.as_deref()
    }

    /// The transaction under way, if any (for the events of a refusal).
    pub(crate) fn transaction(&self) -> Option<&Transaction> {
        self.tx.as_ref()
    }

    pub(crate) fn esmtp(&self) -> bool {
        self.esmtp
    }
}

#[path = "session_auth.rs"]
mod session_auth;

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
