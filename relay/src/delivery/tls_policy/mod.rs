//! Outbound TLS policy for mail delivered by MX: opportunistic, required
//! (per Relay or per destination domain, `spec.delivery.tls`), or the
//! destination's own MTA-STS policy (RFC 8461).
//!
//! - [`sts`] parses the `_mta-sts` TXT record and the policy file and
//!   matches MX hosts against its patterns;
//! - [`cache`] keeps policies for their `max_age` and notices new ids;
//! - `fetch` looks them up (DNS through the relay's resolver, HTTPS with
//!   rustls against the Mozilla roots plus `--tls-ca`);
//! - [`decide`] is the decision, pure: plan × host × what the host offered
//!   → deliver, deliver and report (MTA-STS testing), or defer (4xx);
//! - [`OutboundTls`] ties them together for the queue, and [`Check`]
//!   applies a plan to one attempt, with one log event and one metric per
//!   decision.
//!
//! - [`dane`] makes the DNSSEC-validated MX and TLSA lookups of DANE
//!   (RFC 7672), and [`tlsa`] matches a certificate chain against TLSA
//!   records.

pub(crate) mod cache;
pub(crate) mod dane;
pub(crate) mod decide;
mod fetch;
pub(crate) mod sts;
pub(crate) mod tlsa;

#[cfg(test)]
mod check_tests;
#[cfg(test)]
mod dane_tests;
#[cfg(test)]
mod fetch_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tlsa_tests;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use mailrelay_crds::config::OutboundTlsConfig;
use mailrelay_crds::maildomain::TlsMode;
use mailrelay_crds::relay::OutboundTlsPolicy;
use rustls_pki_types::pem::PemObject;
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::client::danger::ServerCertVerifier;
use tokio_rustls::rustls::crypto::{CryptoProvider, ring};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

use crate::delivery::smtp::ConnectFailure;
use crate::delivery::{OutboundConfig, Outcome, Security, SmtpClient, Target, Timeouts};
use crate::ops::metrics::Metrics;
use crate::ops::reports::Reports;
use crate::policy::HickoryDns;
use crate::spool::QueueId;
pub(crate) use cache::{Found, StsCache};
use dane::{DaneDns, Proven};
pub(crate) use decide::{HostTlsa, TlsPlan, TlsSeen, Verdict};
use fetch::HttpsSource;
use mailrelay_crds::reports::ReportsConfig;
use sts::Mode;

/// Where MTA-STS policies are served (§3.3: HTTPS, the default port).
pub(crate) const HTTPS_PORT: u16 = 443;

/// Why the outbound TLS set-up failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsPolicyError {
    #[error("cannot read the CA bundle {path}: {source}")]
    ReadCa {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the CA bundle {path} is not valid PEM: {source}")]
    PemCa {
        path: String,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("the CA bundle {path} holds no certificate")]
    EmptyCa { path: String },
    #[error("certificate {index} of {path} is not a usable root: {reason}")]
    BadRoot {
        path: String,
        index: usize,
        reason: String,
    },
    #[error("cannot set up TLS: {0}")]
    Tls(String),
    #[error("cannot read the DNSSEC trust anchor {path}: {reason}")]
    TrustAnchor { path: String, reason: String },
    #[error(transparent)]
    ResolverSettings(#[from] mailrelay_crds::resolver::ResolverError),
    #[error("cannot build the validating DNS resolver: {0}")]
    Resolver(String),
}

/// The DER certificates of a PEM bundle (`--tls-ca`).
pub(crate) fn read_ca_bundle(path: &Path) -> Result<Vec<Vec<u8>>, TlsPolicyError> {
    let shown = path.display().to_string();
    let text = std::fs::read(path).map_err(|source| TlsPolicyError::ReadCa {
        path: shown.clone(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .map(|c| c.map(|c| c.as_ref().to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsPolicyError::PemCa {
            path: shown.clone(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsPolicyError::EmptyCa { path: shown });
    }
    Ok(certs)
}

/// The Mozilla roots (webpki-roots) and `extra`.
fn root_store(extra: &[Vec<u8>]) -> Result<RootCertStore, TlsPolicyError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for (index, der) in extra.iter().enumerate() {
        roots
            .add(CertificateDer::from(der.clone()))
            .map_err(|e| TlsPolicyError::BadRoot {
                path: "--tls-ca".into(),
                index,
                reason: e.to_string(),
            })?;
    }
    Ok(roots)
}

/// The TLS client for policy fetches: HTTP/1.1, certificates checked
/// against `roots`.
fn https_client(roots: Arc<RootCertStore>) -> Result<Arc<ClientConfig>, TlsPolicyError> {
    let mut client = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsPolicyError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(client))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// Checks a certificate chain against the roots for a host name, as a
/// TLS handshake with verification would.
pub(crate) struct ChainCheck {
    verifier: Arc<WebPkiServerVerifier>,
}

impl ChainCheck {
    fn new(roots: Arc<RootCertStore>) -> Result<Self, TlsPolicyError> {
        let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|e| TlsPolicyError::Tls(e.to_string()))?;
        Ok(Self { verifier })
    }

    /// `chain` is DER, leaf first, as the server sent it.
    pub(crate) fn check(&self, host: &str, chain: &[Vec<u8>], now: UnixTime) -> Result<(), String> {
        let (leaf, rest) = chain.split_first().ok_or("no certificate")?;
        let name = ServerName::try_from(host.to_string()).map_err(|e| format!("{host}: {e}"))?;
        let intermediates: Vec<CertificateDer<'_>> = rest
            .iter()
            .map(|c| CertificateDer::from(c.as_slice()))
            .collect();
        self.verifier
            .verify_server_cert(
                &CertificateDer::from(leaf.as_slice()),
                &intermediates,
                &name,
                &[],
                now,
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// The relay's outbound TLS state: the MTA-STS cache and fetcher, and the
/// roots certificates are checked against. One per relay process; the
/// policy configuration comes with each attempt (it may be reloaded).
pub(crate) struct OutboundTls {
    source: HttpsSource,
    cache: StsCache,
    extra_roots: Vec<Vec<u8>>,
    chain: ChainCheck,
    /// The validating resolver for DANE; without it (unit tests) `Dane`
    /// is MTA-STS.
    dane: Option<DaneDns>,
}

impl OutboundTls {
    /// With the Mozilla roots and `extra_roots` (DER) trusted, policies
    /// fetched from `https_port` ([`HTTPS_PORT`] outside tests).
    pub(crate) fn new(
        dns: HickoryDns,
        extra_roots: Vec<Vec<u8>>,
        https_port: u16,
    ) -> Result<Self, TlsPolicyError> {
        let roots = Arc::new(root_store(&extra_roots)?);
        Ok(Self {
            source: HttpsSource::new(dns, https_client(Arc::clone(&roots))?, https_port),
            cache: StsCache::default(),
            extra_roots,
            chain: ChainCheck::new(roots)?,
            dane: None,
        })
    }

    /// The HTTPS client configuration (same roots), for event webhooks.
    pub(crate) fn https(&self) -> Arc<ClientConfig> {
        self.source.tls()
    }

    /// DANE lookups through `dns`.
    pub(crate) fn with_dane(mut self, dns: DaneDns) -> Self {
        self.dane = Some(dns);
        self
    }

    /// The plan for mail to `domain` under `config`, looking up the
    /// domain's MTA-STS policy when the configuration asks for it.
    pub(crate) async fn plan(
        &self,
        config: &OutboundTlsConfig,
        domain: &str,
        queue_id: Option<QueueId>,
        metrics: &Metrics,
    ) -> TlsPlan {
        let configured = config.policy_for(domain);
        if !matches!(
            configured,
            OutboundTlsPolicy::MtaSts | OutboundTlsPolicy::Dane
        ) {
            return TlsPlan::new(configured, None);
        }
        let (policy, found) = self
            .cache
            .policy(&self.source, domain, Instant::now())
            .await;
        metrics.mta_sts_lookup(found.label());
        let queue_id = queue_id.map(|q| q.to_string()).unwrap_or_default();
        match &found {
            Found::Failed { error, kept } => {
                tracing::warn!(queue_id = %queue_id, domain, %error, cached_policy_kept = kept,
                    "MTA-STS policy lookup failed")
            }
            Found::Fetched => {
                let mode = policy.as_ref().map_or(Mode::None, |p| p.mode);
                tracing::info!(queue_id = %queue_id, domain, %mode, "MTA-STS policy fetched")
            }
            _ => {}
        }
        let plan = TlsPlan::new(configured, policy);
        match (&self.dane, configured) {
            (Some(dns), OutboundTlsPolicy::Dane) => dane_plan(dns, plan, domain, &queue_id).await,
            _ => plan,
        }
    }

    /// How to connect to the MX hosts under `plan`.
    pub(crate) fn outbound_config(
        &self,
        plan: &TlsPlan,
        hostname: &str,
        timeouts: Timeouts,
    ) -> OutboundConfig {
        self.configured(plan.tls_mode(), hostname, timeouts)
    }

    /// How to connect to a server whose TLS use is configured (a
    /// smarthost), trusting the same roots as for MX hosts.
    pub(crate) fn configured(
        &self,
        tls: TlsMode,
        hostname: &str,
        timeouts: Timeouts,
    ) -> OutboundConfig {
        let mut config = OutboundConfig::new(hostname, tls).with_timeouts(timeouts);
        config.extra_roots = self.extra_roots.clone();
        config
    }
}

/// One attempt's plan applied to its hosts and connections; each decision
/// that falls short is one log event with the queue id and one metric.
pub(crate) struct Check<'a> {
    pub tls: &'a OutboundTls,
    pub plan: TlsPlan,
    pub domain: &'a str,
    pub queue_id: Option<QueueId>,
    pub metrics: &'a Metrics,
    /// Where sessions are counted for TLS reports, when they are wanted.
    pub reports: Option<(&'a Reports, &'a ReportsConfig)>,
}

impl Check<'_> {
    /// Whether `target` may be tried at all; `Err` is the reason to keep
    /// the message for this host.
    pub(crate) fn admit(&self, target: &Target) -> Result<(), Outcome> {
        let verdict = self.plan.admit(self.domain, &target.host);
        self.apply(target, verdict, None)
    }

    /// How to connect to `target` when its plan is not the destination's
    /// (a DANE host: mandatory TLS, the certificate checked against its
    /// TLSA records once connected).
    pub(crate) fn config_for(
        &self,
        target: &Target,
        base: &OutboundConfig,
    ) -> Option<OutboundConfig> {
        match self.plan.for_host(&target.host) {
            TlsPlan::DaneHost(_) => {
                let mut config = base.clone();
                config.tls = TlsMode::Required;
                config.check_after_handshake = true;
                Some(config)
            }
            _ => None,
        }
    }

    /// Whether to deliver over `client`. For an unchecked TLS connection
    /// (MTA-STS testing) the certificate is checked here, for the report.
    pub(crate) fn connected(&self, client: &SmtpClient) -> Result<(), Outcome> {
        let target = client.target();
        let seen = self.seen(client);
        let verdict = self.plan.verdict(&target.host, &seen);
        self.apply(target, verdict, Some(&seen))
    }

    /// What `client`'s TLS amounts to under the plan of its host.
    fn seen(&self, client: &SmtpClient) -> TlsSeen {
        let target = client.target();
        let plan = self.plan.for_host(&target.host);
        match client.security() {
            Security::Verified => TlsSeen::Verified,
            Security::Clear => TlsSeen::Clear,
            Security::ClearAfterTlsFailure { error } => TlsSeen::ClearAfterFailure(error.clone()),
            Security::Encrypted => TlsSeen::Unverified {
                cert: match (plan, client.peer_certificates()) {
                    // Nobody looks at an opportunistic certificate.
                    (TlsPlan::Opportunistic, _) => Err("not checked".into()),
                    // §2.2: encrypted, not authenticated.
                    (TlsPlan::DaneHost(HostTlsa::Unusable), _) => Ok(()),
                    (TlsPlan::DaneHost(HostTlsa::Records(records)), Some(chain)) => {
                        dane_check(records, &target.host, self.domain, &chain)
                    }
                    (_, Some(chain)) => self.tls.chain.check(&target.host, &chain, UnixTime::now()),
                    (_, None) => Err("no certificate".into()),
                },
            },
        }
    }

    /// A connection that failed: the outcome to keep. A TLS failure
    /// counts against the plan, and its reason says which policy.
    pub(crate) fn failed(&self, target: &Target, failure: ConnectFailure) -> Outcome {
        if !failure.tls {
            return failure.outcome;
        }
        let seen = TlsSeen::Failed(failure.outcome.text().to_string());
        let verdict = self.plan.verdict(&target.host, &seen);
        match self.apply(target, verdict, Some(&seen)) {
            Err(outcome) => outcome,
            Ok(()) => failure.outcome,
        }
    }

    /// Whether a kept connection may carry mail under the plan now in
    /// force (it may have been opened under a weaker one).
    pub(crate) fn reusable(&self, client: &SmtpClient) -> bool {
        let host_ok = matches!(
            self.plan.admit(self.domain, &client.target().host),
            Verdict::Deliver | Verdict::DeliverAndReport(_)
        );
        let tls_ok = match self.plan.for_host(&client.target().host) {
            TlsPlan::DaneHost(_) => {
                matches!(self.seen(client), TlsSeen::Unverified { cert: Ok(()) })
            }
            plan => !plan.enforced() || *client.security() == Security::Verified,
        };
        host_ok && tls_ok
    }

    fn apply(
        &self,
        target: &Target,
        verdict: Verdict,
        seen: Option<&TlsSeen>,
    ) -> Result<(), Outcome> {
        let plan = self.plan.for_host(&target.host);
        if let Some((reports, config)) = self.reports
            && let Some(row) = crate::ops::reports::tls::row(
                self.domain,
                plan,
                &target.host,
                Some(target.addr.ip()),
                &verdict,
                seen,
            )
        {
            reports.tls(Some(config), jiff::Timestamp::now().as_second(), row);
        }
        let policy = plan.label();
        let queue_id = self.queue_id.map(|q| q.to_string()).unwrap_or_default();
        let (host, domain) = (target.host.as_str(), self.domain);
        match verdict {
            Verdict::Deliver => {
                if let Some(seen) = seen {
                    let outcome = match plan {
                        // TLS without authentication (RFC 7672 §2.2).
                        TlsPlan::DaneHost(HostTlsa::Unusable) => "encrypted",
                        _ => seen.label(),
                    };
                    self.metrics.outbound_tls(policy, outcome);
                }
                Ok(())
            }
            Verdict::DeliverAndReport(reason) => {
                self.metrics.outbound_tls(policy, "failed_reported");
                tracing::warn!(queue_id = %queue_id, domain, host, addr = %target.addr, policy, %reason,
                    "MTA-STS testing: the policy would refuse this host; delivering anyway");
                Ok(())
            }
            Verdict::Defer(reason) => {
                let outcome = match plan {
                    TlsPlan::DaneHost(HostTlsa::Failed(_)) => "dnssec_failed",
                    _ => "failed_deferred",
                };
                self.metrics.outbound_tls(policy, outcome);
                tracing::warn!(queue_id = %queue_id, domain, host, addr = %target.addr, policy, %reason,
                    "outbound TLS policy not met; not delivering to this host");
                // RFC 3463 X.7.5: cryptographic failure. Temporary: the
                // host may be fixed, or the policy changed, before expiry.
                Err(Outcome::temp(format!(
                    "4.7.5 {} policy of {domain} not met by {host}: {reason}",
                    plan.name()
                )))
            }
        }
    }
}

/// `plan` with DANE where the destination's validated MX and TLSA
/// lookups make it apply (RFC 7672 §2.2).
async fn dane_plan(dns: &DaneDns, plan: TlsPlan, domain: &str, queue_id: &str) -> TlsPlan {
    let mx = dns.mx_hosts(domain).await;
    let hosts = match &mx {
        // §2.2.1: no MX, the domain is its own host.
        Proven::Secure(hosts) if hosts.is_empty() => vec![domain.to_string()],
        Proven::Secure(hosts) => hosts.clone(),
        _ => Vec::new(),
    };
    let mut tlsa = Vec::with_capacity(hosts.len());
    // A null MX (RFC 7505) has no host to look up.
    for host in hosts.into_iter().filter(|h| !h.is_empty()) {
        let found = dns.tlsa(&host).await;
        tlsa.push((host, found));
    }
    let mx_proof = match &mx {
        Proven::Secure(_) => "secure",
        Proven::Insecure => "insecure",
        Proven::Bogus(_) => "bogus",
    };
    let plan = plan.dane(mx, tlsa);
    let dane_hosts = match &plan {
        TlsPlan::Dane { hosts, .. } => hosts.len(),
        _ => 0,
    };
    // The other hosts follow the plan's fallback, whose label this is.
    tracing::info!(queue_id = %queue_id, domain, mx_proof, dane_hosts, other_hosts = plan.label(),
        "DANE lookups done");
    plan
}

/// The DANE check of a chain for MX host `host` of `domain` (§3.2.2:
/// both are reference identifiers). lettre takes no custom rustls
/// verifier, so the handshake accepted the certificate (its signatures
/// checked) and [`tlsa::DaneVerifier`]'s check runs here, before any
/// command of the transaction is sent.
fn dane_check(
    records: &[tlsa::Tlsa],
    host: &str,
    domain: &str,
    chain: &[Vec<u8>],
) -> Result<(), String> {
    let names = vec![host.to_string(), domain.to_string()];
    tlsa::DaneVerifier::new(records.to_vec(), names).check(chain, UnixTime::now())
}
