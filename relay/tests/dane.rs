//! DANE (RFC 7672) end to end (issue 19, part 1): a real relay process
//! asking a real bind9 — zone `test.` signed (dnssec-signzone), its KSK
//! the relay's `--dnssec-trust-anchor` — for MX, TLSA and addresses; MX
//! hosts on `127.0.0.N:25` offering STARTTLS with rcgen certificates that
//! match the published TLSA records or not; an MTA-STS policy server for
//! the precedence case.
//!
//! Addresses 127.0.0.120–127 are this file's.

// A panic is a test failure: unwrap and expect are how tests fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../src/delivery/test_server.rs"]
#[allow(dead_code)]
mod test_server;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use common::bind9::{Bind9, Zones};
use common::deliveries::{assert_mail_after_starttls, send, wait_body, wait_deferred};
use common::manifests::{REMOTE_SENDER, Setup};
use common::policy_server::{Pki, PolicyServer, policy, runtime};
use common::{Env, count};
use rcgen::{CertificateParams, KeyPair, PublicKeyData};
use ring::digest;
use rustls_pki_types::pem::PemObject;
use test_server::{TestServer, TlsScript};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

fn ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, n)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256(bytes: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, bytes).as_ref())
}

/// An MX certificate for `name` issued by the test CA: the server
/// config (leaf and CA in the chain) and the leaf's public key (SPKI DER).
fn mx_cert(pki: &Pki, name: &str, ca_der: &[u8]) -> (Arc<ServerConfig>, Vec<u8>) {
    let key = KeyPair::generate().expect("key");
    let leaf = CertificateParams::new(vec![name.to_string()])
        .expect("params")
        .signed_by(&key, &pki.issuer)
        .expect("leaf");
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone(), CertificateDer::from(ca_der.to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .expect("server config");
    (Arc::new(config), key.subject_public_key_info())
}

fn ca_der(pki: &Pki) -> Vec<u8> {
    CertificateDer::from_pem_slice(pki.ca_pem.as_bytes())
        .expect("CA PEM")
        .to_vec()
}

/// `label` (below `test.`) has one MX `mx.label.test` at `addr`, whose
/// TLSA record is `tlsa` (`usage selector matching hex`).
fn mx_records(label: &str, addr: Ipv4Addr, tlsa: &str) -> String {
    format!(
        "{label} IN MX 10 mx.{label}.test.\nmx.{label} IN A {addr}\n_25._tcp.mx.{label} IN TLSA {tlsa}\n"
    )
}

#[test]
fn dane_authenticates_mx_hosts_by_signed_tlsa_records_and_defers_on_mismatch_or_bogus_dns() {
    let rt = runtime();
    let pki = Pki::new();
    let ca = ca_der(&pki);
    let (ok_ip, bad_ip, bogus_ip, sts_ip, https_ip, plain_ip, sts_only_ip, ta_ip) = (
        ip(120),
        ip(121),
        ip(122),
        ip(123),
        ip(124),
        ip(125),
        ip(126),
        ip(127),
    );
    let (ok_tls, ok_key) = mx_cert(&pki, "mx.ok.test", &ca);
    // DANE-EE ignores the name: this one names another host.
    let (bad_tls, _) = mx_cert(&pki, "mx.bad.test", &ca);
    let (bogus_tls, bogus_key) = mx_cert(&pki, "mx.bogus.test", &ca);
    let (sts_tls, _) = mx_cert(&pki, "mx.sts.test", &ca);
    let (plain_tls, _) = mx_cert(&pki, "mx.plain.test", &ca);
    let (sts_only_tls, _) = mx_cert(&pki, "mx.stsonly.test", &ca);
    let (ta_tls, _) = mx_cert(&pki, "mx.ta.test", &ca);
    let other_key = KeyPair::generate().expect("key").subject_public_key_info();
    let ee = |spki: &[u8]| format!("3 1 1 {}", sha256(spki));
    let wrong = ee(&other_key);

    let signed = [
        mx_records("ok", ok_ip, &ee(&ok_key)),
        mx_records("ta", ta_ip, &format!("2 0 1 {}", sha256(&ca))),
        mx_records("bad", bad_ip, &wrong),
        // Signed with another MX name, which is then changed in the
        // signed file: the MX RRset's signature no longer validates.
        mx_records("bogus", bogus_ip, &ee(&bogus_key))
            .replace("IN MX 10 mx.bogus.test.", "IN MX 10 mx.bogux.test."),
        // Signed with selector 0 (the whole certificate, which does not
        // match), then changed to selector 1 (its key, which does): the
        // TLSA RRset's signature no longer validates.
        mx_records("bogustlsa", bogus_ip, &ee(&bogus_key)).replace("TLSA 3 1 1", "TLSA 3 0 1"),
        mx_records("sts", sts_ip, &wrong),
        mx_records("stsonly", sts_only_ip, &wrong),
        format!("_mta-sts.sts IN TXT \"v=STSv1; id=1;\"\nmta-sts.sts IN A {https_ip}\n"),
        format!("_mta-sts.stsonly IN TXT \"v=STSv1; id=1;\"\nmta-sts.stsonly IN A {https_ip}\n"),
    ]
    .concat();
    // plain.test is unsigned: its TLSA record (which does not match) is
    // not DANE, and the Relay's other policy applies.
    let plain =
        format!("@ IN MX 10 mx.plain.test.\nmx IN A {plain_ip}\n_25._tcp.mx IN TLSA {wrong}\n");
    let dir = tempfile::tempdir().expect("dir");
    let bind = Bind9::start(
        dir.path(),
        &Zones {
            signed: &signed,
            unsigned: &[("plain", &plain)],
            tamper: &[
                ("mx.bogux.test.", "mx.bogus.test."),
                ("TLSA\t3 0 1 ", "TLSA\t3 1 1 "),
            ],
        },
    );

    let mx = |addr: Ipv4Addr, tls: Arc<ServerConfig>| {
        rt.block_on(TestServer::start_at(
            SocketAddr::new(IpAddr::V4(addr), 25),
            TlsScript::StartTls(tls),
            None,
            false,
        ))
    };
    let (ok, bad, bogus, sts, plain_mx, sts_only, ta) = (
        mx(ok_ip, ok_tls),
        mx(bad_ip, bad_tls),
        mx(bogus_ip, bogus_tls),
        mx(sts_ip, sts_tls),
        mx(plain_ip, plain_tls),
        mx(sts_only_ip, sts_only_tls),
        mx(ta_ip, ta_tls),
    );
    // Both domains publish MTA-STS testing policies naming their MX.
    let policies = HashMap::from([
        (
            "mta-sts.sts.test".to_string(),
            policy("testing", &["mx.sts.test"]),
        ),
        (
            "mta-sts.stsonly.test".to_string(),
            policy("testing", &["mx.stsonly.test"]),
        ),
    ]);
    let policy_server = rt.block_on(PolicyServer::start(
        SocketAddr::new(IpAddr::V4(https_ip), 443),
        pki.server(&["mta-sts.sts.test", "mta-sts.stsonly.test"]),
        policies,
    ));

    let ca_file = dir.path().join("test-ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).expect("write the CA");
    let env = Env::start(
        Setup::default()
            .relay_from_loopback()
            .relay_spec("queue: {retrySchedule: [1s], jitterPercent: 0}")
            .relay_spec(
                "delivery: {tls: {policy: Dane, domains: [{domain: stsonly.test, policy: MtaSts}]}}",
            )
            .dns_server(bind.addr)
            .relay_arg("--tls-ca")
            .relay_arg(ca_file.display().to_string())
            .relay_arg("--dnssec-trust-anchor")
            .relay_arg(bind.trust_anchor.display().to_string()),
    );

    let ids: HashMap<&str, String> = [
        "ok",
        "ta",
        "bad",
        "bogus",
        "bogustlsa",
        "sts",
        "plain",
        "stsonly",
    ]
    .into_iter()
    .map(|d| {
        (
            d,
            send(
                &env,
                REMOTE_SENDER,
                &format!("user@{d}.test"),
                &format!("to-{d}"),
            ),
        )
    })
    .collect();

    // A certificate matching the TLSA record (DANE-EE, and DANE-TA with
    // the CA in the chain) delivers, over TLS.
    for (marker, server) in [("to-ok", &ok), ("to-ta", &ta)] {
        let seen = wait_body(&env, marker, || server.seen());
        assert_mail_after_starttls(&seen);
    }

    // A mismatching certificate defers with 4.7.5; no mail command went
    // to the host.
    let reason = wait_deferred(&env, "user@bad.test", 2);
    assert!(
        reason.contains("4.7.5 DANE policy of bad.test not met by mx.bad.test"),
        "{reason}"
    );
    assert!(reason.contains("TLSA"), "{reason}");
    let bad_seen = bad.seen();
    assert!(bad_seen.iter().any(|l| l == "TLS"), "{bad_seen:?}");
    assert!(
        !bad_seen.iter().any(|l| l.starts_with("C: MAIL")),
        "{bad_seen:?}"
    );

    // A bogus MX RRset defers, and its host is never contacted although
    // its certificate matches.
    let reason = wait_deferred(&env, "user@bogus.test", 2);
    assert!(
        reason.contains("4.7.5 DANE policy of bogus.test"),
        "{reason}"
    );
    assert!(reason.contains("DNSSEC validation failed"), "{reason}");
    // So does a bogus TLSA RRset, for its host.
    let reason = wait_deferred(&env, "user@bogustlsa.test", 2);
    assert!(
        reason.contains(
            "4.7.5 DANE policy of bogustlsa.test not met by mx.bogustlsa.test: TLSA lookup error for mx.bogustlsa.test:25"
        ),
        "{reason}"
    );
    assert!(reason.contains("DNSSEC validation failed"), "{reason}");
    assert!(bogus.seen().is_empty(), "{:?}", bogus.seen());

    // The insecure zone follows the Relay's other policy (no MTA-STS
    // there: opportunistic), its TLSA record ignored.
    wait_body(&env, "to-plain", || plain_mx.seen());

    // DANE before MTA-STS: the same testing policy that delivers for
    // stsonly.test (policy MtaSts) does not for sts.test, whose TLSA
    // record does not match.
    wait_body(&env, "to-stsonly", || sts_only.seen());
    let reason = wait_deferred(&env, "user@sts.test", 2);
    assert!(
        reason.contains("4.7.5 DANE policy of sts.test not met by mx.sts.test"),
        "{reason}"
    );
    assert!(
        !sts.seen().iter().any(|l| l.starts_with("C: MAIL")),
        "{:?}",
        sts.seen()
    );
    let fetched = policy_server.requests();
    assert!(
        fetched.iter().any(|r| r.starts_with("mta-sts.sts.test")),
        "the MTA-STS policy was fetched, and DANE still won: {fetched:?}"
    );

    let queued: Vec<String> = env.spool().into_iter().map(|q| q.id).collect();
    for d in ["bad", "bogus", "bogustlsa", "sts"] {
        assert!(queued.contains(&ids[d]), "{d}: {queued:?}");
    }
    for d in ["ok", "ta", "plain", "stsonly"] {
        assert!(!queued.contains(&ids[d]), "{d}: {queued:?}");
    }

    // Metrics: DANE outcomes in the outbound TLS family.
    let count = |outcome: &str| {
        count(
            &env,
            &format!("mailrelay_outbound_tls_total{{policy=\"dane\",outcome=\"{outcome}\"}}"),
        )
    };
    assert!(count("verified") >= 2, "two DANE-verified deliveries");
    assert!(
        count("failed_deferred") >= 2,
        "bad.test and sts.test deferred"
    );
    assert!(
        count("dnssec_failed") >= 2,
        "bogus.test and bogustlsa.test deferred"
    );
}
