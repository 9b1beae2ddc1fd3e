//! A full disk stops new mail, not delivery, and loses nothing: the
//! relay's spool is on a 24 MiB tmpfs of its own; with the remote host
//! down, mail is accepted until the disk is full, and then refused with
//! 452 4.3.1 (at the end of DATA, then already at MAIL). The host comes
//! up: everything acknowledged is delivered from the full spool, the
//! spent segment is deleted, space comes back and mail is taken again.
//! No record is damaged.
//!
//! Host: 127.0.0.64 (unique in the suite).

// A panic is a test failure: unwrap and expect are how tests fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use common::manifests::{REMOTE_SENDER, Setup};
use common::sink::{Answer, Sink, saved};
use common::smtp::{Reply, assert_reply};
use common::spool;
use common::{Env, LOCALHOST, wait_for};

const MX: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 64);
const WITHIN: Duration = Duration::from_secs(90);
/// Bodies of about this size: the 24 MiB disk (8 MiB of it the spool's
/// reserve) takes about 150.
const BODY: usize = 100 * 1024;

fn content(marker: &str) -> String {
    let mut text = format!("Subject: {marker}\r\n\r\n");
    let line = format!("{marker} {}\r\n", "x".repeat(70));
    while text.len() < BODY {
        text.push_str(&line);
    }
    text.push_str(&format!("END {marker}\r\n"));
    text
}

/// How many complete copies of each marker the sink holds.
fn arrived(dir: &Path) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for message in saved(dir) {
        if let Some(line) = message.lines().find(|l| l.starts_with("END full-")) {
            *seen.entry(line["END ".len()..].to_string()).or_default() += 1;
        }
    }
    seen
}

/// Send one message; the reply that decided it (the 250 or the refusal).
fn send(env: &Env, marker: &str) -> Reply {
    let mut smtp = env.smtp_from(LOCALHOST);
    let sent = smtp.send_mail(REMOTE_SENDER, &["bob@full.test"], &content(marker));
    smtp.quit();
    sent.last().clone()
}

#[test]
fn a_full_disk_refuses_mail_with_452_4_3_1_keeps_delivering_and_takes_mail_again() {
    let env = Env::start_on_tmpfs(
        Setup::default()
            .relay_from_loopback()
            .limits("{maxMessageSize: 1Mi, maxConnectionsPerIp: 1000, messagesPerMinutePerIp: 10000000}")
            .relay_spec(
                "queue: {retrySchedule: [1s], jitterPercent: 0, lifetime: 1h, delayWarning: 0s}",
            )
            .dns_records(&format!(
                "mx-host=full.test,mx.full.test,10\nhost-record=mx.full.test,{MX}"
            )),
        "24m",
    );

    // The host is down: everything stays in the spool until it is full.
    let mut acked = Vec::new();
    let refusal = loop {
        assert!(
            acked.len() < 1000,
            "1000 messages of 100 KiB fit on a 24 MiB disk?\n{}",
            env.relay.log_text()
        );
        let marker = format!("full-{:04}", acked.len());
        let reply = send(&env, &marker);
        if reply.code == 250 {
            acked.push(marker);
        } else {
            break reply;
        }
    };
    eprintln!(
        "{} messages accepted before the disk was full; then: {refusal}",
        acked.len()
    );
    assert_reply(&refusal, 452, "4.3.1", "the message that did not fit");
    // Refused before the content is sent, as long as the disk stays full.
    let mut smtp = env.smtp_from(LOCALHOST);
    let mail = smtp.command(&format!("MAIL FROM:<{REMOTE_SENDER}>"));
    assert_reply(&mail, 452, "4.3.1", "MAIL while the disk is full");
    smtp.quit();
    assert!(!acked.is_empty(), "nothing fit at all");

    // The host comes up: the full spool delivers everything it holds.
    let sink_root = tempfile::tempdir().unwrap();
    let mail_dir = sink_root.path().join("mx");
    let _mx = Sink::start(MX, &mail_dir, Answer::Accept);
    env.wait_until_spool_is_empty(WITHIN);
    let seen = arrived(&mail_dir);
    let lost: Vec<&String> = acked.iter().filter(|m| !seen.contains_key(*m)).collect();
    assert!(
        lost.is_empty(),
        "acknowledged but never delivered: {lost:?}"
    );
    let duplicates = seen.values().filter(|n| **n > 1).count();
    eprintln!(
        "delivered {} of {} acknowledged; duplicates {duplicates}",
        seen.len(),
        acked.len()
    );

    // Space came back with the delivered messages' segment: mail again.
    let after = wait_for(
        WITHIN,
        || {
            let reply = send(&env, "full-after");
            (reply.code == 250).then_some(reply)
        },
        || {
            format!(
                "mail is still refused after delivery freed the disk\n{}",
                env.relay.log_text()
            )
        },
    );
    assert!(after.queue_id().is_some(), "{after}");
    env.wait_until_spool_is_empty(WITHIN);
    assert!(arrived(&mail_dir).contains_key("full-after"));

    // Nothing on the spool was damaged or set aside.
    let (_, recovery) = spool::read(&env.spool_dir());
    assert_eq!(recovery.skipped_records, 0, "{recovery:?}");
    assert!(!env.spool_dir().join("quarantine").exists());
    let log = env.relay.log_text();
    assert!(log.contains("disk full"), "{log}");
    assert!(log.contains("space is back"), "{log}");
}
