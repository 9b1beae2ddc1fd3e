//! DNSBL tests against a fake resolver; the real one (dnsmasq) is in
//! `dnsmasq_tests`.

use std::sync::Arc;

use mailrelay_crds::blocklist::BlockAction;
use mailrelay_crds::common::ObjectRef;
use mailrelay_crds::config::BlockRule;

use super::*;
use crate::policy::dns::DnsAnswer;
use crate::policy::dns::fake::FakeDns;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn zone(name: &str, codes: &[&str], action: BlockAction, rule_index: u32) -> DnsblZone {
    DnsblZone {
        zone: name.into(),
        return_codes: codes.iter().map(|c| c.parse().expect("net")).collect(),
        message: None,
        rule: Arc::new(BlockRule {
            action,
            source: ObjectRef::new("Blocklist", "", name),
            message: None,
        }),
        rule_index,
    }
}

fn answer(addrs: &[&str], ttl: u32) -> Result<DnsAnswer, DnsError> {
    Ok(DnsAnswer {
        addrs: addrs.iter().map(|a| ip(a)).collect(),
        ttl,
    })
}

#[test]
fn query_names_reverse_the_address() {
    for (addr, zone, want) in [
        ("192.0.2.1", "bl.example", "1.2.0.192.bl.example."),
        ("127.0.0.2", "zen.example", "2.0.0.127.zen.example."),
        ("::ffff:192.0.2.1", "bl.example", "1.2.0.192.bl.example."),
        (
            // RFC 5782 §2.4's example.
            "2001:db8:1:2:3:4:567:89ab",
            "ugly.example",
            "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.ugly.example.",
        ),
    ] {
        assert_eq!(query_name(ip(addr), zone), want, "{addr}");
    }
}

#[tokio::test]
async fn listings_count_only_inside_return_codes() {
    let mut dns = FakeDns::default();
    dns.a
        .insert("2.0.0.127.bl.example.".into(), answer(&["127.0.0.2"], 900));
    dns.a.insert(
        "3.0.0.127.bl.example.".into(),
        answer(&["127.255.255.254"], 900),
    );
    dns.a.insert(
        "5.0.0.127.bl.example.".into(),
        Err(DnsError::Temporary("SERVFAIL".into())),
    );
    let checker = DnsblChecker::new(dns, 100);
    let zones = [zone(
        "bl.example",
        &["127.0.0.0/24"],
        BlockAction::Reject,
        0,
    )];
    for (client, want) in [
        ("127.0.0.2", Ok(Some("127.0.0.2"))),
        ("::ffff:127.0.0.2", Ok(Some("127.0.0.2"))),
        ("127.0.0.3", Ok(None)),
        ("127.0.0.4", Ok(None)),
        ("127.0.0.5", Err(())),
    ] {
        let got = checker.check(&zones, ip(client)).await;
        let got = got
            .map(|hit| {
                hit.map(|h| match h.matched {
                    Matched::Dnsbl { answer, .. } => answer,
                    other => panic!("not a DNSBL hit: {other:?}"),
                })
            })
            .map_err(|_| ());
        assert_eq!(got, want.map(|a| a.map(ip)), "{client}");
    }
}

#[tokio::test]
async fn a_failure_is_an_error_unless_another_zone_lists_the_client() {
    let mut dns = FakeDns::default();
    dns.a.insert(
        "1.2.0.192.down.example.".into(),
        Err(DnsError::Temporary("timed out".into())),
    );
    dns.a
        .insert("1.2.0.192.up.example.".into(), answer(&["127.0.0.4"], 60));
    let checker = DnsblChecker::new(dns, 100);
    let down = zone("down.example", &["127.0.0.0/24"], BlockAction::Reject, 0);
    let up = zone("up.example", &["127.0.0.0/24"], BlockAction::TempFail, 1);
    let clean = zone("clean.example", &["127.0.0.0/24"], BlockAction::Reject, 2);

    let hit = checker
        .check(&[down.clone(), up], ip("192.0.2.1"))
        .await
        .expect("listing wins")
        .expect("listed");
    assert_eq!(hit.reply().code, 450);

    let err = checker
        .check(&[down, clean], ip("192.0.2.1"))
        .await
        .expect_err("failure");
    assert!(matches!(&err, DnsblError::Temporary { zone, .. } if zone == "down.example"));
    assert_eq!(err.reply().to_string().get(..9), Some("451 4.7.1"));
}

#[tokio::test]
async fn the_strictest_listing_wins_and_a_shared_zone_is_asked_once() {
    let mut dns = FakeDns::default();
    dns.a
        .insert("1.2.0.192.bl.example.".into(), answer(&["127.0.0.10"], 60));
    let checker = DnsblChecker::new(dns, 100);
    // Two lists use the zone: the stricter one only counts 127.0.0.2.
    let mut strict = zone("bl.example", &["127.0.0.2/32"], BlockAction::Reject, 0);
    strict.message = Some("strict".into());
    let loose = zone("bl.example", &["127.0.0.0/24"], BlockAction::TempFail, 1);
    let hit = checker
        .check(&[strict, loose], ip("192.0.2.1"))
        .await
        .expect("ok")
        .expect("listed");
    assert_eq!(
        hit.reply().to_string(),
        "450 4.7.1 Client address 192.0.2.1 is listed by bl.example"
    );
    assert_eq!(checker.dns().asked(), ["1.2.0.192.bl.example."]);
}

#[tokio::test]
async fn answers_are_cached() {
    let mut dns = FakeDns::default();
    dns.a
        .insert("1.2.0.192.bl.example.".into(), answer(&["127.0.0.2"], 0));
    let checker = DnsblChecker::new(dns, 100);
    let zones = [zone(
        "bl.example",
        &["127.0.0.0/24"],
        BlockAction::Reject,
        0,
    )];
    for _ in 0..3 {
        assert!(
            checker
                .check(&zones, ip("192.0.2.1"))
                .await
                .expect("ok")
                .is_some()
        );
        assert!(
            checker
                .check(&zones, ip("192.0.2.2"))
                .await
                .expect("ok")
                .is_none()
        );
    }
    assert_eq!(
        checker.dns().asked(),
        ["1.2.0.192.bl.example.", "2.2.0.192.bl.example."]
    );
}

#[tokio::test]
async fn failures_are_not_cached() {
    let mut dns = FakeDns::default();
    dns.a.insert(
        "1.2.0.192.bl.example.".into(),
        Err(DnsError::Temporary("SERVFAIL".into())),
    );
    let checker = DnsblChecker::new(dns, 100);
    let zones = [zone(
        "bl.example",
        &["127.0.0.0/24"],
        BlockAction::Reject,
        0,
    )];
    for _ in 0..2 {
        assert!(checker.check(&zones, ip("192.0.2.1")).await.is_err());
    }
    assert_eq!(checker.dns().asked().len(), 2);
}

#[test]
fn cache_lifetimes_follow_the_ttl_within_bounds() {
    let t0 = Instant::now();
    let secs = Duration::from_secs;
    let listed = vec![ip("127.0.0.2")];
    for (answers, ttl, alive_at, dead_at) in [
        // Positive: TTL clamped to [60 s, 1 h].
        (listed.clone(), 0, secs(59), secs(60)),
        (listed.clone(), 30, secs(59), secs(60)),
        (listed.clone(), 600, secs(599), secs(600)),
        (listed.clone(), 86_400, secs(3599), secs(3600)),
        // Negative: 5 minutes whatever the TTL.
        (Vec::new(), 0, secs(299), secs(300)),
        (Vec::new(), 86_400, secs(299), secs(300)),
    ] {
        let mut cache = DnsblCache::new(10);
        cache.insert("bl.example", ip("192.0.2.1"), answers.clone(), ttl, t0);
        assert_eq!(
            cache.get("bl.example", ip("192.0.2.1"), t0 + alive_at),
            Some(answers.as_slice()),
            "ttl {ttl} alive"
        );
        assert_eq!(
            cache.get("bl.example", ip("192.0.2.1"), t0 + dead_at),
            None,
            "ttl {ttl} dead"
        );
        assert_eq!(cache.get("other.example", ip("192.0.2.1"), t0), None);
    }
}

#[test]
fn the_cache_is_bounded_and_evicts_the_oldest() {
    let t0 = Instant::now();
    let mut cache = DnsblCache::new(3);
    let client = |i: u8| IpAddr::from([192, 0, 2, i]);
    for i in 1..=3 {
        cache.insert("bl.example", client(i), Vec::new(), 0, t0);
    }
    // Re-inserting 1 makes it the newest; 2 is now the oldest.
    cache.insert("bl.example", client(1), Vec::new(), 0, t0);
    cache.insert("bl.example", client(4), Vec::new(), 0, t0);
    assert_eq!(cache.len(), 3);
    for (i, present) in [(1, true), (2, false), (3, true), (4, true)] {
        assert_eq!(
            cache.get("bl.example", client(i), t0).is_some(),
            present,
            "{i}"
        );
    }
    for i in 5..=100 {
        cache.insert("bl.example", client(i), Vec::new(), 0, t0);
    }
    assert_eq!(cache.len(), 3);
    assert_eq!(cache.order.len(), 3);
}
