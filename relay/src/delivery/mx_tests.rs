//! Routing with an in-memory DNS: preference order, shuffling among
//! equals, implicit and null MX, and which failures are permanent.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::Outcome;
use super::mx::{DnsError, MxDns, RouteError, Target, resolve_host, route};

/// An in-memory DNS: unknown names are NXDOMAIN.
#[derive(Default)]
struct FakeDns {
    mx: HashMap<String, Result<Vec<(u16, String)>, DnsError>>,
    addrs: HashMap<String, Result<Vec<IpAddr>, DnsError>>,
}

impl FakeDns {
    fn mx(mut self, domain: &str, answer: Result<Vec<(u16, &str)>, DnsError>) -> Self {
        let answer = answer.map(|v| v.into_iter().map(|(p, h)| (p, h.to_string())).collect());
        self.mx.insert(domain.into(), answer);
        self
    }

    fn host(mut self, host: &str, answer: Result<Vec<&str>, DnsError>) -> Self {
        let answer = answer.map(|v| v.iter().map(|ip| ip.parse().expect("ip")).collect());
        self.addrs.insert(host.into(), answer);
        self
    }
}

impl MxDns for FakeDns {
    async fn mx(&self, domain: &str) -> Result<Vec<(u16, String)>, DnsError> {
        self.mx
            .get(domain)
            .cloned()
            .unwrap_or(Err(DnsError::NxDomain))
    }

    async fn addrs(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        self.addrs
            .get(host)
            .cloned()
            .unwrap_or(Err(DnsError::NxDomain))
    }
}

async fn route_seeded(dns: &FakeDns, domain: &str, seed: u64) -> Result<Vec<String>, Outcome> {
    let mut rng = StdRng::seed_from_u64(seed);
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

fn three_mx() -> FakeDns {
    FakeDns::default()
        .mx(
            "x.test",
            Ok(vec![(20, "b.x.test"), (10, "a.x.test"), (30, "c.x.test")]),
        )
        .host("a.x.test", Ok(vec!["2001:db8::a", "192.0.2.1"]))
        .host("b.x.test", Ok(vec!["192.0.2.2"]))
        .host("c.x.test", Ok(vec!["192.0.2.3"]))
}

#[tokio::test]
async fn routes_follow_preference_then_address_order() {
    let got = route_seeded(&three_mx(), "x.test", 1).await;
    assert_eq!(
        got,
        Ok(vec![
            "a.x.test [2001:db8::a]:2525".to_string(),
            "a.x.test 192.0.2.1:2525".into(),
            "b.x.test 192.0.2.2:2525".into(),
            "c.x.test 192.0.2.3:2525".into(),
        ])
    );
}

#[tokio::test]
async fn equal_preferences_are_shuffled_but_stay_behind_better_ones() {
    let dns = FakeDns::default()
        .mx(
            "x.test",
            Ok(vec![
                (10, "a.x.test"),
                (10, "b.x.test"),
                (5, "first.x.test"),
                (20, "last.x.test"),
            ]),
        )
        .host("a.x.test", Ok(vec!["192.0.2.1"]))
        .host("b.x.test", Ok(vec!["192.0.2.2"]))
        .host("first.x.test", Ok(vec!["192.0.2.5"]))
        .host("last.x.test", Ok(vec!["192.0.2.9"]));
    let mut seen = BTreeSet::new();
    for seed in 0..32 {
        let hosts: Vec<String> = route_seeded(&dns, "x.test", seed)
            .await
            .expect("routes")
            .iter()
            .map(|t| t.split(' ').next().unwrap_or_default().to_string())
            .collect();
        assert_eq!(hosts.first().map(String::as_str), Some("first.x.test"));
        assert_eq!(hosts.last().map(String::as_str), Some("last.x.test"));
        seen.insert(hosts[1..3].join(","));
    }
    // Both orders of the two preference-10 hosts occur.
    assert_eq!(seen.len(), 2, "{seen:?}");
    // The same seed gives the same order: randomness is injected.
    assert_eq!(
        route_seeded(&dns, "x.test", 7).await,
        route_seeded(&dns, "x.test", 7).await
    );
}

#[tokio::test]
async fn dns_answers_map_to_outcomes() {
    let dns = FakeDns::default()
        .mx("null.test", Ok(vec![(0, ".")]))
        .mx("mixed.test", Ok(vec![(0, "."), (10, "mx.mixed.test")]))
        .host("mx.mixed.test", Ok(vec!["192.0.2.7"]))
        .mx("implicit.test", Err(DnsError::NoRecords))
        .host("implicit.test", Ok(vec!["192.0.2.8"]))
        .mx("empty.test", Err(DnsError::NoRecords))
        .host("empty.test", Err(DnsError::NoRecords))
        .mx("slow.test", Err(DnsError::Timeout))
        .mx(
            "broken.test",
            Err(DnsError::Failed("error response: Server Failure".into())),
        )
        .mx("dangling.test", Ok(vec![(10, "gone.dangling.test")]))
        .mx(
            "half.test",
            Ok(vec![(10, "slow.half.test"), (20, "ok.half.test")]),
        )
        .host("slow.half.test", Err(DnsError::Timeout))
        .host("ok.half.test", Ok(vec!["192.0.2.9"]))
        .mx(
            "allslow.test",
            Ok(vec![(10, "slow.allslow.test"), (20, "gone.allslow.test")]),
        )
        .host("slow.allslow.test", Err(DnsError::Timeout));
    let cases: [(&str, Result<Vec<&str>, Outcome>); 9] = [
        (
            "null.test",
            Err(Outcome::perm(
                "null.test: domain does not accept mail (null MX, RFC 7505)",
            )),
        ),
        ("mixed.test", Ok(vec!["mx.mixed.test 192.0.2.7:2525"])),
        ("implicit.test", Ok(vec!["implicit.test 192.0.2.8:2525"])),
        (
            "empty.test",
            Err(Outcome::perm("empty.test: no address for empty.test")),
        ),
        (
            "nx.test",
            Err(Outcome::perm("nx.test: no such domain (NXDOMAIN)")),
        ),
        (
            "slow.test",
            Err(Outcome::temp("DNS timeout looking up MX for slow.test")),
        ),
        (
            "broken.test",
            Err(Outcome::temp(
                "DNS error looking up MX for broken.test: error response: Server Failure",
            )),
        ),
        (
            "dangling.test",
            Err(Outcome::perm(
                "dangling.test: no address for gone.dangling.test",
            )),
        ),
        ("half.test", Ok(vec!["ok.half.test 192.0.2.9:2525"])),
    ];
    for (domain, want) in cases {
        let want = want.map(|v| v.into_iter().map(String::from).collect::<Vec<_>>());
        assert_eq!(route_seeded(&dns, domain, 0).await, want, "{domain}");
    }
    assert_eq!(
        route_seeded(&dns, "allslow.test", 0).await,
        Err(Outcome::temp(
            "DNS timeout looking up A/AAAA for slow.allslow.test"
        ))
    );
}

#[tokio::test]
async fn configured_hosts_resolve_without_mx() {
    let dns = FakeDns::default()
        .host("smarthost.test", Ok(vec!["2001:db8::25", "192.0.2.25"]))
        .host("slow.test", Err(DnsError::Timeout));
    let show = |r: Result<Vec<Target>, RouteError>| {
        r.map(|t| {
            t.iter()
                .map(|t| format!("{} {}", t.host, t.addr))
                .collect::<Vec<_>>()
        })
        .map_err(Outcome::from)
    };
    assert_eq!(
        show(resolve_host(&dns, "smarthost.test", 587).await),
        Ok(vec![
            "smarthost.test [2001:db8::25]:587".into(),
            "smarthost.test 192.0.2.25:587".into()
        ])
    );
    assert_eq!(
        show(resolve_host(&dns, "192.0.2.9", 25).await),
        Ok(vec!["192.0.2.9 192.0.2.9:25".into()])
    );
    assert_eq!(
        show(resolve_host(&dns, "gone.test", 25).await),
        Err(Outcome::temp("configured host gone.test has no address"))
    );
    assert_eq!(
        show(resolve_host(&dns, "slow.test", 25).await),
        Err(Outcome::temp("DNS timeout looking up A/AAAA for slow.test"))
    );
}
