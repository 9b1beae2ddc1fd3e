//! DKIM signing end to end (issue 10, acceptance 1): a message submitted
//! with AUTH on the submission listener, From: a hosted domain with a DKIM
//! key, is relayed to a remote MX (smtp-sink) and arrives with a
//! DKIM-Signature that verifies — with mail-auth and with dkimpy, an
//! independent implementation — against the public key published as a TXT
//! record in the test's dnsmasq, for RSA-SHA256 and Ed25519-SHA256. The
//! same message with its body changed, or with a second From: added, fails.

// A panic is a test failure: unwrap and expect are how tests fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use common::Env;
use common::manifests::{PASSWORD, Setup};
use common::peers::{PySession, Tls, smtplib};
use common::sink::{Answer, Sink, saved};
use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator};
use mailrelay_crds::config::DnsConfig;

const MX: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 97);
const ARRIVAL: Duration = Duration::from_secs(60);

/// Test keys, made with `openssl genpkey` (PKCS#8), and their public keys
/// as `openssl pkey -pubout` gives them (base64 of the SubjectPublicKeyInfo
/// for RSA, of the raw 32 bytes for Ed25519).
const RSA_KEY: &str = include_str!("../src/dkim/testdata/rsa.pem");
const RSA_PUB: &str = include_str!("../src/dkim/testdata/rsa.pub.b64");
const ED_KEY: &str = include_str!("../src/dkim/testdata/ed25519.pem");
const ED_PUB: &str = include_str!("../src/dkim/testdata/ed25519.pub.b64");

struct Signer {
    domain: &'static str,
    selector: &'static str,
    algorithm: &'static str,
    k: &'static str,
    key: &'static str,
    public: &'static str,
}

const SIGNERS: [Signer; 2] = [
    Signer {
        domain: "rsa.test",
        selector: "rsa1",
        algorithm: "rsa-sha256",
        k: "rsa",
        key: RSA_KEY,
        public: RSA_PUB,
    },
    Signer {
        domain: "ed.test",
        selector: "ed1",
        algorithm: "ed25519-sha256",
        k: "ed25519",
        key: ED_KEY,
        public: ED_PUB,
    },
];

impl Signer {
    fn account(&self) -> String {
        format!("sender@{}", self.domain)
    }

    fn name(&self) -> String {
        self.domain.replace('.', "-")
    }

    /// The MailDomain, its accounts Secret and its key Secret.
    fn manifests(&self) -> String {
        let hash = bcrypt::hash(PASSWORD, 4).unwrap();
        let pem: String = self.key.lines().map(|l| format!("    {l}\n")).collect();
        format!(
            "apiVersion: mailrelay.io/v1alpha1
kind: MailDomain
metadata:
  name: {name}
spec:
  domain: {domain}
  inbound: {{catchAll: true}}
  delivery: {{lmtp: {{host: 127.0.0.1, port: 9}}}}
  submission:
    accounts: {{name: {name}-accounts, key: passwd}}
  dkim:
    selector: {selector}
    algorithm: {algorithm}
    privateKey: {{name: {name}-dkim, key: private.pem}}
---
apiVersion: v1
kind: Secret
metadata:
  name: {name}-accounts
type: Opaque
stringData:
  passwd: \"{account}:{hash}\"
---
apiVersion: v1
kind: Secret
metadata:
  name: {name}-dkim
type: Opaque
stringData:
  private.pem: |
{pem}",
            name = self.name(),
            domain = self.domain,
            selector = self.selector,
            algorithm = self.algorithm,
            account = self.account(),
        )
    }

    /// The TXT record for dnsmasq: the value in strings of at most 255
    /// octets, as a zone file would have it.
    fn txt_record(&self) -> String {
        common::dns::txt_record(
            &format!("{}._domainkey.{}", self.selector, self.domain),
            &format!("v=DKIM1; k={}; p={}", self.k, self.public.trim()),
        )
    }

    /// A message with the fields a mail client writes, and body lines
    /// that relaxed canonicalisation must treat right (trailing blanks,
    /// runs of spaces, empty lines at the end).
    fn message(&self) -> String {
        format!(
            "From: Sender <{account}>\r\n\
             To: Bob <bob@sink.test>\r\n\
             Subject: signed by {domain}\r\n\
             Date: Mon, 30 Nov 2026 08:00:00 +0000\r\n\
             Message-ID: <{selector}.1@{domain}>\r\n\
             MIME-Version: 1.0\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\
             \r\n\
             Hello Bob,   this line has  runs of spaces and a trailing blank \r\n\
             \r\n\
             signed-marker-{selector}\r\n\
             \r\n\
             \r\n",
            account = self.account(),
            domain = self.domain,
            selector = self.selector,
        )
    }
}

/// The message as smtp-sink saved it, with CRLF line endings again.
fn as_received(saved: &str) -> Vec<u8> {
    saved
        .replace("\r\n", "\n")
        .replace('\n', "\r\n")
        .into_bytes()
}

fn mail_auth_result(dns: SocketAddr, message: &[u8]) -> Vec<DkimResult> {
    let config = DnsConfig {
        nameservers: vec![dns],
        timeout_ms: 2000,
    };
    let resolver = mailrelay::policy::resolver(&config, None).unwrap();
    let authenticator = MessageAuthenticator(resolver.inner().clone());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let parsed = AuthenticatedMessage::parse(message).expect("the message parses");
        authenticator
            .verify_dkim(&parsed)
            .await
            .iter()
            .map(|o| o.result().clone())
            .collect()
    })
}

/// dkimpy's `dkim.verify`.
const DKIMPY: &str = r#"print("pass" if dkim.verify(message, dnsfunc=dnsfunc) else "fail")"#;

fn dkimpy_result(dir: &Path, dns: SocketAddr, message: &[u8]) -> String {
    common::dkimpy::run(DKIMPY, dir, dns, message)
}

/// One field of the DKIM-Signature: `d`, `s`, `a`, `h`...
fn tag(message: &str, name: &str) -> String {
    let start = message.find("DKIM-Signature:").expect("a DKIM-Signature");
    let mut field = String::new();
    for (i, line) in message[start..].split("\r\n").enumerate() {
        if i > 0 && !line.starts_with([' ', '\t']) {
            break;
        }
        field.push_str(line);
    }
    let value = field["DKIM-Signature:".len()..]
        .split(';')
        .map(|t| t.split_whitespace().collect::<String>())
        .find_map(|t| t.strip_prefix(&format!("{name}=")).map(str::to_string));
    value.unwrap_or_else(|| panic!("no {name}= in {field}"))
}

#[test]
fn submitted_mail_is_signed_and_verifies_with_mail_auth_and_dkimpy_for_rsa_and_ed25519() {
    assert!(common::dkimpy::venv_python().exists());
    let sinks = tempfile::tempdir().unwrap();
    let inbox = sinks.path().join("mx");
    let _sink = Sink::start(MX, &inbox, Answer::Accept);
    let mut setup = Setup::default().dns_records(&format!(
        "mx-host=sink.test,mx.sink.test,10\nhost-record=mx.sink.test,{MX}"
    ));
    for s in &SIGNERS {
        setup = setup.domain(&s.manifests()).dns_records(&s.txt_record());
    }
    let env = Env::start(setup);
    let dns = env.dns.addr();

    for s in &SIGNERS {
        let mut session = PySession::new(
            env.addrs().submission,
            Tls::Starttls,
            &s.account(),
            &["bob@sink.test"],
            &s.message(),
        )
        .auth("PLAIN");
        session.user = s.account();
        let outcome = &smtplib(&[session])[0];
        assert!(
            outcome.queue_id().is_some(),
            "{} was not accepted: {outcome:?}\n{}",
            s.domain,
            env.relay.log_text()
        );
    }
    env.wait_until_spool_is_empty(ARRIVAL);
    let got = saved(&inbox);
    assert_eq!(got.len(), 2, "{got:?}");

    for s in &SIGNERS {
        let marker = format!("signed-marker-{}", s.selector);
        let text = got
            .iter()
            .find(|m| m.contains(&marker))
            .unwrap_or_else(|| panic!("no message with {marker}: {got:?}"));
        let message = as_received(text);
        let shown = String::from_utf8_lossy(&message).into_owned();
        assert_eq!(tag(&shown, "d"), s.domain, "{shown}");
        assert_eq!(tag(&shown, "s"), s.selector);
        assert_eq!(tag(&shown, "a"), s.algorithm);
        assert_eq!(tag(&shown, "c"), "relaxed/relaxed");
        let signed = tag(&shown, "h").to_lowercase();
        assert_eq!(
            signed.split(':').filter(|h| *h == "from").count(),
            2,
            "From is over-signed: {signed}"
        );

        assert_eq!(
            mail_auth_result(dns, &message),
            [DkimResult::Pass],
            "mail-auth on {shown}"
        );
        assert_eq!(
            dkimpy_result(sinks.path(), dns, &message),
            "pass",
            "dkimpy on {shown}"
        );

        // The negative checks: a changed body, and a From: added on top
        // (which the over-signed From rules out), both fail.
        let tampered = shown
            .replace(&marker, &format!("{marker} changed"))
            .into_bytes();
        // mail-auth calls a body hash mismatch "neutral" (the signature over
        // the header still checks out); anything but "pass" is what counts.
        assert!(
            matches!(
                mail_auth_result(dns, &tampered).as_slice(),
                [DkimResult::Neutral(mail_auth::Error::Dkim(
                    mail_auth::dkim::DkimError::FailedBodyHashMatch
                ))]
            ),
            "mail-auth passed a changed body: {:?}",
            mail_auth_result(dns, &tampered)
        );
        assert_eq!(dkimpy_result(sinks.path(), dns, &tampered), "fail");
        let added = format!("From: <ceo@{}>\r\n{shown}", s.domain).into_bytes();
        assert!(
            matches!(
                mail_auth_result(dns, &added).as_slice(),
                [DkimResult::Fail(_)]
            ),
            "mail-auth passed an added From:"
        );
        assert_eq!(dkimpy_result(sinks.path(), dns, &added), "fail");
    }
}

#[test]
fn submitted_mail_of_a_domain_whose_key_is_missing_is_refused_with_451_not_sent_unsigned() {
    let nokey = Signer {
        domain: "nokey.test",
        selector: "gone",
        algorithm: "rsa-sha256",
        k: "rsa",
        key: RSA_KEY,
        public: RSA_PUB,
    };
    // The MailDomain and its accounts, without the key Secret it names.
    let manifests = nokey.manifests();
    let key_secret = format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: {}-dkim",
        nokey.name()
    );
    let without_key = manifests
        .split_once(&key_secret)
        .map(|(kept, _)| kept.to_string())
        .unwrap();
    assert!(!without_key.contains("PRIVATE KEY"));
    let env = Env::start(Setup::default().domain(&without_key));
    let mut session = PySession::new(
        env.addrs().submission,
        Tls::Starttls,
        &nokey.account(),
        &["bob@remote.test"],
        &nokey.message(),
    )
    .auth("PLAIN");
    session.user = nokey.account();
    let outcome = &smtplib(&[session])[0];
    let data = outcome.data.as_ref().expect("a reply to the content");
    assert!(data.is(451, "4.3.0"), "{data:?}\n{}", env.relay.log_text());
    assert!(env.spool().is_empty(), "nothing was queued");
    assert!(
        env.relay.log_text().contains("DKIM key not usable"),
        "the relay says why: {}",
        env.relay.log_text()
    );
}
