//! The events of the receiving side, made where the session's I/O loop
//! has them in hand: a Reception per recipient after the spool commit
//! (before the 250 goes out), a Rejection for a refused RCPT, DATA or
//! message.

use super::build::{self, Arrived, Refused};
use crate::smtp::Transaction;
use crate::smtp::reply::Reply;
use crate::smtp::session::Session;
use crate::spool::{Envelope, QueueId, Queued, Spool};

/// A message is in the spool: its Receptions (appended, not awaited; see
/// the module comment of `events`).
pub(crate) fn accepted(
    spool: &Spool,
    session: &Session,
    id: &QueueId,
    envelope: &Envelope,
    body: &[u8],
    dkim_signed: bool,
) {
    let events = spool.events();
    let arrived = Arrived {
        listener: Some(session.conn.listener.as_str()),
        tls: session.conn.tls_info.as_deref(),
        dkim_signed,
        message_id: super::record::message_id(body),
    };
    let rt = session.runtime();
    for e in build::reception(events, id, envelope, &arrived) {
        events.emit(rt, &e);
    }
}

/// The sender and recipients of a transaction, kept before the end of
/// DATA takes it, for the Rejections of a refused message.
pub(crate) struct Pending {
    sender: Option<String>,
    recipients: Vec<String>,
}

impl Pending {
    pub(crate) fn of(session: &Session) -> Pending {
        let tx: Option<&Transaction> = session.transaction();
        Pending {
            sender: tx.map(|t| t.sender.as_ref().map(|a| a.as_string()).unwrap_or_default()),
            recipients: tx
                .map(|t| t.recipients.iter().map(|a| a.as_string()).collect())
                .unwrap_or_default(),
        }
    }
}

/// A command was refused: a Rejection when it was RCPT (with the
/// recipient asked for) or DATA/BDAT.
pub(crate) fn refused_command(spool: &Spool, session: &Session, line: &[u8], reply: &Reply) {
    let verb = line
        .iter()
        .take_while(|b| b.is_ascii_alphabetic())
        .map(u8::to_ascii_uppercase)
        .collect::<Vec<u8>>();
    let recipient = match verb.as_slice() {
        b"RCPT" => Some(rcpt_path(line)),
        b"DATA" | b"BDAT" => None,
        _ => return,
    };
    let pending = Pending::of(session);
    let recipients = match recipient {
        Some(r) => vec![r],
        None => pending.recipients,
    };
    emit_rejections(spool, session, pending.sender, recipients, reply);
}

/// A message was refused at the end of DATA (content, inbound checks,
/// signing, spool): one Rejection per recipient.
pub(crate) fn refused_message(spool: &Spool, session: &Session, pending: Pending, reply: &Reply) {
    emit_rejections(spool, session, pending.sender, pending.recipients, reply);
}

fn emit_rejections(
    spool: &Spool,
    session: &Session,
    sender: Option<String>,
    recipients: Vec<String>,
    reply: &Reply,
) {
    let events = spool.events();
    let text = reply.to_string();
    let text = text.trim_end();
    let rt = session.runtime();
    let mut recipients: Vec<Option<String>> = recipients.into_iter().map(Some).collect();
    if recipients.is_empty() {
        recipients.push(None);
    }
    for recipient in recipients {
        let e = build::rejection(
            events,
            Refused {
                listener: session.conn.listener.as_str(),
                client_ip: session.conn.client_ip,
                auth_user: session.authenticated(),
                sender: sender.clone(),
                recipient,
                reply: text.to_string(),
            },
        );
        events.emit(rt, &e);
    }
}

/// A draining relay's peer took `id`: its HandOff events are durable
/// before the local copy goes.
pub(crate) async fn handed_off(spool: &Spool, id: &QueueId, peer: &str) {
    match spool.queued_one(id) {
        Ok(Some(q)) => {
            let events = spool.events();
            events
                .record(&build::handoff(events, &q, "sent", peer))
                .await;
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(queue_id = %id, error = %e, "no hand-off event: the message cannot be read")
        }
    }
}

/// A message handed over by a draining peer is in the spool. Not awaited,
/// like a Reception: when none of its recipients has moved on, start-up
/// emits it again.
pub(crate) fn handed_in(spool: &Spool, q: &Queued, peer: &str) {
    let events = spool.events();
    let rt = events.runtime();
    for e in build::handoff(events, q, "received", peer) {
        match &rt {
            Some(rt) => {
                events.emit(rt, &e);
            }
            None => events.log(&e),
        }
    }
}

/// An administrator acted on `q` (delete, hold, release, flush): durable
/// before the change is made.
pub(crate) async fn admin(spool: &Spool, q: &Queued, action: &str, now_unix: i64) {
    let events = spool.events();
    events
        .record(&[build::admin(events, q, action, &now_unix.to_string())])
        .await;
}

/// The path of `RCPT TO:<path> params`, without its brackets, as sent
/// (it was refused: it may not even parse).
fn rcpt_path(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    let after = text
        .split_once(':')
        .map_or("", |(_, rest)| rest)
        .trim_start();
    let path = match after.strip_prefix('<') {
        Some(rest) => rest.split('>').next().unwrap_or_default(),
        None => after.split_whitespace().next().unwrap_or_default(),
    };
    path.chars().take(256).collect()
}

#[cfg(test)]
mod tests {
    use super::rcpt_path;

    #[test]
    fn the_refused_recipient_is_taken_from_the_command_as_sent() {
        let cases: [(&[u8], &str); 4] = [
            (b"RCPT TO:<bob@x.test>\r\n", "bob@x.test"),
            (b"rcpt to: <Bob@X.test> NOTIFY=NEVER\r\n", "Bob@X.test"),
            (b"RCPT TO:bob@x.test\r\n", "bob@x.test"),
            (b"RCPT\r\n", ""),
        ];
        for (line, want) in cases {
            assert_eq!(rcpt_path(line), want);
        }
    }
}
