//! Table tests for MTA-STS parsing, MX matching, the cache and the
//! decision; the chain check with certificates made by rcgen. No sockets.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use mailrelay_crds::config::{DomainTlsConfig, OutboundTlsConfig};
use mailrelay_crds::maildomain::TlsMode;
use mailrelay_crds::relay::OutboundTlsPolicy;

use super::cache::{CAPACITY, RECHECK, StsCache, StsSource};
use super::decide::{TlsPlan, TlsSeen, Verdict};
use super::sts::{Mode, Policy, StsError, mx_matches, parse_policy, record_id};
use super::*;

fn policy(mode: Mode, max_age: u64, mx: &[&str]) -> Policy {
    Policy {
        mode,
        max_age,
        mx: mx.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn txt_records_give_the_policy_id_or_none() {
    let ok = |r: &[&str]| record_id(r);
    assert_eq!(
        ok(&["v=STSv1; id=20160831085700Z;"]),
        Ok(Some("20160831085700Z".into()))
    );
    assert_eq!(ok(&["v=STSv1;id=abc"]), Ok(Some("abc".into())));
    assert_eq!(ok(&["v=STSv1; foo=bar; id=A1 ; "]), Ok(Some("A1".into())));
    // Not ours: other TXT records are ignored.
    assert_eq!(ok(&["v=spf1 -all", "google-site-verification=x"]), Ok(None));
    assert_eq!(ok(&[]), Ok(None));
    assert_eq!(ok(&["v=spf1 -all", "v=STSv1; id=1"]), Ok(Some("1".into())));
    // §3.1: v must come first; several records mean none.
    assert_eq!(ok(&["id=1; v=STSv1"]), Ok(None));
    assert_eq!(
        ok(&["v=STSv1; id=1", "v=STSv1; id=2"]),
        Err(StsError::SeveralRecords)
    );
    assert_eq!(ok(&["v=STSv1;"]), Err(StsError::BadId));
    assert_eq!(ok(&["v=STSv1; id=has-dash"]), Err(StsError::BadId));
    assert_eq!(
        ok(&[&format!("v=STSv1; id={}", "a".repeat(33))]),
        Err(StsError::BadId)
    );
}

#[test]
fn policy_files_parse_as_rfc_8461_section_3_2_says() {
    let text = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.Example.NET.\r\nmax_age: 604800\r\nextension: ignored\r\n";
    assert_eq!(
        parse_policy(text),
        Ok(policy(
            Mode::Enforce,
            604800,
            &["mail.example.com", "*.example.net"]
        ))
    );
    // LF line endings and fields in any order are taken.
    assert_eq!(
        parse_policy("mode: testing\nmax_age: 86400\nversion: STSv1\nmx: mx.test\n"),
        Ok(policy(Mode::Testing, 86400, &["mx.test"]))
    );
    // mode none needs no mx; max_age is capped at about a year.
    assert_eq!(
        parse_policy("version: STSv1\nmode: none\nmax_age: 9999999999\n"),
        Ok(policy(Mode::None, 31_557_600, &[]))
    );
    for (bad, why) in [
        ("mode: enforce\nmx: a.test\nmax_age: 1\n", "version"),
        (
            "version: STSv2\nmode: enforce\nmx: a.test\nmax_age: 1\n",
            "version",
        ),
        ("version: STSv1\nmx: a.test\nmax_age: 1\n", "mode"),
        (
            "version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1\n",
            "mode",
        ),
        ("version: STSv1\nmode: enforce\nmx: a.test\n", "max_age"),
        (
            "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: -1\n",
            "max_age",
        ),
        (
            "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 12345678901\n",
            "max_age",
        ),
        ("version: STSv1\nmode: enforce\nmax_age: 1\n", "mx"),
        (
            "version: STSv1\nmode: testing\nmx: bad host\nmax_age: 1\n",
            "mx",
        ),
        ("version: STSv1\nmode: testing\nmx: *.\nmax_age: 1\n", "mx"),
        ("<html>not a policy</html>", "colon"),
    ] {
        let err = parse_policy(bad).expect_err(bad).to_string();
        assert!(err.contains(why), "{bad:?}: {err}");
    }
}

#[test]
fn mx_patterns_match_exactly_or_one_leftmost_label() {
    for (pattern, host, want) in [
        ("mail.example.com", "mail.example.com", true),
        ("mail.example.com", "MAIL.Example.com.", true),
        ("mail.example.com", "mail2.example.com", false),
        ("*.example.com", "mx1.example.com", true),
        ("*.example.com", "MX1.EXAMPLE.COM.", true),
        // §4.1: the wildcard is one label, not more, not none.
        ("*.example.com", "a.b.example.com", false),
        ("*.example.com", "example.com", false),
        ("*.example.com", ".example.com", false),
        ("*.example.com", "mx1.example.org", false),
        ("*.example.com", "mx1.badexample.com", false),
    ] {
        assert_eq!(mx_matches(pattern, host), want, "{pattern} vs {host}");
    }
    let p = policy(Mode::Enforce, 60, &["mx.a.test", "*.b.test"]);
    assert!(p.allows("mx.a.test") && p.allows("x.b.test"));
    assert!(!p.allows("evil.test"));
}

/// A source whose answers the test sets, counting the calls.
struct FakeSource {
    id: Mutex<Result<Option<String>, String>>,
    policy: Mutex<Result<Policy, String>>,
    fetches: Mutex<usize>,
    lookups: Mutex<usize>,
}

impl FakeSource {
    fn new(id: Option<&str>, policy: Result<Policy, String>) -> Self {
        FakeSource {
            id: Mutex::new(Ok(id.map(String::from))),
            policy: Mutex::new(policy),
            fetches: Mutex::new(0),
            lookups: Mutex::new(0),
        }
    }
    fn set_id(&self, id: Result<Option<String>, String>) {
        *self.id.lock().expect("lock") = id;
    }
    fn set_policy(&self, p: Result<Policy, String>) {
        *self.policy.lock().expect("lock") = p;
    }
    fn fetches(&self) -> usize {
        *self.fetches.lock().expect("lock")
    }
    fn lookups(&self) -> usize {
        *self.lookups.lock().expect("lock")
    }
}

impl StsSource for FakeSource {
    async fn record_id(&self, _: &str) -> Result<Option<String>, String> {
        *self.lookups.lock().expect("lock") += 1;
        self.id.lock().expect("lock").clone()
    }
    async fn fetch(&self, _: &str) -> Result<Policy, String> {
        *self.fetches.lock().expect("lock") += 1;
        // Let the other lookups of a join run while this one "fetches".
        tokio::task::yield_now().await;
        self.policy.lock().expect("lock").clone()
    }
}

#[tokio::test]
async fn the_cache_keeps_a_policy_for_max_age_and_fetches_again_when_the_id_changes() {
    let enforce = policy(Mode::Enforce, 3600, &["mx.d.test"]);
    let source = FakeSource::new(Some("1"), Ok(enforce.clone()));
    let cache = StsCache::default();
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);

    assert_eq!(
        cache.policy(&source, "d.test", t0).await,
        (Some(enforce.clone()), Found::Fetched)
    );
    // Within RECHECK: no DNS at all.
    assert_eq!(
        cache.policy(&source, "d.test", at(10)).await,
        (Some(enforce.clone()), Found::Cached)
    );
    assert_eq!((source.lookups(), source.fetches()), (1, 1));
    // After RECHECK, the same id: the cached policy is confirmed, not fetched.
    let later = RECHECK.as_secs() + 1;
    assert_eq!(
        cache.policy(&source, "d.test", at(later)).await,
        (Some(enforce.clone()), Found::Confirmed)
    );
    assert_eq!((source.lookups(), source.fetches()), (2, 1));
    // A new id: fetched again.
    let testing = policy(Mode::Testing, 3600, &["mx.d.test"]);
    source.set_id(Ok(Some("2".into())));
    source.set_policy(Ok(testing.clone()));
    let t = later * 2 + 1;
    assert_eq!(
        cache.policy(&source, "d.test", at(t)).await,
        (Some(testing.clone()), Found::Fetched)
    );
    assert_eq!(source.fetches(), 2);
    // max_age over, same id: fetched again (the copy has expired).
    let t = t + 3600;
    assert_eq!(
        cache.policy(&source, "d.test", at(t)).await,
        (Some(testing), Found::Fetched)
    );
    assert_eq!(source.fetches(), 3);
}

#[tokio::test]
async fn failures_keep_an_unexpired_policy_and_otherwise_mean_no_policy() {
    let enforce = policy(Mode::Enforce, 3600, &["mx.d.test"]);
    let source = FakeSource::new(Some("1"), Err("connection refused".into()));
    let cache = StsCache::default();
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    let step = RECHECK.as_secs() + 1;

    // §3.3: a failed fetch without a cached policy is as if none.
    let (p, found) = cache.policy(&source, "d.test", t0).await;
    assert_eq!(p, None);
    assert!(
        matches!(found, Found::Failed { kept: false, .. }),
        "{found:?}"
    );

    source.set_policy(Ok(enforce.clone()));
    source.set_id(Ok(Some("2".into())));
    assert_eq!(
        cache.policy(&source, "d.test", at(step)).await.0,
        Some(enforce.clone())
    );

    // With a cached enforce policy: a new id whose fetch fails, a DNS
    // failure, and a vanished record all keep enforcing.
    source.set_id(Ok(Some("3".into())));
    source.set_policy(Err("HTTP 500".into()));
    let (p, found) = cache.policy(&source, "d.test", at(2 * step)).await;
    assert_eq!(p, Some(enforce.clone()));
    assert_eq!(found.label(), "failed_kept_cached");
    source.set_id(Err("SERVFAIL".into()));
    assert_eq!(
        cache.policy(&source, "d.test", at(3 * step)).await.0,
        Some(enforce.clone())
    );
    source.set_id(Ok(None));
    assert_eq!(
        cache.policy(&source, "d.test", at(4 * step)).await,
        (Some(enforce), Found::Confirmed)
    );
    // Until it expires: then no policy.
    let (p, found) = cache.policy(&source, "d.test", at(step + 3600)).await;
    assert_eq!((p, found), (None, Found::NoRecord));
}

#[tokio::test]
async fn lookups_of_one_domain_at_once_share_one_fetch() {
    let enforce = policy(Mode::Enforce, 3600, &["mx.d.test"]);
    let source = FakeSource::new(Some("1"), Ok(enforce.clone()));
    let cache = StsCache::default();
    let now = Instant::now();
    let lookups = (0..10).map(|_| cache.policy(&source, "d.test", now));
    let answers = futures::future::join_all(lookups).await;
    assert!(
        answers.iter().all(|(p, _)| p.as_ref() == Some(&enforce)),
        "{answers:?}"
    );
    assert_eq!((source.lookups(), source.fetches()), (1, 1));
    let fetched = answers.iter().filter(|(_, f)| *f == Found::Fetched).count();
    assert_eq!(fetched, 1, "{answers:?}");
}

#[tokio::test]
async fn domains_without_a_record_are_remembered_and_the_cache_is_bounded() {
    let source = FakeSource::new(None, Err("never fetched".into()));
    let cache = StsCache::default();
    let t0 = Instant::now();
    assert_eq!(
        cache.policy(&source, "plain.test", t0).await,
        (None, Found::NoRecord)
    );
    assert_eq!(
        cache
            .policy(&source, "plain.test", t0 + Duration::from_secs(1))
            .await,
        (None, Found::NoRecord)
    );
    assert_eq!((source.lookups(), source.fetches()), (1, 0));
    for i in 0..CAPACITY + 10 {
        cache.policy(&source, &format!("d{i}.test"), t0).await;
    }
    assert!(cache.len() <= CAPACITY, "{}", cache.len());
}

#[test]
fn the_configured_policy_and_the_domains_policy_make_the_plan() {
    let enforce = policy(Mode::Enforce, 60, &["mx.d.test"]);
    let testing = policy(Mode::Testing, 60, &["mx.d.test"]);
    let none = policy(Mode::None, 60, &[]);
    use OutboundTlsPolicy as C;
    for (configured, sts, want) in [
        (
            C::Opportunistic,
            Some(enforce.clone()),
            TlsPlan::Opportunistic,
        ),
        (C::Required, None, TlsPlan::Required),
        (C::Required, Some(testing.clone()), TlsPlan::Required),
        (C::MtaSts, None, TlsPlan::Opportunistic),
        (C::MtaSts, Some(none), TlsPlan::Opportunistic),
        (
            C::MtaSts,
            Some(enforce.clone()),
            TlsPlan::Sts(enforce.clone()),
        ),
        (
            C::MtaSts,
            Some(testing.clone()),
            TlsPlan::Sts(testing.clone()),
        ),
    ] {
        assert_eq!(
            TlsPlan::new(configured, sts.clone()),
            want,
            "{configured:?} {sts:?}"
        );
    }
    assert_eq!(TlsPlan::Sts(enforce).tls_mode(), TlsMode::Required);
    assert_eq!(TlsPlan::Sts(testing).tls_mode(), TlsMode::Opportunistic);
    assert_eq!(TlsPlan::Required.tls_mode(), TlsMode::Required);
    assert_eq!(TlsPlan::Opportunistic.tls_mode(), TlsMode::Opportunistic);

    let config = OutboundTlsConfig {
        policy: C::MtaSts,
        domains: vec![
            DomainTlsConfig {
                domain: "a.test".into(),
                policy: C::Required,
            },
            DomainTlsConfig {
                domain: "c.test".into(),
                policy: C::Opportunistic,
            },
        ],
    };
    assert_eq!(config.policy_for("a.test"), C::Required);
    assert_eq!(config.policy_for("b.test"), C::MtaSts);
    assert_eq!(config.policy_for("c.test"), C::Opportunistic);
    assert_eq!(
        OutboundTlsConfig::default().policy_for("x.test"),
        C::Opportunistic
    );
}

#[test]
fn the_decision_for_each_plan_host_and_tls_outcome() {
    let enforce = TlsPlan::Sts(policy(Mode::Enforce, 60, &["mx.d.test"]));
    let testing = TlsPlan::Sts(policy(Mode::Testing, 60, &["mx.d.test"]));
    let plans = [
        &TlsPlan::Opportunistic,
        &TlsPlan::Required,
        &enforce,
        &testing,
    ];

    // Hosts: only MTA-STS looks at the name.
    let host_want = [
        ("mx.d.test", ["deliver"; 4]),
        ("evil.test", ["deliver", "deliver", "defer", "report"]),
    ];
    for (host, wants) in host_want {
        for (plan, want) in plans.iter().zip(wants) {
            assert_eq!(
                kind(&plan.admit("d.test", host)),
                want,
                "{} {host}",
                plan.label()
            );
        }
    }

    // What the server offered × the certificate × the plan.
    let bad_cert = TlsSeen::Unverified {
        cert: Err("NotValidForName".into()),
    };
    let good_cert = TlsSeen::Unverified { cert: Ok(()) };
    let cases: [(TlsSeen, [&str; 4]); 6] = [
        (TlsSeen::Verified, ["deliver"; 4]),
        (good_cert, ["deliver"; 4]),
        (bad_cert, ["deliver", "defer", "defer", "report"]),
        (TlsSeen::Clear, ["deliver", "defer", "defer", "report"]),
        (
            TlsSeen::ClearAfterFailure("handshake".into()),
            ["deliver", "defer", "defer", "report"],
        ),
        (
            TlsSeen::Failed("no STARTTLS".into()),
            ["deliver", "defer", "defer", "report"],
        ),
    ];
    for (seen, wants) in cases {
        for (plan, want) in plans.iter().zip(wants) {
            assert_eq!(
                kind(&plan.verdict("mx.d.test", &seen)),
                want,
                "{} {seen:?}",
                plan.label()
            );
        }
    }
    let Verdict::Defer(why) = enforce.verdict("mx.d.test", &TlsSeen::Clear) else {
        panic!("enforce defers clear text");
    };
    assert_eq!(why, "mx.d.test does not offer STARTTLS");
}

fn kind(v: &Verdict) -> &'static str {
    match v {
        Verdict::Deliver => "deliver",
        Verdict::DeliverAndReport(_) => "report",
        Verdict::Defer(_) => "defer",
    }
}

/// A CA and a leaf for `names` it signed: (CA DER, leaf DER).
pub(super) fn ca_and_leaf(names: &[&str]) -> (Vec<u8>, Vec<u8>) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "test CA");
    let ca_key = KeyPair::generate().expect("key");
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let issuer = Issuer::new(ca, ca_key);
    let leaf_key = KeyPair::generate().expect("key");
    let leaf = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .expect("leaf params")
        .signed_by(&leaf_key, &issuer)
        .expect("leaf");
    (ca_cert.der().to_vec(), leaf.der().to_vec())
}

#[test]
fn a_chain_is_checked_against_the_roots_and_the_mx_name() {
    let (ca, leaf) = ca_and_leaf(&["mx.d.test"]);
    let (_, other_ca_leaf) = ca_and_leaf(&["mx.d.test"]);
    let roots = Arc::new(root_store(&[ca]).expect("roots"));
    let check = ChainCheck::new(roots).expect("verifier");
    let now = UnixTime::now();
    assert_eq!(
        check.check("mx.d.test", std::slice::from_ref(&leaf), now),
        Ok(())
    );
    let wrong_name = check.check("other.d.test", &[leaf], now).expect_err("name");
    assert!(wrong_name.contains("not valid for name"), "{wrong_name}");
    let unknown = check
        .check("mx.d.test", &[other_ca_leaf], now)
        .expect_err("issuer");
    // Same issuer name, another key: the signature does not verify.
    assert!(unknown.contains("invalid peer certificate"), "{unknown}");
    assert!(check.check("mx.d.test", &[], now).is_err());
}

#[test]
fn a_ca_bundle_must_hold_certificates() {
    let dir = tempfile::tempdir().expect("dir");
    let (ca, _) = ca_and_leaf(&["x.test"]);
    let pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &ca)
    );
    let good = dir.path().join("ca.pem");
    std::fs::write(&good, pem).expect("write");
    assert_eq!(read_ca_bundle(&good).expect("bundle"), vec![ca]);
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "nothing here\n").expect("write");
    assert!(matches!(
        read_ca_bundle(&empty),
        Err(TlsPolicyError::EmptyCa { .. })
    ));
    assert!(matches!(
        read_ca_bundle(&dir.path().join("missing.pem")),
        Err(TlsPolicyError::ReadCa { .. })
    ));
    let broken = dir.path().join("broken.pem");
    std::fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    assert!(matches!(
        read_ca_bundle(&broken),
        Err(TlsPolicyError::PemCa { .. })
    ));
}
