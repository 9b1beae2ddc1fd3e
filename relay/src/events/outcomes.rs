//! The events of the delivery side: what an attempt, a suspended
//! destination or the end of the queue lifetime made of a recipient.

use super::Events;
use super::build::{self, Attempted, Peer};
use super::record::{Event, EventType};
use crate::delivery::Outcome;
use crate::spool::{Queued, RecipientState};

/// The attempt's number for a recipient in `previous` state.
pub(crate) fn attempt_number(previous: &RecipientState) -> u32 {
    match previous {
        RecipientState::Deferred { attempts, .. } => attempts.saturating_add(1),
        _ => 1,
    }
}

/// The kind of event an outcome and the state it led to make: a
/// temporary failure past the lifetime is an expiry, not a bounce.
pub(crate) fn kind_of(outcome: &Outcome, state: &RecipientState) -> EventType {
    match (outcome, state) {
        (Outcome::Delivered { .. }, _) => EventType::Delivery,
        (Outcome::TempFail { .. }, RecipientState::Failed { .. }) => EventType::Expiration,
        (_, RecipientState::Failed { .. }) => EventType::Bounce,
        _ => EventType::TransientFailure,
    }
}

/// What happened to recipient `index` of `q` after one attempt.
pub(crate) struct AfterAttempt<'a> {
    pub index: usize,
    pub outcome: &'a Outcome,
    pub state: &'a RecipientState,
    pub route: &'a str,
    pub class: &'a str,
    pub peer: Option<&'a Peer>,
    pub message_id: Option<&'a str>,
}

pub(crate) fn after_attempt(events: &Events, q: &Queued, a: &AfterAttempt<'_>) -> Event {
    build::attempted(
        events,
        q,
        &Attempted {
            kind: kind_of(a.outcome, a.state),
            index: a.index,
            attempt: attempt_number(&q.recipients[a.index]),
            route: a.route,
            reply: a.outcome.text(),
            class: a.class,
            peer: a.peer,
            message_id: a.message_id,
        },
    )
}

/// Expiry of recipients never attempted again (the lifetime ran out
/// while they waited): their last reply stands as the reason.
pub(crate) fn expired(
    events: &Events,
    q: &Queued,
    updates: &[(usize, RecipientState)],
    class_of: impl Fn(&str) -> &'static str,
) -> Vec<Event> {
    updates
        .iter()
        .map(|(i, state)| {
            let reply = match state {
                RecipientState::Failed { reply } => reply.as_str(),
                _ => "",
            };
            let attempts = match &q.recipients[*i] {
                RecipientState::Deferred { attempts, .. } => *attempts,
                _ => 0,
            };
            build::attempted(
                events,
                q,
                &Attempted {
                    kind: EventType::Expiration,
                    index: *i,
                    attempt: attempts,
                    route: "",
                    reply,
                    class: class_of(reply),
                    peer: None,
                    message_id: None,
                },
            )
        })
        .collect()
}

/// A delay notice went to the sender about these recipients.
pub(crate) fn delay_warnings(
    events: &Events,
    q: &Queued,
    reports: &[crate::queue::dsn::RecipientReport],
) -> Vec<Event> {
    reports
        .iter()
        .filter_map(|r| {
            let index = q
                .envelope
                .recipients
                .iter()
                .position(|a| *a == r.recipient)?;
            let mut e = build::about(
                events,
                EventType::DelayWarning,
                &q.id,
                &q.envelope,
                Some(index),
                0,
                "",
            );
            e.reply = r.diagnostic.as_deref().map(super::record::Reply::parse);
            e.remote_host.clone_from(&r.remote_mta);
            Some(e)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outcome_and_the_new_state_decide_the_kind_of_event() {
        let deferred = RecipientState::Deferred {
            attempts: 2,
            next_attempt: 0,
            last_reply: "451".into(),
        };
        let failed = RecipientState::Failed { reply: "x".into() };
        let delivered = RecipientState::Delivered {
            reply: "250".into(),
        };
        let cases = [
            (
                Outcome::Delivered {
                    reply: "250".into(),
                },
                &delivered,
                EventType::Delivery,
            ),
            (Outcome::perm("550 5.1.1 no"), &failed, EventType::Bounce),
            (
                Outcome::temp("451 later"),
                &deferred,
                EventType::TransientFailure,
            ),
            (Outcome::temp("451 later"), &failed, EventType::Expiration),
        ];
        for (outcome, state, kind) in cases {
            assert_eq!(kind_of(&outcome, state), kind, "{outcome}");
        }
        assert_eq!(attempt_number(&RecipientState::Pending), 1);
        assert_eq!(attempt_number(&deferred), 3);
    }
}
