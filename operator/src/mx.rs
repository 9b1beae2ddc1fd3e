//! The periodic MX check of a MailDomain: do its MX records lead to the
//! external address of a Relay that serves it? Lookups at the edge
//! ([`MxChecker`]), the verdict pure (`verdict`).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::RData;
use mailrelay_crds::maildomain::DnsCheck;
use mailrelay_crds::resolver::{ResolverError, resolver};

/// How often a MailDomain's MX records are checked.
pub(crate) const INTERVAL: Duration = Duration::from_secs(600);

/// Looks up MX records and their addresses, and remembers each answer for
/// `INTERVAL` (per domain and set of Relay addresses): MailDomain
/// reconciles run on every Relay change, lookups need not.
pub struct MxChecker {
    resolver: TokioResolver,
    cache: std::sync::Mutex<BTreeMap<String, Cached>>,
}

type Cached = (std::time::Instant, Vec<String>, Result<DnsCheck, String>);

/// How long one MX or address query waits for an answer.
const TIMEOUT: Duration = Duration::from_secs(5);

impl MxChecker {
    /// A checker asking `servers`, or the nameservers of /etc/resolv.conf
    /// when there are none.
    pub fn new(servers: &[SocketAddr]) -> Result<Self, ResolverError> {
        Ok(Self {
            resolver: resolver(servers, TIMEOUT)?,
            cache: std::sync::Mutex::default(),
        })
    }

    /// [`Self::check`], answered from the cache while it is fresh.
    pub(crate) async fn check_cached(
        &self,
        domain: &str,
        external: &[String],
    ) -> Result<DnsCheck, String> {
        let hit = self.cache.lock().ok().and_then(|c| {
            c.get(domain)
                .filter(|(at, ext, _)| at.elapsed() < INTERVAL && ext == external)
                .map(|(_, _, r)| r.clone())
        });
        if let Some(r) = hit {
            return r;
        }
        let r = self.check(domain, external).await;
        if let Ok(mut c) = self.cache.lock() {
            c.insert(
                domain.to_string(),
                (std::time::Instant::now(), external.to_vec(), r.clone()),
            );
        }
        r
    }

    /// Check `domain` (an A-label) against the Relays' `external`
    /// addresses. `Err` when the lookup itself failed (a resolver outage
    /// says nothing about the domain's DNS).
    pub(crate) async fn check(
        &self,
        domain: &str,
        external: &[String],
    ) -> Result<DnsCheck, String> {
        let mx = match self.resolver.mx_lookup(format!("{domain}.")).await {
            Ok(lookup) => {
                let mut mx: Vec<(u16, String)> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::MX(m) => Some((m.preference, plain(&m.exchange.to_ascii()))),
                        _ => None,
                    })
                    .collect();
                mx.sort();
                mx
            }
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => Vec::new(),
            Err(e) => return Err(format!("MX lookup for {domain} failed: {e}")),
        };
        let mut addresses = BTreeMap::new();
        for (_, host) in &mx {
            let ips = match self.resolver.lookup_ip(format!("{host}.")).await {
                Ok(l) => l.iter().collect(),
                Err(_) => Vec::new(),
            };
            addresses.insert(host.clone(), ips);
        }
        Ok(verdict(domain, &mx, &addresses, external))
    }
}

fn plain(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Does one of the MX hosts (in preference order) name, or resolve to, one
/// of the `external` addresses (IPs or host names of the Relays' Services)?
pub(crate) fn verdict(
    domain: &str,
    mx: &[(u16, String)],
    addresses: &BTreeMap<String, Vec<IpAddr>>,
    external: &[String],
) -> DnsCheck {
    let hosts: Vec<String> = mx.iter().map(|(_, h)| h.clone()).collect();
    if external.is_empty() {
        return DnsCheck {
            mx: hosts,
            points_at_relay: false,
            message: "no serving Relay has an external address yet (a Service of type LoadBalancer, or externalIPs)".into(),
        };
    }
    if hosts.is_empty() {
        return DnsCheck {
            mx: hosts,
            points_at_relay: false,
            message: format!(
                "{domain} has no MX record; publish one naming {}",
                external[0]
            ),
        };
    }
    let external_ips: Vec<IpAddr> = external.iter().filter_map(|e| e.parse().ok()).collect();
    let hit = hosts.iter().find(|h| {
        external.iter().any(|e| plain(e) == **h)
            || addresses
                .get(*h)
                .is_some_and(|ips| ips.iter().any(|ip| external_ips.contains(ip)))
    });
    match hit {
        Some(h) => DnsCheck {
            mx: hosts.clone(),
            points_at_relay: true,
            message: format!("MX {h} reaches a serving Relay"),
        },
        None => DnsCheck {
            message: format!(
                "no MX host of {domain} ({}) resolves to a serving Relay's address ({})",
                hosts.join(", "),
                external.join(", ")
            ),
            mx: hosts,
            points_at_relay: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }

    #[test]
    fn an_mx_host_resolving_to_the_relay_address_passes() {
        let mx = vec![
            (10, "mx.example.com".to_string()),
            (20, "backup.example.net".to_string()),
        ];
        let addrs = BTreeMap::from([
            ("mx.example.com".to_string(), vec![ip("192.0.2.1")]),
            ("backup.example.net".to_string(), vec![ip("198.51.100.7")]),
        ]);
        let ok = verdict("example.com", &mx, &addrs, &["198.51.100.7".into()]);
        assert!(ok.points_at_relay, "{ok:?}");
        assert_eq!(ok.mx, ["mx.example.com", "backup.example.net"]);
        let bad = verdict("example.com", &mx, &addrs, &["203.0.113.9".into()]);
        assert!(!bad.points_at_relay);
        assert!(bad.message.contains("203.0.113.9"), "{}", bad.message);
    }

    #[test]
    fn a_load_balancer_host_name_matches_by_name() {
        let mx = vec![(10, "lb-1.elb.example".to_string())];
        let c = verdict(
            "example.com",
            &mx,
            &BTreeMap::new(),
            &["LB-1.elb.example.".into()],
        );
        assert!(c.points_at_relay);
    }

    #[test]
    fn no_mx_or_no_address_says_what_to_do() {
        let c = verdict("example.com", &[], &BTreeMap::new(), &["192.0.2.1".into()]);
        assert!(!c.points_at_relay);
        assert!(c.message.contains("no MX record"));
        let c = verdict("example.com", &[(10, "mx".into())], &BTreeMap::new(), &[]);
        assert!(c.message.contains("external address"));
    }

    #[test]
    fn resolv_conf_nameservers() {
        assert_eq!(
            mailrelay_crds::resolver::parse_resolv_conf(
                "# c\nnameserver 10.96.0.10\nsearch svc\nnameserver ::1 ; x\n"
            ),
            vec![
                "10.96.0.10:53"
                    .parse()
                    .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
                "[::1]:53"
                    .parse()
                    .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)))
            ]
        );
    }
}
