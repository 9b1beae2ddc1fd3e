//! The Relay's limits hold against real sessions: message size (declared
//! and actual), recipients, command and text line lengths, connections
//! per client address and the command timeout. After each, the relay
//! still serves a normal client.

// A panic is a test failure: unwrap and expect are how tests fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::manifests::{ALICE, REMOTE_SENDER, Setup};
use common::smtp::{Smtp, assert_reply};
use common::{Env, client_ip};

/// The limits under test, as the Relay manifest states them.
fn limited() -> Setup {
    Setup::default()
        .limits("{maxMessageSize: 64Ki, maxConnectionsPerIp: 3, timeouts: {command: 2s}}")
}

const SMALL: &str = "Subject: small\r\n\r\nhello\r\n";

/// A message of `kib` KiB of 100-octet lines.
fn big(kib: usize) -> String {
    let line = format!("{}\r\n", "x".repeat(98));
    format!(
        "Subject: big\r\n\r\n{}",
        line.repeat(kib * 1024 / line.len() + 1)
    )
}

/// The session can still carry a normal message.
#[track_caller]
fn assert_still_works(smtp: &mut Smtp, what: &str) {
    let sent = smtp.send_mail(REMOTE_SENDER, &[ALICE], SMALL);
    assert!(
        sent.queue_id().is_some(),
        "{what}: the session no longer works: {sent:?}"
    );
}

/// A fresh session from another address gets its message accepted.
#[track_caller]
fn assert_fresh_session_works(env: &Env, n: u8) {
    let mut smtp = env.smtp_from(client_ip(n));
    assert_still_works(&mut smtp, "a fresh session");
    smtp.quit();
}

#[test]
fn an_oversize_message_gets_552_5_3_4_by_declared_size_and_by_content() {
    let env = Env::start(limited());
    let mut smtp = env.smtp_from(client_ip(21));
    let ehlo = smtp.command("EHLO client.test");
    assert!(
        ehlo.lines.iter().any(|l| l == "SIZE 65536"),
        "SIZE is advertised: {ehlo}"
    );

    let declared = smtp.command(&format!("MAIL FROM:<{REMOTE_SENDER}> SIZE=100000"));
    assert_reply(&declared, 552, "5.3.4", "MAIL with SIZE=100000");

    let sent = smtp.send_mail(REMOTE_SENDER, &[ALICE], &big(70));
    assert_reply(sent.last(), 552, "5.3.4", "70 KiB of content");

    assert_still_works(&mut smtp, "after the oversize message");
    smtp.quit();
    assert_fresh_session_works(&env, 22);
    let sizes: Vec<u64> = env.spool().iter().map(|m| m.envelope.size).collect();
    assert_eq!(sizes.len(), 2, "only the two small messages are queued");
    assert!(sizes.iter().all(|s| *s < 64 * 1024), "{sizes:?}");
}

#[test]
fn the_101st_recipient_gets_452_4_5_3_and_the_first_100_are_kept() {
    let env = Env::start(limited());
    let mut smtp = env.smtp_from(client_ip(23));
    let recipients: Vec<String> = (1..=101)
        .map(|n| format!("alice+{n}@hosted.test"))
        .collect();
    let rcpt: Vec<&str> = recipients.iter().map(String::as_str).collect();
    let sent = smtp.send_mail(REMOTE_SENDER, &rcpt, SMALL);
    for (n, reply) in sent.rcpt.iter().enumerate().take(100) {
        assert_reply(reply, 250, "2.1.5", &format!("recipient {}", n + 1));
    }
    // RFC 5321 §4.5.3.1.10: a temporary failure, the client sends the rest later.
    assert_reply(&sent.rcpt[100], 452, "4.5.3", "recipient 101");
    let id = sent
        .queue_id()
        .unwrap_or_else(|| panic!("the message was not queued: {sent:?}"));
    smtp.quit();
    let queued = env
        .spool()
        .into_iter()
        .find(|m| m.id == id)
        .expect("the queued message");
    assert_eq!(queued.envelope.recipients, recipients[..100]);
    assert_fresh_session_works(&env, 24);
}

#[test]
fn a_command_line_over_512_octets_gets_500_5_5_2_and_the_session_goes_on() {
    let env = Env::start(limited());
    let mut smtp = env.smtp_from(client_ip(25));
    let long = format!("MAIL FROM:<{}@remote.test>", "a".repeat(600));
    assert!(long.len() + 2 > 512);
    assert_reply(
        &smtp.command(&long),
        500,
        "5.5.2",
        "a 640-octet command line",
    );
    assert_still_works(&mut smtp, "after the long command line");
    smtp.quit();
    assert_fresh_session_works(&env, 26);
}

#[test]
fn a_text_line_over_998_octets_gets_554_5_6_0() {
    let env = Env::start(limited());
    let mut smtp = env.smtp_from(client_ip(27));
    let content = format!("Subject: long line\r\n\r\n{}\r\n", "y".repeat(1200));
    let sent = smtp.send_mail(REMOTE_SENDER, &[ALICE], &content);
    assert_reply(sent.last(), 554, "5.6.0", "a 1200-octet text line");
    assert_still_works(&mut smtp, "after the long text line");
    smtp.quit();
    assert_fresh_session_works(&env, 28);
    assert!(
        env.spool()
            .iter()
            .all(|m| !m.body_contains(&"y".repeat(1200)))
    );
}

#[test]
fn a_fourth_connection_from_one_address_gets_421_4_7_0_while_three_work() {
    let env = Env::start(limited());
    let addr = env.addrs().smtp;
    let mut open: Vec<Smtp> = (0..3).map(|_| env.smtp_from(client_ip(30))).collect();

    let mut fourth = Smtp::connect_from(client_ip(30), addr);
    assert_reply(
        &fourth.reply(),
        421,
        "4.7.0",
        "the 4th connection from 127.0.0.30",
    );
    assert_eq!(
        fourth.next_reply(),
        None,
        "the relay closes the 4th connection"
    );

    for (n, smtp) in open.iter_mut().enumerate() {
        assert_still_works(smtp, &format!("connection {}", n + 1));
    }
    for smtp in open {
        smtp.quit();
    }
    assert_fresh_session_works(&env, 31);
    assert_eq!(env.spool().len(), 4);
}

#[test]
fn a_silent_client_gets_421_4_4_2_after_the_command_timeout() {
    let env = Env::start(limited());
    let mut silent = env.smtp_from(client_ip(40));
    // Say nothing more; the relay gives up after the 2 s command timeout.
    let reply = silent.reply();
    assert_reply(&reply, 421, "4.4.2", "a silent client");
    assert_eq!(silent.next_reply(), None, "the relay closes the connection");
    assert_fresh_session_works(&env, 41);
}
