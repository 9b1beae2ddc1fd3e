//! The DNS seam: a small trait for the lookups policy needs (A for DNSBL
//! zones, PTR for reverse DNS), implemented over hickory's tokio resolver,
//! so tests can put a fake behind it.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::RData;
use mailrelay_crds::compile::normalize;
use mailrelay_crds::config::DnsConfig;
// The set-up is shared with the operator's MX check; re-exported so the
// relay's callers keep naming them here.
pub use mailrelay_crds::resolver::{ResolverError, parse_resolv_conf};

/// The addresses of an A lookup, and the smallest TTL among them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsAnswer {
    pub addrs: Vec<IpAddr>,
    pub ttl: u32,
}

/// Why a lookup gave no answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// NXDOMAIN, or the name exists without records of that type: a
    /// definite "no".
    #[error("no such record")]
    NotFound,
    /// Timeout, SERVFAIL, REFUSED, a network error: ask again later.
    #[error("temporary DNS failure: {0}")]
    Temporary(String),
}

/// The lookups policy makes.
pub trait Dns: Send + Sync {
    /// IPv4 addresses of `name` (taken as fully qualified).
    fn lookup_a(&self, name: &str) -> impl Future<Output = Result<DnsAnswer, DnsError>> + Send;
    /// PTR names of `ip`, as returned.
    fn lookup_ptr(&self, ip: IpAddr) -> impl Future<Output = Result<Vec<String>, DnsError>> + Send;
}

/// hickory's tokio resolver behind [`Dns`].
#[derive(Clone)]
pub struct HickoryDns {
    resolver: TokioResolver,
    /// Bound on a whole lookup, retries included, so that no session waits
    /// on DNS forever whatever the resolver does inside.
    deadline: Duration,
}

impl std::fmt::Debug for HickoryDns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HickoryDns")
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl HickoryDns {
    /// The underlying resolver, for lookups this trait does not cover
    /// (MX routing shares it and its cache).
    pub fn inner(&self) -> &TokioResolver {
        &self.resolver
    }

    /// The bound on one lookup, retries included.
    pub(crate) fn deadline(&self) -> Duration {
        self.deadline
    }
}

/// A resolver for `config`: its nameservers, or the system's from
/// /etc/resolv.conf when it lists none; with `override_server` (the
/// relay's `--dns` flag) only that one. Set up by
/// [`mailrelay_crds::resolver::resolver`]: UDP and TCP on each server's
/// port, the configured timeout per query, no search domain, no hosts file.
pub fn resolver(
    config: &DnsConfig,
    override_server: Option<SocketAddr>,
) -> Result<HickoryDns, ResolverError> {
    let servers = match override_server {
        Some(server) => vec![server],
        None => config.nameservers.clone(),
    };
    let timeout = Duration::from_millis(config.timeout_ms.max(1));
    let resolver = mailrelay_crds::resolver::resolver(&servers, timeout)?;
    let attempts = u32::try_from(resolver.options().attempts).unwrap_or(u32::MAX);
    tracing::debug!(?servers, ?timeout, "DNS resolver built");
    Ok(HickoryDns {
        resolver,
        // One try plus the retries, and a second of slack.
        deadline: timeout
            .saturating_mul(attempts.saturating_add(1))
            .saturating_add(Duration::from_secs(1)),
    })
}

impl Dns for HickoryDns {
    async fn lookup_a(&self, name: &str) -> Result<DnsAnswer, DnsError> {
        // A trailing dot makes the name fully qualified for hickory.
        let fqdn = if name.ends_with('.') {
            name.to_string()
        } else {
            format!("{name}.")
        };
        let lookup = tokio::time::timeout(self.deadline, self.resolver.ipv4_lookup(fqdn))
            .await
            .map_err(|_| DnsError::Temporary(format!("no answer within {:?}", self.deadline)))?
            .map_err(classify)?;
        let mut answer = DnsAnswer {
            addrs: Vec::new(),
            ttl: u32::MAX,
        };
        // CNAMEs on the way are skipped; only the addresses count.
        for record in lookup.answers() {
            if let RData::A(a) = &record.data {
                answer.addrs.push(IpAddr::V4(a.0));
                answer.ttl = answer.ttl.min(record.ttl);
            }
        }
        if answer.addrs.is_empty() {
            return Err(DnsError::NotFound);
        }
        Ok(answer)
    }

    async fn lookup_ptr(&self, ip: IpAddr) -> Result<Vec<String>, DnsError> {
        let lookup = tokio::time::timeout(self.deadline, self.resolver.reverse_lookup(ip))
            .await
            .map_err(|_| DnsError::Temporary(format!("no answer within {:?}", self.deadline)))?
            .map_err(classify)?;
        let names: Vec<String> = lookup
            .answers()
            .iter()
            .filter_map(|record| match &record.data {
                RData::PTR(ptr) => Some(ptr.0.to_ascii()),
                _ => None,
            })
            .collect();
        if names.is_empty() {
            return Err(DnsError::NotFound);
        }
        Ok(names)
    }
}

/// NXDOMAIN and NODATA are answers; everything else (timeouts, SERVFAIL,
/// REFUSED, I/O) is a failure that must not pass a client silently.
fn classify(e: NetError) -> DnsError {
    if e.is_no_records_found() {
        DnsError::NotFound
    } else {
        DnsError::Temporary(e.to_string())
    }
}

/// The client's reverse-DNS name: the first PTR name that is a valid
/// domain name, normalised (lower-case A-label, no trailing dot). `None`
/// when there is no PTR record; a DNS failure is an error, not `None`.
pub async fn reverse_name<D: Dns>(dns: &D, ip: IpAddr) -> Result<Option<String>, DnsError> {
    match dns.lookup_ptr(normalize::unmap_addr(ip)).await {
        Ok(names) => Ok(names.iter().find_map(|n| normalize::domain_name(n).ok())),
        Err(DnsError::NotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! An in-memory [`Dns`] for unit tests.

    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    #[derive(Default)]
    pub(crate) struct FakeDns {
        pub a: HashMap<String, Result<DnsAnswer, DnsError>>,
        pub ptr: HashMap<IpAddr, Result<Vec<String>, DnsError>>,
        /// Every name asked for, in order.
        pub asked: Mutex<Vec<String>>,
    }

    impl FakeDns {
        pub(crate) fn asked(&self) -> Vec<String> {
            self.asked.lock().map(|a| a.clone()).unwrap_or_default()
        }
    }

    impl Dns for FakeDns {
        async fn lookup_a(&self, name: &str) -> Result<DnsAnswer, DnsError> {
            if let Ok(mut asked) = self.asked.lock() {
                asked.push(name.to_string());
            }
            self.a.get(name).cloned().unwrap_or(Err(DnsError::NotFound))
        }

        async fn lookup_ptr(&self, ip: IpAddr) -> Result<Vec<String>, DnsError> {
            if let Ok(mut asked) = self.asked.lock() {
                asked.push(ip.to_string());
            }
            self.ptr
                .get(&ip)
                .cloned()
                .unwrap_or(Err(DnsError::NotFound))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeDns;
    use super::*;

    #[test]
    fn resolv_conf_gives_nameservers_only() {
        let text = "# generated\nsearch corp.example\ndomain corp.example\n\
                    nameserver 10.0.0.10\nnameserver 2001:db8::53 # v6\n\
                    nameserver fe80::1%eth0\n  nameserver\t192.0.2.53\n\
                    ; nameserver 192.0.2.99\noptions ndots:5\nnameserver bogus\n";
        let want: Vec<SocketAddr> = ["10.0.0.10:53", "[2001:db8::53]:53", "192.0.2.53:53"]
            .iter()
            .map(|s| s.parse().expect("addr"))
            .collect();
        assert_eq!(parse_resolv_conf(text), want);
        assert!(parse_resolv_conf("").is_empty());
    }

    #[tokio::test]
    async fn reverse_names_are_normalised_and_failures_are_errors() {
        let mut dns = FakeDns::default();
        let ip = |s: &str| -> IpAddr { s.parse().expect("ip") };
        dns.ptr.insert(
            ip("192.0.2.1"),
            Ok(vec!["bad name.".into(), "Mail.Example.COM.".into()]),
        );
        dns.ptr
            .insert(ip("192.0.2.2"), Err(DnsError::Temporary("SERVFAIL".into())));
        dns.ptr
            .insert(ip("192.0.2.3"), Ok(vec!["not valid!".into()]));
        for (addr, want) in [
            ("192.0.2.1", Ok(Some("mail.example.com".to_string()))),
            ("::ffff:192.0.2.1", Ok(Some("mail.example.com".to_string()))),
            ("192.0.2.2", Err(DnsError::Temporary("SERVFAIL".into()))),
            ("192.0.2.3", Ok(None)),
            ("192.0.2.4", Ok(None)),
        ] {
            assert_eq!(reverse_name(&dns, ip(addr)).await, want, "{addr}");
        }
    }

    #[test]
    fn a_resolver_needs_a_nameserver_but_not_a_runtime() {
        let config = DnsConfig {
            nameservers: vec!["127.0.0.1:5353".parse().expect("addr")],
            timeout_ms: 500,
        };
        let dns = resolver(&config, None).expect("resolver");
        assert_eq!(dns.deadline, Duration::from_millis(2500));
        let over = resolver(&config, Some("127.0.0.1:5454".parse().expect("addr")));
        assert!(over.is_ok());
    }
}
