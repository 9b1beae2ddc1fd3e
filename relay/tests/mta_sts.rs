//! Outbound TLS policy end to end (issue 10, acceptance 3): a real relay
//! process, dnsmasq serving the `_mta-sts` TXT records and the addresses
//! of `mta-sts.DOMAIN` and the MX hosts, an HTTPS server on
//! `127.0.0.N:443` serving the policies with a certificate from a test CA
//! (given to the relay with `--tls-ca`), and MX hosts on `127.0.0.N:25`
//! that offer STARTTLS with certificates of that CA, for the right name
//! or not, or no STARTTLS at all.
//!
//! Addresses 127.0.0.171–189 are this file's.

// A panic is a test failure: unwrap and expect are how tests fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../src/delivery/test_server.rs"]
#[allow(dead_code)]
mod test_server;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::deliveries::{assert_mail_after_starttls, send, wait_body, wait_deferred};
use common::manifests::{REMOTE_SENDER, Setup};
use common::policy_server::{Pki, PolicyServer, policy, runtime};
use common::{Env, count};
use test_server::{TestServer, TlsScript};

/// How long a message may take to arrive or be tried: generous, never a
/// timing claim.
const WITHIN: Duration = Duration::from_secs(60);

fn ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, n)
}

/// dnsmasq lines: `domain` has one MX `mx` at `mx_ip`, and when
/// `policy_ip` is given an MTA-STS record and `mta-sts.domain` there.
fn records(domain: &str, mx: &str, mx_ip: Ipv4Addr, policy_ip: Option<Ipv4Addr>) -> String {
    let mut lines = format!("mx-host={domain},{mx},10\nhost-record={mx},{mx_ip}\n");
    if let Some(p) = policy_ip {
        lines.push_str(&format!(
            "txt-record=_mta-sts.{domain},\"v=STSv1; id=20261130T1;\"\nhost-record=mta-sts.{domain},{p}\n"
        ));
    }
    lines
}

/// The test's relay: relays for loopback clients, MTA-STS on, the test
/// CA trusted, retries every few seconds.
fn relay(dir: &std::path::Path, pki: &Pki, dns: &str, spec: &str) -> Env {
    let ca = dir.join("test-ca.pem");
    std::fs::write(&ca, &pki.ca_pem).expect("write the CA");
    Env::start(
        Setup::default()
            .relay_from_loopback()
            .relay_spec("queue: {retrySchedule: [1s], jitterPercent: 0}")
            .relay_spec(spec)
            .dns_records(dns)
            .relay_arg("--tls-ca")
            .relay_arg(ca.display().to_string()),
    )
}

#[test]
fn enforce_defers_mail_to_hosts_the_policy_does_not_vouch_for_and_delivers_over_verified_tls() {
    let rt = runtime();
    let pki = Pki::new();
    let (https, bad_mx, off_policy_mx, good_mx) = (ip(171), ip(172), ip(173), ip(174));
    // bad.test: its MX is in the policy but its certificate names another host.
    // off.test: its MX (valid certificate) is not among the policy's mx.
    // good.test: the MX is in the policy with a valid certificate.
    let policies = HashMap::from([
        (
            "mta-sts.bad.test".to_string(),
            policy("enforce", &["mx.bad.test"]),
        ),
        (
            "mta-sts.off.test".to_string(),
            policy("enforce", &["*.mail.off.test"]),
        ),
        (
            "mta-sts.good.test".to_string(),
            policy("enforce", &["*.good.test"]),
        ),
    ]);
    let names = ["mta-sts.bad.test", "mta-sts.off.test", "mta-sts.good.test"];
    let policy_server = rt.block_on(PolicyServer::start(
        SocketAddr::new(IpAddr::V4(https), 443),
        pki.server(&names),
        policies,
    ));
    let mx = |addr: Ipv4Addr, name: &str| {
        let tls = TlsScript::StartTls(pki.server(&[name]));
        rt.block_on(TestServer::start_at(
            SocketAddr::new(IpAddr::V4(addr), 25),
            tls,
            None,
            false,
        ))
    };
    let bad = mx(bad_mx, "not-the-mx.bad.test");
    let off = mx(off_policy_mx, "mx.off.test");
    let good = mx(good_mx, "mx.good.test");
    let dns = [
        records("bad.test", "mx.bad.test", bad_mx, Some(https)),
        records("off.test", "mx.off.test", off_policy_mx, Some(https)),
        records("good.test", "mx.good.test", good_mx, Some(https)),
    ]
    .concat();
    let dir = tempfile::tempdir().expect("dir");
    let env = relay(dir.path(), &pki, &dns, "delivery: {tls: {policy: MtaSts}}");

    let bad_id = send(&env, REMOTE_SENDER, "user@bad.test", "to-bad");
    let off_id = send(&env, REMOTE_SENDER, "user@off.test", "to-off");
    let good_id = send(&env, REMOTE_SENDER, "user@good.test", "to-good");

    // Delivered where the policy is met, over TLS.
    let seen = wait_body(&env, "to-good", || good.seen());
    assert!(seen.contains(&"TLS".to_string()), "{seen:?}");
    assert_mail_after_starttls(&seen);

    // Deferred with a 4xx reason naming the policy, tried again, and
    // never sent: the wrong certificate ends the handshake before any
    // mail command; the host outside the policy is not even connected to.
    let reason = wait_deferred(&env, "user@bad.test", 2);
    assert!(
        reason.contains("4.7.5 MTA-STS (enforce) policy of bad.test not met by mx.bad.test"),
        "{reason}"
    );
    assert!(reason.contains("not valid for name"), "{reason}");
    let reason = wait_deferred(&env, "user@off.test", 2);
    assert!(
        reason.contains("MX host mx.off.test does not match the MTA-STS policy of off.test"),
        "{reason}"
    );
    let bad_seen = bad.seen();
    assert!(bad_seen.iter().any(|l| l == "C: STARTTLS"), "{bad_seen:?}");
    assert!(
        !bad_seen
            .iter()
            .any(|l| l.starts_with("C: MAIL") || l.starts_with("BODY") || l == "TLS"),
        "nothing went to the host with the wrong certificate: {bad_seen:?}"
    );
    assert!(
        off.seen().is_empty(),
        "the host outside the policy was not contacted: {:?}",
        off.seen()
    );
    let queued: Vec<String> = env.spool().into_iter().map(|q| q.id).collect();
    assert!(
        queued.contains(&bad_id) && queued.contains(&off_id),
        "{queued:?}"
    );
    assert!(!queued.contains(&good_id), "{queued:?}");

    // One event per decision with the queue id, and the metrics.
    let log = env.relay.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("outbound TLS policy not met") && l.contains(&bad_id)),
        "{log}"
    );
    let policy = "policy=\"mta_sts_enforce\"";
    assert!(
        count(
            &env,
            &format!("mailrelay_outbound_tls_total{{{policy},outcome=\"failed_deferred\"}}")
        ) >= 4
    );
    assert!(
        count(
            &env,
            &format!("mailrelay_outbound_tls_total{{{policy},outcome=\"verified\"}}")
        ) >= 1
    );
    // Each policy was fetched once; retries used the cache.
    assert_eq!(
        count(&env, "mailrelay_mta_sts_lookups_total{result=\"fetched\"}"),
        3
    );
    let mut fetched = policy_server.requests();
    fetched.sort();
    assert_eq!(
        fetched,
        names
            .iter()
            .map(|n| format!("{n} /.well-known/mta-sts.txt"))
            .collect::<Vec<_>>()
            .tap_sort()
    );
}

#[test]
fn testing_mode_delivers_to_a_host_that_fails_the_policy_and_reports_it() {
    let rt = runtime();
    let pki = Pki::new();
    let (https, mx_ip) = (ip(181), ip(182));
    let policy_server = rt.block_on(PolicyServer::start(
        SocketAddr::new(IpAddr::V4(https), 443),
        pki.server(&["mta-sts.trial.test"]),
        HashMap::from([(
            "mta-sts.trial.test".to_string(),
            policy("testing", &["mx.trial.test"]),
        )]),
    ));
    let tls = TlsScript::StartTls(pki.server(&["someone-else.test"]));
    let mx = rt.block_on(TestServer::start_at(
        SocketAddr::new(IpAddr::V4(mx_ip), 25),
        tls,
        None,
        false,
    ));
    let dir = tempfile::tempdir().expect("dir");
    let env = relay(
        dir.path(),
        &pki,
        &records("trial.test", "mx.trial.test", mx_ip, Some(https)),
        "delivery: {tls: {policy: MtaSts}}",
    );

    let id = send(&env, REMOTE_SENDER, "user@trial.test", "to-trial");
    let seen = wait_body(&env, "to-trial", || mx.seen());
    assert!(
        seen.contains(&"TLS".to_string()),
        "still encrypted: {seen:?}"
    );
    env.wait_until_spool_is_empty(WITHIN);

    let log = env.relay.log_text();
    let report = log
        .lines()
        .find(|l| l.contains("MTA-STS testing") && l.contains(&id))
        .unwrap_or_else(|| panic!("no report for {id}:\n{log}"));
    assert!(report.contains("not valid for name"), "{report}");
    assert_eq!(
        count(
            &env,
            "mailrelay_outbound_tls_total{policy=\"mta_sts_testing\",outcome=\"failed_reported\"}"
        ),
        1
    );
    assert_eq!(
        policy_server.requests(),
        ["mta-sts.trial.test /.well-known/mta-sts.txt"]
    );
}

#[test]
fn required_tls_for_a_domain_defers_a_host_without_starttls_while_others_stay_opportunistic() {
    let rt = runtime();
    let pki = Pki::new();
    let (strict_ip, plain_ip) = (ip(186), ip(187));
    let strict = rt.block_on(TestServer::start_at(
        SocketAddr::new(IpAddr::V4(strict_ip), 25),
        TlsScript::None,
        None,
        false,
    ));
    let plain = rt.block_on(TestServer::start_at(
        SocketAddr::new(IpAddr::V4(plain_ip), 25),
        TlsScript::None,
        None,
        false,
    ));
    let dns = [
        records("strict.test", "mx.strict.test", strict_ip, None),
        records("plain.test", "mx.plain.test", plain_ip, None),
    ]
    .concat();
    let dir = tempfile::tempdir().expect("dir");
    let env = relay(
        dir.path(),
        &pki,
        &dns,
        "delivery: {tls: {domains: [{domain: Strict.Test, policy: Required}]}}",
    );

    send(&env, REMOTE_SENDER, "user@strict.test", "to-strict");
    send(&env, REMOTE_SENDER, "user@plain.test", "to-plain");

    let seen = wait_body(&env, "to-plain", || plain.seen());
    assert!(
        !seen.contains(&"TLS".to_string()),
        "opportunistic, in clear: {seen:?}"
    );
    let reason = wait_deferred(&env, "user@strict.test", 2);
    assert!(
        reason.contains("4.7.5 required TLS policy of strict.test not met by mx.strict.test"),
        "{reason}"
    );
    assert!(reason.contains("does not offer STARTTLS"), "{reason}");
    let strict_seen = strict.seen();
    assert!(
        !strict_seen
            .iter()
            .any(|l| l.starts_with("C: MAIL") || l.starts_with("BODY")),
        "nothing was sent in clear: {strict_seen:?}"
    );
    assert!(
        count(
            &env,
            "mailrelay_outbound_tls_total{policy=\"required\",outcome=\"failed_deferred\"}"
        ) >= 2
    );
    assert!(
        count(
            &env,
            "mailrelay_outbound_tls_total{policy=\"opportunistic\",outcome=\"clear\"}"
        ) >= 1
    );
}

trait TapSort {
    fn tap_sort(self) -> Self;
}

impl TapSort for Vec<String> {
    fn tap_sort(mut self) -> Self {
        self.sort();
        self
    }
}

#[test]
fn a_policy_that_cannot_be_fetched_and_is_not_cached_counts_as_none() {
    let rt = runtime();
    let pki = Pki::new();
    // The TXT record says there is a policy, but nothing answers on
    // mta-sts.gone.test:443 (RFC 8461 §5: deliver as without MTA-STS).
    let (nothing_ip, mx_ip) = (ip(188), ip(189));
    let tls = TlsScript::StartTls(pki.server(&["someone-else.test"]));
    let mx = rt.block_on(TestServer::start_at(
        SocketAddr::new(IpAddr::V4(mx_ip), 25),
        tls,
        None,
        false,
    ));
    let dir = tempfile::tempdir().expect("dir");
    let env = relay(
        dir.path(),
        &pki,
        &records("gone.test", "mx.gone.test", mx_ip, Some(nothing_ip)),
        "delivery: {tls: {policy: MtaSts}}",
    );

    let id = send(&env, REMOTE_SENDER, "user@gone.test", "to-gone");
    wait_body(&env, "to-gone", || mx.seen());
    env.wait_until_spool_is_empty(WITHIN);
    let log = env.relay.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("MTA-STS policy lookup failed") && l.contains(&id)),
        "{log}"
    );
    assert_eq!(
        count(
            &env,
            "mailrelay_mta_sts_lookups_total{result=\"failed_no_policy\"}"
        ),
        1
    );
    assert_eq!(
        count(
            &env,
            "mailrelay_outbound_tls_total{policy=\"opportunistic\",outcome=\"encrypted\"}"
        ),
        1
    );
}
