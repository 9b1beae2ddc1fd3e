//! The relay's side of the fleet's aggregate reports, end to end: two
//! relays of one Relay with reports on and a hand-off secret. Relay A
//! delivers mail to an MX (smtp-sink, no STARTTLS: TLS-RPT rows) and takes
//! inbound mail from a sender domain with a DMARC record (DMARC rows); the
//! signed internal API serves the counts and refuses unsigned and wrongly
//! signed requests; on SIGTERM A hands its counts to B with its queue and
//! deletes its own; a report submitted on the internal API is delivered
//! DKIM-signed, with the relay's `Received:`.
//!
//! Hosts: 127.0.0.130 (the MX), 127.0.0.132 (the inbound client).

// A panic is a test failure: unwrap and expect are how tests fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use base64::Engine as _;
use common::dns::Dnsmasq;
use common::manifests::{ALICE, HOSTNAME};
use common::process::free_ports;
use common::reports::{
    Hosts, REMOTE, REPORTS_DOMAIN, SECRET, SENDER_DOMAIN, Signed, aggregates, counts, exchange,
    now, period_files, request, setup, start,
};
use common::sink::{Answer, Sink, saved};
use common::smtp::Smtp;
use common::{LOCALHOST, wait_for};
use mailrelay_crds::reports::{
    PodStatus, REPORTS_PATH, SIGNATURE_HEADER, STATUS_PATH, SUBMIT_PATH, Submission, Submitted,
    internal_key,
};
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(90);
const MX: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 130);
const INBOUND_CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 132));
const HOSTS: Hosts = Hosts {
    mx: MX,
    client: INBOUND_CLIENT,
    https_rua: None,
};
const PERIOD: i64 = 3600;
const MESSAGES: usize = 3;

#[test]
fn counts_are_served_signed_handed_off_on_drain_and_reports_are_sent_signed() {
    let root = tempfile::Builder::new()
        .prefix("mailrelay-reports-")
        .tempdir()
        .unwrap();
    std::fs::write(root.path().join("secret"), format!("{SECRET}\n")).unwrap();
    let setup = setup(HOSTS, "1h", "");
    let dns = Dnsmasq::start(root.path(), &setup.dns_records);
    let key = internal_key(SECRET.as_bytes());
    let ports = free_ports(&[LOCALHOST, LOCALHOST]);
    let (at_a, at_b) = (
        SocketAddr::new(LOCALHOST, ports[0]),
        SocketAddr::new(LOCALHOST, ports[1]),
    );
    let mut a = start(root.path(), "a", &setup, dns.addr, at_a, &[at_b]);
    let b = start(root.path(), "b", &setup, dns.addr, at_b, &[]);
    let sink_dir = root.path().join("sink");
    let _sink = Sink::start(MX, &sink_dir, Answer::Accept);
    let began = now();

    // Outbound: TLS-RPT rows for tlsrpt.test (smtp-sink offers no STARTTLS).
    for n in 0..MESSAGES {
        let mut smtp = Smtp::hello(LOCALHOST, a.addrs.smtp);
        let sent = smtp.send_mail(
            "sender@hosted.test",
            &[&format!("user@{REMOTE}")],
            &format!("Subject: outbound {n}\r\n\r\nbody {n}\r\n"),
        );
        smtp.quit();
        assert!(sent.queue_id().is_some(), "{sent:?}");
    }
    // Inbound: DMARC rows for dmarc-sender.test (SPF passes, aligned).
    for n in 0..2 {
        let mut smtp = Smtp::hello(INBOUND_CLIENT, a.addrs.smtp);
        let sent = smtp.send_mail(
            &format!("bounce@{SENDER_DOMAIN}"),
            &[ALICE],
            &format!("From: <news@{SENDER_DOMAIN}>\r\nTo: <{ALICE}>\r\nSubject: inbound {n}\r\n\r\nhello\r\n"),
        );
        smtp.quit();
        assert!(sent.queue_id().is_some(), "{sent:?}\n{}", a.log_text());
    }
    wait_for(
        WITHIN,
        || (saved(&sink_dir).len() >= MESSAGES).then_some(()),
        || {
            format!(
                "the sink has {} messages\n{}",
                saved(&sink_dir).len(),
                a.log_text()
            )
        },
    );

    // The signed API serves the counts (at once: from memory). Every
    // read covers each period from `began` to now, merged, so counts that
    // straddle an hour boundary mid-test still add up.
    let (ok, clear, _) = wait_for(
        WITHIN,
        || {
            let c = counts(&aggregates(a.addrs.http, &key, began, PERIOD), MX);
            (c.1 >= 1 && c.2 == 2).then_some(c)
        },
        || {
            format!(
                "{:#?}\n{}",
                aggregates(a.addrs.http, &key, began, PERIOD),
                a.log_text()
            )
        },
    );
    assert_eq!(ok, 0, "no TLS offered: no session can have succeeded");
    assert!(
        clear as usize <= MESSAGES,
        "a session counts once, not per message: {clear}"
    );
    let at_a = aggregates(a.addrs.http, &key, began, PERIOD);
    let row = at_a
        .dmarc
        .iter()
        .find(|r| r.header_from == SENDER_DOMAIN)
        .unwrap();
    assert_eq!(row.source_ip, INBOUND_CLIENT);
    assert_eq!(
        (
            row.policy.p.as_str(),
            row.spf.result.as_str(),
            row.spf.scope.as_str()
        ),
        ("none", "pass", "mfrom")
    );
    assert!(row.spf_aligned);

    // Unsigned, wrongly signed and stale requests are refused with the reason.
    let pq = format!("{REPORTS_PATH}?start={}", began - began.rem_euclid(PERIOD));
    let (status, body) = request(a.addrs.http, Signed::Not, "GET", &pq, b"");
    assert_eq!(status, 401, "{body}");
    assert!(body.contains(SIGNATURE_HEADER), "{body}");
    let wrong = internal_key(b"not-the-relay-secret-at-all-0000");
    let (status, body) = request(a.addrs.http, Signed::With(&wrong), "GET", &pq, b"");
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("does not match"), "{body}");
    let (status, body) = request(
        a.addrs.http,
        Signed::At(&key, now() - 1000),
        "GET",
        &pq,
        b"",
    );
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("300 s"), "{body}");
    // A body where none belongs is refused, signed or not.
    let (status, body) = request(a.addrs.http, Signed::With(&key), "GET", &pq, b"x");
    assert_eq!(status, 400, "{body}");
    // No signature and a large body announced, none sent: the answer
    // comes from the head alone (the read times out if the relay waits
    // for the body).
    let (status, body) = exchange(
        a.addrs.http,
        Signed::Not,
        "POST",
        SUBMIT_PATH,
        20 << 20,
        b"",
    );
    assert_eq!(status, 401, "{body}");
    let (status, body) = request(a.addrs.http, Signed::With(&key), "GET", STATUS_PATH, b"");
    assert_eq!(status, 200, "{body}");
    let pod: PodStatus = serde_json::from_str(&body).unwrap();
    assert!(pod.webhooks.is_empty(), "{pod:?}");

    // A report submitted on the API leaves signed by reports.test.
    let report = format!(
        "From: <reports@{REPORTS_DOMAIN}>\r\nTo: <agg@{REMOTE}>\r\nSubject: Report Domain: {REMOTE}\r\n\
         Message-ID: <report-1@{REPORTS_DOMAIN}>\r\n\r\nthe report\r\n"
    );
    let submission = |message: &[u8], from: &str| {
        serde_json::to_vec(&Submission {
            from: from.into(),
            to: vec![format!("agg@{REMOTE}")],
            message: base64::engine::general_purpose::STANDARD.encode(message),
        })
        .unwrap()
    };
    let (status, body) = request(
        a.addrs.http,
        Signed::With(&key),
        "POST",
        SUBMIT_PATH,
        &submission(report.as_bytes(), &format!("reports@{REPORTS_DOMAIN}")),
    );
    assert_eq!(status, 200, "{body}\n{}", a.log_text());
    let queued: Submitted = serde_json::from_str(&body).unwrap();
    // The same body again (a replay, or a retry after a lost answer): the
    // same queue id, nothing queued twice.
    let (status, body) = request(
        a.addrs.http,
        Signed::With(&key),
        "POST",
        SUBMIT_PATH,
        &submission(report.as_bytes(), &format!("reports@{REPORTS_DOMAIN}")),
    );
    assert_eq!(status, 200, "{body}");
    let again: Submitted = serde_json::from_str(&body).unwrap();
    assert_eq!(again, queued);
    let accepted = a
        .log_text()
        .matches("accepted: submitted on the internal API")
        .count();
    assert_eq!(accepted, 1, "{}", a.log_text());
    // From: must be the sender's domain.
    let (status, body) = request(
        a.addrs.http,
        Signed::With(&key),
        "POST",
        SUBMIT_PATH,
        &submission(
            report
                .replace(
                    &format!("From: <reports@{REPORTS_DOMAIN}>"),
                    "From: <ceo@bank.test>",
                )
                .as_bytes(),
            &format!("reports@{REPORTS_DOMAIN}"),
        ),
    );
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("not the sender's"), "{body}");
    let (status, body) = request(
        a.addrs.http,
        Signed::With(&key),
        "POST",
        SUBMIT_PATH,
        &submission(
            b"Subject: x\n\nbare\n",
            &format!("reports@{REPORTS_DOMAIN}"),
        ),
    );
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("bare LF"), "{body}");
    let (status, body) = request(
        a.addrs.http,
        Signed::With(&key),
        "POST",
        SUBMIT_PATH,
        &submission(report.as_bytes(), "x@elsewhere.test"),
    );
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("not hosted"), "{body}");
    let delivered = wait_for(
        WITHIN,
        || {
            saved(&sink_dir)
                .into_iter()
                .find(|m| m.contains("the report"))
        },
        || format!("report {} not delivered\n{}", queued.queue_id, a.log_text()),
    );
    assert!(delivered.contains(&format!("by {HOSTNAME}")), "{delivered}");
    assert!(delivered.contains(&queued.queue_id), "{delivered}");
    let signature = delivered
        .lines()
        .find(|l| l.starts_with("DKIM-Signature:"))
        .unwrap_or_else(|| panic!("not signed:\n{delivered}"));
    assert!(
        signature.contains(&format!("d={REPORTS_DOMAIN}")) && signature.contains("s=ed"),
        "{signature}"
    );

    // b's hand-off listener takes no oversized aggregates frame, nor one
    // without the Relay's MAC.
    assert!(
        xreports(at_b, &format!("XREPORTS {} 00\r\n", (16 << 20) + 1)).starts_with("552"),
        "oversized frame"
    );
    assert!(
        xreports(at_b, "XREPORTS 2 00\r\n[]").starts_with("535"),
        "forged frame"
    );

    // Drain: a's counts move to b, and a keeps none of them.
    let before = aggregates(a.addrs.http, &key, began, PERIOD);
    let status = a.terminate(WITHIN).expect("a exits");
    assert!(
        status.success(),
        "a exited with {status}:\n{}",
        a.log_text()
    );
    let left = period_files(&root.path().join("a"));
    assert!(left.is_empty(), "a kept {left:?}\n{}", a.log_text());
    let after = aggregates(b.addrs.http, &key, began, PERIOD);
    assert_eq!(counts(&after, MX), counts(&before, MX), "{after:#?}");
    assert_eq!(after.dmarc, before.dmarc);
    assert_eq!(after.tls, before.tls);
    assert!(
        b.log_text()
            .contains("report aggregates taken from a draining peer"),
        "{}",
        b.log_text()
    );
    let files = period_files(&root.path().join("b"));
    assert!(!files.is_empty(), "b wrote nothing to its reports/");
}

/// The reply to `frame` sent to the hand-off listener at `addr` after
/// its greeting and an EHLO.
fn xreports(addr: SocketAddr, frame: &str) -> String {
    use std::io::{BufRead, BufReader, Write};
    let stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut read = BufReader::new(stream.try_clone().unwrap());
    let mut write = stream;
    let mut line = String::new();
    read.read_line(&mut line).unwrap();
    write.write_all(b"EHLO test\r\n").unwrap();
    loop {
        line.clear();
        read.read_line(&mut line).unwrap();
        if !line.starts_with("250-") {
            break;
        }
    }
    write.write_all(frame.as_bytes()).unwrap();
    line.clear();
    read.read_line(&mut line).unwrap();
    line
}
