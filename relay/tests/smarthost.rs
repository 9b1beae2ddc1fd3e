//! Per-domain smarthosts end to end (issue 15, part 3): a real relay
//! process, dnsmasq, and scripted SMTP servers on loopback. Mail from a
//! MailDomain with `spec.outbound.smarthost` leaves through that host,
//! over STARTTLS with a certificate of a test CA (given to the relay
//! with `--tls-ca`) and AUTH with the credentials from the domain's
//! Secret among the manifests; mail from other senders goes by MX; mail
//! for a hosted domain goes to its mailbox server whoever sends it.
//!
//! Addresses 127.0.0.96, .98 and .99 are this file's.

// A panic is a test failure: unwrap and expect are how tests fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../src/delivery/test_server.rs"]
#[allow(dead_code)]
mod test_server;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use base64::Engine as _;
use common::manifests::{ALICE, REMOTE_SENDER, Setup};
use common::{Env, LOCALHOST, http_get, wait_for};
use mailrelay::spool::RecipientState;
use test_server::{TestServer, TlsScript};

/// How long a message may take to arrive or be tried: generous, never a
/// timing claim.
const WITHIN: Duration = Duration::from_secs(60);

const SMARTHOST: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 96);
const MX: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 98);
const MAILBOX: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 99);
/// The provider's name: the certificate is issued for it, and the relay
/// finds its address through dnsmasq.
const PROVIDER: &str = "smtp.provider.test";

/// The tenants' MailDomain: its own smarthost, credentials from `secret`.
fn tenant(domain: &str, aliases: &str, secret: &str) -> String {
    format!(
        "apiVersion: mailrelay.io/v1alpha1
kind: MailDomain
metadata:
  name: {name}
spec:
  domain: {domain}
  aliases: [{aliases}]
  inbound: {{localParts: [a]}}
  delivery: {{lmtp: {{host: 127.0.0.1, port: 9}}}}
  outbound:
    smarthost:
      host: {PROVIDER}
      port: 587
      credentials:
        username: {{name: {secret}, key: username}}
        password: {{name: {secret}, key: password}}
",
        name = domain.replace('.', "-"),
    )
}

fn pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}

fn content(marker: &str) -> String {
    format!("Subject: {marker}\r\n\r\nbody of {marker}\r\n")
}

#[track_caller]
fn send(env: &Env, from: &str, to: &str, marker: &str) -> String {
    let mut smtp = env.smtp_from(LOCALHOST);
    let sent = smtp.send_mail(from, &[to], &content(marker));
    smtp.quit();
    sent.queue_id()
        .unwrap_or_else(|| panic!("{marker} from {from} to {to} was not queued: {sent:?}"))
}

/// What `server` saw once a message with `marker` arrived.
#[track_caller]
fn wait_body(server: &TestServer, marker: &str, env: &Env) -> Vec<String> {
    wait_for(
        WITHIN,
        || {
            let seen = server.seen();
            seen.iter()
                .any(|l| l.starts_with("BODY:") && l.contains(marker))
                .then_some(seen)
        },
        || {
            format!(
                "{marker} did not arrive: {:?}\n{}",
                server.seen(),
                env.relay.log_text()
            )
        },
    )
}

fn bodies(server: &TestServer) -> Vec<String> {
    server
        .seen()
        .into_iter()
        .filter(|l| l.starts_with("BODY:"))
        .collect()
}

/// The last reply of the message to `rcpt` once it was deferred.
#[track_caller]
fn wait_deferred(env: &Env, rcpt: &str) -> String {
    wait_for(
        WITHIN,
        || {
            common::spool::states(&env.spool_dir())
                .into_iter()
                .find_map(|q| {
                    let i = q.envelope.recipients.iter().position(|r| r == rcpt)?;
                    match &q.recipients[i] {
                        RecipientState::Deferred { last_reply, .. } => Some(last_reply.clone()),
                        _ => None,
                    }
                })
        },
        || format!("{rcpt} was not deferred\n{}", env.relay.log_text()),
    )
}

/// The `user:password` of each `AUTH PLAIN` the server was sent.
fn credentials_sent(seen: &[String]) -> Vec<String> {
    seen.iter()
        .filter_map(|l| l.strip_prefix("C: AUTH PLAIN "))
        .map(|b64| {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .expect("AUTH PLAIN sends base64");
            let text = String::from_utf8(raw).expect("UTF-8 credentials");
            text.trim_start_matches('\0').replacen('\0', ":", 1)
        })
        .collect()
}

#[test]
fn mail_from_a_tenant_leaves_through_its_smarthost_with_its_credentials_and_the_rest_as_before() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let pki = test_server::pki(PROVIDER);
    let at = |ip: Ipv4Addr, port: u16| SocketAddr::new(IpAddr::V4(ip), port);
    let smarthost = rt.block_on(TestServer::start_at(
        at(SMARTHOST, 587),
        TlsScript::StartTls(pki.server.clone()),
        Some(("tenant-user", "tenant-pass")),
        false,
    ));
    let mx = rt.block_on(TestServer::start_at(
        at(MX, 25),
        TlsScript::None,
        None,
        false,
    ));
    let mailbox = rt.block_on(TestServer::start_at(
        at(MAILBOX, 25),
        TlsScript::None,
        None,
        false,
    ));

    let dir = tempfile::tempdir().expect("dir");
    let ca = dir.path().join("test-ca.pem");
    std::fs::write(&ca, pem(&pki.ca_der)).expect("write the CA");
    let env = Env::start(
        Setup::default()
            .relay_from_loopback()
            .relay_spec("queue: {retrySchedule: [1s], jitterPercent: 0}")
            .hosted_delivery(&format!("{{smtp: {{host: {MAILBOX}, port: 25, tls: None}}}}"))
            .domain(&tenant("tenant.test", "tenant-alias.test", "tenant-smarthost"))
            .secret(
                "tenant-smarthost",
                &[("username", "tenant-user"), ("password", "tenant-pass")],
            )
            // Another tenant of the same provider, whose password is wrong.
            .domain(&tenant("other-tenant.test", "", "other-smarthost"))
            .secret(
                "other-smarthost",
                &[("username", "other-user"), ("password", "wrong")],
            )
            .dns_records(&format!(
                "host-record={PROVIDER},{SMARTHOST}\nmx-host=dest.test,mx.dest.test,10\nhost-record=mx.dest.test,{MX}"
            ))
            .relay_arg("--tls-ca")
            .relay_arg(ca.display().to_string()),
    );

    // From the tenant (its domain, then an alias) to a remote domain.
    send(&env, "a@tenant.test", "x@dest.test", "tenant-to-remote");
    let seen = wait_body(&smarthost, "tenant-to-remote", &env);
    send(
        &env,
        "b@tenant-alias.test",
        "y@dest.test",
        "alias-to-remote",
    );
    let seen_alias = wait_body(&smarthost, "alias-to-remote", &env);
    let tls = seen.iter().position(|l| l == "TLS").expect("STARTTLS");
    let auth = seen.iter().position(|l| l == "AUTH ok").expect("AUTH");
    let mail = seen
        .iter()
        .position(|l| l.starts_with("C: MAIL"))
        .expect("MAIL");
    assert!(
        tls < auth && auth < mail,
        "TLS, then AUTH, then MAIL: {seen:?}"
    );
    assert_eq!(
        credentials_sent(&seen_alias),
        ["tenant-user:tenant-pass"],
        "the tenant's credentials, once: the second message reused the connection"
    );
    assert!(
        seen_alias.contains(&"C: MAIL FROM:<a@tenant.test>".to_string()),
        "{seen_alias:?}"
    );

    // The other tenant's connection is its own: it authenticates with its
    // own (wrong) password and is refused, even while the first tenant's
    // authenticated connection sits in the pool.
    send(&env, "c@other-tenant.test", "z@dest.test", "other-tenant");
    let reason = wait_deferred(&env, "z@dest.test");
    assert!(reason.contains("5.7.8"), "{reason}");
    assert!(
        credentials_sent(&smarthost.seen()).contains(&"other-user:wrong".to_string()),
        "{:?}",
        smarthost.seen()
    );

    // Another sender to the same domain: by MX. The tenant to a hosted
    // domain: to its mailbox server.
    send(&env, REMOTE_SENDER, "w@dest.test", "remote-to-remote");
    send(&env, "a@tenant.test", ALICE, "tenant-to-hosted");
    wait_body(&mx, "remote-to-remote", &env);
    wait_body(&mailbox, "tenant-to-hosted", &env);

    let on = |server: &TestServer| bodies(server).join("\n");
    let (smarthost_got, mx_got, mailbox_got) = (on(&smarthost), on(&mx), on(&mailbox));
    for marker in ["remote-to-remote", "tenant-to-hosted", "other-tenant"] {
        assert!(!smarthost_got.contains(marker), "{marker}: {smarthost_got}");
    }
    for marker in ["tenant-to-remote", "alias-to-remote", "tenant-to-hosted"] {
        assert!(!mx_got.contains(marker), "{marker}: {mx_got}");
    }
    assert_eq!(bodies(&mailbox).len(), 1, "{mailbox_got}");

    // The admin view names the tenant's smarthost as a destination of its own.
    wait_for(
        WITHIN,
        || {
            let json = http_get(env.addrs().http, "/queue/destinations")?;
            json.contains("\"smarthost:other-tenant.test\"")
                .then_some(())
        },
        || format!("{:?}", http_get(env.addrs().http, "/queue/destinations")),
    );
}
