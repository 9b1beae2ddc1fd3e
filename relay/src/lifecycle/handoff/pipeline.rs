//! The sender's bookkeeping of a pipelined hand-off, without sockets:
//! which message each reply is for, and what it means for the local copy.
//!
//! The server answers in the order the messages went out, so the messages
//! in flight form a queue and each reply settles the oldest. A 250 means
//! the peer has the message on disk: the local copy goes. Any other reply
//! keeps it; 421 and 535 also end the session (the peer closes after
//! them). When a session ends for any reason, whatever is still in flight
//! is kept: the peer may or may not have stored it, and a duplicate is the
//! safe side of not knowing.

use std::collections::VecDeque;

use crate::delivery::wire::Reply;
use crate::spool::QueueId;

/// What one reply means for the message it answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// On the peer's disk, under this id there: remove ours.
    Taken { peer_id: String },
    /// Refused or failed there: keep ours, go on with the next.
    Kept,
    /// Refused, and the peer closes the session: keep ours and stop.
    Ended,
}

impl Verdict {
    pub(crate) fn of(reply: &Reply) -> Verdict {
        match reply.code {
            250 => Verdict::Taken {
                peer_id: reply
                    .lines
                    .first()
                    .and_then(|l| l.split_ascii_whitespace().nth(1))
                    .unwrap_or_default()
                    .to_string(),
            },
            421 | 535 => Verdict::Ended,
            _ => Verdict::Kept,
        }
    }
}

/// A reply arrived while no message was in flight: the peer is not
/// speaking the protocol, and nothing it says can be matched any more.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a reply with no message in flight: {0}")]
pub(crate) struct Unexpected(pub String);

/// The messages of one session between sending and their reply, and what
/// the replies so far decided.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    in_flight: VecDeque<QueueId>,
    /// Replies that were 250s: what the peer acknowledged.
    acknowledged: usize,
}

impl Ledger {
    /// `id` went out (its bytes follow this call, so its reply cannot come
    /// before it is known here).
    pub(crate) fn sent(&mut self, id: QueueId) {
        self.in_flight.push_back(id);
    }

    /// Nothing awaits a reply.
    pub(crate) fn is_idle(&self) -> bool {
        self.in_flight.is_empty()
    }

    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    pub(crate) fn acknowledged(&self) -> usize {
        self.acknowledged
    }

    /// The next reply: the message it settles and what it decided.
    pub(crate) fn answer(&mut self, reply: &Reply) -> Result<(QueueId, Verdict), Unexpected> {
        let id = self
            .in_flight
            .pop_front()
            .ok_or_else(|| Unexpected(reply.text()))?;
        let verdict = Verdict::of(reply);
        if matches!(verdict, Verdict::Taken { .. }) {
            self.acknowledged += 1;
        }
        Ok((id, verdict))
    }

    /// The session is over: every message still in flight, oldest first,
    /// to be kept.
    pub(crate) fn abandon(&mut self) -> Vec<QueueId> {
        self.in_flight.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> QueueId {
        QueueId::from_parts(1_700_000_000_000, n, 0)
    }

    fn reply(code: u16, text: &str) -> Reply {
        Reply {
            code,
            lines: vec![text.to_string()],
        }
    }

    fn taken(peer: &str) -> Verdict {
        Verdict::Taken {
            peer_id: peer.into(),
        }
    }

    #[test]
    fn replies_settle_the_oldest_message_in_flight() {
        let mut ledger = Ledger::default();
        for n in 1..=4 {
            ledger.sent(id(n));
        }
        assert_eq!(ledger.in_flight(), 4);
        let ok = |peer: &str| reply(250, &format!("2.0.0 {peer} queued (handed off from x)"));
        assert_eq!(ledger.answer(&ok("P1")), Ok((id(1), taken("P1"))));
        assert_eq!(
            ledger.answer(&reply(452, "4.3.1 insufficient system storage")),
            Ok((id(2), Verdict::Kept))
        );
        // More go out while replies come back.
        ledger.sent(id(5));
        assert_eq!(ledger.answer(&ok("P3")), Ok((id(3), taken("P3"))));
        assert_eq!(
            ledger.answer(&reply(501, "5.6.0 transfer is not base64url")),
            Ok((id(4), Verdict::Kept))
        );
        assert_eq!(ledger.answer(&ok("P5")), Ok((id(5), taken("P5"))));
        assert!(ledger.is_idle());
        assert_eq!(ledger.acknowledged(), 3, "only the 250s");
        assert!(ledger.abandon().is_empty());
    }

    #[test]
    fn an_ending_reply_keeps_everything_still_in_flight() {
        let mut ledger = Ledger::default();
        for n in 1..=5 {
            ledger.sent(id(n));
        }
        assert_eq!(
            ledger.answer(&reply(250, "2.0.0 P1 queued")),
            Ok((id(1), taken("P1")))
        );
        assert_eq!(
            ledger.answer(&reply(535, "5.7.8 hand-off authentication failed")),
            Ok((id(2), Verdict::Ended))
        );
        assert_eq!(ledger.abandon(), vec![id(3), id(4), id(5)]);
        assert_eq!(ledger.acknowledged(), 1);
        assert!(ledger.is_idle());
        assert_eq!(
            Verdict::of(&reply(421, "4.3.0 shutting down")),
            Verdict::Ended
        );
    }

    #[test]
    fn a_reply_for_nothing_is_unexpected() {
        let mut ledger = Ledger::default();
        assert_eq!(
            ledger.answer(&reply(250, "2.0.0 P queued")),
            Err(Unexpected("250 2.0.0 P queued".into()))
        );
        ledger.sent(id(1));
        assert!(ledger.answer(&reply(250, "2.0.0 P queued")).is_ok());
        assert!(ledger.answer(&reply(250, "2.0.0 Q queued")).is_err());
        assert_eq!(ledger.acknowledged(), 1, "an unmatched 250 counts nothing");
    }

    #[test]
    fn a_250_without_an_id_still_takes_the_message() {
        assert_eq!(Verdict::of(&reply(250, "")), taken(""));
    }
}
