//! The outcome of each check as plain values, independent of mail-auth's
//! types, so the decision and the header are pure functions tested with
//! literals. The result names are those of the RFC 8601 registry.

/// An SPF result (RFC 7208 §2.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Spf {
    Pass,
    Fail,
    SoftFail,
    Neutral,
    None,
    TempError,
    PermError,
}

impl Spf {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Spf::Pass => "pass",
            Spf::Fail => "fail",
            Spf::SoftFail => "softfail",
            Spf::Neutral => "neutral",
            Spf::None => "none",
            Spf::TempError => "temperror",
            Spf::PermError => "permerror",
        }
    }
}

/// One SPF check and the identity it was made for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SpfCheck {
    pub result: Spf,
    /// The HELO name, or the MAIL FROM address (`postmaster@HELO` for the
    /// null sender, RFC 7208 §2.4).
    pub identity: String,
}

/// A DKIM result (RFC 8601 §2.7.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Dkim {
    Pass,
    Fail,
    Neutral,
    None,
    TempError,
    PermError,
}

impl Dkim {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Dkim::Pass => "pass",
            Dkim::Fail => "fail",
            Dkim::Neutral => "neutral",
            Dkim::None => "none",
            Dkim::TempError => "temperror",
            Dkim::PermError => "permerror",
        }
    }
}

/// One DKIM-Signature header field and what became of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DkimCheck {
    pub result: Dkim,
    /// The signing domain (`d=`), when the signature could be parsed.
    pub domain: Option<String>,
    /// The selector (`s=`).
    pub selector: Option<String>,
    /// The first 8 characters of the signature (`b=`), so that a reader
    /// can tell several signatures of one domain apart (RFC 6008).
    pub b_prefix: Option<String>,
    /// Why it did not pass, in a few words.
    pub reason: Option<String>,
}

/// A DMARC result (RFC 7489 §11.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Dmarc {
    Pass,
    Fail,
    None,
    TempError,
    PermError,
}

impl Dmarc {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Dmarc::Pass => "pass",
            Dmarc::Fail => "fail",
            Dmarc::None => "none",
            Dmarc::TempError => "temperror",
            Dmarc::PermError => "permerror",
        }
    }
}

/// The policy a domain publishes (`p=`, or `sp=` for a subdomain), after
/// its testing flag is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum DmarcPolicy {
    None,
    Quarantine,
    Reject,
}

impl DmarcPolicy {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DmarcPolicy::None => "none",
            DmarcPolicy::Quarantine => "quarantine",
            DmarcPolicy::Reject => "reject",
        }
    }
}

/// The DMARC evaluation of the message's From: domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DmarcCheck {
    pub result: Dmarc,
    /// The RFC 5322 From: domain, when there is exactly one.
    pub from_domain: Option<String>,
    /// The policy found, if a record was found.
    pub policy: Option<DmarcPolicy>,
    /// SPF passed for a domain aligned with From:.
    pub spf_aligned: bool,
    /// A DKIM signature of a domain aligned with From: passed.
    pub dkim_aligned: bool,
    /// The record as published, for the aggregate reports.
    pub published: Option<mailrelay_crds::reports::PublishedPolicy>,
}

impl DmarcCheck {
    /// Nothing to evaluate (no From: domain or no record).
    pub(crate) fn none(from_domain: Option<String>) -> Self {
        Self {
            result: Dmarc::None,
            from_domain,
            policy: None,
            spf_aligned: false,
            dkim_aligned: false,
            published: None,
        }
    }
}

/// The ARC chain validation status (RFC 8617 §4.4: `cv` values, the
/// results of the `arc` method in the RFC 8601 registry).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Arc {
    Pass,
    Fail,
    None,
}

impl Arc {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Arc::Pass => "pass",
            Arc::Fail => "fail",
            Arc::None => "none",
        }
    }
}

/// The ARC chain of a message and what became of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ArcCheck {
    pub result: Arc,
    /// Why it did not pass, in a few words.
    pub reason: Option<String>,
}

/// Everything the checks found for one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AuthResults {
    /// SPF for the HELO identity (RFC 7208 §2.3); `none` when HELO is
    /// not a domain name.
    pub spf_helo: SpfCheck,
    /// SPF for the MAIL FROM identity (RFC 7208 §2.4).
    pub spf_mailfrom: SpfCheck,
    /// One entry per DKIM-Signature header field, in message order.
    pub dkim: Vec<DkimCheck>,
    pub dmarc: DmarcCheck,
    pub arc: ArcCheck,
}
