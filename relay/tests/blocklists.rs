//! Blocklists refuse at MAIL FROM with the configured reply: listed client
//! networks (IPv4 and IPv6), DNSBL listings served by a real dnsmasq,
//! HELO names, sender domains (exact and wildcard) and sender addresses;
//! a TempFail list and an unanswered DNSBL give 4xx, never a pass.

// A panic is a test failure: unwrap and expect are how tests fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, Ipv6Addr};

use common::manifests::{ALICE, REMOTE_SENDER, Setup, blocklist};
use common::smtp::{Reply, Smtp, assert_reply};
use common::{Env, LOCALHOST, client_ip};

const CLIENTS_MESSAGE: &str = "Blocked by the e2e test policy";
const NAMES_MESSAGE: &str = "Name or sender blocked by the e2e test policy";
const LATER_MESSAGE: &str = "Not now; try again later";
const DNSBL_MESSAGE: &str = "Listed at bl.test";

fn clients() -> String {
    blocklist(
        "clients",
        &format!(
            "action: Reject\nmessage: \"{CLIENTS_MESSAGE}\"\nips:\n  - value: 127.0.0.4/30\n  - value: \"::/127\""
        ),
    )
}

fn names() -> String {
    blocklist(
        "names",
        &format!(
            "action: Reject\nmessage: \"{NAMES_MESSAGE}\"\n\
             domains:\n  - value: bad-helo.test\n  - value: exact.test\n  - value: \"*.spam.test\"\n\
             senders:\n  - value: bad@remote.test"
        ),
    )
}

fn later() -> String {
    blocklist(
        "later",
        &format!("action: TempFail\nmessage: \"{LATER_MESSAGE}\"\nips:\n  - value: 127.0.0.8"),
    )
}

fn dnsbl() -> String {
    blocklist(
        "dnsbl",
        &format!(
            "action: Reject\ndnsbl:\n  - zone: bl.test\n    returnCodes: [127.0.0.2]\n    message: \"{DNSBL_MESSAGE}\""
        ),
    )
}

/// The lists of entries. (127.0.0.6, which the DNSBL test lists in
/// bl.test, is inside 127.0.0.4/30: that test has a relay of its own.)
fn all_lists() -> Setup {
    Setup::default()
        .blocklist(&clients())
        .blocklist(&names())
        .blocklist(&later())
}

/// What a client got at MAIL, and the queue id if it went on to send.
#[derive(Debug)]
struct Attempt {
    mail: Reply,
    queued: Option<String>,
}

/// Connect from `source`, greet with `helo`, send from `sender` to alice.
fn attempt(addr: std::net::SocketAddr, source: IpAddr, helo: &str, sender: &str) -> Attempt {
    let mut smtp = Smtp::connect_from(source, addr);
    assert_eq!(smtp.reply().code, 220);
    let ehlo = smtp.command(&format!("EHLO {helo}"));
    assert_eq!(ehlo.code, 250, "EHLO {helo}: {ehlo}");
    let sent = smtp.send_mail(sender, &[ALICE], "Subject: blocklists\r\n\r\nhello\r\n");
    smtp.quit();
    Attempt {
        queued: sent.queue_id(),
        mail: sent.mail,
    }
}

#[track_caller]
fn assert_refused(a: &Attempt, code: u16, enhanced: &str, text: &str, what: &str) {
    assert_reply(&a.mail, code, enhanced, what);
    assert_eq!(a.mail.text(), text, "{what}: the Blocklist's message");
    assert_eq!(a.queued, None, "{what}");
}

#[track_caller]
fn assert_passed(a: &Attempt, what: &str) {
    assert_reply(&a.mail, 250, "2.1.0", what);
    assert!(a.queued.is_some(), "{what}: not queued: {a:?}");
}

#[test]
fn a_client_in_a_listed_ipv4_network_gets_the_blocklist_reply_at_mail() {
    let env = Env::start(all_lists());
    let smtp = env.addrs().smtp;
    let listed = attempt(smtp, client_ip(5), "client.test", REMOTE_SENDER);
    assert_refused(
        &listed,
        550,
        "5.7.1",
        CLIENTS_MESSAGE,
        "127.0.0.5 in 127.0.0.4/30",
    );
    assert_passed(
        &attempt(smtp, client_ip(9), "client.test", REMOTE_SENDER),
        "127.0.0.9",
    );
    assert_eq!(env.spool().len(), 1);
}

#[test]
fn a_listed_ipv6_client_gets_the_blocklist_reply_at_mail() {
    let env = Env::start(all_lists().smtp_on_ipv6());
    let smtp = env.addrs().smtp;
    assert!(smtp.is_ipv6(), "{smtp}");
    let listed = attempt(
        smtp,
        IpAddr::V6(Ipv6Addr::LOCALHOST),
        "client.test",
        REMOTE_SENDER,
    );
    assert_refused(&listed, 550, "5.7.1", CLIENTS_MESSAGE, "::1");
    assert!(env.spool().is_empty());
}

#[test]
fn a_client_listed_by_a_dnsbl_zone_is_refused_and_an_unlisted_one_passes() {
    let setup = Setup::default()
        .blocklist(&dnsbl())
        .dns_records("address=/6.0.0.127.bl.test/127.0.0.2");
    let env = Env::start(setup);
    let smtp = env.addrs().smtp;
    let listed = attempt(smtp, client_ip(6), "client.test", REMOTE_SENDER);
    assert_refused(&listed, 550, "5.7.1", DNSBL_MESSAGE, "127.0.0.6 in bl.test");
    assert_passed(
        &attempt(smtp, client_ip(10), "client.test", REMOTE_SENDER),
        "127.0.0.10",
    );
}

#[test]
fn a_listed_helo_name_is_refused_at_mail() {
    let env = Env::start(all_lists());
    let smtp = env.addrs().smtp;
    let listed = attempt(smtp, LOCALHOST, "bad-helo.test", REMOTE_SENDER);
    assert_refused(&listed, 550, "5.7.1", NAMES_MESSAGE, "HELO bad-helo.test");
    assert_passed(
        &attempt(smtp, LOCALHOST, "good-helo.test", REMOTE_SENDER),
        "HELO good-helo.test",
    );
}

#[test]
fn sender_domains_are_refused_when_listed_exactly_or_under_a_wildcard() {
    let env = Env::start(all_lists());
    let smtp = env.addrs().smtp;
    // (sender, refused): an exact entry covers only itself; `*.spam.test`
    // covers the names under spam.test but not spam.test.
    let table = [
        ("user@exact.test", true),
        ("user@EXACT.test", true),
        ("user@sub.exact.test", false),
        ("user@x.spam.test", true),
        ("user@a.b.spam.test", true),
        ("user@spam.test", false),
    ];
    for (sender, refused) in table {
        let a = attempt(smtp, LOCALHOST, "client.test", sender);
        if refused {
            assert_refused(&a, 550, "5.7.1", NAMES_MESSAGE, sender);
        } else {
            assert_passed(&a, sender);
        }
    }
}

#[test]
fn a_listed_sender_address_is_refused_and_its_neighbours_are_not() {
    let env = Env::start(all_lists());
    let smtp = env.addrs().smtp;
    for (sender, refused) in [
        ("bad@remote.test", true),
        ("Bad@Remote.test", true),
        ("good@remote.test", false),
        ("bad2@remote.test", false),
    ] {
        let a = attempt(smtp, LOCALHOST, "client.test", sender);
        if refused {
            assert_refused(&a, 550, "5.7.1", NAMES_MESSAGE, sender);
        } else {
            assert_passed(&a, sender);
        }
    }
    let senders: Vec<String> = env.spool().into_iter().map(|m| m.envelope.sender).collect();
    assert_eq!(senders, ["good@remote.test", "bad2@remote.test"]);
}

#[test]
fn a_tempfail_list_gives_450_4_7_1() {
    let env = Env::start(all_lists());
    let a = attempt(env.addrs().smtp, client_ip(8), "client.test", REMOTE_SENDER);
    assert_refused(
        &a,
        450,
        "4.7.1",
        LATER_MESSAGE,
        "127.0.0.8 on the TempFail list",
    );
    assert!(env.spool().is_empty());
}

#[test]
fn a_dnsbl_that_does_not_answer_gives_451_4_7_1_not_a_pass() {
    // The relay's only DNS server is a socket that never answers.
    let env = Env::start(
        Setup::default()
            .blocklist(&dnsbl())
            .silent_dns()
            .dns_timeout("1s"),
    );
    let a = attempt(env.addrs().smtp, client_ip(6), "client.test", REMOTE_SENDER);
    assert_reply(&a.mail, 451, "4.7.1", "DNSBL lookup timed out");
    assert_eq!(a.queued, None);
    assert!(env.spool().is_empty());
}
