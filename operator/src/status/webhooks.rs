//! The `EventWebhookReady` condition of a Relay or MailDomain with event
//! webhooks: their signing keys are in their Secrets, or which are not;
//! and the pods reach them, or which they do not (`fleet::health`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::{Cond, State, list_message, merge};
use crate::webhook_keys::KeyCheck;

pub(crate) const CONDITION: &str = "EventWebhookReady";

/// How many problems the message lists.
const LISTED: usize = 10;

/// The condition for these key checks and the pods' problem lines
/// (webhooks that fail); `None` without webhooks.
pub(crate) fn condition(checks: &[(String, KeyCheck)], unreachable: &[String]) -> Option<Cond> {
    if checks.is_empty() {
        return None;
    }
    let problems: Vec<(&'static str, String)> = checks
        .iter()
        .filter_map(|(field, c)| match c {
            KeyCheck::Present => None,
            KeyCheck::Problem { reason, message } => Some((*reason, format!("{field}: {message}"))),
        })
        .collect();
    Some(match problems.first() {
        None if !unreachable.is_empty() => Cond::new(
            CONDITION,
            State::False,
            "WebhookUnreachable",
            list_message(
                "webhooks the relay pods cannot deliver events to; the events wait in the pods' event logs",
                unreachable,
                LISTED,
            ),
        ),
        None => Cond::new(
            CONDITION,
            State::True,
            "KeysPresent",
            "every webhook's signing key is in its Secret",
        ),
        Some((reason, _)) => {
            let lines: Vec<String> = problems.iter().map(|(_, m)| m.clone()).collect();
            Cond::new(
                CONDITION,
                State::False,
                reason,
                list_message(
                    "webhooks without a signing key; their events wait in the relays' event logs",
                    &lines,
                    LISTED,
                ),
            )
        }
    })
}

/// Add (or refresh) the condition in `conditions`, merged with the old
/// one of its type like the others.
pub(crate) fn add(
    conditions: &mut Vec<Condition>,
    old: &[Condition],
    cond: Option<Cond>,
    generation: Option<i64>,
    now: &Time,
) {
    conditions.retain(|c| c.type_ != CONDITION);
    if let Some(c) = cond {
        conditions.extend(merge(old, &[c], generation, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(reason: &'static str, message: &str) -> KeyCheck {
        KeyCheck::Problem {
            reason,
            message: message.into(),
        }
    }

    #[test]
    fn no_webhook_no_condition_and_the_first_problem_gives_the_reason() {
        assert_eq!(condition(&[], &[]), None);
        let ok = condition(
            &[("spec.events.webhook.secret".into(), KeyCheck::Present)],
            &[],
        )
        .unwrap();
        assert_eq!((ok.state, ok.reason), (State::True, "KeysPresent"));
        let bad = condition(
            &[
                ("spec.events.webhooks[0].secret".into(), KeyCheck::Present),
                (
                    "spec.events.webhooks[1].secret".into(),
                    problem("SecretNotFound", "Secret hook not found"),
                ),
            ],
            &["http://a/: refused".to_string()],
        )
        .unwrap();
        assert_eq!((bad.state, bad.reason), (State::False, "SecretNotFound"));
        assert!(
            bad.message
                .contains("spec.events.webhooks[1].secret: Secret hook not found"),
            "{}",
            bad.message
        );
        let down = condition(
            &[("spec.events.webhooks[0].secret".into(), KeyCheck::Present)],
            &["http://hooks.example/in: connection refused (pod r-0, failing)".to_string()],
        )
        .unwrap();
        assert_eq!(
            (down.state, down.reason),
            (State::False, "WebhookUnreachable")
        );
        assert!(
            down.message.contains("connection refused (pod r-0"),
            "{}",
            down.message
        );
    }
}
