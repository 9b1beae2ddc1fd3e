//! How a message leaves the queue other than by delivery: removed once
//! every recipient is final, bounced (one DSN to the sender, committed in
//! the same spool step that removes the message), expired at the end of
//! its lifetime, or warned about when it is late.

use jiff::Timestamp;

use super::decide;
use super::dsn::{self, DsnInput};
use super::worker::Worker;
use crate::spool::{Envelope, Notice, Queued, RecipientState};

impl Worker {
    /// Every recipient reached a final state: remove, or bounce the failures.
    pub(super) async fn finish(&self, q: &Queued, now: Timestamp) {
        let hostname = self.current.get().config.hostname.clone();
        let reports = decide::failure_reports(q, now);
        if reports.is_empty() {
            match self.spool.remove(&q.id).await {
                Ok(()) => tracing::info!(queue_id = %q.id, "removed: all recipients delivered"),
                Err(e) => {
                    tracing::error!(queue_id = %q.id, error = %e, "cannot remove a delivered message")
                }
            }
            return;
        }
        self.notice(q, &hostname, now, &reports, Notice::Bounce)
            .await;
    }

    /// Fail every recipient still waiting: the queue lifetime is over.
    pub(super) async fn expire(&self, q: &Queued) {
        let updates: Vec<(usize, RecipientState)> = q
            .recipients
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.is_final())
            .map(|(i, s)| (i, decide::expired(decide::last_reply(s))))
            .collect();
        tracing::info!(queue_id = %q.id, recipients = updates.len(), "expired in the queue");
        let rt = self.current.get();
        let events = self.spool.events();
        let emitted = crate::events::outcomes::expired(events, q, &updates, |r| {
            rt.classifier.classify(r).as_str()
        });
        events.emit_before_step(&rt, &emitted);
        if let Err(e) = self.spool.record(&q.id, &updates).await {
            tracing::error!(queue_id = %q.id, error = %e, "cannot record expiry");
        }
    }

    pub(super) async fn warn_delay(&self, q: &Queued, now: Timestamp, until: Timestamp) {
        let hostname = self.current.get().config.hostname.clone();
        let reports = decide::delay_reports(q, now, until);
        if !reports.is_empty() {
            let rt = self.current.get();
            let events = self.spool.events();
            let warned = crate::events::outcomes::delay_warnings(events, q, &reports);
            events.emit_before_step(&rt, &warned);
            self.notice(q, &hostname, now, &reports, Notice::DelayWarning)
                .await;
        }
    }

    /// A DSN about `q`, committed with its effect on `q` in one spool step.
    async fn notice(
        &self,
        q: &Queued,
        hostname: &str,
        now: Timestamp,
        reports: &[dsn::RecipientReport],
        notice: Notice,
    ) {
        let original = match self.spool.read_body(&q.id).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(queue_id = %q.id, error = %e, "cannot read the message for its notice");
                return;
            }
        };
        let arrival = Timestamp::from_second(q.envelope.received_at).unwrap_or(now);
        let input = DsnInput {
            envelope: &q.envelope,
            message: &original,
            reporting_mta: hostname,
            queue_id: q.id,
            arrival_date: arrival,
            now,
            recipients: reports,
        };
        let Some(dsn) = dsn::build(&input) else {
            // RFC 5321 §6.1: never a notice to the null sender.
            if notice == Notice::Bounce {
                tracing::info!(queue_id = %q.id, "failed message from <> dropped: no bounce to a bounce");
                if let Err(e) = self.spool.remove(&q.id).await {
                    tracing::error!(queue_id = %q.id, error = %e, "cannot remove a failed message");
                }
            }
            return;
        };
        let id = self.spool.new_id();
        let envelope = Envelope {
            sender: dsn.sender.clone(),
            recipients: vec![dsn.recipient.clone()],
            received_at: now.as_second(),
            client_ip: std::net::Ipv4Addr::LOCALHOST.into(),
            helo: hostname.to_string(),
            auth: None,
            tls: false,
            size: dsn.message.len() as u64,
            smtputf8: dsn.needs_smtputf8(),
            body_8bit: dsn.is_8bit(),
            handed_off: None,
        };
        match self
            .spool
            .commit_notice(&id, &envelope, &dsn.message, &q.id, notice)
            .await
        {
            Ok(()) => tracing::info!(
                queue_id = %q.id,
                notice_id = %id,
                to = %dsn.recipient,
                kind = if notice == Notice::Bounce { "bounce" } else { "delay warning" },
                "notice queued"
            ),
            Err(e) => tracing::error!(queue_id = %q.id, error = %e, "cannot queue the notice"),
        }
    }
}
