//! ARC (RFC 8617) end to end: the real relay, a hosted domain that asks
//! for sealing (`spec.arc.seal`) with its DKIM key published in the
//! test's dnsmasq. Mail for it is read back from the spool (its mailbox
//! server never answers, so it stays there) and its ARC chain verified
//! with dkimpy's `arc_verify`, an independent implementation. The relay's
//! own `Authentication-Results:` says `arc=none` for mail without a chain,
//! `arc=pass` for a chain that validates (the relay's own set, sent
//! again), and `arc=fail` for a chain broken by a changed body or ending
//! in an ARC-Seal with `cv=fail`.

// A panic is a test failure: unwrap and expect are how tests fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::headers;
use common::manifests::{HOSTNAME, Setup};
use common::spool::Queued;
use common::{Env, LOCALHOST};

const RSA_KEY: &str = include_str!("../src/dkim/testdata/rsa.pem");
const RSA_PUB: &str = include_str!("../src/dkim/testdata/rsa.pub.b64");

/// The sealing domain and a hosted domain that does not seal.
const SEALED: &str = "bob@fwd.test";
const UNSEALED: &str = "carol@plain.test";

fn hosted(domain: &str, local_part: &str, extra: &str) -> String {
    format!(
        "apiVersion: mailrelay.io/v1alpha1
kind: MailDomain
metadata:
  name: {name}
spec:
  domain: {domain}
  inbound: {{localParts: [{local_part}]}}
  inboundAuth: {{policy: Tag}}
  delivery: {{lmtp: {{host: 127.0.0.1, port: 9}}}}
{extra}",
        name = domain.replace('.', "-")
    )
}

fn start() -> Env {
    let sealing = "  dkim:\n    selector: arc1\n    privateKey: {name: fwd-dkim, key: private.pem}\n  arc: {seal: true}\n";
    Env::start(
        Setup::default()
            .domain(&hosted("fwd.test", "bob", sealing))
            .domain(&hosted("plain.test", "carol", ""))
            .secret("fwd-dkim", &[("private.pem", RSA_KEY)])
            .dns_records(&common::dns::txt_record(
                "arc1._domainkey.fwd.test",
                &format!("v=DKIM1; k=rsa; p={}", RSA_PUB.trim()),
            )),
    )
}

fn message(to: &str, marker: &str) -> String {
    format!(
        "From: <alice@sender.test>\r\nTo: <{to}>\r\nSubject: {marker}\r\nDate: Mon, 30 Nov 2026 08:00:00 +0000\r\nMessage-ID: <{marker}@sender.test>\r\n\r\nbody of {marker}\r\n"
    )
}

/// Send `content` to `to` on the smtp listener; the queued message.
#[track_caller]
fn send(env: &Env, to: &str, content: &str) -> Queued {
    let mut smtp = common::smtp::Smtp::connect_from(LOCALHOST, env.addrs().smtp);
    assert_eq!(smtp.reply().code, 220);
    assert_eq!(smtp.command("EHLO client.sender.test").code, 250);
    let sent = smtp.send_mail("alice@sender.test", &[to], content);
    smtp.quit();
    let end = sent.end.as_ref().unwrap_or_else(|| panic!("{sent:?}"));
    assert_eq!(end.code, 250, "{end:?}\n{}", env.relay.log_text());
    let id = end.text().rsplit(' ').next().unwrap().to_string();
    env.spool()
        .into_iter()
        .find(|q| q.id == id)
        .unwrap_or_else(|| panic!("{id} is not in the spool"))
}

/// The header section's fields named `name`, unfolded, trimmed.
fn fields(q: &Queued, name: &str) -> Vec<String> {
    headers::fields(q, name)
        .into_iter()
        .map(|v| v.trim().to_string())
        .collect()
}

/// The `arc` result of the relay's own Authentication-Results.
#[track_caller]
fn our_arc(q: &Queued) -> String {
    let ours = headers::our_results(q);
    let arc: Vec<&str> = ours
        .results
        .iter()
        .filter(|r| r.method == "arc")
        .map(|r| r.result.as_str())
        .collect();
    assert_eq!(arc.len(), 1, "one arc= in {ours:?}");
    arc[0].to_string()
}

/// The `i=` and `cv=` of each ARC-Seal, newest first.
fn seals(q: &Queued) -> Vec<(String, String)> {
    fields(q, "ARC-Seal")
        .iter()
        .map(|v| {
            let tag = |name: &str| {
                v.split(';')
                    .map(|t| t.split_whitespace().collect::<String>())
                    .find_map(|t| t.strip_prefix(&format!("{name}=")).map(str::to_string))
                    .unwrap_or_default()
            };
            (tag("i"), tag("cv"))
        })
        .collect()
}

fn pair(i: &str, cv: &str) -> (String, String) {
    (i.to_string(), cv.to_string())
}

/// dkimpy's `arc_verify`: the chain's validation status and why;
/// `terminated` for a chain whose newest seal says `cv=fail` (dkimpy
/// gives no status then).
const ARC_VERIFY: &str = r#"
cv, results, why = dkim.arc_verify(message, dnsfunc=dnsfunc)
print((cv or b"terminated").decode(), why)
"#;

#[track_caller]
fn dkimpy(dir: &std::path::Path, env: &Env, message: &[u8]) -> String {
    common::dkimpy::run(ARC_VERIFY, dir, env.dns.addr(), message)
}

#[test]
fn sealed_mail_verifies_with_dkimpy_and_broken_chains_are_arc_fail() {
    assert!(common::dkimpy::venv_python().exists());
    let dir = tempfile::tempdir().unwrap();
    let env = start();

    // No chain: arc=none, and the relay's set is instance 1, cv=none.
    let first = send(&env, SEALED, &message(SEALED, "first"));
    assert_eq!(our_arc(&first), "none");
    assert_eq!(seals(&first), [pair("1", "none")], "{}", first.body_text());
    let aar = fields(&first, "ARC-Authentication-Results");
    assert_eq!(aar.len(), 1);
    assert!(
        aar[0].starts_with(&format!("i=1; {HOSTNAME}; spf=")) && aar[0].ends_with("arc=none"),
        "the AAR is our Authentication-Results: {aar:?}"
    );
    let ams = &fields(&first, "ARC-Message-Signature")[0];
    assert!(
        ams.contains("d=fwd.test") && ams.contains("s=arc1"),
        "{ams}"
    );
    let verdict = dkimpy(dir.path(), &env, &first.body);
    assert!(
        verdict.starts_with("pass"),
        "dkimpy on\n{}\n{verdict}",
        first.body_text()
    );

    // The sealed message forwarded back: the chain validates, and the new
    // set is instance 2 with cv=pass.
    let again = send(&env, SEALED, &first.body_text());
    assert_eq!(our_arc(&again), "pass", "{}", env.relay.log_text());
    assert_eq!(seals(&again), [pair("2", "pass"), pair("1", "none")]);
    let verdict = dkimpy(dir.path(), &env, &again.body);
    assert!(
        verdict.starts_with("pass"),
        "dkimpy on\n{}\n{verdict}",
        again.body_text()
    );

    // The body changed after sealing: the reference implementation says
    // the chain fails, so does the relay, and it seals cv=fail, which
    // ends the chain for dkimpy too.
    let tampered = first
        .body_text()
        .replace("body of first", "body of first, changed");
    let verdict = dkimpy(dir.path(), &env, tampered.as_bytes());
    assert!(
        verdict.starts_with("fail"),
        "dkimpy on the changed message: {verdict}"
    );
    let broken = send(&env, SEALED, &tampered);
    assert_eq!(our_arc(&broken), "fail");
    assert_eq!(seals(&broken), [pair("2", "fail"), pair("1", "none")]);
    let verdict = dkimpy(dir.path(), &env, &broken.body);
    assert!(
        verdict.starts_with("terminated ARC-Seal[2] reported failure"),
        "dkimpy on\n{}\n{verdict}",
        broken.body_text()
    );

    // A chain that ends in cv=fail fails, and gets no further set
    // (RFC 8617 §5.1.2).
    let after_fail = send(&env, SEALED, &broken.body_text());
    assert_eq!(our_arc(&after_fail), "fail");
    assert_eq!(seals(&after_fail), [pair("2", "fail"), pair("1", "none")]);
    assert!(
        env.relay.log_text().contains("not ARC-sealed"),
        "the relay says why: {}",
        env.relay.log_text()
    );

    // A domain that does not ask for sealing: the chain is still checked.
    let plain = send(&env, UNSEALED, &first.body_text());
    assert_eq!(our_arc(&plain), "pass");
    assert_eq!(seals(&plain), [pair("1", "none")], "no set of ours");

    let metrics = common::http_get(env.addrs().http, "/metrics").expect("metrics");
    for line in [
        "mailrelay_inbound_auth_results_total{method=\"arc\",result=\"none\"} 1",
        "mailrelay_inbound_auth_results_total{method=\"arc\",result=\"pass\"} 2",
        "mailrelay_inbound_auth_results_total{method=\"arc\",result=\"fail\"} 2",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in\n{metrics}"
        );
    }
}
