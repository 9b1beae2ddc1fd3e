//! Routing a remote domain: which hosts to try, in which order (RFC 5321
//! §5.1, RFC 7505). The DNS sits behind [`MxDns`] so the ordering logic is
//! tested with a fake; hickory's resolver implements it for real.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};

use rand::Rng;
use rand::seq::SliceRandom;

use super::Outcome;

/// One address to try, with the name it was found under: the MX host,
/// which TLS uses for SNI and to check the certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The MX host name (or the domain itself for an implicit MX),
    /// lower-case, without a trailing dot.
    pub host: String,
    pub addr: SocketAddr,
}

/// Why a lookup gave no records.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// The name does not exist: a definite answer.
    #[error("NXDOMAIN")]
    NxDomain,
    /// The name exists without records of that type (NODATA).
    #[error("no records")]
    NoRecords,
    #[error("timeout")]
    Timeout,
    /// SERVFAIL, REFUSED, a network error: ask again later.
    #[error("{0}")]
    Failed(String),
}

/// The lookups routing needs. Names are passed and returned lower-case
/// without a trailing dot; the root name (a null MX's exchange) is `.`.
pub trait MxDns: Send + Sync {
    /// MX records of `domain` as `(preference, exchange)`.
    fn mx(&self, domain: &str)
    -> impl Future<Output = Result<Vec<(u16, String)>, DnsError>> + Send;
    /// A and AAAA addresses of `host`, IPv6 first.
    fn addrs(&self, host: &str) -> impl Future<Output = Result<Vec<IpAddr>, DnsError>> + Send;
}

/// Why a domain has no host to try.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// RFC 7505 §3: a single MX of `0 .` says the domain takes no mail.
    #[error("{domain}: domain does not accept mail (null MX, RFC 7505)")]
    NullMx { domain: String },
    #[error("{domain}: no such domain (NXDOMAIN)")]
    NoSuchDomain { domain: String },
    /// Every host to try has no address (definite answers only).
    #[error("{domain}: no address for {}", hosts.join(", "))]
    NoAddress { domain: String, hosts: Vec<String> },
    /// A configured host (smarthost, mailbox server) has no address:
    /// a configuration problem, so temporary — mail waits for the fix
    /// instead of bouncing.
    #[error("configured host {host} has no address")]
    UnknownHost { host: String },
    #[error("DNS timeout looking up {rtype} for {name}")]
    Timeout { rtype: &'static str, name: String },
    #[error("DNS error looking up {rtype} for {name}: {error}")]
    Failed {
        rtype: &'static str,
        name: String,
        error: String,
    },
}

impl From<RouteError> for Outcome {
    /// Definite DNS answers are permanent; failures to get one are not.
    fn from(e: RouteError) -> Self {
        match e {
            RouteError::NullMx { .. }
            | RouteError::NoSuchDomain { .. }
            | RouteError::NoAddress { .. } => Outcome::perm(e.to_string()),
            RouteError::UnknownHost { .. }
            | RouteError::Timeout { .. }
            | RouteError::Failed { .. } => Outcome::temp(e.to_string()),
        }
    }
}

fn lookup_error(rtype: &'static str, name: &str, e: DnsError) -> RouteError {
    match e {
        DnsError::Timeout => RouteError::Timeout {
            rtype,
            name: name.to_string(),
        },
        other => RouteError::Failed {
            rtype,
            name: name.to_string(),
            error: other.to_string(),
        },
    }
}

/// The hosts to try for `domain`, in order, each address with `port`
/// (25 in production; tests use a high port). `rng` orders equal
/// preferences; it lives across the lookups, so the future is `Send` when
/// the generator is (`StdRng`, not `ThreadRng`).
pub async fn route<D: MxDns, R: Rng + ?Sized>(
    dns: &D,
    domain: &str,
    port: u16,
    rng: &mut R,
) -> Result<Vec<Target>, RouteError> {
    let hosts = match dns.mx(domain).await {
        Ok(records) if !records.is_empty() => mx_hosts(domain, records, rng)?,
        // RFC 5321 §5.1: no MX records at all means the domain itself is
        // the one host, at preference 0 (the implicit MX).
        Ok(_) | Err(DnsError::NoRecords) => vec![domain.to_string()],
        Err(DnsError::NxDomain) => {
            return Err(RouteError::NoSuchDomain {
                domain: domain.to_string(),
            });
        }
        Err(e) => return Err(lookup_error("MX", domain, e)),
    };
    let mut targets: Vec<Target> = Vec::new();
    let mut temporary = None;
    for host in &hosts {
        match dns.addrs(host).await {
            Ok(addrs) => {
                for ip in addrs {
                    let addr = SocketAddr::new(ip, port);
                    // Two MX names for one address: one connection is enough.
                    if !targets.iter().any(|t| t.addr == addr) {
                        targets.push(Target {
                            host: host.clone(),
                            addr,
                        });
                    }
                }
            }
            Err(DnsError::NxDomain | DnsError::NoRecords) => {
                tracing::debug!(domain, host, "MX host has no address");
            }
            Err(e) => {
                tracing::debug!(domain, host, error = %e, "MX host address lookup failed");
                temporary.get_or_insert(lookup_error("A/AAAA", host, e));
            }
        }
    }
    if targets.is_empty() {
        // §5.1: no usable host is an error; permanent only when every
        // answer was definite.
        return Err(temporary.unwrap_or(RouteError::NoAddress {
            domain: domain.to_string(),
            hosts,
        }));
    }
    tracing::debug!(domain, ?targets, "routed");
    Ok(targets)
}

/// The addresses of a configured host (a smarthost, a hosted domain's
/// SMTP mailbox server), without MX: an IP literal as it is, a name
/// through A/AAAA. `host` stays the TLS name.
pub async fn resolve_host<D: MxDns>(
    dns: &D,
    host: &str,
    port: u16,
) -> Result<Vec<Target>, RouteError> {
    let addrs = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => match dns.addrs(host).await {
            Ok(addrs) if !addrs.is_empty() => addrs,
            Ok(_) | Err(DnsError::NxDomain | DnsError::NoRecords) => {
                return Err(RouteError::UnknownHost {
                    host: host.to_string(),
                });
            }
            Err(e) => return Err(lookup_error("A/AAAA", host, e)),
        },
    };
    Ok(addrs
        .into_iter()
        .map(|ip| Target {
            host: host.to_string(),
            addr: SocketAddr::new(ip, port),
        })
        .collect())
}

/// MX records to host names in the order to try: by preference, random
/// among equal preferences (RFC 5321 §5.1, to spread load), each name
/// once. A null MX (RFC 7505) ends routing; a `.` mixed with real hosts
/// (which §3 forbids) is simply not a host.
fn mx_hosts<R: Rng + ?Sized>(
    domain: &str,
    mut records: Vec<(u16, String)>,
    rng: &mut R,
) -> Result<Vec<String>, RouteError> {
    if records.iter().all(|(_, host)| is_root(host)) {
        return Err(RouteError::NullMx {
            domain: domain.to_string(),
        });
    }
    records.retain(|(_, host)| !is_root(host));
    records.sort_by_key(|(preference, _)| *preference);
    for same in records.chunk_by_mut(|a, b| a.0 == b.0) {
        same.shuffle(rng);
    }
    let mut hosts: Vec<String> = Vec::with_capacity(records.len());
    for (_, host) in records {
        if !hosts.contains(&host) {
            hosts.push(host);
        }
    }
    Ok(hosts)
}

fn is_root(host: &str) -> bool {
    host.is_empty() || host == "."
}
