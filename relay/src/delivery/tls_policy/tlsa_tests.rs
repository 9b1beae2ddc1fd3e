use ring::digest;
use tokio_rustls::rustls::client::danger::ServerCertVerifier;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::tests::ca_and_leaf;
use super::tlsa::{DANE_EE, DANE_TA, DaneVerifier, Tlsa, check_chain};

fn spki(der: &[u8]) -> Vec<u8> {
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    cert.tbs_certificate.subject_pki.raw.to_vec()
}

fn sha256(b: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA256, b).as_ref().to_vec()
}

fn sha512(b: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA512, b).as_ref().to_vec()
}

fn tlsa(usage: u8, selector: u8, matching: u8, data: Vec<u8>) -> Tlsa {
    Tlsa {
        usage,
        selector,
        matching,
        data,
    }
}

const MX: &[&str] = &["mx.d.test", "d.test"];

#[test]
fn dane_ee_matches_the_leaf_by_every_selector_and_matching_type() {
    let (_, leaf) = ca_and_leaf(&["mx.d.test"]);
    let chain = vec![leaf.clone()];
    let now = UnixTime::now();
    for record in [
        tlsa(DANE_EE, 0, 0, leaf.clone()),
        tlsa(DANE_EE, 0, 1, sha256(&leaf)),
        tlsa(DANE_EE, 0, 2, sha512(&leaf)),
        tlsa(DANE_EE, 1, 0, spki(&leaf)),
        tlsa(DANE_EE, 1, 1, sha256(&spki(&leaf))),
        tlsa(DANE_EE, 1, 2, sha512(&spki(&leaf))),
    ] {
        assert_eq!(
            check_chain(std::slice::from_ref(&record), &chain, MX, now),
            Ok(()),
            "{record:?}"
        );
        let mut wrong = record.clone();
        wrong.data[0] ^= 0xff;
        assert!(
            check_chain(&[wrong], &chain, MX, now).is_err(),
            "{record:?}"
        );
    }
}

#[test]
fn dane_ee_ignores_the_name_and_the_issuer() {
    // RFC 7672 §3.1.1: the key is the identity; the name may be anything.
    let (_, leaf) = ca_and_leaf(&["somewhere.else.test"]);
    let record = tlsa(DANE_EE, 1, 1, sha256(&spki(&leaf)));
    assert_eq!(check_chain(&[record], &[leaf], MX, UnixTime::now()), Ok(()));
}

#[test]
fn a_leaf_of_another_key_does_not_match() {
    let (_, leaf) = ca_and_leaf(&["mx.d.test"]);
    let (_, other) = ca_and_leaf(&["mx.d.test"]);
    let record = tlsa(DANE_EE, 1, 1, sha256(&spki(&leaf)));
    let err = check_chain(&[record], &[other], MX, UnixTime::now()).unwrap_err();
    assert!(err.contains("matches its TLSA records"), "{err}");
}

#[test]
fn dane_ta_needs_the_chain_to_the_anchor_and_the_mx_name() {
    let (ca, leaf) = ca_and_leaf(&["mx.d.test"]);
    let now = UnixTime::now();
    let chain = vec![leaf.clone(), ca.clone()];
    for record in [
        tlsa(DANE_TA, 0, 1, sha256(&ca)),
        tlsa(DANE_TA, 1, 1, sha256(&spki(&ca))),
        tlsa(DANE_TA, 0, 0, ca.clone()),
    ] {
        assert_eq!(
            check_chain(std::slice::from_ref(&record), &chain, MX, now),
            Ok(()),
            "{record:?}"
        );
        // The anchor must be in the chain the server sends.
        assert!(
            check_chain(
                std::slice::from_ref(&record),
                std::slice::from_ref(&leaf),
                MX,
                now
            )
            .is_err()
        );
        // The leaf must carry a reference identifier.
        let err = check_chain(&[record], &chain, &["other.d.test"], now).unwrap_err();
        assert!(err.contains("not valid for name"), "{err}");
    }
    // The destination domain is a reference identifier too (§3.2.2).
    let (ca2, leaf2) = ca_and_leaf(&["d.test"]);
    let record = tlsa(DANE_TA, 0, 1, sha256(&ca2));
    assert_eq!(check_chain(&[record], &[leaf2, ca2], MX, now), Ok(()));
}

#[test]
fn a_dane_ta_record_of_another_ca_does_not_match() {
    let (ca, leaf) = ca_and_leaf(&["mx.d.test"]);
    let (other_ca, _) = ca_and_leaf(&["mx.d.test"]);
    let record = tlsa(DANE_TA, 0, 1, sha256(&other_ca));
    assert!(check_chain(&[record], &[leaf, ca], MX, UnixTime::now()).is_err());
}

#[test]
fn pkix_usages_and_unknown_parameters_are_unusable() {
    let (_, leaf) = ca_and_leaf(&["mx.d.test"]);
    let data = sha256(&spki(&leaf));
    for record in [
        tlsa(0, 1, 1, data.clone()),
        tlsa(1, 1, 1, data.clone()),
        tlsa(4, 1, 1, data.clone()),
        tlsa(DANE_EE, 2, 1, data.clone()),
        tlsa(DANE_EE, 1, 3, data.clone()),
    ] {
        assert!(!record.usable(), "{record:?}");
        let err =
            check_chain(&[record], std::slice::from_ref(&leaf), MX, UnixTime::now()).unwrap_err();
        assert_eq!(err, "no usable TLSA records");
    }
    assert!(tlsa(DANE_TA, 0, 0, vec![]).usable());
}

#[test]
fn the_verifier_accepts_a_matching_chain_and_refuses_another() {
    let (ca, leaf) = ca_and_leaf(&["mx.d.test"]);
    let (_, other) = ca_and_leaf(&["mx.d.test"]);
    let verifier = DaneVerifier::new(
        vec![tlsa(DANE_EE, 1, 1, sha256(&spki(&leaf)))],
        vec!["mx.d.test".into()],
    );
    let name = ServerName::try_from("mx.d.test").unwrap();
    let ca = [CertificateDer::from(ca)];
    let now = UnixTime::now();
    assert!(
        verifier
            .verify_server_cert(&CertificateDer::from(leaf), &ca, &name, &[], now)
            .is_ok()
    );
    let err = verifier
        .verify_server_cert(&CertificateDer::from(other), &ca, &name, &[], now)
        .unwrap_err();
    assert!(err.to_string().contains("TLSA"), "{err}");
}
