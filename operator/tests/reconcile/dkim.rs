//! DKIM keys of MailDomains: the operator creates a missing key Secret,
//! adds a missing key to an existing Secret without being able to replace
//! one, never touches a key that is there, and shows the DNS record of the
//! key in the status — or a condition and an Event saying what is wrong.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::Method;
use kube::runtime::controller::Action;
use mailrelay_crds::MailDomain;
use mailrelay_crds::maildomain::DkimAlgorithm;
use mailrelay_operator::dkim;
use serde_json::json;

use crate::fake::Call;
use crate::{Harness, NS, condition, events, from_yaml};

const OPENSSL_RSA: &str = include_str!("../../../relay/src/dkim/testdata/rsa.pem");
const OPENSSL_RSA_PUB: &str = include_str!("../../../relay/src/dkim/testdata/rsa.pub.b64");

pub fn dkim_domain(name: &str, domain: &str, algorithm: &str, generate: bool) -> MailDomain {
    from_yaml(&format!(
        "apiVersion: mailrelay.io/v1alpha1\nkind: MailDomain\nmetadata: {{name: {name}}}\nspec:\n  domain: {domain}\n  delivery: {{lmtp: {{host: dovecot.mail.svc, port: 24}}}}\n  dkim:\n    selector: s2026\n    algorithm: {algorithm}\n    privateKey: {{name: {name}-dkim, key: private.pem}}\n    generate: {generate}\n"
    ))
}

fn secret_calls(calls: &[Call]) -> Vec<(Method, String)> {
    calls
        .iter()
        .filter(|c| c.path.contains("/secrets"))
        .map(|c| (c.method.clone(), c.path.clone()))
        .collect()
}

fn secret_path(name: &str) -> String {
    format!("/api/v1/namespaces/{NS}/secrets/{name}")
}

fn stored_key(h: &Harness, secret: &str) -> String {
    let s = h
        .fake
        .get("", "secrets", NS, secret)
        .expect("the Secret exists");
    let b64 = s["data"]["private.pem"].as_str().expect("the key is there");
    String::from_utf8(STANDARD.decode(b64).unwrap()).unwrap()
}

fn status(h: &Harness, name: &str) -> mailrelay_crds::MailDomainStatus {
    h.stored::<MailDomain>("maildomains", name)
        .status
        .unwrap_or_default()
}

#[tokio::test]
async fn a_missing_key_secret_is_created_with_a_new_key_and_its_record_is_shown() {
    for (alg, algorithm) in [
        ("ed25519-sha256", DkimAlgorithm::Ed25519Sha256),
        ("rsa-sha256", DkimAlgorithm::RsaSha256),
    ] {
        let mut h = Harness::new();
        h.domain(dkim_domain("signed", "Signed.Example", alg, true));
        let (action, calls) = h.reconcile_domain("signed").await;
        assert_eq!(
            secret_calls(&calls),
            [
                (Method::GET, secret_path("signed-dkim")),
                (Method::POST, format!("/api/v1/namespaces/{NS}/secrets")),
            ]
        );
        let pem = stored_key(&h, "signed-dkim");
        assert!(
            pem.starts_with("-----BEGIN PRIVATE KEY-----"),
            "PKCS#8: {pem}"
        );
        let public = dkim::public_key(&pem, algorithm).unwrap();
        let st = status(&h, "signed");
        assert_eq!(
            st.dkim_record.as_deref(),
            Some(
                dkim::record(
                    "s2026",
                    "signed.example",
                    &dkim::txt_value(algorithm, &public)
                )
                .as_str()
            )
        );
        let c = condition(&st.conditions, "DkimKeyReady");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "KeyPresent")
        );
        assert!(events(&calls).contains(&("Normal".into(), "DkimKeyGenerated".into())));
        assert_ne!(action, Action::await_change(), "the key is looked at again");

        // The next reconcile reads the key it made: nothing is written.
        let (_, calls) = h.reconcile_domain("signed").await;
        assert_eq!(
            secret_calls(&calls),
            [(Method::GET, secret_path("signed-dkim"))]
        );
        assert!(calls.iter().all(|c| !c.is_write()), "{calls:?}");
        assert_eq!(stored_key(&h, "signed-dkim"), pem);
    }
}

#[tokio::test]
async fn an_existing_key_is_never_replaced_and_its_record_is_shown() {
    let mut h = Harness::new();
    h.domain(dkim_domain("mine", "mine.example", "rsa-sha256", true));
    let secret = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "mine-dkim", "namespace": NS, "resourceVersion": "7"},
        "data": {"private.pem": STANDARD.encode(OPENSSL_RSA)}});
    h.fake.put("", "secrets", NS, "mine-dkim", secret.clone());
    let (_, calls) = h.reconcile_domain("mine").await;
    assert_eq!(
        secret_calls(&calls),
        [(Method::GET, secret_path("mine-dkim"))]
    );
    assert_eq!(h.fake.get("", "secrets", NS, "mine-dkim"), Some(secret));
    let record = status(&h, "mine").dkim_record.unwrap();
    let value = format!("v=DKIM1; k=rsa; p={}", OPENSSL_RSA_PUB.trim());
    assert_eq!(
        record,
        format!(
            "s2026._domainkey.mine.example. IN TXT \"{}\" \"{}\"",
            &value[..255],
            &value[255..]
        )
    );
}

#[tokio::test]
async fn a_secret_without_the_key_gets_it_by_a_patch_that_names_the_version_read() {
    let mut h = Harness::new();
    h.domain(dkim_domain(
        "shared",
        "shared.example",
        "ed25519-sha256",
        true,
    ));
    h.fake.put(
        "",
        "secrets",
        NS,
        "shared-dkim",
        json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "shared-dkim", "namespace": NS, "resourceVersion": "41"},
        "data": {"other": STANDARD.encode("kept")}}),
    );
    let (_, calls) = h.reconcile_domain("shared").await;
    let patch = calls
        .iter()
        .find(|c| c.method == Method::PATCH && c.path == secret_path("shared-dkim"))
        .expect("a patch of the Secret");
    assert!(
        patch.content_type.starts_with("application/merge-patch"),
        "{patch:?}"
    );
    let body = patch.body.clone().unwrap();
    // The API server refuses the patch if the Secret changed since it was
    // read (someone may have added the key meanwhile).
    assert_eq!(body["metadata"]["resourceVersion"], "41");
    assert_eq!(body["data"].as_object().map(|d| d.len()), Some(1), "{body}");
    let s = h.fake.get("", "secrets", NS, "shared-dkim").unwrap();
    assert_eq!(s["data"]["other"], STANDARD.encode("kept"));
    let pem = stored_key(&h, "shared-dkim");
    let public = dkim::public_key(&pem, DkimAlgorithm::Ed25519Sha256).unwrap();
    assert!(
        status(&h, "shared")
            .dkim_record
            .unwrap()
            .ends_with(&format!("p={}\"", STANDARD.encode(public)))
    );
}

#[tokio::test]
async fn without_generate_a_missing_key_is_a_condition_and_an_event_not_a_secret() {
    let mut h = Harness::new();
    h.domain(dkim_domain("manual", "manual.example", "rsa-sha256", false));
    let (action, calls) = h.reconcile_domain("manual").await;
    assert_eq!(
        secret_calls(&calls),
        [(Method::GET, secret_path("manual-dkim"))]
    );
    let st = status(&h, "manual");
    assert_eq!(st.dkim_record, None);
    let c = condition(&st.conditions, "DkimKeyReady");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "SecretNotFound")
    );
    assert!(c.message.contains("manual-dkim"), "{}", c.message);
    let events = events(&calls);
    assert!(
        events.contains(&("Warning".to_string(), "SecretNotFound".to_string())),
        "{events:?}"
    );
    assert_eq!(action, Action::requeue(std::time::Duration::from_secs(30)));

    // A key of the wrong kind is named as such.
    h.fake.put(
        "",
        "secrets",
        NS,
        "manual-dkim",
        json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "manual-dkim", "namespace": NS},
        "data": {"private.pem": STANDARD.encode("not a key")}}),
    );
    let (_, calls) = h.reconcile_domain("manual").await;
    let c = condition(&status(&h, "manual").conditions, "DkimKeyReady").clone();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "KeyInvalid")
    );
    assert_eq!(
        secret_calls(&calls),
        [(Method::GET, secret_path("manual-dkim"))]
    );
}
