//! MX routing through hickory against a real dnsmasq on loopback
//! (PEERS.md, "DNS on loopback"), and against a server that never answers.

use std::net::{SocketAddr, TcpListener, UdpSocket};

use mailrelay_crds::config::DnsConfig;
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::peers::free_udp_tcp_port;
use super::{Outcome, route};
use crate::policy::{HickoryDns, resolver};
use crate::testutil::dnsmasq::Dnsmasq;

const RECORDS: &str = "mx-host=example.test,mx1.example.test,10\n\
                       mx-host=example.test,mx2.example.test,20\n\
                       host-record=mx1.example.test,127.0.0.2\n\
                       host-record=mx2.example.test,127.0.0.3\n\
                       mx-host=nullmx.test,.,0\n\
                       host-record=aonly.test,127.0.0.4\n\
                       host-record=dual.test,127.0.0.5,::1\n\
                       mx-host=dangling.test,gone.dangling.test,10";

fn dns(server: SocketAddr, timeout_ms: u64) -> HickoryDns {
    let config = DnsConfig {
        nameservers: vec![server],
        timeout_ms,
    };
    resolver(&config, None).expect("resolver")
}

async fn routed(dns: &HickoryDns, domain: &str) -> Result<Vec<String>, Outcome> {
    let mut rng = StdRng::seed_from_u64(0);
    route(dns, domain, 2525, &mut rng)
        .await
        .map(|targets| {
            targets
                .iter()
                .map(|t| format!("{} {}", t.host, t.addr))
                .collect()
        })
        .map_err(Outcome::from)
}

#[tokio::test]
async fn mx_routing_against_dnsmasq() {
    let server = Dnsmasq::start(RECORDS).await;
    let dns = server.resolver(1000);
    let cases: [(&str, Result<Vec<&str>, Outcome>); 6] = [
        (
            "example.test",
            Ok(vec![
                "mx1.example.test 127.0.0.2:2525",
                "mx2.example.test 127.0.0.3:2525",
            ]),
        ),
        (
            "nullmx.test",
            Err(Outcome::perm(
                "nullmx.test: domain does not accept mail (null MX, RFC 7505)",
            )),
        ),
        // No MX: the implicit MX is the domain's own address (§5.1).
        ("aonly.test", Ok(vec!["aonly.test 127.0.0.4:2525"])),
        (
            "dual.test",
            Ok(vec!["dual.test [::1]:2525", "dual.test 127.0.0.5:2525"]),
        ),
        (
            "nx.test",
            Err(Outcome::perm("nx.test: no such domain (NXDOMAIN)")),
        ),
        (
            "dangling.test",
            Err(Outcome::perm(
                "dangling.test: no address for gone.dangling.test",
            )),
        ),
    ];
    for (domain, want) in cases {
        let want = want.map(|v| v.into_iter().map(String::from).collect::<Vec<_>>());
        assert_eq!(
            routed(&dns, domain).await,
            want,
            "{domain}:\n{}",
            server.log()
        );
    }
}

#[tokio::test]
async fn a_silent_server_is_a_temporary_failure() {
    // UDP and TCP bound and never read: queries time out.
    let port = free_udp_tcp_port();
    let _udp = UdpSocket::bind(("127.0.0.1", port)).expect("bind udp");
    let _tcp = TcpListener::bind(("127.0.0.1", port)).expect("bind tcp");
    let dns = dns(SocketAddr::from(([127, 0, 0, 1], port)), 200);
    let got = routed(&dns, "example.test").await;
    assert!(
        matches!(&got, Err(Outcome::TempFail { reason }) if reason.starts_with("DNS ") && reason.contains("looking up MX for example.test")),
        "{got:?}"
    );
}
