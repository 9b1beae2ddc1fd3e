//! Pure decisions of the delivery manager: what a recipient's outcome makes
//! of its state, which recipients are due, and what a bounce says.

use jiff::Timestamp;

use super::dsn::{Action, RecipientReport};
use super::schedule::{Next, Schedule};
use crate::delivery::Outcome;
use crate::spool::{Queued, RecipientState};

/// The recipients of `q` to try now (their indices), and the earliest time
/// a deferred one falls due later.
pub(crate) fn due(q: &Queued, now: i64) -> (Vec<usize>, Option<i64>) {
    let mut due = Vec::new();
    let mut later: Option<i64> = None;
    for (i, state) in q.recipients.iter().enumerate() {
        match state {
            RecipientState::Pending => due.push(i),
            RecipientState::Deferred { next_attempt, .. } if *next_attempt <= now => due.push(i),
            RecipientState::Deferred { next_attempt, .. } => {
                later = Some(later.map_or(*next_attempt, |l| l.min(*next_attempt)));
            }
            RecipientState::Delivered { .. } | RecipientState::Failed { .. } => {}
        }
    }
    (due, later)
}

fn attempts(state: &RecipientState) -> u32 {
    match state {
        RecipientState::Deferred { attempts, .. } => *attempts,
        _ => 0,
    }
}

/// The new state of a recipient after an attempt.
pub(crate) fn after_attempt(
    previous: &RecipientState,
    outcome: &Outcome,
    schedule: &Schedule,
    received_at: Timestamp,
    now: Timestamp,
    rng: &mut impl rand::Rng,
) -> RecipientState {
    match outcome {
        Outcome::Delivered { reply } => RecipientState::Delivered {
            reply: reply.clone(),
        },
        Outcome::PermFail { reason } => RecipientState::Failed {
            reply: reason.clone(),
        },
        Outcome::TempFail { reason } => {
            let attempts = attempts(previous).saturating_add(1);
            match schedule.next_attempt(attempts, received_at, now, rng) {
                Next::RetryAt(at) => RecipientState::Deferred {
                    attempts,
                    next_attempt: at.as_second(),
                    last_reply: reason.clone(),
                },
                Next::Expire => expired(reason),
            }
        }
    }
}

/// The final state of a recipient whose message outlived the queue lifetime.
pub(crate) fn expired(last_reply: &str) -> RecipientState {
    RecipientState::Failed {
        reply: format!("4.4.7 message expired in the queue; last reply: {last_reply}"),
    }
}

/// The last reply of a not-yet-final recipient, for an expiry notice.
pub(crate) fn last_reply(state: &RecipientState) -> &str {
    match state {
        RecipientState::Deferred { last_reply, .. } => last_reply,
        _ => "none (never attempted)",
    }
}

/// The enhanced status code in a reply (`550 5.1.1 ...` → `5.1.1`, or
/// our own `5.1.10 ...`), if it has one.
pub(crate) fn enhanced_code(reply: &str) -> Option<&str> {
    reply.split_whitespace().take(2).find(|w| {
        let parts: Vec<&str> = w.split('.').collect();
        parts.len() == 3
            && matches!(parts[0], "2" | "4" | "5")
            && parts[1..]
                .iter()
                .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// The enhanced status code in a reply (`550 5.1.1 ...` → `5.1.1`), or one
/// made from its class.
pub(crate) fn status_of(reply: &str, failed: bool) -> String {
    match enhanced_code(reply) {
        Some(code) => code.to_string(),
        None if failed => "5.0.0".into(),
        None => "4.0.0".into(),
    }
}

/// DSN reports for the failed recipients of a finished message.
pub(crate) fn failure_reports(q: &Queued, now: Timestamp) -> Vec<RecipientReport> {
    q.recipients
        .iter()
        .zip(&q.envelope.recipients)
        .filter_map(|(state, rcpt)| match state {
            RecipientState::Failed { reply } => Some(RecipientReport {
                recipient: rcpt.clone(),
                action: Action::Failed,
                status: status_of(reply, true),
                remote_mta: None,
                diagnostic: Some(reply.clone()),
                last_attempt: Some(now),
                will_retry_until: None,
            }),
            _ => None,
        })
        .collect()
}

/// Delay-warning reports for the recipients still being retried.
pub(crate) fn delay_reports(q: &Queued, now: Timestamp, until: Timestamp) -> Vec<RecipientReport> {
    q.recipients
        .iter()
        .zip(&q.envelope.recipients)
        .filter_map(|(state, rcpt)| match state {
            RecipientState::Deferred { last_reply, .. } => Some(RecipientReport {
                recipient: rcpt.clone(),
                action: Action::Delayed,
                status: status_of(last_reply, false),
                remote_mta: None,
                diagnostic: Some(last_reply.clone()),
                last_attempt: Some(now),
                will_retry_until: Some(until),
            }),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailrelay_crds::config::QueueConfig;
    use rand::SeedableRng;

    fn schedule() -> Schedule {
        Schedule::new(&QueueConfig {
            retry_schedule_secs: vec![60, 600],
            jitter_percent: 0,
            lifetime_secs: 3600,
            delay_warning_secs: None,
            storage: None,
            suspend_after: 5,
            probe_secs: 30,
            max_probe_secs: 1800,
        })
        .unwrap()
    }

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    #[test]
    fn outcomes_become_states_on_the_schedule() {
        let s = schedule();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let temp = Outcome::temp("451 4.3.0 try later");
        let first = after_attempt(&RecipientState::Pending, &temp, &s, ts(0), ts(10), &mut rng);
        assert_eq!(
            first,
            RecipientState::Deferred {
                attempts: 1,
                next_attempt: 70,
                last_reply: "451 4.3.0 try later".into()
            }
        );
        let second = after_attempt(&first, &temp, &s, ts(0), ts(70), &mut rng);
        assert_eq!(
            second,
            RecipientState::Deferred {
                attempts: 2,
                next_attempt: 670,
                last_reply: "451 4.3.0 try later".into()
            }
        );
        // The next wait would end after the lifetime: fail now.
        let last = after_attempt(&second, &temp, &s, ts(0), ts(3500), &mut rng);
        assert!(
            matches!(last, RecipientState::Failed { ref reply } if reply.starts_with("4.4.7")),
            "{last:?}"
        );
        let ok = after_attempt(
            &second,
            &Outcome::Delivered {
                reply: "250 ok".into(),
            },
            &s,
            ts(0),
            ts(80),
            &mut rng,
        );
        assert_eq!(
            ok,
            RecipientState::Delivered {
                reply: "250 ok".into()
            }
        );
        let perm = after_attempt(
            &RecipientState::Pending,
            &Outcome::perm("550 5.1.1 no"),
            &s,
            ts(0),
            ts(1),
            &mut rng,
        );
        assert_eq!(
            perm,
            RecipientState::Failed {
                reply: "550 5.1.1 no".into()
            }
        );
    }

    #[test]
    fn status_codes_come_from_the_reply() {
        assert_eq!(status_of("550 5.1.1 <bob@x>: unknown", true), "5.1.1");
        assert_eq!(status_of("550 user unknown", true), "5.0.0");
        assert_eq!(status_of("4.4.7 message expired", true), "4.4.7");
        assert_eq!(
            status_of("5.1.10 x.test: domain does not accept mail", true),
            "5.1.10"
        );
        assert_eq!(status_of("connection refused", false), "4.0.0");
    }
}
