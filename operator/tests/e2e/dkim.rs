//! Issue 10, acceptance 4: the real operator, asked by a MailDomain to
//! generate a DKIM key, creates the Secret and shows the DNS record in the
//! MailDomain's status; a message signed with the key from that Secret by
//! the relay's own signing code verifies — with mail-auth and with dkimpy —
//! against the record exactly as shown, its quoted strings parsed back
//! into the TXT value a resolver would return.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::{
    AuthenticatedMessage, DkimResult, MessageAuthenticator, Parameters, ResolverCache, Txt,
};
use mailrelay_crds::maildomain::DkimAlgorithm;
use serde_json::json;

use crate::cluster::{Cluster, eventually, gvk, operator_rules, root};
use crate::{LIMIT, domains};

/// Owner name and the TXT value of a record line as the status shows it:
/// `NAME. IN TXT "..." "..."`, strings joined as a resolver joins them.
fn parse_record(line: &str) -> (String, String) {
    let (name, rest) = line
        .split_once(" IN TXT ")
        .unwrap_or_else(|| panic!("not a TXT record line: {line}"));
    let mut value = String::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let quoted = rest
            .strip_prefix('"')
            .unwrap_or_else(|| panic!("expected a quoted string in {line}"));
        let end = quoted.find('"').expect("a closing quote");
        assert!(end <= 255, "a string longer than 255 octets in {line}");
        value.push_str(&quoted[..end]);
        rest = quoted[end + 1..].trim_start();
    }
    (name.to_string(), value)
}

/// The record as the only DNS answer mail-auth gets.
struct Published(Mutex<HashMap<Box<str>, Txt>>);

impl ResolverCache<Box<str>, Txt> for Published {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.lock().unwrap().get(name).cloned()
    }
    fn remove<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.lock().unwrap().remove(name)
    }
    fn insert(&self, key: Box<str>, value: Txt, _: std::time::Instant) {
        self.0.lock().unwrap().insert(key, value);
    }
}

async fn mail_auth_verifies(owner: &str, value: &str, message: &[u8]) -> Vec<DkimResult> {
    let key = DomainKey::parse(value.as_bytes()).expect("mail-auth parses the record");
    let published = Published(Mutex::new(HashMap::from([(
        Box::<str>::from(owner),
        Txt::DomainKey(Arc::new(key)),
    )])));
    // A resolver that is never asked (the record is in the cache); an
    // unanswerable server, so a lookup would fail rather than leave the machine.
    let resolver = mailrelay::policy::resolver(
        &mailrelay_crds::config::DnsConfig {
            nameservers: vec!["127.0.0.1:9".parse().unwrap()],
            timeout_ms: 500,
        },
        None,
    )
    .unwrap();
    let authenticator = MessageAuthenticator(resolver.inner().clone());
    let parsed = AuthenticatedMessage::parse(message).expect("the message parses");
    authenticator
        .verify_dkim(Parameters::new(&parsed).with_txt_cache(&published))
        .await
        .iter()
        .map(|o| o.result().clone())
        .collect()
}

/// dkimpy, from the venv tests/lib/deps.sh makes, answering its one DNS
/// question with the record's value.
fn dkimpy_verifies(dir: &std::path::Path, owner: &str, value: &str, message: &[u8]) -> String {
    let python: PathBuf = root().join("target/tests-venv/bin/python");
    let file = dir.join("signed.eml");
    std::fs::write(&file, message).unwrap();
    let script = r#"
import sys, dkim
owner, value = sys.argv[2], sys.argv[3].encode()
def dnsfunc(name, timeout=5):
    if isinstance(name, bytes):
        name = name.decode()
    return value if name.lower().rstrip(".") == owner.rstrip(".") else None
print("pass" if dkim.verify(open(sys.argv[1], "rb").read(), dnsfunc=dnsfunc) else "fail")
"#;
    let out = Command::new(&python)
        .args(["-c", script])
        .arg(&file)
        .args([owner, value])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{} (dkimpy) cannot run: {e}; run tests/run to install the test tools",
                python.display()
            )
        });
    assert!(
        out.status.success(),
        "dkimpy failed (tests/run installs it into target/tests-venv): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn a_generated_key_and_the_record_in_the_status_verify_a_signature() {
    let c = Cluster::start(operator_rules(|_| {})).await;
    let _op = c.operator("op-1");
    let ns = "mail";
    let cases = [
        ("rsa", "rsa.example", "rsa-sha256", DkimAlgorithm::RsaSha256),
        (
            "ed",
            "ed.example",
            "ed25519-sha256",
            DkimAlgorithm::Ed25519Sha256,
        ),
    ];
    for (name, domain, alg, _) in &cases {
        let manifest = json!({"apiVersion": "mailrelay.io/v1alpha1", "kind": "MailDomain",
            "metadata": {"name": name},
            "spec": {"domain": domain, "inbound": {"localParts": ["postmaster"]},
                "delivery": {"lmtp": {"host": "dovecot", "port": 24}},
                "dkim": {"selector": "gen", "algorithm": alg, "generate": true,
                    "privateKey": {"name": format!("{name}-dkim"), "key": "private.pem"}}}});
        // The CRDs come from the operator (--apply-crds): wait for them.
        eventually(&format!("apply MailDomain {name}"), LIMIT, || async {
            c.apply(ns, &manifest).await.ok()
        })
        .await;
    }
    let secrets = c.api(&gvk("", "v1", "Secret", "secrets"), ns);
    for (name, domain, _, algorithm) in cases {
        let record: String = eventually(&format!("{name}'s status.dkimRecord"), LIMIT, || async {
            let d = c.api(&domains(), ns).get_opt(name).await.ok()??;
            d.data["status"]["dkimRecord"].as_str().map(String::from)
        })
        .await;
        let (owner, value) = parse_record(&record);
        assert_eq!(owner, format!("gen._domainkey.{domain}."));

        let secret = secrets.get(&format!("{name}-dkim")).await.unwrap();
        let pem = STANDARD
            .decode(secret.data["data"]["private.pem"].as_str().unwrap())
            .unwrap();
        let key = mailrelay::dkim::keys::parse(&pem, algorithm, "the generated Secret")
            .expect("the relay reads the generated key");
        let message = format!(
            "From: Someone <someone@{domain}>\r\nTo: x@example.org\r\nSubject: generated\r\nDate: Mon, 30 Nov 2026 08:00:00 +0000\r\nMessage-ID: <{name}@{domain}>\r\n\r\nsigned with a generated key\r\n"
        );
        let header =
            mailrelay::dkim::sign::signature(Arc::new(key), domain, "gen", message.as_bytes())
                .unwrap();
        let signed = format!("{header}{message}").into_bytes();

        assert_eq!(
            mail_auth_verifies(&owner, &value, &signed).await,
            [DkimResult::Pass],
            "{record}\n{}",
            String::from_utf8_lossy(&signed)
        );
        assert_eq!(
            dkimpy_verifies(c.dir.path(), &owner, &value, &signed),
            "pass"
        );
        // The negative checks: the same record passes neither a changed
        // body (mail-auth: "neutral", the body hash does not match) nor a
        // changed Subject ("fail", the signature does not verify).
        let text = String::from_utf8_lossy(&signed).into_owned();
        let body = text.replace("generated key", "generated KEY").into_bytes();
        assert!(matches!(
            mail_auth_verifies(&owner, &value, &body).await.as_slice(),
            [DkimResult::Neutral(mail_auth::Error::Dkim(
                mail_auth::dkim::DkimError::FailedBodyHashMatch
            ))]
        ));
        assert_eq!(dkimpy_verifies(c.dir.path(), &owner, &value, &body), "fail");
        let subject = text
            .replace("Subject: generated", "Subject: forged")
            .into_bytes();
        assert!(matches!(
            mail_auth_verifies(&owner, &value, &subject)
                .await
                .as_slice(),
            [DkimResult::Fail(_)]
        ));
        assert_eq!(
            dkimpy_verifies(c.dir.path(), &owner, &value, &subject),
            "fail"
        );
    }
}
