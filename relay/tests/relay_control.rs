//! The relay is never open: without AUTH, mail for a domain it does not
//! host is refused on every listener, whatever form the address takes.

// A panic is a test failure: unwrap and expect are how tests fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::manifests::{ALICE, HOSTED, REMOTE_SENDER, Setup};
use common::peers::{PySession, Tls, smtplib};
use common::smtp::{Reply, assert_reply};
use common::spool::domain_of;
use common::{Env, LOCALHOST};

/// Recipients outside the hosted domain: plainly, and dressed up as
/// hosted ones by the old routing forms.
const OUTSIDE: [&str; 8] = [
    "user@remote.test",
    "user%remote.test@hosted.test",
    "\"user@remote.test\"@hosted.test",
    "@hosted.test:user@remote.test",
    "user@remote.test@hosted.test",
    "remote.test!user",
    "user@remote.test.",
    "user@[127.0.0.9]",
];

/// On the smtp listener: MAIL, the RCPT under test, then DATA anyway.
fn smtp_attempt(env: &Env, rcpt: &str) -> (Reply, Reply) {
    let mut smtp = env.smtp_from(LOCALHOST);
    let mail = smtp.command(&format!("MAIL FROM:<{REMOTE_SENDER}>"));
    assert_reply(&mail, 250, "2.1.0", "MAIL from a remote sender");
    let rcpt_reply = smtp.command(&format!("RCPT TO:<{rcpt}>"));
    let data = smtp.command("DATA");
    if data.code == 354 {
        smtp.send(common::smtp::data_payload(
            "Subject: relayed?\r\n\r\nrelayed\r\n",
        ));
        let end = smtp.reply();
        panic!(
            "DATA was accepted after RCPT TO:<{rcpt}> got {rcpt_reply}; the end of data got {end}"
        );
    }
    smtp.quit();
    (rcpt_reply, data)
}

/// Nothing in the spool is for anybody outside the hosted domain.
#[track_caller]
fn assert_nothing_queued_for_outside(env: &Env) -> usize {
    let messages = env.spool();
    for m in &messages {
        for r in &m.envelope.recipients {
            assert_eq!(
                domain_of(r),
                HOSTED,
                "{} queued for {r}: the relay is open",
                m.id
            );
        }
    }
    messages.len()
}

#[test]
fn unauthenticated_mail_for_outside_is_refused_on_every_listener_and_never_queued() {
    let env = Env::start(Setup::default());

    for rcpt in OUTSIDE {
        let (rcpt_reply, data) = smtp_attempt(&env, rcpt);
        assert_eq!(
            rcpt_reply.code / 100,
            5,
            "smtp: RCPT TO:<{rcpt}> must be refused for good: {rcpt_reply}"
        );
        assert_ne!(data.code, 354, "smtp: DATA after RCPT TO:<{rcpt}>");
    }

    let sessions: Vec<PySession> = [
        (Tls::Starttls, env.addrs().submission),
        (Tls::Ssl, env.addrs().submissions),
    ]
    .into_iter()
    .flat_map(|(tls, addr)| {
        OUTSIDE
            .iter()
            .map(move |rcpt| PySession::new(addr, tls, REMOTE_SENDER, &[rcpt], "relayed\r\n"))
    })
    .collect();
    let outcomes = smtplib(&sessions);
    for (session, out) in sessions.iter().zip(&outcomes) {
        let what = format!("{:?} listener, RCPT TO:<{}>", session.tls, session.to[0]);
        assert_eq!(out.error, None, "{what}: {out:?}");
        // Submission wants AUTH first (RFC 6409 §4.3, RFC 4954 §6).
        assert_reply(out.mail.as_ref().expect("MAIL"), 530, "5.7.0", &what);
        assert!(out.rcpt.iter().all(|r| r.code >= 500), "{what}: {out:?}");
        assert!(out.data.is_none(), "{what}: DATA was sent: {out:?}");
    }

    // The same client may still send to a hosted recipient: the refusals
    // above are about the recipients, and the spool check is not vacuous.
    let mut smtp = env.smtp_from(LOCALHOST);
    let sent = smtp.send_mail(
        REMOTE_SENDER,
        &[ALICE],
        "Subject: hosted\r\n\r\nfor alice\r\n",
    );
    assert!(sent.queue_id().is_some(), "mail for {ALICE}: {sent:?}");
    smtp.quit();
    assert_eq!(assert_nothing_queued_for_outside(&env), 1);
}

#[test]
fn every_address_trick_is_refused_at_rcpt_with_550_5_7_1_on_the_smtp_listener() {
    let env = Env::start(Setup::default());
    let wrong: Vec<String> = OUTSIDE
        .iter()
        .map(|rcpt| (rcpt, smtp_attempt(&env, rcpt).0))
        .filter(|(_, reply)| !reply.is(550, "5.7.1"))
        .map(|(rcpt, reply)| format!("RCPT TO:<{rcpt}> got {reply}"))
        .collect();
    assert_eq!(assert_nothing_queued_for_outside(&env), 0);
    assert!(
        wrong.is_empty(),
        "expected 550 5.7.1 (relay access denied) for every form, but:\n{}",
        wrong.join("\n")
    );
}
