//! The outbound TLS decision, pure: which policy applies to a destination
//! (configuration × its MTA-STS policy), whether an MX host may be tried,
//! and, once connected, whether what the host offered is good enough to
//! deliver (RFC 8461 §4, §5; RFC 3207 §4 for required TLS; RFC 7672 for
//! DANE).

use std::collections::BTreeMap;

use mailrelay_crds::maildomain::TlsMode;
use mailrelay_crds::relay::OutboundTlsPolicy;

use super::dane::Proven;
use super::sts::{Mode, Policy};
use super::tlsa::Tlsa;

/// What a destination's TLS policy asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TlsPlan {
    /// STARTTLS when offered, clear otherwise; nothing blocks delivery.
    Opportunistic,
    /// Configured: STARTTLS with a certificate valid for the MX name.
    Required,
    /// The domain's MTA-STS policy, in mode `enforce` or `testing`.
    Sts(Policy),
    /// DANE (RFC 7672) for a destination whose MX RRset is secure: the
    /// hosts with a secure TLSA RRset (or whose lookup failed) follow
    /// [`TlsPlan::DaneHost`]; the others `fallback` (§2.2: no TLSA, no
    /// DANE for that host; RFC 8461 §2: DANE before MTA-STS).
    Dane {
        /// [`TlsPlan::DaneHost`] per MX host name (lower case).
        hosts: BTreeMap<String, TlsPlan>,
        /// The MX host names DNSSEC vouched for (lower case): a host the
        /// relay's ordinary resolver gave that is not among them is not
        /// tried, so a forged MX answer cannot step around DANE.
        mx: Vec<String>,
        fallback: Box<TlsPlan>,
    },
    /// One MX host under DANE: TLS is mandatory and authenticated by the
    /// TLSA records, not the Web PKI.
    DaneHost(HostTlsa),
}

/// The TLSA state of one MX host under DANE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum HostTlsa {
    /// A secure RRset with usable records: the certificate must match.
    Records(Vec<Tlsa>),
    /// A secure RRset with no usable record: TLS is mandatory, the
    /// certificate is not checked (§2.2).
    Unusable,
    /// A bogus RRset, or a lookup that failed: not this host (§2.2).
    Failed(String),
}

impl HostTlsa {
    /// The state a validated TLSA lookup gives, `None` when DANE does not
    /// apply to the host (no records, or an insecure zone).
    pub(crate) fn from_lookup(host: &str, found: Proven<Vec<Tlsa>>) -> Option<HostTlsa> {
        match found {
            Proven::Secure(records) if records.is_empty() => None,
            Proven::Secure(records) if records.iter().any(Tlsa::usable) => {
                Some(HostTlsa::Records(records))
            }
            Proven::Secure(_) => Some(HostTlsa::Unusable),
            Proven::Insecure => None,
            Proven::Bogus(why) => Some(HostTlsa::Failed(format!(
                "TLSA lookup error for {host}:25: {why}"
            ))),
        }
    }
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
            // The DANE part is added by [`TlsPlan::dane`].
            (OutboundTlsPolicy::Dane, sts) => TlsPlan::new(OutboundTlsPolicy::MtaSts, sts),
        }
    }

    /// DANE for a destination whose validated MX lookup gave `mx`, and
    /// whose hosts' TLSA lookups gave `tlsa`; `self` where DANE does not
    /// apply. A bogus MX RRset makes every host wait.
    pub(crate) fn dane(
        self,
        mx: Proven<Vec<String>>,
        tlsa: Vec<(String, Proven<Vec<Tlsa>>)>,
    ) -> TlsPlan {
        let validated: Vec<String> = tlsa.iter().map(|(h, _)| h.to_ascii_lowercase()).collect();
        let hosts: BTreeMap<String, TlsPlan> = match mx {
            Proven::Insecure => return self,
            Proven::Bogus(why) => {
                let why = format!("MX lookup error: {why}");
                return TlsPlan::Dane {
                    hosts: BTreeMap::new(),
                    mx: Vec::new(),
                    fallback: Box::new(TlsPlan::DaneHost(HostTlsa::Failed(why))),
                };
            }
            Proven::Secure(_) => tlsa
                .into_iter()
                .filter_map(|(host, found)| {
                    let state = HostTlsa::from_lookup(&host, found)?;
                    Some((host.to_ascii_lowercase(), TlsPlan::DaneHost(state)))
                })
                .collect(),
        };
        if hosts.is_empty() {
            return self;
        }
        TlsPlan::Dane {
            hosts,
            mx: validated,
            fallback: Box::new(self),
        }
    }

    /// The plan for one MX host: its own under DANE, else this one.
    pub(crate) fn for_host(&self, host: &str) -> &TlsPlan {
        match self {
            TlsPlan::Dane {
                hosts, fallback, ..
            } => hosts
                .get(&host.to_ascii_lowercase())
                .unwrap_or_else(|| fallback.for_host(host)),
            _ => self,
        }
    }

    /// A bounded label for metrics and logs.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            TlsPlan::Opportunistic => "opportunistic",
            TlsPlan::Required => "required",
            TlsPlan::Sts(p) if p.mode == Mode::Enforce => "mta_sts_enforce",
            TlsPlan::Sts(_) => "mta_sts_testing",
            TlsPlan::Dane { fallback, .. } => fallback.label(),
            TlsPlan::DaneHost(_) => "dane",
        }
    }

    /// What the plan is called in reasons people read.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            TlsPlan::Opportunistic => "opportunistic TLS",
            TlsPlan::Required => "required TLS",
            TlsPlan::Sts(p) if p.mode == Mode::Enforce => "MTA-STS (enforce)",
            TlsPlan::Sts(_) => "MTA-STS (testing)",
            TlsPlan::Dane { fallback, .. } => fallback.name(),
            TlsPlan::DaneHost(_) => "DANE",
        }
    }

    /// Whether a host that falls short makes the message wait.
    pub(crate) fn enforced(&self) -> bool {
        match self {
            TlsPlan::Opportunistic => false,
            TlsPlan::Required => true,
            TlsPlan::Sts(p) => p.mode == Mode::Enforce,
            TlsPlan::Dane { fallback, .. } => fallback.enforced(),
            TlsPlan::DaneHost(_) => true,
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

    /// Whether `host` may be tried (§4.1; RFC 7672 §2.2: not after a
    /// failed TLSA lookup).
    pub(crate) fn admit(&self, domain: &str, host: &str) -> Verdict {
        if let TlsPlan::Dane { mx, .. } = self
            && !mx.is_empty()
            && !mx.contains(&host.to_ascii_lowercase())
        {
            return Verdict::Defer(format!(
                "MX host {host} is not in the DNSSEC-validated MX RRset of {domain}"
            ));
        }
        match self.for_host(host) {
            TlsPlan::DaneHost(HostTlsa::Failed(why)) => Verdict::Defer(why.clone()),
            TlsPlan::Sts(p) if !p.allows(host) => {
                let why = format!(
                    "MX host {host} does not match the MTA-STS policy of {domain} (mx: {})",
                    p.mx.join(", ")
                );
                if p.mode == Mode::Enforce {
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
        let plan = self.for_host(host);
        if let TlsPlan::DaneHost(HostTlsa::Failed(why)) = plan {
            return Verdict::Defer(why.clone());
        }
        let shortfall = match seen {
            TlsSeen::Verified | TlsSeen::Unverified { cert: Ok(()) } => None,
            TlsSeen::Clear => Some(format!("{host} does not offer STARTTLS")),
            TlsSeen::ClearAfterFailure(e) | TlsSeen::Failed(e) => Some(e.clone()),
            TlsSeen::Unverified { cert: Err(e) } => {
                Some(format!("certificate of {host} is not valid: {e}"))
            }
        };
        match (plan, shortfall) {
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
