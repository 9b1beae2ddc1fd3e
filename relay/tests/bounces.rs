//! Delivery status notifications end to end: a null MX, a domain that does
//! not exist and a message that outlives the queue lifetime each send the
//! sender one RFC 3464 report, read from the sender's maildir and parsed
//! with Python's `email` package; mail from the null sender, and a bounce
//! that cannot be delivered in turn, are dropped without a notice.

// A panic is a test failure: unwrap and expect are how tests fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::mailbox::{Dsn, maildir_new, parse_dsn};
use common::manifests::{Setup, maildomain};
use common::sink::{Answer, Sink, saved};
use common::{Env, LOCALHOST, wait_for};

/// How long a notice may take to arrive: generous, never a timing claim.
const ARRIVAL: Duration = Duration::from_secs(60);

/// The sender, whose domain is hosted with a maildir the test reads.
const DAVE: &str = "dave@senders.test";

/// This file's MX host (for the expiry test): unique in the suite.
const MX: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 40);

/// DNS for this file: a null MX, and an MX for `slow.test` (where a sink
/// that always defers may listen); every other `.test` name is NXDOMAIN.
fn records() -> String {
    format!(
        "mx-host=nullmx.test,.,0\n\
         mx-host=slow.test,mx.slow.test,10\n\
         host-record=mx.slow.test,{MX}"
    )
}

/// A relay that lets loopback clients relay, retries every second and
/// gives up after `lifetime`, with `senders.test` delivered into the
/// maildir under `senders`.
fn start(senders: &Path, lifetime: &str) -> Env {
    Env::start(
        Setup::default()
            .relay_from_loopback()
            .relay_spec(&format!(
                "queue: {{retrySchedule: [1s], jitterPercent: 0, lifetime: {lifetime}, delayWarning: 0s}}"
            ))
            .dns_records(&records())
            .domain(&maildomain(
                "senders.test",
                &["dave"],
                &format!("{{maildir: {{path: {}}}}}", senders.display()),
            )),
    )
}

/// Send one message over the smtp listener; its queue id.
#[track_caller]
fn send(env: &Env, from: &str, to: &str, message_id: &str) -> String {
    let content = format!(
        "From: <{from}>\r\nSubject: bounce test\r\nMessage-ID: <{message_id}>\r\n\r\nbody of {message_id}\r\n"
    );
    let mut smtp = env.smtp_from(LOCALHOST);
    let sent = smtp.send_mail(from, &[to], &content);
    smtp.quit();
    sent.queue_id()
        .unwrap_or_else(|| panic!("<{from}> to {to} was not queued: {sent:?}"))
}

fn dave_new(senders: &Path) -> PathBuf {
    senders.join("dave").join("new")
}

/// The one notice dave got, once the spool is empty (so no other can
/// follow), parsed and checked to be a well-formed report about the
/// message with `message_id`.
#[track_caller]
fn only_notice(env: &Env, senders: &Path, message_id: &str) -> Dsn {
    env.wait_until_spool_is_empty(ARRIVAL);
    let notices = wait_for(
        ARRIVAL,
        || Some(maildir_new(&dave_new(senders))).filter(|n| !n.is_empty()),
        || format!("no DSN reached {DAVE}\n{}", env.relay.log_text()),
    );
    assert_eq!(notices.len(), 1, "exactly one DSN: {notices:#?}");
    let notice = &notices[0];
    assert!(
        notice.starts_with("Return-Path: <>\n"),
        "a DSN comes from the null sender: {notice}"
    );
    let dsn = parse_dsn(notice);
    dsn.assert_well_formed(notice);
    assert_eq!(dsn.to.as_deref(), Some(format!("<{DAVE}>").as_str()));
    let returned = dsn.returned_headers.clone().unwrap_or_default();
    assert!(
        returned.contains(&format!("Message-ID: <{message_id}>")),
        "the DSN is about {message_id}: {returned}"
    );
    assert!(
        !notice.contains(&format!("body of {message_id}")),
        "the body does not come back: {notice}"
    );
    dsn
}

#[test]
fn mail_to_a_null_mx_domain_is_bounced_to_the_sender() {
    let senders = tempfile::tempdir().unwrap();
    let env = start(senders.path(), "1h");
    send(&env, DAVE, "x@nullmx.test", "nullmx@senders.test");
    let dsn = only_notice(&env, senders.path(), "nullmx@senders.test");
    let diagnostic = dsn.assert_failed("x@nullmx.test", "5.1.10");
    assert!(diagnostic.contains("null MX"), "{diagnostic}");
}

#[test]
fn mail_to_a_domain_that_does_not_exist_is_bounced_to_the_sender() {
    let senders = tempfile::tempdir().unwrap();
    let env = start(senders.path(), "1h");
    send(&env, DAVE, "x@nowhere.test", "nxdomain@senders.test");
    let dsn = only_notice(&env, senders.path(), "nxdomain@senders.test");
    let diagnostic = dsn.assert_failed("x@nowhere.test", "5.1.2");
    assert!(
        diagnostic.contains("nowhere.test") && diagnostic.contains("NXDOMAIN"),
        "{diagnostic}"
    );
}

#[test]
fn a_message_that_outlives_the_queue_lifetime_is_bounced_with_the_last_reply() {
    let senders = tempfile::tempdir().unwrap();
    let sink_dir = tempfile::tempdir().unwrap();
    let _mx = Sink::start(MX, &sink_dir.path().join("mx"), Answer::DeferRcpt);
    let env = start(senders.path(), "10s");
    send(&env, DAVE, "x@slow.test", "expired@senders.test");
    let dsn = only_notice(&env, senders.path(), "expired@senders.test");
    let diagnostic = dsn.assert_failed("x@slow.test", "4.4.7");
    assert!(
        diagnostic.contains("expired") && diagnostic.contains("450 4.3.0"),
        "the notice says why and gives the last reply: {diagnostic}"
    );
    assert!(
        saved(&sink_dir.path().join("mx")).is_empty(),
        "the host never took it"
    );
}

#[test]
fn mail_from_the_null_sender_and_bounces_that_fail_are_dropped_without_a_notice() {
    let senders = tempfile::tempdir().unwrap();
    let env = start(senders.path(), "1h");
    // From <>: undeliverable, and nobody to tell.
    send(&env, "", "x@nullmx.test", "null-sender@senders.test");
    // From a domain that does not exist: its bounce cannot be delivered,
    // and that bounce (from <>) must not be bounced in turn.
    send(&env, "y@nowhere.test", "x@nullmx.test", "lost@nowhere.test");
    // A control from dave: the bounce path works in this very relay.
    send(&env, DAVE, "x@nullmx.test", "control@senders.test");
    let dsn = only_notice(&env, senders.path(), "control@senders.test");
    dsn.assert_failed("x@nullmx.test", "5.");

    let log = env.relay.log_text();
    let dropped = log
        .lines()
        .filter(|l| l.contains("no bounce to a bounce"))
        .count();
    assert_eq!(
        dropped, 2,
        "the message from <> and the failed bounce are both dropped:\n{log}"
    );
    let mailboxes: Vec<_> = std::fs::read_dir(senders.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(mailboxes, ["dave"], "nothing reached anyone else");
}
