//! Command pipelining (RFC 2920) for [`SmtpClient`]: when the server
//! offers it, MAIL FROM, every RCPT TO and DATA go out in one write and
//! their replies are read in order, so a transaction costs two round trips
//! (the group, then the body) instead of three plus one per recipient.
//!
//! lettre does not report PIPELINING (it keeps only the EHLO keywords it
//! uses), so the client asks with a second EHLO once per connection, and
//! lettre's `command` / `read_response` do the writing and reading: a
//! group is one `command` whose text holds several lines, followed by one
//! `read_response` per further command.

use lettre::transport::smtp::response::Response;

use super::Outcome;
use super::smtp::SmtpClient;
use super::smtp_steps::{Stage, run};
use super::wire::{StepError, fill_missing};

impl SmtpClient {
    /// EHLO again, to see the keywords lettre drops; whether PIPELINING
    /// is among them (RFC 2920 §3: the client may pipeline only then). A
    /// refused EHLO just means no pipelining.
    pub(super) async fn probe_pipelining(&mut self, hostname: &str) -> Result<bool, Outcome> {
        match self
            .step(Stage::Connect, format!("EHLO {hostname}\r\n"))
            .await
        {
            Ok(reply) => Ok(reply.message().skip(1).any(|line| {
                line.split_whitespace()
                    .next()
                    .is_some_and(|word| word.eq_ignore_ascii_case("PIPELINING"))
            })),
            Err(StepError::Reply { .. }) => Ok(false),
            Err(e) => Err(e.into_outcome()),
        }
    }

    /// The next reply of a pipelined group.
    async fn next_reply(&mut self, stage: Stage) -> Result<Response, StepError> {
        let limit = match stage {
            Stage::Data => self.timeouts.data_start,
            _ => self.timeouts.command,
        };
        let result = run(&self.target, stage, limit, self.conn.read_response()).await;
        if let Err(StepError::Lost(why)) = &result {
            self.broken = Some(why.clone());
        }
        result
    }

    /// One transaction with MAIL, the RCPTs still without an outcome and
    /// DATA sent as one group (RFC 2920 §3.1: DATA last). Every reply of
    /// the group is read, whatever the earlier ones said, to stay in step.
    pub(super) async fn pipelined(
        &mut self,
        mail: String,
        rcpts: &[&str],
        body: &[u8],
        outcomes: &mut [Option<Outcome>],
    ) {
        let wanted: Vec<usize> = (0..rcpts.len())
            .filter(|&i| outcomes[i].is_none())
            .collect();
        let mut group = mail;
        for &i in &wanted {
            group.push_str("RCPT TO:<");
            group.push_str(rcpts[i]);
            group.push_str(">\r\n");
        }
        group.push_str("DATA\r\n");
        // The write, and the reply to MAIL.
        let mail_failed = match self.step(Stage::Mail, group).await {
            Ok(_) => None,
            Err(e @ StepError::Reply { .. }) => Some(e.into_outcome()),
            Err(e) => return fill_missing(outcomes, &e.into_outcome()),
        };
        let mut accepted = Vec::with_capacity(wanted.len());
        for &i in &wanted {
            match self.next_reply(Stage::Rcpt).await {
                Ok(_) if mail_failed.is_none() => accepted.push(i),
                // A RCPT accepted after a refused MAIL means nothing.
                Ok(_) => {}
                Err(e @ StepError::Reply { .. }) => outcomes[i] = Some(e.into_outcome()),
                Err(e) => return fill_missing(outcomes, &e.into_outcome()),
            }
        }
        if let Some(outcome) = &mail_failed {
            // Transaction-level: every recipient gets MAIL's refusal.
            for &i in &wanted {
                outcomes[i] = Some(outcome.clone());
            }
        }
        let data = self.next_reply(Stage::Data).await;
        let result = match data {
            Ok(_) if accepted.is_empty() => {
                // RFC 2920 §3.1: a server must refuse DATA without a valid
                // recipient. One that says 354 wants a body we will not
                // send: the connection is no longer in step.
                self.broken = Some(format!(
                    "{} accepted DATA without a recipient",
                    self.target.host
                ));
                return fill_missing(outcomes, &Outcome::temp("server out of step"));
            }
            Ok(_) => self.message(body).await,
            Err(e @ StepError::Reply { .. }) => {
                // Expected when no recipient was accepted; either way the
                // transaction is over (RFC 5321 §4.1.1.5).
                let _ = self.step(Stage::Rset, "RSET\r\n".to_string()).await;
                if accepted.is_empty() {
                    return fill_missing(outcomes, &e.into_outcome());
                }
                Err(e)
            }
            Err(e) => Err(e),
        };
        let outcome = match result {
            Ok(reply) => Outcome::Delivered { reply },
            Err(e) => e.into_outcome(),
        };
        for i in accepted {
            outcomes[i] = Some(outcome.clone());
        }
    }
}
