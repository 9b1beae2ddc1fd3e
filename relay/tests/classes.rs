//! Bounce classification end to end: a remote MX answers five recipients
//! of one message with five real-world refusals, and the relay's
//! `mailrelay_deliveries_total` counts each under its class (and its
//! log says so per recipient).
//!
//! Host: 127.0.0.95 (unique in the suite, see common/sink.rs).

// A panic is a test failure: unwrap and expect are how tests fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::manifests::{REMOTE_SENDER, Setup};
use common::remote::{Remote, Step};
use common::{Env, LOCALHOST, http_get, wait_for};

const MX: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 95);
const WAIT: Duration = Duration::from_secs(60);

/// Local part, the MX's reply to its RCPT, and the class it must get.
const CASES: &[(&str, &str, &str)] = &[
    (
        "nobody",
        "550 5.1.1 <nobody@classes.test>: Recipient address rejected: User unknown in local recipient table",
        "InvalidRecipient",
    ),
    (
        "full",
        "552 5.2.2 <full@classes.test> Quota exceeded (mailbox for user is full)",
        "MailboxFull",
    ),
    (
        "busy",
        "450 4.2.1 The user you are trying to contact is receiving mail at a rate that prevents additional messages from being delivered.",
        "Throttled",
    ),
    (
        "listed",
        "554 5.7.1 Service unavailable; Client host [127.0.0.1] blocked using zen.spamhaus.org",
        "SpamBlock",
    ),
    (
        "dmarc",
        "550 5.7.26 Unauthenticated email from relay.test is not accepted due to domain's DMARC policy.",
        "AuthenticationFailure",
    ),
];

const ANSWERS: &[(&str, &str)] = &[
    (CASES[0].0, CASES[0].1),
    (CASES[1].0, CASES[1].1),
    (CASES[2].0, CASES[2].1),
    (CASES[3].0, CASES[3].1),
    (CASES[4].0, CASES[4].1),
];

fn deliveries(env: &Env) -> Vec<String> {
    http_get(env.addrs().http, "/metrics")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("mailrelay_deliveries_total{"))
        .map(str::to_string)
        .collect()
}

#[test]
fn five_refusals_are_counted_under_five_classes() {
    let _mx = Remote::start(MX, &[Step::Answers(ANSWERS)]);
    let env = Env::start(
        Setup::default()
            .relay_from_loopback()
            .relay_spec("queue: {retrySchedule: [1h], jitterPercent: 0, lifetime: 1d}")
            .dns_records(&format!(
                "mx-host=classes.test,mx.classes.test,10\nhost-record=mx.classes.test,{MX}"
            )),
    );
    let rcpts: Vec<String> = CASES
        .iter()
        .map(|(local, _, _)| format!("{local}@classes.test"))
        .collect();
    let rcpts: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    let mut smtp = env.smtp_from(LOCALHOST);
    let sent = smtp.send_mail(REMOTE_SENDER, &rcpts, "Subject: classes\r\n\r\nhello\r\n");
    smtp.quit();
    assert!(sent.queue_id().is_some(), "not queued: {sent:?}");

    let want: Vec<String> = CASES
        .iter()
        .map(|(_, reply, class)| {
            let result = if reply.starts_with('4') {
                "deferred"
            } else {
                "bounced"
            };
            format!(
                "mailrelay_deliveries_total{{route=\"mx\",result=\"{result}\",class=\"{class}\"}} 1"
            )
        })
        .collect();
    wait_for(
        WAIT,
        || {
            let lines = deliveries(&env);
            want.iter().all(|w| lines.contains(w)).then_some(())
        },
        || {
            format!(
                "want {want:#?}\ngot {:#?}\n{}",
                deliveries(&env),
                env.relay.log_text()
            )
        },
    );
    let log = env.relay.log_text();
    for (local, _, class) in CASES {
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("recipient={local}@classes.test"))
                    && l.contains(&format!("class=\"{class}\""))),
            "no log line gives {local} the class {class}:\n{log}"
        );
    }
}
