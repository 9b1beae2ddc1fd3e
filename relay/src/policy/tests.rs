//! `Policy` built from a compiled config: expiry, rule order, replies.

use std::time::Instant;

use mailrelay_crds::blocklist::BlockAction;
use mailrelay_crds::common::ObjectRef;
use mailrelay_crds::config::{AddressBlock, DnsblConfig, DomainBlock, IpBlock};

use super::*;

const NOW: i64 = 1_800_000_000;

fn rule(action: BlockAction, name: &str, message: Option<&str>) -> BlockRule {
    BlockRule {
        action,
        source: ObjectRef::new("Blocklist", "mail", name),
        message: message.map(str::to_string),
    }
}

fn ipb(net: &str, rule: u32, expires: Option<i64>) -> IpBlock {
    IpBlock {
        net: net.parse().expect("net"),
        rule,
        expires,
    }
}

fn dom(name: &str, wildcard: bool, rule: u32, expires: Option<i64>) -> DomainBlock {
    DomainBlock {
        name: name.into(),
        wildcard,
        rule,
        expires,
    }
}

fn config() -> PolicyConfig {
    PolicyConfig {
        rules: vec![
            rule(BlockAction::Reject, "hard", None),
            rule(
                BlockAction::Reject,
                "spam",
                Some("Spam source, see https://example.com"),
            ),
            rule(BlockAction::TempFail, "soft", None),
        ],
        ips: vec![
            ipb("10.0.0.0/8", 2, None),
            ipb("192.0.2.0/24", 0, Some(NOW)),
            ipb("192.0.2.0/24", 2, Some(NOW + 100)),
            ipb("198.51.100.7/32", 0, Some(NOW + 50)),
            ipb("198.51.100.7/32", 1, None),
            ipb("2001:db8::/32", 1, None),
            ipb("203.0.113.0/24", 9, None),
        ],
        domains: vec![
            dom("bad.example", false, 0, None),
            dom("gone.example", false, 0, Some(NOW - 1)),
            dom("spam.example", true, 1, None),
            dom("spam.example", true, 2, None),
        ],
        senders: vec![
            AddressBlock {
                address: "boss@example.com".into(),
                rule: 2,
                expires: Some(NOW + 10),
            },
            AddressBlock {
                address: "x@y.example".into(),
                rule: 1,
                expires: None,
            },
        ],
        dnsbl: vec![
            DnsblConfig {
                zone: "a.example".into(),
                return_codes: vec!["127.0.0.0/24".parse().expect("net")],
                message: None,
                rule: 2,
            },
            DnsblConfig {
                zone: "b.example".into(),
                return_codes: vec!["127.0.0.2/32".parse().expect("net")],
                message: Some("listed".into()),
                rule: 0,
            },
        ],
        recipients: vec![AddressBlock {
            address: "bob@example.net".into(),
            rule: 0,
            expires: None,
        }],
        recipient_domains: vec![
            dom("gone.example", false, 1, None),
            dom("old.example", true, 2, Some(NOW + 50)),
            dom("past.example", false, 0, Some(NOW)),
        ],
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn source(hit: &Hit) -> &str {
    &hit.rule.source.name
}

#[test]
fn client_addresses_take_the_first_unexpired_rule_of_the_longest_prefix() {
    let policy = Policy::build(&config(), NOW);
    for (client, want) in [
        // Rule 0's listing expired at NOW; rule 2's still holds.
        (
            "192.0.2.9",
            Some(("soft", "450 4.7.1 Client address 192.0.2.9 is blocked")),
        ),
        (
            "198.51.100.7",
            Some(("hard", "550 5.7.1 Client address 198.51.100.7 is blocked")),
        ),
        (
            "::ffff:10.1.2.3",
            Some(("soft", "450 4.7.1 Client address 10.1.2.3 is blocked")),
        ),
        (
            "2001:db8::25",
            Some(("spam", "550 5.7.1 Spam source, see https://example.com")),
        ),
        ("198.51.100.8", None),
        // Its rule does not exist: left out.
        ("203.0.113.1", None),
    ] {
        let hit = policy.check_ip(ip(client));
        let got = hit.as_ref().map(|h| (source(h), h.reply().to_string()));
        assert_eq!(got, want.map(|(s, r)| (s, r.to_string())), "{client}");
    }
    let hit = policy.check_ip(ip("::ffff:192.0.2.9")).expect("hit");
    assert_eq!(
        hit.matched,
        Matched::Client {
            ip: ip("192.0.2.9"),
            net: "192.0.2.0/24".parse().expect("net"),
        }
    );
}

#[test]
fn expiry_drops_entries_and_tells_when_to_rebuild() {
    let policy = Policy::build(&config(), NOW);
    assert_eq!(policy.next_expiry(), Some(NOW + 10));
    let later = Policy::build(&config(), NOW + 10);
    assert!(later.check_sender("boss@example.com").is_none());
    assert_eq!(later.next_expiry(), Some(NOW + 50));
    let later = Policy::build(&config(), NOW + 50);
    // Rule 0's /32 expired; rule 1's listing of the same network remains.
    let hit = later.check_ip(ip("198.51.100.7")).expect("hit");
    assert_eq!(source(&hit), "spam");
    let last = Policy::build(&config(), NOW + 100);
    assert_eq!(last.next_expiry(), None);
    assert!(last.check_ip(ip("192.0.2.9")).is_none());
}

#[test]
fn rule_order_wins_even_when_the_config_is_not_sorted() {
    let mut cfg = config();
    cfg.ips.reverse();
    cfg.domains.reverse();
    let policy = Policy::build(&cfg, NOW);
    let hit = policy.check_ip(ip("198.51.100.7")).expect("hit");
    assert_eq!(source(&hit), "hard");
    let hit = policy
        .check_name(NameRole::Helo, "a.spam.example")
        .expect("hit");
    assert_eq!(source(&hit), "spam");
}

#[test]
fn names_are_checked_in_each_role() {
    let policy = Policy::build(&config(), NOW);
    for (role, name, want) in [
        (
            NameRole::Helo,
            "BAD.example.",
            Some("550 5.7.1 HELO name bad.example is blocked"),
        ),
        (
            NameRole::ReverseDns,
            "bad.example",
            Some("550 5.7.1 Client host name bad.example is blocked"),
        ),
        (
            NameRole::SenderDomain,
            "bad.example",
            Some("550 5.7.1 Sender domain bad.example is blocked"),
        ),
        (
            NameRole::Helo,
            "Mx.Spam.Example",
            Some("550 5.7.1 Spam source, see https://example.com"),
        ),
        (NameRole::Helo, "spam.example", None),
        (NameRole::Helo, "gone.example", None),
        (NameRole::Helo, "good.example", None),
        (NameRole::Helo, "[192.0.2.1]", None),
    ] {
        let got = policy.check_name(role, name).map(|h| h.reply().to_string());
        assert_eq!(got.as_deref(), want, "{role:?} {name}");
    }
    let hit = policy
        .check_name(NameRole::Helo, "a.b.spam.example")
        .expect("hit");
    assert_eq!(
        hit.matched,
        Matched::Name {
            role: NameRole::Helo,
            name: "a.b.spam.example".into(),
            entry: "spam.example".into(),
            wildcard: true,
        }
    );
}

#[test]
fn suppressed_recipients_match_by_address_domain_or_parent_domain() {
    let policy = Policy::build(&config(), NOW);
    for (address, domain, want) in [
        (
            "bob@example.net",
            "example.net",
            Some("550 5.7.1 Recipient bob@example.net is on a suppression list"),
        ),
        ("alice@example.net", "example.net", None),
        (
            "x@gone.example",
            "gone.example",
            Some("550 5.7.1 Spam source, see https://example.com"),
        ),
        ("x@sub.gone.example", "sub.gone.example", None),
        (
            "x@a.old.example",
            "a.old.example",
            Some("450 4.7.1 Recipient x@a.old.example is on a suppression list"),
        ),
        ("x@old.example", "old.example", None),
        ("x@past.example", "past.example", None),
    ] {
        let got = policy
            .check_recipient(address, domain)
            .map(|h| h.reply().to_string());
        assert_eq!(got.as_deref(), want, "{address}");
    }
    assert_eq!(
        Policy::build(&config(), NOW + 50)
            .check_recipient("x@a.old.example", "a.old.example")
            .map(|h| h.reply().to_string()),
        None,
        "expired"
    );
}

#[test]
fn senders_match_exactly() {
    let policy = Policy::build(&config(), NOW);
    for (sender, want) in [
        (
            "boss@example.com",
            Some("450 4.7.1 Sender boss@example.com is blocked"),
        ),
        (
            "Boss@Example.COM",
            Some("450 4.7.1 Sender boss@example.com is blocked"),
        ),
        (
            "x@y.example",
            Some("550 5.7.1 Spam source, see https://example.com"),
        ),
        ("y@y.example", None),
        ("", None),
    ] {
        let got = policy.check_sender(sender).map(|h| h.reply().to_string());
        assert_eq!(got.as_deref(), want, "{sender}");
    }
}

#[test]
fn dnsbl_zones_come_strictest_first() {
    let policy = Policy::build(&config(), NOW);
    let zones: Vec<(&str, &str)> = policy
        .dnsbl_zones()
        .iter()
        .map(|z| (z.zone.as_str(), z.rule.source.name.as_str()))
        .collect();
    assert_eq!(zones, [("b.example", "hard"), ("a.example", "soft")]);
    assert!(policy.dnsbl_zones()[0].lists(ip("127.0.0.2")));
    assert!(!policy.dnsbl_zones()[0].lists(ip("127.0.0.3")));
    // Networks: 7 listed, one expired, one duplicate, one without a rule.
    // Names: 4 listed, one expired, one duplicate.
    // Recipients: one address, 3 domains of which one expired.
    assert_eq!(policy.entry_count(), 4 + 2 + 2 + 2 + 1 + 2);
}

#[test]
fn an_empty_policy_blocks_nothing() {
    let policy = Policy::build(&PolicyConfig::default(), NOW);
    assert!(policy.check_ip(ip("192.0.2.1")).is_none());
    assert!(policy.check_name(NameRole::Helo, "x.example").is_none());
    assert!(policy.check_sender("a@b.example").is_none());
    assert!(policy.dnsbl_zones().is_empty());
    assert_eq!(policy.next_expiry(), None);
    assert!(Policy::default().check_ip(ip("::1")).is_none());
}

#[test]
#[ignore = "measurement: cargo test --release -p mailrelay policy -- --ignored --nocapture"]
fn policy_measure_build_from_config() {
    let mut cfg = PolicyConfig {
        rules: vec![rule(BlockAction::Reject, "big", None)],
        ..PolicyConfig::default()
    };
    cfg.ips = (0..1_000_000u32)
        .map(|i| {
            ipb(
                &format!(
                    "{}/32",
                    std::net::Ipv4Addr::from(i.wrapping_mul(2_654_435_761))
                ),
                0,
                None,
            )
        })
        .collect();
    cfg.domains = (0..1_000_000u32)
        .map(|i| dom(&format!("h{i}.example"), i % 3 == 0, 0, None))
        .collect();
    let t = Instant::now();
    let policy = Policy::build(&cfg, NOW);
    println!(
        "policy: built {} entries (1,000,000 networks + 1,000,000 names) in {:?}",
        policy.entry_count(),
        t.elapsed()
    );
}
