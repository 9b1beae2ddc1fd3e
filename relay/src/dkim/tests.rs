//! Which submitted messages are signed, what the signature says, and what
//! a bad key file gives — without sockets.

use std::sync::Arc;

use mailrelay_crds::maildomain::DkimAlgorithm;
use mailrelay_crds::relay::ListenerName;

use super::keys::{self, DkimKeys, KeyError};
use super::sign::{self, Decision, Skip};
use crate::config::runtime::Runtime;

const RSA: &[u8] = include_bytes!("testdata/rsa.pem");
const RSA_PKCS1: &[u8] = include_bytes!("testdata/rsa-pkcs1.pem");
const ED25519: &[u8] = include_bytes!("testdata/ed25519.pem");

/// `signed.example` signs with a key; `plain.example` has no DKIM;
/// alice may send as signed.example, bob as plain.example only.
const MANIFESTS: &str = r#"
apiVersion: mailrelay.io/v1alpha1
kind: Relay
metadata: {name: test}
spec:
  hostname: mx.test
  listeners: [{name: smtp}, {name: submission}]
  tls: {secretName: tls}
---
apiVersion: mailrelay.io/v1alpha1
kind: MailDomain
metadata: {name: signed}
spec:
  domain: signed.example
  aliases: [alias.example]
  delivery: {lmtp: {host: 127.0.0.1, port: 24}}
  inbound: {catchAll: true}
  submission: {accounts: {name: accounts, key: signed}}
  dkim: {selector: s1, privateKey: {name: dkim, key: key.pem}}
---
apiVersion: mailrelay.io/v1alpha1
kind: MailDomain
metadata: {name: plain}
spec:
  domain: plain.example
  delivery: {lmtp: {host: 127.0.0.1, port: 24}}
  inbound: {catchAll: true}
  submission: {accounts: {name: accounts, key: plain}}
"#;

fn runtime() -> (Runtime, tempfile::TempDir) {
    let hash = bcrypt::hash("secret", 4).expect("hash");
    crate::testutil::runtime_from(
        MANIFESTS,
        &[
            (
                "accounts/signed",
                format!("alice@signed.example:{hash}\n").as_bytes(),
            ),
            (
                "accounts/plain",
                format!("bob@plain.example:{hash}\n").as_bytes(),
            ),
            ("dkim/key.pem", RSA),
        ],
    )
}

fn message(from: &str) -> Vec<u8> {
    format!("From: {from}\r\nTo: x@example.org\r\nSubject: hi\r\nDate: Mon, 30 Nov 2026 08:00:00 +0000\r\nMessage-ID: <1@t>\r\n\r\nbody\r\n").into_bytes()
}

fn decide(
    rt: &Runtime,
    listener: ListenerName,
    login: Option<&str>,
    from: &str,
) -> Result<String, Skip> {
    match sign::decide(rt, listener, login, &message(from)) {
        Decision::Sign { domain, dkim } => {
            assert_eq!(dkim.selector, "s1");
            Ok(domain)
        }
        Decision::Skip(why) => Err(why),
    }
}

#[test]
fn submitted_mail_of_a_dkim_domain_is_signed_as_its_from_domain() {
    let (rt, _dir) = runtime();
    let alice = Some("alice@signed.example");
    assert_eq!(
        decide(
            &rt,
            ListenerName::Submission,
            alice,
            "Alice <alice@signed.example>"
        ),
        Ok("signed.example".into())
    );
    assert_eq!(
        decide(
            &rt,
            ListenerName::Submissions,
            alice,
            "alice@SIGNED.example"
        ),
        Ok("signed.example".into())
    );
}

#[test]
fn mail_that_is_not_ours_to_vouch_for_is_left_unsigned() {
    let (rt, _dir) = runtime();
    let alice = Some("alice@signed.example");
    let bob = Some("bob@plain.example");
    // Port 25, or no AUTH: someone else's mail.
    assert_eq!(
        decide(&rt, ListenerName::Smtp, alice, "alice@signed.example"),
        Err(Skip::NotSubmission)
    );
    assert_eq!(
        decide(&rt, ListenerName::Submission, None, "alice@signed.example"),
        Err(Skip::NotSubmission)
    );
    assert_eq!(
        decide(&rt, ListenerName::Submission, bob, "bob@plain.example"),
        Err(Skip::NoDkim)
    );
    assert_eq!(
        decide(&rt, ListenerName::Submission, alice, "someone@example.org"),
        Err(Skip::NotHosted)
    );
    // Another tenant's account never gets signed.example's signature.
    assert_eq!(
        decide(&rt, ListenerName::Submission, bob, "alice@signed.example"),
        Err(Skip::NotAllowed)
    );
    assert!(matches!(
        decide(
            &rt,
            ListenerName::Submission,
            alice,
            "a@signed.example, b@signed.example"
        ),
        Err(Skip::Author(_))
    ));
}

fn tag<'a>(header: &'a str, name: &str) -> &'a str {
    let unfolded = header.split_once(':').map(|(_, v)| v).unwrap_or_default();
    let found = unfolded
        .split(';')
        .map(str::trim)
        .find_map(|t| t.strip_prefix(&format!("{name}=")));
    found.unwrap_or_else(|| panic!("no {name}= in {header}"))
}

fn normalised(v: &str) -> String {
    v.split_whitespace().collect::<String>().to_lowercase()
}

#[test]
fn the_signature_is_relaxed_and_oversigns_from() {
    for (pem, alg) in [
        (RSA, DkimAlgorithm::RsaSha256),
        (ED25519, DkimAlgorithm::Ed25519Sha256),
    ] {
        let key = Arc::new(keys::parse(pem, alg, "k").expect("test key parses"));
        let msg = message("alice@signed.example");
        let h = sign::signature(key, "signed.example", "s1", &msg).expect("signs");
        assert!(h.starts_with("DKIM-Signature: "), "{h}");
        assert!(h.ends_with("\r\n"), "{h:?}");
        assert_eq!(tag(&h, "a"), keys::algorithm_name(alg));
        assert_eq!(tag(&h, "c"), "relaxed/relaxed");
        assert_eq!(tag(&h, "d"), "signed.example");
        assert_eq!(tag(&h, "s"), "s1");
        let mut signed: Vec<String> = normalised(tag(&h, "h"))
            .split(':')
            .map(String::from)
            .collect();
        assert_eq!(signed.iter().filter(|n| *n == "from").count(), 2, "{h}");
        signed.sort();
        assert_eq!(
            signed,
            ["date", "from", "from", "message-id", "subject", "to"]
        );
    }
}

#[test]
fn key_files_parse_and_name_what_is_wrong() {
    assert!(keys::parse(RSA, DkimAlgorithm::RsaSha256, "k").is_ok());
    assert!(keys::parse(RSA_PKCS1, DkimAlgorithm::RsaSha256, "k").is_ok());
    assert!(keys::parse(ED25519, DkimAlgorithm::Ed25519Sha256, "k").is_ok());
    assert!(matches!(
        keys::parse(ED25519, DkimAlgorithm::RsaSha256, "k"),
        Err(KeyError::WrongAlgorithm {
            found: "Ed25519",
            ..
        })
    ));
    assert!(matches!(
        keys::parse(RSA, DkimAlgorithm::Ed25519Sha256, "k"),
        Err(KeyError::WrongAlgorithm { found: "RSA", .. })
    ));
    assert!(matches!(
        keys::parse(b"not a key", DkimAlgorithm::RsaSha256, "k"),
        Err(KeyError::NoPem { .. })
    ));
}

/// What a reader of the log sees for each kind of file: the messages are
/// the operator's only clue, so they are compared whole.
#[test]
fn key_file_errors_read_the_same_for_each_pem_kind() {
    let cert = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    let ec_key = b"-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n";
    let unterminated = b"-----BEGIN PRIVATE KEY-----\nAAAA\n";
    let mut cert_then_rsa = cert.as_bytes().to_vec();
    cert_then_rsa.extend_from_slice(RSA);
    let no_pem = "k: no PEM private key (expected PKCS#8 `BEGIN PRIVATE KEY`)";
    let cases: [(&[u8], DkimAlgorithm, Result<&str, &str>); 9] = [
        (RSA, DkimAlgorithm::RsaSha256, Ok("rsa")),
        (RSA_PKCS1, DkimAlgorithm::RsaSha256, Ok("rsa")),
        (ED25519, DkimAlgorithm::Ed25519Sha256, Ok("ed25519")),
        // Other sections before the key are passed over.
        (&cert_then_rsa, DkimAlgorithm::RsaSha256, Ok("rsa")),
        (
            RSA_PKCS1,
            DkimAlgorithm::Ed25519Sha256,
            Err("k: the key is RSA (PKCS#1) but spec.dkim.algorithm is ed25519-sha256"),
        ),
        (
            RSA,
            DkimAlgorithm::Ed25519Sha256,
            Err("k: the key is RSA but spec.dkim.algorithm is ed25519-sha256"),
        ),
        (
            ED25519,
            DkimAlgorithm::RsaSha256,
            Err("k: the key is Ed25519 but spec.dkim.algorithm is rsa-sha256"),
        ),
        // An EC key is no DKIM key, and a section without its end is no PEM.
        (ec_key, DkimAlgorithm::RsaSha256, Err(no_pem)),
        (unterminated, DkimAlgorithm::RsaSha256, Err(no_pem)),
    ];
    for (pem, algorithm, want) in cases {
        let got = match keys::parse(pem, algorithm, "k") {
            Ok(mail_auth::common::crypto::DkimKey::Rsa(_)) => Ok("rsa"),
            Ok(mail_auth::common::crypto::DkimKey::Ed25519(_)) => Ok("ed25519"),
            Err(e) => Err(e.to_string()),
        };
        assert_eq!(
            got,
            want.map_err(str::to_string),
            "{}",
            String::from_utf8_lossy(pem)
        );
    }
}

#[tokio::test]
async fn keys_follow_the_file_and_a_broken_rotation_is_reported() {
    let (rt, dir) = runtime();
    let store = DkimKeys::default();
    store.refresh(&rt).await;
    let path = dir.path().join("dkim/key.pem");
    let first = store
        .get(&path, DkimAlgorithm::RsaSha256)
        .await
        .expect("loaded");
    // Unchanged file: the same parsed key.
    store.refresh(&rt).await;
    let again = store
        .get(&path, DkimAlgorithm::RsaSha256)
        .await
        .expect("still loaded");
    assert!(Arc::ptr_eq(&first, &again));
    // A bad rotation: refused until it is fixed.
    std::fs::write(&path, "garbage").expect("write");
    store.refresh(&rt).await;
    assert!(matches!(
        store.get(&path, DkimAlgorithm::RsaSha256).await,
        Err(KeyError::NoPem { .. })
    ));
    std::fs::remove_file(&path).expect("rm");
    store.refresh(&rt).await;
    assert!(matches!(
        store.get(&path, DkimAlgorithm::RsaSha256).await,
        Err(KeyError::Read { .. })
    ));
    std::fs::write(&path, RSA_PKCS1).expect("write");
    store.refresh(&rt).await;
    let rotated = store
        .get(&path, DkimAlgorithm::RsaSha256)
        .await
        .expect("new key");
    assert!(!Arc::ptr_eq(&first, &rotated));
}
