//! Real clients deliver into the spool: swaks, Python's smtplib and
//! Postfix's smtp-source, over plain SMTP, STARTTLS and implicit TLS, with
//! AUTH only once TLS is up. The relay's certificate is self-signed and
//! the clients do not verify it.

// A panic is a test failure: unwrap and expect are how tests fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;

use base64::Engine as _;
use common::manifests::{ALICE, PASSWORD, REMOTE_SENDER, Setup};
use common::peers::{PySession, Tls, smtp_source, smtplib, swaks};
use common::smtp::assert_reply;
use common::spool::Queued;
use common::{Env, LOCALHOST};

/// A remote recipient: only an authenticated client may relay to it.
const REMOTE_RCPT: &str = "bob@remote.test";

/// The queued message with this id, which must hold `marker`.
#[track_caller]
fn queued(env: &Env, id: &str, marker: &str) -> Queued {
    let messages = env.spool();
    let found = messages
        .iter()
        .find(|m| m.id == id)
        .unwrap_or_else(|| {
            panic!(
                "{id} was acknowledged but is not in the spool ({} messages)",
                messages.len()
            )
        })
        .clone();
    assert!(
        found.body_contains(marker),
        "{id} lacks its marker {marker}:\n{}",
        found.body_text()
    );
    found
}

/// One way in: the listener and its TLS, the SASL mechanism (`None` on
/// the smtp listener, which has no AUTH) and the envelope.
#[derive(Clone)]
struct Case {
    name: &'static str,
    listener: fn(&Env) -> SocketAddr,
    tls: Tls,
    auth: Option<&'static str>,
    from: &'static str,
    to: &'static str,
}

fn cases() -> [Case; 3] {
    [
        Case {
            name: "plain SMTP to a hosted recipient",
            listener: |e| e.addrs().smtp,
            tls: Tls::Plain,
            auth: None,
            from: REMOTE_SENDER,
            to: ALICE,
        },
        Case {
            name: "STARTTLS on submission",
            listener: |e| e.addrs().submission,
            tls: Tls::Starttls,
            auth: Some("PLAIN"),
            from: ALICE,
            to: REMOTE_RCPT,
        },
        Case {
            name: "implicit TLS on submissions",
            listener: |e| e.addrs().submissions,
            tls: Tls::Ssl,
            auth: Some("LOGIN"),
            from: ALICE,
            to: REMOTE_RCPT,
        },
    ]
}

/// The other mechanism, so that swaks and smtplib each use both.
fn other_mechanism(auth: Option<&'static str>) -> Option<&'static str> {
    auth.map(|m| if m == "PLAIN" { "LOGIN" } else { "PLAIN" })
}

/// The envelope says how the message came: TLS and AUTH on submission.
#[track_caller]
fn assert_envelope(m: &Queued, case: &Case) {
    assert_eq!(m.envelope.sender, case.from, "{}", case.name);
    assert_eq!(m.envelope.recipients, [case.to], "{}", case.name);
    assert_eq!(m.envelope.tls, case.tls != Tls::Plain, "{}: TLS", case.name);
    assert_eq!(
        m.envelope.auth.as_deref(),
        case.auth.map(|_| ALICE),
        "{}: AUTH",
        case.name
    );
}

#[test]
fn swaks_delivers_into_the_spool_over_plain_smtp_starttls_and_implicit_tls() {
    let env = Env::start(Setup::default());
    for (i, case) in cases().iter().enumerate() {
        let marker = format!("swaks-marker-{i}");
        let mut args = vec!["--from", case.from, "--to", case.to, "--body", &marker];
        match case.tls {
            Tls::Plain => {}
            Tls::Starttls => args.push("--tls"),
            Tls::Ssl => args.push("--tls-on-connect"),
        }
        if let Some(mech) = case.auth {
            args.extend([
                "--auth",
                mech,
                "--auth-user",
                ALICE,
                "--auth-password",
                PASSWORD,
            ]);
        }
        let run = swaks((case.listener)(&env), &args);
        assert!(run.success, "swaks, {}:\n{}", case.name, run.output);
        if case.auth.is_some() {
            assert!(
                run.reply_to("AUTH").is_some(),
                "swaks used AUTH:\n{}",
                run.output
            );
            let auth = run.reply_before("MAIL FROM").expect("the outcome of AUTH");
            assert_reply(auth, 235, "2.7.0", case.name);
        }
        let id = run
            .queue_id()
            .unwrap_or_else(|| panic!("swaks, {}: no queue id:\n{}", case.name, run.output));
        assert_envelope(&queued(&env, &id, &marker), case);
    }
    assert_eq!(env.spool().len(), 3);
}

#[test]
fn smtplib_delivers_into_the_spool_over_plain_smtp_starttls_and_implicit_tls() {
    let env = Env::start(Setup::default());
    let cases: Vec<Case> = cases()
        .into_iter()
        .map(|c| Case {
            auth: other_mechanism(c.auth),
            ..c
        })
        .collect();
    let sessions: Vec<PySession> = cases
        .iter()
        .enumerate()
        .map(|(i, case)| {
            let body = format!("Subject: smtplib\r\n\r\nsmtplib-marker-{i}\r\n");
            let s = PySession::new(
                (case.listener)(&env),
                case.tls,
                case.from,
                &[case.to],
                &body,
            );
            match case.auth {
                Some(m) => s.auth(m),
                None => s,
            }
        })
        .collect();
    let outcomes = smtplib(&sessions);
    for (i, (case, out)) in cases.iter().zip(&outcomes).enumerate() {
        assert_eq!(out.error, None, "smtplib, {}: {out:?}", case.name);
        if let Some(auth) = &out.auth {
            assert_reply(auth, 235, "2.7.0", case.name);
        }
        let id = out
            .queue_id()
            .unwrap_or_else(|| panic!("smtplib, {}: not queued: {out:?}", case.name));
        assert_envelope(&queued(&env, &id, &format!("smtplib-marker-{i}")), case);
    }
}

#[test]
fn auth_is_neither_offered_nor_accepted_before_tls_and_succeeds_after_it() {
    let env = Env::start(Setup::default());
    let plain = base64::engine::general_purpose::STANDARD.encode(format!("\0{ALICE}\0{PASSWORD}"));
    let mut good = PySession::new(
        env.addrs().submission,
        Tls::Starttls,
        ALICE,
        &[REMOTE_RCPT],
        "auth-ok\r\n",
    )
    .auth("PLAIN");
    good.auth_before_tls = vec![format!("PLAIN {plain}"), "LOGIN".to_string()];
    let mut wrong = PySession::new(
        env.addrs().submission,
        Tls::Starttls,
        ALICE,
        &[REMOTE_RCPT],
        "auth-bad\r\n",
    )
    .auth("PLAIN");
    wrong.password = "not-the-password".into();
    let outcomes = smtplib(&[good, wrong]);
    let (good, wrong) = (&outcomes[0], &outcomes[1]);

    assert!(
        good.features.iter().any(|f| f == "starttls"),
        "STARTTLS is offered: {good:?}"
    );
    assert!(
        !good.features.iter().any(|f| f == "auth"),
        "AUTH is offered before TLS: {good:?}"
    );
    assert_eq!(good.auth_before_tls.len(), 2);
    for reply in &good.auth_before_tls {
        assert_reply(reply, 538, "5.7.11", "AUTH before TLS");
    }
    assert!(
        good.features_tls.iter().any(|f| f == "auth"),
        "AUTH is offered after TLS: {good:?}"
    );
    assert_reply(
        good.auth.as_ref().expect("AUTH after TLS"),
        235,
        "2.7.0",
        "AUTH PLAIN after TLS",
    );
    assert!(
        good.queue_id().is_some(),
        "the authenticated client relays: {good:?}"
    );

    assert_reply(
        wrong.auth.as_ref().expect("AUTH"),
        535,
        "5.7.8",
        "a wrong password",
    );
    assert_reply(
        wrong.mail.as_ref().expect("MAIL"),
        530,
        "5.7.0",
        "MAIL after a failed AUTH",
    );
    let spooled: Vec<_> = env.spool().iter().map(|m| m.body_text()).collect();
    assert_eq!(spooled.len(), 1, "only the authenticated message is queued");
    assert!(spooled[0].contains("auth-ok"));
}

#[test]
fn smtp_source_pushes_a_thousand_messages_over_twenty_sessions_and_all_are_spooled() {
    let env = Env::start(Setup::default());
    let out = smtp_source(
        env.addrs().smtp,
        &[
            "-s",
            "20",
            "-m",
            "1000",
            "-l",
            "1024",
            "-f",
            REMOTE_SENDER,
            "-t",
            ALICE,
        ],
    );
    assert!(
        out.status.success(),
        "smtp-source failed ({}):\n{}{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        env.relay.log_text()
    );
    let messages = env.spool();
    assert_eq!(messages.len(), 1000, "messages in the spool");
    assert!(
        messages
            .iter()
            .all(|m| m.envelope.sender == REMOTE_SENDER && m.envelope.recipients == [ALICE]),
        "every message is smtp-source's"
    );
    assert!(messages.iter().all(|m| m.envelope.client_ip == LOCALHOST));
}
