//! Remote faults during delivery, each deferring the message (never
//! bouncing it) and retrying: a remote MX that hangs up in the middle of
//! DATA, one that hangs up after the final dot without a reply, a tarpit
//! that stops answering (bounded by the client's timeouts), and DNS
//! servers that do not answer or refuse to.
//!
//! Hosts: 127.0.0.60-63 (unique in the suite, see common/sink.rs).

// A panic is a test failure: unwrap and expect are how tests fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::manifests::{REMOTE_SENDER, Setup};
use common::remote::{Remote, Step};
use common::spool::states;
use common::{Env, LOCALHOST, wait_for};
use mailrelay::delivery::{OutboundConfig, Outcome, SmtpClient, Target, Timeouts};
use mailrelay::spool::RecipientState;
use mailrelay_crds::maildomain::TlsMode;

/// Generous bounds for real peers; never timing claims.
const WITHIN: Duration = Duration::from_secs(60);

const MID_DATA: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 60);
const AFTER_DOT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 61);
const TARPIT_GREETING: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 62);
const TARPIT_DOT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 63);

/// A relay that retries every second, with `domain`'s MX at `mx`.
fn relay_with_mx(domain: &str, mx: Ipv4Addr) -> Env {
    Env::start(
        Setup::default()
            .relay_from_loopback()
            .relay_spec(
                "queue: {retrySchedule: [1s], jitterPercent: 0, lifetime: 1h, delayWarning: 0s}",
            )
            .dns_records(&format!(
                "mx-host={domain},mx.{domain},10\nhost-record=mx.{domain},{mx}"
            )),
    )
}

#[track_caller]
fn send(env: &Env, to: &str, marker: &str) -> String {
    let mut smtp = env.smtp_from(LOCALHOST);
    let sent = smtp.send_mail(
        REMOTE_SENDER,
        &[to],
        &format!("Subject: {marker}\r\n\r\nbody of {marker}\r\n"),
    );
    smtp.quit();
    sent.queue_id()
        .unwrap_or_else(|| panic!("not queued: {sent:?}"))
}

/// Wait until the only queued message was deferred at least `attempts`
/// times; its last reply. Fails if it is ever bounced or a second message
/// (a DSN) appears.
#[track_caller]
fn wait_until_deferred(env: &Env, attempts: u32) -> String {
    wait_for(
        WITHIN,
        || {
            let queued = states(&env.spool_dir());
            assert_eq!(
                queued.len(),
                1,
                "one message and no DSN: {queued:#?}\n{}",
                env.relay.log_text()
            );
            match &queued[0].recipients[0] {
                RecipientState::Deferred {
                    attempts: n,
                    last_reply,
                    ..
                } if *n >= attempts => Some(last_reply.clone()),
                RecipientState::Failed { reply } => panic!("bounced: {reply}"),
                _ => None,
            }
        },
        || {
            format!(
                "not deferred {attempts} times: {:#?}\n{}",
                states(&env.spool_dir()),
                env.relay.log_text()
            )
        },
    )
}

/// The host misbehaves on every connection until the message has been
/// deferred twice (so retried once), then a well-behaved host takes over
/// its address and gets the message exactly once.
fn deferred_then_delivered(mx: Ipv4Addr, domain: &str, step: Step) -> (String, Vec<Step>) {
    let env = relay_with_mx(domain, mx);
    let bad = Remote::start(mx, &[step]);
    let marker = format!("marker-{domain}");
    send(&env, &format!("bob@{domain}"), &marker);
    let last_reply = wait_until_deferred(&env, 2);
    let steps = bad.seen(|s| s.connections.clone());
    drop(bad);

    let good = Remote::start(mx, &[Step::Accept]);
    env.wait_until_spool_is_empty(WITHIN);
    let acknowledged = good.seen(|s| s.acknowledged.clone());
    assert_eq!(acknowledged.len(), 1, "{acknowledged:#?}");
    assert!(acknowledged[0].contains(&marker), "{}", acknowledged[0]);
    (last_reply, steps)
}

#[test]
fn a_remote_that_hangs_up_in_the_middle_of_data_is_retried_and_the_message_delivered() {
    let (last_reply, steps) = deferred_then_delivered(MID_DATA, "middata.test", Step::DropMidData);
    assert!(steps.len() >= 2 && steps.iter().all(|s| *s == Step::DropMidData));
    eprintln!("deferred after a hang-up in DATA: {last_reply}");
    assert!(!last_reply.is_empty());
}

#[test]
fn a_remote_that_hangs_up_after_the_final_dot_without_a_reply_is_retried() {
    let (last_reply, steps) =
        deferred_then_delivered(AFTER_DOT, "afterdot.test", Step::DropAfterDot);
    assert!(steps.len() >= 2 && steps.iter().all(|s| *s == Step::DropAfterDot));
    eprintln!("deferred after a hang-up at the final dot: {last_reply}");
    assert!(!last_reply.is_empty());
}

/// The SMTP client as the queue uses it, with short per-step timeouts.
async fn deliver_to_tarpit(ip: Ipv4Addr, step: Step) -> Vec<Outcome> {
    let remote = Remote::start(ip, &[step]);
    let target = Target {
        host: "tarpit.test".into(),
        addr: remote.addr,
    };
    let config = OutboundConfig::new("relay.test", TlsMode::None)
        .with_timeouts(Timeouts::uniform(Duration::from_secs(1)));
    let outcomes = match SmtpClient::connect(&target, &config).await {
        Ok(mut client) => {
            client
                .send(
                    "a@remote.test",
                    &["bob@tarpit.test"],
                    b"Subject: t\r\n\r\nx\r\n",
                )
                .await
        }
        Err(outcome) => vec![outcome],
    };
    // The client gave up and hung up: the server saw the end of it.
    wait_for(
        Duration::from_secs(30),
        || (remote.seen(|s| s.connections.len()) == 1).then_some(()),
        || "the tarpit never saw the connection".into(),
    );
    outcomes
}

#[tokio::test]
async fn a_tarpit_that_stops_answering_after_its_greeting_is_a_temporary_failure() {
    let outcomes = deliver_to_tarpit(TARPIT_GREETING, Step::SilentAfterGreeting).await;
    eprintln!("tarpit after the greeting: {outcomes:?}");
    assert!(
        matches!(outcomes.as_slice(), [Outcome::TempFail { reason }] if reason.contains("did not complete")),
        "{outcomes:?}"
    );
}

#[tokio::test]
async fn a_tarpit_that_never_answers_the_final_dot_is_a_temporary_failure() {
    let outcomes = deliver_to_tarpit(TARPIT_DOT, Step::SilentAfterDot).await;
    eprintln!("tarpit after the final dot: {outcomes:?}");
    assert!(
        matches!(outcomes.as_slice(), [Outcome::TempFail { reason }] if reason.contains("did not complete")),
        "{outcomes:?}"
    );
}

/// A relay with `setup`'s DNS; mail to `to` is deferred again and again,
/// never bounced. The last reply.
fn deferred_by_dns(setup: Setup, to: &str) -> String {
    let env = Env::start(setup.relay_from_loopback().relay_spec(
        "queue: {retrySchedule: [1s], jitterPercent: 0, lifetime: 1h, delayWarning: 0s}",
    ));
    send(&env, to, "dns-marker");
    wait_until_deferred(&env, 2)
}

#[test]
fn mail_for_a_domain_whose_dns_server_never_answers_is_deferred_not_bounced() {
    let last_reply = deferred_by_dns(
        Setup::default().silent_dns().dns_timeout("1s"),
        "bob@silent.test",
    );
    assert!(last_reply.contains("DNS"), "{last_reply}");
}

#[test]
fn mail_for_a_domain_the_dns_server_refuses_to_resolve_is_deferred_not_bounced() {
    // The test's dnsmasq serves only .test and answers REFUSED for the rest.
    let last_reply = deferred_by_dns(Setup::default(), "bob@elsewhere.example");
    assert!(last_reply.contains("DNS"), "{last_reply}");
}
