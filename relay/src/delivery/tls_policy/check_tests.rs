//! [`Check`] over real STARTTLS connections to an in-process server
//! (test CA): which kept connections a plan may reuse, what MTA-STS
//! testing reports and what enforce refuses.

use mailrelay_crds::maildomain::TlsMode;

use super::decide::TlsPlan;
use super::sts::{Mode, Policy};
use super::*;

fn policy(mode: Mode, max_age: u64, mx: &[&str]) -> Policy {
    Policy {
        mode,
        max_age,
        mx: mx.iter().map(|s| s.to_string()).collect(),
    }
}

/// A connection to an in-process STARTTLS server whose certificate names
/// `cert_name` (test CA), and the CA.
async fn starttls_server(
    cert_name: &str,
) -> (
    crate::delivery::test_server::TestServer,
    crate::delivery::test_server::TestPki,
) {
    use crate::delivery::test_server::{TestServer, TlsScript, pki};
    let pki = pki(cert_name);
    let server = TestServer::start(TlsScript::StartTls(pki.server.clone()), None).await;
    (server, pki)
}

fn outbound_tls(extra_root: Vec<u8>) -> OutboundTls {
    // No lookup is made: the plans here are given, not looked up.
    let config = mailrelay_crds::config::DnsConfig {
        nameservers: vec!["127.0.0.1:9".parse().expect("addr")],
        timeout_ms: 100,
    };
    let dns = crate::policy::resolver(&config, None).expect("resolver");
    OutboundTls::new(dns, vec![extra_root], HTTPS_PORT).expect("outbound TLS")
}

#[tokio::test]
async fn a_kept_connection_serves_only_a_plan_it_satisfies() {
    let (server, pki) = starttls_server("mx.d.test").await;
    let target = Target {
        host: "mx.d.test".into(),
        addr: server.addr,
    };
    let unchecked = OutboundConfig::new("relay.test", TlsMode::Opportunistic);
    let encrypted = SmtpClient::connect(&target, &unchecked)
        .await
        .expect("opportunistic");
    let checked =
        OutboundConfig::new("relay.test", TlsMode::Required).with_extra_root(pki.ca_der.clone());
    let verified = SmtpClient::connect(&target, &checked)
        .await
        .expect("verified");
    assert_eq!(
        (encrypted.security(), verified.security()),
        (&Security::Encrypted, &Security::Verified)
    );
    let tls = outbound_tls(pki.ca_der.clone());
    let metrics = Metrics::new();
    let check = |plan| Check {
        tls: &tls,
        plan,
        domain: "d.test",
        queue_id: None,
        metrics: &metrics,
        reports: None,
    };
    let enforce = check(TlsPlan::Sts(policy(Mode::Enforce, 60, &["*.d.test"])));
    assert!(!enforce.reusable(&encrypted) && enforce.reusable(&verified));
    let elsewhere = check(TlsPlan::Sts(policy(Mode::Enforce, 60, &["*.other.test"])));
    assert!(!elsewhere.reusable(&verified), "not a host of the policy");
    let required = check(TlsPlan::Required);
    assert!(!required.reusable(&encrypted) && required.reusable(&verified));
    let opportunistic = check(TlsPlan::Opportunistic);
    assert!(opportunistic.reusable(&encrypted) && opportunistic.reusable(&verified));
    // MTA-STS testing checks the unchecked connection's certificate.
    let testing = check(TlsPlan::Sts(policy(Mode::Testing, 60, &["*.d.test"])));
    assert_eq!(testing.connected(&encrypted), Ok(()));
    assert_eq!(
        metrics
            .outbound_tls
            .get_or_create(&label("mta_sts_testing", "verified"))
            .get(),
        1
    );
}

#[tokio::test]
async fn testing_mode_reports_a_certificate_for_another_name_and_enforce_refuses_it() {
    let (server, pki) = starttls_server("someone-else.test").await;
    let target = Target {
        host: "mx.d.test".into(),
        addr: server.addr,
    };
    let tls = outbound_tls(pki.ca_der.clone());
    let metrics = Metrics::new();
    let check = |mode| Check {
        tls: &tls,
        plan: TlsPlan::Sts(policy(mode, 60, &["mx.d.test"])),
        domain: "d.test",
        queue_id: None,
        metrics: &metrics,
        reports: None,
    };
    let testing = check(Mode::Testing);
    let config = tls.outbound_config(&testing.plan, "relay.test", Timeouts::default());
    let client = SmtpClient::connect_checked(&target, &config)
        .await
        .expect("opportunistic");
    assert_eq!(testing.connected(&client), Ok(()), "delivered anyway");
    assert_eq!(
        metrics
            .outbound_tls
            .get_or_create(&label("mta_sts_testing", "failed_reported"))
            .get(),
        1
    );

    let enforce = check(Mode::Enforce);
    let config = tls.outbound_config(&enforce.plan, "relay.test", Timeouts::default());
    let failure = match SmtpClient::connect_checked(&target, &config).await {
        Ok(_) => panic!("a certificate for another name passed"),
        Err(f) => f,
    };
    assert!(failure.tls, "{failure:?}");
    let outcome = enforce.failed(&target, failure);
    assert!(
        matches!(&outcome, Outcome::TempFail { reason } if reason.starts_with("4.7.5 MTA-STS (enforce) policy of d.test not met by mx.d.test")),
        "{outcome:?}"
    );
    assert_eq!(
        metrics
            .outbound_tls
            .get_or_create(&label("mta_sts_enforce", "failed_deferred"))
            .get(),
        1
    );
    let seen = server.seen();
    assert!(!seen.iter().any(|l| l.starts_with("C: MAIL")), "{seen:?}");
}

fn label(policy: &'static str, outcome: &'static str) -> crate::ops::metrics::OutboundTlsLabel {
    crate::ops::metrics::OutboundTlsLabel { policy, outcome }
}

#[tokio::test]
async fn a_dane_host_gets_mandatory_tls_checked_against_its_tlsa_records() {
    use super::dane::Proven;
    use super::tlsa::{DANE_TA, Tlsa};
    let (server, pki) = starttls_server("mx.d.test").await;
    let target = Target {
        host: "mx.d.test".into(),
        addr: server.addr,
    };
    let tls = outbound_tls(pki.ca_der.clone());
    let metrics = Metrics::new();
    let sha256 = |b: &[u8]| {
        ::ring::digest::digest(&::ring::digest::SHA256, b)
            .as_ref()
            .to_vec()
    };
    let dane = |data: Vec<u8>| {
        let record = Tlsa {
            usage: DANE_TA,
            selector: 0,
            matching: 1,
            data,
        };
        TlsPlan::Opportunistic.dane(
            Proven::Secure(vec!["mx.d.test".into()]),
            vec![("mx.d.test".into(), Proven::Secure(vec![record]))],
        )
    };
    let check = |plan| Check {
        tls: &tls,
        plan,
        domain: "d.test",
        queue_id: None,
        metrics: &metrics,
        reports: None,
    };
    let matching = check(dane(sha256(&pki.ca_der)));
    let base = OutboundConfig::new("relay.test", TlsMode::Opportunistic);
    let config = matching.config_for(&target, &base).expect("a DANE host");
    assert_eq!(
        (config.tls, config.check_after_handshake),
        (TlsMode::Required, true)
    );
    let client = SmtpClient::connect(&target, &config).await.expect("TLS");
    assert_eq!(client.security(), &Security::Encrypted);
    assert!(matching.connected(&client).is_ok());
    assert!(matching.reusable(&client));

    let mismatch = check(dane(vec![0; 32]));
    let Err(Outcome::TempFail { reason }) = mismatch.connected(&client) else {
        panic!("a certificate that matches no TLSA record is delivered to");
    };
    assert!(
        reason.starts_with("4.7.5 DANE policy of d.test not met by mx.d.test")
            && reason.contains("TLSA"),
        "{reason}"
    );
    assert!(!mismatch.reusable(&client));
    // A connection verified by the Web PKI is not a DANE-checked one.
    let webpki =
        OutboundConfig::new("relay.test", TlsMode::Required).with_extra_root(pki.ca_der.clone());
    let verified = SmtpClient::connect(&target, &webpki)
        .await
        .expect("verified");
    assert!(!matching.reusable(&verified));
    let label = |outcome| crate::ops::metrics::OutboundTlsLabel {
        policy: "dane",
        outcome,
    };
    assert_eq!(
        metrics.outbound_tls.get_or_create(&label("verified")).get(),
        1
    );
    assert_eq!(
        metrics
            .outbound_tls
            .get_or_create(&label("failed_deferred"))
            .get(),
        1
    );
}
