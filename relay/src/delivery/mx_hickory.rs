//! [`MxDns`] over hickory: the resolver the relay already builds for
//! policy (`policy::resolver`), so routing shares its servers and cache.

use std::net::IpAddr;

use hickory_resolver::TokioResolver;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::{Name, RData};

use super::mx::{DnsError, MxDns};
use crate::policy::HickoryDns;

/// A name as [`MxDns`] passes it: lower-case, no trailing dot, `.` for
/// the root.
fn plain_name(name: &Name) -> String {
    if name.is_root() {
        return ".".to_string();
    }
    let ascii = name.to_ascii().to_ascii_lowercase();
    ascii.strip_suffix('.').unwrap_or(&ascii).to_string()
}

/// A trailing dot makes a name fully qualified for hickory, so that no
/// search domain is ever tried.
fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

fn classify(e: &NetError) -> DnsError {
    if e.is_nx_domain() {
        DnsError::NxDomain
    } else if e.is_no_records_found() {
        DnsError::NoRecords
    } else if matches!(e, NetError::Timeout) {
        DnsError::Timeout
    } else {
        DnsError::Failed(e.to_string())
    }
}

impl MxDns for TokioResolver {
    async fn mx(&self, domain: &str) -> Result<Vec<(u16, String)>, DnsError> {
        let lookup = self
            .mx_lookup(fqdn(domain))
            .await
            .map_err(|e| classify(&e))?;
        // A CNAME on the way is followed by the resolver; keep the MXs.
        Ok(lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::MX(mx) => Some((mx.preference, plain_name(&mx.exchange))),
                _ => None,
            })
            .collect())
    }

    async fn addrs(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        let name = fqdn(host);
        let (v6, v4) = tokio::join!(self.ipv6_lookup(name.clone()), self.ipv4_lookup(name));
        let mut addrs = Vec::new();
        let mut errors = Vec::new();
        for result in [v6, v4] {
            match result {
                Ok(lookup) => addrs.extend(lookup.answers().iter().filter_map(|r| match &r.data {
                    RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    _ => None,
                })),
                Err(e) => errors.push(classify(&e)),
            }
        }
        if !addrs.is_empty() {
            // One family is enough to try; the other's failure only
            // narrows the choice.
            return Ok(addrs);
        }
        // A failure to get an answer outweighs a definite "no" from the
        // other family; NXDOMAIN needs both to say so.
        if let Some(e) = errors
            .iter()
            .find(|e| matches!(e, DnsError::Timeout | DnsError::Failed(_)))
        {
            return Err(e.clone());
        }
        if errors.len() == 2 && errors.iter().all(|e| *e == DnsError::NxDomain) {
            return Err(DnsError::NxDomain);
        }
        Err(DnsError::NoRecords)
    }
}

impl MxDns for HickoryDns {
    async fn mx(&self, domain: &str) -> Result<Vec<(u16, String)>, DnsError> {
        MxDns::mx(self.inner(), domain).await
    }

    async fn addrs(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        MxDns::addrs(self.inner(), host).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_and_fqdns_dotted() {
        let name = |s: &str| Name::from_ascii(s).expect("name");
        assert_eq!(plain_name(&name("MX1.Example.TEST.")), "mx1.example.test");
        assert_eq!(plain_name(&Name::root()), ".");
        assert_eq!(fqdn("x.test"), "x.test.");
        assert_eq!(fqdn("x.test."), "x.test.");
    }
}
