//! Temporary and per-recipient failures from real peers: a remote MX that
//! soft-rejects (smtp-sink with `-r RCPT`) gets the message again on the
//! shortened schedule until it takes it; a mailbox server that refuses
//! one recipient of three (Dovecot LMTP, `550 5.1.1` for a user it does
//! not know) gets the other two, and the sender gets one DSN about the
//! third.

// A panic is a test failure: unwrap and expect are how tests fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::dovecot::{Dovecot, Store};
use common::mailbox::{field, maildir_new, parse_dsn};
use common::manifests::{REMOTE_SENDER, Setup, maildomain};
use common::sink::{Answer, Sink, saved};
use common::spool::states;
use common::{Env, LOCALHOST, wait_for};
use mailrelay::spool::RecipientState;

/// How long a message may take to arrive: generous, never a timing claim.
const ARRIVAL: Duration = Duration::from_secs(60);

/// This test's MX host: unique in the suite.
const MX: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 30);

/// Send one message over the smtp listener; its queue id.
#[track_caller]
fn send(env: &Env, from: &str, to: &[&str], content: &str) -> String {
    let mut smtp = env.smtp_from(LOCALHOST);
    let sent = smtp.send_mail(from, to, content);
    smtp.quit();
    sent.queue_id()
        .unwrap_or_else(|| panic!("the message to {to:?} was not queued: {sent:?}"))
}

/// The one recipient's state of the only queued message, if any.
fn only_recipient(env: &Env) -> Option<RecipientState> {
    let queued = states(&env.spool_dir());
    queued.first().map(|q| q.recipients[0].clone())
}

#[test]
fn a_host_that_defers_twice_then_accepts_gets_the_message_on_the_third_attempt() {
    let sinks = tempfile::tempdir().unwrap();
    let mail = sinks.path().join("mx");
    let mut mx = Sink::start(MX, &mail, Answer::DeferRcpt);
    // The first retry comes after 1 s, every later one after 3 s: enough
    // room to swap the sink after the second attempt, before the third.
    let env = Env::start(
        Setup::default()
            .relay_from_loopback()
            .relay_spec("queue: {retrySchedule: [1s, 3s], jitterPercent: 0, lifetime: 1h, delayWarning: 0s}")
            .dns_records(&format!(
                "mx-host=retry.test,mx.retry.test,10\nhost-record=mx.retry.test,{MX}"
            )),
    );
    let id = send(
        &env,
        REMOTE_SENDER,
        &["bob@retry.test"],
        "Subject: retry\r\n\r\nretry-marker\r\n",
    );

    let last_reply = wait_for(
        ARRIVAL,
        || match only_recipient(&env) {
            Some(RecipientState::Deferred {
                attempts: 2,
                last_reply,
                ..
            }) => Some(last_reply),
            _ => None,
        },
        || {
            format!(
                "{id} was not deferred twice: {:?}\n{}",
                only_recipient(&env),
                env.relay.log_text()
            )
        },
    );
    assert!(
        last_reply.starts_with("450 4.3.0"),
        "the deferral carries smtp-sink's reply: {last_reply}"
    );
    mx.stop();
    let _mx = Sink::start(MX, &mail, Answer::Accept);

    // Watch every state until the message leaves: no third deferral.
    let mut most_attempts = 2;
    wait_for(
        ARRIVAL,
        || match only_recipient(&env) {
            None => Some(()),
            Some(RecipientState::Deferred { attempts, .. }) => {
                most_attempts = most_attempts.max(attempts);
                None
            }
            Some(_) => None,
        },
        || format!("{id} never left the queue\n{}", env.relay.log_text()),
    );
    assert_eq!(
        most_attempts,
        2,
        "delivered on the third attempt, not later\n{}",
        env.relay.log_text()
    );
    let arrived = saved(&mail);
    assert_eq!(arrived.len(), 1, "{arrived:?}");
    assert!(arrived[0].contains("retry-marker"), "{}", arrived[0]);
    assert!(arrived[0].contains("X-Rcpt-Args: <bob@retry.test>"));
}

#[test]
fn a_host_that_refuses_one_of_three_recipients_delivers_two_and_the_sender_gets_one_dsn() {
    const USERS: [&str; 2] = ["alice@hosted.test", "bob@hosted.test"];
    const CAROL: &str = "carol@hosted.test";
    const DAVE: &str = "dave@senders.test";
    // Dovecot knows alice and bob; the relay accepts carol too.
    let dovecot = Dovecot::start(&USERS, Store::Own);
    let senders = tempfile::tempdir().unwrap();
    let env = Env::start(
        Setup::default()
            .hosted_delivery(&dovecot.lmtp_delivery())
            .hosted_local_parts(&["alice", "bob", "carol"])
            .domain(&maildomain(
                "senders.test",
                &["dave"],
                &format!("{{maildir: {{path: {}}}}}", senders.path().display()),
            )),
    );
    let content = format!(
        "From: <{DAVE}>\r\nSubject: three recipients\r\nMessage-ID: <three@senders.test>\r\n\r\nthree-marker\r\n"
    );
    let id = send(&env, DAVE, &[USERS[0], USERS[1], CAROL], &content);
    env.wait_until_spool_is_empty(ARRIVAL);

    for user in USERS {
        let inbox = maildir_new(&dovecot.new_dir(user));
        assert_eq!(inbox.len(), 1, "{user}: {inbox:?}\n{}", dovecot.log_text());
        assert!(inbox[0].contains("three-marker"), "{user}: {}", inbox[0]);
    }
    let dave = senders.path().join("dave").join("new");
    let notices = wait_for(
        ARRIVAL,
        || Some(maildir_new(&dave)).filter(|n| !n.is_empty()),
        || format!("no DSN for {id}\n{}", env.relay.log_text()),
    );
    // The spool is empty: nothing more can come.
    assert_eq!(notices.len(), 1, "exactly one DSN: {notices:#?}");
    let notice = &notices[0];
    let dsn = parse_dsn(notice);
    dsn.assert_well_formed(notice);
    assert_eq!(dsn.to.as_deref(), Some(format!("<{DAVE}>").as_str()));
    assert!(
        notice.starts_with("Return-Path: <>\n"),
        "a DSN comes from the null sender: {notice}"
    );
    assert_eq!(dsn.recipients.len(), 1, "only carol failed: {dsn:?}");
    let diagnostic = dsn.assert_failed(CAROL, "5.1.1");
    assert!(
        diagnostic.starts_with("smtp;") && diagnostic.contains("550 5.1.1"),
        "Diagnostic-Code: {diagnostic}"
    );
    assert!(
        diagnostic.contains(CAROL),
        "Dovecot's reply names carol: {diagnostic}"
    );
    assert!(
        field(&dsn.per_message, "Reporting-MTA").is_some_and(|v| v.starts_with("dns;")),
        "{dsn:?}"
    );
    let returned = dsn.returned_headers.clone().unwrap_or_default();
    assert!(
        returned.contains("Message-ID: <three@senders.test>"),
        "the original's header section comes back: {returned}"
    );
    assert!(
        !notice.contains("three-marker"),
        "the body does not come back: {notice}"
    );
}
