use std::io::Read as _;

use mail_parser::{MessageParser, MimeHeaders};

use super::super::testing::{END, START, aggregates, reporter};
use super::super::{dmarc_reports, tls_reports};
use super::*;

fn now() -> Timestamp {
    Timestamp::from_second(END + 3600).unwrap()
}

fn to() -> Vec<String> {
    vec!["dmarc@shop.test".into(), "agg@reports.example".into()]
}

fn gunzip(bytes: &[u8]) -> String {
    let mut out = String::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_string(&mut out)
        .unwrap();
    out
}

/// Every line ends in CRLF, none is longer than RFC 5322's 998, and the
/// base64 ones keep to 76.
fn assert_lines(mail: &[u8]) {
    let text = std::str::from_utf8(mail).unwrap();
    assert!(text.ends_with("\r\n"));
    for line in text.split("\r\n") {
        assert!(
            !line.contains('\n') && !line.contains('\r'),
            "bare LF/CR in {line:?}"
        );
        assert!(line.len() <= 998, "{line}");
    }
    let body = text.split_once("\r\n\r\n").unwrap().1;
    for line in body
        .split("\r\n")
        .filter(|l| !l.contains(' ') && !l.starts_with("--"))
    {
        assert!(line.len() <= 76, "{line}");
    }
}

#[test]
fn the_dmarc_mail_carries_the_report_as_rfc_7489_says() {
    let r = &dmarc_reports(&aggregates(), &reporter())[1];
    let mail = dmarc_mail(r, &reporter(), &to(), now());
    assert_lines(&mail);
    let msg = MessageParser::default().parse(&mail).unwrap();
    assert_eq!(
        msg.subject().unwrap(),
        format!(
            "Report Domain: shop.test Submitter: example.net Report-ID: <{}>",
            r.report_id
        )
    );
    assert_eq!(
        msg.from().unwrap().first().unwrap().address().unwrap(),
        "dmarc-reports@example.net"
    );
    let rcpts: Vec<&str> = msg
        .to()
        .unwrap()
        .iter()
        .filter_map(|a| a.address())
        .collect();
    assert_eq!(rcpts, ["dmarc@shop.test", "agg@reports.example"]);
    assert!(msg.date().is_some());
    assert_eq!(msg.message_id().unwrap(), format!("dmarc.{}", r.report_id));
    assert_eq!(
        msg.header_raw("Auto-Submitted").unwrap().trim(),
        "auto-generated"
    );
    assert_eq!(msg.header_raw("MIME-Version").unwrap().trim(), "1.0");
    let ct = msg.content_type().unwrap();
    assert_eq!((ct.ctype(), ct.subtype()), ("multipart", Some("mixed")));
    assert!(msg.body_text(0).unwrap().contains("DMARC aggregate report"));
    let parts: Vec<_> = msg.attachments().collect();
    assert_eq!(parts.len(), 1);
    let ct = parts[0].content_type().unwrap();
    assert_eq!((ct.ctype(), ct.subtype()), ("application", Some("gzip")));
    assert_eq!(
        parts[0].attachment_name().unwrap(),
        format!("example.net!shop.test!{START}!{}.xml.gz", END - 1)
    );
    assert_eq!(gunzip(parts[0].contents()), r.xml);
}

#[test]
fn the_tlsrpt_mail_carries_the_report_as_rfc_8460_says() {
    let r = &tls_reports(&aggregates(), &reporter())[1];
    let mail = tlsrpt_mail(r, &reporter(), &to(), now());
    assert_lines(&mail);
    let msg = MessageParser::default().parse(&mail).unwrap();
    assert_eq!(
        msg.header_raw("TLS-Report-Domain").unwrap().trim(),
        "shop.test"
    );
    assert_eq!(
        msg.header_raw("TLS-Report-Submitter").unwrap().trim(),
        "example.net"
    );
    assert!(
        msg.subject()
            .unwrap()
            .starts_with("Report Domain: shop.test Submitter: example.net Report-ID: <")
    );
    let ct = msg.content_type().unwrap();
    assert_eq!((ct.ctype(), ct.subtype()), ("multipart", Some("report")));
    assert_eq!(ct.attribute("report-type"), Some("tlsrpt"));
    assert!(msg.body_text(0).unwrap().contains("aggregate TLS report"));
    let parts: Vec<_> = msg.attachments().collect();
    assert_eq!(parts.len(), 1);
    let ct = parts[0].content_type().unwrap();
    assert_eq!(
        (ct.ctype(), ct.subtype()),
        ("application", Some("tlsrpt+gzip"))
    );
    let unique = r.report_id.split_once('@').unwrap().0;
    assert_eq!(
        parts[0].attachment_name().unwrap(),
        format!("example.net!shop.test!{START}!{}!{unique}.json.gz", END - 1)
    );
    assert_eq!(gunzip(parts[0].contents()), r.json);
}

#[test]
fn the_date_is_rfc_5322_utc() {
    let r = &dmarc_reports(&aggregates(), &reporter())[0];
    let mail = String::from_utf8(dmarc_mail(r, &reporter(), &to(), now())).unwrap();
    assert!(
        mail.contains("\r\nDate: Thu, 16 Nov 2023 01:00:00 +0000\r\n"),
        "{mail}"
    );
}

#[test]
fn a_line_break_from_outside_cannot_add_a_header() {
    let mut r = dmarc_reports(&aggregates(), &reporter())[0].clone();
    r.domain = "evil.test\r\nBcc: victim@x.test".into();
    let mut who = reporter();
    who.organization = "Org\r\nX-Injected: 1".into();
    let mail = dmarc_mail(&r, &who, &["a@b.test\r\nCc: c@d.test".into()], now());
    let msg = MessageParser::default().parse(&mail).unwrap();
    assert!(msg.header_raw("Bcc").is_none());
    assert!(msg.header_raw("Cc").is_none());
    assert!(msg.header_raw("X-Injected").is_none());
    assert_eq!(
        msg.attachments().next().unwrap().attachment_name().unwrap(),
        format!(
            "example.net!evil.test__Bcc__victim_x.test!{START}!{}.xml.gz",
            END - 1
        )
    );
}

#[test]
fn a_utf8_subject_is_encoded() {
    let mut r = dmarc_reports(&aggregates(), &reporter())[0].clone();
    r.domain = "bücher.test".into();
    let mail = dmarc_mail(&r, &reporter(), &to(), now());
    assert!(mail.is_ascii());
    let msg = MessageParser::default().parse(&mail).unwrap();
    assert!(
        msg.subject()
            .unwrap()
            .starts_with("Report Domain: bücher.test Submitter:")
    );
}

#[test]
fn gzip_round_trips_and_is_deterministic() {
    let data = b"<feedback/>".repeat(100);
    assert_eq!(gunzip(&gzip(&data)).as_bytes(), &data[..]);
    assert_eq!(gzip(&data), gzip(&data));
    assert!(gzip(&data).len() < data.len());
}

#[test]
fn long_recipient_lists_are_folded() {
    let r = &dmarc_reports(&aggregates(), &reporter())[0];
    let many: Vec<String> = (0..100)
        .map(|i| format!("reports-{i}@receiver.test"))
        .collect();
    let mail = dmarc_mail(r, &reporter(), &many, now());
    assert_lines(&mail);
    let msg = MessageParser::default().parse(&mail).unwrap();
    assert_eq!(msg.to().unwrap().iter().count(), 100);
}
