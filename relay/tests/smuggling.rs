//! SMTP smuggling (CVE-2023-51764 and kin): a second message hidden in the
//! content behind a fake end of data is never queued; and STARTTLS command
//! injection (CVE-2011-0411): plaintext pipelined behind STARTTLS is
//! discarded.

// A panic is a test failure: unwrap and expect are how tests fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::manifests::{ALICE, REMOTE_SENDER, Setup};
use common::peers::python;
use common::smtp::{Reply, assert_reply};
use common::{Env, LOCALHOST};
use serde::Deserialize;

const EVIL: &str = "evil@remote.test";

/// Fake ends of data that lenient servers took for the real one.
const FAKE_ENDS: [(&str, &str); 4] = [
    ("<LF>.<LF>", "\n.\n"),
    ("<CR>.<CR>", "\r.\r"),
    ("<CR><LF>.<LF>", "\r\n.\n"),
    ("<LF>.<CR><LF>", "\n.\r\n"),
];

/// Send a message whose content hides a second transaction behind
/// `fake_end`, then the real end of data and QUIT, all in one write.
/// Returns every reply after the 354.
fn smuggle(env: &Env, fake_end: &str) -> Vec<Reply> {
    let mut smtp = env.smtp_from(LOCALHOST);
    assert_reply(
        &smtp.command(&format!("MAIL FROM:<{REMOTE_SENDER}>")),
        250,
        "2.1.0",
        "MAIL",
    );
    assert_reply(
        &smtp.command(&format!("RCPT TO:<{ALICE}>")),
        250,
        "2.1.5",
        "RCPT",
    );
    assert_eq!(smtp.command("DATA").code, 354);
    let content = format!(
        "Subject: smuggling\r\n\r\nhello{fake_end}\
         MAIL FROM:<{EVIL}>\r\nRCPT TO:<{ALICE}>\r\nDATA\r\nsmuggled\r\n\
         \r\n.\r\nQUIT\r\n"
    );
    smtp.send(content);
    smtp.replies_until_close()
}

#[test]
fn a_message_smuggled_behind_a_fake_end_of_data_is_never_queued() {
    let env = Env::start(Setup::default());

    // The clean form of the same session queues exactly one message.
    let clean = smuggle(&env, "\r\n");
    assert_eq!(
        clean.len(),
        2,
        "one reply to the end of data, one to QUIT: {clean:?}"
    );
    assert!(
        clean[0].queue_id().is_some(),
        "the clean message: {}",
        clean[0]
    );
    let mut queued = env.spool().len();
    assert_eq!(queued, 1);

    for (name, fake_end) in FAKE_ENDS {
        let replies = smuggle(&env, fake_end);
        // Any reply to the smuggled MAIL, RCPT or DATA would show up here.
        assert_eq!(
            replies.len(),
            2,
            "{name}: expected one reply to the real end of data and one to QUIT, got {replies:?}"
        );
        assert_eq!(replies[1].code, 221, "{name}: {}", replies[1]);
        let now = env.spool().len();
        assert!(
            now <= queued + 1,
            "{name}: {} messages queued by one attempt",
            now - queued
        );
        queued = now;
        println!("{name}: the end of data got {}", replies[0]);
    }

    let messages = env.spool();
    let evil: Vec<&str> = messages
        .iter()
        .filter(|m| m.envelope.sender.eq_ignore_ascii_case(EVIL))
        .map(|m| m.id.as_str())
        .collect();
    assert!(
        evil.is_empty(),
        "smuggled messages from {EVIL} were queued: {evil:?}"
    );
}

/// What `starttls_injection.py` saw.
#[derive(Debug, Deserialize)]
struct Injection {
    #[serde(deserialize_with = "common::peers::reply", default)]
    starttls: Option<Reply>,
    #[serde(deserialize_with = "common::peers::reply", default)]
    rcpt: Option<Reply>,
    #[serde(deserialize_with = "common::peers::reply", default)]
    quit: Option<Reply>,
    error: Option<String>,
}

const STARTTLS_INJECTION: &str = include_str!("common/starttls_injection.py");

#[test]
fn plaintext_pipelined_behind_starttls_is_discarded() {
    let env = Env::start(Setup::default());
    for (name, addr) in [
        ("smtp", env.addrs().smtp),
        ("submission", env.addrs().submission),
    ] {
        let out = python(
            STARTTLS_INJECTION,
            &[&addr.ip().to_string(), &addr.port().to_string()],
        );
        let seen: Injection = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{out:?}: {e}"));
        assert_eq!(seen.error, None, "{name}: {seen:?}");
        assert_reply(
            seen.starttls.as_ref().expect("STARTTLS"),
            220,
            "2.0.0",
            name,
        );
        // The MAIL sent in plain text was dropped with the rest of the
        // plaintext session, so RCPT comes before any MAIL.
        let rcpt = seen.rcpt.as_ref().expect("RCPT");
        assert_eq!(
            rcpt.code, 503,
            "{name}: RCPT after the injected MAIL: {rcpt}"
        );
        assert_eq!(
            seen.quit.as_ref().map(|r| r.code),
            Some(221),
            "{name}: {seen:?}"
        );
    }
    assert!(env.spool().is_empty());
}
