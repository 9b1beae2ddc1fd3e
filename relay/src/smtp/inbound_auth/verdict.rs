//! What to do with a message, given the recipients' policy and the
//! results: a pure function, so every row of the table is a unit test.

use mailrelay_crds::maildomain::InboundAuthPolicy;

use super::results::{AuthResults, Dkim, Dmarc, DmarcPolicy, Spf};
use crate::smtp::reply::Reply;

/// The decision for one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    Accept,
    /// Accept and mark it for the spam folder (`X-Spam-Flag: YES`).
    Quarantine,
    /// Refuse at the end of DATA (5xx).
    Reject(Reply),
    /// Try again later (4xx): DNS could not give an answer.
    Defer(Reply),
}

impl Action {
    /// For logs and metrics: a fixed word.
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            Action::Accept => "accept",
            Action::Quarantine => "quarantine",
            Action::Reject(_) => "reject",
            Action::Defer(_) => "defer",
        }
    }
}

/// One message goes to one or more hosted domains, each with its own
/// policy, and can only be refused or accepted as a whole at the end of
/// DATA. The strictest policy wins: the sender's domain said how its
/// forged mail should be treated, and one domain that enforces that is
/// enough reason to follow it. A message for no hosted domain (relayed
/// for a trusted client) is tagged.
pub(crate) fn strictest(
    policies: impl IntoIterator<Item = InboundAuthPolicy>,
) -> InboundAuthPolicy {
    policies.into_iter().max().unwrap_or(InboundAuthPolicy::Tag)
}

/// The action for `results` under `policy` (RFC 7489 §6.6.3, §6.7).
pub(crate) fn decide(policy: InboundAuthPolicy, r: &AuthResults) -> Action {
    let failed_policy = match (r.dmarc.result, r.dmarc.policy) {
        (Dmarc::Fail, Some(p)) => p,
        _ => DmarcPolicy::None,
    };
    match policy {
        InboundAuthPolicy::Accept => Action::Accept,
        // Tag never refuses, but a failure the sender's domain wants kept
        // out of the inbox is still marked so a filter can file it.
        InboundAuthPolicy::Tag => match failed_policy {
            DmarcPolicy::None => Action::Accept,
            DmarcPolicy::Quarantine | DmarcPolicy::Reject => Action::Quarantine,
        },
        InboundAuthPolicy::Enforce => enforce(r, failed_policy),
    }
}

fn enforce(r: &AuthResults, failed_policy: DmarcPolicy) -> Action {
    let from = r.dmarc.from_domain.as_deref().unwrap_or("the From: domain");
    if r.dmarc.result == Dmarc::TempError {
        // RFC 7489 §6.6.3: no record could be had; never taken as a pass.
        return Action::Defer(Reply::new(
            451,
            "4.7.0",
            format!("DNS error looking up the DMARC policy of {from}; try again later"),
        ));
    }
    if failed_policy == DmarcPolicy::None {
        return Action::Accept;
    }
    // A check that failed only for want of a DNS answer might have passed:
    // the sender should retry rather than be refused or spam-filed.
    if let Some(pending) = temporary_failure(r) {
        return Action::Defer(Reply::new(
            451,
            "4.7.0",
            format!("DMARC of {from} cannot be evaluated now ({pending}); try again later"),
        ));
    }
    match failed_policy {
        DmarcPolicy::Reject => Action::Reject(Reply::new(
            550,
            "5.7.1",
            clip(format!(
                "Message refused: {from} publishes DMARC p=reject and this message fails it: {}",
                failing_checks(r)
            )),
        )),
        DmarcPolicy::Quarantine | DmarcPolicy::None => Action::Quarantine,
    }
}

/// The checks that ended in a DNS temporary error.
fn temporary_failure(r: &AuthResults) -> Option<String> {
    let mut parts = Vec::new();
    if r.spf_mailfrom.result == Spf::TempError {
        parts.push("SPF temperror".to_string());
    }
    for d in r.dkim.iter().filter(|d| d.result == Dkim::TempError) {
        parts.push(format!(
            "DKIM temperror for d={}",
            d.domain.as_deref().unwrap_or("?")
        ));
    }
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// Why DMARC failed, in words a sender's postmaster can act on.
pub(crate) fn failing_checks(r: &AuthResults) -> String {
    let from = r.dmarc.from_domain.as_deref().unwrap_or("From:");
    let spf = &r.spf_mailfrom;
    let mut parts = vec![if spf.result == Spf::Pass && !r.dmarc.spf_aligned {
        format!("SPF pass for {} is not aligned with {from}", spf.identity)
    } else {
        format!("SPF {} for {}", spf.result.as_str(), spf.identity)
    }];
    if r.dkim.is_empty() {
        parts.push("no DKIM signature".into());
    }
    for d in r.dkim.iter().take(3) {
        let domain = d.domain.as_deref().unwrap_or("?");
        parts.push(match (d.result, &d.reason) {
            (Dkim::Pass, _) => format!("DKIM pass for d={domain} is not aligned with {from}"),
            (result, Some(reason)) => {
                format!("DKIM {} for d={domain} ({reason})", result.as_str())
            }
            (result, None) => format!("DKIM {} for d={domain}", result.as_str()),
        });
    }
    parts.join("; ")
}

/// A reply line stays well under the 512 octets of RFC 5321 §4.5.3.1.5.
fn clip(mut text: String) -> String {
    const MAX: usize = 400;
    if text.len() > MAX {
        let mut end = MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    text
}

#[cfg(test)]
#[path = "verdict_tests.rs"]
mod tests;
