//! Sending marked messages through a test's relay and waiting for what
//! became of them: arrived at a peer, or deferred.

use std::time::Duration;

use mailrelay::spool::RecipientState;

use super::manifests::REMOTE_SENDER;
use super::{Env, LOCALHOST, wait_for};

/// How long a message may take to arrive or be tried: generous, never a
/// timing claim.
const WITHIN: Duration = Duration::from_secs(60);

/// A message whose subject and body name it.
pub fn content(marker: &str) -> String {
    format!("From: <{REMOTE_SENDER}>\r\nSubject: delivery {marker}\r\n\r\nbody of {marker}\r\n")
}

/// Send one marked message over the smtp listener, from 127.0.0.1; its
/// queue id.
#[track_caller]
pub fn send(env: &Env, from: &str, to: &str, marker: &str) -> String {
    let mut smtp = env.smtp_from(LOCALHOST);
    let sent = smtp.send_mail(from, &[to], &content(marker));
    smtp.quit();
    sent.queue_id()
        .unwrap_or_else(|| panic!("{marker} from {from} to {to} was not queued: {sent:?}"))
}

/// Wait until the message for `rcpt` has been tried and deferred at
/// least `attempts` times; its last reply.
#[track_caller]
pub fn wait_deferred(env: &Env, rcpt: &str, attempts: u32) -> String {
    wait_for(
        WITHIN,
        || {
            super::spool::states(&env.spool_dir())
                .into_iter()
                .find_map(|q| {
                    let i = q.envelope.recipients.iter().position(|r| r == rcpt)?;
                    match &q.recipients[i] {
                        RecipientState::Deferred {
                            attempts: n,
                            last_reply,
                            ..
                        } if *n >= attempts => Some(last_reply.clone()),
                        _ => None,
                    }
                })
        },
        || {
            format!(
                "{rcpt} was not deferred {attempts} times\n{}",
                env.relay.log_text()
            )
        },
    )
}

/// Wait until a peer's log (`seen`: lines, `BODY: ...` for a message, as
/// the scripted test server keeps it) shows the message `marker`; the log
/// then.
#[track_caller]
pub fn wait_body(env: &Env, marker: &str, seen: impl Fn() -> Vec<String>) -> Vec<String> {
    wait_for(
        WITHIN,
        || {
            let lines = seen();
            lines
                .iter()
                .any(|l| l.starts_with("BODY:") && l.contains(marker))
                .then_some(lines)
        },
        || {
            format!(
                "{marker} did not arrive: {:?}\n{}",
                seen(),
                env.relay.log_text()
            )
        },
    )
}

/// A test server's transcript shows STARTTLS done (`TLS`) before the
/// first MAIL command.
#[track_caller]
pub fn assert_mail_after_starttls(seen: &[String]) {
    let tls_at = seen.iter().position(|l| l == "TLS").expect("TLS");
    let mail_at = seen
        .iter()
        .position(|l| l.starts_with("C: MAIL"))
        .expect("MAIL");
    assert!(tls_at < mail_at, "MAIL only after STARTTLS: {seen:?}");
}
