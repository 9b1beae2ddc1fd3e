//! ARC chain validation of inbound mail (RFC 8617 §5.2): mail-auth's
//! outcome in the three words RFC 8617 §4.4 gives the `arc` method.

use mail_auth::{ArcOutput, DkimResult};

use super::results::{Arc, ArcCheck};

/// What an ARC sealer takes from the inbound checks (RFC 8617 §5.1):
/// the chain's status, which becomes the new seal's `cv=`, and our
/// `Authentication-Results:` field, which becomes the
/// ARC-Authentication-Results.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub chain: Arc,
    pub results: String,
}

/// What mail-auth found. Every way a chain can be broken — a changed body
/// under the newest ARC-Message-Signature (mail-auth says "neutral"), a
/// seal that does not verify, an ARC-Seal with `cv=fail`, missing or
/// misnumbered sets — is `fail`: RFC 8617 §5.2 has no other outcome for
/// a chain that does not validate.
pub(crate) fn arc_check(out: &ArcOutput<'_>) -> ArcCheck {
    match out.result() {
        DkimResult::Pass => ArcCheck {
            result: Arc::Pass,
            reason: None,
        },
        DkimResult::None => ArcCheck {
            result: Arc::None,
            reason: None,
        },
        DkimResult::Neutral(e)
        | DkimResult::Fail(e)
        | DkimResult::PermError(e)
        | DkimResult::TempError(e) => ArcCheck {
            result: Arc::Fail,
            reason: Some(e.to_string()),
        },
    }
}

/// No DNS answer in time: the chain cannot be shown to validate, so it
/// does not (RFC 8617 §4.4 has no temporary error).
pub(crate) fn timed_out() -> ArcCheck {
    ArcCheck {
        result: Arc::Fail,
        reason: Some("no DNS answer in time".into()),
    }
}

#[cfg(test)]
mod tests {
    use mail_auth::arc::ArcError;
    use mail_auth::{ArcOutput, DkimResult, DnsError, Error};

    use super::*;

    #[test]
    fn a_chain_that_does_not_validate_is_fail_whatever_mail_auth_calls_it() {
        let cases = [
            (DkimResult::Pass, Arc::Pass),
            (DkimResult::None, Arc::None),
            (
                DkimResult::Neutral(Error::Arc(ArcError::FailedBodyHashMatch)),
                Arc::Fail,
            ),
            (DkimResult::Fail(Error::Arc(ArcError::InvalidCV)), Arc::Fail),
            (
                DkimResult::PermError(Error::Arc(ArcError::BrokenChain)),
                Arc::Fail,
            ),
            (
                DkimResult::TempError(Error::Dns(DnsError::Resolver("timed out".into()))),
                Arc::Fail,
            ),
        ];
        for (result, expected) in cases {
            let check = arc_check(&ArcOutput::default().with_result(result.clone()));
            assert_eq!(check.result, expected, "{result:?}");
            assert_eq!(check.reason.is_some(), expected == Arc::Fail, "{result:?}");
        }
    }
}
