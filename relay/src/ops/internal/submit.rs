//! `POST /internal/submit`: a mail of the operator's (a report) queued as
//! if an authenticated client of its sender's domain had submitted it:
//! the relay's `Received:`, a DKIM signature when the From: domain is
//! hosted with a key, on disk (fsync'd) before the 200.
//!
//! Held to what the relay holds its clients to: the sender's domain
//! hosted, the From: header's domain the sender's (the operator's key
//! makes it a trusted submitter, not one that may write any author),
//! the Relay's message size and recipient limits.
//!
//! Idempotent: a body accepted in the last [`REMEMBER_SECS`] (by its
//! SHA-256, at most [`REMEMBERED`] of them) is answered 200 with the
//! queue id it got, not queued again. So a replayed request (its
//! signature is valid for minutes) sends nothing twice, and the operator
//! may retry a submission whose answer it lost.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;

use base64::Engine as _;
use hyper::StatusCode;
use mailrelay_crds::relay::ListenerName;
use mailrelay_crds::reports::{Submission, Submitted};

use super::Internal;
use crate::config::runtime::Runtime;
use crate::smtp::ConnInfo;
use crate::smtp::address::{self, Address};
use crate::smtp::received::{self, Trace};
use crate::spool::Envelope;

#[derive(Debug, thiserror::Error)]
pub(crate) enum SubmitError {
    #[error("the message is not base64: {0}")]
    Base64(String),
    #[error("the message has a bare LF at byte {0}: lines end with CRLF")]
    BareLf(usize),
    #[error("no recipients")]
    NoRecipients,
    #[error("{0:?} is not an address: {1}")]
    Address(String, &'static str),
    #[error("the sender's domain {0} is not hosted by this Relay")]
    NotHosted(String),
    #[error("the From: header's domain {from} is not the sender's, {sender}")]
    FromNotSender { from: String, sender: String },
    #[error("the message has no single From: address: {0}")]
    NoFrom(String),
    #[error("{count} recipients, over the limit of {limit}")]
    TooManyRecipients { count: usize, limit: u32 },
    #[error("the message is {size} bytes, over the limit of {limit}")]
    TooBig { size: usize, limit: u64 },
    #[error("cannot sign: {0}")]
    Sign(String),
    #[error("cannot queue the message: {0}")]
    Spool(String),
}

impl SubmitError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            SubmitError::Sign(_) | SubmitError::Spool(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }
}

/// A submission's envelope and content, checked.
pub(crate) struct Checked {
    pub sender: Address,
    pub recipients: Vec<Address>,
    pub content: Vec<u8>,
}

fn parse(a: &str) -> Result<Address, SubmitError> {
    address::parse(a).map_err(|e| SubmitError::Address(a.to_string(), e.reason()))
}

/// The submission made into an envelope and content, or why not.
pub(crate) fn check(rt: &Runtime, sub: &Submission) -> Result<Checked, SubmitError> {
    let sender = parse(&sub.from)?;
    if rt.domain(&sender.domain).is_none() {
        return Err(SubmitError::NotHosted(sender.domain));
    }
    if sub.to.is_empty() {
        return Err(SubmitError::NoRecipients);
    }
    let max_recipients = rt.config.limits.max_recipients;
    if sub.to.len() > max_recipients as usize {
        return Err(SubmitError::TooManyRecipients {
            count: sub.to.len(),
            limit: max_recipients,
        });
    }
    let recipients = sub
        .to
        .iter()
        .map(|t| parse(t))
        .collect::<Result<Vec<_>, _>>()?;
    let content = base64::engine::general_purpose::STANDARD
        .decode(sub.message.as_bytes())
        .map_err(|e| SubmitError::Base64(e.to_string()))?;
    // RFC 5321 §2.3.8: the same rule the SMTP listeners hold clients to.
    if let Some(at) = content
        .iter()
        .enumerate()
        .position(|(i, b)| *b == b'\n' && (i == 0 || content[i - 1] != b'\r'))
    {
        return Err(SubmitError::BareLf(at));
    }
    let limit = rt.config.limits.max_message_size;
    if content.len() as u64 > limit {
        return Err(SubmitError::TooBig {
            size: content.len(),
            limit,
        });
    }
    let author =
        crate::dkim::headers::author(&content).map_err(|e| SubmitError::NoFrom(e.to_string()))?;
    if !author.domain.eq_ignore_ascii_case(&sender.domain) {
        return Err(SubmitError::FromNotSender {
            from: author.domain,
            sender: sender.domain,
        });
    }
    Ok(Checked {
        sender,
        recipients,
        content,
    })
}

/// How long an accepted submission is remembered: longer than a
/// signature is valid (`SIGNATURE_WINDOW_SECS`), so no replay of a signed
/// request gets past.
pub(crate) const REMEMBER_SECS: i64 = 600;
/// Submissions remembered at most; past it the oldest are forgotten
/// early (the operator sends a few reports per period, not thousands).
pub(crate) const REMEMBERED: usize = 4096;

type Digest = [u8; 32];

/// Bodies accepted lately, and the queue ids they got.
#[derive(Default)]
pub(crate) struct Recent {
    inner: Mutex<RecentInner>,
    /// One submission at a time, so two copies sent at once are queued
    /// once: the second waits, then finds the first's id.
    one_at_a_time: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct RecentInner {
    ids: HashMap<Digest, String>,
    /// Arrival order, for forgetting.
    order: VecDeque<(i64, Digest)>,
}

impl Recent {
    fn lock(&self) -> std::sync::MutexGuard<'_, RecentInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The queue id a body with `digest` got, if accepted since `now -
    /// REMEMBER_SECS`.
    pub(crate) fn get(&self, digest: &Digest, now: i64) -> Option<String> {
        let mut r = self.lock();
        while let Some((at, d)) = r.order.front().copied() {
            if now.saturating_sub(at) <= REMEMBER_SECS {
                break;
            }
            r.order.pop_front();
            r.ids.remove(&d);
        }
        r.ids.get(digest).cloned()
    }

    pub(crate) fn remember(&self, digest: Digest, now: i64, queue_id: String) {
        let mut r = self.lock();
        while r.order.len() >= REMEMBERED {
            if let Some((_, d)) = r.order.pop_front() {
                r.ids.remove(&d);
            }
        }
        r.order.push_back((now, digest));
        r.ids.insert(digest, queue_id);
    }
}

pub(crate) fn digest(body: &[u8]) -> Digest {
    let d = ring::digest::digest(&ring::digest::SHA256, body);
    let mut out = [0; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Queue `sub` (the request's `body`) from the operator at `peer`, unless
/// the same body was queued lately: then its queue id again.
pub(crate) async fn submit_once(
    api: &Internal,
    sub: &Submission,
    body: &[u8],
    peer: IpAddr,
) -> Result<Submitted, SubmitError> {
    let recent = &api.guard.submitted;
    let _one = recent.one_at_a_time.lock().await;
    let digest = digest(body);
    let now = jiff::Timestamp::now().as_second();
    if let Some(queue_id) = recent.get(&digest, now) {
        tracing::info!(%queue_id, %peer, "submission seen before: answered with its queue id, not queued again");
        return Ok(Submitted { queue_id });
    }
    let done = submit(api, sub, peer).await?;
    recent.remember(digest, now, done.queue_id.clone());
    Ok(done)
}

/// Queue `sub` from the operator at `peer`.
pub(crate) async fn submit(
    api: &Internal,
    sub: &Submission,
    peer: IpAddr,
) -> Result<Submitted, SubmitError> {
    let rt = api.current.get();
    let Checked {
        sender,
        recipients,
        content,
    } = check(&rt, sub)?;
    let id = api.spool.new_id();
    let id_text = id.to_string();
    let (content, signature) = match signing(&rt, &content) {
        Some((domain, dkim)) => {
            crate::dkim::sign_as(&api.dkim, &rt, domain, dkim, &id_text, content)
                .await
                .map_err(|reply| SubmitError::Sign(reply.to_string()))?
        }
        None => (content, None),
    };
    let conn = ConnInfo {
        listener: ListenerName::Submission,
        client_ip: peer,
        client_name: None,
        tls: false,
        tls_info: None,
        connect_block: None,
    };
    let header = received::header(&Trace {
        conn: &conn,
        helo: "mailrelay-operator",
        esmtp: true,
        authenticated: true,
        smtputf8: false,
        hostname: &rt.config.hostname,
        queue_id: &id_text,
        recipients: &recipients,
        now: jiff::Timestamp::now(),
    });
    let signature = signature.unwrap_or_default();
    let mut body = Vec::with_capacity(header.len() + signature.len() + content.len());
    body.extend_from_slice(header.as_bytes());
    body.extend_from_slice(signature.as_bytes());
    body.extend_from_slice(&content);
    let envelope = Envelope {
        sender: sender.as_string(),
        recipients: recipients.iter().map(Address::as_string).collect(),
        received_at: jiff::Timestamp::now().as_second(),
        client_ip: peer,
        helo: "mailrelay-operator".into(),
        auth: Some("mailrelay-operator".into()),
        tls: false,
        size: body.len() as u64,
        smtputf8: false,
        body_8bit: body.iter().any(|b| *b >= 0x80),
        handed_off: None,
    };
    let events = api.spool.events();
    let arrived = crate::events::build::Arrived {
        listener: Some("internal"),
        tls: None,
        dkim_signed: !signature.is_empty(),
        message_id: crate::events::record::message_id(&body),
    };
    // Before delivery can start (see `Spool::commit_then`).
    let receptions = || {
        for e in crate::events::build::reception(events, &id, &envelope, &arrived) {
            events.emit(&rt, &e);
        }
    };
    (api.spool
        .commit_then(&id, &envelope, &body, receptions)
        .await)
        .map_err(|e| SubmitError::Spool(e.to_string()))?;
    tracing::info!(
        queue_id = %id_text, sender = %envelope.sender, recipients = envelope.recipients.len(),
        size = envelope.size, dkim_signed = !signature.is_empty(),
        "accepted: submitted on the internal API"
    );
    Ok(Submitted { queue_id: id_text })
}

/// The domain and key to sign with: the From: domain's when it is hosted
/// with DKIM (the operator holds the Relay's key, so it may send as any
/// hosted domain; it sends its reports as `spec.reports.from`).
fn signing<'a>(
    rt: &'a Runtime,
    content: &[u8],
) -> Option<(String, &'a mailrelay_crds::config::DkimConfig)> {
    let author = crate::dkim::headers::author(content).ok()?;
    let dkim = rt.domain(&author.domain)?.dkim.as_ref()?;
    Some((author.domain, dkim))
}
