//! The DANE decision, pure: validated MX and TLSA answers × the fallback
//! plan → per-host plans and verdicts; and what DNSSEC proofs establish.

use hickory_resolver::proto::dnssec::Proof;
use mailrelay_crds::maildomain::TlsMode;
use mailrelay_crds::relay::OutboundTlsPolicy;

use super::dane::{Proven, proven};
use super::decide::{HostTlsa, TlsPlan, TlsSeen, Verdict};
use super::sts::{Mode, Policy};
use super::tlsa::{DANE_EE, Tlsa};

fn ee() -> Tlsa {
    Tlsa {
        usage: DANE_EE,
        selector: 1,
        matching: 1,
        data: vec![7; 32],
    }
}

fn pkix() -> Tlsa {
    Tlsa { usage: 1, ..ee() }
}

fn testing() -> TlsPlan {
    TlsPlan::new(
        OutboundTlsPolicy::Dane,
        Some(Policy {
            mode: Mode::Testing,
            max_age: 86400,
            mx: vec!["other.d.test".into()],
        }),
    )
}

fn secure_mx(hosts: &[&str]) -> Proven<Vec<String>> {
    Proven::Secure(hosts.iter().map(|h| h.to_string()).collect())
}

#[test]
fn proofs_of_an_answer_make_it_secure_insecure_or_bogus() {
    assert_eq!(
        proven(&[Proof::Secure, Proof::Secure], 1),
        Proven::Secure(1)
    );
    assert_eq!(
        proven(&[Proof::Secure, Proof::Insecure], 1),
        Proven::Insecure
    );
    assert_eq!(proven(&[Proof::Indeterminate], 1), Proven::Insecure);
    assert_eq!(proven(&[], 1), Proven::Insecure);
    assert!(matches!(
        proven(&[Proof::Secure, Proof::Bogus], 1),
        Proven::Bogus(_)
    ));
}

#[test]
fn without_a_secure_mx_rrset_the_fallback_applies() {
    let plan = testing().dane(
        Proven::Insecure,
        vec![("mx.d.test".into(), Proven::Secure(vec![ee()]))],
    );
    assert_eq!(plan, testing());
    assert_eq!(plan.label(), "mta_sts_testing");
}

#[test]
fn a_host_with_secure_tlsa_is_dane_the_others_follow_the_fallback() {
    let plan = testing().dane(
        secure_mx(&["mx.d.test", "mx2.d.test", "mx3.d.test"]),
        vec![
            ("MX.d.test".into(), Proven::Secure(vec![ee()])),
            ("mx2.d.test".into(), Proven::Secure(vec![])),
            ("mx3.d.test".into(), Proven::Insecure),
        ],
    );
    let host = plan.for_host("mx.d.test");
    assert_eq!(host, &TlsPlan::DaneHost(HostTlsa::Records(vec![ee()])));
    assert_eq!(
        (host.label(), host.enforced(), host.tls_mode()),
        ("dane", true, TlsMode::Required)
    );
    // DANE before MTA-STS (RFC 8461 §2): the STS mx list does not matter.
    assert_eq!(plan.admit("d.test", "mx.d.test"), Verdict::Deliver);
    assert!(matches!(
        plan.admit("d.test", "mx2.d.test"),
        Verdict::DeliverAndReport(_)
    ));
    assert_eq!(plan.for_host("mx3.d.test"), &testing());
    // An MX host DNSSEC did not vouch for (a forged answer to routing).
    assert!(
        matches!(plan.admit("d.test", "evil.example"), Verdict::Defer(r) if r.contains("DNSSEC-validated MX"))
    );
    // A mismatching certificate defers; testing would only report.
    let seen = TlsSeen::Unverified {
        cert: Err("no certificate of the server's chain matches its TLSA records".into()),
    };
    assert!(matches!(plan.verdict("mx.d.test", &seen), Verdict::Defer(r) if r.contains("TLSA")));
    assert!(matches!(
        plan.verdict("mx3.d.test", &seen),
        Verdict::DeliverAndReport(_)
    ));
    let ok = TlsSeen::Unverified { cert: Ok(()) };
    assert_eq!(plan.verdict("mx.d.test", &ok), Verdict::Deliver);
    assert!(matches!(
        plan.verdict("mx.d.test", &TlsSeen::Clear),
        Verdict::Defer(_)
    ));
}

#[test]
fn only_unusable_records_mean_tls_without_authentication() {
    let plan = TlsPlan::Opportunistic.dane(
        secure_mx(&["mx.d.test"]),
        vec![("mx.d.test".into(), Proven::Secure(vec![pkix()]))],
    );
    assert_eq!(
        plan.for_host("mx.d.test"),
        &TlsPlan::DaneHost(HostTlsa::Unusable)
    );
    assert!(matches!(
        plan.verdict("mx.d.test", &TlsSeen::Failed("no STARTTLS".into())),
        Verdict::Defer(_)
    ));
}

#[test]
fn bogus_tlsa_or_mx_defers_the_host_or_every_host() {
    let plan = TlsPlan::Opportunistic.dane(
        secure_mx(&["mx.d.test", "mx2.d.test"]),
        vec![
            (
                "mx.d.test".into(),
                Proven::Bogus("DNSSEC validation failed".into()),
            ),
            ("mx2.d.test".into(), Proven::Insecure),
        ],
    );
    assert!(
        matches!(plan.admit("d.test", "mx.d.test"), Verdict::Defer(r) if r.starts_with("TLSA lookup error for mx.d.test:25"))
    );
    assert_eq!(plan.admit("d.test", "mx2.d.test"), Verdict::Deliver);
    let plan = TlsPlan::Required.dane(Proven::Bogus("DNSSEC validation failed".into()), vec![]);
    for host in ["mx.d.test", "anything.else.test"] {
        assert!(
            matches!(plan.admit("d.test", host), Verdict::Defer(r) if r.starts_with("MX lookup error"))
        );
    }
}
