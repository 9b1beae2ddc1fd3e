//! The checks themselves, with mail-auth over the relay's own resolver:
//! the I/O edge of inbound authentication. Everything mail-auth returns
//! is turned into the plain values of [`super::results`] here.

use std::net::IpAddr;
use std::time::Duration;

use base64::Engine as _;
use hickory_resolver::TokioResolver;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::dmarc::{Alignment, Policy};
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, DkimOutput, DkimResult, DmarcOutput, DmarcResult, MessageAuthenticator,
    SpfOutput, SpfResult,
};
use mailrelay_crds::reports::PublishedPolicy;

use super::results::{AuthResults, Dkim, DkimCheck, Dmarc, DmarcCheck, DmarcPolicy, Spf, SpfCheck};

/// What the checks look at.
pub(crate) struct Subject<'a> {
    pub client_ip: IpAddr,
    pub helo: &'a str,
    /// The MAIL FROM address; `None` for the null sender.
    pub sender: Option<&'a str>,
    /// Our hostname (the `%{r}` SPF macro).
    pub hostname: &'a str,
    /// The message as received, headers and body with CRLF.
    pub content: &'a [u8],
}

/// Runs SPF, DKIM and DMARC with one resolver.
pub(crate) struct Checker {
    auth: MessageAuthenticator,
    /// Bound on each of the three checks: a resolver that never answers
    /// makes a temperror, not a session that hangs.
    deadline: Duration,
}

impl Checker {
    /// `resolver` is the relay's (same nameservers, port and per-query
    /// timeout as every other lookup, and the same cache); `deadline`
    /// bounds each check, retries and recursion (SPF `include:`) included.
    pub(crate) fn new(resolver: TokioResolver, deadline: Duration) -> Self {
        Self {
            auth: MessageAuthenticator(resolver),
            deadline,
        }
    }

    pub(crate) async fn check(&self, s: &Subject<'_>) -> AuthResults {
        let helo_identity = s.helo.to_string();
        // RFC 7208 §2.4: the null sender is checked as postmaster@HELO.
        let mailfrom_identity = s
            .sender
            .map_or_else(|| format!("postmaster@{}", s.helo), str::to_string);
        let helo_check =
            self.auth
                .verify_spf(SpfParameters::verify_ehlo(s.client_ip, s.helo, s.hostname));
        let mailfrom_check = self.auth.verify_spf(SpfParameters::verify_mail_from(
            s.client_ip,
            s.helo,
            s.hostname,
            &mailfrom_identity,
        ));
        let message = AuthenticatedMessage::parse(s.content);
        let dkim_verify = async {
            match &message {
                Some(m) => self.auth.verify_dkim(m).await,
                None => Vec::new(),
            }
        };
        let arc_verify = async {
            match &message {
                Some(m) => super::arc::arc_check(&self.auth.verify_arc(m).await),
                None => super::arc::arc_check(&mail_auth::ArcOutput::default()),
            }
        };
        let (helo_out, mailfrom_out, dkim_out, arc_out) = tokio::join!(
            tokio::time::timeout(self.deadline, helo_check),
            tokio::time::timeout(self.deadline, mailfrom_check),
            tokio::time::timeout(self.deadline, dkim_verify),
            tokio::time::timeout(self.deadline, arc_verify),
        );
        let spf_helo = spf_check(helo_out.as_ref().ok(), helo_identity);
        let spf_mailfrom = spf_check(mailfrom_out.as_ref().ok(), mailfrom_identity.clone());
        let dkim = match &dkim_out {
            Ok(outputs) => outputs.iter().map(dkim_check).collect(),
            Err(_) => vec![DkimCheck {
                result: Dkim::TempError,
                domain: None,
                selector: None,
                b_prefix: None,
                reason: Some("no DNS answer in time".into()),
            }],
        };
        let mailfrom_domain = mailfrom_identity
            .rsplit_once('@')
            .map_or(s.helo, |(_, d)| d);
        let dmarc = match (&message, &mailfrom_out, &dkim_out) {
            (None, _, _) => DmarcCheck::none(None),
            (Some(m), Ok(spf), Ok(dk)) => {
                let params = DmarcParameters::new(m, dk, mailfrom_domain, spf);
                match tokio::time::timeout(self.deadline, self.auth.verify_dmarc(params)).await {
                    Ok(out) => dmarc_check(&out),
                    Err(_) => timed_out_dmarc(m),
                }
            }
            // Without every input DMARC cannot say pass or fail.
            (Some(m), _, _) => timed_out_dmarc(m),
        };
        AuthResults {
            spf_helo,
            spf_mailfrom,
            dkim,
            dmarc,
            arc: arc_out.unwrap_or_else(|_| super::arc::timed_out()),
        }
    }
}

fn timed_out_dmarc(m: &AuthenticatedMessage<'_>) -> DmarcCheck {
    DmarcCheck {
        result: Dmarc::TempError,
        ..DmarcCheck::none(from_domain(m))
    }
}

/// The single From: domain, as DMARC would take it (RFC 7489 §6.6.1).
fn from_domain(m: &AuthenticatedMessage<'_>) -> Option<String> {
    let mut domains = m
        .from
        .iter()
        .filter_map(|a| a.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()));
    let first = domains.next()?;
    domains.all(|d| d == first).then_some(first)
}

fn spf_check(out: Option<&SpfOutput>, identity: String) -> SpfCheck {
    let result = match out.map(SpfOutput::result) {
        None => Spf::TempError,
        Some(SpfResult::Pass) => Spf::Pass,
        Some(SpfResult::Fail) => Spf::Fail,
        Some(SpfResult::SoftFail) => Spf::SoftFail,
        Some(SpfResult::Neutral) => Spf::Neutral,
        Some(SpfResult::None) => Spf::None,
        Some(SpfResult::TempError) => Spf::TempError,
        Some(SpfResult::PermError) => Spf::PermError,
    };
    SpfCheck { result, identity }
}

fn dkim_check(out: &DkimOutput<'_>) -> DkimCheck {
    let (result, reason) = match out.result() {
        DkimResult::Pass => (Dkim::Pass, None),
        DkimResult::Neutral(e) => (Dkim::Neutral, Some(e.to_string())),
        DkimResult::Fail(e) => (Dkim::Fail, Some(e.to_string())),
        DkimResult::PermError(e) => (Dkim::PermError, Some(e.to_string())),
        DkimResult::TempError(e) => (Dkim::TempError, Some(e.to_string())),
        DkimResult::None => (Dkim::None, None),
    };
    let sig = out.signature();
    DkimCheck {
        result,
        domain: sig.map(|s| s.d.to_ascii_lowercase()),
        selector: sig.map(|s| s.s.clone()),
        b_prefix: sig.filter(|s| !s.b.is_empty()).map(|s| {
            let head = &s.b[..s.b.len().min(6)];
            base64::engine::general_purpose::STANDARD.encode(head)
        }),
        reason,
    }
}

fn dmarc_check(out: &DmarcOutput) -> DmarcCheck {
    let from_domain = (!out.domain().is_empty()).then(|| out.domain().to_ascii_lowercase());
    let result = match out.result() {
        DmarcResult::Pass => Dmarc::Pass,
        DmarcResult::Fail(_) => Dmarc::Fail,
        DmarcResult::TempError(_) => Dmarc::TempError,
        DmarcResult::PermError(_) => Dmarc::PermError,
        DmarcResult::None => Dmarc::None,
    };
    let policy = out.dmarc_record().map(|_| match out.policy() {
        Policy::Reject => DmarcPolicy::Reject,
        Policy::Quarantine => DmarcPolicy::Quarantine,
        Policy::None | Policy::Unspecified => DmarcPolicy::None,
    });
    let published = out
        .dmarc_record()
        .map(|r| published(r, from_domain.as_deref().unwrap_or_default()));
    DmarcCheck {
        result,
        from_domain,
        policy,
        spf_aligned: *out.spf_result() == DmarcResult::Pass,
        dkim_aligned: *out.dkim_result() == DmarcResult::Pass,
        published,
    }
}

/// The record as a report shows it (RFC 7489 Appendix C). mail-auth
/// follows DMARCbis: it parses no `pct`, and says neither whether the
/// record was the From: domain's or its organisational domain's. So the
/// domain given is the From: domain, and `pct` is 100, or 0 under the
/// testing flag `t=y` (DMARCbis' replacement for `pct=0`).
fn published(r: &mail_auth::dmarc::Dmarc, domain: &str) -> PublishedPolicy {
    let align = |a: &Alignment| match a {
        Alignment::Relaxed => "r",
        Alignment::Strict => "s",
    };
    let policy = |p: &Policy| match p {
        Policy::Reject => "reject",
        Policy::Quarantine => "quarantine",
        Policy::None | Policy::Unspecified => "none",
    };
    // RFC 7489 §6.3: without `sp`, subdomains follow `p`.
    let sp = match r.sp {
        Policy::Unspecified => &r.p,
        ref sp => sp,
    };
    PublishedPolicy {
        domain: domain.to_string(),
        adkim: align(&r.adkim).into(),
        aspf: align(&r.aspf).into(),
        p: policy(&r.p).into(),
        sp: policy(sp).into(),
        pct: if r.t { 0 } else { 100 },
    }
}
