//! Inbound SPF, DKIM and DMARC on the smtp listener, end to end: the real
//! relay, with SPF, DKIM key and DMARC records served by a real dnsmasq
//! (and one domain whose DNS server never answers). Each accepted message
//! is read back from the spool and its `Authentication-Results:` parsed.

// A panic is a test failure: unwrap and expect are how tests fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use base64::Engine as _;
use common::dns::SilentDns;
use common::headers::{fields, our_results};
use common::manifests::{ALICE, HOSTNAME, Setup};
use common::smtp::{Reply, Sent, assert_reply};
use common::{Env, LOCALHOST, spool::Queued};
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;
use mailrelay::smtp::inbound_auth::arparse::{AuthResultsField, ResInfo};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

/// The Ed25519 key pair of RFC 8463 §A.2 (a test key, published below).
const ED25519_SEED: &str = "nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=";
const ED25519_PUBLIC: &str = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";
/// A 2048-bit RSA test key (the DKIM signer's test key; ring signs with
/// nothing shorter), selector `rsa`.
const RSA_PRIVATE_KEY: &str = include_str!("../src/dkim/testdata/rsa.pem");

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

fn rsa_key() -> RsaKey<Sha256> {
    let der = PrivateKeyDer::from_pem_slice(RSA_PRIVATE_KEY.as_bytes()).expect("a private key");
    RsaKey::<Sha256>::from_key_der(der).expect("the RSA test key")
}

/// A second hosted domain that only tags, and one that checks nothing.
const TAGGED: &str = "carol@tagged.test";
const UNCHECKED: &str = "dave@open.test";

/// The records of the test's DNS; `slow.test` goes to a server that
/// never answers.
fn records(silent: SocketAddr) -> String {
    format!(
        r#"txt-record=spf-pass.test,"v=spf1 ip4:127.0.0.0/8 -all"
txt-record=spf-fail.test,"v=spf1 -all"
txt-record=spf-soft.test,"v=spf1 ~all"
txt-record=spf-perm.test,"v=spf1 ip4:not-an-address -all"
txt-record=forged.test,"v=spf1 ip4:192.0.2.1 -all"
txt-record=_dmarc.forged.test,"v=DMARC1; p=reject"
txt-record=quarantined.test,"v=spf1 -all"
txt-record=bounce.relaxed.test,"v=spf1 ip4:127.0.0.0/8 -all"
txt-record=_dmarc.relaxed.test,"v=DMARC1; p=reject"
txt-record=bounce.strict.test,"v=spf1 ip4:127.0.0.0/8 -all"
txt-record=_dmarc.strict.test,"v=DMARC1; p=reject; aspf=s"
txt-record=_dmarc.quarantined.test,"v=DMARC1; p=quarantine"
txt-record=signed.test,"v=spf1 -all"
txt-record=_dmarc.signed.test,"v=DMARC1; p=reject; adkim=s"
txt-record=ed._domainkey.signed.test,"v=DKIM1; k=ed25519; p={ED25519_PUBLIC}"
txt-record=rsa._domainkey.signed.test,"v=DKIM1; k=rsa; p={rsa_public}"
server=/slow.test/{ip}#{port}"#,
        ip = silent.ip(),
        port = silent.port(),
        rsa_public = b64().encode(rsa_key().public_key()),
    )
}

fn start() -> (Env, SilentDns) {
    let silent = SilentDns::bind();
    let setup = Setup::default()
        .dns_timeout("1s")
        .dns_records(&records(silent.addr))
        .domain(&domain_with_policy("tagged.test", "carol", "Tag"))
        .domain(&domain_with_policy("open.test", "dave", "Accept"));
    (Env::start(setup), silent)
}

fn domain_with_policy(domain: &str, local_part: &str, policy: &str) -> String {
    format!(
        "apiVersion: mailrelay.io/v1alpha1
kind: MailDomain
metadata:
  name: {name}
spec:
  domain: {domain}
  inbound:
    localParts: [{local_part}]
  inboundAuth:
    policy: {policy}
  delivery: {{lmtp: {{host: 127.0.0.1, port: 9}}}}
",
        name = domain.replace('.', "-")
    )
}

fn message(from: &str, to: &str, marker: &str) -> String {
    format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: {marker}\r\nMessage-ID: <{marker}@client.test>\r\n\r\nbody of {marker}\r\n"
    )
}

/// `content` signed for signed.test twice: Ed25519 (selector `ed`) and
/// RSA-SHA256 (selector `rsa`).
fn signed(content: &str) -> String {
    const HEADERS: [&str; 4] = ["From", "To", "Subject", "Message-ID"];
    let ed = Ed25519Key::from_seed_and_public_key(
        &b64().decode(ED25519_SEED).expect("seed"),
        &b64().decode(ED25519_PUBLIC).expect("public key"),
    )
    .expect("the RFC 8463 key");
    let ed = DkimSigner::from_key(ed)
        .domain("signed.test")
        .selector("ed")
        .headers(HEADERS)
        .sign(content.as_bytes())
        .expect("sign with Ed25519");
    let rsa = DkimSigner::from_key(rsa_key())
        .domain("signed.test")
        .selector("rsa")
        .headers(HEADERS)
        .sign(content.as_bytes())
        .expect("sign with RSA");
    format!("{}{}{content}", ed.to_header(), rsa.to_header())
}

/// EHLO `helo`, MAIL FROM `from`, RCPT each of `to`, DATA `content`.
fn send(env: &Env, helo: &str, from: &str, to: &[&str], content: &str) -> Sent {
    let mut smtp = common::smtp::Smtp::connect_from(LOCALHOST, env.addrs().smtp);
    assert_eq!(smtp.reply().code, 220);
    let ehlo = smtp.command(&format!("EHLO {helo}"));
    assert_eq!(ehlo.code, 250, "EHLO {helo}: {ehlo}");
    let sent = smtp.send_mail(from, to, content);
    smtp.quit();
    sent
}

#[track_caller]
fn end_reply(sent: &Sent) -> &Reply {
    assert_eq!(sent.mail.code, 250, "MAIL: {sent:?}");
    sent.end
        .as_ref()
        .unwrap_or_else(|| panic!("no end of DATA: {sent:?}"))
}

/// The queued message with `marker` in it.
#[track_caller]
fn queued(env: &Env, marker: &str) -> Queued {
    env.spool()
        .into_iter()
        .find(|q| q.body_contains(&format!("body of {marker}")))
        .unwrap_or_else(|| panic!("{marker} is not in the spool"))
}

#[track_caller]
fn method<'a>(f: &'a AuthResultsField, name: &str, ptype: &str, property: &str) -> &'a ResInfo {
    f.results
        .iter()
        .find(|r| r.method == name && r.property(ptype, property).is_some())
        .unwrap_or_else(|| panic!("no {name} with {ptype}.{property} in {f:?}"))
}

#[test]
fn spf_pass_fail_softfail_none_and_permerror_are_recorded_for_mail_from_and_helo() {
    let (env, _silent) = start();
    // No DMARC record for these: the result is recorded, the mail accepted.
    for (domain, want) in [
        ("spf-pass.test", "pass"),
        ("spf-fail.test", "fail"),
        ("spf-soft.test", "softfail"),
        ("spf-none.test", "none"),
        // A record that cannot be parsed (RFC 7208 §4.6): permerror.
        ("spf-perm.test", "permerror"),
    ] {
        let from = format!("sender@{domain}");
        let marker = format!("spf-{want}");
        let sent = send(
            &env,
            domain,
            &from,
            &[ALICE],
            &message(&from, ALICE, &marker),
        );
        assert_reply(end_reply(&sent), 250, "2.0.0", &marker);
        let f = our_results(&queued(&env, &marker));
        let mailfrom = method(&f, "spf", "smtp", "mailfrom");
        assert_eq!(mailfrom.result, want, "{domain}: {f:?}");
        assert_eq!(mailfrom.property("smtp", "mailfrom"), Some(from.as_str()));
        // The HELO name was the same domain: the same verdict for it.
        let helo = method(&f, "spf", "smtp", "helo");
        assert_eq!(
            (helo.result.as_str(), helo.property("smtp", "helo")),
            (want, Some(domain))
        );
        assert_eq!(method(&f, "dmarc", "header", "from").result, "none");
    }
}

#[test]
fn the_null_sender_is_checked_as_postmaster_at_the_helo_name() {
    let (env, _silent) = start();
    let sent = send(
        &env,
        "spf-fail.test",
        "",
        &[ALICE],
        &message("mailer-daemon@spf-none.test", ALICE, "null-sender"),
    );
    assert_reply(end_reply(&sent), 250, "2.0.0", "null sender");
    let f = our_results(&queued(&env, "null-sender"));
    let mailfrom = method(&f, "spf", "smtp", "mailfrom");
    assert_eq!(mailfrom.result, "fail");
    assert_eq!(
        mailfrom.property("smtp", "mailfrom"),
        Some("postmaster@spf-fail.test")
    );
}

#[test]
fn an_spf_dns_timeout_gives_451_never_a_pass() {
    let (env, _silent) = start();
    // Envelope and From: at slow.test: neither SPF nor the DMARC policy
    // can be looked up.
    let sent = send(
        &env,
        "client.test",
        "a@slow.test",
        &[ALICE],
        &message("a@slow.test", ALICE, "slow-1"),
    );
    let end = end_reply(&sent);
    assert_reply(end, 451, "4.7.0", "DMARC policy lookup timed out");
    assert!(end.text().contains("slow.test"), "{end}");
    // Envelope at slow.test, From: a p=reject domain it does not pass for:
    // the SPF temperror could have been a pass, so try again later.
    let sent = send(
        &env,
        "client.test",
        "a@slow.test",
        &[ALICE],
        &message("a@forged.test", ALICE, "slow-2"),
    );
    let end = end_reply(&sent);
    assert_reply(end, 451, "4.7.0", "SPF temperror under p=reject");
    assert!(end.text().contains("SPF temperror"), "{end}");
    // A domain that only tags takes it, and says temperror, not pass.
    let sent = send(
        &env,
        "client.test",
        "a@slow.test",
        &[TAGGED],
        &message("a@spf-none.test", TAGGED, "slow-3"),
    );
    assert_reply(end_reply(&sent), 250, "2.0.0", "tagged");
    let f = our_results(&queued(&env, "slow-3"));
    assert_eq!(method(&f, "spf", "smtp", "mailfrom").result, "temperror");
    for marker in ["slow-1", "slow-2"] {
        assert!(
            !env.spool().iter().any(|q| q.body_contains(marker)),
            "{marker} queued"
        );
    }
}

#[test]
fn forged_mail_from_a_p_reject_domain_is_refused_at_end_of_data_with_550_5_7_1() {
    let (env, _silent) = start();
    let sent = send(
        &env,
        "client.test",
        "ceo@forged.test",
        &[ALICE],
        &message("ceo@forged.test", ALICE, "forged"),
    );
    assert_eq!(
        sent.data.as_ref().map(|r| r.code),
        Some(354),
        "refused only after the content"
    );
    let end = end_reply(&sent);
    assert_reply(end, 550, "5.7.1", "DMARC p=reject");
    let text = end.text();
    for part in [
        "forged.test",
        "p=reject",
        "SPF fail for ceo@forged.test",
        "no DKIM signature",
    ] {
        assert!(text.contains(part), "{part:?} not in {end}");
    }
    assert!(env.spool().is_empty());
    // The strictest recipient policy applies: Enforce for alice beats Tag.
    let sent = send(
        &env,
        "client.test",
        "ceo@forged.test",
        &[TAGGED, ALICE],
        &message("ceo@forged.test", ALICE, "forged-2"),
    );
    assert_reply(end_reply(&sent), 550, "5.7.1", "mixed recipients");
    // A domain that tags takes it, flagged for the spam folder.
    let sent = send(
        &env,
        "client.test",
        "ceo@forged.test",
        &[TAGGED],
        &message("ceo@forged.test", TAGGED, "forged-3"),
    );
    assert_reply(end_reply(&sent), 250, "2.0.0", "tagged");
    let q = queued(&env, "forged-3");
    let dmarc = method(&our_results(&q), "dmarc", "header", "from").clone();
    assert_eq!(
        (dmarc.result.as_str(), dmarc.property("header", "from")),
        ("fail", Some("forged.test"))
    );
    assert_eq!(fields(&q, "X-Spam-Flag"), [" YES"]);
}

#[test]
fn spf_alignment_is_relaxed_or_strict_as_the_dmarc_record_says() {
    let (env, _silent) = start();
    // SPF passes for a subdomain of the From: domain: aligned under the
    // default relaxed mode (same organizational domain, RFC 7489 §3.1.2).
    let sent = send(
        &env,
        "client.test",
        "a@bounce.relaxed.test",
        &[ALICE],
        &message("news@relaxed.test", ALICE, "relaxed"),
    );
    assert_reply(end_reply(&sent), 250, "2.0.0", "relaxed alignment");
    let f = our_results(&queued(&env, "relaxed"));
    assert_eq!(method(&f, "spf", "smtp", "mailfrom").result, "pass");
    assert_eq!(method(&f, "dmarc", "header", "from").result, "pass");
    // The same under aspf=s is not aligned: p=reject refuses it.
    let sent = send(
        &env,
        "client.test",
        "a@bounce.strict.test",
        &[ALICE],
        &message("news@strict.test", ALICE, "strict"),
    );
    let end = end_reply(&sent);
    assert_reply(end, 550, "5.7.1", "strict alignment");
    assert!(
        end.text()
            .contains("SPF pass for a@bounce.strict.test is not aligned with strict.test"),
        "{end}"
    );
}

#[test]
fn p_quarantine_failures_are_accepted_with_x_spam_flag() {
    let (env, _silent) = start();
    let sent = send(
        &env,
        "client.test",
        "a@quarantined.test",
        &[ALICE],
        &message("a@quarantined.test", ALICE, "quarantine"),
    );
    assert_reply(end_reply(&sent), 250, "2.0.0", "p=quarantine");
    let q = queued(&env, "quarantine");
    assert_eq!(fields(&q, "X-Spam-Flag"), [" YES"]);
    assert_eq!(
        method(&our_results(&q), "dmarc", "header", "from").result,
        "fail"
    );
}

#[test]
fn a_valid_dkim_signature_passes_dmarc_and_a_broken_one_is_refused() {
    let (env, _silent) = start();
    // SPF fails for signed.test (-all); the aligned signature carries DMARC.
    let good = signed(&message("news@signed.test", ALICE, "dkim-good"));
    let sent = send(&env, "client.test", "news@signed.test", &[ALICE], &good);
    assert_reply(end_reply(&sent), 250, "2.0.0", "signed");
    let f = our_results(&queued(&env, "dkim-good"));
    let dkim: Vec<_> = f.results.iter().filter(|r| r.method == "dkim").collect();
    assert_eq!(dkim.len(), 2, "{f:?}");
    for (sig, selector) in dkim.iter().zip(["ed", "rsa"]) {
        assert_eq!(sig.result, "pass", "{f:?}");
        assert_eq!(sig.property("header", "d"), Some("signed.test"));
        assert_eq!(sig.property("header", "s"), Some(selector));
        assert_eq!(sig.property("header", "b").map(str::len), Some(8));
    }
    assert_eq!(method(&f, "spf", "smtp", "mailfrom").result, "fail");
    assert_eq!(method(&f, "dmarc", "header", "from").result, "pass");
    // The same message with its body changed after signing: the body
    // hash does not match, which mail-auth (like OpenDKIM and Gmail)
    // reports as `neutral (body hash did not verify)`; not a pass either
    // way, so DMARC fails and p=reject refuses it.
    let body_changed = good.replace("body of dkim-good", "body of dkim-bad, changed");
    let sent = send(
        &env,
        "client.test",
        "news@signed.test",
        &[ALICE],
        &body_changed,
    );
    let end = end_reply(&sent);
    assert_reply(end, 550, "5.7.1", "body changed, p=reject");
    assert!(
        end.text().contains("DKIM neutral for d=signed.test"),
        "{end}"
    );
    // A signed header field changed (Subject): the signature itself fails.
    // Sent to the tagging domain, it is accepted and the header says so.
    let header_changed = good.replace("Subject: dkim-good", "Subject: dkim-tampered");
    let sent = send(
        &env,
        "client.test",
        "news@signed.test",
        &[TAGGED],
        &header_changed,
    );
    assert_reply(end_reply(&sent), 250, "2.0.0", "tagged");
    let q = env
        .spool()
        .into_iter()
        .find(|q| q.body_contains("Subject: dkim-tampered"))
        .expect("the tampered message is queued");
    let f = our_results(&q);
    let dkim: Vec<_> = f.results.iter().filter(|r| r.method == "dkim").collect();
    assert_eq!(dkim.len(), 2, "{f:?}");
    assert!(dkim.iter().all(|d| d.result == "fail"), "{f:?}");
    assert_eq!(method(&f, "dmarc", "header", "from").result, "fail");
    assert_eq!(fields(&q, "X-Spam-Flag"), [" YES"]);
}

#[test]
fn forged_authentication_results_naming_us_are_removed_and_others_kept() {
    let (env, _silent) = start();
    let content = format!(
        "Authentication-Results: {HOSTNAME}; spf=pass smtp.mailfrom=ceo@forged.test;\r\n dmarc=pass header.from=forged.test\r\n\
         Authentication-Results: upstream.example; dkim=pass header.d=example.org\r\n{}",
        message("a@spf-soft.test", ALICE, "forged-ar")
    );
    let sent = send(&env, "client.test", "a@spf-soft.test", &[ALICE], &content);
    assert_reply(end_reply(&sent), 250, "2.0.0", "forged A-R");
    let q = queued(&env, "forged-ar");
    let f = our_results(&q);
    assert_eq!(method(&f, "spf", "smtp", "mailfrom").result, "softfail");
    let all = fields(&q, "Authentication-Results");
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(all[1].contains("upstream.example"), "{all:?}");
    // Ours comes right after our Received: field.
    let text = q.body_text();
    let received = text.find("Received: ").expect("Received");
    let ours = text
        .find(&format!("Authentication-Results: {HOSTNAME};"))
        .expect("ours");
    assert!(received < ours, "{text}");
}

#[test]
fn a_domain_with_policy_accept_gets_a_none_header_and_no_checks() {
    let (env, _silent) = start();
    let sent = send(
        &env,
        "client.test",
        "ceo@forged.test",
        &[UNCHECKED],
        &message("ceo@forged.test", UNCHECKED, "unchecked"),
    );
    assert_reply(end_reply(&sent), 250, "2.0.0", "policy Accept");
    let f = our_results(&queued(&env, "unchecked"));
    assert!(f.results.is_empty(), "{f:?}");
}

#[test]
fn metrics_count_results_by_method_and_the_actions() {
    let (env, _silent) = start();
    let sent = send(
        &env,
        "spf-pass.test",
        "a@spf-pass.test",
        &[ALICE],
        &message("a@spf-pass.test", ALICE, "metrics-1"),
    );
    assert_reply(end_reply(&sent), 250, "2.0.0", "pass");
    let sent = send(
        &env,
        "client.test",
        "ceo@forged.test",
        &[ALICE],
        &message("ceo@forged.test", ALICE, "metrics-2"),
    );
    assert_reply(end_reply(&sent), 550, "5.7.1", "reject");
    let metrics = http_get(env.addrs().http, "/metrics");
    for line in [
        "mailrelay_inbound_auth_results_total{method=\"spf_mailfrom\",result=\"pass\"} 1",
        "mailrelay_inbound_auth_results_total{method=\"spf_mailfrom\",result=\"fail\"} 1",
        "mailrelay_inbound_auth_results_total{method=\"dmarc\",result=\"fail\"} 1",
        "mailrelay_inbound_auth_results_total{method=\"dkim\",result=\"none\"} 2",
        "mailrelay_inbound_auth_actions_total{action=\"accept\"} 1",
        "mailrelay_inbound_auth_actions_total{action=\"reject\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in\n{metrics}"
        );
    }
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    response
}
