//! One way from resolv.conf to a hickory resolver, shared by the relay
//! (DNSBL, reverse DNS, MX routing) and the operator (the MailDomains' MX
//! check), so both ask the same servers the same way.
//!
//! Each server is asked over UDP and TCP on its own port. There is never a
//! search domain: every name either looks up is fully qualified, and a
//! DNSBL query that wandered into a search domain would give wrong answers.
//! The hosts file is not consulted either, for the same reason.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;

/// Where the system's resolvers are listed.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// Why a resolver could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ResolverError {
    #[error("cannot read {path}: {source}")]
    ReadResolvConf {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no nameserver configured and none in {path}")]
    NoNameservers { path: String },
    #[error("cannot build the DNS resolver: {0}")]
    Build(#[source] NetError),
}

/// A resolver asking `servers`, or the nameservers of [`RESOLV_CONF`] when
/// `servers` is empty, waiting `timeout` for each answer. Needs no
/// runtime to build, only to look up.
pub fn resolver(servers: &[SocketAddr], timeout: Duration) -> Result<TokioResolver, ResolverError> {
    let (config, options) = settings(servers, timeout)?;
    TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(options)
        .build()
        .map_err(ResolverError::Build)
}

/// The configuration and options [`resolver`] builds with, for a resolver
/// that needs more (the relay's validating one for DANE).
pub fn settings(
    servers: &[SocketAddr],
    timeout: Duration,
) -> Result<(ResolverConfig, ResolverOpts), ResolverError> {
    let servers = if servers.is_empty() {
        system_nameservers()?
    } else {
        servers.to_vec()
    };
    if servers.is_empty() {
        return Err(ResolverError::NoNameservers {
            path: RESOLV_CONF.into(),
        });
    }
    let name_servers = servers
        .iter()
        .map(|s| {
            let mut udp = ConnectionConfig::udp();
            udp.port = s.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = s.port();
            NameServerConfig::new(s.ip(), true, vec![udp, tcp])
        })
        .collect();
    let mut options = ResolverOpts::default();
    options.timeout = timeout;
    options.use_hosts_file = ResolveHosts::Never;
    Ok((ResolverConfig::from_name_servers(name_servers), options))
}

/// The nameservers of [`RESOLV_CONF`].
fn system_nameservers() -> Result<Vec<SocketAddr>, ResolverError> {
    let text =
        std::fs::read_to_string(RESOLV_CONF).map_err(|source| ResolverError::ReadResolvConf {
            path: RESOLV_CONF.into(),
            source,
        })?;
    Ok(parse_resolv_conf(&text))
}

/// The `nameserver` lines of a resolv.conf (port 53). Search and domain
/// lines are ignored on purpose (see the module doc); so are addresses with
/// a zone index (`fe80::1%eth0`), which a socket address cannot carry.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let line = line.split(['#', ';']).next()?;
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            let ip: IpAddr = words.next()?.parse().ok()?;
            Some(SocketAddr::new(ip, 53))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn resolv_conf_gives_nameservers_only() {
        let cases: [(&str, &str, Vec<SocketAddr>); 7] = [
            ("empty", "", vec![]),
            (
                "one",
                "nameserver 10.96.0.10\n",
                vec![addr("10.96.0.10:53")],
            ),
            (
                "v6, with a comment",
                "nameserver ::1 ; x\nnameserver 2001:db8::53 # v6\n",
                vec![addr("[::1]:53"), addr("[2001:db8::53]:53")],
            ),
            (
                "search, domain and options lines",
                "search svc.cluster.local\ndomain corp.example\noptions ndots:5\n",
                vec![],
            ),
            (
                "commented out",
                "# nameserver 192.0.2.1\n; nameserver 192.0.2.99\n",
                vec![],
            ),
            (
                "a zone index, a bogus address, no address",
                "nameserver fe80::1%eth0\nnameserver bogus\nnameserver\n",
                vec![],
            ),
            (
                "leading blanks and a tab",
                "  nameserver\t192.0.2.53\n",
                vec![addr("192.0.2.53:53")],
            ),
        ];
        for (name, text, want) in cases {
            assert_eq!(parse_resolv_conf(text), want, "{name}");
        }
    }

    #[test]
    fn a_resolver_keeps_the_timeout_and_never_reads_the_hosts_file() {
        let r = resolver(&[addr("127.0.0.1:5353")], Duration::from_millis(700))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.options().timeout, Duration::from_millis(700));
        assert_eq!(r.options().use_hosts_file, ResolveHosts::Never);
    }
}
