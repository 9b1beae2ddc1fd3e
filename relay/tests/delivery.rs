//! Mail leaves the queue for real peers: a hosted user's message goes over
//! LMTP into Dovecot and is read back over IMAP and POP3; a maildir target
//! is written where Dovecot reads it; a remote domain's mail goes to its
//! preferred MX (smtp-sink on port 25, found through dnsmasq), and to the
//! next one when that host is down.

// A panic is a test failure: unwrap and expect are how tests fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::deliveries::send;
use common::dovecot::{Dovecot, Store};
use common::mailbox::{Protocol, maildir_new};
use common::manifests::{ALICE, REMOTE_SENDER, Setup, maildomain};
use common::sink::{Answer, Sink, saved};
use common::{Env, wait_for};

/// How long a message may take to arrive: generous, never a timing claim.
const ARRIVAL: Duration = Duration::from_secs(60);

#[test]
fn a_hosted_users_message_goes_over_lmtp_to_dovecot_and_reads_back_over_imap_and_pop3() {
    let dovecot = Dovecot::start(&[ALICE, "bob@hosted.test"], Store::Own);
    let env = Env::start(Setup::default().hosted_delivery(&dovecot.lmtp_delivery()));

    let id = send(&env, REMOTE_SENDER, ALICE, "lmtp-marker-1");
    wait_for(
        ARRIVAL,
        || (!maildir_new(&dovecot.new_dir(ALICE)).is_empty()).then_some(()),
        || {
            format!(
                "{id} did not reach Dovecot\n{}\n{}",
                env.relay.log_text(),
                dovecot.log_text()
            )
        },
    );
    env.wait_until_spool_is_empty(ARRIVAL);

    for protocol in [Protocol::Imap, Protocol::Pop3] {
        let inbox = dovecot.read(protocol, ALICE);
        assert_eq!(inbox.len(), 1, "{protocol:?}: {inbox:?}");
        let message = &inbox[0];
        assert!(
            message.contains("\r\nbody of lmtp-marker-1\r\n"),
            "{protocol:?}: {message}"
        );
        assert!(
            message.contains(&format!("Return-Path: <{REMOTE_SENDER}>")),
            "Dovecot records the envelope sender the relay gave: {message}"
        );
        assert!(
            message.contains("Subject: delivery lmtp-marker-1"),
            "{message}"
        );
    }
    assert!(
        dovecot.read(Protocol::Imap, "bob@hosted.test").is_empty(),
        "only alice got mail"
    );
}

/// This test's MX hosts: unique in the suite.
const MX10: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 20);
const MX20: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 21);

#[test]
fn a_remote_domains_mail_goes_to_its_preferred_mx_and_to_the_next_when_that_host_is_down() {
    let sinks = tempfile::tempdir().unwrap();
    let (dir10, dir20) = (sinks.path().join("mx10"), sinks.path().join("mx20"));
    let mut mx10 = Sink::start(MX10, &dir10, Answer::Accept);
    let _mx20 = Sink::start(MX20, &dir20, Answer::Accept);
    let env = Env::start(Setup::default().relay_from_loopback().dns_records(&format!(
        "mx-host=prefer.test,mx10.prefer.test,10\n\
         mx-host=prefer.test,mx20.prefer.test,20\n\
         host-record=mx10.prefer.test,{MX10}\n\
         host-record=mx20.prefer.test,{MX20}"
    )));

    let first = send(&env, REMOTE_SENDER, "bob@prefer.test", "mx-marker-first");
    env.wait_until_spool_is_empty(ARRIVAL);
    let at10 = saved(&dir10);
    assert_eq!(at10.len(), 1, "{at10:?}");
    assert!(
        at10[0].contains("body of mx-marker-first"),
        "{first} is not at the preference-10 host: {at10:?}\n{}",
        env.relay.log_text()
    );
    assert!(
        saved(&dir20).is_empty(),
        "the preference-20 host got mail while 10 was up: {:?}",
        saved(&dir20)
    );

    mx10.stop();
    let second = send(&env, REMOTE_SENDER, "bob@prefer.test", "mx-marker-second");
    env.wait_until_spool_is_empty(ARRIVAL);
    let at20 = saved(&dir20);
    assert_eq!(at20.len(), 1, "{at20:?}");
    assert!(
        at20[0].contains("body of mx-marker-second"),
        "{second} is not at the preference-20 host: {at20:?}\n{}",
        env.relay.log_text()
    );
    assert!(
        at20[0].contains("X-Rcpt-Args: <bob@prefer.test>"),
        "{:?}",
        at20[0]
    );
    assert!(
        !saved(&dir10).iter().any(|m| m.contains("mx-marker-second")),
        "the stopped host cannot have it"
    );
}

#[test]
fn a_maildir_target_gets_the_message_in_new_and_dovecot_serves_it_over_imap() {
    const CAROL: &str = "carol@maildir.test";
    let dovecot = Dovecot::start(&[CAROL], Store::RelayMaildirs);
    let target = format!("{{maildir: {{path: {}}}}}", dovecot.maildirs().display());
    let env = Env::start(Setup::default().domain(&maildomain("maildir.test", &["carol"], &target)));

    let id = send(&env, REMOTE_SENDER, CAROL, "maildir-marker");
    let new_dir = dovecot.new_dir(CAROL);
    let files = wait_for(
        ARRIVAL,
        || Some(maildir_new(&new_dir)).filter(|m| !m.is_empty()),
        || {
            format!(
                "{id} is not in {}\n{}",
                new_dir.display(),
                env.relay.log_text()
            )
        },
    );
    env.wait_until_spool_is_empty(ARRIVAL);
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].contains("body of maildir-marker"), "{}", files[0]);

    // The relay writes as root; Dovecot reads as its mail user.
    dovecot.adopt_relay_maildirs();
    let inbox = dovecot.read(Protocol::Imap, CAROL);
    assert_eq!(inbox.len(), 1, "{inbox:?}\n{}", dovecot.log_text());
    assert!(
        inbox[0].contains("\r\nbody of maildir-marker\r\n"),
        "{}",
        inbox[0]
    );
    assert!(
        inbox[0].contains("Subject: delivery maildir-marker"),
        "{}",
        inbox[0]
    );
}
