//! The DNSSEC-validated lookups DANE needs (RFC 7672 §2.2): the MX RRset
//! of a destination and the TLSA RRset of each MX host, each with what
//! the validation proved. Only these go through the validating resolver;
//! routing keeps the relay's ordinary one (see the README, "DANE").

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::dnssec::{Proof, TrustAnchors};
use hickory_resolver::proto::rr::{RData, Record, RecordType};

use super::TlsPolicyError;
use super::tlsa::Tlsa;

/// The SMTP port TLSA records are published for (`_25._tcp`, §2.2.3).
const SMTP_PORT: u16 = 25;

/// What a validated lookup established.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Proven<T> {
    /// Records (possibly none: a proven denial) from a signed zone whose
    /// chain of trust leads to the trust anchor.
    Secure(T),
    /// An unsigned zone, or one below an unsigned delegation: DANE does
    /// not apply.
    Insecure,
    /// Signatures that should validate and do not, or a failed lookup
    /// whose zone may be signed: the answer cannot be trusted either way.
    Bogus(String),
}

/// The validating resolver: the relay's nameservers, DNSSEC checked
/// against the root's trust anchor or the one configured.
#[derive(Clone)]
pub(crate) struct DaneDns {
    resolver: TokioResolver,
    deadline: Duration,
}

impl DaneDns {
    /// Asking `servers` (the system's when empty), each answer awaited
    /// `timeout`; `anchor` a file of DNSKEY records in zone-file format
    /// (a `K*.key` file of dnssec-keygen), the root's keys when `None`.
    pub(crate) fn new(
        servers: &[SocketAddr],
        timeout: Duration,
        anchor: Option<&Path>,
    ) -> Result<Self, TlsPolicyError> {
        let anchors = match anchor {
            Some(path) => {
                TrustAnchors::from_file(path).map_err(|e| TlsPolicyError::TrustAnchor {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?
            }
            None => TrustAnchors::default(),
        };
        let (config, mut options) = mailrelay_crds::resolver::settings(servers, timeout)?;
        options.validate = true;
        let resolver = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(options)
            .with_trust_anchor(Arc::new(anchors))
            .build()
            .map_err(|e| TlsPolicyError::Resolver(e.to_string()))?;
        let attempts = u32::try_from(resolver.options().attempts).unwrap_or(u32::MAX);
        Ok(Self {
            resolver,
            // Validation asks for DNSKEY and DS records on the way: room
            // for a few round trips per try.
            deadline: timeout
                .saturating_mul(attempts.saturating_add(1).saturating_mul(4))
                .saturating_add(Duration::from_secs(1)),
        })
    }

    /// The MX host names of `domain`, most preferred first.
    pub(crate) async fn mx_hosts(&self, domain: &str) -> Proven<Vec<String>> {
        self.lookup(domain, RecordType::MX).await.map(|records| {
            let mut mx: Vec<(u16, String)> = records
                .iter()
                .filter_map(|r| match &r.data {
                    RData::MX(mx) => Some((mx.preference, host_name(&mx.exchange.to_ascii()))),
                    _ => None,
                })
                .collect();
            mx.sort();
            mx.into_iter().map(|(_, host)| host).collect()
        })
    }

    /// The TLSA records of `host` for SMTP.
    pub(crate) async fn tlsa(&self, host: &str) -> Proven<Vec<Tlsa>> {
        let name = format!("_{SMTP_PORT}._tcp.{host}");
        self.lookup(&name, RecordType::TLSA).await.map(|records| {
            records
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TLSA(t) => Some(Tlsa {
                        usage: t.cert_usage.into(),
                        selector: t.selector.into(),
                        matching: t.matching.into(),
                        data: t.cert_data.clone(),
                    }),
                    _ => None,
                })
                .collect()
        })
    }

    async fn lookup(&self, name: &str, rtype: RecordType) -> Proven<Vec<Record>> {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        match tokio::time::timeout(self.deadline, self.resolver.lookup(fqdn, rtype)).await {
            Err(_) => Proven::Bogus(format!(
                "{rtype} lookup of {name} gave no answer within {:?}",
                self.deadline
            )),
            Ok(Ok(lookup)) => {
                let records: Vec<Record> = lookup
                    .answers()
                    .iter()
                    .filter(|r| r.record_type() == rtype)
                    .cloned()
                    .collect();
                let proofs: Vec<Proof> = records.iter().map(|r| r.proof).collect();
                proven(&proofs, records).map_err_text(|| format!("{rtype} records of {name}"))
            }
            Ok(Err(e)) => denial(&e).map_err_text(|| format!("{rtype} lookup of {name}: {e}")),
        }
    }
}

/// What the proofs of an answer's records establish (RFC 4035 §4.3):
/// every record secure, or it is not secure; any bogus, and it is bogus.
pub(crate) fn proven<T>(proofs: &[Proof], value: T) -> Proven<T> {
    if proofs.contains(&Proof::Bogus) {
        Proven::Bogus(String::new())
    } else if !proofs.is_empty() && proofs.iter().all(|p| *p == Proof::Secure) {
        Proven::Secure(value)
    } else {
        Proven::Insecure
    }
}

/// What a failed lookup establishes: a denial (NXDOMAIN or no records of
/// the type) proven or not, or a failure.
pub(crate) fn denial<T: Default>(e: &NetError) -> Proven<T> {
    match e {
        NetError::Dns(DnsError::Nsec { proof, .. }) => match proof {
            Proof::Secure => Proven::Secure(T::default()),
            Proof::Bogus => Proven::Bogus(String::new()),
            Proof::Insecure | Proof::Indeterminate => Proven::Insecure,
        },
        // A denial that carried no DNSSEC proof at all.
        NetError::Dns(DnsError::NoRecordsFound(_)) => Proven::Insecure,
        _ => Proven::Bogus(String::new()),
    }
}

impl<T> Proven<T> {
    fn map<U>(self, f: impl FnOnce(T) -> U) -> Proven<U> {
        match self {
            Proven::Secure(t) => Proven::Secure(f(t)),
            Proven::Insecure => Proven::Insecure,
            Proven::Bogus(why) => Proven::Bogus(why),
        }
    }

    /// An empty bogus reason filled in with what was looked up.
    fn map_err_text(self, what: impl FnOnce() -> String) -> Proven<T> {
        match self {
            Proven::Bogus(why) if why.is_empty() => {
                Proven::Bogus(format!("DNSSEC validation failed for the {}", what()))
            }
            other => other,
        }
    }
}

/// A host name as compared and shown: lower case, no trailing dot.
fn host_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}
