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
use common::deliveries::{send, wait_body, wait_deferred};
use common::manifests::{ALICE, REMOTE_SENDER, Setup, maildomain};
use common::{Env, http_get, wait_for};
use test_server::{TestServer, TlsScript};

const SMARTHOST: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 96);
const MX: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 98);
const MAILBOX: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 99);
/// The provider's name: the certificate is issued for it, and the relay
/// finds its address through dnsmasq.
const PROVIDER: &str = "smtp.provider.test";

/// A tenant's MailDomain: its own smarthost, credentials from `secret`.
fn tenant(domain: &str, aliases: &str, secret: &str) -> String {
    let delivery = "{lmtp: {host: 127.0.0.1, port: 9}}";
    format!(
        "{}  aliases: [{aliases}]
  outbound:
    smarthost:
      host: {PROVIDER}
      port: 587
      credentials:
        username: {{name: {secret}, key: username}}
        password: {{name: {secret}, key: password}}
",
        maildomain(domain, &["a"], delivery)
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

fn bodies(server: &TestServer) -> Vec<String> {
    server
        .seen()
        .into_iter()
        .filter(|l| l.starts_with("BODY:"))
        .collect()
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
    let seen = wait_body(&env, "tenant-to-remote", || smarthost.seen());
    send(
        &env,
        "b@tenant-alias.test",
        "y@dest.test",
        "alias-to-remote",
    );
    let seen_alias = wait_body(&env, "alias-to-remote", || smarthost.seen());
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
    let sent = credentials_sent(&seen_alias);
    assert!(
        !sent.is_empty() && sent.iter().all(|c| c == "tenant-user:tenant-pass"),
        "the tenant's credentials, on each connection: {sent:?}"
    );
    assert!(
        seen_alias.contains(&"C: MAIL FROM:<a@tenant.test>".to_string()),
        "{seen_alias:?}"
    );

    // The other tenant's connection is its own: it authenticates with its
    // own (wrong) password and is refused, even while the first tenant's
    // authenticated connection sits in the pool.
    send(&env, "c@other-tenant.test", "z@dest.test", "other-tenant");
    let reason = wait_deferred(&env, "z@dest.test", 1);
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
    wait_body(&env, "remote-to-remote", || mx.seen());
    wait_body(&env, "tenant-to-hosted", || mailbox.seen());

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
        Duration::from_secs(60),
        || {
            let json = http_get(env.addrs().http, "/queue/destinations")?;
            json.contains("\"smarthost:other-tenant.test\"")
                .then_some(())
        },
        || format!("{:?}", http_get(env.addrs().http, "/queue/destinations")),
    );
}
