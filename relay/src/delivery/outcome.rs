//! The result of one delivery attempt for one recipient.

use std::fmt;

/// What happened to one recipient. `reason` is the remote reply verbatim
/// when there is one (`550 5.1.1 <bob@x>: Recipient address rejected`),
/// our own words otherwise (`connection refused by 127.0.0.2:25`); it is
/// what a bounce quotes as the diagnostic and what the queue logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The server took responsibility for the message (2xx).
    Delivered { reply: String },
    /// Try again later (4xx, network trouble, timeouts, DNS failures).
    TempFail { reason: String },
    /// Do not try again: bounce (5xx, NXDOMAIN, null MX).
    PermFail { reason: String },
}

impl Outcome {
    pub(crate) fn temp(reason: impl Into<String>) -> Self {
        Outcome::TempFail {
            reason: reason.into(),
        }
    }

    pub(crate) fn perm(reason: impl Into<String>) -> Self {
        Outcome::PermFail {
            reason: reason.into(),
        }
    }

    /// The outcome a reply gives: RFC 5321 §4.2.1, the first digit decides.
    /// 2xx is success, 4xx transient, 5xx permanent. A 1xx or 3xx where a
    /// completion reply was due is a protocol error on the server's side,
    /// and anything else is not SMTP: both are worth another try later
    /// rather than a bounce.
    pub(crate) fn from_reply(code: u16, reply: impl Into<String>) -> Self {
        let reply = reply.into();
        match code / 100 {
            2 => Outcome::Delivered { reply },
            5 => Outcome::PermFail { reason: reply },
            4 => Outcome::TempFail { reason: reply },
            _ => Outcome::TempFail {
                reason: format!("unexpected reply: {reply}"),
            },
        }
    }

    /// A short fixed label for metrics and structured logs.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Outcome::Delivered { .. } => "delivered",
            Outcome::TempFail { .. } => "deferred",
            Outcome::PermFail { .. } => "failed",
        }
    }

    /// The reply or reason, whichever this outcome carries.
    pub(crate) fn text(&self) -> &str {
        match self {
            Outcome::Delivered { reply } => reply,
            Outcome::TempFail { reason } | Outcome::PermFail { reason } => reason,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind(), self.text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_digit_of_a_reply_decides() {
        let cases = [
            (
                250,
                "250 2.0.0 Ok: queued as 1234",
                Outcome::Delivered {
                    reply: "250 2.0.0 Ok: queued as 1234".into(),
                },
            ),
            (
                251,
                "251 2.1.5 forwarded",
                Outcome::Delivered {
                    reply: "251 2.1.5 forwarded".into(),
                },
            ),
            (
                421,
                "421 4.3.2 shutting down",
                Outcome::temp("421 4.3.2 shutting down"),
            ),
            (
                451,
                "451 4.7.1 greylisted",
                Outcome::temp("451 4.7.1 greylisted"),
            ),
            (
                452,
                "452 4.5.3 too many recipients",
                Outcome::temp("452 4.5.3 too many recipients"),
            ),
            (
                550,
                "550 5.1.1 <bob@x>: Recipient address rejected",
                Outcome::perm("550 5.1.1 <bob@x>: Recipient address rejected"),
            ),
            (554, "554 5.7.1 no", Outcome::perm("554 5.7.1 no")),
            (
                354,
                "354 go ahead",
                Outcome::temp("unexpected reply: 354 go ahead"),
            ),
            (199, "199 what", Outcome::temp("unexpected reply: 199 what")),
            (
                0,
                "000 nonsense",
                Outcome::temp("unexpected reply: 000 nonsense"),
            ),
        ];
        for (code, text, want) in cases {
            assert_eq!(Outcome::from_reply(code, text), want, "{code}");
        }
    }

    #[test]
    fn display_names_the_kind_and_the_reason() {
        assert_eq!(
            Outcome::perm("550 5.1.1 no such user").to_string(),
            "failed: 550 5.1.1 no such user"
        );
        assert_eq!(Outcome::temp("x").kind(), "deferred");
    }
}
