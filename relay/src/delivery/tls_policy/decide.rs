//! The outbound TLS decision, pure: which policy applies to a destination
//! (configuration × its MTA-STS policy), whether an MX host may be tried,
//! and, once connected, whether what the host offered is good enough to
//! deliver (RFC 8461 §4, §5; RFC 3207 §4 for required TLS).

use mailrelay_crds::maildomain::TlsMode;
use mailrelay_crds::relay::OutboundTlsPolicy;

use super::sts::{Mode, Policy};

/// What a destination's TLS policy asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TlsPlan {
    /// STARTTLS when offered, clear otherwise; nothing blocks delivery.
    Opportunistic,
    /// Configured: STARTTLS with a certificate valid for the MX name.
    Required,
    /// The domain's MTA-STS policy, in mode `enforce` or `testing`.
    Sts(Policy),
}

impl TlsPlan {
    /// The plan for a destination whose configured policy is `configured`
    /// and whose MTA-STS policy (looked up only for `MtaSts`) is `sts`.
    pub(crate) fn new(configured: OutboundTlsPolicy, sts: Option<Policy>) -> TlsPlan {
        match (configured, sts) {
            (OutboundTlsPolicy::Opportunistic, _) => TlsPlan::Opportunistic,
            (OutboundTlsPolicy::Required, _) => TlsPlan::Required,
            // §5: mode none, or no policy at all, is as if none.
            (OutboundTlsPolicy::MtaSts, Some(p)) if p.mode != Mode::None => TlsPlan::Sts(p),
            (OutboundTlsPolicy::MtaSts, _) => TlsPlan::Opportunistic,
        }
    }

    /// A bounded label for metrics and logs.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            TlsPlan::Opportunistic => "opportunistic",
            TlsPlan::Required => "required",
            TlsPlan::Sts(p) if p.mode == Mode::Enforce => "mta_sts_enforce",
            TlsPlan::Sts(_) => "mta_sts_testing",
        }
    }

    /// What the plan is called in reasons people read.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            TlsPlan::Opportunistic => "opportunistic TLS",
            TlsPlan::Required => "required TLS",
            TlsPlan::Sts(p) if p.mode == Mode::Enforce => "MTA-STS (enforce)",
            TlsPlan::Sts(_) => "MTA-STS (testing)",
        }
    }

    /// Whether a host that falls short makes the message wait.
    pub(crate) fn enforced(&self) -> bool {
        match self {
            TlsPlan::Opportunistic => false,
            TlsPlan::Required => true,
            TlsPlan::Sts(p) => p.mode == Mode::Enforce,
        }
    }

    /// How to connect: an enforced plan never falls back to clear text,
    /// and its certificate is checked in the handshake.
    pub(crate) fn tls_mode(&self) -> TlsMode {
        if self.enforced() {
            TlsMode::Required
        } else {
            TlsMode::Opportunistic
        }
    }

    /// Whether `host` may be tried (§4.1).
    pub(crate) fn admit(&self, domain: &str, host: &str) -> Verdict {
        match self {
            TlsPlan::Sts(p) if !p.allows(host) => {
                let why = format!(
                    "MX host {host} does not match the MTA-STS policy of {domain} (mx: {})",
                    p.mx.join(", ")
                );
                if self.enforced() {
                    Verdict::Defer(why)
                } else {
                    Verdict::DeliverAndReport(why)
                }
            }
            _ => Verdict::Deliver,
        }
    }

    /// Whether to deliver over a connection that ended up as `seen`.
    pub(crate) fn verdict(&self, host: &str, seen: &TlsSeen) -> Verdict {
        let shortfall = match seen {
            TlsSeen::Verified | TlsSeen::Unverified { cert: Ok(()) } => None,
            TlsSeen::Clear => Some(format!("{host} does not offer STARTTLS")),
            TlsSeen::ClearAfterFailure(e) | TlsSeen::Failed(e) => Some(e.clone()),
            TlsSeen::Unverified { cert: Err(e) } => {
                Some(format!("certificate of {host} is not valid: {e}"))
            }
        };
        match (self, shortfall) {
            (_, None) | (TlsPlan::Opportunistic, Some(_)) => Verdict::Deliver,
            (plan, Some(why)) if plan.enforced() => Verdict::Defer(why),
            (_, Some(why)) => Verdict::DeliverAndReport(why),
        }
    }
}

/// What TLS a connection to an MX host got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TlsSeen {
    /// The host does not offer STARTTLS; the connection is in clear.
    Clear,
    /// STARTTLS failed and the connection was made again in clear
    /// (opportunistic TLS only).
    ClearAfterFailure(String),
    /// TLS without a check in the handshake; `cert` is the check made
    /// afterwards, against the roots and the MX host name.
    Unverified { cert: Result<(), String> },
    /// TLS with the certificate checked in the handshake.
    Verified,
    /// TLS was required and did not happen (no STARTTLS, refused, or the
    /// handshake or certificate check failed): there is no connection.
    Failed(String),
}

impl TlsSeen {
    /// A bounded label for metrics: `verified`, `encrypted`, `clear` or
    /// `failed`.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            TlsSeen::Verified | TlsSeen::Unverified { cert: Ok(()) } => "verified",
            TlsSeen::Unverified { cert: Err(_) } => "encrypted",
            TlsSeen::Clear | TlsSeen::ClearAfterFailure(_) => "clear",
            TlsSeen::Failed(_) => "failed",
        }
    }
}

/// What to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Deliver,
    /// MTA-STS testing: the policy would have failed; deliver, and say so.
    DeliverAndReport(String),
    /// Not over this host: try the next, or keep the message queued (4xx).
    Defer(String),
}
