//! `POST /internal/submit`: a mail of the operator's (a report) queued as
//! if an authenticated client of its sender's domain had submitted it:
//! the relay's `Received:`, a DKIM signature when the From: domain is
//! hosted with a key, on disk (fsync'd) before the 200.

use std::net::IpAddr;

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
    Ok(Checked {
        sender,
        recipients,
        content,
    })
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
    (api.spool.commit(&id, &envelope, &body).await)
        .map_err(|e| SubmitError::Spool(e.to_string()))?;
    let events = api.spool.events();
    let arrived = crate::events::build::Arrived {
        listener: Some("internal"),
        tls: None,
        dkim_signed: !signature.is_empty(),
        message_id: crate::events::record::message_id(&body),
    };
    for e in crate::events::build::reception(events, &id, &envelope, &arrived) {
        events.emit(&rt, &e);
    }
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
