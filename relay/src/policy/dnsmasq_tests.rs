//! DNSBL and PTR lookups through hickory against a real dnsmasq on
//! loopback (PEERS.md, "DNS on loopback"), and a resolver that never
//! answers. Never skipped: without dnsmasq the test fails and says why.

use std::net::{IpAddr, UdpSocket};
use std::sync::Arc;

use mailrelay_crds::blocklist::BlockAction;
use mailrelay_crds::common::ObjectRef;
use mailrelay_crds::config::{BlockRule, DnsConfig};

use super::*;
use crate::testutil::dnsmasq::Dnsmasq;

const RECORDS: &str = "address=/2.0.0.127.bl.test/127.0.0.2\n\
                       address=/3.0.0.127.bl.test/127.255.255.254\n\
                       ptr-record=5.2.0.192.in-addr.arpa,Mail.Example.test\n\
                       local=/2.0.192.in-addr.arpa/";

fn dns_config(timeout_ms: u64) -> DnsConfig {
    DnsConfig {
        nameservers: Vec::new(),
        timeout_ms,
    }
}

fn bl_test_zone() -> DnsblZone {
    DnsblZone {
        zone: "bl.test".into(),
        return_codes: vec!["127.0.0.0/24".parse().expect("net")],
        message: None,
        rule: Arc::new(BlockRule {
            action: BlockAction::Reject,
            source: ObjectRef::new("Blocklist", "", "dnsbl"),
            message: None,
        }),
        rule_index: 0,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

#[tokio::test]
async fn dnsbl_and_ptr_lookups_against_a_real_dnsmasq() {
    let server = Dnsmasq::start(RECORDS).await;
    let dns = server.resolver(2_000);
    let checker = DnsblChecker::new(dns, 1_000);
    let zones = [bl_test_zone()];

    let hit = checker
        .check(&zones, ip("127.0.0.2"))
        .await
        .expect("lookup")
        .expect("127.0.0.2 is listed");
    assert_eq!(
        hit.reply().to_string(),
        "550 5.7.1 Client address 127.0.0.2 is listed by bl.test"
    );
    // Answered, but 127.255.255.254 is outside the return codes.
    assert_eq!(checker.check(&zones, ip("127.0.0.3")).await, Ok(None));
    // NXDOMAIN (`--local=/test/`).
    assert_eq!(checker.check(&zones, ip("127.0.0.4")).await, Ok(None));

    assert_eq!(
        reverse_name(checker.dns(), ip("192.0.2.5")).await,
        Ok(Some("mail.example.test".to_string()))
    );
    // NXDOMAIN (`local=/2.0.192.in-addr.arpa/`). Loopback addresses are
    // no use here: hickory answers their PTR itself (RFC 6761 localhost).
    assert_eq!(reverse_name(checker.dns(), ip("192.0.2.9")).await, Ok(None));

    // With dnsmasq gone, the listing still comes from the cache.
    drop(server);
    let hit = checker.check(&zones, ip("127.0.0.2")).await;
    assert!(matches!(hit, Ok(Some(_))), "{hit:?}");
}

#[tokio::test]
async fn a_resolver_that_never_answers_is_a_temporary_failure() {
    // Bound and never read: queries vanish, as with a dead resolver.
    let silent = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("addr");
    let dns = resolver(&dns_config(200), Some(addr)).expect("resolver");
    let got = dns.lookup_a("2.0.0.127.bl.test.").await;
    assert!(matches!(got, Err(DnsError::Temporary(_))), "{got:?}");

    let checker = DnsblChecker::new(dns, 10);
    let got = checker.check(&[bl_test_zone()], ip("127.0.0.2")).await;
    assert!(matches!(got, Err(DnsblError::Temporary { .. })), "{got:?}");
    drop(silent);
}
