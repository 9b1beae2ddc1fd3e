//! Status of the three kinds as pure functions of what a reconcile found:
//! no client, no clock (the caller passes `now`). The same inputs give the
//! same status, so a reconcile that changed nothing writes nothing — no
//! timestamps that move every pass, no loop of status writes triggering
//! reconciles.

pub(crate) mod blocklist;
pub(crate) mod domain;
pub(crate) mod relay;
pub(crate) mod webhooks;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A condition's status, as the API spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    True,
    False,
    Unknown,
}

impl State {
    pub(crate) fn of(b: bool) -> Self {
        if b { Self::True } else { Self::False }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

/// A condition as a reconcile decides it, before it meets the old status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Cond {
    pub type_: &'static str,
    pub state: State,
    /// CamelCase, stable: what tools match on.
    pub reason: &'static str,
    pub message: String,
}

impl Cond {
    pub(crate) fn new(
        type_: &'static str,
        state: State,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            state,
            reason,
            message: message.into(),
        }
    }
}

/// Longest condition message the API accepts (`Condition.message` is
/// limited to 32768 bytes); long problem lists are cut well before it.
const MAX_MESSAGE: usize = 4096;

/// The conditions to write: `new` in order, each keeping the
/// `lastTransitionTime` of the old condition of its type when its status
/// did not change, else stamped `now`.
pub(crate) fn merge(
    old: &[Condition],
    new: &[Cond],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    new.iter()
        .map(|c| {
            let status = c.state.as_str().to_string();
            let since = old
                .iter()
                .find(|o| o.type_ == c.type_ && o.status == status)
                .map_or_else(|| now.clone(), |o| o.last_transition_time.clone());
            Condition {
                type_: c.type_.to_string(),
                status,
                reason: c.reason.to_string(),
                message: truncate(&c.message),
                observed_generation: generation,
                last_transition_time: since,
            }
        })
        .collect()
}

fn truncate(message: &str) -> String {
    if message.len() <= MAX_MESSAGE {
        return message.to_string();
    }
    let mut end = MAX_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
}

/// Problems as one message: the count, then each on its own line, at most
/// `limit` of them.
pub(crate) fn list_message(what: &str, items: &[String], limit: usize) -> String {
    let mut out = format!("{} {what}", items.len());
    for item in items.iter().take(limit) {
        out.push_str("\n- ");
        out.push_str(item);
    }
    if items.len() > limit {
        out.push_str(&format!("\n- and {} more", items.len() - limit));
    }
    out
}

/// The condition of `type_` in `conditions`, if any.
pub(crate) fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Did condition `type_` go to `state` (or change its reason or message
/// while in it) between `old` and `new`? Events are published on these
/// transitions only, never on every reconcile.
pub(crate) fn entered(old: &[Condition], new: &[Condition], type_: &str, state: State) -> bool {
    let Some(n) = find(new, type_) else {
        return false;
    };
    if n.status != state.as_str() {
        return false;
    }
    match find(old, type_) {
        None => true,
        Some(o) => o.status != n.status || o.reason != n.reason || o.message != n.message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Timestamp;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH))
    }

    #[test]
    fn transition_time_moves_only_when_the_status_changes() {
        let first = merge(
            &[],
            &[Cond::new("Ready", State::False, "Waiting", "0 of 1 ready")],
            Some(1),
            &at(100),
        );
        assert_eq!(first[0].last_transition_time, at(100));
        let same = merge(
            &first,
            &[Cond::new("Ready", State::False, "Waiting", "still 0 of 1")],
            Some(2),
            &at(200),
        );
        assert_eq!(
            same[0].last_transition_time,
            at(100),
            "same status keeps its time"
        );
        assert_eq!(same[0].observed_generation, Some(2));
        let flipped = merge(
            &same,
            &[Cond::new("Ready", State::True, "Ready", "1 of 1")],
            Some(2),
            &at(300),
        );
        assert_eq!(flipped[0].last_transition_time, at(300));
        assert_eq!(flipped[0].status, "True");
    }

    #[test]
    fn merging_twice_with_nothing_changed_gives_equal_conditions() {
        let conds = [
            Cond::new("Ready", State::True, "Ready", "ok"),
            Cond::new("Degraded", State::False, "AsExpected", ""),
        ];
        let a = merge(&[], &conds, Some(3), &at(1));
        let b = merge(&a, &conds, Some(3), &at(99));
        assert_eq!(a, b);
    }

    #[test]
    fn entered_fires_on_a_change_into_the_state_only() {
        let bad = merge(
            &[],
            &[Cond::new("ConfigValid", State::False, "InvalidSpec", "x")],
            None,
            &at(1),
        );
        let good = merge(
            &[],
            &[Cond::new("ConfigValid", State::True, "Compiled", "")],
            None,
            &at(1),
        );
        assert!(entered(&good, &bad, "ConfigValid", State::False));
        assert!(entered(&[], &bad, "ConfigValid", State::False));
        assert!(!entered(&bad, &bad, "ConfigValid", State::False));
        assert!(!entered(&bad, &good, "ConfigValid", State::False));
        let worse = merge(
            &bad,
            &[Cond::new("ConfigValid", State::False, "InvalidSpec", "y")],
            None,
            &at(2),
        );
        assert!(
            entered(&bad, &worse, "ConfigValid", State::False),
            "a new problem is news"
        );
    }

    #[test]
    fn long_lists_are_cut_with_a_count() {
        let items: Vec<String> = (0..5).map(|i| format!("p{i}")).collect();
        let m = list_message("problems", &items, 2);
        assert_eq!(m, "5 problems\n- p0\n- p1\n- and 3 more");
        assert!(truncate(&"é".repeat(MAX_MESSAGE)).len() <= MAX_MESSAGE + 3);
    }
}
