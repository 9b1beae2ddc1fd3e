//! The events of each kind, made from what the code at each point has in
//! hand (a queued message, a session, an outcome). Pure: no I/O.

use std::net::IpAddr;

use super::Events;
use super::record::{Event, EventType, Reply, Tls, event_id};
use crate::spool::{Envelope, QueueId, Queued};

/// What a delivery attempt learnt of the server it reached.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Peer {
    pub host: Option<String>,
    pub ip: Option<IpAddr>,
    pub tls: Option<Tls>,
}

impl Peer {
    /// The server an SMTP client is connected to, and how.
    pub(crate) fn of_smtp(client: &crate::delivery::SmtpClient) -> Peer {
        use crate::delivery::Security;
        let target = client.target();
        let tls = match client.security() {
            Security::Encrypted => Some(false),
            Security::Verified => Some(true),
            Security::Clear | Security::ClearAfterTlsFailure { .. } => None,
        };
        Peer {
            host: Some(target.host.clone()),
            ip: Some(target.addr.ip()),
            // lettre tells neither the protocol version nor the cipher.
            tls: tls.map(|verified| Tls {
                version: None,
                cipher: None,
                verified,
            }),
        }
    }
}

/// An event about recipient `index` (or the whole message) of a queued
/// message, with the message's common fields.
pub(crate) fn about(
    events: &Events,
    kind: EventType,
    id: &QueueId,
    envelope: &Envelope,
    index: Option<usize>,
    attempt: u32,
    detail: &str,
) -> Event {
    let queue_id = id.to_string();
    let mut e = events.event(kind, event_id(&queue_id, index, kind, attempt, detail));
    e.queue_id = Some(queue_id);
    e.sender = Some(envelope.sender.clone());
    e.recipient = index.and_then(|i| envelope.recipients.get(i).cloned());
    e.size = Some(envelope.size);
    e.queued_seconds = Some((jiff::Timestamp::now().as_second() - envelope.received_at).max(0));
    e
}

/// What a session knows of an accepted message besides its envelope.
pub(crate) struct Arrived<'a> {
    pub listener: Option<&'a str>,
    pub tls: Option<&'a str>,
    pub dkim_signed: bool,
    pub message_id: Option<String>,
}

/// One Reception per recipient.
pub(crate) fn reception(
    events: &Events,
    id: &QueueId,
    envelope: &Envelope,
    arrived: &Arrived<'_>,
) -> Vec<Event> {
    (0..envelope.recipients.len())
        .map(|i| {
            let mut e = about(events, EventType::Reception, id, envelope, Some(i), 0, "");
            e.listener = arrived.listener.map(str::to_string);
            e.client_ip = Some(envelope.client_ip.to_string());
            e.auth_user.clone_from(&envelope.auth);
            e.message_id.clone_from(&arrived.message_id);
            e.dkim_signed = Some(arrived.dkim_signed);
            e.tls = arrived.tls.map(inbound_tls);
            e
        })
        .collect()
}

/// The session's `TLSv1_3 with cipher TLS13_…` taken apart; the client's
/// certificate is never checked (`verified` false).
fn inbound_tls(info: &str) -> Tls {
    let (version, cipher) = match info.split_once(" with cipher ") {
        Some((v, c)) => (v, Some(c.to_string())),
        None => (info, None),
    };
    Tls {
        version: Some(version.to_string()),
        cipher,
        verified: false,
    }
}

/// The arrival event rebuilt from the spool at start-up: a Reception, or
/// for a message a peer handed over, a HandOff `received`.
pub(crate) fn arrival(events: &Events, q: &Queued) -> Vec<Event> {
    match &q.envelope.handed_off {
        Some(h) => handoff(
            events,
            q,
            "received",
            h.lineage.last().map_or("peer", String::as_str),
        ),
        None => reception(
            events,
            &q.id,
            &q.envelope,
            &Arrived {
                listener: None,
                tls: None,
                dkim_signed: false,
                message_id: None,
            },
        )
        .into_iter()
        .map(|mut e| {
            // Not known any more: said by leaving it out.
            e.dkim_signed = None;
            e
        })
        .collect(),
    }
}

/// A refusal at RCPT or DATA.
pub(crate) struct Refused<'a> {
    pub listener: &'a str,
    pub client_ip: IpAddr,
    pub auth_user: Option<&'a str>,
    pub sender: Option<String>,
    pub recipient: Option<String>,
    pub reply: String,
}

pub(crate) fn rejection(events: &Events, r: Refused<'_>) -> Event {
    let mut e = events.event(
        EventType::Rejection,
        events.fresh_id(EventType::Rejection, &r.reply),
    );
    e.listener = Some(r.listener.to_string());
    e.client_ip = Some(r.client_ip.to_string());
    e.auth_user = r.auth_user.map(str::to_string);
    e.sender = r.sender;
    e.recipient = r.recipient;
    e.reply = Some(Reply::parse(&r.reply));
    e
}

/// What became of one recipient after an attempt.
pub(crate) struct Attempted<'a> {
    pub kind: EventType,
    pub index: usize,
    /// This attempt's number for the recipient (1 for the first).
    pub attempt: u32,
    pub route: &'a str,
    pub reply: &'a str,
    pub class: &'a str,
    pub peer: Option<&'a Peer>,
    pub message_id: Option<&'a str>,
}

pub(crate) fn attempted(events: &Events, q: &Queued, a: &Attempted<'_>) -> Event {
    let mut e = about(
        events,
        a.kind,
        &q.id,
        &q.envelope,
        Some(a.index),
        a.attempt,
        "",
    );
    // An expiry of a recipient that waited has no route of its own.
    e.route = (!a.route.is_empty()).then(|| a.route.to_string());
    e.reply = Some(Reply::parse(a.reply));
    e.class = (!a.class.is_empty()).then(|| a.class.to_string());
    e.attempt = Some(a.attempt);
    e.message_id = a.message_id.map(str::to_string);
    if let Some(p) = a.peer {
        e.remote_host.clone_from(&p.host);
        e.remote_ip = p.ip.map(|ip| ip.to_string());
        e.tls.clone_from(&p.tls);
    }
    e
}

/// Handed to (`sent`) or taken from (`received`) a peer relay: one event
/// per recipient still to deliver.
pub(crate) fn handoff(events: &Events, q: &Queued, action: &str, peer: &str) -> Vec<Event> {
    q.recipients
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.is_final())
        .map(|(i, _)| {
            let mut e = about(
                events,
                EventType::HandOff,
                &q.id,
                &q.envelope,
                Some(i),
                0,
                action,
            );
            e.action = Some(action.to_string());
            e.remote_host = Some(peer.to_string());
            e
        })
        .collect()
}

/// An admin action on one message (`detail` tells repeated actions
/// apart: the time it was asked).
pub(crate) fn admin(events: &Events, q: &Queued, action: &str, detail: &str) -> Event {
    let mut e = about(
        events,
        EventType::Admin,
        &q.id,
        &q.envelope,
        None,
        0,
        &format!("{action}/{detail}"),
    );
    e.action = Some(action.to_string());
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sessions_tls_line_becomes_version_and_cipher() {
        let t = inbound_tls("TLSv1_3 with cipher TLS13_AES_256_GCM_SHA384");
        assert_eq!(t.version.as_deref(), Some("TLSv1_3"));
        assert_eq!(t.cipher.as_deref(), Some("TLS13_AES_256_GCM_SHA384"));
        assert!(!t.verified);
    }
}
