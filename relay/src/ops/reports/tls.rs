//! A TLS-RPT row from one outbound session's TLS outcome, pure.
//!
//! A session is one connection to an MX host: counted when it is opened
//! (or fails to open), not per message, so a kept connection that carries
//! several messages counts once. A host the policy rules out before any
//! connection (an MX not in the MTA-STS `mx` list, a failed DANE lookup)
//! counts as a failed session too: that is what the domain's owner needs
//! to see.
//!
//! Without a policy (`no-policy-found`) a session counts as a success when
//! it was encrypted, checked or not: opportunistic TLS asks no more. One in
//! clear text counts as a `starttls-not-supported` failure (or the reason
//! STARTTLS failed, when it was offered and failed), so that the domain
//! learns that its mail travels unencrypted.

use std::net::IpAddr;

use mailrelay_crds::reports::{TlsFailure, TlsPolicyType, TlsRow};

use crate::delivery::tls_policy::decide::{HostTlsa, TlsPlan, TlsSeen, Verdict};

/// The policy a row is about: type, the policy as published, MX patterns.
pub(crate) fn policy_of(plan: &TlsPlan) -> (TlsPolicyType, Vec<String>, Vec<String>) {
    match plan {
        TlsPlan::Sts(p) => {
            let mut lines = vec!["version: STSv1".to_string(), format!("mode: {}", p.mode)];
            lines.extend(p.mx.iter().map(|m| format!("mx: {m}")));
            lines.push(format!("max_age: {}", p.max_age));
            (TlsPolicyType::Sts, lines, p.mx.clone())
        }
        TlsPlan::DaneHost(HostTlsa::Records(records)) => (
            TlsPolicyType::Tlsa,
            records
                .iter()
                .map(|r| {
                    format!(
                        "{} {} {} {}",
                        r.usage,
                        r.selector,
                        r.matching,
                        mailrelay_crds::configformat::hex(&r.data)
                    )
                })
                .collect(),
            Vec::new(),
        ),
        TlsPlan::DaneHost(_) => (TlsPolicyType::Tlsa, Vec::new(), Vec::new()),
        TlsPlan::Dane { fallback, .. } => policy_of(fallback),
        // Required TLS is our own configuration, not the domain's policy.
        TlsPlan::Opportunistic | TlsPlan::Required => {
            (TlsPolicyType::NoPolicyFound, Vec::new(), Vec::new())
        }
    }
}

/// Whether a session that ended up `seen` met `plan` (the host's).
fn succeeded(plan: &TlsPlan, seen: &TlsSeen) -> bool {
    match seen {
        TlsSeen::Verified | TlsSeen::Unverified { cert: Ok(()) } => true,
        TlsSeen::Unverified { cert: Err(_) } => matches!(plan, TlsPlan::Opportunistic),
        TlsSeen::Clear | TlsSeen::ClearAfterFailure(_) | TlsSeen::Failed(_) => false,
    }
}

/// RFC 8460 §4.3 result type for a session under `plan` (the host's) that
/// ended up `seen` (`None`: ruled out before connecting) and fell short
/// for `reason`.
pub(crate) fn result_type(plan: &TlsPlan, seen: Option<&TlsSeen>, reason: &str) -> &'static str {
    let text = match seen {
        None => {
            return match plan {
                // A bogus or failed TLSA or MX lookup (RFC 7672 §2.2).
                TlsPlan::DaneHost(_) | TlsPlan::Dane { .. } => "dnssec-invalid",
                // An MX host not in the policy's `mx` list.
                _ => "validation-failure",
            };
        }
        Some(TlsSeen::Clear) => return "starttls-not-supported",
        Some(TlsSeen::Verified | TlsSeen::Unverified { cert: Ok(()) }) => reason,
        Some(TlsSeen::ClearAfterFailure(e) | TlsSeen::Failed(e)) => e.as_str(),
        Some(TlsSeen::Unverified { cert: Err(e) }) => e.as_str(),
    };
    if let TlsPlan::DaneHost(HostTlsa::Failed(_)) = plan {
        return "dnssec-invalid";
    }
    let t = text.to_ascii_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| t.contains(w));
    if has(&["does not offer starttls", "starttls not offered"]) {
        "starttls-not-supported"
    } else if has(&["expired"]) {
        "certificate-expired"
    } else if has(&["not valid for name", "notvalidforname"]) {
        "certificate-host-mismatch"
    } else if has(&[
        "unknownissuer",
        "unknown issuer",
        "unknownca",
        "badsignature",
        "self-signed",
        "selfsigned",
        "not trusted",
    ]) {
        "certificate-not-trusted"
    } else if matches!(plan, TlsPlan::DaneHost(_)) {
        // No TLSA record of the RRset matched the chain (RFC 8460 §4.3.1).
        "tlsa-invalid"
    } else {
        "validation-failure"
    }
}

/// The row for one session with `host` at `ip` (or one ruled out before
/// connecting, `seen` `None`) for mail to `domain`, under `plan` (the
/// host's), decided `verdict`. `None`: nothing to count (a host admitted,
/// whose connection is counted when it is made).
pub(crate) fn row(
    domain: &str,
    plan: &TlsPlan,
    host: &str,
    ip: Option<IpAddr>,
    verdict: &Verdict,
    seen: Option<&TlsSeen>,
) -> Option<TlsRow> {
    let failure = match (verdict, seen) {
        (Verdict::Deliver, None) => return None,
        (Verdict::Deliver, Some(s)) if succeeded(plan, s) => None,
        (Verdict::Deliver, Some(s)) => Some(match s {
            TlsSeen::Clear => "STARTTLS not offered".to_string(),
            TlsSeen::ClearAfterFailure(e) | TlsSeen::Failed(e) => e.clone(),
            TlsSeen::Unverified { cert: Err(e) } => e.clone(),
            _ => String::new(),
        }),
        (Verdict::DeliverAndReport(why) | Verdict::Defer(why), _) => Some(why.clone()),
    };
    let (policy_type, policy_string, mx_host) = policy_of(plan);
    let failures = match failure {
        None => Vec::new(),
        Some(why) => vec![TlsFailure {
            result_type: result_type(plan, seen, &why).into(),
            sending_mta_ip: None,
            receiving_mx_hostname: host.to_string(),
            receiving_ip: ip,
            additional_information: None,
            count: 1,
        }],
    };
    Some(TlsRow {
        policy_domain: domain.to_ascii_lowercase(),
        policy_type,
        policy_string,
        mx_host,
        successes: u64::from(failures.is_empty()),
        failures,
    })
}
