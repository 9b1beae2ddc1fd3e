//! The fleet's aggregate reports as documents and mails, and where they
//! may go: pure, apart from the DNS queries of [`rua`], which go through
//! a small trait so they are tested without sockets.
//!
//! - [`dmarc`]: DMARC aggregate reports (RFC 7489 §7.2, XML per
//!   Appendix C), one per policy domain;
//! - [`tlsrpt`]: TLS reports (RFC 8460 §4), one per policy domain;
//! - [`message`]: the report mails (RFC 7489 §7.2.1.1, RFC 8460 §5.3);
//! - [`rua`]: the `rua` destinations a domain publishes, verified.
//!
//! The operator's report loop merges the pods' aggregates of a period,
//! then for each report: asks [`rua`] where it may go, builds the mail
//! with [`message`], and keeps only the addresses whose size limit the
//! mail fits ([`rua::Recipients`]).

pub mod dmarc;
pub mod message;
pub mod rua;
pub mod tlsrpt;

#[cfg(test)]
mod schema_tests;
#[cfg(test)]
mod testing;

use mailrelay_crds::reports::ReportsSpec;
use sha2::{Digest, Sha256};

pub use dmarc::{DmarcReport, dmarc_reports};
pub use message::{dmarc_mail, gzip, tlsrpt_mail};
pub use rua::{
    Destination, Recipients, RuaError, TxtLookup, dmarc_destinations, tlsrpt_destinations,
};
pub use tlsrpt::{TlsReport, tls_reports};

/// Who sends the reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reporter {
    /// `org_name` / `organization-name`.
    pub organization: String,
    /// `email` / `contact-info`.
    pub contact: String,
    /// From: of the report mails; its domain is the submitter.
    pub from: String,
    /// The Relay, `namespace/name`: part of every report id, so two
    /// Relays of one organisation never send the same id.
    pub relay: String,
}

impl Reporter {
    pub fn new(spec: &ReportsSpec, relay: &str) -> Self {
        Reporter {
            organization: spec.organization.clone(),
            contact: spec.contact.clone(),
            from: spec.from.clone(),
            relay: relay.to_string(),
        }
    }

    /// The submitter (RFC 7489 §7.2.1.1, RFC 8460 §5.3): the domain of
    /// From:, lower-case.
    pub fn submitter(&self) -> String {
        let domain = self.from.rsplit_once('@').map_or(&*self.from, |(_, d)| d);
        domain
            .trim_end_matches('>')
            .trim_end_matches('.')
            .to_ascii_lowercase()
    }
}

/// A report id that is the same whenever the same Relay reports on the
/// same domain and period (so a report sent again after a crash is
/// recognisably the same report) and differs otherwise. It has the form
/// of a msg-id's inside (`left@right`, RFC 5322 §3.6.4), as the DMARC
/// Subject wants it in angle brackets.
fn report_id(kind: &str, who: &Reporter, domain: &str, start: i64, end: i64) -> String {
    let mut h = Sha256::new();
    for part in [
        kind,
        &who.relay,
        domain,
        &start.to_string(),
        &end.to_string(),
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let digest = h.finalize();
    let hex: String = digest[..10].iter().map(|b| format!("{b:02x}")).collect();
    format!("{start}.{hex}@{}", who.submitter())
}

/// The part of a report id before `@`: the unique part of the TLS-RPT
/// file name, and the MIME boundary's seed.
fn id_left(report_id: &str) -> &str {
    report_id.split_once('@').map_or(report_id, |(l, _)| l)
}

/// Domains as they are compared and shown: lower-case, no final dot.
fn domain_key(domain: &str) -> String {
    domain.trim().trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(relay: &str) -> Reporter {
        Reporter {
            organization: "Example Ltd".into(),
            contact: "postmaster@example.net".into(),
            from: "Reports <dmarc-reports@Example.NET>".into(),
            relay: relay.into(),
        }
    }

    #[test]
    fn the_submitter_is_the_domain_of_from() {
        assert_eq!(who("a/b").submitter(), "example.net");
    }

    #[test]
    fn report_ids_are_stable_and_differ_by_relay_domain_period_and_kind() {
        let a = report_id("dmarc", &who("mail/relay"), "d.test", 0, 86400);
        assert_eq!(
            a,
            report_id("dmarc", &who("mail/relay"), "d.test", 0, 86400)
        );
        assert!(a.starts_with("0.") && a.ends_with("@example.net"), "{a}");
        for other in [
            report_id("tlsrpt", &who("mail/relay"), "d.test", 0, 86400),
            report_id("dmarc", &who("mail/other"), "d.test", 0, 86400),
            report_id("dmarc", &who("mail/relay"), "e.test", 0, 86400),
            report_id("dmarc", &who("mail/relay"), "d.test", 86400, 172800),
        ] {
            assert_ne!(a, other);
        }
    }
}
